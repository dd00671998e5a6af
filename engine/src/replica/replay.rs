//! Offline replay of a stopped cluster node's replicas: each partition's snapshot plus its entries in
//! its shard's log up to the commit index in its hard state, applied through the same state machine.
//! Every shard log is opened read-only: nothing in the data directory changes. Two replicas that
//! report the same commit index must report the same digest; a replica's digest must equal the one it
//! served live at that index.

use std::path::Path;
use std::sync::{Arc, Mutex};

use net::types::ACCOUNT_FLAG_EXTERNAL;
use raft::{Payload, Storage};

use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::event::EventBatchView;
use crate::partition::PartitionState;
use crate::past::{PastState, Until};
use crate::replica::node::ClusterManifest;
use crate::replica::shard::replica_wal_options;
use crate::replica::shared_log::{self, lock, GroupStore, SharedLog, SharedLogHandle};
use crate::replica::snapshot::decode_partition_image;
use crate::shard::partition_config;

/// Entries read from the log per call while replaying.
const REPLAY_ENTRIES_BYTES_MAX: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReplay {
    pub partition: u32,
    pub snapshot_index: u64,
    pub commit_index: u64,
    pub last_index: u64,
    pub entries_replayed: u64,
    pub applied_seq: u64,
    pub digest: u128,
    pub accounts: usize,
    pub ledger_sums: Vec<(u32, i128)>,
    /// Ordinary (non-external) accounts with a negative balance: must be 0.
    pub negative_accounts: usize,
}

/// Replays every partition replica in a stopped cluster node's data directory.
pub fn replay_data_dir(data_dir: &Path) -> Result<Vec<ReplicaReplay>, EngineError> {
    let _lock = crate::node::DataDirLock::acquire_for_audit(data_dir)?;
    let (manifest, config) = read_config(data_dir)?;
    let mut replays = Vec::new();
    for shard in 0..manifest.shards {
        let Some(log) = open_shard_log(data_dir, &config, shard)? else { continue };
        let partitions: Vec<u32> = lock(&log).partitions().collect();
        for partition in partitions {
            let storage = GroupStore::new(log.clone(), partition).map_err(|e| in_shard(shard, &e))?;
            replays.push(replay_partition(&config, partition, &storage)?);
        }
    }
    replays.sort_by_key(|replay| replay.partition);
    Ok(replays)
}

fn in_shard(shard: u32, error: &dyn std::fmt::Display) -> EngineError {
    EngineError::Log(format!("shard {shard}: {error}"))
}

/// A replica shard's log opened read-only, `None` if the node has no such shard folder.
fn open_shard_log(data_dir: &Path, config: &NodeConfig, shard: u32) -> Result<Option<SharedLogHandle>, EngineError> {
    let dir = shared_log::shard_dir(data_dir, shard);
    if !dir.exists() {
        return Ok(None);
    }
    let (log, _) = SharedLog::open_read_only(&dir, replica_wal_options(config)).map_err(|e| in_shard(shard, &e))?;
    Ok(Some(Arc::new(Mutex::new(log))))
}

/// The manifest of a cluster node's data directory and the configuration its replicas replay with.
fn read_config(data_dir: &Path) -> Result<(ClusterManifest, NodeConfig), EngineError> {
    let manifest = ClusterManifest::read(data_dir)?.ok_or_else(|| EngineError::Manifest {
        path: data_dir.display().to_string(),
        why: "not a cluster node's data directory (no cluster-node.toml)".into(),
    })?;
    let config = NodeConfig {
        data_dir: data_dir.to_path_buf(),
        partitions: manifest.partitions,
        idempotency_window_ms: manifest.idempotency_window_ms,
        idempotency_ids_max: manifest.idempotency_ids_max,
        id_hash_key: manifest.id_hash_key().unwrap_or_default(),
        ..NodeConfig::default()
    };
    Ok((manifest, config))
}

/// A replica replayed from its snapshot along its committed log, as far as `until` allows.
struct Replayed {
    state: PartitionState,
    snapshot_index: u64,
    /// The seq the snapshot holds (0: no snapshot): nothing older can be reproduced from this replica.
    snapshot_seq: u64,
    commit_index: u64,
    last_index: u64,
    entries_replayed: u64,
    /// The newest seq the committed log holds (the snapshot's when the log holds none).
    log_last_seq: u64,
}

fn replay(config: &NodeConfig, partition: u32, storage: &GroupStore, until: &Until) -> Result<Replayed, EngineError> {
    let log_error = |e: &dyn std::fmt::Display| EngineError::Log(format!("partition {partition}: {e}"));
    let snapshot = storage.snapshot().map_err(|e| log_error(&e))?;
    let commit = storage.initial_state().map_err(|e| log_error(&e))?.hard_state.commit;
    let last_index = storage.last_index().map_err(|e| log_error(&e))?;
    let mut state = if snapshot.meta.index == 0 {
        PartitionState::new(partition_config(config, partition))
    } else {
        let (_, rows) = decode_partition_image(&snapshot.data).map_err(|e| log_error(&e))?;
        PartitionState::restore_rows(partition_config(config, partition), rows).map_err(|e| log_error(&e))?
    };
    let snapshot_seq = state.last_seq();
    if snapshot_seq > 0 && (snapshot_seq > until.seq_max || state.last_timestamp_ns() > until.timestamp_ns_max) {
        return Err(EngineError::BeforeSnapshot { partition, snapshot_seq });
    }
    let mut next = snapshot.meta.index + 1;
    let mut replayed = 0;
    let mut log_last_seq = snapshot_seq;
    let mut replaying = true;
    // An installed snapshot is committed even when the hard state's commit has not caught up with it.
    let end = commit.min(last_index).max(snapshot.meta.index);
    while next <= end {
        let entries = storage.entries(next, end + 1, REPLAY_ENTRIES_BYTES_MAX).map_err(|e| log_error(&e))?;
        for entry in &entries {
            if let Payload::Data(bytes) = &entry.payload {
                let view = EventBatchView::new(bytes).map_err(|e| log_error(&format!("entry {}: {e}", entry.index)))?;
                log_last_seq = log_last_seq.max(view.last_seq());
                if replaying {
                    replaying = until
                        .apply(&mut state, &view)
                        .map_err(|e| log_error(&format!("entry {}: {e}", entry.index)))?;
                    replayed += 1;
                }
            } else if replaying {
                replayed += 1;
            }
            next = entry.index + 1;
        }
    }
    Ok(Replayed {
        state,
        snapshot_index: snapshot.meta.index,
        snapshot_seq,
        commit_index: end,
        last_index,
        entries_replayed: replayed,
        log_last_seq,
    })
}

fn replay_partition(config: &NodeConfig, partition: u32, storage: &GroupStore) -> Result<ReplicaReplay, EngineError> {
    let Replayed { state, snapshot_index, commit_index, last_index, entries_replayed, .. } =
        replay(config, partition, storage, &Until::END)?;
    let mut negative_accounts = 0;
    state.for_each_account(|account| {
        if account.flags & ACCOUNT_FLAG_EXTERNAL == 0 && account.balance < 0 {
            negative_accounts += 1;
        }
    });
    Ok(ReplicaReplay {
        partition,
        snapshot_index,
        commit_index,
        last_index,
        entries_replayed,
        applied_seq: state.last_seq(),
        digest: state.digest(),
        accounts: state.accounts_len(),
        ledger_sums: state.ledger_sums(),
        negative_accounts,
    })
}

/// [`crate::past::state_at`] for a stopped cluster node: the replica of `partition` it holds, from its
/// snapshot (a bound older than the snapshot is refused `HistoryCompacted`: this replica no longer holds
/// what came before) along its committed log.
pub fn state_at(data_dir: &Path, partition: u32, until: Until, account: Option<u64>) -> Result<PastState, EngineError> {
    let _lock = crate::node::DataDirLock::acquire_for_audit(data_dir)?;
    let (manifest, config) = read_config(data_dir)?;
    if partition >= manifest.partitions {
        return Err(EngineError::NoSuchPartition { partition, partitions: manifest.partitions });
    }
    let shard = partition % manifest.shards;
    let log = open_shard_log(data_dir, &config, shard)?.filter(|log| lock(log).holds(partition));
    let Some(log) = log else {
        return Err(EngineError::Manifest {
            path: data_dir.display().to_string(),
            why: format!("this node holds no replica of partition {partition}"),
        });
    };
    let storage = GroupStore::new(log, partition).map_err(|e| in_shard(shard, &e))?;
    let replayed = replay(&config, partition, &storage, &until)?;
    Ok(PastState::of(partition, &replayed.state, replayed.snapshot_seq, replayed.log_last_seq, account))
}
