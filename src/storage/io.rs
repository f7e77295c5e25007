//! The file layer under the log: the one seam between the log's logic and an I/O engine.
//!
//! Owns: the [`Engine`] and [`StoreFile`] traits. The partition log is generic over them, so
//! the same log code runs on the portable std-file engine, on the glommio io_uring DMA engine,
//! and on the fault-injecting engine of the crash tests.
//!
//! Must never: know anything about batches or offsets. A store file is an append-only run of
//! bytes with a logical length; what the bytes mean is `format`'s business.
//!
//! Every write the log makes goes through an engine: store files, the memory-mapped index
//! files (open, resize), small state files (`start_offset`, `leader_epochs`, `raft_state`,
//! replaced atomically) and directories. So a reactor-based engine decides how each is done
//! and the fault-injecting engine can crash inside any of them.
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

use super::fsutil;

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

    /// The file names (not paths) in `dir`, unsorted. By default a plain `readdir` (the
    /// engines' files are plain files on disk).
    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fsutil::list_dir(dir)
    }

    /// Size in bytes and last-modified time (ms since the Unix epoch) of a file, without
    /// opening it. By default a plain `stat`.
    async fn stat(&self, path: &Path) -> io::Result<FileStat> {
        fsutil::stat_file(path)
    }

    /// Creates `dir` and its missing parents; the new directory entries are durable on return.
    /// By default blocking calls: glommio 0.9's `Directory::create` makes one level and
    /// cannot `fsync`, and a partition directory is made once in its life.
    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fsutil::create_dir_all_durable(dir)
    }

    /// Removes `path` if it exists, durably (directory sync); `Ok(false)` when there was none.
    async fn remove_if_exists(&self, path: &Path) -> io::Result<bool>;

    /// The whole contents of a small file (a few KiB at most), or `None` when it is missing.
    async fn read_small_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;

    /// Replaces `path` with `bytes` atomically and durably: writes `<path>.tmp`, fsyncs it,
    /// renames it over `path`, fsyncs the directory.
    ///
    /// # Correctness
    /// After `Ok` the new contents survive a crash. After an error or a crash, `path` holds
    /// either the old contents or the new, never a mix; a stale `<path>.tmp` may be left,
    /// which the owner removes (with [`Engine::remove_if_exists`]) before reading.
    async fn replace_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;

    /// Opens, creating when missing, a file that the caller memory-maps (an offset index).
    /// A creation is durable on return. The mapping itself is the caller's (memmap2).
    async fn open_mapped(&self, path: &Path) -> io::Result<std::fs::File> {
        fsutil::open_mapped(path)
    }

    /// Sets the length of a file opened with [`Engine::open_mapped`]: grows it (sparse) or
    /// trims it. The caller has dropped any mapping of the bytes cut off. By default a
    /// blocking `ftruncate` (glommio 0.9 truncates only its own file types, and this is the
    /// std `File` behind a map); it runs once per segment on growth and on seal.
    async fn set_mapped_len(
        &self,
        file: &std::fs::File,
        path: &Path,
        len_bytes: u64,
    ) -> io::Result<()> {
        let _ = path; // for engines that account per path (the faulty one)
        file.set_len(len_bytes)
    }
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
