//! Raft consensus as a pure state machine: no threads, sockets, clocks, files or randomness of its
//! own. The application feeds it messages, ticks, proposals and completion reports, and receives
//! `Ready` batches listing what to persist, what to send and what is committed (the etcd-raft /
//! raft-rs contract, with asynchronous persistence).
//!
//! Invariants the crate upholds and asserts (a violation panics rather than corrupts): at most one
//! vote per term, and no message that depends on a vote or on appended entries leaves before the
//! application reported them durable; terms never decrease; an entry is committed only by
//! counting replicas of an entry of the leader's current term; committed entries are never
//! truncated; entries are handed out for applying in index order, once, and only when durable.
//! Linearizable reads use ReadIndex (a heartbeat round after a commit in the leader's term) or,
//! when configured with an explicit clock-drift bound, a leader lease. Membership changes are
//! single-server (learners first), in force on append, one uncommitted change at a time.

pub mod config;
pub mod error;
pub mod storage;
pub mod types;

mod conf_change;
mod election;
mod lease;
mod log;
mod membership;
mod progress;
mod quorum;
mod raft;
mod raw_node;
mod read_only;
mod replication;

pub use config::Config;
pub use error::{Error, Result, StorageError};
pub use raw_node::{RawNode, Ready, Status};
pub use storage::{MemStorage, RaftState, Storage};
pub use types::*;
