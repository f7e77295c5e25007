//! Support shared by the integration tests that start a real server: its configuration.

use std::path::Path;

use walrs::config::{AclEntry, Config, EngineChoice, TlsConfig};
use walrs::server::acl::Action;

/// A server config for a test in `dir`: loopback on a port the OS picks, data under
/// `dir/data`, the portable engine on 2 shards with 2 partitions per topic, and mutual TLS
/// with certificates made under `dir/certs` (client `root` holds every right).
pub fn mtls_config(dir: &Path) -> Config {
    let certs = dir.join("certs");
    if !certs.join("ca.pem").exists() {
        walrs::certs::generate(&certs, false).unwrap();
    }
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.storage.engine = EngineChoice::Portable;
    config.storage.shards = 2;
    config.default_partitions = 2;
    config.tls = Some(TlsConfig {
        cert: certs.join("server.pem"),
        key: certs.join("server-key.pem"),
        client_ca: certs.join("ca.pem"),
    });
    config.acl = vec![AclEntry {
        identity: "root".into(),
        topics: vec!["*".into()],
        actions: Action::ALL.to_vec(),
    }];
    config
}
