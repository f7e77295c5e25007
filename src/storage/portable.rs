//! The portable store engine: plain std files, blocking calls, `fdatasync` for durability.
//!
//! Owns: `PortableEngine` and `PortableFile`, the [`Engine`]/[`StoreFile`] pair that runs on
//! any Unix and on Linux where io_uring cannot start.
//! Must never: buffer in user space. `append` hands the bytes to the kernel before it returns,
//! so the file on disk is always exactly `len()` bytes long and byte-for-byte what the uring
//! engine leaves after `close`.
//!
//! Its `async fn`s never suspend; they block the calling thread, which is the shard's own.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;

use super::fsutil::{self, parent, sync_dir};
use super::io::{Engine, StoreFile};
use crate::observability::hops::{self, IoHop};

/// Std-file engine. Clones share the fdatasync counter.
#[derive(Clone, Default)]
pub struct PortableEngine {
    fdatasyncs: Rc<Cell<u64>>,
}

impl PortableEngine {
    pub fn new() -> PortableEngine {
        PortableEngine::default()
    }
}

pub struct PortableFile {
    file: File,
    len_bytes: u64,
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
        Ok(PortableFile {
            file,
            len_bytes: 0,
            fdatasyncs: self.fdatasyncs.clone(),
        })
    }

    async fn open(&self, path: &Path) -> io::Result<PortableFile> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len_bytes = file.metadata()?.len();
        Ok(PortableFile {
            file,
            len_bytes,
            fdatasyncs: self.fdatasyncs.clone(),
        })
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
            Ok(()) => failure,
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
        self.fdatasyncs.set(self.fdatasyncs.get() + 1);
        self.file.sync_data()?;
        hops::io_stamp(IoHop::SyncDone);
        Ok(())
    }

    async fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        assert!(
            len_bytes <= self.len_bytes,
            "truncate to {len_bytes} past the end {}",
            self.len_bytes
        );
        self.file.set_len(len_bytes)?;
        self.len_bytes = len_bytes;
        self.sync().await
    }

    async fn close(mut self) -> io::Result<()> {
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
}
