//! wal.rs: a durable, partitioned write-ahead log server.
//!
//! Layers, bottom up: `storage` (one partition's log on disk, two I/O engines), `shard`
//! (thread-per-core owners of partitions, group commit, the bridge from tokio), `server`
//! (gRPC, TLS, ACL). `observability` (metrics, health, request spans, logging) serves
//! all three. `config`, `certs` and `client` serve the `walrs` command; `bench` is its
//! end-to-end load and latency benchmark.
pub mod bench;
pub mod certs;
pub mod client;
pub(crate) mod cluster;
pub mod config;
/// Entry points of the fuzz targets (`fuzz/`); not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod observability;
pub mod proto;
pub(crate) mod raft;
pub mod server;
pub mod shard;
pub mod storage;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
