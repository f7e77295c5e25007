//! The bridge: [`ShardSet`], the `Clone + Send + Sync` handle any tokio task calls to reach
//! the shards.
//!
//! Owns: routing (topic → partitions → owning shard, with each partition's high-watermark
//! watch), the bounded send to a shard's queue (a short wait, then `Overloaded`; for appends
//! the send and the wait for the ack can be separated, see `append_enqueue`), and the set's
//! lifecycle: start and shutdown. Topic creation and deletion, with their undo, are in
//! `admin`; the values calls return are in `results`.
//! Must never: touch a partition's log or files (only the owning shard does), hold the
//! routing lock across an await, or wait unboundedly for room in a queue on the request path.
//!
//! Invariants: a route is published only after every partition of the topic is open on its
//! shard, and withdrawn before any is closed; admin operations (create, delete, shutdown) are
//! serialized by one async mutex, off the append path, and each runs in a task of its own to
//! its end, whether or not its caller is still waiting.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::admin::{blocking, plan, to_completion};
use super::command::{Command, OpenPartition, Reply};
use super::error::{Error, Result};
use super::executor::{self, ResolvedEngine, ShardThread};
use super::options::ShardOptions;
use super::queue::{self, QueueSender, SendError};
use super::results::{
    AppendAck, PartitionInfo, PendingAppend, ReadResult, TopicDescription, TopicInfo,
};
use super::stats::{ShardStats, ShardStatsSnapshot};
use super::topics::{self, TopicMeta};
use super::worker::ShardContext;
use crate::observability;
use crate::observability::hops::Trace;
use crate::proto::v1 as pb;
use crate::raft::group::RaftContext;
use crate::raft::wire;
use crate::storage::{CheckedBatch, LogLimits, Record};

/// A topic's route as one append sees it: looked up once, then used to pick the partition
/// and to send the batch (see [`ShardSet::append_route`]).
#[derive(Clone)]
pub struct AppendRoute(Arc<TopicRoute>);

impl AppendRoute {
    /// Number of partitions of the topic.
    pub fn partitions(&self) -> u32 {
        self.0.partitions.len() as u32
    }
}

impl std::fmt::Debug for AppendRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRoute")
            .field("topic", &self.0.name)
            .field("partitions", &self.0.partitions.len())
            .finish()
    }
}

pub(super) struct PartitionRoute {
    pub(super) shard: usize,
    pub(super) high_watermark: watch::Receiver<u64>,
    /// The nodes holding the partition, preferred leader first; empty = solo.
    pub(super) replicas: Vec<u64>,
    /// This node holds a replica (always, for a solo partition). A partition held elsewhere
    /// is known, for its replicas, and refused with [`Error::NotReplica`], or with
    /// [`Error::OutsideCluster`] on a node without a cluster.
    pub(super) local: bool,
    /// Where the first replica serves, for a partition held elsewhere.
    pub(super) first_addr: Option<String>,
}

pub(super) struct TopicRoute {
    pub(super) name: Arc<str>,
    pub(super) partitions: Vec<PartitionRoute>,
    /// As in `topic.toml` (`TopicMeta::incarnation`).
    pub(super) incarnation: u64,
    /// This node runs without a cluster: its replicated partitions are held by no one here
    /// (no Raft group could run them) and refused with [`Error::OutsideCluster`].
    pub(super) outside_cluster: bool,
}

impl TopicRoute {
    /// The route of a partition this node holds.
    pub(super) fn partition(&self, partition: u32) -> Result<&PartitionRoute> {
        let route = self.any_partition(partition)?;
        if route.local {
            return Ok(route);
        }
        let topic = self.name.to_string();
        let replicas = route.replicas.clone();
        Err(if self.outside_cluster {
            Error::OutsideCluster {
                topic,
                partition,
                replicas,
            }
        } else {
            Error::NotReplica {
                topic,
                partition,
                replicas,
                first_addr: route.first_addr.clone(),
            }
        })
    }

    /// The route of a partition, held here or not.
    pub(super) fn any_partition(&self, partition: u32) -> Result<&PartitionRoute> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| Error::UnknownPartition {
                topic: self.name.to_string(),
                partition,
                partitions: self.partitions.len() as u32,
            })
    }
}

pub(super) struct Inner {
    pub(super) options: ShardOptions,
    pub(super) topics_dir: PathBuf,
    pub(super) engine: ResolvedEngine,
    /// Why `engine` was chosen (the configured choice and the io_uring probe's outcome).
    pub(super) engine_reason: String,
    pub(super) senders: Vec<QueueSender>,
    pub(super) stats: Vec<Arc<ShardStats>>,
    pub(super) routes: RwLock<Routes>,
    pub(super) admin: tokio::sync::Mutex<()>,
    pub(super) shutting_down: AtomicBool,
    pub(super) threads: Mutex<Vec<ShardThread>>,
    /// This node's place in its cluster; `None` without one (`cluster.node_id = 0`): solo
    /// partitions are local, replicated ones are refused with [`Error::OutsideCluster`].
    pub(super) raft: Option<RaftContext>,
}

/// The shards of one server, callable from any tokio task. Cheap to clone.
#[derive(Clone)]
pub struct ShardSet {
    pub(super) inner: Arc<Inner>,
}

type Routes = HashMap<Arc<str>, Arc<TopicRoute>>;

/// The routes of every topic on disk, and per shard the partitions it opens first.
fn plan_all(
    topics_dir: &std::path::Path,
    metas: &[TopicMeta],
    shard_count: usize,
    raft: Option<&RaftContext>,
) -> (Routes, Vec<Vec<OpenPartition>>) {
    let mut routes = HashMap::new();
    let mut initial: Vec<Vec<OpenPartition>> = (0..shard_count).map(|_| Vec::new()).collect();
    for meta in metas {
        let (route, opens) = plan(topics_dir, meta, shard_count, raft, false);
        routes.insert(route.name.clone(), route);
        for (shard, mut open) in opens.into_iter().enumerate() {
            initial[shard].append(&mut open);
        }
    }
    (routes, initial)
}

/// The shards of a set that started: one sender, counter block and thread each.
struct Started {
    senders: Vec<QueueSender>,
    stats: Vec<Arc<ShardStats>>,
    threads: Vec<ShardThread>,
}

/// Starts one thread per shard and waits until each has opened its initial partitions. On
/// any failure the shards that did start are stopped (they close their logs) and joined.
fn start_shards(
    engine: ResolvedEngine,
    options: &ShardOptions,
    initial: Vec<Vec<OpenPartition>>,
    raft: Option<&RaftContext>,
) -> Result<Started> {
    let shard_count = options.shard_count;
    let mut started = Started {
        senders: Vec::with_capacity(shard_count),
        stats: Vec::with_capacity(shard_count),
        threads: Vec::with_capacity(shard_count),
    };
    let mut readies = Vec::with_capacity(shard_count);
    let mut failure = None;
    for (id, initial) in initial.into_iter().enumerate() {
        let (tx, rx) = queue::queue(id, options.queue_depth_max);
        let (ready_tx, ready_rx) = mpsc::channel();
        let shard_stats = Arc::new(ShardStats::default());
        let ctx = ShardContext {
            id,
            rx,
            stats: shard_stats.clone(),
            options: options.clone(),
            initial,
            ready: ready_tx,
            raft: raft.cloned(),
        };
        match executor::spawn_shard(engine, options.pin_threads, options.io_memory_bytes, ctx) {
            Ok(thread) => started.threads.push(thread),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        started.senders.push(tx);
        started.stats.push(shard_stats);
        readies.push(ready_rx);
    }
    for (id, ready) in readies.iter().enumerate() {
        if let Err(e) = executor::wait_ready(id, ready) {
            failure.get_or_insert(e);
        }
    }
    let Some(e) = failure else {
        return Ok(started);
    };
    // Dropping the senders stops the shards that did start; they close their logs.
    drop(started.senders);
    for thread in started.threads {
        if let Err(panic) = thread.join() {
            tracing::error!(error = %panic, "joining a shard after a failed start");
        }
    }
    Err(e)
}

impl ShardSet {
    /// Validates the options, loads the topics, starts one thread per shard and opens every
    /// partition on its shard. Blocks until all are open (call it before serving).
    pub fn start(options: ShardOptions) -> Result<ShardSet> {
        Self::start_with(options, None)
    }

    /// As [`ShardSet::start`], on a node of a cluster: partitions with more than one replica
    /// run a Raft group that reaches the other nodes through `raft`'s transport.
    pub(crate) fn start_with(options: ShardOptions, raft: Option<RaftContext>) -> Result<ShardSet> {
        Self::start_on(options, raft, None)
    }

    /// As [`ShardSet::start_with`], every shard on the portable engine behind a fault
    /// injector that crashes after `crash_after` write-like operations and tears what was not
    /// synced once the shard stops (see `ResolvedEngine::PortableFaulty`).
    #[cfg(test)]
    pub(crate) fn start_faulty(
        options: ShardOptions,
        raft: Option<RaftContext>,
        crash_after: u64,
        tear_seed: u64,
    ) -> Result<ShardSet> {
        let engine = ResolvedEngine::PortableFaulty {
            crash_after,
            tear_seed,
        };
        Self::start_on(
            options,
            raft,
            Some((engine, "a test's fault injector".to_owned())),
        )
    }

    fn start_on(
        options: ShardOptions,
        raft: Option<RaftContext>,
        engine: Option<(ResolvedEngine, String)>,
    ) -> Result<ShardSet> {
        options.validate()?;
        let (engine, engine_reason) = match engine {
            Some(engine) => engine,
            None => executor::resolve_engine(
                options.engine,
                &options.data_dir,
                options.io_memory_bytes,
            )?,
        };
        let topics_dir = topics::topics_dir(&options.data_dir);
        let metas = topics::load_all(&topics_dir, options.shard_count)?;
        let (routes, initial) = plan_all(&topics_dir, &metas, options.shard_count, raft.as_ref());
        let started = start_shards(engine, &options, initial, raft.as_ref())?;
        tracing::info!(
            shards = options.shard_count,
            engine = engine.name(),
            durability = ?options.durability,
            topics = metas.len(),
            data_dir = %options.data_dir.display(),
            "shards started"
        );
        Ok(ShardSet {
            inner: Arc::new(Inner {
                options,
                topics_dir,
                engine,
                engine_reason,
                senders: started.senders,
                stats: started.stats,
                routes: RwLock::new(routes),
                admin: tokio::sync::Mutex::new(()),
                shutting_down: AtomicBool::new(false),
                threads: Mutex::new(started.threads),
                raft,
            }),
        })
    }

    pub fn shard_count(&self) -> usize {
        self.inner.senders.len()
    }

    /// The engine the shards run: `"portable"` or `"uring"`.
    pub fn engine_name(&self) -> &'static str {
        self.inner.engine.name()
    }

    /// Why the shards run [`engine_name`](Self::engine_name): the configured choice and, for
    /// `auto`, what the io_uring probe found.
    pub fn engine_reason(&self) -> &str {
        &self.inner.engine_reason
    }

    /// Counters of one shard; the queue depth is read live from its queue.
    pub fn stats(&self, shard: usize) -> ShardStatsSnapshot {
        let mut snapshot = self.inner.stats[shard].snapshot();
        snapshot.queue_depth = self.inner.senders[shard].len() as u64;
        snapshot
    }

    /// The replicated partitions every shard holds, as each last published them: leader,
    /// term and, where this node leads, each follower's lag (see `lag`).
    pub fn partition_replication(&self) -> Vec<crate::observability::PartitionReplication> {
        self.inner
            .stats
            .iter()
            .flat_map(|stats| stats.replication.snapshot())
            .collect()
    }

    /// Counters summed over every shard.
    pub fn total_stats(&self) -> ShardStatsSnapshot {
        (0..self.shard_count()).fold(ShardStatsSnapshot::default(), |sum, s| sum + self.stats(s))
    }

    pub(super) fn check_running(&self) -> Result<()> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    pub(super) fn stopped(&self, shard: usize) -> Error {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            Error::ShuttingDown
        } else {
            Error::ShardFailed {
                shard,
                reason: "its thread stopped".to_owned(),
            }
        }
    }

    pub(super) fn topic_route(&self, topic: &str) -> Result<Arc<TopicRoute>> {
        let routes = self.inner.routes.read().expect("routes lock poisoned");
        routes
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// The topic's shared name and the shard owning `partition`.
    fn route(&self, topic: &str, partition: u32) -> Result<(Arc<str>, usize)> {
        let route = self.topic_route(topic)?;
        let shard = route.partition(partition)?.shard;
        Ok((route.name.clone(), shard))
    }

    /// Queues a request, waiting at most `enqueue_timeout_ms` for room. `Overloaded` means
    /// nothing was queued: the wait is for room, before the hand-over (see `queue`).
    async fn enqueue(&self, shard: usize, cmd: Command) -> Result<()> {
        let sender = &self.inner.senders[shard];
        let wait = Duration::from_millis(self.inner.options.enqueue_timeout_ms);
        match sender.send(cmd, Some(wait)).await {
            Ok(()) => Ok(()),
            Err(SendError::Closed) => Err(self.stopped(shard)),
            Err(SendError::Full) => {
                let queue_depth = sender.len();
                observability::shard_overloaded(shard, queue_depth);
                Err(Error::Overloaded { shard, queue_depth })
            }
        }
    }

    /// Sends a request and waits for its reply.
    async fn call<T>(&self, shard: usize, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        self.check_running()?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(shard, make(tx)).await?;
        rx.await.map_err(|_| self.stopped(shard))?
    }

    /// Sends an admin request, waiting as long as the queue needs (admin work must not be
    /// half done because the queue was busy).
    pub(super) async fn call_admin<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner.senders[shard]
            .send(make(tx), None)
            .await
            .map_err(|_| self.stopped(shard))?;
        rx.await.map_err(|_| self.stopped(shard))?
    }

    /// Appends one batch to a partition.
    ///
    /// # Correctness
    /// Returns once the batch is readable, and (under `Durability::Fsync`) durable. Acks of
    /// one partition are returned in offset order.
    pub async fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<AppendAck> {
        self.append_enqueue(topic, partition, records).await?.await
    }

    /// Puts one batch in the owning shard's queue and returns its acknowledgement as a
    /// separate future, so that a caller can have many appends in flight while fixing
    /// their order itself.
    ///
    /// # Correctness
    /// When this returns `Ok`, the batch is in the shard's queue, behind every batch queued
    /// before the call began. So appends to one partition that a caller enqueues one after
    /// another (each `append_enqueue` awaited before the next starts) get increasing offsets
    /// in that order, and are acknowledged in that order, however the returned futures are
    /// polled. The ack resolves once the batch is readable and (under `Durability::Fsync`)
    /// durable; dropping it does not withdraw the batch.
    ///
    /// Waits at most `enqueue_timeout_ms` for room in the queue, then fails with
    /// `Overloaded` having queued nothing. An unknown topic or partition, or shutdown, fail
    /// here too, before anything is queued.
    pub async fn append_enqueue(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<PendingAppend> {
        self.check_running()?;
        let route = self.append_route(topic)?;
        let batch = self.check_append(topic, partition, records)?;
        self.enqueue_batch(&route, partition, batch, Trace::default())
            .await
    }

    /// Checks a batch against the partition logs' limits (record and batch sizes, header
    /// names, at least one record) without touching anything, and measures it once; the
    /// measure travels with the batch. `partition` only names the failure.
    pub fn check_append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Record>,
    ) -> Result<CheckedBatch> {
        check_batch(&self.inner.options.log, topic, partition, records)
    }

    /// The limits every partition log of this set enforces.
    pub fn log_limits(&self) -> &LogLimits {
        &self.inner.options.log
    }

    /// Checks that a topic about to be created with `partitions` partitions would have
    /// `partition` (so that an append that must fail creates nothing).
    pub fn check_new_partition(topic: &str, partition: u32, partitions: u32) -> Result<()> {
        if partition < partitions {
            return Ok(());
        }
        Err(Error::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions,
        })
    }

    /// The topic's route for an append: one lookup serves the partition choice and the send.
    pub fn append_route(&self, topic: &str) -> Result<AppendRoute> {
        self.topic_route(topic).map(AppendRoute)
    }

    /// [`append_enqueue`](Self::append_enqueue) for a batch already checked, on a route
    /// already looked up.
    ///
    /// # Correctness
    /// As for `append_enqueue`. A route of a topic deleted since it was looked up reaches a
    /// shard that no longer has the partition, which answers `UnknownTopic`.
    pub async fn enqueue_batch(
        &self,
        route: &AppendRoute,
        partition: u32,
        batch: CheckedBatch,
        trace: Trace,
    ) -> Result<PendingAppend> {
        self.check_running()?;
        let shard = route.0.partition(partition)?.shard;
        let (reply, ack) = oneshot::channel();
        self.enqueue(
            shard,
            Command::Append {
                topic: route.0.name.clone(),
                partition,
                batch,
                reply,
                trace,
            },
        )
        .await?;
        Ok(PendingAppend {
            ack,
            shard,
            set: self.clone(),
        })
    }

    /// Reads from `from_offset`: at least one batch when one is readable, then more up to
    /// `max_bytes` (capped by `read_bytes_max`), at most `max_records` records (0 = no record
    /// limit). Only what is below
    /// the high watermark is returned.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
        max_bytes: u64,
        max_records: usize,
    ) -> Result<ReadResult> {
        let (topic, shard) = self.route(topic, partition)?;
        self.call(shard, |reply| Command::Read {
            topic,
            partition,
            from_offset,
            max_bytes,
            max_records,
            reply,
        })
        .await
    }

    /// Drops the records of a partition below `before_offset` (a WAL checkpoint), and
    /// returns the partition's start offset after it, as the owning shard saw it.
    pub async fn truncate(&self, topic: &str, partition: u32, before_offset: u64) -> Result<u64> {
        let (topic, shard) = self.route(topic, partition)?;
        self.call(shard, |reply| Command::Truncate {
            topic,
            partition,
            before_offset,
            reply,
        })
        .await
    }

    /// Drops the records of a partition at and after `from_offset`, which must be a batch
    /// boundary (or the end offset): the end offset becomes `from_offset`, durably, and the
    /// high watermark drops to it if it was above.
    pub async fn truncate_suffix(
        &self,
        topic: &str,
        partition: u32,
        from_offset: u64,
    ) -> Result<()> {
        let (topic, shard) = self.route(topic, partition)?;
        self.call(shard, |reply| Command::TruncateSuffix {
            topic,
            partition,
            from_offset,
            reply,
        })
        .await
    }

    /// Waits until the partition's high watermark passes `offset` (a record at `offset` is
    /// readable) or `timeout` expires, and returns the high watermark. Woken by commits.
    pub async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64> {
        self.check_running()?;
        let route = self.topic_route(topic)?;
        let mut rx = route.partition(partition)?.high_watermark.clone();
        drop(route);
        let waited = tokio::time::timeout(timeout, rx.wait_for(|&hw| hw > offset))
            .await
            .map(|woken| woken.map(|hw| *hw));
        match waited {
            Ok(Ok(hw)) => Ok(hw),
            // The shard dropped the watch: the partition was closed.
            Ok(Err(_)) => Err(if self.inner.shutting_down.load(Ordering::Acquire) {
                Error::ShuttingDown
            } else {
                Error::UnknownTopic {
                    topic: topic.to_owned(),
                }
            }),
            Err(_) => Ok(*rx.borrow()),
        }
    }

    /// Hands a Raft message from another node to the shard that owns its partition; the
    /// answer (or a refusal, as an envelope with an error body) comes back on the receiver.
    pub async fn deliver_raft(&self, mut envelope: pb::RaftEnvelope) -> pb::RaftEnvelope {
        // A refusal answers with the request's addressing only, so the body (the entries)
        // travels on without a copy.
        let body = envelope.body.take();
        // One route lookup gives the shard and the incarnation.
        let routed = self.topic_route(&envelope.topic).and_then(|route| {
            let shard = route.partition(envelope.partition)?.shard;
            Ok((shard, route.incarnation))
        });
        let (shard, here) = match routed {
            Ok(routed) => routed,
            Err(e) => return wire::refusal(envelope, e.to_string()),
        };
        // Another creation of the same name (0 = unknown, from before the controller):
        // its group is not this one's, whatever the names say.
        if envelope.incarnation != 0 && here != 0 && envelope.incarnation != here {
            let reason = format!(
                "partition {}/{} here is incarnation {here}, not {}: another creation of the \
                 topic's name",
                envelope.topic, envelope.partition, envelope.incarnation
            );
            return wire::refusal(envelope, reason);
        }
        let (reply, answer) = oneshot::channel();
        let request = pb::RaftEnvelope {
            body,
            ..envelope.clone()
        };
        if let Err(e) = self
            .enqueue(
                shard,
                Command::Raft {
                    envelope: request,
                    reply,
                },
            )
            .await
        {
            return wire::refusal(envelope, e.to_string());
        }
        match answer.await {
            Ok(answer) => answer,
            Err(_) => wire::refusal(envelope, self.stopped(shard).to_string()),
        }
    }

    pub fn partitions_of(&self, topic: &str) -> Result<u32> {
        Ok(self.topic_route(topic)?.partitions.len() as u32)
    }

    /// The nodes holding each partition of a topic, indexed by partition (an empty set: the
    /// partition is solo on this node).
    pub fn replicas_of(&self, topic: &str) -> Result<Vec<Vec<u64>>> {
        let route = self.topic_route(topic)?;
        Ok(route
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect())
    }

    /// Which creation of its name a topic is (`TopicMeta::incarnation`; 0 = unknown).
    pub fn incarnation_of(&self, topic: &str) -> Result<u64> {
        Ok(self.topic_route(topic)?.incarnation)
    }

    /// The shard that owns a partition.
    pub fn shard_of(&self, topic: &str, partition: u32) -> Result<usize> {
        Ok(self.route(topic, partition)?.1)
    }

    /// Every topic, sorted by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let routes = self.inner.routes.read().expect("routes lock poisoned");
        let mut topics: Vec<TopicInfo> = routes
            .values()
            .map(|r| TopicInfo {
                name: r.name.to_string(),
                partitions: r.partitions.len() as u32,
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// Offsets, owning shard, replicas and leader of every partition of a topic. A
    /// partition this node holds no replica of is described by its replicas alone.
    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription> {
        self.check_running()?;
        let route = self.topic_route(topic)?;
        let mut by_shard: HashMap<usize, Vec<u32>> = HashMap::new();
        for (id, p) in route.partitions.iter().enumerate() {
            if p.local {
                by_shard.entry(p.shard).or_default().push(id as u32);
            }
        }
        let calls = by_shard.into_iter().map(|(shard, partitions)| {
            let topic = route.name.clone();
            self.call(shard, move |reply| Command::Describe {
                topic,
                partitions,
                reply,
            })
        });
        let mut partitions: Vec<PartitionInfo> = futures::future::try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .collect();
        for (id, p) in route.partitions.iter().enumerate() {
            if !p.local {
                partitions.push(PartitionInfo {
                    id: id as u32,
                    shard: p.shard as u32,
                    ..PartitionInfo::default()
                });
            }
        }
        partitions.sort_by_key(|p| p.id);
        for info in &mut partitions {
            info.replicas = route.partitions[info.id as usize].replicas.clone();
        }
        Ok(TopicDescription {
            name: route.name.to_string(),
            partitions,
        })
    }

    /// Stops accepting requests (new calls get `ShuttingDown`), lets every shard serve what is
    /// already queued, sync and close its logs, and joins the threads. Returns the first
    /// error met while closing. Runs to its end even if the caller stops polling it.
    pub async fn shutdown(self) -> Result<()> {
        to_completion(self.shutdown_now()).await
    }

    async fn shutdown_now(self) -> Result<()> {
        if self.inner.shutting_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _admin = self.inner.admin.lock().await;
        let mut first_error = None;
        for shard in 0..self.shard_count() {
            if let Err(e) = self
                .call_admin(shard, |reply| Command::Shutdown { reply })
                .await
            {
                first_error.get_or_insert(e);
            }
        }
        let threads =
            std::mem::take(&mut *self.inner.threads.lock().expect("threads lock poisoned"));
        let joined = blocking(move || {
            threads
                .into_iter()
                .enumerate()
                .filter_map(|(shard, t)| {
                    t.join()
                        .err()
                        .map(|reason| Error::ShardFailed { shard, reason })
                })
                .next()
        })
        .await;
        if let Some(e) = joined {
            first_error.get_or_insert(e);
        }
        tracing::info!("shards stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// Checks a batch against partition-log `limits` and measures it once ([`ShardSet::check_append`]
/// with the limits given): what the server runs before anything is queued.
pub fn check_batch(
    limits: &LogLimits,
    topic: &str,
    partition: u32,
    records: Vec<Record>,
) -> Result<CheckedBatch> {
    limits
        .check(records)
        .map_err(|e| Error::storage(topic, partition, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node started without its cluster does not serve the replicated partitions on its
    /// disk: appends and reads are refused with an error that says what to do, and the
    /// partition is neither opened nor written.
    #[tokio::test]
    async fn a_replicated_partition_on_a_node_without_its_cluster_is_refused_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ShardOptions::new(dir.path());
        options.shard_count = 1;
        let topics_dir = topics::topics_dir(dir.path());
        std::fs::create_dir_all(&topics_dir).unwrap();
        let mut meta = TopicMeta::new("r", 1, 1);
        meta.replicas = vec![vec![1, 2, 3]];
        topics::write_meta(&topics_dir, &meta).unwrap();

        let set = ShardSet::start(options).unwrap();
        let record = Record {
            value: b"v".to_vec().into(),
            ..Record::default()
        };
        let appended = set.append("r", 0, vec![record]).await;
        let read = set.read("r", 0, 0, 1 << 20, 0).await;
        for refused in [
            appended.map(|_| ()).unwrap_err(),
            read.map(|_| ()).unwrap_err(),
        ] {
            assert!(
                matches!(&refused, Error::OutsideCluster { replicas, .. } if replicas == &[1, 2, 3]),
                "{refused:?}"
            );
            assert!(
                refused
                    .to_string()
                    .contains("restart the node with its cluster's config"),
                "{refused}"
            );
        }
        set.shutdown().await.unwrap();
        assert!(
            !topics::partition_dir(&topics_dir, "r", 0).exists(),
            "the partition was not opened"
        );
    }

    #[test]
    fn a_new_topic_has_partitions_below_its_count() {
        assert!(ShardSet::check_new_partition("t", 3, 4).is_ok());
        let err = ShardSet::check_new_partition("t", 4, 4).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnknownPartition {
                    partition: 4,
                    partitions: 4,
                    ..
                }
            ),
            "{err}"
        );
    }
}
