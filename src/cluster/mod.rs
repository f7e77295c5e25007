//! The node's view of the cluster: who the other nodes are (static membership, from
//! `[cluster]`), where each partition's replicas live (`placement`), and the links that carry
//! every partition group's Raft messages to the other nodes (`transport`, the gRPC client of
//! `walrs.v1.Replication`).
//!
//! Owns: the membership a node starts with and the links to its peers.
//! Must never: decide anything Raft decides (terms, leaders, commits: `raft`), or touch a
//! partition's files (`shard`, `storage`). Gossip (issue 11) replaces the static list behind
//! [`Membership`]; the placement and the transport only ask it for node ids and addresses.

pub mod gossip;
pub mod metadata;
pub mod peers;
pub mod placement;
pub(crate) mod transport;

use crate::config::NodeAddr;

/// The nodes of the cluster, sorted by id, this node among them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// This node's id (> 0).
    pub node_id: u32,
    /// Every node, this one included, sorted by id; ids are distinct.
    pub nodes: Vec<NodeAddr>,
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
        Membership { node_id, nodes }
    }

    /// The address node `id` serves gRPC at, if it is a member.
    pub fn addr_of(&self, id: u64) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| u64::from(n.id) == id)
            .map(|n| n.addr.as_str())
    }

    /// Every node but this one.
    pub fn peers(&self) -> impl Iterator<Item = &NodeAddr> {
        self.nodes.iter().filter(move |n| n.id != self.node_id)
    }

    /// The node ids, sorted.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| u64::from(n.id)).collect()
    }
}
