//! In-memory throughput of the partition state machine on one core: the leader path
//! (`execute_transfers`) and the replay path (`EventBatchView::new` + `apply_batch`).
//!
//! 100k ordinary accounts funded from one external account, uniform random transfers between them,
//! batches of 8190, one partition (nothing crosses). Enough batches per run that the id table fills up
//! and evicts on every insert, as it does in steady state. Median of 5 runs.
//!
//! `cargo run --release -p engine --example state_machine_bench`

use std::time::{Duration, Instant};

use engine::event::{EventBatchView, EventBuffer};
use engine::partition::{PartitionConfig, PartitionState};
use net::types::{transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

const ACCOUNTS: u64 = 100_000;
const BATCH_TRANSFERS_MAX: usize = 8190;
const BATCHES_PER_RUN: usize = 100;
const RUNS: usize = 5;
const LEDGER: u32 = 840;
const EXTERNAL_ACCOUNT: u64 = 1;
const FUNDING_PER_ACCOUNT: u64 = 1_000_000_000;
/// The node's defaults (config.rs): a day of ids, at most 262,144 per partition.
const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
const IDEMPOTENCY_IDS_MAX: usize = 262_144;
/// Simulated leader clock advance per batch: 8190 transfers per 819 us is 10 M/s.
const CLOCK_STEP_PER_BATCH_NS: u64 = 819_000;

/// splitmix64: a tiny deterministic generator, so every run sees the same transfers.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Nanoseconds this thread has spent on a CPU (Linux `/proc/thread-self/schedstat`, first field), or
/// `None` elsewhere. Reported next to wall time because a shared machine deschedules the benchmark:
/// wall time then measures the neighbours, on-CPU time measures our code.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Wall and on-CPU time of one timed section.
#[derive(Default)]
struct Timer {
    wall: Duration,
    cpu_ns: Option<u64>,
}

impl Timer {
    fn time<T>(&mut self, work: impl FnOnce() -> T) -> T {
        let cpu_before = thread_cpu_ns();
        let started = Instant::now();
        let output = work();
        self.wall += started.elapsed();
        if let (Some(before), Some(after)) = (cpu_before, thread_cpu_ns()) {
            self.cpu_ns = Some(self.cpu_ns.unwrap_or(0) + (after - before));
        }
        output
    }
}

struct Run {
    execute: Timer,
    apply: Timer,
    transfers: usize,
    digest_matches: bool,
}

fn ordinary_account(n: u64) -> u64 {
    EXTERNAL_ACCOUNT + 1 + n
}

fn run_once(seed: u64) -> Run {
    let config = PartitionConfig {
        partition: 0,
        partitions: 1,
        idempotency_window_ms: IDEMPOTENCY_WINDOW_MS,
        idempotency_ids_max: IDEMPOTENCY_IDS_MAX,
        id_hash_key: seed,
    };
    let mut state = PartitionState::new(config);
    let mut events = EventBuffer::new();
    let mut results = Vec::with_capacity(BATCH_TRANSFERS_MAX);
    let mut log: Vec<Vec<u8>> = Vec::new();
    let mut now_ns: u64 = 1_764_000_000_000 * 1_000_000;
    let mut transfer_counter: u128 = 0;
    let seal = |events: &mut EventBuffer, log: &mut Vec<Vec<u8>>| {
        if !events.is_empty() {
            log.push(events.finish().to_vec());
        }
        events.clear();
    };

    // Setup (untimed): the accounts, then fund each from the external account.
    let mut accounts =
        vec![CreateAccount { id: EXTERNAL_ACCOUNT, ledger: LEDGER, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 }];
    accounts.extend((0..ACCOUNTS).map(|n| CreateAccount {
        id: ordinary_account(n),
        ledger: LEDGER,
        flags: 0,
        user_data: 0,
    }));
    for chunk in accounts.chunks(BATCH_TRANSFERS_MAX) {
        results.clear();
        state.execute_create_accounts(now_ns, chunk, &mut events, &mut results);
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
        seal(&mut events, &mut log);
    }
    let mut next_id = |now_ns: u64| {
        transfer_counter += 1;
        transfer_id_from_parts(now_ns / 1_000_000, transfer_counter)
    };
    let funding: Vec<(u64, Transfer)> = (0..ACCOUNTS)
        .map(|n| {
            // The clock moves on per batch, so ids are time-ordered as real clients' ids are.
            let funding_now_ns = now_ns + (n / BATCH_TRANSFERS_MAX as u64) * CLOCK_STEP_PER_BATCH_NS;
            let transfer = Transfer {
                id: next_id(funding_now_ns),
                debit_account_id: EXTERNAL_ACCOUNT,
                credit_account_id: ordinary_account(n),
                amount: FUNDING_PER_ACCOUNT,
                ledger: LEDGER,
                flags: 0,
                user_data: 0,
            };
            (funding_now_ns, transfer)
        })
        .collect();
    for chunk in funding.chunks(BATCH_TRANSFERS_MAX) {
        now_ns = chunk[0].0;
        let transfers: Vec<Transfer> = chunk.iter().map(|&(_, transfer)| transfer).collect();
        results.clear();
        state.execute_transfers(now_ns, &transfers, &mut events, &mut results);
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
        seal(&mut events, &mut log);
    }
    let setup_batches = log.len();

    // The workload, generated up front so generation is not timed.
    let mut random = Random(seed);
    let mut batches: Vec<Vec<Transfer>> = Vec::with_capacity(BATCHES_PER_RUN);
    let mut batch_now_ns = now_ns;
    for _ in 0..BATCHES_PER_RUN {
        batch_now_ns += CLOCK_STEP_PER_BATCH_NS;
        let batch = (0..BATCH_TRANSFERS_MAX)
            .map(|_| {
                let debit = random.below(ACCOUNTS);
                let credit = (debit + 1 + random.below(ACCOUNTS - 1)) % ACCOUNTS;
                Transfer {
                    id: next_id(batch_now_ns),
                    debit_account_id: ordinary_account(debit),
                    credit_account_id: ordinary_account(credit),
                    amount: 1 + random.below(1_000),
                    ledger: LEDGER,
                    flags: 0,
                    user_data: 0,
                }
            })
            .collect();
        batches.push(batch);
    }

    let mut execute = Timer::default();
    for batch in &batches {
        now_ns += CLOCK_STEP_PER_BATCH_NS;
        results.clear();
        execute.time(|| state.execute_transfers(now_ns, batch, &mut events, &mut results));
        assert_eq!(results.len(), batch.len());
        seal(&mut events, &mut log);
    }
    assert!(state.ledger_sums().iter().all(|&(_, sum)| sum == 0));
    // Steady state: sealed runs have left the ring, which holds at most the bound plus the runs in build.
    assert!(!state.ids().cold_runs().is_empty(), "the run reached steady-state eviction");
    assert!(state.ids().len() <= 2 * IDEMPOTENCY_IDS_MAX, "memory holds {} ids", state.ids().len());

    let mut replica = PartitionState::new(config);
    for bytes in &log[..setup_batches] {
        replica.apply_batch(&EventBatchView::new(bytes).expect("valid")).expect("applies");
    }
    let mut apply = Timer::default();
    for bytes in &log[setup_batches..] {
        apply.time(|| {
            let view = EventBatchView::new(bytes).expect("valid");
            replica.apply_batch(&view).expect("applies");
        });
    }
    Run {
        execute,
        apply,
        transfers: BATCHES_PER_RUN * BATCH_TRANSFERS_MAX,
        digest_matches: replica.digest() == state.digest(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn rate(transfers: usize, nanos: f64) -> f64 {
    transfers as f64 / nanos * 1e9
}

fn main() {
    println!(
        "partition state machine, 1 core: {ACCOUNTS} accounts, batches of {BATCH_TRANSFERS_MAX}, \
         {BATCHES_PER_RUN} batches per run, ids_max {IDEMPOTENCY_IDS_MAX}"
    );
    let mut rates: [Vec<f64>; 4] = Default::default();
    for run in 0..RUNS {
        let result = run_once(0x5EED + run as u64);
        assert!(result.digest_matches, "replay must reach the leader's state");
        let n = result.transfers;
        let measured = [
            rate(n, result.execute.wall.as_nanos() as f64),
            rate(n, result.execute.cpu_ns.map_or(f64::NAN, |ns| ns as f64)),
            rate(n, result.apply.wall.as_nanos() as f64),
            rate(n, result.apply.cpu_ns.map_or(f64::NAN, |ns| ns as f64)),
        ];
        println!(
            "run {run}: execute {:>6.2} M/s wall, {:>6.2} M/s on-CPU | replay {:>6.2} M/s wall, {:>6.2} M/s on-CPU",
            measured[0] / 1e6,
            measured[1] / 1e6,
            measured[2] / 1e6,
            measured[3] / 1e6
        );
        for (all, value) in rates.iter_mut().zip(measured) {
            all.push(value);
        }
    }
    let [execute_wall, execute_cpu, apply_wall, apply_cpu] = rates.map(median);
    println!(
        "median of {RUNS} (transfers/s per core): execute {:.2} M wall / {:.2} M on-CPU; \
         replay (decode + apply) {:.2} M wall / {:.2} M on-CPU",
        execute_wall / 1e6,
        execute_cpu / 1e6,
        apply_wall / 1e6,
        apply_cpu / 1e6
    );
}
