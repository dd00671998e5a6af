//! How walletctl shows things: amounts in their currency's minor units ("1.00 USD"), times in UTC,
//! result codes by name. Never floats.

use net::currency::CurrencyRegistry;
use net::types::{Account, HistoryEntry, HistoryKind, ItemResult, ResultCode, Transfer};
use serde_json::{json, Value};

/// Exit codes scripts can rely on.
pub mod exit {
    /// Every item succeeded.
    pub const OK: i32 = 0;
    /// Some item was rejected, not found, or verification found drift.
    pub const REJECTED: i32 = 1;
    /// The command line was wrong (clap uses 2 as well).
    pub const USAGE: i32 = 2;
    /// The server could not be reached or answered with an error.
    pub const UNAVAILABLE: i32 = 3;
    /// A local data directory could not be read (in use, corrupt, missing).
    pub const LOCAL: i32 = 4;
}

/// `minor` formatted in the ledger's currency, or raw minor units with the ledger number.
pub fn amount(registry: &CurrencyRegistry, ledger: u32, minor: i64) -> String {
    match registry.by_ledger(ledger) {
        Some(currency) => format!("{} {}", currency.format_balance(minor), currency.name),
        None => format!("{minor} (ledger {ledger}, minor units)"),
    }
}

pub fn ledger_name(registry: &CurrencyRegistry, ledger: u32) -> String {
    registry.by_ledger(ledger).map_or_else(|| ledger.to_string(), |c| c.name.clone())
}

/// Nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn utc_time(timestamp_ns: u64) -> String {
    let seconds = timestamp_ns / 1_000_000_000;
    let millis = (timestamp_ns / 1_000_000) % 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = engine::logging::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// A looked-up transfer (`walletctl transfer show`) as one line of text.
pub fn transfer_lookup_text(
    registry: &CurrencyRegistry,
    transfer: &Transfer,
    code: ResultCode,
    seq: u64,
    timestamp_ns: u64,
) -> String {
    format!(
        "transfer {:032x}: {} from {} to {}: {} at seq {} ({}), user_data {}",
        transfer.id,
        amount(registry, transfer.ledger, transfer.amount.min(i64::MAX as u64) as i64),
        transfer.debit_account_id,
        transfer.credit_account_id,
        code.name(),
        seq,
        utc_time(timestamp_ns),
        transfer.user_data
    )
}

pub fn transfer_lookup_json(
    registry: &CurrencyRegistry,
    transfer: &Transfer,
    code: ResultCode,
    seq: u64,
    timestamp_ns: u64,
) -> Value {
    json!({
        "transfer_id": format!("{:032x}", transfer.id),
        "from": transfer.debit_account_id,
        "to": transfer.credit_account_id,
        "amount": amount(registry, transfer.ledger, transfer.amount.min(i64::MAX as u64) as i64),
        "amount_minor": transfer.amount.to_string(),
        "ledger": ledger_name(registry, transfer.ledger),
        "flags": transfer.flags,
        "user_data": transfer.user_data.to_string(),
        "result": code.name(),
        "seq": seq,
        "timestamp": utc_time(timestamp_ns),
        "fields_held": true,
    })
}

/// A transfer whose outcome the node holds but whose fields it no longer does (beyond a single node's
/// log retention, or before a cluster replica's latest snapshot).
pub fn transfer_outcome_text(id: u128, code: ResultCode, seq: u64, timestamp_ns: u64) -> String {
    format!(
        "transfer {id:032x}: {} at seq {seq} ({}); its fields are no longer held by this node (its event is \
         no longer in the partition's log)",
        code.name(),
        utc_time(timestamp_ns)
    )
}

pub fn transfer_outcome_json(id: u128, code: ResultCode, seq: u64, timestamp_ns: u64) -> Value {
    json!({
        "transfer_id": format!("{id:032x}"),
        "result": code.name(),
        "seq": seq,
        "timestamp": utc_time(timestamp_ns),
        "fields_held": false,
    })
}

pub fn result_json(result: &ItemResult) -> Value {
    json!({
        "index": result.index,
        "result": result.code.name(),
        "seq": result.seq,
        "replayed": result.is_replayed(),
    })
}

pub fn account_json(registry: &CurrencyRegistry, account: &Account) -> Value {
    let currency = registry.by_ledger(account.ledger);
    json!({
        "id": account.id,
        "ledger": ledger_name(registry, account.ledger),
        "ledger_number": account.ledger,
        "balance": currency.map(|c| c.format_balance(account.balance)),
        "balance_minor": account.balance,
        "external": account.is_external(),
        "user_data": account.user_data.to_string(),
        "created_seq": account.created_seq,
        "last_seq": account.last_seq,
    })
}

pub fn account_text(registry: &CurrencyRegistry, account: &Account) -> String {
    let kind = if account.is_external() { " (external)" } else { "" };
    format!(
        "account {}{kind}: {}  [ledger {}, last seq {}]",
        account.id,
        amount(registry, account.ledger, account.balance),
        account.ledger,
        account.last_seq
    )
}

/// The signed change an entry made to `account_id`'s balance.
pub fn entry_delta(account_id: u64, entry: &HistoryEntry) -> i64 {
    match entry.kind {
        HistoryKind::TransferPosted if entry.transfer.debit_account_id == account_id => -(entry.transfer.amount as i64),
        HistoryKind::TransferPosted => entry.transfer.amount as i64,
        HistoryKind::AccountCreated | HistoryKind::TransferRejected => 0,
    }
}

pub fn history_json(registry: &CurrencyRegistry, account: &Account, entry: &HistoryEntry) -> Value {
    let currency = registry.by_ledger(account.ledger);
    let delta = entry_delta(account.id, entry);
    json!({
        "seq": entry.seq,
        "time": utc_time(entry.timestamp_ns),
        "timestamp_ns": entry.timestamp_ns,
        "kind": match entry.kind {
            HistoryKind::AccountCreated => "account_created",
            HistoryKind::TransferPosted => "transfer_posted",
            HistoryKind::TransferRejected => "transfer_rejected",
        },
        "transfer_id": (entry.kind != HistoryKind::AccountCreated).then(|| format!("{:032x}", entry.transfer.id)),
        "debit_account_id": entry.transfer.debit_account_id,
        "credit_account_id": entry.transfer.credit_account_id,
        "change": currency.map(|c| c.format_balance(delta)),
        "change_minor": delta,
        "balance_after": currency.map(|c| c.format_balance(entry.balance_after)),
        "balance_after_minor": entry.balance_after,
    })
}

pub fn history_text(registry: &CurrencyRegistry, account: &Account, entry: &HistoryEntry) -> String {
    let delta = entry_delta(account.id, entry);
    let what = match entry.kind {
        HistoryKind::AccountCreated => "account created".to_string(),
        HistoryKind::TransferPosted if entry.transfer.debit_account_id == account.id => {
            format!("to {} (transfer {:032x})", entry.transfer.credit_account_id, entry.transfer.id)
        }
        HistoryKind::TransferPosted | HistoryKind::TransferRejected => {
            format!("from {} (transfer {:032x})", entry.transfer.debit_account_id, entry.transfer.id)
        }
    };
    let change = match registry.by_ledger(account.ledger) {
        Some(c) if delta > 0 => format!("+{}", c.format_balance(delta)),
        Some(c) => c.format_balance(delta),
        None => delta.to_string(),
    };
    format!(
        "{:>8}  {}  {:>16}  balance {:>20}  {what}",
        entry.seq,
        utc_time(entry.timestamp_ns),
        change,
        amount(registry, account.ledger, entry.balance_after)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_use_minor_units_of_their_currency() {
        let registry = CurrencyRegistry::with_iso_4217();
        assert_eq!(amount(&registry, 840, 12_345), "123.45 USD");
        assert_eq!(amount(&registry, 840, -5), "-0.05 USD");
        assert_eq!(amount(&registry, 392, 500), "500 JPY");
        assert_eq!(amount(&registry, 7, 500), "500 (ledger 7, minor units)");
    }
}
