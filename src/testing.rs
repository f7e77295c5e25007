//! Support for the unit tests that draw fault points from a seed.

/// `WALRS_TEST_SEED` when set (a test prints its seed, so a failure replays), else the clock.
pub(crate) fn seed() -> u64 {
    match std::env::var("WALRS_TEST_SEED") {
        Ok(seed) => seed.parse().expect("WALRS_TEST_SEED is a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}
