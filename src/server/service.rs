//! The `walrs.v1.Log` gRPC service over a [`ShardSet`]: the thin tonic `Log` impl and the
//! state its pipelines share.
//!
//! Each RPC authenticates (the caller's certificate CN, see `identity`), authorizes
//! (`acl`), validates every field against the config's limits, and only then calls the
//! shards; a refused request changes nothing. The work is in `append` (Append,
//! AppendStream), `read` (Read, ReadStream) and `admin` (topics, truncate, the cluster's
//! static membership); call tracking
//! is in `calls`. Errors become statuses in `errors` only. This module never does file I/O
//! and knows nothing of the on-disk format.
//!
//! Every stream is bounded and ends when the client goes away or the server drains
//! (`draining` turns true).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::acl::{Acl, Action, Principal};
use super::calls::{self, InFlight};
use super::controller::Controller;
use super::errors::{Error, Result};
use super::identity;
use super::listener::PeerInfo;
use super::read::READ_STREAM_BUFFER;
use crate::cluster::gossip::Gossip;
use crate::cluster::peers::PeerAdmin;
use crate::config::Config;
use crate::observability::{self, Rpc, RpcCall};
use crate::proto::v1::log_server::Log;
use crate::proto::v1::{
    AppendRequest, AppendResponse, CreateTopicRequest, CreateTopicResponse,
    DecommissionNodeRequest, DecommissionNodeResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest, DescribeTopicResponse,
    ListTopicsRequest, ListTopicsResponse, ReadRequest, ReadResponse, ReassignPartitionRequest,
    ReassignPartitionResponse, TruncateRequest, TruncateResponse,
};
use crate::shard::ShardSet;

/// Election timeouts (the longest) a proposal to the controller, or a wait for it to be
/// applied, may take.
const CONTROLLER_WAIT_ELECTIONS: u64 = 20;

/// The service; cheap to clone (tonic clones it per connection).
#[derive(Clone)]
pub struct LogService {
    inner: Arc<Inner>,
}

/// What the pipelines share.
pub(super) struct Inner {
    pub(super) shards: ShardSet,
    pub(super) config: Config,
    pub(super) acl: Acl,
    pub(super) default_partitions: u32,
    pub(super) round_robin: AtomicU64,
    /// Turns true when the server starts draining.
    pub(super) draining: watch::Receiver<bool>,
    pub(super) in_flight: Arc<InFlight>,
    /// Record bytes of appends accepted and not yet acknowledged, one permit per byte:
    /// `server.inflight_append_bytes_max` bounds what queued appends hold, server-wide.
    pub(super) append_budget: Arc<tokio::sync::Semaphore>,
    /// The other nodes, for the admin calls that reach every node; `None` outside a cluster.
    pub(super) peers: Option<PeerAdmin>,
    /// The cluster's metadata (topics and placement); `None` outside a cluster.
    pub(super) controller: Option<Arc<Controller>>,
    /// Who is alive, by gossip; `None` outside a cluster.
    pub(super) gossip: Option<Arc<Gossip>>,
}

impl LogService {
    pub(crate) fn new(
        shards: ShardSet,
        config: Config,
        draining: watch::Receiver<bool>,
        in_flight: Arc<InFlight>,
        peers: Option<PeerAdmin>,
        gossip: Option<Arc<Gossip>>,
    ) -> LogService {
        let default_partitions = config.default_partitions_for(shards.shard_count() as u32);
        let budget_bytes = usize::try_from(config.server.inflight_append_bytes_max)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let append_budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes));
        let controller = peers.as_ref().map(|peers| {
            let cluster = &config.cluster;
            Arc::new(Controller::new(
                u64::from(cluster.node_id),
                cluster.controller_voters(),
                peers.clone(),
                shards.clone(),
                // A proposal may need a few elections of the metadata log's group.
                Duration::from_millis(cluster.election_timeout_max_ms * CONTROLLER_WAIT_ELECTIONS),
                Duration::from_millis(cluster.heartbeat_interval_ms),
            ))
        });
        LogService {
            inner: Arc::new(Inner {
                acl: Acl::new(&config.acl),
                shards,
                config,
                default_partitions,
                round_robin: AtomicU64::new(0),
                draining,
                in_flight,
                append_budget,
                peers,
                controller,
                gossip,
            }),
        }
    }

    /// The node-to-node service over the same state.
    pub(crate) fn replication(&self) -> super::replication::ReplicationService {
        super::replication::ReplicationService::new(self.inner.clone())
    }

    /// In a cluster: starts following the controller's metadata log (see
    /// `server::controller`), until the server drains.
    pub(crate) fn spawn_controller(&self) {
        if let Some(controller) = &self.inner.controller {
            tokio::spawn(controller.clone().run(self.inner.draining.clone()));
            let mut mover = super::mover::Mover::new(
                controller.clone(),
                self.inner.shards.clone(),
                controller.wait(),
                controller.retry() * 4,
            );
            let replace_after_ms = self.inner.config.cluster.replace_after_ms;
            if let Some(gossip) = self.inner.gossip.clone().filter(|_| replace_after_ms > 0) {
                mover = mover.replacing_after(Duration::from_millis(replace_after_ms), gossip);
            }
            tokio::spawn(mover.run(self.inner.draining.clone()));
        }
    }

    /// The controller this node follows; `None` outside a cluster.
    pub(super) fn controller(&self) -> Option<Arc<Controller>> {
        self.inner.controller.clone()
    }

    /// The server-wide budget of record bytes in flight (`server.inflight_append_bytes_max`).
    pub(crate) fn append_budget(&self) -> Arc<tokio::sync::Semaphore> {
        self.inner.append_budget.clone()
    }

    /// The caller's identity for a log line, asked only when it is needed.
    fn identity<'a>(&'a self, request: &'a Request<()>) -> impl FnOnce() -> Option<String> + 'a {
        move || self.inner.identity_of(request)
    }

    /// The caller's identity for a stream's log line: asked while the request is at hand,
    /// and only when the line will be logged.
    fn stream_identity(&self, call: &RpcCall, request: &Request<()>) -> Option<String> {
        if call.span().is_disabled() {
            None
        } else {
            self.inner.identity_of(request)
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Inner {
    fn tls_enabled(&self) -> bool {
        self.config.tls.is_some()
    }

    pub(super) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Who is calling: the certificate CN with TLS, anonymous (trusted) without.
    pub(super) fn principal<T>(&self, request: &Request<T>) -> Result<Principal> {
        let principal = match PeerInfo::of(request) {
            Some(peer) if self.tls_enabled() => peer.client_name().map(Principal::Client),
            _ => identity::principal(self.tls_enabled(), None),
        };
        if let Err(e) = &principal {
            observability::authentication_failed();
            tracing::warn!(peer = %peer_addr(request), error = %e, "unauthenticated call refused");
        }
        Ok(principal?)
    }

    /// The principal, if the ACL grants it `action` on `topic`; the denial is logged.
    pub(super) fn authorize<T>(
        &self,
        request: &Request<T>,
        action: Action,
        topic: &str,
    ) -> Result<Principal> {
        let principal = self.principal(request)?;
        if self.acl.authorize(&principal, action, topic) {
            return Ok(principal);
        }
        observability::authorization_denied(principal.name());
        tracing::warn!(
            peer = %peer_addr(request),
            identity = %principal,
            %action,
            topic,
            "call denied by the ACL"
        );
        Err(Error::Denied {
            principal,
            action,
            topic: topic.to_string(),
        })
    }

    /// The caller's identity for a log line; `None` when it has no usable certificate.
    pub(super) fn identity_of<T>(&self, request: &Request<T>) -> Option<String> {
        let certs = PeerInfo::of(request).and_then(PeerInfo::certs);
        identity::principal(self.tls_enabled(), certs)
            .ok()
            .map(|p| p.name().to_owned())
    }

    /// For a client's call: not draining and, in a cluster, joined. Until a node has
    /// followed the controller's log and made its topics match, what it holds may be a
    /// stale copy (a topic deleted and created again while it was down), so it serves no
    /// client; the client goes to another node.
    pub(super) fn check_running(&self) -> Result<()> {
        self.check_not_draining()?;
        if let Some(controller) = &self.controller
            && !controller.has_joined()
        {
            return Err(Error::Cluster {
                message: format!(
                    "this node is joining the cluster: it has not yet followed the \
                     controller's log, whose voters are nodes {:?} (a majority of them must \
                     be up); retry on another node, or here in a moment",
                    controller.voters()
                ),
            });
        }
        Ok(())
    }

    /// Not draining: enough for node-to-node calls and for DescribeCluster, which must
    /// work while a node joins.
    pub(super) fn check_not_draining(&self) -> Result<()> {
        if self.is_draining() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    pub(super) fn check_topic_name(&self, name: &str) -> Result<()> {
        super::validate::topic_name(name, self.config.server.topic_name_bytes_max)
    }
}

/// The client's address, for logs ("unknown" when the request did not come through the
/// listener).
pub(super) fn peer_addr<T>(request: &Request<T>) -> String {
    match PeerInfo::of(request).and_then(|p| p.remote_addr) {
        Some(addr) => addr.to_string(),
        None => "unknown".to_owned(),
    }
}

#[tonic::async_trait]
impl Log for LogService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let (request, append) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::Append, &append.topic, append.partition);
        let work = self.inner.append(&request, append);
        calls::observed(call, self.identity(&request), work).await
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let (request, input) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::AppendStream, "", None);
        // The caller must at least be authenticated to open a stream; each request is
        // then authorized for its own topic.
        let opened = self
            .inner
            .check_running()
            .and_then(|()| self.inner.principal(&request).map(drop));
        if let Err(e) = opened {
            return Err(calls::refused(call, self.identity(&request), e));
        }
        // Answers waiting to be written: as many as requests may be in flight. Beyond that
        // the work waits (and reads no more requests) until the client takes them.
        let capacity = self.inner.config.server.append_stream_inflight_max as usize;
        let identity = self.stream_identity(&call, &request);
        let inner = self.inner.clone();
        let stream = calls::DrivenStream::start(
            &self.inner.in_flight,
            call,
            identity,
            capacity,
            |answers| inner.append_stream(request, input, answers),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let (request, read) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::Read, &read.topic, Some(read.partition));
        let started = Instant::now();
        let work = async {
            self.inner.check_read(&request, &read)?;
            let response = self.inner.read(&read).await?;
            observability::observe_read(started.elapsed());
            Ok(response)
        };
        calls::observed(call, self.identity(&request), work).await
    }

    type ReadStreamStream = BoxStream<ReadResponse>;

    async fn read_stream(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let (request, read) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::ReadStream, &read.topic, Some(read.partition));
        // Fails fast on an unknown topic or partition rather than in the stream.
        let opened = self.inner.check_read(&request, &read).and_then(|()| {
            self.inner.shards.shard_of(&read.topic, read.partition)?;
            Ok(())
        });
        if let Err(e) = opened {
            return Err(calls::refused(call, self.identity(&request), e));
        }
        let (tx, rx) = mpsc::channel(READ_STREAM_BUFFER);
        let identity = self.stream_identity(&call, &request);
        let task = self.inner.clone().read_stream(read, tx);
        calls::spawn_stream(&self.inner.in_flight, call, Rpc::ReadStream, identity, task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn truncate(
        &self,
        request: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        let (request, truncate) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::Truncate, &truncate.topic, Some(truncate.partition));
        let work = self.inner.truncate(&request, &truncate);
        calls::observed(call, self.identity(&request), work).await
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let (request, create) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::CreateTopic, &create.name, None);
        let work = self.inner.create(&request, &create);
        calls::observed(call, self.identity(&request), work).await
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let (request, delete) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::DeleteTopic, &delete.name, None);
        let work = self.inner.delete(&request, &delete);
        calls::observed(call, self.identity(&request), work).await
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let (request, _) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::ListTopics, "", None);
        let work = async { self.inner.list(&request) };
        calls::observed(call, self.identity(&request), work).await
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let (request, describe) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::DescribeTopic, &describe.name, None);
        let work = self.inner.describe(&request, &describe);
        calls::observed(call, self.identity(&request), work).await
    }

    async fn describe_cluster(
        &self,
        request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let (request, _) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::DescribeCluster, "", None);
        let work = self.inner.describe_cluster(&request);
        calls::observed(call, self.identity(&request), work).await
    }

    async fn reassign_partition(
        &self,
        request: Request<ReassignPartitionRequest>,
    ) -> Result<Response<ReassignPartitionResponse>, Status> {
        let (request, reassign) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(
            Rpc::ReassignPartition,
            &reassign.topic,
            Some(reassign.partition),
        );
        let work = self.inner.reassign(&request, &reassign);
        calls::observed(call, self.identity(&request), work).await
    }

    async fn decommission_node(
        &self,
        request: Request<DecommissionNodeRequest>,
    ) -> Result<Response<DecommissionNodeResponse>, Status> {
        let (request, decommission) = calls::strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::DecommissionNode, "", None);
        let work = self.inner.decommission(&request, &decommission);
        calls::observed(call, self.identity(&request), work).await
    }
}
