//! A partition group's state machine. The records are already in the log; applying a
//! committed entry only makes it readable (moves the partition's commit mark, the high
//! watermark) and answers the append that proposed it.
//!
//! Owns: the applied log id and the membership as of it, in memory.
//! Must never: touch the log itself. It asks the shard (`LogOp::Commit`), which moves the
//! commit mark and only then answers the appends, so an acknowledged record is readable
//! on the leader before its producer hears of it.
//!
//! Its applied log id and membership survive a restart through the shard's applied mark
//! (storage's `raft_applied`, saved lazily): a restarted replica resumes from it instead of
//! replaying its whole log, and a mark older than the truth only means replaying a little.
//!
//! Snapshots are not built yet: the policy is `Never`, so openraft never asks for one.
//! A snapshot of a replicated log is metadata only (last log id, membership, start
//! offset); it comes with purging.

use std::io;

use futures::StreamExt;
use openraft::entry::RaftEntry;
use openraft::rt::AsyncRuntime;
use openraft::storage::{ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership};

use super::store::{Key, LogOp, OpSender};
use super::types::{Applied, CommittedLeaderId, LogId, NodeId, PartitionTypes, Proposal};

type Stored = StoredMembership<CommittedLeaderId, NodeId, openraft::EmptyNode>;
type Snapshot = openraft::storage::Snapshot<CommittedLeaderId, NodeId, openraft::EmptyNode, ()>;
type SnapshotMeta = openraft::storage::SnapshotMeta<CommittedLeaderId, NodeId, openraft::EmptyNode>;

/// The answers a commit sends once the commit mark has passed their entries.
pub(crate) type Acks<RT> = Vec<(ApplyResponder<PartitionTypes<RT>>, Applied)>;

pub(crate) struct PartitionStateMachine<RT: AsyncRuntime> {
    key: Key,
    ops: OpSender<RT>,
    applied: Option<LogId>,
    membership: Stored,
    /// The membership changed since the shard last heard it: the next commit carries it.
    membership_unsent: bool,
}

impl<RT: AsyncRuntime> PartitionStateMachine<RT> {
    /// A state machine resuming from `resume` (the applied mark the shard saved: applied log
    /// id and membership), or from nothing (the log is replayed).
    pub(crate) fn new(key: Key, ops: OpSender<RT>, resume: Option<(LogId, Stored)>) -> Self {
        let (applied, membership) = match resume {
            Some((applied, membership)) => (Some(applied), membership),
            None => (None, Stored::default()),
        };
        PartitionStateMachine {
            key,
            ops,
            applied,
            membership,
            membership_unsent: true,
        }
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what}: partition snapshots are not built yet (snapshot policy is Never)"),
    )
}

/// Builds no snapshot: see the module doc.
pub(crate) struct NoSnapshots;

impl<RT: AsyncRuntime> RaftSnapshotBuilder<PartitionTypes<RT>> for NoSnapshots {
    type SnapshotData = ();

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        Err(unsupported("build_snapshot"))
    }
}

impl<RT: AsyncRuntime> RaftStateMachine<PartitionTypes<RT>> for PartitionStateMachine<RT> {
    type SnapshotData = ();
    type SnapshotBuilder = NoSnapshots;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Stored), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<PartitionTypes<RT>>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut acks: Acks<RT> = Vec::new();
        let mut last = None;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let id = entry.log_id();
            match &entry.payload {
                EntryPayload::Normal(Proposal::Stored { header, .. }) => {
                    let applied = Applied {
                        base_offset: header.base_offset,
                        count: header.record_count,
                    };
                    if let Some(responder) = responder {
                        acks.push((responder, applied));
                    }
                }
                EntryPayload::Normal(Proposal::Records(_) | Proposal::Received(_)) => {
                    // Entries are applied as read back from the log, which stores them.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("entry {id} reached the state machine unstored"),
                    ));
                }
                EntryPayload::Membership(m) => {
                    self.membership = Stored::new(Some(id), m.clone());
                    self.membership_unsent = true;
                }
                EntryPayload::Blank => {}
            }
            last = Some(id);
        }
        if let Some(id) = last {
            self.applied = Some(id);
            let context = std::mem::take(&mut self.membership_unsent)
                .then(|| super::store::applied_context(&self.membership));
            let op = LogOp::Commit {
                key: self.key.clone(),
                index: id.index(),
                term: id.committed_leader_id().term,
                context,
                acks,
            };
            // A stopped shard answers nobody; the group is being torn down with it.
            if self.ops.send(op).is_err() {
                tracing::debug!(topic = %self.key.0, partition = self.key.1, "commit after the shard stopped");
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta,
        _snapshot: (),
    ) -> Result<(), io::Error> {
        Err(unsupported("install_snapshot"))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(None)
    }
}
