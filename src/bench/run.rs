//! One bench run, in order: make the run's temporary directory; start the in-process
//! server (or reach `--addr`); create the topic; start consumers, then producers; warm up,
//! measure; wait for the producers' last acks and for consumers to reach the final end
//! offsets; read DescribeTopic; stop the server; then the baselines, one at a time, with
//! nothing else running (the disk ones half before the load and half after); then the
//! report.
//!
//! Invariant: the bench's `append.records_total` is what the producers had acknowledged;
//! `server.topic_records_written` is what DescribeTopic says the run added. They are
//! reported side by side, never reconciled.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::watch;

use super::Error;
use super::baseline::{self, Baseline, BatchShape};
use super::latency::{self, Percentiles};
use super::load::Link;
use super::load::{self, Clock, Live, Plan};
use super::options::{BenchOptions, EngineArg};
use super::plot;
use super::progress::{self, Progress};
use super::report::{
    AppendReport, Baselines, ConfigReport, ConsumeReport, E2eReport, Machine, Ratios, Report,
    ServerReport,
};
use super::target::{self, Target};

/// How long consumers may take to catch up once the producers are done.
const CATCH_UP: Duration = Duration::from_secs(60);
/// Warm-up of the raw-RPC baseline.
const RPC_WARMUP: Duration = Duration::from_millis(300);
/// Where the in-run raw-RPC baseline listens: loopback, a port the OS picks.
const LOOPBACK_ANY_PORT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A finished run: the report and the histograms behind it (for `--hgrm` and `--svg`).
pub struct Outcome {
    pub report: Report,
    pub append: Histogram<u64>,
    pub e2e: Histogram<u64>,
    /// The per-hop latency table of the server's appends, when `WALRS_HOP_TRACE=1`.
    pub hops: Option<String>,
}

/// What one load run measured.
struct Measured {
    append: AppendReport,
    consume: ConsumeReport,
    e2e: E2eReport,
    server: ServerReport,
    append_h: Histogram<u64>,
    e2e_h: Histogram<u64>,
}

/// How long the load runs.
#[derive(Debug, Clone, Copy)]
enum Span {
    Seconds(Duration),
    Records(u64),
}

/// `walrs bench --serve-rpc-baseline ADDR`: the raw-RPC baseline's service as its own
/// process, plaintext, until `stop` resolves.
pub async fn serve_rpc_baseline(
    addr: std::net::SocketAddr,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let server = baseline::serve_drop_log(addr, None).await?;
    println!("raw-RPC baseline listening on {}", server.addr);
    stop.await;
    Ok(())
}

/// Runs the bench that `options` describe.
pub async fn run(options: &BenchOptions) -> Result<Outcome, Error> {
    options.validate()?;
    let load_before = super::report::load_1m();
    let base = options.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|source| Error::Write {
        path: base.clone(),
        source,
    })?;
    let run_dir = tempfile::Builder::new()
        .prefix("walrs-bench-")
        .tempdir_in(&base)
        .map_err(|source| Error::Write {
            path: base.clone(),
            source,
        })?;

    let span = match options.records {
        Some(records) => Span::Records(records),
        None => Span::Seconds(Duration::from_secs_f64(options.duration_s)),
    };
    let disk_before = disk_baselines(options, run_dir.path()).await?;
    let target = target::open(options, run_dir.path(), options.engine).await?;
    let tls = target.tls.is_some();
    let target_addr = target.addr.clone();
    let main = drive(
        options,
        &target,
        options.consumers,
        options.warmup(),
        span,
        "load",
    )
    .await;
    // The hop trace of the in-process server's appends (`WALRS_HOP_TRACE=1`), before the
    // baselines run.
    let hops = crate::observability::hops::report();
    let stopped = target.shutdown().await;
    let main = main?;
    stopped?;

    let baselines = baselines(options, run_dir.path(), disk_before).await?;
    let ratios = Ratios::of(&main.append, &main.e2e, &baselines);
    let report = Report {
        config: ConfigReport {
            options: options.clone(),
            in_process: options.in_process(),
            tls,
            target: target_addr,
            coordinated_omission_corrected: options.rate_records_per_s.is_some(),
        },
        append: main.append,
        consume: main.consume,
        e2e: main.e2e,
        server: main.server,
        baselines,
        ratios,
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_1m_before: load_before,
            load_1m_after: super::report::load_1m(),
        },
    };
    Ok(Outcome {
        report,
        append: main.append_h,
        e2e: main.e2e_h,
        hops,
    })
}

impl Outcome {
    /// Writes `--json`, `--hgrm` and `--svg` where asked.
    pub fn write_files(&self, options: &BenchOptions) -> Result<(), Error> {
        let write = |path: &Path, bytes: &[u8]| {
            std::fs::write(path, bytes).map_err(|source| Error::Write {
                path: path.to_path_buf(),
                source,
            })
        };
        if let Some(path) = &options.json {
            let json = serde_json::to_vec_pretty(&self.report).expect("the report serializes");
            write(path, &json)?;
        }
        if let Some(path) = &options.hgrm {
            let hgrm = |h: &Histogram<u64>| {
                let mut text = Vec::new();
                latency::write_hgrm(&mut text, h).expect("writing to memory");
                text
            };
            write(path, &hgrm(&self.append))?;
            if !self.e2e.is_empty() {
                write(&path.with_extension("e2e.hgrm"), &hgrm(&self.e2e))?;
            }
        }
        if let Some(path) = &options.svg {
            let b = &self.report.baselines;
            let mut series: Vec<(&str, &Histogram<u64>)> =
                vec![("append (durable ack)", &self.append)];
            if !self.e2e.is_empty() {
                series.push(("end-to-end (append → consumer)", &self.e2e));
            }
            let named = [
                ("baseline: write + fdatasync", &b.disk_fdatasync),
                ("baseline: O_DIRECT + fdatasync", &b.disk_odirect),
                ("baseline: raw RPC (dropped)", &b.rpc),
                ("baseline: portable engine", &b.portable),
            ];
            for (name, baseline) in named {
                if let Some(h) = baseline.as_ref().and_then(|b| b.histogram.as_ref()) {
                    series.push((name, h));
                }
            }
            let c = &options;
            let title = format!(
                "walrs bench: {} producers × depth {}, {} × {} B per append{}",
                c.producers,
                c.depth,
                c.batch_records,
                c.record_bytes,
                c.rate_records_per_s
                    .map_or_else(String::new, |r| format!(", {r} records/s"))
            );
            plot::write_svg(path, &title, &series)?;
        }
        Ok(())
    }
}

async fn ensure_topic(admin: &Link, options: &BenchOptions) -> Result<HashMap<u32, u64>, Error> {
    match admin.create_topic(&options.topic, options.partitions).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => return Err(Error::rpc("CreateTopic")(status)),
    }
    let ends = end_offsets(admin, &options.topic).await?;
    if ends.len() < options.partitions as usize {
        return Err(Error::Invalid(format!(
            "topic {} has {} partitions; --partitions asks for {}",
            options.topic,
            ends.len(),
            options.partitions
        )));
    }
    Ok(ends)
}

async fn end_offsets(admin: &Link, topic: &str) -> Result<HashMap<u32, u64>, Error> {
    let description = admin
        .describe_topic(topic)
        .await
        .map_err(Error::rpc("DescribeTopic"))?;
    Ok(description
        .partitions
        .iter()
        .map(|p| (p.id, p.end_offset))
        .collect())
}

async fn join<T>(handle: tokio::task::JoinHandle<Result<T, Error>>) -> Result<T, Error> {
    handle.await.map_err(Error::Task)?
}

/// Runs one producer task per client under a live progress line and collects their
/// outcomes (all of them: a failed producer fails the run after the others finish).
async fn produce_all(
    options: &BenchOptions,
    label: &str,
    clients: Vec<Link>,
    plan: &Arc<Plan>,
    clock: Clock,
) -> Result<Vec<load::ProducerOutcome>, Error> {
    let live = Arc::new(Live::new(
        options.producers as usize,
        progress::shown(options.quiet),
    ));
    let progress = Progress::start(label.to_string(), clock, live.clone());
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(load::produce(
                client,
                plan.clone(),
                i as u32,
                clock,
                live.clone(),
            ))
        })
        .collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(join(task).await);
    }
    progress.finish();
    outcomes.into_iter().collect()
}

/// Runs producers (and `consumers`) against `target` and measures.
async fn drive(
    options: &BenchOptions,
    target: &Target,
    consumers: u32,
    warmup: Duration,
    span: Span,
    label: &str,
) -> Result<Measured, Error> {
    let admin = target.link().await?;
    let starts = ensure_topic(&admin, options).await?;
    let plan = Arc::new(plan(options, span));

    // Connections first: connecting is not part of any latency.
    let mut producer_clients = Vec::with_capacity(options.producers as usize);
    for _ in 0..options.producers {
        producer_clients.push(target.link().await?);
    }
    let mut consumer_clients = Vec::with_capacity(consumers as usize);
    for _ in 0..consumers {
        consumer_clients.push(target.link().await?);
    }

    let epoch = Instant::now();
    let measure_from = epoch + warmup;
    if crate::observability::hops::enabled() {
        // The hop trace counts what the measured window counts.
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            crate::observability::hops::reset();
        });
    }
    let clock = Clock {
        epoch,
        measure_from,
        measure_until: match span {
            Span::Seconds(d) => Some(measure_from + d),
            Span::Records(_) => None,
        },
    };
    let (targets_tx, targets_rx) = watch::channel(None);
    let consumer_tasks: Vec<_> = consumer_clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let mine: Vec<(u32, u64)> = (0..options.partitions)
                .filter(|p| *p as usize % consumers as usize == i)
                .map(|p| (p, starts[&p]))
                .collect();
            tokio::spawn(load::consume(
                client,
                options.topic.clone(),
                mine,
                clock,
                targets_rx.clone(),
            ))
        })
        .collect();

    let shards = target.server.as_ref().map(|s| s.shards().clone());
    let stats_at_start = shards.clone().map(|shards| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            (Instant::now(), shards.total_stats())
        })
    });
    let producers = produce_all(options, label, producer_clients, &plan, clock).await?;
    let stats_at_end = shards.as_ref().map(|s| (Instant::now(), s.total_stats()));

    let ends = end_offsets(&admin, &options.topic).await?;
    let _consumers_may_be_gone = targets_tx.send(Some(ends.clone()));
    let mut consumed = Vec::with_capacity(consumer_tasks.len());
    for task in consumer_tasks {
        match tokio::time::timeout(CATCH_UP, join(task)).await {
            Ok(outcome) => consumed.push(outcome?),
            Err(_) => {
                return Err(Error::Invalid(format!(
                    "consumers did not reach the end offsets within {CATCH_UP:?}"
                )));
            }
        }
    }
    let topic_records_written = ends
        .iter()
        .map(|(p, end)| end - starts.get(p).copied().unwrap_or(0))
        .sum();

    let mut append_h = latency::histogram();
    let mut e2e_h = latency::histogram();
    for p in &producers {
        append_h.add(&p.latency).expect("same bounds");
    }
    for c in &consumed {
        e2e_h.add(&c.e2e).expect("same bounds");
    }
    let since_start = |at: Option<Instant>| {
        at.map_or(0.0, |at| {
            at.saturating_duration_since(measure_from).as_secs_f64()
        })
    };
    let per_s = |n: u64, seconds: f64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let record_bytes = f64::from(options.record_bytes);

    let append_seconds = since_start(producers.iter().filter_map(|p| p.last_ack).max());
    let records: u64 = producers.iter().map(|p| p.records).sum();
    let requests: u64 = producers.iter().map(|p| p.requests).sum();
    let append = AppendReport {
        records,
        records_total: producers.iter().map(|p| p.records_total).sum(),
        requests,
        seconds: append_seconds,
        requests_per_s: per_s(requests, append_seconds),
        records_per_s: per_s(records, append_seconds),
        mb_per_s: per_s(records, append_seconds) * record_bytes / 1e6,
        latency_us: Percentiles::of(&append_h),
        retries: producers.iter().map(|p| p.retries).sum(),
    };
    let consume_seconds = since_start(consumed.iter().filter_map(|c| c.last_delivery).max());
    let consumed_records: u64 = consumed.iter().map(|c| c.records).sum();
    let consume = ConsumeReport {
        consumers,
        records: consumed_records,
        records_total: consumed.iter().map(|c| c.records_total).sum(),
        seconds: consume_seconds,
        records_per_s: per_s(consumed_records, consume_seconds),
        mb_per_s: per_s(consumed_records, consume_seconds) * record_bytes / 1e6,
    };
    let e2e = E2eReport {
        records: consumed_records,
        latency_us: Percentiles::of(&e2e_h),
    };

    let mut server = ServerReport {
        in_process: shards.is_some(),
        engine: target.engine_name().map(str::to_string),
        shards: shards.as_ref().map(|s| s.shard_count()),
        fsyncs: None,
        fsyncs_per_s: None,
        records_per_fsync: None,
        appends_per_fsync: None,
        topic_records_written,
    };
    if let (Some(start), Some((end_at, end))) = (stats_at_start, stats_at_end) {
        let (start_at, start) = start.await.map_err(Error::Task)?;
        let seconds = end_at.saturating_duration_since(start_at).as_secs_f64();
        let fsyncs = end.fsyncs - start.fsyncs;
        server.fsyncs = Some(fsyncs);
        server.fsyncs_per_s = Some(per_s(fsyncs, seconds));
        server.records_per_fsync =
            (fsyncs > 0).then(|| (end.records - start.records) as f64 / fsyncs as f64);
        server.appends_per_fsync =
            (fsyncs > 0).then(|| (end.appends - start.appends) as f64 / fsyncs as f64);
    }
    Ok(Measured {
        append,
        consume,
        e2e,
        server,
        append_h,
        e2e_h,
    })
}

fn plan(options: &BenchOptions, span: Span) -> Plan {
    let batch_records = options.batch_records as usize;
    let producers = u64::from(options.producers);
    Plan {
        topic: options.topic.clone(),
        partitions: options.partitions,
        producers: options.producers,
        record_bytes: options.record_bytes as usize,
        batch_records,
        depth: options.depth as usize,
        request_interval: options
            .rate_records_per_s
            .map(|rate| Duration::from_secs_f64(producers as f64 * batch_records as f64 / rate)),
        records_per_producer: match span {
            Span::Records(records) => Some(
                records.div_ceil(producers).div_ceil(batch_records as u64) * batch_records as u64,
            ),
            Span::Seconds(_) => None,
        },
        idempotent: !options.no_idempotence,
    }
}

/// The baselines, one after another, each for `--baseline` seconds.
/// Half of each disk baseline's time (the other half runs after the load, see [`run`]):
/// fdatasync latency on a shared virtual disk drifts within minutes, so the baseline is
/// sampled on both sides of the measurement rather than once beside it.
type DiskPair = (Option<Baseline>, Option<Baseline>);

async fn disk_baselines(options: &BenchOptions, run_dir: &Path) -> Result<DiskPair, Error> {
    if options.baseline_s <= 0.0 {
        return Ok((None, None));
    }
    let seconds = Duration::from_secs_f64(options.baseline_s / 2.0);
    let shape = BatchShape {
        records: options.batch_records as usize,
        record_bytes: options.record_bytes as usize,
    };
    let dir = run_dir.to_path_buf();
    join(tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let fdatasync = baseline::disk_fdatasync(&dir, shape, seconds)?;
        let odirect = baseline::disk_odirect(&dir, shape, seconds)?;
        Ok((Some(fdatasync), odirect))
    }))
    .await
}

async fn baselines(
    options: &BenchOptions,
    run_dir: &Path,
    disk_before: DiskPair,
) -> Result<Baselines, Error> {
    let mut baselines = Baselines {
        disk_fdatasync: None,
        disk_odirect: None,
        rpc: None,
        portable: None,
    };
    if options.compare_portable && options.in_process() {
        let span = match options.records {
            Some(records) => Span::Records(records),
            None => Span::Seconds(Duration::from_secs_f64(options.duration_s)),
        };
        let portable_options = BenchOptions {
            engine: EngineArg::Portable,
            ..options.clone()
        };
        let target = target::open(&portable_options, run_dir, EngineArg::Portable).await?;
        let measured = drive(
            &portable_options,
            &target,
            0,
            options.warmup(),
            span,
            "portable",
        )
        .await;
        let stopped = target.shutdown().await;
        let measured = measured?;
        stopped?;
        baselines.portable = Some(as_baseline(
            "the same load, in-process server with engine = portable".into(),
            &measured,
        ));
    }
    if options.baseline_s <= 0.0 {
        return Ok(baselines);
    }
    let seconds = Duration::from_secs_f64(options.baseline_s);
    let (fdatasync, odirect) = disk_baselines(options, run_dir).await?;
    baselines.disk_fdatasync = match (disk_before.0, fdatasync) {
        (Some(before), Some(after)) => Some(before.merge(after)),
        (before, after) => before.or(after),
    };
    baselines.disk_odirect = match (disk_before.1, odirect) {
        (Some(before), Some(after)) => Some(before.merge(after)),
        (before, after) => before.or(after),
    };

    // Raw RPC: the same producers, closed loop, against a service that drops appends,
    // over TLS made from the same kind of certificates as the real server's.
    let certs = if options.no_tls {
        None
    } else {
        Some(target::certs_dir(run_dir)?)
    };
    let server_tls = certs.as_deref().map(target::server_tls);
    let drop_server = baseline::serve_drop_log(LOOPBACK_ANY_PORT, server_tls.as_ref()).await?;
    let rpc_target = Target {
        addr: drop_server.addr.to_string(),
        tls: certs.map(|dir| crate::client::ClientTls::from_dir(dir, crate::certs::ROOT_CLIENT)),
        server: None,
        retry: None,
    };
    let rpc_options = BenchOptions {
        rate_records_per_s: None,
        ..options.clone()
    };
    let measured = drive_rpc(&rpc_options, &rpc_target, seconds).await?;
    baselines.rpc = Some(measured);
    drop(drop_server);
    Ok(baselines)
}

/// The raw-RPC baseline: producers only (the drop service has no topics to describe).
async fn drive_rpc(
    options: &BenchOptions,
    target: &Target,
    seconds: Duration,
) -> Result<Baseline, Error> {
    let plan = Arc::new(plan(options, Span::Seconds(seconds)));
    let mut clients = Vec::with_capacity(options.producers as usize);
    for _ in 0..options.producers {
        clients.push(target.link().await?);
    }
    let epoch = Instant::now();
    let clock = Clock {
        epoch,
        measure_from: epoch + RPC_WARMUP,
        measure_until: Some(epoch + RPC_WARMUP + seconds),
    };
    let outcomes = produce_all(options, "raw RPC", clients, &plan, clock).await?;
    let mut h = latency::histogram();
    for o in &outcomes {
        h.add(&o.latency).expect("same bounds");
    }
    let elapsed = outcomes
        .iter()
        .filter_map(|o| o.last_ack)
        .max()
        .map_or(0.0, |at| {
            at.saturating_duration_since(clock.measure_from)
                .as_secs_f64()
        });
    let records: u64 = outcomes.iter().map(|o| o.records).sum();
    let requests: u64 = outcomes.iter().map(|o| o.requests).sum();
    let per_s = |n: u64| {
        if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        }
    };
    Ok(Baseline {
        what: format!(
            "the same producers (closed loop) against an in-process Log service that drops appends, {}",
            if target.tls.is_some() {
                "mutual TLS"
            } else {
                "plaintext"
            }
        ),
        seconds: elapsed,
        ops: requests,
        ops_per_s: per_s(requests),
        records_per_s: per_s(records),
        mb_per_s: per_s(records) * f64::from(options.record_bytes) / 1e6,
        latency_us: Percentiles::of(&h),
        histogram: Some(h),
    })
}

fn as_baseline(what: String, m: &Measured) -> Baseline {
    Baseline {
        what,
        seconds: m.append.seconds,
        ops: m.append.requests,
        ops_per_s: m.append.requests_per_s,
        records_per_s: m.append.records_per_s,
        mb_per_s: m.append.mb_per_s,
        latency_us: m.append.latency_us,
        histogram: Some(m.append_h.clone()),
    }
}
