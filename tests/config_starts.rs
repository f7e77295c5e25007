//! A config that validates also starts the server. Regression test for limits that were
//! checked in two places that disagreed (`record_bytes_max == batch_bytes_max` passed the
//! config check, then the shards refused to start).
//!
//! For every key of `walrs.example.toml`, boundary values that `Config::validate` accepts
//! (each storage key at its least and its greatest accepted value, where that is cheap:
//! not 1024 shards) start
//! the whole server (`walrs::server::start`, portable engine, one shard, small I/O memory,
//! a temp dir), and its shards take an append of the largest record the config allows and
//! read it back. The test fails when the example gains a key without a case here.
//!
//! `[cluster]` cases stay single-node (no peers, replication factor 1): the server does not
//! act on `[cluster]` yet, and a case with peers would, once it does, wait for nodes that
//! never come. Its multi-node rules are unit-tested in `config::cluster`.

use std::collections::BTreeSet;
use std::path::Path;

use toml::Value;
use walrs::config::Config;
use walrs::shard::ShardSet;
use walrs::storage::Record;

const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// The batch header that a batch of one record adds to it (the format's `BATCH_HEADER_LEN`).
const HEADER: i64 = walrs::storage::BATCH_HEADER_LEN as i64;
/// The largest record a case appends; larger limits are still started, with this record.
const APPEND_BYTES_MAX: u64 = 8 << 20;

/// One case: keys (dotted, `""` section for the top level) and their values.
type Case = Vec<(&'static str, Value)>;

fn int(n: i64) -> Value {
    Value::Integer(n)
}
fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// Boundary values for every key. A case may set several keys where one bound needs others
/// (a 1 GiB batch needs a 1 GiB segment, flush and read).
fn cases(dir: &Path) -> Vec<Case> {
    let certs = dir.join("certs");
    walrs::certs::generate(&certs, false).unwrap();
    let path = |name: &str| text(certs.join(name).to_str().unwrap());
    let single = |key: &'static str, values: Vec<Value>| -> Vec<Case> {
        values.into_iter().map(|v| vec![(key, v)]).collect()
    };
    let mut cases: Vec<Case> = Vec::new();
    // Top level.
    cases.extend(single("listen", vec![text("127.0.0.1:0")]));
    cases.extend(single(
        "data_dir",
        vec![text(dir.join("other-data").to_str().unwrap())],
    ));
    cases.extend(single("allow_plaintext", vec![Value::Boolean(true)]));
    cases.extend(single(
        "auto_create_topics",
        vec![Value::Boolean(false), Value::Boolean(true)],
    ));
    cases.extend(single("default_partitions", vec![int(0), int(1024)]));
    // [storage]
    cases.extend(single("storage.engine", vec![text("portable")]));
    cases.extend(single(
        "storage.uring_write",
        vec![text("fdatasync"), text("dsync"), text("inline")],
    ));
    cases.extend(single(
        "storage.preallocate",
        vec![Value::Boolean(false), Value::Boolean(true)],
    ));
    cases.extend(single(
        "storage.spin_before_park_us",
        vec![int(0), int(1000)],
    ));
    // 0 = one per core; 1024 threads is not cheap, so the top is not started here.
    cases.extend(single("storage.shards", vec![int(0), int(1), int(16)]));
    cases.extend(single(
        "storage.durability",
        vec![text("fsync"), text("interval"), text("none")],
    ));
    cases.extend(single(
        "storage.flush_interval_ms",
        vec![int(0), int(60_000)],
    ));
    cases.push(vec![
        ("storage.durability", text("interval")),
        ("storage.flush_interval_ms", int(1)),
    ]);
    cases.push(vec![
        ("storage.durability", text("interval")),
        ("storage.flush_interval_ms", int(60_000)),
    ]);
    cases.extend(single(
        "storage.flush_delay_us",
        vec![int(0), int(1_000_000)],
    ));
    cases.extend(single(
        "storage.flush_bytes_max",
        vec![int(4 * MIB), int(GIB)],
    ));
    cases.extend(single(
        "storage.queue_depth_max",
        vec![int(1), int(1 << 20)],
    ));
    cases.extend(single(
        "storage.enqueue_timeout_ms",
        vec![int(0), int(10_000)],
    ));
    cases.extend(single(
        "storage.io_memory_bytes",
        vec![int(64 << 10), int(GIB)],
    ));
    cases.extend(single(
        "storage.maintenance_interval_ms",
        vec![int(1), int(86_400_000)],
    ));
    cases.extend(single(
        "storage.pin_threads",
        vec![Value::Boolean(true), Value::Boolean(false)],
    ));
    cases.extend(single(
        "storage.record_bytes_max",
        vec![int(28), int(4 * MIB - HEADER)],
    ));
    cases.push(vec![
        ("storage.record_bytes_max", int(MIB)),
        ("storage.batch_bytes_max", int(MIB + HEADER)),
    ]);
    cases.push(vec![
        ("storage.batch_bytes_max", int(GIB)),
        ("storage.segment_bytes_max", int(GIB)),
        ("storage.flush_bytes_max", int(GIB)),
        ("server.read_bytes_max", int(GIB)),
        ("server.inflight_append_bytes_max", int(GIB)),
        ("cluster.replication_batch_bytes_max", int(GIB)),
    ]);
    cases.extend(single(
        "storage.segment_bytes_max",
        vec![int(4 * MIB), int(i64::from(u32::MAX))],
    ));
    cases.extend(single(
        "storage.segment_ms",
        vec![int(0), int(365 * DAY_MS)],
    ));
    cases.extend(single("storage.index_bytes_max", vec![int(16), int(GIB)]));
    cases.extend(single(
        "storage.retention_bytes",
        vec![int(0), int(i64::MAX)],
    ));
    cases.extend(single(
        "storage.retention_ms",
        vec![int(0), int(100 * 365 * DAY_MS)],
    ));
    // The floor's greatest value (1 TiB) would refuse the case's append on any disk but a
    // huge one: a 1 MiB floor stands for "a floor", 0 for none.
    cases.extend(single(
        "storage.disk_free_bytes_min",
        vec![int(0), int(MIB)],
    ));
    cases.extend(single(
        "storage.disk_check_interval_ms",
        vec![int(1), int(60_000)],
    ));
    cases.extend(single(
        "storage.slow_fsync_ms",
        vec![int(0), int(3_600_000)],
    ));
    cases.extend(single(
        "storage.producer_id_expiry_ms",
        vec![int(1_000), int(365 * DAY_MS)],
    ));
    cases.extend(single(
        "storage.producers_per_partition_max",
        vec![int(1), int(1 << 20)],
    ));
    cases.extend(single(
        "storage.producer_rebuild_batches_max",
        vec![int(5), int(10_000_000)],
    ));
    // [server]
    cases.extend(single(
        "server.append_stream_inflight_max",
        vec![int(1), int(1 << 16)],
    ));
    cases.extend(single(
        "server.read_max_wait_ms_max",
        vec![int(0), int(3_600_000)],
    ));
    cases.extend(single(
        "server.read_bytes_max",
        vec![int(4 * MIB), int(GIB)],
    ));
    cases.extend(single(
        "server.read_records_max",
        vec![int(1), int(1_000_000)],
    ));
    cases.extend(single("server.topics_max", vec![int(1), int(1_000_000)]));
    cases.extend(single(
        "server.partitions_per_topic_max",
        vec![int(1), int(1 << 16)],
    ));
    cases.extend(single("server.connections_max", vec![int(1), int(1 << 20)]));
    cases.extend(single(
        "server.streams_per_connection_max",
        vec![int(1), int(1 << 16)],
    ));
    cases.extend(single(
        "server.inflight_append_bytes_max",
        vec![int(4 * MIB), int(64 * GIB)],
    ));
    cases.extend(single(
        "server.topic_name_bytes_max",
        vec![int(1), int(249)],
    ));
    cases.extend(single(
        "server.headers_per_record_max",
        vec![int(0), int(1 << 16)],
    ));
    cases.extend(single(
        "server.handshake_timeout_ms",
        vec![int(100), int(600_000)],
    ));
    cases.extend(single(
        "server.keepalive_interval_ms",
        vec![int(0), int(3_600_000)],
    ));
    cases.extend(single(
        "server.keepalive_timeout_ms",
        vec![int(100), int(3_600_000)],
    ));
    cases.extend(single(
        "server.http2_frame_bytes_max",
        vec![int(16_384), int((1 << 24) - 1)],
    ));
    cases.extend(single(
        "server.http2_stream_window_bytes",
        vec![int(65_535), int(MIB)],
    ));
    cases.extend(single(
        "server.http2_connection_window_bytes",
        vec![int(MIB), int(GIB)],
    ));
    cases.extend(single(
        "server.thread_policy",
        vec![text("batch"), text("unchanged")],
    ));
    cases.push(vec![
        ("server.http2_stream_window_bytes", int(GIB)),
        ("server.http2_connection_window_bytes", int(GIB)),
    ]);
    // [tls] and [[acl]]
    cases.push(vec![
        ("tls.cert", path("server.pem")),
        ("tls.key", path("server-key.pem")),
        ("tls.client_ca", path("ca.pem")),
    ]);
    let mut root = toml::Table::new();
    root.insert("identity".into(), text("root"));
    root.insert("topics".into(), Value::Array(vec![text("*")]));
    root.insert(
        "actions".into(),
        Value::Array(vec![text("produce"), text("consume"), text("admin")]),
    );
    cases.push(vec![("acl", Value::Array(vec![Value::Table(root)]))]);
    // [cluster], single-node (see the module docs).
    cases.extend(single(
        "cluster.node_id",
        vec![int(0), int(1), int(i64::from(u32::MAX))],
    ));
    cases.extend(single(
        "cluster.advertise_addr",
        vec![text(""), text("127.0.0.1:7070"), text("localhost:65535")],
    ));
    cases.extend(single("cluster.replication_factor", vec![int(1)]));
    cases.push(vec![
        ("cluster.node_id", int(1)),
        ("cluster.replication_factor", int(1)),
        ("cluster.peers", Value::Array(Vec::new())),
    ]);
    cases.extend(single("cluster.heartbeat_interval_ms", vec![int(10)]));
    cases.push(vec![
        ("cluster.heartbeat_interval_ms", int(10_000)),
        ("cluster.election_timeout_min_ms", int(10_001)),
        ("cluster.election_timeout_max_ms", int(10_002)),
        ("cluster.quiesce_after_ms", int(0)),
    ]);
    cases.push(vec![
        ("cluster.heartbeat_interval_ms", int(10)),
        ("cluster.election_timeout_min_ms", int(50)),
        ("cluster.election_timeout_max_ms", int(51)),
    ]);
    cases.push(vec![
        ("cluster.election_timeout_min_ms", int(60_000)),
        ("cluster.election_timeout_max_ms", int(120_000)),
    ]);
    cases.extend(single(
        "cluster.quiesce_after_ms",
        vec![int(0), int(100), int(86_400_000)],
    ));
    cases.extend(single(
        "cluster.replication_batch_bytes_max",
        vec![int(4 * MIB), int(GIB)],
    ));
    cases.extend(single(
        "cluster.replication_queue_depth_max",
        vec![int(1), int(1 << 20)],
    ));
    cases.extend(single(
        "cluster.replication_queue_bytes_max",
        vec![int(MIB), int(64 * GIB)],
    ));
    cases.extend(single(
        "cluster.replication_inflight_max",
        vec![int(1), int(1024)],
    ));
    cases.extend(single(
        "cluster.replication_cache_bytes_max",
        vec![int(0), int(GIB)],
    ));
    cases.extend(single(
        "cluster.raft_payload_entries_max",
        vec![int(1), int(1 << 16)],
    ));
    cases.extend(single(
        "cluster.controller_voters",
        vec![Value::Array(Vec::new())],
    ));
    cases.push(vec![
        ("cluster.node_id", int(1)),
        ("cluster.controller_voters", Value::Array(vec![int(1)])),
    ]);
    cases.push(vec![
        ("cluster.gossip_listen", text("")),
        ("cluster.seeds", Value::Array(Vec::new())),
    ]);
    cases.push(vec![
        ("cluster.gossip_listen", text("127.0.0.1:0")),
        ("cluster.seeds", Value::Array(vec![text("localhost:7946")])),
        ("cluster.gossip_interval_ms", int(10)),
        ("cluster.failure_detector_dead_after_ms", int(100)),
        ("cluster.replace_after_ms", int(100)),
    ]);
    cases.push(vec![
        ("cluster.gossip_interval_ms", int(10_000)),
        ("cluster.failure_detector_dead_after_ms", int(600_000)),
        ("cluster.replace_after_ms", int(7 * 86_400_000)),
    ]);
    // [metrics]: the only case that installs the (process-wide) recorder.
    cases.push(vec![
        ("metrics.enabled", Value::Boolean(true)),
        ("metrics.listen", text("127.0.0.1:0")),
    ]);
    // [log]
    cases.extend(single("log.format", vec![text("json"), text("text")]));
    cases.extend(single("log.filter", vec![text("walrs=debug,warn")]));
    cases
}

/// The config every case starts from: loopback on a free port, data in `dir`, the portable
/// engine on one unpinned shard with the least I/O memory, no metrics listener.
fn base(dir: &Path) -> toml::Table {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.storage.engine = walrs::config::EngineChoice::Portable;
    config.storage.shards = 1;
    config.storage.io_memory_bytes = 64 << 10;
    config.storage.pin_threads = false;
    config.metrics.enabled = false;
    toml::Table::try_from(config).unwrap()
}

fn set(table: &mut toml::Table, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_owned(), value);
        }
        Some((section, sub)) => {
            let section = table
                .entry(section.to_owned())
                .or_insert_with(|| Value::Table(toml::Table::new()));
            section
                .as_table_mut()
                .unwrap()
                .insert(sub.to_owned(), value);
        }
    }
}

/// Every key of the example: top-level keys, and `section.key` for each table's keys.
fn example_keys() -> BTreeSet<String> {
    let example: toml::Table = toml::from_str(include_str!("../walrs.example.toml")).unwrap();
    let mut keys = BTreeSet::new();
    for (key, value) in &example {
        match value {
            Value::Table(table) => keys.extend(table.keys().map(|sub| format!("{key}.{sub}"))),
            _ => {
                keys.insert(key.clone());
            }
        }
    }
    keys
}

/// Appends the largest record the config allows (up to `APPEND_BYTES_MAX`) and reads it back.
async fn append_and_read(shards: &ShardSet, config: &Config) {
    shards.create_topic("t", 1).await.unwrap();
    let empty = Record::default();
    let record_bytes = config.storage.record_bytes_max.min(APPEND_BYTES_MAX);
    let value_bytes = record_bytes as usize - empty.encoded_len();
    let record = Record {
        timestamp_ms: 1,
        value: vec![7u8; value_bytes].into(),
        ..Record::default()
    };
    assert_eq!(record.encoded_len() as u64, record_bytes);
    let ack = shards.append("t", 0, vec![record]).await.unwrap();
    assert_eq!(ack.base_offset, 0);
    let read = shards.read("t", 0, 0, u64::MAX, 10).await.unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.records[0].value.len(), value_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_at_its_accepted_bounds_starts_the_server() {
    let scratch = tempfile::tempdir().unwrap();
    let cases = cases(scratch.path());
    let covered: BTreeSet<String> = cases
        .iter()
        .flatten()
        .map(|(key, _)| key.to_string())
        .collect();
    for key in example_keys() {
        assert!(
            covered.contains(&key),
            "no boundary case starts the server with `{key}`: add one"
        );
    }
    for (i, case) in cases.into_iter().enumerate() {
        let dir = scratch.path().join(format!("case-{i}"));
        let mut table = base(&dir);
        for (key, value) in &case {
            set(&mut table, key, value.clone());
        }
        let config: Config = Value::Table(table).try_into().unwrap();
        let shown = format!("{case:?}");
        config
            .validate()
            .unwrap_or_else(|e| panic!("case {shown}: {e}"));
        let running = walrs::server::start(config.clone())
            .await
            .unwrap_or_else(|e| panic!("case {shown} validates but does not start: {e}"));
        append_and_read(running.shards(), &config).await;
        running.shutdown().await.unwrap();
    }
}

/// A record as large as the batch validates nowhere: the config refuses it with the same
/// rule the shards use, naming the key.
#[test]
fn a_record_as_large_as_the_batch_is_refused_by_config_and_shards_alike() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.storage.engine = walrs::config::EngineChoice::Portable;
    config.storage.shards = 1;
    config.storage.record_bytes_max = config.storage.batch_bytes_max;
    let invalid = config.validate().unwrap_err();
    assert_eq!(invalid.key, "storage.record_bytes_max", "{invalid}");
    let err = match ShardSet::start(config.shard_options()) {
        Ok(_) => panic!("the shards started with a limit the config refuses"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("record_bytes_max"), "{err}");
    // The batch less its header is the largest accepted record.
    config.storage.record_bytes_max = config.storage.batch_bytes_max - HEADER as u64;
    config.validate().unwrap();
}
