//! Errors of the shard layer. Each variant carries what a caller needs to act on it; the
//! server maps them to gRPC status codes (never here: shards know nothing of gRPC).
//!
//! Storage errors are shared (`Arc`) because one failed sync fails every append it covered,
//! and each of those callers gets the same cause.

use std::path::PathBuf;
use std::sync::Arc;

use crate::storage;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("partition {topic}/{partition}: {source}")]
    Storage {
        topic: String,
        partition: u32,
        #[source]
        source: Arc<storage::Error>,
    },
    #[error(
        "shard {shard} is overloaded ({queue_depth} requests queued); retry with backoff or slow down"
    )]
    Overloaded { shard: usize, queue_depth: usize },
    #[error("unknown topic {topic:?}; create it first")]
    UnknownTopic { topic: String },
    #[error("topic {topic:?} has no partition {partition}; its partitions are 0..{partitions}")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("topic {topic:?} already exists")]
    TopicExists { topic: String },
    #[error("the shards are shutting down; retry against another server")]
    ShuttingDown,
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("invalid partition count {partitions}: must be 1..={max}")]
    InvalidPartitionCount { partitions: u32, max: u32 },
    #[error("invalid shard options: {0}")]
    InvalidOptions(String),
    #[error("topic metadata I/O error during {op} on {}: {source}", path.display())]
    Metadata {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt topic metadata in {}: {reason}", path.display())]
    MetadataCorrupt { path: PathBuf, reason: String },
    #[error("the io_uring engine is unavailable: {reason}")]
    UringUnavailable { reason: String },
    /// A bug upstream: the bridge asked a shard to open a partition it already holds.
    #[error("partition {topic}/{partition} is already open on shard {shard}")]
    AlreadyOpen {
        topic: String,
        partition: u32,
        shard: usize,
    },
    #[error("too many topics: {topics} exist, the limit is {max}; delete a topic first")]
    TooManyTopics { topics: u64, max: u64 },
    /// A replicated partition refused a write because this node does not lead it.
    #[error("{}", not_leader_message(topic, *partition, *leader))]
    NotLeader {
        topic: String,
        partition: u32,
        /// The leader this node knows of (node id), if any.
        leader: Option<u64>,
        /// Where the leader serves, when its address is known.
        leader_addr: Option<String>,
    },
    /// The partition's replicas are on other nodes; this node holds none of it.
    #[error(
        "this node holds no replica of partition {topic}/{partition}; its replicas are on nodes {replicas:?}: send it to one of them"
    )]
    NotReplica {
        topic: String,
        partition: u32,
        /// The nodes that hold it, preferred leader first.
        replicas: Vec<u64>,
        /// Where the preferred leader serves, when its address is known.
        first_addr: Option<String>,
    },
    /// A read past the end of this replica's log: another replica may hold it (this one is
    /// behind, or lost its data and is catching up).
    #[error("partition {topic}/{partition}: this replica ends at offset {end_offset} and may be behind; read from the leader{}", leader.map_or(String::new(), |l| format!(" (node {l})")))]
    ReplicaBehind {
        topic: String,
        partition: u32,
        end_offset: u64,
        leader: Option<u64>,
        leader_addr: Option<String>,
    },
    /// An operation that would change a replicated partition's log behind its Raft group.
    #[error(
        "partition {topic}/{partition} is replicated: {what} would change its log behind its Raft group, and is not supported on it; nothing was changed"
    )]
    NotOnReplicated {
        topic: String,
        partition: u32,
        what: &'static str,
    },
    /// A request for a replicated partition on a node started without a cluster
    /// (`cluster.node_id = 0`): no Raft group can run here, so the partition is not served.
    #[error(
        "partition {topic}/{partition} has replicas on nodes {replicas:?}, but this node runs without a cluster (its config has no [cluster] node_id), so it does not serve it: restart the node with its cluster's config, or send the request to a node of the cluster; nothing was changed"
    )]
    OutsideCluster {
        topic: String,
        partition: u32,
        replicas: Vec<u64>,
    },
    /// A reassignment of a partition with one replica: it has no Raft group to change.
    #[error(
        "partition {topic}/{partition} has a single replica (no Raft group), so its replicas cannot be moved; nothing was changed"
    )]
    NotReplicated { topic: String, partition: u32 },
    /// A replicated partition's group failed or stopped before it answered.
    #[error("partition {topic}/{partition}: replication failed: {reason}; retry")]
    Replication {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("shard {shard} failed: {reason}")]
    ShardFailed { shard: usize, reason: String },
    /// An idempotent producer's batch refused for its sequence; nothing was written.
    #[error("partition {topic}/{partition}: {source}")]
    Sequence {
        topic: String,
        partition: u32,
        #[source]
        source: super::producers::SequenceError,
    },
    /// A new leader has not yet applied the entries of the terms before its own, so it does
    /// not yet know every producer's window: it refuses idempotent batches until it has.
    #[error(
        "partition {topic}/{partition}: this node just became the leader and is still applying its predecessors' entries; retry shortly"
    )]
    ProducersNotReady { topic: String, partition: u32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn storage(topic: &str, partition: u32, source: storage::Error) -> Error {
        Error::Storage {
            topic: topic.to_owned(),
            partition,
            source: Arc::new(source),
        }
    }

    /// The storage error underneath, when there is one.
    pub fn storage_error(&self) -> Option<&storage::Error> {
        match self {
            Error::Storage { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Attaches the operation and path to an `io::Error` from the metadata files.
pub(crate) fn meta_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Metadata { op, path, source }
}

fn not_leader_message(topic: &str, partition: u32, leader: Option<u64>) -> String {
    match leader {
        Some(id) => format!(
            "this node does not lead partition {topic}/{partition}; node {id} does: send it there"
        ),
        None => format!(
            "this node does not lead partition {topic}/{partition} and no leader is known yet (an election is under way); retry shortly"
        ),
    }
}
