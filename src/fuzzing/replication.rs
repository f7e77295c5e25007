//! The replication target: protobuf frames between nodes through `raft::wire`, and the
//! controller's metadata records through `cluster::metadata`.

use openraft_rt_tokio::TokioRuntime;
use prost::Message;

use super::Input;
use crate::cluster::metadata::{self, Applied, MetadataView};
use crate::proto::v1 as pb;
use crate::raft::store::{membership_from_pb, membership_to_pb};
use crate::raft::types::Proposal;
use crate::raft::wire;
use crate::storage::format;
use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use pb::raft_append_response::Result as AppendResult;
use pb::raft_entry::Payload as WirePayload;
use pb::raft_envelope::Body;

/// The nodes of the cluster the metadata records are checked against.
const NODES: [u64; 3] = [1, 2, 3];
const PARTITIONS_MAX: u32 = 16;

/// Target `replication_message`: the input, after a mode byte, as a `RaftFrame` (what one
/// `Replication.Exchange` message carries) and as a run of metadata log records.
///
/// Invariants: decoding never panics; every message the wire layer accepts converts back to
/// the same protobuf (up to what the wire form normalizes: booleans of unit variants, the
/// snapshot id, the membership's canonical form), and a normal entry is accepted only when
/// it is exactly one batch whose records check out. A metadata record that passes
/// `metadata::check` applies without breaking the view's rules (the applied offset moves
/// past it, a created topic has one replica set of distinct cluster nodes per partition,
/// a deletion by the live incarnation removes the topic).
pub fn replication_message(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let rest = input.rest();
    if mode & 1 == 0 {
        if let Ok(frame) = pb::RaftFrame::decode(rest) {
            let again = pb::RaftFrame::decode(&frame.encode_to_vec()[..]).expect("re-encoded");
            assert_eq!(again, frame);
            for envelope in frame.messages {
                check_body(envelope.body);
            }
        }
    } else {
        metadata_records(&mut Input::new(rest));
    }
}

fn check_body(body: Option<Body>) {
    match body {
        Some(Body::Vote(request)) | Some(Body::PreVote(request)) => {
            if let Ok(r) = wire::vote_request_from::<TokioRuntime>(request) {
                assert_eq!(wire::vote_request_to(&r), request);
            }
        }
        Some(Body::VoteResponse(response)) => {
            if let Ok(r) = wire::vote_response_from::<TokioRuntime>(response) {
                assert_eq!(wire::vote_response_to(&r), response);
            }
        }
        Some(Body::Append(request)) => check_append(request),
        Some(Body::AppendResponse(response)) => {
            if let Ok(r) = wire::append_response_from::<TokioRuntime>(response) {
                let normalized = match response.result {
                    Some(AppendResult::Success(_)) => AppendResult::Success(true),
                    Some(AppendResult::Conflict(_)) => AppendResult::Conflict(true),
                    Some(other) => other,
                    None => panic!("an append response without a result was accepted"),
                };
                assert_eq!(wire::append_response_to(&r).result, Some(normalized));
            }
        }
        Some(Body::InstallSnapshot(snapshot)) => {
            if let Ok((vote, s)) = wire::snapshot_from(snapshot.clone()) {
                let back = wire::snapshot_to(&vote, &s).expect("an accepted snapshot ships");
                let membership = snapshot.membership.as_ref().expect("accepted with one");
                assert_eq!(back.membership.as_ref(), Some(&canonical(membership)));
                assert_eq!(back.vote, snapshot.vote);
                assert_eq!(back.last_log_id, snapshot.last_log_id);
                assert_eq!(back.membership_log_id, snapshot.membership_log_id);
                assert_eq!(back.next_offset, snapshot.next_offset);
            }
        }
        Some(Body::SnapshotResponse(vote)) => {
            let v = wire::snapshot_response_from(vote).expect("a vote always converts");
            assert_eq!(wire::snapshot_response_to(&v), vote);
        }
        Some(Body::Error(_) | Body::Quiet(_) | Body::QuietAck(_)) | None => {}
    }
}

/// The form `membership_to_pb` gives a membership the wire layer accepted; itself accepted
/// and unchanged by another round.
fn canonical(membership: &pb::RaftMembership) -> pb::RaftMembership {
    let m = membership_from_pb(membership).expect("accepted membership");
    let once = membership_to_pb(&m);
    let twice = membership_to_pb(&membership_from_pb(&once).expect("canonical membership"));
    assert_eq!(once, twice, "a membership's canonical form is not stable");
    once
}

fn check_append(request: pb::RaftAppendRequest) {
    let Ok(r) = wire::append_request_from::<TokioRuntime>(request.clone()) else {
        return;
    };
    assert_eq!(Some(wire::vote_to(&r.vote)), request.vote);
    assert_eq!(
        r.prev_log_id.as_ref().map(wire::log_id_to),
        request.prev_log_id
    );
    assert_eq!(
        r.leader_commit.as_ref().map(wire::log_id_to),
        request.leader_commit
    );
    assert_eq!(r.entries.len(), request.entries.len());
    for (entry, sent) in r.entries.iter().zip(&request.entries) {
        assert_eq!(Some(wire::log_id_to(&entry.log_id())), sent.log_id);
        match (
            &entry.payload,
            sent.payload.as_ref().expect("accepted with one"),
        ) {
            (EntryPayload::Blank, WirePayload::Blank(_)) => {}
            (EntryPayload::Normal(Proposal::Received(batch)), WirePayload::Batch(bytes)) => {
                let header = format::verify_batch_records(bytes).expect("a received batch");
                assert_eq!(
                    header.batch_len as usize,
                    bytes.len(),
                    "not exactly one batch"
                );
                assert_eq!(batch.header(), &header);
            }
            (EntryPayload::Membership(m), WirePayload::Membership(sent)) => {
                assert_eq!(&membership_to_pb(m), &canonical(sent));
            }
            (got, sent) => panic!("entry {sent:?} became {got:?}"),
        }
    }
}

fn metadata_records(input: &mut Input<'_>) {
    let mut view = MetadataView::default();
    let mut offset = 0u64;
    while !input.is_empty() {
        offset += u64::from(input.u8() % 4);
        let Ok(record) = metadata::decode(input.bytes(256)) else {
            continue;
        };
        let again = metadata::decode(&metadata::encode(&record)).expect("re-encoded record");
        assert_eq!(again, record);
        if metadata::check(&record, &NODES, PARTITIONS_MAX).is_err() {
            continue;
        }
        let before = view.clone();
        let applied = view.apply(offset, &record);
        assert_eq!(view.applied(), offset + 1);
        match (&record.kind, applied) {
            (Some(pb::metadata_record::Kind::TopicCreated(c)), Applied::Created { name }) => {
                assert!(before.topic(&name).is_none());
                if let Some(after) = c.after {
                    assert!(
                        before.deletion(&name).is_none_or(|d| d.offset < after),
                        "a creation found free at {after} applied over a later deletion"
                    );
                }
                let placement = view.topic(&name).expect("created");
                assert_eq!(placement.incarnation, offset + 1);
                assert_eq!(placement.replicas.len(), c.partitions as usize);
                assert!(
                    placement
                        .replicas
                        .iter()
                        .flatten()
                        .all(|n| NODES.contains(n))
                );
            }
            (Some(pb::metadata_record::Kind::TopicCreated(c)), Applied::CreateIgnored { name }) => {
                assert_eq!(name, c.name);
                assert_eq!(before.topic(&name), view.topic(&name));
            }
            (Some(pb::metadata_record::Kind::TopicDeleted(d)), Applied::Deleted { name }) => {
                assert_eq!(
                    before.topic(&name).map(|p| p.incarnation),
                    Some(d.incarnation)
                );
                assert!(view.topic(&name).is_none());
                assert_eq!(view.deletion(&name).map(|d| d.offset), Some(offset));
            }
            (Some(pb::metadata_record::Kind::TopicDeleted(d)), Applied::DeleteIgnored { name }) => {
                assert_ne!(
                    before.topic(&name).map(|p| p.incarnation),
                    Some(d.incarnation)
                );
            }
            (
                Some(pb::metadata_record::Kind::PartitionReassigned(r)),
                Applied::Reassigned { name, partition },
            ) => {
                assert_eq!((name.as_str(), partition), (r.name.as_str(), r.partition));
                let old = before.topic(&name).expect("a move of a live topic");
                assert_eq!(old.incarnation, r.incarnation);
                assert!(!old.moving.contains_key(&partition), "one move at a time");
                let new = view.topic(&name).expect("still live");
                assert_eq!(new.replicas[partition as usize], r.replicas);
                assert_eq!(
                    new.moving.get(&partition),
                    Some(&old.replicas[partition as usize]),
                    "the old replicas are kept until the move completes"
                );
            }
            (
                Some(pb::metadata_record::Kind::ReassignCompleted(r)),
                Applied::ReassignCompleted { name, partition },
            ) => {
                assert_eq!((name.as_str(), partition), (r.name.as_str(), r.partition));
                let old = before.topic(&name).expect("a move of a live topic");
                assert!(old.moving.contains_key(&partition), "a move was under way");
                let new = view.topic(&name).expect("still live");
                assert!(!new.moving.contains_key(&partition));
                assert_eq!(new.replicas[partition as usize], r.replicas);
            }
            (
                Some(
                    pb::metadata_record::Kind::PartitionReassigned(_)
                    | pb::metadata_record::Kind::ReassignCompleted(_),
                ),
                Applied::ReassignIgnored { .. },
            ) => assert_eq!(
                before.topics().collect::<Vec<_>>(),
                view.topics().collect::<Vec<_>>()
            ),
            (
                Some(pb::metadata_record::Kind::NodeDecommissioned(d)),
                Applied::Decommissioned { node },
            ) => {
                assert_eq!(node, d.node);
                assert!(view.is_decommissioned(node));
                assert_eq!(
                    before.topics().collect::<Vec<_>>(),
                    view.topics().collect::<Vec<_>>()
                );
            }
            (kind, applied) => panic!("{kind:?} applied as {applied:?}"),
        }
        offset += 1;
    }
}
