//! Server and client over real loopback sockets, with an in-test bank as the application.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use net::client::{new_transfer_id, Client, ClientConfig, ClientError};
use net::protocol::*;
use net::server::{Handler, Responder, Server, ServerConfig, ServerHandle};
use net::types::*;

const CLUSTER: u128 = 0x5EED;
const WAIT: Duration = Duration::from_secs(5);

/// A minimal single-ledger bank: enough behaviour for the net crate to carry real answers.
#[derive(Default)]
struct Bank {
    state: Mutex<BankState>,
}

#[derive(Default)]
struct BankState {
    seq: u64,
    accounts: HashMap<AccountId, Account>,
    transfers: HashMap<TransferId, (Transfer, ItemResult)>,
    history: HashMap<AccountId, Vec<HistoryEntry>>,
}

impl Bank {
    fn answer(&self, request: Request) -> Response {
        let mut state = self.state.lock().expect("test lock");
        match request {
            Request::Ping => Response::Pong,
            Request::Status => Response::Status(NodeStatus {
                node_id: 1,
                partitions: 1,
                shards: 1,
                partition_states: vec![PartitionStatus {
                    partition: 0,
                    flags: PARTITION_FLAG_LEADER,
                    last_index: state.seq,
                    commit_index: state.seq,
                    applied_index: state.seq,
                    applied_seq: state.seq,
                    ..PartitionStatus::default()
                }],
                nodes: Vec::new(),
            }),
            Request::CreateAccounts(accounts) => {
                let results = accounts
                    .iter()
                    .enumerate()
                    .map(|(index, create)| state.create_account(index as u32, create))
                    .collect();
                Response::Results(results)
            }
            Request::CreateTransfers(transfers) => {
                let results = transfers
                    .iter()
                    .enumerate()
                    .map(|(index, transfer)| state.create_transfer(index as u32, transfer))
                    .collect();
                Response::Results(results)
            }
            Request::LookupAccounts { reads, .. } => Response::Accounts(
                reads
                    .iter()
                    .map(|read| match state.accounts.get(&read.id) {
                        Some(account) => AccountLookup::Found(*account),
                        None => AccountLookup::NotFound { id: read.id, code: ResultCode::AccountNotFound },
                    })
                    .collect(),
            ),
            Request::LookupTransfers(ids) => Response::Transfers(
                ids.iter()
                    .map(|id| match state.transfers.get(id) {
                        Some((transfer, result)) => TransferLookup::Found {
                            transfer: *transfer,
                            code: result.code,
                            seq: result.seq,
                            timestamp_ns: 0,
                        },
                        None => TransferLookup::NotFound { id: *id },
                    })
                    .collect(),
            ),
            Request::AccountHistory { account_id, from_seq, limit } => {
                // Newest first from `from_seq` (0 = newest), as the engine serves it.
                let mut all = state.history.get(&account_id).cloned().unwrap_or_default();
                all.reverse();
                let start = if from_seq == 0 { u64::MAX } else { from_seq };
                let eligible: Vec<HistoryEntry> = all.into_iter().filter(|e| e.seq <= start).collect();
                let entries: Vec<HistoryEntry> = eligible.iter().take(history_page_entries(limit)).copied().collect();
                let next_from_seq = eligible.get(entries.len()).map(|e| e.seq);
                let account_not_found = !state.accounts.contains_key(&account_id);
                Response::History { entries, next_from_seq, account_not_found }
            }
        }
    }
}

impl BankState {
    fn create_account(&mut self, index: u32, create: &CreateAccount) -> ItemResult {
        self.seq += 1;
        let code = if self.accounts.contains_key(&create.id) {
            ResultCode::Exists
        } else {
            let account = Account {
                id: create.id,
                ledger: create.ledger,
                flags: create.flags,
                user_data: create.user_data,
                balance: 0,
                created_seq: self.seq,
                last_seq: self.seq,
            };
            self.accounts.insert(create.id, account);
            self.record(create.id, HistoryKind::AccountCreated, ResultCode::Ok, Transfer::default());
            ResultCode::Ok
        };
        ItemResult { index, code, flags: 0, seq: self.seq }
    }

    fn create_transfer(&mut self, index: u32, transfer: &Transfer) -> ItemResult {
        if let Some((original, result)) = self.transfers.get(&transfer.id) {
            let code = if original == transfer { result.code } else { ResultCode::ExistsWithDifferentFields };
            return ItemResult { index, code, flags: RESULT_FLAG_REPLAYED, seq: result.seq };
        }
        self.seq += 1;
        let debit = self.accounts.get(&transfer.debit_account_id).copied();
        let credit = self.accounts.get(&transfer.credit_account_id).copied();
        let code = match (debit, credit) {
            (None, _) => ResultCode::DebitAccountNotFound,
            (_, None) => ResultCode::CreditAccountNotFound,
            (Some(debit), Some(_)) if !debit.is_external() && debit.balance < transfer.amount as i64 => {
                ResultCode::InsufficientFunds
            }
            _ => ResultCode::Ok,
        };
        if code == ResultCode::Ok {
            let seq = self.seq;
            let debit = self.accounts.get_mut(&transfer.debit_account_id).expect("checked");
            debit.balance -= transfer.amount as i64;
            debit.last_seq = seq;
            let credit = self.accounts.get_mut(&transfer.credit_account_id).expect("checked");
            credit.balance += transfer.amount as i64;
            credit.last_seq = seq;
            self.record(transfer.debit_account_id, HistoryKind::TransferPosted, code, *transfer);
            self.record(transfer.credit_account_id, HistoryKind::TransferPosted, code, *transfer);
        }
        let result = ItemResult { index, code, flags: 0, seq: self.seq };
        self.transfers.insert(transfer.id, (*transfer, result));
        result
    }

    fn record(&mut self, account_id: AccountId, kind: HistoryKind, code: ResultCode, transfer: Transfer) {
        let balance_after = self.accounts[&account_id].balance;
        let entry = HistoryEntry { seq: self.seq, timestamp_ns: self.seq * 1000, kind, code, transfer, balance_after };
        self.history.entry(account_id).or_default().push(entry);
    }
}

/// Answers at once, on the event-loop thread.
struct Immediate(Arc<Bank>);
impl Handler for Immediate {
    fn handle(&self, request: Request, responder: Responder) {
        if request == Request::Status {
            drop(responder); // the server must answer Internal for us
            return;
        }
        responder.respond(self.0.answer(request));
    }
}

/// Answers from a worker thread, each burst in reverse arrival order: out-of-order completion.
struct Reversing(Mutex<Sender<(Request, Responder)>>);
impl Reversing {
    fn new(bank: Arc<Bank>) -> Reversing {
        let (sender, receiver) = channel::<(Request, Responder)>();
        thread::spawn(move || {
            while let Ok(first) = receiver.recv() {
                let mut burst = vec![first];
                while let Ok(next) = receiver.recv_timeout(Duration::from_millis(2)) {
                    burst.push(next);
                }
                for (request, responder) in burst.into_iter().rev() {
                    responder.respond(bank.answer(request));
                }
            }
        });
        Reversing(Mutex::new(sender))
    }
}
impl Handler for Reversing {
    fn handle(&self, request: Request, responder: Responder) {
        self.0.lock().expect("test lock").send((request, responder)).expect("worker alive");
    }
}

/// Hands every request to the test, which answers (or not) when it wants.
struct Holding(Mutex<Sender<(Request, Responder)>>);
fn holding() -> (Holding, Receiver<(Request, Responder)>) {
    let (sender, receiver) = channel();
    (Holding(Mutex::new(sender)), receiver)
}
impl Handler for Holding {
    fn handle(&self, request: Request, responder: Responder) {
        // The test may have finished with the receiver; then the responder answers Internal.
        let _ = self.0.lock().expect("test lock").send((request, responder));
    }
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal")
}

fn start(handler: impl Handler, tweak: impl FnOnce(&mut ServerConfig)) -> ServerHandle {
    let mut config = ServerConfig::new(local(), CLUSTER);
    tweak(&mut config);
    Server::start(config, handler).expect("server starts")
}

fn client_config(addresses: Vec<SocketAddr>) -> ClientConfig {
    let mut config = ClientConfig::new(addresses, CLUSTER);
    config.request_timeout_ms = 5_000;
    config
}

fn client(address: SocketAddr) -> Client {
    Client::connect(client_config(vec![address])).expect("connects")
}

fn open_accounts(client: &mut Client, ids: &[AccountId], external: AccountId) {
    let creates: Vec<CreateAccount> = ids
        .iter()
        .map(|id| CreateAccount {
            id: *id,
            ledger: 840,
            flags: if *id == external { ACCOUNT_FLAG_EXTERNAL } else { 0 },
            user_data: 0,
        })
        .collect();
    let results = client.create_accounts(&creates).expect("accounts created");
    assert!(results.iter().all(|r| r.code == ResultCode::Ok));
}

fn transfer(debit: AccountId, credit: AccountId, amount: u64) -> Transfer {
    Transfer {
        id: new_transfer_id(),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 840,
        flags: 0,
        user_data: 0,
    }
}

/// Reads one frame from a raw socket (bounded by WAIT).
fn read_frame(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Frame {
    stream.set_read_timeout(Some(WAIT)).expect("set timeout");
    let decoder = FrameDecoder::new(CLUSTER);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some((frame, used)) = decoder.decode(buffer).expect("server frames are valid") {
            buffer.drain(..used);
            return frame;
        }
        let read = stream.read(&mut chunk).expect("frame arrives before the timeout");
        assert!(read > 0, "connection closed before a whole frame arrived");
        buffer.extend_from_slice(&chunk[..read]);
    }
    panic!("no frame within {WAIT:?}");
}

fn error_code_of(frame: &Frame) -> ErrorCode {
    match &frame.message {
        Message::Response(Response::Error { code, .. }) => *code,
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

/// The server closed the connection: reads end (EOF or reset) before the timeout.
fn assert_closed(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(WAIT)).expect("set timeout");
    let mut chunk = [0u8; 256];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(error) => panic!("connection not closed: {error}"),
        }
    }
    panic!("connection still open after {WAIT:?}");
}

#[test]
fn pipelined_requests_complete_out_of_order_and_match_by_id() {
    let bank = Arc::new(Bank::default());
    let server = start(Reversing::new(Arc::clone(&bank)), |_| {});
    let mut client = client(server.local_address());
    let ids: Vec<AccountId> = (1..=64).collect();
    open_accounts(&mut client, &ids, 0);
    let mut out_of_order = 0;
    for _round in 0..10 {
        let mut expected = HashMap::new();
        for id in &ids {
            let request = Request::lookup(Consistency::Any, &[*id, 1000 + *id]);
            expected.insert(client.send(&request).expect("sent"), *id);
        }
        assert!(matches!(client.send(&Request::Ping), Err(ClientError::TooManyInFlight { limit: 64 })));
        let mut last_id = 0;
        for _ in 0..ids.len() {
            let (request_id, response) = client.recv().expect("answer");
            let account_id = expected.remove(&request_id).expect("each request answered once");
            let Response::Accounts(lookups) = response else { panic!("not accounts") };
            assert!(matches!(lookups[0], AccountLookup::Found(a) if a.id == account_id));
            assert_eq!(
                lookups[1],
                AccountLookup::NotFound { id: 1000 + account_id, code: ResultCode::AccountNotFound }
            );
            if request_id < last_id {
                out_of_order += 1;
            }
            last_id = request_id;
        }
        assert!(matches!(client.recv(), Err(ClientError::NothingInFlight)));
    }
    assert!(out_of_order > 0, "the reversing handler must have reordered some answers");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn many_connections_move_money_concurrently_and_conserve_it() {
    let bank = Arc::new(Bank::default());
    let server = start(Immediate(Arc::clone(&bank)), |_| {});
    let address = server.local_address();
    let mut setup = client(address);
    let accounts: Vec<AccountId> = (1..=33).collect();
    open_accounts(&mut setup, &accounts, 1);
    let funding: Vec<Transfer> = (2..=33).map(|id| transfer(1, id, 1_000)).collect();
    assert!(setup.create_transfers(&funding).expect("funded").iter().all(|r| r.code == ResultCode::Ok));

    let workers: Vec<_> = (2..=33u64)
        .map(|id| {
            thread::spawn(move || {
                let mut client = client(address);
                for round in 0..50u64 {
                    let to = 2 + (id + round) % 32;
                    let batch = [transfer(id, to, 3), transfer(id, if to == id { 1 } else { to }, 2)];
                    let results = client.create_transfers(&batch).expect("answered");
                    assert_eq!(results.len(), 2);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker ok");
    }
    let lookups = setup.lookup_accounts(Consistency::Linearizable, &accounts).expect("lookups");
    let total: i64 = lookups
        .iter()
        .map(|l| match l {
            AccountLookup::Found(a) => a.balance,
            _ => panic!("missing"),
        })
        .sum();
    assert_eq!(total, 0, "money only moves");
    let history = setup.account_history(2, 0, 3).expect("history");
    assert_eq!(history.entries.len(), 3);
    assert!(history.entries.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
    let next = setup
        .account_history(2, history.next_from_seq.expect("more pages"), 10_000.min(HISTORY_LIMIT_MAX))
        .expect("page 2");
    assert!(next.entries.iter().all(|e| e.seq < history.entries[2].seq));
    assert_eq!(next.entries.last().expect("older page").kind, HistoryKind::AccountCreated);
    server.shutdown().expect("clean shutdown");
}

fn crafted_frame(kind: u16, body: &[u8], edit: impl FnOnce(&mut Vec<u8>), reseal: bool) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_raw_frame(&mut frame, kind, CLUSTER, 41, body);
    edit(&mut frame);
    if reseal {
        seal_header(&mut frame[..HEADER_BYTES]);
    }
    frame
}

#[test]
fn each_bad_frame_gets_its_error_code_and_closes_only_its_connection() {
    let server = start(Immediate(Arc::new(Bank::default())), |_| {});
    let address = server.local_address();
    let mut bystander = client(address);
    bystander.ping().expect("works before");

    let mut transfers_over = (BATCH_ITEMS_MAX as u32 + 1).to_le_bytes().to_vec();
    transfers_over.extend_from_slice(&[0; 4]);
    transfers_over.resize(8 + 64 * (BATCH_ITEMS_MAX + 1), 0);
    let empty_batch = [0u8; 8];
    let mut pong = Vec::new();
    encode_response(&mut pong, CLUSTER, 41, &Response::Pong).expect("ok");
    let cases: Vec<(&str, Vec<u8>, ErrorCode, u64)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), ErrorCode::BadMagic, 0),
        ("version", crafted_frame(kind::PING, &[], |f| f[4] = 9, true), ErrorCode::UnsupportedVersion, 41),
        ("cluster", crafted_frame(kind::PING, &[], |f| f[8] ^= 0xFF, true), ErrorCode::WrongClusterId, 41),
        ("header checksum", crafted_frame(kind::PING, &[], |f| f[24] ^= 1, false), ErrorCode::HeaderChecksum, 0),
        (
            "body checksum",
            crafted_frame(kind::CREATE_TRANSFERS, &[1, 0, 0, 0], |f| f[HEADER_BYTES] = 2, false),
            ErrorCode::BodyChecksum,
            41,
        ),
        // Only a header claiming 2 MiB: refused before any body is buffered.
        (
            "too large",
            crafted_frame(kind::PING, &[], |f| f[32..36].copy_from_slice(&(2u32 << 20).to_le_bytes()), true),
            ErrorCode::FrameTooLarge,
            41,
        ),
        (
            "too many items",
            crafted_frame(kind::CREATE_TRANSFERS, &transfers_over, |_| {}, false),
            ErrorCode::TooManyItems,
            41,
        ),
        ("empty batch", crafted_frame(kind::CREATE_ACCOUNTS, &empty_batch, |_| {}, false), ErrorCode::EmptyBatch, 41),
        ("unknown kind", crafted_frame(0x0042, &[], |_| {}, false), ErrorCode::UnknownMessageKind, 41),
        ("response sent to server", pong, ErrorCode::UnknownMessageKind, 41),
        (
            "peer kind on client port",
            crafted_frame(kind::PEER_MIN, &[1], |_| {}, false),
            ErrorCode::UnknownMessageKind,
            41,
        ),
        (
            "malformed",
            crafted_frame(kind::CREATE_ACCOUNTS, &[1, 0, 0, 0, 0, 0, 0, 0, 9], |_| {}, false),
            ErrorCode::MalformedFrame,
            41,
        ),
    ];
    for (name, bytes, expected, request_id) in cases {
        let mut stream = TcpStream::connect(address).expect("connect");
        // A valid ping first: the connection works until the bad frame.
        let mut good = Vec::new();
        encode_request(&mut good, CLUSTER, 7, &Request::Ping).expect("ok");
        stream.write_all(&good).expect("write");
        stream.write_all(&bytes).expect("write");
        let mut buffer = Vec::new();
        let pong = read_frame(&mut stream, &mut buffer);
        assert_eq!((pong.header.request_id, pong.message), (7, Message::Response(Response::Pong)), "{name}");
        let error = read_frame(&mut stream, &mut buffer);
        assert_eq!(error_code_of(&error), expected, "{name}");
        // Issue 16, item 3: the request id is the refused frame's when its header checksum held, 0
        // when it could not be trusted; the cluster id is always the node's own, not the client's.
        assert_eq!(error.header.request_id, request_id, "{name}");
        assert_eq!(error.header.cluster_id, CLUSTER, "{name}");
        assert_closed(&mut stream);
        bystander.ping().unwrap_or_else(|e| panic!("bystander broken after {name}: {e}"));
    }
    server.shutdown().expect("clean shutdown");
}

#[test]
fn in_flight_limit_pauses_reading_without_deadlock() {
    let (handler, requests) = holding();
    let server = start(handler, |c| c.requests_in_flight_per_connection_max = 4);
    let mut stream = TcpStream::connect(server.local_address()).expect("connect");
    let mut frames = Vec::new();
    for request_id in 1..=40 {
        encode_request(&mut frames, CLUSTER, request_id, &Request::Ping).expect("ok");
    }
    stream.write_all(&frames).expect("40 pings fit in the socket buffers");
    let mut answered = 0;
    let mut buffer = Vec::new();
    // Bounded: each round answers at least one request, 40 in all.
    for _round in 0..40 {
        let mut held = Vec::new();
        while let Ok(request) = requests.recv_timeout(Duration::from_millis(100)) {
            held.push(request);
        }
        if held.is_empty() {
            break;
        }
        assert!(held.len() <= 4, "the server read past its in-flight limit: {}", held.len());
        for (_, responder) in held.drain(..) {
            responder.respond(Response::Pong);
            answered += 1;
        }
    }
    assert_eq!(answered, 40);
    let mut seen: Vec<u64> = (0..40).map(|_| read_frame(&mut stream, &mut buffer).header.request_id).collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
    server.shutdown().expect("clean shutdown");
}

#[test]
fn a_dropped_responder_answers_internal() {
    let server = start(Immediate(Arc::new(Bank::default())), |_| {});
    let mut client = client(server.local_address());
    match client.status() {
        Err(ClientError::Server { code: ErrorCode::Internal, .. }) => {}
        other => panic!("expected Internal, got {other:?}"),
    }
    client.ping().expect("the connection stays usable");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn unanswered_request_times_out_on_the_client() {
    let (handler, requests) = holding();
    let server = start(handler, |_| {});
    let mut config = client_config(vec![server.local_address()]);
    config.request_timeout_ms = 200;
    let mut client = Client::connect(config).expect("connects");
    let started = Instant::now();
    assert!(matches!(client.ping(), Err(ClientError::Timeout { timeout_ms: 200 })));
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(requests);
    server.shutdown().expect("clean shutdown");
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let server = start(Immediate(Arc::new(Bank::default())), |c| c.connections_max = 2);
    let mut first = client(server.local_address());
    let mut second = client(server.local_address());
    first.ping().expect("within limit");
    second.ping().expect("within limit");
    let mut third = client(server.local_address());
    match third.ping() {
        Err(ClientError::Server { code: ErrorCode::TooManyConnections, .. }) => {}
        Err(ClientError::Io(_)) | Err(ClientError::ConnectionClosed) => {} // refusal raced our write
        other => panic!("expected refusal, got {other:?}"),
    }
    drop(first);
    // The freed slot is reusable (the server notices the close on its next event).
    let deadline = Instant::now() + WAIT;
    loop {
        if third.ping().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        thread::sleep(Duration::from_millis(20));
    }
    server.shutdown().expect("clean shutdown");
}

#[test]
fn shutdown_finishes_answers_in_flight() {
    let (handler, requests) = holding();
    let server = start(handler, |_| {});
    let mut client = client(server.local_address());
    let request_id = client.send(&Request::Ping).expect("sent");
    let (_, responder) = requests.recv_timeout(WAIT).expect("request reached the handler");
    let answerer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        responder.respond(Response::Pong);
    });
    server.shutdown().expect("clean shutdown waits for the answer");
    assert_eq!(client.recv().expect("answered"), (request_id, Response::Pong));
    answerer.join().expect("answerer ok");
    assert!(client.ping().is_err(), "server is gone");
}

#[test]
fn half_closed_client_still_gets_its_answers() {
    let server = start(Immediate(Arc::new(Bank::default())), |_| {});
    let mut stream = TcpStream::connect(server.local_address()).expect("connect");
    let mut frames = Vec::new();
    encode_request(&mut frames, CLUSTER, 1, &Request::Ping).expect("ok");
    encode_request(&mut frames, CLUSTER, 2, &Request::Ping).expect("ok");
    stream.write_all(&frames).expect("write");
    stream.shutdown(std::net::Shutdown::Write).expect("half close");
    let mut buffer = Vec::new();
    assert_eq!(read_frame(&mut stream, &mut buffer).header.request_id, 1);
    assert_eq!(read_frame(&mut stream, &mut buffer).header.request_id, 2);
    assert_closed(&mut stream);
    server.shutdown().expect("clean shutdown");
}

fn free_address() -> SocketAddr {
    let listener = StdListener::bind(local()).expect("bind");
    listener.local_addr().expect("address")
}

#[test]
fn client_tries_addresses_in_order() {
    let server = start(Immediate(Arc::new(Bank::default())), |_| {});
    let dead = free_address();
    let mut client = Client::connect(client_config(vec![dead, server.local_address()])).expect("second address works");
    assert_eq!(client.connected_address(), Some(server.local_address()));
    client.ping().expect("pong");
    let unreachable = Client::connect(client_config(vec![dead]));
    assert!(matches!(unreachable, Err(ClientError::Unreachable { addresses: 1, .. })));
    server.shutdown().expect("clean shutdown");
}

/// A server that stops answering (a paused process: its kernel still completes connections) costs
/// one request timeout: the retry goes to the next address, not to the silent one again.
#[test]
fn client_moves_off_a_silent_server_within_one_request_timeout() {
    let server = start(Immediate(Arc::new(Bank::default())), |_| {});
    // Bound and listening, never accepting, never answering: what a SIGSTOPped node looks like.
    let silent = StdListener::bind(local()).expect("bind");
    let mut config = client_config(vec![silent.local_addr().expect("address"), server.local_address()]);
    config.request_timeout_ms = 300;
    config.retry_backoff_ms = 10;
    let mut client = Client::connect(config).expect("connects to the silent one first");
    assert_eq!(client.connected_address(), Some(silent.local_addr().unwrap()));
    let started = Instant::now();
    // No such accounts at the bank: answered with a result code, which is all this needs.
    let results = client.create_transfers_retrying(&[transfer(1, 2, 5)]).expect("answered by the next address");
    assert_eq!(results.len(), 1);
    assert_eq!(client.connected_address(), Some(server.local_address()));
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(300 + 1_000), "answered after {waited:?}: the silent server was retried");
    server.shutdown().expect("clean shutdown");
}

#[test]
fn client_reconnects_after_restart_and_retries_reuse_transfer_ids() {
    let bank = Arc::new(Bank::default());
    let (handler, requests) = holding();
    let first = start(handler, |c| c.shutdown_drain_ms = 100);
    let address = first.local_address();
    let mut config = client_config(vec![address]);
    config.retry_backoff_ms = 100;
    config.retry_attempts_max = 8;
    let mut client = Client::connect(config).expect("connects");
    {
        let mut setup = Bank::answer(
            &bank,
            Request::CreateAccounts(vec![
                CreateAccount { id: 1, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
                CreateAccount { id: 2, ledger: 840, flags: 0, user_data: 0 },
            ]),
        );
        assert!(matches!(&mut setup, Response::Results(r) if r.iter().all(|i| i.code == ResultCode::Ok)));
    }
    let batch = vec![transfer(1, 2, 500), transfer(1, 2, 250)];

    // The first server applies the batch but the answer is lost with the server.
    let sender = thread::spawn(move || {
        let results = client.create_transfers_retrying(&batch).expect("eventually answered");
        (client, results)
    });
    let (request, responder) = requests.recv_timeout(WAIT).expect("first attempt arrives");
    bank.answer(request); // applied, never answered
    let bank_for_restart = Arc::clone(&bank);
    std::mem::forget(responder); // simulate a crash: no answer at all, not even Internal
    first.shutdown().expect("first server stops");
    let second = Server::start(ServerConfig::new(address, CLUSTER), Immediate(bank_for_restart))
        .expect("restart on the same port");

    let (mut client, results) = sender.join().expect("sender ok");
    assert_eq!(results.len(), 2);
    assert!(
        results.iter().all(|r| r.code == ResultCode::Ok && r.is_replayed()),
        "retry replays, never re-applies: {results:?}"
    );
    let lookups = client.lookup_accounts(Consistency::Linearizable, &[2]).expect("lookup");
    assert!(matches!(lookups[0], AccountLookup::Found(a) if a.balance == 750), "applied exactly once: {lookups:?}");
    second.shutdown().expect("clean shutdown");
}

#[test]
fn recv_until_gives_up_at_its_deadline_and_keeps_the_connection() {
    let (handler, requests) = holding();
    let server = start(handler, |_| {});
    let mut client = client(server.local_address());
    let id = client.send(&Request::Ping).expect("send");
    let (_, responder) = requests.recv_timeout(WAIT).expect("the server got the ping");
    let started = Instant::now();
    let none = client.recv_until(Instant::now() + Duration::from_millis(100)).expect("no error at the deadline");
    assert!(none.is_none(), "nothing was answered yet");
    assert!(started.elapsed() >= Duration::from_millis(100), "it waited until the deadline");
    assert_eq!(client.in_flight(), 1, "the request is still in flight");
    responder.respond(Response::Pong);
    let answer = client.recv_until(Instant::now() + WAIT).expect("answer").expect("arrives before the deadline");
    assert_eq!(answer, (id, Response::Pong));
    let second = client.send(&Request::Ping).expect("the connection was kept");
    requests.recv_timeout(WAIT).expect("second ping reaches the server").1.respond(Response::Pong);
    assert_eq!(client.recv().expect("second answer"), (second, Response::Pong));
    server.shutdown().expect("clean shutdown");
}

/// Issue 16, item 4: answers on one connection come back in the order they complete, not the order
/// they were sent: a Ping sent after a batch of transfers is answered first when the transfers take
/// longer (as they do on a node: they wait for the disk). Clients match answers by request id.
#[test]
fn a_ping_sent_after_transfers_may_be_answered_before_them() {
    let (handler, requests) = holding();
    let server = start(handler, |_| {});
    let mut stream = TcpStream::connect(server.local_address()).expect("connect");
    let mut bytes = Vec::new();
    encode_request(&mut bytes, CLUSTER, 1, &Request::CreateTransfers(vec![transfer(1, 2, 5)])).expect("ok");
    encode_request(&mut bytes, CLUSTER, 2, &Request::Ping).expect("ok");
    stream.write_all(&bytes).expect("write both at once");
    let (first, transfers_responder) = requests.recv_timeout(WAIT).expect("transfers arrive");
    assert!(matches!(first, Request::CreateTransfers(_)));
    let (second, ping_responder) = requests.recv_timeout(WAIT).expect("ping arrives");
    assert_eq!(second, Request::Ping);
    ping_responder.respond(Response::Pong);
    let mut buffer = Vec::new();
    let answer = read_frame(&mut stream, &mut buffer);
    assert_eq!((answer.header.request_id, answer.message), (2, Message::Response(Response::Pong)));
    let result = ItemResult { index: 0, code: ResultCode::Ok, flags: 0, seq: 1 };
    transfers_responder.respond(Response::Results(vec![result]));
    let answer = read_frame(&mut stream, &mut buffer);
    assert_eq!((answer.header.request_id, answer.message), (1, Message::Response(Response::Results(vec![result]))));
    server.shutdown().expect("clean shutdown");
}
