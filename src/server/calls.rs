//! Call tracking: which calls are in progress (so that shutdown waits for exactly them),
//! and the counting and logging of each call's outcome.
//!
//! Owns `InFlight` and its `CallGuard`s, and the wrappers that finish an `RpcCall` with the
//! call's final code. Must never decide a call's outcome: it only observes it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
