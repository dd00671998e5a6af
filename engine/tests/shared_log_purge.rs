//! Purge never removes a record a group still needs: a property test over random appends (with
//! conflicting suffixes), hard states, syncs, compactions, snapshot installs, purges (honouring the
//! compactions purge asks for), crashes (staged records lost) and reopens, on a log of tiny segments
//! shared by three groups. A model per group keeps what was written (`live`) and what must survive a
//! crash (`durable`: what was synced, plus snapshots, which are written synchronously); after every
//! step the store must read back `live`, after every crash `durable`. At the end, once every group has
//! compacted, the log is back to a few segments.

use std::path::Path;
use std::sync::{Arc, Mutex};

use engine::replica::shared_log::{lock, GroupStore, SharedLog, SharedLogHandle, PURGE_SEGMENTS_RETAINED};
use proptest::prelude::*;
use raft::{ConfState, Entry, HardState, MemStorage, Payload, Snapshot, SnapshotMeta, Storage};
use wal::WalOptions;

const GROUPS: [u32; 3] = [3, 11, 12];

fn options() -> WalOptions {
    WalOptions { segment_bytes: 2048, payload_bytes_max: 256, pending_bytes_max: 1 << 20 }
}

#[derive(Clone, Debug)]
enum Op {
    /// Appends `count` entries from `from` (taken modulo the live log + 1, so it may overwrite a
    /// suffix); a new term when `new_term`.
    Append {
        group: usize,
        from: u64,
        count: u64,
        new_term: bool,
        bytes: usize,
    },
    HardState {
        group: usize,
        commit_share: u8,
    },
    Sync,
    /// Syncs, then compacts at an index taken modulo the live log.
    Compact {
        group: usize,
        at: u64,
    },
    /// Installs a leader's snapshot `ahead` entries past the live log.
    Install {
        group: usize,
        ahead: u64,
    },
    Purge,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..GROUPS.len(), any::<u64>(), 1..6u64, prop::bool::weighted(0.15), 0..120usize)
            .prop_map(|(group, from, count, new_term, bytes)| Op::Append { group, from, count, new_term, bytes }),
        3 => (0..GROUPS.len(), any::<u8>()).prop_map(|(group, commit_share)| Op::HardState { group, commit_share }),
        4 => Just(Op::Sync),
        2 => (0..GROUPS.len(), any::<u64>()).prop_map(|(group, at)| Op::Compact { group, at }),
        1 => (0..GROUPS.len(), 1..20u64).prop_map(|(group, ahead)| Op::Install { group, ahead }),
        4 => Just(Op::Purge),
        1 => Just(Op::Crash),
    ]
}

struct Model {
    live: MemStorage,
    durable: MemStorage,
    term: u64,
}

struct Store {
    log: SharedLogHandle,
    views: Vec<GroupStore>,
}

fn open(dir: &Path) -> Store {
    let (mut log, _) = SharedLog::open(dir, options()).expect("open");
    for partition in GROUPS {
        log.bootstrap(partition, ConfState::with_voters([1, 2, 3])).expect("bootstrap");
    }
    let log = Arc::new(Mutex::new(log));
    let views = GROUPS.iter().map(|&p| GroupStore::new(log.clone(), p).expect("view")).collect();
    Store { log, views }
}

fn assert_same(store: &GroupStore, model: &MemStorage, what: &str) {
    let (first, last) = (model.first_index().unwrap(), model.last_index().unwrap());
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (first, last), "{what}: range");
    assert_eq!(store.snapshot().unwrap(), model.snapshot().unwrap(), "{what}: snapshot");
    assert_eq!(store.initial_state().unwrap(), model.initial_state().unwrap(), "{what}: hard state and membership");
    assert_eq!(store.term(first - 1).unwrap(), model.term(first - 1).unwrap(), "{what}: snapshot term");
    if last >= first {
        assert_eq!(
            store.entries(first, last + 1, u64::MAX).unwrap(),
            model.entries(first, last + 1, u64::MAX).unwrap(),
            "{what}: entries"
        );
    }
}

fn sync(store: &Store, models: &mut [Model]) {
    lock(&store.log).sync().expect("sync");
    for model in models {
        model.durable = model.live.clone();
    }
}

/// Syncs, then compacts `group` at an index taken from `at` modulo its log (`None`: its last index).
fn compact(store: &mut Store, models: &mut [Model], group: usize, at: Option<u64>) {
    sync(store, models);
    let model = &mut models[group];
    let (snapshot_index, last) = (model.live.first_index().unwrap() - 1, model.live.last_index().unwrap());
    if last <= snapshot_index {
        return;
    }
    let index = at.map_or(last, |at| snapshot_index + 1 + at % (last - snapshot_index));
    let data: raft::SnapshotData = index.to_le_bytes().to_vec().into();
    let conf = ConfState::with_voters([1, 2, 3]);
    store.views[group].create_snapshot(index, conf.clone(), data.clone()).expect("create_snapshot");
    model.live.create_snapshot(index, conf.clone(), data.clone()).unwrap();
    model.durable.create_snapshot(index, conf, data).unwrap();
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path());
    let mut models: Vec<Model> = GROUPS
        .iter()
        .map(|_| {
            let empty = MemStorage::new_with_conf(ConfState::with_voters([1, 2, 3]));
            Model { live: empty.clone(), durable: empty, term: 1 }
        })
        .collect();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append { group, from, count, new_term, bytes } => {
                let model = &mut models[group];
                let (first, last) = (model.live.first_index().unwrap(), model.live.last_index().unwrap());
                let start = first + from % (last + 2 - first);
                if new_term || start <= last {
                    model.term += 1;
                }
                let entries: Vec<Entry> = (start..start + count)
                    .map(|index| Entry { index, term: model.term, payload: Payload::data(vec![index as u8; bytes]) })
                    .collect();
                store.views[group].append(&entries).expect("append");
                model.live.append(&entries).unwrap();
            }
            Op::HardState { group, commit_share } => {
                let model = &mut models[group];
                let commit = model.live.last_index().unwrap() * commit_share as u64 / 255;
                let hard_state = HardState { term: model.term, vote: Some(1 + commit % 3), commit };
                store.views[group].set_hard_state(hard_state).expect("set_hard_state");
                model.live.set_hard_state(hard_state).unwrap();
            }
            Op::Sync => sync(&store, &mut models),
            Op::Compact { group, at } => compact(&mut store, &mut models, group, Some(at)),
            Op::Install { group, ahead } => {
                let model = &mut models[group];
                model.term += 1;
                let snapshot = Snapshot {
                    meta: SnapshotMeta {
                        index: model.live.last_index().unwrap() + ahead,
                        term: model.term,
                        conf_state: ConfState::with_voters([1, 2, 3]),
                    },
                    data: vec![step as u8; 9].into(),
                };
                store.views[group].apply_snapshot(snapshot.clone()).expect("apply_snapshot");
                model.live.apply_snapshot(snapshot.clone()).unwrap();
                model.durable.apply_snapshot(snapshot).unwrap();
            }
            Op::Purge => {
                let report = lock(&store.log).purge().expect("purge");
                for partition in report.compaction_wanted {
                    let group = GROUPS.iter().position(|&p| p == partition).expect("a group of the log");
                    compact(&mut store, &mut models, group, None);
                }
            }
            Op::Crash => {
                let dir = lock(&store.log).directory().to_path_buf();
                drop(store);
                store = open(&dir);
                for (group, model) in models.iter_mut().enumerate() {
                    assert_same(
                        &store.views[group],
                        &model.durable,
                        &format!("step {step}: group {group} after a crash"),
                    );
                    model.live = model.durable.clone();
                }
            }
        }
        for (group, model) in models.iter().enumerate() {
            assert_same(&store.views[group], &model.live, &format!("step {step}: group {group}"));
        }
    }
    // Once every group has compacted what it holds, purge frees all but a few segments.
    for group in 0..GROUPS.len() {
        compact(&mut store, &mut models, group, None);
    }
    // A purge rewrites the records it must keep, the next one (once they are durable) frees the rest.
    for _ in 0..3 {
        lock(&store.log).purge().expect("purge");
        sync(&store, &mut models);
    }
    lock(&store.log).purge().expect("purge");
    let segments = lock(&store.log).segment_count();
    assert!(segments <= PURGE_SEGMENTS_RETAINED + 1, "{segments} segments left after every group compacted");
    let dir = lock(&store.log).directory().to_path_buf();
    drop(store);
    let store = open(&dir);
    for (group, model) in models.iter().enumerate() {
        assert_same(&store.views[group], &model.durable, &format!("group {group} after the final reopen"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn purge_never_removes_a_record_a_group_needs(ops in prop::collection::vec(op(), 1..120)) {
        run(ops);
    }
}

/// Found by the property above: an append that replaced every entry of a group (a conflict at its
/// first index) let purge delete the segment of the old entries before the new ones were durable, so
/// a crash left the group with no entries at all instead of the old ones.
#[test]
fn a_conflict_at_the_first_index_keeps_the_old_entries_until_the_new_are_durable() {
    let append = |group, from, count, new_term, bytes| Op::Append { group, from, count, new_term, bytes };
    run(vec![
        append(1, 6, 2, false, 119),
        Op::Sync,
        append(1, 6_999_537_615_824_350_370, 4, false, 28),
        append(2, 10_684_108_622_406_522_285, 5, false, 20),
        Op::Sync,
        append(1, 6_424_155_718_355_820_336, 3, false, 72),
        append(0, 2_055_806_998_853_904_418, 4, false, 65),
        append(0, 12_633_287_633_438_751_899, 2, false, 9),
        append(0, 16_276_398_837_056_132_936, 1, true, 7),
        Op::Install { group: 2, ahead: 12 },
        Op::Sync,
        append(1, 2_894_268_450_583_493_921, 5, true, 3),
        Op::Purge,
        Op::Crash,
    ]);
}
