//! The `walrs.v1.Log` gRPC service over a [`ShardSet`].
//!
//! Each RPC authenticates (the caller's certificate CN, see `identity`), authorizes
//! (`acl`), validates every field against the config's limits, and only then calls the
//! shards; a refused request changes nothing. Errors become statuses in `errors` only.
//! This module never does file I/O and knows nothing of the on-disk format: record and
//! batch sizes are measured by `storage::LogLimits::measure_batch`.
//!
//! Waiting is never polling: a Read at the end of the log and a following ReadStream sleep
//! on `ShardSet::wait_for`, which commits wake. Every stream is bounded: an AppendStream
//! has at most `server.append_stream_inflight_max` appends in flight and stops reading its
//! input until one completes; a ReadStream sends through a small channel and reads on
//! only when the client has taken what was sent. Both end when the client goes away, and
//! both end when the server drains (`draining` turns true).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, Stream, StreamExt, TryFutureExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::acl::{Acl, Action, Principal};
use super::errors::{Error, Result};
use super::identity;
use super::listener::PeerInfo;
use crate::config::Config;
use crate::observability::{self, ActiveStream, Rpc, RpcCall};
use crate::proto::v1::log_server::Log;
use crate::proto::v1::{
    AppendRequest, AppendResponse, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest,
    DeleteTopicResponse, DescribeTopicRequest, DescribeTopicResponse, ListTopicsRequest,
    ListTopicsResponse, PartitionInfo, ReadRequest, ReadResponse, Record, TopicInfo,
    TruncateRequest, TruncateResponse,
};
use crate::shard::{self, ShardSet};
use crate::storage;

/// Responses a ReadStream may have queued for a slow client before it stops reading.
const READ_STREAM_BUFFER: usize = 2;
/// How long one wait of a following ReadStream lasts before it re-checks; any commit wakes
/// it earlier, so this only bounds how long a vanished partition goes unnoticed.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

/// Calls in progress (stream tasks included), so that shutdown can wait for exactly them:
/// an idle client connection must not hold the server open.
#[derive(Default)]
pub struct InFlight {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    fn enter(self: &Arc<Self>) -> CallGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// Resolves once no call is in progress.
    pub async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One call in progress; dropping it ends the call.
struct CallGuard(Arc<InFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The service; cheap to clone (tonic clones it per connection).
#[derive(Clone)]
pub struct LogService {
    inner: Arc<Inner>,
}

struct Inner {
    shards: ShardSet,
    config: Config,
    acl: Acl,
    log_limits: storage::LogLimits,
    default_partitions: u32,
    round_robin: AtomicU64,
    /// Turns true when the server starts draining.
    draining: watch::Receiver<bool>,
    in_flight: Arc<InFlight>,
    /// Record bytes of appends accepted and not yet acknowledged, one permit per byte:
    /// `server.inflight_append_bytes_max` bounds what queued appends hold, server-wide.
    append_budget: Arc<tokio::sync::Semaphore>,
}

/// How long an append waits for room in the in-flight byte budget before it is refused.
const APPEND_BUDGET_WAIT: Duration = Duration::from_millis(100);

impl LogService {
    pub fn new(
        shards: ShardSet,
        config: Config,
        draining: watch::Receiver<bool>,
        in_flight: Arc<InFlight>,
    ) -> LogService {
        let default_partitions = config.default_partitions_for(shards.shard_count() as u32);
        let log_limits = config.storage.log_limits();
        let budget_bytes = usize::try_from(config.server.inflight_append_bytes_max)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let append_budget = Arc::new(tokio::sync::Semaphore::new(budget_bytes));
        LogService {
            inner: Arc::new(Inner {
                acl: Acl::new(&config.acl),
                shards,
                config,
                log_limits,
                default_partitions,
                round_robin: AtomicU64::new(0),
                draining,
                in_flight,
                append_budget,
            }),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Inner {
    fn tls_enabled(&self) -> bool {
        self.config.tls.is_some()
    }

    fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Who is calling: the certificate CN with TLS, anonymous (trusted) without.
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal> {
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
    fn authorize<T>(&self, request: &Request<T>, action: Action, topic: &str) -> Result<Principal> {
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
    fn identity_of<T>(&self, request: &Request<T>) -> Option<String> {
        let certs = PeerInfo::of(request).and_then(PeerInfo::certs);
        identity::principal(self.tls_enabled(), certs)
            .ok()
            .map(|p| p.name().to_owned())
    }

    fn check_running(&self) -> Result<()> {
        if self.is_draining() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    fn check_topic_name(&self, name: &str) -> Result<()> {
        let max = self.config.server.topic_name_bytes_max;
        if shard::is_valid_topic_name(name, max as usize) {
            return Ok(());
        }
        let shown: String = name.chars().take(64).collect();
        Err(Error::invalid(format!(
            "topic name {shown:?} is invalid: use 1 to {max} bytes of ASCII letters, digits, \
             '.', '_' and '-' (not \".\" or \"..\")"
        )))
    }

    /// Creates `topic` with the default partition count, within `topics_max`. A concurrent
    /// creation of the same topic is success.
    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        let max = self.config.server.partitions_per_topic_max;
        if partitions > max {
            return Err(Error::invalid(format!(
                "{partitions} partitions requested; a topic may have 1 to {max} \
                 (server.partitions_per_topic_max), or 0 for the default of {}",
                self.default_partitions
            )));
        }
        let partitions = if partitions == 0 {
            self.default_partitions
        } else {
            partitions
        };
        // `topics_max` is checked by the shard set under its admin lock (passed in its
        // options), so concurrent creations cannot pass it.
        match self.shards.create_topic(topic, partitions).await {
            Ok(()) => Ok(partitions),
            Err(shard::Error::TooManyTopics { topics, max }) => Err(Error::OverLimit {
                what: "the number of topics",
                value: topics,
                key: "server.topics_max",
                max,
                hint: "delete a topic first",
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Validates, authorizes and performs one append.
    async fn append(&self, request: &Request<()>, append: AppendRequest) -> Result<AppendResponse> {
        self.enqueue_append(request, append).await?.await
    }

    /// Validates and authorizes one append and puts it in its shard's queue; the returned
    /// future resolves to the response once the append is acknowledged. When this returns,
    /// the append's place in its partition is fixed: appends enqueued one after another
    /// take offsets in that order.
    async fn enqueue_append(
        &self,
        request: &Request<()>,
        append: AppendRequest,
    ) -> Result<impl Future<Output = Result<AppendResponse>> + Send + 'static> {
        let started = Instant::now();
        self.check_running()?;
        let AppendRequest {
            topic,
            partition,
            records,
            correlation_id,
        } = append;
        self.check_topic_name(&topic)?;
        self.authorize(request, Action::Produce, &topic)?;
        let now_ms = storage::now_ms();
        let records: Vec<storage::Record> = records
            .into_iter()
            .map(|r| storage::Record {
                offset: 0,
                timestamp_ms: if r.timestamp_ms == 0 {
                    now_ms
                } else {
                    r.timestamp_ms
                },
                key: r.key.into(),
                value: r.value.into(),
                headers: r.headers.into_iter().map(|(k, v)| (k, v.into())).collect(),
            })
            .collect();
        if records.is_empty() {
            return Err(Error::invalid(
                "an AppendRequest needs at least one record in `records`",
            ));
        }
        // Checked before a topic is auto-created, so a refused batch changes nothing.
        let batch_bytes =
            self.log_limits
                .measure_batch(&records)
                .map_err(|e| shard::Error::Storage {
                    topic: topic.clone(),
                    partition: partition.unwrap_or(0),
                    source: Arc::new(e),
                })?;
        // The records' encoded bytes (the batch without its header).
        let bytes = (batch_bytes - storage::format::BATCH_HEADER_LEN) as u64;
        // Room in the server-wide budget first (before any auto-create: a refused request
        // changes nothing); the permit is held until the append is acknowledged.
        let budget = self.reserve_append_bytes(bytes).await?;
        let partitions = match self.shards.partitions_of(&topic) {
            Ok(n) => n,
            Err(shard::Error::UnknownTopic { .. }) if self.config.auto_create_topics => {
                // Checked against what the auto-create would make, before making it, so that
                // a request that must fail creates nothing.
                if let Some(p) = partition
                    && p >= self.default_partitions
                {
                    return Err(shard::Error::UnknownPartition {
                        topic,
                        partition: p,
                        partitions: self.default_partitions,
                    }
                    .into());
                }
                match self.create_topic(&topic, 0).await {
                    Ok(n) => {
                        tracing::info!(topic, partitions = n, "topic auto-created on first append");
                        n
                    }
                    Err(Error::Shard(shard::Error::TopicExists { .. })) => {
                        self.shards.partitions_of(&topic)?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e.into()),
        };
        let partition = match partition {
            Some(p) => p,
            None => match records.first().map(|r| &r.key) {
                Some(key) if !key.is_empty() => crc32fast::hash(key) % partitions,
                _ => {
                    (self.round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions))
                        as u32
                }
            },
        };
        let pending = self
            .shards
            .append_enqueue(&topic, partition, records)
            .await?;
        Ok(async move {
            let ack = pending.await;
            drop(budget);
            let ack = ack?;
            observability::observe_append(started.elapsed());
            observability::bytes_and_records_in(&topic, u64::from(ack.count), bytes);
            Ok(AppendResponse {
                partition: ack.partition,
                base_offset: ack.base_offset,
                count: ack.count,
                correlation_id,
            })
        })
    }

    /// Takes `bytes` from the in-flight append budget, waiting at most `APPEND_BUDGET_WAIT`.
    async fn reserve_append_bytes(&self, bytes: u64) -> Result<tokio::sync::OwnedSemaphorePermit> {
        let over = || Error::OverLimit {
            what: "record bytes of appends in flight with this one",
            value: bytes,
            key: "server.inflight_append_bytes_max",
            max: self.config.server.inflight_append_bytes_max,
            hint: "the server is saturated; retry with backoff",
        };
        // One batch is at most storage.batch_bytes_max, which validation keeps within both
        // the budget and u32.
        let permits = u32::try_from(bytes).map_err(|_| over())?;
        let acquire = self.append_budget.clone().acquire_many_owned(permits);
        match tokio::time::timeout(APPEND_BUDGET_WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(Error::ShuttingDown),
            Err(_elapsed) => Err(over()),
        }
    }

    /// The record and byte caps of a read: 0 or anything above the server's limit is the limit.
    fn read_limits(&self, read: &ReadRequest) -> (u64, usize) {
        let bytes_max = self.config.server.read_bytes_max;
        let records_max = self.config.server.read_records_max;
        let bytes = match u64::from(read.max_bytes) {
            0 => bytes_max,
            n => n.min(bytes_max),
        };
        let records = match read.max_records {
            0 => records_max,
            n => n.min(records_max),
        };
        (bytes, records as usize)
    }

    fn check_read(&self, request: &Request<()>, read: &ReadRequest) -> Result<()> {
        self.check_running()?;
        self.check_topic_name(&read.topic)?;
        self.authorize(request, Action::Consume, &read.topic)?;
        Ok(())
    }

    /// One read, without waiting.
    async fn read_once(&self, read: &ReadRequest, offset: u64) -> Result<ReadResponse> {
        let (bytes, records) = self.read_limits(read);
        let result = self
            .shards
            .read(&read.topic, read.partition, offset, bytes, records)
            .await?;
        if !result.records.is_empty() {
            let bytes: u64 = result.records.iter().map(|r| r.encoded_len() as u64).sum();
            observability::bytes_and_records_out(&read.topic, result.records.len() as u64, bytes);
        }
        Ok(ReadResponse {
            records: result.records.into_iter().map(to_proto).collect(),
            high_watermark: result.high_watermark,
            next_offset: result.next_offset,
        })
    }

    /// Waits until a record at `offset` is readable, `timeout` passes, or the server drains.
    async fn wait(&self, read: &ReadRequest, offset: u64, timeout: Duration) -> Result<()> {
        let mut draining = self.draining.clone();
        tokio::select! {
            hw = self.shards.wait_for(&read.topic, read.partition, offset, timeout) => {
                hw?;
            }
            _ = async { draining.wait_for(|d| *d).await.map(|_| ()) } => {}
        }
        Ok(())
    }

    async fn read(&self, read: &ReadRequest) -> Result<ReadResponse> {
        let response = self.read_once(read, read.offset).await?;
        let wait_ms = u64::from(read.max_wait_ms).min(self.config.server.read_max_wait_ms_max);
        if !response.records.is_empty() || wait_ms == 0 {
            return Ok(response);
        }
        self.wait(read, read.offset, Duration::from_millis(wait_ms))
            .await?;
        if self.is_draining() {
            return Ok(response);
        }
        self.read_once(read, read.offset).await
    }

    /// Feeds a ReadStream until it is caught up (without follow), the client goes away, the
    /// server drains, or an error (which is sent as the stream's last item).
    async fn read_stream(
        self: Arc<Self>,
        read: ReadRequest,
        tx: mpsc::Sender<Result<ReadResponse, Status>>,
    ) -> Code {
        let mut offset = read.offset;
        let mut sent_any = false;
        loop {
            let response = match self.read_once(&read, offset).await {
                Ok(r) => r,
                Err(e) => {
                    let status = Status::from(e);
                    let code = status.code();
                    let _client_gone = tx.send(Err(status)).await;
                    return code;
                }
            };
            let empty = response.records.is_empty();
            offset = response.next_offset;
            if !empty || !sent_any {
                sent_any = true;
                if tx.send(Ok(response)).await.is_err() {
                    return Code::Cancelled; // the client went away
                }
            }
            if !empty {
                continue;
            }
            if !read.follow || self.is_draining() {
                return Code::Ok;
            }
            tokio::select! {
                waited = self.wait(&read, offset, FOLLOW_WAIT) => {
                    if let Err(e) = waited {
                        let status = Status::from(e);
                        let code = status.code();
                        let _client_gone = tx.send(Err(status)).await;
                        return code;
                    }
                }
                _ = tx.closed() => return Code::Cancelled,
            }
            if self.is_draining() {
                return Code::Ok;
            }
        }
    }

    /// Runs an AppendStream: reads requests while fewer than the in-flight limit wait for
    /// their acknowledgements, and answers in request order. The first failure is sent,
    /// after the answers of the requests before it, as the stream's last item. Returns the
    /// stream's final status code.
    ///
    /// Each request is put in its shard's queue before the next one is read, so the
    /// requests of one stream to one partition get offsets in request order by
    /// construction, not by how the acknowledgements happen to be polled.
    async fn append_stream(
        self: Arc<Self>,
        request: Request<()>,
        mut input: Streaming<AppendRequest>,
        tx: mpsc::Sender<Result<AppendResponse, Status>>,
    ) -> Code {
        let inflight_max = self.config.server.append_stream_inflight_max as usize;
        let mut inflight = FuturesOrdered::new();
        let mut reading = true;
        let mut draining = self.draining.clone();
        let mut final_code = Code::Ok;
        loop {
            tokio::select! {
                next = input.next(), if reading && inflight.len() < inflight_max => {
                    match next {
                        Some(Ok(append)) => {
                            // Queued before the next request is read (a short bounded wait
                            // at most): this is what fixes the order of the offsets.
                            let queued = self.enqueue_append(&request, append).await;
                            match queued {
                                Ok(ack) => {
                                    inflight.push_back(ack.map_err(Status::from).boxed());
                                }
                                Err(e) => {
                                    // Answered after the requests before it; nothing after
                                    // it is queued, as the stream ends at its first failure.
                                    let failed = futures::future::ready(Err(e.into()));
                                    inflight.push_back(failed.boxed());
                                    reading = false;
                                }
                            }
                        }
                        Some(Err(status)) => {
                            // The client's side of the stream broke; nothing to answer.
                            tracing::debug!(%status, "append stream input failed");
                            reading = false;
                            final_code = Code::Cancelled;
                        }
                        None => reading = false,
                    }
                }
                done = inflight.next(), if !inflight.is_empty() => {
                    let Some(result) = done else { continue };
                    let failed = result.as_ref().err().map(Status::code);
                    if tx.send(result).await.is_err() {
                        // Client gone. Appends already queued still complete in the shards.
                        return Code::Cancelled;
                    }
                    if let Some(code) = failed {
                        // The stream ends at its first failure.
                        return code;
                    }
                }
                _ = async { draining.wait_for(|d| *d).await.map(|_| ()) }, if reading => {
                    // Finish what is in flight, accept nothing new.
                    reading = false;
                }
                _ = tx.closed() => return Code::Cancelled,
            }
            if !reading && inflight.is_empty() {
                return final_code;
            }
        }
    }
}

/// The client's address, for logs ("unknown" when the request did not come through the
/// listener).
fn peer_addr<T>(request: &Request<T>) -> String {
    match PeerInfo::of(request).and_then(|p| p.remote_addr) {
        Some(addr) => addr.to_string(),
        None => "unknown".to_owned(),
    }
}

/// A request's metadata and extensions without its message.
fn strip<T>(request: Request<T>) -> (Request<()>, T) {
    let (metadata, extensions, message) = request.into_parts();
    (Request::from_parts(metadata, extensions, ()), message)
}

fn to_proto(record: storage::Record) -> Record {
    Record {
        offset: record.offset,
        key: record.key.into(),
        value: record.value.into(),
        timestamp_ms: record.timestamp_ms,
        headers: record
            .headers
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect(),
    }
}

/// The status code of a call's outcome.
fn code_of<T>(result: &Result<T, Status>) -> Code {
    result.as_ref().map_or_else(Status::code, |_| Code::Ok)
}

impl LogService {
    /// Runs a unary call's work in its span, then counts and (at debug level) logs it.
    async fn observed<T>(
        &self,
        call: RpcCall,
        request: &Request<()>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<Response<T>, Status> {
        let result = work.instrument(call.span()).await.map_err(Status::from);
        call.finish(code_of(&result), || self.inner.identity_of(request));
        result.map(Response::new)
    }

    /// Starts a stream's task, which counts it as active and, when it ends, counts and logs
    /// the call with the stream's final code.
    fn spawn_stream(
        &self,
        call: RpcCall,
        rpc: Rpc,
        identity: Option<String>,
        task: impl Future<Output = Code> + Send + 'static,
    ) {
        let guard = self.inner.in_flight.enter();
        let active = ActiveStream::open(rpc);
        let span = call.span();
        tokio::spawn(async move {
            let code = task.instrument(span).await;
            call.finish(code, || identity);
            drop(active);
            drop(guard);
        });
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

    /// Finishes a call refused before its stream started.
    fn refused(&self, call: RpcCall, request: &Request<()>, error: Error) -> Status {
        let status = Status::from(error);
        call.finish(status.code(), || self.inner.identity_of(request));
        status
    }
}

#[tonic::async_trait]
impl Log for LogService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let (request, append) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::Append, &append.topic, append.partition);
        self.observed(call, &request, self.inner.append(&request, append))
            .await
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let (request, input) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::AppendStream, "", None);
        // The caller must at least be authenticated to open a stream; each request is
        // then authorized for its own topic.
        let opened = self
            .inner
            .check_running()
            .and_then(|()| self.inner.principal(&request).map(drop));
        if let Err(e) = opened {
            return Err(self.refused(call, &request, e));
        }
        let capacity = self.inner.config.server.append_stream_inflight_max.max(1) as usize;
        let (tx, rx) = mpsc::channel(capacity);
        let identity = self.stream_identity(&call, &request);
        let task = self.inner.clone().append_stream(request, input, tx);
        self.spawn_stream(call, Rpc::AppendStream, identity, task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let (request, read) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::Read, &read.topic, Some(read.partition));
        let started = Instant::now();
        let work = async {
            self.inner.check_read(&request, &read)?;
            let response = self.inner.read(&read).await?;
            observability::observe_read(started.elapsed());
            Ok(response)
        };
        self.observed(call, &request, work).await
    }

    type ReadStreamStream = BoxStream<ReadResponse>;

    async fn read_stream(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let (request, read) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::ReadStream, &read.topic, Some(read.partition));
        let opened = (|| {
            self.inner.check_read(&request, &read)?;
            // Fail fast on an unknown topic or partition rather than in the stream.
            let partitions = self.inner.shards.partitions_of(&read.topic)?;
            if read.partition >= partitions {
                return Err(Error::from(shard::Error::UnknownPartition {
                    topic: read.topic.clone(),
                    partition: read.partition,
                    partitions,
                }));
            }
            Ok(())
        })();
        if let Err(e) = opened {
            return Err(self.refused(call, &request, e));
        }
        let (tx, rx) = mpsc::channel(READ_STREAM_BUFFER);
        let identity = self.stream_identity(&call, &request);
        let task = self.inner.clone().read_stream(read, tx);
        self.spawn_stream(call, Rpc::ReadStream, identity, task);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn truncate(
        &self,
        request: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        let (request, truncate) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::Truncate, &truncate.topic, Some(truncate.partition));
        let inner = &self.inner;
        let work = async {
            inner.check_running()?;
            inner.check_topic_name(&truncate.topic)?;
            inner.authorize(&request, Action::Admin, &truncate.topic)?;
            inner
                .shards
                .truncate(&truncate.topic, truncate.partition, truncate.before_offset)
                .await?;
            let description = inner.shards.describe_topic(&truncate.topic).await?;
            observability::topic_disk_usage(&description);
            let start_offset = description
                .partitions
                .iter()
                .find(|p| p.id == truncate.partition)
                .map_or(0, |p| p.start_offset);
            Ok(TruncateResponse { start_offset })
        };
        self.observed(call, &request, work).await
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let (request, create) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::CreateTopic, &create.name, None);
        let inner = &self.inner;
        let work = async {
            inner.check_running()?;
            inner.check_topic_name(&create.name)?;
            let principal = inner.authorize(&request, Action::Admin, &create.name)?;
            let partitions = inner.create_topic(&create.name, create.partitions).await?;
            tracing::info!(topic = create.name, partitions, identity = %principal, "topic created");
            Ok(CreateTopicResponse {
                name: create.name.clone(),
                partitions,
            })
        };
        self.observed(call, &request, work).await
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let (request, delete) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::DeleteTopic, &delete.name, None);
        let inner = &self.inner;
        let work = async {
            inner.check_running()?;
            inner.check_topic_name(&delete.name)?;
            let principal = inner.authorize(&request, Action::Admin, &delete.name)?;
            inner.shards.delete_topic(&delete.name).await?;
            observability::topic_deleted(&delete.name);
            tracing::info!(topic = delete.name, identity = %principal, "topic deleted");
            Ok(DeleteTopicResponse {})
        };
        self.observed(call, &request, work).await
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let (request, _) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::ListTopics, "", None);
        let inner = &self.inner;
        let work = async {
            inner.check_running()?;
            let principal = inner.principal(&request)?;
            let mut topics: Vec<TopicInfo> = inner
                .shards
                .list_topics()
                .into_iter()
                .filter(|t| inner.acl.authorize_any(&principal, &t.name))
                .map(|t| TopicInfo {
                    name: t.name,
                    partitions: t.partitions,
                })
                .collect();
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(ListTopicsResponse { topics })
        };
        self.observed(call, &request, work).await
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let (request, describe) = strip(request);
        let _call = self.inner.in_flight.enter();
        let call = RpcCall::start(Rpc::DescribeTopic, &describe.name, None);
        let inner = &self.inner;
        let work = async {
            inner.check_running()?;
            inner.check_topic_name(&describe.name)?;
            let principal = inner.principal(&request)?;
            if !inner.acl.authorize_any(&principal, &describe.name) {
                observability::authorization_denied(principal.name());
                tracing::warn!(
                    peer = %peer_addr(&request),
                    identity = %principal,
                    topic = describe.name,
                    "describe denied by the ACL"
                );
                return Err(Error::Denied {
                    principal,
                    action: Action::Consume,
                    topic: describe.name.clone(),
                });
            }
            let description = inner.shards.describe_topic(&describe.name).await?;
            observability::topic_disk_usage(&description);
            Ok(DescribeTopicResponse {
                name: description.name,
                partitions: description
                    .partitions
                    .into_iter()
                    .map(|p| PartitionInfo {
                        id: p.id,
                        start_offset: p.start_offset,
                        end_offset: p.end_offset,
                        high_watermark: p.high_watermark,
                        shard: p.shard,
                    })
                    .collect(),
            })
        };
        self.observed(call, &request, work).await
    }
}
