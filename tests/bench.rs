//! `walrs bench`: a short run writes a JSON report with every field the issue names, and
//! the records it says it wrote are what the server's DescribeTopic says was written.

use serde_json::Value;
use walrs::bench::{self, BenchOptions};
use walrs::client::Client;
use walrs::config::Config;

/// Each of `fields` is present under `object` and not null.
fn assert_fields(json: &Value, object: &str, fields: &[&str]) {
    for field in fields {
        let value = &json[object][field];
        assert!(!value.is_null(), "{object}.{field} missing in {json:#}");
    }
}

fn assert_latency(json: &Value, pointer: &str) {
    for p in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        let value = json.pointer(&format!("{pointer}/{p}"));
        assert!(
            value.and_then(Value::as_u64).is_some_and(|v| v > 0),
            "{pointer}/{p} missing or zero in {json:#}"
        );
    }
}

fn short_run(dir: &std::path::Path) -> BenchOptions {
    BenchOptions {
        producers: 2,
        consumers: 2,
        partitions: 2,
        batch_records: 10,
        depth: 2,
        duration_s: 1.0,
        warmup_s: 0.2,
        baseline_s: 0.3,
        dir: Some(dir.to_path_buf()),
        json: Some(dir.join("bench.json")),
        hgrm: Some(dir.join("bench.hgrm")),
        svg: Some(dir.join("bench.svg")),
        quiet: true,
        ..BenchOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_run_reports_every_field_and_counts_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let options = short_run(dir.path());
    let outcome = bench::run(&options).await.unwrap();
    outcome.write_files(&options).unwrap();
    let json: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();

    for object in [
        "config",
        "append",
        "consume",
        "e2e",
        "server",
        "baselines",
        "ratios",
    ] {
        assert!(json[object].is_object(), "{object} missing in {json:#}");
    }
    assert_fields(
        &json,
        "config",
        &["producers", "consumers", "record_bytes", "depth", "tls"],
    );
    assert_eq!(json["config"]["tls"], true, "TLS is on by default");
    assert_fields(
        &json,
        "append",
        &["records", "records_per_s", "mb_per_s", "latency_us"],
    );
    assert_latency(&json, "/append/latency_us");
    assert_fields(&json, "consume", &["records", "records_per_s", "mb_per_s"]);
    assert_fields(&json, "e2e", &["records", "latency_us"]);
    assert_latency(&json, "/e2e/latency_us");
    assert_fields(
        &json,
        "server",
        &["fsyncs_per_s", "records_per_fsync", "topic_records_written"],
    );
    for baseline in ["disk_fdatasync", "disk_odirect", "rpc"] {
        let b = &json["baselines"][baseline];
        assert!(
            b["mb_per_s"].as_f64().is_some_and(|v| v > 0.0),
            "{baseline}: {b:#}"
        );
        assert_latency(&json, &format!("/baselines/{baseline}/latency_us"));
    }
    assert!(json["ratios"]["append_mb_per_s_over_disk_fdatasync"].is_f64());
    assert!(json["ratios"]["e2e_p99_over_append_p99"].is_f64());

    // The counts agree with the server: everything acked was written, and consumers saw
    // exactly that.
    let acked = json["append"]["records_total"].as_u64().unwrap();
    assert!(acked > 0 && json["append"]["records"].as_u64().unwrap() > 0);
    assert_eq!(
        acked,
        json["server"]["topic_records_written"].as_u64().unwrap()
    );
    assert_eq!(acked, json["consume"]["records_total"].as_u64().unwrap());
    assert_eq!(acked % 10, 0, "whole batches");

    let hgrm = std::fs::read_to_string(dir.path().join("bench.hgrm")).unwrap();
    assert!(hgrm.contains("Percentile") && hgrm.contains("#[Max"));
    assert!(dir.path().join("bench.e2e.hgrm").exists());
    let svg = std::fs::read_to_string(dir.path().join("bench.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("append"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_addr_writes_exactly_what_describe_topic_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let server = walrs::server::start(config).await.unwrap();
    let addr = server.local_addr().to_string();
    let options = BenchOptions {
        addr: Some(addr.clone()),
        no_tls: true,
        records: Some(3000),
        topic: "counted".into(),
        baseline_s: 0.0,
        svg: None,
        ..short_run(dir.path())
    };
    let outcome = bench::run(&options).await.unwrap();
    let report = &outcome.report;
    // 3000 records over 2 producers in batches of 10: exactly 1500 each, measured.
    assert_eq!(report.append.records, 3000);
    assert!(!report.server.in_process);

    let client = Client::connect(&addr, None).await.unwrap();
    let described = client.describe_topic("counted").await.unwrap();
    let written: u64 = described.partitions.iter().map(|p| p.end_offset).sum();
    assert_eq!(written, report.append.records_total);
    assert_eq!(written, report.server.topic_records_written);
    assert_eq!(written, report.consume.records_total);
    server.shutdown().await.unwrap();
}

/// `walrs bench --serve-rpc-baseline`: the drop service as a process of its own acks every
/// append a run sends, stores none, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpc_baseline_served_alone_acks_every_append_and_stores_none() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    /// Kills the server process if the test ends before it stops it.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _already_gone = self.0.kill();
            let _reaped = self.0.wait();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_walrs"))
            .args(["bench", "--serve-rpc-baseline", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("raw-RPC baseline listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    let options = BenchOptions {
        addr: Some(addr),
        no_tls: true,
        consumers: 0,
        records: Some(200),
        topic: "dropped".into(),
        baseline_s: 0.0,
        svg: None,
        ..short_run(dir.path())
    };
    let outcome = bench::run(&options).await;
    // SIGTERM: a clean stop, whatever the run did.
    // SAFETY: kill(2) on the child's own pid.
    unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    let report = outcome.unwrap().report;
    assert_eq!(report.append.records, 200);
    assert_eq!(report.server.topic_records_written, 0, "nothing is stored");
    assert!(status.success(), "{status}");
}
