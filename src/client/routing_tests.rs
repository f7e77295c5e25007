//! The routing client against fake `Log` nodes that refuse as a cluster's nodes do (with
//! and without the `walrs-leader` hint, with final codes) or accept, counting the calls
//! they get: this pins when the client follows, moves on, retries and gives up. The fake
//! nodes ([`start`]) also serve the bench's routed-producer test.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status};

use super::*;
use crate::proto::v1::NodeInfo;
use crate::proto::v1::log_server::{Log, LogServer};

/// How a fake node answers appends (unary and streamed) and truncations.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Accept,
    /// This code, with this `walrs-leader` value when given.
    Refuse(Code, Option<String>),
    /// Accept the next append, then refuse with this code (no hint).
    AcceptOnceThen(Code),
}

struct Fake {
    node_id: u32,
    answer: Arc<Mutex<Answer>>,
    /// Read streams end with UNAVAILABLE after this many responses.
    read_fail_after: Option<u64>,
    appends: Arc<AtomicU32>,
    /// Empty: DescribeCluster is UNIMPLEMENTED (an old server).
    cluster: Arc<Mutex<Vec<NodeInfo>>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn refusal(code: Code, hint: Option<&str>) -> Status {
    let mut metadata = MetadataMap::new();
    if let Some(hint) = hint {
        metadata.insert(LEADER_METADATA_KEY, hint.parse().unwrap());
    }
    Status::with_metadata(code, "refused by the fake node", metadata)
}

impl Fake {
    fn refused(&self) -> Option<Status> {
        let mut answer = self.answer.lock().unwrap();
        match &*answer {
            Answer::Accept => None,
            Answer::Refuse(code, hint) => Some(refusal(*code, hint.as_deref())),
            Answer::AcceptOnceThen(code) => {
                *answer = Answer::Refuse(*code, None);
                None
            }
        }
    }

    fn ack(&self, r: &AppendRequest) -> AppendResponse {
        AppendResponse {
            partition: r.partition.unwrap_or(0),
            // Which node wrote it.
            base_offset: u64::from(self.node_id) * 1000,
            count: r.records.len() as u32,
            correlation_id: r.correlation_id,
        }
    }
}

#[tonic::async_trait]
impl Log for Fake {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        self.appends.fetch_add(1, SeqCst);
        match self.refused() {
            Some(status) => Err(status),
            None => Ok(Response::new(self.ack(&request.into_inner()))),
        }
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let refused = self.refused();
        let appends = self.appends.clone();
        let node_id = self.node_id;
        let acks = request.into_inner().map(move |r| {
            appends.fetch_add(1, SeqCst);
            match (&refused, r) {
                (Some(status), _) => Err(refusal(
                    status.code(),
                    status
                        .metadata()
                        .get(LEADER_METADATA_KEY)
                        .map(|v| v.to_str().unwrap()),
                )),
                (None, Ok(r)) => Ok(AppendResponse {
                    partition: 0,
                    base_offset: u64::from(node_id) * 1000,
                    count: r.records.len() as u32,
                    correlation_id: r.correlation_id,
                }),
                (None, Err(status)) => Err(status),
            }
        });
        // A refusal ends the stream, as a server's error does.
        let acks = acks.scan(false, |failed, item| {
            let stop = *failed;
            *failed |= item.is_err();
            futures::future::ready((!stop).then_some(item))
        });
        Ok(Response::new(Box::pin(acks)))
    }

    async fn read(&self, _: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        Err(Status::unimplemented("read"))
    }

    type ReadStreamStream = BoxStream<ReadResponse>;

    async fn read_stream(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        let r = request.into_inner();
        let node_id = self.node_id;
        let fail_after = self.read_fail_after;
        // One record per response, from the offset asked; a following stream then waits.
        let responses = futures::stream::iter(0..3u64).map(move |i| {
            if fail_after.is_some_and(|n| i >= n) {
                return Err(Status::unavailable("this node is stopping"));
            }
            let offset = r.offset + i;
            let mut record = record(vec![], node_id.to_string());
            record.offset = offset;
            Ok(ReadResponse {
                records: vec![record],
                high_watermark: offset + 1,
                next_offset: offset + 1,
            })
        });
        let tail = futures::stream::pending();
        let follow = r.follow;
        Ok(Response::new(if follow {
            Box::pin(responses.chain(tail))
        } else {
            Box::pin(responses)
        }))
    }

    async fn truncate(
        &self,
        request: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        self.appends.fetch_add(1, SeqCst);
        match self.refused() {
            Some(status) => Err(status),
            None => Ok(Response::new(TruncateResponse {
                start_offset: request.into_inner().before_offset,
            })),
        }
    }

    async fn create_topic(
        &self,
        _: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        Err(Status::unimplemented("create_topic"))
    }

    async fn delete_topic(
        &self,
        _: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(Status::unimplemented("delete_topic"))
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Err(Status::unimplemented("list_topics"))
    }

    async fn describe_topic(
        &self,
        _: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        Err(Status::unimplemented("describe_topic"))
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
        let nodes = self.cluster.lock().unwrap().clone();
        if nodes.is_empty() {
            return Err(Status::unimplemented("describe_cluster"));
        }
        Ok(Response::new(DescribeClusterResponse {
            node_id: self.node_id,
            nodes,
            controller: 0,
        }))
    }
}

pub(crate) struct FakeNode {
    pub(crate) addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    appends: Arc<AtomicU32>,
    cluster: Arc<Mutex<Vec<NodeInfo>>>,
}

impl FakeNode {
    pub(crate) fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub(crate) fn appends(&self) -> u32 {
        self.appends.load(SeqCst)
    }

    pub(crate) fn hint(&self, node_id: u32) -> Option<String> {
        Some(format!("{node_id}={}", self.addr))
    }

    fn info(&self, node_id: u32) -> NodeInfo {
        NodeInfo {
            id: node_id,
            addr: self.addr.to_string(),
            alive: true,
            state: String::new(),
        }
    }
}

/// A fake node `node_id` on 127.0.0.1 that answers appends with `answer` and ends read
/// streams with UNAVAILABLE after `read_fail_after` responses.
pub(crate) async fn start(node_id: u32, answer: Answer, read_fail_after: Option<u64>) -> FakeNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let appends = Arc::new(AtomicU32::new(0));
    let cluster = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(Mutex::new(answer));
    let fake = Fake {
        node_id,
        answer: answer.clone(),
        read_fail_after,
        appends: appends.clone(),
        cluster: cluster.clone(),
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        Server::builder()
            .add_service(LogServer::new(fake))
            .serve_with_incoming(incoming),
    );
    FakeNode {
        addr,
        answer,
        appends,
        cluster,
    }
}

/// An address where nothing listens (bound, then closed).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn client(seed: SocketAddr, budget: Duration) -> RoutingClient {
    let options = RetryOptions {
        budget,
        jitter_seed: Some(1),
        ..RetryOptions::default()
    };
    RoutingClient::new(&seed.to_string(), None, options).unwrap()
}

const LEADER: Route<'static> = Route::Leader {
    topic: "t",
    partition: Some(0),
};

#[tokio::test]
async fn an_append_follows_the_leader_hint_and_remembers_it() {
    let leader = start(2, Answer::Accept, None).await;
    let follower = start(1, Answer::Refuse(Code::Unavailable, leader.hint(2)), None).await;
    let client = client(follower.addr, Duration::from_secs(10));

    let ack = client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap();
    assert_eq!(ack.base_offset, 2000, "written by the leader");
    assert_eq!((follower.appends(), leader.appends()), (1, 1));
    assert_eq!(client.address_of(LEADER), leader.addr.to_string());
    assert_eq!(client.retries(), 1);
    assert!(client.known_nodes().contains(&leader.addr.to_string()));

    // The next append goes straight to the leader.
    client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap();
    assert_eq!((follower.appends(), leader.appends()), (1, 2));
    // So does a truncation of that partition.
    client.truncate("t", 0, 5).await.unwrap();
    assert_eq!((follower.appends(), leader.appends()), (1, 3));
}

#[tokio::test]
async fn a_refusal_without_hint_and_a_dead_node_move_on_to_the_next_node() {
    let accepting = start(3, Answer::Accept, None).await;
    let electing = start(1, Answer::Refuse(Code::Unavailable, None), None).await;
    let dead = dead_addr().await;
    // The seed lists itself, a dead node, then one that accepts.
    *electing.cluster.lock().unwrap() = vec![
        electing.info(1),
        NodeInfo {
            id: 2,
            addr: dead.to_string(),
            alive: true,
            state: String::new(),
        },
        accepting.info(3),
    ];
    let client = client(electing.addr, Duration::from_secs(10));

    let ack = client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap();
    assert_eq!(ack.base_offset, 3000);
    assert_eq!((electing.appends(), accepting.appends()), (1, 1));
    // Refused by node 1, not reached on node 2, accepted by node 3.
    assert_eq!(client.retries(), 2);
    assert_eq!(client.address_of(LEADER), accepting.addr.to_string());
    assert_eq!(client.known_nodes().len(), 3);
}

#[tokio::test]
async fn it_gives_up_within_the_budget_when_no_node_answers() {
    let dead = dead_addr().await;
    let client = client(dead, Duration::from_millis(300));
    let started = Instant::now();
    let err = client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("gave up"), "{err:?}");
    assert!(err.message().contains(&dead.to_string()), "{err:?}");
    assert!(client.retries() >= 1, "it retried before giving up");
    // Generous: the budget is 300 ms; a hang would take the connect timeout or forever.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn final_codes_are_never_retried() {
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::ResourceExhausted,
        Code::OutOfRange,
        Code::AlreadyExists,
    ] {
        let other = start(2, Answer::Accept, None).await;
        // Even with a hint attached, a final code is final.
        let node = start(1, Answer::Refuse(code, other.hint(2)), None).await;
        let client = client(node.addr, Duration::from_secs(10));
        let err = client
            .append("t", Some(0), vec![record("k", "v")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), code);
        assert_eq!(err.message(), "refused by the fake node", "unchanged");
        assert_eq!((node.appends(), other.appends()), (1, 0), "{code:?}");
        assert_eq!(client.retries(), 0);
    }
}

/// A TCP proxy to `upstream` that, once `lose` is set, closes the connection instead of
/// passing on the next bytes `upstream` sends: the request got through, its answer is
/// lost (and `lose` is cleared).
async fn lossy_proxy(upstream: SocketAddr, lose: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded by the test: it ends with the runtime.
        while let Ok((client, _)) = listener.accept().await {
            let lose = lose.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let upward = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                // Bounded by the connection: it ends at EOF, an error, or a lost answer.
                loop {
                    let n = match server_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if lose.swap(false, SeqCst) || client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                upward.abort();
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_refusal_after_a_lost_answer_is_not_taken_for_a_definite_one() {
    // The node writes the append, but its answer is lost; the retry is refused NOT_FOUND
    // (say the topic was deleted meanwhile). "Not found" would tell the caller nothing was
    // written, which is false: the error must say the outcome is unknown.
    let node = start(1, Answer::AcceptOnceThen(Code::NotFound), None).await;
    let lose = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = lossy_proxy(node.addr, lose.clone()).await;
    let client = client(proxy, Duration::from_secs(10));
    // Learn the (empty) cluster over the proxy first, so the next answer is the append's.
    client.list_topics().await.unwrap_err();
    lose.store(true, SeqCst);
    let err = client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap_err();
    assert_eq!(node.appends(), 2, "written once, refused once");
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(err.message().contains("outcome is unknown"), "{err:?}");
    assert!(err.message().contains("NotFound"), "{err:?}");

    // Without a lost answer the refusal stays definite, and so do reads' answers.
    node.answer(Answer::Refuse(Code::NotFound, None));
    let err = client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn nodes_pointing_at_each_other_are_bounded() {
    let a = start(1, Answer::Accept, None).await;
    let b = start(2, Answer::Accept, None).await;
    a.answer(Answer::Refuse(Code::Unavailable, b.hint(2)));
    b.answer(Answer::Refuse(Code::Unavailable, a.hint(1)));
    let client = client(a.addr, Duration::from_millis(300));
    let err = client
        .append("t", Some(0), vec![record("k", "v")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("gave up"), "{err:?}");
    let calls = a.appends() + b.appends();
    // Hops without backoff, then backoff from 50 ms: a handful of calls, not a spin.
    assert!((4..=64).contains(&calls), "{calls} calls");
}

#[tokio::test]
async fn a_read_stream_resumes_on_another_node_after_the_last_offset() {
    let stopping = start(1, Answer::Accept, Some(2)).await;
    let other = start(2, Answer::Accept, None).await;
    *stopping.cluster.lock().unwrap() = vec![stopping.info(1), other.info(2)];
    let client = client(stopping.addr, Duration::from_secs(10));

    let stream = client.read_stream("t", 0, 10, ReadOptions::default(), true);
    let got: Vec<(u64, String)> = stream
        .take(5)
        .map(|r| {
            let r = r.unwrap();
            let rec = &r.records[0];
            (rec.offset, String::from_utf8(rec.value.to_vec()).unwrap())
        })
        .collect()
        .await;
    let expected: Vec<(u64, String)> = [(10, "1"), (11, "1"), (12, "2"), (13, "2"), (14, "2")]
        .into_iter()
        .map(|(o, n)| (o, n.to_string()))
        .collect();
    assert_eq!(got, expected, "no offset twice, none skipped");
    assert_eq!(client.retries(), 1);
}

#[tokio::test]
async fn pipelined_appends_follow_the_hint_and_keep_their_order() {
    let leader = start(2, Answer::Accept, None).await;
    let follower = start(1, Answer::Refuse(Code::Unavailable, leader.hint(2)), None).await;
    let client = client(follower.addr, Duration::from_secs(10));

    let (tx, rx) = mpsc::channel(16);
    let acks = client.append_pipelined("t", Some(0), rx, 4);
    let feeder = tokio::spawn(async move {
        for i in 0..10u64 {
            let request = AppendRequest {
                topic: "t".into(),
                partition: Some(0),
                records: vec![record("k", "v")],
                correlation_id: i,
                producer_id: 0,
                sequence: 0,
            };
            tx.send(request).await.unwrap();
        }
    });
    let acks: Vec<AppendResponse> = acks.map(Result::unwrap).collect().await;
    feeder.await.unwrap();
    let ids: Vec<u64> = acks.iter().map(|a| a.correlation_id).collect();
    assert_eq!(ids, (0..10).collect::<Vec<_>>());
    assert!(
        acks.iter().all(|a| a.base_offset == 2000),
        "all on the leader"
    );
    assert_eq!(leader.appends(), 10);
    assert!(follower.appends() >= 1);
    assert_eq!(client.address_of(LEADER), leader.addr.to_string());
}

#[tokio::test]
async fn pipelined_appends_give_up_with_the_last_error() {
    let dead = dead_addr().await;
    let client = client(dead, Duration::from_millis(300));
    let (tx, rx) = mpsc::channel(1);
    tx.send(AppendRequest::default()).await.unwrap();
    let results: Vec<_> = client.append_pipelined("t", None, rx, 4).collect().await;
    assert_eq!(results.len(), 1);
    let err = results.into_iter().next().unwrap().unwrap_err();
    assert!(err.message().contains("gave up"), "{err:?}");
}

#[test]
fn bad_options_and_addresses_are_refused_up_front() {
    let options = RetryOptions {
        attempts_max: 0,
        ..RetryOptions::default()
    };
    let err = RoutingClient::new("127.0.0.1:1", None, options).unwrap_err();
    assert!(matches!(err, Error::RetryOptions(_)), "{err}");
    let err = RoutingClient::new("https://127.0.0.1:1", None, RetryOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Scheme { .. }), "{err}");
    let client = RoutingClient::new("http://127.0.0.1:1/", None, RetryOptions::default()).unwrap();
    assert_eq!(client.known_nodes(), ["127.0.0.1:1"]);
}
