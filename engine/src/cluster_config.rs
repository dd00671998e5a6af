//! The cluster configuration: which nodes exist, where they listen, how many partitions there are and on
//! how many nodes each is replicated. Every node of a cluster reads the same file.
//!
//! ```toml
//! cluster_id = "1"                 # decimal, or 0x-prefixed hex; never 0
//! partitions = 3
//! replication_factor = 3           # 1 or 3
//! idempotency_window_ms = 86400000 # optional; how long and how many transfer ids each partition
//! idempotency_ids_max = 262144     # remembers (every replica must decide alike, so the cluster sets it)
//!
//! [[nodes]]
//! id = 1                           # non-zero, unique
//! address = "127.0.0.1:7401"       # client protocol
//! peer_address = "127.0.0.1:7501"  # node-to-node (Raft and forwarded requests)
//! http_address = "127.0.0.1:8401"  # optional: the HTTP/JSON API and /metrics (walletd --http-listen)
//!
//! [replication]                    # optional: every field of ReplicationConfig
//! tick_interval_ms = 20
//! ```
//!
//! Placement: partition `p`'s replicas are the `replication_factor` nodes starting at position
//! `p % nodes` in the `nodes` list, wrapping; the first of them is the partition's preferred leader, so
//! leaders spread evenly over the nodes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{NodeConfig, PARTITIONS_MAX};

/// Most nodes one cluster may list.
pub const CLUSTER_NODES_MAX: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterNodeSpec {
    pub id: u64,
    /// Where the node serves clients.
    pub address: SocketAddr,
    /// Where the node accepts connections from other nodes.
    pub peer_address: SocketAddr,
    /// Where the node serves the HTTP/JSON API and `/metrics`; walletd's `--http-listen` overrides it.
    /// Not part of what nodes must agree on: each node only serves its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_address: Option<SocketAddr>,
}

/// Timing and limits of replication. Every field is named with its unit and enforced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// One Raft tick. Election and heartbeat timeouts are counted in ticks.
    pub tick_interval_ms: u64,
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
    /// A partition takes a snapshot (and drops the log prefix it covers) after this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Proposed but uncommitted entries a leader holds per partition before it stops taking new client
    /// commands (back pressure on the shard's command queue).
    pub uncommitted_entries_max: u64,
    /// Longest a request forwarded to another node's leader waits for its answer.
    pub forward_timeout_ms: u64,
    /// Longest a read waits for its partition to apply the sequence (or read index) it needs.
    pub read_wait_timeout_ms: u64,
    /// Node-to-node messages queued per peer; beyond it Raft messages are dropped (Raft resends).
    pub peer_queue_depth_max: usize,
    /// Largest node-to-node frame a sender builds from queued messages (one message may exceed it).
    pub peer_batch_bytes_max: usize,
    /// A snapshot sent to a follower travels in chunks of this many bytes (the last may be shorter).
    pub snapshot_chunk_bytes: u32,
    /// Chunks of one snapshot sent and not yet acknowledged, per follower: a leader has at most
    /// `snapshot_chunk_bytes` x this in flight to each follower it is catching up.
    pub snapshot_chunks_in_flight: u32,
    /// The largest snapshot image a replica accepts from a leader; chunks of a larger one are refused.
    pub snapshot_bytes_max: u64,
    /// Connect timeout, and the longest pause between reconnect attempts, to a peer.
    pub peer_connect_timeout_ms: u64,
    pub peer_reconnect_backoff_ms_max: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            tick_interval_ms: 20,
            election_timeout_ticks_min: 15,
            election_timeout_ticks_max: 30,
            heartbeat_interval_ticks: 3,
            snapshot_interval_entries: 4096,
            uncommitted_entries_max: 64,
            forward_timeout_ms: 5_000,
            read_wait_timeout_ms: 5_000,
            peer_queue_depth_max: 65_536,
            peer_batch_bytes_max: 4 << 20,
            snapshot_chunk_bytes: 4 << 20,
            snapshot_chunks_in_flight: 4,
            snapshot_bytes_max: 16 << 30,
            peer_connect_timeout_ms: 1_000,
            peer_reconnect_backoff_ms_max: 500,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Decimal or 0x-prefixed hex (TOML integers stop at i64).
    pub cluster_id: String,
    pub partitions: u32,
    pub replication_factor: u32,
    /// The partitions' transfer id tables: ids older than this (by leader time) are refused as
    /// `id_expired`. Replicas re-decide nothing, but they apply the same evictions, so every node of a
    /// cluster must use the same bounds: they live here, not in a node's own configuration.
    #[serde(default = "default_idempotency_window_ms")]
    pub idempotency_window_ms: u64,
    /// Remembered transfer ids per partition; the oldest are forgotten first beyond it.
    #[serde(default = "default_idempotency_ids_max")]
    pub idempotency_ids_max: usize,
    pub nodes: Vec<ClusterNodeSpec>,
    #[serde(default)]
    pub replication: ReplicationConfig,
}

fn default_idempotency_window_ms() -> u64 {
    NodeConfig::default().idempotency_window_ms
}

fn default_idempotency_ids_max() -> usize {
    NodeConfig::default().idempotency_ids_max
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterConfigError {
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
    #[error("{path}: {why}")]
    Parse { path: String, why: String },
    #[error("invalid cluster configuration: {0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> ClusterConfigError {
    ClusterConfigError::Invalid(why.into())
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ClusterConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClusterConfigError::Read { path: shown.clone(), why: e.to_string() })?;
        let config: ClusterConfig =
            toml::from_str(&text).map_err(|e| ClusterConfigError::Parse { path: shown, why: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a cluster configuration always serializes")
    }

    pub fn cluster_id(&self) -> Result<u128, ClusterConfigError> {
        let text = self.cluster_id.trim();
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u128::from_str_radix(hex, 16),
            None => text.parse(),
        };
        match parsed {
            Ok(0) => Err(invalid("cluster_id 0 is reserved")),
            Ok(id) => Ok(id),
            Err(e) => Err(invalid(format!("cluster_id {text:?}: {e}"))),
        }
    }

    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        self.cluster_id()?;
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            return Err(invalid(format!("partitions = {} is out of range 1..={PARTITIONS_MAX}", self.partitions)));
        }
        if self.nodes.is_empty() || self.nodes.len() > CLUSTER_NODES_MAX {
            return Err(invalid(format!("{} nodes listed; 1..={CLUSTER_NODES_MAX} allowed", self.nodes.len())));
        }
        if !matches!(self.replication_factor, 1 | 3) {
            return Err(invalid(format!("replication_factor = {} must be 1 or 3", self.replication_factor)));
        }
        if self.replication_factor as usize > self.nodes.len() {
            return Err(invalid(format!(
                "replication_factor = {} needs at least that many nodes, {} listed",
                self.replication_factor,
                self.nodes.len()
            )));
        }
        // The node configuration owns the ranges of the idempotency bounds.
        NodeConfig {
            idempotency_window_ms: self.idempotency_window_ms,
            idempotency_ids_max: self.idempotency_ids_max,
            ..NodeConfig::default()
        }
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for node in &self.nodes {
            if node.id == 0 {
                return Err(invalid("node id 0 is reserved"));
            }
            if !ids.insert(node.id) {
                return Err(invalid(format!("node id {} is listed twice", node.id)));
            }
            for address in [Some(node.address), Some(node.peer_address), node.http_address].into_iter().flatten() {
                if !addresses.insert(address) {
                    return Err(invalid(format!("address {address} is used twice")));
                }
            }
        }
        let r = &self.replication;
        let check = |field: &str, value: u64, low: u64, high: u64| {
            if value < low || value > high {
                Err(invalid(format!("replication.{field} = {value} is out of range {low}..={high}")))
            } else {
                Ok(())
            }
        };
        check("tick_interval_ms", r.tick_interval_ms, 1, 10_000)?;
        check("heartbeat_interval_ticks", r.heartbeat_interval_ticks as u64, 1, 1_000)?;
        check(
            "election_timeout_ticks_min",
            r.election_timeout_ticks_min as u64,
            r.heartbeat_interval_ticks as u64 + 1,
            100_000,
        )?;
        check(
            "election_timeout_ticks_max",
            r.election_timeout_ticks_max as u64,
            r.election_timeout_ticks_min as u64 + 1,
            200_000,
        )?;
        check("snapshot_interval_entries", r.snapshot_interval_entries, 1, 1 << 40)?;
        check("uncommitted_entries_max", r.uncommitted_entries_max, 1, 1 << 20)?;
        check("forward_timeout_ms", r.forward_timeout_ms, 1, 3_600_000)?;
        check("read_wait_timeout_ms", r.read_wait_timeout_ms, 1, 3_600_000)?;
        check("peer_queue_depth_max", r.peer_queue_depth_max as u64, 16, 1 << 24)?;
        check(
            "peer_batch_bytes_max",
            r.peer_batch_bytes_max as u64,
            4096,
            net::protocol::PEER_FRAME_BYTES_MAX as u64 / 2,
        )?;
        check(
            "snapshot_chunk_bytes",
            r.snapshot_chunk_bytes as u64,
            64,
            net::protocol::PEER_FRAME_BYTES_MAX as u64 / 4,
        )?;
        check("snapshot_chunks_in_flight", r.snapshot_chunks_in_flight as u64, 1, 64)?;
        check("snapshot_bytes_max", r.snapshot_bytes_max, 1 << 20, 1 << 40)?;
        check("peer_connect_timeout_ms", r.peer_connect_timeout_ms, 1, 60_000)?;
        check("peer_reconnect_backoff_ms_max", r.peer_reconnect_backoff_ms_max, 1, 60_000)?;
        Ok(())
    }

    /// Digest of what every node must agree on, exchanged in the peers' hello: a node started with a
    /// different cluster file is refused instead of replicating with different rules. The cluster id,
    /// partitions, replication factor, idempotency bounds and the node ids in order (placement follows
    /// the order). Addresses and `[replication]` timings may differ between nodes.
    pub fn agreement_digest(&self) -> u64 {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        let text = format!(
            "cluster {:?} partitions {} replication_factor {} idempotency_window_ms {} idempotency_ids_max {} nodes {ids:?}",
            self.cluster_id().ok(),
            self.partitions,
            self.replication_factor,
            self.idempotency_window_ms,
            self.idempotency_ids_max
        );
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    pub fn node(&self, id: u64) -> Option<&ClusterNodeSpec> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// The nodes holding a replica of `partition`, preferred leader first.
    pub fn replicas(&self, partition: u32) -> Vec<u64> {
        let n = self.nodes.len();
        (0..self.replication_factor as usize).map(|k| self.nodes[(partition as usize + k) % n].id).collect()
    }

    pub fn preferred_leader(&self, partition: u32) -> u64 {
        self.nodes[partition as usize % self.nodes.len()].id
    }

    /// A local cluster on loopback: `nodes` nodes, client ports from `client_port_base`, peer ports from
    /// `peer_port_base`.
    pub fn local(
        cluster_id: u128,
        nodes: usize,
        partitions: u32,
        replication_factor: u32,
        client_port_base: u16,
        peer_port_base: u16,
    ) -> ClusterConfig {
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        ClusterConfig {
            cluster_id: format!("{cluster_id:#x}"),
            partitions,
            replication_factor,
            idempotency_window_ms: default_idempotency_window_ms(),
            idempotency_ids_max: default_idempotency_ids_max(),
            nodes: (0..nodes)
                .map(|i| ClusterNodeSpec {
                    id: i as u64 + 1,
                    address: loopback(client_port_base + i as u16),
                    peer_address: loopback(peer_port_base + i as u16),
                    http_address: None,
                })
                .collect(),
            replication: ReplicationConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "Cluster file reference" section of ARCHITECTURE.md, from its heading to the next one.
    fn reference_section() -> String {
        // Compiled in (and tracked by cargo, so an edit rebuilds the test), not read through a path a
        // binary in the shared target directory may have been built from another checkout with.
        let text = include_str!("../../ARCHITECTURE.md");
        let start = text.find("### Cluster file reference").expect("the reference section exists");
        let rest = &text[start..];
        let end = rest[4..].find("\n### ").map_or(rest.len(), |at| at + 4);
        rest[..end].to_string()
    }

    /// Issue 16, item 14: the documented example is a valid cluster file whose values are the defaults
    /// the table claims, and every key the code accepts is in the table.
    #[test]
    fn the_documented_example_is_valid() {
        let section = reference_section();
        let block_start = section.find("```toml\n").expect("an example block") + "```toml\n".len();
        let block_end = block_start + section[block_start..].find("```").expect("the block ends");
        let config: ClusterConfig = toml::from_str(&section[block_start..block_end]).expect("the example parses");
        config.validate().expect("the example is valid");
        assert_eq!(config.cluster_id().unwrap(), 0x2a);
        assert_eq!(config.replication, ReplicationConfig::default(), "the example shows the defaults");
        assert_eq!(config.idempotency_window_ms, default_idempotency_window_ms());
        assert_eq!(config.idempotency_ids_max, default_idempotency_ids_max());
        let table: toml::Table = toml::from_str(&config.to_toml()).expect("serializes");
        let mut keys = Vec::new();
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("nodes", toml::Value::Array(nodes)) => {
                    let node = nodes[0].as_table().expect("a node is a table");
                    keys.extend(node.keys().map(|k| format!("nodes[].{k}")));
                }
                ("replication", toml::Value::Table(replication)) => {
                    keys.extend(replication.keys().map(|k| format!("replication.{k}")));
                }
                (key, _) => keys.push(key.to_string()),
            }
        }
        assert_eq!(keys.len(), 23, "{keys:?}");
        for key in keys {
            assert!(section.contains(&format!("| `{key}` |")), "{key} is missing from the reference table");
        }
    }

    #[test]
    fn placement_spreads_preferred_leaders_and_replicas() {
        let config = ClusterConfig::local(1, 3, 6, 3, 7401, 7501);
        config.validate().unwrap();
        let leaders: Vec<u64> = (0..6).map(|p| config.preferred_leader(p)).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(config.replicas(1), vec![2, 3, 1]);
        let single = ClusterConfig { replication_factor: 1, ..config.clone() };
        assert_eq!(single.replicas(2), vec![3]);
    }

    #[test]
    fn bad_configurations_are_refused_with_a_reason() {
        let good = ClusterConfig::local(1, 3, 3, 3, 7401, 7501);
        let cases: Vec<(ClusterConfig, &str)> = vec![
            (ClusterConfig { cluster_id: "0".into(), ..good.clone() }, "reserved"),
            (ClusterConfig { replication_factor: 2, ..good.clone() }, "must be 1 or 3"),
            (ClusterConfig { partitions: 0, ..good.clone() }, "partitions"),
            (ClusterConfig { nodes: good.nodes[..2].to_vec(), ..good.clone() }, "at least"),
            (ClusterConfig { idempotency_ids_max: 10, ..good.clone() }, "idempotency_ids_max"),
            (ClusterConfig { idempotency_window_ms: 0, ..good.clone() }, "idempotency_window_ms"),
        ];
        for (config, why) in cases {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(why), "{error} should mention {why}");
        }
        let mut twice = good.clone();
        twice.nodes[1].id = 1;
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let mut shared = good.clone();
        shared.nodes[1].peer_address = shared.nodes[0].address;
        assert!(shared.validate().unwrap_err().to_string().contains("used twice"));
    }

    #[test]
    fn the_file_format_round_trips() {
        let config = ClusterConfig::local(0xabc, 3, 4, 3, 7401, 7501);
        let parsed: ClusterConfig = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.cluster_id().unwrap(), 0xabc);
    }

    #[test]
    fn idempotency_bounds_default_to_the_node_defaults_and_can_be_set() {
        let nodes = "[[nodes]]\nid = 1\naddress = \"127.0.0.1:7401\"\npeer_address = \"127.0.0.1:7501\"\n";
        let minimal: ClusterConfig =
            toml::from_str(&format!("cluster_id = \"1\"\npartitions = 1\nreplication_factor = 1\n{nodes}")).unwrap();
        let defaults = NodeConfig::default();
        assert_eq!(minimal.idempotency_window_ms, defaults.idempotency_window_ms);
        assert_eq!(minimal.idempotency_ids_max, defaults.idempotency_ids_max);
        let set: ClusterConfig = toml::from_str(&format!(
            "cluster_id = \"1\"\npartitions = 1\nreplication_factor = 1\nidempotency_window_ms = 60000\n\
             idempotency_ids_max = 4096\n{nodes}"
        ))
        .unwrap();
        set.validate().unwrap();
        assert_eq!((set.idempotency_window_ms, set.idempotency_ids_max), (60_000, 4096));
    }
}
