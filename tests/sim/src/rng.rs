//! Small deterministic PRNG (splitmix64): the whole run derives from one u64 seed.

#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, bound); bound must be > 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        self.next_u64() % bound
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

impl Rng {
    /// Fisher-Yates: a uniformly random order (messages due at the same time arrive in any order).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A network partition of nodes `1..=nodes`: a random minority side, returned as the pairs
    /// `(a, b)`, `a < b`, that can no longer talk.
    pub fn cut(&mut self, nodes: u64) -> std::collections::BTreeSet<(u64, u64)> {
        let mut side = std::collections::BTreeSet::new();
        for _ in 0..1 + self.below(nodes / 2 + 1) {
            side.insert(1 + self.below(nodes));
        }
        let mut cut = std::collections::BTreeSet::new();
        for &a in &side {
            for b in (1..=nodes).filter(|b| !side.contains(b)) {
                cut.insert((a.min(b), a.max(b)));
            }
        }
        cut
    }
}

/// Order-sensitive 64-bit mixing hash used for state-machine digests (FNV-1a style with a final
/// splitmix; collisions only matter for the checker, never for safety of the code under test).
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = seed ^ 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut rng = Rng::new(hash);
    rng.next_u64()
}
