//! The campaign's load: idempotent producers appending unique values in batches of random
//! size to random partitions, and one following consumer per partition, all recording what
//! they saw in the [`Ledger`] the checker reads.
//!
//! Owns: the ledger (what was sent, acknowledged, refused, left indeterminate, consumed)
//! and the history lines a violation is explained from. A producer retries a batch with its
//! sequence through the project's `RoutingClient` (leader hints, backoff) within a budget
//! derived from the election timings; past it, or after a definite refusal, the batch's
//! outcome is final and the producer starts over under a new producer id (its sequence
//! state is unknown). Must never: send a value twice under two sequences, block the
//! campaign past its stop (each loop ends within one append budget or one poll of its
//! stop flag), or decide what is a violation (the checker does).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;
use walrs::client::{Client, ClientTls, ReadOptions, RoutingClient, Sequences, record};
use walrs::proto::v1::AppendRequest;

use super::nodes::Timings;
use crate::seeded::Rng;

pub const TOPIC: &str = "chaos";

/// A value's identity: producer (bits 40..), batch (bits 4..40), record in the batch (bits
/// 0..4). The ledger and the checker hold identities, not values, so that an hour's run
/// fits in memory; every value read is checked byte for byte against its identity.
pub type Id = u64;

/// Identities at or above this were read but never made: corrupt or foreign bytes (the
/// low bits are a fingerprint of what was read).
pub const UNKNOWN_ID: Id = 1 << 63;

const RECORDS_PER_BATCH_MAX: u64 = 16;

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The value of identity `id`: `v<id in hex>-` then 8 to 231 filler bytes, all derived
/// from `id`.
pub fn value_of(id: Id) -> String {
    let mut h = mix(id);
    let len = 8 + (h % 224) as usize;
    let mut v = format!("v{id:x}-");
    for _ in 0..len {
        h = mix(h);
        v.push((b'a' + (h % 26) as u8) as char);
    }
    v
}

/// The identity of a value read back: its own when every byte is what [`value_of`] makes,
/// else an unknown one (>= [`UNKNOWN_ID`]).
pub fn id_of(value: &[u8]) -> Id {
    let parsed = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.split('-').next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .filter(|id| *id < UNKNOWN_ID && value_of(*id).as_bytes() == value);
    parsed.unwrap_or_else(|| UNKNOWN_ID | (mix(crc(value)) >> 1))
}

fn crc(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One acknowledged batch: its values sit at `base`, `base + 1`, … of `partition`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub partition: u32,
    pub base: u64,
    pub values: Vec<Id>,
}

/// A batch whose outcome is not an acknowledgement.
#[derive(Debug, Clone)]
pub struct Unacked {
    pub partition: u32,
    pub values: Vec<Id>,
    pub status: String,
}

/// Everything the workload saw, for the checker.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every value sent: its partition.
    pub sent: HashMap<Id, u32>,
    pub acked: Vec<Acked>,
    /// Refused with a server's definite answer: never written.
    pub failed: Vec<Unacked>,
    /// Timed out or lost with the connection: written once or not at all.
    pub indeterminate: Vec<Unacked>,
    /// Per partition, what its following consumer read, in order (offset, value).
    pub consumed: Vec<Vec<(u64, Id)>>,
    /// Per partition, the times a consumer read an offset at or below one it had read.
    pub nonmonotonic: Vec<u64>,
    /// What happened, one line per event, for a violation's history file.
    pub history: Vec<String>,
    /// Acknowledged batches per partition (the campaign waits on their growth).
    pub acks_per_partition: Vec<u64>,
}

pub type Shared = Arc<Mutex<Ledger>>;

/// A fresh ledger for `partitions` partitions.
pub fn ledger(partitions: u32) -> Shared {
    Arc::new(Mutex::new(Ledger {
        consumed: vec![Vec::new(); partitions as usize],
        nonmonotonic: vec![0; partitions as usize],
        acks_per_partition: vec![0; partitions as usize],
        ..Ledger::default()
    }))
}

/// Appends a history line, stamped with the time since `t0`.
pub fn note(shared: &Shared, t0: Instant, line: String) {
    let stamp = t0.elapsed().as_secs_f64();
    shared
        .lock()
        .unwrap()
        .history
        .push(format!("{stamp:9.3} {line}"));
}

/// A server's definite refusal: the server answered, and the code says nothing was
/// written. A status tonic made locally (a transport error is its source), `UNAVAILABLE`
/// (the final try of a retried call whose earlier tries may have reached a leader) and
/// timeouts are indeterminate.
fn is_definite(status: &tonic::Status) -> bool {
    let local = std::error::Error::source(status).is_some();
    !local
        && matches!(
            status.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::ResourceExhausted
                | Code::NotFound
                | Code::PermissionDenied
                | Code::OutOfRange
                | Code::Unauthenticated
        )
}

pub struct Producer {
    pub id: u32,
    pub seed: u64,
    pub partitions: u32,
    pub client: RoutingClient,
    pub shared: Shared,
    pub stop: Arc<AtomicBool>,
    pub t0: Instant,
}

impl Producer {
    /// Appends batches until `stop`; the batch in flight then still ends (within one
    /// append budget).
    pub async fn run(self) {
        let mut rng = Rng(self.seed);
        let mut sequences = Sequences::with_id(rng.below(u64::MAX) | 1);
        let mut batch = 0u64;
        while !self.stop.load(Relaxed) {
            let partition = rng.below(u64::from(self.partitions)) as u32;
            let count = 1 + rng.below(8);
            assert!(count <= RECORDS_PER_BATCH_MAX);
            let values: Vec<Id> = (0..count)
                .map(|i| (u64::from(self.id) << 40) | (batch << 4) | i)
                .collect();
            batch += 1;
            let mut request = AppendRequest {
                topic: TOPIC.into(),
                partition: Some(partition),
                records: values.iter().map(|v| record("", value_of(*v))).collect(),
                correlation_id: batch,
                ..AppendRequest::default()
            };
            sequences.stamp(&mut request);
            {
                let mut ledger = self.shared.lock().unwrap();
                for v in &values {
                    ledger.sent.insert(*v, partition);
                }
            }
            let (pid, seq) = (request.producer_id, request.sequence);
            let result = self.client.append_request(request).await;
            let mut ledger = self.shared.lock().unwrap();
            let stamp = self.t0.elapsed().as_secs_f64();
            match result {
                Ok(ack) => {
                    assert_eq!(
                        ack.count as usize,
                        values.len(),
                        "an ack counts the batch's records"
                    );
                    ledger.history.push(format!(
                        "{stamp:9.3} ack p{partition} base {} count {} producer {pid:x} seq {seq} first {:x}",
                        ack.base_offset, ack.count, values[0]
                    ));
                    ledger.acks_per_partition[partition as usize] += 1;
                    ledger.acked.push(Acked {
                        partition: ack.partition,
                        base: ack.base_offset,
                        values,
                    });
                }
                Err(status) => {
                    let definite = is_definite(&status);
                    let what = if definite { "fail" } else { "info" };
                    let text = format!("{:?}: {}", status.code(), status.message());
                    ledger.history.push(format!(
                        "{stamp:9.3} {what} p{partition} count {} producer {pid:x} seq {seq} first {:x}: {text}",
                        values.len(),
                        values[0]
                    ));
                    let unacked = Unacked {
                        partition,
                        values,
                        status: text,
                    };
                    if definite {
                        ledger.failed.push(unacked);
                    } else {
                        ledger.indeterminate.push(unacked);
                    }
                    // The sequence may or may not have been taken: start over.
                    sequences = Sequences::with_id(rng.below(u64::MAX) | 1);
                }
            }
        }
    }
}

pub struct Consumer {
    pub partition: u32,
    pub addrs: Vec<String>,
    pub certs: std::path::PathBuf,
    pub shared: Shared,
    pub stop: Arc<AtomicBool>,
    pub timings: Timings,
}

impl Consumer {
    /// Follows the partition from offset 0 until `stop`, from one node after another:
    /// a stream that fails, ends, or brings nothing for a while (a paused node, a follower
    /// cut off from its leader) is given up and the next node asked from the next offset.
    pub async fn run(self) {
        // A stream that brings nothing for this long is given up: a few failovers.
        let quiet_max = self.timings.failover() * 3;
        let poll = self.timings.poll();
        let mut target = self.partition as usize % self.addrs.len();
        let mut last: Option<u64> = None;
        while !self.stop.load(Relaxed) {
            let addr = &self.addrs[target];
            target = (target + 1) % self.addrs.len();
            let tls = ClientTls::from_dir(&self.certs, "root");
            let Ok(Ok(client)) =
                tokio::time::timeout(poll * 20, Client::connect(addr, Some(tls))).await
            else {
                tokio::time::sleep(poll).await;
                continue;
            };
            let from = last.map_or(0, |l| l + 1);
            let options = ReadOptions {
                max_records: 256,
                ..ReadOptions::default()
            };
            let Ok(Ok(mut stream)) = tokio::time::timeout(
                poll * 20,
                client.read_stream(TOPIC, self.partition, from, options, true),
            )
            .await
            else {
                tokio::time::sleep(poll).await;
                continue;
            };
            let mut quiet_since = Instant::now();
            while !self.stop.load(Relaxed) && quiet_since.elapsed() < quiet_max {
                let message = match tokio::time::timeout(poll * 4, stream.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(m))) => m,
                    Ok(_) => break,
                };
                if !message.records.is_empty() {
                    quiet_since = Instant::now();
                }
                let mut ledger = self.shared.lock().unwrap();
                for rec in message.records {
                    let value = id_of(&rec.value);
                    if last.is_some_and(|l| rec.offset <= l) {
                        ledger.nonmonotonic[self.partition as usize] += 1;
                        ledger.history.push(format!(
                            "consumer p{} from {addr}: offset {} after {last:?} ({value:x})",
                            self.partition, rec.offset
                        ));
                        continue;
                    }
                    last = Some(rec.offset);
                    ledger.consumed[self.partition as usize].push((rec.offset, value));
                }
            }
        }
    }
}

/// How long to let a batch in flight end after the producers were told to stop.
pub fn drain_time(timings: &Timings) -> Duration {
    timings.append_budget() + timings.failover()
}
