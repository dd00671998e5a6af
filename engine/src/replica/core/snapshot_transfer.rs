//! Snapshots between replicas, in chunks. Raft hands the core a whole snapshot message for a follower
//! it cannot catch up from the log; the image in it is the partition's state (hundreds of MB for a
//! long idempotency window), far above what one peer frame may carry (`PEER_FRAME_BYTES_MAX`) and
//! long enough on the wire to hold up every other message to that peer. So a snapshot never travels
//! whole:
//!
//! - The leader cuts the image into chunks of `snapshot_chunk_bytes` ([`PeerItem::SnapshotChunk`],
//!   each a shared slice of the image, not a copy) and keeps at most `snapshot_chunks_in_flight` of
//!   them unacknowledged per follower.
//! - The follower assembles the chunks of one snapshot per group, in any order (the simulator reorders
//!   and duplicates them), acknowledges every byte received without a gap ([`PeerItem::SnapshotAck`]),
//!   and steps the assembled message into Raft, which installs it as before.
//! - A chunk lost on the way stalls the acknowledgements; Raft asks for the snapshot again after its
//!   snapshot timeout, and a sending that made no progress since the last ask resends from the last
//!   acknowledged byte. When Raft offers a newer snapshot, the sending starts over with it at once:
//!   the leader compacted its log to the newer one, so the entries after the older snapshot are gone
//!   and the follower could not continue from it (measured: finishing the older one cost a 297 MB
//!   sending and install for nothing, then a second sending).
//! - Chunks name the leader's term and the snapshot's index: a follower drops chunks of an older
//!   sending than the one it assembles, and starts over for a newer one. A sending or an assembly
//!   that sees no progress for `idle_ticks_max` ticks is dropped, and so is every sending of a leader
//!   that stops leading.
//!
//! Budget per group: sending, at most one image per follower (shared with the store's snapshot, so no
//! copy) and `snapshot_chunk_bytes` x `snapshot_chunks_in_flight` bytes queued per follower;
//! receiving, one image being assembled, at most `snapshot_bytes_max` bytes, reserved at its first
//! chunk and touched as chunks fill it.

use std::collections::BTreeMap;

use raft::{Message, MessageBody, Snapshot, SnapshotData, SnapshotMeta};

use super::{Handles, Sink};
use crate::cluster_config::ReplicationConfig;
use crate::replica::wire::{ImageSlice, PeerItem, SnapshotChunk};

/// One sending of a snapshot: the leader's term and the snapshot's index. Ordered: a later term, or a
/// later snapshot in the same term, is newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tag {
    term: u64,
    index: u64,
}

struct Outgoing {
    tag: Tag,
    from: u64,
    meta: SnapshotMeta,
    image: SnapshotData,
    chunk_bytes: u32,
    /// Bytes sent from the start: the next chunk begins here.
    sent: u64,
    /// Bytes the follower has acknowledged, from the start.
    acked: u64,
    /// `acked` when Raft last asked for this snapshot: no progress since means resend from `acked`.
    acked_at_offer: u64,
    idle_ticks: u32,
}

struct Incoming {
    from: u64,
    tag: Tag,
    meta: SnapshotMeta,
    total_bytes: u64,
    chunk_bytes: u32,
    image: Vec<u8>,
    /// Which chunks have arrived.
    got: Vec<bool>,
    /// Chunks arrived from the start without a gap.
    contiguous: usize,
    idle_ticks: u32,
}

impl Incoming {
    fn received_bytes(&self) -> u64 {
        (self.contiguous as u64 * u64::from(self.chunk_bytes)).min(self.total_bytes)
    }
}

#[derive(Default)]
pub(super) struct SnapshotTransfers {
    /// By follower.
    outgoing: BTreeMap<u64, Outgoing>,
    incoming: Option<Incoming>,
    /// The last snapshot assembled here (sender, sending, size): late copies of its chunks are
    /// acknowledged whole instead of starting another assembly.
    assembled: Option<(u64, Tag, u64)>,
}

impl SnapshotTransfers {
    /// Sends the snapshot in Raft's `message` (a `MessageBody::Snapshot` from this leader), or goes on
    /// with the sending to that follower already under way.
    pub fn offer<H: Handles>(
        &mut self,
        partition: u32,
        message: Message,
        config: &ReplicationConfig,
        sink: &mut Sink<H>,
    ) {
        let MessageBody::Snapshot { snapshot } = message.body else {
            panic!("partition {partition}: offer() takes snapshot messages only");
        };
        let Snapshot { meta, data: image } = snapshot;
        assert!(!image.is_empty(), "partition {partition}: a snapshot at index {} without an image", meta.index);
        let tag = Tag { term: message.term, index: meta.index };
        let to = message.to;
        match self.outgoing.get_mut(&to) {
            Some(out) if out.tag == tag => {
                if out.acked == out.acked_at_offer {
                    // Nothing acknowledged since Raft last asked: a chunk was lost. Resend from the gap.
                    out.sent = out.acked;
                }
                out.acked_at_offer = out.acked;
            }
            _ => {
                sink.log(
                    log::Level::Info,
                    format!(
                        "node {}: partition {partition}: sending the snapshot at index {} ({} bytes) to node {to}",
                        message.from,
                        meta.index,
                        image.len()
                    ),
                );
                let out = Outgoing {
                    tag,
                    from: message.from,
                    meta,
                    image,
                    chunk_bytes: config.snapshot_chunk_bytes,
                    sent: 0,
                    acked: 0,
                    acked_at_offer: 0,
                    idle_ticks: 0,
                };
                self.outgoing.insert(to, out);
            }
        }
        self.pump(partition, to, config, sink);
    }

    /// Chunks to `to` while its window has room.
    fn pump<H: Handles>(&mut self, partition: u32, to: u64, config: &ReplicationConfig, sink: &mut Sink<H>) {
        let Some(out) = self.outgoing.get_mut(&to) else { return };
        let total = out.image.len() as u64;
        let chunk = u64::from(out.chunk_bytes);
        let window = chunk * u64::from(config.snapshot_chunks_in_flight);
        assert!(out.acked <= out.sent && out.sent <= total, "acknowledged <= sent <= image");
        while out.sent < total && out.sent - out.acked < window {
            let end = (out.sent + chunk).min(total);
            let bytes = ImageSlice::new(out.image.clone(), out.sent as usize..end as usize);
            let item = SnapshotChunk {
                from: out.from,
                to,
                term: out.tag.term,
                meta: out.meta.clone(),
                total_bytes: total,
                chunk_bytes: out.chunk_bytes,
                offset: out.sent,
                bytes,
            };
            crate::metrics::count_snapshot_bytes_sent(end - out.sent);
            sink.send(to, PeerItem::SnapshotChunk { partition, chunk: item });
            out.sent = end;
        }
    }

    /// Follower `from` has every byte before `received` of the sending (`term`, `index`).
    pub fn on_ack<H: Handles>(
        &mut self,
        partition: u32,
        from: u64,
        (term, index, received): (u64, u64, u64),
        config: &ReplicationConfig,
        sink: &mut Sink<H>,
    ) {
        let Some(out) = self.outgoing.get_mut(&from) else { return };
        let total = out.image.len() as u64;
        if out.tag != (Tag { term, index }) || received > total {
            return;
        }
        if received > out.acked {
            out.acked = received;
            out.idle_ticks = 0;
        }
        out.sent = out.sent.max(out.acked);
        if out.acked == total {
            self.outgoing.remove(&from);
            return;
        }
        self.pump(partition, from, config, sink);
    }

    /// A chunk from node `from` (the connection's sender) for this replica, `node_id`. Returns the
    /// snapshot message once every chunk of its sending has arrived, to be stepped into Raft.
    pub fn on_chunk<H: Handles>(
        &mut self,
        partition: u32,
        (node_id, from): (u64, u64),
        chunk: SnapshotChunk,
        config: &ReplicationConfig,
        sink: &mut Sink<H>,
    ) -> Option<Message> {
        // A chunk claiming another sender or another receiver is dropped.
        if chunk.from != from || chunk.to != node_id {
            return None;
        }
        let tag = Tag { term: chunk.term, index: chunk.meta.index };
        let ack = |received: u64| PeerItem::SnapshotAck { partition, term: tag.term, index: tag.index, received };
        if self.assembled == Some((from, tag, chunk.total_bytes)) {
            sink.send(from, ack(chunk.total_bytes));
            return None;
        }
        if chunk.total_bytes > config.snapshot_bytes_max {
            if chunk.offset == 0 {
                sink.log(
                    log::Level::Warn,
                    format!(
                        "node {node_id}: partition {partition}: refusing node {from}'s snapshot at index {}: {} bytes \
                         is above snapshot_bytes_max ({})",
                        tag.index, chunk.total_bytes, config.snapshot_bytes_max
                    ),
                );
            }
            return None;
        }
        let same = |incoming: &Incoming| {
            incoming.from == from
                && incoming.tag == tag
                && incoming.total_bytes == chunk.total_bytes
                && incoming.chunk_bytes == chunk.chunk_bytes
        };
        match &self.incoming {
            Some(incoming) if same(incoming) => {}
            // Chunks of an older sending than the one being assembled: that leader has been replaced.
            Some(incoming) if tag < incoming.tag => return None,
            _ => {
                let chunks = chunk.total_bytes.div_ceil(u64::from(chunk.chunk_bytes)) as usize;
                self.incoming = Some(Incoming {
                    from,
                    tag,
                    meta: chunk.meta.clone(),
                    total_bytes: chunk.total_bytes,
                    chunk_bytes: chunk.chunk_bytes,
                    // Reserved once (at most `snapshot_bytes_max`): pages are only touched as chunks
                    // fill them, and the image is never moved by growing.
                    image: Vec::with_capacity(chunk.total_bytes as usize),
                    got: vec![false; chunks],
                    contiguous: 0,
                    idle_ticks: 0,
                });
            }
        }
        let incoming = self.incoming.as_mut().expect("set above");
        let number = (chunk.offset / u64::from(chunk.chunk_bytes)) as usize;
        assert!(number < incoming.got.len(), "the decoder checked the chunk lies within its image");
        if !incoming.got[number] {
            let start = chunk.offset as usize;
            let end = start + chunk.bytes.len();
            if incoming.image.len() == start {
                // The next chunk in order, the usual case: copied once into fresh memory (zeroing it
                // first was 18% of a catching-up follower's shard thread).
                incoming.image.extend_from_slice(chunk.bytes.as_slice());
            } else {
                if incoming.image.len() < end {
                    incoming.image.resize(end, 0);
                }
                incoming.image[start..end].copy_from_slice(chunk.bytes.as_slice());
            }
            incoming.got[number] = true;
            incoming.idle_ticks = 0;
            crate::metrics::count_snapshot_bytes_received(chunk.bytes.len() as u64);
            while incoming.got.get(incoming.contiguous) == Some(&true) {
                incoming.contiguous += 1;
            }
        }
        sink.send(from, ack(incoming.received_bytes()));
        if incoming.contiguous < incoming.got.len() {
            return None;
        }
        let incoming = self.incoming.take().expect("complete");
        assert_eq!(incoming.image.len() as u64, incoming.total_bytes, "every chunk of the image arrived");
        self.assembled = Some((from, tag, incoming.total_bytes));
        sink.log(
            log::Level::Info,
            format!(
                "node {node_id}: partition {partition}: received node {from}'s snapshot at index {} ({} bytes in {} chunks)",
                tag.index,
                incoming.total_bytes,
                incoming.got.len()
            ),
        );
        let snapshot = Snapshot { meta: incoming.meta, data: std::sync::Arc::new(incoming.image) };
        Some(Message { from, to: node_id, term: tag.term, body: MessageBody::Snapshot { snapshot } })
    }

    /// One tick: sendings and assemblies idle for more than `idle_ticks_max` ticks are dropped (a
    /// follower that died or left, a leader that did).
    pub fn tick(&mut self, idle_ticks_max: u32) {
        self.outgoing.retain(|_, out| {
            out.idle_ticks += 1;
            out.idle_ticks <= idle_ticks_max
        });
        if let Some(incoming) = self.incoming.as_mut() {
            incoming.idle_ticks += 1;
            if incoming.idle_ticks > idle_ticks_max {
                self.incoming = None;
            }
        }
    }

    /// This replica stopped leading: its sendings end (a new leader sends its own).
    pub fn stop_sending(&mut self) {
        self.outgoing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::core::{Output, PlantedBugs};

    struct NoHandles;
    impl Handles for NoHandles {
        type Items = ();
        type Lookup = ();
        type Transfers = ();
    }

    const LEADER: u64 = 1;
    const FOLLOWER: u64 = 2;

    fn sink() -> Sink<NoHandles> {
        Sink { outputs: Vec::new(), planted: PlantedBugs::default() }
    }

    fn config() -> ReplicationConfig {
        ReplicationConfig { snapshot_chunk_bytes: 64, snapshot_chunks_in_flight: 2, ..ReplicationConfig::default() }
    }

    fn image(bytes: usize, seed: u8) -> SnapshotData {
        std::sync::Arc::new((0..bytes).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect())
    }

    fn snapshot_message(term: u64, index: u64, data: SnapshotData) -> Message {
        let meta = SnapshotMeta { index, term: term - 1, conf_state: raft::ConfState::with_voters([1, 2, 3]) };
        Message { from: LEADER, to: FOLLOWER, term, body: MessageBody::Snapshot { snapshot: Snapshot { meta, data } } }
    }

    /// The peer items a sink holds, taken out.
    fn sent(sink: &mut Sink<NoHandles>) -> Vec<(u64, PeerItem)> {
        std::mem::take(&mut sink.outputs)
            .into_iter()
            .filter_map(|output| match output {
                Output::Send { to, item } => Some((to, item)),
                _ => None,
            })
            .collect()
    }

    fn chunks(items: Vec<(u64, PeerItem)>) -> Vec<SnapshotChunk> {
        items
            .into_iter()
            .map(|(to, item)| match item {
                PeerItem::SnapshotChunk { partition: 7, chunk } if to == FOLLOWER => chunk,
                other => panic!("expected a chunk for the follower, got {other:?}"),
            })
            .collect()
    }

    fn acks(items: Vec<(u64, PeerItem)>) -> Vec<u64> {
        items
            .into_iter()
            .map(|(to, item)| match item {
                PeerItem::SnapshotAck { partition: 7, received, .. } if to == LEADER => received,
                other => panic!("expected an ack for the leader, got {other:?}"),
            })
            .collect()
    }

    /// Hands `chunk` to the follower; returns its acks and the assembled message, if any.
    fn receive(
        follower: &mut SnapshotTransfers,
        chunk: SnapshotChunk,
        sink: &mut Sink<NoHandles>,
    ) -> (Vec<u64>, Option<Message>) {
        let message = follower.on_chunk(7, (FOLLOWER, LEADER), chunk, &config(), sink);
        (acks(sent(sink)), message)
    }

    #[test]
    fn a_snapshot_travels_in_a_window_of_chunks_and_arrives_whole_in_any_order() {
        let data = image(300, 1); // 4 chunks of 64 and one of 44
        let (mut leader, mut follower, mut sink) = (SnapshotTransfers::default(), SnapshotTransfers::default(), sink());
        leader.offer(7, snapshot_message(5, 40, data.clone()), &config(), &mut sink);
        let first = chunks(sent(&mut sink));
        assert_eq!(first.iter().map(|c| c.offset).collect::<Vec<_>>(), [0, 64], "a window of two chunks");
        assert!(first.iter().all(|c| c.total_bytes == 300 && c.chunk_bytes == 64 && c.term == 5));

        // The second chunk first, then a duplicate of it: nothing without a gap yet.
        let (acked, done) = receive(&mut follower, first[1].clone(), &mut sink);
        assert_eq!((acked, done.is_none()), (vec![0], true));
        let (acked, _) = receive(&mut follower, first[1].clone(), &mut sink);
        assert_eq!(acked, [0]);
        let (acked, _) = receive(&mut follower, first[0].clone(), &mut sink);
        assert_eq!(acked, [128]);

        // Each ack opens the window by what it acknowledges.
        leader.on_ack(7, FOLLOWER, (5, 40, 128), &config(), &mut sink);
        let second = chunks(sent(&mut sink));
        assert_eq!(second.iter().map(|c| c.offset).collect::<Vec<_>>(), [128, 192]);
        let (acked, _) = receive(&mut follower, second[1].clone(), &mut sink);
        assert_eq!(acked, [128]);
        let (acked, _) = receive(&mut follower, second[0].clone(), &mut sink);
        assert_eq!(acked, [256]);
        leader.on_ack(7, FOLLOWER, (5, 40, 256), &config(), &mut sink);
        let last = chunks(sent(&mut sink));
        assert_eq!((last.len(), last[0].offset, last[0].bytes.len()), (1, 256, 44));
        let (acked, message) = receive(&mut follower, last[0].clone(), &mut sink);
        assert_eq!(acked, [300]);
        let message = message.expect("every chunk arrived");
        assert_eq!(message, snapshot_message(5, 40, data), "the message Raft sent, byte for byte");

        // A late copy of a chunk is acknowledged whole and assembles nothing again.
        let (acked, again) = receive(&mut follower, first[0].clone(), &mut sink);
        assert_eq!((acked, again.is_none()), (vec![300], true));
        leader.on_ack(7, FOLLOWER, (5, 40, 300), &config(), &mut sink);
        assert!(sent(&mut sink).is_empty() && leader.outgoing.is_empty(), "the sending is over");
    }

    #[test]
    fn a_lost_chunk_is_resent_when_raft_asks_again_and_a_newer_snapshot_replaces_the_sending() {
        let data = image(200, 2);
        let (mut leader, mut follower, mut sink) = (SnapshotTransfers::default(), SnapshotTransfers::default(), sink());
        leader.offer(7, snapshot_message(5, 40, data.clone()), &config(), &mut sink);
        let first = chunks(sent(&mut sink));
        // The first chunk is lost; the second arrives and acknowledges nothing.
        let (acked, _) = receive(&mut follower, first[1].clone(), &mut sink);
        leader.on_ack(7, FOLLOWER, (5, 40, acked[0]), &config(), &mut sink);
        assert!(sent(&mut sink).is_empty(), "the window is full");
        // Raft's snapshot timeout: it asks again, with no progress since: the window goes out again.
        leader.offer(7, snapshot_message(5, 40, data.clone()), &config(), &mut sink);
        let again = chunks(sent(&mut sink));
        assert_eq!(again.iter().map(|c| c.offset).collect::<Vec<_>>(), [0, 64]);
        let (acked, _) = receive(&mut follower, again[0].clone(), &mut sink);
        assert_eq!(acked, [128]);
        leader.on_ack(7, FOLLOWER, (5, 40, 128), &config(), &mut sink);
        let rest = chunks(sent(&mut sink));
        assert_eq!(rest.iter().map(|c| c.offset).collect::<Vec<_>>(), [128, 192]);

        receive(&mut follower, rest[0].clone(), &mut sink);
        let (acked, message) = receive(&mut follower, rest[1].clone(), &mut sink);
        assert_eq!(acked, [200]);
        assert_eq!(message.expect("whole"), snapshot_message(5, 40, data));

        // Raft offers a newer snapshot while a sending is under way (it compacted its log past the
        // older one): the sending starts over with the newer one, and the older one's acks are ignored.
        leader.offer(7, snapshot_message(5, 90, image(500, 3)), &config(), &mut sink);
        let newer = chunks(sent(&mut sink));
        assert_eq!(newer.iter().map(|c| (c.meta.index, c.offset)).collect::<Vec<_>>(), [(90, 0), (90, 64)]);
        leader.on_ack(7, FOLLOWER, (5, 40, 200), &config(), &mut sink);
        assert!(sent(&mut sink).is_empty(), "an ack of the replaced sending moves nothing");
        leader.offer(7, snapshot_message(5, 120, image(300, 4)), &config(), &mut sink);
        let newest = chunks(sent(&mut sink));
        assert_eq!((newest[0].meta.index, newest[0].offset, newest[0].total_bytes), (120, 0, 300));
    }

    #[test]
    fn chunks_of_an_older_sending_are_dropped_and_a_newer_sending_replaces_the_assembly() {
        let (mut follower, mut sink) = (SnapshotTransfers::default(), sink());
        let (mut old_leader, mut new_leader) = (SnapshotTransfers::default(), SnapshotTransfers::default());
        old_leader.offer(7, snapshot_message(5, 40, image(200, 4)), &config(), &mut sink);
        let old = chunks(sent(&mut sink));
        new_leader.offer(7, snapshot_message(6, 30, image(150, 5)), &config(), &mut sink);
        let new = chunks(sent(&mut sink));
        receive(&mut follower, old[0].clone(), &mut sink);
        // A later term wins even with a lower index; then the old leader's chunks are ignored.
        let (acked, _) = receive(&mut follower, new[0].clone(), &mut sink);
        assert_eq!(acked, [64]);
        let (acked, message) = receive(&mut follower, old[1].clone(), &mut sink);
        assert!(acked.is_empty() && message.is_none(), "an older sending's chunk changes nothing");
        assert_eq!(follower.incoming.as_ref().map(|i| i.tag), Some(Tag { term: 6, index: 30 }));
    }

    #[test]
    fn chunks_from_the_wrong_node_or_above_the_size_limit_are_refused() {
        let (mut leader, mut follower, mut sink) = (SnapshotTransfers::default(), SnapshotTransfers::default(), sink());
        leader.offer(7, snapshot_message(5, 40, image(200, 6)), &config(), &mut sink);
        let first = chunks(sent(&mut sink));
        let impostor = follower.on_chunk(7, (FOLLOWER, 3), first[0].clone(), &config(), &mut sink);
        let misdirected = follower.on_chunk(7, (3, LEADER), first[0].clone(), &config(), &mut sink);
        assert!(impostor.is_none() && misdirected.is_none() && sent(&mut sink).is_empty());
        assert!(follower.incoming.is_none());

        let small = ReplicationConfig { snapshot_bytes_max: 199, ..config() };
        assert!(follower.on_chunk(7, (FOLLOWER, LEADER), first[0].clone(), &small, &mut sink).is_none());
        assert!(follower.incoming.is_none(), "nothing assembled");
        let logged = std::mem::take(&mut sink.outputs);
        assert!(
            logged.iter().any(|o| matches!(o, Output::Log { line, .. } if line.contains("above snapshot_bytes_max"))),
            "the refusal is logged"
        );
    }

    #[test]
    fn idle_sendings_and_assemblies_are_dropped_and_a_leader_that_stops_leading_stops_sending() {
        let (mut leader, mut follower, mut sink) = (SnapshotTransfers::default(), SnapshotTransfers::default(), sink());
        leader.offer(7, snapshot_message(5, 40, image(200, 7)), &config(), &mut sink);
        let first = chunks(sent(&mut sink));
        receive(&mut follower, first[0].clone(), &mut sink);
        for _ in 0..3 {
            leader.tick(3);
            follower.tick(3);
        }
        assert!(leader.outgoing.contains_key(&FOLLOWER) && follower.incoming.is_some(), "within the limit");
        leader.tick(3);
        follower.tick(3);
        assert!(leader.outgoing.is_empty() && follower.incoming.is_none(), "dropped past it");

        leader.offer(7, snapshot_message(5, 40, image(200, 7)), &config(), &mut sink);
        leader.stop_sending();
        assert!(leader.outgoing.is_empty());
    }
}
