//! Observability: Prometheus metrics, the `/metrics` and `/health` HTTP endpoint, the
//! health state shared with gRPC health, request spans and log set-up.
//!
//! Owns: every metric name (`catalog`, with its help text and buckets), the recorder (one per
//! process, installed only when `[metrics] enabled`; without it every `metrics` macro is a
//! no-op), the plain-HTTP listener on `[metrics] listen` (`exporter`), the serving flag that
//! gRPC health and `/health` both report (`health`), the per-request span and counters
//! (`call`), the tracing subscriber with rate-limited warnings (`logging`), the per-hop
//! timestamps of an append that `WALRS_HOP_TRACE=1` turns on (`hops`), and the
//! per-partition replication series, rendered from the shards' snapshots at each scrape
//! rather than kept in the registry, so that they go when the partition does
//! (`partitions`).
//! Arrows run one way: `shard` and `server` call the handles in `catalog`; the exporter
//! reads their values through the `MetricsSource` trait they implement. Nothing here
//! imports `shard` or `server`.
//! Must never: put a record key or payload in a log line or a label, block a shard thread,
//! or take a lock on the request path (the `metrics` handles are atomics; the registry's
//! lookups are lock-free reads once a series exists). Labels are bounded: RPC names, status
//! codes, shard ids, topic names (bounded by `server.topics_max`) and identities (bounded by
//! the certificates the CA issued).

mod call;
mod catalog;
mod exporter;
mod health;
pub mod hops;
mod logging;
mod partitions;

pub use call::{ActiveStream, Rpc, RpcCall, code_name};
pub use catalog::{
    ListenerCounts, ShardCounts, ShardMetrics, TopicDiskUsage, authentication_failed,
    authorization_denied, bytes_and_records_in, bytes_and_records_out, controller_state,
    gossip_members, install_recorder, observe_append, observe_read, shard_overloaded,
    topic_deleted, topic_disk_usage,
};
pub use exporter::{MetricsEndpoint, MetricsSource};
pub use health::Health;
pub use logging::{RateLimit, init_logging};
pub use partitions::{PartitionReplication, ReplicaLag};

/// Metric names, for tests and dashboards.
pub mod names {
    pub use super::catalog::names::*;
}
