//! The null server: net's real mio server with a handler that acknowledges everything without doing
//! any work. Driving it measures the generator's own ceiling (client encode, syscalls, decode,
//! bookkeeping); the server side costs one frame decode and one results encode per batch.

use std::net::SocketAddr;

use net::protocol::{AccountLookup, ErrorCode, NodeStatus, Request, Response, TransferLookup};
use net::server::{Handler, Responder, Server, ServerConfig, ServerError, ServerHandle};
use net::types::{ItemResult, ResultCode};

/// Answers transfers and account creations `ok`, lookups `account_not_found` (it keeps no state, so
/// `--verify` against it fails, as it should), and Status with a fixed partition count.
pub struct NullHandler {
    pub partitions: u32,
}

impl Handler for NullHandler {
    fn handle(&self, request: Request, responder: Responder) {
        let response = match request {
            Request::CreateTransfers(items) => all_ok(items.len()),
            Request::CreateAccounts(items) => all_ok(items.len()),
            Request::Status => Response::Status(NodeStatus {
                node_id: 0,
                partitions: self.partitions,
                shards: 1,
                partition_states: Vec::new(),
                nodes: Vec::new(),
            }),
            Request::Ping => Response::Pong,
            Request::LookupAccounts { reads, .. } => Response::Accounts(
                reads
                    .into_iter()
                    .map(|read| AccountLookup::NotFound { id: read.id, code: ResultCode::AccountNotFound })
                    .collect(),
            ),
            Request::AccountHistory { .. } => {
                Response::error(ErrorCode::Unavailable, "the null server keeps no history")
            }
            Request::LookupTransfers(ids) => {
                Response::Transfers(ids.into_iter().map(|id| TransferLookup::NotFound { id }).collect())
            }
        };
        responder.respond(response);
    }
}

fn all_ok(count: usize) -> Response {
    Response::Results(
        (0..count as u32).map(|index| ItemResult { index, code: ResultCode::Ok, flags: 0, seq: 0 }).collect(),
    )
}

pub fn start_null_server(
    listen_address: SocketAddr,
    cluster_id: u128,
    partitions: u32,
) -> Result<ServerHandle, ServerError> {
    Server::start(ServerConfig::new(listen_address, cluster_id), NullHandler { partitions })
}
