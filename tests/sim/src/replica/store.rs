//! The simulated disk of one partition replica: what `persisted` covers (and Raft's compaction and
//! the rejoin marker, which are synchronous in the real store too) is durable; the writes still in
//! the node's queue are lost by a crash, except that the oldest may leave a torn prefix of its entries.

use engine::error::EngineError;
use engine::replica::core::{RejoinMarker, ReplicaStorage};
use raft::storage::StorageResult;
use raft::{ConfState, Entry, HardState, MemStorage, RaftState, Snapshot, Storage};

#[derive(Clone, Debug)]
pub struct SimStore {
    mem: MemStorage,
    marker: Option<RejoinMarker>,
}

impl SimStore {
    /// A new replica's store: the partition's first membership, nothing else (what
    /// `SharedLog::bootstrap` writes).
    pub fn new(conf_state: ConfState) -> SimStore {
        SimStore { mem: MemStorage::new_with_conf(conf_state), marker: None }
    }

    pub fn marker(&self) -> Option<RejoinMarker> {
        self.marker
    }
}

impl Storage for SimStore {
    fn initial_state(&self) -> StorageResult<RaftState> {
        self.mem.initial_state()
    }

    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>> {
        self.mem.entries(low, high, bytes_max)
    }

    fn term(&self, index: u64) -> StorageResult<u64> {
        self.mem.term(index)
    }

    fn first_index(&self) -> StorageResult<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> StorageResult<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        self.mem.snapshot()
    }

    fn append(&mut self, entries: &[Entry]) -> StorageResult<()> {
        self.mem.append(entries)
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> StorageResult<()> {
        self.mem.set_hard_state(hard_state)
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> StorageResult<()> {
        self.mem.apply_snapshot(snapshot)
    }

    fn create_snapshot(&mut self, index: u64, conf_state: ConfState, data: raft::SnapshotData) -> StorageResult<()> {
        self.mem.create_snapshot(index, conf_state, data)
    }
}

impl ReplicaStorage for SimStore {
    fn snapshot_index(&self) -> u64 {
        // The log starts right after the snapshot (and reading the snapshot itself would copy its image).
        self.mem.first_index().map_or(0, |first| first - 1)
    }

    fn rejoin_marker(&self) -> Result<Option<RejoinMarker>, EngineError> {
        Ok(self.marker)
    }

    fn set_rejoin_marker(&mut self, marker: Option<RejoinMarker>) -> Result<(), EngineError> {
        if marker.is_none() && self.marker.is_none() {
            // The real store refuses to remove a marker that is not there: so does this one.
            return Err(EngineError::Io("no rejoin marker to remove".into()));
        }
        self.marker = marker;
        Ok(())
    }
}
