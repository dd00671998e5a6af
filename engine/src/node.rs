//! The embedded node: opens a data directory, starts one shard thread per configured shard, splits
//! client batches by partition and hands each part to the shard that owns it.
//!
//! Every call is asynchronous with a reply callback (the network server answers from it); the
//! `*_blocking` variants wait for that callback and suit tools, tests and embedded users.

use std::fs;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use net::protocol::{AccountRead, TransferLookup};
use net::types::{partition_of, Account, CreateAccount, ItemResult, Transfer, TransferId};
use serde::{Deserialize, Serialize};

use crate::config::{NodeConfig, BATCH_ITEMS_MAX};
use crate::error::EngineError;
use crate::history::HistoryPage;
use crate::join::{self, BatchReply};
use crate::shard::{Shard, ShardCommand, ShardRecovery, ShardStatus};

/// Name of the file that fixes a data directory's identity and layout.
pub const MANIFEST_FILE: &str = "node.toml";
/// Version of the data directory layout (manifest, shard folders, log, store and id-index formats).
/// 2: the idempotency window is judged in time, older ids live in id-index run files, the id hash is
/// keyed per directory. Format 1 directories are refused (their logs were decided under the count
/// bound and watermark; replaying them under the time rule would re-decide them differently).
pub const DATA_FORMAT_VERSION: u32 = 2;
/// Longest a blocking call waits for its answer before reporting the node unavailable.
pub const BLOCKING_CALL_TIMEOUT_MS: u64 = 60_000;
/// Most history entries one page may carry: the protocol's limit.
pub const HISTORY_PAGE_ENTRIES_MAX: usize = net::protocol::HISTORY_LIMIT_MAX as usize;

/// What a data directory was created with; a node refuses to open it with anything else.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Hex, because TOML integers stop at i64.
    pub cluster_id: String,
    pub partitions: u32,
    pub shards: u32,
    /// Replay re-decides every logged transfer against the id table, so the table's bounds are part
    /// of the log's meaning: changing them would make a replay disagree with what was answered.
    pub idempotency_window_ms: u64,
    pub idempotency_ids_max: usize,
    /// Random key of the transfer-id hash, created with the directory (hex).
    pub id_hash_key: String,
}

/// A random 64-bit key from the kernel (for a new data directory's id hash).
pub fn new_id_hash_key() -> Result<u64, std::io::Error> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Parses a manifest after checking its `format_version`, so a directory of another format is refused
/// with a message naming both formats rather than a field-by-field parse error.
pub fn parse_manifest<T: serde::de::DeserializeOwned>(text: &str, expected_version: u32) -> Result<T, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    match table.get("format_version").and_then(|v| v.as_integer()) {
        Some(found) if found == expected_version as i64 => toml::from_str(text).map_err(|e| e.to_string()),
        Some(found) => Err(format!(
            "data format {found} was written by another version of walletd; this build reads format              {expected_version} only (format 2 judges the idempotency window in time and keeps older ids in              id-index files; a format 1 log cannot be replayed under it). Start a new data directory."
        )),
        None => Err("the manifest has no format_version".into()),
    }
}

impl Manifest {
    fn of(config: &NodeConfig) -> Manifest {
        Manifest {
            format_version: DATA_FORMAT_VERSION,
            cluster_id: format!("{:x}", config.cluster_id),
            partitions: config.partitions,
            shards: config.shards,
            idempotency_window_ms: config.idempotency_window_ms,
            idempotency_ids_max: config.idempotency_ids_max,
            id_hash_key: format!("{:x}", config.id_hash_key),
        }
    }

    pub fn id_hash_key(&self) -> Option<u64> {
        u64::from_str_radix(&self.id_hash_key, 16).ok()
    }

    /// The node configuration this data directory was created with, on top of `base` for the settings
    /// that may change between runs.
    pub fn apply_to(&self, base: NodeConfig) -> NodeConfig {
        NodeConfig {
            cluster_id: self.cluster_id().unwrap_or(base.cluster_id),
            partitions: self.partitions,
            shards: self.shards,
            idempotency_window_ms: self.idempotency_window_ms,
            idempotency_ids_max: self.idempotency_ids_max,
            id_hash_key: self.id_hash_key().unwrap_or(base.id_hash_key),
            ..base
        }
    }

    /// Reads the manifest of a data directory, if it has one.
    pub fn read(data_dir: &Path) -> Result<Option<Manifest>, EngineError> {
        let path = data_dir.join(MANIFEST_FILE);
        let manifest_error = |why: String| EngineError::Manifest { path: path.display().to_string(), why };
        match fs::read_to_string(&path) {
            Ok(text) => parse_manifest(&text, DATA_FORMAT_VERSION).map(Some).map_err(manifest_error),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(manifest_error(e.to_string())),
        }
    }

    pub fn cluster_id(&self) -> Option<u128> {
        u128::from_str_radix(&self.cluster_id, 16).ok()
    }

    /// Creates the manifest of a new data directory (with a new random id-hash key), or checks an
    /// existing one against the config (all but the key, which the directory alone decides).
    pub fn create_or_check(config: &NodeConfig) -> Result<Manifest, EngineError> {
        let path = config.data_dir.join(MANIFEST_FILE);
        let manifest_error = |why: String| EngineError::Manifest { path: path.display().to_string(), why };
        let mut wanted = Manifest::of(config);
        if let Some(found) = Manifest::read(&config.data_dir)? {
            if found.id_hash_key().is_none() {
                return Err(manifest_error(format!("id_hash_key {:?} is not a hex u64", found.id_hash_key)));
            }
            wanted.id_hash_key = found.id_hash_key.clone();
            if found != wanted {
                return Err(manifest_error(format!(
                    "created with {found:?}, but the configuration asks for {wanted:?}; partitions, shards, cluster id and idempotency bounds are fixed at creation"
                )));
            }
            return Ok(found);
        }
        fs::create_dir_all(&config.data_dir).map_err(|e| manifest_error(e.to_string()))?;
        let key = new_id_hash_key().map_err(|e| manifest_error(format!("cannot draw a random id-hash key: {e}")))?;
        wanted.id_hash_key = format!("{key:x}");
        let text = toml::to_string(&wanted).map_err(|e| manifest_error(e.to_string()))?;
        let temporary = path.with_extension("toml.tmp");
        fs::write(&temporary, text).map_err(|e| manifest_error(e.to_string()))?;
        let file = fs::File::open(&temporary).map_err(|e| manifest_error(e.to_string()))?;
        file.sync_all().map_err(|e| manifest_error(e.to_string()))?;
        fs::rename(&temporary, &path).map_err(|e| manifest_error(e.to_string()))?;
        fs::File::open(&config.data_dir).and_then(|dir| dir.sync_all()).map_err(|e| manifest_error(e.to_string()))?;
        Ok(wanted)
    }
}

/// What opening the node found and did.
#[derive(Clone, Debug, Default)]
pub struct NodeRecovery {
    pub shards: Vec<ShardRecovery>,
    pub elapsed: Duration,
}

/// An exclusive lock on a data directory (`flock` on `node.lock`), held while a node or a tool uses
/// it, so that two processes never write the same logs. The kernel drops it when the process dies.
pub struct DataDirLock {
    _file: fs::File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, EngineError> {
        use std::os::fd::AsRawFd;
        let path = data_dir.join("node.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| EngineError::Manifest { path: path.display().to_string(), why: e.to_string() })?;
        // SAFETY: flock on a file descriptor we own; it has no memory-safety preconditions.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(EngineError::Manifest {
                path: data_dir.display().to_string(),
                why: "the data directory is in use by another process".into(),
            });
        }
        Ok(DataDirLock { _file: file })
    }

    /// For audit tools: the same exclusive lock (no node may start while they read), but the lock file
    /// is opened read-only and never created, so the audit changes nothing in the directory. A
    /// directory without one was never opened by a node; nothing is locked then.
    pub fn acquire_for_audit(data_dir: &Path) -> Result<Option<DataDirLock>, EngineError> {
        use std::os::fd::AsRawFd;
        let path = data_dir.join("node.lock");
        let file = match fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::Manifest { path: path.display().to_string(), why: e.to_string() }),
        };
        // SAFETY: flock on a file descriptor we own; it has no memory-safety preconditions.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(EngineError::Manifest {
                path: data_dir.display().to_string(),
                why: "the data directory is in use by another process (stop the node before auditing it)".into(),
            });
        }
        Ok(Some(DataDirLock { _file: file }))
    }
}

pub struct Node {
    config: NodeConfig,
    _lock: DataDirLock,
    senders: Vec<Sender<ShardCommand>>,
    threads: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens (creating if new) the node's data directory, recovers every shard, starts the shard threads.
    pub fn open(config: NodeConfig) -> Result<(Node, NodeRecovery), EngineError> {
        let started = Instant::now();
        config.validate()?;
        let manifest = Manifest::create_or_check(&config)?;
        let config = manifest.apply_to(config);
        let lock = DataDirLock::acquire(&config.data_dir)?;
        // Shards recover in parallel: each replays only its own log.
        let opened: Vec<Result<(Shard, ShardRecovery), EngineError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..config.shards)
                .map(|id| {
                    let config = &config;
                    scope.spawn(move || Shard::open(id, config))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Io("shard recovery panicked".into()))))
                .collect()
        });
        let mut shards = Vec::new();
        let mut recovery = NodeRecovery::default();
        for result in opened {
            let (shard, report) = result?;
            recovery.shards.push(report);
            shards.push(shard);
        }
        let cores = if config.pin_cores { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for (index, shard) in shards.into_iter().enumerate() {
            let (sender, receiver) = bounded(config.shard_queue_depth_max);
            let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    shard.run(receiver)
                })
                .map_err(|e| EngineError::Io(format!("cannot start shard thread: {e}")))?;
            senders.push(sender);
            threads.push(thread);
        }
        recovery.elapsed = started.elapsed();
        Ok((Node { config, _lock: lock, senders, threads }, recovery))
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn partition_of(&self, account_id: u64) -> u32 {
        partition_of(account_id, self.config.partitions)
    }

    fn shard_of_partition(&self, partition: u32) -> usize {
        (partition % self.config.shards) as usize
    }

    fn send(&self, shard: usize, command: ShardCommand) -> Result<(), EngineError> {
        self.senders[shard].send(command).map_err(|_| EngineError::ShuttingDown)
    }

    /// Submits transfers; `reply` gets one result per transfer, in order, once all are durable.
    pub fn create_transfers(&self, transfers: Vec<Transfer>, reply: BatchReply) -> Result<(), EngineError> {
        self.submit_items(
            transfers,
            |t| t.debit_account_id,
            reply,
            |partition, items, part| ShardCommand::Transfers { partition, items, part },
        )
    }

    /// Creates accounts; `reply` gets one result per account, in order, once all are durable.
    pub fn create_accounts(&self, accounts: Vec<CreateAccount>, reply: BatchReply) -> Result<(), EngineError> {
        self.submit_items(
            accounts,
            |a| a.id,
            reply,
            |partition, items, part| ShardCommand::CreateAccounts { partition, items, part },
        )
    }

    fn submit_items<T: Copy>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> u64,
        reply: BatchReply,
        command: impl Fn(u32, Vec<T>, join::BatchPart) -> ShardCommand,
    ) -> Result<(), EngineError> {
        for (partition, part_items, part) in split_by_partition(&items, self.config.partitions, key, reply)? {
            let shard = self.shard_of_partition(partition);
            if let Err(ShardCommand::Transfers { part, .. } | ShardCommand::CreateAccounts { part, .. }) =
                self.senders[shard].send(command(partition, part_items, part)).map_err(|e| e.into_inner())
            {
                part.complete(Err(EngineError::ShuttingDown));
            }
        }
        Ok(())
    }

    /// Looks accounts up; answers after everything they could reflect is durable. Each read's
    /// `at_least_seq` is the lowest sequence its partition must have applied first (0: none): the
    /// lookup waits for it up to `read_wait_timeout_ms`, then is refused `Unavailable`.
    pub fn lookup_accounts(&self, reads: Vec<AccountRead>, reply: LookupReply) -> Result<(), EngineError> {
        if reads.len() > BATCH_ITEMS_MAX {
            return Err(EngineError::BatchTooLarge { items: reads.len(), limit: BATCH_ITEMS_MAX });
        }
        let mut per_shard: Vec<(Vec<(u32, u64)>, Vec<(u32, u64)>)> = vec![Default::default(); self.senders.len()];
        for (slot, read) in reads.iter().enumerate() {
            let partition = self.partition_of(read.id);
            let (ids, at_least) = &mut per_shard[self.shard_of_partition(partition)];
            ids.push((slot as u32, read.id));
            if read.at_least_seq > 0 {
                match at_least.iter_mut().find(|(p, _)| *p == partition) {
                    Some((_, seq)) => *seq = (*seq).max(read.at_least_seq),
                    None => at_least.push((partition, read.at_least_seq)),
                }
            }
        }
        let used: Vec<(usize, (Vec<(u32, u64)>, Vec<(u32, u64)>))> =
            per_shard.into_iter().enumerate().filter(|(_, (ids, _))| !ids.is_empty()).collect();
        if used.is_empty() {
            reply(Ok(Vec::new()));
            return Ok(());
        }
        let gather = LookupGather::new(reads.len(), used.len(), reply);
        for (shard, (ids, at_least)) in used {
            let gather = gather.clone();
            let reply = Box::new(move |answers| gather.deliver(answers));
            self.send(shard, ShardCommand::Lookup { ids, at_least, reply })?;
        }
        Ok(())
    }

    /// What became of each transfer id within the idempotency window: the entry that decided it and the
    /// transfer as logged (without it once the log no longer holds the event), or `None`. Any partition may hold an id (a transfer belongs to its debit
    /// account's partition), so every shard is asked; should two partitions have decided the same id
    /// for different transfers, the lower partition's answer is given.
    pub fn lookup_transfers(
        &self,
        ids: Vec<TransferId>,
        reply: LookupReply<TransferLookup>,
    ) -> Result<(), EngineError> {
        let Some(reply) = admit_transfer_lookup(&ids, reply)? else { return Ok(()) };
        let ids = std::sync::Arc::new(ids);
        let gather = LookupGather::new(ids.len(), self.senders.len(), reply);
        for shard in 0..self.senders.len() {
            let gather = gather.clone();
            let reply = Box::new(move |answers| gather.deliver_keyed(answers));
            self.send(shard, ShardCommand::LookupTransfers { ids: ids.clone(), reply })?;
        }
        Ok(())
    }

    /// One page of an account's history, newest first, starting at `from_seq` (or the newest event).
    pub fn history(
        &self,
        account_id: u64,
        from_seq: Option<u64>,
        limit: usize,
        reply: Box<dyn FnOnce(Result<HistoryPage, EngineError>) + Send>,
    ) -> Result<(), EngineError> {
        let limit = limit.clamp(1, HISTORY_PAGE_ENTRIES_MAX);
        let shard = self.shard_of_partition(self.partition_of(account_id));
        self.send(shard, ShardCommand::History { account_id, from_seq: from_seq.unwrap_or(u64::MAX), limit, reply })
    }

    /// Every shard's status.
    pub fn status(&self, reply: Box<dyn FnOnce(Vec<ShardStatus>) + Send>) -> Result<(), EngineError> {
        let gather = PartsGather::new(self.senders.len(), |s: &ShardStatus| s.shard, reply);
        for shard in 0..self.senders.len() {
            let gather = gather.clone();
            self.send(shard, ShardCommand::Status { reply: Box::new(move |status| gather.deliver([status])) })?;
        }
        Ok(())
    }

    pub fn create_transfers_blocking(&self, transfers: Vec<Transfer>) -> Result<Vec<ItemResult>, EngineError> {
        blocking(|reply| self.create_transfers(transfers, reply))?
    }

    pub fn create_accounts_blocking(&self, accounts: Vec<CreateAccount>) -> Result<Vec<ItemResult>, EngineError> {
        blocking(|reply| self.create_accounts(accounts, reply))?
    }

    pub fn lookup_accounts_blocking(&self, ids: Vec<u64>) -> Result<Vec<Option<Account>>, EngineError> {
        let reads = ids.into_iter().map(|id| AccountRead { id, at_least_seq: 0 }).collect();
        blocking(|reply| self.lookup_accounts(reads, reply))?
    }

    pub fn history_blocking(
        &self,
        account_id: u64,
        from_seq: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, EngineError> {
        blocking(|reply| self.history(account_id, from_seq, limit, reply))?
    }

    pub fn lookup_transfers_blocking(&self, ids: Vec<TransferId>) -> Result<Vec<Option<TransferLookup>>, EngineError> {
        blocking(|reply| self.lookup_transfers(ids, reply))?
    }

    pub fn status_blocking(&self) -> Result<Vec<ShardStatus>, EngineError> {
        blocking(|reply| self.status(reply))
    }

    /// Forces a checkpoint on every shard (tests and operators; shards also checkpoint on their own).
    pub fn checkpoint_blocking(&self) -> Result<(), EngineError> {
        for shard in 0..self.senders.len() {
            blocking(|reply| self.send(shard, ShardCommand::Checkpoint { reply }))??;
        }
        Ok(())
    }

    /// Finishes in-flight work, checkpoints and flushes every shard, and stops their threads.
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        let mut first_error = None;
        for shard in 0..self.senders.len() {
            let outcome = blocking(|reply| self.send(shard, ShardCommand::Shutdown { reply })).and_then(|r| r);
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
        }
        self.senders.clear();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                first_error.get_or_insert(EngineError::Io("a shard thread panicked".into()));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Closing the queues makes every shard finish its round, checkpoint and exit.
        self.senders.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Splits a client batch by partition: `(partition, its items, its share of the reply)`, partitions in
/// the order they first appear. An empty batch is answered at once and yields nothing.
pub(crate) fn split_by_partition<T: Copy>(
    items: &[T],
    partitions: u32,
    key: impl Fn(&T) -> u64,
    reply: BatchReply,
) -> Result<Vec<(u32, Vec<T>, join::BatchPart)>, EngineError> {
    if items.len() > BATCH_ITEMS_MAX {
        return Err(EngineError::BatchTooLarge { items: items.len(), limit: BATCH_ITEMS_MAX });
    }
    if items.is_empty() {
        reply(Ok(Vec::new()));
        return Ok(Vec::new());
    }
    let mut slot_of_partition = vec![u32::MAX; partitions as usize];
    let mut groups: Vec<(u32, Vec<u32>)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let partition = partition_of(key(item), partitions);
        let slot = &mut slot_of_partition[partition as usize];
        if *slot == u32::MAX {
            *slot = groups.len() as u32;
            groups.push((partition, Vec::new()));
        }
        groups[*slot as usize].1.push(index as u32);
    }
    let (partition_ids, indices): (Vec<u32>, Vec<Vec<u32>>) = groups.into_iter().unzip();
    let parts = join::split(items.len(), indices, reply);
    Ok(partition_ids
        .into_iter()
        .zip(parts)
        .map(|(partition, part)| {
            let part_items = part.indices().iter().map(|&i| items[i as usize]).collect();
            (partition, part_items, part)
        })
        .collect())
}

/// Calls `submit` with a reply callback and waits for that callback's value.
pub(crate) fn blocking<T: Send + 'static>(
    submit: impl FnOnce(Box<dyn FnOnce(T) + Send>) -> Result<(), EngineError>,
) -> Result<T, EngineError> {
    let (sender, receiver) = bounded(1);
    submit(Box::new(move |value| {
        let _ = sender.send(value);
    }))?;
    receiver
        .recv_timeout(Duration::from_millis(BLOCKING_CALL_TIMEOUT_MS))
        .map_err(|_| EngineError::Io(format!("no answer within {BLOCKING_CALL_TIMEOUT_MS} ms")))
}

/// Collects one part from each of `parts` shards and replies once, with every part's items sorted by
/// `key`, when the last arrives.
pub(crate) struct PartsGather<T> {
    state: std::sync::Arc<std::sync::Mutex<PartsGatherState<T>>>,
    key: fn(&T) -> u32,
}

type PartsReply<T> = Box<dyn FnOnce(Vec<T>) + Send>;

struct PartsGatherState<T> {
    items: Vec<T>,
    remaining: usize,
    reply: Option<PartsReply<T>>,
}

impl<T> Clone for PartsGather<T> {
    fn clone(&self) -> Self {
        PartsGather { state: self.state.clone(), key: self.key }
    }
}

impl<T> PartsGather<T> {
    pub(crate) fn new(parts: usize, key: fn(&T) -> u32, reply: PartsReply<T>) -> Self {
        let state = PartsGatherState { items: Vec::new(), remaining: parts, reply: Some(reply) };
        PartsGather { state: std::sync::Arc::new(std::sync::Mutex::new(state)), key }
    }

    pub(crate) fn deliver(&self, part: impl IntoIterator<Item = T>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.items.extend(part);
        state.remaining -= 1;
        if state.remaining == 0 {
            let mut all = std::mem::take(&mut state.items);
            all.sort_by_key(self.key);
            let reply = state.reply.take().expect("answered once");
            drop(state);
            reply(all);
        }
    }
}

/// Admits a transfer lookup in either runtime: one over the batch limit is refused, an empty one is
/// answered at once; `Some(reply)`: the caller asks its partitions.
pub(crate) fn admit_transfer_lookup<T>(
    ids: &[TransferId],
    reply: LookupReply<T>,
) -> Result<Option<LookupReply<T>>, EngineError> {
    if ids.len() > BATCH_ITEMS_MAX {
        return Err(EngineError::BatchTooLarge { items: ids.len(), limit: BATCH_ITEMS_MAX });
    }
    if ids.is_empty() {
        reply(Ok(Vec::new()));
        return Ok(None);
    }
    Ok(Some(reply))
}

pub(crate) type LookupReply<T = Account> = Box<dyn FnOnce(Result<Vec<Option<T>>, EngineError>) + Send>;

/// Gathers per-slot answers from several shards; a slot keeps the first answer found for it (for
/// accounts, one shard answers each slot; for transfer ids, every shard answers every slot, and the
/// answer with the lower key wins, so the merge does not depend on which shard answers first).
pub(crate) struct LookupGather<T = Account>(std::sync::Arc<std::sync::Mutex<LookupGatherState<T>>>);

impl<T> Clone for LookupGather<T> {
    fn clone(&self) -> Self {
        LookupGather(self.0.clone())
    }
}

struct LookupGatherState<T> {
    answers: Vec<Option<(u32, T)>>,
    error: Option<EngineError>,
    remaining: usize,
    reply: Option<LookupReply<T>>,
}

impl<T> LookupGather<T> {
    pub(crate) fn new(len: usize, parts: usize, reply: LookupReply<T>) -> Self {
        LookupGather(std::sync::Arc::new(std::sync::Mutex::new(LookupGatherState {
            answers: (0..len).map(|_| None).collect(),
            error: None,
            remaining: parts,
            reply: Some(reply),
        })))
    }

    pub(crate) fn deliver(&self, part: Result<Vec<(u32, Option<T>)>, EngineError>) {
        self.deliver_keyed(part.map(|answers| answers.into_iter().map(|(slot, value)| (slot, 0, value)).collect()))
    }

    /// `(slot, key, answer)`: among answers for one slot, the lowest key is kept.
    pub(crate) fn deliver_keyed(&self, part: Result<Vec<(u32, u32, Option<T>)>, EngineError>) {
        let mut state = self.0.lock().expect("lookup gather lock is never poisoned");
        match part {
            Ok(answers) => {
                for (slot, key, value) in answers {
                    let Some(value) = value else { continue };
                    let held = &mut state.answers[slot as usize];
                    if held.as_ref().is_none_or(|(held_key, _)| key < *held_key) {
                        *held = Some((key, value));
                    }
                }
            }
            Err(error) => {
                state.error.get_or_insert(error);
            }
        }
        state.remaining -= 1;
        if state.remaining == 0 {
            let reply = state.reply.take().expect("answered once");
            let answer = match state.error.take() {
                Some(error) => Err(error),
                None => Ok(std::mem::take(&mut state.answers).into_iter().map(|a| a.map(|(_, v)| v)).collect()),
            };
            drop(state);
            reply(answer);
        }
    }
}
