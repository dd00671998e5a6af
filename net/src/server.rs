//! The mio server: one event-loop thread accepts connections, decodes frames, hands requests to the
//! application's [`Handler`] and writes the answers back when [`Responder`]s complete them (from
//! any thread: they queue the encoded frame and wake the loop through a `mio::Waker`).
//!
//! Bounds, all enforced: connections ([`ServerConfig::connections_max`], more are refused with
//! `TooManyConnections`), requests in flight per connection (at the limit the loop stops reading that
//! connection: the client feels TCP backpressure instead of the server queueing without bound),
//! frame bytes (checked from the header, before the body is buffered) and pending write bytes per
//! connection (above the limit reading pauses until the client drains its answers). A connection
//! sending a bad frame gets one Error frame and is closed; no other connection notices.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use thiserror::Error;

use crate::protocol::{encode_response, ErrorCode, Frame, FrameDecoder, Message, Request, Response, FRAME_BYTES_MAX};

/// Default and ceiling for [`ServerConfig::connections_max`].
pub const CONNECTIONS_MAX: usize = 4096;
/// Default and ceiling for [`ServerConfig::requests_in_flight_per_connection_max`].
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;
/// Default and ceiling for [`ServerConfig::write_buffer_bytes_max`]: answers waiting for a slow
/// reader. Past it the connection is not read until the client drains what it was sent.
pub const WRITE_BUFFER_BYTES_MAX: usize = 4 * FRAME_BYTES_MAX;
/// Bytes read from a socket per `read` call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Readiness events handled per poll.
pub const EVENTS_PER_POLL_MAX: usize = 1024;
/// How long a connection closed for a bad frame waits for the client's FIN after our Error frame:
/// closing a socket with unread input sends a TCP reset, which can destroy the Error frame before
/// the client reads it.
pub const CLOSE_LINGER_MS: u64 = 500;
/// How long a connection that sent a bad frame may wait for the answers to its earlier, valid
/// requests before the Error frame is sent and the connection closed.
pub const ERROR_ANSWERS_WAIT_MS: u64 = 1_000;
/// Reads spent discarding a lingering connection's input per readiness event.
const LINGER_READS_PER_EVENT_MAX: usize = 16;
/// Default for [`ServerConfig::shutdown_drain_ms`]: how long shutdown waits for in-flight answers.
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;
/// Poll timeout while connections linger or the server drains, so deadlines are checked.
const TICK_MS: u64 = 20;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION_TOKEN: usize = 2;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("server I/O: {0}")]
    Io(#[from] io::Error),
    #[error("invalid server config: {0}")]
    InvalidConfig(&'static str),
    #[error("server thread panicked")]
    ThreadPanicked,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Port 0 picks a free port; [`ServerHandle::local_address`] tells which.
    pub listen_address: SocketAddr,
    pub cluster_id: u128,
    pub connections_max: usize,
    pub requests_in_flight_per_connection_max: usize,
    pub frame_bytes_max: usize,
    pub write_buffer_bytes_max: usize,
    pub shutdown_drain_ms: u64,
}

impl ServerConfig {
    pub fn new(listen_address: SocketAddr, cluster_id: u128) -> ServerConfig {
        ServerConfig {
            listen_address,
            cluster_id,
            connections_max: CONNECTIONS_MAX,
            requests_in_flight_per_connection_max: REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
            frame_bytes_max: FRAME_BYTES_MAX,
            write_buffer_bytes_max: WRITE_BUFFER_BYTES_MAX,
            shutdown_drain_ms: SHUTDOWN_DRAIN_MS,
        }
    }

    fn validate(&self) -> Result<(), ServerError> {
        let within = |value: usize, max: usize| (1..=max).contains(&value);
        if !within(self.connections_max, CONNECTIONS_MAX) {
            return Err(ServerError::InvalidConfig("connections_max must be 1..=CONNECTIONS_MAX"));
        }
        if !within(self.requests_in_flight_per_connection_max, REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX) {
            return Err(ServerError::InvalidConfig(
                "requests_in_flight_per_connection_max must be 1..=REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX",
            ));
        }
        if !(crate::protocol::HEADER_BYTES..=FRAME_BYTES_MAX).contains(&self.frame_bytes_max) {
            return Err(ServerError::InvalidConfig("frame_bytes_max must be HEADER_BYTES..=FRAME_BYTES_MAX"));
        }
        if !within(self.write_buffer_bytes_max, WRITE_BUFFER_BYTES_MAX) {
            return Err(ServerError::InvalidConfig("write_buffer_bytes_max must be 1..=WRITE_BUFFER_BYTES_MAX"));
        }
        Ok(())
    }
}

/// The application behind the server (the engine, or a test double).
pub trait Handler: Send + Sync + 'static {
    /// Called on the event-loop thread for every valid request, in arrival order per connection.
    /// Must not block: answer now, or move the responder to another thread and answer later.
    fn handle(&self, request: Request, responder: Responder);
}

/// The promise to answer one request. Consumed by [`Responder::respond`]; dropping it unanswered
/// answers `Internal`, so a client is never left waiting for a request the application lost.
pub struct Responder {
    shared: Arc<Shared>,
    connection: ConnectionKey,
    request_id: u64,
    answered: bool,
}

impl Responder {
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Encodes the answer on the caller's thread and queues it for the connection's event loop.
    /// If the connection has gone meanwhile, the answer is dropped.
    pub fn respond(mut self, response: Response) {
        self.answered = true;
        self.deliver(&response);
    }

    fn deliver(&self, response: &Response) {
        let mut bytes = Vec::new();
        if encode_response(&mut bytes, self.shared.cluster_id, self.request_id, response).is_err() {
            // The application built a response beyond protocol limits: tell the client rather
            // than send something it would have to reject.
            let error = Response::error(ErrorCode::Internal, "response exceeds protocol limits");
            encode_response(&mut bytes, self.shared.cluster_id, self.request_id, &error)
                .expect("an error frame with a bounded message always fits");
        }
        self.shared.complete(Completion { connection: self.connection, bytes });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.deliver(&Response::error(ErrorCode::Internal, "request dropped without an answer"));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ConnectionKey {
    slot: usize,
    /// Distinguishes a slot's successive connections, so a late answer for a closed connection is
    /// never written to the connection that reused its slot.
    generation: u64,
}

struct Completion {
    connection: ConnectionKey,
    bytes: Vec<u8>,
}

struct Shared {
    cluster_id: u128,
    completions: Mutex<Vec<Completion>>,
    waker: Waker,
    stop: AtomicBool,
    stats: Arc<ServerStats>,
}

/// Connection counts for an operator (walletd's `/metrics`), updated by the event loop alone.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections refused at `connections_max` since start.
    pub connections_refused: AtomicU64,
}

impl Shared {
    fn complete(&self, completion: Completion) {
        // A poisoned lock only means another responder panicked mid-push; the Vec is still valid.
        let mut queue = self.completions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let was_empty = queue.is_empty();
        queue.push(completion);
        drop(queue);
        // One wake per batch: the loop takes the whole queue at once. A failed wake can only
        // happen when the loop is gone, and then nobody waits for this answer.
        if was_empty {
            let _ = self.waker.wake();
        }
    }
}

/// A running server. Dropping it shuts it down like [`ServerHandle::shutdown`].
pub struct ServerHandle {
    local_address: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Result<(), ServerError>>>,
}

impl ServerHandle {
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The live connection counts; readable from any thread, and after the server stops.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Stops accepting, stops reading new requests, waits up to `shutdown_drain_ms` for answers to
    /// requests in flight and for their bytes to be written, then closes every connection.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ServerError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.waker.wake()?;
        thread.join().map_err(|_| ServerError::ThreadPanicked)?
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; `shutdown()` returns them.
        let _ = self.stop_and_join();
    }
}

pub struct Server;

impl Server {
    /// Binds, then runs the event loop on its own thread.
    pub fn start<H: Handler>(config: ServerConfig, handler: H) -> Result<ServerHandle, ServerError> {
        config.validate()?;
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen_address)?;
        let local_address = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            cluster_id: config.cluster_id,
            completions: Mutex::new(Vec::new()),
            waker,
            stop: AtomicBool::new(false),
            stats: Arc::new(ServerStats::default()),
        });
        let mut event_loop = EventLoop {
            poll,
            listener: Some(listener),
            connections: Vec::new(),
            free_slots: Vec::new(),
            next_generation: 1,
            decoder: FrameDecoder { cluster_id: config.cluster_id, frame_bytes_max: config.frame_bytes_max },
            config,
            shared: Arc::clone(&shared),
            handler: Arc::new(handler),
            read_chunk: vec![0; READ_CHUNK_BYTES],
            drain_deadline: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("net-server-{}", local_address.port()))
            .spawn(move || event_loop.run())?;
        Ok(ServerHandle { local_address, shared, thread: Some(thread) })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionState {
    Open,
    /// The peer closed its side: answer what is in flight, then close.
    PeerClosed,
    /// A bad frame arrived: nothing more is read; answers to the valid requests before it are
    /// still delivered (until the deadline), then the Error frame, then our side half-closes.
    Closing {
        deadline: Instant,
    },
    /// Our side is half-closed: discard input until the peer's FIN or the deadline.
    Lingering {
        deadline: Instant,
    },
}

struct Connection {
    stream: TcpStream,
    generation: u64,
    read_buffer: Vec<u8>,
    write_buffer: Vec<u8>,
    write_offset: usize,
    in_flight: usize,
    state: ConnectionState,
    /// The Error frame to send once the answers in flight are written (state `Closing`).
    pending_error: Vec<u8>,
}

impl Connection {
    fn write_pending_bytes(&self) -> usize {
        self.write_buffer.len() - self.write_offset
    }

    fn queue_error(&mut self, cluster_id: u128, request_id: u64, code: ErrorCode, message: &str) {
        let error = Response::error(code, message);
        encode_response(&mut self.pending_error, cluster_id, request_id, &error)
            .expect("an error frame with a bounded message always fits");
        let deadline = Instant::now() + Duration::from_millis(ERROR_ANSWERS_WAIT_MS);
        self.state = ConnectionState::Closing { deadline };
    }
}

/// What the loop must do with a connection after driving it.
enum Verdict {
    Keep,
    Close,
}

struct EventLoop<H: Handler> {
    poll: Poll,
    listener: Option<TcpListener>,
    connections: Vec<Option<Connection>>,
    free_slots: Vec<usize>,
    next_generation: u64,
    decoder: FrameDecoder,
    config: ServerConfig,
    shared: Arc<Shared>,
    handler: Arc<H>,
    read_chunk: Vec<u8>,
    drain_deadline: Option<Instant>,
}

impl<H: Handler> EventLoop<H> {
    fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL_MAX);
        let mut touched = Vec::new();
        loop {
            let timeout = self.needs_ticks().then(|| Duration::from_millis(TICK_MS));
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error.into());
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(token) => touched.push(token - FIRST_CONNECTION_TOKEN),
                }
            }
            self.take_completions(&mut touched);
            touched.sort_unstable();
            touched.dedup();
            for slot in touched.drain(..) {
                self.drive(slot);
            }
            if self.shared.stop.load(Ordering::SeqCst) && self.drain_deadline.is_none() {
                self.begin_shutdown();
            }
            self.expire_lingering();
            if let Some(deadline) = self.drain_deadline {
                if self.drained() || Instant::now() >= deadline {
                    for slot in 0..self.connections.len() {
                        self.close(slot);
                    }
                    return Ok(());
                }
            }
        }
    }

    fn needs_ticks(&self) -> bool {
        self.drain_deadline.is_some()
            || self
                .connections
                .iter()
                .flatten()
                .any(|c| matches!(c.state, ConnectionState::Lingering { .. } | ConnectionState::Closing { .. }))
    }

    fn accept_all(&mut self) {
        // Bounded: each iteration consumes one pending connection from the kernel's backlog, and
        // the listener is gone once shutting down.
        while let Some(listener) = &self.listener {
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock ends the burst; other errors (EMFILE, aborted handshakes) concern one
                // connection attempt, never the server: try again on the next readiness event.
                Err(_) => return,
            };
            let live = self.connections.len() - self.free_slots.len();
            if live >= self.config.connections_max {
                self.shared.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                self.refuse(&mut stream);
                continue;
            }
            let _ = stream.set_nodelay(true); // latency only; a failure changes no correctness
            let slot = self.free_slots.pop().unwrap_or_else(|| {
                self.connections.push(None);
                self.connections.len() - 1
            });
            let token = Token(slot + FIRST_CONNECTION_TOKEN);
            if self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_err() {
                self.free_slots.push(slot);
                continue;
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            self.shared.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
            self.shared.stats.connections_open.fetch_add(1, Ordering::Relaxed);
            self.connections[slot] = Some(Connection {
                stream,
                generation,
                read_buffer: Vec::new(),
                write_buffer: Vec::new(),
                write_offset: 0,
                in_flight: 0,
                state: ConnectionState::Open,
                pending_error: Vec::new(),
            });
        }
    }

    /// Best effort: a fresh socket's send buffer is empty, so this small write normally succeeds.
    fn refuse(&self, stream: &mut TcpStream) {
        let mut frame = Vec::new();
        let error = Response::error(ErrorCode::TooManyConnections, "connection limit reached");
        encode_response(&mut frame, self.config.cluster_id, 0, &error)
            .expect("an error frame with a bounded message always fits");
        let _ = stream.write(&frame);
        let _ = stream.shutdown(Shutdown::Write);
    }

    fn take_completions(&mut self, touched: &mut Vec<usize>) {
        let completions = {
            let mut queue = self.shared.completions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *queue)
        };
        for completion in completions {
            let key = completion.connection;
            let Some(Some(connection)) = self.connections.get_mut(key.slot) else {
                continue;
            };
            if connection.generation != key.generation {
                continue; // the connection this answers has closed
            }
            connection.in_flight -= 1;
            if !matches!(connection.state, ConnectionState::Lingering { .. }) {
                connection.write_buffer.extend_from_slice(&completion.bytes);
            }
            touched.push(key.slot);
        }
    }

    fn drive(&mut self, slot: usize) {
        let verdict = match self.connections.get_mut(slot) {
            Some(Some(connection)) => drive_connection(
                connection,
                ConnectionKey { slot, generation: connection.generation },
                &Context {
                    decoder: &self.decoder,
                    config: &self.config,
                    shared: &self.shared,
                    handler: &*self.handler,
                    stopping: self.drain_deadline.is_some(),
                },
                &mut self.read_chunk,
            ),
            _ => return,
        };
        if let Verdict::Close = verdict {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut connection) = self.connections.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut connection.stream);
            self.shared.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
            self.free_slots.push(slot);
        }
    }

    fn begin_shutdown(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.drain_deadline = Some(Instant::now() + Duration::from_millis(self.config.shutdown_drain_ms));
    }

    fn drained(&self) -> bool {
        self.connections.iter().flatten().all(|c| c.in_flight == 0 && c.write_pending_bytes() == 0)
    }

    fn expire_lingering(&mut self) {
        // Also sends the Error frame of closing connections whose answers did not come in time.
        let now = Instant::now();
        for slot in 0..self.connections.len() {
            match &self.connections[slot] {
                Some(Connection { state: ConnectionState::Lingering { deadline }, .. }) if *deadline <= now => {
                    self.close(slot)
                }
                Some(Connection { state: ConnectionState::Closing { deadline }, .. }) if *deadline <= now => {
                    self.drive(slot)
                }
                _ => {}
            }
        }
    }
}

struct Context<'a, H: Handler> {
    decoder: &'a FrameDecoder,
    config: &'a ServerConfig,
    shared: &'a Arc<Shared>,
    handler: &'a H,
    stopping: bool,
}

/// Writes what is pending, then reads and dispatches as far as the limits allow.
fn drive_connection<H: Handler>(
    connection: &mut Connection,
    key: ConnectionKey,
    context: &Context<'_, H>,
    read_chunk: &mut [u8],
) -> Verdict {
    if flush(connection).is_err() {
        return Verdict::Close;
    }
    match connection.state {
        ConnectionState::Open if !context.stopping => {
            if read_and_dispatch(connection, key, context, read_chunk).is_err() {
                return Verdict::Close;
            }
            // The dispatch may have queued an Error frame: try to write it right away.
            if flush(connection).is_err() {
                return Verdict::Close;
            }
        }
        ConnectionState::Lingering { .. } => return discard_input(connection, read_chunk),
        _ => {}
    }
    if let ConnectionState::Closing { deadline } = connection.state {
        let answers_done = connection.in_flight == 0 || Instant::now() >= deadline;
        if answers_done && !connection.pending_error.is_empty() {
            let error = std::mem::take(&mut connection.pending_error);
            connection.write_buffer.extend_from_slice(&error);
            if flush(connection).is_err() {
                return Verdict::Close;
            }
        }
    }
    let flushed = connection.write_pending_bytes() == 0;
    match connection.state {
        ConnectionState::Closing { .. } if flushed && connection.pending_error.is_empty() => {
            let _ = connection.stream.shutdown(Shutdown::Write);
            connection.state =
                ConnectionState::Lingering { deadline: Instant::now() + Duration::from_millis(CLOSE_LINGER_MS) };
            discard_input(connection, read_chunk)
        }
        ConnectionState::PeerClosed if flushed && connection.in_flight == 0 => Verdict::Close,
        _ => Verdict::Keep,
    }
}

fn flush(connection: &mut Connection) -> io::Result<()> {
    while connection.write_offset < connection.write_buffer.len() {
        match connection.stream.write(&connection.write_buffer[connection.write_offset..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => connection.write_offset += written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    connection.write_buffer.clear();
    connection.write_offset = 0;
    Ok(())
}

/// Reads until the socket would block or a limit pauses the connection. Bounded: each pass either
/// dispatches frames (at most the in-flight limit before pausing) or reads new bytes, and the
/// unparsed input never exceeds one frame plus one read chunk.
fn read_and_dispatch<H: Handler>(
    connection: &mut Connection,
    key: ConnectionKey,
    context: &Context<'_, H>,
    read_chunk: &mut [u8],
) -> io::Result<()> {
    loop {
        let mut consumed = 0;
        while connection.state == ConnectionState::Open && !paused(connection, context.config) {
            match context.decoder.decode(&connection.read_buffer[consumed..]) {
                Ok(Some((frame, used))) => {
                    consumed += used;
                    dispatch(connection, key, context, frame);
                }
                Ok(None) => break,
                Err(error) => {
                    let message = error.error.to_string();
                    connection.queue_error(context.config.cluster_id, error.request_id, error.error.code(), &message);
                }
            }
        }
        connection.read_buffer.drain(..consumed);
        if connection.state != ConnectionState::Open || paused(connection, context.config) {
            return Ok(());
        }
        match connection.stream.read(read_chunk) {
            Ok(0) => {
                connection.state = ConnectionState::PeerClosed;
                return Ok(());
            }
            Ok(read) => connection.read_buffer.extend_from_slice(&read_chunk[..read]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
}

fn paused(connection: &Connection, config: &ServerConfig) -> bool {
    connection.in_flight >= config.requests_in_flight_per_connection_max
        || connection.write_pending_bytes() > config.write_buffer_bytes_max
}

fn dispatch<H: Handler>(connection: &mut Connection, key: ConnectionKey, context: &Context<'_, H>, frame: Frame) {
    let request_id = frame.header.request_id;
    match frame.message {
        Message::Request(request) => {
            connection.in_flight += 1;
            let responder =
                Responder { shared: Arc::clone(context.shared), connection: key, request_id, answered: false };
            context.handler.handle(request, responder);
        }
        // Responses and node-to-node kinds are valid frames but not requests on a client port.
        Message::Response(_) | Message::Peer { .. } => connection.queue_error(
            context.config.cluster_id,
            request_id,
            ErrorCode::UnknownMessageKind,
            "this port accepts client requests only",
        ),
    }
}

fn discard_input(connection: &mut Connection, read_chunk: &mut [u8]) -> Verdict {
    for _ in 0..LINGER_READS_PER_EVENT_MAX {
        match connection.stream.read(read_chunk) {
            Ok(0) => return Verdict::Close,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Verdict::Keep,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Verdict::Close,
        }
    }
    // A peer still sending after our Error frame gets no more of our time: the linger deadline
    // closes it.
    Verdict::Keep
}
