//! Replicated partitions: every partition is a Raft group over the nodes of a cluster, and its Raft log
//! is its event log (one `wal` per partition, through `WalStorage`).
//!
//! - `wire`, `snapshot`: the node-to-node message bodies and the checksummed partition image.
//! - `transport`: one connection per peer and direction, batching every partition's messages.
//! - `core`: the sans-IO replica core (Raft groups, committed and speculative state, forwarding, reads,
//!   rejoin, rebalancing): inputs in, outputs out, no clock, socket or file write of its own.
//! - `shard`: the thread shell that drives the core (channels, clock, transport, `WalStorage`, log).
//! - `node`: the cluster node that ties them together.

pub mod core;
pub mod node;
pub mod replay;
pub mod shard;
pub mod snapshot;
pub mod transport;
pub mod wire;

pub use node::ClusterNode;
