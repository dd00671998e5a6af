//! In-memory `Storage` used by tests, the simulator and the benchmark.

use super::{RaftState, Storage, StorageResult};
use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Snapshot, SnapshotData, SnapshotMeta};

#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[i].index == snapshot.meta.index + 1 + i`.
    entries: Vec<Entry>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// A fresh replica of a new group whose initial voters are `voters`.
    pub fn new_with_conf(conf_state: ConfState) -> MemStorage {
        let mut storage = MemStorage::new();
        storage.snapshot.meta.conf_state = conf_state;
        storage
    }

    fn offset(&self) -> u64 {
        self.snapshot.meta.index + 1
    }

    /// O(1): appended slices are checked for contiguity on the way in, so the ends suffice.
    fn check_invariants(&self) {
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            assert_eq!(first.index, self.offset(), "mem storage does not start after snapshot");
            assert_eq!(last.index, self.offset() + self.entries.len() as u64 - 1, "mem storage not contiguous");
        }
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> StorageResult<RaftState> {
        Ok(RaftState { hard_state: self.hard_state, conf_state: self.snapshot.meta.conf_state.clone() })
    }

    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>> {
        crate::storage::check_entries_range(low, high, self.offset(), self.last_index()?)?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for entry in &self.entries[(low - self.offset()) as usize..(high - self.offset()) as usize] {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> StorageResult<u64> {
        if index == self.snapshot.meta.index {
            return Ok(self.snapshot.meta.term);
        }
        if index < self.offset() {
            return Err(StorageError::Compacted { index, first_index: self.offset() });
        }
        let last_index = self.last_index()?;
        if index > last_index {
            return Err(StorageError::Unavailable { index, last_index });
        }
        Ok(self.entries[(index - self.offset()) as usize].term)
    }

    fn first_index(&self) -> StorageResult<u64> {
        Ok(self.offset())
    }

    fn last_index(&self) -> StorageResult<u64> {
        Ok(self.snapshot.meta.index + self.entries.len() as u64)
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        Ok(self.snapshot.clone())
    }

    fn append(&mut self, entries: &[Entry]) -> StorageResult<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        crate::storage::check_append(entries, self.offset(), self.last_index()?)?;
        self.entries.truncate((first.index - self.offset()) as usize);
        self.entries.extend_from_slice(entries);
        self.check_invariants();
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> StorageResult<()> {
        self.hard_state = hard_state;
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> StorageResult<()> {
        if snapshot.meta.index < self.snapshot.meta.index {
            return Err(StorageError::SnapshotOutOfDate {
                index: snapshot.meta.index,
                current_index: self.snapshot.meta.index,
            });
        }
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    fn create_snapshot(&mut self, index: u64, conf_state: ConfState, data: SnapshotData) -> StorageResult<()> {
        if index < self.snapshot.meta.index {
            return Err(StorageError::SnapshotOutOfDate { index, current_index: self.snapshot.meta.index });
        }
        let term = self.term(index)?;
        let drop_count = (index - self.snapshot.meta.index) as usize;
        self.entries.drain(..drop_count);
        self.snapshot = Snapshot { meta: SnapshotMeta { index, term, conf_state }, data };
        self.check_invariants();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_passes_the_conformance_suite() {
        crate::storage::conformance::run_all(MemStorage::new);
    }

    /// Memory that never loses what it was given: every write counts as synced.
    struct Persistent;

    impl crate::storage::conformance::Durable for Persistent {
        type Store = MemStorage;

        fn create(&mut self) -> MemStorage {
            MemStorage::new()
        }

        fn sync(&mut self, _store: &mut MemStorage) {}

        fn crash_and_reopen(&mut self, store: MemStorage) -> MemStorage {
            store
        }
    }

    #[test]
    fn mem_storage_passes_the_reopen_checks() {
        crate::storage::conformance::run_reopen_checks(&mut Persistent);
    }
}
