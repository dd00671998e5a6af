//! `WalStorage`: the Raft `Storage` contract on top of the on-disk `wal::Wal`.
//!
//! Layout of the directory: the wal's segment files (one record per Raft entry, record index =
//! entry index, record term = entry term) plus two small files, `raft-hard-state` and
//! `raft-snapshot`, each replaced atomically (write temp, fsync, rename, fsync directory) and
//! framed with an xxh3 checksum so a torn or rotted file is reported as
//! `WalStorageError::CorruptMeta` instead of being trusted.
//!
//! Every mutating method is durable when it returns: appends wait for the wal's fdatasync, and the
//! metadata files are synced before the rename that publishes them.
//!
//! Entry payload layout (little-endian), also the wal record's kind byte:
//! - `0` Noop: the kind byte alone.
//! - `1` Data: the kind byte, then the application bytes.
//! - `2` ConfChange: the kind byte, the change kind (`0` AddVoter, `1` AddLearner, `2` Remove),
//!   then the node id as u64.
//!
//! Metadata file layout: magic (4 bytes), body length (u32), body, xxh3-64 of everything before
//! it (u64). Hard state body: term u64, vote flag u8, vote u64, commit u64. Snapshot body: index
//! u64, term u64, voter count u32 + ids u64, learner count u32 + ids u64, data length u64 + data.
//!
//! Crash between writing `raft-snapshot` and resetting the wal (installing a leader's snapshot):
//! `open` sees a wal that does not continue the snapshot and resets it then.

use raft::storage::StorageResult;
use raft::{ConfChange, ConfChangeKind, ConfState, Entry, HardState, Payload, RaftState, Snapshot, SnapshotMeta};
use raft::{Storage, StorageError};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use wal::{Wal, WalError, WalOptions};
use xxhash_rust::xxh3::xxh3_64;

pub const HARD_STATE_FILE: &str = "raft-hard-state";
pub const SNAPSHOT_FILE: &str = "raft-snapshot";
const TEMP_SUFFIX: &str = ".tmp";
const HARD_STATE_MAGIC: [u8; 4] = *b"RHS1";
const SNAPSHOT_MAGIC: [u8; 4] = *b"RSN1";
/// Magic + body length in front of the body, checksum after it.
const FRAME_HEADER_BYTES: usize = 8;
const FRAME_CHECKSUM_BYTES: usize = 8;

const KIND_NOOP: u8 = 0;
const KIND_DATA: u8 = 1;
const KIND_CONF_CHANGE: u8 = 2;

const CONF_ADD_VOTER: u8 = 0;
const CONF_ADD_LEARNER: u8 = 1;
const CONF_REMOVE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum WalStorageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("raft storage i/o error during {operation} on {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt raft metadata file {path}: {reason}")]
    CorruptMeta { path: PathBuf, reason: String },
    #[error("corrupt entry {index} in the wal: {reason}")]
    CorruptEntry { index: u64, reason: String },
}

impl From<WalStorageError> for StorageError {
    fn from(error: WalStorageError) -> StorageError {
        StorageError::Other(error.to_string())
    }
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> WalStorageError {
    let path = path.to_path_buf();
    move |source| WalStorageError::Io { operation, path, source }
}

pub struct WalStorage {
    wal: Wal,
    dir: PathBuf,
    hard_state: HardState,
    /// `snapshot.meta.index + 1` is the first index; index 0 with empty data when none.
    snapshot: Snapshot,
    /// Opened read-only over a log that does not continue the snapshot: only the snapshot is served.
    log_detached: bool,
}

impl WalStorage {
    /// Opens (creating if missing) the storage in `dir`, which it shares with the wal's segments.
    pub fn open(dir: &Path, options: WalOptions) -> Result<WalStorage, WalStorageError> {
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        let (hard_state, snapshot) = read_meta_files(dir)?;
        let (mut wal, _report) = Wal::open(dir, options)?;
        wal.set_sync_observer(crate::metrics::observe_fsync);
        if !log_continues_snapshot(&wal, &snapshot) {
            wal.reset(snapshot.meta.index + 1)?;
        }
        Ok(WalStorage { wal, dir: dir.to_path_buf(), hard_state, snapshot, log_detached: false })
    }

    /// Opens a stopped replica's storage for reading only (`walletctl verify`): no file is created,
    /// repaired or rewritten (the log through `Wal::open_read_only`). Where `open` would restart a log
    /// that does not continue the snapshot (a crash between the snapshot file and the log reset), this
    /// serves the snapshot alone, which is what `open` would leave. Every write is refused.
    pub fn open_read_only(dir: &Path, options: WalOptions) -> Result<WalStorage, WalStorageError> {
        let (hard_state, snapshot) = read_meta_files(dir)?;
        let (wal, _report) = Wal::open_read_only(dir, options)?;
        let log_detached = !log_continues_snapshot(&wal, &snapshot);
        Ok(WalStorage { wal, dir: dir.to_path_buf(), hard_state, snapshot, log_detached })
    }
}

fn read_meta_files(dir: &Path) -> Result<(HardState, Snapshot), WalStorageError> {
    let hard_state = match read_meta(&dir.join(HARD_STATE_FILE), HARD_STATE_MAGIC)? {
        Some(body) => decode_hard_state(&body).map_err(|reason| corrupt_meta(dir, HARD_STATE_FILE, reason))?,
        None => HardState::default(),
    };
    let snapshot = match read_meta(&dir.join(SNAPSHOT_FILE), SNAPSHOT_MAGIC)? {
        Some(body) => decode_snapshot(&body).map_err(|reason| corrupt_meta(dir, SNAPSHOT_FILE, reason))?,
        None => Snapshot::default(),
    };
    Ok((hard_state, snapshot))
}

/// Whether the log holds the entries right after the snapshot (and agrees on its term).
fn log_continues_snapshot(wal: &Wal, snapshot: &Snapshot) -> bool {
    let snapshot_index = snapshot.meta.index;
    wal.first_index() <= snapshot_index + 1
        && wal.last_index() >= snapshot_index
        && (snapshot_index == 0
            || snapshot_index < wal.first_index()
            || wal.term_at(snapshot_index) == Some(snapshot.meta.term))
}

impl WalStorage {
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// Gives a brand-new group its first membership: a snapshot at index 0 without data, like a fresh
    /// `MemStorage::new_with_conf`. Returns false and changes nothing when the storage already holds a
    /// membership, a snapshot or entries.
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<bool, WalStorageError> {
        let fresh = self.snapshot.meta.index == 0
            && self.snapshot.meta.conf_state == ConfState::default()
            && self.wal.last_index() < self.offset();
        if !fresh {
            return Ok(false);
        }
        let snapshot = Snapshot { meta: SnapshotMeta { index: 0, term: 0, conf_state }, data: Vec::new() };
        self.write_snapshot_file(&snapshot)?;
        self.snapshot = snapshot;
        Ok(true)
    }

    /// Index of the snapshot the log continues (0 when none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.meta.index
    }

    fn offset(&self) -> u64 {
        self.snapshot.meta.index + 1
    }

    fn append_durably(&mut self, entries: &[Entry]) -> Result<(), WalStorageError> {
        let mut payload = Vec::new();
        for entry in entries {
            payload.clear();
            let kind = encode_payload(&entry.payload, &mut payload);
            match self.wal.append(entry.index, entry.term, kind, &payload) {
                Err(WalError::PendingFull { .. }) => {
                    self.wal.wait()?;
                    self.wal.append(entry.index, entry.term, kind, &payload)?;
                }
                other => other?,
            }
        }
        self.wal.wait()?;
        Ok(())
    }

    /// Every write of a meta file passes here; the log itself refuses writes when read-only.
    fn check_writable(&self) -> Result<(), WalStorageError> {
        if self.wal.is_read_only() {
            return Err(WalError::ReadOnly { dir: self.dir.clone() }.into());
        }
        Ok(())
    }

    fn write_snapshot_file(&self, snapshot: &Snapshot) -> Result<(), WalStorageError> {
        self.check_writable()?;
        write_meta(&self.dir, SNAPSHOT_FILE, SNAPSHOT_MAGIC, &encode_snapshot(snapshot))
    }
}

impl Storage for WalStorage {
    fn initial_state(&self) -> StorageResult<RaftState> {
        Ok(RaftState { hard_state: self.hard_state, conf_state: self.snapshot.meta.conf_state.clone() })
    }

    fn entries(&self, low: u64, high: u64, bytes_max: u64) -> StorageResult<Vec<Entry>> {
        raft::storage::check_entries_range(low, high, self.offset(), self.last_index()?)?;
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        let reader = self.wal.reader(low).map_err(WalStorageError::from)?;
        let mut bytes = 0u64;
        for record in reader.take((high - low) as usize) {
            let record = record.map_err(WalStorageError::from)?;
            let payload = decode_payload(record.kind, record.payload)
                .map_err(|reason| WalStorageError::CorruptEntry { index: record.index, reason })?;
            let entry = Entry { index: record.index, term: record.term, payload };
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> StorageResult<u64> {
        if index == self.snapshot.meta.index {
            return Ok(self.snapshot.meta.term);
        }
        if index < self.offset() {
            return Err(StorageError::Compacted { index, first_index: self.offset() });
        }
        let last_index = self.last_index()?;
        if index > last_index {
            return Err(StorageError::Unavailable { index, last_index });
        }
        self.wal.term_at(index).ok_or_else(|| StorageError::Other(format!("wal holds no term for index {index}")))
    }

    fn first_index(&self) -> StorageResult<u64> {
        Ok(self.offset())
    }

    fn last_index(&self) -> StorageResult<u64> {
        if self.log_detached {
            return Ok(self.snapshot.meta.index);
        }
        // `open`, `apply_snapshot` and `create_snapshot` keep the wal reaching the snapshot.
        Ok(self.wal.last_index().max(self.snapshot.meta.index))
    }

    fn snapshot(&self) -> StorageResult<Snapshot> {
        Ok(self.snapshot.clone())
    }

    fn append(&mut self, entries: &[Entry]) -> StorageResult<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        raft::storage::check_append(entries, self.offset(), self.last_index()?)?;
        self.wal.truncate_suffix(first.index).map_err(WalStorageError::from)?;
        if let Err(error) = self.append_durably(entries) {
            // Drop whatever part of the slice got in; if that fails too the wal is poisoned and
            // refuses further writes until reopened.
            let _ = self.wal.truncate_suffix(first.index);
            return Err(error.into());
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> StorageResult<()> {
        self.check_writable()?;
        write_meta(&self.dir, HARD_STATE_FILE, HARD_STATE_MAGIC, &encode_hard_state(&hard_state))?;
        self.hard_state = hard_state;
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> StorageResult<()> {
        if snapshot.meta.index < self.snapshot.meta.index {
            return Err(StorageError::SnapshotOutOfDate {
                index: snapshot.meta.index,
                current_index: self.snapshot.meta.index,
            });
        }
        // Snapshot first: a crash before the reset is repaired by `open`.
        self.write_snapshot_file(&snapshot)?;
        let next_index = snapshot.meta.index + 1;
        self.snapshot = snapshot;
        self.wal.reset(next_index).map_err(WalStorageError::from)?;
        Ok(())
    }

    fn create_snapshot(&mut self, index: u64, conf_state: ConfState, data: Vec<u8>) -> StorageResult<()> {
        if index < self.snapshot.meta.index {
            return Err(StorageError::SnapshotOutOfDate { index, current_index: self.snapshot.meta.index });
        }
        let term = self.term(index)?;
        let snapshot = Snapshot { meta: SnapshotMeta { index, term, conf_state }, data };
        self.write_snapshot_file(&snapshot)?;
        self.snapshot = snapshot;
        // Whole segments only; records at or below the snapshot that stay are simply not served.
        self.wal.remove_prefix(index + 1).map_err(WalStorageError::from)?;
        Ok(())
    }
}

fn encode_payload(payload: &Payload, out: &mut Vec<u8>) -> u8 {
    let kind = match payload {
        Payload::Noop => KIND_NOOP,
        Payload::Data(_) => KIND_DATA,
        Payload::ConfChange(_) => KIND_CONF_CHANGE,
    };
    out.push(kind);
    match payload {
        Payload::Noop => {}
        Payload::Data(data) => out.extend_from_slice(data),
        Payload::ConfChange(change) => {
            out.push(match change.kind {
                ConfChangeKind::AddVoter => CONF_ADD_VOTER,
                ConfChangeKind::AddLearner => CONF_ADD_LEARNER,
                ConfChangeKind::Remove => CONF_REMOVE,
            });
            out.extend_from_slice(&change.node.to_le_bytes());
        }
    }
    kind
}

fn decode_payload(record_kind: u8, bytes: &[u8]) -> Result<Payload, String> {
    let (&kind, rest) = bytes.split_first().ok_or("empty payload")?;
    if kind != record_kind {
        return Err(format!("payload kind {kind} differs from record kind {record_kind}"));
    }
    match kind {
        KIND_NOOP if rest.is_empty() => Ok(Payload::Noop),
        KIND_NOOP => Err(format!("noop with {} trailing bytes", rest.len())),
        KIND_DATA => Ok(Payload::Data(rest.to_vec())),
        KIND_CONF_CHANGE => {
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

fn encode_hard_state(hard_state: &HardState) -> Vec<u8> {
    let mut body = Vec::with_capacity(25);
    body.extend_from_slice(&hard_state.term.to_le_bytes());
    body.push(u8::from(hard_state.vote.is_some()));
    body.extend_from_slice(&hard_state.vote.unwrap_or(0).to_le_bytes());
    body.extend_from_slice(&hard_state.commit.to_le_bytes());
    body
}

fn decode_hard_state(body: &[u8]) -> Result<HardState, String> {
    let mut cursor = Cursor::new(body);
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

fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    let meta = &snapshot.meta;
    let mut body = Vec::with_capacity(40 + snapshot.data.len());
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
    body.extend_from_slice(&snapshot.data);
    body
}

fn decode_snapshot(body: &[u8]) -> Result<Snapshot, String> {
    let mut cursor = Cursor::new(body);
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
    let data = cursor.take(data_len)?.to_vec();
    cursor.finish()?;
    Ok(Snapshot { meta: SnapshotMeta { index, term, conf_state: ConfState { voters, learners } }, data })
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

fn corrupt_meta(dir: &Path, name: &str, reason: String) -> WalStorageError {
    WalStorageError::CorruptMeta { path: dir.join(name), reason }
}

/// Replaces `dir/name` atomically: a crash leaves either the old or the new file, both whole.
fn write_meta(dir: &Path, name: &str, magic: [u8; 4], body: &[u8]) -> Result<(), WalStorageError> {
    let body_len = u32::try_from(body.len()).map_err(|_| WalStorageError::CorruptMeta {
        path: dir.join(name),
        reason: format!("body of {} bytes exceeds u32", body.len()),
    })?;
    let mut bytes = Vec::with_capacity(FRAME_HEADER_BYTES + body.len() + FRAME_CHECKSUM_BYTES);
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(body);
    let checksum = xxh3_64(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());

    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = File::create(&temp).map_err(io_error("create temp", &temp))?;
    file.write_all(&bytes).map_err(io_error("write temp", &temp))?;
    file.sync_all().map_err(io_error("fsync temp", &temp))?;
    drop(file);
    fs::rename(&temp, &path).map_err(io_error("rename", &path))?;
    File::open(dir).and_then(|dir_file| dir_file.sync_all()).map_err(io_error("fsync directory", dir))?;
    Ok(())
}

/// The body of `path`, `None` if the file does not exist, `CorruptMeta` if it does not verify.
fn read_meta(path: &Path, magic: [u8; 4]) -> Result<Option<Vec<u8>>, WalStorageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("read", path)(error)),
    };
    let corrupt = |reason: String| WalStorageError::CorruptMeta { path: path.to_path_buf(), reason };
    if bytes.len() < FRAME_HEADER_BYTES + FRAME_CHECKSUM_BYTES {
        return Err(corrupt(format!("{} bytes is shorter than a frame", bytes.len())));
    }
    if bytes[..4] != magic {
        return Err(corrupt("bad magic".to_string()));
    }
    let body_len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    if bytes.len() != FRAME_HEADER_BYTES + body_len + FRAME_CHECKSUM_BYTES {
        return Err(corrupt(format!("length {} does not match body length {body_len}", bytes.len())));
    }
    let (framed, checksum) = bytes.split_at(FRAME_HEADER_BYTES + body_len);
    let stored = u64::from_le_bytes(checksum.try_into().expect("8 bytes"));
    if xxh3_64(framed) != stored {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    Ok(Some(framed[FRAME_HEADER_BYTES..].to_vec()))
}
