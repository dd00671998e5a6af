//! Log replication (§5.3): the leader's AppendEntries / InstallSnapshot stream with flow control,
//! the follower's consistency check, and the commit rule (§5.4.2).

use crate::progress::{Progress, ProgressState};
use crate::quorum;
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{Entry, Message, MessageBody, NodeId, Payload, RejectHint, Role, Snapshot};

impl<S: Storage> Raft<S> {
    /// Appends one entry of the current term to the leader's log; returns its index.
    pub(crate) fn append_as_leader(&mut self, payload: Payload) -> u64 {
        assert_eq!(self.role, Role::Leader, "only the leader appends on its own");
        let entry = Entry { index: self.log.last_index() + 1, term: self.term, payload };
        let index = entry.index;
        let entries = [entry];
        self.log.append(&entries);
        if self.membership.on_append(&entries) {
            self.on_membership_changed();
        }
        self.acknowledge_own_append(index);
        self.replication_pending = true;
        index
    }

    /// The leader counts itself for `index` once its own write is durable.
    fn acknowledge_own_append(&mut self, index: u64) {
        let id = self.id;
        let term = self.term;
        if let Some(last) = self.msgs_after_persist.last_mut() {
            if last.to == id && last.term == term {
                if let MessageBody::AppendResponse { index: acked, reject: None } = &mut last.body {
                    *acked = index;
                    return;
                }
            }
        }
        self.send_after_persist(id, MessageBody::AppendResponse { index, reject: None });
    }

    fn peers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().filter(|&p| p != self.id).collect()
    }

    /// Sends everything the flow control allows to every follower (batches proposals).
    pub(crate) fn flush_replication(&mut self) {
        if !self.replication_pending || self.role != Role::Leader {
            return;
        }
        self.replication_pending = false;
        for peer in self.peers() {
            self.send_appends(peer);
        }
    }

    /// Like `flush_replication`, but every follower gets at least one message (new commit index).
    pub(crate) fn broadcast_append(&mut self) {
        self.replication_pending = false;
        for peer in self.peers() {
            if !self.send_append(peer, true) {
                continue;
            }
            self.send_appends(peer);
        }
    }

    pub(crate) fn send_appends(&mut self, to: NodeId) {
        // Bounded: each send either pauses the follower or consumes an inflight slot.
        for _ in 0..=self.config.inflight_appends_max {
            if !self.send_append(to, false) {
                break;
            }
        }
    }

    /// Sends one AppendEntries (or a snapshot) to `to`; returns whether something was sent.
    pub(crate) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let inflight_appends_max = self.config.inflight_appends_max;
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused(inflight_appends_max) {
            return false;
        }
        let next = progress.next;
        let probing = progress.state == ProgressState::Probe;
        let last_index = self.log.last_index();
        let prev_log_index = next - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            return self.send_snapshot(to);
        };
        let entries = if next <= last_index {
            match self.log.slice(next, last_index + 1, self.config.append_entries_bytes_max) {
                Ok(entries) => entries,
                Err(_) => return self.send_snapshot(to),
            }
        } else {
            Vec::new()
        };
        if entries.is_empty() && !allow_empty && !probing {
            return false;
        }
        let sent_last = entries.last().map_or(prev_log_index, |e| e.index);
        let count = entries.len();
        let progress = self.progress.get_mut(&to).expect("checked above");
        progress.sent_append(sent_last, count, inflight_appends_max);
        let commit = self.log.committed();
        self.send(to, MessageBody::Append { prev_log_index, prev_log_term, entries, commit });
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let snapshot = self.log.storage.snapshot().expect("the leader's storage snapshot must be readable");
        assert!(snapshot.meta.index > 0, "entries compacted without a snapshot");
        let progress = self.progress.get_mut(&to).expect("caller checked the peer");
        progress.become_snapshot(snapshot.meta.index);
        self.send(to, MessageBody::Snapshot { snapshot });
        true
    }

    pub(crate) fn broadcast_heartbeat(&mut self, read_seq: u64) {
        let committed = self.log.committed();
        for peer in self.peers() {
            let matched = self.progress[&peer].matched;
            // Never tell a follower to commit beyond what it is known to hold.
            let commit = committed.min(matched);
            let lease_tick = self.leader_ticks;
            self.send(peer, MessageBody::Heartbeat { commit, read_seq, lease_tick });
        }
    }

    pub(crate) fn tick_snapshot_timeouts(&mut self) {
        let timeout = self.config.snapshot_timeout_ticks;
        for progress in self.progress.values_mut() {
            if let ProgressState::Snapshot { .. } = progress.state {
                progress.snapshot_elapsed_ticks += 1;
                if progress.snapshot_elapsed_ticks >= timeout {
                    progress.become_probe();
                }
            }
        }
    }

    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: &[Entry],
        commit: u64,
    ) {
        if prev_log_index < self.log.committed() {
            let committed = self.log.committed();
            self.send_after_persist(from, MessageBody::AppendResponse { index: committed, reject: None });
            return;
        }
        match self.log.maybe_append(prev_log_index, prev_log_term, commit, entries) {
            Some((last_new_index, appended_from)) => {
                if let Some(start) = appended_from {
                    if self.membership.on_append(&entries[start..]) {
                        self.on_membership_changed();
                    }
                }
                self.send_after_persist(from, MessageBody::AppendResponse { index: last_new_index, reject: None });
            }
            None => {
                let probe = prev_log_index.min(self.log.last_index());
                let (index, term) = self.log.find_conflict_by_term(probe, prev_log_term);
                self.send(
                    from,
                    MessageBody::AppendResponse { index: prev_log_index, reject: Some(RejectHint { index, term }) },
                );
            }
        }
    }

    pub(crate) fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        let committed = self.log.committed();
        if index <= committed {
            // Stale or duplicated snapshot: we already have everything it covers.
            self.send_after_persist(from, MessageBody::AppendResponse { index: committed, reject: None });
            return;
        }
        if self.log.match_term(index, snapshot.meta.term) {
            // Our log already holds the snapshot's last entry: keep the entries after it.
            self.log.commit_to(index);
        } else {
            self.membership.reset(index, snapshot.meta.conf_state.clone());
            self.log.restore(snapshot);
            self.on_membership_changed();
        }
        self.send_after_persist(from, MessageBody::AppendResponse { index, reject: None });
    }

    pub(crate) fn step_leader(&mut self, message: Message) {
        let from = message.from;
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        match message.body {
            MessageBody::AppendResponse { index, reject } => self.handle_append_response(from, index, reject),
            MessageBody::HeartbeatResponse { read_seq, lease_tick } => {
                let progress = self.progress.get_mut(&from).expect("checked above");
                progress.lease_tick = progress.lease_tick.max(lease_tick);
                self.handle_heartbeat_response(from, read_seq)
            }
            _ => {}
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let inflight_appends_max = self.config.inflight_appends_max;
        let last_index = self.log.last_index();
        let progress = self.progress.get_mut(&from).expect("caller checked the peer");
        progress.probe_sent = false;
        if progress.state == ProgressState::Replicate && progress.is_paused(inflight_appends_max) {
            progress.free_first_inflight();
        }
        if progress.matched < last_index {
            // Even with nothing new to send: an empty append at `next` makes a follower that lost
            // earlier appends reject, which sends us back to probing from what it holds.
            if self.send_append(from, true) {
                self.send_appends(from);
            }
        }
        if read_seq > 0 {
            let voters = self.voters().clone();
            let released = self.read_only.ack(read_seq, from, |acks| quorum::has_quorum(&voters, acks));
            self.read_states.extend(released);
        }
    }

    fn handle_append_response(&mut self, from: NodeId, index: u64, reject: Option<RejectHint>) {
        if let Some(hint) = reject {
            // Fast back-off: skip the follower's whole conflicting term in one round trip.
            let next_probe =
                if hint.term > 0 { self.log.find_conflict_by_term(hint.index, hint.term).0 } else { hint.index };
            let progress = self.progress.get_mut(&from).expect("caller checked the peer");
            if hint.index < progress.matched && hint.term == 0 && hint.index < index {
                // It holds less than it acknowledged: its log was lost. Probe again from scratch.
                progress.reset_after_log_loss(hint.index);
                self.send_append(from, true);
                return;
            }
            if progress.maybe_decrease_to(index, next_probe) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        let first_index = self.log.first_index();
        let progress = self.progress.get_mut(&from).expect("caller checked the peer");
        if !progress.maybe_update(index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot { pending_index } => {
                if progress.matched >= pending_index || progress.matched + 1 >= first_index {
                    progress.become_probe();
                    progress.become_replicate();
                }
            }
            ProgressState::Replicate => {}
        }
        if self.maybe_commit() {
            self.broadcast_append();
        } else if from != self.id {
            self.send_appends(from);
        }
        if self.role == Role::Leader
            && self.lead_transferee == Some(from)
            && self.progress.get(&from).map(|p| p.matched) == Some(self.log.last_index())
        {
            self.send_timeout_now(from);
        }
    }

    /// Advances the commit index to what a majority of voters holds, if that entry is of the
    /// current term. Returns whether it advanced.
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let majority_index = quorum::committed_index(self.voters(), |id| progress.get(&id).map_or(0, |p| p.matched));
        if !self.log.maybe_commit(majority_index, self.term) {
            return false;
        }
        self.after_leader_commit();
        true
    }

    fn after_leader_commit(&mut self) {
        let committed = self.log.committed();
        while let Some(&(index, bytes)) = self.uncommitted.front() {
            if index > committed {
                break;
            }
            self.uncommitted.pop_front();
            self.uncommitted_bytes -= bytes;
        }
        if !self.reads_waiting_for_commit.is_empty() && self.committed_in_current_term() {
            let waiting = std::mem::take(&mut self.reads_waiting_for_commit);
            self.register_reads(&waiting);
        }
        // A leader removed from the voters manages the group until the change commits.
        if !self.is_promotable() && committed >= self.membership.last_change_index() {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Keeps the leader's progress map in step with the membership in its log.
    pub(crate) fn on_membership_changed(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let members = self.membership.current().clone();
        self.progress.retain(|id, _| members.contains(*id));
        let next = self.log.last_index() + 1;
        for &member in members.voters.iter().chain(members.learners.iter()) {
            self.progress.entry(member).or_insert_with(|| {
                let mut progress = Progress::new(next);
                progress.recent_active = true;
                progress
            });
        }
        if let Some(transferee) = self.lead_transferee {
            if !members.voters.contains(&transferee) {
                self.lead_transferee = None;
            }
        }
        // Fewer voters can mean a smaller majority already holds newer entries.
        if self.maybe_commit() {
            self.broadcast_append();
        }
    }
}
