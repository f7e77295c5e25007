//! The append pipeline: Append and AppendStream.
//!
//! An append is checked (running, topic name, ACL, at least one record, headers per record),
//! converted to storage records once (`proto::storage_records`), measured once by the shard
//! layer (`validate::append`, whose `CheckedBatch` carries the size to the shard), admitted
//! into the server-wide byte budget, routed with one lookup (auto-creating the topic when
//! configured), and queued. A refused append changes nothing: every check runs before a
//! topic is auto-created or anything is queued. Must never measure records itself or
//! build shard errors.
//!
//! Idempotent producers: an append with `producer_id != 0` names its partition (sequences
//! are per partition), and its producer id is scoped to the caller's identity before it
//! reaches the shard ([`scoped_producer_id`]): the shard and the log only ever see the
//! scoped id, so two identities that pick the same id are two producers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tonic::{Code, Request, Status, Streaming};

use super::acl::{Action, Principal};
use super::calls::Answers;
use super::errors::{Error, Result};
use super::service::Inner;
use super::validate;
use crate::observability;
use crate::observability::hops::{Hop, Trace};
use crate::proto::{v1::AppendRequest, v1::AppendResponse};
use crate::shard::{self, AppendRoute};
use crate::storage;

/// How long an append waits for room in the in-flight byte budget before it is refused.
const APPEND_BUDGET_WAIT: Duration = Duration::from_millis(100);

/// The producer id stored for `producer_id` of the client named `identity` (the certificate
/// CN; empty without TLS): the first 8 bytes, little-endian, of SHA-256 over a domain tag,
/// the identity and the id (docs/FORMAT.md), never 0 (0 means "no producer"). A client cannot
/// choose an id that lands on another identity's producer without breaking SHA-256.
pub fn scoped_producer_id(identity: &str, producer_id: u64) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"walrs.producer.v1\0");
    ctx.update(identity.as_bytes());
    ctx.update(b"\0");
    ctx.update(&producer_id.to_le_bytes());
    let digest = ctx.finish();
    let first: [u8; 8] = digest.as_ref()[..8]
        .try_into()
        .expect("SHA-256 has 32 bytes");
    u64::from_le_bytes(first).max(1)
}

/// The partition an append goes to: the one asked for, else by the first record's key
/// (crc32 of it), else round robin.
fn choose_partition(
    asked: Option<u32>,
    first_key: &[u8],
    partitions: u32,
    round_robin: &AtomicU64,
) -> u32 {
    assert!(partitions > 0, "a routable topic has partitions");
    match asked {
        Some(p) => p,
        None if !first_key.is_empty() => crc32fast::hash(first_key) % partitions,
        None => (round_robin.fetch_add(1, Ordering::Relaxed) % u64::from(partitions)) as u32,
    }
}

impl Inner {
    /// Validates, authorizes and performs one append.
    pub(super) async fn append(
        &self,
        request: &Request<()>,
        append: AppendRequest,
    ) -> Result<AppendResponse> {
        let (response, trace) = self.enqueue_append(request, append).await?.await;
        trace.finish();
        response
    }

    /// Validates and authorizes one append and puts it in its shard's queue; the returned
    /// future resolves to the response once the append is acknowledged. When this returns,
    /// the append's place in its partition is fixed: appends enqueued one after another
    /// take offsets in that order. The future also yields the append's hop trace
    /// (`observability::hops`; off unless `WALRS_HOP_TRACE=1`), for the caller to finish
    /// once the response is handed over.
    async fn enqueue_append(
        &self,
        request: &Request<()>,
        append: AppendRequest,
    ) -> Result<impl Future<Output = (Result<AppendResponse>, Trace)> + Send + 'static> {
        let trace = Trace::start();
        let started = Instant::now();
        self.check_running()?;
        let AppendRequest {
            topic,
            partition,
            records,
            correlation_id,
            producer_id,
            sequence,
        } = append;
        self.check_topic_name(&topic)?;
        let principal = self.authorize(request, Action::Produce, &topic)?;
        self.check_header_counts(&records)?;
        let body = validate::AppendBody {
            partition,
            records,
            producer_id,
        };
        // Checked before a topic is auto-created, so a refused batch changes nothing.
        let mut batch =
            validate::append(&topic, body, self.shards.log_limits(), storage::now_ms())?;
        if producer_id != 0 {
            let identity = match &principal {
                Principal::Anonymous => "",
                Principal::Client(name) => name.as_str(),
            };
            batch.set_producer(storage::ProducerStamp {
                producer_id: scoped_producer_id(identity, producer_id),
                sequence,
            });
        }
        let bytes = batch.record_bytes();
        // Room in the server-wide budget first (before any auto-create: a refused request
        // changes nothing); the permit is held until the append is acknowledged.
        let budget = self.reserve_append_bytes(bytes).await?;
        let route = self.route_for_append(&topic, partition).await?;
        let partition = choose_partition(
            partition,
            batch.first_key(),
            route.partitions(),
            &self.round_robin,
        );
        let pending = self
            .shards
            .enqueue_batch(&route, partition, batch, trace.clone())
            .await?;
        trace.stamp(Hop::Queued);
        Ok(async move {
            let ack = pending.await;
            trace.stamp(Hop::TokioWoke);
            drop(budget);
            let response = ack.map_err(Error::from).map(|ack| {
                observability::observe_append(started.elapsed());
                observability::bytes_and_records_in(&topic, u64::from(ack.count), bytes);
                AppendResponse {
                    partition: ack.partition,
                    base_offset: ack.base_offset,
                    count: ack.count,
                    correlation_id,
                }
            });
            (response, trace)
        })
    }

    /// Refuses a record with more headers than `server.headers_per_record_max`: a malformed
    /// request (`INVALID_ARGUMENT`), checked before anything is converted or queued.
    fn check_header_counts(&self, records: &[crate::proto::v1::Record]) -> Result<()> {
        let max = self.config.server.headers_per_record_max as usize;
        match records.iter().position(|r| r.headers.len() > max) {
            None => Ok(()),
            Some(index) => Err(Error::invalid(format!(
                "record {index} has {} headers, over server.headers_per_record_max = {max}; \
                 send fewer headers per record (or put the data in the value)",
                records[index].headers.len()
            ))),
        }
    }

    /// The topic's route, auto-creating the topic (with the default partition count) when
    /// the config allows it. A partition the new topic would not have is refused before
    /// anything is created.
    async fn route_for_append(&self, topic: &str, partition: Option<u32>) -> Result<AppendRoute> {
        match self.shards.append_route(topic) {
            Ok(route) => Ok(route),
            Err(shard::Error::UnknownTopic { .. }) if self.config.auto_create_topics => {
                if let Some(p) = partition {
                    shard::ShardSet::check_new_partition(topic, p, self.default_partitions)?;
                }
                match self.create_topic(topic, 0, 0).await {
                    Ok(n) => {
                        tracing::info!(topic, partitions = n, "topic auto-created on first append");
                    }
                    Err(Error::Shard(shard::Error::TopicExists { .. })) => {}
                    Err(e) => return Err(e),
                }
                Ok(self.shards.append_route(topic)?)
            }
            Err(e) => Err(e.into()),
        }
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
        // Room is usually free: take it without arming a timer.
        match self.append_budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Error::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        let acquire = self.append_budget.clone().acquire_many_owned(permits);
        match tokio::time::timeout(APPEND_BUDGET_WAIT, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_closed)) => Err(Error::ShuttingDown),
            Err(_elapsed) => Err(over()),
        }
    }

    /// Runs an AppendStream: reads requests while fewer than the in-flight limit wait for
    /// their acknowledgements, and answers in request order. The first failure is sent,
    /// after the answers of the requests before it, as the stream's last item. Returns the
    /// stream's final status code. It runs inside the response stream
    /// ([`calls::DrivenStream`](super::calls::DrivenStream)), which drops it when the client
    /// goes away.
    ///
    /// Each request is put in its shard's queue before the next one is read, so the
    /// requests of one stream to one partition get offsets in request order by
    /// construction, not by how the acknowledgements happen to be polled.
    pub(super) async fn append_stream(
        self: Arc<Self>,
        request: Request<()>,
        mut input: Streaming<AppendRequest>,
        answers: Answers<AppendResponse>,
    ) -> Code {
        let inflight_max = self.config.server.append_stream_inflight_max as usize;
        let mut inflight = FuturesOrdered::new();
        let mut reading = true;
        let mut final_code = Code::Ok;
        // Made once and polled in place: re-made in every turn of the loop, each would
        // register (and drop) a waiter per request, a measurable share of a small append.
        let mut draining = self.draining.clone();
        let drain = async move { draining.wait_for(|d| *d).await.map(|_| ()) };
        tokio::pin!(drain);
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
                                    let ack = ack.map(|(response, trace)| {
                                        (response.map_err(Status::from), trace)
                                    });
                                    inflight.push_back(ack.boxed());
                                }
                                Err(e) => {
                                    // Answered after the requests before it; nothing after
                                    // it is queued, as the stream ends at its first failure.
                                    let failed =
                                        futures::future::ready((Err(e.into()), Trace::default()));
                                    inflight.push_back(failed.boxed());
                                    reading = false;
                                }
                            }
                        }
                        Some(Err(status)) => {
                            reading = false;
                            let status = super::run::request_limit(&self.config).request_status(status);
                            if matches!(status.code(), Code::InvalidArgument | Code::ResourceExhausted) {
                                // A request that did not decode or was too large: answered,
                                // after the requests before it, as the stream's last item.
                                let failed = (Err(status), Trace::default());
                                inflight.push_back(futures::future::ready(failed).boxed());
                            } else {
                                // The client's side of the stream broke; nothing to answer.
                                tracing::debug!(%status, "append stream input failed");
                                final_code = Code::Cancelled;
                            }
                        }
                        None => reading = false,
                    }
                }
                done = inflight.next(), if !inflight.is_empty() => {
                    let Some((result, trace)) = done else { continue };
                    let failed = result.as_ref().err().map(Status::code);
                    answers.send(result).await;
                    trace.finish();
                    if let Some(code) = failed {
                        // The stream ends at its first failure.
                        return code;
                    }
                }
                // Polled only while reading: it is not polled again once it has fired.
                _ = &mut drain, if reading => {
                    // Finish what is in flight, accept nothing new.
                    reading = false;
                }
            }
            if !reading && inflight.is_empty() {
                return final_code;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_are_scoped_to_the_identity() {
        let a = scoped_producer_id("alice", 42);
        assert_eq!(a, scoped_producer_id("alice", 42), "stable");
        assert_ne!(a, scoped_producer_id("bob", 42));
        assert_ne!(a, scoped_producer_id("alice", 43));
        assert_ne!(scoped_producer_id("", 42), a);
        // Pinned: the stored id is part of the on-disk format (docs/FORMAT.md).
        let mut input = b"walrs.producer.v1\0alice\0".to_vec();
        input.extend_from_slice(&42u64.to_le_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        let want = u64::from_le_bytes(digest.as_ref()[..8].try_into().unwrap()).max(1);
        assert_eq!(a, want);
        assert_ne!(a, 0);
    }

    #[test]
    fn an_asked_partition_is_kept() {
        let rr = AtomicU64::new(0);
        assert_eq!(choose_partition(Some(3), b"key", 4, &rr), 3);
        assert_eq!(rr.load(Ordering::Relaxed), 0, "round robin untouched");
    }

    #[test]
    fn a_key_always_picks_the_same_partition() {
        let rr = AtomicU64::new(0);
        let first = choose_partition(None, b"order-17", 8, &rr);
        assert_eq!(first, crc32fast::hash(b"order-17") % 8);
        for _ in 0..4 {
            assert_eq!(choose_partition(None, b"order-17", 8, &rr), first);
        }
    }

    #[test]
    fn no_key_goes_round_robin() {
        let rr = AtomicU64::new(0);
        let picked: Vec<u32> = (0..6)
            .map(|_| choose_partition(None, b"", 3, &rr))
            .collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
    }
}
