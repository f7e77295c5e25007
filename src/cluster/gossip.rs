//! Gossip membership: which nodes are alive and where they serve, by chitchat (UDP,
//! scuttlebutt anti-entropy, a phi-accrual failure detector).
//!
//! Each node gossips its own state, and nothing more: key `grpc` (the address it serves
//! gRPC at) and key `state` (`joining` until it serves, then `alive`, `leaving` once it
//! drains). Its chitchat id is `node-<id>`, with the start time as generation, so a
//! restarted node supersedes its old self. Gossip never carries the partition map (the
//! controller's log does) and never decides leadership (each Raft group does).
//!
//! The failure detector's verdict: a node not heard from for about
//! `failure_detector_dead_after_ms` is dead (its phi threshold is that over the gossip
//! interval). Every change of verdict is logged once, and counted in
//! `walrs_gossip_members{state}`.
//!
//! Owns: the chitchat server and the table of members it feeds. Must never: dial a node
//! over gRPC or act on a verdict (the server and the Raft groups decide what a dead node
//! means). Gossip datagrams are neither authenticated nor encrypted: they say only who is
//! alive, which a node trusts no further than to report it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};

/// The chitchat cluster id every wal.rs node uses: nodes meet through their seeds.
const CLUSTER_ID: &str = "walrs";
/// The gossip keys of a node's state.
const KEY_GRPC: &str = "grpc";
const KEY_STATE: &str = "state";
/// How long a dead node's state is kept before chitchat forgets it (it stays in the
/// table, dead, until it gossips again).
const DEAD_NODE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a node says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Started, not serving yet.
    Joining,
    Alive,
    /// Draining: about to stop.
    Leaving,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Alive => "alive",
            NodeState::Leaving => "leaving",
        }
    }

    fn parse(text: &str) -> Option<NodeState> {
        match text {
            "joining" => Some(NodeState::Joining),
            "alive" => Some(NodeState::Alive),
            "leaving" => Some(NodeState::Leaving),
            _ => None,
        }
    }
}

/// One node as gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    /// Where it serves gRPC, as it says.
    pub grpc_addr: String,
    /// What it last said of itself.
    pub state: NodeState,
    /// The failure detector's verdict.
    pub alive: bool,
}

impl Member {
    /// Alive, and not leaving: a node to count on.
    pub fn is_available(&self) -> bool {
        self.alive && self.state != NodeState::Leaving
    }

    /// What to show of it: its own state while alive, else `dead`.
    pub fn verdict(&self) -> &'static str {
        if self.alive {
            self.state.as_str()
        } else {
            "dead"
        }
    }
}

/// How this node gossips.
#[derive(Debug, Clone)]
pub struct GossipOptions {
    pub node_id: u32,
    /// The UDP address to bind.
    pub listen: SocketAddr,
    /// The UDP address the others reach this node at.
    pub advertise: SocketAddr,
    /// This node's gRPC address, as it advertises it.
    pub grpc_addr: String,
    /// `host:port` gossip addresses to join through.
    pub seeds: Vec<String>,
    pub interval: Duration,
    /// Silence after which a node is declared dead.
    pub dead_after: Duration,
}

/// A running gossip member.
pub struct Gossip {
    handle: tokio::sync::Mutex<Option<ChitchatHandle>>,
    view: MembersView,
}

/// The table of members without the gossip server behind it: what a task that follows the
/// members holds (it does not keep gossip running). Cheap to clone.
#[derive(Clone)]
pub struct MembersView {
    members: Arc<RwLock<BTreeMap<u32, Member>>>,
    /// Bumped after every change of the table; closed when gossip stops.
    changes: tokio::sync::watch::Receiver<u64>,
}

impl MembersView {
    /// Every node gossip has heard of, by id.
    pub fn members(&self) -> Vec<Member> {
        let members = self.members.read().expect("members lock poisoned");
        members.values().cloned().collect()
    }

    /// Waits for the next change of the table: `false` once gossip has stopped.
    pub async fn changed(&mut self) -> bool {
        self.changes.changed().await.is_ok()
    }
}

/// `node-<id>` as chitchat's node id; the id back from it.
fn chitchat_node_id(id: u32) -> String {
    format!("{}{id}", crate::certs::NODE_PREFIX)
}

fn parse_node_id(text: &str) -> Option<u32> {
    text.strip_prefix(crate::certs::NODE_PREFIX)?
        .parse()
        .ok()
        .filter(|&id| id > 0)
}

impl Gossip {
    /// Binds the UDP socket and starts gossiping (a tokio task), as `joining`.
    pub async fn start(options: GossipOptions) -> Result<Gossip, String> {
        let generation = u64::try_from(crate::storage::now_ms()).unwrap_or(0);
        let chitchat_id = ChitchatId::new(
            chitchat_node_id(options.node_id),
            generation,
            options.advertise,
        );
        let interval_s = options.interval.as_secs_f64();
        let config = ChitchatConfig {
            chitchat_id,
            cluster_id: CLUSTER_ID.to_owned(),
            gossip_interval: options.interval,
            listen_addr: options.listen,
            seed_nodes: options.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: options.dead_after.as_secs_f64() / interval_s,
                sampling_window_size: 1000,
                // A silence past the verdict is not a sample of the usual interval.
                max_interval: options.dead_after,
                initial_interval: options.interval,
                dead_node_grace_period: DEAD_NODE_GRACE,
            },
            marked_for_deletion_grace_period: DEAD_NODE_GRACE,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let initial = vec![
            (KEY_GRPC.to_owned(), options.grpc_addr.clone()),
            (KEY_STATE.to_owned(), NodeState::Joining.as_str().to_owned()),
        ];
        let handle = chitchat::spawn_chitchat(config, initial, &UdpTransport)
            .await
            .map_err(|e| format!("gossip on UDP {}: {e:#}", options.listen))?;
        let members = Arc::new(RwLock::new(BTreeMap::new()));
        let (changed, changes) = tokio::sync::watch::channel(0);
        let watcher = handle.chitchat().lock().await.live_nodes_watcher();
        tokio::spawn(follow(watcher, members.clone(), changed, options.node_id));
        tracing::info!(listen = %options.listen, advertise = %options.advertise, seeds = ?options.seeds, "gossip started");
        Ok(Gossip {
            handle: tokio::sync::Mutex::new(Some(handle)),
            view: MembersView { members, changes },
        })
    }

    /// Says `state` of this node from now on.
    pub async fn announce(&self, state: NodeState) {
        if let Some(handle) = &*self.handle.lock().await {
            handle
                .with_chitchat(|c| c.self_node_state().set(KEY_STATE, state.as_str()))
                .await;
        }
    }

    /// Every node gossip has heard of, by id.
    pub fn members(&self) -> Vec<Member> {
        self.view.members()
    }

    /// The members' table, to follow it.
    pub fn view(&self) -> MembersView {
        self.view.clone()
    }

    /// Says `leaving`, lets one gossip round carry it, and stops.
    pub async fn leave(&self, interval: Duration) {
        self.announce(NodeState::Leaving).await;
        tokio::time::sleep(interval).await;
        if let Some(handle) = self.handle.lock().await.take()
            && let Err(e) = handle.shutdown().await
        {
            tracing::debug!(error = %e, "stopping gossip");
        }
    }
}

/// Keeps `members` equal to what chitchat says is live (and remembers the others as dead),
/// logging every change of verdict.
async fn follow(
    mut live: tokio::sync::watch::Receiver<BTreeMap<ChitchatId, chitchat::NodeState>>,
    members: Arc<RwLock<BTreeMap<u32, Member>>>,
    changed: tokio::sync::watch::Sender<u64>,
    node_id: u32,
) {
    loop {
        let now_live: BTreeMap<u32, (String, NodeState)> = live
            .borrow_and_update()
            .iter()
            .filter_map(|(cid, state)| {
                let id = parse_node_id(&cid.node_id)?;
                let grpc = state.get(KEY_GRPC).unwrap_or_default().to_owned();
                let said = state
                    .get(KEY_STATE)
                    .and_then(NodeState::parse)
                    .unwrap_or(NodeState::Joining);
                Some((id, (grpc, said)))
            })
            .collect();
        {
            let mut members = members.write().expect("members lock poisoned");
            for member in members.values_mut() {
                if member.alive && !now_live.contains_key(&member.id) {
                    member.alive = false;
                    tracing::warn!(
                        node = member.id,
                        addr = member.grpc_addr,
                        "node declared dead by the failure detector"
                    );
                }
            }
            for (id, (grpc_addr, state)) in now_live {
                let member = members.entry(id).or_insert_with(|| Member {
                    id,
                    grpc_addr: grpc_addr.clone(),
                    state,
                    alive: false,
                });
                if !member.alive && id != node_id {
                    tracing::info!(
                        node = id,
                        addr = grpc_addr,
                        state = state.as_str(),
                        "node alive (gossip)"
                    );
                }
                if member.state != state && id != node_id {
                    tracing::info!(
                        node = id,
                        from = member.state.as_str(),
                        to = state.as_str(),
                        "node changed state (gossip)"
                    );
                }
                *member = Member {
                    id,
                    grpc_addr,
                    state,
                    alive: true,
                };
            }
            crate::observability::gossip_members(members.values().map(Member::verdict));
        }
        changed.send_modify(|n| *n += 1);
        if live.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `gossip` says of node `id`'s liveness (`None`: never heard of it).
    fn is_alive(gossip: &Gossip, id: u32) -> Option<bool> {
        gossip
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.is_available())
    }

    #[test]
    fn node_ids_round_trip_and_others_are_ignored() {
        assert_eq!(parse_node_id(&chitchat_node_id(42)), Some(42));
        assert_eq!(parse_node_id("node-0"), None);
        assert_eq!(parse_node_id("other-1"), None);
        for state in [NodeState::Joining, NodeState::Alive, NodeState::Leaving] {
            assert_eq!(NodeState::parse(state.as_str()), Some(state));
        }
    }

    /// Three members on loopback find each other through one seed, and a member that
    /// stops gossiping is declared dead within the configured silence (plus rounds).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_meet_and_a_silent_one_is_declared_dead() {
        let interval = Duration::from_millis(50);
        let dead_after = Duration::from_millis(500);
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            })
            .collect();
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let gossip = Gossip::start(GossipOptions {
                node_id: i as u32 + 1,
                listen: addr,
                advertise: addr,
                grpc_addr: format!("127.0.0.1:{}", 7000 + i),
                seeds: vec![format!("127.0.0.1:{}", ports[0])],
                interval,
                dead_after,
            })
            .await
            .unwrap();
            gossip.announce(NodeState::Alive).await;
            nodes.push(gossip);
        }
        // Bounded by many times the detector's own timing, never a fixed sleep.
        let deadline = std::time::Instant::now() + dead_after * 40;
        let until = |what: &str, done: &dyn Fn() -> bool| {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            !done()
        };
        while until("all three alive everywhere", &|| {
            nodes
                .iter()
                .all(|n| (1..=3).all(|id| is_alive(n, id) == Some(true)))
        }) {
            tokio::time::sleep(interval).await;
        }
        let third = nodes.pop().unwrap();
        assert_eq!(nodes[0].members()[2].grpc_addr, "127.0.0.1:7002");
        // Stopped without a word: a crash, as the others see it.
        third
            .handle
            .lock()
            .await
            .take()
            .unwrap()
            .shutdown()
            .await
            .unwrap();
        while until("node 3 declared dead", &|| {
            nodes.iter().all(|n| is_alive(n, 3) == Some(false))
        }) {
            tokio::time::sleep(interval).await;
        }
        assert!(nodes.iter().all(|n| is_alive(n, 2) == Some(true)));
    }
}
