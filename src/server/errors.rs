//! Errors of the server layer, and the one place where any error becomes a gRPC status.
//!
//! `Error` covers both a refused request (bad argument, a limit, an ACL denial) and a
//! failed start (config, TLS, bind, shards). `From<Error> for tonic::Status` is the only
//! conversion from shard and storage errors to status codes in the crate, and it follows
//! DESIGN.md's table: unknown topic or partition `NOT_FOUND`; offset outside the log
//! `OUT_OF_RANGE`; malformed request `INVALID_ARGUMENT`; over a limit or a full shard queue
//! `RESOURCE_EXHAUSTED`; no identity `UNAUTHENTICATED`; denied `PERMISSION_DENIED`; shutting
//! down `UNAVAILABLE`. A client's mistake is never `INTERNAL`. Every message says what to do.

use std::net::SocketAddr;

use thiserror::Error;
use tonic::{Code, Status};

use super::acl::{Action, Principal};
use super::identity;
use crate::{config, shard, storage};

#[derive(Debug, Error)]
pub enum Error {
    /// The request is malformed; `message` says what is wrong and what is allowed.
    #[error("{message}")]
    InvalidArgument { message: String },
    /// A request over a configured limit (other than record and batch sizes, which
    /// storage reports).
    #[error("{what} is {value}, over the limit {key} = {max}; {hint}")]
    OverLimit {
        what: &'static str,
        value: u64,
        key: &'static str,
        max: u64,
        hint: &'static str,
    },
    /// The caller has no identity the server accepts.
    #[error(transparent)]
    Unauthenticated(#[from] identity::Error),
    /// The ACL does not grant `action` on `topic` to `principal`.
    #[error(
        "{principal} may not {action} on topic {topic:?}; ask an operator for an [[acl]] entry granting \"{action}\""
    )]
    Denied {
        principal: Principal,
        action: Action,
        topic: String,
    },
    /// A cluster-wide operation did not reach every node it must; `message` says which and
    /// what to do.
    #[error("{message}")]
    Cluster { message: String },
    /// The request is well formed but the cluster's state does not allow it (a move of a
    /// partition already moving, a reassignment outside a cluster); `message` says what to
    /// do. Nothing changed.
    #[error("{message}")]
    Precondition { message: String },
    /// A node-to-node call about the metadata log reached a node that holds no replica of
    /// it (not a controller voter, or not yet opened).
    #[error("this node holds no replica of the cluster's metadata log; ask a controller voter")]
    NoMetadataReplica,
    /// The server is draining.
    #[error("the server is shutting down; retry against another server or after it restarts")]
    ShuttingDown,
    /// A shard (or the storage under it) refused or failed.
    #[error(transparent)]
    Shard(#[from] shard::Error),

    // Start-up failures; these never reach a client.
    #[error("invalid config")]
    Config(#[from] config::Invalid),
    #[error("TLS set-up failed")]
    Tls(#[from] crate::tls::Error),
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
    #[error("metrics set-up failed: {0}")]
    Metrics(String),
    #[error("cluster set-up failed: {0}")]
    ClusterSetup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument {
            message: message.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::OverLimit { .. } => Code::ResourceExhausted,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Denied { .. } => Code::PermissionDenied,
            Error::ShuttingDown | Error::Cluster { .. } => Code::Unavailable,
            Error::NoMetadataReplica | Error::Precondition { .. } => Code::FailedPrecondition,
            Error::Shard(e) => shard_code(e),
            Error::Config(_)
            | Error::Tls(_)
            | Error::Bind { .. }
            | Error::Serve(_)
            | Error::Metrics(_)
            | Error::ClusterSetup(_) => Code::Internal,
        };
        let hint = leader_hint(&err);
        let mut status = Status::new(code, err.to_string());
        if let Some(hint) = hint
            && let Ok(value) = hint.parse()
        {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }
}

/// The metadata key of a refusal's leader hint: `walrs-leader: <id>=<host:port>`.
pub const LEADER_METADATA: &str = "walrs-leader";

/// The node a refused request should go to instead, as `<id>=<host:port>`: the leader this
/// node knows of, or (for a partition this node does not hold) its preferred leader.
fn leader_hint(err: &Error) -> Option<String> {
    match err {
        Error::Shard(
            shard::Error::NotLeader {
                leader: Some(id),
                leader_addr: Some(addr),
                ..
            }
            | shard::Error::ReplicaBehind {
                leader: Some(id),
                leader_addr: Some(addr),
                ..
            },
        ) => Some(format!("{id}={addr}")),
        Error::Shard(shard::Error::NotReplica {
            replicas,
            first_addr: Some(addr),
            ..
        }) => replicas.first().map(|id| format!("{id}={addr}")),
        _ => None,
    }
}

fn shard_code(err: &shard::Error) -> Code {
    use shard::Error as E;
    match err {
        E::Storage { source, .. } => storage_code(source),
        E::Overloaded { .. } | E::TooManyTopics { .. } => Code::ResourceExhausted,
        E::UnknownTopic { .. } | E::UnknownPartition { .. } => Code::NotFound,
        E::TopicExists { .. } => Code::AlreadyExists,
        // Nothing changed on this node; the client retries on the leader (or after the
        // election). The leader hint travels in the message (and metadata, with addresses).
        E::ShuttingDown
        | E::NotLeader { .. }
        | E::NotReplica { .. }
        | E::ReplicaBehind { .. }
        | E::Replication { .. } => Code::Unavailable,
        E::InvalidTopicName { .. } | E::InvalidPartitionCount { .. } => Code::InvalidArgument,
        E::NotOnReplicated { .. } | E::NotReplicated { .. } | E::OutsideCluster { .. } => {
            Code::FailedPrecondition
        }
        // A batch being written (or a leader still catching up) is retried as it is; a gap,
        // a sequence older than the window or one skipped for good is the producer's to fix.
        E::Sequence { source, .. } if source.is_retriable() => Code::Unavailable,
        E::ProducersNotReady { .. } => Code::Unavailable,
        E::Sequence { .. } => Code::FailedPrecondition,
        // The server's own state, not the request: the message and the server log say more.
        // Topic metadata that could not be written for want of space (a CreateTopic, an
        // auto-creation on a full disk): nothing was created.
        E::Metadata { source, .. } if storage::is_out_of_space(source) => Code::ResourceExhausted,
        E::InvalidOptions(_)
        | E::Metadata { .. }
        | E::MetadataCorrupt { .. }
        | E::UringUnavailable { .. }
        | E::AlreadyOpen { .. }
        | E::ShardFailed { .. } => Code::Internal,
    }
}

fn storage_code(err: &storage::Error) -> Code {
    use storage::Error as E;
    match err {
        E::OffsetOutOfRange { .. } => Code::OutOfRange,
        E::RecordTooLarge { .. } | E::BatchTooLarge { .. } => Code::ResourceExhausted,
        E::EmptyBatch | E::HeaderNameTooLong { .. } | E::NotBatchBoundary { .. } => {
            Code::InvalidArgument
        }
        // The partition refuses writes until a restart recovers it: retry elsewhere/later.
        E::Poisoned { .. } => Code::Unavailable,
        // A full disk: nothing was written; the message says how to free space, and writes
        // resume by themselves once it is back.
        E::DiskFull { .. } | E::OutOfSpace { .. } | E::OutOfSpacePending { .. } => {
            Code::ResourceExhausted
        }
        E::Corrupt { .. } | E::BadStateFile { .. } => Code::DataLoss,
        // Follower-path refusals (replication's, never a client's).
        E::BadBatch { .. } => Code::InvalidArgument,
        E::NotContinuous { .. } | E::EntryGap { .. } | E::TermRegressed { .. } => {
            Code::FailedPrecondition
        }
        E::Io { .. } | E::Config(_) => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_design_table() {
        let status = |e: Error| Status::from(e).code();
        assert_eq!(
            status(shard::Error::UnknownTopic { topic: "t".into() }.into()),
            Code::NotFound
        );
        assert_eq!(
            status(Error::Shard(shard::Error::Storage {
                topic: "t".into(),
                partition: 0,
                source: std::sync::Arc::new(storage::Error::OffsetOutOfRange {
                    offset: 9,
                    start: 0,
                    end: 3
                }),
            })),
            Code::OutOfRange
        );
        assert_eq!(
            status(
                shard::Error::Overloaded {
                    shard: 0,
                    queue_depth: 1
                }
                .into()
            ),
            Code::ResourceExhausted
        );
        assert_eq!(status(Error::ShuttingDown), Code::Unavailable);
        let sequence = |source| {
            status(Error::Shard(shard::Error::Sequence {
                topic: "t".into(),
                partition: 0,
                source,
            }))
        };
        assert_eq!(
            sequence(shard::SequenceError::Gap {
                sequence: 5,
                expected: 2
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            sequence(shard::SequenceError::TooOld {
                sequence: 0,
                oldest: 3
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            sequence(shard::SequenceError::InFlight { sequence: 1 }),
            Code::Unavailable
        );
        assert_eq!(status(Error::invalid("x")), Code::InvalidArgument);
    }
}
