//! One benchmark run, start to end: connect, learn the partition count, set up and fund accounts,
//! drive the load from one thread per connection while the main thread aggregates and prints
//! progress, verify, and write the results directory.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::RecvTimeoutError;
use net::client::{Client, ClientConfig, ClientError};
use net::server::{ServerError, ServerHandle};
use thiserror::Error;

use crate::accounts::{
    create_and_fund, lookup_balances, AccountLayout, SetupError, ACCOUNT_ID_BASES, ACCOUNT_ID_RANGE_BITS,
};
use crate::config::{ConfigError, RunConfig};
use crate::null_server::start_null_server;
use crate::report::{create_results_dir, write_reports, Parameters, Summary};
use crate::rng::mix64;
use crate::stats::Aggregator;
use crate::verify::{check, failed_to_read, VerifyReport};
use crate::worker::{run_worker, BatchOutcome, WorkerPlan, WorkerReport, Workload, TRANSFER_AMOUNT_MINOR_MAX};

/// Time between setup's end and the first scheduled batch: every worker connects in it, so the first
/// batches are not charged for connection setup.
pub const START_DELAY_MS: u64 = 200;
pub const PROGRESS_INTERVAL_MS: u64 = 1_000;
/// Batch outcomes queued between workers and the aggregator; a full queue makes workers wait.
pub const OUTCOME_QUEUE_MAX: usize = 65_536;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("setup: {0}")]
    Setup(#[from] SetupError),
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("null server: {0}")]
    NullServer(#[from] ServerError),
    #[error("writing results: {0}")]
    Io(#[from] io::Error),
    #[error("--metrics-url: {0}")]
    Metrics(String),
}

/// Exit codes of the CLI.
pub const EXIT_OK: u8 = 0;
pub const EXIT_VERIFY_FAILED: u8 = 1;
pub const EXIT_INCOMPLETE: u8 = 2;

#[derive(Debug)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub summary: Summary,
}

impl RunOutcome {
    pub fn exit_code(&self) -> u8 {
        if !self.summary.complete {
            EXIT_INCOMPLETE
        } else if self.summary.verify_failed() {
            EXIT_VERIFY_FAILED
        } else {
            EXIT_OK
        }
    }
}

pub fn run(config: &RunConfig) -> Result<RunOutcome, RunError> {
    config.validate()?;
    let mut config = config.clone();
    // Kept alive until the run ends: dropping the handle stops the server.
    let _null_server: Option<ServerHandle> = if config.null_server {
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        let handle = start_null_server(listen, config.cluster_id, config.null_server_partitions)?;
        config.addresses = vec![handle.local_address()];
        Some(handle)
    } else {
        None
    };
    let client_config = ClientConfig {
        requests_in_flight_max: config.inflight,
        ..ClientConfig::new(config.addresses.clone(), config.cluster_id)
    };
    let mut control = Client::connect(client_config.clone())?;
    let partitions = control.status()?.partitions;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let run_entropy = mix64(now.as_nanos() as u64 ^ ((std::process::id() as u64) << 32));
    let seed = config.seed.unwrap_or(run_entropy);
    let base = config.account_id_base.unwrap_or(((run_entropy % ACCOUNT_ID_BASES) + 1) << ACCOUNT_ID_RANGE_BITS);
    let layout = AccountLayout::new(base, config.accounts, partitions)?;
    let say = |line: String| {
        if config.progress {
            println!("{line}");
        }
    };
    say(format!(
        "walletbench: {} accounts from id {base} over {partitions} partitions, {} connection(s) x {} in flight, batch {}",
        config.accounts, config.connections, config.inflight, config.batch_size
    ));
    let created_fresh = if config.reuse_accounts {
        false
    } else {
        let setup_started = Instant::now();
        let outcome = create_and_fund(&mut control, &layout, config.ledger)?;
        say(format!("setup: created and funded in {:.1}s", setup_started.elapsed().as_secs_f64()));
        outcome.created_fresh
    };
    let all_ids = layout.all_ids();
    let start_balances =
        if config.verify || config.reuse_accounts { Some(lookup_balances(&mut control, &all_ids)?) } else { None };
    drop(control);
    let supply: u64 = match &start_balances {
        Some(balances) => balances[..layout.accounts.len()].iter().map(|balance| (*balance).max(0) as u64).sum(),
        None => layout.initial_balance_minor() * layout.accounts.len() as u64,
    };
    let workload = Workload {
        layout,
        ledger: config.ledger,
        distribution: config.distribution,
        cross_partition_share: config.cross_partition_share,
        fail_share: config.fail_share,
        // Above every balance, and never equal to a normal amount (those are how failures are told apart).
        fail_amount_minor: supply.saturating_add(1).clamp(TRANSFER_AMOUNT_MINOR_MAX + 1, i64::MAX as u64),
    };

    // Refused before any load when the endpoint does not answer: the report was asked for.
    let stages_before =
        config.metrics_url.as_deref().map(crate::stages::scrape).transpose().map_err(RunError::Metrics)?;
    let start = Instant::now() + Duration::from_millis(START_DELAY_MS);
    let plans = plan_workers(&config, &client_config, start, seed, run_entropy as u32);
    let (aggregator, reports) = drive(&config, &plans, &workload, start);
    let server_stages = match (&config.metrics_url, &stages_before) {
        (Some(url), Some(before)) => Some(
            crate::stages::scrape(url).map(|after| crate::stages::summarize(before, &after)).map_err(|e| e.to_string()),
        ),
        _ => None,
    };

    let transfers_sent = reports.iter().map(|report| report.transfers_sent).sum();
    let retry_check = config.retry_first.map(|_| {
        reports.iter().fold(crate::worker::RetryCheck::default(), |total, report| crate::worker::RetryCheck {
            transfers: total.transfers + report.retry_check.transfers,
            replayed_as_original: total.replayed_as_original + report.retry_check.replayed_as_original,
            mismatched: total.mismatched + report.retry_check.mismatched,
        })
    });
    let worker_errors: Vec<String> = reports
        .iter()
        .enumerate()
        .filter_map(|(index, report)| report.error.as_ref().map(|error| format!("connection {index}: {error}")))
        .collect();
    let verify = if !config.verify {
        None
    } else if !worker_errors.is_empty() {
        Some(failed_to_read("run incomplete: outcomes of lost batches are unknown".into(), created_fresh))
    } else {
        let mut deltas = vec![0i64; all_ids.len()];
        for report in &reports {
            for (total, delta) in deltas.iter_mut().zip(&report.deltas) {
                *total = total.saturating_add(*delta);
            }
        }
        let start_balances = start_balances.as_deref().expect("looked up when verify is on");
        Some(verify_balances(&client_config, &all_ids, start_balances, &deltas, created_fresh))
    };
    let parameters = Parameters::new(&config, partitions, base, seed);
    let dir = match &config.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => create_results_dir(&config.results_root, now.as_secs(), config.rate_per_second)?,
    };
    let run_name =
        dir.file_name().map_or_else(|| dir.display().to_string(), |name| name.to_string_lossy().into_owned());
    let mut summary = Summary::new(run_name, &aggregator, transfers_sent, worker_errors, verify, parameters);
    summary.retry_check = retry_check;
    summary.server_stages = server_stages;
    write_reports(&dir, &summary, &aggregator)?;
    if config.progress {
        print!("{}", crate::report::human_report(&summary));
    }
    println!("results: {}", dir.display());
    Ok(RunOutcome { dir, summary })
}

fn plan_workers(
    config: &RunConfig,
    client_config: &ClientConfig,
    start: Instant,
    seed: u64,
    run_entropy: u32,
) -> Vec<WorkerPlan> {
    let connections = config.connections as u64;
    let measure_from = start + config.warmup;
    let generate_until = measure_from + config.duration;
    // Each worker runs its share of the rate on its own timetable, offset so that batches of
    // different connections interleave instead of leaving together.
    let interval = config
        .rate_per_second
        .map(|rate| Duration::from_secs_f64(config.batch_size as f64 * connections as f64 / rate as f64));
    (0..config.connections)
        .map(|index| {
            let quota = match config.transfers_max {
                Some(total) => total / connections + u64::from((index as u64) < total % connections),
                None => u64::MAX,
            };
            let offset =
                interval.map_or(Duration::ZERO, |interval| interval.mul_f64(index as f64 / connections as f64));
            WorkerPlan {
                index,
                client_config: client_config.clone(),
                start,
                measure_from,
                generate_until,
                interval,
                first_due: start + offset,
                transfers_quota: quota,
                batch_size: config.batch_size,
                inflight: config.inflight,
                seed: mix64(seed.wrapping_add(index as u64)),
                run_entropy,
                retry_sample_until: config.retry_first.map(|first| start + first),
            }
        })
        .collect()
}

/// Runs the workers and aggregates their outcomes until all of them have ended.
fn drive(
    config: &RunConfig,
    plans: &[WorkerPlan],
    workload: &Workload,
    start: Instant,
) -> (Aggregator, Vec<WorkerReport>) {
    let stop = AtomicBool::new(false);
    let (sender, receiver) = crossbeam_channel::bounded::<BatchOutcome>(OUTCOME_QUEUE_MAX);
    let mut aggregator = Aggregator::new(config.warmup, config.rate_per_second);
    let progress_interval = Duration::from_millis(PROGRESS_INTERVAL_MS);
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|plan| {
                let sender = sender.clone();
                let stop = &stop;
                scope.spawn(move || run_worker(plan, workload, &sender, stop))
            })
            .collect();
        drop(sender);
        let mut next_progress = start + progress_interval;
        // Bounded: ends when the last worker drops its sender, and every worker ends by itself.
        loop {
            match receiver.recv_deadline(next_progress) {
                Ok(outcome) => aggregator.absorb(&outcome),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            if now >= next_progress {
                if config.progress {
                    println!("{}", aggregator.progress_line(now.saturating_duration_since(start)));
                }
                next_progress += progress_interval;
            }
        }
        handles
            .into_iter()
            .map(|handle| {
                handle.join().unwrap_or_else(|_| WorkerReport {
                    deltas: Vec::new(),
                    transfers_sent: 0,
                    error: Some(crate::worker::WorkerError::Unexpected("worker thread panicked".into())),
                    retry_check: Default::default(),
                })
            })
            .collect()
    });
    (aggregator, reports)
}

fn verify_balances(
    client_config: &ClientConfig,
    ids: &[u64],
    start: &[i64],
    deltas: &[i64],
    created_fresh: bool,
) -> VerifyReport {
    let end = Client::connect(client_config.clone())
        .map_err(SetupError::from)
        .and_then(|mut client| lookup_balances(&mut client, ids));
    match end {
        Ok(end) => check(ids, start, &end, deltas, created_fresh),
        Err(error) => failed_to_read(format!("reading balances after the run: {error}"), created_fresh),
    }
}
