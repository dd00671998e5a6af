//! `/metrics` of live walletd processes under load: the exposition passes `promtool check metrics`
//! (Debian's `prometheus` package, installed by `scripts/setup.sh`) while the load runs and after it,
//! names follow the conventions, no label names an account, and the counters moved by exactly what the
//! load did (a fresh process starts every counter at zero).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use net::client::{Client, ClientConfig};
use net::types::{CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};
use serde_json::json;
use support::cluster::{ClusterOptions, LocalCluster, CLUSTER_ID};
use support::http::{new_key, wait_http_ready, Http, Node};

const LOAD_BATCHES: u64 = 40;
const LOAD_BATCH_TRANSFERS: u64 = 100;
const ACCOUNTS: u64 = 10;
/// Label names the exposition may use; none of them names an account.
const LABELS_ALLOWED: [&str; 9] = ["code", "outcome", "shard", "queue", "route", "status", "partition", "stage", "le"];

/// Sample name with its labels (as written) → value.
type Samples = BTreeMap<String, f64>;

fn scrape(http: &Http) -> (String, Samples) {
    let reply = http.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("text/plain; version=0.0.4"), "{}", reply.content_type);
    promtool_check(&reply.text);
    (reply.text.clone(), parse(&reply.text))
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (`. scripts/setup.sh` installs Debian's prometheus package)");
    child.stdin.take().expect("piped").write_all(text.as_bytes()).expect("write the exposition");
    let output = child.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
        let (name, value) = line.rsplit_once(' ').expect("`name value` lines");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        assert!(name.starts_with("wallet_"), "one prefix for every metric: {line}");
        if let Some((_, labels)) = name.split_once('{') {
            for pair in labels.trim_end_matches('}').split(',') {
                let label = pair.split_once('=').expect("label=value").0;
                assert!(LABELS_ALLOWED.contains(&label), "label {label} in {line}");
            }
        }
        samples.insert(name.to_string(), value);
    }
    samples
}

fn value(samples: &Samples, name: &str) -> f64 {
    *samples.get(name).unwrap_or_else(|| panic!("{name} is exposed; got {:?}", samples.keys().collect::<Vec<_>>()))
}

fn transfer(debit: u64, credit: u64, amount: u64) -> Transfer {
    Transfer {
        id: net::client::new_transfer_id(),
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 840,
        flags: 0,
        user_data: 0,
    }
}

#[test]
fn a_single_node_exposes_what_its_load_did() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(dir.path());
    let http = node.http();
    let mut client = Client::connect(ClientConfig::new(vec![node.client_address], 1)).expect("client connects");
    let accounts: Vec<CreateAccount> = (1..=ACCOUNTS)
        .map(|id| CreateAccount {
            id,
            ledger: 840,
            flags: if id == 1 { ACCOUNT_FLAG_EXTERNAL } else { 0 },
            user_data: 0,
        })
        .collect();
    assert!(client.create_accounts(&accounts).expect("accounts").iter().all(|r| r.code == ResultCode::Ok));

    // Load from another thread while this one scrapes: the exposition stays valid mid-load.
    let address = node.client_address;
    let load = std::thread::spawn(move || {
        let mut client = Client::connect(ClientConfig::new(vec![address], 1)).expect("client connects");
        for batch in 0..LOAD_BATCHES {
            let transfers: Vec<Transfer> = (0..LOAD_BATCH_TRANSFERS)
                .map(|i| {
                    let n = batch * LOAD_BATCH_TRANSFERS + i;
                    transfer(1, 2 + n % (ACCOUNTS - 1), 1)
                })
                .collect();
            let results = client.create_transfers(&transfers).expect("batch answered");
            assert!(results.iter().all(|r| r.code == ResultCode::Ok));
        }
    });
    let mut mid_load_scrapes = 0;
    while !load.is_finished() {
        scrape(&http);
        mid_load_scrapes += 1;
    }
    load.join().expect("load thread");
    assert!(mid_load_scrapes >= 1);

    // Five rejections and three HTTP transfers, after the load.
    let rejected: Vec<Transfer> = (0..5).map(|_| transfer(2, 3, 1_000_000_000)).collect();
    let results = client.create_transfers(&rejected).expect("answered");
    assert!(results.iter().all(|r| r.code == ResultCode::InsufficientFunds));
    for _ in 0..3 {
        let body = json!({ "from_account": 1, "to_account": 4, "amount": "0.01", "currency": "USD" });
        assert_eq!(http.post("/v1/wallet/transfer", Some(&new_key()), &body).status, 200);
    }

    let (text, samples) = scrape(&http);
    let ok = ACCOUNTS + LOAD_BATCHES * LOAD_BATCH_TRANSFERS + 3;
    assert_eq!(value(&samples, "wallet_results_total{code=\"ok\"}"), ok as f64, "{text}");
    assert_eq!(value(&samples, "wallet_results_total{code=\"insufficient_funds\"}"), 5.0);
    assert_eq!(value(&samples, "wallet_results_total{code=\"exists\"}"), 0.0);
    assert_eq!(value(&samples, "wallet_http_requests_total{route=\"/v1/wallet/transfer\",status=\"200\"}"), 3.0);
    let proposals = value(&samples, "wallet_proposals_total");
    assert!(proposals >= 2.0, "the accounts and at least one load batch were appended: {proposals}");
    assert_eq!(value(&samples, "wallet_commits_total"), proposals, "everything appended was made durable");
    assert!(value(&samples, "wallet_log_fsync_duration_seconds_count") >= 1.0);
    assert!(value(&samples, "wallet_log_fsync_duration_seconds_sum") > 0.0);
    assert!(value(&samples, "wallet_shard_round_duration_seconds_count") >= proposals.min(1.0));
    assert!(value(&samples, "wallet_client_connections") >= 1.0, "this test's client is still connected");
    assert!(value(&samples, "wallet_client_connections_accepted_total") >= 2.0);
    assert!(value(&samples, "wallet_log_disk_bytes") > 0.0);
    assert_eq!(value(&samples, "wallet_node_up"), 1.0);
    assert_eq!(value(&samples, "wallet_partition_has_leader{partition=\"0\"}"), 1.0);
    assert_eq!(value(&samples, "wallet_partition_led_here{partition=\"0\"}"), 1.0);
    assert_eq!(value(&samples, "wallet_leader_changes_total"), 0.0, "a single node has one leader, always");
    // Every write part is timed through its stages: 1 batch of accounts, the load's batches, the
    // rejections, and each HTTP transfer; the log sync once per round that held writes.
    let stage =
        |name: &str, part: &str| value(&samples, &format!("wallet_stage_duration_seconds_{part}{{stage=\"{name}\"}}"));
    let parts = (1 + LOAD_BATCHES + 1 + 3) as f64;
    for name in ["queue_wait", "execute", "total"] {
        assert_eq!(stage(name, "count"), parts, "stage {name}: {text}");
    }
    assert!((1.0..=parts).contains(&stage("log_sync", "count")), "{text}");
    assert!(stage("total", "sum") > stage("execute", "sum"), "a write's total includes its execution");
    assert!(stage("total", "sum") >= stage("log_sync", "sum") / parts, "{text}");
    let queue = |k: &String| k.starts_with("wallet_shard_queue_depth{") && k.contains("shard=\"0\"");
    assert!(samples.keys().any(queue), "{text}");
    for name in [
        "wallet_forwarded_requests_total{outcome=\"sent\"}",
        "wallet_partition_commit_apply_lag_entries{partition=\"0\"}",
    ] {
        assert!(samples.contains_key(name), "{name} is exposed: {text}");
    }
}

/// walletbench's `--metrics-url` report: the node's stages over a short closed-loop run, each counted
/// and with ordered quantiles, and a refused endpoint stops the run before any load.
#[test]
fn walletbench_reports_where_the_node_spent_the_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(dir.path());
    let mut config = bench::config::RunConfig::new(vec![node.client_address]);
    config.accounts = 1_000;
    config.batch_size = 500;
    config.connections = 2;
    config.inflight = 2;
    config.warmup = std::time::Duration::from_millis(200);
    config.duration = std::time::Duration::from_secs(1);
    config.progress = false;
    config.out_dir = Some(dir.path().join("bench"));
    config.metrics_url = Some(format!("http://{}/metrics", node.http_address));
    let outcome = bench::run::run(&config).expect("the run completes");
    assert_eq!(outcome.exit_code(), bench::run::EXIT_OK);
    let stages = outcome.summary.server_stages.clone().expect("asked for").expect("read after the run");
    let names: Vec<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["checkpoint", "checkpoint_write", "commit", "execute", "log_sync", "queue_wait", "total"]);
    for s in &stages {
        if s.stage == "commit" {
            assert_eq!(s.count, 0, "a single node commits nothing through Raft: {s:?}");
            continue;
        }
        // A checkpoint is a stall of the round, once per `checkpoint_interval_ms` (1 s): a run this short
        // may hold none. Every write stage was observed.
        if s.stage.starts_with("checkpoint") && s.count == 0 {
            assert_eq!(s.p99_us_at_most, None, "{s:?}");
            continue;
        }
        assert!(s.count > 0, "{s:?}");
        let (p50, p99, max) = (s.p50_us_at_most.unwrap(), s.p99_us_at_most.unwrap(), s.max_us_at_most.unwrap());
        assert!(p50 <= p99 && p99 <= max, "{s:?}");
    }
    let total = stages.iter().find(|s| s.stage == "total").unwrap();
    let batches = outcome.summary.batches_answered;
    assert!(total.count >= batches, "every answered batch was timed on the node: {total:?} vs {batches}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bench/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["server_stages"]["Ok"].as_array().map(Vec::len), Some(7), "{summary}");

    config.metrics_url = Some(format!("http://{}/no-such-endpoint-port-is-closed", support::http::free_address()));
    config.out_dir = Some(dir.path().join("refused"));
    let refused = bench::run::run(&config).expect_err("an endpoint that does not answer stops the run");
    assert!(refused.to_string().starts_with("--metrics-url: GET"), "{refused}");
}

#[test]
fn cluster_nodes_expose_leaders_forwards_and_commits() {
    let cluster = LocalCluster::start(ClusterOptions::default());
    for id in cluster.node_ids() {
        wait_http_ready(cluster.http_address(id), None);
    }
    // Wait until every node knows every partition's leader.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let led = cluster.node_ids().iter().all(|&id| {
            cluster
                .status(id)
                .is_ok_and(|s| s.partition_states.len() == 3 && s.partition_states.iter().all(|p| p.leader != 0))
        });
        if led {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "every partition gets a leader");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Node 1 is sent transfers for every partition: the two it does not lead are forwarded.
    let mut client = Client::connect(ClientConfig::new(vec![cluster.client_address(1)], CLUSTER_ID)).expect("connects");
    let mut forwarded_partitions = BTreeSet::new();
    let status = cluster.status(1).expect("status");
    for p in &status.partition_states {
        let accounts: Vec<u64> = (1..).filter(|&id| net::types::partition_of(id, 3) == p.partition).take(2).collect();
        let create: Vec<CreateAccount> = accounts
            .iter()
            .map(|&id| CreateAccount { id, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 })
            .collect();
        assert!(client.create_accounts(&create).expect("answered").iter().all(|r| r.code == ResultCode::Ok));
        let transfers: Vec<Transfer> = (0..10).map(|_| transfer(accounts[0], accounts[1], 5)).collect();
        assert!(client.create_transfers(&transfers).expect("answered").iter().all(|r| r.code == ResultCode::Ok));
        if p.leader != 1 {
            forwarded_partitions.insert(p.partition);
        }
    }
    let mut total_results = 0.0;
    let mut commits_timed = 0.0;
    for id in cluster.node_ids() {
        // A leadership handover (the preferred leader taking its partition back) may be under way at
        // any scrape: the gauge reads 0 for its election. Scrape until every partition has a leader.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let (text, samples) = loop {
            let (text, samples) = scrape(&Http::new(cluster.http_address(id)));
            let has_leader = |p: u32| value(&samples, &format!("wallet_partition_has_leader{{partition=\"{p}\"}}"));
            if (0..3).all(|p| has_leader(p) == 1.0) {
                break (text, samples);
            }
            assert!(std::time::Instant::now() < deadline, "node {id}: a partition stayed leaderless: {text}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        assert!(value(&samples, "wallet_leader_changes_total") >= 3.0, "each replica saw its first leader: {text}");
        assert!(value(&samples, "wallet_commits_total") >= 3.0, "every replica applies committed entries");
        assert!(value(&samples, "wallet_log_fsync_duration_seconds_count") >= 1.0);
        assert!(value(&samples, "wallet_partition_raft_term{partition=\"0\"}") >= 1.0);
        total_results += value(&samples, "wallet_results_total{code=\"ok\"}");
        let stage = |name: &str| value(&samples, &format!("wallet_stage_duration_seconds_count{{stage=\"{name}\"}}"));
        if id == 1 {
            // Node 1's clients sent 6 write batches of one partition each: each timed through its stages
            // there, whether node 1 decided it or forwarded it.
            for name in ["queue_wait", "execute", "total"] {
                assert_eq!(stage(name), 6.0, "stage {name}: {text}");
            }
        } else {
            assert_eq!(stage("total"), 0.0, "no client wrote through node {id}");
        }
        assert!(stage("log_sync") >= 1.0, "every replica syncs its shard's log: {text}");
        commits_timed += stage("commit");
        if id == 1 && !forwarded_partitions.is_empty() {
            // Two requests (accounts, transfers) per partition node 1 does not lead.
            let forwarded = 2.0 * forwarded_partitions.len() as f64;
            assert!(value(&samples, "wallet_forwarded_requests_total{outcome=\"sent\"}") >= forwarded, "{text}");
            assert!(value(&samples, "wallet_forwarded_requests_total{outcome=\"answered\"}") >= forwarded, "{text}");
        }
    }
    // Results are counted where decided, by each partition's leader: once in the whole cluster.
    assert_eq!(total_results, 3.0 * (2.0 + 10.0));
    // Each partition's leader timed the commit of the entries that answered its 2 writes (one entry
    // each, or one for both if a round took them together).
    assert!((3.0..=6.0).contains(&commits_timed), "commit stage observed {commits_timed} times");
}
