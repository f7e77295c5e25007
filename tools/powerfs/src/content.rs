//! One regular file's bytes as the power-loss model sees them: the durable part in a backing
//! file, the unsynced part in memory.
//!
//! Owns: the backing file of one inode (`<backing>/<ino>`, opened only while an operation
//! needs it: a campaign's tens of thousands of files must not hold as many descriptors, and
//! the harness's process shares its open-file limit with powerfs), the dirty extents written since
//! the last `fsync`/`fdatasync`, and the file's three lengths. Must never write an unsynced byte
//! to the backing file: the backing file is, at every moment, exactly what survives a power cut.
//!
//! Invariants:
//! - `valid_len <= len` and `valid_len <= durable_len`; the backing file is `durable_len` long.
//! - Backing bytes at positions `>= valid_len` read as zeros (a truncate that is not yet
//!   synced hides them; a later extension must not bring them back).
//! - Dirty extents do not overlap, do not touch, and lie below `len`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// The bytes of one regular file.
#[derive(Debug)]
pub(crate) struct Content {
    /// The backing file's path.
    backing: PathBuf,
    /// Length of the backing file: the size that survives a power cut.
    durable_len: u64,
    /// Length the file has now, as readers see it.
    len: u64,
    /// Backing bytes at or after this position are hidden (read as zeros).
    valid_len: u64,
    /// Unsynced bytes: start position → bytes. Non-overlapping, non-adjacent.
    dirty: BTreeMap<u64, Vec<u8>>,
}

/// What a power cut threw away from one file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Discarded {
    /// Unsynced bytes written and now forgotten.
    pub dirty_bytes: u64,
    /// Whether the size differed from the durable size (an unsynced extension or truncation).
    pub size_changed: bool,
}

impl Content {
    /// Wraps the backing file at `backing`, whose whole content is durable.
    pub(crate) fn open(backing: PathBuf) -> io::Result<Content> {
        let durable_len = std::fs::metadata(&backing)?.len();
        Ok(Content {
            backing,
            durable_len,
            len: durable_len,
            valid_len: durable_len,
            dirty: BTreeMap::new(),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Unsynced bytes held in memory.
    pub(crate) fn dirty_bytes(&self) -> u64 {
        self.dirty.values().map(|v| v.len() as u64).sum()
    }

    /// Reads up to `size` bytes at `position`, as a reader of the live file sees them.
    pub(crate) fn read(&self, position: u64, size: u32) -> io::Result<Vec<u8>> {
        if position >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(position + u64::from(size));
        let mut out = vec![0u8; (end - position) as usize];
        let backing_end = end.min(self.valid_len);
        if position < backing_end {
            let want = (backing_end - position) as usize;
            File::open(&self.backing)?.read_exact_at(&mut out[..want], position)?;
        }
        // Extents that start before `position` may still reach into the range.
        let first = self
            .dirty
            .range(..=position)
            .next_back()
            .map_or(position, |(start, _)| *start);
        for (&start, bytes) in self.dirty.range(first..end) {
            let ext_end = start + bytes.len() as u64;
            let from = start.max(position);
            let to = ext_end.min(end);
            if from < to {
                out[(from - position) as usize..(to - position) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        Ok(out)
    }

    /// Writes `data` at `position`, in memory only.
    pub(crate) fn write(&mut self, position: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = position + data.len() as u64;
        // Every extent that overlaps or touches [position, end] merges with the new bytes.
        let mut touching: Vec<u64> = Vec::new();
        for (&start, bytes) in self.dirty.range(..=end).rev() {
            if start + bytes.len() as u64 >= position {
                touching.push(start);
            } else {
                break;
            }
        }
        touching.reverse();
        let (base, mut merged) = match touching.first() {
            Some(&start) if start <= position => (start, self.dirty.remove(&start).unwrap()),
            _ => (position, Vec::with_capacity(data.len())),
        };
        let last_end = touching
            .last()
            .map(|s| *s + self.dirty.get(s).map_or(merged.len(), Vec::len) as u64)
            .unwrap_or(end);
        let new_end = end.max(last_end).max(base + merged.len() as u64);
        merged.resize((new_end - base) as usize, 0);
        for start in touching.into_iter().filter(|s| *s != base) {
            let bytes = self.dirty.remove(&start).expect("listed extent is present");
            let at = (start - base) as usize;
            merged[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        let at = (position - base) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.dirty.insert(base, merged);
        self.len = self.len.max(end);
    }

    /// Sets the length (truncate or extend with zeros), in memory only.
    pub(crate) fn set_len(&mut self, new_len: u64) {
        if new_len < self.len {
            let cut: Vec<u64> = self.dirty.range(new_len..).map(|(s, _)| *s).collect();
            for start in cut {
                self.dirty.remove(&start);
            }
            if let Some((start, bytes)) = self.dirty.range_mut(..new_len).next_back() {
                let keep = (new_len - *start) as usize;
                bytes.truncate(keep.min(bytes.len()));
            }
            self.valid_len = self.valid_len.min(new_len);
        }
        self.len = new_len;
    }

    /// Zeroes `[position, position + length)` within the current length (a punched hole).
    pub(crate) fn zero_range(&mut self, position: u64, length: u64) {
        let end = self.len.min(position + length);
        if position < end {
            self.write(position, &vec![0u8; (end - position) as usize]);
        }
    }

    /// `fsync`/`fdatasync`: makes the live content the durable content.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if self.dirty.is_empty() && self.len == self.durable_len && self.valid_len == self.len {
            return Ok(());
        }
        let backing = OpenOptions::new().write(true).open(&self.backing)?;
        backing.set_len(self.valid_len)?;
        for (&start, bytes) in &self.dirty {
            backing.write_all_at(bytes, start)?;
        }
        backing.set_len(self.len)?;
        self.dirty.clear();
        self.durable_len = self.len;
        self.valid_len = self.len;
        Ok(())
    }

    /// A power cut: everything since the last sync is forgotten.
    pub(crate) fn power_cut(&mut self) -> Discarded {
        let discarded = Discarded {
            dirty_bytes: self.dirty_bytes(),
            size_changed: self.len != self.durable_len || self.valid_len != self.durable_len,
        };
        self.dirty.clear();
        self.len = self.durable_len;
        self.valid_len = self.durable_len;
        discarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> (tempfile::TempDir, Content) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        (dir, Content::open(path).unwrap())
    }

    /// The model against a plain `Vec`: random writes, truncates, syncs and cuts, seeded.
    #[test]
    fn matches_a_vec_model() {
        let seed: u64 = std::env::var("POWERFS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_1234);
        let mut rng = seed;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let (_dir, mut c) = content();
        let mut live: Vec<u8> = Vec::new();
        let mut durable: Vec<u8> = Vec::new();
        for step in 0..5_000u32 {
            match next(10) {
                0..=5 => {
                    let pos = next(600);
                    let len = next(200) as usize + 1;
                    let byte = (step % 251) as u8 + 1;
                    let data = vec![byte; len];
                    c.write(pos, &data);
                    let end = pos as usize + len;
                    if live.len() < end {
                        live.resize(end, 0);
                    }
                    live[pos as usize..end].copy_from_slice(&data);
                }
                6 => {
                    let n = next(700);
                    c.set_len(n);
                    live.resize(n as usize, 0);
                }
                7 => {
                    c.sync().unwrap();
                    durable = live.clone();
                }
                8 => {
                    c.power_cut();
                    live = durable.clone();
                }
                _ => {
                    let pos = next(700);
                    let size = next(300) as u32;
                    let got = c.read(pos, size).unwrap();
                    let from = (pos as usize).min(live.len());
                    let to = (pos as usize + size as usize).min(live.len());
                    assert_eq!(
                        got,
                        live[from..to],
                        "seed {seed} step {step}: read {pos}+{size}"
                    );
                }
            }
            assert_eq!(
                c.len(),
                live.len() as u64,
                "seed {seed} step {step}: length"
            );
        }
        let all = c.read(0, u32::MAX).unwrap();
        assert_eq!(all, live, "seed {seed}: final content");
    }

    #[test]
    fn a_cut_forgets_unsynced_bytes_and_keeps_synced_ones() {
        let (_dir, mut c) = content();
        c.write(0, b"durable");
        c.sync().unwrap();
        c.write(7, b"-volatile");
        c.write(0, b"D");
        assert_eq!(c.read(0, 100).unwrap(), b"Durable-volatile");
        let lost = c.power_cut();
        assert_eq!(lost.dirty_bytes, 10);
        assert!(lost.size_changed);
        assert_eq!(c.read(0, 100).unwrap(), b"durable");
    }

    #[test]
    fn an_unsynced_truncate_is_undone_and_does_not_resurrect_bytes_when_synced() {
        let (_dir, mut c) = content();
        c.write(0, b"abcdef");
        c.sync().unwrap();
        c.set_len(2);
        c.set_len(6);
        assert_eq!(c.read(0, 10).unwrap(), b"ab\0\0\0\0");
        c.power_cut();
        assert_eq!(c.read(0, 10).unwrap(), b"abcdef");
        c.set_len(2);
        c.set_len(4);
        c.sync().unwrap();
        c.power_cut();
        assert_eq!(c.read(0, 10).unwrap(), b"ab\0\0");
    }
}
