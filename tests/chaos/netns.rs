//! The campaign's network: one namespace per node, joined by veth pairs to a bridge that
//! lives in a namespace of its own, so that a partition is a real cut and the host's own
//! interfaces, routes and loopback are never touched.
//!
//! Owns: the namespaces named `wchaos-<pid>-<k>-br` (the bridge `br0`, 10.77.0.254/24, where
//! the harness's client threads live, and 10.77.0.253/24, where its relay listens) and `wchaos-<pid>-<k>-n<ID>` (node ID: `eth0`,
//! 10.77.0.ID/24), their veth pairs, and one nftables table `inet chaos` per node namespace
//! that holds the node's current network faults (peers cut, a share of packets dropped).
//! The harness reaches the nodes by moving its own threads into the bridge namespace
//! ([`Net::enter_bridge`]): no `ip netns exec`, and nothing in the host namespace.
//!
//! Must never: change the host namespace, touch namespaces it did not make (the stale sweep
//! only removes `wchaos-<pid>-*` of processes that are gone), or leave its namespaces behind
//! ([`Drop`] deletes them, on success and on panic alike).
//!
//! Faults only touch node-to-node traffic: the client (10.77.0.254) always reaches every
//! live node, as a Jepsen client on the control node does. Node-to-node gRPC goes through
//! the relay (10.77.0.253), which cuts and delays it; the tables here cut what goes
//! directly between node addresses and drop packets of both. Packet loss is nftables'
//! `numgen random mod 100 < N drop`, its counterpart of iptables' `-m statistic`.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The client's address on the bridge.
pub const CLIENT_IP: &str = "10.77.0.254";
/// The relay's address on the bridge: node-to-node gRPC goes through the harness's proxy
/// there ([`super::proxy::Proxies::relay`]), which delays it when a nemesis says so.
pub const RELAY_IP: &str = "10.77.0.253";
const PREFIX: &str = "wchaos-";

/// One node's network faults, as its namespace's nftables table holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Peers whose traffic to and from this node is dropped.
    pub cut: BTreeSet<u32>,
    /// Percent of the packets from and to the peers dropped at random (0 = none).
    pub loss_percent: u32,
}

pub struct Net {
    prefix: String,
    nodes: u32,
    faults: Vec<Faults>,
}

/// The address of node `id` on the bridge.
pub fn node_ip(id: u32) -> String {
    format!("10.77.0.{id}")
}

/// Runs `ip` (or any program) and fails with its output when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Moves the calling thread into namespace `name` (threads it spawns later inherit it).
pub fn enter(name: &str) -> std::io::Result<()> {
    let file = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns on a valid descriptor of a network namespace; it changes only the
    // calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `program` run inside namespace `name` (a `setns` between fork and exec).
pub fn command_in(name: &str, program: &str) -> Command {
    let path = format!("/run/netns/{name}");
    let mut command = Command::new(program);
    // SAFETY: the closure only opens a file and calls setns, both async-signal-safe
    // enough for a pre-exec hook (no allocation after the path was built).
    unsafe {
        command.pre_exec(move || {
            let file = File::open(&path)?;
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// Deletes the `wchaos-<pid>-*` namespaces of processes that no longer exist (a run that
/// was killed before its `Drop` ran), after killing what still runs in them (that run's
/// servers: nothing else is ever started there).
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            println!("netns: removing stale namespace {name}");
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for stale in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(stale) = stale.parse::<i32>() {
                        // SAFETY: kill(2) of a process in a namespace only this harness
                        // makes, left by a run that is gone.
                        unsafe { libc::kill(stale, libc::SIGKILL) };
                    }
                }
            }
            drop(run("ip", &["netns", "del", name]));
        }
    }
}

impl Net {
    /// Makes the bridge namespace and `nodes` node namespaces, wired and up.
    pub fn create(nodes: u32) -> Result<Net, String> {
        sweep_stale();
        // Two campaigns of one test process (the test harness runs tests side by side) get
        // their own names: the pid, then a counter.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let net = Net {
            prefix: format!("{PREFIX}{}-{k}", std::process::id()),
            nodes,
            faults: vec![Faults::default(); nodes as usize],
        };
        // From here on, Drop removes whatever was made.
        let br = net.bridge();
        run("ip", &["netns", "add", &br])?;
        run("ip", &["-n", &br, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        for ip in [CLIENT_IP, RELAY_IP] {
            let addr = format!("{ip}/24");
            run("ip", &["-n", &br, "addr", "add", &addr, "dev", "br0"])?;
        }
        run("ip", &["-n", &br, "link", "set", "br0", "up"])?;
        for id in 1..=nodes {
            let ns = net.node(id);
            let port = format!("vn{id}");
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &br, "link", "set", &port, "master", "br0", "up"],
            )?;
            let addr = format!("{}/24", node_ip(id));
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        for id in 1..=nodes {
            net.apply(id)?;
        }
        Ok(net)
    }

    /// The bridge namespace's name.
    pub fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Node `id`'s namespace's name.
    pub fn node(&self, id: u32) -> String {
        format!("{}-n{id}", self.prefix)
    }

    /// Moves the calling thread (and the threads it spawns from now on) to the bridge.
    pub fn enter_bridge(&self) -> std::io::Result<()> {
        enter(&self.bridge())
    }

    pub fn faults(&self, id: u32) -> &Faults {
        &self.faults[id as usize - 1]
    }

    /// Sets node `id`'s faults and installs them (one atomic nftables transaction).
    pub fn set_faults(&mut self, id: u32, faults: Faults) -> Result<(), String> {
        self.faults[id as usize - 1] = faults;
        self.apply(id)
    }

    /// Cuts the links between every node of `a` and every node of `b` (both directions).
    pub fn cut_between(&mut self, a: &[u32], b: &[u32]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.faults[x as usize - 1].cut.insert(y);
                self.faults[y as usize - 1].cut.insert(x);
            }
        }
        for id in a.iter().chain(b) {
            self.apply(*id)?;
        }
        Ok(())
    }

    /// Removes every fault of every node.
    pub fn heal(&mut self) -> Result<(), String> {
        for id in 1..=self.nodes {
            if self.faults[id as usize - 1] != Faults::default() {
                self.set_faults(id, Faults::default())?;
            }
        }
        Ok(())
    }

    /// Writes node `id`'s table from its faults.
    fn apply(&self, id: u32) -> Result<(), String> {
        let faults = &self.faults[id as usize - 1];
        // Packet loss hits the relayed links too (a cut of those is the relay's).
        let peers: Vec<String> = (1..=self.nodes)
            .filter(|p| *p != id)
            .map(node_ip)
            .chain([RELAY_IP.to_string()])
            .collect();
        let mut input = String::new();
        let mut output = String::new();
        if !faults.cut.is_empty() {
            let cut: Vec<String> = faults.cut.iter().map(|p| node_ip(*p)).collect();
            let cut = cut.join(", ");
            input.push_str(&format!("    ip saddr {{ {cut} }} drop\n"));
            output.push_str(&format!("    ip daddr {{ {cut} }} drop\n"));
        }
        if faults.loss_percent > 0 {
            let peers = peers.join(", ");
            let p = faults.loss_percent;
            input.push_str(&format!(
                "    ip saddr {{ {peers} }} numgen random mod 100 < {p} drop\n"
            ));
            output.push_str(&format!(
                "    ip daddr {{ {peers} }} numgen random mod 100 < {p} drop\n"
            ));
        }
        let ruleset = format!(
            "add table inet chaos\ndelete table inet chaos\ntable inet chaos {{\n\
             chain input {{\n    type filter hook input priority 0; policy accept;\n{input}}}\n\
             chain output {{\n    type filter hook output priority 0; policy accept;\n{output}}}\n}}\n"
        );
        nft(&self.node(id), &ruleset)
    }

    /// Sends the client's connections to a relay address straight to the node behind it
    /// (`links`: relay address → node address), with a NAT table in the bridge namespace
    /// that only rewrites locally made connections: the nodes' own, which come in from
    /// their namespaces, still go through the relay. So the client never meets a relay fault.
    pub fn steer_client(&self, links: &[(SocketAddr, SocketAddr)]) -> Result<(), String> {
        let mut rules = String::new();
        for (relay, node) in links {
            rules.push_str(&format!(
                "    ip daddr {} tcp dport {} dnat to {node}\n",
                relay.ip(),
                relay.port()
            ));
        }
        let ruleset = format!(
            "table ip relay_client {{\nchain output {{\n    type nat hook output priority -100; \
             policy accept;\n{rules}}}\n}}\n"
        );
        nft(&self.bridge(), &ruleset)
    }
}

/// Loads `ruleset` with `nft -f -` inside namespace `ns`.
fn nft(ns: &str, ruleset: &str) -> Result<(), String> {
    let mut child = command_in(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("nft in {ns}: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(ruleset.as_bytes())
            .map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("nft in {ns}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft in {ns}: {}: {}\n{ruleset}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends and its nftables table with it.
        for id in 1..=self.nodes {
            drop(run("ip", &["netns", "del", &self.node(id)]));
        }
        drop(run("ip", &["netns", "del", &self.bridge()]));
    }
}
