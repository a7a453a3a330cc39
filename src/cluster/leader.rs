//! The leader's side of replication: the `Follow` service that ships every topic to each
//! follower, and the commit points its followers' reports make.
//!
//! A session starts with the follower's report of every topic it holds. The leader answers
//! what the follower must delete (unknown here, or another epoch) and where it must cut
//! (where its copy stops sharing this log, by term: [`divergence`]), then every topic it
//! holds (epoch, settings, term history), then ships records from each topic's position:
//! each batch as it is handed out before this node syncs it (so the follower's fsync runs
//! while this node's does), else from the log once durable, up to 1 MiB per message
//! (records of one segment as one run of their stored bytes to a follower that takes runs),
//! with the channel to the follower bounded: a slow follower costs the leader at most a few
//! messages of memory. Each report moves that follower's durable positions in the in-sync
//! bookkeeping ([`InSync`]); a commit point that moves is set on the topic, and each
//! session sends it to its follower. So is each retention decision of this node (a topic's
//! oldest retained offset moving): the follower removes the same frames, or starts its copy
//! again at that offset when it lacks frames retention removed.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, error, info, warn};

use super::insync::{FollowerStream, InSync, Moved};
use super::repeats::Repeats;
use super::replication_proto as rp;
use super::replication_proto::leader_update::Update;
use super::watches::{Change, Kind, TopicWatches};
use crate::broker::terms::{divergence, TermHistory, TermStart};
use crate::broker::topics::{Topic, Topics};
use crate::index::OrderKey;
use crate::wal;
use crate::wal::removals::Removals;

/// Bytes of records per message to a follower (at least one record).
pub const MAX_RECORDS_BYTES: usize = 1 << 20;

/// The largest replication message a node sends or takes, in either direction. Records
/// read one by one fill a message while it holds under [`MAX_RECORDS_BYTES`], so the last
/// one may be as large as a segment of `config` holds (a frame of `--max-frame-bytes` is
/// one): the bound is that record, the bytes before it, and as much again for the
/// message's own framing of each record. A bound below what a message can hold would leave
/// a follower unable to copy it, retrying forever and out of the in-sync set.
pub fn max_message_bytes(config: &wal::LogConfig) -> usize {
    let record = usize::try_from(config.request_room()).unwrap_or(usize::MAX);
    record.saturating_add(MAX_RECORDS_BYTES * 2)
}

/// Bytes a key costs in a [`rp::ReplicaKeys`] message beside its own (its offset,
/// timestamp and stored time, and the framing), counted generously.
const KEY_OVERHEAD: usize = 40;

/// Messages queued to one follower before the session waits for it.
const SESSION_QUEUE: usize = 8;

/// This node as the leader of a term: its topics, the term, and the in-sync bookkeeping.
#[derive(Debug)]
pub struct Leader {
    topics: Arc<Topics>,
    node_id: String,
    term: u64,
    insync: Mutex<InSync>,
    /// Follower streams opened in this term: each one's number.
    sessions: std::sync::atomic::AtomicU64,
    /// Set when this node stops leading: every session and the commit task end.
    stopped: watch::Sender<bool>,
    /// Refusals and damage met at each follower's reconnection, logged once in a while.
    repeats: Mutex<Repeats>,
    /// Bumped whenever a follower answers a roster mark or the set shrinks: a waiting
    /// CreateTopic or DeleteTopic looks again.
    roster_answers: watch::Sender<u64>,
}

impl Leader {
    /// Takes the lead of `topics` in `term`: every topic's term history records that the
    /// term begins at its end (durably, before anything is written in the term), and topics
    /// created from now on begin in it. `members`: the in-sync set besides this node.
    pub async fn start(
        topics: Arc<Topics>,
        node_id: &str,
        term: u64,
        members: impl IntoIterator<Item = String>,
        max_lag: Duration,
    ) -> crate::broker::error::Result<Arc<Leader>> {
        topics.set_term(term);
        topics.set_owns_retention(true);
        // Batches go to the followers while this node syncs them.
        topics.log_config().early_tail.set(true);
        let started = Instant::now();
        let begun = match topics.begin_term_all(term).await {
            Ok(n) => n,
            Err(e) => {
                // Not leading after all: back to a follower's settings.
                topics.set_owns_retention(false);
                topics.log_config().early_tail.set(false);
                return Err(e);
            }
        };
        info!(
            term,
            topics = begun,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "term begun in every topic"
        );
        // New frames land from now on: after the term's start, at every topic's end.
        topics.log_config().local_appends.set(true);
        let mut insync = InSync::new(node_id, members, max_lag, Instant::now());
        // Every topic's end and commit point known before any follower is looked at: a
        // follower that lacks frames committed in an earlier term must not pass for caught
        // up in no topic, and a member back without them leaves the set at once. What this
        // node shows is committed (every member of the set holds it).
        let now = Instant::now();
        for t in topics.list() {
            let epoch = t.meta().epoch;
            insync.committed(t.name(), epoch, t.visible_offset());
            if let Some(c) = insync.leader_durable(t.name(), epoch, t.log().durable_offset(), now) {
                t.advance_commit(c);
            }
        }
        let leader = Arc::new(Leader {
            topics,
            node_id: node_id.to_string(),
            term,
            insync: Mutex::new(insync),
            sessions: std::sync::atomic::AtomicU64::new(0),
            stopped: watch::Sender::new(false),
            repeats: Mutex::new(Repeats::default()),
            roster_answers: watch::Sender::new(0),
        });
        info!(node_id, term, insync = ?leader.insync.lock().set(), "leading");
        Ok(leader)
    }

    /// The term this node leads.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The in-sync set, this node first.
    pub fn insync_set(&self) -> Vec<String> {
        self.insync.lock().set()
    }

    /// Ends the leadership: every follower's stream and the commit task end, and this
    /// node's retention stops deciding (a follower applies its leader's).
    pub fn stop(&self) {
        // First: a publish still on its way lands in no log (the node then waits for the
        // ones queued before it copies another leader's records).
        self.topics.log_config().local_appends.set(false);
        self.topics.set_owns_retention(false);
        self.topics.log_config().early_tail.set(false);
        self.stopped.send_replace(true);
        self.roster_answered();
    }

    /// Resolves once [`Leader::stop`] was called.
    async fn stopped(&self) {
        let mut rx = self.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Moves commit points with this node's own durable ends, until the leadership ends:
    /// with no other member in sync, a frame is committed once durable here.
    pub async fn run_commits(self: Arc<Self>) {
        let mut watches = TopicWatches::new(Arc::clone(&self.topics), &[Kind::Durable]);
        self.own_ends(self.topics.list());
        let stopped = self.stopped();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                change = watches.next() => match change {
                    Change::Roster => {
                        let known = self.insync.lock().known_topics();
                        self.forget_deleted(known);
                        self.own_ends(self.topics.list());
                    }
                    Change::Topics(names) => {
                        let known = {
                            let insync = self.insync.lock();
                            names
                                .iter()
                                .filter_map(|n| insync.known_epoch(n).map(|e| (n.clone(), e)))
                                .collect()
                        };
                        self.forget_deleted(known);
                        self.own_ends(names.iter().filter_map(|n| self.topics.get(n)).collect());
                    }
                    Change::Topic(_, topic) => self.own_ends(vec![topic]),
                },
            }
        }
    }

    /// Members to drop from the in-sync set now: offline (`online` says who is not),
    /// lagging past the limit, or back holding less than a commit point.
    pub fn laggards(&self, online: &dyn Fn(&str) -> bool) -> Vec<String> {
        self.insync.lock().laggards(online, Instant::now())
    }

    /// Members of the in-sync set besides this node that could take over now (see
    /// [`InSync::successors`]).
    pub fn successors(&self) -> Vec<String> {
        self.insync.lock().successors()
    }

    /// Followers outside the set ready to join it (see [`InSync::caught_up`]), after one
    /// step of the joining ones ([`InSync::tend_joiners`]).
    pub fn caught_up(&self, online: &dyn Fn(&str) -> bool) -> Vec<String> {
        let now = Instant::now();
        let mut insync = self.insync.lock();
        let moved = insync.tend_joiners(online, now);
        self.advance_commits(moved);
        insync.caught_up(online, now)
    }

    /// Moves the commit points of these topics, each if it is still of the epoch the point
    /// was computed for (not a topic deleted and created again meanwhile).
    fn advance_commits(&self, moved: Vec<Moved>) {
        for m in moved {
            if let Some(t) = self.topics.get(&m.topic) {
                if t.meta().epoch == m.epoch {
                    t.advance_commit(m.commit);
                }
            }
        }
    }

    /// Drops `member` from the in-sync set (after etcd says so): commit points may move.
    pub fn drop_member(&self, member: &str) {
        let moved = self.insync.lock().drop_member(member);
        self.advance_commits(moved);
        self.roster_answered();
    }

    /// Wakes the CreateTopic and DeleteTopic calls waiting on the followers' word.
    fn roster_answered(&self) {
        self.roster_answers.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Adds `member` to the in-sync set if it is caught up and holds every commit point;
    /// whether it is in the set now. Before etcd: see [`InSync::add_member`].
    pub fn add_member(&self, member: &str) -> bool {
        self.insync.lock().add_member(member, Instant::now())
    }

    /// Forgets, of the topics `known` in the in-sync bookkeeping (with their epochs), those
    /// this node no longer holds with that epoch: a topic deleted while no follower's stream
    /// noticed would otherwise stay, one every follower lacks for good.
    fn forget_deleted(&self, known: Vec<(String, u64)>) {
        let gone: Vec<(String, u64)> = known
            .into_iter()
            .filter(|(name, epoch)| {
                self.topics
                    .get(name)
                    .is_none_or(|t| t.meta().epoch != *epoch)
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        let mut insync = self.insync.lock();
        for (name, epoch) in gone {
            insync.forget_gone(&name, epoch);
        }
    }

    fn own_ends(&self, topics: Vec<Arc<Topic>>) {
        let now = Instant::now();
        let mut insync = self.insync.lock();
        for t in topics {
            let end = t.log().durable_offset();
            if let Some(c) = insync.leader_durable(t.name(), t.meta().epoch, end, now) {
                t.advance_commit(c);
            }
        }
    }

    /// `follower` holds `topic` (of `epoch`) durably up to `durable`; a report of another
    /// epoch than this node's topic of that name is of a topic gone here, and ignored.
    fn reported(&self, follower: &str, session: u64, topic: &str, epoch: u64, durable: u64) {
        let Some(t) = self.topics.get(topic) else {
            return;
        };
        if t.meta().epoch != epoch {
            return;
        }
        let now = Instant::now();
        let mut insync = self.insync.lock();
        self.current_epoch(&mut insync, &t, now);
        if let Some(c) = insync.reported(
            FollowerStream { follower, session },
            topic,
            epoch,
            durable,
            now,
        ) {
            t.advance_commit(c);
        }
    }

    /// The leader sent `follower` the records of `t` up to `until` (see [`InSync::sent`]).
    fn sent(&self, follower: FollowerStream<'_>, t: &Topic, until: u64, whole: bool) {
        let now = Instant::now();
        let mut insync = self.insync.lock();
        self.current_epoch(&mut insync, t, now);
        insync.sent(follower, t.name(), t.meta().epoch, until, whole, now);
    }

    /// Moves the bookkeeping of `t` to its epoch here if it still knows another (the topic
    /// was created again and the commit task has not looked yet): a follower's word on the
    /// new topic would be ignored, and it may not say it again.
    fn current_epoch(&self, insync: &mut InSync, t: &Topic, now: Instant) {
        let epoch = t.meta().epoch;
        if insync.known_epoch(t.name()).is_some_and(|e| e != epoch) {
            if let Some(c) = insync.leader_durable(t.name(), epoch, t.log().durable_offset(), now) {
                t.advance_commit(c);
            }
        }
    }

    /// The `Replication` gRPC service of this leader.
    pub fn service(self: &Arc<Self>) -> rp::replication_server::ReplicationServer<LeaderService> {
        let limit = max_message_bytes(self.topics.log_config());
        rp::replication_server::ReplicationServer::new(LeaderService {
            leader: Arc::clone(self),
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
    }
}

impl crate::broker::cluster_view::PeerPositions for Leader {
    fn positions_of(&self, id: &str) -> Vec<crate::proto::TopicPosition> {
        self.insync
            .lock()
            .positions_of(id)
            .into_iter()
            .map(
                |(topic, next_offset, commit_offset)| crate::proto::TopicPosition {
                    topic,
                    next_offset,
                    commit_offset,
                },
            )
            .collect()
    }

    fn lags(&self) -> Vec<(String, String, u64)> {
        self.insync.lock().lags()
    }

    fn want_roster(&self, version: u64) -> watch::Receiver<u64> {
        let answers = self.roster_answers.subscribe();
        self.insync.lock().want_roster(version, Instant::now());
        answers
    }

    fn roster_held(&self, version: u64) -> bool {
        self.insync.lock().roster_held(version)
    }
}

/// The `Replication` service of a [`Leader`].
#[derive(Debug, Clone)]
pub struct LeaderService {
    leader: Arc<Leader>,
}

impl LeaderService {
    /// The service of `leader`.
    pub fn of(leader: &Arc<Leader>) -> LeaderService {
        LeaderService {
            leader: Arc::clone(leader),
        }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<rp::LeaderUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl rp::replication_server::Replication for LeaderService {
    type FollowStream = UpdateStream;

    async fn follow(
        &self,
        request: Request<Streaming<rp::FollowerReport>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let mut reports = request.into_inner();
        let first = first_report(&mut reports).await?;
        self.open(first, reports, None).await.map(Response::new)
    }
}

/// How long a `Follow` stream may take to send its first report (a follower sends it as
/// it opens the stream).
const FIRST_REPORT_WITHIN: Duration = Duration::from_secs(10);

/// The report a `Follow` stream starts with; `DEADLINE_EXCEEDED` when none comes within
/// [`FIRST_REPORT_WITHIN`] (a stream that never reports holds no task here for long).
pub async fn first_report(
    reports: &mut Streaming<rp::FollowerReport>,
) -> Result<rp::FollowerReport, Status> {
    tokio::time::timeout(FIRST_REPORT_WITHIN, reports.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "a Follow stream starts with a report, and none came within {FIRST_REPORT_WITHIN:?}"
            ))
        })??
        .ok_or_else(|| Status::invalid_argument("a Follow stream starts with a report"))
}

impl LeaderService {
    /// Starts the session of the follower whose stream began with `first`; it ends at
    /// `expires` (its token's expiry), if given, with `UNAUTHENTICATED`.
    pub async fn open(
        &self,
        first: rp::FollowerReport,
        reports: Streaming<rp::FollowerReport>,
        expires: Option<tokio::time::Instant>,
    ) -> Result<UpdateStream, Status> {
        let leader = &self.leader;
        if first.term != leader.term {
            return Err(Status::failed_precondition(format!(
                "this node leads term {}, not term {}",
                leader.term, first.term
            )));
        }
        if first.node_id.is_empty() || first.node_id == leader.node_id {
            return Err(Status::invalid_argument(format!(
                "a follower needs its own node id (got '{}')",
                first.node_id
            )));
        }
        if let Err(refused) = can_hold(leader.topics.log_config(), &first) {
            let key = format!("refused {}", first.node_id);
            if let Some(repeated) = leader.repeats.lock().due(&key, Instant::now()) {
                error!(follower = %first.node_id, reason = %refused.message(), repeated, "refusing a follower that cannot hold this leader's frames");
            }
            return Err(refused);
        }
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let session = Session {
            leader: Arc::clone(leader),
            id: leader
                .sessions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            follower: first.node_id.clone(),
            tx,
            positions: HashMap::new(),
            takes_runs: first.takes_runs,
            takes_roster: first.takes_roster,
            takes_keys: first.takes_keys,
            dirty: BTreeSet::new(),
        };
        tokio::spawn(session.run(first, reports, expires));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Refuses follower `first` when its log cannot hold the largest record a frame may make
/// under `config` (`--max-frame-bytes` with the longest key): it could copy nothing past
/// the first such frame, and would stay out of the in-sync set for good. Said at the
/// start, the operator learns it before that frame comes. A follower that does not say
/// (0) is taken. Records written before under a larger `--max-frame-bytes` are not looked
/// at: a follower taken may still fail at one of those.
fn can_hold(config: &wal::LogConfig, first: &rp::FollowerReport) -> Result<(), Status> {
    let needs = config.largest_record();
    if first.max_record_bytes == 0 || first.max_record_bytes >= needs {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "node '{}' cannot hold this leader's frames: a frame of --max-frame-bytes {} with an \
         idempotency key is a {needs}-byte record, and its segments hold records of up to {} \
         bytes; start it with --segment-bytes {} or more (or every node with the same \
         --max-frame-bytes and --segment-bytes)",
        first.node_id,
        config.max_frame_bytes,
        first.max_record_bytes,
        wal::LogConfig::segment_bytes_for(needs),
    )))
}

/// Where the leader stands with one topic of one follower.
#[derive(Debug, Clone, Copy)]
struct Shipped {
    /// The epoch shipped (a re-created topic has another).
    epoch: u64,
    /// The next offset to ship.
    next: u64,
    /// The commit point last sent.
    commit: Option<u64>,
    /// True once the topic's epoch, settings and terms were sent.
    announced: bool,
    /// The oldest retained offset last sent.
    first: u64,
}

/// One follower's stream.
struct Session {
    leader: Arc<Leader>,
    /// This stream among the follower's: positions come from its latest one only.
    id: u64,
    follower: String,
    tx: mpsc::Sender<Result<rp::LeaderUpdate, Status>>,
    positions: HashMap<String, Shipped>,
    /// The follower takes records as runs (`ReplicaRecords.run`).
    takes_runs: bool,
    /// The follower answers roster marks (`LeaderUpdate.roster`).
    takes_roster: bool,
    /// The follower takes the keys of removed frames (`LeaderUpdate.keys`).
    takes_keys: bool,
    /// Topics with records to ship.
    dirty: BTreeSet<String>,
}

/// The session ended: the follower went away or the stream broke.
struct Gone;

impl Session {
    async fn run(
        mut self,
        first: rp::FollowerReport,
        mut reports: Streaming<rp::FollowerReport>,
        expires: Option<tokio::time::Instant>,
    ) {
        let follower = self.follower.clone();
        info!(follower = %follower, term = self.leader.term, topics = first.positions.len(), "follower connected");
        let mut watches = TopicWatches::new(
            Arc::clone(&self.leader.topics),
            &[Kind::Durable, Kind::Written, Kind::Visible, Kind::First],
        );
        let tx = self.tx.clone();
        let leader = Arc::clone(&self.leader);
        let ended = async {
            self.handshake(first).await?;
            self.rescan().await?;
            self.mark_roster(watches.seen()).await?;
            loop {
                tokio::select! {
                    permit = tx.reserve(), if !self.dirty.is_empty() => {
                        let permit = permit.map_err(|_| Gone)?;
                        match self.next_records()? {
                            Next::Nothing => {}
                            Next::Send(update) => permit.send(Ok(update)),
                            Next::Restart(t, first, update) => {
                                // The keys of the removed frames go first.
                                drop(permit);
                                self.send_keys(&t, first).await?;
                                self.send(update).await?;
                            }
                        }
                    }
                    report = reports.message() => match report {
                        Ok(Some(r)) => self.apply_report(r)?,
                        Ok(None) => return Err::<(), Gone>(Gone),
                        Err(e) => {
                            debug!(follower = %self.follower, error = %e, "follower stream broke");
                            return Err(Gone);
                        }
                    },
                    change = watches.next() => match change {
                        Change::Roster => {
                            self.rescan().await?;
                            self.mark_roster(watches.seen()).await?;
                        }
                        Change::Topics(names) => {
                            self.look_at(&names).await?;
                            self.mark_roster(watches.seen()).await?;
                        }
                        Change::Topic(Kind::Durable | Kind::Written, t) => self.mark(&t),
                        Change::Topic(Kind::Visible, t) => self.send_commit(&t).await?,
                        Change::Topic(Kind::First, t) => self.send_retention(&t).await?,
                    },
                }
            }
        };
        let expired = async {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let expired = tokio::select! {
            _ = ended => false,
            _ = leader.stopped() => false,
            () = expired => {
                info!(follower = %follower, "the follower's token expired: ending its stream");
                // Not waited for: with its queue full the stream just ends, which the
                // follower takes as a reason to follow again too.
                let _ = tx.try_send(Err(Status::unauthenticated("token expired")));
                true
            }
        };
        // A stream ended by its token's expiry is followed again at once (a minted token
        // expires every hour): the follower holds what it reported, so its positions stay
        // until its next stream starts them over, and it keeps its place in the set
        // meanwhile. Without a next stream they stop moving, and it lags out as any other.
        if expired {
            self.leader.insync.lock().stream_expired(&follower, self.id);
        } else {
            let moved =
                self.leader
                    .insync
                    .lock()
                    .forget_follower(&follower, self.id, Instant::now());
            self.leader.advance_commits(moved);
        }
        info!(follower = %follower, "follower disconnected");
    }

    async fn send(&self, update: Update) -> Result<(), Gone> {
        let msg = rp::LeaderUpdate {
            term: self.leader.term,
            update: Some(update),
        };
        self.tx.send(Ok(msg)).await.map_err(|_| Gone)
    }

    /// Tells the follower that every topic creation and deletion up to roster version
    /// `version` was sent: it answers once it holds them (a follower that takes marks).
    async fn mark_roster(&self, version: u64) -> Result<(), Gone> {
        if !self.takes_roster {
            return Ok(());
        }
        self.send(Update::Roster(version)).await
    }

    /// Answers the follower's first report: deletions and cuts.
    async fn handshake(&mut self, first: rp::FollowerReport) -> Result<(), Gone> {
        let moved = {
            let mut insync = self.leader.insync.lock();
            let moved = insync.connected(&self.follower, self.id, Instant::now());
            if self.takes_roster {
                insync.takes_roster(FollowerStream {
                    follower: &self.follower,
                    session: self.id,
                });
            }
            moved
        };
        self.leader.advance_commits(moved);
        for p in first.positions {
            let topic = self.leader.topics.get(&p.topic);
            let Some(t) = topic.filter(|t| t.meta().epoch == p.epoch) else {
                info!(follower = %self.follower, topic = %p.topic, "follower holds a topic this leader does not (or another epoch): delete");
                self.send(Update::Deleted(p.topic)).await?;
                continue;
            };
            let theirs = TermHistory::from_entries(p.terms.iter().map(term_start).collect())
                .unwrap_or_else(|_| TermHistory::starting(0));
            let cut = divergence(&t.terms(), t.log().durable_offset(), &theirs, p.next_offset);
            if cut < p.next_offset {
                info!(follower = %self.follower, topic = %p.topic, from = cut, follower_end = p.next_offset, "follower holds frames this leader lacks: cut");
                self.send(Update::Cut(rp::ReplicaCut {
                    topic: p.topic.clone(),
                    offset: cut,
                }))
                .await?;
            }
            self.leader
                .reported(&self.follower, self.id, &p.topic, p.epoch, cut);
            self.positions.insert(
                p.topic,
                Shipped {
                    epoch: p.epoch,
                    next: cut,
                    commit: None,
                    announced: false,
                    first: 0,
                },
            );
        }
        // Every topic it holds is reported: what it lacks now, it lacks.
        self.leader
            .insync
            .lock()
            .handshaken(&self.follower, self.id);
        Ok(())
    }

    /// Brings the follower's set of topics in line with this node's: deletes what went,
    /// announces what is new (or re-created), and ships and commits what is pending.
    async fn rescan(&mut self) -> Result<(), Gone> {
        let now: HashMap<String, Arc<Topic>> = self
            .leader
            .topics
            .list()
            .into_iter()
            .map(|t| (t.name().to_string(), t))
            .collect();
        let gone: Vec<String> = self
            .positions
            .iter()
            .filter(|(name, s)| now.get(*name).is_none_or(|t| t.meta().epoch != s.epoch))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let deleted = !now.contains_key(&name);
            self.forget(name, deleted).await?;
        }
        for t in now.values() {
            self.bring(t).await?;
        }
        Ok(())
    }

    /// [`Session::rescan`] for the topics `names` only (they were created, deleted or
    /// reopened).
    async fn look_at(&mut self, names: &[String]) -> Result<(), Gone> {
        for name in names {
            let now = self.leader.topics.get(name);
            let went = self
                .positions
                .get(name)
                .is_some_and(|s| now.as_ref().is_none_or(|t| t.meta().epoch != s.epoch));
            if went {
                self.forget(name.clone(), now.is_none()).await?;
            }
            if let Some(t) = now {
                self.bring(&t).await?;
            }
        }
        Ok(())
    }

    /// Tells the follower to delete `name` (gone here, or another epoch); `deleted`: gone
    /// here, so it leaves the in-sync bookkeeping too.
    async fn forget(&mut self, name: String, deleted: bool) -> Result<(), Gone> {
        let shipped = self.positions.remove(&name);
        self.dirty.remove(&name);
        if let Some(s) = shipped.filter(|_| deleted) {
            // Of the epoch this stream knew only: the topic may exist again by now.
            self.leader.insync.lock().forget_gone(&name, s.epoch);
        }
        self.send(Update::Deleted(name)).await
    }

    /// Announces `t` if the follower has not been told of it, and ships and commits what is
    /// pending.
    async fn bring(&mut self, t: &Arc<Topic>) -> Result<(), Gone> {
        let s = self
            .positions
            .entry(t.name().to_string())
            .or_insert(Shipped {
                epoch: t.meta().epoch,
                next: 0,
                commit: None,
                announced: false,
                first: 0,
            });
        if !s.announced {
            s.announced = true;
            let announced = replica_topic(t);
            // A follower whose copy ends before the oldest retained frame starts it
            // again there: shipping continues from that offset.
            let restarts = s.next < announced.first_offset;
            s.first = announced.first_offset;
            s.next = s.next.max(announced.first_offset);
            if restarts {
                self.send_keys(t, announced.first_offset).await?;
            }
            self.send(Update::Topic(announced)).await?;
        }
        self.mark(t);
        self.send_commit(t).await
    }

    /// Notes that `topic` may have records to ship.
    fn mark(&mut self, topic: &Topic) {
        if let Some(s) = self.positions.get(topic.name()) {
            if s.next < shippable_end(topic) {
                self.dirty.insert(topic.name().to_string());
            }
        }
    }

    /// The next batch of records of the first dirty topic: nothing, records to send, or
    /// (retention removed what the follower needs next) a retention decision that makes it
    /// start its copy again, to send after the keys of the removed frames.
    fn next_records(&mut self) -> Result<Next, Gone> {
        let Some(name) = self.dirty.pop_first() else {
            return Ok(Next::Nothing);
        };
        let (Some(t), Some(s)) = (
            self.leader.topics.get(&name),
            self.positions.get(&name).copied(),
        ) else {
            return Ok(Next::Nothing);
        };
        if t.meta().epoch != s.epoch {
            return Ok(Next::Nothing);
        }
        let (records, run, next) = match self.read(&t, s.next) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Next::Nothing),
            Err(wal::Error::OutOfRange { first, .. }) => {
                // Retention removed what this follower needs next: it starts its copy again
                // at the oldest retained offset, and shipping goes on from there.
                info!(follower = %self.follower, topic = %name, from = s.next, first, "follower needs frames retention removed: it restarts its copy at the oldest retained offset");
                let (first, removals) = t.log().retention_passes();
                if let Some(p) = self.positions.get_mut(&name) {
                    p.next = first;
                    p.first = first;
                }
                self.dirty.insert(name.clone());
                let update = Update::Retention(rp::ReplicaRetention {
                    topic: name,
                    epoch: s.epoch,
                    first_offset: first,
                    removed_max_key: removals.largest().map(wire_key),
                    removals: wire_removals(&removals),
                });
                return Ok(Next::Restart(t, first, update));
            }
            Err(e @ wal::Error::Corruption { .. }) => {
                self.damaged(&name, &e);
                return Err(Gone);
            }
            Err(e) => {
                warn!(follower = %self.follower, topic = %name, error = %e, "cannot read records to ship");
                return Err(Gone);
            }
        };
        let durable = t.log().durable_offset();
        if let Some(p) = self.positions.get_mut(&name) {
            p.next = next;
        }
        if next < shippable_end(&t) {
            self.dirty.insert(name.clone());
        }
        self.leader.sent(
            FollowerStream {
                follower: &self.follower,
                session: self.id,
            },
            &t,
            next,
            next >= durable,
        );
        Ok(Next::Send(rp::LeaderUpdate {
            term: self.leader.term,
            update: Some(Update::Records(rp::ReplicaRecords {
                topic: name,
                epoch: s.epoch,
                records,
                run,
            })),
        }))
    }

    /// Sends the idempotency keys of `t`'s frames below `first` still inside the dedup
    /// window, in messages of up to [`MAX_RECORDS_BYTES`], to a follower about to start its
    /// copy again at `first`: it could not learn them from the frames, which retention
    /// removed. Found a message's worth at a time, off the async workers (each piece of the
    /// walk takes the log's writer lock, which a commit holds across its sync), so neither
    /// a worker nor the memory of a whole window is held for it. None to a follower that
    /// does not take them.
    async fn send_keys(&self, t: &Arc<Topic>, first: u64) -> Result<(), Gone> {
        if !self.takes_keys {
            return Ok(());
        }
        let mut from = Some(0);
        let mut sent = 0usize;
        while let Some(at) = from {
            let topic = Arc::clone(t);
            let (keys, next) = tokio::task::spawn_blocking(move || {
                let (mut out, mut at, mut bytes) = (Vec::new(), at, 0);
                loop {
                    let before = out.len();
                    let next = topic.log().live_keys_piece(at, first, &mut out);
                    bytes = if out.len() < before {
                        key_bytes(&out)
                    } else {
                        bytes + key_bytes(&out[before..])
                    };
                    match next {
                        Some(n) if bytes < MAX_RECORDS_BYTES => at = n,
                        next => return (out, next),
                    }
                }
            })
            .await
            .map_err(|_| Gone)?;
            for keys in key_messages(keys) {
                sent += keys.len();
                self.send(Update::Keys(rp::ReplicaKeys {
                    topic: t.name().to_string(),
                    epoch: t.meta().epoch,
                    keys,
                }))
                .await?;
            }
            from = next;
        }
        if sent > 0 {
            debug!(follower = %self.follower, topic = %t.name(), first, keys = sent, "sent the keys of removed frames to a copy that starts again");
        }
        Ok(())
    }

    /// What to ship of `t` from offset `from`: records one by one or as a run, and the
    /// next offset; `None` when there is nothing to ship yet. Records that lie in one
    /// segment go as one run to a follower that takes runs; compacted runs, holes and older
    /// followers get them one by one. Past the durable end, the batch this node is syncing
    /// goes as it was handed out, so the follower syncs it while this node does.
    fn read(&self, t: &Topic, from: u64) -> wal::Result<Option<(Vec<Bytes>, Bytes, u64)>> {
        let log = t.log();
        if from >= log.durable_offset() {
            let early = log
                .tail()
                .filter(|_| self.takes_runs)
                .and_then(|tail| early_run(&tail, from));
            return Ok(early.map(|(run, next)| (Vec::new(), run, next)));
        }
        if self.takes_runs {
            if let Some((run, next)) = log.read_run(from, MAX_RECORDS_BYTES)? {
                return Ok(Some((Vec::new(), run, next)));
            }
        }
        let (records, next) = log.read_records(from, MAX_RECORDS_BYTES)?;
        Ok(Some((records, Bytes::new(), next)))
    }

    /// This leader's copy of `topic` fails its checksums where a follower needs it: no
    /// follower can copy past the damage from here. While another member of the in-sync
    /// set could take over (connected, holding every commit point), this node leaves the
    /// cluster as after a failed sync, and one of them is elected; restarted, this node
    /// finds the damage at startup and copies the frames back once repaired. With no such
    /// member it leads on: it holds the only copy there is.
    fn damaged(&self, topic: &str, e: &wal::Error) {
        let successors = self.leader.successors();
        if successors.is_empty() {
            let key = format!("damage {} {topic}", self.follower);
            if let Some(repeated) = self.leader.repeats.lock().due(&key, Instant::now()) {
                error!(follower = %self.follower, topic = %topic, error = %e, repeated, "damage in this leader's log where a follower needs it, and no other member could take over: leading on");
            }
            return;
        }
        error!(follower = %self.follower, topic = %topic, error = %e, successors = ?successors, "damage in this leader's log where a follower needs it: leaving the cluster so that an in-sync follower takes over");
        self.leader.topics.log_config().failure.raise(format!(
            "topic '{topic}': damage found while shipping to {}: {e}",
            self.follower
        ));
    }

    /// Sends `topic`'s commit point if it moved since last sent.
    async fn send_commit(&mut self, topic: &Topic) -> Result<(), Gone> {
        let commit = topic.visible_offset();
        let Some(s) = self.positions.get_mut(topic.name()) else {
            return Ok(());
        };
        if s.epoch != topic.meta().epoch || s.commit == Some(commit) {
            return Ok(());
        }
        s.commit = Some(commit);
        self.send(Update::Commit(rp::ReplicaCommit {
            topic: topic.name().to_string(),
            offset: commit,
        }))
        .await
    }

    /// Sends `topic`'s oldest retained offset if this node's retention moved it since last
    /// sent: the follower removes the same frames from its copy.
    async fn send_retention(&mut self, topic: &Arc<Topic>) -> Result<(), Gone> {
        let (first, removals) = topic.log().retention_passes();
        let Some(s) = self.positions.get_mut(topic.name()) else {
            return Ok(());
        };
        if s.epoch != topic.meta().epoch || !s.announced || first <= s.first {
            return Ok(());
        }
        // Every record shipped lands before the follower applies this: its copy ends
        // before `first`, and starts again there, only when shipping had not reached it.
        let restarts = s.next < first;
        s.first = first;
        s.next = s.next.max(first);
        let epoch = s.epoch;
        if restarts {
            self.send_keys(topic, first).await?;
        }
        self.send(Update::Retention(rp::ReplicaRetention {
            topic: topic.name().to_string(),
            epoch,
            first_offset: first,
            removed_max_key: removals.largest().map(wire_key),
            removals: wire_removals(&removals),
        }))
        .await
    }

    fn apply_report(&mut self, report: rp::FollowerReport) -> Result<(), Gone> {
        if report.term != self.leader.term {
            warn!(follower = %self.follower, term = report.term, "follower reports another term; ending its stream");
            return Err(Gone);
        }
        if report.roster > 0 {
            self.leader.insync.lock().roster_reported(
                FollowerStream {
                    follower: &self.follower,
                    session: self.id,
                },
                report.roster,
            );
            self.leader.roster_answered();
        }
        for p in report.positions {
            let Some(shipped) = self.positions.get(&p.topic).filter(|s| s.epoch == p.epoch) else {
                continue;
            };
            // A follower holds at most what this stream sent it: a report past that (one
            // sent before the follower applied a cut, or a faulty or forged one) counts
            // only up to it, so it can never move the commit point over frames that exist
            // on the leader alone.
            let durable = p.next_offset.min(shipped.next);
            self.leader
                .reported(&self.follower, self.id, &p.topic, p.epoch, durable);
        }
        Ok(())
    }
}

/// What a follower session sends next of a dirty topic.
enum Next {
    Nothing,
    Send(rp::LeaderUpdate),
    /// Retention removed what the follower needs next: the keys of the removed frames below
    /// the offset, then the decision that makes it start its copy again there.
    Restart(Arc<Topic>, u64, Update),
}

/// Bytes `keys` take in a [`rp::ReplicaKeys`] message, counted generously.
fn key_bytes(keys: &[wal::removed_keys::Kept]) -> usize {
    keys.iter().map(|(k, _)| k.len() + KEY_OVERHEAD).sum()
}

/// `keys` as the contents of messages of up to [`MAX_RECORDS_BYTES`] each.
fn key_messages(keys: Vec<wal::removed_keys::Kept>) -> Vec<Vec<rp::ReplicaKey>> {
    let mut messages = Vec::new();
    let (mut message, mut bytes) = (Vec::new(), 0);
    for (key, ack) in keys {
        bytes += key.len() + KEY_OVERHEAD;
        message.push(rp::ReplicaKey {
            key: Bytes::from(key.into_vec()),
            offset: ack.offset,
            timestamp: ack.timestamp,
            stored_at: ack.stored_at,
        });
        if bytes >= MAX_RECORDS_BYTES {
            messages.push(std::mem::take(&mut message));
            bytes = 0;
        }
    }
    if !message.is_empty() {
        messages.push(message);
    }
    messages
}

/// Where `topic`'s records to ship end: its durable end, or the end of the batch it is
/// syncing when that was handed out early.
fn shippable_end(topic: &Topic) -> u64 {
    let durable = topic.log().durable_offset();
    topic.log().tail().map_or(durable, |t| t.end.max(durable))
}

/// The records of `tail` from offset `from` on, up to [`MAX_RECORDS_BYTES`] (at least one
/// record), and the next offset; `None` unless `from` starts the tail. The committer
/// wrote these bytes itself: the follower checks each record on arrival.
fn early_run(tail: &wal::Tail, from: u64) -> Option<(Bytes, u64)> {
    if from != tail.start || tail.end <= from {
        return None;
    }
    if tail.records.len() <= MAX_RECORDS_BYTES {
        return Some((tail.records.clone(), tail.end));
    }
    // A batch larger than a message goes in pieces: the first here, the rest from the log
    // once durable.
    let (mut end, mut next) = (0usize, from);
    for (at, step) in wal::record::Walk::new(&tail.records, 0).expecting(from) {
        let (len, to) = match step {
            wal::record::Step::Record(r, len) => (len, r.offset + 1),
            wal::record::Step::Gap(g, len) => (len, g.end()),
            wal::record::Step::Invalid(_) | wal::record::Step::End => break,
        };
        if end > 0 && at + len > MAX_RECORDS_BYTES {
            break;
        }
        (end, next) = (at + len, to);
    }
    (end > 0).then(|| (tail.records.slice(..end), next))
}

fn term_start(t: &rp::TermStart) -> TermStart {
    TermStart {
        term: t.term,
        start: t.start,
    }
}

/// A term history as sent.
pub fn wire_terms(h: &TermHistory) -> Vec<rp::TermStart> {
    h.entries()
        .iter()
        .map(|e| rp::TermStart {
            term: e.term,
            start: e.start,
        })
        .collect()
}

/// A term history as received, checked.
pub fn from_wire_terms(terms: &[rp::TermStart]) -> crate::broker::error::Result<TermHistory> {
    TermHistory::from_entries(terms.iter().map(term_start).collect())
}

fn replica_topic(t: &Topic) -> rp::ReplicaTopic {
    let m = t.meta();
    let (first_offset, removals) = t.log().retention_passes();
    rp::ReplicaTopic {
        name: t.name().to_string(),
        epoch: m.epoch,
        retention_max_age_seconds: m.retention_max_age_seconds,
        retention_max_bytes: m.retention_max_bytes,
        first_offset,
        terms: wire_terms(&t.terms()),
        removed_max_key: removals.largest().map(wire_key),
        removals: wire_removals(&removals),
        leader_end: Some(t.log().durable_offset()),
    }
}

/// Retention's passes as sent.
fn wire_removals(r: &Removals) -> Vec<rp::RemovalPass> {
    r.passes()
        .iter()
        .map(|&(cutoff, largest)| rp::RemovalPass {
            cutoff,
            largest: Some(wire_key(largest)),
        })
        .collect()
}

/// Retention's passes as received: the leader's passes, or, from a leader that does not
/// send them, its largest removed key counted as removed by one pass up to `first`.
pub fn from_wire_removals(
    passes: &[rp::RemovalPass],
    largest: Option<&rp::OrderKey>,
    first: u64,
) -> Removals {
    let stored: Vec<_> = passes
        .iter()
        .filter_map(|p| {
            let k = from_wire_key(p.largest.as_ref()?);
            Some((p.cutoff, (k.seq_no, k.timestamp, k.offset)))
        })
        .collect();
    Removals::from_stored(&stored, largest.map(from_wire_key), first)
}

/// An order key as sent.
pub fn wire_key(k: OrderKey) -> rp::OrderKey {
    rp::OrderKey {
        seq_no: k.seq_no,
        timestamp: k.timestamp,
        offset: k.offset,
    }
}

/// An order key as received.
pub fn from_wire_key(k: &rp::OrderKey) -> OrderKey {
    OrderKey {
        seq_no: k.seq_no,
        timestamp: k.timestamp,
        offset: k.offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(max_record_bytes: u64) -> rp::FollowerReport {
        rp::FollowerReport {
            term: 1,
            node_id: "n2".into(),
            positions: Vec::new(),
            takes_runs: true,
            max_record_bytes,
            ..Default::default()
        }
    }

    #[test]
    fn a_follower_is_refused_when_its_segments_cannot_hold_the_largest_record() {
        let config = wal::LogConfig::default();
        let needs = config.largest_record();
        assert!(can_hold(&config, &first(needs)).is_ok());
        assert!(can_hold(&config, &first(needs + 1)).is_ok());
        assert!(
            can_hold(&config, &first(0)).is_ok(),
            "an older follower says nothing"
        );
        let refused = can_hold(&config, &first(needs - 1)).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let named = wal::LogConfig::segment_bytes_for(needs);
        assert!(
            refused
                .message()
                .contains(&format!("--segment-bytes {named} or more")),
            "{}",
            refused.message()
        );
        // The segment size it names holds that record.
        let fixed = wal::LogConfig {
            segment_bytes: named,
            ..wal::LogConfig::default()
        };
        assert_eq!(fixed.request_room(), needs);
        assert!(fixed.validate().is_ok());
    }
}
