//! wal.rs: a durable, partitioned write-ahead log server.
pub mod proto;
pub mod storage;
