mod common;

use common::*;

#[test]
fn reset_restarts_the_log_at_any_index_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 200, 3);
    wal.wait().expect("wait");
    assert!(segment_files(dir.path()).len() > 1, "small segments rotate");
    // Records still pending when reset is called are dropped too.
    append_range(&mut wal, 201, 210, 3);
    wal.reset(1000).expect("reset");
    assert_eq!((wal.first_index(), wal.last_index(), wal.durable_index()), (1000, 999, 999));
    assert!(wal.is_empty());
    assert_eq!(wal.term_at(200), None);
    assert_eq!(segment_files(dir.path()).len(), 1);
    // A lower term than before is fine: the old log is gone.
    append_range(&mut wal, 1000, 1004, 1);
    wal.wait().expect("wait");
    verify(&wal, |_| 1);
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!((report.first_index, report.last_index), (1000, 1004));
    verify(&wal, |_| 1);
}

#[test]
fn reset_of_an_empty_log_survives_reopen_without_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    wal.reset(42).expect("reset");
    assert!(wal.append(41, 1, 0, b"x").is_err(), "next index is 42");
    drop(wal);
    let (mut wal, report) = open(dir.path());
    assert_eq!((report.first_index, report.last_index), (42, 41));
    wal.append(42, 1, kind_for(42), &payload_for(42, 1)).expect("append at the reset index");
    wal.wait().expect("wait");
    verify(&wal, |_| 1);
}

#[test]
fn reset_refuses_index_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    assert!(wal.reset(0).is_err());
    assert_eq!(wal.first_index(), 1);
}
