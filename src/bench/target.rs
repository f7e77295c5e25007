//! The server under test: one started in-process on the run's temporary directory (bound
//! to 127.0.0.1:0, mutual TLS with certificates made there unless `--no-tls`), or the one
//! at `--addr`. Also the TLS material the raw-RPC baseline serves with, so that baseline
//! runs over the very same TLS set-up as the real server.
//!
//! Never: listen anywhere but loopback, or reuse a data directory between runs.

use std::path::{Path, PathBuf};

use super::Error;
use super::load::Link;
use super::options::{BenchOptions, EngineArg};
use crate::certs;
use crate::client::{Client, ClientTls, RetryOptions, RoutingClient};
use crate::config::{AclEntry, Config, TlsConfig};
use crate::server::acl::Action;
use crate::server::{self, Running};

/// How to reach the server under test.
pub struct Target {
    pub addr: String,
    pub tls: Option<ClientTls>,
    /// The in-process server (absent with `--addr`).
    pub server: Option<Running>,
    /// With `--addr`: how its clients retry (they follow leaders); `None`: they never do.
    pub retry: Option<RetryOptions>,
}

impl Target {
    /// A new connection to the server (each producer and consumer has its own).
    pub async fn connect(&self) -> Result<Client, Error> {
        Client::connect(&self.addr, self.tls.clone())
            .await
            .map_err(Error::Connect)
    }

    /// A new link to the server: a plain connection, or with `--addr` a routing client
    /// (its own connections) that follows leaders and retries.
    pub async fn link(&self) -> Result<Link, Error> {
        match self.retry {
            None => Ok(Link::Direct(self.connect().await?)),
            Some(options) => RoutingClient::new(&self.addr, self.tls.clone(), options)
                .map(Link::Routed)
                .map_err(Error::Connect),
        }
    }

    /// The storage engine's name, when in-process.
    pub fn engine_name(&self) -> Option<&'static str> {
        self.server.as_ref().map(|s| s.shards().engine_name())
    }

    /// Stops the in-process server, syncing and closing its partitions.
    pub async fn shutdown(self) -> Result<(), Error> {
        match self.server {
            Some(server) => server.shutdown().await.map_err(Error::Server),
            None => Ok(()),
        }
    }
}

/// Certificates for the in-process server and the RPC baseline, made once per run.
pub fn certs_dir(run_dir: &Path) -> Result<PathBuf, Error> {
    let dir = run_dir.join("certs");
    if !dir.join(certs::CA_CERT).exists() {
        certs::generate(&dir, false).map_err(Error::Certs)?;
    }
    Ok(dir)
}

/// The server-side TLS files of [`certs_dir`].
pub fn server_tls(certs_dir: &Path) -> TlsConfig {
    TlsConfig {
        cert: certs_dir.join("server.pem"),
        key: certs_dir.join("server-key.pem"),
        client_ca: certs_dir.join(certs::CA_CERT),
    }
}

/// The config of an in-process server for `options`, storing under `data_dir`.
pub fn server_config(
    options: &BenchOptions,
    engine: EngineArg,
    data_dir: PathBuf,
    tls: Option<TlsConfig>,
) -> Config {
    let mut config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        data_dir,
        auto_create_topics: true,
        ..Config::default()
    };
    config.storage.engine = engine.into();
    config.storage.durability = options.durability.into();
    config.storage.shards = options.shards;
    config.storage.uring_write = options.uring_write.into();
    config.storage.preallocate = options.preallocate;
    config.storage.spin_before_park_us = options.spin_before_park_us;
    // Room for every producer's pipeline in one shard's queue and one stream's window:
    // the bench measures the server, not its back-pressure limits.
    let in_flight = options.producers.saturating_mul(options.depth);
    config.storage.queue_depth_max = config.storage.queue_depth_max.max(in_flight + 64);
    config.server.append_stream_inflight_max =
        config.server.append_stream_inflight_max.max(options.depth);
    config.server.connections_max = config
        .server
        .connections_max
        .max(options.producers + options.consumers + 16);
    config.metrics.enabled = false;
    if let Some(tls) = tls {
        config.tls = Some(tls);
        config.acl = vec![AclEntry {
            identity: certs::ROOT_CLIENT.to_string(),
            topics: vec!["*".to_string()],
            actions: Action::ALL.to_vec(),
        }];
    }
    config
}

/// Starts an in-process server with `engine` under `run_dir`, or connects to `--addr`.
pub async fn open(
    options: &BenchOptions,
    run_dir: &Path,
    engine: EngineArg,
) -> Result<Target, Error> {
    if let Some(addr) = &options.addr {
        let tls = (!options.no_tls).then(|| {
            ClientTls::new(&options.ca, &options.cert, &options.tls_key)
                .with_domain(options.domain.clone())
        });
        let retry = match options.retry_for_ms {
            0 => RetryOptions::no_retry(),
            ms => RetryOptions::with_budget(std::time::Duration::from_millis(ms)),
        };
        return Ok(Target {
            addr: addr.clone(),
            tls,
            server: None,
            retry: Some(retry),
        });
    }
    let certs = if options.no_tls {
        None
    } else {
        Some(certs_dir(run_dir)?)
    };
    let data_dir = run_dir.join(format!("data-{engine:?}").to_lowercase());
    let config = server_config(options, engine, data_dir, certs.as_deref().map(server_tls));
    let server = server::start(config).await.map_err(Error::Server)?;
    Ok(Target {
        addr: server.local_addr().to_string(),
        tls: certs.map(|dir| ClientTls::from_dir(dir, certs::ROOT_CLIENT)),
        server: Some(server),
        retry: None,
    })
}
