//! The fallback network, where namespaces cannot be made (no root, no iproute2): every
//! node listens on loopback, and every node-to-node link goes through a fault-injecting TCP
//! proxy of the harness, one listener per direction (node A dials B at the address of the
//! proxy for A→B, which forwards to B's port). Clients dial the nodes directly.
//!
//! Owns: the proxies' thread and runtime, each link's fault state (cut; delay per forwarded
//! chunk) and its live connections. A cut resets every connection of the link and resets
//! new ones at once while it lasts; a delay holds each chunk before forwarding it. TCP has
//! no packet loss to inject, so the campaign's loss nemesis becomes a delay here.
//! Must never: listen anywhere but 127.0.0.1, or outlive its [`Proxies`] (drop stops the
//! runtime and every connection with it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// One direction between two nodes.
#[derive(Default)]
struct Link {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    /// Tasks forwarding the link's connections, aborted by a cut.
    connections: Mutex<Vec<tokio::task::AbortHandle>>,
}

pub struct Proxies {
    /// Node id → the port it listens on.
    node_ports: BTreeMap<u32, u16>,
    /// (from, to) → the proxy's port and the link's state.
    links: BTreeMap<(u32, u32), (u16, Arc<Link>)>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies `r` to `w` until either ends, holding each chunk the link's delay.
async fn pump(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, link: Arc<Link>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = link.delay_ms.load(Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    drop(w.shutdown().await);
}

/// Forwards one connection until either side closes.
async fn forward(from: TcpStream, to_port: u16, link: Arc<Link>) {
    let Ok(to) = TcpStream::connect(("127.0.0.1", to_port)).await else {
        return;
    };
    let (from_r, from_w) = from.into_split();
    let (to_r, to_w) = to.into_split();
    tokio::join!(pump(from_r, to_w, link.clone()), pump(to_r, from_w, link));
}

impl Proxies {
    /// Ports for `nodes` nodes and a proxy for each ordered pair, serving from now on.
    pub fn start(nodes: u32) -> Proxies {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()
            .unwrap();
        let node_ports: BTreeMap<u32, u16> = (1..=nodes).map(|id| (id, free_port())).collect();
        let mut links = BTreeMap::new();
        for from in 1..=nodes {
            for to in (1..=nodes).filter(|to| *to != from) {
                let link = Arc::new(Link::default());
                let listener = runtime
                    .block_on(TcpListener::bind("127.0.0.1:0"))
                    .expect("a proxy port on loopback");
                let port = listener.local_addr().unwrap().port();
                let to_port = node_ports[&to];
                let state = link.clone();
                runtime.spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        if state.cut.load(Relaxed) {
                            drop(stream);
                            continue;
                        }
                        let task = tokio::spawn(forward(stream, to_port, state.clone()));
                        let mut connections = state.connections.lock().unwrap();
                        connections.retain(|c| !c.is_finished());
                        connections.push(task.abort_handle());
                    }
                });
                links.insert((from, to), (port, link));
            }
        }
        Proxies {
            node_ports,
            links,
            runtime: Some(runtime),
        }
    }

    /// Where node `id` listens (and clients dial it).
    pub fn node_addr(&self, id: u32) -> String {
        format!("127.0.0.1:{}", self.node_ports[&id])
    }

    /// Where node `from` dials node `to`.
    pub fn peer_addr(&self, from: u32, to: u32) -> String {
        format!("127.0.0.1:{}", self.links[&(from, to)].0)
    }

    /// Cuts both directions between `a` and `b`: their connections are reset.
    pub fn cut(&self, a: u32, b: u32) {
        for key in [(a, b), (b, a)] {
            let link = &self.links[&key].1;
            link.cut.store(true, Relaxed);
            for c in link.connections.lock().unwrap().drain(..) {
                c.abort();
            }
        }
    }

    /// Holds every chunk between any two nodes `delay_ms` (0: none).
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
