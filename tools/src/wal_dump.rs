//! `walletctl wal dump`: a stopped node's event log, record by record and event by event. For a cluster
//! node, each replica shard's one log: every record (entries of every partition, hard states, installs)
//! in log order, and the events of every entry that carries a batch. Opened read-only, changes nothing.

use std::path::Path;

use engine::event::{EventBatchView, EventBody};
use engine::node::{DataDirLock, Manifest};
use engine::replica::node::ClusterManifest;
use engine::replica::shared_log;
use engine::shard::{shard_dir, RECORD_KIND_EVENTS};
use engine::NodeConfig;
use serde_json::{json, Value};
use wal::{Wal, WalOptions};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{0}")]
    Engine(#[from] engine::EngineError),
    #[error("{0}")]
    Wal(#[from] wal::WalError),
    #[error("{0} is not a node data directory (no node.toml or cluster-node.toml)")]
    NotADataDir(String),
    #[error("shard {shard} does not exist (the node has {shards})")]
    NoSuchShard { shard: u32, shards: u32 },
}

pub struct DumpOptions {
    pub shard: Option<u32>,
    pub from_index: u64,
    pub records_max: u64,
    pub json: bool,
}

/// Writes the dump through `emit`, one line per record and per event.
pub fn dump(data_dir: &Path, options: &DumpOptions, mut emit: impl FnMut(String)) -> Result<(), DumpError> {
    if let Some(manifest) = ClusterManifest::read(data_dir)? {
        return dump_cluster(data_dir, manifest.shards, options, &mut emit);
    }
    let manifest = Manifest::read(data_dir)?.ok_or_else(|| DumpError::NotADataDir(data_dir.display().to_string()))?;
    let _lock = DataDirLock::acquire_for_audit(data_dir)?;
    let logs = |shard| Some(shard_dir(data_dir, shard).join("wal"));
    for_each_record(manifest.shards, options, logs, ("shard", "records"), &mut emit, |shard, record, emit| {
        emit_record(shard, record.index, record.term, record.kind, record.payload, options.json, emit)
    })
}

/// Opens the chosen shards' logs read-only (`log_dir` names a shard's, or `None` when it has none) and
/// hands every record from `options.from_index` on (at most `records_max` per shard) to `per_record`,
/// after a header line per shard in text mode (`shard N: S segments, records A..=B`).
fn for_each_record<E: FnMut(String)>(
    shards: u32,
    options: &DumpOptions,
    log_dir: impl Fn(u32) -> Option<std::path::PathBuf>,
    (shard_word, index_word): (&str, &str),
    emit: &mut E,
    mut per_record: impl FnMut(u32, wal::Record<'_>, &mut E),
) -> Result<(), DumpError> {
    let chosen: Vec<u32> = match options.shard {
        Some(shard) if shard >= shards => return Err(DumpError::NoSuchShard { shard, shards }),
        Some(shard) => vec![shard],
        None => (0..shards).collect(),
    };
    let segment_bytes = NodeConfig::default().wal_segment_bytes;
    for shard in chosen {
        let Some(dir) = log_dir(shard) else { continue };
        let (log, report) = Wal::open_read_only(&dir, WalOptions { segment_bytes, ..WalOptions::default() })?;
        if !options.json {
            let (first, last, segments) = (log.first_index(), log.last_index(), report.segments);
            emit(format!("{shard_word} {shard}: {segments} segments, {index_word} {first}..={last}"));
        }
        if log.last_index() < log.first_index() {
            continue;
        }
        let from = options.from_index.max(log.first_index());
        for record in log.reader(from)?.take(options.records_max as usize) {
            per_record(shard, record?, emit);
        }
    }
    Ok(())
}

fn dump_cluster(
    data_dir: &Path,
    shards: u32,
    options: &DumpOptions,
    emit: &mut impl FnMut(String),
) -> Result<(), DumpError> {
    let _lock = DataDirLock::acquire_for_audit(data_dir)?;
    let logs = |shard| Some(shared_log::shard_dir(data_dir, shard).join(shared_log::LOG_DIR)).filter(|d| d.exists());
    for_each_record(shards, options, logs, ("replica shard", "positions"), emit, |shard, record, emit| {
        let what = shared_log::describe_record(record.kind, record.payload);
        let batch = shared_log::entry_record_data(record.kind, record.payload)
            .map(|(partition, index, term, data)| (partition, index, term, EventBatchView::new(data)));
        match (options.json, batch) {
            (true, Some((partition, index, term, Ok(view)))) => {
                let events: Vec<Value> = view.iter().map(|e| event_json(&e)).collect();
                emit(
                    json!({"shard": shard, "position": record.index, "partition": partition, "index": index,
                        "term": term, "record": what, "first_seq": view.first_seq(), "events": events})
                    .to_string(),
                );
            }
            (true, _) => emit(json!({"shard": shard, "position": record.index, "record": what}).to_string()),
            (false, batch) => {
                emit(format!("position {}: {what}", record.index));
                match batch {
                    Some((_, _, _, Ok(view))) => {
                        for event in view.iter() {
                            emit(format!("  {}", event_text(&event)));
                        }
                    }
                    Some((_, _, _, Err(error))) => emit(format!("  UNDECODABLE event batch: {error}")),
                    None => {}
                }
            }
        }
    })
}

fn emit_record(shard: u32, index: u64, term: u64, kind: u8, payload: &[u8], json: bool, emit: &mut impl FnMut(String)) {
    let batch = (kind == RECORD_KIND_EVENTS).then(|| EventBatchView::new(payload));
    match batch {
        Some(Ok(view)) => {
            if json {
                let events: Vec<Value> = view.iter().map(|e| event_json(&e)).collect();
                emit(
                    json!({"shard": shard, "index": index, "term": term, "kind": kind, "partition": view.partition(),
                    "first_seq": view.first_seq(), "events": events})
                    .to_string(),
                );
            } else {
                emit(format!(
                    "record {index} term {term} kind {kind}: partition {} seq {}..={} ({} events, {} bytes)",
                    view.partition(),
                    view.first_seq(),
                    view.last_seq(),
                    view.event_count(),
                    payload.len()
                ));
                for event in view.iter() {
                    emit(format!("  {}", event_text(&event)));
                }
            }
        }
        Some(Err(error)) => emit(format!("record {index} term {term} kind {kind}: UNDECODABLE event batch: {error}")),
        None => emit(format!("record {index} term {term} kind {kind}: {} bytes", payload.len())),
    }
}

fn event_text(event: &engine::event::Event) -> String {
    let head = format!("seq {} t {}", event.seq, crate::output::utc_time(event.timestamp_ns));
    match event.body {
        EventBody::AccountCreated { account } => {
            format!("{head} account_created id {} ledger {} flags {:#x}", account.id, account.ledger, account.flags)
        }
        EventBody::AccountRejected { account, code } => {
            format!("{head} account_rejected id {} {}", account.id, code.name())
        }
        EventBody::TransferPosted { transfer, debit_balance_after, credit_balance_after, .. } => format!(
            "{head} transfer_posted {:032x} {} -> {} amount {} ledger {} (balances after {} / {})",
            transfer.id,
            transfer.debit_account_id,
            transfer.credit_account_id,
            transfer.amount,
            transfer.ledger,
            debit_balance_after,
            credit_balance_after
        ),
        EventBody::TransferRejected { transfer, code } => format!(
            "{head} transfer_rejected {:032x} {} -> {} amount {} ledger {}: {}",
            transfer.id,
            transfer.debit_account_id,
            transfer.credit_account_id,
            transfer.amount,
            transfer.ledger,
            code.name()
        ),
    }
}

fn event_json(event: &engine::event::Event) -> Value {
    let base = json!({"seq": event.seq, "timestamp_ns": event.timestamp_ns, "code": event.code().name()});
    let body = match event.body {
        EventBody::AccountCreated { account } | EventBody::AccountRejected { account, .. } => {
            json!({"account_id": account.id, "ledger": account.ledger, "flags": account.flags})
        }
        EventBody::TransferPosted { transfer, debit_balance_after, credit_balance_after, .. } => json!({
            "transfer_id": format!("{:032x}", transfer.id), "debit_account_id": transfer.debit_account_id,
            "credit_account_id": transfer.credit_account_id, "amount": transfer.amount, "ledger": transfer.ledger,
            "debit_balance_after": debit_balance_after, "credit_balance_after": credit_balance_after}),
        EventBody::TransferRejected { transfer, .. } => json!({
            "transfer_id": format!("{:032x}", transfer.id), "debit_account_id": transfer.debit_account_id,
            "credit_account_id": transfer.credit_account_id, "amount": transfer.amount, "ledger": transfer.ledger}),
    };
    let kind = format!("{:?}", event.kind());
    let mut merged = base;
    merged["kind"] = Value::String(kind);
    if let (Some(target), Some(source)) = (merged.as_object_mut(), body.as_object()) {
        target.extend(source.clone());
    }
    merged
}
