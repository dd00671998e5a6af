//! `engine`: the wallet domain and the node that runs it.
//!
//! - `event`, `idempotency`, `partition`: the deterministic partition state machine. Commands and the
//!   leader's timestamp go in; events and per-item results come out; the same events replayed give the
//!   same state. It never touches a clock, a file, a socket or a thread.
//! - `store`: the RocksDB state store, derived from the event log (RocksDB's own WAL is off).
//! - `shard`, `node`: the runtime. One thread per shard owns its partitions, one event log and one
//!   store; the node splits client batches by partition and hands each part to its shard.
//! - `history`, `verify`: reading the log back: an account's history, and replay-versus-store checks.
//! - `metrics`: the Prometheus counters and histograms both runtimes feed (pre-resolved handles: an
//!   atomic add per sync, round or batch on the hot path, nothing per transfer).
//!
//! Invariants that hold whatever fails: every ledger sums to zero; an ordinary account never goes
//! negative; nothing is answered before the log holds it durably; the store never holds an effect the
//! log lacks.

pub mod base;
mod block_ring;
pub mod cluster_config;
pub mod config;
pub mod error;
pub mod event;
mod fast_hash;
pub mod history;
pub mod id_index;
pub mod idempotency;
pub mod join;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod past;
pub mod replica;
pub mod shard;
pub(crate) mod slow_round;
pub mod store;
pub mod verify;

pub use config::NodeConfig;
pub use error::EngineError;
pub use node::{Node, NodeRecovery};
pub use verify::{verify, VerifyReport};
