//! Load generation: producers that pipeline appends on one `AppendStream` each, and
//! consumers that follow partitions with `ReadStream` and time every record's trip.
//!
//! Timing rules (the point of this file):
//! - Every record's value starts with its request's send time, as nanoseconds since the
//!   run's epoch ([`Clock`]); a consumer subtracts it from the delivery time, so end-to-end
//!   latency needs no clock but the process's own monotonic one.
//! - With a target rate, request `k` of a producer is *intended* at `start + k × interval`
//!   and both its append latency and its records' end-to-end latency count from that
//!   moment, even when the producer could only send it later because `depth` acks were
//!   outstanding (coordinated omission corrected). Without a rate the send time is the
//!   actual one (closed loop).
//! - A request intended before the warm-up ends, or after the measured window, is sent but
//!   not measured; its acks still count in `records_total` (what the server stores).
//!
//! Retries: against the in-process server a failed append ends the run with its status.
//! Against `--addr` (a cluster) a producer's stream that fails with a leader change or a
//! lost node is reopened where the routing client says, and the requests not yet
//! acknowledged are sent again, rebuilt from their schedule (no copy is kept, so the path
//! without errors costs what it did). Their latency counts from the first intended send,
//! pause included; each retry is counted and reported. A request resent after a transport
//! failure may be written twice (issue 12): DescribeTopic's count then exceeds the acks.
//!
//! Never: reorder acks (the server answers a stream in request order; this is asserted).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::Either;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::Error;
use super::latency;
use super::options::STAMP_BYTES;
use crate::client::{Attempts, Client, ReadOptions, Route, RoutingClient};
use crate::proto::v1::{AppendRequest, Record};

/// The run's time line, shared by every producer and consumer.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Time zero of the record stamps; also when producers start.
    pub epoch: Instant,
    /// End of the warm-up: requests intended from here on are measured.
    pub measure_from: Instant,
    /// End of the measured window (duration mode); `None` with a record count.
    pub measure_until: Option<Instant>,
}

impl Clock {
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant_of(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp)
    }

    fn is_measured(&self, intended: Instant) -> bool {
        intended >= self.measure_from && self.measure_until.is_none_or(|until| intended < until)
    }
}

/// What every producer does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    pub record_bytes: usize,
    pub batch_records: usize,
    pub depth: usize,
    /// Time between one producer's requests (open loop); `None`: closed loop.
    pub request_interval: Option<Duration>,
    /// Measured records per producer (record-count mode); `None`: until `measure_until`.
    pub records_per_producer: Option<u64>,
    /// Idempotent appends: each producer picks a random producer id and numbers its
    /// batches 0, 1, 2, … (its correlation ids), so a resent one is not written twice.
    pub idempotent: bool,
}

/// Counters the live progress line reads while the load runs.
#[derive(Debug)]
pub struct Live {
    pub acked_records: AtomicU64,
    /// Whether anyone reads the windows (no progress line: producers skip them).
    pub windows_on: bool,
    /// One interval histogram per producer (so producers do not contend on one lock);
    /// the progress ticker takes and resets them.
    pub windows: Vec<Mutex<Histogram<u64>>>,
}

impl Live {
    pub fn new(producers: usize, windows_on: bool) -> Live {
        Live {
            acked_records: AtomicU64::new(0),
            windows_on,
            windows: (0..producers)
                .map(|_| Mutex::new(latency::window_histogram()))
                .collect(),
        }
    }

    /// The append latencies since the last call, merged; resets the windows.
    pub fn take_window(&self) -> Histogram<u64> {
        let mut merged = latency::window_histogram();
        for window in &self.windows {
            let mut window = window.lock().expect("a producer panicked");
            merged.add(&*window).expect("same histogram bounds");
            window.reset();
        }
        merged
    }
}

/// How a producer or consumer reaches the server.
pub enum Link {
    /// One connection, no retry (the in-process server).
    Direct(Client),
    /// The cluster at `--addr`: follow leaders, retry through failures.
    Routed(RoutingClient),
}

impl Link {
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<crate::proto::v1::CreateTopicResponse, tonic::Status> {
        match self {
            Link::Direct(client) => client.create_topic(name, partitions).await,
            Link::Routed(routing) => routing.create_topic(name, partitions).await,
        }
    }

    pub async fn describe_topic(
        &self,
        name: &str,
    ) -> Result<crate::proto::v1::DescribeTopicResponse, tonic::Status> {
        match self {
            Link::Direct(client) => client.describe_topic(name).await,
            Link::Routed(routing) => routing.describe_topic(name).await,
        }
    }
}

/// One producer's results.
#[derive(Debug)]
pub struct ProducerOutcome {
    /// Every acknowledged record, warm-up included.
    pub records_total: u64,
    /// Acknowledged records of measured requests.
    pub records: u64,
    pub requests: u64,
    pub latency: Histogram<u64>,
    pub last_ack: Option<Instant>,
    /// Streams reopened and requests resent after failures (routed producers only).
    pub retries: u64,
}

struct Pending {
    correlation_id: u64,
    intended: Instant,
    measured: bool,
}

/// Runs producer `index` until its share is done, then waits for its last acks.
pub async fn produce(
    link: Link,
    plan: Arc<Plan>,
    index: u32,
    clock: Clock,
    live: Arc<Live>,
) -> Result<ProducerOutcome, Error> {
    let partition = index % plan.partitions;
    // One producer id per producer and run; 0 = plain appends.
    let producer_id = if plan.idempotent {
        crate::client::random_producer_id()
    } else {
        0
    };
    let route = Route::Leader {
        topic: &plan.topic,
        partition: Some(partition),
    };
    let mut attempts = match &link {
        Link::Routed(routing) => Some(routing.attempts()),
        Link::Direct(_) => None,
    };
    let (mut addr, mut tx, mut acks) =
        open_append_stream(&link, route, plan.depth, attempts.as_mut()).await?;
    // Spread the producers' schedules over one interval so they do not fire in step.
    let schedule_start = plan.request_interval.map(|interval| {
        clock.epoch + interval.mul_f64(f64::from(index) / f64::from(plan.producers))
    });
    let filler: Vec<u8> = (0..plan.record_bytes).map(|i| (i % 251) as u8).collect();
    let mut pending: VecDeque<Pending> = VecDeque::with_capacity(plan.depth);
    let mut outcome = ProducerOutcome {
        records_total: 0,
        records: 0,
        requests: 0,
        latency: latency::histogram(),
        last_ack: None,
        retries: 0,
    };
    let mut sent: u64 = 0;
    let mut measured_sent: u64 = 0;
    let mut sending = true;
    loop {
        let due = match (schedule_start, plan.request_interval) {
            (Some(start), Some(interval)) => Some(start + interval.mul_f64(sent as f64)),
            _ => None,
        };
        if sending {
            let next = due.unwrap_or_else(Instant::now);
            let window_over = clock.measure_until.is_some_and(|until| next >= until);
            let count_done = plan
                .records_per_producer
                .is_some_and(|share| measured_sent >= share);
            sending = !(window_over || count_done);
        }
        if !sending && pending.is_empty() {
            break;
        }
        let may_send = sending && pending.len() < plan.depth;
        tokio::select! {
            biased;
            ack = acks.next(), if !pending.is_empty() => {
                let failure = match ack {
                    Some(Ok(ack)) => Ok(ack),
                    Some(Err(status)) => Err(Some(status)),
                    None => Err(None),
                };
                let ack = match (failure, &link, &mut attempts) {
                    (Ok(ack), _, attempts) => {
                        if let Some(attempts) = attempts {
                            attempts.reset();
                        }
                        ack
                    }
                    (Err(failure), Link::Routed(routing), Some(attempts)) => {
                        let status = failure.unwrap_or_else(|| {
                            tonic::Status::unavailable(format!("{addr} ended the AppendStream"))
                        });
                        routing
                            .recover(route, &addr, status, attempts)
                            .await
                            .map_err(Error::rpc("AppendStream"))?;
                        (addr, tx, acks) =
                            open_append_stream(&link, route, plan.depth, Some(attempts)).await?;
                        for request in &pending {
                            let stamp = clock.stamp(request.intended);
                            let batch = batch(&plan, &filler, (partition, producer_id), stamp, request.correlation_id);
                            // The channel holds `depth` requests and at most `depth` are pending.
                            tx.try_send(batch).expect("room for every pending request");
                        }
                        continue;
                    }
                    (Err(Some(status)), _, _) => return Err(Error::rpc("AppendStream")(status)),
                    (Err(None), _, _) => return Err(Error::StreamEnded { what: "AppendStream" }),
                };
                let now = Instant::now();
                let request = pending.pop_front().expect("an ack answers a pending request");
                assert_eq!(
                    ack.correlation_id, request.correlation_id,
                    "AppendStream acks must come in request order"
                );
                assert_eq!(ack.count as usize, plan.batch_records, "ack count vs batch size");
                let records = u64::from(ack.count);
                outcome.records_total += records;
                live.acked_records.fetch_add(records, Relaxed);
                let took = now.saturating_duration_since(request.intended);
                if live.windows_on {
                    latency::record(
                        &mut live.windows[index as usize].lock().expect("ticker panicked"),
                        took,
                    );
                }
                if request.measured {
                    latency::record(&mut outcome.latency, took);
                    outcome.records += records;
                    outcome.requests += 1;
                    outcome.last_ack = Some(now);
                }
            }
            () = wait_until(due), if may_send => {
                let intended = due.unwrap_or_else(Instant::now);
                let measured = clock.is_measured(intended);
                let request = batch(&plan, &filler, (partition, producer_id), clock.stamp(intended), sent);
                // Routed: a closed request side means the stream failed; its error comes
                // on `acks` and this request is resent with the other pending ones.
                if tx.send(request).await.is_err() && matches!(link, Link::Direct(_)) {
                    return Err(Error::StreamEnded { what: "AppendStream" });
                }
                pending.push_back(Pending { correlation_id: sent, intended, measured });
                sent += 1;
                if measured {
                    measured_sent += plan.batch_records as u64;
                }
            }
        }
    }
    if let Link::Routed(routing) = &link {
        outcome.retries = routing.retries();
    }
    Ok(outcome)
}

/// The request a producer sends `correlation_id`-th, stamped `stamp` (a pure function of
/// its arguments, so a resent request is rebuilt rather than kept). With a producer id
/// (not 0) it is idempotent: its sequence is its correlation id, as one producer writes to
/// one partition and numbers its requests from 0.
fn batch(
    plan: &Plan,
    filler: &[u8],
    (partition, producer_id): (u32, u64),
    stamp: u64,
    correlation_id: u64,
) -> AppendRequest {
    let stamp = stamp.to_le_bytes();
    let records = (0..plan.batch_records)
        .map(|_| {
            let mut value = filler.to_vec();
            value[..STAMP_BYTES].copy_from_slice(&stamp);
            Record {
                value: value.into(),
                ..Record::default()
            }
        })
        .collect();
    AppendRequest {
        topic: plan.topic.clone(),
        partition: Some(partition),
        records,
        correlation_id,
        producer_id,
        sequence: correlation_id,
    }
}

type AppendStream = (
    String,
    mpsc::Sender<AppendRequest>,
    tonic::codec::Streaming<crate::proto::v1::AppendResponse>,
);

/// Opens an AppendStream: on the one connection (`Direct`), or where `route` goes,
/// retrying within `attempts` (`Routed`). Returns the address it went to.
async fn open_append_stream(
    link: &Link,
    route: Route<'_>,
    depth: usize,
    attempts: Option<&mut Attempts>,
) -> Result<AppendStream, Error> {
    let failed = Error::rpc("AppendStream");
    match (link, attempts) {
        (Link::Direct(client), _) => {
            let (tx, rx) = mpsc::channel::<AppendRequest>(depth);
            let acks = client
                .append_stream(ReceiverStream::new(rx))
                .await
                .map_err(failed)?;
            Ok((String::new(), tx, acks))
        }
        (Link::Routed(routing), Some(attempts)) => {
            // Bounded: `connect_for` and `recover` give up after the attempts or the budget.
            loop {
                let (addr, client) = routing
                    .connect_for(route, attempts)
                    .await
                    .map_err(&failed)?;
                let (tx, rx) = mpsc::channel::<AppendRequest>(depth);
                match client.append_stream(ReceiverStream::new(rx)).await {
                    Ok(acks) => return Ok((addr, tx, acks)),
                    Err(status) => routing
                        .recover(route, &addr, status, attempts)
                        .await
                        .map_err(&failed)?,
                }
            }
        }
        (Link::Routed(_), None) => unreachable!("a routed producer keeps its attempts"),
    }
}

async fn wait_until(due: Option<Instant>) {
    if let Some(due) = due {
        super::pacer::global().sleep_until(due).await;
    }
}

/// One consumer's results.
#[derive(Debug)]
pub struct ConsumerOutcome {
    pub records_total: u64,
    /// Records of measured requests delivered.
    pub records: u64,
    pub e2e: Histogram<u64>,
    pub last_delivery: Option<Instant>,
}

/// The end offsets consumers must reach before they stop: set once the producers are done.
pub type Targets = watch::Receiver<Option<HashMap<u32, u64>>>;

/// Follows `partitions` (id, first offset) of `topic` until every one reaches its target.
/// Routed, each partition's stream resumes on another replica after the last offset it
/// delivered.
pub async fn consume(
    link: Link,
    topic: String,
    partitions: Vec<(u32, u64)>,
    clock: Clock,
    mut targets: Targets,
) -> Result<ConsumerOutcome, Error> {
    let mut next: HashMap<u32, u64> = partitions.iter().copied().collect();
    let mut streams = Vec::with_capacity(partitions.len());
    for &(partition, from) in &partitions {
        let stream = match &link {
            Link::Direct(client) => Either::Left(
                client
                    .read_stream(&topic, partition, from, ReadOptions::default(), true)
                    .await
                    .map_err(Error::rpc("ReadStream"))?,
            ),
            Link::Routed(routing) => Either::Right(Box::pin(routing.read_stream(
                &topic,
                partition,
                from,
                ReadOptions::default(),
                true,
            ))),
        };
        streams.push(stream.map(move |response| (partition, response)));
    }
    let mut merged = futures::stream::select_all(streams);
    let mut outcome = ConsumerOutcome {
        records_total: 0,
        records: 0,
        e2e: latency::histogram(),
        last_delivery: None,
    };
    let caught_up = |targets: &Option<HashMap<u32, u64>>, next: &HashMap<u32, u64>| {
        targets.as_ref().is_some_and(|targets| {
            next.iter()
                .all(|(p, offset)| targets.get(p).is_none_or(|target| offset >= target))
        })
    };
    loop {
        if caught_up(&targets.borrow(), &next) {
            return Ok(outcome);
        }
        tokio::select! {
            item = merged.next() => {
                let Some((partition, response)) = item else {
                    return Err(Error::StreamEnded { what: "ReadStream" });
                };
                let response = response.map_err(Error::rpc("ReadStream"))?;
                let now = Instant::now();
                for record in &response.records {
                    outcome.records_total += 1;
                    let Some(stamp) = record.value.get(..STAMP_BYTES) else { continue };
                    let stamp = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                    let intended = clock.instant_of(stamp);
                    if clock.is_measured(intended) {
                        latency::record(&mut outcome.e2e, now.saturating_duration_since(intended));
                        outcome.records += 1;
                        outcome.last_delivery = Some(now);
                    }
                }
                let offset = next.entry(partition).or_default();
                *offset = (*offset).max(response.next_offset);
            }
            changed = targets.changed() => {
                if changed.is_err() {
                    return Err(Error::Invalid("the bench stopped before consumers caught up".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RetryOptions;
    use crate::client::routing_tests::{Answer, start};

    #[test]
    fn stamps_round_trip_and_the_window_is_half_open() {
        let epoch = Instant::now();
        let clock = Clock {
            epoch,
            measure_from: epoch + Duration::from_secs(1),
            measure_until: Some(epoch + Duration::from_secs(2)),
        };
        let at = epoch + Duration::from_millis(1500);
        assert_eq!(clock.instant_of(clock.stamp(at)), at);
        assert!(!clock.is_measured(epoch));
        assert!(clock.is_measured(clock.measure_from));
        assert!(clock.is_measured(at));
        assert!(!clock.is_measured(epoch + Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn a_routed_producer_follows_the_leader_and_counts_its_retries() {
        let leader = start(2, Answer::Accept, None).await;
        let follower = start(
            1,
            Answer::Refuse(tonic::Code::Unavailable, leader.hint(2)),
            None,
        )
        .await;
        let options = RetryOptions::with_budget(Duration::from_secs(10));
        let routing = RoutingClient::new(&follower.addr.to_string(), None, options).unwrap();
        let plan = Arc::new(Plan {
            topic: "t".into(),
            partitions: 1,
            producers: 1,
            record_bytes: 16,
            batch_records: 2,
            depth: 4,
            request_interval: None,
            records_per_producer: Some(20),
            idempotent: true,
        });
        let epoch = Instant::now();
        let clock = Clock {
            epoch,
            measure_from: epoch,
            measure_until: None,
        };
        let live = Arc::new(Live::new(1, false));
        let outcome = produce(Link::Routed(routing), plan, 0, clock, live)
            .await
            .unwrap();
        assert_eq!((outcome.records, outcome.requests), (20, 10));
        assert!(outcome.retries >= 1, "the refusal was retried");
        assert!(follower.appends() >= 1);
        // What the follower refused went to the leader, each request once.
        assert_eq!(leader.appends(), 10);
    }
}
