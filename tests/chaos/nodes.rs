//! The cluster's processes: one `walrs serve` per node, each in its node's network
//! namespace, each with its data dir on its own powerfs mount (so that a node can lose
//! power, not only be killed), and the faults done to processes and files.
//!
//! Owns: the child processes, their configs and logs, the powerfs mounts, and the timings
//! every wait of the campaign derives from ([`Timings`], written into each node's config).
//! Must never: leave a process running or a mount mounted ([`Drop`] kills and unmounts), or
//! wait without a bound. A node is started by waiting for its "walrs serving" line.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::network::Network;

/// The gRPC port every node listens on, on its own namespace address.
pub const PORT: u16 = 7070;

/// The Raft timings of the cluster's config, and every wait derived from them.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub heartbeat_ms: u64,
}

impl Timings {
    /// How long a failover takes at worst: openraft lets a follower stand only once the
    /// leader's lease (the longest election timeout) and then an election timeout passed.
    pub fn failover(&self) -> Duration {
        Duration::from_millis(2 * self.election_max_ms)
    }

    /// How long a recovery (elections after a heal, a restart and its catch-up) may take on
    /// two busy cores before the campaign calls it stalled.
    pub fn patience(&self) -> Duration {
        self.failover() * 20
    }

    /// How long a restarted node may take to print its "serving" line.
    pub fn start(&self) -> Duration {
        self.failover() * 15
    }

    /// The budget of one append, retries included: past it the append is indeterminate.
    pub fn append_budget(&self) -> Duration {
        self.failover() * 5
    }

    /// How often the harness polls a condition it waits for.
    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms / 2)
    }
}

/// One node: its files, its process (if running) and its disk.
struct Node {
    /// Where clients dial it.
    addr: String,
    config: PathBuf,
    log: PathBuf,
    data: PathBuf,
    engine: &'static str,
    child: Option<Child>,
    paused: bool,
    mount: Option<powerfs::Mount>,
}

/// More lines for every node's config.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Top-level keys.
    pub top: String,
    /// `[storage]` keys.
    pub storage: String,
}

pub struct Cluster {
    /// Declared before `dir`: processes die and mounts go before their directory does.
    nodes: Vec<Node>,
    pub timings: Timings,
    pub dir: tempfile::TempDir,
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    network: &Network,
    extra: &Extra,
    dir: &Path,
    id: u32,
    count: u32,
    data: &Path,
    engine: &str,
    t: &Timings,
) -> PathBuf {
    let certs = dir.join("certs");
    let mut peers = String::new();
    for peer in (1..=count).filter(|p| *p != id) {
        let addr = network.peer_addr(id, peer);
        peers.push_str(&format!(
            "[[cluster.peers]]\nid = {peer}\naddr = \"{addr}\"\n"
        ));
    }
    let mut acl = String::from(
        "[[acl]]\nidentity = \"root\"\ntopics = [\"*\"]\nactions = [\"produce\", \"consume\", \"admin\"]\n",
    );
    for peer in 1..=count {
        acl.push_str(&format!(
            "[[acl]]\nidentity = \"node-{peer}\"\ntopics = [\"*\"]\nactions = [\"replicate\"]\n"
        ));
    }
    let text = format!(
        "listen = \"{listen}\"\ndata_dir = \"{data}\"\n{top}\
         [storage]\n{storage}engine = \"{engine}\"\nshards = 1\nrecord_bytes_max = 65536\nbatch_bytes_max = 131072\nsegment_bytes_max = 262144\n\
         [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n\
         {acl}\
         [metrics]\nenabled = false\n\
         [cluster]\nnode_id = {id}\nreplication_factor = 3\n\
         election_timeout_min_ms = {emin}\nelection_timeout_max_ms = {emax}\n\
         heartbeat_interval_ms = {hb}\n{seeds}{peers}",
        seeds = network.seeds_line(id, PORT, count),
        listen = network.node_addr(id),
        top = extra.top,
        storage = extra.storage,
        data = data.display(),
        cert = certs.join(format!("node-{id}.pem")).display(),
        key = certs.join(format!("node-{id}-key.pem")).display(),
        ca = certs.join("ca.pem").display(),
        emin = t.election_min_ms,
        emax = t.election_max_ms,
        hb = t.heartbeat_ms,
    );
    let path = dir.join(format!("node-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

impl Cluster {
    /// Writes certificates and configs for `engines.len()` nodes (node i+1 runs
    /// `engines[i]`; `extra` is more config lines), mounts a powerfs for each
    /// data dir, and starts none yet.
    pub fn new(
        engines: &[&'static str],
        timings: Timings,
        extra: &Extra,
        network: &Network,
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wchaos-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let count = engines.len() as u32;
        let certs = dir.path().join("certs");
        walrs::certs::generate(&certs, false).unwrap();
        let mut nodes = Vec::new();
        for id in 1..=count {
            let names = network.cert_names(id);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            walrs::certs::generate_node(&certs, id, &names, false).unwrap();
            let backing = dir.path().join(format!("backing-{id}"));
            let data = dir.path().join(format!("data-{id}"));
            std::fs::create_dir_all(&backing).unwrap();
            std::fs::create_dir_all(&data).unwrap();
            let mount = powerfs::Mount::new(&backing, &data).expect("mounting powerfs");
            let data_dir = data.join("walrs");
            nodes.push(Node {
                config: write_config(
                    network,
                    extra,
                    dir.path(),
                    id,
                    count,
                    &data_dir,
                    engines[id as usize - 1],
                    &timings,
                ),
                addr: network.node_addr(id),
                log: dir.path().join(format!("node-{id}.log")),
                data: data_dir,
                engine: engines[id as usize - 1],
                child: None,
                paused: false,
                mount: Some(mount),
            });
        }
        Cluster {
            nodes,
            timings,
            dir,
        }
    }

    pub fn count(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn addr(&self, id: u32) -> String {
        self.nodes[id as usize - 1].addr.clone()
    }

    pub fn engine(&self, id: u32) -> &'static str {
        self.nodes[id as usize - 1].engine
    }

    pub fn log(&self, id: u32) -> &Path {
        &self.nodes[id as usize - 1].log
    }

    fn node(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    pub fn is_running(&self, id: u32) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    pub fn is_paused(&self, id: u32) -> bool {
        self.nodes[id as usize - 1].paused
    }

    /// Nodes whose process runs and is not paused.
    pub fn live(&self) -> Vec<u32> {
        (1..=self.count())
            .filter(|id| self.is_running(*id) && !self.is_paused(*id))
            .collect()
    }

    /// Starts node `id` (in its namespace, if it has one) and waits for its "walrs serving" line; returns
    /// the engine it serves with (as it reports it).
    pub fn start(&mut self, network: &Network, id: u32) -> Result<String, String> {
        let start = self.timings.start();
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is already running");
        // stdout goes to the log too: a config error is printed there.
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| format!("opening {}: {e}", node.log.display()))?;
        let mut child = network
            .command(id, env!("CARGO_BIN_EXE_walrs"))
            .args(["serve", "--config"])
            .arg(&node.config)
            // WALRS_CHAOS_NODE_LOG overrides the nodes' log filter (to look into one run).
            .env(
                "RUST_LOG",
                std::env::var("WALRS_CHAOS_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=error".to_owned()),
            )
            .env("NO_COLOR", "1")
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning node {id}: {e}"))?;
        let stderr = child.stderr.take().unwrap();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // A full disk or a removed directory must not kill the harness.
                drop(writeln!(log, "{line}"));
                if line.contains("walrs serving")
                    && let Some(tx) = tx.take()
                {
                    let engine = line
                        .split("engine=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .unwrap_or("?")
                        .trim_matches('"')
                        .to_string();
                    // The receiver is gone only when start() gave up: nothing to tell.
                    drop(tx.send(engine));
                }
            }
        });
        node.child = Some(child);
        node.paused = false;
        match rx.recv_timeout(start) {
            Ok(engine) => Ok(engine),
            Err(e) => {
                let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                let status = node.child.as_mut().map(|c| c.wait());
                self.kill(id);
                let why = match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => {
                        format!("did not serve within {start:?}")
                    }
                    std::sync::mpsc::RecvTimeoutError::Disconnected => {
                        "exited before serving".into()
                    }
                };
                Err(format!(
                    "node {id} {why} ({status:?}); the end of its log, last line first: {tail:#?}"
                ))
            }
        }
    }

    /// SIGKILL, and wait until the process is gone. A paused process dies too.
    pub fn kill(&mut self, id: u32) {
        let node = self.node(id);
        if let Some(mut child) = node.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        node.paused = false;
    }

    fn signal(&mut self, id: u32, signal: i32) {
        let node = self.node(id);
        let child = node.child.as_ref().expect("a running node");
        // SAFETY: kill(2) on the pid of a child this process has not yet waited for.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(
            rc,
            0,
            "kill({}, {signal}): {}",
            child.id(),
            std::io::Error::last_os_error()
        );
    }

    /// SIGSTOP: the process keeps its sockets and its leases but does nothing.
    pub fn pause(&mut self, id: u32) {
        self.signal(id, libc::SIGSTOP);
        self.node(id).paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u32) {
        if self.node(id).paused {
            self.signal(id, libc::SIGCONT);
            self.node(id).paused = false;
        }
    }

    /// Kills node `id` and cuts its disk's power: every byte it wrote and did not sync is
    /// gone. Returns the bytes powerfs forgot.
    pub fn power_cut(&mut self, id: u32) -> Result<u64, String> {
        self.kill(id);
        let patience = self.timings.start();
        let mount = self.node(id).mount.as_mut().expect("mounted");
        let before = mount.stats().bytes_discarded;
        let stats = mount
            .power_cut_within(patience)
            .map_err(|e| format!("power cut of node {id}: {e}"))?;
        Ok(stats.bytes_discarded - before)
    }

    /// Kills node `id` and removes its data dir (a node back with a new, empty disk).
    pub fn wipe(&mut self, id: u32) -> Result<(), String> {
        self.kill(id);
        let data = self.node(id).data.clone();
        // On powerfs a removal can end in ENOTEMPTY once in a while (entries missed by a
        // directory listing that shrinks while it is read): try again, a bounded few times.
        const WIPE_ATTEMPTS_MAX: u32 = 20;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match std::fs::remove_dir_all(&data) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if attempt < WIPE_ATTEMPTS_MAX => {
                    println!("nodes: wiping node {id}, attempt {attempt}: {e}; again");
                }
                Err(e) => return Err(format!("wiping {}: {e}", data.display())),
            }
        }
    }

    /// Makes node `id`'s disk full, running or not: its files may grow by `margin_bytes` in
    /// all from now on (powerfs's capacity; `statfs` reports what is left). Says what it did.
    pub fn fill_disk(&mut self, id: u32, margin_bytes: u64) -> String {
        let mount = self.node(id).mount.as_ref().expect("mounted");
        let used = mount.used_bytes();
        mount.set_capacity(Some(used + margin_bytes));
        format!("{used} bytes used, {margin_bytes} left")
    }

    /// Gives every node its whole disk back.
    pub fn free_disks(&mut self) {
        for node in &self.nodes {
            if let Some(mount) = &node.mount {
                mount.set_capacity(None);
            }
        }
    }

    /// Node `id`'s data dir (its files may be damaged while it is down).
    pub fn data_dir(&self, id: u32) -> &Path {
        &self.nodes[id as usize - 1].data
    }

    /// powerfs's counters for node `id`'s disk.
    pub fn disk_stats(&self, id: u32) -> powerfs::Stats {
        self.nodes[id as usize - 1]
            .mount
            .as_ref()
            .expect("mounted")
            .stats()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=self.count() {
            self.kill(id);
        }
        for node in &mut self.nodes {
            if let Some(mount) = node.mount.take()
                && let Err(e) = mount.unmount()
            {
                eprintln!("unmounting {}: {e}", node.data.display());
            }
        }
    }
}

/// Lazily unmounts the powerfs mounts under `wchaos-<pid>-*` directories of processes that
/// no longer exist (a run killed before its `Drop` ran leaves a dead FUSE mount behind).
pub fn sweep_stale_mounts() {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(point)) = (fields.next(), fields.next()) else {
            continue;
        };
        if device != "powerfs" {
            continue;
        }
        let Some(pid) = point
            .split("/wchaos-")
            .nth(1)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            println!("nodes: unmounting stale powerfs {point}");
            drop(
                std::process::Command::new("umount")
                    .args(["-l", point])
                    .status(),
            );
        }
    }
}
