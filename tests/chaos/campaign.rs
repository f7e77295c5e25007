//! One campaign run: make the network, start the nodes, create a replicated topic, run the
//! workload while nemesis rounds come and go, then stop, let the replicas converge, read
//! everything back from every node and check it.
//!
//! Owns the run's order and its bounds: the rounds stop once `duration` has passed since
//! the workload first made progress; every wait (a node serving, a leader, progress after a
//! heal, a replica catching up, the final convergence) polls against a deadline derived
//! from the cluster's election timings ([`Timings`]). A wait that times out after a heal is
//! a *stall*: it is counted and written down (availability), and does not fail the run by
//! itself (safety does).
//! Must never: fail without the seed, or leave a violation without its history file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use walrs::client::{ClientTls, RetryOptions, RoutingClient};

use super::checker::{self, Finals, Report};
use super::nemesis;
use super::network::Network;
use super::nodes::{Cluster, Extra, PORT, Timings};
use super::observe::{caught_up, describe, leaders, read_all, replicas};
use super::workload::{self, Consumer, Producer, Shared, TOPIC};
use crate::seeded::Rng;

#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub duration: Duration,
    pub nodes: u32,
    pub partitions: u32,
    pub producers: u32,
    pub timings: Timings,
    pub mix: nemesis::Mix,
    /// More lines of every node's config (the control run turns fsync off).
    pub extra: Extra,
    /// Where the summary line and a violation's history go.
    pub out: PathBuf,
}

/// What a run did, beside the checker's report.
#[derive(Debug, Default)]
pub struct Figures {
    pub rounds: u64,
    pub faults: BTreeMap<String, u64>,
    pub stalls: u64,
    /// Replicas whose final read failed (each a partition on a node): not checked.
    pub unreadable: u64,
    pub forgotten_bytes: u64,
    /// powerfs's counters over every node: file and directory syncs, bytes written.
    pub disk_syncs: u64,
    pub bytes_written: u64,
    pub engines: BTreeMap<u32, String>,
    pub seconds: f64,
    /// Nodes that lost a disk (wiped, damaged) and have not been seen caught up since: no
    /// other disk fault is drawn while one is, since a second copy lost before the first is
    /// restored is more than a 3-replica group promises to survive.
    pub behind: std::collections::BTreeSet<u32>,
}

/// Runs a campaign; returns its report and figures (and has written the summary, and the
/// history when it failed). Panics only when the harness itself cannot go on.
pub fn run(options: &Options) -> (Report, Figures) {
    let mut net = Network::create(options.nodes, PORT);
    super::nodes::sweep_stale_mounts();
    let mut rng = Rng(options.seed);
    let engines: Vec<&'static str> = (0..options.nodes)
        // A draw in 0..100 rather than 0..2: the generator's low bit follows the seed's.
        .map(|_| {
            if rng.below(100) < 50 {
                "uring"
            } else {
                "portable"
            }
        })
        .collect();
    let mut cluster = Cluster::new(&engines, options.timings, &options.extra, &net);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(campaign(options, &mut cluster, &mut net, &mut rng));
    drop(runtime);
    let (report, figures, history) = result;
    write_out(options, &report, &figures, &history, &cluster);
    (report, figures)
}

async fn campaign(
    options: &Options,
    cluster: &mut Cluster,
    net: &mut Network,
    rng: &mut Rng,
) -> (Report, Figures, Vec<String>) {
    let seed = options.seed;
    let t0 = Instant::now();
    let mut figures = Figures::default();
    for id in 1..=cluster.count() {
        let engine = cluster
            .start(net, id)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        println!(
            "node {id}: engine {} asked, {engine} serving",
            cluster.engine(id)
        );
        figures.engines.insert(id, engine);
    }
    let client = routing_client(cluster);
    create_topic(options, cluster, &client).await;
    let shared = workload::ledger(options.partitions);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..options.producers {
        let producer = Producer {
            id: p,
            seed: rng.below(u64::MAX) | 1,
            partitions: options.partitions,
            client: routing_client(cluster),
            shared: shared.clone(),
            stop: stop.clone(),
            t0,
        };
        tasks.push(tokio::spawn(producer.run()));
    }
    let consumers_stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for partition in 0..options.partitions {
        let consumer = Consumer {
            partition,
            addrs: (1..=cluster.count()).map(|id| cluster.addr(id)).collect(),
            certs: cluster.certs(),
            shared: shared.clone(),
            stop: consumers_stop.clone(),
            timings: options.timings,
        };
        consumers.push(tokio::spawn(consumer.run()));
    }
    if !progress(&shared, options.timings.patience()).await {
        panic!("seed {seed}: no partition acknowledged anything before the first fault");
    }
    // The rounds' time starts once the workload flows: on a loaded machine starting the
    // nodes and creating the topic can take longer than a short campaign's whole duration,
    // which then ran no round at all.
    let rounds_from = Instant::now();
    while rounds_from.elapsed() < options.duration {
        round(options, cluster, net, rng, &shared, &mut figures, t0).await;
    }
    workload::note(&shared, t0, "stopping the producers".into());
    stop.store(true, Relaxed);
    join_all(tasks, workload::drain_time(&options.timings), seed).await;
    consumers_stop.store(true, Relaxed);
    join_all(consumers, options.timings.patience(), seed).await;
    let finals = converge_and_read(options, cluster, &shared, t0, &mut figures.unreadable).await;
    figures.seconds = t0.elapsed().as_secs_f64();
    for id in 1..=cluster.count() {
        let s = cluster.disk_stats(id);
        figures.disk_syncs += s.file_syncs + s.dir_syncs;
        figures.bytes_written += s.bytes_written;
    }
    let ledger = shared.lock().unwrap();
    let report = checker::check(&ledger, &finals);
    (report, figures, ledger.history.clone())
}

pub fn routing_client(cluster: &Cluster) -> RoutingClient {
    let options = RetryOptions {
        budget: cluster.timings.append_budget(),
        attempts_max: 1000,
        ..RetryOptions::default()
    };
    let tls = ClientTls::from_dir(cluster.certs(), "root");
    RoutingClient::new(&cluster.addr(1), Some(tls), options).expect("a routing client")
}

pub async fn create_topic(options: &Options, cluster: &Cluster, client: &RoutingClient) {
    let until = Instant::now() + options.timings.patience();
    loop {
        match client.create_topic(TOPIC, options.partitions).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::AlreadyExists => break,
            Err(s) => assert!(
                Instant::now() < until,
                "seed {}: the topic was never created: {s:?}",
                options.seed
            ),
        }
        tokio::time::sleep(options.timings.poll()).await;
    }
    // Every node must know the topic before the first fault.
    for id in 1..=cluster.count() {
        let until = Instant::now() + options.timings.patience();
        while describe(cluster, id).await.is_none() {
            assert!(
                Instant::now() < until,
                "seed {}: node {id} never learnt the topic",
                options.seed
            );
            tokio::time::sleep(options.timings.poll()).await;
        }
    }
}

/// Waits until every partition has acknowledged at least one more batch than now.
async fn progress(shared: &Shared, patience: Duration) -> bool {
    let before = shared.lock().unwrap().acks_per_partition.clone();
    let until = Instant::now() + patience;
    while Instant::now() < until {
        let now = shared.lock().unwrap().acks_per_partition.clone();
        if now.iter().zip(&before).all(|(n, b)| n > b) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The end of what was acknowledged, per partition (one past the highest offset).
pub fn acked_ends(shared: &Shared, partitions: u32) -> Vec<u64> {
    let ledger = shared.lock().unwrap();
    let mut ends = vec![0; partitions as usize];
    for a in &ledger.acked {
        let end = a.base + a.values.len() as u64;
        let e = &mut ends[a.partition as usize];
        *e = (*e).max(end);
    }
    ends
}

/// One nemesis round: faults drawn, done, held and healed, then the wait for recovery.
async fn round(
    options: &Options,
    cluster: &mut Cluster,
    net: &mut Network,
    rng: &mut Rng,
    shared: &Shared,
    figures: &mut Figures,
    t0: Instant,
) {
    figures.rounds += 1;
    let faults = fault_and_heal(options, cluster, net, rng, shared, figures, t0).await;
    await_recovery(options, cluster, shared, figures, t0, &faults).await;
}

/// Draws the round's faults, does them, holds them, heals everything; returns them.
async fn fault_and_heal(
    options: &Options,
    cluster: &mut Cluster,
    net: &mut Network,
    rng: &mut Rng,
    shared: &Shared,
    figures: &mut Figures,
    t0: Instant,
) -> Vec<nemesis::Fault> {
    let seed = options.seed;
    let leaders = leaders(cluster, options.partitions).await;
    if !figures.behind.is_empty() {
        let ends = acked_ends(shared, options.partitions);
        let mut still = std::collections::BTreeSet::new();
        for &id in &figures.behind {
            if !caught_up(cluster, id, &ends, Instant::now()).await {
                still.insert(id);
            }
        }
        figures.behind = still;
    }
    let disk_faults = figures.behind.is_empty();
    let faults = nemesis::draw(rng, cluster.count(), &leaders, options.mix, disk_faults);
    for fault in &faults {
        let said = nemesis::apply(fault, cluster, net, rng, &mut figures.forgotten_bytes)
            .unwrap_or_else(|e| panic!("seed {seed}: {fault:?}: {e}"));
        let kind = match fault.kind().as_str() {
            "loss" if net.is_proxy() => "loss-as-delay".to_string(),
            _ => fault.kind(),
        };
        *figures.faults.entry(kind).or_default() += 1;
        workload::note(
            shared,
            t0,
            format!("nemesis round {} start {fault:?} {said}", figures.rounds),
        );
    }
    // How long the faults hold: one to three failovers, so that elections happen under
    // them (a paused or cut-off leader is replaced, and comes back as a zombie).
    let hold = options.timings.failover() * (1 + rng.below(3) as u32);
    tokio::time::sleep(hold).await;
    let started = nemesis::heal(cluster, net).unwrap_or_else(|e| panic!("seed {seed}: heal: {e}"));
    workload::note(
        shared,
        t0,
        format!(
            "nemesis round {} healed after {hold:?}; restarted {started:?}",
            figures.rounds
        ),
    );
    figures.engines.extend(started);
    let acked = shared.lock().unwrap().acked.len();
    println!(
        "round {} at {:.0} s: {} held {hold:?}, healed; {acked} batches acked so far",
        figures.rounds,
        t0.elapsed().as_secs_f64(),
        faults
            .iter()
            .map(nemesis::Fault::kind)
            .collect::<Vec<_>>()
            .join(" + ")
    );
    faults
}

/// Waits for a damaged or wiped node to catch up, then for every partition to acknowledge
/// again; a wait that times out is a stall (counted and noted).
async fn await_recovery(
    options: &Options,
    cluster: &Cluster,
    shared: &Shared,
    figures: &mut Figures,
    t0: Instant,
    faults: &[nemesis::Fault],
) {
    if faults.iter().any(nemesis::Fault::loses_a_disk) {
        let ends = acked_ends(shared, options.partitions);
        for fault in faults {
            let (nemesis::Fault::Wipe(id) | nemesis::Fault::Corrupt(id, _)) = fault else {
                continue;
            };
            let until = Instant::now() + options.timings.patience();
            if let nemesis::Fault::Corrupt(id, nemesis::Damage::FlipSealed) = fault {
                // A flipped bit below what the replica's groups read when they start stays
                // latent until a read meets it, maybe rounds later, beside another disk
                // fault: read the node's partitions whole now, so that it repairs itself
                // (refusing the read) while the other replicas are intact. Until a whole
                // read succeeds: the node may not serve yet (it joins first), and a read
                // that met the flip succeeds only once the repaired replica caught up.
                for partition in 0..options.partitions {
                    while read_all(cluster, *id, partition).await.is_err() && Instant::now() < until
                    {
                        tokio::time::sleep(options.timings.poll()).await;
                    }
                }
            }
            if !caught_up(cluster, *id, &ends, until).await {
                figures.behind.insert(*id);
                figures.stalls += 1;
                workload::note(
                    shared,
                    t0,
                    format!("STALL: node {id} did not catch up to {ends:?}"),
                );
            }
        }
    }
    // The control run's cluster is not expected to recover (its nodes lost what they had
    // acknowledged, and refuse to vote until a leader restores it): no wait for progress.
    if options.mix == nemesis::Mix::PowerCutsOfAll {
        return;
    }
    if !progress(shared, options.timings.patience()).await {
        figures.stalls += 1;
        let acks = shared.lock().unwrap().acks_per_partition.clone();
        workload::note(
            shared,
            t0,
            format!(
                "STALL: a partition made no progress after the heal ({acks:?} batches acked so far)"
            ),
        );
        println!(
            "seed {}: round {}: a partition stalled after healing {faults:?}",
            options.seed, figures.rounds
        );
    }
}

pub async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>, patience: Duration, seed: u64) {
    for task in tasks {
        tokio::time::timeout(patience, task)
            .await
            .unwrap_or_else(|_| {
                panic!("seed {seed}: a workload task did not stop within {patience:?}")
            })
            .unwrap_or_else(|e| panic!("seed {seed}: a workload task failed: {e}"));
    }
}

/// Waits for every node to hold everything acknowledged, then reads every partition back
/// from every node, whole.
async fn converge_and_read(
    options: &Options,
    cluster: &Cluster,
    shared: &Shared,
    t0: Instant,
    unreadable: &mut u64,
) -> Finals {
    let ends = acked_ends(shared, options.partitions);
    let until = Instant::now() + options.timings.patience();
    for id in 1..=cluster.count() {
        if !caught_up(cluster, id, &ends, until).await {
            workload::note(
                shared,
                t0,
                format!("final: node {id} did not reach {ends:?}"),
            );
            println!(
                "seed {}: node {id} never reached the acknowledged ends {ends:?}",
                options.seed
            );
        }
    }
    let mut finals = Finals::new();
    for partition in 0..options.partitions {
        let mut logs = BTreeMap::new();
        for id in replicas(cluster, partition).await {
            // A replica may meet damage below what its group read at start only now (a
            // flipped bit): that read is refused and the replica repairs itself, so a
            // replica is unreadable only if it stays so for the patience.
            let until = Instant::now() + options.timings.patience();
            let mut read = read_all(cluster, id, partition).await;
            // Bounded by `until`.
            while read.is_err() && Instant::now() < until {
                tokio::time::sleep(options.timings.poll()).await;
                // A repaired replica fetches again what it cut: read it once it holds it.
                caught_up(cluster, id, &ends, until).await;
                read = read_all(cluster, id, partition).await;
            }
            match read {
                Ok(log) => {
                    logs.insert(id, log);
                }
                Err(e) => {
                    *unreadable += 1;
                    let line = format!("final: p{partition} on node {id} unreadable: {e}");
                    println!("seed {}: {line}", options.seed);
                    workload::note(shared, t0, line);
                }
            }
        }
        finals.push(logs);
    }
    finals
}

fn write_out(
    options: &Options,
    report: &Report,
    figures: &Figures,
    history: &[String],
    cluster: &Cluster,
) {
    std::fs::create_dir_all(&options.out).unwrap();
    let engines: Vec<String> = figures
        .engines
        .iter()
        .map(|(id, e)| format!("\"{id}\":\"{e}\""))
        .collect();
    let faults: Vec<String> = figures
        .faults
        .iter()
        .map(|(k, n)| format!("\"{k}\":{n}"))
        .collect();
    let summary = format!(
        "{{\"seed\":{},\"seconds\":{:.0},\"nodes\":{},\"partitions\":{},\"engines\":{{{}}},\
         \"rounds\":{},\"stalls\":{},\"unreadable\":{},\"forgotten_bytes\":{},\"disk_syncs\":{},\"bytes_written\":{},\"faults\":{{{}}},\"report\":{},\"passed\":{}}}",
        options.seed,
        figures.seconds,
        options.nodes,
        options.partitions,
        engines.join(","),
        figures.rounds,
        figures.stalls,
        figures.unreadable,
        figures.forgotten_bytes,
        figures.disk_syncs,
        figures.bytes_written,
        faults.join(","),
        report.json(),
        report.passed()
    );
    println!("summary {summary}");
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(options.out.join("summary.jsonl"))
        .unwrap();
    writeln!(file, "{summary}").unwrap();
    // A stall does not fail a run, but it is a finding to look into: keep what explains it.
    if !report.passed() || figures.stalls > 0 {
        let path = options
            .out
            .join(format!("cluster-{}.history", options.seed));
        let mut text = format!("seed {}\n{summary}\n\nviolations:\n", options.seed);
        for d in &report.details {
            text.push_str(&format!("{d}\n"));
        }
        text.push_str("\nhistory:\n");
        for line in history {
            text.push_str(&format!("{line}\n"));
        }
        for id in 1..=cluster.count() {
            let kept = options
                .out
                .join(format!("cluster-{}-node-{id}.log", options.seed));
            drop(std::fs::copy(cluster.log(id), &kept));
        }
        std::fs::write(&path, text).unwrap();
        println!(
            "seed {}: {}; history and node logs in {}",
            options.seed,
            if report.passed() {
                "stalls"
            } else {
                "violations"
            },
            path.display()
        );
    }
}
