//! Starting and stopping the server: config to shard options, the listener, TLS, health and
//! reflection, and the graceful shutdown sequence.
//!
//! Start: validate the config, load TLS (a bad file is named before anything listens), bind
//! the listener (so `127.0.0.1:0` gives tests their own port), report NOT_SERVING, start the
//! shards, serve, report SERVING. Stop (SIGINT/SIGTERM, or [`Running::shutdown`]): report
//! NOT_SERVING, turn `draining` on (long polls and follows end, new calls get UNAVAILABLE),
//! stop accepting connections and let in-flight calls finish (at most [`DRAIN_GRACE`]), then
//! `ShardSet::shutdown` drains the shard queues, syncs and closes every partition.
//!
//! Accepting connections, bounding them by `server.connections_max` and the TLS handshake
//! are `listener`'s; tonic is handed finished connections only, runs at most
//! `server.streams_per_connection_max` calls on each, and pings each peer every
//! `server.keepalive_interval_ms` (closing it when a ping goes unanswered).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::Server;

use super::calls::InFlight;
use super::errors::{Error, Result};
use super::listener;
use super::oversize::{MessageLimit, RequestSize};
use super::service::LogService;
use super::stats::ServerStats;
use crate::client::ClientTls;
use crate::cluster::gossip::{Gossip, GossipOptions, MembersView, NodeState};
use crate::cluster::peers::PeerAdmin;
use crate::cluster::transport::{GrpcTransport, LinkOptions, PeerLiveness};
use crate::cluster::{Learned, Membership};
use crate::config::Config;
use crate::observability::{self, Health, MetricsEndpoint};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::v1::log_server::LogServer;
use crate::proto::v1::replication_server::ReplicationServer;
use crate::raft::group::RaftContext;
use crate::shard::ShardSet;

/// How long in-flight calls may take to finish once shutdown starts.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// How long connections get to flush their last responses once no call is in progress.
const FLUSH_GRACE: Duration = Duration::from_millis(200);
/// Room for protobuf framing around a batch or a response's record bytes: each record's
/// field tags and lengths, generously.
const FRAMING_BYTES: usize = 1 << 20;
/// Room in a request message for what is not record bytes: the topic name (at most 249
/// bytes), partition, correlation id, producer id and sequence. Each record's own tags and
/// lengths are covered by doubling the batch limit: a minimally encoded record is never
/// twice the size of its stored form (28 bytes of fixed fields, 6 per header).
const REQUEST_FRAMING_BYTES: usize = 64 * 1024;

/// The largest request message the server receives: `2 × storage.batch_bytes_max + 64 KiB`.
/// A larger one is refused `RESOURCE_EXHAUSTED` from its gRPC frame header, before its bytes
/// are buffered. Each call in progress buffers at most one request, so requests being received
/// take at most `connections_max × streams_per_connection_max` times this (docs/RELIABILITY.md,
/// "Overload").
pub fn request_bytes_max(config: &Config) -> usize {
    config.storage.batch_bytes_max as usize * 2 + REQUEST_FRAMING_BYTES
}

/// The limit on one request message (what `LogServer` decodes), with its config key.
pub(crate) fn request_limit(config: &Config) -> MessageLimit {
    MessageLimit {
        bytes_max: request_bytes_max(config),
        key: "storage.batch_bytes_max",
        key_value: config.storage.batch_bytes_max,
    }
}

/// Largest message of the node-to-node service: one frame of `replication_batch_bytes_max`,
/// or one AppendEntries of `raft_payload_entries_max` batches at `storage.batch_bytes_max`
/// (sent alone in its frame), with room for each entry's framing.
fn replication_message_limit(config: &Config) -> usize {
    const ENTRY_FRAMING_BYTES: u64 = 64 * 1024;
    let entries = u64::from(config.cluster.raft_payload_entries_max);
    let append_bytes = entries * (config.storage.batch_bytes_max + ENTRY_FRAMING_BYTES);
    let frame_bytes = config.cluster.replication_batch_bytes_max;
    usize::try_from(append_bytes.max(frame_bytes)).unwrap_or(usize::MAX) + FRAMING_BYTES
}

/// The membership and the link settings of a node in a cluster; `None` for a single node.
fn cluster_links(config: &Config) -> Result<Option<(Membership, LinkOptions)>> {
    let cluster = &config.cluster;
    if cluster.node_id == 0 {
        return Ok(None);
    }
    let membership = Membership::new(cluster.node_id, config.cluster_nodes());
    // A node dials its peers with its own certificate (CN `node-<id>`), which the peers'
    // ACLs grant `replicate`, and checks theirs against the same CA as its clients'.
    let tls = match &config.tls {
        None => None,
        Some(tls) => Some(ClientTls::new(&tls.client_ca, &tls.cert, &tls.key).load()?),
    };
    let links = LinkOptions {
        tls,
        queue_depth_max: cluster.replication_queue_depth_max as usize,
        queue_bytes_max: cluster.replication_queue_bytes_max as usize,
        frame_bytes_max: cluster.replication_batch_bytes_max as usize,
        message_bytes_max: replication_message_limit(config),
        keepalive_interval: Duration::from_millis(cluster.election_timeout_min_ms),
        keepalive_timeout: Duration::from_millis(cluster.election_timeout_max_ms),
    };
    Ok(Some((membership, links)))
}

/// Starts gossiping (`cluster::gossip`): on `gossip_listen`, or UDP on the port the gRPC
/// listener got.
async fn start_gossip(config: &Config, bound: SocketAddr) -> Result<Gossip> {
    let cluster = &config.cluster;
    let options = GossipOptions {
        node_id: cluster.node_id,
        listen: cluster.gossip_listen_or(bound),
        advertise: cluster.gossip_advertise(bound),
        grpc_addr: cluster.advertise_addr_or(bound),
        seeds: cluster.gossip_seeds(),
        interval: Duration::from_millis(cluster.gossip_interval_ms),
        dead_after: Duration::from_millis(cluster.failure_detector_dead_after_ms),
    };
    Gossip::start(options).await.map_err(Error::ClusterSetup)
}

/// What the shards need to run partition groups: this node, the links to the others and
/// the groups' Raft settings. Starts the links (they connect in the background).
fn raft_context(
    config: &Config,
    membership: &Membership,
    links: LinkOptions,
) -> Result<(RaftContext, Arc<GrpcTransport>)> {
    let raft_config = config
        .cluster
        .raft_timings()
        .openraft_config()
        .map_err(Error::ClusterSetup)?;
    let transport = Arc::new(GrpcTransport::start(membership, links).map_err(Error::ClusterSetup)?);
    let context = RaftContext {
        node_id: u64::from(membership.node_id()),
        tail_cache_bytes_max: config.cluster.replication_cache_bytes_max as usize,
        append_bytes_max: config.cluster.replication_batch_bytes_max as usize,
        append_inflight_max: config.cluster.replication_inflight_max as usize,
        transport: transport.clone(),
        config: Arc::new(raft_config),
        quiet: config.cluster.raft_timings().quiet_settings(),
    };
    Ok((context, transport))
}

/// Makes every node gossip hears of a peer (its address in the membership, a replication
/// link to it), so that a node added to the running cluster can be placed on, until the
/// node drains or gossip stops.
async fn learn_from_gossip(
    mut view: MembersView,
    transport: Arc<GrpcTransport>,
    mut draining: watch::Receiver<bool>,
) {
    let mut warned_full = false;
    loop {
        for member in view.members() {
            let learned = transport.learn(member.id, &member.grpc_addr);
            if learned == Learned::Full && !warned_full {
                warned_full = true;
                tracing::warn!(
                    node = member.id,
                    max = crate::config::CLUSTER_NODES_MAX,
                    "gossip tells of more nodes than a cluster may have; ignoring the rest"
                );
            }
        }
        tokio::select! {
            more = view.changed() => if !more { return },
            _ = draining.wait_for(|d| *d) => return,
        }
    }
}

/// A running server.
pub struct Running {
    local_addr: SocketAddr,
    shards: ShardSet,
    metrics_addr: Option<SocketAddr>,
    stats: Arc<ServerStats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    /// The append byte budget (`server.inflight_append_bytes_max`), for
    /// [`Running::inflight_append_bytes`].
    append_budget: Arc<tokio::sync::Semaphore>,
    inflight_append_bytes_max: u64,
}

impl Running {
    /// Record bytes of appends accepted and not yet acknowledged, server-wide (what
    /// `server.inflight_append_bytes_max` bounds).
    pub fn inflight_append_bytes(&self) -> u64 {
        self.inflight_append_bytes_max - self.append_budget.available_permits() as u64
    }

    /// The address the server listens on (the real port when the config said `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shards behind the server, for their counters (`stats`, `total_stats`) and
    /// engine name; an in-process benchmark reads them.
    pub fn shards(&self) -> &ShardSet {
        &self.shards
    }

    /// The address of `/metrics` and `/health` (the real port when `[metrics] listen` said
    /// `:0`); `None` when `[metrics] enabled = false`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The server's connection and handshake counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Shuts down gracefully and waits until the shards are closed.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _already_stopping = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

/// Runs the server until `shutdown` resolves, then shuts it down gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let mut running = start(config).await?;
    let stop = running.stop.take();
    tokio::select! {
        () = shutdown => {
            tracing::info!("shutdown requested; draining");
            if let Some(stop) = stop {
                let _already_stopping = stop.send(());
            }
            running.wait().await
        }
        // The server stopped by itself (a serve error).
        result = &mut running.task => match result {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        },
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ctrl_c = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ctrl_c = tokio::signal::ctrl_c().await;
    }
}

/// Starts the server and returns once it is serving.
pub async fn start(config: Config) -> Result<Running> {
    config.validate()?;
    let tls = match &config.tls {
        Some(tls) => Some(super::tls::server_config(tls)?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            address: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        address: config.listen,
        source,
    })?;

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, <LogServer<LogService> as NamedService>::NAME).await;
    // The recorder goes in before the shards start so that their instruments are live.
    let mut metrics = match config.metrics.enabled {
        false => None,
        true => {
            let handle = observability::install_recorder().map_err(Error::Metrics)?;
            let endpoint =
                MetricsEndpoint::start(config.metrics.listen, Some(handle), health.clone())
                    .await
                    .map_err(|source| Error::Bind {
                        address: config.metrics.listen,
                        source,
                    })?;
            Some(endpoint)
        }
    };

    let options = config.shard_options();
    let cluster = cluster_links(&config)?;
    let (raft, transport) = match &cluster {
        None => (None, None),
        Some((membership, links)) => {
            let (context, transport) = raft_context(&config, membership, links.clone())?;
            (Some(context), Some(transport))
        }
    };
    let liveness = transport
        .as_ref()
        .map_or_else(PeerLiveness::default, |t| t.liveness());
    // Starting opens and recovers every partition: blocking work, off the runtime.
    let shards =
        match tokio::task::spawn_blocking(move || ShardSet::start_with(options, raft)).await {
            Ok(started) => started?,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
    let stats = Arc::new(ServerStats::default());
    if let Some(metrics) = &mut metrics {
        metrics.attach(Arc::new(super::metrics::ServerMetrics {
            shards: shards.clone(),
            stats: stats.clone(),
        }));
    }
    let metrics_addr = metrics.as_ref().map(MetricsEndpoint::local_addr);

    // Both reflection versions: grpcurl and most tools ask v1, older ones only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the compiled-in descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled-in descriptor sets are valid");

    let gossip = match &cluster {
        None => None,
        Some(_) => Some(Arc::new(start_gossip(&config, local_addr).await?)),
    };
    let (draining_tx, draining_rx) = watch::channel(false);
    if let (Some(gossip), Some(transport)) = (&gossip, transport) {
        tokio::spawn(learn_from_gossip(
            gossip.view(),
            transport,
            draining_rx.clone(),
        ));
    }
    let in_flight = Arc::new(InFlight::default());
    let running_shards = shards.clone();
    let service = LogService::new(
        shards.clone(),
        config.clone(),
        draining_rx.clone(),
        in_flight.clone(),
        cluster.map(|(membership, links)| PeerAdmin::new(membership, links, liveness)),
        gossip.clone(),
    );
    let replication_limit = replication_message_limit(&config);
    let replication_server = ReplicationServer::new(service.replication())
        .max_decoding_message_size(replication_limit)
        .max_encoding_message_size(replication_limit);
    let append_budget = service.append_budget();
    service.spawn_controller();
    let controller = service.controller();
    let limit = request_limit(&config);
    let decode_max = limit.bytes_max;
    let encode_max = config.server.read_bytes_max as usize * 2 + FRAMING_BYTES;
    let log_server = LogServer::new(service)
        .max_decoding_message_size(decode_max)
        .max_encoding_message_size(encode_max);
    let log_server = RequestSize::new(log_server, limit);

    // Keepalive pings close connections whose peer stopped answering (a client that stalled
    // or vanished mid-stream), so that they do not hold places under `connections_max`.
    let keepalive_interval = match config.server.keepalive_interval_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    // No `tls_config` here: the listener performs the handshakes.
    // Bounds the calls one connection runs at once; see `server.streams_per_connection_max`
    // for the memory this bounds.
    let router = Server::builder()
        .max_concurrent_streams(Some(config.server.streams_per_connection_max))
        .http2_keepalive_interval(keepalive_interval)
        .http2_keepalive_timeout(Some(Duration::from_millis(
            config.server.keepalive_timeout_ms,
        )))
        // What a peer may send unread, and in what pieces: see the keys' docs.
        .max_frame_size(config.server.http2_frame_bytes_max)
        .initial_stream_window_size(config.server.http2_stream_window_bytes)
        .initial_connection_window_size(config.server.http2_connection_window_bytes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(log_server)
        .add_service(replication_server);

    let mut stop_accepting = draining_rx.clone();
    let incoming = listener::incoming(
        listener,
        tls,
        listener::ConnectionLimits::of(&config.server),
        stats.clone(),
        async move {
            // A dropped sender means the server task is gone: stop as well.
            let _stopping_or_gone = stop_accepting.wait_for(|d| *d).await;
        },
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stop_health = health.clone();
    let stopping = async move {
        // A dropped sender (the `Running` handle dropped) also stops the server.
        let _stop_or_drop = stop_rx.await;
        stop_health.set(false).await;
        let _no_receivers_is_fine = draining_tx.send(true);
    };

    // A node of a cluster serves health, and says it is alive, once it has joined: it
    // follows the controller's log and holds the topics it should.
    match controller {
        None => health.set(true).await,
        Some(controller) => {
            let (health, gossip, mut draining) =
                (health.clone(), gossip.clone(), draining_rx.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = controller.joined() => {}
                    _ = draining.wait_for(|d| *d) => return,
                }
                health.set(true).await;
                if let Some(gossip) = gossip {
                    gossip.announce(NodeState::Alive).await;
                }
            });
        }
    }
    let gossip_interval = Duration::from_millis(config.cluster.gossip_interval_ms);
    tracing::info!(
        address = %local_addr,
        metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        data_dir = %config.data_dir.display(),
        engine = shards.engine_name(),
        engine_reason = shards.engine_reason(),
        shards = shards.shard_count(),
        durability = ?config.storage.durability,
        tls = config.tls.is_some(),
        acl_entries = config.acl.len(),
        "walrs serving walrs.v1.Log"
    );

    let task = tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, stopping);
        tokio::pin!(serve);
        let mut draining = draining_rx;
        // tonic's graceful stop waits for every connection to close, and an idle client
        // may keep one open for ever; what must finish is the calls in progress. Once they
        // have, the connections get a moment to flush their last responses.
        let served = tokio::select! {
            served = &mut serve => served.map_err(Error::Serve),
            () = async {
                let _sender_gone = draining.wait_for(|d| *d).await.map(|_| ());
                if tokio::time::timeout(DRAIN_GRACE, in_flight.wait_idle()).await.is_err() {
                    tracing::warn!(grace = ?DRAIN_GRACE, "in-flight calls did not finish in time; closing anyway");
                }
            } => match tokio::time::timeout(FLUSH_GRACE, &mut serve).await {
                Ok(served) => served.map_err(Error::Serve),
                Err(_idle_connections_remain) => Ok(()),
            },
        };
        if let Some(gossip) = gossip {
            gossip.leave(gossip_interval).await;
        }
        let closed = shards.shutdown().await.map_err(Error::from);
        match (&served, &closed) {
            (Ok(()), Ok(())) => tracing::info!("shards synced and closed; stopped"),
            _ => tracing::error!(?served, ?closed, "stopped with errors"),
        }
        // `/health` answers NOT_SERVING until the very end.
        drop(metrics);
        served.and(closed)
    });

    Ok(Running {
        local_addr,
        shards: running_shards,
        metrics_addr,
        stats,
        stop: Some(stop_tx),
        task,
        append_budget,
        inflight_append_bytes_max: config.server.inflight_append_bytes_max,
    })
}
