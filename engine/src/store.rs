//! RocksDB state store: one instance per shard, derived entirely from the shard's event log.
//!
//! RocksDB's own WAL is off: the event log is the write-ahead log. A checkpoint is ONE `WriteBatch`
//! (dirty accounts, id-table changes, partition metadata, batch-index rows and the applied log index)
//! written without WAL and without a forced flush. RocksDB only ever persists whole write batches, in
//! order, when it flushes a memtable, so after a crash the store holds some earlier checkpoint in full,
//! and its `applied_index` says exactly where log replay must resume. A clean shutdown flushes.
//!
//! Keys (big-endian integers so that RocksDB's byte order is numeric order):
//! - `M`                                  → applied log index (u64) + format version (u32)
//! - `P` partition u32                    → partition meta: last_seq, last_timestamp_ns, next id arrival,
//!   first id arrival still in memory (older ids are in the id-index run files)
//! - `A` partition u32, account u64       → account row (`Account` wire layout, 56 bytes)
//! - `I` partition u32, position u64      → a chunk of in-memory id-table entries: arrivals `position..`
//!   in order (each: id u128, fingerprint u128, code u16, seq u64, recorded_ns u64 = 50 bytes)
//! - `B` partition u32, first_seq u64     → log index of the event batch that starts at first_seq

use std::path::Path;
use std::sync::Arc;

use net::types::{Account, ResultCode};
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use crate::idempotency::IdEntry;

/// Version of the key/value layout above; a store written by another version is refused.
pub const STORE_FORMAT_VERSION: u32 = 3;
/// RocksDB memtable size: bounds memory between flushes and the size of one flush.
pub const STORE_WRITE_BUFFER_BYTES: usize = 64 << 20;

const KEY_META: &[u8] = b"M";
const PREFIX_PARTITION: u8 = b'P';
const PREFIX_ACCOUNT: u8 = b'A';
const PREFIX_ID: u8 = b'I';
const PREFIX_BATCH: u8 = b'B';
pub(crate) const ID_ENTRY_BYTES: usize = 16 + 16 + 2 + 8 + 8;
const PARTITION_ROW_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store at {path}: {source}")]
    Rocks { path: String, source: rocksdb::Error },
    #[error("state store at {path} has format version {found}, this build reads {expected}")]
    FormatVersion { path: String, found: u32, expected: u32 },
    #[error("state store at {path}: corrupt row under key {key:02x?}: {why}")]
    CorruptRow { path: String, key: Vec<u8>, why: &'static str },
}

/// What a partition needs besides its rows to resume exactly where the checkpoint left it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionMeta {
    pub last_seq: u64,
    pub last_timestamp_ns: u64,
    /// Arrival number of the next id the table records (ids are numbered in arrival = seq order).
    pub ids_next_arrival: u64,
    /// Arrival number of the oldest id in memory at the checkpoint: the chunks hold arrivals
    /// `ids_head_arrival..ids_next_arrival`; older ones are in the id-index run files.
    pub ids_head_arrival: u64,
}

/// Everything one checkpoint writes, gathered by the shard as plain rows (copies, no encoding) and
/// written by its retention thread (`Store::write_checkpoint`), so the shard round pays only the copy.
#[derive(Default)]
pub struct Checkpoint {
    accounts: Vec<(u32, Account)>,
    id_chunks: Vec<(u32, u64, Vec<IdEntry>)>,
    deleted_id_chunks: Vec<(u32, u64)>,
    metas: Vec<(u32, PartitionMeta)>,
    batch_rows: Vec<(u32, u64, u64)>,
}

impl Checkpoint {
    pub fn put_account(&mut self, partition: u32, account: &Account) {
        self.accounts.push((partition, *account));
    }

    /// One row for every id entry a checkpoint adds: the id table costs the store one write per
    /// partition per checkpoint, not one per transfer.
    pub fn put_id_chunk(&mut self, partition: u32, position: u64, entries: Vec<IdEntry>) {
        self.id_chunks.push((partition, position, entries));
    }

    /// Drops a chunk whose entries are all in written id-index runs.
    pub fn delete_id_chunk(&mut self, partition: u32, position: u64) {
        self.deleted_id_chunks.push((partition, position));
    }

    pub fn put_partition_meta(&mut self, partition: u32, meta: &PartitionMeta) {
        self.metas.push((partition, *meta));
    }

    pub fn put_batch_index(&mut self, partition: u32, first_seq: u64, log_index: u64) {
        self.batch_rows.push((partition, first_seq, log_index));
    }

    /// The id-entry buffers this checkpoint carried, emptied, for the shard to fill again: memory it
    /// has already faulted in, instead of fresh pages every checkpoint.
    pub fn into_id_buffers(self) -> Vec<Vec<IdEntry>> {
        self.id_chunks
            .into_iter()
            .map(|(_, _, mut entries)| {
                entries.clear();
                entries
            })
            .collect()
    }

    /// The RocksDB batch of these rows, in the order they were gathered.
    fn encode(&self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let mut account_value = [0u8; Account::WIRE_BYTES];
        for (partition, account) in &self.accounts {
            account.encode_into(&mut account_value);
            batch.put(account_key(*partition, account.id), account_value);
        }
        for (partition, position, entries) in &self.id_chunks {
            let mut value = Vec::with_capacity(entries.len() * ID_ENTRY_BYTES);
            for entry in entries {
                value.extend_from_slice(&encode_id_entry(entry));
            }
            batch.put(id_chunk_key(*partition, *position), value);
        }
        for (partition, position) in &self.deleted_id_chunks {
            batch.delete(id_chunk_key(*partition, *position));
        }
        for (partition, meta) in &self.metas {
            let mut value = [0u8; PARTITION_ROW_BYTES];
            value[0..8].copy_from_slice(&meta.last_seq.to_le_bytes());
            value[8..16].copy_from_slice(&meta.last_timestamp_ns.to_le_bytes());
            value[16..24].copy_from_slice(&meta.ids_next_arrival.to_le_bytes());
            value[24..32].copy_from_slice(&meta.ids_head_arrival.to_le_bytes());
            batch.put(partition_key(*partition), value);
        }
        for (partition, first_seq, log_index) in &self.batch_rows {
            batch.put(batch_key(*partition, *first_seq), log_index.to_le_bytes());
        }
        batch
    }
}

/// Cloning shares the open database: the shard writes checkpoints through one handle while its base
/// maker (`engine::base`) takes RocksDB checkpoints and prunes batch-index rows through another.
pub struct Store {
    db: Arc<DB>,
    path: String,
    write_options: WriteOptions,
}

impl Clone for Store {
    fn clone(&self) -> Self {
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        Store { db: Arc::clone(&self.db), path: self.path.clone(), write_options }
    }
}

impl Store {
    /// Opens (creating if missing) the store of one shard.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_paranoid_checks(true);
        options.set_write_buffer_size(STORE_WRITE_BUFFER_BYTES);
        options.set_max_background_jobs(1);
        options.set_compression_type(rocksdb::DBCompressionType::None);
        Self::open_with(path, &options, false)
    }

    /// Opens an existing store without writing to it (for `verify` on a stopped node).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, &Options::default(), true)
    }

    fn open_with(path: &Path, options: &Options, read_only: bool) -> Result<Store, StoreError> {
        let path_text = path.display().to_string();
        let rocks = |source| StoreError::Rocks { path: path_text.clone(), source };
        let db = if read_only { DB::open_for_read_only(options, path, false) } else { DB::open(options, path) }
            .map_err(rocks)?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let store = Store { db: Arc::new(db), path: path_text, write_options };
        if let Some(version) = store.meta()?.map(|(_, version)| version) {
            if version != STORE_FORMAT_VERSION {
                return Err(StoreError::FormatVersion {
                    path: store.path,
                    found: version,
                    expected: STORE_FORMAT_VERSION,
                });
            }
        }
        Ok(store)
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    fn corrupt(&self, key: &[u8], why: &'static str) -> StoreError {
        StoreError::CorruptRow { path: self.path.clone(), key: key.to_vec(), why }
    }

    fn meta(&self) -> Result<Option<(u64, u32)>, StoreError> {
        let Some(value) = self.db.get(KEY_META).map_err(|e| self.rocks(e))? else { return Ok(None) };
        if value.len() != 12 {
            return Err(self.corrupt(KEY_META, "meta row is not 12 bytes"));
        }
        Ok(Some((le_u64(&value[0..8]), u32::from_le_bytes(value[8..12].try_into().expect("4 bytes")))))
    }

    /// The last log index whose effects are in the store (0 for a new store).
    pub fn applied_index(&self) -> Result<u64, StoreError> {
        Ok(self.meta()?.map_or(0, |(index, _)| index))
    }

    /// Writes one checkpoint atomically: its rows plus the applied index they correspond to.
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint, applied_index: u64) -> Result<(), StoreError> {
        let mut meta = [0u8; 12];
        meta[0..8].copy_from_slice(&applied_index.to_le_bytes());
        meta[8..12].copy_from_slice(&STORE_FORMAT_VERSION.to_le_bytes());
        let mut batch = checkpoint.encode();
        batch.put(KEY_META, meta);
        self.db.write_opt(batch, &self.write_options).map_err(|e| self.rocks(e))
    }

    /// Makes every checkpoint written so far durable (clean shutdown, or before trusting the store).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| self.rocks(e))
    }

    /// Writes a consistent copy of the store into `dir` (which must not exist): RocksDB flushes the
    /// memtable first, so the copy holds every checkpoint written before the call, hard-linked where it
    /// can be. The copy is a store of its own, opened like this one.
    pub fn copy_to(&self, dir: &Path) -> Result<(), StoreError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| self.rocks(e))?;
        checkpoint.create_checkpoint(dir).map_err(|e| self.rocks(e))
    }

    /// Deletes `partition`'s batch-index rows that point below `first_log_index` (their records were
    /// purged from the log). They are garbage, not state: a row left behind by a crash only makes history
    /// answer `HistoryCompacted` a step later, and the next purge deletes it. Returns the rows deleted.
    pub fn prune_batch_index(&self, partition: u32, first_log_index: u64) -> Result<u64, StoreError> {
        let prefix = partition_prefix(PREFIX_BATCH, partition);
        let mut pruned = 0u64;
        let mut keep_from = None;
        for row in self.db.iterator(IteratorMode::From(&prefix, Direction::Forward)) {
            let (key, value) = row.map_err(|e| self.rocks(e))?;
            if !key.starts_with(&prefix) {
                break;
            }
            if value.len() != 8 {
                return Err(self.corrupt(&key, "batch-index row is not 8 bytes"));
            }
            if le_u64(&value) >= first_log_index {
                keep_from = Some(key.to_vec());
                break;
            }
            pruned += 1;
        }
        if pruned == 0 {
            return Ok(0);
        }
        let end = keep_from.unwrap_or_else(|| partition_prefix(PREFIX_BATCH, partition + 1).to_vec());
        let mut batch = WriteBatch::default();
        batch.delete_range(prefix.as_slice(), end.as_slice());
        self.db.write_opt(batch, &self.write_options).map_err(|e| self.rocks(e))?;
        Ok(pruned)
    }

    pub fn partition_meta(&self, partition: u32) -> Result<Option<PartitionMeta>, StoreError> {
        let key = partition_key(partition);
        let Some(value) = self.db.get(key).map_err(|e| self.rocks(e))? else { return Ok(None) };
        if value.len() != PARTITION_ROW_BYTES {
            return Err(self.corrupt(&key, "partition row has the wrong size"));
        }
        Ok(Some(PartitionMeta {
            last_seq: le_u64(&value[0..8]),
            last_timestamp_ns: le_u64(&value[8..16]),
            ids_next_arrival: le_u64(&value[16..24]),
            ids_head_arrival: le_u64(&value[24..32]),
        }))
    }

    /// Every stored account of one partition.
    pub fn for_each_account(&self, partition: u32, mut visit: impl FnMut(Account)) -> Result<(), StoreError> {
        self.scan_prefix(&partition_prefix(PREFIX_ACCOUNT, partition), |store, key, value| {
            if value.len() != Account::WIRE_BYTES {
                return Err(store.corrupt(key, "account row has the wrong size"));
            }
            visit(Account::decode(value));
            Ok(())
        })
    }

    pub fn account(&self, partition: u32, id: u64) -> Result<Option<Account>, StoreError> {
        let key = account_key(partition, id);
        let Some(value) = self.db.get(key).map_err(|e| self.rocks(e))? else { return Ok(None) };
        if value.len() != Account::WIRE_BYTES {
            return Err(self.corrupt(&key, "account row has the wrong size"));
        }
        Ok(Some(Account::decode(&value)))
    }

    /// Every stored id-table chunk of one partition, in position order: (position, entries).
    pub fn id_chunks(&self, partition: u32) -> Result<Vec<(u64, Vec<IdEntry>)>, StoreError> {
        let mut chunks = Vec::new();
        self.scan_prefix(&partition_prefix(PREFIX_ID, partition), |store, key, value| {
            if key.len() != 13 || value.is_empty() || value.len() % ID_ENTRY_BYTES != 0 {
                return Err(store.corrupt(key, "id chunk is malformed"));
            }
            let entries: Option<Vec<IdEntry>> = value.chunks_exact(ID_ENTRY_BYTES).map(decode_id_entry).collect();
            let entries = entries.ok_or_else(|| store.corrupt(key, "id chunk holds an unknown result code"))?;
            chunks.push((be_u64(&key[5..13]), entries));
            Ok(())
        })?;
        Ok(chunks)
    }

    /// The log index of the stored batch of `partition` that contains `seq`: the batch-index row with
    /// the greatest first_seq ≤ seq. `None` when no stored batch starts at or before it.
    pub fn batch_containing(&self, partition: u32, seq: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let key = batch_key(partition, seq);
        let mut iter = self.db.iterator(IteratorMode::From(&key, Direction::Reverse));
        let Some(row) = iter.next() else { return Ok(None) };
        let (found_key, value) = row.map_err(|e| self.rocks(e))?;
        if found_key.len() != 13 || found_key[0] != PREFIX_BATCH || found_key[1..5] != partition.to_be_bytes() {
            return Ok(None);
        }
        if value.len() != 8 {
            return Err(self.corrupt(&found_key, "batch-index row is not 8 bytes"));
        }
        Ok(Some((be_u64(&found_key[5..13]), le_u64(&value))))
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&Store, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for row in self.db.iterator(IteratorMode::From(prefix, Direction::Forward)) {
            let (key, value) = row.map_err(|e| self.rocks(e))?;
            if !key.starts_with(prefix) {
                break;
            }
            visit(self, &key, &value)?;
        }
        Ok(())
    }
}

fn partition_prefix(prefix: u8, partition: u32) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = prefix;
    key[1..5].copy_from_slice(&partition.to_be_bytes());
    key
}

fn partition_key(partition: u32) -> [u8; 5] {
    partition_prefix(PREFIX_PARTITION, partition)
}

fn account_key(partition: u32, id: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..5].copy_from_slice(&partition_prefix(PREFIX_ACCOUNT, partition));
    key[5..13].copy_from_slice(&id.to_be_bytes());
    key
}

fn id_chunk_key(partition: u32, position: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..5].copy_from_slice(&partition_prefix(PREFIX_ID, partition));
    key[5..13].copy_from_slice(&position.to_be_bytes());
    key
}

fn batch_key(partition: u32, first_seq: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[..5].copy_from_slice(&partition_prefix(PREFIX_BATCH, partition));
    key[5..13].copy_from_slice(&first_seq.to_be_bytes());
    key
}

pub(crate) fn encode_id_entry(entry: &IdEntry) -> [u8; ID_ENTRY_BYTES] {
    let mut value = [0u8; ID_ENTRY_BYTES];
    value[0..16].copy_from_slice(&entry.id.to_le_bytes());
    value[16..32].copy_from_slice(&entry.fingerprint.to_le_bytes());
    value[32..34].copy_from_slice(&(entry.code as u16).to_le_bytes());
    value[34..42].copy_from_slice(&entry.seq.to_le_bytes());
    value[42..50].copy_from_slice(&entry.recorded_ns.to_le_bytes());
    value
}

pub(crate) fn decode_id_entry(value: &[u8]) -> Option<IdEntry> {
    Some(IdEntry {
        id: u128::from_le_bytes(value[0..16].try_into().ok()?),
        fingerprint: u128::from_le_bytes(value[16..32].try_into().ok()?),
        code: ResultCode::from_u16(u16::from_le_bytes([value[32], value[33]]))?,
        seq: le_u64(&value[34..42]),
        recorded_ns: le_u64(&value[42..50]),
    })
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("caller slices exactly 8 bytes"))
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("caller slices exactly 8 bytes"))
}
