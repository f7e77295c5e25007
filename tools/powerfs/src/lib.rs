//! powerfs: a FUSE file system that loses power on demand (wal.rs test tooling, issue 15).
//!
//! It serves a directory tree whose file bytes pass through to a backing directory only when
//! they are made durable: every byte written but not yet covered by a completed `fsync` or
//! `fdatasync` of its file is held in this process's memory, and every directory entry not
//! yet covered by a completed `fsync` of its directory is held in memory too. A power cut
//! ([`Mount::power_cut`], or `SIGUSR1` to the `powerfs` binary) unmounts the file system —
//! which also drops the kernel's page cache for it — forgets all of that, and mounts the
//! durable state again at the same place. This is LazyFS's idea, in Rust on `fuser`, with
//! no libfuse (as root it mounts with mount(2); otherwise through `fusermount3`).
//!
//! What a cut models (strict POSIX, harsher than ext4's `data=ordered` journal):
//! - file bytes and file size (writes, extensions, truncations, `fallocate`) survive only if
//!   an `fsync`/`fdatasync` of that file completed after them;
//! - creations, removals and renames survive only if an `fsync` of the directory holding
//!   the entry completed after them (a rename across directories needs both synced);
//! - a file reached only through an unsynced entry is gone, whatever was synced into it.
//!
//! What it does not model: torn or reordered writes within what was synced (a sync is
//! atomic here), bytes that the disk wrote before a sync was asked for (unsynced bytes are
//! always lost, the worst case), times, permissions and ownership (kept, never reverted),
//! hard and symbolic links, xattrs, locks; the namespace lives only as long as the process
//! that mounted it (the backing directory holds the durable file bytes, one file per inode).
//!
//! Must never: let an unsynced byte reach the backing directory, or serve a byte the live
//! file does not hold.

mod content;
mod fs;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use content::Discarded;
pub use tree::Stats;

/// A mounted powerfs. Dropping it unmounts.
pub struct Mount {
    tree: Arc<Mutex<tree::Tree>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

fn config() -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("powerfs".to_string()),
        fuser::MountOption::Subtype("powerfs".to_string()),
    ];
    // Another user (say, a server started under sudo -u) may use the mount too.
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(2);
    config
}

fn spawn(tree: &Arc<Mutex<tree::Tree>>, mountpoint: &Path) -> io::Result<fuser::BackgroundSession> {
    let fs = fs::PowerFs { tree: tree.clone() };
    fuser::spawn_mount(fs, mountpoint, &config())
}

impl Mount {
    /// Mounts a new, empty powerfs at `mountpoint`, keeping durable file bytes in `backing`
    /// (an existing empty directory, not under the mount point).
    pub fn new(backing: &Path, mountpoint: &Path) -> io::Result<Mount> {
        let tree = Arc::new(Mutex::new(tree::Tree::new(backing)?));
        let session = spawn(&tree, mountpoint)?;
        Ok(Mount {
            tree,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Counters since the mount.
    pub fn stats(&self) -> Stats {
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).stats
    }

    /// Makes the file system a disk of `capacity_bytes` (`None`: the backing directory's
    /// file system is the limit again). A write, extension or `fallocate` that would take
    /// the files' total live size past it fails with `ENOSPC` and changes nothing, and
    /// `statfs` reports the capacity and what is left of it: a full disk, made and
    /// taken away while processes use it. Files already past it stay as they are.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capacity_bytes = capacity_bytes;
    }

    /// The live size of every file now (what [`Mount::set_capacity`] bounds).
    pub fn used_bytes(&self) -> u64 {
        self.tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .used_bytes()
    }

    /// Bytes written and not yet synced, held in memory now.
    pub fn unsynced_bytes(&self) -> u64 {
        self.tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unsynced_bytes()
    }

    /// Cuts the power: unmounts (failing with `EBUSY`, and changing nothing, while a process
    /// still has a file open here: kill -9 the processes that use the mount first, and wait
    /// for them to exit), forgets every unsynced byte and entry, and mounts the durable state
    /// again. Returns the counters after the cut.
    pub fn power_cut(&mut self) -> io::Result<Stats> {
        self.unmount_session()?;
        let stats = {
            let mut tree = self.tree.lock().unwrap_or_else(|p| p.into_inner());
            tree.power_cut();
            tree.stats
        };
        self.session = Some(spawn(&self.tree, &self.mountpoint)?);
        Ok(stats)
    }

    /// [`Mount::power_cut`], retried while the mount is busy, for at most `patience`. A
    /// process killed with SIGKILL has exited before the kernel is done with its files: an
    /// io_uring instance, for one, is torn down by a kernel worker after the exit, and keeps
    /// its files open (the mount busy) until then.
    pub fn power_cut_within(&mut self, patience: std::time::Duration) -> io::Result<Stats> {
        let until = std::time::Instant::now() + patience;
        loop {
            match self.power_cut() {
                Err(err)
                    if err.kind() == io::ErrorKind::ResourceBusy
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => return other,
            }
        }
    }

    /// Unmounts, reporting a failure (a busy mount) instead of only logging it.
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_session()
    }

    /// umount(2) of the mount point, then the end of the serving thread (it ends when the
    /// kernel closes the connection). On failure the file system stays mounted and served.
    fn unmount_session(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a valid C string for the duration of the call.
        if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
            let err = io::Error::last_os_error();
            self.session = Some(session);
            return Err(io::Error::new(
                err.kind(),
                format!("unmounting {}: {err}", self.mountpoint.display()),
            ));
        }
        // Unmounted. The serving thread ends with ENODEV, or with ECONNABORTED when the kernel
        // aborted requests still pending at the unmount (seen once in 435 power cuts of an
        // io_uring server: its ring's last requests, after the process died): either way
        // nothing is served any more, and every handler that ran has finished.
        match session.join() {
            Err(err) if err.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
            other => other,
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount_session() {
            eprintln!("powerfs: {err}");
        }
    }
}
