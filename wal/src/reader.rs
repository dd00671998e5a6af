//! Iterating records. Written bytes come straight from the segment mmap; records not yet
//! written come from the writer's buffers, so a leader can ship entries before they are
//! durable. The reader borrows the `Wal`, so nothing can change underneath it.

use crate::error::WalError;
use crate::format::decode_record;
use crate::wal::Wal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub payload: &'a [u8],
}

pub struct WalReader<'a> {
    wal: &'a Wal,
    next_index: u64,
}

impl<'a> WalReader<'a> {
    pub(crate) fn new(wal: &'a Wal, next_index: u64) -> WalReader<'a> {
        WalReader { wal, next_index }
    }
}

impl<'a> Iterator for WalReader<'a> {
    type Item = Result<Record<'a>, WalError>;

    /// Re-verifies checksums on every read: pages of old segments can rot after recovery.
    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next_index;
        if index > self.wal.last_index() {
            return None;
        }
        self.next_index += 1;
        let bytes = self.wal.record_bytes_at(index);
        let reason = match decode_record(bytes) {
            Ok((header, payload)) if header.index == index => {
                return Some(Ok(Record { index, term: header.term, kind: header.kind, payload }))
            }
            Ok((header, _)) => format!("read of index {index} found index {}", header.index),
            Err(fault) => format!("read of index {index} found {fault:?}"),
        };
        let (segment, offset) = self.wal.locate(index);
        Some(Err(WalError::Corrupt { segment, offset, reason }))
    }
}
