//! The checks of a request's own content: topic names, an append's records, a read's caps,
//! a creation's partition count and replication factor.
//!
//! Owns: what makes a request malformed (`INVALID_ARGUMENT`) or too large
//! (`RESOURCE_EXHAUSTED`) whatever the server's state. Must never: look at the shards, the
//! ACL, the cluster or the clock; every function here is pure, so that the fuzz target
//! `server_request` (src/fuzzing/server.rs) drives exactly the code the service runs.

use super::errors::{Error, Result};
use crate::config;
use crate::proto::{self, v1::ReadRequest};
use crate::shard;
use crate::storage::{CheckedBatch, LogLimits};

/// A topic name a client may use: valid (`shard::check_topic_name`, within
/// `server.topic_name_bytes_max`) and not one of the cluster's own.
pub(crate) fn topic_name(name: &str, bytes_max: u32) -> Result<()> {
    if shard::is_internal_topic(name) {
        return Err(Error::invalid(format!(
            "topic name {name:?} is reserved: names starting with \"__\" are the cluster's \
             own topics (such as its metadata log); choose another name"
        )));
    }
    if shard::is_valid_topic_name(name, bytes_max as usize) {
        return Ok(());
    }
    let shown: String = name.chars().take(64).collect();
    Err(Error::invalid(format!(
        "topic name {shown:?} is invalid: use 1 to {bytes_max} bytes of ASCII letters, digits, \
         '.', '_' and '-' (not \".\" or \"..\")"
    )))
}

/// What an Append carries besides its topic, as the client sent it.
pub(crate) struct AppendBody {
    pub(crate) partition: Option<u32>,
    pub(crate) records: Vec<proto::v1::Record>,
    pub(crate) producer_id: u64,
}

/// Checks an append's records (at least one; an idempotent one names its partition) and
/// measures them against the partition logs' `limits`: the checked batch carries its size
/// to the shard. Records without a timestamp get `now_ms`.
pub(crate) fn append(
    topic: &str,
    body: AppendBody,
    limits: &LogLimits,
    now_ms: i64,
) -> Result<CheckedBatch> {
    if body.records.is_empty() {
        return Err(Error::invalid(
            "an AppendRequest needs at least one record in `records`",
        ));
    }
    if body.producer_id != 0 && body.partition.is_none() {
        return Err(Error::invalid(
            "an idempotent append (producer_id != 0) must name its `partition`: sequences are numbered per partition",
        ));
    }
    let records = proto::storage_records(body.records, now_ms);
    Ok(shard::check_batch(
        limits,
        topic,
        body.partition.unwrap_or(0),
        records,
    )?)
}

/// The byte and record caps of a read: 0 or anything above the server's limit is the limit.
pub(crate) fn read_limits(read: &ReadRequest, limits: &config::ServerConfig) -> (u64, usize) {
    let bytes_max = limits.read_bytes_max;
    let records_max = limits.read_records_max;

    let bytes = match u64::from(read.max_bytes) {
        0 => bytes_max,
        n => n.min(bytes_max),
    };
    let records = match read.max_records {
        0 => records_max,
        n => n.min(records_max),
    };
    (bytes, records as usize)
}

/// The partition count a creation asks for: 0 is the default; above `max` is refused.
pub(crate) fn partitions_for(asked: u32, default: u32, max: u32) -> Result<u32> {
    if asked > max {
        return Err(Error::invalid(format!(
            "{asked} partitions requested; a topic may have 1 to {max} \
             (server.partitions_per_topic_max), or 0 for the default of {default}"
        )));
    }
    Ok(if asked == 0 { default } else { asked })
}

/// Checks a creation's replication factor (0: the cluster's default) against the nodes
/// known, and returns the factor to use.
pub(crate) fn replication_factor_for(asked: u32, default: u32, nodes: u32) -> Result<u32> {
    if asked > nodes {
        return Err(Error::invalid(format!(
            "replication_factor {asked} requested, but the cluster knows {nodes} node(s): \
             ask for 1 to {nodes}, or 0 for the cluster's default (cluster.replication_factor)"
        )));
    }
    Ok(if asked == 0 {
        default.min(nodes)
    } else {
        asked
    })
}
