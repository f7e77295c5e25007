//! Per-hop timestamps of one append (issue 14): where a durable append's latency goes, as
//! wall time between hops rather than CPU samples (an off-CPU view).
//!
//! Owns: the switch (`WALRS_HOP_TRACE=1` in the environment, read once per process), the
//! stamps an append carries from the gRPC service through its shard and back ([`Trace`]),
//! the stamps a storage engine leaves on its own thread for the sync in progress
//! ([`io_stamp`], [`take_io_stamps`]), and the process-wide histograms of the time between
//! consecutive stamps ([`report`]).
//!
//! Must never: cost anything on the append path when off. An untraced append carries
//! `Trace(None)` (one null pointer); every stamp is a branch on it or on one relaxed load of
//! the switch: no clock read, no allocation, no lock. When on, every traced append costs an
//! `Arc` of [`HOPS`] atomics, a clock read per hop and one short lock at the end (to record
//! the intervals): a diagnostic mode for benchmarks, not for production.
//!
//! The hops, in the order an append passes them ([`Hop`]); each stamp closes the interval
//! named after it. A hop that an engine does not have (the portable engine writes in
//! `append`, so it has no separate write completion) leaves its stamp at 0, and its time is
//! counted in the next hop that has one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

/// The stamps of one append, in the order it passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Hop {
    /// The service holds the decoded request (tonic and prost have decoded it).
    Received = 0,
    /// Checked (name, ACL, limits), converted, budgeted, routed and handed to the shard's
    /// queue.
    Queued,
    /// The shard loop took it off its queue: the shard's wake-up (or its wait behind the
    /// group before).
    Picked,
    /// Applied to the log: partition lookup, producer check, batch encoded into the file's
    /// tail (the portable engine's `pwrite` included).
    Encoded,
    /// The group is gathered and its partition's sync starts.
    SyncStarted,
    /// uring: the tail's O_DIRECT write, from its request to the task seeing its completion.
    WriteDone,
    /// The `fdatasync`, from its request to its completion (absent in the `dsync` write
    /// mode, where the write itself is durable).
    SyncDone,
    /// The ack is on the reply channel.
    AckSent,
    /// The service's task on tokio resumed with the ack.
    TokioWoke,
    /// The response is handed to the response stream (tonic encodes and sends it next).
    ResponseQueued,
}

/// How many stamps a trace has.
pub const HOPS: usize = Hop::ResponseQueued as usize + 1;

/// Names of the intervals, each ending at the stamp of the same index.
pub const HOP_NAMES: [&str; HOPS] = [
    "received (after gRPC decode)",
    "check, convert, route, hand-over to the shard queue",
    "shard wake-up (queue to shard loop)",
    "apply and encode into the log (portable: + pwrite)",
    "group gathered, sync starts",
    "write: request to completion (uring)",
    "fdatasync: request to completion",
    "ack onto the reply channel",
    "tokio wake-up (reply channel to service task)",
    "response handed to the stream (tonic encodes and sends next)",
];

static ENABLED: OnceLock<bool> = OnceLock::new();
/// A copy of `ENABLED` that the storage engines read with one relaxed load.
static ENABLED_FAST: AtomicBool = AtomicBool::new(false);

/// Whether hop tracing is on in this process (`WALRS_HOP_TRACE=1`, read once).
pub fn enabled() -> bool {
    *ENABLED.get_or_init(|| {
        let on = std::env::var("WALRS_HOP_TRACE").is_ok_and(|v| v == "1");
        ENABLED_FAST.store(on, Ordering::Relaxed);
        on
    })
}

/// The clock every stamp is read against: nanoseconds since the first stamp of the process.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // 0 means "no stamp", so the epoch itself reads as 1 ns.
    (epoch.elapsed().as_nanos() as u64).max(1)
}

/// The stamps of one traced append; `None` when tracing is off. Cheap to clone (an `Arc`):
/// the service keeps one clone while the shard stamps the other.
#[derive(Debug, Clone, Default)]
pub struct Trace(Option<Arc<[AtomicU64; HOPS]>>);

impl Trace {
    /// A new trace with [`Hop::Received`] stamped when tracing is on, else `Trace(None)`.
    pub fn start() -> Trace {
        if !enabled() {
            return Trace(None);
        }
        let trace = Trace(Some(Arc::new(std::array::from_fn(|_| AtomicU64::new(0)))));
        trace.stamp(Hop::Received);
        trace
    }

    /// Whether this append is traced.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Stamps `hop` now.
    pub fn stamp(&self, hop: Hop) {
        if let Some(stamps) = &self.0 {
            stamps[hop as usize].store(now_ns(), Ordering::Relaxed);
        }
    }

    /// Sets the engine's stamps of the sync that covered this append.
    pub fn set_io(&self, io: &IoStamps) {
        if let Some(stamps) = &self.0 {
            for (hop, at) in [
                (Hop::SyncStarted, io.sync_started),
                (Hop::WriteDone, io.write_done),
                (Hop::SyncDone, io.sync_done),
            ] {
                stamps[hop as usize].store(at, Ordering::Relaxed);
            }
        }
    }

    /// Stamps [`Hop::ResponseQueued`] and records every interval of this trace.
    pub fn finish(&self) {
        let Some(stamps) = &self.0 else { return };
        self.stamp(Hop::ResponseQueued);
        let at: [u64; HOPS] = std::array::from_fn(|i| stamps[i].load(Ordering::Relaxed));
        let mut histograms = histograms().lock().unwrap_or_else(PoisonError::into_inner);
        let mut previous = at[Hop::Received as usize];
        for (hop, &stamp) in at.iter().enumerate().skip(1) {
            if stamp == 0 || stamp < previous {
                // Absent here (or out of order: a stamp of an earlier group); counted in the
                // next hop that has one.
                continue;
            }
            histograms.hops[hop].saturating_record(stamp - previous);
            previous = stamp;
        }
        histograms
            .total
            .saturating_record(at[Hop::ResponseQueued as usize] - at[Hop::Received as usize]);
    }
}

/// What a storage engine stamped during one partition's sync (0: not stamped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStamps {
    pub sync_started: u64,
    pub write_done: u64,
    pub sync_done: u64,
}

thread_local! {
    static IO: std::cell::Cell<IoStamps> = const { std::cell::Cell::new(IoStamps {
        sync_started: 0,
        write_done: 0,
        sync_done: 0,
    }) };
}

/// The engine-side stamps, left on the shard's thread for the sync in progress.
#[derive(Debug, Clone, Copy)]
pub enum IoHop {
    SyncStarted,
    WriteDone,
    SyncDone,
}

/// Stamps `hop` of the current sync on this thread; one relaxed load when tracing is off.
pub fn io_stamp(hop: IoHop) {
    if !ENABLED_FAST.load(Ordering::Relaxed) {
        return;
    }
    let at = now_ns();
    IO.with(|io| {
        let mut stamps = io.get();
        match hop {
            IoHop::SyncStarted => {
                stamps = IoStamps {
                    sync_started: at,
                    ..IoStamps::default()
                }
            }
            IoHop::WriteDone => stamps.write_done = at,
            IoHop::SyncDone => stamps.sync_done = at,
        }
        io.set(stamps);
    });
}

/// Takes (and clears) this thread's engine-side stamps; all zero when tracing is off.
pub fn take_io_stamps() -> IoStamps {
    if !ENABLED_FAST.load(Ordering::Relaxed) {
        return IoStamps::default();
    }
    IO.with(|io| io.replace(IoStamps::default()))
}

struct Histograms {
    hops: Vec<hdrhistogram::Histogram<u64>>,
    total: hdrhistogram::Histogram<u64>,
}

/// Longest interval recorded as itself: a minute, in ns (longer ones saturate).
const INTERVAL_NS_MAX: u64 = 60_000_000_000;

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, INTERVAL_NS_MAX, 3)
        .expect("1 ns to a minute at 3 significant figures is a valid histogram")
}

fn histograms() -> &'static Mutex<Histograms> {
    static HISTOGRAMS: OnceLock<Mutex<Histograms>> = OnceLock::new();
    HISTOGRAMS.get_or_init(|| {
        Mutex::new(Histograms {
            hops: (0..HOPS).map(|_| histogram()).collect(),
            total: histogram(),
        })
    })
}

/// Forgets every interval recorded so far (the bench calls it when its warm-up ends).
pub fn reset() {
    if !enabled() {
        return;
    }
    let mut histograms = histograms().lock().unwrap_or_else(PoisonError::into_inner);
    histograms.hops.iter_mut().for_each(|h| h.reset());
    histograms.total.reset();
}

/// The recorded intervals as a Markdown table (µs: p50, p90, p99, mean, samples), or `None`
/// when tracing is off.
pub fn report() -> Option<String> {
    if !enabled() {
        return None;
    }
    let histograms = histograms().lock().unwrap_or_else(PoisonError::into_inner);
    let us = |ns: u64| ns as f64 / 1000.0;
    let row = |name: &str, h: &hdrhistogram::Histogram<u64>| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            us(h.value_at_quantile(0.5)),
            us(h.value_at_quantile(0.9)),
            us(h.value_at_quantile(0.99)),
            h.mean() / 1000.0,
            h.len()
        )
    };
    let mut out = String::from("| hop | p50 µs | p90 µs | p99 µs | mean µs | samples |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    for (hop, name) in HOP_NAMES.iter().enumerate().skip(1) {
        if histograms.hops[hop].is_empty() {
            out.push_str(&format!("| {name} | – | – | – | – | 0 |\n"));
        } else {
            out.push_str(&row(name, &histograms.hops[hop]));
        }
    }
    out.push_str(&row(
        "**server total (received to response handed over)**",
        &histograms.total,
    ));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untraced_append_carries_nothing() {
        let trace = Trace::default();
        assert!(!trace.is_on());
        trace.stamp(Hop::Queued);
        trace.finish();
        assert_eq!(std::mem::size_of::<Trace>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn missing_stamps_fold_into_the_next_hop() {
        let stamps: Arc<[AtomicU64; HOPS]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let trace = Trace(Some(stamps.clone()));
        trace.stamp(Hop::Received);
        trace.stamp(Hop::Queued);
        trace.set_io(&IoStamps {
            sync_started: now_ns(),
            write_done: 0,
            sync_done: now_ns(),
        });
        trace.finish();
        let at: Vec<u64> = stamps.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert!(at[Hop::WriteDone as usize] == 0 && at[Hop::SyncDone as usize] > 0);
        assert!(at[Hop::ResponseQueued as usize] >= at[Hop::SyncDone as usize]);
    }
}
