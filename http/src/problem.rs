//! Errors as `application/problem+json` (RFC 9457), each with a stable machine-readable `code`.
//!
//! An item the engine refused carries the engine's result code name (`insufficient_funds`, …, the
//! same names as `net::types::ResultCode::name`); failures of the edge itself carry codes of their own
//! (`missing_idempotency_key`, `invalid_request`, `unavailable`, …). `type` is `urn:wallet:problem:`
//! followed by the code, so a client may switch on either.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use net::protocol::ErrorCode;
use net::types::ResultCode;
use serde_json::{json, Map, Value};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
pub const PROBLEM_TYPE_PREFIX: &str = "urn:wallet:problem:";
/// What a client should wait before retrying a 503, in seconds.
pub const RETRY_AFTER_SECONDS: u32 = 1;

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extension members (RFC 9457 §3.2): `transfer_id`, `seq`, `pointer`, …
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, code, title, detail: detail.into(), extensions: Map::new() }
    }

    pub fn with(mut self, member: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(member.to_string(), value.into());
        self
    }

    pub fn invalid_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_request", "The request is not valid", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", "No such resource", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }

    /// Retryable: the same request (same Idempotency-Key) may be sent again after `Retry-After`.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, "The service cannot answer now; retry", detail)
    }

    /// An item the engine refused. 404 for a lookup of a missing account; 422 for every other
    /// outcome that is not a success (the request was understood and decided, and the decision is no).
    pub fn rejected(code: ResultCode, detail: impl Into<String>) -> Problem {
        let status = match code {
            ResultCode::AccountNotFound => StatusCode::NOT_FOUND,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem::new(status, code.name(), result_title(code), detail)
    }

    /// An error frame from the node: retryable ones are 503; history the node no longer holds is 410
    /// and a history cursor it cannot start from is 400; anything else is a bug of the edge.
    pub fn from_node_error(code: ErrorCode, message: &str) -> Problem {
        if code == ErrorCode::HistoryCompacted {
            Problem::new(StatusCode::GONE, "history_compacted", "That part of the history is no longer held", message)
        } else if code == ErrorCode::InvalidCursor {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                "The history cursor does not name an event of this account",
                message,
            )
        } else if code.is_retryable() {
            Problem::unavailable(error_code_name(code), format!("the node answered {code:?}: {message}"))
        } else {
            Problem::internal(format!("the node refused what the edge sent ({code:?}): {message}"))
        }
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("{PROBLEM_TYPE_PREFIX}{}", self.code),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let object = body.as_object_mut().expect("built as an object");
        for (member, value) in &self.extensions {
            object.insert(member.clone(), value.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let retry = self.status == StatusCode::SERVICE_UNAVAILABLE;
        let mut response = (self.status, self.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if retry {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

/// The retryable error frames' codes as problem codes.
fn error_code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::ServerBusy => "server_busy",
        ErrorCode::NotLeader => "not_leader",
        ErrorCode::TooManyConnections => "too_many_connections",
        _ => "unavailable",
    }
}

fn result_title(code: ResultCode) -> &'static str {
    match code {
        ResultCode::Ok | ResultCode::Exists => "Not an error",
        ResultCode::ExistsWithDifferentFields => "The id (Idempotency-Key) was already used with a different request",
        ResultCode::InsufficientFunds => "Insufficient funds",
        ResultCode::DebitAccountNotFound => "The debit (from) account does not exist",
        ResultCode::CreditAccountNotFound => "The credit (to) account does not exist",
        ResultCode::LedgerMismatch => "The accounts and the transfer are not in the same currency",
        ResultCode::SameAccount => "The from and to accounts are the same",
        ResultCode::ZeroAmount => "The amount is zero",
        ResultCode::Overflow => "A balance would leave its range",
        ResultCode::IdExpired => "The Idempotency-Key is older than the idempotency window",
        ResultCode::CrossPartitionUnsupported => "The accounts live in different partitions",
        ResultCode::InvalidFlags => "Invalid flags",
        ResultCode::ReservedId => "The id is reserved",
        ResultCode::AccountNotFound => "No such account",
        ResultCode::InvalidLedger => "Invalid ledger",
        ResultCode::IdFromFuture => "The Idempotency-Key's time is ahead of the node's clock",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_code_has_a_stable_problem() {
        for code in ResultCode::ALL {
            let problem = Problem::rejected(code, "x");
            assert_eq!(problem.code, code.name());
            let body = problem.body();
            assert_eq!(body["type"], format!("urn:wallet:problem:{}", code.name()));
            assert_eq!(body["status"], problem.status.as_u16());
            let expected = if code == ResultCode::AccountNotFound { 404 } else { 422 };
            assert_eq!(problem.status.as_u16(), expected, "{code:?}");
        }
        assert_eq!(Problem::from_node_error(ErrorCode::NotLeader, "x").status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Problem::from_node_error(ErrorCode::EmptyBatch, "x").status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(Problem::from_node_error(ErrorCode::HistoryCompacted, "x").status, StatusCode::GONE);
        assert_eq!(Problem::from_node_error(ErrorCode::InvalidCursor, "x").status, StatusCode::BAD_REQUEST);
        let with = Problem::invalid_request("bad").with("pointer", "/amount").body();
        assert_eq!(with["pointer"], "/amount");
        assert_eq!(with["code"], "invalid_request");
    }
}
