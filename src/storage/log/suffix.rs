//! The part of a log after one batch: how much a copy of the log that ends at that batch
//! still lacks, in offsets and in store bytes.
//!
//! Owns: [`LogSuffix`] and [`Log::suffix_after_entry`].
//! Must never: read a batch, or walk the log batch by batch. The answer comes from what the
//! log keeps anyway: a binary search over the segments' first entries (each read once and
//! then remembered), two index lookups (memory-mapped), and the byte sizes of the segments
//! after the one found (kept in memory).

use super::{EntryPlace, Log, Result};
use crate::storage::io::Engine;

/// What a log holds after some batch, up to its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogSuffix {
    /// Offsets after the batch up to the end offset: records, and one per control batch.
    pub records: u64,
    /// Store bytes after the batch (whole batches, headers included).
    pub bytes: u64,
}

impl<E: Engine> Log<E> {
    /// What this log holds after the batch of Raft entry `raft_index`. With `None` (nothing
    /// held), or an entry below the log's first one or below its start offset (purged), it
    /// is the whole log, from the batch that holds the start offset; with an entry past the
    /// last one, nothing. Only meaningful in a replicated log (see
    /// [`Log::offset_of_raft_index`]).
    ///
    /// Cost: what [`Log::offset_of_raft_index`] costs (a sealed segment it meets is opened
    /// once), one more index entry, and a sum over the sizes of the segments after the one
    /// that holds the entry (none for an entry in the active segment).
    pub async fn suffix_after_entry(&mut self, raft_index: Option<u64>) -> Result<LogSuffix> {
        let place = match raft_index {
            Some(index) => self.find_entry(index).await?,
            None => EntryPlace::Below,
        };
        match place {
            EntryPlace::Past => Ok(LogSuffix::default()),
            EntryPlace::Below => self.whole_suffix().await,
            EntryPlace::Held { segment, k, entry } => {
                let engine = self.engine.clone();
                let found = &mut self.segments[segment];
                let next_offset = match found.batch_at(&engine, k + 1).await? {
                    Some(next) => next.offset,
                    None => found.next_offset(),
                };
                Ok(LogSuffix {
                    records: self.end_offset() - next_offset,
                    bytes: self.bytes_from(segment, entry.end_position()),
                })
            }
        }
    }

    /// The whole log as a suffix: from the batch that holds the start offset to the end.
    async fn whole_suffix(&mut self) -> Result<LogSuffix> {
        let (start, end) = (self.start_offset, self.end_offset());
        if start == end {
            return Ok(LogSuffix::default());
        }
        let engine = self.engine.clone();
        // Segments wholly below the start are deleted, so the start is in the first one.
        let position = self.segments[0]
            .batch_holding(&engine, start)
            .await?
            .map_or(0, |entry| entry.position);
        Ok(LogSuffix {
            records: end - start,
            bytes: self.bytes_from(0, position),
        })
    }

    /// Store bytes from `position` in segment `segment` to the end of the log.
    fn bytes_from(&self, segment: usize, position: u64) -> u64 {
        let rest: u64 = self
            .segments
            .iter()
            .skip(segment + 1)
            .map(|s| s.size_bytes())
            .sum();
        let here = self.segments[segment].size_bytes();
        assert!(
            position <= here,
            "{}: position {position} past the end {here} of segment {segment}",
            self.dir.display()
        );
        here - position + rest
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::storage::{EntryMeta, LogLimits, PortableEngine, Record};

    /// A replicated log whose entry `i` (from `first_index`) is a batch of `i % 3 + 1`
    /// records; returns each entry's (next offset, store bytes).
    async fn replicated_log(
        dir: &std::path::Path,
        first_index: u64,
        entries: u64,
    ) -> (Log<PortableEngine>, Vec<(u64, u64)>) {
        let (mut log, _) = Log::open(PortableEngine::new(), dir, LogLimits::small_for_tests())
            .await
            .unwrap();
        let mut placed = Vec::new();
        for index in first_index..first_index + entries {
            let records: Vec<Record> = (0..index % 3 + 1)
                .map(|r| Record {
                    value: Bytes::from(vec![index as u8; 40 + r as usize]),
                    ..Record::default()
                })
                .collect();
            let batch = log.config().check(records).unwrap();
            let meta = EntryMeta {
                term: 1,
                raft_index: index,
                control: index == first_index,
            };
            log.append_entry(meta, &batch).await.unwrap();
            placed.push((log.end_offset(), batch.batch_bytes() as u64));
        }
        (log, placed)
    }

    /// The suffix after entry `i`, by summing what was appended after it.
    fn expected(placed: &[(u64, u64)], after: usize) -> LogSuffix {
        let end = placed.last().unwrap().0;
        LogSuffix {
            records: end - placed[after].0,
            bytes: placed[after + 1..].iter().map(|(_, bytes)| bytes).sum(),
        }
    }

    #[test]
    fn the_suffix_after_each_entry_counts_the_offsets_and_bytes_appended_after_it() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, placed) = replicated_log(dir.path(), 0, 40).await;
            assert!(log.segment_count() > 3, "suffixes cross segments");
            for i in 0..placed.len() {
                assert_eq!(
                    log.suffix_after_entry(Some(i as u64)).await.unwrap(),
                    expected(&placed, i),
                    "after entry {i}"
                );
            }
            let whole = LogSuffix {
                records: log.end_offset(),
                bytes: log.size_bytes(),
            };
            assert_eq!(log.suffix_after_entry(None).await.unwrap(), whole);
            assert_eq!(
                log.suffix_after_entry(Some(40)).await.unwrap(),
                LogSuffix::default(),
                "past the last entry"
            );
            // Reopened: the sealed segments are looked up from their files again.
            log.close().await.unwrap();
            let (mut log, _) = Log::open(
                PortableEngine::new(),
                dir.path(),
                LogLimits::small_for_tests(),
            )
            .await
            .unwrap();
            for i in [0, 7, 20, 39] {
                assert_eq!(
                    log.suffix_after_entry(Some(i as u64)).await.unwrap(),
                    expected(&placed, i)
                );
            }
            log.close().await.unwrap();
        });
    }

    #[test]
    fn below_a_purged_start_the_suffix_is_the_whole_log_that_is_left() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            // A log that starts at entry 5 (a follower that installed a snapshot), then has
            // its first segments purged.
            let (mut log, placed) = replicated_log(dir.path(), 5, 40).await;
            let cut = 12;
            log.truncate_prefix(placed[cut].0).await.unwrap();
            let start = log.start_offset();
            assert_eq!(start, placed[cut].0);
            let whole = LogSuffix {
                records: log.end_offset() - start,
                bytes: placed[cut + 1..].iter().map(|(_, bytes)| bytes).sum(),
            };
            assert!(
                whole.bytes < log.size_bytes(),
                "the start falls inside the first segment kept"
            );
            for below in [None, Some(0), Some(4), Some(5), Some(5 + cut as u64)] {
                assert_eq!(
                    log.suffix_after_entry(below).await.unwrap(),
                    whole,
                    "after {below:?}"
                );
            }
            assert_eq!(
                log.suffix_after_entry(Some(5 + cut as u64 + 1))
                    .await
                    .unwrap(),
                expected(&placed, cut + 1)
            );
            log.close().await.unwrap();
        });
    }

    #[test]
    fn an_empty_log_has_an_empty_suffix() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (mut log, _) = Log::open(
                PortableEngine::new(),
                dir.path(),
                LogLimits::small_for_tests(),
            )
            .await
            .unwrap();
            for index in [None, Some(0), Some(9)] {
                assert_eq!(
                    log.suffix_after_entry(index).await.unwrap(),
                    LogSuffix::default()
                );
            }
            log.reset_to(17, 100).await.unwrap();
            assert_eq!(
                log.suffix_after_entry(None).await.unwrap(),
                LogSuffix::default()
            );
            log.close().await.unwrap();
        });
    }
}
