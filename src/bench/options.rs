//! The knobs of one `walrs bench` run: what load to generate, against which server, and
//! where to write the results. Parsed by clap (the `walrs bench` flags) and echoed whole
//! into the JSON report's `config`, so a figure always travels with what produced it.
//!
//! Invariant: [`BenchOptions::validate`] has passed before any load starts; the rest of
//! the module relies on its bounds (non-zero counts, records big enough for a timestamp).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::Error;
use crate::config;

/// Bytes at the start of every record value that hold its send time (nanoseconds since
/// the run's epoch, little-endian): what a consumer needs for end-to-end latency.
pub const STAMP_BYTES: usize = 8;
/// Most producers or consumers one run may start (each has its own connection).
pub const CLIENTS_MAX: u32 = 1024;
/// Most pipelined appends per producer; the in-process server's
/// `append_stream_inflight_max` is raised to match.
pub const DEPTH_MAX: u32 = 1024;
/// Largest record value the bench generates.
pub const RECORD_BYTES_MAX: u32 = 1 << 20;

/// Which storage engine the in-process server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineArg {
    Auto,
    Uring,
    Portable,
}

impl From<EngineArg> for config::EngineChoice {
    fn from(engine: EngineArg) -> config::EngineChoice {
        match engine {
            EngineArg::Auto => config::EngineChoice::Auto,
            EngineArg::Uring => config::EngineChoice::Uring,
            EngineArg::Portable => config::EngineChoice::Portable,
        }
    }
}

/// How the in-process server's uring engine makes a commit durable (`storage.uring_write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UringWriteArg {
    /// O_DIRECT write, then fdatasync.
    Fdatasync,
    /// O_DIRECT | O_DSYNC writes, durable on completion.
    Dsync,
    /// A small commit's write and fdatasync as blocking calls on the shard thread.
    Inline,
}

impl From<UringWriteArg> for config::UringWrite {
    fn from(mode: UringWriteArg) -> config::UringWrite {
        match mode {
            UringWriteArg::Fdatasync => config::UringWrite::Fdatasync,
            UringWriteArg::Dsync => config::UringWrite::Dsync,
            UringWriteArg::Inline => config::UringWrite::Inline,
        }
    }
}

/// When the in-process server acknowledges an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityArg {
    /// After the group-commit fdatasync that covers it.
    Fsync,
    /// Once written; fdatasync in the background.
    Interval,
    /// Once written; never fdatasync.
    None,
}

impl From<DurabilityArg> for config::Durability {
    fn from(durability: DurabilityArg) -> config::Durability {
        match durability {
            DurabilityArg::Fsync => config::Durability::Fsync,
            DurabilityArg::Interval => config::Durability::Interval,
            DurabilityArg::None => config::Durability::None,
        }
    }
}

/// `walrs bench`: the load, the server, the baselines and the outputs.
#[derive(Debug, Clone, Args, Serialize)]
pub struct BenchOptions {
    /// Producers, each with its own connection and one pipelined AppendStream; producer i
    /// appends to partition i mod --partitions.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Consumers following the topic from its end at the start (partition i goes to
    /// consumer i mod --consumers); they give the end-to-end latency.
    #[arg(long, default_value_t = 0)]
    pub consumers: u32,
    /// Topic to write; created with --partitions when missing.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Bytes of each record's value (the first 8 hold its send time).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: u32,
    /// Records per append request (one batch on disk).
    #[arg(long, default_value_t = 100)]
    pub batch_records: u32,
    /// Append requests in flight per producer (pipelined on its AppendStream).
    #[arg(long, default_value_t = 4)]
    pub depth: u32,
    /// Seconds of measured load after the warm-up (ignored with --records).
    #[arg(long = "duration", default_value_t = 10.0)]
    pub duration_s: f64,
    /// Measure this many records (at least; rounded up to whole batches per producer)
    /// instead of a duration.
    #[arg(long)]
    pub records: Option<u64>,
    /// Seconds of load before measuring (not recorded).
    #[arg(long = "warmup", default_value_t = 1.0)]
    pub warmup_s: f64,
    /// Target rate in records/s over all producers (open loop; latency counts from each
    /// request's intended send time). Default: as fast as acks allow (closed loop).
    #[arg(long = "rate")]
    pub rate_records_per_s: Option<f64>,
    /// Plaintext instead of mutual TLS.
    #[arg(long)]
    pub no_tls: bool,
    /// Durability of the in-process server.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Storage engine of the in-process server.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// How the in-process server's uring engine makes a commit durable.
    #[arg(long, value_enum, default_value_t = UringWriteArg::Fdatasync)]
    pub uring_write: UringWriteArg,
    /// Whether the in-process server zero-fills ahead of small commits
    /// (`storage.preallocate`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub preallocate: bool,
    /// How long the in-process server's uring shards spin before parking, in µs (0: never).
    #[arg(long = "spin-before-park-us", default_value_t = 0)]
    pub spin_before_park_us: u64,
    /// Shards of the in-process server (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub shards: u32,
    /// Drive this server instead of starting one in-process (host:port or https://...).
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: CA certificate that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    pub ca: PathBuf,
    /// With --addr: client certificate (its CN needs produce, consume and admin rights).
    #[arg(long, default_value = "certs/root.pem")]
    pub cert: PathBuf,
    /// With --addr: the client certificate's private key.
    #[arg(long = "tls-key", default_value = "certs/root-key.pem")]
    pub tls_key: PathBuf,
    /// With --addr: name to check the server's certificate for.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// With --addr: how long, in milliseconds, a producer or consumer keeps retrying when
    /// a node is not the partition's leader (it follows the leader's address), an election
    /// is under way, or a node cannot be reached (it tries the others, backing off from
    /// 50 ms to 1 s); the run pauses rather than fails. Appends not yet acknowledged are
    /// sent again with their sequence numbers, so none is written twice (with
    /// --no-idempotence some may be, which the report shows as DescribeTopic's count over
    /// the acks). Retries are counted in the
    /// report (`append.retries`). 0: no retry, a failure ends the run.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub retry_for_ms: u64,
    /// Send plain appends instead of idempotent ones. By default each producer picks a
    /// random producer id for the run and numbers its batches, so a request resent after a
    /// lost connection is answered with its original offsets instead of written twice.
    #[arg(long)]
    pub no_idempotence: bool,
    /// Directory under which the run makes its temporary directory (server data, certs,
    /// disk baselines). Default: the system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Seconds each baseline runs (raw fdatasync, O_DIRECT: half before the load, half
    /// after; raw RPC: after); 0 skips them.
    #[arg(long = "baseline", default_value_t = 3.0)]
    pub baseline_s: f64,
    /// Also run the same load on a second in-process server with engine = portable.
    #[arg(long)]
    pub compare_portable: bool,
    /// Write every figure and this configuration as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the append latency as HdrHistogram percentile distribution text (the
    /// end-to-end one goes beside it, as `<stem>.e2e.hgrm`).
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write a percentile plot (SVG) of append, end-to-end and baseline latencies.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Generate no load: serve the raw-RPC baseline's service (it acknowledges every
    /// append at once and stores nothing) on this address, plaintext, until Ctrl-C or
    /// SIGTERM. Run it as its own process (pinned with `taskset` like a server) and drive
    /// it with `walrs bench --addr ... --no-tls --baseline 0`: the ceiling of the gRPC
    /// layer on this machine, measured like a real server (benches/commit-latency.sh,
    /// variant `rpc-drop`).
    #[arg(long, value_name = "HOST:PORT")]
    pub serve_rpc_baseline: Option<std::net::SocketAddr>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        <BenchOptions as clap::FromArgMatches>::from_arg_matches(
            &<BenchOptions as Args>::augment_args(clap::Command::new("bench"))
                .get_matches_from(["bench"]),
        )
        .expect("the defaults parse")
    }
}

impl BenchOptions {
    /// Checks every bound the load generator relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what: String| Err(Error::Invalid(what));
        if self.producers == 0 || self.producers > CLIENTS_MAX {
            return invalid(format!("--producers must be 1..={CLIENTS_MAX}"));
        }
        if self.consumers > CLIENTS_MAX {
            return invalid(format!("--consumers must be 0..={CLIENTS_MAX}"));
        }
        if self.partitions == 0 {
            return invalid("--partitions must be at least 1".into());
        }
        if (self.record_bytes as usize) < STAMP_BYTES || self.record_bytes > RECORD_BYTES_MAX {
            return invalid(format!(
                "--record-bytes must be {STAMP_BYTES}..={RECORD_BYTES_MAX} (the first {STAMP_BYTES} hold the send time)"
            ));
        }
        if self.batch_records == 0 {
            return invalid("--batch-records must be at least 1".into());
        }
        if self.depth == 0 || self.depth > DEPTH_MAX {
            return invalid(format!("--depth must be 1..={DEPTH_MAX}"));
        }
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) && self.records.is_none() {
            return invalid("--duration must be a positive number of seconds".into());
        }
        if self.records == Some(0) {
            return invalid("--records must be at least 1".into());
        }
        if !(self.warmup_s >= 0.0 && self.warmup_s.is_finite()) {
            return invalid("--warmup must be 0 or more seconds".into());
        }
        if !(self.baseline_s >= 0.0 && self.baseline_s.is_finite()) {
            return invalid("--baseline must be 0 or more seconds".into());
        }
        if let Some(rate) = self.rate_records_per_s
            && !(rate > 0.0 && rate.is_finite())
        {
            return invalid("--rate must be a positive number of records/s".into());
        }
        if !crate::shard::is_valid_topic_name(&self.topic, crate::shard::TOPIC_NAME_BYTES_MAX) {
            return invalid(format!(
                "--topic {:?} is not a valid topic name",
                self.topic
            ));
        }
        Ok(())
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    /// Payload bytes of one append request.
    pub fn batch_bytes(&self) -> u64 {
        u64::from(self.batch_records) * u64::from(self.record_bytes)
    }

    /// Whether the bench starts its own server.
    pub fn in_process(&self) -> bool {
        self.addr.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        let options = BenchOptions::default();
        options.validate().unwrap();
        assert_eq!(options.batch_bytes(), 100 * 1024);
        let bad = BenchOptions {
            record_bytes: 4,
            ..BenchOptions::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("send time")
        );
        let bad = BenchOptions {
            rate_records_per_s: Some(0.0),
            ..BenchOptions::default()
        };
        assert!(bad.validate().is_err());
    }
}
