//! Access control: which client identity may do which action on which topic.
//!
//! The ACL is built once from the config's `[[acl]]` entries and is read-only afterwards.
//! An entry grants its actions to one identity (a client certificate's subject common name,
//! or `*` for every authenticated client) on topics named exactly or matched by a glob
//! (`orders-*`, `*`). Anything no entry grants is denied: an empty ACL denies everything.
//!
//! Which action each RPC needs: `Append`/`AppendStream` need `produce` (and that is enough
//! to auto-create a topic on its first append: the topic globs bound the names);
//! `Read`/`ReadStream` need `consume`; `CreateTopic`, `DeleteTopic` and `Truncate` need
//! `admin`; `DescribeTopic` needs any action on the topic ([`Acl::allows_any`]), and
//! `ListTopics` lists only the topics the caller has some action on. `DescribeCluster` needs
//! no action, only an authenticated caller (like `ListTopics`, which any client may call).
//! `replicate` is for cluster nodes (certificates with CN `node-<id>`), for the node-to-node
//! `walrs.v1.Replication` service; like any action, it also lets a node describe and list the
//! topics it covers, which a replica needs to know its partitions. No client RPC of
//! `walrs.v1.Log` needs it, and [`Action::ALL`] (every right of a client) leaves it out.
//!
//! Plaintext: without TLS there is no client certificate, every caller is
//! [`Principal::Anonymous`] (shown as [`ANONYMOUS`]), and the server treats plaintext as
//! fully trusted: [`Acl::authorize`] allows every action without consulting the entries.
//! That is safe only because plaintext is refused off loopback unless the operator sets
//! `allow_plaintext = true` on purpose (see `config::Config::validate`). A TLS client whose
//! certificate's CN happens to be "anonymous" is an ordinary client, not trusted.
//!
//! This module never does I/O and never looks at certificates; it gets an identity string
//! (see `server::identity`).
//!
//! [`Action`] is defined by the config (`config::acl`) and re-exported here, so that the
//! imports run one way: the server uses the config, never the reverse.

use crate::config::AclEntry;
pub use crate::config::Action;

/// The name logged for plaintext callers.
pub const ANONYMOUS: &str = "anonymous";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A plaintext connection: no certificate, fully trusted (see the module docs).
    Anonymous,
    /// A TLS client, named by its certificate's subject common name.
    Client(String),
}

impl Principal {
    /// The identity to show in logs and error messages.
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => ANONYMOUS,
            Principal::Client(name) => name,
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The identity side of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentityMatch {
    Any,
    Exactly(String),
}

/// The topic side of a rule: an exact name, or a glob when the pattern has glob syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicMatch {
    Exactly(String),
    Glob(String),
}

impl TopicMatch {
    fn new(pattern: &str) -> TopicMatch {
        if pattern.contains(['*', '?', '[', ']', '{', '}', '!']) {
            TopicMatch::Glob(pattern.to_string())
        } else {
            TopicMatch::Exactly(pattern.to_string())
        }
    }

    fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatch::Exactly(name) => name == topic,
            TopicMatch::Glob(pattern) => glob_match::glob_match(pattern, topic),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    identity: IdentityMatch,
    topics: Vec<TopicMatch>,
    actions: Vec<Action>,
}

impl Rule {
    fn applies_to(&self, identity: &str, topic: &str) -> bool {
        let identity_matches = match &self.identity {
            IdentityMatch::Any => true,
            IdentityMatch::Exactly(name) => name == identity,
        };
        identity_matches && self.topics.iter().any(|t| t.matches(topic))
    }
}

/// The access control list: a union of grants, default deny.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    /// Builds the ACL from the config's entries (already checked by `Config::validate`).
    pub fn new(entries: &[AclEntry]) -> Acl {
        let rules = entries
            .iter()
            .map(|entry| Rule {
                identity: if entry.identity == "*" {
                    IdentityMatch::Any
                } else {
                    IdentityMatch::Exactly(entry.identity.clone())
                },
                topics: entry.topics.iter().map(|t| TopicMatch::new(t)).collect(),
                actions: entry.actions.clone(),
            })
            .collect();
        Acl { rules }
    }

    /// True when some entry grants `action` on `topic` to the TLS client `identity`.
    pub fn allows(&self, identity: &str, action: Action, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.actions.contains(&action) && rule.applies_to(identity, topic))
    }

    /// True when some entry grants any action on `topic` to `identity` (enough to describe
    /// the topic or see it in ListTopics).
    pub fn allows_any(&self, identity: &str, topic: &str) -> bool {
        self.rules
            .iter()
            .any(|rule| !rule.actions.is_empty() && rule.applies_to(identity, topic))
    }

    /// The decision the server makes: plaintext callers are fully trusted, TLS clients
    /// get what the entries grant.
    pub fn authorize(&self, principal: &Principal, action: Action, topic: &str) -> bool {
        match principal {
            Principal::Anonymous => true,
            Principal::Client(identity) => self.allows(identity, action, topic),
        }
    }

    /// True when some entry grants `action` to `principal` on some topic (plaintext: always).
    /// The node-to-node stream is refused at once to a caller this is false for.
    pub fn authorize_somewhere(&self, principal: &Principal, action: Action) -> bool {
        match principal {
            Principal::Anonymous => true,
            Principal::Client(identity) => self.rules.iter().any(|rule| {
                rule.actions.contains(&action)
                    && match &rule.identity {
                        IdentityMatch::Any => true,
                        IdentityMatch::Exactly(name) => name == identity,
                    }
            }),
        }
    }

    /// [`Acl::allows_any`] with the plaintext rule of [`Acl::authorize`].
    pub fn authorize_any(&self, principal: &Principal, topic: &str) -> bool {
        match principal {
            Principal::Anonymous => true,
            Principal::Client(identity) => self.allows_any(identity, topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(identity: &str, topics: &[&str], actions: &[Action]) -> AclEntry {
        AclEntry {
            identity: identity.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            actions: actions.to_vec(),
        }
    }

    #[test]
    fn empty_acl_denies_everything() {
        let acl = Acl::new(&[]);
        for action in Action::EVERY {
            assert!(!acl.allows("root", action, "t"));
        }
        assert!(!acl.allows_any("root", "t"));
        assert!(!acl.authorize(&Principal::Client("root".into()), Action::Consume, "t"));
    }

    #[test]
    fn root_on_star_may_do_everything_and_nobody_nothing() {
        let acl = Acl::new(&[entry("root", &["*"], &Action::ALL)]);
        for action in Action::ALL {
            assert!(acl.allows("root", action, "orders"));
            assert!(acl.allows("root", action, "a.b-c_d"));
            assert!(!acl.allows("nobody", action, "orders"));
        }
    }

    #[test]
    fn actions_topics_and_identities_are_each_checked() {
        let acl = Acl::new(&[
            entry("app", &["orders-*", "audit"], &[Action::Produce]),
            entry("reporting", &["orders-?u"], &[Action::Consume]),
            entry("*", &["public.{news,weather}"], &[Action::Consume]),
        ]);
        assert!(acl.allows("app", Action::Produce, "orders-eu"));
        assert!(acl.allows("app", Action::Produce, "audit"));
        assert!(
            !acl.allows("app", Action::Produce, "audit2"),
            "exact names are exact"
        );
        assert!(
            !acl.allows("app", Action::Consume, "orders-eu"),
            "action not granted"
        );
        assert!(!acl.allows("app", Action::Admin, "orders-eu"));
        assert!(
            !acl.allows("App", Action::Produce, "orders-eu"),
            "identities are exact"
        );
        assert!(acl.allows("reporting", Action::Consume, "orders-eu"));
        assert!(!acl.allows("reporting", Action::Consume, "orders-asia"));
        assert!(acl.allows("anyone", Action::Consume, "public.news"));
        assert!(
            acl.allows("app", Action::Consume, "public.weather"),
            "grants add up"
        );
        assert!(!acl.allows("anyone", Action::Produce, "public.news"));
        assert!(!acl.allows("anyone", Action::Consume, "public.sports"));
    }

    #[test]
    fn allows_any_is_for_describe_and_list() {
        let acl = Acl::new(&[entry("app", &["orders-*"], &[Action::Produce])]);
        assert!(acl.allows_any("app", "orders-1"));
        assert!(!acl.allows_any("app", "billing"));
        assert!(!acl.allows_any("other", "orders-1"));
    }

    #[test]
    fn plaintext_is_fully_trusted_and_a_client_named_anonymous_is_not() {
        let acl = Acl::new(&[]);
        for action in Action::ALL {
            assert!(acl.authorize(&Principal::Anonymous, action, "t"));
            assert!(!acl.authorize(&Principal::Client(ANONYMOUS.into()), action, "t"));
        }
        assert!(acl.authorize_any(&Principal::Anonymous, "t"));
        assert!(!acl.authorize_any(&Principal::Client(ANONYMOUS.into()), "t"));
        assert_eq!(Principal::Anonymous.to_string(), "anonymous");
        assert_eq!(Principal::Client("root".into()).name(), "root");
    }

    #[test]
    fn replicate_is_granted_only_where_listed() {
        let acl = Acl::new(&[
            entry("root", &["*"], &Action::ALL),
            entry("node-1", &["*"], &[Action::Replicate]),
        ]);
        assert!(
            !acl.allows("root", Action::Replicate, "t"),
            "root is a client"
        );
        assert!(acl.allows("node-1", Action::Replicate, "t"));
        let node = |name: &str| Principal::Client(name.to_owned());
        assert!(acl.authorize_somewhere(&node("node-1"), Action::Replicate));
        assert!(!acl.authorize_somewhere(&node("node-2"), Action::Replicate));
        assert!(!acl.authorize_somewhere(&node("root"), Action::Replicate));
        assert!(
            !acl.allows("node-2", Action::Replicate, "t"),
            "identities are exact"
        );
        assert!(!acl.allows("node-1", Action::Produce, "t"));
        assert!(
            acl.allows_any("node-1", "t"),
            "a replica may describe its topics"
        );
    }

    #[test]
    fn the_example_config_grants_root_everything_and_nobody_nothing() {
        let example =
            crate::config::Config::parse(include_str!("../../walrs.example.toml")).unwrap();
        let acl = Acl::new(&example.acl);
        let root = Principal::Client("root".into());
        let nobody = Principal::Client("nobody".into());
        for action in Action::ALL {
            assert!(acl.authorize(&root, action, "any-topic"));
            assert!(!acl.authorize(&nobody, action, "any-topic"));
        }
        assert!(!acl.authorize(&root, Action::Replicate, "any-topic"));
    }

    #[test]
    fn action_names_match_the_config() {
        for action in Action::EVERY {
            let text =
                format!("[[acl]]\nidentity = \"a\"\ntopics = [\"*\"]\nactions = [\"{action}\"]");
            let config = crate::config::Config::parse(&text).unwrap();
            assert_eq!(config.acl[0].actions, [action]);
        }
    }
}
