//! Scenarios of the replica core on three nodes whose every input is placed by hand: which peer item
//! reaches which node, and when a node drives its groups. The seeded simulator finds orders like these
//! at random; here one is pinned down.

use std::collections::BTreeMap;

use net::types::{CreateAccount, ItemResult, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use raft::{MemStorage, MessageBody, Role};

use super::{
    initial_conf_state, Command, CoreOptions, GroupInit, Handles, Now, Output, RejoinMarker, ReplicaCore,
    ReplicaStorage,
};
use crate::cluster_config::ClusterConfig;
use crate::error::EngineError;
use crate::partition::PartitionConfig;
use crate::replica::wire::PeerItem;

struct TestHandles;

impl Handles for TestHandles {
    type Items = u64;
    type Lookup = u64;
    type Transfers = u64;
}

/// A replica that never loses its data: no snapshot to speak of but Raft's own, no rejoin marker.
impl ReplicaStorage for MemStorage {
    fn snapshot_index(&self) -> u64 {
        raft::Storage::first_index(self).map_or(0, |first| first - 1)
    }

    fn rejoin_marker(&self) -> Result<Option<RejoinMarker>, EngineError> {
        Ok(None)
    }

    fn set_rejoin_marker(&mut self, _: Option<RejoinMarker>) -> Result<(), EngineError> {
        Err(EngineError::Io("these replicas never rejoin".into()))
    }
}

const PARTITION: u32 = 0;
const LEDGER: u32 = 840;
const WALL_START_MS: u64 = 1_700_000_000_000;
/// Steps a phase may take before the test gives up on it (elections take 15 to 30 ticks).
const PHASE_STEPS_MAX: u32 = 500;

/// Three nodes, one partition on all of them; disks durable at once; a network that carries what
/// each step's link rule allows and loses the rest, except what is held for later.
struct Cluster {
    cores: Vec<ReplicaCore<MemStorage, TestHandles>>,
    now_ms: u64,
    tick_interval_ms: u64,
    /// (from, to, item) sent and not delivered yet.
    in_flight: Vec<(u64, u64, PeerItem)>,
    /// Items for this node that a link rule does not let through are held in `held`, not lost.
    hold_for: Option<u64>,
    held: Vec<(u64, u64, PeerItem)>,
    answers: BTreeMap<u64, Result<Vec<ItemResult>, EngineError>>,
}

impl Cluster {
    fn new() -> Cluster {
        let cluster = ClusterConfig::local(0x7e57, 3, 1, 3, 7401, 7501);
        let tick_interval_ms = cluster.replication.tick_interval_ms;
        let now = Now { mono_ms: 0, wall_ns: WALL_START_MS * 1_000_000 };
        let cores = (1..=3u64)
            .map(|node_id| {
                let init = GroupInit {
                    partition: PARTITION,
                    storage: MemStorage::new_with_conf(initial_conf_state(&cluster, PARTITION)),
                    config: PartitionConfig {
                        partition: PARTITION,
                        partitions: cluster.partitions,
                        idempotency_window_ms: cluster.idempotency_window_ms,
                        idempotency_ids_max: cluster.idempotency_ids_max,
                        id_hash_key: node_id,
                    },
                    rejoin: false,
                    raft_seed: node_id,
                };
                let options = CoreOptions {
                    shard: 0,
                    node_id,
                    cluster: cluster.clone(),
                    first_request_id: node_id << 40,
                    record_applied: false,
                    id_runs: crate::idempotency::RunHome::Memory,
                    planted: Default::default(),
                };
                ReplicaCore::open(options, vec![init], now).expect("a fresh replica opens")
            })
            .collect();
        let mut cluster = Cluster {
            cores,
            now_ms: 0,
            tick_interval_ms,
            in_flight: Vec::new(),
            hold_for: None,
            held: Vec::new(),
            answers: BTreeMap::new(),
        };
        for node in 1..=3 {
            cluster.outputs(node);
        }
        cluster
    }

    fn now(&self) -> Now {
        Now { mono_ms: self.now_ms, wall_ns: (WALL_START_MS + self.now_ms) * 1_000_000 }
    }

    fn core(&mut self, node: u64) -> &mut ReplicaCore<MemStorage, TestHandles> {
        &mut self.cores[(node - 1) as usize]
    }

    fn raw_status(&self, node: u64) -> raft::Status {
        self.cores[(node - 1) as usize].groups[0].raw.status()
    }

    /// Carries out what `node` decided: sends into the network, writes made durable at once, answers
    /// recorded (each handle answered once).
    fn outputs(&mut self, node: u64) {
        loop {
            let outputs = self.core(node).take_outputs();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                match output {
                    Output::Send { to, item } => self.in_flight.push((node, to, item)),
                    Output::Persist(persist) => {
                        let core = self.core(node);
                        persist
                            .write_to(core.storage_mut(persist.partition).expect("own partition"))
                            .expect("in memory");
                        core.persisted(persist.partition, persist.number);
                    }
                    Output::Compact(compaction) => {
                        let (data, now) = (compaction.encode(), self.now());
                        self.core(node).compacted(now, compaction.partition, compaction.meta.index, data.into());
                    }
                    Output::Restore(restore) => {
                        let now = self.now();
                        self.core(node).restored(now, restore.build());
                    }
                    Output::Items { to, outcome } => {
                        assert!(self.answers.insert(to, outcome).is_none(), "request {to} answered twice");
                    }
                    Output::Lookup { .. } | Output::Transfers { .. } | Output::Log { .. } => {}
                }
            }
        }
    }

    /// Delivers what `link` lets through and loses the rest (but holds what is for `hold_for`); a node
    /// not `driven` only steps what it gets.
    fn deliver(&mut self, link: &dyn Fn(u64, u64) -> bool, driven: &dyn Fn(u64) -> bool) {
        for _ in 0..10 {
            let due = std::mem::take(&mut self.in_flight);
            if due.is_empty() {
                return;
            }
            for (from, to, item) in due {
                if !link(from, to) {
                    if self.hold_for == Some(to) {
                        self.held.push((from, to, item));
                    }
                    continue;
                }
                let now = self.now();
                self.core(to).on_peer(now, from, item);
                if driven(to) {
                    self.outputs(to);
                }
            }
        }
    }

    /// One tick of time: the driven nodes tick, items move, and the driven nodes end their round.
    fn step(&mut self, link: &dyn Fn(u64, u64) -> bool, driven: &dyn Fn(u64) -> bool) {
        self.now_ms += self.tick_interval_ms;
        let now = self.now();
        for node in (1..=3).filter(|&n| driven(n)) {
            self.core(node).tick(now);
            self.outputs(node);
        }
        self.deliver(link, driven);
        for node in (1..=3).filter(|&n| driven(n)) {
            self.core(node).propose_all();
            self.core(node).end_round(now);
            self.outputs(node);
        }
        self.deliver(link, driven);
    }

    /// Steps with every link up until `done`.
    fn run_until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..PHASE_STEPS_MAX {
            if done(self) {
                return;
            }
            self.step(&|_, _| true, &|_| true);
        }
        panic!("not reached in {PHASE_STEPS_MAX} steps: {what}");
    }

    fn submit(&mut self, node: u64, command: Command<TestHandles>) {
        let now = self.now();
        self.core(node).on_client(now, command);
        self.outputs(node);
    }

    /// A node whose core has seen its replica lead (its group driven since it won).
    fn leader(&self, among: &[u64]) -> Option<u64> {
        among.iter().copied().find(|&n| self.cores[(n - 1) as usize].groups[0].role == Role::Leader)
    }

    fn balance(&self, node: u64, account_id: u64) -> i64 {
        let state = self.cores[(node - 1) as usize].committed_state(PARTITION).expect("held here");
        state.account(account_id).expect("created").balance
    }
}

fn transfer(id: u128, amount: u64) -> Transfer {
    Transfer { id, debit_account_id: 1, credit_account_id: 2, amount, ledger: LEDGER, flags: 0, user_data: 0 }
}

/// The leader of a term, cut off with two proposals not committed, steps an append of the next term's
/// leader (which cuts both from its log) and, before it drives its group again (so before
/// `observe_role` sees it follow), takes a client's retry of the first: the retry's outcome is in the
/// speculative state, so it adds no event. It used to be owed at the new log's last index, below the
/// answers owed already, and the core panicked ("answers owed out of index order", replica simulator
/// seed 50586 on 5 nodes). The retry now goes to the new leader, which decides each transfer once.
#[test]
fn retry_taken_after_raft_stepped_down_goes_to_the_new_leader() {
    let mut cluster = Cluster::new();
    cluster.run_until("node 1 (the preferred leader) leads", |c| c.leader(&[1, 2, 3]) == Some(1));
    let accounts = vec![
        CreateAccount { id: 1, ledger: LEDGER, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: 2, ledger: LEDGER, flags: 0, user_data: 0 },
    ];
    cluster.submit(1, Command::CreateAccounts { partition: PARTITION, items: accounts, to: 1 });
    cluster.run_until("accounts created and every replica caught up", |c| {
        let last = c.raw_status(1).last_index;
        c.answers.contains_key(&1)
            && (1..=3).all(|n| c.raw_status(n).commit == last && c.raw_status(n).last_index == last)
    });
    assert!(matches!(&cluster.answers[&1], Ok(results) if results.iter().all(|r| r.code == ResultCode::Ok)));
    let committed = cluster.raw_status(1).last_index;

    // Node 1 is cut off and proposes two transfers, each its own entry.
    let id_ms = u128::from(WALL_START_MS + cluster.now_ms);
    let id = |counter: u128| (id_ms << 80) | counter;
    let (first, second) = (transfer(id(1), 5), transfer(id(2), 7));
    let cut = |from: u64, to: u64| from != 1 && to != 1;
    cluster.submit(1, Command::Transfers { partition: PARTITION, items: vec![first], to: 2 });
    cluster.core(1).propose_all();
    cluster.submit(1, Command::Transfers { partition: PARTITION, items: vec![second], to: 3 });
    cluster.core(1).propose_all();
    cluster.outputs(1);
    cluster.deliver(&cut, &|_| true);
    let owed: Vec<u64> = cluster.cores[0].groups[0].owed.iter().map(|o| o.index).collect();
    assert_eq!(owed, vec![committed + 1, committed + 2]);

    // Nodes 2 and 3 elect a leader of a later term; node 1 hears nothing, and stays still.
    cluster.hold_for = Some(1);
    let others = |node: u64| node != 1;
    let mut new_leader = None;
    for _ in 0..PHASE_STEPS_MAX {
        new_leader = cluster.leader(&[2, 3]);
        if new_leader.is_some() {
            break;
        }
        cluster.step(&cut, &others);
    }
    let new_leader = new_leader.expect("nodes 2 and 3 elect a leader");
    let new_term = cluster.raw_status(new_leader).term;
    assert_eq!(cluster.raw_status(new_leader).last_index, committed + 1, "the new leader's first entry");

    // Its first append reaches node 1, which steps it without driving its group: Raft follows and
    // has cut both proposals from the log, while the core still sees itself leading, owing both.
    let appends = std::mem::take(&mut cluster.held).into_iter().filter(|(from, _, item)| {
        *from == new_leader
            && matches!(item, PeerItem::Raft { message, .. }
                if message.term == new_term && matches!(message.body, MessageBody::Append { .. }))
    });
    let now = cluster.now();
    for (from, _, item) in appends {
        cluster.core(1).on_peer(now, from, item);
    }
    let raw = cluster.raw_status(1);
    assert_eq!((raw.role, raw.term, raw.last_index), (Role::Follower, new_term, committed + 1));
    assert_eq!(cluster.cores[0].groups[0].role, Role::Leader, "node 1's core has not seen it yet");

    // The client retries the first transfer at node 1, which finds its outcome decided: no new event.
    cluster.submit(1, Command::Transfers { partition: PARTITION, items: vec![first], to: 4 });
    assert!(cluster.cores[0].groups[0].buffer.is_empty() && cluster.cores[0].groups[0].round_answers.len() == 1);
    cluster.core(1).propose_all();
    cluster.outputs(1);
    assert!(cluster.answers.get(&4).is_none(), "not answered from a leadership that is over");
    assert_eq!(cluster.cores[0].groups[0].handed_back.len(), 1, "handed back to be routed again");

    // Everything is answered by the new leader's decisions, each transfer posted once.
    cluster.run_until("every transfer answered and applied everywhere", |c| {
        let last = c.raw_status(new_leader).last_index;
        (2..=4).all(|h| c.answers.contains_key(&h))
            && (1..=3).all(|n| c.cores[(n - 1) as usize].applied_index(PARTITION) == Some(last))
    });
    let result = |handle: u64| match &cluster.answers[&handle] {
        Ok(results) if results.len() == 1 && results[0].code == ResultCode::Ok => results[0],
        other => panic!("request {handle}: {other:?}"),
    };
    assert_eq!(result(2).seq, result(4).seq, "the retry carries the first request's outcome");
    assert_ne!(result(2).seq, result(3).seq);
    for node in 1..=3 {
        assert_eq!(cluster.balance(node, 2), 12, "node {node}: each transfer posted once");
        assert_eq!(cluster.balance(node, 1), -12, "node {node}");
    }
}

/// A received image is rebuilt into the state it was taken from, and one that is not a state of the
/// partition is refused with the reason (the core then logs it and changes nothing).
#[test]
fn a_restore_rebuilds_the_image_state_and_refuses_what_is_not_one() {
    let config = PartitionConfig {
        partition: 2,
        partitions: 3,
        idempotency_window_ms: 60_000,
        idempotency_ids_max: 1024,
        id_hash_key: 7,
    };
    let state = crate::partition::PartitionState::new(config);
    let rows = state.export_rows();
    let image = crate::replica::snapshot::encode_partition_image(2, &rows);
    let restore = |image: Vec<u8>, config: PartitionConfig| super::Restore {
        partition: config.partition,
        meta: raft::SnapshotMeta { index: 9, term: 2, conf_state: raft::ConfState::with_voters([1, 2, 3]) },
        image: image.into(),
        config,
    };
    let snapshot = restore(image.clone(), config).snapshot();
    assert_eq!((snapshot.meta.index, snapshot.meta.term, snapshot.data.as_slice()), (9, 2, image.as_slice()));
    let restored = restore(image.clone(), config).build();
    assert_eq!((restored.partition, restored.index()), (2, 9));
    assert!(restored.is_valid());
    let rebuilt = restored.outcome.expect("a valid image");
    assert_eq!(rebuilt.export_rows(), rows);
    assert_eq!(rebuilt.digest(), state.digest());

    let mut corrupt = image.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let refused = restore(corrupt, config).build();
    assert!(!refused.is_valid());
    let refused = refused.outcome.expect_err("a corrupt image");
    assert!(!refused.is_empty());
    let other = PartitionConfig { partition: 1, ..config };
    let refused = restore(image, other).build().outcome.expect_err("another partition's image");
    assert!(refused.contains("holds partition 2"), "{refused}");
}
