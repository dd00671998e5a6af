//! Embedded node benchmark: durable transfers per second through `Node`, in process, with the batch
//! latency distribution.
//!
//!     cargo run --release -p engine --example node_bench -- [--shards N] [--accounts N]
//!         [--batch N] [--inflight N] [--seconds S] [--runs R] [--dir PATH]
//!
//! Every transfer stays inside its debit account's partition (cross-partition transfers are the saga's),
//! accounts are picked uniformly, and every run starts from a fresh data directory on the real disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{Node, NodeConfig};
use hdrhistogram::Histogram;
use net::types::{partition_of, transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

const LEDGER: u32 = 840;
const EXTERNAL_ID_BASE: u64 = 1 << 40;

struct Options {
    shards: u32,
    partitions: u32,
    accounts: u64,
    batch: usize,
    inflight: usize,
    seconds: u64,
    runs: usize,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options {
        shards: 1,
        partitions: 64,
        accounts: 100_000,
        batch: 8190,
        inflight: 8,
        seconds: 5,
        runs: 3,
        dir: std::env::var_os("HOME").map_or(PathBuf::from("/tmp"), PathBuf::from).join(".cache/node-bench"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).expect("every flag takes a value");
        match pair[0].as_str() {
            "--shards" => options.shards = value.parse().expect("--shards N"),
            "--partitions" => options.partitions = value.parse().expect("--partitions N"),
            "--accounts" => options.accounts = value.parse().expect("--accounts N"),
            "--batch" => options.batch = value.parse().expect("--batch N"),
            "--inflight" => options.inflight = value.parse().expect("--inflight N"),
            "--seconds" => options.seconds = value.parse().expect("--seconds S"),
            "--runs" => options.runs = value.parse().expect("--runs R"),
            "--dir" => options.dir = PathBuf::from(value),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// One external (funding) account per partition, so every funding transfer stays in its partition.
fn external_accounts(partitions: u32) -> Vec<u64> {
    let mut found = vec![0u64; partitions as usize];
    let mut missing = partitions;
    let mut id = EXTERNAL_ID_BASE;
    while missing > 0 {
        let partition = partition_of(id, partitions) as usize;
        if found[partition] == 0 {
            found[partition] = id;
            missing -= 1;
        }
        id += 1;
    }
    found
}

fn setup(node: &Node, options: &Options) -> Vec<Vec<u64>> {
    let externals = external_accounts(options.partitions);
    let mut accounts: Vec<CreateAccount> = externals
        .iter()
        .map(|&id| CreateAccount { id, ledger: LEDGER, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 })
        .collect();
    accounts.extend((1..=options.accounts).map(|id| CreateAccount { id, ledger: LEDGER, flags: 0, user_data: 0 }));
    for chunk in accounts.chunks(8190) {
        let results = node.create_accounts_blocking(chunk.to_vec()).expect("accounts created");
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    }
    let mut by_partition = vec![Vec::new(); options.partitions as usize];
    for id in 1..=options.accounts {
        by_partition[partition_of(id, options.partitions) as usize].push(id);
    }
    let now_ms = engine::shard::clock_ns() / 1_000_000;
    let funding: Vec<Transfer> = (1..=options.accounts)
        .map(|id| Transfer {
            id: transfer_id_from_parts(now_ms, id as u128),
            debit_account_id: externals[partition_of(id, options.partitions) as usize],
            credit_account_id: id,
            amount: 1_000_000_000_000,
            ledger: LEDGER,
            flags: 0,
            user_data: 0,
        })
        .collect();
    for chunk in funding.chunks(8190) {
        let results = node.create_transfers_blocking(chunk.to_vec()).expect("funding");
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    }
    by_partition
}

fn make_batch(
    rng: &mut Rng,
    by_partition: &[Vec<u64>],
    accounts: u64,
    batch: usize,
    partitions: u32,
    counter: &mut u128,
) -> Vec<Transfer> {
    let now_ms = engine::shard::clock_ns() / 1_000_000;
    (0..batch)
        .map(|_| {
            let debit = 1 + rng.next() % accounts;
            let peers = &by_partition[partition_of(debit, partitions) as usize];
            let mut credit = peers[(rng.next() % peers.len() as u64) as usize];
            if credit == debit {
                credit = peers
                    [(peers.iter().position(|&p| p == debit).expect("debit is in its partition") + 1) % peers.len()];
            }
            *counter += 1;
            Transfer {
                id: transfer_id_from_parts(now_ms, (1u128 << 64) | *counter),
                debit_account_id: debit,
                credit_account_id: credit,
                amount: 1 + rng.next() % 1000,
                ledger: LEDGER,
                flags: 0,
                user_data: 0,
            }
        })
        .collect()
}

struct RunResult {
    transfers_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

fn run_once(options: &Options, run: usize) -> RunResult {
    let dir = options.dir.join(format!("run-{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    let config =
        NodeConfig { shards: options.shards, partitions: options.partitions, ..NodeConfig::with_data_dir(&dir) };
    let (node, _) = Node::open(config).expect("node opens");
    let by_partition = setup(&node, options);
    let mut rng = Rng(run as u64 + 1);
    let mut counter = 0u128;
    let histogram =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")));
    let completed = Arc::new(AtomicU64::new(0));
    let inflight = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let mut pending =
        make_batch(&mut rng, &by_partition, options.accounts, options.batch, options.partitions, &mut counter);
    while Instant::now() < deadline {
        if inflight.load(Ordering::Acquire) >= options.inflight as u64 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        inflight.fetch_add(1, Ordering::AcqRel);
        let sent = Instant::now();
        let (histogram, completed, inflight) = (histogram.clone(), completed.clone(), inflight.clone());
        let batch = std::mem::take(&mut pending);
        let count = batch.len() as u64;
        node.create_transfers(
            batch,
            Box::new(move |results| {
                let results = results.expect("batch answered");
                assert!(results.iter().all(|r| r.code == ResultCode::Ok), "benchmark transfers cannot fail");
                histogram.lock().expect("histogram").record(sent.elapsed().as_micros() as u64).expect("in bounds");
                completed.fetch_add(count, Ordering::AcqRel);
                inflight.fetch_sub(1, Ordering::AcqRel);
            }),
        )
        .expect("submitted");
        // Build the next batch while this one is in flight.
        pending =
            make_batch(&mut rng, &by_partition, options.accounts, options.batch, options.partitions, &mut counter);
    }
    while inflight.load(Ordering::Acquire) > 0 {
        std::thread::sleep(Duration::from_micros(100));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.lock().expect("histogram");
    let result = RunResult {
        transfers_per_second: completed.load(Ordering::Acquire) as f64 / elapsed,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
    };
    for shard in node.status_blocking().expect("status") {
        for partition in shard.partitions {
            assert!(partition.ledger_sums.iter().all(|(_, sum)| *sum == 0), "money was created or lost");
        }
    }
    node.shutdown().expect("clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn main() {
    let options = parse_options();
    println!(
        "node_bench: shards={} partitions={} accounts={} batch={} inflight={} seconds={} runs={}",
        options.shards,
        options.partitions,
        options.accounts,
        options.batch,
        options.inflight,
        options.seconds,
        options.runs
    );
    let mut results: Vec<RunResult> = (0..options.runs).map(|run| run_once(&options, run)).collect();
    for (run, r) in results.iter().enumerate() {
        println!(
            "run {run}: {:>10.0} transfers/s  batch latency p50 {} us  p99 {} us  p99.9 {} us  max {} us",
            r.transfers_per_second, r.p50_us, r.p99_us, r.p999_us, r.max_us
        );
    }
    results.sort_by(|a, b| a.transfers_per_second.total_cmp(&b.transfers_per_second));
    let median = &results[results.len() / 2];
    println!(
        "median: {:.0} transfers/s  p50 {} us  p99 {} us  p99.9 {} us  max {} us",
        median.transfers_per_second, median.p50_us, median.p99_us, median.p999_us, median.max_us
    );
}
