//! The server's TLS: the rustls `ServerConfig` (mutual TLS, client certificates required,
//! ALPN h2) from the config's `[tls]` paths, which the listener's own acceptor uses. The
//! files are read and checked by the shared `crate::tls`. This module never performs a
//! handshake (that is `listener`) and never decides what a client may do (that is `acl`).

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;

use crate::config::TlsConfig;
use crate::tls::{Error, install_crypto_provider, load_ca, load_key_pair};

/// The ALPN protocol the server offers: gRPC runs on HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The server side: the server's certificate and key, and the CA that client certificates
/// must chain to. A client certificate is required (`WebPkiClientVerifier` without
/// `allow_unauthenticated`); ALPN offers h2. Built with ring explicitly.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, Error> {
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair = load_key_pair(&tls.cert, &tls.key)?;
    let (_, roots) = load_ca(&tls.client_ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| Error::Verifier {
            path: tls.client_ca.clone(),
            source,
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pair.chain, pair.key_der)
        .map_err(|source| Error::Key {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::certs;
    use crate::tls::ClientTls;

    fn tls_in(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
            client_ca: dir.join("ca.pem"),
        }
    }

    #[test]
    fn generated_files_load_on_both_sides() {
        let dir = tempfile::tempdir().unwrap();
        certs::generate(dir.path(), false).unwrap();
        let server = server_config(&tls_in(dir.path())).unwrap();
        assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
        ClientTls::from_dir(dir.path(), "root").load().unwrap();
        ClientTls::from_dir(dir.path(), "nobody").load().unwrap();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }

    #[test]
    fn each_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        certs::generate(dir.path(), false).unwrap();
        let good = tls_in(dir.path());
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let missing = dir.path().join("missing.pem");

        let cases = [
            (
                TlsConfig {
                    cert: missing.clone(),
                    ..good.clone()
                },
                "missing.pem",
            ),
            (
                TlsConfig {
                    cert: garbage.clone(),
                    ..good.clone()
                },
                "garbage.pem",
            ),
            (
                TlsConfig {
                    key: garbage.clone(),
                    ..good.clone()
                },
                "garbage.pem",
            ),
            (
                // A key file holding only a certificate has no key.
                TlsConfig {
                    key: dir.path().join("ca.pem"),
                    ..good.clone()
                },
                "ca.pem",
            ),
            (
                TlsConfig {
                    key: dir.path().join("root-key.pem"),
                    ..good.clone()
                },
                "root-key.pem",
            ),
            (
                TlsConfig {
                    client_ca: garbage.clone(),
                    ..good.clone()
                },
                "garbage.pem",
            ),
            (
                TlsConfig {
                    client_ca: missing.clone(),
                    ..good.clone()
                },
                "missing.pem",
            ),
        ];
        for (tls, name) in cases {
            let err = server_config(&tls).unwrap_err();
            assert!(err.to_string().contains(name), "{name}: {err}");
        }

        let err = ClientTls::new(
            &garbage,
            dir.path().join("root.pem"),
            dir.path().join("root-key.pem"),
        )
        .load()
        .unwrap_err();
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        let err = ClientTls::from_dir(dir.path(), "alice").load().unwrap_err();
        assert!(err.to_string().contains("alice.pem"), "{err}");
    }
}
