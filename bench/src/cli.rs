//! The `walletbench` command line (clap), turned into a [`RunConfig`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::config::{
    parse_duration, ConfigError, Distribution, RunConfig, ACCOUNTS_DEFAULT, BATCH_SIZE_DEFAULT, CONNECTIONS_DEFAULT,
    DURATION_DEFAULT_MS, DURATION_MS_MAX, INFLIGHT_DEFAULT, LEDGER_DEFAULT, NULL_SERVER_PARTITIONS_DEFAULT,
    RESULTS_ROOT_DEFAULT, ZIPF_SKEW_DEFAULT,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DistributionArg {
    Uniform,
    Zipf,
}

/// Load generator for the wallet engine: open loop at a target rate (latency from the scheduled send
/// time) or closed loop, HDR latency report, optional money-conservation check.
#[derive(Debug, Parser)]
#[command(name = "walletbench", version)]
pub struct Args {
    /// Node addresses, comma-separated (host:port).
    #[arg(long, value_delimiter = ',')]
    pub addr: Vec<String>,
    /// Cluster id the node was created with (walletd's default is 1; 0 is reserved).
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u128,
    /// Measured phase length (after the warmup), e.g. 10s, 500ms, 2m. Default 10s unless --transfers.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many transfers (warmup included), or at the end of --duration if given first.
    #[arg(long)]
    pub transfers: Option<u64>,
    /// Open loop at this many transfers/s; omit for closed loop.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Transfers per batch (at most 8190).
    #[arg(long, default_value_t = BATCH_SIZE_DEFAULT)]
    pub batch_size: usize,
    #[arg(long, default_value_t = CONNECTIONS_DEFAULT)]
    pub connections: usize,
    /// Batches in flight per connection.
    #[arg(long, default_value_t = INFLIGHT_DEFAULT)]
    pub inflight: usize,
    #[arg(long, default_value_t = ACCOUNTS_DEFAULT)]
    pub accounts: u64,
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: DistributionArg,
    /// Zipf exponent s: rank k is debited with probability proportional to k^-s.
    #[arg(long, default_value_t = ZIPF_SKEW_DEFAULT)]
    pub zipf_skew: f64,
    /// Share of transfers whose credit account is in another partition (rejected until sagas land).
    #[arg(long, default_value_t = 0.0)]
    pub cross_partition_share: f64,
    /// Share of transfers that must fail with insufficient_funds (amount above the whole supply).
    #[arg(long, default_value_t = 0.0)]
    pub fail_share: f64,
    /// Use accounts a previous run created and funded (needs --account-id-base).
    #[arg(long)]
    pub reuse_accounts: bool,
    /// First account id of the run's range (default: derived from the run's entropy).
    #[arg(long)]
    pub account_id_base: Option<u64>,
    #[arg(long, default_value_t = LEDGER_DEFAULT)]
    pub ledger: u32,
    /// After the run, read every account back and check that money was conserved.
    #[arg(long)]
    pub verify: bool,
    /// At the end, resend one batch per second per connection from the first DURATION of the run
    /// (e.g. 60s) and check that every transfer is answered as a replay of its original outcome.
    #[arg(long, value_parser = parse_duration)]
    pub retry_first: Option<Duration>,
    /// Results directory (default: <results-root>/<timestamp>-<rateN|closed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = RESULTS_ROOT_DEFAULT)]
    pub results_root: PathBuf,
    /// Drive an in-process server that acknowledges everything: measures the generator's own ceiling.
    #[arg(long)]
    pub null_server: bool,
    #[arg(long, default_value_t = NULL_SERVER_PARTITIONS_DEFAULT)]
    pub null_server_partitions: u32,
    /// Workload seed (default: from the clock). Transfer ids stay unique per run either way.
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress lines or report on stdout (the results line is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// The node's metrics endpoint (walletd's HTTP edge, e.g. http://127.0.0.1:8400/metrics): adds a
    /// report section with where writes spent their time on the node, per stage.
    #[arg(long)]
    pub metrics_url: Option<String>,
}

impl Args {
    pub fn into_config(self) -> Result<RunConfig, ConfigError> {
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for address in &self.addr {
            let resolved = address
                .to_socket_addrs()
                .map_err(|error| ConfigError::Invalid(format!("--addr {address}: {error}")))?
                .next()
                .ok_or_else(|| ConfigError::Invalid(format!("--addr {address} resolves to nothing")))?;
            addresses.push(resolved);
        }
        let duration = match (self.duration, self.transfers) {
            (Some(duration), _) => duration,
            // A count-bounded run is still bounded in time.
            (None, Some(_)) => Duration::from_millis(DURATION_MS_MAX),
            (None, None) => Duration::from_millis(DURATION_DEFAULT_MS),
        };
        let mut config = RunConfig::new(addresses);
        config.cluster_id = self.cluster_id;
        config.rate_per_second = self.rate;
        config.duration = duration;
        config.transfers_max = self.transfers;
        config.warmup = self.warmup;
        config.batch_size = self.batch_size;
        config.connections = self.connections;
        config.inflight = self.inflight;
        config.accounts = self.accounts;
        config.distribution = match self.distribution {
            DistributionArg::Uniform => Distribution::Uniform,
            DistributionArg::Zipf => Distribution::Zipf { skew: self.zipf_skew },
        };
        config.cross_partition_share = self.cross_partition_share;
        config.fail_share = self.fail_share;
        config.reuse_accounts = self.reuse_accounts;
        config.account_id_base = self.account_id_base;
        config.ledger = self.ledger;
        config.verify = self.verify;
        config.retry_first = self.retry_first;
        config.out_dir = self.out;
        config.results_root = self.results_root;
        config.null_server = self.null_server;
        config.null_server_partitions = self.null_server_partitions;
        config.progress = !self.quiet;
        config.seed = self.seed;
        config.metrics_url = self.metrics_url;
        config.validate()?;
        Ok(config)
    }
}

/// Parses, runs and maps the outcome to the process exit code (see [`crate::run::EXIT_OK`] and
/// siblings); errors go to stderr.
pub fn main_with_args(args: Args) -> u8 {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("walletbench: {error}");
            return crate::run::EXIT_INCOMPLETE;
        }
    };
    match crate::run::run(&config) {
        Ok(outcome) => outcome.exit_code(),
        Err(error) => {
            eprintln!("walletbench: {error}");
            crate::run::EXIT_INCOMPLETE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WARMUP_DEFAULT_MS;

    #[test]
    fn flags_map_to_the_config() {
        let args = Args::parse_from([
            "walletbench",
            "--addr",
            "127.0.0.1:4000,127.0.0.1:4001",
            "--rate",
            "50000",
            "--duration",
            "3s",
            "--distribution",
            "zipf",
            "--zipf-skew",
            "1.2",
            "--fail-share",
            "0.01",
        ]);
        let config = args.into_config().expect("valid flags");
        assert_eq!(config.addresses.len(), 2);
        assert_eq!(config.rate_per_second, Some(50_000));
        assert_eq!(config.duration, Duration::from_secs(3));
        assert_eq!(config.distribution, Distribution::Zipf { skew: 1.2 });
        assert_eq!(config.warmup, Duration::from_millis(WARMUP_DEFAULT_MS));
    }

    #[test]
    fn a_count_bounded_run_is_still_time_bounded() {
        let args = Args::parse_from(["walletbench", "--addr", "127.0.0.1:4000", "--transfers", "1000"]);
        let config = args.into_config().expect("valid flags");
        assert_eq!(config.transfers_max, Some(1_000));
        assert_eq!(config.duration, Duration::from_millis(DURATION_MS_MAX));
    }
}
