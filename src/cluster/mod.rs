//! The node's view of the cluster: who the other nodes are ([`Membership`]: the static list of
//! `[cluster]`, grown by what `gossip` hears), where each partition's replicas live
//! (`placement`, `metadata`), and the links that carry every partition group's Raft messages
//! to the other nodes (`transport`, the gRPC client of `walrs.v1.Replication`).
//!
//! Owns: the membership (node ids and gRPC addresses) and the links to the peers.
//! Must never: decide anything Raft decides (terms, leaders, commits: `raft`), or touch a
//! partition's files (`shard`, `storage`). The placement and the transport only ask the
//! membership for node ids and addresses; the server feeds it what gossip hears.

pub mod gossip;
pub mod metadata;
pub mod peers;
pub mod placement;
pub(crate) mod transport;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::config::NodeAddr;

/// The nodes this node knows of and where they serve gRPC: the static ones of `[cluster]`
/// (this node and `[[cluster.peers]]`), and those gossip told of since (a node added to a
/// running cluster). Shared by every clone: what one learns, all see.
///
/// A configured address is the operator's word and is never replaced by gossip (a node's
/// certificate names the host configured for it); a node learned from gossip follows what
/// it says of itself. At most [`crate::config::CLUSTER_NODES_MAX`] nodes are known; gossip
/// beyond that is ignored, with a warning.
#[derive(Debug, Clone)]
pub struct Membership {
    node_id: u32,
    nodes: Arc<RwLock<BTreeMap<u32, Known>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    addr: String,
    configured: bool,
}

/// What [`Membership::learn`] made of an address gossip reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// Known already at this address, or configured (configured addresses stay).
    Unchanged,
    /// A node not known before.
    New,
    /// A gossip-learned node now serving at another address.
    Moved,
    /// Not taken: the membership is full.
    Full,
}

impl Membership {
    /// `nodes` must be sorted by id, distinct, and hold `node_id` (the config checks this).
    pub fn new(node_id: u32, nodes: Vec<NodeAddr>) -> Membership {
        assert!(node_id > 0, "a cluster node has an id > 0");
        assert!(
            nodes.windows(2).all(|w| w[0].id < w[1].id),
            "nodes are sorted by id and distinct"
        );
        assert!(
            nodes.iter().any(|n| n.id == node_id),
            "the membership holds this node"
        );
        let nodes = nodes
            .into_iter()
            .map(|n| {
                let known = Known {
                    addr: n.addr,
                    configured: true,
                };
                (n.id, known)
            })
            .collect();
        Membership {
            node_id,
            nodes: Arc::new(RwLock::new(nodes)),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> u32 {
        self.node_id
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, Known>> {
        self.nodes.read().expect("membership lock poisoned")
    }

    /// The address node `id` serves gRPC at, if it is known.
    pub fn addr_of(&self, id: u64) -> Option<String> {
        let id = u32::try_from(id).ok()?;
        self.read().get(&id).map(|n| n.addr.clone())
    }

    /// Every node, this one included, with its address, sorted by id.
    pub fn nodes(&self) -> Vec<NodeAddr> {
        self.read()
            .iter()
            .map(|(&id, n)| NodeAddr {
                id,
                addr: n.addr.clone(),
            })
            .collect()
    }

    /// Every node but this one, with its address, sorted by id.
    pub fn peers(&self) -> Vec<NodeAddr> {
        let mut nodes = self.nodes();
        nodes.retain(|n| n.id != self.node_id);
        nodes
    }

    /// The node ids, sorted.
    pub fn ids(&self) -> Vec<u64> {
        self.read().keys().map(|&id| u64::from(id)).collect()
    }

    /// Takes in what gossip says of node `id`: it serves gRPC at `addr`.
    pub fn learn(&self, id: u32, addr: &str) -> Learned {
        if id == self.node_id || id == 0 || addr.is_empty() {
            return Learned::Unchanged;
        }
        let mut nodes = self.nodes.write().expect("membership lock poisoned");
        let full = nodes.len() >= crate::config::CLUSTER_NODES_MAX;
        match nodes.get_mut(&id) {
            Some(known) if known.configured || known.addr == addr => Learned::Unchanged,
            Some(known) => {
                known.addr = addr.to_owned();
                Learned::Moved
            }
            None if full => Learned::Full,
            None => {
                let known = Known {
                    addr: addr.to_owned(),
                    configured: false,
                };
                nodes.insert(id, known);
                Learned::New
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, addr: &str) -> NodeAddr {
        NodeAddr {
            id,
            addr: addr.to_owned(),
        }
    }

    #[test]
    fn gossip_adds_nodes_and_moves_them_but_never_a_configured_one() {
        let membership = Membership::new(1, vec![node(1, "a:1"), node(2, "b:1")]);
        let shared = membership.clone();
        assert_eq!(membership.learn(2, "elsewhere:1"), Learned::Unchanged);
        assert_eq!(membership.addr_of(2).as_deref(), Some("b:1"));
        assert_eq!(membership.learn(1, "me:1"), Learned::Unchanged);
        assert_eq!(membership.learn(4, "d:1"), Learned::New);
        assert_eq!(membership.learn(4, "d:1"), Learned::Unchanged);
        assert_eq!(shared.ids(), [1, 2, 4]);
        assert_eq!(membership.learn(4, "d:2"), Learned::Moved);
        assert_eq!(shared.addr_of(4).as_deref(), Some("d:2"));
        let peers: Vec<u32> = shared.peers().iter().map(|n| n.id).collect();
        assert_eq!(peers, [2, 4]);
    }

    #[test]
    fn the_membership_is_bounded() {
        let membership = Membership::new(1, vec![node(1, "a:1")]);
        let max = crate::config::CLUSTER_NODES_MAX as u32;
        for id in 2..=max {
            assert_eq!(membership.learn(id, "x:1"), Learned::New);
        }
        assert_eq!(membership.learn(max + 1, "x:1"), Learned::Full);
        assert_eq!(membership.ids().len(), max as usize);
    }
}
