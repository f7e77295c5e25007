//! `[tls]`: the server's certificate and the CA that signs client certificates.
//!
//! Only the paths are checked here; the files are read where they are used
//! (`server::tls`), so that a bad file is named there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Invalid;

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

impl TlsConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
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
