//! Observability end to end, over real mutual TLS on loopback: the counters and histograms a
//! `/metrics` scrape shows move by exactly the calls made, ACL denials are counted by
//! identity, `/health` and gRPC health flip to NOT_SERVING when shutdown starts, and the
//! `walrs` process's JSON logs parse line by line, carry the request fields and never a
//! key or payload.
//!
//! The metrics recorder is global to a process, so the in-process tests take one lock and
//! compare scrapes before and after.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use walrs::client::{Client, ClientTls, ReadOptions, record};
use walrs::config::Config;
use walrs::observability::names;

/// The in-process tests share the global recorder: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn test_config(dir: &Path) -> Config {
    let mut config = common::mtls_config(dir);
    config.metrics.enabled = true;
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config
}

async fn client(dir: &Path, addr: SocketAddr, name: &str) -> Client {
    Client::connect(
        &addr.to_string(),
        Some(ClientTls::from_dir(dir.join("certs"), name)),
    )
    .await
    .unwrap()
}

/// A plain HTTP/1.1 GET: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// A scrape: every sample by its series (`name{labels}`, exactly as rendered).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    async fn take(addr: SocketAddr) -> Scrape {
        let (status, body) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect();
        Scrape(samples)
    }

    /// The value of a series that must be in the scrape: a missing series is a failure,
    /// never a 0 that an assertion could take for "nothing happened".
    fn get(&self, series: &str) -> f64 {
        self.0
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("series {series} is missing from the scrape"))
    }

    /// The value of a series in a scrape taken *before* the events: a counter that was not
    /// created yet stands at 0.
    fn get_or_zero(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every series named `name` (any labels); at least one must be there.
    fn sum(&self, name: &str) -> f64 {
        let values: Vec<f64> = self
            .0
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| *v)
            .collect();
        assert!(!values.is_empty(), "no series {name} in the scrape");
        values.iter().sum()
    }

    /// As [`Scrape::sum`], for a scrape taken before the events (no series yet = 0).
    fn sum_or_zero(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, v)| v)
            .sum()
    }
}

#[tokio::test]
async fn a_scrape_counts_exactly_the_calls_made() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let running = walrs::server::start(test_config(dir.path())).await.unwrap();
    let metrics = running.metrics_addr().expect("metrics are on");
    let root = client(dir.path(), running.local_addr(), "root").await;
    root.create_topic("obs-counts", 2).await.unwrap();

    let before = Scrape::take(metrics).await;
    const N: usize = 25;
    const M: usize = 10;
    const RECORDS_PER_APPEND: usize = 2;
    for i in 0..N {
        let records = (0..RECORDS_PER_APPEND)
            .map(|j| record(format!("k{i}"), format!("value-{i}-{j}")))
            .collect();
        root.append("obs-counts", Some(0), records).await.unwrap();
    }
    let mut records_read = 0;
    for _ in 0..M {
        let response = root
            .read("obs-counts", 0, 0, ReadOptions::default())
            .await
            .unwrap();
        records_read += response.records.len();
    }
    assert_eq!(records_read, M * N * RECORDS_PER_APPEND);
    let after = Scrape::take(metrics).await;
    let delta = |series: &str| after.get(series) - before.get_or_zero(series);
    let delta_sum = |name: &str| after.sum(name) - before.sum_or_zero(name);

    let requests = names::REQUESTS_TOTAL;
    assert_eq!(
        delta(&format!("{requests}{{rpc=\"Append\",code=\"OK\"}}")),
        N as f64
    );
    assert_eq!(
        delta(&format!("{requests}{{rpc=\"Read\",code=\"OK\"}}")),
        M as f64
    );
    let append_count = format!("{}_count", names::APPEND_DURATION_SECONDS);
    let read_count = format!("{}_count", names::READ_DURATION_SECONDS);
    assert_eq!(
        delta(&append_count),
        N as f64,
        "one append observation per append"
    );
    assert_eq!(
        delta(&read_count),
        M as f64,
        "one read observation per read"
    );
    assert!(delta(&format!("{}_sum", names::APPEND_DURATION_SECONDS)) > 0.0);
    let topic = "{topic=\"obs-counts\"}";
    assert_eq!(
        delta(&format!("{}{topic}", names::RECORDS_IN_TOTAL)),
        (N * RECORDS_PER_APPEND) as f64
    );
    assert_eq!(
        delta(&format!("{}{topic}", names::RECORDS_OUT_TOTAL)),
        records_read as f64
    );
    let bytes_in = delta(&format!("{}{topic}", names::BYTES_IN_TOTAL));
    let bytes_out = delta(&format!("{}{topic}", names::BYTES_OUT_TOTAL));
    assert!(bytes_in > 0.0);
    assert_eq!(
        bytes_out,
        bytes_in * M as f64,
        "every read returned every byte"
    );
    // Durable appends: every record was covered by a group-commit sync, one or more per sync.
    let per_fsync_sum = delta_sum(&format!("{}_sum", names::RECORDS_PER_FSYNC));
    let syncs = delta_sum(&format!("{}_count", names::FSYNC_DURATION_SECONDS));
    assert_eq!(per_fsync_sum, (N * RECORDS_PER_APPEND) as f64);
    // Each append waits for its ack before the next is sent: one group, one sync, each.
    assert_eq!(
        syncs, N as f64,
        "one group-commit sync per sequential append"
    );
    assert!(delta_sum(names::FSYNCS_TOTAL) >= syncs);
    assert_eq!(after.sum(names::SHARD_QUEUE_DEPTH), 0.0, "idle shards");
    assert_eq!(after.get(names::SERVING), 1.0);
    assert_eq!(
        delta(&format!("{requests}{{rpc=\"CreateTopic\",code=\"OK\"}}")),
        0.0
    );

    // A client with no rights: denied, and counted by identity and by status.
    let nobody = client(dir.path(), running.local_addr(), "nobody").await;
    let denied = nobody
        .append("obs-counts", Some(0), vec![record("k", "v")])
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let after_denial = Scrape::take(metrics).await;
    let denials = format!(
        "{}{{identity=\"nobody\"}}",
        names::AUTHORIZATION_DENIALS_TOTAL
    );
    assert_eq!(
        after_denial.get(&denials) - after.get_or_zero(&denials),
        1.0
    );
    let errors = format!(
        "{}{{rpc=\"Append\",code=\"PERMISSION_DENIED\"}}",
        names::REQUEST_ERRORS_TOTAL
    );
    assert_eq!(after_denial.get(&errors) - after.get_or_zero(&errors), 1.0);
    assert_eq!(
        after_denial.get(&append_count),
        after.get(&append_count),
        "a refused append is not a latency observation"
    );

    // Describe refreshes the topic's disk gauges.
    root.describe_topic("obs-counts").await.unwrap();
    let disk = Scrape::take(metrics).await;
    assert_eq!(
        disk.get(&format!("{}{topic}", names::TOPIC_PARTITIONS)),
        2.0
    );
    assert!(disk.get(&format!("{}{topic}", names::TOPIC_SEGMENTS)) >= 2.0);
    assert!(disk.get(&format!("{}{topic}", names::TOPIC_SIZE_BYTES)) >= bytes_in);

    // A stream is counted while open and when it ends.
    let mut follow = root
        .read_stream("obs-counts", 1, 0, ReadOptions::default(), true)
        .await
        .unwrap();
    let _caught_up = follow.message().await.unwrap();
    let open = Scrape::take(metrics).await;
    assert_eq!(
        open.get(&format!("{}{{rpc=\"ReadStream\"}}", names::ACTIVE_STREAMS)),
        1.0
    );
    drop(follow);

    // A failed TLS handshake (plain bytes to the TLS port) is counted by the listener.
    let failures = names::TLS_HANDSHAKE_FAILURES_TOTAL;
    let before_handshake = Scrape::take(metrics).await.get_or_zero(failures);
    let mut plain = tokio::net::TcpStream::connect(running.local_addr())
        .await
        .unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut ignored = Vec::new();
    let _closed = plain.read_to_end(&mut ignored).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Scrape::take(metrics).await.get_or_zero(failures) == before_handshake {
        assert!(Instant::now() < deadline, "{failures} did not move");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        Scrape::take(metrics).await.get(failures),
        before_handshake + 1.0
    );
    assert!(
        Scrape::take(metrics)
            .await
            .get(names::CONNECTIONS_ACCEPTED_TOTAL)
            >= 3.0
    );

    let (status, body) = http_get(metrics, "/health").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "SERVING\n"));
    assert_eq!(http_get(metrics, "/nope").await.unwrap().0, 404);
    an_append_stream_is_counted_once_whether_it_ends_or_its_client_goes_away(&root, metrics).await;
    running.shutdown().await.unwrap();
}

/// An AppendStream runs inside its response stream: it is an active stream while open, and
/// its call is counted exactly once whether the client ends it or goes away mid-stream.
/// Part of [`a_scrape_counts_exactly_the_calls_made`]: two servers in one test process would
/// share the per-shard series.
async fn an_append_stream_is_counted_once_whether_it_ends_or_its_client_goes_away(
    root: &Client,
    metrics: SocketAddr,
) {
    use walrs::proto::v1::AppendRequest;
    root.create_topic("obs-streams", 1).await.unwrap();
    let active = format!("{}{{rpc=\"AppendStream\"}}", names::ACTIVE_STREAMS);
    let ended = |code: &str| {
        format!(
            "{}{{rpc=\"AppendStream\",code=\"{code}\"}}",
            names::REQUESTS_TOTAL
        )
    };
    let request = |i: u64| AppendRequest {
        topic: "obs-streams".into(),
        partition: Some(0),
        records: vec![record(format!("k{i}"), format!("v{i}"))],
        correlation_id: i,
        ..Default::default()
    };
    // Waits until no AppendStream is active, bounded.
    let until_closed = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Scrape::take(metrics).await.get_or_zero(&active) != 0.0 {
            assert!(Instant::now() < deadline, "{active} stayed above 0");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Scrape::take(metrics).await
    };

    // A new AppendStream: the sender of its requests and the stream of its acks.
    let open = || async {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let acks = root
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        (tx, acks)
    };

    // 1. The client sends three appends, reads their acks, then goes away mid-stream.
    let before = Scrape::take(metrics).await;
    let (tx, mut acks) = open().await;
    for i in 0..3 {
        tx.send(request(i)).await.unwrap();
        let ack = acks.message().await.unwrap().expect("an ack per append");
        assert_eq!(ack.correlation_id, i);
    }
    assert_eq!(Scrape::take(metrics).await.get(&active), 1.0);
    drop(acks);
    drop(tx);
    let after = until_closed().await;
    let counted = |scrape: &Scrape| {
        scrape.get_or_zero(&ended("OK")) + scrape.get_or_zero(&ended("CANCELLED"))
    };
    assert_eq!(
        counted(&after) - counted(&before),
        1.0,
        "the call is counted once, OK or CANCELLED"
    );

    // 2. The client ends its requests and reads every answer: the call ends OK.
    let (tx, mut acks) = open().await;
    for i in 3..6 {
        tx.send(request(i)).await.unwrap();
    }
    drop(tx);
    let mut ids = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        ids.push(ack.correlation_id);
    }
    assert_eq!(ids, [3, 4, 5]);
    let ended_ok = until_closed().await;
    assert_eq!(
        ended_ok.get(&ended("OK")) - after.get_or_zero(&ended("OK")),
        1.0
    );
    assert_eq!(
        ended_ok.get_or_zero(&ended("CANCELLED")),
        after.get_or_zero(&ended("CANCELLED"))
    );
    let end = root.describe_topic("obs-streams").await.unwrap().partitions[0].end_offset;
    assert_eq!(end, 6, "every acknowledged append is in the log");
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_starts() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let running = walrs::server::start(test_config(dir.path())).await.unwrap();
    let metrics = running.metrics_addr().unwrap();
    assert_eq!(http_get(metrics, "/health").await.unwrap().0, 200);

    let tls = ClientTls::from_dir(dir.path().join("certs"), "root")
        .load()
        .unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", running.local_addr()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "walrs.v1.Log".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let stopping = tokio::spawn(running.shutdown());
    // gRPC watchers are told at once...
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a health update within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // ...and /health answers 503 while the server drains, until its listener closes.
    let mut saw_503 = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match http_get(metrics, "/health").await {
            Ok((503, body)) => {
                assert_eq!(body, "NOT_SERVING\n");
                saw_503 = true;
                break;
            }
            Ok((status, _)) => assert_eq!(status, 200, "only SERVING before the flip"),
            Err(_) => break, // the listener closed
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(saw_503, "/health said NOT_SERVING during shutdown");
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn with_metrics_disabled_there_is_no_listener() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics.enabled = false;
    let running = walrs::server::start(config).await.unwrap();
    assert_eq!(running.metrics_addr(), None);
    running.shutdown().await.unwrap();
}

/// Runs `walrs serve --log-format json` with debug logs, makes a few calls (one denied),
/// stops it with SIGTERM and checks every line of its standard error.
#[tokio::test]
async fn json_logs_parse_and_carry_the_request_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("walrs.toml");
    let config = test_config(dir.path());
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_walrs"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "walrs=debug,info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (serving_tx, serving_rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                && value["message"] == "walrs serving walrs.v1.Log"
            {
                let _ = serving_tx.send(value);
            }
            lines.push(line);
        }
        lines
    });
    let serving = serving_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server logs its serving line");
    let addr: SocketAddr = serving["address"].as_str().unwrap().parse().unwrap();
    let metrics: SocketAddr = serving["metrics"].as_str().unwrap().parse().unwrap();
    for field in ["data_dir", "engine", "engine_reason", "durability"] {
        assert!(
            serving[field].is_string(),
            "startup line has {field}: {serving}"
        );
    }
    assert_eq!(serving["engine"], "portable");
    assert_eq!(serving["shards"], 2);
    assert_eq!(serving["tls"], true);
    assert_eq!(serving["acl_entries"], 1);

    const SECRET_KEY: &str = "SECRET-KEY-5eb1";
    const SECRET_VALUE: &str = "SECRET-VALUE-7c42";
    let root = client(dir.path(), addr, "root").await;
    root.append("logged", Some(1), vec![record(SECRET_KEY, SECRET_VALUE)])
        .await
        .unwrap();
    let read = root
        .read("logged", 1, 0, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.records[0].value, SECRET_VALUE.as_bytes());
    let nobody = client(dir.path(), addr, "nobody").await;
    let denied = nobody.read("logged", 1, 0, ReadOptions::default()).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(http_get(metrics, "/health").await.unwrap().0, 200);

    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert!(child.wait().unwrap().success());
    let lines = reader.join().unwrap();

    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            assert!(
                !line.contains(SECRET_KEY) && !line.contains(SECRET_VALUE),
                "a log line carries a record key or payload: {line}"
            );
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .collect();
    let finished = |method: &str, status: &str| {
        events
            .iter()
            .find(|e| {
                e["message"] == "request finished" && e["method"] == method && e["status"] == status
            })
            .unwrap_or_else(|| panic!("no {method} {status} request line"))
    };
    let append = finished("Append", "OK");
    assert_eq!(append["level"], "DEBUG");
    assert_eq!(append["identity"], "root");
    assert!(append["latency_us"].is_u64());
    assert_eq!(append["span"]["topic"], "logged");
    assert_eq!(append["span"]["partition"], 1);
    let read = finished("Read", "OK");
    assert_eq!(read["span"]["topic"], "logged");
    let denied = finished("Read", "PERMISSION_DENIED");
    assert_eq!(denied["identity"], "nobody");
    assert!(
        events
            .iter()
            .any(|e| e["level"] == "WARN" && e["identity"] == "nobody"),
        "the denial is a warning"
    );
    for event in &events {
        for field in ["timestamp", "level", "target"] {
            assert!(event[field].is_string(), "{field} missing: {event}");
        }
    }
}
