//! Development certificates: a CA, a server certificate and client certificates, made with
//! rcgen (ring) so that `make gencert` needs no Go, cfssl or openssl.
//!
//! [`generate`] writes the standard set under one directory: `ca.pem`/`ca-key.pem`,
//! `server.pem`/`server-key.pem` (SANs `localhost` and `127.0.0.1`), and the client pairs
//! `root.pem`/`root-key.pem` (CN `root`) and `nobody.pem`/`nobody-key.pem` (CN `nobody`).
//! [`CertAuthority`] issues more: a client with any common name, or a whole new, unrelated
//! CA (tests of "certificate from another CA").
//!
//! [`generate_node`] writes a cluster node's pair, `node-<id>.pem`/`node-<id>-key.pem` (CN
//! `node-<id>`, the identity the ACL grants `replicate`), valid for both server and client
//! authentication because a node serves and dials with that one pair; it is signed by the
//! directory's CA, made first when the directory has none.
//!
//! Invariants: private keys are written with mode 0600; existing files are never
//! overwritten unless the caller passes `force`, and `generate` checks every target before
//! writing any, so a refusal leaves the directory as it was. This module never reads or
//! trusts certificates for the server; that is `tls`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use thiserror::Error;

/// CA certificate file name.
pub const CA_CERT: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY: &str = "ca-key.pem";
/// File stem of the server pair (`server.pem`, `server-key.pem`).
pub const SERVER: &str = "server";
/// File stem and common name of the client with every right in the example ACL.
pub const ROOT_CLIENT: &str = "root";
/// File stem and common name of the client with no rights.
pub const NOBODY_CLIENT: &str = "nobody";
/// Names the server certificate is valid for.
pub const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
/// Prefix of a cluster node's common name and file stem: `node-<id>`.
pub const NODE_PREFIX: &str = "node-";
/// Common name of the CA that [`generate`] makes.
pub const CA_COMMON_NAME: &str = "wal.rs development CA";

const CA_VALID_DAYS: i64 = 3650;
/// 825 days: the longest leaf validity that every common TLS client accepts.
const LEAF_VALID_DAYS: i64 = 825;
/// Back-date `not_before` by an hour so a client whose clock is slightly behind accepts it.
const CLOCK_SKEW_SECS: i64 = 3600;
const DAY_SECS: i64 = 24 * 3600;

/// A certificate error; file errors name the file.
#[derive(Debug, Error)]
pub enum Error {
    /// rcgen refused to make or sign a certificate.
    #[error("cannot generate {what}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// The target exists and `force` was not given.
    #[error("{} already exists; pass force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("cannot create directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file did not hold what was expected.
    #[error("{} is not a valid {what}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// Node ids start at 1: 0 is a single node outside any cluster.
    #[error("node id 0 is not allowed: a node's id is its [cluster] node_id, above 0")]
    NodeId,
    /// The system clock is outside what a certificate can encode.
    #[error("the system clock cannot be encoded in a certificate")]
    Clock,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Paths of a written pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PairPaths {
    /// `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem`.
    pub fn new(dir: &Path, stem: &str) -> PairPaths {
        PairPaths {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        }
    }
}

impl CertPair {
    /// Writes `<dir>/<stem>.pem` (mode 0644) and `<dir>/<stem>-key.pem` (mode 0600),
    /// refusing to overwrite either unless `force`.
    pub fn write(&self, dir: &Path, stem: &str, force: bool) -> Result<PairPaths, Error> {
        let paths = PairPaths::new(dir, stem);
        if !force {
            refuse_existing(&[&paths.cert, &paths.key])?;
        }
        create_dir(dir)?;
        write_file(&paths.cert, &self.cert_pem, Mode::Public, force)?;
        write_file(&paths.key, &self.key_pem, Mode::Secret, force)?;
        Ok(paths)
    }
}

/// A certificate authority that can sign server and client certificates.
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new self-signed CA with its own key. Two calls make two unrelated CAs.
    pub fn new(common_name: &str) -> Result<CertAuthority, Error> {
        let what = || format!("CA certificate {common_name:?}");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wal.rs");
        // May sign leaves only, not further CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALID_DAYS)?;
        let key = KeyPair::generate().map_err(|source| Error::Generate {
            what: what(),
            source,
        })?;
        let cert = params.self_signed(&key).map_err(|source| Error::Generate {
            what: what(),
            source,
        })?;
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and key files, e.g. the `ca.pem`/`ca-key.pem`
    /// that [`generate`] wrote.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertAuthority, Error> {
        let cert_pem = read_file(cert_path)?;
        let key_pem = read_file(key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| Error::Parse {
            path: key_path.to_path_buf(),
            what: "PEM private key",
            source,
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| Error::Parse {
            path: cert_path.to_path_buf(),
            what: "PEM CA certificate",
            source,
        })?;
        Ok(CertAuthority { cert_pem, issuer })
    }

    /// Loads `ca.pem` and `ca-key.pem` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<CertAuthority, Error> {
        CertAuthority::load(&dir.join(CA_CERT), &dir.join(CA_KEY))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate and private key, PEM.
    pub fn pair(&self) -> CertPair {
        CertPair {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.issuer.key().serialize_pem(),
        }
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<PairPaths, Error> {
        self.pair().write(dir, "ca", force)
    }

    /// A server certificate for `names` (DNS names or IP addresses, each a SAN; the first
    /// is also the common name), with the server-auth extended key usage.
    pub fn issue_server(&self, names: &[&str]) -> Result<CertPair, Error> {
        let what = format!("server certificate for {names:?}");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(|source| Error::Generate {
            what: what.clone(),
            source,
        })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(params, what)
    }

    /// A client certificate whose subject common name is `common_name` (the client's
    /// identity for the ACL), with the client-auth extended key usage.
    pub fn issue_client(&self, common_name: &str) -> Result<CertPair, Error> {
        let what = format!("client certificate {common_name:?}");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign_leaf(params, what)
    }

    /// A cluster node's certificate: common name `node-<id>`, SANs `localhost`,
    /// `127.0.0.1` and `extra_names` (DNS names or IP addresses), with both the server-auth
    /// and the client-auth extended key usages, since a node serves and dials with one pair.
    pub fn issue_node(&self, node_id: u32, extra_names: &[&str]) -> Result<CertPair, Error> {
        if node_id == 0 {
            return Err(Error::NodeId);
        }
        let common_name = node_name(node_id);
        let what = format!("node certificate {common_name:?}");
        let mut sans: Vec<String> = SERVER_NAMES.iter().map(|n| n.to_string()).collect();
        for name in extra_names {
            if !sans.iter().any(|s| s == name) {
                sans.push(name.to_string());
            }
        }
        let mut params = CertificateParams::new(sans).map_err(|source| Error::Generate {
            what: what.clone(),
            source,
        })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_leaf(params, what)
    }

    fn sign_leaf(&self, mut params: CertificateParams, what: String) -> Result<CertPair, Error> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALID_DAYS)?;
        let key = KeyPair::generate().map_err(|source| Error::Generate {
            what: what.clone(),
            source,
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| Error::Generate { what, source })?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Makes the standard set in `out_dir` (created if missing): the CA, the server pair and
/// the `root` and `nobody` client pairs. Refuses, before writing anything, when any of the
/// files exists, unless `force`. Returns the paths written.
pub fn generate(out_dir: &Path, force: bool) -> Result<Vec<PathBuf>, Error> {
    let stems = ["ca", SERVER, ROOT_CLIENT, NOBODY_CLIENT];
    let targets: Vec<PairPaths> = stems.iter().map(|s| PairPaths::new(out_dir, s)).collect();
    if !force {
        let all: Vec<&Path> = targets
            .iter()
            .flat_map(|p| [p.cert.as_path(), p.key.as_path()])
            .collect();
        refuse_existing(&all)?;
    }
    let ca = CertAuthority::new(CA_COMMON_NAME)?;
    let server = ca.issue_server(&SERVER_NAMES)?;
    let root = ca.issue_client(ROOT_CLIENT)?;
    let nobody = ca.issue_client(NOBODY_CLIENT)?;

    let mut written = Vec::with_capacity(2 * stems.len());
    for (pair, stem) in [ca.pair(), server, root, nobody].iter().zip(stems) {
        let paths = pair.write(out_dir, stem, force)?;
        written.push(paths.cert);
        written.push(paths.key);
    }
    Ok(written)
}

/// Issues a client pair with `common_name`, signed by the CA in `dir` (`ca.pem`,
/// `ca-key.pem`), and writes it as `<dir>/<stem>.pem` and `<dir>/<stem>-key.pem`.
pub fn add_client(
    dir: &Path,
    stem: &str,
    common_name: &str,
    force: bool,
) -> Result<PairPaths, Error> {
    let ca = CertAuthority::load_dir(dir)?;
    ca.issue_client(common_name)?.write(dir, stem, force)
}

/// The common name and file stem of node `node_id`: `node-<id>`.
pub fn node_name(node_id: u32) -> String {
    format!("{NODE_PREFIX}{node_id}")
}

/// Writes node `node_id`'s pair, `<out_dir>/node-<id>.pem` and `<out_dir>/node-<id>-key.pem`
/// (see [`CertAuthority::issue_node`]; `extra_names` are SANs beside localhost and
/// 127.0.0.1), signed by `<out_dir>/ca.pem` and `ca-key.pem`. When neither CA file exists,
/// a new CA is made and written first, as [`generate`] does; when only one does, that is an
/// error naming the missing one. Refuses, before writing anything, when the node's files
/// exist, unless `force` (which never replaces an existing CA). Returns the paths written.
pub fn generate_node(
    out_dir: &Path,
    node_id: u32,
    extra_names: &[&str],
    force: bool,
) -> Result<Vec<PathBuf>, Error> {
    if node_id == 0 {
        return Err(Error::NodeId);
    }
    let node = PairPaths::new(out_dir, &node_name(node_id));
    if !force {
        refuse_existing(&[&node.cert, &node.key])?;
    }
    let ca_paths = PairPaths::new(out_dir, "ca");
    let ca_missing =
        ca_paths.cert.symlink_metadata().is_err() && ca_paths.key.symlink_metadata().is_err();
    let mut written = Vec::with_capacity(4);
    let ca = if ca_missing {
        CertAuthority::new(CA_COMMON_NAME)?
    } else {
        CertAuthority::load(&ca_paths.cert, &ca_paths.key)?
    };
    // Issued before anything is written, so a refused name leaves the directory as it was.
    let pair = ca.issue_node(node_id, extra_names)?;
    if ca_missing {
        let paths = ca.write(out_dir, false)?;
        written.push(paths.cert);
        written.push(paths.key);
    }
    let paths = pair.write(out_dir, &node_name(node_id), force)?;
    written.push(paths.cert);
    written.push(paths.key);
    Ok(written)
}

fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Clock)?
        .as_secs();
    let now = i64::try_from(now).map_err(|_| Error::Clock)?;
    let at = |secs: i64| {
        x509_parser::time::ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|_| Error::Clock)
    };
    params.not_before = at(now - CLOCK_SKEW_SECS)?;
    params.not_after = at(now + days * DAY_SECS)?;
    Ok(())
}

fn refuse_existing(paths: &[&Path]) -> Result<(), Error> {
    for path in paths {
        // symlink_metadata: a dangling symlink is also something we would clobber.
        if path.symlink_metadata().is_ok() {
            return Err(Error::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.to_path_buf(),
        source,
    })
}

fn read_file(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Clone, Copy)]
enum Mode {
    Public,
    Secret,
}

#[cfg(unix)]
fn set_mode(options: &mut OpenOptions, mode: Mode) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(match mode {
        Mode::Public => 0o644,
        Mode::Secret => 0o600,
    });
}

#[cfg(not(unix))]
fn set_mode(_options: &mut OpenOptions, _mode: Mode) {}

/// Writes `text` to `path`. Without `force` the file must not exist (`create_new`, so a
/// race cannot clobber it either). With `force` an existing file is truncated and its mode
/// reset, so a key overwritten in place is never left world-readable.
fn write_file(path: &Path, text: &str, mode: Mode, force: bool) -> Result<(), Error> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    set_mode(&mut options, mode);
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Exists {
                path: path.to_path_buf(),
            }
        } else {
            err(source)
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let bits = match mode {
            Mode::Public => 0o644,
            Mode::Secret => 0o600,
        };
        file.set_permissions(std::fs::Permissions::from_mode(bits))
            .map_err(err)?;
    }
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;
    use x509_parser::pem::parse_x509_pem;
    use x509_parser::prelude::*;

    fn with_cert<T>(pem: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        f(&cert)
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    fn common_name(cert: &X509Certificate<'_>) -> String {
        cert.subject()
            .iter_common_name()
            .next()
            .expect("CN")
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Returns whether `cert` verifies with `issuer`'s public key and names it as issuer.
    fn signed_by(cert_pem: &str, issuer_pem: &str) -> bool {
        let (_, issuer_pem) = parse_x509_pem(issuer_pem.as_bytes()).unwrap();
        let issuer = issuer_pem.parse_x509().unwrap();
        with_cert(cert_pem, |cert| {
            cert.issuer() == issuer.subject()
                && cert.verify_signature(Some(issuer.public_key())).is_ok()
        })
    }

    #[test]
    fn generate_writes_the_standard_set() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate(dir.path(), false).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "ca.pem",
                "ca-key.pem",
                "server.pem",
                "server-key.pem",
                "root.pem",
                "root-key.pem",
                "nobody.pem",
                "nobody-key.pem"
            ]
        );

        let ca = read(&dir.path().join(CA_CERT));
        with_cert(&ca, |cert| {
            assert_eq!(common_name(cert), CA_COMMON_NAME);
            assert!(cert.is_ca());
            assert!(cert.validity().is_valid());
            assert!(cert.verify_signature(None).is_ok(), "self-signed");
        });

        let server = read(&dir.path().join("server.pem"));
        assert!(signed_by(&server, &ca));
        with_cert(&server, |cert| {
            assert!(!cert.is_ca());
            assert!(cert.validity().is_valid());
            let san = cert.subject_alternative_name().unwrap().expect("SAN");
            let names = &san.value.general_names;
            assert!(
                names.contains(&GeneralName::DNSName("localhost")),
                "{names:?}"
            );
            assert!(
                names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
                "{names:?}"
            );
            let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
            assert!(eku.server_auth && !eku.client_auth);
        });

        for cn in [ROOT_CLIENT, NOBODY_CLIENT] {
            let client = read(&dir.path().join(format!("{cn}.pem")));
            assert!(signed_by(&client, &ca), "{cn}");
            with_cert(&client, |cert| {
                assert_eq!(common_name(cert), cn);
                assert!(!cert.is_ca());
                let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
                assert!(eku.client_auth && !eku.server_auth);
            });
        }

        // Every key parses and matches its certificate.
        for stem in ["ca", SERVER, ROOT_CLIENT, NOBODY_CLIENT] {
            let paths = PairPaths::new(dir.path(), stem);
            let key = KeyPair::from_pem(&read(&paths.key)).unwrap();
            with_cert(&read(&paths.cert), |cert| {
                assert_eq!(
                    cert.public_key().subject_public_key.data.as_ref(),
                    key.public_key_raw(),
                    "{stem}"
                );
            });
        }
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), false).unwrap();
        for stem in ["ca", SERVER, ROOT_CLIENT, NOBODY_CLIENT] {
            let paths = PairPaths::new(dir.path(), stem);
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&paths.key), 0o600, "{stem}");
            assert_eq!(mode(&paths.cert), 0o644, "{stem}");
        }
        // force resets the mode of a key that was loosened.
        let key = dir.path().join("root-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        generate(dir.path(), true).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = generate(dir.path(), false).unwrap();
        let before: Vec<String> = first.iter().map(|p| read(p)).collect();
        let err = generate(dir.path(), false).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let after: Vec<String> = first.iter().map(|p| read(p)).collect();
        assert_eq!(before, after, "a refusal changes nothing");

        generate(dir.path(), true).unwrap();
        assert_ne!(read(&first[0]), before[0], "force writes a new CA");
    }

    #[test]
    fn refusal_is_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nobody-key.pem"), "keep").unwrap();
        let err = generate(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("nobody-key.pem"), "{err}");
        assert!(!dir.path().join("ca.pem").exists());
        assert_eq!(read(&dir.path().join("nobody-key.pem")), "keep");
    }

    #[test]
    fn add_client_signs_with_the_generated_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), false).unwrap();
        let paths = add_client(dir.path(), "alice", "alice@example", false).unwrap();
        let ca = read(&dir.path().join(CA_CERT));
        let cert = read(&paths.cert);
        assert!(signed_by(&cert, &ca));
        with_cert(&cert, |c| assert_eq!(common_name(c), "alice@example"));
        let err = add_client(dir.path(), "alice", "alice", false).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }));
    }

    #[test]
    fn a_node_certificate_serves_and_dials_as_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let written =
            generate_node(dir.path(), 3, &["node-3.walrs.internal", "10.0.0.3"], false).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["ca.pem", "ca-key.pem", "node-3.pem", "node-3-key.pem"]
        );
        let ca = read(&dir.path().join(CA_CERT));
        let node = read(&dir.path().join("node-3.pem"));
        assert!(signed_by(&node, &ca));
        with_cert(&node, |cert| {
            assert_eq!(common_name(cert), "node-3");
            assert!(!cert.is_ca());
            assert!(cert.validity().is_valid());
            let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
            assert!(eku.server_auth && eku.client_auth, "{eku:?}");
            let san = cert.subject_alternative_name().unwrap().expect("SAN");
            let names = &san.value.general_names;
            for expected in [
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::DNSName("node-3.walrs.internal"),
                GeneralName::IPAddress(&[10, 0, 0, 3]),
            ] {
                assert!(names.contains(&expected), "{expected:?} in {names:?}");
            }
            assert_eq!(names.len(), 4, "{names:?}");
        });
        let key = KeyPair::from_pem(&read(&dir.path().join("node-3-key.pem"))).unwrap();
        with_cert(&node, |cert| {
            assert_eq!(
                cert.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw()
            );
        });
    }

    #[test]
    fn node_certificates_share_the_existing_ca() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), false).unwrap();
        let ca = read(&dir.path().join(CA_CERT));
        let written = generate_node(dir.path(), 1, &[], false).unwrap();
        assert_eq!(
            written.len(),
            2,
            "the CA is reused, not rewritten: {written:?}"
        );
        assert_eq!(read(&dir.path().join(CA_CERT)), ca);
        let node = read(&dir.path().join("node-1.pem"));
        assert!(signed_by(&node, &ca));
        // A second node, same CA: the two can verify each other.
        generate_node(dir.path(), 2, &[], false).unwrap();
        assert!(signed_by(&read(&dir.path().join("node-2.pem")), &ca));
    }

    #[test]
    fn node_certificates_refuse_overwrite_and_node_zero() {
        let dir = tempfile::tempdir().unwrap();
        generate_node(dir.path(), 1, &[], false).unwrap();
        let before = read(&dir.path().join("node-1.pem"));
        let err = generate_node(dir.path(), 1, &[], false).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        assert!(err.to_string().contains("node-1.pem"), "{err}");
        assert_eq!(read(&dir.path().join("node-1.pem")), before);
        let ca = read(&dir.path().join(CA_CERT));
        generate_node(dir.path(), 1, &[], true).unwrap();
        assert_ne!(read(&dir.path().join("node-1.pem")), before);
        assert_eq!(read(&dir.path().join(CA_CERT)), ca, "force keeps the CA");
        let err = generate_node(dir.path(), 0, &[], false).unwrap_err();
        assert!(matches!(err, Error::NodeId), "{err}");
        // Half a CA is an error naming the missing file, not a silent new CA.
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = generate_node(dir.path(), 2, &[], false).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
        assert!(!dir.path().join("node-2.pem").exists());
    }

    #[test]
    fn another_ca_is_unrelated() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), false).unwrap();
        let ca = read(&dir.path().join(CA_CERT));
        let other = CertAuthority::new("another CA").unwrap();
        let stranger = other.issue_client(ROOT_CLIENT).unwrap();
        assert!(signed_by(&stranger.cert_pem, other.cert_pem()));
        assert!(!signed_by(&stranger.cert_pem, &ca));
        assert_ne!(other.cert_pem(), ca);
    }

    #[test]
    fn load_names_the_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertAuthority::load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        std::fs::write(dir.path().join(CA_CERT), "not pem").unwrap();
        std::fs::write(dir.path().join(CA_KEY), "not pem").unwrap();
        let err = CertAuthority::load_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn debug_hides_private_keys() {
        let ca = CertAuthority::new("x").unwrap();
        let pair = ca.issue_client("c").unwrap();
        assert!(!format!("{pair:?}").contains("PRIVATE KEY"));
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
