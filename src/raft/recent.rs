//! The newest entries of a replicated partition's log, as written, shared by its group's log
//! handles and the shard that writes them: a leader's replication streams and every
//! replica's state machine read them here, at once, instead of asking the shard, which
//! serves its queue only between flushes (a read queued behind a flush waits for its sync).
//!
//! Owns: a bounded window of contiguous entries, by Raft index and by offset, ending at the
//! newest entry the shard has written for the group.
//! Must never: answer with an entry the log no longer holds, or one the group has asked the
//! log to drop. Rule: the group forgets the window *before* it queues anything that rewrites
//! the log (a truncation, a purge, a snapshot install), and bumps the window's generation;
//! the shard adds an entry only when it has written it under the generation its append was
//! asked in, so an append queued before the rewrite cannot refill the window with what the
//! rewrite drops. An entry written anywhere but right after the window's last batch (the
//! shard cut the log back, e.g. after a full disk) starts the window again. A read that the
//! window cannot answer whole goes to the shard as before.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use openraft::EntryPayload;
use openraft::entry::RaftEntry;

use super::types::{Entry, Proposal};

/// A group's window, shared on the shard's thread (`!Send`, no locks).
pub(crate) type SharedRecent = Rc<RefCell<Recent>>;

pub(crate) struct Recent {
    /// `end_offset`: the offset after the last entry's batch; `bytes`: theirs ([`bytes_of`]).
    entries: VecDeque<Entry>,
    end_offset: u64,
    bytes: usize,
    bytes_max: usize,
    generation: u64,
}

/// Bytes a control entry (blank, membership) counts for: its batch is small.
const CONTROL_ENTRY_BYTES: usize = 128;

fn bytes_of(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(Proposal::Stored { bytes, .. }) => bytes.len(),
        _ => CONTROL_ENTRY_BYTES,
    }
}

impl Recent {
    /// A window of at most `bytes_max` bytes of entries (0: keeps nothing).
    pub(crate) fn shared(bytes_max: usize) -> SharedRecent {
        Rc::new(RefCell::new(Recent {
            entries: VecDeque::new(),
            end_offset: 0,
            bytes: 0,
            bytes_max,
            generation: 0,
        }))
    }

    /// The generation an append is asked in (see the module docs).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Forgets every entry and starts a new generation: called before the group queues a
    /// truncation, a purge or a snapshot install.
    pub(crate) fn forget(&mut self) {
        self.clear();
        self.generation += 1;
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Keeps `entry` (stored form, its batch at `offsets`), just written by the shard for an
    /// append asked in `generation`. An entry that does not follow the window, by index or by
    /// offset, starts it again.
    pub(crate) fn written(&mut self, generation: u64, entry: Entry, offsets: Range<u64>) {
        if generation != self.generation || self.bytes_max == 0 {
            return;
        }
        let follows = self.entries.back().is_none_or(|last| {
            last.index() + 1 == entry.index() && self.end_offset == offsets.start
        });
        let size = bytes_of(&entry);
        if !follows || size > self.bytes_max {
            self.clear();
        }
        self.end_offset = offsets.end;
        if size > self.bytes_max {
            return;
        }
        self.bytes += size;
        self.entries.push_back(entry);
        while self.bytes > self.bytes_max {
            let oldest = self.entries.pop_front().expect("bytes > 0 means an entry");
            self.bytes -= bytes_of(&oldest);
        }
    }

    /// Entries `start..end` as the log reader answers them: from `start` until `end` or
    /// until they hold `bytes_max` bytes (at least one). `None` when `start` is not in the
    /// window, or when `whole` and the window ends before `end` without reaching
    /// `bytes_max` (ask the shard).
    pub(crate) fn read(
        &self,
        start: u64,
        end: u64,
        bytes_max: usize,
        whole: bool,
    ) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index();
        let last = self.entries.back()?.index();
        if start < first || start > last || start >= end {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut index = start;
        for entry in self.entries.range((start - first) as usize..) {
            debug_assert_eq!(entry.index(), index, "the window is contiguous");
            out.push(entry.clone());
            bytes = bytes.saturating_add(bytes_of(entry));
            index += 1;
            if index == end || bytes >= bytes_max {
                return Some(out);
            }
        }
        (!whole).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::log_id;

    fn blank(index: u64) -> Entry {
        Entry::new(log_id(1, index), EntryPayload::Blank)
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(RaftEntry::index).collect()
    }

    #[test]
    fn reads_from_the_window_and_leaves_the_rest_to_the_shard() {
        let recent = Recent::shared(10 * CONTROL_ENTRY_BYTES);
        let mut r = recent.borrow_mut();
        for i in 5..=8 {
            r.written(0, blank(i), i..i + 1);
        }
        assert_eq!(indexes(&r.read(6, 9, usize::MAX, true).unwrap()), [6, 7, 8]);
        assert_eq!(indexes(&r.read(6, 8, usize::MAX, true).unwrap()), [6, 7]);
        // Bounded by bytes: at least one entry, then stop once the bound is reached.
        assert_eq!(indexes(&r.read(5, 9, 1, true).unwrap()), [5]);
        assert_eq!(
            indexes(&r.read(5, 9, 2 * CONTROL_ENTRY_BYTES, true).unwrap()),
            [5, 6]
        );
        // Beyond the window's end: whole reads go to the shard, limited ones take a prefix.
        assert!(r.read(7, 12, usize::MAX, true).is_none());
        assert_eq!(indexes(&r.read(7, 12, usize::MAX, false).unwrap()), [7, 8]);
        // Before its start, past its end, or an empty range: the shard answers.
        assert!(r.read(4, 6, usize::MAX, false).is_none());
        assert!(r.read(9, 10, usize::MAX, false).is_none());
        assert!(r.read(6, 6, usize::MAX, false).is_none());
    }

    #[test]
    fn an_append_asked_before_a_rewrite_does_not_refill_the_window() {
        let recent = Recent::shared(10 * CONTROL_ENTRY_BYTES);
        let mut r = recent.borrow_mut();
        let asked = r.generation();
        r.written(asked, blank(1), 1..2);
        r.forget();
        // The append of entry 2 was queued before the truncation was asked for.
        r.written(asked, blank(2), 2..3);
        assert!(r.read(1, 3, usize::MAX, false).is_none());
        assert!(r.read(2, 3, usize::MAX, false).is_none());
        let now = r.generation();
        r.written(now, blank(2), 2..3);
        assert_eq!(indexes(&r.read(2, 3, usize::MAX, true).unwrap()), [2]);
    }

    #[test]
    fn the_window_stays_contiguous_and_within_its_bound() {
        let recent = Recent::shared(3 * CONTROL_ENTRY_BYTES);
        let mut r = recent.borrow_mut();
        for i in 1..=5 {
            r.written(0, blank(i), i..i + 1);
        }
        // The oldest went first.
        assert!(r.read(2, 6, usize::MAX, true).is_none());
        assert_eq!(indexes(&r.read(3, 6, usize::MAX, true).unwrap()), [3, 4, 5]);
        // A gap starts the window again.
        r.written(0, blank(9), 9..10);
        assert!(r.read(5, 6, usize::MAX, false).is_none());
        assert_eq!(indexes(&r.read(9, 10, usize::MAX, true).unwrap()), [9]);
        // The log cut back under the window (the next batch lands at an offset the window
        // already covers): it starts again, though the index follows.
        r.written(0, blank(10), 5..6);
        assert!(r.read(9, 10, usize::MAX, false).is_none());
        assert_eq!(indexes(&r.read(10, 11, usize::MAX, true).unwrap()), [10]);
        // Off: keeps nothing.
        let off = Recent::shared(0);
        off.borrow_mut().written(0, blank(1), 1..2);
        assert!(off.borrow().read(1, 2, usize::MAX, false).is_none());
    }
}
