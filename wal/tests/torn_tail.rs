//! The last record cut at every byte offset, with the unwritten rest left as zeros (what a
//! preallocated file shows) or as garbage: recovery must keep every earlier record, cut the
//! tail, report the bytes, and accept appends that survive another reopen.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;

/// Index 5 carries a 185-byte payload (see `payload_for`).
const RECORDS: u64 = 5;

struct Cut {
    last_start: usize,
    at: usize,
    end: usize,
    garbage: bool,
}

fn check_cut(dir: &std::path::Path, segment: &std::path::Path, cut: Cut) {
    let file = fs::OpenOptions::new().write(true).open(segment).expect("open");
    let filler: Vec<u8> = (cut.at..cut.end).map(|i| if cut.garbage { 0xA5 ^ i as u8 } else { 0 }).collect();
    file.write_all_at(&filler, cut.at as u64).expect("cut");
    drop(file);
    let image = fs::read(segment).expect("read");
    let torn_bytes = image[cut.last_start..].iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let (mut wal, report) = open(dir);
    assert_eq!(wal.last_index(), RECORDS - 1, "cut at {}", cut.at);
    assert_eq!(report.truncated_bytes as usize, torn_bytes, "cut at {}", cut.at);
    assert_eq!(report.truncated_segment.is_some(), torn_bytes > 0);
    verify(&wal, |_| 1);
    append_range(&mut wal, RECORDS, RECORDS + 1, 2);
    wal.wait().expect("wait");
    drop(wal);
    let (wal, report) = open(dir);
    assert_eq!(report.truncated_bytes, 0, "the cut tail was zeroed, not just skipped");
    verify(&wal, |index| if index < RECORDS { 1 } else { 2 });
}

#[test]
fn last_record_cut_at_every_byte_offset() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(pristine.path());
    append_range(&mut wal, 1, RECORDS, 1);
    wal.wait().expect("wait");
    drop(wal);
    let segment = segment_files(pristine.path()).pop().expect("one segment");
    let (starts, end) = record_layout(&segment);
    let last_start = *starts.last().expect("records");
    assert!(end - last_start > 100, "the last record has a payload worth cutting");
    let image = fs::read(&segment).expect("read");
    for garbage in [false, true] {
        for at in last_start..end {
            let dir = tempfile::tempdir().expect("tempdir");
            let copy = dir.path().join(segment.file_name().expect("name"));
            fs::write(&copy, &image).expect("copy");
            let cut = Cut { last_start, at, end, garbage };
            check_cut(dir.path(), &copy, cut);
        }
    }
}
