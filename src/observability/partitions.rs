//! The per-partition replication series: `walrs_partition_leader`, `walrs_partition_term`
//! and, on the leader, `walrs_replica_lag_{batches,records,bytes}` per follower. They are
//! rendered at each scrape from what the shards publish now, not kept in the `metrics`
//! registry.
//!
//! Why not the registry: a series there lives until the process ends.
//! metrics-exporter-prometheus 0.18 cannot remove one series: its handle only renders, and
//! `metrics` 0.24 has no unregister. Its `idle_timeout` removes series that were not updated
//! for a while, but per metric *kind*: on gauges it would also drop `walrs_active_streams`
//! (moved up and down only when a stream opens or closes), `walrs_build_info` (set once) and
//! `walrs_serving`. Setting a dead partition's gauges to 0 keeps one series per deleted topic
//! and moved replica forever, and a lag of 0 reads as "caught up" for a replica that is
//! gone. So each shard publishes the list of its replicated partitions (replaced whole every
//! maintenance interval, trimmed at once when a partition closes or its leader changes;
//! see `shard::lag`), and a scrape renders exactly that list: a partition no longer held
//! here, a replica no longer leading, or a follower no longer in the group's membership has
//! no series in the next scrape.
//!
//! Owns: the snapshot types [`PartitionReplication`] and [`ReplicaLag`], and their rendering
//! in the Prometheus text format (escaping through the exporter's own `formatting`).
//! Must never: import the shard layer; the server hands the snapshots in through
//! `MetricsSource`.

use std::fmt::Write;
use std::sync::Arc;

use metrics_exporter_prometheus::formatting::{
    sanitize_label_value, write_help_line, write_type_line,
};

use super::catalog::names::{
    PARTITION_LEADER, PARTITION_TERM, REPLICA_LAG_BATCHES, REPLICA_LAG_BYTES, REPLICA_LAG_RECORDS,
};

/// One replicated partition as its replica on this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplication {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The leader this replica knows of (node id).
    pub leader: Option<u64>,
    /// The group's Raft term.
    pub term: u64,
    /// On the leader, one per follower in the group's membership (voters and learners);
    /// empty on every other replica.
    pub followers: Vec<ReplicaLag>,
}

/// How far one follower is behind its leader's log, as the leader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaLag {
    /// The follower's node id.
    pub replica: u64,
    /// Entries (batches) of the leader's log after the last one the follower holds.
    pub batches: u64,
    /// Offsets of the leader's log after that entry (records, one per control entry).
    pub records: u64,
    /// Store bytes of the leader's log after that entry.
    pub bytes: u64,
}

/// The help texts, by series family, in the order they are rendered.
const FAMILIES: [(&str, &str); 5] = [
    (
        PARTITION_LEADER,
        "The partition's leader (node id) as this replica knows it; 0 = none.",
    ),
    (
        PARTITION_TERM,
        "The partition's Raft term (its leader_epoch).",
    ),
    (
        REPLICA_LAG_BATCHES,
        "On the leader: entries (batches) of its log a follower does not hold yet.",
    ),
    (
        REPLICA_LAG_RECORDS,
        "On the leader: offsets of its log after the last entry a follower holds.",
    ),
    (
        REPLICA_LAG_BYTES,
        "On the leader: store bytes of its log after the last entry a follower holds.",
    ),
];

/// Appends the series of `partitions` to `out` (a scrape's body), in the Prometheus text
/// format, sorted by topic, partition and replica. A family with no series is left out.
pub(crate) fn render_partition_replication(out: &mut String, partitions: &[PartitionReplication]) {
    let mut sorted: Vec<&PartitionReplication> = partitions.iter().collect();
    sorted.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for (family, help) in FAMILIES {
        let mut lines = String::new();
        for p in &sorted {
            let labels = format!(
                "topic=\"{}\",partition=\"{}\"",
                sanitize_label_value(&p.topic),
                p.partition
            );
            let sample = |lines: &mut String, extra: &str, value: u64| {
                // Writing to a String cannot fail.
                let _ = writeln!(lines, "{family}{{{labels}{extra}}} {value}");
            };
            match family {
                PARTITION_LEADER => sample(&mut lines, "", p.leader.unwrap_or(0)),
                PARTITION_TERM => sample(&mut lines, "", p.term),
                _ => {
                    let mut followers = p.followers.clone();
                    followers.sort_by_key(|f| f.replica);
                    for f in followers {
                        let value = match family {
                            REPLICA_LAG_BATCHES => f.batches,
                            REPLICA_LAG_RECORDS => f.records,
                            _ => f.bytes,
                        };
                        sample(&mut lines, &format!(",replica=\"{}\"", f.replica), value);
                    }
                }
            }
        }
        if lines.is_empty() {
            continue;
        }
        write_help_line(out, family, None, None, help);
        write_type_line(out, family, None, None, "gauge");
        out.push_str(&lines);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(topic: &str, partition: u32, followers: Vec<ReplicaLag>) -> PartitionReplication {
        PartitionReplication {
            topic: Arc::from(topic),
            partition,
            leader: Some(1),
            term: 3,
            followers,
        }
    }

    fn lag(replica: u64, batches: u64, records: u64, bytes: u64) -> ReplicaLag {
        ReplicaLag {
            replica,
            batches,
            records,
            bytes,
        }
    }

    #[test]
    fn a_leader_renders_every_follower_and_a_follower_only_leader_and_term() {
        let mut out = String::new();
        render_partition_replication(
            &mut out,
            &[
                partition("orders", 1, Vec::new()),
                partition("orders", 0, vec![lag(3, 2, 20, 900), lag(2, 0, 0, 0)]),
            ],
        );
        let samples: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(
            samples,
            [
                r#"walrs_partition_leader{topic="orders",partition="0"} 1"#,
                r#"walrs_partition_leader{topic="orders",partition="1"} 1"#,
                r#"walrs_partition_term{topic="orders",partition="0"} 3"#,
                r#"walrs_partition_term{topic="orders",partition="1"} 3"#,
                r#"walrs_replica_lag_batches{topic="orders",partition="0",replica="2"} 0"#,
                r#"walrs_replica_lag_batches{topic="orders",partition="0",replica="3"} 2"#,
                r#"walrs_replica_lag_records{topic="orders",partition="0",replica="2"} 0"#,
                r#"walrs_replica_lag_records{topic="orders",partition="0",replica="3"} 20"#,
                r#"walrs_replica_lag_bytes{topic="orders",partition="0",replica="2"} 0"#,
                r#"walrs_replica_lag_bytes{topic="orders",partition="0",replica="3"} 900"#,
            ]
        );
        assert!(out.contains("# TYPE walrs_replica_lag_bytes gauge\n"));
        assert!(out.contains("# HELP walrs_replica_lag_records On the leader:"));
    }

    #[test]
    fn nothing_published_renders_nothing() {
        let mut out = String::new();
        render_partition_replication(&mut out, &[]);
        assert_eq!(out, "");
        // Followers only: no lag family at all, not even its help line.
        render_partition_replication(&mut out, &[partition("t", 0, Vec::new())]);
        assert!(!out.contains("walrs_replica_lag"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        render_partition_replication(&mut out, &[partition("a\"b\\c", 0, Vec::new())]);
        assert!(
            out.contains(r#"walrs_partition_term{topic="a\"b\\c",partition="0"} 3"#),
            "{out}"
        );
    }
}
