//! Where a topic's partitions live: which nodes hold each partition's replicas, and which of
//! them should lead.
//!
//! The controller's leader-side proposer decides a placement once, and the metadata log
//! records it (`cluster::metadata`): every node then applies that record, so the rule here
//! needs no agreement between nodes. It is still a pure function of its inputs (no clock, no
//! random number), so that a placement can be reasoned about and tested.
//!
//! The rule: partitions are placed one after another. Each takes as its preferred leader the
//! node that is the preferred leader of the fewest partitions so far (the cluster's existing
//! load included), then as followers the nodes holding the fewest replicas; ties go to the
//! node that comes first counting from position `(crc32(topic) + p) mod n` of the sorted
//! ids, so that different topics start at different nodes. Leaders and replicas so spread
//! evenly over the nodes, also across topics. (Spreading over a node's shards is the shard
//! set's rule, `assign`.)

use std::collections::HashMap;

/// The replica set of every partition of `topic`, preferred leader first.
///
/// `nodes` are the candidate ids, sorted ascending and distinct; `replication_factor` is in
/// `1..=nodes.len()` (the server checks it before asking); `load` is per node (replicas
/// held, partitions preferred-led) before this topic, absent = none.
pub fn place(
    topic: &str,
    partitions: u32,
    replication_factor: u32,
    nodes: &[u64],
    load: &HashMap<u64, (u64, u64)>,
) -> Vec<Vec<u64>> {
    assert!(!nodes.is_empty(), "placement needs at least one node");
    assert!(
        nodes.windows(2).all(|w| w[0] < w[1]),
        "placement needs the node ids sorted and distinct"
    );
    let factor = replication_factor as usize;
    assert!(
        (1..=nodes.len()).contains(&factor),
        "replication factor {factor} for {} node(s)",
        nodes.len()
    );
    let n = nodes.len() as u64;
    let mut counts: Vec<(u64, u64)> = nodes
        .iter()
        .map(|id| load.get(id).copied().unwrap_or_default())
        .collect();
    let start = u64::from(crc32fast::hash(topic.as_bytes()));
    (0..u64::from(partitions))
        .map(|p| {
            let first = (start + p) % n;
            // Position counted from this partition's starting node: the tie-break.
            let turn = |i: usize| (i as u64 + n - first) % n;
            let leader = (0..nodes.len())
                .min_by_key(|&i| (counts[i].1, counts[i].0, turn(i)))
                .expect("at least one node");
            let mut chosen = vec![leader];
            while chosen.len() < factor {
                let next = (0..nodes.len())
                    .filter(|i| !chosen.contains(i))
                    .min_by_key(|&i| (counts[i].0, turn(i)))
                    .expect("the factor is at most the node count");
                chosen.push(next);
            }
            counts[leader].1 += 1;
            for &i in &chosen {
                counts[i].0 += 1;
            }
            chosen.into_iter().map(|i| nodes[i]).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> HashMap<u64, (u64, u64)> {
        HashMap::new()
    }

    fn leads(placed: &[Vec<u64>]) -> HashMap<u64, u64> {
        let mut leads = HashMap::new();
        for replicas in placed {
            *leads.entry(replicas[0]).or_insert(0) += 1;
        }
        leads
    }

    #[test]
    fn replicas_are_distinct_and_every_node_leads_its_share() {
        let nodes = [1, 2, 3, 5, 8];
        let placed = place("orders", 10, 3, &nodes, &none());
        assert_eq!(placed.len(), 10);
        let mut held: HashMap<u64, u64> = HashMap::new();
        for replicas in &placed {
            assert_eq!(replicas.len(), 3);
            let mut distinct = replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
            assert!(replicas.iter().all(|r| nodes.contains(r)));
            for r in replicas {
                *held.entry(*r).or_insert(0) += 1;
            }
        }
        // 10 partitions over 5 nodes: each node is the preferred leader of exactly 2, and
        // holds 6 of the 30 replicas.
        let leads = leads(&placed);
        assert_eq!(leads.len(), 5);
        assert!(leads.values().all(|&l| l == 2), "{leads:?}");
        assert!(held.values().all(|&h| h == 6), "{held:?}");
    }

    #[test]
    fn the_same_inputs_give_the_same_placement_and_topics_differ() {
        let nodes = [1, 2, 3];
        assert_eq!(
            place("a", 4, 2, &nodes, &none()),
            place("a", 4, 2, &nodes, &none())
        );
        let firsts: std::collections::HashSet<u64> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| place(t, 1, 1, &nodes, &none())[0][0])
            .collect();
        assert!(firsts.len() > 1, "every topic started on the same node");
    }

    #[test]
    fn a_single_node_holds_everything() {
        assert_eq!(
            place("t", 3, 1, &[7], &none()),
            vec![vec![7], vec![7], vec![7]]
        );
    }

    #[test]
    fn topics_of_one_partition_spread_their_leaders_over_the_nodes() {
        let nodes = [1, 2, 3];
        let mut load = none();
        let mut placed = Vec::new();
        for t in 0..9 {
            let topic = place("same-name", 1, 3, &nodes, &load);
            for (i, node) in topic[0].iter().enumerate() {
                let entry = load.entry(*node).or_default();
                entry.0 += 1;
                entry.1 += u64::from(i == 0);
            }
            placed.push(topic[0].clone());
            assert_eq!(leads(&placed).values().max().copied(), Some((t / 3) + 1));
        }
        assert!(leads(&placed).values().all(|&l| l == 3), "{placed:?}");
    }

    #[test]
    fn a_new_node_takes_the_new_replicas_first() {
        let nodes = [1, 2, 3, 4];
        let load: HashMap<u64, (u64, u64)> = [(1, (10, 4)), (2, (10, 3)), (3, (10, 3))]
            .into_iter()
            .collect();
        let placed = place("t", 2, 2, &nodes, &load);
        assert!(placed.iter().all(|r| r.contains(&4)), "{placed:?}");
        assert_eq!(placed[0][0], 4, "node 4 leads nothing yet: {placed:?}");
    }
}
