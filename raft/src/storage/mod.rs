//! The persistence contract. Raft reads the durable log through `Storage`; the application writes
//! to it (what each `Ready` asks to persist) and then reports completion with
//! `RawNode::on_persisted`. The log is `snapshot.index + 1 ..= last_index`; the term of
//! `snapshot.index` stays readable so that consistency checks work at the compaction boundary.

pub mod conformance;
mod mem;

pub use mem::MemStorage;

use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotData};

pub type StorageResult<T> = std::result::Result<T, StorageError>;

/// The bounds every `Storage::entries` checks: `low` not compacted, `high` at most one past the end.
pub fn check_entries_range(low: u64, high: u64, first_index: u64, last_index: u64) -> StorageResult<()> {
    if low < first_index {
        return Err(StorageError::Compacted { index: low, first_index });
    }
    if high > last_index + 1 {
        return Err(StorageError::Unavailable { index: high - 1, last_index });
    }
    Ok(())
}

/// The preconditions every `Storage::append` checks before writing anything: entries are consecutive,
/// leave no gap after `last_index`, and do not reach into the compacted prefix before `first_index`.
/// Shared so that every store refuses the same inputs with the same errors.
pub fn check_append(entries: &[Entry], first_index: u64, last_index: u64) -> StorageResult<()> {
    let Some(first) = entries.first() else { return Ok(()) };
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::NotContiguous { expected: pair[0].index + 1, got: pair[1].index });
        }
    }
    if first.index > last_index + 1 {
        return Err(StorageError::NotContiguous { expected: last_index + 1, got: first.index });
    }
    if first.index < first_index {
        return Err(StorageError::Compacted { index: first.index, first_index });
    }
    Ok(())
}

/// What a replica reloads after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftState {
    pub hard_state: HardState,
    /// Membership as of the snapshot; later changes are replayed from the log.
    pub conf_state: ConfState,
}

pub trait Storage {
    fn initial_state(&self) -> StorageResult<RaftState>;
    /// Entries in `[low, high)`, stopping once `bytes_max` is exceeded but always returning at
    /// least one entry when the range is non-empty.
    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>>;
    /// Term of `index`; valid for `first_index() - 1 ..= last_index()`.
    fn term(&self, index: u64) -> StorageResult<u64>;
    fn first_index(&self) -> StorageResult<u64>;
    fn last_index(&self) -> StorageResult<u64>;
    /// The most recent snapshot (index 0 and empty data when none was taken).
    fn snapshot(&self) -> StorageResult<Snapshot>;

    /// Appends `entries` (contiguous), first dropping every stored entry at or after
    /// `entries[0].index`: a follower truncates only from its first conflicting index, which Raft
    /// guarantees is where the slice starts.
    fn append(&mut self, entries: &[Entry]) -> StorageResult<()>;
    fn set_hard_state(&mut self, hard_state: HardState) -> StorageResult<()>;
    /// Replaces the whole log by `snapshot` (a follower installing the leader's snapshot).
    /// Refuses a snapshot older than the current one.
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> StorageResult<()>;
    /// Records a snapshot of the application state at `index` (which must be in the log) and
    /// drops the log prefix up to `index`.
    fn create_snapshot(&mut self, index: u64, conf_state: ConfState, data: SnapshotData) -> StorageResult<()>;
}
