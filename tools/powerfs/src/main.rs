//! `powerfs BACKING MOUNTPOINT`: mounts powerfs for hand use (the tests use the library).
//!
//! `kill -USR1 <pid>` cuts the power (the processes using the mount must have exited: the
//! cut unmounts); `kill -TERM`/Ctrl-C unmounts and exits. Each event prints the counters.

use std::path::PathBuf;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!("usage: powerfs BACKING_DIR MOUNTPOINT (SIGUSR1: power cut; SIGTERM: unmount)");
        std::process::exit(2);
    };
    // Block the signals before any thread starts, so that only sigwait below sees them.
    // SAFETY: plain libc signal-set calls on a local, initialised set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut mount = match powerfs::Mount::new(backing, mountpoint) {
        Ok(mount) => mount,
        Err(err) => {
            eprintln!("powerfs: mounting {}: {err}", mountpoint.display());
            std::process::exit(1);
        }
    };
    eprintln!(
        "powerfs: mounted {} (pid {}); SIGUSR1 cuts the power",
        mountpoint.display(),
        std::process::id()
    );
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is initialised; `sig` is a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGUSR1 {
            match mount.power_cut() {
                Ok(stats) => eprintln!("powerfs: power cut: {stats:?}"),
                Err(err) => eprintln!("powerfs: power cut refused: {err}"),
            }
        } else {
            eprintln!("powerfs: unmounting: {:?}", mount.stats());
            if let Err(err) = mount.unmount() {
                eprintln!("powerfs: {err}");
                std::process::exit(1);
            }
            return;
        }
    }
}
