//! Reading a refusal: the `walrs-leader` hint a node attaches when it does not lead a
//! partition, and the one decision every routed call makes from a failed attempt's status:
//! follow the hint, try another node, or give the status to the caller.
//!
//! This module owns the metadata format (`walrs-leader: <node id>=<host:port>`) on the
//! client side and the list of codes that are retried. It never sleeps, connects or keeps
//! state: [`super::routing`] acts on what it decides. A malformed hint is ignored (the
//! refusal then counts as one without a hint), never a panic.

use std::error::Error as StdError;

use tonic::{Code, Status};

/// The response metadata key that names a partition's leader (or a replica to try).
pub const LEADER_METADATA_KEY: &str = "walrs-leader";

/// Where a node says to go instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id (> 0).
    pub node_id: u32,
    /// Its gRPC address, `host:port` (as the node advertises it).
    pub addr: String,
}

/// Parses a `walrs-leader` value, `<node id>=<host:port>` (surrounding blanks allowed).
/// `None` for anything else: no `=`, an id that is not a positive u32, an empty address
/// or one with blanks or a `/`, an address over 255 bytes.
pub fn parse_leader_hint(value: &str) -> Option<LeaderHint> {
    const ADDR_BYTES_MAX: usize = 255;
    let (id, addr) = value.trim().split_once('=')?;
    let node_id: u32 = id.trim().parse().ok().filter(|id| *id > 0)?;
    let addr = addr.trim();
    let well_formed = !addr.is_empty()
        && addr.len() <= ADDR_BYTES_MAX
        && !addr.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/');
    well_formed.then(|| LeaderHint {
        node_id,
        addr: addr.to_string(),
    })
}

/// The hint a status carries, if it has a well-formed one.
pub fn leader_hint(status: &Status) -> Option<LeaderHint> {
    let value = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    parse_leader_hint(value)
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The node refused with `UNAVAILABLE` and named where to go: nothing was changed.
    Follow(LeaderHint),
    /// The node refused with `UNAVAILABLE` and no usable hint (an election is under way,
    /// or the node is shutting down): nothing was changed; back off and try another node.
    Refused,
    /// The request may not have reached a server, or its answer was lost (connection
    /// refused, reset, closed): back off and try another node. An append may have been
    /// written.
    Transport,
    /// The server's answer, final: give it to the caller unchanged.
    Fail,
}

/// Decides from a failed attempt's status. Only `UNAVAILABLE` answers and transport
/// failures are retried; every other code a server sends (`INVALID_ARGUMENT`, `NOT_FOUND`,
/// `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `RESOURCE_EXHAUSTED`, `OUT_OF_RANGE`, ...)
/// is final, and so is a local TLS failure (retrying cannot fix a certificate).
pub fn classify(status: &Status) -> Disposition {
    if is_local(status) {
        // tonic made this status on the client side from a transport error (the error is
        // its source); a server's status never has one.
        let transient = matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        );
        return if transient && !is_tls_failure(status) {
            Disposition::Transport
        } else {
            Disposition::Fail
        };
    }
    if status.code() != Code::Unavailable {
        return Disposition::Fail;
    }
    match leader_hint(status) {
        Some(hint) => Disposition::Follow(hint),
        None => Disposition::Refused,
    }
}

/// Whether tonic made `status` on the client side (from a transport error).
fn is_local(status: &Status) -> bool {
    StdError::source(status).is_some()
}

/// Whether `err`'s chain holds a rustls error: a certificate or handshake problem, which
/// no retry fixes. `io::Error` hides its inner error from `source()`, so it is opened too.
pub(crate) fn is_tls_failure(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    // Bounded: error chains are short; 32 links is far beyond any real one.
    for _ in 0..32 {
        let Some(err) = next else { return false };
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && is_rustls(inner)
        {
            return true;
        }
        next = err.source();
    }
    false
}

fn is_rustls(err: &(dyn StdError + Send + Sync + 'static)) -> bool {
    err.is::<rustls::Error>()
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataMap;

    use super::*;

    fn hint(id: u32, addr: &str) -> Option<LeaderHint> {
        Some(LeaderHint {
            node_id: id,
            addr: addr.into(),
        })
    }

    #[test]
    fn well_formed_hints_parse() {
        assert_eq!(
            parse_leader_hint("2=127.0.0.1:7071"),
            hint(2, "127.0.0.1:7071")
        );
        assert_eq!(
            parse_leader_hint(" 7 = node-7:7070 "),
            hint(7, "node-7:7070")
        );
        assert_eq!(parse_leader_hint("1=[::1]:7070"), hint(1, "[::1]:7070"));
        // Only the first `=` separates.
        assert_eq!(parse_leader_hint("3=a=b:1"), hint(3, "a=b:1"));
    }

    #[test]
    fn malformed_hints_are_ignored() {
        let long = format!("1={}:1", "a".repeat(300));
        for value in [
            "",
            "=",
            "2",
            "127.0.0.1:7071",
            "=127.0.0.1:7071",
            "0=127.0.0.1:7071",
            "-1=127.0.0.1:7071",
            "x=127.0.0.1:7071",
            "4294967296=127.0.0.1:7071",
            "2=",
            "2=   ",
            "2=host name:1",
            "2=http://host:1",
            long.as_str(),
        ] {
            assert_eq!(parse_leader_hint(value), None, "{value:?}");
        }
    }

    fn unavailable_with(value: Option<&str>) -> Status {
        let mut metadata = MetadataMap::new();
        if let Some(value) = value {
            metadata.insert(LEADER_METADATA_KEY, value.parse().unwrap());
        }
        Status::with_metadata(Code::Unavailable, "not the leader", metadata)
    }

    #[test]
    fn only_unavailable_and_transport_failures_are_retried() {
        assert_eq!(
            classify(&unavailable_with(Some("2=127.0.0.1:7071"))),
            Disposition::Follow(hint(2, "127.0.0.1:7071").unwrap())
        );
        assert_eq!(classify(&unavailable_with(None)), Disposition::Refused);
        assert_eq!(
            classify(&unavailable_with(Some("garbage"))),
            Disposition::Refused
        );
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::OutOfRange,
            Code::AlreadyExists,
            Code::Unauthenticated,
            Code::DataLoss,
            // A server's own UNKNOWN or INTERNAL is its answer, not a lost connection.
            Code::Unknown,
            Code::Internal,
        ] {
            let mut metadata = MetadataMap::new();
            metadata.insert(LEADER_METADATA_KEY, "2=127.0.0.1:7071".parse().unwrap());
            let status = Status::with_metadata(code, "no", metadata);
            assert_eq!(classify(&status), Disposition::Fail, "{code:?}");
        }
    }

    #[test]
    fn local_transport_errors_are_retried_but_not_tls_failures() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let status = Status::from_error(Box::new(reset));
        assert_eq!(classify(&status), Disposition::Transport);

        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let status = Status::from_error(Box::new(tls));
        assert_eq!(status.code(), Code::Unknown);
        assert_eq!(classify(&status), Disposition::Fail);
    }
}
