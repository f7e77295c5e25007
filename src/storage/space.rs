//! Free space on the file system that holds the data: the floor below which new data is
//! refused, and what counts as "the disk is full".
//!
//! Owns: [`DiskSpace`], one shard's view of the free bytes under the data dir (a `statvfs`
//! sample, lowered by what the shard wrote since), the floor check that refuses an append
//! *before* any byte is written ([`Error::DiskFull`]), and [`is_out_of_space`], which tells a
//! full disk (`ENOSPC`, `EDQUOT`, a short write) from other I/O failures.
//!
//! Must never: issue a syscall per append. The file system is asked at most once per
//! `check_interval_ms`, or at the next check after the shard freed space (a deleted segment);
//! in between, each check subtracts the bytes this shard wrote from the last sample. Other
//! shards' writes are not subtracted: the floor is a reserve, not an exact budget, and a write
//! that still meets `ENOSPC` is cut back cleanly by the log (see `log`).
//!
//! Two thresholds: client appends are refused once they would take free space below the
//! floor ([`DiskSpace::check_append`]); replication and the log's own entries (a follower's
//! copies, Raft's blank and truncate entries) only below half of it
//! ([`DiskSpace::check_replica`]), so that the reserve lets followers keep up with what their
//! leader accepted and lets a `Truncate` reach every replica on a nearly full disk.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::limits::{InvalidLimit, LimitName, check_range};

/// Largest floor accepted: far above any sane reserve, low enough to catch a unit mistake.
pub const DISK_FREE_BYTES_MIN_MAX: u64 = 1 << 40;
/// Longest time between two looks at the file system.
pub const DISK_CHECK_INTERVAL_MS_MAX: u64 = 60_000;

/// The floor and how often it is checked. Defaults and the one validation live here; the
/// config file's `storage.disk_free_bytes_min` and `storage.disk_check_interval_ms` map
/// onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceLimits {
    /// Client appends are refused once free space would fall below this; 0 = no floor.
    pub disk_free_bytes_min: u64,
    /// Free space is read from the file system at most this often per shard.
    pub disk_check_interval_ms: u64,
}

impl Default for SpaceLimits {
    /// A 1 GiB floor (Redpanda keeps an absolute floor too, `storage_min_free_bytes`): room
    /// for a few default-sized batches on every shard, for the replication that follows the
    /// last accepted appends, and for the metadata a `Truncate` or `DeleteTopic` writes.
    /// Checked every second.
    fn default() -> Self {
        SpaceLimits {
            disk_free_bytes_min: 1 << 30,
            disk_check_interval_ms: 1_000,
        }
    }
}

impl SpaceLimits {
    /// Checks both values; `key(field)` names them in the error.
    pub fn validate_as(&self, key: LimitName<'_>) -> Result<(), InvalidLimit> {
        check_range(
            key("disk_free_bytes_min"),
            self.disk_free_bytes_min,
            0,
            DISK_FREE_BYTES_MIN_MAX,
            " bytes (0 = no floor)",
        )?;
        check_range(
            key("disk_check_interval_ms"),
            self.disk_check_interval_ms,
            1,
            DISK_CHECK_INTERVAL_MS_MAX,
            " ms",
        )
    }
}

/// True when `e` says the file system is out of space (or the user out of quota): the write
/// can be cut back and retried once space returns. A short write counts too: a write that
/// stops part-way is what a file system does when it fills up mid-write.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::WriteZero
        )
}

/// Free bytes for unprivileged writers (`f_bavail`, what `df` shows) on the file system that
/// holds `dir`, or `None` when that file system reports no size at all (some virtual and FUSE
/// file systems answer `statfs` with zeros).
pub fn free_bytes(dir: &Path) -> io::Result<Option<u64>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer statvfs fills on success.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    if stat.f_blocks == 0 {
        return Ok(None);
    }
    // `fsblkcnt_t` and `c_ulong` are narrower than u64 on some targets.
    #[allow(clippy::unnecessary_cast)]
    let (blocks, block_bytes) = (stat.f_bavail as u64, stat.f_frsize as u64);
    Ok(Some(blocks.saturating_mul(block_bytes)))
}

/// How a [`DiskSpace`] reads the free bytes under a directory.
type Probe = dyn Fn(&Path) -> io::Result<Option<u64>>;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// `None`: the file system does not say (no floor can be kept there).
    free_bytes: Option<u64>,
}

/// One shard's view of the free space under the data dir. Single-owner (`Cell`s, no lock):
/// each shard keeps its own.
pub struct DiskSpace {
    dir: PathBuf,
    limits: SpaceLimits,
    /// Reads the free bytes: [`free_bytes`], or a test's stand-in.
    probe: Box<Probe>,
    sample: Cell<Option<Sample>>,
    /// Bytes this shard wrote since the sample.
    written_bytes: Cell<u64>,
    /// A warning about an unreadable free space was logged (once per shard).
    warned: Cell<bool>,
}

impl DiskSpace {
    pub fn new(dir: impl Into<PathBuf>, limits: SpaceLimits) -> DiskSpace {
        Self::with_probe(dir, limits, free_bytes)
    }

    /// [`DiskSpace::new`] reading the free bytes with `probe` instead of `statvfs`.
    pub fn with_probe(
        dir: impl Into<PathBuf>,
        limits: SpaceLimits,
        probe: impl Fn(&Path) -> io::Result<Option<u64>> + 'static,
    ) -> DiskSpace {
        DiskSpace {
            dir: dir.into(),
            limits,
            probe: Box::new(probe),
            sample: Cell::new(None),
            written_bytes: Cell::new(0),
            warned: Cell::new(false),
        }
    }

    pub fn limits(&self) -> SpaceLimits {
        self.limits
    }

    /// Refuses a client append of `bytes` that would take free space below the floor; on
    /// success the bytes count as written. Nothing is written either way.
    pub fn check_append(&self, bytes: u64) -> Result<()> {
        self.check(bytes, self.limits.disk_free_bytes_min)
    }

    /// Refuses `bytes` of replicated or internal entries only below half the floor (see the
    /// module docs); on success the bytes count as written.
    pub fn check_replica(&self, bytes: u64) -> Result<()> {
        self.check(bytes, self.limits.disk_free_bytes_min / 2)
    }

    /// The shard freed space (deleted a segment or a topic): the next check reads the file
    /// system again instead of trusting the old sample.
    pub fn freed(&self) {
        self.sample.set(None);
    }

    /// The free bytes as last estimated (sampled minus written since), without a syscall;
    /// `None` before the first sample or where the file system does not say.
    pub fn estimated_free_bytes(&self) -> Option<u64> {
        let sample = self.sample.get()?;
        Some(sample.free_bytes?.saturating_sub(self.written_bytes.get()))
    }

    fn check(&self, bytes: u64, floor_bytes: u64) -> Result<()> {
        if self.limits.disk_free_bytes_min == 0 {
            return Ok(());
        }
        let interval = Duration::from_millis(self.limits.disk_check_interval_ms);
        let now = Instant::now();
        let fresh = self
            .sample
            .get()
            .filter(|s| now.duration_since(s.at) < interval);
        let sample = match fresh {
            Some(sample) => sample,
            None => self.resample(now),
        };
        let Some(sampled) = sample.free_bytes else {
            return Ok(());
        };
        let free_bytes = sampled.saturating_sub(self.written_bytes.get());
        if free_bytes < floor_bytes.saturating_add(bytes) {
            return Err(Error::DiskFull {
                dir: self.dir.clone(),
                free_bytes,
                floor_bytes: self.limits.disk_free_bytes_min,
            });
        }
        self.written_bytes.set(self.written_bytes.get() + bytes);
        Ok(())
    }

    fn resample(&self, now: Instant) -> Sample {
        let free_bytes = match (self.probe)(&self.dir) {
            Ok(free) => {
                if free.is_none() && !self.warned.replace(true) {
                    tracing::warn!(dir = %self.dir.display(), "the file system reports no size; storage.disk_free_bytes_min cannot be kept here");
                }
                free
            }
            Err(e) => {
                if !self.warned.replace(true) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "reading free disk space; storage.disk_free_bytes_min is not kept until it reads");
                }
                None
            }
        };
        let sample = Sample {
            at: now,
            free_bytes,
        };
        self.sample.set(Some(sample));
        self.written_bytes.set(0);
        sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(floor: u64) -> SpaceLimits {
        SpaceLimits {
            disk_free_bytes_min: floor,
            disk_check_interval_ms: 60_000,
        }
    }

    #[test]
    fn defaults_validate_and_bounds_are_checked() {
        SpaceLimits::default()
            .validate_as(&|f| f.to_owned())
            .unwrap();
        let key = |l: SpaceLimits| l.validate_as(&|f| f.to_owned()).unwrap_err().key;
        let no_interval = SpaceLimits {
            disk_check_interval_ms: 0,
            ..SpaceLimits::default()
        };
        assert_eq!(key(no_interval), "disk_check_interval_ms");
        let huge_floor = SpaceLimits {
            disk_free_bytes_min: DISK_FREE_BYTES_MIN_MAX + 1,
            ..SpaceLimits::default()
        };
        assert_eq!(key(huge_floor), "disk_free_bytes_min");
    }

    #[test]
    fn the_floor_refuses_before_writing_and_counts_what_was_written() {
        let free = std::rc::Rc::new(Cell::new(10 << 20));
        let probes = std::rc::Rc::new(Cell::new(0));
        let (f, p) = (free.clone(), probes.clone());
        let space = DiskSpace::with_probe("/data", limits(8 << 20), move |_| {
            p.set(p.get() + 1);
            Ok(Some(f.get()))
        });
        // 2 MiB above the floor: one 1.5 MiB append fits, a second does not, counted from
        // the first without asking the file system again.
        space.check_append(3 << 19).unwrap();
        let refused = space.check_append(3 << 19).unwrap_err();
        assert!(
            matches!(refused, Error::DiskFull { free_bytes, floor_bytes: 8388608, .. } if free_bytes == (10 << 20) - (3 << 19)),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("disk_free_bytes_min"),
            "{refused}"
        );
        assert_eq!(probes.get(), 1, "one statvfs for both checks");
        // Replication still has half the floor to go.
        space.check_replica(3 << 19).unwrap();
        // Space freed elsewhere shows only at the next sample; freeing here asks at once.
        free.set(100 << 20);
        assert!(space.check_append(3 << 19).is_err());
        space.freed();
        space.check_append(3 << 19).unwrap();
        assert_eq!(probes.get(), 2);
        // No floor never asks; a file system without a size is not refused.
        let never = DiskSpace::with_probe("/data", limits(0), |_| panic!("not asked"));
        never.check_append(u64::MAX / 2).unwrap();
        let unknown = DiskSpace::with_probe("/data", limits(8 << 20), |_| Ok(None));
        unknown.check_append(1 << 30).unwrap();
    }

    #[test]
    fn statvfs_reads_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap().is_some());
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn out_of_space_is_told_from_other_failures() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_out_of_space(&io::Error::other("poisoned")));
    }
}
