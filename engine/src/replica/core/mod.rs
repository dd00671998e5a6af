//! The sans-IO replica core: everything a replica shard decides, with no thread, clock, socket, file
//! write or log line of its own. The thread shell (`replica::shard`) and the whole-cluster simulator
//! (`tests/sim`) drive the same code.
//!
//! Inputs, each with the caller's clock (`Now`): peer items, client commands, Raft ticks, storage
//! completions ("Ready N of partition P is durable") and undeliverable sends. Outputs, drained with
//! [`ReplicaCore::take_outputs`] in the order they were decided: peer messages, log writes
//! ([`Persist`], to be made durable and then reported with [`ReplicaCore::persisted`]), answers to
//! clients, and log lines. The Raft seed and the first forwarded-request id are given at open.
//!
//! Storage is read through `raft::Storage` (the log, for rebuilding the speculative state and for
//! history) and written only three ways: the `Persist` outputs, which the caller writes (the shell
//! stages a round's writes of every group in its shard's one log and makes them durable with one
//! fdatasync, the simulator whenever its disk model decides); Raft's compaction (`create_snapshot`),
//! called from [`ReplicaCore::compacted`] once the caller has built and stored the image of a
//! [`Compaction`] output off the round; and the rejoin marker ([`ReplicaStorage::set_rejoin_marker`]), synchronous
//! because the rules it records must be durable before the replica acts on them.
//!
//! The seams, one module each: `group` (a partition's Raft group and its Ready handling, apply,
//! speculative state), `routing` (where a request goes: here, a leader elsewhere, parked; forwarded
//! replies), `reads` (the three consistency levels), `rejoin` (a replica rebuilt from nothing), and
//! `rebalance` (handing leadership back to the preferred node). Every answer to a client or to a
//! forwarding node leaves through [`Sink`], the one place where items and lookups are answered.

mod group;
mod reads;
mod rebalance;
mod rejoin;
mod routing;
mod snapshot_transfer;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use net::protocol::{Consistency, TransferLookup};
use net::types::{Account, CreateAccount, ItemResult, Transfer};
use raft::{Entry, HardState, MessageBody, Snapshot, StorageError};

use crate::cluster_config::{ClusterConfig, ReplicationConfig};
use crate::error::EngineError;
use crate::partition::PartitionConfig;
use crate::replica::snapshot::decode_partition_image;
use crate::replica::wire::{ForwardReply, PeerItem};

pub use group::initial_conf_state;
use group::Group;
pub(crate) use reads::Read;
pub use rejoin::RejoinMarker;
use rejoin::TermReport;
use routing::{Forwarded, Parked, Request, Trip};

/// The caller's clock, read once per input: monotonic milliseconds for every timeout, wall-clock
/// nanoseconds for event timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ns: u64,
}

/// What the core needs of a partition's durable store beyond Raft's `Storage`.
pub trait ReplicaStorage: raft::Storage {
    /// Index of the snapshot the log continues (0 when none).
    fn snapshot_index(&self) -> u64;
    /// The store asks for a compaction at the next chance, before `snapshot_interval_entries` is
    /// reached: this group's entries keep an old part of a shared log from being freed.
    fn compaction_wanted(&self) -> bool {
        false
    }
    fn rejoin_marker(&self) -> Result<Option<RejoinMarker>, EngineError>;
    /// Replaces (or with `None` removes) the rejoin marker; durable when it returns.
    fn set_rejoin_marker(&mut self, marker: Option<RejoinMarker>) -> Result<(), EngineError>;
}

/// What the caller's answer handles are: `Items` answers a batch of transfers or account creations,
/// `Lookup` a lookup (with accounts in the order of the ids asked), `Transfers` a transfer lookup of one
/// partition (with what became of each id, in the order asked).
pub trait Handles {
    type Items;
    type Lookup;
    type Transfers;
}

/// One Ready's writes, in the order they must reach the disk: snapshot, entries, hard state. Once
/// durable, the caller reports `persisted(partition, number)`; Readies complete in order.
#[derive(Debug)]
pub struct Persist {
    pub partition: u32,
    pub number: u64,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

/// A snapshot of one partition's committed state at `meta.index`, taken in the round (a copy of the
/// accounts and in-memory ids, and shared references to the immutable id runs: O(accounts + in-memory
/// ids)), to be encoded and written by the caller off the round: encoding walks every id of the window
/// and writing is one large file + fsync, which took seconds of the round when done in it (6.7 s for
/// 3.3 M ids, a one-node cluster under load). At most one per group is out at a time. Once the image
/// is durable in the group's store (`SharedLog::compaction_written` for the shard's log), the caller
/// hands the image back with [`ReplicaCore::compacted`] and Raft drops the log prefix it covers.
pub struct Compaction {
    pub partition: u32,
    pub meta: raft::SnapshotMeta,
    pub(crate) rows: crate::partition::PartitionRows,
}

impl Compaction {
    /// The image (the snapshot's `data`); the costly part, for the caller's thread.
    pub fn encode(&self) -> Vec<u8> {
        crate::replica::snapshot::encode_partition_image(self.partition, &self.rows)
    }
}

/// A snapshot received from a leader, whole, to be decoded and rebuilt into a partition state by the
/// caller off the round (decoding a 300-480 MB image and rebuilding its id index held a follower's
/// round for 3-11 s, BENCHMARKS §14). The caller hands the result back with
/// [`ReplicaCore::restored`]; only then does Raft see the snapshot. At most one per group is out.
pub struct Restore {
    pub partition: u32,
    meta: raft::SnapshotMeta,
    image: raft::SnapshotData,
    config: PartitionConfig,
}

impl Restore {
    /// The snapshot being restored (its image shared, not copied), for the caller to stage its file.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { meta: self.meta.clone(), data: self.image.clone() }
    }

    /// Decodes the image and rebuilds the partition state from it: the costly part, for the caller's
    /// thread.
    pub fn build(self) -> Restored {
        let Restore { partition, meta, image, config } = self;
        let outcome = decode_partition_image(&image)
            .map_err(|e| e.to_string())
            .and_then(|(image_partition, rows)| {
                if image_partition != partition {
                    return Err(format!("it holds partition {image_partition}"));
                }
                crate::partition::PartitionState::restore_rows(config, rows).map_err(|e| e.to_string())
            })
            .map(Box::new);
        Restored { partition, index: meta.index, outcome }
    }
}

impl std::fmt::Debug for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restore").field("partition", &self.partition).field("index", &self.meta.index).finish()
    }
}

/// What [`Restore::build`] made: the partition state, or why the image is not one.
pub struct Restored {
    pub partition: u32,
    index: u64,
    outcome: Result<Box<crate::partition::PartitionState>, String>,
}

impl Restored {
    /// The index of the snapshot whose state this is.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Whether the image was a valid state of the partition (otherwise Raft never sees it).
    pub fn is_valid(&self) -> bool {
        self.outcome.is_ok()
    }
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored").field("partition", &self.partition).field("index", &self.index).finish()
    }
}

impl std::fmt::Debug for Compaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compaction").field("partition", &self.partition).field("meta", &self.meta).finish()
    }
}

impl Persist {
    /// Writes everything this Ready asks, in order, synchronously.
    pub fn write_to<S: raft::Storage>(&self, storage: &mut S) -> Result<(), StorageError> {
        if let Some(snapshot) = &self.snapshot {
            storage.apply_snapshot(snapshot.clone())?;
        }
        if !self.entries.is_empty() {
            storage.append(&self.entries)?;
        }
        if let Some(hard_state) = self.hard_state {
            storage.set_hard_state(hard_state)?;
        }
        Ok(())
    }
}

pub enum Output<H: Handles> {
    /// A peer item for node `to`. If it cannot be queued, report it with `undeliverable`.
    Send {
        to: u64,
        item: PeerItem,
    },
    Persist(Persist),
    Items {
        to: H::Items,
        outcome: Result<Vec<ItemResult>, EngineError>,
    },
    Lookup {
        to: H::Lookup,
        outcome: Result<Vec<Option<Account>>, EngineError>,
    },
    /// One per id asked: `None` when this partition holds no decision for it (never decided here, or
    /// older than the window); never `TransferLookup::NotFound`.
    Transfers {
        to: H::Transfers,
        outcome: Result<Vec<Option<TransferLookup>>, EngineError>,
    },
    /// A compaction to build and make durable off the round (see [`Compaction`]); the caller reports
    /// it with [`ReplicaCore::compacted`].
    Compact(Compaction),
    /// A received snapshot to decode off the round (see [`Restore`]); the caller hands the result
    /// back with [`ReplicaCore::restored`].
    Restore(Restore),
    /// A line for the operator's log, at `level` (the shell hands it to the logger, which adds the time).
    Log {
        level: log::Level,
        line: String,
    },
}

/// Client commands the core serves (status and history are queries: [`ReplicaCore::status`],
/// [`ReplicaCore::history`]). `LookupTransfers` asks what became of each transfer id in `partition`,
/// always linearizably (the leader's committed state after a ReadIndex round), like a linearizable
/// account lookup.
pub enum Command<H: Handles> {
    Transfers { partition: u32, items: Vec<Transfer>, to: H::Items },
    CreateAccounts { partition: u32, items: Vec<CreateAccount>, to: H::Items },
    Lookup { partition: u32, consistency: Consistency, ids: Vec<u64>, to: H::Lookup },
    LookupTransfers { partition: u32, ids: Vec<u128>, to: H::Transfers },
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

/// Deliberate bugs, for proving that the simulator catches them. Every switch is off in every build
/// the node uses; only the simulator's tests turn one on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Answer a leader's items when they are proposed instead of when their entry is applied.
    pub answer_before_commit: bool,
    /// Serve an `at_least(seq)` read at once from whatever this replica has applied.
    pub at_least_without_waiting: bool,
    /// Serve a linearizable read from the leader's committed state without a ReadIndex round.
    pub linearizable_without_read_index: bool,
    /// Keep the speculative state when leadership is lost (and decide against it if it comes back).
    pub keep_speculative_after_losing_leadership: bool,
    /// Leave a forwarded request with the node it went to when this node learns of a new leader (it
    /// then waits out `forward_timeout_ms` if that node died or was cut off).
    pub no_reroute_on_leader_change: bool,
}

/// Everything a core is opened with besides its groups.
#[derive(Clone, Debug)]
pub struct CoreOptions {
    /// The shard number (in `ShardFailed` errors).
    pub shard: u32,
    pub node_id: u64,
    pub cluster: ClusterConfig,
    /// Ids of forwarded requests start here, above any id an earlier run of this node used, so a late
    /// reply to a request sent before a restart never matches a new one (the shell passes the boot's
    /// wall clock in nanoseconds).
    pub first_request_id: u64,
    /// Every applied entry is also kept for [`ReplicaCore::take_applied`] (the simulator's auditor).
    pub record_applied: bool,
    /// Where the partitions' sealed id runs are built: `Deferred` by the shell's builder thread (it takes
    /// them with [`ReplicaCore::tend_id_runs`] after every round), `Memory` at the seal (the simulator).
    pub id_runs: crate::idempotency::RunHome,
    pub planted: PlantedBugs,
}

/// One partition to open: its store, state-machine settings, whether this node lost its data, and
/// the seed of its Raft randomness.
pub struct GroupInit<S> {
    pub partition: u32,
    pub storage: S,
    pub config: PartitionConfig,
    pub rejoin: bool,
    pub raft_seed: u64,
}

/// Where every answer goes: the one place items and lookups are answered, locally or to the node
/// that forwarded them.
pub(crate) struct Sink<H: Handles> {
    outputs: Vec<Output<H>>,
    planted: PlantedBugs,
}

impl<H: Handles> Sink<H> {
    fn send(&mut self, to: u64, item: PeerItem) {
        self.outputs.push(Output::Send { to, item });
    }

    fn log(&mut self, level: log::Level, line: String) {
        self.outputs.push(Output::Log { level, line });
    }

    /// Items decided (or refused) here. Their results count once, at the node that decided them.
    fn items(&mut self, to: ItemsTo<H>, outcome: Result<Vec<ItemResult>, EngineError>) {
        if let Ok(results) = &outcome {
            crate::metrics::count_results(results);
        }
        match to {
            ItemsTo::Local(to) => self.outputs.push(Output::Items { to, outcome }),
            ItemsTo::Remote { node, request_id, partition } => {
                let reply = match outcome {
                    Ok(results) => ForwardReply::Results(results),
                    Err(error) => error_reply(&error),
                };
                self.send(node, PeerItem::ForwardReply { request_id, partition, reply });
            }
        }
    }

    /// Results another node decided, relayed to this node's client: counted there, not again here.
    fn relay_items(&mut self, to: H::Items, results: Vec<ItemResult>) {
        self.outputs.push(Output::Items { to, outcome: Ok(results) });
    }

    fn lookup(&mut self, to: LookupTo<H>, outcome: Result<Vec<Option<Account>>, EngineError>) {
        match to {
            AnswerTo::Local(to) => self.outputs.push(Output::Lookup { to, outcome }),
            AnswerTo::Remote { node, request_id, partition } => {
                let reply = outcome.map_or_else(|error| error_reply(&error), ForwardReply::Accounts);
                self.send(node, PeerItem::ForwardReply { request_id, partition, reply });
            }
        }
    }

    fn transfers(&mut self, to: TransfersTo<H>, outcome: Result<Vec<Option<TransferLookup>>, EngineError>) {
        match to {
            AnswerTo::Local(to) => self.outputs.push(Output::Transfers { to, outcome }),
            AnswerTo::Remote { node, request_id, partition } => {
                let reply = outcome.map_or_else(|error| error_reply(&error), ForwardReply::Transfers);
                self.send(node, PeerItem::ForwardReply { request_id, partition, reply });
            }
        }
    }
}

/// Where the answer for a batch of items goes.
pub(crate) enum ItemsTo<H: Handles> {
    Local(H::Items),
    Remote { node: u64, request_id: u64, partition: u32 },
}

/// Where a read's answer goes: this node's client (`T` is the caller's handle), or the node that
/// forwarded the read.
pub(crate) enum AnswerTo<T> {
    Local(T),
    Remote { node: u64, request_id: u64, partition: u32 },
}

/// Where the answer for an account lookup goes.
pub(crate) type LookupTo<H> = AnswerTo<<H as Handles>::Lookup>;
/// Where the answer for a transfer lookup goes.
pub(crate) type TransfersTo<H> = AnswerTo<<H as Handles>::Transfers>;

pub struct ReplicaCore<S: ReplicaStorage, H: Handles> {
    shard: u32,
    node_id: u64,
    replication: ReplicationConfig,
    cluster: ClusterConfig,
    groups: Vec<Group<S, H>>,
    /// Partition -> position in `groups`.
    group_of: HashMap<u32, usize>,
    /// Ordered maps wherever the core iterates, so a run is a function of its inputs alone (the
    /// simulator replays a seed exactly).
    forwarded: BTreeMap<u64, Forwarded<H>>,
    parked: Vec<Parked<H>>,
    /// Where to send requests for partitions this node holds no replica of: the last leader a
    /// `NotLeader` answer named, else the preferred leader.
    remote_leaders: HashMap<u32, u64>,
    next_request_id: u64,
    next_read_context: u64,
    failed: Option<String>,
    sink: Sink<H>,
    record_applied: bool,
    applied: Vec<(u32, Entry)>,
}

impl<S: ReplicaStorage, H: Handles> ReplicaCore<S, H> {
    /// Opens the groups, restoring each from its store's snapshot; Raft then re-applies the committed
    /// log after it. A group that starts empty with `rejoin` (this node lost its data) first asks every
    /// other replica for its term and commit index.
    pub fn open(options: CoreOptions, groups: Vec<GroupInit<S>>, now: Now) -> Result<Self, EngineError> {
        let mut opened = Vec::new();
        let mut group_of = HashMap::new();
        for init in groups {
            let partition = init.partition;
            let group = Group::open(options.node_id, &options.cluster, init, options.id_runs.clone(), now)?;
            assert!(group_of.insert(partition, opened.len()).is_none(), "partition {partition} opened twice");
            opened.push(group);
        }
        let mut core = ReplicaCore {
            shard: options.shard,
            node_id: options.node_id,
            replication: options.cluster.replication.clone(),
            cluster: options.cluster,
            groups: opened,
            group_of,
            forwarded: BTreeMap::new(),
            parked: Vec::new(),
            remote_leaders: HashMap::new(),
            next_request_id: options.first_request_id.max(1),
            next_read_context: 1,
            failed: None,
            sink: Sink { outputs: Vec::new(), planted: options.planted },
            record_applied: options.record_applied,
            applied: Vec::new(),
        };
        // A brand-new cluster: each preferred leader stands at once instead of waiting for a timeout.
        for group in &mut core.groups {
            if group.preferred_leader == core.node_id && group.raw.status().term == 0 && group.recovery.is_none() {
                group.raw.campaign();
            }
        }
        core.drive_all();
        Ok(core)
    }

    /// Everything decided since the last call, in order.
    pub fn take_outputs(&mut self) -> Vec<Output<H>> {
        std::mem::take(&mut self.sink.outputs)
    }

    /// Entries applied since the last call (only with `record_applied`).
    pub fn take_applied(&mut self) -> Vec<(u32, Entry)> {
        std::mem::take(&mut self.applied)
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.iter().map(|g| g.partition)
    }

    /// The store of `partition`, to write a `Persist` into.
    pub fn storage_mut(&mut self, partition: u32) -> Option<&mut S> {
        let slot = *self.group_of.get(&partition)?;
        Some(self.groups[slot].raw.storage_mut())
    }

    /// Gives the stores back (a crash in the simulator).
    pub fn into_storages(self) -> Vec<(u32, S)> {
        self.groups.into_iter().map(|g| (g.partition, g.raw.into_storage())).collect()
    }

    /// The committed state of `partition` (what followers serve reads from).
    pub fn committed_state(&self, partition: u32) -> Option<&crate::partition::PartitionState> {
        let slot = *self.group_of.get(&partition)?;
        Some(self.groups[slot].committed())
    }

    /// The index of the last entry applied to the committed state of `partition`.
    pub fn applied_index(&self, partition: u32) -> Option<u64> {
        let slot = *self.group_of.get(&partition)?;
        Some(self.groups[slot].applied_index)
    }

    /// True while some group of this core, rebuilt on a node that lost its data, waits for the other
    /// replicas' reports or withholds its votes.
    pub fn rejoin_pending(&self) -> bool {
        self.groups.iter().any(|g| g.recovery.is_some() || g.withheld.is_some())
    }

    /// Asks this node's leader of `partition` to hand leadership to `to` (operator tooling, and the
    /// simulator's leadership transfers). False when this node does not lead it or Raft refuses.
    pub fn transfer_leader(&mut self, partition: u32, to: u64) -> bool {
        let Some(&slot) = self.group_of.get(&partition) else { return false };
        if self.groups[slot].role != raft::Role::Leader {
            return false;
        }
        // Decided items are proposed first: once the transfer is under way Raft refuses proposals.
        self.propose(slot);
        self.groups[slot].raw.transfer_leader(to).is_ok()
    }

    /// Client commands should wait in their queue while a led partition has too much uncommitted.
    pub fn accepting_clients(&self) -> bool {
        let max = self.replication.uncommitted_entries_max;
        self.groups.iter().all(|g| g.speculative.is_none() || g.last_index.saturating_sub(g.commit_index) < max)
    }

    /// A client command; returns the number of items it carried.
    pub fn on_client(&mut self, now: Now, command: Command<H>) -> usize {
        let trip = Trip { deadline_ms: now.mono_ms + self.replication.forward_timeout_ms, hops: 0 };
        match command {
            Command::Transfers { partition, items, to } => {
                let n = items.len();
                self.route(now, partition, Request::Items { batch: Batch::Transfers(items), to }, trip);
                n
            }
            Command::CreateAccounts { partition, items, to } => {
                let n = items.len();
                self.route(now, partition, Request::Items { batch: Batch::Accounts(items), to }, trip);
                n
            }
            Command::Lookup { partition, consistency, ids, to } => {
                let n = ids.len();
                match self.group_of.get(&partition).copied() {
                    // Any replica serves these from its own committed state.
                    Some(slot) if consistency != Consistency::Linearizable && self.failed.is_none() => {
                        self.read(now, slot, consistency, Read::Accounts { ids, to: AnswerTo::Local(to) })
                    }
                    _ => self.route(now, partition, Request::Lookup { consistency, ids, to }, trip),
                }
                n
            }
            Command::LookupTransfers { partition, ids, to } => {
                let n = ids.len();
                self.route(now, partition, Request::TransferLookup { ids, to }, trip);
                n
            }
        }
    }

    /// One Raft tick of every group (the shell decides when one is due), then rebalancing and rejoin
    /// probes.
    pub fn tick(&mut self, now: Now) {
        for group in self.groups.iter_mut().filter(|g| g.recovery.is_none()) {
            group.raw.tick();
            group.transfers.tick(group.transfer_idle_ticks_max);
        }
        self.rebalance(now);
        self.probe_for_recovery(now);
    }

    /// Proposes every led partition's events collected so far (the end of taking client commands).
    pub fn propose_all(&mut self) {
        for slot in 0..self.groups.len() {
            self.propose(slot);
        }
    }

    /// The rest of a round: drive every group's Ready, take back forwarded requests whose leader
    /// moved, send parked requests on, propose what that decided, and time out what waited too long.
    pub fn end_round(&mut self, now: Now) {
        self.drive_all();
        self.reroute_on_leader_change(now);
        self.retry_parked(now);
        self.propose_all();
        self.expire_waits(now);
    }

    /// Hands every id run the groups' states sealed since the last call to `submit` (the shell's builder
    /// thread, with `CoreOptions::id_runs` = `Deferred`), and lets the built ones leave the rings.
    pub fn tend_id_runs(&mut self, mut submit: impl FnMut(std::sync::Arc<crate::id_index::ColdRun>)) {
        for group in &mut self.groups {
            group.committed.tend_id_runs(&mut submit);
            if let Some(speculative) = group.speculative.as_mut() {
                speculative.tend_id_runs(&mut submit);
            }
        }
    }

    /// Ready `number` of `partition` (and every earlier one) is durable.
    pub fn persisted(&mut self, partition: u32, number: u64) {
        let Some(&slot) = self.group_of.get(&partition) else {
            panic!("persisted() for partition {partition}, which this core does not hold");
        };
        if self.failed.is_some() {
            return;
        }
        self.groups[slot].raw.on_persisted(number);
        self.drive_slot(slot);
    }

    /// The image of `partition`'s [`Compaction`] at `index` is durable in its store: Raft drops the log
    /// prefix it covers (nothing, if a snapshot installed since covers more). A received snapshot whose
    /// state was rebuilt while this compaction was out is installed now (see [`ReplicaCore::restored`]).
    pub fn compacted(&mut self, now: Now, partition: u32, index: u64, data: raft::SnapshotData) {
        let Some(&slot) = self.group_of.get(&partition) else {
            panic!("compacted() for partition {partition}, which this core does not hold");
        };
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.groups[slot].finish_compaction(index, data) {
            return self.fail(format!("partition {partition}: {error}"));
        }
        if self.groups[slot].restored.is_some() {
            self.install_restored(now, slot);
        }
    }

    /// The state of a received snapshot is rebuilt (see [`Restore`]): Raft now sees the snapshot and,
    /// unless it is stale by now, installs it in this call, or, if the group's compaction is still
    /// out, once that is reported: the compaction's image file must be in place before the install's,
    /// never over it, and the round must not wait for the snapshot thread. (No compaction starts while
    /// a restore is out, so that wait is for one compaction at most.) An image that is not a valid
    /// state of the partition changes nothing: it is refused with a log line (the leader sends a
    /// snapshot again).
    pub fn restored(&mut self, now: Now, restored: Restored) {
        let Some(&slot) = self.group_of.get(&restored.partition) else {
            panic!("restored() for partition {}, which this core does not hold", restored.partition);
        };
        if self.failed.is_some() {
            return;
        }
        let group = &mut self.groups[slot];
        let message = group.restoring.as_ref().expect("a restore reported that was not handed out");
        let MessageBody::Snapshot { snapshot } = &message.body else { unreachable!("restores hold snapshots") };
        assert_eq!(
            snapshot.meta.index, restored.index,
            "partition {}: the restore of another snapshot",
            group.partition
        );
        assert!(group.restored.is_none(), "partition {}: a second rebuilt state", group.partition);
        match restored.outcome {
            Ok(state) => {
                group.restored = Some((restored.index, *state));
                if group.compacting.is_none() {
                    self.install_restored(now, slot);
                }
            }
            Err(error) => {
                let from = message.from;
                group.restoring = None;
                self.sink.log(
                    log::Level::Error,
                    format!(
                        "node {}: partition {}: refusing node {from}'s snapshot at index {}: {error}",
                        self.node_id, restored.partition, restored.index
                    ),
                );
                self.groups[slot].begin_next_restore(&mut self.sink);
            }
        }
    }

    /// Steps the restoring snapshot, whose state is rebuilt, into Raft and drives the group: its Ready
    /// installs the state, or Raft finds the snapshot stale by now and the state is dropped.
    fn install_restored(&mut self, now: Now, slot: usize) {
        let group = &mut self.groups[slot];
        assert!(group.compacting.is_none(), "partition {}: an install beside a compaction", group.partition);
        let message = group.restoring.take().expect("a rebuilt state belongs to a restore");
        group.step(now, message);
        self.drive_slot(slot);
        let group = &mut self.groups[slot];
        group.restored = None;
        group.begin_next_restore(&mut self.sink);
    }

    /// A write the caller could not make durable: the shard stops (fail-stop), since its memory may
    /// now hold effects its log lacks.
    pub fn storage_failed(&mut self, partition: u32, error: impl std::fmt::Display) {
        self.fail(format!("partition {partition}: {error}"));
    }

    /// The shard's log failed (a write, fdatasync or purge): the shard stops (fail-stop), since the
    /// durability of everything staged is unknown.
    pub fn log_failed(&mut self, error: impl std::fmt::Display) {
        self.fail(format!("shard log: {error}"));
    }

    /// The forwarded request `request_id` did not reach `to`: the caller could not queue it (the link
    /// is down, or `to` is unknown), or the transport dropped it unsent when the connection was down or
    /// failed. It is routed again, never left to time out. Other undeliverable items need
    /// no report: Raft resends, and a forwarded reply lost with its connection is covered by
    /// [`ReplicaCore::peer_unreachable`] at the node that waits for it.
    pub fn forward_undeliverable(&mut self, now: Now, to: u64, request_id: u64) {
        if let Some(forwarded) = self.forwarded.get(&request_id) {
            assert_eq!(forwarded.to, to, "a forwarded request is recorded with the node it went to");
            self.take_back(now, request_id);
        }
    }

    /// The forwarded request `request_id` could not be queued for `to` because its queue is full: the
    /// link is up but behind, so the client gets a retryable `Unavailable` at once rather than have
    /// the request wait in line (and `to` stays where requests go).
    pub fn forward_busy(&mut self, to: u64, request_id: u64) {
        if let Some(forwarded) = self.forwarded.remove(&request_id) {
            assert_eq!(forwarded.to, to, "a forwarded request is recorded with the node it went to");
            crate::metrics::count_forward(crate::metrics::ForwardOutcome::NotQueued);
            let error = EngineError::Unavailable(format!("the queue for node {to} is full"));
            forwarded.request.fail(&mut self.sink, error);
        }
    }

    /// The connection to `peer` ended (or could not be made): every request forwarded to it may have
    /// been lost, or its reply may be, so each is routed again (same ids: the outcome, if `peer`
    /// decided one, is returned by whoever decides the retry).
    pub fn peer_unreachable(&mut self, now: Now, peer: u64) {
        let lost: Vec<u64> = self.forwarded.iter().filter(|(_, f)| f.to == peer).map(|(&id, _)| id).collect();
        for request_id in lost {
            self.take_back(now, request_id);
        }
    }

    /// A peer item from node `from` (the connection names the sender).
    pub fn on_peer(&mut self, now: Now, from: u64, item: PeerItem) {
        match item {
            PeerItem::Raft { partition, message } => {
                let Some(&slot) = self.group_of.get(&partition) else { return };
                self.groups[slot].step(now, message);
            }
            // An item claiming another sender is dropped.
            PeerItem::Forward { request_id, from_node, partition, request } if from_node == from => {
                self.on_forward(now, request_id, from, partition, request);
            }
            PeerItem::Forward { .. } => {}
            PeerItem::ForwardReply { request_id, reply, .. } => self.on_forward_reply(now, from, request_id, reply),
            PeerItem::TermProbe { partition } => self.on_term_probe(from, partition),
            PeerItem::TermReport { partition, term, commit, last_index, leads } => {
                self.on_term_report(from, partition, TermReport { term, commit, last_index, leads })
            }
            PeerItem::SnapshotChunk { partition, chunk } => {
                let Some(&slot) = self.group_of.get(&partition) else { return };
                let group = &mut self.groups[slot];
                // A recovering replica takes no part in Raft (see `Group::step`), and Raft would drop the
                // snapshot of a leader of an older term than this replica knows: neither is assembled.
                if group.recovery.is_some() || chunk.term < group.term {
                    return;
                }
                let to = (self.node_id, from);
                if let Some(message) = group.transfers.on_chunk(partition, to, chunk, &self.replication, &mut self.sink)
                {
                    group.begin_restore(message, &mut self.sink);
                }
            }
            PeerItem::SnapshotAck { partition, term, index, received } => {
                let Some(&slot) = self.group_of.get(&partition) else { return };
                let ack = (term, index, received);
                self.groups[slot].transfers.on_ack(partition, from, ack, &self.replication, &mut self.sink);
            }
        }
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups.iter().map(|g| g.status(self.failed.clone())).collect()
    }

    /// A page of history from this replica's committed state, walked through the events in its log.
    pub fn history(
        &self,
        partition: u32,
        account_id: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<crate::history::HistoryPage, EngineError> {
        if let Some(reason) = &self.failed {
            return Err(EngineError::ShardFailed { shard: self.shard, reason: reason.clone() });
        }
        let Some(&slot) = self.group_of.get(&partition) else {
            let leader = Some(self.cluster.preferred_leader(partition));
            return Err(EngineError::NotLeader { partition, leader, term: 0 });
        };
        self.groups[slot].history(account_id, from_seq, limit)
    }

    /// Answers everything still waiting with `ShuttingDown`: owed batches, queued reads, forwarded and
    /// parked requests. A batch whose entry commits later is still in the log; a retry with the same
    /// ids returns its outcome.
    pub fn close(&mut self) {
        self.propose_all();
        self.drive_all();
        let error = EngineError::ShuttingDown;
        for group in &mut self.groups {
            group.fail_everything_waiting(&mut self.sink, &error);
        }
        self.take_handed_back();
        for (_, forwarded) in std::mem::take(&mut self.forwarded) {
            forwarded.request.fail(&mut self.sink, error.clone());
        }
        for parked in self.parked.drain(..) {
            parked.request.fail(&mut self.sink, error.clone());
        }
    }

    fn drive_all(&mut self) {
        for slot in 0..self.groups.len() {
            self.drive_slot(slot);
        }
    }

    fn drive_slot(&mut self, slot: usize) {
        if self.failed.is_some() {
            return;
        }
        let applied = self.record_applied.then_some(&mut self.applied);
        if let Err(error) = self.groups[slot].drive(self.node_id, &self.replication, &mut self.sink, applied) {
            let reason = format!("partition {}: {error}", self.groups[slot].partition);
            return self.fail(reason);
        }
        if let Err(reason) = self.groups[slot].observe_role(self.node_id, &mut self.sink) {
            self.fail(reason);
        }
    }

    /// Leader path: validate against the speculative state and collect the events of this round.
    fn execute(&mut self, now: Now, slot: usize, batch: Batch, to: ItemsTo<H>, trip: Option<Trip>) {
        if self.groups[slot].buffer.event_count() as usize + batch.len() > crate::shard::RECORD_EVENTS_MAX {
            self.propose(slot);
        }
        self.groups[slot].execute(now, batch, to, trip, &mut self.sink);
    }

    fn propose(&mut self, slot: usize) {
        self.groups[slot].propose(&mut self.sink);
    }

    fn fail(&mut self, reason: String) {
        if self.failed.is_some() {
            return;
        }
        self.sink.log(
            log::Level::Error,
            format!(
                "node {} shard {}: FAILED, refusing all commands until restart: {reason}",
                self.node_id, self.shard
            ),
        );
        self.failed = Some(reason.clone());
        let error = EngineError::ShardFailed { shard: self.shard, reason };
        for group in &mut self.groups {
            group.speculative = None;
            group.fail_everything_waiting(&mut self.sink, &error);
        }
    }

    fn failed_error(&self) -> Option<EngineError> {
        self.failed.as_ref().map(|reason| EngineError::ShardFailed { shard: self.shard, reason: reason.clone() })
    }
}

#[derive(Clone)]
pub(crate) enum Batch {
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

/// The answer a forwarding node gets for `error`; `NotLeader` names the leader this node knows of, and
/// the term in which it knows it.
fn error_reply(error: &EngineError) -> ForwardReply {
    let (code, message) = error.protocol_error();
    let code = code as u16;
    let (leader, term) = match error {
        EngineError::NotLeader { leader, term, .. } => (leader.unwrap_or(0), *term),
        _ => (0, 0),
    };
    ForwardReply::Error { code, leader, term, message }
}
