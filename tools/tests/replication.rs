//! Replication with real processes on loopback: three walletd nodes, every partition a Raft group of
//! three. Each test drives a steady stream of transfers, breaks something (SIGKILL of a leader, a
//! follower killed or wiped, a leader cut off by fault-injecting proxies), and then checks:
//! - every acknowledged transfer is on every replica (an exact model of every balance, read from each
//!   node's own committed state);
//! - every ledger sums to zero and no ordinary account is negative;
//! - no transfer was applied twice (a retried batch keeps its ids; the exact model would see it);
//! - every replica of a partition reaches the same state (digests at the same applied index), and
//!   replaying each stopped replica's log offline gives that same state.
//!
//! The workload is exact by construction: every transfer debits its partition's external account and
//! credits an ordinary one, so no transfer can be refused and every balance is a plain sum.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net::client::{ClientConfig, ClientError};
use net::protocol::{
    AccountLookup, AccountRead, Consistency, ErrorCode, NodeStatus, ReadLevel, TransferLookup, PARTITION_FLAG_LEADER,
};
use net::routing::RoutingClient;
use net::types::{partition_of, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use serde_json::Value;
use support::cluster::{ClusterOptions, LocalCluster, CLUSTER_ID};

const PARTITIONS: u32 = 3;
const LEDGER: u32 = 840;
const ACCOUNTS_PER_PARTITION: usize = 8;
const TRANSFERS_PER_BATCH: usize = 40;
/// A batch that is not acknowledged within this long (retried with the same ids) fails the test.
const BATCH_DEADLINE_MS: u64 = 30_000;
/// How long replicas may take to converge after the workload stops.
const CONVERGE_TIMEOUT_MS: u64 = 30_000;
const ELECTION_TIMEOUT_MS: u64 = 15_000;

/// Account ids of one partition: its external funding account and its ordinary accounts.
struct PartitionAccounts {
    bank: u64,
    accounts: Vec<u64>,
}

struct Workload {
    partitions: Vec<PartitionAccounts>,
    /// Every transfer ever sent (acknowledged by the end), by credit account: expected balance.
    expected: Mutex<BTreeMap<u64, i64>>,
    acknowledged_batches: AtomicU64,
    /// Longest gap between two acknowledgements, in ms: the pause clients saw during a failover.
    longest_pause_ms: AtomicU64,
    stop: AtomicBool,
}

impl Workload {
    fn new() -> Workload {
        let mut partitions: Vec<PartitionAccounts> =
            (0..PARTITIONS).map(|_| PartitionAccounts { bank: 0, accounts: Vec::new() }).collect();
        let mut id = 1_000u64;
        while partitions.iter().any(|p| p.bank == 0 || p.accounts.len() < ACCOUNTS_PER_PARTITION) {
            id += 1;
            let p = &mut partitions[partition_of(id, PARTITIONS) as usize];
            if p.bank == 0 {
                p.bank = id;
            } else if p.accounts.len() < ACCOUNTS_PER_PARTITION {
                p.accounts.push(id);
            }
        }
        Workload {
            partitions,
            expected: Mutex::new(BTreeMap::new()),
            acknowledged_batches: AtomicU64::new(0),
            longest_pause_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn all_accounts(&self) -> Vec<u64> {
        self.partitions.iter().flat_map(|p| std::iter::once(p.bank).chain(p.accounts.iter().copied())).collect()
    }

    fn create_accounts(&self, cluster: &LocalCluster) {
        let mut creates = Vec::new();
        for p in &self.partitions {
            creates.push(CreateAccount { id: p.bank, ledger: LEDGER, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 });
            for &id in &p.accounts {
                creates.push(CreateAccount { id, ledger: LEDGER, flags: 0, user_data: 0 });
            }
        }
        let mut client = cluster.cluster_client();
        let deadline = Instant::now() + Duration::from_millis(BATCH_DEADLINE_MS);
        loop {
            match client.create_accounts(&creates) {
                Ok(results) => {
                    for result in results {
                        assert!(
                            matches!(result.code, ResultCode::Ok | ResultCode::Exists),
                            "account creation: {result:?}"
                        );
                    }
                    return;
                }
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(error) => panic!("creating accounts failed: {error}"),
            }
        }
    }

    /// One batch of transfers, each debiting its partition's bank and crediting an ordinary account.
    fn batch(&self, sequence: u64) -> Vec<Transfer> {
        (0..TRANSFERS_PER_BATCH as u64)
            .map(|i| {
                let n = sequence * TRANSFERS_PER_BATCH as u64 + i;
                let p = &self.partitions[(n % PARTITIONS as u64) as usize];
                let credit = p.accounts[((n / PARTITIONS as u64) % ACCOUNTS_PER_PARTITION as u64) as usize];
                Transfer {
                    id: net::client::new_transfer_id(),
                    debit_account_id: p.bank,
                    credit_account_id: credit,
                    amount: 1 + n % 97,
                    ledger: LEDGER,
                    flags: 0,
                    user_data: n as u128,
                }
            })
            .collect()
    }

    /// Sends batches until told to stop; every batch is retried with the same ids until acknowledged,
    /// trying the nodes in turn.
    fn run_writer(self: Arc<Self>, addresses: Vec<std::net::SocketAddr>) -> JoinHandle<u64> {
        std::thread::spawn(move || {
            // Routes each partition's share straight to its leader, re-learning routes on failure.
            let mut client = RoutingClient::new(ClientConfig::new(addresses, CLUSTER_ID)).expect("client config");
            let mut sequence = 0u64;
            let mut last_ack = Instant::now();
            while !self.stop.load(Ordering::SeqCst) {
                let batch = self.batch(sequence);
                sequence += 1;
                let deadline = Instant::now() + Duration::from_millis(BATCH_DEADLINE_MS);
                let results = loop {
                    match client.create_transfers(&batch) {
                        Ok(results) => break results,
                        Err(error) if error.is_retryable() && Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(error) => panic!("batch {sequence} not acknowledged: {error}"),
                    }
                };
                assert_eq!(results.len(), batch.len());
                for (transfer, result) in batch.iter().zip(&results) {
                    assert_eq!(result.code, ResultCode::Ok, "transfer {:#x}: {result:?}", transfer.id);
                }
                let mut expected = self.expected.lock().unwrap();
                for transfer in &batch {
                    *expected.entry(transfer.credit_account_id).or_default() += transfer.amount as i64;
                    *expected.entry(transfer.debit_account_id).or_default() -= transfer.amount as i64;
                }
                drop(expected);
                let pause = last_ack.elapsed().as_millis() as u64;
                self.longest_pause_ms.fetch_max(pause, Ordering::SeqCst);
                last_ack = Instant::now();
                self.acknowledged_batches.fetch_add(1, Ordering::SeqCst);
            }
            sequence
        })
    }

    fn wait_for_batches(&self, at_least: u64, timeout_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        while self.acknowledged_batches.load(Ordering::SeqCst) < at_least {
            assert!(
                Instant::now() < deadline,
                "only {} batches acknowledged",
                self.acknowledged_batches.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads every account from `node`'s own committed state and compares with the exact model.
    fn check_node(&self, cluster: &LocalCluster, node: u64) {
        let ids = self.all_accounts();
        let mut client = cluster.client(node);
        let found = client.lookup_accounts(Consistency::Any, &ids).expect("lookup");
        let expected = self.expected.lock().unwrap();
        let mut ledger_sum = 0i128;
        for lookup in found {
            let AccountLookup::Found(account) = lookup else { panic!("node {node}: account missing: {lookup:?}") };
            let want = expected.get(&account.id).copied().unwrap_or(0);
            assert_eq!(account.balance, want, "node {node}: account {} balance", account.id);
            if account.flags & ACCOUNT_FLAG_EXTERNAL == 0 {
                assert!(account.balance >= 0, "node {node}: ordinary account {} is negative", account.id);
            }
            ledger_sum += account.balance as i128;
        }
        assert_eq!(ledger_sum, 0, "node {node}: the ledger does not sum to zero");
    }
}

fn leader_of(status: &NodeStatus, partition: u32) -> Option<u64> {
    let record = status.partition_states.iter().find(|p| p.partition == partition)?;
    (record.leader != 0).then_some(record.leader)
}

/// Waits until some running node reports itself leader of `partition` (other than `not`).
fn wait_for_leader(cluster: &LocalCluster, partition: u32, not: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(ELECTION_TIMEOUT_MS);
    loop {
        for id in cluster.node_ids() {
            if !cluster.is_running(id) || Some(id) == not {
                continue;
            }
            if let Ok(status) = cluster.status(id) {
                let leads = status
                    .partition_states
                    .iter()
                    .any(|p| p.partition == partition && p.flags & PARTITION_FLAG_LEADER != 0);
                if leads {
                    return id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader for partition {partition}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every running node holds, for every partition, the same committed and applied log
/// and the same state digest; returns `(partition, applied index, digest)`.
fn wait_converged(cluster: &LocalCluster) -> Vec<(u32, u64, u64)> {
    let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
    loop {
        let statuses: Vec<NodeStatus> = cluster
            .node_ids()
            .into_iter()
            .filter(|&id| cluster.is_running(id))
            .filter_map(|id| cluster.status(id).ok())
            .collect();
        let running = cluster.node_ids().into_iter().filter(|&id| cluster.is_running(id)).count();
        if statuses.len() == running {
            let mut views: BTreeMap<u32, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
            for status in &statuses {
                for p in &status.partition_states {
                    views.entry(p.partition).or_default().push((
                        p.applied_index,
                        p.commit_index,
                        p.last_index,
                        p.state_digest,
                    ));
                }
            }
            let agreed = views.len() == PARTITIONS as usize
                && views.values().all(|v| {
                    v.len() == running && v.iter().all(|x| *x == v[0]) && v[0].0 == v[0].1 && v[0].1 == v[0].2
                });
            if agreed {
                return views.iter().map(|(&p, v)| (p, v[0].0, v[0].3)).collect();
            }
            if Instant::now() >= deadline {
                panic!("replicas did not converge: {views:?}");
            }
        } else if Instant::now() >= deadline {
            panic!("not every running node answered status");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops every node cleanly and replays each one's replicas offline with `walletctl verify`: every
/// replica of a partition must replay to at least the live applied index and to the live digest.
/// Then `walletctl state` reproduces each replica's newest state (the replay's digest) and a past one
/// half-way along its log, which every replica that still holds it must agree on.
fn stop_and_verify_replay(cluster: &mut LocalCluster, live: &[(u32, u64, u64)]) {
    for id in cluster.node_ids() {
        if cluster.is_running(id) {
            let status = cluster.terminate(id);
            assert!(status.success(), "node {id} stopped with {status}");
        }
    }
    // A partition the cluster does not have is refused, not answered empty.
    let first = cluster.data_dir(cluster.node_ids()[0]);
    let (code, _) = cluster.walletctl(&["state", "--data-dir", first.to_str().unwrap(), "--partition", "999"]);
    assert_eq!(code, 4, "state of a partition the cluster does not have");
    // (partition, seq) -> (node, digest) of the first replica that reproduced that past state.
    let mut past_digests: BTreeMap<(u32, u64), (u64, String)> = BTreeMap::new();
    for id in cluster.node_ids() {
        let dir = cluster.data_dir(id);
        let before = support::fingerprint::tree_fingerprint(&dir);
        let (code, out) = cluster.walletctl(&["--json", "verify", "--data-dir", dir.to_str().unwrap()]);
        let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        for &(partition, _, _) in live {
            let replay = report["partitions"].as_array().unwrap().iter().find(|p| p["partition"] == partition);
            let Some(replay) = replay else { continue };
            let partition_arg = partition.to_string();
            let state = |bounds: &[&str]| {
                let args =
                    [&["--json", "state", "--data-dir", dir.to_str().unwrap(), "--partition", &partition_arg], bounds];
                let (code, out) = cluster.walletctl(&args.concat());
                (code, if code == 0 { serde_json::from_str(out.trim()).unwrap() } else { Value::Null })
            };
            let (code, newest) = state(&[]);
            assert_eq!(code, 0, "node {id} partition {partition}: state");
            assert_eq!((&newest["digest"], &newest["seq"]), (&replay["digest"], &replay["applied_seq"]), "node {id}");
            let half = replay["applied_seq"].as_u64().unwrap() / 2;
            match state(&["--at-seq", &half.to_string()]) {
                (0, past) => {
                    assert_eq!(past["seq"].as_u64(), Some(half), "node {id} partition {partition}: {past}");
                    let digest = past["digest"].as_str().unwrap().to_string();
                    let (first, agreed) = past_digests.entry((partition, half)).or_insert((id, digest.clone()));
                    assert_eq!(
                        *agreed, digest,
                        "nodes {first} and {id} disagree on partition {partition} at seq {half}"
                    );
                }
                // Refused only where the replica's snapshot is newer than that seq.
                (4, _) => assert!(replay["snapshot_index"].as_u64().unwrap() > 0, "node {id} partition {partition}"),
                (code, _) => panic!("node {id} partition {partition}: state at seq {half} exited {code}"),
            }
        }
        support::fingerprint::assert_unchanged(
            &before,
            &support::fingerprint::tree_fingerprint(&dir),
            "verify and state",
        );
        assert_eq!(code, 0, "node {id} verify: {out}");
        assert_eq!(report["clean"], true, "node {id}: {out}");
        for &(partition, applied, digest) in live {
            let replay = report["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["partition"] == partition)
                .unwrap_or_else(|| panic!("node {id} has no replica of partition {partition}"));
            // Stopping the nodes one by one can elect a new leader among the last ones, whose no-op entry
            // commits after the live check: the index may grow, the state may not.
            let commit_index = replay["commit_index"].as_u64().unwrap();
            assert!(commit_index >= applied, "node {id} partition {partition} replays to {commit_index} < {applied}");
            assert_eq!(replay["state_digest"], format!("{digest:016x}"), "node {id} partition {partition}: {replay}");
        }
        // `wal dump` reads the shard's one log read-only: records of every partition, events included.
        let before = support::fingerprint::tree_fingerprint(&dir);
        let (code, out) = cluster.walletctl(&["wal", "dump", "--data-dir", dir.to_str().unwrap()]);
        support::fingerprint::assert_unchanged(&before, &support::fingerprint::tree_fingerprint(&dir), "wal dump");
        assert_eq!(code, 0, "node {id} wal dump: {out}");
        assert!(out.starts_with("replica shard 0:"), "node {id} wal dump: {}", &out[..out.len().min(500)]);
        // Every replica has its hard state in the log; its entries only until it compacts past them (a
        // replica that compacted at its applied index and then saw no write has none: the wiped node of
        // the snapshot test, which compacts every 32 entries, did so once under a loaded machine).
        for &(partition, _, _) in live {
            assert!(
                out.contains(&format!("partition {partition} hard state: term ")),
                "node {id}: no record of partition {partition}"
            );
        }
        assert!(out.contains(" entry "), "node {id}: no entry of any partition");
        assert!(
            out.contains(" hard state: term ") && out.contains("transfer_posted"),
            "node {id}: {}",
            &out[..out.len().min(500)]
        );
    }
}

fn addresses(cluster: &LocalCluster) -> Vec<std::net::SocketAddr> {
    cluster.node_ids().into_iter().map(|id| cluster.client_address(id)).collect()
}

#[test]
fn killing_a_leader_under_load_loses_no_acknowledged_transfer() {
    let mut cluster = LocalCluster::start(ClusterOptions::default());
    let workload = Arc::new(Workload::new());
    workload.create_accounts(&cluster);
    let writer = workload.clone().run_writer(addresses(&cluster));
    workload.wait_for_batches(50, 30_000);

    let victim = wait_for_leader(&cluster, 0, None);
    cluster.kill(victim);
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    let successor = wait_for_leader(&cluster, 0, Some(victim));
    assert_ne!(successor, victim);
    workload.wait_for_batches(before + 50, 60_000);
    // A routing client learns the new leader from the survivors.
    let mut router = RoutingClient::new(ClientConfig::new(addresses(&cluster), CLUSTER_ID)).unwrap();
    router.refresh().expect("routes");
    let now_leading = wait_for_leader(&cluster, 0, Some(victim));
    router.refresh().expect("routes");
    assert_eq!(router.leader_of(0), Some(now_leading));
    workload.stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    eprintln!(
        "leader failover: {} batches acknowledged, longest pause {} ms",
        workload.acknowledged_batches.load(Ordering::SeqCst),
        workload.longest_pause_ms.load(Ordering::SeqCst)
    );

    wait_converged(&cluster);
    for id in cluster.node_ids().into_iter().filter(|&id| id != victim) {
        workload.check_node(&cluster, id);
    }
    // Every surviving replica explains a balance with the same history, event by event.
    let account = workload.partitions[0].accounts[0];
    let mut histories = Vec::new();
    for id in cluster.node_ids().into_iter().filter(|&id| id != victim) {
        let page = cluster.client(id).account_history(account, 0, 8190).expect("history");
        assert!(page.next_from_seq.is_none(), "the whole history fits one page");
        let credited: i64 = page.entries.iter().map(|e| e.transfer.amount as i64).sum();
        assert_eq!(credited, workload.expected.lock().unwrap()[&account], "node {id}: history sums to the balance");
        assert_eq!(page.entries[0].balance_after, credited, "node {id}: newest entry carries the balance");
        histories.push(page.entries);
    }
    assert!(histories.windows(2).all(|w| w[0] == w[1]), "replicas explain the balance identically");
    // The routing client reads each partition from its leader, in the order asked.
    let ids = workload.all_accounts();
    let found = router.lookup_accounts(Consistency::Linearizable, &ids).expect("routed lookup");
    let expected = workload.expected.lock().unwrap().clone();
    for (id, lookup) in ids.iter().zip(found) {
        let AccountLookup::Found(account) = lookup else { panic!("account {id} missing: {lookup:?}") };
        assert_eq!((account.id, account.balance), (*id, expected.get(id).copied().unwrap_or(0)));
    }
    // The killed leader comes back, catches up and agrees.
    cluster.start_node(victim);
    let live = wait_converged(&cluster);
    for id in cluster.node_ids() {
        workload.check_node(&cluster, id);
    }
    // Status shows every partition's leader, term, commit and applied index on every node.
    let (code, out) = cluster.walletctl(&["--addr", &cluster.client_address(1).to_string(), "--json", "status"]);
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(out.trim()).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{out}");
    for node in nodes {
        let partitions = node["partition_states"].as_array().unwrap();
        assert_eq!(partitions.len(), PARTITIONS as usize, "{out}");
        for p in partitions {
            assert!(p["leader_node"].as_u64().unwrap() > 0 && p["term"].as_u64().unwrap() > 0, "{p}");
        }
    }
    stop_and_verify_replay(&mut cluster, &live);
}

#[test]
fn a_follower_catches_up_from_the_log_and_a_wiped_one_from_a_snapshot() {
    // Small snapshot chunks and a window of two: the snapshot crosses real sockets as many chunks.
    let replication =
        ["snapshot_interval_entries = 32", "snapshot_chunk_bytes = 1024", "snapshot_chunks_in_flight = 2"];
    let options = ClusterOptions { replication: replication.map(String::from).to_vec(), ..Default::default() };
    let mut cluster = LocalCluster::start(options);
    let workload = Arc::new(Workload::new());
    workload.create_accounts(&cluster);
    let writer = workload.clone().run_writer(addresses(&cluster));
    workload.wait_for_batches(30, 30_000);

    // Node 3 down while the others keep committing; back up, it replays what it missed.
    cluster.kill(3);
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    workload.wait_for_batches(before + 60, 60_000);
    cluster.start_node(3);
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    workload.wait_for_batches(before + 20, 60_000);

    // Node 2 down and wiped: the others compact their logs meanwhile, so it can only come back
    // through InstallSnapshot plus the log after it. It restarts with --rejoin: each replica first
    // learns the others' term and commit index, and votes only once it holds that commit index.
    cluster.kill(2);
    cluster.wipe(2);
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    workload.wait_for_batches(before + 100, 60_000);
    cluster.start_node_with(2, &["--rejoin"]);
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    workload.wait_for_batches(before + 20, 60_000);
    workload.stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");

    let live = wait_converged(&cluster);
    for id in cluster.node_ids() {
        workload.check_node(&cluster, id);
    }
    // History on the node that came back through a snapshot covers the log after it; older pages say
    // they went into the snapshot. (Node 2 compacts its own log every 32 entries, so any one account
    // may have nothing left in it: count over every account of every partition.)
    let mut client = cluster.client(2);
    let mut entries = 0;
    for account in workload.partitions.iter().flat_map(|p| p.accounts.iter().copied()) {
        let mut from_seq = 0;
        loop {
            match client.account_history(account, from_seq, 100) {
                Ok(page) => {
                    entries += page.entries.len();
                    match page.next_from_seq {
                        Some(next) => from_seq = next,
                        None => break,
                    }
                }
                Err(ClientError::Server { code: ErrorCode::HistoryCompacted, message }) => {
                    assert!(message.contains("snapshot"), "{message}");
                    break;
                }
                Err(error) => panic!("history older than the snapshot should be refused HistoryCompacted: {error}"),
            }
        }
    }
    assert!(entries > 0, "the wiped node serves the history in its log");
    let log = cluster.log_tail(2, 400);
    assert!(log.contains("installed snapshot"), "the wiped node should come back through a snapshot:\n{log}");
    let whole_log = cluster.log_tail(2, usize::MAX);
    let chunks: Vec<u64> = whole_log
        .lines()
        .filter(|line| line.contains("received node"))
        .filter_map(|line| line.split(" bytes in ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(chunks.iter().any(|&n| n > 2), "the snapshot should arrive in many chunks, got {chunks:?}:\n{log}");
    // The snapshot thread rebuilt the received state and staged its file, for the install to rename.
    assert!(whole_log.contains("rebuilt and its file staged in"), "no received snapshot was staged:\n{log}");
    // The metrics say so too (a fresh process starts every counter at zero): the wiped node took chunks
    // into an assembly and installed snapshots, and its peers sent at least those bytes.
    let metric = |id: u64, name: &str| -> f64 {
        let text = support::http::Http::new(cluster.http_address(id)).get("/metrics").text;
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
    };
    let received = metric(2, "wallet_snapshot_bytes_received_total");
    assert!(metric(2, "wallet_snapshots_installed_total") >= 1.0, "the wiped node installed a snapshot");
    assert!(received > 0.0, "the wiped node received snapshot chunks");
    let sent = metric(1, "wallet_snapshot_bytes_sent_total") + metric(3, "wallet_snapshot_bytes_sent_total");
    assert!(sent >= received, "the leaders sent {sent} snapshot bytes, node 2 received {received}");
    assert_eq!(whole_log.matches("rejoined in term").count(), PARTITIONS as usize, "every replica rejoins:\n{log}");
    stop_and_verify_replay(&mut cluster, &live);
    // Killed, wiped and restarted nodes alike: every line is a record of its own node.
    assert_every_log_line_is_a_record(&cluster, "text");
}

/// The balances of looked-up accounts, every one of which must exist.
fn found_balances(found: &[AccountLookup], node: u64) -> Vec<i64> {
    found
        .iter()
        .map(|l| match l {
            AccountLookup::Found(account) => account.balance,
            other => panic!("node {node}: {other:?}"),
        })
        .collect()
}

/// Every line of every node's log (all its runs) is a log record of `format` naming that node.
fn assert_every_log_line_is_a_record(cluster: &LocalCluster, format: &str) {
    for id in cluster.node_ids() {
        let log = cluster.log_tail(id, usize::MAX);
        assert!(log.lines().count() >= 3, "node {id} logged too little:\n{log}");
        for line in log.lines() {
            support::log_lines::assert_record(line, format, id);
        }
    }
}

#[test]
fn an_isolated_leader_commits_nothing_and_the_majority_carries_on() {
    let options = ClusterOptions { proxied: true, ..Default::default() };
    let mut cluster = LocalCluster::start(options);
    let workload = Arc::new(Workload::new());
    workload.create_accounts(&cluster);
    let writer = workload.clone().run_writer(addresses(&cluster));
    workload.wait_for_batches(30, 30_000);

    let isolated = wait_for_leader(&cluster, 0, None);
    cluster.isolate(isolated);
    // Whatever was in flight when the links were cut settles within a moment; from then on the
    // isolated node must not commit anything more, in any partition.
    std::thread::sleep(Duration::from_millis(300));
    let frozen = cluster.status(isolated).expect("the isolated node still answers clients");
    let successor = wait_for_leader(&cluster, 0, Some(isolated));
    assert_ne!(successor, isolated);
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    workload.wait_for_batches(before + 60, 60_000);
    let during = cluster.status(isolated).expect("status");
    for (a, b) in frozen.partition_states.iter().zip(&during.partition_states) {
        assert_eq!(a.commit_index, b.commit_index, "the isolated node committed in partition {}", a.partition);
        assert_eq!(a.applied_seq, b.applied_seq, "the isolated node applied in partition {}", a.partition);
    }
    assert!(leader_of(&cluster.status(successor).unwrap(), 0).is_some_and(|l| l != isolated));

    // One connection per node pair: the lower id dials, so nothing ever went through a proxy that a
    // higher-numbered node would use to reach a lower one.
    for (from, to) in [(1u64, 2u64), (1, 3), (2, 3)] {
        assert!(cluster.link(from, to).bytes_forwarded() > 0, "node {from} dials node {to}");
        assert_eq!(cluster.link(to, from).bytes_forwarded(), 0, "node {to} must not dial node {from}");
    }
    cluster.heal();
    let before = workload.acknowledged_batches.load(Ordering::SeqCst);
    workload.wait_for_batches(before + 20, 60_000);
    workload.stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer");
    let live = wait_converged(&cluster);
    for id in cluster.node_ids() {
        workload.check_node(&cluster, id);
    }
    stop_and_verify_replay(&mut cluster, &live);
}

#[test]
fn reads_at_every_consistency_level_see_acknowledged_transfers() {
    let options = ClusterOptions {
        replication: vec!["read_wait_timeout_ms = 1000".into()],
        extra_args: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    };
    let mut cluster = LocalCluster::start(options);
    let workload = Workload::new();
    workload.create_accounts(&cluster);
    // Per partition: the credited account, the seq its transfer was answered with, and the amount.
    let mut writes = Vec::new();
    for partition in 0..PARTITIONS as usize {
        let p = &workload.partitions[partition];
        let credit = p.accounts[0];
        let transfer = Transfer {
            id: net::client::new_transfer_id(),
            debit_account_id: p.bank,
            credit_account_id: credit,
            amount: 500 + partition as u64,
            ledger: LEDGER,
            flags: 0,
            user_data: 0,
        };
        // Sent to node 1 whichever node leads: forwarded and relayed.
        let mut client = cluster.client(1);
        let deadline = Instant::now() + Duration::from_millis(BATCH_DEADLINE_MS);
        let result = loop {
            match client.create_transfers(&[transfer]) {
                Ok(results) => break results[0],
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(result.code, ResultCode::Ok);
        writes.push((credit, result.seq, transfer.amount as i64));
        let ids = [p.bank, credit];
        for node in cluster.node_ids() {
            let mut client = cluster.client(node);
            // Read-your-writes on any replica: wait until it has applied the transfer's seq.
            let at_least = client.lookup_accounts(Consistency::AtLeast(result.seq), &ids).expect("at_least read");
            let linearizable = client.lookup_accounts(Consistency::Linearizable, &ids).expect("linearizable read");
            for found in [at_least, linearizable] {
                let balances = found_balances(&found, node);
                assert_eq!(balances, vec![-(transfer.amount as i64), transfer.amount as i64], "node {node}");
            }
            // `any` answers at once from whatever the replica has applied: never more than was sent.
            let any = client.lookup_accounts(Consistency::Any, &ids).expect("any read");
            assert_eq!(any.len(), 2);
        }
        // A sequence no replica has reached times out with a typed, retryable error.
        let error = cluster
            .client(2)
            .lookup_accounts(Consistency::AtLeast(result.seq + 1_000_000), &ids)
            .expect_err("nobody has applied that far");
        assert!(error.is_retryable(), "{error}");
    }
    // Issue 16, item 6: one lookup across every partition, each account with the seq of its own
    // partition's write, is read-your-writes on every replica at once: each partition waits for its own
    // minimum only (well inside the 1 s read_wait_timeout_ms, which a shared seq could not meet).
    let reads: Vec<AccountRead> = writes.iter().map(|&(id, seq, _)| AccountRead { id, at_least_seq: seq }).collect();
    let seqs: Vec<u64> = writes.iter().map(|w| w.1).collect();
    for node in cluster.node_ids() {
        let started = Instant::now();
        let found = cluster.client(node).lookup(ReadLevel::AtLeast, &reads).expect("at_least across partitions");
        assert!(started.elapsed() < Duration::from_millis(1000), "node {node} waited {:?}", started.elapsed());
        let balances = found_balances(&found, node);
        let expected: Vec<i64> = writes.iter().map(|w| w.2).collect();
        assert_eq!(balances, expected, "node {node} with seqs {seqs:?}");
    }
    for id in cluster.node_ids() {
        assert!(cluster.terminate(id).success());
    }
    assert_every_log_line_is_a_record(&cluster, "json");
}

/// Sends `transfers` through node `via` until it answers (retrying retryable errors with the same ids).
fn post_through(cluster: &LocalCluster, via: u64, transfers: &[Transfer]) -> Vec<net::types::ItemResult> {
    let mut client = cluster.client(via);
    let deadline = Instant::now() + Duration::from_millis(BATCH_DEADLINE_MS);
    loop {
        match client.create_transfers(transfers) {
            Ok(results) => return results,
            Err(error) if error.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(error) => panic!("node {via}: {error}"),
        }
    }
}

/// Looks `ids` up through node `via`, retrying retryable errors (an election under way) until the deadline.
fn lookup_through(cluster: &LocalCluster, via: u64, ids: &[u128]) -> Vec<TransferLookup> {
    let mut client = cluster.client(via);
    let deadline = Instant::now() + Duration::from_millis(BATCH_DEADLINE_MS);
    loop {
        match client.lookup_transfers(ids) {
            Ok(found) => {
                assert_eq!(found.len(), ids.len(), "node {via}: one answer per id");
                for (item, &id) in found.iter().zip(ids) {
                    assert_eq!(item.id(), id, "node {via}: answers in request order");
                }
                return found;
            }
            Err(error) if error.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(error) => panic!("node {via}: transfer lookup: {error}"),
        }
    }
}

#[test]
fn transfers_are_looked_up_by_id_through_every_node() {
    // Snapshots every 8 entries, so that the transfers posted first leave the leaders' logs below.
    let options = ClusterOptions { replication: vec!["snapshot_interval_entries = 8".into()], ..Default::default() };
    let mut cluster = LocalCluster::start(options);
    let workload = Workload::new();
    workload.create_accounts(&cluster);
    let transfer = |p: &PartitionAccounts, debit: u64, credit: u64, amount: u64| Transfer {
        id: net::client::new_transfer_id(),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: LEDGER,
        flags: 0,
        user_data: u128::from(p.bank),
    };
    let unknown = net::client::new_transfer_id();
    // Per partition: a posted transfer (through node 1) and a rejected one (through node 2: an
    // ordinary account cannot pay what it does not have), each looked up through every other node.
    let mut decided = Vec::new();
    let mut timestamps = std::collections::HashMap::new();
    for p in &workload.partitions {
        let posted = transfer(p, p.bank, p.accounts[0], 700);
        let rejected = transfer(p, p.accounts[1], p.accounts[2], 1_000_000);
        let posted_result = post_through(&cluster, 1, &[posted])[0];
        let rejected_result = post_through(&cluster, 2, &[rejected])[0];
        assert_eq!(posted_result.code, ResultCode::Ok);
        assert_eq!(rejected_result.code, ResultCode::InsufficientFunds);
        for (via, what, result) in
            [(2, posted, posted_result), (3, posted, posted_result), (1, rejected, rejected_result)]
        {
            let found = lookup_through(&cluster, via, &[what.id]);
            let TransferLookup::Found { transfer, code, seq, timestamp_ns } = found[0] else {
                panic!("node {via}: {what:?} looked up as {:?}", found[0])
            };
            assert_eq!((transfer, code, seq), (what, result.code, result.seq), "node {via}");
            assert!(timestamp_ns > 0, "node {via}: the recording event's time");
            assert_eq!(*timestamps.entry(what.id).or_insert(timestamp_ns), timestamp_ns, "node {via}");
        }
        decided.push((posted, posted_result, rejected, rejected_result));
    }
    // One request for ids of every partition and one never sent: answered in order, each from the
    // partition that decided it (every partition's leader is asked), the unknown one not found.
    let mut ids: Vec<u128> = decided.iter().flat_map(|d| [d.0.id, d.2.id]).collect();
    ids.insert(1, unknown);
    for via in cluster.node_ids() {
        let found = lookup_through(&cluster, via, &ids);
        assert_eq!(found[1], TransferLookup::NotFound { id: unknown }, "node {via}");
        let codes: Vec<Option<(ResultCode, u64)>> = found
            .iter()
            .map(|item| match *item {
                TransferLookup::Found { code, seq, .. } => Some((code, seq)),
                _ => None,
            })
            .collect();
        let mut expected: Vec<Option<(ResultCode, u64)>> =
            decided.iter().flat_map(|d| [Some((d.1.code, d.1.seq)), Some((d.3.code, d.3.seq))]).collect();
        expected.insert(1, None);
        assert_eq!(codes, expected, "node {via}");
    }
    // walletctl through each node: any node answers for any id.
    let (posted, posted_result, rejected, rejected_result) = decided[0];
    for via in cluster.node_ids() {
        let addr = cluster.client_address(via).to_string();
        let (code, out) = cluster.walletctl(&["--addr", &addr, "--json", "transfer", "show", &posted.id.to_string()]);
        assert_eq!(code, 0, "node {via}: {out}");
        let shown: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(shown["result"], "ok", "{out}");
        assert_eq!(shown["seq"], posted_result.seq, "{out}");
        assert_eq!(
            (shown["from"].as_u64(), shown["to"].as_u64()),
            (Some(posted.debit_account_id), Some(posted.credit_account_id))
        );
        assert_eq!(shown["amount_minor"], "700", "{out}");
        let (code, out) = cluster.walletctl(&["--addr", &addr, "transfer", "show", &rejected.id.to_string()]);
        assert_eq!(code, 0, "node {via}: {out}");
        assert!(
            out.contains("insufficient_funds") && out.contains(&format!("at seq {}", rejected_result.seq)),
            "{out}"
        );
        let (code, _) = cluster.walletctl(&["--addr", &addr, "transfer", "show", &unknown.to_string()]);
        assert_eq!(code, 1, "node {via}: an id never sent is not found");
    }
    // Enough entries in every partition for its leader to snapshot past the first transfers: their
    // outcome, seq and time stay (the id table is in the snapshot); their fields left the log.
    for round in 0..20u64 {
        let batch: Vec<Transfer> =
            workload.partitions.iter().map(|p| transfer(p, p.bank, p.accounts[3], 1 + round)).collect();
        post_through(&cluster, 1 + round % 3, &batch);
    }
    let outcomes: Vec<(Transfer, net::types::ItemResult)> =
        decided.iter().flat_map(|d| [(d.0, d.1), (d.2, d.3)]).collect();
    for via in cluster.node_ids() {
        let found = lookup_through(&cluster, via, &ids);
        assert_eq!(found[1], TransferLookup::NotFound { id: unknown }, "node {via}");
        let known = found.iter().filter(|item| item.id() != unknown);
        for (item, (transfer, result)) in known.zip(&outcomes) {
            let TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns } = *item else {
                panic!("node {via}: {transfer:?} still has its fields after 20 entries: {item:?}")
            };
            assert_eq!((id, code, seq), (transfer.id, result.code, result.seq), "node {via}");
            assert_eq!(timestamp_ns, timestamps[&transfer.id], "node {via}: the recording event's time stays");
        }
        let addr = cluster.client_address(via).to_string();
        let (code, out) = cluster.walletctl(&["--addr", &addr, "transfer", "show", &posted.id.to_string()]);
        assert_eq!(code, 0, "node {via}: {out}");
        assert!(out.contains("no longer held") && out.contains(&format!("at seq {}", posted_result.seq)), "{out}");
    }
    // A lookup through a follower whose leader is killed: routed again to the new leader (the link
    // to the dead one ends), and the answer is the decided outcome.
    let leader = wait_for_leader(&cluster, 0, None);
    let via = cluster.node_ids().into_iter().find(|&id| id != leader).expect("three nodes");
    let p0 = &workload.partitions[0];
    let fresh = transfer(p0, p0.bank, p0.accounts[4], 9);
    let fresh_result = post_through(&cluster, via, &[fresh])[0];
    assert_eq!(fresh_result.code, ResultCode::Ok);
    cluster.kill(leader);
    let (code, seq) = match lookup_through(&cluster, via, &[fresh.id])[0] {
        TransferLookup::Found { transfer, code, seq, .. } => {
            assert_eq!(transfer, fresh);
            (code, seq)
        }
        TransferLookup::FoundWithoutFields { code, seq, .. } => (code, seq),
        other => panic!("node {via}: after the leader's death, {fresh:?} looked up as {other:?}"),
    };
    assert_eq!((code, seq), (fresh_result.code, fresh_result.seq));
    // The routing client too, with the dead node still in its list: routed around, same answer.
    let mut router = RoutingClient::new(ClientConfig::new(addresses(&cluster), CLUSTER_ID)).unwrap();
    let found = router.lookup_transfers(&[fresh.id, unknown]).expect("a routed transfer lookup");
    assert!(
        matches!(found[0], TransferLookup::Found { seq, .. } | TransferLookup::FoundWithoutFields { seq, .. } if seq == fresh_result.seq),
        "{found:?}"
    );
    assert_eq!(found[1], TransferLookup::NotFound { id: unknown });
    for id in cluster.node_ids().into_iter().filter(|&id| id != leader) {
        assert!(cluster.terminate(id).success());
    }
}

#[test]
fn a_node_file_cannot_set_its_own_idempotency_bounds() {
    // Replicas must evict transfer ids alike, so the bounds belong to the cluster file. A node whose
    // own file sets different ones is refused at start, before it touches its data directory.
    let dir = tempfile::tempdir().unwrap();
    let addresses = support::cluster::free_loopback_addresses(6);
    let mut cluster = engine::cluster_config::ClusterConfig::local(CLUSTER_ID, 3, 3, 3, 1, 1);
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        node.address = addresses[i];
        node.peer_address = addresses[3 + i];
    }
    cluster.idempotency_ids_max = 4096;
    let cluster_path = dir.path().join("cluster.toml");
    std::fs::write(&cluster_path, cluster.to_toml()).unwrap();
    // A value of its own, and the engine's default named explicitly: both differ from the cluster's.
    for own in [5000, engine::NodeConfig::default().idempotency_ids_max] {
        let node_path = dir.path().join("node.toml");
        std::fs::write(&node_path, format!("[engine]\nidempotency_ids_max = {own}\n")).unwrap();
        let data_dir = dir.path().join("node-1");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
            .args(["--cluster-config", cluster_path.to_str().unwrap(), "--node-id", "1", "--no-pin"])
            .args(["--http-listen", "127.0.0.1:0"])
            .args(["--config", node_path.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("walletd starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("walletd accepted a node file with its own idempotency bounds ({own})");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(!status.success());
        let named = format!("idempotency_ids_max = {own}");
        assert!(stderr.contains(&named) && stderr.contains("cluster file"), "{stderr}");
        assert!(!data_dir.exists(), "the refused node created its data directory");
    }
}

#[test]
fn a_node_stops_cleanly_while_status_requests_are_in_flight() {
    // walletd takes sole ownership of the node to shut it down; a status answer still travelling
    // through the shards once held a reference to it, and the stop failed with exit status 1.
    let options = ClusterOptions { nodes: 1, partitions: 4, replication_factor: 1, ..Default::default() };
    let mut cluster = LocalCluster::start(options);
    for round in 0..6 {
        let stop = Arc::new(AtomicBool::new(false));
        let pollers: Vec<JoinHandle<u64>> = (0..3)
            .map(|_| {
                let (stop, client) = (stop.clone(), cluster.client(1));
                std::thread::spawn(move || {
                    let mut client = client;
                    let mut answered = 0;
                    while !stop.load(Ordering::SeqCst) && client.status().is_ok() {
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let status = cluster.terminate(1);
        stop.store(true, Ordering::SeqCst);
        let answered: u64 = pollers.into_iter().map(|p| p.join().expect("poller")).sum();
        assert!(answered > 0, "round {round}: no status was answered");
        assert!(status.success(), "round {round}: walletd stopped with {status}:\n{}", cluster.log_tail(1, 20));
        cluster.start_node(1);
    }
}
