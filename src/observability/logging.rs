//! Log set-up and rate-limited warnings.
//!
//! Logs go to standard error, as text or as one JSON object per line (the event's fields
//! flattened beside `timestamp`, `level`, `target` and `message`, the current span's fields
//! under `span`). `RUST_LOG`, when set, overrides the configured filter.
//! Must never: log a record key or payload; callers log sizes and offsets only.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{LogConfig, LogFormat};

/// Installs the global tracing subscriber: `format` (the `--log-format` flag, else
/// `[log] format`), filter `RUST_LOG` if set, else `[log] filter`.
pub fn init_logging(log: &LogConfig, format: Option<LogFormat>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("RUST_LOG={from_env:?} is not a tracing filter: {e}"))?,
        _ => EnvFilter::try_new(&log.filter)
            .map_err(|e| format!("log.filter {:?} is not a tracing filter: {e}", log.filter))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format.unwrap_or(log.format) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Lets a warning through at most once per period, and counts what it held back. Lock-free,
/// so it works in a `static` shared by every thread.
pub struct RateLimit {
    period_ms: u64,
    /// Milliseconds since [`epoch`] of the last warning let through, plus one (0 = never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

/// The process's monotonic time origin for rate limits.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RateLimit {
    pub const fn new(period: Duration) -> RateLimit {
        RateLimit {
            period_ms: period.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one)` when a warning may be logged now, else `None`
    /// (and this one is counted as held back).
    pub fn check(&self) -> Option<u64> {
        self.check_at(epoch().elapsed().as_millis() as u64)
    }

    /// [`RateLimit::check`] at `now_ms`, milliseconds on a monotonic clock (the clock is the
    /// caller's, so that tests can drive it).
    fn check_at(&self, now_ms: u64) -> Option<u64> {
        let now = now_ms + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.period_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match self
            .last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => Some(self.suppressed.swap(0, Ordering::Relaxed)),
            Err(_) => {
                // Another thread let its warning through at this moment.
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_lets_one_through_per_period_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_millis(200));
        assert_eq!(limit.check_at(1_000), Some(0));
        assert_eq!(limit.check_at(1_000), None);
        assert_eq!(limit.check_at(1_199), None, "still inside the period");
        assert_eq!(
            limit.check_at(1_200),
            Some(2),
            "one period on, the next one reports the two held back"
        );
        assert_eq!(limit.check_at(1_201), None);
        assert_eq!(limit.check_at(5_000), Some(1));
    }

    #[test]
    fn the_first_warning_at_time_zero_gets_through() {
        let limit = RateLimit::new(Duration::from_secs(1));
        assert_eq!(limit.check_at(0), Some(0));
        assert_eq!(limit.check_at(999), None);
    }
}
