//! Synchronous test harness: replicas persist every Ready at once and the network delivers
//! everything unless a link is cut or a filter drops it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use raft::{
    ConfState, Config, Entry, HardState, MemStorage, Message, MessageBody, NodeId, Payload, RawNode, ReadState, Role,
    Storage,
};

pub fn config(id: NodeId) -> Config {
    let mut config = Config::new(id);
    config.election_timeout_ticks_min = 10;
    config.election_timeout_ticks_max = 20;
    config.heartbeat_interval_ticks = 1;
    config.pre_vote = false;
    config.check_quorum = false;
    config
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: Payload::data(vec![index as u8, term as u8]) }
}

/// Storage holding entries with the given terms at indexes 1.. and the given hard state term.
pub fn storage_with_log(voters: &[NodeId], terms: &[u64], term: u64) -> MemStorage {
    let mut storage = MemStorage::new_with_conf(ConfState::with_voters(voters.iter().copied()));
    let entries: Vec<Entry> = terms.iter().enumerate().map(|(i, &t)| entry(i as u64 + 1, t)).collect();
    storage.append(&entries).expect("append");
    storage.set_hard_state(HardState { term, vote: None, commit: 0 }).expect("hard state");
    storage
}

pub fn message(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message { from, to, term, body }
}

pub fn vote_request(from: NodeId, to: NodeId, term: u64, last_index: u64, last_term: u64) -> Message {
    message(
        from,
        to,
        term,
        MessageBody::VoteRequest {
            pre_vote: false,
            last_log_index: last_index,
            last_log_term: last_term,
            transfer: false,
        },
    )
}

/// Persists and applies everything pending on `node`; returns the messages it sends.
pub fn drain(node: &mut RawNode<MemStorage>) -> (Vec<Message>, Vec<Entry>, Vec<ReadState>) {
    let mut messages = Vec::new();
    let mut applied = Vec::new();
    let mut reads = Vec::new();
    for _ in 0..100 {
        if !node.has_ready() {
            break;
        }
        let ready = node.ready();
        messages.extend(ready.messages.iter().cloned());
        if let Some(snapshot) = ready.snapshot.clone() {
            node.storage_mut().apply_snapshot(snapshot).expect("apply snapshot");
        }
        node.storage_mut().append(&ready.entries).expect("append");
        if let Some(hard_state) = ready.hard_state {
            node.storage_mut().set_hard_state(hard_state).expect("hard state");
        }
        if ready.must_persist() {
            node.on_persisted(ready.number);
        }
        if let Some(last) = ready.committed_entries.last() {
            node.on_applied(last.index);
        }
        applied.extend(ready.committed_entries);
        reads.extend(ready.read_states);
    }
    (messages, applied, reads)
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RawNode<MemStorage>>,
    /// Unordered pairs that cannot talk.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    /// Returns false to drop a message.
    pub filter: Box<dyn Fn(&Message) -> bool>,
}

impl Cluster {
    pub fn new(size: u64, tweak: impl Fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).collect();
        let storages =
            voters.iter().map(|&id| (id, MemStorage::new_with_conf(ConfState::with_voters(voters.clone())))).collect();
        Cluster::with_storages(storages, tweak)
    }

    pub fn with_storages(storages: Vec<(NodeId, MemStorage)>, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut nodes = BTreeMap::new();
        for (id, storage) in storages {
            let mut config = config(id);
            tweak(&mut config);
            nodes.insert(id, RawNode::new(config, storage).expect("node"));
        }
        Cluster {
            nodes,
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            filter: Box::new(|_| true),
        }
    }

    pub fn node(&mut self, id: NodeId) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).expect("known node")
    }

    pub fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id.min(other), id.max(other)));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Delivers until quiet; returns the number of messages delivered.
    pub fn stabilize(&mut self) -> usize {
        let mut delivered = 0;
        for _ in 0..1000 {
            let mut outbox = Vec::new();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let (messages, applied, reads) = drain(self.node(id));
                self.applied.entry(id).or_default().extend(applied);
                self.reads.entry(id).or_default().extend(reads);
                outbox.extend(messages);
            }
            if outbox.is_empty() {
                return delivered;
            }
            for message in outbox {
                let pair = (message.from.min(message.to), message.from.max(message.to));
                if self.cut.contains(&pair) || !(self.filter)(&message) {
                    continue;
                }
                if let Some(node) = self.nodes.get_mut(&message.to) {
                    node.step(message);
                    delivered += 1;
                }
            }
        }
        panic!("cluster did not stabilize");
    }

    pub fn elect(&mut self, id: NodeId) {
        self.node(id).campaign();
        self.stabilize();
        assert_eq!(self.node(id).status().role, Role::Leader, "node {id} failed to win");
    }

    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.stabilize();
        }
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.status().role == Role::Leader).map(|(&id, _)| id).collect()
    }

    pub fn log_terms(&self, id: NodeId) -> Vec<u64> {
        let node = &self.nodes[&id];
        let status = node.status();
        (status.first_index..=status.last_index).map(|i| node.term(i).expect("term in range")).collect()
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> u64 {
        let index = self.node(id).propose(data.to_vec()).expect("proposal accepted");
        self.stabilize();
        index
    }
}
