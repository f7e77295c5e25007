//! Admin calls: create, delete, list and describe topics, and truncate a partition.
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
    DescribeTopicRequest, DescribeTopicResponse, ListTopicsResponse, PartitionInfo, TopicInfo,
    TruncateRequest, TruncateResponse,
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
                })
                .collect(),
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
    fn over_the_limit_is_refused_naming_the_key() {
        let e = partitions_for(17, 4, 16).unwrap_err();
        assert!(
            e.to_string().contains("server.partitions_per_topic_max"),
            "{e}"
        );
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}
