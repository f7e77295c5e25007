//! One RPC call as seen by operators: a debug-level span with method, topic, partition,
//! identity, status and latency, and the request and error counters by RPC and status code.
//!
//! The span costs nothing when debug logging is off: it is disabled at its call site, and
//! the identity (a certificate parse) is computed only for an enabled span.

use std::time::Instant;

use metrics::{counter, gauge};
use tracing::Span;
use tracing::field::Empty;

use super::catalog::names::{ACTIVE_STREAMS, REQUEST_ERRORS_TOTAL, REQUESTS_TOTAL};

/// The RPCs of `walrs.v1.Log`, as metric labels and span fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Append,
    AppendStream,
    Read,
    ReadStream,
    Truncate,
    CreateTopic,
    DeleteTopic,
    ListTopics,
    DescribeTopic,
    DescribeCluster,
    ReassignPartition,
    DecommissionNode,
}

impl Rpc {
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Append => "Append",
            Rpc::AppendStream => "AppendStream",
            Rpc::Read => "Read",
            Rpc::ReadStream => "ReadStream",
            Rpc::Truncate => "Truncate",
            Rpc::CreateTopic => "CreateTopic",
            Rpc::DeleteTopic => "DeleteTopic",
            Rpc::ListTopics => "ListTopics",
            Rpc::DescribeTopic => "DescribeTopic",
            Rpc::DescribeCluster => "DescribeCluster",
            Rpc::ReassignPartition => "ReassignPartition",
            Rpc::DecommissionNode => "DecommissionNode",
        }
    }
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`, ...), as in the gRPC spec.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A call in progress. [`finish`](RpcCall::finish) it exactly once.
pub struct RpcCall {
    rpc: Rpc,
    started: Instant,
    span: Span,
}

impl RpcCall {
    /// `topic` and `partition` as the request names them (empty / `None` when it has none).
    pub fn start(rpc: Rpc, topic: &str, partition: Option<u32>) -> RpcCall {
        let span = tracing::debug_span!(
            "request",
            method = rpc.name(),
            topic,
            partition,
            identity = Empty,
            status = Empty,
            latency_us = Empty,
        );
        RpcCall {
            rpc,
            started: Instant::now(),
            span,
        }
    }

    /// Which RPC this call is.
    pub fn rpc(&self) -> Rpc {
        self.rpc
    }

    /// The span to run the call's work in.
    pub fn span(&self) -> Span {
        self.span.clone()
    }

    /// Counts the call by its final status and, with debug logging on, logs it.
    /// `identity` is asked only when the span is enabled.
    pub fn finish(self, code: tonic::Code, identity: impl FnOnce() -> Option<String>) {
        let code = code_name(code);
        let rpc = self.rpc.name();
        counter!(REQUESTS_TOTAL, "rpc" => rpc, "code" => code).increment(1);
        if code != "OK" {
            counter!(REQUEST_ERRORS_TOTAL, "rpc" => rpc, "code" => code).increment(1);
        }
        if self.span.is_disabled() {
            return;
        }
        let latency_us = self.started.elapsed().as_micros() as u64;
        let identity = identity();
        self.span.record("status", code);
        self.span.record("latency_us", latency_us);
        if let Some(identity) = &identity {
            self.span.record("identity", identity.as_str());
        }
        self.span.in_scope(|| {
            tracing::debug!(
                method = rpc,
                status = code,
                latency_us,
                identity = identity.as_deref(),
                "request finished"
            );
        });
    }
}

/// An open stream, counted in `walrs_active_streams` until dropped.
pub struct ActiveStream(Rpc);

impl ActiveStream {
    pub fn open(rpc: Rpc) -> ActiveStream {
        gauge!(ACTIVE_STREAMS, "rpc" => rpc.name()).increment(1.0);
        ActiveStream(rpc)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        gauge!(ACTIVE_STREAMS, "rpc" => self.0.name()).decrement(1.0);
    }
}
