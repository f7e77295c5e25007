//! Shard threads: picking the engine, starting one thread (or glommio executor) per shard,
//! pinning it to a CPU, and joining it.
//!
//! Owns: the engine decision (`Auto` falls back to portable with one warning), the two
//! runtimes the shard loop can run on, and the thread handles.
//! Must never: share an engine or a log between threads. Each shard builds its own engine on
//! its own thread; only the `ShardContext` (channels, counters, options) crosses over.
//!
//! The io_uring hook: `spawn_glommio_shard` already runs the shard loop on a pinned glommio
//! `LocalExecutor` with `io_memory_bytes`, generic over the engine. When
//! `storage::uring::UringEngine` is merged, `spawn_shard` calls it with `UringEngine::new`
//! for `ResolvedEngine::Uring`, and `resolve_engine` probes io_uring instead of refusing
//! (see `URING HOOK` below).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::command::Command;
use super::error::{Error, Result};
use super::options::EngineChoice;
use super::worker::{self, LoopRuntime, Received, ShardContext};
use crate::storage::{Engine, PortableEngine};

/// Engines that count their `fdatasync` calls, so a shard can report them.
pub trait FdatasyncCounter {
    /// `fdatasync` calls made so far through this engine and its clones.
    fn fdatasync_count(&self) -> u64;
}

impl FdatasyncCounter for PortableEngine {
    fn fdatasync_count(&self) -> u64 {
        PortableEngine::fdatasync_count(self)
    }
}

// URING HOOK: `impl FdatasyncCounter for crate::storage::UringEngine` goes here.

/// The engine the shards will actually run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolvedEngine {
    Portable,
}

impl ResolvedEngine {
    pub fn name(self) -> &'static str {
        match self {
            ResolvedEngine::Portable => "portable",
        }
    }
}

/// Why io_uring cannot be used by this build.
const URING_MISSING: &str =
    "the io_uring store engine (storage::uring::UringEngine) is not part of this build yet";

/// Turns the configured choice into the engine to run.
pub(crate) fn resolve_engine(choice: EngineChoice) -> Result<ResolvedEngine> {
    // URING HOOK: once UringEngine exists, probe io_uring here (e.g. build a throwaway
    // glommio executor) and return `ResolvedEngine::Uring` when it starts.
    match choice {
        EngineChoice::Portable => Ok(ResolvedEngine::Portable),
        EngineChoice::Uring => Err(Error::UringUnavailable {
            reason: URING_MISSING.to_owned(),
        }),
        EngineChoice::Auto => {
            tracing::warn!(
                reason = URING_MISSING,
                "storage engine \"auto\": io_uring unavailable, falling back to the portable engine"
            );
            Ok(ResolvedEngine::Portable)
        }
    }
}

/// A running shard thread.
pub(crate) enum ShardThread {
    Std(std::thread::JoinHandle<()>),
    #[cfg(target_os = "linux")]
    #[cfg_attr(not(test), allow(dead_code))] // Used once UringEngine is merged (URING HOOK).
    Glommio(glommio::ExecutorJoinHandle<()>),
}

impl ShardThread {
    /// Waits for the thread to end; `Err` names a panic.
    pub fn join(self) -> std::result::Result<(), String> {
        match self {
            ShardThread::Std(handle) => handle
                .join()
                .map_err(|panic| format!("shard thread panicked: {}", panic_message(&*panic))),
            #[cfg(target_os = "linux")]
            ShardThread::Glommio(handle) => handle.join().map_err(|e| e.to_string()),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".to_owned())
}

/// Starts shard `ctx.id` on the resolved engine.
pub(crate) fn spawn_shard(
    engine: ResolvedEngine,
    pin_threads: bool,
    ctx: ShardContext,
) -> Result<ShardThread> {
    let id = ctx.id;
    match engine {
        ResolvedEngine::Portable => std::thread::Builder::new()
            .name(format!("walrs-shard-{id}"))
            .spawn(move || {
                if pin_threads {
                    pin_current_thread(id);
                }
                futures::executor::block_on(worker::run(
                    PortableEngine::new(),
                    BlockingRuntime,
                    ctx,
                ));
            })
            .map(ShardThread::Std)
            .map_err(|e| Error::ShardFailed {
                shard: id,
                reason: format!("cannot spawn its thread: {e}"),
            }),
        // URING HOOK: ResolvedEngine::Uring => spawn_glommio_shard(UringEngine::new, cpu_for(id), io_memory_bytes, ctx),
    }
}

/// The CPU shard `id` runs on: the `id`-th (mod count) CPU this process may run on.
pub(crate) fn cpu_for(id: usize) -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes.
        if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
            return None;
        }
        let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `cpu` is below CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect();
        if allowed.is_empty() {
            return None;
        }
        Some(allowed[id % allowed.len()])
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = id;
        None
    }
}

/// Pins the calling thread to shard `id`'s CPU; a failure only costs locality, so it is
/// logged and ignored.
fn pin_current_thread(id: usize) {
    #[cfg(target_os = "linux")]
    if let Some(cpu) = cpu_for(id) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; `cpu` is below CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t; pid 0 is the calling thread.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc != 0 {
            tracing::debug!(shard = id, cpu, error = %std::io::Error::last_os_error(), "could not pin the shard thread");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = id;
}

/// The portable shard's runtime: the thread is the shard's own, so waiting blocks it.
pub(crate) struct BlockingRuntime;

impl LoopRuntime for BlockingRuntime {
    async fn recv(&self, rx: &flume::Receiver<Command>, deadline: Instant) -> Received {
        match rx.recv_deadline(deadline) {
            Ok(cmd) => Received::Command(cmd),
            Err(flume::RecvTimeoutError::Timeout) => Received::Timeout,
            Err(flume::RecvTimeoutError::Disconnected) => Received::Closed,
        }
    }

    async fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// The glommio shard's runtime: waits yield to the executor, so io_uring completions and
/// timers keep running.
#[cfg(target_os = "linux")]
#[cfg_attr(not(test), allow(dead_code))] // Used once UringEngine is merged (URING HOOK).
struct GlommioRuntime;

#[cfg(target_os = "linux")]
impl LoopRuntime for GlommioRuntime {
    async fn recv(&self, rx: &flume::Receiver<Command>, deadline: Instant) -> Received {
        use futures::future::{Either, select};
        let wait = deadline.saturating_duration_since(Instant::now());
        let recv = std::pin::pin!(rx.recv_async());
        let timer = std::pin::pin!(glommio::timer::sleep(wait));
        match select(recv, timer).await {
            Either::Left((Ok(cmd), _)) => Received::Command(cmd),
            Either::Left((Err(flume::RecvError::Disconnected), _)) => Received::Closed,
            Either::Right(((), _)) => Received::Timeout,
        }
    }

    async fn sleep(&self, duration: Duration) {
        glommio::timer::sleep(duration).await;
    }
}

/// Starts a shard on a glommio `LocalExecutor` pinned to `cpu`, with `io_memory_bytes` for
/// io_uring buffers; `make_engine` builds the engine on the executor's thread.
#[cfg(target_os = "linux")]
#[cfg_attr(not(test), allow(dead_code))] // Used once UringEngine is merged (URING HOOK).
pub(crate) fn spawn_glommio_shard<E, F>(
    make_engine: F,
    cpu: usize,
    io_memory_bytes: usize,
    ctx: ShardContext,
) -> Result<ShardThread>
where
    E: Engine + FdatasyncCounter,
    F: FnOnce() -> E + Send + 'static,
{
    let id = ctx.id;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(&format!("walrs-shard-{id}"))
        .io_memory(io_memory_bytes)
        .spawn(move || async move { worker::run(make_engine(), GlommioRuntime, ctx).await })
        .map(ShardThread::Glommio)
        .map_err(|e| Error::UringUnavailable {
            reason: format!("glommio executor for shard {id} did not start: {e}"),
        })
}

/// Waits for a shard's first report (did its partitions open?).
pub(crate) fn wait_ready(id: usize, ready: &mpsc::Receiver<Result<()>>) -> Result<()> {
    ready.recv().unwrap_or_else(|_| {
        Err(Error::ShardFailed {
            shard: id,
            reason: "the shard thread ended before it was ready".to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::shard::command::OpenPartition;
    use crate::shard::options::ShardOptions;
    use crate::shard::stats::ShardStats;
    use crate::storage::Record;

    fn context(
        dir: &std::path::Path,
    ) -> (
        ShardContext,
        flume::Sender<Command>,
        mpsc::Receiver<Result<()>>,
        tokio::sync::watch::Receiver<u64>,
    ) {
        let (tx, rx) = flume::bounded(8);
        let (ready_tx, ready_rx) = mpsc::channel();
        let (hw_tx, hw_rx) = tokio::sync::watch::channel(0);
        let mut options = ShardOptions::new(dir);
        options.shard_count = 1;
        let ctx = ShardContext {
            id: 0,
            rx,
            stats: Arc::new(ShardStats::default()),
            options,
            initial: vec![OpenPartition {
                topic: Arc::from("t"),
                partition: 0,
                dir: dir.join("t").join("0"),
                high_watermark: hw_tx,
            }],
            ready: ready_tx,
        };
        (ctx, tx, ready_rx, hw_rx)
    }

    /// Drives one append and a shutdown through a started shard.
    fn exercise(
        thread: ShardThread,
        tx: flume::Sender<Command>,
        ready: mpsc::Receiver<Result<()>>,
        hw: tokio::sync::watch::Receiver<u64>,
    ) {
        wait_ready(0, &ready).unwrap();
        let (reply, ack) = tokio::sync::oneshot::channel();
        tx.send(Command::Append {
            topic: Arc::from("t"),
            partition: 0,
            records: vec![Record {
                value: b"v".to_vec(),
                ..Record::default()
            }],
            reply,
        })
        .unwrap();
        let ack = futures::executor::block_on(ack).unwrap().unwrap();
        assert_eq!(ack.base_offset, 0);
        assert_eq!(*hw.borrow(), 1);
        let (reply, done) = tokio::sync::oneshot::channel();
        tx.send(Command::Shutdown { reply }).unwrap();
        futures::executor::block_on(done).unwrap().unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn portable_thread_runs_the_shard_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, tx, ready, hw) = context(dir.path());
        let thread = spawn_shard(ResolvedEngine::Portable, false, ctx).unwrap();
        exercise(thread, tx, ready, hw);
    }

    /// The uring hook's executor half: the same loop on a pinned glommio executor (with the
    /// portable engine until UringEngine lands). Skipped where glommio cannot start.
    #[cfg(target_os = "linux")]
    #[test]
    fn glommio_executor_runs_the_shard_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, tx, ready, hw) = context(dir.path());
        let cpu = cpu_for(0).unwrap_or(0);
        match spawn_glommio_shard(PortableEngine::new, cpu, 1 << 20, ctx) {
            Ok(thread) => match ready.recv_timeout(Duration::from_secs(10)) {
                Ok(first) => {
                    let (again_tx, again_rx) = mpsc::channel();
                    again_tx.send(first).unwrap();
                    exercise(thread, tx, again_rx, hw);
                }
                Err(e) => eprintln!("skipped: glommio shard did not report ready: {e}"),
            },
            Err(e) => eprintln!("skipped: {e}"),
        }
    }

    #[test]
    fn uring_is_refused_and_auto_falls_back() {
        assert!(matches!(
            resolve_engine(EngineChoice::Uring),
            Err(Error::UringUnavailable { .. })
        ));
        assert_eq!(
            resolve_engine(EngineChoice::Auto).unwrap(),
            ResolvedEngine::Portable
        );
    }
}
