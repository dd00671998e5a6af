//! Checks that a line walletd wrote is a complete log record: a UTC RFC 3339 timestamp, a level and
//! the node id, in the text or the JSON format (`engine::logging`).

use serde_json::Value;

const LEVELS: [&str; 5] = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];

/// Asserts that `line` is one record of `format` ("text" or "json") for node `node_id`; returns its
/// message.
pub fn assert_record(line: &str, format: &str, node_id: u64) -> String {
    let (timestamp, level, node, message) = match format {
        "text" => {
            let mut fields = line.splitn(5, ' ');
            let timestamp = fields.next().unwrap_or_default().to_string();
            let level = fields.next().unwrap_or_default().to_string();
            let node = fields.next().and_then(|n| n.strip_prefix("node=")).and_then(|n| n.parse::<u64>().ok());
            let thread = fields.next().unwrap_or_default();
            assert!(thread.starts_with('[') && thread.ends_with(']'), "no [thread] field: {line:?}");
            let rest = fields.next().unwrap_or_default();
            let (_target, message) = rest.split_once(": ").unwrap_or_else(|| panic!("no target: {line:?}"));
            (timestamp, level, node, message.to_string())
        }
        "json" => {
            let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
            let object = value.as_object().unwrap_or_else(|| panic!("not an object: {line:?}"));
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            for key in ["ts", "level", "node", "thread", "target", "msg"] {
                assert!(keys.contains(&key), "no {key:?} in {line:?}");
            }
            assert_eq!(keys.len(), 6, "unexpected keys in {line:?}");
            (
                value["ts"].as_str().unwrap_or_default().to_string(),
                value["level"].as_str().unwrap_or_default().to_string(),
                value["node"].as_u64(),
                value["msg"].as_str().unwrap_or_else(|| panic!("msg is not a string: {line:?}")).to_string(),
            )
        }
        other => panic!("unknown log format {other}"),
    };
    assert_rfc3339_utc(&timestamp, line);
    assert!(LEVELS.contains(&level.as_str()), "level {level:?} in {line:?}");
    assert_eq!(node, Some(node_id), "node id in {line:?}");
    message
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, each field in range, and within a day of now (so it is UTC, not a
/// local time or an uptime).
fn assert_rfc3339_utc(timestamp: &str, line: &str) {
    let b = timestamp.as_bytes();
    assert_eq!(b.len(), 27, "timestamp {timestamp:?} in {line:?}");
    let number = |range: std::ops::Range<usize>| -> u64 {
        timestamp[range.clone()].parse().unwrap_or_else(|_| panic!("timestamp {timestamp:?} field {range:?}"))
    };
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')] {
        assert_eq!(b[at], separator, "timestamp {timestamp:?} in {line:?}");
    }
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    let (hour, minute, second) = (number(11..13), number(14..16), number(17..19));
    let _micros = number(20..26);
    assert!((1..=12).contains(&month) && (1..=31).contains(&day), "{timestamp}");
    assert!(hour < 24 && minute < 60 && second < 60, "{timestamp}");
    // Days since the epoch by the same civil calendar, compared with the system clock.
    let (y, m) = if month <= 2 { (year as i64 - 1, month + 9) } else { (year as i64, month - 3) };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m as i64 + 2) / 5 + day as i64 - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let unix = days * 86_400 + (hour * 3600 + minute * 60 + second) as i64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((now - unix).abs() < 86_400, "timestamp {timestamp} is not now ({now}) in UTC: {line:?}");
}
