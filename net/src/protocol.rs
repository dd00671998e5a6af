//! The binary protocol: a pure codec (no I/O) for frames = fixed 64-byte header + body.
//!
//! Header layout (little-endian), 64 bytes:
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! | 0      | 4    | magic, the bytes `WALT`                                      |
//! | 4      | 2    | protocol version ([`PROTOCOL_VERSION`])                      |
//! | 6      | 2    | message kind ([`kind`])                                      |
//! | 8      | 16   | cluster id                                                   |
//! | 24     | 8    | request id (a response echoes its request's id)              |
//! | 32     | 4    | body length in bytes                                         |
//! | 36     | 2    | flags (none defined: must be 0)                              |
//! | 38     | 2    | reserved (must be 0)                                         |
//! | 40     | 8    | xxh3-64 of the body                                          |
//! | 48     | 8    | reserved (must be 0)                                         |
//! | 56     | 8    | xxh3-64 of header bytes 0..56                                |
//!
//! The decoder checks, in this order, so that a peer learns the most specific cause: magic (as soon
//! as the first bytes arrive: an HTTP client is refused at once), header checksum, version, reserved
//! fields, cluster id, frame length against the limit, message kind; then, once the body is in,
//! body checksum and the body's own layout. Nothing is buffered or allocated beyond a length that
//! has been checked against a limit, so no input can make the decoder panic or grow memory
//! unboundedly (see the randomized test and `fuzz/`).

use std::fmt;

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use crate::types::{Account, AccountId, CreateAccount, HistoryEntry, ItemResult, ResultCode, Transfer, TransferId};

/// The first four bytes of every frame: `WALT`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"WALT");
pub const PROTOCOL_VERSION: u16 = 1;
pub const HEADER_BYTES: usize = 64;
/// Largest frame (header + body) either side accepts. Sized so that the largest batch of the largest
/// item (history entries, 96 B) fits: 8190 * 96 + 16 + 64 < 1 MiB.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Most items in one batch (accounts, transfers, lookup ids, results, history entries).
pub const BATCH_ITEMS_MAX: usize = 8190;
/// Largest node-to-node frame (header + body). Peer frames carry whole partition snapshots, so they may
/// be far larger than client frames; the client port still refuses anything above [`FRAME_BYTES_MAX`].
pub const PEER_FRAME_BYTES_MAX: usize = 256 << 20;
/// Most node records in a Status response.
pub const STATUS_NODES_MAX: usize = 1024;
/// Most history entries one AccountHistory request may ask for.
pub const HISTORY_LIMIT_MAX: u32 = BATCH_ITEMS_MAX as u32;
/// The page size a history request's `limit` asks for: 0 and anything above [`HISTORY_LIMIT_MAX`] mean
/// `HISTORY_LIMIT_MAX`, so every limit has an answer.
pub fn history_page_entries(limit: u32) -> usize {
    if limit == 0 || limit > HISTORY_LIMIT_MAX {
        HISTORY_LIMIT_MAX as usize
    } else {
        limit as usize
    }
}
/// Most per-partition records in a Status response.
pub const STATUS_PARTITIONS_MAX: usize = BATCH_ITEMS_MAX;
/// Longest error message carried by an Error response, in UTF-8 bytes (longer ones are truncated
/// by the encoder at a character boundary).
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;

/// Message kinds. Requests are `0x00xx`, responses `0x01xx`; `0x8000..=0xFFFF` is reserved for
/// node-to-node messages, which share the framing and are handed over as raw bodies.
pub mod kind {
    pub const PING: u16 = 0x0001;
    pub const STATUS: u16 = 0x0002;
    pub const CREATE_ACCOUNTS: u16 = 0x0003;
    pub const CREATE_TRANSFERS: u16 = 0x0004;
    pub const LOOKUP_ACCOUNTS: u16 = 0x0005;
    pub const ACCOUNT_HISTORY: u16 = 0x0006;
    pub const LOOKUP_TRANSFERS: u16 = 0x0007;

    pub const PONG: u16 = 0x0101;
    pub const STATUS_RESPONSE: u16 = 0x0102;
    pub const RESULTS: u16 = 0x0103;
    pub const ACCOUNTS: u16 = 0x0104;
    pub const HISTORY: u16 = 0x0105;
    pub const TRANSFERS: u16 = 0x0106;
    pub const ERROR: u16 = 0x01FF;

    /// First node-to-node kind; every kind at or above it is a peer message.
    pub const PEER_MIN: u16 = 0x8000;

    pub fn is_known(kind: u16) -> bool {
        matches!(kind, PING..=LOOKUP_TRANSFERS | PONG..=TRANSFERS | ERROR) || kind >= PEER_MIN
    }
}

/// Partition record flag in a Status response: this node leads the partition.
pub const PARTITION_FLAG_LEADER: u32 = 1 << 0;
/// History body flag: `next_from_seq` is present (there are more entries).
const HISTORY_FLAG_HAS_NEXT: u32 = 1 << 0;
/// History body flag: no account has this id (the page is then empty and has no cursor).
const HISTORY_FLAG_ACCOUNT_NOT_FOUND: u32 = 1 << 1;

/// Error codes carried by Error responses. Stable numbers: they are on the wire.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MalformedFrame = 1,
    BadMagic = 2,
    UnsupportedVersion = 3,
    WrongClusterId = 4,
    HeaderChecksum = 5,
    BodyChecksum = 6,
    FrameTooLarge = 7,
    TooManyItems = 8,
    EmptyBatch = 9,
    UnknownMessageKind = 10,
    /// Backpressure: the server refused the request or connection; retry later (same ids).
    ServerBusy = 11,
    /// This node does not lead the partition; the client may retry elsewhere.
    NotLeader = 12,
    /// The service cannot answer now (shutting down, no quorum).
    Unavailable = 13,
    /// A server bug or a request dropped without an answer.
    Internal = 14,
    /// The server already holds its maximum number of connections.
    TooManyConnections = 15,
    /// AccountHistory: the page would start below what the node still holds (older than the
    /// partition's snapshot or the log's retention). Not retryable: that history is gone from this
    /// node's log.
    HistoryCompacted = 16,
    /// AccountHistory: `from_seq` is neither 0, nor at or above the account's newest event, nor below
    /// its creation, nor one of its own events (a `next_from_seq` an earlier page handed out).
    InvalidCursor = 17,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::MalformedFrame,
        ErrorCode::BadMagic,
        ErrorCode::UnsupportedVersion,
        ErrorCode::WrongClusterId,
        ErrorCode::HeaderChecksum,
        ErrorCode::BodyChecksum,
        ErrorCode::FrameTooLarge,
        ErrorCode::TooManyItems,
        ErrorCode::EmptyBatch,
        ErrorCode::UnknownMessageKind,
        ErrorCode::ServerBusy,
        ErrorCode::NotLeader,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::TooManyConnections,
        ErrorCode::HistoryCompacted,
        ErrorCode::InvalidCursor,
    ];

    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|code| *code as u16 == value)
    }

    /// Whether resending the same request (same ids) later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::ServerBusy | ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::TooManyConnections
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, *self as u16)
    }
}

/// Why bytes are not a valid frame. Each maps to the [`ErrorCode`] the server answers with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    #[error("wrong cluster id {0:#x}")]
    WrongClusterId(u128),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("body checksum mismatch")]
    BodyChecksum,
    #[error("frame of {bytes} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { bytes: u64, limit: usize },
    #[error("{count} items exceed the limit of {limit}")]
    TooManyItems { count: u64, limit: usize },
    #[error("empty batch")]
    EmptyBatch,
    #[error("unknown message kind {0:#06x}")]
    UnknownMessageKind(u16),
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Malformed(_) => ErrorCode::MalformedFrame,
            ProtocolError::BadMagic(_) => ErrorCode::BadMagic,
            ProtocolError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            ProtocolError::WrongClusterId(_) => ErrorCode::WrongClusterId,
            ProtocolError::HeaderChecksum => ErrorCode::HeaderChecksum,
            ProtocolError::BodyChecksum => ErrorCode::BodyChecksum,
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::TooManyItems { .. } => ErrorCode::TooManyItems,
            ProtocolError::EmptyBatch => ErrorCode::EmptyBatch,
            ProtocolError::UnknownMessageKind(_) => ErrorCode::UnknownMessageKind,
        }
    }
}

/// A decoding failure, with the request id when the header was trustworthy (checksum verified), so
/// the Error response can name the request it refuses; 0 otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{error} (request id {request_id})")]
pub struct DecodeError {
    pub request_id: u64,
    pub error: ProtocolError,
}

/// How one partition's part of a lookup is served (DESIGN.md section 8). A lookup request carries a
/// [`ReadLevel`] and a minimum sequence per account; the node turns them into one `Consistency` per
/// partition (the highest minimum among that partition's accounts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the partition leader after confirming leadership.
    Linearizable,
    /// Served by any replica once it has applied at least this partition sequence.
    AtLeast(u64),
    /// Served by any replica from whatever it has applied.
    Any,
}

/// The consistency byte of a LookupAccounts request: 0 linearizable, 1 at_least, 2 any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLevel {
    /// Served by each partition's leader after confirming leadership (ReadIndex).
    Linearizable,
    /// Served by any replica once it has applied, in each account's partition, at least the sequence
    /// given with that account ([`AccountRead::at_least_seq`]).
    AtLeast,
    /// Served by any replica from whatever it has applied.
    Any,
}

impl ReadLevel {
    /// How a partition whose accounts ask for at least `at_least_seq` (their highest minimum) is read.
    pub fn for_partition(self, at_least_seq: u64) -> Consistency {
        match self {
            ReadLevel::Linearizable => Consistency::Linearizable,
            ReadLevel::AtLeast => Consistency::AtLeast(at_least_seq),
            ReadLevel::Any => Consistency::Any,
        }
    }
}

/// One account of a lookup. Wire layout, 16 bytes: `id u64 | at_least_seq u64`. `at_least_seq` is the
/// lowest sequence of the account's partition the answer must reflect (the `seq` an earlier answer
/// gave for a write to that account); it is read only under [`ReadLevel::AtLeast`] and must be 0
/// otherwise. 0 under `AtLeast` means no minimum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AccountRead {
    pub id: AccountId,
    pub at_least_seq: u64,
}

impl AccountRead {
    pub const WIRE_BYTES: usize = 16;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping,
    Status,
    CreateAccounts(Vec<CreateAccount>),
    CreateTransfers(Vec<Transfer>),
    /// Answered with one [`AccountLookup`] per account, in request order.
    LookupAccounts {
        consistency: ReadLevel,
        reads: Vec<AccountRead>,
    },
    /// The account's history newest first: entries with `seq <= from_seq` (`0` = from the newest), at
    /// most `limit` entries: 0 and anything above [`HISTORY_LIMIT_MAX`] ask for the largest page,
    /// `HISTORY_LIMIT_MAX`. Each entry carries the balance right after it.
    AccountHistory {
        account_id: AccountId,
        from_seq: u64,
        limit: u32,
    },
    /// What became of each transfer id, within the idempotency window: its outcome, seq and fields.
    LookupTransfers(Vec<TransferId>),
}

/// Outcome of looking up one transfer id. Wire layout, 96 bytes: `found u8 (0, 1 or 2) | reserved u8 |
/// code u16 | reserved u32 | seq u64 | timestamp_ns u64 | reserved u64 | transfer (64)`. Found (1):
/// the code and seq the transfer was answered with (a rejection is an outcome too), the timestamp of
/// the event that recorded it and the transfer as submitted. Found without fields (2): the same
/// outcome, seq and timestamp from the id table, but the node no longer holds the event's fields (beyond
/// a single node's log retention, or before a cluster replica's latest snapshot); the transfer is zero
/// but its id. Not found (0):
/// every field zero but the transfer's id; the id was never decided, or is older than the window (and
/// is then refused `id_expired`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferLookup {
    Found { transfer: Transfer, code: ResultCode, seq: u64, timestamp_ns: u64 },
    FoundWithoutFields { id: TransferId, code: ResultCode, seq: u64, timestamp_ns: u64 },
    NotFound { id: TransferId },
}

impl TransferLookup {
    pub const WIRE_BYTES: usize = 32 + Transfer::WIRE_BYTES;

    pub fn id(&self) -> TransferId {
        match self {
            TransferLookup::Found { transfer, .. } => transfer.id,
            TransferLookup::FoundWithoutFields { id, .. } | TransferLookup::NotFound { id } => *id,
        }
    }

    /// Writes the 96-byte wire layout into `chunk`, which must be zeroed (the reserved bytes stay zero).
    pub fn encode_into(&self, chunk: &mut [u8]) {
        assert_eq!(chunk.len(), Self::WIRE_BYTES, "a transfer lookup item is {} bytes", Self::WIRE_BYTES);
        let mut outcome = |found: u8, code: ResultCode, seq: u64, timestamp_ns: u64| {
            chunk[0] = found;
            chunk[2..4].copy_from_slice(&(code as u16).to_le_bytes());
            chunk[8..16].copy_from_slice(&seq.to_le_bytes());
            chunk[16..24].copy_from_slice(&timestamp_ns.to_le_bytes());
        };
        match self {
            TransferLookup::Found { transfer, code, seq, timestamp_ns } => {
                outcome(1, *code, *seq, *timestamp_ns);
                transfer.encode_into(&mut chunk[32..]);
            }
            TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns } => {
                outcome(2, *code, *seq, *timestamp_ns);
                chunk[32..48].copy_from_slice(&id.to_le_bytes());
            }
            TransferLookup::NotFound { id } => chunk[32..48].copy_from_slice(&id.to_le_bytes()),
        }
    }

    /// Reads the 96-byte wire layout, refusing anything that would not re-encode to the same bytes.
    pub fn decode(b: &[u8]) -> Result<TransferLookup, ProtocolError> {
        if b.len() != Self::WIRE_BYTES {
            return Err(ProtocolError::Malformed("transfer lookup item is not 96 bytes"));
        }
        if b[1] != 0 || read_u32(b, 4) != 0 || read_u64(b, 24) != 0 {
            return Err(ProtocolError::Malformed("reserved transfer lookup field must be zero"));
        }
        let transfer = Transfer::decode(&b[32..]);
        let bare = transfer == Transfer { id: transfer.id, ..Transfer::default() };
        let code =
            || ResultCode::from_u16(read_u16(b, 2)).ok_or(ProtocolError::Malformed("unknown transfer lookup code"));
        let (seq, timestamp_ns) = (read_u64(b, 8), read_u64(b, 16));
        match b[0] {
            1 => Ok(TransferLookup::Found { transfer, code: code()?, seq, timestamp_ns }),
            // Only the id of the transfer is meaningful; anything else would not re-encode the same.
            2 if bare => Ok(TransferLookup::FoundWithoutFields { id: transfer.id, code: code()?, seq, timestamp_ns }),
            0 if b[2..24].iter().all(|&x| x == 0) && bare => Ok(TransferLookup::NotFound { id: transfer.id }),
            _ => Err(ProtocolError::Malformed("transfer lookup item is neither found nor a bare not-found")),
        }
    }
}

impl Request {
    /// A lookup of `ids`, every one read at `consistency`. `Consistency::AtLeast(seq)` gives every
    /// account the same minimum, which only makes sense for accounts of one partition (sequences are
    /// per partition); accounts of several partitions take a minimum each, through
    /// [`Request::LookupAccounts`] directly.
    pub fn lookup(consistency: Consistency, ids: &[AccountId]) -> Request {
        let (level, at_least_seq) = match consistency {
            Consistency::Linearizable => (ReadLevel::Linearizable, 0),
            Consistency::AtLeast(seq) => (ReadLevel::AtLeast, seq),
            Consistency::Any => (ReadLevel::Any, 0),
        };
        let reads = ids.iter().map(|&id| AccountRead { id, at_least_seq }).collect();
        Request::LookupAccounts { consistency: level, reads }
    }
}

/// One partition's state in a Status response, as this node sees it. Wire layout, 64 bytes:
/// `partition u32 | flags u32 | term u64 | leader u64 | last_index u64 | commit_index u64 |
/// applied_index u64 | applied_seq u64 | state_digest u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PartitionStatus {
    pub partition: u32,
    /// [`PARTITION_FLAG_LEADER`]; other bits are reserved and carried as is.
    pub flags: u32,
    /// Raft term this replica is in (0 for a single node, which has no Raft group).
    pub term: u64,
    /// Node id of the partition's leader as far as this replica knows; 0 when unknown.
    pub leader: u64,
    /// Last index in this replica's log.
    pub last_index: u64,
    /// Last log index known committed.
    pub commit_index: u64,
    /// Last log index applied to the state this replica serves reads from.
    pub applied_index: u64,
    /// Partition sequence of the last applied event.
    pub applied_seq: u64,
    /// Low 64 bits of the applied state's digest: replicas at the same `applied_index` must agree.
    pub state_digest: u64,
}

impl PartitionStatus {
    pub const WIRE_BYTES: usize = 64;
}

/// A cluster member as listed in a Status response. Wire layout, 32 bytes:
/// `node_id u64 | port u16 | family u8 (4 or 6) | reserved u8 | reserved u32 | ip 16 bytes` (an IPv4
/// address fills the first 4 ip bytes, the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    pub node_id: u64,
    /// Where the node serves clients.
    pub address: std::net::SocketAddr,
}

impl NodeAddress {
    pub const WIRE_BYTES: usize = 32;
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeStatus {
    pub node_id: u64,
    pub partitions: u32,
    pub shards: u32,
    pub partition_states: Vec<PartitionStatus>,
    /// Every member of the cluster with its client address (empty for a single node).
    pub nodes: Vec<NodeAddress>,
}

/// Outcome of looking up one account. Wire layout, 64 bytes:
/// `code u16 | reserved u16 | reserved u32 | account (56)`; code 0 (`Ok`) means found, any other
/// code means not found and only the account's `id` field is meaningful (the rest is zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountLookup {
    Found(Account),
    NotFound { id: AccountId, code: ResultCode },
}

impl AccountLookup {
    pub const WIRE_BYTES: usize = 8 + Account::WIRE_BYTES;

    pub fn id(&self) -> AccountId {
        match self {
            AccountLookup::Found(account) => account.id,
            AccountLookup::NotFound { id, .. } => *id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Pong,
    Status(NodeStatus),
    /// Per-item results of CreateAccounts / CreateTransfers.
    Results(Vec<ItemResult>),
    Accounts(Vec<AccountLookup>),
    /// One answer per id of a LookupTransfers, in order.
    Transfers(Vec<TransferLookup>),
    /// `next_from_seq`: pass it as `from_seq` to get the next (older) page; `None` when this page
    /// reached the account's creation. `account_not_found`: no account has the id (no entries, no
    /// cursor), as opposed to a page past the account's first event.
    History {
        entries: Vec<HistoryEntry>,
        next_from_seq: Option<u64>,
        account_not_found: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error { code, message: message.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
    /// A node-to-node message (kind >= [`kind::PEER_MIN`]); its body is decoded by the replication
    /// layer. The checksum has been verified.
    Peer {
        kind: u16,
        body: Vec<u8>,
    },
}

/// The fields of a verified header the application cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u16,
    pub cluster_id: u128,
    pub request_id: u64,
    pub body_bytes: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: FrameHeader,
    pub message: Message,
}

/// Writes a complete header for `body` (checksums included) into `out[..HEADER_BYTES]`.
/// Low-level: tests and the fuzzer use it to craft frames; applications use `encode_*`.
pub fn write_header(out: &mut [u8], kind: u16, cluster_id: u128, request_id: u64, body: &[u8]) {
    let out = &mut out[..HEADER_BYTES];
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&kind.to_le_bytes());
    out[8..24].copy_from_slice(&cluster_id.to_le_bytes());
    out[24..32].copy_from_slice(&request_id.to_le_bytes());
    let body_bytes = u32::try_from(body.len()).expect("callers bound bodies by FRAME_BYTES_MAX");
    out[32..36].copy_from_slice(&body_bytes.to_le_bytes());
    out[36..40].fill(0);
    out[40..48].copy_from_slice(&xxh3_64(body).to_le_bytes());
    out[48..56].fill(0);
    seal_header(out);
}

/// Recomputes the header checksum (bytes 56..64) over bytes 0..56. Tests use it to craft frames
/// whose header is intact but whose fields are wrong.
pub fn seal_header(header: &mut [u8]) {
    let checksum = xxh3_64(&header[..56]);
    header[56..64].copy_from_slice(&checksum.to_le_bytes());
}

/// Recomputes both checksums of a frame whose header and (declared) body are in `frame`: tests and
/// the fuzzer use it to reach the checks behind the checksums. Does nothing to a frame shorter than
/// its header; a body not fully present is left unchecksummed.
pub fn seal_frame(frame: &mut [u8]) {
    if frame.len() < HEADER_BYTES {
        return;
    }
    let body_bytes = read_u32(frame, 32) as usize;
    if let Some(body) = frame.get(HEADER_BYTES..HEADER_BYTES.saturating_add(body_bytes)) {
        let checksum = xxh3_64(body);
        frame[40..48].copy_from_slice(&checksum.to_le_bytes());
    }
    seal_header(frame);
}

/// Appends one frame with a raw body. Used for peer messages and for crafted frames in tests.
pub fn encode_raw_frame(out: &mut Vec<u8>, kind: u16, cluster_id: u128, request_id: u64, body: &[u8]) {
    let start = out.len();
    out.resize(start + HEADER_BYTES, 0);
    out.extend_from_slice(body);
    let (head, body) = out[start..].split_at_mut(HEADER_BYTES);
    write_header(head, kind, cluster_id, request_id, body);
}

/// Appends one request frame to `out`. Checks the same limits the decoder enforces, so a client
/// learns of an oversized or empty batch before sending it; on error `out` is left unchanged.
pub fn encode_request(
    out: &mut Vec<u8>,
    cluster_id: u128,
    request_id: u64,
    request: &Request,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.resize(start + HEADER_BYTES, 0);
    let result = write_request_body(out, request);
    finish_frame(out, start, result, cluster_id, request_id)
}

/// Appends one response frame to `out`; on error `out` is left unchanged.
pub fn encode_response(
    out: &mut Vec<u8>,
    cluster_id: u128,
    request_id: u64,
    response: &Response,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.resize(start + HEADER_BYTES, 0);
    let result = write_response_body(out, response);
    finish_frame(out, start, result, cluster_id, request_id)
}

fn finish_frame(
    out: &mut Vec<u8>,
    start: usize,
    result: Result<u16, ProtocolError>,
    cluster_id: u128,
    request_id: u64,
) -> Result<(), ProtocolError> {
    let frame_bytes = out.len() - start;
    let result = result.and_then(|kind| {
        if frame_bytes > FRAME_BYTES_MAX {
            return Err(ProtocolError::FrameTooLarge { bytes: frame_bytes as u64, limit: FRAME_BYTES_MAX });
        }
        Ok(kind)
    });
    match result {
        Ok(kind) => {
            let (head, body) = out[start..].split_at_mut(HEADER_BYTES);
            write_header(head, kind, cluster_id, request_id, body);
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

fn check_batch(count: usize, limit: usize, empty_allowed: bool) -> Result<(), ProtocolError> {
    if count == 0 && !empty_allowed {
        return Err(ProtocolError::EmptyBatch);
    }
    if count > limit {
        return Err(ProtocolError::TooManyItems { count: count as u64, limit });
    }
    Ok(())
}

/// Appends `count u32 | second u32` then grows `out` by `count * item_bytes` zeroed bytes and
/// returns the offset where the items start: items are then encoded in place, no per-item allocation.
fn put_items_prefix(out: &mut Vec<u8>, count: usize, second: u32, item_bytes: usize) -> usize {
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&second.to_le_bytes());
    let items_start = out.len();
    out.resize(items_start + count * item_bytes, 0);
    items_start
}

fn write_request_body(out: &mut Vec<u8>, request: &Request) -> Result<u16, ProtocolError> {
    match request {
        Request::Ping => Ok(kind::PING),
        Request::Status => Ok(kind::STATUS),
        Request::CreateAccounts(accounts) => {
            check_batch(accounts.len(), BATCH_ITEMS_MAX, false)?;
            let at = put_items_prefix(out, accounts.len(), 0, CreateAccount::WIRE_BYTES);
            for (item, chunk) in accounts.iter().zip(out[at..].chunks_exact_mut(CreateAccount::WIRE_BYTES)) {
                item.encode_into(chunk);
            }
            Ok(kind::CREATE_ACCOUNTS)
        }
        Request::CreateTransfers(transfers) => {
            check_batch(transfers.len(), BATCH_ITEMS_MAX, false)?;
            let at = put_items_prefix(out, transfers.len(), 0, Transfer::WIRE_BYTES);
            for (item, chunk) in transfers.iter().zip(out[at..].chunks_exact_mut(Transfer::WIRE_BYTES)) {
                item.encode_into(chunk);
            }
            Ok(kind::CREATE_TRANSFERS)
        }
        Request::LookupAccounts { consistency, reads } => {
            check_batch(reads.len(), BATCH_ITEMS_MAX, false)?;
            let mode = match consistency {
                ReadLevel::Linearizable => 0u8,
                ReadLevel::AtLeast => 1,
                ReadLevel::Any => 2,
            };
            if *consistency != ReadLevel::AtLeast && reads.iter().any(|r| r.at_least_seq != 0) {
                return Err(ProtocolError::Malformed(LOOKUP_STRAY_SEQ));
            }
            out.extend_from_slice(&[mode, 0, 0, 0]);
            out.extend_from_slice(&(reads.len() as u32).to_le_bytes());
            for read in reads {
                out.extend_from_slice(&read.id.to_le_bytes());
                out.extend_from_slice(&read.at_least_seq.to_le_bytes());
            }
            Ok(kind::LOOKUP_ACCOUNTS)
        }
        Request::AccountHistory { account_id, from_seq, limit } => {
            out.extend_from_slice(&account_id.to_le_bytes());
            out.extend_from_slice(&from_seq.to_le_bytes());
            out.extend_from_slice(&limit.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            Ok(kind::ACCOUNT_HISTORY)
        }
        Request::LookupTransfers(ids) => {
            check_batch(ids.len(), BATCH_ITEMS_MAX, false)?;
            let at = put_items_prefix(out, ids.len(), 0, 16);
            for (id, chunk) in ids.iter().zip(out[at..].chunks_exact_mut(16)) {
                chunk.copy_from_slice(&id.to_le_bytes());
            }
            Ok(kind::LOOKUP_TRANSFERS)
        }
    }
}

fn write_response_body(out: &mut Vec<u8>, response: &Response) -> Result<u16, ProtocolError> {
    match response {
        Response::Pong => Ok(kind::PONG),
        Response::Status(status) => {
            check_batch(status.partition_states.len(), STATUS_PARTITIONS_MAX, true)?;
            check_batch(status.nodes.len(), STATUS_NODES_MAX, true)?;
            out.extend_from_slice(&status.node_id.to_le_bytes());
            out.extend_from_slice(&status.partitions.to_le_bytes());
            out.extend_from_slice(&status.shards.to_le_bytes());
            out.extend_from_slice(&(status.partition_states.len() as u32).to_le_bytes());
            out.extend_from_slice(&(status.nodes.len() as u32).to_le_bytes());
            for record in &status.partition_states {
                out.extend_from_slice(&record.partition.to_le_bytes());
                out.extend_from_slice(&record.flags.to_le_bytes());
                for value in [
                    record.term,
                    record.leader,
                    record.last_index,
                    record.commit_index,
                    record.applied_index,
                    record.applied_seq,
                    record.state_digest,
                ] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
            for node in &status.nodes {
                out.extend_from_slice(&node.node_id.to_le_bytes());
                out.extend_from_slice(&node.address.port().to_le_bytes());
                let mut ip = [0u8; 16];
                let family = match node.address.ip() {
                    std::net::IpAddr::V4(v4) => {
                        ip[..4].copy_from_slice(&v4.octets());
                        4u8
                    }
                    std::net::IpAddr::V6(v6) => {
                        ip.copy_from_slice(&v6.octets());
                        6u8
                    }
                };
                out.extend_from_slice(&[family, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&ip);
            }
            Ok(kind::STATUS_RESPONSE)
        }
        Response::Results(items) => {
            check_batch(items.len(), BATCH_ITEMS_MAX, true)?;
            let at = put_items_prefix(out, items.len(), 0, ItemResult::WIRE_BYTES);
            for (item, chunk) in items.iter().zip(out[at..].chunks_exact_mut(ItemResult::WIRE_BYTES)) {
                item.encode_into(chunk);
            }
            Ok(kind::RESULTS)
        }
        Response::Accounts(lookups) => {
            check_batch(lookups.len(), BATCH_ITEMS_MAX, true)?;
            let at = put_items_prefix(out, lookups.len(), 0, AccountLookup::WIRE_BYTES);
            for (item, chunk) in lookups.iter().zip(out[at..].chunks_exact_mut(AccountLookup::WIRE_BYTES)) {
                let (code, account) = match item {
                    AccountLookup::Found(account) => (ResultCode::Ok, *account),
                    AccountLookup::NotFound { id, code } => (*code, Account { id: *id, ..Account::default() }),
                };
                chunk[0..2].copy_from_slice(&(code as u16).to_le_bytes());
                account.encode_into(&mut chunk[8..]);
            }
            Ok(kind::ACCOUNTS)
        }
        Response::Transfers(lookups) => {
            check_batch(lookups.len(), BATCH_ITEMS_MAX, true)?;
            let at = put_items_prefix(out, lookups.len(), 0, TransferLookup::WIRE_BYTES);
            for (item, chunk) in lookups.iter().zip(out[at..].chunks_exact_mut(TransferLookup::WIRE_BYTES)) {
                item.encode_into(chunk);
            }
            Ok(kind::TRANSFERS)
        }
        Response::History { entries, next_from_seq, account_not_found } => {
            check_batch(entries.len(), BATCH_ITEMS_MAX, true)?;
            if *account_not_found && (!entries.is_empty() || next_from_seq.is_some()) {
                return Err(ProtocolError::Malformed("a history of a missing account has no entries or cursor"));
            }
            let flags = if next_from_seq.is_some() { HISTORY_FLAG_HAS_NEXT } else { 0 }
                | if *account_not_found { HISTORY_FLAG_ACCOUNT_NOT_FOUND } else { 0 };
            out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&next_from_seq.unwrap_or(0).to_le_bytes());
            let at = out.len();
            out.resize(at + entries.len() * HistoryEntry::WIRE_BYTES, 0);
            for (item, chunk) in entries.iter().zip(out[at..].chunks_exact_mut(HistoryEntry::WIRE_BYTES)) {
                item.encode_into(chunk);
            }
            Ok(kind::HISTORY)
        }
        Response::Error { code, message } => {
            let message = truncate_at_char_boundary(message, ERROR_MESSAGE_BYTES_MAX);
            out.extend_from_slice(&(*code as u16).to_le_bytes());
            out.extend_from_slice(&(message.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(message.as_bytes());
            Ok(kind::ERROR)
        }
    }
}

/// The longest prefix of `text` of at most `bytes_max` bytes that ends at a character boundary
/// (error messages are capped this way wherever they go on the wire).
pub fn truncate_at_char_boundary(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    // A UTF-8 character is at most 4 bytes, so this walks back at most 3 steps.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Decodes frames for one cluster, with a frame-size limit (at most [`FRAME_BYTES_MAX`] for client
/// kinds and [`PEER_FRAME_BYTES_MAX`] for node-to-node kinds).
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    pub cluster_id: u128,
    pub frame_bytes_max: usize,
}

impl FrameDecoder {
    pub fn new(cluster_id: u128) -> FrameDecoder {
        FrameDecoder { cluster_id, frame_bytes_max: FRAME_BYTES_MAX }
    }

    /// A decoder for a node-to-node connection: peer frames up to [`PEER_FRAME_BYTES_MAX`].
    pub fn for_peers(cluster_id: u128) -> FrameDecoder {
        FrameDecoder { cluster_id, frame_bytes_max: PEER_FRAME_BYTES_MAX }
    }

    /// `Ok(Some((frame, consumed)))` for a complete valid frame at the start of `bytes`;
    /// `Ok(None)` when more bytes are needed (everything seen so far is valid); `Err` when the
    /// bytes can never become a valid frame: the connection must then be closed, since framing is
    /// lost.
    pub fn decode(&self, bytes: &[u8]) -> Result<Option<(Frame, usize)>, DecodeError> {
        let untrusted = |error| DecodeError { request_id: 0, error };
        let magic = MAGIC.to_le_bytes();
        let prefix = bytes.len().min(4);
        if bytes[..prefix] != magic[..prefix] {
            let mut seen = [0u8; 4];
            seen[..prefix].copy_from_slice(&bytes[..prefix]);
            return Err(untrusted(ProtocolError::BadMagic(u32::from_le_bytes(seen))));
        }
        if bytes.len() < HEADER_BYTES {
            return Ok(None);
        }
        let head = &bytes[..HEADER_BYTES];
        if xxh3_64(&head[..56]) != read_u64(head, 56) {
            return Err(untrusted(ProtocolError::HeaderChecksum));
        }
        let request_id = read_u64(head, 24);
        let trusted = |error| DecodeError { request_id, error };
        let version = read_u16(head, 4);
        if version != PROTOCOL_VERSION {
            return Err(trusted(ProtocolError::UnsupportedVersion(version)));
        }
        if read_u32(head, 36) != 0 || read_u64(head, 48) != 0 {
            return Err(trusted(ProtocolError::Malformed("reserved header fields must be zero")));
        }
        let cluster_id = read_u128(head, 8);
        if cluster_id != self.cluster_id {
            return Err(trusted(ProtocolError::WrongClusterId(cluster_id)));
        }
        let body_bytes = read_u32(head, 32);
        let frame_bytes = HEADER_BYTES as u64 + body_bytes as u64;
        let message_kind = read_u16(head, 6);
        // Only node-to-node frames may exceed the client limit, and only on a decoder built for them.
        let ceiling = if message_kind >= kind::PEER_MIN { PEER_FRAME_BYTES_MAX } else { FRAME_BYTES_MAX };
        let limit = self.frame_bytes_max.min(ceiling);
        if frame_bytes > limit as u64 {
            return Err(trusted(ProtocolError::FrameTooLarge { bytes: frame_bytes, limit }));
        }
        if !kind::is_known(message_kind) {
            return Err(trusted(ProtocolError::UnknownMessageKind(message_kind)));
        }
        let frame_bytes = frame_bytes as usize;
        if bytes.len() < frame_bytes {
            return Ok(None);
        }
        let body = &bytes[HEADER_BYTES..frame_bytes];
        if xxh3_64(body) != read_u64(head, 40) {
            return Err(trusted(ProtocolError::BodyChecksum));
        }
        let message = decode_body(message_kind, body).map_err(trusted)?;
        let header = FrameHeader { kind: message_kind, cluster_id, request_id, body_bytes };
        Ok(Some((Frame { header, message }, frame_bytes)))
    }
}

fn decode_body(message_kind: u16, body: &[u8]) -> Result<Message, ProtocolError> {
    if message_kind >= kind::PEER_MIN {
        return Ok(Message::Peer { kind: message_kind, body: body.to_vec() });
    }
    let message = match message_kind {
        kind::PING => Message::Request(expect_empty(body, Request::Ping)?),
        kind::STATUS => Message::Request(expect_empty(body, Request::Status)?),
        kind::CREATE_ACCOUNTS => {
            let items = decode_items(body, CreateAccount::WIRE_BYTES, false, |b| Ok(CreateAccount::decode(b)))?;
            Message::Request(Request::CreateAccounts(items))
        }
        kind::CREATE_TRANSFERS => {
            let items = decode_items(body, Transfer::WIRE_BYTES, false, |b| Ok(Transfer::decode(b)))?;
            Message::Request(Request::CreateTransfers(items))
        }
        kind::LOOKUP_ACCOUNTS => Message::Request(decode_lookup(body)?),
        kind::ACCOUNT_HISTORY => Message::Request(decode_history_request(body)?),
        kind::LOOKUP_TRANSFERS => {
            Message::Request(Request::LookupTransfers(decode_items(body, 16, false, |b| Ok(read_u128(b, 0)))?))
        }
        kind::PONG => Message::Response(expect_empty(body, Response::Pong)?),
        kind::STATUS_RESPONSE => Message::Response(decode_status(body)?),
        kind::RESULTS => {
            let items = decode_items(body, ItemResult::WIRE_BYTES, true, |b| {
                ItemResult::decode(b).ok_or(ProtocolError::Malformed("unknown result code"))
            })?;
            Message::Response(Response::Results(items))
        }
        kind::ACCOUNTS => Message::Response(Response::Accounts(decode_items(
            body,
            AccountLookup::WIRE_BYTES,
            true,
            decode_lookup_item,
        )?)),
        kind::HISTORY => Message::Response(decode_history(body)?),
        kind::TRANSFERS => Message::Response(Response::Transfers(decode_items(
            body,
            TransferLookup::WIRE_BYTES,
            true,
            TransferLookup::decode,
        )?)),
        kind::ERROR => Message::Response(decode_error(body)?),
        other => return Err(ProtocolError::UnknownMessageKind(other)),
    };
    Ok(message)
}

fn expect_empty<T>(body: &[u8], value: T) -> Result<T, ProtocolError> {
    if body.is_empty() {
        Ok(value)
    } else {
        Err(ProtocolError::Malformed("body must be empty"))
    }
}

/// Checks a batch count against the limit and the exact body length it implies.
fn check_count(
    count: u32,
    limit: usize,
    empty_allowed: bool,
    items_bytes: usize,
    item_bytes: usize,
) -> Result<usize, ProtocolError> {
    if count as u64 > limit as u64 {
        return Err(ProtocolError::TooManyItems { count: count as u64, limit });
    }
    let count = count as usize;
    if count == 0 && !empty_allowed {
        return Err(ProtocolError::EmptyBatch);
    }
    if count * item_bytes != items_bytes {
        return Err(ProtocolError::Malformed("body length does not match the item count"));
    }
    Ok(count)
}

/// Body `count u32 | reserved u32 | count * item_bytes`.
fn decode_items<T>(
    body: &[u8],
    item_bytes: usize,
    empty_allowed: bool,
    decode_item: impl Fn(&[u8]) -> Result<T, ProtocolError>,
) -> Result<Vec<T>, ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::Malformed("body shorter than its batch prefix"));
    }
    if read_u32(body, 4) != 0 {
        return Err(ProtocolError::Malformed("reserved batch field must be zero"));
    }
    let count = check_count(read_u32(body, 0), BATCH_ITEMS_MAX, empty_allowed, body.len() - 8, item_bytes)?;
    let mut items = Vec::with_capacity(count);
    for chunk in body[8..].chunks_exact(item_bytes) {
        items.push(decode_item(chunk)?);
    }
    Ok(items)
}

/// Why a lookup with a minimum sequence under another level than at_least is refused: a
/// linearizable read already reflects every committed sequence, and `any` promises none, so a
/// non-zero minimum there is a client bug, not a request with one obvious meaning.
const LOOKUP_STRAY_SEQ: &str = "lookup at_least_seq must be 0 unless consistency is 1 (at_least)";

fn decode_lookup(body: &[u8]) -> Result<Request, ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::Malformed("lookup body shorter than its prefix"));
    }
    if body[1..4] != [0, 0, 0] {
        return Err(ProtocolError::Malformed("reserved lookup field must be zero"));
    }
    let consistency = match body[0] {
        0 => ReadLevel::Linearizable,
        1 => ReadLevel::AtLeast,
        2 => ReadLevel::Any,
        _ => return Err(ProtocolError::Malformed("unknown lookup consistency (0, 1 or 2)")),
    };
    check_count(read_u32(body, 4), BATCH_ITEMS_MAX, false, body.len() - 8, AccountRead::WIRE_BYTES)?;
    let reads: Vec<AccountRead> = body[8..]
        .chunks_exact(AccountRead::WIRE_BYTES)
        .map(|chunk| AccountRead { id: read_u64(chunk, 0), at_least_seq: read_u64(chunk, 8) })
        .collect();
    if consistency != ReadLevel::AtLeast && reads.iter().any(|r| r.at_least_seq != 0) {
        return Err(ProtocolError::Malformed(LOOKUP_STRAY_SEQ));
    }
    Ok(Request::LookupAccounts { consistency, reads })
}

fn decode_history_request(body: &[u8]) -> Result<Request, ProtocolError> {
    if body.len() != 24 {
        return Err(ProtocolError::Malformed("history request body must be 24 bytes"));
    }
    if read_u32(body, 20) != 0 {
        return Err(ProtocolError::Malformed("reserved history field must be zero"));
    }
    // Any limit is accepted: it is the most entries wanted, and the server serves at most
    // HISTORY_LIMIT_MAX (0 asks for that many), so no count can be refused or close the connection.
    let limit = read_u32(body, 16);
    Ok(Request::AccountHistory { account_id: read_u64(body, 0), from_seq: read_u64(body, 8), limit })
}

fn decode_status(body: &[u8]) -> Result<Response, ProtocolError> {
    if body.len() < 24 {
        return Err(ProtocolError::Malformed("status body shorter than its prefix"));
    }
    let partitions_count = read_u32(body, 16);
    let nodes_count = read_u32(body, 20);
    if partitions_count as usize > STATUS_PARTITIONS_MAX {
        return Err(ProtocolError::TooManyItems { count: partitions_count as u64, limit: STATUS_PARTITIONS_MAX });
    }
    if nodes_count as usize > STATUS_NODES_MAX {
        return Err(ProtocolError::TooManyItems { count: nodes_count as u64, limit: STATUS_NODES_MAX });
    }
    let partition_bytes = partitions_count as usize * PartitionStatus::WIRE_BYTES;
    if body.len() - 24 != partition_bytes + nodes_count as usize * NodeAddress::WIRE_BYTES {
        return Err(ProtocolError::Malformed("body length does not match the item count"));
    }
    let (records, node_records) = body[24..].split_at(partition_bytes);
    let partition_states = records
        .chunks_exact(PartitionStatus::WIRE_BYTES)
        .map(|b| PartitionStatus {
            partition: read_u32(b, 0),
            flags: read_u32(b, 4),
            term: read_u64(b, 8),
            leader: read_u64(b, 16),
            last_index: read_u64(b, 24),
            commit_index: read_u64(b, 32),
            applied_index: read_u64(b, 40),
            applied_seq: read_u64(b, 48),
            state_digest: read_u64(b, 56),
        })
        .collect();
    let mut nodes = Vec::with_capacity(nodes_count as usize);
    for b in node_records.chunks_exact(NodeAddress::WIRE_BYTES) {
        if b[11] != 0 || read_u32(b, 12) != 0 {
            return Err(ProtocolError::Malformed("reserved node record field must be zero"));
        }
        let port = read_u16(b, 8);
        let ip: std::net::IpAddr = match b[10] {
            4 if b[20..32].iter().all(|&x| x == 0) => std::net::Ipv4Addr::new(b[16], b[17], b[18], b[19]).into(),
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&b[16..32]);
                std::net::Ipv6Addr::from(octets).into()
            }
            _ => return Err(ProtocolError::Malformed("node record address family must be 4 or 6")),
        };
        nodes.push(NodeAddress { node_id: read_u64(b, 0), address: std::net::SocketAddr::new(ip, port) });
    }
    Ok(Response::Status(NodeStatus {
        node_id: read_u64(body, 0),
        partitions: read_u32(body, 8),
        shards: read_u32(body, 12),
        partition_states,
        nodes,
    }))
}

fn decode_lookup_item(b: &[u8]) -> Result<AccountLookup, ProtocolError> {
    let code = ResultCode::from_u16(read_u16(b, 0)).ok_or(ProtocolError::Malformed("unknown lookup code"))?;
    if read_u16(b, 2) != 0 || read_u32(b, 4) != 0 {
        return Err(ProtocolError::Malformed("reserved lookup item field must be zero"));
    }
    let account = Account::decode(&b[8..]);
    match code {
        ResultCode::Ok => Ok(AccountLookup::Found(account)),
        // Only the id is meaningful when not found; anything else there would not re-encode the same.
        code if account == (Account { id: account.id, ..Account::default() }) => {
            Ok(AccountLookup::NotFound { id: account.id, code })
        }
        _ => Err(ProtocolError::Malformed("not-found lookup item carries account fields")),
    }
}

fn decode_history(body: &[u8]) -> Result<Response, ProtocolError> {
    if body.len() < 16 {
        return Err(ProtocolError::Malformed("history body shorter than its prefix"));
    }
    let (next_from_seq, account_not_found) = match (read_u32(body, 4), read_u64(body, 8)) {
        (HISTORY_FLAG_HAS_NEXT, seq) => (Some(seq), false),
        (0, 0) => (None, false),
        (HISTORY_FLAG_ACCOUNT_NOT_FOUND, 0) if read_u32(body, 0) == 0 => (None, true),
        _ => return Err(ProtocolError::Malformed("unknown history flags or stray cursor")),
    };
    let count = check_count(read_u32(body, 0), BATCH_ITEMS_MAX, true, body.len() - 16, HistoryEntry::WIRE_BYTES)?;
    let mut entries = Vec::with_capacity(count);
    for chunk in body[16..].chunks_exact(HistoryEntry::WIRE_BYTES) {
        if chunk[17] != 0 || chunk[20..24] != [0; 4] {
            return Err(ProtocolError::Malformed("reserved history entry field must be zero"));
        }
        entries.push(HistoryEntry::decode(chunk).ok_or(ProtocolError::Malformed("unknown history kind or code"))?);
    }
    Ok(Response::History { entries, next_from_seq, account_not_found })
}

fn decode_error(body: &[u8]) -> Result<Response, ProtocolError> {
    if body.len() < 8 {
        return Err(ProtocolError::Malformed("error body shorter than its prefix"));
    }
    let code = ErrorCode::from_u16(read_u16(body, 0)).ok_or(ProtocolError::Malformed("unknown error code"))?;
    let message_bytes = read_u16(body, 2) as usize;
    if read_u32(body, 4) != 0 {
        return Err(ProtocolError::Malformed("reserved error field must be zero"));
    }
    if message_bytes > ERROR_MESSAGE_BYTES_MAX || body.len() != 8 + message_bytes {
        return Err(ProtocolError::Malformed("error message length"));
    }
    let message =
        std::str::from_utf8(&body[8..]).map_err(|_| ProtocolError::Malformed("error message is not UTF-8"))?;
    Ok(Response::Error { code, message: message.to_owned() })
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}
fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}
fn read_u128(b: &[u8], at: usize) -> u128 {
    u128::from_le_bytes(b[at..at + 16].try_into().expect("16-byte slice"))
}
