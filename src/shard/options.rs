//! The options of a [`ShardSet`](super::ShardSet): how many shards, which engine, how appends
//! become durable, and the limits on queues, flushes and reads.
//!
//! Owns: the one default ([`ShardOptions::new`]) and the one check
//! ([`ShardOptions::validate`]) of every shard limit; the partition-log limits inside them
//! are storage's ([`LogLimits`]) and are checked by it. The config file maps onto these
//! options and names its keys through [`ShardOptions::validate_as`].
//! Must never: be used unvalidated: `ShardSet::start` calls [`ShardOptions::validate`] first.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::producers::ProducerLimits;
use crate::storage::{InvalidLimit, LimitName, LogLimits, SpaceLimits, check_range};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Most shards a set may have: far more than any machine's cores, small enough that a typo
/// (`shards = 10000000`) is caught.
pub const SHARDS_MAX: usize = 1024;
/// glommio registers at least this much I/O memory per executor.
pub const IO_MEMORY_BYTES_MIN: u64 = 64 << 10;
/// The I/O memory is allocated in pages of this size.
const PAGE_BYTES: u64 = 4 << 10;
/// Longest period of the background fdatasync under [`Durability::Interval`].
pub const FLUSH_INTERVAL_MS_MAX: u64 = 60_000;

/// When an append is acknowledged relative to `fdatasync`. The config file's
/// `storage.durability` is this type ("fsync", "interval", "none").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge after the group's `fdatasync` (the default; no acknowledged write is lost).
    #[default]
    Fsync,
    /// Acknowledge at once; sync touched partitions every `flush_interval_ms`. A machine
    /// crash may lose up to that much acknowledged data.
    Interval,
    /// Acknowledge at once and leave syncing to the OS (and to segment rolls and close).
    None,
}

/// Which store engine the shards run. The config file's `storage.engine` is this type
/// ("auto", "uring", "portable"); the I/O interface the engines implement is
/// [`storage::Engine`](crate::storage::Engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// io_uring when it can start, else portable with one warning.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// Std files on a plain thread per shard.
    Portable,
}

/// How the uring engine makes a commit durable. The config file's `storage.uring_write` is
/// this type ("fdatasync", "dsync", "inline"); the portable engine ignores it. All keep the
/// promise of [`Durability::Fsync`]: an acknowledged append is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UringWrite {
    /// O_DIRECT writes, then `fdatasync`: two device round trips per commit.
    #[default]
    Fdatasync,
    /// O_DIRECT | O_DSYNC writes, durable when they complete: one round trip per commit.
    Dsync,
    /// A small commit's O_DIRECT write and fdatasync are blocking calls on the shard thread
    /// (no io_uring round trips, no io-wq hand-off); larger ones as `Fdatasync`.
    Inline,
}

/// Longest spin of a glommio shard before it parks (`spin_before_park_us`).
pub const SPIN_BEFORE_PARK_US_MAX: u64 = 1_000;

/// Everything a shard set needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOptions {
    /// Root of the data; partitions live under `data_dir/topics/<topic>/<partition>/`.
    pub data_dir: PathBuf,
    /// Number of shards (threads); 1..=`SHARDS_MAX`.
    pub shard_count: usize,
    /// Limits and policies of every partition log.
    pub log: LogLimits,
    /// Limits of every partition's idempotent-producer table.
    pub producers: ProducerLimits,
    /// The free-space floor under `data_dir` and how often it is checked.
    pub space: SpaceLimits,
    pub durability: Durability,
    /// Period of the background `fdatasync` under [`Durability::Interval`]; unused otherwise.
    pub flush_interval_ms: u64,
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
    /// How the uring engine makes a commit durable.
    pub uring_write: UringWrite,
    /// Zero-fill the file ahead of small commits, so that their writes overwrite blocks the
    /// file already holds: on io_uring the write then needs no worker thread, and with
    /// either engine the `fdatasync` has no file size to journal. A store file holds up to
    /// 256 KiB of zeros past its end while it is the active segment.
    pub preallocate: bool,
    /// How long an idle glommio shard spins before it parks in the kernel (0 = parks at
    /// once): a request or an I/O completion that comes within the spin needs no wake-up.
    /// The spin burns its core; the portable engine ignores it.
    pub spin_before_park_us: u64,
    /// Memory glommio reserves (and locks) for io_uring buffers per shard.
    pub io_memory_bytes: usize,
    /// How often each shard rolls aged segments, applies retention and publishes its
    /// replicated partitions' leaders and followers' lag (see `lag`).
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

/// One shard per core this process may run on (its CPU affinity mask, cgroup quota
/// included), at most [`SHARDS_MAX`].
pub fn default_shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SHARDS_MAX)
}

impl ShardOptions {
    /// Defaults for everything but the data directory; one shard per available CPU. These
    /// are the config file's defaults too.
    pub fn new(data_dir: impl Into<PathBuf>) -> ShardOptions {
        ShardOptions {
            data_dir: data_dir.into(),
            shard_count: default_shard_count(),
            log: LogLimits::default(),
            producers: ProducerLimits::default(),
            space: SpaceLimits::default(),
            durability: Durability::Fsync,
            flush_interval_ms: 100,
            flush_delay_us: 0,
            flush_bytes_max: 8 * MIB,
            read_bytes_max: 4 * MIB,
            queue_depth_max: 1024,
            enqueue_timeout_ms: 100,
            engine: EngineChoice::Auto,
            uring_write: UringWrite::Fdatasync,
            preallocate: true,
            spin_before_park_us: 0,
            io_memory_bytes: MIB as usize,
            maintenance_interval_ms: 5_000,
            partitions_max: 1024,
            topics_max: 10_000,
            pin_threads: true,
            slow_fsync_ms: 100,
        }
    }

    /// Checks every limit, the log's included.
    pub fn validate(&self) -> Result<()> {
        self.validate_as(&|field| field.to_owned())
            .map_err(|invalid| Error::InvalidOptions(invalid.to_string()))
    }

    /// [`ShardOptions::validate`], naming each limit `key(field)` in the error and in what
    /// it says is allowed; the log's limits are named `key("log.<field>")`. The first
    /// refused limit is returned.
    pub fn validate_as(&self, key: LimitName<'_>) -> Result<(), InvalidLimit> {
        check_range(
            key("shard_count"),
            self.shard_count,
            1,
            SHARDS_MAX,
            " shards",
        )?;
        self.log
            .validate_as(&|field| key(&format!("log.{field}")))?;
        self.producers
            .validate_as(&|field| key(&format!("producers.{field}")))?;
        self.space.validate_as(key)?;
        let batch_bytes_max = self.log.batch_bytes_max;
        let batch_key = key("log.batch_bytes_max");
        let interval_min = u64::from(self.durability == Durability::Interval);
        check_range(
            key("flush_interval_ms"),
            self.flush_interval_ms,
            interval_min,
            FLUSH_INTERVAL_MS_MAX,
            if self.durability == Durability::Interval {
                " ms with durability = \"interval\""
            } else {
                " ms"
            },
        )?;
        check_range(
            key("flush_delay_us"),
            self.flush_delay_us,
            0,
            1_000_000,
            " us",
        )?;
        check_range(
            key("flush_bytes_max"),
            self.flush_bytes_max,
            batch_bytes_max,
            GIB,
            &format!(" bytes (at least {batch_key}, so a flush can hold any batch)"),
        )?;
        check_range(
            key("read_bytes_max"),
            self.read_bytes_max,
            batch_bytes_max,
            GIB,
            &format!(" bytes (at least {batch_key}, so one batch fits in one read)"),
        )?;
        check_range(
            key("queue_depth_max"),
            self.queue_depth_max,
            1,
            1 << 20,
            " requests",
        )?;
        check_range(
            key("enqueue_timeout_ms"),
            self.enqueue_timeout_ms,
            0,
            10_000,
            " ms",
        )?;
        check_range(
            key("spin_before_park_us"),
            self.spin_before_park_us,
            0,
            SPIN_BEFORE_PARK_US_MAX,
            " us",
        )?;
        let io_memory_bytes = self.io_memory_bytes as u64;
        check_range(
            key("io_memory_bytes"),
            io_memory_bytes,
            IO_MEMORY_BYTES_MIN,
            GIB,
            " bytes",
        )?;
        if !io_memory_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(InvalidLimit::new(
                key("io_memory_bytes"),
                io_memory_bytes,
                format!("must be a multiple of {PAGE_BYTES} (the page size)"),
            ));
        }
        check_range(
            key("maintenance_interval_ms"),
            self.maintenance_interval_ms,
            1,
            86_400_000,
            " ms",
        )?;
        check_range(
            key("partitions_max"),
            self.partitions_max,
            1,
            1 << 16,
            " partitions",
        )?;
        check_range(key("topics_max"), self.topics_max, 1, 1_000_000, " topics")?;
        check_range(
            key("slow_fsync_ms"),
            self.slow_fsync_ms,
            0,
            3_600_000,
            " ms (0 = never warn)",
        )?;
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
        assert!((1..=SHARDS_MAX).contains(&ok.shard_count));
        let refused = |change: &dyn Fn(&mut ShardOptions)| {
            let mut bad = ok.clone();
            change(&mut bad);
            bad.validate_as(&|field| field.to_owned()).unwrap_err().key
        };
        assert_eq!(refused(&|o| o.shard_count = 0), "shard_count");
        assert_eq!(
            refused(&|o| {
                o.durability = Durability::Interval;
                o.flush_interval_ms = 0;
            }),
            "flush_interval_ms"
        );
        assert_eq!(
            refused(&|o| o.flush_interval_ms = FLUSH_INTERVAL_MS_MAX + 1),
            "flush_interval_ms"
        );
        assert_eq!(refused(&|o| o.queue_depth_max = 0), "queue_depth_max");
        assert_eq!(
            refused(&|o| o.space.disk_check_interval_ms = 0),
            "disk_check_interval_ms"
        );
        assert_eq!(
            refused(&|o| o.spin_before_park_us = SPIN_BEFORE_PARK_US_MAX + 1),
            "spin_before_park_us"
        );
        assert_eq!(refused(&|o| o.io_memory_bytes = 100_000), "io_memory_bytes");
        assert_eq!(refused(&|o| o.flush_bytes_max = 1024), "flush_bytes_max");
        assert_eq!(refused(&|o| o.read_bytes_max = 1024), "read_bytes_max");
        assert_eq!(
            refused(&|o| o.maintenance_interval_ms = 0),
            "maintenance_interval_ms"
        );
        assert_eq!(
            refused(&|o| o.log.index_bytes_max = 100),
            "log.index_bytes_max"
        );
        assert_eq!(
            refused(&|o| o.producers.producers_per_partition_max = 0),
            "producers.producers_per_partition_max"
        );
        let mut bad = ok;
        bad.queue_depth_max = 0;
        assert!(matches!(bad.validate(), Err(Error::InvalidOptions(_))));
    }
}
