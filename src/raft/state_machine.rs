//! A partition group's state machine. The records are already in the log; applying a
//! committed entry only makes it readable (moves the partition's commit mark, the high
//! watermark), answers the append that proposed it, and tells the shard where an idempotent
//! producer's batch went (so every replica keeps the producer windows a new leader needs).
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
//! A snapshot is metadata only (the entry it covers up to, the membership, the offset the log
//! goes on at): the records are the log. openraft builds one when the shard asks it to purge
//! (retention), never by itself (the policy is `Never`), and sends it to a follower that is
//! behind the leader's log start; installing it empties that follower's log and starts it
//! again at the snapshot's offset.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use futures::StreamExt;
use openraft::entry::RaftEntry;
use openraft::rt::AsyncRuntime;
use openraft::storage::{ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership};

use super::recent::SharedRecent;
use super::store::{Key, LogOp, OpSender};
use super::types::{Applied, CommittedLeaderId, LogId, NodeId, PartitionTypes, Proposal};

type Stored = StoredMembership<CommittedLeaderId, NodeId, openraft::EmptyNode>;
pub(crate) type Snapshot =
    openraft::storage::Snapshot<CommittedLeaderId, NodeId, openraft::EmptyNode, PartitionSnapshot>;
pub(crate) type SnapshotMeta =
    openraft::storage::SnapshotMeta<CommittedLeaderId, NodeId, openraft::EmptyNode>;

/// A partition snapshot's data: only where the log goes on after it. The records are the
/// log itself; a follower installing the snapshot empties its log and starts it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionSnapshot {
    pub next_offset: u64,
}

/// The openraft snapshot a saved snapshot mark describes.
pub(crate) fn snapshot_of(mark: &crate::storage::AppliedMark) -> Option<Snapshot> {
    let (last, membership) = super::store::resume_from(mark)?;
    Some(Snapshot {
        meta: SnapshotMeta {
            last_log_id: Some(last),
            last_membership: membership,
        },
        snapshot: PartitionSnapshot {
            next_offset: mark.next_offset,
        },
    })
}

/// The answers a commit sends once the commit mark has passed their entries.
pub(crate) type Acks<RT> = Vec<(ApplyResponder<PartitionTypes<RT>>, Applied)>;

pub(crate) struct PartitionStateMachine<RT: AsyncRuntime> {
    key: Key,
    ops: OpSender<RT>,
    applied: Option<LogId>,
    membership: Stored,
    /// The membership changed since the shard last heard it: the next commit carries it.
    membership_unsent: bool,
    /// Where the next snapshot should end: set by the group before it asks for one to purge.
    snapshot_target: Rc<Cell<Option<u64>>>,
    /// The group's newest entries, forgotten when a snapshot empties the log.
    recent: SharedRecent,
}

impl<RT: AsyncRuntime> PartitionStateMachine<RT> {
    /// A state machine resuming from `resume` (the applied mark the shard saved: applied log
    /// id and membership), or from nothing (the log is replayed).
    pub(crate) fn new(
        key: Key,
        ops: OpSender<RT>,
        resume: Option<(LogId, Stored)>,
        snapshot_target: Rc<Cell<Option<u64>>>,
        recent: SharedRecent,
    ) -> Self {
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
            snapshot_target,
            recent,
        }
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("partition snapshot: {what}"),
    )
}

/// Builds a snapshot of what the state machine had applied when it was asked: saves the
/// snapshot mark through the shard.
pub(crate) struct SnapshotBuilder<RT: AsyncRuntime> {
    key: Key,
    ops: OpSender<RT>,
    applied: Option<LogId>,
    membership: Stored,
    /// Where the snapshot should end (the purge it is for), when below `applied`.
    target: Option<u64>,
}

impl<RT: AsyncRuntime> RaftSnapshotBuilder<PartitionTypes<RT>> for SnapshotBuilder<RT> {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let applied = self
            .applied
            .ok_or_else(|| unsupported("a snapshot before anything is applied"))?;
        // A snapshot ends at the purge it is for, so that a follower installing it starts
        // its log where the leader's starts, not past records the leader still serves. It
        // must cover the membership it carries.
        let membership_index = self.membership.log_id().as_ref().map_or(0, |id| id.index());
        let index = self
            .target
            .map_or(applied.index(), |t| t.min(applied.index()))
            .max(membership_index);
        let context = super::store::applied_context(&self.membership);
        let key = self.key.clone();
        let mark = super::store::ask(&self.ops, |reply| LogOp::Snapshot {
            key,
            index,
            context,
            reply,
        })
        .await?;
        snapshot_of(&mark).ok_or_else(|| unsupported("a snapshot mark that does not decode"))
    }
}

impl<RT: AsyncRuntime> RaftStateMachine<PartitionTypes<RT>> for PartitionStateMachine<RT> {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = SnapshotBuilder<RT>;

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
        let mut truncate_before: Option<u64> = None;
        let mut producers = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let id = entry.log_id();
            match &entry.payload {
                EntryPayload::Normal(Proposal::Stored { header, bytes }) => {
                    if header.flags & crate::storage::FLAG_CONTROL != 0
                        && let Some(before) = super::store::truncate_of(bytes)?
                    {
                        truncate_before = Some(truncate_before.map_or(before, |t| t.max(before)));
                    }
                    let applied = Applied {
                        base_offset: header.base_offset,
                        count: header.record_count,
                    };
                    if header.producer_id != 0 && header.flags & crate::storage::FLAG_CONTROL == 0 {
                        producers.push(super::store::ProducerBatch {
                            stamp: crate::storage::ProducerStamp {
                                producer_id: header.producer_id,
                                sequence: header.producer_seq,
                            },
                            applied,
                        });
                    }
                    if let Some(responder) = responder {
                        acks.push((responder, applied));
                    }
                }
                EntryPayload::Normal(
                    Proposal::Records(_) | Proposal::Received(_) | Proposal::Command(_),
                ) => {
                    // Entries are applied as read back from the log, which stores them.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("entry {id} reached the state machine unstored"),
                    ));
                }
                EntryPayload::Membership(m) => {
                    self.membership = Stored::new(Some(id), m.clone());
                    self.membership_unsent = true;
                    // A membership change (a reassignment) waits for this answer. Its control
                    // batch holds no record: nothing to point at.
                    if let Some(responder) = responder {
                        acks.push((responder, Applied::NOTHING));
                    }
                }
                EntryPayload::Blank => {
                    if let Some(responder) = responder {
                        acks.push((responder, Applied::NOTHING));
                    }
                }
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
                truncate_before,
                acks,
                producers,
            };
            // A stopped shard answers nobody; the group is being torn down with it.
            if self.ops.send(op).is_err() {
                tracing::debug!(topic = %self.key.0, partition = self.key.1, "commit after the shard stopped");
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            key: self.key.clone(),
            ops: self.ops.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
            target: self.snapshot_target.get(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: PartitionSnapshot,
    ) -> Result<(), io::Error> {
        let last = meta
            .last_log_id
            .ok_or_else(|| unsupported("a snapshot that covers no entry"))?;
        let mark = crate::storage::AppliedMark {
            term: last.committed_leader_id().term,
            index: last.index(),
            next_offset: snapshot.next_offset,
            context: super::store::applied_context(&meta.last_membership),
        };
        let key = self.key.clone();
        // The log may be emptied: its newest entries are read from it again, if they stay.
        self.recent.borrow_mut().forget();
        super::store::ask(&self.ops, |reply| LogOp::Install { key, mark, reply }).await?;
        self.applied = Some(last);
        self.membership = meta.last_membership.clone();
        self.membership_unsent = true;
        tracing::info!(topic = %self.key.0, partition = self.key.1, %last, next_offset = snapshot.next_offset, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let key = self.key.clone();
        let mark =
            super::store::ask(&self.ops, |reply| LogOp::CurrentSnapshot { key, reply }).await?;
        Ok(mark.as_ref().and_then(snapshot_of))
    }
}
