//! The gRPC front end: TLS, client identity, access control, the `walrs.v1.Log` service
//! and the server's life cycle.
//! It authenticates, authorizes and validates requests and hands them to the shards; it
//! never touches the log's files and knows nothing of the on-disk format. Errors become
//! gRPC statuses in `errors` and nowhere else.
pub mod acl;
mod errors;
pub mod identity;
mod run;
mod service;
pub mod tls;

pub use errors::{Error, Result};
pub use run::{DRAIN_GRACE, Running, log_config, run, shard_options, shutdown_signal, start};
pub use service::LogService;
