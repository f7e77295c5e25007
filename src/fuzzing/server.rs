//! The server target: requests as a client could send them, through the server's own
//! content checks (`server::validate`, what the `Log` service runs before the ACL's verdict
//! is acted on and before anything reaches a shard).

use bytes::Bytes;
use prost::Message;
use tonic::Code;

use super::Input;
use crate::config::Config;
use crate::proto::v1::{AppendRequest, CreateTopicRequest, ReadRequest, TruncateRequest};
use crate::server::validate::{self, AppendBody};
use crate::storage::format::{
    self, BATCH_HEADER_LEN, BatchMeta, HEADER_FIXED_LEN, RECORD_FIXED_LEN, Record,
};

/// The timestamp the checks give records sent without one.
const NOW_MS: i64 = 1_700_000_000_000;

/// A valid config with small limits, so that inputs reach them.
fn config() -> Config {
    let mut config = Config::default();
    config.server.topic_name_bytes_max = 16;
    config.server.read_bytes_max = 4096;
    config.server.read_records_max = 100;
    config.server.partitions_per_topic_max = 8;
    config.storage.record_bytes_max = 256;
    config.storage.batch_bytes_max = 1024;
    config.validate().expect("the fuzz config is valid");
    config
}

/// The topic-name rule, written again as the oracle.
fn name_ok(name: &str, bytes_max: u32) -> bool {
    let bytes_max = (bytes_max as usize).min(crate::shard::TOPIC_NAME_BYTES_MAX);
    !name.starts_with("__")
        && (1..=bytes_max).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A refusal's gRPC status code, through the server's one conversion.
fn code(e: crate::server::Error) -> Code {
    tonic::Status::from(e).code()
}

/// Target `server_request`: after a kind byte, a protobuf Append, Read, CreateTopic or
/// Truncate request.
///
/// Invariants: a request is refused exactly when the oracle says it is malformed
/// (`INVALID_ARGUMENT`) or too large (`RESOURCE_EXHAUSTED`), never with another code; an
/// accepted append's measured size is its encoded size, and its batch decodes to the
/// records sent (timestamp 0 becomes the server's clock); a read's caps lie within the
/// server's limits and keep a smaller ask; a creation's partition count and replication
/// factor lie within their limits.
pub fn server_request(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = input.u8();
    let nodes = u32::from(input.u8() % 8);
    let body = input.rest();
    let config = config();
    let name_max = config.server.topic_name_bytes_max;
    match kind % 4 {
        0 => {
            if let Ok(request) = AppendRequest::decode(body) {
                check_append(&config, request);
            }
        }
        1 => {
            if let Ok(read) = ReadRequest::decode(body) {
                check_name(&read.topic, name_max);
                let (bytes, records) = validate::read_limits(&read, &config.server);
                let server = &config.server;
                assert!((1..=server.read_bytes_max).contains(&bytes), "{bytes}");
                assert!((1..=server.read_records_max as usize).contains(&records));
                if read.max_bytes != 0 && u64::from(read.max_bytes) <= server.read_bytes_max {
                    assert_eq!(bytes, u64::from(read.max_bytes));
                }
                if read.max_records != 0 && read.max_records <= server.read_records_max {
                    assert_eq!(records, read.max_records as usize);
                }
            }
        }
        2 => {
            if let Ok(create) = CreateTopicRequest::decode(body) {
                check_name(&create.name, name_max);
                check_create(&config, &create, nodes);
            }
        }
        _ => {
            if let Ok(truncate) = TruncateRequest::decode(body) {
                check_name(&truncate.topic, name_max);
            }
        }
    }
}

fn check_name(name: &str, bytes_max: u32) {
    match validate::topic_name(name, bytes_max) {
        Ok(()) => assert!(name_ok(name, bytes_max), "{name:?} accepted"),
        Err(e) => {
            assert!(!name_ok(name, bytes_max), "{name:?} refused: {e}");
            assert_eq!(code(e), Code::InvalidArgument);
        }
    }
}

fn check_create(config: &Config, create: &CreateTopicRequest, nodes: u32) {
    let max = config.server.partitions_per_topic_max;
    let default = config.default_partitions_for(4).max(1);
    match validate::partitions_for(create.partitions, default, max) {
        Ok(p) => assert!(p >= 1 && p <= max.max(default), "{p} partitions"),
        Err(e) => {
            assert!(create.partitions > max);
            assert_eq!(code(e), Code::InvalidArgument);
        }
    }
    let nodes = nodes.max(1);
    match validate::replication_factor_for(create.replication_factor, 3, nodes) {
        Ok(f) => assert!((1..=nodes).contains(&f), "factor {f} of {nodes} nodes"),
        Err(e) => {
            assert!(create.replication_factor > nodes);
            assert_eq!(code(e), Code::InvalidArgument);
        }
    }
}

fn encoded_len(record: &crate::proto::v1::Record) -> usize {
    RECORD_FIXED_LEN
        + record.key.len()
        + record.value.len()
        + record
            .headers
            .iter()
            .map(|(name, value)| HEADER_FIXED_LEN + name.len() + value.len())
            .sum::<usize>()
}

/// What the oracle expects of an append: `Ok(batch bytes)` or the refusal's code.
fn expected_append(config: &Config, request: &AppendRequest) -> Result<usize, Code> {
    if !name_ok(&request.topic, config.server.topic_name_bytes_max)
        || request.records.is_empty()
        || (request.producer_id != 0 && request.partition.is_none())
    {
        return Err(Code::InvalidArgument);
    }
    let sizes: Vec<usize> = request.records.iter().map(encoded_len).collect();
    if sizes
        .iter()
        .any(|&s| s as u64 > config.storage.record_bytes_max)
    {
        return Err(Code::ResourceExhausted);
    }
    let batch = BATCH_HEADER_LEN + sizes.iter().sum::<usize>();
    if batch as u64 > config.storage.batch_bytes_max {
        return Err(Code::ResourceExhausted);
    }
    Ok(batch)
}

fn check_append(config: &Config, request: AppendRequest) {
    let expected = expected_append(config, &request);
    let sent = request.records.clone();
    let limits = config.storage.log_limits();
    let checked = validate::topic_name(&request.topic, config.server.topic_name_bytes_max)
        .and_then(|()| {
            let body = AppendBody {
                partition: request.partition,
                records: request.records,
                producer_id: request.producer_id,
            };
            validate::append(&request.topic, body, &limits, NOW_MS)
        });
    let batch = match (checked, expected) {
        (Ok(batch), Ok(bytes)) => {
            assert_eq!(batch.batch_bytes(), bytes);
            batch
        }
        (Err(e), Err(want)) => {
            assert_eq!(code(e), want);
            return;
        }
        (got, want) => panic!("append checked as {:?}, expected {want:?}", got.err()),
    };
    let mut bytes = vec![0u8; batch.batch_bytes()];
    format::encode_batch_into(&mut bytes, 0, &BatchMeta::default(), batch.records());
    let decoded = format::decode_batch_shared(&Bytes::from(bytes)).expect("accepted batch");
    assert_eq!(decoded.records.len(), sent.len());
    for (got, sent) in decoded.records.iter().zip(sent) {
        let mut headers: Vec<(String, Bytes)> = sent.headers.into_iter().collect();
        headers.sort();
        let mut got_headers = got.headers.clone();
        got_headers.sort();
        let want = Record {
            offset: got.offset,
            timestamp_ms: if sent.timestamp_ms == 0 {
                NOW_MS
            } else {
                sent.timestamp_ms
            },
            key: sent.key,
            value: sent.value,
            headers,
        };
        let got = Record {
            headers: got_headers,
            ..got.clone()
        };
        assert_eq!(got, want);
    }
}
