//! The read pipeline: Read and ReadStream.
//!
//! A read is checked (running, topic name, ACL), capped by the server's limits, served by
//! the owning shard, and, when it finds nothing and the client asked to wait, waits on the
//! partition's high watermark (`ShardSet::wait_for`, woken by commits: never polling). A
//! ReadStream sends through a small channel and reads on only when the client has taken
//! what was sent. Must never hold records beyond the response being built.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Code, Request, Status};

use super::acl::Action;
use super::errors::Result;
use super::service::Inner;
use super::validate::read_limits;
use crate::observability;
use crate::proto::v1::{ReadRequest, ReadResponse, Record};

/// Responses a ReadStream may have queued for a slow client before it stops reading.
pub(super) const READ_STREAM_BUFFER: usize = 2;
/// How long one wait of a following ReadStream lasts before it re-checks; any commit wakes
/// it earlier, so this only bounds how long a vanished partition goes unnoticed.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

impl Inner {
    /// The record and byte caps of a read: 0 or anything above the server's limit is the limit.
    pub(super) fn check_read(&self, request: &Request<()>, read: &ReadRequest) -> Result<()> {
        self.check_running()?;
        self.check_topic_name(&read.topic)?;
        self.authorize(request, Action::Consume, &read.topic)?;
        Ok(())
    }

    /// One read, without waiting.
    async fn read_once(&self, read: &ReadRequest, offset: u64) -> Result<ReadResponse> {
        let (bytes, records) = read_limits(read, &self.config.server);
        let result = self
            .shards
            .read(&read.topic, read.partition, offset, bytes, records)
            .await?;
        // One pass: measure (for the bytes-out counter) and convert.
        let mut bytes = 0u64;
        let records: Vec<Record> = result
            .records
            .into_iter()
            .map(|r| {
                bytes += r.encoded_len() as u64;
                Record::from(r)
            })
            .collect();
        if !records.is_empty() {
            observability::bytes_and_records_out(&read.topic, records.len() as u64, bytes);
        }
        Ok(ReadResponse {
            records,
            high_watermark: result.high_watermark,
            next_offset: result.next_offset,
        })
    }

    /// Waits until a record at `offset` is readable, `timeout` passes, or the server drains.
    async fn wait(&self, read: &ReadRequest, offset: u64, timeout: Duration) -> Result<()> {
        let mut draining = self.draining.clone();
        tokio::select! {
            hw = self.shards.wait_for(&read.topic, read.partition, offset, timeout) => {
                hw?;
            }
            _ = async { draining.wait_for(|d| *d).await.map(|_| ()) } => {}
        }
        Ok(())
    }

    pub(super) async fn read(&self, read: &ReadRequest) -> Result<ReadResponse> {
        let response = self.read_once(read, read.offset).await?;
        let wait_ms = u64::from(read.max_wait_ms).min(self.config.server.read_max_wait_ms_max);
        if !response.records.is_empty() || wait_ms == 0 {
            return Ok(response);
        }
        self.wait(read, read.offset, Duration::from_millis(wait_ms))
            .await?;
        if self.is_draining() {
            return Ok(response);
        }
        self.read_once(read, read.offset).await
    }

    /// Feeds a ReadStream until it is caught up (without follow), the client goes away, the
    /// server drains, or an error (which is sent as the stream's last item).
    pub(super) async fn read_stream(
        self: Arc<Self>,
        read: ReadRequest,
        tx: mpsc::Sender<Result<ReadResponse, Status>>,
    ) -> Code {
        let mut offset = read.offset;
        let mut sent_any = false;
        loop {
            let response = match self.read_once(&read, offset).await {
                Ok(r) => r,
                Err(e) => {
                    let status = Status::from(e);
                    let code = status.code();
                    let _client_gone = tx.send(Err(status)).await;
                    return code;
                }
            };
            let empty = response.records.is_empty();
            offset = response.next_offset;
            if !empty || !sent_any {
                sent_any = true;
                if tx.send(Ok(response)).await.is_err() {
                    return Code::Cancelled; // the client went away
                }
            }
            if !empty {
                continue;
            }
            if !read.follow || self.is_draining() {
                return Code::Ok;
            }
            tokio::select! {
                waited = self.wait(&read, offset, FOLLOW_WAIT) => {
                    if let Err(e) = waited {
                        let status = Status::from(e);
                        let code = status.code();
                        let _client_gone = tx.send(Err(status)).await;
                        return code;
                    }
                }
                _ = tx.closed() => return Code::Cancelled,
            }
            if self.is_draining() {
                return Code::Ok;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn limits() -> config::ServerConfig {
        config::ServerConfig {
            read_bytes_max: 1000,
            read_records_max: 10,
            ..config::ServerConfig::default()
        }
    }

    #[test]
    fn zero_means_the_server_limit() {
        let read = ReadRequest::default();
        assert_eq!(read_limits(&read, &limits()), (1000, 10));
    }

    #[test]
    fn a_smaller_ask_is_kept_and_a_larger_one_capped() {
        let small = ReadRequest {
            max_bytes: 10,
            max_records: 2,
            ..ReadRequest::default()
        };
        assert_eq!(read_limits(&small, &limits()), (10, 2));
        let large = ReadRequest {
            max_bytes: 1 << 30,
            max_records: 1 << 20,
            ..ReadRequest::default()
        };
        assert_eq!(read_limits(&large, &limits()), (1000, 10));
    }
}
