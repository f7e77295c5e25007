//! Topic creation and deletion, each with its undo: the admin half of [`ShardSet`].
//!
//! Owns: the order of a topic's creation (metadata durable first, then every partition open
//! on its shard, then routable) and deletion (unroutable, metadata removed: the commit point,
//! then logs closed and files removed), and undoing a creation that failed part-way.
//! Must never: run concurrently with another admin operation (the set's admin mutex
//! serializes them), or stop half done because its caller went away (`to_completion`).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::command::{Command, OpenPartition};
use super::error::{Error, Result};
use super::set::{PartitionRoute, ShardSet, TopicRoute};
use super::topics::{self, TopicMeta, validate_topic_name};
use crate::raft::group::RaftContext;

/// Routes for `meta`, and per shard the partitions it must open.
pub(super) fn plan(
    topics_dir: &Path,
    meta: &TopicMeta,
    shard_count: usize,
    raft: Option<&RaftContext>,
    new_group: bool,
) -> (Arc<TopicRoute>, Vec<Vec<OpenPartition>>) {
    let name: Arc<str> = Arc::from(meta.name.as_str());
    let mut opens: Vec<Vec<OpenPartition>> = (0..shard_count).map(|_| Vec::new()).collect();
    let mut partitions = Vec::with_capacity(meta.partitions as usize);
    for (partition, &shard) in meta.shards.iter().enumerate() {
        let partition = partition as u32;
        let shard = shard as usize;
        assert!(
            shard < shard_count,
            "topic {} partition {partition} assigned to shard {shard} of {shard_count}",
            meta.name
        );
        let (tx, rx) = watch::channel(0);
        let replicas = meta
            .replicas
            .get(partition as usize)
            .cloned()
            .unwrap_or_default();
        let local = replicas.is_empty() || raft.is_some_and(|r| replicas.contains(&r.node_id));
        let first_addr = replicas.first().and_then(|&id| raft?.transport.addr_of(id));
        if local {
            opens[shard].push(OpenPartition {
                topic: name.clone(),
                partition,
                dir: topics::partition_dir(topics_dir, &meta.name, partition),
                high_watermark: tx,
                replicas: replicas.clone(),
                new_group,
                joins: false,
                incarnation: meta.incarnation,
            });
        }
        partitions.push(PartitionRoute {
            shard,
            high_watermark: rx,
            replicas,
            local,
            first_addr,
        });
    }
    (
        Arc::new(TopicRoute {
            name,
            partitions,
            incarnation: meta.incarnation,
            outside_cluster: raft.is_none(),
        }),
        opens,
    )
}
/// Runs an admin operation to its end in its own task, so that a caller who goes away (a
/// cancelled RPC drops its handler future at any await) cannot leave it half done.
pub(super) async fn to_completion<T: Send + 'static>(
    op: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    match tokio::spawn(op).await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only the runtime shutting down cancels a spawned task.
        Err(_) => Err(Error::ShuttingDown),
    }
}
/// Runs blocking metadata I/O off the async worker threads.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl ShardSet {
    /// Creates a topic with `partitions` partitions, spread over the shards.
    ///
    /// # Correctness
    /// `topic.toml` is durable before any partition is opened, and the topic is routable only
    /// once all are open; a failure part-way removes what was made.
    ///
    /// Runs to its end even if the caller stops polling it (see `to_completion`).
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.create_topic_on(name, partitions, Vec::new(), true, 0)
            .await
    }

    /// Creates a topic whose partition `p` is held by the nodes `replicas[p]` (this node
    /// among them, or not: a partition held elsewhere is only known); an empty list makes
    /// every partition solo. Every replica must be told the same list: each then starts the
    /// same Raft group. `new_group`: the topic is being created cluster-wide now (its groups
    /// initialize), rather than re-created here to rejoin groups that exist (they catch up
    /// without voting first; see `raft::group::GroupStart`). `incarnation`: as
    /// `TopicMeta::incarnation` (0 = unknown).
    pub(crate) async fn create_topic_on(
        &self,
        name: &str,
        partitions: u32,
        replicas: Vec<Vec<u64>>,
        new_group: bool,
        incarnation: u64,
    ) -> Result<()> {
        assert!(
            replicas.is_empty() || replicas.len() == partitions as usize,
            "{} replica sets for {partitions} partitions",
            replicas.len()
        );
        let (this, name) = (self.clone(), name.to_owned());
        to_completion(async move {
            this.create_topic_now(&name, partitions, replicas, new_group, incarnation)
                .await
        })
        .await
    }

    async fn create_topic_now(
        &self,
        name: &str,
        partitions: u32,
        replicas: Vec<Vec<u64>>,
        new_group: bool,
        incarnation: u64,
    ) -> Result<()> {
        self.check_running()?;
        validate_topic_name(name)?;
        let max = self.inner.options.partitions_max;
        if !(1..=max).contains(&partitions) {
            return Err(Error::InvalidPartitionCount { partitions, max });
        }
        let _admin = self.inner.admin.lock().await;
        self.check_running()?;
        if self.topic_route(name).is_ok() {
            return Err(Error::TopicExists {
                topic: name.to_owned(),
            });
        }
        // Under the admin lock: no other creation can slip in between this count and ours.
        let topics = self
            .inner
            .routes
            .read()
            .expect("routes lock poisoned")
            .len() as u64;
        let max = u64::from(self.inner.options.topics_max);
        // A topic of the cluster's metadata log (an incarnation) was counted against the
        // limit when it was proposed, and an internal topic is not the user's: refusing
        // either here would leave this node unable to follow the log.
        let counted = incarnation == 0 && !topics::is_internal_topic(name);
        if counted && topics >= max {
            return Err(Error::TooManyTopics { topics, max });
        }
        let mut meta = TopicMeta::new(name, partitions, self.shard_count());
        meta.replicas = replicas;
        meta.incarnation = incarnation;
        let topics_dir = self.inner.topics_dir.clone();
        {
            let (meta, topics_dir) = (meta.clone(), topics_dir.clone());
            blocking(move || {
                // Not routable yet exists on disk: the leftover of a failed deletion.
                topics::remove_topic_dir(&topics_dir, &meta.name)?;
                topics::write_meta(&topics_dir, &meta)
            })
            .await?;
        }
        let (route, opens) = plan(
            &topics_dir,
            &meta,
            self.shard_count(),
            self.inner.raft.as_ref(),
            new_group,
        );
        let involved: Vec<usize> = (0..opens.len()).filter(|&s| !opens[s].is_empty()).collect();
        let calls = opens
            .into_iter()
            .enumerate()
            .filter(|(_, open)| !open.is_empty())
            .map(|(shard, partitions)| {
                self.call_admin(shard, move |reply| Command::Open { partitions, reply })
            });
        if let Err(e) = futures::future::try_join_all(calls).await {
            self.undo_partitions(&route, &involved).await;
            let name = name.to_owned();
            if let Err(cleanup) =
                blocking(move || topics::remove_topic_dir(&topics_dir, &name)).await
            {
                tracing::error!(error = %cleanup, "removing a topic whose creation failed");
            }
            return Err(e);
        }
        self.inner
            .routes
            .write()
            .expect("routes lock poisoned")
            .insert(route.name.clone(), route);
        tracing::info!(topic = name, partitions, "topic created");
        Ok(())
    }

    /// Closes `topic`'s `partitions` on `shard` and removes their files.
    async fn remove_partitions(
        &self,
        shard: usize,
        topic: Arc<str>,
        partitions: Vec<u32>,
    ) -> Result<()> {
        self.call_admin(shard, move |reply| Command::Close {
            topic,
            partitions,
            remove: true,
            reply,
        })
        .await
    }

    /// Closes and removes the given shards' partitions of a topic, logging failures.
    async fn undo_partitions(&self, route: &TopicRoute, shards: &[usize]) -> Option<Error> {
        let all: Vec<u32> = (0..route.partitions.len() as u32).collect();
        let mut first_error = None;
        for &shard in shards {
            let closed = self
                .remove_partitions(shard, route.name.clone(), all.clone())
                .await;
            if let Err(e) = closed {
                tracing::error!(topic = %route.name, shard, error = %e, "closing a topic's partitions");
                first_error.get_or_insert(e);
            }
        }
        first_error
    }

    /// Changes which nodes hold each partition of incarnation `incarnation` of `name`
    /// (`holders[p]`, preferred leader first): the controller's reassignments. A partition
    /// this node now holds and did not opens an empty replica that catches up from its
    /// group's leader without voting (`GroupStart::Rejoin`); one it no longer holds is
    /// closed and its files removed. The others are left as they are.
    ///
    /// # Correctness
    /// `topic.toml` is durable with the new holders before any replica opens or closes, so
    /// a restart part-way opens what the new holders say (an interrupted removal leaves
    /// only a `.removing` directory behind, never a replica that serves, and the next start
    /// deletes it).
    ///
    /// Runs to its end even if the caller stops polling it (see `to_completion`).
    pub(crate) async fn set_holders(
        &self,
        name: &str,
        incarnation: u64,
        holders: Vec<Vec<u64>>,
    ) -> Result<()> {
        let (this, name) = (self.clone(), name.to_owned());
        to_completion(async move { this.set_holders_now(&name, incarnation, holders).await }).await
    }

    async fn set_holders_now(
        &self,
        name: &str,
        incarnation: u64,
        holders: Vec<Vec<u64>>,
    ) -> Result<()> {
        self.check_running()?;
        let _admin = self.inner.admin.lock().await;
        self.check_running()?;
        let unknown = || Error::UnknownTopic {
            topic: name.to_owned(),
        };
        let old = self.topic_route(name)?;
        if old.incarnation != incarnation || old.partitions.len() != holders.len() {
            return Err(unknown());
        }
        let topics_dir = self.inner.topics_dir.clone();
        let meta = {
            let (dir, name) = (topics_dir.join(name), name.to_owned());
            blocking(move || topics::read_meta(&dir, &name)).await?
        };
        let mut meta = meta.ok_or_else(unknown)?;
        if meta.replicas == holders {
            return Ok(());
        }
        meta.replicas = holders;
        {
            let (meta, topics_dir) = (meta.clone(), topics_dir.clone());
            blocking(move || topics::write_meta(&topics_dir, &meta)).await?;
        }
        let (planned, mut opens) = plan(
            &topics_dir,
            &meta,
            self.shard_count(),
            self.inner.raft.as_ref(),
            false,
        );
        // Partitions held before and after keep their open replica (and its watch); the
        // others move onto this node.
        for open in &mut opens {
            open.retain(|o| !old.partitions[o.partition as usize].local);
            for o in open.iter_mut() {
                o.joins = true;
            }
        }
        let mut closes: Vec<Vec<u32>> = vec![Vec::new(); self.shard_count()];
        for (p, (before, after)) in old.partitions.iter().zip(&planned.partitions).enumerate() {
            if before.local && !after.local {
                closes[before.shard].push(p as u32);
            }
        }
        let route = Arc::new(TopicRoute {
            name: old.name.clone(),
            incarnation,
            outside_cluster: planned.outside_cluster,
            partitions: old
                .partitions
                .iter()
                .zip(&planned.partitions)
                .map(|(before, after)| PartitionRoute {
                    shard: after.shard,
                    high_watermark: if before.local && after.local {
                        before.high_watermark.clone()
                    } else {
                        after.high_watermark.clone()
                    },
                    replicas: after.replicas.clone(),
                    local: after.local,
                    first_addr: after.first_addr.clone(),
                })
                .collect(),
        });
        // Routed first: a replica being closed refuses with the new holders meanwhile.
        self.inner
            .routes
            .write()
            .expect("routes lock poisoned")
            .insert(route.name.clone(), route);
        let mut first_error = None;
        for (shard, partitions) in opens.into_iter().enumerate() {
            if partitions.is_empty() {
                continue;
            }
            let opened = self
                .call_admin(shard, move |reply| Command::Open { partitions, reply })
                .await;
            if let Err(e) = opened {
                tracing::error!(topic = name, shard, error = %e, "opening a partition's new replica");
                first_error.get_or_insert(e);
            }
        }
        for (shard, partitions) in closes.into_iter().enumerate() {
            if partitions.is_empty() {
                continue;
            }
            let closed = self
                .remove_partitions(shard, old.name.clone(), partitions)
                .await;
            if let Err(e) = closed {
                tracing::error!(topic = name, shard, error = %e, "removing a partition's old replica");
                first_error.get_or_insert(e);
            }
        }
        tracing::info!(topic = name, holders = ?meta.replicas, "partition holders changed");
        first_error.map_or(Ok(()), Err)
    }

    /// Changes the voters of a replicated partition this node leads to `voters` (see
    /// `raft::group::Group::change_voters`): answered once its group has exactly them.
    /// `NotLeader` on a replica that does not lead.
    pub(crate) async fn change_voters(
        &self,
        name: &str,
        partition: u32,
        voters: Vec<u64>,
    ) -> Result<()> {
        let route = self.topic_route(name)?;
        let shard = route.partition(partition)?.shard;
        let topic = route.name.clone();
        self.call_admin(shard, move |reply| Command::ChangeVoters {
            topic,
            partition,
            voters,
            reply,
        })
        .await
    }

    /// Deletes a topic: it stops being routable, its metadata is removed (the commit point),
    /// then its logs are closed and its directory removed.
    ///
    /// Runs to its end even if the caller stops polling it (see `to_completion`).
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let (this, name) = (self.clone(), name.to_owned());
        to_completion(async move { this.delete_topic_now(&name).await }).await
    }

    async fn delete_topic_now(&self, name: &str) -> Result<()> {
        self.check_running()?;
        let _admin = self.inner.admin.lock().await;
        self.check_running()?;
        let route = self
            .inner
            .routes
            .write()
            .expect("routes lock poisoned")
            .remove(name)
            .ok_or_else(|| Error::UnknownTopic {
                topic: name.to_owned(),
            })?;
        let topics_dir = self.inner.topics_dir.clone();
        let removed = {
            let (topics_dir, name) = (topics_dir.clone(), name.to_owned());
            blocking(move || topics::remove_meta(&topics_dir, &name)).await
        };
        if let Err(e) = removed {
            // Still on disk, so still a topic.
            self.inner
                .routes
                .write()
                .expect("routes lock poisoned")
                .insert(route.name.clone(), route);
            return Err(e);
        }
        let mut shards: Vec<usize> = route.partitions.iter().map(|p| p.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        let closed = self.undo_partitions(&route, &shards).await;
        let name_owned = name.to_owned();
        blocking(move || topics::remove_topic_dir(&topics_dir, &name_owned)).await?;
        tracing::info!(topic = name, "topic deleted");
        closed.map_or(Ok(()), Err)
    }
}
