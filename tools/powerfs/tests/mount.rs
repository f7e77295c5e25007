//! powerfs mounted for real: what a power cut keeps and what it forgets, through the kernel.
//! Needs /dev/fuse and root (or fusermount3), as CI has.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

struct Fixture {
    _dir: tempfile::TempDir,
    mount: powerfs::Mount,
}

fn mounted() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mount = powerfs::Mount::new(&backing, &mnt).expect("mounting powerfs (needs /dev/fuse)");
    Fixture { _dir: dir, mount }
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn read(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn synced_bytes_survive_a_cut_and_unsynced_ones_vanish() {
    let mut fx = mounted();
    let root = fx.mount.mountpoint().to_path_buf();
    let path = root.join("log");
    let mut f = File::create(&path).unwrap();
    f.write_all(b"acknowledged;").unwrap();
    f.sync_data().unwrap();
    sync_dir(&root);
    f.write_all(b"not yet synced").unwrap();
    assert_eq!(read(&path), b"acknowledged;not yet synced");
    assert_eq!(fx.mount.unsynced_bytes(), 14);
    drop(f);

    let stats = fx.mount.power_cut().unwrap();
    assert_eq!(read(&path), b"acknowledged;");
    assert_eq!(stats.bytes_discarded, 14);
    assert_eq!(stats.power_cuts, 1);
    assert_eq!(fx.mount.unsynced_bytes(), 0);
}

#[test]
fn unsynced_creations_renames_and_truncations_are_undone() {
    let mut fx = mounted();
    let root = fx.mount.mountpoint().to_path_buf();
    fs::create_dir(root.join("p")).unwrap();
    sync_dir(&root);
    let p = root.join("p");
    fs::write(p.join("kept"), b"0123456789").unwrap();
    File::open(p.join("kept")).unwrap().sync_all().unwrap();
    sync_dir(&p);

    // Created and synced, but its directory was never synced.
    fs::write(p.join("orphan"), b"data").unwrap();
    File::open(p.join("orphan")).unwrap().sync_all().unwrap();
    // Renamed without a directory sync.
    fs::rename(p.join("kept"), p.join("moved")).unwrap();
    // Truncated without a file sync.
    OpenOptions::new()
        .write(true)
        .open(p.join("moved"))
        .unwrap()
        .set_len(3)
        .unwrap();
    // A new directory under an unsynced parent entry.
    fs::create_dir(root.join("q")).unwrap();

    fx.mount.power_cut().unwrap();
    let mut names: Vec<String> = fs::read_dir(&p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["kept"]);
    assert_eq!(read(&p.join("kept")), b"0123456789");
    assert!(!root.join("q").exists());
    let stats = fx.mount.stats();
    assert!(stats.inodes_discarded >= 2, "{stats:?}");
    assert_eq!(stats.sizes_reverted, 1, "{stats:?}");
}

#[test]
fn an_atomic_replace_survives_once_the_directory_is_synced() {
    let mut fx = mounted();
    let root = fx.mount.mountpoint().to_path_buf();
    fs::write(root.join("state"), b"v1").unwrap();
    File::open(root.join("state")).unwrap().sync_all().unwrap();
    sync_dir(&root);
    fs::write(root.join("state.tmp"), b"v2").unwrap();
    File::open(root.join("state.tmp"))
        .unwrap()
        .sync_all()
        .unwrap();
    sync_dir(&root);
    fs::rename(root.join("state.tmp"), root.join("state")).unwrap();
    fx.mount.power_cut().unwrap();
    assert_eq!(read(&root.join("state")), b"v1", "rename not durable yet");

    fs::rename(root.join("state.tmp"), root.join("state")).unwrap();
    sync_dir(&root);
    fx.mount.power_cut().unwrap();
    assert_eq!(read(&root.join("state")), b"v2");
    assert!(!root.join("state.tmp").exists());
}

#[test]
fn a_cut_fails_while_a_file_is_open_and_forgets_nothing() {
    let mut fx = mounted();
    let root = fx.mount.mountpoint().to_path_buf();
    let f = File::create(root.join("busy")).unwrap();
    f.write_all_at(b"x", 0).unwrap();
    let err = fx.mount.power_cut().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
    assert_eq!(read(&root.join("busy")), b"x");
    drop(f);
    fx.mount.power_cut().unwrap();
    assert!(!root.join("busy").exists());
}

/// O_DIRECT is accepted on the mount: aligned writes and reads go straight to powerfs, and
/// the model still forgets what was not synced.
#[test]
fn o_direct_works_and_obeys_the_model() {
    let mut fx = mounted();
    let root = fx.mount.mountpoint().to_path_buf();
    let path = root.join("direct");
    fs::write(&path, b"").unwrap();
    sync_dir(&root);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("O_DIRECT open on powerfs");
    let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
    // SAFETY: a non-zero layout; freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: `ptr` holds 8192 initialised bytes, exclusively ours.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 8192) };
    buf[..4096].fill(b'a');
    buf[4096..].fill(b'b');
    f.write_all_at(&buf[..4096], 0).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(&buf[4096..], 4096).unwrap();
    buf.fill(0);
    f.read_exact_at(buf, 0).unwrap();
    assert!(buf[..4096].iter().all(|b| *b == b'a') && buf[4096..].iter().all(|b| *b == b'b'));
    // SAFETY: allocated above with `layout`; `buf` is not used after this.
    unsafe { std::alloc::dealloc(ptr, layout) };
    drop(f);
    fx.mount.power_cut().unwrap();
    let after = read(&path);
    assert_eq!(after.len(), 4096);
    assert!(after.iter().all(|b| *b == b'a'));
}

/// The `powerfs` binary: SIGUSR1 cuts the power, SIGTERM unmounts and exits.
#[test]
fn the_binary_cuts_the_power_on_sigusr1_and_unmounts_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_powerfs"))
        .arg(&backing)
        .arg(&mnt)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next_line = || lines.next().expect("powerfs said more").unwrap();
    assert!(next_line().contains("mounted"));
    let pid = child.id() as libc::pid_t;
    fs::write(mnt.join("unsynced"), b"gone after the cut").unwrap();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    let cut = next_line();
    assert!(cut.contains("power cut: Stats"), "{cut}");
    assert!(!mnt.join("unsynced").exists());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(next_line().contains("unmounting"));
    assert!(child.wait().unwrap().success());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "still mounted");
}

/// Regression: readdir's offsets were positions in the current listing, so a directory
/// emptied while it was listed (`remove_dir_all`) skipped entries and failed with ENOTEMPTY
/// (seen by the cluster campaign wiping a node's data dir).
#[test]
fn a_large_directory_removed_while_it_is_listed_is_removed_whole() {
    let f = mounted();
    let dir = f.mount.mountpoint().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..2000 {
        File::create(dir.join(format!("{i:020}.log"))).unwrap();
    }
    let listed = fs::read_dir(&dir).unwrap().count();
    assert_eq!(listed, 2000, "every entry is listed once");
    fs::remove_dir_all(&dir).unwrap();
    assert!(!dir.exists());
}

/// Free bytes of the file system holding `path`, as statvfs says.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a valid out-pointer for the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

#[test]
fn a_capacity_makes_a_full_disk_until_it_is_lifted() {
    let f = mounted();
    let mnt = f.mount.mountpoint().to_path_buf();
    let path = mnt.join("a");
    let mut file = File::create(&path).unwrap();
    file.write_all(&[1u8; 12_288]).unwrap();
    assert_eq!(f.mount.used_bytes(), 12_288);

    f.mount.set_capacity(Some(16_384));
    assert_eq!(free_bytes(&mnt), 4_096, "statfs reports what is left");
    let err = file.write_all(&[2u8; 8_192]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let err = file.set_len(20_000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(fs::metadata(&path).unwrap().len() <= 16_384);
    // Overwriting and shrinking need no room.
    file.write_at(&[3u8; 100], 0).unwrap();
    file.set_len(4_096).unwrap();
    assert_eq!(free_bytes(&mnt), 12_288);

    f.mount.set_capacity(None);
    file.write_all(&[2u8; 40_000]).unwrap();
    assert!(
        free_bytes(&mnt) > 16_384,
        "the backing file system's space again"
    );
}
