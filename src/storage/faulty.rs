//! A fault-injecting engine for crash tests: wraps a real engine, counts writes, fails every
//! operation once a chosen write has happened (the "crash"), and afterwards tears the files
//! on disk the way a power cut would.
//!
//! Owns: the bookkeeping of how much of each file was synced.
//! Must never: be used outside tests and benches. It exists so the crash test runs against
//! both real engines (it wraps them; the bytes still go through the real engine).
//!
//! The model of a crash: every byte below a file's last successful sync survives; of the bytes
//! written after it, a prefix of random length survives and the last few surviving bytes may
//! be garbage (a torn sector). Creations and removals are durable at once (both engines sync
//! the directory before returning). Every write-like engine operation counts towards the
//! crash, not only store-file writes: directory creation, removals, the index file's open
//! and resizes, and atomic replaces of the state files; the one the crash lands on fails
//! having done nothing, and [`FaultyEngine::crashed_in`] names it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::io::{Engine, FileStat, StoreFile};

#[derive(Default)]
struct State {
    /// Operations left before the crash; `None` = never crash.
    writes_left: Option<u64>,
    crashed: bool,
    /// The operation the crash landed on.
    crashed_in: Option<&'static str>,
    /// Durable length of each file this engine has written.
    synced_len: HashMap<PathBuf, u64>,
}

/// Wraps engine `E`; clones share the crash state.
#[derive(Clone)]
pub struct FaultyEngine<E: Engine> {
    inner: E,
    state: Rc<RefCell<State>>,
}

pub struct FaultyFile<F: StoreFile> {
    inner: F,
    path: PathBuf,
    state: Rc<RefCell<State>>,
}

fn crashed() -> io::Error {
    io::Error::other("injected fault: the machine has crashed")
}

impl<E: Engine> FaultyEngine<E> {
    pub fn new(inner: E) -> Self {
        FaultyEngine {
            inner,
            state: Rc::default(),
        }
    }

    /// Crash right after `writes` more write-like operations (appends, syncs, truncates and
    /// the engine's file and directory operations) have been attempted. An append the crash
    /// lands on is torn: it fails, and whatever of it reached the disk is subject to the tear.
    pub fn crash_after(&self, writes: u64) {
        self.state.borrow_mut().writes_left = Some(writes);
    }

    pub fn has_crashed(&self) -> bool {
        self.state.borrow().crashed
    }

    /// The operation the crash landed on: `"append"`, `"sync"`, `"truncate"`, `"create"`,
    /// `"remove"`, `"create_dir_all"`, `"remove_if_exists"`, `"replace_file_atomic"`,
    /// `"open_mapped"` or `"set_mapped_len"`; `None` before the crash.
    pub fn crashed_in(&self) -> Option<&'static str> {
        self.state.borrow().crashed_in
    }

    /// Applies the crash to the files on disk: each file keeps its synced bytes plus a random
    /// prefix of the unsynced ones, whose last `garbage_bytes` may be overwritten with noise.
    /// Call after every handle to the files is closed or dropped. `random` supplies numbers
    /// in `0..n`.
    pub fn tear(&self, mut random: impl FnMut(u64) -> u64) -> io::Result<()> {
        let state = self.state.borrow();
        for (path, &synced) in &state.synced_len {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let on_disk = meta.len();
            if on_disk <= synced {
                continue;
            }
            let keep = synced + random(on_disk - synced + 1);
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(keep)?;
            let unsynced_kept = keep - synced;
            if unsynced_kept > 0 && random(2) == 0 {
                let garbage = random(unsynced_kept.min(64)) + 1;
                let noise: Vec<u8> = (0..garbage).map(|_| random(256) as u8).collect();
                std::os::unix::fs::FileExt::write_all_at(&file, &noise, keep - garbage)?;
            }
        }
        Ok(())
    }

    /// Engine-level operations are not torn: the one the crash lands on fails having done
    /// nothing (an atomic replace keeps the old contents; a resize or creation never happened).
    fn tick(&self, op: &'static str) -> io::Result<()> {
        match tick(&self.state, op)? {
            true => Err(crashed()),
            false => Ok(()),
        }
    }
}

/// Counts one write-like operation: `Err` once crashed, `Ok(true)` for the operation the
/// crash lands on (the torn one), `Ok(false)` otherwise.
fn tick(state: &RefCell<State>, op: &'static str) -> io::Result<bool> {
    let mut state = state.borrow_mut();
    if state.crashed {
        return Err(crashed());
    }
    if let Some(left) = state.writes_left.as_mut() {
        if *left == 0 {
            state.crashed = true;
            state.crashed_in = Some(op);
            return Ok(true);
        }
        *left -= 1;
    }
    Ok(false)
}

impl<F: StoreFile> FaultyFile<F> {
    /// `Ok(true)` for the operation the crash lands on: an append lets it reach the file and
    /// then fails (a torn write); a sync or truncate just fails.
    fn tick(&self, op: &'static str) -> io::Result<bool> {
        tick(&self.state, op)
    }

    fn set_synced(&self, len: u64) {
        self.state
            .borrow_mut()
            .synced_len
            .insert(self.path.clone(), len);
    }
}

impl<E: Engine> Engine for FaultyEngine<E> {
    type File = FaultyFile<E::File>;

    fn name(&self) -> &'static str {
        "faulty"
    }

    fn fdatasync_count(&self) -> u64 {
        self.inner.fdatasync_count()
    }

    async fn create(&self, path: &Path) -> io::Result<Self::File> {
        self.tick("create")?;
        let inner = self.inner.create(path).await?;
        self.state
            .borrow_mut()
            .synced_len
            .insert(path.to_owned(), 0);
        Ok(FaultyFile {
            inner,
            path: path.to_owned(),
            state: self.state.clone(),
        })
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        if self.state.borrow().crashed {
            return Err(crashed());
        }
        let inner = self.inner.open(path).await?;
        self.state
            .borrow_mut()
            .synced_len
            .entry(path.to_owned())
            .or_insert(inner.len());
        Ok(FaultyFile {
            inner,
            path: path.to_owned(),
            state: self.state.clone(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.tick("remove")?;
        self.state.borrow_mut().synced_len.remove(path);
        self.inner.remove(path).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.inner.list(dir).await
    }

    async fn stat(&self, path: &Path) -> io::Result<FileStat> {
        self.inner.stat(path).await
    }

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.tick("create_dir_all")?;
        self.inner.create_dir_all(dir).await
    }

    async fn remove_if_exists(&self, path: &Path) -> io::Result<bool> {
        self.tick("remove_if_exists")?;
        self.state.borrow_mut().synced_len.remove(path);
        self.inner.remove_if_exists(path).await
    }

    async fn read_small_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        if self.state.borrow().crashed {
            return Err(crashed());
        }
        self.inner.read_small_file(path).await
    }

    async fn replace_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.tick("replace_file_atomic")?;
        self.inner.replace_file_atomic(path, bytes).await
    }

    async fn open_mapped(&self, path: &Path) -> io::Result<std::fs::File> {
        self.tick("open_mapped")?;
        self.inner.open_mapped(path).await
    }

    async fn set_mapped_len(
        &self,
        file: &std::fs::File,
        path: &Path,
        len_bytes: u64,
    ) -> io::Result<()> {
        self.tick("set_mapped_len")?;
        self.inner.set_mapped_len(file, path, len_bytes).await
    }
}

impl<F: StoreFile> StoreFile for FaultyFile<F> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let torn = self.tick("append")?;
        self.inner.append(data).await?;
        if torn { Err(crashed()) } else { Ok(()) }
    }

    async fn append_with(
        &mut self,
        len_bytes: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<()> {
        let torn = self.tick("append")?;
        self.inner.append_with(len_bytes, fill).await?;
        if torn { Err(crashed()) } else { Ok(()) }
    }

    async fn read_at(&self, position: u64, len_bytes: usize) -> io::Result<Vec<u8>> {
        self.inner.read_at(position, len_bytes).await
    }

    async fn sync(&mut self) -> io::Result<()> {
        if self.tick("sync")? {
            // Crashed during the fdatasync: nothing more is known to be durable.
            return Err(crashed());
        }
        self.inner.sync().await?;
        self.set_synced(self.inner.len());
        Ok(())
    }

    async fn truncate(&mut self, len_bytes: u64) -> io::Result<()> {
        if self.tick("truncate")? {
            return Err(crashed());
        }
        self.inner.truncate(len_bytes).await?;
        self.set_synced(len_bytes);
        Ok(())
    }

    async fn close(self) -> io::Result<()> {
        self.inner.close().await
    }
}
