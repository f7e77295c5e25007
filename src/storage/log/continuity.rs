//! Raft entries follow one another: a replicated log holds entries `i, i + 1, i + 2, …` with
//! no gap, which is what lets it find entry `i` as a segment's first entry plus a batch count
//! (see [`Log::offset_of_raft_index`]).
//!
//! Owns: [`Log::check_entry_index`], asked before every batch is appended, and
//! [`Log::entry_appended`], told after.
//! Must never: accept an entry that does not follow the last one held. A log cut back under
//! a writer that did not see the cut (after a full disk, the unsynced tail goes) would
//! otherwise take that writer's next entry right after the cut, and hold a gap for good.
//!
//! The expected index is known without a read after each entry appended, and after a reset
//! (a snapshot installed: the entry after it); after anything else that moved the end (open,
//! a cut, a batch that is not an entry) it is read from the last batch's header once. A log
//! that holds no batch takes any index. Index 0 is a group's first entry or a batch written
//! without Raft (a solo partition's, whatever its term): a batch of index 0 is not checked,
//! and a last batch of index 0 constrains nothing.

use super::{Log, Result};
use crate::storage::error::Error;
use crate::storage::io::Engine;

impl<E: Engine> Log<E> {
    /// Refuses an entry of index `raft_index` unless it follows the last entry the log holds
    /// (any index is accepted by a log that holds none). Changes nothing.
    pub(super) async fn check_entry_index(&mut self, raft_index: u64) -> Result<()> {
        if raft_index == 0 {
            return Ok(());
        }
        let expected = match self.next_entry_index {
            Some(next) => Some(next),
            None => self
                .last_batch_header()
                .await?
                .filter(|h| h.raft_index != 0)
                .map(|h| h.raft_index + 1),
        };
        match expected {
            Some(expected) if expected != raft_index => Err(Error::EntryGap {
                raft_index,
                expected,
            }),
            _ => Ok(()),
        }
    }

    /// Notes a batch of index `raft_index` appended: the next entry must follow it, unless it
    /// is of index 0 (which constrains nothing).
    pub(super) fn entry_appended(&mut self, raft_index: u64) {
        self.next_entry_index = (raft_index != 0).then_some(raft_index + 1);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::storage::{EntryMeta, Error, Log, LogLimits, PortableEngine, Record};

    async fn open(dir: &std::path::Path) -> Log<PortableEngine> {
        Log::open(PortableEngine::new(), dir, LogLimits::small_for_tests())
            .await
            .unwrap()
            .0
    }

    async fn append(log: &mut Log<PortableEngine>, raft_index: u64) -> crate::storage::Result<u64> {
        let records = vec![Record {
            value: Bytes::from(vec![raft_index as u8; 100]),
            ..Record::default()
        }];
        let batch = log.config().check(records).unwrap();
        let meta = EntryMeta {
            term: 1,
            raft_index,
            control: false,
        };
        log.append_entry(meta, &batch).await
    }

    fn assert_gap(result: crate::storage::Result<u64>, raft_index: u64, expected: u64) {
        match result {
            Err(Error::EntryGap {
                raft_index: got,
                expected: want,
            }) => assert_eq!((got, want), (raft_index, expected)),
            other => panic!("entry {raft_index}: expected a gap refusal, got {other:?}"),
        }
    }

    /// A gap, and an entry written twice, are refused and change nothing, across segments,
    /// a reopen and a cut; the entry that does follow is taken each time.
    #[test]
    fn an_entry_that_does_not_follow_the_last_is_refused_and_changes_nothing() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path()).await;
            for i in 5..20 {
                append(&mut log, i).await.unwrap();
            }
            assert!(log.segment_count() > 2, "entries cross segments");
            let end = log.end_offset();
            assert_gap(append(&mut log, 21).await, 21, 20);
            assert_gap(append(&mut log, 19).await, 19, 20);
            assert_eq!(log.end_offset(), end, "a refusal writes nothing");
            append(&mut log, 20).await.unwrap();

            // Reopened: the expected index is read from the last batch.
            log.sync().await.unwrap();
            log.close().await.unwrap();
            let mut log = open(dir.path()).await;
            assert_gap(append(&mut log, 23).await, 23, 21);
            append(&mut log, 21).await.unwrap();

            // Cut back after entry 12: the next is 13, not 22.
            let cut = log.offset_of_raft_index(13).await.unwrap().unwrap();
            log.truncate_suffix(cut).await.unwrap();
            assert_gap(append(&mut log, 22).await, 22, 13);
            append(&mut log, 13).await.unwrap();
            assert_eq!(
                log.offset_of_raft_index(13).await.unwrap(),
                Some(cut),
                "entry 13 is found where it was written"
            );
        });
    }

    /// Batches of index 0 (written without Raft, whatever their term) are not checked and
    /// do not constrain what follows them.
    #[test]
    fn batches_of_index_zero_are_not_checked() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path()).await;
            for _ in 0..3 {
                append(&mut log, 0).await.unwrap();
            }
            append(&mut log, 7).await.unwrap();
            append(&mut log, 0).await.unwrap();
            append(&mut log, 12).await.unwrap();
            assert_gap(append(&mut log, 14).await, 14, 13);
        });
    }

    /// A fresh log takes any index (a new group's first entry), then only the next; a log
    /// reset for a snapshot takes only the entry after the snapshot.
    #[test]
    fn a_fresh_log_takes_any_index_and_a_reset_one_the_entry_after_its_snapshot() {
        futures::executor::block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path()).await;
            append(&mut log, 40).await.unwrap();
            assert_gap(append(&mut log, 40).await, 40, 41);
            log.reset_to(500, 90).await.unwrap();
            assert_gap(append(&mut log, 95).await, 95, 90);
            append(&mut log, 90).await.unwrap();
            assert_gap(append(&mut log, 92).await, 92, 91);
        });
    }
}
