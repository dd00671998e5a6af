//! Where a request goes: decided here when this replica leads, forwarded to the leader this node
//! knows otherwise, parked while its partition has no leader; and what a forwarded request's reply
//! does (answers the client, or sends the request on when the node no longer led).

use crate::metrics::{self, ForwardOutcome};
use net::protocol::{Consistency, ErrorCode};

use super::{Batch, Handles, ItemsTo, LookupTo, Now, ReplicaCore, ReplicaStorage, Sink};
use crate::error::EngineError;
use crate::replica::wire::{ForwardReply, ForwardRequest, PeerItem};

/// A client request this shard cannot serve itself yet, with whoever waits for its answer.
pub(super) enum Request<H: Handles> {
    Items { batch: Batch, to: H::Items },
    Lookup { consistency: Consistency, ids: Vec<u64>, to: H::Lookup },
}

impl<H: Handles> Request<H> {
    pub fn fail(self, sink: &mut Sink<H>, error: EngineError) {
        match self {
            Request::Items { to, .. } => sink.items(ItemsTo::Local(to), Err(error)),
            Request::Lookup { to, .. } => sink.lookup(LookupTo::Local(to), Err(error)),
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
    pub to: Option<u64>,
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
                Request::Items { batch, to } => self.execute(now, slot, batch, ItemsTo::Local(to)),
                Request::Lookup { consistency, ids, to } => {
                    self.lookup(now, slot, consistency, ids, LookupTo::Local(to))
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
        if self.parked.is_empty() {
            return;
        }
        for parked in std::mem::take(&mut self.parked) {
            let local = self.group_of.get(&parked.partition).map(|&slot| &self.groups[slot]);
            let decides_here = local.is_some_and(|group| group.may_decide());
            let ready = parked.not_before_ms <= now.mono_ms
                && (parked.to.is_some()
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
            } else if let (Some(to), false) = (parked.to, decides_here) {
                // The node that refused named the leader: go there, whatever this replica believes.
                self.forward(to, parked.partition, parked.request, parked.trip);
            } else {
                self.route(now, parked.partition, parked.request, parked.trip);
            }
        }
    }

    fn forward(&mut self, to: u64, partition: u32, request: Request<H>, trip: Trip) {
        assert_ne!(to, self.node_id, "partition {partition}: a request is never forwarded to this node itself");
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let item = PeerItem::Forward { request_id, from_node: self.node_id, partition, request: request.to_forward() };
        self.sink.send(to, item);
        metrics::count_forward(ForwardOutcome::Sent);
        let earlier = self.forwarded.insert(request_id, Forwarded { to, partition, request, trip });
        assert!(earlier.is_none(), "forwarded request id {request_id} used twice");
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
        // Only the node the request went to may answer it.
        if self.forwarded.get(&request_id).is_none_or(|forwarded| forwarded.to != from) {
            return;
        }
        let Forwarded { partition, request, trip, .. } = self.forwarded.remove(&request_id).expect("checked");
        match (request, reply) {
            (request, ForwardReply::Error { code, leader, .. })
                if code == ErrorCode::NotLeader as u16 && trip.deadline_ms > now.mono_ms =>
            {
                let replica = self.cluster.replicas(partition).contains(&leader);
                let hint = (replica && leader != from && leader != self.node_id).then_some(leader);
                if !self.group_of.contains_key(&partition) {
                    let next = hint.unwrap_or_else(|| self.replica_after(partition, from));
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
                self.sink.lookup(LookupTo::Local(to), Ok(accounts))
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
            return self.sink.items(remote, Err(EngineError::NotLeader { partition, leader: None }));
        };
        let group = &self.groups[slot];
        match request {
            ForwardRequest::Transfers(_) | ForwardRequest::CreateAccounts(_) if !group.may_decide() => {
                // While handing leadership over, point the sender at the node taking it.
                let leader = group.raw.lead_transferee().or(group.leader);
                self.sink.items(remote, Err(EngineError::NotLeader { partition, leader }))
            }
            ForwardRequest::Transfers(items) => self.execute(now, slot, Batch::Transfers(items), remote),
            ForwardRequest::CreateAccounts(items) => self.execute(now, slot, Batch::Accounts(items), remote),
            ForwardRequest::Lookup { consistency, ids } => {
                let to = LookupTo::Remote { node: from, request_id, partition };
                self.lookup(now, slot, consistency, ids, to);
            }
        }
    }
}
