//! `WalStorage` against raft's public `Storage` conformance suite, plus restart and torn-file checks.

use engine::raft_storage::{WalStorage, WalStorageError, HARD_STATE_FILE, SNAPSHOT_FILE};
use raft::storage::conformance;
use raft::{ConfChange, ConfChangeKind, ConfState, Entry, HardState, Payload, Snapshot, SnapshotMeta, Storage};
use std::path::Path;
use tempfile::TempDir;
use wal::WalOptions;

/// Small segments so compaction and truncation cross segment boundaries.
fn options() -> WalOptions {
    WalOptions { segment_bytes: 4096, payload_bytes_max: 1024, pending_bytes_max: 1 << 20 }
}

fn open(dir: &Path) -> WalStorage {
    WalStorage::open(dir, options()).expect("open wal storage")
}

fn mixed_entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|index| {
            let payload = match index % 4 {
                0 => Payload::Noop,
                1 => Payload::ConfChange(ConfChange { kind: ConfChangeKind::AddLearner, node: index }),
                2 => Payload::ConfChange(ConfChange { kind: ConfChangeKind::Remove, node: u64::MAX - index }),
                _ => Payload::Data((0..(index * 13 % 300)).map(|byte| (byte ^ index) as u8).collect()),
            };
            Entry { index, term, payload }
        })
        .collect()
}

#[test]
fn wal_storage_passes_the_conformance_suite() {
    let mut dirs: Vec<TempDir> = Vec::new();
    conformance::run_all(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(dir.path());
        dirs.push(dir);
        storage
    });
}

#[test]
fn entries_terms_and_hard_state_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected = mixed_entries(1, 120, 1);
    expected.extend(mixed_entries(121, 200, 3));
    let hard_state = HardState { term: 3, vote: Some(2), commit: 150 };
    {
        let mut storage = open(dir.path());
        storage.append(&expected[..120]).expect("append term 1");
        storage.append(&mixed_entries(100, 180, 2)).expect("append conflicting term 2");
        storage.append(&expected[120..]).expect("append term 3 overwrites the tail");
        storage.set_hard_state(HardState { term: 2, vote: None, commit: 10 }).expect("hard state");
        storage.set_hard_state(hard_state).expect("hard state");
    }
    let storage = open(dir.path());
    let mut expected = mixed_entries(1, 99, 1);
    expected.extend(mixed_entries(100, 120, 2));
    expected.extend(mixed_entries(121, 200, 3));
    assert_eq!(storage.first_index().expect("first"), 1);
    assert_eq!(storage.last_index().expect("last"), 200);
    assert_eq!(storage.entries(1, 201, u64::MAX).expect("entries"), expected);
    for entry in &expected {
        assert_eq!(storage.term(entry.index).expect("term"), entry.term);
    }
    assert_eq!(storage.initial_state().expect("state").hard_state, hard_state);
}

#[test]
fn snapshots_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = ConfState { voters: [1, 2, 3].into(), learners: [4].into() };
    {
        let mut storage = open(dir.path());
        storage.append(&mixed_entries(1, 150, 2)).expect("append");
        storage.create_snapshot(120, conf.clone(), b"state@120".to_vec()).expect("create_snapshot");
    }
    let mut storage = open(dir.path());
    assert_eq!((storage.first_index().expect("first"), storage.last_index().expect("last")), (121, 150));
    assert_eq!(storage.term(120).expect("snapshot term"), 2);
    assert_eq!(storage.entries(121, 151, u64::MAX).expect("entries"), mixed_entries(121, 150, 2));
    assert_eq!(storage.initial_state().expect("state").conf_state, conf);

    let installed = Snapshot {
        meta: SnapshotMeta { index: 1000, term: 7, conf_state: ConfState::with_voters([1, 2]) },
        data: b"state@1000".to_vec(),
    };
    storage.apply_snapshot(installed.clone()).expect("apply_snapshot");
    storage.append(&mixed_entries(1001, 1010, 7)).expect("append after install");
    drop(storage);
    let storage = open(dir.path());
    assert_eq!(storage.snapshot().expect("snapshot"), installed);
    assert_eq!((storage.first_index().expect("first"), storage.last_index().expect("last")), (1001, 1010));
    assert_eq!(storage.entries(1001, 1011, u64::MAX).expect("entries"), mixed_entries(1001, 1010, 7));
}

#[test]
fn snapshot_written_before_wal_reset_is_repaired_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut storage = open(dir.path());
        storage.append(&mixed_entries(1, 50, 1)).expect("append");
    }
    // Simulate a crash after `raft-snapshot` was published but before the wal was reset, by
    // installing the snapshot in another directory and copying its snapshot file over.
    let other = tempfile::tempdir().expect("tempdir");
    {
        let mut storage = open(other.path());
        let snapshot = Snapshot {
            meta: SnapshotMeta { index: 30, term: 5, conf_state: ConfState::with_voters([1]) },
            data: vec![9],
        };
        storage.apply_snapshot(snapshot).expect("apply");
    }
    std::fs::copy(other.path().join(SNAPSHOT_FILE), dir.path().join(SNAPSHOT_FILE)).expect("copy");
    let mut storage = open(dir.path());
    assert_eq!((storage.first_index().expect("first"), storage.last_index().expect("last")), (31, 30));
    assert_eq!(storage.term(30).expect("term"), 5);
    storage.append(&mixed_entries(31, 32, 5)).expect("append after repair");
}

#[test]
fn torn_metadata_files_are_typed_errors() {
    for name in [HARD_STATE_FILE, SNAPSHOT_FILE] {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut storage = open(dir.path());
            storage.set_hard_state(HardState { term: 4, vote: Some(1), commit: 0 }).expect("hard state");
            storage.append(&mixed_entries(1, 5, 4)).expect("append");
            storage.create_snapshot(3, ConfState::with_voters([1]), vec![7; 40]).expect("snapshot");
        }
        let path = dir.path().join(name);
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("tear");
        let torn = WalStorage::open(dir.path(), options());
        assert!(matches!(torn, Err(WalStorageError::CorruptMeta { .. })), "torn {name} must be detected");
        let mut flipped = bytes.clone();
        flipped[9] ^= 0x40;
        std::fs::write(&path, &flipped).expect("flip");
        let rotten = WalStorage::open(dir.path(), options());
        assert!(matches!(rotten, Err(WalStorageError::CorruptMeta { .. })), "flipped {name} must be detected");
    }
}
