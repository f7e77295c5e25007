//! The gRPC front end: TLS, client identity and access control.
//! It authenticates, authorizes and validates requests; it never touches the log's files
//! and knows nothing of the on-disk format.
pub mod acl;
pub mod identity;
pub mod tls;
