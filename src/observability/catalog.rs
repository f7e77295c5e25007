//! The metrics of wal.rs: their names, help texts and buckets, the one-time recorder
//! installation, and the small functions the server and the shards call to record.
//!
//! Names follow Prometheus conventions: `walrs_` prefix, counters end in `_total`, durations
//! are `_seconds`, sizes `_bytes`. Histograms are real Prometheus histograms (buckets, `_sum`,
//! `_count`), not summaries, so they aggregate across servers.
//!
//! Without an installed recorder (`[metrics] enabled = false`) every call here is a no-op of
//! a few nanoseconds: the `metrics` macros find the no-op recorder and return.
//!
//! Must never import the layers it measures (`shard`, `server`): they call in with plain
//! values or the small snapshot types defined here (`TopicDiskUsage`, `ListenerCounts`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram};
use metrics::{Unit, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::logging::RateLimit;

/// The metric names.
pub mod names {
    /// Counter {rpc, code}: RPC calls by final gRPC status (streams count once, when they end).
    pub const REQUESTS_TOTAL: &str = "walrs_requests_total";
    /// Counter {rpc, code}: RPC calls that ended with a status other than OK.
    pub const REQUEST_ERRORS_TOTAL: &str = "walrs_request_errors_total";
    /// Histogram: time from receiving an append (unary or stream item) to its durable ack.
    pub const APPEND_DURATION_SECONDS: &str = "walrs_append_duration_seconds";
    /// Histogram: time to serve a unary Read, long-poll wait included.
    pub const READ_DURATION_SECONDS: &str = "walrs_read_duration_seconds";
    /// Counter {topic}: records acknowledged.
    pub const RECORDS_IN_TOTAL: &str = "walrs_records_in_total";
    /// Counter {topic}: encoded record bytes acknowledged.
    pub const BYTES_IN_TOTAL: &str = "walrs_bytes_in_total";
    /// Counter {topic}: records returned by reads.
    pub const RECORDS_OUT_TOTAL: &str = "walrs_records_out_total";
    /// Counter {topic}: encoded record bytes returned by reads.
    pub const BYTES_OUT_TOTAL: &str = "walrs_bytes_out_total";
    /// Counter {shard}: `fdatasync` calls (group commits, rolls, truncations, closes).
    pub const FSYNCS_TOTAL: &str = "walrs_fsyncs_total";
    /// Histogram {shard}: duration of one group-commit sync.
    pub const FSYNC_DURATION_SECONDS: &str = "walrs_fsync_duration_seconds";
    /// Histogram {shard}: records made durable by one group-commit sync.
    pub const RECORDS_PER_FSYNC: &str = "walrs_records_per_fsync";
    /// Counter {shard}: group-commit syncs slower than `storage.slow_fsync_ms`.
    pub const SLOW_FSYNCS_TOTAL: &str = "walrs_slow_fsyncs_total";
    /// Gauge {shard}: requests waiting in the shard's queue (sampled at scrape).
    pub const SHARD_QUEUE_DEPTH: &str = "walrs_shard_queue_depth";
    /// Gauge {shard}: replicated partitions' Raft groups running on the shard.
    pub const RAFT_GROUPS: &str = "walrs_raft_groups";
    /// Gauge {shard}: those of them quiet (idle: no heartbeats, no election timers).
    pub const RAFT_GROUPS_QUIET: &str = "walrs_raft_groups_quiet";
    /// Counter {shard}: times a replicated partition on the shard learned of a new leader.
    pub const LEADER_CHANGES_TOTAL: &str = "walrs_leader_changes_total";
    /// Gauge {topic, partition}: the partition's leader (node id) as this replica knows it,
    /// 0 = none; sampled every maintenance interval. Per-partition series: see
    /// [`crate::observability::PartitionReplication`] for when they go.
    pub const PARTITION_LEADER: &str = "walrs_partition_leader";
    /// Gauge {topic, partition}: the partition's Raft term (its `leader_epoch`).
    pub const PARTITION_TERM: &str = "walrs_partition_term";
    /// Gauge {topic, partition, replica}: on the leader, the entries (batches) of its log a
    /// follower (voter or learner) does not hold yet.
    pub const REPLICA_LAG_BATCHES: &str = "walrs_replica_lag_batches";
    /// Gauge {topic, partition, replica}: on the leader, the offsets of its log after the
    /// last entry a follower holds: its end offset minus the offset after that entry (records,
    /// and one per control entry).
    pub const REPLICA_LAG_RECORDS: &str = "walrs_replica_lag_records";
    /// Gauge {topic, partition, replica}: on the leader, the store bytes of its log after the
    /// last entry a follower holds (whole batches, headers included).
    pub const REPLICA_LAG_BYTES: &str = "walrs_replica_lag_bytes";
    /// Gauge: the controller leader (node id) as this node knows it; 0 = none known.
    pub const CONTROLLER_LEADER: &str = "walrs_controller_leader";
    /// Gauge: the offset up to which this node applied the controller's metadata log.
    pub const METADATA_APPLIED_OFFSET: &str = "walrs_metadata_applied_offset";
    /// Gauge {state}: nodes gossip knows, by state (joining, alive, leaving, dead).
    pub const GOSSIP_MEMBERS: &str = "walrs_gossip_members";
    /// Gauge: topics in the cluster, as the applied metadata log says.
    pub const CLUSTER_TOPICS: &str = "walrs_cluster_topics";
    /// Counter {shard}: requests refused because the shard's queue stayed full.
    pub const SHARD_OVERLOADED_TOTAL: &str = "walrs_shard_overloaded_total";
    /// Gauge {topic}: partitions.
    pub const TOPIC_PARTITIONS: &str = "walrs_topic_partitions";
    /// Gauge {topic}: segments on disk, all partitions.
    pub const TOPIC_SEGMENTS: &str = "walrs_topic_segments";
    /// Gauge {topic}: store-file bytes on disk, all partitions.
    pub const TOPIC_SIZE_BYTES: &str = "walrs_topic_size_bytes";
    /// Gauge {rpc}: open AppendStream and ReadStream calls.
    pub const ACTIVE_STREAMS: &str = "walrs_active_streams";
    /// Counter: TLS handshakes that failed or timed out (counted by the listener).
    pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "walrs_tls_handshake_failures_total";
    /// Counter: TCP connections accepted.
    pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "walrs_connections_accepted_total";
    /// Gauge: connections open (handshaking or served).
    pub const CONNECTIONS_OPEN: &str = "walrs_connections_open";
    /// Counter {identity}: calls the ACL refused.
    pub const AUTHORIZATION_DENIALS_TOTAL: &str = "walrs_authorization_denials_total";
    /// Counter: calls without a usable client certificate.
    pub const AUTHENTICATION_FAILURES_TOTAL: &str = "walrs_authentication_failures_total";
    /// Gauge: 1 while the server reports SERVING, else 0.
    pub const SERVING: &str = "walrs_serving";
    /// Gauge {version, engine}: always 1.
    pub const BUILD_INFO: &str = "walrs_build_info";
}
use names::*;

/// Upper bounds of the latency buckets, seconds: 50 µs to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the records-per-fsync buckets: powers of two.
const RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];
/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's global `metrics` recorder, once; later
/// calls (a second server in one test process) return the same handle. Fails when another
/// recorder was installed first.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(RECORDS_PER_FSYNC.into()),
                        RECORDS_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            describe_all();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("walrs-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| format!("cannot start the metrics upkeep thread: {e}"))?;
            Ok(handle)
        })
        .clone()
}

fn describe_all() {
    describe_counter!(REQUESTS_TOTAL, "RPC calls by final gRPC status code.");
    describe_counter!(
        REQUEST_ERRORS_TOTAL,
        "RPC calls that ended with a status other than OK."
    );
    describe_histogram!(
        APPEND_DURATION_SECONDS,
        Unit::Seconds,
        "Time from receiving an append to acknowledging it (durable under fsync durability)."
    );
    describe_histogram!(
        READ_DURATION_SECONDS,
        Unit::Seconds,
        "Time to serve a unary Read, long-poll wait included."
    );
    describe_counter!(RECORDS_IN_TOTAL, "Records acknowledged, by topic.");
    describe_counter!(
        BYTES_IN_TOTAL,
        Unit::Bytes,
        "Encoded record bytes acknowledged, by topic."
    );
    describe_counter!(RECORDS_OUT_TOTAL, "Records returned by reads, by topic.");
    describe_counter!(
        BYTES_OUT_TOTAL,
        Unit::Bytes,
        "Encoded record bytes returned by reads, by topic."
    );
    describe_counter!(
        FSYNCS_TOTAL,
        "fdatasync calls made by the shard's storage engine."
    );
    describe_histogram!(
        FSYNC_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one group-commit sync of one partition."
    );
    describe_histogram!(
        RECORDS_PER_FSYNC,
        "Records made durable by one group-commit sync."
    );
    describe_counter!(
        SLOW_FSYNCS_TOTAL,
        "Group-commit syncs slower than storage.slow_fsync_ms."
    );
    describe_gauge!(SHARD_QUEUE_DEPTH, "Requests waiting in the shard's queue.");
    describe_counter!(
        LEADER_CHANGES_TOTAL,
        "Times a replicated partition on the shard learned of a new leader."
    );
    describe_gauge!(
        CONTROLLER_LEADER,
        "The controller leader's node id as this node knows it (0 = none known)."
    );
    describe_gauge!(
        METADATA_APPLIED_OFFSET,
        "Offset up to which this node applied the controller's metadata log."
    );
    describe_gauge!(CLUSTER_TOPICS, "Topics in the cluster's applied metadata.");
    describe_gauge!(
        GOSSIP_MEMBERS,
        "Nodes gossip knows, by state: joining, alive, leaving, or dead (failure detector)."
    );
    describe_counter!(
        SHARD_OVERLOADED_TOTAL,
        "Requests refused with RESOURCE_EXHAUSTED because the shard's queue stayed full."
    );
    describe_gauge!(TOPIC_PARTITIONS, "Partitions of the topic.");
    describe_gauge!(
        TOPIC_SEGMENTS,
        "Segments on disk, all partitions of the topic."
    );
    describe_gauge!(
        TOPIC_SIZE_BYTES,
        Unit::Bytes,
        "Store-file bytes on disk, all partitions of the topic."
    );
    describe_gauge!(ACTIVE_STREAMS, "Open AppendStream and ReadStream calls.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out."
    );
    describe_counter!(CONNECTIONS_ACCEPTED_TOTAL, "TCP connections accepted.");
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Connections open (handshaking or served)."
    );
    describe_counter!(
        AUTHORIZATION_DENIALS_TOTAL,
        "Calls refused by the ACL, by client identity."
    );
    describe_counter!(
        AUTHENTICATION_FAILURES_TOTAL,
        "Calls without a usable client certificate."
    );
    describe_gauge!(SERVING, "1 while the server reports SERVING, else 0.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels say the version and the storage engine."
    );
}

/// An append acknowledged after `elapsed`.
pub fn observe_append(elapsed: Duration) {
    histogram!(APPEND_DURATION_SECONDS).record(elapsed.as_secs_f64());
}

/// A unary Read served after `elapsed`.
pub fn observe_read(elapsed: Duration) {
    histogram!(READ_DURATION_SECONDS).record(elapsed.as_secs_f64());
}

/// Records and bytes acknowledged to `topic`.
pub fn bytes_and_records_in(topic: &str, records: u64, bytes: u64) {
    counter!(RECORDS_IN_TOTAL, "topic" => topic.to_owned()).increment(records);
    counter!(BYTES_IN_TOTAL, "topic" => topic.to_owned()).increment(bytes);
}

/// Records and bytes a read returned from `topic`.
pub fn bytes_and_records_out(topic: &str, records: u64, bytes: u64) {
    counter!(RECORDS_OUT_TOTAL, "topic" => topic.to_owned()).increment(records);
    counter!(BYTES_OUT_TOTAL, "topic" => topic.to_owned()).increment(bytes);
}

/// A call the ACL refused.
pub fn authorization_denied(identity: &str) {
    counter!(AUTHORIZATION_DENIALS_TOTAL, "identity" => identity.to_owned()).increment(1);
}

/// A call without a usable client certificate.
pub fn authentication_failed() {
    counter!(AUTHENTICATION_FAILURES_TOTAL).increment(1);
}

/// A request refused because shard `shard`'s queue stayed full; warns, at most once a
/// second for the whole process, with the number of refusals not logged since.
pub fn shard_overloaded(shard: usize, queue_depth: usize) {
    static WARN: RateLimit = RateLimit::new(Duration::from_secs(1));
    counter!(SHARD_OVERLOADED_TOTAL, "shard" => shard.to_string()).increment(1);
    if let Some(suppressed) = WARN.check() {
        tracing::warn!(
            shard,
            queue_depth,
            suppressed,
            "shard queue saturated: refusing requests with RESOURCE_EXHAUSTED \
             (raise storage.queue_depth_max, add shards, or slow the producers)"
        );
    }
}

/// What one topic holds on disk, for its gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDiskUsage {
    pub topic: String,
    pub partitions: u32,
    pub segments: u64,
    pub size_bytes: u64,
}

/// Sets the disk gauges of a topic.
pub fn topic_disk_usage(usage: &TopicDiskUsage) {
    let topic = usage.topic.clone();
    gauge!(TOPIC_PARTITIONS, "topic" => topic.clone()).set(f64::from(usage.partitions));
    gauge!(TOPIC_SEGMENTS, "topic" => topic.clone()).set(usage.segments as f64);
    gauge!(TOPIC_SIZE_BYTES, "topic" => topic).set(usage.size_bytes as f64);
}

/// Zeroes the disk gauges of a deleted topic.
pub fn topic_deleted(topic: &str) {
    for name in [TOPIC_PARTITIONS, TOPIC_SEGMENTS, TOPIC_SIZE_BYTES] {
        gauge!(name, "topic" => topic.to_owned()).set(0.0);
    }
}

/// The controller as this node follows it: its leader, how far the metadata log is applied,
/// and the topics it holds.
pub fn controller_state(leader: u64, applied_offset: u64, topics: usize) {
    gauge!(CONTROLLER_LEADER).set(leader as f64);
    gauge!(METADATA_APPLIED_OFFSET).set(applied_offset as f64);
    gauge!(CLUSTER_TOPICS).set(topics as f64);
}

/// The gossip members' states (one item per node: joining, alive, leaving or dead).
pub fn gossip_members<'a>(states: impl Iterator<Item = &'a str>) {
    let mut counts: std::collections::BTreeMap<&str, u64> = ["joining", "alive", "leaving", "dead"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for state in states {
        *counts.entry(state).or_default() += 1;
    }
    for (state, count) in counts {
        gauge!(GOSSIP_MEMBERS, "state" => state.to_owned()).set(count as f64);
    }
}

/// The instruments of one shard, registered once when the shard starts and then only
/// updated (atomics): cheap enough for the group-commit path of a glommio shard.
pub struct ShardMetrics {
    shard: usize,
    fsync_seconds: Histogram,
    records_per_fsync: Histogram,
    slow_fsyncs: Counter,
    /// Zero: never warn.
    slow_fsync: Duration,
    slow_warning: RateLimit,
}

impl ShardMetrics {
    pub fn new(shard: usize, slow_fsync_ms: u64) -> ShardMetrics {
        let label = shard.to_string();
        ShardMetrics {
            shard,
            fsync_seconds: histogram!(FSYNC_DURATION_SECONDS, "shard" => label.clone()),
            records_per_fsync: histogram!(RECORDS_PER_FSYNC, "shard" => label.clone()),
            slow_fsyncs: counter!(SLOW_FSYNCS_TOTAL, "shard" => label),
            slow_fsync: Duration::from_millis(slow_fsync_ms),
            slow_warning: RateLimit::new(Duration::from_secs(1)),
        }
    }

    /// One group-commit sync of `topic`/`partition` took `elapsed` and made `records`
    /// records durable. A slow one is counted and warned about (at most once a second).
    pub fn synced(&self, topic: &str, partition: u32, elapsed: Duration, records: u64) {
        self.fsync_seconds.record(elapsed.as_secs_f64());
        self.records_per_fsync.record(records as f64);
        if !self.slow_fsync.is_zero() && elapsed > self.slow_fsync {
            self.slow_fsyncs.increment(1);
            if let Some(suppressed) = self.slow_warning.check() {
                tracing::warn!(
                    shard = self.shard,
                    topic,
                    partition,
                    duration_ms = elapsed.as_millis() as u64,
                    threshold_ms = self.slow_fsync.as_millis() as u64,
                    suppressed,
                    "slow fsync: the disk took longer than storage.slow_fsync_ms"
                );
            }
        }
    }
}

/// Shard counters that the shards keep as atomics anyway, copied into the registry at
/// scrape time so the shard loop pays nothing for them.
pub(crate) fn shard_gauges(counts: &ShardCounts) {
    let label = counts.shard.to_string();
    counter!(FSYNCS_TOTAL, "shard" => label.clone()).absolute(counts.fsyncs);
    gauge!(SHARD_QUEUE_DEPTH, "shard" => label.clone()).set(counts.queue_depth as f64);
    gauge!(RAFT_GROUPS, "shard" => label.clone()).set(counts.raft_groups as f64);
    gauge!(RAFT_GROUPS_QUIET, "shard" => label.clone()).set(counts.raft_groups_quiet as f64);
    counter!(LEADER_CHANGES_TOTAL, "shard" => label).absolute(counts.leader_changes);
}

/// The listener's counters, as the server keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerCounts {
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub tls_handshake_failures: u64,
}

/// One shard's counters, as the shard keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardCounts {
    pub shard: usize,
    pub fsyncs: u64,
    pub queue_depth: u64,
    pub raft_groups: u64,
    pub raft_groups_quiet: u64,
    pub leader_changes: u64,
}

/// The listener's counters, copied at scrape time.
pub(crate) fn server_counters(stats: &ListenerCounts) {
    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).absolute(stats.tls_handshake_failures);
    counter!(CONNECTIONS_ACCEPTED_TOTAL).absolute(stats.connections_accepted);
    gauge!(CONNECTIONS_OPEN).set(stats.connections_open as f64);
}

/// The constant build-info series.
pub(crate) fn build_info(engine: &'static str) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "engine" => engine).set(1.0);
}

/// The serving gauge.
pub(crate) fn serving(serving: bool) {
    gauge!(SERVING).set(if serving { 1.0 } else { 0.0 });
}
