//! Zipf sampling for hot wallets: rank k in 1..=n is drawn with probability proportional to k^-s.
//!
//! Rejection-inversion (Hörmann and Derflinger, 1996): invert the integral H of the continuous
//! density h(x) = x^-s, round to the nearest rank and accept or redraw. It needs no table (a CDF table
//! for ten million accounts would be 80 MB) and costs a few logs and exps per draw, with an
//! acceptance rate close to one for every n and s.

use thiserror::Error;

use crate::rng::SplitMix64;

/// Redraws before a sample gives up and keeps its last candidate. The acceptance probability is above
/// 0.5 for every exponent, so the chance of reaching this bound is below 2^-64: it only bounds the loop.
const SAMPLE_ATTEMPTS_MAX: u32 = 64;
/// Below this magnitude the series expansions of log1p(x)/x and expm1(x)/x are used: the quotients
/// lose all precision near zero.
const SERIES_THRESHOLD: f64 = 1e-8;

#[derive(Debug, Error, PartialEq)]
pub enum ZipfError {
    #[error("a Zipf distribution needs at least one rank")]
    NoRanks,
    #[error("the Zipf exponent must be finite and > 0, got {0}")]
    InvalidExponent(f64),
}

#[derive(Clone, Debug)]
pub struct ZipfSampler {
    ranks: u64,
    exponent: f64,
    h_integral_first: f64,
    h_integral_last: f64,
    /// Candidates closer than this to their rounded rank are accepted without evaluating H.
    squeeze: f64,
}

impl ZipfSampler {
    pub fn new(ranks: u64, exponent: f64) -> Result<ZipfSampler, ZipfError> {
        if ranks == 0 {
            return Err(ZipfError::NoRanks);
        }
        if !exponent.is_finite() || exponent <= 0.0 {
            return Err(ZipfError::InvalidExponent(exponent));
        }
        let mut sampler = ZipfSampler { ranks, exponent, h_integral_first: 0.0, h_integral_last: 0.0, squeeze: 0.0 };
        // The area under h for rank 1 is taken as h(1) = 1 exactly, so rank 1 gets its true weight.
        sampler.h_integral_first = sampler.h_integral(1.5) - 1.0;
        sampler.h_integral_last = sampler.h_integral(ranks as f64 + 0.5);
        sampler.squeeze = 2.0 - sampler.h_integral_inverse(sampler.h_integral(2.5) - sampler.h(2.0));
        Ok(sampler)
    }

    pub fn ranks(&self) -> u64 {
        self.ranks
    }

    /// A rank in `1..=ranks`; 1 is the most frequent.
    pub fn sample(&self, rng: &mut SplitMix64) -> u64 {
        let mut rank = 1;
        for _ in 0..SAMPLE_ATTEMPTS_MAX {
            let u = self.h_integral_last + rng.unit_f64() * (self.h_integral_first - self.h_integral_last);
            let x = self.h_integral_inverse(u);
            rank = ((x + 0.5) as u64).clamp(1, self.ranks);
            let k = rank as f64;
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return rank;
            }
        }
        rank
    }

    /// The expected probability of `rank` (for tests and reports): k^-s / sum over all ranks.
    pub fn probability(&self, rank: u64) -> f64 {
        let total: f64 = (1..=self.ranks).map(|k| (k as f64).powf(-self.exponent)).sum();
        (rank as f64).powf(-self.exponent) / total
    }

    /// H(x) = (x^(1-s) - 1) / (1-s), written so that it stays exact as s approaches 1 (where H = ln x).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        expm1_over_x((1.0 - self.exponent) * log_x) * log_x
    }

    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    fn h_integral_inverse(&self, y: f64) -> f64 {
        // t below -1 can only come from rounding; log1p is undefined there.
        let t = (y * (1.0 - self.exponent)).max(-1.0);
        (log1p_over_x(t) * y).exp()
    }
}

fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > SERIES_THRESHOLD {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > SERIES_THRESHOLD {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(ranks: u64, exponent: f64, samples: u32, seed: u64) -> Vec<u32> {
        let sampler = ZipfSampler::new(ranks, exponent).expect("valid parameters");
        let mut rng = SplitMix64::new(seed);
        let mut counts = vec![0u32; ranks as usize + 1];
        for _ in 0..samples {
            let rank = sampler.sample(&mut rng);
            assert!((1..=ranks).contains(&rank), "rank {rank} out of 1..={ranks}");
            counts[rank as usize] += 1;
        }
        counts
    }

    #[test]
    fn frequencies_match_the_zipf_law() {
        const SAMPLES: u32 = 400_000;
        for exponent in [0.6, 1.0, 1.3, 2.0] {
            let ranks = 50;
            let sampler = ZipfSampler::new(ranks, exponent).expect("valid parameters");
            let counts = frequencies(ranks, exponent, SAMPLES, 11);
            let most = (1..=ranks as usize).max_by_key(|k| counts[*k]).expect("non-empty");
            assert_eq!(most, 1, "rank 1 is the hottest (s = {exponent})");
            for rank in 1..=10u64 {
                let expected = sampler.probability(rank) * SAMPLES as f64;
                let seen = counts[rank as usize] as f64;
                // 5 % relative, or 5 standard deviations for the rarer ranks.
                let tolerance = (0.05 * expected).max(5.0 * expected.sqrt());
                assert!(
                    (seen - expected).abs() <= tolerance,
                    "s = {exponent}, rank {rank}: seen {seen}, expected {expected:.0}"
                );
            }
        }
    }

    #[test]
    fn large_rank_counts_need_no_table_and_stay_in_range() {
        let counts = frequencies(1_000_000, 1.1, 100_000, 3);
        assert!(counts[1] > counts[2] && counts[2] > counts[10]);
    }

    #[test]
    fn rejects_meaningless_parameters() {
        assert_eq!(ZipfSampler::new(0, 1.0).err(), Some(ZipfError::NoRanks));
        assert!(matches!(ZipfSampler::new(10, 0.0), Err(ZipfError::InvalidExponent(_))));
        assert!(matches!(ZipfSampler::new(10, f64::NAN), Err(ZipfError::InvalidExponent(_))));
    }
}
