//! Access control: which client identity may do which action on which topic.
//!
//! The ACL is built once from the config's `[[acl]]` entries and is read-only afterwards.
//! An entry grants its actions to one identity (a client certificate's subject common name,
//! or `*` for every authenticated client) on topics named exactly or matched by a glob
//! (`orders-*`, `*`). Anything no entry grants is denied.
//!
//! Plaintext: without TLS there is no client certificate, every caller is
//! [`Principal::Anonymous`], and the server treats plaintext as fully trusted: the ACL is
//! not consulted and every action is allowed. That is safe only because plaintext is
//! refused off loopback unless the operator sets `allow_plaintext = true` on purpose (see
//! `config::Config::validate`).
//!
//! This module never does I/O and never looks at certificates; it gets an identity string.

use serde::{Deserialize, Serialize};

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
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Action; 3] = [Action::Produce, Action::Consume, Action::Admin];

    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
