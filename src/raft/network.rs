//! A partition group's network: openraft's `RaftNetworkFactory` and `RaftNetworkV2`, over
//! the node's [`RaftTransport`], which carries every group's messages to a node together.
//!
//! Owns: the [`RaftTransport`] contract (what any carrier of Raft messages between nodes
//! must do: in-process for tests, gRPC `walrs.v1.Replication` in the server) and the
//! per-peer clients a group's core and replication tasks call.
//! Must never: block the shard. A send is queued on the transport at once (a full queue is an
//! unreachable peer, which openraft backs off from), and the answer is awaited on a oneshot
//! with the RPC's deadline.
//!
//! Replication is pipelined: a leader's stream of AppendEntries to one follower keeps up to
//! `cluster.replication_inflight_max` of them awaiting answers ([`Pipeline`]), so an entry goes
//! out as soon as the leader has it, not after the follower has answered (and synced) the one
//! before. Answers are handed to openraft in the order the requests were sent, and the stream
//! ends at the first that is not a full success, as openraft's one-at-a-time stream does.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::FuturesOrdered;
use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, VoteRequest,
    VoteResponse,
};
use openraft::rt::AsyncRuntime;
use openraft::{EmptyNode, OptionalSend};
use tokio::sync::oneshot;

use super::store::Key;
use super::types::{LogId, NodeId, PartitionTypes, Vote};
use super::wire;
use crate::proto::v1 as pb;
use pb::raft_envelope::Body;

/// Why a message got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("node {node} is not a known peer")]
    UnknownNode { node: NodeId },
    #[error("node {node} did not answer: {reason}")]
    Lost { node: NodeId, reason: String },
    #[error("node {node} refused the message: {reason}")]
    Refused { node: NodeId, reason: String },
    #[error("no answer from node {node} within {timeout_ms} ms")]
    Timeout { node: NodeId, timeout_ms: u64 },
}

/// What a send yields: the response envelope, or why there is none.
pub(crate) type TransportReply = oneshot::Receiver<Result<pb::RaftEnvelope, TransportError>>;

/// Carries Raft messages between nodes. Shared by every shard of a node (`Send + Sync`).
///
/// Contract: `send` never blocks; every message gets exactly one answer on its receiver
/// (a response whose `id` matches, or an error), unless the receiver is dropped first.
/// Messages to one node may be batched and may be answered out of order.
pub(crate) trait RaftTransport: Send + Sync + 'static {
    fn send(&self, to: NodeId, message: pb::RaftEnvelope) -> TransportReply;

    /// The link from node `from` (this node; a transport shared by in-process nodes tells
    /// them apart by it) to node `to`. Idle groups sleep on it (see `quiet`): a change wakes
    /// them.
    fn link(&self, from: NodeId, to: NodeId) -> LinkState;

    /// Where node `node` serves gRPC, when known (the `walrs-leader` hint names it).
    fn addr_of(&self, node: NodeId) -> Option<String>;

    /// The nodes `from` (this node) has links to: the set may grow while the node runs.
    fn peers(&self, from: NodeId) -> Vec<NodeId>;
}

/// What a transport knows of one link between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LinkState {
    /// Messages can flow now.
    pub up: bool,
    /// How many times the link went up or down since the transport started: a node that
    /// went down and came back between two looks shows here though `up` looks unchanged.
    pub changes: u64,
}

/// A group's network factory: makes one client per peer.
pub(crate) struct GroupNetwork {
    key: Key,
    /// Stamped on every message (see `RaftEnvelope.incarnation`).
    incarnation: u64,
    node_id: NodeId,
    transport: Arc<dyn RaftTransport>,
    /// AppendEntries awaiting answers from one follower at once (at least 1).
    inflight_max: usize,
}

impl GroupNetwork {
    pub(crate) fn new(
        key: Key,
        incarnation: u64,
        node_id: NodeId,
        transport: Arc<dyn RaftTransport>,
        inflight_max: usize,
    ) -> Self {
        assert!(
            inflight_max >= 1,
            "a replication stream needs room for one request"
        );
        GroupNetwork {
            key,
            incarnation,
            node_id,
            transport,
            inflight_max,
        }
    }

    /// This group's client to replica `target`.
    fn client(&self, target: NodeId) -> PeerClient {
        PeerClient {
            key: self.key.clone(),
            incarnation: self.incarnation,
            from: self.node_id,
            target,
            transport: self.transport.clone(),
            inflight_max: self.inflight_max,
        }
    }

    /// Asks replica `target` for its vote in this group, changing nothing there: a pre-vote
    /// of term 0 with an empty log, which no replica grants (pre-votes never persist
    /// anything) and every serving replica answers with its own vote. `None`: no answer
    /// within `timeout`, or a refusal (a replica that is itself catching up refuses).
    pub(crate) async fn ask_for_vote<RT: AsyncRuntime>(
        &self,
        target: NodeId,
        timeout: std::time::Duration,
    ) -> Option<Vote> {
        let client = self.client(target);
        let request = VoteRequest::<PartitionTypes<RT>>::new(Vote::new(0, 0), None);
        let asked = Body::PreVote(wire::vote_request_to(&request));
        let answer = client.ask_vote::<RT>(asked, &RPCOption::new(timeout)).await;
        answer.ok().map(|response| response.vote)
    }
}

/// Whether `body` is [`GroupNetwork::ask_for_vote`]'s question: a pre-vote of term 0, which
/// no candidate sends (terms start at 1 once a group is initialized).
pub(crate) fn is_vote_probe(body: Option<&Body>) -> bool {
    matches!(body, Some(Body::PreVote(request)) if request.vote.as_ref().is_some_and(|vote| vote.term == 0))
}

impl<RT: AsyncRuntime> RaftNetworkFactory<PartitionTypes<RT>> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, _node: &EmptyNode) -> PeerClient {
        self.client(target)
    }
}

/// One group's client to one peer.
pub(crate) struct PeerClient {
    key: Key,
    incarnation: u64,
    from: NodeId,
    target: NodeId,
    transport: Arc<dyn RaftTransport>,
    inflight_max: usize,
}

fn unreachable<RT: AsyncRuntime>(
    e: &(impl std::error::Error + 'static),
) -> RPCError<PartitionTypes<RT>> {
    RPCError::Unreachable(Unreachable::new(e))
}

impl PeerClient {
    /// Sends `body` to the peer and awaits its answer's body, within `option`'s deadline.
    async fn call<RT: AsyncRuntime>(
        &self,
        body: Body,
        option: &RPCOption,
    ) -> Result<Body, RPCError<PartitionTypes<RT>>> {
        let reply = self.send(body);
        self.answer::<RT>(reply, option).await
    }

    /// Queues `body` for the peer, now (the order of sends is the order on the wire).
    fn send(&self, body: Body) -> TransportReply {
        let envelope = pb::RaftEnvelope {
            id: 0, // the transport numbers what it sends
            topic: self.key.0.to_string(),
            partition: self.key.1,
            from_node: u32::try_from(self.from).expect("node ids are u32 in the config"),
            incarnation: self.incarnation,
            to_node: 0, // the transport addresses it
            body: Some(body),
        };
        self.transport.send(self.target, envelope)
    }

    /// The answer's body to a message sent, within `option`'s deadline.
    async fn answer<RT: AsyncRuntime>(
        &self,
        reply: TransportReply,
        option: &RPCOption,
    ) -> Result<Body, RPCError<PartitionTypes<RT>>> {
        let ttl = option.hard_ttl();
        let answer = match RT::timeout(ttl, reply).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_dropped)) => Err(TransportError::Lost {
                node: self.target,
                reason: "the transport dropped the message".to_owned(),
            }),
            Err(_elapsed) => Err(TransportError::Timeout {
                node: self.target,
                timeout_ms: ttl.as_millis() as u64,
            }),
        };
        match answer.map_err(|e| unreachable::<RT>(&e))?.body {
            Some(Body::Error(reason)) => Err(unreachable::<RT>(&TransportError::Refused {
                node: self.target,
                reason,
            })),
            Some(body) => Ok(body),
            None => Err(unreachable::<RT>(&TransportError::Lost {
                node: self.target,
                reason: "an answer without a body".to_owned(),
            })),
        }
    }
}

impl PeerClient {
    /// Encodes `rpc` and queues it for the peer.
    fn send_append<RT: AsyncRuntime>(
        &self,
        rpc: &AppendEntriesRequest<PartitionTypes<RT>>,
    ) -> Result<TransportReply, RPCError<PartitionTypes<RT>>> {
        let request = wire::append_request_to(rpc).map_err(bad_answer::<RT>)?;
        Ok(self.send(Body::Append(request)))
    }

    /// The peer's answer to an AppendEntries sent.
    async fn append_answer<RT: AsyncRuntime>(
        &self,
        reply: TransportReply,
        option: &RPCOption,
    ) -> AppendAnswer<RT> {
        match self.answer::<RT>(reply, option).await? {
            Body::AppendResponse(r) => wire::append_response_from(r).map_err(bad_answer::<RT>),
            _ => Err(unexpected::<RT>(self.target)),
        }
    }

    /// A vote or pre-vote request (`request`), and the vote response it must get.
    async fn ask_vote<RT: AsyncRuntime>(
        &self,
        request: Body,
        option: &RPCOption,
    ) -> Result<VoteResponse<PartitionTypes<RT>>, RPCError<PartitionTypes<RT>>> {
        match self.call::<RT>(request, option).await? {
            Body::VoteResponse(r) => wire::vote_response_from(r).map_err(bad_answer::<RT>),
            _ => Err(unexpected::<RT>(self.target)),
        }
    }
}

fn unexpected<RT: AsyncRuntime>(node: NodeId) -> RPCError<PartitionTypes<RT>> {
    unreachable::<RT>(&TransportError::Lost {
        node,
        reason: "an answer of the wrong kind".to_owned(),
    })
}

fn bad_answer<RT: AsyncRuntime>(e: io::Error) -> RPCError<PartitionTypes<RT>> {
    unreachable::<RT>(&e)
}

impl<RT: AsyncRuntime> RaftNetworkV2<PartitionTypes<RT>> for PeerClient {
    type SnapshotData = super::state_machine::PartitionSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<PartitionTypes<RT>>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<PartitionTypes<RT>>, RPCError<PartitionTypes<RT>>> {
        let reply = self.send_append::<RT>(&rpc)?;
        self.append_answer::<RT>(reply, &option).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, StreamAnswer<RT>>, RPCError<PartitionTypes<RT>>>>
    where
        S: Stream<Item = AppendEntriesRequest<PartitionTypes<RT>>> + OptionalSend + Unpin + 'static,
    {
        let pipeline: BoxStream<'s, StreamAnswer<RT>> =
            Box::pin(Pipeline::new(self, input, option));
        Box::pin(std::future::ready(Ok(pipeline)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<PartitionTypes<RT>>,
        option: RPCOption,
    ) -> Result<VoteResponse<PartitionTypes<RT>>, RPCError<PartitionTypes<RT>>> {
        self.ask_vote(Body::Vote(wire::vote_request_to(&rpc)), &option)
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<PartitionTypes<RT>>,
        option: RPCOption,
    ) -> Result<VoteResponse<PartitionTypes<RT>>, RPCError<PartitionTypes<RT>>> {
        self.ask_vote(Body::PreVote(wire::vote_request_to(&rpc)), &option)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: super::state_machine::Snapshot,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<PartitionTypes<RT>>, StreamingError<PartitionTypes<RT>>> {
        let unreachable = |e: &dyn std::error::Error| {
            StreamingError::Unreachable(Unreachable::new(&io::Error::other(e.to_string())))
        };
        let request = wire::snapshot_to(&vote, &snapshot).map_err(|e| unreachable(&e))?;
        let answer = self
            .call::<RT>(Body::InstallSnapshot(request), &option)
            .await;
        match answer {
            Ok(Body::SnapshotResponse(vote)) => {
                let vote = wire::snapshot_response_from(vote).map_err(|e| unreachable(&e))?;
                Ok(SnapshotResponse::new(vote))
            }
            Ok(_) => Err(unreachable(&io::Error::other(format!(
                "node {} answered a snapshot with the wrong kind",
                self.target
            )))),
            Err(e) => Err(unreachable(&e)),
        }
    }
}

/// What a replication stream yields per request: openraft's result, or why there is none.
type StreamAnswer<RT> =
    Result<StreamAppendResult<PartitionTypes<RT>>, RPCError<PartitionTypes<RT>>>;

/// A follower's answer to one AppendEntries, or why there is none.
type AppendAnswer<RT> =
    Result<AppendEntriesResponse<PartitionTypes<RT>>, RPCError<PartitionTypes<RT>>>;

/// An AppendEntries sent and not yet answered: the range it covers, and its answer.
type Awaiting<'s, RT> = BoxFuture<'s, (Option<LogId>, Option<LogId>, AppendAnswer<RT>)>;

/// A leader's pipelined stream of AppendEntries to one follower (see the module docs).
///
/// Invariants: at most `client.inflight_max` requests await answers; they are sent in the
/// order openraft made them and answered to openraft in that order; each one's deadline runs
/// from its send (every awaited answer is polled, not only the oldest); after the first answer
/// that is not a full success (a conflict, a higher vote, a partial success, an error) the
/// stream ends, and the answers still awaited are dropped unread (openraft starts a new
/// stream from what the follower holds). Ended = no input and nothing awaited.
struct Pipeline<'s, RT: AsyncRuntime, S> {
    client: &'s PeerClient,
    /// openraft's requests; `None` once it has no more.
    input: Option<S>,
    awaiting: FuturesOrdered<Awaiting<'s, RT>>,
    option: RPCOption,
    /// The last entry this stream has told openraft the follower holds.
    matched: Option<LogId>,
}

impl<'s, RT: AsyncRuntime, S> Pipeline<'s, RT, S> {
    fn new(client: &'s PeerClient, input: S, option: RPCOption) -> Self {
        Pipeline {
            client,
            input: Some(input),
            awaiting: FuturesOrdered::new(),
            option,
            matched: None,
        }
    }

    /// Sends nothing more and drops the answers still awaited.
    fn end(&mut self) {
        self.input = None;
        self.awaiting = FuturesOrdered::new();
    }
}

impl<RT: AsyncRuntime, S> Stream for Pipeline<'_, RT, S>
where
    S: Stream<Item = AppendEntriesRequest<PartitionTypes<RT>>> + Unpin,
{
    type Item = StreamAnswer<RT>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Send what openraft has ready, while there is room.
        while this.awaiting.len() < this.client.inflight_max {
            let Some(input) = this.input.as_mut() else {
                break;
            };
            match Pin::new(input).poll_next(cx) {
                Poll::Ready(Some(rpc)) => {
                    let prev = rpc.prev_log_id;
                    let last = rpc.entries.last().map(|e| e.log_id()).or(prev);
                    let awaiting: Awaiting<'_, RT> = match this.client.send_append::<RT>(&rpc) {
                        Ok(reply) => {
                            let (client, option) = (this.client, this.option.clone());
                            Box::pin(async move {
                                (prev, last, client.append_answer::<RT>(reply, &option).await)
                            })
                        }
                        Err(e) => {
                            // Answered after the requests before it, in order; nothing after.
                            this.input = None;
                            Box::pin(std::future::ready((prev, last, Err(e))))
                        }
                    };
                    this.awaiting.push_back(awaiting);
                }
                Poll::Ready(None) => this.input = None,
                Poll::Pending => break,
            }
        }
        let (prev, last, answered) = match Pin::new(&mut this.awaiting).poll_next(cx) {
            Poll::Ready(Some(answered)) => answered,
            Poll::Ready(None) if this.input.is_none() => return Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => return Poll::Pending,
        };
        let item = match answered {
            Ok(AppendEntriesResponse::Conflict) if prev <= this.matched => {
                // The follower served this request before the one it follows (its queue
                // let a later message pass), so it lacked `prev` then; it has said it holds
                // `prev` since. openraft must not hear "holds it" then "lacks it": end the
                // stream, and openraft starts the next one from what the follower holds.
                tracing::debug!(target_node = this.client.target, ?prev, matched = ?this.matched, "a follower answered out of order; replication goes on from what it holds");
                this.end();
                return Poll::Ready(None);
            }
            Ok(response) => {
                let full = match &response {
                    AppendEntriesResponse::Success => true,
                    AppendEntriesResponse::PartialSuccess(matched) => *matched == last,
                    AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => false,
                };
                if !full {
                    this.end();
                }
                let result = response.into_stream_result(prev, last);
                if let Ok(matched) = &result {
                    this.matched = this.matched.max(*matched);
                }
                Ok(result)
            }
            Err(e) => {
                this.end();
                Err(e)
            }
        };
        Poll::Ready(Some(item))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::StreamExt;
    use openraft::EntryPayload;
    use openraft::network::v2::RaftNetworkV2;
    use openraft::raft::StreamAppendError;
    use openraft_rt_tokio::TokioRuntime as Rt;

    use super::*;
    use crate::raft::types::{Entry, log_id};

    type Answer = oneshot::Sender<Result<pb::RaftEnvelope, TransportError>>;

    /// A transport that keeps every message sent, and its answer for the test to give.
    #[derive(Default)]
    struct Held {
        sent: Mutex<Vec<(pb::RaftEnvelope, Option<Answer>)>>,
    }

    impl RaftTransport for Held {
        fn send(&self, _to: NodeId, message: pb::RaftEnvelope) -> TransportReply {
            let (answer, reply) = oneshot::channel();
            self.sent.lock().unwrap().push((message, Some(answer)));
            reply
        }
        fn link(&self, _from: NodeId, _to: NodeId) -> LinkState {
            LinkState {
                up: true,
                changes: 0,
            }
        }
        fn addr_of(&self, _node: NodeId) -> Option<String> {
            None
        }
        fn peers(&self, _from: NodeId) -> Vec<NodeId> {
            vec![2]
        }
    }

    impl Held {
        fn sent(&self) -> usize {
            self.sent.lock().unwrap().len()
        }

        /// Answers message `n` (0-based, in send order) with `response`.
        fn answer(&self, n: usize, response: AppendEntriesResponse<PartitionTypes<Rt>>) {
            let mut sent = self.sent.lock().unwrap();
            let (message, answer) = &mut sent[n];
            let body = Body::AppendResponse(wire::append_response_to::<Rt>(&response));
            let answered = wire::answer(message.clone(), body);
            answer.take().unwrap().send(Ok(answered)).unwrap();
        }
    }

    /// The AppendEntries of entry `index` (a blank), after entry `index - 1`.
    fn request(index: u64) -> AppendEntriesRequest<PartitionTypes<Rt>> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(1, index - 1)),
            entries: vec![Entry::new(log_id(1, index), EntryPayload::Blank)],
            leader_commit: None,
        }
    }

    fn peer(transport: Arc<Held>, inflight_max: usize) -> PeerClient {
        GroupNetwork::new(("t".into(), 0), 1, 1, transport, inflight_max).client(2)
    }

    fn option() -> RPCOption {
        RPCOption::new(std::time::Duration::from_secs(60))
    }

    /// A pipelined stream to node 2 of the AppendEntries of entries `1..=last`, one each.
    async fn open(
        client: &mut PeerClient,
        last: u64,
        option: RPCOption,
    ) -> BoxStream<'_, StreamAnswer<Rt>> {
        let input = futures::stream::iter((1..=last).map(request));
        RaftNetworkV2::<PartitionTypes<Rt>>::stream_append(client, input, option)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_stream_keeps_its_window_in_flight_and_answers_in_send_order() {
        let transport = Arc::new(Held::default());
        let mut client = peer(transport.clone(), 3);
        let mut answers = open(&mut client, 5, option()).await;
        // Nothing answered yet: three go out, the window's worth, and no more.
        assert!(futures::poll!(answers.next()).is_pending());
        assert_eq!(transport.sent(), 3);
        // The third and second are answered first; openraft still hears the first first.
        transport.answer(2, AppendEntriesResponse::Success);
        transport.answer(1, AppendEntriesResponse::Success);
        assert!(futures::poll!(answers.next()).is_pending());
        transport.answer(0, AppendEntriesResponse::Success);
        for index in 1..=3 {
            let answered = answers.next().await.unwrap().unwrap();
            assert_eq!(answered.unwrap(), Some(log_id(1, index)));
        }
        // Room again: the last two went out.
        assert!(futures::poll!(answers.next()).is_pending());
        assert_eq!(transport.sent(), 5);
        transport.answer(3, AppendEntriesResponse::Success);
        transport.answer(4, AppendEntriesResponse::Success);
        assert_eq!(
            answers.next().await.unwrap().unwrap().unwrap(),
            Some(log_id(1, 4))
        );
        assert_eq!(
            answers.next().await.unwrap().unwrap().unwrap(),
            Some(log_id(1, 5))
        );
        assert!(answers.next().await.is_none(), "the input ended");
    }

    #[tokio::test]
    async fn a_stream_ends_at_the_first_answer_that_is_not_a_full_success() {
        let transport = Arc::new(Held::default());
        let mut client = peer(transport.clone(), 8);
        let mut answers = open(&mut client, 4, option()).await;
        assert!(futures::poll!(answers.next()).is_pending());
        assert_eq!(transport.sent(), 4);
        // The follower lacks entry 0 (its log diverged): the first answer is a conflict.
        transport.answer(0, AppendEntriesResponse::Conflict);
        transport.answer(1, AppendEntriesResponse::Success);
        let conflict = answers.next().await.unwrap().unwrap().unwrap_err();
        assert_eq!(conflict, StreamAppendError::Conflict(log_id(1, 0)));
        assert!(answers.next().await.is_none(), "nothing after the conflict");

        // A higher vote ends it too, after the answers before it.
        let transport = Arc::new(Held::default());
        let mut client = peer(transport.clone(), 8);
        let mut answers = open(&mut client, 3, option()).await;
        assert!(futures::poll!(answers.next()).is_pending());
        transport.answer(0, AppendEntriesResponse::Success);
        transport.answer(1, AppendEntriesResponse::HigherVote(Vote::new(2, 3)));
        transport.answer(2, AppendEntriesResponse::Success);
        assert_eq!(
            answers.next().await.unwrap().unwrap().unwrap(),
            Some(log_id(1, 1))
        );
        let higher = answers.next().await.unwrap().unwrap().unwrap_err();
        assert_eq!(higher, StreamAppendError::HigherVote(Vote::new(2, 3)));
        assert!(
            answers.next().await.is_none(),
            "nothing after the higher vote"
        );

        // With a window of one, the next goes out only once the one before is answered.
        let transport = Arc::new(Held::default());
        let mut client = peer(transport.clone(), 1);
        let mut answers = open(&mut client, 2, option()).await;
        assert!(futures::poll!(answers.next()).is_pending());
        assert_eq!(transport.sent(), 1);
        transport.answer(0, AppendEntriesResponse::PartialSuccess(Some(log_id(1, 0))));
        let partial = answers.next().await.unwrap().unwrap().unwrap();
        assert_eq!(partial, Some(log_id(1, 0)));
        assert!(
            answers.next().await.is_none(),
            "a partial success ends the stream"
        );
        assert_eq!(transport.sent(), 1);
    }

    #[tokio::test]
    async fn a_conflict_below_what_the_follower_acknowledged_ends_the_stream_unreported() {
        // The follower served entry 2's request before entry 1's: it lacked entry 1 then.
        let transport = Arc::new(Held::default());
        let mut client = peer(transport.clone(), 4);
        let mut answers = open(&mut client, 3, option()).await;
        assert!(futures::poll!(answers.next()).is_pending());
        transport.answer(0, AppendEntriesResponse::Success);
        transport.answer(1, AppendEntriesResponse::Conflict);
        assert_eq!(
            answers.next().await.unwrap().unwrap().unwrap(),
            Some(log_id(1, 1))
        );
        assert!(
            answers.next().await.is_none(),
            "openraft never hears entry 1 lacking after hearing it held"
        );
    }

    #[tokio::test]
    async fn each_request_has_its_deadline_from_its_send() {
        let transport = Arc::new(Held::default());
        let mut client = peer(transport.clone(), 2);
        // Real time, with half a second of margin on either side of the deadline.
        let ttl = std::time::Duration::from_secs(2);
        let mut answers = open(&mut client, 2, RPCOption::new(ttl)).await;
        assert!(futures::poll!(answers.next()).is_pending());
        assert_eq!(transport.sent(), 2);
        tokio::time::sleep(ttl * 3 / 4).await;
        transport.answer(0, AppendEntriesResponse::Success);
        assert_eq!(
            answers.next().await.unwrap().unwrap().unwrap(),
            Some(log_id(1, 1))
        );
        // The second was sent with the first: its deadline is a quarter of the TTL away, not
        // a whole TTL from now.
        let second = tokio::time::timeout(ttl / 2, answers.next())
            .await
            .expect("the second request's deadline ran from its send");
        assert!(second.unwrap().is_err(), "it timed out");
    }
}
