//! `verify`: replays a stopped node's event logs and compares the result with its RocksDB state.
//!
//! The store holds the state as of its applied log index, so the log is replayed exactly that far, from
//! the shard's newest base (or from empty states at index 1 when it has none: see `engine::base`), and
//! every stored row is compared both ways (a row the replay lacks is drift too). The rest of the log is
//! then replayed as well, to check every ledger sums to zero at its end.

use std::collections::HashMap;
use std::path::Path;

use net::types::Account;
use wal::Wal;

use crate::base;
use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::event::EventBatchView;
use crate::node::{DataDirLock, Manifest};
use crate::partition::PartitionState;
use crate::shard::{owned_partitions, shard_dir, wal_options, RECORD_KIND_EVENTS};
use crate::store::Store;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// Stored and replayed account rows differ (either may be missing).
    Account { partition: u32, account_id: u64, stored: Option<Account>, replayed: Option<Account> },
    /// The stored partition sequence differs from the replayed one.
    PartitionSeq { partition: u32, stored: u64, replayed: u64 },
    /// A ledger does not sum to zero after replaying the whole log.
    LedgerSum { partition: u32, ledger: u32, sum: i128 },
}

#[derive(Clone, Debug, Default)]
pub struct ShardVerification {
    pub shard: u32,
    pub checkpoint_index: u64,
    /// Where the replay started: the newest base's applied index (0: the start of the log).
    pub base_index: u64,
    pub log_first_index: u64,
    pub log_last_index: u64,
    pub records_replayed: u64,
    pub accounts_compared: u64,
    pub drift: Vec<Drift>,
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub shards: Vec<ShardVerification>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.shards.iter().all(|s| s.drift.is_empty())
    }
}

/// Verifies every shard of the node whose data directory is `data_dir`. The node must be stopped.
pub fn verify(data_dir: &Path) -> Result<VerifyReport, EngineError> {
    let Some(manifest) = Manifest::read(data_dir)? else {
        return Err(EngineError::Manifest {
            path: data_dir.display().to_string(),
            why: "no node.toml: not a node data directory".into(),
        });
    };
    let _lock = DataDirLock::acquire_for_audit(data_dir)?;
    let config = manifest.apply_to(NodeConfig::with_data_dir(data_dir));
    let mut report = VerifyReport::default();
    for shard in 0..manifest.shards {
        report.shards.push(verify_shard(&config, shard)?);
    }
    Ok(report)
}

fn verify_shard(config: &NodeConfig, shard: u32) -> Result<ShardVerification, EngineError> {
    let dir = shard_dir(&config.data_dir, shard);
    let store = Store::open_read_only(&dir.join("state"))?;
    let checkpoint_index = store.applied_index()?;
    let (wal, _) = Wal::open_read_only(&dir.join("wal"), wal_options(config))?;
    let (base_index, base_states) =
        base::audit_base(config, shard, owned_partitions(shard, config.shards, config.partitions))?;
    let mut states: HashMap<u32, PartitionState> = base_states.into_iter().map(|s| (s.partition(), s)).collect();
    let mut result = ShardVerification {
        shard,
        checkpoint_index,
        base_index,
        log_first_index: wal.first_index(),
        log_last_index: wal.last_index(),
        ..Default::default()
    };
    if checkpoint_index > wal.last_index() {
        return Err(EngineError::StateAheadOfLog {
            shard,
            state_index: checkpoint_index,
            log_last_index: wal.last_index(),
        });
    }
    if checkpoint_index < base_index {
        return Err(EngineError::Store(format!(
            "shard {shard}: the state store is at log index {checkpoint_index}, below its base at {base_index}"
        )));
    }
    if wal.first_index() > base_index + 1 {
        return Err(EngineError::LogPrefixMissing {
            shard,
            needed_index: base_index + 1,
            log_first_index: wal.first_index(),
        });
    }
    let mut compared = false;
    if wal.last_index() > base_index {
        for record in wal.reader(base_index + 1)? {
            let record = record?;
            if !compared && record.index > checkpoint_index {
                compare(&store, &states, &mut result)?;
                compared = true;
            }
            if record.kind != RECORD_KIND_EVENTS {
                continue;
            }
            let corrupt = |why: String| EngineError::CorruptLog { shard, index: record.index, why };
            let view = EventBatchView::new(record.payload).map_err(|e| corrupt(e.to_string()))?;
            let state = states
                .get_mut(&view.partition())
                .ok_or_else(|| corrupt(format!("partition {} is not this shard's", view.partition())))?;
            state.apply_batch(&view).map_err(|e| corrupt(e.to_string()))?;
            result.records_replayed += 1;
        }
    }
    if !compared {
        compare(&store, &states, &mut result)?;
    }
    let mut partitions: Vec<_> = states.iter().collect();
    partitions.sort_by_key(|(p, _)| **p);
    for (&partition, state) in partitions {
        for (ledger, sum) in state.ledger_sums() {
            if sum != 0 {
                result.drift.push(Drift::LedgerSum { partition, ledger, sum });
            }
        }
    }
    Ok(result)
}

/// Compares replayed states (at the checkpoint's log index) with the store's rows, both ways.
fn compare(
    store: &Store,
    states: &HashMap<u32, PartitionState>,
    result: &mut ShardVerification,
) -> Result<(), EngineError> {
    let mut partitions: Vec<_> = states.keys().copied().collect();
    partitions.sort_unstable();
    for partition in partitions {
        let state = &states[&partition];
        let stored_seq = store.partition_meta(partition)?.map_or(0, |m| m.last_seq);
        if stored_seq != state.last_seq() {
            result.drift.push(Drift::PartitionSeq { partition, stored: stored_seq, replayed: state.last_seq() });
        }
        let mut stored_ids = Vec::new();
        store.for_each_account(partition, |stored| {
            stored_ids.push(stored.id);
            let replayed = state.account(stored.id);
            if replayed != Some(stored) {
                result.drift.push(Drift::Account { partition, account_id: stored.id, stored: Some(stored), replayed });
            }
        })?;
        result.accounts_compared += stored_ids.len() as u64;
        stored_ids.sort_unstable();
        state.for_each_account(|replayed| {
            if stored_ids.binary_search(&replayed.id).is_err() {
                result.drift.push(Drift::Account {
                    partition,
                    account_id: replayed.id,
                    stored: None,
                    replayed: Some(*replayed),
                });
            }
        });
    }
    Ok(())
}
