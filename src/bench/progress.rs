//! The live progress line (indicatif, on standard error when it is a terminal): the
//! current append rate and p99 over the last tick, and the phase (warm-up or measuring).
//!
//! It only reads the producers' live counters; it never affects the measurement beyond
//! taking their interval histograms' locks once per tick.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

use super::load::{Clock, Live};

const TICK: Duration = Duration::from_millis(500);

/// A running progress line; [`Progress::finish`] clears it.
pub struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

/// Whether a progress line would be seen: not `--quiet`, and standard error is a terminal.
pub fn shown(quiet: bool) -> bool {
    !quiet && !ProgressBar::new_spinner().is_hidden()
}

impl Progress {
    /// Starts the line; with nobody to see it (`live.windows_on` off) no ticker runs.
    pub fn start(label: String, clock: Clock, live: Arc<Live>) -> Progress {
        if !live.windows_on {
            return Progress {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .expect("the template is valid"),
        );
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                let now = Instant::now();
                let acked = live.acked_records.load(Relaxed);
                let rate = (acked - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, acked);
                let window = live.take_window();
                let p99 = if window.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.3} ms", window.value_at_quantile(0.99) as f64 / 1000.0)
                };
                let phase = if now < clock.measure_from {
                    "warm-up"
                } else {
                    "measuring"
                };
                ticking.set_message(format!(
                    "{label} {phase}: {rate:>10.0} records/s, p99 {p99}, {acked} records acked"
                ));
                ticking.tick();
            }
        });
        Progress {
            bar,
            ticker: Some(ticker),
        }
    }

    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}
