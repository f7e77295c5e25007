//! Requests over the message size limit: `RESOURCE_EXHAUSTED` naming the limit and its
//! config key, where tonic answers `OUT_OF_RANGE` ("decoded message length too large").
//!
//! tonic checks a message's length in its frame header before buffering it (so an
//! oversized message is refused without being read), and fails the call with its own
//! status: trailers-only response headers for a unary request, an error item of the
//! request stream for AppendStream. `RequestSize` rewrites the first, `AppendStream` maps
//! the second with [`request_status`]. Must never touch any other status.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap};
use tonic::server::NamedService;
use tonic::{Code, Status};

/// The start of tonic's message for a request message over `max_decoding_message_size`.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// The limit on one request message, with where it comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageLimit {
    /// Bytes of one decoded request message.
    pub bytes_max: usize,
    /// The config key the limit is derived from, and its value.
    pub key: &'static str,
    pub key_value: u64,
}

impl MessageLimit {
    /// `status`, with tonic's size-limit status replaced by `RESOURCE_EXHAUSTED`.
    pub(crate) fn request_status(&self, status: Status) -> Status {
        if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_TOO_LARGE) {
            return status;
        }
        // "... found {len} bytes, the limit is: {limit} bytes"
        let found = status
            .message()
            .split("found ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .map_or_else(
                || "more than the limit".to_owned(),
                |n| format!("{n} bytes"),
            );
        Status::resource_exhausted(format!(
            "the request message is {found}, over the limit of {} bytes per message \
             (derived from {} = {}: twice it plus framing); send smaller batches",
            self.bytes_max, self.key, self.key_value
        ))
    }

    /// Rewrites a trailers-only response's status in place.
    fn rewrite(&self, headers: &mut HeaderMap) {
        let Some(status) = Status::from_header_map(headers) else {
            return;
        };
        if status.code() != Code::OutOfRange {
            return;
        }
        let rewritten = self.request_status(status);
        if rewritten.code() == Code::OutOfRange {
            return;
        }
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        headers.remove("grpc-status-details-bin");
        if let Err(e) = rewritten.add_header(headers) {
            tracing::warn!(error = %e, "cannot write the size-limit status");
        }
    }
}

/// A gRPC service whose size-limit refusals are `RESOURCE_EXHAUSTED` (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct RequestSize<S> {
    inner: S,
    limit: MessageLimit,
}

impl<S> RequestSize<S> {
    pub(crate) fn new(inner: S, limit: MessageLimit) -> RequestSize<S> {
        RequestSize { inner, limit }
    }
}

impl<S: NamedService> NamedService for RequestSize<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for RequestSize<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<R>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        let limit = self.limit;
        Box::pin(async move {
            let mut response = response.await?;
            limit.rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: MessageLimit = MessageLimit {
        bytes_max: 3 << 20,
        key: "storage.batch_bytes_max",
        key_value: 1 << 20,
    };

    #[test]
    fn tonics_size_status_becomes_resource_exhausted() {
        let tonic = Status::out_of_range(format!(
            "{TONIC_TOO_LARGE}: found 9999999 bytes, the limit is: 3145728 bytes"
        ));
        let status = LIMIT.request_status(tonic);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("9999999 bytes"), "{status:?}");
        assert!(status.message().contains("3145728"), "{status:?}");
        assert!(
            status.message().contains("storage.batch_bytes_max"),
            "{status:?}"
        );
    }

    #[test]
    fn other_statuses_are_untouched() {
        let offset = Status::out_of_range("offset 9 is outside the log");
        assert_eq!(LIMIT.request_status(offset).code(), Code::OutOfRange);
        let internal = Status::internal(TONIC_TOO_LARGE);
        assert_eq!(LIMIT.request_status(internal).code(), Code::Internal);
    }

    #[test]
    fn headers_are_rewritten_in_place() {
        let mut headers = HeaderMap::new();
        Status::out_of_range(format!(
            "{TONIC_TOO_LARGE}: found 5 bytes, the limit is: 4 bytes"
        ))
        .add_header(&mut headers)
        .unwrap();
        LIMIT.rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("5 bytes"));
    }
}
