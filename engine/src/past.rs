//! Past states: a stopped node's partition, or one of its accounts, as it was right after a given
//! sequence number or at a given time (`walletctl state`). The seed's "reproduce any past state": the
//! log is replayed through the same state machine that decided it, from the oldest base the node holds
//! (a single node: its shard's newest base, or the empty state when its log still starts at index 1; a
//! cluster replica: its snapshot), and the
//! replay stops before the first event the bound excludes. Read-only like `verify`: the data directory
//! is opened through the audit lock and read-only handles, and nothing in it changes.

use std::path::Path;

use net::types::Account;
use wal::Wal;

use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::event::{Event, EventBatchView};
use crate::node::{DataDirLock, Manifest};
use crate::partition::PartitionState;
use crate::shard::{shard_dir, wal_options, RECORD_KIND_EVENTS};

/// Which events a past state includes: those with `seq <= seq_max` and `timestamp_ns <= timestamp_ns_max`
/// (an event's timestamp is the time its batch was decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Until {
    pub seq_max: u64,
    pub timestamp_ns_max: u64,
}

impl Until {
    /// Everything the log holds.
    pub const END: Until = Until { seq_max: u64::MAX, timestamp_ns_max: u64::MAX };

    pub fn includes(&self, event: &Event) -> bool {
        event.seq <= self.seq_max && event.timestamp_ns <= self.timestamp_ns_max
    }

    /// Applies the part of `batch` this bound includes to `state`; `false` once an event was excluded (the
    /// replay is over: sequences and timestamps only grow along a partition's log).
    pub fn apply(&self, state: &mut PartitionState, batch: &EventBatchView) -> Result<bool, String> {
        if batch.last_seq() <= state.last_seq() {
            return Ok(true); // already applied (a replica's log may restate what its snapshot holds)
        }
        let included = if self.includes(&batch.event(batch.event_count() - 1)) {
            batch.event_count()
        } else {
            // Both bounds are monotonic along the batch, so the included events are a prefix.
            (0..batch.event_count()).take_while(|&i| self.includes(&batch.event(i))).count() as u32
        };
        if included > 0 {
            state.apply_batch_prefix(batch, included).map_err(|e| e.to_string())?;
        }
        Ok(included == batch.event_count())
    }
}

/// A partition as a replay left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastState {
    pub partition: u32,
    /// The seq of the last event applied (0: none) and its timestamp.
    pub seq: u64,
    pub timestamp_ns: u64,
    /// The newest seq the node's log holds for the partition: the bound asked for may lie beyond it.
    pub log_last_seq: u64,
    /// Where the replay started: 0 for the start of the log, else the seq of a replica's snapshot or a
    /// single node's base.
    pub base_seq: u64,
    pub accounts: usize,
    pub ledger_sums: Vec<(u32, i128)>,
    pub digest: u128,
    /// The account asked for, as it was then (`None`: it did not exist yet, or never did).
    pub account: Option<Account>,
}

impl PastState {
    pub fn of(partition: u32, state: &PartitionState, base_seq: u64, log_last_seq: u64, account: Option<u64>) -> Self {
        PastState {
            partition,
            seq: state.last_seq(),
            timestamp_ns: state.last_timestamp_ns(),
            log_last_seq,
            base_seq,
            accounts: state.accounts_len(),
            ledger_sums: state.ledger_sums(),
            digest: state.digest(),
            account: account.and_then(|id| state.account(id)),
        }
    }
}

/// The partition count of the node whose data directory is `data_dir` (single node or cluster member).
pub fn partitions_of(data_dir: &Path) -> Result<u32, EngineError> {
    if let Some(manifest) = crate::replica::node::ClusterManifest::read(data_dir)? {
        return Ok(manifest.partitions);
    }
    match Manifest::read(data_dir)? {
        Some(manifest) => Ok(manifest.partitions),
        None => Err(EngineError::Manifest {
            path: data_dir.display().to_string(),
            why: "neither node.toml nor cluster-node.toml: not a node data directory".into(),
        }),
    }
}

/// The state of `partition` in the stopped node at `data_dir` (single node or cluster member) as `until`
/// bounds it, and `account` in it when asked.
pub fn state_at(data_dir: &Path, partition: u32, until: Until, account: Option<u64>) -> Result<PastState, EngineError> {
    if data_dir.join(crate::replica::node::CLUSTER_MANIFEST_FILE).exists() {
        return crate::replica::replay::state_at(data_dir, partition, until, account);
    }
    let Some(manifest) = Manifest::read(data_dir)? else {
        return Err(EngineError::Manifest {
            path: data_dir.display().to_string(),
            why: "no node.toml: not a node data directory".into(),
        });
    };
    let _lock = DataDirLock::acquire_for_audit(data_dir)?;
    let config: NodeConfig = manifest.apply_to(NodeConfig::with_data_dir(data_dir));
    if partition >= config.partitions {
        return Err(EngineError::NoSuchPartition { partition, partitions: config.partitions });
    }
    let shard = partition % config.shards;
    let (wal, _) = Wal::open_read_only(&shard_dir(data_dir, shard).join("wal"), wal_options(&config))?;
    let (base_index, mut states) = crate::base::audit_base(&config, shard, [partition])?;
    let mut state = states.pop().expect("one partition asked for");
    let base_seq = state.last_seq();
    if base_seq > 0 && (base_seq > until.seq_max || state.last_timestamp_ns() > until.timestamp_ns_max) {
        return Err(EngineError::BeforeSnapshot { partition, snapshot_seq: base_seq });
    }
    if wal.first_index() > base_index + 1 {
        return Err(EngineError::LogPrefixMissing {
            shard,
            needed_index: base_index + 1,
            log_first_index: wal.first_index(),
        });
    }
    let mut log_last_seq = base_seq;
    let mut replaying = true;
    if wal.last_index() > base_index {
        for record in wal.reader(base_index + 1)? {
            let record = record?;
            if record.kind != RECORD_KIND_EVENTS {
                continue;
            }
            let corrupt = |why: String| EngineError::CorruptLog { shard, index: record.index, why };
            let view = EventBatchView::new(record.payload).map_err(|e| corrupt(e.to_string()))?;
            if view.partition() != partition {
                continue;
            }
            log_last_seq = view.last_seq();
            if replaying {
                replaying = until.apply(&mut state, &view).map_err(corrupt)?;
            }
        }
    }
    Ok(PastState::of(partition, &state, base_seq, log_last_seq, account))
}
