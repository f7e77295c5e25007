//! The campaign's checker: from the ledger (what was sent, acknowledged, refused, left
//! indeterminate, and what the following consumers read) and the final read of every
//! partition on every node, it counts the anomalies of issue 15.
//!
//! Owns the definitions (one place), pure functions over data, no I/O:
//! - `lost`: an acknowledged value that no node's final read holds;
//! - `lost-on-a-replica`: one that some node's final read lacks while others hold it
//!   (replicas that never converged, though every node reported a high watermark past it);
//! - `duplicated`: a value at two offsets (in one node's log, or across any reads);
//! - `inconsistent-offsets`: an offset seen with two values in any read on any node, in a
//!   consumer, or against its acknowledgement;
//! - `nonmonotonic`: a consumer read an offset at or below one it had already read;
//! - `skipped`: a record of the final log between two offsets a consumer read one after
//!   the other (or before its first), that it never read;
//! - `failed-but-visible`: a value refused definitely that some read holds;
//! - `unknown`: a value never sent (or sent to another partition) that some read holds;
//! - indeterminate values are counted apart, with how many of them became visible.
//!
//! A run passes only with 0 in every count but the indeterminate ones.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::workload::{Id, Ledger};

/// Per partition, per replica (node id): offset → value, as the node served it at the end.
pub type Finals = Vec<BTreeMap<u32, BTreeMap<u64, Id>>>;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub lost: u64,
    pub lost_on_a_replica: u64,
    pub duplicated: u64,
    pub inconsistent_offsets: u64,
    pub nonmonotonic: u64,
    pub skipped: u64,
    pub failed_but_visible: u64,
    pub unknown: u64,
    pub acked_records: u64,
    pub failed_records: u64,
    pub indeterminate_records: u64,
    pub indeterminate_visible: u64,
    pub consumed_records: u64,
    pub final_records_read: u64,
    /// One line per violation found (the first few of each kind).
    pub details: Vec<String>,
}

const DETAILS_PER_KIND_MAX: usize = 20;

impl Report {
    pub fn passed(&self) -> bool {
        self.lost
            + self.lost_on_a_replica
            + self.duplicated
            + self.inconsistent_offsets
            + self.nonmonotonic
            + self.skipped
            + self.failed_but_visible
            + self.unknown
            == 0
    }

    /// The counts as one JSON object (no details).
    pub fn json(&self) -> String {
        format!(
            "{{\"lost\":{},\"lost_on_a_replica\":{},\"duplicated\":{},\"inconsistent_offsets\":{},\
             \"nonmonotonic\":{},\"skipped\":{},\"failed_but_visible\":{},\"unknown\":{},\
             \"acked_records\":{},\"failed_records\":{},\"indeterminate_records\":{},\
             \"indeterminate_visible\":{},\"consumed_records\":{},\"final_records_read\":{}}}",
            self.lost,
            self.lost_on_a_replica,
            self.duplicated,
            self.inconsistent_offsets,
            self.nonmonotonic,
            self.skipped,
            self.failed_but_visible,
            self.unknown,
            self.acked_records,
            self.failed_records,
            self.indeterminate_records,
            self.indeterminate_visible,
            self.consumed_records,
            self.final_records_read,
        )
    }
}

struct Counter<'a> {
    report: &'a mut Report,
    shown: HashMap<&'static str, usize>,
}

impl Counter<'_> {
    fn detail(&mut self, kind: &'static str, line: String) {
        let shown = self.shown.entry(kind).or_default();
        if *shown < DETAILS_PER_KIND_MAX {
            self.report.details.push(format!("{kind}: {line}"));
        }
        *shown += 1;
    }
}

/// Checks `ledger` against `finals` (every node's final read of every partition).
pub fn check(ledger: &Ledger, finals: &Finals) -> Report {
    let mut report = Report::default();
    let mut c = Counter {
        report: &mut report,
        shown: HashMap::new(),
    };
    let partitions = ledger.consumed.len();

    // Every observation of (partition, offset) → value: acks, consumers, final reads. The
    // first value seen at each offset, and the first offset of each value, are kept; what
    // disagrees with them is kept apart (small, unless the run went very wrong).
    let mut at: HashMap<(u32, u64), Id> = HashMap::new();
    let mut where_: HashMap<Id, (u32, u64)> = HashMap::new();
    let mut inconsistent: BTreeMap<(u32, u64), BTreeSet<Id>> = BTreeMap::new();
    let mut duplicated: BTreeMap<Id, BTreeSet<(u32, u64)>> = BTreeMap::new();
    let mut observe = |p: u32, offset: u64, v: Id| {
        let first = *at.entry((p, offset)).or_insert(v);
        if first != v {
            inconsistent
                .entry((p, offset))
                .or_insert_with(|| [first].into())
                .insert(v);
        }
        let first = *where_.entry(v).or_insert((p, offset));
        if first != (p, offset) {
            duplicated
                .entry(v)
                .or_insert_with(|| [first].into())
                .insert((p, offset));
        }
    };
    for a in &ledger.acked {
        for (i, v) in a.values.iter().enumerate() {
            observe(a.partition, a.base + i as u64, *v);
        }
    }
    for (p, consumed) in ledger.consumed.iter().enumerate() {
        for (offset, v) in consumed {
            observe(p as u32, *offset, *v);
        }
    }
    for (p, replicas) in finals.iter().enumerate() {
        for log in replicas.values() {
            for (offset, v) in log {
                observe(p as u32, *offset, *v);
            }
        }
    }
    for ((p, offset), vs) in &inconsistent {
        c.report.inconsistent_offsets += 1;
        c.detail(
            "inconsistent-offsets",
            format!("p{p} offset {offset}: {vs:x?}"),
        );
    }
    for (v, at) in &duplicated {
        c.report.duplicated += 1;
        c.detail("duplicated", format!("{v:x} at {at:?}"));
    }

    // Values in the reads: sent to that partition?
    let mut visible: HashSet<Id> = HashSet::new();
    for (p, consumed) in ledger.consumed.iter().enumerate() {
        c.report.consumed_records += consumed.len() as u64;
        for (offset, v) in consumed {
            visible.insert(*v);
            if ledger.sent.get(v) != Some(&(p as u32)) {
                c.report.unknown += 1;
                c.detail("unknown", format!("consumer p{p} offset {offset}: {v:x}"));
            }
        }
    }
    for (p, replicas) in finals.iter().enumerate() {
        for (node, log) in replicas {
            c.report.final_records_read += log.len() as u64;
            for (offset, v) in log {
                visible.insert(*v);
                if ledger.sent.get(v) != Some(&(p as u32)) {
                    c.report.unknown += 1;
                    c.detail(
                        "unknown",
                        format!("node {node} p{p} offset {offset}: {v:x}"),
                    );
                }
            }
        }
    }

    // Acknowledged values: on every node, at their offset.
    for a in &ledger.acked {
        for (i, v) in a.values.iter().enumerate() {
            c.report.acked_records += 1;
            let offset = a.base + i as u64;
            let replicas = &finals[a.partition as usize];
            let holders: Vec<u32> = replicas
                .iter()
                .filter(|(_, log)| log.get(&offset) == Some(v))
                .map(|(node, _)| *node)
                .collect();
            if holders.is_empty() {
                c.report.lost += 1;
                c.detail("lost", format!("p{} offset {offset}: {v:x}", a.partition));
            } else if holders.len() < replicas.len() {
                c.report.lost_on_a_replica += 1;
                c.detail(
                    "lost-on-a-replica",
                    format!(
                        "p{} offset {offset}: {v} held only by {holders:?}",
                        a.partition
                    ),
                );
            }
        }
    }
    for f in &ledger.failed {
        for v in &f.values {
            c.report.failed_records += 1;
            if visible.contains(v) {
                c.report.failed_but_visible += 1;
                c.detail(
                    "failed-but-visible",
                    format!("p{} {v} ({})", f.partition, f.status),
                );
            }
        }
    }
    for f in &ledger.indeterminate {
        for v in &f.values {
            c.report.indeterminate_records += 1;
            if visible.contains(v) {
                c.report.indeterminate_visible += 1;
            }
        }
    }

    // Following consumers: read in order, and nothing of the final log skipped.
    for p in 0..partitions {
        c.report.nonmonotonic += ledger.nonmonotonic[p];
        let consumed = &ledger.consumed[p];
        let Some(log) = finals.get(p).and_then(|replicas| replicas.values().next()) else {
            continue;
        };
        let mut previous: Option<u64> = None;
        for (offset, _) in consumed {
            let from = previous.map_or(0, |o| o + 1);
            if from < *offset {
                for (missed, v) in log.range(from..*offset) {
                    c.report.skipped += 1;
                    c.detail(
                        "skipped",
                        format!(
                            "p{p}: the consumer read {previous:?} then {offset}, not {missed} ({v})"
                        ),
                    );
                }
            }
            previous = Some(*offset);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::workload::{Acked, UNKNOWN_ID, Unacked, id_of, value_of};

    fn ledger() -> Ledger {
        let mut l = Ledger {
            consumed: vec![Vec::new()],
            nonmonotonic: vec![0],
            acks_per_partition: vec![0],
            ..Ledger::default()
        };
        for v in ["a", "b", "c", "d", "x", "y"] {
            l.sent.insert(id(v), 0);
        }
        l.acked.push(Acked {
            partition: 0,
            base: 0,
            values: vec![id("a"), id("b")],
        });
        l.acked.push(Acked {
            partition: 0,
            base: 3,
            values: vec![id("c")],
        });
        l.failed.push(Unacked {
            partition: 0,
            values: vec![id("x")],
            status: "FailedPrecondition".into(),
        });
        l.indeterminate.push(Unacked {
            partition: 0,
            values: vec![id("d")],
            status: "timeout".into(),
        });
        l.consumed[0] = vec![(0, id("a")), (1, id("b")), (2, id("d")), (3, id("c"))];
        l
    }

    /// A one-letter name for an identity, to keep the cases readable.
    fn id(name: &str) -> Id {
        u64::from(name.as_bytes()[0])
    }

    fn log(entries: &[(u64, &str)]) -> BTreeMap<u64, Id> {
        entries.iter().map(|(o, v)| (*o, id(v))).collect()
    }

    fn finals(logs: &[&[(u64, &str)]]) -> Finals {
        vec![
            logs.iter()
                .enumerate()
                .map(|(i, l)| (i as u32 + 1, log(l)))
                .collect(),
        ]
    }

    const GOOD: &[(u64, &str)] = &[(0, "a"), (1, "b"), (2, "d"), (3, "c")];

    #[test]
    fn a_clean_run_passes_and_counts_indeterminate_values_apart() {
        let r = check(&ledger(), &finals(&[GOOD, GOOD, GOOD]));
        assert!(r.passed(), "{r:?}");
        assert_eq!(
            (
                r.acked_records,
                r.indeterminate_records,
                r.indeterminate_visible
            ),
            (3, 1, 1)
        );
    }

    #[test]
    fn each_anomaly_is_counted() {
        // Node 2 lost "c" and holds "x" (refused) in its place; node 3 holds "a" twice.
        let r = check(
            &ledger(),
            &finals(&[
                GOOD,
                &[(0, "a"), (1, "b"), (2, "d"), (3, "x")],
                &[(0, "a"), (1, "b"), (2, "d"), (3, "c"), (4, "a")],
            ]),
        );
        assert_eq!(r.lost_on_a_replica, 1, "{r:?}");
        assert_eq!(r.failed_but_visible, 1, "{r:?}");
        assert_eq!(r.inconsistent_offsets, 1, "{r:?}");
        assert_eq!(r.duplicated, 1, "a at 0 and 4: {r:?}");
        assert!(!r.passed());

        let r = check(&ledger(), &finals(&[&[(0, "a"), (1, "b")]]));
        assert_eq!(r.lost, 1, "{r:?}");
        assert_eq!(r.skipped, 0, "{r:?}");

        let mut l = ledger();
        l.consumed[0] = vec![(0, id("a")), (3, id("c"))];
        l.nonmonotonic[0] = 1;
        l.sent.remove(&id("d"));
        let r = check(&l, &finals(&[GOOD]));
        assert_eq!((r.skipped, r.nonmonotonic, r.unknown), (2, 1, 1), "{r:?}");
    }

    #[test]
    fn a_value_read_back_is_its_identity_only_when_every_byte_is_right() {
        for id in [0, 1, 0x2a_0000_0013, (3 << 40) | (77 << 4) | 7] {
            let v = value_of(id);
            assert_eq!(id_of(v.as_bytes()), id);
            let mut flipped = v.clone().into_bytes();
            let last = flipped.len() - 1;
            flipped[last] ^= 1;
            assert!(id_of(&flipped) >= UNKNOWN_ID, "a flipped byte is unknown");
            assert!(
                id_of(&v.as_bytes()[..last]) >= UNKNOWN_ID,
                "a cut value is unknown"
            );
        }
        assert!(id_of(b"not ours") >= UNKNOWN_ID);
    }
}
