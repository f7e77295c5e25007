//! The shard layer's contract, through its public API: concurrent appends are gap-free and
//! survive a restart, group commit covers many appends with one fsync, `wait_for` is woken
//! by commits, full queues answer `Overloaded`, enqueued appends take offsets in call order,
//! topics are created/described/deleted and keep
//! their shard assignment across restarts, and relaxed durability acks and serves reads.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walrs::shard::{Durability, EngineChoice, Error, ShardOptions, ShardSet};
use walrs::storage::{self, LogLimits, Record};

fn options(dir: &Path, shards: usize) -> ShardOptions {
    options_on(dir, shards, EngineChoice::Portable)
}

fn options_on(dir: &Path, shards: usize, engine: EngineChoice) -> ShardOptions {
    let mut o = ShardOptions::new(dir);
    o.shard_count = shards;
    o.engine = engine;
    // Small registered-buffer pools: tests run side by side under an 8 MiB `ulimit -l`.
    o.io_memory_bytes = 512 << 10;
    o.pin_threads = false;
    o.log = LogLimits {
        record_bytes_max: 16 << 10,
        batch_bytes_max: 64 << 10,
        segment_bytes_max: 64 << 10,
        index_bytes_max: 16 << 10,
        ..LogLimits::default()
    };
    o
}

fn record(value: impl Into<Vec<u8>>) -> Record {
    Record {
        value: value.into().into(),
        ..Record::default()
    }
}

/// Reads a whole partition from its start.
async fn read_all(set: &ShardSet, topic: &str, partition: u32) -> Vec<Record> {
    let mut from = set
        .read(topic, partition, 0, 1 << 20, 0)
        .await
        .unwrap()
        .start_offset;
    let mut out = Vec::new();
    loop {
        let r = set.read(topic, partition, from, 1 << 20, 0).await.unwrap();
        if r.records.is_empty() {
            assert_eq!(
                from, r.high_watermark,
                "an empty read is at the high watermark"
            );
            return out;
        }
        from = r.next_offset;
        out.extend(r.records);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_gap_free_in_order_and_survive_restart() {
    concurrent_appends(EngineChoice::Portable).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_on_uring_are_gap_free_in_order_and_survive_restart() {
    concurrent_appends(EngineChoice::Uring).await;
}

async fn concurrent_appends(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    const PARTITIONS: u32 = 8;
    const TASKS: usize = 16;
    const APPENDS: usize = 200;
    let set = ShardSet::start(options_on(dir.path(), 4, engine)).unwrap();
    set.create_topic("events", PARTITIONS).await.unwrap();
    let shards: HashSet<usize> = (0..PARTITIONS)
        .map(|p| set.shard_of("events", p).unwrap())
        .collect();
    assert_eq!(shards.len(), 4, "the topic spans every shard");

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let set = set.clone();
            tokio::spawn(async move {
                let mut acks = Vec::with_capacity(APPENDS);
                for i in 0..APPENDS {
                    let partition = ((task + i) % PARTITIONS as usize) as u32;
                    let ack = set
                        .append("events", partition, vec![record(format!("{task}:{i}"))])
                        .await
                        .unwrap();
                    assert_eq!((ack.partition, ack.count), (partition, 1));
                    acks.push(ack);
                }
                acks
            })
        })
        .collect();
    let mut offsets: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for task in tasks {
        let acks = task.await.unwrap();
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for ack in acks {
            if let Some(&prev) = last.get(&ack.partition) {
                assert!(
                    ack.base_offset > prev,
                    "one appender's acks go up per partition"
                );
            }
            last.insert(ack.partition, ack.base_offset);
            offsets
                .entry(ack.partition)
                .or_default()
                .push(ack.base_offset);
        }
    }
    for (partition, mut got) in offsets {
        got.sort_unstable();
        let expected: Vec<u64> = (0..got.len() as u64).collect();
        assert_eq!(
            got, expected,
            "partition {partition}: offsets unique and gap-free"
        );
    }
    let stats = set.total_stats();
    assert_eq!(stats.appends, (TASKS * APPENDS) as u64);
    set.shutdown().await.unwrap();

    let set = ShardSet::start(options_on(dir.path(), 4, engine)).unwrap();
    let mut values = HashSet::new();
    for partition in 0..PARTITIONS {
        let records = read_all(&set, "events", partition).await;
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset, i as u64);
            values.insert(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    assert_eq!(
        values.len(),
        TASKS * APPENDS,
        "every acknowledged record is back"
    );
    set.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_covers_many_appends_with_one_fsync() {
    group_commit(EngineChoice::Portable).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_on_uring_covers_many_appends_with_one_fsync() {
    group_commit(EngineChoice::Uring).await;
}

async fn group_commit(engine: EngineChoice) {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options_on(dir.path(), 1, engine)).unwrap();
    set.create_topic("g", 1).await.unwrap();
    let before = set.stats(0);
    const TASKS: u64 = 64;
    const APPENDS: u64 = 20;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let set = set.clone();
            tokio::spawn(async move {
                for i in 0..APPENDS {
                    set.append("g", 0, vec![record(format!("{t}:{i}"))])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = set.stats(0);
    let appends = after.appends - before.appends;
    let fsyncs = after.fsyncs - before.fsyncs;
    let flushes = after.flushes - before.flushes;
    assert_eq!(appends, TASKS * APPENDS);
    assert!(
        fsyncs < appends / 4,
        "group commit: {fsyncs} fsyncs for {appends} durable appends ({flushes} flushes)"
    );
    eprintln!("group commit: {appends} appends, {flushes} flushes, {fsyncs} fsyncs");
    assert!(fsyncs >= flushes, "every durable flush syncs");
    assert_eq!(
        set.describe_topic("g").await.unwrap().partitions[0].high_watermark,
        appends
    );
    set.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_is_woken_by_a_commit_and_times_out_without_data() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 2)).unwrap();
    set.create_topic("w", 2).await.unwrap();

    let started = Instant::now();
    let hw = set
        .wait_for("w", 1, 0, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(
        hw, 0,
        "nothing to wait for: times out at the current high watermark"
    );
    assert!(started.elapsed() >= Duration::from_millis(50));

    let waiter = {
        let set = set.clone();
        tokio::spawn(async move {
            let hw = set
                .wait_for("w", 1, 0, Duration::from_secs(10))
                .await
                .unwrap();
            let read = set.read("w", 1, 0, 1 << 20, 0).await.unwrap();
            (hw, read)
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished(), "the waiter waits for data");
    let started = Instant::now();
    set.append("w", 1, vec![record("hello")]).await.unwrap();
    let (hw, read) = waiter.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );
    assert_eq!(hw, 1);
    assert_eq!(read.records.len(), 1);
    assert_eq!(&read.records[0].value[..], b"hello");
    assert_eq!((read.next_offset, read.high_watermark), (1, 1));

    // Already past: returns at once.
    assert_eq!(
        set.wait_for("w", 1, 0, Duration::from_secs(10))
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        set.wait_for("w", 2, 0, Duration::from_millis(1)).await,
        Err(Error::UnknownPartition { partitions: 2, .. })
    ));
    set.shutdown().await.unwrap();
}

/// One slow shard (every group lingers 20 ms) behind a queue of 2 that gives up after 5 ms,
/// with topic `o` of one partition.
async fn slow_shard_with_a_tiny_queue(dir: &Path) -> ShardSet {
    let mut o = options(dir, 1);
    o.queue_depth_max = 2;
    o.enqueue_timeout_ms = 5;
    o.flush_delay_us = 20_000;
    let set = ShardSet::start(o).unwrap();
    set.create_topic("o", 1).await.unwrap();
    set
}

/// Regression: a send that timed out after the command was handed to the queue reported
/// `Overloaded` for an append the shard then made; now every refused append changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_overloaded_and_the_rest_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let set = slow_shard_with_a_tiny_queue(dir.path()).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let set = set.clone();
            tokio::spawn(async move { set.append("o", 0, vec![record(vec![i as u8; 100])]).await })
        })
        .collect();
    let mut ok = Vec::new();
    let mut overloaded = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(ack) => ok.push(ack.base_offset),
            Err(Error::Overloaded { shard, queue_depth }) => {
                assert_eq!(shard, 0);
                assert!(queue_depth <= 2, "the queue is bounded: {queue_depth}");
                overloaded += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        assert!(set.stats(0).queue_depth <= 2);
    }
    assert!(
        overloaded > 0,
        "a flood against a 2-deep queue meets Overloaded"
    );
    assert!(!ok.is_empty(), "some appends still succeed");
    ok.sort_unstable();
    assert_eq!(
        ok,
        (0..ok.len() as u64).collect::<Vec<_>>(),
        "a refused append changes nothing"
    );
    let desc = set.describe_topic("o").await.unwrap();
    assert_eq!(desc.partitions[0].end_offset, ok.len() as u64);
    set.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enqueued_appends_get_offsets_in_call_order_whatever_the_await_order() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 2)).unwrap();
    set.create_topic("seq", 1).await.unwrap();
    // Another producer on the same partition, so offsets interleave.
    let noise = {
        let set = set.clone();
        tokio::spawn(async move {
            for i in 0..300u32 {
                set.append("seq", 0, vec![record(format!("noise-{i}"))])
                    .await
                    .unwrap();
            }
        })
    };
    const N: usize = 300;
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let records = vec![record(format!("seq-{i}")), record(format!("seq-{i}b"))];
        pending.push(set.append_enqueue("seq", 0, records).await.unwrap());
    }
    // Awaited last-first: the order was fixed when each was queued.
    let mut acks = Vec::with_capacity(N);
    while let Some(p) = pending.pop() {
        acks.push(p.await.unwrap());
    }
    acks.reverse();
    for pair in acks.windows(2) {
        assert!(
            pair[1].base_offset >= pair[0].base_offset + 2,
            "call order is offset order: {pair:?}"
        );
    }
    noise.await.unwrap();
    let records = read_all(&set, "seq", 0).await;
    let ours: Vec<Vec<u8>> = records
        .iter()
        .filter(|r| r.value.starts_with(b"seq-"))
        .map(|r| r.value.to_vec())
        .collect();
    let want: Vec<Vec<u8>> = (0..N)
        .flat_map(|i| [format!("seq-{i}"), format!("seq-{i}b")])
        .map(String::into_bytes)
        .collect();
    assert_eq!(ours, want);
    for (i, ack) in acks.iter().enumerate() {
        let first = &records[ack.base_offset as usize];
        assert_eq!(first.offset, ack.base_offset);
        assert_eq!(
            first.value,
            format!("seq-{i}").into_bytes(),
            "ack {i} names its batch"
        );
    }
    set.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_enqueue_on_a_full_queue_is_overloaded_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let set = slow_shard_with_a_tiny_queue(dir.path()).await;
    let mut pending = Vec::new();
    let overloaded = loop {
        match set.append_enqueue("o", 0, vec![record("v")]).await {
            Ok(p) => pending.push(p),
            Err(e) => break e,
        }
        assert!(
            pending.len() < 1000,
            "a 2-deep queue behind a slow shard fills up"
        );
    };
    assert!(
        matches!(overloaded, Error::Overloaded { shard: 0, .. }),
        "{overloaded}"
    );
    let queued = pending.len() as u64;
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(p.await.unwrap().base_offset, i as u64);
    }
    let desc = set.describe_topic("o").await.unwrap();
    assert_eq!(
        desc.partitions[0].end_offset, queued,
        "the refused append changed nothing"
    );
    assert!(matches!(
        set.append_enqueue("nope", 0, vec![record("v")]).await,
        Err(Error::UnknownTopic { .. })
    ));
    set.shutdown().await.unwrap();
}

#[tokio::test]
async fn topics_create_list_describe_delete_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 3)).unwrap();
    set.create_topic("a", 3).await.unwrap();
    set.create_topic("b.c_d-1", 1).await.unwrap();
    assert!(matches!(
        set.create_topic("a", 1).await,
        Err(Error::TopicExists { .. })
    ));
    assert!(matches!(
        set.create_topic("a/b", 1).await,
        Err(Error::InvalidTopicName { .. })
    ));
    assert!(matches!(
        set.create_topic("..", 1).await,
        Err(Error::InvalidTopicName { .. })
    ));
    assert!(matches!(
        set.create_topic("z", 0).await,
        Err(Error::InvalidPartitionCount { .. })
    ));
    let names: Vec<(String, u32)> = set
        .list_topics()
        .into_iter()
        .map(|t| (t.name, t.partitions))
        .collect();
    assert_eq!(names, vec![("a".into(), 3), ("b.c_d-1".into(), 1)]);
    assert_eq!(set.partitions_of("a").unwrap(), 3);

    set.append("a", 2, vec![record("x"), record("y")])
        .await
        .unwrap();
    let desc = set.describe_topic("a").await.unwrap();
    assert_eq!(desc.name, "a");
    assert_eq!(desc.partitions.len(), 3);
    let p2 = desc.partitions[2].clone();
    assert_eq!(
        (p2.id, p2.start_offset, p2.end_offset, p2.high_watermark),
        (2, 0, 2, 2)
    );
    for p in &desc.partitions {
        assert_eq!(p.shard as usize, set.shard_of("a", p.id).unwrap());
    }

    assert!(matches!(
        set.append("nope", 0, vec![record("x")]).await,
        Err(Error::UnknownTopic { .. })
    ));
    assert!(matches!(
        set.append("a", 3, vec![record("x")]).await,
        Err(Error::UnknownPartition {
            partition: 3,
            partitions: 3,
            ..
        })
    ));
    assert!(matches!(
        set.describe_topic("nope").await,
        Err(Error::UnknownTopic { .. })
    ));
    // Storage errors come through with their cause.
    let empty = set.append("a", 0, vec![]).await.unwrap_err();
    assert!(matches!(
        empty.storage_error(),
        Some(storage::Error::EmptyBatch)
    ));
    let past = set.read("a", 2, 3, 1024, 0).await.unwrap_err();
    assert!(matches!(
        past.storage_error(),
        Some(storage::Error::OffsetOutOfRange {
            offset: 3,
            start: 0,
            end: 2
        })
    ));

    set.delete_topic("a").await.unwrap();
    assert!(!dir.path().join("topics").join("a").exists());
    assert!(matches!(
        set.delete_topic("a").await,
        Err(Error::UnknownTopic { .. })
    ));
    assert!(matches!(
        set.read("a", 0, 0, 1024, 0).await,
        Err(Error::UnknownTopic { .. })
    ));
    // A re-created topic starts empty.
    set.create_topic("a", 1).await.unwrap();
    assert_eq!(
        set.append("a", 0, vec![record("new")])
            .await
            .unwrap()
            .base_offset,
        0
    );
    set.shutdown().await.unwrap();
}

#[tokio::test]
async fn truncate_drops_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 1)).unwrap();
    set.create_topic("t", 1).await.unwrap();
    // 8 KiB batches into 64 KiB segments: several segments.
    for _ in 0..30 {
        set.append("t", 0, vec![record(vec![7u8; 8 << 10])])
            .await
            .unwrap();
    }
    set.truncate("t", 0, 20).await.unwrap();
    let r = set.read("t", 0, 20, 1 << 20, 1).await.unwrap();
    assert_eq!(r.start_offset, 20);
    assert_eq!(
        (r.records.len(), r.records[0].offset, r.next_offset),
        (1, 20, 21)
    );
    assert!(
        set.read("t", 0, 0, 1024, 0)
            .await
            .unwrap_err()
            .storage_error()
            .is_some()
    );
    set.shutdown().await.unwrap();
}

#[tokio::test]
async fn truncate_suffix_cuts_the_tail_at_a_batch_boundary_and_appends_go_on_there() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 1)).unwrap();
    set.create_topic("t", 1).await.unwrap();
    for i in 0..10u8 {
        set.append("t", 0, vec![record(vec![i; 100]), record(vec![i; 100])])
            .await
            .unwrap();
    }
    // Offset 7 lies inside the batch 6..8: refused, nothing changes.
    let err = set.truncate_suffix("t", 0, 7).await.unwrap_err();
    assert!(
        matches!(
            err.storage_error(),
            Some(walrs::storage::Error::NotBatchBoundary { .. })
        ),
        "{err}"
    );
    set.truncate_suffix("t", 0, 6).await.unwrap();
    let p = set.describe_topic("t").await.unwrap().partitions[0].clone();
    assert_eq!((p.end_offset, p.high_watermark), (6, 6));
    let ack = set.append("t", 0, vec![record("after")]).await.unwrap();
    assert_eq!(ack.base_offset, 6);
    let records = read_all(&set, "t", 0).await;
    assert_eq!(records.len(), 7);
    assert_eq!(&records[6].value[..], b"after");
    assert!(set.truncate_suffix("nope", 0, 0).await.is_err());
    set.shutdown().await.unwrap();
}

/// A `tracing` writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_assignment_survives_restart_and_is_reassigned_when_the_count_changes() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 3)).unwrap();
    set.create_topic("s", 6).await.unwrap();
    for p in 0..6 {
        set.append("s", p, vec![record(format!("p{p}"))])
            .await
            .unwrap();
    }
    let assigned: Vec<usize> = (0..6).map(|p| set.shard_of("s", p).unwrap()).collect();
    set.shutdown().await.unwrap();

    let set = ShardSet::start(options(dir.path(), 3)).unwrap();
    let again: Vec<usize> = (0..6).map(|p| set.shard_of("s", p).unwrap()).collect();
    assert_eq!(again, assigned, "ownership survives a restart");
    set.shutdown().await.unwrap();

    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .with_ansi(false)
        .finish();
    let set = tracing::subscriber::with_default(subscriber, || {
        ShardSet::start(options(dir.path(), 2)).unwrap()
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("WARN") && log.contains("shard count changed") && log.contains("topic=s"),
        "a warning names the re-assignment: {log}"
    );
    let moved: Vec<usize> = (0..6).map(|p| set.shard_of("s", p).unwrap()).collect();
    assert!(moved.iter().all(|&s| s < 2));
    for p in 0..6 {
        let records = read_all(&set, "s", p).await;
        assert_eq!(
            records.len(),
            1,
            "partition {p} keeps its data on its new shard"
        );
        assert_eq!(records[0].value, format!("p{p}").into_bytes());
    }
    set.shutdown().await.unwrap();

    // The re-assignment was persisted: no warning the next time.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let c = captured.clone();
            move || c.clone()
        })
        .finish();
    let set = tracing::subscriber::with_default(subscriber, || {
        ShardSet::start(options(dir.path(), 2)).unwrap()
    });
    assert!(
        !String::from_utf8(captured.0.lock().unwrap().clone())
            .unwrap()
            .contains("shard count changed")
    );
    assert_eq!(
        (0..6)
            .map(|p| set.shard_of("s", p).unwrap())
            .collect::<Vec<_>>(),
        moved
    );
    set.shutdown().await.unwrap();
}

async fn relaxed_durability_acks_and_serves(durability: Durability, flush_interval_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), 2);
    o.durability = durability;
    o.flush_interval_ms = flush_interval_ms;
    let set = ShardSet::start(o.clone()).unwrap();
    set.create_topic("r", 2).await.unwrap();
    // Appends under `interval` never sync; only the timer does (it may fire at any point).
    let fsyncs_before_appends = set.total_stats().fsyncs;
    for i in 0..50u64 {
        let ack = set
            .append("r", (i % 2) as u32, vec![record(i.to_string())])
            .await
            .unwrap();
        assert_eq!(ack.base_offset, i / 2);
    }
    for p in 0..2 {
        assert_eq!(
            read_all(&set, "r", p).await.len(),
            25,
            "acked means readable"
        );
        assert_eq!(
            set.wait_for("r", p, 24, Duration::from_millis(1))
                .await
                .unwrap(),
            25
        );
    }
    match durability {
        Durability::None => assert_eq!(
            set.total_stats().fsyncs,
            fsyncs_before_appends,
            "durability = none: appends make no fdatasync"
        ),
        Durability::Interval => {
            // Waits on the event (the shard's fsync counter), with a deadline far past the
            // interval, not on a fixed sleep.
            let deadline = Instant::now() + Duration::from_millis(flush_interval_ms * 1000);
            while set.total_stats().fsyncs == fsyncs_before_appends {
                assert!(
                    Instant::now() < deadline,
                    "the interval timer never synced ({flush_interval_ms} ms interval)"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Durability::Fsync => unreachable!("relaxed durability only"),
    }
    set.shutdown().await.unwrap();
    let set = ShardSet::start(o).unwrap();
    for p in 0..2 {
        assert_eq!(
            read_all(&set, "r", p).await.len(),
            25,
            "a clean shutdown keeps everything"
        );
    }
    set.shutdown().await.unwrap();
}

#[tokio::test]
async fn durability_none_acks_and_is_readable() {
    relaxed_durability_acks_and_serves(Durability::None, 0).await;
}

#[tokio::test]
async fn durability_interval_acks_is_readable_and_syncs_on_a_timer() {
    relaxed_durability_acks_and_serves(Durability::Interval, 10).await;
}

#[tokio::test]
async fn shutdown_refuses_new_calls() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 2)).unwrap();
    set.create_topic("q", 2).await.unwrap();
    let other = set.clone();
    set.shutdown().await.unwrap();
    assert!(matches!(
        other.append("q", 0, vec![record("late")]).await,
        Err(Error::ShuttingDown)
    ));
    assert!(matches!(
        other.create_topic("n", 1).await,
        Err(Error::ShuttingDown)
    ));
    assert!(matches!(
        other.wait_for("q", 0, 0, Duration::from_secs(1)).await,
        Err(Error::ShuttingDown)
    ));
}

/// Set in the child process of `auto_falls_back_to_portable_under_a_tiny_memlock_limit`.
const CHILD_ENV: &str = "WALRS_TEST_MEMLOCK_CHILD";

#[cfg(target_os = "linux")]
#[test]
fn auto_falls_back_to_portable_under_a_tiny_memlock_limit() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([
            "--exact",
            "memlock_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        child.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256 << 10,
                rlim_max: 256 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = child.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("engine=portable"),
        "child output:\n{stdout}\n{stderr}"
    );
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains("io_uring unavailable") && all.contains("locked-memory limit"),
        "the fallback warning says why:\n{all}"
    );
}

/// Runs only as the child of the test above, under a 256 KiB `RLIMIT_MEMLOCK` (ignored, so
/// that a normal run never counts it as a pass; the parent runs it with `--ignored`).
#[test]
#[ignore = "run by its parent test under a small memlock limit"]
fn memlock_child() {
    let dir = std::env::var_os(CHILD_ENV)
        .expect("memlock_child runs only as the child of its parent test");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut o = options_on(Path::new(&dir), 1, EngineChoice::Uring);
        match ShardSet::start(o.clone()) {
            Err(Error::UringUnavailable { reason }) => {
                assert!(reason.contains("locked-memory"), "{reason}")
            }
            other => panic!(
                "uring under a tiny memlock limit: {:?}",
                other.map(|s| s.engine_name())
            ),
        }
        o.engine = EngineChoice::Auto;
        let set = ShardSet::start(o).unwrap();
        set.create_topic("t", 1).await.unwrap();
        let ack = set.append("t", 0, vec![record("served")]).await.unwrap();
        assert_eq!(ack.base_offset, 0);
        println!("engine={}", set.engine_name());
        set.shutdown().await.unwrap();
    });
}

/// Polls `done` every millisecond until it holds, for at most 10 s (an abandoned admin call
/// finishing in its own task has no event to wait on from here).
async fn until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Regression: a create or delete whose caller went away midway (tonic drops the handler
/// future on cancel or deadline) stopped at an await, leaving partitions open but
/// unroutable; the next create removed the open logs' directory and the shard panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_calls_dropped_midway_still_finish_and_a_recreate_works() {
    let dir = tempfile::tempdir().unwrap();
    let set = ShardSet::start(options(dir.path(), 3)).unwrap();
    for (round, delay_us) in [0u64, 0, 20, 100, 500, 2_000].into_iter().enumerate() {
        let delay = Duration::from_micros(delay_us);
        let created = tokio::time::timeout(delay, set.create_topic("c", 6)).await;
        if let Ok(done) = created {
            done.unwrap();
        }
        // The dropped creation runs on in its own task (spawned on its first poll): wait for
        // it to end, then a second one sees the topic.
        until(|| set.partitions_of("c").is_ok()).await;
        assert!(
            matches!(
                set.create_topic("c", 6).await,
                Err(Error::TopicExists { .. })
            ),
            "round {round}: the abandoned create ran to its end"
        );
        assert_eq!(set.partitions_of("c").unwrap(), 6);
        let ack = set.append("c", 5, vec![record("v")]).await.unwrap();
        assert_eq!(ack.base_offset, 0, "round {round}: a fresh topic");

        let deleted = tokio::time::timeout(delay, set.delete_topic("c")).await;
        if let Ok(done) = deleted {
            done.unwrap();
        }
        until(|| set.partitions_of("c").is_err()).await;
        // The dropped deletion finished too: the name is free, and a new topic by it opens
        // cleanly (no partition of the old one is still open on its shard).
        set.create_topic("c", 6).await.unwrap();
        assert!(read_all(&set, "c", 5).await.is_empty());
        set.delete_topic("c").await.unwrap();
    }
    set.shutdown().await.unwrap();
}

/// Regression: an append that passed the running check and was handed to a shard's queue
/// after the shard's final drain stayed queued with its reply sender alive, and its caller
/// hung forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_racing_shutdown_all_resolve() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options(dir.path(), 2);
        o.queue_depth_max = 8;
        o.enqueue_timeout_ms = 1_000;
        let set = ShardSet::start(o.clone()).unwrap();
        set.create_topic("r", 4).await.unwrap();
        let tasks: Vec<_> = (0..16u32)
            .map(|i| {
                let set = set.clone();
                tokio::spawn(async move {
                    // Every acknowledged append: (partition, offset, value).
                    let mut acked = Vec::new();
                    for n in 0..10_000u32 {
                        let value = (i * 10_000 + n).to_le_bytes();
                        match set.append("r", i % 4, vec![record(value)]).await {
                            Ok(ack) => acked.push((i % 4, ack.base_offset, value)),
                            Err(Error::ShuttingDown) => return acked,
                            Err(e) => panic!("unexpected error: {e}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        // Shut down once appends are flowing (an event, not a sleep).
        let deadline = Instant::now() + Duration::from_secs(10);
        while set.total_stats().appends < 32 {
            assert!(Instant::now() < deadline, "no appends were acknowledged");
            tokio::task::yield_now().await;
        }
        set.shutdown().await.unwrap();
        let mut acked = Vec::new();
        for t in tasks {
            let task_acked = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("an append racing shutdown hangs")
                .unwrap();
            acked.extend(task_acked);
        }
        assert!(
            acked.len() >= 32,
            "only {} appends acknowledged",
            acked.len()
        );
        // Everything acknowledged before the shutdown is there after a restart.
        let set = ShardSet::start(o).unwrap();
        for p in 0..4 {
            let stored = read_all(&set, "r", p).await;
            for (_, offset, value) in acked.iter().filter(|(q, _, _)| *q == p) {
                let record = stored
                    .iter()
                    .find(|r| r.offset == *offset)
                    .unwrap_or_else(|| panic!("acked offset {offset} of r/{p} is lost"));
                assert_eq!(&record.value[..], &value[..], "r/{p} offset {offset}");
            }
        }
        set.shutdown().await.unwrap();
    }
}

/// Regression: `topics_max` was checked outside the admin lock, so concurrent creations
/// could all pass the check and exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_cannot_exceed_topics_max() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), 2);
    o.topics_max = 3;
    let set = ShardSet::start(o).unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let set = set.clone();
            tokio::spawn(async move { set.create_topic(&format!("m{i}"), 1).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => created += 1,
            Err(Error::TooManyTopics { max: 3, .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(created, 3);
    assert_eq!(set.list_topics().len(), 3);
    set.shutdown().await.unwrap();
}

/// Background maintenance runs on the shard's own timer, not only when called: an aged
/// active segment is rolled, and the sealed segment is then deleted by retention, which
/// moves the start offset. Deadlines derive from the configured intervals.
#[tokio::test]
async fn maintenance_rolls_aged_segments_and_applies_retention_on_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), 1);
    o.maintenance_interval_ms = 10;
    o.log.segment_ms = 50;
    o.log.retention_ms = 100;
    let set = ShardSet::start(o.clone()).unwrap();
    set.create_topic("m", 1).await.unwrap();
    set.append("m", 0, vec![record("old")]).await.unwrap();
    let budget_ms = 200 * (o.maintenance_interval_ms + o.log.segment_ms + o.log.retention_ms);
    let deadline = Instant::now() + Duration::from_millis(budget_ms);
    loop {
        let p = set.describe_topic("m").await.unwrap().partitions[0].clone();
        if p.start_offset == 1 {
            assert_eq!(p.end_offset, 1, "offsets are never reused");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no roll and retention within {budget_ms} ms: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(o.maintenance_interval_ms)).await;
    }
    assert!(matches!(
        set.read("m", 0, 0, 1 << 20, 0).await,
        Err(Error::Storage { .. })
    ));
    // The log goes on after the roll.
    let ack = set.append("m", 0, vec![record("new")]).await.unwrap();
    assert_eq!(ack.base_offset, 1);
    set.shutdown().await.unwrap();
}
