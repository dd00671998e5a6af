//! The data directory fixes what replay depends on: partitions, shards, cluster id and the
//! idempotency settings. Opening it with other values is refused with a typed error, `verify` replays
//! with the recorded window (it once used the defaults and diverged from the live node), and a data
//! directory of the previous format is refused with a message naming the formats.

use engine::{verify, EngineError, Node, NodeConfig};
use net::types::{transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

fn config(dir: &std::path::Path, window_ms: u64) -> NodeConfig {
    NodeConfig { pin_cores: false, idempotency_window_ms: window_ms, ..NodeConfig::with_data_dir(dir) }
}

fn now_ms() -> u64 {
    engine::shard::clock_ns() / 1_000_000
}

#[test]
fn reopening_with_another_window_is_refused_and_verify_uses_the_recorded_one() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(config(dir.path(), 1_000)).unwrap();
    let accounts = vec![
        CreateAccount { id: 1, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: 2, ledger: 840, flags: 0, user_data: 0 },
    ];
    assert!(node.create_accounts_blocking(accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    // Ids made 5 s ago: older than the 1 s window, so refused; a replay with the default 24 h window
    // would post them: a divergence.
    let transfer = |n: u128, age_ms: u64| Transfer {
        id: transfer_id_from_parts(now_ms() - age_ms, n),
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 1,
        ledger: 840,
        flags: 0,
        user_data: 0,
    };
    let old: Vec<Transfer> = (1..=100).map(|n| transfer(n, 5_000)).collect();
    let fresh: Vec<Transfer> = (101..=150).map(|n| transfer(n, 0)).collect();
    let results = node.create_transfers_blocking(old).unwrap();
    assert!(results.iter().all(|r| r.code == ResultCode::IdExpired), "ids older than the window are refused");
    let results = node.create_transfers_blocking(fresh).unwrap();
    assert!(results.iter().all(|r| r.code == ResultCode::Ok), "ids inside the window are accepted");
    node.shutdown().unwrap();

    match Node::open(config(dir.path(), 60_000)) {
        Err(EngineError::Manifest { why, .. }) => assert!(why.contains("fixed at creation"), "{why}"),
        other => panic!("a different window must be refused, got {:?}", other.map(|_| ())),
    }
    let report = verify(dir.path()).expect("verify runs");
    assert!(report.is_clean(), "{report:?}");
    let (node, _) = Node::open(config(dir.path(), 1_000)).expect("the recorded settings open it");
    assert_eq!(node.lookup_accounts_blocking(vec![2]).unwrap()[0].unwrap().balance, 50);
}

#[test]
fn a_data_directory_of_the_previous_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("node.toml"),
        "format_version = 1\ncluster_id = \"1\"\npartitions = 1\nshards = 1\nidempotency_window_ms = 86400000\n\
         idempotency_ids_max = 262144\n",
    )
    .unwrap();
    match Node::open(config(dir.path(), 86_400_000)) {
        Err(EngineError::Manifest { why, .. }) => {
            assert!(why.contains("data format 1") && why.contains("format 2"), "{why}")
        }
        other => panic!("a format 1 directory must be refused, got {:?}", other.map(|_| ())),
    }
    assert!(!dir.path().join("shard-000").exists(), "nothing was written into the old directory");
}

#[test]
fn each_data_directory_draws_its_own_id_hash_key() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&a, &b] {
        let (node, _) = Node::open(config(dir.path(), 86_400_000)).unwrap();
        node.shutdown().unwrap();
    }
    let key = |dir: &tempfile::TempDir| engine::node::Manifest::read(dir.path()).unwrap().unwrap().id_hash_key();
    assert!(key(&a).is_some());
    assert_ne!(key(&a), key(&b), "two directories share a key");
    let before = key(&a);
    let (node, _) = Node::open(config(a.path(), 86_400_000)).unwrap();
    node.shutdown().unwrap();
    assert_eq!(key(&a), before, "reopening keeps the key");
}
