//! The run's results directory: `report.txt` (for humans), `summary.json` (for scripts),
//! `latency.hgrm` (HdrHistogram percentile distribution, microseconds), `latency.svg` and
//! `throughput.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Distribution, RunConfig};
use crate::hgrm::{percentile_distribution, percentile_rows};
use crate::stats::{format_us, Aggregator};
use crate::svg::{latency_plot, throughput_plot};
use crate::verify::VerifyReport;

pub const REPORT_FILE: &str = "report.txt";
pub const SUMMARY_FILE: &str = "summary.json";
pub const HGRM_FILE: &str = "latency.hgrm";
pub const LATENCY_SVG_FILE: &str = "latency.svg";
pub const THROUGHPUT_SVG_FILE: &str = "throughput.svg";
/// The `.hgrm` values are in the recorded unit, microseconds.
pub const HGRM_VALUE_SCALING: f64 = 1.0;

#[derive(Clone, Debug, Serialize)]
pub struct Parameters {
    pub addresses: Vec<String>,
    pub null_server: bool,
    pub cluster_id: String,
    pub partitions: u32,
    pub mode: &'static str,
    pub rate_per_second: Option<u64>,
    pub duration_seconds: f64,
    pub warmup_seconds: f64,
    pub transfers_max: Option<u64>,
    pub batch_size: usize,
    pub connections: usize,
    pub inflight_per_connection: usize,
    pub accounts: u64,
    pub account_id_base: u64,
    pub reuse_accounts: bool,
    pub distribution: Distribution,
    pub cross_partition_share: f64,
    pub fail_share: f64,
    pub ledger: u32,
    pub seed: u64,
    pub verify: bool,
}

impl Parameters {
    pub fn new(config: &RunConfig, partitions: u32, account_id_base: u64, seed: u64) -> Parameters {
        Parameters {
            addresses: config.addresses.iter().map(ToString::to_string).collect(),
            null_server: config.null_server,
            cluster_id: format!("{:#x}", config.cluster_id),
            partitions,
            mode: if config.rate_per_second.is_some() { "open_loop" } else { "closed_loop" },
            rate_per_second: config.rate_per_second,
            duration_seconds: config.duration.as_secs_f64(),
            warmup_seconds: config.warmup.as_secs_f64(),
            transfers_max: config.transfers_max,
            batch_size: config.batch_size,
            connections: config.connections,
            inflight_per_connection: config.inflight,
            accounts: config.accounts,
            account_id_base,
            reuse_accounts: config.reuse_accounts,
            distribution: config.distribution,
            cross_partition_share: config.cross_partition_share,
            fail_share: config.fail_share,
            ledger: config.ledger,
            seed,
            verify: config.verify,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExpectedFailures {
    /// Transfers sent with the deliberately impossible amount and answered.
    pub answered: u64,
    /// Of those, answered `insufficient_funds` as they must be.
    pub insufficient_funds: u64,
    /// Of those, accepted: the server let an account go below zero (or acknowledges everything).
    pub accepted: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub run: String,
    /// Measured phase: transfers answered for batches scheduled after the warmup, per second.
    pub transfers_per_second: f64,
    pub target_transfers_per_second: Option<u64>,
    /// Measured phase only.
    pub transfers_acknowledged: u64,
    /// Warmup included.
    pub transfers_acknowledged_total: u64,
    pub transfers_sent: u64,
    pub batches_answered: u64,
    /// Per transfer (each transfer counts its batch's latency), measured phase, microseconds.
    pub latency_us: LatencySummary,
    /// Non-ok result codes and batch-level errors over the whole run, by name.
    pub errors: BTreeMap<String, u64>,
    pub expected_failures: ExpectedFailures,
    /// Non-ok results other than the expected `insufficient_funds`, batch-level errors, and deliberate
    /// overdrafts the server accepted.
    pub unexpected_errors: u64,
    /// Every worker ended by itself, without an unrecoverable error.
    pub complete: bool,
    pub worker_errors: Vec<String>,
    pub verify: Option<VerifyReport>,
    /// `--retry-first`: early transfers resent at the end.
    pub retry_check: Option<crate::worker::RetryCheck>,
    pub throughput_per_second: Vec<u64>,
    pub parameters: Parameters,
    /// `--metrics-url`: the node's per-stage latency over the load (warmup included), or why it could
    /// not be read after the run.
    pub server_stages: Option<Result<Vec<crate::stages::StageSummary>, String>>,
}

impl Summary {
    pub fn new(
        run: String,
        aggregator: &Aggregator,
        transfers_sent: u64,
        worker_errors: Vec<String>,
        verify: Option<VerifyReport>,
        parameters: Parameters,
    ) -> Summary {
        let histogram = &aggregator.latency_measured_us;
        let errors = aggregator.errors();
        let error_total: u64 = errors.values().sum();
        Summary {
            run,
            transfers_per_second: aggregator.measured_per_second(),
            target_transfers_per_second: parameters.rate_per_second,
            transfers_acknowledged: aggregator.transfers_measured,
            transfers_acknowledged_total: aggregator.transfers_answered,
            transfers_sent,
            batches_answered: aggregator.batches_answered,
            latency_us: LatencySummary {
                p50: histogram.value_at_quantile(0.5),
                p90: histogram.value_at_quantile(0.9),
                p99: histogram.value_at_quantile(0.99),
                p999: histogram.value_at_quantile(0.999),
                p9999: histogram.value_at_quantile(0.9999),
                max: histogram.max(),
                mean: histogram.mean(),
            },
            errors,
            expected_failures: ExpectedFailures {
                answered: aggregator.expected_failures,
                insufficient_funds: aggregator.expected_failures_insufficient,
                accepted: aggregator.expected_failures_accepted,
            },
            unexpected_errors: error_total - aggregator.expected_failures_insufficient
                + aggregator.expected_failures_accepted,
            complete: worker_errors.is_empty(),
            worker_errors,
            verify,
            retry_check: None,
            throughput_per_second: aggregator.per_second.clone(),
            parameters,
            server_stages: None,
        }
    }

    pub fn verify_failed(&self) -> bool {
        self.verify.as_ref().is_some_and(|verify| !verify.passed)
            || self.retry_check.is_some_and(|check| check.mismatched > 0 || check.transfers == 0)
    }
}

/// Writes every report file into `dir` (which must exist).
pub fn write_reports(dir: &Path, summary: &Summary, aggregator: &Aggregator) -> io::Result<()> {
    let histogram = &aggregator.latency_measured_us;
    fs::write(dir.join(REPORT_FILE), human_report(summary))?;
    let json = serde_json::to_string_pretty(summary).map_err(io::Error::other)?;
    fs::write(dir.join(SUMMARY_FILE), json + "\n")?;
    fs::write(dir.join(HGRM_FILE), percentile_distribution(histogram, HGRM_VALUE_SCALING))?;
    let title = format!("walletbench {}: latency of a transfer's batch", summary.run);
    fs::write(dir.join(LATENCY_SVG_FILE), latency_plot(&title, &percentile_rows(histogram, HGRM_VALUE_SCALING)))?;
    let title = format!("walletbench {}: transfers answered per second", summary.run);
    let plot = throughput_plot(
        &title,
        &aggregator.per_second,
        summary.parameters.warmup_seconds,
        summary.target_transfers_per_second,
    );
    fs::write(dir.join(THROUGHPUT_SVG_FILE), plot)
}

pub fn human_report(summary: &Summary) -> String {
    let mut out = String::new();
    let p = &summary.parameters;
    let l = &summary.latency_us;
    let _ = writeln!(out, "walletbench run {}", summary.run);
    let _ = writeln!(out);
    let target = p
        .rate_per_second
        .map_or("closed loop (as fast as answers come)".to_string(), |r| format!("{r} transfers/s (open loop)"));
    let _ = writeln!(out, "throughput   {:.0} transfers/s achieved, target {target}", summary.transfers_per_second);
    let _ = writeln!(
        out,
        "transfers    {} acknowledged in the measured phase, {} in all, {} sent, {} batches",
        summary.transfers_acknowledged,
        summary.transfers_acknowledged_total,
        summary.transfers_sent,
        summary.batches_answered
    );
    let _ =
        writeln!(out, "latency      of a transfer's batch, from its scheduled send time (open loop) or send (closed)");
    for (name, value) in
        [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p99.9", l.p999), ("p99.99", l.p9999), ("max", l.max)]
    {
        let _ = writeln!(out, "  {name:<8} {:>10}  ({value} us)", format_us(value));
    }
    let _ =
        writeln!(out, "errors       {}", if summary.errors.is_empty() { "none".to_string() } else { String::new() });
    for (name, count) in &summary.errors {
        let _ = writeln!(out, "  {name:<32} {count}");
    }
    let e = &summary.expected_failures;
    let _ = writeln!(
        out,
        "expected     {} deliberate overdrafts answered: {} insufficient_funds, {} accepted; {} unexpected outcomes",
        e.answered, e.insufficient_funds, e.accepted, summary.unexpected_errors
    );
    let _ = writeln!(out, "complete     {}", if summary.complete { "yes" } else { "NO" });
    for error in &summary.worker_errors {
        let _ = writeln!(out, "  {error}");
    }
    match &summary.verify {
        None => {
            let _ = writeln!(out, "verify       not requested");
        }
        Some(verify) => {
            let verdict = if verify.passed { "PASSED" } else { "FAILED" };
            let _ = writeln!(
                out,
                "verify       {verdict}: {} accounts checked, {} mismatches, ledger sum {} -> {}",
                verify.accounts_checked, verify.balance_mismatches, verify.ledger_sum_start, verify.ledger_sum_end
            );
            for problem in &verify.problems {
                let _ = writeln!(out, "  {problem}");
            }
        }
    }
    if let Some(check) = &summary.retry_check {
        let verdict = if check.mismatched == 0 && check.transfers > 0 { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            out,
            "retries      {verdict}: {} early transfers resent at the end, {} replayed with their original outcome, {} not",
            check.transfers, check.replayed_as_original, check.mismatched
        );
    }
    match &summary.server_stages {
        None => {}
        Some(Err(error)) => {
            let _ = writeln!(out, "server       stages not read after the run: {error}");
        }
        Some(Ok(stages)) => {
            let _ = writeln!(
                out,
                "server       time on the node per stage, per batch part (log_sync per round, checkpoint* per checkpoint), warmup included; at most:"
            );
            let bound = |us: Option<u64>| us.map_or_else(|| "> 8.5 s".to_string(), format_us);
            let _ = writeln!(
                out,
                "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "stage", "count", "p50", "p99", "p99.9", "max"
            );
            for s in stages {
                let _ = writeln!(
                    out,
                    "  {:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    s.stage,
                    s.count,
                    bound(s.p50_us_at_most),
                    bound(s.p99_us_at_most),
                    bound(s.p999_us_at_most),
                    bound(s.max_us_at_most)
                );
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "parameters");
    let parameters = serde_json::to_string_pretty(p).unwrap_or_default();
    for line in parameters.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "files: {REPORT_FILE} {SUMMARY_FILE} {HGRM_FILE} (microseconds) {LATENCY_SVG_FILE} {THROUGHPUT_SVG_FILE}"
    );
    out
}

/// A fresh directory `<root>/<UTC timestamp>-<rate N|closed>`, with a numeric suffix if the name is
/// taken (two runs in one second).
pub fn create_results_dir(root: &Path, unix_seconds: u64, rate_per_second: Option<u64>) -> io::Result<PathBuf> {
    const NAME_SUFFIXES_MAX: u32 = 100;
    fs::create_dir_all(root)?;
    let mode = rate_per_second.map_or("closed".to_string(), |rate| format!("rate{rate}"));
    let name = format!("{}-{mode}", utc_timestamp(unix_seconds));
    for suffix in 0..NAME_SUFFIXES_MAX {
        let candidate = if suffix == 0 { root.join(&name) } else { root.join(format!("{name}-{suffix}")) };
        match fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{name}: every suffix is taken")))
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (proleptic Gregorian calendar; days to civil date by the
/// era-of-400-years method).
pub fn utc_timestamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        seconds_of_day / 3_600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "19700101T000000Z");
        assert_eq!(utc_timestamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_timestamp(1_764_000_000), "20251124T160000Z");
        assert_eq!(utc_timestamp(4_102_444_799), "20991231T235959Z");
    }
}
