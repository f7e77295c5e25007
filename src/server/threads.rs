//! The scheduling policy of a served process's threads (`server.thread_policy`).
//!
//! Owns: setting the policy of the calling thread. `walrs serve` calls [`apply_policy`] on
//! its main thread before it makes any other, so every thread of the process (tokio's
//! workers, the shards, io_uring's workers, tokio's blocking pool) inherits the policy.
//! Must never: change a thread's priority or nice value, ask for anything that needs
//! privilege (`SCHED_OTHER` → `SCHED_BATCH` needs none), or override a policy someone chose
//! on purpose (a process started under a real-time or idle policy keeps it).
//!
//! Why batch: on a core shared by tokio's worker, a shard thread and io_uring's workers,
//! each hand-over wakes the next thread, and under `SCHED_OTHER` the woken thread preempts the
//! one that woke it: about 0.2 involuntary context switches per W3 append (BENCHMARKS.md,
//! issue 14, session 29). Under `SCHED_BATCH` the waker finishes its turn first, and each side
//! takes many requests per wake-up.

use crate::config::ThreadPolicy;

/// What [`apply_policy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyApplied {
    /// The calling thread is now `SCHED_BATCH`.
    Batch,
    /// Nothing was asked (`"unchanged"`), or the thread already had the policy.
    Unchanged,
    /// The thread was started under a policy other than `SCHED_OTHER` (its number here),
    /// which is kept.
    KeptOther(i32),
    /// Not Linux: there is no `SCHED_BATCH` to set.
    NotSupported,
}

/// Applies `policy` to the calling thread; threads it makes afterwards inherit it.
pub fn apply_policy(policy: ThreadPolicy) -> std::io::Result<PolicyApplied> {
    match policy {
        ThreadPolicy::Unchanged => Ok(PolicyApplied::Unchanged),
        ThreadPolicy::Batch => set_batch(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> std::io::Result<PolicyApplied> {
    // The system calls, not libc's wrappers: they act on one thread (0 = the caller).
    // SAFETY: sched_getscheduler takes a thread id and reads no memory of ours.
    let current = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if current < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let current = current as i32;
    if current == libc::SCHED_BATCH {
        return Ok(PolicyApplied::Unchanged);
    }
    if current != libc::SCHED_OTHER {
        return Ok(PolicyApplied::KeptOther(current));
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for SCHED_BATCH (priority 0) and outlives the
    // call, which only reads it.
    let set = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_BATCH,
            &param as *const libc::sched_param,
        )
    };
    if set != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PolicyApplied::Batch)
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<PolicyApplied> {
    Ok(PolicyApplied::NotSupported)
}

// Tested on a real `walrs serve` process (`tests/server.rs`): applied in a test, it would
// change the policy of the test harness's threads made afterwards.
