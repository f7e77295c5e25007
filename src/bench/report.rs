//! The results of a run: the JSON document (`--json`), the human table, and the ratios of
//! the result to its baselines.
//!
//! The JSON's top-level objects are a contract with whoever scripts the bench: `config`,
//! `append`, `consume`, `e2e`, `server`, `baselines` (and `ratios`, `machine`). Fields are
//! only ever added. Throughputs count payload: record values, MB = 10^6 bytes.

use std::io::Write;

use serde::Serialize;

use super::baseline::Baseline;
use super::latency::Percentiles;
use super::options::BenchOptions;

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: ConfigReport,
    pub append: AppendReport,
    pub consume: ConsumeReport,
    pub e2e: E2eReport,
    pub server: ServerReport,
    pub baselines: Baselines,
    pub ratios: Ratios,
    pub machine: Machine,
}

/// The options as given, and what they resolved to.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    #[serde(flatten)]
    pub options: BenchOptions,
    pub in_process: bool,
    pub tls: bool,
    /// The address driven (the in-process server's real port).
    pub target: String,
    /// Whether latency counts from intended send times (a `--rate` was given).
    pub coordinated_omission_corrected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppendReport {
    /// Records acknowledged in the measured window.
    pub records: u64,
    /// Records acknowledged in the whole run, warm-up included: what the server stored.
    pub records_total: u64,
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    /// From (intended) send to durable acknowledgement.
    pub latency_us: Option<Percentiles>,
    /// Times a producer retried after a leader change or a lost node (with `--addr`;
    /// always 0 in-process, where a failure ends the run).
    pub retries: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsumeReport {
    pub consumers: u32,
    /// Records of the measured window delivered to consumers.
    pub records: u64,
    /// Every record delivered, warm-up included.
    pub records_total: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub records: u64,
    /// From (intended) send to delivery to a following consumer; `null` without consumers.
    pub latency_us: Option<Percentiles>,
}

/// The server's own counters over the measured window (in-process only) and what
/// DescribeTopic says was written during the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub in_process: bool,
    pub engine: Option<String>,
    pub shards: Option<usize>,
    pub fsyncs: Option<u64>,
    pub fsyncs_per_s: Option<f64>,
    pub records_per_fsync: Option<f64>,
    pub appends_per_fsync: Option<f64>,
    /// Sum over partitions of `end_offset` after the run minus before it.
    pub topic_records_written: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baselines {
    pub disk_fdatasync: Option<Baseline>,
    pub disk_odirect: Option<Baseline>,
    pub rpc: Option<Baseline>,
    /// The same load on an in-process server with engine = portable (`--compare-portable`).
    pub portable: Option<Baseline>,
}

/// The result over its baselines (`null` where a side is missing).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Ratios {
    /// Append MB/s over raw write+fdatasync MB/s (same batches).
    pub append_mb_per_s_over_disk_fdatasync: Option<f64>,
    /// Append MB/s over O_DIRECT write+fdatasync MB/s.
    pub append_mb_per_s_over_disk_odirect: Option<f64>,
    /// Append p99 over raw write+fdatasync p99.
    pub append_p99_over_disk_fdatasync_p99: Option<f64>,
    /// Append MB/s over the raw-RPC ceiling.
    pub append_mb_per_s_over_rpc: Option<f64>,
    /// Append p99 over the raw-RPC p99.
    pub append_p99_over_rpc_p99: Option<f64>,
    /// End-to-end p99 over append p99.
    pub e2e_p99_over_append_p99: Option<f64>,
    /// Append MB/s over the portable engine's.
    pub append_mb_per_s_over_portable: Option<f64>,
}

impl Ratios {
    pub fn of(append: &AppendReport, e2e: &E2eReport, b: &Baselines) -> Ratios {
        let ratio = |a: f64, b: f64| (b > 0.0).then_some(a / b);
        let p99 = |b: &Option<Baseline>| b.as_ref().and_then(|b| b.latency_us).map(|l| l.p99);
        let append_p99 = append.latency_us.map(|l| l.p99 as f64);
        let over_p99 =
            |other: Option<u64>| append_p99.zip(other).and_then(|(a, o)| ratio(a, o as f64));
        let mb = |b: &Option<Baseline>| b.as_ref().and_then(|b| ratio(append.mb_per_s, b.mb_per_s));
        Ratios {
            append_mb_per_s_over_disk_fdatasync: mb(&b.disk_fdatasync),
            append_mb_per_s_over_disk_odirect: mb(&b.disk_odirect),
            append_p99_over_disk_fdatasync_p99: over_p99(p99(&b.disk_fdatasync)),
            append_mb_per_s_over_rpc: mb(&b.rpc),
            append_p99_over_rpc_p99: over_p99(p99(&b.rpc)),
            e2e_p99_over_append_p99: e2e
                .latency_us
                .zip(append_p99)
                .and_then(|(e, a)| ratio(e.p99 as f64, a)),
            append_mb_per_s_over_portable: mb(&b.portable),
        }
    }
}

/// How busy the machine was: a figure taken beside a compile is not a figure.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    /// `/proc/loadavg`'s 1-minute figure before and after the run.
    pub load_1m_before: Option<f64>,
    pub load_1m_after: Option<f64>,
}

/// The 1-minute load average, where the system shows one.
pub fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn latency_cells(l: Option<Percentiles>) -> String {
    match l {
        Some(l) => format!(
            "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.p9999),
            ms(l.max)
        ),
        None => format!(
            "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "-", "-", "-", "-", "-", "-"
        ),
    }
}

fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

impl Report {
    /// The human table.
    pub fn write_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        let c = &self.config.options;
        writeln!(
            out,
            "walrs bench: {} producers x depth {}, {} consumers, {} partitions, {} x {} B records per append ({}), {}{}{}",
            c.producers,
            c.depth,
            c.consumers,
            c.partitions,
            c.batch_records,
            c.record_bytes,
            if c.no_idempotence {
                "plain"
            } else {
                "idempotent"
            },
            c.rate_records_per_s.map_or_else(
                || "closed loop".to_string(),
                |r| format!("rate {r} records/s (CO-corrected)")
            ),
            if self.config.tls {
                ", mTLS"
            } else {
                ", plaintext"
            },
            match &self.server.engine {
                Some(engine) => format!(
                    ", in-process {engine} engine, durability {:?}",
                    c.durability
                )
                .to_lowercase(),
                None => format!(", server {}", self.config.target),
            }
        )?;
        writeln!(
            out,
            "load average (1 min) before {} after {}, {} cores",
            self.machine
                .load_1m_before
                .map_or("-".into(), |l| format!("{l:.2}")),
            self.machine
                .load_1m_after
                .map_or("-".into(), |l| format!("{l:.2}")),
            self.machine.cores
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:<22} {:>12} {:>10} {:>9} | latency ms: {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "records/s", "MB/s", "records", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        )?;
        let a = &self.append;
        writeln!(
            out,
            "{:<22} {:>12.0} {:>10.1} {:>9} | {:>9}{}",
            "append (durable ack)",
            a.records_per_s,
            a.mb_per_s,
            a.records,
            "",
            latency_cells(a.latency_us)
        )?;
        if c.consumers > 0 {
            let k = &self.consume;
            writeln!(
                out,
                "{:<22} {:>12.0} {:>10.1} {:>9} | {:>9}{}",
                "consume / e2e",
                k.records_per_s,
                k.mb_per_s,
                k.records,
                "",
                latency_cells(self.e2e.latency_us)
            )?;
        }
        let baselines = [
            ("base: disk fdatasync", &self.baselines.disk_fdatasync),
            ("base: O_DIRECT+fdsync", &self.baselines.disk_odirect),
            ("base: raw RPC (drop)", &self.baselines.rpc),
            ("base: portable engine", &self.baselines.portable),
        ];
        for (name, b) in baselines {
            if let Some(b) = b {
                writeln!(
                    out,
                    "{:<22} {:>12.0} {:>10.1} {:>9} | {:>9}{}",
                    name,
                    b.records_per_s,
                    b.mb_per_s,
                    "",
                    "",
                    latency_cells(b.latency_us)
                )?;
            }
        }
        writeln!(out)?;
        let s = &self.server;
        if s.in_process {
            writeln!(
                out,
                "server: {} fdatasyncs/s, {} records/fdatasync, {} appends/fdatasync; DescribeTopic: {} records written (bench acked {})",
                s.fsyncs_per_s.map_or("-".into(), |f| format!("{f:.0}")),
                s.records_per_fsync
                    .map_or("-".into(), |f| format!("{f:.1}")),
                s.appends_per_fsync
                    .map_or("-".into(), |f| format!("{f:.2}")),
                s.topic_records_written,
                a.records_total
            )?;
        } else {
            writeln!(
                out,
                "DescribeTopic: {} records written (bench acked {}); append retries {}",
                s.topic_records_written, a.records_total, a.retries
            )?;
        }
        let r = &self.ratios;
        writeln!(
            out,
            "ratios: append/fdatasync MB/s {}, append/O_DIRECT MB/s {}, append p99/fdatasync p99 {}, append/RPC MB/s {}, append p99/RPC p99 {}, e2e p99/append p99 {}, append/portable MB/s {}",
            ratio_text(r.append_mb_per_s_over_disk_fdatasync),
            ratio_text(r.append_mb_per_s_over_disk_odirect),
            ratio_text(r.append_p99_over_disk_fdatasync_p99),
            ratio_text(r.append_mb_per_s_over_rpc),
            ratio_text(r.append_p99_over_rpc_p99),
            ratio_text(r.e2e_p99_over_append_p99),
            ratio_text(r.append_mb_per_s_over_portable),
        )?;
        Ok(())
    }
}
