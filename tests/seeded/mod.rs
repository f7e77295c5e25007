//! Seeded randomness for the tests that draw fault points: the seed (printed by the test,
//! `WALRS_TEST_SEED` replays it) and a small generator that replays the same draws from it.

/// xorshift64*: small, and a seed replays the same draws. The seed must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// A draw in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// `WALRS_TEST_SEED` when set, else the clock; odd, so never 0.
pub fn seed() -> u64 {
    match std::env::var("WALRS_TEST_SEED") {
        Ok(s) => s.parse().expect("WALRS_TEST_SEED is a u64"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
    }
}
