//! The network the campaign's nodes talk over: network namespaces on a bridge (the real
//! thing, [`super::netns`]) or, where those cannot be made, loopback plus the harness's
//! fault-injecting TCP proxy ([`super::proxy`]). The rest of the campaign only sees this.
//!
//! In the namespaces, node-to-node gRPC goes through the same proxy, listening at the
//! bridge's relay address: this kernel has no `tc netem`, so a delay is the relay's. Cuts
//! are both nftables' (what goes directly between node addresses) and the relay's (a black
//! hole); packet loss is nftables', on both.
//!
//! Owns: which of the two is in use, the addresses nodes listen at and dial each other at,
//! how a node's process is started (inside its namespace or not), and the network faults
//! (cuts between groups of nodes, loss, delay). Must never: mix the two, or leave a fault
//! in place after [`Network::heal`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;

use super::netns::{self, Faults, Net};
use super::proxy::Proxies;

pub enum Network {
    Namespaces { net: Net, relay: Proxies },
    Proxy(Proxies),
}

impl Network {
    /// Namespaces when they can be made and `WALRS_CHAOS_NETWORK` is not `proxy`, else the
    /// proxy; says which, and why, on stdout. A namespace network also moves the calling
    /// thread (and the threads it starts from now on) into the bridge namespace.
    pub fn create(nodes: u32, port: u16) -> Network {
        netns::sweep_stale();
        let forced = std::env::var("WALRS_CHAOS_NETWORK").is_ok_and(|v| v == "proxy");
        let made = if forced {
            Err("WALRS_CHAOS_NETWORK=proxy".to_string())
        } else {
            Net::create(nodes).and_then(|net| {
                net.enter_bridge()
                    .map_err(|e| format!("entering {}: {e}", net.bridge()))?;
                Ok(net)
            })
        };
        match made {
            Ok(net) => {
                println!(
                    "network: {nodes} nodes in network namespaces {}-n1.. joined by a bridge in \
                     {}; the harness's client runs in the bridge namespace and relays \
                     node-to-node gRPC at {}; faults with nftables and the relay",
                    net.bridge().trim_end_matches("-br"),
                    net.bridge(),
                    netns::RELAY_IP,
                );
                let targets: BTreeMap<u32, SocketAddr> = (1..=nodes)
                    .map(|id| {
                        (
                            id,
                            format!("{}:{port}", netns::node_ip(id)).parse().unwrap(),
                        )
                    })
                    .collect();
                let relay = Proxies::relay(netns::RELAY_IP.parse().unwrap(), targets);
                if let Err(e) = net.steer_client(&relay.links()) {
                    panic!("the client's way past the relay: {e}");
                }
                Network::Namespaces { net, relay }
            }
            Err(why) => {
                println!(
                    "network: FALLBACK: no network namespaces ({why}); the nodes run on loopback \
                     and every node-to-node link goes through the harness's TCP proxy (cuts and \
                     delays; packet loss becomes a delay)"
                );
                Network::Proxy(Proxies::loopback(nodes))
            }
        }
    }

    pub fn is_proxy(&self) -> bool {
        matches!(self, Network::Proxy(_))
    }

    /// Where node `id` listens, and clients dial it.
    pub fn node_addr(&self, id: u32) -> String {
        match self {
            Network::Namespaces { relay: p, .. } | Network::Proxy(p) => p.node_addr(id),
        }
    }

    /// Where node `from` dials node `to`.
    pub fn peer_addr(&self, from: u32, to: u32) -> String {
        match self {
            Network::Namespaces { relay: p, .. } | Network::Proxy(p) => p.peer_addr(from, to),
        }
    }

    /// The `[cluster] seeds` line of node `id`'s config: in the namespaces, gossip (UDP)
    /// goes directly between node addresses, where nftables cuts it; the fallback keeps the
    /// default (the peers' addresses, which are the proxy's TCP ports there).
    pub fn seeds_line(&self, id: u32, port: u16, nodes: u32) -> String {
        match self {
            Network::Namespaces { .. } => {
                let seeds: Vec<String> = (1..=nodes)
                    .filter(|p| *p != id)
                    .map(|p| format!("\"{}:{port}\"", netns::node_ip(p)))
                    .collect();
                format!("seeds = [{}]\n", seeds.join(", "))
            }
            Network::Proxy(_) => String::new(),
        }
    }

    /// More names node `id`'s certificate must hold (its namespace address).
    pub fn cert_names(&self, id: u32) -> Vec<String> {
        match self {
            // Its peers dial it at the relay, and the TLS name checked is the one dialled.
            Network::Namespaces { .. } => vec![netns::node_ip(id), netns::RELAY_IP.to_string()],
            Network::Proxy(_) => Vec::new(),
        }
    }

    /// `program`, to run as node `id`.
    pub fn command(&self, id: u32, program: &str) -> Command {
        match self {
            Network::Namespaces { net, .. } => netns::command_in(&net.node(id), program),
            Network::Proxy(_) => Command::new(program),
        }
    }

    /// Cuts every link between a node of `a` and a node of `b`.
    pub fn cut_between(&mut self, a: &[u32], b: &[u32]) -> Result<(), String> {
        let p = match self {
            Network::Namespaces { net, relay } => {
                net.cut_between(a, b)?;
                relay
            }
            Network::Proxy(p) => p,
        };
        for &x in a {
            for &y in b {
                p.cut(x, y);
            }
        }
        Ok(())
    }

    /// Drops `percent` of the packets between nodes; through the proxy, holds every chunk
    /// `10 × percent` ms instead. Returns what it did.
    pub fn lose(&mut self, nodes: u32, percent: u32) -> Result<String, String> {
        match self {
            Network::Namespaces { net, .. } => {
                for id in 1..=nodes {
                    let faults = Faults {
                        loss_percent: percent,
                        ..net.faults(id).clone()
                    };
                    net.set_faults(id, faults)?;
                }
                Ok(format!("{percent}% of packets dropped"))
            }
            Network::Proxy(p) => {
                let delay_ms = 10 * u64::from(percent);
                p.delay_all(delay_ms);
                Ok(format!("every chunk delayed {delay_ms} ms"))
            }
        }
    }

    /// Delays everything between any two nodes by `delay_ms` each way (the proxy's, in
    /// both networks). Returns what it did.
    pub fn delay(&mut self, delay_ms: u64) -> String {
        match self {
            Network::Namespaces { relay: p, .. } | Network::Proxy(p) => p.delay_all(delay_ms),
        }
        format!("node-to-node traffic delayed {delay_ms} ms each way")
    }

    /// Removes every network fault.
    pub fn heal(&mut self) -> Result<(), String> {
        match self {
            Network::Namespaces { net, relay } => {
                relay.heal();
                net.heal()
            }
            Network::Proxy(p) => {
                p.heal();
                Ok(())
            }
        }
    }
}
