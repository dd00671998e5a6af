//! The append-only log of a partition: the engine's write-ahead log and the Raft log.
//!
//! Records (index, term, kind, payload) live in preallocated segment files named by their first
//! index. Invariants: indexes are strictly consecutive across the whole log and terms never
//! drop; every record is framed with xxh3 checksums over header and payload; at most one
//! write + fdatasync pair is in flight and batches complete in order, so `durable_index` only
//! grows and covers a prefix; a batch never straddles segments and a segment is sealed (synced)
//! before its successor is written. Recovery verifies every byte: a torn tail of the last
//! segment is cut back to the last whole record and reported; anything else that does not verify
//! is `WalError::Corrupt` naming the segment and byte offset. Data is never dropped silently.

mod error;
mod format;
mod reader;
mod ring;
mod segment;
mod terms;
mod wal;

pub use error::WalError;
pub use format::{RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES};
pub use reader::{Record, WalReader};
pub use wal::{RecoveryReport, SyncObserver, Wal, WalOptions};
pub use wal::{PENDING_BYTES_MAX_DEFAULT, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX};

/// Layout helpers for tests and inspection tools (e.g. `tools` segment dumps).
pub mod layout {
    pub use crate::format::{decode_record, decode_record_header, decode_segment_header, FrameFault, RecordHeader};
    pub use crate::segment::{parse_segment_name, segment_path};
}
