//! The FUSE side: kernel requests mapped onto the [`Tree`].
//!
//! Owns: the translation of FUSE operations and their errors. Must never keep state of its
//! own (everything is in the shared [`Tree`], so that a remount after a power cut sees the
//! same inodes) and never hold the tree's lock across a reply that could block.
//!
//! Not modelled: hard links, symbolic links, device nodes, extended attributes, file locks
//! (refused with `EPERM`/`ENOSYS`); times and permissions are kept but not made durable;
//! `fallocate` supports plain allocation, `FALLOC_FL_KEEP_SIZE` and punching holes only.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::tree::{Kind, Node, Tree};

/// How long the kernel may cache names and attributes. Every change goes through this mount,
/// and a power cut remounts (dropping the kernel's caches), so caching is safe.
const TTL: Duration = Duration::from_secs(1);
const BLOCK_BYTES: u32 = 4096;

pub(crate) struct PowerFs {
    pub(crate) tree: Arc<Mutex<Tree>>,
}

fn lock(tree: &Mutex<Tree>) -> MutexGuard<'_, Tree> {
    // A panic in one request handler must not wedge every later request: the tree's own
    // invariants are checked by assertions that would have fired first.
    tree.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn io_errno(err: std::io::Error) -> Errno {
    Errno::from_i32(err.raw_os_error().unwrap_or(libc::EIO))
}

fn attr(ino: u64, node: &Node) -> FileAttr {
    let (kind, size) = match &node.kind {
        Kind::Dir { .. } => (FileType::Directory, 0),
        Kind::File(content) => (FileType::RegularFile, content.len()),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.mtime,
        mtime: node.mtime,
        ctime: node.mtime,
        crtime: node.mtime,
        kind,
        perm: node.perm,
        nlink: node.links.max(1),
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_BYTES,
        flags: 0,
    }
}

fn attr_of(tree: &Tree, ino: u64) -> Result<FileAttr, Errno> {
    tree.node(ino).map(|n| attr(ino, n)).ok_or(Errno::ENOENT)
}

impl PowerFs {
    /// Makes a directory or regular file and answers with its attributes (mkdir, mknod).
    fn reply_new_entry(
        &self,
        parent: u64,
        name: &OsStr,
        is_dir: bool,
        mode: u32,
        reply: ReplyEntry,
    ) {
        match self
            .new_entry(parent, name, is_dir, mode)
            .and_then(|ino| attr_of(&lock(&self.tree), ino))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn new_entry(&self, parent: u64, name: &OsStr, is_dir: bool, mode: u32) -> Result<u64, Errno> {
        let mut tree = lock(&self.tree);
        tree.create(parent, name, is_dir, (mode & 0o7777) as u16)
            .map_err(errno)
    }
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let tree = lock(&self.tree);
        match tree
            .lookup(parent.0, name)
            .map_err(errno)
            .and_then(|ino| attr_of(&tree, ino))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr_of(&lock(&self.tree), ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = lock(&self.tree);
        if let Some(size) = size {
            if let Err(e) = tree.check_room(ino.0, size) {
                return reply.error(errno(e));
            }
            match tree.content_mut(ino.0) {
                Ok(content) => content.set_len(size),
                Err(e) => return reply.error(errno(e)),
            }
        }
        let Some(node) = tree.node_mut(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(mode) = mode {
            node.perm = (mode & 0o7777) as u16;
        }
        if size.is_some() || mtime.is_some() {
            node.mtime = match mtime {
                Some(TimeOrNow::SpecificTime(t)) => t,
                _ => SystemTime::now(),
            };
        }
        reply.attr(&TTL, &attr(ino.0, node));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.reply_new_entry(parent.0, name, true, mode, reply);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        self.reply_new_entry(parent.0, name, false, mode, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let ino = match self.new_entry(parent.0, name, false, mode) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        let mut tree = lock(&self.tree);
        let node = tree.node_mut(ino).expect("just created");
        node.open += 1;
        let a = attr(ino, node);
        reply.created(
            &TTL,
            &a,
            Generation(0),
            FileHandle(ino),
            FopenFlags::empty(),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.tree).remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.tree).remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut tree = lock(&self.tree);
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE)
            && tree.lookup(newparent.0, newname).is_ok()
        {
            return reply.error(Errno::EEXIST);
        }
        match tree.rename(parent.0, name, newparent.0, newname) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = lock(&self.tree);
        if flags.0 & libc::O_TRUNC != 0 {
            match tree.content_mut(ino.0) {
                Ok(content) => content.set_len(0),
                Err(e) => return reply.error(errno(e)),
            }
        }
        match tree.node_mut(ino.0) {
            Some(node) => {
                node.open += 1;
                reply.opened(FileHandle(ino.0), FopenFlags::empty());
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn opendir(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.open(req, ino, flags, reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut tree = lock(&self.tree);
        match tree.content_mut(ino.0).map_err(errno) {
            Ok(content) => match content.read(offset, size) {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(io_errno(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut tree = lock(&self.tree);
        if let Err(e) = tree.check_room(ino.0, offset + data.len() as u64) {
            return reply.error(errno(e));
        }
        match tree.content_mut(ino.0) {
            Ok(content) => content.write(offset, data),
            Err(e) => return reply.error(errno(e)),
        }
        tree.stats.writes += 1;
        tree.stats.bytes_written += data.len() as u64;
        if let Some(node) = tree.node_mut(ino.0) {
            node.mtime = SystemTime::now();
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.tree).release(ino.0);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.tree).release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fdatasync and fsync are the same here: both make the bytes and the size durable
        // (fdatasync must cover a size change that reading the data needs); times are not
        // modelled.
        let mut tree = lock(&self.tree);
        let result = match tree.content_mut(ino.0) {
            Ok(content) => content.sync().map_err(io_errno),
            Err(e) => Err(errno(e)),
        };
        match result {
            Ok(()) => {
                tree.stats.file_syncs += 1;
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match lock(&self.tree).sync_dir(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = lock(&self.tree);
        let entries = match tree.entries(ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(e)),
        };
        // Each entry's cookie (the offset the kernel resumes after) is stable while the
        // directory changes: 1 and 2 for "." and "..", the child's inode number + 2 for the
        // others, listed in inode order. A position in the current listing would not be: an
        // entry removed between two calls would shift the rest, and a listing that removes
        // as it goes (`rm -r`) would miss entries and fail with ENOTEMPTY.
        let mut all = vec![
            (
                OsStr::new(".").to_os_string(),
                ino.0,
                FileType::Directory,
                1,
            ),
            (
                OsStr::new("..").to_os_string(),
                ino.0,
                FileType::Directory,
                2,
            ),
        ];
        let mut children = Vec::with_capacity(entries.len());
        for (name, child) in entries {
            let kind = match tree.node(child).map(|n| &n.kind) {
                Some(Kind::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            children.push((name, child, kind, child + 2));
        }
        children.sort_by_key(|entry| entry.3);
        all.extend(children);
        for (name, child, kind, cookie) in all.into_iter().filter(|e| e.3 > offset) {
            if reply.add(INodeNo(child), cookie, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The backing directory's file system: free space there is free space here (minus
        // the unsynced bytes this process holds, which are small next to it).
        let tree = lock(&self.tree);
        if let Some(capacity) = tree.capacity_bytes {
            // A small disk: its size, and what the files leave of it.
            let blocks = capacity / u64::from(BLOCK_BYTES);
            let free = capacity.saturating_sub(tree.used_bytes()) / u64::from(BLOCK_BYTES);
            let files = 1 << 20;
            return reply.statfs(
                blocks,
                free,
                free,
                files,
                files,
                BLOCK_BYTES,
                255,
                BLOCK_BYTES,
            );
        }
        let path = std::ffi::CString::new(tree.backing().as_os_str().as_encoded_bytes())
            .expect("a path has no NUL");
        drop(tree);
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a valid out-pointer for the call.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return reply.error(io_errno(std::io::Error::last_os_error()));
        }
        let frsize = st.f_frsize.max(1);
        let scale = |blocks: libc::fsblkcnt_t| blocks * frsize / u64::from(BLOCK_BYTES);
        reply.statfs(
            scale(st.f_blocks),
            scale(st.f_bfree),
            scale(st.f_bavail),
            st.f_files,
            st.f_ffree,
            BLOCK_BYTES,
            255,
            BLOCK_BYTES,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut tree = lock(&self.tree);
        if mode == 0
            && let Err(e) = tree.check_room(ino.0, offset + length)
        {
            return reply.error(errno(e));
        }
        let content = match tree.content_mut(ino.0) {
            Ok(content) => content,
            Err(e) => return reply.error(errno(e)),
        };
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match mode {
            0 => {
                if offset + length > content.len() {
                    content.set_len(offset + length);
                }
            }
            libc::FALLOC_FL_KEEP_SIZE => {}
            m if m == punch => content.zero_range(offset, length),
            _ => return reply.error(Errno::EOPNOTSUPP),
        }
        reply.ok();
    }
}
