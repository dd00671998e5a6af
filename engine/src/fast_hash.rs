//! A small multiply-mix hasher for the state machine's integer keys (account ids, transfer ids).
//!
//! std's SipHash costs ~20 ns per u64 key; at 10 M transfers/s per core we have ~100 ns for the whole
//! transfer, so the account and id indexes on the hot path use this instead. The mix is a 64x64->128
//! multiply folded back to 64 bits (high half XOR low half), which spreads sequential client ids over
//! all output bits; the indexes take both their home slot and their tag from the high 32 bits.
//!
//! `FastBuildHasher` is fixed-keyed (the account index: account ids are chosen by the operator's
//! clients, and a slow partition is their own). Transfer ids are keyed: [`keyed_hash_u128`] mixes a
//! per-data-directory random key in first, so nobody who does not know the key can choose ids that
//! pile into one probe run of the id table. Hashes never reach an outcome, so replicas with different
//! keys still decide alike.

use std::hash::{BuildHasher, Hasher};

/// Odd constant with well-spread bits (2^64 / golden ratio).
const MIX_MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;
/// Initial state and finaliser key: arbitrary, fixed (digits of pi).
const SEED: u64 = 0x243F_6A88_85A3_08D3;
const FINISH_KEY: u64 = 0x1319_8A2E_0370_7344;

#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = (a as u128) * (b as u128);
    (product as u64) ^ ((product >> 64) as u64)
}

/// Multiply-mix hasher; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct FastHasher {
    state: u64,
}

impl Default for FastHasher {
    fn default() -> Self {
        FastHasher { state: SEED }
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only reached for non-integer keys, which the engine does not use on the hot path.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline(always)]
    fn write_u32(&mut self, value: u32) {
        self.write_u64(value as u64);
    }

    #[inline(always)]
    fn write_u64(&mut self, value: u64) {
        self.state = folded_multiply(self.state ^ value, MIX_MULTIPLIER);
    }

    #[inline(always)]
    fn write_u128(&mut self, value: u128) {
        // Two rounds rather than one multiply of the halves against each other: a single
        // `lo * (hi ^ K)` collapses to 0 for every `lo` when `hi == K`.
        self.write_u64(value as u64);
        self.write_u64((value >> 64) as u64);
    }

    #[inline(always)]
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    #[inline(always)]
    fn finish(&self) -> u64 {
        folded_multiply(self.state, FINISH_KEY)
    }
}

/// The hash of `value` under `key` (see the module documentation).
#[inline(always)]
pub fn keyed_hash_u128(key: u64, value: u128) -> u64 {
    let mut hasher = FastHasher { state: folded_multiply(SEED ^ key, MIX_MULTIPLIER) };
    hasher.write_u128(value);
    hasher.finish()
}

/// `BuildHasher` for `HashMap<K, V, FastBuildHasher>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastBuildHasher;

impl BuildHasher for FastBuildHasher {
    type Hasher = FastHasher;

    #[inline(always)]
    fn build_hasher(&self) -> FastHasher {
        FastHasher::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn hash_u64(value: u64) -> u64 {
        FastBuildHasher.hash_one(value)
    }

    #[test]
    fn sequential_keys_spread_over_low_and_high_bits() {
        // hashbrown indexes buckets with the low bits and tags them with the top 7 bits: both must vary
        // for sequential ids, or a map of client ids 1..n degenerates into long probe chains.
        let keys = 1..=4096u64;
        let low: HashSet<u64> = keys.clone().map(|k| hash_u64(k) & 0xFFF).collect();
        let high: HashSet<u64> = keys.map(|k| hash_u64(k) >> 57).collect();
        assert!(low.len() > 2400, "low 12 bits too clustered: {} distinct of 4096", low.len());
        assert_eq!(high.len(), 128, "every top-7-bit tag value should appear");
    }

    #[test]
    fn u128_halves_are_not_interchangeable() {
        let a = FastBuildHasher.hash_one(1u128 | (2u128 << 64));
        let b = FastBuildHasher.hash_one(2u128 | (1u128 << 64));
        assert_ne!(a, b);
        assert_eq!(a, FastBuildHasher.hash_one(1u128 | (2u128 << 64)), "hashing is deterministic");
    }
}
