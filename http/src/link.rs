//! The edge's link to its own node: a fixed pool of threads, each holding one blocking
//! `net::client::Client` connection to the node's binary listener.
//!
//! HTTP handlers queue a [`Call`] on a bounded channel and await its answer; a full queue is refused
//! at once (`edge_busy`, 503), never queued without bound. A worker that takes a transfer call also
//! takes every other transfer call already waiting (up to one protocol batch, `BATCH_ITEMS_MAX`
//! items) and sends them as **one** `CreateTransfers` batch: under load many single-transfer HTTP
//! requests share one round and one fdatasync, as binary clients' batches do. Each caller gets its
//! own slice of the results. Every call is idempotent (transfers by id, accounts by id, reads), so a
//! retryable failure (lost connection, `NotLeader`, `Unavailable`, busy) is retried with the same
//! ids, with doubling backoff, until the call's deadline.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use net::client::{Client, ClientConfig, ClientError, RETRY_BACKOFF_MS, RETRY_BACKOFF_MS_MAX};
use net::protocol::{Consistency, ErrorCode, Request, Response, BATCH_ITEMS_MAX};
use net::types::{AccountId, CreateAccount, ItemResult, Transfer};
use tokio::sync::oneshot;

/// Default for [`LinkConfig::connections`]: worker threads, each with one connection to the node.
pub const NODE_CONNECTIONS_DEFAULT: usize = 4;
/// Most worker threads (and node connections) one edge opens.
pub const NODE_CONNECTIONS_MAX: usize = 64;
/// Default for [`LinkConfig::queue_depth_max`]: calls waiting for a worker.
pub const QUEUE_DEPTH_DEFAULT: usize = 4096;
/// Default for [`LinkConfig::call_timeout_ms`]: the longest one HTTP request waits for the node,
/// retries included. Past it the outcome of a transfer is unknown and the client must retry with
/// the same key.
pub const CALL_TIMEOUT_MS_DEFAULT: u64 = 10_000;

#[derive(Clone, Debug)]
pub struct LinkConfig {
    pub node_address: SocketAddr,
    pub cluster_id: u128,
    pub connections: usize,
    pub queue_depth_max: usize,
    pub call_timeout_ms: u64,
}

/// What the edge asks its node. One variant per binary request kind it uses.
#[derive(Debug)]
pub enum Call {
    Transfers(Vec<Transfer>),
    CreateAccounts(Vec<CreateAccount>),
    Lookup { consistency: Consistency, ids: Vec<AccountId> },
    History { account_id: AccountId, from_seq: u64, limit: u32 },
    Status,
}

/// Why a call got no answer from the node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("the edge's queue to the node is full ({limit} calls waiting)")]
    QueueFull { limit: usize },
    #[error("the edge is stopping")]
    Stopped,
    #[error("the node answered error {code:?}: {message}")]
    Node { code: ErrorCode, message: String },
    #[error("no answer from the node within {timeout_ms} ms (last error: {last_error})")]
    NoAnswer { timeout_ms: u64, last_error: String },
    #[error("the node sent an answer of the wrong kind: {0}")]
    WrongAnswer(String),
}

type Reply = oneshot::Sender<Result<Response, LinkError>>;

struct Job {
    call: Call,
    deadline: Instant,
    reply: Reply,
}

/// Cheap to clone: handlers hold one each.
#[derive(Clone)]
pub struct NodeLink {
    jobs: Sender<Job>,
    queue_depth_max: usize,
    call_timeout_ms: u64,
}

pub struct LinkWorkers {
    threads: Vec<JoinHandle<()>>,
}

impl LinkWorkers {
    /// Waits for every worker; they end once every [`NodeLink`] clone is dropped.
    pub fn join(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

impl NodeLink {
    pub fn start(config: &LinkConfig) -> std::io::Result<(NodeLink, LinkWorkers)> {
        assert!((1..=NODE_CONNECTIONS_MAX).contains(&config.connections), "connections out of range");
        assert!(config.queue_depth_max > 0 && config.call_timeout_ms > 0);
        let (jobs, receiver) = bounded::<Job>(config.queue_depth_max);
        let mut threads = Vec::with_capacity(config.connections);
        for index in 0..config.connections {
            let receiver = receiver.clone();
            let mut client_config = ClientConfig::new(vec![config.node_address], config.cluster_id);
            // One attempt per call here: the worker retries itself, under the call's own deadline.
            client_config.retry_attempts_max = 1;
            client_config.request_timeout_ms = config.call_timeout_ms;
            let thread = std::thread::Builder::new()
                .name(format!("http-link-{index}"))
                .spawn(move || Worker { client_config, client: None, receiver }.run())?;
            threads.push(thread);
        }
        let link = NodeLink { jobs, queue_depth_max: config.queue_depth_max, call_timeout_ms: config.call_timeout_ms };
        Ok((link, LinkWorkers { threads }))
    }

    /// Sends `call` to the node and waits (asynchronously) for its answer. Error frames come back as
    /// [`LinkError::Node`].
    pub async fn call(&self, call: Call) -> Result<Response, LinkError> {
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + Duration::from_millis(self.call_timeout_ms);
        match self.jobs.try_send(Job { call, deadline, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(LinkError::QueueFull { limit: self.queue_depth_max }),
            Err(TrySendError::Disconnected(_)) => return Err(LinkError::Stopped),
        }
        answer.await.unwrap_or(Err(LinkError::Stopped))
    }

    /// Calls waiting for a worker now.
    pub fn queue_depth(&self) -> usize {
        self.jobs.len()
    }
}

struct Worker {
    client_config: ClientConfig,
    client: Option<Client>,
    receiver: Receiver<Job>,
}

impl Worker {
    fn run(mut self) {
        let mut carried: Option<Job> = None;
        loop {
            let job = match carried.take() {
                Some(job) => job,
                None => match self.receiver.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            if !matches!(job.call, Call::Transfers(_)) {
                let outcome = self.request(request_of(job.call), job.deadline);
                let _ = job.reply.send(outcome);
                continue;
            }
            // Gather the transfer calls already waiting into one batch; the first other call met is
            // carried to the next turn, so nothing is reordered past more than one batch.
            let mut group = vec![job];
            let mut items = transfer_count(&group[0]);
            while items < BATCH_ITEMS_MAX {
                let Ok(next) = self.receiver.try_recv() else { break };
                let next_items = match &next.call {
                    Call::Transfers(transfers) => transfers.len(),
                    _ => {
                        carried = Some(next);
                        break;
                    }
                };
                if items + next_items > BATCH_ITEMS_MAX {
                    carried = Some(next);
                    break;
                }
                items += next_items;
                group.push(next);
            }
            self.send_transfers(group, items);
        }
    }

    fn send_transfers(&mut self, group: Vec<Job>, items: usize) {
        let deadline = group.iter().map(|job| job.deadline).min().expect("a group holds at least one job");
        let mut batch = Vec::with_capacity(items);
        let mut parts = Vec::with_capacity(group.len());
        for job in group {
            let Call::Transfers(transfers) = job.call else { unreachable!("only transfer calls are grouped") };
            parts.push((batch.len(), transfers.len(), job.reply));
            batch.extend(transfers);
        }
        match self.request(Request::CreateTransfers(batch), deadline) {
            Ok(Response::Results(results))
                if results.len() == items && results.iter().enumerate().all(|(i, r)| r.index as usize == i) =>
            {
                for (start, len, reply) in parts {
                    let slice: Vec<ItemResult> = results[start..start + len]
                        .iter()
                        .enumerate()
                        .map(|(offset, result)| ItemResult { index: offset as u32, ..*result })
                        .collect();
                    let _ = reply.send(Ok(Response::Results(slice)));
                }
            }
            Ok(other) => {
                let error = LinkError::WrongAnswer(format!("{other:?}"));
                for (_, _, reply) in parts {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for (_, _, reply) in parts {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// One request, retried with the same ids on retryable failures until `deadline`.
    fn request(&mut self, request: Request, deadline: Instant) -> Result<Response, LinkError> {
        let mut backoff_ms = RETRY_BACKOFF_MS;
        loop {
            let error = match self.attempt(&request) {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let retryable = error.is_retryable();
            if !matches!(error, ClientError::Server { .. }) {
                self.client = None; // the connection is suspect: reconnect on the next attempt
            }
            let wait = Duration::from_millis(backoff_ms);
            let out_of_time = Instant::now() + wait >= deadline;
            if !retryable || out_of_time {
                return Err(match error {
                    ClientError::Server { code, message } => LinkError::Node { code, message },
                    other => LinkError::NoAnswer {
                        timeout_ms: self.client_config.request_timeout_ms,
                        last_error: other.to_string(),
                    },
                });
            }
            std::thread::sleep(wait);
            backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
        }
    }

    fn attempt(&mut self, request: &Request) -> Result<Response, ClientError> {
        if self.client.is_none() {
            self.client = Some(Client::connect(self.client_config.clone())?);
        }
        self.client.as_mut().expect("connected above").call(request)
    }
}

fn transfer_count(job: &Job) -> usize {
    match &job.call {
        Call::Transfers(transfers) => transfers.len(),
        _ => 0,
    }
}

fn request_of(call: Call) -> Request {
    match call {
        Call::Transfers(transfers) => Request::CreateTransfers(transfers),
        Call::CreateAccounts(accounts) => Request::CreateAccounts(accounts),
        Call::Lookup { consistency, ids } => Request::lookup(consistency, &ids),
        Call::History { account_id, from_seq, limit } => Request::AccountHistory { account_id, from_seq, limit },
        Call::Status => Request::Status,
    }
}
