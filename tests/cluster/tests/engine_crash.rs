//! Crash test with real processes: a child runs the engine under load and is SIGKILLed at random
//! moments, many times. After each restart every transfer acknowledged before a kill is present, none
//! is half-applied or applied twice, and every ledger still sums to zero. Finally the RocksDB state is
//! deleted and rebuilt from the log alone, and must be identical.
//!
//! Replay a failing run with the seed it prints: `ENGINE_CRASH_SEED=<seed> cargo test --release -p
//! wallet-tests --test engine_crash`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::{verify, Node};
use net::types::{ResultCode, Transfer};
use wallet_tests::crash_workload::{self, BATCH_TRANSFERS, EXTERNAL_ACCOUNT, INITIAL_BALANCE};

const KILLS: usize = 12;
const ACCOUNTS: u64 = 64;
/// Longest the child may run before it is killed, after it reported ready.
const RUN_BEFORE_KILL_MS_MAX: u64 = 400;
/// Longest a child may take to open the node and report ready.
const CHILD_READY_TIMEOUT_MS: u64 = 30_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs one child until a random moment, SIGKILLs it, and returns the numbers range it may have sent
/// (start, end) plus the end of what it acknowledged.
fn run_child_and_kill(data_dir: &str, start: u64, rng: &mut Rng) -> (u64, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_engine_crash_child"))
        .args([data_dir, &ACCOUNTS.to_string(), &start.to_string()])
        .env(crash_workload::ID_TIMESTAMP_ENV, crash_workload::id_timestamp_ms().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped");
    let acked_end = Arc::new(Mutex::new(start));
    let ready = Arc::new(Mutex::new(false));
    let reader = {
        let acked_end = acked_end.clone();
        let ready = ready.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    *ready.lock().unwrap() = true;
                } else if let Some(rest) = line.strip_prefix("ack ") {
                    let mut parts = rest.split(' ').map(|p| p.parse::<u64>().unwrap());
                    let (first, count) = (parts.next().unwrap(), parts.next().unwrap());
                    let mut end = acked_end.lock().unwrap();
                    assert_eq!(first, *end, "acks arrive in order");
                    *end = first + count;
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_millis(CHILD_READY_TIMEOUT_MS);
    while !*ready.lock().unwrap() {
        assert!(Instant::now() < deadline, "child did not become ready");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited before ready: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(rng.next() % RUN_BEFORE_KILL_MS_MAX));
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread");
    let end = *acked_end.lock().unwrap();
    (end, end + BATCH_TRANSFERS)
}

fn expected_balances(numbers: &[(u64, u64)]) -> BTreeMap<u64, i64> {
    let mut balances: BTreeMap<u64, i64> = (1..=ACCOUNTS).map(|id| (id, INITIAL_BALANCE as i64)).collect();
    balances.insert(EXTERNAL_ACCOUNT, -((INITIAL_BALANCE * ACCOUNTS) as i64));
    for &(start, end) in numbers {
        for n in start..end {
            let t = crash_workload::transfer(n, ACCOUNTS);
            *balances.get_mut(&t.debit_account_id).unwrap() -= t.amount as i64;
            *balances.get_mut(&t.credit_account_id).unwrap() += t.amount as i64;
        }
    }
    balances
}

fn balances(node: &Node) -> BTreeMap<u64, i64> {
    let ids: Vec<u64> = (1..=ACCOUNTS).chain([EXTERNAL_ACCOUNT]).collect();
    let accounts = node.lookup_accounts_blocking(ids.clone()).expect("lookup");
    ids.into_iter().zip(accounts).map(|(id, a)| (id, a.expect("every workload account exists").balance)).collect()
}

fn assert_ledgers_balanced(node: &Node) {
    for shard in node.status_blocking().expect("status") {
        for partition in shard.partitions {
            for (ledger, sum) in partition.ledger_sums {
                assert_eq!(sum, 0, "ledger {ledger} of partition {} sums to {sum}", partition.partition);
            }
        }
    }
}

fn submit(node: &Node, start: u64, end: u64) -> Vec<net::types::ItemResult> {
    let mut results = Vec::new();
    let mut n = start;
    while n < end {
        let chunk_end = (n + BATCH_TRANSFERS).min(end);
        let batch: Vec<Transfer> = (n..chunk_end).map(|n| crash_workload::transfer(n, ACCOUNTS)).collect();
        results.extend(node.create_transfers_blocking(batch).expect("resubmission answered"));
        n = chunk_end;
    }
    results
}

#[test]
fn acknowledged_transfers_survive_sigkill_and_nothing_is_applied_twice() {
    let seed = std::env::var("ENGINE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("engine crash test seed {seed}; replay: ENGINE_CRASH_SEED={seed} cargo test --release -p wallet-tests --test engine_crash");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("node");
    let data_dir_text = data_dir.to_str().unwrap().to_string();

    // Each child starts past everything the previous one may have sent, so every number is sent by
    // exactly one child: [start, acked_end) acknowledged, [acked_end, sent_end) maybe applied.
    let mut start = 1;
    let mut acknowledged = Vec::new();
    let mut maybe = Vec::new();
    for _ in 0..KILLS {
        let (acked_end, sent_end) = run_child_and_kill(&data_dir_text, start, &mut rng);
        acknowledged.push((start, acked_end));
        maybe.push((acked_end, sent_end));
        start = sent_end;

        // After every restart: ledgers balance and every acknowledged transfer is there.
        let (node, recovery) =
            Node::open(crash_workload::node_config(&data_dir_text)).expect("node reopens after SIGKILL");
        assert!(recovery.shards.iter().all(|s| s.log_last_index >= s.checkpoint_index));
        assert_ledgers_balanced(&node);
        let accounts = node.lookup_accounts_blocking((1..=ACCOUNTS).collect()).unwrap();
        assert!(accounts.iter().all(|a| a.expect("exists").balance >= 0), "an ordinary account went negative");
        drop(node);
    }
    let acked_total: u64 = acknowledged.iter().map(|(s, e)| e - s).sum();
    assert!(acked_total > 0, "the children acknowledged nothing: the test proved nothing");

    let (node, _) = Node::open(crash_workload::node_config(&data_dir_text)).expect("node reopens");
    // Retrying an acknowledged transfer returns its original outcome and changes nothing.
    let before = balances(&node);
    for &(s, e) in &acknowledged {
        for result in submit(&node, s, e) {
            assert_eq!(result.code, ResultCode::Ok);
            assert!(result.is_replayed(), "an acknowledged transfer was missing after restart");
        }
    }
    assert_eq!(before, balances(&node), "replayed retries changed balances");
    // Completing the in-flight batches applies each exactly once, whatever the crash left.
    for &(s, e) in &maybe {
        for result in submit(&node, s, e) {
            assert_eq!(result.code, ResultCode::Ok);
        }
    }
    let mut all = acknowledged.clone();
    all.extend(&maybe);
    assert_eq!(balances(&node), expected_balances(&all), "balances differ from exactly-once application");
    assert_ledgers_balanced(&node);
    let digests: Vec<u128> =
        node.status_blocking().unwrap().iter().flat_map(|s| s.partitions.iter().map(|p| p.digest)).collect();
    node.shutdown().expect("clean shutdown");

    let report = verify(&data_dir).expect("verify runs");
    assert!(report.is_clean(), "verify found drift: {report:?}");

    // Deleting the RocksDB state rebuilds identical state from the log alone.
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(path.join("state")).expect("remove state store");
        }
    }
    let (node, recovery) = Node::open(crash_workload::node_config(&data_dir_text)).expect("node rebuilds from the log");
    assert!(recovery.shards.iter().all(|s| s.checkpoint_index == 0 && s.records_replayed > 0));
    let rebuilt: Vec<u128> =
        node.status_blocking().unwrap().iter().flat_map(|s| s.partitions.iter().map(|p| p.digest)).collect();
    assert_eq!(digests, rebuilt, "state rebuilt from the log differs from the live state");
    assert_eq!(balances(&node), expected_balances(&all));
}
