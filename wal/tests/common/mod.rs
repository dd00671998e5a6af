//! Shared helpers for the conformance suite: deterministic payloads whose content proves which
//! index and term they were written for, and a full-log verifier.
#![allow(dead_code)]

use std::path::Path;
use wal::{Wal, WalOptions};

/// Small segments so tests cross segment boundaries often.
pub fn small_options() -> WalOptions {
    WalOptions { segment_bytes: 4096, payload_bytes_max: 1024, pending_bytes_max: 1 << 20 }
}

/// Payload for (index, term): length varies with index, bytes derive from both.
pub fn payload_for(index: u64, term: u64) -> Vec<u8> {
    let length = (index.wrapping_mul(37) % 200) as usize;
    (0..length).map(|i| (index.wrapping_mul(31) ^ term.wrapping_mul(7) ^ i as u64) as u8).collect()
}

pub fn kind_for(index: u64) -> u8 {
    (index % 251) as u8
}

pub fn append_range(wal: &mut Wal, from: u64, to: u64, term: u64) {
    for index in from..=to {
        wal.append(index, term, kind_for(index), &payload_for(index, term)).expect("append");
    }
}

/// Every record from first to last has the payload and kind derived from its index and term.
pub fn verify(wal: &Wal, term_of: impl Fn(u64) -> u64) {
    let mut expected = wal.first_index();
    for record in wal.reader(wal.first_index()).expect("reader") {
        let record = record.expect("record verifies");
        assert_eq!(record.index, expected);
        let term = term_of(record.index);
        assert_eq!(record.term, term, "term of {}", record.index);
        assert_eq!(record.kind, kind_for(record.index));
        assert_eq!(record.payload, payload_for(record.index, term).as_slice());
        assert_eq!(wal.term_at(record.index), Some(term));
        expected += 1;
    }
    assert_eq!(expected, wal.last_index() + 1);
}

pub fn open(dir: &Path) -> (Wal, wal::RecoveryReport) {
    Wal::open(dir, small_options()).expect("open")
}

/// Segment files in index order.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

/// Start offsets of every record in a segment file plus the end of the last one, parsed with
/// the crate's own decoder from a file the caller has already verified through `Wal`.
pub fn record_layout(path: &Path) -> (Vec<usize>, usize) {
    let bytes = std::fs::read(path).expect("read segment");
    let mut starts = Vec::new();
    let mut offset = wal::SEGMENT_HEADER_BYTES;
    while let Ok((header, _)) = wal::layout::decode_record(&bytes[offset..]) {
        starts.push(offset);
        offset += wal::RECORD_HEADER_BYTES + header.payload_bytes as usize;
    }
    (starts, offset)
}
