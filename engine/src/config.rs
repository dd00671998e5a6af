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
    /// Transfer ids whose own time is older than this, at the timestamp of the event that would record
    /// them, are refused as `id_expired`; every younger id is remembered (memory, then disk).
    pub idempotency_window_ms: u64,
    /// Transfer ids per partition held in memory; older ones move to the partition's id-index runs.
    pub idempotency_ids_max: usize,
    /// Sustained transfers per second (whole node) that the id index must remember for the whole
    /// window: with `idempotency_disk_bytes_max` it sizes the index, and start refuses a configuration
    /// whose window cannot fit (see ARCHITECTURE.md, "Idempotency window").
    pub idempotency_rate_per_s: u64,
    /// Disk the id index of this node may use (its run files; a cluster replica keeps its runs in
    /// memory, so there it bounds memory).
    pub idempotency_disk_bytes_max: u64,
    /// The data directory's random id-hash key: never configured, taken from its manifest.
    #[serde(skip)]
    pub id_hash_key: u64,
    /// How often dirty state is written to RocksDB. Bounds replay work after a crash.
    pub checkpoint_interval_ms: u64,
    /// Size of one event-log segment file.
    pub wal_segment_bytes: u64,
    /// Sealed event-log bytes each shard keeps for history (single node): an older segment is deleted
    /// once a base (a copy of the state the audits replay from) covers it. History older than what is
    /// kept answers `HistoryCompacted`. The log on disk per shard stays within this plus about three
    /// segments (see ARCHITECTURE.md, "Log retention").
    pub log_retention_bytes: u64,
    /// Where purged segments are copied before they are deleted (`None`: they are only deleted). The
    /// archive is outside the node's disk budget: it grows with everything ever written.
    pub log_archive_dir: Option<PathBuf>,
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
            idempotency_rate_per_s: 5_000,
            idempotency_disk_bytes_max: 64 << 30,
            id_hash_key: 0,
            checkpoint_interval_ms: 1000,
            wal_segment_bytes: 256 << 20,
            log_retention_bytes: 2 << 30,
            log_archive_dir: None,
            read_wait_timeout_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field} = {value} is out of range ({range})")]
    OutOfRange { field: &'static str, value: u64, range: &'static str },
    #[error(
        "the idempotency window of {window_ms} ms at {rate_per_s} transfers/s is {ids} ids, which need \
         {needed_bytes} bytes of id index at {bytes_per_id} bytes per id, over idempotency_disk_bytes_max \
         = {budget_bytes}; this budget holds {held_ms} ms at that rate. Shorten idempotency_window_ms, lower \
         idempotency_rate_per_s or raise idempotency_disk_bytes_max (the window is never silently shortened)"
    )]
    WindowOverBudget {
        window_ms: u64,
        rate_per_s: u64,
        ids: u64,
        needed_bytes: u64,
        bytes_per_id: u64,
        budget_bytes: u64,
        held_ms: u64,
    },
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
        check("log_retention_bytes", self.log_retention_bytes, 0, 1 << 50, "0..=1 PiB")?;
        check("read_wait_timeout_ms", self.read_wait_timeout_ms, 1, 60_000, "1..=60000")?;
        check("cluster_id", (self.cluster_id != 0) as u64, 1, 1, "non-zero")?;
        check("idempotency_rate_per_s", self.idempotency_rate_per_s, 1, 100_000_000, "1..=100000000")?;
        check("idempotency_disk_bytes_max", self.idempotency_disk_bytes_max, 1 << 20, 1 << 50, "1 MiB..=1 PiB")?;
        self.check_id_budget()
    }

    /// Ids the window holds at the sized rate.
    pub fn idempotency_window_ids(&self) -> u64 {
        (self.idempotency_window_ms as u128 * self.idempotency_rate_per_s as u128 / 1000).min(u64::MAX as u128) as u64
    }

    /// The window the disk budget holds at `rate_per_s`, in ms.
    pub fn idempotency_window_held_ms(&self, rate_per_s: u64) -> u64 {
        let ids = self.idempotency_disk_bytes_max / crate::id_index::DISK_BYTES_PER_ID;
        (ids as u128 * 1000 / rate_per_s.max(1) as u128).min(u64::MAX as u128) as u64
    }

    fn check_id_budget(&self) -> Result<(), ConfigError> {
        let ids = self.idempotency_window_ids();
        let needed_bytes = ids.saturating_mul(crate::id_index::DISK_BYTES_PER_ID);
        if needed_bytes > self.idempotency_disk_bytes_max {
            return Err(ConfigError::WindowOverBudget {
                window_ms: self.idempotency_window_ms,
                rate_per_s: self.idempotency_rate_per_s,
                ids,
                needed_bytes,
                bytes_per_id: crate::id_index::DISK_BYTES_PER_ID,
                budget_bytes: self.idempotency_disk_bytes_max,
                held_ms: self.idempotency_window_held_ms(self.idempotency_rate_per_s),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_window_fits_the_default_budget_and_an_oversized_one_is_refused_saying_why() {
        let defaults = NodeConfig::default();
        defaults.validate().expect("the default node starts");
        let fast = NodeConfig { idempotency_rate_per_s: 2_000_000, ..NodeConfig::default() };
        let error = fast.validate().unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, ConfigError::WindowOverBudget { .. }), "{text}");
        assert!(text.contains("86400000 ms at 2000000 transfers/s") && text.contains("never silently"), "{text}");
        // 64 GiB at 82 bytes per id and 2 M/s: about 419 s.
        let held_s = defaults.idempotency_window_held_ms(2_000_000) / 1000;
        assert!((400..440).contains(&held_s), "{held_s} s");
        let shorter = NodeConfig { idempotency_window_ms: 300_000, ..fast };
        shorter.validate().expect("a 5-minute window at 2 M/s fits 64 GiB");
    }
}
