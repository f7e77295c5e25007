//! Admin calls: create, delete, list and describe topics, truncate a partition, and
//! describe the cluster.
//!
//! The cluster is what `[cluster]` says (static membership, until gossip). In a cluster a
//! creation is placed on every node (`cluster::placement`, then `Replication/PlaceTopic` to
//! each peer) and a deletion reaches every node; a solo partition's leader is this node at
//! epoch 0, a replicated one's is whoever its group names, at its term.
//!
//! Each is checked (running, topic name, ACL) before the shard set is called; creation is
//! bounded by `server.partitions_per_topic_max` here and `server.topics_max` in the shard
//! set (under its admin lock). Must never change a topic other than the one named.

use tonic::Request;

use super::acl::Action;
use super::errors::{Error, Result};
use super::service::{Inner, peer_addr};
use crate::cluster::peers::{PeerAdmin, PeerError};
use crate::cluster::placement;
use crate::observability;
use crate::proto::v1 as pb;
use crate::proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeClusterResponse, DescribeTopicRequest, DescribeTopicResponse, ListTopicsResponse,
    NodeInfo, PartitionInfo, TopicInfo, TruncateRequest, TruncateResponse,
};
use crate::shard;

/// The partition count a creation asks for: 0 is the default; above `max` is refused.
fn partitions_for(asked: u32, default: u32, max: u32) -> Result<u32> {
    if asked > max {
        return Err(Error::invalid(format!(
            "{asked} partitions requested; a topic may have 1 to {max} \
             (server.partitions_per_topic_max), or 0 for the default of {default}"
        )));
    }
    Ok(if asked == 0 { default } else { asked })
}

/// Checks a creation's replication factor (0: the cluster's default) against the nodes
/// known, and returns the factor to use.
fn replication_factor_for(asked: u32, default: u32, nodes: u32) -> Result<u32> {
    if asked > nodes {
        return Err(Error::invalid(format!(
            "replication_factor {asked} requested, but the cluster knows {nodes} node(s): \
             ask for 1 to {nodes}, or 0 for the cluster's default (cluster.replication_factor)"
        )));
    }
    Ok(if asked == 0 {
        default.min(nodes)
    } else {
        asked
    })
}

/// What one node answered to a topic's placement.
type Placed = std::result::Result<bool, String>;

/// The outcome of placing a topic on every node: created somewhere and failed nowhere is
/// success; existing everywhere is ALREADY_EXISTS; any failure names the nodes.
fn placement_outcome(topic: &str, answers: &[(u64, Placed)]) -> Result<()> {
    if let Some(failed) = failures(answers) {
        let done: Vec<u64> = answers
            .iter()
            .filter(|(_, a)| a.is_ok())
            .map(|(node, _)| *node)
            .collect();
        return Err(Error::Cluster {
            message: format!(
                "topic {topic:?} is placed on nodes {done:?} but not everywhere ({failed}); \
                 retry CreateTopic once the nodes are up: it completes the placement"
            ),
        });
    }
    if answers.iter().all(|(_, a)| matches!(a, Ok(false))) {
        return Err(shard::Error::TopicExists {
            topic: topic.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// The nodes that failed a cluster-wide call, each with why (`None` when none did).
fn failures(answers: &[(u64, Placed)]) -> Option<String> {
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(node, a)| a.as_ref().err().map(|e| format!("node {node}: {e}")))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

impl Inner {
    /// Creates `topic` with `partitions` partitions (0: the default), within `topics_max`:
    /// on this node alone, or in a cluster on every node with the same placement.
    pub(super) async fn create_topic(
        &self,
        topic: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<u32> {
        let partitions = partitions_for(
            partitions,
            self.default_partitions,
            self.config.server.partitions_per_topic_max,
        )?;
        let cluster = &self.config.cluster;
        let factor = replication_factor_for(
            replication_factor,
            cluster.effective_replication_factor(),
            cluster.node_count(),
        )?;
        if let Some(peers) = &self.peers {
            let membership = peers.membership();
            let replicas = placement::place(topic, partitions, factor, &membership.ids());
            let request = pb::PlaceTopicRequest {
                name: topic.to_owned(),
                partitions,
                replicas: replicas
                    .iter()
                    .map(|nodes| pb::ReplicaSet {
                        nodes: nodes.clone(),
                    })
                    .collect(),
            };
            let node_id = u64::from(membership.node_id);
            let calls = membership.ids().into_iter().map(|node| {
                let request = request.clone();
                async move {
                    let placed = if node == node_id {
                        self.place_topic(request, true)
                            .await
                            .map_err(|e| e.to_string())
                    } else {
                        peers
                            .place_topic(node, request)
                            .await
                            .map_err(|e| e.to_string())
                    };
                    (node, placed)
                }
            });
            let answers = futures::future::join_all(calls).await;
            placement_outcome(topic, &answers)?;
            return Ok(partitions);
        }
        // `topics_max` is checked by the shard set under its admin lock (passed in its
        // options), so concurrent creations cannot pass it.
        self.create_local(topic, partitions, Vec::new(), true)
            .await
            .map(|()| partitions)
    }

    /// Creates this node's replicas of a topic placed by the node asked (this one or
    /// another): `Ok(false)` when it exists here already with the same layout. `new_group`
    /// as for `ShardSet::create_topic_on`.
    pub(super) async fn place_topic(
        &self,
        request: pb::PlaceTopicRequest,
        new_group: bool,
    ) -> Result<bool> {
        let replicas: Vec<Vec<u64>> = request.replicas.into_iter().map(|r| r.nodes).collect();
        if replicas.len() != request.partitions as usize {
            return Err(Error::invalid(format!(
                "{} replica sets for {} partitions",
                replicas.len(),
                request.partitions
            )));
        }
        match self
            .create_local(
                &request.name,
                request.partitions,
                replicas.clone(),
                new_group,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(Error::Shard(shard::Error::TopicExists { topic })) => {
                let here = self.shards.replicas_of(&topic)?;
                if here == replicas {
                    Ok(false)
                } else {
                    Err(Error::Cluster {
                        message: format!(
                            "topic {topic:?} exists on this node with replicas {here:?}, not \
                             {replicas:?}; delete it first"
                        ),
                    })
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn create_local(
        &self,
        topic: &str,
        partitions: u32,
        replicas: Vec<Vec<u64>>,
        new_group: bool,
    ) -> Result<()> {
        match self
            .shards
            .create_topic_on(topic, partitions, replicas, new_group)
            .await
        {
            Ok(()) => Ok(()),
            Err(shard::Error::TooManyTopics { topics, max }) => Err(Error::OverLimit {
                what: "the number of topics",
                value: topics,
                key: "server.topics_max",
                max,
                hint: "delete a topic first",
            }),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn truncate(
        &self,
        request: &Request<()>,
        truncate: &TruncateRequest,
    ) -> Result<TruncateResponse> {
        self.check_running()?;
        self.check_topic_name(&truncate.topic)?;
        self.authorize(request, Action::Admin, &truncate.topic)?;
        let start_offset = self
            .shards
            .truncate(&truncate.topic, truncate.partition, truncate.before_offset)
            .await?;
        Ok(TruncateResponse { start_offset })
    }

    pub(super) async fn create(
        &self,
        request: &Request<()>,
        create: &CreateTopicRequest,
    ) -> Result<CreateTopicResponse> {
        self.check_running()?;
        self.check_topic_name(&create.name)?;
        let principal = self.authorize(request, Action::Admin, &create.name)?;
        let partitions = self
            .create_topic(&create.name, create.partitions, create.replication_factor)
            .await?;
        tracing::info!(topic = create.name, partitions, identity = %principal, "topic created");
        Ok(CreateTopicResponse {
            name: create.name.clone(),
            partitions,
        })
    }

    pub(super) async fn delete(
        &self,
        request: &Request<()>,
        delete: &DeleteTopicRequest,
    ) -> Result<DeleteTopicResponse> {
        self.check_running()?;
        self.check_topic_name(&delete.name)?;
        let principal = self.authorize(request, Action::Admin, &delete.name)?;
        match &self.peers {
            None => self.shards.delete_topic(&delete.name).await?,
            Some(peers) => self.delete_everywhere(peers, &delete.name).await?,
        }
        observability::topic_deleted(&delete.name);
        tracing::info!(topic = delete.name, identity = %principal, "topic deleted");
        Ok(DeleteTopicResponse {})
    }

    /// Every topic this node knows, with its placement (for a peer that rejoins).
    pub(super) fn placements(&self) -> Vec<pb::PlaceTopicRequest> {
        self.shards
            .list_topics()
            .into_iter()
            .filter_map(|t| {
                let replicas = self.shards.replicas_of(&t.name).ok()?;
                Some(pb::PlaceTopicRequest {
                    name: t.name,
                    partitions: t.partitions,
                    replicas: replicas
                        .into_iter()
                        .map(|nodes| pb::ReplicaSet { nodes })
                        .collect(),
                })
            })
            .collect()
    }

    /// Re-creates the topics this node should hold and lacks, from the first peer that
    /// answers: after a wiped data dir, or when this node was down at a CreateTopic. Their
    /// groups exist already, so these replicas catch up before they vote. Returns how many
    /// topics were re-created, or `None` when no peer answered.
    pub(super) async fn rejoin_topics(&self) -> Option<usize> {
        let peers = self.peers.as_ref()?;
        let me = u64::from(peers.membership().node_id);
        for peer in peers.membership().peers() {
            let placements = match peers.list_placements(u64::from(peer.id)).await {
                Ok(placements) => placements,
                Err(e) => {
                    tracing::debug!(error = %e, "asking a peer for its topics");
                    continue;
                }
            };
            let mut rejoined = 0;
            for placement in placements {
                let holds = placement.replicas.iter().any(|r| r.nodes.contains(&me));
                if !holds || self.shards.replicas_of(&placement.name).is_ok() {
                    continue;
                }
                let name = placement.name.clone();
                match self.place_topic(placement, false).await {
                    Ok(_) => {
                        rejoined += 1;
                        tracing::info!(
                            topic = name,
                            from = peer.id,
                            "topic re-created here to rejoin its groups"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(topic = name, error = %e, "re-creating a topic to rejoin its groups")
                    }
                }
            }
            return Some(rejoined);
        }
        None
    }

    /// Deletes a topic on every node: NOT_FOUND when no node had it; a node that could not
    /// be reached is named (the topic is gone wherever it was reached).
    async fn delete_everywhere(&self, peers: &PeerAdmin, name: &str) -> Result<()> {
        let node_id = u64::from(peers.membership().node_id);
        let calls = peers.membership().ids().into_iter().map(|node| async move {
            let dropped = if node == node_id {
                match self.shards.delete_topic(name).await {
                    Ok(()) => Ok(true),
                    Err(shard::Error::UnknownTopic { .. }) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                match peers.drop_topic(node, name).await {
                    Ok(()) => Ok(true),
                    Err(PeerError::Refused { status, .. })
                        if status.code() == tonic::Code::NotFound =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e.to_string()),
                }
            };
            (node, dropped)
        });
        let answers = futures::future::join_all(calls).await;
        if let Some(failed) = failures(&answers) {
            return Err(Error::Cluster {
                message: format!(
                    "topic {name:?} was not deleted everywhere ({failed}); retry DeleteTopic \
                     once the nodes are up"
                ),
            });
        }
        if answers.iter().all(|(_, a)| matches!(a, Ok(false))) {
            return Err(shard::Error::UnknownTopic {
                topic: name.to_owned(),
            }
            .into());
        }
        Ok(())
    }

    /// The topics the caller may use in any way, sorted by name.
    pub(super) fn list(&self, request: &Request<()>) -> Result<ListTopicsResponse> {
        self.check_running()?;
        let principal = self.principal(request)?;
        let mut topics: Vec<TopicInfo> = self
            .shards
            .list_topics()
            .into_iter()
            .filter(|t| self.acl.authorize_any(&principal, &t.name))
            .map(|t| TopicInfo {
                name: t.name,
                partitions: t.partitions,
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ListTopicsResponse { topics })
    }

    pub(super) async fn describe(
        &self,
        request: &Request<()>,
        describe: &DescribeTopicRequest,
    ) -> Result<DescribeTopicResponse> {
        self.check_running()?;
        self.check_topic_name(&describe.name)?;
        let principal = self.principal(request)?;
        if !self.acl.authorize_any(&principal, &describe.name) {
            observability::authorization_denied(principal.name());
            tracing::warn!(
                peer = %peer_addr(request),
                identity = %principal,
                topic = describe.name,
                "describe denied by the ACL"
            );
            return Err(Error::Denied {
                principal,
                action: Action::Consume,
                topic: describe.name.clone(),
            });
        }
        let description = self.shards.describe_topic(&describe.name).await?;
        observability::topic_disk_usage(&super::metrics::disk_usage(&description));
        // A solo partition is led by this node at epoch 0; outside a cluster (node_id 0) it
        // has no node id to report. A replicated one reports what its group knows.
        let node_id = self.config.cluster.node_id;
        Ok(DescribeTopicResponse {
            name: description.name,
            partitions: description
                .partitions
                .into_iter()
                .map(|p| {
                    let (leader, replicas) = if p.replicas.is_empty() {
                        let solo = if node_id == 0 { vec![] } else { vec![node_id] };
                        (node_id, solo)
                    } else {
                        let replicas = p.replicas.iter().map(|&r| r as u32).collect();
                        (p.leader.map_or(0, |l| l as u32), replicas)
                    };
                    PartitionInfo {
                        id: p.id,
                        start_offset: p.start_offset,
                        end_offset: p.end_offset,
                        high_watermark: p.high_watermark,
                        shard: p.shard,
                        leader,
                        replicas,
                        leader_epoch: p.leader_epoch,
                    }
                })
                .collect(),
        })
    }
}

impl Inner {
    /// The static membership of `[cluster]`: this node and its peers, sorted by id. Any
    /// authenticated caller may ask, as for ListTopics; nothing here is secret beyond what
    /// a client must know to find a partition's leader.
    pub(super) fn describe_cluster(
        &self,
        request: &Request<()>,
    ) -> Result<DescribeClusterResponse> {
        self.check_running()?;
        self.principal(request)?;
        let node_id = self.config.cluster.node_id;
        let nodes = self
            .config
            .cluster_nodes()
            .into_iter()
            .map(|node| NodeInfo {
                // This node answers, so it is alive; a peer is alive when this node's
                // replication link to it is connected (gossip, issue 11, will say more).
                alive: node.id == node_id
                    || self
                        .peers
                        .as_ref()
                        .is_some_and(|peers| peers.is_up(u64::from(node.id))),
                id: node.id,
                addr: node.addr,
            })
            .collect();
        Ok(DescribeClusterResponse {
            node_id,
            nodes,
            // No controller group yet: none known.
            controller: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_partitions_is_the_default() {
        assert_eq!(partitions_for(0, 4, 16).unwrap(), 4);
        assert_eq!(partitions_for(16, 4, 16).unwrap(), 16);
    }

    #[test]
    fn a_replication_factor_beyond_the_nodes_known_is_refused() {
        assert_eq!(replication_factor_for(0, 1, 1).unwrap(), 1);
        assert_eq!(replication_factor_for(1, 3, 1).unwrap(), 1);
        assert_eq!(replication_factor_for(0, 3, 3).unwrap(), 3);
        assert_eq!(replication_factor_for(2, 3, 3).unwrap(), 2);
        let e = replication_factor_for(2, 1, 1).unwrap_err();
        assert!(e.to_string().contains("cluster.replication_factor"), "{e}");
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_placement_succeeds_only_when_every_node_has_it() {
        let ok = |created| Ok(created);
        placement_outcome("t", &[(1, ok(true)), (2, ok(false))]).unwrap();
        let exists = placement_outcome("t", &[(1, ok(false)), (2, ok(false))]).unwrap_err();
        assert_eq!(
            tonic::Status::from(exists).code(),
            tonic::Code::AlreadyExists
        );
        let e = placement_outcome("t", &[(1, ok(true)), (2, Err("down".to_owned()))]).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("node 2: down") && message.contains("[1]"),
            "{message}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::Unavailable);
    }

    #[test]
    fn over_the_limit_is_refused_naming_the_key() {
        let e = partitions_for(17, 4, 16).unwrap_err();
        assert!(
            e.to_string().contains("server.partitions_per_topic_max"),
            "{e}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}
