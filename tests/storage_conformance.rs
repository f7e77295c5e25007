//! Storage conformance: the contract of the partition log, run against every engine.
//!
//! - a model test (proptest): random append / read / sync / roll / truncate_prefix /
//!   truncate_suffix / reopen against an in-memory model; every read equals the model;
//! - a crash test: a fault-injecting engine crashes at a random write, tears the unsynced
//!   tail of every file and may wreck the index files; after reopen every synced batch is
//!   there byte for byte, nothing corrupt is readable and appends go on at the right offset;
//! - recovery tests: torn, zero-padded and corrupt tails; missing, short, long and garbage
//!   indexes; corruption in a sealed segment; retention and rolling.

use std::future::Future;
use std::path::Path;

use proptest::prelude::*;
use walrs::storage::faulty::FaultyEngine;
use walrs::storage::{
    Engine, Error, Log, LogLimits, PortableEngine, Record, index_file_name, store_file_name,
};

fn small_config() -> LogLimits {
    LogLimits {
        record_bytes_max: 300,
        batch_bytes_max: 2000,
        segment_bytes_max: 2500,
        segment_ms: 0,
        index_bytes_max: 16 * 6,
        retention_bytes: 0,
        retention_ms: 0,
    }
}

fn record(seed: u64, value_len: usize) -> Record {
    Record {
        offset: 0,
        timestamp_ms: 1_700_000_000_000 + seed as i64,
        key: if seed.is_multiple_of(3) {
            vec![]
        } else {
            format!("k{seed}").into_bytes()
        },
        value: (0..value_len).map(|i| (seed as usize + i) as u8).collect(),
        headers: if seed.is_multiple_of(4) {
            vec![("h".into(), seed.to_le_bytes().to_vec())]
        } else {
            vec![]
        },
    }
}

fn batch(seed: u64, count: usize, value_len: usize) -> Vec<Record> {
    (0..count as u64)
        .map(|i| record(seed * 1000 + i, value_len))
        .collect()
}

/// Reads every readable record from `from` on.
async fn read_all<E: Engine>(log: &mut Log<E>, from: u64) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    let mut next = from;
    while next < log.high_watermark() {
        let batches = log.read(next, 4096).await?;
        assert!(
            !batches.is_empty(),
            "read at {next} below the high watermark {} returned nothing",
            log.high_watermark()
        );
        for b in batches {
            next = b.header.next_offset();
            out.extend(b.records);
        }
    }
    Ok(out)
}

fn same_records(got: &[Record], want: &[Record]) {
    assert_eq!(got.len(), want.len(), "record count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.offset, g.timestamp_ms, &g.key, &g.value, &g.headers),
            (w.offset, w.timestamp_ms, &w.key, &w.value, &w.headers)
        );
    }
}

// ---------------------------------------------------------------- model test

#[derive(Debug, Clone)]
enum Op {
    Append { count: usize, value_len: usize },
    Read { at_permille: u64, max_bytes: u64 },
    Sync,
    Roll,
    TruncatePrefix { at_permille: u64 },
    TruncateSuffix { batch_permille: u64 },
    Reopen,
    AppendTooLarge,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 0usize..250).prop_map(|(count, value_len)| Op::Append { count, value_len }),
        4 => (0u64..=1000, 1u64..3000).prop_map(|(at_permille, max_bytes)| Op::Read { at_permille, max_bytes }),
        2 => Just(Op::Sync),
        1 => Just(Op::Roll),
        1 => (0u64..=1000).prop_map(|at_permille| Op::TruncatePrefix { at_permille }),
        1 => (0u64..=1000).prop_map(|batch_permille| Op::TruncateSuffix { batch_permille }),
        1 => Just(Op::Reopen),
        1 => Just(Op::AppendTooLarge),
    ]
}

/// The model: every batch ever kept, with its records (offsets filled in).
#[derive(Default)]
struct Model {
    /// (base offset, the records of the batch still kept).
    batches: Vec<(u64, Vec<Record>)>,
    start: u64,
    high_watermark: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.start, |(_, b)| b.last().unwrap().offset + 1)
            .max(self.start)
    }
    fn records_from(&self, from: u64) -> Vec<Record> {
        self.batches
            .iter()
            .flat_map(|(_, b)| b)
            .filter(|r| r.offset >= from && r.offset < self.high_watermark)
            .cloned()
            .collect()
    }
}

async fn model_case<E: Engine>(engine: E, dir: &Path, ops: Vec<Op>) {
    let config = small_config();
    let (mut log, _) = Log::open(engine.clone(), dir, config.clone())
        .await
        .unwrap();
    let mut model = Model::default();
    let mut seed = 0;
    for op in ops {
        match op {
            Op::Append { count, value_len } => {
                seed += 1;
                let mut records = batch(seed, count, value_len);
                let end_before = model.end();
                let base = log.append(&records).await.unwrap();
                assert_eq!(base, end_before, "append base offset");
                for (i, r) in records.iter_mut().enumerate() {
                    r.offset = base + i as u64;
                }
                model.batches.push((base, records));
                // An append that rolls the segment seals (syncs) what came before it.
                let hw = log.high_watermark();
                assert!(
                    hw == model.high_watermark || hw == end_before,
                    "high watermark {hw} after append"
                );
                model.high_watermark = hw;
            }
            Op::AppendTooLarge => {
                let end = log.end_offset();
                let err = log.append(&batch(0, 1, 400)).await.unwrap_err();
                assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
                let err = log.append(&batch(0, 9, 250)).await.unwrap_err();
                assert!(matches!(err, Error::BatchTooLarge { .. }), "{err}");
                assert!(matches!(log.append(&[]).await, Err(Error::EmptyBatch)));
                assert_eq!(log.end_offset(), end, "a refused batch changes nothing");
            }
            Op::Read {
                at_permille,
                max_bytes,
            } => {
                let (start, end) = (model.start, model.end());
                let from = start + (end - start) * at_permille / 1000;
                let batches = log.read(from, max_bytes).await.unwrap();
                let got: Vec<Record> = batches.iter().flat_map(|b| b.records.clone()).collect();
                let want = model.records_from(from);
                assert_eq!(
                    batches.is_empty(),
                    want.is_empty(),
                    "read at {from}: empty iff nothing readable"
                );
                if batches.len() > 1 {
                    let bytes: u64 = batches.iter().map(|b| u64::from(b.header.batch_len)).sum();
                    assert!(
                        bytes <= max_bytes,
                        "read of {bytes} bytes exceeded max_bytes {max_bytes}"
                    );
                }
                same_records(&got, &want[..got.len()]);
                // The read ends on a batch boundary.
                if let Some(last) = got.last() {
                    assert!(
                        model
                            .batches
                            .iter()
                            .any(|(_, b)| b.last().unwrap().offset == last.offset)
                    );
                }
                assert!(matches!(
                    log.read(end + 1, 100).await,
                    Err(Error::OffsetOutOfRange { .. })
                ));
                if start > 0 {
                    assert!(matches!(
                        log.read(start - 1, 100).await,
                        Err(Error::OffsetOutOfRange { .. })
                    ));
                }
            }
            Op::Sync => {
                assert_eq!(log.sync().await.unwrap(), model.end());
                model.high_watermark = model.end();
            }
            Op::Roll => {
                log.roll().await.unwrap();
                model.high_watermark = model.end();
            }
            Op::TruncatePrefix { at_permille } => {
                let (start, end) = (model.start, model.end());
                let before = start + (end - start) * at_permille / 1000;
                log.truncate_prefix(before).await.unwrap();
                model.start = model.start.max(before);
                model
                    .batches
                    .retain(|(_, b)| b.last().unwrap().offset >= before);
                for (_, b) in &mut model.batches {
                    b.retain(|r| r.offset >= before);
                }
            }
            Op::TruncateSuffix { batch_permille } => {
                let candidates: Vec<usize> = (0..model.batches.len())
                    .filter(|&i| model.batches[i].0 >= model.start)
                    .collect();
                if candidates.is_empty() {
                    continue;
                }
                let i = candidates[(candidates.len() - 1) * batch_permille as usize / 1000];
                let from = model.batches[i].0;
                if model.batches[i].1.len() > 1 {
                    let inside = from + 1;
                    assert!(matches!(
                        log.truncate_suffix(inside).await,
                        Err(Error::NotBatchBoundary { .. })
                    ));
                }
                log.truncate_suffix(from).await.unwrap();
                model.batches.truncate(i);
                model.high_watermark = model.high_watermark.min(from);
            }
            Op::Reopen => {
                log.close().await.unwrap();
                log = Log::open(engine.clone(), dir, config.clone())
                    .await
                    .unwrap()
                    .0;
                model.high_watermark = model.end();
            }
        }
        assert_eq!(log.start_offset(), model.start, "start offset");
        assert_eq!(log.end_offset(), model.end(), "end offset");
        assert_eq!(log.high_watermark(), model.high_watermark, "high watermark");
    }
    log.sync().await.unwrap();
    model.high_watermark = model.end();
    let start = model.start;
    same_records(
        &read_all(&mut log, start).await.unwrap(),
        &model.records_from(start),
    );
    log.close().await.unwrap();
}

// ---------------------------------------------------------------- crash test

#[derive(Debug, Clone)]
enum CrashOp {
    Append { count: usize, value_len: usize },
    Sync,
    Roll,
    TruncatePrefix { at_permille: u64 },
}

fn crash_op_strategy() -> impl Strategy<Value = CrashOp> {
    prop_oneof![
        8 => (1usize..5, 0usize..250).prop_map(|(count, value_len)| CrashOp::Append { count, value_len }),
        3 => Just(CrashOp::Sync),
        1 => Just(CrashOp::Roll),
        1 => (0u64..=1000).prop_map(|at_permille| CrashOp::TruncatePrefix { at_permille }),
    ]
}

/// What may happen to index files in the crash: they are a cache and must never matter.
#[derive(Debug, Clone, Copy)]
enum IndexDamage {
    None,
    Delete,
    Shorten,
    Garbage,
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        // xorshift64*: deterministic per case, good enough to pick tear points.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn damage_indexes(dir: &Path, damage: IndexDamage, rng: &mut Rng) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "index") {
            continue;
        }
        match damage {
            IndexDamage::None => {}
            IndexDamage::Delete => std::fs::remove_file(&path).unwrap(),
            IndexDamage::Shorten => {
                let len = std::fs::metadata(&path).unwrap().len();
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(rng.below(len + 1)).unwrap();
            }
            IndexDamage::Garbage => {
                let mut bytes = std::fs::read(&path).unwrap();
                for _ in 0..8 {
                    if !bytes.is_empty() {
                        let at = rng.below(bytes.len() as u64) as usize;
                        bytes[at] = rng.below(256) as u8;
                    }
                }
                std::fs::write(&path, bytes).unwrap();
            }
        }
    }
}

async fn crash_case<E: Engine>(
    make_engine: impl Fn() -> E,
    dir: &Path,
    ops: Vec<CrashOp>,
    crash_at: u64,
    seed: u64,
    damage: IndexDamage,
) {
    let config = small_config();
    let faulty = FaultyEngine::new(make_engine());
    let (mut log, _) = Log::open(faulty.clone(), dir, config.clone())
        .await
        .unwrap();
    faulty.crash_after(crash_at);
    // Every batch whose append was attempted, in offset order, and how far a sync covered.
    let mut attempted: Vec<Record> = Vec::new();
    let mut durable_end = 0u64;
    let mut start = 0u64;
    let mut next_seed = 0;
    for op in ops {
        let result = match op {
            CrashOp::Append { count, value_len } => {
                next_seed += 1;
                let mut records = batch(next_seed, count, value_len);
                let base = log.end_offset();
                for (i, r) in records.iter_mut().enumerate() {
                    r.offset = base + i as u64;
                }
                let result = log.append(&records).await.map(|_| ());
                if !matches!(result, Err(Error::Poisoned { .. })) {
                    attempted.extend(records);
                }
                result
            }
            CrashOp::Sync => log.sync().await.map(|hw| durable_end = hw),
            CrashOp::Roll => log.roll().await.map(|()| durable_end = log.end_offset()),
            CrashOp::TruncatePrefix { at_permille } => {
                let before = start + (log.end_offset() - start) * at_permille / 1000;
                let result = log.truncate_prefix(before).await;
                if result.is_ok() {
                    start = before;
                }
                result
            }
        };
        if let Err(e) = result {
            assert!(faulty.has_crashed(), "an error without a crash: {e}");
        }
    }
    drop(log);
    let mut rng = Rng(seed | 1);
    faulty.tear(|n| rng.below(n)).unwrap();
    damage_indexes(dir, damage, &mut rng);

    let (mut log, _) = Log::open(make_engine(), dir, config).await.unwrap();
    let end = log.end_offset();
    assert!(
        end >= durable_end,
        "synced offsets lost: end {end} < durable {durable_end}"
    );
    assert!(
        end <= attempted.len() as u64,
        "end {end} beyond anything written ({})",
        attempted.len()
    );
    let recovered_start = log.start_offset();
    assert!(
        recovered_start >= start || recovered_start >= durable_end.min(start),
        "start went back: {recovered_start} < {start}"
    );
    let got = read_all(&mut log, recovered_start)
        .await
        .expect("everything recovered is readable");
    same_records(&got, &attempted[recovered_start as usize..end as usize]);
    // Appends go on at the right offset.
    let base = log.append(&batch(999, 2, 10)).await.unwrap();
    assert_eq!(base, end);
    log.sync().await.unwrap();
    assert_eq!(log.read(base, 10_000).await.unwrap()[0].records.len(), 2);
    log.close().await.unwrap();
}

// ---------------------------------------------------------------- recovery tests

async fn reopen<E: Engine>(engine: &E, dir: &Path) -> (Log<E>, walrs::storage::OpenReport) {
    Log::open(engine.clone(), dir, small_config())
        .await
        .unwrap()
}

async fn write_synced<E: Engine>(engine: &E, dir: &Path, batches: usize) -> Vec<Record> {
    let (mut log, _) = reopen(engine, dir).await;
    for i in 0..batches {
        log.append(&batch(i as u64 + 1, 3, 100)).await.unwrap();
    }
    log.sync().await.unwrap();
    let all = read_all(&mut log, 0).await.unwrap();
    log.close().await.unwrap();
    all
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn last_store(dir: &Path) -> std::path::PathBuf {
    let mut stores: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    stores.sort();
    stores.pop().unwrap()
}

async fn torn_tails_are_cut<E: Engine>(engine: E, dir: &Path) {
    let all = write_synced(&engine, dir, 2).await;
    let store = last_store(dir);
    let good_len = std::fs::metadata(&store).unwrap().len();
    // A short batch: the first 30 bytes of a valid one.
    let valid = walrs::storage::format::encode_batch(all.len() as u64, 0, 0, &batch(7, 1, 10));
    for tail in [
        valid[..30].to_vec(),
        valid[..valid.len() - 1].to_vec(),
        {
            let mut bad_crc = valid.clone();
            *bad_crc.last_mut().unwrap() ^= 1;
            bad_crc
        },
        {
            let mut bad_len = valid.clone();
            bad_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            bad_len
        },
    ] {
        append_bytes(&store, &tail);
        let (mut log, report) = reopen(&engine, dir).await;
        assert_eq!(report.recovery.truncated_bytes, tail.len() as u64);
        assert!(report.recovery.stopped_by.is_some());
        assert_eq!(log.end_offset(), all.len() as u64);
        same_records(&read_all(&mut log, 0).await.unwrap(), &all);
        log.close().await.unwrap();
        assert_eq!(std::fs::metadata(&store).unwrap().len(), good_len);
    }
    // Zero padding (preallocation, DMA) is the end, not corruption.
    append_bytes(&store, &[0u8; 8192]);
    let (mut log, report) = reopen(&engine, dir).await;
    assert_eq!(report.recovery.truncated_bytes, 8192);
    assert_eq!(report.recovery.stopped_by, None);
    let base = log.append(&batch(50, 1, 5)).await.unwrap();
    assert_eq!(base, all.len() as u64);
    log.close().await.unwrap();
}

async fn bad_indexes_are_rebuilt<E: Engine>(engine: E, dir: &Path) {
    // Several segments: the small config rolls every ~2.5 KB.
    let all = write_synced(&engine, dir, 12).await;
    let stores: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "index"))
            .collect();
        v.sort();
        v
    };
    assert!(
        stores.len() >= 3,
        "expected several segments, got {}",
        stores.len()
    );
    let mut rng = Rng(7);
    for damage in [
        IndexDamage::Delete,
        IndexDamage::Shorten,
        IndexDamage::Garbage,
    ] {
        damage_indexes(dir, damage, &mut rng);
        let (mut log, _) = reopen(&engine, dir).await;
        same_records(&read_all(&mut log, 0).await.unwrap(), &all);
        // Reads from the middle of every batch work too.
        for r in all.iter().step_by(5) {
            let got = log.read(r.offset, 1).await.unwrap();
            assert_eq!(got[0].records[0].offset, r.offset);
        }
        log.close().await.unwrap();
    }
    // An index longer than the store (pointing past its end) on the active segment.
    let active_index = stores.last().unwrap().clone();
    let mut bytes = std::fs::read(&active_index).unwrap();
    bytes.extend_from_slice(&[0xab; 64]);
    std::fs::write(&active_index, bytes).unwrap();
    let store = last_store(dir);
    let len = std::fs::metadata(&store).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&store)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (mut log, report) = reopen(&engine, dir).await;
    assert!(report.recovery.truncated_bytes > 0 || report.recovery.index_rebuilt);
    let end = log.end_offset();
    same_records(&read_all(&mut log, 0).await.unwrap(), &all[..end as usize]);
    log.close().await.unwrap();
}

async fn corruption_in_a_sealed_segment_is_reported<E: Engine>(engine: E, dir: &Path) {
    let all = write_synced(&engine, dir, 12).await;
    let first = dir.join(store_file_name(0));
    let mut bytes = std::fs::read(&first).unwrap();
    let position = bytes.len() - 10;
    bytes[position] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let (mut log, _) = reopen(&engine, dir).await;
    let err = read_all(&mut log, 0).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Corrupt { .. }), "{message}");
    assert!(
        message.contains(&store_file_name(0)),
        "error names the segment: {message}"
    );
    assert!(
        message.contains("position"),
        "error names the position: {message}"
    );
    // Later segments are unaffected.
    let later = all.last().unwrap().offset;
    assert_eq!(
        log.read(later, 100).await.unwrap()[0]
            .records
            .last()
            .unwrap()
            .offset,
        later
    );
    log.close().await.unwrap();
}

async fn retention_and_rolling<E: Engine>(engine: E, dir: &Path) {
    let mut config = small_config();
    config.retention_bytes = 6000;
    let (mut log, _) = Log::open(engine.clone(), dir, config.clone())
        .await
        .unwrap();
    for i in 0..30 {
        log.append(&batch(i + 1, 3, 100)).await.unwrap();
    }
    log.sync().await.unwrap();
    let end = log.end_offset();
    let segments = log.segment_count();
    let deleted = log.apply_retention(walrs::storage::now_ms()).await.unwrap();
    assert!(deleted > 0 && log.segment_count() == segments - deleted);
    assert!(log.size_bytes() <= 6000, "{} bytes kept", log.size_bytes());
    assert!(log.start_offset() > 0);
    assert_eq!(log.end_offset(), end);
    // By age: everything sealed is older than 1 ms in the far future; the active segment stays.
    log.close().await.unwrap();
    config.retention_bytes = 0;
    config.retention_ms = 1;
    config.segment_ms = 1;
    let (mut log, _) = Log::open(engine.clone(), dir, config.clone())
        .await
        .unwrap();
    let far_future = walrs::storage::now_ms() + 3_600_000;
    log.apply_retention(far_future).await.unwrap();
    assert_eq!(log.segment_count(), 1, "only the active segment is left");
    assert_eq!(log.end_offset(), end, "offsets are never reused");
    assert!(
        log.roll_if_aged(far_future).await.unwrap(),
        "an old non-empty active segment rolls"
    );
    assert_eq!(log.segment_count(), 2);
    let base = log.append(&batch(77, 1, 1)).await.unwrap();
    assert_eq!(base, end);
    let start = log.start_offset();
    assert!(start > 0);
    log.close().await.unwrap();
    let (log, _) = Log::open(engine.clone(), dir, config).await.unwrap();
    assert_eq!(
        log.start_offset(),
        start,
        "the start offset survives a restart"
    );
    assert_eq!(log.end_offset(), end + 1);
    log.close().await.unwrap();
}

async fn many_segments_open_without_reading_them<E: Engine>(engine: E, dir: &Path) {
    // 10,000 sealed segments written directly (no index files), then the active one.
    std::fs::create_dir_all(dir).unwrap();
    let segments = 10_000u64;
    for base in 0..segments {
        let bytes = walrs::storage::format::encode_batch(base, 0, 0, &batch(base, 1, 8));
        std::fs::write(dir.join(store_file_name(base)), bytes).unwrap();
    }
    let (mut log, report) = reopen(&engine, dir).await;
    assert_eq!(report.segments, segments as usize);
    assert_eq!(log.end_offset(), segments);
    assert!(
        !dir.join(index_file_name(17)).exists(),
        "sealed segments are not touched on open"
    );
    let got = log.read(4321, 100).await.unwrap();
    assert_eq!(got[0].records[0].offset, 4321);
    log.close().await.unwrap();
}

// ---------------------------------------------------------------- engines

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walrs-conformance")
        .tempdir()
        .unwrap()
}

/// Runs a test body on the engine's executor.
fn run_portable<F, Fut>(body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    futures::executor::block_on(body());
}

/// Runs a test body inside a glommio executor, as a uring shard would.
#[cfg(target_os = "linux")]
fn run_uring<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(512 << 10)
        .spawn(body)
        .expect("glommio executor starts")
        .join()
        .expect("test body ran");
}

macro_rules! conformance {
    ($module:ident, $engine:expr, $run:path, $cases:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn torn_tails_are_cut_and_zero_padding_is_the_end() {
                let dir = temp_dir();
                let path = dir.path().to_owned();
                $run(move || async move { torn_tails_are_cut($engine, &path).await });
            }

            #[test]
            fn missing_short_long_and_garbage_indexes_are_rebuilt() {
                let dir = temp_dir();
                let path = dir.path().to_owned();
                $run(move || async move { bad_indexes_are_rebuilt($engine, &path).await });
            }

            #[test]
            fn corruption_in_a_sealed_segment_is_never_served() {
                let dir = temp_dir();
                let path = dir.path().to_owned();
                $run(move || async move { corruption_in_a_sealed_segment_is_reported($engine, &path).await });
            }

            #[test]
            fn retention_by_bytes_and_age_and_rolling_by_age() {
                let dir = temp_dir();
                let path = dir.path().to_owned();
                $run(move || async move { retention_and_rolling($engine, &path).await });
            }

            #[test]
            fn ten_thousand_segments_open_lazily() {
                let dir = temp_dir();
                let path = dir.path().to_owned();
                $run(move || async move { many_segments_open_without_reading_them($engine, &path).await });
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: $cases, ..ProptestConfig::default() })]

                #[test]
                fn model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
                    let dir = temp_dir();
                    let path = dir.path().to_owned();
                    $run(move || async move { model_case($engine, &path, ops).await });
                }

                #[test]
                fn crash(
                    ops in proptest::collection::vec(crash_op_strategy(), 1..50),
                    crash_at in 0u64..80,
                    seed in any::<u64>(),
                    damage in prop_oneof![Just(IndexDamage::None), Just(IndexDamage::Delete), Just(IndexDamage::Shorten), Just(IndexDamage::Garbage)],
                ) {
                    let dir = temp_dir();
                    let path = dir.path().to_owned();
                    $run(move || async move { crash_case(|| $engine, &path, ops, crash_at, seed, damage).await });
                }
            }
        }
    };
}

conformance!(portable, PortableEngine::new(), run_portable, 256);
#[cfg(target_os = "linux")]
conformance!(
    uring,
    walrs::storage::uring::UringEngine::new(),
    run_uring,
    128
);

/// Both engines write the same bytes: a partition written by one reads back with the other.
#[cfg(target_os = "linux")]
mod cross_engine {
    use super::*;
    use walrs::storage::uring::UringEngine;

    async fn read_back<E: Engine>(engine: E, path: &Path) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        let (mut log, report) = reopen(&engine, path).await;
        assert_eq!(
            report.recovery,
            Default::default(),
            "a clean close leaves nothing to repair"
        );
        let all = read_all(&mut log, 0).await.unwrap();
        log.close().await.unwrap();
        all.into_iter()
            .map(|r| (r.offset, r.key, r.value))
            .collect()
    }

    fn write_then_read(write_with_uring: bool) {
        let dir = temp_dir();
        let path = dir.path().to_owned();
        let written = {
            let path = path.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let body = move || async move {
                let all = if write_with_uring {
                    write_synced(&UringEngine::new(), &path, 12).await
                } else {
                    write_synced(&PortableEngine::new(), &path, 12).await
                };
                tx.send(
                    all.into_iter()
                        .map(|r| (r.offset, r.key, r.value))
                        .collect::<Vec<_>>(),
                )
                .unwrap();
            };
            if write_with_uring {
                run_uring(body)
            } else {
                run_portable(body)
            }
            rx.recv().unwrap()
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let body = move || async move {
            let all = if write_with_uring {
                read_back(PortableEngine::new(), &path).await
            } else {
                read_back(UringEngine::new(), &path).await
            };
            tx.send(all).unwrap();
        };
        if write_with_uring {
            run_portable(body)
        } else {
            run_uring(body)
        }
        assert_eq!(rx.recv().unwrap(), written);
    }

    #[test]
    fn written_by_uring_read_by_portable() {
        write_then_read(true);
    }

    #[test]
    fn written_by_portable_read_by_uring() {
        write_then_read(false);
    }
}
