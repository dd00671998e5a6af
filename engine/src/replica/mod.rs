//! Replicated partitions: every partition is a Raft group over the nodes of a cluster, and its Raft log
//! is its event log. Every group of a replica shard shares the shard's one log (`shared_log`).
//!
//! - `wire`, `snapshot`: the node-to-node message bodies and the checksummed partition image.
//! - `transport`: one connection per peer and direction, batching every partition's messages.
//! - `core`: the sans-IO replica core (Raft groups, committed and speculative state, forwarding, reads,
//!   rejoin, rebalancing): inputs in, outputs out, no clock, socket or file write of its own.
//! - `shared_log`: one `wal` per replica shard holding every group's entries and hard states, with an
//!   in-memory index per group, snapshot image files beside it, and purge of segments no group needs.
//! - `shard`: the thread shell that drives the core (channels, clock, transport, the shared log, log
//!   lines); `compactor`: its snapshot thread, which builds and writes compaction images off the round.
//! - `node`: the cluster node that ties them together.

pub mod compactor;
pub mod core;
pub mod node;
pub mod replay;
pub mod shard;
pub mod shared_log;
pub mod snapshot;
pub mod transport;
pub mod wire;

pub use node::ClusterNode;
