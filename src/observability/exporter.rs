//! The plain-HTTP endpoint on `[metrics] listen`: `GET /metrics` (Prometheus text format)
//! and `GET /health` (200 `SERVING` or 503 `NOT_SERVING`, for load balancers that do not
//! speak gRPC).
//!
//! Owns: the listener, at most [`CONNECTIONS_MAX`] connections with a header timeout, and
//! the refresh of the values kept elsewhere: shard counters and queue depths, connection
//! and TLS handshake counts (copied from the shards' and the listener's atomics at each
//! scrape), the per-partition replication series (rendered from the shards' latest
//! snapshots at each scrape, after the registry's; see `partitions`) and the per-topic disk
//! gauges (asked of the shards every [`DISK_REFRESH`] and on every DescribeTopic).
//! The values come through [`MetricsSource`], implemented by the layer that owns them
//! (the server, over its shards and listener): this module imports neither.
//! Must never: do TLS (this is an operator's port; bind it to loopback or a private network)
//! or touch the shards' files.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use futures::future::BoxFuture;

use super::catalog::{ListenerCounts, ShardCounts, TopicDiskUsage};
use super::health::Health;
use super::partitions::PartitionReplication;

/// Scrapers and probes connected at once; more wait in the kernel's backlog.
const CONNECTIONS_MAX: usize = 64;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the per-topic disk gauges are refreshed.
const DISK_REFRESH: Duration = Duration::from_secs(10);

struct State {
    /// `None` when metrics are off: `/metrics` answers 404, `/health` still works.
    handle: Option<PrometheusHandle>,
    health: Health,
    source: OnceLock<Arc<dyn MetricsSource>>,
}

/// Where the endpoint reads the values that are kept elsewhere, implemented above this
/// module. Each call is cheap (atomics, or a copy of a short list) except `disk_usage`,
/// which asks the shards.
pub trait MetricsSource: Send + Sync + 'static {
    /// The I/O engine, for the build-info series.
    fn engine_name(&self) -> &'static str;
    /// The listener's counters now.
    fn listener_counts(&self) -> ListenerCounts;
    /// Every shard's counters now.
    fn shard_counts(&self) -> Vec<ShardCounts>;
    /// Every topic's disk usage; a topic that cannot be asked now is left out.
    fn disk_usage(&self) -> BoxFuture<'_, Vec<TopicDiskUsage>>;
    /// The replicated partitions this node holds, as its shards last published them.
    fn partition_replication(&self) -> Vec<PartitionReplication>;
}

/// A running metrics endpoint. Stops when dropped.
pub struct MetricsEndpoint {
    local_addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `listen` and serves at once (`/health` says NOT_SERVING until the server is up).
    pub async fn start(
        listen: SocketAddr,
        handle: Option<PrometheusHandle>,
        health: Health,
    ) -> std::io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let state = Arc::new(State {
            handle,
            health,
            source: OnceLock::new(),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(MetricsEndpoint {
            local_addr,
            state,
            tasks: vec![task],
        })
    }

    /// The bound address (the real port when `listen` said `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Once the shards run: scrapes report their counters and the listener's connection
    /// and handshake counters, and the disk gauges refresh. Only the first call counts.
    pub fn attach(&mut self, source: Arc<dyn MetricsSource>) {
        super::catalog::build_info(source.engine_name());
        if self.state.source.set(source.clone()).is_err() {
            return; // attached already
        }
        if self.state.handle.is_some() {
            self.tasks.push(tokio::spawn(refresh_disk_usage(source)));
        }
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&state, &request)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn respond<B>(state: &State, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is valid")
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".to_owned());
    }
    match request.uri().path() {
        "/metrics" => match &state.handle {
            Some(handle) => {
                let partitions = state.source.get().map(|source| {
                    super::catalog::server_counters(&source.listener_counts());
                    for shard in source.shard_counts() {
                        super::catalog::shard_gauges(&shard);
                    }
                    source.partition_replication()
                });
                let mut body = handle.render();
                if let Some(partitions) = partitions {
                    super::partitions::render_partition_replication(&mut body, &partitions);
                }
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body,
                )
            }
            None => reply(
                StatusCode::NOT_FOUND,
                TEXT,
                "metrics are disabled ([metrics] enabled = false)\n".to_owned(),
            ),
        },
        "/health" => {
            if state.health.is_serving() {
                reply(StatusCode::OK, TEXT, "SERVING\n".to_owned())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "NOT_SERVING\n".to_owned(),
                )
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics or /health\n".to_owned(),
        ),
    }
}

/// Asks the source for every topic's segments and bytes, every [`DISK_REFRESH`].
async fn refresh_disk_usage(source: Arc<dyn MetricsSource>) {
    let mut tick = tokio::time::interval(DISK_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for usage in source.disk_usage().await {
            super::catalog::topic_disk_usage(&usage);
        }
    }
}
