//! One whole cluster in one thread: replicas, a faulty network, asynchronous disks and jittery
//! clocks, all driven by one seeded PRNG so that a run replays exactly from its seed.

use std::collections::{BTreeSet, VecDeque};

use raft::{
    ConfChange, ConfChangeKind, Config, Entry, HardState, MemStorage, Message, NodeId, RawNode, Ready, Role, Snapshot,
    Storage,
};

use crate::checker::{chain_digest, Checker, Violation};
use crate::rng::Rng;

/// Fault and workload knobs; probabilities are per mille per step.
#[derive(Clone, Debug)]
pub struct Options {
    pub replicas: usize,
    pub steps: u64,
    pub drop_per_mille: u32,
    pub duplicate_per_mille: u32,
    pub delay_steps_max: u64,
    pub partition_per_mille: u32,
    pub heal_per_mille: u32,
    pub crash_per_mille: u32,
    pub restart_per_mille: u32,
    pub torn_write_per_mille: u32,
    pub write_complete_per_mille: u32,
    pub propose_per_mille: u32,
    pub read_per_mille: u32,
    pub compact_per_mille: u32,
    /// Leader hands leadership to a random voter.
    pub transfer_per_mille: u32,
    /// Leader proposes a single-server membership change (one spare replica cycles through
    /// learner, voter and removed; original voters may be removed and re-added too).
    pub membership_per_mille: u32,
    /// Entries kept behind the applied index when compacting.
    pub compact_lag_entries: u64,
    /// A node ticks with this probability per step (clock jitter between nodes).
    /// Each node ticks at its own fixed rate in [min, 1000] per mille of steps (bounded drift,
    /// the assumption lease reads rely on).
    pub tick_per_mille_min: u32,
    /// Leader lease reads (needs check_quorum); the drift bound is derived from the tick rates.
    pub lease_read: bool,
    /// After faults stop, a leader must commit a proposal on every replica within this bound.
    pub liveness_steps_max: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
}

impl Options {
    /// Swarm testing: each seed draws its own fault mix (calm runs, crash storms, slow disks,
    /// flapping partitions, with or without pre-vote / check-quorum), which reaches corner cases
    /// that one fixed mix rarely does.
    pub fn for_seed(seed: u64, replicas: usize) -> Options {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_FA17);
        let mut options = Options::faulty(replicas);
        options.drop_per_mille = rng.below(200) as u32;
        options.duplicate_per_mille = rng.below(50) as u32;
        options.delay_steps_max = 1 + rng.below(10);
        options.partition_per_mille = rng.below(30) as u32;
        options.heal_per_mille = 10 + rng.below(90) as u32;
        options.crash_per_mille = rng.below(30) as u32;
        options.restart_per_mille = 20 + rng.below(200) as u32;
        options.write_complete_per_mille = 150 + rng.below(850) as u32;
        options.propose_per_mille = 100 + rng.below(600) as u32;
        options.compact_per_mille = rng.below(40) as u32;
        options.transfer_per_mille = rng.below(10) as u32;
        options.membership_per_mille = if rng.chance(500) { rng.below(20) as u32 } else { 0 };
        options.tick_per_mille_min = 500 + rng.below(500) as u32;
        options.pre_vote = rng.chance(500);
        options.check_quorum = rng.chance(500);
        options.lease_read = options.check_quorum && rng.chance(500);
        options.read_per_mille = rng.below(300) as u32;
        options
    }

    pub fn faulty(replicas: usize) -> Options {
        Options {
            replicas,
            steps: 2_000,
            drop_per_mille: 50,
            duplicate_per_mille: 20,
            delay_steps_max: 4,
            partition_per_mille: 5,
            heal_per_mille: 30,
            crash_per_mille: 4,
            restart_per_mille: 60,
            torn_write_per_mille: 500,
            write_complete_per_mille: 600,
            propose_per_mille: 300,
            read_per_mille: 50,
            compact_per_mille: 10,
            compact_lag_entries: 5,
            transfer_per_mille: 2,
            membership_per_mille: 5,
            tick_per_mille_min: 700,
            lease_read: false,
            liveness_steps_max: 1_500,
            pre_vote: true,
            check_quorum: true,
        }
    }
}

const LIVENESS_DELAY_STEPS_MAX: u64 = 2;
const LIVENESS_WRITE_COMPLETE_PER_MILLE_MIN: u32 = 500;

#[derive(Clone, Debug, Default)]
struct StateMachine {
    applied: u64,
    digest: u64,
}

impl StateMachine {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = self.applied.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.digest.to_le_bytes());
        bytes
    }

    fn decode(snapshot: &Snapshot) -> StateMachine {
        if snapshot.meta.index == 0 {
            return StateMachine::default();
        }
        let word =
            |range: std::ops::Range<usize>| u64::from_le_bytes(snapshot.data[range].try_into().expect("8 bytes"));
        let state = StateMachine { applied: word(0..8), digest: word(8..16) };
        assert_eq!(state.applied, snapshot.meta.index, "snapshot data/index mismatch");
        state
    }
}

#[derive(Debug)]
struct Write {
    number: u64,
    hard_state: Option<HardState>,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

struct Node {
    id: NodeId,
    raw: Option<RawNode<MemStorage>>,
    /// Durable storage while crashed.
    disk: Option<MemStorage>,
    writes: VecDeque<Write>,
    state: StateMachine,
    tick_per_mille: u32,
    tick_phase: u32,
    seen_term: u64,
    seen_commit: u64,
    checked_commit: u64,
    durable_term: u64,
    durable_commit: u64,
    leader_checked_term: u64,
    restarts: u64,
}

struct InFlight {
    deliver_at: u64,
    message: Message,
}

struct PendingRead {
    context: u64,
    committed_at_request: u64,
}

pub struct Stats {
    pub steps: u64,
    pub committed_index: u64,
    pub elections: u64,
    pub crashes: u64,
    pub messages: u64,
    pub snapshots_sent: u64,
    pub reads_served: u64,
    pub transfers: u64,
    pub conf_changes: u64,
}

pub struct Sim {
    options: Options,
    rng: Rng,
    seed: u64,
    now: u64,
    nodes: Vec<Node>,
    network: Vec<InFlight>,
    /// Pairs (a, b), a < b, that cannot talk.
    cut: BTreeSet<(NodeId, NodeId)>,
    checker: Checker,
    faults: bool,
    next_payload: u64,
    reads: Vec<PendingRead>,
    next_read: u64,
    stats: Stats,
}

fn node_config(id: NodeId, seed: u64, options: &Options) -> Config {
    let mut config = Config::new(id);
    config.random_seed = seed.wrapping_mul(31).wrapping_add(id);
    config.pre_vote = options.pre_vote;
    config.check_quorum = options.check_quorum;
    config.inflight_appends_max = 4;
    config.append_entries_bytes_max = 256;
    config.snapshot_timeout_ticks = 30;
    config.lease_read = options.lease_read;
    // In the time the fastest clock counts E ticks a clock at the slowest rate counts at least
    // E * rate_min - 1; the lease must end before the fastest follower's does.
    let timeout = u64::from(config.election_timeout_ticks_min);
    let slow_ticks = timeout * u64::from(options.tick_per_mille_min) / 1000;
    let drift = (timeout - slow_ticks + 1).min(timeout - 1);
    config.lease_clock_drift_ticks_max = drift as u32;
    config
}

impl Sim {
    pub fn new(seed: u64, options: Options) -> Sim {
        let mut rng = Rng::new(seed);
        let voters: Vec<NodeId> = (1..=options.replicas as NodeId).collect();
        // One spare replica that starts outside the group, for membership changes.
        let all: Vec<NodeId> = (1..=options.replicas as NodeId + 1).collect();
        let nodes = all
            .iter()
            .map(|&id| {
                let storage = MemStorage::new_with_conf(raft::ConfState::with_voters(voters.clone()));
                let raw = RawNode::new(node_config(id, seed, &options), storage).expect("valid simulator config");
                let jitter = 1000 - options.tick_per_mille_min;
                Node {
                    id,
                    raw: Some(raw),
                    disk: None,
                    writes: VecDeque::new(),
                    state: StateMachine::default(),
                    tick_per_mille: options.tick_per_mille_min + rng.below(u64::from(jitter) + 1) as u32,
                    tick_phase: rng.below(1000) as u32,
                    seen_term: 0,
                    seen_commit: 0,
                    checked_commit: 0,
                    durable_term: 0,
                    durable_commit: 0,
                    leader_checked_term: 0,
                    restarts: 0,
                }
            })
            .collect();
        Sim {
            options,
            rng,
            seed,
            now: 0,
            nodes,
            network: Vec::new(),
            cut: BTreeSet::new(),
            checker: Checker::default(),
            faults: true,
            next_payload: 1,
            reads: Vec::new(),
            next_read: 1,
            stats: Stats {
                steps: 0,
                committed_index: 0,
                elections: 0,
                crashes: 0,
                messages: 0,
                snapshots_sent: 0,
                reads_served: 0,
                transfers: 0,
                conf_changes: 0,
            },
        }
    }

    /// Runs the faulty phase, then the liveness phase. Err carries the violation.
    pub fn run(mut self) -> Result<Stats, String> {
        for _ in 0..self.options.steps {
            self.step().map_err(|v| self.describe(v))?;
        }
        self.heal_all();
        self.liveness().map_err(|v| self.describe(v))?;
        self.stats.committed_index = self.checker.committed_len();
        Ok(self.stats)
    }

    fn describe(&self, violation: Violation) -> String {
        format!(
            "seed {} step {}: {violation}\nreplay: RAFT_SIM_SEED={} RAFT_SIM_REPLICAS={} cargo test --release -p raft-sim -- replay_seed --nocapture",
            self.seed, self.now, self.seed, self.options.replicas
        )
    }

    fn step(&mut self) -> Result<(), Violation> {
        self.now += 1;
        self.stats.steps += 1;
        self.tick_nodes();
        if self.faults || self.rng.chance(self.options.propose_per_mille) {
            self.client_requests();
        }
        self.deliver_messages();
        self.complete_writes()?;
        self.process_readies()?;
        if self.faults {
            self.operator_requests();
            self.inject_faults();
        }
        self.check_nodes()
    }

    fn tick_nodes(&mut self) {
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            node.tick_phase += node.tick_per_mille;
            if node.tick_phase >= 1000 {
                node.tick_phase -= 1000;
                if let Some(raw) = node.raw.as_mut() {
                    raw.tick();
                }
            }
        }
    }

    /// The live leader of the highest term (a deposed one may not know it yet).
    fn leader_index(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let status = n.raw.as_ref()?.status();
                (status.role == Role::Leader).then_some((status.term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn operator_requests(&mut self) {
        let Some(leader) = self.leader_index() else {
            return;
        };
        let count = self.nodes.len() as u64;
        if self.rng.chance(self.options.transfer_per_mille) {
            let target = 1 + self.rng.below(count);
            let raw = self.nodes[leader].raw.as_mut().expect("leader is live");
            if raw.transfer_leader(target).is_ok() {
                self.stats.transfers += 1;
            }
        }
        if self.rng.chance(self.options.membership_per_mille) {
            let node = 1 + self.rng.below(count);
            let raw = self.nodes[leader].raw.as_mut().expect("leader is live");
            let conf = raw.status().conf_state;
            let kind = if conf.learners.contains(&node) {
                ConfChangeKind::AddVoter
            } else if !conf.voters.contains(&node) {
                ConfChangeKind::AddLearner
            } else if conf.voters.len() > self.options.replicas {
                ConfChangeKind::Remove
            } else {
                return;
            };
            if raw.propose_conf_change(ConfChange { kind, node }).is_ok() {
                self.stats.conf_changes += 1;
            }
        }
    }

    fn client_requests(&mut self) {
        if self.rng.chance(self.options.propose_per_mille) {
            let index = self.rng.below(self.nodes.len() as u64) as usize;
            let payload = self.next_payload;
            let bytes = self.rng.below(40) as usize;
            if let Some(raw) = self.nodes[index].raw.as_mut() {
                let mut data = payload.to_le_bytes().to_vec();
                data.resize(8 + bytes, 0xAB);
                if raw.propose(data).is_ok() {
                    self.next_payload += 1;
                }
            }
        }
        if self.rng.chance(self.options.read_per_mille) {
            let index = self.rng.below(self.nodes.len() as u64) as usize;
            let context = self.next_read;
            let committed_at_request = self.checker.committed_len();
            if let Some(raw) = self.nodes[index].raw.as_mut() {
                if raw.read_index(context).is_ok() {
                    self.next_read += 1;
                    self.reads.push(PendingRead { context, committed_at_request });
                }
            }
        }
    }

    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from.min(to), from.max(to)))
    }

    fn deliver_messages(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        let mut index = 0;
        while index < self.network.len() {
            if self.network[index].deliver_at <= now {
                due.push(self.network.swap_remove(index).message);
            } else {
                index += 1;
            }
        }
        // Reorder among the due messages.
        self.rng.shuffle(&mut due);
        for message in due {
            if self.blocked(message.from, message.to) {
                continue;
            }
            if self.faults && self.rng.chance(self.options.drop_per_mille) {
                continue;
            }
            let target = (message.to - 1) as usize;
            if let Some(raw) = self.nodes[target].raw.as_mut() {
                raw.step(message);
            }
        }
    }

    fn send(&mut self, message: Message) {
        self.stats.messages += 1;
        if let raft::MessageBody::Snapshot { .. } = message.body {
            self.stats.snapshots_sent += 1;
        }
        let copies = if self.faults && self.rng.chance(self.options.duplicate_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.options.delay_steps_max);
            self.network.push(InFlight { deliver_at: self.now + delay, message: message.clone() });
        }
    }

    fn complete_writes(&mut self) -> Result<(), Violation> {
        for index in 0..self.nodes.len() {
            while !self.nodes[index].writes.is_empty() && self.rng.chance(self.options.write_complete_per_mille) {
                let write = self.nodes[index].writes.pop_front().expect("checked non-empty");
                self.persist(index, write)?;
            }
        }
        Ok(())
    }

    fn persist(&mut self, index: usize, write: Write) -> Result<(), Violation> {
        let node = &mut self.nodes[index];
        let raw = node.raw.as_mut().expect("writes exist only on live nodes");
        if let Some(snapshot) = write.snapshot {
            node.state = StateMachine::decode(&snapshot);
            self.checker.applied(node.state.applied, node.state.digest)?;
            raw.storage_mut()
                .apply_snapshot(snapshot)
                .map_err(|e| format!("node {}: apply_snapshot failed: {e}", node.id))?;
        }
        raw.storage_mut().append(&write.entries).map_err(|e| format!("node {}: append failed: {e}", node.id))?;
        if let Some(hard_state) = write.hard_state {
            raw.storage_mut()
                .set_hard_state(hard_state)
                .map_err(|e| format!("node {}: set_hard_state failed: {e}", node.id))?;
            if hard_state.term < node.durable_term || hard_state.commit < node.durable_commit {
                return Err(format!(
                    "node {}: durable term/commit went backwards: {hard_state:?} after term {} commit {}",
                    node.id, node.durable_term, node.durable_commit
                ));
            }
            node.durable_term = hard_state.term;
            node.durable_commit = hard_state.commit;
            if let Some(vote) = hard_state.vote {
                self.checker.durable_vote(node.id, hard_state.term, vote)?;
            }
        }
        raw.on_persisted(write.number);
        Ok(())
    }

    fn process_readies(&mut self) -> Result<(), Violation> {
        // Bounded: each round drains what the previous one released.
        for _round in 0..8 {
            let mut any = false;
            for index in 0..self.nodes.len() {
                let ready = match self.nodes[index].raw.as_mut() {
                    Some(raw) if raw.has_ready() => raw.ready(),
                    _ => continue,
                };
                any = true;
                self.handle_ready(index, ready)?;
            }
            if !any {
                break;
            }
        }
        Ok(())
    }

    fn handle_ready(&mut self, index: usize, ready: Ready) -> Result<(), Violation> {
        {
            let node = &self.nodes[index];
            let raw = node.raw.as_ref().expect("ready only from live nodes");
            for entry in &ready.entries {
                let prev_term = if entry.index == 1 { Some(0) } else { raw.term(entry.index - 1) };
                self.checker.appended(entry, prev_term)?;
            }
        }
        let must_persist = ready.must_persist();
        for message in ready.messages {
            self.send(message);
        }
        if must_persist {
            self.nodes[index].writes.push_back(Write {
                number: ready.number,
                hard_state: ready.hard_state,
                snapshot: ready.snapshot,
                entries: ready.entries,
            });
        }
        let node = &mut self.nodes[index];
        if let Some(last) = ready.committed_entries.last() {
            let last_index = last.index;
            for entry in &ready.committed_entries {
                if entry.index != node.state.applied + 1 {
                    return Err(format!("node {} applies {} after {}", node.id, entry.index, node.state.applied));
                }
                node.state.digest = chain_digest(node.state.digest, entry);
                node.state.applied = entry.index;
                self.checker.applied(entry.index, node.state.digest)?;
            }
            node.raw.as_mut().expect("live node").on_applied(last_index);
        }
        for context in ready.dropped_reads {
            let Some(position) = self.reads.iter().position(|r| r.context == context) else {
                return Err(format!("unknown dropped read context {context}"));
            };
            self.reads.swap_remove(position);
        }
        for read in ready.read_states {
            let Some(position) = self.reads.iter().position(|r| r.context == read.context) else {
                return Err(format!("unknown read context {}", read.context));
            };
            let pending = self.reads.swap_remove(position);
            self.stats.reads_served += 1;
            if read.index < pending.committed_at_request {
                return Err(format!(
                    "stale ReadIndex {} < {} committed when the read arrived",
                    read.index, pending.committed_at_request
                ));
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self) {
        let count = self.nodes.len() as u64;
        if self.rng.chance(self.options.partition_per_mille) {
            self.cut = self.rng.cut(count);
        }
        if self.rng.chance(self.options.heal_per_mille) {
            self.cut.clear();
        }
        if self.rng.chance(self.options.crash_per_mille) {
            let index = self.rng.below(count) as usize;
            self.crash(index);
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].raw.is_none() && self.rng.chance(self.options.restart_per_mille) {
                self.restart(index);
            }
        }
        if self.rng.chance(self.options.compact_per_mille) {
            let index = self.rng.below(count) as usize;
            self.compact(index);
        }
    }

    /// Loses everything not reported persisted; the oldest unfinished write may be torn (a
    /// prefix of its entries reached the disk but was never acknowledged).
    fn crash(&mut self, index: usize) {
        let Some(raw) = self.nodes[index].raw.take() else {
            return;
        };
        self.stats.crashes += 1;
        let mut disk = raw.into_storage();
        let node = &mut self.nodes[index];
        if let Some(write) = node.writes.pop_front() {
            if write.snapshot.is_none()
                && !write.entries.is_empty()
                && self.rng.chance(self.options.torn_write_per_mille)
            {
                let kept = 1 + self.rng.below(write.entries.len() as u64) as usize;
                disk.append(&write.entries[..kept]).expect("a torn prefix of an in-order write appends cleanly");
            }
        }
        node.writes.clear();
        node.disk = Some(disk);
        node.state = StateMachine::default();
    }

    fn restart(&mut self, index: usize) {
        let options = self.options.clone();
        let seed = self.seed.wrapping_add(self.nodes[index].restarts * 7919);
        let node = &mut self.nodes[index];
        let Some(disk) = node.disk.take() else {
            return;
        };
        node.restarts += 1;
        let snapshot = disk.snapshot().expect("mem storage snapshot");
        node.state = StateMachine::decode(&snapshot);
        let mut config = node_config(node.id, seed, &options);
        config.applied_index = snapshot.meta.index;
        let raw = RawNode::new(config, disk).expect("restart from durable storage");
        let status = raw.status();
        node.seen_term = status.term;
        node.seen_commit = status.commit;
        // Re-verify every committed entry the restarted replica still holds.
        node.checked_commit = 0;
        node.raw = Some(raw);
    }

    fn compact(&mut self, index: usize) {
        let lag = self.options.compact_lag_entries;
        let node = &mut self.nodes[index];
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        if node.state.applied <= raw.status().first_index + lag {
            return;
        }
        // The state machine is at `applied`; only a snapshot of exactly that state is valid.
        // An error means the entry is not yet durable locally: try again later.
        let _ = raw.compact(node.state.applied, node.state.encode().into());
    }

    fn check_nodes(&mut self) -> Result<(), Violation> {
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let Some(raw) = node.raw.as_ref() else {
                continue;
            };
            let status = raw.status();
            if status.term < node.seen_term || status.term < node.durable_term {
                return Err(format!("node {} term went backwards", node.id));
            }
            if status.commit < node.seen_commit || status.commit < node.durable_commit {
                return Err(format!(
                    "node {} commit went backwards: {} < {}",
                    node.id, status.commit, node.seen_commit
                ));
            }
            node.seen_term = status.term;
            node.seen_commit = status.commit;
            let from = node.checked_commit.max(status.first_index - 1) + 1;
            for commit_index in from..=status.commit {
                if let Some(entry) = raw.entry(commit_index) {
                    self.checker.committed(&entry, status.term)?;
                }
            }
            node.checked_commit = status.commit;
            if status.role == Role::Leader {
                self.checker.leader(status.term, node.id)?;
                if node.leader_checked_term != status.term {
                    node.leader_checked_term = status.term;
                    self.stats.elections += 1;
                    self.checker.leader_complete(node.id, status.term, status.first_index, |i| raw.term(i))?;
                }
            }
        }
        Ok(())
    }

    /// Stops faults and restores the timing Raft's liveness assumes (message delay and disk
    /// latency well below the election timeout).
    fn heal_all(&mut self) {
        self.faults = false;
        self.options.delay_steps_max = self.options.delay_steps_max.min(LIVENESS_DELAY_STEPS_MAX);
        self.options.write_complete_per_mille =
            self.options.write_complete_per_mille.max(LIVENESS_WRITE_COMPLETE_PER_MILLE_MIN);
        self.cut.clear();
        for index in 0..self.nodes.len() {
            if self.nodes[index].raw.is_none() {
                self.restart(index);
            }
        }
    }

    /// After faults stop: a leader emerges and a fresh proposal is applied by every replica. The
    /// marker is proposed again by each new leader (an earlier leader's copy may be truncated).
    fn liveness(&mut self) -> Result<(), Violation> {
        let start = self.now;
        let mut marker: Option<(u64, u64)> = None;
        while self.now - start < self.options.liveness_steps_max {
            self.step()?;
            let leader = self.leader_index().and_then(|i| self.nodes[i].raw.as_mut());
            if let Some(leader) = leader {
                let term = leader.status().term;
                if marker.is_none_or(|(_, marker_term)| marker_term < term) {
                    if let Ok(index) = leader.propose(b"liveness-marker".to_vec()) {
                        marker = Some((index, term));
                    }
                }
            }
            if let Some((index, term)) = marker {
                let committed = self.checker.committed_term(index) == Some(term);
                let members =
                    self.leader_index().and_then(|i| self.nodes[i].raw.as_ref().map(|raw| raw.status().conf_state));
                let all_applied = members.is_some_and(|conf| {
                    self.nodes.iter().filter(|n| conf.contains(n.id)).all(|n| n.state.applied >= index)
                });
                if committed && all_applied {
                    return Ok(());
                }
            }
        }
        let mut nodes = String::new();
        for node in &self.nodes {
            if let Some(raw) = node.raw.as_ref() {
                nodes.push_str(&format!(
                    "\n  {:?} applied {} writes {}",
                    raw.status(),
                    node.state.applied,
                    node.writes.len()
                ));
            }
        }
        Err(format!(
            "liveness: no proposal applied everywhere within {} steps after healing (marker {marker:?}){nodes}",
            self.options.liveness_steps_max
        ))
    }
}
