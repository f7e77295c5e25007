//! The gRPC carrier of Raft messages between nodes: one [`Link`] per peer, each keeping one
//! `walrs.v1.Replication/Exchange` stream open and packing every group's messages to that
//! peer into shared frames.
//!
//! Owns: the connections to the peers (mutual TLS with this node's certificate, which names
//! it `node-<id>`), the numbering of requests, and matching answers to them.
//! Must never: block the caller (a shard thread): [`RaftTransport::send`] only queues, and a
//! full queue is an answer at once (an unreachable peer, which openraft backs off from).
//!
//! Bounds: each link queues at most `cluster.replication_queue_depth_max` messages, and at
//! most `cluster.replication_queue_bytes_max` bytes of them (one larger message is taken
//! into an empty queue, and messages of at most [`SMALL_MESSAGE_BYTES`] pass the byte bound),
//! and has at most as many messages awaiting an answer; besides the queue, a link holds at
//! most one message taken but not yet framed and [`FRAMES_QUEUED`] frames; a frame carries at most
//! `cluster.replication_batch_bytes_max` bytes of messages (one larger message goes alone).
//! A message's sender waits for its answer with its own deadline; a link forgets the answers
//! nobody waits for any more when it is at its bound, and all of them when its stream ends.
//!
//! Life of a link: connect (bounded by [`CONNECT_TIMEOUT`]), open the stream, then send
//! frames and read answers until the stream fails; fail everything awaiting an answer, and
//! reconnect after a back-off that doubles from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]. While
//! disconnected, queued messages are answered "lost" at once rather than left to time out.
//! HTTP/2 keep-alive pings find a peer that went silent (a cut network, a paused process).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Learned, Membership};
use crate::proto::v1 as pb;
use crate::proto::v1::replication_client::ReplicationClient;
use crate::raft::network::{LinkState, RaftTransport, TransportError, TransportReply};
use crate::raft::types::NodeId;

/// How long connecting to a peer (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First wait before reconnecting to a peer; doubles per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Frames built but not yet taken by the HTTP/2 stream, per link.
const FRAMES_QUEUED: usize = 4;
/// Messages this small (heartbeats, votes, answers to probes) always pass a link's byte
/// bound, only its count bound: a link slowed by large AppendEntries must not starve a
/// group's heartbeats into elections.
const SMALL_MESSAGE_BYTES: usize = 4096;
/// Protobuf framing of one message inside a frame (tag and length), and its request id
/// (set after it is measured), at most.
const MESSAGE_FRAMING_BYTES: usize = 6 + 11;

/// The limits and identity a node's links share.
#[derive(Clone)]
pub struct LinkOptions {
    /// Mutual TLS with this node's certificate; `None` = plaintext (loopback development).
    pub tls: Option<ClientTlsConfig>,
    /// `cluster.replication_queue_depth_max`.
    pub queue_depth_max: usize,
    /// `cluster.replication_queue_bytes_max`.
    pub queue_bytes_max: usize,
    /// `cluster.replication_batch_bytes_max`.
    pub frame_bytes_max: usize,
    /// Largest message either side encodes or decodes (one AppendEntries at its bounds).
    pub message_bytes_max: usize,
    /// How often an idle connection is pinged, and how long a ping may go unanswered.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// Links to every peer the membership knows, one per node. Shared by every shard of the
/// node. A node learned later (gossip) gets its link when it is learned
/// ([`GrpcTransport::learn`]), on the runtime the transport started on.
pub(crate) struct GrpcTransport {
    membership: Membership,
    options: LinkOptions,
    runtime: tokio::runtime::Handle,
    links: RwLock<HashMap<NodeId, Link>>,
    /// Each link's status, shared with [`PeerLiveness`].
    statuses: Statuses,
}

type Statuses = Arc<RwLock<HashMap<NodeId, Arc<LinkStatus>>>>;

/// Which peers' links are connected now, for `DescribeCluster` (until gossip says who is
/// alive). Cheap to clone; sees links made after it.
#[derive(Clone, Default)]
pub struct PeerLiveness {
    up: Statuses,
}

impl PeerLiveness {
    /// True when this node's link to `node` is connected.
    pub fn is_up(&self, node: u64) -> bool {
        self.up
            .read()
            .expect("link statuses lock poisoned")
            .get(&node)
            .is_some_and(|link| link.state().up)
    }
}

/// Whether a link's stream is open, and how often that changed; written by the link's task,
/// read by anyone.
#[derive(Debug, Default)]
struct LinkStatus {
    up: AtomicBool,
    changes: AtomicU64,
}

impl LinkStatus {
    fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn state(&self) -> LinkState {
        // The count first: a change between the two loads shows as a change at the next look.
        let changes = self.changes.load(Ordering::Acquire);
        LinkState {
            up: self.up.load(Ordering::Acquire),
            changes,
        }
    }
}

impl GrpcTransport {
    /// Starts one link per peer the membership knows, on the current tokio runtime. Links
    /// connect on their own, in the background; a peer that is down is retried for as long
    /// as the node runs.
    pub(crate) fn start(
        membership: &Membership,
        options: LinkOptions,
    ) -> Result<GrpcTransport, String> {
        let transport = GrpcTransport {
            membership: membership.clone(),
            options,
            runtime: tokio::runtime::Handle::current(),
            links: RwLock::new(HashMap::new()),
            statuses: Statuses::default(),
        };
        for peer in membership.peers() {
            transport.open_link(peer.id, &peer.addr)?;
        }
        Ok(transport)
    }

    /// Takes in what gossip says of node `id` ([`Membership::learn`]); a node new here, or
    /// one that moved, gets a new link (the old one's task ends with its last sender).
    pub(crate) fn learn(&self, id: u32, addr: &str) -> Learned {
        let learned = self.membership.learn(id, addr);
        if matches!(learned, Learned::New | Learned::Moved) {
            if let Err(e) = self.open_link(id, addr) {
                tracing::warn!(node = id, addr, error = %e, "a node gossip told of has an unusable address");
            } else {
                tracing::info!(
                    node = id,
                    addr,
                    ?learned,
                    "a node gossip told of is now a peer"
                );
            }
        }
        learned
    }

    fn open_link(&self, id: u32, addr: &str) -> Result<(), String> {
        let _entered = self.runtime.enter();
        let link = Link::start(id, addr, self.options.clone())?;
        let node = u64::from(id);
        self.statuses
            .write()
            .expect("link statuses lock poisoned")
            .insert(node, link.status.clone());
        self.links
            .write()
            .expect("links lock poisoned")
            .insert(node, link);
        Ok(())
    }

    /// The links' connection states.
    pub(crate) fn liveness(&self) -> PeerLiveness {
        PeerLiveness {
            up: self.statuses.clone(),
        }
    }
}

impl RaftTransport for GrpcTransport {
    fn send(&self, to: NodeId, mut message: pb::RaftEnvelope) -> TransportReply {
        let (tx, rx) = oneshot::channel();
        // The receiver refuses a message addressed to another node (an address gossip got
        // wrong must not make one node answer for another).
        message.to_node = u32::try_from(to).unwrap_or(u32::MAX);
        match self.links.read().expect("links lock poisoned").get(&to) {
            Some(link) => link.send(message, tx),
            None => drop(tx.send(Err(TransportError::UnknownNode { node: to }))),
        }
        rx
    }

    fn link(&self, _from: NodeId, to: NodeId) -> LinkState {
        self.links
            .read()
            .expect("links lock poisoned")
            .get(&to)
            .map_or_else(LinkState::default, |link| link.status.state())
    }

    fn addr_of(&self, node: NodeId) -> Option<String> {
        self.membership.addr_of(node)
    }

    fn peers(&self, _from: NodeId) -> Vec<NodeId> {
        self.links
            .read()
            .expect("links lock poisoned")
            .keys()
            .copied()
            .collect()
    }
}

type Answer = oneshot::Sender<Result<pb::RaftEnvelope, TransportError>>;

/// One message waiting for its frame.
struct Outgoing {
    message: pb::RaftEnvelope,
    answer: Answer,
    /// Its size in a frame (measured once, when it is queued).
    bytes: usize,
}

/// The size of `message` in a frame: its encoding, and its framing and request id.
fn frame_bytes(message: &pb::RaftEnvelope) -> usize {
    message.encoded_len() + MESSAGE_FRAMING_BYTES
}

/// The receiving half of a link's queue: what it takes leaves the queue's byte count.
struct Queued {
    rx: mpsc::Receiver<Outgoing>,
    bytes: Arc<AtomicUsize>,
}

impl Queued {
    async fn recv(&mut self) -> Option<Outgoing> {
        let out = self.rx.recv().await?;
        Some(self.took(out))
    }

    fn try_recv(&mut self) -> Option<Outgoing> {
        let out = self.rx.try_recv().ok()?;
        Some(self.took(out))
    }

    fn took(&self, out: Outgoing) -> Outgoing {
        self.bytes.fetch_sub(out.bytes, Ordering::AcqRel);
        out
    }
}

/// The sending half of one peer's link; the link's task owns the rest.
struct Link {
    node: NodeId,
    queue: mpsc::Sender<Outgoing>,
    queue_depth_max: usize,
    /// Bytes of the messages in `queue` (see [`frame_bytes`]), and their bound.
    queued_bytes: Arc<AtomicUsize>,
    queue_bytes_max: usize,
    status: Arc<LinkStatus>,
}

impl Link {
    fn start(node: u32, addr: &str, options: LinkOptions) -> Result<Link, String> {
        let endpoint = endpoint(addr, &options)?;
        let (queue, rx) = mpsc::channel(options.queue_depth_max);
        let queue_depth_max = options.queue_depth_max;
        let queue_bytes_max = options.queue_bytes_max;
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queued = Queued {
            rx,
            bytes: queued_bytes.clone(),
        };
        let status = Arc::new(LinkStatus::default());
        let task = LinkTask {
            status: status.clone(),
            node: u64::from(node),
            addr: addr.to_owned(),
            endpoint,
            options,
            queued,
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: 1,
            overflow: None,
        };
        tokio::spawn(task.run());
        Ok(Link {
            node: u64::from(node),
            queue,
            queue_depth_max,
            queued_bytes,
            queue_bytes_max,
            status,
        })
    }

    /// Queues `message`, or answers it lost at once when the queue is at either bound.
    fn send(&self, message: pb::RaftEnvelope, answer: Answer) {
        use mpsc::error::TrySendError;
        let bytes = frame_bytes(&message);
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let over = before > 0 && before + bytes > self.queue_bytes_max;
        let refused = if over && bytes > SMALL_MESSAGE_BYTES {
            Err((
                answer,
                format!(
                    "not sent: {before} bytes of messages already wait for it and this one is \
                     {bytes} (cluster.replication_queue_bytes_max = {}); the node or the \
                     network to it is slow, and Raft sends it again later. If it is up and \
                     this repeats, raise cluster.replication_queue_bytes_max",
                    self.queue_bytes_max
                ),
            ))
        } else {
            match self.queue.try_send(Outgoing {
                message,
                answer,
                bytes,
            }) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(out)) => Err((
                    out.answer,
                    format!(
                        "not sent: {} messages already wait for it \
                         (cluster.replication_queue_depth_max); the node or the network to it \
                         is slow, and Raft sends it again later",
                        self.queue_depth_max
                    ),
                )),
                Err(TrySendError::Closed(out)) => {
                    Err((out.answer, "the node's link has stopped".to_owned()))
                }
            }
        };
        if let Err((answer, reason)) = refused {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            drop(answer.send(Err(TransportError::Lost {
                node: self.node,
                reason,
            })));
        }
    }
}

/// The endpoint of a peer's gRPC address, with the links' TLS, timeouts and keep-alive.
pub(crate) fn endpoint(addr: &str, options: &LinkOptions) -> Result<Endpoint, String> {
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("peer address {addr:?} is not usable: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(true);
    if let Some(tls) = &options.tls {
        // The peer's certificate is checked for the host dialled (node certificates carry
        // their addresses as SANs: `walrs certs --node ID --san HOST`).
        let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        endpoint = endpoint
            .tls_config(tls.clone().domain_name(host))
            .map_err(|e| format!("TLS to peer {addr:?}: {e}"))?;
    }
    Ok(endpoint)
}

/// Answers awaited from one peer, by request id.
type Pending = Arc<Mutex<HashMap<u64, Answer>>>;

struct LinkTask {
    node: NodeId,
    addr: String,
    endpoint: Endpoint,
    options: LinkOptions,
    queued: Queued,
    pending: Pending,
    next_id: u64,
    /// A message taken from the queue that did not fit the last frame: the next one's first.
    overflow: Option<Outgoing>,
    /// Up while a stream to the peer is open (read by [`PeerLiveness`] and the groups).
    status: Arc<LinkStatus>,
}

/// Why a connected stream ended.
enum Ended {
    /// Every sender is gone: the node is stopping.
    Stopped,
    /// The stream or connection failed.
    Failed(String),
}

impl LinkTask {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        // Whether the last attempt reached the peer (`None`: no attempt yet). A change is logged
        // once: at warn when the peer goes down, at info when it is up; repeats at debug.
        let mut up: Option<bool> = None;
        loop {
            let failure = match self.connect().await {
                Ok((client, channel)) => {
                    backoff = BACKOFF_MIN;
                    if up != Some(true) {
                        tracing::info!(node = self.node, addr = %self.addr, "link to a peer up");
                    }
                    up = Some(true);
                    let exchanged = self.exchange(client).await;
                    self.status.set(false);
                    match exchanged {
                        Ended::Stopped => return,
                        Ended::Failed(reason) => {
                            drop(channel);
                            reason
                        }
                    }
                }
                Err(reason) => reason,
            };
            if let Some(out) = self.overflow.take() {
                drop(out.answer.send(Err(self.lost(&failure))));
            }
            let lost = self.fail_pending(&failure);
            match up {
                Some(true) => {
                    tracing::warn!(node = self.node, addr = %self.addr, error = %failure, lost, "link to a peer down; reconnecting until it is back");
                }
                None => {
                    tracing::info!(node = self.node, addr = %self.addr, error = %failure, "peer not reachable yet; retrying until it is");
                }
                Some(false) => {
                    tracing::debug!(node = self.node, addr = %self.addr, error = %failure, lost, ?backoff, "link to a peer still down");
                }
            }
            up = Some(false);
            // Answer what queues meanwhile at once: the peer is known to be unreachable.
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    next = self.queued.recv() => match next {
                        Some(out) => drop(out.answer.send(Err(self.lost(&failure)))),
                        None => return,
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn lost(&self, reason: &str) -> TransportError {
        TransportError::Lost {
            node: self.node,
            reason: reason.to_owned(),
        }
    }

    /// Fails every answer awaited; returns how many there were.
    fn fail_pending(&self, reason: &str) -> usize {
        let pending: Vec<Answer> = self
            .pending
            .lock()
            .expect("pending lock poisoned")
            .drain()
            .map(|(_, answer)| answer)
            .collect();
        let lost = pending.len();
        for answer in pending {
            drop(answer.send(Err(self.lost(reason))));
        }
        lost
    }

    async fn connect(&self) -> Result<(ReplicationClient<Channel>, Channel), String> {
        let channel = self
            .endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {}", self.addr, error_chain(&e)))?;
        let client = ReplicationClient::new(channel.clone())
            .max_decoding_message_size(self.options.message_bytes_max)
            .max_encoding_message_size(self.options.message_bytes_max);
        Ok((client, channel))
    }

    /// Runs one Exchange stream until it fails or the node stops.
    async fn exchange(&mut self, mut client: ReplicationClient<Channel>) -> Ended {
        let (frames, outbound) = mpsc::channel::<pb::RaftFrame>(FRAMES_QUEUED);
        let call = client.exchange(ReceiverStream::new(outbound));
        // The call answers once the peer accepted the stream; frames may queue meanwhile.
        let mut inbound = tokio::select! {
            opened = call => match opened {
                Ok(response) => response.into_inner(),
                Err(status) => return Ended::Failed(format!("{}: the peer refused the stream: {}", self.addr, status.message())),
            },
            () = tokio::time::sleep(CONNECT_TIMEOUT) => {
                return Ended::Failed(format!("{}: the peer did not open the stream within {CONNECT_TIMEOUT:?}", self.addr));
            }
        };
        let pending = self.pending.clone();
        let node = self.node;
        let reader = tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(frame)) => {
                        let mut pending = pending.lock().expect("pending lock poisoned");
                        for answer in frame.messages {
                            match pending.remove(&answer.id) {
                                Some(waiting) => drop(waiting.send(Ok(answer))),
                                // Its sender gave up and the entry was pruned.
                                None => tracing::trace!(node, id = answer.id, "late answer"),
                            }
                        }
                    }
                    Ok(None) => return "the peer ended the stream".to_owned(),
                    Err(status) => return format!("the stream failed: {}", status.message()),
                }
            }
        });
        let mut reader = AbortOnDrop(reader);
        self.status.set(true);
        loop {
            let first = match self.overflow.take() {
                Some(out) => out,
                None => tokio::select! {
                next = self.queued.recv() => match next {
                    Some(out) => out,
                    None => return Ended::Stopped,
                },
                read = &mut reader.0 => {
                    let reason = read.unwrap_or_else(|e| format!("the reader stopped: {e}"));
                    return Ended::Failed(format!("{}: {reason}", self.addr));
                }
                },
            };
            let frame = self.frame(first);
            if frame.messages.is_empty() {
                continue;
            }
            if frames.send(frame).await.is_err() {
                return Ended::Failed(format!("{}: the stream closed", self.addr));
            }
        }
    }

    /// Packs `first` and whatever else is queued, up to the frame's byte bound, registering
    /// each message's answer. A queued message that would overflow the frame is kept for the
    /// next one (`overflow`).
    fn frame(&mut self, first: Outgoing) -> pb::RaftFrame {
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        // Each message was measured once, when it was queued (its id's few bytes are within
        // the framing allowance).
        let mut next = Some(first);
        let mut pending = self.pending.lock().expect("pending lock poisoned");
        while let Some(mut out) = next.take() {
            if pending.len() >= self.options.queue_depth_max {
                // Forget answers whose senders stopped waiting (they timed out).
                pending.retain(|_, answer| !answer.is_closed());
            }
            if pending.len() >= self.options.queue_depth_max {
                drop(out.answer.send(Err(TransportError::Lost {
                    node: self.node,
                    reason: format!(
                        "{} messages await its answers (cluster.replication_queue_depth_max)",
                        pending.len()
                    ),
                })));
            } else if !out.answer.is_closed() {
                out.message.id = self.next_id;
                self.next_id += 1;
                bytes += out.bytes;
                pending.insert(out.message.id, out.answer);
                messages.push(out.message);
            }
            if bytes >= self.options.frame_bytes_max {
                break;
            }
            let Some(queued) = self.queued.try_recv() else {
                break;
            };
            if !messages.is_empty() && bytes + queued.bytes > self.options.frame_bytes_max {
                self.overflow = Some(queued);
                break;
            }
            next = Some(queued);
        }
        pb::RaftFrame { messages }
    }
}

/// Aborts a task when dropped, so a link's reader never outlives its stream.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An error and its sources, for a log line (tonic's transport errors say little at the top).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An AppendEntries-sized message: `payload_bytes` of entry bytes.
    fn message(payload_bytes: usize) -> pb::RaftEnvelope {
        pb::RaftEnvelope {
            topic: "t".to_owned(),
            body: Some(pb::raft_envelope::Body::Append(pb::RaftAppendRequest {
                entries: vec![pb::RaftEntry {
                    payload: Some(pb::raft_entry::Payload::Batch(
                        vec![7u8; payload_bytes].into(),
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// A link with no task: its queue is only read by the test.
    fn link(queue_depth_max: usize, queue_bytes_max: usize) -> (Link, Queued) {
        let (queue, rx) = mpsc::channel(queue_depth_max);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let link = Link {
            node: 2,
            queue,
            queue_depth_max,
            queued_bytes: queued_bytes.clone(),
            queue_bytes_max,
            status: Arc::default(),
        };
        let queued = Queued {
            rx,
            bytes: queued_bytes,
        };
        (link, queued)
    }

    /// Sends `message` on `link`: `Ok` when queued, else the reason it was answered lost.
    fn send(link: &Link, message: pb::RaftEnvelope) -> Result<(), String> {
        let (tx, mut rx) = oneshot::channel();
        link.send(message, tx);
        match rx.try_recv() {
            Err(oneshot::error::TryRecvError::Empty) => Ok(()),
            Ok(Err(TransportError::Lost { reason, .. })) => Err(reason),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// The link's queue is bounded in bytes as well as in messages: a message past the byte
    /// bound is answered lost at once and queues nothing; what the link's task takes frees
    /// its bytes; one message larger than the bound still goes alone into an empty queue.
    #[test]
    fn a_link_queue_refuses_messages_past_its_byte_bound_and_frees_what_is_taken() {
        let one = frame_bytes(&message(5000));
        let (link, mut queued) = link(100, 2 * one + one / 2);
        send(&link, message(5000)).unwrap();
        send(&link, message(5000)).unwrap();
        let refused = send(&link, message(5000)).unwrap_err();
        assert!(
            refused.contains("cluster.replication_queue_bytes_max"),
            "{refused}"
        );
        assert_eq!(link.queued_bytes.load(Ordering::Acquire), 2 * one);

        let taken = queued.try_recv().expect("the first message");
        assert_eq!(taken.bytes, one);
        assert_eq!(link.queued_bytes.load(Ordering::Acquire), one);
        send(&link, message(5000)).unwrap();
        while queued.try_recv().is_some() {}
        assert_eq!(link.queued_bytes.load(Ordering::Acquire), 0);

        send(&link, message(10 * 5000)).expect("a large message goes into an empty queue");
        let refused = send(&link, message(SMALL_MESSAGE_BYTES)).unwrap_err();
        assert!(
            refused.contains("bytes of messages already wait"),
            "{refused}"
        );
        send(&link, message(100)).expect("a small message passes the byte bound");
    }

    /// The message-count bound still holds, and a refusal by it leaves the byte count as
    /// it was.
    #[test]
    fn a_link_queue_refuses_messages_past_its_count_bound() {
        let (link, _queued) = link(2, usize::MAX / 2);
        send(&link, message(10)).unwrap();
        send(&link, message(10)).unwrap();
        let refused = send(&link, message(10)).unwrap_err();
        assert!(
            refused.contains("cluster.replication_queue_depth_max"),
            "{refused}"
        );
        assert_eq!(
            link.queued_bytes.load(Ordering::Acquire),
            2 * frame_bytes(&message(10))
        );
    }
}
