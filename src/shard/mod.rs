//! Shard layer: thread-per-core shards that own partitions, group-commit their appends, and
//! the bridge that lets any tokio task call them.
//!
//! Owns: topic metadata on disk and the topic → partition → shard routing (`topics`), the
//! shard threads and their executors (`executor`), the per-shard loop with group commit
//! (`worker`), the messages between bridge and shard (`command`) and the bounded queue that
//! carries them (`queue`), the counters (`stats`), what a shard publishes about its
//! replicated partitions and their followers' lag (`lag`), and
//! the `Send + Sync` front door [`ShardSet`] (`set`).
//! Must never: know about gRPC or file formats. A partition's `Log` is touched only by the one
//! shard thread that owns it; state on a shard is `!Send` and unlocked, and the only things
//! that cross threads are the bounded command channels, the reply channels, the
//! high-watermark watches and the atomic counters.
//!
//! Invariants: every partition is owned by exactly one shard; an append is acknowledged only
//! after its data is durable (under `Durability::Fsync`), and acks of one partition go out in
//! offset order; every queue is bounded.

mod admin;
mod command;
mod error;
mod executor;
mod lag;
mod options;
mod producers;
mod queue;
mod results;
mod set;
mod stats;
mod topics;
mod worker;

pub use error::{Error, Result};
pub use options::{
    Durability, EngineChoice, FLUSH_INTERVAL_MS_MAX, IO_MEMORY_BYTES_MIN, SHARDS_MAX,
    SPIN_BEFORE_PARK_US_MAX, ShardOptions, UringWrite, default_shard_count,
};
pub use producers::{ProducerLimits, SequenceError, WINDOW_BATCHES};
pub use results::{
    AppendAck, PartitionInfo, PendingAppend, ReadResult, TopicDescription, TopicInfo,
};
pub use set::{AppendRoute, ShardSet, check_batch};
pub use stats::{ShardStats, ShardStatsSnapshot};
pub use topics::{
    TOPIC_NAME_BYTES_MAX, check_topic_name, is_internal_topic, is_valid_topic_name,
    validate_topic_name,
};
