//! Clusters of real `walrs` servers in one process: three nodes on loopback, each with its own
//! data dir, listener and node certificate, talking `walrs.v1.Replication` over mutual TLS.
//! Every wait is on an event (a leader known, a high watermark reached) polled against a
//! deadline derived from the election timings below, never a fixed sleep.

mod common;
#[path = "common/small_mount.rs"]
mod small_mount;

use std::path::Path;
use std::time::{Duration, Instant};

use tonic::Code;
use walrs::client::{Client, ClientTls, ReadOptions, record};
use walrs::config::{AclEntry, Config, NodeAddr, TlsConfig};
use walrs::observability::names;
use walrs::proto::v1::{self as pb, AppendResponse};
use walrs::server::acl::Action;
use walrs::server::{LEADER_METADATA, Running};

const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1000;
const HEARTBEAT_MS: u64 = 100;

/// How long an election (or a catch-up) may take on two busy cores: many election timeouts.
fn deadline() -> Instant {
    Instant::now() + Duration::from_millis(ELECTION_MAX_MS * 30)
}

/// The pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    id: u32,
    config: Config,
    running: Option<Running>,
}

struct TestCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn node_config(dir: &Path, id: u32, addrs: &[(u32, String)]) -> Config {
    let certs = dir.join("certs");
    let mut config = common::mtls_config(dir);
    config.data_dir = dir.join(format!("node-{id}"));
    let own = &addrs.iter().find(|(i, _)| *i == id).unwrap().1;
    config.listen = own.parse().unwrap();
    config.cluster.node_id = id;
    config.metrics.enabled = false;
    config.cluster.peers = addrs
        .iter()
        .filter(|(i, _)| *i != id)
        .map(|(i, addr)| NodeAddr {
            id: *i,
            addr: addr.clone(),
        })
        .collect();
    config.cluster.election_timeout_min_ms = ELECTION_MIN_MS;
    config.cluster.election_timeout_max_ms = ELECTION_MAX_MS;
    config.cluster.heartbeat_interval_ms = HEARTBEAT_MS;
    config.tls = Some(TlsConfig {
        cert: certs.join(format!("node-{id}.pem")),
        key: certs.join(format!("node-{id}-key.pem")),
        client_ca: certs.join("ca.pem"),
    });
    for (peer, _) in addrs {
        config.acl.push(AclEntry {
            identity: format!("node-{peer}"),
            topics: vec!["*".into()],
            actions: vec![Action::Replicate],
        });
    }
    config
}

impl TestCluster {
    async fn start(n: u32) -> TestCluster {
        TestCluster::start_with(n, |_, _| {}).await
    }

    /// A cluster of `n` nodes whose configs `tune(id, config)` changed first.
    async fn start_with(n: u32, tune: impl Fn(u32, &mut Config)) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<(u32, String)> = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        // The CA and the clients first (mtls_config), then a certificate per node.
        common::mtls_config(dir.path());
        for id in 1..=n {
            walrs::certs::generate_node(&dir.path().join("certs"), id, &[], false).unwrap();
        }
        let mut cluster = TestCluster {
            nodes: (1..=n)
                .map(|id| {
                    let mut config = node_config(dir.path(), id, &addrs);
                    tune(id, &mut config);
                    Node {
                        id,
                        config,
                        running: None,
                    }
                })
                .collect(),
            dir,
        };
        for id in 1..=n {
            cluster.launch(id).await;
        }
        for id in 1..=n {
            cluster.joined(id).await;
        }
        cluster
    }

    /// Adds node `id` to the running cluster as an operator would: a new certificate, an
    /// empty data dir, and a config that lists the running nodes (its seeds). The running
    /// nodes' configs do not list it: they learn of it by gossip. Waits until it has joined.
    async fn add_node(&mut self, id: u32) {
        walrs::certs::generate_node(&self.dir.path().join("certs"), id, &[], false).unwrap();
        let mut addrs: Vec<(u32, String)> =
            self.nodes.iter().map(|n| (n.id, self.addr(n.id))).collect();
        addrs.push((id, format!("127.0.0.1:{}", free_port())));
        let config = node_config(self.dir.path(), id, &addrs);
        self.nodes.push(Node {
            id,
            config,
            running: None,
        });
        self.restart(id).await;
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    fn addr(&self, id: u32) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap()
            .config
            .listen
            .to_string()
    }

    /// Starts node `id` and waits until it has joined (it serves clients only then).
    async fn restart(&mut self, id: u32) {
        self.launch(id).await;
        self.joined(id).await;
    }

    async fn launch(&mut self, id: u32) {
        let config = self.node(id).config.clone();
        let running = walrs::server::start(config).await.unwrap();
        self.node(id).running = Some(running);
    }

    /// Waits until node `id` says it has joined: gossip's word for itself is "alive" once
    /// it follows the controller's log with its topics reconciled.
    async fn joined(&self, id: u32) {
        let until = deadline();
        let client = self.client(id, "root").await;
        loop {
            let cluster = client.describe_cluster().await.unwrap();
            if cluster
                .nodes
                .iter()
                .any(|n| n.id == id && n.state == "alive")
            {
                return;
            }
            assert!(
                Instant::now() < until,
                "node {id} never joined: {cluster:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    async fn stop(&mut self, id: u32) {
        let running = self.node(id).running.take().expect("running");
        running.shutdown().await.unwrap();
    }

    fn live(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }

    async fn client(&self, id: u32, name: &str) -> Client {
        Client::connect(
            &self.addr(id),
            Some(ClientTls::from_dir(self.dir.path().join("certs"), name)),
        )
        .await
        .unwrap()
    }

    /// A raw channel to node `id`, authenticated as `identity` (a client or `node-N`).
    async fn channel_as(&self, id: u32, identity: &str) -> tonic::transport::Channel {
        let tls = ClientTls::from_dir(self.dir.path().join("certs"), identity)
            .load()
            .unwrap();
        tonic::transport::Endpoint::from_shared(format!("https://{}", self.addr(id)))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// CreateTopic of `name` with one partition and 3 replicas, asked of node `id` as root.
    async fn create_replicated(
        &self,
        id: u32,
        name: &str,
    ) -> Result<pb::CreateTopicResponse, tonic::Status> {
        self.client(id, "root")
            .await
            .log_client()
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions: 1,
                replication_factor: 3,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// The leader the live nodes agree on for `topic`/`partition`, once one is known.
    async fn leader(&self, topic: &str, partition: u32) -> u32 {
        let until = deadline();
        loop {
            let mut seen = Vec::new();
            // The live nodes that hold a replica (all of them in a 3-node cluster).
            let mut live = Vec::new();
            for id in self.live() {
                let client = self.client(id, "root").await;
                match client.describe_topic(topic).await {
                    Ok(d) if !d.partitions[partition as usize].replicas.contains(&id) => {}
                    Ok(d) => {
                        seen.push(d.partitions[partition as usize].leader);
                        live.push(id);
                    }
                    Err(_) => live.push(id),
                }
            }
            if let Some(&leader) = seen.first()
                && leader != 0
                && live.contains(&leader)
                && seen.len() == live.len()
                && seen.iter().all(|&l| l == leader)
            {
                return leader;
            }
            assert!(
                Instant::now() < until,
                "no leader of {topic}/{partition} agreed by nodes {live:?}: {seen:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Appends through whichever node leads, following the refusals' leader hints.
    async fn append(&self, topic: &str, values: &[String]) -> AppendResponse {
        let request = pb::AppendRequest {
            topic: topic.into(),
            partition: Some(0),
            records: values.iter().map(|v| record("", v.clone())).collect(),
            ..pb::AppendRequest::default()
        };
        self.send(request)
            .await
            .unwrap_or_else(|status| panic!("append refused: {status:?}"))
    }

    /// Sends `request` as it is to whichever node leads, following the refusals' leader
    /// hints and retrying UNAVAILABLE; any other refusal is returned.
    async fn send(&self, request: pb::AppendRequest) -> Result<AppendResponse, tonic::Status> {
        let until = deadline();
        let mut target = self.live()[0];
        loop {
            let client = self.client(target, "root").await;
            match client.log_client().append(request.clone()).await {
                Ok(ack) => return Ok(ack.into_inner()),
                Err(status) if status.code() == Code::Unavailable => {
                    match status.metadata().get(LEADER_METADATA) {
                        Some(hint) => {
                            let hint = hint.to_str().unwrap();
                            let (id, addr) = hint.split_once('=').expect("id=addr");
                            let id: u32 = id.parse().unwrap();
                            assert_eq!(addr, self.addr(id), "the hint names the leader's address");
                            if self.live().contains(&id) {
                                target = id;
                            }
                        }
                        None => {
                            let live = self.live();
                            let next = live.iter().position(|&i| i == target).map_or(0, |p| p + 1);
                            target = live[next % live.len()];
                            tokio::time::sleep(POLL).await;
                        }
                    }
                }
                Err(status) => return Err(status),
            }
            assert!(Instant::now() < until, "no leader took the append");
        }
    }

    /// Every record of partition 0 as node `id` serves it, once its high watermark reaches
    /// `count`.
    async fn read_all(&self, id: u32, topic: &str, count: u64) -> Vec<Vec<u8>> {
        let until = deadline();
        let client = self.client(id, "root").await;
        loop {
            // NOT_FOUND until a rejoining node has re-created the topic.
            let d = client.describe_topic(topic).await;
            if let Ok(d) = &d
                && d.partitions[0].high_watermark >= count
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "node {id} did not reach {count} records: {d:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        let mut values = Vec::new();
        let mut offset = 0;
        while offset < count {
            let r = client
                .read(topic, 0, offset, ReadOptions::default())
                .await
                .unwrap();
            values.extend(r.records.iter().map(|rec| rec.value.to_vec()));
            offset = r.next_offset;
        }
        values
    }

    async fn shutdown(mut self) {
        for id in self.live() {
            self.stop(id).await;
        }
    }
}

/// The offset of the first record node `id` serves from partition 0 of "orders".
async fn first_acked_offset(cluster: &TestCluster, id: u32) -> u64 {
    let read = cluster
        .client(id, "root")
        .await
        .read("orders", 0, 0, ReadOptions::default())
        .await
        .unwrap();
    read.records[0].offset
}

/// Polls `client`'s DescribeCluster until `seen` holds of its nodes (`what` names it).
async fn until_described(client: &Client, what: &str, seen: impl Fn(&[pb::NodeInfo]) -> bool) {
    let until = deadline();
    loop {
        let nodes = client.describe_cluster().await.unwrap().nodes;
        if seen(&nodes) {
            return;
        }
        assert!(Instant::now() < until, "never {what}: {nodes:?}");
        tokio::time::sleep(POLL).await;
    }
}

fn batch(from: usize, n: usize) -> Vec<String> {
    (from..from + n).map(|i| format!("record-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_keep_every_ack_across_a_leader_stop() {
    let mut cluster = TestCluster::start(3).await;
    let created = cluster.create_replicated(1, "orders").await.unwrap();
    assert_eq!(created.partitions, 1);
    // Every node holds the topic, with the same replicas.
    for id in 1..=3 {
        let d = cluster
            .client(id, "root")
            .await
            .describe_topic("orders")
            .await
            .unwrap();
        let mut replicas = d.partitions[0].replicas.clone();
        replicas.sort();
        assert_eq!(replicas, [1, 2, 3], "node {id}");
    }
    let leader = cluster.leader("orders", 0).await;

    // A follower refuses an append, naming the leader in the metadata, and writes nothing.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let refused = cluster
        .client(follower, "root")
        .await
        .append("orders", Some(0), vec![record("", "no")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get(LEADER_METADATA)
            .unwrap()
            .to_str()
            .unwrap(),
        format!("{leader}={}", cluster.addr(leader))
    );

    // Offsets may have gaps (Raft's own entries are control batches consumers never see),
    // so acks only grow; what a consumer reads is exactly what was acknowledged.
    let mut expected = Vec::new();
    let mut end = 0;
    for i in 0..10 {
        let values = batch(i * 3, 3);
        let ack = cluster.append("orders", &values).await;
        assert!(ack.base_offset >= end, "{ack:?} below {end}");
        end = ack.base_offset + u64::from(ack.count);
        expected.extend(values.into_iter().map(String::into_bytes));
    }
    // Every replica holds exactly what was acknowledged, byte for byte.
    for id in 1..=3 {
        assert_eq!(
            cluster.read_all(id, "orders", end).await,
            expected,
            "node {id}"
        );
    }

    // The leader stops; the other two elect a new one and keep every acknowledged record.
    cluster.stop(leader).await;
    let new_leader = cluster.leader("orders", 0).await;
    assert_ne!(new_leader, leader);
    for i in 10..15 {
        let values = batch(i * 3, 3);
        let ack = cluster.append("orders", &values).await;
        assert!(ack.base_offset >= end, "{ack:?} below {end}");
        end = ack.base_offset + u64::from(ack.count);
        expected.extend(values.into_iter().map(String::into_bytes));
    }
    assert_eq!(cluster.read_all(new_leader, "orders", end).await, expected);

    // The old leader comes back and catches up by itself.
    cluster.restart(leader).await;
    assert_eq!(cluster.read_all(leader, "orders", end).await, expected);

    // Truncate on a replicated partition goes through its leader: every node then starts
    // its log at the cut, and a read below it is OUT_OF_RANGE. (The returning node may
    // have moved the leadership: ask whoever leads now.)
    let new_leader = cluster.leader("orders", 0).await;
    let cut = first_acked_offset(&cluster, new_leader).await + 3;
    // The group has gone quiet meanwhile: the first proposal that wakes it may be refused
    // UNAVAILABLE (nothing done), as a client retries it.
    let client = cluster.client(new_leader, "root").await;
    let until = deadline();
    let start = loop {
        match client.truncate("orders", 0, cut).await {
            Ok(truncated) => break truncated.start_offset,
            Err(s) if s.code() == Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(POLL).await;
            }
            Err(s) => panic!("truncate refused: {s:?}"),
        }
    };
    assert!(start <= cut && start > 0, "start {start}, cut {cut}");
    for id in 1..=3 {
        let client = cluster.client(id, "root").await;
        let until = deadline();
        while client.describe_topic("orders").await.unwrap().partitions[0].start_offset != start {
            assert!(
                Instant::now() < until,
                "node {id} did not truncate to {start}"
            );
            tokio::time::sleep(POLL).await;
        }
        let below = client
            .read("orders", 0, start - 1, ReadOptions::default())
            .await
            .unwrap_err();
        assert_eq!(below.code(), Code::OutOfRange, "node {id}: {below:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_placed_on_every_node_and_deleted_everywhere() {
    let mut cluster = TestCluster::start(3).await;
    let admin = cluster.client(2, "root").await;
    // Every node is alive once node 2's links to its peers are up.
    until_described(&admin, "every node alive", |nodes| {
        nodes.iter().all(|n| n.alive)
    })
    .await;
    let create = |name: &str, partitions, replication_factor| pb::CreateTopicRequest {
        name: name.into(),
        partitions,
        replication_factor,
    };
    let too_many = admin
        .log_client()
        .create_topic(create("wide", 1, 4))
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    assert_eq!(
        admin.describe_topic("wide").await.unwrap_err().code(),
        Code::NotFound,
        "a refused creation changes nothing"
    );

    // The controller leader is known to every node; a creation asked of a node that does
    // not lead it is proposed through the one that does.
    let controller = admin.describe_cluster().await.unwrap().controller;
    let until = deadline();
    let mut controller = controller;
    while controller == 0 {
        assert!(Instant::now() < until, "no controller leader known");
        tokio::time::sleep(POLL).await;
        controller = admin.describe_cluster().await.unwrap().controller;
    }
    let other = (1..=2).find(|&id| id != controller).unwrap();
    let admin = cluster.client(other, "root").await;
    // Factor 1 over 3 nodes, 6 partitions: each node holds and leads 2 of them, and the
    // others refuse with a hint to the node that does.
    admin
        .log_client()
        .create_topic(create("spread", 6, 1))
        .await
        .unwrap();
    let again = admin
        .log_client()
        .create_topic(create("spread", 6, 1))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let d = admin.describe_topic("spread").await.unwrap();
    let mut per_node = std::collections::HashMap::new();
    for p in &d.partitions {
        assert_eq!(p.replicas.len(), 1);
        *per_node.entry(p.replicas[0]).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 3, "{d:?}");
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    let elsewhere = d
        .partitions
        .iter()
        .find(|p| p.replicas[0] != other)
        .unwrap();
    let refused = admin
        .append("spread", Some(elsewhere.id), vec![record("", "x")])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let holder = elsewhere.replicas[0];
    assert_eq!(
        refused
            .metadata()
            .get(LEADER_METADATA)
            .unwrap()
            .to_str()
            .unwrap(),
        format!("{holder}={}", cluster.addr(holder))
    );
    let ack = cluster
        .client(holder, "root")
        .await
        .append("spread", Some(elsewhere.id), vec![record("", "x")])
        .await
        .unwrap();
    assert_eq!(ack.base_offset, 0);

    admin.delete_topic("spread").await.unwrap();
    for id in 1..=3 {
        let gone = cluster
            .client(id, "root")
            .await
            .describe_topic("spread")
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "node {id}");
    }
    assert_eq!(
        admin.delete_topic("spread").await.unwrap_err().code(),
        Code::NotFound
    );
    // A stopped node is no longer alive to the others.
    cluster.stop(3).await;
    until_described(&admin, "node 3 not alive", |nodes| {
        nodes.iter().any(|n| n.id == 3 && !n.alive)
    })
    .await;
    // Node 1, which the CLI asks, sees it too.
    until_described(
        &cluster.client(1, "root").await,
        "node 3 not alive",
        |nodes| nodes.iter().any(|n| n.id == 3 && !n.alive),
    )
    .await;
    // `walrs cluster status` says the same, as a table and as JSON.
    let certs = cluster.dir.path().join("certs");
    let status = |json: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walrs"));
        command.args(["cluster", "status", "--addr", &cluster.addr(1)]);
        command.arg("--ca").arg(certs.join("ca.pem"));
        command.arg("--cert").arg(certs.join("root.pem"));
        command.arg("--tls-key").arg(certs.join("root-key.pem"));
        if json {
            command.arg("--json");
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(json["node_id"], 1);
    let alive: Vec<(u64, bool)> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_u64().unwrap(), n["alive"].as_bool().unwrap()))
        .collect();
    assert_eq!(alive, vec![(1, true), (2, true), (3, false)], "{json}");
    let table = status(false);
    assert!(
        table.contains(&format!("3\t{}\tno", cluster.addr(3))),
        "{table}"
    );
    cluster.shutdown().await;
}

/// A client certificate without `replicate` cannot make node calls, and a node's message
/// addressed to another node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_without_replicate_cannot_open_the_node_stream() {
    let cluster = TestCluster::start(1).await;
    let channel = cluster.channel_as(1, "root").await;
    let mut client = pb::replication_client::ReplicationClient::new(channel);
    let frames = tokio_stream::iter(vec![pb::RaftFrame { messages: vec![] }]);
    let refused = client.exchange(frames).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("replicate"), "{refused:?}");
    let sneaky = pb::TopicCreated {
        name: "sneaky".into(),
        partitions: 1,
        replicas: vec![pb::ReplicaSet { nodes: vec![1] }],
        request_id: 1,
        after: None,
    };
    let propose = client
        .propose_metadata(pb::ProposeMetadataRequest {
            record: Some(pb::MetadataRecord {
                kind: Some(pb::metadata_record::Kind::TopicCreated(sneaky)),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(propose.code(), Code::PermissionDenied, "{propose:?}");
    let fetch = client
        .fetch_metadata(pb::FetchMetadataRequest::default())
        .await
        .unwrap_err();
    assert_eq!(fetch.code(), Code::PermissionDenied, "{fetch:?}");

    // A node may open the stream, but a message addressed to another node is answered with
    // a refusal (the sender's address for that node is wrong), not served.
    let channel = cluster.channel_as(1, "node-1").await;
    let mut client = pb::replication_client::ReplicationClient::new(channel);
    let misaddressed = pb::RaftEnvelope {
        id: 1,
        topic: "t".into(),
        partition: 0,
        from_node: 1,
        incarnation: 0,
        to_node: 7,
        body: Some(pb::raft_envelope::Body::Vote(pb::RaftVoteRequest::default())),
    };
    // The stream stays open until the answer is in (a closed stream is a peer gone).
    let (frames, outbound) = tokio::sync::mpsc::channel(1);
    frames
        .send(pb::RaftFrame {
            messages: vec![misaddressed],
        })
        .await
        .unwrap();
    let outbound = tokio_stream::wrappers::ReceiverStream::new(outbound);
    let mut answers = client.exchange(outbound).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    drop(frames);
    match &answer.messages[0].body {
        Some(pb::raft_envelope::Body::Error(why)) => {
            assert!(why.contains("not node 7"), "{why}")
        }
        other => panic!("a misaddressed message was served: {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_or_missed_a_creation_rejoins_by_itself() {
    let mut cluster = TestCluster::start(3).await;
    cluster.create_replicated(1, "doomed").await.unwrap();
    cluster.stop(3).await;
    // Created and deleted while node 3 is down: the controller's log holds both, so both
    // succeed, and node 3 catches up on them when it returns.
    cluster.create_replicated(1, "late").await.unwrap();
    cluster
        .client(2, "root")
        .await
        .delete_topic("doomed")
        .await
        .unwrap();
    // Replicas of a new topic go to the nodes gossip calls available, when there are
    // enough of them: none to node 3 once node 1 sees it gone.
    let node1 = cluster.client(1, "root").await;
    until_described(&node1, "node 3 not alive", |nodes| {
        nodes.iter().any(|n| n.id == 3 && !n.alive)
    })
    .await;
    node1
        .log_client()
        .create_topic(pb::CreateTopicRequest {
            name: "around".into(),
            partitions: 4,
            replication_factor: 1,
        })
        .await
        .unwrap();
    let around = node1.describe_topic("around").await.unwrap();
    assert!(
        around.partitions.iter().all(|p| p.replicas != [3]),
        "{around:?}"
    );
    let mut expected = Vec::new();
    let mut end = 0;
    for i in 0..5 {
        let values = batch(i * 2, 2);
        let ack = cluster.append("late", &values).await;
        end = ack.base_offset + u64::from(ack.count);
        expected.extend(values.into_iter().map(String::into_bytes));
    }
    // Node 3 returns, learns the topic from the metadata log and catches up, and drops the
    // topic deleted meanwhile.
    cluster.restart(3).await;
    assert_eq!(cluster.read_all(3, "late", end).await, expected);
    let node3 = cluster.client(3, "root").await;
    let until = deadline();
    while node3.describe_topic("doomed").await.is_ok() {
        assert!(
            Instant::now() < until,
            "node 3 kept a topic deleted while it was down"
        );
        tokio::time::sleep(POLL).await;
    }

    // Node 2 loses its whole data dir: it rejoins the same way, and serves every ack.
    cluster.stop(2).await;
    let data_dir = cluster.node(2).config.data_dir.clone();
    std::fs::remove_dir_all(&data_dir).unwrap();
    cluster.restart(2).await;
    assert_eq!(cluster.read_all(2, "late", end).await, expected);
    // And the group still takes appends with any one node down.
    cluster.stop(1).await;
    let values = batch(100, 1);
    let ack = cluster.append("late", &values).await;
    expected.extend(values.into_iter().map(String::into_bytes));
    let end = ack.base_offset + 1;
    assert_eq!(cluster.read_all(2, "late", end).await, expected);
    assert_eq!(cluster.read_all(3, "late", end).await, expected);
    cluster.shutdown().await;
}

/// Batch `sequence` of idempotent producer 31 to partition 0 of "orders".
fn idempotent(sequence: u64) -> pb::AppendRequest {
    pb::AppendRequest {
        topic: "orders".into(),
        partition: Some(0),
        records: vec![record("", format!("seq-{sequence}"))],
        correlation_id: sequence,
        producer_id: 31,
        sequence,
    }
}

/// The leader stops right after committing; a producer that did not see its ack retries on
/// the new leader and gets the original offsets, because every replica recorded the
/// producer's window as it applied the entries. The retries write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_on_a_new_leader_gets_the_original_offsets() {
    let mut cluster = TestCluster::start(3).await;
    cluster.create_replicated(1, "orders").await.unwrap();
    let leader = cluster.leader("orders", 0).await;
    let mut acks = Vec::new();
    for s in 0..6 {
        acks.push(cluster.send(idempotent(s)).await.unwrap());
    }
    // Batch 6 is sent to the leader, which stops at once: its ack may or may not come back,
    // and the batch may or may not be committed.
    let leader_client = cluster.client(leader, "root").await;
    let in_flight =
        tokio::spawn(async move { leader_client.log_client().append(idempotent(6)).await });
    cluster.stop(leader).await;
    let first_answer = in_flight.await.unwrap().ok().map(|r| r.into_inner());
    let new_leader = cluster.leader("orders", 0).await;
    assert_ne!(new_leader, leader);

    // The retries on the new leader: the window (sequences 2..=6) answers as before.
    let retried_6 = cluster.send(idempotent(6)).await.unwrap();
    if let Some(first) = first_answer {
        assert_eq!(retried_6, first, "a seen ack and its retry agree");
    }
    for s in 2..6 {
        let again = cluster.send(idempotent(s)).await.unwrap();
        assert_eq!(again, acks[s as usize], "seq {s} on node {new_leader}");
    }
    let old = cluster.send(idempotent(0)).await.unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition, "{old:?}");
    let gap = cluster.send(idempotent(9)).await.unwrap_err();
    assert!(gap.message().contains("next sequence here is 7"), "{gap:?}");
    let seven = cluster.send(idempotent(7)).await.unwrap();

    // One copy of every batch, on every live replica.
    let end = seven.base_offset + u64::from(seven.count);
    let expected: Vec<Vec<u8>> = (0..8).map(|s| format!("seq-{s}").into_bytes()).collect();
    for id in cluster.live() {
        assert_eq!(
            cluster.read_all(id, "orders", end).await,
            expected,
            "node {id}"
        );
    }
    // The old leader comes back, rebuilds its window from its log and what it applies, and
    // holds the same single copies.
    cluster.restart(leader).await;
    assert_eq!(cluster.read_all(leader, "orders", end).await, expected);
    cluster.shutdown().await;
}

/// The controller leader stops while topics are being created through another node: every
/// creation either succeeded, or fails and succeeds when retried (ALREADY_EXISTS when the
/// first attempt was recorded after all); no topic is half made (every node ends with every
/// topic, with the same replicas), and none is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_leader_stopped_during_creations_leaves_no_topic_half_made() {
    let mut cluster = TestCluster::start(3).await;
    let until = deadline();
    let controller = loop {
        let leader = cluster
            .client(1, "root")
            .await
            .describe_cluster()
            .await
            .unwrap()
            .controller;
        if leader != 0 {
            break leader;
        }
        assert!(Instant::now() < until, "no controller leader known");
        tokio::time::sleep(POLL).await;
    };
    let asked = (1..=3).find(|&id| id != controller).unwrap();
    let admin = cluster.client(asked, "root").await;
    let names: Vec<String> = (0..8).map(|i| format!("burst-{i}")).collect();
    let create = |admin: Client, name: String| async move {
        admin
            .log_client()
            .create_topic(pb::CreateTopicRequest {
                name,
                partitions: 2,
                replication_factor: 3,
            })
            .await
    };
    let creations = {
        let names = names.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for name in names {
                let created = create(admin.clone(), name.clone()).await;
                outcomes.push((name, created.map(|_| ()).map_err(|s| s.code())));
            }
            outcomes
        })
    };
    // Stop the controller leader once the first creation is through.
    while admin.describe_topic("burst-0").await.is_err() {
        assert!(Instant::now() < until, "the first creation never landed");
        tokio::time::sleep(POLL).await;
    }
    cluster.stop(controller).await;
    for (name, outcome) in creations.await.unwrap() {
        if let Err(code) = outcome {
            assert_eq!(code, Code::Unavailable, "{name}");
            match create(admin.clone(), name.clone()).await {
                Ok(_) => {}
                Err(s) => assert_eq!(s.code(), Code::AlreadyExists, "{name}: {s:?}"),
            }
        }
    }
    cluster.restart(controller).await;
    // Every node converges on every topic, with the same placement.
    let mut placements_seen = Vec::new();
    for name in &names {
        let mut placements = Vec::new();
        for id in 1..=3 {
            let client = cluster.client(id, "root").await;
            let until = deadline();
            let described = loop {
                match client.describe_topic(name).await {
                    Ok(d) => break d,
                    Err(s) => {
                        assert!(Instant::now() < until, "node {id} lacks {name}: {s:?}");
                        tokio::time::sleep(POLL).await;
                    }
                }
            };
            let replicas: Vec<Vec<u32>> = described
                .partitions
                .iter()
                .map(|p| p.replicas.clone())
                .collect();
            assert_eq!(replicas.len(), 2, "{name} on node {id}");
            placements.push(replicas);
        }
        assert!(
            placements.windows(2).all(|w| w[0] == w[1]),
            "{name}: {placements:?}"
        );
        placements_seen.push(placements.swap_remove(0));
    }
    // None made twice: the metadata log, read as a node, holds one effective creation per
    // name (a retry's second record, if any, has the first one's name and changes nothing).
    let channel = cluster.channel_as(asked, &format!("node-{asked}")).await;
    let mut fetch = pb::replication_client::ReplicationClient::new(channel);
    let log = fetch
        .fetch_metadata(pb::FetchMetadataRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The first creation of each name in the log is the one every node holds (a later one,
    // a retry that was recorded too, changed nothing).
    let mut first: std::collections::HashMap<String, Vec<Vec<u32>>> =
        std::collections::HashMap::new();
    for entry in &log.entries {
        if let Some(pb::metadata_record::Kind::TopicCreated(created)) =
            entry.record.as_ref().and_then(|r| r.kind.as_ref())
        {
            first.entry(created.name.clone()).or_insert_with(|| {
                created
                    .replicas
                    .iter()
                    .map(|r| r.nodes.iter().map(|&n| n as u32).collect())
                    .collect()
            });
        }
    }
    for (name, held) in names.iter().zip(&placements_seen) {
        assert_eq!(first.get(name), Some(held), "{name}");
    }
    cluster.shutdown().await;
}

/// A topic deleted and created again while a replica's node is down: when that node
/// returns, its copy of the old topic (whose group holds a longer log at a higher term)
/// must neither vote in nor overwrite the new topic's group (Raft messages carry the
/// incarnation), and the node ends with the new topic's records only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_of_a_deleted_topic_never_takes_over_its_recreation() {
    let mut cluster = TestCluster::start(3).await;
    cluster.create_replicated(1, "again").await.unwrap();
    for i in 0..20 {
        cluster.append("again", &batch(i * 3, 3)).await;
    }
    cluster.stop(3).await;
    let admin = cluster.client(1, "root").await;
    admin.delete_topic("again").await.unwrap();
    cluster.create_replicated(1, "again").await.unwrap();
    let ack = cluster.append("again", &batch(1000, 2)).await;
    let end = ack.base_offset + 2;
    let leader = cluster.leader("again", 0).await;
    let term = admin.describe_topic("again").await.unwrap().partitions[0].leader_epoch;
    cluster.restart(3).await;
    let expected: Vec<Vec<u8>> = batch(1000, 2).into_iter().map(String::into_bytes).collect();
    assert_eq!(cluster.read_all(3, "again", end).await, expected);
    assert_eq!(cluster.read_all(1, "again", end).await, expected);
    let after = admin.describe_topic("again").await.unwrap().partitions[0].clone();
    assert_eq!(
        (after.leader, after.leader_epoch),
        (leader, term),
        "the returning node disturbed the new topic's group"
    );
    cluster.shutdown().await;
}

/// The replicas of partition 0 of `topic` as node `id` describes them.
async fn replicas_on(cluster: &TestCluster, id: u32, topic: &str) -> Vec<u32> {
    let client = cluster.client(id, "root").await;
    client.describe_topic(topic).await.unwrap().partitions[0]
        .replicas
        .clone()
}

/// Waits until every live node describes partition 0 of `topic` with exactly `replicas`
/// (the move is done and applied everywhere).
async fn until_replicas(cluster: &TestCluster, topic: &str, replicas: &[u32]) {
    let until = deadline();
    loop {
        let mut seen = Vec::new();
        for id in cluster.live() {
            seen.push(replicas_on(cluster, id, topic).await);
        }
        if seen.iter().all(|r| r == replicas) {
            return;
        }
        assert!(
            Instant::now() < until,
            "the move of {topic}/0 to {replicas:?} never completed everywhere: {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A partition moves to a replica set that takes a new node in and the leader out, and then
/// that node is decommissioned, while a producer appends all along: every acknowledged batch
/// is on every final replica, at the offset it was acknowledged at, once; the node taken out
/// holds no replica; and appends paused only briefly (the longest pause is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moves_and_a_node_is_decommissioned_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let cluster = Arc::new(TestCluster::start(4).await);
    cluster.create_replicated(1, "orders").await.unwrap();
    let leader = cluster.leader("orders", 0).await;
    let before = replicas_on(&cluster, 1, "orders").await;
    assert_eq!(before.len(), 3, "{before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(cluster.clone(), stop.clone());
    until_acked(&cluster, leader, 50).await;

    // Node 4 in, the leader out (or, when node 4 leads, another replica out).
    let out = if leader == 4 {
        *before.iter().find(|&&n| n != 4).unwrap()
    } else {
        leader
    };
    let mut target: Vec<u32> = before.iter().copied().filter(|&n| n != out).collect();
    if !target.contains(&4) {
        target.push(4);
    }
    if target.len() < 3 {
        target.push((1..=4).find(|n| !target.contains(n) && *n != out).unwrap());
    }
    let moved = cluster
        .client(2, "root")
        .await
        .reassign_partition("orders", 0, target.clone())
        .await
        .unwrap();
    assert_eq!(moved.previous, before);
    until_replicas(&cluster, "orders", &target).await;
    let new_leader = cluster.leader("orders", 0).await;
    assert!(
        target.contains(&new_leader),
        "{new_leader} leads, not in {target:?}"
    );
    let hwm = hwm_on(&cluster, new_leader).await;
    until_acked(&cluster, new_leader, hwm + 50).await;

    // A second move of the same partition while none is under way is fine; a bad one is
    // refused with nothing changed.
    let client = cluster.client(3, "root").await;
    let refused = client
        .reassign_partition("orders", 0, vec![1])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = client
        .reassign_partition("orders", 0, vec![1, 9])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = client.decommission_node(1).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Node 4 leaves: its replica goes to the node that holds none.
    let decommissioned = client.decommission_node(4).await.unwrap();
    assert_eq!(decommissioned.moves.len(), 1, "{decommissioned:?}");
    let after: Vec<u32> = decommissioned.moves[0].replicas.clone();
    assert!(!after.contains(&4) && after.len() == 3, "{after:?}");
    until_replicas(&cluster, "orders", &after).await;
    let hwm = hwm_on(&cluster, after[0]).await;
    until_acked(&cluster, after[0], hwm + 50).await;
    // Node 4 holds nothing now: a read there is sent elsewhere.
    let read_on_4 = cluster
        .client(4, "root")
        .await
        .read("orders", 0, 0, ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(read_on_4.code(), Code::Unavailable, "{read_on_4:?}");
    // And no new topic is placed on it.
    cluster.create_replicated(2, "after").await.unwrap();
    let placed = replicas_on(&cluster, 2, "after").await;
    assert!(!placed.contains(&4), "{placed:?}");

    stop.store(true, Ordering::Relaxed);
    let (acks, longest_pause) = producer.await.unwrap();
    println!(
        "{} batches acknowledged across two moves; the longest append took {longest_pause:?}",
        acks.len()
    );
    holds_every_ack(&cluster, &after, &acks).await;
    Arc::try_unwrap(cluster)
        .unwrap_or_else(|_| panic!("the producer still holds the cluster"))
        .shutdown()
        .await;
}

/// An idempotent producer appending one-record batches to "orders" through whichever node
/// leads, until `stop`: its acknowledgements and the longest append.
fn spawn_producer(
    cluster: std::sync::Arc<TestCluster>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<AppendResponse>, Duration)> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut longest_pause = Duration::ZERO;
        let mut sequence = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let sent = Instant::now();
            let ack = cluster.send(idempotent(sequence)).await.unwrap();
            longest_pause = longest_pause.max(sent.elapsed());
            acks.push(ack);
            sequence += 1;
        }
        (acks, longest_pause)
    })
}

/// Waits until partition 0 of "orders" has at least `n` records committed, as node `id`
/// (a replica) knows.
async fn until_acked(cluster: &TestCluster, id: u32, n: u64) {
    let until = deadline();
    let client = cluster.client(id, "root").await;
    while client.describe_topic("orders").await.unwrap().partitions[0].high_watermark < n {
        assert!(Instant::now() < until, "the producer stalled");
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that each of `replicas` holds every batch `acks` acknowledged, once, in order.
async fn holds_every_ack(cluster: &TestCluster, replicas: &[u32], acks: &[AppendResponse]) {
    let last = acks.last().unwrap();
    let end = last.base_offset + u64::from(last.count);
    let expected: Vec<Vec<u8>> = (0..acks.len())
        .map(|s| format!("seq-{s}").into_bytes())
        .collect();
    for &id in replicas {
        assert_eq!(
            cluster.read_all(id, "orders", end).await,
            expected,
            "node {id} holds every acknowledged batch once, in order"
        );
    }
}

/// A fourth node joins a running 3-node cluster through its seeds. The three running
/// nodes do not list it in their configs: they learn of it by gossip, so that they link to
/// it, describe it, and accept it in a replica set. Then a partition moves onto it under
/// load (nothing acknowledged lost or repeated, on every final replica), and a new topic is
/// placed on it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_added_to_a_running_cluster_takes_replicas() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The running nodes grant the new node's certificate `replicate` from the start, as an
    // operator provisions the ACL before adding a node.
    let mut cluster = TestCluster::start_with(3, |_, config| {
        config.acl.push(AclEntry {
            identity: "node-4".into(),
            topics: vec!["*".into()],
            actions: vec![Action::Replicate],
        });
    })
    .await;
    cluster.create_replicated(1, "orders").await.unwrap();
    let before = replicas_on(&cluster, 1, "orders").await;
    assert_eq!(before.len(), 3, "{before:?}");

    cluster.add_node(4).await;
    for id in 1..=3 {
        let client = cluster.client(id, "root").await;
        until_described(&client, "node 4 alive", |nodes| {
            nodes
                .iter()
                .any(|n| n.id == 4 && n.alive && !n.addr.is_empty())
        })
        .await;
    }

    let cluster = Arc::new(cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let producer = spawn_producer(cluster.clone(), stop.clone());
    let leader = cluster.leader("orders", 0).await;
    until_acked(&cluster, leader, 50).await;
    // Node 4 takes the place of a follower (the leader stays: this is about the new node).
    let out = *before.iter().find(|&&n| n != leader).unwrap();
    let mut target: Vec<u32> = before.iter().copied().filter(|&n| n != out).collect();
    target.push(4);
    let moved = cluster
        .client(leader, "root")
        .await
        .reassign_partition("orders", 0, target.clone())
        .await
        .unwrap();
    assert_eq!(moved.previous, before);
    until_replicas(&cluster, "orders", &target).await;
    let hwm = hwm_on(&cluster, 4).await;
    until_acked(&cluster, 4, hwm + 50).await;
    stop.store(true, Ordering::Relaxed);
    let (acks, longest_pause) = producer.await.unwrap();
    println!(
        "{} batches acknowledged while node 4 took a replica; the longest append took {longest_pause:?}",
        acks.len()
    );
    holds_every_ack(&cluster, &target, &acks).await;

    // Placement counts node 4 now: 4 partitions of 3 replicas over 4 nodes put some on it.
    let created = cluster
        .client(2, "root")
        .await
        .log_client()
        .create_topic(pb::CreateTopicRequest {
            name: "spread".into(),
            partitions: 4,
            replication_factor: 3,
        })
        .await;
    assert!(created.is_ok(), "{created:?}");
    let spread = cluster
        .client(4, "root")
        .await
        .describe_topic("spread")
        .await
        .unwrap();
    let on_4 = spread
        .partitions
        .iter()
        .filter(|p| p.replicas.contains(&4))
        .count();
    assert!(on_4 > 0, "no replica of 'spread' on node 4: {spread:?}");
    Arc::try_unwrap(cluster)
        .unwrap_or_else(|_| panic!("the producer still holds the cluster"))
        .shutdown()
        .await;
}

/// Partition 0 of "orders"'s high watermark, as node `id` knows it.
async fn hwm_on(cluster: &TestCluster, id: u32) -> u64 {
    let client = cluster.client(id, "root").await;
    client.describe_topic("orders").await.unwrap().partitions[0].high_watermark
}

/// With `replace_after_ms`, a node that stays dead has its replicas re-created on the others:
/// the controller leader records the moves, the partition's leader makes them, and every
/// acknowledged record is on the new replica set. The wait derives from the failure
/// detector's and the replacement's timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dead_past_replace_after_has_its_replicas_recreated_elsewhere() {
    const DEAD_AFTER_MS: u64 = 2_000;
    const REPLACE_AFTER_MS: u64 = 3_000;
    let mut cluster = TestCluster::start_with(4, |_, config| {
        config.cluster.gossip_interval_ms = 200;
        config.cluster.failure_detector_dead_after_ms = DEAD_AFTER_MS;
        config.cluster.replace_after_ms = REPLACE_AFTER_MS;
    })
    .await;
    cluster.create_replicated(1, "orders").await.unwrap();
    cluster.leader("orders", 0).await;
    // Node 4 (not a controller voter) holds a replica.
    let before = replicas_on(&cluster, 1, "orders").await;
    if !before.contains(&4) {
        let mut target: Vec<u32> = before[..2].to_vec();
        target.push(4);
        cluster
            .client(1, "root")
            .await
            .reassign_partition("orders", 0, target.clone())
            .await
            .unwrap();
        until_replicas(&cluster, "orders", &target).await;
    }
    for chunk in 0..2 {
        let values: Vec<String> = (chunk * 5..chunk * 5 + 5)
            .map(|i| format!("before-{i}"))
            .collect();
        cluster.append("orders", &values).await;
    }
    cluster.stop(4).await;
    // Declared dead after DEAD_AFTER_MS, replaced REPLACE_AFTER_MS later, then moved.
    let until = Instant::now()
        + Duration::from_millis(DEAD_AFTER_MS + REPLACE_AFTER_MS)
        + Duration::from_millis(ELECTION_MAX_MS * 30);
    let after = loop {
        let replicas = replicas_on(&cluster, 1, "orders").await;
        if !replicas.contains(&4) && replicas.len() == 3 {
            break replicas;
        }
        assert!(
            Instant::now() < until,
            "node 4's replica was never re-created elsewhere: {replicas:?}"
        );
        tokio::time::sleep(POLL).await;
    };
    until_replicas(&cluster, "orders", &after).await;
    let more = cluster.append("orders", &batch(10, 5)).await;
    let end = more.base_offset + u64::from(more.count);
    let mut expected: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("before-{i}").into_bytes())
        .collect();
    expected.extend(batch(10, 5).into_iter().map(String::into_bytes));
    for &id in &after {
        assert_eq!(
            cluster.read_all(id, "orders", end).await,
            expected,
            "node {id}"
        );
    }
    cluster.shutdown().await;
}

/// A follower whose disk fills up (node 3, its data dir on a small mount with ballast beside
/// it) refuses replicated entries below half of `storage.disk_free_bytes_min`, before its
/// group sees them: the other two keep committing, and the follower neither crashes, nor
/// meets ENOSPC, nor stops its group. Once the ballast is deleted it catches up by itself,
/// byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_refuses_entries_and_catches_up_when_space_returns() {
    const FLOOR_BYTES: u64 = 4 << 20;
    let mount = match small_mount::SmallMount::new() {
        Ok(mount) => mount,
        Err(why) => return eprintln!("skipped: {why}"),
    };
    eprintln!("node 3's data dir on {}", mount.kind);
    let free = |dir: &Path| walrs::storage::free_bytes(dir).unwrap().unwrap();
    // Ballast (real blocks, not a sparse file) leaves node 3 about 12 MiB.
    let ballast = mount.mountpoint.join("ballast");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&ballast).unwrap();
        let chunk = vec![0x5a_u8; 1 << 20];
        for _ in 0..(free(&mount.mountpoint) >> 20).saturating_sub(12) {
            file.write_all(&chunk).unwrap();
        }
        file.sync_all().unwrap();
    }
    let node3_dir = mount.mountpoint.join("node-3");
    let mut cluster = TestCluster::start_with(3, |id, config| {
        config.storage.disk_free_bytes_min = FLOOR_BYTES;
        config.storage.disk_check_interval_ms = 50;
        if id == 3 {
            config.data_dir = node3_dir.clone();
        }
    })
    .await;
    cluster.create_replicated(1, "fill").await.unwrap();
    if cluster.leader("fill", 0).await == 3 {
        // Node 3 must follow: its leadership moves while it is down.
        cluster.stop(3).await;
        cluster.leader("fill", 0).await;
        cluster.restart(3).await;
    }
    assert_ne!(cluster.leader("fill", 0).await, 3);

    // 16 MiB of records: more than node 3 has room for; nodes 1 and 2 commit them all.
    let values: Vec<String> = (0..320)
        .map(|i| format!("{i:05}-{}", "x".repeat(50 * 1024)))
        .collect();
    let mut end_offset = 0;
    for value in &values {
        let ack = cluster.append("fill", std::slice::from_ref(value)).await;
        end_offset = ack.base_offset + 1;
    }
    let lagging = cluster
        .client(3, "root")
        .await
        .describe_topic("fill")
        .await
        .unwrap()
        .partitions[0]
        .high_watermark;
    let left = free(&mount.mountpoint);
    eprintln!("node 3 at {lagging} of {end_offset} with {left} bytes free");
    assert!(lagging < end_offset, "node 3 cannot hold it all");
    assert!(
        left >= FLOOR_BYTES / 4,
        "node 3 kept only {left} bytes free"
    );

    std::fs::remove_file(&ballast).unwrap();
    let served = cluster.read_all(3, "fill", end_offset).await;
    assert_eq!(served.len(), values.len());
    for (served, value) in served.iter().zip(&values) {
        assert!(
            served[..] == *value.as_bytes(),
            "node 3 serves another value"
        );
    }
    cluster.shutdown().await;
}

/// A plain HTTP/1.1 GET of `/metrics` on `addr`: every sample by its series (`name{labels}`,
/// as rendered).
async fn scrape(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// What node `id`'s `/metrics` says of `replica`'s lag on partition 0 of `topic`:
/// (batches, records, bytes), `None` while the series are missing.
async fn replica_lag(
    cluster: &mut TestCluster,
    id: u32,
    topic: &str,
    replica: u32,
) -> Option<(f64, f64, f64)> {
    let addr = cluster.node(id).running.as_ref()?.metrics_addr()?;
    let samples = scrape(addr).await;
    let labels = format!("{{topic=\"{topic}\",partition=\"0\",replica=\"{replica}\"}}");
    let get = |name: &str| samples.get(&format!("{name}{labels}")).copied();
    Some((
        get(names::REPLICA_LAG_BATCHES)?,
        get(names::REPLICA_LAG_RECORDS)?,
        get(names::REPLICA_LAG_BYTES)?,
    ))
}

/// Polls node `id`'s `/metrics` until `replica`'s lag satisfies `holds` (the series are
/// sampled every maintenance interval); returns it.
async fn until_lag(
    cluster: &mut TestCluster,
    (id, topic, replica): (u32, &str, u32),
    what: &str,
    holds: impl Fn((f64, f64, f64)) -> bool,
) -> (f64, f64, f64) {
    let until = deadline();
    loop {
        let lag = replica_lag(cluster, id, topic, replica).await;
        if let Some(lag) = lag.filter(|&lag| holds(lag)) {
            return lag;
        }
        assert!(
            Instant::now() < until,
            "node {id}: replica {replica}'s lag never {what}; last scraped {lag:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The leader exports each follower's lag in records and bytes: a follower stopped while
/// records are appended lags by exactly those records and at least their encoded bytes, and
/// by nothing once it is back and has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_exports_a_stopped_followers_lag_in_records_and_bytes() {
    const TOPIC: &str = "lagging";
    let mut cluster = TestCluster::start_with(3, |_, config| {
        config.metrics.enabled = true;
        config.metrics.listen = "127.0.0.1:0".parse().unwrap();
        // The gauges are sampled every maintenance interval: once per heartbeat here.
        config.storage.maintenance_interval_ms = HEARTBEAT_MS;
    })
    .await;
    cluster.create_replicated(1, TOPIC).await.unwrap();
    // Records of a known size: one append is one batch of `PER_APPEND` of them.
    const PER_APPEND: usize = 10;
    let value = |i: usize| format!("{i:05}-{}", "v".repeat(94));
    let values = |from: usize| (from..from + PER_APPEND).map(value).collect::<Vec<_>>();
    cluster.append(TOPIC, &values(0)).await;
    let leader = cluster.leader(TOPIC, 0).await;
    let follower = cluster.live().into_iter().find(|&id| id != leader).unwrap();
    let zero = |lag: (f64, f64, f64)| lag == (0.0, 0.0, 0.0);
    until_lag(&mut cluster, (leader, TOPIC, follower), "0", zero).await;

    cluster.stop(follower).await;
    let appends = 3;
    let mut missed_bytes = 0;
    for n in 0..appends {
        let batch = values(PER_APPEND * (n + 1));
        let ack = cluster.append(TOPIC, &batch).await;
        assert_eq!(ack.count as usize, PER_APPEND);
        let records: Vec<walrs::storage::Record> = batch
            .iter()
            .map(|v| walrs::storage::Record {
                value: v.clone().into_bytes().into(),
                ..walrs::storage::Record::default()
            })
            .collect();
        missed_bytes += walrs::storage::batch_len(&records);
    }
    let missed_records = (appends * PER_APPEND) as f64;
    let (batches, _, bytes) = until_lag(
        &mut cluster,
        (leader, TOPIC, follower),
        "counted the records appended while it was down",
        |(_, records, _)| records == missed_records,
    )
    .await;
    assert_eq!(batches, appends as f64, "one entry per append");
    assert!(
        bytes >= missed_bytes as f64,
        "{bytes} bytes behind, fewer than the {missed_bytes} encoded bytes it missed"
    );

    cluster.restart(follower).await;
    until_lag(&mut cluster, (leader, TOPIC, follower), "back to 0", zero).await;
    cluster.shutdown().await;
}
