//! Log retention on a single node: bases, and the thread that makes them and frees old segments.
//!
//! A shard's log would otherwise grow for ever (at 2 M transfers/s, about 240 MB/s). Recovery needs
//! the log only after the store's durable checkpoint; history and the audits (`verify`, `walletctl
//! state`) need an older state to replay from. A **base** is that state: a copy of the shard's RocksDB
//! store (a RocksDB checkpoint: hard links where it can) together with hard links to the id-index run
//! files that state refers to, in `shard-SSS/base-{applied_index:020}/{state,ids/pPPPPP}`. A segment is
//! deleted only when every index in it is at or below the newest base and it is older than the
//! configured history retention (`log_retention_bytes`), so:
//! - restart still finds the log after the store's checkpoint (a base is made after RocksDB flushed,
//!   so the store never falls back below it);
//! - the audits replay from the base instead of the empty state at index 1;
//! - history reaches back as far as the retained log, and further back answers `HistoryCompacted`.
//!
//! Everything slow (the RocksDB flush and copy, linking, unlinking 256 MiB segments, pruning the store's
//! batch-index rows) runs on this module's thread, one job at a time; the shard only starts a job and
//! polls for its result, so no round waits for it.
//!
//! Crash order: a base is built in `base.tmp`, every file and folder of it synced, then renamed to its
//! final name and the shard folder synced; only then are older bases removed, and only after the shard
//! has learned of the new base may it detach segments. An interrupted build leaves `base.tmp` (removed at
//! the next open); an interrupted clean-up leaves an older base beside the newest (removed at the next
//! open; audits read only the newest); an interrupted segment deletion leaves old segments a reopen
//! finds again and the next purge deletes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::config::NodeConfig;
use crate::error::EngineError;
use crate::id_index::{self, ColdRun};
use crate::idempotency::IdEntry;
use crate::partition::PartitionState;
use crate::shard::{partition_config, restore_partition, shard_dir, Runs};
use crate::store::{Checkpoint, Store};

/// Folder-name prefix of a complete base; the suffix is its applied log index, 20 digits.
pub const BASE_DIR_PREFIX: &str = "base-";
/// Folder a base is built in before it is renamed into place.
pub const BASE_TMP_DIR: &str = "base.tmp";

/// The folder of the base at `index` in a shard's folder.
pub fn base_dir(shard_dir: &Path, index: u64) -> PathBuf {
    shard_dir.join(format!("{BASE_DIR_PREFIX}{index:020}"))
}

/// Where a base keeps one partition's id-index runs.
pub fn base_runs_dir(base: &Path, partition: u32) -> PathBuf {
    base.join("ids").join(format!("p{partition:05}"))
}

/// Every complete base in a shard's folder, oldest first: (applied index, folder). Changes nothing.
pub fn list_bases(shard_dir: &Path) -> Result<Vec<(u64, PathBuf)>, EngineError> {
    let mut bases = Vec::new();
    let entries = match fs::read_dir(shard_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(bases),
        Err(e) => return Err(io_error(shard_dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io_error(shard_dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(digits) = name.strip_prefix(BASE_DIR_PREFIX) else { continue };
        match digits.parse::<u64>() {
            Ok(index) if digits.len() == 20 => bases.push((index, path)),
            _ => {
                return Err(EngineError::Store(format!(
                    "{}: not a base folder name (expected {BASE_DIR_PREFIX} and 20 digits)",
                    path.display()
                )))
            }
        }
    }
    bases.sort();
    Ok(bases)
}

/// The newest complete base of a shard, if any (audits; changes nothing).
pub fn newest_base(shard_dir: &Path) -> Result<Option<(u64, PathBuf)>, EngineError> {
    Ok(list_bases(shard_dir)?.pop())
}

/// At a shard's open: removes an interrupted build and every base but the newest, and returns the newest.
pub fn tidy_bases(shard_dir: &Path) -> Result<Option<(u64, PathBuf)>, EngineError> {
    let tmp = shard_dir.join(BASE_TMP_DIR);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_error(&tmp, e))?;
    }
    let mut bases = list_bases(shard_dir)?;
    let newest = bases.pop();
    for (_, older) in bases {
        fs::remove_dir_all(&older).map_err(|e| io_error(&older, e))?;
    }
    sync_dir(shard_dir)?;
    Ok(newest)
}

/// One partition's id-index runs as the shard held them when it asked for a base, right after a
/// checkpoint: holding them keeps their files from being deleted (an expired run's file goes only when
/// its last holder drops it) until the base has linked them.
pub struct PartitionRuns {
    pub partition: u32,
    /// The partition's written runs (`IdTable::cold_runs`), oldest first.
    pub runs: Vec<Arc<ColdRun>>,
    /// The table's first in-memory arrival then: every older arrival is in `runs` or expired.
    pub head_arrival: u64,
    /// The partition's live run folder, where runs written since are.
    pub dir: PathBuf,
}

enum Job {
    /// Write one checkpoint the shard gathered (see `Shard::start_checkpoint`).
    Checkpoint {
        checkpoint: Checkpoint,
        applied: u64,
    },
    MakeBase {
        runs: Vec<PartitionRuns>,
    },
    Free {
        segments: Vec<PathBuf>,
        wal_dir: PathBuf,
        first_log_index: u64,
        partitions: Vec<u32>,
    },
}

/// What a job did.
#[derive(Debug)]
pub enum Done {
    /// The checkpoint at this applied index is in the store (or could not be written: the shard stops).
    /// `id_buffers`: the checkpoint's id-entry buffers, emptied, for reuse.
    Checkpoint { applied: u64, result: Result<(), String>, id_buffers: Vec<Vec<IdEntry>> },
    /// A base at this applied index is in place (and older ones are gone).
    Base { index: u64 },
    /// Segments archived (when an archive is configured) and deleted, and batch-index rows pruned.
    Freed { segments: usize, batch_rows: u64 },
    /// Freeing stopped at a segment it could not archive or delete; these are still on disk, oldest
    /// first, and the shard hands them over again later (the log has already forgotten them).
    FreeFailed { remaining: Vec<PathBuf>, why: String },
    /// The job failed; nothing the shard relies on changed (a base is only used once complete, and a
    /// segment that could not be deleted is found again by the next open). Retried later.
    Failed { job: &'static str, why: String },
}

/// The shard's handle on its retention thread.
pub struct Retainer {
    /// `Some` only while it lives: dropping it stops the thread.
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// A retention job (base, freeing) is running.
    busy: bool,
    /// A checkpoint write is queued or running.
    checkpointing: bool,
    thread: Option<JoinHandle<()>>,
}

impl Retainer {
    /// `archive`: the shard's folder in the configured archive, where segments are copied before they
    /// are deleted (`None`: deleted only).
    pub fn start(
        shard: u32,
        shard_dir: PathBuf,
        store: Store,
        id_hash_key: u64,
        archive: Option<PathBuf>,
    ) -> Result<Retainer, EngineError> {
        // At most one checkpoint and one retention job are outstanding, so neither queue ever fills.
        let (jobs, job_queue) = crossbeam_channel::bounded::<Job>(2);
        let (done_tx, done) = crossbeam_channel::bounded::<Done>(2);
        let thread = std::thread::Builder::new()
            .name(format!("shard-{shard}-retain"))
            .spawn(move || {
                for job in job_queue {
                    let done = match job {
                        Job::Checkpoint { checkpoint, applied } => {
                            let started = std::time::Instant::now();
                            let result = store.write_checkpoint(&checkpoint, applied).map_err(|e| e.to_string());
                            crate::metrics::observe_stage(crate::metrics::Stage::CheckpointWrite, started.elapsed());
                            Done::Checkpoint { applied, result, id_buffers: checkpoint.into_id_buffers() }
                        }
                        Job::MakeBase { runs } => match make_base(&shard_dir, &store, id_hash_key, runs) {
                            Ok(index) => Done::Base { index },
                            Err(why) => Done::Failed { job: "make a base", why },
                        },
                        Job::Free { segments, wal_dir, first_log_index, partitions } => {
                            let count = segments.len();
                            match free(&store, segments, &wal_dir, archive.as_deref(), first_log_index, &partitions) {
                                Ok(batch_rows) => Done::Freed { segments: count, batch_rows },
                                Err((remaining, why)) => Done::FreeFailed { remaining, why },
                            }
                        }
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Store(format!("cannot start the retention thread: {e}")))?;
        Ok(Retainer { jobs: Some(jobs), done, busy: false, checkpointing: false, thread: Some(thread) })
    }

    /// Whether a job is running (no other may start).
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Whether a checkpoint write is outstanding (no other may start).
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    fn send(&mut self, job: Job) {
        let checkpoint = matches!(job, Job::Checkpoint { .. });
        if checkpoint {
            assert!(!self.checkpointing, "one checkpoint write at a time");
            self.checkpointing = true;
        } else {
            assert!(!self.busy, "one retention job at a time");
            self.busy = true;
        }
        let jobs = self.jobs.as_ref().expect("jobs are only sent before shutdown");
        jobs.try_send(job).expect("at most two jobs are outstanding, and the thread lives as long as us");
    }

    /// Starts writing a checkpoint. Jobs run in order, so a base asked for after it copies a store that
    /// holds it.
    pub fn write_checkpoint(&mut self, checkpoint: Checkpoint, applied: u64) {
        self.send(Job::Checkpoint { checkpoint, applied });
    }

    /// Starts making a base from the store as it is now (the shard has just written a checkpoint).
    pub fn make_base(&mut self, runs: Vec<PartitionRuns>) {
        self.send(Job::MakeBase { runs });
    }

    /// Starts deleting segments the log has detached, then pruning batch-index rows below its new first
    /// index.
    pub fn free(&mut self, segments: Vec<PathBuf>, wal_dir: PathBuf, first_log_index: u64, partitions: Vec<u32>) {
        self.send(Job::Free { segments, wal_dir, first_log_index, partitions });
    }

    /// A finished job's result, if one has finished.
    pub fn poll(&mut self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(done) => Some(self.settle(done)),
            Err(TryRecvError::Empty) => None,
            // The thread only ends when its queue closes; a panic there is a bug to surface.
            Err(TryRecvError::Disconnected) => panic!("the retention thread died"),
        }
    }

    /// Waits for the next result (only while a job is outstanding).
    pub fn wait(&mut self) -> Done {
        assert!(self.busy || self.checkpointing, "waiting with no job outstanding would never end");
        let done = self.done.recv().expect("the retention thread lives while jobs are outstanding");
        self.settle(done)
    }

    fn settle(&mut self, done: Done) -> Done {
        if matches!(done, Done::Checkpoint { .. }) {
            assert!(self.checkpointing, "a checkpoint result without a checkpoint");
            self.checkpointing = false;
        } else {
            assert!(self.busy, "a result without a job");
            self.busy = false;
        }
        done
    }
}

impl Drop for Retainer {
    /// Lets a running job finish (a half-made base is only `base.tmp`, but there is no reason to waste
    /// it) and stops the thread.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An audit's starting point for a shard: the states of `partitions` as the newest base holds them and
/// the base's applied index, or empty states at index 0 when the shard has no base (its log starts at 1).
/// Read-only: the base's store is opened read-only and its run files are only read.
pub fn audit_base(
    config: &NodeConfig,
    shard: u32,
    partitions: impl IntoIterator<Item = u32>,
) -> Result<(u64, Vec<PartitionState>), EngineError> {
    let Some((index, dir)) = newest_base(&shard_dir(&config.data_dir, shard))? else {
        let states = partitions.into_iter().map(|p| PartitionState::new(partition_config(config, p))).collect();
        return Ok((0, states));
    };
    let store = Store::open_read_only(&dir.join("state"))?;
    let stored = store.applied_index()?;
    if stored != index {
        return Err(EngineError::Store(format!("{}: its store is at log index {stored}", dir.display())));
    }
    let mut states = Vec::new();
    for partition in partitions {
        let runs = base_runs_dir(&dir, partition);
        states.push(restore_partition(&store, config, partition, Runs::Audit(&runs))?.0);
    }
    Ok((index, states))
}

fn make_base(shard_dir: &Path, store: &Store, id_hash_key: u64, runs: Vec<PartitionRuns>) -> Result<u64, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    let tmp = shard_dir.join(BASE_TMP_DIR);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| text(&io_error(&tmp, e)))?;
    }
    fs::create_dir(&tmp).map_err(|e| text(&io_error(&tmp, e)))?;
    store.copy_to(&tmp.join("state")).map_err(|e| text(&e))?;
    let copy = Store::open_read_only(&tmp.join("state")).map_err(|e| text(&e))?;
    let index = copy.applied_index().map_err(|e| text(&e))?;
    fs::create_dir(tmp.join("ids")).map_err(|e| text(&io_error(&tmp, e)))?;
    for partition in &runs {
        let head = copy.partition_meta(partition.partition).map_err(|e| text(&e))?.map_or(0, |m| m.ids_head_arrival);
        let links = runs_of_base(partition, head, id_hash_key)?;
        let dest = base_runs_dir(&tmp, partition.partition);
        fs::create_dir(&dest).map_err(|e| text(&io_error(&dest, e)))?;
        for (first_arrival, source) in links {
            let target = dest.join(id_index::run_file_name(first_arrival));
            fs::hard_link(&source, &target)
                .map_err(|e| format!("link {} to {}: {e}", source.display(), target.display()))?;
        }
        sync_dir(&dest).map_err(|e| text(&e))?;
    }
    drop(copy);
    sync_dir(&tmp.join("ids")).map_err(|e| text(&e))?;
    sync_dir(&tmp.join("state")).map_err(|e| text(&e))?;
    sync_dir(&tmp).map_err(|e| text(&e))?;
    let existing = list_bases(shard_dir).map_err(|e| text(&e))?;
    if let Some((newest, _)) = existing.last() {
        // The store only moves forward, so neither may a base.
        if *newest >= index {
            fs::remove_dir_all(&tmp).map_err(|e| text(&io_error(&tmp, e)))?;
            return Ok(*newest);
        }
    }
    let target = base_dir(shard_dir, index);
    fs::rename(&tmp, &target).map_err(|e| text(&io_error(&target, e)))?;
    sync_dir(shard_dir).map_err(|e| text(&e))?;
    for (_, older) in existing {
        fs::remove_dir_all(&older).map_err(|e| text(&io_error(&older, e)))?;
    }
    sync_dir(shard_dir).map_err(|e| text(&e))?;
    Ok(index)
}

/// The run files a base whose partition holds arrivals from `head` on in memory needs: the held runs
/// before `head`, then the runs written since the capture, which must continue without a gap up to
/// `head` (a gap would be a run written and deleted in between; the base is refused and made again
/// later rather than built without it).
fn runs_of_base(partition: &PartitionRuns, head: u64, id_hash_key: u64) -> Result<Vec<(u64, PathBuf)>, String> {
    let mut links = Vec::new();
    for run in &partition.runs {
        if run.first_arrival >= head {
            continue;
        }
        let path = run.file_path().ok_or_else(|| {
            format!("partition {}: run {} left memory without a file", partition.partition, run.first_arrival)
        })?;
        links.push((run.first_arrival, path));
    }
    let mut next = partition.head_arrival;
    if head > next {
        let listed = id_index::list_runs_read_only(&partition.dir).map_err(|e| e.to_string())?;
        for (first_arrival, path) in listed {
            if first_arrival < partition.head_arrival || first_arrival >= head {
                continue;
            }
            if first_arrival != next {
                return Err(format!(
                    "partition {}: id runs from arrival {next} to {first_arrival} are missing; the base is retried",
                    partition.partition
                ));
            }
            let run = ColdRun::open_for_audit(&path, partition.partition, id_hash_key).map_err(|e| e.to_string())?;
            next = run.end_arrival;
            links.push((first_arrival, path));
        }
        if next != head {
            return Err(format!(
                "partition {}: id runs end at arrival {next}, the base's memory starts at {head}; the base is retried",
                partition.partition
            ));
        }
    }
    Ok(links)
}

fn free(
    store: &Store,
    segments: Vec<PathBuf>,
    wal_dir: &Path,
    archive: Option<&Path>,
    first_log_index: u64,
    partitions: &[u32],
) -> Result<u64, (Vec<PathBuf>, String)> {
    for (done, path) in segments.iter().enumerate() {
        let freed = archive
            .map_or(Ok(()), |archive| archive_segment(path, archive))
            .and_then(|()| match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(path, e)),
            })
            .and_then(|()| sync_dir(wal_dir));
        if let Err(error) = freed {
            return Err((segments[done..].to_vec(), error.to_string()));
        }
    }
    let mut pruned = 0;
    for &partition in partitions {
        pruned += store.prune_batch_index(partition, first_log_index).map_err(|e| (Vec::new(), e.to_string()))?;
    }
    Ok(pruned)
}

/// Puts a sealed segment into the archive under its own name, durably, before the log deletes it: a
/// hard link when the archive is on the same filesystem (nothing copied), else a copy written to a
/// temporary name, synced and renamed. An archived segment is never overwritten: one already there under
/// the name (a retry after a crash) must be the same bytes.
fn archive_segment(segment: &Path, archive: &Path) -> Result<(), EngineError> {
    let name = segment.file_name().ok_or_else(|| EngineError::Store(format!("{}: no file name", segment.display())))?;
    let target = archive.join(name);
    if target.exists() {
        let same = fs::read(&target).ok() == fs::read(segment).ok();
        return if same {
            Ok(())
        } else {
            Err(EngineError::Store(format!("{} is already archived with other contents", target.display())))
        };
    }
    if fs::hard_link(segment, &target).is_err() {
        let tmp = archive.join(format!("{}.tmp", name.to_string_lossy()));
        fs::copy(segment, &tmp).map_err(|e| io_error(&tmp, e))?;
        fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io_error(&tmp, e))?;
        fs::rename(&tmp, &target).map_err(|e| io_error(&target, e))?;
    }
    sync_dir(archive)
}

/// The archive's manifest, written when it is first used and checked at every start: segments of
/// another cluster, or of a node with another layout, never mix in one archive.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ArchiveManifest {
    format_version: u32,
    cluster_id: String,
    partitions: u32,
    shards: u32,
}

/// File name of the archive's manifest.
pub const ARCHIVE_MANIFEST_FILE: &str = "archive.toml";
/// Layout of an archive: `archive.toml`, then `shard-SSS/{first_index:020}.wal`, each segment exactly as
/// the log wrote it (so `Wal::open_read_only` reads a shard's archived segments as a log).
pub const ARCHIVE_FORMAT_VERSION: u32 = 1;

/// Opens (creating on first use) the configured archive and returns shard `shard`'s folder in it.
pub fn open_archive(config: &NodeConfig, shard: u32) -> Result<Option<PathBuf>, EngineError> {
    let Some(root) = &config.log_archive_dir else { return Ok(None) };
    let manifest = ArchiveManifest {
        format_version: ARCHIVE_FORMAT_VERSION,
        cluster_id: format!("{:#x}", config.cluster_id),
        partitions: config.partitions,
        shards: config.shards,
    };
    let path = root.join(ARCHIVE_MANIFEST_FILE);
    fs::create_dir_all(root).map_err(|e| io_error(root, e))?;
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found: ArchiveManifest = toml::from_str(&text)
                .map_err(|e| EngineError::Manifest { path: path.display().to_string(), why: e.to_string() })?;
            if found != manifest {
                return Err(EngineError::Manifest {
                    path: path.display().to_string(),
                    why: format!("the archive belongs to {found:?}, this node is {manifest:?}"),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = toml::to_string(&manifest).expect("the archive manifest serializes");
            let tmp = root.join(format!("{ARCHIVE_MANIFEST_FILE}.tmp"));
            fs::write(&tmp, text).map_err(|e| io_error(&tmp, e))?;
            fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| io_error(&tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
            sync_dir(root)?;
        }
        Err(e) => return Err(io_error(&path, e)),
    }
    let dir = root.join(format!("shard-{shard:03}"));
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    sync_dir(root)?;
    Ok(Some(dir))
}

fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, error: std::io::Error) -> EngineError {
    EngineError::Store(format!("{}: {error}", path.display()))
}
