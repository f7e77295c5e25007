//! In-process clusters: three nodes' shard sets in one process, real partition logs on disk
//! (the portable engine, real fsync), real Raft groups, and an in-process transport between
//! them that can cut a node off. Timeouts derive from the groups' election timings.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::group::{RaftContext, RaftTimings};
use super::network::{RaftTransport, TransportError, TransportReply};
use super::types::NodeId;
use crate::proto::v1 as pb;
use crate::shard::{EngineChoice, Error, ShardOptions, ShardSet};
use crate::storage::Record;

/// Delivers each message straight to the destination node's shard set, on a tokio task.
struct InProcess {
    runtime: tokio::runtime::Handle,
    nodes: RwLock<HashMap<NodeId, ShardSet>>,
    /// Nodes cut off: nothing reaches them and nothing leaves them.
    down: Mutex<HashSet<NodeId>>,
}

impl InProcess {
    fn is_down(&self, node: NodeId) -> bool {
        self.down.lock().unwrap().contains(&node)
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
                self.runtime.spawn(async move {
                    let answer = set.deliver_raft(message).await;
                    // The caller may have timed out.
                    drop(tx.send(Ok(answer)));
                });
                return rx;
            }
        };
        drop(tx.send(answer));
        rx
    }
}

const TIMINGS: RaftTimings = RaftTimings {
    election_timeout_min_ms: 300,
    election_timeout_max_ms: 600,
    heartbeat_interval_ms: 100,
    raft_payload_entries_max: 64,
};

/// How long an election may take here: many election timeouts (two busy cores).
fn election_deadline() -> Duration {
    Duration::from_millis(TIMINGS.election_timeout_max_ms * 20)
}

struct Cluster {
    transport: Arc<InProcess>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        let transport = Arc::new(InProcess {
            runtime: tokio::runtime::Handle::current(),
            nodes: RwLock::new(HashMap::new()),
            down: Mutex::new(HashSet::new()),
        });
        let config = Arc::new(TIMINGS.openraft_config().unwrap());
        let mut dirs = Vec::new();
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            let mut options = ShardOptions::new(dir.path());
            options.shard_count = 1;
            options.engine = EngineChoice::Portable;
            let context = RaftContext {
                node_id: id,
                addrs: Arc::new((1..=n).map(|i| (i, format!("node-{i}.test:1"))).collect()),
                transport: transport.clone(),
                config: config.clone(),
            };
            let set = ShardSet::start_with(options, Some(context)).unwrap();
            transport.nodes.write().unwrap().insert(id, set);
            dirs.push(dir);
        }
        Cluster {
            transport,
            _dirs: dirs,
        }
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
                .create_topic_on(topic, 1, vec![replicas.to_vec()])
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
        let mut out = Vec::new();
        let mut offset = 0;
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
        let value = format!("before-{i}").into_bytes();
        let (at, offset) = cluster.append("t", &value).await;
        leader = at;
        acked.push((offset, value));
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
    cluster.transport.down.lock().unwrap().insert(leader);
    for i in 0..10 {
        let value = format!("after-{i}").into_bytes();
        let (at, offset) = cluster.append("t", &value).await;
        assert_ne!(at, leader, "the cut-off leader cannot commit");
        acked.push((offset, value));
    }
    let end = acked.last().unwrap().0 + 1;
    for id in cluster.live() {
        let served = cluster.records(id, "t", end).await;
        assert_eq!(served, acked, "node {id} after the failover");
    }

    // A prefix truncation would cut the Raft log behind its group: refused, nothing changed.
    for id in cluster.live() {
        let refused = cluster.node(id).truncate("t", 0, end).await;
        assert!(
            matches!(refused, Err(Error::NotOnReplicated { .. })),
            "node {id}: {refused:?}"
        );
        assert_eq!(
            cluster.records(id, "t", end).await,
            acked,
            "node {id} after the refusal"
        );
    }
}
