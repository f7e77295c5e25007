//! A small, size-limited file system for the full-disk tests (`tests/full_disk.rs`, and the
//! full follower of `tests/cluster.rs`): a loop-mounted 32 MiB ext4 image, or a 24 MiB tmpfs
//! where loop devices are missing. Needs root; unmounted however the test ends.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small file system mounted for one test; unmounted (lazily if busy) on drop.
pub struct SmallMount {
    _dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    pub kind: &'static str,
}

impl SmallMount {
    /// A 32 MiB ext4 image (no blocks reserved for root, so root meets ENOSPC like anyone)
    /// on a loop device, or failing that a 24 MiB tmpfs. `Err` says why neither mounted.
    pub fn new() -> Result<SmallMount, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: mounting a small file system needs root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let image = dir.path().join("disk.img");
        let ext4 = (|| -> Result<(), String> {
            let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
            file.set_len(32 << 20).map_err(|e| e.to_string())?;
            run("mkfs.ext4", &["-q", "-F", "-m", "0", path(&image)])?;
            run("mount", &["-o", "loop", path(&image), path(&mountpoint)])
        })();
        let kind = match ext4 {
            Ok(()) => "ext4 on a loop device",
            Err(ext4_err) => {
                run(
                    "mount",
                    &["-t", "tmpfs", "-o", "size=24m", "tmpfs", path(&mountpoint)],
                )
                .map_err(|tmpfs_err| format!("ext4: {ext4_err}; tmpfs: {tmpfs_err}"))?;
                "tmpfs"
            }
        };
        Ok(SmallMount {
            _dir: dir,
            mountpoint,
            kind,
        })
    }
}

impl Drop for SmallMount {
    fn drop(&mut self) {
        let mnt = path(&self.mountpoint);
        if run("umount", &[mnt]).is_err() {
            // Still busy (a server that panicked mid-test): detach it now, freed when idle.
            if let Err(e) = run("umount", &["-l", mnt]) {
                eprintln!("could not unmount {mnt}: {e}");
            }
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
