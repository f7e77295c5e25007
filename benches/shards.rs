//! Shard benchmark: durable appends through the `ShardSet` bridge from tokio tasks, on the
//! uring and the portable engine, beside the raw baseline (one thread: `write` + `fdatasync`
//! of the same bytes per batch) measured in the same run.
//!
//! For 1 and 64 concurrent appenders and batches of 1 and 100 records of 1 KiB, it prints a
//! markdown table: appends/s, MB/s, fdatasyncs/s, batches per fdatasync, and p50/p99/p99.9
//! append latency (hdrhistogram, from send to durable ack).
//!
//! Run: `cargo bench --bench shards` (or `make bench-shards`); `WALRS_BENCH_SECS` sets the
//! seconds per case (default 3); `WALRS_BENCH_ONLY=uring/64/100` runs that one shard case
//! alone (for a profiler).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use walrs::shard::{EngineChoice, ShardOptions, ShardSet};
use walrs::storage::{self, Record};

const RECORD_BYTES: usize = 1024;

struct Row {
    system: String,
    appenders: usize,
    batch_records: usize,
    appends_per_s: f64,
    mb_per_s: f64,
    fsyncs_per_s: f64,
    batches_per_fsync: f64,
    latency: Histogram<u64>,
}

fn records(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000,
            value: vec![i as u8; RECORD_BYTES].into(),
            ..Record::default()
        })
        .collect()
}

fn bench_dir() -> tempfile::TempDir {
    std::fs::create_dir_all("target/bench-tmp").unwrap();
    tempfile::Builder::new()
        .prefix("shards")
        .tempdir_in("target/bench-tmp")
        .unwrap()
}

async fn run_shards(
    engine: EngineChoice,
    appenders: usize,
    batch_records: usize,
    secs: f64,
) -> Row {
    let dir = bench_dir();
    let mut options = ShardOptions::new(dir.path());
    options.engine = engine;
    options.shard_count = 1;
    options.io_memory_bytes = 2 << 20;
    let set = ShardSet::start(options).unwrap();
    set.create_topic("bench", 1).await.unwrap();
    let before = set.stats(0);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let batch = Arc::new(records(batch_records));
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let set = set.clone();
            let batch = batch.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).unwrap();
                let mut appends = 0u64;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    set.append("bench", 0, batch.to_vec()).await.unwrap();
                    latency.record(sent.elapsed().as_micros() as u64).unwrap();
                    appends += 1;
                }
                (appends, latency)
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let mut appends = 0;
    for task in tasks {
        let (n, h) = task.await.unwrap();
        appends += n;
        latency.add(h).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = set.stats(0);
    let fsyncs = (after.fsyncs - before.fsyncs) as f64;
    let engine_name = set.engine_name();
    set.shutdown().await.unwrap();
    Row {
        system: format!("wal.rs {engine_name}"),
        appenders,
        batch_records,
        appends_per_s: appends as f64 / elapsed,
        mb_per_s: (appends as usize * batch_records * RECORD_BYTES) as f64 / elapsed / 1e6,
        fsyncs_per_s: fsyncs / elapsed,
        batches_per_fsync: appends as f64 / fsyncs.max(1.0),
        latency,
    }
}

fn run_raw(batch_records: usize, secs: f64) -> Row {
    let dir = bench_dir();
    let bytes = storage::encode_batch(0, 0, 0, &records(batch_records));
    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    let mut appends = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        let sent = Instant::now();
        file.write_all(&bytes).unwrap();
        file.sync_data().unwrap();
        latency.record(sent.elapsed().as_micros() as u64).unwrap();
        appends += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Row {
        system: "raw write+fdatasync".to_owned(),
        appenders: 1,
        batch_records,
        appends_per_s: appends as f64 / elapsed,
        mb_per_s: (appends as usize * batch_records * RECORD_BYTES) as f64 / elapsed / 1e6,
        fsyncs_per_s: appends as f64 / elapsed,
        batches_per_fsync: 1.0,
        latency,
    }
}

/// The storage log against raw `write` + `fdatasync`, alternating one of each per round so
/// that the disk's mood (fsync latency swings 10x on a shared machine) hits both alike.
/// Returns (log µs per durable append, raw µs per write+fdatasync).
fn paired_storage(batch_records: usize, rounds: usize) -> (f64, f64) {
    use walrs::storage::{Log, LogLimits, PortableEngine};
    let dir = bench_dir();
    let batch = records(batch_records);
    let bytes = storage::encode_batch(0, 0, 0, &batch);
    let mut raw = std::fs::File::create(dir.path().join("raw")).unwrap();
    let config = LogLimits {
        segment_bytes_max: 1 << 30,
        ..LogLimits::default()
    };
    let (mut log, _) = futures::executor::block_on(Log::open(
        PortableEngine::new(),
        &dir.path().join("log"),
        config,
    ))
    .unwrap();
    let (mut log_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let started = Instant::now();
        futures::executor::block_on(async {
            log.append(&batch).await.unwrap();
            log.sync().await.unwrap();
        });
        log_time += started.elapsed();
        let started = Instant::now();
        raw.write_all(&bytes).unwrap();
        raw.sync_data().unwrap();
        raw_time += started.elapsed();
    }
    futures::executor::block_on(log.close()).unwrap();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / rounds as f64;
    (per(log_time), per(raw_time))
}

fn main() {
    // `cargo test --all-targets` runs benches once with no `--bench`: keep that short.
    let benching = std::env::args().any(|a| a == "--bench");
    let secs: f64 = std::env::var("WALRS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benching { 3.0 } else { 0.2 });
    if let Ok(only) = std::env::var("WALRS_BENCH_ONLY") {
        let parts: Vec<&str> = only.split('/').collect();
        let engine = if parts[0] == "uring" {
            EngineChoice::Uring
        } else {
            EngineChoice::Portable
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let row = runtime.block_on(run_shards(
            engine,
            parts[1].parse().unwrap(),
            parts[2].parse().unwrap(),
            secs,
        ));
        println!(
            "{}: {:.0} appends/s, {:.1} MB/s, {:.1} batches per fdatasync",
            row.system, row.appends_per_s, row.mb_per_s, row.batches_per_fsync
        );
        return;
    }
    let rounds = if benching { 2000 } else { 20 };
    println!(
        "| storage log (portable), durable append | log µs | raw write+fdatasync µs | log / raw |"
    );
    println!("|---|---:|---:|---:|");
    for batch_records in [1usize, 16, 256] {
        let (log_us, raw_us) = paired_storage(batch_records, rounds);
        println!(
            "| {batch_records} × 1 KiB records, {rounds} alternating rounds | {log_us:.0} | {raw_us:.0} | {:.2} |",
            log_us / raw_us
        );
    }
    println!();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch_records in [1usize, 100] {
        rows.push(run_raw(batch_records, secs));
        for appenders in [1usize, 64] {
            for engine in [EngineChoice::Uring, EngineChoice::Portable] {
                rows.push(runtime.block_on(run_shards(engine, appenders, batch_records, secs)));
            }
        }
    }
    // Under `cargo test --all-targets` this is a smoke run: it checks that every row did
    // work and that group commit happened, not how fast (timed asserts flake here).
    for r in &rows {
        assert!(
            r.appends_per_s > 0.0 && !r.latency.is_empty(),
            "{} x{} x{}: no append completed",
            r.system,
            r.appenders,
            r.batch_records
        );
        if r.system.starts_with("wal.rs") && r.appenders == 64 {
            assert!(
                r.batches_per_fsync > 1.0,
                "{}: 64 appenders, but {:.1} batches per fdatasync (no group commit)",
                r.system,
                r.batches_per_fsync
            );
        }
    }
    if !benching {
        println!("smoke run (cargo test): every row completed appends; figures are not measured");
    }
    println!(
        "| system | appenders | records/batch | appends/s | MB/s | fdatasyncs/s | batches/fdatasync | p50 µs | p99 µs | p99.9 µs |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.0} | {:.1} | {} | {} | {} |",
            r.system,
            r.appenders,
            r.batch_records,
            r.appends_per_s,
            r.mb_per_s,
            r.fsyncs_per_s,
            r.batches_per_fsync,
            r.latency.value_at_quantile(0.50),
            r.latency.value_at_quantile(0.99),
            r.latency.value_at_quantile(0.999),
        );
    }
}
