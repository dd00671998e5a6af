//! The slow-round log line both shard runtimes write: a round that held its shard longer than
//! `SLOW_ROUND_LOG_MS` is logged at `warn` with how long each of its phases took, at most once per
//! `SLOW_ROUND_LOG_INTERVAL_MS` per shard, so what stalls a round is read, not guessed (it is what
//! found the page-fault and Status stalls of BENCHMARKS section 12).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A round longer than this is logged with its phases.
pub const SLOW_ROUND_LOG_MS: u64 = 100;
/// At most one slow-round line per this interval per shard.
pub const SLOW_ROUND_LOG_INTERVAL_MS: u64 = 1_000;

/// One shard's rate limit for the line.
#[derive(Debug, Default)]
pub struct SlowRounds {
    logged_at: Option<Instant>,
}

impl SlowRounds {
    /// `phases`: each phase's name and the instant it ended, in order, the last one ending the round;
    /// `describe`: which shard, and what the round carried (called only for a line that is written, so
    /// an ordinary round allocates nothing).
    pub fn report(
        &mut self,
        started: Instant,
        phases: &[(&str, Instant)],
        describe: impl FnOnce() -> (String, String),
    ) {
        let Some(&(_, ended)) = phases.last() else { return };
        let took = ended.saturating_duration_since(started);
        let recently =
            self.logged_at.is_some_and(|at| at.elapsed() < Duration::from_millis(SLOW_ROUND_LOG_INTERVAL_MS));
        if took < Duration::from_millis(SLOW_ROUND_LOG_MS) || recently {
            return;
        }
        self.logged_at = Some(ended);
        let (shard, detail) = describe();
        let mut line = format!("{shard}: a round took {} ms (over {SLOW_ROUND_LOG_MS} ms):", took.as_millis());
        let mut from = started;
        for (index, &(name, until)) in phases.iter().enumerate() {
            let separator = if index == 0 { " " } else { ", " };
            let _ = write!(line, "{separator}{name} {} ms", until.saturating_duration_since(from).as_millis());
            from = until;
        }
        log::warn!("{line}; {detail}");
    }
}
