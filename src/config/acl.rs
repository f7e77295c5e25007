//! `[[acl]]`: the access-control entries of the config file, and [`Action`], what a request
//! does to a topic.
//!
//! `Action` is defined here, below both the config and the server, so that the config does
//! not import the server: `server::acl` builds its matcher from these entries and
//! re-exports `Action`. This module only parses and checks the entries; matching them is the
//! server's.

use serde::{Deserialize, Serialize};

use super::Invalid;

/// What a request does to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Append records.
    Produce,
    /// Read records and describe the topic.
    Consume,
    /// Create, delete, truncate and list topics.
    Admin,
    /// Replicate partitions between cluster nodes (`walrs.v1.Replication`): what a node's
    /// certificate (CN `node-<id>`) is granted, and no client needs.
    Replicate,
}

impl Action {
    /// Every client action, in a fixed order: what a client with every right (the
    /// development `root` identity) is granted. Not [`Action::Replicate`], which only nodes
    /// get, so that a client certificate cannot pass for a replica.
    pub const ALL: [Action; 3] = [Action::Produce, Action::Consume, Action::Admin];

    /// Every action the config can name, [`Action::Replicate`] included.
    pub const EVERY: [Action; 4] = [
        Action::Produce,
        Action::Consume,
        Action::Admin,
        Action::Replicate,
    ];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "admin",
            Action::Replicate => "replicate",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[acl]]` entry: `identity` may do `actions` on `topics`. Identities are exact
/// names (or `*`), not globs: a cluster's nodes are listed one by one (`node-1`, `node-2`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclEntry {
    /// Client certificate subject CN, or `*` for every authenticated client.
    pub identity: String,
    /// Topic names or globs (`*`, `?`, `[a-z]`, `{a,b}`).
    pub topics: Vec<String>,
    pub actions: Vec<Action>,
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

impl AclEntry {
    pub(super) fn validate(&self, index: usize) -> Result<(), Invalid> {
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
                "must list at least one of \"produce\", \"consume\", \"admin\", \"replicate\"",
            ));
        }
        Ok(())
    }
}
