//! The portable store engine: plain std files, blocking calls, `fdatasync` for durability.
//!
//! Owns: `PortableEngine` and `PortableFile`, the [`Engine`]/[`StoreFile`] pair that runs on
//! any Unix and on Linux where io_uring cannot start.
//! Must never: buffer in user space. `append` hands the bytes to the kernel before it returns,
//! so the file holds exactly the logical bytes below `len()`, and after `close` or `truncate`
//! it is exactly `len()` bytes long and byte-for-byte what the uring engine leaves.
//!
//! Its `async fn`s never suspend; they block the calling thread, which is the shard's own.
//!
//! # Preallocation (on by default; [`PortableEngine::with_preallocation`])
//! A `fdatasync` after a write that grew the file must commit the new size to the journal; one
//! after an overwrite of blocks the file holds is a data write and a cache flush. So when a
//! commit grew the file by at most a quarter of [`PREALLOCATE_BYTES`], `sync` first writes
//! that many zeros past `len()`, and the same `fdatasync` covers them: the next commits
//! overwrite zeros. The zeros past `len()` are what the recovery scan already takes for the
//! end of the log; `truncate` and `close` cut them. A failed zero write is cut back and turns
//! preallocation off for the file (nothing depends on it).

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use super::fsutil::{self, parent, sync_dir};
use super::io::{Engine, StoreFile};
use crate::observability::hops::{self, IoHop};

/// Zeros a file is grown by ahead of small commits (module docs, "Preallocation").
pub const PREALLOCATE_BYTES: usize = 256 * 1024;

static ZEROS: [u8; PREALLOCATE_BYTES] = [0; PREALLOCATE_BYTES];

/// Std-file engine. Clones share the fdatasync counter.
#[derive(Clone)]
pub struct PortableEngine {
    fdatasyncs: Rc<Cell<u64>>,
    preallocate: bool,
}

impl Default for PortableEngine {
    fn default() -> Self {
        PortableEngine {
            fdatasyncs: Rc::default(),
            preallocate: true,
        }
    }
}

impl PortableEngine {
    pub fn new() -> PortableEngine {
        PortableEngine::default()
    }

    /// This engine with small commits' file growth preallocated (the default) or not.
    pub fn with_preallocation(mut self, preallocate: bool) -> PortableEngine {
        self.preallocate = preallocate;
        self
    }

    fn file(&self, file: File, len_bytes: u64) -> PortableFile {
        PortableFile {
            file,
            len_bytes,
            file_end: len_bytes,
            synced_len: len_bytes,
            preallocate: self.preallocate,
            fdatasyncs: self.fdatasyncs.clone(),
        }
    }
}

pub struct PortableFile {
    file: File,
    len_bytes: u64,
    /// The file's size on disk: `len_bytes` plus any preallocated zeros.
    file_end: u64,
    /// `len_bytes` at the last successful sync: what a commit grew the log by.
    synced_len: u64,
    /// Zero-fill ahead of small commits; off for good once a zero write fails.
    preallocate: bool,
    fdatasyncs: Rc<Cell<u64>>,
}

impl Engine for PortableEngine {
    type File = PortableFile;

    fn name(&self) -> &'static str {
        "portable"
    }

    fn fdatasync_count(&self) -> u64 {
        self.fdatasyncs.get()
    }

    async fn create(&self, path: &Path) -> io::Result<PortableFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        sync_dir(parent(path))?;
        Ok(self.file(file, 0))
    }

    async fn open(&self, path: &Path) -> io::Result<PortableFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len_bytes = file.metadata()?.len();
        Ok(self.file(file, len_bytes))
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)?;
        sync_dir(parent(path))
    }

    async fn remove_if_exists(&self, path: &Path) -> io::Result<bool> {
        fsutil::remove_if_exists(path)
    }

    async fn read_small_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        fsutil::read_small_file(path)
    }

    async fn replace_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        fsutil::replace_file_atomic(path, bytes)
    }
}

impl PortableFile {
    /// Before the sync of a small commit that grew the file: zeros past `len()`, covered by
    /// the same `fdatasync` (module docs, "Preallocation").
    fn preallocate_ahead(&mut self) {
        let grown = self.len_bytes.saturating_sub(self.synced_len);
        let small = grown <= (PREALLOCATE_BYTES / 4) as u64;
        if !self.preallocate || self.len_bytes < self.file_end || grown == 0 || !small {
            return;
        }
        match self.file.write_all_at(&ZEROS, self.len_bytes) {
            Ok(()) => self.file_end = self.len_bytes + PREALLOCATE_BYTES as u64,
            Err(err) => {
                self.preallocate = false;
                // Cut what part of the zeros landed; they would read as the end of the log
                // anyway, so a failed cut is harmless too.
                let cut = self.file.set_len(self.len_bytes);
                self.file_end = if cut.is_ok() {
                    self.len_bytes
                } else {
                    u64::MAX
                };
                tracing::debug!(
                    ?err,
                    ?cut,
                    "preallocation failed; the file grows by its writes from now on"
                );
            }
        }
    }

    fn fdatasync(&mut self) -> io::Result<()> {
        self.fdatasyncs.set(self.fdatasyncs.get() + 1);
        self.file.sync_data()?;
        hops::io_stamp(IoHop::SyncDone);
        self.synced_len = self.len_bytes;
        Ok(())
    }

    /// After a failed append that wrote `written` bytes past the logical end (a full disk
    /// stops a write part-way), cuts the file back to its logical length, so that no stray
    /// bytes follow the log; `failure` is returned as it was, or as the cut's own error
    /// (never retried) when the cut fails too. Nothing is synced: the stray bytes were never
    /// synced either, and recovery cuts a torn tail anyway.
    fn cut_back(&mut self, written: usize, failure: io::Error) -> io::Error {
        if written == 0 {
            return failure;
        }
        match self.file.set_len(self.len_bytes) {
            Ok(()) => {
                self.file_end = self.len_bytes;
                failure
            }
            Err(cut) => io::Error::other(format!(
                "{failure}; cutting the {written} bytes it wrote back also failed: {cut}"
            )),
        }
    }
}

impl StoreFile for PortableFile {
    fn len(&self) -> u64 {
        self.len_bytes
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < data.len() {
            match self
                .file
                .write_at(&data[written..], self.len_bytes + written as u64)
            {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::WriteZero,
                        "store file accepted no bytes (is the disk full?)",
                    );
                    return Err(self.cut_back(written, e));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.cut_back(written, e)),
            }
        }
        self.len_bytes += data.len() as u64;
        self.file_end = self.file_end.max(self.len_bytes);
        Ok(())
    }

    async fn read_at(&self, position: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        assert!(
            position + len_bytes as u64 <= self.len_bytes,
            "read of {len_bytes} bytes at {position} past the logical end {}",
            self.len_bytes
        );
        let mut buf = vec![0u8; len_bytes];
        self.file.read_exact_at(&mut buf, position)?;
        Ok(buf)
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.preallocate_ahead();
        self.fdatasync()
    }

    async fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        assert!(
            len_bytes <= self.len_bytes,
            "truncate to {len_bytes} past the end {}",
            self.len_bytes
        );
        self.file.set_len(len_bytes)?;
        self.file_end = len_bytes;
        self.len_bytes = len_bytes;
        // No preallocation here: a truncated (or sealed) file ends at its last byte.
        self.fdatasync()
    }

    async fn close(mut self) -> io::Result<()> {
        if self.file_end > self.len_bytes {
            self.file.set_len(self.len_bytes)?;
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use futures::executor::block_on;

    #[test]
    fn append_read_truncate_reopen() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.log");
            let engine = PortableEngine::new();
            let mut file = engine.create(&path).await.unwrap();
            assert!(
                engine.create(&path).await.is_err(),
                "create must not clobber"
            );
            file.append(b"hello ").await.unwrap();
            file.append(b"world").await.unwrap();
            assert_eq!(file.read_at(3, 5).await.unwrap(), b"lo wo");
            file.sync().await.unwrap();
            file.truncate(5).await.unwrap();
            assert_eq!(engine.fdatasync_count(), 2);
            file.close().await.unwrap();
            let file = engine.open(&path).await.unwrap();
            assert_eq!(file.len(), 5);
            assert_eq!(engine.stat(&path).await.unwrap().size_bytes, 5);
            assert_eq!(
                engine.list(dir.path()).await.unwrap(),
                vec![PathBuf::from("a.log")]
            );
            engine.remove(&path).await.unwrap();
            assert!(!path.exists());
        });
    }

    /// A small commit that grows the file writes `PREALLOCATE_BYTES` of zeros past it, the
    /// next small commits overwrite them, a large one grows the file itself, and `truncate`
    /// and `close` leave exactly the logical bytes.
    #[test]
    fn small_commits_preallocate_and_close_trims() {
        block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.log");
            let disk_len = || std::fs::metadata(&path).unwrap().len();
            let prealloc = PREALLOCATE_BYTES as u64;
            let mut file = PortableEngine::new().create(&path).await.unwrap();
            file.append(&[1; 100]).await.unwrap();
            file.sync().await.unwrap();
            assert_eq!(disk_len(), 100 + prealloc);
            file.append(&[2; 5_000]).await.unwrap();
            file.sync().await.unwrap();
            assert_eq!(
                disk_len(),
                100 + prealloc,
                "a small commit inside the zeros"
            );
            let large = vec![3; PREALLOCATE_BYTES];
            file.append(&large).await.unwrap();
            file.sync().await.unwrap();
            let len = 5_100 + prealloc;
            assert_eq!(disk_len(), len, "a large commit grows the file by itself");
            assert_eq!(file.read_at(5_099, 2).await.unwrap(), [2, 3]);
            file.append(&[4; 10]).await.unwrap();
            file.sync().await.unwrap();
            assert_eq!(disk_len(), len + 10 + prealloc);
            file.truncate(len).await.unwrap();
            assert_eq!(disk_len(), len);
            file.append(&[5; 10]).await.unwrap();
            file.sync().await.unwrap();
            file.close().await.unwrap();
            assert_eq!(disk_len(), len + 10);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                &bytes[bytes.len() - 11..],
                [3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]
            );

            let mut file = PortableEngine::new()
                .with_preallocation(false)
                .open(&path)
                .await
                .unwrap();
            file.append(b"x").await.unwrap();
            file.sync().await.unwrap();
            assert_eq!(disk_len(), len + 11);
            file.close().await.unwrap();
        });
    }
}
