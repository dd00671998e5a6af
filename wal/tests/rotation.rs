//! Segment boundaries: exact fills, reads across segments, truncation across a boundary, and
//! prefix removal.

mod common;

use common::*;
use std::path::Path;
use wal::{layout, Wal, WalError, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Four records of this payload fill a 4096-byte segment to the last byte.
const FILLING_PAYLOAD_BYTES: usize = (4096 - SEGMENT_HEADER_BYTES) / 4 - RECORD_HEADER_BYTES;

fn first_indexes(dir: &Path) -> Vec<u64> {
    segment_files(dir)
        .iter()
        .map(|path| {
            let name = path.file_name().expect("name").to_string_lossy().into_owned();
            layout::parse_segment_name(&name).expect("segment name")
        })
        .collect()
}

#[test]
fn records_exactly_filling_a_segment_rotate_on_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    let payload = vec![0x5Au8; FILLING_PAYLOAD_BYTES];
    for index in 1..=4 {
        wal.append(index, 1, 0, &payload).expect("append");
    }
    wal.wait().expect("wait");
    assert_eq!(first_indexes(dir.path()), [1], "four records fit exactly");
    let (_, end) = record_layout(&segment_files(dir.path())[0]);
    assert_eq!(end, 4096);
    wal.append(5, 1, 0, &payload).expect("append");
    wal.wait().expect("wait");
    assert_eq!(first_indexes(dir.path()), [1, 5]);
    assert_eq!(segment_files(dir.path())[1].file_name().expect("name"), "00000000000000000005.wal");
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!((report.segments, report.last_index), (2, 5));
    let read: Vec<u64> = wal.reader(3).expect("reader").map(|r| r.expect("ok").index).collect();
    assert_eq!(read, [3, 4, 5]);
}

#[test]
fn reads_cross_segments_before_and_after_durability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 200, 3);
    wal.submit().expect("submit");
    verify(&wal, |_| 3); // mixes written, in-flight and pending batches
    wal.wait().expect("wait");
    assert!(first_indexes(dir.path()).len() > 5);
    for from in [1, 57, 200, 201] {
        let count = wal.reader(from).expect("reader").count() as u64;
        assert_eq!(count, 201 - from);
    }
    assert!(matches!(wal.reader(202), Err(WalError::IndexOutOfRange { .. })));
}

#[test]
fn truncate_suffix_across_a_segment_boundary_then_append_a_new_term() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 120, 1);
    wal.wait().expect("wait");
    let before = first_indexes(dir.path());
    let cut = before[1] + 1; // inside the second segment: later segments must go
    wal.truncate_suffix(cut).expect("truncate");
    assert_eq!((wal.last_index(), wal.durable_index()), (cut - 1, cut - 1));
    assert_eq!(first_indexes(dir.path()), before[..2]);
    assert_eq!(wal.term_at(cut), None);
    append_range(&mut wal, cut, 150, 2);
    wal.wait().expect("wait");
    drop(wal);
    let (mut wal, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 0);
    let term_of = |index| if index < cut { 1 } else { 2 };
    verify(&wal, term_of);
    let boundary = first_indexes(dir.path())[2];
    wal.truncate_suffix(boundary).expect("truncate at a segment's first index");
    assert_eq!(wal.last_index(), boundary - 1);
    drop(wal);
    let (wal, _) = open(dir.path());
    assert_eq!(wal.last_index(), boundary - 1);
    verify(&wal, term_of);
}

#[test]
fn truncate_to_first_index_empties_the_log_but_keeps_the_next_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 50, 1);
    wal.truncate_suffix(1).expect("truncate all");
    assert!(wal.is_empty());
    drop(wal);
    let (mut wal, _) = open(dir.path());
    assert_eq!((wal.first_index(), wal.last_index()), (1, 0));
    append_range(&mut wal, 1, 3, 4);
    wal.wait().expect("wait");
    verify(&wal, |_| 4);
}

#[test]
fn remove_prefix_deletes_only_whole_durable_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 150, 1);
    wal.remove_prefix(100).expect("nothing durable yet");
    assert_eq!(wal.first_index(), 1, "undurable segments stay");
    wal.wait().expect("wait");
    let before = first_indexes(dir.path());
    let target = before[3] + 1;
    wal.remove_prefix(target).expect("remove");
    assert_eq!(first_indexes(dir.path()), before[3..], "segment holding target is kept");
    assert_eq!(wal.first_index(), before[3]);
    assert_eq!(wal.term_at(before[3] - 1), None);
    assert!(matches!(wal.reader(1), Err(WalError::IndexOutOfRange { .. })));
    drop(wal);
    let (mut wal, _) = open(dir.path());
    assert_eq!((wal.first_index(), wal.last_index()), (before[3], 150));
    verify(&wal, |_| 1);
    wal.remove_prefix(u64::MAX).expect("remove all but last");
    assert_eq!(first_indexes(dir.path()).len(), 1);
    assert_eq!(wal.last_index(), 150);
    append_range(&mut wal, 151, 160, 1);
    wal.wait().expect("wait");
    verify(&wal, |_| 1);
}

#[test]
fn a_missing_middle_segment_is_a_gap_and_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, 100, 1);
    wal.wait().expect("wait");
    drop(wal);
    let files = segment_files(dir.path());
    std::fs::remove_file(&files[1]).expect("remove");
    match Wal::open(dir.path(), small_options()) {
        Err(WalError::Corrupt { segment, offset: 0, .. }) => assert_eq!(segment, files[2]),
        other => panic!("expected a gap error, got {:?}", other.map(|(_, report)| report)),
    }
}
