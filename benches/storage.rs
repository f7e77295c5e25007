//! Storage benchmarks: partition-log appends (1 KiB records, batches of 1, 16 and 256, with
//! and without an fdatasync per batch), sequential reads, and reopening a log of 10,000
//! segments (alone, and with the idempotent producers' rebuild: the headers of its last
//! 10,000 batches, one per segment, read back); beside each append case, in the same run, the raw baseline: plain `write` (+
//! `fdatasync`) of the same bytes to a file in the same directory.
//!
//! Run: `cargo bench --bench storage` (or `make bench-storage`). Results go to BENCHMARKS.md.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::executor::block_on;
use walrs::storage::{self, Log, LogLimits, PortableEngine, Record, store_file_name};

const RECORD_BYTES: usize = 1024;

fn records(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            offset: 0,
            timestamp_ms: 1_700_000_000_000,
            key: bytes::Bytes::new(),
            value: vec![i as u8; RECORD_BYTES].into(),
            headers: vec![],
        })
        .collect()
}

fn bench_dir() -> tempfile::TempDir {
    // Under target/, on the same disk as the project (not a tmpfs /tmp).
    std::fs::create_dir_all("target/bench-tmp").unwrap();
    tempfile::Builder::new()
        .prefix("storage")
        .tempdir_in("target/bench-tmp")
        .unwrap()
}

fn appends(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for batch_records in [1usize, 16, 256] {
        let batch = records(batch_records);
        let encoded = storage::encode_batch(0, 0, 0, &batch);
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        for sync in [false, true] {
            let mode = if sync { "fdatasync" } else { "nosync" };
            group.bench_function(
                BenchmarkId::new(format!("log/{mode}"), batch_records),
                |b| {
                    let dir = bench_dir();
                    let config = LogLimits {
                        segment_bytes_max: 1 << 30,
                        ..LogLimits::default()
                    };
                    let (mut log, _) =
                        block_on(Log::open(PortableEngine::new(), dir.path(), config)).unwrap();
                    b.iter(|| {
                        block_on(async {
                            log.append(&batch).await.unwrap();
                            if sync {
                                log.sync().await.unwrap();
                            }
                        })
                    });
                    block_on(log.close()).unwrap();
                },
            );
            group.bench_function(
                BenchmarkId::new(format!("raw/{mode}"), batch_records),
                |b| {
                    let dir = bench_dir();
                    let mut file = std::fs::File::create(dir.path().join("raw")).unwrap();
                    b.iter(|| {
                        file.write_all(&encoded).unwrap();
                        if sync {
                            file.sync_data().unwrap();
                        }
                    });
                },
            );
        }
    }
    group.finish();
}

fn reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let dir = bench_dir();
    let (mut log, _) = block_on(Log::open(
        PortableEngine::new(),
        dir.path(),
        LogLimits::default(),
    ))
    .unwrap();
    let batch = records(16);
    let batches = 2000u64; // 32 MiB of records, a few segments' worth of index entries
    block_on(async {
        for _ in 0..batches {
            log.append(&batch).await.unwrap();
        }
        let durable = log.sync().await.unwrap();
        log.set_commit(durable).unwrap();
    });
    let total_bytes = log.size_bytes();
    group.throughput(Throughput::Bytes(total_bytes));
    group.bench_function("log/sequential_1MiB_reads", |b| {
        b.iter(|| {
            block_on(async {
                let mut next = 0;
                while next < log.high_watermark() {
                    let got = log.read(next, 1 << 20).await.unwrap();
                    next = got.last().unwrap().header.next_offset();
                }
            })
        })
    });
    // Baseline: the same bytes read back sequentially with pread, in 1 MiB chunks.
    let store = std::fs::File::open(dir.path().join(store_file_name(0))).unwrap();
    group.bench_function("raw/sequential_1MiB_pread", |b| {
        let mut buf = vec![0u8; 1 << 20];
        b.iter(|| {
            let mut position = 0;
            while position < total_bytes {
                let n = store.read_at(&mut buf, position).unwrap();
                position += n as u64;
            }
        })
    });
    block_on(log.close()).unwrap();
    group.finish();
}

fn reopen(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let dir = bench_dir();
    for base in 0..10_000u64 {
        let bytes = storage::encode_batch(base, 0, 0, &records(1));
        std::fs::write(dir.path().join(store_file_name(base)), bytes).unwrap();
    }
    group.bench_function("log/10000_segments", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (log, report) = block_on(Log::open(
                    PortableEngine::new(),
                    dir.path(),
                    LogLimits::default(),
                ))
                .unwrap();
                total += started.elapsed();
                assert_eq!(report.segments, 10_000);
                block_on(log.close()).unwrap();
            }
            total
        })
    });
    group.finish();
}

/// Opening a partition of 10,000 one-batch segments whose batches carry producer stamps,
/// then reading the headers of its last 10,000 batches (`storage.producer_rebuild_batches_max`
/// at its default): the cost a restart pays per partition to rebuild its producer windows,
/// in the worst case of the bound (every batch in a segment of its own, so every segment is
/// opened).
fn reopen_with_producers(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let dir = bench_dir();
    let batch = records(1);
    for base in 0..10_000u64 {
        let meta = storage::BatchMeta {
            producer_id: 1 + base % 100,
            producer_seq: base / 100,
            ..storage::BatchMeta::default()
        };
        let mut bytes = vec![0u8; storage::batch_len(&batch)];
        storage::encode_batch_into(&mut bytes, base, &meta, &batch);
        std::fs::write(dir.path().join(store_file_name(base)), bytes).unwrap();
    }
    group.bench_function("log/10000_segments_and_producer_rebuild", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (mut log, _) = block_on(Log::open(
                    PortableEngine::new(),
                    dir.path(),
                    LogLimits::default(),
                ))
                .unwrap();
                let end = log.end_offset();
                let headers = block_on(log.tail_headers(end, 10_000)).unwrap();
                total += started.elapsed();
                assert_eq!(headers.len(), 10_000);
                assert_eq!(headers[9_999].producer_seq, 99);
                block_on(log.close()).unwrap();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, appends, reads, reopen, reopen_with_producers);
criterion_main!(benches);
