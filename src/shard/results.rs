//! What the shard set's calls return: acknowledgements, reads, topic descriptions, and the
//! future of a queued append.
//!
//! Owns: plain result values that cross from a shard thread to the caller (all `Send`).
//! Must never: hold anything of a shard's state; a result is a copy.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::sync::oneshot;

use super::error::Result;
use super::set::ShardSet;
use crate::storage::Record;

/// An append's acknowledgement: where its records landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendAck {
    pub partition: u32,
    /// Offset of the first record; the others follow it.
    pub base_offset: u64,
    pub count: u32,
}
/// What a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub records: Vec<Record>,
    /// Where the next read should start.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub start_offset: u64,
}
/// One partition in a topic description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionInfo {
    pub id: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    pub high_watermark: u64,
    pub shard: u32,
    /// Segments the partition's log holds (for metrics).
    pub segments: u32,
    /// Bytes in the partition's store files (for metrics).
    pub size_bytes: u64,
    /// The nodes holding the partition, preferred leader first; empty = solo (this node).
    pub replicas: Vec<u64>,
    /// The leader this node knows of (replicated partitions only).
    pub leader: Option<u64>,
    /// The Raft term this node is in for the partition (0 for a solo partition).
    pub leader_epoch: u64,
    /// False when this node holds no replica: the offsets are unknown here (zeros).
    pub local: bool,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
}
/// An append in a shard's queue: resolves to its acknowledgement (see
/// [`ShardSet::append_enqueue`]). Dropping it does not withdraw the append.
#[must_use = "the append is queued either way; poll this to learn whether it succeeded"]
pub struct PendingAppend {
    pub(super) ack: oneshot::Receiver<Result<AppendAck>>,
    pub(super) shard: usize,
    pub(super) set: ShardSet,
}

impl Future for PendingAppend {
    type Output = Result<AppendAck>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<AppendAck>> {
        match ready!(Pin::new(&mut self.ack).poll(cx)) {
            Ok(acked) => Poll::Ready(acked),
            // The shard dropped the reply unanswered: it stopped.
            Err(_) => Poll::Ready(Err(self.set.stopped(self.shard))),
        }
    }
}

impl std::fmt::Debug for PendingAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAppend")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}
