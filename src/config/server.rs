//! `[server]`: the gRPC front end's limits.
//!
//! The keys that bound the shards (`read_bytes_max`, `topics_max`,
//! `partitions_per_topic_max`) take their defaults from [`ShardOptions::new`] and are checked
//! by the shard layer (see `Config::validate`); the rest are the server's own and are
//! checked here.

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::shard::{ShardOptions, TOPIC_NAME_BYTES_MAX};
use crate::storage::check_range;

const SECOND_MS: u64 = 1000;
const GIB: u64 = 1 << 30;
const KIB: u32 = 1 << 10;
const MIB: u32 = 1 << 20;
/// HTTP/2's own bounds on SETTINGS_MAX_FRAME_SIZE (RFC 9113, section 6.5.2).
const HTTP2_FRAME_BYTES: (u32, u32) = (16 * KIB, (1 << 24) - 1);
/// The initial windows a config may set: from HTTP/2's default window (a smaller one only
/// slows the peer down) up to 1 GiB (a window is memory a peer may fill).
const HTTP2_WINDOW_BYTES: (u32, u32) = ((1 << 16) - 1, 1 << 30);
/// Most headers per record any config may allow: each header of a request is a map entry
/// of its own (two small allocations) before the count is checked.
const HEADERS_PER_RECORD_MAX: u32 = 1 << 16;

/// `[server]`: the gRPC front end's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Appends of one AppendStream waiting for their acknowledgement.
    pub append_stream_inflight_max: u32,
    /// Cap on a Read's `max_wait_ms`.
    pub read_max_wait_ms_max: u64,
    /// Cap on one ReadResponse's record bytes (a single larger batch is still returned).
    pub read_bytes_max: u64,
    /// Cap on one ReadResponse's record count.
    pub read_records_max: u32,
    pub topics_max: u32,
    pub partitions_per_topic_max: u32,
    /// Concurrent client connections.
    pub connections_max: u32,
    /// Concurrent HTTP/2 streams (calls) per connection. Each stream may be decoding one
    /// request of up to `2 × storage.batch_bytes_max`, so buffered requests take at worst
    /// `connections_max × streams_per_connection_max × 2 × storage.batch_bytes_max`.
    pub streams_per_connection_max: u32,
    /// Bytes of record data accepted for appending and not yet acknowledged, over all
    /// connections: the server-wide bound on what queued appends hold. An append that would
    /// pass it waits a moment, then gets RESOURCE_EXHAUSTED.
    pub inflight_append_bytes_max: u64,
    /// Longest topic name; names match `[a-zA-Z0-9._-]+` (`shard::check_topic_name`).
    pub topic_name_bytes_max: u32,
    /// Headers one record of an append may carry; more is INVALID_ARGUMENT.
    pub headers_per_record_max: u32,
    /// How long a new connection has to finish its TLS handshake before it is closed.
    pub handshake_timeout_ms: u64,
    /// How often the server pings an HTTP/2 connection to learn whether its peer is still
    /// there; 0 = never. A peer that does not answer within `keepalive_timeout_ms` is
    /// disconnected, freeing its place under `connections_max`.
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout_ms: u64,
    /// The largest HTTP/2 frame a peer may send (SETTINGS_MAX_FRAME_SIZE). Larger frames
    /// carry a big append in fewer pieces, which costs the sender and the server less CPU;
    /// the server's read buffer of a connection grows to one frame.
    pub http2_frame_bytes_max: u32,
    /// Request bytes one call (HTTP/2 stream) may send ahead of the server reading them:
    /// its initial flow-control window.
    pub http2_stream_window_bytes: u32,
    /// Request bytes one connection may send ahead of the server reading them, over all its
    /// calls: what the HTTP/2 layer may hold unread per connection, so
    /// `connections_max × http2_connection_window_bytes` bounds it server-wide.
    pub http2_connection_window_bytes: u32,
    /// The Linux scheduling policy of the served process's threads (`walrs serve` only).
    pub thread_policy: ThreadPolicy,
}

/// `server.thread_policy`: how the threads of a served process are scheduled
/// (`server::threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadPolicy {
    /// `SCHED_BATCH` for every thread (no privilege needed, priority and nice unchanged):
    /// a thread woken by another does not preempt the running one, so the front end, the
    /// shard and io_uring's workers hand work over without a context switch for each
    /// request when they share a core. Costs this process its own wake-up preemption of
    /// other processes; it never delays theirs. A process started under a real-time or idle
    /// policy keeps it.
    #[default]
    Batch,
    /// The policy the process was started with (`SCHED_OTHER`, or whatever `chrt` or
    /// systemd's `CPUSchedulingPolicy=` gave it), left as it is.
    Unchanged,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let shard = ShardOptions::new("");
        ServerConfig {
            append_stream_inflight_max: 128,
            read_max_wait_ms_max: 30 * SECOND_MS,
            read_bytes_max: shard.read_bytes_max,
            read_records_max: 10_000,
            topics_max: shard.topics_max,
            partitions_per_topic_max: shard.partitions_max,
            connections_max: 1024,
            streams_per_connection_max: 128,
            inflight_append_bytes_max: 256 << 20,
            topic_name_bytes_max: TOPIC_NAME_BYTES_MAX as u32,
            headers_per_record_max: 1024,
            handshake_timeout_ms: 10 * SECOND_MS,
            keepalive_interval_ms: 30 * SECOND_MS,
            keepalive_timeout_ms: 20 * SECOND_MS,
            http2_frame_bytes_max: 256 * KIB,
            // hyper's own defaults: larger windows measured no faster (BENCHMARKS.md).
            http2_stream_window_bytes: MIB,
            http2_connection_window_bytes: MIB,
            // Batch: W3 on one core at 0.83× Redis, against 0.71× (BENCHMARKS.md, session 33).
            thread_policy: ThreadPolicy::default(),
        }
    }
}

impl ServerConfig {
    /// Checks the server's own limits (the shard layer checks the others).
    /// `batch_bytes_max` is `storage.batch_bytes_max`.
    pub(super) fn validate(&self, batch_bytes_max: u64) -> Result<(), Invalid> {
        let key = |name: &str| format!("server.{name}");
        check_range(
            key("append_stream_inflight_max"),
            self.append_stream_inflight_max,
            1,
            1 << 16,
            " appends",
        )?;
        check_range(
            key("read_max_wait_ms_max"),
            self.read_max_wait_ms_max,
            0,
            3600 * SECOND_MS,
            " ms",
        )?;
        check_range(
            key("read_records_max"),
            self.read_records_max,
            1,
            1_000_000,
            " records",
        )?;
        check_range(
            key("connections_max"),
            self.connections_max,
            1,
            1 << 20,
            " connections",
        )?;
        check_range(
            key("streams_per_connection_max"),
            self.streams_per_connection_max,
            1,
            1 << 16,
            " streams",
        )?;
        check_range(
            key("inflight_append_bytes_max"),
            self.inflight_append_bytes_max,
            batch_bytes_max,
            64 * GIB,
            " bytes (at least storage.batch_bytes_max, so one batch can be in flight)",
        )?;
        check_range(
            key("topic_name_bytes_max"),
            self.topic_name_bytes_max,
            1,
            TOPIC_NAME_BYTES_MAX as u32,
            " bytes",
        )?;
        check_range(
            key("headers_per_record_max"),
            self.headers_per_record_max,
            0,
            HEADERS_PER_RECORD_MAX,
            " headers",
        )?;
        check_range(
            key("handshake_timeout_ms"),
            self.handshake_timeout_ms,
            100,
            600 * SECOND_MS,
            " ms",
        )?;
        check_range(
            key("keepalive_interval_ms"),
            self.keepalive_interval_ms,
            0,
            3600 * SECOND_MS,
            " ms (0 = never ping)",
        )?;
        check_range(
            key("keepalive_timeout_ms"),
            self.keepalive_timeout_ms,
            100,
            3600 * SECOND_MS,
            " ms",
        )?;
        check_range(
            key("http2_frame_bytes_max"),
            self.http2_frame_bytes_max,
            HTTP2_FRAME_BYTES.0,
            HTTP2_FRAME_BYTES.1,
            " bytes (HTTP/2's own bounds)",
        )?;
        check_range(
            key("http2_stream_window_bytes"),
            self.http2_stream_window_bytes,
            HTTP2_WINDOW_BYTES.0,
            HTTP2_WINDOW_BYTES.1,
            " bytes",
        )?;
        check_range(
            key("http2_connection_window_bytes"),
            self.http2_connection_window_bytes,
            self.http2_stream_window_bytes,
            HTTP2_WINDOW_BYTES.1,
            " bytes (at least server.http2_stream_window_bytes: a smaller connection window \
             would cap every call below its stream window)",
        )?;
        Ok(())
    }
}
