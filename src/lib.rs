//! wal.rs: a durable, partitioned write-ahead log server.
pub mod certs;
pub mod client;
pub mod config;
pub mod proto;
pub mod server;
pub mod shard;
pub mod storage;
