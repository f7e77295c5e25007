//! The glommio `AsyncRuntime` for openraft: what a partition's Raft group spawns, sleeps and
//! times out on, on the shard thread that owns the partition.
//!
//! Owns: [`GlommioRuntime`] and its handle, sleep and timeout types. Tasks are glommio local
//! tasks in the current executor's default task queue; timers are glommio timers; instants
//! are `std::time::Instant`. The channels and the async mutex are openraft's own
//! runtime-agnostic wrappers over `tokio::sync` (they need no tokio runtime), as openraft's
//! monoio runtime does for its watch and mutex.
//! Must never: be used off a glommio executor thread (spawning and timers find the executor
//! through glommio's thread-local and panic without one), or hand a task to another thread.
//! Everything here is `!Send`; openraft is built with `single-threaded` so it asks for no
//! `Send`.
//!
//! A spawned task is detached: dropping its [`GlommioJoinHandle`] lets it run on, as openraft
//! expects of every runtime. [`GlommioJoinHandle::abort`] cancels it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use openraft::rt::{AsyncRuntime, OptionalSend};

/// Registered (locked) buffer memory of an executor made by [`AsyncRuntime::new`], which
/// only tests and tools use: the shards run Raft inside the executors they already built.
/// glommio's 10 MiB default is more than an 8 MiB `ulimit -l` allows one process, and a
/// test makes several executors at once.
const TEST_IO_MEMORY_BYTES: usize = 512 * 1024;

/// openraft's [`AsyncRuntime`] on glommio.
///
/// As a type it only names the runtime in a `RaftTypeConfig`; every associated function
/// works on the glommio executor running the calling thread. A value (from
/// [`AsyncRuntime::new`]) owns a `LocalExecutor` of its own, for tests and tools that are not
/// already inside one.
pub(crate) struct GlommioRuntime {
    executor: glommio::LocalExecutor,
}

impl std::fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlommioRuntime")
            .field("executor_id", &self.executor.id())
            .finish()
    }
}

impl GlommioRuntime {
    /// A runtime with its own unbound executor and `io_memory_bytes` of registered buffers.
    pub(crate) fn with_io_memory(io_memory_bytes: usize) -> glommio::Result<Self, ()> {
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name("walrs-raft-rt")
            .io_memory(io_memory_bytes)
            .make()?;
        Ok(GlommioRuntime { executor })
    }
}

/// Why a [`GlommioJoinHandle`] has no output: the task was aborted, or its executor went
/// away before it finished. A panicking glommio task does not end here: the panic unwinds
/// through the executor's run loop, so it ends the whole shard (the shard's thread join
/// reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the glommio task was cancelled before it finished")]
pub(crate) struct GlommioJoinError;

/// The handle of a detached glommio task: awaiting it yields the task's output.
pub(crate) struct GlommioJoinHandle<T> {
    inner: glommio::task::JoinHandle<T>,
}

impl<T> GlommioJoinHandle<T> {
    /// Cancels the task: it is not polled again, and awaiting this handle yields
    /// [`GlommioJoinError`]. No effect on a task that has finished.
    pub(crate) fn abort(&self) {
        self.inner.cancel();
    }
}

impl<T> Future for GlommioJoinHandle<T> {
    type Output = Result<T, GlommioJoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|output| output.ok_or(GlommioJoinError))
    }
}

/// A glommio timer that yields `()`, as openraft's `Sleep` must.
#[derive(Debug)]
pub(crate) struct GlommioSleep {
    timer: Timer,
}

/// Timer slack: every deadline is rounded up to the next multiple of this, counted from one
/// process-wide origin, so that the timers of many groups on a shard (each group's tick every
/// `heartbeat_interval_ms * 13 / 64`, its heartbeats and election timers) fall due together
/// and the shard wakes once for all of them instead of once for each. A few milliseconds
/// late is nothing to a Raft timer.
pub(crate) const TIMER_SLACK: Duration = Duration::from_millis(5);

/// `deadline` rounded up to the next multiple of [`TIMER_SLACK`] since the process origin.
fn coalesced(deadline: Instant) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let Some(since) = deadline.checked_duration_since(origin) else {
        return deadline;
    };
    let slack = TIMER_SLACK.as_nanos();
    let rounded = since.as_nanos().div_ceil(slack) * slack;
    origin + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

impl GlommioSleep {
    fn until(deadline: Instant) -> Self {
        let deadline = coalesced(deadline);
        GlommioSleep {
            timer: Timer::new(deadline.saturating_duration_since(Instant::now())),
        }
    }
}

impl Future for GlommioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(|_fired_at| ())
    }
}

/// The deadline of a [`GlommioTimeout`] passed before its future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub(crate) struct GlommioTimeoutError;

pin_project_lite::pin_project! {
    /// A future raced against a glommio timer. The future is polled first, so an output
    /// that is ready at the deadline still wins.
    pub(crate) struct GlommioTimeout<F> {
        #[pin]
        future: F,
        sleep: GlommioSleep,
    }
}

impl<F: Future> Future for GlommioTimeout<F> {
    type Output = Result<F::Output, GlommioTimeoutError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(this.sleep)
            .poll(cx)
            .map(|()| Err(GlommioTimeoutError))
    }
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = GlommioJoinError;
    type JoinHandle<T: OptionalSend + 'static> = GlommioJoinHandle<T>;
    type Sleep = GlommioSleep;
    type Instant = Instant;
    type TimeoutError = GlommioTimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = GlommioTimeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        GlommioJoinHandle {
            inner: glommio::spawn_local(future).detach(),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        GlommioSleep::until(Instant::now() + duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        GlommioSleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        GlommioTimeout {
            future,
            sleep: Self::sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        GlommioTimeout {
            future,
            sleep: GlommioSleep::until(deadline),
        }
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        // A panic never reaches a join handle on glommio (see `GlommioJoinError`).
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = openraft_rt_tokio::TokioMpsc;
    type Watch = openraft_rt_tokio::TokioWatch;
    type Oneshot = openraft_rt_tokio::TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = openraft_rt_tokio::TokioMutex<T>;

    /// An executor of this runtime's own, on the calling thread; `threads` is ignored (glommio
    /// runs one thread per executor).
    ///
    /// # Panics
    ///
    /// If glommio cannot start here (no io_uring, or not enough locked memory). Callers that
    /// must not panic use [`GlommioRuntime::with_io_memory`].
    fn new(_threads: usize) -> Self {
        match Self::with_io_memory(TEST_IO_MEMORY_BYTES) {
            Ok(runtime) => runtime,
            Err(e) => panic!("a glommio executor did not start: {e}"),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.executor.run(future)
    }
}

#[cfg(test)]
mod coalescing_tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_shared_slack_boundaries() {
        let now = Instant::now();
        let a = coalesced(now + Duration::from_micros(1_100));
        let b = coalesced(now + Duration::from_micros(1_900));
        assert!(a >= now + Duration::from_micros(1_100));
        assert!(a - (now + Duration::from_micros(1_100)) <= TIMER_SLACK);
        // Deadlines within one slack of each other mostly share a boundary; ones a whole
        // slack apart never do.
        let c = coalesced(now + Duration::from_micros(1_100) + TIMER_SLACK);
        assert!(c > a);
        assert!(b == a || b == c);
        assert_eq!(coalesced(a), a, "a boundary stays where it is");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Err` says why glommio cannot run here, so a test can skip instead of failing.
    fn glommio_available() -> std::result::Result<(), String> {
        GlommioRuntime::with_io_memory(TEST_IO_MEMORY_BYTES)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// openraft's conformance suite for runtimes: spawn and join, sleep, instants, timeouts,
    /// selects, the channels, the mutex, task-locals, and the deterministic-RNG wrapper.
    #[test]
    fn openraft_runtime_suite_passes() {
        if let Err(why) = glommio_available() {
            eprintln!("skipped: glommio cannot start here: {why}");
            return;
        }
        openraft::rt::testing::Suite::<GlommioRuntime>::test_all();
    }

    #[test]
    fn a_dropped_handle_detaches_and_abort_cancels() {
        if let Err(why) = glommio_available() {
            eprintln!("skipped: glommio cannot start here: {why}");
            return;
        }
        GlommioRuntime::new(1).block_on(async {
            let (tx, rx) = futures::channel::oneshot::channel();
            drop(GlommioRuntime::spawn(async move {
                GlommioRuntime::sleep(Duration::from_millis(5)).await;
                tx.send(7_u32).expect("receiver waits");
            }));
            assert_eq!(rx.await, Ok(7), "a dropped handle must not cancel its task");

            let (tx, mut rx) = futures::channel::oneshot::channel::<()>();
            let handle = GlommioRuntime::spawn(async move {
                GlommioRuntime::sleep(Duration::from_secs(60)).await;
                drop(tx);
            });
            handle.abort();
            assert_eq!(handle.await, Err(GlommioJoinError));
            assert_eq!(rx.try_recv(), Err(futures::channel::oneshot::Canceled));
        });
    }

    /// A single-node openraft group on a glommio executor: initialised, it elects itself and
    /// commits and applies a client write. The log store and state machine are the least that
    /// openraft accepts, in memory, for this test only.
    #[test]
    fn a_single_node_raft_elects_itself_and_commits_a_write() {
        if let Err(why) = glommio_available() {
            eprintln!("skipped: glommio cannot start here: {why}");
            return;
        }
        GlommioRuntime::new(1).block_on(async {
            let config = openraft::Config {
                heartbeat_interval: 50,
                election_timeout_min: 150,
                election_timeout_max: 300,
                ..Default::default()
            };
            let config = std::sync::Arc::new(config.validate().expect("valid raft config"));
            let state_machine = single_node::StateMachine::default();
            let raft = openraft::Raft::<single_node::Config, _>::new(
                1,
                config,
                single_node::NoPeers,
                single_node::LogStore::default(),
                state_machine.clone(),
            )
            .await
            .expect("raft starts");
            raft.initialize(std::collections::BTreeMap::from([(
                1_u64,
                openraft::BasicNode::default(),
            )]))
            .await
            .expect("initialize");
            raft.wait(Some(Duration::from_secs(10)))
                .current_leader(1, "node 1 elects itself")
                .await
                .expect("node 1 leads");

            let written = raft
                .client_write("first batch".to_owned())
                .await
                .expect("the leader commits a write");
            assert_eq!(written.data, "applied first batch");
            raft.wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(written.log_id.index()), "the write is applied")
                .await
                .expect("applied");
            assert_eq!(state_machine.applied(), vec!["first batch".to_owned()]);
            raft.shutdown().await.expect("raft shuts down");
        });
    }

    mod single_node {
        use std::cell::RefCell;
        use std::collections::BTreeMap;
        use std::fmt::Debug;
        use std::io;
        use std::ops::RangeBounds;
        use std::rc::Rc;

        use futures::{Stream, TryStreamExt};
        use openraft::alias::{
            EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf,
        };
        use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
        use openraft::network::RPCOption;
        use openraft::raft::{
            AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest,
            VoteResponse,
        };
        use openraft::storage::{
            EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine,
        };
        use openraft::{
            EntryPayload, OptionalSend, RaftLogReader, RaftNetworkFactory, RaftNetworkV2,
            RaftSnapshotBuilder, StoredMembership,
        };

        openraft::declare_raft_types!(
            pub(crate) Config:
                D = String,
                R = String,
                AsyncRuntime = super::GlommioRuntime,
        );

        #[derive(Debug, Default)]
        struct Log {
            vote: Option<VoteOf<Config>>,
            committed: Option<LogIdOf<Config>>,
            purged: Option<LogIdOf<Config>>,
            entries: BTreeMap<u64, EntryOf<Config>>,
        }

        /// The whole log in one `Rc<RefCell>`: this executor is its only thread.
        #[derive(Debug, Default, Clone)]
        pub struct LogStore(Rc<RefCell<Log>>);

        impl RaftLogReader<Config> for LogStore {
            async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
                &mut self,
                range: RB,
            ) -> Result<Vec<EntryOf<Config>>, io::Error> {
                Ok(self
                    .0
                    .borrow()
                    .entries
                    .range(range)
                    .map(|(_, e)| e.clone())
                    .collect())
            }

            async fn read_vote(&mut self) -> Result<Option<VoteOf<Config>>, io::Error> {
                Ok(self.0.borrow().vote)
            }
        }

        impl RaftLogStorage<Config> for LogStore {
            type LogReader = Self;

            async fn get_log_state(&mut self) -> Result<LogState<Config>, io::Error> {
                let log = self.0.borrow();
                let last = log.entries.values().next_back().map(|e| e.log_id);
                Ok(LogState {
                    last_purged_log_id: log.purged,
                    last_log_id: last.or(log.purged),
                })
            }

            async fn get_log_reader(&mut self) -> Self::LogReader {
                self.clone()
            }

            async fn save_vote(&mut self, vote: &VoteOf<Config>) -> Result<(), io::Error> {
                self.0.borrow_mut().vote = Some(*vote);
                Ok(())
            }

            async fn save_committed(
                &mut self,
                committed: Option<LogIdOf<Config>>,
            ) -> Result<(), io::Error> {
                self.0.borrow_mut().committed = committed;
                Ok(())
            }

            async fn read_committed(&mut self) -> Result<Option<LogIdOf<Config>>, io::Error> {
                Ok(self.0.borrow().committed)
            }

            async fn append<I>(
                &mut self,
                entries: I,
                callback: IOFlushed<Config>,
            ) -> Result<(), io::Error>
            where
                I: IntoIterator<Item = EntryOf<Config>> + OptionalSend,
                I::IntoIter: OptionalSend,
            {
                let mut log = self.0.borrow_mut();
                for entry in entries {
                    log.entries.insert(entry.log_id.index(), entry);
                }
                callback.io_completed(Ok(()));
                Ok(())
            }

            async fn truncate_after(
                &mut self,
                last_log_id: Option<LogIdOf<Config>>,
            ) -> Result<(), io::Error> {
                let from = last_log_id.map_or(0, |id| id.index() + 1);
                self.0.borrow_mut().entries.split_off(&from);
                Ok(())
            }

            async fn purge(&mut self, log_id: LogIdOf<Config>) -> Result<(), io::Error> {
                let mut log = self.0.borrow_mut();
                log.entries = log.entries.split_off(&(log_id.index() + 1));
                log.purged = Some(log_id);
                Ok(())
            }
        }

        #[derive(Debug, Default)]
        struct Applied {
            last: Option<LogIdOf<Config>>,
            membership: StoredMembershipOf<Config>,
            writes: Vec<String>,
        }

        /// Records what it applies; its snapshots carry metadata only.
        #[derive(Debug, Default, Clone)]
        pub struct StateMachine(Rc<RefCell<Applied>>);

        impl StateMachine {
            pub fn applied(&self) -> Vec<String> {
                self.0.borrow().writes.clone()
            }
        }

        impl RaftSnapshotBuilder<Config> for StateMachine {
            type SnapshotData = ();

            async fn build_snapshot(&mut self) -> Result<SnapshotOf<Config, ()>, io::Error> {
                let applied = self.0.borrow();
                Ok(SnapshotOf::<Config, ()> {
                    meta: SnapshotMetaOf::<Config> {
                        last_log_id: applied.last,
                        last_membership: applied.membership.clone(),
                    },
                    snapshot: (),
                })
            }
        }

        impl RaftStateMachine<Config> for StateMachine {
            type SnapshotData = ();
            type SnapshotBuilder = Self;

            async fn applied_state(
                &mut self,
            ) -> Result<(Option<LogIdOf<Config>>, StoredMembershipOf<Config>), io::Error>
            {
                let applied = self.0.borrow();
                Ok((applied.last, applied.membership.clone()))
            }

            async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
            where
                Strm:
                    Stream<Item = Result<EntryResponder<Config>, io::Error>> + Unpin + OptionalSend,
            {
                while let Some((entry, responder)) = entries.try_next().await? {
                    let mut applied = self.0.borrow_mut();
                    applied.last = Some(entry.log_id);
                    let response = match entry.payload {
                        EntryPayload::Blank => String::new(),
                        EntryPayload::Normal(write) => {
                            let response = format!("applied {write}");
                            applied.writes.push(write);
                            response
                        }
                        EntryPayload::Membership(membership) => {
                            applied.membership =
                                StoredMembership::new(Some(entry.log_id), membership);
                            String::new()
                        }
                    };
                    if let Some(responder) = responder {
                        responder.send(response);
                    }
                }
                Ok(())
            }

            async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
                self.clone()
            }

            async fn install_snapshot(
                &mut self,
                meta: &SnapshotMetaOf<Config>,
                _snapshot: (),
            ) -> Result<(), io::Error> {
                let mut applied = self.0.borrow_mut();
                applied.last = meta.last_log_id;
                applied.membership = meta.last_membership.clone();
                Ok(())
            }

            async fn get_current_snapshot(
                &mut self,
            ) -> Result<Option<SnapshotOf<Config, ()>>, io::Error> {
                Ok(None)
            }
        }

        /// The network of a one-node cluster: there is nobody to reach.
        pub struct NoPeers;

        fn unreachable() -> Unreachable<Config> {
            Unreachable::new(&io::Error::other("a single-node cluster has no peers"))
        }

        impl RaftNetworkFactory<Config> for NoPeers {
            type Network = NoPeers;

            async fn new_client(&mut self, _target: u64, _node: &openraft::BasicNode) -> NoPeers {
                NoPeers
            }
        }

        impl RaftNetworkV2<Config> for NoPeers {
            type SnapshotData = ();

            async fn append_entries(
                &mut self,
                _rpc: AppendEntriesRequest<Config>,
                _option: RPCOption,
            ) -> Result<AppendEntriesResponse<Config>, RPCError<Config>> {
                Err(RPCError::Unreachable(unreachable()))
            }

            async fn vote(
                &mut self,
                _rpc: VoteRequest<Config>,
                _option: RPCOption,
            ) -> Result<VoteResponse<Config>, RPCError<Config>> {
                Err(RPCError::Unreachable(unreachable()))
            }

            async fn full_snapshot(
                &mut self,
                _vote: VoteOf<Config>,
                _snapshot: SnapshotOf<Config, ()>,
                _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
                _option: RPCOption,
            ) -> Result<SnapshotResponse<Config>, StreamingError<Config>> {
                Err(StreamingError::Unreachable(unreachable()))
            }
        }
    }
}
