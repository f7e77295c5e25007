//! In-process clusters: three nodes' shard sets in one process, real partition logs on disk
//! (the portable engine, real fsync), real Raft groups, and an in-process transport between
//! them that can cut a node off. Timeouts derive from the groups' election timings.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::group::{RaftContext, RaftTimings};
use super::network::{LinkState, RaftTransport, TransportError, TransportReply};
use super::types::NodeId;
use crate::proto::v1 as pb;
use crate::shard::{EngineChoice, Error, ShardOptions, ShardSet};
use crate::storage::Record;

mod lag;

/// Delivers each message straight to the destination node's shard set, on a tokio task.
struct InProcess {
    runtime: tokio::runtime::Handle,
    nodes: RwLock<HashMap<NodeId, ShardSet>>,
    /// Nodes cut off: nothing reaches them and nothing leaves them.
    down: Mutex<HashSet<NodeId>>,
    /// How many times each node was cut off, brought back, stopped or started, and each
    /// one-way link flapped: a link's changes are its two ends' and its own (see
    /// [`RaftTransport::link`]).
    changes: Mutex<HashMap<NodeId, u64>>,
    flaps: Mutex<HashMap<(NodeId, NodeId), u64>>,
    /// Faults injected into every message, drawn from a seeded generator.
    faults: Mutex<Faults>,
}

/// Per-message faults: a message is lost (no answer reaches the sender, as when a
/// connection breaks), delivered twice, or held back a while (so later messages overtake
/// it), each with its probability in percent.
#[derive(Debug, Default)]
struct Faults {
    drop_percent: u64,
    duplicate_percent: u64,
    delay_percent: u64,
    delay_ms_max: u64,
    rng: u64,
}

impl Faults {
    /// xorshift64*: small, and a seed replays the same choices.
    fn roll(&mut self, below: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % below
    }

    fn hits(&mut self, percent: u64) -> bool {
        percent > 0 && self.roll(100) < percent
    }
}

impl InProcess {
    fn is_down(&self, node: NodeId) -> bool {
        self.down.lock().unwrap().contains(&node)
    }

    /// Cuts node `node` off: nothing reaches it and nothing leaves it.
    fn cut(&self, node: NodeId) {
        self.down.lock().unwrap().insert(node);
        self.changed(node);
    }

    /// Brings node `node` back.
    fn restore(&self, node: NodeId) {
        self.down.lock().unwrap().remove(&node);
        self.changed(node);
    }

    /// The link from `from` to `to` went down and up again, seen from `from` only (a
    /// connection that broke and was made again at once).
    fn flap(&self, from: NodeId, to: NodeId) {
        *self.flaps.lock().unwrap().entry((from, to)).or_default() += 1;
    }

    /// Node `node`'s links all changed (it was cut off, brought back, stopped or started).
    fn changed(&self, node: NodeId) {
        *self.changes.lock().unwrap().entry(node).or_default() += 1;
    }
}

impl RaftTransport for InProcess {
    fn send(&self, to: NodeId, message: pb::RaftEnvelope) -> TransportReply {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let from = u64::from(message.from_node);
        let target = self.nodes.read().unwrap().get(&to).cloned();
        let answer = match target {
            _ if self.is_down(to) || self.is_down(from) => Err(TransportError::Lost {
                node: to,
                reason: "cut off".to_owned(),
            }),
            None => Err(TransportError::UnknownNode { node: to }),
            Some(set) => {
                let (dropped, duplicated, delay_ms) = {
                    let mut faults = self.faults.lock().unwrap();
                    let (drop_p, dup_p, delay_p) = (
                        faults.drop_percent,
                        faults.duplicate_percent,
                        faults.delay_percent,
                    );
                    let delay_ms_max = faults.delay_ms_max.max(1);
                    let delay_ms = if faults.hits(delay_p) {
                        1 + faults.roll(delay_ms_max)
                    } else {
                        0
                    };
                    (faults.hits(drop_p), faults.hits(dup_p), delay_ms)
                };
                self.runtime.spawn(async move {
                    if delay_ms > 0 {
                        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    }
                    if duplicated {
                        drop(set.deliver_raft(message.clone()).await);
                    }
                    let answer = set.deliver_raft(message).await;
                    if dropped {
                        // Served, but the answer is lost: the sender times out.
                        return;
                    }
                    // The caller may have timed out.
                    drop(tx.send(Ok(answer)));
                });
                return rx;
            }
        };
        drop(tx.send(answer));
        rx
    }

    fn link(&self, from: NodeId, to: NodeId) -> LinkState {
        let up = self.nodes.read().unwrap().contains_key(&to)
            && !self.is_down(to)
            && !self.is_down(from);
        let changes = self.changes.lock().unwrap();
        let count = |node| changes.get(&node).copied().unwrap_or(0);
        let flaps = self.flaps.lock().unwrap();
        LinkState {
            up,
            changes: count(from) + count(to) + flaps.get(&(from, to)).copied().unwrap_or(0),
        }
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
        Some(format!("node-{node}.test:1"))
    }

    fn peers(&self, from: NodeId) -> Vec<NodeId> {
        let nodes = self.nodes.read().unwrap();
        nodes.keys().copied().filter(|&n| n != from).collect()
    }
}

const TIMINGS: RaftTimings = RaftTimings {
    election_timeout_min_ms: 300,
    election_timeout_max_ms: 600,
    heartbeat_interval_ms: 100,
    raft_payload_entries_max: 64,
    // Idle groups go quiet soon here, so every test also runs through quiet and waking.
    quiesce_after_ms: 600,
};

/// How long an election may take here: many election timeouts (two busy cores).
fn election_deadline() -> Duration {
    Duration::from_millis(TIMINGS.election_timeout_max_ms * 40)
}

struct Cluster {
    transport: Arc<InProcess>,
    dirs: Vec<tempfile::TempDir>,
    contexts: HashMap<NodeId, RaftContext>,
    tune: fn(&mut ShardOptions),
}

/// Where partition 0 of `topic` lives in node data directory `dir`.
fn partition_dir(dir: &std::path::Path, topic: &str) -> std::path::PathBuf {
    dir.join("topics").join(topic).join("0")
}

fn node_options(dir: &std::path::Path, tune: fn(&mut ShardOptions)) -> ShardOptions {
    let mut options = ShardOptions::new(dir);
    options.shard_count = 1;
    options.engine = EngineChoice::Portable;
    tune(&mut options);
    options
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        Cluster::start_with(n, |_| {})
    }

    /// `n` nodes whose shard options `tune` adjusts.
    fn start_with(n: u64, tune: fn(&mut ShardOptions)) -> Cluster {
        let transport = Arc::new(InProcess {
            runtime: tokio::runtime::Handle::current(),
            nodes: RwLock::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
            changes: Mutex::new(HashMap::new()),
            flaps: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
        });
        let config = Arc::new(TIMINGS.openraft_config().unwrap());
        let mut dirs = Vec::new();
        let mut contexts = HashMap::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let options = node_options(dir.path(), tune);
            let context = RaftContext {
                node_id: id,
                transport: transport.clone(),
                config: config.clone(),
                tail_cache_bytes_max: 1 << 20,
                append_bytes_max: 4 << 20,
                append_inflight_max: crate::config::ClusterConfig::default()
                    .replication_inflight_max as usize,
                quiet: TIMINGS.quiet_settings(),
            };
            let set = ShardSet::start_with(options, Some(context.clone())).unwrap();
            transport.nodes.write().unwrap().insert(id, set);
            contexts.insert(id, context);
            dirs.push(dir);
        }
        Cluster {
            transport,
            dirs,
            contexts,
            tune,
        }
    }

    /// Stops node `id` (syncing and closing its logs), optionally wipes partition 0 of
    /// `wipe`'s topic (its log and Raft state: a lost disk; the topic's metadata stays), and
    /// starts it again on the same directory.
    async fn restart(&self, id: NodeId, wipe: Option<&str>) {
        self.restart_after(id, async |dir| {
            if let Some(topic) = wipe {
                std::fs::remove_dir_all(partition_dir(dir, topic)).unwrap();
            }
        })
        .await;
    }

    /// Stops node `id` (syncing and closing its logs), lets `meddle` change its data
    /// directory, and starts it again there.
    async fn restart_after(&self, id: NodeId, meddle: impl AsyncFnOnce(&std::path::Path)) {
        let set = self.transport.nodes.write().unwrap().remove(&id).unwrap();
        self.transport.changed(id);
        set.shutdown().await.unwrap();
        let dir = self.dirs[id as usize - 1].path().to_owned();
        meddle(&dir).await;
        let context = self.contexts[&id].clone();
        let tune = self.tune;
        let set = tokio::task::spawn_blocking(move || {
            ShardSet::start_with(node_options(&dir, tune), Some(context)).unwrap()
        })
        .await
        .unwrap();
        self.transport.nodes.write().unwrap().insert(id, set);
        self.transport.changed(id);
    }

    /// Stops node `id` and starts it again on the same directory behind a fault injector:
    /// it crashes after `crash_after` write-like operations, and when it is stopped, its
    /// files lose what was not synced, torn (from `tear_seed`). A crash while it opens its
    /// partitions leaves it down (torn already).
    async fn restart_faulty(&self, id: NodeId, crash_after: u64, tear_seed: u64) {
        let set = self.transport.nodes.write().unwrap().remove(&id).unwrap();
        self.transport.changed(id);
        set.shutdown().await.unwrap();
        let dir = self.dirs[id as usize - 1].path().to_owned();
        let context = self.contexts[&id].clone();
        let tune = self.tune;
        let started = tokio::task::spawn_blocking(move || {
            ShardSet::start_faulty(
                node_options(&dir, tune),
                Some(context),
                crash_after,
                tear_seed,
            )
        })
        .await
        .unwrap();
        match started {
            Ok(set) => {
                self.transport.nodes.write().unwrap().insert(id, set);
                self.transport.changed(id);
            }
            Err(e) => eprintln!("node {id} crashed while it started: {e}"),
        }
    }

    /// Cuts node `id`'s power: stops it (a crashed engine fails the stop; that is the
    /// point), which tears what it had not synced, and starts it again on the plain engine.
    async fn power_cycle(&self, id: NodeId) {
        let set = self.transport.nodes.write().unwrap().remove(&id);
        if let Some(set) = set {
            self.transport.changed(id);
            drop(set.shutdown().await);
        }
        let dir = self.dirs[id as usize - 1].path().to_owned();
        let context = self.contexts[&id].clone();
        let tune = self.tune;
        let set = tokio::task::spawn_blocking(move || {
            ShardSet::start_with(node_options(&dir, tune), Some(context)).unwrap()
        })
        .await
        .unwrap();
        self.transport.nodes.write().unwrap().insert(id, set);
        self.transport.changed(id);
    }

    /// For six election timeouts, none of `others` sees a leader of `topic` other than
    /// `leader` (which is cut off: the only replica that holds every ack).
    async fn elect_none_but(&self, leader: NodeId, others: [NodeId; 2], topic: &str) {
        let window = Instant::now() + Duration::from_millis(TIMINGS.election_timeout_max_ms * 6);
        while Instant::now() < window {
            for id in others {
                let seen = self.leader_seen_by(id, topic).await;
                assert!(
                    seen.is_none() || seen == Some(leader),
                    "node {id} sees leader {seen:?} while the only full replica ({leader}) is cut off"
                );
            }
            tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
        }
    }

    /// The leader node `id` knows of for partition 0 of `topic`.
    async fn leader_seen_by(&self, id: NodeId, topic: &str) -> Option<NodeId> {
        let described = self.node(id).describe_topic(topic).await.unwrap();
        described.partitions[0].leader
    }

    fn node(&self, id: NodeId) -> ShardSet {
        self.transport.nodes.read().unwrap()[&id].clone()
    }

    fn live(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .transport
            .nodes
            .read()
            .unwrap()
            .keys()
            .copied()
            .collect();
        ids.retain(|id| !self.transport.is_down(*id));
        ids.sort();
        ids
    }

    async fn create(&self, topic: &str, replicas: &[NodeId]) {
        for id in replicas {
            self.node(*id)
                .create_topic_on(topic, 1, vec![replicas.to_vec()], true, 0)
                .await
                .unwrap();
        }
    }

    /// Appends `value` through whichever live node leads, following refusals until the
    /// deadline; returns the leader and the base offset.
    async fn append(&self, topic: &str, value: &[u8]) -> (NodeId, u64) {
        let deadline = Instant::now() + election_deadline();
        loop {
            for id in self.live() {
                let record = Record {
                    value: value.to_vec().into(),
                    ..Record::default()
                };
                match self.node(id).append(topic, 0, vec![record]).await {
                    Ok(ack) => return (id, ack.base_offset),
                    Err(Error::NotLeader { .. } | Error::Replication { .. }) => {}
                    Err(e) => panic!("append on node {id}: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader accepted an append in {:?}",
                election_deadline()
            );
            tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
        }
    }

    /// [`Cluster::append`] of `value`, recorded in `acked` at its offset; returns the leader.
    async fn append_acked(
        &self,
        topic: &str,
        value: Vec<u8>,
        acked: &mut Vec<(u64, Vec<u8>)>,
    ) -> NodeId {
        let (leader, offset) = self.append(topic, &value).await;
        acked.push((offset, value));
        leader
    }

    /// Every record node `id` serves (waits until its high watermark reaches `end`).
    async fn records(&self, id: NodeId, topic: &str, end: u64) -> Vec<(u64, Vec<u8>)> {
        let set = self.node(id);
        let deadline = Instant::now() + election_deadline();
        while set
            .read(topic, 0, 0, 1 << 20, 0)
            .await
            .unwrap()
            .high_watermark
            < end
        {
            assert!(
                Instant::now() < deadline,
                "node {id} did not commit up to {end}"
            );
            drop(
                set.wait_for(topic, 0, end.saturating_sub(1), Duration::from_millis(100))
                    .await,
            );
        }
        self.served(id, topic, 0, end).await
    }

    /// The records node `id` serves from `start` up to `end` (no waiting).
    async fn served(&self, id: NodeId, topic: &str, start: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
        let set = self.node(id);
        let mut out = Vec::new();
        let mut offset = start;
        while offset < end {
            let read = set.read(topic, 0, offset, 1 << 20, 0).await.unwrap();
            out.extend(read.records.iter().map(|r| (r.offset, r.value.to_vec())));
            assert!(
                read.next_offset > offset,
                "node {id}: a read at {offset} made no progress"
            );
            offset = read.next_offset;
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_replicate_commit_and_survive_the_leader() {
    drop(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init(),
    );
    let cluster = Cluster::start(3);
    cluster.create("t", &[1, 2, 3]).await;

    let mut acked: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut leader = 0;
    for i in 0..20 {
        leader = cluster
            .append_acked("t", format!("before-{i}").into_bytes(), &mut acked)
            .await;
    }
    let end = acked.last().unwrap().0 + 1;
    for id in 1..=3 {
        let served = cluster.records(id, "t", end).await;
        assert_eq!(
            served, acked,
            "node {id} serves exactly what was acknowledged"
        );
    }

    // Cut the leader off: the other two elect a new one and keep every acknowledged record.
    cluster.transport.cut(leader);
    for i in 0..10 {
        let at = cluster
            .append_acked("t", format!("after-{i}").into_bytes(), &mut acked)
            .await;
        assert_ne!(at, leader, "the cut-off leader cannot commit");
    }
    let end = acked.last().unwrap().0 + 1;
    for id in cluster.live() {
        let served = cluster.records(id, "t", end).await;
        assert_eq!(served, acked, "node {id} after the failover");
    }

    // Truncate goes through the group: refused on a follower (naming the leader), and on
    // the leader it commits a command every replica applies by purging below the cut.
    let (new_leader, probe) = cluster.append("t", b"probe").await;
    acked.push((probe, b"probe".to_vec()));
    let end = probe + 1;
    let follower = cluster
        .live()
        .into_iter()
        .find(|&id| id != new_leader)
        .unwrap();
    let refused = cluster.node(follower).truncate("t", 0, end).await;
    assert!(
        matches!(refused, Err(Error::NotLeader { leader: Some(l), .. }) if l == new_leader),
        "{refused:?}"
    );
    let cut = acked[acked.len() / 2].0;
    let start = cluster
        .node(new_leader)
        .truncate("t", 0, cut)
        .await
        .unwrap();
    assert_eq!(start, cut, "a cut at a batch boundary starts the log there");
    for id in cluster.live() {
        let deadline = Instant::now() + election_deadline();
        loop {
            let d = cluster
                .node(id)
                .describe_topic("t")
                .await
                .unwrap()
                .partitions[0]
                .clone();
            if d.start_offset == start {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not purge to {start}: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
        }
        let served = cluster.served(id, "t", start, end).await;
        let expected: Vec<_> = acked.iter().filter(|(o, _)| *o >= start).cloned().collect();
        assert_eq!(served, expected, "node {id} after the truncate");
    }
}

/// A replica whose log was wiped must not vote before it holds what was committed: here the
/// only other live node lags, and with the wiped node's vote it would become a leader
/// without the committed entries. It must not; once the full leader is back, all catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_does_not_vote_until_it_has_caught_up() {
    let cluster = Cluster::start(3);
    cluster.create("w", &[1, 2, 3]).await;
    let (leader, _) = cluster.append("w", b"first").await;
    let mut others = (1..=3).filter(|&id| id != leader);
    let (lagging, wiped) = (others.next().unwrap(), others.next().unwrap());

    // `lagging` misses the next entries: committed by `leader` and `wiped` alone.
    cluster.transport.cut(lagging);
    let mut acked = vec![];
    for i in 0..10 {
        let at = cluster
            .append_acked("w", format!("committed-{i}").into_bytes(), &mut acked)
            .await;
        assert_eq!(at, leader);
    }
    let end = acked.last().unwrap().0 + 1;
    cluster.records(wiped, "w", end).await;
    // The lagging replica refuses a read past its end: it is behind, not the reader wrong.
    let behind = cluster
        .node(lagging)
        .read("w", 0, end - 1, 1 << 20, 0)
        .await;
    assert!(
        matches!(behind, Err(Error::ReplicaBehind { .. })),
        "{behind:?}"
    );

    // `wiped` loses its disk and restarts; `leader` is cut off; `lagging` comes back.
    cluster.restart(wiped, Some("w")).await;
    cluster.transport.restore(lagging);
    cluster.transport.cut(leader);
    // For several election timeouts, no leader may arise among the two: `lagging` lacks
    // committed entries, and `wiped` refuses to vote.
    cluster.elect_none_but(leader, [lagging, wiped], "w").await;

    // The full replica returns: it leads again, and every node serves every ack.
    cluster.transport.restore(leader);
    let (_, offset) = cluster.append("w", b"after").await;
    acked.push((offset, b"after".to_vec()));
    let end = offset + 1;
    for id in 1..=3 {
        let served = cluster.records(id, "w", end).await;
        let mut expected = vec![(served[0].0, b"first".to_vec())];
        expected.extend(acked.iter().cloned());
        assert_eq!(served, expected, "node {id}");
    }
}

/// A wiped replica forgot its votes too. Here it helped elect a new leader while the old
/// one was cut off; then it lost its disk. The old leader, still at its old term, must not
/// find it willing: its answers would make a majority for entries that conflict with the
/// new leader's. Before its group starts, the wiped replica waits for the other replicas'
/// votes and keeps the highest, so the old leader's append is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_takes_no_entries_from_a_leader_it_had_outvoted() {
    let cluster = Cluster::start(3);
    cluster.create("v", &[1, 2, 3]).await;
    let (old_leader, _) = cluster.append("v", b"first").await;
    let old_term = term_seen_by(&cluster, old_leader, "v").await;

    // The old leader is cut off; the other two elect one of them (both vote: a majority of
    // three needs both) and commit without it.
    cluster.transport.cut(old_leader);
    let (new_leader, _) = cluster.append("v", b"second").await;
    assert_ne!(new_leader, old_leader);
    let wiped = (1..=3)
        .find(|&id| id != old_leader && id != new_leader)
        .unwrap();
    let new_term = term_seen_by(&cluster, new_leader, "v").await;
    assert!(new_term > old_term, "{new_term} > {old_term}");

    // The voter loses its disk; the new leader is cut off; the old one is back (as if it
    // had not heard yet that it was deposed).
    cluster.transport.cut(new_leader);
    cluster.restart(wiped, Some("v")).await;
    cluster.transport.restore(old_leader);
    let stale_append = || pb::RaftEnvelope {
        id: 0,
        topic: "v".to_owned(),
        partition: 0,
        from_node: old_leader as u32,
        incarnation: 0,
        to_node: wiped as u32,
        body: Some(pb::raft_envelope::Body::Append(pb::RaftAppendRequest {
            vote: Some(super::wire::vote_to(&super::types::Vote::new_committed(
                old_term, old_leader,
            ))),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        })),
    };
    let taken = |answer: &pb::RaftEnvelope| {
        matches!(
            &answer.body,
            Some(pb::raft_envelope::Body::AppendResponse(
                pb::RaftAppendResponse {
                    result: Some(pb::raft_append_response::Result::Success(_)),
                }
            ))
        )
    };
    // For six election timeouts, the wiped replica takes nothing from the old leader: it
    // cannot hear from enough replicas to learn their votes, so its group waits.
    let window = Instant::now() + Duration::from_millis(TIMINGS.election_timeout_max_ms * 6);
    while Instant::now() < window {
        let answer = cluster.node(wiped).deliver_raft(stale_append()).await;
        assert!(
            !taken(&answer),
            "the wiped replica took the deposed leader's append: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
    }

    // The new leader is back: the wiped replica's group starts with a vote of the new term
    // at least, and refuses the old leader for its lower term.
    cluster.transport.restore(new_leader);
    let deadline = Instant::now() + election_deadline();
    let refused_term = loop {
        let answer = cluster.node(wiped).deliver_raft(stale_append()).await;
        assert!(
            !taken(&answer),
            "the wiped replica took the deposed leader's append: {answer:?}"
        );
        if let Some(pb::raft_envelope::Body::AppendResponse(pb::RaftAppendResponse {
            result: Some(pb::raft_append_response::Result::HigherVote(vote)),
        })) = &answer.body
        {
            break vote.term;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped replica's group never started: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
    };
    assert!(refused_term >= new_term, "{refused_term} >= {new_term}");

    // And it catches up: every node serves both acknowledged records and a new one.
    let (_, offset) = cluster.append("v", b"third").await;
    for id in 1..=3 {
        let served: Vec<Vec<u8>> = cluster
            .records(id, "v", offset + 1)
            .await
            .into_iter()
            .map(|(_, value)| value)
            .collect();
        assert_eq!(served, [&b"first"[..], b"second", b"third"], "node {id}");
    }
}

/// RELIABILITY finding 8: a replica that cut a damaged log and went down before it had
/// caught up still must not vote when it comes back. Here it crashes right after the cut:
/// its log ends where a lagging replica's does, and with the only full replica cut off, the
/// two must not elect a leader (which would take new appends over the acknowledged ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cut_its_log_does_not_vote_after_a_restart_until_caught_up() {
    a_replica_that_lost_entries_does_not_vote(true).await;
}

/// The same loss without a marker (entries lost while the node was down, as a damaged
/// active segment cut at open): the applied mark it saved at its stop lies past its log's
/// end, and that alone makes it rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_log_ends_before_its_applied_mark_rejoins() {
    a_replica_that_lost_entries_does_not_vote(false).await;
}

/// A replica loses the acknowledged entries after the first (with the rejoin marker set
/// before, as the shard's cut does, when `marked`) while down; with the only full replica
/// cut off, it and a lagging replica must elect no leader; then every ack is served
/// everywhere and its marker goes.
async fn a_replica_that_lost_entries_does_not_vote(marked: bool) {
    let cluster = Cluster::start(3);
    cluster.create("c", &[1, 2, 3]).await;
    let (leader, _) = cluster.append("c", b"first").await;
    let mut others = (1..=3).filter(|&id| id != leader);
    let (lagging, damaged) = (others.next().unwrap(), others.next().unwrap());

    cluster.transport.cut(lagging);
    let mut acked = vec![];
    for i in 0..10 {
        cluster
            .append_acked("c", format!("committed-{i}").into_bytes(), &mut acked)
            .await;
    }
    let end = acked.last().unwrap().0 + 1;
    cluster.records(damaged, "c", end).await;

    // `damaged` found damage at the first committed record, set its marker, cut its log
    // there (as the shard does) and crashed before it heard from a leader again.
    let cut_at = acked[0].0;
    cluster
        .restart_after(damaged, async |dir| {
            let engine = crate::storage::PortableEngine::new();
            let limits = crate::storage::LogLimits::default();
            let (mut log, _) = crate::storage::Log::open(engine, &partition_dir(dir, "c"), limits)
                .await
                .unwrap();
            if marked {
                log.set_rejoin_marker(cut_at).await.unwrap();
            }
            log.truncate_suffix(cut_at).await.unwrap();
            log.close().await.unwrap();
        })
        .await;
    let marker = partition_dir(cluster.dirs[damaged as usize - 1].path(), "c").join("raft_rejoin");
    assert!(
        marker.exists(),
        "the marker survives the restart until caught up"
    );
    cluster.transport.restore(lagging);
    cluster.transport.cut(leader);
    cluster
        .elect_none_but(leader, [lagging, damaged], "c")
        .await;

    // The full replica returns: every node serves every ack, and the damaged one, caught
    // up, drops its marker.
    cluster.transport.restore(leader);
    let (_, offset) = cluster.append("c", b"after").await;
    acked.push((offset, b"after".to_vec()));
    for id in 1..=3 {
        let served = cluster.records(id, "c", offset + 1).await;
        let mut expected = vec![(served[0].0, b"first".to_vec())];
        expected.extend(acked.iter().cloned());
        assert_eq!(served, expected, "node {id}");
    }
    let deadline = Instant::now() + election_deadline();
    while marker.exists() {
        assert!(
            Instant::now() < deadline,
            "node {damaged} caught up but kept its rejoin marker"
        );
        tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
    }
}

/// Messages lost, duplicated and reordered, from a printed seed (`WALRS_TEST_SEED` replays
/// one): the groups still elect, commit and never lose or change an acknowledged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_duplicated_and_reordered_messages_lose_no_ack() {
    let base = crate::testing::seed();
    for round in 0..4u64 {
        let seed = base.wrapping_add(round) | 1;
        println!("seed {seed} (WALRS_TEST_SEED={seed} replays this round)");
        let cluster = Cluster::start(3);
        *cluster.transport.faults.lock().unwrap() = Faults {
            drop_percent: 10,
            duplicate_percent: 10,
            delay_percent: 20,
            delay_ms_max: TIMINGS.heartbeat_interval_ms,
            rng: seed,
        };
        cluster.create("f", &[1, 2, 3]).await;
        let mut acked = Vec::new();
        for i in 0..30 {
            let value = format!("r{round}-{i}").into_bytes();
            let (leader, offset) = cluster.append("f", &value).await;
            assert!(
                acked.last().is_none_or(|(last, _)| offset > *last),
                "seed {seed}: offset {offset} not above the previous ack"
            );
            acked.push((offset, value));
            if i == 15 {
                // Cut whichever node leads now, for the rest of the round.
                cluster.transport.cut(leader);
            }
        }
        let end = acked.last().unwrap().0 + 1;
        for id in cluster.live() {
            let served: HashMap<u64, Vec<u8>> =
                cluster.records(id, "f", end).await.into_iter().collect();
            for (offset, value) in &acked {
                assert_eq!(
                    served.get(offset),
                    Some(value),
                    "seed {seed}: node {id} lost or changed offset {offset}"
                );
            }
        }
    }
}

/// A leader cut off from the others: what it appends alone is never acknowledged; once it
/// has gone a lease without a majority it refuses appends (no leader known), so clients find
/// the new one; when it rejoins, its uncommitted suffix is replaced by what the new leader
/// committed at those offsets, and it serves exactly that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_stops_taking_appends_and_its_suffix_is_replaced() {
    let cluster = Cluster::start(3);
    cluster.create("p", &[1, 2, 3]).await;
    let mut acked = Vec::new();
    let mut old = 0;
    for i in 0..5 {
        old = cluster
            .append_acked("p", format!("before-{i}").into_bytes(), &mut acked)
            .await;
    }
    cluster.transport.cut(old);
    // Appended on the cut-off leader alone: it can never be acknowledged.
    let stranded = {
        let set = cluster.node(old);
        tokio::spawn(async move {
            let record = Record {
                value: b"stranded".to_vec().into(),
                ..Record::default()
            };
            set.append("p", 0, vec![record]).await
        })
    };
    for i in 0..5 {
        let at = cluster
            .append_acked("p", format!("after-{i}").into_bytes(), &mut acked)
            .await;
        assert_ne!(at, old);
    }
    // Past its lease the old leader refuses appends at once, naming no leader.
    let deadline = Instant::now() + election_deadline();
    loop {
        let record = Record {
            value: b"refused".to_vec().into(),
            ..Record::default()
        };
        let tried = tokio::time::timeout(
            Duration::from_millis(TIMINGS.heartbeat_interval_ms),
            cluster.node(old).append("p", 0, vec![record]),
        )
        .await;
        if let Ok(Err(Error::NotLeader { leader: None, .. })) = tried {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cut-off leader still takes appends: {tried:?}"
        );
    }
    cluster.transport.restore(old);
    let (_, offset) = cluster.append("p", b"healed").await;
    acked.push((offset, b"healed".to_vec()));
    let end = offset + 1;
    for id in 1..=3 {
        assert_eq!(cluster.records(id, "p", end).await, acked, "node {id}");
    }
    let stranded = tokio::time::timeout(election_deadline(), stranded)
        .await
        .expect("the stranded append is answered once its leader rejoins")
        .unwrap();
    assert!(
        stranded.is_err(),
        "an append only the cut-off leader held was acknowledged: {stranded:?}"
    );
}

/// A restarted replica resumes from its saved applied mark: cut off from the others, it
/// still serves everything it had applied, without replaying its log through a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_serves_what_it_had_applied_before_any_leader_contact() {
    let cluster = Cluster::start(3);
    cluster.create("r", &[1, 2, 3]).await;
    let mut acked = Vec::new();
    let mut leader = 0;
    for i in 0..10 {
        leader = cluster
            .append_acked("r", format!("r-{i}").into_bytes(), &mut acked)
            .await;
    }
    let end = acked.last().unwrap().0 + 1;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    assert_eq!(cluster.records(follower, "r", end).await, acked);
    // Restarted and cut off at once: no leader can tell it what is committed.
    cluster.transport.cut(follower);
    cluster.restart(follower, None).await;
    let read = cluster
        .node(follower)
        .read("r", 0, 0, 1 << 20, 0)
        .await
        .unwrap();
    assert_eq!(
        read.high_watermark, end,
        "the commit mark came back with the replica"
    );
    assert_eq!(cluster.records(follower, "r", end).await, acked);
}

/// Retention on a replicated partition goes through its group: the leader purges what
/// retention would delete (after a metadata snapshot covers it), and a follower that was
/// away while the leader's log start passed its end installs that snapshot, starts its log
/// again there, and serves exactly what the leader serves from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_start_installs_a_snapshot() {
    let cluster = Cluster::start_with(3, |options| {
        options.log.record_bytes_max = 512;
        options.log.batch_bytes_max = 1024;
        options.log.segment_bytes_max = 4096;
        options.log.retention_bytes = 8192;
        options.maintenance_interval_ms = 50;
    });
    cluster.create("s", &[1, 2, 3]).await;
    let (leader, _) = cluster.append("s", b"first").await;
    let away = (1..=3).find(|&id| id != leader).unwrap();
    let away_end = cluster
        .node(away)
        .describe_topic("s")
        .await
        .unwrap()
        .partitions[0]
        .end_offset;
    cluster.transport.cut(away);

    let mut acked = Vec::new();
    for i in 0..200 {
        cluster
            .append_acked(
                "s",
                format!("retained-{i:04}-{}", "x".repeat(40)).into_bytes(),
                &mut acked,
            )
            .await;
    }
    // The leader's retention purges past the away follower's end.
    let deadline = Instant::now() + election_deadline();
    let leader_now = loop {
        let mut starts = Vec::new();
        for id in cluster.live() {
            let d = cluster.node(id).describe_topic("s").await.unwrap();
            starts.push((id, d.partitions[0].start_offset));
        }
        if starts.iter().all(|&(_, start)| start > away_end) {
            break starts[0].0;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not purge: starts {starts:?}, away end {away_end}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    cluster.transport.restore(away);
    let (_, offset) = cluster.append("s", b"after").await;
    acked.push((offset, b"after".to_vec()));
    let end = offset + 1;
    // The follower installs the snapshot and catches up; from its new start on it serves
    // exactly what the leader serves, and every ack from there.
    let deadline = Instant::now() + election_deadline();
    let (start, served) = loop {
        let d = cluster
            .node(away)
            .describe_topic("s")
            .await
            .unwrap()
            .partitions[0]
            .clone();
        if d.high_watermark >= end && d.start_offset > away_end {
            let served = cluster.served(away, "s", d.start_offset, end).await;
            break (d.start_offset, served);
        }
        assert!(
            Instant::now() < deadline,
            "the away follower did not catch up: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expected: Vec<(u64, Vec<u8>)> =
        acked.iter().filter(|(o, _)| *o >= start).cloned().collect();
    assert!(!expected.is_empty());
    assert_eq!(
        served, expected,
        "the follower after its snapshot (leader {leader_now})"
    );
}

/// Waits until every group on every live node is quiet (see `raft::quiet`): no heartbeats,
/// no election timers.
async fn all_quiet(cluster: &Cluster, groups_per_node: u64) {
    let deadline =
        Instant::now() + election_deadline() + Duration::from_millis(TIMINGS.quiesce_after_ms * 4);
    loop {
        let counts: Vec<(NodeId, u64, u64)> = cluster
            .live()
            .into_iter()
            .map(|id| {
                let stats = cluster.node(id).total_stats();
                (id, stats.raft_groups, stats.raft_groups_quiet)
            })
            .collect();
        if counts
            .iter()
            .all(|&(_, groups, quiet)| groups == groups_per_node && quiet == groups)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "groups not all quiet: (node, groups, quiet) {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
    }
}

/// Waits until some group on node `id` is awake.
async fn some_awake(cluster: &Cluster, id: NodeId) {
    let deadline = Instant::now() + election_deadline();
    loop {
        let stats = cluster.node(id).total_stats();
        if stats.raft_groups_quiet < stats.raft_groups {
            return;
        }
        assert!(Instant::now() < deadline, "node {id}'s groups never woke");
        tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms / 10)).await;
    }
}

/// Each node's (leader, term) of partition 0 of `topic`.
async fn terms(cluster: &Cluster, topic: &str) -> Vec<(NodeId, Option<NodeId>, u64)> {
    let mut out = Vec::new();
    for id in cluster.live() {
        let described = cluster.node(id).describe_topic(topic).await.unwrap();
        let p = &described.partitions[0];
        out.push((id, p.leader, p.leader_epoch));
    }
    out
}

/// The term node `id` is in for partition 0 of `topic`.
async fn term_seen_by(cluster: &Cluster, id: NodeId, topic: &str) -> u64 {
    let described = cluster.node(id).describe_topic(topic).await.unwrap();
    described.partitions[0].leader_epoch
}

/// Waits until partition 0 of `q` is quiet again on every node, and checks that `what`
/// changed neither its leader nor its term (`before`, from [`terms`]).
async fn settles_unchanged(
    cluster: &Cluster,
    before: &[(NodeId, Option<NodeId>, u64)],
    what: &str,
) {
    all_quiet(cluster, 1).await;
    assert_eq!(
        terms(cluster, "q").await,
        before,
        "{what} changed the quiet group's leader or term"
    );
}

/// Idle groups go quiet; a write wakes them and is committed; a restarted follower does not
/// depose a quiet leader; a quiet leader cut off is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_go_quiet_and_wake_for_writes_restarts_and_lost_leaders() {
    let cluster = Cluster::start(3);
    cluster.create("q", &[1, 2, 3]).await;
    let mut acked = Vec::new();
    let (leader, offset) = cluster.append("q", b"first").await;
    acked.push((offset, b"first".to_vec()));
    all_quiet(&cluster, 1).await;
    let before = terms(&cluster, "q").await;
    assert!(
        before.iter().all(|&(_, l, _)| l == Some(leader)),
        "every replica knows the leader while quiet: {before:?}"
    );

    // A write wakes the group and commits on every replica; it goes quiet again after.
    let (at, offset) = cluster.append("q", b"wakes").await;
    assert_eq!(at, leader, "a write to a quiet group needs no election");
    acked.push((offset, b"wakes".to_vec()));
    for id in 1..=3 {
        assert_eq!(
            cluster.records(id, "q", offset + 1).await,
            acked,
            "node {id}"
        );
    }
    all_quiet(&cluster, 1).await;

    // A follower that restarts (it missed the quiet spell, and its election timer runs)
    // learns the leader instead of deposing it.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    cluster.restart(follower, None).await;
    settles_unchanged(&cluster, &before, "a restarted follower").await;

    // A follower's link to the leader flaps, unseen by the leader: the follower wakes, finds
    // its election timer long expired and campaigns; the other follower (quiet) and the
    // leader refuse its pre-votes and the leader resumes heartbeats, so nothing changes.
    cluster.transport.flap(follower, leader);
    some_awake(&cluster, follower).await;
    settles_unchanged(&cluster, &before, "a follower woken by a link flap").await;

    // Both ends see the link flap (a connection reset): leader and follower wake, each at its
    // own shard's next look; the follower's election timer has long expired and the leader's
    // leases have lapsed, so without the grace after waking the leader would grant its
    // pre-vote. Nothing changes.
    cluster.transport.flap(follower, leader);
    cluster.transport.flap(leader, follower);
    some_awake(&cluster, follower).await;
    settles_unchanged(&cluster, &before, "a link reset seen from both ends").await;

    // The quiet leader is cut off: its followers' link to it changes, they wake and elect.
    cluster.transport.cut(leader);
    let (at, offset) = cluster.append("q", b"after the leader").await;
    assert_ne!(at, leader);
    acked.push((offset, b"after the leader".to_vec()));
    cluster.transport.restore(leader);
    let (_, offset) = cluster.append("q", b"healed").await;
    acked.push((offset, b"healed".to_vec()));
    for id in 1..=3 {
        assert_eq!(
            cluster.records(id, "q", offset + 1).await,
            acked,
            "node {id}"
        );
    }
    all_quiet(&cluster, 1).await;
}

/// A quiet group whose leader's replica goes away on a node that stays up (no link
/// changes): the followers' periodic CHECK finds no leader, they wake and elect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_followers_elect_when_the_leaders_replica_vanishes_on_a_live_node() {
    let cluster = Cluster::start(3);
    cluster.create("v", &[1, 2, 3]).await;
    let (leader, offset) = cluster.append("v", b"held").await;
    all_quiet(&cluster, 1).await;
    // The leader's node drops its replica (its Raft group stops); the node, and so every
    // link, stays up.
    cluster.node(leader).delete_topic("v").await.unwrap();
    let settings = TIMINGS.quiet_settings();
    let deadline = Instant::now() + settings.check_every + election_deadline();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    loop {
        let mut leaders = Vec::new();
        for &id in &others {
            leaders.push(cluster.leader_seen_by(id, "v").await);
        }
        if leaders
            .iter()
            .all(|l| l.is_some_and(|l| l != leader) && *l == leaders[0])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader among {others:?} within {:?}: they see {leaders:?}",
            settings.check_every + election_deadline()
        );
        tokio::time::sleep(Duration::from_millis(TIMINGS.heartbeat_interval_ms)).await;
    }
    // The two elect one and take writes; what was acknowledged is there.
    for &id in &others {
        let records = cluster.served(id, "v", 0, offset + 1).await;
        assert_eq!(records, vec![(offset, b"held".to_vec())], "node {id}");
    }
}

/// The crash test's torn and forgotten writes, on one replica at a time: a random replica
/// (leader or follower) crashes at a random write under load, loses every byte it had not
/// synced (the last surviving ones may be garbage), and restarts. Every acknowledged record
/// is then served by all three replicas, at its offset, and nothing else is. Seeds are
/// printed; `WALRS_TEST_SEED` replays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_unsynced_writes_loses_no_acknowledged_record() {
    drop(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init(),
    );
    let base = crate::testing::seed();
    let cases = 3;
    for case in 0..cases {
        let seed = (base | 1).wrapping_add(case * 2);
        eprintln!("torn replica case {case}: seed {seed} (WALRS_TEST_SEED={seed} replays it)");
        let mut rng = Faults {
            rng: seed,
            ..Faults::default()
        };
        let cluster = Cluster::start(3);
        cluster.create("c", &[1, 2, 3]).await;
        let mut acked = Vec::new();
        let (_, offset) = cluster.append("c", b"before").await;
        acked.push((offset, b"before".to_vec()));
        let victim = 1 + rng.roll(3);
        // Each append costs a replica a write and a sync or two, and an election a vote file:
        // 60 appends pass well beyond the crash point.
        let crash_after = 1 + rng.roll(80);
        cluster
            .restart_faulty(victim, crash_after, rng.roll(u64::MAX))
            .await;
        for i in 0..60 {
            cluster
                .append_acked("c", format!("c{case}-{i}").into_bytes(), &mut acked)
                .await;
        }
        cluster.power_cycle(victim).await;
        let (_, offset) = cluster.append("c", b"after").await;
        acked.push((offset, b"after".to_vec()));
        // An append the crashed leader was writing may have committed though its caller
        // got an error (the group stopped before answering); the retry then wrote the value
        // again. So: every replica serves the same records; every acknowledged record is
        // there at its offset; anything else is a second copy of an acknowledged value (no
        // idempotent producer here).
        let why = format!(
            "seed {seed}: node {victim} lost its unsynced writes after {crash_after} operations"
        );
        let first = cluster.records(1, "c", offset + 1).await;
        for id in 2..=3 {
            assert_eq!(
                cluster.records(id, "c", offset + 1).await,
                first,
                "{why}: node {id} differs from node 1"
            );
        }
        let served: HashMap<u64, Vec<u8>> = first.iter().cloned().collect();
        for (offset, value) in &acked {
            assert_eq!(
                served.get(offset),
                Some(value),
                "{why}: acknowledged offset {offset}"
            );
        }
        let values: HashSet<&Vec<u8>> = acked.iter().map(|(_, v)| v).collect();
        for (offset, value) in &first {
            assert!(
                values.contains(value),
                "{why}: offset {offset} holds a value never appended"
            );
        }
    }
}
