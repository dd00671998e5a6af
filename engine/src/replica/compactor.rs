//! A replica shard's snapshot thread (`replica-N-snap`): it encodes the images of the core's
//! [`Compaction`]s and makes them durable in their partitions' snapshot files, off the shard round.
//! Encoding walks every id of the partition's window and the file is one large write + fsync: done in
//! the round, one compaction of a partition holding 3.3 M ids took 6.7 s of it (a one-node cluster
//! under load), and every client of the shard waited that long.
//!
//! At most one compaction per group is out at a time (the core hands out the next only after the
//! report), so the job queue is bounded by the shard's group count and `submit` never blocks. The
//! shard thread puts a partition's snapshot file in place itself only to install a snapshot received
//! from a leader, and the core never asks for that while the partition's compaction is out (it holds
//! the install back until the compaction is reported; [`Compactor::compacting`] lets the shard assert
//! it), so the two never write the file at once, a newer installed image is never replaced by an older
//! one, and the round never waits for this thread.
//!
//! The same thread rebuilds the state of a snapshot received from a leader ([`Restore`]) before the
//! core lets Raft install it: decoding a 300-480 MB image and rebuilding its id index held a
//! follower's round for 3-11 s. It also writes and syncs that snapshot's image file under a staged
//! name ([`stage_install_file`]), which the install then renames into place: writing the file in the
//! round held it for another 1.0-1.6 s. At most one restore per group is out too, so the queue holds
//! two jobs per group.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use raft::Snapshot;

use crate::error::EngineError;
use crate::replica::core::{Compaction, Restore, Restored};
use crate::replica::shared_log::{stage_install_file, write_compaction_file, SharedLogError};

/// A compaction's image is durable in its snapshot file (`Ok`, with the image), or could not be made so.
pub struct Compacted {
    pub partition: u32,
    pub index: u64,
    pub outcome: Result<raft::SnapshotData, SharedLogError>,
}

enum Job {
    Compact(Compaction),
    Restore(Restore),
}

/// What the thread finished: a compaction written, or a received snapshot's state rebuilt (and, with
/// `staged`, its image file staged for the install to rename into place).
pub enum Report {
    Compacted(Compacted),
    Restored { restored: Restored, staged: bool },
}

pub struct Compactor {
    jobs: Option<Sender<Job>>,
    replies: Receiver<Report>,
    /// Partitions with a compaction handed to the thread and not yet taken back.
    in_flight: BTreeSet<u32>,
    /// Partitions with a restore handed to the thread and not yet taken back.
    restoring: BTreeSet<u32>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Starts the thread for shard `shard`, whose snapshot files are in `dir`, with `groups` groups.
    pub fn start(shard: u32, dir: PathBuf, groups: usize) -> Result<Compactor, EngineError> {
        let capacity = 2 * groups.max(1);
        let (jobs, jobs_received) = bounded::<Job>(capacity);
        let (replies_sent, replies) = bounded(capacity);
        let thread = std::thread::Builder::new()
            .name(format!("replica-{shard}-snap"))
            .spawn(move || {
                for job in jobs_received {
                    let started = Instant::now();
                    let job = match job {
                        Job::Compact(job) => job,
                        Job::Restore(restore) => {
                            let partition = restore.partition;
                            let snapshot = restore.snapshot();
                            let restored = restore.build();
                            // An image that is no state is refused: no file for it. A file that cannot
                            // be staged is written by the install itself (which fails the shard if the
                            // disk really refuses it).
                            let staged = restored.is_valid()
                                && stage_install_file(&dir, partition, &snapshot)
                                    .map_err(|error| {
                                        log::warn!(
                                            "shard {shard}: partition {partition}: cannot stage the file of the \
                                             snapshot at index {}: {error}",
                                            snapshot.meta.index
                                        )
                                    })
                                    .is_ok();
                            // Rare (a follower being caught up) and slow: worth an operator's line.
                            log::info!(
                                "shard {shard}: partition {partition}: received snapshot at index {} rebuilt{} in {} ms",
                                snapshot.meta.index,
                                if staged { " and its file staged" } else { "" },
                                started.elapsed().as_millis()
                            );
                            if replies_sent.send(Report::Restored { restored, staged }).is_err() {
                                return;
                            }
                            continue;
                        }
                    };
                    let snapshot = Snapshot { meta: job.meta.clone(), data: job.encode().into() };
                    let outcome = write_compaction_file(&dir, job.partition, &snapshot).map(|()| snapshot.data);
                    log::debug!(
                        "shard {shard}: partition {}: compaction at index {} ({} bytes) built and written in {} ms",
                        job.partition,
                        job.meta.index,
                        outcome.as_ref().map_or(0, |data| data.len()),
                        started.elapsed().as_millis()
                    );
                    let report = Compacted { partition: job.partition, index: job.meta.index, outcome };
                    if replies_sent.send(Report::Compacted(report)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Io(format!("cannot start a snapshot thread: {e}")))?;
        Ok(Compactor {
            jobs: Some(jobs),
            replies,
            in_flight: BTreeSet::new(),
            restoring: BTreeSet::new(),
            thread: Some(thread),
        })
    }

    pub fn submit(&mut self, job: Compaction) {
        assert!(
            self.in_flight.insert(job.partition),
            "partition {}: a second compaction handed out before the first was reported",
            job.partition
        );
        self.send(Job::Compact(job));
    }

    pub fn submit_restore(&mut self, restore: Restore) {
        assert!(
            self.restoring.insert(restore.partition),
            "partition {}: a second restore handed out before the first was reported",
            restore.partition
        );
        self.send(Job::Restore(restore));
    }

    fn send(&self, job: Job) {
        let jobs = self.jobs.as_ref().expect("jobs are taken only when the compactor is dropped");
        jobs.try_send(job)
            .expect("one job of each kind per group at a time fits the queue, and the thread outlives it");
    }

    /// Marks the job of `report` as no longer out.
    fn note(&mut self, report: Report) -> Report {
        match &report {
            Report::Compacted(compacted) => assert!(self.in_flight.remove(&compacted.partition)),
            Report::Restored { restored, .. } => assert!(self.restoring.remove(&restored.partition)),
        }
        report
    }

    /// The channel to wait on while jobs are out (`None` when none is).
    pub fn replies(&self) -> Option<&Receiver<Report>> {
        (!self.in_flight.is_empty() || !self.restoring.is_empty()).then_some(&self.replies)
    }

    /// Whether `partition`'s compaction is out (handed to the thread and its report not yet taken).
    pub fn compacting(&self, partition: u32) -> bool {
        self.in_flight.contains(&partition)
    }

    /// Every report received, in the order the thread made them. Never blocks.
    pub fn take_done(&mut self) -> Vec<Report> {
        let mut done = Vec::new();
        while let Ok(report) = self.replies.try_recv() {
            done.push(self.note(report));
        }
        done
    }
}

impl Drop for Compactor {
    /// Lets the thread finish the job it holds (a file written and not yet recorded is what a crash at
    /// that point leaves: the next open reads it), then joins it. Its reports never block it: the
    /// reply queue holds one per group.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionRows;
    use crate::replica::shared_log::snapshot_path;
    use raft::{ConfState, SnapshotMeta};

    fn compaction(partition: u32, index: u64) -> Compaction {
        let meta = SnapshotMeta { index, term: 1, conf_state: ConfState::default() };
        Compaction { partition, meta, rows: PartitionRows { last_seq: index, ..PartitionRows::default() } }
    }

    #[test]
    fn a_compaction_is_written_and_reported_once_and_a_failed_write_is_reported_as_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut compactor = Compactor::start(0, dir.path().to_path_buf(), 2).expect("start");
        assert!(compactor.replies().is_none(), "nothing out: nothing to wait on");
        let expected = compaction(7, 40).encode();
        compactor.submit(compaction(7, 40));
        assert!(compactor.replies().is_some());
        assert!(compactor.compacting(7) && !compactor.compacting(8));
        let done: Vec<Compacted> = compacted(settle(&mut compactor));
        assert!(compactor.replies().is_none() && !compactor.compacting(7), "the report was taken in");
        assert!(snapshot_path(dir.path(), 7).exists(), "durable before it is reported");
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].partition, done[0].index), (7, 40));
        assert_eq!(
            done[0].outcome.as_ref().expect("written").as_slice(),
            &expected[..],
            "the image comes back with the report"
        );
        assert!(compactor.take_done().is_empty(), "reported once");
        drop(compactor);

        // A shard folder that is gone: the write fails, and says so (the shard then stops).
        let gone = dir.path().join("gone");
        let mut compactor = Compactor::start(0, gone, 2).expect("start");
        compactor.submit(compaction(8, 41));
        let done = compacted(settle(&mut compactor));
        assert!(matches!(done[..], [Compacted { partition: 8, index: 41, outcome: Err(_) }]));
    }

    /// Every report of the jobs out, waiting for them.
    fn settle(compactor: &mut Compactor) -> Vec<Report> {
        let mut done = Vec::new();
        while let Some(replies) = compactor.replies() {
            let report = replies.recv().expect("the thread reports every job it was given");
            done.push(compactor.note(report));
        }
        done
    }

    fn compacted(reports: Vec<Report>) -> Vec<Compacted> {
        reports
            .into_iter()
            .map(|report| match report {
                Report::Compacted(compacted) => compacted,
                Report::Restored { .. } => panic!("no restore was handed out"),
            })
            .collect()
    }
}
