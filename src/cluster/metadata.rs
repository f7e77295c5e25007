//! The controller's metadata log and what it says: the cluster's topics and their placement.
//!
//! The log is partition 0 of the internal topic [`METADATA_TOPIC`], replicated on the
//! controller's voters (`[cluster] controller_voters`) as one Raft group like any other
//! partition: its leader is the controller leader. Each record's value is one protobuf
//! `MetadataRecord` (`replication.proto`): a topic created with its placement, or a topic
//! deleted. Every node reads the committed log in order (from its own replica, or fetched
//! from a voter) and applies it to a [`MetadataView`]; the view after offset `n` is a pure
//! function of the records below `n`, so every node that applied as far agrees.
//!
//! Rules of the view:
//! - A creation takes effect only when no live topic has its name. Its **incarnation** is its
//!   offset + 1 (never 0): a topic deleted and created again is a new incarnation, and a node
//!   tells a stale local copy by it.
//! - A deletion removes the live topic of that name if it is the incarnation named (the
//!   proposer read it from its view), so that a retried deletion never deletes a topic
//!   created again in between.
//! - The proposer of a creation recognises its own by the `request_id` it chose, also when a
//!   retry after a lost answer appended the same creation twice (the second changes nothing).
//! - A creation names the offset its proposer's view had reached when it found the name free
//!   (`after`). It is ignored if the name was deleted at or after that offset, so a retry
//!   that lands after a deletion never brings the deleted topic back. The view remembers the
//!   last [`DELETIONS_REMEMBERED`] deletions for this; a creation whose `after` is older than
//!   the oldest deletion forgotten is ignored too (it cannot be judged; its proposer gave up
//!   long before).
//! - A reassignment names the incarnation and partition it moves, and the new replicas. From
//!   it on, the partition is **moving**: its replicas are the new ones, and its holders the
//!   new ones and the old ones together, until a completion record names the same new
//!   replicas (the partition's group has changed its voters). A partition moves once at a
//!   time: a reassignment of a moving partition changes nothing.
//! - A decommissioned node gets no new replica; it stays one for good.
//!
//! Owns: the record encoding and the view. Must never: do I/O (the server's controller
//! reads and proposes, `server::controller`), or decide a partition's leader (its own group
//! does).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;

use crate::proto::v1 as pb;

/// The internal topic whose partition 0 is the metadata log.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// The incarnation of a topic made before the controller, or outside a cluster: unknown.
pub const NO_INCARNATION: u64 = 0;

/// How many deletions the view remembers, to refuse a late retry of a creation of a
/// deleted name (see the rules above). A proposal retries for seconds; this many deletions
/// take far longer to reach the log.
///
/// Part of what the log means, like the rules above: every node must apply the same value,
/// so it is a constant of the format, never a setting, and changing it changes how an
/// existing log reads.
pub const DELETIONS_REMEMBERED: usize = 4096;

/// A live topic as the metadata log placed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlacement {
    pub partitions: u32,
    /// The nodes of each partition, preferred leader first.
    pub replicas: Vec<Vec<u64>>,
    /// The creation's offset + 1.
    pub incarnation: u64,
    /// The proposer's id for its creation.
    pub request_id: u64,
    /// The partitions being moved, each with the replicas it had before its move.
    pub moving: BTreeMap<u32, Vec<u64>>,
}

impl TopicPlacement {
    /// The nodes that hold partition `p` now: its replicas, then, while it moves, the old
    /// replicas that are not among them (they keep their copy until the move completes).
    pub fn holders(&self, p: u32) -> Vec<u64> {
        let mut holders = self.replicas[p as usize].clone();
        for node in self.moving.get(&p).into_iter().flatten() {
            if !holders.contains(node) {
                holders.push(*node);
            }
        }
        holders
    }

    /// [`TopicPlacement::holders`] of every partition.
    pub fn all_holders(&self) -> Vec<Vec<u64>> {
        (0..self.partitions).map(|p| self.holders(p)).collect()
    }
}

/// One partition's move to new replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub topic: String,
    /// The topic's incarnation the move is about.
    pub incarnation: u64,
    pub partition: u32,
    /// The new replicas, preferred leader first.
    pub replicas: Vec<u64>,
}

/// What applying one record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created {
        name: String,
    },
    /// A creation of a name that is live, or that was deleted since its proposer found it
    /// free: nothing changed.
    CreateIgnored {
        name: String,
    },
    Deleted {
        name: String,
    },
    /// A deletion of a name that is not live: nothing changed.
    DeleteIgnored {
        name: String,
    },
    /// A partition started moving to new replicas.
    Reassigned {
        name: String,
        partition: u32,
    },
    /// A partition's move completed.
    ReassignCompleted {
        name: String,
        partition: u32,
    },
    /// A reassignment or completion that does not apply (another incarnation, no such
    /// partition, a move already under way, or not the move under way): nothing changed.
    ReassignIgnored {
        name: String,
        partition: u32,
    },
    Decommissioned {
        node: u64,
    },
    /// A record of a kind this build does not know (from a newer one): skipped.
    Unknown,
}

/// The topics after the metadata log's records below [`MetadataView::applied`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataView {
    topics: BTreeMap<String, TopicPlacement>,
    decommissioned: BTreeSet<u64>,
    applied: u64,
    /// The last [`DELETIONS_REMEMBERED`] deletions: per name, its last one.
    deleted: HashMap<String, Deletion>,
    /// The same deletions by offset, oldest first.
    deletion_order: BTreeMap<u64, String>,
    /// The offset after the newest deletion forgotten (0 = none forgotten).
    forgotten_before: u64,
}

/// A deletion the view remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deletion {
    /// The deletion record's offset.
    pub offset: u64,
    /// The `request_id` of the creation it deleted.
    pub request_id: u64,
}

impl MetadataView {
    /// The offset after the last record applied (0 = none).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn topic(&self, name: &str) -> Option<&TopicPlacement> {
        self.topics.get(name)
    }

    /// The live topics, by name.
    pub fn topics(&self) -> impl Iterator<Item = (&str, &TopicPlacement)> {
        self.topics.iter().map(|(n, p)| (n.as_str(), p))
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// The last deletion of `name`, if the view still remembers it.
    pub fn deletion(&self, name: &str) -> Option<Deletion> {
        self.deleted.get(name).copied()
    }

    /// Whether a creation of `name` at `offset` that found it free at `after` may still
    /// take effect (`None`: a record from before creations named it, unconditional). An
    /// `after` past the record's own offset is read as its offset.
    fn creation_allowed(&self, name: &str, offset: u64, after: Option<u64>) -> bool {
        let Some(after) = after.map(|after| after.min(offset)) else {
            return true;
        };
        after >= self.forgotten_before && self.deleted.get(name).is_none_or(|d| d.offset < after)
    }

    /// Remembers the deletion of `name` at `offset`, forgetting the oldest beyond
    /// [`DELETIONS_REMEMBERED`].
    fn remember_deletion(&mut self, name: String, offset: u64, request_id: u64) {
        if let Some(old) = self
            .deleted
            .insert(name.clone(), Deletion { offset, request_id })
        {
            self.deletion_order.remove(&old.offset);
        }
        self.deletion_order.insert(offset, name);
        while self.deletion_order.len() > DELETIONS_REMEMBERED {
            let (offset, name) = self.deletion_order.pop_first().expect("over the bound");
            self.deleted.remove(&name);
            self.forgotten_before = offset + 1;
        }
        debug_assert_eq!(self.deleted.len(), self.deletion_order.len());
    }

    /// True once node `node` has been decommissioned: it gets no new replica.
    pub fn is_decommissioned(&self, node: u64) -> bool {
        self.decommissioned.contains(&node)
    }

    /// Every partition being moved.
    pub fn moves(&self) -> Vec<Move> {
        self.topics
            .iter()
            .flat_map(|(name, placement)| {
                placement.moving.keys().map(move |&p| Move {
                    topic: name.clone(),
                    incarnation: placement.incarnation,
                    partition: p,
                    replicas: placement.replicas[p as usize].clone(),
                })
            })
            .collect()
    }

    /// Applies the record at `offset`. Offsets must increase (gaps are fine: control
    /// batches take offsets too).
    pub fn apply(&mut self, offset: u64, record: &pb::MetadataRecord) -> Applied {
        assert!(
            offset >= self.applied,
            "metadata record {offset} applied after {}",
            self.applied
        );
        self.applied = offset + 1;
        match &record.kind {
            Some(pb::metadata_record::Kind::TopicCreated(created)) => {
                let name = created.name.clone();
                if self.topics.contains_key(&name)
                    || !self.creation_allowed(&name, offset, created.after)
                {
                    return Applied::CreateIgnored { name };
                }
                self.topics.insert(
                    name.clone(),
                    TopicPlacement {
                        partitions: created.partitions,
                        replicas: created.replicas.iter().map(|r| r.nodes.clone()).collect(),
                        incarnation: offset + 1,
                        request_id: created.request_id,
                        moving: BTreeMap::new(),
                    },
                );
                Applied::Created { name }
            }
            Some(pb::metadata_record::Kind::TopicDeleted(deleted)) => {
                let name = deleted.name.clone();
                let live = self.topics.get(&name).map(|p| p.incarnation);
                if live != Some(deleted.incarnation) {
                    return Applied::DeleteIgnored { name };
                }
                let placement = self.topics.remove(&name).expect("live");
                self.remember_deletion(name.clone(), offset, placement.request_id);
                Applied::Deleted { name }
            }
            Some(pb::metadata_record::Kind::PartitionReassigned(moved)) => {
                let (name, partition) = (moved.name.clone(), moved.partition);
                let placement = self
                    .topics
                    .get_mut(&name)
                    .filter(|t| t.incarnation == moved.incarnation)
                    .filter(|t| partition < t.partitions && !t.moving.contains_key(&partition));
                let Some(placement) = placement else {
                    return Applied::ReassignIgnored { name, partition };
                };
                if moved.replicas.is_empty() {
                    return Applied::ReassignIgnored { name, partition };
                }
                let before = std::mem::replace(
                    &mut placement.replicas[partition as usize],
                    moved.replicas.clone(),
                );
                placement.moving.insert(partition, before);
                Applied::Reassigned { name, partition }
            }
            Some(pb::metadata_record::Kind::ReassignCompleted(done)) => {
                let (name, partition) = (done.name.clone(), done.partition);
                let placement = self
                    .topics
                    .get_mut(&name)
                    .filter(|t| t.incarnation == done.incarnation)
                    .filter(|t| t.moving.contains_key(&partition))
                    .filter(|t| t.replicas[partition as usize] == done.replicas);
                match placement {
                    Some(placement) => {
                        placement.moving.remove(&partition);
                        Applied::ReassignCompleted { name, partition }
                    }
                    None => Applied::ReassignIgnored { name, partition },
                }
            }
            Some(pb::metadata_record::Kind::NodeDecommissioned(node)) => {
                self.decommissioned.insert(node.node);
                Applied::Decommissioned { node: node.node }
            }
            None => Applied::Unknown,
        }
    }

    /// Per node: (replicas held, partitions it is the preferred leader of), over every live
    /// topic: what placement balances.
    pub fn load(&self) -> HashMap<u64, (u64, u64)> {
        let mut load: HashMap<u64, (u64, u64)> = HashMap::new();
        for placement in self.topics.values() {
            for set in placement.all_holders() {
                for (i, node) in set.iter().enumerate() {
                    let entry = load.entry(*node).or_default();
                    entry.0 += 1;
                    if i == 0 {
                        entry.1 += 1;
                    }
                }
            }
        }
        load
    }
}

/// The record that creates `name` with `replicas` (one set per partition), proposed by a
/// node whose view, applied up to `after`, had no topic of that name.
pub fn topic_created(
    name: &str,
    replicas: Vec<Vec<u64>>,
    request_id: u64,
    after: u64,
) -> pb::MetadataRecord {
    pb::MetadataRecord {
        kind: Some(pb::metadata_record::Kind::TopicCreated(pb::TopicCreated {
            name: name.to_owned(),
            partitions: replicas.len() as u32,
            replicas: replicas
                .into_iter()
                .map(|nodes| pb::ReplicaSet { nodes })
                .collect(),
            request_id,
            after: Some(after),
        })),
    }
}

/// The record that deletes incarnation `incarnation` of `name`.
pub fn topic_deleted(name: &str, incarnation: u64) -> pb::MetadataRecord {
    pb::MetadataRecord {
        kind: Some(pb::metadata_record::Kind::TopicDeleted(pb::TopicDeleted {
            name: name.to_owned(),
            incarnation,
        })),
    }
}

/// The record that starts moving `name`'s partition `partition` to `replicas`.
pub fn partition_reassigned(
    name: &str,
    incarnation: u64,
    partition: u32,
    replicas: Vec<u64>,
) -> pb::MetadataRecord {
    pb::MetadataRecord {
        kind: Some(pb::metadata_record::Kind::PartitionReassigned(
            pb::PartitionReassigned {
                name: name.to_owned(),
                incarnation,
                partition,
                replicas,
            },
        )),
    }
}

/// The record that says the move of `name`'s partition `partition` to `replicas` is done.
pub fn reassign_completed(
    name: &str,
    incarnation: u64,
    partition: u32,
    replicas: Vec<u64>,
) -> pb::MetadataRecord {
    pb::MetadataRecord {
        kind: Some(pb::metadata_record::Kind::ReassignCompleted(
            pb::ReassignCompleted {
                name: name.to_owned(),
                incarnation,
                partition,
                replicas,
            },
        )),
    }
}

/// The record that takes node `node` out of placement.
pub fn node_decommissioned(node: u64) -> pb::MetadataRecord {
    pb::MetadataRecord {
        kind: Some(pb::metadata_record::Kind::NodeDecommissioned(
            pb::NodeDecommissioned { node },
        )),
    }
}

/// A replica set a reassignment may name, from `nodes` (the cluster's): why it may not.
pub fn check_replica_set(replicas: &[u64], nodes: &[u64]) -> Result<(), String> {
    let mut distinct = replicas.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != replicas.len() || !replicas.iter().all(|n| nodes.contains(n)) {
        return Err(format!(
            "replicas {replicas:?} must be distinct nodes of the cluster {nodes:?}"
        ));
    }
    if replicas.len() < 2 {
        return Err(format!(
            "replicas {replicas:?}: a replicated partition keeps at least 2 replicas"
        ));
    }
    Ok(())
}

/// Checks a record a node proposes: it becomes history, so it must make sense. `nodes` are
/// the cluster's node ids; `partitions_max` is `server.partitions_per_topic_max`.
pub fn check(
    record: &pb::MetadataRecord,
    nodes: &[u64],
    partitions_max: u32,
) -> Result<(), String> {
    use pb::metadata_record::Kind;
    let name = match &record.kind {
        Some(Kind::TopicCreated(created)) => &created.name,
        Some(Kind::TopicDeleted(deleted)) => &deleted.name,
        Some(Kind::PartitionReassigned(moved)) => {
            check_replica_set(&moved.replicas, nodes)?;
            &moved.name
        }
        Some(Kind::ReassignCompleted(done)) => &done.name,
        Some(Kind::NodeDecommissioned(node)) => {
            if !nodes.contains(&node.node) {
                return Err(format!(
                    "node {} is not a node of the cluster {nodes:?}",
                    node.node
                ));
            }
            return Ok(());
        }
        None => return Err("a metadata record needs a kind".to_owned()),
    };
    crate::shard::check_topic_name(name, crate::shard::TOPIC_NAME_BYTES_MAX)
        .map_err(|why| format!("topic name {name:?}: {why}"))?;
    if crate::shard::is_internal_topic(name) {
        return Err(format!(
            "topic name {name:?} is reserved for the cluster's own topics"
        ));
    }
    let Some(pb::metadata_record::Kind::TopicCreated(created)) = &record.kind else {
        return Ok(());
    };
    if !(1..=partitions_max).contains(&created.partitions) {
        return Err(format!(
            "{} partitions; a topic has 1 to {partitions_max}",
            created.partitions
        ));
    }
    if created.replicas.len() != created.partitions as usize {
        return Err(format!(
            "{} replica sets for {} partitions",
            created.replicas.len(),
            created.partitions
        ));
    }
    for (p, set) in created.replicas.iter().enumerate() {
        let mut distinct = set.nodes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if set.nodes.is_empty()
            || distinct.len() != set.nodes.len()
            || !set.nodes.iter().all(|n| nodes.contains(n))
        {
            return Err(format!(
                "partition {p}'s replicas {:?} must be distinct nodes of the cluster {nodes:?}",
                set.nodes
            ));
        }
    }
    Ok(())
}

/// A record as the value of a metadata log record.
pub fn encode(record: &pb::MetadataRecord) -> bytes::Bytes {
    record.encode_to_vec().into()
}

/// A metadata log record's value; why it is not one.
pub fn decode(value: &[u8]) -> Result<pb::MetadataRecord, String> {
    pb::MetadataRecord::decode(value).map_err(|e| format!("not a metadata record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_creation_of_a_name_wins_and_incarnations_differ() {
        let mut view = MetadataView::default();
        let a = topic_created("t", vec![vec![1, 2, 3]], 7, 0);
        assert_eq!(view.apply(0, &a), Applied::Created { name: "t".into() });
        // A retry that appended the same creation again changes nothing.
        assert_eq!(
            view.apply(2, &a),
            Applied::CreateIgnored { name: "t".into() }
        );
        let first = view.topic("t").unwrap().clone();
        assert_eq!((first.incarnation, first.request_id), (1, 7));
        assert_eq!(
            view.apply(3, &topic_deleted("t", 1)),
            Applied::Deleted { name: "t".into() }
        );
        assert_eq!(
            view.apply(4, &topic_deleted("t", 1)),
            Applied::DeleteIgnored { name: "t".into() }
        );
        assert!(view.topic("t").is_none());
        view.apply(5, &topic_created("t", vec![vec![2, 3, 1]], 8, 5));
        let second = view.topic("t").unwrap().clone();
        assert_eq!((second.incarnation, second.request_id), (6, 8));
        // A retry of the first deletion does not delete the second incarnation.
        assert_eq!(
            view.apply(7, &topic_deleted("t", 1)),
            Applied::DeleteIgnored { name: "t".into() }
        );
        assert_eq!(view.topic("t"), Some(&second));
        assert_eq!(view.applied(), 8);
    }

    /// A retry of a creation that lands after the topic was deleted does not bring it
    /// back; a creation proposed after the deletion does take effect.
    #[test]
    fn a_late_retry_of_a_creation_does_not_resurrect_a_deleted_topic() {
        let mut view = MetadataView::default();
        // Proposed on an empty view: found free at 0.
        let first = topic_created("t", vec![vec![1, 2, 3]], 7, 0);
        assert_eq!(view.apply(0, &first), Applied::Created { name: "t".into() });
        assert_eq!(
            view.apply(1, &topic_deleted("t", 1)),
            Applied::Deleted { name: "t".into() }
        );
        assert_eq!(
            view.deletion("t"),
            Some(Deletion {
                offset: 1,
                request_id: 7
            })
        );
        // The first proposal's retry after a lost answer: ignored, the name stays free.
        assert_eq!(
            view.apply(2, &first),
            Applied::CreateIgnored { name: "t".into() }
        );
        assert!(view.topic("t").is_none());
        // A new creation whose proposer saw the deletion (its view applied up to 2).
        let second = topic_created("t", vec![vec![2, 3, 1]], 8, 2);
        assert_eq!(
            view.apply(3, &second),
            Applied::Created { name: "t".into() }
        );
        assert_eq!(view.topic("t").unwrap().request_id, 8);
        // A record without the condition (an older build's) is applied as before.
        view.apply(4, &topic_deleted("t", 4));
        let mut unconditional = topic_created("t", vec![vec![1, 2, 3]], 9, 0);
        if let Some(pb::metadata_record::Kind::TopicCreated(c)) = &mut unconditional.kind {
            c.after = None;
        }
        assert_eq!(
            view.apply(5, &unconditional),
            Applied::Created { name: "t".into() }
        );
    }

    /// The view remembers a bounded number of deletions; a creation it can no longer judge
    /// is refused, never applied.
    #[test]
    fn deletions_are_remembered_up_to_the_bound_and_older_creations_are_refused() {
        let mut view = MetadataView::default();
        let mut offset = 0;
        for i in 0..=DELETIONS_REMEMBERED as u64 {
            let name = format!("t{i}");
            view.apply(offset, &topic_created(&name, vec![vec![1]], i + 1, offset));
            view.apply(offset + 1, &topic_deleted(&name, offset + 1));
            offset += 2;
        }
        assert_eq!(view.deleted.len(), DELETIONS_REMEMBERED);
        assert_eq!(view.deletion_order.len(), DELETIONS_REMEMBERED);
        assert_eq!(
            view.deletion("t0"),
            None,
            "the oldest deletion is forgotten"
        );
        assert_eq!(view.forgotten_before, 2);
        // Found free before the forgotten deletion: cannot be judged, refused.
        assert_eq!(
            view.apply(offset, &topic_created("t0", vec![vec![1]], 99, 1)),
            Applied::CreateIgnored { name: "t0".into() }
        );
        // Found free after it: applied.
        assert_eq!(
            view.apply(offset + 1, &topic_created("t0", vec![vec![1]], 99, offset)),
            Applied::Created { name: "t0".into() }
        );
        // A name deleted twice is remembered once, at its last deletion.
        view.apply(offset + 2, &topic_deleted("t0", offset + 2));
        assert_eq!(view.deleted.len(), DELETIONS_REMEMBERED);
        assert_eq!(view.deletion("t0").unwrap().offset, offset + 2);
    }

    #[test]
    fn a_record_round_trips_and_garbage_is_refused() {
        let record = topic_created("orders", vec![vec![1, 2], vec![2, 1]], 42, 0);
        assert_eq!(decode(&encode(&record)).unwrap(), record);
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn load_counts_replicas_and_preferred_leaders() {
        let mut view = MetadataView::default();
        view.apply(0, &topic_created("a", vec![vec![1, 2], vec![2, 3]], 1, 0));
        let load = view.load();
        assert_eq!(load[&1], (1, 1));
        assert_eq!(load[&2], (2, 1));
        assert_eq!(load[&3], (1, 0));
    }

    #[test]
    fn a_proposal_must_make_sense() {
        let nodes = [1, 2, 3];
        check(
            &topic_created("t", vec![vec![1, 2], vec![3, 1]], 1, 0),
            &nodes,
            8,
        )
        .unwrap();
        check(&topic_deleted("t", 1), &nodes, 8).unwrap();
        let refused = [
            pb::MetadataRecord { kind: None },
            topic_created("", vec![vec![1]], 1, 0),
            topic_created("__x", vec![vec![1]], 1, 0),
            topic_created("t", vec![], 1, 0),
            topic_created("t", vec![vec![1]; 9], 1, 0),
            topic_created("t", vec![vec![1, 1]], 1, 0),
            topic_created("t", vec![vec![4]], 1, 0),
            topic_created("t", vec![vec![]], 1, 0),
            topic_deleted("__cluster_metadata", 1),
        ];
        for record in refused {
            assert!(check(&record, &nodes, 8).is_err(), "{record:?}");
        }
    }

    #[test]
    fn a_move_holds_old_and_new_replicas_until_it_completes() {
        let mut view = MetadataView::default();
        view.apply(
            0,
            &topic_created("t", vec![vec![1, 2, 3], vec![2, 3, 1]], 1, 0),
        );
        let moved = partition_reassigned("t", 1, 0, vec![2, 3, 4]);
        assert_eq!(
            view.apply(1, &moved),
            Applied::Reassigned {
                name: "t".into(),
                partition: 0
            }
        );
        let t = view.topic("t").unwrap();
        assert_eq!(t.replicas[0], vec![2, 3, 4]);
        assert_eq!(t.holders(0), vec![2, 3, 4, 1]);
        assert_eq!(t.holders(1), vec![2, 3, 1]);
        assert_eq!(
            view.moves(),
            vec![Move {
                topic: "t".to_owned(),
                incarnation: 1,
                partition: 0,
                replicas: vec![2, 3, 4]
            }]
        );
        // Another move of a moving partition, a move of another incarnation, of a partition
        // the topic lacks, and a completion of another target: all change nothing.
        let before = view.clone();
        for (offset, record) in [
            (2, partition_reassigned("t", 1, 0, vec![1, 2, 3])),
            (3, partition_reassigned("t", 9, 1, vec![1, 2, 4])),
            (4, partition_reassigned("t", 1, 7, vec![1, 2, 4])),
            (5, reassign_completed("t", 1, 0, vec![1, 2, 3])),
        ] {
            assert!(matches!(
                view.apply(offset, &record),
                Applied::ReassignIgnored { .. }
            ));
        }
        assert_eq!(view.topic("t"), before.topic("t"));
        assert_eq!(
            view.apply(6, &reassign_completed("t", 1, 0, vec![2, 3, 4])),
            Applied::ReassignCompleted {
                name: "t".into(),
                partition: 0
            }
        );
        assert_eq!(view.topic("t").unwrap().holders(0), vec![2, 3, 4]);
        assert!(view.moves().is_empty());
        assert!(!view.is_decommissioned(1));
        view.apply(7, &node_decommissioned(1));
        assert!(view.is_decommissioned(1));
    }

    #[test]
    fn a_move_must_name_two_distinct_nodes_of_the_cluster() {
        let nodes = [1, 2, 3, 4];
        check(&partition_reassigned("t", 1, 0, vec![1, 4]), &nodes, 8).unwrap();
        for bad in [vec![1], vec![1, 1], vec![1, 5], vec![]] {
            assert!(check(&partition_reassigned("t", 1, 0, bad.clone()), &nodes, 8).is_err());
        }
        assert!(check(&node_decommissioned(9), &nodes, 8).is_err());
        check(&node_decommissioned(4), &nodes, 8).unwrap();
    }

    #[test]
    #[should_panic(expected = "applied after")]
    fn offsets_must_increase() {
        let mut view = MetadataView::default();
        view.apply(5, &topic_deleted("x", 1));
        view.apply(4, &topic_deleted("x", 1));
    }
}
