//! The bridge from the protocol server to a cluster node. Like [`crate::handler`], it only hands work
//! to the node's bounded shard queues and answers from the node's callbacks; a request for a partition
//! led elsewhere is forwarded by the node, and the answer relayed.

use std::sync::Arc;

use engine::replica::shard::GroupStatus;
use engine::replica::ClusterNode;
use net::protocol::PARTITION_FLAG_LEADER;
use net::protocol::{NodeAddress, NodeStatus, PartitionStatus, Request, Response};
use net::server::{Handler, Responder};

use crate::handler::{accounts_reply, history_response, items_reply, transfers_reply};

pub struct ClusterHandler {
    node: Arc<ClusterNode>,
}

impl ClusterHandler {
    pub fn new(node: Arc<ClusterNode>) -> ClusterHandler {
        ClusterHandler { node }
    }
}

/// A node's Status answer without its view of the partitions (which the shards add): its id,
/// configuration and the cluster's members.
fn status_without_partitions(node: &ClusterNode) -> NodeStatus {
    NodeStatus {
        node_id: node.node_id(),
        partitions: node.config().partitions,
        shards: node.config().shards,
        partition_states: Vec::new(),
        nodes: node.cluster().nodes.iter().map(|n| NodeAddress { node_id: n.id, address: n.address }).collect(),
    }
}

fn partition_states(groups: &[GroupStatus]) -> Vec<PartitionStatus> {
    groups
        .iter()
        .map(|g| PartitionStatus {
            partition: g.partition,
            flags: if g.leader { PARTITION_FLAG_LEADER } else { 0 },
            term: g.term,
            leader: g.leader_id,
            last_index: g.last_index,
            commit_index: g.commit_index,
            applied_index: g.applied_index,
            applied_seq: g.applied_seq,
            state_digest: g.digest as u64,
        })
        .collect()
}

impl Handler for ClusterHandler {
    fn handle(&self, request: Request, responder: Responder) {
        let submitted = match request {
            Request::Ping => {
                responder.respond(Response::Pong);
                return;
            }
            Request::CreateAccounts(accounts) => self.node.create_accounts(accounts, items_reply(responder)),
            Request::CreateTransfers(transfers) => self.node.create_transfers(transfers, items_reply(responder)),
            Request::LookupAccounts { consistency, reads } => {
                let requested: Vec<u64> = reads.iter().map(|read| read.id).collect();
                self.node.lookup_accounts(consistency, reads, accounts_reply(requested, responder))
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
                // The reply must not hold the node: walletd takes sole ownership of it to shut it down,
                // possibly while a status answer is still on its way through the shards.
                let mut status = status_without_partitions(&self.node);
                self.node.status(Box::new(move |groups| {
                    status.partition_states = partition_states(&groups);
                    responder.respond(Response::Status(status))
                }))
            }
        };
        if let Err(error) = submitted {
            log::warn!("walletd: request refused by the engine: {error}");
        }
    }
}
