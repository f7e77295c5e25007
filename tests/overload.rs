//! Overload and hostile clients (issue 15): a flood far past what the server can sustain is
//! refused `RESOURCE_EXHAUSTED` while the server's peak RSS stays under a bound computed from
//! its config, and it serves normally right after; 1,000 connections stalled mid-handshake
//! or mid-stream starve nobody and are closed by the handshake timeout and keepalive; a
//! 100 MB message is refused from its frame header, before it is buffered; malformed
//! protobuf, invalid UTF-8 names and huge header counts are `INVALID_ARGUMENT` and change
//! nothing. All over real mutual TLS on 127.0.0.1 with OS-picked ports: a real `walrs serve`
//! process where its memory is measured, the in-process server where its connection
//! counters are read. The memory bound is docs/RELIABILITY.md's ("Overload").

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::transport::Endpoint;
use walrs::client::{Client, ClientTls, ReadOptions, record};
use walrs::config::Config;
use walrs::proto::v1::Record;

const MIB: u64 = 1 << 20;
/// What one client connection may hold in the server beyond its calls' request messages and
/// its HTTP/2 receive window and frame (which come from the config): the TLS and HTTP/2 send
/// and receive buffers. Part of the documented memory bound.
const CONNECTION_BUFFER_BYTES: u64 = MIB;

// ---- a `walrs serve` process and its memory ----

/// A `walrs serve` process on a config written to `dir/walrs.toml`; killed when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Process {
    fn spawn(dir: &Path, config: &Config) -> Process {
        let config_path = dir.join("walrs.toml");
        std::fs::write(&config_path, toml::to_string(config).unwrap()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_walrs"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn,walrs=info")
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
                if line.contains("walrs serving")
                    && let Some(rest) = line.split("address=").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let addr = rest.split_whitespace().next().unwrap().to_string();
                    let _receiver_gone = tx.send(addr);
                }
                // Warnings are worth seeing when a test fails; a flood's refusals are not
                // logged above debug, so this stays short.
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("server: {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server logs its address")
            .parse()
            .unwrap();
        Process {
            child,
            addr,
            dir: dir.to_owned(),
        }
    }

    async fn client(&self) -> Client {
        Client::connect(
            &self.addr.to_string(),
            Some(ClientTls::from_dir(self.dir.join("certs"), "root")),
        )
        .await
        .unwrap()
    }

    /// `VmRSS` and `VmHWM` (peak RSS) of the server process, in bytes.
    fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server process is alive");
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"));
            let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            kib * 1024
        };
        Memory {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _already_gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    rss: u64,
    peak: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The most memory the server may add to its peak RSS at serving, from its config
/// (docs/RELIABILITY.md, "Overload"): every call that may be open receiving one request
/// message and holding its decoded form; every connection's buffers; the appends admitted
/// into the in-flight byte budget, as records and as the shard's encoded copy; and each
/// shard's group-commit buffer.
fn memory_bound_above_serving(config: &Config) -> u64 {
    let server = &config.server;
    let calls = u64::from(server.connections_max) * u64::from(server.streams_per_connection_max);
    let request = walrs::server::request_bytes_max(config) as u64;
    calls * 2 * request
        + u64::from(server.connections_max)
            * (u64::from(server.http2_connection_window_bytes)
                + u64::from(server.http2_frame_bytes_max)
                + CONNECTION_BUFFER_BYTES)
        + 2 * server.inflight_append_bytes_max
        + u64::from(config.storage.shard_count()) * config.storage.flush_bytes_max
}

/// Records in every partition of `topic` (offsets have no gaps on a single node).
async fn end_offsets(client: &Client, topic: &str) -> Vec<u64> {
    let described = client.describe_topic(topic).await.unwrap();
    described.partitions.iter().map(|p| p.end_offset).collect()
}

// ---- 1. a flood far past the sustainable rate ----

/// The flood's server: small batches and a small in-flight budget, so that the bound from
/// the config is tight enough to mean something, and enough calls to fill it many times.
fn flood_config(dir: &Path) -> Config {
    let mut config = common::mtls_config(dir);
    config.storage.record_bytes_max = 16 * 1024;
    config.storage.batch_bytes_max = 64 * 1024;
    config.storage.flush_bytes_max = MIB;
    config.server.connections_max = 32;
    config.server.streams_per_connection_max = 8;
    config.server.inflight_append_bytes_max = MIB;
    config.metrics.enabled = false;
    config
}

/// One flood batch: 4 records of 15 KiB, just under the 64 KiB batch limit.
fn flood_batch(worker: u64, n: u64) -> Vec<Record> {
    (0..4u8)
        .map(|i| {
            let mut value = vec![i; 15 * 1024];
            value[..16].copy_from_slice(&[worker.to_le_bytes(), n.to_le_bytes()].concat());
            record(vec![], value)
        })
        .collect()
}

/// The flood's length: this many appends, or this long, whichever ends first.
const FLOOD: (u64, Duration) = (4_000, Duration::from_secs(10));

#[derive(Default)]
struct Tally {
    attempts: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
}

/// Runs `workers` loops of unary appends spread over `clients` until `attempts_max`
/// appends have been sent or `duration` has passed; returns every refusal.
async fn append_load(
    clients: &[Client],
    workers: usize,
    (attempts_max, duration): (u64, Duration),
    tally: &Arc<Tally>,
) -> Vec<tonic::Status> {
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let client = clients[worker % clients.len()].clone();
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut refusals = Vec::new();
                while Instant::now() < until {
                    let n = tally.attempts.fetch_add(1, Ordering::Relaxed);
                    if n >= attempts_max {
                        break;
                    }
                    let partition = (worker % 2) as u32;
                    let batch = flood_batch(worker as u64, n);
                    match client.append("flood", Some(partition), batch).await {
                        Ok(_) => {
                            tally.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                            refusals.push(status);
                        }
                    }
                }
                refusals
            })
        })
        .collect();
    let mut refusals = Vec::new();
    for task in tasks {
        refusals.extend(task.await.unwrap());
    }
    refusals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_far_past_the_sustainable_rate_is_refused_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = flood_config(dir.path());
    let server = Process::spawn(dir.path(), &config);
    let clients =
        futures::future::join_all((0..config.server.connections_max).map(|_| server.client()))
            .await;
    clients[0].create_topic("flood", 2).await.unwrap();

    // The sustainable rate: as many appends in flight as the byte budget holds, closed loop.
    let budget_batches = (config.server.inflight_append_bytes_max / (64 * 1024)) as usize;
    let sustained = Arc::new(Tally::default());
    let started = Instant::now();
    let refusals = append_load(
        &clients,
        budget_batches / 2,
        (200, Duration::from_secs(10)),
        &sustained,
    )
    .await;
    let sustained_s = started.elapsed().as_secs_f64();
    assert!(refusals.is_empty(), "within the budget: {refusals:?}");
    let sustainable_per_s = sustained.acked.load(Ordering::Relaxed) as f64 / sustained_s;
    let serving = server.memory();

    // The flood: every call the config allows (connections × streams), each sending its next
    // append the moment the last one is answered.
    let workers =
        (config.server.connections_max * config.server.streams_per_connection_max) as usize;
    let flood = Arc::new(Tally::default());
    let started = Instant::now();
    let refusals = append_load(&clients, workers, FLOOD, &flood).await;
    let flood_s = started.elapsed().as_secs_f64();
    let after = server.memory();

    let acked = flood.acked.load(Ordering::Relaxed);
    let attempts = acked + flood.refused.load(Ordering::Relaxed);
    let bound = serving.peak + memory_bound_above_serving(&config);
    eprintln!(
        "sustainable: {sustainable_per_s:.0} appends/s of 60 KiB; flood: {attempts} appends \
         offered in {flood_s:.1} s ({:.0}/s, {:.1}x the sustainable rate), {acked} acked, \
         {} refused; RSS at serving {} (peak {}), peak after the flood {}, bound {}",
        attempts as f64 / flood_s,
        attempts as f64 / flood_s / sustainable_per_s,
        refusals.len(),
        mib(serving.rss),
        mib(serving.peak),
        mib(after.peak),
        mib(bound),
    );

    // The excess is refused RESOURCE_EXHAUSTED, with a message naming the limit; nothing else.
    assert!(
        !refusals.is_empty(),
        "{workers} calls against a budget of {budget_batches} batches: some must be refused"
    );
    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for status in &refusals {
        *by_code.entry(format!("{:?}", status.code())).or_default() += 1;
    }
    let unexpected: Vec<_> = refusals
        .iter()
        .filter(|s| {
            s.code() != Code::ResourceExhausted
                || !(s.message().contains("server.inflight_append_bytes_max")
                    || s.message().contains("storage.queue_depth_max"))
        })
        .take(5)
        .collect();
    assert!(
        unexpected.is_empty(),
        "refusals by code: {by_code:?}; unexpected: {unexpected:?}"
    );
    assert!(
        after.peak <= bound,
        "peak RSS {} is over the bound from the config, {} (serving peak {} + {})",
        mib(after.peak),
        mib(bound),
        mib(serving.peak),
        mib(memory_bound_above_serving(&config))
    );

    // Right after the flood the server serves normally: the next append is acknowledged
    // (once the flood's last appends have been, which takes one group commit), and read.
    // (On a flood connection: every place under connections_max is still taken.)
    let client = clients[0].clone();
    let recovered = Instant::now();
    let deadline = recovered + Duration::from_secs(10);
    let ack = loop {
        match client
            .append("flood", Some(0), vec![record("", "after")])
            .await
        {
            Ok(ack) => break ack,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(s) => panic!("the append after the flood failed: {s:?}"),
        }
    };
    eprintln!(
        "first append after the flood acknowledged in {:?}",
        recovered.elapsed()
    );
    let read = client
        .read("flood", 0, ack.base_offset, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.records[0].value, Bytes::from_static(b"after"));

    // A refused append changed nothing: the log holds exactly the acknowledged records.
    let acked_records = 4 * (sustained.acked.load(Ordering::Relaxed) + acked) + 1;
    let held: u64 = end_offsets(&client, "flood").await.iter().sum();
    assert_eq!(held, acked_records, "records held vs acknowledged");
}

// ---- 2. stalled connections ----

/// Raises this process's open-file limit to what 1,000 stalled connections (both ends in
/// this process, for the in-process server) need.
fn raise_fd_limit(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if limit.rlim_cur >= needed {
        return;
    }
    assert!(
        limit.rlim_max >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_max
    );
    limit.rlim_cur = needed;
    // SAFETY: as above.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// The rustls client side of root's certificate, offering h2.
fn root_tls(certs: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.join("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(certs.join("root.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(certs.join("root-key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTP/2 frame: 24-bit length, type, flags, stream id.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 14, "within the default SETTINGS_MAX_FRAME_SIZE");
    let mut frame = len.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The bytes of a client that opens an AppendStream and sends the first 100 bytes of a
/// 64 KiB request message, then stops: the connection preface, empty SETTINGS, the request's
/// HEADERS (HPACK literals without indexing or Huffman) and one DATA frame.
fn stalled_append_stream() -> Vec<u8> {
    const DATA: u8 = 0x0;
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const END_HEADERS: u8 = 0x4;
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", "/walrs.v1.Log/AppendStream"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut message = vec![0u8];
    message.extend_from_slice(&(64 * 1024u32).to_be_bytes());
    message.extend_from_slice(&[0x0a; 100]);
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(SETTINGS, 0, 0, &[]));
    bytes.extend(h2_frame(HEADERS, END_HEADERS, 1, &block));
    bytes.extend(h2_frame(DATA, 0, 1, &message));
    bytes
}

/// Waits until `done` holds, polling the server's counters; panics with `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_stalled_connections_starve_nobody_and_are_closed() {
    const SILENT: usize = 450;
    const HALF_HELLO: usize = 450;
    const MID_STREAM: usize = 100;
    const STALLED: usize = SILENT + HALF_HELLO + MID_STREAM;
    raise_fd_limit(4 * STALLED as u64 + 512);
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::mtls_config(dir.path());
    config.server.handshake_timeout_ms = 3_000;
    config.server.keepalive_interval_ms = 1_000;
    config.server.keepalive_timeout_ms = 1_000;
    config.metrics.enabled = false;
    assert!(
        config.server.connections_max as usize > STALLED,
        "the default connections_max leaves room for a well-behaved client"
    );
    let running = walrs::server::start(config.clone()).await.unwrap();
    let addr = running.local_addr();
    let stats = running.stats();
    let certs = dir.path().join("certs");

    // Mid-stream first (their handshakes take CPU), then the handshake stalls.
    let connector = root_tls(&certs);
    let opening = stalled_append_stream();
    let mut held = Vec::new();
    for _ in 0..MID_STREAM {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(&opening).await.unwrap();
        tls.flush().await.unwrap();
        held.push(Box::new(tls) as Box<dyn std::any::Any + Send>);
    }
    // A TLS record header announcing a 512-byte ClientHello, and its first 9 bytes.
    let half_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0,
    ];
    for i in 0..SILENT + HALF_HELLO {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i >= SILENT {
            tcp.write_all(&half_hello).await.unwrap();
        }
        held.push(Box::new(tcp));
    }
    wait_until(
        "every stalled connection accepted",
        Duration::from_secs(30),
        || stats.snapshot().connections_accepted >= STALLED as u64,
    )
    .await;

    // A well-behaved client is served meanwhile: connect, create, append, read.
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        let client = Client::connect(&addr.to_string(), Some(ClientTls::from_dir(&certs, "root")))
            .await
            .unwrap();
        client.create_topic("calm", 1).await.unwrap();
        for i in 0..20 {
            let ack = client
                .append("calm", Some(0), vec![record("", format!("v{i}"))])
                .await
                .unwrap();
            assert_eq!(ack.base_offset, i);
        }
        let read = client
            .read("calm", 0, 0, ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(read.records.len(), 20);
        client
    })
    .await;
    let client = served.expect("a well-behaved client is served among 1,000 stalled ones");
    assert!(
        stats.snapshot().connections_open > STALLED as u64 / 2,
        "the stalled connections were still open while it was served: {:?}",
        stats.snapshot()
    );

    // The handshake stalls are closed by the handshake timeout, the mid-stream ones by
    // keepalive (they never answer a ping); only the well-behaved client's stays.
    let limit = Duration::from_millis(
        config.server.handshake_timeout_ms
            + config.server.keepalive_interval_ms
            + config.server.keepalive_timeout_ms,
    ) + Duration::from_secs(20);
    wait_until("stalled handshakes timed out", limit, || {
        stats.snapshot().tls_handshake_failures >= (SILENT + HALF_HELLO) as u64
    })
    .await;
    wait_until("only the well-behaved connection left", limit, || {
        stats.snapshot().connections_open == 1
    })
    .await;
    client
        .append("calm", Some(0), vec![record("", "still served")])
        .await
        .unwrap();
    assert_eq!(end_offsets(&client, "calm").await, [21]);
    drop(held);
    running.shutdown().await.unwrap();
}

// ---- 3. a 100 MB message ----

/// A codec that sends message bytes as they are, to hand the server what no well-behaved
/// client would send.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawCoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
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
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len)))
    }
}

/// A raw gRPC client of `walrs.v1.Log` as root, on a connection of its own.
async fn raw_client(
    addr: SocketAddr,
    certs: &Path,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let tls = ClientTls::from_dir(certs, "root").load().unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn raw_unary(
    addr: SocketAddr,
    certs: &Path,
    method: &str,
    message: Bytes,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = raw_client(addr, certs).await;
    grpc.ready().await.unwrap();
    let path = format!("/walrs.v1.Log/{method}").parse().unwrap();
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// The last item of an AppendStream of raw request messages.
async fn raw_append_stream_end(
    addr: SocketAddr,
    certs: &Path,
    messages: Vec<Bytes>,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = raw_client(addr, certs).await;
    grpc.ready().await.unwrap();
    let path = "/walrs.v1.Log/AppendStream".parse().unwrap();
    let mut responses = grpc
        .streaming(
            tonic::Request::new(futures::stream::iter(messages)),
            path,
            RawCodec,
        )
        .await?
        .into_inner();
    let mut last = None;
    while let Some(item) = responses.next().await {
        last = Some(item);
    }
    last.expect("the stream answers")
}

/// Protobuf field `field` of wire type 2 (length-delimited) holding `payload`.
fn length_delimited(field: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![(field << 3) | 2];
    let mut len = payload.len() as u64;
    while len >= 0x80 {
        bytes.push((len as u8) | 0x80);
        len >>= 7;
    }
    bytes.push(len as u8);
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_message_is_refused_before_it_is_buffered() {
    const HUNDRED_MB: usize = 100_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::mtls_config(dir.path());
    config.metrics.enabled = false;
    let server = Process::spawn(dir.path(), &config);
    let certs = dir.path().join("certs");
    let client = server.client().await;
    client.create_topic("big", 1).await.unwrap();
    client
        .append("big", Some(0), vec![record("", "before")])
        .await
        .unwrap();
    let before = server.memory();

    // An AppendRequest for "big" whose one record's value is 100 MB.
    let value = vec![7u8; HUNDRED_MB];
    let mut message = length_delimited(1, b"big");
    message.extend(length_delimited(3, &length_delimited(3, &value)));
    drop(value);
    let message = Bytes::from(message);
    assert!(message.len() > HUNDRED_MB);

    let status = raw_unary(server.addr, &certs, "Append", message.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("storage.batch_bytes_max")
            && status.message().contains(&message.len().to_string()),
        "the message names the size and the limit: {status:?}"
    );
    let good = Bytes::from(
        [
            length_delimited(1, b"big"),
            length_delimited(3, &length_delimited(3, b"ok")),
        ]
        .concat(),
    );
    let status = raw_append_stream_end(server.addr, &certs, vec![message, good])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Refused from the frame header: the server's peak RSS did not grow by anything like
    // the message (it received at most its HTTP/2 windows of it).
    let after = server.memory();
    let grown = after.peak.saturating_sub(before.peak);
    eprintln!(
        "100 MB message: server peak RSS {} before, {} after (+{})",
        mib(before.peak),
        mib(after.peak),
        mib(grown)
    );
    assert!(
        grown < HUNDRED_MB as u64 / 4,
        "the server's peak RSS grew by {}: the message was buffered",
        mib(grown)
    );
    // Nothing was appended, and the server goes on serving.
    assert_eq!(end_offsets(&client, "big").await, [1]);
    client
        .append("big", Some(0), vec![record("", "after")])
        .await
        .unwrap();
}

// ---- 4. malformed and hostile requests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_huge_header_counts_are_invalid_argument_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::mtls_config(dir.path());
    config.metrics.enabled = false;
    let headers_max = config.server.headers_per_record_max as usize;
    let running = walrs::server::start(config).await.unwrap();
    let addr = running.local_addr();
    let certs = dir.path().join("certs");
    let client = Client::connect(&addr.to_string(), Some(ClientTls::from_dir(&certs, "root")))
        .await
        .unwrap();
    client.create_topic("h", 2).await.unwrap();
    for partition in 0..2 {
        client
            .append("h", Some(partition), vec![record("", "kept")])
            .await
            .unwrap();
    }
    let topics_before = client.list_topics().await.unwrap();
    let ends_before = end_offsets(&client, "h").await;

    let with_headers = |count: usize| Record {
        value: Bytes::from_static(b"v"),
        headers: (0..count)
            .map(|i| (format!("h{i}"), Bytes::new()))
            .collect(),
        ..Record::default()
    };
    // One header over the limit, and a huge count (200,000: 1.6 MB of protobuf).
    for count in [headers_max + 1, 200_000] {
        let status = client
            .append("h", Some(0), vec![record("", "ok"), with_headers(count)])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{count}: {status:?}");
        assert!(
            status.message().contains("server.headers_per_record_max")
                && status.message().contains(&count.to_string()),
            "{count}: {status:?}"
        );
    }
    // At the limit it is a record like any other.
    client
        .append("h", Some(1), vec![with_headers(headers_max)])
        .await
        .unwrap();
    let ends_before = [ends_before[0], ends_before[1] + 1];

    let bad_utf8 = length_delimited(1, &[b'h', 0xff, 0xfe]);
    let cases: [(&str, &str, Vec<u8>, &str); 5] = [
        (
            "garbage bytes",
            "Append",
            vec![0xff; 64],
            "malformed message",
        ),
        (
            "a truncated record",
            "Append",
            [
                length_delimited(1, b"h"),
                vec![0x1a, 0x40, 0x1a, 0x01, b'v'],
            ]
            .concat(),
            "malformed message",
        ),
        (
            "an invalid UTF-8 topic",
            "Append",
            bad_utf8.clone(),
            "UTF-8",
        ),
        ("an invalid UTF-8 topic", "CreateTopic", bad_utf8, "UTF-8"),
        (
            "an invalid UTF-8 header name",
            "Append",
            [
                length_delimited(1, b"h"),
                length_delimited(3, &length_delimited(5, &length_delimited(1, &[0xc3, 0x28]))),
            ]
            .concat(),
            "UTF-8",
        ),
    ];
    for (what, method, message, needle) in cases {
        let status = raw_unary(addr, &certs, method, Bytes::from(message))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(needle), "{what}: {status:?}");
    }
    // In an AppendStream the huge header count ends the stream the same way.
    let mut huge = length_delimited(1, b"h");
    huge.extend_from_slice(&[0x10, 0x00]); // partition 0
    let entries: Vec<u8> = (0..100_000u32)
        .flat_map(|i| length_delimited(5, &length_delimited(1, format!("{i:x}").as_bytes())))
        .collect();
    huge.extend(length_delimited(3, &entries));
    let status = raw_append_stream_end(addr, &certs, vec![Bytes::from(huge)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Huge header counts at the HTTP/2 level (gRPC metadata): hyper refuses a header list
    // over its 16 KiB default before the request reaches the service, so the call fails
    // whatever the code, and nothing is appended.
    let mut request = tonic::Request::new(walrs::proto::v1::AppendRequest {
        topic: "h".into(),
        partition: Some(0),
        records: vec![record("", "metadata")],
        ..Default::default()
    });
    for i in 0..2_000 {
        let key: tonic::metadata::MetadataKey<_> = format!("x-h{i}").parse().unwrap();
        request.metadata_mut().insert(key, "v".parse().unwrap());
    }
    let refused = client.log_client().append(request).await.unwrap_err();
    eprintln!(
        "2,000 metadata headers: {:?} {:?}",
        refused.code(),
        refused.message()
    );

    // Nothing changed. (A fresh connection: the refused header list may have ended the
    // first one with a protocol error.)
    let client = Client::connect(&addr.to_string(), Some(ClientTls::from_dir(&certs, "root")))
        .await
        .unwrap();
    assert_eq!(client.list_topics().await.unwrap(), topics_before);
    assert_eq!(end_offsets(&client, "h").await, ends_before);
    running.shutdown().await.unwrap();
}
