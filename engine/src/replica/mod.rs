//! Replicated partitions: every partition is a Raft group over the nodes of a cluster, and its Raft log
//! is its event log (one `wal` per partition, through `WalStorage`).
//!
//! - `wire`, `snapshot`: the node-to-node message bodies and the checksummed partition image.
//! - `transport`: one connection per peer and direction, batching every partition's messages.
//! - `shard`: the replica shard thread (Raft groups, committed and speculative state, forwarding).
//! - `node`: the cluster node that ties them together.

pub mod node;
pub mod replay;
pub mod shard;
pub mod snapshot;
pub mod transport;
pub mod wire;

pub use node::ClusterNode;
