//! Latency recording: microsecond HdrHistograms, the percentile summary the reports show,
//! and the HdrHistogram "percentile distribution" text (`.hgrm`) that HdrHistogram's
//! plotter and wrk2 users read.
//!
//! Coordinated omission is handled by the callers, not here: with a target rate a sample is
//! measured from the request's *intended* send time, so a stall counts against every request
//! that should have gone out during it (as wrk2 and the OpenMessaging Benchmark do). This
//! file only records what it is given; it never drops a sample (values past the highest
//! trackable one are clamped to it, and counted as such in `max`).

use std::io::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency tracked exactly: one hour, in microseconds.
const HIGHEST_US: u64 = 3_600_000_000;
/// Significant decimal digits kept (0.1% resolution).
const SIGFIGS: u8 = 3;

/// A new, empty latency histogram (microseconds).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIGS).expect("static histogram bounds are valid")
}

/// A small histogram for the live progress line's per-tick p99: one minute, two digits
/// (it is reset every tick, so it must be cheap to clear).
pub fn window_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("static histogram bounds are valid")
}

/// Records `latency`, clamped to the trackable range.
pub fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, histogram.high());
    histogram.saturating_record(us);
}

/// The percentiles every report shows, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
    /// Samples behind the figures.
    pub count: u64,
}

impl Percentiles {
    /// The summary of `h`; `None` when it holds no sample.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        })
    }
}

/// Writes `h` as HdrHistogram percentile distribution text, values in milliseconds (the
/// `outputValueUnitScalingRatio` of 1000 that HdrHistogram's tools use for µs recordings).
pub fn write_hgrm(out: &mut impl Write, h: &Histogram<u64>) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value_ms = v.value_iterated_to() as f64 / 1000.0;
        let quantile = v.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(
                out,
                "{value_ms:>12.3} {quantile:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value_ms:>12.3} {quantile:>14.12} {total:>10}")?;
        }
    }
    let stdev = h.stdev() / 1000.0;
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {stdev:>12.3}]",
        h.mean() / 1000.0
    )?;
    writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        (2 * 10u32.pow(u32::from(SIGFIGS))).next_power_of_two()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_hgrm_agree_with_the_samples() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let p = Percentiles::of(&h).unwrap();
        assert_eq!(p.count, 10_000);
        assert!((4990..=5010).contains(&p.p50), "{p:?}");
        assert!((9890..=9910).contains(&p.p99), "{p:?}");
        assert!(p.max >= 9_990 && p.max <= 10_010, "{p:?}");
        assert!(Percentiles::of(&histogram()).is_none());

        let mut text = Vec::new();
        write_hgrm(&mut text, &h).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("       Value"), "{text}");
        assert!(text.contains("Total count    =        10000"), "{text}");
        let last = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.is_empty())
            .unwrap();
        assert!(last.contains("1.000000000000"), "{last}");
    }

    #[test]
    fn a_huge_latency_is_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(100_000));
        record(&mut h, Duration::ZERO);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= HIGHEST_US);
    }
}
