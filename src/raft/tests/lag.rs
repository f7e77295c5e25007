//! The followers' lag a leader publishes for the metrics endpoint (see `shard::lag`), on an
//! in-process cluster: exactly what a cut-off follower misses (entries, records and bytes),
//! zero once it is back, and nothing left behind by a replica that stopped leading, a
//! follower that left the group's membership, or a partition deleted here.
//!
//! A leader cut off from the others goes on naming itself (openraft keeps it a leader whose
//! lease ran out; it refuses writes) and so shows its followers' lag as it last knew it,
//! until it hears of the new term: that is where this test checks that it stops.

use std::time::{Duration, Instant};

use super::{Cluster, election_deadline};
use crate::observability::{PartitionReplication, ReplicaLag};
use crate::raft::types::NodeId;
use crate::storage::{Record, batch_len};

const TOPIC: &str = "lag";

/// Partition 0 of [`TOPIC`] as node `id` last published it (`None`: not published).
fn published(cluster: &Cluster, id: NodeId) -> Option<PartitionReplication> {
    cluster
        .node(id)
        .partition_replication()
        .into_iter()
        .find(|p| &*p.topic == TOPIC && p.partition == 0)
}

/// Polls node `id`'s published partition until `holds` says yes, failing with `what` and
/// the last value seen after an election deadline; returns that value.
async fn until_published(
    cluster: &Cluster,
    id: NodeId,
    what: &str,
    holds: impl Fn(Option<&PartitionReplication>) -> bool,
) -> Option<PartitionReplication> {
    let deadline = Instant::now() + election_deadline();
    loop {
        let seen = published(cluster, id);
        if holds(seen.as_ref()) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "node {id}: never {what}; last published {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lag of `replica` in a published partition, if it is listed.
fn lag_of(p: Option<&PartitionReplication>, replica: NodeId) -> Option<ReplicaLag> {
    p?.followers.iter().find(|f| f.replica == replica).copied()
}

fn caught_up(replica: NodeId) -> ReplicaLag {
    ReplicaLag {
        replica,
        batches: 0,
        records: 0,
        bytes: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_publishes_each_followers_lag_and_nothing_stale() {
    let cluster = Cluster::start_with(3, |options| options.maintenance_interval_ms = 50);
    cluster.create(TOPIC, &[1, 2, 3]).await;
    let (leader, _) = cluster.append(TOPIC, b"first").await;
    let followers: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let (away, stays) = (followers[0], followers[1]);
    until_published(&cluster, leader, "both followers caught up", |p| {
        followers
            .iter()
            .all(|&f| lag_of(p, f) == Some(caught_up(f)))
    })
    .await;

    // Entries the away follower misses: one batch of one record each.
    cluster.transport.cut(away);
    let value = vec![7u8; 100];
    let missed = 10u64;
    for _ in 0..missed {
        assert_eq!(cluster.append(TOPIC, &value).await.0, leader);
    }
    let one_batch = batch_len(&[Record {
        value: value.clone().into(),
        ..Record::default()
    }]) as u64;
    let behind = ReplicaLag {
        replica: away,
        batches: missed,
        records: missed,
        bytes: missed * one_batch,
    };
    until_published(&cluster, leader, "the away follower's exact lag", |p| {
        lag_of(p, away) == Some(behind) && lag_of(p, stays) == Some(caught_up(stays))
    })
    .await;

    cluster.transport.restore(away);
    until_published(&cluster, leader, "the follower back and caught up", |p| {
        lag_of(p, away) == Some(caught_up(away))
    })
    .await;

    // The leader is cut off and the others elect one of them, which shows the old leader's
    // lag. Back, the old leader hears of the new term: it follows, and shows no lag.
    cluster.transport.cut(leader);
    let deadline = Instant::now() + election_deadline();
    let new_leader = loop {
        let leading = followers.iter().copied().find(|&id| {
            published(&cluster, id)
                .is_some_and(|p| p.leader == Some(id) && lag_of(Some(&p), leader).is_some())
        });
        if let Some(id) = leading {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader published its followers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let other = if new_leader == away { stays } else { away };
    cluster.transport.restore(leader);
    until_published(&cluster, leader, "following, without lag", |p| {
        p.is_some_and(|p| p.leader == Some(new_leader) && p.followers.is_empty())
    })
    .await;
    until_published(&cluster, new_leader, "every follower caught up", |p| {
        [leader, other]
            .iter()
            .all(|&f| lag_of(p, f) == Some(caught_up(f)))
    })
    .await;

    // The old leader leaves the group's membership: its series goes with it.
    cluster
        .node(new_leader)
        .change_voters(TOPIC, 0, vec![new_leader, other])
        .await
        .unwrap();
    until_published(&cluster, new_leader, "the removed follower gone", |p| {
        p.is_some_and(|p| p.followers.iter().map(|f| f.replica).eq([other]))
    })
    .await;

    // Deleted here: gone from the list by the time the deletion answers.
    for id in [new_leader, other] {
        cluster.node(id).delete_topic(TOPIC).await.unwrap();
        assert_eq!(
            published(&cluster, id),
            None,
            "node {id} after the deletion"
        );
    }
}
