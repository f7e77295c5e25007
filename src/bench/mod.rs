//! `walrs bench`: an end-to-end load and latency benchmark of the server over gRPC, with the
//! project's own client, and the baselines that make its figures readable measured in the
//! same run (raw write+fdatasync and O_DIRECT on the same disk, a raw RPC service over the
//! same TLS, optionally the portable engine).
//!
//! Layout: `options` (the knobs), `target` (the in-process server or `--addr`), `load`
//! (producers and consumers, coordinated-omission-corrected timing), `latency`
//! (histograms, `.hgrm`), `baseline`, `progress` (the live line), `report` (JSON and the
//! table), `plot` (`--svg`), and `run`, which puts them in order.
//!
//! The bench is a client: it never reaches into the server beyond reading the shards'
//! counters of a server it started itself. Against its in-process server it never retries
//! a failed request: a figure from a run that lost requests would be a lie, so such a run
//! fails. Against `--addr` (a cluster, where leaders change) its producers and consumers
//! use the routing client: a leader change pauses the run, the pause shows in the
//! latencies, and every retry is counted in the report (`append.retries`).

mod baseline;
mod latency;
mod load;
mod options;
mod pacer;
mod plot;
mod progress;
mod report;
mod run;
mod target;

use std::path::PathBuf;

use thiserror::Error;

pub use baseline::Baseline;
pub use latency::Percentiles;
pub use options::{BenchOptions, DurabilityArg, EngineArg};
pub use report::Report;
pub use run::{Outcome, run, serve_rpc_baseline};

/// Why a bench run failed.
#[derive(Debug, Error)]
pub enum Error {
    /// An option is out of bounds, or the run cannot proceed as asked.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot connect to the server")]
    Connect(#[source] crate::client::Error),
    #[error("{rpc} failed")]
    Rpc {
        rpc: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("the server ended a {what} before the bench was done")]
    StreamEnded { what: &'static str },
    #[error("the in-process server failed")]
    Server(#[source] crate::server::Error),
    #[error("cannot make the run's certificates")]
    Certs(#[source] crate::certs::Error),
    #[error("cannot load TLS files")]
    Tls(#[source] crate::tls::Error),
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    #[error("a bench task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl Error {
    /// Maps a status of `rpc`.
    fn rpc(rpc: &'static str) -> impl Fn(tonic::Status) -> Error {
        move |status| Error::Rpc { rpc, status }
    }
}
