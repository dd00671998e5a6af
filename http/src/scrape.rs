//! `/metrics`: the engine's metrics (`engine::metrics`), the edge's own, and gauges read at scrape
//! time — open binary-protocol connections, bytes of log on disk, and each partition's leader, term
//! and commit-to-apply lag from the node's Status answer (so both runtimes report them alike).
//! Rendered in the Prometheus text exposition format (version 0.0.4).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use net::protocol::{Response as NodeResponse, PARTITION_FLAG_LEADER};
use net::server::ServerStats;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, TextEncoder,
};

use crate::link::{Call, NodeLink};

/// How deep below the data directory log segments are looked for (`shard-000/wal/…`, `replica-shard-000/wal/…`).
const LOG_SEARCH_DEPTH_MAX: usize = 3;
/// Buckets of the HTTP request duration histogram, in seconds.
const HTTP_DURATION_BUCKETS_SECONDS: [f64; 14] =
    [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0];

struct EdgeMetrics {
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    link_queue_depth: IntGauge,
    client_connections: IntGauge,
    client_connections_accepted: IntCounter,
    client_connections_refused: IntCounter,
    log_bytes: IntGauge,
    node_up: IntGauge,
    has_leader: IntGaugeVec,
    led_here: IntGaugeVec,
    term: IntGaugeVec,
    lag: IntGaugeVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    engine::metrics::registry()
        .register(Box::new(metric.clone()))
        .expect("each edge metric is registered once, under a name of its own");
    metric
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("static gauge options are valid"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("static counter options are valid"))
}

fn partition_gauge(name: &str, help: &str) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), &["partition"]).expect("static gauge options are valid"))
}

static EDGE_METRICS: LazyLock<EdgeMetrics> = LazyLock::new(|| EdgeMetrics {
    http_requests: register(
        IntCounterVec::new(
            Opts::new("wallet_http_requests_total", "HTTP requests answered, by route and status code"),
            &["route", "status"],
        )
        .expect("static counter options are valid"),
    ),
    http_duration: register(
        HistogramVec::new(
            HistogramOpts::new("wallet_http_request_duration_seconds", "Time to answer an HTTP request, by route")
                .buckets(HTTP_DURATION_BUCKETS_SECONDS.to_vec()),
            &["route"],
        )
        .expect("static histogram options are valid"),
    ),
    link_queue_depth: gauge("wallet_http_link_queue_depth", "HTTP calls waiting for a connection to the node"),
    client_connections: gauge("wallet_client_connections", "Binary-protocol client connections open"),
    client_connections_accepted: counter(
        "wallet_client_connections_accepted_total",
        "Binary-protocol client connections accepted",
    ),
    client_connections_refused: counter(
        "wallet_client_connections_refused_total",
        "Binary-protocol client connections refused at the connection limit",
    ),
    log_bytes: gauge("wallet_log_disk_bytes", "Bytes of event-log segment files in the data directory"),
    node_up: gauge("wallet_node_up", "1 when the node answered this scrape's Status request, else 0"),
    has_leader: partition_gauge("wallet_partition_has_leader", "1 when this node knows the partition's leader"),
    led_here: partition_gauge("wallet_partition_led_here", "1 when this node leads the partition"),
    term: partition_gauge("wallet_partition_raft_term", "Raft term of this node's replica (0 on a single node)"),
    lag: partition_gauge(
        "wallet_partition_commit_apply_lag_entries",
        "Log entries committed but not yet applied by this node's replica",
    ),
});

/// Counts one answered HTTP request (called by the edge's middleware).
pub fn observe_http(route: &str, status: u16, elapsed: Duration) {
    let metrics = &*EDGE_METRICS;
    metrics.http_requests.with_label_values(&[route, &status.to_string()]).inc();
    metrics.http_duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
}

pub struct Scrape {
    data_dir: Option<PathBuf>,
    server_stats: Option<Arc<ServerStats>>,
    /// One scrape at a time: counters read at scrape time advance by the delta since the last one.
    busy: tokio::sync::Mutex<()>,
}

impl Scrape {
    pub fn new(data_dir: Option<PathBuf>, server_stats: Option<Arc<ServerStats>>) -> Scrape {
        LazyLock::force(&EDGE_METRICS);
        Scrape { data_dir, server_stats, busy: tokio::sync::Mutex::new(()) }
    }

    pub async fn render(&self, link: &NodeLink) -> String {
        let _one_at_a_time = self.busy.lock().await;
        let metrics = &*EDGE_METRICS;
        metrics.link_queue_depth.set(link.queue_depth() as i64);
        if let Some(stats) = &self.server_stats {
            metrics.client_connections.set(stats.connections_open.load(Ordering::Relaxed) as i64);
            advance_to(&metrics.client_connections_accepted, stats.connections_accepted.load(Ordering::Relaxed));
            advance_to(&metrics.client_connections_refused, stats.connections_refused.load(Ordering::Relaxed));
        }
        if let Some(dir) = &self.data_dir {
            metrics.log_bytes.set(log_bytes(dir, LOG_SEARCH_DEPTH_MAX) as i64);
        }
        match link.call(Call::Status).await {
            Ok(NodeResponse::Status(status)) => {
                metrics.node_up.set(1);
                for p in &status.partition_states {
                    let label = p.partition.to_string();
                    metrics.has_leader.with_label_values(&[&label]).set((p.leader != 0) as i64);
                    metrics.led_here.with_label_values(&[&label]).set((p.flags & PARTITION_FLAG_LEADER != 0) as i64);
                    metrics.term.with_label_values(&[&label]).set(p.term as i64);
                    let lag = p.commit_index.saturating_sub(p.applied_index);
                    metrics.lag.with_label_values(&[&label]).set(lag as i64);
                }
            }
            _ => metrics.node_up.set(0),
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&engine::metrics::registry().gather(), &mut text)
            .expect("encoding gathered metrics into memory cannot fail");
        String::from_utf8(text).expect("the text exposition is UTF-8")
    }
}

/// Moves a counter mirrored from an atomic up to `value` (counters only go up).
fn advance_to(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// Total size of the `*.wal` files under `dir`, `depth` levels down at most. Unreadable entries count
/// as nothing: a scrape reports what it can see.
fn log_bytes(dir: &Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else { continue };
        if metadata.is_dir() && depth > 0 {
            total += log_bytes(&entry.path(), depth - 1);
        } else if metadata.is_file() && entry.file_name().to_string_lossy().ends_with(".wal") {
            total += metadata.len();
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_bytes_counts_segment_files_only() {
        let dir = std::env::temp_dir().join(format!("wallet-http-log-bytes-{}", std::process::id()));
        let wal = dir.join("shard-000").join("wal");
        std::fs::create_dir_all(&wal).expect("temp dir");
        std::fs::write(wal.join("00000000000000000001.wal"), vec![0u8; 1000]).expect("write");
        std::fs::write(wal.join("00000000000000000900.wal"), vec![0u8; 24]).expect("write");
        std::fs::write(dir.join("node.toml"), vec![0u8; 77]).expect("write");
        assert_eq!(log_bytes(&dir, LOG_SEARCH_DEPTH_MAX), 1024);
        assert_eq!(log_bytes(&dir, 0), 0, "depth bounds the walk");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
