//! Node-to-node message bodies: what travels inside peer frames (kinds at or above
//! `net::protocol::kind::PEER_MIN`). The frame around them (magic, cluster id, length, checksums) is
//! `net::protocol`'s; this module defines only the bodies. Pure: bytes in, values out.
//!
//! - [`PEER_KIND_HELLO`] opens a node-to-node connection and names the sender.
//! - [`PEER_KIND_BATCH`] carries any number of [`PeerItem`]s for any partitions, so all partitions' Raft
//!   traffic and forwarded client requests between two nodes share one connection and one frame per
//!   flush.
//!
//! Body layout, little-endian. Tags are `u8`, counts `u32`, Raft data lengths `u64`, a `bool` is one
//! byte that is 0 or 1:
//!
//! | what                  | bytes                                                                       |
//! |-----------------------|-----------------------------------------------------------------------------|
//! | hello                 | node_id u64 (never 0), wire_version u16, settings_digest u64                |
//! | batch                 | count u32, then `count` items                                               |
//! | item 0 Raft           | tag, partition u32, message                                                 |
//! | item 1 Forward        | tag, request_id u64, from_node u64, partition u32, request                  |
//! | item 2 ForwardReply   | tag, request_id u64, partition u32, reply                                   |
//! | item 3 TermProbe      | tag, partition u32                                                          |
//! | item 4 TermReport     | tag, partition u32, term u64, commit u64, last_index u64, leads bool        |
//! | item 5 SnapshotChunk  | tag, partition u32, from u64, to u64, term u64, snapshot index u64,         |
//! |                       | snapshot term u64, voters, learners, total_bytes u64, chunk_bytes u32,      |
//! |                       | offset u64, data length u64, data                                           |
//! | item 6 SnapshotAck    | tag, partition u32, term u64, snapshot index u64, received u64              |
//! | message               | from u64, to u64, term u64, body tag, body                                  |
//! | body 0 VoteRequest    | pre_vote bool, last_log_index u64, last_log_term u64, transfer bool         |
//! | body 1 VoteResponse   | pre_vote bool, granted bool                                                 |
//! | body 2 Append         | prev_log_index u64, prev_log_term u64, commit u64, count u32, entries       |
//! | body 3 AppendResponse | index u64, has_hint bool, then hint index u64, hint term u64 if has_hint    |
//! | body 4 Heartbeat      | commit u64, read_seq u64, lease_tick u64                                    |
//! | body 5 HeartbeatResp. | read_seq u64, lease_tick u64                                                |
//! | body 6 (Snapshot)     | never on the wire: a snapshot travels as SnapshotChunk items (a decoder     |
//! |                       | refuses the tag)                                                            |
//! | body 7 TimeoutNow     | nothing                                                                     |
//! | voters, learners      | count u32, node ids u64, strictly ascending; the two sets are disjoint      |
//! | entry                 | index u64, term u64, payload tag, payload                                   |
//! | payload               | 0 Noop: nothing; 1 Data: length u64, bytes; 2 ConfChange: kind, node u64    |
//! | conf change kind      | 0 AddVoter, 1 AddLearner, 2 Remove (the tags `shared_log` uses)            |
//! | request 0 Transfers   | tag, count u32, `Transfer` wire layout (64 B) each                          |
//! | request 1 CreateAcc.  | tag, count u32, `CreateAccount` wire layout (32 B) each                     |
//! | request 2 Lookup      | tag, consistency, count u32, account ids u64                                |
//! | request 3 LookupTrans.| tag, count u32, transfer ids u128 (always served linearizably)              |
//! | consistency           | 0 Linearizable; 1 AtLeast, then seq u64; 2 Any                              |
//! | reply 0 Results       | tag, count u32, `ItemResult` wire layout (16 B) each                        |
//! | reply 1 Accounts      | tag, count u32, each: present bool, then `Account` wire layout (56 B)      |
//! | reply 3 Transfers     | tag, count u32, each: present bool, then `TransferLookup` wire layout (96 B,|
//! |                       | found or found without fields; absent = not found)                          |
//! | reply 2 Error         | tag, `ErrorCode` u16, leader u64 (0 = unknown), message length u32 (at most |
//! |                       | 256), UTF-8 bytes                                                           |
//!
//! Every encoding is canonical: one value, one byte string, so a decoded body re-encodes identically.
//! Decoders never panic and never allocate beyond what the remaining bytes could hold: every count is
//! checked against its named limit and against the bytes left before anything is reserved.

use std::collections::BTreeSet;

use net::protocol::{
    truncate_at_char_boundary, Consistency, ErrorCode, TransferLookup, BATCH_ITEMS_MAX, ERROR_MESSAGE_BYTES_MAX,
};
use net::types::{Account, CreateAccount, ItemResult, Transfer};
use raft::{ConfChange, ConfChangeKind, ConfState, Entry, Message, MessageBody, Payload, RejectHint, SnapshotMeta};
use thiserror::Error;

/// Body: the sender's node id, u64 LE.
pub const PEER_KIND_HELLO: u16 = 0x8000;
/// Body: a batch of [`PeerItem`]s.
pub const PEER_KIND_BATCH: u16 = 0x8001;
const _: () = assert!(PEER_KIND_HELLO >= net::protocol::kind::PEER_MIN && PEER_KIND_BATCH > PEER_KIND_HELLO);

pub const HELLO_BYTES: usize = 8 + 2 + 8;
/// Version of everything in this module; peers that differ refuse each other at the hello.
/// Version 2 added the transfer lookup request and reply; version 3 the answering replica's term in an
/// error reply; version 4 snapshots in chunks (`SnapshotChunk`, `SnapshotAck`) instead of one message;
/// version 5 whether the replica answering a `TermProbe` leads its term.
pub const PEER_WIRE_VERSION: u16 = 5;

/// What a connection's first frame says about the node that opened its side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    pub wire_version: u16,
    /// `ClusterConfig::agreement_digest` of the sender's cluster file.
    pub settings_digest: u64,
}
/// Bytes in front of a batch's items (the item count): a batch body is this plus the sum of
/// [`item_encoded_bytes`].
pub const BATCH_PREFIX_BYTES: usize = 4;

/// Most transfers, accounts or ids in one forwarded request or reply: a client batch's limit.
pub const ITEMS_PER_FORWARD_MAX: usize = BATCH_ITEMS_MAX;
/// Most entries in one Append message.
pub const ENTRIES_PER_MESSAGE_MAX: usize = 1 << 20;
/// Most items in one batch body.
pub const PEER_ITEMS_PER_BATCH_MAX: usize = 1 << 20;
/// Items a decoder reserves room for before it has decoded them.
const PEER_ITEMS_PREALLOCATED_MAX: usize = 1024;

const TAG_BYTES: usize = 1;
const MESSAGE_PREFIX_BYTES: usize = 8 + 8 + 8 + TAG_BYTES;
/// An entry with a Noop payload.
const ENTRY_BYTES_MIN: usize = 8 + 8 + TAG_BYTES;
/// The smallest item: a TermProbe.
const PEER_ITEM_BYTES_MIN: usize = TAG_BYTES + 4;
const NODE_ID_BYTES: usize = 8;
const TERM_BYTES: usize = 8;
const ERROR_CODE_BYTES: usize = 2;

const ITEM_RAFT: u8 = 0;
const ITEM_FORWARD: u8 = 1;
const ITEM_FORWARD_REPLY: u8 = 2;
const ITEM_TERM_PROBE: u8 = 3;
const ITEM_TERM_REPORT: u8 = 4;
const ITEM_SNAPSHOT_CHUNK: u8 = 5;
const ITEM_SNAPSHOT_ACK: u8 = 6;

const BODY_VOTE_REQUEST: u8 = 0;
const BODY_VOTE_RESPONSE: u8 = 1;
const BODY_APPEND: u8 = 2;
const BODY_APPEND_RESPONSE: u8 = 3;
const BODY_HEARTBEAT: u8 = 4;
const BODY_HEARTBEAT_RESPONSE: u8 = 5;
/// Reserved: `MessageBody::Snapshot` travels as [`PeerItem::SnapshotChunk`]s.
const BODY_SNAPSHOT: u8 = 6;
const BODY_TIMEOUT_NOW: u8 = 7;

const PAYLOAD_NOOP: u8 = 0;
const PAYLOAD_DATA: u8 = 1;
const PAYLOAD_CONF_CHANGE: u8 = 2;

const CONF_ADD_VOTER: u8 = 0;
const CONF_ADD_LEARNER: u8 = 1;
const CONF_REMOVE: u8 = 2;

const REQUEST_TRANSFERS: u8 = 0;
const REQUEST_CREATE_ACCOUNTS: u8 = 1;
const REQUEST_LOOKUP: u8 = 2;
const REQUEST_LOOKUP_TRANSFERS: u8 = 3;

const CONSISTENCY_LINEARIZABLE: u8 = 0;
const CONSISTENCY_AT_LEAST: u8 = 1;
const CONSISTENCY_ANY: u8 = 2;

const REPLY_RESULTS: u8 = 0;
const REPLY_ACCOUNTS: u8 = 1;
const REPLY_ERROR: u8 = 2;
const REPLY_TRANSFERS: u8 = 3;

/// One unit of node-to-node traffic; a batch body holds any mix of them.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerItem {
    /// A Raft message of one partition's group.
    Raft {
        partition: u32,
        message: raft::Message,
    },
    /// A client request handed to the partition's leader; answered by a `ForwardReply` with the same
    /// `request_id` (chosen by `from_node`, unique among its outstanding forwards).
    Forward {
        request_id: u64,
        from_node: u64,
        partition: u32,
        request: ForwardRequest,
    },
    ForwardReply {
        request_id: u64,
        partition: u32,
        reply: ForwardReply,
    },
    /// From a replica rebuilt from nothing (`walletd --rejoin`): "what are your term and commit index
    /// for this partition?" Answered by a `TermReport` from every replica that has its state.
    TermProbe {
        partition: u32,
    },
    TermReport {
        partition: u32,
        term: u64,
        commit: u64,
        last_index: u64,
        /// The answering replica is the leader of `term`: its log holds every entry that can have been
        /// committed, so its last index is all the rejoining replica must reach.
        leads: bool,
    },
    /// A part of a Raft snapshot message (`MessageBody::Snapshot`), which travels cut into chunks of at
    /// most `replication.snapshot_chunk_bytes`, a bounded number in flight per follower, never as one
    /// message (an image is hundreds of MB; see `core::snapshot_transfer`).
    SnapshotChunk {
        partition: u32,
        chunk: SnapshotChunk,
    },
    /// From the receiver of a snapshot's chunks: every byte before `received` of the snapshot at
    /// `index` sent in `term` has arrived.
    SnapshotAck {
        partition: u32,
        term: u64,
        index: u64,
        received: u64,
    },
}

/// One chunk of a snapshot message from `from` to `to` in Raft term `term`. Every chunk of a snapshot
/// carries its whole header (the snapshot's meta, its total size, the chunk size), so chunks may arrive
/// in any order and a receiver can tell a chunk of a newer snapshot from one of the snapshot it holds.
/// Chunk `k` starts at `k * chunk_bytes`; every chunk is `chunk_bytes` long but the last.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotChunk {
    pub from: u64,
    pub to: u64,
    pub term: u64,
    pub meta: SnapshotMeta,
    pub total_bytes: u64,
    pub chunk_bytes: u32,
    pub offset: u64,
    pub bytes: ImageSlice,
}

/// Bytes of a snapshot image, shared with the image they were cut from: a leader sending a
/// follower an image of hundreds of MB copies none of it before the frame is encoded.
#[derive(Clone)]
pub struct ImageSlice {
    image: raft::SnapshotData,
    start: usize,
    end: usize,
}

impl ImageSlice {
    /// `image[range]`; the range must lie within the image.
    pub fn new(image: raft::SnapshotData, range: std::ops::Range<usize>) -> ImageSlice {
        assert!(range.start <= range.end && range.end <= image.len(), "a slice within its image");
        ImageSlice { image, start: range.start, end: range.end }
    }

    pub fn owned(bytes: Vec<u8>) -> ImageSlice {
        let end = bytes.len();
        ImageSlice { image: std::sync::Arc::new(bytes), start: 0, end }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.image[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl PartialEq for ImageSlice {
    fn eq(&self, other: &ImageSlice) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for ImageSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageSlice({} bytes)", self.len())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ForwardRequest {
    Transfers(Vec<Transfer>),
    CreateAccounts(Vec<CreateAccount>),
    Lookup {
        consistency: Consistency,
        ids: Vec<u64>,
    },
    /// What became of each transfer id in this partition (read linearizably, like every transfer lookup).
    LookupTransfers {
        ids: Vec<u128>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum ForwardReply {
    Results(Vec<ItemResult>),
    Accounts(Vec<Option<Account>>),
    /// One per id asked, in order: `None` when the partition does not hold it; never `NotFound`.
    Transfers(Vec<Option<TransferLookup>>),
    /// `code` is a `net::protocol::ErrorCode` number; message at most `ERROR_MESSAGE_BYTES_MAX` bytes
    /// (the encoder truncates a longer one at a character boundary).
    /// `leader`: for `NotLeader`, the node the answering replica believes leads (0 = unknown), so the
    /// sender can go there next instead of guessing; `term`: the Raft term in which it believes so (0
    /// for other codes), so a sender whose own replica knows a leader in a later term ignores the name.
    Error {
        code: u16,
        leader: u64,
        term: u64,
        message: String,
    },
}

/// Why bytes are not a valid body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("body ends inside a field")]
    Truncated,
    #[error("bytes after the last field")]
    TrailingBytes,
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u16 },
    #[error("{count} {what} exceed the limit of {limit}")]
    TooMany { what: &'static str, count: u64, limit: usize },
    #[error("invalid body: {0}")]
    Invalid(&'static str),
}

pub fn encode_hello(hello: &Hello, out: &mut Vec<u8>) {
    assert_ne!(hello.node_id, 0, "node id 0 is reserved");
    out.extend_from_slice(&hello.node_id.to_le_bytes());
    out.extend_from_slice(&hello.wire_version.to_le_bytes());
    out.extend_from_slice(&hello.settings_digest.to_le_bytes());
}

pub fn decode_hello(body: &[u8]) -> Result<Hello, WireError> {
    let mut reader = Reader::new(body);
    let hello = Hello { node_id: reader.u64()?, wire_version: reader.u16()?, settings_digest: reader.u64()? };
    reader.finish()?;
    if hello.node_id == 0 {
        return Err(WireError::Invalid("node id 0 is reserved"));
    }
    Ok(hello)
}

/// Appends the batch body of `items` to `out` (what was in `out` stays untouched).
pub fn encode_items(items: &[PeerItem], out: &mut Vec<u8>) {
    let bytes_expected = BATCH_PREFIX_BYTES + items.iter().map(item_encoded_bytes).sum::<usize>();
    let start = out.len();
    out.reserve(bytes_expected);
    put_count(out, items.len(), PEER_ITEMS_PER_BATCH_MAX);
    for item in items {
        put_item(out, item);
    }
    assert_eq!(out.len() - start, bytes_expected, "item_encoded_bytes disagrees with the encoder");
}

pub fn decode_items(body: &[u8]) -> Result<Vec<PeerItem>, WireError> {
    let mut reader = Reader::new(body);
    let count = reader.count("peer items", PEER_ITEMS_PER_BATCH_MAX, PEER_ITEM_BYTES_MIN)?;
    // A small item is 5 bytes on the wire but far larger in memory: grow as items actually decode.
    let mut items = Vec::with_capacity(count.min(PEER_ITEMS_PREALLOCATED_MAX));
    for _ in 0..count {
        items.push(read_item(&mut reader)?);
    }
    reader.finish()?;
    Ok(items)
}

/// Exact encoded size of one item in a batch body (so a sender can cap a frame's bytes).
pub fn item_encoded_bytes(item: &PeerItem) -> usize {
    TAG_BYTES
        + match item {
            PeerItem::Raft { message, .. } => 4 + message_bytes(message),
            PeerItem::Forward { request, .. } => 8 + 8 + 4 + request_bytes(request),
            PeerItem::ForwardReply { reply, .. } => 8 + 4 + reply_bytes(reply),
            PeerItem::TermProbe { .. } => 4,
            PeerItem::TermReport { .. } => 4 + 8 + 8 + 8 + 1,
            PeerItem::SnapshotChunk { chunk, .. } => {
                4 + 8 + 8 + 8 + 8 + 8 + conf_state_bytes(&chunk.meta.conf_state) + 8 + 4 + 8 + 8 + chunk.bytes.len()
            }
            PeerItem::SnapshotAck { .. } => 4 + 8 + 8 + 8,
        }
}

fn message_bytes(message: &Message) -> usize {
    MESSAGE_PREFIX_BYTES
        + match &message.body {
            MessageBody::VoteRequest { .. } => 1 + 8 + 8 + 1,
            MessageBody::VoteResponse { .. } => 1 + 1,
            MessageBody::Append { entries, .. } => 8 + 8 + 8 + 4 + entries.iter().map(entry_bytes).sum::<usize>(),
            MessageBody::AppendResponse { reject, .. } => 8 + 1 + if reject.is_some() { 8 + 8 } else { 0 },
            MessageBody::Heartbeat { .. } => 8 + 8 + 8,
            MessageBody::HeartbeatResponse { .. } => 8 + 8,
            MessageBody::Snapshot { .. } => panic!("{SNAPSHOT_IN_CHUNKS}"),
            MessageBody::TimeoutNow => 0,
        }
}

const SNAPSHOT_IN_CHUNKS: &str = "a Raft snapshot message travels as SnapshotChunk items, never whole";

fn conf_state_bytes(conf_state: &ConfState) -> usize {
    4 + NODE_ID_BYTES * conf_state.voters.len() + 4 + NODE_ID_BYTES * conf_state.learners.len()
}

fn entry_bytes(entry: &Entry) -> usize {
    ENTRY_BYTES_MIN
        + match &entry.payload {
            Payload::Noop => 0,
            Payload::Data(data) => 8 + data.len(),
            Payload::ConfChange(_) => TAG_BYTES + NODE_ID_BYTES,
        }
}

fn request_bytes(request: &ForwardRequest) -> usize {
    TAG_BYTES
        + match request {
            ForwardRequest::Transfers(transfers) => 4 + Transfer::WIRE_BYTES * transfers.len(),
            ForwardRequest::CreateAccounts(accounts) => 4 + CreateAccount::WIRE_BYTES * accounts.len(),
            ForwardRequest::Lookup { consistency, ids } => {
                let seq_bytes = if matches!(consistency, Consistency::AtLeast(_)) { 8 } else { 0 };
                TAG_BYTES + seq_bytes + 4 + 8 * ids.len()
            }
            ForwardRequest::LookupTransfers { ids } => 4 + 16 * ids.len(),
        }
}

fn reply_bytes(reply: &ForwardReply) -> usize {
    TAG_BYTES
        + match reply {
            ForwardReply::Results(results) => 4 + ItemResult::WIRE_BYTES * results.len(),
            ForwardReply::Accounts(accounts) => {
                4 + accounts
                    .iter()
                    .map(|account| 1 + if account.is_some() { Account::WIRE_BYTES } else { 0 })
                    .sum::<usize>()
            }
            ForwardReply::Transfers(found) => {
                4 + found
                    .iter()
                    .map(|item| 1 + if item.is_some() { TransferLookup::WIRE_BYTES } else { 0 })
                    .sum::<usize>()
            }
            ForwardReply::Error { message, .. } => {
                ERROR_CODE_BYTES
                    + NODE_ID_BYTES
                    + TERM_BYTES
                    + 4
                    + truncate_at_char_boundary(message, ERROR_MESSAGE_BYTES_MAX).len()
            }
        }
}

fn put_item(out: &mut Vec<u8>, item: &PeerItem) {
    match item {
        PeerItem::Raft { partition, message } => {
            out.push(ITEM_RAFT);
            out.extend_from_slice(&partition.to_le_bytes());
            put_message(out, message);
        }
        PeerItem::Forward { request_id, from_node, partition, request } => {
            out.push(ITEM_FORWARD);
            out.extend_from_slice(&request_id.to_le_bytes());
            out.extend_from_slice(&from_node.to_le_bytes());
            out.extend_from_slice(&partition.to_le_bytes());
            put_request(out, request);
        }
        PeerItem::ForwardReply { request_id, partition, reply } => {
            out.push(ITEM_FORWARD_REPLY);
            out.extend_from_slice(&request_id.to_le_bytes());
            out.extend_from_slice(&partition.to_le_bytes());
            put_reply(out, reply);
        }
        PeerItem::TermProbe { partition } => {
            out.push(ITEM_TERM_PROBE);
            out.extend_from_slice(&partition.to_le_bytes());
        }
        PeerItem::TermReport { partition, term, commit, last_index, leads } => {
            out.push(ITEM_TERM_REPORT);
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&commit.to_le_bytes());
            out.extend_from_slice(&last_index.to_le_bytes());
            out.push(u8::from(*leads));
        }
        PeerItem::SnapshotChunk { partition, chunk } => {
            out.push(ITEM_SNAPSHOT_CHUNK);
            out.extend_from_slice(&partition.to_le_bytes());
            for value in [chunk.from, chunk.to, chunk.term, chunk.meta.index, chunk.meta.term] {
                out.extend_from_slice(&value.to_le_bytes());
            }
            let conf_state = &chunk.meta.conf_state;
            assert!(conf_state.voters.is_disjoint(&conf_state.learners), "voters and learners overlap");
            put_node_set(out, &conf_state.voters);
            put_node_set(out, &conf_state.learners);
            out.extend_from_slice(&chunk.total_bytes.to_le_bytes());
            out.extend_from_slice(&chunk.chunk_bytes.to_le_bytes());
            out.extend_from_slice(&chunk.offset.to_le_bytes());
            out.extend_from_slice(&(chunk.bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(chunk.bytes.as_slice());
        }
        PeerItem::SnapshotAck { partition, term, index, received } => {
            out.push(ITEM_SNAPSHOT_ACK);
            out.extend_from_slice(&partition.to_le_bytes());
            for value in [*term, *index, *received] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
    }
}

fn put_message(out: &mut Vec<u8>, message: &Message) {
    for value in [message.from, message.to, message.term] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    match &message.body {
        MessageBody::VoteRequest { pre_vote, last_log_index, last_log_term, transfer } => {
            out.push(BODY_VOTE_REQUEST);
            out.push(u8::from(*pre_vote));
            out.extend_from_slice(&last_log_index.to_le_bytes());
            out.extend_from_slice(&last_log_term.to_le_bytes());
            out.push(u8::from(*transfer));
        }
        MessageBody::VoteResponse { pre_vote, granted } => {
            out.push(BODY_VOTE_RESPONSE);
            out.push(u8::from(*pre_vote));
            out.push(u8::from(*granted));
        }
        MessageBody::Append { prev_log_index, prev_log_term, entries, commit } => {
            out.push(BODY_APPEND);
            for value in [*prev_log_index, *prev_log_term, *commit] {
                out.extend_from_slice(&value.to_le_bytes());
            }
            put_count(out, entries.len(), ENTRIES_PER_MESSAGE_MAX);
            entries.iter().for_each(|entry| put_entry(out, entry));
        }
        MessageBody::AppendResponse { index, reject } => {
            out.push(BODY_APPEND_RESPONSE);
            out.extend_from_slice(&index.to_le_bytes());
            out.push(u8::from(reject.is_some()));
            if let Some(hint) = reject {
                out.extend_from_slice(&hint.index.to_le_bytes());
                out.extend_from_slice(&hint.term.to_le_bytes());
            }
        }
        MessageBody::Heartbeat { commit, read_seq, lease_tick } => {
            out.push(BODY_HEARTBEAT);
            for value in [*commit, *read_seq, *lease_tick] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        MessageBody::HeartbeatResponse { read_seq, lease_tick } => {
            out.push(BODY_HEARTBEAT_RESPONSE);
            out.extend_from_slice(&read_seq.to_le_bytes());
            out.extend_from_slice(&lease_tick.to_le_bytes());
        }
        MessageBody::Snapshot { .. } => panic!("{SNAPSHOT_IN_CHUNKS}"),
        MessageBody::TimeoutNow => out.push(BODY_TIMEOUT_NOW),
    }
}

fn put_entry(out: &mut Vec<u8>, entry: &Entry) {
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    match &entry.payload {
        Payload::Noop => out.push(PAYLOAD_NOOP),
        Payload::Data(data) => {
            out.push(PAYLOAD_DATA);
            out.extend_from_slice(&(data.len() as u64).to_le_bytes());
            out.extend_from_slice(data);
        }
        Payload::ConfChange(change) => {
            out.push(PAYLOAD_CONF_CHANGE);
            out.push(match change.kind {
                ConfChangeKind::AddVoter => CONF_ADD_VOTER,
                ConfChangeKind::AddLearner => CONF_ADD_LEARNER,
                ConfChangeKind::Remove => CONF_REMOVE,
            });
            out.extend_from_slice(&change.node.to_le_bytes());
        }
    }
}

fn put_node_set(out: &mut Vec<u8>, nodes: &BTreeSet<u64>) {
    put_count(out, nodes.len(), u32::MAX as usize);
    // A BTreeSet iterates in ascending order: the canonical order the decoder requires.
    nodes.iter().for_each(|node| out.extend_from_slice(&node.to_le_bytes()));
}

fn put_request(out: &mut Vec<u8>, request: &ForwardRequest) {
    match request {
        ForwardRequest::Transfers(transfers) => {
            out.push(REQUEST_TRANSFERS);
            put_count(out, transfers.len(), ITEMS_PER_FORWARD_MAX);
            for transfer in transfers {
                let start = out.len();
                out.resize(start + Transfer::WIRE_BYTES, 0);
                transfer.encode_into(&mut out[start..]);
            }
        }
        ForwardRequest::CreateAccounts(accounts) => {
            out.push(REQUEST_CREATE_ACCOUNTS);
            put_count(out, accounts.len(), ITEMS_PER_FORWARD_MAX);
            for account in accounts {
                let start = out.len();
                out.resize(start + CreateAccount::WIRE_BYTES, 0);
                account.encode_into(&mut out[start..]);
            }
        }
        ForwardRequest::Lookup { consistency, ids } => {
            out.push(REQUEST_LOOKUP);
            match consistency {
                Consistency::Linearizable => out.push(CONSISTENCY_LINEARIZABLE),
                Consistency::AtLeast(seq) => {
                    out.push(CONSISTENCY_AT_LEAST);
                    out.extend_from_slice(&seq.to_le_bytes());
                }
                Consistency::Any => out.push(CONSISTENCY_ANY),
            }
            put_count(out, ids.len(), ITEMS_PER_FORWARD_MAX);
            ids.iter().for_each(|id| out.extend_from_slice(&id.to_le_bytes()));
        }
        ForwardRequest::LookupTransfers { ids } => {
            out.push(REQUEST_LOOKUP_TRANSFERS);
            put_count(out, ids.len(), ITEMS_PER_FORWARD_MAX);
            ids.iter().for_each(|id| out.extend_from_slice(&id.to_le_bytes()));
        }
    }
}

fn put_reply(out: &mut Vec<u8>, reply: &ForwardReply) {
    match reply {
        ForwardReply::Results(results) => {
            out.push(REPLY_RESULTS);
            put_count(out, results.len(), ITEMS_PER_FORWARD_MAX);
            for result in results {
                let start = out.len();
                out.resize(start + ItemResult::WIRE_BYTES, 0);
                result.encode_into(&mut out[start..]);
            }
        }
        ForwardReply::Accounts(accounts) => {
            out.push(REPLY_ACCOUNTS);
            put_count(out, accounts.len(), ITEMS_PER_FORWARD_MAX);
            for account in accounts {
                out.push(u8::from(account.is_some()));
                if let Some(account) = account {
                    let start = out.len();
                    out.resize(start + Account::WIRE_BYTES, 0);
                    account.encode_into(&mut out[start..]);
                }
            }
        }
        ForwardReply::Transfers(found) => {
            out.push(REPLY_TRANSFERS);
            put_count(out, found.len(), ITEMS_PER_FORWARD_MAX);
            for item in found {
                out.push(u8::from(item.is_some()));
                if let Some(item) = item {
                    assert!(
                        !matches!(item, TransferLookup::NotFound { .. }),
                        "a transfer the partition does not hold travels as absent"
                    );
                    let start = out.len();
                    out.resize(start + TransferLookup::WIRE_BYTES, 0);
                    item.encode_into(&mut out[start..]);
                }
            }
        }
        ForwardReply::Error { code, leader, term, message } => {
            assert!(ErrorCode::from_u16(*code).is_some(), "error code {code} is not an ErrorCode");
            let message = truncate_at_char_boundary(message, ERROR_MESSAGE_BYTES_MAX);
            out.push(REPLY_ERROR);
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&leader.to_le_bytes());
            out.extend_from_slice(&term.to_le_bytes());
            out.extend_from_slice(&(message.len() as u32).to_le_bytes());
            out.extend_from_slice(message.as_bytes());
        }
    }
}

/// Writes a count, which the caller must keep within the limit the decoder enforces.
fn put_count(out: &mut Vec<u8>, count: usize, limit: usize) {
    assert!(count <= limit, "{count} items exceed the wire limit of {limit}");
    let count = u32::try_from(count).expect("every limit fits in u32");
    out.extend_from_slice(&count.to_le_bytes());
}

// The readers below fill struct fields straight from the reader: a struct expression evaluates its
// fields in the order written, which is the wire order.
fn read_item(reader: &mut Reader<'_>) -> Result<PeerItem, WireError> {
    match reader.u8()? {
        ITEM_RAFT => Ok(PeerItem::Raft { partition: reader.u32()?, message: read_message(reader)? }),
        ITEM_FORWARD => Ok(PeerItem::Forward {
            request_id: reader.u64()?,
            from_node: reader.u64()?,
            partition: reader.u32()?,
            request: read_request(reader)?,
        }),
        ITEM_FORWARD_REPLY => Ok(PeerItem::ForwardReply {
            request_id: reader.u64()?,
            partition: reader.u32()?,
            reply: read_reply(reader)?,
        }),
        ITEM_TERM_PROBE => Ok(PeerItem::TermProbe { partition: reader.u32()? }),
        ITEM_TERM_REPORT => Ok(PeerItem::TermReport {
            partition: reader.u32()?,
            term: reader.u64()?,
            commit: reader.u64()?,
            last_index: reader.u64()?,
            leads: reader.bool()?,
        }),
        ITEM_SNAPSHOT_CHUNK => Ok(PeerItem::SnapshotChunk { partition: reader.u32()?, chunk: read_chunk(reader)? }),
        ITEM_SNAPSHOT_ACK => Ok(PeerItem::SnapshotAck {
            partition: reader.u32()?,
            term: reader.u64()?,
            index: reader.u64()?,
            received: reader.u64()?,
        }),
        tag => Err(WireError::UnknownTag { what: "peer item", tag: tag.into() }),
    }
}

fn read_message(reader: &mut Reader<'_>) -> Result<Message, WireError> {
    let from = reader.u64()?;
    let to = reader.u64()?;
    let term = reader.u64()?;
    let body = match reader.u8()? {
        BODY_VOTE_REQUEST => MessageBody::VoteRequest {
            pre_vote: reader.bool()?,
            last_log_index: reader.u64()?,
            last_log_term: reader.u64()?,
            transfer: reader.bool()?,
        },
        BODY_VOTE_RESPONSE => MessageBody::VoteResponse { pre_vote: reader.bool()?, granted: reader.bool()? },
        BODY_APPEND => {
            let prev_log_index = reader.u64()?;
            let prev_log_term = reader.u64()?;
            let commit = reader.u64()?;
            let count = reader.count("entries", ENTRIES_PER_MESSAGE_MAX, ENTRY_BYTES_MIN)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                entries.push(read_entry(reader)?);
            }
            MessageBody::Append { prev_log_index, prev_log_term, entries, commit }
        }
        BODY_APPEND_RESPONSE => {
            let index = reader.u64()?;
            let reject =
                if reader.bool()? { Some(RejectHint { index: reader.u64()?, term: reader.u64()? }) } else { None };
            MessageBody::AppendResponse { index, reject }
        }
        BODY_HEARTBEAT => {
            MessageBody::Heartbeat { commit: reader.u64()?, read_seq: reader.u64()?, lease_tick: reader.u64()? }
        }
        BODY_HEARTBEAT_RESPONSE => {
            MessageBody::HeartbeatResponse { read_seq: reader.u64()?, lease_tick: reader.u64()? }
        }
        BODY_SNAPSHOT => return Err(WireError::Invalid(SNAPSHOT_IN_CHUNKS)),
        BODY_TIMEOUT_NOW => MessageBody::TimeoutNow,
        tag => return Err(WireError::UnknownTag { what: "raft message body", tag: tag.into() }),
    };
    Ok(Message { from, to, term, body })
}

fn read_entry(reader: &mut Reader<'_>) -> Result<Entry, WireError> {
    let index = reader.u64()?;
    let term = reader.u64()?;
    let payload = match reader.u8()? {
        PAYLOAD_NOOP => Payload::Noop,
        PAYLOAD_DATA => Payload::data(reader.data()?.to_vec()),
        PAYLOAD_CONF_CHANGE => {
            let kind = match reader.u8()? {
                CONF_ADD_VOTER => ConfChangeKind::AddVoter,
                CONF_ADD_LEARNER => ConfChangeKind::AddLearner,
                CONF_REMOVE => ConfChangeKind::Remove,
                tag => return Err(WireError::UnknownTag { what: "conf change kind", tag: tag.into() }),
            };
            Payload::ConfChange(ConfChange { kind, node: reader.u64()? })
        }
        tag => return Err(WireError::UnknownTag { what: "entry payload", tag: tag.into() }),
    };
    Ok(Entry { index, term, payload })
}

/// A chunk whose place and size agree with its header: `chunk_bytes` > 0, `offset` a multiple of it
/// and below `total_bytes`, and the data exactly a chunk long (shorter only as the last).
fn read_chunk(reader: &mut Reader<'_>) -> Result<SnapshotChunk, WireError> {
    let (from, to, term) = (reader.u64()?, reader.u64()?, reader.u64()?);
    let (index, snapshot_term) = (reader.u64()?, reader.u64()?);
    let voters = read_node_set(reader)?;
    let learners = read_node_set(reader)?;
    if !voters.is_disjoint(&learners) {
        return Err(WireError::Invalid("a node is both a voter and a learner"));
    }
    let meta = SnapshotMeta { index, term: snapshot_term, conf_state: ConfState { voters, learners } };
    let total_bytes = reader.u64()?;
    let chunk_bytes = reader.u32()?;
    let offset = reader.u64()?;
    let data = reader.data()?;
    if chunk_bytes == 0 || offset % u64::from(chunk_bytes) != 0 || offset >= total_bytes {
        return Err(WireError::Invalid("a snapshot chunk outside its image"));
    }
    if data.len() as u64 != u64::from(chunk_bytes).min(total_bytes - offset) {
        return Err(WireError::Invalid("a snapshot chunk of the wrong length"));
    }
    let bytes = ImageSlice::owned(data.to_vec());
    Ok(SnapshotChunk { from, to, term, meta, total_bytes, chunk_bytes, offset, bytes })
}

fn read_node_set(reader: &mut Reader<'_>) -> Result<BTreeSet<u64>, WireError> {
    // No limit of its own: the bytes left bound it, and a BTreeSet reserves nothing up front.
    let count = reader.count("members", u32::MAX as usize, NODE_ID_BYTES)?;
    let mut nodes = BTreeSet::new();
    let mut previous = None;
    for _ in 0..count {
        let node = reader.u64()?;
        if previous.is_some_and(|previous| node <= previous) {
            return Err(WireError::Invalid("member ids are not strictly ascending"));
        }
        previous = Some(node);
        nodes.insert(node);
    }
    Ok(nodes)
}

fn read_request(reader: &mut Reader<'_>) -> Result<ForwardRequest, WireError> {
    match reader.u8()? {
        REQUEST_TRANSFERS => {
            let bytes = reader.fixed_items("transfers", Transfer::WIRE_BYTES)?;
            Ok(ForwardRequest::Transfers(bytes.chunks_exact(Transfer::WIRE_BYTES).map(Transfer::decode).collect()))
        }
        REQUEST_CREATE_ACCOUNTS => {
            let bytes = reader.fixed_items("create accounts", CreateAccount::WIRE_BYTES)?;
            let accounts = bytes.chunks_exact(CreateAccount::WIRE_BYTES).map(CreateAccount::decode).collect();
            Ok(ForwardRequest::CreateAccounts(accounts))
        }
        REQUEST_LOOKUP => {
            let consistency = match reader.u8()? {
                CONSISTENCY_LINEARIZABLE => Consistency::Linearizable,
                CONSISTENCY_AT_LEAST => Consistency::AtLeast(reader.u64()?),
                CONSISTENCY_ANY => Consistency::Any,
                tag => return Err(WireError::UnknownTag { what: "consistency", tag: tag.into() }),
            };
            let bytes = reader.fixed_items("lookup ids", 8)?;
            let ids =
                bytes.chunks_exact(8).map(|id| u64::from_le_bytes(id.try_into().expect("8-byte chunk"))).collect();
            Ok(ForwardRequest::Lookup { consistency, ids })
        }
        REQUEST_LOOKUP_TRANSFERS => {
            let bytes = reader.fixed_items("transfer lookup ids", 16)?;
            let ids =
                bytes.chunks_exact(16).map(|id| u128::from_le_bytes(id.try_into().expect("16-byte chunk"))).collect();
            Ok(ForwardRequest::LookupTransfers { ids })
        }
        tag => Err(WireError::UnknownTag { what: "forward request", tag: tag.into() }),
    }
}

fn read_reply(reader: &mut Reader<'_>) -> Result<ForwardReply, WireError> {
    match reader.u8()? {
        REPLY_RESULTS => {
            let bytes = reader.fixed_items("results", ItemResult::WIRE_BYTES)?;
            let mut results = Vec::with_capacity(bytes.len() / ItemResult::WIRE_BYTES);
            for chunk in bytes.chunks_exact(ItemResult::WIRE_BYTES) {
                let code = u16::from_le_bytes([chunk[4], chunk[5]]);
                results
                    .push(ItemResult::decode(chunk).ok_or(WireError::UnknownTag { what: "result code", tag: code })?);
            }
            Ok(ForwardReply::Results(results))
        }
        REPLY_ACCOUNTS => {
            let count = reader.count("accounts", ITEMS_PER_FORWARD_MAX, 1)?;
            let mut accounts = Vec::with_capacity(count);
            for _ in 0..count {
                let account =
                    if reader.bool()? { Some(Account::decode(reader.take(Account::WIRE_BYTES)?)) } else { None };
                accounts.push(account);
            }
            Ok(ForwardReply::Accounts(accounts))
        }
        REPLY_TRANSFERS => {
            let count = reader.count("transfer lookups", ITEMS_PER_FORWARD_MAX, 1)?;
            let mut found = Vec::with_capacity(count);
            for _ in 0..count {
                if !reader.bool()? {
                    found.push(None);
                    continue;
                }
                match TransferLookup::decode(reader.take(TransferLookup::WIRE_BYTES)?) {
                    Ok(TransferLookup::NotFound { .. }) => {
                        return Err(WireError::Invalid("a present transfer lookup says not found"))
                    }
                    Ok(item) => found.push(Some(item)),
                    Err(net::protocol::ProtocolError::Malformed(why)) => return Err(WireError::Invalid(why)),
                    Err(_) => return Err(WireError::Invalid("malformed transfer lookup")),
                }
            }
            Ok(ForwardReply::Transfers(found))
        }
        REPLY_ERROR => {
            let code = reader.u16()?;
            if ErrorCode::from_u16(code).is_none() {
                return Err(WireError::UnknownTag { what: "error code", tag: code });
            }
            let leader = reader.u64()?;
            let term = reader.u64()?;
            let bytes = reader.u32()? as usize;
            if bytes > ERROR_MESSAGE_BYTES_MAX {
                return Err(WireError::TooMany {
                    what: "error message bytes",
                    count: bytes as u64,
                    limit: ERROR_MESSAGE_BYTES_MAX,
                });
            }
            let message = std::str::from_utf8(reader.take(bytes)?)
                .map_err(|_| WireError::Invalid("error message is not UTF-8"))?
                .to_owned();
            Ok(ForwardReply::Error { code, leader, term, message })
        }
        tag => Err(WireError::UnknownTag { what: "forward reply", tag: tag.into() }),
    }
}

/// Reads fields front to back; every read checks the bytes left first.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { rest: bytes }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        if count > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.rest.split_at(count);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("take returned exactly N bytes"))
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("a boolean byte is neither 0 nor 1")),
        }
    }

    /// A u32 count of things each at least `item_bytes_min` long: within `limit`, and no more than the
    /// bytes left could hold, so the caller may reserve that many.
    fn count(&mut self, what: &'static str, limit: usize, item_bytes_min: usize) -> Result<usize, WireError> {
        let count = self.u32()?;
        if count as u64 > limit as u64 {
            return Err(WireError::TooMany { what, count: count.into(), limit });
        }
        let count = count as usize;
        if count.saturating_mul(item_bytes_min) > self.rest.len() {
            return Err(WireError::Truncated);
        }
        Ok(count)
    }

    /// A u32 count within [`ITEMS_PER_FORWARD_MAX`], then that many items of `item_bytes` each.
    fn fixed_items(&mut self, what: &'static str, item_bytes: usize) -> Result<&'a [u8], WireError> {
        let count = self.count(what, ITEMS_PER_FORWARD_MAX, item_bytes)?;
        self.take(count * item_bytes)
    }

    /// A u64 length, then that many bytes.
    fn data(&mut self) -> Result<&'a [u8], WireError> {
        let bytes = usize::try_from(self.u64()?).map_err(|_| WireError::Truncated)?;
        self.take(bytes)
    }

    fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::types::ResultCode;
    use proptest::prelude::*;

    fn arb_payload() -> impl Strategy<Value = Payload> {
        let kind =
            prop_oneof![Just(ConfChangeKind::AddVoter), Just(ConfChangeKind::AddLearner), Just(ConfChangeKind::Remove)];
        prop_oneof![
            Just(Payload::Noop),
            prop::collection::vec(any::<u8>(), 0..48).prop_map(Payload::data),
            (kind, any::<u64>()).prop_map(|(kind, node)| Payload::ConfChange(ConfChange { kind, node })),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (any::<u64>(), any::<u64>(), arb_payload()).prop_map(|(index, term, payload)| Entry { index, term, payload })
    }

    fn arb_conf_state() -> impl Strategy<Value = ConfState> {
        let nodes = || prop::collection::btree_set(1..12u64, 0..6);
        (nodes(), nodes()).prop_map(|(voters, learners)| {
            let learners = learners.difference(&voters).copied().collect();
            ConfState { voters, learners }
        })
    }

    fn arb_body() -> impl Strategy<Value = MessageBody> {
        let hint = (any::<u64>(), any::<u64>()).prop_map(|(index, term)| RejectHint { index, term });
        prop_oneof![
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(pre_vote, last_log_index, last_log_term, transfer)| MessageBody::VoteRequest {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    transfer
                }
            ),
            (any::<bool>(), any::<bool>())
                .prop_map(|(pre_vote, granted)| MessageBody::VoteResponse { pre_vote, granted }),
            (any::<u64>(), any::<u64>(), prop::collection::vec(arb_entry(), 0..6), any::<u64>()).prop_map(
                |(prev_log_index, prev_log_term, entries, commit)| MessageBody::Append {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    commit
                }
            ),
            (any::<u64>(), prop::option::of(hint))
                .prop_map(|(index, reject)| MessageBody::AppendResponse { index, reject }),
            (any::<u64>(), any::<u64>(), any::<u64>())
                .prop_map(|(commit, read_seq, lease_tick)| MessageBody::Heartbeat { commit, read_seq, lease_tick }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(read_seq, lease_tick)| MessageBody::HeartbeatResponse { read_seq, lease_tick }),
            Just(MessageBody::TimeoutNow),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_body()).prop_map(|(from, to, term, body)| Message {
            from,
            to,
            term,
            body,
        })
    }

    fn arb_transfer() -> impl Strategy<Value = Transfer> {
        (any::<u128>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), any::<u128>()).prop_map(
            |(id, debit_account_id, credit_account_id, amount, ledger, flags, user_data)| Transfer {
                id,
                debit_account_id,
                credit_account_id,
                amount,
                ledger,
                flags,
                user_data,
            },
        )
    }

    fn arb_account() -> impl Strategy<Value = Account> {
        (any::<u64>(), any::<u32>(), any::<u32>(), any::<u128>(), any::<i64>(), any::<u64>(), any::<u64>()).prop_map(
            |(id, ledger, flags, user_data, balance, created_seq, last_seq)| Account {
                id,
                ledger,
                flags,
                user_data,
                balance,
                created_seq,
                last_seq,
            },
        )
    }

    fn arb_request() -> impl Strategy<Value = ForwardRequest> {
        let create_account = (any::<u64>(), any::<u32>(), any::<u32>(), any::<u128>())
            .prop_map(|(id, ledger, flags, user_data)| CreateAccount { id, ledger, flags, user_data });
        let consistency = prop_oneof![
            Just(Consistency::Linearizable),
            any::<u64>().prop_map(Consistency::AtLeast),
            Just(Consistency::Any),
        ];
        prop_oneof![
            prop::collection::vec(arb_transfer(), 0..8).prop_map(ForwardRequest::Transfers),
            prop::collection::vec(create_account, 0..8).prop_map(ForwardRequest::CreateAccounts),
            (consistency, prop::collection::vec(any::<u64>(), 0..8))
                .prop_map(|(consistency, ids)| ForwardRequest::Lookup { consistency, ids }),
            prop::collection::vec(any::<u128>(), 0..8).prop_map(|ids| ForwardRequest::LookupTransfers { ids }),
        ]
    }

    fn arb_transfer_lookup() -> impl Strategy<Value = TransferLookup> {
        let code = (0..ResultCode::ALL.len()).prop_map(|i| ResultCode::ALL[i]);
        prop_oneof![
            (arb_transfer(), code.clone(), any::<u64>(), any::<u64>()).prop_map(
                |(transfer, code, seq, timestamp_ns)| TransferLookup::Found { transfer, code, seq, timestamp_ns }
            ),
            (any::<u128>(), code, any::<u64>(), any::<u64>()).prop_map(|(id, code, seq, timestamp_ns)| {
                TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns }
            }),
        ]
    }

    fn arb_reply() -> impl Strategy<Value = ForwardReply> {
        let code = (0..ResultCode::ALL.len()).prop_map(|i| ResultCode::ALL[i]);
        let result = (any::<u32>(), code, any::<u16>(), any::<u64>())
            .prop_map(|(index, code, flags, seq)| ItemResult { index, code, flags, seq });
        prop_oneof![
            prop::collection::vec(result, 0..8).prop_map(ForwardReply::Results),
            prop::collection::vec(prop::option::of(arb_account()), 0..8).prop_map(ForwardReply::Accounts),
            prop::collection::vec(prop::option::of(arb_transfer_lookup()), 0..8).prop_map(ForwardReply::Transfers),
            ((0..ErrorCode::ALL.len()), any::<u64>(), any::<u64>(), "[a-zé€ ]{0,40}").prop_map(
                |(i, leader, term, message)| ForwardReply::Error {
                    code: ErrorCode::ALL[i] as u16,
                    leader,
                    term,
                    message
                }
            ),
        ]
    }

    fn arb_item() -> impl Strategy<Value = PeerItem> {
        prop_oneof![
            (any::<u32>(), arb_message()).prop_map(|(partition, message)| PeerItem::Raft { partition, message }),
            (any::<u64>(), any::<u64>(), any::<u32>(), arb_request()).prop_map(
                |(request_id, from_node, partition, request)| PeerItem::Forward {
                    request_id,
                    from_node,
                    partition,
                    request
                }
            ),
            (any::<u64>(), any::<u32>(), arb_reply())
                .prop_map(|(request_id, partition, reply)| PeerItem::ForwardReply { request_id, partition, reply }),
            any::<u32>().prop_map(|partition| PeerItem::TermProbe { partition }),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(partition, term, commit, last_index, leads)| {
                    PeerItem::TermReport { partition, term, commit, last_index, leads }
                }
            ),
            (any::<u32>(), arb_chunk()).prop_map(|(partition, chunk)| PeerItem::SnapshotChunk { partition, chunk }),
            (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(partition, term, index, received)| {
                PeerItem::SnapshotAck { partition, term, index, received }
            }),
        ]
    }

    /// A valid chunk: somewhere in an image of `total_bytes`, exactly as long as its place allows.
    fn arb_chunk() -> impl Strategy<Value = SnapshotChunk> {
        let header = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), arb_conf_state());
        (header, 1..64u32, 1..400u64, any::<u64>(), any::<u8>()).prop_map(
            |((from, to, term, index, snapshot_term, conf_state), chunk_bytes, total_bytes, pick, fill)| {
                let chunks = total_bytes.div_ceil(u64::from(chunk_bytes));
                let offset = pick % chunks * u64::from(chunk_bytes);
                let len = u64::from(chunk_bytes).min(total_bytes - offset) as usize;
                SnapshotChunk {
                    from,
                    to,
                    term,
                    meta: SnapshotMeta { index, term: snapshot_term, conf_state },
                    total_bytes,
                    chunk_bytes,
                    offset,
                    bytes: ImageSlice::owned(vec![fill; len]),
                }
            },
        )
    }

    fn encoded(items: &[PeerItem]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_items(items, &mut out);
        out
    }

    fn raft(body: MessageBody) -> PeerItem {
        PeerItem::Raft { partition: 3, message: Message { from: 1, to: 2, term: 7, body } }
    }

    /// One item of every kind, every message body and every payload, so coverage does not rest on
    /// the random generator.
    fn one_of_each() -> Vec<PeerItem> {
        let account = Account { id: 5, ledger: 840, flags: 1, user_data: 9, balance: -3, created_seq: 1, last_seq: 2 };
        vec![
            raft(MessageBody::VoteRequest { pre_vote: true, last_log_index: 10, last_log_term: 2, transfer: false }),
            raft(MessageBody::VoteResponse { pre_vote: false, granted: true }),
            raft(MessageBody::Append {
                prev_log_index: 4,
                prev_log_term: 1,
                entries: vec![
                    Entry { index: 5, term: 2, payload: Payload::Noop },
                    Entry { index: 6, term: 2, payload: Payload::data(vec![1, 2, 3]) },
                    Entry {
                        index: 7,
                        term: 2,
                        payload: Payload::ConfChange(ConfChange { kind: ConfChangeKind::AddLearner, node: 4 }),
                    },
                ],
                commit: 5,
            }),
            raft(MessageBody::AppendResponse { index: 6, reject: None }),
            raft(MessageBody::AppendResponse { index: 6, reject: Some(RejectHint { index: 3, term: 1 }) }),
            raft(MessageBody::Heartbeat { commit: 5, read_seq: 2, lease_tick: 99 }),
            raft(MessageBody::HeartbeatResponse { read_seq: 2, lease_tick: 99 }),
            raft(MessageBody::TimeoutNow),
            PeerItem::Forward {
                request_id: 1,
                from_node: 2,
                partition: 3,
                request: ForwardRequest::Transfers(vec![Transfer { id: 1 << 80, amount: 5, ..Transfer::default() }]),
            },
            PeerItem::Forward {
                request_id: 2,
                from_node: 2,
                partition: 3,
                request: ForwardRequest::CreateAccounts(vec![CreateAccount {
                    id: 5,
                    ledger: 840,
                    flags: 0,
                    user_data: 1,
                }]),
            },
            PeerItem::Forward {
                request_id: 3,
                from_node: 2,
                partition: 3,
                request: ForwardRequest::Lookup { consistency: Consistency::AtLeast(17), ids: vec![5, 6] },
            },
            PeerItem::Forward {
                request_id: 5,
                from_node: 2,
                partition: 3,
                request: ForwardRequest::LookupTransfers { ids: vec![1 << 80, u128::MAX] },
            },
            PeerItem::ForwardReply {
                request_id: 1,
                partition: 3,
                reply: ForwardReply::Results(vec![ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq: 12 }]),
            },
            PeerItem::ForwardReply {
                request_id: 3,
                partition: 3,
                reply: ForwardReply::Accounts(vec![Some(account), None]),
            },
            PeerItem::ForwardReply {
                request_id: 5,
                partition: 3,
                reply: ForwardReply::Transfers(vec![
                    Some(TransferLookup::Found {
                        transfer: Transfer { id: 1 << 80, amount: 5, ..Transfer::default() },
                        code: ResultCode::InsufficientFunds,
                        seq: 9,
                        timestamp_ns: 17,
                    }),
                    None,
                    Some(TransferLookup::FoundWithoutFields { id: 3, code: ResultCode::Ok, seq: 2, timestamp_ns: 5 }),
                ]),
            },
            PeerItem::ForwardReply {
                request_id: 4,
                partition: 3,
                reply: ForwardReply::Error {
                    code: ErrorCode::NotLeader as u16,
                    leader: 2,
                    term: 7,
                    message: "not leader".into(),
                },
            },
            PeerItem::TermProbe { partition: 3 },
            PeerItem::TermReport { partition: 3, term: 9, commit: 41, last_index: 43, leads: true },
            PeerItem::SnapshotChunk { partition: 3, chunk: sample_chunk(32, 33) },
            PeerItem::SnapshotAck { partition: 3, term: 7, index: 40, received: 32 },
        ]
    }

    /// The last chunk (one byte) of a 33-byte image cut in chunks of 32, cut from a shared image.
    fn sample_chunk(offset: u64, total_bytes: u64) -> SnapshotChunk {
        let image: raft::SnapshotData = std::sync::Arc::new((0..total_bytes as u8).collect());
        SnapshotChunk {
            from: 1,
            to: 2,
            term: 7,
            meta: SnapshotMeta {
                index: 40,
                term: 3,
                conf_state: ConfState { voters: [1, 2, 3].into(), learners: [4].into() },
            },
            total_bytes,
            chunk_bytes: 32,
            offset,
            bytes: ImageSlice::new(image, offset as usize..total_bytes.min(offset + 32) as usize),
        }
    }

    #[test]
    fn one_of_each_round_trips_and_sizes_exactly() {
        let items = one_of_each();
        let body = encoded(&items);
        assert_eq!(body.len(), BATCH_PREFIX_BYTES + items.iter().map(item_encoded_bytes).sum::<usize>());
        assert_eq!(decode_items(&body), Ok(items.clone()));
        for item in &items {
            assert!(item_encoded_bytes(item) >= PEER_ITEM_BYTES_MIN, "{item:?} is below the minimum size");
        }
        let smallest = PeerItem::TermProbe { partition: 0 };
        assert_eq!(item_encoded_bytes(&smallest), PEER_ITEM_BYTES_MIN);
        assert_eq!(decode_items(&encoded(&[])), Ok(Vec::new()));
    }

    #[test]
    fn every_strict_prefix_of_one_of_each_is_an_error() {
        let body = encoded(&one_of_each());
        for len in 0..body.len() {
            assert!(decode_items(&body[..len]).is_err(), "prefix of {len} bytes decoded");
        }
    }

    #[test]
    fn hello_round_trips_and_rejects_bad_bodies() {
        let mut body = vec![0xEE];
        let hello = Hello { node_id: 42, wire_version: PEER_WIRE_VERSION, settings_digest: 0xfeed };
        encode_hello(&hello, &mut body);
        assert_eq!(body.len(), 1 + HELLO_BYTES);
        assert_eq!(decode_hello(&body[1..]), Ok(hello));
        assert_eq!(decode_hello(&body[1..HELLO_BYTES]), Err(WireError::Truncated));
        assert_eq!(decode_hello(&body), Err(WireError::TrailingBytes));
        assert!(matches!(decode_hello(&[0; HELLO_BYTES]), Err(WireError::Invalid(_))));
    }

    #[test]
    fn error_messages_are_truncated_at_a_char_boundary() {
        for (text, bytes_expected) in [("é".repeat(200), 256), ("€".repeat(100), 255), ("a".repeat(256), 256)] {
            let item = PeerItem::ForwardReply {
                request_id: 1,
                partition: 0,
                reply: ForwardReply::Error {
                    code: ErrorCode::Internal as u16,
                    leader: 0,
                    term: 0,
                    message: text.clone(),
                },
            };
            let body = encoded(std::slice::from_ref(&item));
            assert_eq!(body.len(), BATCH_PREFIX_BYTES + item_encoded_bytes(&item));
            let decoded = decode_items(&body).expect("valid");
            let PeerItem::ForwardReply { reply: ForwardReply::Error { message, .. }, .. } = &decoded[0] else {
                panic!("decoded {decoded:?}");
            };
            assert_eq!(message.len(), bytes_expected);
            assert!(text.starts_with(message.as_str()));
        }
    }

    /// A batch body that claims one item, made of `item_bytes`.
    fn batch_of_one(item_bytes: &[u8]) -> Vec<u8> {
        let mut body = 1u32.to_le_bytes().to_vec();
        body.extend_from_slice(item_bytes);
        body
    }

    fn raft_prefix(body_tag: u8) -> Vec<u8> {
        let mut bytes = vec![ITEM_RAFT];
        bytes.extend_from_slice(&3u32.to_le_bytes());
        for value in [1u64, 2, 7] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.push(body_tag);
        bytes
    }

    #[test]
    fn crafted_counts_are_refused_before_allocating() {
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(
            decode_items(&huge),
            Err(WireError::TooMany { what: "peer items", count: u32::MAX as u64, limit: PEER_ITEMS_PER_BATCH_MAX })
        );
        // Within the limit but more than the bytes could hold.
        let mut many = 1000u32.to_le_bytes().to_vec();
        many.extend_from_slice(&[0; 64]);
        assert_eq!(decode_items(&many), Err(WireError::Truncated));

        let mut append = raft_prefix(BODY_APPEND);
        append.extend_from_slice(&[0; 24]);
        append.extend_from_slice(&(ENTRIES_PER_MESSAGE_MAX as u32).to_le_bytes());
        assert_eq!(decode_items(&batch_of_one(&append)), Err(WireError::Truncated));

        let mut data = raft_prefix(BODY_APPEND);
        data.extend_from_slice(&[0; 24]);
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&[0; 16]);
        data.push(PAYLOAD_DATA);
        data.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode_items(&batch_of_one(&data)), Err(WireError::Truncated));

        let mut transfers = vec![ITEM_FORWARD];
        transfers.extend_from_slice(&[0; 20]);
        transfers.push(REQUEST_TRANSFERS);
        transfers.extend_from_slice(&(ITEMS_PER_FORWARD_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(decode_items(&batch_of_one(&transfers)), Err(WireError::TooMany { what: "transfers", .. })));
    }

    #[test]
    fn crafted_invalid_fields_are_typed_errors() {
        let unknown_item = batch_of_one(&[9; PEER_ITEM_BYTES_MIN]);
        assert_eq!(decode_items(&unknown_item), Err(WireError::UnknownTag { what: "peer item", tag: 9 }));

        let unknown_body = batch_of_one(&raft_prefix(8));
        assert_eq!(decode_items(&unknown_body), Err(WireError::UnknownTag { what: "raft message body", tag: 8 }));

        let mut bad_bool = raft_prefix(BODY_VOTE_RESPONSE);
        bad_bool.extend_from_slice(&[2, 0]);
        assert!(matches!(decode_items(&batch_of_one(&bad_bool)), Err(WireError::Invalid(_))));

        // A whole snapshot message never travels: only its chunks do.
        let mut whole = raft_prefix(BODY_SNAPSHOT);
        whole.extend_from_slice(&[0; 16 + 4 + 4 + 8]);
        assert_eq!(decode_items(&batch_of_one(&whole)), Err(WireError::Invalid(SNAPSHOT_IN_CHUNKS)));

        // A chunk: (voters, learners, total_bytes, chunk_bytes, offset, data length).
        let chunk = |voters: &[u64], learners: &[u64], total: u64, chunk_bytes: u32, offset: u64, len: usize| {
            let mut bytes = vec![ITEM_SNAPSHOT_CHUNK];
            bytes.extend_from_slice(&3u32.to_le_bytes());
            bytes.extend_from_slice(&[0; 40]);
            for set in [voters, learners] {
                bytes.extend_from_slice(&(set.len() as u32).to_le_bytes());
                set.iter().for_each(|node| bytes.extend_from_slice(&node.to_le_bytes()));
            }
            bytes.extend_from_slice(&total.to_le_bytes());
            bytes.extend_from_slice(&chunk_bytes.to_le_bytes());
            bytes.extend_from_slice(&offset.to_le_bytes());
            bytes.extend_from_slice(&(len as u64).to_le_bytes());
            bytes.extend_from_slice(&vec![5; len]);
            decode_items(&batch_of_one(&bytes))
        };
        assert!(chunk(&[1, 2], &[3], 33, 32, 32, 1).is_ok());
        assert!(chunk(&[1, 2], &[3], 33, 32, 0, 32).is_ok());
        assert!(matches!(chunk(&[2, 1], &[], 33, 32, 0, 32), Err(WireError::Invalid(_))));
        assert!(matches!(chunk(&[1, 1], &[], 33, 32, 0, 32), Err(WireError::Invalid(_))));
        assert!(matches!(chunk(&[1, 2], &[2], 33, 32, 0, 32), Err(WireError::Invalid(_))));
        let outside = Err(WireError::Invalid("a snapshot chunk outside its image"));
        assert_eq!(chunk(&[1], &[], 33, 0, 0, 0), outside, "chunk size 0");
        assert_eq!(chunk(&[1], &[], 33, 32, 16, 17), outside, "not at a chunk boundary");
        assert_eq!(chunk(&[1], &[], 33, 32, 64, 0), outside, "past the end");
        assert_eq!(chunk(&[1], &[], 0, 32, 0, 0), outside, "an empty image");
        let wrong_length = Err(WireError::Invalid("a snapshot chunk of the wrong length"));
        assert_eq!(chunk(&[1], &[], 33, 32, 0, 31), wrong_length, "a short chunk that is not the last");
        assert_eq!(chunk(&[1], &[], 33, 32, 32, 2), wrong_length, "a last chunk past the image");

        let reply_error = |code: u16, message: &[u8], claimed_bytes: u32| {
            let mut bytes = vec![ITEM_FORWARD_REPLY];
            bytes.extend_from_slice(&[0; 12]);
            bytes.push(REPLY_ERROR);
            bytes.extend_from_slice(&code.to_le_bytes());
            bytes.extend_from_slice(&3u64.to_le_bytes()); // leader hint
            bytes.extend_from_slice(&5u64.to_le_bytes()); // its term
            bytes.extend_from_slice(&claimed_bytes.to_le_bytes());
            bytes.extend_from_slice(message);
            decode_items(&batch_of_one(&bytes))
        };
        assert!(reply_error(ErrorCode::Internal as u16, b"ok", 2).is_ok());
        assert_eq!(reply_error(0, b"", 0), Err(WireError::UnknownTag { what: "error code", tag: 0 }));
        assert_eq!(
            reply_error(ErrorCode::Internal as u16, &[0xFF], 1),
            Err(WireError::Invalid("error message is not UTF-8"))
        );
        let long = vec![b'a'; ERROR_MESSAGE_BYTES_MAX + 1];
        assert!(matches!(
            reply_error(ErrorCode::Internal as u16, &long, long.len() as u32),
            Err(WireError::TooMany { what: "error message bytes", .. })
        ));

        let mut result = vec![ITEM_FORWARD_REPLY];
        result.extend_from_slice(&[0; 12]);
        result.push(REPLY_RESULTS);
        result.extend_from_slice(&1u32.to_le_bytes());
        let mut item = [0u8; ItemResult::WIRE_BYTES];
        item[4..6].copy_from_slice(&999u16.to_le_bytes());
        result.extend_from_slice(&item);
        assert_eq!(decode_items(&batch_of_one(&result)), Err(WireError::UnknownTag { what: "result code", tag: 999 }));
    }

    proptest! {
        #[test]
        fn items_round_trip(items in prop::collection::vec(arb_item(), 0..6)) {
            let mut out = vec![0xAA; 3]; // encoders append: prior content must survive untouched
            encode_items(&items, &mut out);
            prop_assert_eq!(&out[..3], &[0xAA; 3]);
            prop_assert_eq!(decode_items(&out[3..]), Ok(items));
        }

        #[test]
        fn every_message_round_trips(message in arb_message(), partition in any::<u32>()) {
            let item = PeerItem::Raft { partition, message };
            prop_assert_eq!(decode_items(&encoded(std::slice::from_ref(&item))), Ok(vec![item]));
        }

        #[test]
        fn item_encoded_bytes_is_exact(item in arb_item()) {
            let body = encoded(std::slice::from_ref(&item));
            prop_assert_eq!(body.len(), BATCH_PREFIX_BYTES + item_encoded_bytes(&item));
            prop_assert!(item_encoded_bytes(&item) >= PEER_ITEM_BYTES_MIN);
        }

        #[test]
        fn every_strict_prefix_is_an_error(items in prop::collection::vec(arb_item(), 1..4)) {
            let body = encoded(&items);
            for len in 0..body.len() {
                prop_assert!(decode_items(&body[..len]).is_err(), "prefix of {} bytes decoded", len);
            }
        }

        #[test]
        fn appended_bytes_are_trailing(
            items in prop::collection::vec(arb_item(), 0..4),
            garbage in prop::collection::vec(any::<u8>(), 1..16),
        ) {
            let mut body = encoded(&items);
            body.extend_from_slice(&garbage);
            prop_assert_eq!(decode_items(&body), Err(WireError::TrailingBytes));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_hello(&bytes);
            let _ = decode_items(&bytes);
            // A plausible count gets the decoder past the first field into the items.
            let _ = decode_items(&batch_of_one(&bytes));
        }

        #[test]
        fn corrupted_encodings_never_panic(
            items in prop::collection::vec(arb_item(), 1..4),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut body = encoded(&items);
            for (at, value) in flips {
                let at = at.index(body.len());
                body[at] = value;
            }
            if let Ok(decoded) = decode_items(&body) {
                // Whatever decodes is canonical: it re-encodes to the same bytes.
                prop_assert_eq!(encoded(&decoded), body);
            }
        }
    }
}
