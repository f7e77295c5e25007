//! Where a topic's partitions live: which nodes hold each partition's replicas, and which of
//! them should lead.
//!
//! Until the controller (issue 11) decides placement once and records it, every node must
//! reach the same answer for the same topic by itself. It does, because the answer is a pure
//! function of three inputs every node shares: the topic's name, its partition count and
//! replication factor, and the membership's node ids sorted ascending. No clock, no random
//! number, no hash whose seed varies between processes or builds (crc32 of the name), and no
//! state of the answering node enter it.
//!
//! The rule: number the sorted nodes `0..n`. Partition `p` of topic `t` starts at node
//! `(crc32(t) + p) mod n` and takes the next `replication_factor` nodes in order, wrapping.
//! The first replica is the preferred leader; consecutive partitions start on consecutive
//! nodes, so leaders and replicas spread evenly over the nodes, and different topics start at
//! different nodes. (Spreading over a node's shards is the shard set's rule, `assign`.)

/// The replica set of every partition of `topic`, preferred leader first.
///
/// `nodes` are the membership's ids, sorted ascending and distinct; `replication_factor` is
/// in `1..=nodes.len()` (the server checks it before asking).
pub fn place(
    topic: &str,
    partitions: u32,
    replication_factor: u32,
    nodes: &[u64],
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
    let start = u64::from(crc32fast::hash(topic.as_bytes()));
    (0..u64::from(partitions))
        .map(|p| {
            let first = (start + p) % n;
            (0..factor as u64)
                .map(|k| nodes[((first + k) % n) as usize])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_distinct_and_every_node_leads_its_share() {
        let nodes = [1, 2, 3, 5, 8];
        let placed = place("orders", 10, 3, &nodes);
        assert_eq!(placed.len(), 10);
        let mut leads = std::collections::HashMap::new();
        for replicas in &placed {
            assert_eq!(replicas.len(), 3);
            let mut distinct = replicas.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
            assert!(replicas.iter().all(|r| nodes.contains(r)));
            *leads.entry(replicas[0]).or_insert(0) += 1;
        }
        // 10 partitions over 5 nodes: each node is the preferred leader of exactly 2.
        assert_eq!(leads.len(), 5);
        assert!(leads.values().all(|&l| l == 2), "{leads:?}");
    }

    #[test]
    fn the_same_inputs_give_the_same_placement_and_topics_differ() {
        let nodes = [1, 2, 3];
        assert_eq!(place("a", 4, 2, &nodes), place("a", 4, 2, &nodes));
        let firsts: std::collections::HashSet<u64> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| place(t, 1, 1, &nodes)[0][0])
            .collect();
        assert!(firsts.len() > 1, "every topic started on the same node");
    }

    #[test]
    fn a_single_node_holds_everything() {
        assert_eq!(place("t", 3, 1, &[7]), vec![vec![7], vec![7], vec![7]]);
    }

    #[test]
    fn the_rule_is_crc32_of_the_name_plus_the_partition() {
        let start = crc32fast::hash(b"orders") as u64;
        let nodes = [10, 20, 30, 40];
        let placed = place("orders", 4, 2, &nodes);
        for (p, replicas) in placed.iter().enumerate() {
            let first = ((start + p as u64) % 4) as usize;
            assert_eq!(replicas, &vec![nodes[first], nodes[(first + 1) % 4]]);
        }
    }
}
