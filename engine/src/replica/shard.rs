//! A replica shard: the thread shell around the sans-IO replica core (`replica::core`). The core
//! decides everything; the shell owns what touches the world: the client and peer channels, the clock
//! (it reads it once per input and decides when a Raft tick is due), the transport, the shard's one
//! log for all its groups (`replica::shared_log`: it stages every `Persist` the core hands out, makes a
//! round's writes durable with one write + one fdatasync, and reports them durable), and the log lines
//! (the core's log lines go to the `log` facade at the level the core gave them).
//!
//! One round of the loop:
//! 1. report every staged write that became durable (`persisted`, which releases what waited on it:
//!    acknowledgements, applies, answers);
//! 2. step every peer item that arrived (Raft messages, forwarded requests and their replies);
//! 3. unless some led partition already has `uncommitted_entries_max` entries in flight, take client
//!    commands (up to `round_items_max` items): the core decides them against a led partition's
//!    speculative state, forwards them to another node's leader, or parks them while there is none;
//! 4. propose each led partition's events as one log entry, tick Raft when due, and let the core drive
//!    every group's Ready;
//! 5. carry out the core's outputs in order: messages to the transport (so AppendEntries leave before
//!    the local write), writes staged in the shard's log, answers to the clients, log lines; then submit
//!    everything staged as one batch (one write + one fdatasync through io_uring) unless a batch is in
//!    flight, in which case it goes as the next batch.
//!
//! The shard never blocks on a sync while it has other work: it waits on its channels and on a token
//! that a small waker thread sends when the log's io_uring completion eventfd fires. Nothing is
//! answered as done before its entry is committed and applied. A storage failure stops the shard
//! (fail-stop), like the single-node shard.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Select};
use net::protocol::{Consistency, TransferLookup};
use net::types::{Account, CreateAccount, Transfer};
use wal::WalOptions;

use crate::cluster_config::{ClusterConfig, ReplicationConfig};
use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::id_index::RunBuilder;
use crate::idempotency::RunHome;
use crate::join::BatchPart;
use crate::metrics::{self, Stage};
use crate::replica::compactor::{Compactor, Report};
pub use crate::replica::core::GroupStatus;
use crate::replica::core::{
    initial_conf_state, Command, CoreOptions, GroupInit, Handles, Now, Output, PlantedBugs, ReplicaCore,
};
use crate::replica::shared_log::{self, lock, GroupStore, SharedLog, SharedLogHandle};
use crate::replica::transport::{PeerInput, Refused, Transport};
use crate::replica::wire::PeerItem;
use crate::shard::{clock_ns, partition_config, DoneReply, RECORD_PAYLOAD_BYTES_MAX};
use crate::slow_round::SlowRounds;

/// Lookup answers: (slot in the caller's result, account if found).
pub type LookupReply = Box<dyn FnOnce(Result<Vec<(u32, Option<Account>)>, EngineError>) + Send>;
pub type StatusReply = Box<dyn FnOnce(Vec<GroupStatus>) + Send>;
pub type HistoryReply = Box<dyn FnOnce(Result<crate::history::HistoryPage, EngineError>) + Send>;
/// Transfer lookup answers of one partition: per id asked, in order, what the partition decided
/// (`None`: nothing within the window).
pub type TransfersReply = Box<dyn FnOnce(Result<Vec<Option<TransferLookup>>, EngineError>) + Send>;

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
    /// What became of each transfer id in `partition` (served linearizably by its leader).
    LookupTransfers {
        partition: u32,
        ids: Vec<u128>,
        reply: TransfersReply,
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

/// Log options of a replica shard's log: a record is a partition, Raft index and term, an entry kind
/// byte and an event batch.
pub fn replica_wal_options(config: &NodeConfig) -> WalOptions {
    WalOptions {
        segment_bytes: config.wal_segment_bytes,
        payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX + 64,
        ..WalOptions::default()
    }
}

/// The shell's answer handles: a batch part, or a lookup's slots in the caller's result and its reply.
pub struct ShellHandles;

impl Handles for ShellHandles {
    type Items = BatchPart;
    type Lookup = (Vec<u32>, LookupReply);
    type Transfers = TransfersReply;
}

/// A `Persist` staged in the log, reported once the record at `position` is durable.
struct Staged {
    partition: u32,
    number: u64,
    position: u64,
    /// For the `log_sync` stage: staging to durable.
    staged_at: Instant,
}

pub struct ReplicaShard {
    /// This shard's number on its node (the `shard` label of its metrics).
    id: u32,
    core: ReplicaCore<GroupStore, ShellHandles>,
    log: SharedLogHandle,
    /// Staged writes not yet durable, in log order.
    staged: VecDeque<Staged>,
    waker: SyncWaker,
    replication: ReplicationConfig,
    round_items_max: usize,
    transport: Arc<Transport>,
    /// The monotonic clock's origin: the core sees milliseconds since it.
    started: Instant,
    last_tick: Instant,
    /// Rate limit of the slow-round log line.
    slow_rounds: SlowRounds,
    /// Builds the partitions' sealed id runs (in memory) off the round: a 65,536-id run took 20-100 ms
    /// of a round when built at the seal.
    id_runs: RunBuilder,
    /// Builds and writes the groups' compaction images off the round.
    compactor: Compactor,
}

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
        let dir = shared_log::shard_dir(&config.data_dir, id);
        let in_shard = |e: &dyn std::fmt::Display| EngineError::Log(format!("shard {id}: {e}"));
        let (mut log, report) = SharedLog::open(&dir, replica_wal_options(config)).map_err(|e| in_shard(&e))?;
        if report.truncated_bytes > 0 {
            log::warn!(
                "node {node_id} shard {id}: cut a torn tail of {} bytes from {:?}",
                report.truncated_bytes,
                report.truncated_segment
            );
        }
        for partition in &report.installs_completed {
            log::info!(
                "node {node_id} shard {id}: partition {partition}: completed a snapshot install a crash interrupted"
            );
        }
        for &partition in partitions {
            log.bootstrap(partition, initial_conf_state(cluster, partition)).map_err(|e| in_shard(&e))?;
        }
        let waker = SyncWaker::start(&log, id)?;
        let compactor = Compactor::start(id, dir.clone(), partitions.len())?;
        let log: SharedLogHandle = Arc::new(Mutex::new(log));
        let mut groups = Vec::new();
        for &partition in partitions {
            let storage = GroupStore::new(log.clone(), partition).map_err(|e| in_shard(&e))?;
            let raft_seed = node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ partition as u64 ^ clock_ns();
            let config = partition_config(config, partition);
            groups.push(GroupInit { partition, storage, config, rejoin, raft_seed });
        }
        let started = Instant::now();
        let options = CoreOptions {
            shard: id,
            node_id,
            cluster: cluster.clone(),
            first_request_id: clock_ns(),
            record_applied: false,
            id_runs: RunHome::Deferred,
            planted: PlantedBugs::default(),
        };
        let core = ReplicaCore::open(options, groups, Now { mono_ms: 0, wall_ns: clock_ns() })?;
        Ok(ReplicaShard {
            id,
            core,
            log,
            staged: VecDeque::new(),
            waker,
            replication: cluster.replication.clone(),
            round_items_max: config.round_items_max,
            transport,
            started,
            last_tick: started,
            slow_rounds: SlowRounds::default(),
            id_runs: RunBuilder::start(format!("replica-{id}-ids")),
            compactor,
        })
    }

    fn now(&self) -> Now {
        Now { mono_ms: self.started.elapsed().as_millis() as u64, wall_ns: clock_ns() }
    }

    /// Runs the shard until shutdown. `peers` carries `(peer node, input)` from the transport: items
    /// that peer sent, and reports of forwarded requests that never reached it or of its link going
    /// down (the core routes those requests again).
    pub fn run(mut self, peers: Receiver<(u64, PeerInput)>, clients: Receiver<ClientCommand>) {
        let tick = Duration::from_millis(self.replication.tick_interval_ms);
        self.carry_out();
        self.submit();
        let client_depth = metrics::queue_depth_gauge(self.id, "client");
        let peer_depth = metrics::queue_depth_gauge(self.id, "peer");
        loop {
            let accepting = self.core.accepting_clients();
            let syncing = !self.staged.is_empty();
            let wait = tick.saturating_sub(self.last_tick.elapsed());
            let mut select = Select::new();
            let peer_index = select.recv(&peers);
            let client_index = accepting.then(|| select.recv(&clients));
            let sync_index = syncing.then(|| select.recv(&self.waker.tokens));
            let compacted_index = self.compactor.replies().map(|replies| select.recv(replies));
            // Which queue woke us does not matter: all are drained below.
            let _ = (peer_index, client_index, sync_index, compacted_index, select.ready_timeout(wait));
            while self.waker.tokens.try_recv().is_ok() {}
            let round_started = Instant::now();
            let compacted = self.finish_compactions();
            if self.complete_durable() || compacted {
                self.carry_out();
            }
            let reported = Instant::now();
            client_depth.set(clients.len() as i64);
            peer_depth.set(peers.len() as i64);
            // Peers first and entirely: they are what lets the cluster make progress.
            let now = self.now();
            while let Ok((from, input)) = peers.try_recv() {
                match input {
                    PeerInput::Item(item) => self.core.on_peer(now, from, item),
                    PeerInput::NotDelivered { request_id, .. } => {
                        self.core.forward_undeliverable(now, from, request_id)
                    }
                    PeerInput::LinkDown => self.core.peer_unreachable(now, from),
                }
            }
            let stepped = Instant::now();
            let mut shutdown = None;
            let mut items = 0usize;
            if self.core.accepting_clients() {
                let now = self.now();
                while items < self.round_items_max {
                    match clients.try_recv() {
                        Ok(ClientCommand::Shutdown { reply }) => {
                            shutdown = Some(reply);
                            break;
                        }
                        Ok(command) => items += self.on_client(now, command),
                        Err(crossbeam_channel::TryRecvError::Empty) => break,
                        Err(crossbeam_channel::TryRecvError::Disconnected) => return self.close(None),
                    }
                }
            }
            let taken = Instant::now();
            self.core.propose_all();
            self.tick_if_due(tick);
            self.core.end_round(self.now());
            let builder = &self.id_runs;
            self.core.tend_id_runs(|run| builder.submit(run));
            let driven = Instant::now();
            self.carry_out();
            self.submit();
            let ended = Instant::now();
            metrics::observe_round(ended - round_started);
            let phases = [
                ("taking durable writes and snapshot-thread reports (applying, installing)", reported),
                ("stepping peer messages", stepped),
                ("taking client commands", taken),
                ("driving the groups (Raft, apply, compaction)", driven),
                ("sending and staging the log", ended),
            ];
            self.slow_rounds.report(round_started, &phases, || {
                let detail =
                    format!("{items} client items, {} client and {} peer inputs queued", clients.len(), peers.len());
                (format!("replica shard {}", self.id), detail)
            });
            if let Some(reply) = shutdown {
                return self.close(Some(reply));
            }
        }
    }

    /// Returns the number of items the command carried.
    fn on_client(&mut self, now: Now, command: ClientCommand) -> usize {
        let command = match command {
            ClientCommand::Status { reply } => {
                reply(self.core.status());
                return 0;
            }
            ClientCommand::History { partition, account_id, from_seq, limit, reply } => {
                reply(self.core.history(partition, account_id, from_seq, limit));
                return 1;
            }
            ClientCommand::Shutdown { .. } => unreachable!("handled by the loop"),
            ClientCommand::Transfers { partition, items, part } => {
                metrics::observe_stage(Stage::QueueWait, part.accepted_at().elapsed());
                Command::Transfers { partition, items, to: part }
            }
            ClientCommand::CreateAccounts { partition, items, part } => {
                metrics::observe_stage(Stage::QueueWait, part.accepted_at().elapsed());
                Command::CreateAccounts { partition, items, to: part }
            }
            ClientCommand::Lookup { partition, consistency, ids, reply } => {
                let (slots, ids): (Vec<u32>, Vec<u64>) = ids.into_iter().unzip();
                Command::Lookup { partition, consistency, ids, to: (slots, reply) }
            }
            ClientCommand::LookupTransfers { partition, ids, reply } => {
                Command::LookupTransfers { partition, ids, to: reply }
            }
        };
        let writes = matches!(command, Command::Transfers { .. } | Command::CreateAccounts { .. });
        let started = Instant::now();
        let items = self.core.on_client(now, command);
        if writes {
            // Deciding it on the led partition's speculative state, or handing it to a leader elsewhere.
            metrics::observe_stage(Stage::Execute, started.elapsed());
        }
        items
    }

    fn tick_if_due(&mut self, tick: Duration) {
        let mut ticks = 0;
        while self.last_tick.elapsed() >= tick && ticks < TICKS_PER_ROUND_MAX {
            self.last_tick += tick;
            ticks += 1;
            self.core.tick(self.now());
        }
        if self.last_tick.elapsed() >= tick {
            self.last_tick = Instant::now();
        }
    }

    /// Carries out everything the core decided, in order, until it has nothing more to say (writes are
    /// staged in the log; `submit` sends them).
    fn carry_out(&mut self) {
        loop {
            let outputs = self.core.take_outputs();
            if outputs.is_empty() {
                break;
            }
            for output in outputs {
                match output {
                    Output::Send { to, item } => {
                        let forwarded = match &item {
                            PeerItem::Forward { request_id, .. } => Some(*request_id),
                            _ => None,
                        };
                        match (self.transport.send(to, item), forwarded) {
                            (Ok(()), _) | (Err(_), None) => {}
                            // The link is up but behind: the client hears it at once, retryably.
                            (Err(Refused::QueueFull), Some(request_id)) => self.core.forward_busy(to, request_id),
                            (Err(_), Some(request_id)) => self.core.forward_undeliverable(self.now(), to, request_id),
                        }
                    }
                    Output::Persist(persist) => {
                        // The install puts the partition's snapshot file in place: never beside the
                        // snapshot thread's compaction of it, never under an older image it is about
                        // to put there (the core holds an install back until that compaction is in).
                        assert!(
                            persist.snapshot.is_none() || !self.compactor.compacting(persist.partition),
                            "partition {}: an install while its compaction is out",
                            persist.partition
                        );
                        let storage =
                            self.core.storage_mut(persist.partition).expect("the core names its own partitions");
                        match persist.write_to(storage) {
                            Ok(()) => {
                                let position = lock(&self.log).last_position();
                                self.staged.push_back(Staged {
                                    partition: persist.partition,
                                    number: persist.number,
                                    position,
                                    staged_at: Instant::now(),
                                });
                            }
                            Err(error) => self.core.storage_failed(persist.partition, error),
                        }
                    }
                    Output::Items { to, outcome } => {
                        if outcome.is_ok() {
                            metrics::observe_stage(Stage::Total, to.accepted_at().elapsed());
                        }
                        to.complete(outcome)
                    }
                    Output::Lookup { to: (slots, reply), outcome } => {
                        reply(outcome.map(|accounts| slots.into_iter().zip(accounts).collect()))
                    }
                    Output::Transfers { to, outcome } => to(outcome),
                    Output::Compact(compaction) => self.compactor.submit(compaction),
                    Output::Restore(restore) => self.compactor.submit_restore(restore),
                    Output::Log { level, line } => log::log!(level, "{line}"),
                }
            }
        }
    }

    /// Submits what is staged as one batch: one write + one fdatasync (or, if a batch is in flight, it
    /// goes as the next one when that completes). Called once at the end of a round, so a round's
    /// writes of every group share one sync.
    fn submit(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let submitted = lock(&self.log).submit();
        if let Err(error) = submitted {
            self.core.log_failed(error);
        }
    }

    /// Reports every staged write that is durable now (and frees log segments no group needs any
    /// more); returns whether it reported any. Never blocks.
    fn complete_durable(&mut self) -> bool {
        if self.staged.is_empty() {
            return false;
        }
        let polled = lock(&self.log).poll();
        let durable = match polled {
            Ok(durable) => durable,
            Err(error) => {
                self.core.log_failed(error);
                return false;
            }
        };
        let mut reported = false;
        if let Some(oldest) = self.staged.front().filter(|staged| staged.position <= durable) {
            // Once per completion, for its oldest write: the round's writes share one sync.
            metrics::observe_stage(Stage::LogSync, oldest.staged_at.elapsed());
        }
        while self.staged.front().is_some_and(|staged| staged.position <= durable) {
            let staged = self.staged.pop_front().expect("front checked just above");
            self.core.persisted(staged.partition, staged.number);
            reported = true;
        }
        if reported {
            self.purge();
        }
        reported
    }

    /// Reports every compaction whose image the snapshot thread has made durable (Raft then drops the
    /// log prefix it covers), and every received snapshot whose state it rebuilt (Raft then installs
    /// it); returns whether it reported any. Never blocks.
    fn finish_compactions(&mut self) -> bool {
        let done = self.compactor.take_done();
        let any = !done.is_empty();
        for report in done {
            let report = match report {
                Report::Compacted(report) => report,
                Report::Restored { restored, staged } => {
                    let noted = lock(&self.log).install_staged(restored.partition, restored.index(), staged);
                    if let Err(error) = noted {
                        self.core.log_failed(error);
                        continue;
                    }
                    let now = self.now();
                    self.core.restored(now, restored);
                    continue;
                }
            };
            match report.outcome {
                Ok(data) => {
                    let recorded = lock(&self.log).compaction_written(report.partition, report.index);
                    match recorded {
                        Ok(()) => {
                            let now = self.now();
                            self.core.compacted(now, report.partition, report.index, data)
                        }
                        Err(error) => self.core.log_failed(error),
                    }
                }
                Err(error) => self.core.storage_failed(report.partition, error),
            }
        }
        any
    }

    /// Deletes the log segments no group needs (see `SharedLog::purge`).
    fn purge(&mut self) {
        let mut log = lock(&self.log);
        if log.segment_count() < 2 {
            return;
        }
        match log.purge() {
            Ok(report) if report.segments_removed > 0 || !report.compaction_wanted.is_empty() => log::debug!(
                "shard {}: purge removed {} segments, rewrote {} records, asked partitions {:?} to compact",
                self.id,
                report.segments_removed,
                report.records_rewritten,
                report.compaction_wanted
            ),
            Ok(_) => {}
            Err(error) => {
                drop(log);
                self.core.log_failed(error);
            }
        }
    }

    /// Blocks until everything staged is durable and reported, and what that released is carried out
    /// (shutdown only; bounded, since each report may stage a little more).
    fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            if self.staged.is_empty() || self.core.failed().is_some() {
                return;
            }
            let synced = lock(&self.log).sync();
            if let Err(error) = synced {
                return self.core.log_failed(error);
            }
            self.complete_durable();
            self.carry_out();
        }
    }

    /// Answers everything still waiting with `ShuttingDown`, then `reply` with how the shard ends.
    fn close(mut self, reply: Option<DoneReply>) {
        // Whatever can still commit from this round does; then everything left waiting is answered.
        self.core.propose_all();
        self.core.end_round(self.now());
        self.carry_out();
        self.settle();
        self.core.close();
        self.carry_out();
        self.settle();
        if let Some(reply) = reply {
            reply(match self.core.failed() {
                None => Ok(()),
                Some(reason) => Err(EngineError::ShardFailed { shard: self.core.shard(), reason: reason.to_string() }),
            });
        }
    }
}

/// Rounds of sync-and-report at shutdown before the shard gives up waiting for more to settle.
const SETTLE_ROUNDS_MAX: usize = 16;

/// Wakes the shard's `Select` when a write + fdatasync of its log completes: the kernel signals an
/// eventfd registered with the log's io_uring ring, and one small thread blocks reading it and sends a
/// token. (Crossbeam cannot wait on a file descriptor; the shard's wait is also bounded by its tick, so
/// a lost token delays a report by at most one tick.)
struct SyncWaker {
    eventfd: Arc<OwnedFd>,
    tokens: Receiver<()>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SyncWaker {
    fn start(log: &SharedLog, shard: u32) -> Result<SyncWaker, EngineError> {
        // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(EngineError::Io(format!("eventfd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let eventfd = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        log.register_completion_eventfd(eventfd.as_raw_fd())
            .map_err(|e| EngineError::Log(format!("shard {shard}: {e}")))?;
        let (sender, tokens) = bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name(format!("replica-{shard}-sync"))
            .spawn({
                let (eventfd, stop) = (eventfd.clone(), stop.clone());
                move || loop {
                    let mut count = [0u8; 8];
                    // SAFETY: reads 8 bytes into a local buffer from a descriptor this thread keeps alive.
                    let read = unsafe { libc::read(eventfd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    if read < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                        return;
                    }
                    // A token already waiting says the same.
                    let _ = sender.try_send(());
                }
            })
            .map_err(|e| EngineError::Io(format!("cannot start a sync waker thread: {e}")))?;
        Ok(SyncWaker { eventfd, tokens, stop, thread: Some(thread) })
    }
}

impl Drop for SyncWaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a local buffer to a descriptor we own; it wakes the blocked read.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
