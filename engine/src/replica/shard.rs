//! A replica shard: one thread owning the Raft groups of the partitions this node replicates and the shard
//! maps to it. Per partition it holds the Raft replica (`RawNode` on a `WalStorage`, so the Raft log is
//! the event log), the committed state (what followers serve reads from) and, while it leads, a
//! speculative state: the committed state plus every event in the log that is not committed yet.
//!
//! One round of the loop:
//! 1. step every Raft message that arrived from peers; answer forwarded-request replies;
//! 2. unless some led partition already has `uncommitted_entries_max` entries in flight, take client
//!    commands: a led partition validates them against the speculative state and collects the events;
//!    another node's partition forwards them to its leader; a partition without a leader refuses them;
//! 3. propose each led partition's events as one log entry;
//! 4. tick Raft when due and drive every group's `Ready`: send its messages first (the local fdatasync
//!    then runs while followers write), persist entries and hard state, apply committed entries to the
//!    committed state and answer the clients whose entries committed, with their sequence numbers;
//! 5. notice leadership changes: a new leader rebuilds its speculative state from the committed state
//!    and its log; a deposed one drops it and fails every waiting request as `NotLeader` (retryable: a
//!    retry with the same ids returns the first outcome if the entry did commit after all).
//!
//! Nothing is answered as done before its entry is committed and applied. A storage failure stops the
//! shard (fail-stop), like the single-node shard.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};
use net::protocol::{Consistency, ErrorCode};
use net::types::{Account, CreateAccount, ItemResult, Transfer};
use raft::{ConfState, Entry, MessageBody, Payload, RawNode, Role, Storage};
use wal::WalOptions;

use crate::cluster_config::{ClusterConfig, ReplicationConfig};
use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::event::{EventBatchView, EventBuffer};
use crate::join::BatchPart;
use crate::metrics::{self, ForwardOutcome};
use crate::partition::PartitionState;
use crate::raft_storage::WalStorage;
use crate::replica::snapshot::{decode_partition_image, encode_partition_image};
use crate::replica::transport::Transport;
use crate::replica::wire::{ForwardReply, ForwardRequest, PeerItem};
use crate::shard::{clock_ns, partition_config, DoneReply, RECORD_EVENTS_MAX, RECORD_PAYLOAD_BYTES_MAX};

/// Lookup answers: (slot in the caller's result, account if found).
pub type LookupReply = Box<dyn FnOnce(Result<Vec<(u32, Option<Account>)>, EngineError>) + Send>;
pub type StatusReply = Box<dyn FnOnce(Vec<GroupStatus>) + Send>;
pub type HistoryReply = Box<dyn FnOnce(Result<crate::history::HistoryPage, EngineError>) + Send>;

/// Commands from this node's clients.
pub enum ClientCommand {
    Transfers {
        partition: u32,
        items: Vec<Transfer>,
        part: BatchPart,
    },
    CreateAccounts {
        partition: u32,
        items: Vec<CreateAccount>,
        part: BatchPart,
    },
    Lookup {
        partition: u32,
        consistency: Consistency,
        ids: Vec<(u32, u64)>,
        reply: LookupReply,
    },
    /// One page of an account's history from this replica's committed state (`from_seq` inclusive,
    /// `u64::MAX` = newest).
    History {
        partition: u32,
        account_id: u64,
        from_seq: u64,
        limit: usize,
        reply: HistoryReply,
    },
    Status {
        reply: StatusReply,
    },
    Shutdown {
        reply: DoneReply,
    },
}

/// One partition's replication state as this node sees it.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    pub partition: u32,
    pub leader: bool,
    pub leader_id: u64,
    pub term: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub applied_seq: u64,
    pub digest: u128,
    pub accounts: usize,
    pub ledger_sums: Vec<(u32, i128)>,
    pub failed: Option<String>,
}

/// Directory of one partition's Raft log, hard state and snapshot file.
pub fn partition_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join(format!("partition-{partition:05}"))
}

/// Log options of a replicated partition: a record is an entry kind byte plus an event batch.
pub fn replica_wal_options(config: &NodeConfig) -> WalOptions {
    WalOptions {
        segment_bytes: config.wal_segment_bytes,
        payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX + 64,
        ..WalOptions::default()
    }
}

/// Where the answer for a batch of items goes.
enum ItemsTo {
    Local(BatchPart),
    Remote { node: u64, request_id: u64, partition: u32 },
}

/// Where the answer for a lookup goes.
enum LookupTo {
    Local { slots: Vec<u32>, reply: LookupReply },
    Remote { node: u64, request_id: u64, partition: u32 },
}

struct PendingRead {
    ids: Vec<u64>,
    to: LookupTo,
    deadline: Instant,
}

/// A client request this shard cannot serve itself yet, with whoever waits for its answer.
enum Request {
    Items { batch: Batch, part: BatchPart },
    Lookup { consistency: Consistency, ids: Vec<u64>, slots: Vec<u32>, reply: LookupReply },
}

impl Request {
    fn fail(self, error: EngineError) {
        match self {
            Request::Items { part, .. } => part.complete(Err(error)),
            Request::Lookup { reply, .. } => reply(Err(error)),
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
struct Trip {
    deadline: Instant,
    hops: u32,
}

/// A request this shard forwarded to node `to`, waiting for its reply.
struct Forwarded {
    to: u64,
    partition: u32,
    request: Request,
    trip: Trip,
}

/// A request waiting for its partition to have a leader (an election or a leadership transfer in
/// progress), or to be sent again after the node it was forwarded to no longer led: to `to` when that
/// node named a leader, else wherever routing points. Only the first hop after a named leader is
/// immediate; later ones wait until `not_before` (a tick), so two nodes with stale views cannot bounce a
/// request between them at network speed.
struct Parked {
    partition: u32,
    request: Request,
    trip: Trip,
    not_before: Instant,
    to: Option<u64>,
}

/// Answers owed once the entry at `index` (with `term`) is applied.
struct Owed {
    index: u64,
    term: u64,
    answers: Vec<(ItemsTo, Vec<ItemResult>)>,
}

struct Group {
    partition: u32,
    preferred_leader: u64,
    raw: RawNode<WalStorage>,
    committed: PartitionState,
    /// Committed state plus every uncommitted event in the log; only while leading.
    speculative: Option<PartitionState>,
    /// The speculative state took effects that never reached the log (a refused proposal): rebuild it.
    speculative_stale: bool,
    buffer: EventBuffer,
    round_answers: Vec<(ItemsTo, Vec<ItemResult>)>,
    owed: VecDeque<Owed>,
    applied_index: u64,
    last_snapshot_index: u64,
    /// (first seq, log index) of every applied event batch still in the log, oldest first: where the
    /// history walk finds a seq.
    batch_index: Vec<(u64, u64)>,
    // Cached from the last `raw.status()`.
    role: Role,
    leader: Option<u64>,
    term: u64,
    commit_index: u64,
    last_index: u64,
    /// Reads waiting until the committed state reaches a sequence.
    seq_waits: Vec<(u64, PendingRead)>,
    /// Linearizable reads waiting for their ReadIndex (by context), then for the apply of that index.
    read_index_waits: HashMap<u64, PendingRead>,
    index_waits: Vec<(u64, PendingRead)>,
    preferred_caught_up_at: Option<Instant>,
    last_transfer_attempt: Option<Instant>,
    /// Set while this replica, rebuilt from nothing on a rejoining node, waits for every other replica's
    /// term and commit index; it takes no part in Raft until then.
    recovery: Option<Recovery>,
    /// After recovery, while Raft withholds this replica's votes: the rejoin marker that says so is on
    /// disk, to be removed once Raft stops withholding.
    withhold_marker_on_disk: bool,
    /// The partition's directory (log, hard state, snapshot, rejoin marker).
    dir: PathBuf,
}

/// A replica that lost its log and vote, asking the others where the group stands.
struct Recovery {
    /// (term, commit index, last index) per replica that answered.
    reports: HashMap<u64, (u64, u64, u64)>,
    last_probe: Option<Instant>,
    last_warning: Instant,
}

/// How often a recovering replica asks the replicas that have not answered yet, and how often it says
/// whom it is still waiting for.
const RECOVERY_PROBE_INTERVAL_MS: u64 = 100;
const RECOVERY_WARNING_INTERVAL_MS: u64 = 5_000;

pub struct ReplicaShard {
    id: u32,
    node_id: u64,
    config: NodeConfig,
    replication: ReplicationConfig,
    cluster: ClusterConfig,
    transport: Arc<Transport>,
    groups: Vec<Group>,
    /// Partition -> position in `groups`.
    group_of: HashMap<u32, usize>,
    forwarded: HashMap<u64, Forwarded>,
    parked: Vec<Parked>,
    /// Where to send requests for partitions this node holds no replica of: the last leader a
    /// `NotLeader` answer named, else the preferred leader.
    remote_leaders: HashMap<u32, u64>,
    /// Ids of forwarded requests. They start at the boot's wall clock in nanoseconds, above any id an
    /// earlier run of this node used, so a late reply to a request sent before a restart never matches
    /// a new one.
    next_request_id: u64,
    next_read_context: u64,
    last_tick: Instant,
    failed: Option<String>,
}

/// A group's rebalancing: the preferred leader asks for leadership back only when it has been caught up
/// this recently, and a leader tries at most this often.
const PREFERRED_CAUGHT_UP_WITHIN_MS: u64 = 500;
const LEADER_TRANSFER_RETRY_MS: u64 = 3_000;
/// Ticks one loop iteration may catch up after a stall (more would only fire elections at once).
const TICKS_PER_ROUND_MAX: u32 = 3;

impl ReplicaShard {
    /// Opens (creating if new) the groups of `partitions`, restoring each from its snapshot file; Raft
    /// then re-applies the committed log after it. With `rejoin` (this node lost its data), a group
    /// that starts empty first asks every other replica for its term and commit index.
    pub fn open(
        id: u32,
        node_id: u64,
        config: &NodeConfig,
        cluster: &ClusterConfig,
        partitions: &[u32],
        transport: Arc<Transport>,
        rejoin: bool,
    ) -> Result<ReplicaShard, EngineError> {
        let replication = cluster.replication.clone();
        let mut groups = Vec::new();
        let mut group_of = HashMap::new();
        for &partition in partitions {
            let group = open_group(node_id, config, cluster, partition, rejoin)?;
            group_of.insert(partition, groups.len());
            groups.push(group);
        }
        Ok(ReplicaShard {
            id,
            node_id,
            config: config.clone(),
            replication,
            cluster: cluster.clone(),
            transport,
            groups,
            group_of,
            forwarded: HashMap::new(),
            parked: Vec::new(),
            remote_leaders: HashMap::new(),
            next_request_id: clock_ns().max(1),
            next_read_context: 1,
            last_tick: Instant::now(),
            failed: None,
        })
    }

    /// Runs the shard until shutdown. `peers` carries `(sending node, item)` from the transport.
    pub fn run(mut self, peers: Receiver<(u64, PeerItem)>, clients: Receiver<ClientCommand>) {
        let tick = Duration::from_millis(self.replication.tick_interval_ms);
        // A brand-new cluster: each preferred leader stands at once instead of waiting for a timeout.
        for group in &mut self.groups {
            if group.preferred_leader == self.node_id && group.raw.status().term == 0 && group.recovery.is_none() {
                group.raw.campaign();
            }
        }
        self.drive_all();
        let client_depth = metrics::queue_depth_gauge(self.id, "client");
        let peer_depth = metrics::queue_depth_gauge(self.id, "peer");
        loop {
            let accepting = self.accepting_clients();
            let wait = tick.saturating_sub(self.last_tick.elapsed());
            let mut select = Select::new();
            let peer_index = select.recv(&peers);
            let client_index = accepting.then(|| select.recv(&clients));
            // Which queue woke us does not matter: both are drained below.
            let _ = (peer_index, client_index, select.ready_timeout(wait));
            let round_started = Instant::now();
            client_depth.set(clients.len() as i64);
            peer_depth.set(peers.len() as i64);
            // Peers first and entirely: they are what lets the cluster make progress.
            loop {
                match peers.try_recv() {
                    Ok((from, item)) => self.on_peer(from, item),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                }
            }
            let mut shutdown = None;
            if self.accepting_clients() {
                let now_ns = clock_ns();
                let mut items = 0usize;
                while items < self.config.round_items_max {
                    match clients.try_recv() {
                        Ok(ClientCommand::Shutdown { reply }) => {
                            shutdown = Some(reply);
                            break;
                        }
                        Ok(command) => items += self.on_client(command, now_ns),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => {
                            return self.close(None);
                        }
                    }
                }
            }
            self.propose_all();
            self.tick_if_due(tick);
            self.drive_all();
            self.retry_parked(clock_ns());
            self.propose_all();
            self.expire_waits();
            metrics::observe_round(round_started.elapsed());
            if let Some(reply) = shutdown {
                return self.close(Some(reply));
            }
        }
    }

    /// Client commands wait in their queue while a led partition has too much uncommitted.
    fn accepting_clients(&self) -> bool {
        self.groups.iter().all(|g| {
            g.speculative.is_none()
                || g.last_index.saturating_sub(g.commit_index) < self.replication.uncommitted_entries_max
        })
    }

    fn tick_if_due(&mut self, tick: Duration) {
        let mut ticks = 0;
        while self.last_tick.elapsed() >= tick && ticks < TICKS_PER_ROUND_MAX {
            self.last_tick += tick;
            ticks += 1;
            for group in self.groups.iter_mut().filter(|g| g.recovery.is_none()) {
                group.raw.tick();
            }
        }
        if self.last_tick.elapsed() >= tick {
            self.last_tick = Instant::now();
        }
        if ticks > 0 {
            self.rebalance();
            self.probe_for_recovery();
        }
    }

    /// Hands leadership back to a partition's preferred node once it is caught up, so leaders stay
    /// spread over the nodes after a failover heals.
    fn rebalance(&mut self) {
        let now = Instant::now();
        for group in &mut self.groups {
            if group.role != Role::Leader || group.preferred_leader == self.node_id {
                continue;
            }
            let caught_up = group
                .preferred_caught_up_at
                .is_some_and(|at| now.duration_since(at) < Duration::from_millis(PREFERRED_CAUGHT_UP_WITHIN_MS));
            let may_try = group
                .last_transfer_attempt
                .is_none_or(|at| now.duration_since(at) >= Duration::from_millis(LEADER_TRANSFER_RETRY_MS));
            if caught_up && may_try {
                group.last_transfer_attempt = Some(now);
                if group.raw.transfer_leader(group.preferred_leader).is_ok() {
                    log::info!(
                        "node {}: partition {}: handing leadership to its preferred node {}",
                        self.node_id,
                        group.partition,
                        group.preferred_leader
                    );
                }
            }
        }
    }

    fn on_peer(&mut self, from: u64, item: PeerItem) {
        match item {
            PeerItem::Raft { partition, message } => {
                let Some(&slot) = self.group_of.get(&partition) else { return };
                let group = &mut self.groups[slot];
                if group.recovery.is_some() {
                    return;
                }
                if message.from == group.preferred_leader {
                    if let MessageBody::AppendResponse { index, reject: None } = message.body {
                        if index >= group.commit_index && group.role == Role::Leader {
                            group.preferred_caught_up_at = Some(Instant::now());
                        }
                    }
                }
                group.raw.step(message);
            }
            // The connection names the sender; an item claiming another sender is dropped.
            PeerItem::Forward { request_id, from_node, partition, request } if from_node == from => {
                self.on_forward(request_id, from, partition, request);
            }
            PeerItem::Forward { .. } => {}
            PeerItem::ForwardReply { request_id, reply, .. } => self.on_forward_reply(from, request_id, reply),
            PeerItem::TermProbe { partition } => {
                // Only a replica that has its state answers; two rebuilt replicas must not vouch for
                // each other.
                let Some(&slot) = self.group_of.get(&partition) else { return };
                let group = &self.groups[slot];
                if group.recovery.is_none() && self.failed.is_none() {
                    let status = group.raw.status();
                    let (term, commit, last_index) = (status.term, status.commit, status.last_index);
                    self.transport.send(from, PeerItem::TermReport { partition, term, commit, last_index });
                }
            }
            PeerItem::TermReport { partition, term, commit, last_index } => {
                self.on_term_report(from, partition, (term, commit, last_index))
            }
        }
    }

    /// Asks the replicas that have not reported yet, for every recovering group.
    fn probe_for_recovery(&mut self) {
        let now = Instant::now();
        for group in &mut self.groups {
            let Some(recovery) = group.recovery.as_mut() else { continue };
            if recovery
                .last_probe
                .is_some_and(|at| now.duration_since(at) < Duration::from_millis(RECOVERY_PROBE_INTERVAL_MS))
            {
                continue;
            }
            recovery.last_probe = Some(now);
            let missing: Vec<u64> = self
                .cluster
                .replicas(group.partition)
                .into_iter()
                .filter(|&n| n != self.node_id && !recovery.reports.contains_key(&n))
                .collect();
            for &node in &missing {
                self.transport.send(node, PeerItem::TermProbe { partition: group.partition });
            }
            if now.duration_since(recovery.last_warning) >= Duration::from_millis(RECOVERY_WARNING_INTERVAL_MS) {
                recovery.last_warning = now;
                log::warn!(
                    "node {}: partition {}: rejoining; still waiting for the term and commit index of replicas {missing:?}",
                    self.node_id, group.partition
                );
            }
        }
    }

    /// Records a replica's `(term, commit, last index)`; once every other replica has answered, the
    /// group joins Raft in the highest reported term and withholds its votes until its commit index
    /// reaches the highest reported *last* index. Any entry the lost copy helped commit is in the log of
    /// some other replica (a majority holds it, and that majority includes another replica), though
    /// maybe not yet known there as committed: the last index covers it where a commit index might not.
    fn on_term_report(&mut self, from: u64, partition: u32, report: (u64, u64, u64)) {
        let Some(&slot) = self.group_of.get(&partition) else { return };
        let others: Vec<u64> = self.cluster.replicas(partition).into_iter().filter(|&n| n != self.node_id).collect();
        if !others.contains(&from) {
            return;
        }
        let group = &mut self.groups[slot];
        let Some(recovery) = group.recovery.as_mut() else { return };
        recovery.reports.insert(from, report);
        if !others.iter().all(|n| recovery.reports.contains_key(n)) {
            return;
        }
        let term = recovery.reports.values().map(|r| r.0).max().unwrap_or(0);
        let target = recovery.reports.values().map(|r| r.2).max().unwrap_or(0);
        // Durable first: a restart during catch-up must come back withholding, with or without --rejoin.
        if let Err(error) = write_rejoin_marker(&group.dir, RejoinMarker::WithholdVotesUntil { index: target, term }) {
            return self.fail(format!("partition {partition}: {error}"));
        }
        group.recovery = None;
        group.raw.rejoin_after_loss(term, target);
        group.withhold_marker_on_disk = true;
        log::info!(
            "node {}: partition {}: rejoined in term {term}; votes withheld until commit index {target}",
            self.node_id,
            partition
        );
    }

    /// Relays a forwarded request's answer, or sends the request on when the node no longer led.
    fn on_forward_reply(&mut self, from: u64, request_id: u64, reply: ForwardReply) {
        // Only the node the request went to may answer it.
        if self.forwarded.get(&request_id).is_none_or(|forwarded| forwarded.to != from) {
            return;
        }
        let Forwarded { partition, request, trip, .. } = self.forwarded.remove(&request_id).expect("checked");
        let now = Instant::now();
        match (request, reply) {
            (request, ForwardReply::Error { code, leader, .. })
                if code == ErrorCode::NotLeader as u16 && trip.deadline > now =>
            {
                let replica = self.cluster.replicas(partition).contains(&leader);
                let hint = (replica && leader != from && leader != self.node_id).then_some(leader);
                if !self.group_of.contains_key(&partition) {
                    let next = hint.unwrap_or_else(|| self.replica_after(partition, from));
                    self.remote_leaders.insert(partition, next);
                }
                // The first named leader is tried at once; otherwise give the election a tick.
                let tick = Duration::from_millis(self.replication.tick_interval_ms);
                let not_before = if hint.is_some() && trip.hops == 0 { now } else { now + tick };
                let trip = Trip { hops: trip.hops + 1, ..trip };
                metrics::count_forward(ForwardOutcome::Redirected);
                self.parked.push(Parked { partition, request, trip, not_before, to: hint });
            }
            (Request::Items { part, .. }, ForwardReply::Results(results)) if results.len() == part.len() => {
                metrics::count_forward(ForwardOutcome::Answered);
                part.complete(Ok(results))
            }
            (Request::Lookup { slots, reply, .. }, ForwardReply::Accounts(accounts))
                if accounts.len() == slots.len() =>
            {
                metrics::count_forward(ForwardOutcome::Answered);
                reply(Ok(slots.into_iter().zip(accounts).collect()))
            }
            (request, ForwardReply::Error { code, message, .. }) => {
                metrics::count_forward(ForwardOutcome::Failed);
                request.fail(EngineError::Remote { node: from, code, message })
            }
            (request, _) => {
                request.fail(EngineError::Unavailable("a forwarded request got a reply of the wrong shape".into()))
            }
        }
    }

    /// The replica of `partition` after `node` in placement order: the next guess at its leader.
    fn replica_after(&self, partition: u32, node: u64) -> u64 {
        let replicas = self.cluster.replicas(partition);
        let position = replicas.iter().position(|&n| n == node).map_or(0, |p| p + 1);
        replicas[position % replicas.len()]
    }

    fn on_forward(&mut self, request_id: u64, from: u64, partition: u32, request: ForwardRequest) {
        let refuse = |shard: &ReplicaShard, error: EngineError| {
            shard.transport.send(from, PeerItem::ForwardReply { request_id, partition, reply: error_reply(&error) });
        };
        if let Some(reason) = &self.failed {
            return refuse(self, EngineError::ShardFailed { shard: self.id, reason: reason.clone() });
        }
        let Some(&slot) = self.group_of.get(&partition) else {
            return refuse(self, EngineError::NotLeader { partition, leader: None });
        };
        let group = &self.groups[slot];
        let leads = group.may_decide();
        let remote = ItemsTo::Remote { node: from, request_id, partition };
        match request {
            ForwardRequest::Transfers(_) | ForwardRequest::CreateAccounts(_) if !leads => {
                // While handing leadership over, point the sender at the node taking it.
                let leader = group.raw.lead_transferee().or(group.leader);
                refuse(self, EngineError::NotLeader { partition, leader })
            }
            ForwardRequest::Transfers(items) => self.execute(slot, Batch::Transfers(items), remote, clock_ns()),
            ForwardRequest::CreateAccounts(items) => self.execute(slot, Batch::Accounts(items), remote, clock_ns()),
            ForwardRequest::Lookup { consistency, ids } => {
                let to = LookupTo::Remote { node: from, request_id, partition };
                self.lookup(slot, consistency, ids, to);
            }
        }
    }

    /// Returns the number of items the command carried.
    fn on_client(&mut self, command: ClientCommand, now_ns: u64) -> usize {
        let trip =
            Trip { deadline: Instant::now() + Duration::from_millis(self.replication.forward_timeout_ms), hops: 0 };
        match command {
            ClientCommand::Status { reply } => {
                reply(self.groups.iter().map(|g| self.group_status(g)).collect());
                0
            }
            ClientCommand::Shutdown { .. } => unreachable!("handled by the loop"),
            ClientCommand::History { partition, account_id, from_seq, limit, reply } => {
                reply(self.history(partition, account_id, from_seq, limit));
                1
            }
            ClientCommand::Transfers { partition, items, part } => {
                let n = items.len();
                self.route(partition, Request::Items { batch: Batch::Transfers(items), part }, trip, now_ns);
                n
            }
            ClientCommand::CreateAccounts { partition, items, part } => {
                let n = items.len();
                self.route(partition, Request::Items { batch: Batch::Accounts(items), part }, trip, now_ns);
                n
            }
            ClientCommand::Lookup { partition, consistency, ids, reply } => {
                let n = ids.len();
                let (slots, ids): (Vec<u32>, Vec<u64>) = ids.into_iter().unzip();
                match self.group_of.get(&partition).copied() {
                    // Any replica serves these from its own committed state.
                    Some(slot) if consistency != Consistency::Linearizable && self.failed.is_none() => {
                        self.lookup(slot, consistency, ids, LookupTo::Local { slots, reply })
                    }
                    _ => self.route(partition, Request::Lookup { consistency, ids, slots, reply }, trip, now_ns),
                }
                n
            }
        }
    }

    /// A page of history from this replica's committed state, walked through the events in its log.
    fn history(
        &self,
        partition: u32,
        account_id: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<crate::history::HistoryPage, EngineError> {
        if let Some(reason) = &self.failed {
            return Err(EngineError::ShardFailed { shard: self.id, reason: reason.clone() });
        }
        let Some(&slot) = self.group_of.get(&partition) else {
            let leader = Some(self.cluster.preferred_leader(partition));
            return Err(EngineError::NotLeader { partition, leader });
        };
        let group = &self.groups[slot];
        let account = group.committed.account(account_id).ok_or(EngineError::AccountNotFound { account_id })?;
        let index = &group.batch_index;
        crate::history::walk(
            partition,
            &account,
            from_seq,
            limit,
            |seq| {
                let after = index.partition_point(|&(first_seq, _)| first_seq <= seq);
                if after == 0 {
                    return Err(EngineError::HistoryCompacted { account_id, seq });
                }
                Ok(Some(index[after - 1].1))
            },
            |log_index| match group.raw.entry(log_index) {
                Some(Entry { payload: Payload::Data(bytes), .. }) => Ok(bytes),
                _ => Err(EngineError::HistoryCompacted { account_id, seq: 0 }),
            },
        )
    }

    /// Serves a request here if this node leads its partition, sends it to the leader otherwise, and
    /// parks it while the partition has no leader.
    fn route(&mut self, partition: u32, request: Request, trip: Trip, now_ns: u64) {
        if let Some(reason) = &self.failed {
            return request.fail(EngineError::ShardFailed { shard: self.id, reason: reason.clone() });
        }
        let Some(&slot) = self.group_of.get(&partition) else {
            let to = self.remote_leaders.get(&partition).copied();
            let to = to.unwrap_or_else(|| self.cluster.preferred_leader(partition));
            return self.forward(to, partition, request, trip);
        };
        let group = &self.groups[slot];
        if group.may_decide() {
            return match request {
                Request::Items { batch, part } => self.execute(slot, batch, ItemsTo::Local(part), now_ns),
                Request::Lookup { consistency, ids, slots, reply } => {
                    self.lookup(slot, consistency, ids, LookupTo::Local { slots, reply })
                }
            };
        }
        match group.leader {
            Some(leader) if leader != self.node_id => self.forward(leader, partition, request, trip),
            // No leader known, or this node just won and has not rebuilt its state yet, or it is
            // handing leadership over: wait.
            _ => self.parked.push(Parked { partition, request, trip, not_before: Instant::now(), to: None }),
        }
    }

    /// Routes parked requests again once their partition has a leader; fails those that waited too long.
    fn retry_parked(&mut self, now_ns: u64) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        for parked in std::mem::take(&mut self.parked) {
            let local = self.group_of.get(&parked.partition).map(|&slot| &self.groups[slot]);
            let decides_here = local.is_some_and(Group::may_decide);
            let ready = parked.not_before <= now
                && (parked.to.is_some()
                    || decides_here
                    || local.is_none_or(|group| group.leader.is_some_and(|leader| leader != self.node_id)));
            if parked.trip.deadline <= now {
                parked.request.fail(EngineError::Unavailable(format!(
                    "partition {} had no reachable leader within {} ms",
                    parked.partition, self.replication.forward_timeout_ms
                )));
            } else if !ready {
                self.parked.push(parked);
            } else if let (Some(to), false) = (parked.to, decides_here) {
                // The node that refused named the leader: go there, whatever this replica believes.
                self.forward(to, parked.partition, parked.request, parked.trip);
            } else {
                self.route(parked.partition, parked.request, parked.trip, now_ns);
            }
        }
    }

    fn forward(&mut self, to: u64, partition: u32, request: Request, trip: Trip) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let item = PeerItem::Forward { request_id, from_node: self.node_id, partition, request: request.to_forward() };
        if !self.transport.send(to, item) {
            metrics::count_forward(ForwardOutcome::NotQueued);
            self.suspect_remote_leader(partition, to);
            return request.fail(EngineError::Unavailable(format!("cannot queue the request for node {to}")));
        }
        metrics::count_forward(ForwardOutcome::Sent);
        self.forwarded.insert(request_id, Forwarded { to, partition, request, trip });
    }

    /// `to` did not take or did not answer a request for a partition this node holds no replica of:
    /// if it is where such requests go, try the next replica from now on.
    fn suspect_remote_leader(&mut self, partition: u32, to: u64) {
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

    /// Leader path: validate against the speculative state and collect the events of this round.
    fn execute(&mut self, slot: usize, batch: Batch, to: ItemsTo, now_ns: u64) {
        let len = batch.len();
        if self.groups[slot].buffer.event_count() as usize + len > RECORD_EVENTS_MAX {
            self.propose(slot);
        }
        let group = &mut self.groups[slot];
        if group.speculative_stale {
            // The proposal just made was refused: the speculative state holds effects the log lacks,
            // so nothing may be decided against it until it is rebuilt.
            let error = EngineError::Unavailable(format!("partition {}: leader is catching up", group.partition));
            return answer_items(&self.transport, to, Err(error));
        }
        let Some(state) = group.speculative.as_mut() else {
            let error = EngineError::NotLeader { partition: group.partition, leader: group.leader };
            return answer_items(&self.transport, to, Err(error));
        };
        let mut results = Vec::with_capacity(len);
        match &batch {
            Batch::Transfers(items) => state.execute_transfers(now_ns, items, &mut group.buffer, &mut results),
            Batch::Accounts(items) => state.execute_create_accounts(now_ns, items, &mut group.buffer, &mut results),
        }
        group.round_answers.push((to, results));
    }

    fn propose_all(&mut self) {
        for slot in 0..self.groups.len() {
            self.propose(slot);
        }
    }

    /// Proposes the round's events of one led partition as one entry, and files its answers behind it.
    fn propose(&mut self, slot: usize) {
        let group = &mut self.groups[slot];
        if group.round_answers.is_empty() && group.buffer.is_empty() {
            group.buffer.clear();
            return;
        }
        let answers = std::mem::take(&mut group.round_answers);
        let outcome = if group.buffer.is_started() && !group.buffer.is_empty() {
            let data = group.buffer.finish().to_vec();
            group.raw.propose(data).inspect(|_| metrics::count_proposal()).map(|index| (index, group.term))
        } else {
            // Only replayed retries: their outcomes are in the log already, maybe not yet committed;
            // answer once everything this replica holds is applied.
            let last = group.raw.status().last_index;
            Ok((last, group.raw.term(last).unwrap_or(group.term)))
        };
        group.buffer.clear();
        match outcome {
            Ok((index, term)) if index <= group.applied_index => {
                for (to, results) in answers {
                    answer_items(&self.transport, to, Ok(results));
                }
                let _ = term;
            }
            Ok((index, term)) => {
                group.last_index = group.last_index.max(index);
                group.owed.push_back(Owed { index, term, answers });
            }
            Err(error) => {
                // The speculative state holds effects that will never be in the log.
                group.speculative_stale = true;
                let error =
                    EngineError::Unavailable(format!("partition {}: proposal refused: {error}", group.partition));
                for (to, _) in answers {
                    answer_items(&self.transport, to, Err(error.clone()));
                }
            }
        }
    }

    fn lookup(&mut self, slot: usize, consistency: Consistency, ids: Vec<u64>, to: LookupTo) {
        let deadline = Instant::now() + Duration::from_millis(self.replication.read_wait_timeout_ms);
        let read = PendingRead { ids, to, deadline };
        let group = &mut self.groups[slot];
        match consistency {
            Consistency::Any => serve_read(&self.transport, &group.committed, read),
            Consistency::AtLeast(seq) if group.committed.last_seq() >= seq => {
                serve_read(&self.transport, &group.committed, read)
            }
            Consistency::AtLeast(seq) => group.seq_waits.push((seq, read)),
            Consistency::Linearizable => {
                if group.speculative.is_none() {
                    let error = EngineError::NotLeader { partition: group.partition, leader: group.leader };
                    return answer_lookup(&self.transport, read.to, Err(error));
                }
                let context = self.next_read_context;
                self.next_read_context += 1;
                match group.raw.read_index(context) {
                    Ok(()) => {
                        group.read_index_waits.insert(context, read);
                    }
                    Err(error) => {
                        let error =
                            EngineError::Unavailable(format!("partition {}: read refused: {error}", group.partition));
                        answer_lookup(&self.transport, read.to, Err(error));
                    }
                }
            }
        }
    }

    fn drive_all(&mut self) {
        for slot in 0..self.groups.len() {
            if let Err(error) = self.drive(slot) {
                self.fail(format!("partition {}: {error}", self.groups[slot].partition));
            }
            self.observe_role(slot);
        }
    }

    /// Handles every Ready of one group.
    fn drive(&mut self, slot: usize) -> Result<(), EngineError> {
        if self.failed.is_some() {
            return Ok(());
        }
        let node_id = self.node_id;
        let interval = self.replication.snapshot_interval_entries;
        let group = &mut self.groups[slot];
        while group.raw.has_ready() {
            let mut ready = group.raw.ready();
            for message in std::mem::take(&mut ready.messages) {
                let to = message.to;
                self.transport.send(to, PeerItem::Raft { partition: group.partition, message });
            }
            if let Some(snapshot) = &ready.snapshot {
                let (partition, rows) = decode_partition_image(&snapshot.data)
                    .map_err(|e| EngineError::Store(format!("received snapshot: {e}")))?;
                if partition != group.partition {
                    return Err(EngineError::Store(format!("received a snapshot of partition {partition}")));
                }
                let state = PartitionState::restore_rows(group.committed.config(), rows)
                    .map_err(|e| EngineError::Store(format!("received snapshot: {e}")))?;
                group.raw.storage_mut().apply_snapshot(snapshot.clone()).map_err(storage_error)?;
                group.committed = state;
                group.batch_index.clear();
                group.applied_index = snapshot.meta.index;
                group.last_snapshot_index = snapshot.meta.index;
                log::info!(
                    "node {node_id}: partition {}: installed snapshot at index {} (seq {})",
                    group.partition,
                    snapshot.meta.index,
                    group.committed.last_seq()
                );
            }
            if !ready.entries.is_empty() {
                group.raw.storage_mut().append(&ready.entries).map_err(storage_error)?;
            }
            if let Some(hard_state) = ready.hard_state {
                group.raw.storage_mut().set_hard_state(hard_state).map_err(storage_error)?;
            }
            if ready.must_persist() {
                group.raw.on_persisted(ready.number);
            }
            if let Some(last) = ready.committed_entries.last().map(|e| e.index) {
                for entry in &ready.committed_entries {
                    apply_entry(group, entry, &self.transport)?;
                }
                group.raw.on_applied(last);
            }
            for read_state in ready.read_states {
                if let Some(read) = group.read_index_waits.remove(&read_state.context) {
                    group.index_waits.push((read_state.index, read));
                }
            }
            for context in ready.dropped_reads {
                if let Some(read) = group.read_index_waits.remove(&context) {
                    let error = EngineError::NotLeader { partition: group.partition, leader: None };
                    answer_lookup(&self.transport, read.to, Err(error));
                }
            }
        }
        serve_waiting_reads(group, &self.transport);
        if group.applied_index >= group.last_snapshot_index + interval {
            let image = encode_partition_image(group.partition, &group.committed.export_rows());
            group.raw.compact(group.applied_index, image).map_err(|e| EngineError::Store(e.to_string()))?;
            group.last_snapshot_index = group.applied_index;
            let first_kept = group.raw.status().first_index;
            group.batch_index.retain(|&(_, index)| index >= first_kept);
        }
        Ok(())
    }

    /// Notices a change of leadership and adjusts the speculative state and the waiting requests.
    fn observe_role(&mut self, slot: usize) {
        let node_id = self.node_id;
        let group = &mut self.groups[slot];
        let status = group.raw.status();
        if group.withhold_marker_on_disk && !group.raw.votes_withheld() {
            if let Err(error) = remove_rejoin_marker(&group.dir) {
                let reason = format!("partition {}: {error}", group.partition);
                return self.fail(reason);
            }
            group.withhold_marker_on_disk = false;
            log::info!(
                "node {node_id}: partition {}: caught up to commit index {}; votes no longer withheld",
                group.partition,
                status.commit
            );
        }
        let was = group.role;
        if group.leader != status.leader {
            metrics::count_leader_change()
        }
        group.role = status.role;
        group.term = status.term;
        group.leader = status.leader;
        group.commit_index = status.commit;
        group.last_index = status.last_index;
        let leads = status.role == Role::Leader;
        if leads && (group.speculative.is_none() || group.speculative_stale) {
            match rebuild_speculative(group) {
                Ok(state) => {
                    group.speculative = Some(state);
                    group.speculative_stale = false;
                }
                Err(error) => {
                    let reason = format!("partition {}: cannot rebuild the leader state: {error}", group.partition);
                    return self.fail(reason);
                }
            }
            if was != Role::Leader {
                log::info!("node {node_id}: partition {}: leader in term {}", group.partition, status.term);
            }
        }
        if !leads && group.speculative.is_some() {
            group.speculative = None;
            group.speculative_stale = false;
            let error = EngineError::NotLeader { partition: group.partition, leader: status.leader };
            for owed in group.owed.drain(..) {
                for (to, _) in owed.answers {
                    answer_items(&self.transport, to, Err(error.clone()));
                }
            }
            for (to, _) in group.round_answers.drain(..) {
                answer_items(&self.transport, to, Err(error.clone()));
            }
            group.buffer.clear();
            for (_, read) in group.read_index_waits.drain() {
                answer_lookup(&self.transport, read.to, Err(error.clone()));
            }
            for (_, read) in group.index_waits.drain(..) {
                answer_lookup(&self.transport, read.to, Err(error.clone()));
            }
            log::info!(
                "node {node_id}: partition {}: no longer leader (term {}, leader {:?})",
                group.partition,
                status.term,
                status.leader
            );
        }
    }

    fn expire_waits(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> =
            self.forwarded.iter().filter(|(_, forwarded)| forwarded.trip.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            if let Some(forwarded) = self.forwarded.remove(&id) {
                metrics::count_forward(ForwardOutcome::TimedOut);
                self.suspect_remote_leader(forwarded.partition, forwarded.to);
                forwarded.request.fail(EngineError::Unavailable(format!(
                    "node {}, the leader of partition {} as far as this node knew, did not answer in time",
                    forwarded.to, forwarded.partition
                )));
            }
        }
        for group in &mut self.groups {
            let timeout = |read: PendingRead, transport: &Transport| {
                let error = EngineError::Unavailable(format!(
                    "partition {} did not reach the requested state in time",
                    group.partition
                ));
                answer_lookup(transport, read.to, Err(error));
            };
            let (late, keep): (Vec<_>, Vec<_>) = group.seq_waits.drain(..).partition(|(_, r)| r.deadline <= now);
            group.seq_waits = keep;
            late.into_iter().for_each(|(_, read)| timeout(read, &self.transport));
            let (late, keep): (Vec<_>, Vec<_>) = group.index_waits.drain(..).partition(|(_, r)| r.deadline <= now);
            group.index_waits = keep;
            late.into_iter().for_each(|(_, read)| timeout(read, &self.transport));
            let late: Vec<u64> =
                group.read_index_waits.iter().filter(|(_, r)| r.deadline <= now).map(|(&c, _)| c).collect();
            for context in late {
                if let Some(read) = group.read_index_waits.remove(&context) {
                    timeout(read, &self.transport);
                }
            }
        }
    }

    fn group_status(&self, group: &Group) -> GroupStatus {
        let status = group.raw.status();
        GroupStatus {
            partition: group.partition,
            leader: status.role == Role::Leader,
            leader_id: status.leader.unwrap_or(0),
            term: status.term,
            last_index: status.last_index,
            commit_index: status.commit,
            applied_index: group.applied_index,
            snapshot_index: group.raw.storage().snapshot_index(),
            applied_seq: group.committed.last_seq(),
            digest: group.committed.digest(),
            accounts: group.committed.accounts_len(),
            ledger_sums: group.committed.ledger_sums(),
            failed: self.failed.clone(),
        }
    }

    fn fail(&mut self, reason: String) {
        if self.failed.is_some() {
            return;
        }
        log::error!("node {} shard {}: FAILED, refusing all commands until restart: {reason}", self.node_id, self.id);
        self.failed = Some(reason.clone());
        let error = EngineError::ShardFailed { shard: self.id, reason };
        for group in &mut self.groups {
            group.speculative = None;
            fail_everything_waiting(group, &self.transport, &error);
        }
    }

    /// Answers everything still waiting with `ShuttingDown`: owed batches, queued reads, forwarded and
    /// parked requests. A batch whose entry commits later is still in the log; a retry with the same
    /// ids returns its outcome.
    fn close(mut self, reply: Option<DoneReply>) {
        self.propose_all();
        self.drive_all();
        let error = EngineError::ShuttingDown;
        for group in &mut self.groups {
            fail_everything_waiting(group, &self.transport, &error);
        }
        for (_, forwarded) in self.forwarded.drain() {
            forwarded.request.fail(error.clone());
        }
        for parked in self.parked.drain(..) {
            parked.request.fail(error.clone());
        }
        if let Some(reply) = reply {
            reply(match &self.failed {
                None => Ok(()),
                Some(reason) => Err(EngineError::ShardFailed { shard: self.id, reason: reason.clone() }),
            });
        }
    }
}

#[derive(Clone)]
enum Batch {
    Transfers(Vec<Transfer>),
    Accounts(Vec<CreateAccount>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Transfers(items) => items.len(),
            Batch::Accounts(items) => items.len(),
        }
    }
}

fn open_group(
    node_id: u64,
    config: &NodeConfig,
    cluster: &ClusterConfig,
    partition: u32,
    rejoin: bool,
) -> Result<Group, EngineError> {
    let dir = partition_dir(&config.data_dir, partition);
    let mut storage = WalStorage::open(&dir, replica_wal_options(config))
        .map_err(|e| EngineError::Log(format!("partition {partition}: {e}")))?;
    let replicas = cluster.replicas(partition);
    storage
        .bootstrap(ConfState::with_voters(replicas.iter().copied()))
        .map_err(|e| EngineError::Log(format!("partition {partition}: {e}")))?;
    let snapshot = storage.snapshot().map_err(storage_error)?;
    let partition_config = partition_config(config, partition);
    let committed = if snapshot.meta.index == 0 {
        PartitionState::new(partition_config)
    } else {
        let (image_partition, rows) = decode_partition_image(&snapshot.data)
            .map_err(|e| EngineError::Store(format!("partition {partition}: snapshot file: {e}")))?;
        if image_partition != partition {
            return Err(EngineError::Store(format!(
                "partition {partition}: snapshot file holds partition {image_partition}"
            )));
        }
        PartitionState::restore_rows(partition_config, rows)
            .map_err(|e| EngineError::Store(format!("partition {partition}: snapshot file: {e}")))?
    };
    let r = &cluster.replication;
    let mut raft_config = raft::Config::new(node_id);
    raft_config.election_timeout_ticks_min = r.election_timeout_ticks_min;
    raft_config.election_timeout_ticks_max = r.election_timeout_ticks_max;
    raft_config.heartbeat_interval_ticks = r.heartbeat_interval_ticks;
    raft_config.append_entries_bytes_max = r.peer_batch_bytes_max as u64 / 2;
    raft_config.proposal_bytes_max = (RECORD_PAYLOAD_BYTES_MAX as u64) * 2;
    raft_config.uncommitted_bytes_max =
        raft_config.proposal_bytes_max.max(r.uncommitted_entries_max * RECORD_PAYLOAD_BYTES_MAX as u64);
    raft_config.random_seed = node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ partition as u64 ^ clock_ns();
    raft_config.applied_index = snapshot.meta.index;
    let mut raw =
        RawNode::new(raft_config, storage).map_err(|e| EngineError::Log(format!("partition {partition}: {e}")))?;
    let status = raw.status();
    // Nothing on disk for this partition: on a rejoining node, that means it was lost. A marker left by
    // an earlier run that did not finish rejoining keeps its rules, whatever the flags say now.
    let marker = read_rejoin_marker(&dir)?;
    let empty = status.term == 0 && status.last_index == 0 && snapshot.meta.index == 0;
    let lost = rejoin && empty && replicas.len() > 1 && marker.is_none();
    if lost {
        write_rejoin_marker(&dir, RejoinMarker::AwaitingReports)?;
    }
    let recovery = (lost || marker == Some(RejoinMarker::AwaitingReports)).then(|| Recovery {
        reports: HashMap::new(),
        last_probe: None,
        last_warning: Instant::now(),
    });
    let withhold_marker_on_disk = match marker {
        Some(RejoinMarker::WithholdVotesUntil { index, term }) => {
            // Re-adopt the term too: a crash may have come before it reached the hard state.
            raw.rejoin_after_loss(term, index);
            true
        }
        _ => false,
    };
    Ok(Group {
        partition,
        preferred_leader: cluster.preferred_leader(partition),
        raw,
        committed,
        speculative: None,
        speculative_stale: false,
        buffer: EventBuffer::new(),
        round_answers: Vec::new(),
        owed: VecDeque::new(),
        applied_index: snapshot.meta.index,
        last_snapshot_index: snapshot.meta.index,
        batch_index: Vec::new(),
        role: status.role,
        leader: status.leader,
        term: status.term,
        commit_index: status.commit,
        last_index: status.last_index,
        seq_waits: Vec::new(),
        read_index_waits: HashMap::new(),
        index_waits: Vec::new(),
        preferred_caught_up_at: None,
        last_transfer_attempt: None,
        recovery,
        withhold_marker_on_disk,
        dir,
    })
}

/// File in a partition directory while a replica rebuilt on a rejoining node does not yet take full
/// part in Raft: `awaiting-reports` until every other replica has answered, then
/// `withhold-votes-until N term T` until its commit index reaches N (T: the term it adopted, re-adopted
/// at open in case the crash came before the new term reached the hard state). It survives restarts,
/// so a crash during catch-up resumes the same rules with or without `--rejoin`.
pub const REJOIN_MARKER_FILE: &str = "rejoin-pending";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RejoinMarker {
    AwaitingReports,
    WithholdVotesUntil { index: u64, term: u64 },
}

fn read_rejoin_marker(dir: &Path) -> Result<Option<RejoinMarker>, EngineError> {
    let path = dir.join(REJOIN_MARKER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::Io(format!("{}: {e}", path.display()))),
    };
    let text = text.trim();
    if text == "awaiting-reports" {
        return Ok(Some(RejoinMarker::AwaitingReports));
    }
    let parsed = text.strip_prefix("withhold-votes-until ").and_then(|rest| {
        let (index, term) = rest.split_once(" term ")?;
        Some(RejoinMarker::WithholdVotesUntil { index: index.parse().ok()?, term: term.parse().ok()? })
    });
    parsed.map(Some).ok_or_else(|| EngineError::Store(format!("{}: unreadable rejoin marker {text:?}", path.display())))
}

/// Replaces the marker atomically (temporary file, fsync, rename, directory fsync).
fn write_rejoin_marker(dir: &Path, marker: RejoinMarker) -> Result<(), EngineError> {
    let text = match marker {
        RejoinMarker::AwaitingReports => "awaiting-reports\n".to_string(),
        RejoinMarker::WithholdVotesUntil { index, term } => format!("withhold-votes-until {index} term {term}\n"),
    };
    let path = dir.join(REJOIN_MARKER_FILE);
    let temporary = dir.join(format!("{REJOIN_MARKER_FILE}.tmp"));
    let error = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    std::fs::write(&temporary, text).map_err(error)?;
    std::fs::File::open(&temporary).and_then(|f| f.sync_all()).map_err(error)?;
    std::fs::rename(&temporary, &path).map_err(error)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(error)
}

fn remove_rejoin_marker(dir: &Path) -> Result<(), EngineError> {
    let path = dir.join(REJOIN_MARKER_FILE);
    let error = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    std::fs::remove_file(&path).map_err(error)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(error)
}

impl Group {
    /// This replica leads and may decide new commands now: its speculative state is current and no
    /// leadership transfer is under way (Raft refuses proposals during one).
    fn may_decide(&self) -> bool {
        self.speculative.is_some() && !self.speculative_stale && self.raw.lead_transferee().is_none()
    }
}

fn storage_error(error: impl std::fmt::Display) -> EngineError {
    EngineError::Log(error.to_string())
}

/// Fails every batch and read waiting on `group` with `error`.
fn fail_everything_waiting(group: &mut Group, transport: &Transport, error: &EngineError) {
    for owed in group.owed.drain(..) {
        for (to, _) in owed.answers {
            answer_items(transport, to, Err(error.clone()));
        }
    }
    for (to, _) in group.round_answers.drain(..) {
        answer_items(transport, to, Err(error.clone()));
    }
    let reads = group
        .seq_waits
        .drain(..)
        .chain(group.index_waits.drain(..))
        .map(|(_, r)| r)
        .chain(group.read_index_waits.drain().map(|(_, r)| r))
        .collect::<Vec<_>>();
    for read in reads {
        answer_lookup(transport, read.to, Err(error.clone()));
    }
}

/// Applies one committed entry to the committed state and answers what waited for it.
fn apply_entry(group: &mut Group, entry: &Entry, transport: &Transport) -> Result<(), EngineError> {
    if let Payload::Data(bytes) = &entry.payload {
        let view = EventBatchView::new(bytes)
            .map_err(|e| EngineError::Log(format!("entry {}: not an event batch: {e}", entry.index)))?;
        group
            .committed
            .apply_batch(&view)
            .map_err(|e| EngineError::Log(format!("entry {}: cannot be applied: {e}", entry.index)))?;
        if view.event_count() > 0 {
            group.batch_index.push((view.first_seq(), entry.index));
        }
    }
    group.applied_index = entry.index;
    metrics::count_commits(1);
    while let Some(owed) = group.owed.front() {
        if owed.index > entry.index {
            break;
        }
        let owed = group.owed.pop_front().expect("front exists");
        let committed_as_proposed = owed.index < entry.index || owed.term == entry.term;
        for (to, results) in owed.answers {
            if committed_as_proposed {
                answer_items(transport, to, Ok(results));
            } else {
                let error = EngineError::NotLeader { partition: group.partition, leader: group.leader };
                answer_items(transport, to, Err(error));
            }
        }
    }
    Ok(())
}

/// The committed state plus every entry of this replica's log after it.
fn rebuild_speculative(group: &Group) -> Result<PartitionState, EngineError> {
    let mut state = group.committed.clone();
    let last = group.raw.status().last_index;
    for index in group.applied_index + 1..=last {
        let entry =
            group.raw.entry(index).ok_or_else(|| EngineError::Log(format!("entry {index} is missing from the log")))?;
        if let Payload::Data(bytes) = &entry.payload {
            let view = EventBatchView::new(bytes).map_err(|e| EngineError::Log(format!("entry {index}: {e}")))?;
            state.apply_batch(&view).map_err(|e| EngineError::Log(format!("entry {index}: {e}")))?;
        }
    }
    Ok(state)
}

fn serve_waiting_reads(group: &mut Group, transport: &Transport) {
    if !group.seq_waits.is_empty() {
        let seq = group.committed.last_seq();
        let (ready, waiting): (Vec<_>, Vec<_>) = group.seq_waits.drain(..).partition(|(needed, _)| *needed <= seq);
        group.seq_waits = waiting;
        for (_, read) in ready {
            serve_read(transport, &group.committed, read);
        }
    }
    if !group.index_waits.is_empty() {
        let applied = group.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            group.index_waits.drain(..).partition(|(needed, _)| *needed <= applied);
        group.index_waits = waiting;
        for (_, read) in ready {
            serve_read(transport, &group.committed, read);
        }
    }
}

fn serve_read(transport: &Transport, state: &PartitionState, read: PendingRead) {
    let accounts = read.ids.iter().map(|&id| state.account(id)).collect();
    answer_lookup(transport, read.to, Ok(accounts));
}

fn answer_items(transport: &Transport, to: ItemsTo, outcome: Result<Vec<ItemResult>, EngineError>) {
    match to {
        ItemsTo::Local(part) => part.complete(outcome.inspect(|results| metrics::count_results(results))),
        ItemsTo::Remote { node, request_id, partition } => {
            let reply = match outcome.inspect(|results| metrics::count_results(results)) {
                Ok(results) => ForwardReply::Results(results),
                Err(error) => error_reply(&error),
            };
            transport.send(node, PeerItem::ForwardReply { request_id, partition, reply });
        }
    }
}

fn answer_lookup(transport: &Transport, to: LookupTo, outcome: Result<Vec<Option<Account>>, EngineError>) {
    match to {
        LookupTo::Local { slots, reply } => reply(outcome.map(|accounts| slots.into_iter().zip(accounts).collect())),
        LookupTo::Remote { node, request_id, partition } => {
            let reply = match outcome {
                Ok(accounts) => ForwardReply::Accounts(accounts),
                Err(error) => error_reply(&error),
            };
            transport.send(node, PeerItem::ForwardReply { request_id, partition, reply });
        }
    }
}

/// The answer a forwarding node gets for `error`; `NotLeader` names the leader this node knows of.
fn error_reply(error: &EngineError) -> ForwardReply {
    let (code, message) = error_code(error);
    let leader = match error {
        EngineError::NotLeader { leader: Some(leader), .. } => *leader,
        _ => 0,
    };
    ForwardReply::Error { code, leader, message }
}

/// The protocol error code and message an engine error is answered with.
pub fn error_code(error: &EngineError) -> (u16, String) {
    let code = match error {
        EngineError::NotLeader { .. } => ErrorCode::NotLeader,
        EngineError::ShuttingDown | EngineError::ShardFailed { .. } | EngineError::Unavailable(_) => {
            ErrorCode::Unavailable
        }
        EngineError::BatchTooLarge { .. } => ErrorCode::TooManyItems,
        // No protocol code says "gone": the message tells the reader that older history is in the
        // snapshot, not in the log.
        EngineError::HistoryCompacted { .. } => ErrorCode::Unavailable,
        EngineError::Remote { code, message, .. } => return (*code, message.clone()),
        _ => ErrorCode::Internal,
    };
    (code as u16, error.to_string())
}
