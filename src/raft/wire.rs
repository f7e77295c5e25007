//! The wire form of a partition group's Raft messages: openraft's requests and responses to
//! and from the `walrs.v1.Replication` protobuf messages (proto/walrs/v1/replication.proto).
//!
//! Owns: every conversion between the two, and the checks that a received message is whole.
//! Must never: do I/O. A normal entry travels as the batch its leader stored (the follower's
//! log checks it again); blank and membership entries travel as what they are, and each
//! replica writes its own control batch for them.

use std::io;

use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::rt::AsyncRuntime;

use super::store::{membership_from_pb, membership_to_pb};
use super::types::{Entry, LogId, PartitionTypes, Proposal, Vote, log_id};
use crate::proto::v1 as pb;
use crate::storage;
use pb::raft_append_response::Result as AppendResult;
use pb::raft_entry::Payload as WirePayload;

/// The answer to `request`: its id, partition and sender, carrying `body`.
pub(crate) fn answer(request: pb::RaftEnvelope, body: pb::raft_envelope::Body) -> pb::RaftEnvelope {
    pb::RaftEnvelope {
        body: Some(body),
        ..request
    }
}

/// The answer to a `request` that could not be delivered or served, saying why.
pub(crate) fn refusal(request: pb::RaftEnvelope, reason: impl Into<String>) -> pb::RaftEnvelope {
    answer(request, pb::raft_envelope::Body::Error(reason.into()))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed Raft message: {what}"),
    )
}

pub(crate) fn vote_to(vote: &Vote) -> pb::RaftVote {
    pb::RaftVote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.voted_for,
        committed: vote.committed,
    }
}

pub(crate) fn vote_from(vote: Option<pb::RaftVote>) -> io::Result<Vote> {
    let v = vote.ok_or_else(|| malformed("no vote"))?;
    Ok(if v.committed {
        Vote::new_committed(v.term, v.node_id)
    } else {
        Vote::new(v.term, v.node_id)
    })
}

pub(crate) fn log_id_to(id: &LogId) -> pb::RaftLogId {
    pb::RaftLogId {
        term: id.leader_id.term,
        index: id.index,
    }
}

pub(crate) fn log_id_from(id: Option<pb::RaftLogId>) -> Option<LogId> {
    id.map(|id| log_id(id.term, id.index))
}

fn entry_to(entry: &Entry) -> io::Result<pb::RaftEntry> {
    let payload = match &entry.payload {
        EntryPayload::Blank => WirePayload::Blank(true),
        EntryPayload::Normal(Proposal::Stored { bytes, .. }) => WirePayload::Batch(bytes.clone()),
        EntryPayload::Normal(
            Proposal::Records(_) | Proposal::Received(_) | Proposal::Command(_),
        ) => {
            // Replication reads entries back from this replica's log, which stores them first.
            return Err(malformed("an entry to ship is not read from the log"));
        }
        EntryPayload::Membership(m) => WirePayload::Membership(membership_to_pb(m)),
    };
    Ok(pb::RaftEntry {
        log_id: Some(log_id_to(&entry.log_id())),
        payload: Some(payload),
    })
}

fn entry_from(entry: pb::RaftEntry) -> io::Result<Entry> {
    let id = log_id_from(entry.log_id).ok_or_else(|| malformed("an entry has no log id"))?;
    let payload = match entry
        .payload
        .ok_or_else(|| malformed("an entry has no payload"))?
    {
        WirePayload::Blank(_) => EntryPayload::Blank,
        // Checked whole here, once: the follower's log stores it without checking again.
        WirePayload::Batch(bytes) => EntryPayload::Normal(Proposal::Received(
            storage::VerifiedBatch::new(bytes)
                .map_err(|e| malformed(&format!("entry {id}: {e}")))?,
        )),
        WirePayload::Membership(m) => EntryPayload::Membership(membership_from_pb(&m)?),
    };
    Ok(Entry::new(id, payload))
}

pub(crate) fn vote_request_to<RT: AsyncRuntime>(
    rpc: &VoteRequest<PartitionTypes<RT>>,
) -> pb::RaftVoteRequest {
    pb::RaftVoteRequest {
        vote: Some(vote_to(&rpc.vote)),
        last_log_id: rpc.last_log_id.as_ref().map(log_id_to),
        leadership_transfer: rpc.leadership_transfer,
    }
}

pub(crate) fn vote_request_from<RT: AsyncRuntime>(
    rpc: pb::RaftVoteRequest,
) -> io::Result<VoteRequest<PartitionTypes<RT>>> {
    let mut request = VoteRequest::new(vote_from(rpc.vote)?, log_id_from(rpc.last_log_id));
    request.leadership_transfer = rpc.leadership_transfer;
    Ok(request)
}

pub(crate) fn vote_response_to<RT: AsyncRuntime>(
    r: &VoteResponse<PartitionTypes<RT>>,
) -> pb::RaftVoteResponse {
    pb::RaftVoteResponse {
        vote: Some(vote_to(&r.vote)),
        granted: r.vote_granted,
        last_log_id: r.last_log_id.as_ref().map(log_id_to),
    }
}

pub(crate) fn vote_response_from<RT: AsyncRuntime>(
    r: pb::RaftVoteResponse,
) -> io::Result<VoteResponse<PartitionTypes<RT>>> {
    Ok(VoteResponse::new(
        vote_from(r.vote)?,
        log_id_from(r.last_log_id),
        r.granted,
    ))
}

pub(crate) fn append_request_to<RT: AsyncRuntime>(
    rpc: &AppendEntriesRequest<PartitionTypes<RT>>,
) -> io::Result<pb::RaftAppendRequest> {
    Ok(pb::RaftAppendRequest {
        vote: Some(vote_to(&rpc.vote)),
        prev_log_id: rpc.prev_log_id.as_ref().map(log_id_to),
        entries: rpc
            .entries
            .iter()
            .map(entry_to)
            .collect::<io::Result<_>>()?,
        leader_commit: rpc.leader_commit.as_ref().map(log_id_to),
    })
}

pub(crate) fn append_request_from<RT: AsyncRuntime>(
    rpc: pb::RaftAppendRequest,
) -> io::Result<AppendEntriesRequest<PartitionTypes<RT>>> {
    Ok(AppendEntriesRequest {
        vote: vote_from(rpc.vote)?,
        prev_log_id: log_id_from(rpc.prev_log_id),
        entries: rpc
            .entries
            .into_iter()
            .map(entry_from)
            .collect::<io::Result<_>>()?,
        leader_commit: log_id_from(rpc.leader_commit),
    })
}

pub(crate) fn append_response_to<RT: AsyncRuntime>(
    r: &AppendEntriesResponse<PartitionTypes<RT>>,
) -> pb::RaftAppendResponse {
    let result = match r {
        AppendEntriesResponse::Success => AppendResult::Success(true),
        AppendEntriesResponse::PartialSuccess(id) => {
            AppendResult::PartialSuccess(pb::RaftPartialSuccess {
                log_id: id.as_ref().map(log_id_to),
            })
        }
        AppendEntriesResponse::Conflict => AppendResult::Conflict(true),
        AppendEntriesResponse::HigherVote(v) => AppendResult::HigherVote(vote_to(v)),
    };
    pb::RaftAppendResponse {
        result: Some(result),
    }
}

pub(crate) fn append_response_from<RT: AsyncRuntime>(
    r: pb::RaftAppendResponse,
) -> io::Result<AppendEntriesResponse<PartitionTypes<RT>>> {
    Ok(
        match r
            .result
            .ok_or_else(|| malformed("an append response has no result"))?
        {
            AppendResult::Success(_) => AppendEntriesResponse::Success,
            AppendResult::PartialSuccess(p) => {
                AppendEntriesResponse::PartialSuccess(log_id_from(p.log_id))
            }
            AppendResult::Conflict(_) => AppendEntriesResponse::Conflict,
            AppendResult::HigherVote(v) => AppendEntriesResponse::HigherVote(vote_from(Some(v))?),
        },
    )
}

/// A leader's snapshot for a follower behind its log start, with the leader's vote.
pub(crate) fn snapshot_to(
    vote: &Vote,
    snapshot: &super::state_machine::Snapshot,
) -> io::Result<pb::RaftSnapshot> {
    let meta = &snapshot.meta;
    let last = meta
        .last_log_id
        .as_ref()
        .ok_or_else(|| malformed("a snapshot that covers no entry"))?;
    let membership = membership_to_pb(meta.last_membership.membership());
    Ok(pb::RaftSnapshot {
        vote: Some(vote_to(vote)),
        last_log_id: Some(log_id_to(last)),
        membership_log_id: meta.last_membership.log_id().as_ref().map(log_id_to),
        membership: Some(membership),
        snapshot_id: format!(
            "{}-{}-{}",
            last.committed_leader_id().term,
            last.index(),
            snapshot.snapshot.next_offset
        ),
        next_offset: snapshot.snapshot.next_offset,
    })
}

/// The vote and snapshot a leader sent.
pub(crate) fn snapshot_from(
    s: pb::RaftSnapshot,
) -> io::Result<(Vote, super::state_machine::Snapshot)> {
    let vote = vote_from(s.vote)?;
    let last = log_id_from(s.last_log_id).ok_or_else(|| malformed("no last log id"))?;
    let membership = membership_from_pb(
        s.membership
            .as_ref()
            .ok_or_else(|| malformed("no membership"))?,
    )?;
    let stored = super::store::StoredMembership::new(log_id_from(s.membership_log_id), membership);
    Ok((
        vote,
        super::state_machine::Snapshot {
            meta: super::state_machine::SnapshotMeta {
                last_log_id: Some(last),
                last_membership: stored,
            },
            snapshot: super::state_machine::PartitionSnapshot {
                next_offset: s.next_offset,
            },
        },
    ))
}

pub(crate) fn snapshot_response_to(vote: &Vote) -> pb::RaftVote {
    vote_to(vote)
}

pub(crate) fn snapshot_response_from(vote: pb::RaftVote) -> io::Result<Vote> {
    vote_from(Some(vote))
}
