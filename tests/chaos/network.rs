//! The network the campaign's nodes talk over: network namespaces on a bridge (the real
//! thing, [`super::netns`]) or, where those cannot be made, loopback plus the harness's
//! fault-injecting TCP proxy ([`super::proxy`]). The rest of the campaign only sees this.
//!
//! Owns: which of the two is in use, the addresses nodes listen at and dial each other at,
//! how a node's process is started (inside its namespace or not), and the network faults
//! (cuts between groups of nodes, loss or, through the proxy, delay). Must never: mix the
//! two, or leave a fault in place after [`Network::heal`].

use std::process::Command;

use super::netns::{self, Faults, Net};
use super::proxy::Proxies;

pub enum Network {
    Namespaces(Net),
    Proxy(Proxies),
}

impl Network {
    /// Namespaces when they can be made and `WALRS_CHAOS_NETWORK` is not `proxy`, else the
    /// proxy; says which, and why, on stdout. A namespace network also moves the calling
    /// thread (and the threads it starts from now on) into the bridge namespace.
    pub fn create(nodes: u32) -> Network {
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
                     {}; the harness's client runs in the bridge namespace; faults with nftables",
                    net.bridge().trim_end_matches("-br"),
                    net.bridge()
                );
                Network::Namespaces(net)
            }
            Err(why) => {
                println!(
                    "network: FALLBACK: no network namespaces ({why}); the nodes run on loopback \
                     and every node-to-node link goes through the harness's TCP proxy (cuts and \
                     delays; packet loss becomes a delay)"
                );
                Network::Proxy(Proxies::start(nodes))
            }
        }
    }

    pub fn is_proxy(&self) -> bool {
        matches!(self, Network::Proxy(_))
    }

    /// Where node `id` listens, and clients dial it.
    pub fn node_addr(&self, id: u32, port: u16) -> String {
        match self {
            Network::Namespaces(_) => format!("{}:{port}", netns::node_ip(id)),
            Network::Proxy(p) => p.node_addr(id),
        }
    }

    /// Where node `from` dials node `to`.
    pub fn peer_addr(&self, from: u32, to: u32, port: u16) -> String {
        match self {
            Network::Namespaces(_) => format!("{}:{port}", netns::node_ip(to)),
            Network::Proxy(p) => p.peer_addr(from, to),
        }
    }

    /// More names node `id`'s certificate must hold (its namespace address).
    pub fn cert_names(&self, id: u32) -> Vec<String> {
        match self {
            Network::Namespaces(_) => vec![netns::node_ip(id)],
            Network::Proxy(_) => Vec::new(),
        }
    }

    /// `program`, to run as node `id`.
    pub fn command(&self, id: u32, program: &str) -> Command {
        match self {
            Network::Namespaces(net) => netns::command_in(&net.node(id), program),
            Network::Proxy(_) => Command::new(program),
        }
    }

    /// Cuts every link between a node of `a` and a node of `b`.
    pub fn cut_between(&mut self, a: &[u32], b: &[u32]) -> Result<(), String> {
        match self {
            Network::Namespaces(net) => net.cut_between(a, b),
            Network::Proxy(p) => {
                for &x in a {
                    for &y in b {
                        p.cut(x, y);
                    }
                }
                Ok(())
            }
        }
    }

    /// Drops `percent` of the packets between nodes; through the proxy, holds every chunk
    /// `10 × percent` ms instead. Returns what it did.
    pub fn lose(&mut self, nodes: u32, percent: u32) -> Result<String, String> {
        match self {
            Network::Namespaces(net) => {
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

    /// Removes every network fault.
    pub fn heal(&mut self) -> Result<(), String> {
        match self {
            Network::Namespaces(net) => net.heal(),
            Network::Proxy(p) => {
                p.heal();
                Ok(())
            }
        }
    }
}
