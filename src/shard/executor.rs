//! Shard threads: picking the engine, starting one thread (or glommio executor) per shard,
//! pinning it to a CPU, and joining it.
//!
//! Owns: the engine decision (`Auto` falls back to portable with one warning), the two
//! runtimes the shard loop can run on, and the thread handles.
//! Must never: share an engine or a log between threads. Each shard builds its own engine on
//! its own thread; only the `ShardContext` (channels, counters, options) crosses over.
//!
//! The uring engine runs the same generic shard loop on a glommio `LocalExecutor` pinned to
//! the shard's CPU, with `io_memory_bytes` of registered buffers; the portable engine runs it
//! on a thread of its own, on a current-thread tokio runtime with a local set. Both can spawn
//! the tasks of the shard's Raft groups. `resolve_engine` proves io_uring works before
//! choosing it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::options::{EngineChoice, UringWrite};
use super::queue::Queued;
use super::worker::{self, Local, LoopRuntime, Received, ShardContext};
use crate::storage::Engine;
use crate::storage::PortableEngine;

/// The engine the shards will actually run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResolvedEngine {
    Portable,
    #[cfg(target_os = "linux")]
    Uring,
    /// Tests only: the portable engine behind `storage::FaultyEngine`, which crashes after
    /// `crash_after` write-like operations; once the shard has stopped, its files lose what
    /// was not synced, torn as a power cut would (drawn from `tear_seed`).
    #[cfg(test)]
    PortableFaulty {
        crash_after: u64,
        tear_seed: u64,
    },
}

impl ResolvedEngine {
    pub fn name(self) -> &'static str {
        match self {
            ResolvedEngine::Portable => "portable",
            #[cfg(target_os = "linux")]
            ResolvedEngine::Uring => "uring",
            #[cfg(test)]
            ResolvedEngine::PortableFaulty { .. } => "portable (faulty)",
        }
    }
}

/// Turns the configured choice into the engine to run, and says why (for the startup log
/// line). `auto` and `uring` first prove that io_uring works here: a throwaway glommio
/// executor with the shards' `io_memory_bytes` starts and writes, syncs and reads back a
/// file in `probe_dir` (the data dir) through the uring engine. `auto` falls back to the
/// portable engine with one warning saying why; `uring` fails with that reason.
pub(crate) fn resolve_engine(
    choice: EngineChoice,
    probe_dir: &std::path::Path,
    io_memory_bytes: usize,
) -> Result<(ResolvedEngine, String)> {
    match choice {
        EngineChoice::Portable => Ok((
            ResolvedEngine::Portable,
            "storage.engine = \"portable\"".to_owned(),
        )),
        EngineChoice::Uring => match probe_uring(probe_dir, io_memory_bytes) {
            Ok(engine) => Ok((
                engine,
                "storage.engine = \"uring\" and the io_uring probe passed".to_owned(),
            )),
            Err(reason) => Err(Error::UringUnavailable { reason }),
        },
        EngineChoice::Auto => match probe_uring(probe_dir, io_memory_bytes) {
            Ok(engine) => Ok((
                engine,
                "storage.engine = \"auto\" and the io_uring probe passed".to_owned(),
            )),
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "storage engine \"auto\": io_uring unavailable, falling back to the portable engine"
                );
                Ok((
                    ResolvedEngine::Portable,
                    format!("storage.engine = \"auto\" and io_uring is unavailable: {reason}"),
                ))
            }
        },
    }
}

#[cfg(not(target_os = "linux"))]
fn probe_uring(
    _dir: &std::path::Path,
    _io_memory_bytes: usize,
) -> std::result::Result<ResolvedEngine, String> {
    Err("io_uring exists on Linux only".to_owned())
}

#[cfg(target_os = "linux")]
fn probe_uring(
    dir: &std::path::Path,
    io_memory_bytes: usize,
) -> std::result::Result<ResolvedEngine, String> {
    use crate::storage::StoreFile;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid `limit` struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0
        && limit.rlim_cur != libc::RLIM_INFINITY
        && limit.rlim_cur < 512 * 1024
    {
        return Err(format!(
            "the locked-memory limit (ulimit -l) is {} KiB; glommio needs at least 512 KiB per shard",
            limit.rlim_cur / 1024
        ));
    }
    // Durably (see topics::load_all): made here first, the data dir's own entry must survive.
    crate::storage::fsutil::create_dir_all_durable(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!(".uring-probe-{}", std::process::id()));
    let probe_path = path.clone();
    let started = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("walrs-uring-probe")
        .io_memory(io_memory_bytes)
        .spawn(move || async move {
            let engine = crate::storage::uring::UringEngine::new();
            let result = async {
                let mut file = engine.create(&probe_path).await?;
                file.append(b"wal.rs io_uring probe").await?;
                file.sync().await?;
                let back = file.read_at(0, 5).await?;
                file.close().await?;
                engine.remove(&probe_path).await?;
                std::io::Result::Ok(back)
            }
            .await;
            result.map_err(|e| e.to_string())
        });
    let outcome = match started {
        Ok(handle) => handle
            .join()
            .map_err(|e| format!("the io_uring probe executor failed: {e}"))
            .and_then(|r| r.map_err(|e| format!("io_uring file I/O failed: {e}"))),
        Err(e) => Err(format!("a glommio executor did not start: {e}")),
    };
    if outcome.is_err()
        && path.exists()
        && let Err(e) = std::fs::remove_file(&path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not remove the io_uring probe file");
    }
    match outcome? {
        back if back == b"wal.r" => Ok(ResolvedEngine::Uring),
        back => Err(format!(
            "io_uring read back {back:?} instead of what it wrote"
        )),
    }
}

/// A running shard thread.
pub(crate) enum ShardThread {
    Std(std::thread::JoinHandle<()>),
    #[cfg(target_os = "linux")]
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
    io_memory_bytes: usize,
    ctx: ShardContext,
) -> Result<ShardThread> {
    // Only the glommio executor takes a registered-buffer pool.
    #[cfg(not(target_os = "linux"))]
    let _ = io_memory_bytes;
    let id = ctx.id;
    let preallocate = ctx.options.preallocate;
    match engine {
        ResolvedEngine::Portable => std::thread::Builder::new()
            .name(format!("walrs-shard-{id}"))
            .spawn(move || {
                if pin_threads {
                    pin_current_thread(id);
                }
                run_local(PortableEngine::new().with_preallocation(preallocate), ctx);
            })
            .map(ShardThread::Std)
            .map_err(|e| Error::ShardFailed {
                shard: id,
                reason: format!("cannot spawn its thread: {e}"),
            }),
        #[cfg(target_os = "linux")]
        ResolvedEngine::Uring => {
            let write_mode = match ctx.options.uring_write {
                UringWrite::Fdatasync => crate::storage::uring::WriteMode::Fdatasync,
                UringWrite::Dsync => crate::storage::uring::WriteMode::Dsync,
                UringWrite::Inline => crate::storage::uring::WriteMode::Inline,
            };
            spawn_glommio_shard(
                move || {
                    crate::storage::uring::UringEngine::new()
                        .with_write_mode(write_mode)
                        .with_preallocation(preallocate)
                },
                cpu_for(id).unwrap_or(0),
                io_memory_bytes,
                ctx,
            )
        }
        #[cfg(test)]
        ResolvedEngine::PortableFaulty {
            crash_after,
            tear_seed,
        } => std::thread::Builder::new()
            .name(format!("walrs-shard-{id}"))
            .spawn(move || {
                let engine = crate::storage::FaultyEngine::new(PortableEngine::new());
                engine.crash_after(crash_after);
                let power = engine.clone();
                run_local(engine, ctx);
                // Every handle is closed: cut the power on what was not synced.
                let mut rng = tear_seed | 1;
                power
                    .tear(|n| {
                        rng ^= rng >> 12;
                        rng ^= rng << 25;
                        rng ^= rng >> 27;
                        rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
                    })
                    .expect("tearing the unsynced bytes");
            })
            .map(ShardThread::Std)
            .map_err(|e| Error::ShardFailed {
                shard: id,
                reason: format!("cannot spawn its thread: {e}"),
            }),
    }
}

/// The CPU shard `id` runs on: the `id`-th (mod count) CPU this process may run on.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Pinning is Linux-only.
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

/// Waits on the shard's two queues and a timer, local messages first.
async fn recv_either<RT: openraft::rt::AsyncRuntime>(
    rx: &flume::Receiver<Queued>,
    local: &flume::Receiver<Local<RT>>,
    timer: impl std::future::Future<Output = ()>,
) -> Received<RT> {
    use futures::future::{Either, select};
    if let Ok(message) = local.try_recv() {
        return Received::Local(message);
    }
    let queues = async {
        let recv = std::pin::pin!(rx.recv_async());
        let local = std::pin::pin!(local.recv_async());
        match select(local, recv).await {
            Either::Left((Ok(message), _)) => Received::Local(message),
            // The shard holds a sender of its own local queue, so it never disconnects.
            Either::Left((Err(flume::RecvError::Disconnected), _)) => Received::Closed,
            Either::Right((Ok(queued), _)) => Received::Command(queued.into_command()),
            Either::Right((Err(flume::RecvError::Disconnected), _)) => Received::Closed,
        }
    };
    match select(std::pin::pin!(queues), std::pin::pin!(timer)).await {
        Either::Left((received, _)) => received,
        Either::Right(((), _)) => Received::Timeout,
    }
}

/// The portable shard's runtime: a current-thread tokio runtime with a local set on the
/// shard's own thread, so Raft groups can run their tasks beside the shard loop.
pub(crate) struct TokioLocalRuntime;

impl LoopRuntime for TokioLocalRuntime {
    type Rt = openraft_rt_tokio::TokioRuntime;

    async fn recv(
        &self,
        rx: &flume::Receiver<Queued>,
        local: &flume::Receiver<Local<Self::Rt>>,
        deadline: Instant,
    ) -> Received<Self::Rt> {
        let timer = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        recv_either(rx, local, timer).await
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// Runs a shard on `engine` on the calling thread, on a current-thread tokio runtime with a
/// local set: the portable shards, and the shard tests that bring an engine of their own.
pub(crate) fn run_local<E: Engine>(engine: E, ctx: ShardContext) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let reason = format!("cannot build its tokio runtime: {e}");
            if ctx
                .ready
                .send(Err(Error::ShardFailed {
                    shard: ctx.id,
                    reason,
                }))
                .is_err()
            {
                tracing::error!(shard = ctx.id, "the shard set left before the shard failed");
            }
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, worker::run(engine, TokioLocalRuntime, ctx));
}

/// The glommio shard's runtime: waits yield to the executor, so io_uring completions and
/// timers keep running.
#[cfg(target_os = "linux")]
struct GlommioRuntime;

#[cfg(target_os = "linux")]
impl LoopRuntime for GlommioRuntime {
    type Rt = crate::raft::runtime::GlommioRuntime;

    async fn recv(
        &self,
        rx: &flume::Receiver<Queued>,
        local: &flume::Receiver<Local<Self::Rt>>,
        deadline: Instant,
    ) -> Received<Self::Rt> {
        let wait = deadline.saturating_duration_since(Instant::now());
        recv_either(rx, local, glommio::timer::sleep(wait)).await
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
    E: Engine,
    F: FnOnce() -> E + Send + 'static,
{
    let id = ctx.id;
    let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(&format!("walrs-shard-{id}"))
        .io_memory(io_memory_bytes);
    if ctx.options.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(ctx.options.spin_before_park_us));
    }
    builder
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
    use crate::shard::command::Command;
    use crate::shard::options::ShardOptions;
    use crate::shard::queue::QueueSender;
    use crate::storage::Record;

    fn context(
        dir: &std::path::Path,
    ) -> (
        ShardContext,
        QueueSender,
        mpsc::Receiver<Result<()>>,
        tokio::sync::watch::Receiver<u64>,
    ) {
        let mut options = ShardOptions::new(dir);
        options.shard_count = 1;
        crate::shard::worker::tests::one_partition_context(dir, options, 8)
    }

    /// Drives one append and a shutdown through a started shard.
    fn exercise(
        thread: ShardThread,
        tx: QueueSender,
        ready: mpsc::Receiver<Result<()>>,
        hw: tokio::sync::watch::Receiver<u64>,
    ) {
        wait_ready(0, &ready).unwrap();
        let (reply, ack) = tokio::sync::oneshot::channel();
        let records = vec![Record {
            value: bytes::Bytes::from_static(b"v"),
            ..Record::default()
        }];
        let batch = crate::storage::LogLimits::default().check(records).unwrap();
        tx.send_blocking(Command::Append {
            topic: Arc::from("t"),
            partition: 0,
            batch,
            reply,
            trace: Default::default(),
        });
        let ack = futures::executor::block_on(ack).unwrap().unwrap();
        assert_eq!(ack.base_offset, 0);
        assert_eq!(*hw.borrow(), 1);
        let (reply, done) = tokio::sync::oneshot::channel();
        tx.send_blocking(Command::Shutdown { reply });
        futures::executor::block_on(done).unwrap().unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn portable_thread_runs_the_shard_loop() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, tx, ready, hw) = context(dir.path());
        let thread = spawn_shard(ResolvedEngine::Portable, false, 1 << 20, ctx).unwrap();
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
                // A shard that never answers is a hang, and a hang is a failure.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the glommio shard did not report ready within 10 s")
                }
                // The thread ended before its executor ran: glommio could not start here.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    eprintln!("skipped: the glommio executor did not start on this machine")
                }
            },
            Err(e) => eprintln!("skipped: {e}"),
        }
    }

    #[test]
    fn portable_is_taken_as_asked_and_uring_is_probed() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert_eq!(
            resolve_engine(EngineChoice::Portable, dir.path(), 1 << 20)
                .unwrap()
                .0,
            ResolvedEngine::Portable
        );
        #[cfg(target_os = "linux")]
        if let Err(why) = probe_uring(dir.path(), 1 << 20) {
            // No io_uring here: `auto` falls back to portable and `uring` refuses.
            println!("skipped the io_uring half: io_uring cannot run here ({why})");
            assert_eq!(
                resolve_engine(EngineChoice::Auto, dir.path(), 1 << 20)
                    .unwrap()
                    .0,
                ResolvedEngine::Portable
            );
            assert!(resolve_engine(EngineChoice::Uring, dir.path(), 1 << 20).is_err());
        } else {
            // This machine runs io_uring: both `uring` and `auto` pick it, and the probe
            // leaves no file behind.
            assert_eq!(
                resolve_engine(EngineChoice::Uring, dir.path(), 1 << 20)
                    .unwrap()
                    .0,
                ResolvedEngine::Uring
            );
            assert_eq!(
                resolve_engine(EngineChoice::Auto, dir.path(), 1 << 20)
                    .unwrap()
                    .0,
                ResolvedEngine::Uring
            );
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }
}
