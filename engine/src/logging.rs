//! The node's log: every line carries a UTC RFC 3339 timestamp (microseconds), a level and the node
//! id, in one of two formats chosen once at start (`walletd --log-format`):
//!
//! - `text` (default): `2026-12-01T09:24:16.123456Z INFO node=1 [shard-0] engine::shard: message`;
//! - `json`: one object per line,
//!   `{"ts":"2026-12-01T09:24:16.123456Z","level":"INFO","node":1,"thread":"shard-0","target":"engine::shard","msg":"message"}`.
//!
//! Code logs through the `log` facade (`log::info!` and friends); [`init`] installs the one logger a
//! process has. Each line is formatted into one buffer and written to stderr with one `write_all`
//! under stderr's lock, so lines from different threads never interleave. A message's own newlines
//! are escaped, so one record is always one line. Panics are logged the same way (level ERROR), so
//! even a crashing thread's last words parse. Nothing here allocates per line beyond the line itself,
//! and nothing blocks but the write.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?}: expected text or json")),
        }
    }
}

struct NodeLogger {
    node_id: u64,
    format: LogFormat,
}

impl log::Log for NodeLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(
            self.format,
            unix_now_us(),
            record.level(),
            self.node_id,
            std::thread::current().name(),
            record.target(),
            &record.args().to_string(),
        );
        // Nothing useful can be done when stderr is gone; the node keeps serving.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the process's logger for node `node_id` at level INFO, and a panic hook that logs the
/// panic through it. Fails if a logger is already installed (a second `init` is a bug).
pub fn init(node_id: u64, format: LogFormat) -> Result<(), log::SetLoggerError> {
    log::set_boxed_logger(Box::new(NodeLogger { node_id, format }))?;
    log::set_max_level(log::LevelFilter::Info);
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-text panic payload)".to_string());
        // With RUST_BACKTRACE set, the backtrace goes into the same record (its newlines escaped).
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
            _ => String::new(),
        };
        log::error!(target: "panic", "panicked{location}: {payload}{backtrace}");
    }));
    Ok(())
}

/// One log line, newline included.
pub fn format_line(
    format: LogFormat,
    unix_us: u64,
    level: log::Level,
    node_id: u64,
    thread: Option<&str>,
    target: &str,
    message: &str,
) -> String {
    let mut line = String::with_capacity(96 + message.len());
    let timestamp = rfc3339_utc_us(unix_us);
    let thread = thread.unwrap_or("-");
    match format {
        LogFormat::Text => {
            let _ = write!(line, "{timestamp} {level} node={node_id} [{thread}] {target}: ");
            for c in message.chars() {
                match c {
                    '\n' => line.push_str("\\n"),
                    '\r' => line.push_str("\\r"),
                    c => line.push(c),
                }
            }
        }
        LogFormat::Json => {
            let _ = write!(line, "{{\"ts\":\"{timestamp}\",\"level\":\"{level}\",\"node\":{node_id},\"thread\":");
            push_json_string(&mut line, thread);
            line.push_str(",\"target\":");
            push_json_string(&mut line, target);
            line.push_str(",\"msg\":");
            push_json_string(&mut line, message);
            line.push('}');
        }
    }
    line.push('\n');
    line
}

/// `text` as a JSON string literal (RFC 8259: quote, backslash and control characters escaped).
fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn unix_now_us() -> u64 {
    // A clock before 1970 is a broken machine; log it as the epoch rather than refuse to log.
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// `unix_us` (microseconds since 1970-01-01T00:00:00Z) as RFC 3339 UTC with six fraction digits,
/// e.g. `2026-12-01T09:24:16.123456Z`.
pub fn rfc3339_utc_us(unix_us: u64) -> String {
    let seconds = unix_us / 1_000_000;
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        unix_us % 1_000_000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day): Howard Hinnant's
/// `civil_from_days` (eras of 400 years, March-based years so the leap day ends the year).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    assert!((1..=12).contains(&month) && (1..=31).contains(&day), "civil_from_days({days}) = {month}/{day}");
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_instants() {
        assert_eq!(rfc3339_utc_us(0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century divisible by 400) and the next day.
        assert_eq!(rfc3339_utc_us(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_utc_us(951_868_799_999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(rfc3339_utc_us(951_868_800_000_000), "2000-03-01T00:00:00.000000Z");
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(rfc3339_utc_us(4_107_455_999_000_000), "2100-02-27T23:59:59.000000Z");
        assert_eq!(rfc3339_utc_us(4_107_542_400_000_000), "2100-03-01T00:00:00.000000Z");
        assert_eq!(rfc3339_utc_us(1_796_117_056_123_456), "2026-12-01T09:24:16.123456Z");
    }

    #[test]
    fn every_day_for_four_centuries_follows_the_previous_one() {
        let mut previous = civil_from_days(-1);
        assert_eq!(previous, (1969, 12, 31));
        for days in 0..146_097 {
            let today = civil_from_days(days);
            let (y, m, d) = previous;
            let next_day = (y, m, d + 1);
            let next_month = (y, m + 1, 1);
            let next_year = (y + 1, 1, 1);
            assert!(
                today == next_day || (today == next_month && d >= 28) || (today == next_year && m == 12 && d == 31)
            );
            previous = today;
        }
        assert_eq!(previous, (2369, 12, 31));
    }

    #[test]
    fn text_lines_are_one_line_and_json_lines_escape_everything() {
        let text = format_line(LogFormat::Text, 0, log::Level::Warn, 7, Some("net"), "engine::x", "a\nb");
        assert_eq!(text, "1970-01-01T00:00:00.000000Z WARN node=7 [net] engine::x: a\\nb\n");
        let json = format_line(LogFormat::Json, 0, log::Level::Info, 7, None, "t", "q\"\\\u{1}\n");
        assert_eq!(
            json,
            "{\"ts\":\"1970-01-01T00:00:00.000000Z\",\"level\":\"INFO\",\"node\":7,\"thread\":\"-\",\
             \"target\":\"t\",\"msg\":\"q\\\"\\\\\\u0001\\n\"}\n"
        );
    }
}
