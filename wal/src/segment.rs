//! Segment files: naming, atomic creation, and the recovery scan of one segment's bytes.

use crate::error::WalError;
use crate::format::{
    decode_record, decode_record_header, encode_segment_header, read_u64, record_bytes, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::terms::TermRuns;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SEGMENT_SUFFIX: &str = ".wal";
pub const TEMP_SUFFIX: &str = ".wal.tmp";
const SEGMENT_NAME_DIGITS: usize = 20;
const ZERO_CHUNK_BYTES: usize = 1024 * 1024;

pub fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    let all_digits = digits.bytes().all(|byte| byte.is_ascii_digit());
    if digits.len() != SEGMENT_NAME_DIGITS || !all_digits {
        return None;
    }
    digits.parse().ok()
}

/// Creates a preallocated segment under a temporary name and renames it into place once its
/// header and size are durable, so a crash never leaves a half-made segment under a real name.
pub fn create_segment_file(dir: &Path, first_index: u64, segment_bytes: u64) -> Result<File, WalError> {
    let path = segment_path(dir, first_index);
    let temp = path.with_extension("wal.tmp");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|error| WalError::io("create segment", &temp, error))?;
    let prepared = preallocate(&file, &temp, segment_bytes).and_then(|()| {
        let header = encode_segment_header(first_index);
        file.write_all_at(&header, 0)
            .and_then(|()| file.sync_all())
            .map_err(|error| WalError::io("write segment header", &temp, error))
    });
    if let Err(error) = prepared {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    fs::rename(&temp, &path).map_err(|error| WalError::io("rename segment", &path, error))?;
    sync_dir(dir)?;
    Ok(file)
}

fn preallocate(file: &File, path: &Path, segment_bytes: u64) -> Result<(), WalError> {
    let length = libc::off_t::try_from(segment_bytes).expect("segment_bytes checked at open");
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(WalError::io("fallocate segment", path, error));
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(|error| WalError::io("fsync directory", dir, error))
}

/// Overwrites `[from, to)` with zeros and makes it durable: truncation keeps the preallocated
/// extent, and zeros are what recovery reads as "nothing written here".
pub fn zero_range(file: &File, path: &Path, from: usize, to: usize) -> Result<(), WalError> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(to.saturating_sub(from))];
    let mut offset = from;
    while offset < to {
        let length = (to - offset).min(zeros.len());
        file.write_all_at(&zeros[..length], offset as u64)
            .map_err(|error| WalError::io("zero segment tail", path, error))?;
        offset += length;
    }
    file.sync_data().map_err(|error| WalError::io("fdatasync segment", path, error))
}

/// What a scan found: record offsets, where the records end, and where nonzero bytes end.
#[derive(Debug)]
pub struct Scan {
    pub offsets: Vec<u32>,
    pub end_offset: usize,
    /// Past the last nonzero byte at or after `end_offset`; equals it when the tail is clean.
    pub garbage_end: usize,
}

#[derive(Debug)]
pub struct ScanFault {
    pub offset: usize,
    pub reason: String,
}

/// Verifies every record of one segment. Stops at the first invalid frame; that frame is a torn
/// tail only if no valid record header follows it anywhere later in the segment.
pub fn scan_segment(bytes: &[u8], first_index: u64, terms: &mut TermRuns) -> Result<Scan, ScanFault> {
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut next_index = first_index;
    let fault = loop {
        let (header, _) = match decode_record(&bytes[offset..]) {
            Ok(record) => record,
            Err(fault) => break fault,
        };
        let reason = if header.index != next_index {
            format!("record index {} where {next_index} expected", header.index)
        } else if header.term < terms.last_term() {
            format!("term {} below previous {}", header.term, terms.last_term())
        } else {
            String::new()
        };
        if !reason.is_empty() {
            return Err(ScanFault { offset, reason });
        }
        terms.push(header.index, header.term);
        offsets.push(u32::try_from(offset).expect("segments are below 4 GiB"));
        offset += record_bytes(header.payload_bytes as usize);
        next_index += 1;
    };
    let garbage_end = nonzero_end(bytes, offset);
    if garbage_end > offset {
        if let Some(later) = find_record_header(&bytes[..garbage_end], offset + 1, next_index) {
            let reason = format!("{fault:?} record followed by a valid record at byte {later}");
            return Err(ScanFault { offset, reason });
        }
    }
    Ok(Scan { offsets, end_offset: offset, garbage_end })
}

/// Index past the last nonzero byte in `bytes[from..]`, or `from` if all are zero.
fn nonzero_end(bytes: &[u8], from: usize) -> usize {
    const CHUNK_BYTES: usize = 4096;
    let mut end = bytes.len();
    while end > from {
        let start = end.saturating_sub(CHUNK_BYTES).max(from);
        if let Some(position) = bytes[start..end].iter().rposition(|&byte| byte != 0) {
            return start + position + 1;
        }
        end = start;
    }
    from
}

/// Finds a valid record header at any byte offset from `from` whose index could follow
/// `next_index`; cheap index filter first, checksum only on candidates.
fn find_record_header(bytes: &[u8], from: usize, next_index: u64) -> Option<usize> {
    let records_max = (bytes.len() / RECORD_HEADER_BYTES) as u64 + 1;
    let last_start = bytes.len().checked_sub(RECORD_HEADER_BYTES)?;
    (from..=last_start).find(|&position| {
        let index = read_u64(bytes, position + 16);
        index.wrapping_sub(next_index) < records_max && decode_record_header(&bytes[position..]).is_ok()
    })
}
