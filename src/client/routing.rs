//! [`RoutingClient`]: a client for a cluster that sends each request where it can be
//! served and retries through leader changes and lost nodes, within a time and attempt
//! budget ([`RetryOptions`]).
//!
//! It owns the client's picture of the cluster: the nodes it knows (the seed, those
//! `DescribeCluster` lists, those hints name; at most [`NODES_MAX`]), one cached
//! connection per known node, and the address each route (a partition's leader, a
//! partition's replica, the controller) last worked at or was pointed to. The picture is
//! advice, never trusted: every refusal corrects it.
//!
//! How a failed attempt is retried ([`super::hint::classify`] decides which case it is):
//! - `UNAVAILABLE` with a `walrs-leader` hint: the request was not carried out; go to the
//!   named node at once (after three hops in a row, back off first, so two nodes pointing
//!   at each other cannot spin) and remember it for that route.
//! - `UNAVAILABLE` without a hint, or a transport failure (refused, reset, the node died):
//!   back off (exponential from 50 ms to 1 s, jittered) and try the next known node.
//! - Any other status is the server's answer and goes to the caller unchanged; no
//!   `INVALID_ARGUMENT`, `NOT_FOUND`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`,
//!   `RESOURCE_EXHAUSTED`, `OUT_OF_RANGE`, ... is ever retried.
//!
//! Giving up (budget spent or attempts used) returns the last status's code with a message
//! naming the attempts, the time and the nodes tried.
//!
//! # Retried appends
//! An append retried after a transport failure may have been written by its first attempt
//! before the answer was lost: sent with a producer id and sequence (idempotent producers,
//! `Sequences`, the default of `walrs produce` and `walrs bench`), the retry is answered
//! with the first attempt's offsets and not written again; sent without, it may be written
//! twice. An append refused with the leader hint (or `UNAVAILABLE` without one) was not
//! written, so following it never duplicates.
//!
//! A write to a partition (an append, a truncation) whose answer was lost (a transport
//! failure after the request went out) may have been carried out. From then on the
//! operation never ends in a definite refusal: a later `NOT_FOUND`, `FAILED_PRECONDITION`
//! or a give-up is returned as `UNKNOWN`, naming the refusal, since the first attempt may
//! have written what the retry was refused ([`Attempts::final_error`]).
//!
//! Never: hold the state lock across an `.await`, cache a connection to an address it does
//! not count among its nodes, or retry without a bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;
use tonic::transport::ClientTlsConfig;

use super::hint::{self, Disposition};
use super::retry::{Attempts, RetryOptions};
use super::{Client, ClientTls, Error};
use crate::proto::v1::{
    AppendRequest, AppendResponse, CreateTopicResponse, DeleteTopicResponse,
    DescribeClusterResponse, DescribeTopicResponse, ListTopicsResponse, ReadResponse, Record,
    TruncateResponse,
};

/// Most nodes a routing client knows (and so most connections it holds).
pub const NODES_MAX: usize = 256;
/// Most routes whose address is remembered; past it the memory starts afresh.
const ROUTES_MAX: usize = 4096;
/// Hint-following hops in a row before a backoff.
const HINT_HOPS_WITHOUT_BACKOFF: u32 = 3;
/// Longest wait for the `DescribeCluster` that learns the nodes (best effort).
const LEARN_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a request must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Appends and per-partition admin calls (`Truncate`): the partition's leader. Without
    /// a partition (the server picks one), the route is the topic's.
    Leader {
        topic: &'a str,
        partition: Option<u32>,
    },
    /// Reads: any replica of the partition (a follower serves what it knows committed).
    Replica { topic: &'a str, partition: u32 },
    /// Topic creation and deletion: whichever node the hints name.
    Controller,
    /// Calls any node answers (`ListTopics`, `DescribeTopic`, `DescribeCluster`).
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RouteKey {
    Leader(String, Option<u32>),
    Replica(String, u32),
    Controller,
}

impl Route<'_> {
    fn key(self) -> Option<RouteKey> {
        match self {
            Route::Leader { topic, partition } => Some(RouteKey::Leader(topic.into(), partition)),
            Route::Replica { topic, partition } => Some(RouteKey::Replica(topic.into(), partition)),
            Route::Controller => Some(RouteKey::Controller),
            Route::Any => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    /// Unknown for the seed until a `DescribeCluster` names it.
    id: Option<u32>,
    /// `host:port`, no scheme.
    addr: String,
}

#[derive(Debug)]
struct State {
    /// Known nodes, the seed first; at most [`NODES_MAX`].
    nodes: Vec<Node>,
    /// One connection per address in `nodes`.
    connections: HashMap<String, Client>,
    /// Where each route last worked or was pointed to.
    routes: HashMap<RouteKey, String>,
    /// Where a route with no memory goes first.
    default_addr: String,
    /// Whether a `DescribeCluster` has been answered (or refused by a server).
    nodes_learned: bool,
}

#[derive(Debug)]
struct Shared {
    tls: Option<ClientTlsConfig>,
    options: RetryOptions,
    state: Mutex<State>,
    retries: AtomicU64,
}

/// A cluster client that follows leaders and retries (see the module docs for exactly
/// when). Cheap to clone: clones share connections, the cluster picture and the retry
/// counter.
#[derive(Debug, Clone)]
pub struct RoutingClient {
    shared: Arc<Shared>,
}

/// `address` without its scheme: nodes are keyed by `host:port`.
fn normalize(address: &str) -> &str {
    let bare = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("http://"))
        .unwrap_or(address);
    bare.trim_end_matches('/')
}

impl RoutingClient {
    /// A client that starts from `seed` (`host:port`, or a URI whose scheme matches `tls`).
    /// Nothing connects yet: the TLS files are loaded and the address and options checked;
    /// the first call connects and learns the other nodes with `DescribeCluster` (its
    /// failure is ignored: a single node, or a server without it).
    pub fn new(
        seed: &str,
        tls: Option<ClientTls>,
        options: RetryOptions,
    ) -> Result<RoutingClient, Error> {
        options.validate().map_err(Error::RetryOptions)?;
        let tls = tls.map(|tls| tls.load()).transpose()?;
        super::endpoint(seed, tls.clone())?;
        let seed = normalize(seed).to_string();
        let state = State {
            nodes: vec![Node {
                id: None,
                addr: seed.clone(),
            }],
            connections: HashMap::new(),
            routes: HashMap::new(),
            default_addr: seed,
            nodes_learned: false,
        };
        Ok(RoutingClient {
            shared: Arc::new(Shared {
                tls,
                options,
                state: Mutex::new(state),
                retries: AtomicU64::new(0),
            }),
        })
    }

    pub fn options(&self) -> RetryOptions {
        self.shared.options
    }

    /// A fresh budget for one operation.
    pub fn attempts(&self) -> Attempts {
        Attempts::new(self.shared.options)
    }

    /// Retries made so far by this client and its clones (attempts after the first of
    /// each operation).
    pub fn retries(&self) -> u64 {
        self.shared.retries.load(Relaxed)
    }

    /// The addresses of the nodes known, the seed first.
    pub fn known_nodes(&self) -> Vec<String> {
        let state = self.state();
        state.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Where `route` would go now.
    pub fn address_of(&self, route: Route<'_>) -> String {
        let state = self.state();
        route
            .key()
            .and_then(|key| state.routes.get(&key).cloned())
            .unwrap_or_else(|| state.default_addr.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .expect("a routing client panicked while holding its state")
    }

    /// A connection to where `route` goes, retrying other nodes (within `attempts`) when
    /// one cannot be reached. Returns the address with it, for [`RoutingClient::recover`].
    pub async fn connect_for(
        &self,
        route: Route<'_>,
        attempts: &mut Attempts,
    ) -> Result<(String, Client), Status> {
        // Bounded: every failed connection goes through `retry_after`, which gives up
        // after `attempts_max` attempts or the budget.
        loop {
            let addr = self.address_of(route);
            attempts.tried(&addr);
            let connected = tokio::time::timeout(attempts.remaining(), self.connection(&addr));
            let error = match connected.await {
                Ok(Ok(client)) => {
                    self.learn_nodes_once(&addr, &client, attempts).await;
                    return Ok((addr, client));
                }
                Ok(Err(error)) => error,
                Err(_) => {
                    let status = Status::unavailable(format!(
                        "connecting to {addr} took longer than the retry budget left"
                    ));
                    return Err(attempts.give_up(&status));
                }
            };
            let disposition = match &error {
                Error::Connect { source, .. } if !hint::is_tls_failure(source) => {
                    Disposition::Transport
                }
                _ => Disposition::Fail,
            };
            let status = Status::unavailable(format!("{error}: {}", error_chain(&error)));
            self.retry_after(route, &addr, status, disposition, attempts)
                .await?;
        }
    }

    /// After an attempt at `addr` for `route` failed with `status`: `Ok(())` when another
    /// attempt should be made (the route now points where it should go, and the backoff,
    /// if any, has been waited), else the status to return (the server's own when it is
    /// final, a "gave up" one when the budget is spent).
    pub async fn recover(
        &self,
        route: Route<'_>,
        addr: &str,
        status: Status,
        attempts: &mut Attempts,
    ) -> Result<(), Status> {
        let disposition = hint::classify(&status);
        if disposition == Disposition::Transport && matches!(route, Route::Leader { .. }) {
            attempts.answer_lost(addr);
        }
        self.retry_after(route, addr, status, disposition, attempts)
            .await
    }

    async fn retry_after(
        &self,
        route: Route<'_>,
        addr: &str,
        status: Status,
        disposition: Disposition,
        attempts: &mut Attempts,
    ) -> Result<(), Status> {
        let delay = match disposition {
            Disposition::Fail => return Err(attempts.final_error(status)),
            Disposition::Follow(hint) => {
                let stale = normalize(&hint.addr) == addr;
                self.learn(hint.node_id, &hint.addr);
                self.remember(route, &hint.addr);
                if stale || attempts.hops_in_row >= HINT_HOPS_WITHOUT_BACKOFF {
                    attempts.hops_in_row = 0;
                    attempts.backoff.next_delay()
                } else {
                    attempts.hops_in_row += 1;
                    Duration::ZERO
                }
            }
            Disposition::Refused | Disposition::Transport => {
                let transport = disposition == Disposition::Transport;
                self.move_on(route, addr, transport);
                attempts.hops_in_row = 0;
                attempts.backoff.next_delay()
            }
        };
        if !attempts.may_retry_after(delay) {
            return Err(attempts.give_up(&status));
        }
        tracing::debug!(%addr, code = ?status.code(), message = status.message(), delay_ms = delay.as_millis() as u64, "retrying");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        attempts.begin_next();
        self.shared.retries.fetch_add(1, Relaxed);
        Ok(())
    }

    /// The cached connection to `addr`, or a new one (cached when `addr` is a known node).
    async fn connection(&self, addr: &str) -> Result<Client, Error> {
        if let Some(client) = self.state().connections.get(addr) {
            return Ok(client.clone());
        }
        let client = Client::connect_loaded(addr, self.shared.tls.clone()).await?;
        let mut state = self.state();
        if state.nodes.iter().any(|n| n.addr == addr) {
            state.connections.insert(addr.to_string(), client.clone());
        }
        Ok(client)
    }

    /// Asks `client` (at `addr`) for the cluster's nodes, once per routing client; a
    /// transport failure leaves it for the next connection, a server's refusal (an old
    /// server, no permission) ends the learning.
    async fn learn_nodes_once(&self, addr: &str, client: &Client, attempts: &Attempts) {
        if self.state().nodes_learned {
            return;
        }
        let wait = attempts.remaining().min(LEARN_TIMEOUT);
        match tokio::time::timeout(wait, client.describe_cluster()).await {
            Ok(Ok(cluster)) => self.learn_cluster(addr, &cluster),
            Ok(Err(status)) if hint::classify(&status) == Disposition::Fail => {
                self.state().nodes_learned = true;
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }

    /// Takes in a `DescribeCluster` answer from `addr`: names the answering node and adds
    /// the others (alive ones first).
    fn learn_cluster(&self, addr: &str, cluster: &DescribeClusterResponse) {
        if cluster.node_id > 0 {
            let mut state = self.state();
            if let Some(node) = state.nodes.iter_mut().find(|n| n.addr == addr) {
                node.id.get_or_insert(cluster.node_id);
            }
        }
        let mut nodes: Vec<_> = cluster.nodes.iter().filter(|n| n.id > 0).collect();
        nodes.sort_by_key(|n| !n.alive);
        for node in nodes {
            if parse_addr(&node.addr).is_some() {
                self.learn(node.id, &node.addr);
            }
        }
        self.state().nodes_learned = true;
    }

    /// Records that node `id` is at `addr`: a new node (when there is room), an id for a
    /// known address, or a node that moved (its old connection is dropped).
    fn learn(&self, id: u32, addr: &str) {
        let addr = normalize(addr);
        let mut state = self.state();
        let state = &mut *state;
        if let Some(node) = state.nodes.iter_mut().find(|n| n.id == Some(id)) {
            if node.addr != addr {
                let old = std::mem::replace(&mut node.addr, addr.to_string());
                state.connections.remove(&old);
                if state.default_addr == old {
                    state.default_addr = addr.to_string();
                }
                // Another entry may already hold the address (the seed, before its id was
                // known): keep one.
                let mut seen = false;
                state.nodes.retain(|n| {
                    let duplicate = n.addr == addr && seen;
                    seen |= n.addr == addr;
                    !duplicate
                });
            }
        } else if let Some(node) = state.nodes.iter_mut().find(|n| n.addr == addr) {
            node.id = Some(id);
        } else if state.nodes.len() < NODES_MAX {
            state.nodes.push(Node {
                id: Some(id),
                addr: addr.to_string(),
            });
        }
    }

    /// Points `route` at `addr` (it worked there, or a hint named it).
    pub(super) fn remember(&self, route: Route<'_>, addr: &str) {
        let addr = normalize(addr).to_string();
        let mut state = self.state();
        match route.key() {
            Some(key) => {
                if state.routes.len() >= ROUTES_MAX && !state.routes.contains_key(&key) {
                    state.routes.clear();
                }
                state.routes.insert(key, addr);
            }
            None => state.default_addr = addr,
        }
    }

    /// After `addr` failed for `route`: point the route at the next known node; after a
    /// transport failure also drop the connection and move the default off `addr`.
    fn move_on(&self, route: Route<'_>, addr: &str, transport: bool) {
        let mut state = self.state();
        let position = state.nodes.iter().position(|n| n.addr == addr);
        let next = match position {
            Some(i) => state.nodes[(i + 1) % state.nodes.len()].addr.clone(),
            None => state.nodes[0].addr.clone(),
        };
        if transport {
            state.connections.remove(addr);
            if state.default_addr == addr {
                state.default_addr = next.clone();
            }
        }
        match route.key() {
            Some(key) => {
                if state.routes.len() >= ROUTES_MAX && !state.routes.contains_key(&key) {
                    state.routes.clear();
                }
                state.routes.insert(key, next);
            }
            None => state.default_addr = next,
        }
    }

    /// One operation with retries: `call` makes one attempt on a connection; each attempt
    /// may take what is left of the budget, plus `wait_extra` (a read's `max_wait_ms`).
    pub(super) async fn call<T, F, Fut>(
        &self,
        route: Route<'_>,
        wait_extra: Duration,
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempts = self.attempts();
        // Bounded: `connect_for` and `recover` give up after `attempts_max` attempts or
        // the budget.
        loop {
            let (addr, client) = self.connect_for(route, &mut attempts).await?;
            let limit = attempts.remaining() + wait_extra;
            let status = match tokio::time::timeout(limit, call(client)).await {
                Ok(Ok(value)) => {
                    self.remember(route, &addr);
                    return Ok(value);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    let status = Status::deadline_exceeded(format!(
                        "{addr} did not answer within the retry budget"
                    ));
                    return Err(attempts.give_up(&status));
                }
            };
            self.recover(route, &addr, status, &mut attempts).await?;
        }
    }

    /// Appends `records` as one batch to `topic` (`partition`, or the server's pick), on
    /// the partition's leader. Not idempotent: a retry after a transport failure may write
    /// the batch twice (use [`RoutingClient::append_request`] with a stamped request).
    pub async fn append(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<Record>,
    ) -> Result<AppendResponse, Status> {
        self.append_request(super::append_request(topic, partition, records))
            .await
    }

    /// Sends `request` as it is to its partition's leader, retrying as [`Self::recover`]
    /// decides. Stamped by [`super::Sequences`] it is idempotent: every retry carries the same
    /// sequence, so it is written once and answered with its original offsets.
    pub async fn append_request(&self, request: AppendRequest) -> Result<AppendResponse, Status> {
        let topic = request.topic.as_str();
        let route = Route::Leader {
            topic,
            partition: request.partition,
        };
        self.call(route, Duration::ZERO, |client| {
            let request = request.clone();
            async move { Ok(client.log_client().append(request).await?.into_inner()) }
        })
        .await
    }

    /// Reads from `offset` of `topic`/`partition` on any replica.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: super::ReadOptions,
    ) -> Result<ReadResponse, Status> {
        let route = Route::Replica { topic, partition };
        let wait = Duration::from_millis(u64::from(options.max_wait_ms));
        self.call(route, wait, |client| async move {
            client.read(topic, partition, offset, options).await
        })
        .await
    }

    /// Drops the records of `topic`/`partition` below `before_offset`, on its leader.
    pub async fn truncate(
        &self,
        topic: &str,
        partition: u32,
        before_offset: u64,
    ) -> Result<TruncateResponse, Status> {
        let route = Route::Leader {
            topic,
            partition: Some(partition),
        };
        self.call(route, Duration::ZERO, |client| async move {
            client.truncate(topic, partition, before_offset).await
        })
        .await
    }

    /// Creates `name` with `partitions` partitions (0: the server's default). A retry
    /// after a transport failure may meet `ALREADY_EXISTS` from the first attempt.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<CreateTopicResponse, Status> {
        self.call(Route::Controller, Duration::ZERO, |client| async move {
            client.create_topic(name, partitions).await
        })
        .await
    }

    /// Deletes `name` and all its records. A retry after a transport failure may meet
    /// `NOT_FOUND` from the first attempt.
    pub async fn delete_topic(&self, name: &str) -> Result<DeleteTopicResponse, Status> {
        self.call(Route::Controller, Duration::ZERO, |client| async move {
            client.delete_topic(name).await
        })
        .await
    }

    /// The topics the caller may see.
    pub async fn list_topics(&self) -> Result<ListTopicsResponse, Status> {
        self.call(Route::Any, Duration::ZERO, |client| async move {
            client.list_topics().await
        })
        .await
    }

    /// The partitions of `name`: offsets, shards, leaders and replicas.
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, Status> {
        self.call(Route::Any, Duration::ZERO, |client| async move {
            client.describe_topic(name).await
        })
        .await
    }

    /// Moves `topic`'s partition `partition` to `replicas`; answered once the controller
    /// recorded the move (see `walrs.v1.Log/ReassignPartition`).
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u32>,
    ) -> Result<crate::proto::v1::ReassignPartitionResponse, Status> {
        self.call(Route::Controller, Duration::ZERO, |client| {
            let replicas = replicas.clone();
            async move { client.reassign_partition(topic, partition, replicas).await }
        })
        .await
    }

    /// Moves every replica off `node`; answered once the moves are recorded.
    pub async fn decommission_node(
        &self,
        node: u32,
    ) -> Result<crate::proto::v1::DecommissionNodeResponse, Status> {
        self.call(Route::Controller, Duration::ZERO, |client| async move {
            client.decommission_node(node).await
        })
        .await
    }

    /// The cluster's nodes as the answering node knows them (and learns them).
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse, Status> {
        let cluster = self
            .call(Route::Any, Duration::ZERO, |client| async move {
                client.describe_cluster().await
            })
            .await?;
        // A success points `Route::Any` at the node that answered.
        self.learn_cluster(&self.address_of(Route::Any), &cluster);
        Ok(cluster)
    }
}

/// `addr` when it looks like `host:port` (what a hint must hold too).
fn parse_addr(addr: &str) -> Option<&str> {
    hint::parse_leader_hint(&format!("1={addr}")).map(|_| addr)
}

/// `err`'s sources, joined, for a message (tonic's errors say little at the top).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = err.source();
    // Bounded: error chains are short.
    for _ in 0..16 {
        let Some(err) = next else { break };
        parts.push(err.to_string());
        next = err.source();
    }
    parts.join(": ")
}
