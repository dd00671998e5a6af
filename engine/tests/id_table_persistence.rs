//! The id table at full stretch on a real node (RocksDB checkpoints, id-index run files): far more
//! transfers than the in-memory capacity, a batch delayed until 10x that capacity of newer ids has
//! passed (accepted, not `id_expired`), checkpoints that drop chunks whose ids are in written runs, and
//! a restart after which every id in the window is still answered as a replay with its original seq.

use engine::{Node, NodeConfig};
use net::types::{transfer_id_from_parts, CreateAccount, ItemResult, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

/// The smallest in-memory capacity a node accepts.
const IDS_MAX: usize = 1024;
const BATCH: u64 = 500;

fn config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig { pin_cores: false, idempotency_ids_max: IDS_MAX, ..NodeConfig::with_data_dir(dir) }
}

fn now_ms() -> u64 {
    engine::shard::clock_ns() / 1_000_000
}

fn transfer(id_ms: u64, n: u64) -> Transfer {
    Transfer {
        id: transfer_id_from_parts(id_ms, n as u128),
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 1,
        ledger: 840,
        flags: 0,
        user_data: n as u128,
    }
}

fn run_files(dir: &std::path::Path) -> usize {
    let ids = dir.join("shard-000/ids/p00000");
    std::fs::read_dir(ids).map(|d| d.filter(|e| e.is_ok()).count()).unwrap_or(0)
}

#[test]
fn a_delayed_batch_is_accepted_and_every_id_replays_across_checkpoints_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = Node::open(config(dir.path())).unwrap();
    let accounts = vec![
        CreateAccount { id: 1, ledger: 840, flags: ACCOUNT_FLAG_EXTERNAL, user_data: 0 },
        CreateAccount { id: 2, ledger: 840, flags: 0, user_data: 0 },
    ];
    assert!(node.create_accounts_blocking(accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    let t0 = now_ms();
    // One client's batch, made now and held back.
    let delayed: Vec<Transfer> = (0..BATCH).map(|n| transfer(t0, 1_000_000 + n)).collect();
    // 10x the in-memory capacity of newer ids, in batches, with checkpoints in between.
    let newer_total = 10 * IDS_MAX as u64 + BATCH;
    let mut sent: Vec<(Transfer, ItemResult)> = Vec::new();
    for (round, start) in (0..newer_total).step_by(BATCH as usize).enumerate() {
        let batch: Vec<Transfer> = (start..start + BATCH).map(|n| transfer(t0 + 1 + n / 64, n)).collect();
        let results = node.create_transfers_blocking(batch.clone()).unwrap();
        assert!(results.iter().all(|r| r.code == ResultCode::Ok && !r.is_replayed()), "round {round}");
        sent.extend(batch.into_iter().zip(results));
        if round % 4 == 3 {
            node.checkpoint_blocking().unwrap();
        }
    }
    let results = node.create_transfers_blocking(delayed.clone()).unwrap();
    assert!(
        results.iter().all(|r| r.code == ResultCode::Ok),
        "the delayed batch was refused: {:?}",
        results.iter().find(|r| r.code != ResultCode::Ok)
    );
    sent.extend(delayed.into_iter().zip(results));
    assert!(run_files(dir.path()) >= 8, "older ids moved to run files ({} found)", run_files(dir.path()));
    // Retries before the restart: answered from memory and from runs alike.
    let retry = |node: &Node, sent: &[(Transfer, ItemResult)]| {
        for chunk in sent.chunks(BATCH as usize) {
            let transfers: Vec<Transfer> = chunk.iter().map(|(t, _)| *t).collect();
            let results = node.create_transfers_blocking(transfers).unwrap();
            for ((t, original), r) in chunk.iter().zip(&results) {
                assert!(r.is_replayed(), "transfer {:#x} was not answered as a replay: {r:?}", t.id);
                assert_eq!((r.code, r.seq), (original.code, original.seq), "transfer {:#x}", t.id);
            }
        }
    };
    retry(&node, &sent);
    // A different amount under a remembered id, however old, is a conflict, not a new transfer.
    let conflict = Transfer { amount: 2, ..sent[0].0 };
    assert_eq!(node.create_transfers_blocking(vec![conflict]).unwrap()[0].code, ResultCode::ExistsWithDifferentFields);
    let digest_before: Vec<u128> = node.status_blocking().unwrap()[0].partitions.iter().map(|p| p.digest).collect();
    node.shutdown().unwrap();

    let (node, recovery) = Node::open(config(dir.path())).unwrap();
    assert_eq!(recovery.shards[0].records_replayed, 0, "the state came from the checkpoint and run files");
    let digest_after: Vec<u128> = node.status_blocking().unwrap()[0].partitions.iter().map(|p| p.digest).collect();
    assert_eq!(digest_before, digest_after, "the restored id table equals the live one");
    retry(&node, &sent);
    // An id older than the window is refused, not applied.
    let ancient = transfer(now_ms() - 25 * 3_600_000, 7);
    assert_eq!(node.create_transfers_blocking(vec![ancient]).unwrap()[0].code, ResultCode::IdExpired);
    assert_eq!(node.lookup_accounts_blocking(vec![2]).unwrap()[0].unwrap().balance, sent.len() as i64);
    node.shutdown().unwrap();
    let report = engine::verify(dir.path()).expect("verify runs");
    assert!(report.is_clean(), "{report:?}");
}
