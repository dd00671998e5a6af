//! The id table is persisted as one chunk of entries per partition per checkpoint, and only the last
//! `ids_live` entries are live (eviction is FIFO). Across checkpoints that evict part of a chunk and
//! whole chunks, and a restart, every live id must still be recognised as a retry, and every evicted
//! one must still be refused as expired.

use engine::{Node, NodeConfig};
use net::types::{transfer_id_from_parts, CreateAccount, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

const IDS_MAX: usize = 1024;
const ROUND: u64 = 600;

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig { pin_cores: false, idempotency_ids_max: IDS_MAX, ..NodeConfig::with_data_dir(dir) }
}

/// Transfer n carries id time base + n ms, so eviction raises the watermark past exactly the evicted.
fn transfer(n: u64) -> Transfer {
    Transfer {
        id: transfer_id_from_parts(1_700_000_000_000 + n, n as u128),
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 1,
        ledger: 840,
        flags: 0,
        user_data: 0,
    }
}

fn submit(node: &Node, numbers: std::ops::Range<u64>) -> Vec<net::types::ItemResult> {
    node.create_transfers_blocking(numbers.map(transfer).collect()).unwrap()
}

#[test]
fn live_ids_replay_and_evicted_ids_stay_expired_across_checkpoints_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(config(dir.path())).unwrap();
    let accounts = vec![
        CreateAccount { id: 1, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: 2, ledger: 840, flags: 0, user_data: 0 },
    ];
    assert!(node.create_accounts_blocking(accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    // Three rounds with a checkpoint after each: the second evicts part of the first chunk, the third
    // evicts the rest of it (the store drops it) and part of the second.
    for round in 0..3 {
        let results = submit(&node, round * ROUND + 1..(round + 1) * ROUND + 1);
        assert!(results.iter().all(|r| r.code == ResultCode::Ok && !r.is_replayed()));
        node.checkpoint_blocking().unwrap();
    }
    let total = 3 * ROUND;
    let digest_before: Vec<u128> = node.status_blocking().unwrap()[0].partitions.iter().map(|p| p.digest).collect();
    node.shutdown().unwrap();

    let (node, recovery) = Node::open(config(dir.path())).unwrap();
    assert_eq!(recovery.shards[0].records_replayed, 0, "the state came from the checkpoint alone");
    let digest_after: Vec<u128> = node.status_blocking().unwrap()[0].partitions.iter().map(|p| p.digest).collect();
    assert_eq!(digest_before, digest_after, "the restored id table equals the live one");
    let first_live = total - IDS_MAX as u64 + 1;
    let live = submit(&node, first_live..total + 1);
    assert!(live.iter().all(|r| r.code == ResultCode::Ok && r.is_replayed()), "a live id was forgotten");
    let evicted = submit(&node, 1..first_live);
    assert!(evicted.iter().all(|r| r.code == ResultCode::IdExpired), "an evicted id was accepted again");
    assert_eq!(node.lookup_accounts_blocking(vec![2]).unwrap()[0].unwrap().balance, total as i64);
}
