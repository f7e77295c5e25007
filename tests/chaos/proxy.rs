//! The harness's fault-injecting TCP proxy: one listener per direction between two nodes
//! (node A dials B at the address of the proxy for A→B, which forwards to B). It serves two
//! networks:
//! - the fallback, where namespaces cannot be made (no root, no iproute2): every node
//!   listens on loopback and the proxy is the only way between nodes ([`Proxies::loopback`]);
//!   a cut resets the link's connections, and TCP has no packet loss to inject, so the
//!   campaign's loss nemesis becomes a delay here;
//! - the namespaces' relay ([`Proxies::relay`]): the proxy listens at the relay address in
//!   the bridge namespace and forwards to the nodes' namespace addresses, so that the
//!   kernel (which has no `tc netem` here) need not delay anything. A cut there is a black
//!   hole, as nftables' drop is: connections stay open, nothing crosses until the heal.
//!
//! A delay is latency, not a slower link: each chunk is stamped when it is read and written
//! once the delay has passed since, so a link keeps its throughput (up to [`IN_FLIGHT`]
//! chunks held per direction of a connection).
//!
//! Owns: the proxies' thread and runtime, each link's fault state (cut; delay) and its
//! live connections. Must never: listen anywhere but the address it was given, or outlive
//! its [`Proxies`] (drop stops the runtime and every connection with it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Chunks read but not yet written, per direction of a connection: the bound on what a
/// delayed link holds (at most `IN_FLIGHT` × [`CHUNK_BYTES`]).
const IN_FLIGHT: usize = 64;
const CHUNK_BYTES: usize = 16 * 1024;

/// What a cut does to a link's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutMode {
    /// Resets them, and every new one while the cut lasts.
    Reset,
    /// Holds them: nothing is forwarded, and new ones wait, until the heal.
    BlackHole,
}

/// One direction between two nodes.
struct Link {
    mode: CutMode,
    cut: AtomicBool,
    /// Woken by a heal, for what a black hole holds.
    healed: Notify,
    delay_ms: AtomicU64,
    /// Tasks forwarding the link's connections, aborted by a cut that resets.
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Link {
    fn new(mode: CutMode) -> Link {
        Link {
            mode,
            cut: AtomicBool::new(false),
            healed: Notify::new(),
            delay_ms: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
        }
    }

    /// Returns once the link is not cut (a black hole's wait); at once when it is open.
    async fn until_open(&self) {
        while self.cut.load(Relaxed) {
            let healed = self.healed.notified();
            // Looked at again after `healed` exists: a heal in between is not missed.
            if !self.cut.load(Relaxed) {
                return;
            }
            healed.await;
        }
    }
}

pub struct Proxies {
    /// Node id → where it listens.
    targets: BTreeMap<u32, SocketAddr>,
    /// (from, to) → the proxy's address and the link's state.
    links: BTreeMap<(u32, u32), (SocketAddr, Arc<Link>)>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads `r` into chunks stamped with the time they may be written, until it ends.
async fn read_chunks(mut r: OwnedReadHalf, link: Arc<Link>, out: mpsc::Sender<(Instant, Vec<u8>)>) {
    loop {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.truncate(n);
        let due = Instant::now() + Duration::from_millis(link.delay_ms.load(Relaxed));
        if out.send((due, buf)).await.is_err() {
            break;
        }
    }
}

/// Writes the chunks to `w` when they are due and the link is not a closed black hole.
async fn write_chunks(
    mut w: OwnedWriteHalf,
    link: Arc<Link>,
    mut chunks: mpsc::Receiver<(Instant, Vec<u8>)>,
) {
    while let Some((due, chunk)) = chunks.recv().await {
        // Only a real delay meets the timer: a due time already past would still wait for
        // the timer's next tick (a millisecond), once per chunk.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        link.until_open().await;
        if w.write_all(&chunk).await.is_err() {
            break;
        }
    }
    drop(w.shutdown().await);
}

/// Copies `r` to `w` until either ends, through the link's delay and cut.
async fn pump(r: OwnedReadHalf, w: OwnedWriteHalf, link: Arc<Link>) {
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    tokio::join!(read_chunks(r, link.clone(), tx), write_chunks(w, link, rx));
}

/// Forwards one connection until either side closes.
async fn forward(from: TcpStream, to: SocketAddr, link: Arc<Link>) {
    link.until_open().await;
    let Ok(to) = TcpStream::connect(to).await else {
        return;
    };
    // The nodes set TCP_NODELAY; a relay with Nagle's algorithm on would hold their small
    // messages back for the peer's delayed ACK (up to 40 ms a hop), a delay of its own.
    for stream in [&from, &to] {
        drop(stream.set_nodelay(true));
    }
    let (from_r, from_w) = from.into_split();
    let (to_r, to_w) = to.into_split();
    tokio::join!(pump(from_r, to_w, link.clone()), pump(to_r, from_w, link));
}

impl Proxies {
    /// The fallback: ports on loopback for `nodes` nodes and a proxy on loopback for each
    /// ordered pair, serving from now on. A cut resets.
    pub fn loopback(nodes: u32) -> Proxies {
        let targets = (1..=nodes)
            .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], free_port()))))
            .collect();
        Proxies::start("127.0.0.1".parse().unwrap(), targets, CutMode::Reset)
    }

    /// The namespaces' relay: a proxy at `ip` (an address of the calling thread's network
    /// namespace) for each ordered pair of `targets`, serving from now on. A cut is a black
    /// hole.
    pub fn relay(ip: std::net::IpAddr, targets: BTreeMap<u32, SocketAddr>) -> Proxies {
        Proxies::start(ip, targets, CutMode::BlackHole)
    }

    fn start(ip: std::net::IpAddr, targets: BTreeMap<u32, SocketAddr>, mode: CutMode) -> Proxies {
        // Built on this thread: its worker starts here, in this thread's network namespace.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()
            .unwrap();
        let mut links = BTreeMap::new();
        for &from in targets.keys() {
            for (&to, &target) in targets.iter().filter(|(to, _)| **to != from) {
                let link = Arc::new(Link::new(mode));
                let listener = runtime
                    .block_on(TcpListener::bind((ip, 0)))
                    .unwrap_or_else(|e| panic!("a proxy port at {ip}: {e}"));
                let addr = listener.local_addr().unwrap();
                let state = link.clone();
                runtime.spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        if state.mode == CutMode::Reset && state.cut.load(Relaxed) {
                            drop(stream);
                            continue;
                        }
                        let task = tokio::spawn(forward(stream, target, state.clone()));
                        let mut connections = state.connections.lock().unwrap();
                        connections.retain(|c| !c.is_finished());
                        connections.push(task.abort_handle());
                    }
                });
                links.insert((from, to), (addr, link));
            }
        }
        Proxies {
            targets,
            links,
            runtime: Some(runtime),
        }
    }

    /// Where node `id` listens (and clients dial it).
    pub fn node_addr(&self, id: u32) -> String {
        self.targets[&id].to_string()
    }

    /// Where node `from` dials node `to`.
    pub fn peer_addr(&self, from: u32, to: u32) -> String {
        self.links[&(from, to)].0.to_string()
    }

    /// Every link's proxy address and the node it forwards to.
    pub fn links(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.links
            .iter()
            .map(|((_, to), (addr, _))| (*addr, self.targets[to]))
            .collect()
    }

    /// Cuts both directions between `a` and `b`: their connections are reset, or held
    /// (a black hole).
    pub fn cut(&self, a: u32, b: u32) {
        for key in [(a, b), (b, a)] {
            let link = &self.links[&key].1;
            link.cut.store(true, Relaxed);
            if link.mode == CutMode::Reset {
                for c in link.connections.lock().unwrap().drain(..) {
                    c.abort();
                }
            }
        }
    }

    /// Delays every chunk between any two nodes by `delay_ms` (0: none).
    pub fn delay_all(&self, delay_ms: u64) {
        for (_, link) in self.links.values() {
            link.delay_ms.store(delay_ms, Relaxed);
        }
    }

    /// Removes every cut and delay.
    pub fn heal(&self) {
        for (_, link) in self.links.values() {
            link.cut.store(false, Relaxed);
            link.delay_ms.store(0, Relaxed);
            link.healed.notify_waiters();
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
