//! The server's side of the metrics endpoint: [`MetricsSource`] over the shard set and the
//! listener's counters, and the one conversion of a topic description into the
//! observability layer's disk-usage snapshot. Must never record metrics itself.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::stats::ServerStats;
use crate::observability::{
    ListenerCounts, MetricsSource, PartitionReplication, ShardCounts, TopicDiskUsage,
};
use crate::shard::{ShardSet, TopicDescription};

/// What a topic description says about disk usage.
pub(super) fn disk_usage(description: &TopicDescription) -> TopicDiskUsage {
    TopicDiskUsage {
        topic: description.name.clone(),
        partitions: description.partitions.len() as u32,
        segments: description
            .partitions
            .iter()
            .map(|p| u64::from(p.segments))
            .sum(),
        size_bytes: description.partitions.iter().map(|p| p.size_bytes).sum(),
    }
}

/// The shards and the listener, as the metrics endpoint reads them.
pub(super) struct ServerMetrics {
    pub(super) shards: ShardSet,
    pub(super) stats: Arc<ServerStats>,
}

impl MetricsSource for ServerMetrics {
    fn engine_name(&self) -> &'static str {
        self.shards.engine_name()
    }

    fn listener_counts(&self) -> ListenerCounts {
        let stats = self.stats.snapshot();
        ListenerCounts {
            connections_accepted: stats.connections_accepted,
            connections_open: stats.connections_open,
            tls_handshake_failures: stats.tls_handshake_failures,
        }
    }

    fn shard_counts(&self) -> Vec<ShardCounts> {
        (0..self.shards.shard_count())
            .map(|shard| {
                let stats = self.shards.stats(shard);
                ShardCounts {
                    shard,
                    fsyncs: stats.fsyncs,
                    queue_depth: stats.queue_depth,
                    raft_groups: stats.raft_groups,
                    raft_groups_quiet: stats.raft_groups_quiet,
                    leader_changes: stats.leader_changes,
                }
            })
            .collect()
    }

    fn partition_replication(&self) -> Vec<PartitionReplication> {
        self.shards.partition_replication()
    }

    fn disk_usage(&self) -> BoxFuture<'_, Vec<TopicDiskUsage>> {
        Box::pin(async move {
            let mut usage = Vec::new();
            for topic in self.shards.list_topics() {
                match self.shards.describe_topic(&topic.name).await {
                    Ok(description) => usage.push(disk_usage(&description)),
                    // Deleted meanwhile, shutting down, or a busy shard: next time.
                    Err(e) => tracing::trace!(topic = topic.name, error = %e, "disk usage refresh"),
                }
            }
            usage
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::PartitionInfo;

    #[test]
    fn disk_usage_sums_the_partitions() {
        let partition = |id, segments, size_bytes| PartitionInfo {
            id,
            start_offset: 0,
            end_offset: 0,
            high_watermark: 0,
            shard: 0,
            segments,
            size_bytes,
            local: true,
            ..PartitionInfo::default()
        };
        let description = TopicDescription {
            name: "t".to_owned(),
            partitions: vec![partition(0, 2, 100), partition(1, 3, 50)],
        };
        assert_eq!(
            disk_usage(&description),
            TopicDiskUsage {
                topic: "t".to_owned(),
                partitions: 2,
                segments: 5,
                size_bytes: 150,
            }
        );
    }
}
