//! The partition log: an ordered run of segments with one active segment at the end.
//!
//! Owns: offsets (assignment, start, end, high watermark), rolling, retention, prefix and
//! suffix truncation, recovery on open, the persisted start offset, and enforcing the limits on
//! what may be appended (defined and checked in `limits`).
//! Must never: be shared. One shard task owns a `Log` and calls it sequentially; nothing in
//! here locks. Must never reuse an offset: the end offset only moves back through an explicit
//! `truncate_suffix`.
//!
//! Invariants: `start_offset <= end_offset`, `high_watermark <= end_offset`; segments are
//! sorted by base offset, each segment's base is at or above the previous one's next
//! offset, and only the last (active) segment is ever written. After a failed write or
//! sync the log is poisoned: every later write fails until a reopen recovers it.
//!
//! Files in a partition directory: the segments (see `segment`) and `start_offset`, the
//! log start offset as decimal text, replaced atomically (write, fsync, rename, fsync dir).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::{Error, Result, io_err};
use super::format::{self, Batch, Record};
use super::io::Engine;
use super::limits::LogLimits;
use super::portable::sync_dir;
use super::segment::{self, Recovery, Segment};

const START_OFFSET_FILE: &str = "start_offset";
const START_OFFSET_TMP: &str = "start_offset.tmp";

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

/// One partition's log.
pub struct Log<E: Engine> {
    engine: E,
    dir: PathBuf,
    config: LogLimits,
    segments: VecDeque<Segment<E>>,
    start_offset: u64,
    high_watermark: u64,
    poisoned_by: Option<&'static str>,
}

impl<E: Engine> Log<E> {
    /// Opens the log in `dir`, creating it if needed. The active segment is recovered (torn
    /// tail cut, index repaired, synced); sealed segments are only listed, not read.
    ///
    /// # Correctness
    /// Everything in the log after `open` is durable: the high watermark starts at the end.
    pub async fn open(engine: E, dir: &Path, config: LogLimits) -> Result<(Log<E>, OpenReport)> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err("create partition dir", dir))?;
        // A temp file left by a crash mid-replace is stale: the rename never happened.
        match std::fs::remove_file(dir.join(START_OFFSET_TMP)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io_err(
                    "remove stale start offset",
                    dir.join(START_OFFSET_TMP),
                )(e));
            }
        }
        let persisted_start = read_start_offset(dir)?;
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
        match bases.split_last() {
            None => {
                let base = persisted_start.unwrap_or(0);
                segments.push_back(
                    Segment::create(&engine, dir, base, config.index_bytes_max, now).await?,
                );
            }
            Some((&active_base, sealed)) => {
                for (i, &base) in sealed.iter().enumerate() {
                    let next_base = bases[i + 1];
                    let path = dir.join(segment::store_file_name(base));
                    let stat = engine
                        .stat(&path)
                        .await
                        .map_err(io_err("stat segment", &path))?;
                    segments.push_back(Segment::sealed(
                        dir,
                        base,
                        next_base,
                        stat.size_bytes,
                        stat.modified_ms,
                    ));
                }
                let (active, recovery) =
                    Segment::recover(&engine, dir, active_base, config.index_bytes_max, now)
                        .await?;
                if recovery != Recovery::default() {
                    tracing::warn!(
                        segment = %active.store_path().display(),
                        truncated_bytes = recovery.truncated_bytes,
                        stopped_by = ?recovery.stopped_by,
                        index_rebuilt = recovery.index_rebuilt,
                        "recovered the active segment"
                    );
                }
                report.recovery = recovery;
                segments.push_back(active);
            }
        }
        report.segments = segments.len();
        let first_base = segments
            .front()
            .expect("at least one segment")
            .base_offset();
        let end = segments.back().expect("at least one segment").next_offset();
        let start_offset = persisted_start
            .unwrap_or(first_base)
            .max(first_base)
            .min(end);
        let log = Log {
            engine,
            dir: dir.to_owned(),
            config,
            segments,
            start_offset,
            high_watermark: end,
            poisoned_by: None,
        };
        log.check_invariants();
        Ok((log, report))
    }

    fn check_invariants(&self) {
        assert!(
            self.start_offset <= self.end_offset() && self.high_watermark <= self.end_offset(),
            "{}: start {} / high watermark {} / end {} out of order",
            self.dir.display(),
            self.start_offset,
            self.high_watermark,
            self.end_offset()
        );
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
    /// The end of what is durable (or, under relaxed durability, acknowledged) and may be read.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
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
        self.poisoned_by
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

    fn check_writable(&self) -> Result<()> {
        match self.poisoned_by {
            Some(op) => Err(Error::Poisoned {
                dir: self.dir.clone(),
                op,
            }),
            None => Ok(()),
        }
    }

    /// Records the first failed write: the on-disk state is unknown from here on.
    fn poison<T>(&mut self, op: &'static str, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            tracing::error!(dir = %self.dir.display(), op, error = %e, "partition log poisoned");
            self.poisoned_by.get_or_insert(op);
        }
        result
    }

    /// Checks a batch against the limits without touching anything.
    pub fn check_batch(&self, records: &[Record]) -> Result<usize> {
        self.config.measure_batch(records)
    }

    /// Appends one batch and returns its base offset. Limits are checked before any byte is
    /// written; a refused batch changes nothing.
    ///
    /// # Correctness
    /// On return the batch is in the store but not yet durable and not yet readable: it
    /// becomes readable when the high watermark passes it, after [`Log::sync`] (durable) or
    /// [`Log::commit_unsynced`] (acknowledged without durability).
    pub async fn append(&mut self, records: &[Record]) -> Result<u64> {
        self.check_writable()?;
        let batch_bytes = self.check_batch(records)?;
        let base_offset = self.end_offset();
        let next_offset = base_offset
            .checked_add(records.len() as u64)
            .expect("offsets exhausted");
        let now = now_ms();
        let active = self.active();
        let age_ms = now.saturating_sub(active.created_ms());
        let must_roll = active.size_bytes() > 0
            && (active.size_bytes() + batch_bytes as u64 > self.config.segment_bytes_max
                || active.index_is_full()
                || (self.config.segment_ms > 0 && age_ms >= self.config.segment_ms as i64));
        if must_roll {
            self.roll().await?;
        }
        debug_assert_eq!(format::batch_len(records), batch_bytes);
        // Encoded straight into the engine's write buffer where it has one.
        let encode = |dst: &mut [u8]| format::encode_batch_into(dst, base_offset, 0, 0, records);
        let appended = self
            .active_mut()
            .append(batch_bytes, encode, base_offset, next_offset)
            .await;
        self.poison("append", appended)?;
        assert_eq!(self.end_offset(), next_offset, "end offset after append");
        Ok(base_offset)
    }

    /// Seals the active segment (synced) and starts a new one at the end offset. Does
    /// nothing when the active segment is empty.
    ///
    /// # Correctness
    /// Everything appended so far is durable on return (the seal syncs it).
    pub async fn roll(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.active().size_bytes() == 0 {
            return Ok(());
        }
        let end = self.end_offset();
        let now = now_ms();
        let sealed = self.active_mut().seal(now).await;
        self.poison("seal segment", sealed)?;
        self.high_watermark = end;
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
        let active = self.active();
        let due = self.config.segment_ms > 0
            && active.size_bytes() > 0
            && now_ms.saturating_sub(active.created_ms()) >= self.config.segment_ms as i64;
        if due {
            self.roll().await?;
        }
        Ok(due)
    }

    /// Makes everything appended durable and moves the high watermark to the end. Returns
    /// the new high watermark.
    ///
    /// # Correctness
    /// Durable and readable on return. A failure poisons the log (never retried).
    pub async fn sync(&mut self) -> Result<u64> {
        self.check_writable()?;
        let end = self.end_offset();
        let synced = self.active_mut().sync().await;
        self.poison("sync", synced)?;
        self.high_watermark = end;
        Ok(end)
    }

    /// Moves the high watermark to the end without syncing: for `durability = "none"` and
    /// `"interval"`, where an acknowledged append may be lost in a machine crash.
    pub fn commit_unsynced(&mut self) -> u64 {
        self.high_watermark = self.end_offset();
        self.high_watermark
    }

    /// Reads batches from `from_offset` (at least one whole batch when one is readable, then
    /// more up to `max_bytes`), below the high watermark. Records below `from_offset` are
    /// trimmed from the first batch. Empty when `from_offset` is at the high watermark.
    ///
    /// A batch that fails its CRC is never returned: the read fails with an error naming the
    /// segment file and position.
    pub async fn read(&mut self, from_offset: u64, max_bytes: u64) -> Result<Vec<Batch>> {
        self.check_in_range(from_offset)?;
        let mut from = from_offset;
        let mut i = self
            .segments
            .partition_point(|s| s.base_offset() <= from)
            .saturating_sub(1);
        while from < self.high_watermark && i < self.segments.len() {
            let batches = self.segments[i]
                .read(&self.engine, from, max_bytes, self.high_watermark)
                .await?;
            if !batches.is_empty() {
                return Ok(batches);
            }
            // Nothing at `from` in this segment (offsets may have gaps): go on to the next.
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
        self.check_writable()?;
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
        let persisted = write_start_offset(&self.dir, before_offset);
        self.poison("persist start offset", persisted)?;
        self.start_offset = before_offset;
        while self.segments.len() > 1 && self.segments[1].base_offset() <= before_offset {
            let oldest = self.segments.pop_front().expect("len > 1");
            let deleted = oldest.delete(&self.engine).await;
            self.poison("delete segment", deleted)?;
        }
        self.check_invariants();
        Ok(())
    }

    /// Drops every record at and after `from_offset`, across segments, durably; the end
    /// offset becomes `from_offset`. It must be a batch boundary (or the end). Replication
    /// uses this to cut a diverged tail.
    ///
    /// # Correctness
    /// Later segments are deleted newest first and the cut is synced before this returns,
    /// so a crash part-way leaves a consistent prefix of the old log.
    pub async fn truncate_suffix(&mut self, from_offset: u64) -> Result<()> {
        self.check_writable()?;
        let end = self.check_in_range(from_offset)?;
        if from_offset == end {
            return Ok(());
        }
        let i = self
            .segments
            .partition_point(|s| s.base_offset() <= from_offset)
            .saturating_sub(1);
        // Refuse before changing anything.
        self.segments[i]
            .check_boundary(&self.engine, from_offset)
            .await?;
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
        self.high_watermark = self.high_watermark.min(from_offset);
        assert_eq!(
            self.end_offset(),
            from_offset,
            "end offset after suffix truncation"
        );
        self.check_invariants();
        Ok(())
    }

    /// Deletes the oldest sealed segments while the log is over `retention_bytes`, and those
    /// last written more than `retention_ms` before `now_ms`. Never the active segment.
    /// Returns how many segments went.
    pub async fn apply_retention(&mut self, now_ms: i64) -> Result<usize> {
        self.check_writable()?;
        let mut total_bytes = self.size_bytes();
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let over_bytes =
                self.config.retention_bytes > 0 && total_bytes > self.config.retention_bytes;
            let too_old = self.config.retention_ms > 0
                && now_ms.saturating_sub(oldest.modified_ms()) > self.config.retention_ms as i64;
            if !over_bytes && !too_old {
                break;
            }
            let new_start = self.segments[1].base_offset().max(self.start_offset);
            if new_start > self.start_offset {
                let persisted = write_start_offset(&self.dir, new_start);
                self.poison("persist start offset", persisted)?;
                self.start_offset = new_start;
            }
            let oldest = self.segments.pop_front().expect("len > 1");
            total_bytes -= oldest.size_bytes();
            let removed = oldest.delete(&self.engine).await;
            self.poison("delete segment", removed)?;
            deleted += 1;
        }
        self.check_invariants();
        Ok(deleted)
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
        while let Some(segment) = self.segments.pop_front() {
            if let Err(e) = segment.close().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn read_start_offset(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(START_OFFSET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            io_err("parse start offset", &path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("expected a decimal offset, found {text:?}"),
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read start offset", &path)(e)),
    }
}

fn write_start_offset(dir: &Path, start_offset: u64) -> Result<()> {
    let tmp = dir.join(START_OFFSET_TMP);
    let path = dir.join(START_OFFSET_FILE);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, format!("{start_offset}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    };
    write().map_err(io_err("persist start offset", &path))
}
