//! Baselines measured in the same run, so every figure can be read as a ratio to a
//! ceiling measured minutes (not days) apart, on the same disk and the same TLS set-up:
//!
//! - `disk_fdatasync`: one thread writing the run's batch (the same encoded bytes the log
//!   stores) sequentially to a file in the run's directory, `fdatasync` after every write;
//! - `disk_odirect`: the same with `O_DIRECT` (no page cache; each write padded to 4 KiB)
//!   and `fdatasync` per write: the durable path the io_uring engine takes;
//! - `rpc`: the run's producers against an in-process `walrs.v1.Log` service that drops
//!   every append and acks at once, over the same TLS: the ceiling of the gRPC layer.
//!
//! Never: run while the server under test is running (they share the disk and the cores).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::Error;
use super::latency::{self, Percentiles};
use crate::proto::v1::log_server::{Log, LogServer};
use crate::proto::v1::{
    AppendRequest, AppendResponse, CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest,
    DeleteTopicResponse, DescribeClusterRequest, DescribeClusterResponse, DescribeTopicRequest,
    DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse, ReadRequest, ReadResponse,
    TruncateRequest, TruncateResponse,
};
use crate::storage;

/// Connections the raw-RPC baseline accepts at once (one per producer).
const CONNECTIONS_MAX: usize = 4096;
/// The open flag for unbuffered writes, where the platform has one (macOS has `F_NOCACHE`
/// instead, which this baseline does not use).
#[cfg(target_os = "linux")]
const O_DIRECT: Option<i32> = Some(libc::O_DIRECT);
#[cfg(not(target_os = "linux"))]
const O_DIRECT: Option<i32> = None;

/// Alignment and padding of O_DIRECT writes.
const DIRECT_ALIGN: usize = 4096;

/// One baseline's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// What was measured, in words.
    pub what: String,
    pub seconds: f64,
    /// Writes (disk) or append requests (RPC) completed.
    pub ops: u64,
    pub ops_per_s: f64,
    pub records_per_s: f64,
    /// Payload MB/s (record values only, 10^6 bytes), comparable with `append.mb_per_s`.
    pub mb_per_s: f64,
    pub latency_us: Option<Percentiles>,
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

impl Baseline {
    /// Two measurements of the same thing (taken before and after the load) as one.
    pub fn merge(self, other: Baseline) -> Baseline {
        let seconds = self.seconds + other.seconds;
        let ops = self.ops + other.ops;
        let records = self.records_per_s * self.seconds + other.records_per_s * other.seconds;
        let mb = self.mb_per_s * self.seconds + other.mb_per_s * other.seconds;
        let histogram = match (self.histogram, other.histogram) {
            (Some(mut a), Some(b)) => {
                a.add(&b).expect("same histogram bounds");
                Some(a)
            }
            (a, b) => a.or(b),
        };
        Baseline {
            what: format!("{}; half before the load, half after", self.what),
            seconds,
            ops,
            ops_per_s: ops as f64 / seconds,
            records_per_s: records / seconds,
            mb_per_s: mb / seconds,
            latency_us: histogram.as_ref().and_then(Percentiles::of),
            histogram,
        }
    }
}

/// The shape of the batch every baseline writes.
#[derive(Debug, Clone, Copy)]
pub struct BatchShape {
    pub records: usize,
    pub record_bytes: usize,
}

impl BatchShape {
    fn payload_bytes(&self) -> u64 {
        (self.records * self.record_bytes) as u64
    }

    /// The batch as the log stores it.
    fn encoded(&self) -> Vec<u8> {
        let records: Vec<storage::Record> = (0..self.records)
            .map(|i| storage::Record {
                value: vec![i as u8; self.record_bytes].into(),
                ..storage::Record::default()
            })
            .collect();
        storage::encode_batch(0, 0, 0, &records)
    }
}

fn io_error(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

fn finish(
    what: String,
    shape: BatchShape,
    ops: u64,
    elapsed: Duration,
    h: Histogram<u64>,
) -> Baseline {
    let seconds = elapsed.as_secs_f64();
    Baseline {
        what,
        seconds,
        ops,
        ops_per_s: ops as f64 / seconds,
        records_per_s: (ops * shape.records as u64) as f64 / seconds,
        mb_per_s: (ops * shape.payload_bytes()) as f64 / seconds / 1e6,
        latency_us: Percentiles::of(&h),
        histogram: Some(h),
    }
}

/// Buffered `write` + `fdatasync` of the batch, repeated for `duration` (blocking).
pub fn disk_fdatasync(
    dir: &Path,
    shape: BatchShape,
    duration: Duration,
) -> Result<Baseline, Error> {
    let bytes = shape.encoded();
    let path = dir.join("baseline-fdatasync");
    let file = File::create(&path).map_err(io_error("creating the fdatasync baseline file"))?;
    let mut h = latency::histogram();
    let mut position = 0u64;
    let mut ops = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        file.write_all_at(&bytes, position)
            .map_err(io_error("writing the fdatasync baseline"))?;
        file.sync_data()
            .map_err(io_error("fdatasync of the baseline file"))?;
        latency::record(&mut h, t.elapsed());
        position += bytes.len() as u64;
        ops += 1;
    }
    let elapsed = started.elapsed();
    std::fs::remove_file(&path).map_err(io_error("removing the fdatasync baseline file"))?;
    Ok(finish(
        format!("write {} B + fdatasync per batch, one thread", bytes.len()),
        shape,
        ops,
        elapsed,
        h,
    ))
}

/// `O_DIRECT` write (padded to 4 KiB) + `fdatasync` of the batch, repeated for `duration`
/// (blocking). `None` when the file system (tmpfs) or the platform has no O_DIRECT.
pub fn disk_odirect(
    dir: &Path,
    shape: BatchShape,
    duration: Duration,
) -> Result<Option<Baseline>, Error> {
    let Some(o_direct) = O_DIRECT else {
        return Ok(None);
    };
    let encoded = shape.encoded();
    let padded_len = encoded.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    // An aligned buffer: over-allocate and start at the first aligned byte.
    let mut backing = vec![0u8; padded_len + DIRECT_ALIGN];
    let skip = backing.as_ptr().align_offset(DIRECT_ALIGN);
    let buffer = &mut backing[skip..skip + padded_len];
    buffer[..encoded.len()].copy_from_slice(&encoded);
    let path = dir.join("baseline-odirect");
    let file = match OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(o_direct)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(io_error("opening the O_DIRECT baseline file")(e)),
    };
    let mut h = latency::histogram();
    let mut position = 0u64;
    let mut ops = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration {
        let t = Instant::now();
        file.write_all_at(buffer, position)
            .map_err(io_error("writing the O_DIRECT baseline"))?;
        file.sync_data()
            .map_err(io_error("fdatasync of the O_DIRECT baseline file"))?;
        latency::record(&mut h, t.elapsed());
        position += padded_len as u64;
        ops += 1;
    }
    let elapsed = started.elapsed();
    std::fs::remove_file(&path).map_err(io_error("removing the O_DIRECT baseline file"))?;
    Ok(Some(finish(
        format!("O_DIRECT write {padded_len} B + fdatasync per batch, one thread"),
        shape,
        ops,
        elapsed,
        h,
    )))
}

/// A `walrs.v1.Log` that acknowledges every append without storing it: the gRPC + TLS
/// layer with nothing behind it. It also answers CreateTopic and DescribeTopic (every
/// partition empty), so that `walrs bench --addr` can drive it as its own process; it
/// refuses the rest.
#[derive(Default)]
pub struct DropLog {
    /// Topics created, by name, with their partition counts: the only state it keeps.
    topics: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// Topics a [`DropLog`] remembers; CreateTopic beyond it is refused.
const DROP_LOG_TOPICS_MAX: usize = 1024;
/// Partitions of a [`DropLog`] topic created with `partitions = 0` (the server default's
/// stand-in) and the most one may ask for.
const DROP_LOG_DEFAULT_PARTITIONS: u32 = 4;
const DROP_LOG_PARTITIONS_MAX: u32 = 4096;

impl DropLog {
    fn topics(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u32>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn ack_of(request: &AppendRequest) -> AppendResponse {
    AppendResponse {
        partition: request.partition.unwrap_or(0),
        base_offset: 0,
        count: request.records.len() as u32,
        correlation_id: request.correlation_id,
    }
}

fn dropped(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc}: the raw-RPC baseline only takes appends"))
}

#[tonic::async_trait]
impl Log for DropLog {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        Ok(Response::new(ack_of(request.get_ref())))
    }

    type AppendStreamStream = BoxStream<AppendResponse>;

    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let acks = request.into_inner().map(|r| r.map(|r| ack_of(&r)));
        Ok(Response::new(Box::pin(acks)))
    }

    async fn read(&self, _: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        Err(dropped("Read"))
    }

    type ReadStreamStream = BoxStream<ReadResponse>;

    async fn read_stream(
        &self,
        _: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStreamStream>, Status> {
        Err(dropped("ReadStream"))
    }

    async fn truncate(
        &self,
        _: Request<TruncateRequest>,
    ) -> Result<Response<TruncateResponse>, Status> {
        Err(dropped("Truncate"))
    }

    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let CreateTopicRequest {
            name, partitions, ..
        } = request.into_inner();
        let partitions = match partitions {
            0 => DROP_LOG_DEFAULT_PARTITIONS,
            n if n > DROP_LOG_PARTITIONS_MAX => {
                return Err(Status::invalid_argument(format!(
                    "the raw-RPC baseline takes at most {DROP_LOG_PARTITIONS_MAX} partitions"
                )));
            }
            n => n,
        };
        let mut topics = self.topics();
        if topics.contains_key(&name) {
            return Err(Status::already_exists(format!("topic {name} exists")));
        }
        if topics.len() >= DROP_LOG_TOPICS_MAX {
            return Err(Status::resource_exhausted(format!(
                "the raw-RPC baseline keeps at most {DROP_LOG_TOPICS_MAX} topics"
            )));
        }
        topics.insert(name.clone(), partitions);
        Ok(Response::new(CreateTopicResponse { name, partitions }))
    }

    async fn delete_topic(
        &self,
        _: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        Err(dropped("DeleteTopic"))
    }

    async fn list_topics(
        &self,
        _: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        Err(dropped("ListTopics"))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let Some(&partitions) = self.topics().get(&name) else {
            return Err(Status::not_found(format!("topic {name} does not exist")));
        };
        // Nothing is stored: every partition is empty.
        let partitions = (0..partitions)
            .map(|id| crate::proto::v1::PartitionInfo {
                id,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(DescribeTopicResponse { name, partitions }))
    }

    async fn describe_cluster(
        &self,
        _: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        Err(dropped("DescribeCluster"))
    }

    async fn reassign_partition(
        &self,
        _: Request<crate::proto::v1::ReassignPartitionRequest>,
    ) -> Result<Response<crate::proto::v1::ReassignPartitionResponse>, Status> {
        Err(dropped("ReassignPartition"))
    }

    async fn decommission_node(
        &self,
        _: Request<crate::proto::v1::DecommissionNodeRequest>,
    ) -> Result<Response<crate::proto::v1::DecommissionNodeResponse>, Status> {
        Err(dropped("DecommissionNode"))
    }
}

/// A running [`DropLog`] server on loopback; dropping it stops the server.
pub struct DropServer {
    pub addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves [`DropLog`] on `bind` (port 0: one the OS picks), with `tls` as the real server
/// would.
pub async fn serve_drop_log(
    bind: std::net::SocketAddr,
    tls: Option<&crate::config::TlsConfig>,
) -> Result<DropServer, Error> {
    let listener = TcpListener::bind(bind)
        .await
        .map_err(io_error("binding the raw-RPC baseline"))?;
    let addr = listener
        .local_addr()
        .map_err(io_error("binding the raw-RPC baseline"))?;
    let tls = match tls {
        Some(tls) => Some(crate::server::tls::server_config(tls).map_err(Error::Tls)?),
        None => None,
    };
    let service = LogServer::new(DropLog::default())
        .max_decoding_message_size(crate::client::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(crate::client::MESSAGE_BYTES_MAX);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The real server's listener: the same TLS handshake path and TCP settings.
    let limits = crate::server::ConnectionLimits {
        connections_max: CONNECTIONS_MAX,
        ..crate::server::ConnectionLimits::of(&Default::default())
    };
    let incoming = crate::server::incoming(listener, tls, limits, Default::default(), async {
        let _stop_or_drop = stopped.await;
    });
    let serve = Server::builder()
        .add_service(service)
        .serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "raw-RPC baseline server failed");
        }
    });
    Ok(DropServer { addr, _stop: stop })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_baselines_write_and_clean_up() {
        // Under target/, not /tmp: /tmp may be tmpfs, which has no O_DIRECT.
        let parent = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
        std::fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let shape = BatchShape {
            records: 2,
            record_bytes: 100,
        };
        let b = disk_fdatasync(dir.path(), shape, Duration::from_millis(50)).unwrap();
        assert!(b.ops > 0 && b.mb_per_s > 0.0, "{b:?}");
        assert_eq!(b.latency_us.unwrap().count, b.ops);
        let merged = b.clone().merge(b.clone());
        assert_eq!(merged.ops, 2 * b.ops);
        assert!((merged.mb_per_s - b.mb_per_s).abs() < 1e-6 * b.mb_per_s);
        assert_eq!(merged.latency_us.unwrap().count, 2 * b.ops);
        match disk_odirect(dir.path(), shape, Duration::from_millis(50)).unwrap() {
            Some(b) => assert!(b.ops > 0, "{b:?}"),
            None => eprintln!(
                "skipped: the O_DIRECT baseline, O_DIRECT is not available in {}",
                dir.path().display()
            ),
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn the_drop_log_remembers_its_topics_and_nothing_else() {
        let log = DropLog::default();
        let create = |name: &str, partitions| {
            Request::new(CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor: 0,
            })
        };
        let created = log.create_topic(create("t", 3)).await.unwrap().into_inner();
        assert_eq!(created.partitions, 3);
        let again = log.create_topic(create("t", 3)).await.unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists);
        let too_many = log
            .create_topic(create("u", DROP_LOG_PARTITIONS_MAX + 1))
            .await;
        assert_eq!(too_many.unwrap_err().code(), tonic::Code::InvalidArgument);
        let described = log
            .describe_topic(Request::new(DescribeTopicRequest { name: "t".into() }))
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<u32> = described.partitions.iter().map(|p| p.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert!(described.partitions.iter().all(|p| p.end_offset == 0));
        let missing = log
            .describe_topic(Request::new(DescribeTopicRequest { name: "v".into() }))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        let read = log.read(Request::new(ReadRequest::default())).await;
        assert_eq!(read.unwrap_err().code(), tonic::Code::Unimplemented);
    }
}
