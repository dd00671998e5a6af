//! Byte layout of segment headers and records. Pure functions over byte slices, so recovery
//! logic and the tests can exercise every byte without touching a file.
//!
//! Segment header (`SEGMENT_HEADER_BYTES` = 32, little endian):
//! `0..8` magic, `8..12` version, `12..16` zero, `16..24` first index, `24..32` xxh3 of `0..24`.
//!
//! Record (`RECORD_HEADER_BYTES` = 40 + payload, little endian, no padding):
//! `0..8` header checksum = xxh3 of bytes `8..40`, `8..16` payload checksum = xxh3 of payload,
//! `16..24` index, `24..32` term, `32..36` payload length, `36` kind, `37..40` zero.
//! The header checksum covers the payload checksum, so one check proves the whole frame.

use xxhash_rust::xxh3::xxh3_64;

pub const SEGMENT_MAGIC: [u8; 8] = *b"WALSEG\r\n";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
pub const RECORD_HEADER_BYTES: usize = 40;
/// Largest payload any record may carry, whatever the options say: recovery uses it to tell a
/// plausible length from garbage.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub payload_checksum: u64,
    pub index: u64,
    pub term: u64,
    pub payload_bytes: u32,
    pub kind: u8,
}

/// Why the bytes at an offset are not a whole, valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFault {
    /// Fewer bytes left than a header, or than the header's payload length.
    Truncated,
    HeaderChecksum,
    PayloadChecksum,
    /// Checksum is right but a field is impossible (length too big, reserved bytes set).
    BadField,
}

pub fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
    bytes[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    bytes[16..24].copy_from_slice(&first_index.to_le_bytes());
    let checksum = xxh3_64(&bytes[0..24]);
    bytes[24..32].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Returns the first index recorded in a segment header, or a description of what is wrong.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, &'static str> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err("file shorter than a segment header");
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    if read_u64(bytes, 24) != xxh3_64(&bytes[0..24]) {
        return Err("segment header checksum mismatch");
    }
    if read_u32(bytes, 8) != SEGMENT_VERSION {
        return Err("unsupported segment version");
    }
    Ok(read_u64(bytes, 16))
}

/// Appends one framed record to `out`.
pub fn encode_record(out: &mut Vec<u8>, index: u64, term: u64, kind: u8, payload: &[u8]) {
    let payload_bytes = u32::try_from(payload.len()).expect("payload length checked by caller");
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[8..16].copy_from_slice(&xxh3_64(payload).to_le_bytes());
    header[16..24].copy_from_slice(&index.to_le_bytes());
    header[24..32].copy_from_slice(&term.to_le_bytes());
    header[32..36].copy_from_slice(&payload_bytes.to_le_bytes());
    header[36] = kind;
    let header_checksum = xxh3_64(&header[8..]);
    header[0..8].copy_from_slice(&header_checksum.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

pub fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// Checks the header at the start of `bytes` (checksum and field sanity) without the payload.
pub fn decode_record_header(bytes: &[u8]) -> Result<RecordHeader, FrameFault> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(FrameFault::Truncated);
    }
    if read_u64(bytes, 0) != xxh3_64(&bytes[8..RECORD_HEADER_BYTES]) {
        return Err(FrameFault::HeaderChecksum);
    }
    let header = RecordHeader {
        payload_checksum: read_u64(bytes, 8),
        index: read_u64(bytes, 16),
        term: read_u64(bytes, 24),
        payload_bytes: read_u32(bytes, 32),
        kind: bytes[36],
    };
    if header.payload_bytes as usize > RECORD_PAYLOAD_BYTES_MAX || bytes[37..40] != [0, 0, 0] {
        return Err(FrameFault::BadField);
    }
    Ok(header)
}

/// Fully verifies the record at the start of `bytes`; returns its header and payload.
pub fn decode_record(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), FrameFault> {
    let header = decode_record_header(bytes)?;
    let end = record_bytes(header.payload_bytes as usize);
    if bytes.len() < end {
        return Err(FrameFault::Truncated);
    }
    let payload = &bytes[RECORD_HEADER_BYTES..end];
    if xxh3_64(payload) != header.payload_checksum {
        return Err(FrameFault::PayloadChecksum);
    }
    Ok((header, payload))
}

pub fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let field: [u8; 8] = bytes[at..at + 8].try_into().expect("slice is 8 bytes");
    u64::from_le_bytes(field)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let field: [u8; 4] = bytes[at..at + 4].try_into().expect("slice is 4 bytes");
    u32::from_le_bytes(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_every_bit_flip() {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 7, 3, 9, b"hello");
        let (header, payload) = decode_record(&bytes).expect("fresh record decodes");
        assert_eq!((header.index, header.term, header.kind), (7, 3, 9));
        assert_eq!(payload, b"hello");
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&flipped).is_err(), "bit {bit} flip went unnoticed");
        }
    }

    #[test]
    fn segment_header_round_trips() {
        let bytes = encode_segment_header(42);
        assert_eq!(decode_segment_header(&bytes), Ok(42));
        let mut bad = bytes;
        bad[17] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
    }
}
