//! The file layer under the log: the one seam between the log's logic and an I/O engine.
//!
//! Owns: the [`Engine`] and [`StoreFile`] traits. The partition log is generic over them, so
//! the same log code runs on the portable std-file engine, on the glommio io_uring DMA engine,
//! and on the fault-injecting engine of the crash tests.
//!
//! Must never: know anything about batches or offsets. A store file is an append-only run of
//! bytes with a logical length; what the bytes mean is `format`'s business.
//!
//! Invariants every engine keeps:
//! - `len()` is the logical length: every byte appended so far, whether or not it has reached
//!   the disk. Bytes below `len()` are readable with `read_at` the moment `append` returns.
//! - After `sync()` returns `Ok`, every byte below `len()` is durable (`fdatasync`).
//! - A file may be longer on disk than its logical length (an engine that writes whole aligned
//!   blocks pads the tail with zeros); the format treats a zero header as the end of the log.
//!   `close()` trims the file to its logical length.
//! - Engines are single-owner: one shard task owns a file, so no method takes a lock and
//!   nothing here needs to be `Send`.

use std::io;
use std::path::{Path, PathBuf};

/// Opens, creates and removes store files. Cheap to clone (a handle).
#[allow(async_fn_in_trait)] // Engines are single-threaded by design; no Send bound wanted.
pub trait Engine: Clone + 'static {
    type File: StoreFile;

    /// A short name for logs: `"portable"`, `"uring"`, `"faulty"`.
    fn name(&self) -> &'static str;

    /// How many `fdatasync` calls this engine's store files (and its clones') have made,
    /// failed ones included: group commit shows here.
    fn fdatasync_count(&self) -> u64;

    /// Creates a new, empty file at `path`, failing if it exists. The directory entry is made
    /// durable before this returns.
    async fn create(&self, path: &Path) -> io::Result<Self::File>;

    /// Opens an existing file for reading and appending; `len()` starts at its size on disk.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;

    /// Removes a file. The removal is made durable (directory sync) before this returns.
    async fn remove(&self, path: &Path) -> io::Result<()>;

    /// The file names (not paths) in `dir`, unsorted.
    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;

    /// Size in bytes and last-modified time (ms since the Unix epoch) of a file, without
    /// opening it.
    async fn stat(&self, path: &Path) -> io::Result<FileStat>;
}

/// What `Engine::stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size_bytes: u64,
    pub modified_ms: i64,
}

/// One append-only store file.
#[allow(async_fn_in_trait)]
pub trait StoreFile {
    /// The logical length in bytes: everything appended (and not truncated away).
    fn len(&self) -> u64;

    /// True when nothing is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` at `len()`.
    ///
    /// # Correctness
    /// On return the bytes are readable through `read_at`; they are durable only after a
    /// later `sync` returns `Ok`.
    async fn append(&mut self, data: &[u8]) -> io::Result<()>;

    /// Appends `len_bytes` bytes that `fill` writes into the slice it is handed (exactly
    /// `len_bytes` long). An engine with a write buffer lets the caller encode straight into
    /// it; the default encodes into a temporary buffer and calls `append`.
    ///
    /// # Correctness
    /// As for `append`.
    async fn append_with(
        &mut self,
        len_bytes: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        let mut buf = vec![0u8; len_bytes];
        fill(&mut buf);
        self.append(&buf).await
    }

    /// Reads exactly `len_bytes` bytes at `position`; `position + len_bytes <= len()`.
    async fn read_at(&self, position: u64, len_bytes: usize) -> io::Result<Vec<u8>>;

    /// Makes every byte below `len()` durable (`fdatasync`).
    ///
    /// # Correctness
    /// An error leaves the durable state unknown. The caller must poison the file and never
    /// retry the sync as though nothing happened.
    async fn sync(&mut self) -> io::Result<()>;

    /// Cuts the file to `len_bytes` (<= `len()`) and makes the cut durable.
    async fn truncate(&mut self, len_bytes: u64) -> io::Result<()>;

    /// Writes out what is buffered, trims the on-disk file to `len()` and closes it. Does not
    /// sync; call `sync` first when the data must be durable.
    async fn close(self) -> io::Result<()>;
}
