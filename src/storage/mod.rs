//! Storage layer: one partition's log on disk, over a pluggable file engine.
//!
//! Owns: the on-disk format (`format`), the offset index (`index`), segments (`segment`), the
//! partition log (`log`), the small state files beside it (`state`: leader epochs, vote), and
//! the free-space floor (`space`), and the engines that do the file I/O (`portable`, `uring`, and the fault-injecting `faulty`
//! for crash tests) with their shared std-file helpers (`fsutil`).
//! Its modules are private: what the shard layer, the tests and the benches use is
//! re-exported here, so the server cannot reach into the file format.
//! Must never: know about gRPC, topics, shards or the network. It is driven by one owner at a
//! time (a shard task); nothing in it is `Send` or locked.

mod error;
mod faulty;
pub(crate) mod format;
pub(crate) mod fsutil;
mod index;
mod io;
mod limits;
mod log;
mod portable;
mod segment;
mod space;
mod state;
mod tail;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

pub use error::{Error, Result};
pub use faulty::FaultyEngine;
pub use format::{
    BATCH_HEADER_LEN, Batch, BatchHeader, BatchMeta, DecodeError, FLAG_CONTROL,
    FLAGS_COMPRESSION_MASK, FORMAT_VERSION, Record, batch_len, encode_batch, encode_batch_into,
    verify_batch,
};
pub use index::ENTRY_LEN as INDEX_ENTRY_LEN;
pub use io::{Engine, FileStat, StoreFile};
pub use limits::{CheckedBatch, InvalidLimit, LimitName, LogLimits, ProducerStamp, check_range};
pub use log::{EntryMeta, Log, LogSuffix, OpenReport, RawBatch, VerifiedBatch, now_ms};
pub use portable::PortableEngine;
pub use segment::{Recovery, index_file_name, store_file_name};
pub use space::{DiskSpace, SpaceLimits, free_bytes, is_out_of_space};
pub use state::{AppliedMark, EpochStart, MarkFile, StateError, Vote};
#[cfg(target_os = "linux")]
pub use uring::{UringEngine, WriteMode as UringWriteMode};
