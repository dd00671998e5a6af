//! Cluster nodes in one process, on real sockets on loopback and real logs in temporary directories:
//! what a node takes from the cluster file, how the peer transport connects, and how a request for a
//! partition this node holds no replica of is forwarded. The peers in the forwarding test are bare
//! transports driven by the test, so it can answer late, from the wrong node, or with a leader hint.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{unbounded, Receiver};
use engine::cluster_config::ClusterConfig;
use engine::replica::node::{ClusterManifest, OpenOptions};
use engine::replica::transport::{Dispatch, PeerInput, PeerListener, Transport};
use engine::replica::wire::{ForwardReply, ForwardRequest, PeerItem};
use engine::replica::ClusterNode;
use engine::{EngineError, NodeConfig};
use net::protocol::{Consistency, ErrorCode, TransferLookup};
use net::types::{
    partition_of, transfer_id_from_parts, CreateAccount, ItemResult, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL,
};
use raft::{Message, MessageBody};

const CLUSTER_ID: u128 = 0x5eed;
const USD: u32 = 840;
/// Longest any single wait in these tests lasts; every wait ends by itself.
const WAIT_MS: u64 = 10_000;

fn free_loopback_addresses(count: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port")).collect();
    held.iter().map(|l| l.local_addr().expect("bound")).collect()
}

fn local_cluster(nodes: usize, partitions: u32, replication_factor: u32) -> ClusterConfig {
    let addresses = free_loopback_addresses(2 * nodes);
    let mut cluster = ClusterConfig::local(CLUSTER_ID, nodes, partitions, replication_factor, 1, 1);
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        node.address = addresses[i];
        node.peer_address = addresses[nodes + i];
    }
    cluster.replication.forward_timeout_ms = 1_500;
    cluster
}

fn node_config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig { data_dir: dir.to_path_buf(), shards: 1, pin_cores: false, ..NodeConfig::default() }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as u64
}

/// An account id whose partition is `partition`, the `n`th such id from 1 up.
fn account_in(partition: u32, partitions: u32, n: usize) -> u64 {
    (1u64..).filter(|&id| partition_of(id, partitions) == partition).nth(n).expect("ids are unbounded")
}

fn transfer(sequence: u128, debit: u64, credit: u64) -> Transfer {
    Transfer {
        id: transfer_id_from_parts(now_ns() / 1_000_000, sequence),
        debit_account_id: debit,
        credit_account_id: credit,
        amount: 1,
        ledger: USD,
        flags: 0,
        user_data: 0,
    }
}

type Answer = Result<Vec<ItemResult>, EngineError>;

fn submit(node: &ClusterNode, transfers: Vec<Transfer>) -> Receiver<Answer> {
    let (sender, receiver) = unbounded();
    node.create_transfers(transfers, Box::new(move |answer| drop(sender.send(answer)))).expect("accepted");
    receiver
}

/// A node of the cluster played by the test: a transport and a listener whose inbound items land in
/// `inbox`.
struct FakePeer {
    id: u64,
    transport: Arc<Transport>,
    _listener: PeerListener,
    inbox: Receiver<(u64, PeerItem)>,
}

impl FakePeer {
    fn start(cluster: &ClusterConfig, id: u64) -> FakePeer {
        let peers: Vec<(u64, SocketAddr)> =
            cluster.nodes.iter().filter(|n| n.id != id).map(|n| (n.id, n.peer_address)).collect();
        let transport = Transport::new(id, CLUSTER_ID, cluster.agreement_digest(), &peers, &cluster.replication);
        let (sender, inbox) = unbounded();
        let dispatch: Dispatch = Arc::new(move |from, input| {
            if let PeerInput::Item(item) = input {
                drop(sender.send((from, item)))
            }
        });
        let bind = cluster.node(id).expect("listed").peer_address;
        let listener = PeerListener::start(bind, transport.clone(), dispatch.clone()).expect("listen");
        transport.start(dispatch).expect("start");
        FakePeer { id, transport, _listener: listener, inbox }
    }

    /// The next forwarded request, skipping anything else.
    fn next_forward(&self) -> (u64, u32, ForwardRequest) {
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok((from, PeerItem::Forward { request_id, from_node, partition, request })) => {
                    assert_eq!((from, from_node), (1, 1), "forwards come from node 1");
                    return (request_id, partition, request);
                }
                Ok(_) => continue,
                Err(_) => panic!("node {} got no forwarded request within {WAIT_MS} ms", self.id),
            }
        }
    }

    fn no_forward_within(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok((_, item)) = self.inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            assert!(!matches!(item, PeerItem::Forward { .. }), "node {} was sent {item:?}", self.id);
        }
    }

    fn reply(&self, request_id: u64, partition: u32, reply: ForwardReply) {
        assert!(self.transport.send(1, PeerItem::ForwardReply { request_id, partition, reply }).is_ok());
    }
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        // Its threads hold the transport too: stop them, or the node would outlive the value.
        self.transport.shutdown();
    }
}

fn ok_results(count: usize, seq: u64) -> ForwardReply {
    ForwardReply::Results(
        (0..count)
            .map(|i| ItemResult { index: i as u32, code: ResultCode::Ok, flags: 0, seq: seq + i as u64 })
            .collect(),
    )
}

/// `NotLeader` naming `leader` as the answering replica saw it in `term`.
fn not_leader(leader: u64, term: u64) -> ForwardReply {
    ForwardReply::Error { code: ErrorCode::NotLeader as u16, leader, term, message: "not the leader".into() }
}

#[test]
fn a_forward_is_answered_only_by_its_node_follows_leader_hints_and_keeps_its_deadline() {
    // Four nodes, three replicas per partition: partition 1 lives on nodes 2, 3 and 4 (preferred leader
    // 2), so node 1, which holds no replica of it, always forwards its requests.
    let cluster = local_cluster(4, 4, 3);
    assert_eq!(cluster.replicas(1), vec![2, 3, 4]);
    let dir = tempfile::tempdir().unwrap();
    let two = FakePeer::start(&cluster, 2);
    let three = FakePeer::start(&cluster, 3);
    let _four = FakePeer::start(&cluster, 4);
    let booted_at_ns = now_ns();
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    let (a, b) = (account_in(1, 4, 0), account_in(1, 4, 1));

    let answer = submit(&node, vec![transfer(1, a, b)]);
    let (first_id, partition, request) = two.next_forward();
    assert_eq!(partition, 1);
    assert!(matches!(&request, ForwardRequest::Transfers(t) if t.len() == 1 && t[0].debit_account_id == a));
    assert!(first_id >= booted_at_ns, "request ids start at the boot clock, got {first_id} < {booted_at_ns}");
    // A reply from a node the request did not go to, and a reply with another id, are not answers.
    three.reply(first_id, 1, ok_results(1, 99));
    two.reply(first_id + 1, 1, ok_results(1, 98));
    assert!(answer.recv_timeout(Duration::from_millis(300)).is_err(), "a stray reply answered the client");
    // Node 2 no longer leads and names node 3: the request goes there at once, under a new id.
    two.reply(first_id, 1, not_leader(3, 1));
    let (second_id, _, request_again) = three.next_forward();
    assert_ne!(second_id, first_id);
    assert_eq!(request_again, request, "the same items are sent on");
    three.reply(second_id, 1, ok_results(1, 7));
    let results = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap();
    assert_eq!(results, vec![ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq: 7 }]);

    // The hint is remembered: the next batch goes straight to node 3.
    let answer = submit(&node, vec![transfer(2, a, b)]);
    let (third_id, _, _) = three.next_forward();
    three.reply(third_id, 1, ok_results(1, 8));
    assert!(answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().is_ok());
    two.no_forward_within(Duration::from_millis(100));

    // Sent on after a NotLeader, a request keeps the client's deadline: node 3 bounces it late, node 2
    // never answers, and the client hears back when the first forward_timeout_ms runs out.
    let submitted = Instant::now();
    let answer = submit(&node, vec![transfer(3, a, b)]);
    let (fourth_id, _, _) = three.next_forward();
    std::thread::sleep(Duration::from_millis(1_000));
    three.reply(fourth_id, 1, not_leader(2, 1));
    two.next_forward();
    let outcome = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap();
    let waited = submitted.elapsed();
    assert!(matches!(outcome, Err(EngineError::Unavailable(_))), "{outcome:?}");
    assert!(
        waited < Duration::from_millis(2_200),
        "answered after {waited:?}: the second forward got a fresh {} ms",
        cluster.replication.forward_timeout_ms
    );
    // Node 2 took the request and never answered: node 1 moves on to the next replica, node 3.
    let answer = submit(&node, vec![transfer(5, a, b)]);
    let (sixth_id, _, _) = three.next_forward();
    three.reply(sixth_id, 1, ok_results(1, 10));
    assert!(answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().is_ok());
    two.no_forward_within(Duration::from_millis(100));

    // After a restart, request ids continue above every id the earlier run used, so a late reply to
    // an old request cannot answer a new one.
    node.shutdown().unwrap();
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    let answer = submit(&node, vec![transfer(4, a, b)]);
    // The restarted node starts again from the preferred leader, node 2.
    let (fifth_id, _, _) = two.next_forward();
    assert!(fifth_id > sixth_id + 1, "request id {fifth_id} after a restart reuses the earlier run's ids");
    two.reply(fifth_id, 1, ok_results(1, 9));
    assert!(answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().is_ok());
    node.shutdown().unwrap();
}

type TransfersAnswer = Result<Vec<Option<TransferLookup>>, EngineError>;

fn lookup_transfers(node: &ClusterNode, ids: Vec<u128>) -> Receiver<TransfersAnswer> {
    let (sender, receiver) = unbounded();
    node.lookup_transfers(ids, Box::new(move |answer| drop(sender.send(answer)))).expect("accepted");
    receiver
}

#[test]
fn a_transfer_lookup_asks_every_partition_once_and_merges_their_answers() {
    // Two nodes, one replica per partition: node 1 holds partition 0 (and leads it alone), node 2,
    // played by the test, holds partition 1, so every lookup's share for partition 1 is forwarded.
    let cluster = local_cluster(2, 2, 1);
    assert_eq!((cluster.replicas(0), cluster.replicas(1)), (vec![1], vec![2]));
    let dir = tempfile::tempdir().unwrap();
    let two = FakePeer::start(&cluster, 2);
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    let (bank, account) = (account_in(0, 2, 0), account_in(0, 2, 1));
    let created = blocking_accounts(
        &node,
        vec![
            CreateAccount { id: bank, ledger: USD, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
            CreateAccount { id: account, ledger: USD, flags: 0, user_data: 0 },
        ],
    );
    assert!(created.iter().all(|r| r.code == ResultCode::Ok), "{created:?}");
    let posted = transfer(1, bank, account);
    let result = submit(&node, vec![posted]).recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap()[0];
    assert_eq!(result.code, ResultCode::Ok);
    let (elsewhere, unknown) = (transfer(2, 7, 8).id, transfer(3, 7, 8).id);
    let ids = vec![posted.id, elsewhere, unknown];

    // Partition 1's share is one forwarded request carrying every id, whatever their number.
    let answer = lookup_transfers(&node, ids.clone());
    let (request_id, partition, request) = two.next_forward();
    assert_eq!((partition, request), (1, ForwardRequest::LookupTransfers { ids: ids.clone() }));
    // A reply whose items name other ids than asked belongs to another request: refused, never merged.
    let misplaced = TransferLookup::FoundWithoutFields { id: unknown, code: ResultCode::Ok, seq: 4, timestamp_ns: 9 };
    two.reply(request_id, 1, ForwardReply::Transfers(vec![None, Some(misplaced), None]));
    let outcome = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap();
    assert!(matches!(&outcome, Err(EngineError::Unavailable(why)) if why.contains("wrong shape")), "{outcome:?}");

    // A well-formed reply is merged slot by slot; where both partitions hold an id (the known limit of
    // ids remembered by the debit account's partition), the lower partition's answer wins.
    let answer = lookup_transfers(&node, ids.clone());
    let (request_id, _, _) = two.next_forward();
    let other = Transfer { amount: 99, ..posted };
    let decided_there = TransferLookup::FoundWithoutFields {
        id: elsewhere,
        code: ResultCode::InsufficientFunds,
        seq: 5,
        timestamp_ns: 6,
    };
    let reply = vec![
        Some(TransferLookup::Found { transfer: other, code: ResultCode::Ok, seq: 3, timestamp_ns: 1 }),
        Some(decided_there),
        None,
    ];
    two.reply(request_id, 1, ForwardReply::Transfers(reply));
    let found = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap();
    let Some(TransferLookup::Found { transfer, code, seq, timestamp_ns }) = found[0] else { panic!("{found:?}") };
    assert_eq!((transfer, code, seq), (posted, ResultCode::Ok, result.seq), "partition 0's own decision");
    assert!(timestamp_ns > 0);
    assert_eq!(found[1..], [Some(decided_there), None]);

    // The forwarded share follows NotLeader like any forwarded request, within the client's deadline.
    let answer = lookup_transfers(&node, vec![unknown]);
    let (request_id, _, _) = two.next_forward();
    two.reply(request_id, 1, not_leader(0, 1));
    let (again, _, request) = two.next_forward();
    assert_ne!(again, request_id);
    assert_eq!(request, ForwardRequest::LookupTransfers { ids: vec![unknown] });
    two.reply(again, 1, ForwardReply::Transfers(vec![None]));
    assert_eq!(answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap(), vec![None]);
    node.shutdown().unwrap();
}

/// Nothing forwarded is left to time out when its link fails: a request for a peer with no connection
/// is refused by the transport and sent to the next replica at once, and a request on a connection
/// that then ends is taken back and sent on (same items, new request id) as soon as the reader sees
/// the end, both far inside `forward_timeout_ms`.
#[test]
fn a_forward_on_a_dead_link_is_sent_on_at_once_not_left_to_time_out() {
    let mut cluster = local_cluster(4, 4, 3);
    cluster.replication.forward_timeout_ms = 5_000;
    let quick = Duration::from_millis(1_000);
    let dir = tempfile::tempdir().unwrap();
    // Node 2 (partition 1's preferred leader) is not running yet: node 1 cannot connect to it.
    let three = FakePeer::start(&cluster, 3);
    let four = FakePeer::start(&cluster, 4);
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    let (a, b) = (account_in(1, 4, 0), account_in(1, 4, 1));
    let submitted = Instant::now();
    let answer = submit(&node, vec![transfer(1, a, b)]);
    let (id, _, request) = three.next_forward();
    assert!(submitted.elapsed() < quick, "sent on to node 3 only after {:?}", submitted.elapsed());
    three.reply(id, 1, ok_results(1, 1));
    assert!(answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().is_ok());
    assert!(matches!(&request, ForwardRequest::Transfers(t) if t[0].debit_account_id == a));

    // Node 3 takes the next request and dies with it unanswered: node 1 sees the link end and sends
    // it on to node 4, the next replica.
    let answer = submit(&node, vec![transfer(2, a, b)]);
    let (lost_id, _, lost) = three.next_forward();
    let died = Instant::now();
    drop(three);
    let (again_id, _, again) = four.next_forward();
    assert!(died.elapsed() < quick, "sent on after the link ended only after {:?}", died.elapsed());
    assert_ne!(again_id, lost_id, "a request sent again gets a new forward id");
    assert_eq!(again, lost, "the same items (the same transfer ids) are sent again");
    four.reply(again_id, 1, ok_results(1, 2));
    let results = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap();
    assert_eq!(results, vec![ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq: 2 }]);
    node.shutdown().unwrap();
}

#[test]
fn the_lower_node_dials_at_start_so_the_higher_one_reaches_it_first() {
    let cluster = local_cluster(2, 1, 1);
    // Node 2 sends to node 1, which has nothing to send: node 1 must still connect, at start and after
    // a restart. Until it does, node 2 has no connection and drops what it sends (and counts it).
    let two = FakePeer::start(&cluster, 2);
    for round in 0..2u64 {
        let one = FakePeer::start(&cluster, 1);
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        let mut sent = 0;
        let received = loop {
            assert!(Instant::now() < deadline, "round {round}: node 1 never heard from node 2");
            sent += 1;
            two.reply(round * 1_000 + sent, 0, ok_results(0, 0));
            match one.inbox.recv_timeout(Duration::from_millis(50)) {
                Ok((from, PeerItem::ForwardReply { request_id, .. })) => break (from, request_id),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => continue,
            }
        };
        assert_eq!(received.0, 2);
        assert!(received.1 > round * 1_000 && received.1 <= round * 1_000 + sent);
        drop(one);
    }
}

#[test]
fn replicas_take_the_idempotency_bounds_from_the_cluster_file() {
    let mut cluster = local_cluster(3, 1, 3);
    cluster.idempotency_ids_max = 1024;
    cluster.idempotency_window_ms = 3_600_000;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Each node's own configuration says something else; the cluster file wins on every node.
    let own_bounds = [(2048, 60_000), (4096, 120_000), (1500, 7_200_000)];
    let nodes: Vec<ClusterNode> = (0..3)
        .map(|i| {
            let config = NodeConfig {
                idempotency_ids_max: own_bounds[i].0,
                idempotency_window_ms: own_bounds[i].1,
                ..node_config(dirs[i].path())
            };
            ClusterNode::open(config, cluster.clone(), i as u64 + 1, &OpenOptions::default()).unwrap()
        })
        .collect();
    for dir in &dirs {
        let manifest = ClusterManifest::read(dir.path()).unwrap().expect("written at creation");
        assert_eq!((manifest.idempotency_ids_max, manifest.idempotency_window_ms), (1024, 3_600_000));
    }
    // Start once the preferred node leads, so no leadership handover interrupts the batches below.
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while !nodes[0].status_blocking().unwrap()[0].leader {
        assert!(Instant::now() < deadline, "node 1 never took the lead of partition 0");
        std::thread::sleep(Duration::from_millis(20));
    }
    // More transfers than the id table holds, so every replica evicts: identically.
    let (bank, alice) = (1u64, 2u64);
    let accounts = vec![
        CreateAccount { id: bank, ledger: USD, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: alice, ledger: USD, flags: 0, user_data: 0 },
    ];
    let created = blocking_accounts(&nodes[0], accounts);
    assert!(created.iter().all(|r| r.code == ResultCode::Ok), "{created:?}");
    let mut sequence = 0u128;
    for _ in 0..5 {
        let batch: Vec<Transfer> = (0..600)
            .map(|_| {
                sequence += 1;
                transfer(sequence, bank, alice)
            })
            .collect();
        let results = submit(&nodes[0], batch).recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap();
        assert!(results.iter().all(|r| r.code == ResultCode::Ok));
    }
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let states: Vec<_> = nodes.iter().map(|n| n.status_blocking().unwrap()[0].clone()).collect();
        if states.iter().all(|s| s.applied_seq == states[0].applied_seq && s.digest == states[0].digest) {
            let balance = nodes[2].lookup_accounts_blocking(Consistency::Any, vec![alice]).unwrap();
            assert_eq!(balance[0].as_ref().map(|a| a.balance), Some(3_000));
            break;
        }
        assert!(Instant::now() < deadline, "replicas did not converge: {states:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in nodes {
        node.shutdown().unwrap();
    }
}

fn blocking_accounts(node: &ClusterNode, accounts: Vec<CreateAccount>) -> Vec<ItemResult> {
    let (sender, receiver) = unbounded();
    node.create_accounts(accounts, Box::new(move |answer| drop(sender.send(answer)))).expect("accepted");
    receiver.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap()
}

/// Sends node 1 a vote request from `candidate` every 100 ms for up to `wait`: `Some(granted)` from its
/// first answer, `None` if it never answered at all (it takes no part in Raft, or is not connected).
fn vote_answer(
    candidate: &FakePeer,
    term: u64,
    last_log_index: u64,
    last_log_term: u64,
    wait: Duration,
) -> Option<bool> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let body = MessageBody::VoteRequest { pre_vote: false, last_log_index, last_log_term, transfer: false };
        let message = Message { from: candidate.id, to: 1, term, body };
        assert!(candidate.transport.send(1, PeerItem::Raft { partition: 0, message }).is_ok());
        let until = Instant::now() + Duration::from_millis(100);
        while let Ok((_, item)) = candidate.inbox.recv_timeout(until.saturating_duration_since(Instant::now())) {
            if let PeerItem::Raft {
                message: Message { body: MessageBody::VoteResponse { granted, pre_vote: false }, .. },
                ..
            } = item
            {
                return Some(granted);
            }
        }
    }
    None
}

/// The next TermProbe node 1 sends this peer.
fn next_probe(peer: &FakePeer) -> u32 {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        match peer.inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((1, PeerItem::TermProbe { partition })) => return partition,
            Ok(_) => continue,
            Err(_) => panic!("node {} was never asked for its term", peer.id),
        }
    }
}

/// Waits for node 1's next Raft message to `peer`, skipping anything else.
/// `stale` sends node 1 an empty append as leader of `stale_term` (again every 100 ms, until node 1 is
/// connected and answers): node 1 must answer in `term` and must not accept it.
fn assert_refuses_stale_leader(stale: &FakePeer, stale_term: u64, term: u64) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    let answer = loop {
        assert!(Instant::now() < deadline, "node 1 never answered node {}", stale.id);
        let append = MessageBody::Append { prev_log_index: 0, prev_log_term: 0, entries: Vec::new(), commit: 1 };
        let message = Message { from: stale.id, to: 1, term: stale_term, body: append };
        assert!(stale.transport.send(1, PeerItem::Raft { partition: 0, message }).is_ok());
        match stale.inbox.recv_timeout(Duration::from_millis(100)) {
            Ok((1, PeerItem::Raft { message, .. })) => break message,
            _ => continue,
        }
    };
    assert!(!matches!(answer.body, MessageBody::AppendResponse { .. }), "obeyed a stale leader: {answer:?}");
    assert_eq!(answer.term, term, "{answer:?}");
}

/// Where node 1 keeps partition 0's rejoin marker.
fn rejoin_marker(data_dir: &std::path::Path) -> std::path::PathBuf {
    use engine::replica::shared_log::{rejoin_marker_path, shard_dir};
    rejoin_marker_path(&shard_dir(data_dir, 0), 0)
}

fn wait_for_term(node: &ClusterNode, term: u64) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while node.status_blocking().unwrap()[0].term != term {
        assert!(Instant::now() < deadline, "node 1 did not reach term {term}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_rejoining_replica_waits_for_every_replica_then_refuses_stale_leaders_and_early_votes() {
    // Partition 0 lives on nodes 1, 2 and 3; 2 and 3 are played by the test. Node 1 lost its data.
    let cluster = local_cluster(3, 1, 3);
    let two = FakePeer::start(&cluster, 2);
    let three = FakePeer::start(&cluster, 3);

    // Control: a node starting empty without --rejoin votes for anyone with a log at least as long.
    let fresh = tempfile::tempdir().unwrap();
    let node = ClusterNode::open(node_config(fresh.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    assert_eq!(vote_answer(&two, 5, 10, 4, Duration::from_millis(WAIT_MS)), Some(true), "the control case must grant");
    node.shutdown().unwrap();

    let wiped = tempfile::tempdir().unwrap();
    let marker = rejoin_marker(wiped.path());
    let options = OpenOptions { rejoin: true, ..OpenOptions::default() };
    let node = ClusterNode::open(node_config(wiped.path()), cluster.clone(), 1, &options).unwrap();
    assert_eq!((next_probe(&two), next_probe(&three)), (0, 0));
    // Until every other replica has answered, it takes no part in Raft at all.
    assert_eq!(
        vote_answer(&two, 5, 10, 4, Duration::from_millis(500)),
        None,
        "took part before hearing from every replica"
    );
    assert!(two
        .transport
        .send(1, PeerItem::TermReport { partition: 0, term: 7, commit: 2, last_index: 3, leads: false })
        .is_ok());
    assert_eq!(vote_answer(&two, 8, 10, 7, Duration::from_millis(500)), None, "took part with one replica unheard");
    // Node 3 holds entry 3's predecessor only and knows less as committed: the highest *last* index (3)
    // is what node 1 must hold before it votes, since its lost copy may have helped commit entry 3.
    assert!(three
        .transport
        .send(1, PeerItem::TermReport { partition: 0, term: 6, commit: 1, last_index: 2, leads: false })
        .is_ok());
    wait_for_term(&node, 7);

    // Node 3, a deposed leader of term 6, cannot refill it: its append is answered in term 7.
    assert_refuses_stale_leader(&three, 6, 7);
    // It may have voted in term 7 before it lost its data, so it votes in no term-7 election, and in
    // none at all until it holds commit index 3: not even for a candidate whose log looks complete.
    assert_eq!(vote_answer(&two, 7, 10, 7, Duration::from_millis(500)), Some(false), "voted twice in term 7");
    assert_eq!(
        vote_answer(&three, 8, 12, 7, Duration::from_millis(500)),
        Some(false),
        "voted before holding the commit"
    );
    assert_eq!(node.status_blocking().unwrap()[0].term, 8);

    // A restart during catch-up, even without --rejoin, keeps withholding: the marker says so.
    node.shutdown().unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "withhold-votes-until 3 term 7");
    let node = ClusterNode::open(node_config(wiped.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    assert_eq!(
        vote_answer(&three, 9, 12, 7, Duration::from_millis(WAIT_MS)),
        Some(false),
        "voted after a restart mid catch-up"
    );

    // While it withholds it asks again, and a later report from a leader of term 7 or after that holds
    // less than index 3 lowers what it must reach (in the marker first). Reports from a leader of an
    // older term, from no leader, or of a longer log change nothing: had any of them counted, the
    // marker would say 1 and the last report could not lower it to 2.
    assert_eq!(next_probe(&two), 0, "asked again while withholding");
    let report = |term, last_index, leads| PeerItem::TermReport { partition: 0, term, commit: 0, last_index, leads };
    for (term, last_index, leads) in [(6, 1, true), (9, 1, false), (9, 4, true), (8, 2, true)] {
        assert!(two.transport.send(1, report(term, last_index, leads)).is_ok());
    }
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while std::fs::read_to_string(&marker).unwrap().trim() != "withhold-votes-until 2 term 7" {
        assert!(Instant::now() < deadline, "a leader's later report did not lower the target");
        std::thread::sleep(Duration::from_millis(10));
    }

    // Node 2 leads term 10 and brings it up to commit index 3; from then on it votes like anyone.
    // Sent again every 100 ms until answered, like the stale leader's above: node 1 just restarted, and
    // an append sent before node 2's link to it is back is lost (seen once under a loaded suite run).
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    let answer = loop {
        assert!(Instant::now() < deadline, "node 1 never answered node 2's append");
        let entries = (1..=3).map(|index| raft::Entry { index, term: 10, payload: raft::Payload::Noop }).collect();
        let append = MessageBody::Append { prev_log_index: 0, prev_log_term: 0, entries, commit: 3 };
        let message = Message { from: 2, to: 1, term: 10, body: append };
        assert!(two.transport.send(1, PeerItem::Raft { partition: 0, message }).is_ok());
        match two.inbox.recv_timeout(Duration::from_millis(100)) {
            Ok((1, PeerItem::Raft { message, .. })) if matches!(message.body, MessageBody::AppendResponse { .. }) => {
                break message
            }
            _ => continue,
        }
    };
    assert!(matches!(answer.body, MessageBody::AppendResponse { index: 3, reject: None }), "{answer:?}");
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while marker.exists() {
        assert!(Instant::now() < deadline, "the rejoin marker outlived the catch-up");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        vote_answer(&three, 11, 3, 10, Duration::from_millis(WAIT_MS)),
        Some(true),
        "a caught-up replica refused a vote"
    );
    node.shutdown().unwrap();
}

/// Partition 0 on nodes 1, 2 and 3 (fakes 2 and 3); node 1 is a follower that has heard node 2 lead term
/// 5 (node 2 heartbeats until node 1, which dials it, has connected and heard it) and holds no election
/// for seconds.
fn follower_of_node_2_in_term_5() -> (ClusterConfig, FakePeer, FakePeer, tempfile::TempDir, ClusterNode) {
    let mut cluster = local_cluster(3, 1, 3);
    cluster.replication.election_timeout_ticks_min = 1_000;
    cluster.replication.election_timeout_ticks_max = 2_000;
    let two = FakePeer::start(&cluster, 2);
    let three = FakePeer::start(&cluster, 3);
    let dir = tempfile::tempdir().unwrap();
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while node.status_blocking().unwrap()[0].term != 5 {
        assert!(Instant::now() < deadline, "node 1 never heard node 2's heartbeat");
        let heartbeat = MessageBody::Heartbeat { commit: 0, read_seq: 0, lease_tick: 0 };
        let message = Message { from: 2, to: 1, term: 5, body: heartbeat };
        assert!(two.transport.send(1, PeerItem::Raft { partition: 0, message }).is_ok());
        std::thread::sleep(Duration::from_millis(50));
    }
    (cluster, two, three, dir, node)
}

#[test]
fn a_replica_follows_a_named_leader_at_once_but_never_bounces_faster_than_a_tick() {
    let (cluster, two, three, _dir, node) = follower_of_node_2_in_term_5();

    let (a, b) = (account_in(0, 1, 0), account_in(0, 1, 1));
    let answer = submit(&node, vec![transfer(1, a, b)]);
    let (first_id, _, _) = two.next_forward();
    // Node 2 names node 3 as it saw it in a later term: node 1 goes there at once, although its own
    // replica still says node 2.
    two.reply(first_id, 0, not_leader(3, 6));
    let (second_id, _, _) = three.next_forward();
    // Now the two stale nodes point at each other for a second: node 1 keeps trying, but at most once
    // per tick (20 ms), not at network speed.
    three.reply(second_id, 0, not_leader(2, 6));
    let until = Instant::now() + Duration::from_millis(1_000);
    let mut forwards = 0;
    while Instant::now() < until {
        for (peer, other) in [(&two, 3), (&three, 2)] {
            while let Ok((_, item)) = peer.inbox.try_recv() {
                if let PeerItem::Forward { request_id, .. } = item {
                    forwards += 1;
                    peer.reply(request_id, 0, not_leader(other, 6));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let ticks = 1_000 / cluster.replication.tick_interval_ms;
    assert!(forwards >= 5, "node 1 gave up re-sending: {forwards} forwards");
    assert!(forwards <= ticks + 10, "{forwards} forwards in {ticks} ticks: the request bounced at network speed");
    // The client's deadline (1.5 s) ends it.
    let outcome = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
    node.shutdown().unwrap();
}

/// Seed 30521's failure, pinned: a name given in an older term than this replica's view is stale (the
/// refusing node answered before an election this replica has already seen), so the request goes where
/// the view says, not to the deposed node, where it would wait out the client's deadline.
#[test]
fn a_hint_older_than_the_replicas_own_view_is_not_followed() {
    let (_cluster, two, three, _dir, node) = follower_of_node_2_in_term_5();
    let (a, b) = (account_in(0, 1, 0), account_in(0, 1, 1));
    let answer = submit(&node, vec![transfer(1, a, b)]);
    let (first_id, _, request) = two.next_forward();
    // A reply node 2 made back in term 4 naming node 3: node 1's replica knows node 2 leads term 5.
    two.reply(first_id, 0, not_leader(3, 4));
    let (second_id, _, request_again) = two.next_forward();
    assert_ne!(second_id, first_id);
    assert_eq!(request_again, request, "the same items are sent on");
    three.no_forward_within(Duration::from_millis(100));
    two.reply(second_id, 0, ok_results(1, 7));
    let results = answer.recv_timeout(Duration::from_millis(WAIT_MS)).unwrap().unwrap();
    assert_eq!(results, vec![ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq: 7 }]);
    node.shutdown().unwrap();
}

#[test]
fn a_peer_with_a_different_cluster_file_is_refused() {
    let cluster = local_cluster(2, 1, 1);
    let mut other = cluster.clone();
    other.idempotency_ids_max = 4096;
    assert_ne!(cluster.agreement_digest(), other.agreement_digest());
    let mut moved = cluster.clone();
    moved.nodes[0].address = other.nodes[1].peer_address;
    moved.replication.tick_interval_ms = 7;
    assert_eq!(cluster.agreement_digest(), moved.agreement_digest(), "addresses and timings may differ");

    // Node 1 runs with other bounds: it dials node 2, and each side refuses the other's hello, so
    // nothing gets through in either direction.
    let two = FakePeer::start(&cluster, 2);
    let one = FakePeer::start(&other, 1);
    for n in 0..20 {
        assert!(one.transport.send(2, PeerItem::TermProbe { partition: n }).is_ok());
        two.reply(n as u64, 0, ok_results(0, 0));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(one.inbox.try_recv().is_err(), "node 1 heard from a node with another cluster file");
    assert!(two.inbox.try_recv().is_err(), "node 2 heard from a node with another cluster file");
    // With the same file they talk (the control).
    drop(one);
    let one = FakePeer::start(&cluster, 1);
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while one.inbox.try_recv().is_err() {
        assert!(Instant::now() < deadline, "the control pair never connected");
        two.reply(7, 0, ok_results(0, 0));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_crash_between_the_rejoin_decision_and_the_hard_state_still_adopts_the_term() {
    let cluster = local_cluster(3, 1, 3);
    let two = FakePeer::start(&cluster, 2);
    let three = FakePeer::start(&cluster, 3);
    let dir = tempfile::tempdir().unwrap();
    let marker = rejoin_marker(dir.path());
    // Node 1 starts rejoining and stops before any replica answers: its hard state is still empty.
    let options = OpenOptions { rejoin: true, ..OpenOptions::default() };
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &options).unwrap();
    next_probe(&two);
    node.shutdown().unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "awaiting-reports");
    // As if it had then decided (term 7, withhold until 3) and crashed before term 7 was persisted.
    std::fs::write(&marker, "withhold-votes-until 3 term 7\n").unwrap();
    let node = ClusterNode::open(node_config(dir.path()), cluster.clone(), 1, &OpenOptions::default()).unwrap();
    assert_eq!(node.status_blocking().unwrap()[0].term, 7, "the term is re-adopted at open");
    // A deposed leader of term 6 is answered in term 7, not obeyed.
    assert_refuses_stale_leader(&three, 6, 7);
    assert_eq!(
        vote_answer(&two, 8, 10, 7, Duration::from_millis(WAIT_MS)),
        Some(false),
        "voted before holding the commit"
    );
    node.shutdown().unwrap();
}

#[test]
fn a_hello_with_another_version_or_cluster_file_gets_the_connection_closed() {
    // A hand-made peer connects to node 2 and introduces itself as node 1: with another wire version,
    // or another cluster file digest, node 2 must close the connection at once (the dialer sees the
    // end of the stream, not silence); with the right ones it answers with its own hello.
    use engine::replica::wire::{encode_hello, Hello, PEER_KIND_HELLO, PEER_WIRE_VERSION};
    use std::io::{Read, Write};
    let cluster = local_cluster(2, 1, 1);
    let two = FakePeer::start(&cluster, 2);
    let digest = cluster.agreement_digest();
    let cases = [
        (PEER_WIRE_VERSION + 1, digest, false),
        (PEER_WIRE_VERSION, digest ^ 1, false),
        (PEER_WIRE_VERSION, digest, true),
    ];
    for (wire_version, settings_digest, accepted) in cases {
        let mut stream = std::net::TcpStream::connect(cluster.node(2).unwrap().peer_address).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(WAIT_MS))).unwrap();
        // Issue 16, item 2: the hello body as ARCHITECTURE.md documents it, written by hand:
        // `node_id u64 | wire_version u16 | settings_digest u64`, 18 bytes little-endian.
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&wire_version.to_le_bytes());
        body.extend_from_slice(&settings_digest.to_le_bytes());
        let mut encoded = Vec::new();
        encode_hello(&Hello { node_id: 1, wire_version, settings_digest }, &mut encoded);
        assert_eq!((body.len(), &body), (18, &encoded), "the documented layout is the encoder's");
        let mut frame = Vec::new();
        net::protocol::encode_raw_frame(&mut frame, PEER_KIND_HELLO, CLUSTER_ID, 0, &body);
        stream.write_all(&frame).unwrap();
        let mut buffer = [0u8; 256];
        let read = stream.read(&mut buffer).expect("an answer or the end of the stream, not a timeout");
        assert_eq!(read > 0, accepted, "version {wire_version}, digest {settings_digest:x}: read {read} bytes");
    }
    drop(two);
}

/// Every file under `dir` with its bytes, to prove a refusal changed nothing.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.push((path.clone(), Vec::new()));
            found.extend(tree(&path));
        } else {
            found.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    found.sort();
    found
}

#[test]
fn a_data_directory_of_the_per_partition_log_format_is_refused_by_name_and_left_alone() {
    let cluster = local_cluster(1, 2, 1);
    // What format 2 left: a manifest naming it and one folder per partition with its side files.
    let old = tempfile::tempdir().unwrap();
    let manifest = "format_version = 2\ncluster_id = \"5eed\"\nnode_id = 1\npartitions = 2\nreplication_factor = 1\n\
                    idempotency_window_ms = 1\nidempotency_ids_max = 1\nid_hash_key = \"1\"\n";
    std::fs::write(old.path().join("cluster-node.toml"), manifest).unwrap();
    for partition in ["partition-00000", "partition-00001"] {
        std::fs::create_dir(old.path().join(partition)).unwrap();
        std::fs::write(old.path().join(partition).join("raft-hard-state"), b"RHS1 old bytes").unwrap();
    }
    // The same folders without a manifest.
    let bare = tempfile::tempdir().unwrap();
    std::fs::create_dir(bare.path().join("partition-00000")).unwrap();
    std::fs::write(bare.path().join("partition-00000").join("raft-snapshot"), b"RSN1 old bytes").unwrap();
    for dir in [old.path(), bare.path()] {
        let before = tree(dir);
        let opened = ClusterNode::open(node_config(dir), cluster.clone(), 1, &OpenOptions::default());
        let error = opened.err().expect("the old format must be refused").to_string();
        assert!(error.contains("cluster data format 2") && error.contains("format 3"), "{error}");
        assert!(error.contains("one log per partition") || error.contains("one Raft log per partition"), "{error}");
        assert_eq!(tree(dir), before, "refusing the old format changed the directory");
        if dir == old.path() {
            let read = ClusterManifest::read(dir).expect_err("audit tools refuse it too").to_string();
            assert!(read.contains("cluster data format 2"), "{read}");
        }
    }
}
