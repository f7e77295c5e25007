//! Counters of the server layer that the metrics exporter reads: connections and TLS
//! handshakes. Updated with relaxed atomics by the listener; never reset, never locked.
//!
//! Invariant: `connections_open` counts exactly the connections holding a
//! `server.connections_max` permit, so it never exceeds that limit.

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters; shared by the listener and whoever reports them.
#[derive(Debug, Default)]
pub struct ServerStats {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStatsSnapshot {
    /// TCP connections accepted since start, whether or not their handshake succeeded.
    pub connections_accepted: u64,
    /// Connections open now (handshaking or served).
    pub connections_open: u64,
    /// TLS handshakes that failed or timed out since start.
    pub tls_handshake_failures: u64,
}

impl ServerStats {
    pub fn snapshot(&self) -> ServerStatsSnapshot {
        ServerStatsSnapshot {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
            tls_handshake_failures: self.tls_handshake_failures.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        let before = self.connections_open.fetch_sub(1, Ordering::Relaxed);
        assert!(
            before > 0,
            "a connection closed that was never counted open"
        );
    }

    pub(crate) fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}
