//! Errors of the storage layer. Each variant carries the values a user needs to act on it;
//! the server maps them to gRPC status codes (never here: storage knows nothing of gRPC).

use std::io;
use std::path::PathBuf;

use super::format::DecodeError;
use super::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt batch in segment {} at position {position}: {source}", segment.display())]
    Corrupt {
        segment: PathBuf,
        position: u64,
        #[source]
        source: DecodeError,
    },
    #[error(
        "offset {offset} is out of range: valid offsets are {start}..={end} (start offset to end offset)"
    )]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error(
        "offset {offset} is inside the batch {batch_base}..{batch_next}; suffix truncation must start at a batch boundary"
    )]
    NotBatchBoundary {
        offset: u64,
        batch_base: u64,
        batch_next: u64,
    },
    #[error("a batch needs at least one record")]
    EmptyBatch,
    #[error("record {index} is {bytes} bytes encoded, over record_bytes_max = {max}")]
    RecordTooLarge {
        index: usize,
        bytes: usize,
        max: u64,
    },
    #[error("batch is {bytes} bytes encoded, over batch_bytes_max = {max}")]
    BatchTooLarge { bytes: usize, max: u64 },
    #[error("record {index} has a header name of {bytes} bytes; at most 65535 are allowed")]
    HeaderNameTooLong { index: usize, bytes: usize },
    #[error("partition log {} is poisoned by an earlier failed {op}; its on-disk state is unknown until a restart recovers it", dir.display())]
    Poisoned { dir: PathBuf, op: &'static str },
    #[error("encoded batch refused: {source}")]
    BadBatch {
        #[source]
        source: DecodeError,
    },
    #[error(
        "encoded batch starts at offset {base_offset}, but the log ends at {end_offset}; a follower appends only at the end"
    )]
    NotContinuous { base_offset: u64, end_offset: u64 },
    #[error("batch term {term} is below the log's last term {last_term}")]
    TermRegressed { term: u64, last_term: u64 },
    #[error("state file {} is unreadable: {source}", path.display())]
    BadStateFile {
        path: PathBuf,
        #[source]
        source: StateError,
    },
    #[error("invalid storage config: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation and path to an `io::Error`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
