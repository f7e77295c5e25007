//! Controller calls from one node to another over `walrs.v1.Replication`: proposing a
//! record to the metadata log's leader, fetching the log from a replica of it, and asking a
//! node whether it applied the log up to an offset (`server::controller` drives them).
//!
//! Owns: one short-lived connection per call (these calls are rare; the Raft traffic has
//! its own long-lived links in `transport`), bounded by [`ADMIN_CALL_TIMEOUT`] plus the
//! wait the call asks for.
//! Must never: decide what to propose, or touch the local shards (the server does).

use std::time::Duration;

use tonic::Status;

use super::Membership;
use super::transport::{LinkOptions, endpoint};
use crate::proto::v1 as pb;
use crate::proto::v1::replication_client::ReplicationClient;

/// How long one call to a peer may take, connecting included, beyond the wait it asks for.
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a peer did not do what it was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("node {node} is not a member of the cluster")]
    UnknownNode { node: u64 },
    #[error("node {node} at {addr} could not be reached: {reason}")]
    Unreachable {
        node: u64,
        addr: String,
        reason: String,
    },
    #[error("node {node} does not lead the metadata log; node {leader} does")]
    NotLeader { node: u64, leader: u64 },
    #[error("node {node} at {addr} refused: {}", status.message())]
    Refused {
        node: u64,
        addr: String,
        status: Status,
    },
}

/// Makes admin calls to the other nodes of a membership.
#[derive(Clone)]
pub struct PeerAdmin {
    membership: Membership,
    options: LinkOptions,
    liveness: super::transport::PeerLiveness,
}

impl PeerAdmin {
    pub fn new(
        membership: Membership,
        options: LinkOptions,
        liveness: super::transport::PeerLiveness,
    ) -> PeerAdmin {
        PeerAdmin {
            membership,
            options,
            liveness,
        }
    }

    /// True when the replication link to `node` is connected now.
    pub fn is_up(&self, node: u64) -> bool {
        self.liveness.is_up(node)
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    async fn client(
        &self,
        node: u64,
        timeout: Duration,
    ) -> Result<(ReplicationClient<tonic::transport::Channel>, String), PeerError> {
        let addr = self
            .membership
            .addr_of(node)
            .ok_or(PeerError::UnknownNode { node })?;
        let unreachable = |reason: String| PeerError::Unreachable {
            node,
            addr: addr.clone(),
            reason,
        };
        let channel = endpoint(&addr, &self.options)
            .map_err(unreachable)?
            .timeout(timeout)
            .connect()
            .await
            .map_err(|e| unreachable(super::transport::error_chain(&e)))?;
        Ok((ReplicationClient::new(channel), addr))
    }

    fn refused(node: u64, addr: String, status: Status) -> PeerError {
        match status.code() {
            // The call did not get through: the node is down, or going down.
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                PeerError::Unreachable {
                    node,
                    addr,
                    reason: status.message().to_owned(),
                }
            }
            _ => PeerError::Refused { node, addr, status },
        }
    }

    /// Asks `node` to append a record to the metadata log: the offset once committed.
    /// A node that does not lead the log answers [`PeerError::NotLeader`].
    pub async fn propose_metadata(
        &self,
        node: u64,
        record: pb::MetadataRecord,
        timeout: Duration,
    ) -> Result<u64, PeerError> {
        let (mut client, addr) = self.client(node, timeout).await?;
        let request = pb::ProposeMetadataRequest {
            record: Some(record),
        };
        match client.propose_metadata(request).await {
            Ok(response) => Ok(response.into_inner().offset),
            Err(status) => match crate::client::leader_hint(&status) {
                Some(hint) => Err(PeerError::NotLeader {
                    node,
                    leader: u64::from(hint.node_id),
                }),
                None => Err(Self::refused(node, addr, status)),
            },
        }
    }

    /// Reads `node`'s committed metadata log from `from_offset`, waiting up to `max_wait`
    /// for something new.
    pub async fn fetch_metadata(
        &self,
        node: u64,
        from_offset: u64,
        max_wait: Duration,
    ) -> Result<pb::FetchMetadataResponse, PeerError> {
        let (mut client, addr) = self.client(node, ADMIN_CALL_TIMEOUT + max_wait).await?;
        let request = pb::FetchMetadataRequest {
            from_offset,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
        };
        match client.fetch_metadata(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(Self::refused(node, addr, status)),
        }
    }

    /// Waits up to `max_wait` for `node` to apply the metadata log up to `offset`: how far
    /// it got.
    pub async fn sync_metadata(
        &self,
        node: u64,
        offset: u64,
        max_wait: Duration,
    ) -> Result<u64, PeerError> {
        let (mut client, addr) = self.client(node, ADMIN_CALL_TIMEOUT + max_wait).await?;
        let request = pb::SyncMetadataRequest {
            offset,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
        };
        match client.sync_metadata(request).await {
            Ok(response) => Ok(response.into_inner().applied),
            Err(status) => Err(Self::refused(node, addr, status)),
        }
    }
}
