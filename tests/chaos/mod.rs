//! The cluster fault campaign of issue 15 (`tests/chaos_cluster.rs` runs it): real
//! `walrs serve` processes in network namespaces, a workload of idempotent producers and
//! following consumers, nemeses drawn from a printed seed, and a checker.
//!
//! - [`network`]: the network in use, namespaces or (the fallback) loopback and a proxy;
//! - [`netns`]: the namespaces, the bridge, and the nftables faults;
//! - [`proxy`]: the fallback's fault-injecting TCP proxy;
//! - [`nodes`]: the processes, their powerfs disks, and the timings every wait derives from;
//! - [`nemesis`]: the faults, drawn, done and healed;
//! - [`observe`]: bounded questions to the cluster (leaders, catch-up, whole logs);
//! - [`scenarios`]: fixed fault sequences that pin one finding each;
//! - [`workload`]: producers, consumers and the ledger;
//! - [`checker`]: the anomaly counts;
//! - [`campaign`]: one run from start to report.

pub mod campaign;
pub mod checker;
pub mod nemesis;
pub mod netns;
pub mod network;
pub mod nodes;
pub mod observe;
pub mod proxy;
pub mod scenarios;
pub mod workload;
