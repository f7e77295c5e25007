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
    #[error("partition log {} is poisoned by an earlier failed {op}; its on-disk state is unknown until a restart recovers it: restart the server (the log is recovered on open)", dir.display())]
    Poisoned { dir: PathBuf, op: &'static str },
    /// Refused before anything was written: free space is at or would fall below the floor.
    #[error(
        "the disk holding {} is full: {free_bytes} bytes free, the floor is storage.disk_free_bytes_min = {floor_bytes}; nothing was written. Free space (Truncate old records, DeleteTopic, lower retention, or grow the disk) and retry: appends resume by themselves once free space is back above the floor",
        dir.display()
    )]
    DiskFull {
        dir: PathBuf,
        free_bytes: u64,
        floor_bytes: u64,
    },
    /// A write met a full disk (`ENOSPC`, `EDQUOT`) that the floor did not prevent; what it
    /// wrote is cut back (at once, or by the log's recovery at its next write).
    #[error(
        "no space left on the device during {op} on {}: nothing of this write is kept (the log cuts back to its last durable record) and nothing acknowledged is lost. Free space (Truncate old records, DeleteTopic, lower retention, or grow the disk) and retry: writes resume by themselves. ({source})",
        path.display()
    )]
    OutOfSpace {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log met a full disk earlier and could not yet cut itself back to its durable end
    /// (it tries again at the next write).
    #[error(
        "partition log {} ran out of disk space during {op} and refuses writes until space is freed; nothing acknowledged is lost. Free space (Truncate old records, DeleteTopic, lower retention, or grow the disk): the log recovers by itself at the next write",
        dir.display()
    )]
    OutOfSpacePending { dir: PathBuf, op: &'static str },
    #[error("encoded batch refused: {source}")]
    BadBatch {
        #[source]
        source: DecodeError,
    },
    #[error(
        "encoded batch starts at offset {base_offset}, but the log ends at {end_offset}; a follower appends only at the end"
    )]
    NotContinuous { base_offset: u64, end_offset: u64 },
    #[error(
        "Raft entry {raft_index} does not follow the log's last entry: the next one appended must be entry {expected} (a gap would break the log's lookup of entries by index); nothing was written, and the partition's Raft group starts again from what its log holds"
    )]
    EntryGap { raft_index: u64, expected: u64 },
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

impl Error {
    /// True when the error is a full disk: a refusal by the floor, a write that met `ENOSPC`,
    /// or a log waiting for space to recover. Such a failure changed nothing that was
    /// acknowledged, and the write may be retried once space is freed.
    pub fn is_out_of_space(&self) -> bool {
        matches!(
            self,
            Error::DiskFull { .. } | Error::OutOfSpace { .. } | Error::OutOfSpacePending { .. }
        )
    }
}

/// Attaches the operation and path to an `io::Error`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| {
        if super::space::is_out_of_space(&source) {
            Error::OutOfSpace { op, path, source }
        } else {
            Error::Io { op, path, source }
        }
    }
}
