//! wal.rs: a durable, partitioned write-ahead log server.
pub mod shard;
pub mod storage;
