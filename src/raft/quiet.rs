//! Quiescence: an idle group stops its heartbeats and its election timers, so a node holding
//! many idle partitions costs next to nothing; the links between nodes stand in for the
//! heartbeats.
//!
//! Owns: one group's quiet state ([`Quiescence`]) and the rules for entering and leaving it,
//! with the `RaftQuiet` messages (`replication.proto`) that carry them.
//! Must never: change a vote, a term or a log. Quiet only switches openraft's timers (its
//! `tick`) off and on, and refuses pre-votes, which are advisory. What it could cost is
//! liveness, so every way a leader can vanish wakes its followers (below).
//!
//! Entering:
//! - A leader that had no proposal for `cluster.quiesce_after_ms`, whose entries are all
//!   committed and applied, and whose reachable followers (a majority with itself, at least)
//!   all hold its last entry, stops its own ticks first (so no heartbeat slips out after a
//!   follower went quiet) and asks those followers to QUIESCE. It stays quiet if every one of
//!   them went quiet and nothing was proposed meanwhile; otherwise it ticks again.
//! - A follower goes quiet only if it follows that leader under that vote and holds, and has
//!   applied, that same last entry.
//!
//! Leaving, on a leader: a proposal (its AppendEntries then wake the followers), a vote or
//! pre-vote request, a WAKE from a follower, or a change in the link to any member (a member
//! that comes back needs heartbeats before its election timer fires). A woken group stays
//! awake at least `quiesce_after_ms`; a change or a WAKE during a round makes it give up.
//!
//! Leaving, on a follower: any AppendEntries other than the quiet leader's bare heartbeat
//! (entries, a commit, another vote, or a stale one), a snapshot, a vote request, a change in
//! (or the loss of) the link to its leader, a WAKE from a leader whose replica stops, or a
//! failed CHECK: every `check_every` (10 election timeouts) a quiet follower asks its leader
//! whether it still leads, so a group whose leader vanished some other way on a live node
//! elects all the same, late.
//!
//! A quiet follower refuses a pre-vote while its link to the leader is up (as an unexpired
//! lease would) and asks the leader to WAKE, so a restarted member that missed the quiet spell
//! learns the leader from heartbeats instead of deposing it; if the leader cannot be asked,
//! the follower wakes and Raft elects as usual. A quiet leader refuses a pre-vote and wakes.
//! For an election timeout after waking, a group goes on refusing pre-votes the same way: the
//! leases of a long quiet spell have lapsed, and openraft would grant them until heartbeats
//! renew them.
//!
//! CHECK and WAKE are answered from the group's published metrics, not from inside its Raft
//! core: a core wedged without failing would still say it leads.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::rt::AsyncRuntime;

use super::group::PartitionRaft;
use super::network::RaftTransport;
use super::store::Key;
use super::types::{LogId, NodeId, Vote};
use super::wire;
use crate::proto::v1 as pb;
use pb::raft_envelope::Body;
use pb::raft_quiet::Kind;

/// When groups go quiet and how they check on each other, from the Raft timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuietSettings {
    /// A leader idle this long quiesces its group; `None`: never.
    pub after: Option<Duration>,
    /// A leader that could not quiesce tries again after this.
    pub retry_every: Duration,
    /// A quiet follower asks its leader whether it still leads this often.
    pub check_every: Duration,
    /// How long a quiet leader's round keeps its ticks off waiting for the followers (under
    /// an election timeout, so an awake follower never misses enough heartbeats to stand).
    pub round_within: Duration,
    /// How long a CHECK or WAKE waits for the leader's answer.
    pub answer_within: Duration,
    /// How long a group that woke still refuses pre-votes as a quiet one would (see
    /// [`Quiescence::screen`]): until its leader's heartbeats have renewed the leases.
    pub wake_grace: Duration,
}

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Awake,
    /// Leading, with ticks off; `last` is its last entry, committed and applied.
    Leading {
        vote: Vote,
        last: LogId,
    },
    /// Following a quiet leader, with ticks off.
    Following {
        vote: Vote,
        last: LogId,
        next_check: Instant,
    },
}

/// What a group does with a message from another replica, before Raft serves it.
pub(crate) enum Screen {
    /// Raft serves it; then the group wakes when `wake_after`.
    Serve { wake_after: bool },
    /// Answered here with `answer` (a refused pre-vote), not served; a quiet follower then
    /// asks `leader` to WAKE.
    Refuse {
        answer: Body,
        wake_leader: Option<NodeId>,
    },
}

/// A group's identity on the wire, for the messages quiet sends itself.
#[derive(Clone)]
pub(crate) struct Sender {
    pub key: Key,
    /// Stamped on every message (see `RaftEnvelope.incarnation`).
    pub incarnation: u64,
    pub node_id: NodeId,
    pub transport: Arc<dyn RaftTransport>,
}

impl Sender {
    fn envelope(&self, kind: Kind, vote: &Vote, last: &LogId) -> pb::RaftEnvelope {
        pb::RaftEnvelope {
            id: 0,
            topic: self.key.0.to_string(),
            partition: self.key.1,
            from_node: u32::try_from(self.node_id).expect("node ids are u32 in the config"),
            incarnation: self.incarnation,
            to_node: 0, // the transport addresses it
            body: Some(Body::Quiet(pb::RaftQuiet {
                kind: kind as i32,
                vote: Some(wire::vote_to(vote)),
                last_log_id: Some(wire::log_id_to(last)),
            })),
        }
    }

    /// Sends `kind` to `to` and says whether it answered `quiet`; `false` for any failure.
    async fn ask<RT: AsyncRuntime>(
        &self,
        to: NodeId,
        kind: Kind,
        vote: &Vote,
        last: &LogId,
        within: Duration,
    ) -> bool {
        let reply = self.transport.send(to, self.envelope(kind, vote, last));
        match RT::timeout(within, reply).await {
            Ok(Ok(Ok(answer))) => matches!(answer.body, Some(Body::QuietAck(ack)) if ack.quiet),
            _ => false,
        }
    }

    fn link_up(&self, to: NodeId) -> bool {
        self.transport.link(self.node_id, to).up
    }
}

/// One group's quiet state. Shared (`Rc`) by the group and the tasks it spawns; it lives on
/// the group's shard.
pub(crate) struct Quiescence {
    settings: QuietSettings,
    state: RefCell<State>,
    /// Proposals seen: a round that sees this move gives up.
    activity: Cell<u64>,
    last_activity: Cell<Instant>,
    /// A leader's round is open: its ticks are off though it is not quiet yet.
    round_open: Cell<bool>,
    next_round: Cell<Instant>,
    /// A follower's CHECK or WAKE awaits its answer.
    asking: Cell<bool>,
    /// The quiet state the group last woke from, and when: for [`QuietSettings::wake_grace`]
    /// after it, pre-votes are refused as they were while quiet.
    woke: Cell<Option<(Instant, State)>>,
}

impl Quiescence {
    pub(crate) fn new(settings: QuietSettings) -> Rc<Quiescence> {
        let now = Instant::now();
        Rc::new(Quiescence {
            settings,
            state: RefCell::new(State::Awake),
            activity: Cell::new(0),
            last_activity: Cell::new(now),
            round_open: Cell::new(false),
            next_round: Cell::new(now),
            asking: Cell::new(false),
            woke: Cell::new(None),
        })
    }

    pub(crate) fn is_quiet(&self) -> bool {
        *self.state.borrow() != State::Awake
    }

    /// A proposal (records or a command): a quiet leader wakes.
    pub(crate) fn active<RT: AsyncRuntime>(&self, raft: &PartitionRaft<RT>) {
        // `wake` counts the activity, which makes an open round give up.
        self.last_activity.set(Instant::now());
        if self.round_open.get() {
            raft.runtime_config().tick(true);
        }
        self.wake(raft, "a proposal");
    }

    /// Ends quiet: ticks again, stays awake at least `after`, and for `wake_grace` refuses
    /// pre-votes as it did while quiet. An open round (state still `Awake`) gives up.
    fn wake<RT: AsyncRuntime>(&self, raft: &PartitionRaft<RT>, why: &str) {
        self.activity.set(self.activity.get() + 1);
        let was = self.state.replace(State::Awake);
        if was != State::Awake {
            tracing::trace!(why, "a quiet group wakes");
            let now = Instant::now();
            self.last_activity.set(now);
            self.woke.set(Some((now, was)));
            raft.runtime_config().tick(true);
        }
    }

    fn quiet<RT: AsyncRuntime>(&self, raft: &PartitionRaft<RT>, state: State) {
        debug_assert!(state != State::Awake);
        self.state.replace(state);
        raft.runtime_config().tick(false);
    }

    /// Decides what happens to a message from another replica before Raft serves it.
    pub(crate) fn screen<RT: AsyncRuntime>(
        &self,
        raft: &PartitionRaft<RT>,
        sender: &Sender,
        body: Option<&Body>,
    ) -> Screen {
        let state = *self.state.borrow();
        match state {
            State::Awake => match (body, self.woke.get()) {
                // Just woken: the leases of a long quiet spell have lapsed, so openraft would
                // grant an up-to-date pre-vote; refuse it while the leader is there, until
                // heartbeats have renewed them.
                (Some(Body::PreVote(_)), Some((at, was)))
                    if at.elapsed() < self.settings.wake_grace =>
                {
                    match was {
                        State::Leading { vote, last } => {
                            let leads = raft.metrics().borrow_watched().vote == vote;
                            if leads {
                                return Screen::Refuse {
                                    answer: refused_vote(&vote, &last),
                                    wake_leader: None,
                                };
                            }
                            Screen::Serve { wake_after: false }
                        }
                        State::Following { vote, last, .. }
                            if sender.link_up(vote.leader_id.voted_for) =>
                        {
                            Screen::Refuse {
                                answer: refused_vote(&vote, &last),
                                wake_leader: None,
                            }
                        }
                        _ => Screen::Serve { wake_after: false },
                    }
                }
                _ => Screen::Serve { wake_after: false },
            },
            State::Following { vote, last, .. } => match body {
                // The quiet leader's heartbeat: nothing new.
                Some(Body::Append(append))
                    if append.entries.is_empty()
                        && append.vote == Some(wire::vote_to(&vote))
                        && append.prev_log_id == Some(wire::log_id_to(&last))
                        && append.leader_commit == Some(wire::log_id_to(&last)) =>
                {
                    Screen::Serve { wake_after: false }
                }
                Some(Body::PreVote(_)) if sender.link_up(vote.leader_id.voted_for) => {
                    Screen::Refuse {
                        answer: refused_vote(&vote, &last),
                        wake_leader: Some(vote.leader_id.voted_for),
                    }
                }
                _ => Screen::Serve { wake_after: true },
            },
            State::Leading { vote, last } => match body {
                Some(Body::PreVote(_)) => {
                    self.wake(raft, "a pre-vote");
                    Screen::Refuse {
                        answer: refused_vote(&vote, &last),
                        wake_leader: None,
                    }
                }
                _ => Screen::Serve { wake_after: true },
            },
        }
    }

    /// After Raft served a message that [`Quiescence::screen`] said wakes the group.
    pub(crate) fn served<RT: AsyncRuntime>(&self, raft: &PartitionRaft<RT>) {
        self.wake(raft, "a message with news");
    }

    /// Asks `leader` to WAKE after a refused pre-vote; wakes this follower if it cannot.
    pub(crate) fn wake_leader<RT: AsyncRuntime>(
        self: &Rc<Self>,
        raft: &PartitionRaft<RT>,
        sender: &Sender,
        leader: NodeId,
    ) {
        let State::Following { vote, last, .. } = *self.state.borrow() else {
            return;
        };
        if self.asking.replace(true) {
            return;
        }
        let (quiet, raft, sender) = (self.clone(), raft.clone(), sender.clone());
        let within = self.settings.answer_within;
        drop(RT::spawn(async move {
            let leads = sender
                .ask::<RT>(leader, Kind::Wake, &vote, &last, within)
                .await;
            quiet.asking.set(false);
            if !leads {
                quiet.wake(&raft, "the leader did not answer a WAKE");
            }
        }));
    }

    /// A leader's replica stops (its topic deleted here, or the node stopping): its followers
    /// are told to WAKE, so a quiet group elects at once rather than at its next CHECK. Sent
    /// without waiting for answers.
    pub(crate) fn farewell<RT: AsyncRuntime>(&self, raft: &PartitionRaft<RT>, sender: &Sender) {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        let (true, Some(last)) = (m.state == ServerState::Leader, m.last_applied) else {
            return;
        };
        for (&node, _) in m.membership_config.membership().nodes() {
            if node != sender.node_id {
                drop(
                    sender
                        .transport
                        .send(node, sender.envelope(Kind::Wake, &m.vote, &last)),
                );
            }
        }
    }

    /// Serves a `RaftQuiet` request from another replica.
    pub(crate) fn serve<RT: AsyncRuntime>(
        &self,
        raft: &PartitionRaft<RT>,
        catching_up: bool,
        request: pb::RaftQuiet,
    ) -> Result<Body, String> {
        let vote = wire::vote_from(request.vote).map_err(|e| e.to_string())?;
        let last = wire::log_id_from(request.last_log_id)
            .ok_or_else(|| "a quiet request without its last log id".to_owned())?;
        let (leads, follows_caught_up) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            let leads = m.state == ServerState::Leader && m.vote == vote;
            let follows = m.state == ServerState::Follower
                && m.vote == vote
                && m.current_leader == Some(vote.leader_id.voted_for)
                && m.last_log_index == Some(last.index)
                && m.last_applied.as_ref() == Some(&last);
            (leads, follows && !catching_up)
        };
        let quiet = match Kind::try_from(request.kind) {
            Ok(Kind::Quiesce) => {
                if follows_caught_up && vote.committed {
                    let next_check = Instant::now() + self.settings.check_every;
                    self.quiet(
                        raft,
                        State::Following {
                            vote,
                            last,
                            next_check,
                        },
                    );
                }
                follows_caught_up && vote.committed
            }
            Ok(Kind::Wake) => {
                // Also ends a round in flight (`wake` counts as activity): whoever asks saw a
                // campaign.
                self.wake(raft, "a member saw a campaign, or a leader left");
                leads
            }
            Ok(Kind::Check) => leads,
            Ok(Kind::Unspecified) | Err(_) => {
                return Err(format!("unknown quiet request kind {}", request.kind));
            }
        };
        Ok(Body::QuietAck(pb::RaftQuietAck { quiet }))
    }

    /// The group's periodic look (every heartbeat interval, from the shard): links that
    /// changed (`changed`), a follower's CHECK, a leader's round.
    pub(crate) fn tick<RT: AsyncRuntime>(
        self: &Rc<Self>,
        raft: &PartitionRaft<RT>,
        sender: &Sender,
        now: Instant,
        changed: &dyn Fn(NodeId) -> bool,
    ) {
        let state = *self.state.borrow();
        match state {
            State::Following {
                vote,
                last,
                next_check,
            } => {
                let leader = vote.leader_id.voted_for;
                if changed(leader) || !sender.link_up(leader) {
                    self.wake(raft, "the link to the leader changed");
                } else if now >= next_check && !self.asking.replace(true) {
                    let (quiet, raft, sender) = (self.clone(), raft.clone(), sender.clone());
                    let within = self.settings.answer_within;
                    let check_every = self.settings.check_every;
                    drop(RT::spawn(async move {
                        let leads = sender
                            .ask::<RT>(leader, Kind::Check, &vote, &last, within)
                            .await;
                        quiet.asking.set(false);
                        // The answer is about `vote`: a follower that since followed
                        // another leader ignores it.
                        let mut state = quiet.state.borrow_mut();
                        match &mut *state {
                            State::Following {
                                vote: v,
                                next_check,
                                ..
                            } if *v == vote => {
                                if leads {
                                    *next_check = Instant::now() + check_every;
                                } else {
                                    drop(state);
                                    quiet.wake(&raft, "the leader no longer leads");
                                }
                            }
                            _ => {}
                        }
                    }));
                }
            }
            State::Leading { .. } => {
                if member_changed(raft, changed) {
                    self.wake(raft, "the link to a member changed");
                }
            }
            State::Awake => {
                let Some(after) = self.settings.after else {
                    return;
                };
                if self.round_open.get() {
                    // A member that went or came back during the round needs heartbeats:
                    // the round gives up.
                    if member_changed(raft, changed) {
                        self.activity.set(self.activity.get() + 1);
                    }
                    return;
                }
                if now < self.next_round.get()
                    || now.duration_since(self.last_activity.get()) < after
                {
                    return;
                }
                self.next_round.set(now + self.settings.retry_every);
                if let Some((vote, last, followers)) = round_candidates(raft, sender) {
                    self.open_round(raft, sender, vote, last, followers);
                }
            }
        }
    }

    /// Stops the leader's ticks and asks `followers` to go quiet; the leader stays quiet if
    /// they all did and nothing happened meanwhile.
    fn open_round<RT: AsyncRuntime>(
        self: &Rc<Self>,
        raft: &PartitionRaft<RT>,
        sender: &Sender,
        vote: Vote,
        last: LogId,
        followers: Vec<NodeId>,
    ) {
        self.round_open.set(true);
        raft.runtime_config().tick(false);
        let activity = self.activity.get();
        let (quiet, raft, sender) = (self.clone(), raft.clone(), sender.clone());
        let within = self.settings.round_within;
        drop(RT::spawn(async move {
            let asks = followers
                .iter()
                .map(|&f| sender.ask::<RT>(f, Kind::Quiesce, &vote, &last, within));
            let all_quiet = futures::future::join_all(asks).await.into_iter().all(|q| q);
            quiet.round_open.set(false);
            let unchanged = {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                m.state == ServerState::Leader
                    && m.vote == vote
                    && m.last_log_index == Some(last.index)
            };
            if all_quiet && unchanged && quiet.activity.get() == activity {
                quiet.quiet(&raft, State::Leading { vote, last });
                tracing::trace!(topic = %sender.key.0, partition = sender.key.1, "a group went quiet");
            } else {
                raft.runtime_config().tick(true);
            }
        }));
    }
}

/// When this replica leads, with every entry committed and applied and every reachable
/// follower (a majority with the leader, at least) holding the last one: the vote, the last
/// entry and those followers.
fn round_candidates<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    sender: &Sender,
) -> Option<(Vote, LogId, Vec<NodeId>)> {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    if m.state != ServerState::Leader || !m.vote.committed {
        return None;
    }
    let last = m.last_applied?;
    if m.last_log_index != Some(last.index) || m.cluster_committed.as_ref() != Some(&last) {
        return None;
    }
    let membership = m.membership_config.membership();
    // A learner is being brought in: a membership change is under way.
    if membership.learner_ids().next().is_some() {
        return None;
    }
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let replication = m.replication.as_ref()?;
    let mut followers = Vec::new();
    for &voter in voters.iter().filter(|&&v| v != sender.node_id) {
        if !sender.link_up(voter) {
            continue;
        }
        if replication.get(&voter) != Some(&Some(last)) {
            return None;
        }
        followers.push(voter);
    }
    (followers.len() + 1 > voters.len() / 2).then_some((m.vote, last, followers))
}

/// Whether the link to any member of the group's membership changed (`changed`).
fn member_changed<RT: AsyncRuntime>(
    raft: &PartitionRaft<RT>,
    changed: &dyn Fn(NodeId) -> bool,
) -> bool {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    m.membership_config
        .membership()
        .nodes()
        .any(|(id, _)| changed(*id))
}

/// A refused pre-vote, as the quiet leader's lease would refuse it.
fn refused_vote(vote: &Vote, last: &LogId) -> Body {
    Body::VoteResponse(pb::RaftVoteResponse {
        vote: Some(wire::vote_to(vote)),
        granted: false,
        last_log_id: Some(wire::log_id_to(last)),
    })
}
