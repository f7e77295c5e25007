//! Std-file helpers shared by every engine whose files are plain files on disk.
//!
//! Owns: the blocking std calls behind directory syncs, listings, stats, small-file reads and
//! atomic replaces, so that no engine (and never the generic log) reaches into another
//! engine's module for them.
//! Must never: be called by the log or a segment directly: they go through an [`Engine`]
//! (so the fault-injecting engine sees every write). Engines call these.
//!
//! [`Engine`]: super::io::Engine

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::io::FileStat;

/// Makes a directory entry durable: a created, renamed or removed file survives a crash only
/// once its directory is synced.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `stat` of a plain file.
pub fn stat_file(path: &Path) -> io::Result<FileStat> {
    let meta = std::fs::metadata(path)?;
    let modified_ms = match meta.modified()?.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    };
    Ok(FileStat {
        size_bytes: meta.len(),
        modified_ms,
    })
}

/// The file names (not paths) in `dir`, unsorted.
pub fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(PathBuf::from(entry?.file_name()));
    }
    Ok(names)
}

/// Creates `dir` and its missing parents, then syncs the parent of every directory it made, so
/// that the new entries survive a crash.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at.to_owned());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for made in missing.iter().rev() {
        sync_dir(parent(made))?;
    }
    Ok(())
}

/// Removes `path` when it exists and syncs its directory; `Ok(false)` when there was none.
pub fn remove_if_exists(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The whole contents of a small file, or `None` when it does not exist.
pub fn read_small_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The temp file beside `path` that [`replace_file_atomic`] writes first: `<name>.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically: writes [`tmp_path`], fsyncs it, renames it over
/// `path` and fsyncs the directory. A crash leaves the old contents or the new, never a mix
/// (a stale temp file may remain; the owner removes it on open).
pub fn replace_file_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

/// Opens (creating when missing) a file that is to be memory-mapped; a creation is made
/// durable (directory sync).
pub fn open_mapped(path: &Path) -> io::Result<File> {
    let existed = path.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if !existed {
        sync_dir(parent(path))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_atomic_and_helpers_report_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        assert_eq!(read_small_file(&path).unwrap(), None);
        replace_file_atomic(&path, b"one").unwrap();
        replace_file_atomic(&path, b"two").unwrap();
        assert_eq!(
            read_small_file(&path).unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert!(!tmp_path(&path).exists());
        assert!(remove_if_exists(&path).unwrap());
        assert!(!remove_if_exists(&path).unwrap());
        let deep = dir.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
    }
}
