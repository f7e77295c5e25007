//! What the harness asks the cluster, each call bounded: a node's view of the topic, who
//! leads what, whether a node caught up, which nodes replicate a partition, and a
//! partition's whole log as one node serves it.
//!
//! Owns no state. Must never: wait without a bound (every call has a timeout derived from
//! the election timings), or take one node's answer for the truth (callers compare).

use std::collections::BTreeMap;
use std::time::Instant;

use walrs::client::{Client, ClientTls, ReadOptions};

use super::nemesis::Leaders;
use super::nodes::Cluster;
use super::workload::{self, TOPIC};

/// Node `id`'s view of the topic, `None` when it does not answer within a few polls.
pub async fn describe(
    cluster: &Cluster,
    id: u32,
) -> Option<walrs::proto::v1::DescribeTopicResponse> {
    let wait = cluster.timings.poll() * 20;
    let tls = ClientTls::from_dir(cluster.certs(), "root");
    let client = tokio::time::timeout(wait, Client::connect(&cluster.addr(id), Some(tls)))
        .await
        .ok()?
        .ok()?;
    tokio::time::timeout(wait, client.describe_topic(TOPIC))
        .await
        .ok()?
        .ok()
}

pub async fn leaders(cluster: &Cluster, partitions: u32) -> Leaders {
    let mut leaders = Leaders {
        partitions: vec![None; partitions as usize],
        controller: None,
    };
    let wait = cluster.timings.poll() * 20;
    for id in cluster.live() {
        let Some(d) = describe(cluster, id).await else {
            continue;
        };
        for p in &d.partitions {
            if p.leader != 0 && (p.id as usize) < leaders.partitions.len() {
                leaders.partitions[p.id as usize].get_or_insert(p.leader);
            }
        }
        let tls = ClientTls::from_dir(cluster.certs(), "root");
        if let Ok(Ok(client)) =
            tokio::time::timeout(wait, Client::connect(&cluster.addr(id), Some(tls))).await
            && let Ok(Ok(c)) = tokio::time::timeout(wait, client.describe_cluster()).await
            && c.controller != 0
        {
            leaders.controller.get_or_insert(c.controller);
        }
        if leaders.partitions.iter().all(Option::is_some) && leaders.controller.is_some() {
            break;
        }
    }
    leaders
}

/// Waits until node `id` reports a high watermark of at least `ends` on every partition it
/// holds a replica of, and none of its replicas still rejoins (a replica that lost data keeps
/// its `raft_rejoin` marker until the server counts it caught up, and votes only then), or
/// until `until`.
pub async fn caught_up(cluster: &Cluster, id: u32, ends: &[u64], until: Instant) -> bool {
    loop {
        if !holds_rejoin_marker(cluster.data_dir(id))
            && let Some(d) = describe(cluster, id).await
            && d.partitions.len() == ends.len()
            && d.partitions
                .iter()
                .filter(|p| p.replicas.is_empty() || p.replicas.contains(&id))
                .all(|p| p.high_watermark >= ends[p.id as usize])
        {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(cluster.timings.poll()).await;
    }
}

/// Whether any partition directory under `dir` holds a rejoin marker (docs/FORMAT.md).
fn holds_rejoin_marker(dir: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            holds_rejoin_marker(&path)
        } else {
            entry.file_name() == "raft_rejoin"
        }
    })
}

/// The nodes that hold `partition`, as the first node to answer says (every node when
/// none does: then every read fails and says why).
pub async fn replicas(cluster: &Cluster, partition: u32) -> Vec<u32> {
    for id in 1..=cluster.count() {
        if let Some(d) = describe(cluster, id).await
            && let Some(p) = d.partitions.get(partition as usize)
            && !p.replicas.is_empty()
        {
            return p.replicas.clone();
        }
    }
    (1..=cluster.count()).collect()
}

/// Every record of `partition` on node `id`, from its start to its high watermark.
pub async fn read_all(
    cluster: &Cluster,
    id: u32,
    partition: u32,
) -> Result<BTreeMap<u64, workload::Id>, String> {
    // Each call is bounded: a node that does not answer is unreadable, not a hang.
    let wait = cluster.timings.failover() * 5;
    let timeout = |what: &str| format!("{what}: no answer within {wait:?}");
    let tls = ClientTls::from_dir(cluster.certs(), "root");
    let client = tokio::time::timeout(wait, Client::connect(&cluster.addr(id), Some(tls)))
        .await
        .map_err(|_| timeout("connect"))?
        .map_err(|e| e.to_string())?;
    let d = tokio::time::timeout(wait, client.describe_topic(TOPIC))
        .await
        .map_err(|_| timeout("describe"))?
        .map_err(|e| format!("{e:?}"))?;
    // A node may lack a partition it should hold (finding 3 of docs/RELIABILITY.md).
    let info = d
        .partitions
        .get(partition as usize)
        .ok_or_else(|| format!("the node does not hold partition {partition}"))?;
    let mut records = BTreeMap::new();
    let mut offset = info.start_offset;
    // Each read makes progress (next_offset grows) or the loop ends: bounded by the hw.
    while offset < info.high_watermark {
        let r = tokio::time::timeout(
            wait,
            client.read(TOPIC, partition, offset, ReadOptions::default()),
        )
        .await
        .map_err(|_| timeout("read"))?
        .map_err(|e| format!("at offset {offset}: {e:?}"))?;
        for rec in &r.records {
            records.insert(rec.offset, workload::id_of(&rec.value));
        }
        if r.next_offset <= offset {
            return Err(format!("no progress at offset {offset}"));
        }
        offset = r.next_offset;
    }
    Ok(records)
}
