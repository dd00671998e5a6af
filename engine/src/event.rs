//! Events and their binary encoding: what the partition state machine writes to the log and replays.
//!
//! One log record holds one *event batch*: every event one partition produced for one batch of
//! commands. Layout (little-endian, fixed):
//!
//! ```text
//! batch header, 32 bytes:
//!   0..4   partition        u32
//!   4..6   format_version   u16   (EVENT_BATCH_FORMAT_VERSION)
//!   6..8   flags            u16   (none defined: must be 0)
//!   8..12  event_count      u32   (>= 1)
//!   12..16 reserved         u32   (0)
//!   16..24 first_seq        u64   (>= 1; event i has seq first_seq + i)
//!   24..32 reserved         u64   (0)
//! then event_count events of 120 bytes:
//!   0      kind             u8    (EventKind)
//!   1      flags            u8    (none defined: must be 0)
//!   2..4   code             u16   (ResultCode; Ok for created/posted, a rejection otherwise)
//!   4..8   reserved         u32   (0)
//!   8..16  seq              u64
//!   16..24 timestamp_ns     u64   (strictly increasing within the partition)
//!   24..88 body             64 B  (CreateAccount + 32 zero bytes, or Transfer)
//!   88..96   debit_balance_after   i64 (TransferPosted; otherwise 0)
//!   96..104  credit_balance_after  i64 (TransferPosted; otherwise 0)
//!   104..112 debit_prev_seq        u64 (TransferPosted: the debit account's last_seq before it; else 0)
//!   112..120 credit_prev_seq       u64 (TransferPosted: same for the credit account; otherwise 0)
//! ```
//!
//! The two `prev_seq` fields chain each account's events backwards through the log (the head is
//! `Account::last_seq`), so an account's history is read by following them, with no secondary index.
//!
//! The log's own record framing carries the checksum; this decoder still validates every field it can
//! (sizes, kinds, codes, zero padding, consecutive seqs, increasing timestamps) so that a bug or a
//! corruption that slipped past a checksum is a typed error, never a panic and never a wrong balance.
//! [`EventBatchView::new`] validates the whole batch before anything is applied, so a bad batch is
//! refused as a unit.

use net::types::{CreateAccount, ResultCode, Transfer};
use thiserror::Error;

pub const EVENT_BATCH_HEADER_BYTES: usize = 32;
pub const EVENT_BYTES: usize = 120;
/// Version written. 2 adds the `id_from_future` rule (`net::types::TRANSFER_ID_FUTURE_MS_MAX`): replay
/// judges transfer ids against their event's timestamp only in batches of version 2 or later, since a
/// version-1 log may hold posted transfers with ids far ahead of the clock.
pub const EVENT_BATCH_FORMAT_VERSION: u16 = 2;
/// Oldest version still read.
pub const EVENT_BATCH_FORMAT_VERSION_MIN: u16 = 1;
/// First version whose transfers were decided with the `id_from_future` rule.
pub const FUTURE_ID_RULE_FORMAT_VERSION: u16 = 2;
const EVENT_BODY_OFFSET: usize = 24;
const EVENT_DEBIT_BALANCE_OFFSET: usize = 88;
const EVENT_CREDIT_BALANCE_OFFSET: usize = 96;
const EVENT_DEBIT_PREV_SEQ_OFFSET: usize = 104;
const EVENT_CREDIT_PREV_SEQ_OFFSET: usize = 112;
/// An event buffer made with [`EventBuffer::new`] reserves room for this many events: one full client
/// batch, so a typical batch never reallocates.
pub const EVENT_BUFFER_PREALLOCATED_EVENTS: usize = 8190;

/// Stable numeric event kinds: they are in the log.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    AccountCreated = 1,
    AccountRejected = 2,
    TransferPosted = 3,
    TransferRejected = 4,
}

impl EventKind {
    pub fn from_u8(value: u8) -> Option<EventKind> {
        match value {
            1 => Some(EventKind::AccountCreated),
            2 => Some(EventKind::AccountRejected),
            3 => Some(EventKind::TransferPosted),
            4 => Some(EventKind::TransferRejected),
            _ => None,
        }
    }
}

/// Whether `code` is a possible outcome for an event of `kind`. The decoder refuses anything else, so
/// the apply path can trust that e.g. a rejected transfer never carries `Ok`.
pub fn code_valid_for_kind(kind: EventKind, code: ResultCode) -> bool {
    use ResultCode::*;
    match kind {
        EventKind::AccountCreated | EventKind::TransferPosted => code == Ok,
        EventKind::AccountRejected => {
            matches!(code, Exists | ExistsWithDifferentFields | ReservedId | InvalidFlags | InvalidLedger)
        }
        EventKind::TransferRejected => matches!(
            code,
            ExistsWithDifferentFields
                | InsufficientFunds
                | DebitAccountNotFound
                | CreditAccountNotFound
                | LedgerMismatch
                | SameAccount
                | ZeroAmount
                | Overflow
                | IdExpired
                | IdFromFuture
                | CrossPartitionUnsupported
                | InvalidFlags
                | ReservedId
        ),
    }
}

/// One decided command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub timestamp_ns: u64,
    pub body: EventBody,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventBody {
    AccountCreated {
        account: CreateAccount,
    },
    AccountRejected {
        account: CreateAccount,
        code: ResultCode,
    },
    TransferPosted {
        transfer: Transfer,
        debit_balance_after: i64,
        credit_balance_after: i64,
        /// The debit account's `last_seq` before this event (its previous event), >= 1.
        debit_prev_seq: u64,
        /// The credit account's `last_seq` before this event, >= 1.
        credit_prev_seq: u64,
    },
    TransferRejected {
        transfer: Transfer,
        code: ResultCode,
    },
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self.body {
            EventBody::AccountCreated { .. } => EventKind::AccountCreated,
            EventBody::AccountRejected { .. } => EventKind::AccountRejected,
            EventBody::TransferPosted { .. } => EventKind::TransferPosted,
            EventBody::TransferRejected { .. } => EventKind::TransferRejected,
        }
    }

    pub fn code(&self) -> ResultCode {
        match self.body {
            EventBody::AccountCreated { .. } | EventBody::TransferPosted { .. } => ResultCode::Ok,
            EventBody::AccountRejected { code, .. } | EventBody::TransferRejected { code, .. } => code,
        }
    }

    /// Writes exactly `EVENT_BYTES` bytes, every byte (padding included) so the output is a pure
    /// function of the event.
    pub fn encode_into(&self, out: &mut [u8; EVENT_BYTES]) {
        let code = self.code();
        assert!(code_valid_for_kind(self.kind(), code), "event {:?} carries an impossible code", self);
        out[0] = self.kind() as u8;
        out[1] = 0;
        out[2..4].copy_from_slice(&(code as u16).to_le_bytes());
        out[4..8].fill(0);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        let body = &mut out[EVENT_BODY_OFFSET..EVENT_DEBIT_BALANCE_OFFSET];
        let tail: [u64; 4] = match self.body {
            EventBody::AccountCreated { account } | EventBody::AccountRejected { account, .. } => {
                account.encode_into(&mut body[..CreateAccount::WIRE_BYTES]);
                body[CreateAccount::WIRE_BYTES..].fill(0);
                [0; 4]
            }
            EventBody::TransferPosted {
                transfer,
                debit_balance_after,
                credit_balance_after,
                debit_prev_seq,
                credit_prev_seq,
            } => {
                assert!(
                    debit_prev_seq >= 1 && debit_prev_seq < self.seq,
                    "an account's previous event precedes this one"
                );
                assert!(
                    credit_prev_seq >= 1 && credit_prev_seq < self.seq,
                    "an account's previous event precedes this one"
                );
                transfer.encode_into(body);
                [debit_balance_after as u64, credit_balance_after as u64, debit_prev_seq, credit_prev_seq]
            }
            EventBody::TransferRejected { transfer, .. } => {
                transfer.encode_into(body);
                [0; 4]
            }
        };
        for (slot, value) in tail.iter().enumerate() {
            let offset = EVENT_DEBIT_BALANCE_OFFSET + slot * 8;
            out[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Decodes and validates one event in isolation (`index` only labels errors).
    pub fn decode(bytes: &[u8; EVENT_BYTES], index: u32) -> Result<Event, EventDecodeError> {
        let kind_byte = bytes[0];
        let kind = EventKind::from_u8(kind_byte).ok_or(EventDecodeError::UnknownKind { index, kind: kind_byte })?;
        let code_number = u16::from_le_bytes([bytes[2], bytes[3]]);
        let code =
            ResultCode::from_u16(code_number).ok_or(EventDecodeError::UnknownCode { index, code: code_number })?;
        if !code_valid_for_kind(kind, code) {
            return Err(EventDecodeError::CodeImpossibleForKind { index, kind, code });
        }
        if bytes[1] != 0 || bytes[4..8] != [0; 4] {
            return Err(EventDecodeError::EventReservedNotZero { index });
        }
        let seq = le_u64(bytes, 8);
        let timestamp_ns = le_u64(bytes, 16);
        let body = &bytes[EVENT_BODY_OFFSET..EVENT_DEBIT_BALANCE_OFFSET];
        let debit_balance_after = le_u64(bytes, EVENT_DEBIT_BALANCE_OFFSET) as i64;
        let credit_balance_after = le_u64(bytes, EVENT_CREDIT_BALANCE_OFFSET) as i64;
        let debit_prev_seq = le_u64(bytes, EVENT_DEBIT_PREV_SEQ_OFFSET);
        let credit_prev_seq = le_u64(bytes, EVENT_CREDIT_PREV_SEQ_OFFSET);
        if kind == EventKind::TransferPosted {
            for prev_seq in [debit_prev_seq, credit_prev_seq] {
                if prev_seq == 0 || prev_seq >= seq {
                    return Err(EventDecodeError::PrevSeqOutOfRange { index, prev_seq, seq });
                }
            }
        } else if bytes[EVENT_DEBIT_BALANCE_OFFSET..EVENT_BYTES].iter().any(|&byte| byte != 0) {
            return Err(EventDecodeError::EventReservedNotZero { index });
        }
        let body = match kind {
            EventKind::AccountCreated | EventKind::AccountRejected => {
                if body[CreateAccount::WIRE_BYTES..].iter().any(|&byte| byte != 0) {
                    return Err(EventDecodeError::EventReservedNotZero { index });
                }
                let account = CreateAccount::decode(body);
                if kind == EventKind::AccountCreated {
                    EventBody::AccountCreated { account }
                } else {
                    EventBody::AccountRejected { account, code }
                }
            }
            EventKind::TransferPosted => EventBody::TransferPosted {
                transfer: Transfer::decode(body),
                debit_balance_after,
                credit_balance_after,
                debit_prev_seq,
                credit_prev_seq,
            },
            EventKind::TransferRejected => EventBody::TransferRejected { transfer: Transfer::decode(body), code },
        };
        Ok(Event { seq, timestamp_ns, body })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum EventDecodeError {
    #[error("event batch is {len} bytes, shorter than its {EVENT_BATCH_HEADER_BYTES}-byte header")]
    TooShort { len: usize },
    #[error("event batch format version {version} is unknown to this build")]
    UnknownFormatVersion { version: u16 },
    #[error("event batch header has unknown flags {flags:#x}")]
    UnknownBatchFlags { flags: u16 },
    #[error("event batch header reserved bytes are not zero")]
    HeaderReservedNotZero,
    #[error("event batch holds no events")]
    Empty,
    #[error("event batch first_seq is 0; sequences start at 1")]
    FirstSeqZero,
    #[error("event batch of {event_count} events starting at seq {first_seq} overflows u64")]
    SeqOverflow { first_seq: u64, event_count: u32 },
    #[error("event batch of {event_count} events needs {expected_len} bytes, has {len}")]
    LengthMismatch { event_count: u32, expected_len: u64, len: usize },
    #[error("event {index}: unknown kind {kind}")]
    UnknownKind { index: u32, kind: u8 },
    #[error("event {index}: unknown result code {code}")]
    UnknownCode { index: u32, code: u16 },
    #[error("event {index}: code {code:?} is impossible for kind {kind:?}")]
    CodeImpossibleForKind { index: u32, kind: EventKind, code: ResultCode },
    #[error("event {index}: flags, reserved or padding bytes are not zero")]
    EventReservedNotZero { index: u32 },
    #[error("event {index}: previous seq {prev_seq} of a touched account is not in 1..{seq}")]
    PrevSeqOutOfRange { index: u32, prev_seq: u64, seq: u64 },
    #[error("event {index}: seq {seq}, expected {expected}")]
    SeqNotConsecutive { index: u32, seq: u64, expected: u64 },
    #[error("event {index}: timestamp {timestamp_ns} ns is not after the previous event's {previous_ns} ns")]
    TimestampNotIncreasing { index: u32, timestamp_ns: u64, previous_ns: u64 },
}

/// A validated, zero-copy view of one encoded event batch.
#[derive(Clone, Copy, Debug)]
pub struct EventBatchView<'a> {
    bytes: &'a [u8],
    partition: u32,
    format_version: u16,
    event_count: u32,
    first_seq: u64,
}

impl<'a> EventBatchView<'a> {
    /// Validates the header and every event; on success every accessor and the iterator are infallible.
    pub fn new(bytes: &'a [u8]) -> Result<Self, EventDecodeError> {
        if bytes.len() < EVENT_BATCH_HEADER_BYTES {
            return Err(EventDecodeError::TooShort { len: bytes.len() });
        }
        let partition = le_u32(bytes, 0);
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if !(EVENT_BATCH_FORMAT_VERSION_MIN..=EVENT_BATCH_FORMAT_VERSION).contains(&version) {
            return Err(EventDecodeError::UnknownFormatVersion { version });
        }
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        if flags != 0 {
            return Err(EventDecodeError::UnknownBatchFlags { flags });
        }
        let event_count = le_u32(bytes, 8);
        let first_seq = le_u64(bytes, 16);
        if le_u32(bytes, 12) != 0 || le_u64(bytes, 24) != 0 {
            return Err(EventDecodeError::HeaderReservedNotZero);
        }
        if event_count == 0 {
            return Err(EventDecodeError::Empty);
        }
        if first_seq == 0 {
            return Err(EventDecodeError::FirstSeqZero);
        }
        if first_seq.checked_add(event_count as u64 - 1).is_none() {
            return Err(EventDecodeError::SeqOverflow { first_seq, event_count });
        }
        // u64 arithmetic: u32::MAX * 104 + 32 cannot overflow it, and `len` always fits.
        let expected_len = EVENT_BATCH_HEADER_BYTES as u64 + event_count as u64 * EVENT_BYTES as u64;
        if bytes.len() as u64 != expected_len {
            return Err(EventDecodeError::LengthMismatch { event_count, expected_len, len: bytes.len() });
        }
        let view = EventBatchView { bytes, partition, format_version: version, event_count, first_seq };
        let mut previous_ns: Option<u64> = None;
        for index in 0..event_count {
            let event = Event::decode(view.event_bytes(index), index)?;
            let expected = first_seq + index as u64;
            if event.seq != expected {
                return Err(EventDecodeError::SeqNotConsecutive { index, seq: event.seq, expected });
            }
            if let Some(previous_ns) = previous_ns {
                if event.timestamp_ns <= previous_ns {
                    return Err(EventDecodeError::TimestampNotIncreasing {
                        index,
                        timestamp_ns: event.timestamp_ns,
                        previous_ns,
                    });
                }
            }
            previous_ns = Some(event.timestamp_ns);
        }
        Ok(view)
    }

    /// The batch's format version (see `EVENT_BATCH_FORMAT_VERSION`).
    pub fn format_version(&self) -> u16 {
        self.format_version
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    pub fn event_count(&self) -> u32 {
        self.event_count
    }

    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.event_count as u64 - 1
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Event `index` (< event_count).
    pub fn event(&self, index: u32) -> Event {
        assert!(index < self.event_count, "event index {index} out of {} events", self.event_count);
        Event::decode(self.event_bytes(index), index).expect("every event was validated in EventBatchView::new")
    }

    pub fn first_timestamp_ns(&self) -> u64 {
        self.event(0).timestamp_ns
    }

    pub fn last_timestamp_ns(&self) -> u64 {
        self.event(self.event_count - 1).timestamp_ns
    }

    pub fn iter(&self) -> impl Iterator<Item = Event> + 'a {
        let view = *self;
        (0..self.event_count).map(move |index| view.event(index))
    }

    fn event_bytes(&self, index: u32) -> &'a [u8; EVENT_BYTES] {
        let start = EVENT_BATCH_HEADER_BYTES + index as usize * EVENT_BYTES;
        self.bytes[start..start + EVENT_BYTES].try_into().expect("slice is exactly EVENT_BYTES long")
    }
}

/// A reusable writer for one event batch at a time. Room for a full client batch is reserved up front
/// and kept across batches, so appending an event does not allocate; a larger batch grows the buffer
/// once (amortised) and the room is then kept. The number of events per batch is bounded by the
/// caller's batch limit, not here.
#[derive(Clone, Debug)]
pub struct EventBuffer {
    bytes: Vec<u8>,
    started: bool,
    partition: u32,
    first_seq: u64,
    event_count: u32,
    last_timestamp_ns: u64,
}

impl Default for EventBuffer {
    fn default() -> Self {
        EventBuffer::new()
    }
}

impl EventBuffer {
    /// Reserves room for [`EVENT_BUFFER_PREALLOCATED_EVENTS`] events.
    pub fn new() -> Self {
        EventBuffer::with_capacity(EVENT_BUFFER_PREALLOCATED_EVENTS)
    }

    pub fn with_capacity(events: usize) -> Self {
        EventBuffer {
            bytes: Vec::with_capacity(EVENT_BATCH_HEADER_BYTES + events * EVENT_BYTES),
            started: false,
            partition: 0,
            first_seq: 0,
            event_count: 0,
            last_timestamp_ns: 0,
        }
    }

    /// Starts a new batch, discarding whatever the buffer held.
    pub fn begin(&mut self, partition: u32, first_seq: u64) {
        assert!(first_seq >= 1, "sequences start at 1");
        self.bytes.clear();
        self.bytes.resize(EVENT_BATCH_HEADER_BYTES, 0);
        self.bytes[0..4].copy_from_slice(&partition.to_le_bytes());
        self.bytes[4..6].copy_from_slice(&EVENT_BATCH_FORMAT_VERSION.to_le_bytes());
        self.bytes[16..24].copy_from_slice(&first_seq.to_le_bytes());
        self.started = true;
        self.partition = partition;
        self.first_seq = first_seq;
        self.event_count = 0;
        self.last_timestamp_ns = 0;
    }

    /// Forgets the current batch (keeps the allocation).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.started = false;
        self.event_count = 0;
    }

    pub fn is_started(&self) -> bool {
        self.started
    }

    pub fn partition(&self) -> Option<u32> {
        self.started.then_some(self.partition)
    }

    pub fn event_count(&self) -> u32 {
        self.event_count
    }

    /// No events (whether or not a batch is started): nothing to log.
    pub fn is_empty(&self) -> bool {
        self.event_count == 0
    }

    /// The seq the next pushed event must carry.
    pub fn next_seq(&self) -> u64 {
        assert!(self.started, "no batch started");
        self.first_seq + self.event_count as u64
    }

    pub fn push(&mut self, event: &Event) {
        assert!(self.started, "push before begin");
        assert!(self.event_count < u32::MAX, "a batch holds fewer than 2^32 events");
        assert_eq!(event.seq, self.next_seq(), "events of a batch carry consecutive seqs");
        assert!(
            self.event_count == 0 || event.timestamp_ns > self.last_timestamp_ns,
            "event timestamps strictly increase within a batch"
        );
        let mut encoded = [0u8; EVENT_BYTES];
        event.encode_into(&mut encoded);
        self.bytes.extend_from_slice(&encoded);
        self.event_count += 1;
        self.last_timestamp_ns = event.timestamp_ns;
        self.bytes[8..12].copy_from_slice(&self.event_count.to_le_bytes());
    }

    /// The encoded batch: a complete log record once at least one event was pushed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoded batch, ready to log. Panics when empty: an empty batch is never logged.
    pub fn finish(&self) -> &[u8] {
        assert!(self.started && self.event_count > 0, "an empty batch is never logged");
        &self.bytes
    }

    /// The batch as a view. Panics when empty: an empty batch is never logged (the caller checks
    /// `event_count()` first, e.g. after a batch made only of replayed retries).
    pub fn view(&self) -> EventBatchView<'_> {
        assert!(self.started && self.event_count > 0, "an empty batch has no view");
        EventBatchView::new(&self.bytes).expect("the buffer holds only events it validated on push")
    }
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4-byte slice"))
}

fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8-byte slice"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_events(first_seq: u64) -> Vec<Event> {
        let account = CreateAccount { id: 7, ledger: 840, flags: 1, user_data: 99 };
        let transfer = Transfer {
            id: u128::MAX - 5,
            debit_account_id: 7,
            credit_account_id: 8,
            amount: 250,
            ledger: 840,
            flags: 0,
            user_data: 3,
        };
        let bodies = [
            EventBody::AccountCreated { account },
            EventBody::AccountRejected { account, code: ResultCode::Exists },
            EventBody::TransferPosted {
                transfer,
                debit_balance_after: -250,
                credit_balance_after: i64::MAX,
                debit_prev_seq: 1,
                credit_prev_seq: first_seq + 1,
            },
            EventBody::TransferRejected { transfer, code: ResultCode::InsufficientFunds },
        ];
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Event { seq: first_seq + i as u64, timestamp_ns: 1_000 + i as u64 * 3, body: *body })
            .collect()
    }

    fn encoded_batch() -> (Vec<Event>, Vec<u8>) {
        let events = sample_events(41);
        let mut buffer = EventBuffer::with_capacity(8);
        buffer.begin(3, 41);
        for event in &events {
            buffer.push(event);
        }
        (events, buffer.as_bytes().to_vec())
    }

    #[test]
    fn batch_round_trips() {
        let (events, bytes) = encoded_batch();
        assert_eq!(bytes.len(), EVENT_BATCH_HEADER_BYTES + 4 * EVENT_BYTES);
        let view = EventBatchView::new(&bytes).expect("valid batch");
        assert_eq!(view.partition(), 3);
        assert_eq!(view.first_seq(), 41);
        assert_eq!(view.last_seq(), 44);
        assert_eq!(view.event_count(), 4);
        assert_eq!(view.first_timestamp_ns(), 1_000);
        assert_eq!(view.last_timestamp_ns(), 1_009);
        assert_eq!(view.iter().collect::<Vec<_>>(), events);
    }

    #[test]
    fn buffer_is_reusable_without_growing() {
        let mut buffer = EventBuffer::with_capacity(4);
        let capacity = buffer.bytes.capacity();
        for round in 0..3u64 {
            buffer.begin(1, 1 + round * 4);
            for event in sample_events(1 + round * 4) {
                buffer.push(&event);
            }
            assert_eq!(buffer.view().event_count(), 4);
            assert_eq!(buffer.bytes.capacity(), capacity, "pushing within the reserved room never reallocates");
        }
    }

    #[test]
    #[should_panic(expected = "consecutive seqs")]
    fn buffer_refuses_a_seq_gap() {
        let mut buffer = EventBuffer::new();
        buffer.begin(1, 5);
        buffer.push(&sample_events(6)[0]);
    }

    #[test]
    fn decoder_rejects_bad_headers() {
        let (_, bytes) = encoded_batch();
        assert_eq!(EventBatchView::new(&bytes[..31]).unwrap_err(), EventDecodeError::TooShort { len: 31 });
        let truncated = &bytes[..bytes.len() - 1];
        assert!(matches!(EventBatchView::new(truncated), Err(EventDecodeError::LengthMismatch { .. })));
        let mut extended = bytes.clone();
        extended.push(0);
        assert!(matches!(EventBatchView::new(&extended), Err(EventDecodeError::LengthMismatch { .. })));

        let mutate = |offset: usize, value: u8| {
            let mut copy = bytes.clone();
            copy[offset] = value;
            EventBatchView::new(&copy).unwrap_err()
        };
        assert_eq!(mutate(4, 3), EventDecodeError::UnknownFormatVersion { version: 3 });
        assert_eq!(mutate(4, 0), EventDecodeError::UnknownFormatVersion { version: 0 });
        let mut version_one = bytes.clone();
        version_one[4] = 1;
        assert_eq!(EventBatchView::new(&version_one).expect("version 1 is still read").format_version(), 1);
        assert_eq!(mutate(6, 1), EventDecodeError::UnknownBatchFlags { flags: 1 });
        assert_eq!(mutate(13, 1), EventDecodeError::HeaderReservedNotZero);
        assert_eq!(mutate(30, 1), EventDecodeError::HeaderReservedNotZero);
        assert!(matches!(mutate(8, 200), EventDecodeError::LengthMismatch { event_count: 200, .. }));

        let mut empty = bytes[..EVENT_BATCH_HEADER_BYTES].to_vec();
        empty[8..12].fill(0);
        assert_eq!(EventBatchView::new(&empty).unwrap_err(), EventDecodeError::Empty);
        let mut seq_zero = bytes.clone();
        seq_zero[16..24].fill(0);
        assert_eq!(EventBatchView::new(&seq_zero).unwrap_err(), EventDecodeError::FirstSeqZero);
        let mut seq_huge = bytes.clone();
        seq_huge[16..24].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert!(matches!(EventBatchView::new(&seq_huge), Err(EventDecodeError::SeqOverflow { .. })));
    }

    #[test]
    fn decoder_rejects_bad_events() {
        let (_, bytes) = encoded_batch();
        let event = |index: usize, offset: usize| EVENT_BATCH_HEADER_BYTES + index * EVENT_BYTES + offset;
        let mutate = |offset: usize, value: u8| {
            let mut copy = bytes.clone();
            copy[offset] = value;
            EventBatchView::new(&copy).unwrap_err()
        };
        assert_eq!(mutate(event(1, 0), 9), EventDecodeError::UnknownKind { index: 1, kind: 9 });
        assert_eq!(mutate(event(1, 2), 77), EventDecodeError::UnknownCode { index: 1, code: 77 });
        // A created account carrying a rejection code, and a rejected transfer carrying Ok.
        assert!(matches!(mutate(event(0, 2), 1), EventDecodeError::CodeImpossibleForKind { index: 0, .. }));
        assert!(matches!(mutate(event(3, 2), 0), EventDecodeError::CodeImpossibleForKind { index: 3, .. }));
        assert_eq!(mutate(event(2, 1), 1), EventDecodeError::EventReservedNotZero { index: 2 });
        assert_eq!(mutate(event(2, 5), 1), EventDecodeError::EventReservedNotZero { index: 2 });
        // Padding after a CreateAccount body, and balances on a non-posted event.
        assert_eq!(mutate(event(0, 24 + 40), 1), EventDecodeError::EventReservedNotZero { index: 0 });
        assert_eq!(mutate(event(3, 90), 1), EventDecodeError::EventReservedNotZero { index: 3 });
        assert_eq!(mutate(event(3, 115), 1), EventDecodeError::EventReservedNotZero { index: 3 });
        // A posted transfer's previous seqs point strictly back, never to 0 or forward.
        assert_eq!(mutate(event(2, 104), 0), EventDecodeError::PrevSeqOutOfRange { index: 2, prev_seq: 0, seq: 43 });
        assert_eq!(mutate(event(2, 112), 43), EventDecodeError::PrevSeqOutOfRange { index: 2, prev_seq: 43, seq: 43 });
        assert_eq!(mutate(event(2, 8), 99), EventDecodeError::SeqNotConsecutive { index: 2, seq: 99, expected: 43 });
        assert_eq!(
            mutate(event(2, 16), 0),
            EventDecodeError::TimestampNotIncreasing { index: 2, timestamp_ns: 768, previous_ns: 1_003 }
        );
    }

    #[test]
    fn every_code_has_a_kind_or_is_lookup_only() {
        let kinds = [
            EventKind::AccountCreated,
            EventKind::AccountRejected,
            EventKind::TransferPosted,
            EventKind::TransferRejected,
        ];
        for code in ResultCode::ALL {
            let loggable = kinds.iter().any(|&kind| code_valid_for_kind(kind, code));
            assert_eq!(loggable, code != ResultCode::AccountNotFound, "{code:?}");
        }
    }
}
