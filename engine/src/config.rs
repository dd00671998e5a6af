//! Node configuration: every limit is named, with its unit last, and has a default a single machine can
//! run with. `walletd` reads the same struct from TOML (`[engine]` table) and flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest partition count a cluster may be created with.
pub const PARTITIONS_MAX: u32 = 4096;
/// Largest shard (thread) count per node.
pub const SHARDS_MAX: u32 = 256;
/// Largest number of items (transfers or accounts) one client batch may carry: the protocol's limit.
pub const BATCH_ITEMS_MAX: usize = net::protocol::BATCH_ITEMS_MAX;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its manifest, event logs and state stores.
    pub data_dir: PathBuf,
    /// Cluster identity; every client frame must carry it. Fixed at creation.
    pub cluster_id: u128,
    /// Partition count, fixed when the data directory is created.
    pub partitions: u32,
    /// Shard threads, each owning `partition % shards == shard`. Fixed at creation (see ARCHITECTURE.md).
    pub shards: u32,
    /// Pin each shard thread to its own core.
    pub pin_cores: bool,
    /// Commands waiting for a shard, per shard; a full queue blocks the submitter (backpressure).
    pub shard_queue_depth_max: usize,
    /// Items a shard executes in one round before it appends them and lets the disk start.
    pub round_items_max: usize,
    /// Transfer ids older than this (by leader time) are forgotten and refused as `id_expired`.
    pub idempotency_window_ms: u64,
    /// Remembered transfer ids per partition; the oldest are forgotten first beyond it.
    pub idempotency_ids_max: usize,
    /// How often dirty state is written to RocksDB. Bounds replay work after a crash.
    pub checkpoint_interval_ms: u64,
    /// Size of one event-log segment file.
    pub wal_segment_bytes: u64,
    /// Longest an `at_least` lookup waits for its partitions to reach the sequences it names before it
    /// is refused `Unavailable` (the cluster's `[replication] read_wait_timeout_ms` does the same).
    pub read_wait_timeout_ms: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("data"),
            cluster_id: 1,
            // One partition until cross-partition sagas land: a node with more partitions refuses
            // transfers between accounts of different partitions (see ARCHITECTURE.md), and one
            // partition lets any two accounts trade. Raise both for parallelism across cores.
            partitions: 1,
            shards: 1,
            pin_cores: true,
            shard_queue_depth_max: 4096,
            round_items_max: 65_536,
            idempotency_window_ms: 24 * 60 * 60 * 1000,
            idempotency_ids_max: 262_144,
            checkpoint_interval_ms: 1000,
            wal_segment_bytes: 256 << 20,
            read_wait_timeout_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} = {value} is out of range ({range})")]
    OutOfRange { field: &'static str, value: u64, range: &'static str },
}

impl NodeConfig {
    pub fn with_data_dir(data_dir: impl AsRef<Path>) -> Self {
        NodeConfig { data_dir: data_dir.as_ref().to_path_buf(), ..NodeConfig::default() }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |field, value: u64, low: u64, high: u64, range| {
            if value < low || value > high {
                Err(ConfigError::OutOfRange { field, value, range })
            } else {
                Ok(())
            }
        };
        check("partitions", self.partitions as u64, 1, PARTITIONS_MAX as u64, "1..=4096")?;
        check("shards", self.shards as u64, 1, SHARDS_MAX as u64, "1..=256")?;
        check("shards", self.shards as u64, 1, self.partitions as u64, "at most the partition count")?;
        check("shard_queue_depth_max", self.shard_queue_depth_max as u64, 1, 1 << 20, "1..=1048576")?;
        check("round_items_max", self.round_items_max as u64, BATCH_ITEMS_MAX as u64, 1 << 22, "8190..=4194304")?;
        check("idempotency_window_ms", self.idempotency_window_ms, 1000, 365 * 86_400_000, "1 s..=365 days")?;
        check("idempotency_ids_max", self.idempotency_ids_max as u64, 1024, 1 << 26, "1024..=67108864")?;
        check("checkpoint_interval_ms", self.checkpoint_interval_ms, 1, 3_600_000, "1..=3600000")?;
        check(
            "wal_segment_bytes",
            self.wal_segment_bytes,
            8 << 20,
            1 << 30,
            "8 MiB..=1 GiB (a segment holds the largest record)",
        )?;
        check("read_wait_timeout_ms", self.read_wait_timeout_ms, 1, 60_000, "1..=60000")?;
        check("cluster_id", (self.cluster_id != 0) as u64, 1, 1, "non-zero")?;
        Ok(())
    }
}
