//! Behaviour every `Storage` implementation must show. Each check is a public function that
//! panics with a description on failure; `run_all` runs them all on fresh stores from `make`.
//! The stores `make` returns must be empty (no entries, no snapshot, default hard state).
//!
//! `run_reopen_checks` adds what must hold across a restart, for a store that says how it is made
//! durable and reopened (`Durable`): what was synced survives, a crash between steps leaves a prefix
//! of what was written (never a mix), and snapshots, which the application writes synchronously,
//! survive a crash right after they return.

use super::Storage;
use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Payload, Snapshot, SnapshotMeta};

/// Unbounded byte limit for reads that must return the whole range.
const BYTES_UNLIMITED: u64 = u64::MAX;

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, payload: Payload::data(vec![index as u8; 10]) }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

pub fn run_all<S: Storage>(mut make: impl FnMut() -> S) {
    empty_store_has_no_entries(make());
    append_then_read_back(make());
    append_truncates_from_first_conflicting_index(make());
    append_refuses_a_gap(make());
    entries_respects_bytes_max_but_returns_one(make());
    entries_out_of_range_are_errors(make());
    hard_state_round_trips(make());
    create_snapshot_compacts_prefix(make());
    apply_snapshot_replaces_log(make());
    stale_snapshot_is_refused(make());
}

pub fn empty_store_has_no_entries<S: Storage>(store: S) {
    assert_eq!(store.first_index().expect("first_index"), 1, "empty store first_index");
    assert_eq!(store.last_index().expect("last_index"), 0, "empty store last_index");
    assert_eq!(store.term(0).expect("term(0)"), 0, "term of index 0 is 0");
    assert_eq!(store.snapshot().expect("snapshot").meta.index, 0);
    let state = store.initial_state().expect("initial_state");
    assert_eq!(state.hard_state, HardState::default(), "empty store hard state");
}

pub fn append_then_read_back<S: Storage>(mut store: S) {
    store.append(&entries(1..=5, 1)).expect("append 1..=5");
    store.append(&entries(6..=7, 2)).expect("append 6..=7");
    assert_eq!(store.last_index().expect("last_index"), 7);
    assert_eq!(store.term(5).expect("term 5"), 1);
    assert_eq!(store.term(7).expect("term 7"), 2);
    let read = store.entries(2, 8, BYTES_UNLIMITED).expect("entries");
    let mut expected = entries(2..=5, 1);
    expected.extend(entries(6..=7, 2));
    assert_eq!(read, expected, "entries read back differ from those appended");
}

pub fn append_truncates_from_first_conflicting_index<S: Storage>(mut store: S) {
    store.append(&entries(1..=6, 1)).expect("append");
    store.append(&entries(4..=5, 2)).expect("overwrite 4..=5");
    assert_eq!(store.last_index().expect("last_index"), 5, "tail after 5 must be dropped");
    assert_eq!(store.term(3).expect("term 3"), 1, "prefix must be kept");
    assert_eq!(store.term(4).expect("term 4"), 2);
    assert!(store.term(6).is_err(), "index 6 must be gone");
}

pub fn append_refuses_a_gap<S: Storage>(mut store: S) {
    store.append(&entries(1..=3, 1)).expect("append");
    let gap = store.append(&entries(5..=6, 1));
    assert!(gap.is_err(), "appending after a gap must fail");
    assert_eq!(store.last_index().expect("last_index"), 3, "failed append changed the log");
}

pub fn entries_respects_bytes_max_but_returns_one<S: Storage>(mut store: S) {
    store.append(&entries(1..=10, 1)).expect("append");
    let one_size = entry(1, 1).size_bytes();
    let one = store.entries(1, 11, 0).expect("entries");
    assert_eq!(one.len(), 1, "a zero byte budget still returns one entry");
    let three = store.entries(1, 11, one_size * 3).expect("entries");
    assert_eq!(three.len(), 3, "byte budget of three entries");
}

pub fn entries_out_of_range_are_errors<S: Storage>(mut store: S) {
    store.append(&entries(1..=5, 1)).expect("append");
    store.create_snapshot(3, ConfState::with_voters([1]), vec![].into()).expect("create_snapshot");
    assert!(
        matches!(store.entries(2, 5, BYTES_UNLIMITED), Err(StorageError::Compacted { .. })),
        "reading compacted entries must report Compacted"
    );
    assert!(
        matches!(store.entries(4, 7, BYTES_UNLIMITED), Err(StorageError::Unavailable { .. })),
        "reading past the end must report Unavailable"
    );
    assert!(matches!(store.term(2), Err(StorageError::Compacted { .. })));
    assert!(matches!(store.term(6), Err(StorageError::Unavailable { .. })));
}

pub fn hard_state_round_trips<S: Storage>(mut store: S) {
    let hard_state = HardState { term: 7, vote: Some(3), commit: 0 };
    store.set_hard_state(hard_state).expect("set_hard_state");
    let state = store.initial_state().expect("initial_state");
    assert_eq!(state.hard_state, hard_state);
}

pub fn create_snapshot_compacts_prefix<S: Storage>(mut store: S) {
    store.append(&entries(1..=4, 1)).expect("append");
    store.append(&entries(5..=8, 2)).expect("append");
    let conf = ConfState::with_voters([1, 2, 3]);
    store.create_snapshot(5, conf.clone(), b"state@5".to_vec().into()).expect("create_snapshot");
    assert_eq!(store.first_index().expect("first_index"), 6);
    assert_eq!(store.last_index().expect("last_index"), 8, "entries after the snapshot stay");
    assert_eq!(store.term(5).expect("snapshot term stays readable"), 2);
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(snapshot.meta.index, 5);
    assert_eq!(snapshot.meta.term, 2);
    assert_eq!(snapshot.meta.conf_state, conf);
    assert_eq!(*snapshot.data, b"state@5".to_vec());
    assert_eq!(store.initial_state().expect("state").conf_state, conf);
    store.append(&entries(9..=9, 2)).expect("append after compaction");
    assert_eq!(store.last_index().expect("last_index"), 9);
}

pub fn apply_snapshot_replaces_log<S: Storage>(mut store: S) {
    store.append(&entries(1..=3, 1)).expect("append");
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 10, term: 4, conf_state: ConfState::with_voters([1, 2]) },
        data: b"state@10".to_vec().into(),
    };
    store.apply_snapshot(snapshot.clone()).expect("apply_snapshot");
    assert_eq!(store.first_index().expect("first_index"), 11);
    assert_eq!(store.last_index().expect("last_index"), 10);
    assert_eq!(store.term(10).expect("term"), 4);
    assert_eq!(store.snapshot().expect("snapshot"), snapshot);
    store.append(&entries(11..=12, 4)).expect("append after snapshot");
    assert_eq!(store.last_index().expect("last_index"), 12);
}

pub fn stale_snapshot_is_refused<S: Storage>(mut store: S) {
    let newer = Snapshot {
        meta: SnapshotMeta { index: 10, term: 3, conf_state: ConfState::with_voters([1]) },
        data: vec![1].into(),
    };
    store.apply_snapshot(newer.clone()).expect("apply newer");
    let older = Snapshot {
        meta: SnapshotMeta { index: 5, term: 2, conf_state: ConfState::with_voters([1]) },
        data: vec![2].into(),
    };
    assert!(
        matches!(store.apply_snapshot(older), Err(StorageError::SnapshotOutOfDate { .. })),
        "an older snapshot must be refused"
    );
    assert_eq!(store.snapshot().expect("snapshot"), newer, "refused snapshot changed state");
}

/// A store that can be synced and reopened, for the checks that span a restart.
pub trait Durable {
    type Store: Storage;
    /// A fresh, empty store.
    fn create(&mut self) -> Self::Store;
    /// Makes everything written so far durable (what the application does before `on_persisted`).
    fn sync(&mut self, store: &mut Self::Store);
    /// Stops the store as a crash would (only what was synced, and snapshots, need survive) and opens
    /// it again.
    fn crash_and_reopen(&mut self, store: Self::Store) -> Self::Store;
}

pub fn run_reopen_checks<D: Durable>(durable: &mut D) {
    synced_state_survives_reopen(durable);
    synced_conflicting_suffix_survives_reopen(durable);
    a_crash_before_sync_leaves_a_prefix(durable);
    compaction_survives_a_crash_before_any_sync(durable);
    an_install_survives_a_crash_whole_or_not_at_all(durable);
    installed_snapshot_and_later_entries_survive_reopen(durable);
    reopening_twice_changes_nothing(durable);
}

fn assert_log<S: Storage>(store: &S, first: u64, expected: &[Entry], what: &str) {
    let last = first + expected.len() as u64 - 1;
    assert_eq!(store.first_index().expect("first_index"), first, "{what}: first index");
    assert_eq!(store.last_index().expect("last_index"), last, "{what}: last index");
    if !expected.is_empty() {
        let read = store.entries(first, last + 1, BYTES_UNLIMITED).expect("entries");
        assert_eq!(read, expected, "{what}: entries");
        for entry in expected {
            assert_eq!(store.term(entry.index).expect("term"), entry.term, "{what}: term of {}", entry.index);
        }
    }
}

pub fn synced_state_survives_reopen<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    let mut expected = entries(1..=5, 1);
    expected.extend(entries(6..=8, 2));
    store.append(&expected[..5]).expect("append");
    store.append(&expected[5..]).expect("append");
    let hard_state = HardState { term: 2, vote: Some(1), commit: 6 };
    store.set_hard_state(hard_state).expect("set_hard_state");
    durable.sync(&mut store);
    let store = durable.crash_and_reopen(store);
    assert_log(&store, 1, &expected, "synced entries after reopen");
    assert_eq!(store.initial_state().expect("state").hard_state, hard_state, "synced hard state after reopen");
}

pub fn synced_conflicting_suffix_survives_reopen<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    store.append(&entries(1..=6, 1)).expect("append");
    durable.sync(&mut store);
    store.append(&entries(4..=5, 2)).expect("overwrite 4..=5");
    durable.sync(&mut store);
    let mut store = durable.crash_and_reopen(store);
    let mut expected = entries(1..=3, 1);
    expected.extend(entries(4..=5, 2));
    assert_log(&store, 1, &expected, "conflicting suffix after reopen");
    store.append(&entries(6..=7, 2)).expect("append after reopen");
    durable.sync(&mut store);
    let store = durable.crash_and_reopen(store);
    expected.extend(entries(6..=7, 2));
    assert_log(&store, 1, &expected, "appends after a reopened conflict");
}

pub fn a_crash_before_sync_leaves_a_prefix<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    let all = entries(1..=6, 1);
    store.append(&all[..3]).expect("append");
    let synced_state = HardState { term: 1, vote: Some(2), commit: 2 };
    store.set_hard_state(synced_state).expect("set_hard_state");
    durable.sync(&mut store);
    store.append(&all[3..]).expect("append");
    let unsynced_state = HardState { term: 1, vote: Some(2), commit: 5 };
    store.set_hard_state(unsynced_state).expect("set_hard_state");
    let mut store = durable.crash_and_reopen(store);
    let last = store.last_index().expect("last_index");
    assert!((3..=6).contains(&last), "after a crash the log ends at {last}, outside the synced 3 ..= written 6");
    assert_log(&store, 1, &all[..last as usize], "prefix after a crash");
    let state = store.initial_state().expect("state").hard_state;
    assert!(state == synced_state || state == unsynced_state, "hard state after a crash is neither: {state:?}");
    assert!(state.commit <= last, "hard state commit {} beyond the log's end {last}", state.commit);
    store.append(&entries(last + 1..=last + 1, 2)).expect("append after a crash");
}

pub fn compaction_survives_a_crash_before_any_sync<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    store.append(&entries(1..=8, 1)).expect("append");
    durable.sync(&mut store);
    let conf = ConfState::with_voters([1, 2, 3]);
    store.create_snapshot(5, conf.clone(), b"state@5".to_vec().into()).expect("create_snapshot");
    let store = durable.crash_and_reopen(store);
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!((snapshot.meta.index, snapshot.meta.term), (5, 1), "compaction lost by a crash");
    assert_eq!(*snapshot.data, b"state@5".to_vec());
    assert_eq!(store.initial_state().expect("state").conf_state, conf);
    assert_log(&store, 6, &entries(6..=8, 1), "entries after a compaction and a crash");
}

pub fn an_install_survives_a_crash_whole_or_not_at_all<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    store.append(&entries(1..=3, 1)).expect("append");
    durable.sync(&mut store);
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 10, term: 4, conf_state: ConfState::with_voters([1, 2]) },
        data: b"state@10".to_vec().into(),
    };
    store.apply_snapshot(snapshot.clone()).expect("apply_snapshot");
    let mut store = durable.crash_and_reopen(store);
    if store.snapshot().expect("snapshot").meta.index == 10 {
        assert_eq!(store.snapshot().expect("snapshot"), snapshot);
        assert_log(&store, 11, &[], "an install after a crash");
        assert_eq!(store.term(10).expect("term"), 4);
        store.append(&entries(11..=11, 4)).expect("append after the install");
    } else {
        assert_log(&store, 1, &entries(1..=3, 1), "an install undone by a crash");
    }
}

pub fn installed_snapshot_and_later_entries_survive_reopen<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    store.append(&entries(1..=3, 1)).expect("append");
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: 10, term: 4, conf_state: ConfState::with_voters([1, 2]) },
        data: b"state@10".to_vec().into(),
    };
    store.apply_snapshot(snapshot.clone()).expect("apply_snapshot");
    store.append(&entries(11..=12, 4)).expect("append after the install");
    let hard_state = HardState { term: 4, vote: None, commit: 11 };
    store.set_hard_state(hard_state).expect("set_hard_state");
    durable.sync(&mut store);
    let store = durable.crash_and_reopen(store);
    assert_eq!(store.snapshot().expect("snapshot"), snapshot);
    assert_log(&store, 11, &entries(11..=12, 4), "entries after an installed snapshot");
    assert_eq!(store.initial_state().expect("state").hard_state, hard_state);
}

pub fn reopening_twice_changes_nothing<D: Durable>(durable: &mut D) {
    let mut store = durable.create();
    store.append(&entries(1..=9, 3)).expect("append");
    store.create_snapshot(4, ConfState::with_voters([1]), vec![4; 16].into()).expect("create_snapshot");
    let hard_state = HardState { term: 3, vote: Some(1), commit: 9 };
    store.set_hard_state(hard_state).expect("set_hard_state");
    durable.sync(&mut store);
    let store = durable.crash_and_reopen(store);
    let store = durable.crash_and_reopen(store);
    assert_log(&store, 5, &entries(5..=9, 3), "after two reopens");
    assert_eq!(*store.snapshot().expect("snapshot").data, vec![4; 16]);
    assert_eq!(store.initial_state().expect("state").hard_state, hard_state);
}
