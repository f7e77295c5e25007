//! A full disk on one node (issue 15): a server on a small, size-limited file system (a
//! loop-mounted 32 MiB ext4 image, or a `size=` tmpfs where loop devices are missing) is
//! filled until it refuses appends, on both storage engines.
//!
//! What must hold: appends are refused `RESOURCE_EXHAUSTED` with a message that says what to
//! do (below the `storage.disk_free_bytes_min` floor, before anything is written; and, with
//! no floor, when a write meets `ENOSPC`); reads, `Truncate` and `DeleteTopic` keep working
//! so that space can be freed; appends resume by themselves once it is, without a restart;
//! and every acknowledged record is still there byte for byte, after a restart too, with no
//! refused record visible.
//!
//! Needs root (mount); without it, or where neither a loop device nor tmpfs mounts, each
//! test says why and passes without running. CI runs as root. The mount is removed however
//! the test ends (a `Drop` guard).

#[path = "common/small_mount.rs"]
mod small_mount;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use small_mount::SmallMount;

use tonic::Code;
use walrs::client::{Client, ReadOptions, record};
use walrs::config::{Config, EngineChoice, UringWrite};
use walrs::proto::v1::AppendRequest;

const TOPIC: &str = "full";
const SPARE: &str = "spare";
const VALUE_BYTES: usize = 48 * 1024;
const FLOOR_BYTES: u64 = 4 << 20;

fn config(data_dir: &Path, engine: EngineChoice, floor_bytes: u64) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.storage.engine = engine;
    config.storage.shards = 1;
    config.default_partitions = 1;
    config.storage.record_bytes_max = 128 * 1024;
    config.storage.batch_bytes_max = 256 * 1024;
    config.storage.flush_bytes_max = 1024 * 1024;
    config.storage.segment_bytes_max = 1024 * 1024;
    config.storage.index_bytes_max = 64 * 1024;
    config.storage.io_memory_bytes = 512 * 1024;
    config.storage.disk_free_bytes_min = floor_bytes;
    config.storage.disk_check_interval_ms = 50;
    config.server.read_bytes_max = 1024 * 1024;
    config.metrics.enabled = false;
    config
}

/// The value of the `i`th append: readable prefix, then bytes that differ per append.
fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value-{i:06}-").into_bytes();
    v.extend((0..VALUE_BYTES - v.len()).map(|k| (k * 31 + i * 7) as u8));
    v
}

/// Free bytes on the file system that holds `dir`, as `df` shows them.
fn free_bytes(dir: &Path) -> u64 {
    walrs::storage::free_bytes(dir)
        .unwrap()
        .expect("a file system with a size")
}

struct Run {
    client: Client,
    running: walrs::server::Running,
}

/// Starts the server, or `None` (with a line saying why) when the engine cannot run here.
async fn start(config: Config) -> Option<Run> {
    let engine = config.storage.engine;
    let running = match walrs::server::start(config).await {
        Ok(running) => running,
        Err(e) if engine == EngineChoice::Uring => {
            eprintln!("skipped: the uring engine cannot start here: {e}");
            return None;
        }
        Err(e) => panic!("server did not start: {e}"),
    };
    let addr = format!("http://{}", running.local_addr());
    let client = Client::connect(&addr, None).await.unwrap();
    Some(Run { client, running })
}

/// Acknowledged records of one partition: offset → value.
type Acked = BTreeMap<u64, Vec<u8>>;

/// An idempotent producer of numbered values (value `n` is batch `n`) to partition 0 of a
/// topic. A refused value is retried with its sequence: were a retry answered as a duplicate
/// of a batch the log no longer holds, its acknowledgement would point at a record that is
/// not there, and `verify` would say so.
struct Producer {
    client: Client,
    topic: &'static str,
    id: u64,
    next: u64,
    acked: Acked,
}

impl Producer {
    fn new(client: &Client, topic: &'static str) -> Producer {
        Producer {
            client: client.clone(),
            topic,
            id: walrs::client::random_producer_id(),
            next: 0,
            acked: Acked::new(),
        }
    }

    /// Sends the next value (again, after a refusal).
    async fn append(&mut self) -> Result<(), tonic::Status> {
        let v = value(self.next as usize);
        let request = AppendRequest {
            topic: self.topic.into(),
            partition: Some(0),
            records: vec![record(vec![], v.clone())],
            producer_id: self.id,
            sequence: self.next,
            ..AppendRequest::default()
        };
        let ack = self.client.log_client().append(request).await?.into_inner();
        assert!(
            self.acked.insert(ack.base_offset, v).is_none(),
            "offset {} acknowledged twice",
            ack.base_offset
        );
        self.next += 1;
        Ok(())
    }

    /// Appends until one is refused; returns the refusal.
    async fn fill(&mut self) -> tonic::Status {
        for _ in 0..10_000 {
            if let Err(status) = self.append().await {
                return status;
            }
        }
        panic!("10000 appends of {VALUE_BYTES} bytes fit a 32 MiB file system");
    }

    /// Retries until the append is acknowledged (space was just freed; the floor sees it at
    /// its next check), failing after a bounded wait.
    async fn append_until_accepted(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Err(status) = self.append().await {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "appends did not resume after space was freed: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn verify(&self, client: &Client) -> u64 {
        verify(client, self.topic, &self.acked).await
    }
}

/// Reads the whole partition and checks it against `acked`: every acknowledged record at
/// or above the start offset is there byte for byte, and nothing else is. Returns the start.
async fn verify(client: &Client, topic: &str, acked: &Acked) -> u64 {
    let info = client.describe_topic(topic).await.unwrap().partitions[0].clone();
    let (start, hw) = (info.start_offset, info.high_watermark);
    let mut offset = start;
    let mut served = 0;
    while offset < hw {
        let options = ReadOptions {
            max_records: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        };
        let read = client.read(topic, 0, offset, options).await.unwrap();
        assert!(
            read.next_offset > offset,
            "a read at {offset} made no progress"
        );
        for r in &read.records {
            let want = acked.get(&r.offset).unwrap_or_else(|| {
                panic!(
                    "offset {} is served but was never acknowledged ({} bytes, {:?}…)",
                    r.offset,
                    r.value.len(),
                    String::from_utf8_lossy(&r.value[..r.value.len().min(16)])
                )
            });
            assert!(r.value[..] == want[..], "offset {} differs", r.offset);
            served += 1;
        }
        offset = read.next_offset;
    }
    let expected = acked.range(start..).count();
    assert_eq!(
        served, expected,
        "acknowledged records at or above {start} missing"
    );
    start
}

/// The floor: refused before the disk is full, freed by Truncate and by DeleteTopic.
async fn below_the_floor(engine: EngineChoice) {
    let mount = match SmallMount::new() {
        Ok(mount) => mount,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let data = mount.mountpoint.join("data");
    let Some(run) = start(config(&data, engine, FLOOR_BYTES)).await else {
        return;
    };
    eprintln!("{engine:?} engine on {}", mount.kind);
    let client = &run.client;
    client.create_topic(TOPIC, 1).await.unwrap();
    client.create_topic(SPARE, 1).await.unwrap();
    let (mut full, mut spare) = (Producer::new(client, TOPIC), Producer::new(client, SPARE));
    for _ in 0..40 {
        spare.append().await.unwrap();
    }

    let refused = full.fill().await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for hint in ["disk_free_bytes_min", "Truncate", "DeleteTopic", "resume"] {
        assert!(refused.message().contains(hint), "{hint}: {refused:?}");
    }
    let free = free_bytes(&data);
    eprintln!(
        "refused after {} appends with {free} bytes free: {}",
        full.acked.len(),
        refused.message()
    );
    assert!(
        full.acked.len() > 100,
        "only {} appends fit",
        full.acked.len()
    );
    assert!(
        free >= FLOOR_BYTES / 2,
        "the floor kept only {free} bytes free"
    );
    // Still refused (nothing written), while reads serve everything acknowledged. A few more
    // may fit first: ext4 gives back the blocks it reserved for delayed allocation once they
    // are written out, so the free space can rise a little after the refusal.
    let again = full.fill().await;
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    full.verify(client).await;
    spare.verify(client).await;

    // Truncate frees whole segments; appends resume without a restart.
    let cut = *full.acked.keys().nth(full.acked.len() / 2).unwrap();
    let truncated = client.truncate(TOPIC, 0, cut).await.unwrap();
    assert!(truncated.start_offset <= cut);
    full.append_until_accepted().await;
    assert!(full.verify(client).await > 0);

    // Full again; DeleteTopic frees the spare topic's space and appends resume.
    let refused = full.fill().await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    client.delete_topic(SPARE).await.unwrap();
    full.append_until_accepted().await;
    full.verify(client).await;

    // Nothing acknowledged is lost across a restart; nothing refused appears.
    run.running.shutdown().await.unwrap();
    let run = start(config(&data, engine, FLOOR_BYTES)).await.unwrap();
    full.verify(&run.client).await;
    run.running.shutdown().await.unwrap();
}

/// No floor: a write meets ENOSPC, is refused RESOURCE_EXHAUSTED and cut back; the log
/// recovers by itself once Truncate frees space.
async fn out_of_space_without_a_floor(engine: EngineChoice, uring_write: UringWrite) {
    let config = |data: &Path| {
        let mut config = config(data, engine, 0);
        config.storage.uring_write = uring_write;
        config
    };
    let mount = match SmallMount::new() {
        Ok(mount) => mount,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let data = mount.mountpoint.join("data");
    let Some(run) = start(config(&data)).await else {
        return;
    };
    eprintln!("{engine:?} engine on {}", mount.kind);
    let client = &run.client;
    client.create_topic(TOPIC, 1).await.unwrap();
    let mut full = Producer::new(client, TOPIC);
    let refused = full.fill().await;
    eprintln!(
        "refused after {} appends with {} bytes free: {}",
        full.acked.len(),
        free_bytes(&data),
        refused.message()
    );
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("space"), "{refused:?}");
    assert!(refused.message().contains("Truncate"), "{refused:?}");
    assert!(
        full.acked.len() > 100,
        "only {} appends fit",
        full.acked.len()
    );
    // Refused again (no space yet), reads unaffected.
    let again = full.append().await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    full.verify(client).await;

    // A restart on the full disk opens the log and serves everything acknowledged.
    run.running.shutdown().await.unwrap();
    let run = start(config(&data)).await.unwrap();
    let client = &run.client;
    full.client = client.clone();
    full.verify(client).await;

    // The refused value is retried with its sequence once Truncate freed space: written
    // again, then 20 more.
    let cut = *full.acked.keys().nth(full.acked.len() / 2).unwrap();
    client.truncate(TOPIC, 0, cut).await.unwrap();
    full.append_until_accepted().await;
    for _ in 0..20 {
        full.append().await.unwrap();
    }
    full.verify(client).await;

    run.running.shutdown().await.unwrap();
    let run = start(config(&data)).await.unwrap();
    full.verify(&run.client).await;
    run.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_refuses_below_the_floor_and_resumes_when_space_returns() {
    below_the_floor(EngineChoice::Portable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_refuses_below_the_floor_and_resumes_when_space_returns() {
    below_the_floor(EngineChoice::Uring).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_cuts_back_an_enospc_write_and_recovers_after_truncate() {
    out_of_space_without_a_floor(EngineChoice::Portable, UringWrite::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_cuts_back_an_enospc_write_and_recovers_after_truncate() {
    out_of_space_without_a_floor(EngineChoice::Uring, UringWrite::Fdatasync).await;
}

/// The same on the `inline` write mode, whose small commits are blocking `pwrite`s and
/// `fdatasync`s: their ENOSPC must be told from other failures like io_uring's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uring_inline_cuts_back_an_enospc_write_and_recovers_after_truncate() {
    out_of_space_without_a_floor(EngineChoice::Uring, UringWrite::Inline).await;
}

/// Appends entry `raft_index` (term 1, one record of [`value`]) to a log.
async fn append_entry(
    log: &mut walrs::storage::Log<walrs::storage::PortableEngine>,
    raft_index: u64,
) -> walrs::storage::Result<u64> {
    let record = walrs::storage::Record {
        value: value(raft_index as usize).into(),
        ..Default::default()
    };
    let batch = log.config().check(vec![record]).unwrap();
    let meta = walrs::storage::EntryMeta {
        term: 1,
        raft_index,
        control: false,
    };
    log.append_entry(meta, &batch).await
}

/// A replicated log cut back by a full disk (its unsynced entries go) refuses the next entry
/// of a writer that did not see the cut: taken right after the cut, it would leave a gap in
/// the Raft indices for good, and the log would find entries by index in the wrong batches.
/// The entry that does follow the cut is taken, where the cut left the log's end.
#[test]
fn a_log_cut_back_by_a_full_disk_refuses_an_entry_that_does_not_follow_the_cut() {
    use walrs::storage::{Error, Log, LogLimits, PortableEngine};

    let mount = match SmallMount::new() {
        Ok(mount) => mount,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let limits = LogLimits {
        record_bytes_max: 128 * 1024,
        batch_bytes_max: 256 * 1024,
        segment_bytes_max: 4 << 20,
        index_bytes_max: 64 * 1024,
        ..LogLimits::default()
    };
    futures::executor::block_on(async {
        let dir = mount.mountpoint.join("log");
        let (mut log, _) = Log::open(PortableEngine::new(), &dir, limits)
            .await
            .unwrap();
        for i in 1..=5 {
            append_entry(&mut log, i).await.unwrap();
        }
        log.sync().await.unwrap();
        let synced_end = log.end_offset();
        // Unsynced entries until the disk is full.
        let mut failed_at = 6;
        loop {
            match append_entry(&mut log, failed_at).await {
                Ok(_) => failed_at += 1,
                Err(e) => {
                    assert!(e.is_out_of_space(), "entry {failed_at}: {e}");
                    break;
                }
            }
            assert!(failed_at < 10_000, "the small disk never filled");
        }
        assert!(
            failed_at > 6,
            "some entries went in unsynced before the disk filled"
        );
        // The failed writer's next entry: the log first cuts back to what was synced (by the
        // sync above, or by a roll's seal since), so it would land after an earlier entry.
        let expected = match append_entry(&mut log, failed_at + 1).await {
            Err(Error::EntryGap {
                raft_index,
                expected,
            }) => {
                assert_eq!(raft_index, failed_at + 1);
                expected
            }
            other => panic!("entry {} after the cut: {other:?}", failed_at + 1),
        };
        assert!(
            (6..failed_at).contains(&expected),
            "the cut kept entries 1..{expected} of 1..{failed_at}"
        );
        assert!(log.end_offset() >= synced_end, "nothing synced was cut");
        let end = log.end_offset();
        append_entry(&mut log, expected).await.unwrap();
        assert_eq!(log.offset_of_raft_index(expected).await.unwrap(), Some(end));
        log.close().await.unwrap();
    });
}
