//! A thin client for the `walrs.v1.Log` service: connection set-up (plaintext or mutual
//! TLS) and one convenience method per RPC, returning the generated message types.
//!
//! RPC errors stay `tonic::Status`, exactly as the server sent them, so callers can match
//! on the code (`NOT_FOUND`, `OUT_OF_RANGE`, ...). Only connecting has its own error type.
//! [`Client`] holds no state beyond the channel: it is cheap to clone, and every method
//! takes `&self`, so one client can serve many tasks at once. It never retries: whether an
//! append may be retried is the caller's decision.
//!
//! [`RoutingClient`] is the client for a cluster: it holds one `Client` per node, follows
//! the `walrs-leader` hint of a node that does not lead a partition, and retries through
//! elections and lost nodes within a [`RetryOptions`] budget (`routing` says exactly
//! when; `hint` reads refusals; `retry` holds the budget and backoff; `streams` the
//! resuming read stream and the pipelined appends). It resends a request as it was, so an
//! idempotent append (`producer_id` and `sequence` set; see [`Sequences`]) retried after a
//! lost connection is answered with its original offsets instead of written twice; a plain
//! one (`producer_id = 0`) may be written twice then. One refused with the leader hint was
//! not written either way.

mod hint;
mod retry;
mod routing;
mod streams;

use std::time::Duration;

use thiserror::Error;
use tonic::Status;
use tonic::codec::Streaming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::proto::v1::log_client::LogClient;
use crate::proto::v1::{
    AppendRequest, AppendResponse, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest,
    DeleteTopicResponse, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest,
    DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse, ReadRequest, ReadResponse,
    Record, TruncateRequest, TruncateResponse,
};
pub use crate::tls::ClientTls;
pub use hint::{LEADER_METADATA_KEY, LeaderHint, leader_hint, parse_leader_hint};
pub use retry::{Attempts, RetryOptions};
pub use routing::{NODES_MAX, Route, RoutingClient};
pub use streams::APPEND_WINDOW_MAX;

/// Largest gRPC message the client sends or accepts by default. tonic's own default for
/// received messages (4 MiB) is below a full ReadResponse at the server's default
/// `read_bytes_max` plus its protobuf framing, so the client raises it.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long establishing the connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be made.
#[derive(Debug, Error)]
pub enum Error {
    /// The client's TLS files could not be loaded.
    #[error("cannot load the client's TLS files")]
    Tls(#[from] crate::tls::Error),
    /// The address is not a valid URI.
    #[error("invalid server address {address:?}; expected host:port or http(s)://host:port")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The address's scheme contradicts whether TLS was given.
    #[error("server address {address:?} does not match TLS being {}", if *tls { "on (use https:// or no scheme)" } else { "off (use http:// or no scheme)" })]
    Scheme { address: String, tls: bool },
    /// A routing client's retry options are out of bounds.
    #[error("invalid retry options: {0}")]
    RetryOptions(String),
    /// The server could not be reached, or the TLS handshake failed.
    #[error("cannot connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Limits of one Read, beyond where it starts. Zeros mean the server's defaults and
/// `max_wait_ms = 0` returns at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub max_records: u32,
    pub max_bytes: u32,
    pub max_wait_ms: u32,
}

/// A record with `key` and `value`, no headers, and the server's clock as timestamp.
pub fn record(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Record {
    Record {
        key: key.into().into(),
        value: value.into().into(),
        ..Record::default()
    }
}

/// A connected `walrs.v1.Log` client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: LogClient<Channel>,
}

impl Client {
    /// Connects to `address` (`host:port`, or a URI with `http://` / `https://`): over
    /// mutual TLS with `tls`, plaintext without. The server's certificate is checked for
    /// `tls.domain` whatever host is dialled.
    pub async fn connect(address: &str, tls: Option<ClientTls>) -> Result<Client, Error> {
        let tls = tls.map(|tls| tls.load()).transpose()?;
        Client::connect_loaded(address, tls).await
    }

    /// [`Client::connect`] with TLS files already loaded (a routing client loads them once
    /// for all its connections).
    pub(crate) async fn connect_loaded(
        address: &str,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Client, Error> {
        let endpoint = endpoint(address, tls)?;
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?;
        Ok(Client::from_channel(channel))
    }

    /// Wraps an existing channel (e.g. one built with custom `Endpoint` settings).
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            inner: LogClient::new(channel)
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX),
        }
    }

    /// Changes the largest message sent or accepted (default [`MESSAGE_BYTES_MAX`]).
    pub fn with_message_bytes_max(mut self, bytes: usize) -> Client {
        self.inner = self
            .inner
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        self
    }

    /// The generated client, for what the convenience methods do not cover.
    pub fn log_client(&self) -> LogClient<Channel> {
        self.inner.clone()
    }

    /// Appends `records` as one batch to `topic`, to `partition` or, without one, to the
    /// partition the server picks (by the first record's key, else round-robin).
    pub async fn append(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<Record>,
    ) -> Result<AppendResponse, Status> {
        let request = append_request(topic, partition, records);
        Ok(self.inner.clone().append(request).await?.into_inner())
    }

    /// Pipelined appends: responses echo each request's `correlation_id`.
    pub async fn append_stream(
        &self,
        requests: impl futures::Stream<Item = AppendRequest> + Send + 'static,
    ) -> Result<Streaming<AppendResponse>, Status> {
        Ok(self
            .inner
            .clone()
            .append_stream(requests)
            .await?
            .into_inner())
    }

    /// Reads from `offset` of `topic`/`partition`.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: ReadOptions,
    ) -> Result<ReadResponse, Status> {
        let request = read_request(topic, partition, offset, options, false);
        Ok(self.inner.clone().read(request).await?.into_inner())
    }

    /// Reads from `offset` on as a stream; with `follow` it tails the log.
    pub async fn read_stream(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        options: ReadOptions,
        follow: bool,
    ) -> Result<Streaming<ReadResponse>, Status> {
        let request = read_request(topic, partition, offset, options, follow);
        Ok(self.inner.clone().read_stream(request).await?.into_inner())
    }

    /// Drops the records of `topic`/`partition` below `before_offset` (whole segments).
    pub async fn truncate(
        &self,
        topic: &str,
        partition: u32,
        before_offset: u64,
    ) -> Result<TruncateResponse, Status> {
        let request = TruncateRequest {
            topic: topic.to_string(),
            partition,
            before_offset,
        };
        Ok(self.inner.clone().truncate(request).await?.into_inner())
    }

    /// Creates `name` with `partitions` partitions (0: the server's default).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<CreateTopicResponse, Status> {
        let request = CreateTopicRequest {
            name: name.to_string(),
            partitions,
            // The cluster's default.
            replication_factor: 0,
        };
        Ok(self.inner.clone().create_topic(request).await?.into_inner())
    }

    /// Deletes `name` and all its records.
    pub async fn delete_topic(&self, name: &str) -> Result<DeleteTopicResponse, Status> {
        let request = DeleteTopicRequest {
            name: name.to_string(),
        };
        Ok(self.inner.clone().delete_topic(request).await?.into_inner())
    }

    /// The topics the caller may see.
    pub async fn list_topics(&self) -> Result<ListTopicsResponse, Status> {
        Ok(self
            .inner
            .clone()
            .list_topics(ListTopicsRequest {})
            .await?
            .into_inner())
    }

    /// The partitions of `name` with their offsets and owning shards.
    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, Status> {
        let request = DescribeTopicRequest {
            name: name.to_string(),
        };
        Ok(self
            .inner
            .clone()
            .describe_topic(request)
            .await?
            .into_inner())
    }

    /// The cluster's nodes as the answering node knows them.
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse, Status> {
        Ok(self
            .inner
            .clone()
            .describe_cluster(DescribeClusterRequest {})
            .await?
            .into_inner())
    }

    /// Moves `topic`'s partition `partition` to `replicas` (preferred leader first).
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<u32>,
    ) -> Result<crate::proto::v1::ReassignPartitionResponse, Status> {
        let request = crate::proto::v1::ReassignPartitionRequest {
            topic: topic.to_owned(),
            partition,
            replicas,
        };
        Ok(self
            .inner
            .clone()
            .reassign_partition(request)
            .await?
            .into_inner())
    }

    /// Moves every replica off `node`.
    pub async fn decommission_node(
        &self,
        node: u32,
    ) -> Result<crate::proto::v1::DecommissionNodeResponse, Status> {
        let request = crate::proto::v1::DecommissionNodeRequest { node };
        Ok(self
            .inner
            .clone()
            .decommission_node(request)
            .await?
            .into_inner())
    }
}

/// The endpoint for `address` (`host:port`, or a URI whose scheme matches `tls`).
pub(crate) fn endpoint(address: &str, tls: Option<ClientTlsConfig>) -> Result<Endpoint, Error> {
    let uri = match (address.split_once("://"), &tls) {
        (None, Some(_)) => format!("https://{address}"),
        (None, None) => format!("http://{address}"),
        (Some(("https", _)), Some(_)) | (Some(("http", _)), None) => address.to_string(),
        (Some(_), _) => {
            return Err(Error::Scheme {
                address: address.to_string(),
                tls: tls.is_some(),
            });
        }
    };
    let address_error = |source| Error::Address {
        address: address.to_string(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(address_error)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(address_error)?;
    }
    Ok(endpoint)
}

/// A random idempotent producer id (never 0, which means "not idempotent"). The server
/// scopes it to the client's certificate identity, so it only has to be unique among one
/// identity's producers: 64 random bits are.
pub fn random_producer_id() -> u64 {
    rand::random::<u64>().max(1)
}

/// An idempotent producer's numbering: one producer id, and per partition the next
/// sequence (0, 1, 2, … per batch). A retry must resend the request it stamped as it was.
#[derive(Debug, Clone)]
pub struct Sequences {
    producer_id: u64,
    next: std::collections::HashMap<u32, u64>,
}

impl Sequences {
    /// A producer with a fresh random id.
    pub fn new() -> Sequences {
        Sequences::with_id(random_producer_id())
    }

    /// A producer with `producer_id` (not 0).
    pub fn with_id(producer_id: u64) -> Sequences {
        assert_ne!(producer_id, 0, "producer id 0 means not idempotent");
        Sequences {
            producer_id,
            next: std::collections::HashMap::new(),
        }
    }

    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Stamps `request` (which must name its partition: sequences are per partition) with
    /// the producer id and its partition's next sequence.
    pub fn stamp(&mut self, request: &mut AppendRequest) {
        let partition = request
            .partition
            .expect("an idempotent append names its partition");
        let next = self.next.entry(partition).or_insert(0);
        request.producer_id = self.producer_id;
        request.sequence = *next;
        *next += 1;
    }
}

impl Default for Sequences {
    fn default() -> Self {
        Sequences::new()
    }
}

/// One unary append of `records` as one batch, not idempotent (see [`Sequences`]).
pub(crate) fn append_request(
    topic: &str,
    partition: Option<u32>,
    records: Vec<Record>,
) -> AppendRequest {
    AppendRequest {
        topic: topic.to_string(),
        partition,
        records,
        correlation_id: 0,
        producer_id: 0,
        sequence: 0,
    }
}

fn read_request(
    topic: &str,
    partition: u32,
    offset: u64,
    options: ReadOptions,
    follow: bool,
) -> ReadRequest {
    ReadRequest {
        topic: topic.to_string(),
        partition,
        offset,
        max_records: options.max_records,
        max_bytes: options.max_bytes,
        max_wait_ms: options.max_wait_ms,
        follow,
    }
}

#[cfg(test)]
pub(crate) mod routing_tests;
#[cfg(test)]
mod tests;
