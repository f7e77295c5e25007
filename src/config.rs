//! The server's configuration: the TOML file, its defaults and its limits.
//!
//! Every key has a default, so an empty file is a valid config; unknown keys are refused
//! (`deny_unknown_fields` on every table) so a typo never silently falls back to a default.
//! [`Config::validate`] checks every value against its limit and against the values it
//! depends on, and names the key and what is allowed when it refuses one.
//! `walrs.example.toml` at the repository root documents every key; a test keeps it equal
//! to the defaults.
//!
//! This module only parses and checks. It never opens sockets, never reads certificate or
//! data files (paths are checked where they are used), and never changes the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::server::acl::Action;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const SECOND_MS: u64 = 1000;
const DAY_MS: u64 = 24 * 3600 * SECOND_MS;

/// Most shards a server may run: far more than any machine's cores, small enough that a
/// typo (`shards = 10000000`) is caught.
pub const SHARDS_MAX: u32 = 1024;
/// Size of one index entry in bytes; `index_bytes_max` must be a multiple of it.
pub const INDEX_ENTRY_BYTES: u64 = 16;
/// Longest topic name: the partition directory `<topic>-<partition>` must fit a 255-byte
/// file name (the same bound as Kafka's).
pub const TOPIC_NAME_BYTES_LIMIT: u32 = 249;
/// glommio registers at least this much I/O memory per executor, in pages of 4 KiB.
pub const IO_MEMORY_BYTES_MIN: u64 = 64 * KIB;
const PAGE_BYTES: u64 = 4 * KIB;

/// A config error. `Read` and `Parse` name the file; `Invalid` names the key.
#[derive(Debug, Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    /// `message` is toml's report, which quotes the offending line.
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// The file parsed, but a value is out of its allowed range.
    #[error("config file {}: {invalid}", path.display())]
    InvalidIn { path: PathBuf, invalid: Invalid },
    /// A value is out of its allowed range (from [`Config::validate`]).
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// One refused value: the key (dotted, e.g. `storage.batch_bytes_max`), the value, and
/// what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{key}` = {value} is not allowed: {allowed}")]
pub struct Invalid {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

impl Invalid {
    fn new(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Invalid {
            key: key.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Directory that holds every topic's partitions.
    pub data_dir: PathBuf,
    /// Allow plaintext (no `[tls]`) on a non-loopback `listen` address. Plaintext clients
    /// are fully trusted, so this is off by default.
    pub allow_plaintext: bool,
    /// Create a topic on its first append instead of answering NOT_FOUND.
    pub auto_create_topics: bool,
    /// Partitions of a topic created without a count; 0 = the shard count.
    pub default_partitions: u32,
    pub storage: StorageConfig,
    pub server: ServerConfig,
    /// Absent: plaintext.
    pub tls: Option<TlsConfig>,
    /// Access control entries; consulted only with TLS. Default: deny everything.
    pub acl: Vec<AclEntry>,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("data"),
            allow_plaintext: false,
            auto_create_topics: true,
            default_partitions: 0,
            storage: StorageConfig::default(),
            server: ServerConfig::default(),
            tls: None,
            acl: Vec::new(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Which storage engine runs the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// io_uring when it starts, else portable (with one log line saying why).
    Auto,
    /// io_uring through glommio; fail to start if it cannot.
    Uring,
    /// std files, one thread per shard.
    Portable,
}

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge after the group-commit fdatasync that covers the append.
    Fsync,
    /// Acknowledge once written; fdatasync every `flush_interval_ms`.
    Interval,
    /// Acknowledge once written; never fdatasync (tests and benchmarks only).
    None,
}

/// `[storage]`: the shards and the files they write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub engine: Engine,
    /// 0 = one per core the process may run on.
    pub shards: u32,
    pub durability: Durability,
    /// Period of the background fdatasync with `durability = "interval"`.
    pub flush_interval_ms: u64,
    /// How long a shard lingers to gather more appends into one flush; 0 = no linger.
    pub flush_delay_us: u64,
    /// Most bytes one group-commit flush covers.
    pub flush_bytes_max: u64,
    /// Requests that may wait in one shard's channel; a full queue is RESOURCE_EXHAUSTED.
    pub queue_depth_max: u32,
    /// glommio registered-buffer pool per shard (locked memory).
    pub io_memory_bytes: u64,
    /// Largest record (key + value + headers).
    pub record_bytes_max: u64,
    /// Largest batch (one Append).
    pub batch_bytes_max: u64,
    /// Segment rotation by size.
    pub segment_bytes_max: u64,
    /// Segment rotation by age.
    pub segment_ms: u64,
    /// Size of one segment's index file.
    pub index_bytes_max: u64,
    /// Per-partition retention by size; 0 = unlimited.
    pub retention_bytes: u64,
    /// Retention by age; 0 = unlimited.
    pub retention_ms: u64,
    /// Log a warning when one fdatasync takes longer; 0 = never.
    pub slow_fsync_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: Engine::Auto,
            shards: 0,
            durability: Durability::Fsync,
            flush_interval_ms: 100,
            flush_delay_us: 0,
            flush_bytes_max: 8 * MIB,
            queue_depth_max: 1024,
            io_memory_bytes: MIB,
            record_bytes_max: MIB,
            batch_bytes_max: 4 * MIB,
            segment_bytes_max: 256 * MIB,
            segment_ms: 7 * DAY_MS,
            index_bytes_max: 10 * MIB,
            retention_bytes: 0,
            retention_ms: 7 * DAY_MS,
            slow_fsync_ms: 100,
        }
    }
}

impl StorageConfig {
    /// The number of shards to run: `shards`, or with 0 the number of cores this process
    /// may run on (its CPU affinity mask, cgroup quota included), capped at [`SHARDS_MAX`].
    pub fn shard_count(&self) -> u32 {
        if self.shards != 0 {
            return self.shards;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        u32::try_from(cores).unwrap_or(SHARDS_MAX).min(SHARDS_MAX)
    }
}

/// `[server]`: the gRPC front end's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Appends of one AppendStream waiting for their acknowledgement.
    pub append_stream_inflight_max: u32,
    /// Cap on a Read's `max_wait_ms`.
    pub read_max_wait_ms_max: u64,
    /// Cap on one ReadResponse's record bytes (a single larger batch is still returned).
    pub read_bytes_max: u64,
    /// Cap on one ReadResponse's record count.
    pub read_records_max: u32,
    pub topics_max: u32,
    pub partitions_per_topic_max: u32,
    /// Concurrent client connections.
    pub connections_max: u32,
    /// Concurrent HTTP/2 streams (calls) per connection. Each stream may be decoding one
    /// request of up to `2 × storage.batch_bytes_max`, so buffered requests take at worst
    /// `connections_max × streams_per_connection_max × 2 × storage.batch_bytes_max`.
    pub streams_per_connection_max: u32,
    /// Bytes of record data accepted for appending and not yet acknowledged, over all
    /// connections: the server-wide bound on what queued appends hold. An append that would
    /// pass it waits a moment, then gets RESOURCE_EXHAUSTED.
    pub inflight_append_bytes_max: u64,
    /// Longest topic name; names match `[a-zA-Z0-9._-]+`.
    pub topic_name_bytes_max: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            append_stream_inflight_max: 128,
            read_max_wait_ms_max: 30 * SECOND_MS,
            read_bytes_max: 4 * MIB,
            read_records_max: 10_000,
            topics_max: 10_000,
            partitions_per_topic_max: 1024,
            connections_max: 1024,
            streams_per_connection_max: 128,
            inflight_append_bytes_max: 256 * MIB,
            topic_name_bytes_max: TOPIC_NAME_BYTES_LIMIT,
        }
    }
}

/// `[tls]`: the server's certificate and the CA that signs client certificates. With TLS,
/// client certificates are required. Relative paths are resolved against the working
/// directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificate(s) that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// One `[[acl]]` entry: `identity` may do `actions` on `topics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// Client certificate subject CN, or `*` for every authenticated client.
    pub identity: String,
    /// Topic names or globs (`*`, `?`, `[a-z]`, `{a,b}`).
    pub topics: Vec<String>,
    pub actions: Vec<Action>,
}

/// `[metrics]`: the Prometheus endpoint (plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            enabled: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`: structured logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info` or `walrs=debug,tonic=warn`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_string(),
        }
    }
}

/// Checks `lo <= value <= hi` for the key.
fn check_range<T>(key: &str, value: T, lo: T, hi: T, unit: &str) -> Result<(), Invalid>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < lo || value > hi {
        return Err(Invalid::new(
            key,
            value,
            format!("must be between {lo} and {hi}{unit}"),
        ));
    }
    Ok(())
}

/// True when `name` is a valid topic name: 1 to `bytes_max` bytes of `[a-zA-Z0-9._-]`,
/// and neither `.` nor `..` (they name directories).
pub fn is_valid_topic_name(name: &str, bytes_max: u32) -> bool {
    !name.is_empty()
        && name.len() <= bytes_max as usize
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `pattern` is a topic name or a glob over topic names.
fn is_valid_topic_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'_' | b'-' | b'*' | b'?' | b'[' | b']' | b'{' | b'}' | b',' | b'!'
                )
        })
}

impl Config {
    /// Reads, parses and validates the config file at `path`. Every error names the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        config.validate().map_err(|invalid| Error::InvalidIn {
            path: path.to_path_buf(),
            invalid,
        })?;
        Ok(config)
    }

    /// Parses TOML text without validating it. Errors name the file as `<inline>`.
    pub fn parse(text: &str) -> Result<Config, Error> {
        toml::from_str(text).map_err(|e: toml::de::Error| Error::Parse {
            path: PathBuf::from("<inline>"),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Partitions of a topic created with `partitions = 0`, given the running shard count.
    pub fn default_partitions_for(&self, shard_count: u32) -> u32 {
        if self.default_partitions == 0 {
            shard_count.min(self.server.partitions_per_topic_max)
        } else {
            self.default_partitions
        }
    }

    /// Checks every value against its limit and the values it depends on. The first
    /// refused value is returned, naming its key and what is allowed.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_top()?;
        self.storage.validate()?;
        self.server.validate()?;
        if self.default_partitions > self.server.partitions_per_topic_max {
            return Err(Invalid::new(
                "default_partitions",
                self.default_partitions,
                format!(
                    "must be 0 (the shard count) or at most server.partitions_per_topic_max = {}",
                    self.server.partitions_per_topic_max
                ),
            ));
        }
        if self.server.read_bytes_max < self.storage.batch_bytes_max {
            return Err(Invalid::new(
                "server.read_bytes_max",
                self.server.read_bytes_max,
                format!(
                    "must be at least storage.batch_bytes_max = {} so one batch fits in one response",
                    self.storage.batch_bytes_max
                ),
            ));
        }
        if self.server.inflight_append_bytes_max < self.storage.batch_bytes_max {
            return Err(Invalid::new(
                "server.inflight_append_bytes_max",
                self.server.inflight_append_bytes_max,
                format!(
                    "must be at least storage.batch_bytes_max = {} so one batch can be in flight",
                    self.storage.batch_bytes_max
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        for (i, entry) in self.acl.iter().enumerate() {
            entry.validate(i)?;
        }
        self.metrics.validate(self.listen)?;
        self.log.validate()?;
        Ok(())
    }

    fn validate_top(&self) -> Result<(), Invalid> {
        if self.tls.is_none() && !self.allow_plaintext && !self.listen.ip().is_loopback() {
            return Err(Invalid::new(
                "listen",
                self.listen,
                "plaintext is only allowed on a loopback address: configure [tls], \
                 listen on 127.0.0.1 or ::1, or set allow_plaintext = true \
                 (plaintext clients are fully trusted)",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(Invalid::new("data_dir", "\"\"", "must be a directory path"));
        }
        Ok(())
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), Invalid> {
        check_range(
            "storage.shards",
            self.shards,
            0,
            SHARDS_MAX,
            " (0 = one per core)",
        )?;
        if self.durability == Durability::Interval {
            check_range(
                "storage.flush_interval_ms",
                self.flush_interval_ms,
                1,
                60 * SECOND_MS,
                " ms with durability = \"interval\"",
            )?;
        } else {
            check_range(
                "storage.flush_interval_ms",
                self.flush_interval_ms,
                0,
                60 * SECOND_MS,
                " ms",
            )?;
        }
        check_range(
            "storage.flush_delay_us",
            self.flush_delay_us,
            0,
            1_000_000,
            " us",
        )?;
        check_range(
            "storage.queue_depth_max",
            self.queue_depth_max,
            1,
            1 << 20,
            " requests",
        )?;
        check_range(
            "storage.io_memory_bytes",
            self.io_memory_bytes,
            IO_MEMORY_BYTES_MIN,
            GIB,
            " bytes",
        )?;
        if !self.io_memory_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(Invalid::new(
                "storage.io_memory_bytes",
                self.io_memory_bytes,
                format!("must be a multiple of {PAGE_BYTES} (the page size)"),
            ));
        }
        check_range(
            "storage.record_bytes_max",
            self.record_bytes_max,
            1,
            self.batch_bytes_max,
            " bytes (at most storage.batch_bytes_max)",
        )?;
        check_range(
            "storage.batch_bytes_max",
            self.batch_bytes_max,
            self.record_bytes_max,
            self.segment_bytes_max.min(GIB),
            " bytes (at least storage.record_bytes_max, at most storage.segment_bytes_max and 1 GiB)",
        )?;
        check_range(
            "storage.segment_bytes_max",
            self.segment_bytes_max,
            self.batch_bytes_max,
            u64::from(u32::MAX),
            " bytes (at least storage.batch_bytes_max; positions in a segment are u32)",
        )?;
        check_range(
            "storage.flush_bytes_max",
            self.flush_bytes_max,
            self.batch_bytes_max,
            GIB,
            " bytes (at least storage.batch_bytes_max, so a flush can hold any batch)",
        )?;
        check_range(
            "storage.segment_ms",
            self.segment_ms,
            SECOND_MS,
            365 * DAY_MS,
            " ms",
        )?;
        check_range(
            "storage.index_bytes_max",
            self.index_bytes_max,
            INDEX_ENTRY_BYTES,
            GIB,
            " bytes",
        )?;
        if !self.index_bytes_max.is_multiple_of(INDEX_ENTRY_BYTES) {
            return Err(Invalid::new(
                "storage.index_bytes_max",
                self.index_bytes_max,
                format!("must be a multiple of {INDEX_ENTRY_BYTES} (the index entry size)"),
            ));
        }
        check_range(
            "storage.retention_ms",
            self.retention_ms,
            0,
            100 * 365 * DAY_MS,
            " ms (0 = unlimited)",
        )?;
        check_range(
            "storage.slow_fsync_ms",
            self.slow_fsync_ms,
            0,
            3600 * SECOND_MS,
            " ms (0 = never warn)",
        )?;
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        check_range(
            "server.append_stream_inflight_max",
            self.append_stream_inflight_max,
            1,
            1 << 16,
            " appends",
        )?;
        check_range(
            "server.read_max_wait_ms_max",
            self.read_max_wait_ms_max,
            0,
            3600 * SECOND_MS,
            " ms",
        )?;
        check_range(
            "server.read_bytes_max",
            self.read_bytes_max,
            1,
            GIB,
            " bytes",
        )?;
        check_range(
            "server.read_records_max",
            self.read_records_max,
            1,
            1_000_000,
            " records",
        )?;
        check_range(
            "server.topics_max",
            self.topics_max,
            1,
            1_000_000,
            " topics",
        )?;
        check_range(
            "server.partitions_per_topic_max",
            self.partitions_per_topic_max,
            1,
            1 << 16,
            " partitions",
        )?;
        check_range(
            "server.connections_max",
            self.connections_max,
            1,
            1 << 20,
            " connections",
        )?;
        check_range(
            "server.streams_per_connection_max",
            self.streams_per_connection_max,
            1,
            1 << 16,
            " streams",
        )?;
        check_range(
            "server.inflight_append_bytes_max",
            self.inflight_append_bytes_max,
            1,
            64 * GIB,
            " bytes",
        )?;
        check_range(
            "server.topic_name_bytes_max",
            self.topic_name_bytes_max,
            1,
            TOPIC_NAME_BYTES_LIMIT,
            " bytes",
        )?;
        Ok(())
    }
}

impl TlsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (key, path) in [
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
            ("tls.client_ca", &self.client_ca),
        ] {
            if path.as_os_str().is_empty() {
                return Err(Invalid::new(key, "\"\"", "must be the path of a PEM file"));
            }
        }
        Ok(())
    }
}

impl AclEntry {
    fn validate(&self, index: usize) -> Result<(), Invalid> {
        if self.identity.is_empty() {
            return Err(Invalid::new(
                format!("acl[{index}].identity"),
                "\"\"",
                "must be a client certificate common name, or \"*\" for every client",
            ));
        }
        if self.topics.is_empty() {
            return Err(Invalid::new(
                format!("acl[{index}].topics"),
                "[]",
                "must list at least one topic name or glob (\"*\" for every topic)",
            ));
        }
        for (j, pattern) in self.topics.iter().enumerate() {
            if !is_valid_topic_pattern(pattern) {
                return Err(Invalid::new(
                    format!("acl[{index}].topics[{j}]"),
                    format!("{pattern:?}"),
                    "must be a topic name ([a-zA-Z0-9._-]+) or a glob over one (* ? [..] {a,b} !)",
                ));
            }
        }
        if self.actions.is_empty() {
            return Err(Invalid::new(
                format!("acl[{index}].actions"),
                "[]",
                "must list at least one of \"produce\", \"consume\", \"admin\"",
            ));
        }
        Ok(())
    }
}

impl MetricsConfig {
    fn validate(&self, grpc_listen: SocketAddr) -> Result<(), Invalid> {
        // Port 0 asks the kernel for a free port for each listener: no clash.
        if self.enabled && self.listen == grpc_listen && self.listen.port() != 0 {
            return Err(Invalid::new(
                "metrics.listen",
                self.listen,
                "must differ from the gRPC `listen` address",
            ));
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.filter) {
            return Err(Invalid::new(
                "log.filter",
                format!("{:?}", self.filter),
                format!("must be a tracing filter such as \"info\" or \"walrs=debug,warn\" ({e})"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> Invalid {
        let config = Config::parse(text).expect("parses");
        config.validate().expect_err("must be refused")
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn default_round_trips_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_refused_at_every_level() {
        for text in [
            "lisen = \"127.0.0.1:1\"",
            "[storage]\nshard = 2",
            "[server]\nread_bytes = 1",
            "[tls]\ncert = \"a\"\nkey = \"b\"\nclient_ca = \"c\"\nca = \"d\"",
            "[[acl]]\nidentity = \"a\"\ntopics = [\"*\"]\nactions = [\"admin\"]\nrole = \"x\"",
            "[metrics]\nport = 1",
            "[log]\nlevel = \"info\"",
            "[nope]",
        ] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn bad_enum_values_name_what_is_allowed() {
        let err = Config::parse("[storage]\nengine = \"spdk\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine") && err.contains("portable"), "{err}");
        let err = Config::parse("[storage]\ndurability = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("durability") && err.contains("interval"),
            "{err}"
        );
        let err =
            Config::parse("[[acl]]\nidentity = \"a\"\ntopics = [\"*\"]\nactions = [\"write\"]")
                .unwrap_err()
                .to_string();
        assert!(err.contains("actions") && err.contains("produce"), "{err}");
        let err = Config::parse("[log]\nformat = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format") && err.contains("json"), "{err}");
        let err = Config::parse("listen = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn tls_needs_all_three_paths() {
        let err = Config::parse("[tls]\ncert = \"a\"\nkey = \"b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca"), "{err}");
    }

    #[test]
    fn each_invalid_value_is_refused_naming_its_key() {
        let cases: &[(&str, &str)] = &[
            ("listen = \"0.0.0.0:7070\"", "listen"),
            ("data_dir = \"\"", "data_dir"),
            ("default_partitions = 5000", "default_partitions"),
            ("[storage]\nshards = 100000", "storage.shards"),
            (
                "[storage]\ndurability = \"interval\"\nflush_interval_ms = 0",
                "storage.flush_interval_ms",
            ),
            (
                "[storage]\nflush_interval_ms = 3600000",
                "storage.flush_interval_ms",
            ),
            (
                "[storage]\nflush_delay_us = 5000000",
                "storage.flush_delay_us",
            ),
            (
                "[storage]\nflush_bytes_max = 1024",
                "storage.flush_bytes_max",
            ),
            ("[storage]\nqueue_depth_max = 0", "storage.queue_depth_max"),
            (
                "[storage]\nio_memory_bytes = 4096",
                "storage.io_memory_bytes",
            ),
            (
                "[storage]\nio_memory_bytes = 100000",
                "storage.io_memory_bytes",
            ),
            (
                "[storage]\nrecord_bytes_max = 0",
                "storage.record_bytes_max",
            ),
            (
                "[storage]\nrecord_bytes_max = 8388608",
                "storage.record_bytes_max",
            ),
            (
                "[storage]\nbatch_bytes_max = 536870912",
                "storage.batch_bytes_max",
            ),
            (
                "[storage]\nsegment_bytes_max = 8589934592",
                "storage.segment_bytes_max",
            ),
            (
                "[storage]\nsegment_bytes_max = 1048576",
                "storage.batch_bytes_max",
            ),
            ("[storage]\nsegment_ms = 0", "storage.segment_ms"),
            (
                "[storage]\nindex_bytes_max = 100",
                "storage.index_bytes_max",
            ),
            ("[storage]\nindex_bytes_max = 0", "storage.index_bytes_max"),
            (
                "[storage]\nslow_fsync_ms = 99999999",
                "storage.slow_fsync_ms",
            ),
            (
                "[server]\nappend_stream_inflight_max = 0",
                "server.append_stream_inflight_max",
            ),
            (
                "[server]\nread_max_wait_ms_max = 99999999",
                "server.read_max_wait_ms_max",
            ),
            ("[server]\nread_bytes_max = 1024", "server.read_bytes_max"),
            ("[server]\nread_records_max = 0", "server.read_records_max"),
            ("[server]\ntopics_max = 0", "server.topics_max"),
            (
                "[server]\npartitions_per_topic_max = 0",
                "server.partitions_per_topic_max",
            ),
            ("[server]\nconnections_max = 0", "server.connections_max"),
            (
                "[server]\nstreams_per_connection_max = 0",
                "server.streams_per_connection_max",
            ),
            (
                "[server]\nstreams_per_connection_max = 65537",
                "server.streams_per_connection_max",
            ),
            (
                "[server]\ntopic_name_bytes_max = 250",
                "server.topic_name_bytes_max",
            ),
            (
                "[server]\ntopic_name_bytes_max = 0",
                "server.topic_name_bytes_max",
            ),
            (
                "[tls]\ncert = \"\"\nkey = \"k\"\nclient_ca = \"c\"",
                "tls.cert",
            ),
            (
                "[[acl]]\nidentity = \"\"\ntopics = [\"*\"]\nactions = [\"admin\"]",
                "acl[0].identity",
            ),
            (
                "[[acl]]\nidentity = \"a\"\ntopics = []\nactions = [\"admin\"]",
                "acl[0].topics",
            ),
            (
                "[[acl]]\nidentity = \"a\"\ntopics = [\"*\"]\nactions = [\"admin\"]\n\
                 [[acl]]\nidentity = \"b\"\ntopics = [\"a/b\"]\nactions = [\"admin\"]",
                "acl[1].topics[0]",
            ),
            (
                "[[acl]]\nidentity = \"a\"\ntopics = [\"*\"]\nactions = []",
                "acl[0].actions",
            ),
            ("[metrics]\nlisten = \"127.0.0.1:7070\"", "metrics.listen"),
            ("[log]\nfilter = \"walrs=loud\"", "log.filter"),
        ];
        for (text, key) in cases {
            let err = invalid(text);
            assert_eq!(err.key, *key, "{text}: {err}");
            let message = err.to_string();
            assert!(message.contains(key), "{text}: {message}");
            assert!(
                message.contains(&err.allowed) && err.allowed.len() > 10,
                "{message}"
            );
        }
    }

    #[test]
    fn plaintext_off_loopback_needs_tls_or_allow_plaintext() {
        Config::parse("listen = \"0.0.0.0:7070\"\nallow_plaintext = true")
            .unwrap()
            .validate()
            .unwrap();
        Config::parse(
            "listen = \"0.0.0.0:7070\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"",
        )
        .unwrap()
        .validate()
        .unwrap();
        Config::parse("listen = \"[::1]:7070\"")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn metrics_may_share_the_address_when_disabled() {
        Config::parse("[metrics]\nenabled = false\nlisten = \"127.0.0.1:7070\"")
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn shard_count_and_default_partitions() {
        let mut config = Config::default();
        assert!(config.storage.shard_count() >= 1);
        config.storage.shards = 3;
        assert_eq!(config.storage.shard_count(), 3);
        assert_eq!(config.default_partitions_for(3), 3);
        config.default_partitions = 8;
        assert_eq!(config.default_partitions_for(3), 8);
    }

    #[test]
    fn topic_names() {
        assert!(is_valid_topic_name("orders.v1_eu-west", 249));
        assert!(!is_valid_topic_name("", 249));
        assert!(!is_valid_topic_name(".", 249));
        assert!(!is_valid_topic_name("..", 249));
        assert!(!is_valid_topic_name("a/b", 249));
        assert!(!is_valid_topic_name("é", 249));
        assert!(!is_valid_topic_name("abc", 2));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = Config::load(&missing).unwrap_err();
        assert!(matches!(err, Error::Read { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[storage]\nshardz = 1\n").unwrap();
        let err = Config::load(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("shardz"), "{err}");

        let invalid = dir.path().join("invalid.toml");
        std::fs::write(&invalid, "[storage]\nqueue_depth_max = 0\n").unwrap();
        let err = Config::load(&invalid).unwrap_err().to_string();
        assert!(
            err.contains("invalid.toml") && err.contains("storage.queue_depth_max"),
            "{err}"
        );

        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[storage]\nshards = 2\n").unwrap();
        assert_eq!(Config::load(&good).unwrap().storage.shards, 2);
    }

    const EXAMPLE: &str = include_str!("../walrs.example.toml");

    #[test]
    fn example_is_the_defaults_plus_tls_and_root_acl() {
        let example = Config::parse(EXAMPLE).unwrap();
        example.validate().unwrap();
        let expected = Config {
            tls: Some(TlsConfig {
                cert: PathBuf::from("certs/server.pem"),
                key: PathBuf::from("certs/server-key.pem"),
                client_ca: PathBuf::from("certs/ca.pem"),
            }),
            acl: vec![AclEntry {
                identity: "root".to_string(),
                topics: vec!["*".to_string()],
                actions: Action::ALL.to_vec(),
            }],
            ..Config::default()
        };
        assert_eq!(example, expected);
    }

    /// Every key of the defaults is written out in the example (not just left to default).
    #[test]
    fn example_documents_every_key() {
        let example: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            let Some(written) = example.get(key) else {
                panic!("walrs.example.toml lacks `{key}`");
            };
            if let (toml::Value::Table(table), toml::Value::Table(written)) = (value, written) {
                for sub in table.keys() {
                    assert!(
                        written.contains_key(sub),
                        "walrs.example.toml lacks `{key}.{sub}`"
                    );
                }
            }
        }
    }
}
