//! The storage targets: the batch decoders, recovery of an active segment from arbitrary
//! bytes, and a segment opened with an arbitrary index file. All on the portable engine (the
//! uring engine needs glommio executors; both read the same bytes through the same
//! `format` and `segment` code, so recovery's logic is the same).

use std::path::Path;

use bytes::Bytes;
use futures::executor::block_on;

use super::{Input, temp_dir};
use crate::storage::format::{
    self, BATCH_LEN_AT, BatchHeader, BatchMeta, CRC_AT, CRC_START, DecodeError, FORMAT_VERSION,
    Record,
};
use crate::storage::{
    Error, INDEX_ENTRY_LEN, Log, LogLimits, PortableEngine, RawBatch, VerifiedBatch,
    index_file_name, store_file_name,
};

/// Records made from fuzzer bytes: 1 to 8, with keys, values and headers of any content.
fn records(input: &mut Input<'_>) -> Vec<Record> {
    let count = 1 + usize::from(input.u8() % 8);
    (0..count)
        .map(|_| Record {
            offset: 0,
            timestamp_ms: input.u64() as i64,
            key: Bytes::copy_from_slice(input.bytes(64)),
            value: Bytes::copy_from_slice(input.bytes(1024)),
            headers: (0..input.u8() % 4)
                .map(|_| {
                    let name = String::from_utf8_lossy(input.bytes(32)).into_owned();
                    (name, Bytes::copy_from_slice(input.bytes(64)))
                })
                .collect(),
        })
        .collect()
}

fn meta_of(header: &BatchHeader) -> BatchMeta {
    BatchMeta {
        leader_epoch: header.leader_epoch,
        flags: header.flags,
        raft_index: header.raft_index,
        producer_id: header.producer_id,
        producer_seq: header.producer_seq,
    }
}

fn encode(base_offset: u64, meta: &BatchMeta, records: &[Record]) -> Vec<u8> {
    let mut buf = vec![0u8; format::batch_len(records)];
    format::encode_batch_into(&mut buf, base_offset, meta, records);
    buf
}

/// Rewrites the CRC of every batch laid end to end from the start of `bytes` whose length
/// fits, so that mutations reach the checks behind the CRC.
fn fix_batch_crcs(bytes: &mut [u8]) {
    let mut position = 0usize;
    while position + CRC_START <= bytes.len() {
        let at = position + BATCH_LEN_AT;
        let batch_len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if batch_len < CRC_START || batch_len > bytes.len() - position {
            return;
        }
        let crc = format::crc32(&bytes[position + CRC_START..position + batch_len]);
        bytes[position + CRC_AT..position + CRC_START].copy_from_slice(&crc.to_le_bytes());
        position += batch_len;
    }
}

/// Target `batch_decode`: arbitrary bytes through the batch and record decoders, then
/// records made from the same bytes through encode → decode and a one-byte corruption.
///
/// Invariants: the full decoder and the record checker agree; an accepted batch has as many
/// records as its header says, its CRC matches, its offsets increase within
/// `base_offset..next_offset`, and it encodes again to a batch that decodes to the same
/// records (to the same bytes when it was a canonical version-2 batch); `decode(encode(x))
/// == x`; a batch with any one byte changed from its CRC field on is refused.
pub fn batch_decode(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let rest = input.rest();
    let mut raw = rest.to_vec();
    if mode & 1 == 1 {
        fix_batch_crcs(&mut raw);
    }
    check_arbitrary_batch(&raw);
    round_trip(&mut Input::new(rest));
}

fn check_arbitrary_batch(raw: &[u8]) {
    let decoded = format::decode_batch_shared(&Bytes::copy_from_slice(raw));
    let checked = format::verify_batch_records(raw);
    match (&decoded, &checked) {
        (Ok(batch), Ok(header)) => assert_eq!(&batch.header, header),
        (Err(a), Err(b)) => assert_eq!(a, b, "the decoder and the record checker disagree"),
        _ => panic!("decode_batch_shared {decoded:?} but verify_batch_records {checked:?}"),
    }
    let Ok(batch) = decoded else { return };
    let header = batch.header;
    let batch_len = header.batch_len as usize;
    assert!(batch_len <= raw.len());
    assert_eq!(format::crc32(&raw[CRC_START..batch_len]), header.crc);
    assert_eq!(batch.records.len(), header.record_count as usize);
    let next_offset = header.next_offset();
    let mut previous: Option<u64> = None;
    for record in &batch.records {
        assert!(record.offset >= header.base_offset && record.offset < next_offset);
        assert!(
            previous.is_none_or(|p| record.offset > p),
            "offsets out of order"
        );
        previous = Some(record.offset);
    }
    assert_eq!(
        previous,
        Some(next_offset - 1),
        "last offset is not the header's"
    );
    let exact = Bytes::copy_from_slice(&raw[..batch_len]);
    let verified = VerifiedBatch::new(exact).expect("the batch alone checks out");
    assert_eq!(verified.header(), &header);

    // Encoded again (offsets become contiguous, the header version 2), it decodes to the
    // same records.
    let again = encode(header.base_offset, &meta_of(&header), &batch.records);
    let redecoded =
        format::decode_batch_shared(&Bytes::from(again.clone())).expect("re-encoded batch");
    let renumbered: Vec<Record> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: header.base_offset + i as u64,
            ..r.clone()
        })
        .collect();
    assert_eq!(redecoded.records, renumbered);
    // Canonical: what the encoder writes. A batch may also carry a first timestamp other
    // than its first record's (a non-zero first delta): it decodes to the same records, but
    // re-encodes with the first record's timestamp.
    let canonical = header.version == FORMAT_VERSION
        && header.last_offset_delta + 1 == header.record_count
        && batch.records.iter().map(|r| r.timestamp_ms).max() == Some(header.max_timestamp_ms)
        && batch.records.first().map(|r| r.timestamp_ms) == Some(header.first_timestamp_ms);
    if canonical {
        assert_eq!(
            again,
            &raw[..batch_len],
            "a canonical batch re-encodes differently"
        );
    }
}

fn round_trip(input: &mut Input<'_>) {
    let records = records(input);
    let meta = BatchMeta {
        leader_epoch: input.u64(),
        flags: input.u16(),
        raft_index: input.u64(),
        producer_id: input.u64(),
        producer_seq: input.u64(),
    };
    // The log never gives a batch offsets past u64::MAX.
    let base_offset = input.u64().min(u64::MAX - records.len() as u64);
    let bytes = encode(base_offset, &meta, &records);
    let batch = format::decode_batch_shared(&Bytes::from(bytes.clone())).expect("encoded batch");
    assert_eq!(batch.header.batch_len as usize, bytes.len());
    assert_eq!(meta_of(&batch.header), meta);
    assert_eq!(batch.header.base_offset, base_offset);
    assert_eq!(
        batch.header.next_offset(),
        base_offset + records.len() as u64
    );
    let numbered: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            offset: base_offset + i as u64,
            ..r.clone()
        })
        .collect();
    assert_eq!(batch.records, numbered);

    let mut torn = bytes.clone();
    let at = CRC_AT + input.u32() as usize % (torn.len() - CRC_AT);
    torn[at] ^= input.u8().max(1);
    let refused = format::decode_batch_shared(&Bytes::from(torn));
    assert!(refused.is_err(), "byte {at} changed, yet the batch decodes");
    let short = format::verify_batch(&bytes[..bytes.len() - 1]);
    assert!(
        matches!(short, Err(DecodeError::ShortBatch { .. })),
        "{short:?}"
    );
}

fn limits() -> LogLimits {
    LogLimits {
        index_bytes_max: 8 * INDEX_ENTRY_LEN as u64,
        ..LogLimits::default()
    }
}

/// What recovery must keep of a store: the batches from position 0 that check out (CRC),
/// the first at `base_offset` and each at or past the previous one's end (and within
/// `u32::MAX` of `base_offset`, what an index entry can hold), up to the first that does not
/// or to zero padding. Written without the scan's chunking, as its oracle.
fn expected_prefix(store: &[u8], base_offset: u64) -> Vec<(usize, BatchHeader)> {
    let mut position = 0usize;
    let mut next_offset = base_offset;
    let mut batches: Vec<(usize, BatchHeader)> = Vec::new();
    loop {
        let rest = &store[position..];
        if rest.iter().take(4).all(|&b| b == 0) {
            return batches;
        }
        let Ok(header) = format::verify_batch(rest) else {
            return batches;
        };
        let follows = match batches.is_empty() {
            true => header.base_offset == next_offset,
            false => header.base_offset >= next_offset,
        };
        if !follows || header.base_offset - base_offset > u64::from(u32::MAX) {
            return batches;
        }
        batches.push((position, header));
        position += header.batch_len as usize;
        next_offset = header.next_offset();
    }
}

/// Every batch of the log, as stored, from its start to its end.
async fn read_all_raw(log: &mut Log<PortableEngine>) -> Vec<RawBatch> {
    let mut out: Vec<RawBatch> = Vec::new();
    let mut from = log.start_offset();
    while from < log.end_offset() {
        let batches = log.read_raw(from, 1 << 20).await.expect("raw read");
        assert!(!batches.is_empty(), "nothing read at {from} below the end");
        for batch in batches {
            let verified = format::verify_batch(&batch.bytes);
            assert_eq!(verified, Ok(batch.header), "a read returned a bad batch");
            assert_eq!(batch.bytes.len(), batch.header.batch_len as usize);
            assert!(batch.header.base_offset >= from || out.is_empty());
            from = batch.header.next_offset();
            out.push(batch);
        }
    }
    out
}

/// Target `segment_recovery`: a partition whose only (active) segment holds the input's
/// bytes is opened, read and reopened.
///
/// Invariants: opening never fails on the store's content; it keeps exactly the prefix of
/// whole, checked batches in offset order ([`expected_prefix`]) and cuts the rest off the
/// file; a read returns only batches whose CRC checks, and a batch whose records do not
/// decode is reported as corrupt at its position, never served; a second open finds nothing
/// to repair; the log takes an append at its end afterwards.
pub fn segment_recovery(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mut store = input.rest().to_vec();
    if mode & 1 == 1 {
        fix_batch_crcs(&mut store);
    }
    let expected = expected_prefix(&store, 0);
    let kept_bytes: usize = expected.iter().map(|(_, h)| h.batch_len as usize).sum();
    let dir = temp_dir();
    let part = dir.path().join("partition");
    std::fs::create_dir(&part).expect("partition dir");
    let store_path = part.join(store_file_name(0));
    std::fs::write(&store_path, &store).expect("store file");

    block_on(async {
        let (mut log, report) = Log::open(PortableEngine::new(), &part, limits())
            .await
            .expect("recovery opens a store of any content");
        assert_eq!(
            report.recovery.truncated_bytes,
            (store.len() - kept_bytes) as u64
        );
        let file_len = std::fs::metadata(&store_path).expect("store").len();
        assert_eq!(
            file_len, kept_bytes as u64,
            "the torn tail is still on disk"
        );
        assert_eq!(log.start_offset(), 0);
        let end = expected.last().map_or(0, |(_, h)| h.next_offset());
        assert_eq!(log.end_offset(), end);

        let raw = read_all_raw(&mut log).await;
        assert_eq!(raw.len(), expected.len());
        for (batch, (position, header)) in raw.iter().zip(&expected) {
            assert_eq!(&batch.header, header);
            assert_eq!(
                &batch.bytes[..],
                &store[*position..*position + batch.bytes.len()]
            );
            check_decoded_read(&mut log, batch, *position).await;
        }
        log.close().await.expect("close");

        let (mut log, report) = Log::open(PortableEngine::new(), &part, limits())
            .await
            .expect("reopen");
        assert_eq!(
            report.recovery,
            Default::default(),
            "a second recovery repaired"
        );
        assert_eq!(log.end_offset(), end);
        let again = read_all_raw(&mut log).await;
        assert_eq!(again, raw);
        let record = Record {
            value: Bytes::from_static(b"after recovery"),
            ..Record::default()
        };
        let offset = log
            .append(std::slice::from_ref(&record))
            .await
            .expect("append");
        assert_eq!(offset, end);
        log.sync().await.expect("sync");
        log.set_commit(log.end_offset()).expect("commit");
        let read = log.read(offset, 1 << 20).await.expect("read the append");
        assert_eq!(read[0].records[0].value, record.value);
        log.close().await.expect("close");
    });
}

/// A decoded read of `batch` serves its records, or (when they do not decode) fails naming
/// its position.
async fn check_decoded_read(log: &mut Log<PortableEngine>, batch: &RawBatch, position: usize) {
    let records_ok = format::verify_batch_records(&batch.bytes).is_ok();
    match log.read(batch.header.base_offset, 1).await {
        Ok(read) => {
            assert!(records_ok, "a batch with malformed records was served");
            assert_eq!(read[0].header, batch.header);
            let decoded = format::decode_batch_shared(&batch.bytes).expect("decodes");
            assert_eq!(read[0].records, decoded.records);
        }
        Err(Error::Corrupt {
            position: at,
            source,
            ..
        }) => {
            assert!(!records_ok, "a good batch read as corrupt: {source}");
            assert_eq!(at, position as u64);
        }
        Err(e) => panic!("reading a recovered batch failed: {e}"),
    }
}

/// Rewrites the check word of every 16-byte index entry, so that mutated entries are taken
/// as written and the segment must notice that they are wrong.
fn fix_index_checks(index: &mut [u8]) {
    for slot in index.chunks_exact_mut(INDEX_ENTRY_LEN) {
        let check = format::crc32(&slot[..12]);
        slot[12..16].copy_from_slice(&check.to_le_bytes());
    }
}

/// One partition directory as `index_rebuild` lays it out.
struct Layout<'a> {
    base_offset: u64,
    store: &'a [u8],
    index: Option<&'a [u8]>,
    /// A second segment after the first (which is then sealed), at this base.
    next_segment: Option<(u64, &'a [u8])>,
}

fn lay_out(part: &Path, layout: &Layout<'_>) {
    std::fs::create_dir(part).expect("partition dir");
    std::fs::write(part.join(store_file_name(layout.base_offset)), layout.store).expect("store");
    if let Some(index) = layout.index {
        std::fs::write(part.join(index_file_name(layout.base_offset)), index).expect("index");
    }
    if let Some((base, store)) = layout.next_segment {
        std::fs::write(part.join(store_file_name(base)), store).expect("second segment");
    }
}

/// What reading one offset answered: the batch headers and records, or the error's text.
type ReadAnswer = Result<Vec<(BatchHeader, Vec<Record>)>, String>;

async fn read_every_offset(log: &mut Log<PortableEngine>) -> Vec<ReadAnswer> {
    let mut answers = Vec::new();
    for offset in log.start_offset()..log.end_offset() {
        let read = log.read(offset, 1).await;
        answers.push(
            read.map(|batches| batches.into_iter().map(|b| (b.header, b.records)).collect())
                .map_err(|e| match e {
                    // The segment's path differs between the two directories; where does not.
                    Error::Corrupt {
                        position, source, ..
                    } => format!("corrupt at {position}: {source}"),
                    other => other.to_string(),
                }),
        );
    }
    answers
}

/// Target `index_rebuild`: a store of valid batches (perhaps torn at the end) next to an
/// index file of arbitrary bytes, as the active segment or as a sealed one; the same store
/// without an index is the reference.
///
/// Invariants: whatever the index file holds, the log opens to the same start and end
/// offsets, reads the same raw batches, and answers a read of every offset exactly as the
/// log without an index does; the active segment keeps exactly the whole batches written.
pub fn index_rebuild(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let base_offset = if mode & 2 != 0 {
        u64::from(input.u32())
    } else {
        0
    };
    let sealed = mode & 4 != 0;
    let mut store = Vec::new();
    let mut written: Vec<(usize, u64)> = Vec::new();
    let mut next_offset = base_offset;
    for _ in 0..1 + input.u8() % 12 {
        let records = records(&mut input);
        let meta = BatchMeta {
            leader_epoch: u64::from(input.u8()),
            ..BatchMeta::default()
        };
        written.push((store.len(), next_offset));
        store.extend(encode(next_offset, &meta, &records));
        next_offset += records.len() as u64;
    }
    if mode & 8 != 0 {
        let cut = usize::from(input.u16()) % store.len();
        store.truncate(store.len() - cut);
    }
    let mut index = input.rest().to_vec();
    if mode & 1 == 1 {
        fix_index_checks(&mut index);
    }
    let second = encode(
        next_offset,
        &BatchMeta::default(),
        &[Record {
            value: Bytes::from_static(b"second segment"),
            ..Record::default()
        }],
    );
    let next_segment = sealed.then_some((next_offset, &second[..]));

    let dir = temp_dir();
    let with_index = dir.path().join("with-index");
    let without = dir.path().join("without-index");
    let layout = Layout {
        base_offset,
        store: &store,
        index: Some(&index),
        next_segment,
    };
    lay_out(&with_index, &layout);
    lay_out(
        &without,
        &Layout {
            index: None,
            ..layout
        },
    );

    block_on(async {
        let (mut a, _) = Log::open(PortableEngine::new(), &with_index, limits())
            .await
            .expect("open with the fuzzed index");
        let (mut b, _) = Log::open(PortableEngine::new(), &without, limits())
            .await
            .expect("open without an index");
        assert_eq!(a.start_offset(), b.start_offset());
        assert_eq!(a.end_offset(), b.end_offset());
        if !sealed {
            let raw = read_all_raw(&mut a).await;
            let bases: Vec<u64> = raw.iter().map(|r| r.header.base_offset).collect();
            let complete = |&(position, offset): &(usize, u64)| {
                let len = store.len().saturating_sub(position);
                format::verify_batch(&store[position.min(store.len())..])
                    .is_ok_and(|h| h.batch_len as usize <= len && h.base_offset == offset)
            };
            let expected: Vec<u64> = written
                .iter()
                .filter(|w| complete(w))
                .map(|w| w.1)
                .collect();
            assert_eq!(
                bases, expected,
                "the active segment lost or kept the wrong batches"
            );
            assert_eq!(raw, read_all_raw(&mut b).await);
        }
        assert_eq!(
            read_every_offset(&mut a).await,
            read_every_offset(&mut b).await
        );
        a.close().await.expect("close");
        b.close().await.expect("close");
    });
}
