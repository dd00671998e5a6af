//! Node-to-node transport on the protocol's framing.
//!
//! Outbound: one sender thread per peer owns one TCP connection to it and a bounded queue. It takes
//! whatever is queued (up to `peer_batch_bytes_max`), encodes it as one `PEER_KIND_BATCH` frame carrying
//! every partition's Raft messages and forwarded requests, and writes it. A new connection starts with a
//! `PEER_KIND_HELLO` frame naming the sender. On any write or connect error the connection is dropped,
//! what was taken is lost, and the thread reconnects with a bounded backoff: Raft resends what matters,
//! and a forwarded request that is lost times out at its sender. A full queue drops the new message
//! (back pressure never blocks a shard thread) and counts it.
//!
//! Inbound: a listener thread accepts peers; one reader thread per connection checks every frame
//! (cluster id, checksums, size up to `PEER_FRAME_BYTES_MAX`), requires the hello first, and hands each
//! item to the node's dispatcher, which blocks while the owning shard's peer queue is full: TCP then
//! pushes back on the sender. A bad frame closes only that connection.
//!
//! Each direction of a node pair has its own connection (each node dials the others for what it sends),
//! so every socket has exactly one writer and one reader thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use net::protocol::{encode_raw_frame, FrameDecoder, Message, HEADER_BYTES, PEER_FRAME_BYTES_MAX};

use crate::cluster_config::ReplicationConfig;
use crate::replica::wire::{self, PeerItem, PEER_KIND_BATCH, PEER_KIND_HELLO};

/// A blocked write to a peer gives up after this long and reconnects.
pub const PEER_WRITE_TIMEOUT_MS: u64 = 5_000;
/// How often idle sender threads and the listener look at the stop flag.
const STOP_POLL_MS: u64 = 100;
/// Bytes read from a peer socket per call.
const READ_CHUNK_BYTES: usize = 256 << 10;

struct PeerLink {
    queue: Sender<PeerItem>,
    dropped: AtomicU64,
}

/// Sends to peers. Cheap to share: every shard thread holds an `Arc` of it.
pub struct Transport {
    node_id: u64,
    links: HashMap<u64, PeerLink>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Transport {
    /// Starts one sender thread per peer (`(node id, address to dial)`).
    pub fn start(
        node_id: u64,
        cluster_id: u128,
        peers: &[(u64, SocketAddr)],
        config: &ReplicationConfig,
    ) -> std::io::Result<Arc<Transport>> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut links = HashMap::new();
        let mut threads = Vec::new();
        for &(peer, address) in peers {
            let (queue, receiver) = bounded(config.peer_queue_depth_max);
            links.insert(peer, PeerLink { queue, dropped: AtomicU64::new(0) });
            let sender = PeerSender {
                node_id,
                peer,
                address,
                cluster_id,
                batch_bytes_max: config.peer_batch_bytes_max,
                connect_timeout: Duration::from_millis(config.peer_connect_timeout_ms),
                backoff_max: Duration::from_millis(config.peer_reconnect_backoff_ms_max),
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new().name(format!("peer-out-{peer}")).spawn(move || sender.run(receiver))?,
            );
        }
        Ok(Arc::new(Transport { node_id, links, stop, threads: Mutex::new(threads) }))
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Queues `item` for `to`; false when it was dropped (unknown peer or full queue).
    pub fn send(&self, to: u64, item: PeerItem) -> bool {
        let Some(link) = self.links.get(&to) else {
            return false;
        };
        match link.queue.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                link.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Messages dropped so far because a peer's queue was full.
    pub fn dropped(&self) -> u64 {
        self.links.values().map(|link| link.dropped.load(Ordering::Relaxed)).sum()
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct PeerSender {
    node_id: u64,
    peer: u64,
    address: SocketAddr,
    cluster_id: u128,
    batch_bytes_max: usize,
    connect_timeout: Duration,
    backoff_max: Duration,
    stop: Arc<AtomicBool>,
}

impl PeerSender {
    fn run(self, queue: Receiver<PeerItem>) {
        let mut stream: Option<TcpStream> = None;
        let mut backoff = Duration::from_millis(10);
        let mut batch = Vec::new();
        let mut body = Vec::new();
        let mut frame = Vec::new();
        let mut warned = false;
        while !self.stop.load(Ordering::Relaxed) {
            let first = match queue.recv_timeout(Duration::from_millis(STOP_POLL_MS)) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut bytes = wire::item_encoded_bytes(&first);
            batch.clear();
            batch.push(first);
            while bytes < self.batch_bytes_max {
                match queue.try_recv() {
                    Ok(item) => {
                        bytes += wire::item_encoded_bytes(&item);
                        batch.push(item);
                    }
                    Err(_) => break,
                }
            }
            if stream.is_none() {
                match self.connect() {
                    Ok(connected) => {
                        if warned {
                            eprintln!("node {}: connected to peer {} at {}", self.node_id, self.peer, self.address);
                        }
                        warned = false;
                        backoff = Duration::from_millis(10);
                        stream = Some(connected);
                    }
                    Err(error) => {
                        if !warned {
                            eprintln!(
                                "node {}: cannot reach peer {} at {}: {error}; retrying",
                                self.node_id, self.peer, self.address
                            );
                            warned = true;
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(self.backoff_max);
                        continue;
                    }
                }
            }
            body.clear();
            wire::encode_items(&batch, &mut body);
            if HEADER_BYTES + body.len() > PEER_FRAME_BYTES_MAX {
                // Only one huge item (a snapshot beyond the frame limit) can get here: it can never be
                // sent, so say so instead of cutting the connection over and over.
                eprintln!(
                    "node {}: dropping a {}-byte message batch to peer {}: above PEER_FRAME_BYTES_MAX",
                    self.node_id,
                    body.len(),
                    self.peer
                );
                continue;
            }
            frame.clear();
            encode_raw_frame(&mut frame, PEER_KIND_BATCH, self.cluster_id, 0, &body);
            let written = stream.as_mut().map(|s| s.write_all(&frame));
            if let Some(Err(error)) = written {
                eprintln!("node {}: connection to peer {} lost: {error}", self.node_id, self.peer);
                if let Some(s) = stream.take() {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&self.address, self.connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_millis(PEER_WRITE_TIMEOUT_MS)))?;
        let mut hello = Vec::new();
        wire::encode_hello(self.node_id, &mut hello);
        let mut frame = Vec::new();
        encode_raw_frame(&mut frame, PEER_KIND_HELLO, self.cluster_id, 0, &hello);
        stream.write_all(&frame)?;
        Ok(stream)
    }
}

/// Where inbound items go: `(sender node id, item)`. May block (back pressure onto the connection).
pub type Dispatch = Arc<dyn Fn(u64, PeerItem) + Send + Sync>;

/// Accepts peer connections and feeds their items to the dispatcher.
pub struct PeerListener {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl PeerListener {
    pub fn start(bind: SocketAddr, cluster_id: u128, dispatch: Dispatch) -> std::io::Result<PeerListener> {
        let listener = TcpListener::bind(bind)?;
        let address = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let connections = connections.clone();
            std::thread::Builder::new().name("peer-listen".into()).spawn(move || {
                for accepted in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = accepted else { continue };
                    if let Ok(clone) = stream.try_clone() {
                        let mut open = connections.lock().unwrap_or_else(|p| p.into_inner());
                        open.retain(|s: &TcpStream| s.peer_addr().is_ok());
                        open.push(clone);
                    }
                    let dispatch = dispatch.clone();
                    let stop = stop.clone();
                    let _ = std::thread::Builder::new()
                        .name("peer-in".into())
                        .spawn(move || read_peer(stream, cluster_id, dispatch, stop));
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
        for stream in self.connections.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for PeerListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn read_peer(mut stream: TcpStream, cluster_id: u128, dispatch: Dispatch, stop: Arc<AtomicBool>) {
    let decoder = FrameDecoder::for_peers(cluster_id);
    let remote = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut from: Option<u64> = None;
    loop {
        let mut consumed = 0;
        loop {
            match decoder.decode(&buffer[consumed..]) {
                Ok(Some((frame, used))) => {
                    consumed += used;
                    let Message::Peer { kind, body } = frame.message else {
                        eprintln!("peer connection from {remote}: a non-peer frame; closing");
                        return;
                    };
                    match (kind, from) {
                        (PEER_KIND_HELLO, None) => match wire::decode_hello(&body) {
                            Ok(node) => from = Some(node),
                            Err(error) => {
                                eprintln!("peer connection from {remote}: bad hello: {error}; closing");
                                return;
                            }
                        },
                        (PEER_KIND_BATCH, Some(node)) => match wire::decode_items(&body) {
                            Ok(items) => {
                                for item in items {
                                    dispatch(node, item);
                                }
                            }
                            Err(error) => {
                                eprintln!("peer connection from node {node}: bad batch: {error}; closing");
                                return;
                            }
                        },
                        _ => {
                            eprintln!("peer connection from {remote}: unexpected frame kind {kind:#x}; closing");
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    eprintln!("peer connection from {remote}: {}; closing", error.error);
                    return;
                }
            }
        }
        buffer.drain(..consumed);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
