//! A shard: one thread that owns a set of partitions, their state machines, one event log and one
//! RocksDB store. It shares no lock with other shards; commands arrive on a bounded channel.
//!
//! One round of the write path:
//! 1. drain the command queue up to `round_items_max` items;
//! 2. execute each command against its partition's state (validate + apply), producing one event batch
//!    per touched partition;
//! 3. append those batches to the log (one record each) and let the disk start: one write + one
//!    fdatasync for the whole round, group-committed with whatever arrives while it is in flight;
//! 4. when the log reports the round durable, answer every command of it.
//!
//! In-memory state runs ahead of the disk, so nothing is answered, and no lookup is answered, before the
//! log holds everything it could have observed. A failed write or sync stops the shard (fail-stop): its
//! memory may hold effects the log lacks, so it refuses every later command until the node restarts and
//! rebuilds from the log. Nothing unacknowledged is ever reported as done.
//!
//! A lookup that asks for at least a sequence its partition has not reached yet (a client's seq from
//! another node, or from the future) waits, like a cluster replica's, until the partition has applied
//! it or `read_wait_timeout_ms` passes; then it is refused `Unavailable`, which is retryable.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use net::protocol::TransferLookup;
use net::types::{Account, CreateAccount, ItemResult, Transfer, TransferId};
use wal::{Wal, WalOptions};

use crate::base::{self, Done, PartitionRuns, Retainer};
use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::event::{EventBatchView, EventBody, EventBuffer};
use crate::history;
use crate::id_index::{self, ColdRun, RunBuilder};
use crate::idempotency::{ColdImage, IdEntry, IdImage, RunHome, NANOS_PER_MILLI};
use crate::join::BatchPart;
use crate::metrics::Stage;
use crate::partition::{DirtyRow, PartitionConfig, PartitionState};
use crate::slow_round::SlowRounds;
use crate::store::{Checkpoint, PartitionMeta, Store};
use std::sync::Arc;

/// Log record kind of an event batch.
pub const RECORD_KIND_EVENTS: u8 = 1;
/// Term written with every record while a node runs alone (Raft terms start at 1).
pub const SINGLE_NODE_TERM: u64 = 1;
/// Most events in one log record: keeps a record well under the log's 4 MiB payload limit.
pub const RECORD_EVENTS_MAX: usize = 32_768;
/// The largest event-batch record: header plus `RECORD_EVENTS_MAX` events.
pub const RECORD_PAYLOAD_BYTES_MAX: usize =
    crate::event::EVENT_BATCH_HEADER_BYTES + RECORD_EVENTS_MAX * crate::event::EVENT_BYTES;
/// How long an idle shard sleeps on its queue before checking whether a checkpoint is due.
const IDLE_WAIT_MS: u64 = 50;

pub type LookupReply = Box<dyn FnOnce(Result<Vec<(u32, Option<Account>)>, EngineError>) + Send>;
pub type HistoryReply = Box<dyn FnOnce(Result<history::HistoryPage, EngineError>) + Send>;
pub type StatusReply = Box<dyn FnOnce(ShardStatus) + Send>;
/// Per requested transfer id found by this shard: (slot in the request, partition, what the partition
/// decided: `Found`, or `FoundWithoutFields` once the event left the log; never `NotFound`).
pub type TransfersReply = Box<dyn FnOnce(Result<Vec<(u32, u32, Option<TransferLookup>)>, EngineError>) + Send>;
pub type DoneReply = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

pub enum ShardCommand {
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
    /// Account ids with the slot each answer goes to in the caller's result, and the lowest sequence
    /// each listed partition must have applied before it is served (a partition not listed: none).
    Lookup {
        ids: Vec<(u32, u64)>,
        at_least: Vec<(u32, u64)>,
        reply: LookupReply,
    },
    /// Transfer ids to look up in every partition of the shard.
    LookupTransfers {
        ids: Arc<Vec<TransferId>>,
        reply: TransfersReply,
    },
    History {
        account_id: u64,
        /// Inclusive; `u64::MAX` means the newest event.
        from_seq: u64,
        limit: usize,
        reply: HistoryReply,
    },
    Status {
        reply: StatusReply,
    },
    Checkpoint {
        reply: DoneReply,
    },
    Shutdown {
        reply: DoneReply,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: u32,
    pub last_seq: u64,
    pub accounts: usize,
    pub ledger_sums: Vec<(u32, i128)>,
    pub digest: u128,
}

#[derive(Clone, Debug, Default)]
pub struct ShardStatus {
    pub shard: u32,
    pub log_last_index: u64,
    pub log_durable_index: u64,
    pub checkpoint_index: u64,
    /// The oldest record the log still holds (older ones were purged: see `log_retention_bytes`).
    pub log_first_index: u64,
    /// Applied index of the newest base the audits replay from (0: none, they replay from index 1).
    pub base_index: u64,
    pub partitions: Vec<PartitionStatus>,
    pub failed: Option<String>,
}

/// What recovery found and did, logged at start.
#[derive(Clone, Debug, Default)]
pub struct ShardRecovery {
    pub shard: u32,
    pub checkpoint_index: u64,
    pub base_index: u64,
    pub log_first_index: u64,
    pub log_last_index: u64,
    pub records_replayed: u64,
    pub log_bytes_truncated: u64,
    pub segments: usize,
    pub elapsed: Duration,
}

/// Answers owed once the log is durable up to `log_index`.
enum Owed {
    Items { part: BatchPart, results: Vec<ItemResult> },
    Lookup { answers: Vec<(u32, Option<Account>)>, reply: LookupReply },
}

/// A lookup waiting for its partitions to reach the sequences it asked for, until `deadline`.
struct SeqWait {
    ids: Vec<(u32, u64)>,
    at_least: Vec<(u32, u64)>,
    reply: LookupReply,
    deadline: Instant,
}

/// A partition's batches appended since the last checkpoint: (first_seq, log index).
type RecentBatches = Vec<(u64, u64)>;

pub struct Shard {
    id: u32,
    config: NodeConfig,
    /// Partitions owned by this shard, indexed by `partition / shards`.
    partitions: Vec<PartitionState>,
    recent_batches: Vec<RecentBatches>,
    /// Per owned partition: the store's chunks of in-memory id-table entries.
    id_chunks: Vec<IdChunks>,
    /// Per owned partition: id entries inserted since the last checkpoint, drained at the end of every
    /// round as runs of consecutive arrivals (first arrival, entries), so a checkpoint moves them to the
    /// store instead of copying a whole interval's worth in one round. At most one checkpoint interval
    /// of ids (at 1 M ids/s and 1 s: 64 MB).
    pending_ids: Vec<Vec<(u64, Vec<IdEntry>)>>,
    /// Per owned partition: how many ids the last checkpoint carried (sizes the next interval's buffer).
    ids_per_checkpoint: Vec<usize>,
    /// Emptied id-entry buffers that written checkpoints handed back (at most one per owned partition):
    /// `take_ids` fills them again rather than fresh memory.
    id_buffers: Vec<Vec<IdEntry>>,
    /// Builds and writes the id-index runs the partitions seal (its own thread).
    id_runs: RunBuilder,
    /// Per owned partition: the event buffer of the current round (reused, never shrunk).
    buffers: Vec<EventBuffer>,
    touched: Vec<usize>,
    wal: Wal,
    store: Store,
    /// Applied index of the newest checkpoint in the store.
    checkpoint_index: u64,
    last_checkpoint: Instant,
    /// The checkpoint being written: its applied index, and per owned partition how many of its recent
    /// batches it carries (they leave `recent_batches` once written).
    checkpoint_writing: Option<(u64, Vec<usize>)>,
    /// Rate limit of the slow-round log line.
    slow_rounds: SlowRounds,
    /// Makes bases and frees old segments off the round (see `engine::base`).
    retainer: Retainer,
    /// Applied index of the newest base (0: none yet): no segment above it may be deleted.
    base_index: u64,
    /// Some segment is beyond the history retention but not yet covered by a base: the next checkpoint
    /// asks for one.
    base_wanted: bool,
    /// Segments the log detached that a failed job left on disk, and when to hand them over again.
    unfreed: Vec<PathBuf>,
    retry_free_at: Instant,
    /// Answers waiting for the log: (last log index of their round, when it was appended, answers).
    owed: VecDeque<(u64, Instant, Vec<Owed>)>,
    round_owed: Vec<Owed>,
    /// Lookups waiting for a sequence, in arrival order. Bounded by what the server lets be in flight
    /// (requests per connection times connections), and each leaves within `read_wait_timeout_ms`.
    seq_waits: Vec<SeqWait>,
    failed: Option<String>,
}

pub fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("shard-{shard:03}"))
}

pub fn owned_partitions(shard: u32, shards: u32, partitions: u32) -> impl Iterator<Item = u32> {
    (shard..partitions).step_by(shards as usize)
}

pub fn wal_options(config: &NodeConfig) -> WalOptions {
    WalOptions {
        segment_bytes: config.wal_segment_bytes,
        payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX,
        ..WalOptions::default()
    }
}

pub fn partition_config(config: &NodeConfig, partition: u32) -> PartitionConfig {
    PartitionConfig {
        partition,
        partitions: config.partitions,
        idempotency_window_ms: config.idempotency_window_ms,
        idempotency_ids_max: config.idempotency_ids_max,
        id_hash_key: config.id_hash_key,
    }
}

/// A partition's id-table chunks in the store: (position, entry count), oldest first.
type IdChunks = VecDeque<(u64, u64)>;

/// The folder of one partition's id-index run files.
pub fn id_runs_dir(data_dir: &Path, shard: u32, partition: u32) -> PathBuf {
    shard_dir(data_dir, shard).join("ids").join(format!("p{partition:05}"))
}

/// Where a restored partition's id-index runs are.
#[derive(Clone, Copy, Debug)]
pub enum Runs<'a> {
    /// The live folder of a node that is starting: runs the checkpoint does not cover (written after
    /// it: replay re-seals them) and runs whose every id has expired are removed, and new runs are
    /// written there.
    Live(&'a Path),
    /// A folder an audit reads (a base's runs): nothing in it is removed or written; runs sealed by the
    /// audit's replay stay in memory.
    Audit(&'a Path),
}

/// Rebuilds one partition from its checkpoint rows (or empty when the store has none), with the
/// bookkeeping of its id-table chunks. The id table's older ids come from its run files (mapped, not
/// read: restart does not scale with the window).
pub fn restore_partition(
    store: &Store,
    config: &NodeConfig,
    partition: u32,
    runs: Runs<'_>,
) -> Result<(PartitionState, PartitionMeta, IdChunks), EngineError> {
    let partition_config = partition_config(config, partition);
    let (dir, live) = match runs {
        Runs::Live(dir) => (dir, true),
        Runs::Audit(dir) => (dir, false),
    };
    let home = if live { RunHome::Directory(Arc::new(dir.to_path_buf())) } else { RunHome::Memory };
    let listed =
        if live { id_index::list_runs(dir) } else { id_index::list_runs_read_only(dir) }.map_err(id_index_error)?;
    let remove = |path: &Path| {
        assert!(live, "an audit removes nothing");
        std::fs::remove_file(path).map_err(|e| EngineError::Store(format!("{}: {e}", path.display())))
    };
    let Some(meta) = store.partition_meta(partition)? else {
        if live {
            // No checkpoint: every run file is newer than it, and replay re-seals them.
            for (_, path) in &listed {
                remove(path)?;
            }
        }
        let mut state = PartitionState::new(partition_config);
        state.set_id_home(home);
        return Ok((state, PartitionMeta::default(), IdChunks::new()));
    };
    let mut accounts = Vec::new();
    store.for_each_account(partition, |account| accounts.push(account))?;
    let head = meta.ids_head_arrival;
    if head > meta.ids_next_arrival {
        return Err(corrupt_ids(partition, "the in-memory ids start after the next arrival"));
    }
    let mut hot = Vec::with_capacity((meta.ids_next_arrival - head) as usize);
    let mut chunks = IdChunks::new();
    for (position, entries) in store.id_chunks(partition)? {
        let end = position + entries.len() as u64;
        chunks.push_back((position, entries.len() as u64));
        if end > head {
            if position > head + hot.len() as u64 {
                return Err(corrupt_ids(partition, "id chunks leave a gap in the in-memory ids"));
            }
            let skip = (head + hot.len() as u64 - position) as usize;
            hot.extend_from_slice(&entries[skip..]);
        }
    }
    if head + hot.len() as u64 != meta.ids_next_arrival {
        return Err(corrupt_ids(partition, "id chunks do not hold the in-memory id table"));
    }
    let mut cold: Vec<ColdImage> = Vec::new();
    let last_ms = meta.last_timestamp_ns / NANOS_PER_MILLI;
    for (first_arrival, path) in listed {
        if first_arrival >= head {
            if live {
                remove(&path)?;
            }
            continue;
        }
        let run = if live {
            ColdRun::open(&path, partition, config.id_hash_key)
        } else {
            ColdRun::open_for_audit(&path, partition, config.id_hash_key)
        }
        .map_err(id_index_error)?;
        if run.first_arrival != first_arrival || run.end_arrival > head {
            return Err(corrupt_ids(partition, &format!("id run {} is out of place", path.display())));
        }
        if run.max_id_ms.saturating_add(config.idempotency_window_ms) < last_ms {
            drop(run);
            if live {
                remove(&path)?;
            }
            continue;
        }
        cold.push(ColdImage::Run(Arc::new(run)));
    }
    let ids = IdImage { cold, head_arrival: head, hot };
    let state =
        PartitionState::try_restore(partition_config, meta.last_seq, meta.last_timestamp_ns, accounts, ids, home)
            .map_err(|e| EngineError::Store(format!("partition {partition}: checkpoint rows are inconsistent: {e}")))?;
    Ok((state, meta, chunks))
}

fn id_index_error(error: id_index::IdIndexError) -> EngineError {
    EngineError::Store(error.to_string())
}

fn corrupt_ids(partition: u32, why: &str) -> EngineError {
    EngineError::Store(format!("partition {partition}: {why}"))
}

impl Shard {
    /// Opens the shard's store and log and replays the log after the store's checkpoint.
    pub fn open(id: u32, config: &NodeConfig) -> Result<(Shard, ShardRecovery), EngineError> {
        let started = Instant::now();
        let dir = shard_dir(&config.data_dir, id);
        let store = Store::open(&dir.join("state"))?;
        let checkpoint_index = store.applied_index()?;
        let base_index = base::tidy_bases(&dir)?.map_or(0, |(index, _)| index);
        if checkpoint_index < base_index {
            // A base is copied from the store after RocksDB flushed it, so the store cannot be older
            // unless it was replaced; the log before the base may be gone, so replay cannot fill the gap.
            return Err(EngineError::Store(format!(
                "shard {id}: the state store is at log index {checkpoint_index}, below its base at {base_index}: \
                 the store was replaced or lost; refusing to start"
            )));
        }
        let mut partitions = Vec::new();
        let mut id_chunks = Vec::new();
        for partition in owned_partitions(id, config.shards, config.partitions) {
            let runs_dir = id_runs_dir(&config.data_dir, id, partition);
            std::fs::create_dir_all(&runs_dir)
                .map_err(|e| EngineError::Store(format!("{}: {e}", runs_dir.display())))?;
            let (state, _meta, chunks) = restore_partition(&store, config, partition, Runs::Live(&runs_dir))?;
            partitions.push(state);
            id_chunks.push(chunks);
        }
        let (mut wal, wal_report) = Wal::open(&dir.join("wal"), wal_options(config))?;
        wal.set_sync_observer(crate::metrics::observe_fsync_committing);
        let mut shard = Shard {
            id,
            config: config.clone(),
            recent_batches: vec![Vec::new(); partitions.len()],
            id_chunks,
            pending_ids: vec![Vec::new(); partitions.len()],
            ids_per_checkpoint: vec![0; partitions.len()],
            id_buffers: Vec::new(),
            id_runs: RunBuilder::start(format!("shard-{id}-ids")),
            buffers: (0..partitions.len()).map(|_| EventBuffer::new()).collect(),
            partitions,
            touched: Vec::new(),
            wal,
            retainer: Retainer::start(
                id,
                dir.clone(),
                store.clone(),
                config.id_hash_key,
                base::open_archive(config, id)?,
            )?,
            store,
            checkpoint_index,
            last_checkpoint: Instant::now(),
            checkpoint_writing: None,
            slow_rounds: SlowRounds::default(),
            base_index,
            base_wanted: false,
            unfreed: Vec::new(),
            retry_free_at: Instant::now(),
            owed: VecDeque::new(),
            round_owed: Vec::new(),
            seq_waits: Vec::new(),
            failed: None,
        };
        let replayed = shard.replay_after_checkpoint()?;
        let recovery = ShardRecovery {
            shard: id,
            checkpoint_index,
            base_index,
            log_first_index: shard.wal.first_index(),
            log_last_index: shard.wal.last_index(),
            records_replayed: replayed,
            log_bytes_truncated: wal_report.truncated_bytes,
            segments: wal_report.segments,
            elapsed: started.elapsed(),
        };
        Ok((shard, recovery))
    }

    fn slot(&self, partition: u32) -> usize {
        let slot = (partition / self.config.shards) as usize;
        assert_eq!(partition % self.config.shards, self.id, "partition {partition} routed to the wrong shard");
        slot
    }

    fn replay_after_checkpoint(&mut self) -> Result<u64, EngineError> {
        let last = self.wal.last_index();
        if self.checkpoint_index > last {
            return Err(EngineError::StateAheadOfLog {
                shard: self.id,
                state_index: self.checkpoint_index,
                log_last_index: last,
            });
        }
        if last == self.checkpoint_index {
            return Ok(0);
        }
        let from = self.checkpoint_index + 1;
        if self.wal.first_index() > from {
            return Err(EngineError::LogPrefixMissing {
                shard: self.id,
                needed_index: from,
                log_first_index: self.wal.first_index(),
            });
        }
        let mut replayed = 0;
        for record in self.wal.reader(from)? {
            let record = record?;
            if record.kind != RECORD_KIND_EVENTS {
                continue;
            }
            let view = EventBatchView::new(record.payload).map_err(|e| EngineError::CorruptLog {
                shard: self.id,
                index: record.index,
                why: e.to_string(),
            })?;
            let slot = self.slot(view.partition());
            self.partitions[slot].apply_batch(&view).map_err(|e| EngineError::CorruptLog {
                shard: self.id,
                index: record.index,
                why: e.to_string(),
            })?;
            self.recent_batches[slot].push((view.first_seq(), record.index));
            replayed += 1;
        }
        self.tend_id_runs();
        Ok(replayed)
    }

    /// The shard thread's loop; returns when told to shut down or when its queue closes.
    pub fn run(mut self, commands: Receiver<ShardCommand>) {
        let queue_depth = crate::metrics::queue_depth_gauge(self.id, "client");
        loop {
            let mut items = 0usize;
            let mut shutdown = None;
            // Block only when nothing is owed: otherwise the disk's completion is what we wait for.
            let first = if self.owed.is_empty() && !self.wal.in_flight() {
                match commands.recv_timeout(Duration::from_millis(IDLE_WAIT_MS)) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return self.close(None),
                }
            } else {
                None
            };
            let mut next = first;
            let mut commands_taken = 0usize;
            let now_ns = clock_ns();
            let round_started = Instant::now();
            queue_depth.set(commands.len() as i64);
            loop {
                let command = match next.take() {
                    Some(command) => command,
                    None if items >= self.config.round_items_max => break,
                    None => match commands.try_recv() {
                        Ok(command) => command,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            shutdown = Some(None);
                            break;
                        }
                    },
                };
                match command {
                    ShardCommand::Shutdown { reply } => {
                        shutdown = Some(Some(reply));
                        break;
                    }
                    command => {
                        commands_taken += 1;
                        items += self.execute(command, now_ns);
                    }
                }
            }
            let executed = Instant::now();
            self.serve_seq_waits(executed);
            self.end_round();
            let appended = Instant::now();
            self.drive_log(shutdown.is_some() || self.checkpoint_due());
            let ended = Instant::now();
            crate::metrics::observe_round(ended - round_started);
            let phases = [("executing", executed), ("appending", appended), ("log write + sync", ended)];
            self.slow_rounds.report(round_started, &phases, || {
                let detail = format!("{commands_taken} commands of {items} items, {} queued behind it", commands.len());
                (format!("shard {}", self.id), detail)
            });
            self.tend_retention();
            if self.checkpoint_due() && self.owed.is_empty() {
                // Refused only by a failed shard, which checkpoint_due excludes.
                self.start_checkpoint().expect("a healthy shard starts a checkpoint");
            }
            if let Some(reply) = shutdown {
                return self.close(reply);
            }
        }
    }

    /// Executes one command; returns the number of items it carried.
    fn execute(&mut self, command: ShardCommand, now_ns: u64) -> usize {
        if let ShardCommand::Status { reply } = command {
            reply(self.status());
            return 0;
        }
        if let Some(reason) = &self.failed {
            fail_command(command, EngineError::ShardFailed { shard: self.id, reason: reason.clone() });
            return 0;
        }
        match command {
            ShardCommand::Transfers { partition, items, part } => {
                let started = Instant::now();
                crate::metrics::observe_stage(Stage::QueueWait, started.saturating_duration_since(part.accepted_at()));
                let slot = self.begin(partition, items.len());
                let mut results = Vec::with_capacity(items.len());
                self.partitions[slot].execute_transfers(now_ns, &items, &mut self.buffers[slot], &mut results);
                crate::metrics::observe_stage(Stage::Execute, started.elapsed());
                self.round_owed.push(Owed::Items { part, results });
                items.len()
            }
            ShardCommand::CreateAccounts { partition, items, part } => {
                let started = Instant::now();
                crate::metrics::observe_stage(Stage::QueueWait, started.saturating_duration_since(part.accepted_at()));
                let slot = self.begin(partition, items.len());
                let mut results = Vec::with_capacity(items.len());
                self.partitions[slot].execute_create_accounts(now_ns, &items, &mut self.buffers[slot], &mut results);
                crate::metrics::observe_stage(Stage::Execute, started.elapsed());
                self.round_owed.push(Owed::Items { part, results });
                items.len()
            }
            ShardCommand::Lookup { ids, at_least, reply } => {
                let count = ids.len();
                if self.reached(&at_least) {
                    self.owe_lookup(&ids, reply);
                } else {
                    let deadline = Instant::now() + Duration::from_millis(self.config.read_wait_timeout_ms);
                    self.seq_waits.push(SeqWait { ids, at_least, reply, deadline });
                }
                count
            }
            ShardCommand::LookupTransfers { ids, reply } => {
                // The transfer's fields are read from the log, so everything in memory must reach it.
                self.end_round();
                self.drive_log(true);
                reply(self.lookup_transfers(&ids, now_ns));
                ids.len()
            }
            ShardCommand::History { account_id, from_seq, limit, reply } => {
                // History is read from the log itself, so everything in memory must reach it first.
                self.end_round();
                self.drive_log(true);
                reply(self.history(account_id, from_seq, limit));
                1
            }
            ShardCommand::Checkpoint { reply } => {
                self.end_round();
                self.drive_log(true);
                reply(self.checkpoint_now());
                0
            }
            ShardCommand::Status { .. } | ShardCommand::Shutdown { .. } => unreachable!("handled before execution"),
        }
    }

    /// Whether every partition listed has applied (in memory) at least its sequence. The answer is
    /// still held until the log is durable, so it never reflects what could be lost.
    fn reached(&self, at_least: &[(u32, u64)]) -> bool {
        at_least.iter().all(|&(partition, seq)| self.partitions[self.slot(partition)].last_seq() >= seq)
    }

    /// Reads the accounts now and files the answer behind this round's log record.
    fn owe_lookup(&mut self, ids: &[(u32, u64)], reply: LookupReply) {
        let answers = ids
            .iter()
            .map(|&(slot_in_reply, id)| {
                let partition = net::types::partition_of(id, self.config.partitions);
                (slot_in_reply, self.partitions[self.slot(partition)].account(id))
            })
            .collect();
        self.round_owed.push(Owed::Lookup { answers, reply });
    }

    /// Serves the waiting lookups whose sequences this round reached and refuses those past their
    /// deadline (`Unavailable`: retryable; the client may ask again, here or elsewhere).
    fn serve_seq_waits(&mut self, now: Instant) {
        if self.seq_waits.is_empty() {
            return;
        }
        for wait in std::mem::take(&mut self.seq_waits) {
            if self.failed.is_none() && self.reached(&wait.at_least) {
                self.owe_lookup(&wait.ids, wait.reply);
            } else if wait.deadline <= now || self.failed.is_some() {
                let behind: Vec<String> = wait
                    .at_least
                    .iter()
                    .filter(|&&(p, seq)| self.partitions[self.slot(p)].last_seq() < seq)
                    .map(|&(p, seq)| {
                        format!("partition {p} at seq {} < {seq}", self.partitions[self.slot(p)].last_seq())
                    })
                    .collect();
                let error = match &self.failed {
                    Some(reason) => EngineError::ShardFailed { shard: self.id, reason: reason.clone() },
                    None => EngineError::Unavailable(format!(
                        "at_least read not reached within read_wait_timeout_ms {}: {}",
                        self.config.read_wait_timeout_ms,
                        behind.join(", ")
                    )),
                };
                (wait.reply)(Err(error));
            } else {
                self.seq_waits.push(wait);
            }
        }
    }

    /// The slot of `partition`, with room in its event batch for `items` more events: a batch that
    /// would outgrow one log record is appended first and a new one starts.
    fn begin(&mut self, partition: u32, items: usize) -> usize {
        let slot = self.slot(partition);
        if self.buffers[slot].event_count() as usize + items > RECORD_EVENTS_MAX {
            self.flush_slot(slot);
        }
        if !self.buffers[slot].is_started() {
            self.touched.push(slot);
        }
        slot
    }

    /// Appends one partition's event batch to the log (nothing when it holds only replays).
    fn flush_slot(&mut self, slot: usize) {
        let buffer = &self.buffers[slot];
        if buffer.is_empty() {
            self.buffers[slot].clear();
            return;
        }
        let bytes = buffer.finish();
        let first_seq = EventBatchView::new(bytes).expect("the state machine encodes valid batches").first_seq();
        let index = self.wal.last_index() + 1;
        match self.wal.append(index, SINGLE_NODE_TERM, RECORD_KIND_EVENTS, bytes) {
            Ok(()) => {
                crate::metrics::count_proposal();
                self.recent_batches[slot].push((first_seq, index))
            }
            Err(error) => self.fail(format!("log append failed: {error}")),
        }
        self.buffers[slot].clear();
    }

    /// Moves a partition's id entries inserted since the last drain into its pending runs.
    fn take_ids(&mut self, slot: usize) {
        let state = &mut self.partitions[slot];
        let count = state.ids().undrained();
        if count == 0 {
            return;
        }
        let first = state.ids().first_undrained();
        let pending = &mut self.pending_ids[slot];
        let contiguous = pending.last().is_some_and(|(start, entries)| start + entries.len() as u64 == first);
        if !contiguous {
            // The first drain since the checkpoint, or entries left memory undrained (a replay): a new run.
            // A buffer a written checkpoint returned is already faulted in; a fresh one would take a
            // page fault per 64 entries on this round (see `id_buffers`).
            let mut buffer = self.id_buffers.pop().unwrap_or_default();
            buffer.reserve(count.max(self.ids_per_checkpoint[slot]));
            pending.push((first, buffer));
        }
        let (_, entries) = pending.last_mut().expect("just ensured");
        entries.reserve(count);
        let drained = state.drain_ids(|entry| entries.push(*entry));
        assert_eq!(drained.first_drained, first, "the drain starts where the table said");
        assert_eq!(
            pending.last().map(|(start, entries)| start + entries.len() as u64),
            Some(drained.next_arrival),
            "pending ids end at the table's next arrival"
        );
    }

    /// Hands the id-index runs the partitions sealed to the builder and lets written ones leave memory.
    fn tend_id_runs(&mut self) {
        let builder = &self.id_runs;
        for state in &mut self.partitions {
            state.tend_id_runs(|run| builder.submit(run));
        }
    }

    /// Appends this round's event batches to the log and files its answers behind them.
    fn end_round(&mut self) {
        self.tend_id_runs();
        for slot in std::mem::take(&mut self.touched) {
            self.take_ids(slot);
            self.flush_slot(slot);
        }
        if !self.round_owed.is_empty() {
            let owed = std::mem::take(&mut self.round_owed);
            self.owed.push_back((self.wal.last_index(), Instant::now(), owed));
        }
    }

    /// Starts the disk on what is pending and answers whatever became durable. With `wait`, blocks
    /// until everything appended is durable; otherwise waits only when answers are owed.
    fn drive_log(&mut self, wait: bool) {
        if self.failed.is_some() {
            self.release_owed(u64::MAX);
            return;
        }
        let result = if wait || !self.owed.is_empty() {
            self.wal.submit().and_then(|_| self.wal.wait())
        } else {
            self.wal.submit().and_then(|_| self.wal.poll())
        };
        match result {
            Ok(durable) => self.release_owed(durable),
            Err(error) => {
                self.fail(format!("log write or sync failed: {error}"));
                self.release_owed(u64::MAX);
            }
        }
    }

    fn release_owed(&mut self, durable: u64) {
        while let Some((index, _, _)) = self.owed.front() {
            if *index > durable {
                break;
            }
            let (_, appended_at, owed) = self.owed.pop_front().expect("front exists");
            if self.failed.is_none() {
                crate::metrics::observe_stage(Stage::LogSync, appended_at.elapsed());
            }
            for owed in owed {
                self.answer(owed);
            }
        }
    }

    fn answer(&self, owed: Owed) {
        let failure =
            self.failed.as_ref().map(|reason| EngineError::ShardFailed { shard: self.id, reason: reason.clone() });
        match (owed, failure) {
            (Owed::Items { part, results }, None) => {
                crate::metrics::count_results(&results);
                crate::metrics::observe_stage(Stage::Total, part.accepted_at().elapsed());
                part.complete(Ok(results))
            }
            (Owed::Items { part, .. }, Some(error)) => part.complete(Err(error)),
            (Owed::Lookup { answers, reply }, None) => reply(Ok(answers)),
            (Owed::Lookup { reply, .. }, Some(error)) => reply(Err(error)),
        }
    }

    fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            log::error!("shard {}: FAILED, refusing all commands until restart: {reason}", self.id);
            self.failed = Some(reason);
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.failed.is_none()
            && !self.retainer.checkpointing()
            && self.last_checkpoint.elapsed() >= Duration::from_millis(self.config.checkpoint_interval_ms)
    }

    /// Gathers the dirty state into a checkpoint and hands it to the retention thread, which writes it
    /// to RocksDB while the shard goes on: the round pays the copy, not the encoding or the write. Only
    /// called when the log is durable up to its last index (so the store never holds an effect the log
    /// lacks) and no checkpoint is being written (so they land in order).
    fn start_checkpoint(&mut self) -> Result<(), EngineError> {
        if let Some(reason) = &self.failed {
            return Err(EngineError::ShardFailed { shard: self.id, reason: reason.clone() });
        }
        assert!(!self.retainer.checkpointing(), "one checkpoint write at a time");
        let started = Instant::now();
        let applied = self.wal.last_index();
        assert_eq!(self.wal.durable_index(), applied, "checkpoint of state the log does not hold yet");
        let mut checkpoint = Checkpoint::default();
        let mut batches = Vec::with_capacity(self.partitions.len());
        for slot in 0..self.partitions.len() {
            // Whatever no round drained (a replay's ids).
            self.take_ids(slot);
        }
        for (slot, state) in self.partitions.iter_mut().enumerate() {
            let partition = state.partition();
            let mark = state.drain_dirty(|row| match row {
                DirtyRow::Account(account) => checkpoint.put_account(partition, account),
                DirtyRow::IdInserted(_) => unreachable!("every id entry was drained just before"),
            });
            let chunks = &mut self.id_chunks[slot];
            let pending = std::mem::take(&mut self.pending_ids[slot]);
            if let Some((start, entries)) = pending.last() {
                assert_eq!(start + entries.len() as u64, mark.ids.next_arrival, "the pending ids are every new one");
            }
            self.ids_per_checkpoint[slot] = pending.iter().map(|(_, entries)| entries.len()).sum();
            for (first, entries) in pending {
                // A run may begin before the head (its first entries left memory since): restore skips
                // those, and the chunk goes with the rest once the head passes its end.
                chunks.push_back((first, entries.len() as u64));
                checkpoint.put_id_chunk(partition, first, entries);
            }
            // Entries before the head are in id-index runs that are written and fsynced (a run leaves
            // memory only then), so their chunks can go (writes land in order: after the chunk's own).
            while let Some(&(position, count)) = chunks.front() {
                if position + count > mark.ids.head_arrival {
                    break;
                }
                checkpoint.delete_id_chunk(partition, position);
                chunks.pop_front();
            }
            let meta = PartitionMeta {
                last_seq: mark.last_seq,
                last_timestamp_ns: mark.last_timestamp_ns,
                ids_next_arrival: mark.ids.next_arrival,
                ids_head_arrival: mark.ids.head_arrival,
            };
            checkpoint.put_partition_meta(partition, &meta);
            // History finds these batches in memory until their rows are in the store.
            for &(first_seq, index) in &self.recent_batches[slot] {
                checkpoint.put_batch_index(partition, first_seq, index);
            }
            batches.push(self.recent_batches[slot].len());
        }
        self.retainer.write_checkpoint(checkpoint, applied);
        self.checkpoint_writing = Some((applied, batches));
        self.last_checkpoint = Instant::now();
        crate::metrics::observe_stage(Stage::Checkpoint, started.elapsed());
        if self.base_wanted && !self.retainer.busy() && applied > self.base_index {
            // Right after the drain, so the runs handed over are those its state refers to (or newer): no
            // apply ran in between to expire one. The base job runs after the checkpoint's write.
            let runs = self
                .partitions
                .iter()
                .map(|state| PartitionRuns {
                    partition: state.partition(),
                    runs: state.ids().cold_runs().to_vec(),
                    head_arrival: state.ids().head_arrival(),
                    dir: id_runs_dir(&self.config.data_dir, self.id, state.partition()),
                })
                .collect();
            self.retainer.make_base(runs);
            self.base_wanted = false;
        }
        Ok(())
    }

    /// Waits until no checkpoint is being written, taking every result that arrives meanwhile.
    fn finish_checkpoint(&mut self) -> Result<(), EngineError> {
        while self.retainer.checkpointing() {
            let done = self.retainer.wait();
            self.settle(done);
        }
        match &self.failed {
            Some(reason) => Err(EngineError::ShardFailed { shard: self.id, reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// A checkpoint of everything applied, written when it returns (an operator's or a test's request,
    /// and shutdown). The caller has made the log durable.
    fn checkpoint_now(&mut self) -> Result<(), EngineError> {
        self.finish_checkpoint()?;
        self.start_checkpoint()?;
        self.finish_checkpoint()
    }

    /// Takes one result of the retention thread.
    fn settle(&mut self, done: Done) {
        match done {
            Done::Checkpoint { applied, result, id_buffers } => {
                // Keep at most one checkpoint's worth (one buffer per owned partition, usually).
                let room = self.partitions.len().saturating_sub(self.id_buffers.len());
                self.id_buffers.extend(id_buffers.into_iter().take(room));
                let (expected, batches) = self.checkpoint_writing.take().expect("a checkpoint was being written");
                assert_eq!(applied, expected, "checkpoints are written in order");
                match result {
                    Ok(()) => {
                        assert!(applied >= self.checkpoint_index, "checkpoints move forward");
                        self.checkpoint_index = applied;
                        for (recent, written) in self.recent_batches.iter_mut().zip(batches) {
                            recent.drain(..written);
                        }
                    }
                    // The chunk bookkeeping in memory is now ahead of the store: stop, and let a
                    // restart rebuild from the store and the log.
                    Err(why) => self.fail(format!("checkpoint failed: {why}")),
                }
            }
            Done::Base { index } => {
                assert!(index >= self.base_index, "bases only move forward");
                assert!(index <= self.checkpoint_index, "a base is a copy of a written checkpoint");
                self.base_index = index;
            }
            Done::Freed { segments, batch_rows } => {
                crate::metrics::count_segments_purged(segments as u64);
                log::debug!("shard {}: freed {segments} log segments and {batch_rows} batch-index rows", self.id);
            }
            Done::FreeFailed { remaining, why } => {
                log::warn!(
                    "shard {}: could not free {} log segments (retried in 1 s): {why}",
                    self.id,
                    remaining.len()
                );
                self.unfreed = remaining;
                self.retry_free_at = Instant::now() + Duration::from_secs(1);
            }
            Done::Failed { job, why } => log::warn!("shard {}: could not {job} (retried later): {why}", self.id),
        }
    }

    /// Log retention, once per round and cheap when there is nothing to do: takes the retention thread's
    /// result, detaches the segments that are beyond `log_retention_bytes` and covered by the newest base
    /// (the thread deletes them), and asks for a base when such segments are not covered yet.
    fn tend_retention(&mut self) {
        while let Some(done) = self.retainer.poll() {
            self.settle(done);
        }
        if self.retainer.busy() || self.failed.is_some() {
            return;
        }
        if !self.unfreed.is_empty() {
            if Instant::now() >= self.retry_free_at {
                let partitions = self.partitions.iter().map(|state| state.partition()).collect();
                let wal_dir = self.wal.directory().to_path_buf();
                self.retainer.free(std::mem::take(&mut self.unfreed), wal_dir, self.wal.first_index(), partitions);
            }
            return;
        }
        let segments = self.wal.segment_first_indexes().count();
        let sealed = segments - 1;
        let keep = (self.config.log_retention_bytes / self.config.wal_segment_bytes) as usize;
        if sealed <= keep {
            self.base_wanted = false;
            return;
        }
        let keep_from = self.wal.segment_first_indexes().nth(sealed - keep).expect("sealed - keep < segments");
        self.base_wanted = self.base_index + 1 < keep_from;
        let before = keep_from.min(self.base_index + 1);
        if before <= self.wal.first_index() {
            return;
        }
        match self.wal.detach_prefix(before) {
            Ok(detached) if detached.is_empty() => {}
            Ok(detached) => {
                let partitions = self.partitions.iter().map(|state| state.partition()).collect();
                let wal_dir = self.wal.directory().to_path_buf();
                self.retainer.free(detached, wal_dir, self.wal.first_index(), partitions);
            }
            Err(error) => self.fail(format!("log retention failed: {error}")),
        }
    }

    fn lookup_transfers(
        &self,
        ids: &[TransferId],
        now_ns: u64,
    ) -> Result<Vec<(u32, u32, Option<TransferLookup>)>, EngineError> {
        let mut found = Vec::new();
        for (slot, &id) in ids.iter().enumerate() {
            for (partition_slot, state) in self.partitions.iter().enumerate() {
                let Some(entry) = state.transfer_entry(id, now_ns) else { continue };
                let partition = state.partition();
                let (code, seq, timestamp_ns) = (entry.code, entry.seq, entry.recorded_ns);
                let event = match history::event_at(
                    &self.wal,
                    &self.store,
                    &self.recent_batches[partition_slot],
                    partition,
                    entry.seq,
                ) {
                    Ok(event) => event,
                    // Beyond the log's retention: the id table still holds the outcome, the log no
                    // longer the fields (as a cluster replica past its snapshot answers).
                    Err(EngineError::EventPurged { .. }) => {
                        let without_fields = TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns };
                        found.push((slot as u32, partition, Some(without_fields)));
                        break;
                    }
                    Err(error) => return Err(error),
                };
                let transfer = match event.map(|e| e.body) {
                    Some(EventBody::TransferPosted { transfer, .. } | EventBody::TransferRejected { transfer, .. })
                        if transfer.id == id =>
                    {
                        transfer
                    }
                    other => {
                        return Err(EngineError::Log(format!(
                            "partition {partition}: transfer {id:#x} was decided at seq {} but the log holds {other:?} there",
                            entry.seq
                        )))
                    }
                };
                found.push((slot as u32, partition, Some(TransferLookup::Found { transfer, code, seq, timestamp_ns })));
                break;
            }
        }
        Ok(found)
    }

    fn history(&self, account_id: u64, from_seq: u64, limit: usize) -> Result<history::HistoryPage, EngineError> {
        let partition = net::types::partition_of(account_id, self.config.partitions);
        let slot = self.slot(partition);
        let Some(account) = self.partitions[slot].account(account_id) else {
            return Err(EngineError::AccountNotFound { account_id });
        };
        history::read_page(
            &self.wal,
            &self.store,
            &self.recent_batches[slot],
            partition,
            &account,
            from_seq,
            limit,
            self.wal.durable_index(),
        )
    }

    fn status(&self) -> ShardStatus {
        ShardStatus {
            shard: self.id,
            log_last_index: self.wal.last_index(),
            log_durable_index: self.wal.durable_index(),
            checkpoint_index: self.checkpoint_index,
            log_first_index: self.wal.first_index(),
            base_index: self.base_index,
            partitions: self
                .partitions
                .iter()
                .map(|state| PartitionStatus {
                    partition: state.partition(),
                    last_seq: state.last_seq(),
                    accounts: state.accounts_len(),
                    ledger_sums: state.ledger_sums(),
                    digest: state.digest(),
                })
                .collect(),
            failed: self.failed.clone(),
        }
    }

    fn close(mut self, reply: Option<DoneReply>) {
        for wait in std::mem::take(&mut self.seq_waits) {
            (wait.reply)(Err(EngineError::ShuttingDown));
        }
        self.end_round();
        self.drive_log(true);
        let result = self.checkpoint_now().and_then(|_| self.store.flush().map_err(EngineError::from));
        if let Some(reply) = reply {
            reply(result);
        }
    }
}

fn fail_command(command: ShardCommand, error: EngineError) {
    match command {
        ShardCommand::Transfers { part, .. } | ShardCommand::CreateAccounts { part, .. } => part.complete(Err(error)),
        ShardCommand::Lookup { reply, .. } => reply(Err(error)),
        ShardCommand::LookupTransfers { reply, .. } => reply(Err(error)),
        ShardCommand::History { reply, .. } => reply(Err(error)),
        ShardCommand::Checkpoint { reply } | ShardCommand::Shutdown { reply } => reply(Err(error)),
        ShardCommand::Status { reply: _ } => unreachable!("status is answered even by a failed shard"),
    }
}

/// The leader's clock, in nanoseconds since the Unix epoch. The state machine never reads a clock.
pub fn clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}
