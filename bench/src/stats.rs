//! The aggregator: folds every answered batch into latency histograms, per-second throughput and
//! per-code counts, and renders the once-a-second progress line. It runs on the main thread and gets
//! one message per batch, so its cost does not grow with the transfer rate.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use net::types::ResultCode;

use crate::worker::{BatchOutcome, RESULT_CODES};

/// Latencies are recorded in microseconds, from 1 µs up to an hour, with 3 significant digits.
pub const LATENCY_US_MAX: u64 = 3_600 * 1_000_000;
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid for hdrhistogram")
}

pub struct Aggregator {
    warmup: Duration,
    target_per_second: Option<u64>,
    /// Every batch, warmup included: what the progress line shows.
    pub latency_all_us: Histogram<u64>,
    /// Batches scheduled after the warmup: what the report shows. One count per transfer.
    pub latency_measured_us: Histogram<u64>,
    /// Transfers answered during each second of the run (by answer time).
    pub per_second: Vec<u64>,
    pub codes: [u64; RESULT_CODES],
    pub batch_errors: BTreeMap<String, u64>,
    pub transfers_answered: u64,
    pub transfers_measured: u64,
    pub batches_answered: u64,
    /// Answer time of the last measured batch, since the run's start.
    pub last_measured_answer: Duration,
    pub expected_failures: u64,
    pub expected_failures_insufficient: u64,
    pub expected_failures_accepted: u64,
    progress_answered: u64,
    progress_at: Duration,
}

impl Aggregator {
    pub fn new(warmup: Duration, target_per_second: Option<u64>) -> Aggregator {
        Aggregator {
            warmup,
            target_per_second,
            latency_all_us: new_latency_histogram(),
            latency_measured_us: new_latency_histogram(),
            per_second: Vec::new(),
            codes: [0; RESULT_CODES],
            batch_errors: BTreeMap::new(),
            transfers_answered: 0,
            transfers_measured: 0,
            batches_answered: 0,
            last_measured_answer: Duration::ZERO,
            expected_failures: 0,
            expected_failures_insufficient: 0,
            expected_failures_accepted: 0,
            progress_answered: 0,
            progress_at: Duration::ZERO,
        }
    }

    pub fn absorb(&mut self, outcome: &BatchOutcome) {
        if let Some(code) = outcome.batch_error {
            *self.batch_errors.entry(format!("batch_{code:?}")).or_default() += 1;
            return;
        }
        let transfers = outcome.transfers as u64;
        let latency_us = outcome.latency_us.clamp(1, LATENCY_US_MAX);
        self.latency_all_us.saturating_record_n(latency_us, transfers);
        if outcome.measured {
            self.latency_measured_us.saturating_record_n(latency_us, transfers);
            self.transfers_measured += transfers;
            self.last_measured_answer = self.last_measured_answer.max(outcome.answered_at);
        }
        let second = outcome.answered_at.as_secs() as usize;
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += transfers;
        for (total, count) in self.codes.iter_mut().zip(outcome.codes) {
            *total += count as u64;
        }
        self.transfers_answered += transfers;
        self.batches_answered += 1;
        self.expected_failures += outcome.expected_failures as u64;
        self.expected_failures_insufficient += outcome.expected_failures_insufficient as u64;
        self.expected_failures_accepted += outcome.expected_failures_accepted as u64;
    }

    /// Throughput over the measured phase: transfers answered for batches scheduled after the warmup,
    /// over the time from the warmup's end to the last such answer.
    pub fn measured_per_second(&self) -> f64 {
        let window = self.last_measured_answer.saturating_sub(self.warmup).as_secs_f64();
        if window > 0.0 {
            self.transfers_measured as f64 / window
        } else {
            0.0
        }
    }

    /// Non-ok result codes and batch-level errors, by name.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        let mut errors = self.batch_errors.clone();
        for code in ResultCode::ALL {
            let count = self.codes[code as usize];
            if code != ResultCode::Ok && count > 0 {
                errors.insert(code.name().to_string(), count);
            }
        }
        errors
    }

    /// One line: elapsed, throughput since the last line vs target, p50/p99 so far, errors by code.
    pub fn progress_line(&mut self, elapsed: Duration) -> String {
        let interval = elapsed.saturating_sub(self.progress_at).as_secs_f64();
        let answered = self.transfers_answered - self.progress_answered;
        let rate = if interval > 0.0 { answered as f64 / interval } else { 0.0 };
        self.progress_answered = self.transfers_answered;
        self.progress_at = elapsed;
        let target = self.target_per_second.map_or("closed loop".to_string(), |rate| format!("target {rate}"));
        let phase = if elapsed < self.warmup { " warmup" } else { "" };
        let errors = self.errors();
        let errors = if errors.is_empty() {
            "none".to_string()
        } else {
            errors.iter().map(|(name, count)| format!("{name}={count}")).collect::<Vec<_>>().join(" ")
        };
        format!(
            "[{:6.1}s{phase}] {:>10.0} transfers/s ({target}) p50 {} p99 {} errors: {errors}",
            elapsed.as_secs_f64(),
            rate,
            format_us(self.latency_all_us.value_at_quantile(0.5)),
            format_us(self.latency_all_us.value_at_quantile(0.99)),
        )
    }
}

/// Microseconds for humans: `850us`, `12.3ms`, `1.20s`.
pub fn format_us(value_us: u64) -> String {
    if value_us < 1_000 {
        format!("{value_us}us")
    } else if value_us < 1_000_000 {
        format!("{:.1}ms", value_us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", value_us as f64 / 1_000_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(answered_ms: u64, latency_us: u64, transfers: u32, measured: bool) -> BatchOutcome {
        let mut codes = [0; RESULT_CODES];
        codes[ResultCode::Ok as usize] = transfers - 1;
        codes[ResultCode::InsufficientFunds as usize] = 1;
        BatchOutcome {
            answered_at: Duration::from_millis(answered_ms),
            latency_us,
            transfers,
            measured,
            codes,
            expected_failures: 1,
            expected_failures_insufficient: 1,
            expected_failures_accepted: 0,
            batch_error: None,
        }
    }

    #[test]
    fn warmup_batches_count_as_answered_but_not_measured() {
        let mut aggregator = Aggregator::new(Duration::from_secs(1), Some(1_000));
        aggregator.absorb(&outcome(500, 100, 10, false));
        aggregator.absorb(&outcome(1_500, 300, 10, true));
        aggregator.absorb(&outcome(2_000, 500, 10, true));
        assert_eq!(aggregator.transfers_answered, 30);
        assert_eq!(aggregator.transfers_measured, 20);
        assert_eq!(aggregator.latency_measured_us.len(), 20);
        assert_eq!(aggregator.latency_measured_us.min(), 300);
        assert_eq!(aggregator.per_second, vec![10, 10, 10]);
        assert!((aggregator.measured_per_second() - 20.0).abs() < 1e-9, "20 transfers over 1 s");
        assert_eq!(aggregator.errors().get("insufficient_funds"), Some(&3));
        let line = aggregator.progress_line(Duration::from_secs(2));
        assert!(line.contains("target 1000") && line.contains("insufficient_funds=3"), "{line}");
    }
}
