//! `[storage]`: the shards and the files they write.
//!
//! Every key here is a shard option or a partition-log limit. Their defaults are
//! [`ShardOptions::new`]'s and [`LogLimits::default`]'s, and they are checked by
//! [`ShardOptions::validate_as`] (see `Config::validate`); this module only maps the file's
//! keys onto those types and back.

use serde::{Deserialize, Serialize};

use crate::shard::{self, ProducerLimits, ShardOptions};
use crate::storage::{LogLimits, SpaceLimits};

pub use crate::shard::{Durability, EngineChoice, UringWrite};

/// `[storage]`: the shards and the files they write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub engine: EngineChoice,
    /// How the uring engine makes a commit durable: "fdatasync" (write, then fdatasync),
    /// "dsync" (O_DSYNC writes, durable on completion) or "inline" (a small commit's write
    /// and fdatasync as blocking calls on the shard thread).
    pub uring_write: UringWrite,
    /// Zero-fill the active segment ahead of small commits (up to 256 KiB past its end), so
    /// that their writes overwrite blocks already on disk: cheaper writes and fdatasyncs.
    pub preallocate: bool,
    /// How long an idle uring shard spins before parking; 0 = never spins.
    pub spin_before_park_us: u64,
    /// 0 = one per core the process may run on.
    pub shards: u32,
    pub durability: Durability,
    /// Period of the background fdatasync with `durability = "interval"`.
    pub flush_interval_ms: u64,
    /// How long a shard lingers to gather more appends into one flush; 0 = no linger.
    pub flush_delay_us: u64,
    /// Most bytes one group-commit flush covers.
    pub flush_bytes_max: u64,
    /// Requests that may wait in one shard's channel; a full queue is RESOURCE_EXHAUSTED.
    pub queue_depth_max: u32,
    /// How long an append waits for room in a full shard queue before RESOURCE_EXHAUSTED.
    pub enqueue_timeout_ms: u64,
    /// glommio registered-buffer pool per shard (locked memory).
    pub io_memory_bytes: u64,
    /// How often each shard rolls aged segments, applies retention and samples the
    /// replication gauges.
    pub maintenance_interval_ms: u64,
    /// Pin each portable shard thread to one CPU (io_uring shards are always pinned).
    pub pin_threads: bool,
    /// Largest record (key + value + headers).
    pub record_bytes_max: u64,
    /// Largest batch (one Append).
    pub batch_bytes_max: u64,
    /// Segment rotation by size.
    pub segment_bytes_max: u64,
    /// Segment rotation by age; 0 = never by age.
    pub segment_ms: u64,
    /// Size of one segment's index file.
    pub index_bytes_max: u64,
    /// Per-partition retention by size; 0 = unlimited.
    pub retention_bytes: u64,
    /// Appends are refused (RESOURCE_EXHAUSTED) once free space under `data_dir` would fall
    /// below this; 0 = no floor.
    pub disk_free_bytes_min: u64,
    /// How often each shard reads the free space (statvfs) while it appends.
    pub disk_check_interval_ms: u64,
    /// Retention by age; 0 = unlimited.
    pub retention_ms: u64,
    /// Log a warning when one fdatasync takes longer; 0 = never.
    pub slow_fsync_ms: u64,
    /// An idempotent producer not heard from for this long is forgotten by a partition.
    pub producer_id_expiry_ms: u64,
    /// Most idempotent producers one partition remembers (the one idle longest is evicted).
    pub producers_per_partition_max: u32,
    /// How many of a partition's last batches are read on open to rebuild its producers.
    pub producer_rebuild_batches_max: u32,
}

impl Default for StorageConfig {
    /// The shard layer's and the storage layer's defaults.
    fn default() -> Self {
        let shard = ShardOptions::new("");
        let log = shard.log;
        let producers = shard.producers;
        let space = shard.space;
        StorageConfig {
            engine: shard.engine,
            uring_write: shard.uring_write,
            preallocate: shard.preallocate,
            spin_before_park_us: shard.spin_before_park_us,
            shards: 0,
            durability: shard.durability,
            flush_interval_ms: shard.flush_interval_ms,
            flush_delay_us: shard.flush_delay_us,
            flush_bytes_max: shard.flush_bytes_max,
            queue_depth_max: shard.queue_depth_max as u32,
            enqueue_timeout_ms: shard.enqueue_timeout_ms,
            io_memory_bytes: shard.io_memory_bytes as u64,
            maintenance_interval_ms: shard.maintenance_interval_ms,
            pin_threads: shard.pin_threads,
            record_bytes_max: log.record_bytes_max,
            batch_bytes_max: log.batch_bytes_max,
            segment_bytes_max: log.segment_bytes_max,
            segment_ms: log.segment_ms,
            index_bytes_max: log.index_bytes_max,
            retention_bytes: log.retention_bytes,
            retention_ms: log.retention_ms,
            disk_free_bytes_min: space.disk_free_bytes_min,
            disk_check_interval_ms: space.disk_check_interval_ms,
            slow_fsync_ms: shard.slow_fsync_ms,
            producer_id_expiry_ms: producers.producer_id_expiry_ms,
            producers_per_partition_max: producers.producers_per_partition_max,
            producer_rebuild_batches_max: producers.producer_rebuild_batches_max,
        }
    }
}

impl StorageConfig {
    /// The number of shards to run: `shards`, or with 0 one per core this process may run
    /// on ([`shard::default_shard_count`]).
    pub fn shard_count(&self) -> u32 {
        match self.shards {
            0 => shard::default_shard_count() as u32,
            n => n,
        }
    }

    /// The limits of every partition log.
    pub fn log_limits(&self) -> LogLimits {
        LogLimits {
            record_bytes_max: self.record_bytes_max,
            batch_bytes_max: self.batch_bytes_max,
            segment_bytes_max: self.segment_bytes_max,
            segment_ms: self.segment_ms,
            index_bytes_max: self.index_bytes_max,
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
        }
    }

    /// The free-space floor and its check's cadence.
    pub fn space_limits(&self) -> SpaceLimits {
        SpaceLimits {
            disk_free_bytes_min: self.disk_free_bytes_min,
            disk_check_interval_ms: self.disk_check_interval_ms,
        }
    }

    /// The limits of every partition's idempotent-producer table.
    pub fn producer_limits(&self) -> ProducerLimits {
        ProducerLimits {
            producer_id_expiry_ms: self.producer_id_expiry_ms,
            producers_per_partition_max: self.producers_per_partition_max,
            producer_rebuild_batches_max: self.producer_rebuild_batches_max,
        }
    }
}
