//! The shared log's group view (`GroupStore`) against raft's public `Storage` conformance suite and its
//! reopen and crash-between-steps checks, with another group's records interleaved in the same log;
//! then recovery checks of the layout itself: torn and corrupt records name their group and offset,
//! snapshot files are verified, an install interrupted by a crash is completed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use engine::replica::shared_log::{self, lock, GroupName, GroupStore, SharedLog, SharedLogError, SharedLogHandle};
use raft::storage::conformance::{self, Durable};
use raft::storage::StorageResult;
use raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, HardState, Payload, RaftState, Snapshot, SnapshotMeta, Storage,
};
use tempfile::TempDir;
use wal::WalOptions;

/// The group under test and the one whose records are interleaved with it.
const PARTITION: u32 = 7;
const NEIGHBOUR: u32 = 8;

/// Small segments so records of both groups cross segment boundaries.
fn options() -> WalOptions {
    WalOptions { segment_bytes: 4096, payload_bytes_max: 1024, pending_bytes_max: 1 << 20 }
}

fn open(dir: &Path) -> SharedLogHandle {
    let (log, _) = SharedLog::open(dir, options()).expect("open shared log");
    Arc::new(Mutex::new(log))
}

fn mixed_entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to)
        .map(|index| {
            let payload = match index % 4 {
                0 => Payload::Noop,
                1 => Payload::ConfChange(ConfChange { kind: ConfChangeKind::AddLearner, node: index }),
                2 => Payload::ConfChange(ConfChange { kind: ConfChangeKind::Remove, node: u64::MAX - index }),
                _ => Payload::data((0..(index * 13 % 300)).map(|byte| (byte ^ index) as u8).collect()),
            };
            Entry { index, term, payload }
        })
        .collect()
}

/// `GroupStore` of `PARTITION`, and after every write of it a write of `NEIGHBOUR` in the same log, so
/// the conformance checks run on a log shared by two groups.
struct Interleaved {
    main: GroupStore,
    neighbour: GroupStore,
    log: SharedLogHandle,
}

impl Interleaved {
    fn open(dir: &Path) -> Interleaved {
        let log = open(dir);
        for partition in [PARTITION, NEIGHBOUR] {
            lock(&log).bootstrap(partition, ConfState::default()).expect("bootstrap");
        }
        let main = GroupStore::new(log.clone(), PARTITION).expect("view");
        let neighbour = GroupStore::new(log.clone(), NEIGHBOUR).expect("view");
        Interleaved { main, neighbour, log }
    }

    fn disturb(&mut self) {
        let next = self.neighbour.last_index().expect("last") + 1;
        self.neighbour.append(&mixed_entries(next, next + 1, 9)).expect("neighbour append");
        self.neighbour.set_hard_state(HardState { term: 9, vote: Some(3), commit: next }).expect("neighbour state");
    }
}

impl Storage for Interleaved {
    fn initial_state(&self) -> StorageResult<RaftState> {
        self.main.initial_state()
    }

    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>> {
        self.main.entries(low, high, bytes_max)
    }

    fn term(&self, index: u64) -> StorageResult<u64> {
        self.main.term(index)
    }

    fn first_index(&self) -> StorageResult<u64> {
        self.main.first_index()
    }

    fn last_index(&self) -> StorageResult<u64> {
        self.main.last_index()
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        self.main.snapshot()
    }

    fn append(&mut self, entries: &[Entry]) -> StorageResult<()> {
        let result = self.main.append(entries);
        self.disturb();
        result
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> StorageResult<()> {
        self.main.set_hard_state(hard_state)?;
        self.disturb();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> StorageResult<()> {
        self.main.apply_snapshot(snapshot)?;
        self.disturb();
        Ok(())
    }

    fn create_snapshot(&mut self, index: u64, conf_state: ConfState, data: raft::SnapshotData) -> StorageResult<()> {
        self.main.create_snapshot(index, conf_state, data)?;
        self.disturb();
        Ok(())
    }
}

/// Each store in a directory of its own; a crash drops the log without syncing what is staged.
#[derive(Default)]
struct OnDisk {
    dirs: Vec<TempDir>,
}

impl Durable for OnDisk {
    type Store = Interleaved;

    fn create(&mut self) -> Interleaved {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Interleaved::open(dir.path());
        self.dirs.push(dir);
        store
    }

    fn sync(&mut self, store: &mut Interleaved) {
        lock(&store.log).sync().expect("sync");
    }

    fn crash_and_reopen(&mut self, store: Interleaved) -> Interleaved {
        let dir = lock(&store.log).directory().to_path_buf();
        let neighbour_last = store.neighbour.last_index().expect("last");
        drop(store);
        let reopened = Interleaved::open(&dir);
        assert!(reopened.neighbour.last_index().expect("last") <= neighbour_last, "the neighbour grew by a crash");
        reopened
    }
}

#[test]
fn group_store_passes_the_conformance_suite() {
    let mut durable = OnDisk::default();
    conformance::run_all(|| durable.create());
}

#[test]
fn group_store_passes_the_reopen_checks() {
    conformance::run_reopen_checks(&mut OnDisk::default());
}

#[test]
fn entries_terms_and_hard_states_of_every_group_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hard_state = HardState { term: 3, vote: Some(2), commit: 150 };
    {
        let mut store = Interleaved::open(dir.path());
        store.append(&mixed_entries(1, 120, 1)).expect("append term 1");
        store.append(&mixed_entries(100, 180, 2)).expect("append conflicting term 2");
        store.append(&mixed_entries(121, 200, 3)).expect("append term 3 overwrites the tail");
        store.set_hard_state(HardState { term: 2, vote: None, commit: 10 }).expect("hard state");
        store.set_hard_state(hard_state).expect("hard state");
        lock(&store.log).sync().expect("sync");
    }
    let store = Interleaved::open(dir.path());
    let mut expected = mixed_entries(1, 99, 1);
    expected.extend(mixed_entries(100, 120, 2));
    expected.extend(mixed_entries(121, 200, 3));
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1, 200));
    assert_eq!(store.entries(1, 201, u64::MAX).expect("entries"), expected);
    assert_eq!(store.initial_state().expect("state").hard_state, hard_state);
    let neighbour_last = store.neighbour.last_index().unwrap();
    assert_eq!(neighbour_last, 10, "five writes of the neighbour, two entries each");
    assert_eq!(store.neighbour.entries(1, neighbour_last + 1, u64::MAX).unwrap().len(), 10);
}

/// Writes two groups and returns the log directory, synced.
fn two_groups(dir: &Path) {
    let mut store = Interleaved::open(dir);
    store.append(&mixed_entries(1, 40, 1)).expect("append");
    store.set_hard_state(HardState { term: 1, vote: Some(1), commit: 30 }).expect("hard state");
    lock(&store.log).sync().expect("sync");
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir.join(shared_log::LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

#[test]
fn a_corrupt_record_names_its_group_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_groups(dir.path());
    let segment = segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    // The first record (after the 32-byte segment header) belongs to PARTITION: rot one payload byte.
    let offset = wal::SEGMENT_HEADER_BYTES;
    bytes[offset + wal::RECORD_HEADER_BYTES + 6] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let before = std::fs::read(&segment).unwrap();
    match SharedLog::open_read_only(dir.path(), options()) {
        Err(SharedLogError::CorruptRecord { group, segment: named, offset: at, .. }) => {
            assert_eq!(group, GroupName::Partition(PARTITION));
            assert_eq!(named, segment);
            assert_eq!(at, offset as u64);
        }
        other => panic!("a rotten record must be a CorruptRecord error, got {:?}", other.map(|_| ())),
    }
    let error = SharedLog::open(dir.path(), options()).err().expect("a writable open refuses too");
    let text = error.to_string();
    assert!(text.contains(&format!("partition {PARTITION}")) && text.contains(&format!("byte {offset}")), "{text}");
    assert_eq!(std::fs::read(&segment).unwrap(), before, "refusing a corrupt log changes nothing");
}

#[test]
fn a_torn_tail_is_cut_by_a_writable_open_and_only_skipped_by_a_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_groups(dir.path());
    let segment = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    // Garbage after the last whole record: a write the crash tore.
    let mut end = wal::SEGMENT_HEADER_BYTES;
    while let Ok((header, _)) = wal::layout::decode_record(&bytes[end..]) {
        end += wal::RECORD_HEADER_BYTES + header.payload_bytes as usize;
    }
    bytes[end..end + 30].fill(0xab);
    std::fs::write(&segment, &bytes).unwrap();
    let (_, report) = SharedLog::open_read_only(dir.path(), options()).expect("a reader skips a torn tail");
    assert_eq!(report.truncated_bytes, 30);
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "the reader changed the segment");
    let log = open(dir.path());
    let store = GroupStore::new(log.clone(), PARTITION).unwrap();
    assert_eq!(store.last_index().unwrap(), 40, "whole records survive the cut");
}

#[test]
fn snapshot_files_are_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = Interleaved::open(dir.path());
        store.append(&mixed_entries(1, 5, 4)).expect("append");
        lock(&store.log).sync().expect("sync");
        store.create_snapshot(3, ConfState::with_voters([1]), vec![7; 40].into()).expect("snapshot");
    }
    let path = shared_log::snapshot_path(dir.path(), PARTITION);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    assert!(matches!(SharedLog::open(dir.path(), options()), Err(SharedLogError::CorruptSnapshot { .. })));
    let mut flipped = bytes.clone();
    flipped[20] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(SharedLog::open(dir.path(), options()), Err(SharedLogError::CorruptSnapshot { .. })));
    // The body length is a u64 (a u32 capped images at 4 GiB) and must match the file.
    assert_eq!(&bytes[..4], b"RSN3");
    let body_len = u64::from_le_bytes(bytes[4..12].try_into().unwrap());
    assert_eq!(body_len as usize, bytes.len() - 12 - 8);
    let mut lying = bytes.clone();
    lying[4..12].copy_from_slice(&(body_len + (1 << 32)).to_le_bytes());
    let rechecked = xxhash_rust::xxh3::xxh3_64(&lying[..lying.len() - 8]).to_le_bytes();
    let at = lying.len() - 8;
    lying[at..].copy_from_slice(&rechecked);
    std::fs::write(&path, &lying).unwrap();
    assert!(matches!(SharedLog::open(dir.path(), options()), Err(SharedLogError::CorruptSnapshot { .. })));
    // A file framed the way earlier builds wrote it (`RSN2`, u32 length) is still read.
    let body = &bytes[12..bytes.len() - 8];
    let mut older = b"RSN2".to_vec();
    older.extend_from_slice(&(body.len() as u32).to_le_bytes());
    older.extend_from_slice(body);
    let checksum = xxhash_rust::xxh3::xxh3_64(&older).to_le_bytes();
    older.extend_from_slice(&checksum);
    std::fs::write(&path, &older).unwrap();
    let store = Interleaved::open(dir.path());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (4, 5));
    assert_eq!(*store.snapshot().unwrap().data, vec![7; 40]);
    drop(store);
    std::fs::write(&path, &bytes).unwrap();
    let store = Interleaved::open(dir.path());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (4, 5));
    assert_eq!(*store.snapshot().unwrap().data, vec![7; 40]);
}

/// The snapshot thread's path: the image file is written first (`write_compaction_file`), recorded
/// after (`compaction_written` + `create_snapshot`, which then writes nothing); a crash in between
/// leaves a log that opens at the image, and an install in between makes the record a no-op write.
#[test]
fn a_compaction_written_off_the_round_is_recorded_without_a_second_write_and_survives_a_crash_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard_dir = dir.path();
    let image = |index: u64, byte: u8| Snapshot {
        meta: SnapshotMeta { index, term: 1, conf_state: ConfState::default() },
        data: vec![byte; 64].into(),
    };
    {
        let mut store = Interleaved::open(shard_dir);
        store.append(&mixed_entries(1, 20, 1)).expect("append");
        lock(&store.log).sync().expect("sync");
        // Written by the snapshot thread; the process dies before the shard records it.
        shared_log::write_compaction_file(shard_dir, PARTITION, &image(10, 1)).expect("write image");
    }
    let mut store = Interleaved::open(shard_dir);
    assert_eq!(store.snapshot().unwrap(), image(10, 1), "the open starts from the image the crash left");
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (11, 20));
    // Written, then recorded: the record does not write the file again (its data here differs from the
    // file's only to show which one is on disk).
    shared_log::write_compaction_file(shard_dir, PARTITION, &image(15, 2)).expect("write image");
    lock(&store.log).compaction_written(PARTITION, 15).expect("recorded");
    store.main.create_snapshot(15, ConfState::default(), vec![3; 64].into()).expect("compact");
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (16, 20));
    drop(store);
    let store = Interleaved::open(shard_dir);
    assert_eq!(store.snapshot().unwrap(), image(15, 2), "the file is the one the snapshot thread wrote");
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (16, 20));
    // A note for an index the snapshot covers already is ignored, and an install clears a pending one:
    // the next compaction at that index writes its file itself.
    let mut store = store;
    lock(&store.log).compaction_written(PARTITION, 12).expect("ignored");
    store.main.create_snapshot(12, ConfState::default(), vec![6; 64].into()).expect_err("below the snapshot");
    lock(&store.log).compaction_written(PARTITION, 35).expect("noted");
    let installed = Snapshot {
        meta: SnapshotMeta { index: 30, term: 2, conf_state: ConfState::default() },
        data: vec![4; 8].into(),
    };
    store.main.apply_snapshot(installed.clone()).expect("install");
    lock(&store.log).sync().expect("sync");
    store.append(&mixed_entries(31, 40, 2)).expect("append");
    lock(&store.log).sync().expect("sync");
    store.main.create_snapshot(35, ConfState::default(), vec![5; 64].into()).expect("compact");
    drop(store);
    let store = Interleaved::open(shard_dir);
    assert_eq!(*store.snapshot().unwrap().data, vec![5; 64], "written by create_snapshot itself");
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (36, 40));
}

#[test]
fn an_install_whose_record_a_crash_lost_is_completed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let installed = Snapshot {
        meta: SnapshotMeta { index: 1000, term: 7, conf_state: ConfState::with_voters([1, 2]) },
        data: b"state@1000".to_vec().into(),
    };
    {
        let mut store = Interleaved::open(dir.path());
        store.append(&mixed_entries(1, 50, 1)).expect("append");
        lock(&store.log).sync().expect("sync");
        // The image is written and synced; the Install record stays staged and dies with the crash.
        store.main.apply_snapshot(installed.clone()).expect("apply");
    }
    let (_, report) = SharedLog::open_read_only(dir.path(), options()).expect("read-only open");
    assert_eq!(report.installs_completed, vec![PARTITION], "a reader completes the install in memory");
    let (_, report) = SharedLog::open_read_only(dir.path(), options()).expect("read-only open");
    assert_eq!(report.installs_completed, vec![PARTITION], "and writes nothing, so a second reader does again");
    let mut store = Interleaved::open(dir.path());
    assert_eq!(store.snapshot().unwrap(), installed);
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1001, 1000));
    store.append(&mixed_entries(1001, 1002, 7)).expect("append after the install");
    lock(&store.log).sync().expect("sync");
    drop(store);
    let (_, report) = SharedLog::open(dir.path(), options()).expect("open");
    assert!(report.installs_completed.is_empty(), "the writable open recorded the install");
    let store = Interleaved::open(dir.path());
    assert_eq!(store.entries(1001, 1003, u64::MAX).unwrap(), mixed_entries(1001, 1002, 7));
}

/// The snapshot thread stages a received snapshot's file (`stage_install_file`); the install renames it
/// into place rather than writing it in the round. A staged file is a temporary: a crash before the
/// install leaves the group as it was and the next writable open removes it (a reader leaves it); a
/// file staged and never installed is removed when another is staged or an install at another index
/// writes its own.
#[test]
fn a_staged_install_file_is_renamed_into_place_and_a_leftover_one_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shard_dir = dir.path();
    let received = |index: u64, byte: u8| Snapshot {
        meta: SnapshotMeta { index, term: 3, conf_state: ConfState::with_voters([1, 2, 3]) },
        data: vec![byte; 96].into(),
    };
    let staged_files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(shard_dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".install-"))
            .collect();
        names.sort();
        names
    };
    {
        let mut store = Interleaved::open(shard_dir);
        store.append(&mixed_entries(1, 20, 1)).expect("append");
        lock(&store.log).sync().expect("sync");
        // Staged by the snapshot thread; the process dies before the shard installs it.
        shared_log::stage_install_file(shard_dir, PARTITION, &received(30, 1)).expect("stage");
    }
    assert_eq!(staged_files(), vec![format!("snapshot-{PARTITION:05}.install-30.tmp")]);
    let (_, report) = SharedLog::open_read_only(shard_dir, options()).expect("read-only open");
    assert!(report.installs_completed.is_empty(), "a staged file is no install");
    assert_eq!(staged_files().len(), 1, "a reader removes nothing");
    let mut store = Interleaved::open(shard_dir);
    assert!(staged_files().is_empty(), "the writable open removed the leftover");
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (1, 20), "the group is as it was");

    // Staged, noted, installed: the file in place is the staged one (its data differs from the
    // snapshot Raft installs only to show which one is on disk), and nothing staged is left.
    shared_log::stage_install_file(shard_dir, PARTITION, &received(30, 2)).expect("stage");
    lock(&store.log).install_staged(PARTITION, 30, true).expect("noted");
    store.main.apply_snapshot(received(30, 9)).expect("install");
    lock(&store.log).sync().expect("sync");
    assert!(staged_files().is_empty());
    drop(store);
    let mut store = Interleaved::open(shard_dir);
    assert_eq!(store.snapshot().unwrap(), received(30, 2), "the staged file was renamed into place");
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (31, 30));

    // Staged and never installed (Raft found it stale): the next staging removes it, and an install
    // at another index removes what is staged and writes its own file.
    for (index, byte) in [(40, 3), (50, 4)] {
        shared_log::stage_install_file(shard_dir, PARTITION, &received(index, byte)).expect("stage");
        lock(&store.log).install_staged(PARTITION, index, true).expect("noted");
    }
    assert_eq!(staged_files(), vec![format!("snapshot-{PARTITION:05}.install-50.tmp")]);
    store.main.apply_snapshot(received(60, 5)).expect("install");
    lock(&store.log).sync().expect("sync");
    assert!(staged_files().is_empty());
    drop(store);
    let mut store = Interleaved::open(shard_dir);
    assert_eq!(store.snapshot().unwrap(), received(60, 5), "written by the install itself");

    // A snapshot at 70 staged and marked, found stale; the same snapshot comes again and its staging
    // fails partway (here: the truncated file it leaves). The mark goes with the file, and the install
    // writes the whole image itself rather than renaming what the failed staging left.
    shared_log::stage_install_file(shard_dir, PARTITION, &received(70, 6)).expect("stage");
    lock(&store.log).install_staged(PARTITION, 70, true).expect("noted");
    let staged_path = shard_dir.join(format!("snapshot-{PARTITION:05}.install-70.tmp"));
    std::fs::write(&staged_path, b"RSN3 cut short").unwrap();
    lock(&store.log).install_staged(PARTITION, 70, false).expect("noted");
    assert!(staged_files().is_empty(), "the failed staging's file is removed");
    store.main.apply_snapshot(received(70, 7)).expect("install");
    lock(&store.log).sync().expect("sync");
    drop(store);
    let store = Interleaved::open(shard_dir);
    assert_eq!(store.snapshot().unwrap(), received(70, 7), "the install wrote the whole image");
}

#[test]
fn a_read_only_log_refuses_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    two_groups(dir.path());
    let (log, _) = SharedLog::open_read_only(dir.path(), options()).expect("read-only");
    let log = Arc::new(Mutex::new(log));
    let mut store = GroupStore::new(log.clone(), PARTITION).unwrap();
    assert!(store.append(&mixed_entries(41, 41, 1)).is_err());
    assert!(store.set_hard_state(HardState::default()).is_err());
    assert!(store.create_snapshot(10, ConfState::default(), vec![].into()).is_err());
    assert!(lock(&log).purge().is_err());
    assert_eq!(store.last_index().unwrap(), 40, "a refused append changed the index");
}
