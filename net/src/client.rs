//! The blocking Rust client: one TCP connection at a time to the first reachable of a list of
//! addresses, pipelining (`send` N requests, `recv` N answers matched by request id) and simple
//! call-and-wait methods. Every wait is bounded by a named timeout.
//!
//! Retrying a transfer batch is safe because the transfer id is the idempotency key: a resent
//! transfer that was already decided answers its original outcome (flagged as replayed).
//! A lost connection abandons every request in flight on it; the next call reconnects. A connection
//! that fails or times out (the server crashed, was paused or cut off) also moves the client on: the
//! next connection tries the next address first, so a node that stops answering costs one request
//! timeout, not one per retry.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::protocol::{
    encode_request, AccountLookup, AccountRead, Consistency, DecodeError, ErrorCode, FrameDecoder, Message, NodeStatus,
    ProtocolError, ReadLevel, Request, Response, TransferLookup,
};
use crate::server::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX;
use crate::types::{transfer_id_from_parts, AccountId, CreateAccount, HistoryEntry, ItemResult, Transfer, TransferId};

/// Default for [`ClientConfig::connect_timeout_ms`], per address tried.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Default for [`ClientConfig::request_timeout_ms`]: the longest wait for one answer (or for one
/// request to be written).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default for [`ClientConfig::retry_attempts_max`], counting the first attempt.
pub const RETRY_ATTEMPTS_MAX: u32 = 5;
/// Default for [`ClientConfig::retry_backoff_ms`], the pause before the first retry; it doubles per
/// retry up to [`RETRY_BACKOFF_MS_MAX`].
pub const RETRY_BACKOFF_MS: u64 = 50;
pub const RETRY_BACKOFF_MS_MAX: u64 = 2_000;
/// Most server addresses one client is configured with.
pub const ADDRESSES_MAX: usize = 64;
const READ_CHUNK_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("no server reachable among {addresses} address(es); last error: {last_error}")]
    Unreachable { addresses: usize, last_error: io::Error },
    #[error("the server closed the connection")]
    ConnectionClosed,
    #[error("no answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("request refused locally: {0}")]
    Encode(#[from] ProtocolError),
    #[error("invalid frame from the server: {0}")]
    Decode(#[from] DecodeError),
    #[error("server error {code}: {message}")]
    Server { code: ErrorCode, message: String },
    #[error("unexpected answer: expected {expected}, got {got}")]
    UnexpectedResponse { expected: &'static str, got: String },
    #[error("{limit} requests already in flight on this connection")]
    TooManyInFlight { limit: usize },
    #[error("recv() with no request in flight")]
    NothingInFlight,
    #[error("invalid client config: {0}")]
    InvalidConfig(&'static str),
}

impl ClientError {
    /// Whether resending the same request (same ids) may succeed: the connection failed, or the
    /// server said so (busy, not leader, unavailable).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Io(_)
            | ClientError::Unreachable { .. }
            | ClientError::ConnectionClosed
            | ClientError::Timeout { .. }
            | ClientError::Decode(_) => true,
            ClientError::Server { code, .. } => code.is_retryable(),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Tried in order on (re)connect, starting with the last one that worked.
    pub addresses: Vec<SocketAddr>,
    pub cluster_id: u128,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Keep at or below the server's in-flight limit: past it the server stops reading and a
    /// client that keeps writing without reading would stall both sides until the timeout.
    pub requests_in_flight_max: usize,
    pub retry_attempts_max: u32,
    pub retry_backoff_ms: u64,
}

impl ClientConfig {
    pub fn new(addresses: Vec<SocketAddr>, cluster_id: u128) -> ClientConfig {
        ClientConfig {
            addresses,
            cluster_id,
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
            retry_attempts_max: RETRY_ATTEMPTS_MAX,
            retry_backoff_ms: RETRY_BACKOFF_MS,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.addresses.is_empty() || self.addresses.len() > ADDRESSES_MAX {
            return Err(ClientError::InvalidConfig("addresses must hold 1..=ADDRESSES_MAX entries"));
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(ClientError::InvalidConfig("timeouts must be positive"));
        }
        if !(1..=REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX).contains(&self.requests_in_flight_max) {
            return Err(ClientError::InvalidConfig(
                "requests_in_flight_max must be 1..=REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX",
            ));
        }
        if self.retry_attempts_max == 0 {
            return Err(ClientError::InvalidConfig("retry_attempts_max counts the first attempt: at least 1"));
        }
        Ok(())
    }
}

/// One page of an account's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Pass as `from_seq` for the next page; `None` after the last page.
    pub next_from_seq: Option<u64>,
    /// No account has the id (then there are no entries and no next page).
    pub account_not_found: bool,
}

pub struct Client {
    config: ClientConfig,
    decoder: FrameDecoder,
    stream: Option<TcpStream>,
    /// Index in `config.addresses` of the current (or last working) server.
    address_index: usize,
    next_request_id: u64,
    /// Request ids sent on the current connection and not yet answered.
    in_flight: Vec<u64>,
    /// Answers received while `call` waited for another one; handed out by `recv` first.
    ready: VecDeque<(u64, Response)>,
    read_buffer: Vec<u8>,
    write_buffer: Vec<u8>,
    read_chunk: Vec<u8>,
}

impl Client {
    /// Validates the config and connects to the first reachable address.
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let mut client = Client::new(config)?;
        client.ensure_connected()?;
        Ok(client)
    }

    /// Like [`Client::connect`] but connects on first use.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        Ok(Client {
            decoder: FrameDecoder::new(config.cluster_id),
            config,
            stream: None,
            address_index: 0,
            next_request_id: 1,
            in_flight: Vec::new(),
            ready: VecDeque::new(),
            read_buffer: Vec::new(),
            write_buffer: Vec::new(),
            read_chunk: vec![0; READ_CHUNK_BYTES],
        })
    }

    /// The address of the current connection, if connected.
    pub fn connected_address(&self) -> Option<SocketAddr> {
        self.stream.as_ref().map(|_| self.config.addresses[self.address_index])
    }

    /// Requests sent and not yet returned by `recv`.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.ready.len()
    }

    /// Drops the connection; requests in flight on it are abandoned.
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.in_flight.clear();
        self.ready.clear();
        self.read_buffer.clear();
    }

    /// Drops a connection that failed or timed out and makes the next address the first one tried:
    /// a paused server still accepts connections (its kernel does), so reconnecting to it would only
    /// wait out another timeout.
    fn move_on(&mut self) {
        self.disconnect();
        self.address_index = (self.address_index + 1) % self.config.addresses.len();
    }

    fn ensure_connected(&mut self) -> Result<(), ClientError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let count = self.config.addresses.len();
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let mut last_error = io::Error::other("no address tried");
        for step in 0..count {
            let index = (self.address_index + step) % count;
            match TcpStream::connect_timeout(&self.config.addresses[index], timeout) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true); // latency only
                    stream.set_write_timeout(Some(Duration::from_millis(self.config.request_timeout_ms)))?;
                    self.stream = Some(stream);
                    self.address_index = index;
                    return Ok(());
                }
                Err(error) => last_error = error,
            }
        }
        Err(ClientError::Unreachable { addresses: count, last_error })
    }

    /// Sends one request without waiting; returns its id for matching with [`Client::recv`].
    pub fn send(&mut self, request: &Request) -> Result<u64, ClientError> {
        if self.in_flight() >= self.config.requests_in_flight_max {
            return Err(ClientError::TooManyInFlight { limit: self.config.requests_in_flight_max });
        }
        self.write_buffer.clear();
        let request_id = self.next_request_id;
        encode_request(&mut self.write_buffer, self.config.cluster_id, request_id, request)?;
        self.ensure_connected()?;
        let stream = self.stream.as_mut().expect("ensure_connected succeeded");
        if let Err(error) = stream.write_all(&self.write_buffer) {
            self.move_on();
            return Err(timeout_or_io(error, self.config.request_timeout_ms));
        }
        self.next_request_id += 1;
        self.in_flight.push(request_id);
        Ok(request_id)
    }

    /// The next answer, in arrival order (the server may answer pipelined requests out of order).
    /// Error frames come back as `Response::Error`; a transport failure drops the connection.
    pub fn recv(&mut self) -> Result<(u64, Response), ClientError> {
        if let Some(answer) = self.ready.pop_front() {
            return Ok(answer);
        }
        if self.in_flight.is_empty() {
            return Err(ClientError::NothingInFlight);
        }
        let result = self.read_answer();
        if result.is_err() {
            self.move_on();
        }
        result
    }

    /// Like [`Client::recv`], but gives up at `deadline` and returns `Ok(None)`, keeping the connection
    /// and every request in flight: an open-loop sender waits for answers only until its next batch is
    /// due. The request timeout still applies when it comes first.
    pub fn recv_until(&mut self, deadline: Instant) -> Result<Option<(u64, Response)>, ClientError> {
        if let Some(answer) = self.ready.pop_front() {
            return Ok(Some(answer));
        }
        if self.in_flight.is_empty() {
            return Err(ClientError::NothingInFlight);
        }
        let result = self.read_answer_until(Some(deadline));
        if result.is_err() {
            self.move_on();
        }
        result
    }

    fn read_answer(&mut self) -> Result<(u64, Response), ClientError> {
        let answer = self.read_answer_until(None)?;
        Ok(answer.expect("without a soft deadline an answer or an error comes back"))
    }

    /// Reads until one whole answer is decoded. `soft_deadline` (if sooner than the request timeout)
    /// ends the wait with `Ok(None)` instead of an error.
    fn read_answer_until(&mut self, soft_deadline: Option<Instant>) -> Result<Option<(u64, Response)>, ClientError> {
        let timeout_ms = self.config.request_timeout_ms;
        let hard_deadline = Instant::now() + Duration::from_millis(timeout_ms);
        // Bounded: every pass reads at least one byte or returns, and the deadlines cap the waits.
        loop {
            if let Some((frame, used)) = self.decoder.decode(&self.read_buffer)? {
                self.read_buffer.drain(..used);
                let request_id = frame.header.request_id;
                let Message::Response(response) = frame.message else {
                    return Err(ClientError::UnexpectedResponse {
                        expected: "a response",
                        got: format!("{:?}", frame.message),
                    });
                };
                self.in_flight.retain(|id| *id != request_id);
                return Ok(Some((request_id, response)));
            }
            let now = Instant::now();
            if soft_deadline.is_some_and(|soft| soft <= now && soft < hard_deadline) {
                return Ok(None);
            }
            let deadline = soft_deadline.map_or(hard_deadline, |soft| soft.min(hard_deadline));
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return Err(ClientError::Timeout { timeout_ms });
            }
            let stream = self.stream.as_mut().ok_or(ClientError::ConnectionClosed)?;
            stream.set_read_timeout(Some(remaining))?;
            match stream.read(&mut self.read_chunk) {
                Ok(0) => return Err(ClientError::ConnectionClosed),
                Ok(read) => self.read_buffer.extend_from_slice(&self.read_chunk[..read]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if soft_deadline.is_some()
                        && matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(error) => return Err(timeout_or_io(error, timeout_ms)),
            }
        }
    }

    /// Sends one request and waits for its answer. An Error answer becomes `ClientError::Server`.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let request_id = self.send(request)?;
        // Bounded by the in-flight limit: each pass takes one answer to an earlier request.
        for _ in 0..=self.config.requests_in_flight_max {
            let (answered_id, response) = self.read_answer().inspect_err(|_| self.move_on())?;
            // Request id 0 answers a frame the server could not attribute: the connection is lost.
            if answered_id == request_id || answered_id == 0 {
                if answered_id == 0 {
                    self.disconnect();
                }
                return match response {
                    Response::Error { code, message } => Err(ClientError::Server { code, message }),
                    response => Ok(response),
                };
            }
            self.ready.push_back((answered_id, response));
        }
        self.disconnect();
        Err(ClientError::UnexpectedResponse { expected: "an answer to the request sent", got: "other ids only".into() })
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(unexpected("Pong", other)),
        }
    }

    pub fn status(&mut self) -> Result<NodeStatus, ClientError> {
        match self.call(&Request::Status)? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("Status", other)),
        }
    }

    pub fn create_accounts(&mut self, accounts: &[CreateAccount]) -> Result<Vec<ItemResult>, ClientError> {
        match self.call(&Request::CreateAccounts(accounts.to_vec()))? {
            Response::Results(results) => Ok(results),
            other => Err(unexpected("Results", other)),
        }
    }

    pub fn create_transfers(&mut self, transfers: &[Transfer]) -> Result<Vec<ItemResult>, ClientError> {
        match self.call(&Request::CreateTransfers(transfers.to_vec()))? {
            Response::Results(results) => Ok(results),
            other => Err(unexpected("Results", other)),
        }
    }

    /// Sends the same batch (same transfer ids) until it is answered, reconnecting after a lost
    /// connection, at most `retry_attempts_max` attempts with doubling backoff. Safe because
    /// transfer ids are idempotency keys: results of transfers decided by an earlier attempt come
    /// back flagged as replayed. Requests pipelined on a lost connection are abandoned.
    pub fn create_transfers_retrying(&mut self, transfers: &[Transfer]) -> Result<Vec<ItemResult>, ClientError> {
        let mut backoff_ms = self.config.retry_backoff_ms;
        let mut attempt = 1;
        loop {
            match self.create_transfers(transfers) {
                Err(error) if error.is_retryable() && attempt < self.config.retry_attempts_max => {
                    std::thread::sleep(Duration::from_millis(backoff_ms));
                    backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Looks `ids` up, every one at `consistency` (see [`Request::lookup`]: one `AtLeast` sequence
    /// suits accounts of one partition; use [`Client::lookup`] to give each account its own).
    pub fn lookup_accounts(
        &mut self,
        consistency: Consistency,
        ids: &[AccountId],
    ) -> Result<Vec<AccountLookup>, ClientError> {
        self.call_lookup(&Request::lookup(consistency, ids))
    }

    /// Looks accounts up at `consistency`, each with its own minimum sequence (`AtLeast` only): the
    /// `seq` the last write to that account was answered with, whatever its partition.
    pub fn lookup(&mut self, consistency: ReadLevel, reads: &[AccountRead]) -> Result<Vec<AccountLookup>, ClientError> {
        self.call_lookup(&Request::LookupAccounts { consistency, reads: reads.to_vec() })
    }

    fn call_lookup(&mut self, request: &Request) -> Result<Vec<AccountLookup>, ClientError> {
        match self.call(request)? {
            Response::Accounts(accounts) => Ok(accounts),
            other => Err(unexpected("Accounts", other)),
        }
    }

    /// What became of each transfer id within the idempotency window (outcome, seq and fields).
    pub fn lookup_transfers(&mut self, ids: &[TransferId]) -> Result<Vec<TransferLookup>, ClientError> {
        match self.call(&Request::LookupTransfers(ids.to_vec()))? {
            Response::Transfers(lookups) => Ok(lookups),
            other => Err(unexpected("Transfers", other)),
        }
    }

    pub fn account_history(
        &mut self,
        account_id: AccountId,
        from_seq: u64,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        match self.call(&Request::AccountHistory { account_id, from_seq, limit })? {
            Response::History { entries, next_from_seq, account_not_found } => {
                Ok(HistoryPage { entries, next_from_seq, account_not_found })
            }
            other => Err(unexpected("History", other)),
        }
    }
}

fn unexpected(expected: &'static str, got: Response) -> ClientError {
    ClientError::UnexpectedResponse { expected, got: format!("{got:?}") }
}

fn timeout_or_io(error: io::Error, timeout_ms: u64) -> ClientError {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout { timeout_ms },
        _ => ClientError::Io(error),
    }
}

/// A new time-ordered transfer id: the current Unix time in ms in the top 48 bits and 80 bits from
/// a process-wide SplitMix64 stream seeded from the clock, the process id and a counter, so two
/// processes starting in the same instant still diverge. Not cryptographic: ids only need to be
/// unique, and a collision is caught by the engine as `ExistsWithDifferentFields`.
pub fn new_transfer_id() -> TransferId {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seed = *SEED.get_or_init(|| {
        let pid = std::process::id() as u64;
        splitmix64(now.as_nanos() as u64 ^ pid.rotate_left(32) ^ (&COUNTER as *const AtomicU64 as u64))
    });
    let step = COUNTER.fetch_add(2, Ordering::Relaxed);
    let high = splitmix64(seed.wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let low = splitmix64(seed.wrapping_add((step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let entropy = ((high as u128) << 64) | low as u128;
    transfer_id_from_parts(now.as_millis() as u64, entropy)
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::transfer_id_timestamp_ms;
    use std::collections::HashSet;

    #[test]
    fn transfer_ids_are_unique_and_carry_the_time() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
        let ids: Vec<TransferId> = (0..100_000).map(|_| new_transfer_id()).collect();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        for id in &ids {
            assert!((before..=after).contains(&transfer_id_timestamp_ms(*id)));
        }
    }

    #[test]
    fn config_is_validated() {
        let address: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        assert!(matches!(Client::new(ClientConfig::new(vec![], 1)), Err(ClientError::InvalidConfig(_))));
        let mut config = ClientConfig::new(vec![address], 1);
        config.requests_in_flight_max = REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX + 1;
        assert!(matches!(Client::new(config), Err(ClientError::InvalidConfig(_))));
        let mut config = ClientConfig::new(vec![address], 1);
        config.retry_attempts_max = 0;
        assert!(matches!(Client::new(config), Err(ClientError::InvalidConfig(_))));
    }
}
