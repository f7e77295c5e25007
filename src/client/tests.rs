//! The client against a stub `Log` service that echoes requests and answers
//! ListTopics with the caller's identity: this pins the wrapper's field mapping and the
//! whole TLS path (server config, client config, certificate CN to identity).

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tonic::transport::{ClientTlsConfig, Server};
use tonic::{Request, Response};

use super::*;
use crate::certs;
use crate::config::TlsConfig;
use crate::proto::v1::log_server::{Log, LogServer};
use crate::proto::v1::{NodeInfo, TopicInfo};
use crate::server::{PeerInfo, identity};

struct Stub {
    tls: bool,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Log for Stub {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let r = request.into_inner();
        if r.topic == "missing" {
            return Err(Status::not_found("topic missing does not exist"));
        }
        Ok(Response::new(AppendResponse {
            partition: r.partition.unwrap_or(99),
            base_offset: r.records.first().map_or(0, |rec| rec.value.len() as u64),
            count: r.records.len() as u32,
            correlation_id: r.correlation_id,
        }))
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let responses = request.into_inner().map(|r| {
            r.map(|r| AppendResponse {
                partition: r.partition.unwrap_or(0),
                base_offset: 0,
                count: r.records.len() as u32,
                correlation_id: r.correlation_id,
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        Ok(Response::new(echo_read(&request.into_inner())))
    }

    type ReadStreamStream = BoxStream<ReadResponse>;

    async fn read_stream(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let r = request.into_inner();
        let first = echo_read(&r);
        Ok(Response::new(Box::pin(futures::stream::iter([
            Ok(first),
            Ok(ReadResponse {
                records: vec![],
                high_watermark: u64::from(r.follow),
                next_offset: 0,
            }),
        ]))))
    }

    async fn truncate(
        &self,
        request: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(TruncateResponse {
            start_offset: r.before_offset + u64::from(r.partition),
        }))
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(CreateTopicResponse {
            name: r.name,
            partitions: r.partitions,
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::permission_denied(format!(
            "cannot delete {}",
            request.into_inner().name
        )))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let certs = PeerInfo::of(&request).and_then(PeerInfo::certs);
        let principal = identity::principal(self.tls, certs)?;
        Ok(Response::new(ListTopicsResponse {
            topics: vec![TopicInfo {
                name: principal.name().to_string(),
                partitions: 0,
            }],
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Ok(Response::new(DescribeTopicResponse {
            name: request.into_inner().name,
            partitions: vec![],
        }))
    }

    async fn reassign_partition(
        &self,
        _: Request<crate::proto::v1::ReassignPartitionRequest>,
    ) -> Result<Response<crate::proto::v1::ReassignPartitionResponse>, Status> {
        Err(Status::unimplemented("reassign_partition"))
    }

    async fn decommission_node(
        &self,
        _: Request<crate::proto::v1::DecommissionNodeRequest>,
    ) -> Result<Response<crate::proto::v1::DecommissionNodeResponse>, Status> {
        Err(Status::unimplemented("decommission_node"))
    }

    async fn describe_cluster(
        &self,
        _: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        Ok(Response::new(DescribeClusterResponse {
            node_id: 4,
            nodes: vec![NodeInfo {
                id: 4,
                addr: "node-4:7070".into(),
                alive: true,
                state: String::new(),
            }],
            controller: 0,
        }))
    }
}

/// Echoes every request field into the response, so the test can check each.
fn echo_read(r: &ReadRequest) -> ReadResponse {
    ReadResponse {
        records: vec![record(r.topic.clone(), r.partition.to_string())],
        high_watermark: u64::from(r.max_records) * 1_000_000
            + u64::from(r.max_bytes) * 1000
            + u64::from(r.max_wait_ms),
        next_offset: r.offset,
    }
}

async fn serve(tls: Option<&TlsConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls_config = tls.map(|tls| crate::server::tls::server_config(tls).unwrap());
    let incoming = crate::server::incoming(
        listener,
        tls_config,
        crate::server::ConnectionLimits {
            connections_max: 16,
            ..crate::server::ConnectionLimits::of(&Default::default())
        },
        Default::default(),
        std::future::pending(),
    );
    let router = Server::builder().add_service(LogServer::new(Stub { tls: tls.is_some() }));
    tokio::spawn(router.serve_with_incoming(incoming));
    addr
}

fn tls_files(dir: &Path) -> TlsConfig {
    certs::generate(dir, false).unwrap();
    TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca: dir.join("ca.pem"),
    }
}

async fn whoami(client: &Client) -> Result<String, Status> {
    Ok(client.list_topics().await?.topics[0].name.clone())
}

#[tokio::test]
async fn every_method_maps_its_fields() {
    let addr = serve(None).await;
    let client = Client::connect(&addr.to_string(), None).await.unwrap();

    let r = client
        .append("t", Some(3), vec![record("k", "vvvv"), record("", "x")])
        .await
        .unwrap();
    assert_eq!((r.partition, r.base_offset, r.count), (3, 4, 2));
    assert_eq!(
        client.append("t", None, vec![]).await.unwrap().partition,
        99
    );
    let err = client.append("missing", None, vec![]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("missing"));

    let options = ReadOptions {
        max_records: 7,
        max_bytes: 8,
        max_wait_ms: 9,
    };
    let r = client.read("t", 2, 42, options).await.unwrap();
    assert_eq!(r.next_offset, 42);
    assert_eq!(r.high_watermark, 7_008_009);
    assert_eq!(r.records[0], record("t", "2"));

    let mut stream = client.read_stream("t", 1, 5, options, true).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().next_offset, 5);
    assert_eq!(stream.message().await.unwrap().unwrap().high_watermark, 1);
    assert!(stream.message().await.unwrap().is_none());

    let requests = futures::stream::iter((0..3).map(|i| AppendRequest {
        topic: "t".into(),
        partition: Some(1),
        records: vec![record("k", "v")],
        correlation_id: 100 + i,
        producer_id: 0,
        sequence: 0,
    }));
    let ids: Vec<u64> = client
        .append_stream(requests)
        .await
        .unwrap()
        .map(|r| r.unwrap().correlation_id)
        .collect()
        .await;
    assert_eq!(ids, [100, 101, 102]);

    assert_eq!(client.truncate("t", 1, 10).await.unwrap().start_offset, 11);
    let created = client.create_topic("orders", 6).await.unwrap();
    assert_eq!((created.name.as_str(), created.partitions), ("orders", 6));
    assert_eq!(
        client.describe_topic("orders").await.unwrap().name,
        "orders"
    );
    let err = client.delete_topic("orders").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let cluster = client.describe_cluster().await.unwrap();
    assert_eq!(
        (cluster.node_id, cluster.nodes[0].addr.as_str()),
        (4, "node-4:7070")
    );
    assert_eq!(whoami(&client).await.unwrap(), "anonymous");
}

#[tokio::test]
async fn mutual_tls_names_the_client_by_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(Some(&tls_files(dir.path()))).await;
    for cn in ["root", "nobody"] {
        let tls = ClientTls::from_dir(dir.path(), cn);
        let client = Client::connect(&addr.to_string(), Some(tls)).await.unwrap();
        assert_eq!(whoami(&client).await.unwrap(), cn);
    }
    // The CN, not the file name, is the identity.
    certs::add_client(dir.path(), "extra", "svc-orders", false).unwrap();
    let tls = ClientTls::from_dir(dir.path(), "extra");
    let client = Client::connect(&format!("https://{addr}"), Some(tls))
        .await
        .unwrap();
    assert_eq!(whoami(&client).await.unwrap(), "svc-orders");
}

/// Connects and makes one call; under TLS 1.3 a refused client certificate may only
/// show on the first call, so both steps count.
async fn connect_and_call(addr: SocketAddr, tls: ClientTlsConfig) -> Result<String, String> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    whoami(&Client::from_channel(channel))
        .await
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(Some(&tls_files(dir.path()))).await;
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let result = connect_and_call(addr, tls).await;
    let err = result.expect_err("must be refused");
    assert!(err.contains("CertificateRequired"), "{err}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(Some(&tls_files(dir.path()))).await;
    let other = certs::CertAuthority::new("another CA").unwrap();
    // Same CN as the trusted root client: only the issuer differs.
    other
        .issue_client("root")
        .unwrap()
        .write(dir.path(), "stranger", false)
        .unwrap();
    let tls = ClientTls::from_dir(dir.path(), "stranger").load().unwrap();
    let result = connect_and_call(addr, tls).await;
    let err = result.expect_err("must be refused");
    assert!(err.contains("UnknownCA"), "{err}");
}

#[tokio::test]
async fn the_server_certificate_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let addr = serve(Some(&tls_files(dir.path()))).await;
    // Wrong name.
    let tls = ClientTls::from_dir(dir.path(), "root").with_domain("example.com");
    let err = Client::connect(&addr.to_string(), Some(tls))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    // A server the client's CA did not sign.
    let other_dir = tempfile::tempdir().unwrap();
    certs::generate(other_dir.path(), false).unwrap();
    let tls = ClientTls {
        ca: other_dir.path().join("ca.pem"),
        ..ClientTls::from_dir(dir.path(), "root")
    };
    let result = connect_and_call(addr, tls.load().unwrap()).await;
    let err = result.expect_err("must be refused");
    assert!(err.contains("InvalidCertificate"), "{err}");
}

#[tokio::test]
async fn addresses_and_schemes() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), false).unwrap();
    let tls = || Some(ClientTls::from_dir(dir.path(), "root"));
    let err = Client::connect("http://127.0.0.1:1", tls())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Scheme { tls: true, .. }), "{err}");
    let err = Client::connect("https://127.0.0.1:1", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Scheme { tls: false, .. }), "{err}");
    let err = Client::connect("127.0.0.1:1", Some(ClientTls::from_dir(dir.path(), "bob")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    // Nothing listens on port 1.
    let err = Client::connect("127.0.0.1:1", None).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[test]
fn sequences_count_per_partition_from_zero() {
    let mut sequences = super::Sequences::with_id(7);
    let mut stamped = |partition| {
        let mut request = super::append_request("t", Some(partition), vec![]);
        sequences.stamp(&mut request);
        (request.producer_id, request.sequence)
    };
    assert_eq!(stamped(0), (7, 0));
    assert_eq!(stamped(0), (7, 1));
    assert_eq!(stamped(1), (7, 0));
    assert_eq!(stamped(0), (7, 2));
    assert_ne!(super::random_producer_id(), 0);
}
