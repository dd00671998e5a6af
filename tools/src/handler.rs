//! The bridge from the protocol server to the engine.
//!
//! Runs on the server's event-loop thread, so it only hands work to the node (a bounded queue per
//! shard: when a shard is saturated the hand-off waits, which stops the loop from reading more —
//! backpressure instead of an unbounded queue) and answers from the node's callbacks, on the shard
//! threads. Every request is answered exactly once; engine failures become typed error frames.

use std::sync::Arc;

use engine::shard::ShardStatus;
use engine::{EngineError, Node};
use net::protocol::{
    AccountLookup, NodeStatus, PartitionStatus, Request, Response, TransferLookup, PARTITION_FLAG_LEADER,
};
use net::server::{Handler, Responder};
use net::types::ResultCode;

/// The node id a single-node deployment reports.
pub const SINGLE_NODE_ID: u64 = 1;

pub struct NodeHandler {
    node: Arc<Node>,
}

impl NodeHandler {
    pub fn new(node: Arc<Node>) -> NodeHandler {
        NodeHandler { node }
    }
}

/// The error frame for an engine failure ([`EngineError::protocol_error`], the one mapping every
/// handler uses).
pub fn error_response(error: &EngineError) -> Response {
    let (code, message) = error.protocol_error();
    Response::error(code, message)
}

/// The reply of a batch of creations: its per-item results, or the error frame. Both runtimes' handlers
/// answer through these builders, so a request kind is answered one way whichever node serves it.
pub fn items_reply(responder: Responder) -> engine::join::BatchReply {
    Box::new(move |outcome| {
        responder.respond(match outcome {
            Ok(results) => Response::Results(results),
            Err(error) => error_response(&error),
        })
    })
}

/// The reply of an account lookup of `requested` ids (see [`accounts_response`]).
pub fn accounts_reply(
    requested: Vec<u64>,
    responder: Responder,
) -> Box<dyn FnOnce(Result<Vec<Option<net::types::Account>>, EngineError>) + Send> {
    Box::new(move |outcome| {
        responder.respond(match outcome {
            Ok(accounts) => accounts_response(&requested, accounts),
            Err(error) => error_response(&error),
        })
    })
}

/// The reply of a transfer lookup of `requested` ids (see [`transfers_response`]).
pub fn transfers_reply(
    requested: Vec<u128>,
    responder: Responder,
) -> Box<dyn FnOnce(Result<Vec<Option<TransferLookup>>, EngineError>) + Send> {
    Box::new(move |outcome| {
        responder.respond(match outcome {
            Ok(found) => transfers_response(&requested, found),
            Err(error) => error_response(&error),
        })
    })
}

/// The Accounts answer for `requested` ids, in order, from the engine's per-id lookups.
fn accounts_response(requested: &[u64], accounts: Vec<Option<net::types::Account>>) -> Response {
    Response::Accounts(
        requested
            .iter()
            .zip(accounts)
            .map(|(&id, account)| match account {
                Some(account) => AccountLookup::Found(account),
                None => AccountLookup::NotFound { id, code: ResultCode::AccountNotFound },
            })
            .collect(),
    )
}

/// The Transfers answer for `requested` ids, in order (`None`: not found), from either runtime.
fn transfers_response(requested: &[u128], found: Vec<Option<TransferLookup>>) -> Response {
    Response::Transfers(
        requested.iter().zip(found).map(|(&id, item)| item.unwrap_or(TransferLookup::NotFound { id })).collect(),
    )
}

/// The History answer for a page (or the engine's error frame). An unknown account is said so
/// (`account_not_found`), so a client can tell it from a page past the account's creation.
pub fn history_response(outcome: Result<engine::history::HistoryPage, EngineError>) -> Response {
    match outcome {
        Ok(page) => Response::History { entries: page.entries, next_from_seq: page.next_seq, account_not_found: false },
        Err(EngineError::AccountNotFound { .. }) => {
            Response::History { entries: Vec::new(), next_from_seq: None, account_not_found: true }
        }
        Err(error) => error_response(&error),
    }
}

/// `partitions` and `shards` are the node's configuration, taken before the call so the reply holds no
/// reference to the node (walletd takes sole ownership of it to shut it down).
fn status_response(partitions: u32, shard_count: u32, shards: Vec<ShardStatus>) -> Response {
    let mut partition_states: Vec<PartitionStatus> = shards
        .iter()
        .flat_map(|shard| shard.partitions.iter().map(move |p| (shard, p)))
        .map(|(shard, p)| PartitionStatus {
            partition: p.partition,
            flags: PARTITION_FLAG_LEADER,
            term: 0,
            leader: SINGLE_NODE_ID,
            last_index: shard.log_last_index,
            commit_index: shard.log_durable_index,
            applied_index: shard.log_last_index,
            applied_seq: p.last_seq,
            state_digest: p.digest as u64,
        })
        .collect();
    partition_states.sort_by_key(|p| p.partition);
    Response::Status(NodeStatus {
        node_id: SINGLE_NODE_ID,
        partitions,
        shards: shard_count,
        partition_states,
        nodes: Vec::new(),
    })
}

impl Handler for NodeHandler {
    fn handle(&self, request: Request, responder: Responder) {
        // A submission error means the reply callback was never taken, so answer it here.
        let submitted = match request {
            Request::Ping => {
                responder.respond(Response::Pong);
                return;
            }
            Request::CreateAccounts(accounts) => self.node.create_accounts(accounts, items_reply(responder)),
            Request::CreateTransfers(transfers) => self.node.create_transfers(transfers, items_reply(responder)),
            // One replica: every lookup is served by the partition's leader after the log holds all it
            // could reflect, which satisfies Linearizable and Any; an AtLeast read also waits until its
            // partitions have reached the sequences it names (the decoder keeps them 0 otherwise).
            Request::LookupAccounts { consistency: _, reads } => {
                let requested: Vec<u64> = reads.iter().map(|read| read.id).collect();
                self.node.lookup_accounts(reads, accounts_reply(requested, responder))
            }
            Request::AccountHistory { account_id, from_seq, limit } => self.node.history(
                account_id,
                (from_seq != 0).then_some(from_seq),
                net::protocol::history_page_entries(limit),
                Box::new(move |outcome| responder.respond(history_response(outcome))),
            ),
            Request::LookupTransfers(ids) => {
                let requested = ids.clone();
                self.node.lookup_transfers(ids, transfers_reply(requested, responder))
            }
            Request::Status => {
                let (partitions, shard_count) = (self.node.config().partitions, self.node.config().shards);
                self.node
                    .status(Box::new(move |shards| responder.respond(status_response(partitions, shard_count, shards))))
            }
        };
        if let Err(error) = submitted {
            // The node refused before taking the callback only when it is shutting down or the batch
            // is over its limit; the responder was moved into the dropped callback, which answers
            // `Internal`. Log why, so the operator sees the real cause.
            log::warn!("walletd: request refused by the engine: {error}");
        }
    }
}
