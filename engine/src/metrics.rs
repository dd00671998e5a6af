//! The engine's metrics: what an operator scrapes from `/metrics` (walletd's HTTP edge renders them in
//! the Prometheus text exposition).
//!
//! One process-wide set, registered once in [`registry`]. The hot path only touches pre-resolved
//! handles: an atomic add per log sync, per round, per proposal or per answered batch — never a label
//! lookup, a lock or an allocation per transfer. Labels are bounded (result codes, shards, forward
//! outcomes); nothing is labelled by account. Names follow Prometheus conventions: one `wallet_`
//! prefix, base units (`_seconds`, `_bytes`), `_total` for counters.

use std::sync::LazyLock;
use std::time::Duration;

use net::types::{ItemResult, ResultCode};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Buckets for durations measured in seconds: 50 µs to 10 s, roughly ×2.5 apart. A log sync on a
/// quiet disk takes 0.2–0.5 ms and a loaded one several ms; a round spans that plus execution.
const DURATION_BUCKETS_SECONDS: [f64; 16] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Buckets of the per-stage histograms: 10 µs to about 8.5 s, ×1.6 apart, so a quantile read from them
/// (walletbench's stage report) is within 60% of the true value across the whole range.
const STAGE_BUCKETS_SECONDS: usize = 30;
const STAGE_BUCKET_FIRST_SECONDS: f64 = 0.000_01;
const STAGE_BUCKET_FACTOR: f64 = 1.6;

/// The stages of a write between the node accepting a batch and answering it. `QueueWait`, `Execute` and
/// `Total` are observed once per batch part (one partition's share of a client batch), `LogSync` once per
/// round that held writes; never per transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// From the node accepting the batch to its shard taking it off the bounded queue.
    QueueWait,
    /// Deciding the part against the partition's state and encoding its events.
    Execute,
    /// From the round's events being appended to the log until they are durable (write + fdatasync).
    LogSync,
    /// From the node accepting the batch to its answer being handed back (everything above, plus the
    /// rest of the round and any wait for earlier rounds).
    Total,
    /// Not a stage of one write but a stall of every write queued behind it: a single node's shard
    /// gathering its dirty state into a checkpoint, on the shard thread, with the round waiting
    /// (observed once per checkpoint).
    Checkpoint,
    /// Writing that checkpoint into RocksDB, on the shard's retention thread: no round waits for it.
    CheckpointWrite,
    /// Cluster leaders only: from proposing a round's entry until it is committed and applied here
    /// (replication to a majority with their fdatasyncs, the commit's round trip, the apply), once per
    /// entry that answers anyone.
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::QueueWait,
        Stage::Execute,
        Stage::LogSync,
        Stage::Total,
        Stage::Checkpoint,
        Stage::CheckpointWrite,
        Stage::Commit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue_wait",
            Stage::Execute => "execute",
            Stage::LogSync => "log_sync",
            Stage::Total => "total",
            Stage::Checkpoint => "checkpoint",
            Stage::CheckpointWrite => "checkpoint_write",
            Stage::Commit => "commit",
        }
    }
}

/// What became of a request this node forwarded to another node's leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Handed to the peer transport.
    Sent,
    /// The leader's answer (results or accounts) was relayed to the client.
    Answered,
    /// The node asked no longer led: the request is sent on to the leader it named (or another replica).
    Redirected,
    /// The node asked answered with another error, which was relayed.
    Failed,
    /// No answer within the client's deadline.
    TimedOut,
    /// The peer's queue was full, it had no connection, or the connection failed with the request
    /// on it: routed again at once (never left to time out).
    NotQueued,
    /// This node learned of a new leader of the partition while waiting: sent there (or decided here).
    Rerouted,
}

impl ForwardOutcome {
    pub const ALL: [ForwardOutcome; 7] = [
        ForwardOutcome::Sent,
        ForwardOutcome::Answered,
        ForwardOutcome::Redirected,
        ForwardOutcome::Failed,
        ForwardOutcome::TimedOut,
        ForwardOutcome::NotQueued,
        ForwardOutcome::Rerouted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ForwardOutcome::Sent => "sent",
            ForwardOutcome::Answered => "answered",
            ForwardOutcome::Redirected => "redirected",
            ForwardOutcome::Failed => "failed",
            ForwardOutcome::TimedOut => "timed_out",
            ForwardOutcome::NotQueued => "not_queued",
            ForwardOutcome::Rerouted => "rerouted",
        }
    }
}

/// The engine's metric handles. Vectors are resolved once here, so recording is one atomic add.
pub struct EngineMetrics {
    registry: Registry,
    log_fsync_seconds: Histogram,
    round_seconds: Histogram,
    proposals: IntCounter,
    segments_purged: IntCounter,
    commits: IntCounter,
    leader_changes: IntCounter,
    snapshot_bytes_sent: IntCounter,
    snapshot_bytes_received: IntCounter,
    snapshots_installed: IntCounter,
    /// Indexed by `ResultCode as usize`.
    results: Vec<IntCounter>,
    /// Indexed by `ForwardOutcome as usize`.
    forwards: Vec<IntCounter>,
    queue_depth: IntGaugeVec,
    /// Indexed by `Stage as usize`.
    stages: Vec<Histogram>,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("each engine metric is registered once, under its own name");
    metric
}

fn duration_histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(DURATION_BUCKETS_SECONDS.to_vec());
    register(registry, Histogram::with_opts(opts).expect("static histogram options are valid"))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("static counter options are valid"))
}

impl EngineMetrics {
    fn new() -> EngineMetrics {
        let registry = Registry::new();
        let results_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new("wallet_results_total", "Item outcomes decided by this node's partitions, by result code"),
                &["code"],
            )
            .expect("static counter options are valid"),
        );
        let forwards_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "wallet_forwarded_requests_total",
                    "Client requests this node forwarded to another node's partition leader, by outcome",
                ),
                &["outcome"],
            )
            .expect("static counter options are valid"),
        );
        let queue_depth = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("wallet_shard_queue_depth", "Commands waiting in a shard's bounded queue, at its last round"),
                &["shard", "queue"],
            )
            .expect("static gauge options are valid"),
        );
        let stage_buckets: Vec<f64> = (0..STAGE_BUCKETS_SECONDS as i32)
            .map(|k| STAGE_BUCKET_FIRST_SECONDS * STAGE_BUCKET_FACTOR.powi(k))
            .collect();
        let stages_vec = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "wallet_stage_duration_seconds",
                    "Time a write spends in each stage on this node: queue_wait, execute and total per batch part, log_sync per round",
                )
                .buckets(stage_buckets),
                &["stage"],
            )
            .expect("static histogram options are valid"),
        );
        EngineMetrics {
            stages: Stage::ALL.iter().map(|stage| stages_vec.with_label_values(&[stage.name()])).collect(),
            log_fsync_seconds: duration_histogram(
                &registry,
                "wallet_log_fsync_duration_seconds",
                "Time from submitting a log write to its fdatasync completing",
            ),
            round_seconds: duration_histogram(
                &registry,
                "wallet_shard_round_duration_seconds",
                "Time one shard round takes: take commands, execute, append, drive the log",
            ),
            proposals: counter(
                &registry,
                "wallet_proposals_total",
                "Log entries proposed (a cluster leader's Raft proposals; a single node's appended event batches)",
            ),
            segments_purged: counter(
                &registry,
                "wallet_log_segments_purged_total",
                "Event-log segments deleted by retention (beyond log_retention_bytes and covered by a base)",
            ),
            commits: counter(
                &registry,
                "wallet_commits_total",
                "Log entries committed (applied from a Raft commit; a single node's batches made durable)",
            ),
            leader_changes: counter(
                &registry,
                "wallet_leader_changes_total",
                "Times a partition replica on this node saw its partition's leader change",
            ),
            snapshot_bytes_sent: counter(
                &registry,
                "wallet_snapshot_bytes_sent_total",
                "Bytes of snapshot chunks this node's leaders sent to followers they were catching up",
            ),
            snapshot_bytes_received: counter(
                &registry,
                "wallet_snapshot_bytes_received_total",
                "Bytes of snapshot chunks this node's replicas took into an assembly (duplicates not counted)",
            ),
            snapshots_installed: counter(
                &registry,
                "wallet_snapshots_installed_total",
                "Snapshots from a leader that a replica on this node installed",
            ),
            results: ResultCode::ALL.iter().map(|code| results_vec.with_label_values(&[code.name()])).collect(),
            forwards: ForwardOutcome::ALL.iter().map(|o| forwards_vec.with_label_values(&[o.name()])).collect(),
            queue_depth,
            registry,
        }
    }
}

static METRICS: LazyLock<EngineMetrics> = LazyLock::new(EngineMetrics::new);

fn metrics() -> &'static EngineMetrics {
    &METRICS
}

/// The registry holding every engine metric; the HTTP edge adds its own and renders them all.
pub fn registry() -> &'static Registry {
    &metrics().registry
}

/// A cluster replica's log sync ([`wal::SyncObserver`]).
pub fn observe_fsync(elapsed: Duration, _records: u64) {
    metrics().log_fsync_seconds.observe(elapsed.as_secs_f64());
}

/// A single node's log sync: durable is committed there, so its records count as commits too.
pub fn observe_fsync_committing(elapsed: Duration, records: u64) {
    observe_fsync(elapsed, records);
    metrics().commits.inc_by(records);
}

pub fn observe_round(elapsed: Duration) {
    metrics().round_seconds.observe(elapsed.as_secs_f64());
}

pub fn observe_stage(stage: Stage, elapsed: Duration) {
    metrics().stages[stage as usize].observe(elapsed.as_secs_f64());
}

pub fn count_proposal() {
    metrics().proposals.inc();
}

pub fn count_segments_purged(segments: u64) {
    metrics().segments_purged.inc_by(segments);
}

pub fn count_commits(entries: u64) {
    metrics().commits.inc_by(entries);
}

pub fn count_leader_change() {
    metrics().leader_changes.inc();
}

pub fn count_snapshot_bytes_sent(bytes: u64) {
    metrics().snapshot_bytes_sent.inc_by(bytes);
}

pub fn count_snapshot_bytes_received(bytes: u64) {
    metrics().snapshot_bytes_received.inc_by(bytes);
}

pub fn count_snapshot_installed() {
    metrics().snapshots_installed.inc();
}

pub fn count_forward(outcome: ForwardOutcome) {
    metrics().forwards[outcome as usize].inc();
}

/// Counts one answered batch's outcomes: tallied on the stack first, so a batch of 8190 costs at most
/// one atomic add per distinct code.
pub fn count_results(results: &[ItemResult]) {
    let mut tally = [0u64; ResultCode::ALL.len()];
    for result in results {
        tally[result.code as usize] += 1;
    }
    for (code, &count) in tally.iter().enumerate() {
        if count > 0 {
            metrics().results[code].inc_by(count);
        }
    }
}

/// The gauge of one shard queue (`queue` = "client" or "peer"), resolved once by the shard's loop.
pub fn queue_depth_gauge(shard: u32, queue: &str) -> IntGauge {
    metrics().queue_depth.with_label_values(&[&shard.to_string(), queue])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_and_outcome_has_its_counter_in_order() {
        assert_eq!(metrics().results.len(), ResultCode::ALL.len());
        for (index, code) in ResultCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, index, "results are indexed by code");
        }
        for (index, outcome) in ForwardOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "forwards are indexed by outcome");
        }
        for (index, stage) in Stage::ALL.iter().enumerate() {
            assert_eq!(*stage as usize, index, "stages are indexed by stage");
        }
        let before = metrics().results[ResultCode::InsufficientFunds as usize].get();
        let result = |code| ItemResult { index: 0, code, flags: 0, seq: 1 };
        count_results(&[
            result(ResultCode::InsufficientFunds),
            result(ResultCode::Ok),
            result(ResultCode::InsufficientFunds),
        ]);
        assert_eq!(metrics().results[ResultCode::InsufficientFunds as usize].get(), before + 2);
        let sent = metrics().snapshot_bytes_sent.get();
        count_snapshot_bytes_sent(4096);
        assert_eq!(metrics().snapshot_bytes_sent.get(), sent + 4096);
        let names: Vec<String> = registry().gather().iter().map(|family| family.name().to_string()).collect();
        for name in [
            "wallet_results_total",
            "wallet_log_fsync_duration_seconds",
            "wallet_proposals_total",
            "wallet_snapshot_bytes_sent_total",
            "wallet_snapshot_bytes_received_total",
            "wallet_snapshots_installed_total",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} is registered: {names:?}");
        }
    }
}
