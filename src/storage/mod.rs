//! Storage layer: one partition's log on disk.
pub mod io;
#[cfg(target_os = "linux")]
pub mod uring;
