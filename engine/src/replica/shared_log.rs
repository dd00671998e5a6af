//! One log per replica shard for every Raft group the shard drives (TiKV's raft-engine is the model):
//! every group's entries and hard states are records of one `wal::Wal`, so a shard round that
//! persists the Readies of many groups costs one write and one fdatasync, whatever the group count.
//!
//! Layout of a shard's directory (`replica-shard-NNN/`):
//! - `wal/`: the log's segment files. A record's wal index is its *position*; its wal term is always 0
//!   (the groups' Raft terms are unrelated to each other, and the wal wants terms that never drop);
//!   its kind byte and payload are one of the records below.
//! - `snapshot-PPPPP`: partition P's latest snapshot image (magic `RSN3`, body length u64, body,
//!   xxh3; files framed `RSN2` with a u32 length, written before, are still read), replaced
//!   atomically (temporary file, fsync, rename, directory fsync). Compaction is rare (every
//!   `snapshot_interval_entries`), so an image file beside the log costs little and keeps the log's
//!   records small and bounded.
//! - `rejoin-pending-PPPPP`: partition P's rejoin marker while a replica rebuilt from nothing catches
//!   up (see `RejoinMarker`); rare, written synchronously.
//! - `snapshot-PPPPP.install-I.tmp`: a received snapshot's image at index I, written and synced by the
//!   shard's snapshot thread while it rebuilds the state ([`stage_install_file`]); the install renames
//!   it into place. Temporaries are removed at a writable open.
//!
//! Records (little-endian; every payload starts with the partition as u32):
//! - `1` Entry: partition, Raft index u64, Raft term u64, then the entry (kind byte `0` Noop, `1` Data
//!   + bytes, `2` ConfChange + change kind (`0` AddVoter, `1` AddLearner, `2` Remove) + node u64).
//! - `2` HardState: partition, term u64, vote flag u8, vote u64, commit u64.
//! - `3` Install: partition, snapshot index u64, term u64: the group installed a leader's snapshot;
//!   every entry of the group before this record is void.
//! - `4` Base: partition, snapshot index u64, term u64: the group's log continues the snapshot at
//!   that index (re-appended by purge when it would delete the group's Install record).
//!
//! Recovery is one scan of the log that replays the records in order into an in-memory index per
//! group (Raft index -> position and term): an Entry at index k <= the group's last index is a
//! conflicting suffix and truncates the group's index from k, exactly as `append` did; Install clears
//! it; Base drops entries at or below its index; the latest HardState wins. Then each group's snapshot
//! file is reconciled with what the records say:
//! - a compaction file (written by `create_snapshot`, or `bootstrap` at index 0) at index S: entries
//!   <= S are dropped, the rest must start at S + 1;
//! - an install file at S newer than the last Install/Base record: the crash came after the file and
//!   before its Install record was durable, so the install is completed now (entries cleared; a
//!   writable open appends the Install record and syncs it).
//!
//! Crash order (what makes every step safe to interrupt):
//! - Persisting a Ready stages its records in the log (no syscall); the shell makes the whole round's
//!   batch durable with one write + fdatasync and only then reports `persisted`. A crash keeps a
//!   prefix of the log: a group's entries always precede the hard state of the same Ready.
//! - `create_snapshot` (compaction) writes and syncs the image file and changes nothing in the log:
//!   the entries it covers are durable already (Raft compacts only persisted, applied entries), and
//!   recovery drops entries <= the file's index. The replica shard's snapshot thread writes that file
//!   before the compaction is recorded ([`write_compaction_file`], then
//!   [`SharedLog::compaction_written`]): a crash in between leaves the same file a crash right after
//!   a `create_snapshot` that wrote it would.
//! - `apply_snapshot` (install) puts the image file in place first (renaming the staged file of
//!   [`SharedLog::install_staged`], or else writing and syncing it), then stages the Install record.
//!   A staged file is a temporary until that rename: a crash before it leaves the install undone.
//! - Purge deletes whole segments, oldest first, only below every group's oldest needed record, where
//!   a record counts as replaced only once its replacement is durable (see `purge`).
//!
//! A record that does not verify is an error naming the segment, the byte offset and, when its header
//! is whole, the partition it belongs to.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use raft::storage::StorageResult;
use raft::{
    ConfChange, ConfChangeKind, ConfState, Entry, HardState, Payload, RaftState, Snapshot, SnapshotData, SnapshotMeta,
};
use raft::{Storage, StorageError};
use wal::{Wal, WalError, WalOptions};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::error::EngineError;
use crate::replica::core::{RejoinMarker, ReplicaStorage};

/// The log's folder inside a shard's directory.
pub const LOG_DIR: &str = "wal";
const SNAPSHOT_FILE_PREFIX: &str = "snapshot-";
/// File in a shard's directory while partition P's replica, rebuilt on a rejoining node, does not yet
/// take full part in Raft: `awaiting-reports` until every other replica has answered, then
/// `withhold-votes-until N term T` until its commit index reaches N (T: the term it adopted, re-adopted
/// at open in case the crash came before the new term reached the hard state). It survives restarts,
/// so a crash during catch-up resumes the same rules with or without `--rejoin`.
pub const REJOIN_MARKER_PREFIX: &str = "rejoin-pending-";
const TEMP_SUFFIX: &str = ".tmp";
/// A snapshot file's frame: magic, body length u64, body, xxh3 of everything before it.
const SNAPSHOT_MAGIC: [u8; 4] = *b"RSN3";
const FRAME_HEADER_BYTES: usize = 4 + 8;
/// The frame written before: its body length was a u32, which capped an image at 4 GiB (a leader's
/// compaction past that failed its shard, whatever `snapshot_bytes_max` allowed). Still read.
const SNAPSHOT_MAGIC_U32_LENGTH: [u8; 4] = *b"RSN2";
const FRAME_HEADER_BYTES_U32_LENGTH: usize = 4 + 4;
const FRAME_CHECKSUM_BYTES: usize = 8;

const RECORD_ENTRY: u8 = 1;
const RECORD_HARD_STATE: u8 = 2;
const RECORD_INSTALL: u8 = 3;
const RECORD_BASE: u8 = 4;
/// Every record's wal term: the groups' Raft terms live in the payloads.
const WAL_TERM: u64 = 0;
/// Partition, Raft index and term in front of an Entry record's entry bytes.
pub const ENTRY_RECORD_HEADER_BYTES: usize = 4 + 8 + 8;

const ENTRY_NOOP: u8 = 0;
const ENTRY_DATA: u8 = 1;
const ENTRY_CONF_CHANGE: u8 = 2;
const CONF_ADD_VOTER: u8 = 0;
const CONF_ADD_LEARNER: u8 = 1;
const CONF_REMOVE: u8 = 2;

const SNAPSHOT_KIND_COMPACTION: u8 = 0;
const SNAPSHOT_KIND_INSTALL: u8 = 1;

/// Sealed segments the log keeps before purge frees the oldest (forcing the groups that pin it to
/// compact): with the segment being written, a shard's log holds at most this many + 1 segments while
/// every group keeps up.
pub const PURGE_SEGMENTS_RETAINED: usize = 2;
/// Groups purge asks to compact at once (each writes its snapshot image synchronously in the shard's
/// round): the oldest pinning groups first, so freeing segments never stalls a round with every
/// group's image at once.
pub const PURGE_COMPACTIONS_WANTED_MAX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SharedLogError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("shared log i/o error during {operation} on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record of {group} in {segment} at byte {offset}: {reason}")]
    CorruptRecord { group: GroupName, segment: PathBuf, offset: u64, reason: String },
    #[error("corrupt snapshot file {path}: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },
    #[error("partition {partition}: the log and its snapshot file disagree: {reason}")]
    Inconsistent { partition: u32, reason: String },
}

/// Which group a corrupt record belongs to, as far as its bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupName {
    Partition(u32),
    /// The record's header does not verify, so its partition field cannot be trusted.
    Unknown,
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupName::Partition(partition) => write!(f, "partition {partition}"),
            GroupName::Unknown => write!(f, "an unknown partition (the record header does not verify)"),
        }
    }
}

impl From<SharedLogError> for StorageError {
    fn from(error: SharedLogError) -> StorageError {
        StorageError::Other(error.to_string())
    }
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SharedLogError {
    let path = path.to_path_buf();
    move |source| SharedLogError::Io { operation, path, source }
}

/// A shard's directory of the replicated layout.
pub fn shard_dir(data_dir: &Path, shard: u32) -> PathBuf {
    data_dir.join(format!("replica-shard-{shard:03}"))
}

pub fn snapshot_path(shard_dir: &Path, partition: u32) -> PathBuf {
    shard_dir.join(format!("{SNAPSHOT_FILE_PREFIX}{partition:05}"))
}

pub fn rejoin_marker_path(shard_dir: &Path, partition: u32) -> PathBuf {
    shard_dir.join(format!("{REJOIN_MARKER_PREFIX}{partition:05}"))
}

/// Runs of equal terms: (first Raft index of the run, term), both increasing.
#[derive(Debug, Default, Clone)]
struct TermRuns(Vec<(u64, u64)>);

impl TermRuns {
    fn push(&mut self, index: u64, term: u64) {
        if self.0.last().is_none_or(|&(_, last)| last != term) {
            self.0.push((index, term));
        }
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        let at_or_before = self.0.partition_point(|&(start, _)| start <= index);
        at_or_before.checked_sub(1).map(|position| self.0[position].1)
    }

    fn truncate_from(&mut self, index: u64) {
        let keep = self.0.partition_point(|&(start, _)| start < index);
        self.0.truncate(keep);
    }

    /// Keeps runs covering `index` and later.
    fn forget_before(&mut self, index: u64) {
        let at_or_before = self.0.partition_point(|&(start, _)| start <= index);
        if at_or_before > 1 {
            self.0.drain(..at_or_before - 1);
        }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// One group's part of the log, in memory.
#[derive(Debug, Default)]
struct GroupLog {
    /// The snapshot the log continues (index 0, no data: none yet).
    snapshot: Snapshot,
    /// Position of the entries `snapshot.meta.index + 1 ..`, in index order.
    positions: VecDeque<u64>,
    terms: TermRuns,
    hard_state: HardState,
    /// Positions of this group's HardState records that recovery may still need: the newest durable
    /// one first, then any written since (not durable yet).
    hard_state_records: VecDeque<u64>,
    /// Likewise for the Install or Base record that says where the log starts (empty when the
    /// snapshot file alone says it: after a compaction, or when no snapshot was ever installed).
    base_records: VecDeque<u64>,
    /// After an append replaced every entry held (a conflict at the first index): the position of the
    /// oldest replaced entry, needed until the first replacing record (the second position) is
    /// durable, since a crash before that must find the old entries.
    replaced: Option<(u64, u64)>,
    /// Purge found this group's entries pinning the oldest segment: the core is asked to compact.
    compaction_wanted: bool,
    /// The index of a compaction whose image file the shard's snapshot thread has written already
    /// ([`SharedLog::compaction_written`]): `create_snapshot` at that index only records it.
    compaction_file_written: Option<u64>,
    /// The index of a received snapshot whose image file the snapshot thread has staged
    /// ([`SharedLog::install_staged`]): `apply_snapshot` at that index renames it into place.
    install_file_staged: Option<u64>,
}

impl GroupLog {
    fn first_index(&self) -> u64 {
        self.snapshot.meta.index + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot.meta.index + self.positions.len() as u64
    }

    fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot.meta.index {
            return Some(self.snapshot.meta.term);
        }
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        self.terms.term_at(index)
    }

    fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first_index()) as usize;
        self.positions.truncate(keep);
        self.terms.truncate_from(index);
    }

    /// Drops the entries at or below `index` (they are in the snapshot now).
    fn compact_to(&mut self, index: u64) {
        let drop = (index + 1).saturating_sub(self.first_index()).min(self.positions.len() as u64);
        self.positions.drain(..drop as usize);
        self.terms.forget_before(index + 1);
    }

    /// Forgets record positions made obsolete by durable successors (all at or below `durable`).
    fn trim_records(&mut self, durable: u64) {
        for records in [&mut self.hard_state_records, &mut self.base_records] {
            while records.len() >= 2 && records[1] <= durable {
                records.pop_front();
            }
        }
        if self.replaced.is_some_and(|(_, replacing)| replacing <= durable) {
            self.replaced = None;
        }
    }

    /// The oldest position recovery still needs from this group, if any.
    fn needed_from(&self) -> Option<u64> {
        let replaced = self.replaced.map(|(old, _)| old);
        [
            self.positions.front().copied(),
            self.hard_state_records.front().copied(),
            self.base_records.front().copied(),
            replaced,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// What opening found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub segments: usize,
    pub records: u64,
    pub groups: usize,
    /// Bytes of torn tail cut (a writable open) or skipped (read-only) in the last segment.
    pub truncated_bytes: u64,
    pub truncated_segment: Option<PathBuf>,
    /// Groups whose snapshot install was completed at open (the crash came before its Install record).
    pub installs_completed: Vec<u32>,
}

/// What one purge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub segments_removed: usize,
    /// HardState and Base records written again so that the segment holding the old ones can go.
    pub records_rewritten: usize,
    /// Partitions whose entries pin the oldest segment: asked to compact.
    pub compaction_wanted: Vec<u32>,
}

pub struct SharedLog {
    dir: PathBuf,
    wal: Wal,
    groups: BTreeMap<u32, GroupLog>,
    read_only: bool,
    scratch: Vec<u8>,
}

/// A group's position-indexed view shares the log with the other groups of its shard (one thread
/// uses it: the lock is never contended, it only makes the views `Send`).
pub type SharedLogHandle = Arc<Mutex<SharedLog>>;

impl SharedLog {
    /// Opens (creating if missing) the shard's log in `dir` and rebuilds every group's index with one
    /// scan. Completes a snapshot install that a crash interrupted (appending and syncing its record).
    pub fn open(dir: &Path, options: WalOptions) -> Result<(SharedLog, OpenReport), SharedLogError> {
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        remove_temp_files(dir)?;
        let log_dir = dir.join(LOG_DIR);
        let (mut wal, report) = Wal::open(&log_dir, options).map_err(name_corrupt_group)?;
        wal.set_sync_observer(crate::metrics::observe_fsync);
        Self::recover(dir, wal, report, false)
    }

    /// Opens a stopped shard's log for reading only (`walletctl verify`, `wal dump`): no file is
    /// created, repaired or rewritten; an interrupted install is completed in memory only; every write
    /// is refused.
    pub fn open_read_only(dir: &Path, options: WalOptions) -> Result<(SharedLog, OpenReport), SharedLogError> {
        let (wal, report) = Wal::open_read_only(&dir.join(LOG_DIR), options).map_err(name_corrupt_group)?;
        Self::recover(dir, wal, report, true)
    }

    fn recover(
        dir: &Path,
        wal: Wal,
        wal_report: wal::RecoveryReport,
        read_only: bool,
    ) -> Result<(SharedLog, OpenReport), SharedLogError> {
        let mut log =
            SharedLog { dir: dir.to_path_buf(), wal, groups: BTreeMap::new(), read_only, scratch: Vec::new() };
        let mut report = OpenReport {
            segments: wal_report.segments,
            truncated_bytes: wal_report.truncated_bytes,
            truncated_segment: wal_report.truncated_segment,
            ..OpenReport::default()
        };
        let mut scan: BTreeMap<u32, ScanGroup> = BTreeMap::new();
        if !log.wal.is_empty() {
            for record in log.wal.reader(log.wal.first_index())? {
                let record = record.map_err(name_corrupt_group)?;
                report.records += 1;
                let corrupt = |group: GroupName, reason: String| {
                    let (segment, offset) = log.wal.locate(record.index);
                    SharedLogError::CorruptRecord { group, segment, offset, reason }
                };
                let decoded =
                    decode_record(record.kind, record.payload).map_err(|(group, reason)| corrupt(group, reason))?;
                let partition = decoded.partition();
                scan.entry(partition)
                    .or_default()
                    .apply(record.index, &decoded)
                    .map_err(|reason| corrupt(GroupName::Partition(partition), reason))?;
            }
        }
        let mut partitions: BTreeSet<u32> = scan.keys().copied().collect();
        partitions.extend(list_snapshot_files(dir)?);
        for partition in partitions {
            let file = read_snapshot_file(&snapshot_path(dir, partition))?;
            let scanned = scan.remove(&partition).unwrap_or_default();
            let (group, install_completed) = scanned.finish(partition, file)?;
            if install_completed {
                report.installs_completed.push(partition);
            }
            log.groups.insert(partition, group);
        }
        if !read_only {
            for &partition in &report.installs_completed {
                let (index, term) = {
                    let group = &log.groups[&partition];
                    (group.snapshot.meta.index, group.snapshot.meta.term)
                };
                let position = log.stage_base(partition, RECORD_INSTALL, index, term)?;
                log.group_mut(partition)?.base_records = VecDeque::from([position]);
            }
            if !report.installs_completed.is_empty() {
                log.wal.wait()?;
            }
        }
        report.groups = log.groups.len();
        Ok((log, report))
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Partitions with anything in this log (records or a snapshot file).
    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.keys().copied()
    }

    pub fn holds(&self, partition: u32) -> bool {
        self.groups.contains_key(&partition)
    }

    /// Gives a brand-new group its first membership: a snapshot at index 0 without data (what a fresh
    /// `MemStorage::new_with_conf` holds). Returns false and changes nothing when the group exists.
    pub fn bootstrap(&mut self, partition: u32, conf_state: ConfState) -> Result<bool, SharedLogError> {
        if self.groups.contains_key(&partition) {
            return Ok(false);
        }
        self.check_writable()?;
        let snapshot = Snapshot { meta: SnapshotMeta { index: 0, term: 0, conf_state }, data: SnapshotData::default() };
        write_snapshot_file(&self.dir, partition, SNAPSHOT_KIND_COMPACTION, &snapshot)?;
        self.groups.insert(partition, GroupLog { snapshot, ..GroupLog::default() });
        Ok(true)
    }

    fn check_writable(&self) -> Result<(), SharedLogError> {
        if self.read_only {
            return Err(WalError::ReadOnly { dir: self.dir.clone() }.into());
        }
        Ok(())
    }

    fn group(&self, partition: u32) -> Result<&GroupLog, SharedLogError> {
        self.groups.get(&partition).ok_or_else(|| no_group(partition))
    }

    fn group_mut(&mut self, partition: u32) -> Result<&mut GroupLog, SharedLogError> {
        self.groups.get_mut(&partition).ok_or_else(|| no_group(partition))
    }

    /// Position of the last record staged (durable or not).
    pub fn last_position(&self) -> u64 {
        self.wal.last_index()
    }

    /// Position of the last record known durable.
    pub fn durable_position(&self) -> u64 {
        self.wal.durable_index()
    }

    /// Whether staged records are not all durable yet.
    pub fn unsynced(&self) -> bool {
        self.wal.durable_index() < self.wal.last_index()
    }

    /// Starts writing what is staged (one write + one fdatasync), if nothing is in flight; no wait.
    pub fn submit(&mut self) -> Result<bool, SharedLogError> {
        Ok(self.wal.submit()?)
    }

    /// Non-blocking: completes a finished write + fdatasync and submits what is staged next. Returns the
    /// durable position.
    pub fn poll(&mut self) -> Result<u64, SharedLogError> {
        Ok(self.wal.poll()?)
    }

    /// Blocks until everything staged is durable.
    pub fn sync(&mut self) -> Result<u64, SharedLogError> {
        Ok(self.wal.wait()?)
    }

    /// See `Wal::register_completion_eventfd`.
    pub fn register_completion_eventfd(&self, eventfd: std::os::fd::RawFd) -> Result<(), SharedLogError> {
        Ok(self.wal.register_completion_eventfd(eventfd)?)
    }

    /// Segments of the log (the last one may not have a file yet).
    pub fn segment_count(&self) -> usize {
        self.wal.segment_first_indexes().count()
    }

    /// The shard's snapshot thread has made the image of `partition`'s compaction at `index`
    /// durable in its snapshot file ([`write_compaction_file`]); the `create_snapshot` that records
    /// it next writes nothing. Ignored when the group's snapshot already covers that index.
    pub fn compaction_written(&mut self, partition: u32, index: u64) -> Result<(), SharedLogError> {
        self.check_writable()?;
        let group = self.group_mut(partition)?;
        if index > group.snapshot.meta.index {
            group.compaction_file_written = Some(index);
        }
        Ok(())
    }

    /// The shard's snapshot thread has rebuilt the state of a snapshot received for `partition` at
    /// `index`, and (with `staged`) written and synced its image under its staged name
    /// ([`stage_install_file`]): the `apply_snapshot` that installs it renames the file into place
    /// instead of writing hundreds of MB in the round. Without `staged` (staging failed) nothing is
    /// renamed and the install writes its file itself. Either way a mark left by an earlier received
    /// snapshot (Raft found it stale) goes, with its file: a failed staging may have truncated the file
    /// an earlier mark for the same index names.
    pub fn install_staged(&mut self, partition: u32, index: u64, staged: bool) -> Result<(), SharedLogError> {
        self.check_writable()?;
        let dir = self.dir.clone();
        let group = self.group_mut(partition)?;
        let earlier = std::mem::replace(&mut group.install_file_staged, staged.then_some(index));
        if let Some(earlier) = earlier.filter(|&earlier| !(staged && earlier == index)) {
            remove_staged_install_file(&dir, partition, earlier)?;
        }
        Ok(())
    }

    /// Whether purge asked this group to compact and it has not yet.
    pub fn compaction_wanted(&self, partition: u32) -> bool {
        self.groups.get(&partition).is_some_and(|group| group.compaction_wanted)
    }

    /// Appends one record, waiting for the batch in flight once if the pending buffer is full.
    fn stage(&mut self, kind: u8) -> Result<u64, SharedLogError> {
        self.check_writable()?;
        let position = self.wal.last_index() + 1;
        match self.wal.append(position, WAL_TERM, kind, &self.scratch) {
            Err(WalError::PendingFull { .. }) => {
                self.wal.wait()?;
                self.wal.append(position, WAL_TERM, kind, &self.scratch)?;
            }
            other => other?,
        }
        Ok(position)
    }

    fn stage_base(&mut self, partition: u32, kind: u8, index: u64, term: u64) -> Result<u64, SharedLogError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&partition.to_le_bytes());
        self.scratch.extend_from_slice(&index.to_le_bytes());
        self.scratch.extend_from_slice(&term.to_le_bytes());
        self.stage(kind)
    }

    fn stage_hard_state(&mut self, partition: u32, hard_state: &HardState) -> Result<u64, SharedLogError> {
        self.scratch.clear();
        self.scratch.extend_from_slice(&partition.to_le_bytes());
        encode_hard_state(hard_state, &mut self.scratch);
        self.stage(RECORD_HARD_STATE)
    }

    /// Frees the oldest segments that no group needs any more. A record is needed while it is the
    /// newest durable one of its kind for its group (a HardState; an Install or Base) or an entry above
    /// the group's snapshot. To free every sealed segment but the newest `PURGE_SEGMENTS_RETAINED`, a
    /// group whose HardState or Base record is in one gets it written again (the old one goes once the
    /// new one is durable, at a later purge), and a group whose entries are in one is asked to compact
    /// (`compaction_wanted`; at most `PURGE_COMPACTIONS_WANTED_MAX` groups at a time, oldest first).
    pub fn purge(&mut self) -> Result<PurgeReport, SharedLogError> {
        self.check_writable()?;
        let mut report = PurgeReport::default();
        let durable = self.wal.durable_index();
        for group in self.groups.values_mut() {
            group.trim_records(durable);
        }
        let firsts: Vec<u64> = self.wal.segment_first_indexes().collect();
        // Sealed segments: all but the last; every one older than the newest retained ones is to go.
        let sealed = firsts.len() - 1;
        if sealed > PURGE_SEGMENTS_RETAINED {
            let free_below = firsts[sealed - PURGE_SEGMENTS_RETAINED];
            let mut rewrite = Vec::new();
            let mut pinning: Vec<(u64, u32)> = Vec::new();
            let mut wanted = 0;
            for (&partition, group) in self.groups.iter_mut() {
                if let Some(&position) = group.positions.front().filter(|&&position| position < free_below) {
                    if group.compaction_wanted {
                        wanted += 1;
                    } else {
                        pinning.push((position, partition));
                    }
                }
                // Only when no newer record of the kind is on its way already.
                let hard_state = group.hard_state_records.len() == 1 && group.hard_state_records[0] < free_below;
                let base = group.base_records.len() == 1 && group.base_records[0] < free_below;
                if hard_state || base {
                    rewrite.push((partition, hard_state, base));
                }
            }
            pinning.sort_unstable();
            for &(_, partition) in pinning.iter().take(PURGE_COMPACTIONS_WANTED_MAX.saturating_sub(wanted)) {
                self.group_mut(partition)?.compaction_wanted = true;
                report.compaction_wanted.push(partition);
            }
            for (partition, hard_state, base) in rewrite {
                let group = self.group(partition)?;
                let (state, index, term) = (group.hard_state, group.snapshot.meta.index, group.snapshot.meta.term);
                if hard_state {
                    let position = self.stage_hard_state(partition, &state)?;
                    self.group_mut(partition)?.hard_state_records.push_back(position);
                    report.records_rewritten += 1;
                }
                if base {
                    let position = self.stage_base(partition, RECORD_BASE, index, term)?;
                    self.group_mut(partition)?.base_records.push_back(position);
                    report.records_rewritten += 1;
                }
            }
        }
        let needed = self.groups.values().filter_map(GroupLog::needed_from).min();
        // Nothing needed at all: everything durable may go (the wal keeps its newest segment).
        let before = needed.unwrap_or(durable + 1).min(durable + 1);
        let segments = self.segment_count();
        self.wal.remove_prefix(before)?;
        report.segments_removed = segments - self.segment_count();
        Ok(report)
    }

    fn entries(&self, partition: u32, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>> {
        let group = self.group(partition)?;
        raft::storage::check_entries_range(low, high, group.first_index(), group.last_index())?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for index in low..high {
            let position = group.positions[(index - group.first_index()) as usize];
            let entry = self.read_entry(partition, index, position)?;
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn read_entry(&self, partition: u32, index: u64, position: u64) -> Result<Entry, SharedLogError> {
        let corrupt = |reason: String| {
            let (segment, offset) = self.wal.locate(position);
            SharedLogError::CorruptRecord { group: GroupName::Partition(partition), segment, offset, reason }
        };
        let record = self
            .wal
            .reader(position)?
            .next()
            .ok_or_else(|| corrupt(format!("no record at position {position}")))?
            .map_err(name_corrupt_group)?;
        match decode_record(record.kind, record.payload) {
            Ok(Decoded::Entry { partition: found, entry }) if found == partition && entry.index == index => Ok(entry),
            Ok(other) => {
                Err(corrupt(format!("position {position} holds {other:?}, not entry {index} of partition {partition}")))
            }
            Err((_, reason)) => Err(corrupt(reason)),
        }
    }

    fn append(&mut self, partition: u32, entries: &[Entry]) -> StorageResult<()> {
        let Some(first) = entries.first() else { return Ok(()) };
        let group = self.group(partition)?;
        raft::storage::check_append(entries, group.first_index(), group.last_index())?;
        let replaced_front = (first.index <= group.first_index()).then(|| group.positions.front().copied()).flatten();
        self.group_mut(partition)?.truncate_from(first.index);
        if let Some(old) = replaced_front {
            let replacing = self.wal.last_index() + 1;
            let group = self.group_mut(partition)?;
            group.replaced = Some(group.replaced.map_or((old, replacing), |(older, _)| (older.min(old), replacing)));
        }
        for entry in entries {
            self.scratch.clear();
            self.scratch.extend_from_slice(&partition.to_le_bytes());
            self.scratch.extend_from_slice(&entry.index.to_le_bytes());
            self.scratch.extend_from_slice(&entry.term.to_le_bytes());
            encode_entry_payload(&entry.payload, &mut self.scratch);
            let position = self.stage(RECORD_ENTRY)?;
            let group = self.group_mut(partition)?;
            group.positions.push_back(position);
            group.terms.push(entry.index, entry.term);
        }
        Ok(())
    }

    fn set_hard_state(&mut self, partition: u32, hard_state: HardState) -> StorageResult<()> {
        self.group(partition)?;
        let position = self.stage_hard_state(partition, &hard_state)?;
        let group = self.group_mut(partition)?;
        group.hard_state = hard_state;
        group.hard_state_records.push_back(position);
        Ok(())
    }

    fn apply_snapshot(&mut self, partition: u32, snapshot: Snapshot) -> StorageResult<()> {
        let current = self.group(partition)?.snapshot.meta.index;
        if snapshot.meta.index < current {
            return Err(StorageError::SnapshotOutOfDate { index: snapshot.meta.index, current_index: current });
        }
        self.check_writable()?;
        // The image first: a crash before the Install record is durable is completed at open.
        match self.group_mut(partition)?.install_file_staged.take() {
            Some(index) if index == snapshot.meta.index => {
                let staged = staged_install_path(&self.dir, partition, index);
                let path = snapshot_path(&self.dir, partition);
                fs::rename(&staged, &path).map_err(io_error("rename", &path))?;
                sync_parent(&path)?;
            }
            staged => {
                if let Some(index) = staged {
                    remove_staged_install_file(&self.dir, partition, index)?;
                }
                write_snapshot_file(&self.dir, partition, SNAPSHOT_KIND_INSTALL, &snapshot)?;
            }
        }
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        let position = self.stage_base(partition, RECORD_INSTALL, index, term)?;
        let group = self.group_mut(partition)?;
        group.positions.clear();
        group.terms.clear();
        group.snapshot = snapshot;
        group.base_records.push_back(position);
        // An older compaction's file, if one was written, is replaced by this image.
        group.compaction_file_written = None;
        Ok(())
    }

    fn create_snapshot(
        &mut self,
        partition: u32,
        index: u64,
        conf_state: ConfState,
        data: SnapshotData,
    ) -> StorageResult<()> {
        let group = self.group(partition)?;
        if index < group.snapshot.meta.index {
            return Err(StorageError::SnapshotOutOfDate { index, current_index: group.snapshot.meta.index });
        }
        let term = match group.term(index) {
            Some(term) => term,
            None if index > group.last_index() => {
                return Err(StorageError::Unavailable { index, last_index: group.last_index() })
            }
            None => return Err(StorageError::Compacted { index, first_index: group.first_index() }),
        };
        self.check_writable()?;
        let snapshot = Snapshot { meta: SnapshotMeta { index, term, conf_state }, data };
        if self.group_mut(partition)?.compaction_file_written.take() != Some(index) {
            write_snapshot_file(&self.dir, partition, SNAPSHOT_KIND_COMPACTION, &snapshot)?;
        }
        let group = self.group_mut(partition)?;
        group.compact_to(index);
        group.snapshot = snapshot;
        // The compaction file alone now says where the log starts.
        group.base_records.clear();
        group.compaction_wanted = false;
        Ok(())
    }
}

fn no_group(partition: u32) -> SharedLogError {
    SharedLogError::Inconsistent { partition, reason: "this shard's log holds no such group".into() }
}

/// Adds the partition of a corrupt record to the wal's error when the record's header verifies.
fn name_corrupt_group(error: WalError) -> SharedLogError {
    match error {
        WalError::Corrupt { segment, offset, reason } => {
            let group = partition_at(&segment, offset).map_or(GroupName::Unknown, GroupName::Partition);
            SharedLogError::CorruptRecord { group, segment, offset, reason }
        }
        other => other.into(),
    }
}

/// The partition named by the record at `offset` of `segment`, if its header verifies.
fn partition_at(segment: &Path, offset: u64) -> Option<u32> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(segment).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut bytes = [0u8; wal::RECORD_HEADER_BYTES + 4];
    file.read_exact(&mut bytes).ok()?;
    let header = wal::layout::decode_record_header(&bytes).ok()?;
    (header.payload_bytes >= 4).then(|| u32::from_le_bytes(bytes[wal::RECORD_HEADER_BYTES..].try_into().expect("4")))
}

#[derive(Debug)]
enum Decoded {
    Entry { partition: u32, entry: Entry },
    HardState { partition: u32, hard_state: HardState },
    Install { partition: u32, index: u64, term: u64 },
    Base { partition: u32, index: u64, term: u64 },
}

impl Decoded {
    fn partition(&self) -> u32 {
        match self {
            Decoded::Entry { partition, .. }
            | Decoded::HardState { partition, .. }
            | Decoded::Install { partition, .. }
            | Decoded::Base { partition, .. } => *partition,
        }
    }
}

fn decode_record(kind: u8, payload: &[u8]) -> Result<Decoded, (GroupName, String)> {
    let mut cursor = Cursor::new(payload);
    let partition = cursor.u32().map_err(|reason| (GroupName::Unknown, reason))?;
    let in_group = |reason: String| (GroupName::Partition(partition), reason);
    let decoded = match kind {
        RECORD_ENTRY => {
            let index = cursor.u64().map_err(in_group)?;
            let term = cursor.u64().map_err(in_group)?;
            let payload = decode_entry_payload(cursor.rest()).map_err(|e| in_group(format!("entry {index}: {e}")))?;
            Decoded::Entry { partition, entry: Entry { index, term, payload } }
        }
        RECORD_HARD_STATE => {
            let hard_state = decode_hard_state(&mut cursor).map_err(in_group)?;
            Decoded::HardState { partition, hard_state }
        }
        RECORD_INSTALL | RECORD_BASE => {
            let index = cursor.u64().map_err(in_group)?;
            let term = cursor.u64().map_err(in_group)?;
            cursor.finish().map_err(in_group)?;
            if kind == RECORD_INSTALL {
                Decoded::Install { partition, index, term }
            } else {
                Decoded::Base { partition, index, term }
            }
        }
        other => return Err(in_group(format!("unknown record kind {other}"))),
    };
    Ok(decoded)
}

/// A group as the scan rebuilds it, before its snapshot file is consulted.
#[derive(Debug, Default)]
struct ScanGroup {
    /// (index, term, position) of the last Install or Base record.
    base: Option<(u64, u64, u64)>,
    /// Index of the first entry held (entries before it were purged or compacted away).
    start: u64,
    positions: VecDeque<u64>,
    terms: TermRuns,
    hard_state: Option<(HardState, u64)>,
}

impl ScanGroup {
    fn last_index(&self) -> u64 {
        self.start + self.positions.len() as u64 - 1
    }

    fn apply(&mut self, position: u64, record: &Decoded) -> Result<(), String> {
        match record {
            Decoded::Entry { entry, .. } => {
                let index = entry.index;
                let base_index = self.base.map_or(0, |(index, _, _)| index);
                if index <= base_index {
                    return Err(format!("entry {index} at or below the group's snapshot index {base_index}"));
                }
                if self.positions.is_empty() || index < self.start {
                    // The first entry seen (older ones were compacted and purged), or a conflict that
                    // replaces every entry held.
                    self.start = index;
                    self.positions.clear();
                    self.terms.clear();
                } else if index <= self.last_index() {
                    // A conflicting suffix: what `append` truncated.
                    self.positions.truncate((index - self.start) as usize);
                    self.terms.truncate_from(index);
                } else if index != self.last_index() + 1 {
                    return Err(format!("entry {index} leaves a gap after entry {}", self.last_index()));
                }
                self.positions.push_back(position);
                self.terms.push(index, entry.term);
            }
            Decoded::HardState { hard_state, .. } => self.hard_state = Some((*hard_state, position)),
            Decoded::Install { index, term, .. } => {
                self.positions.clear();
                self.terms.clear();
                self.base = Some((*index, *term, position));
            }
            Decoded::Base { index, term, .. } => {
                if let Some((base_index, _, _)) = self.base {
                    if *index < base_index {
                        return Err(format!("base {index} below the earlier base {base_index}"));
                    }
                }
                self.drop_through(*index);
                self.base = Some((*index, *term, position));
            }
        }
        Ok(())
    }

    /// Drops entries at or below `index`.
    fn drop_through(&mut self, index: u64) {
        if self.positions.is_empty() || index < self.start {
            return;
        }
        let drop = ((index - self.start + 1) as usize).min(self.positions.len());
        self.positions.drain(..drop);
        self.terms.forget_before(index + 1);
        self.start = index + 1;
    }

    /// Reconciles the scanned records with the group's snapshot file; returns the group and whether an
    /// interrupted install was completed.
    fn finish(mut self, partition: u32, file: Option<(u8, Snapshot)>) -> Result<(GroupLog, bool), SharedLogError> {
        let inconsistent = |reason: String| SharedLogError::Inconsistent { partition, reason };
        let (kind, snapshot) = file.ok_or_else(|| inconsistent("records in the log but no snapshot file".into()))?;
        let (file_index, file_term) = (snapshot.meta.index, snapshot.meta.term);
        let mut base_records = VecDeque::new();
        let mut install_completed = false;
        match self.base {
            Some((index, _, _)) if index > file_index => {
                return Err(inconsistent(format!(
                    "the log says the snapshot is at {index}, the snapshot file at {file_index}"
                )))
            }
            Some((index, term, position)) if index == file_index => {
                if term != file_term {
                    return Err(inconsistent(format!(
                        "snapshot {index}: term {term} in the log, {file_term} in the file"
                    )));
                }
                base_records.push_back(position);
            }
            // The file is newer than every Install/Base record (or there is none).
            _ if kind == SNAPSHOT_KIND_INSTALL && file_index > 0 => {
                self.positions.clear();
                self.terms.clear();
                install_completed = true;
            }
            _ => {}
        }
        self.drop_through(file_index);
        if !self.positions.is_empty() && self.start != file_index + 1 {
            return Err(inconsistent(format!(
                "entries {}..{} after the snapshot at {file_index} are missing from the log",
                file_index + 1,
                self.start
            )));
        }
        let mut group =
            GroupLog { snapshot, positions: self.positions, terms: self.terms, base_records, ..GroupLog::default() };
        if let Some((hard_state, position)) = self.hard_state {
            group.hard_state = hard_state;
            group.hard_state_records.push_back(position);
        }
        Ok((group, install_completed))
    }
}

/// A group's view of its shard's log: Raft's `Storage` and the core's `ReplicaStorage`. Writes stage
/// records (durable once the shell syncs the log); snapshot images and rejoin markers are written
/// synchronously.
pub struct GroupStore {
    partition: u32,
    log: SharedLogHandle,
}

impl GroupStore {
    /// The view of `partition`, which must exist in the log (`bootstrap` it first if new).
    pub fn new(log: SharedLogHandle, partition: u32) -> Result<GroupStore, SharedLogError> {
        if !lock(&log).holds(partition) {
            return Err(no_group(partition));
        }
        Ok(GroupStore { partition, log })
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    fn log(&self) -> MutexGuard<'_, SharedLog> {
        lock(&self.log)
    }
}

/// The lock is only ever taken by the shard's own thread, one call at a time.
pub fn lock(log: &SharedLogHandle) -> MutexGuard<'_, SharedLog> {
    log.lock().expect("a panic while holding the shard's log stops the shard; nothing takes the lock after it")
}

impl Storage for GroupStore {
    fn initial_state(&self) -> StorageResult<RaftState> {
        let log = self.log();
        let group = log.group(self.partition)?;
        Ok(RaftState { hard_state: group.hard_state, conf_state: group.snapshot.meta.conf_state.clone() })
    }

    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>> {
        self.log().entries(self.partition, low, high, bytes_max)
    }

    fn term(&self, index: u64) -> StorageResult<u64> {
        let log = self.log();
        let group = log.group(self.partition)?;
        if let Some(term) = group.term(index) {
            return Ok(term);
        }
        if index < group.first_index() {
            return Err(StorageError::Compacted { index, first_index: group.first_index() });
        }
        Err(StorageError::Unavailable { index, last_index: group.last_index() })
    }

    fn first_index(&self) -> StorageResult<u64> {
        Ok(self.log().group(self.partition)?.first_index())
    }

    fn last_index(&self) -> StorageResult<u64> {
        Ok(self.log().group(self.partition)?.last_index())
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        Ok(self.log().group(self.partition)?.snapshot.clone())
    }

    fn append(&mut self, entries: &[Entry]) -> StorageResult<()> {
        self.log().append(self.partition, entries)
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> StorageResult<()> {
        self.log().set_hard_state(self.partition, hard_state)
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> StorageResult<()> {
        self.log().apply_snapshot(self.partition, snapshot)
    }

    fn create_snapshot(&mut self, index: u64, conf_state: ConfState, data: SnapshotData) -> StorageResult<()> {
        self.log().create_snapshot(self.partition, index, conf_state, data)
    }
}

impl ReplicaStorage for GroupStore {
    fn snapshot_index(&self) -> u64 {
        self.log().group(self.partition).map_or(0, |group| group.snapshot.meta.index)
    }

    fn compaction_wanted(&self) -> bool {
        self.log().compaction_wanted(self.partition)
    }

    fn rejoin_marker(&self) -> Result<Option<RejoinMarker>, EngineError> {
        let dir = self.log().directory().to_path_buf();
        read_rejoin_marker(&rejoin_marker_path(&dir, self.partition))
    }

    fn set_rejoin_marker(&mut self, marker: Option<RejoinMarker>) -> Result<(), EngineError> {
        let log = self.log();
        if log.is_read_only() {
            return Err(EngineError::Io(format!("{} was opened read-only", log.directory().display())));
        }
        let path = rejoin_marker_path(log.directory(), self.partition);
        match marker {
            Some(marker) => write_rejoin_marker(&path, marker),
            None => remove_rejoin_marker(&path),
        }
    }
}

fn read_rejoin_marker(path: &Path) -> Result<Option<RejoinMarker>, EngineError> {
    let text = match fs::read_to_string(path) {
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
fn write_rejoin_marker(path: &Path, marker: RejoinMarker) -> Result<(), EngineError> {
    let text = match marker {
        RejoinMarker::AwaitingReports => "awaiting-reports\n".to_string(),
        RejoinMarker::WithholdVotesUntil { index, term } => format!("withhold-votes-until {index} term {term}\n"),
    };
    replace_file(path, &[text.as_bytes()]).map_err(|e| EngineError::Io(e.to_string()))
}

fn remove_rejoin_marker(path: &Path) -> Result<(), EngineError> {
    let error = |e: std::io::Error| EngineError::Io(format!("{}: {e}", path.display()));
    fs::remove_file(path).map_err(error)?;
    sync_parent(path).map_err(|e| EngineError::Io(e.to_string()))
}

fn sync_parent(path: &Path) -> Result<(), SharedLogError> {
    let dir = path.parent().expect("files of a shard live in its directory");
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("fsync directory", dir))
}

/// Replaces `path` atomically with the concatenation of `parts`: a crash leaves either the old or the
/// new file, both whole.
fn replace_file(path: &Path, parts: &[&[u8]]) -> Result<(), SharedLogError> {
    let name = path.file_name().expect("a file name").to_string_lossy();
    let temp = path.with_file_name(format!("{name}{TEMP_SUFFIX}"));
    write_synced(&temp, parts)?;
    fs::rename(&temp, path).map_err(io_error("rename", path))?;
    sync_parent(path)
}

/// Creates (or truncates) `path` with the concatenation of `parts` and fsyncs it.
fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<(), SharedLogError> {
    let mut file = File::create(path).map_err(io_error("create temp", path))?;
    for part in parts {
        file.write_all(part).map_err(io_error("write temp", path))?;
    }
    file.sync_all().map_err(io_error("fsync temp", path))
}

/// Leftover temporaries of an interrupted `replace_file` (the old file is still whole).
fn remove_temp_files(dir: &Path) -> Result<(), SharedLogError> {
    for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        let entry = entry.map_err(io_error("list directory", dir))?;
        if entry.file_name().to_string_lossy().ends_with(TEMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(io_error("remove temp", &entry.path()))?;
        }
    }
    Ok(())
}

fn list_snapshot_files(dir: &Path) -> Result<Vec<u32>, SharedLogError> {
    let mut partitions = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(partitions),
        Err(error) => return Err(io_error("list directory", dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("list directory", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let digits =
            name.strip_prefix(SNAPSHOT_FILE_PREFIX).filter(|d| d.len() == 5 && d.bytes().all(|b| b.is_ascii_digit()));
        if let Some(partition) = digits.and_then(|d| d.parse().ok()) {
            partitions.push(partition);
        }
    }
    Ok(partitions)
}

/// Writes a compaction's image into `partition`'s snapshot file in the shard folder `dir` (temporary
/// file, fsync, rename, folder fsync), for the shard's snapshot thread; the shard thread must not write
/// that partition's file meanwhile (the core installs no snapshot while the partition's compaction is
/// out).
pub fn write_compaction_file(dir: &Path, partition: u32, snapshot: &Snapshot) -> Result<(), SharedLogError> {
    write_snapshot_file(dir, partition, SNAPSHOT_KIND_COMPACTION, snapshot)
}

/// Where the shard's snapshot thread stages the image of a snapshot received for `partition` at
/// `index` (a temporary: a writable open removes it).
fn staged_install_path(dir: &Path, partition: u32, index: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_FILE_PREFIX}{partition:05}.install-{index}{TEMP_SUFFIX}"))
}

/// Writes and syncs, under its staged name, the image file that installing the received `snapshot`
/// puts in place ([`SharedLog::install_staged`]); for the shard's snapshot thread, off the round. The
/// bytes are those the install would write itself.
pub fn stage_install_file(dir: &Path, partition: u32, snapshot: &Snapshot) -> Result<(), SharedLogError> {
    let path = staged_install_path(dir, partition, snapshot.meta.index);
    let (head, checksum) = snapshot_frame(SNAPSHOT_KIND_INSTALL, snapshot);
    write_synced(&path, &[&head, &snapshot.data, &checksum]).inspect_err(|_| {
        // A partial file is never renamed (the shard clears its mark), and a full disk gets its space
        // back at once rather than at the next open.
        let _ = fs::remove_file(&path);
    })
}

fn remove_staged_install_file(dir: &Path, partition: u32, index: u64) -> Result<(), SharedLogError> {
    let path = staged_install_path(dir, partition, index);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove staged install", &path)(error)),
    }
}

fn write_snapshot_file(dir: &Path, partition: u32, kind: u8, snapshot: &Snapshot) -> Result<(), SharedLogError> {
    let path = snapshot_path(dir, partition);
    let (head, checksum) = snapshot_frame(kind, snapshot);
    replace_file(&path, &[&head, &snapshot.data, &checksum])
}

/// A snapshot file's frame around `snapshot.data`: its head and its checksum.
fn snapshot_frame(kind: u8, snapshot: &Snapshot) -> (Vec<u8>, [u8; 8]) {
    // Frame = magic, body length, body (kind, meta, data length, data), xxh3 of everything before it.
    // The data (an image of up to hundreds of MB) is written from where it is, never copied into the
    // frame: the head is built, the checksum streamed over head and data.
    let mut head = Vec::with_capacity(FRAME_HEADER_BYTES + 64);
    head.extend_from_slice(&SNAPSHOT_MAGIC);
    head.extend_from_slice(&[0; 8]);
    head.push(kind);
    encode_snapshot_meta(snapshot, &mut head);
    let body_len = (head.len() - FRAME_HEADER_BYTES + snapshot.data.len()) as u64;
    head[SNAPSHOT_MAGIC.len()..FRAME_HEADER_BYTES].copy_from_slice(&body_len.to_le_bytes());
    let mut checksum = Xxh3::new();
    checksum.update(&head);
    checksum.update(&snapshot.data);
    (head, checksum.digest().to_le_bytes())
}

/// The snapshot file at `path` with its kind, `None` if there is none.
fn read_snapshot_file(path: &Path) -> Result<Option<(u8, Snapshot)>, SharedLogError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("read", path)(error)),
    };
    let corrupt = |reason: String| SharedLogError::CorruptSnapshot { path: path.to_path_buf(), reason };
    let header_bytes = match bytes.get(..4) {
        Some(magic) if magic == SNAPSHOT_MAGIC => FRAME_HEADER_BYTES,
        Some(magic) if magic == SNAPSHOT_MAGIC_U32_LENGTH => FRAME_HEADER_BYTES_U32_LENGTH,
        _ if bytes.len() < FRAME_HEADER_BYTES_U32_LENGTH + FRAME_CHECKSUM_BYTES => {
            return Err(corrupt(format!("{} bytes is shorter than a frame", bytes.len())));
        }
        _ => return Err(corrupt("bad magic".to_string())),
    };
    if bytes.len() < header_bytes + FRAME_CHECKSUM_BYTES {
        return Err(corrupt(format!("{} bytes is shorter than a frame", bytes.len())));
    }
    let length = &bytes[4..header_bytes];
    let body_len = match *length {
        [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
        _ => u64::from_le_bytes(length.try_into().expect("8 bytes")),
    };
    let whole = (header_bytes as u64).checked_add(body_len).and_then(|n| n.checked_add(FRAME_CHECKSUM_BYTES as u64));
    if whole != Some(bytes.len() as u64) {
        return Err(corrupt(format!("length {} does not match body length {body_len}", bytes.len())));
    }
    let (framed, checksum) = bytes.split_at(bytes.len() - FRAME_CHECKSUM_BYTES);
    if xxh3_64(framed) != u64::from_le_bytes(checksum.try_into().expect("8 bytes")) {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let mut cursor = Cursor::new(&framed[header_bytes..]);
    let kind = cursor.u8().map_err(corrupt)?;
    if kind != SNAPSHOT_KIND_COMPACTION && kind != SNAPSHOT_KIND_INSTALL {
        return Err(corrupt(format!("unknown snapshot kind {kind}")));
    }
    let (meta, data_len) = decode_snapshot_meta(&mut cursor).map_err(corrupt)?;
    let data_start = framed.len() - cursor.bytes.len();
    cursor.take(data_len).map_err(corrupt)?;
    cursor.finish().map_err(corrupt)?;
    // The image is the file's bytes from `data_start`, moved to the front of the buffer that read the
    // file rather than copied into a second one (an image is hundreds of MB, one per group at open).
    let mut data = bytes;
    data.truncate(data_start + data_len);
    data.drain(..data_start);
    Ok(Some((kind, Snapshot { meta, data: data.into() })))
}

fn encode_entry_payload(payload: &Payload, out: &mut Vec<u8>) {
    match payload {
        Payload::Noop => out.push(ENTRY_NOOP),
        Payload::Data(data) => {
            out.push(ENTRY_DATA);
            out.extend_from_slice(data);
        }
        Payload::ConfChange(change) => {
            out.push(ENTRY_CONF_CHANGE);
            out.push(match change.kind {
                ConfChangeKind::AddVoter => CONF_ADD_VOTER,
                ConfChangeKind::AddLearner => CONF_ADD_LEARNER,
                ConfChangeKind::Remove => CONF_REMOVE,
            });
            out.extend_from_slice(&change.node.to_le_bytes());
        }
    }
}

fn decode_entry_payload(bytes: &[u8]) -> Result<Payload, String> {
    let (&kind, rest) = bytes.split_first().ok_or("empty entry")?;
    match kind {
        ENTRY_NOOP if rest.is_empty() => Ok(Payload::Noop),
        ENTRY_NOOP => Err(format!("noop with {} trailing bytes", rest.len())),
        ENTRY_DATA => Ok(Payload::data(rest.to_vec())),
        ENTRY_CONF_CHANGE => {
            let mut cursor = Cursor::new(rest);
            let kind = match cursor.u8()? {
                CONF_ADD_VOTER => ConfChangeKind::AddVoter,
                CONF_ADD_LEARNER => ConfChangeKind::AddLearner,
                CONF_REMOVE => ConfChangeKind::Remove,
                other => return Err(format!("unknown conf change kind {other}")),
            };
            let node = cursor.u64()?;
            cursor.finish()?;
            Ok(Payload::ConfChange(ConfChange { kind, node }))
        }
        other => Err(format!("unknown entry kind {other}")),
    }
}

/// The data bytes of an Entry record's payload, for inspection tools: (partition, index, term, data)
/// when the record is an entry carrying data.
pub fn entry_record_data(kind: u8, payload: &[u8]) -> Option<(u32, u64, u64, &[u8])> {
    if kind != RECORD_ENTRY || payload.len() <= ENTRY_RECORD_HEADER_BYTES {
        return None;
    }
    let partition = u32::from_le_bytes(payload[0..4].try_into().expect("4 bytes"));
    let index = u64::from_le_bytes(payload[4..12].try_into().expect("8 bytes"));
    let term = u64::from_le_bytes(payload[12..20].try_into().expect("8 bytes"));
    (payload[ENTRY_RECORD_HEADER_BYTES] == ENTRY_DATA)
        .then(|| (partition, index, term, &payload[ENTRY_RECORD_HEADER_BYTES + 1..]))
}

/// One line describing a record of the shared log (for `walletctl wal dump`).
pub fn describe_record(kind: u8, payload: &[u8]) -> String {
    match decode_record(kind, payload) {
        Ok(Decoded::Entry { partition, entry }) => {
            let what = match &entry.payload {
                Payload::Noop => "noop".to_string(),
                Payload::Data(data) => format!("data, {} bytes", data.len()),
                Payload::ConfChange(change) => format!("conf change {:?} node {}", change.kind, change.node),
            };
            format!("partition {partition} entry {} term {}: {what}", entry.index, entry.term)
        }
        Ok(Decoded::HardState { partition, hard_state }) => format!(
            "partition {partition} hard state: term {} vote {:?} commit {}",
            hard_state.term, hard_state.vote, hard_state.commit
        ),
        Ok(Decoded::Install { partition, index, term }) => {
            format!("partition {partition} installed snapshot at index {index} term {term}")
        }
        Ok(Decoded::Base { partition, index, term }) => {
            format!("partition {partition} log continues the snapshot at index {index} term {term}")
        }
        Err((group, reason)) => format!("UNDECODABLE record of {group}: {reason}"),
    }
}

fn encode_hard_state(hard_state: &HardState, out: &mut Vec<u8>) {
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.push(u8::from(hard_state.vote.is_some()));
    out.extend_from_slice(&hard_state.vote.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
}

fn decode_hard_state(cursor: &mut Cursor<'_>) -> Result<HardState, String> {
    let term = cursor.u64()?;
    let has_vote = cursor.u8()?;
    let vote = cursor.u64()?;
    let commit = cursor.u64()?;
    cursor.finish()?;
    let vote = match has_vote {
        0 => None,
        1 => Some(vote),
        other => return Err(format!("vote flag {other}")),
    };
    Ok(HardState { term, vote, commit })
}

/// The snapshot's encoding up to its data: meta, then the data's length (the data follows).
fn encode_snapshot_meta(snapshot: &Snapshot, body: &mut Vec<u8>) {
    let meta = &snapshot.meta;
    body.extend_from_slice(&meta.index.to_le_bytes());
    body.extend_from_slice(&meta.term.to_le_bytes());
    for set in [&meta.conf_state.voters, &meta.conf_state.learners] {
        let count = u32::try_from(set.len()).expect("membership is far below u32::MAX nodes");
        body.extend_from_slice(&count.to_le_bytes());
        for id in set {
            body.extend_from_slice(&id.to_le_bytes());
        }
    }
    body.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
}

/// A snapshot file body's meta and the length of the data that follows it.
fn decode_snapshot_meta(cursor: &mut Cursor<'_>) -> Result<(SnapshotMeta, usize), String> {
    let index = cursor.u64()?;
    let term = cursor.u64()?;
    let mut sets = [BTreeSet::new(), BTreeSet::new()];
    for set in &mut sets {
        let count = cursor.u32()?;
        for _ in 0..count {
            set.insert(cursor.u64()?);
        }
    }
    let [voters, learners] = sets;
    let data_len = usize::try_from(cursor.u64()?).map_err(|_| "data length overflows usize".to_string())?;
    Ok((SnapshotMeta { index, term, conf_state: ConfState { voters, learners } }, data_len))
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < count {
            return Err(format!("needs {count} more bytes, {} left", self.bytes.len()));
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("took 4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }

    fn finish(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.bytes.len()))
        }
    }
}
