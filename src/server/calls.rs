//! Call tracking: which calls are in progress (so that shutdown waits for exactly them),
//! and the counting and logging of each call's outcome.
//!
//! Owns `InFlight` and its `CallGuard`s, the wrappers that finish an `RpcCall` with the
//! call's final code, and [`DrivenStream`] with its [`Answers`] queue. Must never decide a
//! call's outcome: it only observes it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures::Stream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::errors::{Error, Result};
use crate::observability::{ActiveStream, Rpc, RpcCall};

/// Calls in progress (stream tasks included), so that shutdown can wait for exactly them:
/// an idle client connection must not hold the server open.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl InFlight {
    /// Counts a call in progress until the guard is dropped.
    pub(super) fn enter(self: &Arc<Self>) -> CallGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// Resolves once no call is in progress.
    pub(crate) async fn wait_idle(&self) {
        loop {
            // Registered before the count is read, so a guard dropped in between wakes it.
            let idle = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One call in progress; dropping it ends the call.
pub(super) struct CallGuard(Arc<InFlight>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let before = self.0.count.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a call guard dropped with no call in flight");
        if before == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The status code of a call's outcome.
fn code_of<T>(result: &Result<T, Status>) -> Code {
    result.as_ref().map_or_else(Status::code, |_| Code::Ok)
}

/// Runs a unary call's work in its span, then counts and (at debug level) logs it.
pub(super) async fn observed<T>(
    call: RpcCall,
    identity: impl FnOnce() -> Option<String>,
    work: impl Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    let result = work.instrument(call.span()).await.map_err(Status::from);
    call.finish(code_of(&result), identity);
    result.map(Response::new)
}

/// Starts a stream's task, which counts as in flight and as an active stream and, when it
/// ends, counts and logs the call with the stream's final code.
pub(super) fn spawn_stream(
    in_flight: &Arc<InFlight>,
    call: RpcCall,
    rpc: Rpc,
    identity: Option<String>,
    task: impl Future<Output = Code> + Send + 'static,
) {
    let guard = in_flight.enter();
    let active = ActiveStream::open(rpc);
    let span = call.span();
    tokio::spawn(async move {
        let code = task.instrument(span).await;
        call.finish(code, || identity);
        drop(active);
        drop(guard);
    });
}

/// A stream's answers on their way from its work to the response stream: a FIFO bounded by
/// `capacity`, allocated as it fills (the response stream usually empties it at once).
pub(super) struct Answers<T> {
    shared: Arc<Mutex<Queue<T>>>,
    capacity: usize,
}

struct Queue<T> {
    answers: VecDeque<Result<T, Status>>,
    /// The work's waker while it waits for room.
    waiting: Option<Waker>,
}

impl<T> Answers<T> {
    fn new(capacity: usize) -> Answers<T> {
        Answers {
            shared: Arc::new(Mutex::new(Queue {
                answers: VecDeque::new(),
                waiting: None,
            })),
            capacity: capacity.max(1),
        }
    }

    /// The other end of the same queue.
    fn end(&self) -> Answers<T> {
        Answers {
            shared: self.shared.clone(),
            capacity: self.capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Both ends are polled by one task, one at a time: the lock is never contended, and
        // a panic while it is held leaves a queue that is still whole.
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `answer`; while the queue is full, waits until the response stream takes one.
    pub(super) async fn send(&self, answer: Result<T, Status>) {
        let mut answer = Some(answer);
        std::future::poll_fn(|cx| {
            let mut queue = self.lock();
            if queue.answers.len() >= self.capacity {
                queue.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
            queue.answers.push_back(answer.take().expect("sent once"));
            Poll::Ready(())
        })
        .await
    }

    /// The oldest answer, waking the work if it waits for room.
    fn take(&self) -> Option<Result<T, Status>> {
        let mut queue = self.lock();
        let answer = queue.answers.pop_front()?;
        if let Some(waiting) = queue.waiting.take() {
            waiting.wake();
        }
        Some(answer)
    }
}

/// What a stream call holds until it ends: its counts and how to log it.
struct StreamCall {
    call: RpcCall,
    identity: Option<String>,
    _active: ActiveStream,
    _guard: CallGuard,
}

/// A stream call whose work runs inside its response stream, not in a task of its own: the
/// stream polls the work whenever it is polled, so an answer the work queues goes out from
/// the task that writes the response, with no wake-up of a second task in between (issue 14:
/// one hop less per append).
///
/// It counts as in flight and as an active stream while it lives. When the work ends, the
/// call is counted and logged with the work's final code; when the stream is dropped first
/// (the client went away, or its connection broke), with `CANCELLED`. Dropping the stream
/// drops the work: what the work had already handed to the shards still completes there.
///
/// Invariant: the work is polled only here, and every poll of the stream that finds no answer
/// queued polls the work.
pub(super) struct DrivenStream<T> {
    work: Option<Pin<Box<dyn Future<Output = Code> + Send>>>,
    answers: Answers<T>,
    call: Option<StreamCall>,
}

impl<T> DrivenStream<T> {
    /// The stream of `call`: `work` runs in its span with a queue of `capacity` answers (at
    /// least 1), made by `start`.
    pub(super) fn start<W>(
        in_flight: &Arc<InFlight>,
        call: RpcCall,
        identity: Option<String>,
        capacity: usize,
        start: impl FnOnce(Answers<T>) -> W,
    ) -> DrivenStream<T>
    where
        W: Future<Output = Code> + Send + 'static,
    {
        let answers = Answers::new(capacity);
        let work = start(answers.end()).instrument(call.span());
        DrivenStream {
            work: Some(Box::pin(work)),
            answers,
            call: Some(StreamCall {
                _active: ActiveStream::open(call.rpc()),
                call,
                identity,
                _guard: in_flight.enter(),
            }),
        }
    }

    fn finish(&mut self, code: Code) {
        if let Some(StreamCall { call, identity, .. }) = self.call.take() {
            call.finish(code, || identity);
        }
    }
}

impl<T> Stream for DrivenStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(answer) = this.answers.take() {
            return Poll::Ready(Some(answer));
        }
        let Some(work) = this.work.as_mut() else {
            return Poll::Ready(None);
        };
        let done = work.as_mut().poll(cx);
        if let Poll::Ready(code) = done {
            this.work = None;
            this.finish(code);
        }
        match this.answers.take() {
            Some(answer) => Poll::Ready(Some(answer)),
            None if this.work.is_none() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl<T> Drop for DrivenStream<T> {
    fn drop(&mut self) {
        // Dropped before its work ended: the client is gone.
        self.finish(Code::Cancelled);
    }
}

/// Finishes a call refused before its stream started.
pub(super) fn refused(
    call: RpcCall,
    identity: impl FnOnce() -> Option<String>,
    error: Error,
) -> Status {
    let status = Status::from(error);
    call.finish(status.code(), identity);
    status
}

/// A request's metadata and extensions without its message.
pub(super) fn strip<T>(request: Request<T>) -> (Request<()>, T) {
    let (metadata, extensions, message) = request.into_parts();
    (Request::from_parts(metadata, extensions, ()), message)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wait_idle_returns_at_once_without_calls() {
        let in_flight = Arc::new(InFlight::default());
        tokio::time::timeout(Duration::from_secs(1), in_flight.wait_idle())
            .await
            .expect("no call is in flight");
    }

    #[tokio::test]
    async fn wait_idle_waits_for_the_last_guard() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.enter();
        let second = in_flight.enter();
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.wait_idle().await }
        });
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one call is still in flight");
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the last guard wakes the waiter")
            .unwrap();
    }

    /// A driven stream whose work sends `n` numbered answers, counting each one queued in
    /// `sent`, then ends with OK.
    fn counting_stream(
        in_flight: &Arc<InFlight>,
        n: usize,
        capacity: usize,
        sent: Arc<AtomicUsize>,
    ) -> DrivenStream<usize> {
        let call = RpcCall::start(Rpc::AppendStream, "", None);
        DrivenStream::start(in_flight, call, None, capacity, |answers| async move {
            for i in 0..n {
                answers.send(Ok(i)).await;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            Code::Ok
        })
    }

    #[tokio::test]
    async fn a_driven_stream_answers_in_order_then_ends_and_leaves_nothing_in_flight() {
        use futures::StreamExt;
        let in_flight = Arc::new(InFlight::default());
        let sent = Arc::new(AtomicUsize::new(0));
        let mut stream = counting_stream(&in_flight, 5, 2, sent.clone());
        let mut answers = Vec::new();
        while let Some(answer) = stream.next().await {
            answers.push(answer.unwrap());
        }
        assert_eq!(answers, [0, 1, 2, 3, 4]);
        assert_eq!(sent.load(Ordering::SeqCst), 5);
        // The stream still exists: its call ended with its work.
        tokio::time::timeout(Duration::from_secs(1), in_flight.wait_idle())
            .await
            .expect("the finished stream is no longer in flight");
        drop(stream);
    }

    /// Runs `body` with a Prometheus recorder of its own and returns what it rendered.
    fn rendered(body: impl FnOnce()) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, body);
        handle.render()
    }

    /// The line of `text` for the AppendStream calls that ended with `code`.
    fn calls_ended(text: &str, code: &str) -> Option<String> {
        text.lines()
            .find(|l| {
                l.starts_with("walrs_requests_total{")
                    && l.contains("rpc=\"AppendStream\"")
                    && l.contains(&format!("code=\"{code}\""))
            })
            .map(str::to_owned)
    }

    #[test]
    fn a_driven_stream_dropped_early_is_a_cancelled_call() {
        let in_flight = Arc::new(InFlight::default());
        let text = rendered(|| {
            let call = RpcCall::start(Rpc::AppendStream, "", None);
            let mut stream: DrivenStream<()> =
                DrivenStream::start(&in_flight, call, None, 4, |_answers| async move {
                    std::future::pending::<()>().await;
                    Code::Ok
                });
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut stream).poll_next(&mut cx).is_pending());
            drop(stream);
        });
        let cancelled = calls_ended(&text, "CANCELLED").unwrap_or_else(|| panic!("{text}"));
        assert!(cancelled.ends_with(" 1"), "{cancelled}");
        assert!(calls_ended(&text, "OK").is_none(), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("walrs_active_streams{") && l.ends_with(" 0")),
            "the active-streams gauge is back to 0: {text}"
        );
    }

    #[test]
    fn a_driven_stream_keeps_its_works_code_when_dropped_with_answers_unread() {
        let in_flight = Arc::new(InFlight::default());
        let text = rendered(|| {
            let call = RpcCall::start(Rpc::AppendStream, "", None);
            let mut stream: DrivenStream<u32> =
                DrivenStream::start(&in_flight, call, None, 4, |answers| async move {
                    answers.send(Ok(1)).await;
                    answers.send(Err(Status::internal("disk"))).await;
                    Code::Internal
                });
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let first = Pin::new(&mut stream).poll_next(&mut cx);
            assert!(matches!(first, Poll::Ready(Some(Ok(1)))), "{first:?}");
            // The failure is still queued when the client goes away.
            drop(stream);
        });
        let internal = calls_ended(&text, "INTERNAL").unwrap_or_else(|| panic!("{text}"));
        assert!(internal.ends_with(" 1"), "{internal}");
        assert!(calls_ended(&text, "CANCELLED").is_none(), "{text}");
    }

    #[test]
    fn a_driven_streams_work_waits_while_its_answers_queue_is_full() {
        let in_flight = Arc::new(InFlight::default());
        let sent = Arc::new(AtomicUsize::new(0));
        let mut stream = counting_stream(&in_flight, 3, 1, sent.clone());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let first = Pin::new(&mut stream).poll_next(&mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(0)))), "{first:?}");
        // One answer fit in the queue; the second waited for room: nothing beyond the
        // capacity was queued.
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        let second = Pin::new(&mut stream).poll_next(&mut cx);
        assert!(matches!(second, Poll::Ready(Some(Ok(1)))), "{second:?}");
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn strip_keeps_the_metadata() {
        let mut request = Request::new(7u32);
        request.metadata_mut().insert("x-k", "v".parse().unwrap());
        let (bare, message) = strip(request);
        assert_eq!(message, 7);
        assert_eq!(bare.metadata().get("x-k").unwrap(), "v");
    }

    #[test]
    fn the_code_of_an_outcome() {
        assert_eq!(code_of(&Ok::<(), Status>(())), Code::Ok);
        assert_eq!(
            code_of(&Err::<(), _>(Status::not_found("x"))),
            Code::NotFound
        );
    }
}
