//! `[metrics]`: the Prometheus endpoint (plain HTTP, `observability::exporter`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Invalid;

/// `[metrics]`: the Prometheus endpoint (plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            enabled: true,
        }
    }
}

impl MetricsConfig {
    pub(super) fn validate(&self, grpc_listen: SocketAddr) -> Result<(), Invalid> {
        // Port 0 asks the kernel for a free port for each listener: no clash.
        if self.enabled && self.listen == grpc_listen && self.listen.port() != 0 {
            return Err(Invalid::new(
                "metrics.listen",
                self.listen,
                "must differ from the gRPC `listen` address",
            ));
        }
        Ok(())
    }
}
