//! The newest batches of a log as stored, kept in memory after they are written, so that a
//! replicated log's leader ships them to followers, and every replica applies them, without
//! reading them back from disk (with the io_uring engine, that read is a device read).
//!
//! Owns: a bounded window of contiguous batches ending at the log's end.
//! Must never: hold a batch the log no longer holds (the log drops them on every truncation
//! and reset) or exceed its byte bound: the oldest batches go first.

use std::collections::VecDeque;

use super::log::RawBatch;

pub(crate) struct TailCache {
    batches: VecDeque<RawBatch>,
    bytes: usize,
    bytes_max: usize,
}

impl TailCache {
    pub(crate) fn new(bytes_max: usize) -> TailCache {
        TailCache {
            batches: VecDeque::new(),
            bytes: 0,
            bytes_max,
        }
    }

    /// Keeps `batch`, just appended at the log's end. A batch that does not follow the kept
    /// ones starts the window again; one larger than the bound is not kept.
    pub(crate) fn push(&mut self, batch: RawBatch) {
        let follows = self
            .batches
            .back()
            .is_none_or(|last| last.header.next_offset() == batch.header.base_offset);
        if !follows {
            self.clear();
        }
        if batch.bytes.len() > self.bytes_max {
            self.clear();
            return;
        }
        self.bytes += batch.bytes.len();
        self.batches.push_back(batch);
        while self.bytes > self.bytes_max {
            let oldest = self.batches.pop_front().expect("bytes > 0 means a batch");
            self.bytes -= oldest.bytes.len();
        }
    }

    /// The batches from the one that holds `from` on, at least one, then more while they fit
    /// `max_bytes`; `None` when `from` is not in the window (read the log instead).
    pub(crate) fn read(&self, from: u64, max_bytes: u64) -> Option<Vec<RawBatch>> {
        let first = self.batches.front()?;
        let last = self.batches.back()?;
        if from < first.header.base_offset || from >= last.header.next_offset() {
            return None;
        }
        let at = self
            .batches
            .partition_point(|b| b.header.next_offset() <= from);
        let mut out = Vec::new();
        let mut total = 0u64;
        for batch in self.batches.range(at..) {
            let len = batch.bytes.len() as u64;
            if !out.is_empty() && total + len > max_bytes {
                break;
            }
            total += len;
            out.push(batch.clone());
        }
        Some(out)
    }

    /// The newest batch kept.
    pub(crate) fn last(&self) -> Option<&RawBatch> {
        self.batches.back()
    }

    /// Forgets the batches at and after `from` (a suffix truncation, at a batch boundary).
    pub(crate) fn truncate_from(&mut self, from: u64) {
        while self
            .batches
            .back()
            .is_some_and(|b| b.header.next_offset() > from)
        {
            let dropped = self.batches.pop_back().expect("checked");
            self.bytes -= dropped.bytes.len();
        }
    }

    /// Forgets the batches that end at or below `start` (a prefix truncation or retention).
    pub(crate) fn drop_below(&mut self, start: u64) {
        while self
            .batches
            .front()
            .is_some_and(|b| b.header.next_offset() <= start)
        {
            let dropped = self.batches.pop_front().expect("checked");
            self.bytes -= dropped.bytes.len();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::{self, BatchMeta};
    use crate::storage::{Record, format::Probe};

    fn raw(base: u64, records: usize) -> RawBatch {
        let records: Vec<Record> = (0..records)
            .map(|i| Record {
                value: vec![i as u8; 10].into(),
                ..Record::default()
            })
            .collect();
        let limits = crate::storage::LogLimits::default();
        let checked = limits.check(records).unwrap();
        let mut dst = vec![0u8; checked.batch_bytes()];
        format::encode_batch_into(&mut dst, base, &BatchMeta::default(), checked.records());
        let Probe::Header(header) = format::probe_header(&dst).unwrap() else {
            panic!("a header")
        };
        RawBatch {
            header,
            bytes: dst.into(),
        }
    }

    #[test]
    fn keeps_a_bounded_contiguous_window_and_forgets_what_the_log_drops() {
        let one = raw(0, 2).bytes.len();
        let mut cache = TailCache::new(one * 3);
        for base in [0, 2, 4, 6] {
            cache.push(raw(base, 2));
        }
        // The oldest went: 2..8 remain.
        assert!(cache.read(1, u64::MAX).is_none());
        let all = cache.read(3, u64::MAX).unwrap();
        assert_eq!(
            all.iter().map(|b| b.header.base_offset).collect::<Vec<_>>(),
            [2, 4, 6]
        );
        // At least one batch, then only what fits.
        assert_eq!(cache.read(2, 1).unwrap().len(), 1);
        assert_eq!(cache.read(2, one as u64 * 2).unwrap().len(), 2);
        assert!(cache.read(8, u64::MAX).is_none(), "past the end");
        cache.truncate_from(4);
        assert!(cache.read(4, u64::MAX).is_none());
        assert_eq!(cache.read(2, u64::MAX).unwrap().len(), 1);
        // A batch that does not follow starts the window again.
        cache.push(raw(10, 2));
        assert!(cache.read(2, u64::MAX).is_none());
        assert_eq!(cache.read(10, u64::MAX).unwrap().len(), 1);
        cache.drop_below(12);
        assert!(cache.read(10, u64::MAX).is_none());
    }
}
