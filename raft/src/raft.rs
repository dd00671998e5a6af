//! The protocol core: roles, terms, message dispatch and ticks. Election, replication and
//! membership handlers live in their own modules as further `impl` blocks on `Raft`.
//!
//! Outgoing messages go to one of two queues: `msgs` may be sent at once; `msgs_after_persist`
//! depend on state not yet durable (a vote, appended entries) and are released by `RawNode` only
//! after the application reports the persistence of the Ready that carries that state. The
//! replica's own vote and own append acknowledgement travel the same way, so a leader never
//! counts itself for an entry or a vote it might lose in a crash.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::RaftLog;
use crate::membership::Membership;
use crate::progress::Progress;
use crate::quorum::VoteTally;
use crate::read_only::ReadOnly;
use crate::storage::Storage;
use crate::types::{ConfState, Entry, HardState, Message, MessageBody, NodeId, Payload, ReadState, Role};

/// Bytes read per step when replaying membership changes from the log at start-up.
const STARTUP_SCAN_BYTES_MAX: u64 = 4 << 20;

pub struct Raft<S: Storage> {
    pub(crate) id: NodeId,
    pub(crate) term: u64,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog<S>,
    pub(crate) role: Role,
    pub(crate) leader_id: Option<NodeId>,
    pub(crate) config: Config,
    pub(crate) membership: Membership,
    /// Leader only: one entry per member, including the leader itself when it is a member.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    pub(crate) votes: VoteTally,
    pub(crate) msgs: Vec<Message>,
    pub(crate) msgs_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    /// Contexts of ReadIndex requests abandoned because leadership was lost.
    pub(crate) dropped_reads: Vec<u64>,
    pub(crate) read_only: ReadOnly,
    /// ReadIndex contexts that arrived before the leader committed an entry of its term.
    pub(crate) reads_waiting_for_commit: Vec<u64>,
    pub(crate) election_elapsed_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    pub(crate) randomized_election_timeout_ticks: u32,
    rng_state: u64,
    pub(crate) lead_transferee: Option<NodeId>,
    /// Index of the newest membership change the leader may not yet see committed.
    pub(crate) pending_conf_index: u64,
    /// (index, bytes) of the leader's uncommitted proposals, for `uncommitted_bytes_max`.
    pub(crate) uncommitted: VecDeque<(u64, u64)>,
    pub(crate) uncommitted_bytes: u64,
    /// Proposals appended since the last broadcast; flushed once per Ready to batch them.
    pub(crate) replication_pending: bool,
    /// Leader only: ticks counted in this term, starting at 1 (0 means "never" in leases).
    pub(crate) leader_ticks: u64,
    /// Set once TimeoutNow went out: the transferee may win despite the lease.
    pub(crate) lease_disabled: bool,
    /// Ticks since this replica started (saturating), for the post-restart lease quiet period.
    pub(crate) ticks_since_start: u64,
    /// No vote, pre-vote or campaign until the commit index reaches this (0: no restriction), or until
    /// an entry of a term above `votes_withheld_term` is committed.
    pub(crate) votes_withheld_until: u64,
    pub(crate) votes_withheld_term: u64,
}

impl<S: Storage> Raft<S> {
    pub fn new(config: Config, storage: S) -> Result<Raft<S>> {
        config.validate()?;
        let state = storage.initial_state()?;
        let snapshot_index = storage.first_index()? - 1;
        let log = RaftLog::new(storage, state.hard_state.commit, config.applied_index)?;
        let mut raft = Raft {
            id: config.id,
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            log,
            role: Role::Follower,
            leader_id: None,
            rng_state: config.random_seed ^ config.id.rotate_left(32),
            config,
            membership: Membership::new(snapshot_index, state.conf_state),
            progress: BTreeMap::new(),
            votes: VoteTally::default(),
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            read_only: ReadOnly::default(),
            reads_waiting_for_commit: Vec::new(),
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: 0,
            lead_transferee: None,
            pending_conf_index: 0,
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            replication_pending: false,
            leader_ticks: 1,
            lease_disabled: false,
            ticks_since_start: 0,
            votes_withheld_until: 0,
            votes_withheld_term: 0,
        };
        raft.replay_membership()?;
        let term = raft.term;
        raft.become_follower(term, None);
        Ok(raft)
    }

    /// Membership changes logged after the snapshot are in force already (they apply on append).
    fn replay_membership(&mut self) -> Result<()> {
        let mut low = self.log.first_index();
        let high = self.log.last_index() + 1;
        while low < high {
            let entries = self.log.slice(low, high, STARTUP_SCAN_BYTES_MAX)?;
            let last = entries.last().expect("non-empty range yields entries").index;
            self.membership.on_append(&entries);
            low = last + 1;
        }
        Ok(())
    }

    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed() }
    }

    pub fn conf_state(&self) -> &ConfState {
        self.membership.current()
    }

    pub(crate) fn voters(&self) -> &BTreeSet<NodeId> {
        &self.membership.current().voters
    }

    pub(crate) fn is_promotable(&self) -> bool {
        self.voters().contains(&self.id)
    }

    /// A replica rebuilt from nothing takes no part in elections until it holds what was committed:
    /// the entries up to the index it was given, or an entry of a term later than the one it adopted.
    /// A leader of such a term was elected without this replica's vote, so its log holds every entry
    /// committed before it (leader completeness), everything the lost copy helped commit included, and
    /// this replica's log matches it up to the committed entry.
    pub(crate) fn votes_withheld(&self) -> bool {
        let committed = self.log.committed();
        committed < self.votes_withheld_until
            && !self.log.term(committed).is_some_and(|term| term > self.votes_withheld_term)
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: deterministic from the configured seed.
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn reset_randomized_election_timeout(&mut self) {
        let min = self.config.election_timeout_ticks_min;
        let span = u64::from(self.config.election_timeout_ticks_max - min);
        let offset = (self.next_random() % span) as u32;
        self.randomized_election_timeout_ticks = min + offset;
    }

    /// Clears per-term and per-role state; a new term also clears the vote. The election timer
    /// is left alone: per Figure 2 only hearing from the leader, granting a vote or starting an
    /// election restarts it. Restarting it whenever a higher term shows up would let replicas
    /// that cannot win (stale log, fast clock) keep the one that can from ever timing out.
    pub(crate) fn reset(&mut self, term: u64) {
        assert!(term >= self.term, "term must never go backwards");
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        self.leader_id = None;
        self.heartbeat_elapsed_ticks = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = None;
        self.votes = VoteTally::default();
        self.progress.clear();
        let mut dropped = self.read_only.clear();
        dropped.append(&mut self.reads_waiting_for_commit);
        self.dropped_reads.append(&mut dropped);
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.replication_pending = false;
        self.leader_ticks = 1;
        self.lease_disabled = false;
    }

    pub(crate) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader_id = leader;
        if leader.is_some() {
            self.election_elapsed_ticks = 0;
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: u64, body: MessageBody) {
        assert_ne!(to, self.id, "immediate messages to self are never needed");
        self.msgs.push(Message { from: self.id, to, term, body });
    }

    /// Queues a message that may only leave once the state it reports is durable.
    pub(crate) fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        self.msgs_after_persist.push(Message { from: self.id, to, term: self.term, body });
    }

    pub fn step(&mut self, message: Message) {
        if message.to != self.id {
            return;
        }
        if message.term > self.term {
            if !self.accept_higher_term(&message) {
                return;
            }
        } else if message.term < self.term {
            self.answer_stale_term(&message);
            return;
        }
        match message.body {
            MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, .. } => {
                self.handle_vote_request(&message, pre_vote, last_log_index, last_log_term)
            }
            _ => match self.role {
                Role::Leader => self.step_leader(message),
                Role::PreCandidate | Role::Candidate => self.step_candidate(message),
                Role::Follower => self.step_follower(message),
            },
        }
        self.check_invariants();
    }

    /// Returns false when the message must be dropped.
    fn accept_higher_term(&mut self, message: &Message) -> bool {
        if let MessageBody::VoteRequest { transfer, .. } = message.body {
            // Leader lease (check-quorum): while we hear from a live leader, a disrupting
            // candidate must not depose it, unless the leader itself asked (transfer).
            let in_lease = self.config.check_quorum
                && self.leader_id.is_some()
                && self.election_elapsed_ticks < self.config.election_timeout_ticks_min;
            // A restarted replica forgot whom it promised; with lease reads it keeps quiet for a
            // full election timeout so that a lease granted before the crash runs out first.
            let in_lease = in_lease
                || (self.config.lease_read
                    && self.ticks_since_start < u64::from(self.config.election_timeout_ticks_min));
            if in_lease && !transfer {
                return false;
            }
        }
        match message.body {
            // Pre-votes are sent at a future term without anyone adopting it.
            MessageBody::VoteRequest { pre_vote: true, .. } => {}
            MessageBody::VoteResponse { pre_vote: true, granted: true } => {}
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                self.become_follower(message.term, Some(message.from))
            }
            _ => self.become_follower(message.term, None),
        }
        true
    }

    fn answer_stale_term(&mut self, message: &Message) {
        match message.body {
            // §5.1: the request is rejected and the reply carries our term, so a deposed leader
            // steps down. Needed even without check-quorum / pre-vote: a leader removed from the
            // group, or cut off while the others moved on, never hears a vote request again.
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                self.send(message.from, MessageBody::HeartbeatResponse { read_seq: 0, lease_tick: 0 });
            }
            // Without this a pre-candidate with a stale term could wait forever.
            MessageBody::VoteRequest { pre_vote: true, .. } => {
                self.send(message.from, MessageBody::VoteResponse { pre_vote: true, granted: false });
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, message: Message) {
        match message.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                self.election_elapsed_ticks = 0;
                self.leader_id = Some(message.from);
                self.handle_leader_message(message);
            }
            // Leadership transfer: skip pre-vote and the lease (campaign checks promotability).
            MessageBody::TimeoutNow => self.campaign(false, true),
            _ => {}
        }
    }

    fn step_candidate(&mut self, message: Message) {
        match message.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                // A leader exists for our term: we lost.
                self.become_follower(message.term, Some(message.from));
                self.handle_leader_message(message);
            }
            MessageBody::VoteResponse { pre_vote, granted } => {
                self.handle_vote_response(message.from, pre_vote, granted)
            }
            _ => {}
        }
    }

    fn handle_leader_message(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::Append { prev_log_index, prev_log_term, entries, commit } => {
                self.handle_append(from, prev_log_index, prev_log_term, &entries, commit)
            }
            MessageBody::Heartbeat { commit, read_seq, lease_tick } => {
                // The leader never sends more than what it believes we hold; a replica that lost its
                // log (a wiped disk) holds less, and learns the rest through appends or a snapshot.
                self.log.commit_to(commit.min(self.log.last_index()));
                self.send(from, MessageBody::HeartbeatResponse { read_seq, lease_tick });
            }
            MessageBody::Snapshot { snapshot } => self.handle_snapshot(from, snapshot),
            _ => unreachable!("only leader messages are routed here"),
        }
    }

    pub fn tick(&mut self) {
        self.ticks_since_start = self.ticks_since_start.saturating_add(1);
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
        self.check_invariants();
    }

    fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        if self.is_promotable()
            && !self.votes_withheld()
            && self.election_elapsed_ticks >= self.randomized_election_timeout_ticks
        {
            self.election_elapsed_ticks = 0;
            self.campaign(self.config.pre_vote, false);
        }
    }

    fn tick_leader(&mut self) {
        self.leader_ticks += 1;
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks_min {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = None;
        }
        self.tick_snapshot_timeouts();
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            let read_seq = self.read_only.last_seq();
            self.broadcast_heartbeat(read_seq);
        }
    }

    /// Check-quorum: did a majority of voters talk to us since the last round? Resets the marks.
    fn quorum_recently_active(&mut self) -> bool {
        let id = self.id;
        let mut active = BTreeSet::new();
        for (&peer, progress) in self.progress.iter_mut() {
            if peer == id || progress.recent_active {
                active.insert(peer);
            }
            progress.recent_active = peer == id;
        }
        crate::quorum::has_quorum(self.voters(), &active)
    }

    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64> {
        self.check_can_propose()?;
        let bytes = data.len() as u64;
        if bytes > self.config.proposal_bytes_max {
            return Err(Error::ProposalTooLarge { bytes, bytes_max: self.config.proposal_bytes_max });
        }
        let entry_bytes = bytes + crate::types::ENTRY_OVERHEAD_BYTES;
        if self.uncommitted_bytes + entry_bytes > self.config.uncommitted_bytes_max {
            return Err(Error::UncommittedLogFull {
                bytes: self.uncommitted_bytes,
                bytes_max: self.config.uncommitted_bytes_max,
            });
        }
        let index = self.append_as_leader(Payload::data(data));
        self.uncommitted.push_back((index, entry_bytes));
        self.uncommitted_bytes += entry_bytes;
        Ok(index)
    }

    pub(crate) fn check_can_propose(&self) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader_id });
        }
        if self.lead_transferee.is_some() {
            return Err(Error::TransferInProgress);
        }
        Ok(())
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    pub fn read_index(&mut self, context: u64) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader_id });
        }
        let pending = self.read_only.len() + self.reads_waiting_for_commit.len();
        if pending >= self.config.read_index_pending_max {
            return Err(Error::ReadIndexQueueFull { pending_max: self.config.read_index_pending_max });
        }
        // Until it commits an entry of its term, a new leader's commit index may lag behind
        // what earlier leaders committed; reads wait for that.
        if !self.committed_in_current_term() {
            self.reads_waiting_for_commit.push(context);
            return Ok(());
        }
        if self.lease_valid() {
            let index = self.log.committed();
            self.read_states.push(ReadState { context, index });
            return Ok(());
        }
        self.register_reads(&[context]);
        Ok(())
    }

    pub(crate) fn register_reads(&mut self, contexts: &[u64]) {
        if contexts.is_empty() {
            return;
        }
        let committed = self.log.committed();
        let sole_voter = self.voters().len() == 1 && self.is_promotable();
        if sole_voter {
            for &context in contexts {
                self.read_states.push(ReadState { context, index: committed });
            }
            return;
        }
        let mut seq = 0;
        for &context in contexts {
            seq = self.read_only.add(context, committed, self.id);
        }
        self.broadcast_heartbeat(seq);
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<()> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader_id });
        }
        if to == self.id || self.lead_transferee == Some(to) {
            return Ok(());
        }
        if !self.voters().contains(&to) {
            return Err(Error::TransferTargetInvalid(to));
        }
        self.lead_transferee = Some(to);
        self.election_elapsed_ticks = 0;
        let matched = self.progress.get(&to).map_or(0, |p| p.matched);
        if matched == self.log.last_index() {
            self.send_timeout_now(to);
        } else {
            self.send_appends(to);
        }
        Ok(())
    }

    pub(crate) fn check_invariants(&self) {
        self.log.check_invariants();
        if self.role == Role::Leader {
            assert_eq!(self.leader_id, Some(self.id), "leader must know itself as leader");
            assert_eq!(self.vote, Some(self.id), "a leader voted for itself in its term");
            for (id, progress) in &self.progress {
                assert!(progress.matched < progress.next, "progress of {id}: match >= next");
                assert!(progress.matched <= self.log.last_index(), "progress of {id} beyond leader log");
            }
        }
        if self.role == Role::Candidate {
            assert_eq!(self.vote, Some(self.id), "a candidate votes for itself");
        }
    }

    pub(crate) fn entry_at(&self, index: u64) -> Option<Entry> {
        self.log.slice(index, index + 1, u64::MAX).ok().and_then(|mut entries| entries.pop())
    }
}
