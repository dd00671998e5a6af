//! One partition's Raft group on this node: the Raft replica, the committed state (what followers
//! serve reads from), the leader's speculative state (committed state plus every event in the log
//! not committed yet), the answers owed once entries apply, and the handling of each Ready.

use std::collections::{BTreeMap, VecDeque};

use net::types::ItemResult;
use raft::{ConfState, Entry, Message, MessageBody, Payload, RawNode, Role};

use super::reads::PendingRead;
use super::rejoin::{Recovery, RejoinMarker, Withheld};
use super::routing::{Parked, Request, Trip};
use super::snapshot_transfer::SnapshotTransfers;
use super::{Batch, GroupInit, GroupStatus, Handles, ItemsTo, Now, Persist, ReplicaStorage, Sink};
use crate::cluster_config::{ClusterConfig, ReplicationConfig};
use crate::error::EngineError;
use crate::event::{EventBatchView, EventBuffer};
use crate::idempotency::RunHome;
use crate::partition::PartitionState;
use crate::replica::snapshot::decode_partition_image;
use crate::shard::RECORD_PAYLOAD_BYTES_MAX;

/// Answers owed once the entry at `index` (with `term`) is applied.
pub(super) struct Owed<H: Handles> {
    pub index: u64,
    pub term: u64,
    pub answers: Vec<Answer<H>>,
    /// For the `commit` stage only (a metric: nothing is decided by it).
    pub proposed_at: std::time::Instant,
}

/// The results a decided batch will be answered with once its entry commits. A batch of this node's
/// own client keeps its items and trip (`retry`, moved here, never copied): should this replica stop
/// leading before the entry commits as proposed, the batch is routed again, to wherever the partition
/// is now led, instead of being refused `NotLeader`. That is safe because its ids are idempotency
/// keys: if the entry did commit, the new leader answers its outcome. A forwarded batch needs no
/// copy: its forwarding node routes it again on `NotLeader`.
pub(super) struct Answer<H: Handles> {
    pub to: ItemsTo<H>,
    pub results: Vec<ItemResult>,
    pub retry: Option<(Batch, Trip)>,
}

pub(super) struct Group<S: ReplicaStorage, H: Handles> {
    pub partition: u32,
    pub preferred_leader: u64,
    pub raw: RawNode<S>,
    pub committed: PartitionState,
    /// Committed state plus every uncommitted event in the log; only while leading.
    pub speculative: Option<PartitionState>,
    /// The speculative state took effects that never reached the log (a refused proposal): rebuild it.
    pub speculative_stale: bool,
    pub buffer: EventBuffer,
    pub round_answers: Vec<Answer<H>>,
    /// Batches of this node's clients this replica decided and then could not commit as leader, to be
    /// routed again by the core (see [`Answer`]).
    pub handed_back: Vec<Parked<H>>,
    pub owed: VecDeque<Owed<H>>,
    pub applied_index: u64,
    pub last_snapshot_index: u64,
    /// (first seq, log index) of every applied event batch still in the log, oldest first: where the
    /// history walk finds a seq.
    pub batch_index: Vec<(u64, u64)>,
    // Cached from the last `raw.status()`.
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub last_index: u64,
    /// Reads waiting until the committed state reaches a sequence.
    pub seq_waits: Vec<(u64, PendingRead<H>)>,
    /// Linearizable reads waiting for their ReadIndex (by context), then for the apply of that index.
    pub read_index_waits: BTreeMap<u64, PendingRead<H>>,
    pub index_waits: Vec<(u64, PendingRead<H>)>,
    pub preferred_caught_up_at_ms: Option<u64>,
    pub last_transfer_attempt_ms: Option<u64>,
    /// Set while this replica, rebuilt from nothing on a rejoining node, waits for every other replica's
    /// term and commit index; it takes no part in Raft until then.
    pub recovery: Option<Recovery>,
    /// After recovery, while Raft withholds this replica's votes: the rules of the rejoin marker that
    /// says so in the store (to be removed once Raft stops withholding), and when the other replicas
    /// were last asked again (see `ReplicaCore::probe_for_recovery`).
    pub withheld: Option<Withheld>,
    /// Only with the planted bug `keep_speculative_after_losing_leadership`: the speculative state
    /// outlived a leadership this replica lost.
    pub speculative_kept: bool,
    /// Where sealed id runs of this group's states are built (see `CoreOptions::id_runs`).
    pub id_runs: RunHome,
    /// The index of the [`super::Compaction`] handed out and not yet reported back.
    pub compacting: Option<u64>,
    /// Snapshots being sent to followers in chunks, and the one being received.
    pub transfers: SnapshotTransfers,
    /// Ticks a snapshot sending or assembly may go without progress before it is dropped: three of
    /// Raft's snapshot timeouts, after each of which the leader asks again.
    pub transfer_idle_ticks_max: u32,
    /// A received snapshot whose state is being rebuilt off the round ([`super::Restore`]), and the
    /// newest one received meanwhile, to restore next.
    pub restoring: Option<Message>,
    pub restore_next: Option<Message>,
    /// The rebuilt state of `restoring`, while Raft is handed the snapshot (see `ReplicaCore::restored`).
    pub restored: Option<(u64, PartitionState)>,
}

impl<S: ReplicaStorage, H: Handles> Group<S, H> {
    pub fn open(
        node_id: u64,
        cluster: &ClusterConfig,
        init: GroupInit<S>,
        id_runs: RunHome,
        now: Now,
    ) -> Result<Self, EngineError> {
        let GroupInit { partition, mut storage, config, rejoin, raft_seed } = init;
        let in_partition = |e: &dyn std::fmt::Display| EngineError::Log(format!("partition {partition}: {e}"));
        let replicas = cluster.replicas(partition);
        let snapshot = storage.snapshot().map_err(|e| in_partition(&e))?;
        let mut committed = if snapshot.meta.index == 0 {
            PartitionState::new(config)
        } else {
            let (image_partition, rows) = decode_partition_image(&snapshot.data)
                .map_err(|e| EngineError::Store(format!("partition {partition}: snapshot file: {e}")))?;
            if image_partition != partition {
                return Err(EngineError::Store(format!(
                    "partition {partition}: snapshot file holds partition {image_partition}"
                )));
            }
            PartitionState::restore_rows(config, rows)
                .map_err(|e| EngineError::Store(format!("partition {partition}: snapshot file: {e}")))?
        };
        committed.set_id_home(id_runs.clone());
        // Nothing in the store for this partition: on a rejoining node, that means it was lost. A marker
        // left by an earlier run that did not finish rejoining keeps its rules, whatever the flags say.
        let marker = storage.rejoin_marker()?;
        let initial = storage.initial_state().map_err(|e| in_partition(&e))?;
        let last_index = storage.last_index().map_err(|e| in_partition(&e))?;
        let empty = initial.hard_state.term == 0 && last_index == 0 && snapshot.meta.index == 0;
        let lost = rejoin && empty && replicas.len() > 1 && marker.is_none();
        if lost {
            storage.set_rejoin_marker(Some(RejoinMarker::AwaitingReports))?;
        }
        let r = &cluster.replication;
        let mut raft_config = raft::Config::new(node_id);
        raft_config.election_timeout_ticks_min = r.election_timeout_ticks_min;
        raft_config.election_timeout_ticks_max = r.election_timeout_ticks_max;
        raft_config.heartbeat_interval_ticks = r.heartbeat_interval_ticks;
        raft_config.append_entries_bytes_max = r.peer_batch_bytes_max as u64 / 2;
        raft_config.proposal_bytes_max = (RECORD_PAYLOAD_BYTES_MAX as u64) * 2;
        raft_config.uncommitted_bytes_max =
            raft_config.proposal_bytes_max.max(r.uncommitted_entries_max * RECORD_PAYLOAD_BYTES_MAX as u64);
        raft_config.random_seed = raft_seed;
        raft_config.applied_index = snapshot.meta.index;
        let transfer_idle_ticks_max = 3 * raft_config.snapshot_timeout_ticks;
        let mut raw = RawNode::new(raft_config, storage).map_err(|e| in_partition(&e))?;
        let status = raw.status();
        let recovery = (lost || marker == Some(RejoinMarker::AwaitingReports)).then(|| Recovery::new(now));
        let withheld = match marker {
            Some(RejoinMarker::WithholdVotesUntil { index, term }) => {
                // Re-adopt the term too: a crash may have come before it reached the hard state.
                raw.rejoin_after_loss(term, index);
                Some(Withheld { index, term, probed_ms: None })
            }
            _ => None,
        };
        Ok(Group {
            partition,
            preferred_leader: cluster.preferred_leader(partition),
            raw,
            committed,
            speculative: None,
            speculative_stale: false,
            buffer: EventBuffer::new(),
            round_answers: Vec::new(),
            handed_back: Vec::new(),
            owed: VecDeque::new(),
            applied_index: snapshot.meta.index,
            last_snapshot_index: snapshot.meta.index,
            batch_index: Vec::new(),
            role: status.role,
            leader: status.leader,
            term: status.term,
            commit_index: status.commit,
            last_index: status.last_index,
            seq_waits: Vec::new(),
            read_index_waits: BTreeMap::new(),
            index_waits: Vec::new(),
            preferred_caught_up_at_ms: None,
            last_transfer_attempt_ms: None,
            recovery,
            withheld,
            speculative_kept: false,
            id_runs,
            compacting: None,
            transfers: SnapshotTransfers::default(),
            transfer_idle_ticks_max,
            restoring: None,
            restore_next: None,
            restored: None,
        })
    }

    /// This replica leads and may decide new commands now: its speculative state is current and no
    /// leadership transfer is under way (Raft refuses proposals during one).
    pub fn may_decide(&self) -> bool {
        self.role == Role::Leader
            && self.speculative.is_some()
            && !self.speculative_stale
            && self.raw.lead_transferee().is_none()
    }

    pub fn not_leader(&self) -> EngineError {
        EngineError::NotLeader { partition: self.partition, leader: self.leader, term: self.term }
    }

    /// A Raft message from a peer. A recovering replica takes no part in Raft.
    pub fn step(&mut self, now: Now, message: Message) {
        if self.recovery.is_some() {
            return;
        }
        if message.from == self.preferred_leader {
            if let MessageBody::AppendResponse { index, reject: None } = message.body {
                if index >= self.commit_index && self.role == Role::Leader {
                    self.preferred_caught_up_at_ms = Some(now.mono_ms);
                }
            }
        }
        self.raw.step(message);
    }

    /// Validates a batch against the speculative state and collects its events for this round's entry.
    /// `trip`: for a batch of this node's own client, its journey so far (see [`Answer`]).
    pub fn execute(&mut self, now: Now, batch: Batch, to: ItemsTo<H>, trip: Option<Trip>, sink: &mut Sink<H>) {
        assert_eq!(trip.is_some(), matches!(to, ItemsTo::Local(_)), "only a local batch is routed again");
        if self.speculative_stale {
            // The proposal just made was refused: the speculative state holds effects the log lacks,
            // so nothing may be decided against it until it is rebuilt.
            let error = EngineError::Unavailable(format!("partition {}: leader is catching up", self.partition));
            return sink.items(to, Err(error));
        }
        let error = self.not_leader();
        let Some(state) = self.speculative.as_mut() else {
            return sink.items(to, Err(error));
        };
        let mut results = Vec::with_capacity(batch.len());
        match &batch {
            Batch::Transfers(items) => state.execute_transfers(now.wall_ns, items, &mut self.buffer, &mut results),
            Batch::Accounts(items) => state.execute_create_accounts(now.wall_ns, items, &mut self.buffer, &mut results),
        }
        assert_eq!(results.len(), batch.len(), "one result per item");
        self.round_answers.push(Answer { to, results, retry: trip.map(|trip| (batch, trip)) });
    }

    /// Refuses a decided batch whose entry will not commit as proposed here: `NotLeader` for this
    /// node's own client routes the batch again instead (see [`Answer`]); anything else answers `error`.
    fn refuse(&mut self, answer: Answer<H>, error: &EngineError, sink: &mut Sink<H>) {
        match (answer.to, answer.retry, error) {
            (ItemsTo::Local(to), Some((batch, trip)), EngineError::NotLeader { .. }) => {
                let trip = Trip { hops: trip.hops + 1, ..trip };
                let request = Request::Items { batch, to };
                self.handed_back.push(Parked { partition: self.partition, request, trip, not_before_ms: 0, to: None });
            }
            (to, _, error) => sink.items(to, Err(error.clone())),
        }
    }

    /// Proposes the round's events as one entry, and files its answers behind it.
    pub fn propose(&mut self, sink: &mut Sink<H>) {
        if self.round_answers.is_empty() && self.buffer.is_empty() {
            self.buffer.clear();
            return;
        }
        let answers = std::mem::take(&mut self.round_answers);
        // The round was decided against the speculative state of the leadership `observe_role` last
        // saw (term `self.term`). Raft may have ended it since, on a peer message of a later term
        // (stepping down, perhaps cutting the uncommitted tail those decisions counted on), and even
        // have won a later term again: the decisions then belong to no leadership and are refused.
        let status = self.raw.status();
        let outcome = if status.role != Role::Leader || status.term != self.term {
            Err(raft::Error::NotLeader { leader: status.leader })
        } else if self.buffer.is_started() && !self.buffer.is_empty() {
            let data = self.buffer.finish().to_vec();
            self.raw.propose(data).inspect(|_| crate::metrics::count_proposal()).map(|index| (index, self.term))
        } else {
            // Only replayed retries: their outcomes are in this leader's log already, maybe not yet
            // committed; answer once everything it holds is applied.
            Ok((status.last_index, self.raw.term(status.last_index).unwrap_or(self.term)))
        };
        self.buffer.clear();
        match outcome {
            Ok((index, _)) if index <= self.applied_index || sink.planted.answer_before_commit => {
                for answer in answers {
                    sink.items(answer.to, Ok(answer.results));
                }
            }
            Ok((index, term)) => {
                self.last_index = self.last_index.max(index);
                if let Some(back) = self.owed.back() {
                    assert!(
                        back.index <= index,
                        "partition {}: answers owed out of index order ({} after {})",
                        self.partition,
                        index,
                        back.index
                    );
                }
                self.owed.push_back(Owed { index, term, answers, proposed_at: std::time::Instant::now() });
            }
            Err(error) => {
                // The speculative state holds effects that will never be in the log.
                self.speculative_stale = true;
                let error = match error {
                    // Leadership moved (or is moving) before the entry reached the log: nothing was
                    // decided, so the answer says where to go, and a forwarding node sends the
                    // request on at once instead of relaying an error to its client.
                    raft::Error::NotLeader { leader } => {
                        EngineError::NotLeader { partition: self.partition, leader, term: self.raw.status().term }
                    }
                    raft::Error::TransferInProgress => EngineError::NotLeader {
                        partition: self.partition,
                        leader: self.raw.lead_transferee(),
                        term: self.raw.status().term,
                    },
                    error => {
                        EngineError::Unavailable(format!("partition {}: proposal refused: {error}", self.partition))
                    }
                };
                for answer in answers {
                    self.refuse(answer, &error, sink);
                }
            }
        }
    }

    /// Handles every Ready: messages out first (the local write then runs while followers write),
    /// the writes handed to the caller as a `Persist`, committed entries applied and their answers
    /// released, ReadIndex results filed; then serves waiting reads and compacts when due.
    pub fn drive(
        &mut self,
        node_id: u64,
        replication: &ReplicationConfig,
        sink: &mut Sink<H>,
        mut applied_log: Option<&mut Vec<(u32, Entry)>>,
    ) -> Result<(), EngineError> {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            for message in std::mem::take(&mut ready.messages) {
                let to = message.to;
                if let MessageBody::Snapshot { .. } = message.body {
                    self.transfers.offer(self.partition, message, replication, sink);
                } else {
                    sink.send(to, crate::replica::wire::PeerItem::Raft { partition: self.partition, message });
                }
            }
            if let Some(snapshot) = &ready.snapshot {
                // Raft installs only snapshots stepped by `ReplicaCore::restored`, with their state.
                let (index, mut state) = self.restored.take().expect("an installed snapshot's state is rebuilt first");
                assert_eq!(index, snapshot.meta.index, "partition {}: the state of another snapshot", self.partition);
                state.set_id_home(self.id_runs.clone());
                assert!(
                    snapshot.meta.index > self.applied_index,
                    "partition {}: snapshot at {} does not move past applied index {}",
                    self.partition,
                    snapshot.meta.index,
                    self.applied_index
                );
                self.committed = state;
                crate::metrics::count_snapshot_installed();
                self.batch_index.clear();
                self.applied_index = snapshot.meta.index;
                self.last_snapshot_index = snapshot.meta.index;
                sink.log(
                    log::Level::Info,
                    format!(
                        "node {node_id}: partition {}: installed snapshot at index {} (seq {})",
                        self.partition,
                        snapshot.meta.index,
                        self.committed.last_seq()
                    ),
                );
            }
            if ready.must_persist() {
                sink.outputs.push(super::Output::Persist(Persist {
                    partition: self.partition,
                    number: ready.number,
                    snapshot: ready.snapshot.take(),
                    entries: std::mem::take(&mut ready.entries),
                    hard_state: ready.hard_state,
                }));
            }
            if let Some(last) = ready.committed_entries.last().map(|e| e.index) {
                for entry in &ready.committed_entries {
                    self.apply_entry(entry, sink)?;
                    if let Some(log) = applied_log.as_deref_mut() {
                        log.push((self.partition, entry.clone()));
                    }
                }
                self.raw.on_applied(last);
            }
            for read_state in ready.read_states {
                if let Some(read) = self.read_index_waits.remove(&read_state.context) {
                    self.index_waits.push((read_state.index, read));
                }
            }
            for context in ready.dropped_reads {
                if let Some(read) = self.read_index_waits.remove(&context) {
                    let error = EngineError::NotLeader { partition: self.partition, leader: None, term: self.term };
                    read.read.fail(sink, error);
                }
            }
        }
        self.serve_waiting_reads(sink);
        let due = self.applied_index >= self.last_snapshot_index + replication.snapshot_interval_entries;
        let wanted = self.applied_index > self.last_snapshot_index && self.raw.storage().compaction_wanted();
        // Not while a received snapshot's state is rebuilt: the install replaces the state, and must
        // not wait for a compaction started meanwhile (see `ReplicaCore::restored`).
        if (due || wanted) && self.compacting.is_none() && self.restoring.is_none() {
            match self.raw.compaction_meta(self.applied_index) {
                Ok(Some(meta)) => {
                    assert_eq!(meta.index, self.applied_index, "a compaction is of the applied state");
                    self.compacting = Some(meta.index);
                    let rows = self.committed.export_rows();
                    sink.outputs.push(super::Output::Compact(super::Compaction {
                        partition: self.partition,
                        meta,
                        rows,
                    }));
                }
                Ok(None) => {}
                // The applied entries are not durable here yet (a snapshot still being written):
                // compact on a later round.
                Err(raft::Error::CompactBeyondApplied { .. }) => {}
                Err(error) => return Err(EngineError::Store(error.to_string())),
            }
        }
        Ok(())
    }

    /// A whole snapshot from a leader: its state is rebuilt off the round first (one at a time; a
    /// newer one received meanwhile waits, an older waiting one is dropped).
    pub fn begin_restore(&mut self, message: Message, sink: &mut Sink<H>) {
        if self.restoring.is_some() {
            self.restore_next = Some(message);
            return;
        }
        let MessageBody::Snapshot { snapshot } = &message.body else { panic!("restores take snapshot messages") };
        let restore = super::Restore {
            partition: self.partition,
            meta: snapshot.meta.clone(),
            image: snapshot.data.clone(),
            config: self.committed.config(),
        };
        sink.outputs.push(super::Output::Restore(restore));
        self.restoring = Some(message);
    }

    /// The snapshot assembled while another was restoring, if any, is restored next.
    pub fn begin_next_restore(&mut self, sink: &mut Sink<H>) {
        if let Some(next) = self.restore_next.take() {
            self.begin_restore(next, sink);
        }
    }

    /// The image of the compaction at `index` is durable in the store: Raft records it and drops the
    /// log prefix it covers, unless a snapshot installed meanwhile covers it already.
    pub fn finish_compaction(&mut self, index: u64, data: raft::SnapshotData) -> Result<(), EngineError> {
        assert_eq!(
            self.compacting.take(),
            Some(index),
            "partition {}: a compaction reported that was not handed out",
            self.partition
        );
        // `last_snapshot_index` moves at an install's Ready, before the store has it.
        assert!(self.raw.storage().snapshot_index() <= self.last_snapshot_index, "the store is never ahead");
        // A snapshot installed since covers it: recorded in the store already, or still being written
        // (Raft then counts nothing as persisted until it is, and would refuse the compaction).
        if index <= self.last_snapshot_index {
            return Ok(());
        }
        self.raw.compact(index, data).map_err(|error| EngineError::Store(error.to_string()))?;
        self.last_snapshot_index = self.last_snapshot_index.max(index);
        let first_kept = self.raw.status().first_index;
        self.batch_index.retain(|&(_, index)| index >= first_kept);
        Ok(())
    }

    /// Applies one committed entry to the committed state and answers what waited for it.
    fn apply_entry(&mut self, entry: &Entry, sink: &mut Sink<H>) -> Result<(), EngineError> {
        assert_eq!(
            entry.index,
            self.applied_index + 1,
            "partition {}: applied entries must be contiguous",
            self.partition
        );
        if let Payload::Data(bytes) = &entry.payload {
            let view = EventBatchView::new(bytes)
                .map_err(|e| EngineError::Log(format!("entry {}: not an event batch: {e}", entry.index)))?;
            self.committed
                .apply_batch(&view)
                .map_err(|e| EngineError::Log(format!("entry {}: cannot be applied: {e}", entry.index)))?;
            if view.event_count() > 0 {
                self.batch_index.push((view.first_seq(), entry.index));
            }
        }
        self.applied_index = entry.index;
        crate::metrics::count_commits(1);
        while let Some(owed) = self.owed.front() {
            if owed.index > entry.index {
                break;
            }
            let owed = self.owed.pop_front().expect("front exists");
            let committed_as_proposed = owed.index < entry.index || owed.term == entry.term;
            if committed_as_proposed {
                crate::metrics::observe_stage(crate::metrics::Stage::Commit, owed.proposed_at.elapsed());
            }
            for answer in owed.answers {
                if committed_as_proposed {
                    sink.items(answer.to, Ok(answer.results));
                } else {
                    let error = self.not_leader();
                    self.refuse(answer, &error, sink);
                }
            }
        }
        Ok(())
    }

    /// The committed state plus every entry of this replica's log after it.
    fn rebuild_speculative(&self) -> Result<PartitionState, EngineError> {
        let mut state = self.committed.clone();
        let last = self.raw.status().last_index;
        for index in self.applied_index + 1..=last {
            let entry = self
                .raw
                .entry(index)
                .ok_or_else(|| EngineError::Log(format!("entry {index} is missing from the log")))?;
            if let Payload::Data(bytes) = &entry.payload {
                let view = EventBatchView::new(bytes).map_err(|e| EngineError::Log(format!("entry {index}: {e}")))?;
                state.apply_batch(&view).map_err(|e| EngineError::Log(format!("entry {index}: {e}")))?;
            }
        }
        Ok(state)
    }

    /// Notices a change of leadership and adjusts the speculative state and the waiting requests. Err:
    /// the shard must stop, for this reason.
    pub fn observe_role(&mut self, node_id: u64, sink: &mut Sink<H>) -> Result<(), String> {
        let status = self.raw.status();
        if self.withheld.is_some() && !self.raw.votes_withheld() {
            self.raw
                .storage_mut()
                .set_rejoin_marker(None)
                .map_err(|error| format!("partition {}: {error}", self.partition))?;
            self.withheld = None;
            sink.log(
                log::Level::Info,
                format!(
                    "node {node_id}: partition {}: caught up to commit index {}; votes no longer withheld",
                    self.partition, status.commit
                ),
            );
        }
        assert!(
            status.term >= self.term,
            "partition {}: term went from {} back to {}",
            self.partition,
            self.term,
            status.term
        );
        assert!(
            status.commit >= self.commit_index,
            "partition {}: commit index went from {} back to {}",
            self.partition,
            self.commit_index,
            status.commit
        );
        let was = self.role;
        let term_seen = self.term;
        if self.leader != status.leader {
            crate::metrics::count_leader_change();
        }
        self.role = status.role;
        self.term = status.term;
        self.leader = status.leader;
        self.commit_index = status.commit;
        self.last_index = status.last_index;
        let leads = status.role == Role::Leader;
        if !leads {
            self.transfers.stop_sending();
        }
        if leads {
            self.speculative_kept = false;
        }
        // Leading in a later term than last seen: Raft stepped down and won again in between. What the
        // earlier leadership owed or collected belongs to a leadership that is over, and its
        // speculative state may count entries the log no longer holds.
        let re_elected = leads && was == Role::Leader && status.term != term_seen;
        if re_elected {
            let error = EngineError::NotLeader { partition: self.partition, leader: status.leader, term: status.term };
            self.fail_leader_waits(sink, &error);
            self.speculative = None;
            self.speculative_stale = false;
        }
        if leads && (self.speculative.is_none() || self.speculative_stale) {
            let state = self
                .rebuild_speculative()
                .map_err(|error| format!("partition {}: cannot rebuild the leader state: {error}", self.partition))?;
            self.speculative = Some(state);
            self.speculative_stale = false;
            if was != Role::Leader || re_elected {
                sink.log(
                    log::Level::Info,
                    format!("node {node_id}: partition {}: leader in term {}", self.partition, status.term),
                );
            }
        }
        if !leads && self.speculative.is_some() && !self.speculative_kept {
            if sink.planted.keep_speculative_after_losing_leadership {
                self.speculative_kept = true;
            } else {
                self.speculative = None;
                self.speculative_stale = false;
            }
            let error = EngineError::NotLeader { partition: self.partition, leader: status.leader, term: status.term };
            self.fail_leader_waits(sink, &error);
            sink.log(
                log::Level::Info,
                format!(
                    "node {node_id}: partition {}: no longer leader (term {}, leader {:?})",
                    self.partition, status.term, status.leader
                ),
            );
        }
        if let (Some(speculative), false) = (&self.speculative, self.speculative_kept) {
            assert!(
                speculative.last_seq() >= self.committed.last_seq(),
                "partition {}: speculative state (seq {}) behind the committed state (seq {})",
                self.partition,
                speculative.last_seq(),
                self.committed.last_seq()
            );
        }
        assert!(self.owed.is_empty() || leads, "partition {}: a follower owes answers", self.partition);
        Ok(())
    }

    /// Fails everything only a leader can answer: owed and collected batches (their events are
    /// dropped), linearizable reads.
    fn fail_leader_waits(&mut self, sink: &mut Sink<H>, error: &EngineError) {
        for owed in std::mem::take(&mut self.owed) {
            for answer in owed.answers {
                self.refuse(answer, error, sink);
            }
        }
        for answer in std::mem::take(&mut self.round_answers) {
            self.refuse(answer, error, sink);
        }
        self.buffer.clear();
        for (_, read) in std::mem::take(&mut self.read_index_waits) {
            read.read.fail(sink, error.clone());
        }
        for (_, read) in self.index_waits.drain(..) {
            read.read.fail(sink, error.clone());
        }
    }

    /// Fails every batch and read waiting on this group with `error`.
    pub fn fail_everything_waiting(&mut self, sink: &mut Sink<H>, error: &EngineError) {
        self.fail_leader_waits(sink, error);
        for (_, read) in self.seq_waits.drain(..) {
            read.read.fail(sink, error.clone());
        }
    }

    pub fn status(&self, failed: Option<String>) -> GroupStatus {
        let status = self.raw.status();
        GroupStatus {
            partition: self.partition,
            leader: status.role == Role::Leader,
            leader_id: status.leader.unwrap_or(0),
            term: status.term,
            last_index: status.last_index,
            commit_index: status.commit,
            applied_index: self.applied_index,
            snapshot_index: self.raw.storage().snapshot_index(),
            applied_seq: self.committed.last_seq(),
            digest: self.committed.digest(),
            accounts: self.committed.accounts_len(),
            ledger_sums: self.committed.ledger_sums(),
            failed,
        }
    }

    /// A page of history from the committed state, walked through the events in the log.
    pub fn history(
        &self,
        account_id: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<crate::history::HistoryPage, EngineError> {
        let account = self.committed.account(account_id).ok_or(EngineError::AccountNotFound { account_id })?;
        let index = &self.batch_index;
        crate::history::walk(
            self.partition,
            &account,
            from_seq,
            limit,
            |seq| {
                let after = index.partition_point(|&(first_seq, _)| first_seq <= seq);
                if after == 0 {
                    return Err(EngineError::HistoryCompacted { account_id, seq });
                }
                Ok(Some(index[after - 1].1))
            },
            |log_index| match self.raw.entry(log_index) {
                Some(Entry { payload: Payload::Data(bytes), .. }) => Ok(std::sync::Arc::unwrap_or_clone(bytes)),
                _ => Err(EngineError::HistoryCompacted { account_id, seq: 0 }),
            },
        )
    }

    /// The committed state, for the simulator's auditor and for status.
    pub fn committed(&self) -> &PartitionState {
        &self.committed
    }
}

/// Bootstraps a brand-new group's membership: every replica the cluster places the partition on.
pub fn initial_conf_state(cluster: &ClusterConfig, partition: u32) -> ConfState {
    ConfState::with_voters(cluster.replicas(partition).iter().copied())
}
