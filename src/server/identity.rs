//! Client identity: the subject common name (CN) of the client's TLS certificate.
//!
//! rustls has already verified the chain against `tls.client_ca` by the time a request
//! arrives; this module only reads the name out of the end-entity certificate. It refuses,
//! rather than guesses, when the name is missing, empty, repeated or not UTF-8, because the
//! name is what the ACL grants rights to. It never verifies signatures and never does I/O.

use thiserror::Error;
use tonic::transport::CertificateDer;

use super::acl::Principal;

/// Why no identity could be read from the client's certificate.
#[derive(Debug, Error)]
pub enum Error {
    /// A TLS connection without a client certificate (or none reached the service).
    #[error("no client certificate; connect with a certificate signed by the server's client CA")]
    NoCertificate,
    /// The certificate is not valid DER X.509.
    #[error("the client certificate cannot be parsed")]
    Parse {
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// The subject has no common name.
    #[error("the client certificate's subject has no common name (CN), which names the client")]
    NoCommonName,
    /// The subject has more than one common name, so the identity would be ambiguous.
    #[error("the client certificate's subject has {count} common names; exactly one is needed")]
    ManyCommonNames { count: usize },
    /// The common name is not a string, not UTF-8, or empty.
    #[error("the client certificate's common name is not a non-empty UTF-8 string")]
    BadCommonName,
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        tonic::Status::unauthenticated(err.to_string())
    }
}

/// The subject common name of a DER-encoded certificate.
pub fn common_name(der: &[u8]) -> Result<String, Error> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|source| Error::Parse { source })?;
    let names: Vec<_> = cert.subject().iter_common_name().collect();
    match names.as_slice() {
        [] => Err(Error::NoCommonName),
        [name] => match name.as_str() {
            Ok(s) if !s.is_empty() => Ok(s.to_string()),
            _ => Err(Error::BadCommonName),
        },
        many => Err(Error::ManyCommonNames { count: many.len() }),
    }
}

/// The identity of a TLS peer from its certificate chain (as the listener's `PeerInfo`
/// carries it): the common name of the first (end-entity) certificate.
pub fn from_peer_certs(certs: Option<&[CertificateDer<'_>]>) -> Result<String, Error> {
    let end_entity = certs
        .and_then(|chain| chain.first())
        .ok_or(Error::NoCertificate)?;
    common_name(end_entity.as_ref())
}

/// The principal of a request: with TLS, the client named by its certificate (an error
/// when it has none); without TLS, [`Principal::Anonymous`].
pub fn principal(
    tls_enabled: bool,
    certs: Option<&[CertificateDer<'_>]>,
) -> Result<Principal, Error> {
    if tls_enabled {
        from_peer_certs(certs).map(Principal::Client)
    } else {
        Ok(Principal::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn der_with_subject(subject: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn der_with_cn(cn: Option<&str>) -> Vec<u8> {
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "wal.rs");
        if let Some(cn) = cn {
            subject.push(DnType::CommonName, cn);
        }
        der_with_subject(subject)
    }

    #[test]
    fn reads_the_common_name() {
        assert_eq!(common_name(&der_with_cn(Some("root"))).unwrap(), "root");
    }

    #[test]
    fn reads_the_generated_client_certificates() {
        let ca = crate::certs::CertAuthority::new("test CA").unwrap();
        let pair = ca.issue_client("svc-orders").unwrap();
        let der = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(common_name(&der).unwrap(), "svc-orders");
        let chain = [CertificateDer::from(der)];
        assert_eq!(from_peer_certs(Some(&chain)).unwrap(), "svc-orders");
        assert_eq!(
            principal(true, Some(&chain)).unwrap(),
            Principal::Client("svc-orders".into())
        );
    }

    #[test]
    fn refuses_missing_empty_and_repeated_names() {
        assert!(matches!(
            common_name(&der_with_cn(None)),
            Err(Error::NoCommonName)
        ));
        assert!(matches!(
            common_name(&der_with_cn(Some(""))),
            Err(Error::BadCommonName)
        ));
        // rcgen keeps one value per attribute type, so a subject with two CNs cannot be
        // made here; `ManyCommonNames` guards certificates made by other tools.
        assert!(matches!(
            common_name(b"not a certificate"),
            Err(Error::Parse { .. })
        ));
    }

    #[test]
    fn no_certificate_is_unauthenticated_with_tls_and_anonymous_without() {
        let err = principal(true, None).unwrap_err();
        assert!(matches!(err, Error::NoCertificate));
        assert!(matches!(
            from_peer_certs(Some(&[])),
            Err(Error::NoCertificate)
        ));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("certificate"));
        assert_eq!(principal(false, None).unwrap(), Principal::Anonymous);
    }
}
