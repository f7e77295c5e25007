//! The server's configuration: the TOML file, its defaults and its limits.
//!
//! Every key has a default, so an empty file is a valid config; unknown keys are refused
//! (`deny_unknown_fields` on every table) so a typo never silently falls back to a default.
//! [`Config::validate`] checks every value against its limit and against the values it
//! depends on, and names the key and what is allowed when it refuses one.
//! `walrs.example.toml` at the repository root documents every key; a test keeps it equal
//! to the defaults.
//!
//! One source for every limit: a limit of the shards or of a partition log is defined, with
//! its default and its check, by the layer that owns it ([`ShardOptions`], `LogLimits`).
//! The `[storage]` and `[server]` tables take their defaults from there, and
//! [`Config::validate`] runs that layer's check on [`Config::shard_options`], naming the
//! config keys; so a config that validates is one the shards accept. Only what the server
//! alone uses (connections, streams, ACL, TLS paths, ...) is checked here.
//!
//! One module per table: `storage`, `server`, `tls`, `acl`, `metrics`, `log`, `cluster`; this
//! one holds
//! the top-level keys, loading and the errors.
//!
//! This module only parses and checks. It never opens sockets, never reads certificate or
//! data files (paths are checked where they are used), and never changes the process. It
//! imports the layers it configures (`shard`, `storage`), never the server.

mod acl;
mod cluster;
mod log;
mod metrics;
mod server;
mod storage;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::shard::ShardOptions;
use crate::storage::InvalidLimit;

pub use acl::{AclEntry, Action};
pub use cluster::{CLUSTER_NODES_MAX, ClusterConfig, NodeAddr};
pub use log::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use server::{ServerConfig, ThreadPolicy};
pub use storage::{Durability, EngineChoice, StorageConfig, UringWrite};
pub use tls::TlsConfig;

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

/// A limit refused by the layer that owns it, already named by its config key.
impl From<InvalidLimit> for Invalid {
    fn from(limit: InvalidLimit) -> Invalid {
        Invalid {
            key: limit.key,
            value: limit.value,
            allowed: limit.allowed,
        }
    }
}

/// The config key of a [`ShardOptions`] field (`log.<field>` for the partition-log limits).
fn shard_option_key(field: &str) -> String {
    match field {
        "shard_count" => "storage.shards".to_owned(),
        "read_bytes_max" => "server.read_bytes_max".to_owned(),
        "topics_max" => "server.topics_max".to_owned(),
        "partitions_max" => "server.partitions_per_topic_max".to_owned(),
        "data_dir" => "data_dir".to_owned(),
        other => {
            let field = other
                .strip_prefix("log.")
                .or_else(|| other.strip_prefix("producers."))
                .unwrap_or(other);
            format!("storage.{field}")
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
    /// This node's place in a cluster; the default is a single node.
    pub cluster: ClusterConfig,
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
            cluster: ClusterConfig::default(),
        }
    }
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

    /// Every node of the cluster with the address it serves gRPC at, sorted by id: the
    /// `[[cluster.peers]]` and, when `cluster.node_id > 0`, this node at its advertised
    /// address (`cluster.advertise_addr`, else `listen`). Empty for a single node.
    pub fn cluster_nodes(&self) -> Vec<NodeAddr> {
        self.cluster.nodes(self.listen)
    }

    /// The address this node tells others to reach it at: `cluster.advertise_addr`, else
    /// `listen`.
    pub fn advertise_addr(&self) -> String {
        self.cluster.advertise_addr_or(self.listen)
    }

    /// The shard set's options: `data_dir`, every `[storage]` key, and the `[server]` keys
    /// that bound the shards (`read_bytes_max`, `topics_max`, `partitions_per_topic_max`).
    pub fn shard_options(&self) -> ShardOptions {
        let s = &self.storage;
        ShardOptions {
            data_dir: self.data_dir.clone(),
            shard_count: s.shard_count() as usize,
            log: s.log_limits(),
            producers: s.producer_limits(),
            space: s.space_limits(),
            durability: s.durability,
            flush_interval_ms: s.flush_interval_ms,
            flush_delay_us: s.flush_delay_us,
            flush_bytes_max: s.flush_bytes_max,
            read_bytes_max: self.server.read_bytes_max,
            queue_depth_max: s.queue_depth_max as usize,
            enqueue_timeout_ms: s.enqueue_timeout_ms,
            engine: s.engine,
            uring_write: s.uring_write,
            preallocate: s.preallocate,
            spin_before_park_us: s.spin_before_park_us,
            io_memory_bytes: usize::try_from(s.io_memory_bytes).unwrap_or(usize::MAX),
            maintenance_interval_ms: s.maintenance_interval_ms,
            partitions_max: self.server.partitions_per_topic_max,
            topics_max: self.server.topics_max,
            pin_threads: s.pin_threads,
            slow_fsync_ms: s.slow_fsync_ms,
        }
    }

    /// Checks every value against its limit and the values it depends on. The first
    /// refused value is returned, naming its key and what is allowed. The shard and
    /// partition-log limits are checked by their own layer ([`ShardOptions::validate_as`]),
    /// the same check `ShardSet::start` makes.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.validate_top()?;
        self.shard_options()
            .validate_as(&shard_option_key)
            .map_err(|mut invalid| {
                if invalid.key == "storage.shards" {
                    invalid.allowed.push_str(" (or 0 = one per core)");
                }
                invalid
            })?;
        self.server.validate(self.storage.batch_bytes_max)?;
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
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        for (i, entry) in self.acl.iter().enumerate() {
            entry.validate(i)?;
        }
        self.metrics.validate(self.listen)?;
        self.log.validate()?;
        self.cluster
            .validate(self.listen, self.storage.batch_bytes_max)?;
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
            "[cluster]\nnode = 1",
            "[cluster]\nnode_id = 1\n[[cluster.peers]]\nid = 2\naddr = \"a:1\"\nname = \"b\"",
            "[nope]",
        ] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn bad_enum_values_name_what_is_allowed() {
        // (config text, the key the error names, a value it offers instead)
        for (text, key, allowed) in [
            ("[storage]\nengine = \"spdk\"", "engine", "portable"),
            (
                "[server]\nthread_policy = \"fifo\"",
                "thread_policy",
                "unchanged",
            ),
            (
                "[storage]\ndurability = \"sometimes\"",
                "durability",
                "interval",
            ),
            (
                "[[acl]]\nidentity = \"a\"\ntopics = [\"*\"]\nactions = [\"write\"]",
                "actions",
                "produce",
            ),
            ("[log]\nformat = \"xml\"", "format", "json"),
        ] {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(key) && err.contains(allowed), "{text}: {err}");
        }
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
            ("[storage]\nsegment_ms = 31536000001", "storage.segment_ms"),
            (
                "[storage]\nenqueue_timeout_ms = 10001",
                "storage.enqueue_timeout_ms",
            ),
            (
                "[storage]\nmaintenance_interval_ms = 0",
                "storage.maintenance_interval_ms",
            ),
            (
                "[storage]\nproducers_per_partition_max = 0",
                "storage.producers_per_partition_max",
            ),
            (
                "[storage]\nproducer_id_expiry_ms = 10",
                "storage.producer_id_expiry_ms",
            ),
            (
                "[storage]\nproducer_rebuild_batches_max = 1",
                "storage.producer_rebuild_batches_max",
            ),
            (
                "[storage]\nrecord_bytes_max = 4194304",
                "storage.record_bytes_max",
            ),
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
                "[server]\nhttp2_frame_bytes_max = 16383",
                "server.http2_frame_bytes_max",
            ),
            (
                "[server]\nhttp2_frame_bytes_max = 16777216",
                "server.http2_frame_bytes_max",
            ),
            (
                "[server]\nhttp2_stream_window_bytes = 65534",
                "server.http2_stream_window_bytes",
            ),
            (
                "[server]\nhttp2_stream_window_bytes = 1073741825",
                "server.http2_stream_window_bytes",
            ),
            (
                "[server]\nhttp2_stream_window_bytes = 4194304\nhttp2_connection_window_bytes = 4194303",
                "server.http2_connection_window_bytes",
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
            ("[[cluster.peers]]\nid = 2\naddr = \"a:1\"", "cluster.peers"),
            (
                "[cluster]\nreplication_factor = 2",
                "cluster.replication_factor",
            ),
            (
                "[cluster]\nheartbeat_interval_ms = 5000",
                "cluster.heartbeat_interval_ms",
            ),
            (
                "[cluster]\nadvertise_addr = \"nowhere\"",
                "cluster.advertise_addr",
            ),
            (
                "[storage]\nbatch_bytes_max = 8388608\nflush_bytes_max = 8388608\n\
                 [server]\nread_bytes_max = 8388608\ninflight_append_bytes_max = 8388608",
                "cluster.replication_batch_bytes_max",
            ),
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
    fn defaults_are_the_shard_and_storage_layers_defaults() {
        let config = Config::default();
        let options = config.shard_options();
        assert_eq!(
            options,
            ShardOptions {
                shard_count: options.shard_count,
                ..ShardOptions::new("data")
            }
        );
        assert_eq!(
            config.storage.log_limits(),
            crate::storage::LogLimits::default()
        );
    }

    #[test]
    fn a_record_must_fit_a_batch_with_its_header() {
        // Refused here exactly as the shards would refuse it, naming the config key.
        let err = invalid("[storage]\nrecord_bytes_max = 4194304\nbatch_bytes_max = 4194304");
        assert_eq!(err.key, "storage.record_bytes_max", "{err}");
        assert!(err.allowed.contains("storage.batch_bytes_max"), "{err}");
        let header = crate::storage::format::BATCH_HEADER_LEN;
        Config::parse(&format!(
            "[storage]\nrecord_bytes_max = {}\nbatch_bytes_max = 4194304",
            4194304 - header
        ))
        .unwrap()
        .validate()
        .unwrap();
    }

    #[test]
    fn cluster_nodes_include_self_at_its_advertised_address() {
        let alone = Config::default();
        assert!(alone.cluster_nodes().is_empty());
        assert_eq!(alone.advertise_addr(), "127.0.0.1:7070");
        let config = Config::parse(
            "[cluster]\nnode_id = 2\n[[cluster.peers]]\nid = 3\naddr = \"c:7070\"\n\
             [[cluster.peers]]\nid = 1\naddr = \"a:7070\"",
        )
        .unwrap();
        config.validate().unwrap();
        let nodes = config.cluster_nodes();
        let nodes: Vec<(u32, &str)> = nodes.iter().map(|n| (n.id, n.addr.as_str())).collect();
        assert_eq!(nodes, [(1, "a:7070"), (2, "127.0.0.1:7070"), (3, "c:7070")]);
        assert_eq!(config.cluster.effective_replication_factor(), 3);
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

    const EXAMPLE: &str = include_str!("../../walrs.example.toml");

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
