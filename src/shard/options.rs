//! The options of a [`ShardSet`](super::ShardSet): how many shards, which engine, how appends
//! become durable, and the limits on queues and flushes.
//!
//! Must never: be used unvalidated. [`ShardOptions::validate`] checks every limit, and
//! `ShardSet::start` calls it first.

use std::path::PathBuf;

use super::error::{Error, Result};
use crate::storage::LogConfig;

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge after the group's `fdatasync` (the default; no acknowledged write is lost).
    #[default]
    Fsync,
    /// Acknowledge at once; sync touched partitions every `flush_interval_ms`. A machine
    /// crash may lose up to that much acknowledged data.
    Interval { flush_interval_ms: u64 },
    /// Acknowledge at once and leave syncing to the OS (and to segment rolls and close).
    None,
}

/// Which store engine the shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring when it can start, else portable with one warning.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// Std files on a plain thread per shard.
    Portable,
}

/// Everything a shard set needs to start.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Root of the data; partitions live under `data_dir/topics/<topic>/<partition>/`.
    pub data_dir: PathBuf,
    /// Number of shards (threads); 1..=`SHARDS_MAX`.
    pub shard_count: usize,
    /// Limits and policies of every partition log.
    pub log: LogConfig,
    pub durability: Durability,
    /// How long a shard lingers after the first request of a group before draining its
    /// queue; 0 = drain at once (the group is whatever queued up during the last flush).
    pub flush_delay_us: u64,
    /// A group stops draining once its appends hold this many payload bytes.
    pub flush_bytes_max: u64,
    /// Most bytes one read returns (beyond the first batch, which is always whole).
    pub read_bytes_max: u64,
    /// Capacity of each shard's request queue.
    pub queue_depth_max: usize,
    /// How long a caller waits for room in a full queue before `Overloaded`.
    pub enqueue_timeout_ms: u64,
    pub engine: EngineChoice,
    /// Memory glommio reserves (and locks) for io_uring buffers per shard.
    pub io_memory_bytes: usize,
    /// How often each shard rolls aged segments and applies retention.
    pub maintenance_interval_ms: u64,
    /// Most partitions one topic may have.
    pub partitions_max: u32,
    /// Most topics the set may hold; checked by `create_topic` under its admin lock, so
    /// concurrent creations cannot pass it.
    pub topics_max: u32,
    /// Pin each portable shard thread to one CPU (glommio shards are always pinned).
    pub pin_threads: bool,
    /// Warn when one group-commit `fdatasync` takes longer than this; 0 = never.
    pub slow_fsync_ms: u64,
}

/// Most shards a set may have.
pub const SHARDS_MAX: usize = 1024;

impl ShardOptions {
    /// Defaults for everything but the data directory; one shard per available CPU.
    pub fn new(data_dir: impl Into<PathBuf>) -> ShardOptions {
        ShardOptions {
            data_dir: data_dir.into(),
            shard_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            log: LogConfig::default(),
            durability: Durability::Fsync,
            flush_delay_us: 0,
            flush_bytes_max: 16 << 20,
            read_bytes_max: 16 << 20,
            queue_depth_max: 1024,
            enqueue_timeout_ms: 100,
            engine: EngineChoice::Auto,
            io_memory_bytes: 10 << 20,
            maintenance_interval_ms: 5_000,
            partitions_max: 10_000,
            topics_max: 10_000,
            pin_threads: true,
            slow_fsync_ms: 100,
        }
    }

    /// Checks every limit.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::InvalidOptions(msg));
        if !(1..=SHARDS_MAX).contains(&self.shard_count) {
            return fail(format!(
                "shard_count = {} must be 1..={SHARDS_MAX}",
                self.shard_count
            ));
        }
        self.log
            .validate()
            .map_err(|e| Error::InvalidOptions(e.to_string()))?;
        if let Durability::Interval { flush_interval_ms } = self.durability
            && !(1..=3_600_000).contains(&flush_interval_ms)
        {
            return fail(format!(
                "flush_interval_ms = {flush_interval_ms} must be 1..=3600000"
            ));
        }
        if self.flush_delay_us > 1_000_000 {
            return fail(format!(
                "flush_delay_us = {} must be at most 1000000 (one second)",
                self.flush_delay_us
            ));
        }
        if self.flush_bytes_max == 0 {
            return fail("flush_bytes_max must be positive".into());
        }
        if self.read_bytes_max == 0 {
            return fail("read_bytes_max must be positive".into());
        }
        if !(1..=1 << 20).contains(&self.queue_depth_max) {
            return fail(format!(
                "queue_depth_max = {} must be 1..=1048576",
                self.queue_depth_max
            ));
        }
        if self.enqueue_timeout_ms > 10_000 {
            return fail(format!(
                "enqueue_timeout_ms = {} must be at most 10000",
                self.enqueue_timeout_ms
            ));
        }
        if !(1..=86_400_000).contains(&self.maintenance_interval_ms) {
            return fail(format!(
                "maintenance_interval_ms = {} must be 1..=86400000",
                self.maintenance_interval_ms
            ));
        }
        if self.partitions_max == 0 {
            return fail("partitions_max must be positive".into());
        }
        if self.topics_max == 0 {
            return fail("topics_max must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_limits_are_checked() {
        let ok = ShardOptions::new("/tmp/x");
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.shard_count = 0;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.durability = Durability::Interval {
            flush_interval_ms: 0,
        };
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.queue_depth_max = 0;
        assert!(bad.validate().is_err());
    }
}
