//! Run parameters, their defaults and limits, and their validation. Every knob is here with its unit
//! last, so a report can print exactly what was run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use net::protocol::BATCH_ITEMS_MAX;
use net::server::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX;
use serde::Serialize;
use thiserror::Error;

/// USD, the ledger every run uses unless told otherwise.
pub const LEDGER_DEFAULT: u32 = 840;
pub const ACCOUNTS_DEFAULT: u64 = 100_000;
/// Bounded so that the per-connection balance-delta arrays (8 bytes per account per connection) and
/// the account id range of one run stay small.
pub const ACCOUNTS_MAX: u64 = 10_000_000;
pub const BATCH_SIZE_DEFAULT: usize = 1_000;
pub const CONNECTIONS_DEFAULT: usize = 2;
pub const CONNECTIONS_MAX: usize = 256;
pub const INFLIGHT_DEFAULT: usize = 4;
pub const DURATION_DEFAULT_MS: u64 = 10_000;
pub const WARMUP_DEFAULT_MS: u64 = 2_000;
/// Longest measured phase; also the time bound of a `--transfers N` run.
pub const DURATION_MS_MAX: u64 = 24 * 3_600 * 1_000;
/// Most memory the per-connection balance-delta arrays may take together.
pub const DELTA_ARRAYS_BYTES_MAX: u64 = 2 << 30;
pub const ZIPF_SKEW_DEFAULT: f64 = 1.0;
pub const RESULTS_ROOT_DEFAULT: &str = "results";
/// Partitions the built-in null server announces.
pub const NULL_SERVER_PARTITIONS_DEFAULT: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    /// Account of rank k is debited with probability proportional to k^-skew.
    Zipf {
        skew: f64,
    },
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub addresses: Vec<SocketAddr>,
    pub cluster_id: u128,
    /// Open loop at this many transfers per second; `None` runs closed loop.
    pub rate_per_second: Option<u64>,
    /// The measured phase, after the warmup.
    pub duration: Duration,
    /// Stop after this many transfers (warmup included), or at the end of `duration`, whichever first.
    pub transfers_max: Option<u64>,
    pub warmup: Duration,
    pub batch_size: usize,
    pub connections: usize,
    /// Batches in flight per connection.
    pub inflight: usize,
    pub accounts: u64,
    pub distribution: Distribution,
    pub cross_partition_share: f64,
    pub fail_share: f64,
    pub reuse_accounts: bool,
    /// First account id of the run's range; `None` derives one from the run's entropy.
    pub account_id_base: Option<u64>,
    pub ledger: u32,
    pub verify: bool,
    /// Resend one batch per second per connection of this first part of the run at the end and check
    /// that each is answered as a replay of its original outcome.
    pub retry_first: Option<Duration>,
    /// The results directory; `None` makes `<results_root>/<timestamp>-<rate|closed>`.
    pub out_dir: Option<PathBuf>,
    pub results_root: PathBuf,
    /// Start an in-process acknowledging server and drive it instead of `addresses`.
    pub null_server: bool,
    pub null_server_partitions: u32,
    /// Print a progress line every second.
    pub progress: bool,
    /// Seeds the workload; `None` seeds from the clock.
    pub seed: Option<u64>,
    /// The node's Prometheus endpoint (`http://127.0.0.1:8400/metrics`): scraped before and after the
    /// load for the per-stage server latency report.
    pub metrics_url: Option<String>,
}

impl RunConfig {
    /// Defaults for everything but where to connect.
    pub fn new(addresses: Vec<SocketAddr>) -> RunConfig {
        RunConfig {
            addresses,
            cluster_id: 1,
            rate_per_second: None,
            duration: Duration::from_millis(DURATION_DEFAULT_MS),
            transfers_max: None,
            warmup: Duration::from_millis(WARMUP_DEFAULT_MS),
            batch_size: BATCH_SIZE_DEFAULT,
            connections: CONNECTIONS_DEFAULT,
            inflight: INFLIGHT_DEFAULT,
            accounts: ACCOUNTS_DEFAULT,
            distribution: Distribution::Uniform,
            cross_partition_share: 0.0,
            fail_share: 0.0,
            reuse_accounts: false,
            account_id_base: None,
            ledger: LEDGER_DEFAULT,
            verify: false,
            retry_first: None,
            out_dir: None,
            results_root: PathBuf::from(RESULTS_ROOT_DEFAULT),
            null_server: false,
            null_server_partitions: NULL_SERVER_PARTITIONS_DEFAULT,
            progress: true,
            seed: None,
            metrics_url: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.addresses.is_empty() && !self.null_server {
            return Err(ConfigError::Invalid("--addr needs at least one address (or --null-server)".into()));
        }
        if !(1..=BATCH_ITEMS_MAX).contains(&self.batch_size) {
            return Err(ConfigError::Invalid(format!("--batch-size must be 1..={BATCH_ITEMS_MAX}")));
        }
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(ConfigError::Invalid(format!("--connections must be 1..={CONNECTIONS_MAX}")));
        }
        if !(1..=REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX).contains(&self.inflight) {
            return Err(ConfigError::Invalid(format!(
                "--inflight must be 1..={REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX} (the server's per-connection limit)"
            )));
        }
        if !(1..=ACCOUNTS_MAX).contains(&self.accounts) {
            return Err(ConfigError::Invalid(format!("--accounts must be 1..={ACCOUNTS_MAX}")));
        }
        let delta_bytes = self.accounts * self.connections as u64 * 8;
        if delta_bytes > DELTA_ARRAYS_BYTES_MAX {
            return Err(ConfigError::Invalid(format!(
                "--accounts x --connections needs {delta_bytes} bytes of balance deltas, over {DELTA_ARRAYS_BYTES_MAX}"
            )));
        }
        if self.rate_per_second == Some(0) {
            return Err(ConfigError::Invalid("--rate must be > 0 (omit it for closed loop)".into()));
        }
        if self.duration.is_zero() || self.duration > Duration::from_millis(DURATION_MS_MAX) {
            return Err(ConfigError::Invalid(format!("--duration must be in (0, {DURATION_MS_MAX}] ms")));
        }
        if self.transfers_max == Some(0) {
            return Err(ConfigError::Invalid("--transfers must be > 0".into()));
        }
        for (name, share) in
            [("--cross-partition-share", self.cross_partition_share), ("--fail-share", self.fail_share)]
        {
            if !(0.0..=1.0).contains(&share) {
                return Err(ConfigError::Invalid(format!("{name} must be in [0, 1]")));
            }
        }
        if let Distribution::Zipf { skew } = self.distribution {
            if !skew.is_finite() || skew <= 0.0 {
                return Err(ConfigError::Invalid("--zipf-skew must be finite and > 0".into()));
            }
        }
        if self.reuse_accounts && self.account_id_base.is_none() {
            return Err(ConfigError::Invalid(
                "--reuse-accounts needs --account-id-base (the range a previous run created)".into(),
            ));
        }
        if self.account_id_base == Some(0) {
            return Err(ConfigError::Invalid("--account-id-base must be > 0 (id 0 is reserved)".into()));
        }
        if self.ledger == 0 {
            return Err(ConfigError::Invalid("--ledger 0 is reserved".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid run configuration: {0}")]
    Invalid(String),
    #[error("cannot parse duration {0:?}: use e.g. 500ms, 10s, 2m")]
    Duration(String),
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let invalid = || ConfigError::Duration(text.to_string());
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1_000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3_600.0,
        _ => return Err(invalid()),
    };
    if !seconds.is_finite() || seconds < 0.0 || seconds > DURATION_MS_MAX as f64 / 1_000.0 {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").expect("valid"), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").expect("valid"), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").expect("valid"), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").expect("valid"), Duration::from_millis(1_500));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let address = "127.0.0.1:1".parse().expect("literal");
        let mut config = RunConfig::new(vec![address]);
        assert!(config.validate().is_ok());
        config.batch_size = BATCH_ITEMS_MAX + 1;
        assert!(config.validate().is_err());
        let mut config = RunConfig::new(vec![address]);
        config.reuse_accounts = true;
        assert!(config.validate().is_err(), "reuse needs a known id range");
        let mut config = RunConfig::new(vec![address]);
        config.fail_share = 1.5;
        assert!(config.validate().is_err());
    }
}
