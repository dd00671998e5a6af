//! The engine's typed errors. They are `Clone` because one failure may answer many waiting callers.

use net::protocol::ErrorCode;

use crate::config::ConfigError;
use crate::store::StoreError;

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {why}")]
    Manifest { path: String, why: String },
    #[error("event log: {0}")]
    Log(String),
    #[error("state store: {0}")]
    Store(String),
    #[error("shard {shard}: state store is at log index {state_index} but the log ends at {log_last_index}; the log was lost or truncated, refusing to start")]
    StateAheadOfLog { shard: u32, state_index: u64, log_last_index: u64 },
    #[error("shard {shard}: replay needs log index {needed_index} but the log starts at {log_first_index}")]
    LogPrefixMissing { shard: u32, needed_index: u64, log_first_index: u64 },
    #[error("shard {shard}: log record {index} cannot be replayed: {why}")]
    CorruptLog { shard: u32, index: u64, why: String },
    #[error("shard {shard} stopped after a failure and refuses commands until restart: {reason}")]
    ShardFailed { shard: u32, reason: String },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("batch of {items} items exceeds the limit of {limit}")]
    BatchTooLarge { items: usize, limit: usize },
    #[error("account {account_id} not found")]
    AccountNotFound { account_id: u64 },
    #[error("account {account_id} has no history event at seq {seq}")]
    InvalidCursor { account_id: u64, seq: u64 },
    #[error("{0}")]
    Io(String),
    #[error("this node does not lead partition {partition}{}", leader.map(|l| format!(" (node {l} does)")).unwrap_or_default())]
    /// `term`: the answering replica's Raft term (0 when it holds none), so a forwarding node can tell
    /// a stale hint from its own newer view.
    NotLeader { partition: u32, leader: Option<u64>, term: u64 },
    #[error("account {account_id}: its history at and before seq {seq} is no longer in the log (beyond the log's retention, or older than the partition's snapshot)")]
    HistoryCompacted { account_id: u64, seq: u64 },
    #[error("partition {partition}: the event at seq {seq} is no longer in the log (beyond the log's retention); its outcome is still remembered, its fields are not")]
    EventPurged { partition: u32, seq: u64 },
    #[error("partition {partition}: the oldest state this node holds is at seq {snapshot_seq} (a replica's snapshot, a single node's base); nothing older can be reproduced from it")]
    BeforeSnapshot { partition: u32, snapshot_seq: u64 },
    #[error("partition {partition} does not exist: the node has {partitions} partitions")]
    NoSuchPartition { partition: u32, partitions: u32 },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An error answered by another node for a forwarded request: a protocol `ErrorCode` number.
    #[error("node {node}: {message}")]
    Remote { node: u64, code: u16, message: String },
}

impl EngineError {
    /// The protocol error code and message this failure is answered with. The one mapping from engine
    /// failures to the wire, used by every handler and for every forwarded reply: `NotLeader`,
    /// `Unavailable` and shutdown are retryable with the same ids; an error another node answered
    /// keeps that node's code.
    pub fn protocol_error(&self) -> (ErrorCode, String) {
        let code = match self {
            EngineError::NotLeader { .. } => ErrorCode::NotLeader,
            EngineError::ShuttingDown | EngineError::ShardFailed { .. } | EngineError::Unavailable(_) => {
                ErrorCode::Unavailable
            }
            EngineError::BatchTooLarge { .. } => ErrorCode::TooManyItems,
            EngineError::HistoryCompacted { .. }
            | EngineError::BeforeSnapshot { .. }
            | EngineError::EventPurged { .. } => ErrorCode::HistoryCompacted,
            EngineError::InvalidCursor { .. } => ErrorCode::InvalidCursor,
            EngineError::Remote { code, message, .. } => {
                return (ErrorCode::from_u16(*code).unwrap_or(ErrorCode::Internal), message.clone());
            }
            _ => ErrorCode::Internal,
        };
        (code, self.to_string())
    }
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        EngineError::Store(error.to_string())
    }
}

impl From<wal::WalError> for EngineError {
    fn from(error: wal::WalError) -> Self {
        EngineError::Log(error.to_string())
    }
}
