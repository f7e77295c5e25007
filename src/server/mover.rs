//! Partition moves (reassignments), as each node drives them: for every partition the
//! metadata log says is moving, the replica that leads it changes its group's voters to the
//! new replicas, then records the move as done (`cluster::metadata`, `ReassignCompleted`).
//!
//! Every node runs the same loop; only a partition's leader can change its group, so the
//! others' attempts are refused at once (`NotLeader`) and cost a local call. A leader change
//! mid-move needs nothing special: the next leader finds the move still open in the log and
//! finishes it (a change already made answers at once). The new replicas were opened, empty,
//! by the controller's reconciliation as soon as the move was recorded; the old ones close
//! once the completion is applied.
//!
//! With `[cluster] replace_after_ms`, the controller leader also re-creates elsewhere the
//! replicas of a node the failure detector has held dead that long: it records one
//! reassignment per partition the node holds, replacing it as a decommission would (but
//! the node may take new replicas again once it is back).
//!
//! Owns: the loop, the bound on one attempt ([`Mover::attempt`]), and the dead nodes' clocks.
//! Must never: change a partition's voters other than to what the log says, or record a
//! completion before its group holds exactly the new voters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::controller::Controller;
use crate::cluster::gossip::Gossip;
use crate::cluster::metadata;
use crate::shard::{self, ShardSet};

/// Drives the moves of the metadata log on this node.
pub(super) struct Mover {
    controller: Arc<Controller>,
    shards: ShardSet,
    /// How long one attempt at one move may take, catching up included; a move that needs
    /// longer (a large partition) goes on from where it got at the next attempt, since the
    /// learners keep their log.
    attempt: Duration,
    /// The pause between two passes while moves are open (or dead nodes are watched).
    pause: Duration,
    /// `replace_after_ms` (none: never), and gossip's word on who is alive.
    replace: Option<(Duration, Arc<Gossip>)>,
    /// Since when each node has been seen dead (the controller leader's watch).
    dead_since: HashMap<u32, Instant>,
}

impl Mover {
    pub(super) fn new(
        controller: Arc<Controller>,
        shards: ShardSet,
        attempt: Duration,
        pause: Duration,
    ) -> Mover {
        Mover {
            controller,
            shards,
            attempt,
            pause,
            replace: None,
            dead_since: HashMap::new(),
        }
    }

    /// Also re-creates the replicas of a node dead for `after` elsewhere.
    pub(super) fn replacing_after(mut self, after: Duration, gossip: Arc<Gossip>) -> Mover {
        self.replace = Some((after, gossip));
        self
    }

    /// Passes over the open moves until the server drains: at once when the view changes,
    /// every `pause` while moves are open.
    pub(super) async fn run(mut self, mut draining: watch::Receiver<bool>) {
        let mut applied = self.controller.applied_changes();
        loop {
            if *draining.borrow() {
                return;
            }
            let moves = self.controller.view().moves();
            if !moves.is_empty() {
                let passes = moves.into_iter().map(|m| self.drive(m));
                futures::future::join_all(passes).await;
            }
            self.replace_dead().await;
            let open = !self.controller.view().moves().is_empty() || self.replace.is_some();
            tokio::select! {
                () = tokio::time::sleep(self.pause), if open => {}
                _ = applied.changed() => {}
                _ = draining.changed() => {}
            }
        }
    }

    /// On the controller leader: records the moves that re-create, elsewhere, the replicas
    /// of every node dead for longer than `replace_after_ms`.
    async fn replace_dead(&mut self) {
        let Some((after, gossip)) = &self.replace else {
            return;
        };
        let now = Instant::now();
        let members = gossip.members();
        for member in &members {
            if member.alive {
                self.dead_since.remove(&member.id);
            } else {
                self.dead_since.entry(member.id).or_insert(now);
            }
        }
        let me = self.controller.node_id();
        if self.controller.leader().await != me {
            return;
        }
        let alive: Vec<u64> = members
            .iter()
            .filter(|m| m.is_available())
            .map(|m| u64::from(m.id))
            .chain(std::iter::once(me))
            .collect();
        let view = self.controller.view();
        let overdue: Vec<u32> = self
            .dead_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= *after)
            .map(|(&id, _)| id)
            .collect();
        for node in overdue {
            let node = u64::from(node);
            let targets: Vec<u64> = alive
                .iter()
                .copied()
                .filter(|&n| n != node && !view.is_decommissioned(n))
                .collect();
            let moves = match super::reassign::plan_decommission(&view, node, &targets) {
                Ok(moves) if moves.is_empty() => continue,
                Ok(moves) => moves,
                Err(e) => {
                    tracing::debug!(node, error = %e, "replicas of a dead node cannot be re-created yet");
                    continue;
                }
            };
            tracing::warn!(node, dead_for = ?*after, moves = moves.len(), "a node stayed dead past cluster.replace_after_ms: its replicas are re-created on other nodes");
            for m in moves {
                let record = metadata::partition_reassigned(
                    &m.topic,
                    m.incarnation,
                    m.partition,
                    m.replicas,
                );
                if let Err(e) = self.controller.propose(record).await {
                    tracing::warn!(node, error = %e, "recording the replacement of a dead node's replica; tried again");
                    return;
                }
            }
        }
    }

    /// One attempt at one move: change the voters when this replica leads, then record the
    /// completion.
    async fn drive(&self, m: metadata::Move) {
        let metadata::Move {
            topic,
            incarnation,
            partition,
            replicas,
        } = m;
        // A replica of another incarnation, or none here: not this node's to drive.
        if self.shards.incarnation_of(&topic).ok() != Some(incarnation) {
            return;
        }
        let changed = tokio::time::timeout(
            self.attempt,
            self.shards
                .change_voters(&topic, partition, replicas.clone()),
        )
        .await;
        match changed {
            Ok(Ok(())) => {}
            Ok(Err(shard::Error::NotLeader { .. } | shard::Error::NotReplica { .. })) => return,
            Ok(Err(e)) => {
                tracing::warn!(topic, partition, ?replicas, error = %e, "a partition move did not go through; it is tried again");
                return;
            }
            Err(_) => {
                tracing::info!(topic, partition, ?replicas, attempt = ?self.attempt, "a partition move is still catching up its new replicas; it goes on");
                return;
            }
        }
        let record = metadata::reassign_completed(&topic, incarnation, partition, replicas.clone());
        match self.controller.propose(record).await {
            Ok(offset) => {
                tracing::info!(
                    topic,
                    partition,
                    ?replicas,
                    offset,
                    "partition move completed"
                );
            }
            Err(e) => {
                tracing::warn!(topic, partition, error = %e, "recording a completed partition move; it is tried again");
            }
        }
    }
}
