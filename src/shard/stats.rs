//! Per-shard counters, written by the shard thread and readable from any thread.
//!
//! Must never: be used for control flow. They are relaxed atomics for tests, metrics and
//! operators; nothing synchronizes through them. The one list among them (the replicated
//! partitions as last published, see `lag`) sits behind a mutex the shard takes once per
//! maintenance interval, never on the request path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one shard. The shard writes, anyone reads.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Append requests acknowledged as stored.
    pub(crate) appends: AtomicU64,
    /// Records in those appends.
    pub(crate) records: AtomicU64,
    /// Groups flushed (one group covers one or more appends).
    pub(crate) flushes: AtomicU64,
    /// `fdatasync` calls made by this shard's engine (flushes, rolls, truncations).
    pub(crate) fsyncs: AtomicU64,
    /// Read requests served.
    pub(crate) reads: AtomicU64,
    /// Requests waiting in the queue, sampled by the shard each time it drains.
    pub(crate) queue_depth: AtomicU64,
    /// Raft groups running on the shard, and how many of them are quiet (idle: no
    /// heartbeats), sampled every heartbeat interval.
    pub(crate) raft_groups: AtomicU64,
    pub(crate) raft_groups_quiet: AtomicU64,
    /// Times a replicated partition here learned of a new leader (elections seen).
    pub(crate) leader_changes: AtomicU64,
    /// The replicated partitions' leaders, terms and followers' lag, as last published.
    pub(crate) replication: super::lag::Published,
}

/// A copy of a shard's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardStatsSnapshot {
    pub appends: u64,
    pub records: u64,
    pub flushes: u64,
    pub fsyncs: u64,
    pub reads: u64,
    pub queue_depth: u64,
    pub raft_groups: u64,
    pub raft_groups_quiet: u64,
    pub leader_changes: u64,
}

impl ShardStats {
    pub fn snapshot(&self) -> ShardStatsSnapshot {
        ShardStatsSnapshot {
            appends: self.appends.load(Relaxed),
            records: self.records.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            reads: self.reads.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            raft_groups: self.raft_groups.load(Relaxed),
            raft_groups_quiet: self.raft_groups_quiet.load(Relaxed),
            leader_changes: self.leader_changes.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}

impl std::ops::Add for ShardStatsSnapshot {
    type Output = ShardStatsSnapshot;
    fn add(self, o: ShardStatsSnapshot) -> ShardStatsSnapshot {
        ShardStatsSnapshot {
            appends: self.appends + o.appends,
            records: self.records + o.records,
            flushes: self.flushes + o.flushes,
            fsyncs: self.fsyncs + o.fsyncs,
            reads: self.reads + o.reads,
            queue_depth: self.queue_depth + o.queue_depth,
            raft_groups: self.raft_groups + o.raft_groups,
            raft_groups_quiet: self.raft_groups_quiet + o.raft_groups_quiet,
            leader_changes: self.leader_changes + o.leader_changes,
        }
    }
}
