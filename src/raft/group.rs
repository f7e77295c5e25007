//! One partition's Raft group on its shard: starting it, proposing appends, delivering the
//! messages other nodes send it, and saying who leads.
//!
//! Owns: the openraft `Raft` handle of one replicated partition, and the group's Raft
//! configuration (timings from `[cluster]`).
//! Must never: be awaited by the shard loop. Proposals and deliveries run as tasks on the
//! shard's executor, so a group waiting on its log (which the shard serves) never stalls the
//! shard; every answer goes back on the caller's own channel.
//!
//! A group is initialized by every replica with the same voter set (the partition's
//! replicas, chosen the same way on every node), so each writes the same first entry (a
//! membership at index 0, term 0) and no replica needs to be told by another. A replica
//! whose log already holds entries is not initialized again.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;

use openraft::alias::WatchReceiverOf;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::rt::AsyncRuntime;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{Raft, RaftMetrics, ServerState};
use tokio::sync::oneshot;

use super::network::{GroupNetwork, RaftTransport};
use super::quiet::{Quiescence, QuietSettings, Screen, Sender};
use super::recent::Recent;
use super::state_machine::PartitionStateMachine;
use super::store::{self, Key, LogOp, OpSender, PartitionLog};
use super::types::{Applied, CallbackResponder, NodeId, PartitionTypes, Proposal, Vote};
use super::wire;
use crate::proto::v1 as pb;
use crate::storage::{InvalidLimit, LimitName, check_range};
use pb::raft_envelope::Body;

/// The timings of every partition group of a node: defined and checked here, mapped onto
/// by the config's `[cluster]` keys of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimings {
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min_ms, election_timeout_max_ms)` starts an election.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// How often a leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Entries (batches) in one AppendEntries message.
    pub raft_payload_entries_max: u32,
    /// A leader with no proposal for this long quiesces its group (no heartbeats, no
    /// election timers; see `quiet`); 0 = never.
    pub quiesce_after_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            // openraft lets a follower stand only once its leader's lease (the longest
            // election timeout) and then an election timeout have passed since the last
            // heartbeat: failover takes max + [min, max), 1.5-2 s with these.
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            heartbeat_interval_ms: 150,
            raft_payload_entries_max: 64,
            quiesce_after_ms: 2_000,
        }
    }
}

impl RaftTimings {
    /// Checks each timing and how they relate, naming each `key(field)`.
    pub fn validate_as(&self, key: LimitName<'_>) -> Result<(), InvalidLimit> {
        check_range(
            key("heartbeat_interval_ms"),
            self.heartbeat_interval_ms,
            10,
            10_000,
            " ms",
        )?;
        check_range(
            key("election_timeout_min_ms"),
            self.election_timeout_min_ms,
            50,
            60_000,
            " ms",
        )?;
        check_range(
            key("election_timeout_max_ms"),
            self.election_timeout_max_ms,
            51,
            120_000,
            " ms",
        )?;
        check_range(
            key("raft_payload_entries_max"),
            self.raft_payload_entries_max,
            1,
            1 << 16,
            " entries",
        )?;
        if self.quiesce_after_ms != 0 {
            check_range(
                key("quiesce_after_ms"),
                self.quiesce_after_ms,
                100,
                86_400_000,
                " ms (0 = never)",
            )?;
            // A leader asking its followers to go quiet pauses its heartbeats for up to one
            // interval; a follower that stays awake must not time out meanwhile: it may miss
            // two intervals and a tick (openraft ticks every 13/64 of an interval).
            let gap_ms = self.heartbeat_interval_ms * 2 + self.heartbeat_interval_ms * 13 / 64;
            if gap_ms >= self.election_timeout_min_ms {
                return Err(InvalidLimit::new(
                    key("heartbeat_interval_ms"),
                    self.heartbeat_interval_ms,
                    format!(
                        "with {} > 0, 2.2 heartbeat intervals ({gap_ms} ms) must stay below {} = {} \
                         (lower the heartbeat, or set {} = 0)",
                        key("quiesce_after_ms"),
                        key("election_timeout_min_ms"),
                        self.election_timeout_min_ms,
                        key("quiesce_after_ms"),
                    ),
                ));
            }
        }
        // A leader must be heard from more than once per election timeout, or followers
        // start elections against a healthy leader.
        if self.heartbeat_interval_ms >= self.election_timeout_min_ms {
            return Err(InvalidLimit::new(
                key("heartbeat_interval_ms"),
                self.heartbeat_interval_ms,
                format!(
                    "must be below {} = {}",
                    key("election_timeout_min_ms"),
                    self.election_timeout_min_ms
                ),
            ));
        }
        // The random range must not be empty, or nodes time out together and split votes.
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(InvalidLimit::new(
                key("election_timeout_max_ms"),
                self.election_timeout_max_ms,
                format!(
                    "must be above {} = {}",
                    key("election_timeout_min_ms"),
                    self.election_timeout_min_ms
                ),
            ));
        }
        Ok(())
    }

    /// When groups go quiet, and how quiet ones check on each other.
    pub(crate) fn quiet_settings(&self) -> QuietSettings {
        let ms = std::time::Duration::from_millis;
        QuietSettings {
            after: (self.quiesce_after_ms > 0).then(|| ms(self.quiesce_after_ms)),
            retry_every: ms(self.election_timeout_min_ms),
            check_every: ms(self.election_timeout_max_ms * 10),
            round_within: ms(self.heartbeat_interval_ms),
            answer_within: ms(self.election_timeout_max_ms),
            wake_grace: ms(self.election_timeout_max_ms),
        }
    }

    /// The openraft configuration of one partition group.
    pub(crate) fn openraft_config(&self) -> Result<openraft::Config, String> {
        let config = openraft::Config {
            cluster_name: "walrs-partition".to_owned(),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            heartbeat_interval: self.heartbeat_interval_ms,
            max_payload_entries: u64::from(self.raft_payload_entries_max),
            // The log is the state: nothing to snapshot until metadata snapshots land.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // A replica whose disk was wiped comes back with an empty log; its leader must
            // start it over rather than stop (openraft panics on a reverted follower
            // otherwise). Safe here because such a replica does not vote until it has caught
            // up (`GroupStart::Rejoin`).
            allow_log_reversion: Some(true),
            // A replica that comes back from a cut (or wakes from quiet) asks before it
            // campaigns, so it cannot depose a leader the others still hear from.
            enable_pre_vote: Some(true),
            // A learner counts as caught up (a blocking add_learner returns, and a move goes
            // on to change the voters) only once it is within one AppendEntries of the
            // leader's log; openraft's default, 5,000 entries, let a move of a short log of
            // large batches take an empty replica in as a voter at once.
            replication_lag_threshold: u64::from(self.raft_payload_entries_max),
            ..openraft::Config::default()
        };
        config.validate().map_err(|e| e.to_string())
    }
}

/// What a node needs to host partition groups.
#[derive(Clone)]
pub(crate) struct RaftContext {
    pub node_id: NodeId,
    /// Bytes of each replicated partition's newest batches kept in memory
    /// (`cluster.replication_cache_bytes_max`).
    pub tail_cache_bytes_max: usize,
    /// Bytes of entries one AppendEntries carries at most (`cluster.replication_batch_bytes_max`;
    /// one larger entry goes alone).
    pub append_bytes_max: usize,
    /// AppendEntries a leader has awaiting answers from one follower at once
    /// (`cluster.replication_inflight_max`).
    pub append_inflight_max: usize,
    /// The links to the other nodes; also where each serves gRPC, for the leader hints
    /// refusals carry.
    pub transport: Arc<dyn RaftTransport>,
    pub config: Arc<openraft::Config>,
    pub quiet: QuietSettings,
}

/// Why a proposal was not committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProposeError {
    /// This replica does not lead the group; `leader` is the one it knows of.
    NotLeader { leader: Option<NodeId> },
    /// The group stopped (a storage failure or shutdown) before it answered.
    Stopped { reason: String },
}

pub(crate) type ProposeReply = Box<dyn FnOnce(Result<Applied, ProposeError>)>;

/// How a replica's group starts, from its log and how the partition came to be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupStart {
    /// Created just now, empty: every replica initializes the same voters, and the preferred
    /// leader stands at once.
    New,
    /// The log holds entries: the group resumes from them.
    Existing,
    /// This replica lost data it had acknowledged (a wiped disk or directory, a damaged
    /// segment cut away), and its log carries the rejoin marker. It must not vote, nor
    /// stand, until it holds what the leader had committed: a voter without the committed
    /// entries could elect a leader that lacks them. It waits for a leader to send it the log
    /// (membership first), as a learner would; once caught up it asks the shard to remove the
    /// marker ([`LogOp::CaughtUp`](super::store::LogOp::CaughtUp)). The marker is durable,
    /// so a restart before that starts the group as `Rejoin` again. A replica whose vote is
    /// gone too first recovers one from the others (see [`recover_vote`]).
    Rejoin,
    /// An empty replica that a reassignment moved onto this node: like `Rejoin` it catches
    /// up before it votes or stands, but it never voted in this group here, so there is no
    /// vote to recover and it does not wait for the other replicas' answers.
    Join,
}

/// A leader's view of its followers (see [`Group::followers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Followers {
    /// The leader's last entry, `None` when its log is empty.
    pub last_index: Option<u64>,
    /// The last entry purged from the leader's log (its log starts after it), if any.
    pub purged_index: Option<u64>,
    /// Each follower in the group's membership and the last entry it is known to hold
    /// (`None`: none yet, or not heard from since this replica leads).
    pub matched: Vec<(NodeId, Option<u64>)>,
}

pub(crate) type PartitionRaft<RT> = Raft<PartitionTypes<RT>, PartitionStateMachine<RT>>;

/// The next [`Group::generation`].
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) struct Group<RT: AsyncRuntime> {
    key: Key,
    raft: PartitionRaft<RT>,
    /// The group's metrics, kept so an append asks who leads without a new subscription.
    metrics: WatchReceiverOf<PartitionTypes<RT>, RaftMetrics<PartitionTypes<RT>>>,
    /// A rejoining replica that does not yet hold what the leader committed: it refuses
    /// votes and does not stand (see [`GroupStart::Rejoin`] and [`catch_up`]).
    catching_up: Rc<CatchUp>,
    /// The shard's op queue, for the word that a rejoining replica caught up.
    ops: OpSender<RT>,
    /// Unique to this start of the group in this process (see [`LogOp::CaughtUp`]).
    generation: u64,
    /// A purge is under way (see [`Group::purge`]), and the highest entry asked for.
    purging: Rc<Cell<bool>>,
    purge_wanted: Rc<Cell<u64>>,
    /// Where the next snapshot should end, shared with the state machine's builder.
    snapshot_target: Rc<Cell<Option<u64>>>,
    /// How long a purge waits for its snapshot: the longest election timeout.
    purge_wait: std::time::Duration,
    /// Whether the group is quiet (idle: no heartbeats, no timers), and its rules.
    quiet: Rc<Quiescence>,
    /// The group's identity on the wire, for quiet's own messages.
    sender: Sender,
}

impl<RT: AsyncRuntime> Group<RT> {
    /// Starts the group of partition `key` with `replicas` as its voters, on the current
    /// executor, as `start` says; its state machine resumes from `applied` (the applied mark
    /// the shard saved) when there is one. `ops` is the shard's op queue (its log); while
    /// `wanted` lives, the partition still wants this start, and a start that waits (see
    /// [`recover_vote`]) gives up once it is gone.
    pub(crate) async fn start(
        key: Key,
        incarnation: u64,
        replicas: &[NodeId],
        start: GroupStart,
        applied: Option<&crate::storage::AppliedMark>,
        context: &RaftContext,
        (ops, wanted): (OpSender<RT>, &std::rc::Weak<()>),
    ) -> Result<Self, String> {
        let network = GroupNetwork::new(
            key.clone(),
            incarnation,
            context.node_id,
            context.transport.clone(),
            context.append_inflight_max,
        );
        let snapshot_target = Rc::new(Cell::new(None));
        let recent = Recent::shared(context.tail_cache_bytes_max);
        let mut log = PartitionLog::new(
            key.clone(),
            ops.clone(),
            context.append_bytes_max,
            recent.clone(),
        );
        let catches_up = matches!(start, GroupStart::Rejoin | GroupStart::Join);
        if start == GroupStart::Rejoin {
            recover_vote::<RT>(&key, replicas, context, &network, &mut log, wanted).await?;
        }
        let raft = Raft::new(
            context.node_id,
            context.config.clone(),
            network,
            log,
            PartitionStateMachine::new(
                key.clone(),
                ops.clone(),
                applied.and_then(store::resume_from),
                snapshot_target.clone(),
                recent,
            ),
        )
        .await
        .map_err(|e| format!("the Raft group did not start: {e}"))?;
        let catching_up = Rc::new(CatchUp {
            active: Cell::new(catches_up),
            target: Cell::new(None),
        });
        if catches_up {
            raft.runtime_config().elect(false);
        }
        if start == GroupStart::New {
            let voters: BTreeSet<NodeId> = replicas.iter().copied().collect();
            if replicas.first() == Some(&context.node_id) {
                // The placement's preferred leader initializes the group and stands at once,
                // so leaders spread as placed and a new group neither waits out an election
                // timeout nor splits its first vote. The others wait uninitialized (no
                // membership, so they cannot stand) and learn the membership from it.
                raft.initialize(voters)
                    .await
                    .map_err(|e| format!("the Raft group did not initialize: {e}"))?;
                raft.trigger()
                    .elect(false)
                    .await
                    .map_err(|e| format!("the Raft group did not start an election: {e}"))?;
            } else {
                // Should the preferred leader not be there (down at the creation), the others
                // initialize the same voters themselves after a few election timeouts; every
                // replica writes the same first entry, so whichever initializes agrees.
                let wait =
                    std::time::Duration::from_millis(context.config.election_timeout_max * 3);
                let (raft, key) = (raft.clone(), key.clone());
                drop(RT::spawn(async move {
                    RT::sleep(wait).await;
                    let uninitialized = raft
                        .metrics()
                        .borrow_watched()
                        .membership_config
                        .membership()
                        .voter_ids()
                        .next()
                        .is_none();
                    if uninitialized && let Err(e) = raft.initialize(voters).await {
                        tracing::debug!(topic = %key.0, partition = key.1, error = %e, "a late initialize of a new group");
                    }
                }));
            }
        }
        let metrics = raft.metrics();
        let sender = Sender {
            key: key.clone(),
            incarnation,
            node_id: context.node_id,
            transport: context.transport.clone(),
        };
        Ok(Group {
            quiet: Quiescence::new(context.quiet),
            sender,
            key,
            raft,
            metrics,
            catching_up,
            ops,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            purging: Rc::new(Cell::new(false)),
            purge_wanted: Rc::new(Cell::new(0)),
            snapshot_target,
            purge_wait: std::time::Duration::from_millis(context.config.election_timeout_max),
        })
    }

    /// Which start of its partition's group this is: unique in this process.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The leader this replica knows of, and whether it is this replica. (A leader cut off
    /// from the majority steps down by itself once its lease runs out, openraft's
    /// CheckQuorum: it then names no leader, and clients go and find the new one.)
    pub(crate) fn leader(&self) -> (Option<NodeId>, bool) {
        let m = self.metrics.borrow_watched();
        (m.current_leader, m.state == ServerState::Leader)
    }

    /// On a leader: how far its log reaches and how far each follower (voter or learner) is
    /// known to hold it; `None` on any other replica.
    pub(crate) fn followers(&self) -> Option<Followers> {
        let m = self.metrics.borrow_watched();
        let replication = m.replication.as_ref()?;
        Some(Followers {
            last_index: m.last_log_index,
            purged_index: m.purged.as_ref().map(|id| id.index),
            matched: replication
                .iter()
                .filter(|(node, _)| **node != self.sender.node_id)
                .map(|(node, matched)| (*node, matched.as_ref().map(|id| id.index)))
                .collect(),
        })
    }

    /// The leader this replica knows of, and the term it is in.
    pub(crate) fn leader_and_term(&self) -> (Option<NodeId>, u64) {
        let m = self.metrics.borrow_watched();
        (m.current_leader, m.current_term)
    }

    /// Proposes `proposal` (a client's records, or a command); `reply` gets its place once a
    /// majority holds it and it is applied.
    pub(crate) fn propose(&self, proposal: Proposal, reply: ProposeReply) {
        self.quiet.active(&self.raft);
        let raft = self.raft.clone();
        // Answered exactly once: by the responder, or, should the core stop and drop the
        // responder unanswered (a storage failure), when it is dropped.
        let mut reply = AnswerOnce(Some(reply));
        let responder = CallbackResponder::new(
            move |result: Result<
                ClientWriteResponse<PartitionTypes<RT>>,
                ClientWriteError<PartitionTypes<RT>>,
            >| {
                reply.answer(match result {
                    Ok(response) => Ok(response.data),
                    Err(ClientWriteError::ForwardToLeader(f)) => Err(ProposeError::NotLeader {
                        leader: f.leader_id,
                    }),
                    Err(e) => Err(ProposeError::Stopped {
                        reason: e.to_string(),
                    }),
                })
            },
        );
        let key = self.key.clone();
        drop(RT::spawn(async move {
            if let Err(e) = raft.client_write_ff(proposal, Some(responder)).await {
                // The responder went down with the core and answered as it was dropped.
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "proposal after the group stopped");
            }
        }));
    }

    /// Changes the group's voters to `voters` (a reassignment, driven by the controller):
    /// adds each new one as a learner and waits until it has caught up, then changes the
    /// voters by joint consensus, removing the old ones from the group. Only the leader can;
    /// a change already made answers at once. A leader that is not among the new voters
    /// hands its leadership to one that stays and answers `NotLeader` (the new leader makes
    /// the change); when none stays, it makes the change and then hands over to the first
    /// new voter. Either way the partition does not wait out an election timeout when this
    /// replica is closed. `reply` gets the outcome.
    pub(crate) fn change_voters(
        &self,
        voters: Vec<NodeId>,
        reply: Box<dyn FnOnce(Result<(), ProposeError>)>,
    ) {
        self.quiet.active(&self.raft);
        let raft = self.raft.clone();
        let me = self.sender.node_id;
        let key = self.key.clone();
        drop(RT::spawn(async move {
            reply(change_voters_to(&raft, me, &key, voters).await);
        }));
    }

    /// Purges the log up to entry `upto` (retention, or a truncate command): openraft builds
    /// a snapshot (metadata only) that ends there, then drops the entries once no follower's
    /// replication still reads them; a follower behind the new start gets the snapshot
    /// instead. One purge runs at a time and takes the highest entry asked for meanwhile; a
    /// purge that fails is logged, and retention asks again at the next maintenance.
    ///
    /// A purge is local to each replica (snapshot and purge send nothing), so it leaves a
    /// quiet group quiet.
    pub(crate) fn purge(&self, upto: u64) {
        self.purge_wanted.set(self.purge_wanted.get().max(upto));
        if self.purging.replace(true) {
            return;
        }
        let (raft, key) = (self.raft.clone(), self.key.clone());
        let (purging, wanted, target) = (
            self.purging.clone(),
            self.purge_wanted.clone(),
            self.snapshot_target.clone(),
        );
        let timeout = self.purge_wait;
        drop(RT::spawn(async move {
            let mut done = None;
            // No await between the check and clearing `purging`: a purge asked for after the
            // last check finds `purging` false and starts its own task.
            while done.is_none_or(|d| wanted.get() > d) {
                let upto = wanted.get();
                target.set(Some(upto));
                if let Err(reason) = purge_to(&raft, upto, timeout).await {
                    tracing::warn!(topic = %key.0, partition = key.1, upto, %reason, "a purge did not complete; retention retries it at the next maintenance");
                    break;
                }
                done = Some(upto);
            }
            purging.set(false);
        }));
    }

    /// Serves a message from another replica; `reply` gets the answer envelope.
    pub(crate) fn deliver(
        &self,
        mut envelope: pb::RaftEnvelope,
        reply: oneshot::Sender<pb::RaftEnvelope>,
    ) {
        let request = envelope.body.take();
        if let Some(Body::Quiet(request)) = request {
            let body = self
                .quiet
                .serve(&self.raft, self.catching_up.active.get(), request)
                .unwrap_or_else(Body::Error);
            if reply.send(wire::answer(envelope, body)).is_err() {
                tracing::trace!("the transport left before the answer");
            }
            return;
        }
        // A rejoining replica's question for this one's vote (see `recover_vote`) is answered
        // by Raft itself: quiet would answer from the vote it held while quiet.
        let screened = if super::network::is_vote_probe(request.as_ref()) {
            Screen::Serve { wake_after: false }
        } else {
            self.quiet
                .screen(&self.raft, &self.sender, request.as_ref())
        };
        let wake_after = match screened {
            Screen::Serve { wake_after } => wake_after,
            Screen::Refuse {
                answer,
                wake_leader,
            } => {
                if let Some(leader) = wake_leader {
                    self.quiet.wake_leader(&self.raft, &self.sender, leader);
                }
                if reply.send(wire::answer(envelope, answer)).is_err() {
                    tracing::trace!("the transport left before the answer");
                }
                return;
            }
        };
        let raft = self.raft.clone();
        let catching_up = self.catching_up.clone();
        let key = self.key.clone();
        let quiet = self.quiet.clone();
        let caught_up = (self.ops.clone(), self.generation);
        drop(RT::spawn(async move {
            let body = if catching_up.active.get() {
                catch_up(&key, &raft, &catching_up, &caught_up, request).await
            } else {
                handle(&raft, request).await
            };
            if wake_after {
                quiet.served(&raft);
            }
            let body = body.unwrap_or_else(Body::Error);
            if reply.send(wire::answer(envelope, body)).is_err() {
                tracing::trace!("the transport left before the answer");
            }
        }));
    }

    /// The group's periodic look at quiet (see `quiet`), every heartbeat interval:
    /// `changed` says which nodes' links changed since the last look.
    pub(crate) fn quiet_tick(&self, now: std::time::Instant, changed: &dyn Fn(NodeId) -> bool) {
        self.quiet.tick(&self.raft, &self.sender, now, changed);
    }

    /// The group is quiet: no heartbeats, no election timers.
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet.is_quiet()
    }

    /// Stops the group's tasks (its log and state stay where they are). A leader tells its
    /// followers first, so a quiet group does not wait for its next CHECK to elect.
    pub(crate) async fn shutdown(&self) {
        self.quiet.farewell(&self.raft, &self.sender);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(topic = %self.key.0, partition = self.key.1, error = %e, "stopping a Raft group");
        }
    }
}

/// A proposal's reply, answered once: dropped unanswered, it says the group stopped.
struct AnswerOnce(Option<ProposeReply>);

impl AnswerOnce {
    fn answer(&mut self, result: Result<Applied, ProposeError>) {
        if let Some(reply) = self.0.take() {
            reply(result);
        }
    }
}

impl Drop for AnswerOnce {
    fn drop(&mut self) {
        self.answer(Err(ProposeError::Stopped {
            reason: "the partition's Raft group stopped before the append was committed \
                     (a storage failure on this replica; see its log)"
                .to_owned(),
        }));
    }
}

/// Before a rejoining replica's group starts: if its vote is gone too (a wiped directory),
/// it takes the highest vote among the other replicas' as its own, durably.
///
/// # Correctness
/// A replica that lost its vote may have voted, before the loss, for a candidate X in a term
/// t it no longer knows. With an empty vote it would take the entries of a leader of a term
/// below t (deposed, cut off, not yet aware), and its answers would make a majority for
/// entries that conflict with what X's majority committed. Every replica that voted in term
/// t holds a term of at least t, and X's majority holds at least one replica besides this
/// one; so once every other replica has answered, the highest vote they hold is at least t,
/// and no leader of a lower term is taken. Every other, not a majority's worth: `replicas`
/// is the set the metadata names, which during a move is the old and the new replicas
/// together, and which of them voted with this one is not known before the group starts
/// (in a group of three, both others is also what a majority needs). The vote is kept as
/// not granted (no leader's), and a rejoining replica grants none until caught up. It
/// waits for the answers, asking again every election timeout, until the partition no
/// longer wants this start (`wanted`): with a replica unreachable, the group could not
/// safely take writes with this one anyway. A replica that is itself catching up does not
/// answer, so two wiped replicas cannot vouch for each other; nor does a quiet group answer
/// from what it held while quiet ([`is_vote_probe`]: the probe bypasses quiet).
async fn recover_vote<RT: AsyncRuntime>(
    key: &Key,
    replicas: &[NodeId],
    context: &RaftContext,
    network: &GroupNetwork,
    log: &mut PartitionLog<RT>,
    wanted: &std::rc::Weak<()>,
) -> Result<(), String> {
    let read = |e: std::io::Error| format!("reading the replica's vote: {e}");
    if log.read_vote().await.map_err(read)?.is_some() {
        return Ok(());
    }
    let others: Vec<NodeId> = replicas
        .iter()
        .copied()
        .filter(|&node| node != context.node_id)
        .collect();
    let needed = others.len();
    let ms = std::time::Duration::from_millis;
    let ask_within = ms(context.config.election_timeout_max);
    let mut heard: BTreeMap<NodeId, Vote> = BTreeMap::new();
    let mut rounds = 0u64;
    while heard.len() < needed {
        if rounds > 0 {
            RT::sleep(ms(context.config.election_timeout_min)).await;
            if wanted.upgrade().is_none() {
                return Err("the partition closed (or its group started again) while this replica waited for the others' votes".to_owned());
            }
        }
        let asks = others
            .iter()
            .filter(|node| !heard.contains_key(node))
            .map(|&node| async move { (node, network.ask_for_vote::<RT>(node, ask_within).await) });
        for (node, vote) in futures::future::join_all(asks).await {
            if let Some(vote) = vote {
                heard.insert(node, vote);
            }
        }
        rounds += 1;
        // Once after a few rounds, then rarely: a node back from a wiped disk may have
        // thousands of partitions waiting on the same missing peer.
        if heard.len() < needed && rounds % 300 == 10 {
            tracing::warn!(topic = %key.0, partition = key.1, heard = ?heard.keys().collect::<Vec<_>>(), needed, "a replica that lost its data and its vote waits for the votes of enough other replicas before its group starts (a leader it had outvoted must not find it willing)");
        }
    }
    let Some(highest) = heard.values().max_by_key(|vote| vote.leader_id.term) else {
        return Ok(());
    };
    if highest.leader_id.term == 0 {
        return Ok(());
    }
    let vote = Vote::new(highest.leader_id.term, highest.leader_id.voted_for);
    log.save_vote(&vote)
        .await
        .map_err(|e| format!("saving the vote recovered from the other replicas: {e}"))?;
    tracing::info!(topic = %key.0, partition = key.1, %vote, heard = heard.len(), "a replica that lost its vote took the highest of the others'");
    Ok(())
}

/// Where a rejoining replica stands (see [`catch_up`]).
struct CatchUp {
    /// Still catching up: no vote, no candidacy. Cleared once; never set again.
    active: Cell<bool>,
    /// The first commit index a current leader sent it: caught up once applied.
    target: Cell<Option<u64>>,
}

/// Serves a message on a replica that is catching up after losing its data: no vote is
/// granted; an AppendEntries is served. The first commit index such an append carries is the
/// target: once this replica has applied it, it holds everything committed before it lost
/// its data, votes again, and has the shard remove its rejoin marker (through `ops`, naming
/// this group's `generation`). A fixed target, not each append's own commit index: under
/// steady writes the leader's commit runs ahead of what a follower has applied on every
/// append, and the replica would never count as caught up.
///
/// # Correctness
/// Only an append this replica accepted counts (its sender is a current leader), and only a
/// commit index of that leader's own term: a new leader's commit index may lag what earlier
/// leaders committed until it has committed an entry of its own term (it is not persisted),
/// and a replica that caught up to a lagging one could vote for a candidate that lacks an
/// acknowledged entry. An entry of the leader's term committed at `i` means every entry
/// committed before sits below `i` in its log.
async fn catch_up<RT: AsyncRuntime>(
    key: &Key,
    raft: &PartitionRaft<RT>,
    catching_up: &CatchUp,
    (ops, generation): &(OpSender<RT>, u64),
    request: Option<Body>,
) -> Result<Body, String> {
    let leader_commit = match &request {
        Some(Body::Vote(_) | Body::PreVote(_)) => {
            return Err(
                "this replica lost its data and is catching up; it votes once it holds what the leader committed"
                    .to_owned(),
            );
        }
        Some(Body::Append(append)) => {
            let term = append.vote.as_ref().map(|vote| vote.term);
            append
                .leader_commit
                .as_ref()
                .filter(|id| Some(id.term) == term)
                .map(|id| id.index)
        }
        _ => None,
    };
    let answer = handle(raft, request).await;
    // Only an append this replica took: the leader is current, not one it has outlived.
    let accepted = matches!(
        &answer,
        Ok(Body::AppendResponse(pb::RaftAppendResponse {
            result: Some(pb::raft_append_response::Result::Success(true)),
        }))
    );
    if !accepted {
        return answer;
    }
    if catching_up.target.get().is_none() {
        catching_up.target.set(leader_commit);
    }
    let applied = raft
        .metrics()
        .borrow_watched()
        .last_applied
        .as_ref()
        .map(|id| id.index());
    if let (Some(target), Some(applied)) = (catching_up.target.get(), applied)
        && applied >= target
        && catching_up.active.replace(false)
    {
        raft.runtime_config().elect(true);
        tracing::info!(topic = %key.0, partition = key.1, applied, "a rejoining replica caught up; it votes again");
        let caught_up = LogOp::CaughtUp {
            key: key.clone(),
            generation: *generation,
        };
        if ops.send(caught_up).is_err() {
            tracing::debug!(topic = %key.0, partition = key.1, "the shard stopped before the rejoin marker went; the replica rejoins again after a restart");
        }
    }
    answer
}

/// See [`Group::change_voters`].
async fn change_voters_to<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    me: NodeId,
    key: &Key,
    voters: Vec<NodeId>,
) -> Result<(), ProposeError> {
    let wanted: BTreeSet<NodeId> = voters.iter().copied().collect();
    let write_error =
        |e: RaftError<PartitionTypes<RT>, ClientWriteError<PartitionTypes<RT>>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                leader: f.leader_id,
            },
            other => ProposeError::Stopped {
                reason: format!("the membership change failed: {other}"),
            },
        };
    let (current, joint) = {
        let m = raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return Err(ProposeError::NotLeader {
                leader: m.current_leader,
            });
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        (voters, membership.get_joint_config().len() > 1)
    };
    // One uniform config equal to the target: done already (a retry after a lost answer, or
    // a new leader finishing what the last one did).
    if current == wanted && !joint {
        return hand_over(raft, me, key, &voters).await;
    }
    // A leader that is to leave hands its leadership to a voter that stays, first: the new
    // leader then makes the change, and appends pause for one hand-over rather than for an
    // election after this replica is closed.
    if !wanted.contains(&me)
        && let Some(&to) = voters.iter().find(|v| current.contains(v))
    {
        tracing::info!(topic = %key.0, partition = key.1, to, "this replica leaves the voters; handing the leadership over before the change");
        transfer_leader(raft, to).await?;
        return Err(ProposeError::NotLeader { leader: Some(to) });
    }
    // A learner added by an earlier attempt is added again: blocking waits until it has
    // caught up.
    for &node in wanted.difference(&current) {
        tracing::info!(topic = %key.0, partition = key.1, node, "adding a learner; it catches up before it is promoted");
        raft.add_learner(node, openraft::EmptyNode {}, true)
            .await
            .map_err(write_error)?;
    }
    tracing::info!(topic = %key.0, partition = key.1, from = ?current, to = ?wanted, "changing the voters");
    raft.change_membership(wanted, false)
        .await
        .map_err(write_error)?;
    hand_over(raft, me, key, &voters).await
}

/// After a change that left this replica out of the voters: hands the leadership to the
/// first new voter (the preferred leader), if this replica still leads.
async fn hand_over<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    me: NodeId,
    key: &Key,
    voters: &[NodeId],
) -> Result<(), ProposeError> {
    let leads = raft.metrics().borrow_watched().state == ServerState::Leader;
    if leads
        && !voters.contains(&me)
        && let Some(&to) = voters.first()
    {
        tracing::info!(topic = %key.0, partition = key.1, to, "this replica left the voters; handing over the leadership");
        transfer_leader(raft, to).await?;
    }
    Ok(())
}

/// Asks this leader to hand its leadership to `to`.
async fn transfer_leader<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    to: NodeId,
) -> Result<(), ProposeError> {
    raft.trigger()
        .transfer_leader(to)
        .await
        .map_err(|e| ProposeError::Stopped {
            reason: format!("the leadership hand-over failed: {e}"),
        })
}

/// Has openraft snapshot up to `upto` (unless a snapshot covers it already) and purge.
async fn purge_to<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    upto: u64,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let covered = |m: &RaftMetrics<PartitionTypes<RT>>| {
        m.snapshot.as_ref().is_some_and(|s| s.index() >= upto)
    };
    if !covered(&raft.metrics().borrow_watched()) {
        raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        raft.wait(Some(timeout))
            .metrics(covered, "a snapshot covering the purge")
            .await
            .map_err(|e| e.to_string())?;
    }
    raft.trigger()
        .purge_log(upto)
        .await
        .map_err(|e| e.to_string())
}

fn raft_error<RT: AsyncRuntime>(e: RaftError<PartitionTypes<RT>>) -> String {
    format!("the Raft group could not serve it: {e}")
}

async fn handle<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    body: Option<Body>,
) -> Result<Body, String> {
    match body {
        Some(Body::Vote(request)) => {
            let request = wire::vote_request_from(request).map_err(|e| e.to_string())?;
            let response = raft.vote(request).await.map_err(raft_error)?;
            Ok(Body::VoteResponse(wire::vote_response_to(&response)))
        }
        Some(Body::PreVote(request)) => {
            let request = wire::vote_request_from(request).map_err(|e| e.to_string())?;
            let response = raft.pre_vote(request).await.map_err(raft_error)?;
            Ok(Body::VoteResponse(wire::vote_response_to(&response)))
        }
        Some(Body::Append(request)) => {
            let request = wire::append_request_from(request).map_err(|e| e.to_string())?;
            let response = raft.append_entries(request).await.map_err(raft_error)?;
            Ok(Body::AppendResponse(wire::append_response_to(&response)))
        }
        Some(Body::InstallSnapshot(snapshot)) => {
            let (vote, snapshot) = wire::snapshot_from(snapshot).map_err(|e| e.to_string())?;
            let response = raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| format!("the snapshot was not installed: {e}"))?;
            Ok(Body::SnapshotResponse(wire::snapshot_response_to(
                &response.vote,
            )))
        }
        Some(other) => Err(format!("not a request: {other:?}")),
        None => Err("a message without a body".to_owned()),
    }
}
