//! The controller, as each node runs it: proposing topic changes to the metadata log
//! (`cluster::metadata`), following the log, and making this node's topics match it.
//!
//! - **Voters** (`[cluster] controller_voters`) hold a replica of the log: partition 0 of
//!   `__cluster_metadata`, one Raft group like any partition, whose leader is the
//!   controller leader. Every other node fetches the committed log from a voter.
//! - **Proposing.** CreateTopic and DeleteTopic on any node become one record, appended by
//!   the log's leader (here, or through `Replication/ProposeMetadata`, following the
//!   `walrs-leader` hint). It is acknowledged once a majority of voters hold it.
//! - **Applying.** A task reads the committed log in order into a `MetadataView`, then
//!   reconciles: it creates the topics the view has and this node lacks (a node that was
//!   down, or lost its disk, converges by itself) and deletes the local topics whose
//!   creation the view has passed but which are no longer live. A topic is matched by
//!   incarnation, so a name deleted and created again is never taken for the old one. A
//!   topic made before the controller (incarnation 0) is left alone.
//! - **Rejoining safely.** A replica created here starts its Raft group as new (it may vote
//!   at once) unless this node may have held it before and lost it: when this node's data
//!   dir had no topic at start ("fresh", e.g. wiped), every topic created before it started
//!   (below the log's end as the other voters reported it then, the "horizon") rejoins
//!   instead: it catches up from the leader before it votes. The same rule covers this
//!   node's replica of the metadata log itself.
//!
//! Owns: the applier task, the view it publishes, and the proposal retries (bounded by
//! [`Controller::wait`]). Must never: choose a partition's leader, or write a topic's data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::errors::{Error, Result};
use crate::cluster::metadata::{self, METADATA_TOPIC, MetadataView, NO_INCARNATION};
use crate::cluster::peers::{PeerAdmin, PeerError};
use crate::observability;
use crate::proto::v1 as pb;
use crate::shard::{self, ShardSet};
use crate::storage::Record;

/// Bytes of the metadata log read (or fetched) at once.
const FETCH_BYTES: u64 = 1 << 20;
/// How long one read of the log waits for a new record before it looks again; a commit
/// wakes it at once.
const FOLLOW_WAIT: Duration = Duration::from_secs(5);

/// More time a node may take to apply a creation, per partition it opens (a creation of
/// 1,000 partitions opens 1,000 logs on every node).
const OPEN_TIME_PER_PARTITION: Duration = Duration::from_millis(100);

/// One node's controller: its view of the metadata log and the means to change it.
pub(super) struct Controller {
    node_id: u64,
    /// The log's voters, sorted.
    voters: Vec<u64>,
    peers: PeerAdmin,
    shards: ShardSet,
    /// How long a proposal, or a wait for it to be applied, may take: many elections.
    wait: Duration,
    /// The pause between two attempts that failed (a node down, no leader yet).
    retry: Duration,
    /// This node's data dir held no topic when it started.
    fresh: bool,
    /// For a fresh node: topics of an incarnation up to this may have been held here
    /// before; they rejoin. Set before the applier creates anything.
    horizon: AtomicU64,
    /// The log's leader as last seen (0 = unknown).
    leader: AtomicU64,
    view: RwLock<Arc<MetadataView>>,
    /// The offset up to which the view is applied and this node's topics reconciled.
    applied: watch::Sender<u64>,
    /// True once this node has followed the log from a replica that knows the controller
    /// leader, and made its topics match: it has joined the cluster.
    joined: watch::Sender<bool>,
}

impl Controller {
    /// `wait` bounds a proposal and the waits for it; `retry` paces attempts.
    pub(super) fn new(
        node_id: u64,
        voters: Vec<u64>,
        peers: PeerAdmin,
        shards: ShardSet,
        wait: Duration,
        retry: Duration,
    ) -> Controller {
        assert!(!voters.is_empty(), "a controller needs voters");
        let fresh = shards.list_topics().is_empty();
        Controller {
            node_id,
            voters,
            peers,
            shards,
            wait,
            retry,
            fresh,
            horizon: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            view: RwLock::new(Arc::new(MetadataView::default())),
            applied: watch::channel(0).0,
            joined: watch::channel(false).0,
        }
    }

    pub(super) fn wait(&self) -> Duration {
        self.wait
    }

    /// The pause between two attempts that failed.
    pub(super) fn retry(&self) -> Duration {
        self.retry
    }

    /// How long applying a creation of `partitions` partitions may take on a node.
    pub(super) fn wait_to_open(&self, partitions: u32) -> Duration {
        self.wait + OPEN_TIME_PER_PARTITION * partitions
    }

    /// The metadata log's voters, sorted.
    pub(super) fn voters(&self) -> &[u64] {
        &self.voters
    }

    /// This node's id.
    pub(super) fn node_id(&self) -> u64 {
        self.node_id
    }

    fn is_voter(&self) -> bool {
        self.voters.contains(&self.node_id)
    }

    /// The view as applied so far.
    pub(super) fn view(&self) -> Arc<MetadataView> {
        self.view.read().expect("view lock poisoned").clone()
    }

    /// The controller leader as this node knows it (0 = none known).
    pub(super) async fn leader(&self) -> u64 {
        // The only voter: its log is a solo partition, with no group to name a leader.
        if self.voters == [self.node_id] {
            return self.node_id;
        }
        if self.is_voter()
            && let Ok(description) = self.shards.describe_topic(METADATA_TOPIC).await
            && let Some(leader) = description.partitions.first().and_then(|p| p.leader)
        {
            self.leader.store(leader, Ordering::Relaxed);
            return leader;
        }
        self.leader.load(Ordering::Relaxed)
    }

    /// True once this node has joined (see [`Controller::joined`]).
    pub(super) fn has_joined(&self) -> bool {
        *self.joined.borrow()
    }

    /// Waits until this node has joined: it follows the log through a replica that knows
    /// the controller leader, and its topics match what it read.
    pub(super) async fn joined(&self) {
        let mut joined = self.joined.subscribe();
        let _closed_means_never = joined.wait_for(|&j| j).await;
    }

    /// Changes whenever the view is applied and reconciled further.
    pub(super) fn applied_changes(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Waits until the view is applied and reconciled up to `offset` (exclusive), or
    /// `timeout`: how far it got.
    pub(super) async fn wait_applied(&self, offset: u64, timeout: Duration) -> u64 {
        let mut applied = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|&a| a >= offset))
            .await
            .ok()
            .and_then(|r| r.ok().map(|a| *a));
        reached.unwrap_or_else(|| *applied.borrow())
    }

    /// Appends `record` to the metadata log through its leader, following hints and
    /// trying the voters in turn, within [`Controller::wait`]: its offset once committed.
    pub(super) async fn propose(&self, record: pb::MetadataRecord) -> Result<u64> {
        let deadline = Instant::now() + self.wait;
        let mut target = match self.leader().await {
            0 => self.voters[0],
            leader => leader,
        };
        let mut turn = 0;
        // Hints followed in a row: past a few, back off, so two nodes naming each other
        // cannot spin.
        let mut hops = 0;
        loop {
            let attempt = if target == self.node_id {
                // A leader cut off from its voters never commits: bounded like the rest.
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, self.append_local(&record)).await {
                    Ok(appended) => appended,
                    Err(_) => Err(Error::Cluster {
                        message: "this node's replica of the metadata log did not commit \
                                  the change in time"
                            .to_owned(),
                    }),
                }
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                self.peers
                    .propose_metadata(target, record.clone(), left)
                    .await
                    .map_err(|e| match e {
                        PeerError::NotLeader { leader, .. } => {
                            Error::Shard(shard::Error::NotLeader {
                                topic: METADATA_TOPIC.to_owned(),
                                partition: 0,
                                leader: Some(leader),
                                leader_addr: None,
                            })
                        }
                        other => Error::Cluster {
                            message: other.to_string(),
                        },
                    })
            };
            let error = match attempt {
                Ok(offset) => {
                    self.leader.store(target, Ordering::Relaxed);
                    return Ok(offset);
                }
                Err(e) => e,
            };
            let hinted = match &error {
                Error::Shard(shard::Error::NotLeader {
                    leader: Some(leader),
                    ..
                }) if *leader != target => Some(*leader),
                _ => None,
            };
            if Instant::now() >= deadline {
                return Err(Error::Cluster {
                    message: format!(
                        "the controller did not take the change within {:?} (last: {error}); \
                         check that a majority of the controller voters {:?} are up, then retry",
                        self.wait, self.voters
                    ),
                });
            }
            tracing::debug!(node = target, error = %error, "a metadata proposal was not taken");
            match hinted {
                Some(leader) => {
                    target = leader;
                    hops += 1;
                    if hops % 3 == 0 {
                        tokio::time::sleep(self.retry).await;
                    }
                }
                None => {
                    turn += 1;
                    target = self.voters[turn % self.voters.len()];
                    tokio::time::sleep(self.retry).await;
                }
            }
        }
    }

    /// Appends `record` to this node's replica of the log: its offset once committed.
    pub(super) async fn append_local(&self, record: &pb::MetadataRecord) -> Result<u64> {
        let record = Record {
            offset: 0,
            timestamp_ms: crate::storage::now_ms(),
            key: Bytes::new(),
            value: metadata::encode(record),
            headers: Vec::new(),
        };
        let ack = self.shards.append(METADATA_TOPIC, 0, vec![record]).await?;
        Ok(ack.base_offset)
    }

    /// The committed log from `from_offset` in this node's replica, waiting up to
    /// `max_wait` for a record when there is none yet.
    pub(super) async fn fetch(
        &self,
        from_offset: u64,
        max_wait: Duration,
    ) -> Result<pb::FetchMetadataResponse> {
        if self.shards.partitions_of(METADATA_TOPIC).is_err() {
            return Err(Error::NoMetadataReplica);
        }
        let mut read = self
            .shards
            .read(METADATA_TOPIC, 0, from_offset, FETCH_BYTES, 0)
            .await?;
        if read.records.is_empty() && !max_wait.is_zero() {
            // Past any control batches: waiting on `from_offset` would return at once.
            self.shards
                .wait_for(
                    METADATA_TOPIC,
                    0,
                    read.next_offset,
                    max_wait.min(FOLLOW_WAIT),
                )
                .await?;
            read = self
                .shards
                .read(METADATA_TOPIC, 0, from_offset, FETCH_BYTES, 0)
                .await?;
        }
        let entries = read
            .records
            .iter()
            .map(|r| {
                // A record this build cannot read (a newer one's, or damage) is passed on
                // without a record: the applier logs and skips it rather than stop for good.
                let record = metadata::decode(&r.value)
                    .inspect_err(|why| {
                        tracing::error!(
                            offset = r.offset,
                            why,
                            "a metadata log record that does not decode"
                        )
                    })
                    .ok();
                pb::MetadataEntry {
                    offset: r.offset,
                    record,
                }
            })
            .collect();
        Ok(pb::FetchMetadataResponse {
            entries,
            high_watermark: read.high_watermark,
            leader: u32::try_from(self.leader().await).unwrap_or(0),
            next_offset: read.next_offset,
        })
    }

    /// Asks every other node to apply the log up to `offset`, waiting up to `max_wait`;
    /// the nodes that did not (they converge by themselves later) are logged.
    pub(super) async fn sync_everywhere(&self, offset: u64, max_wait: Duration) {
        let others: Vec<u64> = self
            .peers
            .membership()
            .ids()
            .into_iter()
            .filter(|&n| n != self.node_id)
            .collect();
        let calls = others.into_iter().map(|node| async move {
            (node, self.peers.sync_metadata(node, offset, max_wait).await)
        });
        for (node, synced) in futures::future::join_all(calls).await {
            match synced {
                Ok(applied) if applied >= offset => {}
                Ok(applied) => {
                    tracing::warn!(
                        node,
                        applied,
                        offset,
                        "a node has not applied a metadata change yet; it will by itself"
                    )
                }
                Err(e) => {
                    tracing::warn!(node, error = %e, "a node did not confirm a metadata change; it will apply it when it can")
                }
            }
        }
    }

    /// Follows the log until the server drains: opens this node's replica of it (a voter),
    /// then applies every committed record and reconciles this node's topics.
    pub(super) async fn run(self: Arc<Self>, mut draining: watch::Receiver<bool>) {
        if self.fresh && !self.learn_horizon(&mut draining).await {
            return;
        }
        if self.is_voter() && !self.open_replica(&mut draining).await {
            return;
        }
        let mut next = 0;
        let mut turn = 0;
        // True while a reconciliation failed: it is retried every `retry`.
        let mut behind = true;
        loop {
            if *draining.borrow() {
                return;
            }
            let fetched = if self.is_voter() {
                self.read_local(next, &mut draining).await
            } else {
                self.fetch_remote(next, &mut turn).await
            };
            // The fetch already asked who leads: its answer serves the metrics and the join.
            let (got, caught_up, leader) = match fetched {
                Ok(response) => {
                    let got = response.entries;
                    if !got.is_empty() {
                        let mut view = (*self.view()).clone();
                        for entry in &got {
                            // Never twice, never backwards (a replica answering from
                            // behind another is simply ignored).
                            if entry.offset < view.applied() {
                                continue;
                            }
                            match &entry.record {
                                Some(record) => {
                                    let applied = view.apply(entry.offset, record);
                                    tracing::debug!(
                                        offset = entry.offset,
                                        ?applied,
                                        "metadata applied"
                                    );
                                }
                                None => tracing::error!(
                                    offset = entry.offset,
                                    "a metadata log entry without a record; skipped"
                                ),
                            }
                        }
                        *self.view.write().expect("view lock poisoned") = Arc::new(view);
                        behind = true;
                    }
                    next = next.max(self.view().applied()).max(response.next_offset);
                    // Read up to what the answering replica knows committed.
                    let caught_up = response.next_offset >= response.high_watermark;
                    (got.is_empty(), caught_up, u64::from(response.leader))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "following the metadata log");
                    tokio::select! {
                        () = tokio::time::sleep(self.retry) => {}
                        _ = draining.changed() => {}
                    }
                    (true, false, self.leader.load(Ordering::Relaxed))
                }
            };
            if behind {
                behind = !self.reconcile().await;
            }
            if !behind {
                self.applied.send_if_modified(|applied| {
                    let moved = *applied < next;
                    *applied = (*applied).max(next);
                    moved
                });
            }
            observability::controller_state(leader, next, self.view().topic_count());
            if !behind && caught_up && leader != 0 && !*self.joined.borrow() {
                tracing::info!(
                    controller = leader,
                    applied = next,
                    "joined the cluster: the metadata log is followed and this node's topics match it"
                );
                self.joined.send_replace(true);
            }
            if got && behind {
                tokio::select! {
                    () = tokio::time::sleep(self.retry) => {}
                    _ = draining.changed() => {}
                }
            }
        }
    }

    /// A fresh node learns how far the metadata log goes (the "horizon"): what was
    /// created below it may have been held here. Only two answers are trusted: the log's
    /// leader's commit (it covers everything committed), or a majority of the voters (this
    /// node included) holding nothing of the log (then nothing was ever committed: a new
    /// cluster). A lagging follower's answer alone could be short. False when the server
    /// drained first.
    async fn learn_horizon(&self, draining: &mut watch::Receiver<bool>) -> bool {
        let others: Vec<u64> = self
            .voters
            .iter()
            .copied()
            .filter(|&v| v != self.node_id)
            .collect();
        let majority = self.voters.len() / 2 + 1;
        let mut attempts = 0u64;
        loop {
            let calls = others.iter().map(|&node| async move {
                match self.peers.fetch_metadata(node, 0, Duration::ZERO).await {
                    Ok(response) => Some((node, Some(response))),
                    // Up, but without a replica of the log yet.
                    Err(PeerError::Refused { status, .. })
                        if status.code() == tonic::Code::FailedPrecondition =>
                    {
                        Some((node, None))
                    }
                    Err(_) => None,
                }
            });
            let answers: Vec<(u64, Option<pb::FetchMetadataResponse>)> =
                futures::future::join_all(calls)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
            let from_leader = answers.iter().find_map(|(node, response)| {
                let r = response.as_ref()?;
                (u64::from(r.leader) == *node).then_some(r.high_watermark)
            });
            // This node (fresh: it holds nothing) and the voters that hold nothing either.
            let empty = 1 + answers
                .iter()
                .filter(|(_, r)| {
                    r.as_ref()
                        .is_none_or(|r| r.high_watermark == 0 && r.leader == 0)
                })
                .count();
            let horizon = match from_leader {
                Some(horizon) => Some(horizon),
                None if self.is_voter() && empty >= majority => Some(0),
                None if !self.is_voter() && empty > majority => Some(0),
                None => None,
            };
            if let Some(horizon) = horizon {
                self.horizon.store(horizon, Ordering::Relaxed);
                if horizon > 0 {
                    tracing::warn!(
                        horizon,
                        "this node starts with no topic in a cluster that has a metadata log: what it held before rejoins (catches up before it votes)"
                    );
                }
                return true;
            }
            attempts += 1;
            if attempts % 30 == 1 {
                tracing::warn!(voters = ?others, answered = answers.len(), "waiting for the controller leader (or a majority of its voters) to answer before following the metadata log here");
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry * 4) => {}
                _ = draining.changed() => return false,
            }
        }
    }

    /// A topic of `incarnation` (0 for the metadata log itself) created here now starts a
    /// new group, unless this node may have held it before (see the module docs).
    fn new_group(&self, incarnation: u64) -> bool {
        let horizon = self.horizon.load(Ordering::Relaxed);
        !(self.fresh && horizon > 0 && incarnation <= horizon)
    }

    /// Opens this voter's replica of the log when it lacks one; retries until it can.
    async fn open_replica(&self, draining: &mut watch::Receiver<bool>) -> bool {
        loop {
            match self.shards.replicas_of(METADATA_TOPIC) {
                Ok(replicas) => {
                    if replicas.first() != Some(&self.voters) {
                        tracing::warn!(held = ?replicas, configured = ?self.voters, "the metadata log's voters differ from cluster.controller_voters; changing them is not supported, the log keeps its own");
                    }
                    return true;
                }
                Err(_) => {
                    let new_group = self.new_group(0);
                    let created = self
                        .shards
                        .create_topic_on(
                            METADATA_TOPIC,
                            1,
                            vec![self.voters.clone()],
                            new_group,
                            NO_INCARNATION,
                        )
                        .await;
                    match created {
                        Ok(()) => {
                            tracing::info!(voters = ?self.voters, new_group, "opened this node's replica of the metadata log");
                            return true;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "opening this node's replica of the metadata log")
                        }
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.retry * 4) => {}
                _ = draining.changed() => return false,
            }
        }
    }

    /// The committed records of the local replica from `next`, waiting for one when there
    /// is none.
    async fn read_local(
        &self,
        next: u64,
        draining: &mut watch::Receiver<bool>,
    ) -> Result<pb::FetchMetadataResponse> {
        tokio::select! {
            r = self.fetch(next, FOLLOW_WAIT) => r,
            _ = draining.changed() => Err(Error::ShuttingDown),
        }
    }

    /// The committed records from `next`, fetched from a voter: the last leader seen, or
    /// the next voter in turn after a failure.
    async fn fetch_remote(&self, next: u64, turn: &mut usize) -> Result<pb::FetchMetadataResponse> {
        let node = match self.leader.load(Ordering::Relaxed) {
            0 => self.voters[*turn % self.voters.len()],
            leader => leader,
        };
        match self.peers.fetch_metadata(node, next, FOLLOW_WAIT).await {
            Ok(response) => {
                if response.leader != 0 {
                    self.leader
                        .store(u64::from(response.leader), Ordering::Relaxed);
                }
                Ok(response)
            }
            Err(e) => {
                self.leader.store(0, Ordering::Relaxed);
                *turn += 1;
                tokio::time::sleep(self.retry).await;
                Err(Error::Cluster {
                    message: e.to_string(),
                })
            }
        }
    }

    /// Makes the holders of `name`'s partitions here match the view's (a move started or
    /// completed): opens the replicas this node now holds, closes those it no longer does.
    /// True when they match.
    async fn follow_moves(&self, name: &str, placement: &metadata::TopicPlacement) -> bool {
        let holders = placement.all_holders();
        if self.shards.replicas_of(name).ok().as_ref() == Some(&holders) {
            return true;
        }
        match self
            .shards
            .set_holders(name, placement.incarnation, holders.clone())
            .await
        {
            Ok(()) => {
                tracing::info!(
                    topic = name,
                    ?holders,
                    "partition holders follow the metadata log"
                );
                true
            }
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "changing a topic's partition holders");
                false
            }
        }
    }

    /// Makes this node's topics match the view; true when all of it was done. Deletions
    /// first (they free the names and the room under `topics_max`), then creations. A local
    /// topic of an incarnation the view has not reached yet is never touched: the view is
    /// behind, not the topic.
    async fn reconcile(&self) -> bool {
        let view = self.view();
        let mut done = true;
        for topic in self.shards.list_topics() {
            if shard::is_internal_topic(&topic.name) {
                continue;
            }
            let Ok(held) = self.shards.incarnation_of(&topic.name) else {
                continue;
            };
            let live = view.topic(&topic.name).map(|p| p.incarnation);
            if held == NO_INCARNATION || held > view.applied() || live == Some(held) {
                continue;
            }
            match self.shards.delete_topic(&topic.name).await {
                Ok(()) => {
                    observability::topic_deleted(&topic.name);
                    tracing::info!(
                        topic = topic.name,
                        held,
                        live,
                        "topic deleted from the metadata log"
                    );
                }
                Err(e) => {
                    tracing::warn!(topic = topic.name, error = %e, "deleting a topic the metadata log deleted");
                    done = false;
                }
            }
        }
        for (name, placement) in view.topics() {
            match self.shards.incarnation_of(name) {
                Ok(held) if held == placement.incarnation => {
                    done &= self.follow_moves(name, placement).await;
                    continue;
                }
                Ok(NO_INCARNATION) => {
                    tracing::warn!(
                        topic = name,
                        "a topic made before the controller has the name of one the metadata log created; left alone"
                    );
                    continue;
                }
                // Newer than the view: the view is behind. Older: its deletion above failed.
                Ok(held) => {
                    done &= held > view.applied();
                    continue;
                }
                Err(_) => {}
            }
            let new_group = self.new_group(placement.incarnation);
            let created = self
                .shards
                .create_topic_on(
                    name,
                    placement.partitions,
                    placement.all_holders(),
                    new_group,
                    placement.incarnation,
                )
                .await;
            match created {
                Ok(()) => {
                    tracing::info!(
                        topic = name,
                        partitions = placement.partitions,
                        incarnation = placement.incarnation,
                        new_group,
                        "topic created from the metadata log"
                    )
                }
                Err(e) => {
                    tracing::warn!(topic = name, error = %e, "creating a topic of the metadata log");
                    done = false;
                }
            }
        }
        done
    }
}
