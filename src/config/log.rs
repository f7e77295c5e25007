//! `[log]`: the server's own logging (format and filter), set up by
//! `observability::logging`. Not to be confused with the partition log's limits, which are
//! `storage::LogLimits` and live in `[storage]`.

use serde::{Deserialize, Serialize};

use super::Invalid;

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

/// The default filter: `info`, except openraft's per-group warnings (one line per partition
/// per heartbeat while a peer is down: thousands a second on a busy node), which the
/// replication links' own lines cover once per peer.
pub const DEFAULT_FILTER: &str = "info,openraft=error";

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: DEFAULT_FILTER.to_string(),
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
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
