//! Lease reads: a leader that heard from a majority recently serves reads at its commit index
//! without a heartbeat round. Sound only under the configured clock assumption: a follower that
//! answered a heartbeat sent at leader tick `t` ignores vote requests for
//! `election_timeout_ticks_min` of its own ticks after receiving it (check-quorum), so no other
//! leader can exist before leader tick `t + election_timeout_ticks_min -
//! lease_clock_drift_ticks_max`. Leadership transfer waives the followers' lease, so a leader
//! that sent TimeoutNow stops using it for the rest of its term.

use crate::quorum;
use crate::raft::Raft;
use crate::storage::Storage;
use crate::types::{MessageBody, NodeId, Role};

impl<S: Storage> Raft<S> {
    pub(crate) fn lease_valid(&self) -> bool {
        if !self.config.lease_read
            || self.role != Role::Leader
            || self.lease_disabled
            || !self.committed_in_current_term()
        {
            return false;
        }
        let now = self.leader_ticks;
        let start = quorum::committed_index(self.voters(), |id| {
            if id == self.id {
                now
            } else {
                self.progress.get(&id).map_or(0, |p| p.lease_tick)
            }
        });
        let window = u64::from(self.config.election_timeout_ticks_min - self.config.lease_clock_drift_ticks_max);
        start > 0 && now < start + window
    }

    pub(crate) fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_disabled = true;
        self.send(to, MessageBody::TimeoutNow);
    }
}
