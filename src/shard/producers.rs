//! One partition's idempotent-producer table: per producer, the last [`WINDOW_BATCHES`]
//! sequences with where their batches went, so that a retried batch is answered with its
//! original place instead of being written again.
//!
//! Owns: the admission rule of a sequence ([`ProducerTable::admit`]), the window of each
//! producer, its expiry and eviction, and the one default and one check of their limits
//! ([`ProducerLimits`], mapped onto by the config's `[storage]` keys of the same names).
//! Must never: do I/O, or decide anything from time but expiry and eviction. The shard feeds
//! it: what it writes (solo partitions) or what its Raft group applies (replicated ones), and
//! on open the headers of the log's last batches (`producer_id`, `producer_seq`; see
//! `docs/FORMAT.md`), so every replica holds the same window for the same log.
//!
//! Rule, per producer (a stored producer id, already scoped to the client's identity):
//! a producer the table does not know (new, expired or evicted) starts at any sequence; for
//! a known one, the next sequence after its highest is written, a sequence in the window is
//! answered from it (or "retry" while its batch is still being written), one past the next is
//! a gap, and one below the window is refused as too old. Nothing refused changes the table.
//!
//! Memory: a producer's state is a fixed array of [`WINDOW_BATCHES`] slots (32 bytes each)
//! and two words, 176 bytes (pinned below); with its 8-byte key and the hash map's control
//! byte and spare room, about 210 bytes. A partition holds at most
//! `producers_per_partition_max` of them: about 210 KiB at the default 1,024, nothing for a
//! partition no idempotent producer writes to.

use std::collections::HashMap;

use crate::storage::{InvalidLimit, LimitName, check_range};

/// How many of a producer's most recent batches a partition remembers.
pub const WINDOW_BATCHES: usize = 5;

const DAY_MS: u64 = 86_400_000;

/// The limits of every partition's producer table: defined and checked here, mapped onto by
/// the config's `[storage]` keys of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerLimits {
    /// A producer not heard from for this long is forgotten (its next batch starts afresh).
    pub producer_id_expiry_ms: u64,
    /// Most producers one partition remembers; past it, the one idle longest is forgotten
    /// (a new producer is never refused).
    pub producers_per_partition_max: u32,
    /// How many of a partition's last batches are read on open to rebuild its producers'
    /// windows: this bounds the open's cost, and a producer whose last batch is older is
    /// forgotten.
    pub producer_rebuild_batches_max: u32,
}

impl Default for ProducerLimits {
    fn default() -> Self {
        ProducerLimits {
            producer_id_expiry_ms: DAY_MS,
            producers_per_partition_max: 1024,
            producer_rebuild_batches_max: 10_000,
        }
    }
}

impl ProducerLimits {
    /// Checks each limit, naming it `key(field)` in the error; the first refused is returned.
    pub fn validate_as(&self, key: LimitName<'_>) -> Result<(), InvalidLimit> {
        check_range(
            key("producer_id_expiry_ms"),
            self.producer_id_expiry_ms,
            1_000,
            365 * DAY_MS,
            " ms",
        )?;
        check_range(
            key("producers_per_partition_max"),
            self.producers_per_partition_max,
            1,
            1 << 20,
            " producers",
        )?;
        check_range(
            key("producer_rebuild_batches_max"),
            self.producer_rebuild_batches_max,
            WINDOW_BATCHES as u32,
            10_000_000,
            " batches",
        )?;
        Ok(())
    }
}

/// Where a producer's batch went: what its append answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub base_offset: u64,
    pub count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Proposed (replicated partitions) and not yet applied: its place is not known yet.
    InFlight,
    Written(Written),
}

/// What to do with a batch the table admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A new sequence: write it. It is in the window as in flight until
    /// [`ProducerTable::written`] or [`ProducerTable::abandon`].
    Write,
    /// A retry of a batch already written: answer this, write nothing.
    Duplicate(Written),
}

/// Why a sequence is refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error(
        "sequence {sequence} leaves a gap: this producer's next sequence here is {expected}; send {expected} first"
    )]
    Gap { sequence: u64, expected: u64 },
    #[error(
        "sequence {sequence} is older than the last {WINDOW_BATCHES} batches this partition remembers for this producer (from {oldest}); its outcome is no longer known and it is not written again"
    )]
    TooOld { sequence: u64, oldest: u64 },
    #[error(
        "sequence {sequence} was not written, but later ones (up to {highest}) were; start again with a new producer_id"
    )]
    Skipped { sequence: u64, highest: u64 },
    /// The batch itself, or an earlier one of the producer, is still being written: retry.
    #[error(
        "sequence {sequence} of this producer, or one before it, is still being written; retry it shortly"
    )]
    InFlight { sequence: u64 },
}

impl SequenceError {
    /// True for a refusal that a retry of the same request may get past.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SequenceError::InFlight { .. })
    }
}

/// One producer's window: its most recent sequences, ascending, in `slots[..len]`.
#[derive(Debug, Clone)]
struct ProducerState {
    slots: [(u64, Slot); WINDOW_BATCHES],
    len: usize,
    last_seen_ms: i64,
}
const _: () = assert!(std::mem::size_of::<ProducerState>() == 176);

impl ProducerState {
    fn new(now_ms: i64) -> Self {
        ProducerState {
            slots: [(0, Slot::InFlight); WINDOW_BATCHES],
            len: 0,
            last_seen_ms: now_ms,
        }
    }

    fn window(&self) -> &[(u64, Slot)] {
        &self.slots[..self.len]
    }

    fn find(&self, sequence: u64) -> Option<usize> {
        self.window().iter().position(|(s, _)| *s == sequence)
    }

    fn has_in_flight(&self) -> bool {
        self.window()
            .iter()
            .any(|(_, slot)| *slot == Slot::InFlight)
    }

    /// Puts `sequence` in its sorted place (or updates it), dropping the oldest slot when
    /// the window is full; a sequence below a full window is not kept.
    fn put(&mut self, sequence: u64, slot: Slot) {
        if let Some(i) = self.find(sequence) {
            self.slots[i].1 = slot;
            return;
        }
        let at = self.window().partition_point(|(s, _)| *s < sequence);
        if self.len == WINDOW_BATCHES {
            if at == 0 {
                return;
            }
            self.slots.copy_within(1..at, 0);
            self.slots[at - 1] = (sequence, slot);
        } else {
            self.slots.copy_within(at..self.len, at + 1);
            self.slots[at] = (sequence, slot);
            self.len += 1;
        }
        debug_assert!(self.window().windows(2).all(|w| w[0].0 < w[1].0));
    }

    fn remove(&mut self, sequence: u64) {
        if let Some(i) = self.find(sequence) {
            self.slots.copy_within(i + 1..self.len, i);
            self.len -= 1;
        }
    }
}

/// One partition's producers.
#[derive(Debug)]
pub(crate) struct ProducerTable {
    limits: ProducerLimits,
    producers: HashMap<u64, ProducerState>,
}

impl ProducerTable {
    pub(crate) fn new(limits: ProducerLimits) -> Self {
        ProducerTable {
            limits,
            producers: HashMap::new(),
        }
    }

    /// Decides what to do with batch `sequence` of `producer_id`. On [`Admit::Write`] the
    /// sequence is in the window as in flight; the caller then reports it
    /// [`written`](Self::written) or [`abandoned`](Self::abandon).
    pub(crate) fn admit(
        &mut self,
        producer_id: u64,
        sequence: u64,
        now_ms: i64,
    ) -> Result<Admit, SequenceError> {
        let Some(state) = self.producers.get_mut(&producer_id) else {
            self.state_for(producer_id, now_ms)
                .put(sequence, Slot::InFlight);
            return Ok(Admit::Write);
        };
        let window = state.window();
        let (Some(&(oldest, _)), Some(&(highest, _))) = (window.first(), window.last()) else {
            // Every slot was abandoned: as for a producer the table does not know.
            state.last_seen_ms = now_ms;
            state.put(sequence, Slot::InFlight);
            return Ok(Admit::Write);
        };
        let answer = if let Some(i) = state.find(sequence) {
            match window[i].1 {
                Slot::Written(written) => Admit::Duplicate(written),
                Slot::InFlight => return Err(SequenceError::InFlight { sequence }),
            }
        } else if highest.checked_add(1) == Some(sequence) {
            state.put(sequence, Slot::InFlight);
            Admit::Write
        } else if sequence > highest {
            // `highest` < `sequence` <= u64::MAX, so `highest + 1` does not overflow.
            return Err(SequenceError::Gap {
                sequence,
                expected: highest + 1,
            });
        } else if sequence < oldest {
            return Err(SequenceError::TooOld { sequence, oldest });
        } else if window
            .iter()
            .any(|(s, slot)| *s > sequence && *slot == Slot::InFlight)
        {
            // A hole left by a failed write, with later batches still in the air: they fail
            // too (replication writes in order), and the retry then gets through.
            return Err(SequenceError::InFlight { sequence });
        } else {
            return Err(SequenceError::Skipped { sequence, highest });
        };
        state.last_seen_ms = now_ms;
        Ok(answer)
    }

    /// Records where batch `sequence` of `producer_id` went: on the leader after its write,
    /// on every replica as it applies it, and on open for each batch read back.
    pub(crate) fn written(&mut self, producer_id: u64, sequence: u64, written: Written, now: i64) {
        let state = self.state_for(producer_id, now);
        state.last_seen_ms = state.last_seen_ms.max(now);
        state.put(sequence, Slot::Written(written));
    }

    /// Forgets an in-flight sequence whose write failed, so a retry may write it. A written
    /// one stays (it is in the log).
    pub(crate) fn abandon(&mut self, producer_id: u64, sequence: u64) {
        if let Some(state) = self.producers.get_mut(&producer_id)
            && state
                .find(sequence)
                .is_some_and(|i| state.slots[i].1 == Slot::InFlight)
        {
            state.remove(sequence);
        }
    }

    /// Forgets every batch at or past `offset` (the log was cut there) and every in-flight
    /// one.
    pub(crate) fn forget_from(&mut self, offset: u64) {
        for state in self.producers.values_mut() {
            let kept: Vec<(u64, Slot)> = state
                .window()
                .iter()
                .copied()
                .filter(|(_, slot)| matches!(slot, Slot::Written(w) if w.base_offset < offset))
                .collect();
            state.len = 0;
            for (sequence, slot) in kept {
                state.put(sequence, slot);
            }
        }
        self.producers.retain(|_, state| state.len > 0);
    }

    /// Drops the producers idle for longer than `producer_id_expiry_ms`. (A batch still in
    /// flight after that long is lost: its proposal's answer never came.) Returns how many
    /// were dropped.
    pub(crate) fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.producers.len();
        let expiry_ms = self.limits.producer_id_expiry_ms as i64;
        self.producers
            .retain(|_, state| now_ms.saturating_sub(state.last_seen_ms) <= expiry_ms);
        before - self.producers.len()
    }

    /// Forgets every producer (a replica that installs a snapshot never applies the entries
    /// the snapshot covers, so what it knew of its producers is incomplete).
    pub(crate) fn clear(&mut self) {
        self.producers.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// The state of `producer_id`, made (after evicting the producer idle longest when the
    /// table is full) when there is none.
    fn state_for(&mut self, producer_id: u64, now_ms: i64) -> &mut ProducerState {
        if !self.producers.contains_key(&producer_id)
            && self.producers.len() >= self.limits.producers_per_partition_max as usize
        {
            // Idle longest first; one with a batch in flight only when all have one.
            let victim = self
                .producers
                .iter()
                .min_by_key(|(_, s)| (s.has_in_flight(), s.last_seen_ms))
                .map(|(id, _)| *id)
                .expect("a full table has producers");
            self.producers.remove(&victim);
        }
        self.producers
            .entry(producer_id)
            .or_insert_with(|| ProducerState::new(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base_offset: u64) -> Written {
        Written {
            base_offset,
            count: 1,
        }
    }

    /// Admits and writes sequences `range` of `producer` at offsets equal to the sequence.
    fn write_all(table: &mut ProducerTable, producer: u64, range: std::ops::Range<u64>) {
        for s in range {
            assert_eq!(table.admit(producer, s, 0), Ok(Admit::Write), "seq {s}");
            table.written(producer, s, at(s), 0);
        }
    }

    #[test]
    fn retries_in_the_window_get_the_original_answer() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        write_all(&mut table, 7, 0..8);
        for s in 3..8 {
            assert_eq!(table.admit(7, s, 0), Ok(Admit::Duplicate(at(s))));
        }
        assert_eq!(
            table.admit(7, 2, 0),
            Err(SequenceError::TooOld {
                sequence: 2,
                oldest: 3
            })
        );
        assert_eq!(table.admit(7, 8, 0), Ok(Admit::Write));
    }

    #[test]
    fn gaps_are_refused_with_the_expected_sequence_and_change_nothing() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        write_all(&mut table, 7, 0..2);
        let err = table.admit(7, 5, 0).unwrap_err();
        assert_eq!(
            err,
            SequenceError::Gap {
                sequence: 5,
                expected: 2
            }
        );
        assert!(err.to_string().contains("next sequence here is 2"), "{err}");
        assert_eq!(table.admit(7, 2, 0), Ok(Admit::Write));
    }

    #[test]
    fn a_new_producer_starts_anywhere_and_producers_do_not_mix() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        write_all(&mut table, 1, 40..42);
        assert_eq!(table.admit(2, 0, 0), Ok(Admit::Write));
        table.written(2, 0, at(100), 0);
        assert_eq!(table.admit(1, 41, 0), Ok(Admit::Duplicate(at(41))));
        assert_eq!(table.admit(2, 0, 0), Ok(Admit::Duplicate(at(100))));
    }

    #[test]
    fn in_flight_batches_are_retried_later_and_abandoned_ones_rewritten() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        write_all(&mut table, 1, 0..1);
        assert_eq!(table.admit(1, 1, 0), Ok(Admit::Write));
        assert_eq!(table.admit(1, 2, 0), Ok(Admit::Write));
        let retry = table.admit(1, 1, 0).unwrap_err();
        assert!(retry.is_retriable(), "{retry}");
        // Sequence 1 fails; 2 is still in the air: a retry of 1 waits for it.
        table.abandon(1, 1);
        assert_eq!(
            table.admit(1, 1, 0),
            Err(SequenceError::InFlight { sequence: 1 })
        );
        table.abandon(1, 2);
        assert_eq!(table.admit(1, 1, 0), Ok(Admit::Write));
        table.written(1, 1, at(1), 0);
        // Abandoning a written batch changes nothing.
        table.abandon(1, 1);
        assert_eq!(table.admit(1, 1, 0), Ok(Admit::Duplicate(at(1))));
    }

    #[test]
    fn a_hole_behind_written_batches_is_refused_for_good() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        write_all(&mut table, 1, 0..1);
        table.written(1, 2, at(2), 0);
        let err = table.admit(1, 1, 0).unwrap_err();
        assert_eq!(
            err,
            SequenceError::Skipped {
                sequence: 1,
                highest: 2
            }
        );
        assert!(!err.is_retriable());
    }

    #[test]
    fn idle_producers_expire() {
        let limits = ProducerLimits {
            producer_id_expiry_ms: 1_000,
            ..ProducerLimits::default()
        };
        let mut table = ProducerTable::new(limits);
        assert_eq!(table.admit(1, 0, 0), Ok(Admit::Write));
        table.written(1, 0, at(0), 0);
        assert_eq!(table.admit(2, 0, 500), Ok(Admit::Write));
        table.written(2, 0, at(1), 500);
        assert_eq!(table.expire(1_000), 0);
        assert_eq!(table.expire(1_001), 1);
        assert_eq!(table.len(), 1);
        // Forgotten: it starts afresh (its retry is written again, as documented).
        assert_eq!(table.admit(1, 0, 1_002), Ok(Admit::Write));
    }

    #[test]
    fn a_full_table_evicts_the_producer_idle_longest_and_refuses_nobody() {
        let limits = ProducerLimits {
            producers_per_partition_max: 3,
            ..ProducerLimits::default()
        };
        let mut table = ProducerTable::new(limits);
        for (producer, now) in [(1, 30), (2, 10), (3, 20)] {
            assert_eq!(table.admit(producer, 0, now), Ok(Admit::Write));
            table.written(producer, 0, at(producer), now);
        }
        assert_eq!(table.admit(4, 0, 40), Ok(Admit::Write));
        assert_eq!(table.len(), 3);
        // Producer 2 (idle longest) is gone; 1 and 3 still answer from their windows.
        assert_eq!(table.admit(2, 1, 50), Ok(Admit::Write));
        assert_eq!(table.len(), 3);
        assert_eq!(table.admit(1, 0, 60), Ok(Admit::Duplicate(at(1))));
        assert_eq!(
            table.admit(4, 0, 60),
            Err(SequenceError::InFlight { sequence: 0 })
        );
    }

    #[test]
    fn rebuilt_windows_keep_the_last_sequences_whatever_the_order() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        for s in [0, 1, 2, 4, 3, 5, 6, 7, 8, 9] {
            table.written(9, s, at(s), 0);
        }
        for s in 5..10 {
            assert_eq!(table.admit(9, s, 0), Ok(Admit::Duplicate(at(s))));
        }
        assert!(matches!(
            table.admit(9, 4, 0),
            Err(SequenceError::TooOld { .. })
        ));
    }

    #[test]
    fn the_largest_sequence_has_no_next_and_does_not_overflow() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        assert_eq!(table.admit(1, u64::MAX, 0), Ok(Admit::Write));
        table.written(1, u64::MAX, at(0), 0);
        assert_eq!(table.admit(1, u64::MAX, 0), Ok(Admit::Duplicate(at(0))));
        assert!(matches!(
            table.admit(1, 0, 0),
            Err(SequenceError::TooOld { .. })
        ));
    }

    #[test]
    fn a_cut_log_forgets_what_it_lost() {
        let mut table = ProducerTable::new(ProducerLimits::default());
        write_all(&mut table, 1, 0..4);
        table.forget_from(2);
        assert_eq!(table.admit(1, 1, 0), Ok(Admit::Duplicate(at(1))));
        assert_eq!(table.admit(1, 2, 0), Ok(Admit::Write));
        table.forget_from(0);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn limits_default_and_validate() {
        let key = |f: &str| f.to_owned();
        ProducerLimits::default().validate_as(&key).unwrap();
        let bad = ProducerLimits {
            producers_per_partition_max: 0,
            ..ProducerLimits::default()
        };
        assert_eq!(
            bad.validate_as(&key).unwrap_err().key,
            "producers_per_partition_max"
        );
        let bad = ProducerLimits {
            producer_id_expiry_ms: 0,
            ..ProducerLimits::default()
        };
        assert_eq!(
            bad.validate_as(&key).unwrap_err().key,
            "producer_id_expiry_ms"
        );
    }
}
