//! The on-disk batch format: encoding and decoding of one batch of records.
//!
//! Owns: the byte layout of a batch and its records (the same tables as `docs/FORMAT.md`),
//! the CRC, and the checks that decide whether bytes at a position are a valid batch.
//! Must never: do I/O. Callers hand it bytes and get bytes back.
//!
//! A store file is a sequence of batches laid end to end. One `append` is one batch. All
//! integers are little-endian.
//!
//! Batch header, format version 2 (`BATCH_HEADER_LEN` = 80 bytes; what writers write):
//!
//! | at | size | field               | meaning                                                   |
//! |---:|-----:|---------------------|-----------------------------------------------------------|
//! |  0 |    4 | `magic`             | `b"WALB"`; zero bytes here mean "end of log" (padding)    |
//! |  4 |    4 | `batch_len`         | whole batch in bytes, header included                     |
//! |  8 |    4 | `crc`               | CRC32 (crc32fast) of bytes `[12, batch_len)`              |
//! | 12 |    2 | `version`           | format version: `2` (`1` is still read)                   |
//! | 14 |    2 | `flags`             | bit 0 control batch; bits 1..=3 compression (0 = none)    |
//! | 16 |    8 | `base_offset`       | offset of the first record                                |
//! | 24 |    4 | `record_count`      | number of records, >= 1                                   |
//! | 28 |    4 | `last_offset_delta` | last record's offset minus `base_offset`                  |
//! | 32 |    8 | `leader_epoch`      | Raft term of the leader that wrote it; 0 until replication |
//! | 40 |    8 | `first_timestamp_ms`| timestamp of the first record, ms since the Unix epoch    |
//! | 48 |    8 | `max_timestamp_ms`  | largest record timestamp in the batch                     |
//! | 56 |    8 | `raft_index`        | Raft log index of this batch (one batch = one entry); 0 = not replicated |
//! | 64 |    8 | `producer_id`       | idempotent producer id, scoped to the client identity; 0 = none |
//! | 72 |    8 | `producer_seq`      | the producer's sequence number of this batch (0, 1, 2, … per partition) |
//!
//! Version 1 (`V1_BATCH_HEADER_LEN` = 56 bytes) is bytes 0..56 of the same table; it is read
//! as `raft_index = producer_id = producer_seq = 0`. The header length follows from the
//! version, so records start right after the header in both. (`producer_seq` was first laid
//! out as a u32 followed by 4 reserved zero bytes; as a u64 it reads every batch written
//! that way unchanged.)
//!
//! Record (repeated `record_count` times after the header):
//!
//! | offset | size | field                 | meaning                                       |
//! |-------:|-----:|-----------------------|-----------------------------------------------|
//! |      0 |    4 | `record_len`          | bytes of this record after this field         |
//! |      4 |    8 | `timestamp_delta_ms`  | i64, record timestamp − `first_timestamp_ms`  |
//! |     12 |    4 | `offset_delta`        | record offset − `base_offset`                 |
//! |     16 |    4 | `key_len`             | then `key_len` bytes of key                   |
//! |      … |    4 | `value_len`           | then `value_len` bytes of value               |
//! |      … |    4 | `header_count`        | then per header: u16 name length, UTF-8 name, |
//! |        |      |                       | u32 value length, value bytes                 |
//!
//! Invariants: `batch_len == header_len + Σ (4 + record_len)`; offset deltas strictly
//! increase inside a batch and the last one equals `last_offset_delta`.

use bytes::Bytes;
use crc32fast::Hasher;

pub const MAGIC: [u8; 4] = *b"WALB";
/// The version writers write.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest version still read.
pub const FORMAT_VERSION_V1: u16 = 1;

pub const MAGIC_AT: usize = 0;
pub const BATCH_LEN_AT: usize = MAGIC_AT + 4;
pub const CRC_AT: usize = BATCH_LEN_AT + 4;
/// The CRC covers every byte from here to the end of the batch.
pub const CRC_START: usize = CRC_AT + 4;
pub const VERSION_AT: usize = CRC_START;
pub const FLAGS_AT: usize = VERSION_AT + 2;
pub const BASE_OFFSET_AT: usize = FLAGS_AT + 2;
pub const RECORD_COUNT_AT: usize = BASE_OFFSET_AT + 8;
pub const LAST_OFFSET_DELTA_AT: usize = RECORD_COUNT_AT + 4;
pub const LEADER_EPOCH_AT: usize = LAST_OFFSET_DELTA_AT + 4;
pub const FIRST_TIMESTAMP_AT: usize = LEADER_EPOCH_AT + 8;
pub const MAX_TIMESTAMP_AT: usize = FIRST_TIMESTAMP_AT + 8;
/// Length of a version-1 header: the fields up to and including `max_timestamp_ms`.
pub const V1_BATCH_HEADER_LEN: usize = MAX_TIMESTAMP_AT + 8;
pub const RAFT_INDEX_AT: usize = V1_BATCH_HEADER_LEN;
pub const PRODUCER_ID_AT: usize = RAFT_INDEX_AT + 8;
pub const PRODUCER_SEQ_AT: usize = PRODUCER_ID_AT + 8;
/// Length of the header writers write (version 2).
pub const BATCH_HEADER_LEN: usize = PRODUCER_SEQ_AT + 8;
const _: () = assert!(V1_BATCH_HEADER_LEN == 56);
const _: () = assert!(BATCH_HEADER_LEN == 80);

/// The header length of a format version, or `None` for a version this code cannot read.
pub fn header_len_of(version: u16) -> Option<usize> {
    match version {
        FORMAT_VERSION_V1 => Some(V1_BATCH_HEADER_LEN),
        FORMAT_VERSION => Some(BATCH_HEADER_LEN),
        _ => None,
    }
}

/// Fixed part of a record: length, timestamp delta, offset delta, key length, value length,
/// header count.
pub const RECORD_FIXED_LEN: usize = 4 + 8 + 4 + 4 + 4 + 4;
const _: () = assert!(RECORD_FIXED_LEN == 28);
/// Fixed part of one record header: u16 name length + u32 value length.
pub const HEADER_FIXED_LEN: usize = 2 + 4;

pub const FLAG_CONTROL: u16 = 1 << 0;
pub const FLAGS_COMPRESSION_MASK: u16 = 0b1110;

/// One record as stored and served. `offset` is assigned by the log on append (the value a
/// caller puts there is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

impl Record {
    /// Encoded size of this record inside a batch, length prefix included.
    pub fn encoded_len(&self) -> usize {
        RECORD_FIXED_LEN
            + self.key.len()
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(name, value)| HEADER_FIXED_LEN + name.len() + value.len())
                .sum::<usize>()
    }
}

/// The decoded header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_len: u32,
    pub crc: u32,
    pub version: u16,
    pub flags: u16,
    pub base_offset: u64,
    pub record_count: u32,
    pub last_offset_delta: u32,
    pub leader_epoch: u64,
    pub first_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    /// Raft log index (version 2; 0 in version 1 and before replication).
    pub raft_index: u64,
    /// Idempotent producer id (version 2); 0 = none.
    pub producer_id: u64,
    /// The producer's sequence number of this batch (version 2).
    pub producer_seq: u64,
}

/// What a writer puts in a batch header besides what follows from the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchMeta {
    pub leader_epoch: u64,
    pub flags: u16,
    pub raft_index: u64,
    pub producer_id: u64,
    pub producer_seq: u64,
}

impl BatchHeader {
    /// Length of this header on disk (it depends on the version).
    pub fn header_len(&self) -> usize {
        header_len_of(self.version).expect("probe_header refuses unknown versions")
    }

    /// The offset after this batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta) + 1
    }
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub header: BatchHeader,
    pub records: Vec<Record>,
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "only {available} bytes, a batch header needs {V1_BATCH_HEADER_LEN} (version 1) or {BATCH_HEADER_LEN} (version 2)"
    )]
    ShortHeader { available: usize },
    #[error("bad magic {found:02x?}")]
    BadMagic { found: [u8; 4] },
    #[error("batch length {batch_len} is impossible for its header and one record")]
    BadLength { batch_len: u32 },
    #[error("batch claims {batch_len} bytes but only {available} are there")]
    ShortBatch { batch_len: u32, available: usize },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported format version {version}")]
    BadVersion { version: u16 },
    #[error("batch base offset {found} is below the expected {expected}")]
    OffsetOutOfOrder { expected: u64, found: u64 },
    #[error("record {index} is malformed: {what}")]
    BadRecord { index: u32, what: &'static str },
    #[error(
        "batch base offset {base_offset} plus last offset delta {last_offset_delta} passes the largest offset"
    )]
    OffsetOverflow {
        base_offset: u64,
        last_offset_delta: u32,
    },
    #[error(
        "batch base offset {found} is more than {} past its segment's base offset {base_offset}",
        u32::MAX
    )]
    OffsetBeyondSegment { base_offset: u64, found: u64 },
}

/// What sits at a position in a store file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A header whose magic and length look right; the CRC is not yet checked.
    Header(BatchHeader),
    /// Zero bytes (preallocation or DMA padding) or no bytes at all: the end of the log.
    End,
}

/// Encodes records into one batch. Offsets inside are `base_offset + index`; the records'
/// own `offset` fields are ignored. The caller has checked the limits.
///
/// Panics when `records` is empty: an empty batch would have no offsets to give.
pub fn encode_batch(
    base_offset: u64,
    leader_epoch: u64,
    flags: u16,
    records: &[Record],
) -> Vec<u8> {
    let meta = BatchMeta {
        leader_epoch,
        flags,
        ..BatchMeta::default()
    };
    let mut buf = vec![0u8; batch_len(records)];
    encode_batch_into(&mut buf, base_offset, &meta, records);
    buf
}

/// The encoded length of a batch of `records`.
pub fn batch_len(records: &[Record]) -> usize {
    BATCH_HEADER_LEN + records.iter().map(Record::encoded_len).sum::<usize>()
}

/// Encodes a batch into `dst`, which is exactly [`batch_len`] bytes: lets an engine encode
/// straight into its write buffer (one copy of every record fewer).
///
/// Panics when `records` is empty or `dst` has the wrong length.
pub fn encode_batch_into(dst: &mut [u8], base_offset: u64, meta: &BatchMeta, records: &[Record]) {
    assert!(!records.is_empty(), "a batch needs at least one record");
    // The caller measured the batch (`LogLimits::check`) and sized `dst` by it; the asserts
    // below catch a wrong size without measuring the batch again.
    let batch_len = dst.len();
    let batch_len_u32 =
        u32::try_from(batch_len).expect("batch length checked against batch_bytes_max");
    let record_count = u32::try_from(records.len()).expect("record count fits u32");
    let first_timestamp_ms = records[0].timestamp_ms;
    let max_timestamp_ms = records
        .iter()
        .map(|r| r.timestamp_ms)
        .max()
        .unwrap_or(first_timestamp_ms);

    let mut buf = Out { buf: dst, len: 0 };
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&batch_len_u32.to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // CRC, filled in below.
    buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buf.extend_from_slice(&meta.flags.to_le_bytes());
    buf.extend_from_slice(&base_offset.to_le_bytes());
    buf.extend_from_slice(&record_count.to_le_bytes());
    buf.extend_from_slice(&(record_count - 1).to_le_bytes());
    buf.extend_from_slice(&meta.leader_epoch.to_le_bytes());
    buf.extend_from_slice(&first_timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&max_timestamp_ms.to_le_bytes());
    buf.extend_from_slice(&meta.raft_index.to_le_bytes());
    buf.extend_from_slice(&meta.producer_id.to_le_bytes());
    buf.extend_from_slice(&meta.producer_seq.to_le_bytes());
    debug_assert_eq!(buf.len, BATCH_HEADER_LEN);

    for (index, record) in records.iter().enumerate() {
        let start = buf.len;
        let encoded_len = record.encoded_len();
        let record_len = u32::try_from(encoded_len - 4).expect("record length fits u32");
        buf.extend_from_slice(&record_len.to_le_bytes());
        buf.extend_from_slice(
            &record
                .timestamp_ms
                .wrapping_sub(first_timestamp_ms)
                .to_le_bytes(),
        );
        buf.extend_from_slice(&(index as u32).to_le_bytes());
        put_bytes_u32(&mut buf, &record.key);
        put_bytes_u32(&mut buf, &record.value);
        let header_count = u32::try_from(record.headers.len()).expect("header count fits u32");
        buf.extend_from_slice(&header_count.to_le_bytes());
        for (name, value) in &record.headers {
            let name_len = u16::try_from(name.len()).expect("header name length checked by caller");
            buf.extend_from_slice(&name_len.to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            put_bytes_u32(&mut buf, value);
        }
        assert_eq!(
            buf.len - start,
            encoded_len,
            "record {index} encoded to the wrong size"
        );
    }
    assert_eq!(buf.len, batch_len, "batch encoded to the wrong size");

    let dst = buf.buf;
    let crc = crc32fast::hash(&dst[CRC_START..]);
    dst[CRC_AT..CRC_START].copy_from_slice(&crc.to_le_bytes());
}

/// Writes forward into a slice of exactly the right size.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Out<'_> {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

fn put_bytes_u32(buf: &mut Out<'_>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("field length checked by caller");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(bytes);
}

/// Reads the header at the start of `bytes` without checking the CRC. Zero magic (padding)
/// and an empty slice are the end of the log; anything else that is not a plausible header is
/// an error.
pub fn probe_header(bytes: &[u8]) -> Result<Probe, DecodeError> {
    if bytes.is_empty() {
        return Ok(Probe::End);
    }
    let magic_len = bytes.len().min(4);
    if bytes[..magic_len].iter().all(|&b| b == 0) {
        return Ok(Probe::End);
    }
    if bytes.len() < V1_BATCH_HEADER_LEN {
        return Err(DecodeError::ShortHeader {
            available: bytes.len(),
        });
    }
    let magic: [u8; 4] = bytes[MAGIC_AT..MAGIC_AT + 4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let version = u16_at(bytes, VERSION_AT);
    let Some(header_len) = header_len_of(version) else {
        return Err(DecodeError::BadVersion { version });
    };
    if bytes.len() < header_len {
        return Err(DecodeError::ShortHeader {
            available: bytes.len(),
        });
    }
    let v2 = version >= FORMAT_VERSION;
    let header = BatchHeader {
        batch_len: u32_at(bytes, BATCH_LEN_AT),
        crc: u32_at(bytes, CRC_AT),
        version,
        flags: u16_at(bytes, FLAGS_AT),
        base_offset: u64_at(bytes, BASE_OFFSET_AT),
        record_count: u32_at(bytes, RECORD_COUNT_AT),
        last_offset_delta: u32_at(bytes, LAST_OFFSET_DELTA_AT),
        leader_epoch: u64_at(bytes, LEADER_EPOCH_AT),
        first_timestamp_ms: u64_at(bytes, FIRST_TIMESTAMP_AT) as i64,
        max_timestamp_ms: u64_at(bytes, MAX_TIMESTAMP_AT) as i64,
        raft_index: if v2 { u64_at(bytes, RAFT_INDEX_AT) } else { 0 },
        producer_id: if v2 { u64_at(bytes, PRODUCER_ID_AT) } else { 0 },
        producer_seq: if v2 {
            u64_at(bytes, PRODUCER_SEQ_AT)
        } else {
            0
        },
    };
    if (header.batch_len as usize) < header_len + RECORD_FIXED_LEN {
        return Err(DecodeError::BadLength {
            batch_len: header.batch_len,
        });
    }
    // `next_offset` (base + last delta + 1) must be a u64: every offset inside is below it.
    if header
        .base_offset
        .checked_add(u64::from(header.last_offset_delta) + 1)
        .is_none()
    {
        return Err(DecodeError::OffsetOverflow {
            base_offset: header.base_offset,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(Probe::Header(header))
}

/// Checks a whole batch: header, length and CRC. `bytes` starts at the batch and holds at
/// least `batch_len` bytes.
pub fn verify_batch(bytes: &[u8]) -> Result<BatchHeader, DecodeError> {
    let header = match probe_header(bytes)? {
        Probe::Header(header) => header,
        Probe::End => return Err(DecodeError::BadMagic { found: [0; 4] }),
    };
    let batch_len = header.batch_len as usize;
    if bytes.len() < batch_len {
        return Err(DecodeError::ShortBatch {
            batch_len: header.batch_len,
            available: bytes.len(),
        });
    }
    let computed = crc32fast::hash(&bytes[CRC_START..batch_len]);
    if computed != header.crc {
        return Err(DecodeError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Decodes a whole batch after checking it; keys, values and header values are slices of
/// `bytes` (no copy).
pub fn decode_batch_shared(bytes: &Bytes) -> Result<Batch, DecodeError> {
    let header = verify_batch(bytes)?;
    decode_verified(bytes, header)
}

/// Decodes the records of a batch that [`verify_batch`] checked (`header` is its answer),
/// checking each record against the record table but not the CRC again.
pub fn decode_verified(bytes: &Bytes, header: BatchHeader) -> Result<Batch, DecodeError> {
    // A sub-slice of `bytes` as a shared `Bytes`.
    let share = |slice: &[u8]| bytes.slice_ref(slice);
    // `record_count` is whatever the header says (the CRC only proves the bytes are as
    // written): reserve no more records than the batch's bytes can hold.
    let fits = (header.batch_len as usize).saturating_sub(header.header_len()) / RECORD_FIXED_LEN;
    let mut records = Vec::with_capacity((header.record_count as usize).min(fits));
    walk_records(bytes, &header, |record| {
        records.push(Record {
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: share(record.key),
            value: share(record.value),
            headers: record
                .headers
                .into_iter()
                .map(|(name, value)| (name.to_owned(), share(value)))
                .collect(),
        });
    })?;
    Ok(Batch { header, records })
}

/// Checks a whole batch, its records included, without decoding it into records (nothing is
/// copied or allocated but a header list per record that has headers): what a follower
/// needs before it stores bytes as they are.
pub fn verify_batch_records(bytes: &[u8]) -> Result<BatchHeader, DecodeError> {
    let header = verify_batch(bytes)?;
    walk_records(bytes, &header, |_| {})?;
    Ok(header)
}

/// One record inside a batch, borrowed from the batch's bytes.
struct RecordView<'a> {
    offset: u64,
    timestamp_ms: i64,
    key: &'a [u8],
    value: &'a [u8],
    headers: Vec<(&'a str, &'a [u8])>,
}

/// Walks the records of a verified batch (`header` is `verify_batch`'s), checking each
/// against the record table, and hands each to `visit`.
fn walk_records<'a>(
    bytes: &'a [u8],
    header: &BatchHeader,
    mut visit: impl FnMut(RecordView<'a>),
) -> Result<(), DecodeError> {
    let mut cursor = Cursor {
        bytes: &bytes[header.header_len()..header.batch_len as usize],
        position: 0,
    };
    let mut previous_delta: Option<u32> = None;
    for index in 0..header.record_count {
        let bad = |what| DecodeError::BadRecord { index, what };
        let record_len = cursor.u32().ok_or(bad("truncated length"))? as usize;
        let record_end = cursor.position + record_len;
        if record_end > cursor.bytes.len() {
            return Err(bad("length runs past the batch"));
        }
        let timestamp_delta_ms = cursor.u64().ok_or(bad("truncated timestamp"))? as i64;
        let offset_delta = cursor.u32().ok_or(bad("truncated offset delta"))?;
        if previous_delta.is_some_and(|previous| offset_delta <= previous)
            || offset_delta > header.last_offset_delta
        {
            return Err(bad("offset delta out of order"));
        }
        previous_delta = Some(offset_delta);
        let key = cursor.bytes_u32().ok_or(bad("truncated key"))?;
        let value = cursor.bytes_u32().ok_or(bad("truncated value"))?;
        let header_count = cursor.u32().ok_or(bad("truncated header count"))?;
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let name_len = cursor.u16().ok_or(bad("truncated header name length"))? as usize;
            let name = cursor.take(name_len).ok_or(bad("truncated header name"))?;
            let name = std::str::from_utf8(name).map_err(|_| bad("header name is not UTF-8"))?;
            let value = cursor.bytes_u32().ok_or(bad("truncated header value"))?;
            headers.push((name, value));
        }
        if cursor.position != record_end {
            return Err(bad("length disagrees with contents"));
        }
        visit(RecordView {
            offset: header.base_offset + u64::from(offset_delta),
            timestamp_ms: header.first_timestamp_ms.wrapping_add(timestamp_delta_ms),
            key,
            value,
            headers,
        });
    }
    if cursor.position != cursor.bytes.len() {
        return Err(DecodeError::BadRecord {
            index: header.record_count,
            what: "bytes left after the last record",
        });
    }
    if previous_delta != Some(header.last_offset_delta) {
        return Err(DecodeError::BadRecord {
            index: header.record_count,
            what: "last offset delta disagrees with header",
        });
    }
    Ok(())
}

struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(len)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes_u32(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// CRC32 of `bytes`, used by the index entries too.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut hasher = Hasher::new();
    hasher.update(bytes);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (found by the `batch_decode` and `segment_recovery` fuzz targets): a
    /// batch whose CRC checks but whose header claims ~4 billion records made
    /// `decode_verified` reserve room for all of them up front (hundreds of GB) and abort
    /// the process, instead of refusing the batch as malformed.
    #[test]
    fn a_huge_record_count_is_refused_without_reserving_for_it() {
        let mut bytes = encode_batch(0, 0, 0, &[record(b"k", b"v", 1)]);
        bytes[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&bytes[CRC_START..]);
        bytes[CRC_AT..CRC_START].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_batch(&bytes),
            Err(DecodeError::BadRecord { .. })
        ));
    }

    /// Regression (found by the `batch_decode` fuzz target): a batch whose CRC checks but
    /// whose base offset is near `u64::MAX` overflowed `base_offset + offset_delta` while
    /// its records were decoded, a panic in the middle of recovery instead of a refusal.
    #[test]
    fn a_base_offset_that_overflows_is_refused() {
        let mut bytes = encode_batch(0, 0, 0, &[record(b"k", b"v", 1), record(b"k", b"v", 2)]);
        bytes[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let crc = crc32fast::hash(&bytes[CRC_START..]);
        bytes[CRC_AT..CRC_START].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_batch(&bytes),
            Err(DecodeError::OffsetOverflow { .. })
        ));
        assert!(probe_header(&bytes).is_err());
    }

    /// Decodes a copy of `bytes` (the tests' batches are plain vectors).
    fn decode_batch(bytes: &[u8]) -> Result<Batch, DecodeError> {
        decode_batch_shared(&Bytes::copy_from_slice(bytes))
    }

    fn record(key: &[u8], value: &[u8], timestamp_ms: i64) -> Record {
        Record {
            offset: 0,
            timestamp_ms,
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            headers: vec![],
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let records = vec![
            Record {
                offset: 99, // ignored on encode
                timestamp_ms: 1_700_000_000_000,
                key: Bytes::from_static(b"k1"),
                value: Bytes::from_static(b"hello"),
                headers: vec![
                    ("trace".into(), Bytes::from_static(b"abc")),
                    ("empty".into(), Bytes::new()),
                ],
            },
            record(b"", b"", 1_699_999_999_000),
            record(b"k3", &[7u8; 1000], 1_700_000_000_500),
        ];
        let bytes = encode_batch(42, 7, FLAG_CONTROL, &records);
        let batch = decode_batch(&bytes).unwrap();
        let header = batch.header;
        assert_eq!(header.batch_len as usize, bytes.len());
        assert_eq!(header.version, FORMAT_VERSION);
        assert_eq!(header.flags, FLAG_CONTROL);
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.leader_epoch, 7);
        assert_eq!(header.first_timestamp_ms, 1_700_000_000_000);
        assert_eq!(header.max_timestamp_ms, 1_700_000_000_500);
        assert_eq!(header.next_offset(), 45);
        for (index, (got, want)) in batch.records.iter().zip(&records).enumerate() {
            assert_eq!(got.offset, 42 + index as u64);
            assert_eq!(got.timestamp_ms, want.timestamp_ms);
            assert_eq!(got.key, want.key);
            assert_eq!(got.value, want.value);
            assert_eq!(got.headers, want.headers);
        }
    }

    #[test]
    fn header_fields_sit_at_the_documented_offsets() {
        let bytes = encode_batch(0x0102_0304_0506_0708, 9, 0, &[record(b"k", b"v", -5)]);
        assert_eq!(&bytes[0..4], b"WALB");
        assert_eq!(u32_at(&bytes, 4) as usize, bytes.len());
        assert_eq!(u16_at(&bytes, 12), 2);
        assert_eq!(u64_at(&bytes, 16), 0x0102_0304_0506_0708);
        assert_eq!(u32_at(&bytes, 24), 1);
        assert_eq!(u64_at(&bytes, 32), 9);
        assert_eq!(u64_at(&bytes, 40) as i64, -5);
        assert_eq!(u64_at(&bytes, 48) as i64, -5);
        assert_eq!(bytes.len(), BATCH_HEADER_LEN + RECORD_FIXED_LEN + 2);
        let meta = BatchMeta {
            leader_epoch: 3,
            flags: 0,
            raft_index: 0x1122,
            producer_id: 0x3344,
            producer_seq: 0x55,
        };
        let mut bytes = vec![0u8; batch_len(&[record(b"k", b"v", 0)])];
        encode_batch_into(&mut bytes, 7, &meta, &[record(b"k", b"v", 0)]);
        assert_eq!(u64_at(&bytes, 56), 0x1122);
        assert_eq!(u64_at(&bytes, 64), 0x3344);
        assert_eq!(u64_at(&bytes, 72), 0x55);
        let header = verify_batch(&bytes).unwrap();
        assert_eq!(
            (header.raft_index, header.producer_id, header.producer_seq),
            (0x1122, 0x3344, 0x55)
        );
    }

    /// A version-1 batch, laid out by hand from the v1 table: 56-byte header, then records.
    pub(crate) fn v1_batch(base_offset: u64, values: &[&[u8]]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let record_len = (RECORD_FIXED_LEN - 4 + value.len()) as u32;
            body.extend_from_slice(&record_len.to_le_bytes());
            body.extend_from_slice(&0i64.to_le_bytes()); // timestamp delta
            body.extend_from_slice(&(i as u32).to_le_bytes()); // offset delta
            body.extend_from_slice(&0u32.to_le_bytes()); // key_len
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
            body.extend_from_slice(&0u32.to_le_bytes()); // header_count
        }
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"WALB");
        bytes.extend_from_slice(&((56 + body.len()) as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]); // crc
        bytes.extend_from_slice(&1u16.to_le_bytes()); // version
        bytes.extend_from_slice(&0u16.to_le_bytes()); // flags
        bytes.extend_from_slice(&base_offset.to_le_bytes());
        bytes.extend_from_slice(&(values.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&(values.len() as u32 - 1).to_le_bytes());
        bytes.extend_from_slice(&4u64.to_le_bytes()); // leader epoch
        bytes.extend_from_slice(&1000i64.to_le_bytes());
        bytes.extend_from_slice(&1000i64.to_le_bytes());
        assert_eq!(bytes.len(), 56);
        bytes.extend_from_slice(&body);
        let crc = crc32fast::hash(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn version_1_batches_still_decode() {
        let bytes = v1_batch(10, &[b"one", b"two"]);
        let batch = decode_batch(&bytes).unwrap();
        assert_eq!(batch.header.version, 1);
        assert_eq!(batch.header.header_len(), V1_BATCH_HEADER_LEN);
        assert_eq!(batch.header.leader_epoch, 4);
        assert_eq!(batch.header.raft_index, 0);
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[1].offset, 11);
        assert_eq!(&batch.records[1].value[..], b"two");
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = encode_batch(0, 0, 0, &[record(b"", b"x", 0)]);
        bytes[12] = 9;
        let crc = crc32fast::hash(&bytes[12..]);
        bytes[8..12].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_batch(&bytes),
            Err(DecodeError::BadVersion { version: 9 })
        );
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = encode_batch(
            5,
            0,
            0,
            &[record(b"key", b"value", 1), record(b"", b"x", 2)],
        );
        for at in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[at] ^= 0x40;
            assert!(
                decode_batch(&corrupt).is_err(),
                "flip at byte {at} went unnoticed"
            );
        }
    }

    #[test]
    fn crc_mismatch_is_reported_with_both_values() {
        let mut bytes = encode_batch(0, 0, 0, &[record(b"", b"abc", 0)]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            decode_batch(&bytes),
            Err(DecodeError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn zeros_and_emptiness_are_the_end_not_corruption() {
        assert_eq!(probe_header(&[]).unwrap(), Probe::End);
        assert_eq!(probe_header(&[0; 3]).unwrap(), Probe::End);
        assert_eq!(probe_header(&[0; 4096]).unwrap(), Probe::End);
        assert!(probe_header(&[1, 0, 0, 0]).is_err());
    }

    #[test]
    fn short_and_truncated_batches_are_refused() {
        let bytes = encode_batch(0, 0, 0, &[record(b"k", b"value", 0)]);
        assert!(matches!(
            probe_header(&bytes[..10]),
            Err(DecodeError::ShortHeader { .. })
        ));
        assert!(matches!(
            verify_batch(&bytes[..bytes.len() - 1]),
            Err(DecodeError::ShortBatch { .. })
        ));
    }
}
