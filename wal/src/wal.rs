//! The log itself: recovery on open, buffered appends, group commit through the ring, and
//! truncation at either end.

use crate::error::WalError;
use crate::format::{
    decode_segment_header, encode_record, record_bytes, RECORD_PAYLOAD_BYTES_MAX, SEGMENT_HEADER_BYTES,
};
use crate::reader::WalReader;
use crate::ring::{PairOutcome, SyncWriter};
use crate::segment::{
    create_segment_file, parse_segment_name, scan_segment, segment_path, sync_dir, zero_range, TEMP_SUFFIX,
};
use crate::terms::TermRuns;
use memmap2::Mmap;
use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Record offsets are kept as u32.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
pub const PENDING_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
const LOCK_FILE_NAME: &str = "LOCK";
/// Index of the first record of a log that never held one.
const FIRST_INDEX_FRESH: u64 = 1;

#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of each new segment file, preallocated up front.
    pub segment_bytes: u64,
    /// Largest payload `append` accepts; at most `RECORD_PAYLOAD_BYTES_MAX`.
    pub payload_bytes_max: usize,
    /// Appended bytes not yet written (pending, excluding the batch in flight).
    pub pending_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX,
            pending_bytes_max: PENDING_BYTES_MAX_DEFAULT,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        let record_bytes_max = record_bytes(self.payload_bytes_max) as u64;
        let reason = if self.payload_bytes_max > RECORD_PAYLOAD_BYTES_MAX {
            "payload_bytes_max exceeds RECORD_PAYLOAD_BYTES_MAX"
        } else if self.segment_bytes > SEGMENT_BYTES_MAX {
            "segment_bytes exceeds SEGMENT_BYTES_MAX"
        } else if self.segment_bytes < SEGMENT_HEADER_BYTES as u64 + record_bytes_max {
            "segment_bytes cannot hold one record of payload_bytes_max"
        } else if (self.pending_bytes_max as u64) < record_bytes_max {
            "pending_bytes_max cannot hold one record of payload_bytes_max"
        } else {
            return Ok(());
        };
        Err(WalError::InvalidOptions { reason: reason.to_string() })
    }
}

#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    /// As `Wal::first_index` / `Wal::last_index` after recovery.
    pub first_index: u64,
    pub last_index: u64,
    /// Bytes of torn tail in the last segment (0 after a clean shutdown): zeroed by `open`, only
    /// skipped by `open_read_only`, which leaves the file as it found it.
    pub truncated_bytes: u64,
    pub truncated_segment: Option<PathBuf>,
    /// Leftover `.wal.tmp` files from a crash during segment creation, deleted (never by
    /// `open_read_only`, which ignores them).
    pub temp_files_removed: usize,
    pub elapsed: Duration,
}

struct Segment {
    first_index: u64,
    path: PathBuf,
    /// `None` until the first batch for it is submitted: appends never make syscalls.
    file: Option<File>,
    map: Option<Mmap>,
    capacity: usize,
    /// Offset of each record, appended or written.
    offsets: Vec<u32>,
    /// End of appended records, including those only in buffers.
    end_offset: usize,
    /// End of records whose write completed; bytes before it are read through `map`.
    written_offset: usize,
}

impl Segment {
    fn last_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64 - 1
    }

    fn offset_of(&self, index: u64) -> usize {
        self.offsets[(index - self.first_index) as usize] as usize
    }
}

/// Contiguous bytes for one segment, written with one write + one fdatasync.
struct Batch {
    segment_first_index: u64,
    file_offset: usize,
    bytes: Vec<u8>,
    last_index: u64,
    /// Bytes already written by earlier short writes.
    written: usize,
    /// When its first write was submitted: the write + fdatasync duration is measured from here.
    started: Option<Instant>,
}

/// Told of every batch made durable: how long its write + fdatasync took, and how many records it
/// carried. A plain function (no state, no allocation) so the hot path pays one call per sync.
pub type SyncObserver = fn(elapsed: Duration, records: u64);

pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    segments: VecDeque<Segment>,
    terms: TermRuns,
    last_index: u64,
    durable_index: u64,
    pending: VecDeque<Batch>,
    pending_bytes: usize,
    in_flight: Option<Batch>,
    writer: SyncWriter,
    spare_buffers: Vec<Vec<u8>>,
    failure: Option<String>,
    sync_observer: Option<SyncObserver>,
    /// Opened by `open_read_only`: every call that would change a file is refused.
    read_only: bool,
    /// Held while the `Wal` lives: exclusive for a writer, shared for a reader, none for a reader of a
    /// log that never had a writer (no lock file, and a reader creates none).
    _lock: Option<File>,
}

/// How `open` treats the files it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    /// Recovery repairs: a torn tail is zeroed, leftover temporaries removed, a segment created.
    ReadWrite,
    /// For audit tools: nothing is created, removed or rewritten; a torn tail is skipped.
    ReadOnly,
}

/// What recovery of the existing segment files produced.
struct Recovered {
    segments: VecDeque<Segment>,
    terms: TermRuns,
    truncated_bytes: u64,
    truncated_segment: Option<PathBuf>,
}

impl Wal {
    /// Opens (creating `dir` if missing) and recovers the log; see the crate docs for what
    /// recovery accepts. Holds an exclusive lock on the directory while the `Wal` lives.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        Self::open_in(dir, options, OpenMode::ReadWrite)
    }

    /// Opens an existing log for reading only, as audit tools (`verify`, `wal dump`) must: no file or
    /// folder is created, removed or written, a torn tail is reported and skipped rather than zeroed,
    /// and leftover temporaries are ignored. Takes a shared lock, so it refuses a log that a writer
    /// has open. Every call that would write (`append`, `submit`, truncation, `reset`) is refused.
    pub fn open_read_only(dir: &Path, options: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        Self::open_in(dir, options, OpenMode::ReadOnly)
    }

    fn open_in(dir: &Path, options: WalOptions, mode: OpenMode) -> Result<(Wal, RecoveryReport), WalError> {
        let started = Instant::now();
        options.validate()?;
        let (lock, temp_files_removed) = match mode {
            OpenMode::ReadWrite => {
                fs::create_dir_all(dir).map_err(|error| WalError::io("create directory", dir, error))?;
                let lock = lock_dir(dir)?;
                (Some(lock), remove_temp_files(dir)?)
            }
            OpenMode::ReadOnly => (lock_dir_shared(dir)?, 0),
        };
        let mut recovered = recover_segments(dir, mode)?;
        if recovered.segments.is_empty() {
            // In memory only until the first submit (read-write) or never (read-only).
            let segment = new_segment(dir, FIRST_INDEX_FRESH, options.segment_bytes);
            recovered.segments.push_back(segment);
        }
        let writer = SyncWriter::new().map_err(|error| WalError::io("io_uring setup", dir, error))?;
        let last = recovered.segments.back().expect("at least one segment");
        let last_index = last.last_index();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            options,
            segments: recovered.segments,
            terms: recovered.terms,
            last_index,
            durable_index: last_index,
            pending: VecDeque::new(),
            pending_bytes: 0,
            in_flight: None,
            writer,
            spare_buffers: Vec::new(),
            failure: None,
            read_only: mode == OpenMode::ReadOnly,
            sync_observer: None,
            _lock: lock,
        };
        if mode == OpenMode::ReadWrite {
            wal.ensure_segment_file(wal.segments.len() - 1)?;
        }
        let report = RecoveryReport {
            segments: wal.segments.len(),
            first_index: wal.first_index(),
            last_index,
            truncated_bytes: recovered.truncated_bytes,
            truncated_segment: recovered.truncated_segment,
            temp_files_removed,
            elapsed: started.elapsed(),
        };
        Ok((wal, report))
    }
}

fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| WalError::io("open lock file", &path, error))?;
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(WalError::io("lock directory (another Wal open?)", &path, error));
    }
    Ok(file)
}

/// A reader's lock: shared, so it coexists with other readers and refuses a log a writer holds. A
/// directory without a lock file never had a writer; the reader creates none and takes no lock.
fn lock_dir_shared(dir: &Path) -> Result<Option<File>, WalError> {
    let path = dir.join(LOCK_FILE_NAME);
    if !dir.is_dir() {
        let error = std::io::Error::from(std::io::ErrorKind::NotFound);
        return Err(WalError::io("open log directory", dir, error));
    }
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io("open lock file", &path, error)),
    };
    // SAFETY: plain syscall on an fd we own; no memory is passed.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        return Err(WalError::io("lock directory for reading (is a writer running?)", &path, error));
    }
    Ok(Some(file))
}

fn remove_temp_files(dir: &Path) -> Result<usize, WalError> {
    let mut removed = 0;
    for name in list_names(dir)? {
        if name.ends_with(TEMP_SUFFIX) {
            let path = dir.join(&name);
            fs::remove_file(&path).map_err(|error| WalError::io("remove temp", &path, error))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn list_names(dir: &Path) -> Result<Vec<String>, WalError> {
    let entries = fs::read_dir(dir).map_err(|error| WalError::io("list directory", dir, error))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| WalError::io("list directory", dir, error))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn recover_segments(dir: &Path, mode: OpenMode) -> Result<Recovered, WalError> {
    let mut first_indexes: Vec<u64> = list_names(dir)?.iter().filter_map(|name| parse_segment_name(name)).collect();
    first_indexes.sort_unstable();
    let mut recovered = Recovered {
        segments: VecDeque::new(),
        terms: TermRuns::default(),
        truncated_bytes: 0,
        truncated_segment: None,
    };
    for (position, &first_index) in first_indexes.iter().enumerate() {
        let is_last = position + 1 == first_indexes.len();
        let segment = recover_segment(dir, first_index, is_last, mode, &mut recovered)?;
        recovered.segments.push_back(segment);
    }
    Ok(recovered)
}

fn recover_segment(
    dir: &Path,
    first_index: u64,
    is_last: bool,
    mode: OpenMode,
    recovered: &mut Recovered,
) -> Result<Segment, WalError> {
    let path = segment_path(dir, first_index);
    let corrupt =
        |offset: usize, reason: String| WalError::Corrupt { segment: path.clone(), offset: offset as u64, reason };
    let (file, map) = open_mapped(&path, mode)?;
    let header_index = decode_segment_header(&map).map_err(|reason| corrupt(0, reason.into()))?;
    if header_index != first_index || first_index == 0 {
        return Err(corrupt(0, format!("header says first index {header_index}")));
    }
    if let Some(previous) = recovered.segments.back() {
        if previous.last_index() + 1 != first_index {
            let reason = format!("gap: previous segment ends at {}", previous.last_index());
            return Err(corrupt(0, reason));
        }
    }
    let scan =
        scan_segment(&map, first_index, &mut recovered.terms).map_err(|fault| corrupt(fault.offset, fault.reason))?;
    if scan.garbage_end > scan.end_offset {
        if !is_last {
            let reason = "sealed segment has bytes after its last whole record".to_string();
            return Err(corrupt(scan.end_offset, reason));
        }
        if mode == OpenMode::ReadWrite {
            zero_range(&file, &path, scan.end_offset, scan.garbage_end)?;
        }
        recovered.truncated_bytes = (scan.garbage_end - scan.end_offset) as u64;
        recovered.truncated_segment = Some(path.clone());
    }
    Ok(Segment {
        first_index,
        path,
        capacity: map.len(),
        file: Some(file),
        map: Some(map),
        offsets: scan.offsets,
        end_offset: scan.end_offset,
        written_offset: scan.end_offset,
    })
}

fn open_mapped(path: &Path, mode: OpenMode) -> Result<(File, Mmap), WalError> {
    let file = File::options()
        .read(true)
        .write(mode == OpenMode::ReadWrite)
        .open(path)
        .map_err(|error| WalError::io("open segment", path, error))?;
    // SAFETY: the directory is flock'ed by this Wal (exclusively by a writer, shared by a reader,
    // which a writer's exclusive lock excludes), so no other process writes the file; this process
    // only rewrites bytes through `&mut Wal` of a read-write log, while readers borrow `&Wal`.
    let map = unsafe { Mmap::map(&file) }.map_err(|error| WalError::io("mmap", path, error))?;
    Ok((file, map))
}

fn new_segment(dir: &Path, first_index: u64, segment_bytes: u64) -> Segment {
    Segment {
        first_index,
        path: segment_path(dir, first_index),
        file: None,
        map: None,
        capacity: usize::try_from(segment_bytes).expect("segment_bytes checked at open"),
        offsets: Vec::new(),
        end_offset: SEGMENT_HEADER_BYTES,
        written_offset: SEGMENT_HEADER_BYTES,
    }
}

impl Wal {
    /// First index held. When the log is empty it equals `last_index() + 1`, the index the next
    /// append must carry (1 for a fresh log), so `first_index() > last_index()` means empty.
    pub fn first_index(&self) -> u64 {
        self.segments.front().expect("at least one segment").first_index
    }

    /// Last appended index (maybe not yet durable); `first_index() - 1` when empty.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Last index whose write and fdatasync completed.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    pub fn is_empty(&self) -> bool {
        self.first_index() > self.last_index
    }

    /// Installs the function told of every completed write + fdatasync (metrics).
    pub fn set_sync_observer(&mut self, observer: SyncObserver) {
        self.sync_observer = Some(observer);
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether appended records wait to be written (not counting the batch in flight).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// First index of every segment, oldest first (the last one may exist only in memory so far).
    pub fn segment_first_indexes(&self) -> impl Iterator<Item = u64> + '_ {
        self.segments.iter().map(|segment| segment.first_index)
    }

    /// Has the kernel signal `eventfd` whenever a write or fdatasync of this log completes, so a caller
    /// that also waits on other inputs can wake for a durable batch instead of polling for it.
    pub fn register_completion_eventfd(&self, eventfd: std::os::fd::RawFd) -> Result<(), WalError> {
        self.check_healthy()?;
        self.writer
            .register_eventfd(eventfd)
            .map_err(|error| WalError::io("io_uring register eventfd", &self.dir, error))
    }

    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index < self.first_index() || index > self.last_index {
            return None;
        }
        self.terms.term_at(index)
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Buffers one record; makes no syscall. `index` must be `last_index() + 1` and `term` must
    /// not be below the last record's term.
    pub fn append(&mut self, index: u64, term: u64, kind: u8, payload: &[u8]) -> Result<(), WalError> {
        self.check_healthy()?;
        self.check_appendable(index, term, payload.len())?;
        let bytes = record_bytes(payload.len());
        let segment = self.segments.back().expect("at least one segment");
        if segment.end_offset + bytes > segment.capacity {
            if segment.offsets.is_empty() {
                // Only a segment recovered from smaller options can be too small when empty.
                let reason = format!("record of {bytes} bytes exceeds empty {}", segment.path.display());
                return Err(WalError::InvalidOptions { reason });
            }
            let next = new_segment(&self.dir, index, self.options.segment_bytes);
            self.segments.push_back(next);
        }
        let segment = self.segments.back_mut().expect("at least one segment");
        let batch = batch_for(&mut self.pending, &mut self.spare_buffers, segment);
        encode_record(&mut batch.bytes, index, term, kind, payload);
        batch.last_index = index;
        segment.offsets.push(segment.end_offset as u32);
        segment.end_offset += bytes;
        self.pending_bytes += bytes;
        self.terms.push(index, term);
        self.last_index = index;
        Ok(())
    }

    fn check_appendable(&self, index: u64, term: u64, payload_bytes: usize) -> Result<(), WalError> {
        let expected = self.last_index + 1;
        if index != expected {
            return Err(WalError::IndexNotNext { expected, got: index });
        }
        let last = self.terms.last_term();
        if term < last {
            return Err(WalError::TermRegressed { last, got: term });
        }
        if payload_bytes > self.options.payload_bytes_max {
            let max = self.options.payload_bytes_max;
            return Err(WalError::PayloadTooLarge { bytes: payload_bytes, max });
        }
        if self.pending_bytes + record_bytes(payload_bytes) > self.options.pending_bytes_max {
            let max = self.options.pending_bytes_max;
            return Err(WalError::PendingFull { max });
        }
        Ok(())
    }

    /// Whether this log was opened by `open_read_only`.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Every call that may write a file passes here first.
    fn check_healthy(&self) -> Result<(), WalError> {
        if self.read_only {
            return Err(WalError::ReadOnly { dir: self.dir.clone() });
        }
        match &self.failure {
            None => Ok(()),
            Some(reason) => Err(WalError::Poisoned { reason: reason.clone() }),
        }
    }
}

/// The pending batch that the next record of `segment` joins, opened if needed.
fn batch_for<'a>(
    pending: &'a mut VecDeque<Batch>,
    spare_buffers: &mut Vec<Vec<u8>>,
    segment: &Segment,
) -> &'a mut Batch {
    let joins_last = pending.back().is_some_and(|batch| batch.segment_first_index == segment.first_index);
    if !joins_last {
        pending.push_back(Batch {
            segment_first_index: segment.first_index,
            file_offset: segment.end_offset,
            bytes: spare_buffers.pop().unwrap_or_default(),
            last_index: 0,
            written: 0,
            started: None,
        });
    }
    pending.back_mut().expect("pushed above if missing")
}

impl Wal {
    /// If idle and something is pending: writes the oldest pending batch with one write and one
    /// linked fdatasync. Returns whether it submitted. Creating the next segment file (once per
    /// segment) happens here, synchronously.
    pub fn submit(&mut self) -> Result<bool, WalError> {
        self.check_healthy()?;
        if self.in_flight.is_some() || self.pending.is_empty() {
            return Ok(false);
        }
        let batch = self.pending.front().expect("checked non-empty");
        let position = self.segment_position(batch.segment_first_index);
        // A failure here (e.g. ENOSPC) leaves the batch pending and the log unchanged.
        self.ensure_segment_file(position)?;
        let batch = self.pending.pop_front().expect("checked non-empty");
        self.pending_bytes -= batch.bytes.len();
        self.start_write(batch)?;
        Ok(true)
    }

    /// Non-blocking: reaps a finished write + fdatasync, then submits the next pending batch if
    /// idle. Costs a few memory loads when nothing completed. Returns `durable_index()`.
    pub fn poll(&mut self) -> Result<u64, WalError> {
        self.check_healthy()?;
        if let Some(outcome) = self.writer.reap() {
            self.complete(outcome)?;
        }
        self.submit()?;
        Ok(self.durable_index)
    }

    /// Blocks until everything appended so far is durable.
    pub fn wait(&mut self) -> Result<u64, WalError> {
        loop {
            self.poll()?;
            if self.in_flight.is_none() && self.pending.is_empty() {
                return Ok(self.durable_index);
            }
            if let Err(error) = self.writer.wait_for_completion() {
                return Err(self.poison(format!("io_uring wait: {error}")));
            }
        }
    }

    fn start_write(&mut self, mut batch: Batch) -> Result<(), WalError> {
        batch.started.get_or_insert_with(Instant::now);
        let position = self.segment_position(batch.segment_first_index);
        let segment = &self.segments[position];
        let fd = segment.file.as_ref().expect("ensured above").as_raw_fd();
        let offset = (batch.file_offset + batch.written) as u64;
        let batch = self.in_flight.insert(batch);
        // SAFETY: the batch sits in `self.in_flight` untouched until `complete` reaps both
        // completions (Drop waits for them too), and its segment's File outlives the batch:
        // segments are only removed after `wait`, never with a batch in flight.
        let submitted = unsafe { self.writer.submit(fd, &batch.bytes[batch.written..], offset) };
        if let Err(error) = submitted {
            return Err(self.poison(format!("io_uring submit: {error}")));
        }
        Ok(())
    }

    fn complete(&mut self, outcome: PairOutcome) -> Result<(), WalError> {
        let mut batch = self.in_flight.take().expect("a reaped pair belongs to a batch");
        let remaining = batch.bytes.len() - batch.written;
        let cancelled = outcome.synced == -libc::ECANCELED;
        if outcome.written < 0 {
            let error = std::io::Error::from_raw_os_error(-outcome.written);
            return Err(self.poison(format!("write: {error}")));
        }
        if outcome.synced < 0 && !(cancelled && (outcome.written as usize) < remaining) {
            let error = std::io::Error::from_raw_os_error(-outcome.synced);
            return Err(self.poison(format!("fdatasync: {error}")));
        }
        if (outcome.written as usize) < remaining {
            // A short write is not a failure yet: write the rest, then a fresh fdatasync.
            if outcome.written == 0 {
                return Err(self.poison("write made no progress".to_string()));
            }
            batch.written += outcome.written as usize;
            return self.start_write(batch);
        }
        self.finish(batch);
        Ok(())
    }

    fn finish(&mut self, mut batch: Batch) {
        let position = self.segment_position(batch.segment_first_index);
        let segment = &mut self.segments[position];
        segment.written_offset = batch.file_offset + batch.bytes.len();
        debug_assert!(batch.last_index > self.durable_index);
        if let (Some(observer), Some(started)) = (self.sync_observer, batch.started) {
            observer(started.elapsed(), batch.last_index.saturating_sub(self.durable_index));
        }
        self.durable_index = batch.last_index;
        batch.bytes.clear();
        self.spare_buffers.push(batch.bytes);
    }

    /// Records the failure so every later write refuses: after a failed fdatasync the page cache
    /// may say "clean" for pages that never reached the disk, so retrying would lie.
    fn poison(&mut self, reason: String) -> WalError {
        self.failure = Some(reason.clone());
        WalError::WriteFailed { reason }
    }

    fn ensure_segment_file(&mut self, position: usize) -> Result<(), WalError> {
        let segment = &mut self.segments[position];
        if segment.file.is_some() {
            return Ok(());
        }
        let capacity = segment.capacity as u64;
        let file = create_segment_file(&self.dir, segment.first_index, capacity)?;
        // SAFETY: as in `open_mapped`: the directory is locked and rewrites need `&mut Wal`.
        let map = unsafe { Mmap::map(&file) }.map_err(|error| WalError::io("mmap", &segment.path, error))?;
        segment.file = Some(file);
        segment.map = Some(map);
        Ok(())
    }

    fn segment_position(&self, first_index: u64) -> usize {
        self.segments
            .binary_search_by_key(&first_index, |segment| segment.first_index)
            .expect("batches refer to live segments")
    }

    /// Position of the segment holding `index`; the caller checks the range.
    fn segment_holding(&self, index: u64) -> usize {
        let after = self.segments.partition_point(|segment| segment.first_index <= index);
        after.checked_sub(1).expect("index at or above first_index")
    }
}

impl Drop for Wal {
    /// The kernel may still be reading the in-flight buffer; it must outlive the operation.
    fn drop(&mut self) {
        while self.in_flight.is_some() {
            if let Some(outcome) = self.writer.reap() {
                let _ = self.complete(outcome);
                if self.failure.is_some() {
                    break;
                }
            } else if self.writer.wait_for_completion().is_err() {
                // Leaking beats letting the kernel read freed memory.
                std::mem::forget(self.in_flight.take());
            }
        }
    }
}

impl Wal {
    /// Iterates records from `from_index` (at most `last_index() + 1`) to `last_index()`.
    pub fn reader(&self, from_index: u64) -> Result<WalReader<'_>, WalError> {
        self.check_range(from_index, self.last_index + 1)?;
        Ok(WalReader::new(self, from_index))
    }

    /// Bytes starting at the record of `index` (inside the log): from the mmap once written,
    /// else from the batch in flight or a pending batch.
    pub(crate) fn record_bytes_at(&self, index: u64) -> &[u8] {
        let segment = &self.segments[self.segment_holding(index)];
        let offset = segment.offset_of(index);
        if offset < segment.written_offset {
            let map = segment.map.as_ref().expect("written segments are mapped");
            return &map[offset..segment.written_offset];
        }
        let batch = self
            .in_flight
            .iter()
            .chain(self.pending.iter())
            .find(|batch| {
                batch.segment_first_index == segment.first_index
                    && (batch.file_offset..batch.file_offset + batch.bytes.len()).contains(&offset)
            })
            .expect("unwritten records are in a buffer");
        &batch.bytes[offset - batch.file_offset..]
    }

    /// The segment file and byte offset of the record of `index` (inside the log): where an error
    /// about that record points the reader.
    pub fn locate(&self, index: u64) -> (PathBuf, u64) {
        let segment = &self.segments[self.segment_holding(index)];
        (segment.path.clone(), segment.offset_of(index) as u64)
    }

    fn check_range(&self, index: u64, last: u64) -> Result<(), WalError> {
        let first = self.first_index();
        if index < first || index > last {
            return Err(WalError::IndexOutOfRange { index, first, last });
        }
        Ok(())
    }

    /// Removes entries `>= from_index` (a Raft conflict); durable when it returns. Waits for
    /// everything appended first, so it blocks: conflicts are rare. `from_index == first_index()`
    /// empties the log, and the next append must carry `from_index`.
    pub fn truncate_suffix(&mut self, from_index: u64) -> Result<(), WalError> {
        self.check_healthy()?;
        if from_index > self.last_index {
            return Ok(());
        }
        self.check_range(from_index, self.last_index)?;
        self.wait()?;
        let keep = self.segment_holding(from_index);
        while self.segments.len() > keep + 1 {
            let segment = self.segments.pop_back().expect("more than keep + 1");
            self.delete_segment(segment)?;
        }
        let segment = self.segments.back_mut().expect("kept segment");
        let cut = segment.offset_of(from_index);
        let file = segment.file.as_ref().expect("written segments have files");
        zero_range(file, &segment.path, cut, segment.written_offset).map_err(|error| self.poison_on_io(error))?;
        let segment = self.segments.back_mut().expect("kept segment");
        segment.offsets.truncate((from_index - segment.first_index) as usize);
        segment.end_offset = cut;
        segment.written_offset = cut;
        self.terms.truncate_from(from_index);
        self.last_index = from_index - 1;
        self.durable_index = self.last_index;
        Ok(())
    }

    /// Deletes whole segments whose entries are all `< before_index` and durable (after a
    /// snapshot). Keeps the segment holding `before_index`, always the last segment, and always the
    /// newest segment file on disk, so `first_index()` may stay below `before_index`.
    pub fn remove_prefix(&mut self, before_index: u64) -> Result<(), WalError> {
        for path in self.detach_prefix(before_index)? {
            fs::remove_file(&path)
                .map_err(|error| WalError::io("remove segment", &path, error))
                .and_then(|()| sync_dir(&self.dir))
                .map_err(|error| self.poison_on_io(error))?;
        }
        Ok(())
    }

    /// Forgets, exactly as `remove_prefix` would delete them, the oldest whole segments whose entries
    /// are all `< before_index` and durable, and returns their files, oldest first, for the caller to
    /// delete (or archive) off the writer's thread, oldest first with a directory sync after each, so a
    /// crash leaves a contiguous run of segments. Until they are gone a reopen simply finds them again.
    pub fn detach_prefix(&mut self, before_index: u64) -> Result<Vec<PathBuf>, WalError> {
        self.check_healthy()?;
        let mut detached = Vec::new();
        while self.segments.len() > 1 {
            let oldest = self.segments.front().expect("more than one segment");
            let last = oldest.last_index();
            // The next segment may exist only in memory (its file is made at its first submit): then
            // the oldest is the newest file on disk, and deleting it would leave a reopen no segment,
            // so the log would forget its position and restart at index 1.
            let next_on_disk = self.segments[1].file.is_some();
            if last >= before_index || last > self.durable_index || !next_on_disk {
                break;
            }
            let segment = self.segments.pop_front().expect("more than one segment");
            drop(segment.map);
            drop(segment.file);
            detached.push(segment.path);
        }
        self.terms.forget_before(self.first_index());
        Ok(detached)
    }

    /// Empties the log so that the next append must carry `next_index` (a follower installing a
    /// snapshot). Waits for writes in flight, deletes segments newest first (a crash mid-way
    /// leaves a contiguous prefix of the old log), then creates a fresh segment starting at
    /// `next_index`; durable when it returns.
    pub fn reset(&mut self, next_index: u64) -> Result<(), WalError> {
        self.check_healthy()?;
        if next_index == 0 {
            return Err(WalError::InvalidOptions { reason: "reset to index 0".to_string() });
        }
        self.wait()?;
        while let Some(segment) = self.segments.pop_back() {
            self.delete_segment(segment)?;
        }
        self.segments.push_back(new_segment(&self.dir, next_index, self.options.segment_bytes));
        self.terms = TermRuns::default();
        self.last_index = next_index - 1;
        self.durable_index = self.last_index;
        self.ensure_segment_file(0).map_err(|error| self.poison_on_io(error))
    }

    /// Unlinks one segment and syncs the directory before the next, so a crash mid-way leaves
    /// a contiguous run of segments, never a gap.
    fn delete_segment(&mut self, segment: Segment) -> Result<(), WalError> {
        drop(segment.map);
        drop(segment.file);
        let removed = fs::remove_file(&segment.path)
            .map_err(|error| WalError::io("remove segment", &segment.path, error))
            .and_then(|()| sync_dir(&self.dir));
        removed.map_err(|error| self.poison_on_io(error))
    }

    /// After a failed rewrite the on-disk state is unknown; stop writing until reopened.
    fn poison_on_io(&mut self, error: WalError) -> WalError {
        self.failure = Some(error.to_string());
        error
    }
}
