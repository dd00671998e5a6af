//! Account history, read from the event log itself.
//!
//! Every event that changes an account links back to the previous event that changed it (the
//! `*_prev_seq` fields of a posted transfer; an account's creation ends the chain), and the account row
//! holds the newest one (`last_seq`). So a page of history is a walk down that chain: find the batch
//! that holds a seq (the shard's recent batches in memory, older ones in the store's batch index), read
//! that record from the log and take the event. Nothing per event is written anywhere but the log, so
//! history costs the write path nothing. Rejected attempts change no balance and are not in the chain;
//! they stay in the log (`walletctl wal dump`).

use net::types::{Account, HistoryEntry, HistoryKind, ResultCode, Transfer};
use wal::Wal;

use crate::error::EngineError;
use crate::event::{EventBatchView, EventBody};
use crate::store::Store;

/// One page of an account's history, newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub account: Account,
    pub entries: Vec<HistoryEntry>,
    /// Pass as `from_seq` to read the next (older) page; `None` when the page reached the creation.
    pub next_seq: Option<u64>,
}

/// Reads up to `limit` entries of `account`'s history, from `from_seq` (inclusive; `u64::MAX` = newest)
/// downwards. Only log records up to `durable_index` are read.
#[allow(clippy::too_many_arguments)]
pub fn read_page(
    wal: &Wal,
    store: &Store,
    recent_batches: &[(u64, u64)],
    partition: u32,
    account: &Account,
    from_seq: u64,
    limit: usize,
    durable_index: u64,
) -> Result<HistoryPage, EngineError> {
    walk(
        partition,
        account,
        from_seq,
        limit,
        |seq| {
            let index = locate(store, recent_batches, partition, seq)?;
            // No batch row at or below `seq` once the log was purged: its row was pruned with its record.
            if index.map_or(wal.first_index() > 1, |index| index < wal.first_index()) {
                return Err(EngineError::HistoryCompacted { account_id: account.id, seq });
            }
            if let Some(index) = index.filter(|&index| index > durable_index) {
                return Err(EngineError::Log(format!(
                    "history needs log index {index}, durable only to {durable_index}"
                )));
            }
            Ok(index)
        },
        |index| read_record(wal, index),
    )
}

/// Walks `account`'s chain of events from `from_seq` (`u64::MAX` = newest) down, at most `limit`
/// entries: `locate(seq)` names the log index of the batch holding `seq` (None: no such batch),
/// `read(index)` returns that batch's bytes. Consecutive events in one batch read it once.
pub fn walk(
    partition: u32,
    account: &Account,
    from_seq: u64,
    limit: usize,
    mut locate: impl FnMut(u64) -> Result<Option<u64>, EngineError>,
    mut read: impl FnMut(u64) -> Result<Vec<u8>, EngineError>,
) -> Result<HistoryPage, EngineError> {
    // "Entries with seq <= from_seq": above the newest event that is the newest (u64::MAX included),
    // below the creation nothing. A seq in between must be one of the account's own events (a cursor
    // from an earlier page): finding the next one below another seq would walk the chain from the top.
    let mut seq = from_seq.min(account.last_seq);
    if seq < account.created_seq {
        seq = 0;
    }
    let mut record: Option<(u64, Vec<u8>)> = None;
    let mut entries = Vec::with_capacity(limit.min(1024));
    while seq != 0 && entries.len() < limit {
        let index = match locate(seq) {
            Ok(Some(index)) => index,
            Ok(None) => return Err(EngineError::InvalidCursor { account_id: account.id, seq }),
            // The rest went into a snapshot: hand out what was found, the next page will say so.
            Err(EngineError::HistoryCompacted { .. }) if !entries.is_empty() => break,
            Err(error) => return Err(error),
        };
        if record.as_ref().map(|(cached, _)| *cached) != Some(index) {
            record = Some((index, read(index)?));
        }
        let (_, payload) = record.as_ref().expect("just filled");
        let view = EventBatchView::new(payload).map_err(|e| EngineError::CorruptLog {
            shard: 0,
            index,
            why: e.to_string(),
        })?;
        if seq < view.first_seq() || seq > view.last_seq() || view.partition() != partition {
            return Err(EngineError::CorruptLog {
                shard: 0,
                index,
                why: format!("batch index points seq {seq} at the wrong record"),
            });
        }
        let event = view.event((seq - view.first_seq()) as u32);
        let (entry, previous) =
            entry_for(account.id, &event).ok_or(EngineError::InvalidCursor { account_id: account.id, seq })?;
        entries.push(entry);
        seq = previous;
    }
    Ok(HistoryPage { account: *account, entries, next_seq: (seq != 0).then_some(seq) })
}

/// The history entry an event makes for `account_id`, and the seq of that account's previous event;
/// `None` when the event did not change that account.
fn entry_for(account_id: u64, event: &crate::event::Event) -> Option<(HistoryEntry, u64)> {
    let entry = |kind, transfer, balance_after| HistoryEntry {
        seq: event.seq,
        timestamp_ns: event.timestamp_ns,
        kind,
        code: ResultCode::Ok,
        transfer,
        balance_after,
    };
    match event.body {
        EventBody::AccountCreated { account } if account.id == account_id => {
            Some((entry(HistoryKind::AccountCreated, Transfer::default(), 0), 0))
        }
        EventBody::TransferPosted { transfer, debit_balance_after, debit_prev_seq, .. }
            if transfer.debit_account_id == account_id =>
        {
            Some((entry(HistoryKind::TransferPosted, transfer, debit_balance_after), debit_prev_seq))
        }
        EventBody::TransferPosted { transfer, credit_balance_after, credit_prev_seq, .. }
            if transfer.credit_account_id == account_id =>
        {
            Some((entry(HistoryKind::TransferPosted, transfer, credit_balance_after), credit_prev_seq))
        }
        _ => None,
    }
}

/// The event at `seq` of `partition`, read from the log (`None` if no batch holds it; `Err(EventPurged)`
/// when the log no longer holds it).
pub fn event_at(
    wal: &Wal,
    store: &Store,
    recent_batches: &[(u64, u64)],
    partition: u32,
    seq: u64,
) -> Result<Option<crate::event::Event>, EngineError> {
    let located = locate(store, recent_batches, partition, seq)?;
    if located.map_or(wal.first_index() > 1, |index| index < wal.first_index()) {
        return Err(EngineError::EventPurged { partition, seq });
    }
    let Some(index) = located else { return Ok(None) };
    let bytes = read_record(wal, index)?;
    let view = EventBatchView::new(&bytes).map_err(|e| EngineError::Log(format!("log record {index}: {e}")))?;
    if view.partition() != partition || seq < view.first_seq() || seq > view.last_seq() {
        return Ok(None);
    }
    Ok(Some(view.event((seq - view.first_seq()) as u32)))
}

/// The log index of the batch holding `seq`: recent batches first, then the store's batch index.
fn locate(store: &Store, recent_batches: &[(u64, u64)], partition: u32, seq: u64) -> Result<Option<u64>, EngineError> {
    let after = recent_batches.partition_point(|&(first_seq, _)| first_seq <= seq);
    if after > 0 {
        return Ok(Some(recent_batches[after - 1].1));
    }
    Ok(store.batch_containing(partition, seq)?.map(|(_, index)| index))
}

fn read_record(wal: &Wal, index: u64) -> Result<Vec<u8>, EngineError> {
    let mut reader = wal.reader(index)?;
    match reader.next() {
        Some(Ok(record)) if record.index == index => Ok(record.payload.to_vec()),
        Some(Ok(record)) => Err(EngineError::Log(format!("asked the log for record {index}, got {}", record.index))),
        Some(Err(error)) => Err(error.into()),
        None => Err(EngineError::Log(format!("log record {index} is missing"))),
    }
}
