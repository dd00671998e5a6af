//! walletbench against real servers over 127.0.0.1: net's mio server with an in-test handler that
//! keeps real balances (so `--verify` means something), rejects overdrafts and cross-partition
//! transfers like the engine, and can be told to lose money or to stall once.
//!
//! The runs share two cores with whatever else is running, so they take turns (one lock) and assert
//! with margins; every run is bounded by a transfer count or a duration of at most ~1.5 s.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bench::config::RunConfig;
use bench::run::{run, RunOutcome, EXIT_OK, EXIT_VERIFY_FAILED};
use net::protocol::{AccountLookup, NodeStatus, Request, Response};
use net::server::{Handler, Responder, Server, ServerConfig, ServerHandle};
use net::types::{partition_of, Account, ItemResult, ResultCode};

const PARTITIONS: u32 = 4;
/// One run at a time: the open-loop rate assertions need the CPU the closed-loop runs would take.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Default)]
struct Ledger {
    accounts: HashMap<u64, Account>,
    transfer_batches: u64,
}

/// A tiny in-memory engine: the rules walletbench relies on, nothing more.
struct ModelServer {
    ledger: Mutex<Ledger>,
    /// Credits only half of each amount: money silently disappears.
    lose_half_of_each_credit: bool,
    /// Blocks the whole server (its event loop) for this long when this batch number arrives.
    stall_at_batch: Option<(u64, Duration)>,
}

impl ModelServer {
    fn new() -> ModelServer {
        ModelServer { ledger: Mutex::new(Ledger::default()), lose_half_of_each_credit: false, stall_at_batch: None }
    }

    fn start(self) -> ServerHandle {
        let listen = "127.0.0.1:0".parse().expect("literal address");
        Server::start(ServerConfig::new(listen, 1), self).expect("loopback server starts")
    }

    fn transfer(&self, ledger: &mut Ledger, transfer: &net::types::Transfer) -> ResultCode {
        let (Some(debit), Some(credit)) = (
            ledger.accounts.get(&transfer.debit_account_id).copied(),
            ledger.accounts.get(&transfer.credit_account_id).copied(),
        ) else {
            return ResultCode::DebitAccountNotFound;
        };
        if debit.id == credit.id {
            return ResultCode::SameAccount;
        }
        if partition_of(debit.id, PARTITIONS) != partition_of(credit.id, PARTITIONS) {
            return ResultCode::CrossPartitionUnsupported;
        }
        if debit.ledger != transfer.ledger || credit.ledger != transfer.ledger {
            return ResultCode::LedgerMismatch;
        }
        let amount = transfer.amount as i64;
        if !debit.is_external() && debit.balance < amount {
            return ResultCode::InsufficientFunds;
        }
        let credited = if self.lose_half_of_each_credit { amount / 2 } else { amount };
        ledger.accounts.get_mut(&debit.id).expect("looked up above").balance -= amount;
        ledger.accounts.get_mut(&credit.id).expect("looked up above").balance += credited;
        ResultCode::Ok
    }
}

impl Handler for ModelServer {
    fn handle(&self, request: Request, responder: Responder) {
        let mut ledger = self.ledger.lock().expect("no test thread panics holding the ledger");
        let response = match request {
            Request::Status => {
                Response::Status(NodeStatus { partitions: PARTITIONS, shards: 1, ..NodeStatus::default() })
            }
            Request::CreateAccounts(items) => Response::Results(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, item)| {
                        let code = match ledger.accounts.entry(item.id) {
                            Entry::Occupied(_) => ResultCode::Exists,
                            Entry::Vacant(slot) => {
                                slot.insert(Account {
                                    id: item.id,
                                    ledger: item.ledger,
                                    flags: item.flags,
                                    ..Account::default()
                                });
                                ResultCode::Ok
                            }
                        };
                        result(index, code)
                    })
                    .collect(),
            ),
            Request::CreateTransfers(items) => {
                ledger.transfer_batches += 1;
                if let Some((batch, stall)) = self.stall_at_batch {
                    if ledger.transfer_batches == batch {
                        std::thread::sleep(stall);
                    }
                }
                let results = items
                    .iter()
                    .enumerate()
                    .map(|(index, transfer)| result(index, self.transfer(&mut ledger, transfer)))
                    .collect();
                Response::Results(results)
            }
            Request::LookupAccounts { reads, .. } => Response::Accounts(
                reads
                    .iter()
                    .map(|read| match ledger.accounts.get(&read.id) {
                        Some(account) => AccountLookup::Found(*account),
                        None => AccountLookup::NotFound { id: read.id, code: ResultCode::AccountNotFound },
                    })
                    .collect(),
            ),
            _ => Response::Pong,
        };
        drop(ledger);
        responder.respond(response);
    }
}

fn result(index: usize, code: ResultCode) -> ItemResult {
    ItemResult { index: index as u32, code, flags: 0, seq: 0 }
}

fn out_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let unique = format!("walletbench-{name}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let dir = std::env::temp_dir().join(unique);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config_for(server: &ServerHandle, name: &str) -> RunConfig {
    let mut config = RunConfig::new(vec![server.local_address()]);
    config.accounts = 2_000;
    config.batch_size = 100;
    config.connections = 2;
    config.inflight = 4;
    config.warmup = Duration::from_millis(200);
    config.duration = Duration::from_secs(1);
    config.progress = false;
    config.out_dir = Some(out_dir(name));
    config
}

fn summary_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn finish(outcome: RunOutcome) {
    let _ = std::fs::remove_dir_all(outcome.dir);
}

#[test]
fn closed_loop_run_writes_every_report_and_verifies() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = ModelServer::new().start();
    let mut config = config_for(&server, "closed");
    config.verify = true;
    let outcome = run(&config).expect("run completes");
    assert_eq!(outcome.exit_code(), EXIT_OK, "{:?}", outcome.summary.verify);
    for file in ["report.txt", "summary.json", "latency.hgrm", "latency.svg", "throughput.svg"] {
        assert!(outcome.dir.join(file).is_file(), "{file} written");
    }
    let summary = summary_json(&outcome.dir);
    let per_second = summary["transfers_per_second"].as_f64().expect("transfers_per_second");
    let acknowledged = summary["transfers_acknowledged"].as_u64().expect("transfers_acknowledged");
    assert!(per_second > 1_000.0, "closed loop over loopback moves at least 1k transfers/s, got {per_second}");
    assert!(acknowledged > 1_000);
    for field in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(summary["latency_us"][field].as_u64().is_some_and(|value| value > 0), "latency_us.{field}");
    }
    let p50 = summary["latency_us"]["p50"].as_u64().expect("checked");
    assert!(p50 <= summary["latency_us"]["max"].as_u64().expect("checked"));
    assert!(summary["errors"].as_object().is_some_and(|errors| errors.is_empty()), "{}", summary["errors"]);
    assert_eq!(summary["parameters"]["batch_size"], 100);
    assert_eq!(summary["verify"]["passed"], true);
    assert_eq!(summary["verify"]["accounts_checked"], 2_000 + PARTITIONS as u64);

    let hgrm = std::fs::read_to_string(outcome.dir.join("latency.hgrm")).expect("hgrm written");
    let lines: Vec<&str> = hgrm.lines().collect();
    assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
    assert!(lines[lines.len() - 3].starts_with("#[Mean    = "));
    let total = format!("Total count    = {acknowledged:>12}]");
    assert!(lines[lines.len() - 2].starts_with("#[Max     = ") && lines[lines.len() - 2].ends_with(&total));
    assert!(lines[lines.len() - 1].starts_with("#[Buckets = "));
    assert!(lines[lines.len() - 4].contains(" 1.000000000000 "), "the last row is the 100th percentile");
    let svg = std::fs::read_to_string(outcome.dir.join("latency.svg")).expect("svg written");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    finish(outcome);
}

#[test]
fn verify_fails_when_the_server_loses_money() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = ModelServer { lose_half_of_each_credit: true, ..ModelServer::new() }.start();
    let mut config = config_for(&server, "lossy");
    config.verify = true;
    config.transfers_max = Some(5_000);
    config.warmup = Duration::ZERO;
    let outcome = run(&config).expect("the run itself completes");
    assert_eq!(outcome.exit_code(), EXIT_VERIFY_FAILED);
    let verify = outcome.summary.verify.clone().expect("verify requested");
    assert!(!verify.passed);
    assert!(verify.balance_mismatches > 0);
    assert_ne!(verify.ledger_sum_end, 0, "half-credited transfers destroy money");
    let report = std::fs::read_to_string(outcome.dir.join("report.txt")).expect("report written");
    assert!(report.contains("verify       FAILED"), "{report}");
    finish(outcome);
}

#[test]
fn fail_share_yields_the_expected_insufficient_funds() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = ModelServer::new().start();
    let mut config = config_for(&server, "fail-share");
    const TRANSFERS: u64 = 20_000;
    config.transfers_max = Some(TRANSFERS);
    config.fail_share = 0.1;
    config.verify = true;
    config.warmup = Duration::ZERO;
    let outcome = run(&config).expect("run completes");
    assert_eq!(outcome.exit_code(), EXIT_OK, "{:?}", outcome.summary.verify);
    let summary = &outcome.summary;
    assert_eq!(summary.transfers_acknowledged_total, TRANSFERS);
    let insufficient = summary.errors.get("insufficient_funds").copied().unwrap_or(0);
    assert_eq!(insufficient, summary.expected_failures.answered, "every deliberate overdraft fails, nothing else");
    assert_eq!(insufficient, summary.expected_failures.insufficient_funds);
    assert_eq!(summary.unexpected_errors, 0);
    assert_eq!(summary.expected_failures.accepted, 0);
    // Binomial(20000, 0.1): mean 2000, sd 42; 5 sd either side.
    assert!((1_790..=2_210).contains(&insufficient), "{insufficient} deliberate failures");
    finish(outcome);
}

#[test]
fn open_loop_holds_the_rate_and_charges_a_stall_to_every_delayed_batch() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    const RATE: u64 = 20_000;
    const STALL_MS: u64 = 200;
    let server =
        ModelServer { stall_at_batch: Some((60, Duration::from_millis(STALL_MS))), ..ModelServer::new() }.start();
    let mut config = config_for(&server, "open");
    config.rate_per_second = Some(RATE);
    config.connections = 1;
    config.inflight = 8;
    config.warmup = Duration::ZERO;
    config.duration = Duration::from_millis(1_500);
    let outcome = run(&config).expect("run completes");
    assert_eq!(outcome.exit_code(), EXIT_OK);
    let summary = &outcome.summary;
    let rate = summary.transfers_per_second;
    assert!((RATE as f64 * 0.85..=RATE as f64 * 1.15).contains(&rate), "achieved {rate}/s for a target of {RATE}/s");
    assert_eq!(summary.transfers_acknowledged, 30_000, "1.5 s at 20k/s, every scheduled batch answered");
    let latency = &summary.latency_us;
    assert!(latency.max >= STALL_MS * 1_000, "max {} us", latency.max);
    assert!(latency.p999 >= STALL_MS * 1_000 * 9 / 10, "p99.9 {} us", latency.p999);
    // 40 batches (13 % of the run) were due during the stall; only 8 could be in flight. Measured from
    // their scheduled time the p90 lands inside the stall; measured from the actual send, it would not.
    assert!(latency.p90 >= 20_000, "p90 {} us: batches held back by the stall must be charged", latency.p90);
    let per_second = &summary.throughput_per_second;
    assert!(per_second.len() >= 2 && per_second.len() <= 3, "{per_second:?}");
    finish(outcome);
}

#[test]
fn null_server_acknowledges_every_transfer() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut config = RunConfig::new(Vec::new());
    config.null_server = true;
    config.transfers_max = Some(200_000);
    config.batch_size = 8_190;
    config.warmup = Duration::ZERO;
    config.progress = false;
    config.out_dir = Some(out_dir("null"));
    let outcome = run(&config).expect("run completes");
    assert_eq!(outcome.exit_code(), EXIT_OK);
    assert_eq!(outcome.summary.transfers_sent, 200_000);
    assert_eq!(outcome.summary.transfers_acknowledged, 200_000);
    assert!(outcome.summary.errors.is_empty());
    finish(outcome);
}

#[test]
fn a_second_run_reuses_the_first_runs_accounts_and_still_verifies() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = ModelServer::new().start();
    let mut config = config_for(&server, "reuse-first");
    config.account_id_base = Some(7_000_000);
    config.transfers_max = Some(3_000);
    config.warmup = Duration::ZERO;
    config.verify = true;
    let first = run(&config).expect("first run completes");
    assert_eq!(first.exit_code(), EXIT_OK);
    assert_eq!(first.summary.verify.as_ref().map(|verify| verify.created_fresh), Some(true));
    finish(first);
    config.reuse_accounts = true;
    config.out_dir = Some(out_dir("reuse-second"));
    let second = run(&config).expect("second run completes");
    assert_eq!(second.exit_code(), EXIT_OK, "{:?}", second.summary.verify);
    let verify = second.summary.verify.clone().expect("verify requested");
    assert!(!verify.created_fresh && verify.ledger_sum_start == 0 && verify.ledger_sum_end == 0);
    assert_eq!(second.summary.transfers_acknowledged_total, 3_000);
    assert!(second.summary.errors.is_empty(), "{:?}", second.summary.errors);
    finish(second);
}

#[test]
fn cross_partition_share_is_routed_across_partitions() {
    let _turn = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = ModelServer::new().start();
    let mut config = config_for(&server, "cross");
    const TRANSFERS: u64 = 10_000;
    config.transfers_max = Some(TRANSFERS);
    config.cross_partition_share = 0.25;
    config.warmup = Duration::ZERO;
    config.verify = true;
    let outcome = run(&config).expect("run completes");
    assert_eq!(outcome.exit_code(), EXIT_OK, "rejected transfers move no money: {:?}", outcome.summary.verify);
    let rejected = outcome.summary.errors.get("cross_partition_unsupported").copied().unwrap_or(0);
    // Binomial(10000, 0.25): mean 2500, sd 43; 5 sd either side.
    assert!((2_283..=2_717).contains(&rejected), "{rejected} cross-partition transfers");
    assert_eq!(outcome.summary.errors.len(), 1, "{:?}", outcome.summary.errors);
    finish(outcome);
}
