//! The gRPC server end to end, over real mutual TLS on loopback: every RPC, streams,
//! authentication and the ACL, the error table of DESIGN.md, limits, and the process's
//! life cycle (SIGKILL then restart keeps every acknowledged record; SIGTERM exits 0).
//! Each test runs its own server on its own port (`127.0.0.1:0`) with certificates made
//! in its own temp dir.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use walrs::client::{Client, ClientTls, ReadOptions, record};
use walrs::config::Config;
use walrs::proto::v1::{AppendRequest, Record};

const RECORD_BYTES_MAX: u64 = 16 * 1024;

/// What the server logs at warn and above, from every test of this file (they share the
/// process, so tests look for lines naming their own peers and identities).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Starts capturing (once per process) and returns the capture.
    fn capture() -> Logs {
        static LOGS: OnceLock<Logs> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            logs
        })
        .clone()
    }

    /// The first line holding every one of `needles`, waiting a while for it to appear.
    async fn wait_for_line(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            if let Some(line) = text
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return line.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needles:?} in:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn test_config(dir: &Path) -> Config {
    let mut config = common::mtls_config(dir);
    config.storage.record_bytes_max = RECORD_BYTES_MAX;
    config.storage.batch_bytes_max = 256 * 1024;
    config.storage.flush_bytes_max = 1024 * 1024;
    config.server.read_bytes_max = 256 * 1024;
    config.server.read_max_wait_ms_max = 2_000;
    config.metrics.enabled = false;
    config
}

struct TestServer {
    dir: tempfile::TempDir,
    running: Option<walrs::server::Running>,
    addr: SocketAddr,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with `test_config` changed by `change`.
    async fn start_with(change: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        change(&mut config);
        let running = walrs::server::start(config).await.unwrap();
        let addr = running.local_addr();
        TestServer {
            dir,
            running: Some(running),
            addr,
        }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(
            &self.addr.to_string(),
            Some(ClientTls::from_dir(self.certs(), name)),
        )
        .await
        .unwrap()
    }

    fn stats(&self) -> walrs::server::ServerStatsSnapshot {
        self.running().stats().snapshot()
    }

    fn running(&self) -> &walrs::server::Running {
        self.running.as_ref().expect("the server is running")
    }

    async fn shutdown(mut self) {
        self.running.take().unwrap().shutdown().await.unwrap();
    }
}

fn values(response: &walrs::proto::v1::ReadResponse) -> Vec<Vec<u8>> {
    response.records.iter().map(|r| r.value.to_vec()).collect()
}

#[tokio::test]
async fn every_rpc_round_trips() {
    let server = TestServer::start().await;
    let client = server.client("root").await;

    let created = client.create_topic("orders", 3).await.unwrap();
    assert_eq!((created.name.as_str(), created.partitions), ("orders", 3));
    let defaulted = client.create_topic("events", 0).await.unwrap();
    assert_eq!(
        defaulted.partitions, 2,
        "0 partitions means default_partitions"
    );

    let ack = client
        .append("orders", Some(1), vec![record("k", "a"), record("k", "b")])
        .await
        .unwrap();
    assert_eq!((ack.partition, ack.base_offset, ack.count), (1, 0, 2));
    // Same key, no partition: the same partition every time.
    let first = client
        .append("orders", None, vec![record("key-7", "x")])
        .await
        .unwrap();
    let second = client
        .append("orders", None, vec![record("key-7", "y")])
        .await
        .unwrap();
    assert_eq!(first.partition, second.partition);
    // No key: round-robin over the partitions.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let ack = client
            .append("events", None, vec![record("", "v")])
            .await
            .unwrap();
        seen.insert(ack.partition);
    }
    assert_eq!(seen.len(), 2, "round-robin spreads over both partitions");

    let read = client
        .read("orders", 1, 0, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(values(&read), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!((read.next_offset, read.high_watermark), (2, 2));
    assert_eq!(read.records[1].offset, 1);
    assert_eq!(&read.records[0].key[..], b"k");
    assert!(
        read.records[0].timestamp_ms > 0,
        "0 means the server's clock"
    );

    // Read long-polls at the end and returns empty after max_wait_ms.
    let started = std::time::Instant::now();
    let empty = client
        .read(
            "orders",
            1,
            2,
            ReadOptions {
                max_wait_ms: 200,
                ..ReadOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(empty.records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(150));

    let mut stream = client
        .read_stream("orders", 1, 0, ReadOptions::default(), false)
        .await
        .unwrap();
    let mut streamed = Vec::new();
    while let Some(response) = stream.next().await {
        streamed.extend(values(&response.unwrap()));
    }
    assert_eq!(streamed, vec![b"a".to_vec(), b"b".to_vec()]);

    let truncated = client.truncate("orders", 1, 1).await.unwrap();
    assert_eq!(truncated.start_offset, 1, "the log starts where it was cut");
    let below = client
        .read("orders", 1, 0, ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(below.code(), Code::OutOfRange, "{below:?}");

    let topics = client.list_topics().await.unwrap().topics;
    let names: Vec<_> = topics
        .iter()
        .map(|t| (t.name.as_str(), t.partitions))
        .collect();
    assert_eq!(names, vec![("events", 2), ("orders", 3)]);

    let description = client.describe_topic("orders").await.unwrap();
    assert_eq!(description.name, "orders");
    assert_eq!(description.partitions.len(), 3);
    let p1 = &description.partitions[1];
    assert_eq!((p1.id, p1.end_offset, p1.high_watermark), (1, 2, 2));
    assert_eq!(
        p1.start_offset, truncated.start_offset,
        "truncate answers the start offset the shard now has"
    );

    client.delete_topic("orders").await.unwrap();
    let gone = client.describe_topic("orders").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // Health reports SERVING for the Log service; reflection is served too.
    assert_eq!(
        health_of(&server).await,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.shutdown().await;
}

/// The gRPC health status of the Log service on `server`.
async fn health_of(server: &TestServer) -> i32 {
    let tls = ClientTls::from_dir(server.certs(), "root").load().unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "walrs.v1.Log".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// DescribeCluster on a node outside any cluster (`[cluster] node_id = 0`): no node id, no
/// nodes, and partitions report no leader and no replicas. Any authenticated caller may ask.
#[tokio::test]
async fn describe_cluster_answers_on_a_single_node() {
    let server = TestServer::start().await;
    for name in ["root", "nobody"] {
        let cluster = server.client(name).await.describe_cluster().await.unwrap();
        assert_eq!((cluster.node_id, cluster.controller), (0, 0), "{name}");
        assert!(cluster.nodes.is_empty(), "{name}: {cluster:?}");
    }
    let client = server.client("root").await;
    client.create_topic("solo", 1).await.unwrap();
    let partition = &client.describe_topic("solo").await.unwrap().partitions[0];
    assert_eq!((partition.leader, partition.leader_epoch), (0, 0));
    assert!(partition.replicas.is_empty());
    server.shutdown().await;
}

/// With `[cluster]` set, DescribeCluster lists the static membership (self alive, peers not
/// known to be until gossip), and a node that cannot join (no controller majority) refuses
/// client calls with UNAVAILABLE and reports NOT_SERVING.
#[tokio::test]
async fn describe_cluster_lists_the_configured_nodes() {
    let server = TestServer::start_with(|config| {
        config.cluster.node_id = 7;
        config.cluster.advertise_addr = "node-7.test:7070".into();
        // Short timings, so that nothing below waits long on the missing peer.
        config.cluster.heartbeat_interval_ms = 20;
        config.cluster.election_timeout_min_ms = 100;
        config.cluster.election_timeout_max_ms = 200;
        config.cluster.peers = vec![walrs::config::NodeAddr {
            id: 2,
            addr: "127.0.0.1:1".into(),
        }];
    })
    .await;
    let client = server.client("root").await;
    let cluster = client.describe_cluster().await.unwrap();
    assert_eq!(cluster.node_id, 7);
    let nodes: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.addr.as_str(), n.alive))
        .collect();
    assert_eq!(
        nodes,
        [(2, "127.0.0.1:1", false), (7, "node-7.test:7070", true)]
    );

    // Node 2 is down (nothing listens at its address): the controller's voters are nodes 2
    // and 7, so it has no majority, and this node has not joined: NOT_SERVING. A creation
    // is refused, says why, and creates nothing.
    assert_eq!(
        health_of(&server).await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let refused = client.create_topic("replicated", 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("voters are nodes [2, 7]"),
        "{refused:?}"
    );
    // Until it has joined, the node serves no client call on topics (what it holds could
    // be stale): the client goes to another node.
    let describe = client.describe_topic("replicated").await.unwrap_err();
    assert_eq!(describe.code(), Code::Unavailable, "{describe:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn read_stream_follow_receives_later_appends() {
    let server = TestServer::start().await;
    let client = server.client("root").await;
    client.create_topic("tail", 1).await.unwrap();
    let mut stream = client
        .read_stream("tail", 0, 0, ReadOptions::default(), true)
        .await
        .unwrap();
    // The first response says where the log is (empty).
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.records.is_empty());
    for i in 0..5 {
        client
            .append("tail", Some(0), vec![record("", format!("r{i}"))])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let response = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("follow delivers appends without polling delays")
            .unwrap()
            .unwrap();
        got.extend(values(&response));
    }
    let want: Vec<Vec<u8>> = (0..5).map(|i| format!("r{i}").into_bytes()).collect();
    assert_eq!(got, want);
    // Shutdown ends the follow rather than waiting for it: no record comes, the stream ends
    // (or says UNAVAILABLE).
    server.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("shutdown ends the follow");
    match end {
        None => {}
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Some(Ok(response)) => panic!("a response after shutdown: {response:?}"),
    }
}

/// Regression: one connection could open unboundedly many HTTP/2 streams; now a call past
/// `server.streams_per_connection_max` waits until one of the connection's calls ends.
#[tokio::test]
async fn a_call_past_streams_per_connection_max_waits_until_one_ends() {
    let server = TestServer::start_with(|c| c.server.streams_per_connection_max = 1).await;
    // One client is one HTTP/2 connection.
    let client = server.client("root").await;
    client.create_topic("s", 1).await.unwrap();
    let mut follow = client
        .read_stream("s", 0, 0, ReadOptions::default(), true)
        .await
        .unwrap();
    let _caught_up = follow.next().await.unwrap().unwrap();
    let second = client.list_topics();
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "a second concurrent call on the connection waits"
    );
    drop(follow);
    let listed = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the call runs once the stream ended")
        .unwrap();
    assert_eq!(listed.topics.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn append_stream_echoes_every_correlation_id_once() {
    let server = TestServer::start().await;
    let client = server.client("root").await;
    client.create_topic("pipe", 2).await.unwrap();
    const N: u64 = 5_000;
    let requests = futures::stream::iter((0..N).map(|i| AppendRequest {
        topic: "pipe".into(),
        partition: Some((i % 2) as u32),
        records: vec![record("", i.to_string())],
        correlation_id: i,
        ..AppendRequest::default()
    }));
    let mut responses = client.append_stream(requests).await.unwrap();
    let mut seen = HashSet::new();
    let mut last_offset: BTreeMap<u32, u64> = BTreeMap::new();
    while let Some(response) = responses.next().await {
        let response = response.unwrap();
        assert!(seen.insert(response.correlation_id), "id echoed twice");
        if let Some(previous) = last_offset.insert(response.partition, response.base_offset) {
            assert!(
                response.base_offset > previous,
                "offset order per partition"
            );
        }
    }
    assert_eq!(seen.len() as u64, N);
    let description = client.describe_topic("pipe").await.unwrap();
    let total: u64 = description.partitions.iter().map(|p| p.end_offset).sum();
    assert_eq!(total, N);
    server.shutdown().await;
}

#[tokio::test]
async fn append_stream_to_one_partition_takes_offsets_in_request_order() {
    let server = TestServer::start().await;
    let client = server.client("root").await;
    client.create_topic("ordered", 1).await.unwrap();
    const N: u64 = 2_000;
    let requests = futures::stream::iter((0..N).map(|i| AppendRequest {
        topic: "ordered".into(),
        partition: Some(0),
        records: vec![record("", i.to_string())],
        correlation_id: i,
        ..AppendRequest::default()
    }));
    let mut responses = client.append_stream(requests).await.unwrap();
    let mut next = 0;
    while let Some(response) = responses.next().await {
        let response = response.unwrap();
        assert_eq!(
            response.correlation_id, next,
            "answers come in request order"
        );
        assert_eq!(response.base_offset, next, "request i is record i");
        next += 1;
    }
    assert_eq!(next, N);
    let read = client
        .read("ordered", 0, 0, ReadOptions::default())
        .await
        .unwrap();
    for r in &read.records {
        assert_eq!(r.value, r.offset.to_string().into_bytes());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn append_stream_ends_at_its_first_failure_and_queues_nothing_after_it() {
    let server = TestServer::start().await;
    let client = server.client("root").await;
    client.create_topic("halt", 1).await.unwrap();
    let requests = futures::stream::iter((0..20u64).map(|i| AppendRequest {
        topic: "halt".into(),
        partition: Some(0),
        // Request 10 has no records: INVALID_ARGUMENT.
        records: if i == 10 {
            vec![]
        } else {
            vec![record("", i.to_string())]
        },
        correlation_id: i,
        ..AppendRequest::default()
    }));
    let mut responses = client.append_stream(requests).await.unwrap();
    for i in 0..10 {
        let response = responses.next().await.unwrap().unwrap();
        assert_eq!((response.correlation_id, response.base_offset), (i, i));
    }
    let status = responses.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        responses.next().await.is_none(),
        "the failure ends the stream"
    );
    let p = &client.describe_topic("halt").await.unwrap().partitions[0];
    assert_eq!(
        p.end_offset, 10,
        "nothing after the failed request was appended"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_past_connections_max_waits_until_one_closes() {
    let server = TestServer::start_with(|c| c.server.connections_max = 2).await;
    let first = server.client("root").await;
    first.create_topic("held", 1).await.unwrap();
    let mut first_follow = first
        .read_stream("held", 0, 0, ReadOptions::default(), true)
        .await
        .unwrap();
    first_follow.next().await.unwrap().unwrap();
    let second = server.client("root").await;
    let mut second_follow = second
        .read_stream("held", 0, 0, ReadOptions::default(), true)
        .await
        .unwrap();
    second_follow.next().await.unwrap().unwrap();
    assert_eq!(server.stats().connections_open, 2);

    let (addr, tls) = (server.addr, ClientTls::from_dir(server.certs(), "root"));
    let third = tokio::spawn(async move {
        let client = Client::connect(&addr.to_string(), Some(tls))
            .await
            .map_err(|e| format!("{e:#}"))?;
        client.list_topics().await.map_err(|s| s.to_string())
    });
    // Not a performance bound: only "not served while both places are taken".
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");
    assert_eq!(server.stats().connections_accepted, 2);

    drop(first_follow);
    drop(first);
    let listed = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third connection is served once the first closed")
        .unwrap()
        .unwrap();
    assert_eq!(listed.topics.len(), 1);
    // The second connection was never disturbed.
    second
        .append("held", Some(0), vec![record("", "v")])
        .await
        .unwrap();
    let response = second_follow.next().await.unwrap().unwrap();
    assert_eq!(values(&response), vec![b"v".to_vec()]);
    assert!(server.stats().connections_open <= 2);
    server.shutdown().await;
}

async fn call_with(addr: SocketAddr, tls: ClientTlsConfig) -> Result<(), tonic::Status> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let client = Client::from_channel(channel);
    client.list_topics().await.map(|_| ())
}

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused() {
    let server = TestServer::start().await;
    let ca = std::fs::read(server.certs().join("ca.pem")).unwrap();
    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    assert!(call_with(server.addr, anonymous).await.is_err());

    let other = tempfile::tempdir().unwrap();
    walrs::certs::generate(other.path(), false).unwrap();
    let foreign = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(Identity::from_pem(
            std::fs::read(other.path().join("root.pem")).unwrap(),
            std::fs::read(other.path().join("root-key.pem")).unwrap(),
        ))
        .domain_name("localhost");
    assert!(call_with(server.addr, foreign).await.is_err());
    assert!(server.stats().tls_handshake_failures >= 2);

    // A certificate from the right CA but without a common name: UNAUTHENTICATED.
    let no_cn = certificate_without_cn(&server.certs());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .identity(no_cn)
        .domain_name("localhost");
    assert_eq!(
        call_with(server.addr, tls).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.shutdown().await;
}

/// Makes a raw TLS connection (so the test knows its own address) and returns that
/// address once the server has answered or hung up.
async fn raw_handshake(
    addr: SocketAddr,
    ca_pem: &[u8],
    identity: Option<(&Path, &Path)>,
) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::AsyncReadExt;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    // With TLS 1.3 the client finishes its side before the server has checked the client
    // certificate; the server's refusal arrives as an alert (or EOF) on the first read.
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await;
        assert!(
            !matches!(read, Ok(Ok(n)) if n > 0),
            "the server sent data to a client it should have refused"
        );
    }
    local
}

#[tokio::test]
async fn failed_handshakes_are_logged_with_the_peer_address_and_counted() {
    let logs = Logs::capture();
    let server = TestServer::start().await;
    let ca = std::fs::read(server.certs().join("ca.pem")).unwrap();
    assert_eq!(server.stats().tls_handshake_failures, 0);

    let anonymous = raw_handshake(server.addr, &ca, None).await;
    let line = logs
        .wait_for_line(&["TLS handshake failed", &format!("peer={anonymous}")])
        .await;
    assert!(line.contains("WARN"), "{line}");

    let other = tempfile::tempdir().unwrap();
    walrs::certs::generate(other.path(), false).unwrap();
    let (cert, key) = (
        other.path().join("root.pem"),
        other.path().join("root-key.pem"),
    );
    let foreign = raw_handshake(server.addr, &ca, Some((&cert, &key))).await;
    let line = logs
        .wait_for_line(&["TLS handshake failed", &format!("peer={foreign}")])
        .await;
    assert!(!line.contains("PRIVATE KEY"), "{line}");
    assert_eq!(server.stats().tls_handshake_failures, 2);

    // The listener goes on serving, and a good client's handshake is not counted.
    let client = server.client("root").await;
    client.list_topics().await.unwrap();
    let stats = server.stats();
    assert_eq!(stats.tls_handshake_failures, 2);
    assert_eq!(stats.connections_accepted, 3);
    server.shutdown().await;
}

fn certificate_without_cn(certs: &Path) -> Identity {
    let ca_cert = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let ca_key = std::fs::read_to_string(certs.join("ca-key.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "wal.rs tests");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Identity::from_pem(cert.pem(), key.serialize_pem())
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

#[tokio::test]
async fn nobody_is_denied_and_changes_nothing() {
    let logs = Logs::capture();
    let server = TestServer::start().await;
    let root = server.client("root").await;
    let nobody = server.client("nobody").await;
    root.create_topic("kept", 1).await.unwrap();
    root.append("kept", Some(0), vec![record("", "v")])
        .await
        .unwrap();

    assert_eq!(
        denied(nobody.append("fresh", None, vec![record("", "v")]).await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(nobody.append("kept", Some(0), vec![record("", "v")]).await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(nobody.read("kept", 0, 0, ReadOptions::default()).await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(nobody.create_topic("other", 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(nobody.delete_topic("kept").await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(nobody.truncate("kept", 0, 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(nobody.describe_topic("kept").await),
        Code::PermissionDenied
    );
    assert!(nobody.list_topics().await.unwrap().topics.is_empty());
    let denial = logs
        .wait_for_line(&[
            "call denied by the ACL",
            "identity=nobody",
            "topic=\"kept\"",
        ])
        .await;
    assert!(denial.contains("peer=127.0.0.1:"), "{denial}");

    let topics = root.list_topics().await.unwrap().topics;
    assert_eq!(topics.len(), 1, "no topic was auto-created or deleted");
    let p = &root.describe_topic("kept").await.unwrap().partitions[0];
    assert_eq!((p.start_offset, p.end_offset), (0, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn every_error_code_of_the_table() {
    let server = TestServer::start().await;
    let client = server.client("root").await;
    client.create_topic("t", 1).await.unwrap();
    client
        .append("t", Some(0), vec![record("", "one")])
        .await
        .unwrap();
    let code = |r: Result<(), tonic::Status>| r.unwrap_err();

    let status = code(
        client
            .read("nope", 0, 0, ReadOptions::default())
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::NotFound);
    let status = code(
        client
            .read("t", 9, 0, ReadOptions::default())
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("0..1"), "{}", status.message());
    let status = code(
        client
            .append("t", Some(5), vec![record("", "x")])
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::NotFound);

    let status = code(
        client
            .read("t", 0, 7, ReadOptions::default())
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("0..=1"), "{}", status.message());

    let status = code(
        client
            .append("bad/name", None, vec![record("", "x")])
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = code(client.append("t", Some(0), vec![]).await.map(|_| ()));
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = code(client.create_topic("big", 100_000).await.map(|_| ()));
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = code(client.create_topic("t", 1).await.map(|_| ()));
    assert_eq!(status.code(), Code::AlreadyExists);

    let huge = vec![0u8; RECORD_BYTES_MAX as usize + 1];
    let status = code(
        client
            .append("t", Some(0), vec![record("", huge.clone())])
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("record_bytes_max"),
        "{}",
        status.message()
    );
    // Refused on a topic that does not exist yet: not auto-created either.
    let status = code(
        client
            .append("new", None, vec![record("", huge)])
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::ResourceExhausted);
    let p = &client.describe_topic("t").await.unwrap().partitions[0];
    assert_eq!(p.end_offset, 1, "the refused records changed nothing");
    assert_eq!(
        client.describe_topic("new").await.unwrap_err().code(),
        Code::NotFound
    );
    // Regression: an append naming a partition the auto-create would not make created the
    // topic and then failed; now it fails first and creates nothing.
    let status = code(
        client
            .append("auto", Some(999), vec![record("", "x")])
            .await
            .map(|_| ()),
    );
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("0..2"), "{}", status.message());
    assert_eq!(
        client.describe_topic("auto").await.unwrap_err().code(),
        Code::NotFound,
        "a refused first append auto-creates nothing"
    );
    // UNAUTHENTICATED and PERMISSION_DENIED are covered by the tests above.

    // UNAVAILABLE: a follow open during shutdown ends, and the server refuses new calls.
    let mut follow = client
        .read_stream("t", 0, 1, ReadOptions::default(), true)
        .await
        .unwrap();
    let _caught_up = follow.next().await;
    server.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(item) = follow.next().await {
            match item {
                Ok(response) => assert!(
                    response.records.is_empty(),
                    "no record was appended after offset 1: {response:?}"
                ),
                Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "shutdown ends an open follow");
    let status = code(client.list_topics().await.map(|_| ()));
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

// ---- the `walrs` process ----

struct Process {
    child: Child,
    addr: SocketAddr,
}

fn spawn_server(dir: &Path) -> Process {
    let config_path = dir.join("walrs.toml");
    if !config_path.exists() {
        let config = test_config(dir);
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrs"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("server: {line}");
            if line.contains("walrs serving")
                && let Some(rest) = line.split("address=").nth(1)
                && let Some(tx) = tx.take()
            {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs its address")
        .parse()
        .unwrap();
    Process { child, addr }
}

async fn process_client(dir: &Path, addr: SocketAddr) -> Client {
    Client::connect(
        &addr.to_string(),
        Some(ClientTls::from_dir(dir.join("certs"), "root")),
    )
    .await
    .unwrap()
}

/// Every record of a partition, from its start, read in as many calls as it takes.
async fn read_everything(client: &Client, topic: &str, partition: u32) -> Vec<Record> {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let read = client
            .read(topic, partition, offset, ReadOptions::default())
            .await
            .unwrap();
        if read.records.is_empty() {
            assert_eq!(offset, read.high_watermark, "an empty read is at the end");
            return records;
        }
        offset = read.next_offset;
        records.extend(read.records);
    }
}

/// Acknowledged appends: (partition, offset, value).
type Acked = Vec<(u32, u64, Vec<u8>)>;

/// Appends from 4 tasks until the server goes away; returns every acknowledged record.
fn appenders(client: &Client, topic: &'static str) -> Vec<tokio::task::JoinHandle<Acked>> {
    (0..4u32)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..1_000_000u32 {
                    let value = format!("task-{task}-value-{i}").into_bytes();
                    let appended = client
                        .append(topic, Some(task % 2), vec![record("", value.clone())])
                        .await;
                    match appended {
                        Ok(ack) => acked.push((ack.partition, ack.base_offset, value)),
                        Err(_) => break, // the server is gone
                    }
                }
                acked
            })
        })
        .collect()
}

/// kill -9 lands while appenders are running, not between acks: every acknowledged record
/// is there after the restart, and the next append gets an offset past all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = spawn_server(dir.path());
    let client = process_client(dir.path(), process.addr).await;
    client.create_topic("crash", 2).await.unwrap();
    let tasks = appenders(&client, "crash");
    // Kill once appends are flowing: wait on the server's own count of stored records.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let described = client.describe_topic("crash").await.unwrap();
        if described
            .partitions
            .iter()
            .map(|p| p.high_watermark)
            .sum::<u64>()
            >= 200
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "appends never flowed");
        tokio::task::yield_now().await;
    }
    process.child.kill().unwrap(); // SIGKILL, with appends in flight
    process.child.wait().unwrap();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // The high watermark passed 200 before the kill, but a record can be stored while its
    // ack is still on the way back: each of the 4 appenders has at most one such record.
    assert!(
        acked.len() >= 200 - 4,
        "only {} appends acknowledged",
        acked.len()
    );

    let mut process = spawn_server(dir.path());
    let client = process_client(dir.path(), process.addr).await;
    for partition in 0..2 {
        let stored: BTreeMap<u64, Vec<u8>> = read_everything(&client, "crash", partition)
            .await
            .into_iter()
            .map(|r| (r.offset, r.value.to_vec()))
            .collect();
        let mut highest = None;
        for (_, offset, value) in acked.iter().filter(|(p, _, _)| *p == partition) {
            assert_eq!(
                stored.get(offset),
                Some(value),
                "acknowledged record crash/{partition} @ {offset} lost"
            );
            highest = highest.max(Some(*offset));
        }
        let next = client
            .append("crash", Some(partition), vec![record("", "after")])
            .await
            .unwrap();
        assert!(
            highest.is_none_or(|h| next.base_offset > h),
            "offset {} reused after the crash (highest acked {highest:?})",
            next.base_offset
        );
    }
    process.child.kill().unwrap();
    process.child.wait().unwrap();
}

/// The scheduling policy of every thread of process `pid` (field 41 of each thread's
/// `stat`), with the thread's name.
#[cfg(target_os = "linux")]
fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended since the listing
        };
        // "tid (name) state ...": the name may hold spaces, so split after its ')'.
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_owned();
        // Fields after the name start at field 3; policy is field 41.
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .unwrap()
            .parse()
            .unwrap();
        policies.push((name, policy));
    }
    policies
}

/// `server.thread_policy`: by default every thread of a served process is SCHED_BATCH,
/// tokio's workers, the shards' and io_uring's workers (made after start-up) included;
/// "unchanged" leaves the policy the process was started with.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_served_process_runs_its_threads_under_the_configured_policy() {
    use walrs::config::ThreadPolicy;
    // SAFETY: reads the calling thread's policy; no memory is passed.
    let started_with = unsafe { libc::sched_getscheduler(0) };
    assert_eq!(
        started_with,
        libc::SCHED_OTHER,
        "this test needs to run under SCHED_OTHER (not under chrt) to tell the policies apart"
    );
    for (policy, want) in [
        (ThreadPolicy::Batch, libc::SCHED_BATCH),
        (ThreadPolicy::Unchanged, libc::SCHED_OTHER),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        // The uring engine: its fdatasyncs run on io_uring's workers, threads the kernel
        // makes for the shard after start-up.
        config.storage.engine = walrs::config::EngineChoice::Uring;
        config.server.thread_policy = policy;
        std::fs::write(
            dir.path().join("walrs.toml"),
            toml::to_string(&config).unwrap(),
        )
        .unwrap();
        let mut process = spawn_server(dir.path());
        let client = process_client(dir.path(), process.addr).await;
        client.create_topic("policy", 2).await.unwrap();
        for partition in 0..2 {
            client
                .append("policy", Some(partition), vec![record("", "v")])
                .await
                .unwrap();
        }
        let policies = thread_policies(process.child.id());
        let count = |prefix: &str| {
            policies
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .count()
        };
        assert!(
            count("walrs-shard") >= 2,
            "both shards listed: {policies:?}"
        );
        assert!(count("tokio-rt-worker") >= 1, "{policies:?}");
        assert!(
            count("iou-wrk") >= 1,
            "an io_uring worker listed: {policies:?}"
        );
        for (name, got) in &policies {
            assert_eq!(
                *got, want,
                "thread {name} of a server with thread_policy = {policy:?}: {policies:?}"
            );
        }
        process.child.kill().unwrap();
        process.child.wait().unwrap();
    }
}

/// SIGTERM drains and exits 0 in bounded time, and a restart finds every record.
#[tokio::test]
async fn sigterm_shuts_down_cleanly_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = spawn_server(dir.path());
    let client = process_client(dir.path(), process.addr).await;
    client.create_topic("t", 1).await.unwrap();
    for i in 0..20 {
        client
            .append("t", Some(0), vec![record("", format!("v{i}"))])
            .await
            .unwrap();
    }
    let pid = process.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not stop the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status:?}");

    let mut process = spawn_server(dir.path());
    let client = process_client(dir.path(), process.addr).await;
    let values: Vec<Vec<u8>> = read_everything(&client, "t", 0)
        .await
        .into_iter()
        .map(|r| r.value.to_vec())
        .collect();
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(values, want, "a clean shutdown keeps everything");
    process.child.kill().unwrap();
    process.child.wait().unwrap();
}

/// Regression: the bytes held by queued appends were bounded only per stream and per
/// connection (1 TiB with the defaults); `server.inflight_append_bytes_max` bounds them
/// server-wide, and an append past it gets RESOURCE_EXHAUSTED and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_past_the_inflight_byte_budget_are_refused_and_change_nothing() {
    let server = TestServer::start_with(|c| {
        c.server.inflight_append_bytes_max = c.storage.batch_bytes_max;
        // Each flush lingers a second (the most allowed), so the first append holds its
        // bytes that long.
        c.storage.flush_delay_us = 1_000_000;
    })
    .await;
    let client = server.client("root").await;
    client.create_topic("budget", 1).await.unwrap();
    // Two batches of a little over half the budget each: both cannot be in flight at once.
    let big = || {
        (0..12)
            .map(|i| walrs::client::record(vec![], vec![i as u8; 12 * 1024]))
            .collect::<Vec<_>>()
    };
    let first = {
        let client = server.client("root").await;
        let records = big();
        tokio::spawn(async move { client.append("budget", Some(0), records).await })
    };
    // The first append holds its bytes (an event: the server's in-flight byte count), for
    // as long as its flush lingers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.running().inflight_append_bytes() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first append never got in flight"
        );
        tokio::task::yield_now().await;
    }
    let refused = client.append("budget", Some(0), big()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("server.inflight_append_bytes_max"),
        "the message names the limit: {}",
        refused.message()
    );
    let acked = first.await.unwrap().unwrap();
    assert_eq!(acked.base_offset, 0);
    let described = client.describe_topic("budget").await.unwrap();
    assert_eq!(
        described.partitions[0].end_offset, 12,
        "the refused append left no trace"
    );
    // With the budget free again, the same append goes through.
    let again = client.append("budget", Some(0), big()).await.unwrap();
    assert_eq!(again.base_offset, 12);
    server.shutdown().await;
}

/// A codec that sends and receives message bytes as they are, to hand the server requests
/// no well-behaved client would make.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawCoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCoder;
    type Decoder = RawCoder;

    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }

    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len)))
    }
}

impl TestServer {
    /// A TLS channel as `name`, for clients other than `walrs::client`.
    async fn channel(&self, name: &str) -> tonic::transport::Channel {
        let tls = ClientTls::from_dir(self.certs(), name).load().unwrap();
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends `message` as the request of the unary `method` of `walrs.v1.Log`.
    async fn raw_unary(
        &self,
        method: &str,
        message: Vec<u8>,
    ) -> Result<bytes::Bytes, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel("root").await);
        grpc.ready().await.unwrap();
        let path = format!("/walrs.v1.Log/{method}").parse().unwrap();
        grpc.unary(
            tonic::Request::new(bytes::Bytes::from(message)),
            path,
            RawCodec,
        )
        .await
        .map(tonic::Response::into_inner)
    }

    /// Opens an AppendStream of raw request messages as root; its responses, raw.
    async fn raw_append_stream(
        &self,
        messages: Vec<bytes::Bytes>,
    ) -> tonic::Streaming<bytes::Bytes> {
        let mut grpc = tonic::client::Grpc::new(self.channel("root").await);
        grpc.ready().await.unwrap();
        let path = "/walrs.v1.Log/AppendStream".parse().unwrap();
        grpc.streaming(
            tonic::Request::new(futures::stream::iter(messages)),
            path,
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner()
    }
}

/// An AppendRequest for topic "t" holding one record of `record` bytes.
fn append_with_record(record: &[u8]) -> Vec<u8> {
    let mut message = vec![0x0a, 0x01, b't', 0x1a, record.len() as u8];
    message.extend_from_slice(record);
    message
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_with_the_decoders_message() {
    let server = TestServer::start().await;
    let cases: [(&str, &str, Vec<u8>, &str); 6] = [
        (
            "garbage bytes",
            "Append",
            vec![0xff; 7],
            "malformed message",
        ),
        // Field 1 (topic) says 5 bytes follow; 2 do.
        (
            "a truncated field",
            "Append",
            vec![0x0a, 0x05, b'a', b'b'],
            "malformed message",
        ),
        (
            "invalid UTF-8 in a topic",
            "Append",
            vec![0x0a, 0x02, 0xff, 0xfe],
            "UTF-8",
        ),
        (
            "invalid UTF-8 in a header name",
            "Append",
            // Record field 5 (headers), one entry whose key (field 1) is not UTF-8.
            append_with_record(&[0x2a, 0x04, 0x0a, 0x02, 0xff, 0xfe]),
            "UTF-8",
        ),
        // Field 1 (topic, length-delimited) sent as a varint.
        ("a wrong wire type", "Append", vec![0x08, 0x01], "wire type"),
        (
            "a malformed read",
            "Read",
            vec![0x0a, 0x09, b'x'],
            "malformed message",
        ),
    ];
    for (what, method, message, needle) in cases {
        let status = server.raw_unary(method, message).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?}");
    }
    // In an AppendStream: the malformed request ends the stream with INVALID_ARGUMENT.
    let mut responses = server
        .raw_append_stream(vec![bytes::Bytes::from_static(&[0x0a, 0x02, 0xff, 0xfe])])
        .await;
    let status = responses.next().await.expect("an answer").unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    // A well-formed raw request still works over the same path.
    let client = server.client("root").await;
    client.create_topic("t", 1).await.unwrap();
    let ok = server
        .raw_unary("Append", append_with_record(&[0x1a, 0x01, b'v']))
        .await
        .unwrap();
    assert!(!ok.is_empty(), "an AppendResponse with a count");
    // Nothing malformed was appended.
    let read = client
        .read("t", 0, 0, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(values(&read), [b"v".to_vec()]);
    server.shutdown().await;
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_naming_the_limit() {
    let server = TestServer::start().await;
    // test_config: batch_bytes_max = 256 KiB, so one message may be 512 KiB plus 1 MiB.
    let mut message = vec![0x0a, 0x01, b't', 0x1a];
    let record_len = 3 << 20;
    let mut len = record_len as u64;
    while len >= 0x80 {
        message.push((len as u8) | 0x80);
        len >>= 7;
    }
    message.push(len as u8);
    message.resize(message.len() + record_len, 0);
    let status = server
        .raw_unary("Append", message.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("storage.batch_bytes_max"),
        "{status:?}"
    );
    assert!(
        status.message().contains(&(message.len()).to_string()),
        "{status:?}"
    );

    // The same in an AppendStream: answered as the stream's last item.
    let good = bytes::Bytes::from(append_with_record(&[0x1a, 0x01, b'v']));
    let mut responses = server
        .raw_append_stream(vec![good, bytes::Bytes::from(message)])
        .await;
    let mut last = None;
    while let Some(item) = responses.next().await {
        last = Some(item);
    }
    let status = last.expect("the stream answers").unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.shutdown().await;
}

/// Asks the reflection service of one protocol version (`v1` or `v1alpha`: the same
/// messages in two generated modules) for its services, and checks `walrs.v1.Log` is listed.
macro_rules! assert_reflection_lists_log {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut client = ServerReflectionClient::new($channel);
        let mut answers = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.next().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("{}: not a service list: {answer:?}", stringify!($version));
        };
        assert!(
            list.service.iter().any(|s| s.name == "walrs.v1.Log"),
            "{list:?}"
        );
    }};
}

#[tokio::test]
async fn reflection_is_served_as_v1_and_v1alpha() {
    let server = TestServer::start().await;
    let channel = server.channel("root").await;
    assert_reflection_lists_log!(v1, channel.clone());
    assert_reflection_lists_log!(v1alpha, channel);
    server.shutdown().await;
}

/// The read limits of `[server]` hold through the server: `read_bytes_max` caps a
/// response's bytes (in whole batches), `read_records_max` its records, and
/// `read_max_wait_ms_max` a long poll's wait, whatever the request asks.
#[tokio::test]
async fn read_limits_are_enforced_whatever_the_request_asks() {
    const KIB: u64 = 1024;
    let server = TestServer::start_with(|c| {
        c.storage.record_bytes_max = 16 * KIB;
        c.storage.batch_bytes_max = 64 * KIB;
        c.storage.flush_bytes_max = 64 * KIB;
        c.server.inflight_append_bytes_max = 64 * KIB;
        c.server.read_bytes_max = 64 * KIB;
        c.server.read_records_max = 8;
        c.server.read_max_wait_ms_max = 50;
    })
    .await;
    let client = server.client("root").await;
    client.create_topic("limits", 2).await.unwrap();
    let asks_everything = ReadOptions {
        max_records: u32::MAX,
        max_bytes: u32::MAX,
        max_wait_ms: 0,
    };

    // Partition 0: ten batches of one 10 KiB record. Six batches fit in 64 KiB, seven do
    // not, and six is below the record cap: the byte cap decides.
    for _ in 0..10 {
        client
            .append("limits", Some(0), vec![record("", vec![7u8; 10 * 1024])])
            .await
            .unwrap();
    }
    let read = client.read("limits", 0, 0, asks_everything).await.unwrap();
    assert_eq!(read.records.len(), 6, "read_bytes_max caps the bytes");

    // Partition 1: one batch of twenty small records: the record cap decides.
    let records = (0..20).map(|i| record("", format!("r{i}"))).collect();
    client.append("limits", Some(1), records).await.unwrap();
    let read = client.read("limits", 1, 0, asks_everything).await.unwrap();
    assert_eq!(read.records.len(), 8, "read_records_max caps the records");
    assert_eq!(read.next_offset, 8);

    // A long poll at the end waits at most read_max_wait_ms_max, not the hour it asks for.
    let started = std::time::Instant::now();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        client.read(
            "limits",
            1,
            20,
            ReadOptions {
                max_wait_ms: 3_600_000,
                ..asks_everything
            },
        ),
    )
    .await
    .expect("the wait is capped by read_max_wait_ms_max")
    .unwrap();
    assert!(waited.records.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "it did wait"
    );
    server.shutdown().await;
}

/// The HTTP/2 settings a server announces on a new connection: its SETTINGS parameters by
/// id, and its connection window (65,535 plus the WINDOW_UPDATE it sends on stream 0).
/// Speaks HTTP/2 by hand over plaintext TCP: the client preface, an empty SETTINGS, then
/// frames read until both are in (RFC 9113, sections 3.4, 4.1, 6.5, 6.9).
async fn announced_http2_settings(addr: SocketAddr) -> (BTreeMap<u16, u32>, u32) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const ACK: u8 = 0x1;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
    tcp.write_all(&hello).await.unwrap();
    let (mut settings, mut window_update) = (None, None);
    while settings.is_none() || window_update.is_none() {
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header).await.unwrap();
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        tcp.read_exact(&mut payload).await.unwrap();
        if kind == SETTINGS && flags & ACK == 0 {
            let parameters = payload
                .chunks_exact(6)
                .map(|p| {
                    let id = u16::from_be_bytes([p[0], p[1]]);
                    (id, u32::from_be_bytes(p[2..6].try_into().unwrap()))
                })
                .collect();
            settings = Some(parameters);
        } else if kind == WINDOW_UPDATE && stream == 0 {
            let increment = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
            window_update = Some(increment);
        }
    }
    let connection_window = 65_535 + window_update.unwrap();
    (settings.unwrap(), connection_window)
}

#[tokio::test]
async fn the_server_announces_its_configured_http2_frame_size_and_windows() {
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    const MAX_FRAME_SIZE: u16 = 0x5;
    let server = TestServer::start_with(|c| {
        c.tls = None;
        c.server.http2_frame_bytes_max = 64 * 1024;
        c.server.http2_stream_window_bytes = 3 * 1024 * 1024;
        c.server.http2_connection_window_bytes = 5 * 1024 * 1024;
    })
    .await;
    let (settings, connection_window) = tokio::time::timeout(
        Duration::from_secs(10),
        announced_http2_settings(server.addr),
    )
    .await
    .expect("the server sends its SETTINGS and connection window at once");
    assert_eq!(settings.get(&MAX_FRAME_SIZE), Some(&(64 * 1024)));
    assert_eq!(settings.get(&INITIAL_WINDOW_SIZE), Some(&(3 * 1024 * 1024)));
    assert_eq!(connection_window, 5 * 1024 * 1024);
    server.shutdown().await;
}
