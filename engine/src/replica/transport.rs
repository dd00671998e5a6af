//! Node-to-node transport on the protocol's framing: one TCP connection per node pair, carrying both
//! directions.
//!
//! The node with the lower id dials the higher one; the higher one adopts the accepted connection as
//! its way back. Both ends start with a `PEER_KIND_HELLO` frame naming the sender, then send
//! `PEER_KIND_BATCH` frames: one writer thread per peer takes whatever is queued for it (up to
//! `peer_batch_bytes_max`) and writes it as one frame carrying every partition's Raft messages and
//! forwarded requests, and one reader thread per connection checks every frame (cluster id,
//! checksums, size up to `PEER_FRAME_BYTES_MAX`) and hands each item to the node's dispatcher, which
//! blocks while the owning shard's peer queue is full: TCP then pushes back on the sender.
//!
//! On any write or read error the connection is dropped with what was taken from the queue. Nothing
//! that waits for an answer is dropped silently: a forwarded request that cannot go out (no
//! connection, the write failed, or its batch was over the frame limit) is handed back to its shard
//! as [`PeerInput::NotDelivered`], and when the connection that is a peer's link ends (a failed read or
//! write, or a replacement) every shard is told once, [`PeerInput::LinkDown`] (replies owed on it may
//! be lost), so the core routes those requests again instead of letting them time out. Raft messages
//! are dropped and counted: Raft resends what matters. The dialing side connects as soon as
//! it starts and reconnects with a bounded backoff whenever the connection is lost, whether or not it
//! has anything to send, because the other side can only wait for it. [`Transport::send`] refuses a
//! new message for a full queue, and a forwarded request for a link known to be down, at once, saying
//! which ([`Refused`]; back pressure never blocks a shard thread). A bad frame closes only that
//! connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use net::protocol::{encode_raw_frame, FrameDecoder, Message, HEADER_BYTES, PEER_FRAME_BYTES_MAX};

use crate::cluster_config::ReplicationConfig;
use crate::replica::wire::{self, Hello, PeerItem, PEER_KIND_BATCH, PEER_KIND_HELLO, PEER_WIRE_VERSION};

/// A blocked write to a peer gives up after this long and reconnects.
pub const PEER_WRITE_TIMEOUT_MS: u64 = 5_000;
/// How often idle sender threads and the listener look at the stop flag.
const STOP_POLL_MS: u64 = 100;
/// Bytes read from a peer socket per call.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// First pause after a failed dial; it doubles up to `peer_reconnect_backoff_ms_max`.
const REDIAL_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// A connection that ends sooner than this after it was made counts as a failed attempt: the next
/// dial waits out the backoff (a peer that accepts and then refuses our hello is not redialed in a loop).
const CONNECTION_STABLE_MS: u64 = 1_000;

/// A writer's reconnect state: the next pause, whether the failure was already reported, and when the
/// current connection was made.
struct Redial {
    backoff: Duration,
    warned: bool,
    connected_at: Option<Instant>,
}

impl Redial {
    /// Waits out the current pause and doubles the next one, up to `max`.
    fn back_off(&mut self, max: Duration) {
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(max);
    }
}

struct PeerLink {
    queue: Sender<PeerItem>,
    dropped: AtomicU64,
    /// The link is known to be down: its last connection ended or the last dial failed, and no new
    /// connection is installed yet (kept with `connection`, read without its lock on every send).
    /// False before the first connection: a link still being set up queues what it is given.
    down: AtomicBool,
    /// The connection the writer uses: dialed by the writer itself (peer id above ours) or handed over
    /// by the listener (peer id below ours). `generation` grows with every new connection, so a
    /// writer notices a replacement and a reader's failure retires only its own connection.
    connection: Mutex<(u64, Option<TcpStream>)>,
}

impl PeerLink {
    /// Makes `stream` the link's connection; returns its generation and whether it replaced a live
    /// connection (whose end the caller reports: see [`PeerLink::retire`]).
    fn install(&self, stream: TcpStream) -> (u64, bool) {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let replaced = slot.1.take().inspect(|old| drop(old.shutdown(Shutdown::Both))).is_some();
        slot.0 += 1;
        slot.1 = Some(stream);
        self.down.store(false, Ordering::SeqCst);
        (slot.0, replaced)
    }

    /// Drops the connection of `generation` if it is still the current one. True exactly once per
    /// connection, for whoever ended it while it was the link (a replaced one was ended by `install`):
    /// that caller reports the link's end, so each end is reported once, when the connection stops
    /// being the one forwards go out on.
    fn retire(&self, generation: u64) -> bool {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if slot.0 != generation {
            return false;
        }
        let Some(old) = slot.1.take() else { return false };
        let _ = old.shutdown(Shutdown::Both);
        self.down.store(true, Ordering::SeqCst);
        true
    }

    fn current(&self) -> Option<(u64, TcpStream)> {
        let slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        slot.1.as_ref().and_then(|s| s.try_clone().ok()).map(|s| (slot.0, s))
    }
}

/// Why [`Transport::send`] dropped an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such peer in the cluster file.
    UnknownPeer,
    /// The peer's queue holds `peer_queue_depth_max` items: the link is up but behind.
    QueueFull,
    /// The link is known to be down (its last connection ended or the last dial failed).
    LinkDown,
}

/// Sends to peers. Cheap to share: every shard thread holds an `Arc` of it.
pub struct Transport {
    node_id: u64,
    cluster_id: u128,
    /// Our cluster file's `agreement_digest`: a peer whose hello carries another is refused.
    settings_digest: u64,
    peers: Vec<(u64, SocketAddr)>,
    config: ReplicationConfig,
    links: HashMap<u64, Arc<PeerLink>>,
    receivers: Mutex<Vec<(u64, Receiver<PeerItem>)>>,
    dispatch: OnceLock<Dispatch>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Transport {
    /// Creates the per-peer queues (`(node id, address to dial)`); nothing moves until [`Transport::start`].
    pub fn new(
        node_id: u64,
        cluster_id: u128,
        settings_digest: u64,
        peers: &[(u64, SocketAddr)],
        config: &ReplicationConfig,
    ) -> Arc<Transport> {
        let mut links = HashMap::new();
        let mut receivers = Vec::new();
        for &(peer, _) in peers {
            let (queue, receiver) = bounded(config.peer_queue_depth_max);
            links.insert(
                peer,
                Arc::new(PeerLink {
                    queue,
                    dropped: AtomicU64::new(0),
                    down: AtomicBool::new(false),
                    connection: Mutex::new((0, None)),
                }),
            );
            receivers.push((peer, receiver));
        }
        Arc::new(Transport {
            node_id,
            cluster_id,
            settings_digest,
            peers: peers.to_vec(),
            config: config.clone(),
            links,
            receivers: Mutex::new(receivers),
            dispatch: OnceLock::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// Starts one writer thread per peer; inbound items go to `dispatch`.
    pub fn start(self: &Arc<Self>, dispatch: Dispatch) -> std::io::Result<()> {
        let _ = self.dispatch.set(dispatch);
        let receivers = std::mem::take(&mut *self.receivers.lock().unwrap_or_else(|p| p.into_inner()));
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for (peer, receiver) in receivers {
            let address = self.peers.iter().find(|(id, _)| *id == peer).map(|(_, a)| *a).expect("a peer's address");
            let transport = self.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("peer-out-{peer}"))
                    .spawn(move || transport.run_writer(peer, address, receiver))?,
            );
        }
        Ok(())
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Queues `item` for `to`, or says why it was dropped: unknown peer, full queue, or a forwarded
    /// request for a link known to be down (its sender routes it again rather than queue it behind a
    /// redial; Raft messages are queued, the writer may be about to reconnect).
    pub fn send(&self, to: u64, item: PeerItem) -> Result<(), Refused> {
        let Some(link) = self.links.get(&to) else {
            return Err(Refused::UnknownPeer);
        };
        if matches!(item, PeerItem::Forward { .. }) && link.down.load(Ordering::SeqCst) {
            link.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::LinkDown);
        }
        match link.queue.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                link.dropped.fetch_add(1, Ordering::Relaxed);
                Err(Refused::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => {
                link.dropped.fetch_add(1, Ordering::Relaxed);
                Err(Refused::LinkDown)
            }
        }
    }

    /// Messages dropped so far: a peer's queue was full, or there was no connection to send them on.
    pub fn dropped(&self) -> u64 {
        self.links.values().map(|link| link.dropped.load(Ordering::Relaxed)).sum()
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for link in self.links.values() {
            let generation = link.connection.lock().unwrap_or_else(|p| p.into_inner()).0;
            link.retire(generation);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }

    /// The listener accepted a connection whose hello says it comes from `peer`: a peer below us
    /// dials us, and we answer on the same connection. Returns the connection's generation, or None
    /// when `peer` should have waited for us to dial.
    fn adopt(&self, peer: u64, stream: &TcpStream) -> Option<u64> {
        if peer >= self.node_id {
            return None;
        }
        let link = self.links.get(&peer)?;
        let mut writer = stream.try_clone().ok()?;
        writer.set_write_timeout(Some(Duration::from_millis(PEER_WRITE_TIMEOUT_MS))).ok()?;
        writer.write_all(&self.hello_frame()).ok()?;
        log::info!("node {}: peer {peer} connected", self.node_id);
        let (generation, replaced) = link.install(writer);
        if replaced {
            self.link_ended(peer);
        }
        Some(generation)
    }

    fn hello_frame(&self) -> Vec<u8> {
        let mut hello = Vec::new();
        let ours =
            Hello { node_id: self.node_id, wire_version: PEER_WIRE_VERSION, settings_digest: self.settings_digest };
        wire::encode_hello(&ours, &mut hello);
        let mut frame = Vec::new();
        encode_raw_frame(&mut frame, PEER_KIND_HELLO, self.cluster_id, 0, &hello);
        frame
    }

    fn run_writer(self: Arc<Self>, peer: u64, address: SocketAddr, queue: Receiver<PeerItem>) {
        let link = self.links[&peer].clone();
        let dials = peer > self.node_id;
        let mut redial = Redial { backoff: REDIAL_BACKOFF_MIN, warned: false, connected_at: None };
        let mut batch = Vec::new();
        let mut body = Vec::new();
        let mut frame = Vec::new();
        while !self.stop.load(Ordering::Relaxed) {
            let first = match queue.recv_timeout(Duration::from_millis(STOP_POLL_MS)) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // The dialing side keeps the connection up even while it has nothing to send: the peer
            // above it has no other way to reach it.
            let connection = match link.current() {
                Some(connection) => Some(connection),
                None if dials => self.connect(peer, address, &link, &mut redial),
                None => None,
            };
            let Some(first) = first else { continue };
            let Some((generation, mut stream)) = connection else {
                // Not connected (the peer below us has not dialed yet, or cannot be reached): what is
                // queued cannot be delivered. Raft sends again; forwarded requests go back to their
                // shards, which route them again.
                batch.clear();
                batch.push(first);
                batch.extend(queue.try_iter());
                link.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.hand_back(peer, &mut batch);
                continue;
            };
            let mut bytes = wire::item_encoded_bytes(&first);
            batch.clear();
            batch.push(first);
            while bytes < self.config.peer_batch_bytes_max {
                match queue.try_recv() {
                    Ok(item) => {
                        bytes += wire::item_encoded_bytes(&item);
                        batch.push(item);
                    }
                    Err(_) => break,
                }
            }
            body.clear();
            wire::encode_items(&batch, &mut body);
            if HEADER_BYTES + body.len() > PEER_FRAME_BYTES_MAX {
                // Only one huge item (a snapshot beyond the frame limit) can get here: it can never be
                // sent, so say so instead of cutting the connection over and over.
                log::error!(
                    "node {}: dropping a {}-byte message batch to peer {peer}: above PEER_FRAME_BYTES_MAX",
                    self.node_id,
                    body.len()
                );
                link.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.hand_back(peer, &mut batch);
                continue;
            }
            frame.clear();
            encode_raw_frame(&mut frame, PEER_KIND_BATCH, self.cluster_id, 0, &body);
            if let Err(error) = stream.write_all(&frame) {
                log::warn!("node {}: connection to peer {peer} lost: {error}", self.node_id);
                link.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if link.retire(generation) {
                    self.link_ended(peer);
                }
                // Some of the frame may have arrived; a forwarded request sent again is safe (its ids
                // are idempotency keys), one left unanswered is not.
                self.hand_back(peer, &mut batch);
            }
        }
    }

    /// The connection that was `peer`'s link ended: replies owed on it may be lost with it, so every
    /// shard routes again what it forwarded to `peer` (nothing to report while stopping).
    fn link_ended(&self, peer: u64) {
        if let (false, Some(dispatch)) = (self.stop.load(Ordering::SeqCst), self.dispatch.get()) {
            dispatch(peer, PeerInput::LinkDown);
        }
    }

    /// Tells the shards which forwarded requests of `batch` (taken from `peer`'s queue) never went out.
    fn hand_back(&self, peer: u64, batch: &mut Vec<PeerItem>) {
        let Some(dispatch) = self.dispatch.get() else { return };
        for item in batch.drain(..) {
            if let PeerItem::Forward { request_id, partition, .. } = item {
                dispatch(peer, PeerInput::NotDelivered { request_id, partition });
            }
        }
    }

    /// Dials `peer` and starts reading the new connection; after a failure, waits out the backoff.
    fn connect(
        self: &Arc<Self>,
        peer: u64,
        address: SocketAddr,
        link: &PeerLink,
        redial: &mut Redial,
    ) -> Option<(u64, TcpStream)> {
        let backoff_max = Duration::from_millis(self.config.peer_reconnect_backoff_ms_max);
        if let Some(at) = redial.connected_at.take() {
            if at.elapsed() < Duration::from_millis(CONNECTION_STABLE_MS) {
                redial.back_off(backoff_max);
            } else {
                redial.backoff = REDIAL_BACKOFF_MIN;
            }
        }
        match self.dial(address) {
            Ok(stream) => {
                if redial.warned {
                    log::info!("node {}: connected to peer {peer} at {address}", self.node_id);
                }
                redial.warned = false;
                redial.connected_at = Some(Instant::now());
                let reader = stream.try_clone();
                let (generation, replaced) = link.install(stream);
                if replaced {
                    self.link_ended(peer);
                }
                if self.stop.load(Ordering::SeqCst) {
                    // Shutdown retired every connection while we were dialing: do not leave this one.
                    link.retire(generation);
                    return None;
                }
                if let (Ok(reader), Some(dispatch)) = (reader, self.dispatch.get()) {
                    self.spawn_reader(reader, Some((peer, generation)), dispatch.clone(), None);
                }
                link.current()
            }
            Err(error) => {
                link.down.store(true, Ordering::SeqCst);
                if !redial.warned {
                    log::warn!("node {}: cannot reach peer {peer} at {address}: {error}; retrying", self.node_id);
                    redial.warned = true;
                }
                redial.back_off(backoff_max);
                None
            }
        }
    }

    fn dial(&self, address: SocketAddr) -> std::io::Result<TcpStream> {
        let timeout = Duration::from_millis(self.config.peer_connect_timeout_ms);
        let mut stream = TcpStream::connect_timeout(&address, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_millis(PEER_WRITE_TIMEOUT_MS)))?;
        stream.write_all(&self.hello_frame())?;
        Ok(stream)
    }

    /// Reads one connection until it fails. `expected`: the peer and connection generation when we
    /// dialed it (its hello must name that peer); None for an accepted connection (the hello decides).
    /// When the reader ends, for whatever reason (peer gone, bad frame, refused hello), its connection is
    /// retired if a writer uses it and `on_exit` runs (the listener drops its copy), so the last handle
    /// closes and the other side sees the connection end at once.
    fn spawn_reader(
        self: &Arc<Self>,
        stream: TcpStream,
        expected: Option<(u64, u64)>,
        dispatch: Dispatch,
        on_exit: Option<Box<dyn FnOnce() + Send>>,
    ) {
        let transport = self.clone();
        let _ = std::thread::Builder::new().name("peer-in".into()).spawn(move || {
            let owner = read_peer(&transport, stream, expected, &dispatch);
            if let Some((peer, generation)) = owner {
                if transport.links.get(&peer).is_some_and(|link| link.retire(generation)) {
                    transport.link_ended(peer);
                }
            }
            if let Some(on_exit) = on_exit {
                on_exit();
            }
        });
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the transport hands the shards about peer node `peer` (the first argument of [`Dispatch`]).
#[derive(Debug)]
pub enum PeerInput {
    /// An item `peer` sent.
    Item(PeerItem),
    /// A forwarded request queued for `peer` that never went out (no connection, or the write failed).
    NotDelivered { request_id: u64, partition: u32 },
    /// A connection to `peer` ended: answers it owed on it may be lost. Goes to every shard.
    LinkDown,
}

/// Where inbound items and link reports go: `(peer node id, input)`. May block (back pressure onto the
/// connection).
pub type Dispatch = Arc<dyn Fn(u64, PeerInput) + Send + Sync>;

/// Accepts peer connections and feeds their items to the dispatcher.
pub struct PeerListener {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Accepted connections whose reader still runs, by accept number, to be shut down with the listener.
    connections: Arc<Mutex<HashMap<u64, TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl PeerListener {
    pub fn start(bind: SocketAddr, transport: Arc<Transport>, dispatch: Dispatch) -> std::io::Result<PeerListener> {
        let listener = TcpListener::bind(bind)?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(HashMap::new()));
        let thread = {
            let stop = stop.clone();
            let connections = connections.clone();
            std::thread::Builder::new().name("peer-listen".into()).spawn(move || {
                for (number, accepted) in (0u64..).zip(listener.incoming()) {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    if let Ok(clone) = stream.try_clone() {
                        connections.lock().unwrap_or_else(|p| p.into_inner()).insert(number, clone);
                    }
                    let open = connections.clone();
                    let forget = Box::new(move || {
                        open.lock().unwrap_or_else(|p| p.into_inner()).remove(&number);
                    });
                    transport.spawn_reader(stream, None, dispatch.clone(), Some(forget));
                }
            })?
        };
        Ok(PeerListener { address, stop, connections, thread: Some(thread) })
    }

    pub fn local_address(&self) -> SocketAddr {
        self.address
    }

    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(STOP_POLL_MS * 10));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for (_, stream) in self.connections.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Reads frames until the connection fails or breaks the rules; returns the `(peer, generation)` that
/// owns the connection as a writer, so the caller can retire it.
fn read_peer(
    transport: &Arc<Transport>,
    mut stream: TcpStream,
    expected: Option<(u64, u64)>,
    dispatch: &Dispatch,
) -> Option<(u64, u64)> {
    let decoder = FrameDecoder::for_peers(transport.cluster_id);
    let remote = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut owner = expected;
    let mut from: Option<u64> = None;
    loop {
        let mut consumed = 0;
        loop {
            match decoder.decode(&buffer[consumed..]) {
                Ok(Some((frame, used))) => {
                    consumed += used;
                    let Message::Peer { kind, body } = frame.message else {
                        log::warn!("peer connection from {remote}: a non-peer frame; closing");
                        return owner;
                    };
                    match (kind, from) {
                        (PEER_KIND_HELLO, None) => {
                            let hello = match wire::decode_hello(&body) {
                                Ok(hello) => hello,
                                Err(error) => {
                                    log::warn!("peer connection from {remote}: bad hello: {error}; closing");
                                    return owner;
                                }
                            };
                            let node = hello.node_id;
                            if hello.wire_version != PEER_WIRE_VERSION {
                                log::warn!(
                                    "peer node {node} at {remote} speaks node-to-node version {}, this node {}; closing",
                                    hello.wire_version, PEER_WIRE_VERSION
                                );
                                return owner;
                            }
                            if hello.settings_digest != transport.settings_digest {
                                log::warn!(
                                    "peer node {node} at {remote} runs with a cluster file that differs from ours in \
                                     what replicas must agree on (cluster id, partitions, replication factor, \
                                     idempotency bounds or node list: digest {:016x}, ours {:016x}); closing",
                                    hello.settings_digest,
                                    transport.settings_digest
                                );
                                return owner;
                            }
                            match expected {
                                Some((peer, _)) if peer != node => {
                                    log::warn!("peer at {remote} says it is node {node}, expected {peer}; closing");
                                    return owner;
                                }
                                Some(_) => {}
                                None => match transport.adopt(node, &stream) {
                                    Some(generation) => owner = Some((node, generation)),
                                    None => {
                                        log::warn!("peer connection from node {node} at {remote}: refused; closing");
                                        let _ = stream.shutdown(Shutdown::Both);
                                        return owner;
                                    }
                                },
                            }
                            from = Some(node);
                        }
                        (PEER_KIND_BATCH, Some(node)) => match wire::decode_items(&body) {
                            Ok(items) => {
                                for item in items {
                                    dispatch(node, PeerInput::Item(item));
                                }
                            }
                            Err(error) => {
                                log::warn!("peer connection from node {node}: bad batch: {error}; closing");
                                return owner;
                            }
                        },
                        _ => {
                            log::warn!("peer connection from {remote}: unexpected frame kind {kind:#x}; closing");
                            return owner;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    log::warn!("peer connection from {remote}: {}; closing", error.error);
                    return owner;
                }
            }
        }
        buffer.drain(..consumed);
        if transport.stop.load(Ordering::Relaxed) {
            return owner;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return owner,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return owner,
        }
    }
}
