//! A small, fast, seedable generator for workload choices (accounts, amounts, shares).
//!
//! SplitMix64: one add and three multiply-xorshift steps per draw, no allocation, and a full period of
//! 2^64. Workload sampling needs speed and reproducibility from a seed, not cryptographic quality.

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..bound` by multiply-shift (Lemire): the bias is below 2^-32 for any bound that
    /// fits in 32 bits, far under what a load generator can notice, and it costs no division.
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0, "an empty range has no member");
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The SplitMix64 output function; also a good 64-bit hash for deriving seeds.
pub fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A threshold for `next_u64() < threshold` that is true with probability `share` (0..=1).
pub fn share_threshold(share: f64) -> u64 {
    if share >= 1.0 {
        u64::MAX
    } else if share <= 0.0 {
        0
    } else {
        (share * u64::MAX as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let value = rng.below(10);
            assert!(value < 10);
            seen[value as usize] += 1;
        }
        assert!(seen.iter().all(|count| (800..1200).contains(count)), "{seen:?}");
    }

    #[test]
    fn unit_is_in_the_half_open_interval() {
        let mut rng = SplitMix64::new(9);
        for _ in 0..10_000 {
            let value = rng.unit_f64();
            assert!((0.0..1.0).contains(&value));
        }
    }
}
