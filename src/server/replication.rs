//! The node-to-node service `walrs.v1.Replication`: another node's Raft messages for the
//! partition groups this node holds, in and out over one `Exchange` stream per peer.
//!
//! Owns: who may replicate (a caller whose ACL grants `replicate`: node certificates,
//! CN `node-<id>`; a client certificate without it is refused `PERMISSION_DENIED` when it
//! opens the stream), that a node speaks only for itself (an envelope's `from_node` must be
//! the id in its certificate), and the bounds of one stream: at most
//! `cluster.replication_queue_depth_max` messages, and `cluster.replication_queue_bytes_max`
//! bytes of them, being served at once (past either the stream is not read, and HTTP/2 flow
//! control holds the sender; a frame read below the bound may pass it by at most one frame),
//! answers packed into frames as they complete, in any order.
//! Must never: interpret a message (the group does, on its shard), or keep a stream open
//! once the server drains.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::acl::{Action, Principal};
use super::controller::Controller;
use super::errors::Error;
use super::service::{Inner, peer_addr};
use crate::cluster::metadata;
use crate::observability;
use crate::proto::v1 as pb;
use crate::proto::v1::replication_server::Replication;
use crate::raft::wire;

/// Answer frames built but not yet taken by the HTTP/2 stream, per stream.
const FRAMES_QUEUED: usize = 4;

/// The service; cheap to clone (tonic clones it per connection).
#[derive(Clone)]
pub struct ReplicationService {
    inner: Arc<Inner>,
    /// What one stream serves at once.
    in_service_max: InService,
}

impl ReplicationService {
    pub(super) fn new(inner: Arc<Inner>) -> ReplicationService {
        let cluster = &inner.config.cluster;
        let in_service_max = InService {
            messages: cluster.replication_queue_depth_max as usize,
            bytes: cluster.replication_queue_bytes_max as usize,
        };
        ReplicationService {
            inner,
            in_service_max,
        }
    }
}

/// Messages being served on one stream, and their encoded bytes; or the bound of both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InService {
    messages: usize,
    bytes: usize,
}

impl InService {
    /// Whether the stream may read another frame with `self` in service, under `max`.
    fn admits_more(&self, max: &InService) -> bool {
        self.messages < max.messages && self.bytes < max.bytes
    }

    fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes;
    }

    fn remove(&mut self, bytes: usize) {
        assert!(
            self.messages > 0 && self.bytes >= bytes,
            "a stream answers only what it serves"
        );
        self.messages -= 1;
        self.bytes -= bytes;
    }
}

/// The node id a caller may speak for: its certificate's `node-<id>`; `None` = any
/// (plaintext, fully trusted, or an identity the ACL grants `replicate` by name).
fn speaks_for(principal: &Principal) -> Option<u32> {
    match principal {
        Principal::Anonymous => None,
        Principal::Client(name) => name
            .strip_prefix(crate::certs::NODE_PREFIX)
            .and_then(|id| id.parse().ok()),
    }
}

impl ReplicationService {
    /// The caller of a call that covers every topic (the stream, the placements): running,
    /// authenticated, and granted `replicate` by some ACL entry; the refusal is logged.
    fn node_caller<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let inner = &self.inner;
        inner.check_not_draining()?;
        let principal = inner.principal(request)?;
        if inner.acl.authorize_somewhere(&principal, Action::Replicate) {
            return Ok(principal);
        }
        observability::authorization_denied(principal.name());
        tracing::warn!(peer = %peer_addr(request), identity = %principal, "node-to-node call refused by the ACL");
        Err(Error::Denied {
            principal,
            action: Action::Replicate,
            topic: "*".to_owned(),
        }
        .into())
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::RaftFrame, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type ExchangeStream = FrameStream;

    async fn exchange(
        &self,
        request: Request<Streaming<pb::RaftFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let inner = &self.inner;
        let principal = self.node_caller(&request)?;
        tracing::debug!(peer = %peer_addr(&request), identity = %principal, "replication stream opened");
        let (answers, stream) = mpsc::channel(FRAMES_QUEUED);
        let serve = Exchange {
            inner: inner.clone(),
            node: speaks_for(&principal),
            principal,
            in_service_max: self.in_service_max,
        };
        tokio::spawn(serve.run(request.into_inner(), answers));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn propose_metadata(
        &self,
        request: Request<pb::ProposeMetadataRequest>,
    ) -> Result<Response<pb::ProposeMetadataResponse>, Status> {
        let principal = self.node_caller(&request)?;
        let controller = self.controller()?;
        let record = request.into_inner().record.unwrap_or_default();
        let nodes = self
            .inner
            .peers
            .as_ref()
            .map_or_else(Vec::new, |p| p.membership().ids());
        let partitions_max = self.inner.config.server.partitions_per_topic_max;
        metadata::check(&record, &nodes, partitions_max)
            .map_err(|why| Status::from(Error::invalid(why)))?;
        let offset = controller.append_local(&record).await?;
        tracing::debug!(offset, by = %principal, "metadata record appended for a peer");
        Ok(Response::new(pb::ProposeMetadataResponse { offset }))
    }

    async fn fetch_metadata(
        &self,
        request: Request<pb::FetchMetadataRequest>,
    ) -> Result<Response<pb::FetchMetadataResponse>, Status> {
        self.node_caller(&request)?;
        let controller = self.controller()?;
        let fetch = request.into_inner();
        let max_wait = Duration::from_millis(u64::from(fetch.max_wait_ms)).min(controller.wait());
        Ok(Response::new(
            controller.fetch(fetch.from_offset, max_wait).await?,
        ))
    }

    async fn sync_metadata(
        &self,
        request: Request<pb::SyncMetadataRequest>,
    ) -> Result<Response<pb::SyncMetadataResponse>, Status> {
        self.node_caller(&request)?;
        let controller = self.controller()?;
        let sync = request.into_inner();
        let longest = controller.wait_to_open(self.inner.config.server.partitions_per_topic_max);
        let max_wait = Duration::from_millis(u64::from(sync.max_wait_ms)).min(longest);
        let applied = controller.wait_applied(sync.offset, max_wait).await;
        Ok(Response::new(pb::SyncMetadataResponse { applied }))
    }
}

impl ReplicationService {
    /// This node's controller; outside a cluster there is none to ask.
    fn controller(&self) -> Result<&Controller, Status> {
        self.inner
            .controller
            .as_deref()
            .ok_or_else(|| Error::NoMetadataReplica.into())
    }
}

/// One open Exchange stream.
struct Exchange {
    inner: Arc<Inner>,
    principal: Principal,
    node: Option<u32>,
    in_service_max: InService,
}

impl Exchange {
    async fn run(
        self,
        mut inbound: Streaming<pb::RaftFrame>,
        answers: mpsc::Sender<Result<pb::RaftFrame, Status>>,
    ) {
        let mut serving = FuturesUnordered::new();
        let mut in_service = InService::default();
        let mut draining = self.inner.draining.clone();
        loop {
            tokio::select! {
                frame = inbound.message(), if in_service.admits_more(&self.in_service_max) => {
                    match frame {
                        Ok(Some(frame)) => {
                            for message in frame.messages {
                                let bytes = message.encoded_len();
                                in_service.add(bytes);
                                serving.push(self.serve(message).map(move |answer| (answer, bytes)));
                            }
                        }
                        // The peer closed its side, or the connection broke.
                        Ok(None) | Err(_) => return,
                    }
                }
                Some((answer, bytes)) = serving.next(), if !serving.is_empty() => {
                    in_service.remove(bytes);
                    let mut messages = vec![answer];
                    while let Some(Some((answer, bytes))) = serving.next().now_or_never() {
                        in_service.remove(bytes);
                        messages.push(answer);
                    }
                    if answers.send(Ok(pb::RaftFrame { messages })).await.is_err() {
                        return;
                    }
                }
                () = async { drop(draining.wait_for(|d| *d).await.map(|_| ())) } => {
                    drop(answers.try_send(Err(Status::unavailable(
                        "the node is shutting down; reconnect to it after it restarts",
                    ))));
                    return;
                }
            }
        }
    }

    /// Serves one message on its partition's shard, or refuses it here.
    fn serve(
        &self,
        message: pb::RaftEnvelope,
    ) -> impl std::future::Future<Output = pb::RaftEnvelope> + use<> {
        let own_id = self.inner.config.cluster.node_id;
        let refusal = if self.node.is_some_and(|id| id != message.from_node) {
            Some(format!(
                "{} may not speak for node {}",
                self.principal, message.from_node
            ))
        } else if message.to_node != 0 && message.to_node != own_id {
            Some(format!(
                "this is node {own_id}, not node {}: the sender's address for node {} is wrong",
                message.to_node, message.to_node
            ))
        } else if !self
            .inner
            .acl
            .authorize(&self.principal, Action::Replicate, &message.topic)
        {
            Some(format!(
                "{} may not replicate topic {:?}",
                self.principal, message.topic
            ))
        } else {
            None
        };
        let shards = self.inner.shards.clone();
        async move {
            match refusal {
                Some(reason) => wire::refusal(message, reason),
                None => shards.deliver_raft(message).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream reads on while both its messages and their bytes in service are below the
    /// bounds, and stops at either.
    #[test]
    fn a_stream_reads_while_both_messages_and_bytes_in_service_are_below_the_bounds() {
        let max = InService {
            messages: 3,
            bytes: 1000,
        };
        let mut in_service = InService::default();
        assert!(in_service.admits_more(&max));
        in_service.add(400);
        in_service.add(400);
        assert!(in_service.admits_more(&max), "2 messages, 800 bytes");
        in_service.add(10);
        assert!(!in_service.admits_more(&max), "3 messages: the count bound");
        in_service.remove(10);
        in_service.add(300);
        assert!(!in_service.admits_more(&max), "1,100 bytes: the byte bound");
        in_service.remove(400);
        assert!(in_service.admits_more(&max));
        in_service.remove(400);
        in_service.remove(300);
        assert_eq!(in_service, InService::default());
    }

    #[test]
    fn a_node_certificate_speaks_for_its_id_only() {
        assert_eq!(speaks_for(&Principal::Client("node-3".to_owned())), Some(3));
        assert_eq!(speaks_for(&Principal::Client("root".to_owned())), None);
        assert_eq!(speaks_for(&Principal::Client("node-x".to_owned())), None);
        assert_eq!(speaks_for(&Principal::Anonymous), None);
    }
}
