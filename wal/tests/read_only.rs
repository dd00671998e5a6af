//! `Wal::open_read_only`, the audit tools' way in: it reads what recovery would keep and changes no
//! byte, name or file on disk, whatever it finds (torn tail, leftover temporaries, an empty folder),
//! refuses every write, and refuses a log that a writer has open.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use wal::{Wal, WalError};

/// Every file name under `dir` with its content.
fn snapshot_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&path).expect("read"))
        })
        .collect()
}

fn written_log(records: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, records, 1);
    wal.wait().expect("wait");
    dir
}

#[test]
fn a_torn_tail_at_every_offset_is_skipped_and_left_on_disk() {
    let pristine = written_log(5);
    let segment = segment_files(pristine.path()).pop().expect("segment");
    let (starts, end) = record_layout(&segment);
    let last_start = *starts.last().expect("records");
    let image = fs::read(&segment).expect("read");
    for at in last_start..end {
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join(segment.file_name().unwrap());
        fs::write(&copy, &image).expect("copy");
        let garbage: Vec<u8> = (at..end).map(|i| 0xA5 ^ i as u8).collect();
        fs::OpenOptions::new().write(true).open(&copy).unwrap().write_all_at(&garbage, at as u64).unwrap();
        let before = snapshot_files(dir.path());
        let (wal, report) = Wal::open_read_only(dir.path(), small_options()).expect("open read-only");
        assert_eq!(wal.last_index(), 4, "cut at {at}: the torn record is not served");
        assert!(report.truncated_bytes > 0, "cut at {at}: the torn tail is reported");
        verify(&wal, |_| 1);
        drop(wal);
        assert_eq!(snapshot_files(dir.path()), before, "cut at {at}: nothing on disk changed");
    }
}

#[test]
fn every_write_is_refused() {
    let dir = written_log(20);
    let (mut wal, _) = Wal::open_read_only(dir.path(), small_options()).expect("open read-only");
    assert!(wal.is_read_only());
    let last = wal.last_index();
    let refused =
        |result: Result<(), WalError>| assert!(matches!(result, Err(WalError::ReadOnly { .. })), "{result:?}");
    refused(wal.append(last + 1, 1, kind_for(last + 1), &payload_for(last + 1, 1)));
    refused(wal.submit().map(|_| ()));
    refused(wal.truncate_suffix(last));
    refused(wal.remove_prefix(last));
    refused(wal.reset(last + 1));
    assert_eq!(wal.last_index(), last, "a refused write changes nothing in memory either");
    verify(&wal, |_| 1);
}

#[test]
fn a_writer_excludes_readers_and_readers_share() {
    let dir = written_log(3);
    let (writer, _) = open(dir.path());
    assert!(Wal::open_read_only(dir.path(), small_options()).is_err(), "a running writer's log is refused");
    drop(writer);
    let (first, _) = Wal::open_read_only(dir.path(), small_options()).expect("first reader");
    let (second, _) = Wal::open_read_only(dir.path(), small_options()).expect("second reader");
    assert!(Wal::open(dir.path(), small_options()).is_err(), "no writer while readers hold the log");
    drop((first, second));
    open(dir.path());
}

#[test]
fn nothing_is_created_or_removed() {
    let parent = tempfile::tempdir().expect("tempdir");
    let missing = parent.path().join("missing");
    assert!(Wal::open_read_only(&missing, small_options()).is_err());
    assert!(!missing.exists(), "a missing folder is not created");

    let empty = parent.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let (wal, report) = Wal::open_read_only(&empty, small_options()).expect("an empty folder is an empty log");
    assert!(wal.is_empty());
    assert_eq!(report.segments, 1);
    drop(wal);
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "no segment or lock file created");

    let dir = written_log(3);
    fs::write(dir.path().join("00000000000000000099.wal.tmp"), b"half-made segment").unwrap();
    let before = snapshot_files(dir.path());
    let (wal, report) = Wal::open_read_only(dir.path(), small_options()).expect("open read-only");
    assert_eq!(report.temp_files_removed, 0);
    verify(&wal, |_| 1);
    drop(wal);
    assert_eq!(snapshot_files(dir.path()), before, "the leftover temporary stays");
}
