//! The config target: TOML text through `Config::parse` and `Config::validate`.

use super::Input;
use crate::config::Config;
use crate::server::acl::{Acl, Action};

/// Target `config_parse`: the input (as UTF-8, invalid sequences replaced) is parsed as a
/// config file.
///
/// Invariants: parsing and validating never panic; a parsed config written back as TOML
/// parses to the same config, which validates the same way; a valid config's derived
/// values (shard options, cluster nodes and voters, gossip addresses, Raft timings, the
/// ACL) can be computed, and its shard options pass their own layer's validation.
pub fn config_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::parse(&text) else {
        return;
    };
    let valid = config.validate();
    let written = toml::to_string(&config).expect("a parsed config serializes");
    let reparsed = Config::parse(&written)
        .unwrap_or_else(|e| panic!("a written config does not parse: {e}\n{written}"));
    assert_eq!(
        reparsed, config,
        "the config changed through TOML:\n{written}"
    );
    assert_eq!(reparsed.validate(), valid);
    if valid.is_err() {
        return;
    }
    let options = config.shard_options();
    if let Err(e) = options.validate() {
        panic!("a valid config has invalid shard options: {e}");
    }
    let nodes = config.cluster_nodes();
    assert!(nodes.windows(2).all(|w| w[0].id < w[1].id), "{nodes:?}");
    let _ = config.advertise_addr();
    let _ = config.cluster.controller_voters();
    let _ = config.cluster.gossip_seeds();
    let _ = config.cluster.gossip_advertise(config.listen);
    let _ = config.cluster.raft_timings();
    let _ = config.cluster.effective_replication_factor();
    let shards = config.storage.shard_count();
    let partitions = config.default_partitions_for(shards);
    assert!(partitions <= config.server.partitions_per_topic_max.max(partitions));
    let acl = Acl::new(&config.acl);
    let mut probe = Input::new(data);
    let topic = String::from_utf8_lossy(probe.bytes(32)).into_owned();
    for entry in &config.acl {
        let _ = acl.allows(&entry.identity, Action::Produce, &topic);
    }
}
