//! Log retention on a real single node (real RocksDB, real segment files, id-index runs on disk): the
//! log is purged to `log_retention_bytes` behind a base while transfers keep coming, and everything
//! that reads the past still tells the truth about what it holds:
//! - disk stays bounded: the segment count never exceeds retention + a few, exactly one base remains;
//! - history walks back to the retention's edge and then answers `HistoryCompacted`; a lookup of a
//!   transfer whose event was purged says so; a retry of that transfer is still answered as a replay
//!   with its original seq, and a conflicting reuse of its id is still refused;
//! - restart resumes from the store with the purged log; `verify` replays from the base (including its
//!   id runs: conflicts decided after the base are re-decided from them) and finds no drift;
//!   `walletctl state` reproduces the newest state and refuses one older than the base; neither changes
//!   a byte of the data directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use engine::error::EngineError;
use engine::past::{state_at, Until};
use engine::{Node, NodeConfig};
use net::protocol::TransferLookup;
use net::types::{transfer_id_from_parts, CreateAccount, ItemResult, ResultCode, Transfer, ACCOUNT_FLAG_EXTERNAL};

const SEGMENT_BYTES: u64 = 8 << 20;
/// One sealed segment kept for history.
const RETENTION_BYTES: u64 = SEGMENT_BYTES;
const BATCH: u64 = 8_000;

fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        pin_cores: false,
        wal_segment_bytes: SEGMENT_BYTES,
        log_retention_bytes: RETENTION_BYTES,
        checkpoint_interval_ms: 20,
        // The smallest in-memory id table: most ids live in run files, which the base must carry.
        idempotency_ids_max: 1024,
        ..NodeConfig::with_data_dir(dir)
    }
}

fn transfer(id_ms: u64, n: u64) -> Transfer {
    Transfer {
        id: transfer_id_from_parts(id_ms, n as u128),
        debit_account_id: 1,
        credit_account_id: 2 + n % 3,
        amount: 1 + n % 5,
        ledger: 840,
        flags: 0,
        user_data: n as u128,
    }
}

/// A new node with account 1 (external, the source of every transfer) and ordinary accounts 2 to 4.
fn open_with_accounts(config: NodeConfig) -> Node {
    let (node, _) = Node::open(config).unwrap();
    let accounts: Vec<CreateAccount> = (1..=4)
        .map(|id| CreateAccount {
            id,
            ledger: 840,
            flags: if id == 1 { ACCOUNT_FLAG_EXTERNAL } else { 0 },
            user_data: 0,
        })
        .collect();
    assert!(node.create_accounts_blocking(accounts).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    node
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("shard-000/wal"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"))
        .count()
}

fn bases(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("shard-000"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with("base"))
        .collect();
    names.sort();
    names
}

/// Every file under `dir`: its size and content hash (folders by name).
fn fingerprint(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if path.is_dir() {
                files.insert(name, (0, 0));
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(name, (bytes.len() as u64, xxhash_rust::xxh3::xxh3_64(&bytes)));
            }
        }
    }
    files
}

/// Waits (bounded) until the shard's retention has purged past `index` behind a base.
fn wait_for_purge(node: &Node, beyond_index: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A checkpoint per poll: bases are asked for right after one.
        node.checkpoint_blocking().unwrap();
        let status = &node.status_blocking().unwrap()[0];
        if status.log_first_index > beyond_index && status.base_index > 0 {
            return (status.log_first_index, status.base_index);
        }
        assert!(Instant::now() < deadline, "retention did not purge past {beyond_index}: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_log_is_purged_behind_a_base_and_history_verify_and_past_states_say_what_they_hold() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_with_accounts(config(dir.path()));
    let t0 = engine::shard::clock_ns() / 1_000_000;
    let mut first: Vec<(Transfer, ItemResult)> = Vec::new();
    let mut next = 0u64;
    let mut send = |node: &Node, count: u64| -> Vec<(Transfer, ItemResult)> {
        let mut sent = Vec::new();
        for _ in 0..count / BATCH {
            let batch: Vec<Transfer> = (next..next + BATCH).map(|n| transfer(t0 + n / 1000, n)).collect();
            next += BATCH;
            let results = node.create_transfers_blocking(batch.clone()).unwrap();
            assert!(results.iter().all(|r| r.code == ResultCode::Ok && !r.is_replayed()));
            sent.extend(batch.into_iter().zip(results));
        }
        sent
    };
    first.extend(send(&node, BATCH * 4));
    // About 70,000 events fill an 8 MiB segment: this writes several segments' worth, purging as it goes.
    let mut max_segments = 0;
    for _ in 0..8 {
        send(&node, BATCH * 6);
        node.checkpoint_blocking().unwrap();
        max_segments = max_segments.max(segments(dir.path()));
    }
    let status = node.status_blocking().unwrap()[0].clone();
    let (log_first_index, base_index) = wait_for_purge(&node, first.len() as u64 / BATCH + 1);
    assert!(base_index >= log_first_index - 1, "nothing after the base was purged: {status:?}");
    // Retention keeps one sealed segment; the active one, one waiting for a base and one being deleted
    // may exist beside it.
    assert!(max_segments <= 4, "{max_segments} segments on disk with one retained");
    assert!(segments(dir.path()) <= 4);
    assert_eq!(bases(dir.path()).len(), 1, "one base: {:?}", bases(dir.path()));

    // History reaches back to the retention's edge, then says the rest is gone.
    let mut from = None;
    let mut entries = 0usize;
    let compacted = loop {
        match node.history_blocking(3, from, 1000) {
            Ok(page) => {
                entries += page.entries.len();
                match page.next_seq {
                    Some(seq) => from = Some(seq),
                    None => panic!("history reached the account's creation though its start was purged"),
                }
            }
            Err(error) => break error,
        }
    };
    assert!(matches!(compacted, EngineError::HistoryCompacted { account_id: 3, .. }), "{compacted:?}");
    assert_eq!(compacted.protocol_error().0, net::protocol::ErrorCode::HistoryCompacted);
    assert!(entries > 0, "the retained log still serves recent history");

    // The first transfers' events are gone, their ids are not: a lookup answers the outcome, seq and
    // time without the fields (as a cluster replica past its snapshot does), a recent one with them.
    let (early, early_result) = first[0];
    let (recent, recent_result) = send(&node, BATCH)[0];
    let found = node.lookup_transfers_blocking(vec![early.id, recent.id]).unwrap();
    match found[0] {
        Some(TransferLookup::FoundWithoutFields { id, code, seq, timestamp_ns }) => {
            assert_eq!((id, code, seq), (early.id, early_result.code, early_result.seq));
            assert!(timestamp_ns > 0);
        }
        other => panic!("a purged transfer looked up as {other:?}"),
    }
    assert_eq!(
        found[1].map(|item| match item {
            TransferLookup::Found { transfer, code, seq, .. } => (Some(transfer), code, seq),
            other => (None, net::types::ResultCode::Ok, other.id() as u64),
        }),
        Some((Some(recent), recent_result.code, recent_result.seq))
    );
    for chunk in first.chunks(BATCH as usize) {
        let retried = node.create_transfers_blocking(chunk.iter().map(|(t, _)| *t).collect()).unwrap();
        for ((transfer, original), result) in chunk.iter().zip(&retried) {
            assert!(result.is_replayed(), "{:#x} not a replay: {result:?}", transfer.id);
            assert_eq!((result.code, result.seq), (original.code, original.seq));
        }
    }
    // Conflicting reuses of early ids: rejected events after the base that only its runs can re-decide.
    let conflicts: Vec<Transfer> =
        first.iter().step_by(97).map(|(t, _)| Transfer { amount: t.amount + 1, ..*t }).collect();
    let results = node.create_transfers_blocking(conflicts).unwrap();
    assert!(results.iter().all(|r| r.code == ResultCode::ExistsWithDifferentFields), "{results:?}");
    send(&node, BATCH);

    let live = node.status_blocking().unwrap()[0].clone();
    let live_digest = live.partitions[0].digest;
    let balances = node.lookup_accounts_blocking(vec![1, 2, 3, 4]).unwrap();
    node.shutdown().unwrap();

    // Audits replay from the base and change nothing.
    let before = fingerprint(dir.path());
    let report = engine::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let shard = &report.shards[0];
    assert!(shard.base_index > 0 && shard.log_first_index > 1, "{shard:?}");
    assert!(shard.records_replayed > 0);
    let newest = state_at(dir.path(), 0, Until::END, Some(3)).unwrap();
    assert_eq!(newest.digest, live_digest, "the replay from the base reaches the live state");
    assert_eq!(newest.account, balances[2]);
    assert!(newest.base_seq > 0);
    let older = state_at(dir.path(), 0, Until { seq_max: newest.base_seq - 1, timestamp_ns_max: u64::MAX }, None);
    assert!(matches!(older, Err(EngineError::BeforeSnapshot { .. })), "{older:?}");
    assert_eq!(before, fingerprint(dir.path()), "verify and state changed the data directory");

    // Restart resumes with the purged log, and keeps purging.
    let (node, recovery) = Node::open(config(dir.path())).unwrap();
    assert!(recovery.shards[0].log_first_index > 1);
    assert_eq!(node.lookup_accounts_blocking(vec![1, 2, 3, 4]).unwrap(), balances);
    assert_eq!(node.status_blocking().unwrap()[0].partitions[0].digest, live_digest);
    let beyond = node.status_blocking().unwrap()[0].log_last_index;
    send(&node, BATCH * 20);
    wait_for_purge(&node, beyond);
    assert_eq!(bases(dir.path()).len(), 1, "the older base was removed: {:?}", bases(dir.path()));
    // The first node's deletions were reported (and counted) before this one's purge could start.
    use prometheus::Encoder;
    let mut text = Vec::new();
    prometheus::TextEncoder::new().encode(&engine::metrics::registry().gather(), &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    let purged: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("wallet_log_segments_purged_total "))
        .and_then(|value| value.parse().ok())
        .expect("the purge counter is exported");
    assert!(purged >= 1.0, "{purged} segments counted as purged");
    node.shutdown().unwrap();
    let report = engine::verify(dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// With an archive configured, every purged segment is in it before it leaves the log: the archive
/// reads as a log from index 1 up to where the live log starts, so nothing ever written is lost; an
/// archive of another node is refused at start.
#[test]
fn purged_segments_are_archived_first_and_the_archive_reads_as_the_log_before_the_live_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let archive = dir.path().join("archive");
    let archiving = NodeConfig { log_archive_dir: Some(archive.clone()), ..config(&data) };
    let node = open_with_accounts(archiving.clone());
    let t0 = engine::shard::clock_ns() / 1_000_000;
    for round in 0..40u64 {
        let batch: Vec<Transfer> = (round * BATCH..(round + 1) * BATCH).map(|n| transfer(t0, n)).collect();
        assert!(node.create_transfers_blocking(batch).unwrap().iter().all(|r| r.code == ResultCode::Ok));
    }
    let (log_first_index, _) = wait_for_purge(&node, 2);
    // The deletion that follows the detach may still run: wait for the archive to catch up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let archived_last = loop {
        node.checkpoint_blocking().unwrap();
        let live_first = node.status_blocking().unwrap()[0].log_first_index;
        let on_disk_first = std::fs::read_dir(data.join("shard-000/wal"))
            .unwrap()
            .filter_map(|e| {
                e.unwrap().file_name().to_string_lossy().strip_suffix(".wal").map(|n| n.parse::<u64>().unwrap())
            })
            .min()
            .unwrap();
        if on_disk_first == live_first {
            break live_first - 1;
        }
        assert!(Instant::now() < deadline, "purged segments were not freed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(archived_last + 1 >= log_first_index);
    node.shutdown().unwrap();
    let (archived, _) =
        wal::Wal::open_read_only(&archive.join("shard-000"), engine::shard::wal_options(&archiving)).unwrap();
    assert_eq!(archived.first_index(), 1, "the archive starts where the log began");
    assert_eq!(archived.last_index(), archived_last, "the archive ends where the live log starts");
    let records = archived.reader(1).unwrap().count() as u64;
    assert_eq!(records, archived_last, "every archived record reads back");
    drop(archived);
    assert!(engine::verify(&data).unwrap().is_clean());

    // Another node's archive (here: another cluster id) is refused, not mixed into.
    let other = tempfile::tempdir().unwrap();
    let foreign = NodeConfig { cluster_id: 99, log_archive_dir: Some(archive), ..config(other.path()) };
    let refused = Node::open(foreign).err().expect("a foreign archive is refused");
    assert!(refused.to_string().contains("archive"), "{refused}");
}
