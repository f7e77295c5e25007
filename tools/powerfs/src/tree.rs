//! The namespace of the file system: inodes, directory entries, and which of them are durable.
//!
//! Owns: every inode (directories and regular files), the live entries of each directory and
//! the entries that a completed `fsync` of that directory made durable, and the power cut that
//! brings the live tree back to the durable one. Must never answer for the kernel (that is
//! `fs.rs`) and never keep an unsynced byte anywhere but in a [`Content`].
//!
//! The model (strict POSIX, harsher than ext4's journal):
//! - a file's bytes and size are durable once `fsync` or `fdatasync` of it completes;
//! - a directory entry (create, mkdir, unlink, rmdir, rename) is durable once `fsync` of the
//!   directory that holds it completes: a rename is two entries, one per directory;
//! - an inode survives a cut only when a durable entry still reaches it from the root.
//!
//! Invariants: the root (inode 1) exists and is durable; `links` counts live entries naming
//! an inode, `durable_links` durable ones; an inode is dropped (and its backing file removed)
//! only when both are zero and no handle is open.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::content::Content;

pub(crate) const ROOT: u64 = 1;

#[derive(Debug)]
pub(crate) enum Kind {
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
    File(Content),
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) perm: u16,
    pub(crate) mtime: SystemTime,
    /// Live entries naming this inode.
    pub(crate) links: u32,
    /// Durable entries naming this inode.
    durable_links: u32,
    /// Open handles (files and directories).
    pub(crate) open: u32,
}

/// Counters of what the file system did, for reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `write` calls served.
    pub writes: u64,
    /// Bytes written (live, not necessarily durable).
    pub bytes_written: u64,
    /// Completed `fsync`/`fdatasync` of regular files.
    pub file_syncs: u64,
    /// Completed `fsync` of directories.
    pub dir_syncs: u64,
    /// Power cuts.
    pub power_cuts: u64,
    /// Unsynced bytes forgotten by power cuts.
    pub bytes_discarded: u64,
    /// Files whose unsynced size change (extension or truncation) a cut undid.
    pub sizes_reverted: u64,
    /// Directories whose unsynced entries (creations, removals, renames) a cut undid.
    pub dirs_reverted: u64,
    /// Inodes dropped by cuts: created, or reached, only through unsynced entries.
    pub inodes_discarded: u64,
}

/// The whole tree.
#[derive(Debug)]
pub(crate) struct Tree {
    backing: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    pub(crate) stats: Stats,
    /// A size for the whole file system, as a small disk has: no file may grow past it
    /// (`ENOSPC`), and `statfs` reports what is left of it. `None`: the backing
    /// directory's file system is the limit.
    pub(crate) capacity_bytes: Option<u64>,
}

impl Tree {
    /// A new, empty file system whose durable file bytes live under `backing` (which must be
    /// an empty directory: the namespace itself lives only in this process).
    pub(crate) fn new(backing: &Path) -> io::Result<Tree> {
        if std::fs::read_dir(backing)?.next().is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "backing directory {} is not empty: powerfs starts from an empty one",
                    backing.display()
                ),
            ));
        }
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: Kind::Dir {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                perm: 0o755,
                mtime: SystemTime::now(),
                links: 1,
                durable_links: 1,
                open: 0,
            },
        );
        Ok(Tree {
            backing: backing.to_path_buf(),
            nodes,
            next_ino: ROOT + 1,
            stats: Stats::default(),
            capacity_bytes: None,
        })
    }

    pub(crate) fn backing(&self) -> &Path {
        &self.backing
    }

    fn backing_path(&self, ino: u64) -> PathBuf {
        self.backing.join(format!("{ino:016}"))
    }

    pub(crate) fn node(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub(crate) fn node_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub(crate) fn content_mut(&mut self, ino: u64) -> Result<&mut Content, i32> {
        match self.nodes.get_mut(&ino).map(|n| &mut n.kind) {
            Some(Kind::File(content)) => Ok(content),
            Some(Kind::Dir { .. }) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn live_entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, i32> {
        match self.nodes.get(&dir).map(|n| &n.kind) {
            Some(Kind::Dir { live, .. }) => Ok(live),
            Some(Kind::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn live_entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { live, .. }) => Ok(live),
            Some(Kind::File(_)) => Err(libc::ENOTDIR),
            None => Err(libc::ENOENT),
        }
    }

    pub(crate) fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, i32> {
        self.live_entries(dir)?
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// The live entries of `dir`, in name order.
    pub(crate) fn entries(&self, dir: u64) -> Result<Vec<(OsString, u64)>, i32> {
        Ok(self
            .live_entries(dir)?
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect())
    }

    /// Creates a regular file or a directory named `name` in `dir` (a live entry only).
    pub(crate) fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        is_dir: bool,
        perm: u16,
    ) -> Result<u64, i32> {
        if self.live_entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        let kind = if is_dir {
            Kind::Dir {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            }
        } else {
            let path = self.backing_path(ino);
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            Kind::File(Content::open(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?)
        };
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                perm,
                mtime: SystemTime::now(),
                links: 1,
                durable_links: 0,
                open: 0,
            },
        );
        self.live_entries_mut(dir)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// Removes the live entry `name` from `dir`; `want_dir` says rmdir (an empty directory)
    /// or unlink (not a directory).
    pub(crate) fn remove(&mut self, dir: u64, name: &OsStr, want_dir: bool) -> Result<(), i32> {
        let ino = self.lookup(dir, name)?;
        match (&self.nodes[&ino].kind, want_dir) {
            (Kind::Dir { live, .. }, true) if !live.is_empty() => return Err(libc::ENOTEMPTY),
            (Kind::Dir { .. }, false) => return Err(libc::EISDIR),
            (Kind::File(_), true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.live_entries_mut(dir)?.remove(name);
        let node = self.nodes.get_mut(&ino).expect("entry names a node");
        node.links -= 1;
        self.collect(ino);
        Ok(())
    }

    /// Renames a live entry; replaces the target as rename(2) does.
    pub(crate) fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        new_dir: u64,
        new_name: &OsStr,
    ) -> Result<(), i32> {
        let ino = self.lookup(dir, name)?;
        self.live_entries(new_dir)?;
        if let Ok(target) = self.lookup(new_dir, new_name) {
            if target == ino {
                return Ok(());
            }
            let target_is_dir = matches!(self.nodes[&target].kind, Kind::Dir { .. });
            let source_is_dir = matches!(self.nodes[&ino].kind, Kind::Dir { .. });
            match (source_is_dir, target_is_dir) {
                (true, false) => return Err(libc::ENOTDIR),
                (false, true) => return Err(libc::EISDIR),
                _ => {}
            }
            self.remove(new_dir, new_name, target_is_dir)?;
        }
        self.live_entries_mut(dir)?.remove(name);
        self.live_entries_mut(new_dir)?
            .insert(new_name.to_os_string(), ino);
        Ok(())
    }

    /// `fsync` of a directory: its live entries become its durable entries.
    pub(crate) fn sync_dir(&mut self, dir: u64) -> Result<(), i32> {
        let (old, new) = match self.nodes.get_mut(&dir).map(|n| &mut n.kind) {
            Some(Kind::Dir { live, durable }) => {
                let old = std::mem::replace(durable, live.clone());
                (old, live.clone())
            }
            Some(Kind::File(_)) => return Err(libc::ENOTDIR),
            None => return Err(libc::ENOENT),
        };
        for ino in new.values() {
            if let Some(node) = self.nodes.get_mut(ino) {
                node.durable_links += 1;
            }
        }
        for ino in old.values() {
            if let Some(node) = self.nodes.get_mut(ino) {
                node.durable_links -= 1;
            }
            self.collect(*ino);
        }
        self.stats.dir_syncs += 1;
        Ok(())
    }

    /// A handle on `ino` was closed.
    pub(crate) fn release(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
            self.collect(ino);
        }
    }

    /// Drops `ino` when nothing can reach it any more, live or after a cut.
    fn collect(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if ino == ROOT || node.links > 0 || node.durable_links > 0 || node.open > 0 {
            return;
        }
        let node = self.nodes.remove(&ino).expect("checked above");
        match node.kind {
            Kind::File(_) => {
                // The backing file is only this model's storage; a failure to remove it
                // leaks disk space in the backing directory, nothing the mount can see.
                if let Err(err) = std::fs::remove_file(self.backing_path(ino)) {
                    eprintln!("powerfs: removing the backing file of inode {ino}: {err}");
                }
            }
            Kind::Dir { live, durable } => {
                // A removed directory is empty live, but its durable entries still counted.
                for child in durable.values() {
                    if let Some(n) = self.nodes.get_mut(child) {
                        n.durable_links -= 1;
                    }
                    self.collect(*child);
                }
                debug_assert!(live.is_empty(), "a collected directory has no live entries");
            }
        }
    }

    /// The power cut: every directory goes back to its durable entries, every file to its
    /// durable bytes and size, and what no durable entry reaches any more is dropped. No
    /// handle survives (the caller has unmounted the file system).
    pub(crate) fn power_cut(&mut self) {
        self.stats.power_cuts += 1;
        // Reachable from the root through durable entries.
        let mut reachable: HashMap<u64, u32> = HashMap::new();
        reachable.insert(ROOT, 1);
        let mut stack = vec![ROOT];
        let mut steps = 0usize;
        while let Some(dir) = stack.pop() {
            steps += 1;
            assert!(
                steps <= self.nodes.len(),
                "durable tree walk visited {steps} directories of {} inodes: a cycle",
                self.nodes.len()
            );
            if let Some(Kind::Dir { durable, .. }) = self.nodes.get(&dir).map(|n| &n.kind) {
                for child in durable.values() {
                    let count = reachable.entry(*child).or_insert(0);
                    *count += 1;
                    if *count == 1 && matches!(self.nodes[child].kind, Kind::Dir { .. }) {
                        stack.push(*child);
                    }
                }
            }
        }
        let dropped: Vec<u64> = self
            .nodes
            .keys()
            .filter(|ino| !reachable.contains_key(ino))
            .copied()
            .collect();
        for ino in dropped {
            let node = self.nodes.remove(&ino).expect("listed above");
            self.stats.inodes_discarded += 1;
            if let Kind::File(content) = &node.kind {
                self.stats.bytes_discarded += content.dirty_bytes();
            }
            if let Kind::File(_) = node.kind
                && let Err(err) = std::fs::remove_file(self.backing_path(ino))
            {
                eprintln!("powerfs: removing the backing file of inode {ino}: {err}");
            }
        }
        for (ino, node) in &mut self.nodes {
            node.links = reachable[ino];
            node.durable_links = reachable[ino];
            node.open = 0;
            match &mut node.kind {
                Kind::Dir { live, durable } => {
                    if live != durable {
                        self.stats.dirs_reverted += 1;
                        *live = durable.clone();
                    }
                }
                Kind::File(content) => {
                    let lost = content.power_cut();
                    self.stats.bytes_discarded += lost.dirty_bytes;
                    self.stats.sizes_reverted += u64::from(lost.size_changed);
                }
            }
        }
    }

    /// The live size of every file, open unlinked ones included: what the capacity bounds.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.files().map(Content::len).sum()
    }

    /// Every file's content, open unlinked ones included.
    fn files(&self) -> impl Iterator<Item = &Content> {
        self.nodes.values().filter_map(|n| match &n.kind {
            Kind::File(content) => Some(content),
            Kind::Dir { .. } => None,
        })
    }

    /// `Err(ENOSPC)` when growing file `ino` to `end` bytes would take the file system past
    /// its capacity; shrinking, or growing without a capacity, is always fine.
    pub(crate) fn check_room(&self, ino: u64, end: u64) -> Result<(), i32> {
        let Some(capacity) = self.capacity_bytes else {
            return Ok(());
        };
        let len = match self.nodes.get(&ino).map(|n| &n.kind) {
            Some(Kind::File(content)) => content.len(),
            _ => return Ok(()),
        };
        if end <= len || self.used_bytes() + (end - len) <= capacity {
            Ok(())
        } else {
            Err(libc::ENOSPC)
        }
    }

    /// Unsynced bytes held in memory, over every file.
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        self.files().map(Content::dirty_bytes).sum()
    }

    /// Opens a backing file read-only, for tests of the model.
    #[cfg(test)]
    pub(crate) fn backing_file(&self, ino: u64) -> io::Result<std::fs::File> {
        std::fs::File::open(self.backing_path(ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Tree) {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::new(dir.path()).unwrap();
        (dir, tree)
    }

    #[test]
    fn an_entry_survives_only_after_its_directory_is_synced() {
        let (_d, mut t) = tree();
        let a = t.create(ROOT, OsStr::new("a"), false, 0o644).unwrap();
        t.content_mut(a).unwrap().write(0, b"x");
        t.content_mut(a).unwrap().sync().unwrap();
        t.power_cut();
        assert_eq!(t.lookup(ROOT, OsStr::new("a")), Err(libc::ENOENT));
        assert!(t.node(a).is_none());
        assert!(t.backing_file(a).is_err(), "the backing file is removed");

        let b = t.create(ROOT, OsStr::new("b"), false, 0o644).unwrap();
        t.sync_dir(ROOT).unwrap();
        t.content_mut(b).unwrap().write(0, b"y");
        t.power_cut();
        assert_eq!(t.lookup(ROOT, OsStr::new("b")), Ok(b));
        assert_eq!(
            t.content_mut(b).unwrap().len(),
            0,
            "the unsynced byte is gone"
        );
    }

    #[test]
    fn an_unsynced_rename_and_unlink_are_undone() {
        let (_d, mut t) = tree();
        let old = t.create(ROOT, OsStr::new("f"), false, 0o644).unwrap();
        t.content_mut(old).unwrap().write(0, b"old");
        t.content_mut(old).unwrap().sync().unwrap();
        let tmp = t.create(ROOT, OsStr::new("f.tmp"), false, 0o644).unwrap();
        t.content_mut(tmp).unwrap().write(0, b"new");
        t.content_mut(tmp).unwrap().sync().unwrap();
        t.sync_dir(ROOT).unwrap();
        t.rename(ROOT, OsStr::new("f.tmp"), ROOT, OsStr::new("f"))
            .unwrap();
        assert_eq!(t.lookup(ROOT, OsStr::new("f")), Ok(tmp));
        t.power_cut();
        assert_eq!(t.lookup(ROOT, OsStr::new("f")), Ok(old));
        assert_eq!(t.lookup(ROOT, OsStr::new("f.tmp")), Ok(tmp));

        t.rename(ROOT, OsStr::new("f.tmp"), ROOT, OsStr::new("f"))
            .unwrap();
        t.sync_dir(ROOT).unwrap();
        assert!(t.node(old).is_none(), "the replaced file is collected");
        t.remove(ROOT, OsStr::new("f"), false).unwrap();
        t.power_cut();
        let f = t.lookup(ROOT, OsStr::new("f")).unwrap();
        assert_eq!(f, tmp);
        assert_eq!(t.content_mut(f).unwrap().read(0, 10).unwrap(), b"new");
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced_and_its_own_entries_need_it_synced() {
        let (_d, mut t) = tree();
        let sub = t.create(ROOT, OsStr::new("sub"), true, 0o755).unwrap();
        let f = t.create(sub, OsStr::new("f"), false, 0o644).unwrap();
        t.sync_dir(sub).unwrap();
        t.power_cut();
        assert!(t.node(sub).is_none() && t.node(f).is_none());
        assert_eq!(t.stats.inodes_discarded, 2);

        let sub = t.create(ROOT, OsStr::new("sub"), true, 0o755).unwrap();
        t.create(sub, OsStr::new("f"), false, 0o644).unwrap();
        t.sync_dir(ROOT).unwrap();
        t.power_cut();
        assert_eq!(t.lookup(ROOT, OsStr::new("sub")), Ok(sub));
        assert_eq!(t.entries(sub).unwrap(), vec![]);
    }
}
