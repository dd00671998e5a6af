//! `Idempotency-Key` → transfer id, and transfer ids as UUID text.
//!
//! The key must be a UUIDv7 (RFC 9562): its top 48 bits are its creation time in Unix milliseconds,
//! exactly the layout the engine's time-ordered transfer ids have (`net::types::transfer_id_timestamp_ms`).
//! Its 128 bits are used as the transfer id, unchanged. So every node maps a key to the same id with
//! no state of its own, and the engine's id table decides whether a request is new, a retry (the
//! original outcome, flagged replayed) or a conflict (`exists_with_different_fields`) — across
//! gateway and node restarts, through any node. Any other key is refused with the reason.

use net::types::TransferId;

/// Longest header value looked at, in bytes: a quoted UUID is 38.
pub const KEY_BYTES_MAX: usize = 64;

/// Why a key was refused, as the problem's detail says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the Idempotency-Key header is required: send a new UUIDv7 per transfer and the same one on every retry")]
    Missing,
    #[error("send one Idempotency-Key header, not several")]
    Repeated,
    #[error("the Idempotency-Key must be a UUID in canonical text form (8-4-4-4-12 hex digits), optionally quoted")]
    NotAUuid,
    #[error("the Idempotency-Key must be a version 7 UUID (time-ordered: its first 48 bits are the Unix time in ms); version {0} was sent")]
    NotVersion7(char),
    #[error("the Idempotency-Key does not carry the RFC 9562 variant (its 17th hex digit must be 8, 9, a or b)")]
    WrongVariant,
}

/// The transfer id a key names. Accepts the key bare or as a Structured Field string (`"…"`), as the
/// IETF draft writes it.
pub fn transfer_id_from_key(value: &[u8]) -> Result<TransferId, KeyError> {
    if value.len() > KEY_BYTES_MAX {
        return Err(KeyError::NotAUuid);
    }
    let text = std::str::from_utf8(value).map_err(|_| KeyError::NotAUuid)?.trim();
    let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner,
        None => text,
    };
    let id = parse_uuid(text).ok_or(KeyError::NotAUuid)?;
    let version = text.as_bytes()[14] as char;
    if version != '7' {
        return Err(KeyError::NotVersion7(version));
    }
    if !matches!(text.as_bytes()[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B') {
        return Err(KeyError::WrongVariant);
    }
    assert_ne!(id, 0, "a version 7 UUID has non-zero version bits");
    Ok(id)
}

/// Canonical `8-4-4-4-12` hex text, either case.
fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (position, &byte) in bytes.iter().enumerate() {
        if matches!(position, 8 | 13 | 18 | 23) {
            if byte != b'-' {
                return None;
            }
            continue;
        }
        let digit = (byte as char).to_digit(16)?;
        value = (value << 4) | digit as u128;
    }
    Some(value)
}

/// A transfer id as lower-case UUID text: the key it came from, or any binary client's id.
pub fn uuid_text(id: TransferId) -> String {
    let hex = format!("{id:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// A new UUIDv7 key: `net::client::new_transfer_id()` (the Unix ms in the top 48 bits, then random
/// bits) with the version (7) and variant (0b10) bits set. For Rust clients, tests and tools.
pub fn new_uuid_v7() -> TransferId {
    const VERSION_MASK: u128 = 0xF << 76;
    const VARIANT_MASK: u128 = 0x3 << 62;
    let id = net::client::new_transfer_id();
    (id & !VERSION_MASK & !VARIANT_MASK) | (0x7 << 76) | (0x2 << 62)
}

#[cfg(test)]
mod tests {
    use super::*;
    use net::types::transfer_id_timestamp_ms;
    use proptest::prelude::*;

    const KEY: &str = "0190f5b8-7c4e-7a3b-9d2f-1e2d3c4b5a69";

    #[test]
    fn a_uuid_v7_is_its_own_transfer_id_and_carries_its_time() {
        let id = transfer_id_from_key(KEY.as_bytes()).expect("valid v7");
        assert_eq!(uuid_text(id), KEY);
        assert_eq!(transfer_id_timestamp_ms(id), 0x0190_f5b8_7c4e);
        assert_eq!(transfer_id_from_key(format!("\"{KEY}\"").as_bytes()), Ok(id), "sf-string form");
        assert_eq!(transfer_id_from_key(KEY.to_uppercase().as_bytes()), Ok(id), "either case");
        assert_eq!(transfer_id_from_key(format!("  {KEY} ").as_bytes()), Ok(id), "surrounding blanks");
    }

    #[test]
    fn other_keys_are_refused_with_the_reason() {
        assert_eq!(transfer_id_from_key(b"uuid-abc-123"), Err(KeyError::NotAUuid));
        assert_eq!(transfer_id_from_key(b""), Err(KeyError::NotAUuid));
        assert_eq!(transfer_id_from_key(b"0190f5b87c4e7a3b9d2f1e2d3c4b5a69"), Err(KeyError::NotAUuid), "no hyphens");
        assert_eq!(transfer_id_from_key(b"0190f5b8-7c4e-7a3b-9d2f-1e2d3c4b5a6g"), Err(KeyError::NotAUuid));
        assert_eq!(transfer_id_from_key(b"\"0190f5b8-7c4e-7a3b-9d2f-1e2d3c4b5a69"), Err(KeyError::NotAUuid));
        assert_eq!(
            transfer_id_from_key(b"8e03978e-40d5-43e8-bc93-6894a57f9324"),
            Err(KeyError::NotVersion7('4')),
            "a random v4 UUID has no time"
        );
        assert_eq!(transfer_id_from_key(b"0190f5b8-7c4e-7a3b-cd2f-1e2d3c4b5a69"), Err(KeyError::WrongVariant));
        assert_eq!(transfer_id_from_key(&[0xff; 36]), Err(KeyError::NotAUuid));
        assert_eq!(transfer_id_from_key(&[b'a'; 65]), Err(KeyError::NotAUuid));
    }

    #[test]
    fn new_keys_are_accepted_unique_and_current() {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis();
        let keys: std::collections::HashSet<TransferId> = (0..10_000).map(|_| new_uuid_v7()).collect();
        assert_eq!(keys.len(), 10_000);
        for &key in keys.iter().take(100) {
            assert_eq!(transfer_id_from_key(uuid_text(key).as_bytes()), Ok(key));
            assert!((transfer_id_timestamp_ms(key) as u128).abs_diff(now_ms) < 60_000);
        }
    }

    proptest! {
        #[test]
        fn text_round_trips(id in any::<u128>()) {
            let text = uuid_text(id);
            prop_assert_eq!(parse_uuid(&text), Some(id));
        }
    }
}
