//! Where a request goes: decided here when this replica leads, forwarded to the leader this node
//! knows otherwise, parked while its partition has no leader; and what a forwarded request's reply
//! does (answers the client, or sends the request on when the node no longer led).
//!
//! A forwarded request is never left to time out while this node knows better: when its partition's
//! leader (as this replica sees it) moves to another node, or the request could not be delivered, or
//! the connection it went out on ended, it is taken back and routed again (to the new leader, here
//! if this node now leads, or parked until there is a leader), within the client's original deadline.
//! That is safe because transfer and account ids are idempotency keys: the new leader returns the
//! outcome the old one decided, if it decided one. It never answers a client twice: the request's
//! answer handle moves with it (Rust ownership), and a late reply to the old forward carries an id
//! that is no longer waited for (ids are never reused) and is dropped by `on_forward_reply`.

use crate::metrics::{self, ForwardOutcome};
use net::protocol::{Consistency, ErrorCode};

use super::{AnswerTo, Batch, Handles, ItemsTo, Now, Read, ReplicaCore, ReplicaStorage, Sink};
use crate::error::EngineError;
use crate::replica::wire::{ForwardReply, ForwardRequest, PeerItem};

/// A client request this shard cannot serve itself yet, with whoever waits for its answer.
pub(super) enum Request<H: Handles> {
    Items {
        batch: Batch,
        to: H::Items,
    },
    Lookup {
        consistency: Consistency,
        ids: Vec<u64>,
        to: H::Lookup,
    },
    /// Always linearizable: served by the partition's leader.
    TransferLookup {
        ids: Vec<u128>,
        to: H::Transfers,
    },
}

impl<H: Handles> Request<H> {
    pub fn fail(self, sink: &mut Sink<H>, error: EngineError) {
        match self {
            Request::Items { to, .. } => sink.items(ItemsTo::Local(to), Err(error)),
            Request::Lookup { to, .. } => sink.lookup(AnswerTo::Local(to), Err(error)),
            Request::TransferLookup { to, .. } => sink.transfers(AnswerTo::Local(to), Err(error)),
        }
    }

    /// What goes over the wire; the request itself is kept, so a `NotLeader` answer can send it again.
    fn to_forward(&self) -> ForwardRequest {
        match self {
            Request::Items { batch: Batch::Transfers(items), .. } => ForwardRequest::Transfers(items.clone()),
            Request::Items { batch: Batch::Accounts(items), .. } => ForwardRequest::CreateAccounts(items.clone()),
            Request::Lookup { consistency, ids, .. } => {
                ForwardRequest::Lookup { consistency: *consistency, ids: ids.clone() }
            }
            Request::TransferLookup { ids, .. } => ForwardRequest::LookupTransfers { ids: ids.clone() },
        }
    }
}

/// A client request's journey: the client's deadline, kept however often the request is sent on, and
/// how many times a node answered `NotLeader` so far.
#[derive(Clone, Copy)]
pub(super) struct Trip {
    pub deadline_ms: u64,
    pub hops: u32,
}

/// A request this shard forwarded to node `to`, waiting for its reply.
pub(super) struct Forwarded<H: Handles> {
    pub to: u64,
    pub partition: u32,
    pub request: Request<H>,
    pub trip: Trip,
    /// The (term, leader) this node's own replica of the partition saw when the request went out (None
    /// with no replica here): a change from it is news, a hint followed is not. The term is part of it
    /// because a hint can point away from a stale view that an election then confirms: sent to node 3
    /// on a hint while this replica still saw node 2 in an old term, the request must move when node 2
    /// wins a new term, though the leader's name is the one seen before.
    pub view_seen: Option<(u64, Option<u64>)>,
}

/// A request waiting for its partition to have a leader (an election or a leadership transfer in
/// progress), or to be sent again after the node it was forwarded to no longer led: to `to` when that
/// node named a leader, else wherever routing points. Only the first hop after a named leader is
/// immediate; later ones wait until `not_before_ms` (a tick), so two nodes with stale views cannot
/// bounce a request between them at network speed.
pub(super) struct Parked<H: Handles> {
    pub partition: u32,
    pub request: Request<H>,
    pub trip: Trip,
    pub not_before_ms: u64,
    pub to: Option<Hint>,
}

/// The leader a refusing node named, and the Raft term in which it believed so.
#[derive(Clone, Copy, Debug)]
pub(super) struct Hint {
    pub node: u64,
    pub term: u64,
}

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    /// Serves a request here if this node leads its partition, sends it to the leader otherwise, and
    /// parks it while the partition has no leader.
    pub(super) fn route(&mut self, now: Now, partition: u32, request: Request<H>, trip: Trip) {
        if let Some(error) = self.failed_error() {
            return request.fail(&mut self.sink, error);
        }
        let Some(&slot) = self.group_of.get(&partition) else {
            let to = self.remote_leaders.get(&partition).copied();
            let to = to.unwrap_or_else(|| self.cluster.preferred_leader(partition));
            return self.forward(to, partition, request, trip);
        };
        let group = &self.groups[slot];
        if group.may_decide() {
            return match request {
                Request::Items { batch, to } => self.execute(now, slot, batch, ItemsTo::Local(to), Some(trip)),
                Request::Lookup { consistency, ids, to } => {
                    self.read(now, slot, consistency, Read::Accounts { ids, to: AnswerTo::Local(to) })
                }
                Request::TransferLookup { ids, to } => {
                    let read = Read::Transfers { ids, wall_ns: now.wall_ns, to: AnswerTo::Local(to) };
                    self.read(now, slot, Consistency::Linearizable, read)
                }
            };
        }
        match group.leader {
            Some(leader) if leader != self.node_id => self.forward(leader, partition, request, trip),
            // No leader known, or this node just won and has not rebuilt its state yet, or it is
            // handing leadership over: wait.
            _ => self.parked.push(Parked { partition, request, trip, not_before_ms: now.mono_ms, to: None }),
        }
    }

    /// Routes parked requests again once their partition has a leader; fails those that waited too long.
    pub(super) fn retry_parked(&mut self, now: Now) {
        self.take_handed_back();
        if self.parked.is_empty() {
            return;
        }
        for parked in std::mem::take(&mut self.parked) {
            let local = self.group_of.get(&parked.partition).map(|&slot| &self.groups[slot]);
            let decides_here = local.is_some_and(|group| group.may_decide());
            // A name given in an older term than this replica's is stale (the refusing node answered
            // before an election this replica has since seen): this replica's own view routes instead.
            // Followed regardless, a hint during a leadership transfer can send the request to a
            // deposed leader that then never answers (seed 30521 of the 3-node sweep).
            let hint = parked.to.filter(|hint| local.is_none_or(|group| group.term <= hint.term));
            let ready = parked.not_before_ms <= now.mono_ms
                && (hint.is_some()
                    || decides_here
                    || local.is_none_or(|group| group.leader.is_some_and(|leader| leader != self.node_id)));
            if parked.trip.deadline_ms <= now.mono_ms {
                let error = EngineError::Unavailable(format!(
                    "partition {} had no reachable leader within {} ms",
                    parked.partition, self.replication.forward_timeout_ms
                ));
                parked.request.fail(&mut self.sink, error);
            } else if !ready {
                self.parked.push(parked);
            } else if let (Some(hint), false) = (hint, decides_here) {
                // The node that refused named the leader in a term at least as recent as this
                // replica's view: go there.
                self.forward(hint.node, parked.partition, parked.request, parked.trip);
            } else {
                self.route(now, parked.partition, parked.request, parked.trip);
            }
        }
    }

    /// Parks the batches of this node's clients that its replicas decided and then could not commit
    /// as leader (see `group::Answer`): they are routed again like any parked request.
    pub(super) fn take_handed_back(&mut self) {
        for group in &mut self.groups {
            self.parked.append(&mut group.handed_back);
        }
    }

    fn forward(&mut self, to: u64, partition: u32, request: Request<H>, trip: Trip) {
        assert_ne!(to, self.node_id, "partition {partition}: a request is never forwarded to this node itself");
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let item = PeerItem::Forward { request_id, from_node: self.node_id, partition, request: request.to_forward() };
        self.sink.send(to, item);
        metrics::count_forward(ForwardOutcome::Sent);
        let view_seen = self.group_of.get(&partition).map(|&slot| (self.groups[slot].term, self.groups[slot].leader));
        let earlier = self.forwarded.insert(request_id, Forwarded { to, partition, request, trip, view_seen });
        assert!(earlier.is_none(), "forwarded request id {request_id} used twice");
    }

    /// Takes back the forwarded requests whose partition this node's replica now sees led by another
    /// node than the one asked (an election or a leadership transfer it took part in) and routes them
    /// again at once: to the new leader, or decided here if this node won. The node asked may be dead
    /// or cut off; if it does answer later, the answer is dropped (its id is no longer waited for) and
    /// is in any case the outcome the new leader returns, since both decide the same ids against one
    /// log. A view that only went blank (an election under way) keeps waiting: the node asked may still
    /// answer, and the request moves as soon as a winner is known.
    pub(super) fn reroute_on_leader_change(&mut self, now: Now) {
        if self.forwarded.is_empty() || self.sink.planted.no_reroute_on_leader_change {
            return;
        }
        let moved: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, forwarded)| {
                let Some(&slot) = self.group_of.get(&forwarded.partition) else { return false };
                let group = &self.groups[slot];
                group.leader.is_some()
                    && group.leader != Some(forwarded.to)
                    && Some((group.term, group.leader)) != forwarded.view_seen
            })
            .map(|(&id, _)| id)
            .collect();
        for request_id in moved {
            let forwarded = self.forwarded.remove(&request_id).expect("listed just above");
            metrics::count_forward(ForwardOutcome::Rerouted);
            let Forwarded { partition, request, trip, .. } = forwarded;
            self.parked.push(Parked { partition, request, trip, not_before_ms: now.mono_ms, to: None });
        }
    }

    /// Takes back a forwarded request that did not reach `to` or whose reply may be lost (no connection,
    /// a full queue, or the connection ended) and routes it again: at once if this node knows another
    /// leader, else after a tick (the same node would be tried again, and an election may be under
    /// way). A retry is safe: the ids are idempotency keys. The client's deadline is kept.
    pub(super) fn take_back(&mut self, now: Now, request_id: u64) {
        let Some(forwarded) = self.forwarded.remove(&request_id) else { return };
        metrics::count_forward(ForwardOutcome::NotQueued);
        let Forwarded { to, partition, request, trip, .. } = forwarded;
        self.suspect_remote_leader(partition, to);
        let elsewhere = match self.group_of.get(&partition) {
            Some(&slot) => self.groups[slot].leader.is_some_and(|leader| leader != to),
            None => self.remote_leaders.get(&partition).is_some_and(|&leader| leader != to),
        };
        // Only the first take-back may go at once: a request that keeps meeting dead links moves on
        // at tick pace, not in a loop through the transport.
        let at_once = elsewhere && trip.hops == 0;
        let not_before_ms = if at_once { now.mono_ms } else { now.mono_ms + self.replication.tick_interval_ms };
        let trip = Trip { hops: trip.hops + 1, ..trip };
        self.parked.push(Parked { partition, request, trip, not_before_ms, to: None });
    }

    /// `to` did not take or did not answer a request for a partition this node holds no replica of:
    /// if it is where such requests go, try the next replica from now on.
    pub(super) fn suspect_remote_leader(&mut self, partition: u32, to: u64) {
        if self.group_of.contains_key(&partition) {
            return;
        }
        let current =
            self.remote_leaders.get(&partition).copied().unwrap_or_else(|| self.cluster.preferred_leader(partition));
        if current == to {
            let next = self.replica_after(partition, to);
            self.remote_leaders.insert(partition, next);
        }
    }

    /// The replica of `partition` after `node` in placement order: the next guess at its leader.
    fn replica_after(&self, partition: u32, node: u64) -> u64 {
        let replicas = self.cluster.replicas(partition);
        let position = replicas.iter().position(|&n| n == node).map_or(0, |p| p + 1);
        replicas[position % replicas.len()]
    }

    /// Relays a forwarded request's answer, or sends the request on when the node no longer led.
    pub(super) fn on_forward_reply(&mut self, now: Now, from: u64, request_id: u64, reply: ForwardReply) {
        // Only the node the request went to may answer it, and only while it is waited for: a reply
        // to a request taken back and routed again (or timed out) is dropped here, so no client is
        // answered twice.
        if self.forwarded.get(&request_id).is_none_or(|forwarded| forwarded.to != from) {
            return;
        }
        let Forwarded { partition, request, trip, .. } = self.forwarded.remove(&request_id).expect("checked");
        match (request, reply) {
            (request, ForwardReply::Error { code, leader, term, .. })
                if code == ErrorCode::NotLeader as u16 && trip.deadline_ms > now.mono_ms =>
            {
                let replica = self.cluster.replicas(partition).contains(&leader);
                let hint = (replica && leader != from && leader != self.node_id).then_some(Hint { node: leader, term });
                if !self.group_of.contains_key(&partition) {
                    let next = hint.map_or_else(|| self.replica_after(partition, from), |hint| hint.node);
                    self.remote_leaders.insert(partition, next);
                }
                // The first named leader is tried at once; otherwise give the election a tick.
                let tick_ms = self.replication.tick_interval_ms;
                let not_before_ms = if hint.is_some() && trip.hops == 0 { now.mono_ms } else { now.mono_ms + tick_ms };
                let trip = Trip { hops: trip.hops + 1, ..trip };
                metrics::count_forward(ForwardOutcome::Redirected);
                self.parked.push(Parked { partition, request, trip, not_before_ms, to: hint });
            }
            (Request::Items { batch, to }, ForwardReply::Results(results)) if results.len() == batch.len() => {
                metrics::count_forward(ForwardOutcome::Answered);
                self.sink.relay_items(to, results)
            }
            (Request::Lookup { ids, to, .. }, ForwardReply::Accounts(accounts)) if accounts.len() == ids.len() => {
                metrics::count_forward(ForwardOutcome::Answered);
                self.sink.lookup(AnswerTo::Local(to), Ok(accounts))
            }
            (Request::TransferLookup { ids, to }, ForwardReply::Transfers(found))
                if found.len() == ids.len()
                    && found.iter().zip(&ids).all(|(item, &id)| item.as_ref().is_none_or(|item| item.id() == id)) =>
            {
                metrics::count_forward(ForwardOutcome::Answered);
                self.sink.transfers(AnswerTo::Local(to), Ok(found))
            }
            (request, ForwardReply::Error { code, message, .. }) => {
                metrics::count_forward(ForwardOutcome::Failed);
                request.fail(&mut self.sink, EngineError::Remote { node: from, code, message })
            }
            (request, _) => request.fail(
                &mut self.sink,
                EngineError::Unavailable("a forwarded request got a reply of the wrong shape".into()),
            ),
        }
    }

    /// A request another node forwarded: decided here if this replica leads, refused with `NotLeader`
    /// (naming the leader it knows) otherwise. A leader never forwards a forwarded request itself.
    pub(super) fn on_forward(&mut self, now: Now, request_id: u64, from: u64, partition: u32, request: ForwardRequest) {
        let remote = ItemsTo::Remote { node: from, request_id, partition };
        if let Some(error) = self.failed_error() {
            return self.sink.items(remote, Err(error));
        }
        let Some(&slot) = self.group_of.get(&partition) else {
            return self.sink.items(remote, Err(EngineError::NotLeader { partition, leader: None, term: 0 }));
        };
        let group = &self.groups[slot];
        match request {
            ForwardRequest::Transfers(_) | ForwardRequest::CreateAccounts(_) if !group.may_decide() => {
                // While handing leadership over, point the sender at the node taking it.
                let leader = group.raw.lead_transferee().or(group.leader);
                self.sink.items(remote, Err(EngineError::NotLeader { partition, leader, term: group.term }))
            }
            ForwardRequest::Transfers(items) => self.execute(now, slot, Batch::Transfers(items), remote, None),
            ForwardRequest::CreateAccounts(items) => self.execute(now, slot, Batch::Accounts(items), remote, None),
            ForwardRequest::Lookup { consistency, ids } => {
                let to = AnswerTo::Remote { node: from, request_id, partition };
                self.read(now, slot, consistency, Read::Accounts { ids, to });
            }
            ForwardRequest::LookupTransfers { ids } => {
                let to = AnswerTo::Remote { node: from, request_id, partition };
                self.read(now, slot, Consistency::Linearizable, Read::Transfers { ids, wall_ns: now.wall_ns, to });
            }
        }
    }
}
