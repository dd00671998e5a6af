//! Wire-independent data types shared by every module: log entries, hard state, snapshots,
//! membership and messages. The engine owns their encoding; Raft only moves them.

use std::collections::BTreeSet;
use std::sync::Arc;

/// Identifier of a replica inside one Raft group. 0 is never a valid id.
pub type NodeId = u64;

/// What one log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Appended by every new leader so that it can commit an entry of its own term (figure 8).
    Noop,
    /// Opaque application bytes (the engine puts one batch of events in one entry). Shared, not
    /// owned: an entry is held by the unstable log, the Ready that persists it, every append message
    /// to a follower and the committed entries handed out, and a copy of a batch of a megabyte or
    /// so into fresh memory for each of them cost a cluster node a quarter of its CPU in page faults.
    Data(Arc<Vec<u8>>),
    /// A single-server membership change; it takes effect as soon as it is in a node's log.
    ConfChange(ConfChange),
}

impl Payload {
    pub fn data(bytes: Vec<u8>) -> Payload {
        Payload::Data(Arc::new(bytes))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub term: u64,
    pub payload: Payload,
}

/// Fixed bookkeeping bytes counted per entry when enforcing byte limits.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

impl Entry {
    /// Size used for batching limits; an estimate of the encoded size, not an exact one.
    pub fn size_bytes(&self) -> u64 {
        let payload_bytes = match &self.payload {
            Payload::Noop => 0,
            Payload::Data(data) => data.len() as u64,
            Payload::ConfChange(_) => 16,
        };
        ENTRY_OVERHEAD_BYTES + payload_bytes
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeKind {
    /// Adds a voter, or promotes an existing learner to voter.
    AddVoter,
    /// Adds a non-voting member that receives the log (catch up before voting).
    AddLearner,
    /// Removes a voter or a learner.
    Remove,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfChange {
    pub kind: ConfChangeKind,
    pub node: NodeId,
}

/// Membership of the group. Voters and learners are disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl ConfState {
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState { voters: voters.into_iter().collect(), learners: BTreeSet::new() }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// The membership after `change`, or why the change is not allowed.
    pub fn apply(&self, change: ConfChange) -> Result<ConfState, &'static str> {
        if change.node == 0 {
            return Err("node id 0 is reserved");
        }
        let mut next = self.clone();
        match change.kind {
            ConfChangeKind::AddVoter => {
                if self.voters.contains(&change.node) {
                    return Err("node is already a voter");
                }
                next.learners.remove(&change.node);
                next.voters.insert(change.node);
            }
            ConfChangeKind::AddLearner => {
                if self.contains(change.node) {
                    return Err("node is already a member");
                }
                next.learners.insert(change.node);
            }
            ConfChangeKind::Remove => {
                if !self.contains(change.node) {
                    return Err("node is not a member");
                }
                next.voters.remove(&change.node);
                next.learners.remove(&change.node);
                if next.voters.is_empty() {
                    return Err("the last voter cannot be removed");
                }
            }
        }
        assert!(next.voters.is_disjoint(&next.learners), "voters and learners overlap");
        Ok(next)
    }
}

/// State that must be durable before messages that depend on it are sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: Option<NodeId>,
    pub commit: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: u64,
    pub term: u64,
    /// Membership as of `index`.
    pub conf_state: ConfState,
}

/// A snapshot's application state: shared, never copied once built (see [`Snapshot::data`]).
pub type SnapshotData = std::sync::Arc<Vec<u8>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    /// Application state as of `meta.index`, opaque to Raft. Shared: the image of a large partition
    /// is hundreds of MB, and the leader hands it out again on every resend to a lagging follower.
    pub data: SnapshotData,
}

/// A follower's hint that lets the leader skip a whole conflicting term in one round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectHint {
    /// Largest index at or below the rejected one whose term is at most the leader's prev term.
    pub index: u64,
    /// The follower's term at `index` (0 when the follower has nothing there).
    pub term: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    VoteRequest {
        pre_vote: bool,
        last_log_index: u64,
        last_log_term: u64,
        /// Set by a leadership transfer: voters ignore their leader lease for it.
        transfer: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    Append {
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    },
    /// On success `index` is the last index the follower holds durably and matching; on reject it
    /// echoes the rejected `prev_log_index`.
    AppendResponse {
        index: u64,
        reject: Option<RejectHint>,
    },
    Heartbeat {
        commit: u64,
        /// Sequence number of the newest ReadIndex request this heartbeat confirms (0 = none).
        read_seq: u64,
        /// Leader's tick count when sent, echoed back: the start of a read lease.
        lease_tick: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
        lease_tick: u64,
    },
    Snapshot {
        snapshot: Snapshot,
    },
    /// Leadership transfer: the receiver campaigns at once.
    TimeoutNow,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub body: MessageBody,
}

/// Result of a ReadIndex request: serve the read once the state machine has applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: u64,
    pub index: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}
