//! Storage layer: one partition's log on disk.
pub mod io;
