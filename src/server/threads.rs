//! The scheduling policy of a served process's threads (`server.thread_policy`).
//!
//! Owns: setting the policy of every thread the process has when [`apply_policy`] runs.
//! Threads made afterwards (the shards, io_uring's workers, tokio's blocking pool) inherit it
//! from the thread that makes them, so it is applied once, before the server starts.
//! Must never: change a thread's priority or nice value, or ask for anything that needs
//! privilege (`SCHED_OTHER` ↔ `SCHED_BATCH` needs none).
//!
//! Why batch: on a core shared by tokio's worker, a shard thread and io_uring's workers,
//! each hand-over wakes the next thread, and under `SCHED_OTHER` the woken thread preempts the
//! one that woke it. A 64-client W3 then pays about 0.3 involuntary context switches per
//! append; under `SCHED_BATCH` the waker finishes its turn first, and each side takes many
//! requests per wake-up (BENCHMARKS.md, issue 14, sessions 29 and 33).

use crate::config::ThreadPolicy;

/// Applies `policy` to every thread of this process and returns how many it changed.
/// Meant for the `walrs serve` process only: a library user's threads are its own.
pub fn apply_policy(policy: ThreadPolicy) -> std::io::Result<usize> {
    match policy {
        ThreadPolicy::Unchanged => Ok(0),
        ThreadPolicy::Batch => set_batch_everywhere(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch_everywhere() -> std::io::Result<usize> {
    let mut changed = 0;
    // A thread made during a pass by one not yet changed is caught by the next pass; one
    // made by a changed thread inherits the policy. Three passes settle a process whose
    // threads are not being made in a loop (at start-up, only tokio's idle workers run).
    for _pass in 0..3 {
        let mut changed_now = 0;
        for entry in std::fs::read_dir("/proc/self/task")? {
            let Some(tid) = entry?
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            // SAFETY: `tid` is a plain integer; sched_getscheduler only reads it.
            let current = unsafe { libc::sched_getscheduler(tid) };
            if current == libc::SCHED_BATCH || current == -1 {
                // Already batch, or the thread has ended since the listing.
                continue;
            }
            if current != libc::SCHED_OTHER {
                // A real-time or idle policy someone chose on purpose: left alone.
                continue;
            }
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param for SCHED_BATCH (priority 0).
            if unsafe { libc::sched_setscheduler(tid, libc::SCHED_BATCH, &param) } != 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::ESRCH) {
                    continue; // ended since the listing
                }
                return Err(error);
            }
            changed_now += 1;
        }
        changed += changed_now;
        if changed_now == 0 {
            break;
        }
    }
    Ok(changed)
}

#[cfg(not(target_os = "linux"))]
fn set_batch_everywhere() -> std::io::Result<usize> {
    Ok(0)
}

// Tested on a real `walrs serve` process (`tests/server.rs`): applied here, it would
// change every thread of the test harness.
