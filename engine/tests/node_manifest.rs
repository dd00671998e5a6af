//! The data directory fixes what replay depends on: partitions, shards, cluster id and the
//! idempotency bounds. Opening it with other values is refused with a typed error, and `verify` replays
//! with the recorded bounds (it once used the defaults and diverged from the live node).

use engine::{verify, EngineError, Node, NodeConfig};
use net::types::{transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

fn config(dir: &std::path::Path, ids_max: usize) -> NodeConfig {
    NodeConfig { pin_cores: false, idempotency_ids_max: ids_max, ..NodeConfig::with_data_dir(dir) }
}

#[test]
fn reopening_with_other_idempotency_bounds_is_refused_and_verify_uses_the_recorded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(config(dir.path(), 1024)).unwrap();
    let accounts = vec![
        CreateAccount { id: 1, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: 2, ledger: 840, flags: 0, user_data: 0 },
    ];
    assert!(node.create_accounts_blocking(accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    // All ids carry the same time. With a bound of 1024 the 1025th insert evicts the first id and the
    // watermark reaches that time, so every later id is refused as expired. A replay with the default
    // bound would never evict and would decide them as posted: a divergence.
    let transfers: Vec<Transfer> = (1..=3000u128)
        .map(|n| Transfer {
            id: transfer_id_from_parts(1_700_000_000_000, n),
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 1,
            ledger: 840,
            flags: 0,
            user_data: 0,
        })
        .collect();
    let mut results = Vec::new();
    for chunk in transfers.chunks(1000) {
        results.extend(node.create_transfers_blocking(chunk.to_vec()).unwrap());
    }
    assert!(results[..1025].iter().all(|r| r.code == ResultCode::Ok));
    assert!(results[1025..].iter().all(|r| r.code == ResultCode::IdExpired), "expired ids are refused");
    node.shutdown().unwrap();

    match Node::open(config(dir.path(), 4096)) {
        Err(EngineError::Manifest { why, .. }) => assert!(why.contains("fixed at creation"), "{why}"),
        other => panic!("a different id bound must be refused, got {:?}", other.map(|_| ())),
    }
    let report = verify(dir.path()).expect("verify runs");
    assert!(report.is_clean(), "{report:?}");
    let (node, _) = Node::open(config(dir.path(), 1024)).expect("the recorded bounds open it");
    assert_eq!(node.lookup_accounts_blocking(vec![2]).unwrap()[0].unwrap().balance, 1025);
}
