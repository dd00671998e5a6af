//! The routes: JSON in, one binary-protocol call to the node, JSON out. Everything a request can get
//! wrong is answered `400`/`413`/`415` with a problem saying what, before anything reaches the node;
//! what the node decides comes back as the engine decided it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use net::currency::{Currency, CurrencyRegistry};
use net::protocol::{AccountLookup, Consistency, NodeStatus, Response as NodeResponse, BATCH_ITEMS_MAX};
use net::types::{
    Account, AccountId, CreateAccount, HistoryEntry, HistoryKind, ItemResult, ResultCode, Transfer, TransferId,
    ACCOUNT_FLAG_EXTERNAL,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::key::{transfer_id_from_key, uuid_text, KeyError};
use crate::link::{Call, LinkError, NodeLink};
use crate::problem::Problem;
use crate::scrape::Scrape;

/// Default page size of `GET /v1/accounts/{id}/history`.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Largest page an HTTP client may ask for (a JSON entry is ~400 bytes; the binary protocol allows 8190).
pub const HISTORY_LIMIT_MAX: u32 = 1000;
/// Most transfers in one `POST /v1/wallet/transfers`: one protocol batch.
pub const BATCH_TRANSFERS_MAX: usize = BATCH_ITEMS_MAX;
/// Largest request body accepted, in bytes: a full batch of 8190 transfers with long keys fits.
pub const BODY_BYTES_MAX: usize = 4 << 20;
/// Header naming a replayed answer (as Stripe does): the outcome is the original one, nothing moved.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

const OPENAPI_DOCUMENT: &str = include_str!("../openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub link: NodeLink,
    pub currencies: Arc<CurrencyRegistry>,
    pub scrape: Arc<Scrape>,
}

type Answer = Result<Response, Problem>;

// ---------------------------------------------------------------------------------------------
// Transfers

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody<'a> {
    from_account: Value,
    to_account: Value,
    #[serde(borrow)]
    amount: &'a RawValue,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    transfers: Vec<BatchItem<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem<'a> {
    idempotency_key: String,
    from_account: Value,
    to_account: Value,
    #[serde(borrow)]
    amount: &'a RawValue,
    currency: String,
}

pub async fn transfer(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = idempotency_key(&headers)?;
    let body = json_body(&headers, body)?;
    let parsed: TransferBody = parse_json(&body)?;
    let transfer = state.transfer(id, &parsed.from_account, &parsed.to_account, parsed.amount, &parsed.currency, "")?;
    let result = state.items(Call::Transfers(vec![transfer]), 1).await?[0];
    Ok(transfer_answer(id, result))
}

pub async fn transfer_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(&headers, body)?;
    let parsed: BatchBody = parse_json(&body)?;
    let count = parsed.transfers.len();
    if count == 0 || count > BATCH_TRANSFERS_MAX {
        return Err(Problem::invalid_request(format!("transfers holds {count} items; send 1..={BATCH_TRANSFERS_MAX}"))
            .with("pointer", "/transfers"));
    }
    let mut transfers = Vec::with_capacity(count);
    for (index, item) in parsed.transfers.iter().enumerate() {
        let pointer = format!("/transfers/{index}");
        let id = transfer_id_from_key(item.idempotency_key.as_bytes())
            .map_err(|error| key_problem(error).with("pointer", format!("{pointer}/idempotency_key")))?;
        transfers.push(state.transfer(
            id,
            &item.from_account,
            &item.to_account,
            item.amount,
            &item.currency,
            &pointer,
        )?);
    }
    let ids: Vec<TransferId> = transfers.iter().map(|t| t.id).collect();
    let results = state.items(Call::Transfers(transfers), count).await?;
    let items: Vec<Value> = ids
        .iter()
        .zip(&results)
        .map(|(&id, result)| {
            let mut item = json!({
                "index": result.index,
                "transfer_id": uuid_text(id),
                "status": if result.code == ResultCode::Ok { "SUCCESS" } else { "REJECTED" },
                "code": result.code.name(),
                "seq": result.seq,
                "replayed": result.is_replayed(),
            });
            if result.code != ResultCode::Ok {
                item["reason"] = json!(result_detail(result.code));
            }
            item
        })
        .collect();
    Ok(json_answer(StatusCode::OK, json!({ "results": items })))
}

/// The answer to one transfer: 200 with its id, status and seq, or the engine's rejection as a
/// problem carrying the same members. A replayed retry gets the same answer, flagged by a header.
fn transfer_answer(id: TransferId, result: ItemResult) -> Response {
    let mut response = if result.code == ResultCode::Ok {
        json_answer(StatusCode::OK, json!({ "transfer_id": uuid_text(id), "status": "SUCCESS", "seq": result.seq }))
    } else {
        Problem::rejected(result.code, result_detail(result.code))
            .with("transfer_id", uuid_text(id))
            // RFC 9457 reserves "status" for the HTTP status code.
            .with("transfer_status", "REJECTED")
            .with("reason", result.code.name())
            .with("seq", result.seq)
            .into_response()
    };
    if result.is_replayed() {
        response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

fn result_detail(code: ResultCode) -> &'static str {
    match code {
        ResultCode::ExistsWithDifferentFields => {
            "this Idempotency-Key was already used for a transfer with other accounts, amount or currency; \
             nothing changed (use a new key for a new transfer)"
        }
        ResultCode::InsufficientFunds => "the from account's balance is lower than the amount; nothing moved",
        ResultCode::DebitAccountNotFound => "no account has the from_account id",
        ResultCode::CreditAccountNotFound => "no account has the to_account id",
        ResultCode::LedgerMismatch => "both accounts must hold the transfer's currency",
        ResultCode::SameAccount => "from_account and to_account are the same account",
        ResultCode::ZeroAmount => "the amount must be positive",
        ResultCode::Overflow => "the amount or a resulting balance leaves the 64-bit range",
        ResultCode::IdExpired => {
            "the key's time is older than what the partition still remembers: it may be a late retry of a \
             forgotten transfer, so it is refused; send a new key"
        }
        ResultCode::CrossPartitionUnsupported => "the two accounts live in different partitions of this node",
        ResultCode::ReservedId => "account ids 0 and 18446744073709551615 are reserved",
        ResultCode::IdFromFuture => {
            "the key's embedded time is more than 10 s ahead of the node's clock; fix the client clock and retry"
        }
        ResultCode::AccountNotFound => "no such account",
        ResultCode::InvalidFlags => "invalid flags",
        ResultCode::InvalidLedger => "invalid ledger",
        ResultCode::Ok | ResultCode::Exists => "",
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<TransferId, Problem> {
    let mut values = headers.get_all("idempotency-key").iter();
    let value = values.next().ok_or_else(|| key_problem(KeyError::Missing))?;
    if values.next().is_some() {
        return Err(key_problem(KeyError::Repeated));
    }
    transfer_id_from_key(value.as_bytes()).map_err(key_problem)
}

fn key_problem(error: KeyError) -> Problem {
    let (code, title) = match error {
        KeyError::Missing => ("missing_idempotency_key", "Idempotency-Key is missing"),
        _ => ("invalid_idempotency_key", "Idempotency-Key is not a UUIDv7"),
    };
    Problem::new(StatusCode::BAD_REQUEST, code, title, error.to_string())
}

// ---------------------------------------------------------------------------------------------
// Accounts

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountBody {
    id: Value,
    currency: String,
    #[serde(default)]
    external: bool,
}

pub async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = json_body(&headers, body)?;
    let parsed: AccountBody = parse_json(&body)?;
    let id = account_id(&parsed.id, "/id")?;
    let currency = state.currency(&parsed.currency, "/currency")?;
    let flags = if parsed.external { ACCOUNT_FLAG_EXTERNAL } else { 0 };
    let account = CreateAccount { id, ledger: currency.ledger, flags, user_data: 0 };
    let result = state.items(Call::CreateAccounts(vec![account]), 1).await?[0];
    let body = |status: &str| json!({ "id": id, "currency": currency.name, "external": parsed.external, "status": status, "seq": result.seq });
    match result.code {
        ResultCode::Ok => Ok(json_answer(StatusCode::CREATED, body("CREATED"))),
        ResultCode::Exists => Ok(json_answer(StatusCode::OK, body("EXISTS"))),
        ResultCode::ExistsWithDifferentFields => {
            Err(Problem::rejected(result.code, "an account with this id exists with another currency or external flag")
                .with("seq", result.seq))
        }
        code => Err(Problem::rejected(code, result_detail(code)).with("seq", result.seq)),
    }
}

pub async fn balance(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Answer {
    let id = account_id(&Value::String(id), "account id in the path")?;
    let query = query_params(query, &["consistency", "at_least"])?;
    let consistency = consistency(&query)?;
    let account = state.lookup(consistency, id).await.map_err(|problem| match consistency {
        // The replica did not reach the seq within the node's read wait: the state asked for does not
        // exist here yet (a seq no write has reached, or a lagging replica). The client's to retry.
        Consistency::AtLeast(seq) if problem.code == "unavailable" => Problem::new(
            StatusCode::CONFLICT,
            "seq_not_reached",
            "The replica has not reached that seq",
            format!("no answer at seq {seq} or later within the node's read wait: {}", problem.detail),
        ),
        _ => problem,
    })?;
    Ok(json_answer(StatusCode::OK, state.account_json(&account)))
}

pub async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Answer {
    let id = account_id(&Value::String(id), "account id in the path")?;
    let query = query_params(query, &["limit", "cursor"])?;
    let limit = match query.get("limit") {
        None => HISTORY_LIMIT_DEFAULT,
        Some(text) => decimal_u64(text)
            .filter(|limit| (1..=HISTORY_LIMIT_MAX as u64).contains(limit))
            .ok_or_else(|| Problem::invalid_request(format!("limit must be 1..={HISTORY_LIMIT_MAX}, not {text:?}")))?
            as u32,
    };
    let from_seq = match query.get("cursor") {
        None => 0,
        Some(text) => cursor_seq(id, text).ok_or_else(|| {
            Problem::invalid_request(format!("cursor {text:?} is not a next_cursor this account's history handed out"))
        })?,
    };
    // Linearizable, so an account just created through another node is found.
    let account = state.lookup(Consistency::Linearizable, id).await?;
    let (entries, next) = match state.link.call(Call::History { account_id: id, from_seq, limit }).await {
        Ok(NodeResponse::History { entries, next_from_seq, .. }) => (entries, next_from_seq),
        other => return Err(unexpected(other)),
    };
    let currency = state.currencies.by_ledger(account.ledger);
    let entries: Vec<Value> = entries.iter().map(|entry| history_entry_json(id, currency, entry)).collect();
    Ok(json_answer(
        StatusCode::OK,
        json!({ "account_id": id, "entries": entries, "next_cursor": next.map(|seq| cursor_text(id, seq)) }),
    ))
}

/// Seeds the cursor checksum; fixed, so every node (and every restart) reads every node's cursors.
const CURSOR_SEED: u64 = 0x7761_6c6c_6574_6375; // "walletcu"

/// An opaque page cursor: the next page's starting seq and a checksum binding it to the account, as
/// 32 hex digits. The node only walks an account's history from a seq that is one of its events, so a
/// cursor the edge did not hand out for this account is refused here (400) instead of reaching it.
fn cursor_text(account: AccountId, seq: u64) -> String {
    format!("{seq:016x}{:016x}", cursor_check(account, seq))
}

fn cursor_seq(account: AccountId, text: &str) -> Option<u64> {
    if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let seq = u64::from_str_radix(&text[..16], 16).ok()?;
    let check = u64::from_str_radix(&text[16..], 16).ok()?;
    (seq > 0 && check == cursor_check(account, seq)).then_some(seq)
}

fn cursor_check(account: AccountId, seq: u64) -> u64 {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&account.to_le_bytes());
    bytes[8..].copy_from_slice(&seq.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, CURSOR_SEED)
}

fn history_entry_json(account: AccountId, currency: Option<&Currency>, entry: &HistoryEntry) -> Value {
    let format = |minor: i64| match currency {
        Some(currency) => currency.format_balance(minor),
        None => minor.to_string(),
    };
    let kind = match entry.kind {
        HistoryKind::AccountCreated => "account_created",
        HistoryKind::TransferPosted => "transfer_posted",
        HistoryKind::TransferRejected => "transfer_rejected",
    };
    let mut value = json!({
        "seq": entry.seq,
        "time": engine::logging::rfc3339_utc_us(entry.timestamp_ns / 1_000),
        "timestamp_ns": entry.timestamp_ns,
        "kind": kind,
        "code": entry.code.name(),
        "balance_after": format(entry.balance_after),
    });
    if entry.kind != HistoryKind::AccountCreated {
        let transfer = &entry.transfer;
        let direction = if transfer.debit_account_id == account { "debit" } else { "credit" };
        let amount = match currency {
            Some(currency) => currency.format_amount(transfer.amount),
            None => transfer.amount.to_string(),
        };
        let object = value.as_object_mut().expect("built as an object");
        object.insert("transfer_id".into(), json!(uuid_text(transfer.id)));
        object.insert("from_account".into(), json!(transfer.debit_account_id));
        object.insert("to_account".into(), json!(transfer.credit_account_id));
        object.insert("amount".into(), json!(amount));
        object.insert("direction".into(), json!(direction));
    }
    value
}

// ---------------------------------------------------------------------------------------------
// Status, metrics, the document, unknown routes

pub async fn status(State(state): State<AppState>) -> Answer {
    match state.link.call(Call::Status).await {
        Ok(NodeResponse::Status(status)) => Ok(json_answer(StatusCode::OK, status_json(&status))),
        other => Err(unexpected(other)),
    }
}

fn status_json(status: &NodeStatus) -> Value {
    let partitions: Vec<Value> = status
        .partition_states
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "leader": (p.leader != 0).then_some(p.leader),
                "led_here": p.flags & net::protocol::PARTITION_FLAG_LEADER != 0,
                "term": p.term,
                "last_index": p.last_index,
                "commit_index": p.commit_index,
                "applied_index": p.applied_index,
                "applied_seq": p.applied_seq,
            })
        })
        .collect();
    let nodes: Vec<Value> =
        status.nodes.iter().map(|n| json!({ "node_id": n.node_id, "address": n.address.to_string() })).collect();
    json!({
        "node_id": status.node_id,
        "partition_count": status.partitions,
        "shards": status.shards,
        "partitions": partitions,
        "nodes": nodes,
    })
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.scrape.render(&state.link).await;
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

pub async fn openapi() -> Response {
    let mut response = (StatusCode::OK, OPENAPI_DOCUMENT).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route for {}; GET /openapi.json lists the API", uri.path()))
}

// ---------------------------------------------------------------------------------------------
// Shared parsing and calls

impl AppState {
    fn currency(&self, name: &str, pointer: &str) -> Result<&Currency, Problem> {
        self.currencies.by_name(name).ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "unknown_currency",
                "Unknown currency",
                format!(
                    "{name:?} is not a currency this node knows (ISO 4217 codes such as USD, or a configured ledger)"
                ),
            )
            .with("pointer", pointer.to_string())
        })
    }

    fn transfer(
        &self,
        id: TransferId,
        from: &Value,
        to: &Value,
        amount: &RawValue,
        currency: &str,
        pointer: &str,
    ) -> Result<Transfer, Problem> {
        let debit_account_id = account_id(from, &format!("{pointer}/from_account"))?;
        let credit_account_id = account_id(to, &format!("{pointer}/to_account"))?;
        let currency = self.currency(currency, &format!("{pointer}/currency"))?;
        let amount = parse_amount(amount, currency, &format!("{pointer}/amount"))?;
        Ok(Transfer {
            id,
            debit_account_id,
            credit_account_id,
            amount,
            ledger: currency.ledger,
            flags: 0,
            user_data: 0,
        })
    }

    /// One result per item, in order.
    async fn items(&self, call: Call, count: usize) -> Result<Vec<ItemResult>, Problem> {
        match self.link.call(call).await {
            Ok(NodeResponse::Results(results)) if results.len() == count => Ok(results),
            other => Err(unexpected(other)),
        }
    }

    async fn lookup(&self, consistency: Consistency, id: AccountId) -> Result<Account, Problem> {
        match self.link.call(Call::Lookup { consistency, ids: vec![id] }).await {
            Ok(NodeResponse::Accounts(accounts)) if accounts.len() == 1 => match accounts[0] {
                AccountLookup::Found(account) => Ok(account),
                AccountLookup::NotFound { code, .. } => Err(Problem::rejected(code, format!("no account has id {id}"))),
            },
            other => Err(unexpected(other)),
        }
    }

    fn account_json(&self, account: &Account) -> Value {
        let currency = self.currencies.by_ledger(account.ledger);
        let balance = match currency {
            Some(currency) => currency.format_balance(account.balance),
            None => account.balance.to_string(),
        };
        json!({
            "id": account.id,
            "currency": currency.map(|c| c.name.clone()),
            "ledger": account.ledger,
            "external": account.is_external(),
            "balance": balance,
            "balance_minor": account.balance,
            "created_seq": account.created_seq,
            "last_seq": account.last_seq,
        })
    }
}

/// The problem for anything but the expected answer: the node's error frame, no answer, or an answer
/// of the wrong shape (a bug).
fn unexpected(outcome: Result<NodeResponse, LinkError>) -> Problem {
    match outcome {
        Err(LinkError::Node { code, message }) => Problem::from_node_error(code, &message),
        Err(error @ LinkError::QueueFull { .. }) => Problem::unavailable("edge_busy", error.to_string()),
        Err(error @ LinkError::Stopped) => Problem::unavailable("unavailable", error.to_string()),
        Err(error @ LinkError::NoAnswer { .. }) => Problem::unavailable(
            "node_unreachable",
            format!("{error}; a transfer's outcome is unknown: send it again with the same Idempotency-Key"),
        ),
        Err(error @ LinkError::WrongAnswer(_)) => Problem::internal(error.to_string()),
        Ok(NodeResponse::Error { code, message }) => Problem::from_node_error(code, &message),
        Ok(other) => Problem::internal(format!("unexpected answer from the node: {other:?}")),
    }
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "The body must be JSON",
            format!("send Content-Type: application/json (got {content_type:?})"),
        ));
    }
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                status,
                "payload_too_large",
                "The body is too large",
                format!("bodies are limited to {BODY_BYTES_MAX} bytes"),
            )
        } else {
            Problem::invalid_request(format!("cannot read the body: {rejection}"))
        }
    })
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|error| Problem::invalid_request(format!("the JSON body is not valid: {error}")))
}

/// An account id: a JSON integer, or its decimal text (for clients whose numbers are doubles).
fn account_id(value: &Value, pointer: &str) -> Result<AccountId, Problem> {
    let parsed = match value {
        Value::Number(number) => number.as_u64(),
        Value::String(text) => decimal_u64(text),
        _ => None,
    };
    parsed.ok_or_else(|| {
        Problem::invalid_request(format!(
            "{pointer}: an account id is an unsigned 64-bit integer, as a JSON number or a decimal string; got {value}"
        ))
        .with("pointer", pointer.to_string())
    })
}

/// Plain decimal digits (no sign, no blanks), 1..=20 of them, within u64.
fn decimal_u64(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The amount exactly, in the currency's minor units: from the JSON number's own text (never through
/// a float) or from a string holding the same decimal form.
fn parse_amount(raw: &RawValue, currency: &Currency, pointer: &str) -> Result<u64, Problem> {
    let invalid =
        |why: String| Problem::invalid_request(format!("{pointer}: {why}")).with("pointer", pointer.to_string());
    let text = raw.get().trim();
    let decimal: String = if text.starts_with('"') {
        serde_json::from_str(text).map_err(|e| invalid(format!("not a JSON string: {e}")))?
    } else if text.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        text.to_string()
    } else {
        return Err(invalid(format!("the amount is a decimal number or string such as 12.50, not {text}")));
    };
    currency.parse_amount(&decimal).map_err(|error| {
        invalid(format!(
            "{decimal:?} is not an amount of {} ({} decimals, plain notation, no exponent): {error}",
            currency.name, currency.minor_units
        ))
    })
}

fn query_params(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, Problem> {
    let Query(query) = query.map_err(|e| Problem::invalid_request(format!("the query string is not valid: {e}")))?;
    if let Some(unknown) = query.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(Problem::invalid_request(format!(
            "unknown query parameter {unknown:?}; this route takes {allowed:?}"
        )));
    }
    Ok(query)
}

/// `consistency` = `linearizable` (the default), `at_least` (with `at_least=SEQ`: read-your-writes
/// from any replica, SEQ being a `seq` an answer carried) or `any`. `at_least` alone implies it.
fn consistency(query: &HashMap<String, String>) -> Result<Consistency, Problem> {
    let seq = match query.get("at_least") {
        None => None,
        Some(text) => Some(
            decimal_u64(text)
                .ok_or_else(|| Problem::invalid_request(format!("at_least must be a sequence number, not {text:?}")))?,
        ),
    };
    match (query.get("consistency").map(String::as_str), seq) {
        (None, None) | (Some("linearizable"), None) => Ok(Consistency::Linearizable),
        (Some("any"), None) => Ok(Consistency::Any),
        (None, Some(seq)) | (Some("at_least"), Some(seq)) => Ok(Consistency::AtLeast(seq)),
        (Some("at_least"), None) => Err(Problem::invalid_request("consistency=at_least needs at_least=SEQ")),
        (Some(level @ ("linearizable" | "any")), Some(_)) => {
            Err(Problem::invalid_request(format!("at_least goes with consistency=at_least, not {level}")))
        }
        (Some(other), _) => {
            Err(Problem::invalid_request(format!("consistency is linearizable, at_least or any, not {other:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_string()).expect("valid JSON")
    }

    #[test]
    fn amounts_are_exact_in_minor_units_from_numbers_and_strings() {
        let registry = CurrencyRegistry::with_iso_4217();
        let usd = registry.get("USD").expect("built in");
        let jpy = registry.get("JPY").expect("built in");
        let kwd = registry.get("KWD").expect("built in");
        assert_eq!(parse_amount(&raw("1.00"), usd, "/amount").ok(), Some(100));
        assert_eq!(parse_amount(&raw("\"1.00\""), usd, "/amount").ok(), Some(100));
        assert_eq!(parse_amount(&raw("0.1"), usd, "/amount").ok(), Some(10));
        // A float would make this 2.9999999999999996 or 0.30000000000000004; text stays exact.
        assert_eq!(parse_amount(&raw("0.3"), usd, "/amount").ok(), Some(30));
        assert_eq!(parse_amount(&raw("184467440737095516.15"), usd, "/amount").ok(), Some(u64::MAX));
        assert_eq!(parse_amount(&raw("500"), jpy, "/amount").ok(), Some(500));
        assert_eq!(parse_amount(&raw("1.234"), kwd, "/amount").ok(), Some(1234));
        for bad in ["1.001", "-1", "1e2", "1.5E1", "\"1,00\"", "\"\"", "true", "null", "[1]", "{}", "\" 1\""] {
            let problem = parse_amount(&raw(bad), usd, "/amount").expect_err(bad);
            assert_eq!(problem.status, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(problem.extensions["pointer"], "/amount");
        }
        assert!(parse_amount(&raw("0.5"), jpy, "/amount").is_err(), "JPY has no decimals");
        assert!(parse_amount(&raw("184467440737095516.16"), usd, "/amount").is_err(), "overflow");
    }

    #[test]
    fn account_ids_are_integers_or_their_decimal_text() {
        assert_eq!(account_id(&json!(7), "/id").ok(), Some(7));
        assert_eq!(account_id(&json!("18446744073709551615"), "/id").ok(), Some(u64::MAX));
        assert_eq!(account_id(&json!(u64::MAX), "/id").ok(), Some(u64::MAX));
        for bad in
            [json!(-1), json!(1.5), json!("x"), json!("+1"), json!(" 1"), json!("18446744073709551616"), json!(null)]
        {
            assert!(account_id(&bad, "/id").is_err(), "{bad}");
        }
    }

    #[test]
    fn cursors_are_bound_to_their_account() {
        let cursor = cursor_text(11, 7);
        assert_eq!(cursor.len(), 32);
        assert_eq!(cursor_seq(11, &cursor), Some(7));
        assert_eq!(cursor_seq(12, &cursor), None, "another account's cursor");
        assert_eq!(cursor_seq(11, &cursor_text(11, 8)[..31]), None);
        assert_eq!(cursor_seq(11, &cursor.to_uppercase()), None);
        assert_eq!(cursor_seq(11, "7"), None);
        let mut forged = cursor.into_bytes();
        forged[15] = if forged[15] == b'8' { b'9' } else { b'8' };
        assert_eq!(cursor_seq(11, std::str::from_utf8(&forged).expect("hex")), None, "a seq without its checksum");
    }

    #[test]
    fn consistency_follows_the_protocol_rules() {
        let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(consistency(&query(&[])).ok(), Some(Consistency::Linearizable));
        assert_eq!(consistency(&query(&[("consistency", "any")])).ok(), Some(Consistency::Any));
        assert_eq!(consistency(&query(&[("at_least", "5")])).ok(), Some(Consistency::AtLeast(5)));
        assert_eq!(
            consistency(&query(&[("consistency", "at_least"), ("at_least", "9")])).ok(),
            Some(Consistency::AtLeast(9))
        );
        assert!(consistency(&query(&[("consistency", "at_least")])).is_err());
        assert!(consistency(&query(&[("consistency", "any"), ("at_least", "1")])).is_err());
        assert!(consistency(&query(&[("consistency", "strong")])).is_err());
        assert!(consistency(&query(&[("at_least", "-1")])).is_err());
    }
}
