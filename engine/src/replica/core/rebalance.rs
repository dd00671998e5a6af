//! Rebalancing: after a failover heals, a leader that is not its partition's preferred node hands
//! leadership back once the preferred node is caught up, so leaders stay spread over the nodes.

use raft::Role;

use super::{Handles, Now, ReplicaCore, ReplicaStorage};

/// The preferred leader asks for leadership back only when it has been caught up this recently, and a
/// leader tries at most this often.
const PREFERRED_CAUGHT_UP_WITHIN_MS: u64 = 500;
const LEADER_TRANSFER_RETRY_MS: u64 = 3_000;

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    pub(super) fn rebalance(&mut self, now: Now) {
        for group in &mut self.groups {
            if group.role != Role::Leader || group.preferred_leader == self.node_id {
                continue;
            }
            let caught_up = group
                .preferred_caught_up_at_ms
                .is_some_and(|at| now.mono_ms.saturating_sub(at) < PREFERRED_CAUGHT_UP_WITHIN_MS);
            let may_try = group
                .last_transfer_attempt_ms
                .is_none_or(|at| now.mono_ms.saturating_sub(at) >= LEADER_TRANSFER_RETRY_MS);
            if caught_up && may_try {
                group.last_transfer_attempt_ms = Some(now.mono_ms);
                // What this round decided goes into the log first: Raft refuses proposals once a
                // transfer is under way, and those clients would get an error for a handover.
                group.propose(&mut self.sink);
                if group.raw.transfer_leader(group.preferred_leader).is_ok() {
                    self.sink.log(
                        log::Level::Info,
                        format!(
                            "node {}: partition {}: handing leadership to its preferred node {}",
                            self.node_id, group.partition, group.preferred_leader
                        ),
                    );
                }
            }
        }
    }
}
