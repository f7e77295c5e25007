//! Admin calls: create, delete, list and describe topics, truncate a partition, and
//! describe the cluster.
//!
//! In a cluster, a creation or deletion is a record of the controller's metadata log
//! (`server::controller`): this node proposes it (placing the replicas with
//! `cluster::placement`, balanced against the topics that exist), waits until it has
//! applied it, and gives the other nodes a bounded time to apply it too. A solo partition's
//! leader is this node at epoch 0, a replicated one's is whoever its group names, at its term.
//!
//! Each is checked (running, topic name, ACL) before anything is changed; creation is
//! bounded by `server.partitions_per_topic_max` here and `server.topics_max` (here against
//! the metadata, and in the shard set under its admin lock). Must never change a topic other
//! than the one named.

use tonic::Request;

use super::acl::Action;
use super::controller::Controller;
use super::errors::{Error, Result};
use super::service::{Inner, peer_addr};
use super::validate::{partitions_for, replication_factor_for};
use crate::cluster::{metadata, placement};
use crate::observability;
use crate::proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeClusterResponse, DescribeTopicRequest, DescribeTopicResponse, ListTopicsResponse,
    NodeInfo, PartitionInfo, TopicInfo, TruncateRequest, TruncateResponse,
};
use crate::shard;

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
        if let Some(controller) = &self.controller {
            self.create_in_cluster(controller, topic, partitions, factor)
                .await?;
            return Ok(partitions);
        }
        // `topics_max` is checked by the shard set under its admin lock (passed in its
        // options), so concurrent creations cannot pass it.
        self.create_local(topic, partitions)
            .await
            .map(|()| partitions)
    }

    /// Creates a topic through the controller: proposes its placement, waits until this
    /// node applied it, and gives the other nodes [`Controller::wait`] to apply it.
    async fn create_in_cluster(
        &self,
        controller: &Controller,
        topic: &str,
        partitions: u32,
        factor: u32,
    ) -> Result<()> {
        let exists = || -> Error {
            shard::Error::TopicExists {
                topic: topic.to_owned(),
            }
            .into()
        };
        let view = controller.view();
        // A topic made before the controller is known to the shards only.
        if view.topic(topic).is_some() || self.shards.partitions_of(topic).is_ok() {
            return Err(exists());
        }
        let max = u64::from(self.config.server.topics_max);
        let topics = view.topic_count() as u64;
        if topics >= max {
            return Err(Error::OverLimit {
                what: "the number of topics",
                value: topics,
                key: "server.topics_max",
                max,
                hint: "delete a topic first",
            });
        }
        let nodes: Vec<u64> = self
            .placeable_nodes(factor)
            .into_iter()
            .filter(|&n| !view.is_decommissioned(n))
            .collect();
        if nodes.len() < factor as usize {
            return Err(Error::invalid(format!(
                "replication_factor {factor} requested, but only nodes {nodes:?} may take \
                 replicas (the others are decommissioned): ask for fewer"
            )));
        }
        let replicas = placement::place(topic, partitions, factor, &nodes, &view.load());
        let request_id = rand::random::<u64>().max(1);
        let record = metadata::topic_created(topic, replicas, request_id, view.applied());
        let offset = controller.propose(record).await?;
        let wait = controller.wait_to_open(partitions);
        if controller.wait_applied(offset + 1, wait).await <= offset {
            return Err(Error::Cluster {
                message: format!(
                    "topic {topic:?} was recorded by the controller but this node has not \
                     applied it within {wait:?}; it will: describe the topic in a moment"
                ),
            });
        }
        let view = controller.view();
        match view.topic(topic) {
            Some(placed) if placed.request_id == request_id => {}
            Some(_) => return Err(exists()),
            // Made, then deleted by another request before this one returned: the creation
            // took effect, and so did the deletion after it.
            None if view
                .deletion(topic)
                .is_some_and(|d| d.request_id == request_id) =>
            {
                tracing::info!(
                    topic,
                    "a topic created here was deleted before its creation returned"
                );
            }
            // Not UNAVAILABLE: a client that retried on its own would undo the deletion.
            None => {
                return Err(Error::Precondition {
                    message: format!(
                        "topic {topic:?} was not created: another request deleted that name \
                         while this creation was in flight; describe the topic, then retry"
                    ),
                });
            }
        }
        controller.sync_everywhere(offset + 1, wait).await;
        Ok(())
    }

    /// The nodes a new topic's replicas may go to: the members this node believes alive
    /// ([`Inner::node_liveness`]), or every member when fewer than `factor` are.
    fn placeable_nodes(&self, factor: u32) -> Vec<u64> {
        let Some(peers) = &self.peers else {
            return Vec::new();
        };
        let all = peers.membership().ids();
        let alive: Vec<u64> = all
            .iter()
            .copied()
            .filter(|&id| u32::try_from(id).is_ok_and(|id| self.node_liveness(id).0))
            .collect();
        if alive.len() >= factor as usize {
            alive
        } else {
            all
        }
    }

    /// Whether this node believes node `id` alive, and what gossip says of it ("" when
    /// gossip has not heard of it): this node is alive; another is when the failure
    /// detector says so, or, for a node gossip has not heard of yet, when this node's
    /// replication link to it is connected.
    fn node_liveness(&self, id: u32) -> (bool, String) {
        let member = self
            .gossip
            .as_ref()
            .and_then(|g| g.members().into_iter().find(|m| m.id == id));
        let alive = id == self.config.cluster.node_id
            || match &member {
                Some(m) => m.is_available(),
                None => self
                    .peers
                    .as_ref()
                    .is_some_and(|peers| peers.is_up(u64::from(id))),
            };
        (
            alive,
            member.map_or_else(String::new, |m| m.verdict().to_owned()),
        )
    }

    /// Deletes a topic through the controller, as [`Inner::create_in_cluster`] creates one.
    async fn delete_in_cluster(&self, controller: &Controller, name: &str) -> Result<()> {
        let Some(placed) = controller.view().topic(name).cloned() else {
            return Err(shard::Error::UnknownTopic {
                topic: name.to_owned(),
            }
            .into());
        };
        let offset = controller
            .propose(metadata::topic_deleted(name, placed.incarnation))
            .await?;
        let wait = controller.wait();
        if controller.wait_applied(offset + 1, wait).await <= offset {
            return Err(Error::Cluster {
                message: format!(
                    "the deletion of topic {name:?} was recorded by the controller but this \
                     node has not applied it within {wait:?}; it will by itself"
                ),
            });
        }
        controller.sync_everywhere(offset + 1, wait).await;
        Ok(())
    }

    /// Creates a topic on this node alone (outside a cluster).
    async fn create_local(&self, topic: &str, partitions: u32) -> Result<()> {
        match self.shards.create_topic(topic, partitions).await {
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
        match &self.controller {
            None => self.shards.delete_topic(&delete.name).await?,
            Some(controller) => self.delete_in_cluster(controller, &delete.name).await?,
        }
        observability::topic_deleted(&delete.name);
        tracing::info!(topic = delete.name, identity = %principal, "topic deleted");
        Ok(DeleteTopicResponse {})
    }

    /// The topics the caller may use in any way, sorted by name.
    pub(super) fn list(&self, request: &Request<()>) -> Result<ListTopicsResponse> {
        self.check_running()?;
        let principal = self.principal(request)?;
        let mut topics: Vec<TopicInfo> = self
            .shards
            .list_topics()
            .into_iter()
            .filter(|t| !shard::is_internal_topic(&t.name))
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
    /// The static membership of `[cluster]` and the nodes gossip met besides, sorted by id,
    /// each with the failure detector's verdict, and the controller leader. Any authenticated caller may ask, as for ListTopics; nothing here
    /// is secret beyond what a client must know to find a partition's leader.
    pub(super) async fn describe_cluster(
        &self,
        request: &Request<()>,
    ) -> Result<DescribeClusterResponse> {
        self.check_not_draining()?;
        self.principal(request)?;
        let node_id = self.config.cluster.node_id;
        // The nodes this node knows: configured, or learned from gossip since.
        let known = match &self.peers {
            Some(peers) => peers.membership().nodes(),
            None => self.config.cluster_nodes(),
        };
        let mut nodes: Vec<NodeInfo> = known
            .into_iter()
            .map(|node| {
                let (alive, state) = self.node_liveness(node.id);
                NodeInfo {
                    id: node.id,
                    addr: node.addr,
                    alive,
                    state,
                }
            })
            .collect();
        // Nodes that joined through gossip without being configured here.
        if let Some(gossip) = &self.gossip {
            for member in gossip.members() {
                if !nodes.iter().any(|n| n.id == member.id) {
                    nodes.push(NodeInfo {
                        id: member.id,
                        alive: member.is_available(),
                        state: member.verdict().to_owned(),
                        addr: member.grpc_addr,
                    });
                }
            }
            nodes.sort_by_key(|n| n.id);
        }
        let controller = match &self.controller {
            Some(controller) => u32::try_from(controller.leader().await).unwrap_or(0),
            None => 0,
        };
        Ok(DescribeClusterResponse {
            node_id,
            nodes,
            controller,
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
    fn over_the_limit_is_refused_naming_the_key() {
        let e = partitions_for(17, 4, 16).unwrap_err();
        assert!(
            e.to_string().contains("server.partitions_per_topic_max"),
            "{e}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}
