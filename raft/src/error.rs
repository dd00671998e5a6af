//! Typed errors of the crate.

use crate::types::NodeId;

/// Failures a `Storage` implementation reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("index {index} is compacted (first available is {first_index})")]
    Compacted { index: u64, first_index: u64 },
    #[error("index {index} is beyond the last index {last_index}")]
    Unavailable { index: u64, last_index: u64 },
    #[error("snapshot at {index} is older than the current one at {current_index}")]
    SnapshotOutOfDate { index: u64, current_index: u64 },
    #[error("entries must be contiguous: expected index {expected}, got {got}")]
    NotContiguous { expected: u64, got: u64 },
    #[error("storage failure: {0}")]
    Other(String),
}

/// Why a request to the Raft node was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("proposal of {bytes} bytes exceeds proposal_bytes_max {bytes_max}")]
    ProposalTooLarge { bytes: u64, bytes_max: u64 },
    #[error("uncommitted log holds {bytes} bytes, at most uncommitted_bytes_max {bytes_max}")]
    UncommittedLogFull { bytes: u64, bytes_max: u64 },
    #[error("a membership change is still uncommitted at index {index}")]
    ConfChangePending { index: u64 },
    #[error("the leader has not yet committed an entry of its term")]
    LeaderNotReady,
    #[error("invalid membership change: {0}")]
    ConfChangeInvalid(&'static str),
    #[error("too many pending ReadIndex requests (read_index_pending_max {pending_max})")]
    ReadIndexQueueFull { pending_max: usize },
    #[error("cannot transfer leadership to {0}: not a voter")]
    TransferTargetInvalid(NodeId),
    #[error("cannot compact to {index}: applied {applied}, persisted last {persisted}")]
    CompactBeyondApplied { index: u64, applied: u64, persisted: u64 },
    #[error("invalid config: {0}")]
    InvalidConfig(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T> = std::result::Result<T, Error>;
