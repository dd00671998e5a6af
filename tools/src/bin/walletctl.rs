//! `walletctl`: the operator CLI. Talks to walletd over the binary protocol, or reads a stopped
//! node's data directory (`verify`, `wal dump`). Human-readable output by default, `--json` for
//! scripts; the exit code is 0 only when every item succeeded (see `tools::output::exit`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use net::client::{new_transfer_id, Client, ClientConfig, ClientError};
use net::currency::{Currency, CurrencyRegistry};
use net::protocol::{AccountLookup, Consistency, TransferLookup, HISTORY_LIMIT_MAX};
use net::types::{Account, CreateAccount, HistoryEntry, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use serde_json::json;
use tools::config::{parse_cluster_id, parse_u128, WalletdConfig, LISTEN_DEFAULT};
use tools::output::{self, exit};
use tools::wal_dump::{self, DumpOptions};

#[derive(Parser, Debug)]
#[command(name = "walletctl", version, about = "Operate a wallet node: accounts, transfers, balances, history, verify")]
struct Cli {
    /// walletd address(es), comma-separated; tried in order.
    #[arg(long, global = true, default_value = LISTEN_DEFAULT)]
    addr: String,
    /// Cluster id (decimal or 0x hex) the node was created with.
    #[arg(long, global = true, default_value = "1", value_parser = parse_cluster_id)]
    cluster_id: u128,
    /// walletd's TOML config, to learn custom ledgers.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or show accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Move money: --from is debited, --to credited. `transfer show ID` looks a transfer up.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Transfer {
        #[command(subcommand)]
        command: Option<TransferCommand>,
        #[arg(long, required = true)]
        from: Option<u64>,
        #[arg(long, required = true)]
        to: Option<u64>,
        /// Decimal amount in the ledger's currency, e.g. 1.00
        #[arg(long, required = true)]
        amount: Option<String>,
        /// Currency code (USD) or ledger number.
        #[arg(long, required = true)]
        ledger: Option<String>,
        /// Transfer id = idempotency key (decimal or 0x hex). Generated (time-ordered) when absent.
        #[arg(long, value_parser = parse_u128)]
        id: Option<u128>,
        #[arg(long, default_value_t = 0)]
        user_data: u128,
    },
    /// An account's balance.
    Balance { id: u64 },
    /// An account's events with the balance after each: why the balance is what it is.
    History {
        id: u64,
        /// Entries per request (all pages are read unless --from-seq is given).
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Read one page, newest first, from this seq down.
        #[arg(long)]
        from_seq: Option<u64>,
    },
    /// The node's partitions and their sequences; for a cluster, every member's view of every partition.
    Status {
        /// First wait (up to this many ms) until every member answers and agrees on a leader for
        /// every partition; exits 3 (unavailable) if that does not happen in time.
        #[arg(long, value_name = "MS")]
        wait_for_leaders: Option<u64>,
    },
    /// A STOPPED node's partition, or one account, as it was right after --at-seq or at --at-time
    /// (both may be given; neither: the newest state its log holds). Replays the log; changes nothing.
    State {
        #[arg(long)]
        data_dir: PathBuf,
        /// The partition (default: the account's).
        #[arg(long, required_unless_present = "account")]
        partition: Option<u32>,
        /// Show this account as it was then.
        #[arg(long)]
        account: Option<u64>,
        /// Include events up to this sequence number of the partition.
        #[arg(long)]
        at_seq: Option<u64>,
        /// Include events decided at or before this time: RFC 3339 UTC (2026-12-01T12:00:00.250Z) or
        /// nanoseconds since the Unix epoch.
        #[arg(long, value_parser = parse_time_ns)]
        at_time: Option<u64>,
    },
    /// Replay a STOPPED node's logs and report drift against its state store.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Inspect a stopped node's event log.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    Create {
        #[arg(long)]
        id: u64,
        /// Currency code (USD) or ledger number.
        #[arg(long)]
        ledger: String,
        /// A settlement/funding account that may go negative.
        #[arg(long)]
        external: bool,
        #[arg(long, default_value_t = 0)]
        user_data: u128,
    },
    Show {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
enum TransferCommand {
    /// What became of a transfer id within the idempotency window: outcome, seq, time and fields.
    Show {
        /// Transfer id (decimal or 0x hex), as printed when it was sent.
        #[arg(value_parser = parse_u128)]
        id: u128,
    },
}

#[derive(Subcommand, Debug)]
enum WalCommand {
    /// Records and events, human readable (or JSON lines).
    Dump {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        shard: Option<u32>,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = u64::MAX)]
        limit: u64,
    },
}

/// A failure with the exit code it maps to.
struct Failure(i32, String);

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure(exit::UNAVAILABLE, error.to_string())
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match run(&cli) {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            if cli.json {
                println!("{}", json!({"error": message}));
            } else {
                eprintln!("walletctl: {message}");
            }
            code
        }
    };
    std::process::exit(code);
}

fn registry(cli: &Cli) -> Result<CurrencyRegistry, Failure> {
    match &cli.config {
        None => Ok(CurrencyRegistry::with_iso_4217()),
        Some(path) => {
            let config = WalletdConfig::load(path).map_err(|e| Failure(exit::USAGE, e.to_string()))?;
            config.currencies().map_err(|(name, why)| Failure(exit::USAGE, format!("ledger {name}: {why}")))
        }
    }
}

fn currency<'r>(registry: &'r CurrencyRegistry, ledger: &str) -> Result<&'r Currency, Failure> {
    let found = match ledger.parse::<u32>() {
        Ok(number) => registry.get_ledger(number),
        Err(_) => registry.get(ledger),
    };
    found.map_err(|e| Failure(exit::USAGE, e.to_string()))
}

fn connect(cli: &Cli) -> Result<Client, Failure> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for part in cli.addr.split(',') {
        let resolved =
            part.trim().to_socket_addrs().map_err(|e| Failure(exit::USAGE, format!("--addr {part}: {e}")))?;
        addresses.extend(resolved);
    }
    Ok(Client::connect(ClientConfig::new(addresses, cli.cluster_id))?)
}

/// Status of the node at `--addr` and, for a cluster, of every other member it lists: each partition's
/// role, leader, term, commit and applied index and applied sequence, as each node sees it.
type StatusView = (u64, Result<net::protocol::NodeStatus, String>);

/// The node at `--addr`, then every other member it lists, each asked for its own view.
fn gather_status(cli: &Cli) -> Result<(net::protocol::NodeStatus, Vec<StatusView>), Failure> {
    let first = connect(cli)?.status()?;
    let mut views = vec![(first.node_id, Ok(first.clone()))];
    for member in &first.nodes {
        if member.node_id == first.node_id {
            continue;
        }
        let view = Client::connect(ClientConfig::new(vec![member.address], cli.cluster_id))
            .and_then(|mut client| client.status())
            .map_err(|e| e.to_string());
        views.push((member.node_id, view));
    }
    Ok((first, views))
}

/// Every member answered, every partition is held by some member, and every member holding a replica
/// of a partition names the same known leader for it. (A member lists only the partitions it holds a
/// replica of: a cluster with more nodes than its replication factor lists each on some of them.)
fn every_partition_has_a_leader(views: &[StatusView]) -> bool {
    let mut leaders: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    let mut partitions = 0;
    for (_, view) in views {
        let Ok(status) = view else { return false };
        partitions = status.partitions;
        for p in &status.partition_states {
            if p.leader == 0 || *leaders.entry(p.partition).or_insert(p.leader) != p.leader {
                return false;
            }
        }
    }
    leaders.len() == partitions as usize && leaders.keys().copied().eq(0..partitions)
}

fn status(cli: &Cli, wait_for_leaders_ms: Option<u64>) -> Result<i32, Failure> {
    let (first, views) = match wait_for_leaders_ms {
        None => gather_status(cli)?,
        Some(wait_ms) => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
            loop {
                // A node still starting refuses connections: that counts as "not yet" until the deadline.
                let gathered = gather_status(cli);
                let past_deadline = std::time::Instant::now() >= deadline;
                match gathered {
                    Ok(gathered) if every_partition_has_a_leader(&gathered.1) => break gathered,
                    Ok(gathered) if past_deadline => {
                        eprintln!(
                            "walletctl: not every partition has a leader known to every member after {wait_ms} ms"
                        );
                        print_status(cli, &gathered.0, &gathered.1);
                        return Ok(exit::UNAVAILABLE);
                    }
                    Err(failure) if past_deadline => return Err(failure),
                    _ => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
        }
    };
    Ok(if print_status(cli, &first, &views) { exit::UNAVAILABLE } else { exit::OK })
}

/// Prints every view; returns whether some member was unreachable.
fn print_status(cli: &Cli, first: &net::protocol::NodeStatus, views: &[StatusView]) -> bool {
    let mut unreachable = false;
    if cli.json {
        let nodes: Vec<_> = views
            .iter()
            .map(|(id, view)| match view {
                Ok(status) => {
                    let partitions: Vec<_> = status
                        .partition_states
                        .iter()
                        .map(|p| {
                            json!({"partition": p.partition,
                                "leader": p.flags & net::protocol::PARTITION_FLAG_LEADER != 0,
                                "leader_node": p.leader, "term": p.term, "last_index": p.last_index,
                                "commit_index": p.commit_index, "applied_index": p.applied_index,
                                "applied_seq": p.applied_seq, "state_digest": format!("{:016x}", p.state_digest)})
                        })
                        .collect();
                    json!({"node_id": id, "partitions": status.partitions, "shards": status.shards,
                        "partition_states": partitions})
                }
                Err(error) => {
                    unreachable = true;
                    json!({"node_id": id, "error": error})
                }
            })
            .collect();
        if first.nodes.is_empty() {
            println!("{}", nodes[0]);
        } else {
            println!("{}", json!({ "nodes": nodes }));
        }
    } else {
        for (id, view) in views {
            match view {
                Ok(status) => {
                    println!("node {id}: {} partitions over {} shards", status.partitions, status.shards);
                    for p in &status.partition_states {
                        let role =
                            if p.flags & net::protocol::PARTITION_FLAG_LEADER != 0 { "leader" } else { "follower" };
                        let leader = if p.leader == 0 { "unknown".to_string() } else { p.leader.to_string() };
                        println!(
                            "  partition {:>4}: {role:<8} leader {leader:<7} term {:<4} last {:<8} commit {:<8} applied {:<8} seq {:<10} digest {:016x}",
                            p.partition, p.term, p.last_index, p.commit_index, p.applied_index, p.applied_seq, p.state_digest
                        );
                    }
                }
                Err(error) => {
                    unreachable = true;
                    println!("node {id}: unreachable: {error}");
                }
            }
        }
    }
    unreachable
}

fn run(cli: &Cli) -> Result<i32, Failure> {
    let registry = registry(cli)?;
    match &cli.command {
        Command::Account { command: AccountCommand::Create { id, ledger, external, user_data } } => {
            let currency = currency(&registry, ledger)?;
            let flags = if *external { ACCOUNT_FLAG_EXTERNAL } else { 0 };
            let account = CreateAccount { id: *id, ledger: currency.ledger, flags, user_data: *user_data };
            let result = connect(cli)?.create_accounts(&[account])?[0];
            if cli.json {
                println!(
                    "{}",
                    json!({"account_id": id, "ledger": currency.name, "result": result.code.name(), "seq": result.seq})
                );
            } else if result.code == ResultCode::Ok {
                println!(
                    "account {id} created ({}{}) at seq {}",
                    currency.name,
                    if *external { ", external" } else { "" },
                    result.seq
                );
            } else {
                println!("account {id} not created: {}", result.code.name());
            }
            Ok(if result.code == ResultCode::Ok { exit::OK } else { exit::REJECTED })
        }
        Command::Account { command: AccountCommand::Show { id } } | Command::Balance { id } => {
            let lookup = connect(cli)?.lookup_accounts(Consistency::Linearizable, &[*id])?;
            match lookup.first() {
                Some(AccountLookup::Found(account)) => {
                    if cli.json {
                        println!("{}", output::account_json(&registry, account));
                    } else {
                        println!("{}", output::account_text(&registry, account));
                    }
                    Ok(exit::OK)
                }
                _ => Err(Failure(exit::REJECTED, format!("account {id} not found"))),
            }
        }
        Command::Transfer { command: Some(TransferCommand::Show { id }), .. } => show_transfer(cli, &registry, *id),
        Command::Transfer { command: None, from, to, amount, ledger, id, user_data } => {
            let required = "clap requires --from, --to, --amount and --ledger without a subcommand";
            let (from, to) = (from.as_ref().expect(required), to.as_ref().expect(required));
            let (amount, ledger) = (amount.as_ref().expect(required), ledger.as_ref().expect(required));
            let currency = currency(&registry, ledger)?;
            let minor =
                currency.parse_amount(amount).map_err(|e| Failure(exit::USAGE, format!("--amount {amount}: {e}")))?;
            let transfer = Transfer {
                id: id.unwrap_or_else(new_transfer_id),
                debit_account_id: *from,
                credit_account_id: *to,
                amount: minor,
                ledger: currency.ledger,
                flags: 0,
                user_data: *user_data,
            };
            // Retries after a lost connection resend the same id: safe, never applied twice.
            let result = connect(cli)?.create_transfers_retrying(&[transfer])?[0];
            if cli.json {
                println!(
                    "{}",
                    json!({"transfer_id": format!("{:032x}", transfer.id), "from": from, "to": to,
                        "amount": currency.format_amount(minor), "ledger": currency.name,
                        "result": result.code.name(), "seq": result.seq, "replayed": result.is_replayed()})
                );
            } else {
                let replayed = if result.is_replayed() { " (already done: original outcome)" } else { "" };
                println!(
                    "transfer {:032x}: {} {} from {from} to {to}: {}{replayed}, seq {}",
                    transfer.id,
                    currency.format_amount(minor),
                    currency.name,
                    result.code.name(),
                    result.seq
                );
            }
            Ok(if result.code == ResultCode::Ok { exit::OK } else { exit::REJECTED })
        }
        Command::History { id, limit, from_seq } => history(cli, &registry, *id, *limit, *from_seq),
        Command::Status { wait_for_leaders } => status(cli, *wait_for_leaders),
        Command::Verify { data_dir } => verify(cli, data_dir),
        Command::State { data_dir, partition, account, at_seq, at_time } => {
            past_state(cli, &registry, data_dir, *partition, *account, *at_seq, *at_time)
        }
        Command::Wal { command: WalCommand::Dump { data_dir, shard, from, limit } } => {
            let options = DumpOptions { shard: *shard, from_index: *from, records_max: *limit, json: cli.json };
            wal_dump::dump(data_dir, &options, |line| println!("{line}"))
                .map_err(|e| Failure(exit::LOCAL, e.to_string()))?;
            Ok(exit::OK)
        }
    }
}

fn show_transfer(cli: &Cli, registry: &CurrencyRegistry, id: u128) -> Result<i32, Failure> {
    let lookup = connect(cli)?.lookup_transfers(&[id])?;
    match lookup.first() {
        Some(TransferLookup::Found { transfer, code, seq, timestamp_ns }) => {
            if cli.json {
                println!("{}", output::transfer_lookup_json(registry, transfer, *code, *seq, *timestamp_ns));
            } else {
                println!("{}", output::transfer_lookup_text(registry, transfer, *code, *seq, *timestamp_ns));
            }
            Ok(exit::OK)
        }
        Some(TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns }) => {
            if cli.json {
                println!("{}", output::transfer_outcome_json(*id, *code, *seq, *timestamp_ns));
            } else {
                println!("{}", output::transfer_outcome_text(*id, *code, *seq, *timestamp_ns));
            }
            Ok(exit::OK)
        }
        _ => Err(Failure(
            exit::REJECTED,
            format!("transfer {id:032x} not found (never decided, or older than the idempotency window)"),
        )),
    }
}

fn history(cli: &Cli, registry: &CurrencyRegistry, id: u64, limit: u32, from_seq: Option<u64>) -> Result<i32, Failure> {
    let mut client = connect(cli)?;
    let account: Account = match client.lookup_accounts(Consistency::Linearizable, &[id])?.first() {
        Some(AccountLookup::Found(account)) => *account,
        _ => return Err(Failure(exit::REJECTED, format!("account {id} not found"))),
    };
    let limit = limit.clamp(1, HISTORY_LIMIT_MAX);
    let mut entries: Vec<HistoryEntry> = Vec::new();
    let mut cursor = from_seq.unwrap_or(0);
    loop {
        let page = client.account_history(id, cursor, limit)?;
        entries.extend(page.entries);
        match page.next_from_seq {
            Some(next) if from_seq.is_none() => cursor = next,
            _ => break,
        }
    }
    // Pages come newest first; show the story in the order it happened.
    entries.reverse();
    if cli.json {
        let rows: Vec<_> = entries.iter().map(|e| output::history_json(registry, &account, e)).collect();
        println!("{}", json!({"account": output::account_json(registry, &account), "history": rows}));
    } else {
        println!("{}", output::account_text(registry, &account));
        for entry in &entries {
            println!("{}", output::history_text(registry, &account, entry));
        }
    }
    Ok(exit::OK)
}

/// `--at-time`: RFC 3339 in UTC, or a plain number of nanoseconds since the Unix epoch.
fn parse_time_ns(text: &str) -> Result<u64, String> {
    if let Ok(ns) = text.parse::<u64>() {
        return Ok(ns);
    }
    let time =
        humantime::parse_rfc3339(text).map_err(|e| format!("{text:?} is neither RFC 3339 UTC nor nanoseconds: {e}"))?;
    let since_epoch = time.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{text:?} is before 1970"))?;
    u64::try_from(since_epoch.as_nanos()).map_err(|_| format!("{text:?} is past what nanoseconds in a u64 hold"))
}

fn past_state(
    cli: &Cli,
    registry: &CurrencyRegistry,
    data_dir: &std::path::Path,
    partition: Option<u32>,
    account: Option<u64>,
    at_seq: Option<u64>,
    at_time: Option<u64>,
) -> Result<i32, Failure> {
    let local = |e: engine::EngineError| Failure(exit::LOCAL, e.to_string());
    let partition = match (partition, account) {
        (Some(partition), _) => partition,
        (None, Some(id)) => net::types::partition_of(id, engine::past::partitions_of(data_dir).map_err(local)?),
        (None, None) => unreachable!("clap requires --partition or --account"),
    };
    let until =
        engine::past::Until { seq_max: at_seq.unwrap_or(u64::MAX), timestamp_ns_max: at_time.unwrap_or(u64::MAX) };
    let past = engine::past::state_at(data_dir, partition, until, account).map_err(local)?;
    let found = account.is_none() || past.account.is_some();
    if cli.json {
        let account_json = past.account.map(|a| {
            json!({"id": a.id, "ledger": a.ledger, "balance_minor": a.balance.to_string(),
                "balance": registry.by_ledger(a.ledger).map(|c| c.format_balance(a.balance)),
                "created_seq": a.created_seq, "last_seq": a.last_seq})
        });
        println!(
            "{}",
            json!({"partition": past.partition, "seq": past.seq, "time": (past.seq > 0).then(|| output::utc_time(past.timestamp_ns)),
                "timestamp_ns": past.timestamp_ns, "log_last_seq": past.log_last_seq, "base_seq": past.base_seq,
                "accounts": past.accounts, "digest": format!("{:032x}", past.digest),
                "ledger_sums": past.ledger_sums.iter().map(|(l, s)| json!({"ledger": l, "sum": s.to_string()})).collect::<Vec<_>>(),
                "account": account_json})
        );
    } else {
        let when = if past.seq == 0 {
            "before its first event".to_string()
        } else {
            format!("at {}", output::utc_time(past.timestamp_ns))
        };
        println!(
            "partition {}: state after seq {} ({when}; its log reaches seq {}), {} accounts, digest {:016x}",
            past.partition, past.seq, past.log_last_seq, past.accounts, past.digest as u64
        );
        match (account, past.account) {
            (Some(_), Some(a)) => {
                let balance = registry.by_ledger(a.ledger).map_or_else(
                    || format!("{} (ledger {})", a.balance, a.ledger),
                    |c| format!("{} {}", c.format_balance(a.balance), c.name),
                );
                println!("account {}: balance {balance}, last changed at seq {}", a.id, a.last_seq);
            }
            (Some(id), None) => println!("account {id}: did not exist then"),
            (None, _) => {}
        }
    }
    Ok(if found { exit::OK } else { exit::REJECTED })
}

fn verify(cli: &Cli, data_dir: &std::path::Path) -> Result<i32, Failure> {
    if data_dir.join(engine::replica::node::CLUSTER_MANIFEST_FILE).exists() {
        return verify_replicas(cli, data_dir);
    }
    let report = engine::verify(data_dir).map_err(|e| Failure(exit::LOCAL, e.to_string()))?;
    if cli.json {
        let shards: Vec<_> = report
            .shards
            .iter()
            .map(|s| {
                json!({"shard": s.shard, "checkpoint_index": s.checkpoint_index, "base_index": s.base_index,
                "log_first_index": s.log_first_index, "log_last_index": s.log_last_index,
                "records_replayed": s.records_replayed, "accounts_compared": s.accounts_compared,
                "drift": s.drift.iter().map(|d| format!("{d:?}")).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", json!({"clean": report.is_clean(), "shards": shards}));
    } else {
        for s in &report.shards {
            println!(
                "shard {}: replayed {} records from {} (log {}..={}, state store at {}), compared {} accounts: {}",
                s.shard,
                s.records_replayed,
                if s.base_index == 0 {
                    "the start of the log".to_string()
                } else {
                    format!("the base at {}", s.base_index)
                },
                s.log_first_index,
                s.log_last_index,
                s.checkpoint_index,
                s.accounts_compared,
                if s.drift.is_empty() { "no drift".to_string() } else { format!("{} DRIFT", s.drift.len()) }
            );
            for drift in &s.drift {
                println!("  {drift:?}");
            }
        }
        println!("{}", if report.is_clean() { "verify: OK" } else { "verify: DRIFT FOUND" });
    }
    Ok(if report.is_clean() { exit::OK } else { exit::REJECTED })
}

/// A stopped cluster node: replay each replica (snapshot + log up to its commit index) and report its
/// digest, ledger sums and any negative ordinary account. Exit 1 when a ledger does not sum to zero or
/// an ordinary account is negative.
fn verify_replicas(cli: &Cli, data_dir: &std::path::Path) -> Result<i32, Failure> {
    let replays =
        engine::replica::replay::replay_data_dir(data_dir).map_err(|e| Failure(exit::LOCAL, e.to_string()))?;
    let clean = |r: &engine::replica::replay::ReplicaReplay| {
        r.negative_accounts == 0 && r.ledger_sums.iter().all(|&(_, sum)| sum == 0)
    };
    let all_clean = replays.iter().all(clean);
    if cli.json {
        let partitions: Vec<_> = replays
            .iter()
            .map(|r| {
                json!({"partition": r.partition, "snapshot_index": r.snapshot_index, "commit_index": r.commit_index,
                "last_index": r.last_index, "entries_replayed": r.entries_replayed, "applied_seq": r.applied_seq,
                "digest": format!("{:032x}", r.digest), "state_digest": format!("{:016x}", r.digest as u64),
                "accounts": r.accounts, "negative_accounts": r.negative_accounts,
                "ledger_sums": r.ledger_sums.iter().map(|(l, s)| json!({"ledger": l, "sum": s.to_string()})).collect::<Vec<_>>(),
                "clean": clean(r)})
            })
            .collect();
        println!("{}", json!({"clean": all_clean, "partitions": partitions}));
    } else {
        for r in &replays {
            println!(
                "partition {}: snapshot at {}, replayed {} entries to commit index {} (log ends at {}), seq {}, {} accounts, digest {:016x}: {}",
                r.partition,
                r.snapshot_index,
                r.entries_replayed,
                r.commit_index,
                r.last_index,
                r.applied_seq,
                r.accounts,
                r.digest as u64,
                if clean(r) { "ledgers sum to zero, no negative account".to_string() } else { format!("VIOLATION: sums {:?}, {} negative accounts", r.ledger_sums, r.negative_accounts) }
            );
        }
        println!("{}", if all_clean { "verify: OK" } else { "verify: VIOLATION FOUND" });
    }
    Ok(if all_clean { exit::OK } else { exit::REJECTED })
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::protocol::{NodeStatus, PartitionStatus};

    fn view(node_id: u64, partitions: u32, leaders: &[(u32, u64)]) -> StatusView {
        let partition_states = leaders
            .iter()
            .map(|&(partition, leader)| PartitionStatus { partition, leader, ..PartitionStatus::default() })
            .collect();
        (node_id, Ok(NodeStatus { node_id, partitions, shards: 1, partition_states, nodes: Vec::new() }))
    }

    #[test]
    fn leaders_agree_per_partition_over_the_members_that_hold_it() {
        // 3 partitions on 3 nodes, every node a replica of each.
        let full = |p2| vec![view(1, 3, &[(0, 1), (1, 2), (2, p2)]), view(2, 3, &[(0, 1), (1, 2), (2, 3)])];
        assert!(every_partition_has_a_leader(&full(3)));
        assert!(!every_partition_has_a_leader(&full(2)), "two members name different leaders");
        assert!(!every_partition_has_a_leader(&full(0)), "a member knows no leader yet");
        // 5 nodes, 3 replicas each: every member lists only its own partitions.
        let wide = vec![view(1, 3, &[(0, 1), (2, 3)]), view(2, 3, &[(0, 1), (1, 2)]), view(3, 3, &[(1, 2), (2, 3)])];
        assert!(every_partition_has_a_leader(&wide), "partitions a member holds no replica of are not missing");
        let uncovered = vec![view(1, 3, &[(0, 1)]), view(2, 3, &[(0, 1), (1, 2)])];
        assert!(!every_partition_has_a_leader(&uncovered), "partition 2 is on no member that answered");
        let mut unreachable = full(3);
        unreachable.push((3, Err("connection refused".into())));
        assert!(!every_partition_has_a_leader(&unreachable));
    }
}
