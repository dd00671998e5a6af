//! The application-facing driver and its `Ready` contract.
//!
//! Loop: feed inputs (`tick`, `step`, `propose`, ...), then while `has_ready()` take a `Ready`:
//! 1. send `messages` at once (they depend on nothing that is not yet durable);
//! 2. persist, in this order, `snapshot`, `entries` (via `Storage::apply_snapshot` / `append`)
//!    and `hard_state`, possibly asynchronously, Readies in order; when durable call
//!    `on_persisted(ready.number)`;
//! 3. apply `committed_entries` (all durable locally), then call `on_applied(last index)`;
//!    serve each `read_states` entry once applied >= its index. A `snapshot` replaces the state
//!    machine with its `data` (committed entries after it come in later Readies). Membership
//!    changes take effect inside Raft when appended; applying them is bookkeeping only.
//!    A proposal is lost if the entry committed at its index has another term.
//!
//! Messages that depend on the persisted state (vote grants, append acknowledgements, the
//! replica's own vote and own acknowledgement) are held back and come out of a later Ready
//! after `on_persisted` covers the Ready whose state they depend on.

use std::collections::VecDeque;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{
    ConfChange, ConfState, Entry, HardState, Message, NodeId, ReadState, Role, Snapshot, SnapshotData, SnapshotMeta,
};

#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Identifies what this Ready asks to persist; 0 when it asks nothing.
    pub number: u64,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Contexts of ReadIndex requests that will never be answered (leadership lost): fail or
    /// redirect them.
    pub dropped_reads: Vec<u64>,
}

impl Ready {
    pub fn must_persist(&self) -> bool {
        self.number != 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub vote: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub conf_state: ConfState,
}

#[derive(Debug)]
struct PendingPersist {
    number: u64,
    last_entry: Option<(u64, u64)>,
    snapshot_index: Option<u64>,
    messages: Vec<Message>,
}

pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_hard_state: HardState,
    last_ready_number: u64,
    /// Readies handed out and not yet reported persisted, oldest first.
    pending_persist: VecDeque<PendingPersist>,
    /// Messages released by persistence, to go out in the next Ready.
    released: Vec<Message>,
}

impl<S: Storage> RawNode<S> {
    pub fn new(config: Config, storage: S) -> Result<RawNode<S>> {
        let raft = Raft::new(config, storage)?;
        let prev_hard_state = raft.hard_state();
        Ok(RawNode {
            raft,
            prev_hard_state,
            last_ready_number: 0,
            pending_persist: VecDeque::new(),
            released: Vec::new(),
        })
    }

    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Feeds a message from a peer. Messages for another node or from a past term are ignored.
    pub fn step(&mut self, message: Message) {
        self.raft.step(message);
    }

    /// Proposes one entry; returns its index (it may still be lost if leadership changes).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<u64> {
        self.raft.propose(data)
    }

    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<u64> {
        self.raft.propose_conf_change(change)
    }

    /// Requests a linearizable read; the answer is a `ReadState` carrying `context`.
    pub fn read_index(&mut self, context: u64) -> Result<()> {
        self.raft.read_index(context)
    }

    pub fn transfer_leader(&mut self, to: NodeId) -> Result<()> {
        self.raft.transfer_leader(to)
    }

    /// Starts an election now (tests and operator tooling).
    pub fn campaign(&mut self) {
        let pre_vote = self.raft.config.pre_vote;
        self.raft.campaign(pre_vote, false);
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.raft.id,
            role: self.raft.role,
            term: self.raft.term,
            vote: self.raft.vote,
            leader: self.raft.leader_id,
            commit: self.raft.log.committed(),
            applied: self.raft.log.applied(),
            first_index: self.raft.log.first_index(),
            last_index: self.raft.log.last_index(),
            conf_state: self.raft.conf_state().clone(),
        }
    }

    /// For a replica that lost its log and vote, once the other replicas have reported their terms and
    /// logs: it moves to `term`, the highest reported, as a follower that counts as having voted (for
    /// itself) in it, so it never votes twice in a term it may have voted in before the loss, and it
    /// withholds votes until its commit index reaches `commit` (an index that covers every entry its
    /// lost copy can have helped commit) or it commits an entry of a term after `term`. A deposed leader
    /// still in an older term can no longer refill it. The new term and vote are persisted through the
    /// next Ready.
    pub fn rejoin_after_loss(&mut self, term: u64, commit: u64) {
        if term > self.raft.term {
            self.raft.become_follower(term, None);
            self.raft.vote = Some(self.raft.id);
        }
        self.raft.votes_withheld_until = commit;
        self.raft.votes_withheld_term = term;
    }

    /// True while `rejoin_after_loss` keeps this replica out of elections (its commit index is still
    /// below the one it was given, and it has committed nothing of a later term).
    pub fn votes_withheld(&self) -> bool {
        self.raft.votes_withheld()
    }

    /// The node this leader is handing leadership to, while a transfer is in progress (it refuses
    /// proposals meanwhile).
    pub fn lead_transferee(&self) -> Option<NodeId> {
        self.raft.lead_transferee
    }

    /// Term of `index` in this replica's log (durable or not), None if compacted or absent.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.raft.log.term(index)
    }

    /// Entry at `index` if it is still in the log.
    pub fn entry(&self, index: u64) -> Option<Entry> {
        if index > self.raft.log.last_index() {
            return None;
        }
        self.raft.entry_at(index)
    }

    pub fn storage(&self) -> &S {
        &self.raft.log.storage
    }

    /// For persisting what a Ready asks (and nothing else: Raft trusts storage to hold only what
    /// it handed out, in order).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.storage
    }

    /// Gives the durable storage back (a crash in the simulator, or shutdown).
    pub fn into_storage(self) -> S {
        self.raft.log.storage
    }

    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        !raft.msgs.is_empty()
            || !self.released.is_empty()
            || raft.replication_pending
            || raft.log.has_entries_to_persist()
            || raft.log.has_snapshot_to_persist()
            || raft.hard_state() != self.prev_hard_state
            || raft.log.has_committed_to_apply()
            || !raft.read_states.is_empty()
            || !raft.dropped_reads.is_empty()
            || (!raft.msgs_after_persist.is_empty() && self.pending_persist.is_empty())
    }

    pub fn ready(&mut self) -> Ready {
        self.raft.flush_replication();
        let hard_state = self.raft.hard_state();
        let hard_state_changed = hard_state != self.prev_hard_state;
        let snapshot = self.raft.log.take_snapshot_to_persist();
        let entries = self.raft.log.take_entries_to_persist();
        let after_persist = std::mem::take(&mut self.raft.msgs_after_persist);
        let mut number = 0;
        if hard_state_changed || snapshot.is_some() || !entries.is_empty() {
            self.last_ready_number += 1;
            number = self.last_ready_number;
            self.prev_hard_state = hard_state;
            self.pending_persist.push_back(PendingPersist {
                number,
                last_entry: entries.last().map(|e| (e.index, e.term)),
                snapshot_index: snapshot.as_ref().map(|s| s.meta.index),
                messages: after_persist,
            });
        } else if let Some(last) = self.pending_persist.back_mut() {
            last.messages.extend(after_persist);
        } else {
            // Everything these depend on is durable already.
            self.release(after_persist);
        }
        let committed_entries = self.raft.log.take_committed_to_apply(self.raft.config.committed_entries_bytes_max);
        let mut messages = std::mem::take(&mut self.released);
        messages.append(&mut self.raft.msgs);
        Ready {
            number,
            hard_state: hard_state_changed.then_some(hard_state),
            snapshot,
            entries,
            messages,
            committed_entries,
            read_states: std::mem::take(&mut self.raft.read_states),
            dropped_reads: std::mem::take(&mut self.raft.dropped_reads),
        }
    }

    /// The application made the state of Ready `number` (and every earlier one) durable.
    pub fn on_persisted(&mut self, number: u64) {
        while self.pending_persist.front().is_some_and(|pending| pending.number <= number) {
            let pending = self.pending_persist.pop_front().expect("front checked just above");
            if let Some(index) = pending.snapshot_index {
                self.raft.log.stable_snapshot_to(index);
            }
            if let Some((index, term)) = pending.last_entry {
                self.raft.log.stable_to(index, term);
            }
            self.release(pending.messages);
        }
    }

    fn release(&mut self, messages: Vec<Message>) {
        for message in messages {
            if message.to == self.raft.id {
                self.raft.step(message);
            } else {
                self.released.push(message);
            }
        }
    }

    /// The state machine applied every handed-out entry up to `index`.
    pub fn on_applied(&mut self, index: u64) {
        self.raft.log.applied_to(index);
    }

    /// What a snapshot at `index` (applied and durable) would record: its term and the membership
    /// as of it; `None` if the log starts after `index` already. For an application that builds and
    /// writes its image elsewhere before it calls [`RawNode::compact`].
    pub fn compaction_meta(&self, index: u64) -> Result<Option<SnapshotMeta>> {
        let applied = self.raft.log.applied();
        let persisted = self.raft.log.persisted_last_index();
        if index > applied || index > persisted {
            return Err(Error::CompactBeyondApplied { index, applied, persisted });
        }
        if index < self.raft.log.first_index() {
            return Ok(None);
        }
        let term = self.raft.log.term(index).expect("an index within the log has a term");
        Ok(Some(SnapshotMeta { index, term, conf_state: self.raft.membership.at(index) }))
    }

    /// Takes a snapshot at `index` (applied and durable) with the application's `data`, and
    /// drops the log prefix it covers.
    pub fn compact(&mut self, index: u64, data: SnapshotData) -> Result<()> {
        if self.compaction_meta(index)?.is_none() {
            return Ok(());
        }
        let conf_state = self.raft.membership.at(index);
        self.raft.log.storage.create_snapshot(index, conf_state, data)?;
        self.raft.membership.compact_to(index);
        Ok(())
    }
}
