//! wal.rs: a durable, partitioned write-ahead log server.
pub mod certs;
pub mod config;
pub mod proto;
pub mod server;
pub mod storage;
