//! The server's serving state, reported in one place to gRPC health (`grpc.health.v1`, for
//! the `walrs.v1.Log` service and for the server as a whole, `""`), to `/health` on the
//! metrics listener, and to the `walrs_serving` gauge.
//!
//! Invariant: all three say the same thing. NOT_SERVING from creation through start-up,
//! SERVING once the shards are open and the listener serves, NOT_SERVING again from the
//! moment shutdown begins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The serving state; cheap to clone.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// The gRPC service name reported besides `""`.
    service: &'static str,
    serving: Arc<AtomicBool>,
}

impl Health {
    /// Starts NOT_SERVING.
    pub async fn new(reporter: HealthReporter, service: &'static str) -> Health {
        let health = Health {
            reporter,
            service,
            serving: Arc::new(AtomicBool::new(false)),
        };
        health.set(false).await;
        health
    }

    /// Reports SERVING (`true`) or NOT_SERVING everywhere.
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.serving.store(serving, Ordering::Release);
        super::catalog::serving(serving);
        self.reporter.set_service_status(self.service, status).await;
        self.reporter.set_service_status("", status).await;
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}
