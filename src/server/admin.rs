//! Admin calls: create, delete, list and describe topics, truncate a partition, and
//! describe the cluster.
//!
//! Until replication lands, the cluster is what `[cluster]` says (static membership) and this
//! node holds every partition alone: a partition's leader is this node (`cluster.node_id`,
//! 0 outside a cluster, where no replicas are reported) at leader epoch 0.
//!
//! Each is checked (running, topic name, ACL) before the shard set is called; creation is
//! bounded by `server.partitions_per_topic_max` here and `server.topics_max` in the shard
//! set (under its admin lock). Must never change a topic other than the one named.

use tonic::Request;

use super::acl::Action;
use super::errors::{Error, Result};
use super::service::{Inner, peer_addr};
use crate::observability;
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
/// known. The shards hold every partition alone until replication lands, so a factor the
/// cluster could hold is accepted and, for now, has one replica.
fn check_replication_factor(asked: u32, nodes: u32) -> Result<()> {
    if asked > nodes {
        return Err(Error::invalid(format!(
            "replication_factor {asked} requested, but the cluster knows {nodes} node(s): \
             ask for 1 to {nodes}, or 0 for the cluster's default (cluster.replication_factor)"
        )));
    }
    Ok(())
}

impl Inner {
    /// Creates `topic` with `partitions` partitions (0: the default), within `topics_max`.
    pub(super) async fn create_topic(&self, topic: &str, partitions: u32) -> Result<u32> {
        let partitions = partitions_for(
            partitions,
            self.default_partitions,
            self.config.server.partitions_per_topic_max,
        )?;
        // `topics_max` is checked by the shard set under its admin lock (passed in its
        // options), so concurrent creations cannot pass it.
        match self.shards.create_topic(topic, partitions).await {
            Ok(()) => Ok(partitions),
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
        check_replication_factor(create.replication_factor, self.config.cluster.node_count())?;
        let partitions = self.create_topic(&create.name, create.partitions).await?;
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
        self.shards.delete_topic(&delete.name).await?;
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
        // This node holds every partition alone (see the module docs); outside a cluster
        // (node_id 0) it has no node id to report.
        let node_id = self.config.cluster.node_id;
        let replicas = if node_id == 0 {
            Vec::new()
        } else {
            vec![node_id]
        };
        Ok(DescribeTopicResponse {
            name: description.name,
            partitions: description
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    id: p.id,
                    start_offset: p.start_offset,
                    end_offset: p.end_offset,
                    high_watermark: p.high_watermark,
                    shard: p.shard,
                    leader: node_id,
                    replicas: replicas.clone(),
                    leader_epoch: 0,
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
                // This node answers, so it is alive. Peers' liveness comes with gossip
                // (issue 11); until then nothing is known of them, so they are not claimed
                // alive.
                alive: node.id == node_id,
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
        check_replication_factor(0, 1).unwrap();
        check_replication_factor(1, 1).unwrap();
        check_replication_factor(3, 3).unwrap();
        let e = check_replication_factor(2, 1).unwrap_err();
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
