//! The cold tier of the transfer-id table: immutable *runs* of decided ids, each a hash table with a
//! blocked Bloom filter in front, built off the shard thread and (on a node with a data directory)
//! written to one file per run and read back through `mmap`.
//!
//! A run holds the ids of a contiguous range of arrival numbers `first_arrival..end_arrival` (arrival
//! order = seq order) that the hot tier (`idempotency::IdTable`) sealed when it reached its in-memory
//! capacity. Its content is a pure function of the log, so every replica and every replay seals the
//! same runs; *when* a run is built, written and mapped is not, and never matters: until a run is
//! built, its entries stay in the hot tier, so a lookup over hot ∪ built runs is always exact.
//!
//! # Run layout (the same bytes in memory and in the file `{first_arrival:020}.ids`, little-endian)
//! - header, 128 bytes: `magic "WIDRUN1\n" (8) | partition u32 | filter_blocks u32 | first_arrival u64 |
//!   count u64 | slots u64 | min_id_ms u64 | end_arrival u64 | max_id_ms u64 | filter_checksum u64 =
//!   xxh3_64(filter) | zero [48] | header_checksum u64 = xxh3_64(bytes 0..120)`;
//! - filter: `filter_blocks` blocks of 512 bits; an id sets 6 bits of one block;
//! - slots: `slots` records of 64 bytes, open addressing with linear probing from the id's home slot;
//!   an empty slot is all zero (id 0 is never recorded). Record: `id u128 | fingerprint u128 | code u16
//!   | seq u64 | recorded_ns u64 | zero [6] | xxh3_64(bytes 0..56) u64`.
//!
//! Integrity without reading every byte at open (restart must not scale with the window): the header
//! is checked at open, the filter's checksum the first time the run is probed, and each record's own
//! checksum whenever it answers a lookup. A mismatch stops the process: a corrupt id index could
//! apply a retried transfer twice.
//!
//! Hashes are keyed with the data directory's random key (`hash_key`), so nobody can choose ids that
//! pile into one slot run or one filter block.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};
use memmap2::Mmap;
use net::types::{transfer_id_timestamp_ms, ResultCode, TransferId};
use thiserror::Error;
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64};

use crate::idempotency::IdEntry;

const RUN_MAGIC: &[u8; 8] = b"WIDRUN1\n";
pub const RUN_HEADER_BYTES: usize = 128;
pub const RUN_RECORD_BYTES: usize = 64;
const FILTER_BLOCK_BYTES: usize = 64;
/// Ids per filter block: 512 bits / 40 = 12.8 bits per id; with 6 bits set per id the false-positive
/// rate is about 0.5%.
const FILTER_IDS_PER_BLOCK: usize = 40;
const FILTER_BITS_PER_ID: u32 = 6;
/// Slots per id, as a ratio: 5 slots per 4 ids (80% full), short linear probe runs at 64 B per slot.
const SLOTS_PER_IDS_NUMERATOR: usize = 5;
const SLOTS_PER_IDS_DENOMINATOR: usize = 4;
/// Runs sealed but not yet built that a shard lets pile up before it waits for the builder.
pub const RUNS_UNBUILT_MAX: usize = 2;
const RUN_FILE_SUFFIX: &str = "ids";

/// Bytes one remembered id costs on disk, for the budget: its share of slots and filter plus the
/// header amortised over a run (rounded up).
pub const DISK_BYTES_PER_ID: u64 = (RUN_RECORD_BYTES * SLOTS_PER_IDS_NUMERATOR / SLOTS_PER_IDS_DENOMINATOR
    + FILTER_BLOCK_BYTES.div_ceil(FILTER_IDS_PER_BLOCK)) as u64;

#[derive(Debug, Error)]
pub enum IdIndexError {
    #[error("id index file {path}: {why}")]
    Corrupt { path: String, why: String },
    #[error("id index file {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdIndexError + '_ {
    move |source| IdIndexError::Io { path: path.display().to_string(), source }
}

/// The bytes of a run: built in memory, then (with a directory) mapped from its file.
enum RunBytes {
    Memory(Vec<u64>),
    Mapped(Mmap),
}

impl RunBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            RunBytes::Memory(words) => {
                // SAFETY: a `Vec<u64>` is a valid, initialised, 8-aligned byte region of 8x its length.
                unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), words.len() * 8) }
            }
            RunBytes::Mapped(map) => map,
        }
    }
}

/// What a sealed run is before it is built: its entries in arrival order.
struct Sealed {
    partition: u32,
    entries: Vec<IdEntry>,
}

/// One run; see the module documentation. Shared (`Arc`) between a partition's table, its clones (a
/// replica's speculative state) and the builder thread.
pub struct ColdRun {
    pub first_arrival: u64,
    pub end_arrival: u64,
    pub min_id_ms: u64,
    pub max_id_ms: u64,
    key: u64,
    /// `None` until built; then the run's bytes.
    bytes: RwLock<Option<RunBytes>>,
    /// Entries waiting for the builder (taken by it).
    sealed: std::sync::Mutex<Option<Sealed>>,
    built: AtomicBool,
    /// Written, fsynced and mapped (a run of a node without a directory is never durable).
    durable: AtomicBool,
    filter_checked: AtomicBool,
    /// Every id in the run is older than the window: the file may go once nobody holds the run.
    expired: AtomicBool,
    path: std::sync::Mutex<Option<PathBuf>>,
    /// Whether dropping an expired run deletes its file: never for a run an audit opened.
    removable: bool,
    /// Where the run is written once built; `None`: it stays in memory.
    dir: Option<Arc<PathBuf>>,
    /// Built, and written if it has a directory: its entries may leave the ring.
    ready: AtomicBool,
    /// Held by whoever settles the run (the builder, or the shard when the builder is behind).
    settling: std::sync::Mutex<()>,
}

impl std::fmt::Debug for ColdRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ColdRun")
            .field("first_arrival", &self.first_arrival)
            .field("end_arrival", &self.end_arrival)
            .field("built", &self.is_built())
            .field("durable", &self.is_durable())
            .finish()
    }
}

impl Drop for ColdRun {
    fn drop(&mut self) {
        if self.removable && self.expired.load(Ordering::Acquire) {
            if let Some(path) = self.path.get_mut().ok().and_then(|p| p.take()) {
                // Every id in it is answered `id_expired` without a lookup from now on; a file that
                // survives a crash here is removed at the next open for the same reason.
                if let Err(e) = fs::remove_file(&path) {
                    eprintln!("id index: could not remove expired run {}: {e}", path.display());
                }
            }
        }
    }
}

#[inline]
fn hash_id(id: TransferId, key: u64) -> u128 {
    xxh3_128_with_seed(&id.to_le_bytes(), key)
}

#[inline]
fn scaled(hash: u64, range: u64) -> u64 {
    ((hash as u128 * range as u128) >> 64) as u64
}

fn filter_bits(hash: u128) -> (u64, [u32; FILTER_BITS_PER_ID as usize]) {
    let high = (hash >> 64) as u64;
    let mut bits = [0u32; FILTER_BITS_PER_ID as usize];
    for (i, bit) in bits.iter_mut().enumerate() {
        *bit = ((high >> (i * 9)) & 511) as u32;
    }
    (hash as u64, bits)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn encode_record(entry: &IdEntry, out: &mut [u8]) {
    out[0..16].copy_from_slice(&entry.id.to_le_bytes());
    out[16..32].copy_from_slice(&entry.fingerprint.to_le_bytes());
    out[32..34].copy_from_slice(&(entry.code as u16).to_le_bytes());
    out[34..42].copy_from_slice(&entry.seq.to_le_bytes());
    out[42..50].copy_from_slice(&entry.recorded_ns.to_le_bytes());
    out[50..56].fill(0);
    let checksum = xxh3_64(&out[0..56]);
    out[56..64].copy_from_slice(&checksum.to_le_bytes());
}

fn decode_record(record: &[u8]) -> Option<IdEntry> {
    if xxh3_64(&record[0..56]) != le_u64(record, 56) || record[50..56].iter().any(|&b| b != 0) {
        return None;
    }
    Some(IdEntry {
        id: u128::from_le_bytes(record[0..16].try_into().ok()?),
        fingerprint: u128::from_le_bytes(record[16..32].try_into().ok()?),
        code: ResultCode::from_u16(u16::from_le_bytes([record[32], record[33]]))?,
        seq: le_u64(record, 34),
        recorded_ns: le_u64(record, 42),
    })
}

/// The layout numbers of a run of `count` ids.
fn layout(count: usize) -> (usize, usize) {
    let blocks = count.div_ceil(FILTER_IDS_PER_BLOCK).max(1);
    let slots = (count * SLOTS_PER_IDS_NUMERATOR).div_ceil(SLOTS_PER_IDS_DENOMINATOR).max(count + 1);
    (blocks, slots)
}

impl ColdRun {
    /// A sealed run of `entries` (arrivals `first_arrival..first_arrival + entries.len()` minus the
    /// expired ones the caller dropped: `end_arrival` says where the range ends). Not yet built.
    pub(crate) fn seal(
        partition: u32,
        key: u64,
        first_arrival: u64,
        end_arrival: u64,
        entries: Vec<IdEntry>,
        dir: Option<Arc<PathBuf>>,
    ) -> Self {
        assert_eq!(end_arrival, first_arrival + entries.len() as u64, "a run holds every arrival of its range");
        let min_id_ms = entries.iter().map(|e| transfer_id_timestamp_ms(e.id)).min().unwrap_or(0);
        let max_id_ms = entries.iter().map(|e| transfer_id_timestamp_ms(e.id)).max().unwrap_or(0);
        ColdRun {
            first_arrival,
            end_arrival,
            min_id_ms,
            max_id_ms,
            key,
            bytes: RwLock::new(None),
            sealed: std::sync::Mutex::new(Some(Sealed { partition, entries })),
            built: AtomicBool::new(false),
            durable: AtomicBool::new(false),
            filter_checked: AtomicBool::new(true),
            expired: AtomicBool::new(false),
            path: std::sync::Mutex::new(None),
            removable: true,
            dir,
            ready: AtomicBool::new(false),
            settling: std::sync::Mutex::new(()),
        }
    }

    /// Built and, if it has a directory, durable in its file.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Builds the run and writes it if it has a directory (idempotent; whichever thread comes first).
    /// A write error stops the process: the shard cannot forget these ids and cannot keep them all in
    /// memory, and answering without them could apply a retry twice.
    pub fn settle(&self) {
        let _settling = self.settling.lock().expect("settle lock is never poisoned");
        if self.is_ready() {
            return;
        }
        self.build();
        if let Some(dir) = &self.dir {
            if let Err(e) = self.write_to(dir) {
                panic!("id index: cannot write run {} of partition: {e}", self.first_arrival);
            }
        }
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_built(&self) -> bool {
        self.built.load(Ordering::Acquire)
    }

    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn mark_expired(&self) {
        self.expired.store(true, Ordering::Release);
    }

    pub fn count(&self) -> u64 {
        self.with_bytes(|bytes| le_u64(bytes, 24)).unwrap_or(0)
    }

    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let guard = self.bytes.read().expect("run bytes lock is never poisoned: no panics while held");
        guard.as_ref().map(|bytes| f(bytes.bytes()))
    }

    /// Builds the run's bytes from its sealed entries (builder thread; idempotent).
    pub fn build(&self) {
        let Some(sealed) = self.sealed.lock().expect("sealed lock").take() else {
            return;
        };
        let words = build_bytes(sealed.partition, self.key, self, &sealed.entries);
        *self.bytes.write().expect("run bytes lock") = Some(RunBytes::Memory(words));
        self.built.store(true, Ordering::Release);
    }

    /// The entry of `id` if this run holds it. Only called on a built run.
    pub fn find(&self, id: TransferId) -> Option<IdEntry> {
        if transfer_id_timestamp_ms(id) < self.min_id_ms || transfer_id_timestamp_ms(id) > self.max_id_ms {
            return None;
        }
        let hash = hash_id(id, self.key);
        let path = || self.path.lock().expect("path lock").clone().unwrap_or_default().display().to_string();
        self.with_bytes(|bytes| {
            let blocks = le_u32(bytes, 12) as u64;
            let slots = le_u64(bytes, 32);
            let filter = &bytes[RUN_HEADER_BYTES..RUN_HEADER_BYTES + blocks as usize * FILTER_BLOCK_BYTES];
            if !self.filter_checked.load(Ordering::Relaxed) {
                assert_eq!(
                    xxh3_64(filter),
                    le_u64(bytes, 64),
                    "id index run {} has a corrupt filter; refusing to decide ids against it",
                    path()
                );
                self.filter_checked.store(true, Ordering::Relaxed);
            }
            let (slot_hash, bits) = filter_bits(hash);
            let block = scaled((hash >> 64) as u64 ^ slot_hash.rotate_left(17), blocks) as usize;
            let block = &filter[block * FILTER_BLOCK_BYTES..(block + 1) * FILTER_BLOCK_BYTES];
            for bit in bits {
                if block[bit as usize / 8] & (1 << (bit % 8)) == 0 {
                    return None;
                }
            }
            let slots_at = RUN_HEADER_BYTES + blocks as usize * FILTER_BLOCK_BYTES;
            let mut slot = scaled(slot_hash, slots);
            loop {
                let at = slots_at + slot as usize * RUN_RECORD_BYTES;
                let record = &bytes[at..at + RUN_RECORD_BYTES];
                let record_id = u128::from_le_bytes(record[0..16].try_into().expect("16 bytes"));
                if record_id == 0 {
                    return None;
                }
                if record_id == id {
                    let entry = decode_record(record);
                    assert!(entry.is_some(), "id index run {} has a corrupt record at slot {slot}", path());
                    return entry;
                }
                slot = (slot + 1) % slots;
            }
        })
        .flatten()
    }

    /// Every entry of a built run, in slot order (snapshots and audits; reads the whole run).
    pub fn for_each(&self, mut f: impl FnMut(IdEntry)) {
        self.with_bytes(|bytes| {
            let blocks = le_u32(bytes, 12) as usize;
            let slots = le_u64(bytes, 32) as usize;
            let slots_at = RUN_HEADER_BYTES + blocks * FILTER_BLOCK_BYTES;
            for slot in 0..slots {
                let record = &bytes[slots_at + slot * RUN_RECORD_BYTES..slots_at + (slot + 1) * RUN_RECORD_BYTES];
                if record[0..16].iter().any(|&b| b != 0) {
                    f(decode_record(record).expect("a run's records are checked when built or opened"));
                }
            }
        });
    }

    /// Writes a built run to `dir`, fsyncs it and maps it in place of the memory copy.
    fn write_to(&self, dir: &Path) -> Result<(), IdIndexError> {
        let path = dir.join(run_file_name(self.first_arrival));
        let temporary = path.with_extension("ids.tmp");
        self.with_bytes(|bytes| -> Result<(), IdIndexError> {
            let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
            file.write_all(bytes).map_err(io_error(&temporary))?;
            file.sync_data().map_err(io_error(&temporary))
        })
        .expect("only built runs are written")?;
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
        let file = File::open(&path).map_err(io_error(&path))?;
        // SAFETY: run files are never modified after the rename; only this process writes the directory
        // (the data directory is flock'ed).
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(&path))?;
        *self.path.lock().expect("path lock") = Some(path);
        *self.bytes.write().expect("run bytes lock") = Some(RunBytes::Mapped(map));
        self.durable.store(true, Ordering::Release);
        Ok(())
    }

    /// Opens a run file written by [`ColdRun::write_to`]: checks its header and size (not its body:
    /// see the module documentation).
    pub fn open(path: &Path, partition: u32, key: u64) -> Result<ColdRun, IdIndexError> {
        Self::open_with(path, partition, key, true)
    }

    /// Opens a run file for an audit (`verify`, `walletctl state` from a base): the file is read,
    /// and never deleted when the replay finds its ids expired.
    pub fn open_for_audit(path: &Path, partition: u32, key: u64) -> Result<ColdRun, IdIndexError> {
        Self::open_with(path, partition, key, false)
    }

    /// The run's file, once written (or as opened).
    pub fn file_path(&self) -> Option<PathBuf> {
        self.path.lock().expect("path lock").clone()
    }

    fn open_with(path: &Path, partition: u32, key: u64, removable: bool) -> Result<ColdRun, IdIndexError> {
        let corrupt = |why: &str| IdIndexError::Corrupt { path: path.display().to_string(), why: why.to_string() };
        let file = File::open(path).map_err(io_error(path))?;
        // SAFETY: as in `write_to`.
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        if map.len() < RUN_HEADER_BYTES || &map[0..8] != RUN_MAGIC {
            return Err(corrupt("not an id index run (bad magic)"));
        }
        if xxh3_64(&map[0..120]) != le_u64(&map, 120) || map[72..120].iter().any(|&b| b != 0) {
            return Err(corrupt("header checksum mismatch"));
        }
        if le_u32(&map, 8) != partition {
            return Err(corrupt("run of another partition"));
        }
        let blocks = le_u32(&map, 12) as usize;
        let slots = le_u64(&map, 32) as usize;
        if map.len() != RUN_HEADER_BYTES + blocks * FILTER_BLOCK_BYTES + slots * RUN_RECORD_BYTES {
            return Err(corrupt("file size disagrees with its header"));
        }
        let run = ColdRun {
            first_arrival: le_u64(&map, 16),
            end_arrival: le_u64(&map, 48),
            min_id_ms: le_u64(&map, 40),
            max_id_ms: le_u64(&map, 56),
            key,
            bytes: RwLock::new(None),
            sealed: std::sync::Mutex::new(None),
            built: AtomicBool::new(true),
            durable: AtomicBool::new(true),
            filter_checked: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            path: std::sync::Mutex::new(Some(path.to_path_buf())),
            removable,
            dir: None,
            ready: AtomicBool::new(true),
            settling: std::sync::Mutex::new(()),
        };
        *run.bytes.write().expect("run bytes lock") = Some(RunBytes::Mapped(map));
        Ok(run)
    }
}

fn build_bytes(partition: u32, key: u64, run: &ColdRun, entries: &[IdEntry]) -> Vec<u64> {
    let (blocks, slots) = layout(entries.len());
    let total = RUN_HEADER_BYTES + blocks * FILTER_BLOCK_BYTES + slots * RUN_RECORD_BYTES;
    let mut words = crate::idempotency::zeroed_words_faulted_in(total / 8);
    // SAFETY: as in `RunBytes::bytes`, mutably; the Vec is not touched otherwise while this lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), total) };
    let (header, body) = bytes.split_at_mut(RUN_HEADER_BYTES);
    let (filter, slot_bytes) = body.split_at_mut(blocks * FILTER_BLOCK_BYTES);
    for entry in entries {
        assert!(entry.id != 0, "id 0 is never recorded");
        let hash = hash_id(entry.id, key);
        let (slot_hash, bits) = filter_bits(hash);
        let block = scaled((hash >> 64) as u64 ^ slot_hash.rotate_left(17), blocks as u64) as usize;
        for bit in bits {
            filter[block * FILTER_BLOCK_BYTES + bit as usize / 8] |= 1 << (bit % 8);
        }
        let mut slot = scaled(slot_hash, slots as u64) as usize;
        loop {
            let record = &mut slot_bytes[slot * RUN_RECORD_BYTES..(slot + 1) * RUN_RECORD_BYTES];
            if record[0..16].iter().all(|&b| b == 0) {
                encode_record(entry, record);
                break;
            }
            assert_ne!(&record[0..16], &entry.id.to_le_bytes(), "an id is sealed into a run twice");
            slot = (slot + 1) % slots;
        }
    }
    header[0..8].copy_from_slice(RUN_MAGIC);
    header[8..12].copy_from_slice(&partition.to_le_bytes());
    header[12..16].copy_from_slice(&(blocks as u32).to_le_bytes());
    header[16..24].copy_from_slice(&run.first_arrival.to_le_bytes());
    header[24..32].copy_from_slice(&(entries.len() as u64).to_le_bytes());
    header[32..40].copy_from_slice(&(slots as u64).to_le_bytes());
    header[40..48].copy_from_slice(&run.min_id_ms.to_le_bytes());
    header[48..56].copy_from_slice(&run.end_arrival.to_le_bytes());
    header[56..64].copy_from_slice(&run.max_id_ms.to_le_bytes());
    let filter_checksum = xxh3_64(filter);
    header[64..72].copy_from_slice(&filter_checksum.to_le_bytes());
    let checksum = xxh3_64(&header[0..120]);
    header[120..128].copy_from_slice(&checksum.to_le_bytes());
    words
}

pub fn run_file_name(first_arrival: u64) -> String {
    format!("{first_arrival:020}.{RUN_FILE_SUFFIX}")
}

/// The run files in `dir` (a partition's id-index folder), by first arrival; temporaries are removed.
pub fn list_runs(dir: &Path) -> Result<Vec<(u64, PathBuf)>, IdIndexError> {
    list_runs_with(dir, true)
}

/// As [`list_runs`], but changes nothing: temporaries are skipped, not removed (audits).
pub fn list_runs_read_only(dir: &Path) -> Result<Vec<(u64, PathBuf)>, IdIndexError> {
    list_runs_with(dir, false)
}

fn list_runs_with(dir: &Path, remove_temporaries: bool) -> Result<Vec<(u64, PathBuf)>, IdIndexError> {
    let mut runs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(runs),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if name.ends_with(".ids.tmp") {
            if remove_temporaries {
                fs::remove_file(&path).map_err(io_error(&path))?;
            }
            continue;
        }
        let Some(first) = name.strip_suffix(".ids").and_then(|n| n.parse::<u64>().ok()) else {
            return Err(IdIndexError::Corrupt {
                path: path.display().to_string(),
                why: "unexpected file in the id index folder".into(),
            });
        };
        runs.push((first, path));
    }
    runs.sort();
    Ok(runs)
}

/// The builder thread of one shard: settles sealed runs (builds them, and writes them for tables with a
/// directory), so the shard round never pays for it. If it falls behind, a table settles its oldest
/// run itself (`IdTable::insert`), so memory stays bounded.
pub struct RunBuilder {
    jobs: Option<Sender<Arc<ColdRun>>>,
    thread: Option<JoinHandle<()>>,
}

/// Runs queued for a builder before `submit` blocks.
const BUILDER_QUEUE_RUNS_MAX: usize = 64;

impl RunBuilder {
    pub fn start(name: String) -> RunBuilder {
        let (jobs, queue) = bounded::<Arc<ColdRun>>(BUILDER_QUEUE_RUNS_MAX);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || queue.iter().for_each(|run| run.settle()))
            .expect("spawning the id-index builder thread");
        RunBuilder { jobs: Some(jobs), thread: Some(thread) }
    }

    /// Queues `run` (blocks while the queue is full: backpressure).
    pub fn submit(&self, run: Arc<ColdRun>) {
        let queue: &Sender<Arc<ColdRun>> = self.jobs.as_ref().expect("open until dropped");
        // A send fails only if the builder thread died (a write error panicked it); the run is then
        // settled by the table itself, which reports the same error.
        let _ = queue.send(run);
    }
}

impl Drop for RunBuilder {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::types::transfer_id_from_parts;

    fn entry(n: u64) -> IdEntry {
        IdEntry {
            id: transfer_id_from_parts(1_000 + n % 7, n as u128 * 7919 + 1),
            fingerprint: n as u128 * 31,
            code: ResultCode::Ok,
            seq: n + 1,
            recorded_ns: n,
        }
    }

    #[test]
    fn built_run_finds_every_id_and_rejects_others_and_survives_a_file_round_trip() {
        let entries: Vec<IdEntry> = (0..5_000).map(entry).collect();
        let run = ColdRun::seal(3, 42, 100, 5_100, entries.clone(), None);
        run.build();
        for e in &entries {
            assert_eq!(run.find(e.id), Some(*e));
        }
        let mut false_positives_checked = 0;
        for n in 10_000..20_000 {
            assert_eq!(run.find(entry(n).id), None);
            false_positives_checked += 1;
        }
        assert_eq!(false_positives_checked, 10_000);
        let dir = tempfile::tempdir().expect("tempdir");
        run.write_to(dir.path()).expect("write");
        assert!(run.is_durable());
        let opened = ColdRun::open(&dir.path().join(run_file_name(100)), 3, 42).expect("open");
        assert_eq!((opened.first_arrival, opened.end_arrival), (100, 5_100));
        assert_eq!((opened.min_id_ms, opened.max_id_ms), (run.min_id_ms, run.max_id_ms));
        for e in &entries {
            assert_eq!(opened.find(e.id), Some(*e));
        }
        let mut all = Vec::new();
        opened.for_each(|e| all.push(e));
        all.sort_by_key(|e| e.seq);
        assert_eq!(all, entries);
        assert!(ColdRun::open(&dir.path().join(run_file_name(100)), 4, 42).is_err(), "another partition");
    }

    #[test]
    #[should_panic(expected = "corrupt record")]
    fn a_flipped_bit_in_a_record_stops_the_lookup() {
        let entries: Vec<IdEntry> = (0..100).map(entry).collect();
        let run = ColdRun::seal(0, 1, 0, 100, entries.clone(), None);
        run.build();
        let dir = tempfile::tempdir().expect("tempdir");
        run.write_to(dir.path()).expect("write");
        let path = dir.path().join(run_file_name(0));
        let mut bytes = fs::read(&path).expect("read");
        // Flip a bit in the seq of every occupied record.
        let blocks = le_u32(&bytes, 12) as usize;
        let slots = le_u64(&bytes, 32) as usize;
        for slot in 0..slots {
            let at = RUN_HEADER_BYTES + blocks * FILTER_BLOCK_BYTES + slot * RUN_RECORD_BYTES;
            if bytes[at..at + 16].iter().any(|&b| b != 0) {
                bytes[at + 35] ^= 1;
            }
        }
        fs::write(&path, &bytes).expect("write back");
        let opened = ColdRun::open(&path, 0, 1).expect("the header is intact");
        opened.find(entries[0].id);
    }
}
