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
use walrs::storage::{self, FaultyEngine};
use walrs::storage::{
    Engine, EpochStart, Error, Log, LogLimits, PortableEngine, Record, Vote, index_file_name,
    store_file_name,
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
            bytes::Bytes::new()
        } else {
            format!("k{seed}").into_bytes().into()
        },
        value: (0..value_len).map(|i| (seed as usize + i) as u8).collect(),
        headers: if seed.is_multiple_of(4) {
            vec![(
                "h".into(),
                bytes::Bytes::copy_from_slice(&seed.to_le_bytes()),
            )]
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
/// Syncs and commits everything synced, as a shard does under fsync durability.
async fn sync_commit<E: Engine>(log: &mut Log<E>) {
    let durable = log.sync().await.unwrap();
    log.set_commit(durable).unwrap();
}

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
    Commit { at_permille: u64 },
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
        2 => (0u64..=1000).prop_map(|at_permille| Op::Commit { at_permille }),
    ]
}

/// The model: every batch ever kept, with its records (offsets filled in).
#[derive(Default)]
struct Model {
    /// (base offset, the records of the batch still kept).
    batches: Vec<(u64, Vec<Record>)>,
    start: u64,
    /// The commit mark, which only the caller (this test) moves.
    high_watermark: u64,
    /// The durable end, which sync, roll, recovery and suffix truncation move.
    durable: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.start, |(_, b)| b.last().unwrap().offset + 1)
            .max(self.start)
    }
    /// What a read sees: whole batches below the commit mark (one the mark cuts is not
    /// readable yet).
    fn records_from(&self, from: u64) -> Vec<Record> {
        self.batches
            .iter()
            .filter(|(_, b)| b.last().unwrap().offset < self.high_watermark)
            .flat_map(|(_, b)| b)
            .filter(|r| r.offset >= from)
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
                let segments_before = log.segment_count();
                let base = log.append(&records).await.unwrap();
                assert_eq!(base, end_before, "append base offset");
                for (i, r) in records.iter_mut().enumerate() {
                    r.offset = base + i as u64;
                }
                model.batches.push((base, records));
                // Only an append that rolls the segment moves the durable end (the seal syncs
                // what came before it); no append moves the commit mark.
                let rolled = log.segment_count() > segments_before;
                let durable = log.durable_end();
                let expected = if rolled { end_before } else { model.durable };
                assert_eq!(
                    durable, expected,
                    "durable end after an append (rolled: {rolled})"
                );
                assert_eq!(
                    log.high_watermark(),
                    model.high_watermark,
                    "commit mark after an append"
                );
                model.durable = durable;
            }
            Op::Commit { at_permille } => {
                let end = model.end();
                let at = end * at_permille / 1000;
                assert!(matches!(
                    log.set_commit(end + 1),
                    Err(Error::OffsetOutOfRange { .. })
                ));
                log.set_commit(at).unwrap();
                model.high_watermark = at;
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
                let bytes: u64 = batches.iter().map(|b| u64::from(b.header.batch_len)).sum();
                if batches.len() > 1 {
                    assert!(
                        bytes <= max_bytes,
                        "read of {bytes} bytes exceeded max_bytes {max_bytes}"
                    );
                }
                // It stopped only where it had to: at the commit mark, or where the next
                // batch would not have fit.
                if let Some(last) = batches.last() {
                    let next = last.header.next_offset();
                    if next < log.high_watermark() {
                        // Empty when the next batch is not wholly below the commit mark
                        // (the model's commits may fall inside a batch).
                        let following = log.read(next, 1).await.unwrap();
                        let next_len = following
                            .first()
                            .map_or(u64::MAX / 2, |b| u64::from(b.header.batch_len));
                        assert!(
                            bytes + next_len > max_bytes,
                            "read at {from} stopped at {next} with {bytes} bytes, though the next \
                             batch ({next_len} bytes) fit max_bytes {max_bytes}"
                        );
                    }
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
                let hw = log.high_watermark();
                assert_eq!(log.sync().await.unwrap(), model.end());
                assert_eq!(log.high_watermark(), hw, "a sync moves no commit mark");
                model.durable = model.end();
                log.set_commit(log.durable_end()).unwrap();
                model.high_watermark = model.end();
            }
            Op::Roll => {
                log.roll().await.unwrap();
                model.durable = model.end();
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
                model.durable = from;
            }
            Op::Reopen => {
                log.close().await.unwrap();
                log = Log::open(engine.clone(), dir, config.clone())
                    .await
                    .unwrap()
                    .0;
                model.high_watermark = model.end();
                model.durable = model.end();
            }
        }
        assert_eq!(log.start_offset(), model.start, "start offset");
        assert_eq!(log.end_offset(), model.end(), "end offset");
        assert_eq!(log.high_watermark(), model.high_watermark, "commit mark");
        assert_eq!(log.durable_end(), model.durable, "durable end");
    }
    log.sync().await.unwrap();
    log.set_commit(log.durable_end()).unwrap();
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
    /// `new_term`: the batch is the first of a new leader term (a `leader_epochs` replace).
    Append {
        count: usize,
        value_len: usize,
        new_term: bool,
    },
    Sync,
    Roll,
    TruncatePrefix {
        at_permille: u64,
    },
    SaveVote,
    /// Close and open again through the faulty engine (directory, temp-file and index
    /// operations of open).
    Reopen,
}

fn crash_op_strategy() -> impl Strategy<Value = CrashOp> {
    prop_oneof![
        8 => (1usize..5, 0usize..250, prop::bool::weighted(0.15)).prop_map(|(count, value_len, new_term)| CrashOp::Append { count, value_len, new_term }),
        3 => Just(CrashOp::Sync),
        1 => Just(CrashOp::Roll),
        1 => (0u64..=1000).prop_map(|at_permille| CrashOp::TruncatePrefix { at_permille }),
        1 => Just(CrashOp::SaveVote),
        1 => Just(CrashOp::Reopen),
    ]
}

/// The engine operations the crash test must have crashed inside at least once.
const CRASH_SITES: &[&str] = &[
    "append",
    "sync",
    "create",
    "create_dir_all",
    "remove_if_exists",
    "replace_file_atomic",
    "open_mapped",
    "set_mapped_len",
];

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

/// One crash case; returns the operation the crash landed on (`None`: no crash). The
/// partition directory does not exist at first, so an early crash lands in its creation.
async fn crash_case<E: Engine>(
    make_engine: impl Fn() -> E,
    dir: &Path,
    ops: Vec<CrashOp>,
    crash_at: u64,
    seed: u64,
    damage: IndexDamage,
) -> Option<&'static str> {
    let config = small_config();
    let dir = &dir.join("partition");
    let faulty = FaultyEngine::new(make_engine());
    faulty.crash_after(crash_at);
    // Every batch whose append was attempted, in offset order, with its term; how far a sync
    // covered; the last saved vote and the one being saved when the crash came.
    let mut attempted: Vec<(Record, u64)> = Vec::new();
    let mut durable_end = 0u64;
    let mut start = 0u64;
    let mut next_seed = 0;
    let mut term = 0u64;
    let mut saved_vote = Vote::default();
    let mut vote_in_flight = None;
    // A prefix truncation the crash interrupted: its start may or may not have persisted.
    let mut start_in_flight = None;
    let mut log = match Log::open(faulty.clone(), dir, config.clone()).await {
        Ok((log, _)) => Some(log),
        Err(e) => {
            assert!(faulty.has_crashed(), "an error without a crash: {e}");
            None
        }
    };
    for op in ops {
        let Some(open) = log.as_mut() else { break };
        let result = match op {
            CrashOp::Append {
                count,
                value_len,
                new_term,
            } => {
                next_seed += 1;
                let mut records = batch(next_seed, count, value_len);
                let base = open.end_offset();
                for (i, r) in records.iter_mut().enumerate() {
                    r.offset = base + i as u64;
                }
                let batch_term = term + u64::from(new_term);
                let result = open.append_in_term(batch_term, &records).await.map(|_| ());
                if result.is_ok() {
                    term = batch_term;
                }
                if !matches!(result, Err(Error::Poisoned { .. })) {
                    attempted.extend(records.into_iter().map(|r| (r, batch_term)));
                }
                result
            }
            CrashOp::Sync => open.sync().await.map(|hw| durable_end = hw),
            CrashOp::Roll => open.roll().await.map(|()| durable_end = open.end_offset()),
            CrashOp::TruncatePrefix { at_permille } => {
                let before = start + (open.end_offset() - start) * at_permille / 1000;
                let crashed_before = faulty.has_crashed();
                let result = open.truncate_prefix(before).await;
                match &result {
                    Ok(()) => {
                        start = before;
                        start_in_flight = None;
                    }
                    // Only the truncation the crash landed in may have persisted its start;
                    // a later one fails before it changes anything.
                    Err(_) if !crashed_before && !matches!(result, Err(Error::Poisoned { .. })) => {
                        start_in_flight = Some(before)
                    }
                    Err(_) => {}
                }
                result
            }
            CrashOp::SaveVote => {
                let vote = Vote {
                    term: saved_vote.term + 1,
                    voted_for: Some(next_seed),
                };
                let result = open.save_vote(&vote).await;
                match &result {
                    Ok(()) => saved_vote = vote,
                    Err(_) => vote_in_flight = Some(vote),
                }
                result
            }
            CrashOp::Reopen => {
                let closed = log.take().expect("open").close().await;
                // A poisoned log closes without a sync: only a clean close makes all durable.
                if closed.is_ok() && !faulty.has_crashed() {
                    durable_end = attempted.len() as u64;
                }
                match closed {
                    Ok(()) => match Log::open(faulty.clone(), dir, config.clone()).await {
                        Ok((reopened, _)) => {
                            log = Some(reopened);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            assert!(faulty.has_crashed(), "an error without a crash: {e}");
        }
    }
    drop(log);
    let mut rng = Rng(seed | 1);
    faulty.tear(|n| rng.below(n)).unwrap();
    if dir.exists() {
        damage_indexes(dir, damage, &mut rng);
    }

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
    // Recovery computes the persisted start (the last truncation that completed, or the one
    // the crash interrupted, whose replace is atomic), capped at the recovered end.
    let recovered_start = log.start_offset();
    assert!(
        recovered_start == start.min(end)
            || start_in_flight.is_some_and(|s| recovered_start == s.min(end)),
        "start offset {recovered_start}: expected {} (or the interrupted {start_in_flight:?}), end {end}",
        start.min(end)
    );
    let got = read_all(&mut log, recovered_start)
        .await
        .expect("everything recovered is readable");
    let want: Vec<Record> = attempted[recovered_start as usize..end as usize]
        .iter()
        .map(|(r, _)| r.clone())
        .collect();
    same_records(&got, &want);
    // Every recovered record has the term it was written in.
    for (record, record_term) in &attempted[recovered_start as usize..end as usize] {
        assert_eq!(
            log.term_at(record.offset).unwrap(),
            *record_term,
            "term of offset {}",
            record.offset
        );
    }
    // The vote is the last one saved, or the one the crash interrupted: never a mix.
    let vote = log.vote().await.unwrap();
    assert!(
        vote == saved_vote || Some(vote) == vote_in_flight,
        "vote {vote:?}: neither saved {saved_vote:?} nor in flight {vote_in_flight:?}"
    );
    // Appends go on at the right offset, in a term at or above the last one.
    let last_term = log.last_term();
    let base = log
        .append_in_term(last_term + 1, &batch(999, 2, 10))
        .await
        .unwrap();
    assert_eq!(base, end);
    sync_commit(&mut log).await;
    assert_eq!(log.read(base, 10_000).await.unwrap()[0].records.len(), 2);
    assert_eq!(log.term_at(base).unwrap(), last_term + 1);
    log.close().await.unwrap();
    faulty.crashed_in()
}

/// One test body, boxed so that both engines' runners take it.
type CaseBody = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Runs `cases` crash cases and checks that each of [`CRASH_SITES`] was crashed inside.
fn crash_suite<E: Engine>(cases: u32, make_engine: fn() -> E, run: fn(CaseBody)) {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    let sites: Arc<Mutex<BTreeMap<&'static str, u32>>> = Arc::default();
    // The crash point is drawn over the writes a case makes (about two per op, plus the
    // open's), so that most cases crash, and somewhere along the whole case.
    let strategy = (
        proptest::collection::vec(crash_op_strategy(), 1..50).prop_flat_map(|ops| {
            let writes = 8 + 2 * ops.len() as u64;
            (Just(ops), 0..writes)
        }),
        any::<u64>(),
        prop_oneof![
            Just(IndexDamage::None),
            Just(IndexDamage::Delete),
            Just(IndexDamage::Shorten),
            Just(IndexDamage::Garbage)
        ],
    );
    // A fixed seed: the coverage asserted below (every crash site reached) must not depend
    // on the draw of the day.
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    runner
        .run(&strategy, |((ops, crash_at), seed, damage)| {
            let dir = temp_dir();
            let path = dir.path().to_owned();
            let sites = sites.clone();
            run(Box::new(move || {
                Box::pin(async move {
                    let site = crash_case(make_engine, &path, ops, crash_at, seed, damage).await;
                    if let Some(site) = site {
                        *sites.lock().unwrap().entry(site).or_default() += 1;
                    }
                })
            }));
            Ok(())
        })
        .unwrap();
    let sites = sites.lock().unwrap();
    let crashed: u32 = sites.values().sum();
    println!("crash sites over {cases} cases ({crashed} crashed): {sites:?}");
    assert!(
        crashed * 2 >= cases,
        "only {crashed} of {cases} cases crashed: the crash points miss the writes"
    );
    for site in CRASH_SITES {
        assert!(
            sites.get(site).is_some_and(|&n| n > 0),
            "no case crashed inside {site}: {sites:?}"
        );
    }
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
    sync_commit(&mut log).await;
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

/// The store files (`*.log`) in `dir`, in offset order.
fn stores(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut stores: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    stores.sort();
    stores
}

fn last_store(dir: &Path) -> std::path::PathBuf {
    stores(dir).pop().unwrap()
}

async fn torn_tails_are_cut<E: Engine>(engine: E, dir: &Path) {
    let all = write_synced(&engine, dir, 2).await;
    let store = last_store(dir);
    let good_len = std::fs::metadata(&store).unwrap().len();
    // A short batch: the first 30 bytes of a valid one.
    let valid = walrs::storage::encode_batch(all.len() as u64, 0, 0, &batch(7, 1, 10));
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

/// Regression: a raw read (replication's) met a sealed index whose entry passes its check but
/// disagrees with the store, and failed as corrupt where a decoded read rebuilds the index.
async fn a_stale_index_is_rebuilt_for_raw_reads<E: Engine>(engine: E, dir: &Path) {
    let all = write_synced(&engine, dir, 12).await;
    // Entry 1 of the first (sealed) segment says offset 4; its batch starts at 3. The chain
    // still holds (positions follow, offsets increase), so only the store can tell.
    let index = dir.join(index_file_name(0));
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[16..20].copy_from_slice(&4u32.to_le_bytes());
    let check = crc32fast::hash(&bytes[16..28]);
    bytes[28..32].copy_from_slice(&check.to_le_bytes());
    std::fs::write(&index, &bytes).unwrap();
    let (mut log, _) = reopen(&engine, dir).await;
    let raw = log.read_raw(0, u64::MAX).await.unwrap();
    let bases: Vec<u64> = raw.iter().map(|b| b.header.base_offset).collect();
    assert_eq!(bases[..2], [0, 3], "raw read after the rebuild: {bases:?}");
    same_records(&read_all(&mut log, 0).await.unwrap(), &all);
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

/// A bit flipped in the middle of a sealed segment (its index still looks right: its last
/// batch checks out) is found by `find_damage`, which names the offset after the last good
/// batch; a suffix truncation there drops the damage and every later segment, and the log
/// takes appends again from that offset, durably.
async fn damage_in_a_sealed_segment_is_found_and_cut<E: Engine>(engine: E, dir: &Path) {
    let all = write_synced(&engine, dir, 12).await;
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.find_damage().await.unwrap(), None, "an intact log");
    let segments = log.segment_count();
    assert!(segments >= 3, "{segments} segments");
    log.close().await.unwrap();

    // A bit of the second batch of the first segment (a timestamp in its header): the
    // first batch (offsets 0-2) is where the good batches end.
    let first = dir.join(store_file_name(0));
    let mut bytes = std::fs::read(&first).unwrap();
    let second_batch = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert!(
        bytes.len() > second_batch * 2,
        "the first segment holds two batches"
    );
    let damaged_from = 3;
    bytes[second_batch + 40] ^= 0x04;
    std::fs::write(&first, bytes).unwrap();

    let (mut log, _) = reopen(&engine, dir).await;
    let damage = log.find_damage().await.unwrap();
    assert_eq!(
        damage,
        Some(damaged_from),
        "the offset after the first batch"
    );
    log.truncate_suffix(damaged_from).await.unwrap();
    assert_eq!(log.end_offset(), damaged_from);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.find_damage().await.unwrap(), None);
    let kept: Vec<Record> = all
        .iter()
        .filter(|r| r.offset < damaged_from)
        .cloned()
        .collect();
    sync_commit(&mut log).await;
    same_records(&read_all(&mut log, 0).await.unwrap(), &kept);
    let again = log.append(&batch(99, 2, 10)).await.unwrap();
    assert_eq!(again, damaged_from, "appends go on from the cut");
    sync_commit(&mut log).await;
    log.close().await.unwrap();
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.end_offset(), damaged_from + 2);
    assert_eq!(log.find_damage().await.unwrap(), None);
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
    sync_commit(&mut log).await;
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
        let bytes = walrs::storage::encode_batch(base, 0, 0, &batch(base, 1, 8));
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

/// A roll leaves the sealed store ending at its last batch, with no engine padding after
/// it, even when the process dies without closing anything: so the index of a sealed
/// segment is trusted when it is opened after a crash, instead of rebuilt by a full scan.
async fn sealed_stores_end_at_their_last_batch<E: Engine>(engine: E, dir: &Path) {
    let (mut log, _) = reopen(&engine, dir).await;
    for i in 0..20 {
        log.append(&batch(i + 1, 3, 100)).await.unwrap();
    }
    sync_commit(&mut log).await;
    // A crash: nothing is closed or trimmed on the way out.
    std::mem::forget(log);
    let mut stores = stores(dir);
    stores.pop();
    assert!(stores.len() >= 2, "the appends rolled: {stores:?}");
    for store in &stores {
        let bytes = std::fs::read(store).unwrap();
        let mut position = 0;
        // Bounded: every pass moves past one whole batch.
        while position < bytes.len() {
            let header = walrs::storage::verify_batch(&bytes[position..]).unwrap_or_else(|e| {
                panic!(
                    "{}: no batch at {position} of {} bytes: {e}",
                    store.display(),
                    bytes.len()
                )
            });
            position += header.batch_len as usize;
        }
        assert_eq!(position, bytes.len(), "{}", store.display());
    }
}

// ---------------------------------------------------------------- consensus-layer surface

/// The follower path: encoded batches checked for CRC and continuity; refusals change
/// nothing; raw reads return the stored bytes, which a second log accepts as they are.
async fn follower_appends_and_raw_reads<E: Engine>(engine: E, dir: &Path) {
    let (mut leader, _) = Log::open(engine.clone(), &dir.join("leader"), small_config())
        .await
        .unwrap();
    for i in 0..12u64 {
        let term = 1 + i / 4;
        leader
            .append_in_term(term, &batch(i + 1, 1 + (i % 3) as usize, 60))
            .await
            .unwrap();
    }
    assert!(leader.segment_count() > 1, "raw reads cross segments");
    // Raw reads are bounded by the end, not the commit mark: a leader ships before commit.
    leader.set_commit(0).unwrap();
    let mut shipped = Vec::new();
    let mut next = 0;
    while next < leader.end_offset() {
        let raw = leader.read_raw(next, 500).await.unwrap();
        assert!(!raw.is_empty());
        for b in &raw {
            assert_eq!(b.bytes.len(), b.header.batch_len as usize);
            assert_eq!(storage::verify_batch(&b.bytes).unwrap(), b.header);
        }
        next = raw.last().unwrap().header.next_offset();
        shipped.extend(raw);
    }
    assert!(
        leader.read(0, 1000).await.unwrap().is_empty(),
        "reads stop at the commit"
    );
    // A raw read from inside a batch starts at that batch, untrimmed.
    let inside = shipped.iter().find(|b| b.header.record_count > 1).unwrap();
    let raw = leader
        .read_raw(inside.header.base_offset + 1, 1)
        .await
        .unwrap();
    assert_eq!(raw[0].bytes, inside.bytes);

    let (mut follower, _) = Log::open(engine.clone(), &dir.join("follower"), small_config())
        .await
        .unwrap();
    // Not at the end: refused.
    assert!(matches!(
        follower.append_encoded(&shipped[1].bytes).await,
        Err(Error::NotContinuous { base_offset, end_offset: 0 }) if base_offset == shipped[1].header.base_offset
    ));
    // A flipped byte: refused by the CRC.
    let mut bad = shipped[0].bytes.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(
        follower.append_encoded(&bad).await,
        Err(Error::BadBatch { .. })
    ));
    // Trailing bytes: refused.
    let mut long = shipped[0].bytes.to_vec();
    long.push(0);
    assert!(matches!(
        follower.append_encoded(&long).await,
        Err(Error::BadBatch { .. })
    ));
    assert_eq!(follower.end_offset(), 0, "refused batches change nothing");
    for b in &shipped {
        let base = follower.append_encoded(&b.bytes).await.unwrap();
        assert_eq!(base, b.header.base_offset);
    }
    // A lower term than the last: refused.
    let stale = storage::encode_batch(follower.end_offset(), 1, 0, &batch(50, 1, 5));
    assert!(matches!(
        follower.append_encoded(&stale).await,
        Err(Error::TermRegressed {
            term: 1,
            last_term: 3
        })
    ));
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    sync_commit(&mut follower).await;
    let mut leader_all = Vec::new();
    leader.set_commit(leader.end_offset()).unwrap();
    for r in read_all(&mut leader, 0).await.unwrap() {
        leader_all.push(r);
    }
    same_records(&read_all(&mut follower, 0).await.unwrap(), &leader_all);
    // Byte for byte the same batches.
    let again = follower.read_raw(0, u64::MAX).await.unwrap();
    let total: Vec<u8> = again.iter().flat_map(|b| b.bytes.to_vec()).collect();
    let want: Vec<u8> = shipped.iter().flat_map(|b| b.bytes.to_vec()).collect();
    assert!(total.len() <= want.len());
    assert_eq!(&want[..total.len()], &total[..]);
    leader.close().await.unwrap();
    follower.close().await.unwrap();
}

/// `term_at` and the epoch map survive restart, suffix truncation and prefix truncation.
async fn leader_epochs_survive_restart_and_truncation<E: Engine>(engine: E, dir: &Path) {
    let (mut log, _) = reopen(&engine, dir).await;
    assert!(log.leader_epochs().is_empty());
    // Terms 0 (offsets 0..4), 2 (4..10), 5 (10..16).
    for (term, count) in [(0, 2), (0, 2), (2, 3), (2, 3), (5, 3), (5, 3)] {
        log.append_in_term(term, &batch(term + 1, count, 40))
            .await
            .unwrap();
    }
    let want = [
        EpochStart {
            epoch: 2,
            start_offset: 4,
        },
        EpochStart {
            epoch: 5,
            start_offset: 10,
        },
    ];
    assert_eq!(log.leader_epochs(), &want[..]);
    let terms = |log: &Log<E>| {
        (log.start_offset()..log.end_offset())
            .map(|o| log.term_at(o).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        terms(&log),
        [0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 5, 5, 5, 5, 5, 5]
    );
    assert!(matches!(
        log.term_at(16),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(log.epoch_end_offset(0), 4);
    assert_eq!(log.epoch_end_offset(3), 10);
    assert_eq!(log.epoch_end_offset(5), 16);
    assert_eq!(log.epoch_end_offset(9), 16);
    assert!(matches!(
        log.append_in_term(4, &batch(1, 1, 1)).await,
        Err(Error::TermRegressed {
            term: 4,
            last_term: 5
        })
    ));
    log.close().await.unwrap();

    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.leader_epochs(), &want[..], "after restart");
    assert_eq!(terms(&log).len(), 16);
    // Suffix truncation into term 2 drops epoch 5; a new term then starts at the cut.
    log.truncate_suffix(7).await.unwrap();
    assert_eq!(log.leader_epochs(), &want[..1]);
    assert_eq!(log.last_term(), 2);
    log.append_in_term(6, &batch(9, 2, 10)).await.unwrap();
    log.close().await.unwrap();
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(
        log.leader_epochs(),
        &[
            want[0],
            EpochStart {
                epoch: 6,
                start_offset: 7
            }
        ][..]
    );
    assert_eq!(terms(&log), [0, 0, 0, 0, 2, 2, 2, 6, 6]);
    // Prefix truncation: offsets below the start have no term; those above keep theirs.
    log.truncate_prefix(5).await.unwrap();
    assert!(matches!(
        log.term_at(4),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(terms(&log), [2, 2, 6, 6]);
    log.close().await.unwrap();
    let (log, _) = reopen(&engine, dir).await;
    assert_eq!(terms(&log), [2, 2, 6, 6]);
    log.close().await.unwrap();
}

/// The vote file: default when missing, durable on return, replaced whole.
async fn vote_is_durable_and_replaced_atomically<E: Engine>(engine: E, dir: &Path) {
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.vote().await.unwrap(), Vote::default());
    let first = Vote {
        term: 3,
        voted_for: Some(7),
    };
    log.save_vote(&first).await.unwrap();
    assert_eq!(log.vote().await.unwrap(), first);
    let second = Vote {
        term: 4,
        voted_for: None,
    };
    log.save_vote(&second).await.unwrap();
    // A stale temp file from a crash mid-replace is ignored and removed on open.
    std::fs::write(dir.join("raft_state.tmp"), b"garbage").unwrap();
    drop(log);
    let (log, _) = reopen(&engine, dir).await;
    assert_eq!(log.vote().await.unwrap(), second);
    assert!(!dir.join("raft_state.tmp").exists());
    // A corrupt file is an error naming it, never a silent default.
    std::fs::write(dir.join("raft_state"), b"WALVxxxxxxxxxxxxxxxxxxxxxx").unwrap();
    let err = log.vote().await.unwrap_err();
    assert!(matches!(err, Error::BadStateFile { .. }), "{err}");
    assert!(err.to_string().contains("raft_state"), "{err}");
    log.close().await.unwrap();
}

/// The rejoin marker: none on a new log, durable on return, the lowest offset kept, gone
/// after a clear, and a damaged one still read as a marker (from 0), never as none.
async fn the_rejoin_marker_survives_a_restart<E: Engine>(engine: E, dir: &Path) {
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.rejoin_marker(), None);
    log.set_rejoin_marker(40).await.unwrap();
    log.set_rejoin_marker(90).await.unwrap();
    assert_eq!(log.rejoin_marker(), Some(40));
    drop(log);
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.rejoin_marker(), Some(40));
    log.clear_rejoin_marker().await.unwrap();
    assert_eq!(log.rejoin_marker(), None);
    drop(log);
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(log.rejoin_marker(), None);
    log.set_rejoin_marker(7).await.unwrap();
    log.close().await.unwrap();
    let path = dir.join("raft_rejoin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (log, _) = reopen(&engine, dir).await;
    assert_eq!(log.rejoin_marker(), Some(0));
    log.close().await.unwrap();
}

/// A version-1 segment, laid out by hand, opens and reads; new appends after it are v2.
async fn version_1_segments_still_open_and_read<E: Engine>(engine: E, dir: &Path) {
    let mut bytes = Vec::new();
    let mut base = 0u64;
    let batches: [&[&[u8]]; 2] = [&[b"one", b"two"], &[b"three"]];
    for values in batches {
        bytes.extend(v1_batch(base, values));
        base += values.len() as u64;
    }
    std::fs::write(dir.join(store_file_name(0)), &bytes).unwrap();
    let (mut log, report) = reopen(&engine, dir).await;
    assert_eq!(report.recovery.truncated_bytes, 0, "{report:?}");
    assert_eq!(log.end_offset(), 3);
    let got = read_all(&mut log, 0).await.unwrap();
    let values: Vec<&[u8]> = got.iter().map(|r| &r.value[..]).collect();
    assert_eq!(values, [&b"one"[..], b"two", b"three"]);
    let raw = log.read_raw(0, u64::MAX).await.unwrap();
    assert_eq!(raw[0].header.version, 1);
    assert_eq!(raw[0].bytes.len(), 56 + 2 * (28 + 3));
    let base = log.append(&batch(4, 1, 5)).await.unwrap();
    sync_commit(&mut log).await;
    let batches = log.read(base, 1000).await.unwrap();
    assert_eq!(batches[0].header.version, storage::FORMAT_VERSION);
    log.close().await.unwrap();
    let (mut log, _) = reopen(&engine, dir).await;
    assert_eq!(read_all(&mut log, 0).await.unwrap().len(), 4);
    log.close().await.unwrap();
}

/// The producer stamps written in batch headers come back from `tail_headers`, newest
/// batches only, within the bound and below the given offset, across segments (sealed ones
/// opened for the scan), with version-1 batches read as "no producer".
async fn producer_stamps_are_read_back_from_the_tail<E: Engine>(engine: E, dir: &Path) {
    std::fs::write(dir.join(store_file_name(0)), v1_batch(0, &[b"one", b"two"])).unwrap();
    let (mut log, _) = reopen(&engine, dir).await;
    let mut bases = Vec::new();
    for sequence in 0..30u64 {
        let mut checked = log.config().check(batch(sequence, 1, 100)).unwrap();
        checked.set_producer(storage::ProducerStamp {
            producer_id: 5,
            sequence,
        });
        bases.push(log.append_checked(&checked).await.unwrap());
    }
    sync_commit(&mut log).await;
    assert!(log.segment_count() > 3, "the stamps span segments");
    let end = log.end_offset();
    let all = log.tail_headers(end, 1000).await.unwrap();
    assert_eq!(all.len(), 31);
    assert_eq!((all[0].version, all[0].producer_id), (1, 0));
    for (sequence, header) in all[1..].iter().enumerate() {
        assert_eq!(header.base_offset, bases[sequence]);
        assert_eq!(
            (header.producer_id, header.producer_seq),
            (5, sequence as u64)
        );
    }
    let last = log.tail_headers(end, 7).await.unwrap();
    let seqs: Vec<u64> = last.iter().map(|h| h.producer_seq).collect();
    assert_eq!(seqs, (23..30).collect::<Vec<_>>());
    let below = log.tail_headers(bases[10], 3).await.unwrap();
    let seqs: Vec<u64> = below.iter().map(|h| h.producer_seq).collect();
    assert_eq!(
        seqs,
        [7, 8, 9],
        "only batches that end at or below the offset"
    );
    log.close().await.unwrap();
    // After a reopen (sealed segments closed again) and a prefix truncation, the scan
    // stops at the new start.
    let (mut log, _) = reopen(&engine, dir).await;
    log.truncate_prefix(bases[15]).await.unwrap();
    let start = log.start_offset();
    let kept = log.tail_headers(end, 1000).await.unwrap();
    assert!(!kept.is_empty() && kept.len() < 31);
    assert!(
        kept.iter().all(|h| h.base_offset >= start),
        "{start}: {kept:?}"
    );
    assert_eq!(kept.last().unwrap().producer_seq, 29);
    log.close().await.unwrap();
}

/// A version-1 batch from the v1 byte table (docs/FORMAT.md), by hand: 56-byte header, then
/// records with no key and no headers.
fn v1_batch(base_offset: u64, values: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, value) in values.iter().enumerate() {
        body.extend_from_slice(&((24 + value.len()) as u32).to_le_bytes()); // record_len
        body.extend_from_slice(&0i64.to_le_bytes()); // timestamp delta
        body.extend_from_slice(&(i as u32).to_le_bytes()); // offset delta
        body.extend_from_slice(&0u32.to_le_bytes()); // key_len
        body.extend_from_slice(&(value.len() as u32).to_le_bytes());
        body.extend_from_slice(value);
        body.extend_from_slice(&0u32.to_le_bytes()); // header_count
    }
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"WALB");
    bytes.extend_from_slice(&((56 + body.len()) as u32).to_le_bytes());
    bytes.extend_from_slice(&[0; 4]); // CRC, below
    bytes.extend_from_slice(&1u16.to_le_bytes()); // version 1
    bytes.extend_from_slice(&0u16.to_le_bytes()); // flags
    bytes.extend_from_slice(&base_offset.to_le_bytes());
    bytes.extend_from_slice(&(values.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(values.len() as u32 - 1).to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes()); // leader epoch
    bytes.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
    bytes.extend_from_slice(&1_700_000_000_000i64.to_le_bytes());
    bytes.extend_from_slice(&body);
    let crc = crc32fast::hash(&bytes[12..]);
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
    bytes
}

// ---------------------------------------------------------------- engines

/// A temporary directory under `target/` (Cargo's per-target tmp dir), not `/tmp`: `/tmp`
/// may be tmpfs, where glommio silently skips O_DIRECT and the uring cases would test less.
fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walrs-conformance")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// The portable engine always runs.
fn portable_available() -> bool {
    true
}

/// Whether a glommio executor starts here and can create a DMA file in the test directory;
/// prints why not when it cannot (the uring cases then skip instead of failing).
#[cfg(target_os = "linux")]
fn uring_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let available = AVAILABLE.get_or_init(|| {
        let dir = temp_dir();
        let path = dir.path().join("probe.log");
        let started = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(512 << 10)
            .spawn(move || async move {
                let engine = walrs::storage::UringEngine::new();
                let mut file = engine.create(&path).await.map_err(|e| e.to_string())?;
                walrs::storage::StoreFile::append(&mut file, b"probe")
                    .await
                    .map_err(|e| e.to_string())?;
                walrs::storage::StoreFile::sync(&mut file)
                    .await
                    .map_err(|e| e.to_string())?;
                walrs::storage::StoreFile::close(file)
                    .await
                    .map_err(|e| e.to_string())
            });
        match started {
            Err(e) => Err(format!("glommio executor does not start: {e}")),
            Ok(handle) => handle
                .join()
                .map_err(|e| format!("glommio executor failed: {e:?}"))
                .and_then(|r| r),
        }
    });
    match available {
        Ok(()) => true,
        Err(why) => {
            println!("skipped: io_uring cannot run here ({why}); the portable cases still run");
            false
        }
    }
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
    ($module:ident, $engine:expr, $run:path, $available:path, $cases:expr) => {
        mod $module {
            use super::*;

            macro_rules! case {
                ($name:ident, $body:ident) => {
                    #[test]
                    fn $name() {
                        if !$available() {
                            return;
                        }
                        let dir = temp_dir();
                        let path = dir.path().to_owned();
                        $run(move || async move { super::$body($engine, &path).await });
                    }
                };
            }

            case!(
                torn_tails_are_cut_and_zero_padding_is_the_end,
                torn_tails_are_cut
            );
            case!(
                missing_short_long_and_garbage_indexes_are_rebuilt,
                bad_indexes_are_rebuilt
            );
            case!(
                a_stale_sealed_index_is_rebuilt_for_raw_reads,
                a_stale_index_is_rebuilt_for_raw_reads
            );
            case!(
                corruption_in_a_sealed_segment_is_never_served,
                corruption_in_a_sealed_segment_is_reported
            );
            case!(
                damage_in_a_sealed_segment_is_found_and_cut,
                damage_in_a_sealed_segment_is_found_and_cut
            );
            case!(
                retention_by_bytes_and_age_and_rolling_by_age,
                retention_and_rolling
            );
            case!(
                sealed_stores_end_at_their_last_batch,
                sealed_stores_end_at_their_last_batch
            );
            case!(
                ten_thousand_segments_open_lazily,
                many_segments_open_without_reading_them
            );
            case!(
                follower_appends_are_checked_and_raw_reads_ship_stored_bytes,
                follower_appends_and_raw_reads
            );
            case!(
                leader_epochs_survive_restart_and_truncation,
                leader_epochs_survive_restart_and_truncation
            );
            case!(
                vote_is_durable_and_replaced_atomically,
                vote_is_durable_and_replaced_atomically
            );
            case!(
                the_rejoin_marker_survives_a_restart,
                the_rejoin_marker_survives_a_restart
            );
            case!(
                version_1_segments_still_open_and_read,
                version_1_segments_still_open_and_read
            );
            case!(
                producer_stamps_are_read_back_from_the_tail,
                producer_stamps_are_read_back_from_the_tail
            );

            #[test]
            fn crash() {
                if !$available() {
                    return;
                }
                crash_suite($cases, || $engine, |body| $run(body));
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: $cases, ..ProptestConfig::default() })]

                #[test]
                fn model(ops in proptest::collection::vec(op_strategy(), 1..60)) {
                    if !$available() {
                        return Ok(());
                    }
                    let dir = temp_dir();
                    let path = dir.path().to_owned();
                    $run(move || async move { model_case($engine, &path, ops).await });
                }
            }
        }
    };
}

conformance!(
    portable,
    PortableEngine::new(),
    run_portable,
    portable_available,
    256
);
#[cfg(target_os = "linux")]
conformance!(
    uring,
    walrs::storage::UringEngine::new(),
    run_uring,
    uring_available,
    128
);

// The uring engine in its `dsync` write mode (O_DSYNC writes, no fdatasync after them): the
// same suite, crash cases included.
#[cfg(target_os = "linux")]
conformance!(
    uring_dsync,
    walrs::storage::UringEngine::new().with_write_mode(walrs::storage::UringWriteMode::Dsync),
    run_uring,
    uring_available,
    64
);

// The uring engine in its `inline` write mode (a small commit's write and fdatasync as
// blocking calls on the shard thread): the same suite, crash cases included.
#[cfg(target_os = "linux")]
conformance!(
    uring_inline,
    walrs::storage::UringEngine::new().with_write_mode(walrs::storage::UringWriteMode::Inline),
    run_uring,
    uring_available,
    64
);

/// Both engines write the same bytes: a partition written by one reads back with the other.
#[cfg(target_os = "linux")]
mod cross_engine {
    use super::*;
    use walrs::storage::UringEngine;

    async fn read_back<E: Engine>(
        engine: E,
        path: &Path,
    ) -> Vec<(u64, bytes::Bytes, bytes::Bytes)> {
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
        if !uring_available() {
            return;
        }
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

/// Regression (found by the `segment_recovery` fuzz target): a batch in the active segment
/// whose base offset lies more than `u32::MAX` past the segment's base checks out as a
/// batch, but its offset cannot be indexed (an index entry holds the delta as a u32):
/// recovery panicked while indexing it. Now the scan ends before it, as at a corrupt batch.
#[test]
fn a_batch_too_far_past_its_segment_base_ends_recovery() {
    let dir = temp_dir();
    let path = dir.path().to_owned();
    run_portable(move || async move {
        let engine = PortableEngine::new();
        let all = write_synced(&engine, &path, 1).await;
        let far = walrs::storage::encode_batch(1 << 33, 0, 0, &batch(7, 1, 10));
        append_bytes(&last_store(&path), &far);
        let (log, report) = reopen(&engine, &path).await;
        assert_eq!(log.end_offset(), all.last().unwrap().offset + 1);
        assert!(
            matches!(
                report.recovery.stopped_by,
                Some(walrs::storage::DecodeError::OffsetBeyondSegment { .. })
            ),
            "{:?}",
            report.recovery
        );
        log.close().await.unwrap();
    });
}

/// Fuzz finding 5 (`segment_recovery`, docs/RELIABILITY.md): a recovered active segment
/// whose last batch starts within `u32::MAX` offsets of the segment's base but ends past
/// it (a crafted batch spanning billions of offsets) left the next append at an offset
/// its index cannot hold, and the append panicked. The append now rolls a new segment
/// first.
#[test]
fn an_append_more_than_u32_offsets_past_its_segment_base_rolls_first() {
    let dir = temp_dir();
    let path = dir.path().to_owned();
    run_portable(move || async move {
        let engine = PortableEngine::new();
        write_synced(&engine, &path, 1).await;
        let base = u64::from(u32::MAX) - 1;
        let far = walrs::storage::encode_batch(base, 0, 0, &batch(7, 3, 10));
        append_bytes(&last_store(&path), &far);
        let (mut log, _) = reopen(&engine, &path).await;
        assert_eq!(
            log.end_offset(),
            base + 3,
            "the far batch checks out and stays"
        );
        let segments = stores(&path).len();
        log.append(&batch(8, 2, 10)).await.unwrap();
        sync_commit(&mut log).await;
        assert_eq!(stores(&path).len(), segments + 1, "rolled first");
        let read = log.read(base + 3, 1 << 20).await.unwrap();
        assert_eq!(read[0].records[0].offset, base + 3);
        log.close().await.unwrap();
    });
}
