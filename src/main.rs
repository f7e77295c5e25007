//! The `walrs` command: the server (`serve`), development certificates (`certs`), and a
//! small client for every RPC (`produce`, `consume`, `topic`, `truncate`), and the load and
//! latency benchmark (`bench`, implemented in `walrs::bench`).
//!
//! This file owns argument parsing and printing (logging is set up by
//! `walrs::observability::init_logging`); it never implements
//! server or storage behaviour itself (that is `walrs::server` and below) and it is the only
//! place besides tests that uses `anyhow`.
//!
//! Without `--config`, `serve` runs the built-in defaults (see `walrs.example.toml`) and,
//! when `certs/server.pem`, `certs/server-key.pem` and `certs/ca.pem` all exist, mutual TLS
//! with those files and an ACL that grants the `root` client everything (what `make gencert`
//! makes); otherwise plaintext on the loopback address. Client commands default to mutual
//! TLS with `certs/ca.pem`, `certs/root.pem` and `certs/root-key.pem` (`--ca`, `--cert`,
//! `--tls-key`); `--plaintext` turns TLS off.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use walrs::bench::EngineArg;
use walrs::client::{ClientTls, ReadOptions, RetryOptions, RoutingClient};
use walrs::config::{self, AclEntry, Config, TlsConfig};
use walrs::proto::v1::{AppendRequest, Record};
use walrs::server::acl::Action;

/// wal.rs: a durable, partitioned write-ahead log server.
#[derive(Debug, Parser)]
#[command(name = "walrs", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Make development certificates: a CA, a server pair and the `root` and `nobody` clients;
    /// with --node ID, a cluster node's pair (`node-ID.pem`) signed by the same CA.
    Certs(CertsArgs),
    /// Append records: the VALUES given, else one record per line of standard input.
    ///
    /// In a cluster the records go to the partition's leader. A node that does not lead it
    /// answers with the leader's address and the command follows it; during an election, or
    /// when a node is down, it pauses (backoff from 50 ms to 1 s) and tries the other nodes,
    /// for up to --retry-for-ms, then fails with what it tried.
    ///
    /// Appends are idempotent by default: the command picks a random producer id for the
    /// run and numbers its batches per partition, so an append retried after a lost
    /// connection is answered with its original offsets instead of written twice. Without
    /// --partition the partition is chosen here (by key as the server would, else one at
    /// random for the whole run). --no-idempotence sends plain appends.
    Produce(ProduceArgs),
    /// Print records, one per line.
    ///
    /// Reads go to any replica (a follower serves what it knows is committed). When the node
    /// fails or refuses, the command reconnects to another node and resumes after the last
    /// record it printed, for up to --retry-for-ms per outage.
    Consume(ConsumeArgs),
    /// Create, list, describe or delete topics.
    Topic(TopicArgs),
    /// Drop a partition's records below an offset (whole segments; a WAL checkpoint).
    Truncate(TruncateArgs),
    /// The cluster as a node sees it.
    Cluster(ClusterArgs),
    /// Load and latency benchmark: an in-process server (or --addr) driven over gRPC, with
    /// raw disk and raw RPC baselines measured in the same run.
    Bench(Box<walrs::bench::BenchOptions>),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (see walrs.example.toml). Without it: the built-in defaults, with
    /// mutual TLS from certs/ when certs/server.pem, certs/server-key.pem and certs/ca.pem exist.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC listen address, overriding `listen`.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Data directory, overriding `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Storage engine, overriding `storage.engine`.
    #[arg(long, value_enum)]
    engine: Option<EngineArg>,
    /// Shard count (0 = one per core), overriding `storage.shards`.
    #[arg(long)]
    shards: Option<u32>,
    /// Log line format, overriding `[log] format`. The filter is `RUST_LOG` when set, else
    /// `[log] filter` (e.g. `RUST_LOG=walrs=debug` logs one line per request).
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Prometheus `/metrics` and `/health` address, overriding `[metrics] listen`.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Serve no metrics (`[metrics] enabled = false`): no recorder, no HTTP listener.
    #[arg(long)]
    no_metrics: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Args)]
struct CertsArgs {
    /// Directory to write the PEM files to (created if missing).
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Overwrite existing files (with --node: the node's pair; an existing CA is kept).
    #[arg(long)]
    force: bool,
    /// Write only cluster node ID's pair, `node-ID.pem` and `node-ID-key.pem` (CN `node-ID`,
    /// for serving and dialing alike), signed by `ca.pem` in --out (made first when missing).
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u32).range(1..))]
    node: Option<u32>,
    /// Another name the node certificate is valid for, beside localhost and 127.0.0.1 (a DNS
    /// name or an IP address); repeat for more.
    #[arg(long = "san", value_name = "NAME", requires = "node")]
    sans: Vec<String>,
}

/// How a client command reaches the server.
#[derive(Debug, Args)]
struct Connection {
    /// Server address (host:port or https://host:port). Default: `listen` of --config, else
    /// 127.0.0.1:7070.
    #[arg(long, env = "WALRS_ADDR")]
    addr: Option<String>,
    /// Config file to take the default address from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// CA certificate that signed the server's certificate.
    #[arg(long, default_value = "certs/ca.pem")]
    ca: PathBuf,
    /// Client certificate; its common name is the identity the ACL sees.
    #[arg(long, default_value = "certs/root.pem")]
    cert: PathBuf,
    /// The client certificate's private key (`--tls-key`, because `produce --key` is the
    /// record key).
    #[arg(long = "tls-key", default_value = "certs/root-key.pem")]
    tls_key: PathBuf,
    /// Name to check the server's certificate for.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// Connect without TLS (only a plaintext server accepts this).
    #[arg(long)]
    plaintext: bool,
    /// How long to keep retrying, in milliseconds, when a node is not the partition's
    /// leader (the command follows it), an election is under way, or a node cannot be
    /// reached (the command tries the others, backing off from 50 ms to 1 s). Also the
    /// longest one attempt may wait for its answer. 0: one attempt, no retry (it may wait 30 s).
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    retry_for_ms: u64,
}

impl Connection {
    /// A client that starts at the address given and follows the cluster from there
    /// (nothing connects until the first call).
    fn connect(&self) -> anyhow::Result<RoutingClient> {
        let addr = match (&self.addr, &self.config) {
            (Some(addr), _) => addr.clone(),
            (None, Some(path)) => Config::load(path)?.listen.to_string(),
            (None, None) => "127.0.0.1:7070".to_string(),
        };
        let tls = (!self.plaintext).then(|| {
            ClientTls::new(&self.ca, &self.cert, &self.tls_key).with_domain(self.domain.clone())
        });
        let options = match self.retry_for_ms {
            0 => RetryOptions::no_retry(),
            ms => RetryOptions::with_budget(std::time::Duration::from_millis(ms)),
        };
        RoutingClient::new(&addr, tls, options).with_context(|| format!("connecting to {addr}"))
    }
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to append to.
    topic: String,
    /// Record values; all of them form one batch. None: one record per stdin line.
    values: Vec<String>,
    /// Key of every record (also picks the partition when --partition is absent).
    #[arg(long)]
    key: Option<String>,
    /// Partition to append to; default: by key, else round-robin (idempotent: one
    /// partition at random for the run).
    #[arg(long)]
    partition: Option<u32>,
    /// Plain appends: no producer id or sequence (a retry may write a batch twice).
    #[arg(long)]
    no_idempotence: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `partition offset key value`, tab-separated (bytes shown as lossy UTF-8).
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    #[command(flatten)]
    connection: Connection,
    /// Topic to read.
    topic: String,
    /// Partition to read; default: every partition.
    #[arg(long)]
    partition: Option<u32>,
    /// First offset to read (in every partition read).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep tailing the log after catching up.
    #[arg(long)]
    follow: bool,
    /// Stop after printing this many records.
    #[arg(long)]
    max: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Debug, Args)]
struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        #[command(flatten)]
        connection: Connection,
        name: String,
        /// Partition count; 0 = the server's default.
        #[arg(long, default_value_t = 0)]
        partitions: u32,
    },
    /// List the topics you may see.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a topic's partitions with their offsets and shards.
    Describe {
        #[command(flatten)]
        connection: Connection,
        name: String,
    },
    /// Delete a topic and all its records.
    Delete {
        #[command(flatten)]
        connection: Connection,
        name: String,
    },
}

#[derive(Debug, Args)]
struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List the nodes the answering node knows, with their addresses and whether it can
    /// reach them now (its replication link to them is up), as a table or as JSON.
    Status {
        #[command(flatten)]
        connection: Connection,
        /// Print one JSON object (`node_id`, `controller`, `nodes`: `id`, `addr`, `alive`,
        /// `state`).
        #[arg(long)]
        json: bool,
    },
    /// Move one partition's replicas to the nodes named, preferred leader first: the new
    /// replicas catch up as learners and are promoted, then the old ones are removed, while
    /// the partition keeps taking appends. Waits until the move is done (DescribeTopic shows
    /// exactly the new replicas), or --timeout-s.
    Reassign {
        #[command(flatten)]
        connection: Connection,
        /// TOPIC/PARTITION, e.g. orders/0.
        partition: String,
        /// The new replicas, e.g. 1,2,4: at least 2 distinct node ids.
        #[arg(long, value_delimiter = ',', required = true)]
        replicas: Vec<u32>,
        /// How long to wait for the move to finish (0 = do not wait).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Move every replica off a node to the least loaded other nodes, so that it can be
    /// stopped; no replica is placed on it again. Waits until it holds none, or --timeout-s.
    /// A controller voter cannot be decommissioned.
    Decommission {
        #[command(flatten)]
        connection: Connection,
        /// The node id.
        node: u32,
        /// How long to wait for the moves to finish (0 = do not wait).
        #[arg(long, default_value_t = 1800)]
        timeout_s: u64,
    },
}

#[derive(Debug, Args)]
struct TruncateArgs {
    #[command(flatten)]
    connection: Connection,
    topic: String,
    #[arg(long)]
    partition: u32,
    /// Records below this offset may be dropped.
    #[arg(long)]
    before: u64,
}

fn main() -> std::process::ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        // `serve` reads its config and sets its thread policy before any other thread
        // exists: tokio's workers and everything made after inherit the policy.
        Command::Serve(args) => plan_serve(args).and_then(|plan| runtime()?.block_on(serve(plan))),
        command => runtime().and_then(|runtime| runtime.block_on(run(command))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walrs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

/// Every command but `serve`, which `main` runs itself.
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => unreachable!("main runs serve itself, after planning it"),
        Command::Certs(args) => {
            let written = match args.node {
                Some(node_id) => {
                    let sans: Vec<&str> = args.sans.iter().map(String::as_str).collect();
                    walrs::certs::generate_node(&args.out, node_id, &sans, args.force)?
                }
                None => walrs::certs::generate(&args.out, args.force)?,
            };
            for path in written {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Produce(args) => produce(args).await,
        Command::Consume(args) => consume(args).await,
        Command::Topic(args) => topic(args.command).await,
        Command::Cluster(args) => cluster(args.command).await,
        Command::Bench(options) => bench(&options).await,
        Command::Truncate(args) => {
            let client = args.connection.connect()?;
            let response = client
                .truncate(&args.topic, args.partition, args.before)
                .await?;
            println!("start_offset {}", response.start_offset);
            Ok(())
        }
    }
}

/// The built-in config for `serve` without `--config` (see the module docs).
fn default_config() -> Config {
    let dir = Path::new("certs");
    let tls = TlsConfig {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client_ca: dir.join("ca.pem"),
    };
    let mut config = Config::default();
    if tls.cert.exists() && tls.key.exists() && tls.client_ca.exists() {
        config.tls = Some(tls);
        config.acl = vec![AclEntry {
            identity: walrs::certs::ROOT_CLIENT.to_string(),
            topics: vec!["*".to_string()],
            actions: Action::ALL.to_vec(),
        }];
    }
    config
}

/// `serve`'s config and log format, read before the tokio runtime exists (see `main`).
struct ServePlan {
    config: Config,
    config_given: bool,
    log_format: Option<config::LogFormat>,
    /// What setting `server.thread_policy` on the main thread did.
    policy: std::io::Result<walrs::server::PolicyApplied>,
}

/// Reads and checks `serve`'s config (the file or the built-in default, then the flags), and
/// sets its thread policy on the calling thread, so that every thread made after inherits it.
fn plan_serve(args: ServeArgs) -> anyhow::Result<ServePlan> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => default_config(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(engine) = args.engine {
        config.storage.engine = engine.into();
    }
    if let Some(shards) = args.shards {
        config.storage.shards = shards;
    }
    if let Some(listen) = args.metrics_listen {
        config.metrics.listen = listen;
    }
    if args.no_metrics {
        config.metrics.enabled = false;
    }
    let log_format = args.log_format.map(|f| match f {
        LogFormatArg::Text => config::LogFormat::Text,
        LogFormatArg::Json => config::LogFormat::Json,
    });
    config.validate()?;
    let policy = walrs::server::apply_policy(config.server.thread_policy);
    Ok(ServePlan {
        config,
        config_given: args.config.is_some(),
        log_format,
        policy,
    })
}

async fn serve(plan: ServePlan) -> anyhow::Result<()> {
    let ServePlan {
        config,
        config_given,
        log_format,
        policy,
    } = plan;
    walrs::observability::init_logging(&config.log, log_format).map_err(anyhow::Error::msg)?;
    if !config_given {
        tracing::info!(
            tls = config.tls.is_some(),
            "no --config: built-in defaults{}",
            if config.tls.is_some() {
                " with mutual TLS from certs/ (client root has every right)"
            } else {
                ", plaintext on loopback (certs/ has no server certificate)"
            }
        );
    }
    let asked = config.server.thread_policy;
    match policy {
        Ok(applied @ walrs::server::PolicyApplied::KeptOther(_)) => tracing::info!(
            ?asked,
            ?applied,
            "server.thread_policy: the process was started under another policy, which it keeps"
        ),
        Ok(applied) => tracing::debug!(?asked, ?applied, "server.thread_policy applied"),
        Err(e) => tracing::warn!(
            error = %e,
            ?asked,
            "cannot set server.thread_policy; every thread keeps the policy the process was started with"
        ),
    }
    walrs::server::run(config, walrs::server::shutdown_signal()).await?;
    if let Some(hops) = walrs::observability::hops::report() {
        // Every append since the start (WALRS_HOP_TRACE=1), warm-up included.
        eprintln!("Per-hop latency of this server's appends (WALRS_HOP_TRACE=1):\n{hops}");
    }
    Ok(())
}

fn record_of(key: &Option<String>, value: String) -> Record {
    walrs::client::record(key.clone().unwrap_or_default(), value)
}

/// Lines `produce` sends before their acknowledgements come back.
const PRODUCE_WINDOW: usize = 256;

/// The partition an idempotent `produce` writes to when none is asked for: the key's (as
/// the server picks it: crc32 of the key modulo the partitions), else one at random. A
/// topic not there yet (auto-created by the first append) is taken to have partition 0.
async fn produce_partition(client: &RoutingClient, args: &ProduceArgs) -> anyhow::Result<u32> {
    if let Some(partition) = args.partition {
        return Ok(partition);
    }
    let partitions = match client.describe_topic(&args.topic).await {
        Ok(description) => description.partitions.len() as u32,
        Err(status) if status.code() == tonic::Code::NotFound => 1,
        Err(status) => return Err(status.into()),
    };
    if partitions == 0 {
        bail!("topic {} has no partitions", args.topic);
    }
    Ok(match args.key.as_deref() {
        Some(key) if !key.is_empty() => crc32fast::hash(key.as_bytes()) % partitions,
        _ => rand::random_range(0..partitions),
    })
}

async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let client = args.connection.connect()?;
    // Idempotent: one producer id for the run, batches numbered per partition.
    let (mut sequences, partition) = if args.no_idempotence {
        (None, args.partition)
    } else {
        let partition = produce_partition(&client, &args).await?;
        (Some(walrs::client::Sequences::new()), Some(partition))
    };
    if !args.values.is_empty() {
        let records = args
            .values
            .iter()
            .map(|v| record_of(&args.key, v.clone()))
            .collect();
        let mut request = AppendRequest {
            topic: args.topic.clone(),
            partition,
            records,
            ..AppendRequest::default()
        };
        if let Some(sequences) = &mut sequences {
            sequences.stamp(&mut request);
        }
        let ack = client.append_request(request).await?;
        println!(
            "{} partition {} offsets {}..{}",
            args.topic,
            ack.partition,
            ack.base_offset,
            ack.base_offset + u64::from(ack.count)
        );
        return Ok(());
    }
    // One request per line, pipelined over an AppendStream (a new one on the leader after a
    // leader change, resending what was not acknowledged), so a pipe of a million lines
    // and a person typing both work. Lines are read on a blocking thread.
    let (tx, rx) = tokio::sync::mpsc::channel::<AppendRequest>(PRODUCE_WINDOW);
    let topic = args.topic.clone();
    let key = args.key.clone();
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let stdin = std::io::stdin();
        for (i, line) in stdin.lock().lines().enumerate() {
            let line = line.context("reading standard input")?;
            let mut request = AppendRequest {
                topic: topic.clone(),
                partition,
                records: vec![record_of(&key, line)],
                correlation_id: i as u64,
                producer_id: 0,
                sequence: 0,
            };
            if let Some(sequences) = &mut sequences {
                sequences.stamp(&mut request);
            }
            if tx.blocking_send(request).is_err() {
                break; // the stream ended early; its error is reported below
            }
        }
        Ok(())
    });
    let mut responses =
        std::pin::pin!(client.append_pipelined(&args.topic, partition, rx, PRODUCE_WINDOW));
    let mut stdout = std::io::stdout().lock();
    while let Some(ack) = responses.next().await {
        let ack = ack?;
        writeln!(
            stdout,
            "{} partition {} offset {}",
            args.topic, ack.partition, ack.base_offset
        )?;
    }
    reader.await??;
    Ok(())
}

async fn bench(options: &walrs::bench::BenchOptions) -> anyhow::Result<()> {
    if let Some(addr) = options.serve_rpc_baseline {
        walrs::bench::serve_rpc_baseline(addr, walrs::server::shutdown_signal()).await?;
        return Ok(());
    }
    let outcome = walrs::bench::run(options).await?;
    outcome.report.write_table(&mut std::io::stdout().lock())?;
    if let Some(hops) = &outcome.hops {
        println!("\nPer-hop latency of the server's appends (WALRS_HOP_TRACE=1):\n{hops}");
    }
    outcome.write_files(options)?;
    Ok(())
}

async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let client = args.connection.connect()?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => {
            let description = client.describe_topic(&args.topic).await?;
            description.partitions.iter().map(|p| p.id).collect()
        }
    };
    if partitions.is_empty() {
        bail!("topic {} has no partitions", args.topic);
    }
    // Each stream resumes on another node, after the last offset it delivered.
    let mut streams = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let stream = client.read_stream(
            &args.topic,
            partition,
            args.from,
            ReadOptions::default(),
            args.follow,
        );
        streams.push(Box::pin(stream.map(move |r| (partition, r))));
    }
    let mut merged = futures::stream::select_all(streams);
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    while let Some((partition, response)) = merged.next().await {
        for record in response?.records {
            if args.max.is_some_and(|max| printed >= max) {
                return Ok(());
            }
            print_record(&mut stdout, args.format, partition, &record)?;
            printed += 1;
        }
        stdout.flush()?;
        if args.max.is_some_and(|max| printed >= max) {
            return Ok(());
        }
    }
    Ok(())
}

fn print_record(
    out: &mut impl Write,
    format: Format,
    partition: u32,
    record: &Record,
) -> anyhow::Result<()> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match format {
        Format::Text => writeln!(
            out,
            "{partition}\t{}\t{}\t{}",
            record.offset,
            text(&record.key),
            text(&record.value)
        )?,
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> = record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(text(v))))
                .collect();
            let line = serde_json::json!({
                "partition": partition,
                "offset": record.offset,
                "timestamp_ms": record.timestamp_ms,
                "key": text(&record.key),
                "value": text(&record.value),
                "headers": headers,
            });
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

async fn topic(command: TopicCommand) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            connection,
            name,
            partitions,
        } => {
            let client = connection.connect()?;
            let created = client.create_topic(&name, partitions).await?;
            println!("{} partitions {}", created.name, created.partitions);
        }
        TopicCommand::List { connection } => {
            let client = connection.connect()?;
            for topic in client.list_topics().await?.topics {
                println!("{}\t{}", topic.name, topic.partitions);
            }
        }
        TopicCommand::Describe { connection, name } => {
            let client = connection.connect()?;
            let description = client.describe_topic(&name).await?;
            println!("topic {}", description.name);
            println!(
                "partition\tstart\tend\thigh_watermark\tshard\tleader\treplicas\tleader_epoch"
            );
            for p in description.partitions {
                // Node ids, comma-separated; "-" when none are known (a single node).
                let replicas = if p.replicas.is_empty() {
                    "-".to_owned()
                } else {
                    let ids: Vec<String> = p.replicas.iter().map(u32::to_string).collect();
                    ids.join(",")
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    p.id,
                    p.start_offset,
                    p.end_offset,
                    p.high_watermark,
                    p.shard,
                    p.leader,
                    replicas,
                    p.leader_epoch
                );
            }
        }
        TopicCommand::Delete { connection, name } => {
            let client = connection.connect()?;
            client.delete_topic(&name).await?;
            println!("deleted {name}");
        }
    }
    Ok(())
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { connection, json } => {
            let client = connection.connect()?;
            let status = client.describe_cluster().await?;
            if json {
                let nodes: Vec<serde_json::Value> = status
                    .nodes
                    .iter()
                    .map(|n| serde_json::json!({ "id": n.id, "addr": n.addr, "alive": n.alive, "state": n.state }))
                    .collect();
                let out = serde_json::json!({
                    "node_id": status.node_id,
                    "controller": status.controller,
                    "nodes": nodes,
                });
                println!("{out}");
                return Ok(());
            }
            println!("node\taddress\talive\tgossip");
            for n in &status.nodes {
                let alive = match (n.id == status.node_id, n.alive) {
                    (true, _) => "yes (answered)",
                    (false, true) => "yes",
                    (false, false) => "no",
                };
                let gossip = if n.state.is_empty() { "-" } else { &n.state };
                println!("{}\t{}\t{alive}\t{gossip}", n.id, n.addr);
            }
            // 0 while no controller leader is known (no majority of its voters up yet).
            match status.controller {
                0 => println!("controller: none known"),
                id => println!("controller: node {id}"),
            }
        }
        ClusterCommand::Reassign {
            connection,
            partition,
            replicas,
            timeout_s,
        } => {
            let (topic, p) = partition
                .rsplit_once('/')
                .and_then(|(t, p)| Some((t.to_owned(), p.parse::<u32>().ok()?)))
                .ok_or_else(|| {
                    anyhow::anyhow!("{partition:?} is not TOPIC/PARTITION (e.g. orders/0)")
                })?;
            let client = connection.connect()?;
            let answer = client
                .reassign_partition(&topic, p, replicas.clone())
                .await?;
            println!(
                "{topic}/{p}: moving from {:?} to {replicas:?}",
                answer.previous
            );
            let wanted: Vec<Vec<u32>> = vec![replicas];
            wait_for_replicas(
                &client,
                timeout_s,
                |described| {
                    described
                        .iter()
                        .filter(|(t, part, _)| *t == topic && *part == p)
                        .all(|(_, _, r)| wanted.contains(r))
                },
                std::slice::from_ref(&topic),
            )
            .await?;
        }
        ClusterCommand::Decommission {
            connection,
            node,
            timeout_s,
        } => {
            let client = connection.connect()?;
            let answer = client.decommission_node(node).await?;
            for m in &answer.moves {
                println!("{}/{}: moving to {:?}", m.topic, m.partition, m.replicas);
            }
            let mut topics: Vec<String> = answer.moves.iter().map(|m| m.topic.clone()).collect();
            topics.dedup();
            wait_for_replicas(
                &client,
                timeout_s,
                |described| described.iter().all(|(_, _, r)| !r.contains(&node)),
                &topics,
            )
            .await?;
            println!("node {node} holds no replica: it can be stopped");
        }
    }
    Ok(())
}

/// Polls DescribeTopic of `topics` until `done` holds for every (topic, partition,
/// replicas), or `timeout_s` (0: returns at once).
async fn wait_for_replicas(
    client: &RoutingClient,
    timeout_s: u64,
    done: impl Fn(&[(String, u32, Vec<u32>)]) -> bool,
    topics: &[String],
) -> anyhow::Result<()> {
    if timeout_s == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_s);
    loop {
        let mut described = Vec::new();
        for topic in topics {
            for p in client.describe_topic(topic).await?.partitions {
                described.push((topic.clone(), p.id, p.replicas));
            }
        }
        if done(&described) {
            println!("done");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "not done after {timeout_s} s; the moves go on by themselves (see `walrs describe`)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
