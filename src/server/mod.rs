//! The gRPC front end: the listener (connection limit, TLS handshakes), client identity,
//! access control, the `walrs.v1.Log` service and the server's life cycle.
//! It authenticates, authorizes and validates requests and hands them to the shards; it
//! never touches the log's files and knows nothing of the on-disk format. Errors become
//! gRPC statuses in `errors` and nowhere else.
//!
//! The service is split by pipeline: `append`, `read`, `admin`, with call tracking in
//! `calls` and a thin tonic `Log` impl in `service`. Only `acl` (its `Action`) is public
//! as a module; the rest is re-exported below or crate-internal.
pub mod acl;
mod admin;
mod append;
mod calls;
mod controller;
mod errors;
pub(crate) mod identity;
mod listener;
mod metrics;
mod mover;
mod oversize;
mod read;
mod reassign;
mod replication;
mod run;
mod service;
mod stats;
mod threads;
pub(crate) mod tls;
pub(crate) mod validate;

pub use errors::{Error, LEADER_METADATA, Result};
pub use listener::PeerInfo;
/// Also the raw-RPC baseline's listener (`bench`), so it serves over the same TLS path.
pub(crate) use listener::{ConnectionLimits, incoming};
pub use run::{DRAIN_GRACE, Running, request_bytes_max, run, shutdown_signal, start};
pub use stats::{ServerStats, ServerStatsSnapshot};
pub use threads::{PolicyApplied, apply_policy};
