//! `[cluster]`: who this node is, which other nodes it knows (static membership, before
//! gossip lands), and the limits and timing of replication between them.
//!
//! `node_id = 0` (the default) is a single node outside any cluster: no peers are allowed,
//! and the replication factor is 1. A node in a cluster has an id > 0, distinct from every
//! peer's. This module only parses and checks; it never resolves a host name nor opens a
//! socket, so a peer's address is checked for its shape (`ip:port` or `host:port`), not for
//! being reachable.
//!
//! The Raft timings (elections, heartbeats, entries per message) are defined and checked by
//! the replication layer (`RaftTimings`); this table maps its keys onto them, as the shard
//! limits live in `ShardOptions`. The node-to-node limits are still defined here until the
//! replication service that enforces them lands.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Invalid;
use crate::raft::group::RaftTimings;
use crate::storage::check_range;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Most nodes a static membership may list (self included). A bound, not a target: the
/// controller and gossip are what make large clusters practical.
pub const CLUSTER_NODES_MAX: usize = 1024;
/// Replicas of a topic created without a replication factor in a cluster, when the
/// cluster has at least that many nodes (Kafka's and Redpanda's usual choice).
const CLUSTER_REPLICATION_FACTOR_DEFAULT: u32 = 3;
/// The controller's voters when `controller_voters` is empty: the first this many node ids
/// (as KRaft and Redpanda: three voters survive one loss; more only slow every change).
pub const CONTROLLER_VOTERS_DEFAULT: usize = 3;

/// One other node of the cluster: `[[cluster.peers]] id = 2, addr = "10.0.0.2:7070"`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddr {
    /// The node's id (> 0), its `[cluster] node_id`.
    pub id: u32,
    /// Where the node serves gRPC (`host:port` or `ip:port`), its advertised address.
    pub addr: String,
}

/// `[cluster]`: this node's id and address, the static peers, and replication's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id; 0 = a single node, not in a cluster.
    pub node_id: u32,
    /// The `host:port` other nodes and clients reach this node at; empty = `listen`.
    pub advertise_addr: String,
    /// Replicas of a topic created with `replication_factor = 0`. Absent: 1 for a single
    /// node, `min(3, nodes)` with peers (see [`ClusterConfig::effective_replication_factor`]).
    pub replication_factor: Option<u32>,
    /// The other nodes (static membership).
    pub peers: Vec<NodeAddr>,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min_ms, election_timeout_max_ms)` starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often a leader sends heartbeats (shared by all groups between two nodes).
    pub heartbeat_interval_ms: u64,
    /// Largest node-to-node replication frame (entries' bytes, not counting the frame's own
    /// header), and the most bytes of entries one AppendEntries carries (one entry larger
    /// than this goes alone); one largest batch (`storage.batch_bytes_max`) must fit in one.
    pub replication_batch_bytes_max: u64,
    /// Messages that may wait for (or await an answer from) one destination node; past it a
    /// message is refused at once, as if the node were unreachable, and Raft retries it. Also
    /// the messages one incoming stream serves at once.
    pub replication_queue_depth_max: u32,
    /// Bytes of messages that may wait for one destination node (one message larger than
    /// this is taken when nothing waits, and messages of at most 4 KiB, heartbeats and
    /// votes, always pass); past it a message is refused at once, as for
    /// `replication_queue_depth_max`. Also the bytes of messages one incoming stream serves
    /// at once (past it the stream is not read until some are answered).
    pub replication_queue_bytes_max: u64,
    /// AppendEntries a partition's leader has sent to one follower and awaits answers to;
    /// 1 = one at a time (each waits for the follower's sync of the one before). They count
    /// against the link's `replication_queue_depth_max`, which every partition between the
    /// two nodes shares.
    pub replication_inflight_max: u32,
    /// Bytes of each replicated partition's newest batches kept in memory, so that the leader
    /// ships them and every replica applies them without reading them back from disk;
    /// 0 = off. A bound per partition: the worst case is this times the partitions a node
    /// holds.
    pub replication_cache_bytes_max: u64,
    /// Entries (batches) in one AppendEntries message.
    pub raft_payload_entries_max: u32,
    /// A partition with no write for this long goes quiet: no heartbeats, no election
    /// timers, until a write, a vote, or a change in the links between its nodes; 0 = never.
    pub quiesce_after_ms: u64,
    /// The nodes whose replicas hold the controller's metadata log (topics and their
    /// placement): its Raft voters. Empty = the first [`CONTROLLER_VOTERS_DEFAULT`] node ids.
    /// Every node must list the same ones.
    pub controller_voters: Vec<u32>,
    /// The UDP `ip:port` this node gossips on (membership and failure detection); "" = the
    /// `listen` address (UDP on the gRPC port number).
    pub gossip_listen: String,
    /// Gossip addresses (`host:port`, UDP) to join through; empty = every peer's `addr`
    /// (the peers gossip on their gRPC port number, the default).
    pub seeds: Vec<String>,
    /// How often this node gossips with a few others.
    pub gossip_interval_ms: u64,
    /// A node not heard from (directly or through others) for about this long is declared
    /// dead by the phi-accrual failure detector: its threshold is this over the gossip
    /// interval.
    pub failure_detector_dead_after_ms: u64,
    /// A node the failure detector has held dead for this long has its replicas re-created
    /// on other nodes (by the controller leader, as reassignments); 0 = never (the default:
    /// a node that comes back catches up by itself). At least
    /// `failure_detector_dead_after_ms`.
    pub replace_after_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let timings = RaftTimings::default();
        ClusterConfig {
            node_id: 0,
            advertise_addr: String::new(),
            replication_factor: None,
            peers: Vec::new(),
            election_timeout_min_ms: timings.election_timeout_min_ms,
            election_timeout_max_ms: timings.election_timeout_max_ms,
            heartbeat_interval_ms: timings.heartbeat_interval_ms,
            replication_batch_bytes_max: 4 * MIB,
            replication_queue_depth_max: 4096,
            replication_queue_bytes_max: 64 * MIB,
            replication_inflight_max: 4,
            replication_cache_bytes_max: 4 * MIB,
            raft_payload_entries_max: timings.raft_payload_entries_max,
            quiesce_after_ms: timings.quiesce_after_ms,
            controller_voters: Vec::new(),
            gossip_listen: String::new(),
            seeds: Vec::new(),
            gossip_interval_ms: 500,
            failure_detector_dead_after_ms: 4000,
            replace_after_ms: 0,
        }
    }
}

impl ClusterConfig {
    /// Nodes this node knows: itself and its peers (1 for a single node).
    pub fn node_count(&self) -> u32 {
        // Bounded by CLUSTER_NODES_MAX once validated; saturate rather than wrap before.
        u32::try_from(self.peers.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The replication factor of a topic created with `replication_factor = 0`: the
    /// configured one, else 1 alone and `min(3, nodes)` with peers.
    pub fn effective_replication_factor(&self) -> u32 {
        match self.replication_factor {
            Some(factor) => factor,
            None if self.peers.is_empty() => 1,
            None => CLUSTER_REPLICATION_FACTOR_DEFAULT.min(self.node_count()),
        }
    }

    /// Every node with its address, self included when `node_id > 0`, sorted by id.
    /// `listen` is this node's address when `advertise_addr` is empty.
    pub fn nodes(&self, listen: SocketAddr) -> Vec<NodeAddr> {
        let mut nodes = self.peers.clone();
        if self.node_id > 0 {
            nodes.push(NodeAddr {
                id: self.node_id,
                addr: self.advertise_addr_or(listen),
            });
        }
        nodes.sort();
        nodes
    }

    /// `advertise_addr`, or `listen` when it is empty.
    pub fn advertise_addr_or(&self, listen: SocketAddr) -> String {
        if self.advertise_addr.is_empty() {
            listen.to_string()
        } else {
            self.advertise_addr.clone()
        }
    }

    /// The controller's voters (`controller_voters`, or the first
    /// [`CONTROLLER_VOTERS_DEFAULT`] node ids), sorted; empty outside a cluster.
    pub fn controller_voters(&self) -> Vec<u64> {
        if self.node_id == 0 {
            return Vec::new();
        }
        let mut voters: Vec<u64> = if self.controller_voters.is_empty() {
            let mut ids: Vec<u64> = self.peers.iter().map(|p| u64::from(p.id)).collect();
            ids.push(u64::from(self.node_id));
            ids.sort_unstable();
            ids.truncate(CONTROLLER_VOTERS_DEFAULT);
            ids
        } else {
            self.controller_voters
                .iter()
                .map(|&id| u64::from(id))
                .collect()
        };
        voters.sort_unstable();
        voters
    }

    /// The UDP address to gossip on: `gossip_listen`, or `listen` when it is empty.
    pub fn gossip_listen_or(&self, listen: SocketAddr) -> SocketAddr {
        self.gossip_listen.parse().unwrap_or(listen)
    }

    /// The gossip address the other nodes reach this one at: the listen address, or with
    /// a wildcard IP, the IP of `advertise_addr` (validation makes sure there is one).
    pub fn gossip_advertise(&self, listen: SocketAddr) -> SocketAddr {
        let gossip = self.gossip_listen_or(listen);
        if !gossip.ip().is_unspecified() {
            return gossip;
        }
        match self.advertise_addr.parse::<SocketAddr>() {
            Ok(advertised) => SocketAddr::new(advertised.ip(), gossip.port()),
            Err(_) => gossip,
        }
    }

    /// The gossip addresses to join through: `seeds`, or every peer's address.
    pub fn gossip_seeds(&self) -> Vec<String> {
        if self.seeds.is_empty() {
            self.peers.iter().map(|p| p.addr.clone()).collect()
        } else {
            self.seeds.clone()
        }
    }

    /// The Raft timings these keys set.
    pub(crate) fn raft_timings(&self) -> RaftTimings {
        RaftTimings {
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            raft_payload_entries_max: self.raft_payload_entries_max,
            quiesce_after_ms: self.quiesce_after_ms,
        }
    }

    /// Checks every key. `listen` is the gRPC address (the default advertised one) and
    /// `batch_bytes_max` is `storage.batch_bytes_max` (one batch must fit a frame).
    pub(super) fn validate(&self, listen: SocketAddr, batch_bytes_max: u64) -> Result<(), Invalid> {
        self.validate_membership(listen)?;
        self.validate_replication_factor()?;
        self.validate_controller_voters()?;
        self.validate_gossip(listen)?;
        let key = |name: &str| format!("cluster.{name}");
        self.raft_timings().validate_as(&key)?;
        check_range(
            key("replication_batch_bytes_max"),
            self.replication_batch_bytes_max,
            batch_bytes_max,
            GIB,
            " bytes (at least storage.batch_bytes_max, so one batch fits a frame)",
        )?;
        check_range(
            key("replication_queue_depth_max"),
            self.replication_queue_depth_max,
            1,
            1 << 20,
            " messages",
        )?;
        check_range(
            key("replication_queue_bytes_max"),
            self.replication_queue_bytes_max,
            MIB,
            64 * GIB,
            " bytes",
        )?;
        check_range(
            key("replication_inflight_max"),
            self.replication_inflight_max,
            1,
            1024,
            " AppendEntries",
        )?;
        check_range(
            key("replication_cache_bytes_max"),
            self.replication_cache_bytes_max,
            0,
            GIB,
            " bytes",
        )?;
        Ok(())
    }

    fn validate_membership(&self, listen: SocketAddr) -> Result<(), Invalid> {
        if !self.advertise_addr.is_empty() && !is_host_port(&self.advertise_addr) {
            return Err(Invalid::new(
                "cluster.advertise_addr",
                format!("{:?}", self.advertise_addr),
                "must be \"host:port\" or \"ip:port\" with a port above 0, \
                 or empty for the `listen` address",
            ));
        }
        if self.peers.is_empty() {
            return Ok(());
        }
        if self.node_id == 0 {
            return Err(Invalid::new(
                "cluster.peers",
                format!("{} entries", self.peers.len()),
                "need this node's own id: set `cluster.node_id` (> 0, distinct from every \
                 peer's), or remove [[cluster.peers]] to run a single node",
            ));
        }
        if self.peers.len() >= CLUSTER_NODES_MAX {
            return Err(Invalid::new(
                "cluster.peers",
                format!("{} entries", self.peers.len()),
                format!("must list at most {} other nodes", CLUSTER_NODES_MAX - 1),
            ));
        }
        // Peers dial this address: a wildcard `listen` says nothing about where to reach us.
        if self.advertise_addr.is_empty() && listen.ip().is_unspecified() {
            return Err(Invalid::new(
                "cluster.advertise_addr",
                "\"\"",
                format!(
                    "must be set when peers are configured and `listen` ({listen}) is a \
                     wildcard address: the host:port the other nodes can reach this one at"
                ),
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |field: &str| format!("cluster.peers[{i}].{field}");
            if peer.id == 0 {
                return Err(Invalid::new(key("id"), 0, "must be a node id above 0"));
            }
            if peer.id == self.node_id {
                return Err(Invalid::new(
                    key("id"),
                    peer.id,
                    "must differ from this node's `cluster.node_id`: list only the other nodes",
                ));
            }
            if let Some(j) = self.peers[..i].iter().position(|p| p.id == peer.id) {
                return Err(Invalid::new(
                    key("id"),
                    peer.id,
                    format!("must be distinct: cluster.peers[{j}] has the same id"),
                ));
            }
            if !is_host_port(&peer.addr) {
                return Err(Invalid::new(
                    key("addr"),
                    format!("{:?}", peer.addr),
                    "must be \"host:port\" or \"ip:port\" with a port above 0",
                ));
            }
            if let Some(j) = self.peers[..i].iter().position(|p| p.addr == peer.addr) {
                return Err(Invalid::new(
                    key("addr"),
                    format!("{:?}", peer.addr),
                    format!("must be distinct: cluster.peers[{j}] has the same address"),
                ));
            }
        }
        Ok(())
    }

    fn validate_gossip(&self, listen: SocketAddr) -> Result<(), Invalid> {
        check_range(
            "cluster.gossip_interval_ms".to_owned(),
            self.gossip_interval_ms,
            10,
            10_000,
            " ms",
        )?;
        check_range(
            "cluster.failure_detector_dead_after_ms".to_owned(),
            self.failure_detector_dead_after_ms,
            (2 * self.gossip_interval_ms).max(100),
            600_000,
            " ms (at least two gossip intervals)",
        )?;
        if self.replace_after_ms != 0 {
            check_range(
                "cluster.replace_after_ms".to_owned(),
                self.replace_after_ms,
                self.failure_detector_dead_after_ms,
                7 * 86_400_000,
                " ms (0 = never; at least cluster.failure_detector_dead_after_ms)",
            )?;
        }
        if !self.gossip_listen.is_empty() && self.gossip_listen.parse::<SocketAddr>().is_err() {
            return Err(Invalid::new(
                "cluster.gossip_listen",
                format!("{:?}", self.gossip_listen),
                "must be \"ip:port\" (UDP), or empty for the `listen` address",
            ));
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            if !is_host_port(seed) {
                return Err(Invalid::new(
                    format!("cluster.seeds[{i}]"),
                    format!("{seed:?}"),
                    "must be \"host:port\" or \"ip:port\" (a node's gossip address)",
                ));
            }
        }
        let gossip = self.gossip_listen_or(listen);
        if self.node_id > 0
            && !self.peers.is_empty()
            && self.gossip_advertise(listen).ip().is_unspecified()
        {
            return Err(Invalid::new(
                "cluster.gossip_listen",
                format!("{gossip}"),
                "is a wildcard address and `advertise_addr` is not an ip:port: set \
                 gossip_listen to the address the other nodes can reach this one at",
            ));
        }
        Ok(())
    }

    fn validate_controller_voters(&self) -> Result<(), Invalid> {
        let key = "cluster.controller_voters";
        let voters = &self.controller_voters;
        if voters.is_empty() {
            return Ok(());
        }
        if self.node_id == 0 {
            return Err(Invalid::new(
                key,
                format!("{voters:?}"),
                "needs a cluster: set `cluster.node_id` and [[cluster.peers]], or remove it",
            ));
        }
        for (i, id) in voters.iter().enumerate() {
            if *id != self.node_id && !self.peers.iter().any(|p| p.id == *id) {
                return Err(Invalid::new(
                    key,
                    format!("{voters:?}"),
                    format!(
                        "lists node {id}, which is neither `cluster.node_id` nor a peer: \
                         list ids of known nodes"
                    ),
                ));
            }
            if voters[..i].contains(id) {
                return Err(Invalid::new(
                    key,
                    format!("{voters:?}"),
                    format!("lists node {id} twice"),
                ));
            }
        }
        Ok(())
    }

    fn validate_replication_factor(&self) -> Result<(), Invalid> {
        let Some(factor) = self.replication_factor else {
            return Ok(());
        };
        let nodes = self.node_count();
        if factor == 0 || factor > nodes {
            return Err(Invalid::new(
                "cluster.replication_factor",
                factor,
                format!(
                    "must be between 1 and the {nodes} node(s) known (this one and \
                     [[cluster.peers]]), or absent for the default"
                ),
            ));
        }
        Ok(())
    }
}

/// True for `ip:port` (`[::1]:7070` for IPv6) or `host:port` with a DNS-shaped host; the
/// port must be above 0, since another node cannot dial port 0.
fn is_host_port(text: &str) -> bool {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return addr.port() != 0;
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "127.0.0.1:7070";

    fn parse(text: &str) -> ClusterConfig {
        toml::from_str(text).expect("parses")
    }

    fn check(text: &str) -> Result<(), Invalid> {
        parse(text).validate(LISTEN.parse().unwrap(), 4 * MIB)
    }

    fn refused(text: &str) -> Invalid {
        check(text).expect_err(text)
    }

    const THREE: &str = "node_id = 1\n\
        [[peers]]\nid = 2\naddr = \"10.0.0.2:7070\"\n\
        [[peers]]\nid = 3\naddr = \"node-3.example:7070\"\n";

    #[test]
    fn defaults_are_a_single_node() {
        let config = ClusterConfig::default();
        check("").unwrap();
        assert_eq!(parse(""), config);
        assert_eq!(config.effective_replication_factor(), 1);
        assert_eq!(config.nodes(LISTEN.parse().unwrap()), []);
    }

    #[test]
    fn a_node_id_alone_is_a_one_node_cluster() {
        check("node_id = 7").unwrap();
        check("node_id = 4294967295").unwrap();
        let config = parse("node_id = 7");
        assert_eq!(config.effective_replication_factor(), 1);
        assert_eq!(
            config.nodes(LISTEN.parse().unwrap()),
            [NodeAddr {
                id: 7,
                addr: LISTEN.to_owned()
            }]
        );
    }

    #[test]
    fn peers_without_a_node_id_are_refused() {
        let err = refused("[[peers]]\nid = 2\naddr = \"10.0.0.2:7070\"");
        assert_eq!(err.key, "cluster.peers");
        assert!(err.allowed.contains("cluster.node_id"), "{err}");
    }

    #[test]
    fn peer_ids_are_above_zero_distinct_and_not_ours() {
        let peer = |id: u32, addr: &str| format!("[[peers]]\nid = {id}\naddr = \"{addr}\"\n");
        let cases = [
            (
                format!("node_id = 1\n{}", peer(0, "a:1")),
                "cluster.peers[0].id",
            ),
            (
                format!("node_id = 1\n{}", peer(1, "a:1")),
                "cluster.peers[0].id",
            ),
            (
                format!("node_id = 1\n{}{}", peer(2, "a:1"), peer(2, "b:1")),
                "cluster.peers[1].id",
            ),
            (
                format!("node_id = 1\n{}{}", peer(2, "a:1"), peer(3, "a:1")),
                "cluster.peers[1].addr",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(refused(&text).key, key, "{text}");
        }
    }

    #[test]
    fn addresses_are_host_port() {
        for good in [
            "10.0.0.2:7070",
            "[::1]:7070",
            "localhost:1",
            "node-2.walrs.internal:65535",
        ] {
            assert!(is_host_port(good), "{good}");
            check(&format!(
                "node_id = 1\n[[peers]]\nid = 2\naddr = \"{good}\""
            ))
            .unwrap();
            check(&format!("advertise_addr = \"{good}\"")).unwrap();
        }
        for bad in [
            "",
            "node-2",
            "node-2:",
            "node-2:0",
            "10.0.0.2:0",
            "node-2:70000",
            ":7070",
            "::1:7070",
            "a..b:1",
            "-a:1",
            "http://a:1",
            "a b:1",
        ] {
            assert!(!is_host_port(bad), "{bad:?}");
            let err = refused(&format!("node_id = 1\n[[peers]]\nid = 2\naddr = \"{bad}\""));
            assert_eq!(err.key, "cluster.peers[0].addr", "{bad:?}");
            if !bad.is_empty() {
                let err = refused(&format!("advertise_addr = \"{bad}\""));
                assert_eq!(err.key, "cluster.advertise_addr", "{bad:?}");
            }
        }
    }

    #[test]
    fn a_wildcard_listen_needs_an_advertised_address_in_a_cluster() {
        let wildcard: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let err = parse(THREE).validate(wildcard, 4 * MIB).unwrap_err();
        assert_eq!(err.key, "cluster.advertise_addr");
        let advertised = format!("advertise_addr = \"10.0.0.1:7070\"\n{THREE}");
        parse(&advertised).validate(wildcard, 4 * MIB).unwrap();
        // Alone, nobody dials it.
        parse("node_id = 1").validate(wildcard, 4 * MIB).unwrap();
    }

    #[test]
    fn nodes_are_sorted_and_include_self() {
        let config = parse(
            &format!("advertise_addr = \"10.0.0.1:7070\"\n{THREE}")
                .replace("node_id = 1", "node_id = 5"),
        );
        let nodes = config.nodes(LISTEN.parse().unwrap());
        let ids: Vec<u32> = nodes.iter().map(|n| n.id).collect();
        assert_eq!(ids, [2, 3, 5]);
        assert_eq!(nodes[2].addr, "10.0.0.1:7070");
        assert_eq!(nodes[1].addr, "node-3.example:7070");
    }

    #[test]
    fn replication_factor_defaults_and_bounds() {
        assert_eq!(parse(THREE).effective_replication_factor(), 3);
        let two = "node_id = 1\n[[peers]]\nid = 2\naddr = \"a:1\"";
        assert_eq!(parse(two).effective_replication_factor(), 2);
        let mut five = THREE.to_owned();
        for id in [4, 5] {
            five.push_str(&format!("[[peers]]\nid = {id}\naddr = \"n{id}:1\"\n"));
        }
        assert_eq!(parse(&five).effective_replication_factor(), 3);
        check(&format!("replication_factor = 5\n{five}")).unwrap();
        assert_eq!(
            parse(&format!("replication_factor = 1\n{five}")).effective_replication_factor(),
            1
        );
        check("replication_factor = 1").unwrap();
        for text in [
            "replication_factor = 0".to_owned(),
            "replication_factor = 2".to_owned(),
            "node_id = 1\nreplication_factor = 2".to_owned(),
            format!("replication_factor = 4\n{THREE}"),
        ] {
            let err = refused(&text);
            assert_eq!(err.key, "cluster.replication_factor", "{text}");
        }
    }

    #[test]
    fn timing_is_ordered_and_bounded() {
        check("heartbeat_interval_ms = 10").unwrap();
        check(
            "heartbeat_interval_ms = 49\nelection_timeout_min_ms = 50\nelection_timeout_max_ms = 51\n\
             quiesce_after_ms = 0",
        )
        .unwrap();
        // Quiescence pauses heartbeats for up to an interval: 2.2 of them must fit under the
        // shortest election timeout.
        check("heartbeat_interval_ms = 22\nelection_timeout_min_ms = 50\nelection_timeout_max_ms = 51")
            .unwrap();
        assert_eq!(
            refused("heartbeat_interval_ms = 23\nelection_timeout_min_ms = 50\nelection_timeout_max_ms = 51")
                .key,
            "cluster.heartbeat_interval_ms"
        );
        check(
            "heartbeat_interval_ms = 10000\nelection_timeout_min_ms = 60000\n\
             election_timeout_max_ms = 120000",
        )
        .unwrap();
        let cases = [
            ("heartbeat_interval_ms = 9", "cluster.heartbeat_interval_ms"),
            (
                "heartbeat_interval_ms = 10001",
                "cluster.heartbeat_interval_ms",
            ),
            (
                "heartbeat_interval_ms = 1000",
                "cluster.heartbeat_interval_ms",
            ),
            (
                "election_timeout_min_ms = 49",
                "cluster.election_timeout_min_ms",
            ),
            (
                "election_timeout_min_ms = 60001\nelection_timeout_max_ms = 70000",
                "cluster.election_timeout_min_ms",
            ),
            (
                "election_timeout_max_ms = 500",
                "cluster.election_timeout_max_ms",
            ),
            (
                "election_timeout_max_ms = 120001",
                "cluster.election_timeout_max_ms",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(refused(text).key, key, "{text}");
        }
    }

    #[test]
    fn controller_voters_default_to_the_first_three_and_must_be_known() {
        let peers = "node_id = 4\n[[peers]]\nid = 1\naddr = \"a:1\"\n[[peers]]\nid = 3\n\
                     addr = \"a:3\"\n[[peers]]\nid = 2\naddr = \"a:2\"\n";
        assert_eq!(parse(peers).controller_voters(), vec![1, 2, 3]);
        assert!(parse("").controller_voters().is_empty());
        assert_eq!(parse("node_id = 7").controller_voters(), vec![7]);
        let chosen = format!("controller_voters = [4, 1]\n{peers}");
        check(&chosen).unwrap();
        assert_eq!(parse(&chosen).controller_voters(), vec![1, 4]);
        for bad in [
            format!("controller_voters = [5]\n{peers}"),
            format!("controller_voters = [1, 1]\n{peers}"),
            "controller_voters = [1]".to_owned(),
        ] {
            assert_eq!(refused(&bad).key, "cluster.controller_voters", "{bad}");
        }
    }

    #[test]
    fn gossip_defaults_to_the_grpc_address_and_the_peers() {
        let listen: SocketAddr = LISTEN.parse().unwrap();
        let peers = parse("node_id = 1\n[[peers]]\nid = 2\naddr = \"b:7072\"\n");
        assert_eq!(peers.gossip_listen_or(listen), listen);
        assert_eq!(peers.gossip_advertise(listen), listen);
        assert_eq!(peers.gossip_seeds(), vec!["b:7072".to_owned()]);
        let wild = parse(
            "node_id = 1\nadvertise_addr = \"10.0.0.1:7070\"\ngossip_listen = \"0.0.0.0:7946\"",
        );
        assert_eq!(
            wild.gossip_advertise(listen),
            "10.0.0.1:7946".parse::<SocketAddr>().unwrap()
        );
        check("gossip_interval_ms = 10\nfailure_detector_dead_after_ms = 100").unwrap();
        check("replace_after_ms = 0").unwrap();
        check("replace_after_ms = 60000").unwrap();
        assert!(check("replace_after_ms = 3999").is_err());
        for (text, key) in [
            ("gossip_interval_ms = 9", "cluster.gossip_interval_ms"),
            ("gossip_interval_ms = 10001", "cluster.gossip_interval_ms"),
            (
                "failure_detector_dead_after_ms = 999",
                "cluster.failure_detector_dead_after_ms",
            ),
            ("gossip_listen = \"nowhere\"", "cluster.gossip_listen"),
            ("seeds = [\"a\"]", "cluster.seeds[0]"),
        ] {
            assert_eq!(refused(text).key, key, "{text}");
        }
    }

    #[test]
    fn replication_limits_are_bounded() {
        check("replication_batch_bytes_max = 1073741824").unwrap();
        check("replication_queue_depth_max = 1\nraft_payload_entries_max = 1").unwrap();
        check("replication_inflight_max = 1").unwrap();
        check("replication_queue_bytes_max = 1048576").unwrap();
        check("replication_queue_bytes_max = 68719476736").unwrap();
        check("replication_inflight_max = 1024").unwrap();
        check("quiesce_after_ms = 0").unwrap();
        check("quiesce_after_ms = 100").unwrap();
        let cases = [
            (
                "replication_batch_bytes_max = 4194303",
                "cluster.replication_batch_bytes_max",
            ),
            (
                "replication_batch_bytes_max = 1073741825",
                "cluster.replication_batch_bytes_max",
            ),
            (
                "replication_queue_depth_max = 0",
                "cluster.replication_queue_depth_max",
            ),
            (
                "replication_queue_depth_max = 1048577",
                "cluster.replication_queue_depth_max",
            ),
            (
                "replication_queue_bytes_max = 1048575",
                "cluster.replication_queue_bytes_max",
            ),
            (
                "replication_queue_bytes_max = 68719476737",
                "cluster.replication_queue_bytes_max",
            ),
            (
                "replication_inflight_max = 0",
                "cluster.replication_inflight_max",
            ),
            (
                "replication_inflight_max = 1025",
                "cluster.replication_inflight_max",
            ),
            (
                "replication_cache_bytes_max = 1073741825",
                "cluster.replication_cache_bytes_max",
            ),
            (
                "raft_payload_entries_max = 0",
                "cluster.raft_payload_entries_max",
            ),
            (
                "raft_payload_entries_max = 65537",
                "cluster.raft_payload_entries_max",
            ),
            ("quiesce_after_ms = 99", "cluster.quiesce_after_ms"),
            ("quiesce_after_ms = 86400001", "cluster.quiesce_after_ms"),
        ];
        for (text, key) in cases {
            let err = refused(text);
            assert_eq!(err.key, key, "{text}");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        for text in ["nodeid = 1", "[[peers]]\nid = 2\naddr = \"a:1\"\nport = 3"] {
            let err = toml::from_str::<ClusterConfig>(text).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }
}
