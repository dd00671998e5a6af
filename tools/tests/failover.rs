//! Failover as clients see it, with real processes on loopback: three walletd nodes, three
//! partitions, every partition a Raft group of three. Writers keep a bounded load on partition 0
//! (one closed-loop writer per node, each bound to its node so followers forward, plus one routing
//! client), and the test takes partition 0's leader away, alternately with SIGSTOP and SIGKILL. For
//! each failover it measures and asserts:
//! - every batch sent to a surviving node is acknowledged within `ANSWER_AFTER_ELECTION_MS_MAX` of
//!   the new leader's election (or of its sending, if later): a batch forwarded to the old leader
//!   is re-sent to the new one, not left to wait out `forward_timeout_ms` (5 s);
//! - the longest window with no acknowledged transfer on partition 0 is under
//!   `NO_COMMIT_WINDOW_MS_MAX`. The target is 1.5 s, which the benchmark holds (BENCHMARKS.md
//!   section 9: max 743 ms and 1029 ms in two runs of 24 failovers); the window includes the election, which on this
//!   loaded 2-core machine once took 1025 ms, so the test asserts 2.5 s: half of `forward_timeout_ms`,
//!   still far from the 5 s a request waits when it is not re-routed, which is what it guards;
//! - the routing client, sending to the leader itself, moves off the silent node within its own
//!   request timeout and is answered within `ANSWER_AFTER_ELECTION_MS_MAX` of that or of the
//!   election.
//!
//! At the end every acknowledged transfer is applied exactly once (an exact model of the balances).
//!
//! The default run is `FAILOVERS_DEFAULT` failovers (seconds). `WALLET_FAILOVERS=N` runs N and prints
//! the distribution (`scripts/bench-failover.sh`, recorded in BENCHMARKS.md); the per-failover lines
//! and the summary are printed before anything is asserted, so a run against a build without the
//! re-route still reports what it measured.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use net::client::{new_transfer_id, Client, ClientConfig, ClientError};
use net::protocol::PARTITION_FLAG_LEADER;
use net::routing::{RoutingClient, SUSPECT_NODE_MS};
use net::types::{partition_of, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use support::cluster::{ClusterOptions, LocalCluster, CLUSTER_ID};

const PARTITIONS: u32 = 3;
/// The partition whose leader is taken away, and the only one written to.
const PARTITION: u32 = 0;
const LEDGER: u32 = 840;
const ORDINARY_ACCOUNTS: usize = 4;
const TRANSFERS_PER_BATCH: usize = 8;
/// A writer's pause between batches (each has one batch in flight): bounds the load.
const WRITER_PAUSE_MS: u64 = 2;
/// A writer's pause before it sends a refused or failed batch again (same ids).
const RETRY_PAUSE_MS: u64 = 20;
/// Every batch sent to a surviving node is acknowledged within this long of the new leader's
/// election (or of its sending, if later).
const ANSWER_AFTER_ELECTION_MS_MAX: u64 = 1_000;
/// Longest window with no acknowledged transfer on the failed partition, in the test (the target,
/// 1.5 s, is the benchmark's; see the module comment for the margin).
const NO_COMMIT_WINDOW_MS_MAX: u64 = 2_500;
/// The routing client's request timeout: a silent node costs it this long, then it moves on.
const ROUTING_REQUEST_TIMEOUT_MS: u64 = 1_000;
const FAILOVERS_DEFAULT: usize = 2;
const FAILOVERS_ENV: &str = "WALLET_FAILOVERS";
/// Longest wait for a new leader after a fault, for a writer to see the failover through, and for
/// the cluster to be whole again.
const ELECTION_WAIT_MS_MAX: u64 = 10_000;
const SETTLE_WAIT_MS_MAX: u64 = 30_000;
/// How long the routing client is given to get a batch through while the victim is down.
const ROUTING_THROUGH_WAIT_MS_MAX: u64 = 10_000;
/// Load runs this long before each fault (and after a node is back) so the cluster is warm.
const WARM_MS: u64 = 500;
/// How often the test asks the survivors who leads.
const LEADER_POLL_MS: u64 = 5;
/// A batch not acknowledged within this long (retried with the same ids) fails the test.
const BATCH_DEADLINE_MS: u64 = 60_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
}

/// One acknowledged batch: who sent it where, when it was first sent, when it was acknowledged.
#[derive(Clone, Copy, Debug)]
struct Ack {
    /// The node a plain writer is bound to; `None` for the routing client.
    node: Option<u64>,
    first_sent: Instant,
    acked: Instant,
}

struct Load {
    bank: u64,
    accounts: Vec<u64>,
    acks: Mutex<Vec<Ack>>,
    /// Expected balance of every account, from acknowledged transfers.
    expected: Mutex<BTreeMap<u64, i64>>,
    stop: AtomicBool,
}

impl Load {
    fn new() -> Load {
        let mut ids = (1_000u64..).filter(|&id| partition_of(id, PARTITIONS) == PARTITION);
        let bank = ids.next().expect("ids are unbounded");
        let accounts = ids.take(ORDINARY_ACCOUNTS).collect();
        Load { bank, accounts, acks: Mutex::new(Vec::new()), expected: Mutex::new(BTreeMap::new()), stop: false.into() }
    }

    fn create_accounts(&self, cluster: &LocalCluster) {
        let mut creates =
            vec![CreateAccount { id: self.bank, ledger: LEDGER, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 }];
        creates.extend(self.accounts.iter().map(|&id| CreateAccount { id, ledger: LEDGER, flags: 0, user_data: 0 }));
        let mut client = cluster.cluster_client();
        let deadline = Instant::now() + Duration::from_millis(BATCH_DEADLINE_MS);
        loop {
            match client.create_accounts(&creates) {
                Ok(results) => {
                    assert!(
                        results.iter().all(|r| matches!(r.code, ResultCode::Ok | ResultCode::Exists)),
                        "{results:?}"
                    );
                    return;
                }
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(error) => panic!("creating accounts failed: {error}"),
            }
        }
    }

    fn batch(&self, sequence: u64) -> Vec<Transfer> {
        (0..TRANSFERS_PER_BATCH as u64)
            .map(|i| Transfer {
                id: new_transfer_id(),
                debit_account_id: self.bank,
                credit_account_id: self.accounts[((sequence + i) % ORDINARY_ACCOUNTS as u64) as usize],
                amount: 1 + (sequence * 7 + i) % 50,
                ledger: LEDGER,
                flags: 0,
                user_data: u128::from(sequence),
            })
            .collect()
    }

    /// Sends batches until told to stop, each again with the same ids until acknowledged; a batch
    /// under way when the stop comes is still seen through, so the model stays exact.
    fn run_writer(
        self: Arc<Self>,
        node: Option<u64>,
        mut send: impl FnMut(&[Transfer]) -> Result<Vec<net::types::ItemResult>, ClientError> + Send + 'static,
    ) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut sequence = 0u64;
            while !self.stop.load(Ordering::SeqCst) {
                let batch = self.batch(sequence);
                sequence += 1;
                let first_sent = Instant::now();
                let results = loop {
                    match send(&batch) {
                        Ok(results) => break results,
                        Err(error) if error.is_retryable() => {
                            assert!(
                                first_sent.elapsed() < Duration::from_millis(BATCH_DEADLINE_MS),
                                "a batch to {node:?} not acknowledged within {BATCH_DEADLINE_MS} ms: {error}"
                            );
                            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                        }
                        Err(error) => panic!("a batch to {node:?} failed: {error}"),
                    }
                };
                let acked = Instant::now();
                assert_eq!(results.len(), batch.len());
                assert!(results.iter().all(|r| r.code == ResultCode::Ok), "{results:?}");
                let mut expected = self.expected.lock().expect("no writer panics holding it");
                for transfer in &batch {
                    *expected.entry(transfer.debit_account_id).or_default() -= transfer.amount as i64;
                    *expected.entry(transfer.credit_account_id).or_default() += transfer.amount as i64;
                }
                drop(expected);
                self.acks.lock().expect("no writer panics holding it").push(Ack { node, first_sent, acked });
                std::thread::sleep(Duration::from_millis(WRITER_PAUSE_MS));
            }
        })
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("no writer panics holding it").clone()
    }
}

/// What one failover cost, in ms.
#[derive(Clone, Copy, Debug)]
struct Measured {
    fault: Fault,
    victim: u64,
    /// Fault to the first survivor reporting itself leader.
    election_ms: u64,
    /// Longest a batch sent to a survivor waited past the election (or past its sending, if later);
    /// None when some survivor's writer got nothing through within `SETTLE_WAIT_MS_MAX`.
    after_election_ms: Option<u64>,
    /// Longest a batch sent to a survivor waited in all (first send to acknowledgement).
    client_gap_ms: Option<u64>,
    /// Longest window with no acknowledged transfer on the partition.
    no_commit_ms: u64,
    /// Longest a routing-client batch waited in all, and past its request timeout or the election
    /// (whichever came later); None when it did not get through within
    /// `ROUTING_THROUGH_WAIT_MS_MAX` while the victim was down.
    routing_gap_ms: Option<u64>,
    routing_after_ms: Option<u64>,
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

/// The survivor that reports itself leader of `PARTITION`, if any.
fn leader_among(clients: &mut [(u64, Client)]) -> Option<u64> {
    clients.iter_mut().find_map(|(id, client)| {
        let status = client.status().ok()?;
        let leads =
            status.partition_states.iter().any(|p| p.partition == PARTITION && p.flags & PARTITION_FLAG_LEADER != 0);
        leads.then_some(*id)
    })
}

fn status_clients(cluster: &LocalCluster, nodes: &[u64]) -> Vec<(u64, Client)> {
    nodes
        .iter()
        .map(|&id| {
            let mut config = ClientConfig::new(vec![cluster.client_address(id)], CLUSTER_ID);
            config.request_timeout_ms = 2_000;
            (id, Client::new(config).expect("valid client config"))
        })
        .collect()
}

fn wait_for_leader(cluster: &LocalCluster, among: &[u64]) -> u64 {
    let mut clients = status_clients(cluster, among);
    let deadline = Instant::now() + Duration::from_millis(ELECTION_WAIT_MS_MAX);
    loop {
        if let Some(leader) = leader_among(&mut clients) {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader of partition {PARTITION} among {among:?}");
        std::thread::sleep(Duration::from_millis(LEADER_POLL_MS));
    }
}

/// Takes partition 0's leader away with `fault`, measures the failover, and makes the cluster whole
/// again.
fn failover(cluster: &mut LocalCluster, load: &Load, fault: Fault) -> Measured {
    let victim = wait_for_leader(cluster, &cluster.node_ids());
    let survivors: Vec<u64> = cluster.node_ids().into_iter().filter(|&id| id != victim).collect();
    let mut polls = status_clients(cluster, &survivors);
    let fault_at = Instant::now();
    match fault {
        Fault::Kill => cluster.kill(victim),
        Fault::Pause => cluster.pause(victim),
    }
    let elected_at = loop {
        if leader_among(&mut polls).is_some() {
            break Instant::now();
        }
        assert!(fault_at.elapsed() < Duration::from_millis(ELECTION_WAIT_MS_MAX), "no new leader after {fault:?}");
        std::thread::sleep(Duration::from_millis(LEADER_POLL_MS));
    };
    // Seen through: every survivor's writer and the routing client have a batch acknowledged that
    // they sent after the election (each has one batch in flight, so what was stuck is answered).
    // Writers that do not get through while the victim is down are recorded as such (the measurement
    // goes on; the test fails at the end), the routing client after `ROUTING_THROUGH_WAIT_MS_MAX`,
    // the survivors' writers after `SETTLE_WAIT_MS_MAX`.
    let deadline = Instant::now() + Duration::from_millis(SETTLE_WAIT_MS_MAX);
    let routing_deadline = Instant::now() + Duration::from_millis(ROUTING_THROUGH_WAIT_MS_MAX);
    let (survivors_through, routing_through) = loop {
        let acks = load.acks();
        let through = |node: Option<u64>| acks.iter().any(|a| a.node == node && a.first_sent > elected_at);
        let routing = through(None);
        let survivors_through = survivors.iter().all(|&id| through(Some(id)));
        if (survivors_through || Instant::now() > deadline) && (routing || Instant::now() > routing_deadline) {
            break (survivors_through, routing);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let acks = load.acks();
    let after = |a: &Ack| a.acked > fault_at;
    let survivor = |a: &Ack| a.node.is_some_and(|id| id != victim);
    let after_election_ms = survivors_through.then(|| {
        acks.iter()
            .filter(|a| after(a) && survivor(a))
            .map(|a| ms(a.acked.saturating_duration_since(a.first_sent.max(elected_at))))
            .max()
            .unwrap_or(0)
    });
    let client_gap_ms = survivors_through.then(|| {
        acks.iter().filter(|a| after(a) && survivor(a)).map(|a| ms(a.acked - a.first_sent)).max().unwrap_or(0)
    });
    let routing_gap_ms = routing_through.then(|| {
        acks.iter().filter(|a| after(a) && a.node.is_none()).map(|a| ms(a.acked - a.first_sent)).max().unwrap_or(0)
    });
    let routing_after_ms = routing_through.then(|| {
        acks.iter()
            .filter(|a| after(a) && a.node.is_none())
            .map(|a| {
                let moved_on = a.first_sent + Duration::from_millis(ROUTING_REQUEST_TIMEOUT_MS);
                ms(a.acked.saturating_duration_since(moved_on.max(elected_at)))
            })
            .max()
            .unwrap_or(0)
    });
    let mut times: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
    times.push(fault_at);
    times.sort();
    let from = times.partition_point(|&t| t < fault_at);
    let no_commit_ms = times[from.saturating_sub(1)..].windows(2).map(|w| ms(w[1] - w[0])).max().unwrap_or(0);
    match fault {
        Fault::Kill => cluster.start_node(victim),
        Fault::Pause => cluster.resume(victim),
    }
    // Whole again: the victim serves status and the cluster has a leader; then warm up.
    let deadline = Instant::now() + Duration::from_millis(SETTLE_WAIT_MS_MAX);
    while cluster.status(victim).is_err() {
        assert!(Instant::now() < deadline, "node {victim} did not come back");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for_leader(cluster, &cluster.node_ids());
    std::thread::sleep(Duration::from_millis(WARM_MS));
    Measured {
        fault,
        victim,
        election_ms: ms(elected_at - fault_at),
        after_election_ms,
        client_gap_ms,
        no_commit_ms,
        routing_gap_ms,
        routing_after_ms,
    }
}

/// `(p50, p99, max)` by nearest rank.
fn distribution(mut values: Vec<u64>) -> (u64, u64, u64) {
    values.sort_unstable();
    let rank = |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    (rank(0.50), rank(0.99), *values.last().expect("at least one failover"))
}

#[test]
fn a_client_barely_notices_its_leader_killed_or_paused() {
    let failovers: usize = std::env::var(FAILOVERS_ENV)
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{FAILOVERS_ENV} must be a count")))
        .unwrap_or(FAILOVERS_DEFAULT);
    assert!(failovers >= 1, "{FAILOVERS_ENV} counts failovers: at least 1");
    let mut cluster = LocalCluster::start(ClusterOptions { partitions: PARTITIONS, ..ClusterOptions::default() });
    let load = Arc::new(Load::new());
    load.create_accounts(&cluster);
    let mut writers = Vec::new();
    for id in cluster.node_ids() {
        let mut client = cluster.client(id);
        writers.push(load.clone().run_writer(Some(id), move |batch| client.create_transfers(batch)));
    }
    let addresses = cluster.node_ids().into_iter().map(|id| cluster.client_address(id)).collect();
    let mut config = ClientConfig::new(addresses, CLUSTER_ID);
    config.request_timeout_ms = ROUTING_REQUEST_TIMEOUT_MS;
    let mut router = RoutingClient::new(config).expect("client config");
    writers.push(load.clone().run_writer(None, move |batch| router.create_transfers(batch)));
    std::thread::sleep(Duration::from_millis(WARM_MS));

    let mut measured = Vec::new();
    for round in 0..failovers {
        let fault = if round % 2 == 0 { Fault::Pause } else { Fault::Kill };
        let m = failover(&mut cluster, &load, fault);
        if fault == Fault::Kill && round + 1 < failovers {
            // The routing client routes around the killed node for a while: let that pass, so the
            // next pause finds it sending to the leader itself (what that round measures).
            std::thread::sleep(Duration::from_millis(SUSPECT_NODE_MS));
        }
        let shown = |value: Option<u64>| value.map_or_else(|| "never through".to_string(), |ms| format!("{ms} ms"));
        eprintln!(
            "failover {round}: {:?} of node {}: election {} ms, answered {} after it, client gap {}, no commit {} \
             ms, routing client gap {} ({} past its timeout or the election)",
            m.fault,
            m.victim,
            m.election_ms,
            shown(m.after_election_ms),
            shown(m.client_gap_ms),
            m.no_commit_ms,
            shown(m.routing_gap_ms),
            shown(m.routing_after_ms)
        );
        measured.push(m);
    }
    load.stop.store(true, Ordering::SeqCst);
    for (name, f) in [
        ("election (fault to new leader)", (|m: &Measured| Some(m.election_ms)) as fn(&Measured) -> Option<u64>),
        ("answered after the election", |m| m.after_election_ms),
        ("client-visible gap", |m| m.client_gap_ms),
        ("no-commit window", |m| Some(m.no_commit_ms)),
        ("routing client gap", |m| m.routing_gap_ms),
        ("routing client past timeout/election", |m| m.routing_after_ms),
    ] {
        let values: Vec<u64> = measured.iter().filter_map(f).collect();
        let stuck = measured.len() - values.len();
        if values.is_empty() {
            eprintln!("{failovers} failovers, {name}: never through");
            continue;
        }
        let (p50, p99, max) = distribution(values);
        eprintln!("{failovers} failovers, {name}: p50 {p50} ms, p99 {p99} ms, max {max} ms (never through: {stuck})");
    }
    for writer in writers {
        writer.join().expect("writer");
    }

    // Every acknowledged transfer applied exactly once, on the leader's committed state.
    let ids: Vec<u64> = std::iter::once(load.bank).chain(load.accounts.iter().copied()).collect();
    let mut client = cluster.cluster_client();
    let found = client.lookup_accounts(net::protocol::Consistency::Linearizable, &ids).expect("lookup");
    let expected = load.expected.lock().expect("writers are done").clone();
    for (id, lookup) in ids.iter().zip(found) {
        let net::protocol::AccountLookup::Found(account) = lookup else { panic!("account {id}: {lookup:?}") };
        assert_eq!(account.balance, expected.get(id).copied().unwrap_or(0), "account {id}");
    }
    for m in &measured {
        let after_election_ms = m.after_election_ms.unwrap_or_else(|| {
            panic!("{m:?}: a writer bound to a surviving node got nothing through in {SETTLE_WAIT_MS_MAX} ms")
        });
        assert!(
            after_election_ms <= ANSWER_AFTER_ELECTION_MS_MAX,
            "{m:?}: a request to a surviving node was answered {after_election_ms} ms after the election"
        );
        assert!(m.no_commit_ms < NO_COMMIT_WINDOW_MS_MAX, "{m:?}: no transfer committed for {} ms", m.no_commit_ms);
        let routing_after_ms = m.routing_after_ms.unwrap_or_else(|| {
            panic!("{m:?}: the routing client got nothing through in {ROUTING_THROUGH_WAIT_MS_MAX} ms")
        });
        assert!(
            routing_after_ms <= ANSWER_AFTER_ELECTION_MS_MAX,
            "{m:?}: the routing client waited {routing_after_ms} ms past its timeout or the election"
        );
    }
}
