//! TLS set-up shared by the server and the client: reading and checking PEM files
//! (certificates, keys, CA trust anchors), the ring crypto provider, and the client's
//! `ClientTls` (tonic's `ClientTlsConfig`). The server's rustls `ServerConfig` is built
//! from these in `server::tls`.
//!
//! Everything is loaded and checked at start-up, so that a bad file is reported by name
//! before anything connects or listens. Checked: each file reads, holds at least one PEM
//! item of the right kind, the private key matches its certificate, and every CA
//! certificate is an acceptable trust anchor (none is silently skipped).
//!
//! Only rustls' ring crypto provider is ever used: the server config is built with it
//! explicitly, tonic's client side picks it from the `tls-ring` feature, and
//! [`install_crypto_provider`] makes it the process default for anything else. This module
//! never does I/O after loading, never performs a handshake, and never decides what a
//! client may do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::certs;

/// A TLS handshake that has not finished by then is dropped (on both ends), so a silent
/// peer cannot hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The name the server certificate made by `certs::generate` is valid for.
pub const DEFAULT_DOMAIN: &str = "localhost";

/// A TLS file that could not be used; every variant names the file.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read {what} {}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file is not PEM, or holds no item of the kind expected.
    #[error("{} holds no valid PEM {what}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key cannot be used with its certificate (unsupported type, or not its key).
    #[error("private key {} cannot be used with certificate {}", key.display(), cert.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// A CA certificate is not an acceptable trust anchor.
    #[error("{} is not a usable CA certificate", path.display())]
    Ca {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The CA certificates cannot verify client certificates.
    #[error("the client CA certificates in {} cannot verify clients", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the server configuration (no common protocol version with ring).
    #[error("cannot build the TLS server configuration")]
    Config(#[source] rustls::Error),
}

/// Makes rustls' ring provider the process-wide default, once. Later calls, and calls
/// after someone else installed it, do nothing: ring is the only provider compiled in
/// (the crate enables no other rustls provider feature), so whatever is installed is ring.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err only when another thread installed a provider between the check and here;
        // it is then ring as well, so there is nothing to handle.
        let _installed_by_another_thread =
            rustls::crypto::ring::default_provider().install_default();
    }
}

/// A PEM file read and checked.
pub(crate) struct Pem {
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
}

impl Pem {
    fn read(path: &Path, what: &'static str) -> Result<Pem, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            what,
            source,
        })?;
        Ok(Pem {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Every certificate in the file; at least one.
    fn certificates(&self, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
        let err = |source| Error::Pem {
            path: self.path.clone(),
            what,
            source,
        };
        let certs = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        if certs.is_empty() {
            return Err(err(rustls::pki_types::pem::Error::NoItemsFound));
        }
        Ok(certs)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, Error> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|source| Error::Pem {
            path: self.path.clone(),
            what: "private key",
            source,
        })
    }
}

/// A certificate chain and its private key, checked to belong together.
pub(crate) struct KeyPair {
    pub(crate) cert: Pem,
    pub(crate) key: Pem,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key_der: PrivateKeyDer<'static>,
}

/// Loads a certificate chain and its key, checking that they belong together.
pub(crate) fn load_key_pair(cert_path: &Path, key_path: &Path) -> Result<KeyPair, Error> {
    let cert = Pem::read(cert_path, "certificate")?;
    let key = Pem::read(key_path, "private key")?;
    let chain = cert.certificates("certificate")?;
    let key_der = key.private_key()?;
    rustls::sign::CertifiedKey::from_der(
        chain.clone(),
        key_der.clone_key(),
        &rustls::crypto::ring::default_provider(),
    )
    .map_err(|source| Error::Key {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })?;
    Ok(KeyPair {
        cert,
        key,
        chain,
        key_der,
    })
}

/// Loads CA certificates, checking that each is a usable trust anchor.
pub(crate) fn load_ca(path: &Path) -> Result<(Pem, rustls::RootCertStore), Error> {
    let pem = Pem::read(path, "CA certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    for der in pem.certificates("CA certificate")? {
        roots.add(der).map_err(|source| Error::Ca {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok((pem, roots))
}

/// Where a client finds its TLS files: the CA that signed the server's certificate, the
/// client's own certificate and key, and the name to check the server's certificate for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Checked against the server certificate's SANs (and sent as SNI), whatever
    /// address is dialled.
    pub domain: String,
}

impl ClientTls {
    /// Files at the given paths, checking the server as [`DEFAULT_DOMAIN`].
    pub fn new(
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ClientTls {
        ClientTls {
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            domain: DEFAULT_DOMAIN.to_string(),
        }
    }

    /// The layout `certs::generate` writes: `<dir>/ca.pem`, `<dir>/<client>.pem` and
    /// `<dir>/<client>-key.pem` (e.g. `ClientTls::from_dir("certs", "root")`).
    pub fn from_dir(dir: impl AsRef<Path>, client: &str) -> ClientTls {
        let dir = dir.as_ref();
        let pair = certs::PairPaths::new(dir, client);
        ClientTls::new(dir.join(certs::CA_CERT), pair.cert, pair.key)
    }

    /// Checks the server certificate for `domain` instead of [`DEFAULT_DOMAIN`].
    pub fn with_domain(mut self, domain: impl Into<String>) -> ClientTls {
        self.domain = domain.into();
        self
    }

    /// Loads and checks the files into tonic's client config. Installs the ring provider.
    pub fn load(&self) -> Result<ClientTlsConfig, Error> {
        install_crypto_provider();
        let (ca, _) = load_ca(&self.ca)?;
        let pair = load_key_pair(&self.cert, &self.key)?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.bytes))
            .identity(Identity::from_pem(pair.cert.bytes, pair.key.bytes))
            .domain_name(self.domain.clone())
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertAuthority;

    /// Whoever installed the process default first (this or an earlier test), it must be
    /// ring's provider: the same cipher suites and key exchange groups, in the same order.
    #[test]
    fn install_is_idempotent_and_installs_ring() {
        install_crypto_provider();
        install_crypto_provider();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let ring = rustls::crypto::ring::default_provider();
        let suites = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        let groups = |p: &rustls::crypto::CryptoProvider| {
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        assert_eq!(suites(installed), suites(&ring));
        assert_eq!(groups(installed), groups(&ring));
    }

    #[test]
    fn a_key_from_another_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = CertAuthority::new("other").unwrap();
        other
            .issue_client("x")
            .unwrap()
            .write(dir.path(), "x", false)
            .unwrap();
        certs::generate(dir.path(), false).unwrap();
        let err = ClientTls::new(
            dir.path().join("ca.pem"),
            dir.path().join("root.pem"),
            dir.path().join("x-key.pem"),
        )
        .load()
        .unwrap_err();
        assert!(matches!(err, Error::Key { .. }), "{err}");
        assert!(err.to_string().contains("x-key.pem") && err.to_string().contains("root.pem"));
    }

    /// Guards "one crypto provider": aws-lc-rs must not creep into the build through a
    /// default feature of some new dependency.
    #[test]
    fn only_ring_is_in_the_lockfile() {
        let lock = include_str!("../Cargo.lock");
        assert!(
            !lock.contains("name = \"aws-lc-rs\""),
            "aws-lc-rs is in Cargo.lock"
        );
        assert!(lock.contains("name = \"ring\""));
    }
}
