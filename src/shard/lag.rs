//! What a shard tells the metrics endpoint about its replicated partitions: per partition,
//! the leader and term its group knows and, where this replica leads, how far behind each
//! follower is, in entries, in records (offsets) and in store bytes.
//!
//! Owns: [`Published`], the list a scrape reads (in the shard's `ShardStats`), and
//! [`followers_lag`], which puts a leader's Raft progress onto its log.
//! Must never: scan a log. A follower's lag in records and bytes is one
//! `Log::suffix_after_entry` (a binary search over the segments, two index lookups), and
//! none at all for a follower that holds the leader's last entry.
//!
//! The list holds exactly what this shard can vouch for: the shard replaces it whole at each
//! maintenance (a partition whose group is not running, or a follower that left the group's
//! membership, is simply not in the new list), removes a partition the moment it is closed
//! or removed here (topic deleted, replica moved away, shutdown), and drops a partition's
//! lag the moment its replica stops leading (seen every heartbeat interval). The metrics
//! endpoint renders the list as it stands (see `observability::partitions`), so a series of
//! any of these is gone from the next scrape, not left at its last value.

use std::sync::{Arc, Mutex, PoisonError};

use openraft::rt::AsyncRuntime;

use crate::observability::{PartitionReplication, ReplicaLag};
use crate::raft::group::{Followers, Group};
use crate::storage::{self, Engine, Log};

/// The replicated partitions of one shard as it last published them. Written by the shard
/// (once per maintenance, and on a close or a leader change), read by scrapes.
#[derive(Debug, Default)]
pub(crate) struct Published(Mutex<Vec<PartitionReplication>>);

impl Published {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<PartitionReplication>) -> T) -> T {
        // A panic while holding the lock leaves a whole list (each change is one step).
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// What a scrape shows now.
    pub(crate) fn snapshot(&self) -> Vec<PartitionReplication> {
        self.with(|list| list.clone())
    }

    /// Replaces the whole list (a maintenance pass).
    pub(crate) fn replace(&self, partitions: Vec<PartitionReplication>) {
        self.with(|list| *list = partitions);
    }

    /// Forgets `partitions` of `topic` (closed or removed here).
    pub(crate) fn forget(&self, topic: &str, partitions: &[u32]) {
        self.with(|list| {
            list.retain(|p| !(&*p.topic == topic && partitions.contains(&p.partition)))
        });
    }

    /// Forgets every partition (the shard stopped).
    pub(crate) fn clear(&self) {
        self.with(Vec::clear);
    }

    /// The group of `topic`/`partition` now knows `leader` in `term`, and this replica leads
    /// it or not: a replica that does not lead has no followers' lag to show.
    pub(crate) fn leader_changed(
        &self,
        (topic, partition): (&str, u32),
        (leader, term): (Option<u64>, u64),
        leads: bool,
    ) {
        self.with(|list| {
            for p in list
                .iter_mut()
                .filter(|p| &*p.topic == topic && p.partition == partition)
            {
                (p.leader, p.term) = (leader, term);
                if !leads {
                    p.followers.clear();
                }
            }
        });
    }
}

/// Partition `topic`/`partition` as its running `group` reports it now, with each
/// follower's lag when this replica leads. A lag the log cannot give (an I/O error reading
/// an index) is logged and left out of this sample, as a missing sample rather than a wrong
/// one.
pub(crate) async fn partition_replication<E: Engine, RT: AsyncRuntime>(
    (topic, partition): (&Arc<str>, u32),
    group: &Group<RT>,
    log: &mut Log<E>,
) -> PartitionReplication {
    let (leader, term) = group.leader_and_term();
    let followers = match group.followers() {
        None => Vec::new(),
        Some(followers) => followers_lag(log, &followers).await.unwrap_or_else(|e| {
            tracing::warn!(topic = %topic, partition, error = %e, "measuring the followers' lag");
            Vec::new()
        }),
    };
    PartitionReplication {
        topic: topic.clone(),
        partition,
        leader,
        term,
        followers,
    }
}

/// Each follower's lag behind the leader whose view is `followers` and whose log is `log`.
pub(crate) async fn followers_lag<E: Engine>(
    log: &mut Log<E>,
    followers: &Followers,
) -> storage::Result<Vec<ReplicaLag>> {
    let mut lags = Vec::with_capacity(followers.matched.len());
    for &(replica, matched) in &followers.matched {
        let held = held_entry(matched, followers.purged_index);
        let batches = entries_after(followers.last_index, held);
        let suffix = if batches == 0 {
            storage::LogSuffix::default()
        } else {
            log.suffix_after_entry(held).await?
        };
        lags.push(ReplicaLag {
            replica,
            batches,
            records: suffix.records,
            bytes: suffix.bytes,
        });
    }
    Ok(lags)
}

/// The last entry a follower that matched `matched` holds of a log purged up to `purged`:
/// the later of the two (what was purged is held by every follower, through the snapshot it
/// is sent if it lacked it), `None` when neither is known.
fn held_entry(matched: Option<u64>, purged: Option<u64>) -> Option<u64> {
    matched.max(purged)
}

/// Entries of a log whose last entry is `last` after entry `held` (after nothing: all of
/// them, from entry 0).
fn entries_after(last: Option<u64>, held: Option<u64>) -> u64 {
    match (last, held) {
        (None, _) => 0,
        (Some(last), None) => last + 1,
        (Some(last), Some(held)) => last.saturating_sub(held),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_lags_by_the_entries_after_what_it_holds() {
        // Caught up, and (a leader's view is a moment old) ahead of the sampled last entry.
        assert_eq!(entries_after(Some(9), held_entry(Some(9), None)), 0);
        assert_eq!(entries_after(Some(9), held_entry(Some(10), None)), 0);
        assert_eq!(entries_after(Some(9), held_entry(Some(4), None)), 5);
        // Nothing matched yet: the whole log, entry 0 included.
        assert_eq!(entries_after(Some(9), held_entry(None, None)), 10);
        // Nothing matched in a purged log: every entry the log still has.
        assert_eq!(entries_after(Some(9), held_entry(None, Some(6))), 3);
        // Matched below the purge: the same.
        assert_eq!(entries_after(Some(9), held_entry(Some(2), Some(6))), 3);
        // An empty log: nothing to lack.
        assert_eq!(entries_after(None, held_entry(None, None)), 0);
    }

    fn partition(topic: &str, partition: u32) -> PartitionReplication {
        PartitionReplication {
            topic: Arc::from(topic),
            partition,
            leader: Some(1),
            term: 2,
            followers: vec![ReplicaLag {
                replica: 2,
                batches: 1,
                records: 3,
                bytes: 100,
            }],
        }
    }

    #[test]
    fn a_closed_partition_and_a_lost_leadership_leave_the_list_at_once() {
        let published = Published::default();
        published.replace(vec![
            partition("a", 0),
            partition("a", 1),
            partition("b", 0),
        ]);
        published.forget("a", &[1]);
        let topics: Vec<(String, u32)> = published
            .snapshot()
            .iter()
            .map(|p| (p.topic.to_string(), p.partition))
            .collect();
        assert_eq!(topics, [("a".to_owned(), 0), ("b".to_owned(), 0)]);

        // Still leading in a new term: the lag stays until the next maintenance.
        published.leader_changed(("a", 0), (Some(1), 3), true);
        let a0 = published.snapshot()[0].clone();
        assert_eq!((a0.leader, a0.term, a0.followers.len()), (Some(1), 3, 1));
        // Another node leads: no lag here any more.
        published.leader_changed(("a", 0), (Some(3), 4), false);
        let a0 = published.snapshot()[0].clone();
        assert_eq!((a0.leader, a0.term), (Some(3), 4));
        assert!(a0.followers.is_empty());
        assert_eq!(
            published.snapshot()[1],
            partition("b", 0),
            "others untouched"
        );

        // A maintenance pass that no longer finds a partition drops it.
        published.replace(vec![partition("b", 0)]);
        assert_eq!(published.snapshot(), [partition("b", 0)]);
        published.clear();
        assert!(published.snapshot().is_empty());
    }
}
