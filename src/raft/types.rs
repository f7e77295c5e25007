//! The types a partition's Raft group is built from: what an entry carries, what applying it
//! answers, and the openraft type configuration that ties them to a runtime.
//!
//! Owns: [`PartitionTypes`] (one configuration per runtime: glommio on the uring shards,
//! tokio's local set on the portable ones), [`Proposal`] (the application data of a normal
//! entry), [`Applied`] (what a committed append answers) and [`CallbackResponder`] (how a
//! committed append reaches the caller waiting on it).
//! Must never: encode anything. A proposal holds either the records a client sent (on the
//! leader, before the log encodes them) or a batch exactly as some log stored it.

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use openraft::RaftTypeConfig;
use openraft::raft::responder::Responder;
use openraft::rt::AsyncRuntime;

use crate::storage::{BatchHeader, CheckedBatch, VerifiedBatch};

/// A node of the cluster, as Raft names it (`[cluster] node_id`).
pub(crate) type NodeId = u64;

/// What a normal Raft entry carries: one batch of records.
#[derive(Clone)]
pub(crate) enum Proposal {
    /// Records a client appended on the leader, checked against the log's limits; the log
    /// encodes them when the entry is appended (offsets, term and index are known only then).
    Records(CheckedBatch),
    /// A batch as this replica's log stored it (header included), read back for shipping
    /// to followers or for applying. Its header says where it sits.
    Stored { header: BatchHeader, bytes: Bytes },
    /// A batch as the leader stored it, received and checked whole on arrival: a follower
    /// stores it as it is.
    Received(VerifiedBatch),
    /// A command to every replica (a control batch of one record, never served to
    /// consumers; see `store::truncate_command`), proposed on the leader.
    Command(CheckedBatch),
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proposal::Records(batch) => write!(f, "records({})", batch.len()),
            Proposal::Stored { header, .. } => write!(f, "stored{}", Offsets(header)),
            Proposal::Received(batch) => write!(f, "received{}", Offsets(batch.header())),
            Proposal::Command(_) => write!(f, "command"),
        }
    }
}

/// The offsets a batch holds, for messages.
struct Offsets<'a>(&'a BatchHeader);

impl fmt::Display for Offsets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(offsets {}..{})",
            self.0.base_offset,
            self.0.next_offset()
        )
    }
}

/// What applying a committed normal entry answers: where its records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub base_offset: u64,
    pub count: u32,
}

impl Applied {
    /// The answer to an entry without records (a membership change, a blank entry).
    pub(crate) const NOTHING: Applied = Applied {
        base_offset: 0,
        count: 0,
    };
}

/// A responder that hands the result to a closure: the shard passes one that answers the
/// append's reply channel, so a commit reaches the caller without a task of its own.
pub(crate) struct CallbackResponder<T> {
    callback: Box<dyn FnOnce(T)>,
}

impl<T> CallbackResponder<T> {
    pub(crate) fn new(callback: impl FnOnce(T) + 'static) -> Self {
        CallbackResponder {
            callback: Box::new(callback),
        }
    }
}

impl<C: RaftTypeConfig, T: 'static> Responder<C, T> for CallbackResponder<T> {
    fn on_complete(self, result: T) {
        (self.callback)(result);
    }
}

/// The openraft type configuration of a partition group on runtime `RT`.
///
/// A committed leader id is the term alone (`leader_id_std`), so an entry's term is exactly
/// the batch's `leader_epoch`. Nodes carry no data: addresses come from the cluster's
/// membership (`[cluster.peers]`), not from the Raft log.
pub(crate) struct PartitionTypes<RT>(PhantomData<fn() -> RT>);

// By hand: derives would demand the same traits of the runtime, which has none of them.
impl<RT> Clone for PartitionTypes<RT> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<RT> Copy for PartitionTypes<RT> {}
impl<RT> Default for PartitionTypes<RT> {
    fn default() -> Self {
        PartitionTypes(PhantomData)
    }
}
impl<RT> PartialEq for PartitionTypes<RT> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<RT> Eq for PartitionTypes<RT> {}
impl<RT> PartialOrd for PartitionTypes<RT> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<RT> Ord for PartitionTypes<RT> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}
impl<RT> fmt::Debug for PartitionTypes<RT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartitionTypes")
    }
}

pub(crate) type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;
pub(crate) type CommittedLeaderId = <LeaderId as openraft::vote::RaftLeaderId>::Committed;
pub(crate) type Vote = openraft::impls::Vote<LeaderId>;
pub(crate) type LogId = openraft::LogId<CommittedLeaderId>;
pub(crate) type Payload = openraft::EntryPayload<Proposal, NodeId, openraft::EmptyNode>;
pub(crate) type Entry = openraft::Entry<CommittedLeaderId, Payload>;
pub(crate) type Membership = openraft::Membership<NodeId, openraft::EmptyNode>;

impl<RT: AsyncRuntime> RaftTypeConfig for PartitionTypes<RT> {
    type D = Proposal;
    type R = Applied;
    type NodeId = NodeId;
    type Node = openraft::EmptyNode;
    type Term = u64;
    type LeaderId = LeaderId;
    type Vote = Vote;
    type Payload = Payload;
    type Entry = Entry;
    type AsyncRuntime = RT;
    type Responder<T>
        = CallbackResponder<T>
    where
        T: 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: 'static;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// The log id of entry `index` written in `term`.
pub(crate) fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term), index)
}
