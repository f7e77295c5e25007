//! One segment: a store file of batches plus its offset index.
//!
//! Owns: a segment's two files, the recovery scan of its tail, index validation and rebuild,
//! and reading batches out of it.
//! Must never: decide when to roll, retain or delete; that is the log's call. Never serve a
//! batch whose CRC fails: such a read is an error naming the file and position.
//!
//! Files are named by the base offset, zero-padded to 20 digits so `ls` sorts them:
//! `00000000000000000000.log` (store) and `00000000000000000000.index` (index).
//!
//! A sealed segment is not touched on open (a partition with 10,000 segments must open fast);
//! its files are opened, and its index checked against the store, on first read.

use std::path::{Path, PathBuf};

use super::error::{Error, Result, io_err};
use bytes::Bytes;

use super::format::{self, BATCH_HEADER_LEN, Batch, BatchHeader, DecodeError, Probe};
use super::index::{ENTRY_LEN, Entry, Index, IndexFull};
use super::io::{Engine, StoreFile};

pub const STORE_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
/// Bytes read per I/O while scanning a store for batches.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

pub fn store_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.{STORE_SUFFIX}")
}

pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.{INDEX_SUFFIX}")
}

/// The base offset of a store file name, or `None` for any other file.
pub fn parse_store_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// What reopening the active segment found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// Bytes cut off the tail of the store (a torn or unsynced write, or DMA padding).
    pub truncated_bytes: u64,
    /// Why the scan stopped before the end of the file, when it did.
    pub stopped_by: Option<DecodeError>,
    /// The index disagreed with the store and was rebuilt.
    pub index_rebuilt: bool,
}

struct Files<F> {
    store: F,
    index: Index,
    /// For a sealed segment whose tail does not decode: where the valid batches end.
    corrupt_at: Option<CorruptTail>,
}

/// Where a sealed segment's readable batches end, and why.
#[derive(Debug, Clone)]
struct CorruptTail {
    /// The store position of the first batch that does not check out.
    position: u64,
    /// The offset after the last batch that does: where a cut of the damage leaves the log.
    next_offset: u64,
    error: DecodeError,
}

/// Where a suffix truncation cuts a segment: the index entries it keeps, and the store
/// position it cuts at.
struct Cut {
    entries_kept: usize,
    position: u64,
}

/// One batch as a read found it: where it is, its checked header, and its bytes.
struct StoredBatch {
    position: u64,
    header: BatchHeader,
    bytes: Bytes,
}

pub struct Segment<E: Engine> {
    base_offset: u64,
    store_path: PathBuf,
    index_path: PathBuf,
    files: Option<Files<E::File>>,
    size_bytes: u64,
    next_offset: u64,
    created_ms: i64,
    modified_ms: i64,
    /// The first batch's Raft index, once known (see [`Segment::first_raft_index`]).
    first_raft_index: Option<u64>,
}

/// Where a scan of a store stopped.
struct Scan {
    entries: Vec<Entry>,
    end_position: u64,
    next_offset: u64,
    stopped_by: Option<DecodeError>,
}

/// Reads batches from `position` on, checking each, until the end of the file, zero padding
/// or the first batch that does not check out. `base_offset` is the segment's: a batch whose
/// offset lies more than `u32::MAX` past it cannot be indexed (an index entry holds the
/// delta as a u32) and ends the scan like a corrupt one.
async fn scan<F: StoreFile>(
    store: &F,
    mut position: u64,
    mut next_offset: u64,
    base_offset: u64,
) -> std::io::Result<Scan> {
    let len = store.len();
    let mut entries = Vec::new();
    let mut chunk: Vec<u8> = Vec::new();
    let mut chunk_start = position;
    let stopped_by = loop {
        let remaining = len - position;
        if remaining == 0 {
            break None;
        }
        // Make sure the chunk holds `need` bytes from `position`.
        let need_header = remaining.min(BATCH_HEADER_LEN as u64) as usize;
        if position + need_header as u64 > chunk_start + chunk.len() as u64 {
            let read_len = remaining.min(SCAN_CHUNK_BYTES as u64) as usize;
            chunk = store.read_at(position, read_len).await?;
            chunk_start = position;
        }
        let at = (position - chunk_start) as usize;
        let header = match format::probe_header(&chunk[at..at + need_header]) {
            Ok(Probe::End) => break None,
            Ok(Probe::Header(header)) => header,
            Err(e) => break Some(e),
        };
        let batch_len = header.batch_len as usize;
        if batch_len as u64 > remaining {
            break Some(DecodeError::ShortBatch {
                batch_len: header.batch_len,
                available: remaining as usize,
            });
        }
        if position + batch_len as u64 > chunk_start + chunk.len() as u64 {
            chunk = store
                .read_at(
                    position,
                    remaining.min(SCAN_CHUNK_BYTES.max(batch_len) as u64) as usize,
                )
                .await?;
            chunk_start = position;
        }
        let at = (position - chunk_start) as usize;
        let header = match format::verify_batch(&chunk[at..at + batch_len]) {
            Ok(header) => header,
            Err(e) => break Some(e),
        };
        let offset_ok = if entries.is_empty() && position == 0 {
            header.base_offset == next_offset
        } else {
            header.base_offset >= next_offset
        };
        if !offset_ok {
            break Some(DecodeError::OffsetOutOfOrder {
                expected: next_offset,
                found: header.base_offset,
            });
        }
        if header.base_offset - base_offset > u64::from(u32::MAX) {
            break Some(DecodeError::OffsetBeyondSegment {
                base_offset,
                found: header.base_offset,
            });
        }
        entries.push(Entry {
            offset: header.base_offset,
            position,
            batch_len: header.batch_len,
        });
        position += batch_len as u64;
        next_offset = header.next_offset();
    };
    Ok(Scan {
        entries,
        end_position: position,
        next_offset,
        stopped_by,
    })
}

/// How many index entries of an active segment can be trusted after a crash: those that lie
/// inside the store and end on a batch that checks out. Returns that count and where the scan
/// of the rest resumes (store position, offset).
async fn trusted_index_prefix<F: StoreFile>(
    store: &F,
    index: &Index,
    base_offset: u64,
) -> std::io::Result<(usize, u64, u64)> {
    let store_len = store.len();
    let mut keep = index.len();
    while keep > 0 && index.get(keep - 1).expect("below len").end_position() > store_len {
        keep -= 1;
    }
    let Some(last) = keep.checked_sub(1).and_then(|i| index.get(i)) else {
        return Ok((0, 0, base_offset));
    };
    let bytes = store
        .read_at(last.position, last.batch_len as usize)
        .await?;
    Ok(match format::verify_batch(&bytes) {
        Ok(header) if header.base_offset == last.offset && header.batch_len == last.batch_len => {
            (keep, last.end_position(), header.next_offset())
        }
        _ => (0, 0, base_offset),
    })
}

/// Adds the entries a recovery scan found to the index, growing it past `index_bytes_max`
/// when the store holds more batches than it has room for.
async fn append_to_index<E: Engine>(
    engine: &E,
    index: &mut Index,
    entries: &[Entry],
    index_bytes_max: u64,
) -> std::io::Result<()> {
    let needed = (index.len() + entries.len()) as u64 * ENTRY_LEN as u64;
    if needed > index_bytes_max {
        index.grow(engine, needed).await?;
    }
    index.reserve(index.len() + entries.len(), false)?;
    for entry in entries {
        index.push(*entry).expect("index grown to fit the scan");
    }
    Ok(())
}

/// The first batch's timestamp, from its header; `None` for an empty segment or a header
/// that does not read (the caller falls back to the clock).
async fn first_timestamp_ms<F: StoreFile>(
    store: &F,
    index: &Index,
) -> std::io::Result<Option<i64>> {
    let Some(first) = index.get(0) else {
        return Ok(None);
    };
    let bytes = store.read_at(first.position, BATCH_HEADER_LEN).await?;
    Ok(match format::probe_header(&bytes) {
        Ok(Probe::Header(header)) => Some(header.first_timestamp_ms),
        _ => None,
    })
}

impl<E: Engine> Segment<E> {
    fn paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf) {
        (
            dir.join(store_file_name(base_offset)),
            dir.join(index_file_name(base_offset)),
        )
    }

    /// Creates a new, empty active segment.
    pub async fn create(
        engine: &E,
        dir: &Path,
        base_offset: u64,
        index_bytes_max: u64,
        now_ms: i64,
    ) -> Result<Self> {
        let (store_path, index_path) = Self::paths(dir, base_offset);
        // A leftover index (of a segment removed before a crash) must not be picked up.
        engine
            .remove_if_exists(&index_path)
            .await
            .map_err(io_err("remove stale index", &index_path))?;
        let store = engine
            .create(&store_path)
            .await
            .map_err(io_err("create segment", &store_path))?;
        let index = Index::open(engine, &index_path, base_offset, index_bytes_max)
            .await
            .map_err(io_err("create index", &index_path))?;
        Ok(Segment {
            base_offset,
            store_path,
            index_path,
            files: Some(Files {
                store,
                index,
                corrupt_at: None,
            }),
            size_bytes: 0,
            next_offset: base_offset,
            created_ms: now_ms,
            modified_ms: now_ms,
            first_raft_index: None,
        })
    }

    /// A sealed segment known from its directory entry only; nothing is opened. The log sets
    /// its next offset from the following segment's base.
    pub fn sealed(
        dir: &Path,
        base_offset: u64,
        next_offset: u64,
        size_bytes: u64,
        modified_ms: i64,
    ) -> Self {
        let (store_path, index_path) = Self::paths(dir, base_offset);
        Segment {
            base_offset,
            store_path,
            index_path,
            files: None,
            size_bytes,
            next_offset,
            created_ms: modified_ms,
            modified_ms,
            first_raft_index: None,
        }
    }

    /// Opens the active (last) segment after a restart or crash: checks the index against the
    /// store, scans the store's tail past the last good index entry, cuts off a torn tail and
    /// everything after it, and syncs, so that everything it holds afterwards is durable.
    pub async fn recover(
        engine: &E,
        dir: &Path,
        base_offset: u64,
        index_bytes_max: u64,
        now_ms: i64,
    ) -> Result<(Self, Recovery)> {
        let (store_path, index_path) = Self::paths(dir, base_offset);
        let mut store = engine
            .open(&store_path)
            .await
            .map_err(io_err("open segment", &store_path))?;
        let mut index = Index::open(engine, &index_path, base_offset, index_bytes_max)
            .await
            .map_err(io_err("open index", &index_path))?;
        let mut recovery = Recovery::default();
        let store_len = store.len();

        let (keep, resume_position, resume_offset) =
            trusted_index_prefix(&store, &index, base_offset)
                .await
                .map_err(io_err("read segment", &store_path))?;
        if keep < index.len() {
            recovery.index_rebuilt = true;
            index.truncate(keep);
        }
        let scan = scan(&store, resume_position, resume_offset, base_offset)
            .await
            .map_err(io_err("scan segment", &store_path))?;
        append_to_index(engine, &mut index, &scan.entries, index_bytes_max)
            .await
            .map_err(io_err("grow index", &index_path))?;
        if scan.end_position < store_len {
            recovery.truncated_bytes = store_len - scan.end_position;
            recovery.stopped_by = scan.stopped_by;
            store
                .truncate(scan.end_position)
                .await
                .map_err(io_err("truncate torn tail", &store_path))?;
        }
        // Whatever survived may still sit in the page cache only; from here on it counts as
        // durable (the durable mark starts at the end), so make it so.
        store
            .sync()
            .await
            .map_err(io_err("sync segment", &store_path))?;

        let created_ms = first_timestamp_ms(&store, &index)
            .await
            .map_err(io_err("read segment", &store_path))?
            .map_or(now_ms, |first| first.min(now_ms));
        let segment = Segment {
            base_offset,
            store_path,
            index_path,
            size_bytes: scan.end_position,
            next_offset: scan.next_offset,
            files: Some(Files {
                store,
                index,
                corrupt_at: None,
            }),
            created_ms,
            modified_ms: now_ms,
            first_raft_index: None,
        };
        Ok((segment, recovery))
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }
    /// The offset after the last batch in this segment.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }
    pub fn modified_ms(&self) -> i64 {
        self.modified_ms
    }
    pub fn store_path(&self) -> &Path {
        &self.store_path
    }

    /// The index entry of the `k`-th batch of this segment (0 = the first), or `None` past
    /// the last. Opens a sealed segment's files on first use.
    pub async fn batch_at(&mut self, engine: &E, k: usize) -> Result<Option<Entry>> {
        Ok(self.open_files(engine).await?.index.get(k))
    }

    /// The index entry of the batch that holds `offset` (the last one based at or below it),
    /// `None` when `offset` is below the first batch. Opens a sealed segment's files on first
    /// use.
    pub async fn batch_holding(&mut self, engine: &E, offset: u64) -> Result<Option<Entry>> {
        let index = &self.open_files(engine).await?.index;
        Ok(index.lookup(offset).and_then(|k| index.get(k)))
    }

    /// The index entry of this segment's last batch, `None` when it has none. Opens a sealed
    /// segment's files on first use.
    pub async fn last_batch(&mut self, engine: &E) -> Result<Option<Entry>> {
        Ok(self.open_files(engine).await?.index.last())
    }

    /// The Raft index of this segment's first batch (`None` when it has none), read from
    /// its header once and then remembered. Only meaningful in a replicated log, where every
    /// batch carries its entry's index and indexes run on by one per batch.
    pub async fn first_raft_index(&mut self, engine: &E) -> Result<Option<u64>> {
        if let Some(index) = self.first_raft_index {
            return Ok(Some(index));
        }
        let Some(header) = self.header_of(engine, 0).await? else {
            return Ok(None);
        };
        self.first_raft_index = Some(header.raft_index);
        Ok(Some(header.raft_index))
    }

    /// The number of batches in this segment (its index entries). Opens a sealed segment's
    /// files on first use.
    pub async fn batch_count(&mut self, engine: &E) -> Result<usize> {
        Ok(self.open_files(engine).await?.index.len())
    }

    /// The header of the `k`-th batch of this segment (0 = the first), read alone and not
    /// CRC-checked (only its magic, version and length), or `None` past the last batch.
    pub async fn header_of(&mut self, engine: &E, k: usize) -> Result<Option<BatchHeader>> {
        let store_path = self.store_path.clone();
        let files = self.open_files(engine).await?;
        let Some(entry) = files.index.get(k) else {
            return Ok(None);
        };
        let len = (entry.batch_len as usize).min(BATCH_HEADER_LEN);
        let bytes = files
            .store
            .read_at(entry.position, len)
            .await
            .map_err(io_err("read segment", &store_path))?;
        let corrupt = |source| Error::Corrupt {
            segment: store_path.clone(),
            position: entry.position,
            source,
        };
        match format::probe_header(&bytes).map_err(corrupt)? {
            Probe::Header(header) => Ok(Some(header)),
            Probe::End => Err(corrupt(DecodeError::ShortHeader { available: 0 })),
        }
    }

    /// Opens a sealed segment's files on first use and checks its index against its store;
    /// an index that is missing, short, long or wrong is rebuilt from the store.
    async fn open_files(&mut self, engine: &E) -> Result<&mut Files<E::File>> {
        if self.files.is_none() {
            let store = engine
                .open(&self.store_path)
                .await
                .map_err(io_err("open segment", &self.store_path))?;
            let index = Index::open(engine, &self.index_path, self.base_offset, 0)
                .await
                .map_err(io_err("open index", &self.index_path))?;
            let mut trusted = index
                .last()
                .is_some_and(|last| last.end_position() == store.len());
            if let Some(last) = index.last().filter(|_| trusted) {
                let bytes = store
                    .read_at(last.position, last.batch_len as usize)
                    .await
                    .map_err(io_err("read segment", &self.store_path))?;
                trusted =
                    matches!(format::verify_batch(&bytes), Ok(h) if h.base_offset == last.offset);
            }
            let mut files = Files {
                store,
                index,
                corrupt_at: None,
            };
            let empty = files.index.is_empty() && files.store.is_empty();
            if !trusted && !empty {
                self.rebuild_index(engine, &mut files).await?;
            }
            self.size_bytes = files.store.len();
            self.files = Some(files);
        }
        Ok(self.files.as_mut().expect("opened above"))
    }

    /// Replaces a sealed segment's index with one made by scanning the whole store. A tail
    /// that does not decode is remembered (and reported by reads), never cut: sealed data is
    /// not silently dropped.
    async fn rebuild_index(&self, engine: &E, files: &mut Files<E::File>) -> Result<()> {
        tracing::warn!(segment = %self.store_path.display(), "index disagrees with the store; rebuilding it");
        let scan = self.scan_whole(files).await?;
        self.index_from(engine, files, scan).await
    }

    /// Every batch of the store, checked, from position 0.
    async fn scan_whole(&self, files: &Files<E::File>) -> Result<Scan> {
        scan(&files.store, 0, self.base_offset, self.base_offset)
            .await
            .map_err(io_err("scan segment", &self.store_path))
    }

    /// Replaces the index with `scan`'s entries (sealed), and remembers where a tail that
    /// does not decode starts.
    async fn index_from(&self, engine: &E, files: &mut Files<E::File>, scan: Scan) -> Result<()> {
        files.index.truncate(0);
        files
            .index
            .grow(engine, (scan.entries.len() * ENTRY_LEN) as u64)
            .await
            .map_err(io_err("grow index", &self.index_path))?;
        for entry in &scan.entries {
            files.index.push(*entry).expect("index grown to fit");
        }
        files
            .index
            .seal(engine)
            .await
            .map_err(io_err("seal index", &self.index_path))?;
        files.corrupt_at = match scan.stopped_by {
            Some(error) if scan.end_position < files.store.len() => Some(CorruptTail {
                position: scan.end_position,
                next_offset: scan.next_offset,
                error,
            }),
            _ => None,
        };
        Ok(())
    }

    /// True when the index has no room for another entry: the log must roll.
    pub fn index_is_full(&self) -> bool {
        self.files.as_ref().is_some_and(|f| f.index.is_full())
    }

    /// Appends one encoded batch (the active segment only).
    ///
    /// # Correctness
    /// Readable through the store on return; durable after [`Segment::sync`].
    pub async fn append(
        &mut self,
        batch_len: usize,
        encode: impl FnOnce(&mut [u8]),
        base_offset: u64,
        next_offset: u64,
    ) -> Result<()> {
        assert!(
            base_offset >= self.next_offset,
            "batch base {base_offset} below segment next offset {}",
            self.next_offset
        );
        let files = self.files.as_mut().expect("the active segment is open");
        assert_eq!(
            files.store.len(),
            self.size_bytes,
            "store length drifted in {}",
            self.store_path.display()
        );
        let entry = Entry {
            offset: base_offset,
            position: self.size_bytes,
            batch_len: u32::try_from(batch_len).expect("batch_bytes_max fits u32"),
        };
        // Before the entry is written through the map (see `index`): a full disk refuses the
        // append here, with nothing written.
        files
            .index
            .reserve(files.index.len() + 1, true)
            .map_err(io_err("allocate index", &self.index_path))?;
        if files.index.push(entry) == Err(IndexFull) {
            panic!(
                "append to {} with a full index; the log rolls first",
                self.store_path.display()
            );
        }
        if let Err(e) = files.store.append_with(batch_len, encode).await {
            files.index.truncate(files.index.len() - 1);
            return Err(io_err("append", &self.store_path)(e));
        }
        self.size_bytes += batch_len as u64;
        self.next_offset = next_offset;
        Ok(())
    }

    /// Makes the store durable (fdatasync).
    pub async fn sync(&mut self) -> Result<()> {
        let files = self.files.as_mut().expect("the active segment is open");
        files
            .store
            .sync()
            .await
            .map_err(io_err("sync", &self.store_path))
    }

    /// Seals the active segment before a roll: the store is synced (so a later segment never
    /// exists beside a torn earlier one) and cut to its length, and the index trimmed.
    ///
    /// The cut is a `truncate` to the store's own length: it writes what is buffered, drops
    /// an engine's padding past the last batch (the uring store's last O_DIRECT block holds
    /// zeros past it until the file is closed, and a crash never closes it) and syncs. So a
    /// sealed store always ends where its last batch does, and its index is trusted when
    /// the segment is opened again rather than rebuilt by a scan of the whole store.
    pub async fn seal(&mut self, engine: &E, now_ms: i64) -> Result<()> {
        let files = self.files.as_mut().expect("the active segment is open");
        let len = files.store.len();
        files
            .store
            .truncate(len)
            .await
            .map_err(io_err("seal", &self.store_path))?;
        files
            .index
            .seal(engine)
            .await
            .map_err(io_err("seal index", &self.index_path))?;
        self.modified_ms = now_ms;
        Ok(())
    }

    /// Reads whole batches that hold offsets at or after `from_offset` and below
    /// `limit_offset`: at least one batch when there is one (even if larger than
    /// `max_bytes`), then more while the total stays within `max_bytes`. Records below
    /// `from_offset` are trimmed from the first batch. The raw read, then decoded.
    pub async fn read(
        &mut self,
        engine: &E,
        from_offset: u64,
        max_bytes: u64,
        limit_offset: u64,
    ) -> Result<Vec<Batch>> {
        let stored = self
            .read_stored(engine, from_offset, max_bytes, limit_offset)
            .await?;
        let mut batches = Vec::with_capacity(stored.len());
        for batch in stored {
            let decoded =
                format::decode_verified(&batch.bytes, batch.header).map_err(|source| {
                    Error::Corrupt {
                        segment: self.store_path.clone(),
                        position: batch.position,
                        source,
                    }
                })?;
            batches.push(decoded);
        }
        if let Some(first_batch) = batches.first_mut() {
            first_batch.records.retain(|r| r.offset >= from_offset);
        }
        Ok(batches)
    }

    /// Reads the stored bytes of the batches from the one holding `from_offset` on, that
    /// start below `limit_offset`, within `max_bytes` after the first. Returns the index
    /// entries and the bytes they cover (one read), or `None` when nothing is there.
    async fn read_span(
        &mut self,
        engine: &E,
        from_offset: u64,
        max_bytes: u64,
        limit_offset: u64,
    ) -> Result<Option<(Vec<Entry>, Bytes)>> {
        let store_path = self.store_path.clone();
        let files = self.open_files(engine).await?;
        let Some(first) = files.index.lookup(from_offset) else {
            return Ok(None);
        };
        let mut entries = Vec::new();
        let mut total_bytes = 0u64;
        while let Some(entry) = files.index.get(first + entries.len()) {
            if entry.offset >= limit_offset
                || (!entries.is_empty() && total_bytes + u64::from(entry.batch_len) > max_bytes)
            {
                break;
            }
            total_bytes += u64::from(entry.batch_len);
            entries.push(entry);
        }
        let Some(start) = entries.first().map(|e| e.position) else {
            return Ok(None);
        };
        let bytes = files
            .store
            .read_at(start, total_bytes as usize)
            .await
            .map_err(io_err("read segment", &store_path))?;
        Ok(Some((entries, Bytes::from(bytes))))
    }

    /// The error for a read at `from_offset` past the last indexed batch: the corrupt tail
    /// when the segment has one, else nothing (offsets may have gaps).
    fn past_last_batch(&self) -> Result<()> {
        match self.files.as_ref().and_then(|f| f.corrupt_at.clone()) {
            Some(CorruptTail {
                position,
                error: source,
                ..
            }) => Err(Error::Corrupt {
                segment: self.store_path.clone(),
                position,
                source,
            }),
            None => Ok(()),
        }
    }

    /// Runs a read attempt; when it finds the index disagreeing with the store (`None`),
    /// rebuilds the index from the store and tries once more.
    async fn retry_after_rebuild<T>(
        &mut self,
        engine: &E,
        from_offset: u64,
        mut attempt: impl AsyncFnMut(&mut Self) -> Result<Option<T>>,
    ) -> Result<T> {
        for round in 0..2 {
            match attempt(self).await? {
                Some(found) => return Ok(found),
                None if round == 0 => {
                    let mut files = self.files.take().expect("opened by the attempt");
                    let rebuilt = self.rebuild_index(engine, &mut files).await;
                    self.files = Some(files);
                    rebuilt?;
                }
                None => {}
            }
        }
        // The index still disagrees after a rebuild: the store itself is inconsistent.
        Err(Error::Corrupt {
            segment: self.store_path.clone(),
            position: 0,
            source: DecodeError::OffsetOutOfOrder {
                expected: from_offset,
                found: self.base_offset,
            },
        })
    }

    /// Reads whole batches as stored, CRC-checked but not decoded, from the one holding
    /// `from_offset` (untrimmed) on, below `limit_offset`: at least one when there is one,
    /// then more within `max_bytes`.
    pub async fn read_raw(
        &mut self,
        engine: &E,
        from_offset: u64,
        max_bytes: u64,
        limit_offset: u64,
    ) -> Result<Vec<(BatchHeader, Bytes)>> {
        let stored = self
            .read_stored(engine, from_offset, max_bytes, limit_offset)
            .await?;
        Ok(stored.into_iter().map(|b| (b.header, b.bytes)).collect())
    }

    /// The batches as stored (see [`Segment::read_raw`]), with their positions; an index that
    /// disagrees with the store is rebuilt once.
    async fn read_stored(
        &mut self,
        engine: &E,
        from_offset: u64,
        max_bytes: u64,
        limit_offset: u64,
    ) -> Result<Vec<StoredBatch>> {
        self.retry_after_rebuild(engine, from_offset, async |segment: &mut Self| {
            segment
                .try_read_stored(engine, from_offset, max_bytes, limit_offset)
                .await
        })
        .await
    }

    /// One read attempt of the batches as stored, each CRC-checked; `None` when the index
    /// disagrees with the store (rebuild and retry). Empty when the only batch found lies
    /// wholly below `from_offset` (a gap, or the corrupt tail, which fails the read).
    async fn try_read_stored(
        &mut self,
        engine: &E,
        from_offset: u64,
        max_bytes: u64,
        limit_offset: u64,
    ) -> Result<Option<Vec<StoredBatch>>> {
        let Some((entries, bytes)) = self
            .read_span(engine, from_offset, max_bytes, limit_offset)
            .await?
        else {
            return Ok(Some(Vec::new()));
        };
        let start = entries[0].position;
        let mut batches = Vec::with_capacity(entries.len());
        for entry in &entries {
            let at = (entry.position - start) as usize;
            let slice = bytes.slice(at..at + entry.batch_len as usize);
            let corrupt = |source| Error::Corrupt {
                segment: self.store_path.clone(),
                position: entry.position,
                source,
            };
            let header = format::verify_batch(&slice).map_err(corrupt)?;
            if header.base_offset != entry.offset || header.batch_len != entry.batch_len {
                return Ok(None);
            }
            if header.next_offset() > limit_offset {
                break;
            }
            batches.push(StoredBatch {
                position: entry.position,
                header,
                bytes: slice,
            });
        }
        if batches
            .first()
            .is_some_and(|b| b.header.next_offset() <= from_offset)
        {
            self.past_last_batch()?;
            return Ok(Some(Vec::new()));
        }
        Ok(Some(batches))
    }

    /// The index position of the batch starting exactly at `offset`, or why there is none.
    async fn boundary(&mut self, engine: &E, offset: u64) -> Result<Option<Cut>> {
        let segment_next = self.next_offset;
        let files = self.open_files(engine).await?;
        if offset == segment_next {
            return Ok(None);
        }
        // The end of a damaged segment's readable batches: the cut drops the damage.
        if let Some(tail) = files
            .corrupt_at
            .as_ref()
            .filter(|t| t.next_offset == offset)
        {
            return Ok(Some(Cut {
                entries_kept: files.index.len(),
                position: tail.position,
            }));
        }
        let i = files
            .index
            .lookup(offset)
            .expect("offset at or above the segment base");
        let entry = files.index.get(i).expect("below len");
        if entry.offset != offset {
            let batch_next = files.index.get(i + 1).map_or(segment_next, |e| e.offset);
            return Err(Error::NotBatchBoundary {
                offset,
                batch_base: entry.offset,
                batch_next,
            });
        }
        Ok(Some(Cut {
            entries_kept: i,
            position: entry.position,
        }))
    }

    /// Where this sealed segment's readable batches end, when a batch that does not check
    /// out ends them before the segment does: the offset after the last good batch (a cut
    /// there, [`Segment::truncate_from`], drops the damage). Reads the whole store, checking
    /// every batch (an index that looks right says nothing of the batches before its last);
    /// a damaged segment's index is rebuilt to end at the damage.
    pub async fn damage(&mut self, engine: &E) -> Result<Option<u64>> {
        self.open_files(engine).await?;
        let mut files = self.files.take().expect("opened above");
        let checked = self.check_whole(engine, &mut files).await;
        let damage = files.corrupt_at.as_ref().map(|tail| tail.next_offset);
        self.files = Some(files);
        checked.map(|()| damage)
    }

    /// [`Segment::damage`]'s scan: an index that ends short of a batch that does not check
    /// out is rebuilt from the same scan.
    async fn check_whole(&self, engine: &E, files: &mut Files<E::File>) -> Result<()> {
        if files.corrupt_at.is_some() {
            return Ok(());
        }
        let scan = self.scan_whole(files).await?;
        if scan.stopped_by.is_some() && scan.end_position < files.store.len() {
            self.index_from(engine, files, scan).await?;
        }
        Ok(())
    }

    /// Checks that a suffix truncation at `offset` would cut at a batch boundary.
    pub async fn check_boundary(&mut self, engine: &E, offset: u64) -> Result<()> {
        self.boundary(engine, offset).await.map(|_| ())
    }

    /// Cuts the segment at `offset` (a batch boundary) and makes it the active segment again,
    /// durably.
    pub async fn truncate_from(
        &mut self,
        engine: &E,
        offset: u64,
        index_bytes_max: u64,
    ) -> Result<()> {
        let cut = self.boundary(engine, offset).await?;
        let store_path = self.store_path.clone();
        let index_path = self.index_path.clone();
        let files = self.files.as_mut().expect("opened by boundary");
        files
            .index
            .grow(engine, index_bytes_max)
            .await
            .map_err(io_err("grow index", &index_path))?;
        if let Some(Cut {
            entries_kept,
            position,
        }) = cut
        {
            files.index.truncate(entries_kept);
            files
                .store
                .truncate(position)
                .await
                .map_err(io_err("truncate", &store_path))?;
            files.corrupt_at = None;
            self.size_bytes = position;
            self.next_offset = offset;
            if entries_kept == 0 {
                self.first_raft_index = None;
            }
        }
        Ok(())
    }

    /// Whether this segment's files are open (a sealed segment's are opened on first use).
    pub fn files_open(&self) -> bool {
        self.files.is_some()
    }

    /// Closes a sealed segment's files, keeping the segment (its next use opens them again):
    /// for a scan that reads many sealed segments once and must not keep a descriptor for
    /// each. Never for the active segment, whose files take appends.
    pub async fn close_files(&mut self) -> Result<()> {
        if let Some(files) = self.files.take() {
            files
                .index
                .flush()
                .map_err(io_err("flush index", &self.index_path))?;
            files
                .store
                .close()
                .await
                .map_err(io_err("close", &self.store_path))?;
        }
        Ok(())
    }

    /// Flushes the index and closes the store (no sync: the caller syncs when it must).
    pub async fn close(mut self) -> Result<()> {
        self.close_files().await
    }

    /// Deletes both files.
    pub async fn delete(mut self, engine: &E) -> Result<()> {
        if let Some(files) = self.files.take() {
            drop(files.index);
            files
                .store
                .close()
                .await
                .map_err(io_err("close", &self.store_path))?;
        }
        engine
            .remove(&self.store_path)
            .await
            .map_err(io_err("remove segment", &self.store_path))?;
        engine
            .remove_if_exists(&self.index_path)
            .await
            .map_err(io_err("remove index", &self.index_path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_sort_and_parse() {
        assert_eq!(store_file_name(42), "00000000000000000042.log");
        assert_eq!(index_file_name(42), "00000000000000000042.index");
        assert_eq!(parse_store_file_name("00000000000000000042.log"), Some(42));
        assert_eq!(
            parse_store_file_name(&store_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_store_file_name("42.log"), None);
        assert_eq!(parse_store_file_name("00000000000000000042.index"), None);
        assert_eq!(parse_store_file_name("0000000000000000004x.log"), None);
    }
}
