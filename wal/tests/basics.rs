mod common;

use common::*;
use wal::{Wal, WalError, WalOptions};

#[test]
fn fresh_log_is_empty_with_next_index_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, report) = open(dir.path());
    assert_eq!((wal.first_index(), wal.last_index(), wal.durable_index()), (1, 0, 0));
    assert!(wal.is_empty());
    assert_eq!(report.segments, 1);
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(wal.term_at(0), None);
}

#[test]
fn append_wait_reopen_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 300, 2);
    assert_eq!(wal.last_index(), 300);
    assert_eq!(wal.durable_index(), 0, "append alone makes nothing durable");
    verify(&wal, |_| 2);
    assert_eq!(wal.wait().expect("wait"), 300);
    verify(&wal, |_| 2);
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!((report.first_index, report.last_index), (1, 300));
    assert!(report.segments > 3, "small segments rotate");
    verify(&wal, |_| 2);
}

#[test]
fn group_commit_batches_appends_made_while_a_sync_is_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    wal.append(1, 1, 0, b"first").expect("append");
    assert!(wal.submit().expect("submit"));
    assert!(wal.in_flight());
    for index in 2..=100 {
        wal.append(index, 1, 0, b"later").expect("append");
    }
    assert!(!wal.submit().expect("submit"), "one batch in flight at a time");
    let mut polls = 0;
    while wal.poll().expect("poll") < 100 {
        polls += 1;
        std::thread::yield_now();
    }
    assert!(polls > 0);
    assert_eq!(wal.durable_index(), 100);
    assert!(!wal.in_flight());
}

static SYNCS_OBSERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static RECORDS_OBSERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn observe_sync(elapsed: std::time::Duration, records: u64) {
    assert!(elapsed > std::time::Duration::ZERO, "a write + fdatasync takes time");
    SYNCS_OBSERVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    RECORDS_OBSERVED.fetch_add(records, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn the_sync_observer_is_told_of_every_durable_batch_and_its_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    wal.set_sync_observer(observe_sync);
    wal.append(1, 1, 0, b"first").expect("append");
    assert!(wal.submit().expect("submit"));
    for index in 2..=10 {
        wal.append(index, 1, 0, b"later").expect("append");
    }
    assert_eq!(wal.wait().expect("wait"), 10);
    let syncs = SYNCS_OBSERVED.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&syncs), "one sync for the first record, at most one for the group: {syncs}");
    assert_eq!(RECORDS_OBSERVED.load(std::sync::atomic::Ordering::SeqCst), 10, "every record, once");
}

#[test]
fn append_rejects_broken_invariants_with_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    wal.append(1, 5, 0, b"x").expect("append");
    assert!(matches!(wal.append(3, 5, 0, b"x"), Err(WalError::IndexNotNext { expected: 2, got: 3 })));
    assert!(matches!(wal.append(2, 4, 0, b"x"), Err(WalError::TermRegressed { last: 5, got: 4 })));
    assert!(matches!(wal.append(2, 5, 0, &[0u8; 1025]), Err(WalError::PayloadTooLarge { bytes: 1025, max: 1024 })));
    assert_eq!(wal.last_index(), 1);
}

#[test]
fn pending_limit_is_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = WalOptions { pending_bytes_max: 2200, ..small_options() };
    let (mut wal, _) = Wal::open(dir.path(), options).expect("open");
    let payload = [7u8; 1000];
    wal.append(1, 1, 0, &payload).expect("append");
    wal.append(2, 1, 0, &payload).expect("append");
    assert!(matches!(wal.append(3, 1, 0, &payload), Err(WalError::PendingFull { max: 2200 })));
    wal.wait().expect("wait");
    wal.append(3, 1, 0, &payload).expect("room after the write");
}

#[test]
fn invalid_options_and_second_open_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let too_small = WalOptions { segment_bytes: 512, ..small_options() };
    assert!(matches!(Wal::open(dir.path(), too_small), Err(WalError::InvalidOptions { .. })));
    let (_wal, _) = open(dir.path());
    assert!(Wal::open(dir.path(), small_options()).is_err(), "directory is locked");
}

/// Regression (found by `model.rs`, its shrunk case): `remove_prefix` deleted every segment file when
/// the newest segment existed only in memory (its file is made at its first submit), so a reopen found
/// no segment and restarted the log at index 1, forgetting entries that were durable.
#[test]
fn remove_prefix_keeps_the_newest_segment_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 29, 1);
    wal.submit().expect("submit");
    drop(wal);
    let (mut wal, _) = open(dir.path());
    assert_eq!(wal.last_index(), 29);
    append_range(&mut wal, 30, 30, 1);
    let durable = wal.durable_index();
    wal.remove_prefix(30).expect("remove prefix");
    drop(wal);
    let (wal, _) = open(dir.path());
    assert!(wal.last_index() >= durable, "durable entries up to {durable} survive, got {}", wal.last_index());
}
