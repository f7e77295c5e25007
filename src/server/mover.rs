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
//! Owns: the loop, and the bound on one attempt ([`Mover::attempt`]).
//! Must never: change a partition's voters other than to what the log says, or record a
//! completion before its group holds exactly the new voters.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::controller::Controller;
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
    /// The pause between two passes while moves are open.
    pause: Duration,
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
        }
    }

    /// Passes over the open moves until the server drains: at once when the view changes,
    /// every `pause` while moves are open.
    pub(super) async fn run(self, mut draining: watch::Receiver<bool>) {
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
            let open = !self.controller.view().moves().is_empty();
            tokio::select! {
                () = tokio::time::sleep(self.pause), if open => {}
                _ = applied.changed() => {}
                _ = draining.changed() => {}
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
