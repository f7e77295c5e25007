//! Fixed fault scenarios that pin one finding of the campaign each, built from the same
//! pieces (network, nodes, workload, nemesis, observe) instead of a random schedule.
//!
//! Owns nothing beyond one run of a scenario. Must never: wait without a bound, or report
//! success without having checked the thing it pins.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use super::campaign::{Options, acked_ends, create_topic, join_all, routing_client};
use super::nemesis::{self, Damage, Fault};
use super::network::Network;
use super::nodes::{Cluster, PORT};
use super::observe::{caught_up, leaders, read_all};
use super::workload::{self, Producer};
use crate::seeded::Rng;

/// Records appended before the damage: enough for a few sealed 256 KiB segments.
const RECORDS_BEFORE_DAMAGE: u64 = 6000;

/// Finding 1 of docs/RELIABILITY.md: appends to one partition until it has sealed
/// segments, stops a follower, flips one bit in one of its sealed segments, restarts it,
/// appends more, and asks whether the follower catches up with everything acknowledged.
/// `Err` says what failed.
pub fn a_follower_with_a_flipped_bit_catches_up(options: &Options) -> Result<(), String> {
    let mut net = Network::create(options.nodes, PORT);
    super::nodes::sweep_stale_mounts();
    let mut rng = Rng(options.seed);
    let engines = vec!["uring"; options.nodes as usize];
    let mut cluster = Cluster::new(&engines, options.timings, &options.extra, &net);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for id in 1..=cluster.count() {
            cluster.start(&net, id)?;
        }
        create_topic(options, &cluster, &routing_client(&cluster)).await;
        let shared = workload::ledger(1);
        let client = routing_client(&cluster);
        let run = |id: u32, stop: &Arc<AtomicBool>, seed: u64| {
            tokio::spawn(
                Producer {
                    id,
                    seed,
                    partitions: 1,
                    client: client.clone(),
                    shared: shared.clone(),
                    stop: stop.clone(),
                    t0: Instant::now(),
                }
                .run(),
            )
        };
        let patience = options.timings.patience();
        let stop = Arc::new(AtomicBool::new(false));
        let producer = run(0, &stop, rng.below(u64::MAX) | 1);
        let until = Instant::now() + patience * 4;
        while acked_ends(&shared, 1)[0] < RECORDS_BEFORE_DAMAGE {
            if Instant::now() > until {
                return Err(format!(
                    "fewer than {RECORDS_BEFORE_DAMAGE} records acknowledged"
                ));
            }
            tokio::time::sleep(options.timings.poll()).await;
        }
        stop.store(true, Relaxed);
        join_all(
            vec![producer],
            workload::drain_time(&options.timings),
            options.seed,
        )
        .await;
        let leader = leaders(&cluster, 1).await.partitions[0].ok_or("no leader")?;
        let follower = (1..=cluster.count()).find(|id| *id != leader).unwrap();
        let fault = Fault::Corrupt(follower, Damage::FlipSealed);
        let said = nemesis::apply(&fault, &mut cluster, &mut net, &mut rng, &mut 0)?;
        println!(
            "seed {}: node {follower} (leader {leader}): {said}",
            options.seed
        );
        nemesis::heal(&mut cluster, &mut net)?;
        let stop = Arc::new(AtomicBool::new(false));
        let producer = run(1, &stop, rng.below(u64::MAX) | 1);
        let more = acked_ends(&shared, 1)[0] + 500;
        while acked_ends(&shared, 1)[0] < more && Instant::now() < until + patience {
            tokio::time::sleep(options.timings.poll()).await;
        }
        stop.store(true, Relaxed);
        join_all(
            vec![producer],
            workload::drain_time(&options.timings),
            options.seed,
        )
        .await;
        let ends = acked_ends(&shared, 1);
        let served_whole = async {
            // Damage below what the group read when it started is found only by a read:
            // the first read of it is refused `Corrupt` (never served), and the replica
            // must then repair itself and serve every record another replica serves.
            let reference = (1..=cluster.count()).find(|id| *id != follower).unwrap();
            let until = Instant::now() + patience;
            // Bounded by `until`.
            loop {
                let last = match (
                    read_all(&cluster, reference, 0).await,
                    read_all(&cluster, follower, 0).await,
                ) {
                    (Ok(want), Ok(got))
                        if want == got
                            && want.keys().next_back().is_some_and(|o| o + 1 >= ends[0]) =>
                    {
                        let log = std::fs::read_to_string(cluster.log(follower)).unwrap_or_default();
                        let at_start = log.matches("a sealed segment holds a batch").count();
                        let on_read = log.matches("a read met a stored batch").count();
                        println!(
                            "seed {}: node {follower} serves the partition whole; repaired at a group start {at_start} time(s), after a read {on_read} time(s)",
                            options.seed
                        );
                        return Ok(());
                    }
                    (Ok(want), Ok(got)) => format!(
                        "node {follower} serves {} records, node {reference} {}",
                        got.len(),
                        want.len()
                    ),
                    (want, got) => format!(
                        "node {reference}: {:?}; node {follower}: {:?}",
                        want.err(),
                        got.err()
                    ),
                };
                if Instant::now() >= until {
                    return Err(format!(
                        "node {follower} never served the partition whole: {last}"
                    ));
                }
                tokio::time::sleep(options.timings.poll()).await;
            }
        };
        if caught_up(&cluster, follower, &ends, Instant::now() + patience).await {
            served_whole.await
        } else {
            let log = std::fs::read_to_string(cluster.log(follower)).unwrap_or_default();
            // The last warnings and errors: what the node made of the damage.
            let mut errors: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .collect();
            errors.drain(..errors.len().saturating_sub(12));
            let kept = options.out.join(format!("flipped-{}.log", options.seed));
            if std::fs::create_dir_all(&options.out).is_ok() && std::fs::write(&kept, &log).is_ok() {
                println!("node {follower}'s log kept in {}", kept.display());
            }
            Err(format!(
                "node {follower} never reached the acknowledged end {ends:?}; its errors: {errors:#?}"
            ))
        }
    })
}
