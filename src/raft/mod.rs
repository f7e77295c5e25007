//! Consensus: one openraft group per partition, living on the glommio shard that owns it.
//!
//! Owns: the glommio `AsyncRuntime` openraft runs on (`runtime`). Partition storage, the
//! network and the groups themselves come in later steps of issue 10.
//! Must never: move a group's state off its shard thread, or take a lock around it. openraft
//! is built with `single-threaded`, so its handles and futures are `!Send` and stay put.
#[cfg(target_os = "linux")]
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the partition groups of the next step of issue 10 run on it"
    )
)]
pub(crate) mod runtime;
