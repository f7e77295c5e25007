//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer) and for the corpus
//! replay test (`tests/fuzz_corpus.rs`): each takes arbitrary bytes, drives one decoder or
//! validator of the crate with them, and **panics when an invariant breaks** (a panic is
//! what libFuzzer reports as a crash).
//!
//! Owns: the invariants the fuzzers check, and the small input reader ([`Input`]) that turns
//! fuzzer bytes into structured values. Must never: be used by the server itself, or widen
//! what the crate's modules expose. It lives inside the crate so that it can reach the
//! crate-private decoders (`storage::format`, `raft::wire`, the server's request checks)
//! without making them public; it is `#[doc(hidden)]` and not part of the API.
//!
//! Targets (one function each; `docs/RELIABILITY.md` "Fuzzing" says how to run them):
//! - [`batch_decode`]: the batch and record decoders, and encode → decode round trips;
//! - [`segment_recovery`]: opening a partition whose active segment holds arbitrary bytes
//!   (portable engine);
//! - [`index_rebuild`]: a valid store with an arbitrary (or plausible but wrong) index file;
//! - [`config_parse`]: the TOML config parser and `Config::validate`;
//! - [`replication_message`]: protobuf replication frames through `raft::wire` and the
//!   controller's metadata records;
//! - [`server_request`]: the server's request validation for Append, Read, CreateTopic,
//!   Truncate.
//!
//! Inputs whose first byte has its low bit set get their CRCs fixed up before use (batch
//! CRCs, index entry checks): without that, mutation almost never gets past a CRC, and the
//! code behind it would go unfuzzed.

mod config;
mod replication;
mod server;
mod storage;

pub use config::config_parse;
pub use replication::replication_message;
pub use server::server_request;
pub use storage::{batch_decode, index_rebuild, segment_recovery};

/// The names of the targets, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [&str; 6] = [
    "batch_decode",
    "segment_recovery",
    "index_rebuild",
    "config_parse",
    "replication_message",
    "server_request",
];

/// Runs the target called `name` on `data`; `false` when no target has that name.
pub fn run(name: &str, data: &[u8]) -> bool {
    let target: fn(&[u8]) = match name {
        "batch_decode" => batch_decode,
        "segment_recovery" => segment_recovery,
        "index_rebuild" => index_rebuild,
        "config_parse" => config_parse,
        "replication_message" => replication_message,
        "server_request" => server_request,
        _ => return false,
    };
    target(data);
    true
}

/// Reads structured values off fuzzer bytes; past the end it yields zeros and empty
/// slices, so every input is usable.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `len` bytes (fewer at the end).
    pub(crate) fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let bytes = self.take(N);
        out[..bytes.len()].copy_from_slice(bytes);
        out
    }

    pub(crate) fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub(crate) fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A length-prefixed slice of at most `max` bytes.
    pub(crate) fn bytes(&mut self, max: usize) -> &'a [u8] {
        let len = usize::from(self.u16()) % (max + 1);
        self.take(len)
    }
}

/// The directory fuzz targets put their files in: a fresh temporary directory under
/// `TMPDIR` (`make fuzz` points it at `/dev/shm`, so that an exec costs no disk I/O).
pub(crate) fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("walrs-fuzz-")
        .tempdir()
        .expect("a temporary directory for the fuzz target")
}
