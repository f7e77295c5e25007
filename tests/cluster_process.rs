//! Three `walrs serve` processes on loopback, and the leader killed with SIGKILL under load,
//! restarted and killed again, cycle after cycle. Every acknowledged record must survive,
//! no offset may ever be read with two different values, and no value may appear twice.
//!
//! The load is one idempotent producer appending single records, following the leader hints
//! and retrying each record with its sequence until it is acknowledged (so a record whose
//! ack a kill swallowed is retried on the next leader, which must answer it from its
//! producer window rather than write it again). A kill
//! comes after a number of acknowledgements drawn from a seed the test prints (set
//! `WALRS_TEST_SEED` to replay it). Waits are on events (a new leader acknowledging, a node
//! caught up), polled against deadlines derived from the election timings.

mod common;
mod seeded;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use walrs::client::{Client, ClientTls, ReadOptions, record};
use walrs::proto::v1::AppendRequest;
use walrs::server::LEADER_METADATA;

use seeded::{Rng, seed};

const NODES: u32 = 3;
const CYCLES: u32 = 20;
const ELECTION_MIN_MS: u64 = 400;
const ELECTION_MAX_MS: u64 = 800;
const HEARTBEAT_MS: u64 = 100;
const GOSSIP_INTERVAL_MS: u64 = 200;
const DEAD_AFTER_MS: u64 = 2000;
const TOPIC: &str = "chaos";
const POLL: Duration = Duration::from_millis(20);

/// How long a leader change, a restart or a catch-up may take on two busy cores.
fn patience() -> Duration {
    Duration::from_millis(ELECTION_MAX_MS * 40)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Processes {
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

fn write_config(dir: &Path, id: u32, addrs: &[String]) -> PathBuf {
    let certs = dir.join("certs");
    let mut peers = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        let peer = i as u32 + 1;
        if peer != id {
            peers.push_str(&format!(
                "[[cluster.peers]]\nid = {peer}\naddr = \"{addr}\"\n"
            ));
        }
    }
    let mut acl = String::from(
        "[[acl]]\nidentity = \"root\"\ntopics = [\"*\"]\nactions = [\"produce\", \"consume\", \"admin\"]\n",
    );
    for peer in 1..=NODES {
        acl.push_str(&format!(
            "[[acl]]\nidentity = \"node-{peer}\"\ntopics = [\"*\"]\nactions = [\"replicate\"]\n"
        ));
    }
    let text = format!(
        "listen = \"{listen}\"\ndata_dir = \"{data}\"\n\
         [storage]\nshards = 1\n\
         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n\
         {acl}\
         [metrics]\nenabled = false\n\
         [cluster]\nnode_id = {id}\nreplication_factor = 3\n\
         election_timeout_min_ms = {ELECTION_MIN_MS}\nelection_timeout_max_ms = {ELECTION_MAX_MS}\n\
         heartbeat_interval_ms = {HEARTBEAT_MS}\ngossip_interval_ms = {GOSSIP_INTERVAL_MS}\n\
         failure_detector_dead_after_ms = {DEAD_AFTER_MS}\n{peers}",
        listen = addrs[id as usize - 1],
        data = dir.join(format!("node-{id}")).display(),
        cert = certs.join(format!("node-{id}.pem")).display(),
        key = certs.join(format!("node-{id}-key.pem")).display(),
        ca = certs.join("ca.pem").display(),
    );
    let path = dir.join(format!("node-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

impl Processes {
    fn start() -> Processes {
        let dir = tempfile::tempdir().unwrap();
        common::mtls_config(dir.path());
        let addrs: Vec<String> = (0..NODES)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        for id in 1..=NODES {
            walrs::certs::generate_node(&dir.path().join("certs"), id, &[], false).unwrap();
            write_config(dir.path(), id, &addrs);
        }
        let mut processes = Processes {
            dir,
            addrs,
            children: (0..NODES).map(|_| None).collect(),
        };
        for id in 1..=NODES {
            processes.spawn(id);
        }
        processes
    }

    fn spawn(&mut self, id: u32) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walrs"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join(format!("node-{id}.toml")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[id as usize - 1] = Some(child);
    }

    /// SIGKILL: no drain, no sync, no goodbye.
    fn kill(&mut self, id: u32) {
        let mut child = self.children[id as usize - 1].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn addr(&self, id: u32) -> &str {
        &self.addrs[id as usize - 1]
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }
}

async fn connect(addr: &str, certs: &Path) -> Option<Client> {
    Client::connect(addr, Some(ClientTls::from_dir(certs, "root")))
        .await
        .ok()
}

/// What the producer saw acknowledged: offset → value.
type Acked = Arc<Mutex<BTreeMap<u64, String>>>;

/// Appends single records as idempotent producer `producer_id` until told to stop,
/// following leader hints and trying every node in turn while none leads. Record `n` is
/// sequence `n`, sent again (same value, same sequence) until acknowledged.
async fn produce(
    addrs: Vec<String>,
    certs: PathBuf,
    acked: Acked,
    stop: Arc<tokio::sync::Notify>,
    producer_id: u64,
) {
    let mut target = 0usize;
    let mut n = 0u64;
    let mut client: Option<Client> = None;
    loop {
        let stopping = stop.notified();
        tokio::pin!(stopping);
        if stopping.as_mut().enable() {
            return;
        }
        if client.is_none() {
            client = connect(&addrs[target], &certs).await;
            if client.is_none() {
                target = (target + 1) % addrs.len();
                tokio::time::sleep(POLL).await;
                continue;
            }
        }
        let value = format!("value-{n}");
        let request = AppendRequest {
            topic: TOPIC.into(),
            partition: Some(0),
            records: vec![record("", value.clone())],
            correlation_id: n,
            producer_id,
            sequence: n,
        };
        let mut log_client = client.as_ref().unwrap().log_client();
        let append = log_client.append(request);
        let result = tokio::select! {
            result = append => result,
            () = &mut stopping => return,
        };
        match result.map(tonic::Response::into_inner) {
            Ok(ack) => {
                let previous = acked.lock().unwrap().insert(ack.base_offset, value);
                assert!(
                    previous.is_none(),
                    "offset {} acknowledged twice",
                    ack.base_offset
                );
                n += 1;
            }
            Err(status) => {
                // Only a retry's refusals are expected: a sequence refusal is a bug.
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                    ),
                    "record {n} refused: {status:?}"
                );
                let hinted = status
                    .metadata()
                    .get(LEADER_METADATA)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.split_once('='))
                    .and_then(|(_, addr)| addrs.iter().position(|a| a == addr));
                target = hinted.unwrap_or((target + 1) % addrs.len());
                client = None;
                if hinted.is_none() || status.code() != Code::Unavailable {
                    tokio::time::sleep(POLL).await;
                }
                // The value may or may not have been written (a lost connection): it is
                // sent again with its sequence, and written at most once.
            }
        }
    }
}

/// The leader of partition 0 as a live node reports it (0 while unknown).
async fn leader_of(processes: &Processes, live: &[u32]) -> u32 {
    for &id in live {
        if let Some(client) = connect(processes.addr(id), &processes.certs()).await
            && let Ok(d) = client.describe_topic(TOPIC).await
        {
            let leader = d.partitions[0].leader;
            if leader != 0 && live.contains(&leader) {
                return leader;
            }
        }
    }
    0
}

/// Every record of partition 0 on node `id` up to its high watermark: offset → value.
async fn read_all(processes: &Processes, id: u32) -> (BTreeMap<u64, String>, u64) {
    let client = connect(processes.addr(id), &processes.certs())
        .await
        .expect("node up");
    let hw = client.describe_topic(TOPIC).await.unwrap().partitions[0].high_watermark;
    let mut records = BTreeMap::new();
    let mut offset = 0;
    while offset < hw {
        let r = client
            .read(TOPIC, 0, offset, ReadOptions::default())
            .await
            .unwrap();
        for rec in &r.records {
            records.insert(rec.offset, String::from_utf8(rec.value.to_vec()).unwrap());
        }
        offset = r.next_offset;
    }
    (records, hw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_again_and_again_loses_no_acknowledged_record() {
    let seed = seed();
    println!("seed {seed} (WALRS_TEST_SEED={seed} replays the kill points)");
    let mut rng = Rng(seed);
    let producer_id = rng.below(u64::MAX) | 1;
    let mut processes = Processes::start();
    let live: Vec<u32> = (1..=NODES).collect();

    // Create the topic once the controller answers. A creation whose answer was lost is
    // recorded all the same, so a retry may find it exists already.
    let until = Instant::now() + patience();
    loop {
        if let Some(client) = connect(processes.addr(1), &processes.certs()).await {
            match client.create_topic(TOPIC, 1).await {
                Ok(_) => break,
                Err(status) if status.code() == Code::AlreadyExists => break,
                Err(_) => {}
            }
        }
        assert!(
            Instant::now() < until,
            "seed {seed}: the topic was never created"
        );
        tokio::time::sleep(POLL).await;
    }

    let acked: Acked = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let producer = tokio::spawn(produce(
        processes.addrs.clone(),
        processes.certs(),
        acked.clone(),
        stop.clone(),
        producer_id,
    ));

    for cycle in 0..CYCLES {
        // Wait for a leader, then for some acknowledgements under it.
        let until = Instant::now() + patience();
        let leader = loop {
            let leader = leader_of(&processes, &live).await;
            if leader != 0 {
                break leader;
            }
            assert!(
                Instant::now() < until,
                "seed {seed}: cycle {cycle}: no leader"
            );
            tokio::time::sleep(POLL).await;
        };
        let wanted = acked.lock().unwrap().len() + 5 + rng.below(40) as usize;
        let until = Instant::now() + patience();
        while acked.lock().unwrap().len() < wanted {
            assert!(
                Instant::now() < until,
                "seed {seed}: cycle {cycle}: appends stalled under leader {leader}"
            );
            tokio::time::sleep(POLL).await;
        }
        processes.kill(leader);
        // The survivors must elect a new leader that acknowledges more.
        let after_kill = acked.lock().unwrap().len();
        let until = Instant::now() + patience();
        while acked.lock().unwrap().len() <= after_kill + 1 {
            assert!(
                Instant::now() < until,
                "seed {seed}: cycle {cycle}: nothing acknowledged after killing leader {leader}"
            );
            tokio::time::sleep(POLL).await;
        }
        processes.spawn(leader);
        // The restarted node must catch up to what was acknowledged before the next kill,
        // or the next kill could leave a majority without a node that has it all.
        let target_hw = acked
            .lock()
            .unwrap()
            .keys()
            .next_back()
            .map_or(0, |o| o + 1);
        let until = Instant::now() + patience();
        loop {
            if let Some(client) = connect(processes.addr(leader), &processes.certs()).await
                && let Ok(d) = client.describe_topic(TOPIC).await
                && d.partitions[0].high_watermark >= target_hw
            {
                break;
            }
            assert!(
                Instant::now() < until,
                "seed {seed}: cycle {cycle}: node {leader} did not catch up to {target_hw}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    stop.notify_one();
    producer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > CYCLES as usize * 5,
        "seed {seed}: too few acks: {}",
        acked.len()
    );
    let end = acked.keys().next_back().unwrap() + 1;
    for id in 1..=NODES {
        // Each node serves at least everything acknowledged, at the acknowledged offsets.
        let until = Instant::now() + patience();
        let (records, hw) = loop {
            let (records, hw) = read_all(&processes, id).await;
            if hw >= end {
                break (records, hw);
            }
            assert!(
                Instant::now() < until,
                "seed {seed}: node {id} stuck at {hw} < {end}"
            );
            tokio::time::sleep(POLL).await;
        };
        for (offset, value) in &acked {
            assert_eq!(
                records.get(offset),
                Some(value),
                "seed {seed}: node {id} lost or changed acknowledged offset {offset} (hw {hw})"
            );
        }
        // No value is written twice, however often it was retried.
        let mut seen = std::collections::HashMap::new();
        for (offset, value) in &records {
            if let Some(first) = seen.insert(value.clone(), *offset) {
                panic!("seed {seed}: node {id} holds {value} twice, at {first} and {offset}");
            }
        }
        // No offset is read with two values: every node agrees with node 1 where both have it.
        if id > 1 {
            let (first, _) = read_all(&processes, 1).await;
            for (offset, value) in &records {
                if let Some(other) = first.get(offset) {
                    assert_eq!(
                        other, value,
                        "seed {seed}: offset {offset} differs between nodes 1 and {id}"
                    );
                }
            }
        }
    }
    println!(
        "seed {seed}: {CYCLES} leader kills, {} acknowledged records, all present once on {NODES} nodes",
        acked.len()
    );
}

/// What gossip on node `id` says of node `of` (`None`: `id` did not answer).
async fn gossip_says(processes: &Processes, id: u32, of: u32) -> Option<String> {
    let client = connect(processes.addr(id), &processes.certs()).await?;
    let cluster = client.describe_cluster().await.ok()?;
    cluster
        .nodes
        .into_iter()
        .find(|n| n.id == of)
        .map(|n| n.state)
}

/// A node killed with SIGKILL is declared dead by the others' failure detectors, within a
/// bound derived from the config (`failure_detector_dead_after_ms`, gossip rounds), and alive
/// again once it restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_declared_dead_by_the_failure_detector() {
    let mut processes = Processes::start();
    let until = Instant::now() + patience();
    for id in 1..=NODES {
        for of in 1..=NODES {
            while gossip_says(&processes, id, of).await.as_deref() != Some("alive") {
                assert!(
                    Instant::now() < until,
                    "node {id} never saw node {of} alive"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }
    processes.kill(3);
    let killed = Instant::now();
    // The verdict comes after about DEAD_AFTER_MS of silence; allow for the detector's
    // smoothing and for busy cores, three times over plus ten rounds.
    let bound = Duration::from_millis(3 * DEAD_AFTER_MS + 10 * GOSSIP_INTERVAL_MS);
    for id in 1..=2 {
        while gossip_says(&processes, id, 3).await.as_deref() != Some("dead") {
            assert!(
                killed.elapsed() < bound,
                "node {id} still calls the killed node 3 alive after {bound:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        println!(
            "node {id} declared the killed node dead after {} ms (configured {DEAD_AFTER_MS} ms)",
            killed.elapsed().as_millis()
        );
    }
    processes.spawn(3);
    let until = Instant::now() + patience();
    for id in 1..=2 {
        while gossip_says(&processes, id, 3).await.as_deref() != Some("alive") {
            assert!(Instant::now() < until, "node {id} never saw node 3 back");
            tokio::time::sleep(POLL).await;
        }
    }
}
