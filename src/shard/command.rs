//! The messages from the bridge to a shard, and their replies.
//!
//! Must never: carry anything `!Send` or unbounded by a limit the bridge checked. Every
//! request carries its own reply channel; a dropped reply sender means the shard stopped.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::error::Result;
use super::results::{AppendAck, PartitionInfo, ReadResult};
use crate::observability::hops::Trace;
use crate::storage::CheckedBatch;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A partition for a shard to open: where its log lives and the watch it publishes its high
/// watermark on.
pub(crate) struct OpenPartition {
    pub topic: Arc<str>,
    pub partition: u32,
    pub dir: PathBuf,
    pub high_watermark: watch::Sender<u64>,
    /// The nodes that hold the partition (this one among them). Empty or one node: a solo
    /// partition, committed at its own sync with no Raft group (today's single-node path).
    pub replicas: Vec<u64>,
    /// The partition is being created (CreateTopic placed it here just now), rather than
    /// reopened or re-created to rejoin its group: only then may a replicated partition with
    /// an empty log initialize its Raft group. An empty log otherwise means lost data, and
    /// the replica catches up without voting (see `raft::group::Start`).
    pub new_group: bool,
    /// The partition moves onto this node (a reassignment): an empty log is a new member,
    /// which catches up before it votes but never voted in this group here, so it has no
    /// lost vote to recover (see `raft::group::GroupStart::Join`).
    pub joins: bool,
    /// As `TopicMeta::incarnation`: stamped on the group's Raft messages.
    pub incarnation: u64,
}

pub(crate) enum Command {
    Append {
        topic: Arc<str>,
        partition: u32,
        /// Checked and measured once, by `ShardSet::check_append`.
        batch: CheckedBatch,
        reply: Reply<AppendAck>,
        /// Per-hop stamps (issue 14); `Trace(None)` unless `WALRS_HOP_TRACE=1`.
        trace: Trace,
    },
    Read {
        topic: Arc<str>,
        partition: u32,
        from_offset: u64,
        max_bytes: u64,
        max_records: usize,
        reply: Reply<ReadResult>,
    },
    Truncate {
        topic: Arc<str>,
        partition: u32,
        before_offset: u64,
        /// The start offset after the truncation.
        reply: Reply<u64>,
    },
    /// Drops the records at and after `from_offset` (a batch boundary): replication's cut of
    /// a diverged tail.
    TruncateSuffix {
        topic: Arc<str>,
        partition: u32,
        from_offset: u64,
        reply: Reply<()>,
    },
    Describe {
        topic: Arc<str>,
        partitions: Vec<u32>,
        reply: Reply<Vec<PartitionInfo>>,
    },
    Open {
        partitions: Vec<OpenPartition>,
        reply: Reply<()>,
    },
    /// Syncs and closes the logs; with `remove`, deletes their directories too.
    Close {
        topic: Arc<str>,
        partitions: Vec<u32>,
        remove: bool,
        reply: Reply<()>,
    },
    /// Changes a replicated partition's voters (a reassignment; see
    /// `raft::group::Group::change_voters`): answered once the group has them, or refused
    /// `NotLeader` on a replica that does not lead.
    ChangeVoters {
        topic: Arc<str>,
        partition: u32,
        voters: Vec<u64>,
        reply: Reply<()>,
    },
    /// A Raft message from another node for one replicated partition's group.
    Raft {
        envelope: crate::proto::v1::RaftEnvelope,
        reply: oneshot::Sender<crate::proto::v1::RaftEnvelope>,
    },
    /// Finish what is queued before this, sync and close every log, and stop.
    Shutdown { reply: Reply<()> },
}

impl Command {
    /// Fails the request without serving it (the shard is stopping).
    pub fn refuse(self, error: impl Fn() -> super::Error) {
        // A caller that gave up has dropped its receiver; nobody is left to tell.
        fn send<T>(reply: Reply<T>, e: super::Error) {
            if reply.send(Err(e)).is_err() {
                tracing::trace!("caller left before the refusal");
            }
        }
        match self {
            Command::Append { reply, .. } => send(reply, error()),
            Command::Read { reply, .. } => send(reply, error()),
            Command::Truncate { reply, .. } => send(reply, error()),
            Command::TruncateSuffix { reply, .. } => send(reply, error()),
            Command::Describe { reply, .. } => send(reply, error()),
            Command::Open { reply, .. } => send(reply, error()),
            Command::Close { reply, .. } => send(reply, error()),
            Command::ChangeVoters { reply, .. } => send(reply, error()),
            Command::Shutdown { reply } => send(reply, error()),
            Command::Raft { envelope, reply } => {
                let refused = crate::raft::wire::refusal(envelope, error().to_string());
                if reply.send(refused).is_err() {
                    tracing::trace!("transport left before the refusal");
                }
            }
        }
    }
}
