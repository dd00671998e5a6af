//! The leader's view of one follower: how much of the log it holds (`matched`), what to send next
//! (`next`), and the flow-control state that bounds what is in flight.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Position unknown: one AppendEntries at a time until the follower accepts one.
    Probe,
    /// Position known: stream optimistically, up to `inflight_appends_max` unacknowledged.
    Replicate,
    /// The follower needs a snapshot (entries it lacks are compacted); nothing else is sent.
    Snapshot { pending_index: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub matched: u64,
    pub next: u64,
    pub state: ProgressState,
    /// In Probe: an AppendEntries is outstanding; pauses further probes until a reply or a
    /// heartbeat response.
    pub probe_sent: bool,
    /// Last index of each AppendEntries in flight (Replicate only), oldest first.
    inflight: VecDeque<u64>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Ticks spent in Snapshot state, to retry a snapshot lost in the network.
    pub snapshot_elapsed_ticks: u32,
    /// Newest leader tick this follower echoed in a heartbeat response (0 = none this term).
    pub lease_tick: u64,
}

impl Progress {
    pub fn new(next: u64) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            snapshot_elapsed_ticks: 0,
            lease_tick: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.state = state;
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_elapsed_ticks = 0;
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, resume right after it (or after what the follower already matched).
        let next = match self.state {
            ProgressState::Snapshot { pending_index } => pending_index.max(self.matched) + 1,
            _ => self.matched + 1,
        };
        self.reset_state(ProgressState::Probe);
        self.next = next;
    }

    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub fn become_snapshot(&mut self, pending_index: u64) {
        self.reset_state(ProgressState::Snapshot { pending_index });
    }

    pub fn is_paused(&self, inflight_appends_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_appends_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Bookkeeping after sending entries up to `last_index` (or a bare probe if equal to next-1).
    pub fn sent_append(&mut self, last_index: u64, entry_count: usize, inflight_appends_max: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    assert!(self.inflight.len() < inflight_appends_max, "inflight overflow");
                    self.next = last_index + 1;
                    self.inflight.push_back(last_index);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => panic!("sending entries while in snapshot state"),
        }
    }

    /// Follower acknowledged `index`. Returns whether `matched` advanced.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// Follower rejected an append at `rejected` and hinted it matches at most `match_hint`.
    /// Returns false when the rejection is stale (the leader already moved past it).
    pub fn maybe_decrease_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next == 0 || self.next - 1 != rejected {
            return false;
        }
        self.next = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// The follower answered that it holds nothing matching beyond `holds`, below what it had
    /// acknowledged: it lost its log (a wiped or replaced disk). Start over from what it holds; a
    /// smaller `matched` only makes commit decisions more conservative.
    pub fn reset_after_log_loss(&mut self, holds: u64) {
        self.matched = holds;
        self.next = holds + 1;
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Frees one inflight slot so that a lost AppendEntries cannot stall replication forever; the
    /// follower's rejection of the next one sends us back to probing.
    pub fn free_first_inflight(&mut self) {
        self.inflight.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicate_pauses_at_inflight_appends_max() {
        let mut progress = Progress::new(1);
        progress.become_replicate();
        progress.sent_append(1, 1, 2);
        progress.sent_append(2, 1, 2);
        assert!(progress.is_paused(2));
        assert!(progress.maybe_update(1));
        assert!(!progress.is_paused(2));
        assert_eq!(progress.next, 3);
    }

    #[test]
    fn stale_rejection_is_ignored() {
        let mut progress = Progress::new(10);
        progress.sent_append(9, 0, 4);
        assert!(!progress.maybe_decrease_to(5, 3), "probe rejected at another index is stale");
        assert!(progress.maybe_decrease_to(9, 3));
        assert_eq!(progress.next, 4);
    }
}
