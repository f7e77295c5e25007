//! One shard's loop: it owns its partitions' logs and serves its queue, covering each group
//! of appends with one sync per touched partition (group commit).
//!
//! Owns: the `Log`s of the partitions assigned to this shard, their high-watermark watches,
//! the flush timers (interval durability) and maintenance (aged rolls, retention).
//! Must never: be touched from another thread (its state is `!Send` and unlocked), block on
//! anything but its own queue and its own files, or acknowledge an append before the high
//! watermark (the log's commit mark) has passed it: the shard sets it to the durable end after
//! a sync under `Fsync`, and to the end offset otherwise.
//!
//! Invariants: within a group, appends are applied in arrival order, so acks of a partition
//! go out in offset order; every append in a group gets exactly one reply, and a failed sync
//! fails every append it covered that is not already below the high watermark (a roll
//! mid-group seals, and so commits, the appends before it). Anything that changes a log other than an append (truncate,
//! open, close, shutdown) first flushes the group before it, so it never sees unflushed data.
//! Reads never wait for a flush: they see only what is below the high watermark.
//!
//! Idempotent producers: each partition keeps a [`ProducerTable`]. A batch with a producer
//! stamp is admitted by it before anything is written (a retry is answered with its original
//! place, a bad sequence refused); a solo partition records where it wrote the batch, a
//! replicated one records what its group applies (on every replica), and on open the table
//! is rebuilt from the headers of the log's last batches below the commit mark. A new leader
//! admits stamped batches only once it has applied an entry of its own term, so it knows
//! every batch its predecessors committed.
//!
//! The loop is generic over the engine and over [`LoopRuntime`] (how to wait for the queue
//! and for timers), so the same code runs on a plain thread and on a glommio executor.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::command::{Command, OpenPartition, Reply};
use super::error::{Error, Result};
use super::options::{Durability, ShardOptions};
use super::producers::{Admit, ProducerTable, Written};
use super::queue::{QueueReceiver, Queued};
use super::results::{AppendAck, PartitionInfo, ReadResult};
use super::stats::ShardStats;
use crate::observability::ShardMetrics;
use crate::observability::hops::{self, Hop, IoHop, Trace};
use crate::proto::v1 as pb;
use crate::raft::group::{Group, GroupStart, ProposeError, RaftContext};
use crate::raft::store::{self as raft_store, LogOp, Served};
use crate::raft::types::Proposal;
use crate::storage::{
    self, AppliedMark, CheckedBatch, DiskSpace, Engine, Log, MarkFile, ProducerStamp, Record,
    now_ms,
};
use openraft::rt::AsyncRuntime;
use openraft::storage::IOFlushed;

/// What the shard's own tasks (its Raft groups) ask of it, on the shard's local queue.
pub(crate) enum Local<RT: AsyncRuntime> {
    /// A group's log operation.
    Op(LogOp<RT>),
    /// A group finished starting (it starts in a task of its own: starting reads its log,
    /// which the shard serves, so the shard must not wait for it).
    Started {
        key: Key,
        group: std::result::Result<Group<RT>, String>,
        /// The start's token (see [`Replication::Starting`]).
        token: std::rc::Weak<()>,
    },
    /// An idempotent producer's proposal failed: its sequence may be written again.
    Abandoned { key: Key, stamp: ProducerStamp },
    /// A group stopped (see [`Shard::stop_group`]): start it again as `then` says.
    Stopped { key: Key, then: AfterStop },
}

/// Why a running group is stopped, and what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterStop {
    /// A read met damage: cut the log there and rejoin ([`Shard::repair_damaged`]).
    Repair,
    /// A write it asked for failed without poisoning the log (out of disk space): openraft
    /// has stopped the group, so start it again as it was, after a pause.
    Restart,
}

/// What starts a group of work: a command from the bridge or a message of the shard's own.
enum First<RT: AsyncRuntime> {
    Command(Command),
    Local(Local<RT>),
}

/// What a wait on the queues ended with.
pub(crate) enum Received<RT: AsyncRuntime> {
    Command(Command),
    Local(Local<RT>),
    Timeout,
    /// Every sender is gone: the shard set was dropped without `shutdown`.
    Closed,
}

/// How a shard waits: it yields to its executor (glommio, or tokio's local set), so the Raft
/// groups' tasks, io_uring completions and timers keep running.
#[allow(async_fn_in_trait)] // Shard loops are single-threaded; no Send bound wanted.
pub(crate) trait LoopRuntime {
    /// The runtime the shard's Raft groups run on (its tasks and timers).
    type Rt: AsyncRuntime;
    /// The next command or local message, or `Timeout` at `deadline`. Local messages first.
    async fn recv(
        &self,
        rx: &flume::Receiver<Queued>,
        local: &flume::Receiver<Local<Self::Rt>>,
        deadline: Instant,
    ) -> Received<Self::Rt>;
    async fn sleep(&self, duration: Duration);
}

/// Everything a shard thread is started with.
pub(crate) struct ShardContext {
    pub id: usize,
    /// Dropped (however the shard ends, panics included), it answers what is still queued.
    pub rx: QueueReceiver,
    pub stats: Arc<ShardStats>,
    pub options: ShardOptions,
    /// Partitions to open before serving anything.
    pub initial: Vec<OpenPartition>,
    /// Told once whether the initial partitions opened.
    pub ready: std::sync::mpsc::Sender<Result<()>>,
    /// How this node's replicated partitions reach the other nodes; `None` on a node that is
    /// not in a cluster (its partitions are all solo).
    pub raft: Option<RaftContext>,
}

type Key = (Arc<str>, u32);

/// A partition's place in replication.
enum Replication<RT: AsyncRuntime> {
    /// One replica: committed at its own sync, no Raft group.
    Solo,
    /// Its group is starting: it serves reads of what it knows is committed, no writes.
    /// The token is this start's: the starting task holds it weakly, so a start outlived by
    /// its partition (closed, reopened, started again) stops waiting and is not installed.
    Starting(Rc<()>),
    Running(Group<RT>),
}

struct Partition<E: Engine, RT: AsyncRuntime> {
    log: Log<E>,
    high_watermark: watch::Sender<u64>,
    /// Committed without a sync (interval durability): the timer must sync it.
    unsynced: bool,
    replication: Replication<RT>,
    /// How far a replicated partition's group has applied its log, and whether that moved
    /// since it was last saved (`raft_applied`, at maintenance and close).
    applied: Option<AppliedMark>,
    applied_unsaved: bool,
    /// The idempotent producers' windows.
    producers: ProducerTable,
    /// The leader and term its group last reported (to log and count changes).
    seen_leader: (Option<u64>, u64),
    /// How it was opened, and with which replicas (the group's membership is what counts
    /// from then on): for a restart of the group ([`Origin::again`]).
    origin: Origin,
    opened_replicas: Vec<u64>,
    /// The log was cut at a damaged sealed segment once since it was opened (see
    /// [`Shard::repair_damaged`]): a second failure to start is not repaired again.
    damage_cut: bool,
}

impl<E: Engine, RT: AsyncRuntime> Partition<E, RT> {
    fn is_solo(&self) -> bool {
        matches!(self.replication, Replication::Solo)
    }

    /// A truncate command applied here: purges, through the group, every entry wholly below
    /// `before_offset` (the log then starts at the first batch that holds an offset at or
    /// past it).
    async fn purge_below(&mut self, key: &Key, before_offset: u64) {
        let Replication::Running(group) = &self.replication else {
            return;
        };
        match raft_store::cut_below(&mut self.log, before_offset).await {
            Ok(Some((index, _start))) => group.purge(index),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(topic = %key.0, partition = key.1, before_offset, error = %e, "finding where a truncate cuts");
            }
        }
    }

    /// Saves the applied mark when it moved; a failure only means a longer replay after a
    /// restart, so it is logged, not raised.
    async fn save_applied(&mut self, key: &Key) {
        if !self.applied_unsaved || self.log.poisoned_by().is_some() {
            return;
        }
        let Some(mark) = &self.applied else {
            return;
        };
        // Never a mark past the durable end: a mark past a log's end at open says that the
        // replica lost entries it held (see `Shard::group_start`), not that a crash took
        // entries it had not synced yet.
        if mark.next_offset > self.log.durable_end()
            && let Err(e) = self.log.sync().await
        {
            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "syncing before saving the applied mark");
            return;
        }
        match self.log.save_applied_mark(mark).await {
            Ok(()) => self.applied_unsaved = false,
            Err(e) => {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "saving the applied mark");
            }
        }
    }

    /// Moves the commit mark (what readers see) up to `mark` of the log, never back, and
    /// publishes it; only for a solo partition, which commits what it alone holds. A
    /// replicated partition's mark is Raft's: it moves when entries apply, whatever the
    /// local sync did.
    fn commit_solo(&mut self, mark: fn(&Log<E>) -> u64) {
        if !self.is_solo() {
            return;
        }
        let offset = mark(&self.log);
        if offset > self.log.high_watermark() {
            self.log
                .set_commit(offset)
                .expect("the durable end and the end offset are within the log");
        }
        self.publish();
    }

    fn publish(&self) {
        let hw = self.log.high_watermark();
        self.high_watermark.send_if_modified(|current| {
            let changed = *current != hw;
            *current = hw;
            changed
        });
    }
}

/// How a group's flush went for one touched partition: the sync's result, and the high
/// watermark after it (which decides which of its appends are acknowledged).
struct FlushOutcome {
    result: std::result::Result<(), Arc<storage::Error>>,
    high_watermark: u64,
    /// The engine's stamps of the sync (hop tracing; zero when off).
    io: hops::IoStamps,
}

/// Syncs (under `Fsync`) or just commits one touched partition of a group, and publishes
/// its new high watermark (solo partitions; a replicated one's is Raft's to move). What is
/// committed: what a sync (or a roll inside the group) made durable, whatever failed after
/// it; under relaxed durability, everything appended. `synced` is told how long a sync took.
async fn commit_partition<E: Engine, RT: AsyncRuntime>(
    p: &mut Partition<E, RT>,
    durability: Durability,
    synced: impl FnOnce(std::time::Duration),
) -> std::result::Result<(), Arc<storage::Error>> {
    let (outcome, committed): (_, fn(&Log<E>) -> u64) = match p.log.poison_error() {
        Some(poisoned) => (Err(poisoned), Log::durable_end),
        None => match durability {
            Durability::Fsync => {
                let started = Instant::now();
                hops::io_stamp(IoHop::SyncStarted);
                let result = p.log.sync().await.map(drop);
                synced(started.elapsed());
                (result, Log::durable_end)
            }
            Durability::Interval => {
                p.unsynced = true;
                (Ok(()), Log::end_offset)
            }
            Durability::None => (Ok(()), Log::end_offset),
        },
    };
    p.commit_solo(committed);
    outcome.map_err(Arc::new)
}

/// How a replicated partition came to be opened here (as `OpenPartition` says).
#[derive(Debug, Clone, Copy)]
struct Origin {
    new_group: bool,
    joins: bool,
    incarnation: u64,
}

impl Origin {
    fn of(open: &OpenPartition) -> Origin {
        Origin {
            new_group: open.new_group,
            joins: open.joins,
            incarnation: open.incarnation,
        }
    }

    /// For a start of the group after the first: its creation is over.
    fn again(self) -> Origin {
        Origin {
            new_group: false,
            ..self
        }
    }
}

/// An append that is in its log but not yet acknowledged.
struct Pending {
    key: Key,
    base_offset: u64,
    count: u32,
    reply: Reply<AppendAck>,
    trace: Trace,
}

/// Raft appends written in the current group, waiting for the flush that makes them durable.
/// How long a stopping shard waits for its Raft groups to stop, and how often it looks.
const GROUP_STOP_GRACE: Duration = Duration::from_secs(2);
const GROUP_STOP_POLL: Duration = Duration::from_millis(1);

type RaftFlushes<RT> = Vec<(Key, IOFlushed<crate::raft::types::PartitionTypes<RT>>)>;

struct Shard<E: Engine, RT: AsyncRuntime> {
    id: usize,
    engine: E,
    options: ShardOptions,
    stats: Arc<ShardStats>,
    /// Fsync latency and group size; slow-fsync warnings.
    metrics: ShardMetrics,
    partitions: HashMap<Key, Partition<E, RT>>,
    raft: Option<RaftContext>,
    /// The shard's own queue, for its groups' tasks (see [`Local`]).
    local: flume::Sender<Local<RT>>,
    /// How many times each peer's link had changed at the last quiet look (see
    /// [`Shard::quiet_tick`]).
    link_changes: HashMap<u64, u64>,
    /// Free space under the data dir: client appends are refused below the floor before
    /// anything is written, followers refuse replication below half of it (see
    /// `storage::DiskSpace`).
    space: DiskSpace,
}

/// Runs a shard until `Shutdown` (or until every sender is dropped).
pub(crate) async fn run<E, R>(engine: E, runtime: R, ctx: ShardContext)
where
    E: Engine,
    R: LoopRuntime,
{
    let ShardContext {
        id,
        rx,
        stats,
        options,
        initial,
        ready,
        raft,
    } = ctx;
    let metrics = ShardMetrics::new(id, options.slow_fsync_ms);
    let space = DiskSpace::new(options.data_dir.clone(), options.space);
    let (local, local_rx) = flume::unbounded();
    let mut shard = Shard {
        id,
        engine,
        options,
        stats,
        metrics,
        partitions: HashMap::new(),
        raft,
        local,
        link_changes: HashMap::new(),
        space,
    };
    let opened = shard.open(initial).await;
    let failed = opened.is_err();
    if ready.send(opened).is_err() || failed {
        shard.close_all().await.ok();
        return;
    }
    tracing::debug!(shard = id, engine = shard.engine.name(), "shard started");

    let maintenance_every = Duration::from_millis(shard.options.maintenance_interval_ms);
    let sync_every = match shard.options.durability {
        Durability::Interval => Some(Duration::from_millis(shard.options.flush_interval_ms)),
        _ => None,
    };
    let linger = Duration::from_micros(shard.options.flush_delay_us);
    let mut next_maintenance = Instant::now() + maintenance_every;
    let mut next_sync = sync_every.map(|every| Instant::now() + every);
    // Idle Raft groups' quiet is looked at every heartbeat interval (see `raft::quiet`).
    let quiet_every = shard
        .raft
        .as_ref()
        .map(|raft| Duration::from_millis(raft.config.heartbeat_interval));
    let mut next_quiet = quiet_every.map(|every| Instant::now() + every);

    let shutdown_reply = loop {
        let deadline = [next_sync, next_quiet]
            .into_iter()
            .flatten()
            .fold(next_maintenance, Instant::min);
        match runtime.recv(rx.channel(), &local_rx, deadline).await {
            Received::Closed => break None,
            Received::Timeout => {}
            Received::Command(first) => {
                if !linger.is_zero() && matches!(first, Command::Append { .. }) {
                    runtime.sleep(linger).await;
                }
                if let Some(reply) = shard
                    .serve_group(First::Command(first), &rx, &local_rx)
                    .await
                {
                    break Some(reply);
                }
            }
            Received::Local(first) => {
                if let Some(reply) = shard.serve_group(First::Local(first), &rx, &local_rx).await {
                    break Some(reply);
                }
            }
        }
        // Timers are checked after every group too, so a busy shard still runs them.
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_sync, sync_every)
            && now >= at
        {
            shard.sync_unsynced().await;
            next_sync = Some(now + every);
        }
        if now >= next_maintenance {
            shard.maintain().await;
            next_maintenance = now + maintenance_every;
        }
        if let (Some(at), Some(every)) = (next_quiet, quiet_every)
            && now >= at
        {
            shard.quiet_tick(now);
            next_quiet = Some(now + every);
        }
    };

    // Whatever raced in behind the shutdown is refused, not dropped silently; the gate closes
    // first, so nothing can slip in after this drain.
    rx.close_and_refuse(|| Error::ShuttingDown);
    shard.stop_groups(&runtime, &local_rx).await;
    let closed = shard.close_all().await;
    while let Ok(local) = local_rx.try_recv() {
        if let Local::Op(op) = local {
            op.refuse(shard_stopped);
        }
    }
    match shutdown_reply {
        Some(reply) => {
            if reply.send(closed).is_err() {
                tracing::warn!(shard = id, "shutdown caller left before the shard closed");
            }
        }
        None => {
            if let Err(e) = closed {
                tracing::error!(shard = id, error = %e, "closing logs after the shard set was dropped");
            }
        }
    }
    tracing::debug!(shard = id, "shard stopped");
}

fn send<T>(reply: Reply<T>, result: Result<T>) {
    if reply.send(result).is_err() {
        // The caller gave up (timeout or cancellation); the work is done regardless.
        tracing::trace!("caller left before the reply");
    }
}

/// Reports [`Local::Stopped`] for `key` to its shard after `pause`.
async fn report_stopped<RT: AsyncRuntime>(
    local: flume::Sender<Local<RT>>,
    key: Key,
    then: AfterStop,
    pause: Duration,
) {
    if !pause.is_zero() {
        RT::sleep(pause).await;
    }
    if local.send(Local::Stopped { key, then }).is_err() {
        tracing::debug!("a stopped Raft group reported after its shard stopped");
    }
}

fn shard_stopped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the partition was closed on its shard",
    )
}

/// A refusal naming the leader this node knows of, with its address when known.
fn not_leader(raft: Option<&RaftContext>, key: &Key, leader: Option<u64>) -> Error {
    Error::NotLeader {
        topic: key.0.to_string(),
        partition: key.1,
        leader,
        leader_addr: leader_addr(raft, leader),
    }
}

/// Where `leader` serves, when it is known.
fn leader_addr(raft: Option<&RaftContext>, leader: Option<u64>) -> Option<String> {
    leader.and_then(|id| raft?.transport.addr_of(id))
}

/// The group a write to a partition goes through: `None` for a solo partition (written
/// here), the group when this replica leads it, else the refusal naming the leader.
fn leading_group<'a, RT: AsyncRuntime>(
    replication: &'a Replication<RT>,
    raft: Option<&RaftContext>,
    key: &Key,
) -> Result<Option<&'a Group<RT>>> {
    match replication {
        Replication::Solo => Ok(None),
        Replication::Starting(_) => Err(not_leader(raft, key, None)),
        Replication::Running(group) => match group.leader() {
            (_, true) => Ok(Some(group)),
            (leader, false) => Err(not_leader(raft, key, leader)),
        },
    }
}

/// Why a proposal failed, as the shard reports it.
fn propose_error(raft: Option<&RaftContext>, key: &Key, e: ProposeError) -> Error {
    match e {
        ProposeError::NotLeader { leader } => not_leader(raft, key, leader),
        ProposeError::Stopped { reason } => Error::Replication {
            topic: key.0.to_string(),
            partition: key.1,
            reason,
        },
    }
}

/// Tells the shard that the proposal of `stamp`'s batch failed, so its sequence may be
/// written again.
fn abandoned<RT: AsyncRuntime>(local: &flume::Sender<Local<RT>>, key: &Key, stamp: ProducerStamp) {
    let message = Local::Abandoned {
        key: key.clone(),
        stamp,
    };
    if local.send(message).is_err() {
        tracing::debug!("a proposal failed after its shard stopped");
    }
}

/// Admits an idempotent producer's batch to a partition's `producers` (see
/// [`ProducerTable::admit`]). A leader (`leading`, which has `applied` so far) admits one
/// only once it has applied an entry of its own term: until then its predecessors' last
/// entries may be committed but not yet in its table.
fn admit_producer<RT: AsyncRuntime>(
    producers: &mut ProducerTable,
    applied: Option<&AppliedMark>,
    leading: Option<&Group<RT>>,
    key: &Key,
    stamp: ProducerStamp,
) -> Result<Admit> {
    if let Some(group) = leading {
        let (_, term) = group.leader_and_term();
        if applied.is_none_or(|mark| mark.term != term) {
            return Err(Error::ProducersNotReady {
                topic: key.0.to_string(),
                partition: key.1,
            });
        }
    }
    producers
        .admit(stamp.producer_id, stamp.sequence, now_ms())
        .map_err(|source| Error::Sequence {
            topic: key.0.to_string(),
            partition: key.1,
            source,
        })
}

/// Answers a retry of an idempotent batch already written at `written`: now when it is
/// committed (below `high_watermark`; always so on a replicated partition, which records only
/// what it applied), else after the flush that makes the original durable, with it.
fn answer_duplicate(
    high_watermark: u64,
    key: Key,
    written: Written,
    reply: Reply<AppendAck>,
    pending: &mut Vec<Pending>,
) {
    if written.base_offset + u64::from(written.count) <= high_watermark {
        let ack = AppendAck {
            partition: key.1,
            base_offset: written.base_offset,
            count: written.count,
        };
        send(reply, Ok(ack));
    } else {
        pending.push(Pending {
            key,
            base_offset: written.base_offset,
            count: written.count,
            reply,
            trace: Trace::default(),
        });
    }
}

/// A partition's producer table as its log's last batches below the commit mark tell it (at
/// most `producer_rebuild_batches_max` of them, headers only). A log whose headers cannot be
/// read gives an empty table, with a warning: its producers start afresh.
async fn rebuild_producers<E: Engine>(
    log: &mut Log<E>,
    limits: super::producers::ProducerLimits,
    key: &Key,
) -> ProducerTable {
    let mut table = ProducerTable::new(limits);
    let below = log.high_watermark();
    let batches_max = limits.producer_rebuild_batches_max as usize;
    match log.tail_headers(below, batches_max).await {
        Ok(headers) => {
            let now = now_ms();
            for h in headers {
                if h.producer_id != 0 && h.flags & storage::FLAG_CONTROL == 0 {
                    let written = Written {
                        base_offset: h.base_offset,
                        count: h.record_count,
                    };
                    table.written(h.producer_id, h.producer_seq, written, now);
                }
            }
            if table.len() > 0 {
                tracing::debug!(topic = %key.0, partition = key.1, producers = table.len(), "producer windows rebuilt from the log");
            }
        }
        Err(e) => {
            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "reading the last batch headers to rebuild the producer windows; its idempotent producers start afresh");
        }
    }
    table
}

fn not_on_replicated(topic: &str, partition: u32, what: &'static str) -> Error {
    Error::NotOnReplicated {
        topic: topic.to_owned(),
        partition,
        what,
    }
}

fn unknown(topic: &str) -> Error {
    // The bridge routed it here, so the partition existed: the topic was deleted meanwhile.
    Error::UnknownTopic {
        topic: topic.to_owned(),
    }
}

impl<E: Engine, RT: AsyncRuntime> Shard<E, RT> {
    /// Serves `first` and whatever is queued behind it on both queues (the shard's local
    /// messages first), up to `flush_bytes_max` of append payload and `queue_depth_max`
    /// requests, then flushes: client appends and Raft appends share the flush's syncs.
    /// Returns the reply of a `Shutdown` met on the way (everything before it is served and
    /// flushed).
    async fn serve_group(
        &mut self,
        first: First<RT>,
        rx: &QueueReceiver,
        local_rx: &flume::Receiver<Local<RT>>,
    ) -> Option<Reply<()>> {
        self.stats.queue_depth.store(rx.len() as u64, Relaxed);
        let mut pending = Vec::new();
        let mut raft_flushes: RaftFlushes<RT> = Vec::new();
        let mut payload_bytes = 0u64;
        let mut served = 0usize;
        let mut next = match first {
            First::Command(cmd) => Some(cmd),
            First::Local(local) => {
                served += 1;
                self.serve_local(local, &mut raft_flushes).await;
                rx.try_recv()
            }
        };
        loop {
            while let Ok(local) = local_rx.try_recv() {
                served += 1;
                self.serve_local(local, &mut raft_flushes).await;
            }
            let Some(cmd) = next else {
                break;
            };
            served += 1;
            match cmd {
                Command::Append {
                    topic,
                    partition,
                    batch,
                    reply,
                    trace,
                } => {
                    trace.stamp(Hop::Picked);
                    payload_bytes += batch.record_bytes();
                    self.append((topic, partition), batch, reply, trace, &mut pending)
                        .await;
                }
                Command::Read {
                    topic,
                    partition,
                    from_offset,
                    max_bytes,
                    max_records,
                    reply,
                } => {
                    let result = self
                        .read(&(topic, partition), from_offset, max_bytes, max_records)
                        .await;
                    send(reply, result);
                }
                Command::Raft { envelope, reply } => self.deliver(envelope, reply),
                Command::Shutdown { reply } => {
                    self.flush(pending, raft_flushes).await;
                    return Some(reply);
                }
                other => {
                    self.flush(
                        std::mem::take(&mut pending),
                        std::mem::take(&mut raft_flushes),
                    )
                    .await;
                    self.serve_admin(other).await;
                }
            }
            if payload_bytes >= self.options.flush_bytes_max
                || served >= self.options.queue_depth_max
            {
                break;
            }
            next = rx.try_recv();
        }
        self.flush(pending, raft_flushes).await;
        None
    }

    /// Serves one message of the shard's own tasks. A Raft append is written here and its
    /// `IOFlushed` joins `raft_flushes`, called after the flush that makes it durable.
    async fn serve_local(&mut self, local: Local<RT>, raft_flushes: &mut RaftFlushes<RT>) {
        match local {
            Local::Op(op) => {
                let key = op.key().clone();
                let Some(mut p) = self.partitions.get_mut(&key) else {
                    op.refuse(shard_stopped);
                    return;
                };
                if matches!(op, LogOp::Install { .. }) {
                    // The entries the snapshot covers are never applied here: this replica's
                    // producer windows would miss them, so its producers start afresh.
                    p.producers.clear();
                }
                if let LogOp::CaughtUp { generation, .. } = &op
                    && !matches!(&p.replication, Replication::Running(g) if g.generation() == *generation)
                {
                    tracing::debug!(shard = self.id, topic = %key.0, partition = key.1, "a group stopped since it caught up; its rejoin marker stays");
                    return;
                }
                let served = raft_store::serve(&mut p.log, op).await;
                // Rare: a stop needs the whole shard, and the partition is looked up again.
                let then = if p.log.take_corrupt_read() {
                    Some(AfterStop::Repair)
                } else if matches!(served, Served::WriteFailed) {
                    Some(AfterStop::Restart)
                } else {
                    None
                };
                if let Some(then) = then {
                    match then {
                        AfterStop::Repair => self.stop_group(&key, then),
                        AfterStop::Restart => self.restart_after_failed_write(&key),
                    }
                    p = self
                        .partitions
                        .get_mut(&key)
                        .expect("a stop keeps its partition");
                }
                match served {
                    Served::Done | Served::WriteFailed => {}
                    Served::Flush(flushed) => raft_flushes.push((key, flushed)),
                    Served::Applied {
                        term,
                        index,
                        next_offset,
                        context,
                        truncate_before,
                        producers,
                    } => {
                        let now = now_ms();
                        for batch in producers {
                            let written = Written {
                                base_offset: batch.applied.base_offset,
                                count: batch.applied.count,
                            };
                            let stamp = batch.stamp;
                            p.producers
                                .written(stamp.producer_id, stamp.sequence, written, now);
                        }
                        let mark = p.applied.get_or_insert_with(AppliedMark::default);
                        (mark.term, mark.index, mark.next_offset) = (term, index, next_offset);
                        if let Some(context) = context {
                            mark.context = context;
                        }
                        p.applied_unsaved = true;
                        if let Some(before) = truncate_before {
                            p.purge_below(&key, before).await;
                        }
                    }
                }
                // A commit raises the mark, a truncation may lower it; publishing an
                // unchanged mark wakes nobody.
                p.publish();
            }
            Local::Started { key, group, token } => {
                let current = self.partitions.get_mut(&key).filter(|p| {
                    matches!(&p.replication, Replication::Starting(t) if Rc::as_ptr(t) == token.as_ptr())
                });
                let Some(p) = current else {
                    // Closed while it started, or started again since: stop it again.
                    if let Ok(group) = group {
                        drop(RT::spawn(async move { group.shutdown().await }));
                    }
                    return;
                };
                match group {
                    Ok(group) => p.replication = Replication::Running(group),
                    Err(reason) => {
                        tracing::debug!(shard = self.id, topic = %key.0, partition = key.1, %reason, "a Raft group did not start");
                        if !self.repair_damaged(&key).await {
                            // Nothing to cut: start it again after a pause (a full disk that
                            // refused its vote, a peer that answered nothing), rather than
                            // leave the partition read-only until the server restarts.
                            tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, %reason, "a Raft group did not start; starting it again shortly");
                            self.restart_later(key);
                        }
                    }
                }
            }
            Local::Abandoned { key, stamp } => {
                if let Some(p) = self.partitions.get_mut(&key) {
                    p.producers.abandon(stamp.producer_id, stamp.sequence);
                }
            }
            Local::Stopped { key, then } => {
                if !self.partitions.contains_key(&key) {
                    return;
                }
                match then {
                    AfterStop::Restart => self.restart_after_sync(key).await,
                    // Nothing to cut after all (or the cut failed, logged): the group starts
                    // again as it was, rather than leaving the partition without one.
                    AfterStop::Repair => {
                        if !self.repair_damaged(&key).await {
                            self.restart_group(&key).await;
                        }
                    }
                }
            }
        }
    }

    /// Hands a Raft message from another node to its partition's group.
    fn deliver(
        &mut self,
        envelope: pb::RaftEnvelope,
        reply: tokio::sync::oneshot::Sender<pb::RaftEnvelope>,
    ) {
        let key: Key = (Arc::from(envelope.topic.as_str()), envelope.partition);
        let reason = match self.partitions.get(&key).map(|p| &p.replication) {
            Some(Replication::Running(_)) if self.refuses_replication(&envelope) => {
                "this replica's disk is full (below half of storage.disk_free_bytes_min); it catches up once space is freed"
            }
            Some(Replication::Running(group)) => return group.deliver(envelope, reply),
            None => "no replica of this partition here",
            Some(Replication::Starting(_)) => "the replica is starting",
            Some(Replication::Solo) => "the partition is not replicated here",
        };
        if reply
            .send(crate::raft::wire::refusal(envelope, reason))
            .is_err()
        {
            tracing::trace!("transport left before the refusal");
        }
    }

    /// A follower refuses entries it has no room for before its group sees them: a write
    /// that failed in the group's storage would stop the group until a restart, a refusal
    /// only makes the leader retry later (the peer looks unreachable), and the follower
    /// catches up once space is back. Heartbeats (no entries) always pass.
    fn refuses_replication(&self, envelope: &pb::RaftEnvelope) -> bool {
        let Some(pb::raft_envelope::Body::Append(request)) = &envelope.body else {
            return false;
        };
        if request.entries.is_empty() {
            return false;
        }
        let bytes: usize = request
            .entries
            .iter()
            .map(prost::Message::encoded_len)
            .sum();
        match self.space.check_replica(bytes as u64) {
            Ok(()) => false,
            Err(e) => {
                tracing::debug!(shard = self.id, topic = %envelope.topic, partition = envelope.partition, error = %e, "refusing replicated entries");
                true
            }
        }
    }

    async fn append(
        &mut self,
        key: Key,
        batch: CheckedBatch,
        reply: Reply<AppendAck>,
        trace: Trace,
        pending: &mut Vec<Pending>,
    ) {
        let Some(p) = self.partitions.get_mut(&key) else {
            return send(reply, Err(unknown(&key.0)));
        };
        let leading = match leading_group(&p.replication, self.raft.as_ref(), &key) {
            Ok(leading) => leading,
            // Refused before anything changes; the client follows the hint.
            Err(e) => return send(reply, Err(e)),
        };
        let stamp = batch.producer();
        if let Some(stamp) = stamp {
            match admit_producer(&mut p.producers, p.applied.as_ref(), leading, &key, stamp) {
                Ok(Admit::Write) => {}
                Ok(Admit::Duplicate(written)) => {
                    return answer_duplicate(p.log.high_watermark(), key, written, reply, pending);
                }
                Err(e) => return send(reply, Err(e)),
            }
        }
        // The free-space floor, before anything is written or proposed.
        if let Err(e) = self.space.check_append(batch.batch_bytes() as u64) {
            if let Some(stamp) = stamp {
                p.producers.abandon(stamp.producer_id, stamp.sequence);
            }
            return send(reply, Err(Error::storage(&key.0, key.1, e)));
        }
        if let Some(group) = leading {
            let stats = self.stats.clone();
            let raft = self.raft.clone();
            let abandon = stamp.map(|stamp| (self.local.clone(), stamp));
            let (topic, partition) = key;
            group.propose(
                Proposal::Records(batch),
                Box::new(move |result| {
                    let answer = match result {
                        Ok(applied) => {
                            ShardStats::add(&stats.appends, 1);
                            ShardStats::add(&stats.records, u64::from(applied.count));
                            Ok(AppendAck {
                                partition,
                                base_offset: applied.base_offset,
                                count: applied.count,
                            })
                        }
                        Err(e) => {
                            let key = (topic, partition);
                            if let Some((local, stamp)) = abandon {
                                abandoned(&local, &key, stamp);
                            }
                            Err(propose_error(raft.as_ref(), &key, e))
                        }
                    };
                    send(reply, answer);
                }),
            );
            return;
        }
        match p.log.append_checked(&batch).await {
            Ok(base_offset) => {
                let count = batch.len() as u32;
                if let Some(stamp) = stamp {
                    let written = Written { base_offset, count };
                    p.producers
                        .written(stamp.producer_id, stamp.sequence, written, now_ms());
                }
                trace.stamp(Hop::Encoded);
                pending.push(Pending {
                    key,
                    base_offset,
                    count,
                    reply,
                    trace,
                });
            }
            // Refused by a limit (nothing changed), or failed (the log is now poisoned and
            // the earlier appends of this group to it will fail at the flush).
            Err(e) => {
                if let Some(stamp) = stamp {
                    p.producers.abandon(stamp.producer_id, stamp.sequence);
                }
                send(reply, Err(Error::storage(&key.0, key.1, e)));
            }
        }
    }

    /// Makes the group's appends readable (and durable under `Fsync`) with one sync per
    /// touched partition, then acknowledges them in arrival order.
    async fn flush(&mut self, pending: Vec<Pending>, raft_flushes: RaftFlushes<RT>) {
        if pending.is_empty() && raft_flushes.is_empty() {
            return;
        }
        // The touched partitions, with the records the group appended to each.
        let mut touched: HashMap<Key, u64> = HashMap::new();
        for item in &pending {
            *touched.entry(item.key.clone()).or_default() += u64::from(item.count);
        }
        for (key, _) in &raft_flushes {
            touched.entry(key.clone()).or_default();
        }
        let outcomes = self.commit_partitions(touched).await;
        for (key, outcome) in &outcomes {
            if let (Err(_), Some(p)) = (&outcome.result, self.partitions.get_mut(key))
                && p.is_solo()
            {
                // The appends this failure fails are not in the log for good: a full disk is
                // healed by cutting back to this mark, any other failure by a restart that
                // rebuilds the table from the log. A producer's retry of one of them must be
                // written again, not answered as a duplicate.
                let kept = p.log.durable_end().max(p.log.high_watermark());
                p.producers.forget_from(kept);
            }
        }
        ShardStats::add(&self.stats.flushes, 1);
        self.stats
            .fsyncs
            .store(self.engine.fdatasync_count(), Relaxed);
        for item in pending {
            let outcome = outcomes
                .get(&item.key)
                .expect("every touched partition has an outcome");
            let result = self.acknowledge(&item, outcome);
            item.trace.set_io(&outcome.io);
            item.trace.stamp(Hop::AckSent);
            send(item.reply, result);
        }
        // Raft learns its entries are durable here, after the sync, all of a group at once.
        for (key, flushed) in raft_flushes {
            let outcome = outcomes
                .get(&key)
                .expect("every touched partition has an outcome");
            let failed = outcome.result.is_err();
            flushed.io_completed(
                outcome
                    .result
                    .clone()
                    .map_err(|e| std::io::Error::other(e.to_string())),
            );
            if failed {
                self.restart_after_failed_write(&key);
            }
        }
    }

    /// Syncs (under `Fsync`) or just commits the touched partitions, all at once: their
    /// syncs are independent files, so on io_uring a group that touched several partitions
    /// waits for one round of device trips, not one per partition. (The portable engine's
    /// sync is a blocking call: there they still run one after another.) Each partition is
    /// taken out of the map while its commit is in flight and put back after; nothing else
    /// reaches the map meanwhile (`&mut self`). With hop tracing on, every outcome carries
    /// the stamps of the syncs together (the last one started, the last one done).
    async fn commit_partitions(
        &mut self,
        touched: HashMap<Key, u64>,
    ) -> HashMap<Key, FlushOutcome> {
        let mut taken: Vec<(Key, u64, Partition<E, RT>)> = touched
            .into_iter()
            .map(|(key, records)| {
                let p = self
                    .partitions
                    .remove(&key)
                    .expect("a partition with pending appends is open (closes flush first)");
                (key, records, p)
            })
            .collect();
        let durability = self.options.durability;
        let metrics = &self.metrics;
        let commits = taken.iter_mut().map(|(key, records, p)| {
            commit_partition(p, durability, |took| {
                metrics.synced(&key.0, key.1, took, *records)
            })
        });
        let results = futures::future::join_all(commits).await;
        let io = hops::take_io_stamps();
        let mut outcomes = HashMap::with_capacity(taken.len());
        for ((key, _, p), result) in taken.into_iter().zip(results) {
            outcomes.insert(
                key.clone(),
                FlushOutcome {
                    result,
                    high_watermark: p.log.high_watermark(),
                    io,
                },
            );
            self.partitions.insert(key, p);
        }
        outcomes
    }

    /// The reply to one append of a flushed group. A roll inside the group seals (syncs) the
    /// segment and commits the appends before it: those are durable and readable whatever
    /// failed after, so they are acknowledged, not failed.
    fn acknowledge(&self, item: &Pending, outcome: &FlushOutcome) -> Result<AppendAck> {
        let high_watermark = outcome.high_watermark;
        let committed = item.base_offset + u64::from(item.count) <= high_watermark;
        match &outcome.result {
            Ok(()) => assert!(
                committed,
                "append {}..+{} of {}/{} flushed but above the high watermark {high_watermark}",
                item.base_offset, item.count, item.key.0, item.key.1
            ),
            Err(e) if !committed => {
                return Err(Error::Storage {
                    topic: item.key.0.to_string(),
                    partition: item.key.1,
                    source: e.clone(),
                });
            }
            Err(_) => {}
        }
        ShardStats::add(&self.stats.appends, 1);
        ShardStats::add(&self.stats.records, u64::from(item.count));
        Ok(AppendAck {
            partition: item.key.1,
            base_offset: item.base_offset,
            count: item.count,
        })
    }

    async fn read(
        &mut self,
        key: &Key,
        from_offset: u64,
        max_bytes: u64,
        max_records: usize,
    ) -> Result<ReadResult> {
        ShardStats::add(&self.stats.reads, 1);
        let mut p = self
            .partitions
            .get_mut(key)
            .ok_or_else(|| unknown(&key.0))?;
        if !p.is_solo() && from_offset > p.log.end_offset() {
            // Another replica may hold that offset: this one is behind, not the reader wrong.
            let leader = match &p.replication {
                Replication::Running(group) => group.leader().0,
                Replication::Solo | Replication::Starting(_) => None,
            };
            return Err(Error::ReplicaBehind {
                topic: key.0.to_string(),
                partition: key.1,
                end_offset: p.log.end_offset(),
                leader,
                leader_addr: leader_addr(self.raft.as_ref(), leader),
            });
        }
        let read = p
            .log
            .read(from_offset, max_bytes.min(self.options.read_bytes_max))
            .await;
        if p.log.take_corrupt_read() {
            self.stop_group(key, AfterStop::Repair);
            p = self
                .partitions
                .get_mut(key)
                .expect("a stop keeps its partition");
        }
        let batches = read.map_err(|e| Error::storage(&key.0, key.1, e))?;
        let limit = if max_records == 0 {
            usize::MAX
        } else {
            max_records
        };
        // Control batches (Raft's own entries) take offsets but are never served: a read
        // steps over them, so `next_offset` moves past them even when no record comes back.
        let mut records: Vec<Record> = Vec::new();
        let mut next_offset = from_offset;
        'batches: for batch in batches {
            if batch.header.flags & storage::FLAG_CONTROL != 0 {
                next_offset = batch.header.next_offset();
                continue;
            }
            for record in batch.records {
                if records.len() == limit {
                    break 'batches;
                }
                next_offset = record.offset + 1;
                records.push(record);
            }
        }
        Ok(ReadResult {
            records,
            next_offset,
            high_watermark: p.log.high_watermark(),
            start_offset: p.log.start_offset(),
        })
    }

    /// Truncates a replicated partition below `before_offset` through its group: on the
    /// leader, a truncate command is proposed, and `reply` gets the offset the log will start
    /// at (the first batch that holds an offset at or past `before_offset`) once the command
    /// is committed; every replica then purges up to there as it applies it. Elsewhere it is
    /// refused with the leader's name, changing nothing.
    async fn truncate_replicated(&mut self, key: Key, before_offset: u64, reply: Reply<u64>) {
        let Some(p) = self.partitions.get_mut(&key) else {
            return send(reply, Err(unknown(&key.0)));
        };
        let group = match leading_group(&p.replication, self.raft.as_ref(), &key) {
            Ok(Some(group)) => group,
            Ok(None) => unreachable!("called for replicated partitions only"),
            Err(e) => return send(reply, Err(e)),
        };
        let (start, end) = (p.log.start_offset(), p.log.high_watermark());
        if before_offset > end {
            let e = storage::Error::OffsetOutOfRange {
                offset: before_offset,
                start,
                end,
            };
            return send(reply, Err(Error::storage(&key.0, key.1, e)));
        }
        let replication_error = |reason: String| Error::Replication {
            topic: key.0.to_string(),
            partition: key.1,
            reason,
        };
        let new_start = match raft_store::cut_below(&mut p.log, before_offset).await {
            Ok(cut) => cut.map_or(start, |(_, next)| next),
            Err(e) => return send(reply, Err(replication_error(e.to_string()))),
        };
        let command = match raft_store::truncate_command(p.log.config(), before_offset) {
            Ok(command) => command,
            Err(e) => return send(reply, Err(replication_error(e.to_string()))),
        };
        let raft = self.raft.clone();
        group.propose(
            Proposal::Command(command),
            Box::new(move |result| {
                send(
                    reply,
                    result
                        .map(|_| new_start)
                        .map_err(|e| propose_error(raft.as_ref(), &key, e)),
                );
            }),
        );
    }

    async fn serve_admin(&mut self, cmd: Command) {
        // Truncations and deletions free space: the floor reads the file system again at its
        // next check, so that appends resume at once. Other admin calls (a describe) leave
        // the sample alone, so they cost the next append no syscall.
        if matches!(
            cmd,
            Command::Truncate { .. }
                | Command::TruncateSuffix { .. }
                | Command::Close { remove: true, .. }
        ) {
            self.space.freed();
        }
        match cmd {
            Command::Truncate {
                topic,
                partition,
                before_offset,
                reply,
            } => {
                let key = (topic.clone(), partition);
                let result = match self.partitions.get_mut(&key) {
                    None => Err(unknown(&topic)),
                    Some(p) if !p.is_solo() => {
                        // Through the group, as a command every replica applies; answered
                        // once it is committed.
                        return self.truncate_replicated(key, before_offset, reply).await;
                    }
                    Some(p) => p
                        .log
                        .truncate_prefix(before_offset)
                        .await
                        .map(|()| p.log.start_offset())
                        .map_err(|e| Error::storage(&topic, partition, e)),
                };
                send(reply, result);
            }
            Command::TruncateSuffix {
                topic,
                partition,
                from_offset,
                reply,
            } => {
                let result = match self.partitions.get_mut(&(topic.clone(), partition)) {
                    None => Err(unknown(&topic)),
                    Some(p) if !p.is_solo() => {
                        Err(not_on_replicated(&topic, partition, "a suffix truncation"))
                    }
                    Some(p) => {
                        let cut = p.log.truncate_suffix(from_offset).await;
                        p.producers.forget_from(p.log.end_offset());
                        // The high watermark may have dropped to the cut.
                        p.publish();
                        cut.map_err(|e| Error::storage(&topic, partition, e))
                    }
                };
                send(reply, result);
            }
            Command::Describe {
                topic,
                partitions,
                reply,
            } => {
                let result = partitions
                    .into_iter()
                    .map(|id| {
                        let p = self
                            .partitions
                            .get(&(topic.clone(), id))
                            .ok_or_else(|| unknown(&topic))?;
                        let (leader, leader_epoch) = match &p.replication {
                            Replication::Running(group) => group.leader_and_term(),
                            Replication::Solo | Replication::Starting(_) => (None, 0),
                        };
                        Ok(PartitionInfo {
                            id,
                            start_offset: p.log.start_offset(),
                            end_offset: p.log.end_offset(),
                            high_watermark: p.log.high_watermark(),
                            shard: self.id as u32,
                            segments: p.log.segment_count() as u32,
                            size_bytes: p.log.size_bytes(),
                            replicas: Vec::new(),
                            leader,
                            leader_epoch,
                            local: true,
                        })
                    })
                    .collect();
                send(reply, result);
            }
            Command::Open { partitions, reply } => {
                let result = self.open(partitions).await;
                send(reply, result);
            }
            Command::ChangeVoters {
                topic,
                partition,
                voters,
                reply,
            } => {
                let key = (topic.clone(), partition);
                let Some(p) = self.partitions.get(&key) else {
                    return send(reply, Err(unknown(&topic)));
                };
                let group = match leading_group(&p.replication, self.raft.as_ref(), &key) {
                    Ok(Some(group)) => group,
                    Ok(None) => {
                        return send(
                            reply,
                            Err(Error::NotReplicated {
                                topic: topic.to_string(),
                                partition,
                            }),
                        );
                    }
                    Err(e) => return send(reply, Err(e)),
                };
                let raft = self.raft.clone();
                group.change_voters(
                    voters,
                    Box::new(move |result| {
                        send(
                            reply,
                            result.map_err(|e| propose_error(raft.as_ref(), &key, e)),
                        )
                    }),
                );
            }
            Command::Close {
                topic,
                partitions,
                remove,
                reply,
            } => {
                let result = self.close(&topic, &partitions, remove).await;
                send(reply, result);
            }
            Command::Append { .. }
            | Command::Read { .. }
            | Command::Raft { .. }
            | Command::Shutdown { .. } => {
                unreachable!("served by serve_group")
            }
        }
    }

    /// Opens partitions; on a failure closes the ones this call opened and reports it. A
    /// partition already open here is refused (the open log is left as it is): the bridge
    /// got out of step, and answering beats taking the shard's other partitions down.
    async fn open(&mut self, partitions: Vec<OpenPartition>) -> Result<()> {
        let mut opened: Vec<Key> = Vec::new();
        for open in partitions {
            let key = (open.topic.clone(), open.partition);
            let opening = if self.partitions.contains_key(&key) {
                tracing::error!(shard = self.id, topic = %key.0, partition = key.1, "asked to open a partition twice");
                Err(Error::AlreadyOpen {
                    topic: key.0.to_string(),
                    partition: key.1,
                    shard: self.id,
                })
            } else {
                Log::open(self.engine.clone(), &open.dir, self.options.log.clone())
                    .await
                    .map_err(|e| Error::storage(&open.topic, open.partition, e))
            };
            match opening {
                Ok((mut log, _report)) => {
                    let applied = match log.applied_mark().await {
                        Ok(mark) => mark,
                        Err(e) => {
                            tracing::warn!(topic = %key.0, partition = key.1, error = %e, "an unreadable applied mark; replaying the log");
                            None
                        }
                    };
                    let origin = Origin::of(&open);
                    let replication = self
                        .start_group(&key, &open.replicas, origin, applied.clone(), &mut log)
                        .await;
                    // Below the commit mark only: a replicated partition's uncommitted tail
                    // may still be cut, and its group records what it applies from there.
                    let producers = rebuild_producers(&mut log, self.options.producers, &key).await;
                    let p = Partition {
                        log,
                        high_watermark: open.high_watermark,
                        unsynced: false,
                        replication,
                        applied,
                        applied_unsaved: false,
                        producers,
                        seen_leader: (None, 0),
                        origin,
                        opened_replicas: open.replicas.clone(),
                        damage_cut: false,
                    };
                    p.publish();
                    self.partitions.insert(key.clone(), p);
                    opened.push(key);
                }
                Err(e) => {
                    for key in opened {
                        if let Some(p) = self.partitions.remove(&key)
                            && let Err(close_err) = p.log.close().await
                        {
                            tracing::error!(error = %close_err, "closing a log after a failed open");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// After a replica's Raft group failed to start: when a sealed segment of its log holds
    /// a batch that does not check out (a flipped bit, a torn sector: the group could not
    /// read its entries), cuts the log where the good batches end and starts the group again
    /// as a replica that lost data ([`GroupStart::Rejoin`]): it fetches what it dropped from
    /// its leader, and neither votes nor stands until it holds what the leader committed
    /// (a voter without committed entries could elect a leader that lacks them). Once per
    /// open. `false` when there was nothing to repair, or the repair failed (logged).
    async fn repair_damaged(&mut self, key: &Key) -> bool {
        let Some(mut p) = self.partitions.remove(key) else {
            return false;
        };
        let repaired = if p.damage_cut || p.is_solo() {
            false
        } else {
            p.damage_cut = true;
            self.cut_damage(key, &mut p).await
        };
        self.partitions.insert(key.clone(), p);
        repaired
    }

    /// After a write a running group asked for failed (answered with the error, so openraft
    /// stops the group): when the log is not poisoned (the failure changed nothing on disk:
    /// out of space), the group is started again after a pause, to rejoin once it can
    /// write; a poisoned log needs the server restarted, as its error says.
    fn restart_after_failed_write(&mut self, key: &Key) {
        let Some(p) = self.partitions.get(key) else {
            return;
        };
        if let Some(e) = p.log.poison_error().filter(|e| !e.is_out_of_space()) {
            tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "a write of this replica's Raft group failed and poisoned its log: the group stays stopped until the server restarts");
            return;
        }
        tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, "a write of this replica's Raft group failed (see the error above); starting the group again shortly");
        self.stop_group(key, AfterStop::Restart);
    }

    /// Stops `key`'s running group in a task of its own (the shard keeps serving its last
    /// log operations), then reports [`Local::Stopped`] with `then`.
    ///
    /// `AfterStop::Repair`: a read of the log met a batch that does not check out (the read
    /// was refused `Corrupt`; nothing damaged is served): damage below what the group read
    /// when it started, which the start could not find. A leader gives up its leadership
    /// (another replica, which holds the entries, is elected), then
    /// [`Shard::repair_damaged`] cuts the log there and starts the group again to fetch the
    /// rest from the leader. Once per open, as that repair; never for a partition with one
    /// replica (its data has no other copy: the read stays refused).
    ///
    /// `AfterStop::Restart`: the group is started again as it was, after a pause of two
    /// election timeouts (so a disk still full costs one failed start per pause, not a spin).
    fn stop_group(&mut self, key: &Key, then: AfterStop) {
        let Some(p) = self.partitions.get_mut(key) else {
            return;
        };
        let repaired_already = then == AfterStop::Repair && p.damage_cut;
        if repaired_already || !matches!(p.replication, Replication::Running(_)) {
            return;
        }
        let Replication::Running(group) =
            std::mem::replace(&mut p.replication, Replication::Starting(Rc::new(())))
        else {
            unreachable!("matched above");
        };
        if then == AfterStop::Repair {
            tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, "a read met a stored batch that does not check out: stopping this replica's Raft group to cut its log there and fetch the rest again from the leader");
        }
        let pause = match then {
            AfterStop::Restart => self.restart_pause(),
            AfterStop::Repair => Duration::ZERO,
        };
        let (key, local) = (key.clone(), self.local.clone());
        drop(RT::spawn(async move {
            group.shutdown().await;
            report_stopped(local, key, then, pause).await;
        }));
    }

    /// After a full disk stopped `key`'s group: cuts back the unsynced tail the full disk
    /// left and syncs the rest (a group must start only from durable entries, which it
    /// reports as held), then starts the group again; while there is still no space, tries
    /// again after another pause.
    async fn restart_after_sync(&mut self, key: Key) {
        let Some(p) = self.partitions.get_mut(&key) else {
            return;
        };
        let end_before = p.log.end_offset();
        match p.log.sync().await {
            Ok(_) => {
                if p.log.end_offset() < end_before {
                    let mut p = self.partitions.remove(&key).expect("looked up above");
                    self.refit_after_cut(&key, &mut p).await;
                    self.partitions.insert(key.clone(), p);
                }
                self.restart_group(&key).await;
            }
            Err(e) if e.is_out_of_space() => {
                tracing::debug!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "still no space to start the Raft group again");
                self.restart_later(key);
            }
            Err(e) => {
                tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "syncing a log before starting its Raft group again failed: the group stays stopped until the server restarts");
            }
        }
    }

    /// After `p`'s log was cut back: an applied mark past the new end no longer fits it
    /// (the saved one is read again, and ignored if it does not fit either: replayed), and
    /// the producer windows are rebuilt from what the log now holds.
    async fn refit_after_cut(&self, key: &Key, p: &mut Partition<E, RT>) {
        let end = p.log.end_offset();
        if p.applied.as_ref().is_some_and(|m| m.next_offset > end) {
            p.applied = p.log.applied_mark().await.unwrap_or(None);
            p.applied_unsaved = false;
        }
        p.producers = rebuild_producers(&mut p.log, self.options.producers, key).await;
    }

    /// How long a group stopped by a failed write waits before it starts again: two
    /// election timeouts.
    fn restart_pause(&self) -> Duration {
        self.raft.as_ref().map_or(Duration::ZERO, |raft| {
            Duration::from_millis(2 * raft.config.election_timeout_max)
        })
    }

    /// Has `key`'s group started again (through [`Shard::restart_after_sync`]) after
    /// [`Shard::restart_pause`].
    fn restart_later(&self, key: Key) {
        drop(RT::spawn(report_stopped(
            self.local.clone(),
            key,
            AfterStop::Restart,
            self.restart_pause(),
        )));
    }

    /// Starts a stopped group of `key` again as it was opened (its log says how).
    async fn restart_group(&mut self, key: &Key) {
        let Some(mut p) = self.partitions.remove(key) else {
            return;
        };
        let replicas = p.opened_replicas.clone();
        p.replication = self
            .start_group(
                key,
                &replicas,
                p.origin.again(),
                p.applied.clone(),
                &mut p.log,
            )
            .await;
        p.publish();
        self.partitions.insert(key.clone(), p);
    }

    /// The work of [`Shard::repair_damaged`] on a partition taken out of the map.
    async fn cut_damage(&self, key: &Key, p: &mut Partition<E, RT>) -> bool {
        let damage = match p.log.find_damage().await {
            Ok(Some(offset)) => offset,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "checking a log for damage");
                return false;
            }
        };
        let end = p.log.end_offset();
        tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, damage, end, "a sealed segment holds a batch that does not check out: dropping the log from there and fetching it again from the leader, without voting until this replica has caught up");
        // The marker first: a crash after the cut must not bring this replica back as a voter.
        if let Err(e) = p.log.set_rejoin_marker(damage).await {
            tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "marking a damaged log as rejoining; its log is not cut");
            return false;
        }
        if let Err(e) = p.log.truncate_suffix(damage).await {
            tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "cutting a damaged log");
            return false;
        }
        self.refit_after_cut(key, p).await;
        p.replication = self
            .start_group(
                key,
                &p.opened_replicas,
                p.origin.again(),
                p.applied.clone(),
                &mut p.log,
            )
            .await;
        p.publish();
        true
    }

    /// Starts the Raft group of a replicated partition in a task of its own (it reports back
    /// on the local queue), and lowers the commit mark to the start: readers see only what
    /// the group applies. A solo partition (one replica) starts nothing; a replicated one is
    /// never opened on a node without a cluster (its route refuses it with `OutsideCluster`).
    ///
    /// A log with the rejoin marker starts its group as `Rejoin`; so does an empty log
    /// outside its partition's creation (lost or wiped data), which gets the marker first.
    async fn start_group(
        &self,
        key: &Key,
        replicas: &[u64],
        origin: Origin,
        applied: Option<AppliedMark>,
        log: &mut Log<E>,
    ) -> Replication<RT> {
        let Origin {
            new_group,
            joins,
            incarnation,
        } = origin;
        let Some(raft) = self.raft.clone().filter(|_| replicas.len() > 1) else {
            assert!(
                replicas.len() <= 1,
                "shard {}: {}/{} with replicas {replicas:?} was opened on a node without a cluster; \
                 served alone, its log would part from its replicas'",
                self.id,
                key.0,
                key.1
            );
            return Replication::Solo;
        };
        // Readers see what the group had applied before the restart (committed entries never
        // change), and nothing more until it applies again.
        log.keep_tail(raft.tail_cache_bytes_max);
        let commit = applied
            .as_ref()
            .map_or(log.start_offset(), |mark| mark.next_offset);
        log.set_commit(commit)
            .expect("an applied mark is checked to be within the log");
        let start = match self.group_start(key, (new_group, joins), log).await {
            Ok(start) => start,
            Err(e) => {
                // Without the marker, a restart part-way through the catch-up would bring
                // this replica back as a voter: no group until it is written.
                tracing::error!(shard = self.id, topic = %key.0, partition = key.1, error = %e, "persisting the rejoin marker of a replica that lost data failed; its Raft group starts once it can be written");
                self.restart_later(key.clone());
                return Replication::Starting(Rc::new(()));
            }
        };
        let token = Rc::new(());
        let wanted = Rc::downgrade(&token);
        let (key, replicas, local) = (key.clone(), replicas.to_vec(), self.local.clone());
        let ops = {
            let local = local.clone();
            raft_store::OpSender::new(move |op| local.send(Local::Op(op)).is_ok())
        };
        drop(RT::spawn(async move {
            let group = Group::start(
                key.clone(),
                incarnation,
                &replicas,
                start,
                applied.as_ref(),
                &raft,
                (ops, &wanted),
            )
            .await;
            let started = Local::Started {
                key,
                group,
                token: wanted,
            };
            if local.send(started).is_err() {
                tracing::debug!("a Raft group started after its shard stopped");
            }
        }));
        Replication::Starting(token)
    }

    /// How `key`'s group starts, from its log (see [`GroupStart`]). A log with the rejoin
    /// marker rejoins. So does a log found to have lost data, which gets the marker first:
    /// an empty log outside its partition's creation (a wiped directory), or one whose saved
    /// applied mark lies past its end (entries it had applied are gone: damage cut at open).
    /// The applied mark is saved lazily, so the second catches only part of such losses.
    async fn group_start(
        &self,
        key: &Key,
        (new_group, joins): (bool, bool),
        log: &mut Log<E>,
    ) -> std::result::Result<GroupStart, storage::Error> {
        // A replica moved onto this node never voted in its group here: nothing to recover.
        let lost = if joins {
            GroupStart::Join
        } else {
            GroupStart::Rejoin
        };
        if let Some(lost_from) = log.rejoin_marker() {
            tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, lost_from, "this replica lost data and has not caught up since (its rejoin marker): catching up from the leader before it may vote");
            return Ok(lost);
        }
        let end = log.end_offset();
        if end == 0 {
            if new_group {
                return Ok(GroupStart::New);
            }
            tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, "a replica with an empty log outside its creation (lost or wiped data): catching up from the leader before it may vote");
            log.set_rejoin_marker(0).await?;
            return Ok(lost);
        }
        let applied_end = log
            .mark(MarkFile::Applied)
            .await
            .ok()
            .flatten()
            .map(|m| m.next_offset);
        if let Some(applied_end) = applied_end.filter(|&applied_end| applied_end > end) {
            tracing::warn!(shard = self.id, topic = %key.0, partition = key.1, applied_end, end, "this replica's log ends before entries it had applied (lost at open): catching up from the leader before it may vote");
            log.set_rejoin_marker(end).await?;
            return Ok(lost);
        }
        Ok(GroupStart::Existing)
    }

    /// Closes (syncing) the given partitions of `topic`, removing their directories when
    /// asked. Partitions this shard does not hold are skipped. Returns the first error.
    async fn close(&mut self, topic: &Arc<str>, partitions: &[u32], remove: bool) -> Result<()> {
        // Their series go from the next scrape, whatever the close below meets.
        self.stats.replication.forget(topic, partitions);
        let mut first_error = None;
        for &partition in partitions {
            let key = (topic.clone(), partition);
            let Some(mut p) = self.partitions.remove(&key) else {
                continue;
            };
            if !remove {
                p.save_applied(&key).await;
            }
            let dir = p.log.dir().to_owned();
            if let Err(e) = p.log.close().await {
                first_error.get_or_insert(Error::storage(topic, partition, e));
            }
            if remove && let Err(e) = super::topics::remove_partition_dir(&dir) {
                first_error.get_or_insert(Error::Metadata {
                    op: "remove partition dir",
                    path: dir,
                    source: e,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn close_all(&mut self) -> Result<()> {
        self.stats.replication.clear();
        let mut first_error = None;
        for (key, mut p) in self.partitions.drain() {
            p.save_applied(&key).await;
            let (topic, partition) = key;
            if let Err(e) = p.log.close().await {
                tracing::error!(topic = %topic, partition, error = %e, "closing a log");
                first_error.get_or_insert(Error::storage(&topic, partition, e));
            }
        }
        self.stats
            .fsyncs
            .store(self.engine.fdatasync_count(), Relaxed);
        first_error.map_or(Ok(()), Err)
    }

    /// Stops every running Raft group before the logs close (a group whose log closes under
    /// it fails its pending I/O, loudly), serving the groups' last log operations meanwhile,
    /// for at most [`GROUP_STOP_GRACE`].
    async fn stop_groups<R: LoopRuntime<Rt = RT>>(
        &mut self,
        runtime: &R,
        local_rx: &flume::Receiver<Local<RT>>,
    ) {
        let running = std::rc::Rc::new(std::cell::Cell::new(0usize));
        for p in self.partitions.values_mut() {
            let Replication::Running(group) =
                std::mem::replace(&mut p.replication, Replication::Starting(Rc::new(())))
            else {
                continue;
            };
            running.set(running.get() + 1);
            let running = running.clone();
            drop(RT::spawn(async move {
                group.shutdown().await;
                running.set(running.get() - 1);
            }));
        }
        let deadline = Instant::now() + GROUP_STOP_GRACE;
        let mut raft_flushes = Vec::new();
        while running.get() > 0 && Instant::now() < deadline {
            match local_rx.try_recv() {
                Ok(local) => self.serve_local(local, &mut raft_flushes).await,
                Err(_) => runtime.sleep(GROUP_STOP_POLL).await,
            }
        }
        self.flush(Vec::new(), raft_flushes).await;
        if running.get() > 0 {
            tracing::warn!(shard = self.id, groups = running.get(), grace = ?GROUP_STOP_GRACE, "Raft groups still stopping; closing their logs anyway");
        }
    }

    /// Interval durability: syncs every partition committed since the last tick.
    async fn sync_unsynced(&mut self) {
        for ((topic, partition), p) in &mut self.partitions {
            if !p.unsynced || p.log.poisoned_by().is_some() {
                continue;
            }
            p.unsynced = false;
            if let Err(e) = p.log.sync().await {
                // The log is poisoned now; its next append reports it to the producer.
                tracing::error!(topic = %topic, partition, error = %e, "interval sync failed");
            }
            p.publish();
        }
        self.stats
            .fsyncs
            .store(self.engine.fdatasync_count(), Relaxed);
    }

    /// Has every running group look at its quiet (see `raft::quiet`), telling it which
    /// peers' links changed since the last look; counts the groups and the quiet ones.
    fn quiet_tick(&mut self, now: Instant) {
        let Some(raft) = &self.raft else {
            return;
        };
        let mut changed = Vec::new();
        for node in raft.transport.peers(raft.node_id) {
            let changes = raft.transport.link(raft.node_id, node).changes;
            if let Some(before) = self.link_changes.insert(node, changes)
                && before != changes
            {
                changed.push(node);
            }
        }
        let changed = |node: u64| changed.contains(&node);
        let (mut groups, mut quiet, mut leader_changes) = (0, 0, 0);
        for ((topic, partition), p) in &mut self.partitions {
            if let Replication::Running(group) = &p.replication {
                group.quiet_tick(now, &changed);
                groups += 1;
                quiet += u64::from(group.is_quiet());
                let seen = group.leader_and_term();
                if seen != p.seen_leader {
                    // A replica that stopped leading shows no lag from now on; the next
                    // maintenance fills in a new leader's.
                    self.stats.replication.leader_changed(
                        (topic.as_ref(), *partition),
                        seen,
                        group.leader().1,
                    );
                    let (leader, term) = seen;
                    if leader.is_some() && leader != p.seen_leader.0 {
                        leader_changes += 1;
                        tracing::info!(topic = %topic, partition, leader, term, "partition leader changed");
                    }
                    p.seen_leader = seen;
                }
            }
        }
        ShardStats::add(&self.stats.leader_changes, leader_changes);
        self.stats.raft_groups.store(groups, Relaxed);
        self.stats.raft_groups_quiet.store(quiet, Relaxed);
    }

    /// Rolls aged segments and applies retention on every healthy log, and publishes the
    /// replicated partitions' leaders, terms and followers' lag (see `lag`).
    async fn maintain(&mut self) {
        let now = now_ms();
        // Retention below, and whatever else freed space since: the floor reads the file
        // system again at its next check.
        self.space.freed();
        let mut replication = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            if let Replication::Running(group) = &p.replication {
                replication.push(
                    super::lag::partition_replication((topic, *partition), group, &mut p.log).await,
                );
            }
            let expired = p.producers.expire(now);
            if expired > 0 {
                tracing::debug!(topic = %topic, partition, expired, "idle producers forgotten");
            }
            // A log poisoned for good is left alone; one that ran out of space still applies
            // retention (that is how space comes back), but does not roll.
            match p.log.poison_error() {
                Some(storage::Error::Poisoned { .. }) => continue,
                Some(_) => {}
                None => {
                    if let Err(e) = p.log.roll_if_aged(now).await {
                        tracing::error!(topic = %topic, partition, error = %e, "rolling an aged segment");
                        continue;
                    }
                }
            }
            if !p.is_solo() {
                p.save_applied(&(topic.clone(), *partition)).await;
                if super::topics::is_internal_topic(topic) {
                    // Kept whole: see `is_internal_topic`.
                    continue;
                }
                // Retention goes through the group: it purges up to the last entry retention
                // would delete that is applied here (openraft snapshots, then purges).
                let Replication::Running(group) = &p.replication else {
                    continue;
                };
                let applied = p.applied.as_ref().map(|m| m.index);
                match p.log.retention_cut(now).await {
                    Ok(Some(cut)) => {
                        if let Some(upto) = applied.map(|a| a.min(cut.raft_index)) {
                            group.purge(upto);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(topic = %topic, partition, error = %e, "finding what retention would delete");
                    }
                }
                continue;
            }
            if super::topics::is_internal_topic(topic) {
                continue;
            }
            match p.log.apply_retention(now).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(topic = %topic, partition, deleted, start_offset = p.log.start_offset(), "retention deleted segments");
                }
                Err(e) => {
                    tracing::error!(topic = %topic, partition, error = %e, "applying retention");
                }
            }
            // A roll seals (syncs) the active segment, which moves the durable end.
            p.commit_solo(Log::durable_end);
        }
        self.stats.replication.replace(replication);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::shard::executor::run_local;
    use crate::shard::queue::{QueueSender, queue};
    use crate::storage::FaultyEngine;
    use crate::storage::PortableEngine;
    use crate::storage::format;

    /// A shard context owning partition `t/0` under `dir`, with its queue's sender, the
    /// ready report and the partition's high-watermark watch.
    pub(crate) fn one_partition_context(
        dir: &std::path::Path,
        options: ShardOptions,
        queue_depth: usize,
    ) -> (
        ShardContext,
        QueueSender,
        mpsc::Receiver<Result<()>>,
        watch::Receiver<u64>,
    ) {
        let (tx, rx) = queue(0, queue_depth);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (hw_tx, hw_rx) = watch::channel(0);
        let ctx = ShardContext {
            id: 0,
            rx,
            stats: Arc::new(ShardStats::default()),
            options,
            initial: vec![OpenPartition {
                topic: Arc::from("t"),
                partition: 0,
                dir: dir.join("t").join("0"),
                high_watermark: hw_tx,
                replicas: Vec::new(),
                new_group: true,
                joins: false,
                incarnation: 0,
            }],
            ready: ready_tx,
            raft: None,
        };
        (ctx, tx, ready_rx, hw_rx)
    }

    fn append(tx: &QueueSender, value: &str) -> tokio::sync::oneshot::Receiver<Result<AppendAck>> {
        let (reply, ack) = tokio::sync::oneshot::channel();
        let records = vec![Record {
            value: value.as_bytes().to_vec().into(),
            ..Record::default()
        }];
        let batch = storage::LogLimits::default().check(records).unwrap();
        tx.send_blocking(Command::Append {
            topic: Arc::from("t"),
            partition: 0,
            batch,
            reply,
            trace: Default::default(),
        });
        ack
    }

    /// An append of `value` as batch `sequence` of producer `producer_id`.
    fn stamped_append(
        tx: &QueueSender,
        value: &str,
        producer_id: u64,
        sequence: u64,
    ) -> tokio::sync::oneshot::Receiver<Result<AppendAck>> {
        let (reply, ack) = tokio::sync::oneshot::channel();
        let records = vec![Record {
            value: value.as_bytes().to_vec().into(),
            ..Record::default()
        }];
        let mut batch = storage::LogLimits::default().check(records).unwrap();
        batch.set_producer(ProducerStamp {
            producer_id,
            sequence,
        });
        tx.send_blocking(Command::Append {
            topic: Arc::from("t"),
            partition: 0,
            batch,
            reply,
            trace: Default::default(),
        });
        ack
    }

    /// A retry that arrives in the same group as its original (before the flush that makes
    /// it durable) is answered with the original's offsets after that flush, and written
    /// once; a restarted shard rebuilds the window from the batch headers.
    #[test]
    fn a_retry_in_its_originals_group_is_answered_after_the_flush_and_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ShardOptions::new(dir.path());
        options.shard_count = 1;
        let (ctx, tx, ready_rx, _hw) = one_partition_context(dir.path(), options.clone(), 16);
        // Queued before the shard starts: one group.
        let acks = vec![
            stamped_append(&tx, "a", 9, 0),
            stamped_append(&tx, "a-retry", 9, 0),
            stamped_append(&tx, "b", 9, 1),
            stamped_append(&tx, "gap", 9, 3),
            stamped_append(&tx, "b-retry", 9, 1),
        ];
        let thread = std::thread::spawn(move || run_local(PortableEngine::new(), ctx));
        ready_rx.recv().unwrap().unwrap();
        let results: Vec<_> = acks
            .into_iter()
            .map(|ack| futures::executor::block_on(ack).unwrap())
            .collect();
        let offsets: Vec<Option<u64>> = results
            .iter()
            .map(|r| r.as_ref().ok().map(|a| a.base_offset))
            .collect();
        assert_eq!(offsets, [Some(0), Some(0), Some(1), None, Some(1)]);
        assert!(
            matches!(
                &results[3],
                Err(Error::Sequence {
                    source: crate::shard::SequenceError::Gap { expected: 2, .. },
                    ..
                })
            ),
            "{:?}",
            results[3]
        );
        let (reply, done) = tokio::sync::oneshot::channel();
        tx.send_blocking(Command::Shutdown { reply });
        futures::executor::block_on(done).unwrap().unwrap();
        thread.join().unwrap();

        // Restarted: the log holds each batch once, and the window is rebuilt from it.
        let (ctx, tx, ready_rx, _hw) = one_partition_context(dir.path(), options, 16);
        let retry = stamped_append(&tx, "b-again", 9, 1);
        let next = stamped_append(&tx, "c", 9, 2);
        let thread = std::thread::spawn(move || run_local(PortableEngine::new(), ctx));
        ready_rx.recv().unwrap().unwrap();
        let retry = futures::executor::block_on(retry).unwrap().unwrap();
        assert_eq!(retry.base_offset, 1);
        let next = futures::executor::block_on(next).unwrap().unwrap();
        assert_eq!(next.base_offset, 2, "nothing was written twice");
        let (reply, done) = tokio::sync::oneshot::channel();
        tx.send_blocking(Command::Shutdown { reply });
        futures::executor::block_on(done).unwrap().unwrap();
        thread.join().unwrap();
    }

    /// Engine writes that opening a new partition makes before its first append: the
    /// directory, seven stale temp-file removals, the stale index removal, the store's
    /// creation, and the index file's open and sizing.
    const NEW_PARTITION_OPEN_WRITES: u64 = 12;

    /// A failed sync fails every append of its group with the same cause, and the poisoned
    /// log refuses later appends; the shard itself keeps serving.
    #[test]
    fn a_failed_sync_fails_its_whole_group_and_poisons_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = ShardOptions::new(dir.path());
        options.shard_count = 1;
        let (ctx, tx, ready_rx, hw_rx) = one_partition_context(dir.path(), options, 16);
        // Queued before the shard starts, so the three appends form one group.
        let acks: Vec<_> = ["a", "b", "c"].iter().map(|v| append(&tx, v)).collect();
        let thread = std::thread::spawn(move || {
            let engine = FaultyEngine::new(PortableEngine::new());
            // Opening the partition, then three appends succeed; the next write, the group's
            // sync, fails.
            engine.crash_after(NEW_PARTITION_OPEN_WRITES + 3);
            run_local(engine, ctx);
        });
        ready_rx.recv().unwrap().unwrap();
        for ack in acks {
            let err = futures::executor::block_on(ack).unwrap().unwrap_err();
            assert!(
                matches!(err.storage_error(), Some(storage::Error::Io { op, .. }) if op.contains("sync")),
                "every append of the failed group fails with the sync's error: {err}"
            );
        }
        assert_eq!(*hw_rx.borrow(), 0, "nothing became readable");
        let later = futures::executor::block_on(append(&tx, "d"))
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(later.storage_error(), Some(storage::Error::Poisoned { .. })),
            "a poisoned log refuses appends: {later}"
        );
        let (reply, done) = tokio::sync::oneshot::channel();
        tx.send_blocking(Command::Shutdown { reply });
        futures::executor::block_on(done).unwrap().ok();
        thread.join().unwrap();
    }

    /// xorshift64*, so a seed replays a case's crash point, bursts and tear.
    #[derive(Clone, Copy)]
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
        }
    }

    /// Every record from offset 0 of `t/0` in `dir`, as a shard on the plain engine recovers
    /// it, and the base offset of one more append (which must not reuse an acknowledged one).
    fn recover(dir: &std::path::Path, options: ShardOptions) -> (Vec<(u64, Vec<u8>)>, u64) {
        let (ctx, tx, ready_rx, _hw) = one_partition_context(dir, options, 16);
        let thread = std::thread::spawn(move || run_local(PortableEngine::new(), ctx));
        ready_rx.recv().unwrap().unwrap();
        let mut records = Vec::new();
        let mut offset = 0;
        loop {
            let (reply, read) = tokio::sync::oneshot::channel();
            tx.send_blocking(Command::Read {
                topic: Arc::from("t"),
                partition: 0,
                from_offset: offset,
                max_bytes: 1 << 20,
                max_records: 0,
                reply,
            });
            let read = futures::executor::block_on(read).unwrap().unwrap();
            if read.records.is_empty() {
                break;
            }
            records.extend(read.records.iter().map(|r| (r.offset, r.value.to_vec())));
            offset = read.next_offset;
        }
        let next = futures::executor::block_on(append(&tx, "after"))
            .unwrap()
            .unwrap()
            .base_offset;
        let (reply, done) = tokio::sync::oneshot::channel();
        tx.send_blocking(Command::Shutdown { reply });
        futures::executor::block_on(done).unwrap().ok();
        thread.join().unwrap();
        (records, next)
    }

    /// Acknowledged means durable, above the storage layer: a shard acknowledges appends in
    /// groups of random sizes, the power is cut at a random write (every byte not covered by
    /// a completed sync may vanish, and the last surviving ones may be garbage), and the
    /// recovered partition holds every acknowledged record at its offset, and reuses none.
    /// Seeds are printed; `WALRS_TEST_SEED` replays one.
    #[test]
    fn acknowledged_appends_survive_a_power_cut_at_any_write() {
        let base = crate::testing::seed();
        let cases = 48;
        let mut crashed = 0;
        for case in 0..cases {
            let seed = base.wrapping_add(case) | 1;
            let mut rng = Rng(seed);
            let dir = tempfile::tempdir().unwrap();
            let mut options = ShardOptions::new(dir.path());
            options.shard_count = 1;
            // Three small batches per segment: rolls and seals land among the crash points.
            options.log.record_bytes_max = 64;
            options.log.batch_bytes_max = 64 + format::BATCH_HEADER_LEN as u64;
            options.log.segment_bytes_max = options.log.batch_bytes_max * 3;
            let (ctx, tx, ready_rx, _hw) = one_partition_context(dir.path(), options.clone(), 64);
            let crash_at = NEW_PARTITION_OPEN_WRITES + 1 + rng.below(60);
            let mut tear_rng = Rng(seed.rotate_left(17) | 1);
            let thread = std::thread::spawn(move || {
                let engine = FaultyEngine::new(PortableEngine::new());
                engine.crash_after(crash_at);
                let power = engine.clone();
                run_local(engine, ctx);
                // Every handle is closed: cut the power on what was not synced.
                power.tear(|n| tear_rng.below(n)).unwrap();
                power.has_crashed()
            });
            ready_rx.recv().unwrap().unwrap();
            let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
            'bursts: for burst in 0..20 {
                let size = 1 + rng.below(4);
                let sent: Vec<_> = (0..size)
                    .map(|i| {
                        let value = format!("c{case}-b{burst}-{i}");
                        (append(&tx, &value), value)
                    })
                    .collect();
                for (ack, value) in sent {
                    match futures::executor::block_on(ack).unwrap() {
                        Ok(ack) => acked.push((ack.base_offset, value.into_bytes())),
                        Err(_) => break 'bursts,
                    }
                }
            }
            let (reply, done) = tokio::sync::oneshot::channel();
            tx.send_blocking(Command::Shutdown { reply });
            futures::executor::block_on(done).unwrap().ok();
            if thread.join().unwrap() {
                crashed += 1;
            }
            let (recovered, next) = recover(dir.path(), options);
            let recovered: std::collections::HashMap<u64, Vec<u8>> =
                recovered.into_iter().collect();
            for (offset, value) in &acked {
                assert_eq!(
                    recovered.get(offset),
                    Some(value),
                    "seed {seed}: acknowledged offset {offset} lost after a power cut at write {crash_at}"
                );
            }
            if let Some((last, _)) = acked.last() {
                assert!(
                    next > *last,
                    "seed {seed}: the next append reused offset {next} (last ack {last})"
                );
            }
        }
        assert!(
            crashed * 2 >= cases,
            "only {crashed} of {cases} cases cut the power before their appends ended"
        );
    }

    /// Regression: a roll inside a group seals (syncs) the segment and moves the high
    /// watermark past the group's earlier appends; when a later write or the group's sync
    /// then failed, those durable, readable appends were reported failed too. Now an append
    /// is acknowledged exactly when it is below the high watermark, wherever the fault hits.
    #[test]
    fn appends_committed_by_a_roll_mid_group_are_acked_though_the_group_fails() {
        let mut mixed = 0;
        // Each roll is a seal (sync, index trim) and a new segment (stale index removal,
        // create, index open and size): about six writes per append.
        for crash_at in NEW_PARTITION_OPEN_WRITES + 1..=NEW_PARTITION_OPEN_WRITES + 30 {
            let dir = tempfile::tempdir().unwrap();
            let mut options = ShardOptions::new(dir.path());
            options.shard_count = 1;
            // One batch of one small record per segment: every append after the first rolls.
            options.log.record_bytes_max = 64;
            options.log.batch_bytes_max = 64 + format::BATCH_HEADER_LEN as u64;
            options.log.segment_bytes_max = options.log.batch_bytes_max;
            let (ctx, tx, ready_rx, hw_rx) = one_partition_context(dir.path(), options, 16);
            let acks: Vec<_> = ["a", "b", "c", "d"]
                .iter()
                .map(|v| append(&tx, v))
                .collect();
            let thread = std::thread::spawn(move || {
                let engine = FaultyEngine::new(PortableEngine::new());
                engine.crash_after(crash_at);
                run_local(engine, ctx);
            });
            ready_rx.recv().unwrap().unwrap();
            let results: Vec<Result<AppendAck>> = acks
                .into_iter()
                .map(|ack| futures::executor::block_on(ack).unwrap())
                .collect();
            let high_watermark = *hw_rx.borrow();
            let acked = results.iter().take_while(|r| r.is_ok()).count();
            assert!(
                results[acked..].iter().all(|r| r.is_err()),
                "crash at {crash_at}: acks are a prefix in offset order: {results:?}"
            );
            assert_eq!(
                acked as u64, high_watermark,
                "crash at {crash_at}: acknowledged exactly what is readable: {results:?}"
            );
            if acked > 0 && acked < results.len() {
                mixed += 1;
            }
            let (reply, done) = tokio::sync::oneshot::channel();
            tx.send_blocking(Command::Shutdown { reply });
            futures::executor::block_on(done).unwrap().ok();
            thread.join().unwrap();
        }
        assert!(
            mixed > 0,
            "some crash point fails a group after a roll committed part of it"
        );
    }
}
