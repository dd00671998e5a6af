//! Single-bit flips across segment headers, record headers, payloads and zero tails. Each flip
//! must give `Corrupt` naming the right segment and offset, or, only inside the last record of
//! the last segment or its zero tail, a reported truncation; never silently wrong data.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use wal::{WalError, SEGMENT_HEADER_BYTES};

const RECORDS: u64 = 70;
const STRIDE_BYTES: usize = 1;

#[derive(Debug, PartialEq)]
enum Expected {
    Corrupt { offset: usize },
    Truncated { last_index: u64 },
}

fn expected_outcome(position: usize, starts: &[usize], end: usize, is_last: bool) -> Expected {
    if position < SEGMENT_HEADER_BYTES {
        return Expected::Corrupt { offset: 0 };
    }
    let record = starts.iter().rposition(|&start| start <= position);
    match (record, is_last) {
        (Some(r), true) if r + 1 == starts.len() && position < end => Expected::Truncated { last_index: RECORDS - 1 },
        (Some(_), true) if position >= end => Expected::Truncated { last_index: RECORDS },
        (Some(_), false) if position >= end => Expected::Corrupt { offset: end },
        (Some(r), _) => Expected::Corrupt { offset: starts[r] },
        (None, _) => unreachable!("records start right after the header"),
    }
}

fn check_flip(dir: &Path, segment: &Path, position: usize, expected: Expected) {
    let outcome = wal::Wal::open(dir, small_options());
    match (outcome, expected) {
        (Err(WalError::Corrupt { segment: named, offset, .. }), Expected::Corrupt { offset: want }) => {
            assert_eq!(named, segment, "flip at {position}");
            assert_eq!(offset as usize, want, "flip at {position} of {}", segment.display());
        }
        (Ok((wal, report)), Expected::Truncated { last_index }) => {
            assert_eq!(wal.last_index(), last_index, "flip at {position}");
            assert!(report.truncated_bytes > 0, "flip at {position} must be reported");
            verify(&wal, |_| 1);
        }
        (outcome, expected) => panic!(
            "flip at {position} of {}: expected {expected:?}, got {:?}",
            segment.display(),
            outcome.map(|(wal, report)| (wal.last_index(), report))
        ),
    }
}

#[test]
fn single_bit_flips_are_detected_or_cut_from_the_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = open(dir.path());
    append_range(&mut wal, 1, RECORDS, 1);
    wal.wait().expect("wait");
    drop(wal);
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 3, "flips cover sealed and last segments");
    let mut cases = 0;
    for (number, segment) in segments.iter().enumerate() {
        let is_last = number + 1 == segments.len();
        let image = fs::read(segment).expect("read");
        let (starts, end) = record_layout(segment);
        let file = fs::OpenOptions::new().write(true).open(segment).expect("open");
        let tail_positions = [end, end + 1, end + 200, image.len() - 1];
        let tail_positions = tail_positions.into_iter().filter(|&p| p < image.len());
        let positions = (0..end).step_by(STRIDE_BYTES).chain(tail_positions);
        for position in positions {
            let flipped = [image[position] ^ (1 << (position % 8))];
            // Rewrite in place: truncate-and-rewrite makes ext4 flush on close, which is slow.
            file.write_all_at(&flipped, position as u64).expect("flip");
            let expected = expected_outcome(position, &starts, end, is_last);
            check_flip(dir.path(), segment, position, expected);
            file.write_all_at(&image, 0).expect("restore");
            cases += 1;
        }
    }
    let (wal, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 0);
    verify(&wal, |_| 1);
    assert!(cases > 1000, "{cases} flips");
}
