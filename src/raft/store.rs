//! A partition group's log storage: openraft's `RaftLogStorage` and `RaftLogReader` over the
//! partition's `Log`, which stays owned by the shard.
//!
//! Owns: [`LogOp`] (what a group asks of its log), the handles openraft holds
//! ([`PartitionLog`], [`PartitionLogReader`]) which only send ops to the shard and await the
//! answer, and [`serve`], which the shard calls to carry an op out on the `Log` it owns.
//! Must never: touch a `Log` from a Raft task. The shard is the log's one owner; a Raft task
//! holds a channel to it, so no lock is taken and a group's I/O joins the shard's group
//! commit: an append is written when served, and its `IOFlushed` is called after the flush
//! that makes it durable (one fdatasync per touched partition covers many entries).
//!
//! Mapping (docs/FORMAT.md): one Raft entry is one batch; the batch's `leader_epoch` is the
//! entry's term and its `raft_index` the entry's index. Blank and membership entries are
//! control batches of one record whose key names the kind (`raft.blank`,
//! `raft.membership`) and whose value is, for a membership, a `walrs.v1.RaftMembership`
//! message. The vote is the log's `raft_state` file; whether it was committed is not kept (a
//! restarted node learns it again from the leader, which is safe).
//!
//! Purging drops whole segments below the entry after the purged one, after saving the purge
//! mark (`raft_purged`), which tells openraft where the log starts. A snapshot is metadata
//! only (`raft_snapshot`: the entry it covers up to, the offset after it, the membership);
//! installing one empties the log and starts it again at that offset. `Truncate` is a
//! command entry (`raft.truncate`, a control batch): each replica purges below the cut when
//! it applies it, so every replica's log starts at the same batch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::rt::AsyncRuntime;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EmptyNode, EntryPayload, OptionalSend};
use prost::Message;
use tokio::sync::oneshot;

use super::recent::SharedRecent;
use super::types::{
    Entry, LogId, Membership, NodeId, PartitionTypes, Payload, Proposal, Vote, log_id,
};
use crate::proto::v1 as pb;
use crate::storage::{self, CheckedBatch, Engine, EntryMeta, Log, LogLimits, Record};

/// A group's membership with the id of the entry that set it.
pub(crate) type StoredMembership =
    openraft::StoredMembership<super::types::CommittedLeaderId, NodeId, EmptyNode>;

const BLANK_KEY: &[u8] = b"raft.blank";
const MEMBERSHIP_KEY: &[u8] = b"raft.membership";
/// A command entry: drop the records below the offset in the value (u64, little-endian).
/// Stored and shipped as a control batch; each replica purges up to it when it applies it.
const TRUNCATE_KEY: &[u8] = b"raft.truncate";

/// The command entry that truncates a replicated partition below `before_offset`.
pub(crate) fn truncate_command(limits: &LogLimits, before_offset: u64) -> io::Result<CheckedBatch> {
    let record = Record {
        key: Bytes::from_static(TRUNCATE_KEY),
        value: Bytes::copy_from_slice(&before_offset.to_le_bytes()),
        timestamp_ms: storage::now_ms(),
        ..Record::default()
    };
    limits.check(vec![record]).map_err(io_error)
}

/// The offset a stored command batch truncates below, if it is a truncate command.
pub(crate) fn truncate_of(bytes: &Bytes) -> io::Result<Option<u64>> {
    let batch = storage::format::decode_batch_shared(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(batch
        .records
        .first()
        .filter(|r| &r.key[..] == TRUNCATE_KEY)
        .and_then(|r| <[u8; 8]>::try_from(&r.value[..]).ok())
        .map(u64::from_le_bytes))
}

/// Bytes a read of entries asks the log for at a time.
const READ_CHUNK_BYTES: u64 = 1 << 20;

/// A partition's key on its shard.
pub(crate) type Key = (Arc<str>, u32);

type Reply<T> = oneshot::Sender<io::Result<T>>;

/// What a group asks of its partition's log. Served by the shard in arrival order.
pub(crate) enum LogOp<RT: AsyncRuntime> {
    State {
        key: Key,
        reply: Reply<LogState<PartitionTypes<RT>>>,
    },
    ReadVote {
        key: Key,
        reply: Reply<Option<Vote>>,
    },
    SaveVote {
        key: Key,
        vote: Vote,
        reply: Reply<()>,
    },
    /// Written when served; `flushed` is called by the shard once they are durable. Each
    /// entry written joins `recent` if its generation is still `generation`.
    Append {
        key: Key,
        entries: Vec<Entry>,
        flushed: IOFlushed<PartitionTypes<RT>>,
        recent: SharedRecent,
        generation: u64,
    },
    /// Entries `start..end` (end exclusive), read back from the log.
    Read {
        key: Key,
        start: u64,
        end: u64,
        /// Stop once the entries read hold this many bytes (at least one entry is read):
        /// `usize::MAX` for the whole range.
        bytes_max: usize,
        reply: Reply<Vec<Entry>>,
    },
    /// Drops every entry after `last` (every entry when `None`).
    TruncateAfter {
        key: Key,
        last: Option<LogId>,
        reply: Reply<()>,
    },
    /// Saves a snapshot that covers the entries up to `index` (`context`: the membership as
    /// of it) and answers its mark (with that entry's term and the offset after its batch).
    Snapshot {
        key: Key,
        index: u64,
        context: Vec<u8>,
        reply: Reply<storage::AppliedMark>,
    },
    /// The last snapshot's mark, if any.
    CurrentSnapshot {
        key: Key,
        reply: Reply<Option<storage::AppliedMark>>,
    },
    /// Installs a leader's snapshot: the log is emptied and starts again at the mark's
    /// `next_offset`, where the entry after the snapshot goes.
    Install {
        key: Key,
        mark: storage::AppliedMark,
        reply: Reply<()>,
    },
    /// Purges the entries up to `log_id`, inclusive (whole segments; see [`purge`]).
    Purge {
        key: Key,
        log_id: LogId,
        reply: Reply<()>,
    },
    /// Entries up to `index` (of `term`) are applied: readers may see them. `acks` are
    /// answered once the commit mark has moved. `context` is the state machine's record of
    /// its membership when it changed (see [`applied_context`]), for the applied mark.
    Commit {
        key: Key,
        index: u64,
        term: u64,
        context: Option<Vec<u8>>,
        /// The highest offset a truncate command among the applied entries cuts below.
        truncate_before: Option<u64>,
        acks: super::state_machine::Acks<RT>,
        /// The idempotent producers' batches among the applied entries, in log order.
        producers: Vec<ProducerBatch>,
    },
    /// A rejoining replica holds what its leader had committed and votes again: its rejoin
    /// marker goes (see [`GroupStart::Rejoin`](super::group::GroupStart::Rejoin)), once the
    /// log is synced. `generation` names the group that caught up
    /// ([`Group::generation`](super::group::Group::generation)): the shard ignores the word
    /// of a group stopped since (a later cut may have set the marker again).
    CaughtUp { key: Key, generation: u64 },
}

/// An applied batch of an idempotent producer: the shard records it in the partition's
/// producer table, so every replica (a future leader) knows where it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerBatch {
    pub stamp: storage::ProducerStamp,
    pub applied: super::types::Applied,
}

impl<RT: AsyncRuntime> LogOp<RT> {
    pub(crate) fn key(&self) -> &Key {
        match self {
            LogOp::State { key, .. }
            | LogOp::ReadVote { key, .. }
            | LogOp::SaveVote { key, .. }
            | LogOp::Append { key, .. }
            | LogOp::Read { key, .. }
            | LogOp::TruncateAfter { key, .. }
            | LogOp::Snapshot { key, .. }
            | LogOp::CurrentSnapshot { key, .. }
            | LogOp::Install { key, .. }
            | LogOp::Purge { key, .. }
            | LogOp::Commit { key, .. }
            | LogOp::CaughtUp { key, .. } => key,
        }
    }

    /// Answers the op with `error` without serving it (the partition is gone or the shard
    /// is stopping).
    pub(crate) fn refuse(self, error: impl Fn() -> io::Error) {
        // A dropped receiver means the group stopped waiting; nobody is left to tell.
        fn send<T>(reply: Reply<T>, e: io::Error) {
            if reply.send(Err(e)).is_err() {
                tracing::trace!("raft task left before the refusal");
            }
        }
        match self {
            LogOp::State { reply, .. } => send(reply, error()),
            LogOp::ReadVote { reply, .. } => send(reply, error()),
            LogOp::SaveVote { reply, .. } => send(reply, error()),
            LogOp::Append { flushed, .. } => flushed.io_completed(Err(error())),
            LogOp::Read { reply, .. } => send(reply, error()),
            LogOp::TruncateAfter { reply, .. } => send(reply, error()),
            LogOp::Snapshot { reply, .. } => send(reply, error()),
            LogOp::CurrentSnapshot { reply, .. } => send(reply, error()),
            LogOp::Install { reply, .. } => send(reply, error()),
            LogOp::Purge { reply, .. } => send(reply, error()),
            LogOp::Commit { .. } | LogOp::CaughtUp { .. } => {}
        }
    }
}

/// The sending side of a shard's op queue. Its depth is bounded by construction, not by a
/// capacity: each group has at most a few ops outstanding (its core awaits each log I/O, its
/// state machine one read at a time, each replication stream one read), and a shard holds at
/// most `storage.partitions_max` groups.
pub(crate) struct OpSender<RT: AsyncRuntime> {
    /// Queues an op; false when the shard stopped.
    send: std::rc::Rc<dyn Fn(LogOp<RT>) -> bool>,
}

impl<RT: AsyncRuntime> Clone for OpSender<RT> {
    fn clone(&self) -> Self {
        OpSender {
            send: self.send.clone(),
        }
    }
}

impl<RT: AsyncRuntime> OpSender<RT> {
    pub(crate) fn new(send: impl Fn(LogOp<RT>) -> bool + 'static) -> Self {
        OpSender {
            send: std::rc::Rc::new(send),
        }
    }

    pub(crate) fn send(&self, op: LogOp<RT>) -> io::Result<()> {
        if (self.send)(op) {
            Ok(())
        } else {
            Err(stopped())
        }
    }
}

/// openraft's log storage for one partition: a handle on the shard's op queue.
pub(crate) struct PartitionLog<RT: AsyncRuntime> {
    key: Key,
    ops: OpSender<RT>,
    /// Bytes of entries one AppendEntries carries at most (one larger entry goes alone).
    append_bytes_max: usize,
    /// The newest entries written, read without the shard (see `recent`).
    recent: SharedRecent,
}

impl<RT: AsyncRuntime> PartitionLog<RT> {
    pub(crate) fn new(
        key: Key,
        ops: OpSender<RT>,
        append_bytes_max: usize,
        recent: SharedRecent,
    ) -> Self {
        PartitionLog {
            key,
            ops,
            append_bytes_max,
            recent,
        }
    }
}

/// openraft's log reader for one partition (replication streams and the state machine).
pub(crate) struct PartitionLogReader<RT: AsyncRuntime> {
    key: Key,
    ops: OpSender<RT>,
    append_bytes_max: usize,
    recent: SharedRecent,
}

fn stopped() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the shard that owns this partition stopped",
    )
}

pub(crate) async fn ask<RT: AsyncRuntime, T>(
    ops: &OpSender<RT>,
    make: impl FnOnce(Reply<T>) -> LogOp<RT>,
) -> io::Result<T> {
    let (reply, answer) = oneshot::channel();
    ops.send(make(reply))?;
    answer.await.map_err(|_| stopped())?
}

async fn read_vote<RT: AsyncRuntime>(key: &Key, ops: &OpSender<RT>) -> io::Result<Option<Vote>> {
    ask(ops, |reply| LogOp::ReadVote {
        key: key.clone(),
        reply,
    })
    .await
}

fn range_of(range: impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e + 1,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<RT: AsyncRuntime> RaftLogReader<PartitionTypes<RT>> for PartitionLogReader<RT> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_of(range);
        if let Some(entries) = self.recent.borrow().read(start, end, usize::MAX, true) {
            return Ok(entries);
        }
        ask(&self.ops, |reply| LogOp::Read {
            key: self.key.clone(),
            start,
            end,
            bytes_max: usize::MAX,
            reply,
        })
        .await
    }

    /// What replication sends: entries from `start` up to `append_bytes_max` bytes (at least
    /// one), so that one AppendEntries of large batches stays within what a follower writes
    /// and syncs in one RPC's deadline.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        // Fewer entries than asked for are fine here: replication sends them and asks again.
        let cached = self
            .recent
            .borrow()
            .read(start, end, self.append_bytes_max, false);
        if let Some(entries) = cached {
            return Ok(entries);
        }
        ask(&self.ops, |reply| LogOp::Read {
            key: self.key.clone(),
            start,
            end,
            bytes_max: self.append_bytes_max,
            reply,
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_vote(&self.key, &self.ops).await
    }
}

impl<RT: AsyncRuntime> RaftLogReader<PartitionTypes<RT>> for PartitionLog<RT> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.get_log_reader().await.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        read_vote(&self.key, &self.ops).await
    }
}

impl<RT: AsyncRuntime> RaftLogStorage<PartitionTypes<RT>> for PartitionLog<RT> {
    type LogReader = PartitionLogReader<RT>;

    async fn get_log_state(&mut self) -> Result<LogState<PartitionTypes<RT>>, io::Error> {
        ask(&self.ops, |reply| LogOp::State {
            key: self.key.clone(),
            reply,
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        PartitionLogReader {
            key: self.key.clone(),
            ops: self.ops.clone(),
            append_bytes_max: self.append_bytes_max,
            recent: self.recent.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        ask(&self.ops, |reply| LogOp::SaveVote {
            key: self.key.clone(),
            vote: *vote,
            reply,
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<PartitionTypes<RT>>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let op = LogOp::Append {
            key: self.key.clone(),
            entries: entries.into_iter().collect(),
            flushed: callback,
            recent: self.recent.clone(),
            generation: self.recent.borrow().generation(),
        };
        // Returns once queued: the shard writes it before anything queued after it, so a
        // read or truncation that follows sees it (openraft's "readable on return" holds in
        // queue order), and `callback` reports durability.
        self.ops.send(op)
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        self.recent.borrow_mut().forget();
        ask(&self.ops, |reply| LogOp::TruncateAfter {
            key: self.key.clone(),
            last,
            reply,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let key = self.key.clone();
        self.recent.borrow_mut().forget();
        ask(&self.ops, |reply| LogOp::Purge { key, log_id, reply }).await
    }
}

/// A storage error as openraft takes it: the group stops (fatal) on any of these.
fn io_error(e: storage::Error) -> io::Error {
    io::Error::other(e)
}

fn to_storage_vote(vote: &Vote) -> storage::Vote {
    storage::Vote {
        term: vote.leader_id.term,
        voted_for: Some(vote.leader_id.voted_for),
    }
}

fn from_storage_vote(vote: storage::Vote) -> Option<Vote> {
    vote.voted_for.map(|node| Vote::new(vote.term, node))
}

/// The control record that stands for a blank or membership entry.
fn control_record(payload: &Payload) -> Record {
    let (key, value) = match payload {
        EntryPayload::Blank => (BLANK_KEY, Bytes::new()),
        EntryPayload::Membership(m) => (MEMBERSHIP_KEY, encode_membership(m).into()),
        EntryPayload::Normal(_) => unreachable!("normal entries are batches of records"),
    };
    Record {
        key: Bytes::from_static(key),
        value,
        timestamp_ms: storage::now_ms(),
        ..Record::default()
    }
}

pub(crate) fn membership_to_pb(m: &Membership) -> pb::RaftMembership {
    pb::RaftMembership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::RaftVoterSet {
                voters: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, _)| *id).collect(),
    }
}

pub(crate) fn encode_membership(m: &Membership) -> Vec<u8> {
    membership_to_pb(m).encode_to_vec()
}

pub(crate) fn membership_from_pb(m: &pb::RaftMembership) -> io::Result<Membership> {
    let configs: Vec<BTreeSet<NodeId>> = m
        .configs
        .iter()
        .map(|set| set.voters.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<NodeId, EmptyNode> = m.nodes.iter().map(|&id| (id, EmptyNode {})).collect();
    Membership::new(configs, nodes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a membership entry is invalid: {e}"),
        )
    })
}

fn decode_membership(bytes: &[u8]) -> io::Result<Membership> {
    let m = pb::RaftMembership::decode(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a membership entry does not decode: {e}"),
        )
    })?;
    membership_from_pb(&m)
}

/// The membership as of the applied entry, encoded for the applied mark.
pub(crate) fn applied_context(membership: &StoredMembership) -> Vec<u8> {
    pb::RaftAppliedContext {
        membership_log_id: membership.log_id().as_ref().map(super::wire::log_id_to),
        membership: Some(membership_to_pb(membership.membership())),
    }
    .encode_to_vec()
}

/// The applied log id and membership an applied mark records, as a state machine resumes
/// from them; `None` (replay the log) when the context does not decode.
pub(crate) fn resume_from(mark: &storage::AppliedMark) -> Option<(LogId, StoredMembership)> {
    let decoded = pb::RaftAppliedContext::decode(&mark.context[..])
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let membership = c.membership.as_ref().ok_or("no membership")?;
            let membership = membership_from_pb(membership).map_err(|e| e.to_string())?;
            let membership_id = c.membership_log_id.map(|id| log_id(id.term, id.index));
            Ok(StoredMembership::new(membership_id, membership))
        });
    match decoded {
        Ok(membership) => Some((log_id(mark.term, mark.index), membership)),
        Err(reason) => {
            tracing::warn!(%reason, "an applied mark's context does not decode; replaying the log");
            None
        }
    }
}

/// What serving an op leaves for the shard to do.
pub(crate) enum Served<RT: AsyncRuntime> {
    Done,
    /// A write the group asked for failed (it was answered with the error): openraft stops
    /// a group on any storage error, so the shard must start it again once it can.
    WriteFailed,
    /// An append: call its `IOFlushed` after the flush that covers it.
    Flush(IOFlushed<PartitionTypes<RT>>),
    /// A commit moved the applied mark to `index` of `term`, whose batch ends at
    /// `next_offset`; `context` when the membership changed. The shard saves it lazily.
    Applied {
        term: u64,
        index: u64,
        next_offset: u64,
        context: Option<Vec<u8>>,
        /// A truncate command was applied: purge the entries wholly below this offset.
        truncate_before: Option<u64>,
        /// The idempotent producers' batches applied, in log order.
        producers: Vec<ProducerBatch>,
    },
}

/// Serves one op on the partition's `log`. An `Append` returns its `IOFlushed` for the shard
/// to call after the flush that covers it; everything else is answered here.
pub(crate) async fn serve<E: Engine, RT: AsyncRuntime>(
    log: &mut Log<E>,
    op: LogOp<RT>,
) -> Served<RT> {
    fn send<T>(reply: Reply<T>, result: io::Result<T>) {
        if reply.send(result).is_err() {
            tracing::trace!("raft task left before the answer");
        }
    }
    match op {
        LogOp::State { reply, .. } => send(reply, log_state(log).await),
        LogOp::ReadVote { reply, .. } => {
            send(
                reply,
                log.vote().await.map(from_storage_vote).map_err(io_error),
            );
        }
        LogOp::SaveVote { vote, reply, .. } => {
            let saved = log
                .save_vote(&to_storage_vote(&vote))
                .await
                .map_err(io_error);
            let failed = saved.is_err();
            send(reply, saved);
            if failed {
                return Served::WriteFailed;
            }
        }
        LogOp::Append {
            entries,
            flushed,
            recent,
            generation,
            ..
        } => {
            for entry in entries {
                let at = log.end_offset();
                if let Err(e) = append(log, entry).await {
                    // The group stops on a storage error; what was written before stays
                    // (not durable, not acknowledged).
                    flushed.io_completed(Err(e));
                    return Served::WriteFailed;
                }
                remember(log, at, &recent, generation);
            }
            return Served::Flush(flushed);
        }
        LogOp::Read {
            start,
            end,
            bytes_max,
            reply,
            ..
        } => send(reply, read(log, start, end, bytes_max).await),
        LogOp::TruncateAfter { last, reply, .. } => {
            let truncated = truncate_after(log, last).await;
            let failed = truncated.is_err();
            send(reply, truncated);
            if failed {
                return Served::WriteFailed;
            }
        }
        LogOp::Snapshot {
            index,
            context,
            reply,
            ..
        } => send(reply, snapshot(log, index, context).await),
        LogOp::CurrentSnapshot { reply, .. } => {
            send(
                reply,
                log.mark(storage::MarkFile::Snapshot)
                    .await
                    .map_err(io_error),
            );
        }
        LogOp::Install { mark, reply, .. } => {
            let installed = install(log, &mark).await;
            let ok = installed.is_ok();
            send(reply, installed);
            if ok {
                return Served::Applied {
                    term: mark.term,
                    index: mark.index,
                    next_offset: mark.next_offset,
                    context: Some(mark.context),
                    truncate_before: None,
                    producers: Vec::new(),
                };
            }
        }
        LogOp::Purge { log_id, reply, .. } => send(reply, purge(log, log_id).await),
        // What it caught up on must be durable before the marker goes. Should either fail, the
        // replica only catches up once more after a restart.
        LogOp::CaughtUp { .. } => {
            let cleared = match log.sync().await {
                Ok(_) => log.clear_rejoin_marker().await,
                Err(e) => Err(e),
            };
            if let Err(e) = cleared {
                tracing::warn!(dir = %log.dir().display(), error = %e, "removing the rejoin marker of a replica that caught up; it rejoins again after a restart");
            }
        }
        LogOp::Commit {
            index,
            term,
            context,
            truncate_before,
            acks,
            producers,
            ..
        } => {
            let committed = commit(log, index).await;
            for (responder, applied) in acks {
                responder.send(applied);
            }
            match committed {
                Ok(next_offset) => {
                    return Served::Applied {
                        term,
                        index,
                        next_offset,
                        context,
                        truncate_before,
                        producers,
                    };
                }
                // Committed by a majority, so the ack stands; only this replica's readers lag.
                Err(e) => {
                    tracing::error!(dir = %log.dir().display(), index, error = %e, "moving the commit mark");
                }
            }
        }
    }
    Served::Done
}

async fn log_state<E: Engine, RT: AsyncRuntime>(
    log: &mut Log<E>,
) -> io::Result<LogState<PartitionTypes<RT>>> {
    let purged = log
        .mark(storage::MarkFile::Purged)
        .await
        .map_err(io_error)?
        .map(|m| log_id(m.term, m.index));
    let last = log
        .last_batch_header()
        .await
        .map_err(io_error)?
        .map(|h| log_id(h.leader_epoch, h.raft_index));
    Ok(LogState {
        last_purged_log_id: purged,
        // An empty log after a purge or a snapshot ends where the purge did.
        last_log_id: last.or(purged),
    })
}

/// The last entry whose batch lies wholly below `before_offset`, and the offset after it
/// (where the log will start once purged up to it); `None` when nothing below it is left.
pub(crate) async fn cut_below<E: Engine>(
    log: &mut Log<E>,
    before_offset: u64,
) -> io::Result<Option<(u64, u64)>> {
    let before_offset = before_offset.min(log.end_offset());
    if before_offset <= log.start_offset() {
        return Ok(None);
    }
    let Some(header) = log.header_at(before_offset - 1).await.map_err(io_error)? else {
        return Ok(None);
    };
    if header.next_offset() <= before_offset {
        return Ok(Some((header.raft_index, header.next_offset())));
    }
    // `before_offset` falls inside this batch: keep it whole, cut before it.
    if header.base_offset <= log.start_offset() || header.raft_index == 0 {
        return Ok(None);
    }
    Ok(Some((header.raft_index - 1, header.base_offset)))
}

/// Saves the mark of a snapshot that covers the entries up to `index`, which this log holds.
async fn snapshot<E: Engine>(
    log: &mut Log<E>,
    index: u64,
    context: Vec<u8>,
) -> io::Result<storage::AppliedMark> {
    let Some(offset) = log.offset_of_raft_index(index).await.map_err(io_error)? else {
        return Err(missing(index, log.dir()));
    };
    let header = log
        .header_at(offset)
        .await
        .map_err(io_error)?
        .ok_or_else(|| missing(index, log.dir()))?;
    let mark = storage::AppliedMark {
        term: header.leader_epoch,
        index,
        next_offset: header.next_offset(),
        context,
    };
    log.save_mark(storage::MarkFile::Snapshot, &mark)
        .await
        .map_err(io_error)?;
    Ok(mark)
}

/// Installs a leader's snapshot of the entries up to `mark.index`: its marks first (a crash
/// part-way installs it again from them: the log's start is already there), then the log.
///
/// When the log holds the snapshot's last entry as the leader does (same term, ending at the
/// same offset), openraft keeps the entries after it (it truncates only on a conflict), and
/// so must the log: they may be acknowledged entries that count on this replica. Only what
/// the snapshot covers goes, as in a purge, and the commit mark moves up to the snapshot's
/// end. Otherwise (no such entry, or a conflicting one, which openraft has cut already) the
/// log is emptied to start at the snapshot's end, and its next entry must be the one after.
async fn install<E: Engine>(log: &mut Log<E>, mark: &storage::AppliedMark) -> io::Result<()> {
    for file in [storage::MarkFile::Snapshot, storage::MarkFile::Purged] {
        log.save_mark(file, mark).await.map_err(io_error)?;
    }
    if holds_entry(log, mark).await? {
        if log.high_watermark() < mark.next_offset {
            log.set_commit(mark.next_offset).map_err(io_error)?;
        }
        log.truncate_prefix(mark.next_offset)
            .await
            .map_err(io_error)?;
    } else {
        log.reset_to(mark.next_offset, mark.index + 1)
            .await
            .map_err(io_error)?;
    }
    log.save_applied_mark(mark).await.map_err(io_error)
}

/// Whether the log holds entry `mark.index` of term `mark.term`, ending at `mark.next_offset`.
async fn holds_entry<E: Engine>(log: &mut Log<E>, mark: &storage::AppliedMark) -> io::Result<bool> {
    let Some(offset) = log
        .offset_of_raft_index(mark.index)
        .await
        .map_err(io_error)?
    else {
        return Ok(false);
    };
    let header = log.header_at(offset).await.map_err(io_error)?;
    Ok(header.is_some_and(|h| {
        h.raft_index == mark.index
            && h.leader_epoch == mark.term
            && h.next_offset() == mark.next_offset
    }))
}

/// Purges entries up to `log_id`: the purge mark is saved first, then whole segments below
/// the entry after it are deleted and the log's start moves there. An entry this log does
/// not hold (purged already, or before an installed snapshot) only moves the mark.
async fn purge<E: Engine>(log: &mut Log<E>, log_id: LogId) -> io::Result<()> {
    let index = log_id.index();
    let next_offset = match log.offset_of_raft_index(index).await.map_err(io_error)? {
        Some(_) => Some(end_of_entry(log, index).await?),
        None => None,
    };
    let previous = log
        .mark(storage::MarkFile::Purged)
        .await
        .map_err(io_error)?;
    if previous.as_ref().is_none_or(|p| p.index < index) {
        let mark = storage::AppliedMark {
            term: log_id.committed_leader_id().term,
            index,
            next_offset: next_offset.unwrap_or(log.start_offset()),
            context: Vec::new(),
        };
        log.save_mark(storage::MarkFile::Purged, &mark)
            .await
            .map_err(io_error)?;
    }
    if let Some(offset) = next_offset {
        log.truncate_prefix(offset).await.map_err(io_error)?;
    }
    Ok(())
}

async fn append<E: Engine>(log: &mut Log<E>, entry: Entry) -> io::Result<()> {
    let id = entry.log_id();
    let term = id.committed_leader_id().term;
    let index = id.index();
    match entry.payload {
        EntryPayload::Normal(Proposal::Records(batch)) => {
            let meta = EntryMeta {
                term,
                raft_index: index,
                control: false,
            };
            log.append_entry(meta, &batch).await.map_err(io_error)?;
        }
        EntryPayload::Normal(Proposal::Command(batch)) => {
            let meta = EntryMeta {
                term,
                raft_index: index,
                control: true,
            };
            log.append_entry(meta, &batch).await.map_err(io_error)?;
        }
        EntryPayload::Normal(Proposal::Received(batch)) => {
            let header = batch.header();
            if header.raft_index != index || header.leader_epoch != term {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "entry {id} carries a batch of index {} and term {}",
                        header.raft_index, header.leader_epoch
                    ),
                ));
            }
            log.append_verified(&batch).await.map_err(io_error)?;
        }
        EntryPayload::Normal(Proposal::Stored { .. }) => {
            // Read back from this log: it is there already, and never appended twice.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {id} was read from the log and handed back to append"),
            ));
        }
        ref control => {
            let batch = control_batch(log.config(), control)?;
            let meta = EntryMeta {
                term,
                raft_index: index,
                control: true,
            };
            log.append_entry(meta, &batch).await.map_err(io_error)?;
        }
    }
    Ok(())
}

fn control_batch(limits: &LogLimits, payload: &Payload) -> io::Result<CheckedBatch> {
    limits
        .check(vec![control_record(payload)])
        .map_err(io_error)
}

/// Adds the entry just written at offset `at` to `recent`, in its stored form, when the log
/// keeps it in its tail cache (a read from memory; without the cache, nothing is added).
fn remember<E: Engine>(log: &Log<E>, at: u64, recent: &SharedRecent, generation: u64) {
    let Some(raw) = log.tail_batch(at) else {
        return;
    };
    let offsets = raw.header.base_offset..raw.header.next_offset();
    match entry_of(raw) {
        Ok(entry) => recent.borrow_mut().written(generation, entry, offsets),
        Err(e) => {
            tracing::warn!(dir = %log.dir().display(), error = %e, "a batch just written does not read back as an entry; readers ask the log")
        }
    }
}

/// The entry a stored batch holds.
fn entry_of(raw: storage::RawBatch) -> io::Result<Entry> {
    let header = raw.header;
    let id = log_id(header.leader_epoch, header.raft_index);
    if header.flags & storage::FLAG_CONTROL == 0 {
        return Ok(Entry::new(
            id,
            EntryPayload::Normal(Proposal::Stored {
                header,
                bytes: raw.bytes,
            }),
        ));
    }
    let batch = storage::format::decode_batch_shared(&raw.bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let record = batch.records.first().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "a control batch has no record")
    })?;
    let payload = match &record.key[..] {
        BLANK_KEY => EntryPayload::Blank,
        MEMBERSHIP_KEY => EntryPayload::Membership(decode_membership(&record.value)?),
        // A command travels and applies as the batch it is stored as.
        TRUNCATE_KEY => EntryPayload::Normal(Proposal::Stored {
            header,
            bytes: raw.bytes.clone(),
        }),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a control batch of unknown kind {:?}",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
    };
    Ok(Entry::new(id, payload))
}

fn missing(index: u64, log_dir: &std::path::Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("Raft entry {index} is not in {}", log_dir.display()),
    )
}

async fn read<E: Engine>(
    log: &mut Log<E>,
    start: u64,
    end: u64,
    bytes_max: usize,
) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    if start >= end {
        return Ok(entries);
    }
    let Some(mut offset) = log.offset_of_raft_index(start).await.map_err(io_error)? else {
        return Err(missing(start, log.dir()));
    };
    let mut index = start;
    while index < end && offset < log.end_offset() {
        let batches = log
            .read_raw(offset, READ_CHUNK_BYTES)
            .await
            .map_err(io_error)?;
        if batches.is_empty() {
            break;
        }
        for raw in batches {
            assert_eq!(
                raw.header.raft_index,
                index,
                "{}: the batch at offset {} holds entry {} where entry {index} belongs",
                log.dir().display(),
                raw.header.base_offset,
                raw.header.raft_index
            );
            offset = raw.header.next_offset();
            bytes = bytes.saturating_add(raw.bytes.len());
            entries.push(entry_of(raw)?);
            index += 1;
            if index == end || bytes >= bytes_max {
                break;
            }
        }
        if bytes >= bytes_max {
            return Ok(entries);
        }
    }
    if end != u64::MAX && index < end {
        return Err(missing(index, log.dir()));
    }
    Ok(entries)
}

/// The offset just past entry `index`: where entry `index + 1` starts, or the end.
async fn end_of_entry<E: Engine>(log: &mut Log<E>, index: u64) -> io::Result<u64> {
    match log
        .offset_of_raft_index(index + 1)
        .await
        .map_err(io_error)?
    {
        Some(offset) => Ok(offset),
        None => Ok(log.end_offset()),
    }
}

async fn truncate_after<E: Engine>(log: &mut Log<E>, last: Option<LogId>) -> io::Result<()> {
    let from_offset = match last {
        None => log.start_offset(),
        Some(id) => end_of_entry(log, id.index()).await?,
    };
    log.truncate_suffix(from_offset).await.map_err(io_error)
}

/// Raises the commit mark past entry `index`; returns the offset after that entry's batch.
async fn commit<E: Engine>(log: &mut Log<E>, index: u64) -> io::Result<u64> {
    let offset = end_of_entry(log, index).await?;
    if offset > log.high_watermark() {
        log.set_commit(offset).map_err(io_error)?;
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::{EntryMeta, LogLimits, PortableEngine, Record};

    async fn open(dir: &std::path::Path) -> Log<PortableEngine> {
        Log::open(PortableEngine::new(), dir, LogLimits::small_for_tests())
            .await
            .unwrap()
            .0
    }

    /// Appends entry `index` of term `term` (two records of 100 bytes).
    async fn append_entry(log: &mut Log<PortableEngine>, term: u64, index: u64) {
        let records = (0..2)
            .map(|_| Record {
                value: Bytes::from(vec![index as u8; 100]),
                ..Record::default()
            })
            .collect();
        let batch = log.config().check(records).unwrap();
        let meta = EntryMeta {
            term,
            raft_index: index,
            control: false,
        };
        log.append_entry(meta, &batch).await.unwrap();
    }

    /// The mark of a snapshot whose last entry is `index` of `term`, ending at `next_offset`.
    fn mark(term: u64, index: u64, next_offset: u64) -> storage::AppliedMark {
        storage::AppliedMark {
            term,
            index,
            next_offset,
            context: Vec::new(),
        }
    }

    /// A snapshot whose last entry the log holds as the leader does keeps the entries after
    /// it (openraft keeps them too): only what it covers goes, and the commit mark moves up
    /// to its end. The entries after it are still found by index and read back.
    #[test]
    fn a_snapshot_the_log_agrees_with_keeps_the_entries_after_it() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path()).await;
            for index in 1..=10 {
                append_entry(&mut log, 1, index).await;
            }
            log.sync().await.unwrap();
            log.set_commit(log.start_offset()).unwrap();
            let end = log.end_offset();
            let after_5 = end_of_entry(&mut log, 5).await.unwrap();
            install(&mut log, &mark(1, 5, after_5)).await.unwrap();
            assert_eq!(log.end_offset(), end, "entries 6..=10 stay");
            assert_eq!(log.start_offset(), after_5);
            assert_eq!(log.high_watermark(), after_5);
            let entries = read(&mut log, 6, 11, usize::MAX).await.unwrap();
            let indices: Vec<u64> = entries.iter().map(|e| e.log_id().index()).collect();
            assert_eq!(indices, (6..=10).collect::<Vec<_>>());
            append_entry(&mut log, 1, 11).await;
        });
    }

    /// A snapshot whose last entry the log does not hold, or holds from another term, empties
    /// the log to start at its end, and the next entry must be the one after it.
    #[test]
    fn a_snapshot_the_log_does_not_agree_with_empties_it() {
        futures::executor::block_on(async {
            for (term, index) in [(2, 5), (1, 30)] {
                let dir = tempfile::tempdir().unwrap();
                let mut log = open(dir.path()).await;
                for i in 1..=10 {
                    append_entry(&mut log, 1, i).await;
                }
                install(&mut log, &mark(term, index, 1000)).await.unwrap();
                assert_eq!(
                    (log.start_offset(), log.end_offset()),
                    (1000, 1000),
                    "snapshot of entry {index}, term {term}"
                );
                let records = vec![Record::default()];
                let batch = log.config().check(records).unwrap();
                let meta = |raft_index| EntryMeta {
                    term: 2,
                    raft_index,
                    control: false,
                };
                assert!(log.append_entry(meta(index + 2), &batch).await.is_err());
                log.append_entry(meta(index + 1), &batch).await.unwrap();
            }
        });
    }
}
