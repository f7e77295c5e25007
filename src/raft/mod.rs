//! Consensus: one openraft group per replicated partition, living on the shard that owns it.
//!
//! Owns: the runtimes openraft runs on (`runtime`: glommio on the uring shards; the portable
//! shards use tokio's local set), the type configuration (`types`), the log storage over the
//! shard-owned `Log` (`store`) with its newest entries in memory (`recent`), the state machine that turns commits into readable offsets
//! and answers appends (`state_machine`), the wire form of Raft messages (`wire`), and the
//! network that carries them to other nodes through the shard's transport (`network`).
//! Must never: move a group's state off its shard thread, or take a lock around it. openraft
//! is built with `single-threaded`, so its handles and futures are `!Send` and stay put. It
//! never touches a file: the shard owns the logs and serves this layer's ops.
pub(crate) mod group;
pub(crate) mod network;
pub(crate) mod quiet;
pub(crate) mod recent;
#[cfg(target_os = "linux")]
#[allow(dead_code)] // `with_io_memory` and `abort` serve the runtime's own tests and tools.
pub(crate) mod runtime;
pub(crate) mod state_machine;
pub(crate) mod store;
#[cfg(test)]
mod tests;
pub(crate) mod types;
pub(crate) mod wire;
