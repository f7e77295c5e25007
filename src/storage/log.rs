//! The partition log: an ordered run of segments with one active segment at the end.
//!
//! Owns: offsets (assignment, start, end, the durable mark and the commit mark), rolling,
//! retention, prefix and suffix truncation, recovery on open, the leader-epoch map, the
//! persisted start offset and vote, enforcing the limits on what
//! may be appended (defined and checked in `limits`), and how much of the log lies after a
//! given entry (`suffix`: what a replica that holds up to it lacks).
//! Must never: be shared. One shard task owns a `Log` and calls it sequentially; nothing in
//! here locks. Must never reuse an offset: the end offset only moves back through an explicit
//! `truncate_suffix`. Must never write a file except through its engine.
//!
//! Two marks: the **durable end** (everything below it survived an fdatasync: moved by
//! `sync`, `roll` and recovery, never by the caller) and the **commit mark**
//! ([`Log::high_watermark`], what readers see: set only by the caller with
//! [`Log::set_commit`], e.g. to the durable end under fsync durability, to a Raft commit
//! index under replication).
//!
//! Invariants: `start_offset <= end_offset`, `commit <= end_offset`, `durable_end <=
//! end_offset`; segments are sorted by base offset, each segment's base is at or above the
//! previous one's next offset, and only the last (active) segment is ever written. Leader
//! epochs and their start offsets strictly increase, and every start offset is below the end.
//! After a failed write or sync the log is poisoned: every later write fails until a reopen
//! recovers it. One failure is the exception: a full disk (`ENOSPC`, `EDQUOT`, a short
//! write). Its poison heals by itself: the next write first reopens the active segment from
//! disk (the recovery of `open`: torn tail cut, index repaired) and cuts it back to what was
//! durable or committed before the failure, then goes on. That is safe because nothing above
//! that mark was acknowledged (under fsync durability an append is acknowledged only below
//! the durable end; under relaxed durability, below the commit mark, which is kept when the
//! disk still holds it), and because the cut and its sync need no free space. Any other
//! failure (`EIO`, a failed cut) keeps the poison until a restart: the state on disk is then
//! unknown.
//!
//! Files in a partition directory: the segments (see `segment`); `start_offset`, the log
//! start offset as decimal text; `leader_epochs`, the epoch → start-offset map (Kafka's
//! leader-epoch checkpoint); `raft_state`, the vote (see `state` for both layouts);
//! `raft_rejoin`, the rejoin marker (see [`Log::rejoin_marker`]). They are replaced
//! atomically through the engine (write tmp, fsync, rename, fsync dir).
//!
//! The epoch map is persisted, not rebuilt: a new epoch's entry is durable before the first
//! batch of that epoch is written, so a durable batch always has its epoch in the map. On open
//! entries at or past the recovered end (their batch was lost in a crash) are dropped; a
//! suffix truncation cuts the store first and the map after (a crash between leaves entries
//! past the end, which open drops). A missing file means every batch has epoch 0.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::error::{Error, Result, io_err};
use super::format::{self, Batch, BatchHeader, BatchMeta, Record};
use super::index::Entry as IndexEntry;
use super::io::Engine;
use super::limits::LogLimits;
use super::segment::{self, Recovery, Segment};
use super::state::{self, AppliedMark, EpochStart, MarkFile, Vote};
use super::tail::TailCache;

mod continuity;
mod suffix;
pub use suffix::LogSuffix;

const START_OFFSET_FILE: &str = "start_offset";

/// Milliseconds since the Unix epoch, by the wall clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What opening a log found; worth a log line when anything was repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub recovery: Recovery,
}

/// One batch as stored, CRC-checked and not decoded: what replication ships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    pub header: BatchHeader,
    /// The whole batch, header included (`header.batch_len` bytes).
    pub bytes: Bytes,
}

/// An encoded batch whose bytes were checked whole (magic, version, length, CRC, every
/// record): what a follower receives and may store as it is. Made only by
/// [`VerifiedBatch::new`], so [`Log::append_verified`] does not check the bytes again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl VerifiedBatch {
    /// Checks `bytes` as exactly one batch, its records included.
    pub fn new(bytes: Bytes) -> std::result::Result<VerifiedBatch, format::DecodeError> {
        let header = format::verify_batch_records(&bytes)?;
        if header.batch_len as usize != bytes.len() {
            return Err(format::DecodeError::ShortBatch {
                batch_len: header.batch_len,
                available: bytes.len(),
            });
        }
        Ok(VerifiedBatch { header, bytes })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }
}

/// What a consensus layer puts in the header of the batch that holds one Raft entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// The entry's term: the batch's `leader_epoch`.
    pub term: u64,
    pub raft_index: u64,
    /// Raft's own entry (blank or membership): a control batch, never served to consumers.
    pub control: bool,
}

/// Where a Raft entry's batch is in a log: held (segment `segment`, its `k`-th batch), or
/// not held because it lies below the log's first entry (or its start offset), or past its
/// last.
enum EntryPlace {
    Held {
        segment: usize,
        k: usize,
        entry: IndexEntry,
    },
    Below,
    Past,
}

/// Why a log refuses writes after a failed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Poison {
    op: &'static str,
    /// The failure was a full disk: the next write tries to recover (see the module docs).
    out_of_space: bool,
}

/// One partition's log.
pub struct Log<E: Engine> {
    engine: E,
    dir: PathBuf,
    config: LogLimits,
    segments: VecDeque<Segment<E>>,
    start_offset: u64,
    /// Everything below is durable.
    durable_end: u64,
    /// What readers see; set by the caller.
    commit: u64,
    /// The leader-epoch map, as persisted in `leader_epochs`.
    epochs: Vec<EpochStart>,
    /// The newest batches as stored, for [`Log::read_raw`]; `None` = off (see
    /// [`Log::keep_tail`]).
    tail: Option<TailCache>,
    poisoned_by: Option<Poison>,
    /// A read met a stored batch that does not check out since [`Log::take_corrupt_read`]
    /// was last asked: the caller may want to repair the log.
    corrupt_read: bool,
    /// The rejoin marker as `raft_rejoin` holds it (see [`Log::rejoin_marker`]).
    rejoin_from: Option<u64>,
    /// The Raft index the next entry must carry, when known without a read (see
    /// [`Log::check_entry_index`]): set by each batch appended, forgotten by anything else
    /// that moves the end.
    next_entry_index: Option<u64>,
}

impl<E: Engine> Log<E> {
    /// Opens the log in `dir`, creating it if needed. The active segment is recovered (torn
    /// tail cut, index repaired, synced); sealed segments are only listed, not read.
    ///
    /// # Correctness
    /// Everything in the log after `open` is durable: the durable end and the commit mark
    /// start at the end offset (a consensus layer lowers the commit mark with
    /// [`Log::set_commit`] before serving reads).
    pub async fn open(engine: E, dir: &Path, config: LogLimits) -> Result<(Log<E>, OpenReport)> {
        config.validate()?;
        engine
            .create_dir_all(dir)
            .await
            .map_err(io_err("create partition dir", dir))?;
        remove_stale_tmp_files(&engine, dir).await?;
        let persisted_start = read_start_offset(&engine, dir).await?;
        let (segments, report) = open_segments(&engine, dir, &config, persisted_start).await?;
        let first_base = segments
            .front()
            .expect("at least one segment")
            .base_offset();
        let end = segments.back().expect("at least one segment").next_offset();
        let start_offset = persisted_start
            .unwrap_or(first_base)
            .max(first_base)
            .min(end);
        let mut log = Log {
            engine,
            dir: dir.to_owned(),
            config,
            segments,
            start_offset,
            durable_end: end,
            commit: end,
            epochs: Vec::new(),
            tail: None,
            poisoned_by: None,
            corrupt_read: false,
            rejoin_from: None,
            next_entry_index: None,
        };
        log.recover_epochs().await?;
        log.rejoin_from = read_rejoin_marker(&log.engine, &log.dir).await?;
        log.check_invariants();
        Ok((log, report))
    }

    /// Loads the epoch map and drops the entries a crash left past the end.
    async fn recover_epochs(&mut self) -> Result<()> {
        let read = read_state(
            &self.engine,
            &self.dir,
            state::LEADER_EPOCHS_FILE,
            "read leader epochs",
        );
        let Some((path, bytes)) = read.await? else {
            return Ok(());
        };
        let mut epochs =
            state::decode_epochs(&bytes).map_err(|source| Error::BadStateFile { path, source })?;
        let end = self.end_offset();
        let before = epochs.len();
        epochs.retain(|e| e.start_offset < end);
        self.epochs = epochs;
        if self.epochs.len() != before {
            self.persist_epochs().await?;
        }
        Ok(())
    }

    fn check_invariants(&self) {
        let end = self.end_offset();
        assert!(
            self.start_offset <= end && self.commit <= end && self.durable_end <= end,
            "{}: start {} / commit {} / durable {} / end {end} out of order",
            self.dir.display(),
            self.start_offset,
            self.commit,
            self.durable_end,
        );
        assert!(
            self.epochs
                .windows(2)
                .all(|w| w[0].epoch < w[1].epoch && w[0].start_offset < w[1].start_offset)
                && self.epochs.last().is_none_or(|e| e.start_offset < end),
            "{}: leader epochs out of order: {:?} (end {end})",
            self.dir.display(),
            self.epochs
        );
    }

    /// Keeps the newest batches, up to `bytes_max`, in memory as they are appended, so that
    /// [`Log::read_raw`] serves them without a disk read (a replicated log reads its tail back
    /// to ship and to apply it). Costs one copy per append on the leader's path.
    pub fn keep_tail(&mut self, bytes_max: usize) {
        self.tail = (bytes_max > 0).then(|| TailCache::new(bytes_max));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &LogLimits {
        &self.config
    }
    /// The engine this log writes through (for counters such as fdatasyncs).
    pub fn engine(&self) -> &E {
        &self.engine
    }
    /// The first offset that can be read.
    pub fn start_offset(&self) -> u64 {
        self.start_offset
    }
    /// The next offset to be written.
    pub fn end_offset(&self) -> u64 {
        self.active().next_offset()
    }
    /// The commit mark: the end of what readers may see. Set by the caller
    /// ([`Log::set_commit`]); never moved by a sync or a roll.
    pub fn high_watermark(&self) -> u64 {
        self.commit
    }
    /// The end of what is durable on this node: moved by [`Log::sync`], [`Log::roll`] and
    /// recovery.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    /// Bytes in all store files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::size_bytes).sum()
    }
    /// Why writes fail, when a failed write or sync has poisoned the log.
    pub fn poisoned_by(&self) -> Option<&'static str> {
        self.poisoned_by.map(|p| p.op)
    }

    /// The error a write gets while the log is poisoned, `None` when it is not: a full disk
    /// the next write will try to recover from, or a failure only a restart recovers.
    pub fn poison_error(&self) -> Option<Error> {
        self.poisoned_by.map(|poison| {
            let (dir, op) = (self.dir.clone(), poison.op);
            if poison.out_of_space {
                Error::OutOfSpacePending { dir, op }
            } else {
                Error::Poisoned { dir, op }
            }
        })
    }

    fn active(&self) -> &Segment<E> {
        self.segments
            .back()
            .expect("a log always has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment<E> {
        self.segments
            .back_mut()
            .expect("a log always has an active segment")
    }

    /// Checks `start_offset <= offset <= end_offset`; returns the end offset.
    fn check_in_range(&self, offset: u64) -> Result<u64> {
        let end = self.end_offset();
        if offset < self.start_offset || offset > end {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end,
            });
        }
        Ok(end)
    }

    /// Refuses a write while the log is poisoned; a full disk's poison is first given a
    /// chance to heal ([`Log::recover_from_full_disk`]).
    async fn check_writable(&mut self) -> Result<()> {
        let Some(poison) = self.poisoned_by else {
            return Ok(());
        };
        if poison.out_of_space {
            match self.recover_from_full_disk().await {
                Ok(()) => {
                    tracing::info!(dir = %self.dir.display(), end_offset = self.end_offset(), "partition log recovered from a full disk; writes resume");
                    self.poisoned_by = None;
                    return Ok(());
                }
                Err(e) if e.is_out_of_space() => {
                    tracing::debug!(dir = %self.dir.display(), error = %e, "still no space to recover the partition log");
                }
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "recovering from a full disk failed; the partition log stays poisoned until a restart");
                    self.poisoned_by = Some(Poison {
                        op: "recovery from a full disk",
                        out_of_space: false,
                    });
                }
            }
        }
        Err(self.poison_error().expect("poisoned"))
    }

    /// Records the first failed write: the on-disk state is unknown from here on, unless the
    /// failure was a full disk (then the next write recovers, see the module docs).
    fn poison<T>(&mut self, op: &'static str, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            let out_of_space = e.is_out_of_space();
            if out_of_space {
                tracing::warn!(dir = %self.dir.display(), op, error = %e, "partition log ran out of disk space; writes are refused until it recovers");
            } else {
                tracing::error!(dir = %self.dir.display(), op, error = %e, "partition log poisoned");
            }
            self.poisoned_by.get_or_insert(Poison { op, out_of_space });
        }
        result
    }

    /// Heals a full disk's poison: reopens the active segment from disk as `open` does (torn
    /// tail cut, index repaired, synced) and cuts it back to the durable end, or to the
    /// commit mark where that is higher (relaxed durability acknowledges below it).
    ///
    /// # Correctness
    /// Nothing above the durable end or the commit mark was acknowledged, so the cut loses
    /// nothing a client was told is stored. The durable end must still be on disk (it was
    /// synced); if it is not, the error is not an out-of-space one and the log stays
    /// poisoned. A commit mark the disk no longer holds (relaxed durability, a write-behind
    /// that failed) is lowered, as a crash would, with a warning.
    async fn recover_from_full_disk(&mut self) -> Result<()> {
        let keep = self.durable_end.max(self.commit);
        let engine = self.engine.clone();
        let index_bytes_max = self.config.index_bytes_max;
        let active = self.active_mut();
        let (base, end_before) = (active.base_offset(), active.next_offset());
        // The file may be poisoned in its engine; its descriptor is released either way.
        if let Err(e) = active.close_files().await {
            tracing::debug!(error = %e, "closing the active segment after a full disk");
        }
        if end_before > base {
            // A roll that failed part-way may have left the next segment's files.
            for name in [
                segment::store_file_name(end_before),
                segment::index_file_name(end_before),
            ] {
                let path = self.dir.join(name);
                engine
                    .remove_if_exists(&path)
                    .await
                    .map_err(io_err("remove a half-created segment", &path))?;
            }
        }
        let (mut recovered, _) =
            Segment::recover(&engine, &self.dir, base, index_bytes_max, now_ms()).await?;
        if recovered.next_offset() < self.durable_end {
            return Err(Error::Io {
                op: "recovery from a full disk",
                path: recovered.store_path().to_owned(),
                source: std::io::Error::other(format!(
                    "the segment ends at offset {} on disk, below the durable end {}",
                    recovered.next_offset(),
                    self.durable_end
                )),
            });
        }
        if recovered.next_offset() > keep {
            recovered
                .truncate_from(&engine, keep, index_bytes_max)
                .await?;
        }
        *self.active_mut() = recovered;
        self.next_entry_index = None;
        let end = self.end_offset();
        if self.commit > end {
            tracing::warn!(dir = %self.dir.display(), commit = self.commit, end, "records acknowledged without a sync (relaxed durability) were lost to the full disk");
            self.commit = end;
        }
        self.durable_end = end;
        if let Some(tail) = self.tail.as_mut() {
            tail.truncate_from(end);
        }
        let before = self.epochs.len();
        self.epochs.retain(|e| e.start_offset < end);
        if self.epochs.len() != before {
            self.persist_epochs().await?;
        }
        self.check_invariants();
        Ok(())
    }

    /// Sets the commit mark, which bounds reads. The caller decides what is committed: the
    /// durable end under fsync durability, the end under relaxed durability, the Raft commit
    /// index under replication. It may move back (after a suffix truncation, or when a
    /// consensus layer takes over after open), never past the end offset.
    pub fn set_commit(&mut self, offset: u64) -> Result<()> {
        let end = self.end_offset();
        if offset > end {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end,
            });
        }
        self.commit = offset;
        Ok(())
    }

    /// Appends one batch in the log's last term and returns its base offset (see
    /// [`Log::append_in_term`]).
    pub async fn append(&mut self, records: &[Record]) -> Result<u64> {
        self.append_in_term(self.last_term(), records).await
    }

    /// Appends one batch written by the leader of `term` (>= the last term) and returns its
    /// base offset. Limits are checked before any byte is written; a refused batch changes
    /// nothing.
    ///
    /// # Correctness
    /// On return the batch is in the store but neither durable nor readable: it becomes
    /// durable after [`Log::sync`] (or a roll), and readable once the caller moves the
    /// commit mark past it ([`Log::set_commit`]). A new term's entry in the epoch map is
    /// durable before the batch is written.
    pub async fn append_in_term(&mut self, term: u64, records: &[Record]) -> Result<u64> {
        let batch_bytes = self.config.measure_batch(records)?;
        let meta = BatchMeta {
            leader_epoch: term,
            ..BatchMeta::default()
        };
        self.append_measured(meta, records, batch_bytes).await
    }

    /// Appends a batch that [`LogLimits::check`] measured, in the log's last term, without
    /// measuring it again (the shard's path: the front end checked it). `batch` must have
    /// been checked against this log's limits.
    ///
    /// # Correctness
    /// As for [`Log::append_in_term`].
    pub async fn append_checked(&mut self, batch: &super::CheckedBatch) -> Result<u64> {
        assert!(
            batch.batch_bytes() as u64 <= self.config.batch_bytes_max,
            "{}: a batch of {} bytes was checked against other limits (batch_bytes_max = {})",
            self.dir.display(),
            batch.batch_bytes(),
            self.config.batch_bytes_max
        );
        let producer = batch.producer();
        let meta = BatchMeta {
            leader_epoch: self.last_term(),
            producer_id: producer.map_or(0, |p| p.producer_id),
            producer_seq: producer.map_or(0, |p| p.sequence),
            ..BatchMeta::default()
        };
        self.append_measured(meta, batch.records(), batch.batch_bytes())
            .await
    }

    /// Appends one Raft entry as one batch: `meta` carries its term (the batch's leader
    /// epoch), its Raft index and whether it is a control batch (Raft's own entries, never
    /// served to consumers). `batch` must have been checked against this log's limits.
    ///
    /// # Correctness
    /// As for [`Log::append_in_term`].
    pub async fn append_entry(
        &mut self,
        meta: EntryMeta,
        batch: &super::CheckedBatch,
    ) -> Result<u64> {
        let producer = batch.producer();
        let batch_meta = BatchMeta {
            leader_epoch: meta.term,
            raft_index: meta.raft_index,
            flags: if meta.control {
                format::FLAG_CONTROL
            } else {
                0
            },
            producer_id: producer.map_or(0, |p| p.producer_id),
            producer_seq: producer.map_or(0, |p| p.sequence),
        };
        self.append_measured(batch_meta, batch.records(), batch.batch_bytes())
            .await
    }

    /// The base offset of the batch that holds Raft entry `raft_index`, or `None` when the
    /// log does not hold it (below the start or past the end). Only meaningful in a
    /// replicated log, where batch `k` of a segment is entry `first + k`: a binary search over
    /// the segments' first entries, then one index lookup.
    pub async fn offset_of_raft_index(&mut self, raft_index: u64) -> Result<Option<u64>> {
        Ok(match self.find_entry(raft_index).await? {
            EntryPlace::Held { entry, .. } => Some(entry.offset),
            EntryPlace::Below | EntryPlace::Past => None,
        })
    }

    /// Where the batch of Raft entry `raft_index` is (see [`Log::offset_of_raft_index`]).
    async fn find_entry(&mut self, raft_index: u64) -> Result<EntryPlace> {
        let (mut lo, mut hi) = (0, self.segments.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match self.segments[mid].first_raft_index(&self.engine).await? {
                Some(first) if first <= raft_index => lo = mid,
                // Only the active segment can be empty, and it is the last.
                _ => hi = mid,
            }
        }
        let engine = self.engine.clone();
        let segment = &mut self.segments[lo];
        let Some(first) = segment.first_raft_index(&engine).await? else {
            // Only an empty log has an empty first segment.
            return Ok(EntryPlace::Past);
        };
        let Some(k) = raft_index.checked_sub(first) else {
            return Ok(EntryPlace::Below);
        };
        let Ok(k) = usize::try_from(k) else {
            return Ok(EntryPlace::Past);
        };
        Ok(match segment.batch_at(&engine, k).await? {
            None => EntryPlace::Past,
            Some(entry) if entry.offset < self.start_offset => EntryPlace::Below,
            Some(entry) => EntryPlace::Held {
                segment: lo,
                k,
                entry,
            },
        })
    }

    /// The header of the last batch in the log, `None` when the log holds none: a consensus
    /// layer learns its last entry's index and term from it.
    pub async fn last_batch_header(&mut self) -> Result<Option<BatchHeader>> {
        let engine = self.engine.clone();
        for i in (0..self.segments.len()).rev() {
            let Some(entry) = self.segments[i].last_batch(&engine).await? else {
                continue;
            };
            return self.header_at(entry.offset).await;
        }
        Ok(None)
    }

    /// The headers of at most `batches_max` batches that end at or below `below_offset`,
    /// the newest of them, oldest first: what a partition rebuilds its producer window from
    /// on open. Reads only headers (no record, no CRC over the body), newest segment first,
    /// and opens no more sealed segments than those batches sit in; a sealed segment it had
    /// to open is closed again before the next, so the scan holds at most one more file.
    pub async fn tail_headers(
        &mut self,
        below_offset: u64,
        batches_max: usize,
    ) -> Result<Vec<BatchHeader>> {
        let mut headers = Vec::new();
        let last = self.segments.len().saturating_sub(1);
        for i in (0..self.segments.len()).rev() {
            if headers.len() >= batches_max {
                break;
            }
            if self.segments[i].base_offset() >= below_offset {
                continue;
            }
            let was_open = self.segments[i].files_open();
            let scanned = self
                .segment_tail_headers(i, below_offset, batches_max, &mut headers)
                .await;
            if !was_open && i != last {
                self.segments[i].close_files().await?;
            }
            if !scanned? {
                break;
            }
        }
        headers.reverse();
        Ok(headers)
    }

    /// [`Log::tail_headers`] within segment `i`, newest batch first, onto `headers`; false
    /// once the scan is done (enough headers, or the start of the log reached).
    async fn segment_tail_headers(
        &mut self,
        i: usize,
        below_offset: u64,
        batches_max: usize,
        headers: &mut Vec<BatchHeader>,
    ) -> Result<bool> {
        let engine = self.engine.clone();
        let start_offset = self.start_offset;
        let segment = &mut self.segments[i];
        let count = segment.batch_count(&engine).await?;
        for k in (0..count).rev() {
            if headers.len() >= batches_max {
                return Ok(false);
            }
            let Some(header) = segment.header_of(&engine, k).await? else {
                break;
            };
            if header.base_offset < start_offset {
                return Ok(false);
            }
            if header.next_offset() <= below_offset {
                headers.push(header);
            }
        }
        Ok(true)
    }

    /// The header of the batch that holds `offset`, read alone (from the tail cache when it
    /// has it); `None` below the start or at the end.
    pub async fn header_at(&mut self, offset: u64) -> Result<Option<BatchHeader>> {
        if offset < self.start_offset || offset >= self.end_offset() {
            return Ok(None);
        }
        let batches = self.read_raw(offset, 0).await?;
        Ok(batches.into_iter().next().map(|raw| raw.header))
    }

    /// Appends `records`, whose encoded size is `batch_bytes`, with `meta` in the header.
    async fn append_measured(
        &mut self,
        meta: BatchMeta,
        records: &[Record],
        batch_bytes: usize,
    ) -> Result<u64> {
        self.check_writable().await?;
        self.check_entry_index(meta.raft_index).await?;
        let term = meta.leader_epoch;
        self.check_term(term)?;
        let base_offset = self.end_offset();
        let next_offset = base_offset
            .checked_add(records.len() as u64)
            .expect("offsets exhausted");
        self.roll_if_full(batch_bytes).await?;
        self.note_epoch(term, base_offset).await?;
        // Encoded straight into the engine's write buffer where it has one (and copied out for
        // the tail cache when it is on).
        let keep = self.tail.is_some();
        let mut kept: Option<Bytes> = None;
        let encode = |dst: &mut [u8]| {
            format::encode_batch_into(dst, base_offset, &meta, records);
            if keep {
                kept = Some(Bytes::copy_from_slice(dst));
            }
        };
        let appended = self
            .active_mut()
            .append(batch_bytes, encode, base_offset, next_offset)
            .await;
        self.poison("append", appended)?;
        assert_eq!(self.end_offset(), next_offset, "end offset after append");
        if let (Some(tail), Some(bytes)) = (self.tail.as_mut(), kept) {
            match format::probe_header(&bytes) {
                Ok(format::Probe::Header(header)) => tail.push(RawBatch { header, bytes }),
                _ => unreachable!("a batch just encoded has a header"),
            }
        }
        self.entry_appended(meta.raft_index);
        Ok(base_offset)
    }

    /// Appends a batch that is already encoded (the follower path) and returns its base
    /// offset. It must verify (magic, version, CRC, records), fit `batch_bytes_max`, start at
    /// the end offset and carry a term (`leader_epoch`) at or above the last term. A refused
    /// batch changes nothing. The bytes are stored as they are (after one copy: replication
    /// checks what it receives where it receives it, and calls [`Log::append_verified`]).
    ///
    /// # Correctness
    /// As for [`Log::append_in_term`].
    pub async fn append_encoded(&mut self, bytes: &[u8]) -> Result<u64> {
        self.check_writable().await?;
        let batch = VerifiedBatch::new(Bytes::copy_from_slice(bytes))
            .map_err(|source| Error::BadBatch { source })?;
        self.append_verified(&batch).await
    }

    /// [`Log::append_encoded`] for a batch whose bytes were checked already (where it was
    /// received): only what depends on this log is checked (size limit, continuity, term).
    ///
    /// # Correctness
    /// As for [`Log::append_in_term`].
    pub async fn append_verified(&mut self, batch: &VerifiedBatch) -> Result<u64> {
        self.check_writable().await?;
        let (header, bytes) = (&batch.header, &batch.bytes[..]);
        if u64::from(header.batch_len) > self.config.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: bytes.len(),
                max: self.config.batch_bytes_max,
            });
        }
        let base_offset = self.end_offset();
        if header.base_offset != base_offset {
            return Err(Error::NotContinuous {
                base_offset: header.base_offset,
                end_offset: base_offset,
            });
        }
        self.check_entry_index(header.raft_index).await?;
        self.check_term(header.leader_epoch)?;
        let next_offset = header.next_offset();
        self.roll_if_full(bytes.len()).await?;
        self.note_epoch(header.leader_epoch, base_offset).await?;
        let copy = |dst: &mut [u8]| dst.copy_from_slice(bytes);
        let appended = self
            .active_mut()
            .append(bytes.len(), copy, base_offset, next_offset)
            .await;
        self.poison("append", appended)?;
        assert_eq!(self.end_offset(), next_offset, "end offset after append");
        if let Some(tail) = self.tail.as_mut() {
            // A copy: the received bytes may be a slice of a whole network frame, which the
            // cache would otherwise keep alive beyond its bound.
            tail.push(RawBatch {
                header: *header,
                bytes: Bytes::copy_from_slice(&batch.bytes),
            });
        }
        self.entry_appended(header.raft_index);
        Ok(base_offset)
    }

    fn check_term(&self, term: u64) -> Result<()> {
        let last_term = self.last_term();
        if term < last_term {
            return Err(Error::TermRegressed { term, last_term });
        }
        Ok(())
    }

    /// True when segments roll by age and the active one is `segment_ms` old. The clock is
    /// read only when age matters (`segment_ms > 0`), not on every append.
    fn active_is_aged(&self, now_ms: impl FnOnce() -> i64) -> bool {
        self.config.segment_ms > 0
            && now_ms().saturating_sub(self.active().created_ms()) >= self.config.segment_ms as i64
    }

    /// Rolls first when a batch of `batch_bytes` would overfill or overage the active
    /// segment, or start more than `u32::MAX` offsets past its base (an index entry holds
    /// that distance in 32 bits; a recovered segment whose last batch spans billions of
    /// offsets, which only a crafted or mis-written batch does, ends there).
    async fn roll_if_full(&mut self, batch_bytes: usize) -> Result<()> {
        let active = self.active();
        let must_roll = active.size_bytes() > 0
            && (active.size_bytes() + batch_bytes as u64 > self.config.segment_bytes_max
                || active.index_is_full()
                || self.end_offset() - active.base_offset() > u64::from(u32::MAX)
                || self.active_is_aged(now_ms));
        if must_roll {
            self.roll().await?;
        }
        Ok(())
    }

    /// Starts epoch `term` at `base_offset` in the map (durably) when it is new.
    async fn note_epoch(&mut self, term: u64, base_offset: u64) -> Result<()> {
        if term == self.last_term() {
            return Ok(());
        }
        self.epochs.push(EpochStart {
            epoch: term,
            start_offset: base_offset,
        });
        let persisted = self.persist_epochs().await;
        if persisted.is_err() {
            self.epochs.pop();
        }
        self.poison("persist leader epochs", persisted)
    }

    async fn persist_epochs(&self) -> Result<()> {
        let bytes = state::encode_epochs(&self.epochs);
        replace_state(
            &self.engine,
            &self.dir,
            state::LEADER_EPOCHS_FILE,
            "persist leader epochs",
            &bytes,
        )
        .await
    }

    /// The term of the last batch (0 for an empty log or one never replicated).
    pub fn last_term(&self) -> u64 {
        self.epochs.last().map_or(0, |e| e.epoch)
    }

    /// The leader epoch (Raft term) of the batch that holds `offset`, which must lie in
    /// `start_offset..end_offset`.
    pub fn term_at(&self, offset: u64) -> Result<u64> {
        let end = self.end_offset();
        if offset < self.start_offset || offset >= end {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.start_offset,
                end,
            });
        }
        let i = self.epochs.partition_point(|e| e.start_offset <= offset);
        Ok(i.checked_sub(1).map_or(0, |i| self.epochs[i].epoch))
    }

    /// The epoch → start-offset map (Kafka's leader-epoch checkpoint), oldest first.
    pub fn leader_epochs(&self) -> &[EpochStart] {
        &self.epochs
    }

    /// Kafka's `OffsetsForLeaderEpoch`: the end of `epoch` on this log, i.e. the start of the
    /// first larger epoch, or the end offset when none is larger. A follower truncates its
    /// suffix there after a leader change. Batches before the first entry have epoch 0.
    pub fn epoch_end_offset(&self, epoch: u64) -> u64 {
        self.epochs
            .iter()
            .find(|e| e.epoch > epoch)
            .map_or(self.end_offset(), |e| e.start_offset)
    }

    /// The durable vote, or the default (term 0, no vote) when none was saved.
    pub async fn vote(&self) -> Result<Vote> {
        let read = read_state(
            &self.engine,
            &self.dir,
            state::RAFT_STATE_FILE,
            "read raft state",
        );
        match read.await? {
            None => Ok(Vote::default()),
            Some((path, bytes)) => {
                state::decode_vote(&bytes).map_err(|source| Error::BadStateFile { path, source })
            }
        }
    }

    /// Saves the vote (term and voted-for node) in `raft_state`, replaced atomically.
    ///
    /// # Correctness
    /// Durable before this returns `Ok` (a Raft node must not answer a vote request before
    /// its vote survives a crash). After an error the file holds the old vote or the new one.
    pub async fn save_vote(&mut self, vote: &Vote) -> Result<()> {
        self.check_writable().await?;
        let bytes = state::encode_vote(vote);
        replace_state(
            &self.engine,
            &self.dir,
            state::RAFT_STATE_FILE,
            "persist raft state",
            &bytes,
        )
        .await
    }

    /// The mark `file` holds, if it exists.
    pub async fn mark(&self, file: MarkFile) -> Result<Option<AppliedMark>> {
        let read = read_state(&self.engine, &self.dir, file.name(), "read a raft mark");
        let Some((path, bytes)) = read.await? else {
            return Ok(None);
        };
        state::decode_applied(&bytes)
            .map(Some)
            .map_err(|source| Error::BadStateFile { path, source })
    }

    /// Replaces the mark `file` holds, atomically and durably.
    pub async fn save_mark(&mut self, file: MarkFile, mark: &AppliedMark) -> Result<()> {
        self.check_writable().await?;
        let bytes = state::encode_applied(mark);
        replace_state(
            &self.engine,
            &self.dir,
            file.name(),
            "persist a raft mark",
            &bytes,
        )
        .await
    }

    /// The rejoin marker, if one is set: the first offset this replica lost. A replica that
    /// lost entries it had acknowledged to its peers (a wiped directory, a damaged segment cut
    /// away) must not count as a copy of them until it has fetched them again; the consensus
    /// layer sets the marker before the replica serves again and clears it once it has caught
    /// up, so the rule survives a restart in between. Opaque to storage otherwise.
    pub fn rejoin_marker(&self) -> Option<u64> {
        self.rejoin_from
    }

    /// Sets the rejoin marker (`raft_rejoin`) to `lost_from`, durably: on `Ok` it survives a
    /// crash. A marker already set keeps the lower of the two offsets.
    pub async fn set_rejoin_marker(&mut self, lost_from: u64) -> Result<()> {
        self.check_writable().await?;
        let lost_from = self.rejoin_from.map_or(lost_from, |old| old.min(lost_from));
        let bytes = state::encode_rejoin(lost_from);
        replace_state(
            &self.engine,
            &self.dir,
            state::RAFT_REJOIN_FILE,
            "persist the rejoin marker",
            &bytes,
        )
        .await?;
        self.rejoin_from = Some(lost_from);
        Ok(())
    }

    /// Removes the rejoin marker, durably. Nothing to do when none is set.
    pub async fn clear_rejoin_marker(&mut self) -> Result<()> {
        if self.rejoin_from.is_none() {
            return Ok(());
        }
        let path = self.dir.join(state::RAFT_REJOIN_FILE);
        self.engine
            .remove_if_exists(&path)
            .await
            .map_err(io_err("remove the rejoin marker", &path))?;
        self.rejoin_from = None;
        Ok(())
    }

    /// Empties the log and starts it again at `offset` (a consensus layer installing a
    /// snapshot that covers everything before it): every segment is deleted, the start, end,
    /// durable end and commit mark all become `offset`, and the epoch map is cleared. The
    /// next Raft entry appended must be `next_entry_index` (the one after the snapshot).
    ///
    /// # Correctness
    /// The new start offset is persisted first, then the segments are deleted oldest first
    /// and the new one created. A crash part-way leaves segments below the new start, which
    /// reads refuse; the consensus layer saved its snapshot mark before calling this, and
    /// installs the snapshot again if it is asked to.
    pub async fn reset_to(&mut self, offset: u64, next_entry_index: u64) -> Result<()> {
        self.check_writable().await?;
        self.move_start(offset).await?;
        self.next_entry_index = None;
        if let Some(tail) = self.tail.as_mut() {
            tail.clear();
        }
        while let Some(segment) = self.segments.pop_front() {
            let deleted = segment.delete(&self.engine).await;
            self.poison("delete segment", deleted)?;
        }
        let created = Segment::create(
            &self.engine,
            &self.dir,
            offset,
            self.config.index_bytes_max,
            now_ms(),
        )
        .await;
        let segment = self.poison("create segment", created)?;
        self.segments.push_back(segment);
        self.durable_end = offset;
        self.commit = offset;
        self.epochs.clear();
        let persisted = self.persist_epochs().await;
        self.poison("persist leader epochs", persisted)?;
        self.next_entry_index = Some(next_entry_index);
        self.check_invariants();
        Ok(())
    }

    /// The applied mark a consensus layer saved ([`Log::save_applied_mark`]), if any, and if
    /// it still fits this log: a mark past the end (the log lost entries it had applied,
    /// which only a damaged disk does) or below the start is ignored, with a warning.
    pub async fn applied_mark(&self) -> Result<Option<AppliedMark>> {
        let Some(mark) = self.mark(MarkFile::Applied).await? else {
            return Ok(None);
        };
        if mark.next_offset > self.end_offset() || mark.next_offset < self.start_offset {
            tracing::warn!(dir = %self.dir.display(), next_offset = mark.next_offset, start = self.start_offset, end = self.end_offset(), "an applied mark outside the log; ignored (the log will be replayed)");
            return Ok(None);
        }
        Ok(Some(mark))
    }

    /// Saves how far a consensus layer has applied this log, replaced atomically.
    pub async fn save_applied_mark(&mut self, mark: &AppliedMark) -> Result<()> {
        self.save_mark(MarkFile::Applied, mark).await
    }

    /// Seals the active segment (synced) and starts a new one at the end offset. Does
    /// nothing when the active segment is empty.
    ///
    /// # Correctness
    /// Everything appended so far is durable on return (the seal syncs it): the durable end
    /// moves to the end. The commit mark does not move.
    pub async fn roll(&mut self) -> Result<()> {
        self.check_writable().await?;
        if self.active().size_bytes() == 0 {
            return Ok(());
        }
        let end = self.end_offset();
        let now = now_ms();
        let engine = self.engine.clone();
        let sealed = self.active_mut().seal(&engine, now).await;
        self.poison("seal segment", sealed)?;
        self.durable_end = end;
        let created = Segment::create(
            &self.engine,
            &self.dir,
            end,
            self.config.index_bytes_max,
            now,
        )
        .await;
        let segment = self.poison("create segment", created)?;
        self.segments.push_back(segment);
        Ok(())
    }

    /// Rolls the active segment when it is older than `segment_ms` at `now_ms`.
    pub async fn roll_if_aged(&mut self, now_ms: i64) -> Result<bool> {
        let due = self.active().size_bytes() > 0 && self.active_is_aged(|| now_ms);
        if due {
            self.roll().await?;
        }
        Ok(due)
    }

    /// Makes everything appended durable and moves the durable end to the end. Returns the
    /// new durable end. The commit mark does not move: the caller sets it.
    ///
    /// # Correctness
    /// Durable on return. A failure poisons the log (never retried).
    pub async fn sync(&mut self) -> Result<u64> {
        self.check_writable().await?;
        let end = self.end_offset();
        let synced = self.active_mut().sync().await;
        self.poison("sync", synced)?;
        self.durable_end = end;
        Ok(end)
    }

    /// The index of the segment that holds `offset` (the last whose base is at or below).
    fn segment_of(&self, offset: u64) -> usize {
        self.segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1)
    }

    /// Reads batches from `from_offset` (at least one whole batch when one is readable, then
    /// more up to `max_bytes`), below the commit mark. Records below `from_offset` are
    /// trimmed from the first batch. Empty when `from_offset` is at the commit mark.
    ///
    /// A batch that fails its CRC is never returned: the read fails with an error naming the
    /// segment file and position.
    pub async fn read(&mut self, from_offset: u64, max_bytes: u64) -> Result<Vec<Batch>> {
        self.check_in_range(from_offset)?;
        let mut from = from_offset;
        let mut i = self.segment_of(from);
        let mut out: Vec<Batch> = Vec::new();
        let mut total = 0u64;
        // Across segments: a read stops where the next batch would not fit, not where a
        // segment ends.
        while from < self.commit && i < self.segments.len() {
            let budget = max_bytes.saturating_sub(total);
            let read = self.segments[i]
                .read(&self.engine, from, budget, self.commit)
                .await;
            let batches = match read {
                Ok(batches) => batches,
                Err(e) => {
                    self.corrupt_read |= matches!(e, Error::Corrupt { .. });
                    // What was read stands; the next read meets the error at its start.
                    return if out.is_empty() { Err(e) } else { Ok(out) };
                }
            };
            for batch in batches {
                let len = u64::from(batch.header.batch_len);
                // The first batch always comes back; later ones only when they fit.
                if !out.is_empty() && total + len > max_bytes {
                    return Ok(out);
                }
                total += len;
                from = batch.header.next_offset();
                out.push(batch);
            }
            if total >= max_bytes {
                break;
            }
            // On to the next segment only when this one has nothing more (what it still holds
            // did not fit otherwise).
            i += 1;
            match self.segments.get(i) {
                Some(next) if from >= next.base_offset() || out.is_empty() => {
                    from = from.max(next.base_offset());
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Whether a read met a stored batch that does not check out (and was refused
    /// [`Error::Corrupt`]) since the last call: damage the log's owner may repair (see
    /// [`Log::find_damage`]). Asking clears it.
    pub fn take_corrupt_read(&mut self) -> bool {
        std::mem::take(&mut self.corrupt_read)
    }

    /// The batch just appended at `base_offset`, as stored, when the tail cache kept it (no
    /// I/O): the newest batch of the cache.
    pub(crate) fn tail_batch(&self, base_offset: u64) -> Option<RawBatch> {
        self.tail
            .as_ref()?
            .last()
            .filter(|b| b.header.base_offset == base_offset)
            .cloned()
    }

    /// Reads whole batches as stored, CRC-checked and not decoded, for shipping to a
    /// follower: from the batch that holds `from_offset` (not trimmed), at least one when
    /// there is one, then more within `max_bytes`. Bounded by the end offset, not the commit
    /// mark: a leader ships entries before they commit.
    pub async fn read_raw(&mut self, from_offset: u64, max_bytes: u64) -> Result<Vec<RawBatch>> {
        let end = self.check_in_range(from_offset)?;
        if let Some(batches) = self
            .tail
            .as_ref()
            .and_then(|t| t.read(from_offset, max_bytes))
        {
            return Ok(batches);
        }
        let mut from = from_offset;
        let mut i = self.segment_of(from);
        while from < end && i < self.segments.len() {
            let batches = self.segments[i]
                .read_raw(&self.engine, from, max_bytes, end)
                .await
                .inspect_err(|e| self.corrupt_read |= matches!(e, Error::Corrupt { .. }))?;
            if !batches.is_empty() {
                return Ok(batches
                    .into_iter()
                    .map(|(header, bytes)| RawBatch { header, bytes })
                    .collect());
            }
            i += 1;
            if let Some(next) = self.segments.get(i) {
                from = next.base_offset();
            }
        }
        Ok(Vec::new())
    }

    /// Drops every record below `before_offset` (a WAL checkpoint): whole segments that lie
    /// below it are deleted and the start offset moves up to it. Offsets are never reused.
    ///
    /// # Correctness
    /// The new start offset is durable before any segment is deleted, so a crash in between
    /// leaves a log that starts at `before_offset` either way.
    pub async fn truncate_prefix(&mut self, before_offset: u64) -> Result<()> {
        self.check_prefix_writable().await?;
        let end = self.end_offset();
        if before_offset > end {
            return Err(Error::OffsetOutOfRange {
                offset: before_offset,
                start: self.start_offset,
                end,
            });
        }
        if before_offset <= self.start_offset {
            return Ok(());
        }
        self.drop_prefix(before_offset).await?;
        self.check_invariants();
        Ok(())
    }

    /// [`Log::check_writable`] for what only drops sealed segments and moves the start
    /// offset (prefix truncation, retention): a full disk's poison does not stop them, since
    /// they never touch the active segment and they are how space is freed.
    async fn check_prefix_writable(&mut self) -> Result<()> {
        match self.check_writable().await {
            Err(e) if e.is_out_of_space() => Ok(()),
            other => other,
        }
    }

    /// Moves the start offset up to `new_start` (durably) and deletes the segments that lie
    /// wholly below it.
    ///
    /// # Correctness
    /// The new start offset is durable before any segment is deleted, so a crash in between
    /// leaves a log that starts at `new_start` either way. On a full disk, where the start
    /// offset's file cannot be written, the segments are deleted first (that frees the space)
    /// and the start offset is written after: a crash in between leaves a log that starts at
    /// the first kept segment's base, at or below `new_start` (records not yet dropped,
    /// never records lost).
    async fn drop_prefix(&mut self, new_start: u64) -> Result<()> {
        let mut deferred = None;
        if new_start > self.start_offset {
            match write_start_offset(&self.engine, &self.dir, new_start).await {
                Ok(()) => self.start_offset = new_start,
                Err(e) if e.is_out_of_space() => {
                    tracing::warn!(dir = %self.dir.display(), new_start, error = %e, "no space to persist the start offset; deleting segments first");
                    deferred = Some(e);
                }
                Err(e) => return self.poison("persist start offset", Err(e)),
            }
        }
        if let Some(tail) = self.tail.as_mut() {
            tail.drop_below(new_start);
        }
        while self.segments.len() > 1 && self.segments[1].base_offset() <= new_start {
            let oldest = self.segments.pop_front().expect("len > 1");
            let deleted = oldest.delete(&self.engine).await;
            self.poison("delete segment", deleted)?;
            if deferred.is_some() {
                // What `open` would find after a crash here.
                self.start_offset = self.start_offset.max(self.segments[0].base_offset());
            }
        }
        if let Some(first_error) = deferred {
            match write_start_offset(&self.engine, &self.dir, new_start).await {
                Ok(()) => self.start_offset = new_start,
                // Consistent as it stands (the start is the first kept segment's base); the
                // caller may retry once more space is free.
                Err(_) => return Err(first_error),
            }
        }
        Ok(())
    }

    /// Persists a new start offset. Epoch entries wholly below it stay in the map (term_at
    /// refuses offsets below the start anyway) until the map is next rewritten.
    async fn move_start(&mut self, start_offset: u64) -> Result<()> {
        let persisted = write_start_offset(&self.engine, &self.dir, start_offset).await;
        self.poison("persist start offset", persisted)?;
        self.start_offset = start_offset;
        Ok(())
    }

    /// The first offset past which this log cannot be read because a sealed segment holds a
    /// batch that does not check out (a flipped bit, a torn sector): the offset after the
    /// last good batch before it. `None` when every sealed segment reads to its end. Opens
    /// (and closes again) every sealed segment, checking its index against its store: a
    /// full pass over the log's indexes, for when something already went wrong.
    ///
    /// [`Log::truncate_suffix`] at that offset drops the damage and everything after it,
    /// which only a replica that can fetch it again from others may do.
    pub async fn find_damage(&mut self) -> Result<Option<u64>> {
        let last = self.segments.len().saturating_sub(1);
        for i in 0..last {
            let was_open = self.segments[i].files_open();
            let damage = self.segments[i].damage(&self.engine).await;
            if !was_open {
                self.segments[i].close_files().await?;
            }
            if let Some(offset) = damage? {
                return Ok(Some(offset));
            }
        }
        Ok(None)
    }

    /// Drops every record at and after `from_offset`, across segments, durably; the end
    /// offset becomes `from_offset`, and both marks and the epoch map are cut to it. It must
    /// be a batch boundary (or the end), or where a damaged segment's readable batches end
    /// ([`Log::find_damage`]). Replication uses this to cut a diverged tail, and to drop a
    /// damaged one that the replica then fetches again from its leader.
    ///
    /// # Correctness
    /// Later segments are deleted newest first and the cut is synced before this returns,
    /// so a crash part-way leaves a consistent prefix of the old log. The epoch map is cut
    /// after the store (open drops entries past the end, should a crash come between).
    pub async fn truncate_suffix(&mut self, from_offset: u64) -> Result<()> {
        self.check_writable().await?;
        let end = self.check_in_range(from_offset)?;
        if from_offset == end {
            return Ok(());
        }
        let i = self.segment_of(from_offset);
        // Refuse before changing anything.
        self.segments[i]
            .check_boundary(&self.engine, from_offset)
            .await?;
        // Lowered before anything is cut: should a step below fail (and poison the log),
        // no reader is served, and no mark claims, what was ordered cut.
        self.commit = self.commit.min(from_offset);
        self.durable_end = self.durable_end.min(from_offset);
        self.next_entry_index = None;
        if let Some(tail) = self.tail.as_mut() {
            tail.truncate_from(from_offset);
        }
        while self.segments.len() > i + 1 {
            let newest = self.segments.pop_back().expect("len > i + 1");
            let deleted = newest.delete(&self.engine).await;
            self.poison("delete segment", deleted)?;
        }
        let index_bytes_max = self.config.index_bytes_max;
        let engine = self.engine.clone();
        let cut = self
            .active_mut()
            .truncate_from(&engine, from_offset, index_bytes_max)
            .await;
        self.poison("truncate", cut)?;
        // The cut is synced, and everything before it is in synced or sealed segments.
        self.durable_end = from_offset;
        assert_eq!(
            self.end_offset(),
            from_offset,
            "end offset after suffix truncation"
        );
        let before = self.epochs.len();
        self.epochs.retain(|e| e.start_offset < from_offset);
        if self.epochs.len() != before {
            let persisted = self.persist_epochs().await;
            self.poison("persist leader epochs", persisted)?;
        }
        self.check_invariants();
        Ok(())
    }

    /// Deletes the oldest sealed segments while the log is over `retention_bytes`, and those
    /// last written more than `retention_ms` before `now_ms`. Never the active segment.
    /// Returns how many segments went.
    pub async fn apply_retention(&mut self, now_ms: i64) -> Result<usize> {
        self.check_prefix_writable().await?;
        let due = self.retention_due(now_ms);
        for _ in 0..due {
            let new_start = self.segments[1].base_offset().max(self.start_offset);
            self.drop_prefix(new_start).await?;
        }
        self.check_invariants();
        Ok(due)
    }

    /// How many of the oldest segments retention would delete at `now_ms`: past
    /// `retention_bytes` in total, or older than `retention_ms`; never the active one.
    fn retention_due(&self, now_ms: i64) -> usize {
        let mut total_bytes = self.size_bytes();
        let mut due = 0;
        while due + 1 < self.segments.len() {
            let oldest = &self.segments[due];
            let over_bytes =
                self.config.retention_bytes > 0 && total_bytes > self.config.retention_bytes;
            let too_old = self.config.retention_ms > 0
                && now_ms.saturating_sub(oldest.modified_ms()) > self.config.retention_ms as i64;
            if !over_bytes && !too_old {
                break;
            }
            total_bytes -= oldest.size_bytes();
            due += 1;
        }
        due
    }

    /// The header of the last batch retention would delete at `now_ms`, if any: a consensus
    /// layer purges up to its entry instead of deleting behind its back.
    pub async fn retention_cut(&mut self, now_ms: i64) -> Result<Option<BatchHeader>> {
        let due = self.retention_due(now_ms);
        if due == 0 {
            return Ok(None);
        }
        let engine = self.engine.clone();
        let Some(entry) = self.segments[due - 1].last_batch(&engine).await? else {
            return Ok(None);
        };
        self.header_at(entry.offset).await
    }

    /// Syncs (unless poisoned) and closes every file.
    ///
    /// # Correctness
    /// Everything appended is durable after a clean close.
    pub async fn close(mut self) -> Result<()> {
        let synced = if self.poisoned_by.is_none() {
            self.active_mut().sync().await
        } else {
            Ok(())
        };
        let mut first_error = synced.err();
        let out_of_space = self.poisoned_by.is_some_and(|p| p.out_of_space);
        while let Some(segment) = self.segments.pop_front() {
            match segment.close().await {
                Ok(()) => {}
                // The active file's engine still holds the full disk's failure; nothing
                // acknowledged is above the durable end, which the next open recovers to.
                Err(e) if out_of_space => {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "closing a log that ran out of space");
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The rejoin marker in `dir`, if any. One that does not decode (a damaged disk) still says
/// the replica lost data: it is read as lost from offset 0, with a warning, never ignored.
async fn read_rejoin_marker<E: Engine>(engine: &E, dir: &Path) -> Result<Option<u64>> {
    let read = read_state(
        engine,
        dir,
        state::RAFT_REJOIN_FILE,
        "read the rejoin marker",
    );
    let Some((path, bytes)) = read.await? else {
        return Ok(None);
    };
    Ok(Some(state::decode_rejoin(&bytes).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "a damaged rejoin marker; the replica still rejoins (lost from offset 0)");
        0
    })))
}

/// Removes the temp files a crash mid-replace left: the rename never happened, so they are
/// stale.
async fn remove_stale_tmp_files<E: Engine>(engine: &E, dir: &Path) -> Result<()> {
    for name in [
        START_OFFSET_FILE,
        state::LEADER_EPOCHS_FILE,
        state::RAFT_STATE_FILE,
        state::RAFT_APPLIED_FILE,
        state::RAFT_SNAPSHOT_FILE,
        state::RAFT_PURGED_FILE,
        state::RAFT_REJOIN_FILE,
    ] {
        let tmp = super::fsutil::tmp_path(&dir.join(name));
        engine
            .remove_if_exists(&tmp)
            .await
            .map_err(io_err("remove stale temp file", &tmp))?;
    }
    Ok(())
}

/// Lists the segments of `dir` and opens them: the sealed ones from their directory entries
/// only, the last one recovered. An empty directory gets a first segment at the persisted
/// start offset.
async fn open_segments<E: Engine>(
    engine: &E,
    dir: &Path,
    config: &LogLimits,
    persisted_start: Option<u64>,
) -> Result<(VecDeque<Segment<E>>, OpenReport)> {
    let mut bases: Vec<u64> = engine
        .list(dir)
        .await
        .map_err(io_err("list partition dir", dir))?
        .iter()
        .filter_map(|name| segment::parse_store_file_name(name.to_str()?))
        .collect();
    bases.sort_unstable();
    let now = now_ms();
    let mut segments = VecDeque::with_capacity(bases.len().max(1));
    let mut report = OpenReport::default();
    let Some((&active_base, sealed)) = bases.split_last() else {
        let base = persisted_start.unwrap_or(0);
        segments.push_back(Segment::create(engine, dir, base, config.index_bytes_max, now).await?);
        report.segments = 1;
        return Ok((segments, report));
    };
    for (i, &base) in sealed.iter().enumerate() {
        let path = dir.join(segment::store_file_name(base));
        let stat = engine
            .stat(&path)
            .await
            .map_err(io_err("stat segment", &path))?;
        segments.push_back(Segment::sealed(
            dir,
            base,
            bases[i + 1],
            stat.size_bytes,
            stat.modified_ms,
        ));
    }
    let (active, recovery) =
        Segment::recover(engine, dir, active_base, config.index_bytes_max, now).await?;
    if recovery != Recovery::default() {
        tracing::warn!(
            segment = %active.store_path().display(),
            truncated_bytes = recovery.truncated_bytes,
            stopped_by = ?recovery.stopped_by,
            index_rebuilt = recovery.index_rebuilt,
            "recovered the active segment"
        );
    }
    segments.push_back(active);
    report.recovery = recovery;
    report.segments = segments.len();
    Ok((segments, report))
}

async fn read_start_offset<E: Engine>(engine: &E, dir: &Path) -> Result<Option<u64>> {
    let Some((path, bytes)) =
        read_state(engine, dir, START_OFFSET_FILE, "read start offset").await?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map(Some).map_err(|_| {
        io_err("parse start offset", &path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("expected a decimal offset, found {text:?}"),
        ))
    })
}

async fn write_start_offset<E: Engine>(engine: &E, dir: &Path, start_offset: u64) -> Result<()> {
    let bytes = format!("{start_offset}\n");
    replace_state(
        engine,
        dir,
        START_OFFSET_FILE,
        "persist start offset",
        bytes.as_bytes(),
    )
    .await
}

/// Reads the state file `name` of the partition in `dir` through the engine: its path and
/// bytes, or `None` when it does not exist. An I/O error names `op` and the path.
async fn read_state<E: Engine>(
    engine: &E,
    dir: &Path,
    name: &str,
    op: &'static str,
) -> Result<Option<(PathBuf, Vec<u8>)>> {
    let path = dir.join(name);
    let bytes = engine
        .read_small_file(&path)
        .await
        .map_err(io_err(op, &path))?;
    Ok(bytes.map(|bytes| (path, bytes)))
}

/// Replaces the state file `name` of the partition in `dir` atomically through the engine
/// (durable on return). An I/O error names `op` and the path.
async fn replace_state<E: Engine>(
    engine: &E,
    dir: &Path,
    name: &str,
    op: &'static str,
    bytes: &[u8],
) -> Result<()> {
    let path = dir.join(name);
    engine
        .replace_file_atomic(&path, bytes)
        .await
        .map_err(io_err(op, &path))
}
