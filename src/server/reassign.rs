//! Moving replicas: `ReassignPartition` (one partition to a replica set the operator names)
//! and `DecommissionNode` (every replica off one node, to the least loaded others).
//!
//! Both only record the moves in the controller's metadata log (`cluster::metadata`:
//! `PartitionReassigned`, `NodeDecommissioned`) and answer once this node applied them; the
//! moves themselves are made by each partition's leader (`server::mover`) while the
//! partition keeps taking appends. DescribeTopic shows a moving partition's old and new
//! replicas together, and only the new ones once it is done.
//!
//! Each request is checked (running, names, ACL, a cluster, the nodes exist, the partition is
//! replicated and not moving already) before anything is recorded. Must never: record a
//! move that leaves a partition with fewer than 2 replicas, or on a decommissioned node.

use tonic::Request;

use super::acl::Action;
use super::controller::Controller;
use super::errors::{Error, Result};
use super::service::Inner;
use crate::cluster::metadata::{self, MetadataView, Move};
use crate::proto::v1::{
    DecommissionNodeRequest, DecommissionNodeResponse, PartitionMove, ReassignPartitionRequest,
    ReassignPartitionResponse,
};
use crate::shard;

fn to_u32(nodes: &[u64]) -> Vec<u32> {
    nodes
        .iter()
        .map(|&n| u32::try_from(n).expect("node ids are u32 in the config"))
        .collect()
}

impl Inner {
    fn controller_for(&self, what: &str) -> Result<&Controller> {
        self.controller
            .as_deref()
            .ok_or_else(|| Error::Precondition {
                message: format!(
                    "{what} moves replicas between the nodes of a cluster; this node runs alone \
                 (no [cluster] section)"
                ),
            })
    }

    pub(super) async fn reassign(
        &self,
        request: &Request<()>,
        reassign: &ReassignPartitionRequest,
    ) -> Result<ReassignPartitionResponse> {
        self.check_running()?;
        self.check_topic_name(&reassign.topic)?;
        let principal = self.authorize(request, Action::Admin, &reassign.topic)?;
        let controller = self.controller_for("ReassignPartition")?;
        let view = controller.view();
        let (topic, partition) = (reassign.topic.as_str(), reassign.partition);
        let replicas: Vec<u64> = reassign.replicas.iter().map(|&n| u64::from(n)).collect();
        let (incarnation, previous) = check_move(&view, topic, partition)?;
        let nodes = self.cluster_nodes();
        metadata::check_replica_set(&replicas, &nodes).map_err(Error::invalid)?;
        if let Some(&node) = replicas
            .iter()
            .find(|&&n| view.is_decommissioned(n) && !previous.contains(&n))
        {
            return Err(Error::invalid(format!(
                "node {node} is decommissioned: no replica is placed on it"
            )));
        }
        if previous == replicas {
            return Ok(ReassignPartitionResponse {
                previous: to_u32(&previous),
            });
        }
        let record =
            metadata::partition_reassigned(topic, incarnation, partition, replicas.clone());
        self.record_moves(controller, vec![record]).await?;
        tracing::info!(topic, partition, ?previous, ?replicas, identity = %principal, "partition reassignment recorded");
        Ok(ReassignPartitionResponse {
            previous: to_u32(&previous),
        })
    }

    pub(super) async fn decommission(
        &self,
        request: &Request<()>,
        decommission: &DecommissionNodeRequest,
    ) -> Result<DecommissionNodeResponse> {
        self.check_running()?;
        // Every topic's replicas may move: the caller needs `admin` on all of them.
        let principal = self.authorize(request, Action::Admin, "*")?;
        let controller = self.controller_for("DecommissionNode")?;
        let node = u64::from(decommission.node);
        let nodes = self.cluster_nodes();
        if !nodes.contains(&node) {
            return Err(Error::invalid(format!(
                "node {node} is not a node of the cluster {nodes:?}"
            )));
        }
        if controller.voters().contains(&node) {
            return Err(Error::Precondition {
                message: format!(
                    "node {node} is a voter of the controller's metadata log {:?}; changing \
                     the controller's voters is not supported, so it cannot be decommissioned",
                    controller.voters()
                ),
            });
        }
        let view = controller.view();
        let targets: Vec<u64> = nodes
            .iter()
            .copied()
            .filter(|&n| n != node && !view.is_decommissioned(n))
            .collect();
        let moves = plan_decommission(&view, node, &targets)?;
        let mut records = vec![metadata::node_decommissioned(node)];
        records.extend(moves.iter().map(|m| {
            metadata::partition_reassigned(&m.topic, m.incarnation, m.partition, m.replicas.clone())
        }));
        self.record_moves(controller, records).await?;
        tracing::info!(node, moves = moves.len(), identity = %principal, "node decommission recorded");
        Ok(DecommissionNodeResponse {
            moves: moves
                .into_iter()
                .map(|m| PartitionMove {
                    topic: m.topic,
                    partition: m.partition,
                    replicas: to_u32(&m.replicas),
                })
                .collect(),
        })
    }

    /// The cluster's node ids.
    fn cluster_nodes(&self) -> Vec<u64> {
        self.peers
            .as_ref()
            .map(|peers| peers.membership().ids())
            .unwrap_or_default()
    }

    /// Proposes `records` in order and waits until this node applied the last.
    async fn record_moves(
        &self,
        controller: &Controller,
        records: Vec<crate::proto::v1::MetadataRecord>,
    ) -> Result<()> {
        let mut last = 0;
        for record in records {
            last = controller.propose(record).await?;
        }
        let wait = controller.wait();
        if controller.wait_applied(last + 1, wait).await <= last {
            return Err(Error::Cluster {
                message: format!(
                    "the move was recorded by the controller but this node has not applied \
                     it within {wait:?}; it will: describe the topic in a moment"
                ),
            });
        }
        Ok(())
    }
}

/// Checks that `topic`'s partition `partition` may move: its incarnation and its replicas
/// now.
fn check_move(view: &MetadataView, topic: &str, partition: u32) -> Result<(u64, Vec<u64>)> {
    let placed = view
        .topic(topic)
        .ok_or_else(|| shard::Error::UnknownTopic {
            topic: topic.to_owned(),
        })?;
    if partition >= placed.partitions {
        return Err(shard::Error::UnknownPartition {
            topic: topic.to_owned(),
            partition,
            partitions: placed.partitions,
        }
        .into());
    }
    let previous = placed.replicas[partition as usize].clone();
    if placed.moving.contains_key(&partition) {
        return Err(Error::Precondition {
            message: format!(
                "partition {topic}/{partition} is already moving to {previous:?}; wait until \
                 DescribeTopic shows only those replicas, then reassign it again"
            ),
        });
    }
    if previous.len() < 2 {
        return Err(shard::Error::NotReplicated {
            topic: topic.to_owned(),
            partition,
        }
        .into());
    }
    Ok((placed.incarnation, previous))
}

/// For every partition `node` holds, its replicas with `node` replaced by the node of
/// `targets` that holds the fewest replicas (counting the moves planned so far) and is not
/// a replica of it yet. The preferred leader keeps its place unless it is `node`.
pub(super) fn plan_decommission(
    view: &MetadataView,
    node: u64,
    targets: &[u64],
) -> Result<Vec<Move>> {
    let mut load = view.load();
    let mut moves = Vec::new();
    for (name, placed) in view.topics() {
        for p in 0..placed.partitions {
            let replicas = &placed.replicas[p as usize];
            if !replicas.contains(&node) {
                continue;
            }
            if placed.moving.contains_key(&p) {
                return Err(Error::Precondition {
                    message: format!(
                        "partition {name}/{p} is moving; wait until its move is done, then \
                         decommission node {node} again"
                    ),
                });
            }
            let replacement = targets
                .iter()
                .copied()
                .filter(|t| !replicas.contains(t))
                .min_by_key(|t| (load.get(t).map_or(0, |l| l.0), *t))
                .ok_or_else(|| Error::Precondition {
                    message: format!(
                        "partition {name}/{p} has replicas {replicas:?} and no other node can \
                         take node {node}'s place; add a node first"
                    ),
                })?;
            load.entry(replacement).or_default().0 += 1;
            let new: Vec<u64> = replicas
                .iter()
                .map(|&r| if r == node { replacement } else { r })
                .collect();
            moves.push(Move {
                topic: name.to_owned(),
                incarnation: placed.incarnation,
                partition: p,
                replicas: new,
            });
        }
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decommission_replaces_the_node_by_the_least_loaded_other() {
        let mut view = MetadataView::default();
        view.apply(
            0,
            &metadata::topic_created("t", vec![vec![1, 2, 3], vec![3, 1, 2], vec![1, 2, 4]], 1, 0),
        );
        let moves = plan_decommission(&view, 3, &[1, 2, 4]).unwrap();
        let moved: Vec<(u32, Vec<u64>)> = moves
            .into_iter()
            .map(|m| (m.partition, m.replicas))
            .collect();
        assert_eq!(moved, vec![(0, vec![1, 2, 4]), (1, vec![4, 1, 2])]);
        // Nowhere to go: every other node holds the partition already.
        assert!(plan_decommission(&view, 3, &[1, 2]).is_err());
    }
}
