//! Admin calls from one node to another over `walrs.v1.Replication`: placing a topic's
//! replicas and dropping them, so that a CreateTopic or DeleteTopic made on any node reaches
//! every node.
//!
//! Owns: one short-lived connection per call (admin calls are rare; the Raft traffic has its
//! own long-lived links in `transport`), bounded by [`ADMIN_CALL_TIMEOUT`].
//! Must never: decide the placement (the asking node computed it, `placement`) or touch the
//! local shards (the server does, for this node).

use std::time::Duration;

use tonic::Status;

use super::Membership;
use super::transport::{LinkOptions, endpoint};
use crate::proto::v1 as pb;
use crate::proto::v1::replication_client::ReplicationClient;

/// How long one admin call to a peer may take, connecting included, before the work it asks
/// for: a placement opens every partition on the peer's disk, which takes its time with
/// many partitions (see [`PeerAdmin::place_topic`]).
pub const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// More time a placement may take per partition it creates.
pub const PLACE_TIME_PER_PARTITION: Duration = Duration::from_millis(100);

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
            .ok_or(PeerError::UnknownNode { node })?
            .to_owned();
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

    /// Asks `node` to create its replicas of a topic; `Ok(false)` when it already had them.
    pub async fn place_topic(
        &self,
        node: u64,
        request: pb::PlaceTopicRequest,
    ) -> Result<bool, PeerError> {
        // 1,000 partitions take seconds to open on a busy disk; a timeout here would report
        // a creation that goes on to succeed as failed.
        let timeout = ADMIN_CALL_TIMEOUT + PLACE_TIME_PER_PARTITION * request.partitions;
        let (mut client, addr) = self.client(node, timeout).await?;
        match client.place_topic(request).await {
            Ok(response) => Ok(response.into_inner().created),
            Err(status) => Err(Self::refused(node, addr, status)),
        }
    }

    /// Every topic `node` knows, with its placement.
    pub async fn list_placements(
        &self,
        node: u64,
    ) -> Result<Vec<pb::PlaceTopicRequest>, PeerError> {
        let (mut client, addr) = self.client(node, ADMIN_CALL_TIMEOUT).await?;
        match client.list_placements(pb::ListPlacementsRequest {}).await {
            Ok(response) => Ok(response.into_inner().topics),
            Err(status) => Err(Self::refused(node, addr, status)),
        }
    }

    /// Asks `node` to delete its replicas of a topic.
    pub async fn drop_topic(&self, node: u64, name: &str) -> Result<(), PeerError> {
        let (mut client, addr) = self.client(node, ADMIN_CALL_TIMEOUT).await?;
        let request = pb::DropTopicRequest {
            name: name.to_owned(),
        };
        match client.drop_topic(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(Self::refused(node, addr, status)),
        }
    }
}
