//! The nemeses: faults drawn from the campaign's seed, done to the cluster's processes,
//! disks and network, and healed after a bounded hold.
//!
//! Owns: which faults exist, how they combine, how each is done and undone, and how many
//! of each were done. A round draws one process fault, one network fault, or one of each
//! (a combination may leave no majority for a while: availability then returns after the
//! heal, safety must hold throughout). Disk faults that lose a replica's acknowledged data
//! (a wiped data dir, damaged files) come alone, and the campaign waits for that node to
//! catch up before the next round: two of them at once, or one beside a second failure,
//! is more than a 3-replica Raft group promises to survive.
//!
//! Must never: leave a fault in place after [`heal`] (every node is running, resumed and
//! fully connected when it returns `Ok`), or pick a node at random from anything but the
//! seeded generator (so that a seed replays the same choices).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::network::Network;
use super::nodes::Cluster;
use crate::seeded::Rng;

/// How a stopped node's files are damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// One bit flipped in a sealed segment's store file.
    FlipSealed,
    /// The active segment's store file cut short.
    CutActive,
    /// A segment's index file deleted (an index is a cache: it must be rebuilt).
    DeleteIndex,
}

/// One fault, with its targets resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    Kill(u32),
    KillLeader {
        partition: u32,
        node: u32,
    },
    KillController(u32),
    Pause(u32),
    /// `all`: every node of the cluster at once.
    PowerCut {
        nodes: Vec<u32>,
        all: bool,
    },
    Wipe(u32),
    Corrupt(u32, Damage),
    /// The node's disk made full while it runs: no file may grow by more than
    /// `margin_bytes` in all (0: the next write that grows a file fails `ENOSPC`; else the
    /// server's free-space floor refuses appends first).
    DiskFull {
        node: u32,
        margin_bytes: u64,
    },
    IsolateLeader {
        partition: u32,
        node: u32,
    },
    /// The nodes listed are cut from all the others.
    Split(Vec<u32>),
    /// `bridge` sees everyone; the other nodes are split into two halves.
    Bridge {
        bridge: u32,
        a: Vec<u32>,
        b: Vec<u32>,
    },
    Loss(u32),
    /// Every node-to-node link delayed this many ms each way.
    Delay(u64),
}

impl Fault {
    /// The name faults are counted under.
    pub fn kind(&self) -> String {
        match self {
            Fault::Kill(_) => "kill".into(),
            Fault::KillLeader { .. } => "kill-leader".into(),
            Fault::KillController(_) => "kill-controller".into(),
            Fault::Pause(_) => "pause".into(),
            Fault::PowerCut { nodes, .. } if nodes.len() == 1 => "power-cut-one".into(),
            Fault::PowerCut { all: true, .. } => "power-cut-all".into(),
            Fault::PowerCut { .. } => "power-cut-minority".into(),
            Fault::Wipe(_) => "wipe".into(),
            Fault::Corrupt(_, d) => format!("corrupt-{d:?}"),
            Fault::DiskFull {
                margin_bytes: 0, ..
            } => "disk-full-enospc".into(),
            Fault::DiskFull { .. } => "disk-full".into(),
            Fault::IsolateLeader { .. } => "isolate-leader".into(),
            Fault::Split(_) => "split".into(),
            Fault::Bridge { .. } => "bridge".into(),
            Fault::Loss(_) => "loss".into(),
            Fault::Delay(_) => "delay".into(),
        }
    }

    /// Whether this fault takes a replica's data away (wipe, damage).
    pub fn loses_a_disk(&self) -> bool {
        matches!(self, Fault::Wipe(_) | Fault::Corrupt(..))
    }
}

/// The abstract choice of a round, before its targets are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Kill,
    KillLeader,
    KillController,
    Pause,
    PowerCutOne,
    PowerCutMinority,
    PowerCutAll,
    DiskFull,
    IsolateLeader,
    Split,
    Bridge,
    Loss,
    Delay,
    Wipe,
    Corrupt,
}

const PROCESS: &[Pick] = &[
    Pick::Kill,
    Pick::KillLeader,
    Pick::KillController,
    Pick::Pause,
    Pick::PowerCutOne,
    Pick::PowerCutMinority,
    Pick::PowerCutAll,
    Pick::DiskFull,
];
const NETWORK: &[Pick] = &[
    Pick::IsolateLeader,
    Pick::Split,
    Pick::Bridge,
    Pick::Loss,
    Pick::Delay,
];
const DISK: &[Pick] = &[Pick::Wipe, Pick::Corrupt];

fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[rng.below(from.len() as u64) as usize]
}

/// A random node of `1..=count`.
fn node(rng: &mut Rng, count: u32) -> u32 {
    1 + rng.below(u64::from(count)) as u32
}

/// `1..=count` in a random order.
fn shuffled(rng: &mut Rng, count: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (1..=count).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

/// Who leads what, as the cluster says (looked up before the targets are resolved).
#[derive(Debug, Clone, Default)]
pub struct Leaders {
    pub partitions: Vec<Option<u32>>,
    pub controller: Option<u32>,
}

/// Which faults a campaign draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Every kind, combined; bit flips in sealed segments only with `flip_sealed` (the
    /// campaign's default; see findings 1 and 8 of docs/RELIABILITY.md).
    All { flip_sealed: bool },
    /// Only power cuts of every node at once (the control run).
    PowerCutsOfAll,
}

/// Draws a round's faults from `mix`; no disk fault (wipe, damage) unless `disk_faults`
/// (a node that lost its disk has not caught up yet).
pub fn draw(
    rng: &mut Rng,
    count: u32,
    leaders: &Leaders,
    mix: Mix,
    disk_faults: bool,
) -> Vec<Fault> {
    let partitions = leaders.partitions.len() as u64;
    if mix == Mix::PowerCutsOfAll {
        return vec![Fault::PowerCut {
            nodes: (1..=count).collect(),
            all: true,
        }];
    }
    if rng.below(6) == 0 && disk_faults {
        let id = node(rng, count);
        let damages: &[Damage] = if mix == (Mix::All { flip_sealed: true }) {
            &[Damage::FlipSealed, Damage::CutActive, Damage::DeleteIndex]
        } else {
            &[Damage::CutActive, Damage::DeleteIndex]
        };
        return vec![match pick(rng, DISK) {
            Pick::Wipe => Fault::Wipe(id),
            _ => Fault::Corrupt(id, pick(rng, damages)),
        }];
    }
    let (process, network) = match rng.below(3) {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    let mut faults = Vec::new();
    if process {
        let partition = rng.below(partitions) as u32;
        let random = node(rng, count);
        let mut minority = shuffled(rng, count);
        minority.truncate(1 + rng.below(u64::from((count - 1) / 2)) as usize);
        minority.sort();
        faults.push(match pick(rng, PROCESS) {
            Pick::Kill => Fault::Kill(random),
            Pick::KillLeader => match leaders.partitions[partition as usize] {
                Some(node) => Fault::KillLeader { partition, node },
                None => Fault::Kill(random),
            },
            Pick::KillController => Fault::KillController(leaders.controller.unwrap_or(random)),
            Pick::Pause => Fault::Pause(random),
            Pick::PowerCutOne => Fault::PowerCut {
                nodes: vec![random],
                all: false,
            },
            Pick::PowerCutMinority => Fault::PowerCut {
                nodes: minority,
                all: false,
            },
            Pick::DiskFull => Fault::DiskFull {
                node: random,
                margin_bytes: if rng.below(2) == 0 { 0 } else { 1 << 20 },
            },
            _ => Fault::PowerCut {
                nodes: (1..=count).collect(),
                all: true,
            },
        });
    }
    if network {
        let partition = rng.below(partitions) as u32;
        let order = shuffled(rng, count);
        faults.push(match pick(rng, NETWORK) {
            Pick::IsolateLeader => Fault::IsolateLeader {
                partition,
                node: leaders.partitions[partition as usize].unwrap_or(order[0]),
            },
            Pick::Split => {
                let minority = 1 + rng.below(u64::from((count - 1) / 2)) as usize;
                let mut side = order[..minority].to_vec();
                side.sort();
                Fault::Split(side)
            }
            Pick::Bridge => {
                let half = (count as usize - 1) / 2;
                let mut a = order[1..=half].to_vec();
                let mut b = order[half + 1..].to_vec();
                a.sort();
                b.sort();
                Fault::Bridge {
                    bridge: order[0],
                    a,
                    b,
                }
            }
            Pick::Loss => Fault::Loss(10 + 10 * rng.below(5) as u32),
            // From well under a heartbeat to past the longest election timeout: a round
            // trip of 2 × 400 ms loses every leader's lease.
            _ => Fault::Delay(25 << rng.below(5)),
        });
    }
    faults
}

/// Does `fault`. Process faults leave their node down (or paused) until [`heal`].
pub fn apply(
    fault: &Fault,
    cluster: &mut Cluster,
    net: &mut Network,
    rng: &mut Rng,
    forgotten_bytes: &mut u64,
) -> Result<String, String> {
    let count = cluster.count();
    let others = |id: u32| (1..=count).filter(|p| *p != id).collect::<Vec<_>>();
    Ok(match fault {
        Fault::Kill(id) | Fault::KillLeader { node: id, .. } | Fault::KillController(id) => {
            cluster.kill(*id);
            String::new()
        }
        Fault::Pause(id) => {
            if cluster.is_running(*id) {
                cluster.pause(*id);
            }
            String::new()
        }
        Fault::PowerCut { nodes: ids, .. } => {
            let mut forgot = 0;
            for id in ids {
                forgot += cluster.power_cut(*id)?;
            }
            *forgotten_bytes += forgot;
            format!("{forgot} unsynced bytes forgotten")
        }
        Fault::Wipe(id) => {
            cluster.wipe(*id)?;
            String::new()
        }
        Fault::DiskFull { node, margin_bytes } => cluster.fill_disk(*node, *margin_bytes),
        Fault::Corrupt(id, damage) => {
            cluster.kill(*id);
            damage_files(cluster.data_dir(*id), *damage, rng)?
        }
        Fault::IsolateLeader { node: id, .. } => {
            net.cut_between(&[*id], &others(*id))?;
            String::new()
        }
        Fault::Split(side) => {
            let rest: Vec<u32> = (1..=count).filter(|p| !side.contains(p)).collect();
            net.cut_between(side, &rest)?;
            String::new()
        }
        Fault::Bridge { a, b, .. } => {
            net.cut_between(a, b)?;
            String::new()
        }
        Fault::Loss(percent) => net.lose(count, *percent)?,
        Fault::Delay(ms) => net.delay(*ms),
    })
}

/// Heals everything: the network first, then paused nodes resume and stopped ones start
/// (each waited for until it serves). Returns the engine each restarted node reported.
pub fn heal(cluster: &mut Cluster, net: &mut Network) -> Result<BTreeMap<u32, String>, String> {
    net.heal()?;
    cluster.free_disks();
    let mut started = BTreeMap::new();
    for id in 1..=cluster.count() {
        cluster.resume(id);
        if !cluster.is_running(id) {
            started.insert(id, cluster.start(net, id)?);
        }
    }
    Ok(started)
}

/// Every store file (`*.log`) under `dir`, by directory, in offset order.
fn segments(dir: &Path) -> BTreeMap<PathBuf, Vec<PathBuf>> {
    let mut found: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                found.entry(d.clone()).or_default().push(path);
            }
        }
    }
    for files in found.values_mut() {
        files.sort();
    }
    found
}

/// Damages one partition's files of a stopped node; says what it did.
fn damage_files(dir: &Path, damage: Damage, rng: &mut Rng) -> Result<String, String> {
    let all = segments(dir);
    let dirs: Vec<&Vec<PathBuf>> = all
        .values()
        .filter(|files| damage != Damage::FlipSealed || files.len() > 1)
        .collect();
    if dirs.is_empty() {
        return Ok("no segment to damage".into());
    }
    let files = dirs[rng.below(dirs.len() as u64) as usize];
    let io = |e: std::io::Error| format!("damaging {}: {e}", dir.display());
    match damage {
        Damage::FlipSealed => {
            let file = &files[rng.below(files.len() as u64 - 1) as usize];
            let mut bytes = std::fs::read(file).map_err(io)?;
            if bytes.is_empty() {
                return Ok(format!("{} is empty", file.display()));
            }
            let at = rng.below(bytes.len() as u64) as usize;
            let bit = rng.below(8);
            bytes[at] ^= 1 << bit;
            write_synced(file, &bytes).map_err(io)?;
            Ok(format!(
                "bit {bit} of byte {at} of {} flipped",
                file.display()
            ))
        }
        Damage::CutActive => {
            let file = files.last().unwrap();
            let len = std::fs::metadata(file).map_err(io)?.len();
            let keep = rng.below(len.max(1));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .map_err(io)?;
            f.set_len(keep).map_err(io)?;
            f.sync_all().map_err(io)?;
            Ok(format!("{} cut from {len} to {keep} bytes", file.display()))
        }
        Damage::DeleteIndex => {
            let file = files[rng.below(files.len() as u64) as usize].with_extension("index");
            match std::fs::remove_file(&file) {
                Ok(()) => Ok(format!("{} deleted", file.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Ok(format!("{} was absent", file.display()))
                }
                Err(e) => Err(io(e)),
            }
        }
    }
}

/// Rewrites `file` in place and syncs it (the damage must survive a later power cut).
fn write_synced(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.write_all(bytes)?;
    f.sync_all()
}
