//! The offset index of one segment: offset → store position, one entry per batch, in a
//! memory-mapped file (memmap2).
//!
//! Owns: the index file's bytes and its in-memory count of valid entries.
//! Must never: be trusted over the store. The index is a cache: it is never synced on the
//! append path, it may be missing, short, long or garbage after a crash, and the segment
//! rebuilds it from the store whenever it disagrees.
//!
//! Entry layout (`ENTRY_LEN` = 16 bytes, little-endian):
//!
//! | offset | size | field          | meaning                                                 |
//! |-------:|-----:|----------------|---------------------------------------------------------|
//! |      0 |    4 | `offset_delta` | batch base offset − segment base offset                 |
//! |      4 |    4 | `position`     | byte position of the batch in the store file            |
//! |      8 |    4 | `batch_len`    | length of the batch in bytes                            |
//! |     12 |    4 | `check`        | CRC32 of bytes 0..12, so a zeroed slot is never valid   |
//!
//! Invariants of the valid prefix: the first entry is at position 0; each next entry starts
//! where the previous batch ended (`position == prev.position + prev.batch_len`) and has a
//! larger `offset_delta`. Loading stops at the first entry that breaks them, so stale slots
//! after a truncation or a torn page never extend the index. An active segment's file is
//! preallocated to its capacity (sparse); a sealed one is trimmed to its entries.
//!
//! A sparse mapped file must never be written where no block backs it on a full disk: the
//! page fault would find no space and the kernel would kill the process with `SIGBUS`. So
//! blocks are allocated (`fallocate`) ahead of the entries, [`RESERVE_BYTES`] at a time, and
//! an allocation that fails refuses the append before anything is written
//! ([`Index::reserve`]).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::format::crc32;
use super::io::Engine;

pub const ENTRY_LEN: usize = 16;
const OFFSET_DELTA_AT: usize = 0;
const POSITION_AT: usize = OFFSET_DELTA_AT + 4;
const BATCH_LEN_AT: usize = POSITION_AT + 4;
const CHECK_AT: usize = BATCH_LEN_AT + 4;
const _: () = assert!(CHECK_AT + 4 == ENTRY_LEN);
/// Index bytes allocated ahead of the entries at a time: one `fallocate` per 4096 batches.
pub const RESERVE_BYTES: u64 = 64 << 10;
const _: () = assert!(RESERVE_BYTES.is_multiple_of(ENTRY_LEN as u64));

/// One batch's place in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub offset: u64,
    pub position: u64,
    pub batch_len: u32,
}

impl Entry {
    /// The store position just past this batch.
    pub fn end_position(&self) -> u64 {
        self.position + u64::from(self.batch_len)
    }
}

/// The index is full: the segment must roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFull;

pub struct Index {
    path: PathBuf,
    file: File,
    mmap: Option<MmapMut>,
    base_offset: u64,
    entries: usize,
    capacity_entries: usize,
    /// The file's first bytes known to be backed by allocated blocks ([`Index::reserve`]).
    allocated_bytes: u64,
}

impl Index {
    /// Opens (creating if missing) the index at `path`, sized for `capacity_bytes` (rounded
    /// down to whole entries; a larger existing file keeps its size), and loads the valid
    /// prefix of entries.
    /// The file is opened and resized through `engine`.
    pub async fn open<E: Engine>(
        engine: &E,
        path: &Path,
        base_offset: u64,
        capacity_bytes: u64,
    ) -> io::Result<Index> {
        let file = engine.open_mapped(path).await?;
        let wanted_len = capacity_bytes / ENTRY_LEN as u64 * ENTRY_LEN as u64;
        let on_disk_len = file.metadata()?.len();
        if on_disk_len < wanted_len {
            engine.set_mapped_len(&file, path, wanted_len).await?;
        }
        let file_len = on_disk_len.max(wanted_len);
        let mut index = Index {
            path: path.to_owned(),
            file,
            mmap: None,
            base_offset,
            entries: 0,
            capacity_entries: (file_len / ENTRY_LEN as u64) as usize,
            allocated_bytes: 0,
        };
        index.map()?;
        index.entries = index.count_valid_prefix();
        Ok(index)
    }

    fn map(&mut self) -> io::Result<()> {
        self.mmap = None;
        if self.capacity_entries > 0 {
            // SAFETY: the file is private to this segment's owner (one shard), which is the
            // only code that changes its length, and it does so only after dropping the map.
            self.mmap = Some(unsafe { MmapMut::map_mut(&self.file)? });
        }
        Ok(())
    }

    fn slot(&self, index: usize) -> &[u8] {
        let mmap = self
            .mmap
            .as_ref()
            .expect("slot below capacity implies a map");
        &mmap[index * ENTRY_LEN..(index + 1) * ENTRY_LEN]
    }

    fn decode_slot(&self, index: usize) -> Option<Entry> {
        let slot = self.slot(index);
        let word = |at: usize| u32::from_le_bytes(slot[at..at + 4].try_into().expect("4 bytes"));
        if crc32(&slot[..CHECK_AT]) != word(CHECK_AT) {
            return None;
        }
        Some(Entry {
            offset: self.base_offset + u64::from(word(OFFSET_DELTA_AT)),
            position: u64::from(word(POSITION_AT)),
            batch_len: word(BATCH_LEN_AT),
        })
    }

    fn count_valid_prefix(&self) -> usize {
        let mut previous: Option<Entry> = None;
        for index in 0..self.capacity_entries {
            let Some(entry) = self.decode_slot(index) else {
                return index;
            };
            let follows = match previous {
                None => entry.position == 0 && entry.offset == self.base_offset,
                Some(prev) => entry.position == prev.end_position() && entry.offset > prev.offset,
            };
            if !follows || entry.batch_len == 0 {
                return index;
            }
            previous = Some(entry);
        }
        self.capacity_entries
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn is_full(&self) -> bool {
        self.entries == self.capacity_entries
    }

    pub fn get(&self, index: usize) -> Option<Entry> {
        (index < self.entries).then(|| {
            self.decode_slot(index)
                .expect("entries below the count are valid")
        })
    }

    pub fn last(&self) -> Option<Entry> {
        self.entries.checked_sub(1).and_then(|i| self.get(i))
    }

    /// The position in the entry list of the batch that holds `offset`: the last entry whose
    /// base offset is at or below it. `None` when `offset` is below the first entry.
    pub fn lookup(&self, offset: u64) -> Option<usize> {
        let (mut low, mut high) = (0, self.entries);
        while low < high {
            let mid = (low + high) / 2;
            if self.get(mid).expect("mid below count").offset <= offset {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low.checked_sub(1)
    }

    /// Makes sure blocks back the first `entries` slots, so that writing them through the map
    /// cannot fault on a full disk; with `ahead`, allocates up to [`RESERVE_BYTES`] beyond,
    /// within the file (the append path), without it exactly those slots (recovery, which
    /// must still open a log on a full disk: slots already written need no new block). An
    /// error (`ENOSPC`) changes nothing. A file system without `fallocate` is left sparse.
    pub fn reserve(&mut self, entries: usize, ahead: bool) -> io::Result<()> {
        let needed = (entries.min(self.capacity_entries) * ENTRY_LEN) as u64;
        if needed <= self.allocated_bytes {
            return Ok(());
        }
        let file_len = (self.capacity_entries * ENTRY_LEN) as u64;
        let end = if ahead {
            needed
                .next_multiple_of(RESERVE_BYTES)
                .max(self.allocated_bytes + RESERVE_BYTES)
                .min(file_len)
        } else {
            needed
        };
        let from = self.allocated_bytes;
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor this index owns; mode 0 only allocates
        // blocks inside the file's size (it never changes the size or the bytes).
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                from as libc::off_t,
                (end - from) as libc::off_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EOPNOTSUPP) => {
                    // Nothing to reserve with: sparse it stays, as before.
                    self.allocated_bytes = file_len;
                    return Ok(());
                }
                _ => return Err(e),
            }
        }
        self.allocated_bytes = end;
        Ok(())
    }

    /// Appends an entry for the batch that follows the last one.
    pub fn push(&mut self, entry: Entry) -> Result<(), IndexFull> {
        if self.is_full() {
            return Err(IndexFull);
        }
        match self.last() {
            None => assert_eq!(
                (entry.position, entry.offset),
                (0, self.base_offset),
                "first index entry of {} must be at position 0 and the base offset",
                self.path.display()
            ),
            Some(last) => assert!(
                entry.position == last.end_position() && entry.offset > last.offset,
                "index entry {entry:?} does not follow {last:?} in {}",
                self.path.display()
            ),
        }
        let offset_delta =
            u32::try_from(entry.offset - self.base_offset).expect("offset delta fits u32");
        let position = u32::try_from(entry.position).expect("segment_bytes_max <= u32::MAX");
        let mut slot = [0u8; ENTRY_LEN];
        slot[OFFSET_DELTA_AT..POSITION_AT].copy_from_slice(&offset_delta.to_le_bytes());
        slot[POSITION_AT..BATCH_LEN_AT].copy_from_slice(&position.to_le_bytes());
        slot[BATCH_LEN_AT..CHECK_AT].copy_from_slice(&entry.batch_len.to_le_bytes());
        let check = crc32(&slot[..CHECK_AT]);
        slot[CHECK_AT..].copy_from_slice(&check.to_le_bytes());
        let at = self.entries * ENTRY_LEN;
        self.mmap.as_mut().expect("capacity > 0")[at..at + ENTRY_LEN].copy_from_slice(&slot);
        self.entries += 1;
        Ok(())
    }

    /// Keeps the first `entries` entries and zeroes the slots after them, so that a reload
    /// cannot pick stale entries back up.
    pub fn truncate(&mut self, entries: usize) {
        assert!(
            entries <= self.entries,
            "cannot truncate {} entries to {entries}",
            self.entries
        );
        if let Some(mmap) = self.mmap.as_mut() {
            mmap[entries * ENTRY_LEN..self.entries * ENTRY_LEN].fill(0);
        }
        self.entries = entries;
    }

    /// Makes room for `capacity_bytes` again (a sealed segment that becomes active after a
    /// suffix truncation).
    pub async fn grow<E: Engine>(&mut self, engine: &E, capacity_bytes: u64) -> io::Result<()> {
        let wanted = capacity_bytes / ENTRY_LEN as u64;
        if wanted as usize > self.capacity_entries {
            self.mmap = None;
            engine
                .set_mapped_len(&self.file, &self.path, wanted * ENTRY_LEN as u64)
                .await?;
            self.capacity_entries = wanted as usize;
            // Blocks past the old size were cut off by a seal; they are allocated again.
            self.allocated_bytes = self.allocated_bytes.min((self.entries * ENTRY_LEN) as u64);
            self.map()?;
        }
        Ok(())
    }

    /// Writes the entries out and trims the file to them: the index of a sealed segment.
    pub async fn seal<E: Engine>(&mut self, engine: &E) -> io::Result<()> {
        self.flush()?;
        self.mmap = None;
        engine
            .set_mapped_len(&self.file, &self.path, (self.entries * ENTRY_LEN) as u64)
            .await?;
        self.capacity_entries = self.entries;
        self.allocated_bytes = self.allocated_bytes.min((self.entries * ENTRY_LEN) as u64);
        self.map()
    }

    /// Asks the kernel to write the mapped pages out. Not needed for correctness (the index is
    /// rebuilt from the store when it disagrees); done on close so a clean restart is fast.
    pub fn flush(&self) -> io::Result<()> {
        match &self.mmap {
            Some(mmap) => mmap.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PortableEngine;
    use futures::executor::block_on;

    fn open(path: &Path, base_offset: u64, capacity_bytes: u64) -> Index {
        block_on(Index::open(
            &PortableEngine::new(),
            path,
            base_offset,
            capacity_bytes,
        ))
        .unwrap()
    }

    fn entry(offset: u64, position: u64, batch_len: u32) -> Entry {
        Entry {
            offset,
            position,
            batch_len,
        }
    }

    #[test]
    fn push_lookup_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut index = open(&path, 100, 16 * 8);
        assert!(index.is_empty());
        index.push(entry(100, 0, 50)).unwrap();
        index.push(entry(103, 50, 70)).unwrap();
        index.push(entry(110, 120, 10)).unwrap();
        assert_eq!(index.lookup(99), None);
        assert_eq!(index.lookup(100), Some(0));
        assert_eq!(index.lookup(102), Some(0));
        assert_eq!(index.lookup(103), Some(1));
        assert_eq!(index.lookup(1000), Some(2));
        index.flush().unwrap();
        drop(index);
        let index = open(&path, 100, 16 * 8);
        assert_eq!(index.len(), 3);
        assert_eq!(index.last(), Some(entry(110, 120, 10)));
    }

    #[test]
    fn full_index_refuses_and_seal_trims_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut index = open(&path, 0, 32);
        index.push(entry(0, 0, 60)).unwrap();
        index.push(entry(1, 60, 60)).unwrap();
        assert_eq!(index.push(entry(2, 120, 60)), Err(IndexFull));
        index.truncate(1);
        block_on(index.seal(&PortableEngine::new())).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        block_on(index.grow(&PortableEngine::new(), 64)).unwrap();
        index.push(entry(1, 60, 60)).unwrap();
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn garbage_and_broken_chains_end_the_valid_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut index = open(&path, 0, 16 * 4);
        index.push(entry(0, 0, 60)).unwrap();
        index.push(entry(1, 60, 60)).unwrap();
        index.flush().unwrap();
        drop(index);
        // Corrupt the second entry's position but keep a valid check: the chain breaks.
        let mut bytes = std::fs::read(&path).unwrap();
        let mut slot = [0u8; 16];
        slot[0..4].copy_from_slice(&1u32.to_le_bytes());
        slot[4..8].copy_from_slice(&61u32.to_le_bytes());
        slot[8..12].copy_from_slice(&60u32.to_le_bytes());
        let check = crc32(&slot[..12]);
        slot[12..].copy_from_slice(&check.to_le_bytes());
        bytes[16..32].copy_from_slice(&slot);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(open(&path, 0, 64).len(), 1);
        // Random garbage in the first slot: nothing is valid.
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(open(&path, 0, 64).len(), 0);
    }
}
