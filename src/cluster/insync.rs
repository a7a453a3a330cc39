//! The leader's bookkeeping of its followers: how far each holds each topic durably, the
//! commit point those positions make, and who is in sync.
//!
//! Pure state, no I/O: the replication stream feeds it (what was sent, what a follower
//! reports durable) and the leader reads from it (commit points to announce, members to add
//! to or drop from the in-sync set in etcd). Kafka's rules: the commit point of a topic is
//! the smallest durable end among the in-sync members (the leader's own included) and the
//! followers joining the set, and never moves back; a follower is in sync while, for every
//! topic, it holds the leader's end or held the end it was last sent no more than `max_lag`
//! ago.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Whole ends sent and not yet held that one position remembers (the oldest forgotten
/// first: a report must then cover a later one, so a catch-up is never seen too early).
const SENT_WHOLE_KEPT: usize = 64;

/// How long a follower may take to join the in-sync set once it started (commit points
/// wait for it meanwhile) before it stops trying, and how long it waits before it tries
/// again the first time; each further failed try doubles the wait, up to
/// [`JOIN_WAIT_MAX`].
const JOIN_PATIENCE: Duration = Duration::from_secs(1);

/// The longest wait between two tries to join: a follower that keeps failing holds commit
/// points back for [`JOIN_PATIENCE`] at most once in this long.
const JOIN_WAIT_MAX: Duration = Duration::from_secs(16);

/// A follower whose last try to join the set failed.
#[derive(Debug, Clone, Copy)]
struct Cooling {
    /// When it may try again.
    until: Instant,
    /// Tries failed in a row.
    failed: u32,
}

/// How far one follower stands in one topic.
#[derive(Debug, Clone)]
struct Position {
    /// First offset the follower does not hold durably.
    durable: u64,
    /// The ends the leader sent up to while each was its whole end, and when, oldest
    /// first, until the follower holds them. Under steady load the leader sends the next
    /// end before the follower reports the last one, so one slot would never be held.
    sent_whole: VecDeque<(u64, Instant)>,
    /// When the follower last held everything it had been sent as the leader's whole end;
    /// until it first did, when its position was first known.
    caught_up_at: Instant,
    /// True once the follower held a whole end it was sent.
    caught: bool,
}

/// A topic whose commit point moved: its name, the epoch the point is of (the topic may
/// have been deleted and created again since; the new one must not take it) and the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The topic.
    pub topic: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its new commit point.
    pub commit: u64,
}

/// Who reports (or is sent) a position: a follower, over one of its streams.
#[derive(Debug, Clone, Copy)]
pub struct FollowerStream<'a> {
    /// The follower's node id.
    pub follower: &'a str,
    /// Which of its streams (see [`InSync::connected`]).
    pub session: u64,
}

/// One follower as the leader knows it.
#[derive(Debug, Default)]
struct Follower {
    /// When the leader first heard of it in this term.
    first_seen: Option<Instant>,
    topics: HashMap<String, Position>,
    /// The stream its positions come from: a new stream starts them over (the follower
    /// reports again what it holds, which may be less: a node whose disk was replaced), and
    /// what an older stream still says is ignored.
    session: u64,
    /// True once the stream's first report is in: every topic the follower holds has a
    /// position, so one it lacks is lacked for real.
    handshaken: bool,
    /// The last roster mark the follower holds (every topic creation and deletion up to
    /// that roster version is durable on it); `None` for a follower that takes no marks
    /// (it predates them: its word on creations and deletions is not waited for).
    roster: Option<u64>,
}

/// The in-sync set and the commit points of every topic, as the leader keeps them.
#[derive(Debug)]
pub struct InSync {
    leader: String,
    max_lag: Duration,
    /// Members of the in-sync set besides the leader.
    members: BTreeSet<String>,
    /// Followers joining the set, and when each started: caught up within `max_lag` but
    /// not yet holding every commit point. Commit points wait for them (so they get there:
    /// under load a follower seldom holds every busy topic's commit point at one instant
    /// otherwise); etcd does not name them yet.
    joining: HashMap<String, Instant>,
    /// Followers whose last tries to join failed.
    cooling: HashMap<String, Cooling>,
    /// Each follower's positions.
    positions: HashMap<String, Follower>,
    /// When each follower whose stream ended (no newer one yet) lost it: its lag counts
    /// from then, not from the term's start, until its next stream reports.
    gone: HashMap<String, Instant>,
    /// When this bookkeeping started (the term began).
    created: Instant,
    /// The leader's own durable end per topic.
    ends: HashMap<String, u64>,
    /// When each topic first had an end here: a follower cannot lag in a topic for longer
    /// than the topic has existed (created after it connected, the follower's first report
    /// of it is not yet in).
    appeared: HashMap<String, Instant>,
    /// The commit point per topic (monotonic).
    commits: HashMap<String, u64>,
    /// The epoch each topic's entries are of: a topic deleted and created again under the
    /// same name starts over, no position or commit point of the old one carried into it.
    epochs: HashMap<String, u64>,
    /// Roster versions a CreateTopic or DeleteTopic waits for, with when the wait began,
    /// until every member and joiner holds them: a member that does not answer within
    /// `max_lag` lags.
    roster_waits: BTreeMap<u64, Instant>,
    /// The latest roster version any CreateTopic or DeleteTopic waited for: a follower
    /// joins the set only once it holds it (an acknowledged creation or deletion is on
    /// every member).
    roster_floor: u64,
}

impl InSync {
    /// The bookkeeping of leader `leader` whose in-sync set also holds `members`.
    pub fn new(
        leader: &str,
        members: impl IntoIterator<Item = String>,
        max_lag: Duration,
        now: Instant,
    ) -> InSync {
        InSync {
            leader: leader.to_string(),
            max_lag,
            members: members.into_iter().filter(|m| m != leader).collect(),
            joining: HashMap::new(),
            cooling: HashMap::new(),
            positions: HashMap::new(),
            gone: HashMap::new(),
            created: now,
            ends: HashMap::new(),
            appeared: HashMap::new(),
            commits: HashMap::new(),
            epochs: HashMap::new(),
            roster_waits: BTreeMap::new(),
            roster_floor: 0,
        }
    }

    /// The in-sync set, the leader first.
    pub fn set(&self) -> Vec<String> {
        std::iter::once(self.leader.clone())
            .chain(self.members.iter().cloned())
            .collect()
    }

    /// The leader's durable end of `topic` (of `epoch`) moved to `end` (as of `now`);
    /// returns the new commit point if it moved.
    pub fn leader_durable(
        &mut self,
        topic: &str,
        epoch: u64,
        end: u64,
        now: Instant,
    ) -> Option<u64> {
        self.own_epoch(topic, epoch);
        // Looked up first: this runs at every commit, and a known topic needs no new key.
        if !self.appeared.contains_key(topic) {
            self.appeared.insert(topic.to_string(), now);
        }
        let before = self.ends.insert(topic.to_string(), end).unwrap_or(0);
        if end > before {
            // Whoever held the whole end held it until now: a follower's lag counts from
            // when the leader's end passed what it holds, not from when it was last sent
            // an end (a topic idle for longer than the lag would drop it at its next frame).
            for f in self.positions.values_mut() {
                if let Some(p) = f.topics.get_mut(topic) {
                    if p.durable >= before {
                        p.caught_up_at = p.caught_up_at.max(now);
                        p.caught = true;
                    }
                }
            }
        }
        self.recompute(topic)
    }

    /// The leader sent `follower` the records of `topic` up to `until`, its whole durable end
    /// when `whole` (so holding `until` means holding everything, as of `now`).
    pub fn sent(
        &mut self,
        FollowerStream { follower, session }: FollowerStream<'_>,
        topic: &str,
        epoch: u64,
        until: u64,
        whole: bool,
        now: Instant,
    ) {
        if !self.current(follower, session) || !self.same_epoch(topic, epoch) {
            return;
        }
        let p = self.position(follower, session, topic, now);
        if whole {
            if p.sent_whole.len() == SENT_WHOLE_KEPT {
                p.sent_whole.pop_front();
            }
            p.sent_whole.push_back((until, now));
        }
    }

    /// `follower` reports `topic` durable up to `durable`; returns the new commit point if it
    /// moved.
    pub fn reported(
        &mut self,
        FollowerStream { follower, session }: FollowerStream<'_>,
        topic: &str,
        epoch: u64,
        durable: u64,
        now: Instant,
    ) -> Option<u64> {
        if !self.current(follower, session) || !self.same_epoch(topic, epoch) {
            return None;
        }
        let p = self.position(follower, session, topic, now);
        p.durable = p.durable.max(durable);
        while let Some(&(until, at)) = p.sent_whole.front() {
            if p.durable < until {
                break;
            }
            p.sent_whole.pop_front();
            p.caught_up_at = p.caught_up_at.max(at);
            p.caught = true;
        }
        self.recompute(topic)
    }

    /// The commit point of `topic`: every offset below it is durable on every in-sync member.
    pub fn commit(&self, topic: &str) -> u64 {
        self.commits.get(topic).copied().unwrap_or(0)
    }

    /// How far `follower` holds each topic it reported, with the commit point as it stands
    /// for it (never past what it holds), in topic name order.
    pub fn positions_of(&self, follower: &str) -> Vec<(String, u64, u64)> {
        let Some(f) = self.positions.get(follower) else {
            return Vec::new();
        };
        let mut out: Vec<(String, u64, u64)> = f
            .topics
            .iter()
            .map(|(t, p)| (t.clone(), p.durable, self.commit(t).min(p.durable)))
            .collect();
        out.sort();
        out
    }

    /// How many of the leader's frames each follower lacks, per topic: the leader's durable
    /// end minus what the follower holds (a topic it has not reported counts whole), as
    /// `(topic, follower, frames)`, in no order (this runs under the leader's lock: the
    /// caller sorts). Only followers whose stream's first report is in: of one without a
    /// stream the leader knows nothing now.
    pub fn lags(&self) -> Vec<(String, String, u64)> {
        let streams = self.positions.values().filter(|f| f.handshaken).count();
        let mut out = Vec::with_capacity(streams * self.ends.len());
        for (id, f) in self.positions.iter().filter(|(_, f)| f.handshaken) {
            for (topic, &end) in &self.ends {
                let held = f.topics.get(topic).map_or(0, |p| p.durable);
                out.push((topic.clone(), id.clone(), end.saturating_sub(held)));
            }
        }
        out
    }

    /// Forgets a deleted topic.
    pub fn remove_topic(&mut self, topic: &str) {
        self.ends.remove(topic);
        self.appeared.remove(topic);
        self.commits.remove(topic);
        self.epochs.remove(topic);
        for f in self.positions.values_mut() {
            f.topics.remove(topic);
        }
    }

    /// The topics known here, each with its epoch.
    pub fn known_topics(&self) -> Vec<(String, u64)> {
        self.epochs.iter().map(|(t, e)| (t.clone(), *e)).collect()
    }

    /// The epoch `topic` is known here with, if it is.
    pub fn known_epoch(&self, topic: &str) -> Option<u64> {
        self.epochs.get(topic).copied()
    }

    /// Forgets `topic` if it is still known with `epoch`: the leader no longer holds that
    /// topic (deleted, maybe while no follower's stream noticed: every follower would lack
    /// it for good). Known with another epoch since, it is left alone.
    pub fn forget_gone(&mut self, topic: &str, epoch: u64) {
        if self.epochs.get(topic) == Some(&epoch) {
            self.remove_topic(topic);
        }
    }

    /// Whether a follower's word on `topic` of `epoch` counts: the epoch known here, or
    /// the first known. One of another epoch is of a topic gone here (or not yet here): only
    /// the leader's own topics ([`InSync::leader_durable`]) move a topic to another epoch, so
    /// a late report of the old one does not wipe the new one's entries.
    fn same_epoch(&mut self, topic: &str, epoch: u64) -> bool {
        match self.epochs.get(topic) {
            Some(&e) => e == epoch,
            None => {
                self.epochs.insert(topic.to_string(), epoch);
                true
            }
        }
    }

    /// What is known of `topic` is of `epoch` from now on: entries of another epoch (the
    /// topic was deleted and created again) are forgotten first.
    fn own_epoch(&mut self, topic: &str, epoch: u64) {
        match self.epochs.get(topic) {
            Some(&e) if e == epoch => {}
            Some(_) => {
                self.remove_topic(topic);
                self.epochs.insert(topic.to_string(), epoch);
            }
            None => {
                self.epochs.insert(topic.to_string(), epoch);
            }
        }
    }

    /// Members to drop from the in-sync set: offline ones (`online` says who is), those
    /// lagging past `max_lag` in some topic as of `now`, and those back holding less than a
    /// commit point. The caller drops them in etcd first, then here with
    /// [`InSync::drop_member`].
    pub fn laggards(&self, online: &dyn Fn(&str) -> bool, now: Instant) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| !online(m) || self.lagging(m, now) || self.lost_committed(m))
            .cloned()
            .collect()
    }

    /// Members besides the leader that could take over now without losing a committed
    /// frame: connected (their stream's first report is in) and holding every commit
    /// point. A member whose stream ended (a crashed node, until its lease lapses) or that
    /// came back with less is not one.
    pub fn successors(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| {
                self.positions.get(*m).is_some_and(|f| f.handshaken) && !self.lost_committed(m)
            })
            .cloned()
            .collect()
    }

    /// A member whose current stream reported all it holds, and that is less than some
    /// commit point (commit points waited for it, so it lost frames: a replaced disk): it
    /// could be elected without them, so it leaves the set at once.
    fn lost_committed(&self, member: &str) -> bool {
        let Some(f) = self.positions.get(member).filter(|f| f.handshaken) else {
            return false;
        };
        self.commits.iter().any(|(topic, &commit)| {
            self.ends.contains_key(topic) && f.topics.get(topic).map_or(0, |p| p.durable) < commit
        })
    }

    /// Followers outside the set that are ready to join it: caught up (for every topic the
    /// leader holds, they hold its end or caught up within `max_lag`) and holding every
    /// commit point. The caller adds each here with [`InSync::add_member`], then in etcd.
    pub fn caught_up(&self, online: &dyn Fn(&str) -> bool, now: Instant) -> Vec<String> {
        self.positions
            .keys()
            .filter(|f| !self.members.contains(*f) && online(f) && self.holds_up(f, now))
            .cloned()
            .collect()
    }

    /// Moves followers towards the set, as of `now`: an outsider caught up within
    /// `max_lag` (not yet holding every commit point) starts joining, and commit points
    /// wait for it from then on; a joiner that went offline, fell behind or has not got
    /// there within [`JOIN_PATIENCE`] stops (and waits before it tries again: 1 s after a
    /// first failed try, doubling with each further one up to [`JOIN_WAIT_MAX`]).
    /// Returns the topics whose commit point moved, with the new point.
    pub fn tend_joiners(&mut self, online: &dyn Fn(&str) -> bool, now: Instant) -> Vec<Moved> {
        let stop: Vec<String> = self
            .joining
            .iter()
            .filter(|(f, since)| {
                !online(f)
                    || !self.near(f, now)
                    || (now.saturating_duration_since(**since) > JOIN_PATIENCE
                        && !self.holds_up(f, now))
            })
            .map(|(f, _)| f.clone())
            .collect();
        for f in &stop {
            self.joining.remove(f);
            let failed = self.cooling.get(f).map_or(0, |c| c.failed) + 1;
            let wait = JOIN_PATIENCE
                .saturating_mul(1 << (failed - 1).min(16))
                .min(JOIN_WAIT_MAX);
            self.cooling.insert(
                f.clone(),
                Cooling {
                    until: now + wait,
                    failed,
                },
            );
        }
        let start: Vec<String> = self
            .positions
            .keys()
            .filter(|f| {
                !self.members.contains(*f)
                    && !self.joining.contains_key(*f)
                    && self.cooling.get(*f).is_none_or(|c| now >= c.until)
                    && online(f)
                    && self.near(f, now)
            })
            .cloned()
            .collect();
        for f in start {
            self.joining.insert(f, now);
        }
        if stop.is_empty() {
            return Vec::new();
        }
        self.forget_settled_waits();
        self.recompute_all()
    }

    /// Removes `member` from the set (after etcd says so); commit points may move.
    /// Returns the topics whose commit point moved, with the new point.
    pub fn drop_member(&mut self, member: &str) -> Vec<Moved> {
        self.members.remove(member);
        self.forget_settled_waits();
        self.recompute_all()
    }

    /// Adds `member` to the set if it is caught up as of `now` and holds every commit point
    /// (they never move back); whether it is in the set now. The caller adds it here
    /// before etcd: from then on no commit point passes what it holds, so it holds every
    /// committed frame once etcd names it in sync and it may be elected.
    pub fn add_member(&mut self, member: &str, now: Instant) -> bool {
        if member == self.leader || self.members.contains(member) {
            return true;
        }
        if !self.holds_up(member, now) {
            return false;
        }
        self.joining.remove(member);
        self.cooling.remove(member);
        self.members.insert(member.to_string());
        true
    }

    /// `follower` opened its stream `session` (as of `now`): known from now on, even before
    /// it reports any topic, so that a follower of a leader without topics can be in sync.
    /// Positions of an earlier stream are forgotten: the new one reports them again.
    /// An older stream than the one of record changes nothing. A follower that was joining
    /// the set stops (no failed try: it starts again with what the new stream reports);
    /// returns the topics whose commit point moved then, with the new point.
    pub fn connected(&mut self, follower: &str, session: u64, now: Instant) -> Vec<Moved> {
        let fresh = Follower {
            first_seen: Some(now),
            topics: HashMap::new(),
            session,
            handshaken: false,
            roster: None,
        };
        match self.positions.get_mut(follower) {
            Some(f) if f.session >= session => return Vec::new(),
            Some(f) => *f = fresh,
            None => {
                self.positions.insert(follower.to_string(), fresh);
            }
        }
        self.gone.remove(follower);
        if self.joining.remove(follower).is_none() {
            return Vec::new();
        }
        self.forget_settled_waits();
        self.recompute_all()
    }

    /// `topic` (of `epoch`) is committed up to `commit` already (a new leader's commit point
    /// from the term before): every member holds it, and a follower joins only once it
    /// does too.
    pub fn committed(&mut self, topic: &str, epoch: u64, commit: u64) {
        self.own_epoch(topic, epoch);
        let c = self.commits.entry(topic.to_string()).or_insert(0);
        *c = (*c).max(commit);
    }

    /// The first report of `follower`'s stream `session` is in: every topic it holds has a
    /// position.
    pub fn handshaken(&mut self, follower: &str, session: u64) {
        if let Some(f) = self.stream_mut(follower, session) {
            f.handshaken = true;
        }
    }

    /// `follower`'s stream `session` was ended for its token's expiry, to be followed
    /// again at once: its positions stand (it holds what it reported), so it keeps its place
    /// in the set, but without a stream it is no successor, shows no lag and answers no
    /// topic change until its next stream's first report is in.
    pub fn stream_expired(&mut self, follower: &str, session: u64) {
        if let Some(f) = self.stream_mut(follower, session) {
            f.handshaken = false;
        }
    }

    /// Forgets a follower's positions (its stream `session` ended, and no newer one has
    /// begun); it stays in the set until dropped, and stops joining it. Returns the topics
    /// whose commit point moved (a joiner no longer holds them back), with the new point.
    pub fn forget_follower(&mut self, follower: &str, session: u64, now: Instant) -> Vec<Moved> {
        if !self.current(follower, session) {
            return Vec::new();
        }
        self.positions.remove(follower);
        self.gone.insert(follower.to_string(), now);
        if self.joining.remove(follower).is_none() {
            return Vec::new();
        }
        self.forget_settled_waits();
        self.recompute_all()
    }

    /// `follower`'s stream `session` takes roster marks: from now on a CreateTopic or
    /// DeleteTopic waits for its word ([`InSync::roster_held`]). Said before its first
    /// report is in, so no wait passes it by meanwhile.
    pub fn takes_roster(&mut self, FollowerStream { follower, session }: FollowerStream<'_>) {
        if let Some(f) = self.stream_mut(follower, session) {
            f.roster = Some(f.roster.unwrap_or(0));
        }
    }

    /// `follower` holds every topic creation and deletion up to roster version `version`
    /// (its answer to a mark); waits it settles are forgotten.
    pub fn roster_reported(
        &mut self,
        FollowerStream { follower, session }: FollowerStream<'_>,
        version: u64,
    ) {
        let Some(f) = self.stream_mut(follower, session) else {
            return;
        };
        if let Some(r) = f.roster.as_mut() {
            *r = (*r).max(version);
        }
        self.forget_settled_waits();
    }

    /// A CreateTopic or DeleteTopic waits (from `now`) until every member holds roster
    /// version `version`.
    pub fn want_roster(&mut self, version: u64, now: Instant) {
        self.roster_floor = self.roster_floor.max(version);
        self.roster_waits.entry(version).or_insert(now);
        // Held already (a CreateTopic of a topic that exists): no wait to remember.
        self.forget_settled_waits();
    }

    /// Whether every member of the set and every joiner holds roster version `version`: a
    /// member without a stream does not (until it is dropped), one that takes no marks is
    /// not asked.
    pub fn roster_held(&self, version: u64) -> bool {
        self.members
            .iter()
            .chain(self.joining.keys())
            .all(|m| self.holds_roster(m, version))
    }

    /// Whether `follower` holds roster version `version`: its current stream's first
    /// report is in (an entry an older stream's late word made holds nothing) and it
    /// answered a mark at or past it, or takes no marks.
    fn holds_roster(&self, follower: &str, version: u64) -> bool {
        self.positions
            .get(follower)
            .is_some_and(|f| f.handshaken && f.roster.is_none_or(|r| r >= version))
    }

    /// Forgets the waits every member and joiner has answered.
    fn forget_settled_waits(&mut self) {
        while let Some((&version, _)) = self.roster_waits.first_key_value() {
            if !self.roster_held(version) {
                break;
            }
            self.roster_waits.pop_first();
        }
    }

    /// A roster version waited for since longer than `max_lag` that `follower` does not
    /// hold.
    fn roster_lagging(&self, follower: &str, now: Instant) -> bool {
        // A stream that began after the wait gets the whole lag from its start.
        let seen = self.positions.get(follower).and_then(|f| f.first_seen);
        self.roster_waits.iter().any(|(&version, &since)| {
            let since = seen.map_or(since, |s| s.max(since));
            now.saturating_duration_since(since) > self.max_lag
                && !self.holds_roster(follower, version)
        })
    }

    /// `follower`'s entry, if `session` is its stream of record.
    fn stream_mut(&mut self, follower: &str, session: u64) -> Option<&mut Follower> {
        self.positions
            .get_mut(follower)
            .filter(|f| f.session == session)
    }

    /// Whether `session` is `follower`'s stream of record (or none is known).
    fn current(&self, follower: &str, session: u64) -> bool {
        self.positions
            .get(follower)
            .is_none_or(|f| f.session == session)
    }

    /// Some topic is behind the leader's end for longer than `max_lag`: since the follower
    /// last caught up in it, or since it was first seen (or the term began) if never. Or a
    /// topic creation or deletion waited for longer than that is not held.
    fn lagging(&self, follower: &str, now: Instant) -> bool {
        if self.roster_lagging(follower, now) {
            return true;
        }
        let f = self.positions.get(follower);
        let seen = f
            .and_then(|f| f.first_seen)
            .or_else(|| self.gone.get(follower).copied())
            .unwrap_or(self.created);
        self.ends.iter().any(|(topic, &end)| {
            let first = self.appeared.get(topic).map_or(seen, |&a| a.max(seen));
            let (held, since) = match f.and_then(|f| f.topics.get(topic)) {
                Some(p) => (p.durable, if p.caught { p.caught_up_at } else { first }),
                None => (0, first),
            };
            held < end && now.saturating_duration_since(since) > self.max_lag
        })
    }

    /// [`InSync::near`], and every topic held to its commit point at least: a member that
    /// lacked committed frames could be elected without them (Kafka's rule: a follower
    /// rejoins once it holds the high watermark).
    fn holds_up(&self, follower: &str, now: Instant) -> bool {
        let Some(f) = self.positions.get(follower) else {
            return false;
        };
        self.near(follower, now)
            && f.roster.is_none_or(|r| r >= self.roster_floor)
            && self.ends.keys().all(|topic| {
                let held = f.topics.get(topic).map_or(0, |p| p.durable);
                held >= self.commit(topic)
            })
    }

    /// Every topic held to the leader's end, or caught up (for real) within `max_lag`.
    fn near(&self, follower: &str, now: Instant) -> bool {
        let Some(f) = self.positions.get(follower) else {
            return false;
        };
        self.ends
            .iter()
            .all(|(topic, &end)| match f.topics.get(topic) {
                Some(p) => {
                    p.durable >= end
                        || (p.caught
                            && now.saturating_duration_since(p.caught_up_at) <= self.max_lag)
                }
                None => end == 0,
            })
    }

    fn position(
        &mut self,
        follower: &str,
        session: u64,
        topic: &str,
        now: Instant,
    ) -> &mut Position {
        let f = self
            .positions
            .entry(follower.to_string())
            .or_insert_with(|| Follower {
                session,
                ..Follower::default()
            });
        let seen = *f.first_seen.get_or_insert(now);
        f.topics.entry(topic.to_string()).or_insert(Position {
            durable: 0,
            sent_whole: VecDeque::new(),
            caught_up_at: seen,
            caught: false,
        })
    }

    /// [`InSync::recompute`] for every topic; the topics whose commit point moved, with
    /// the new point.
    fn recompute_all(&mut self) -> Vec<Moved> {
        let topics: Vec<String> = self.ends.keys().cloned().collect();
        topics
            .into_iter()
            .filter_map(|topic| {
                let commit = self.recompute(&topic)?;
                let epoch = *self.epochs.get(&topic)?;
                Some(Moved {
                    topic,
                    epoch,
                    commit,
                })
            })
            .collect()
    }

    fn recompute(&mut self, topic: &str) -> Option<u64> {
        let mut commit = self.ends.get(topic).copied().unwrap_or(0);
        for m in self.members.iter().chain(self.joining.keys()) {
            let held = self
                .positions
                .get(m)
                .and_then(|f| f.topics.get(topic))
                .map_or(0, |p| p.durable);
            commit = commit.min(held);
        }
        let old = self.commits.entry(topic.to_string()).or_insert(0);
        if commit > *old {
            *old = commit;
            Some(commit)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LAG: Duration = Duration::from_secs(10);

    fn on(follower: &str, session: u64) -> FollowerStream<'_> {
        FollowerStream { follower, session }
    }

    /// Topic `topic` of epoch 1 (every test's) moved to `commit`.
    fn moved(topic: &str, commit: u64) -> Vec<Moved> {
        vec![Moved {
            topic: topic.into(),
            epoch: 1,
            commit,
        }]
    }

    /// [`with_member_b`], b holding topic t's whole end, 10, as of `t0`.
    fn b_holding_t_to_10(t0: Instant) -> InSync {
        let mut s = with_member_b(t0);
        s.leader_durable("t", 1, 10, t0);
        s.sent(on("b", 1), "t", 1, 10, true, t0);
        s.reported(on("b", 1), "t", 1, 10, t0);
        s
    }

    /// b (always online) is no laggard until a lag has passed since `since`, and is one
    /// right after.
    fn dropped_a_lag_after(s: &InSync, since: Instant) {
        let online = |_: &str| true;
        let just = Duration::from_millis(1);
        assert!(s.laggards(&online, since + LAG - just).is_empty());
        assert_eq!(s.laggards(&online, since + LAG + just), ["b"]);
    }

    /// Leader a's bookkeeping with member b, whose stream 1 (opened at `t0`) takes roster
    /// marks and reported no topic.
    fn with_member_b(t0: Instant) -> InSync {
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        marked_stream(&mut s, "b", 1, t0);
        s
    }

    /// `follower`'s stream `session`, opened at `now`, takes roster marks; its first report
    /// (of no topic) is in.
    fn marked_stream(s: &mut InSync, follower: &str, session: u64, now: Instant) {
        s.connected(follower, session, now);
        s.takes_roster(on(follower, session));
        s.handshaken(follower, session);
    }

    #[test]
    fn the_commit_point_is_the_smallest_durable_end_of_the_set_and_never_moves_back() {
        let t0 = Instant::now();
        let mut s = InSync::new("a", ["b".to_string(), "c".to_string()], LAG, t0);
        assert_eq!(s.set(), ["a", "b", "c"]);
        assert_eq!(
            s.leader_durable("t", 1, 10, t0),
            None,
            "followers hold nothing yet"
        );
        assert_eq!(
            s.reported(on("b", 1), "t", 1, 10, t0),
            None,
            "c holds nothing yet"
        );
        assert_eq!(s.reported(on("c", 1), "t", 1, 7, t0), Some(7));
        assert_eq!(s.commit("t"), 7);
        assert_eq!(
            s.reported(on("c", 1), "t", 1, 12, t0),
            Some(10),
            "bounded by the leader's end"
        );
        assert_eq!(
            s.reported(on("c", 1), "t", 1, 5, t0),
            None,
            "a stale report changes nothing"
        );
        assert_eq!(s.commit("t"), 10);
        assert_eq!(s.commit("other"), 0);
        // Dropping a member who holds less lets the commit point move without it.
        s.leader_durable("t", 1, 20, t0);
        s.reported(on("b", 1), "t", 1, 20, t0);
        assert_eq!(s.commit("t"), 12);
        assert_eq!(s.drop_member("c"), moved("t", 20));
        assert_eq!(s.set(), ["a", "b"]);
    }

    #[test]
    fn a_member_that_never_reports_is_dropped_after_the_lag_not_before() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        s.leader_durable("t", 1, 5, t0);
        assert!(s.laggards(&online, t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(s.laggards(&online, t0 + Duration::from_secs(11)), ["b"]);
        // Nothing to hold: never lagging.
        let mut idle = InSync::new("a", ["b".to_string()], LAG, t0);
        idle.leader_durable("t", 1, 0, t0);
        assert!(idle
            .laggards(&online, t0 + Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn a_leader_alone_commits_what_it_holds() {
        let mut s = InSync::new("a", Vec::new(), LAG, Instant::now());
        assert_eq!(s.leader_durable("t", 1, 3, Instant::now()), Some(3));
    }

    #[test]
    fn in_sync_follows_the_last_time_a_follower_held_the_whole_end() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.sent(on("b", 1), "t", 1, 100, true, t0);
        s.reported(on("b", 1), "t", 1, 50, t0 + Duration::from_secs(1));
        // Behind, but within the lag of its last catch-up (its first report).
        assert!(s.laggards(&online, t0 + Duration::from_secs(5)).is_empty());
        // Holds the whole end it was sent at t0 + 2: caught up as of then.
        s.sent(on("b", 1), "t", 1, 150, true, t0 + Duration::from_secs(2));
        s.leader_durable("t", 1, 150, t0);
        s.reported(on("b", 1), "t", 1, 150, t0 + Duration::from_secs(3));
        s.leader_durable("t", 1, 400, t0);
        assert!(s.laggards(&online, t0 + Duration::from_secs(11)).is_empty());
        // Never catching up again: out once the lag has passed since t0 + 2.
        assert_eq!(s.laggards(&online, t0 + Duration::from_secs(13)), ["b"]);
        // Offline members go at once, whatever their lag.
        let offline = |m: &str| m != "b";
        s.reported(on("b", 1), "t", 1, 400, t0 + Duration::from_secs(13));
        assert_eq!(s.laggards(&offline, t0 + Duration::from_secs(13)), ["b"]);
    }

    #[test]
    fn a_follower_holding_an_idle_topics_end_is_no_laggard_at_its_next_frame() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = b_holding_t_to_10(t0);
        // Idle for longer than the lag; then one frame: b held the whole end until now.
        let later = t0 + LAG + Duration::from_secs(1);
        s.leader_durable("t", 1, 11, later);
        assert!(s.laggards(&online, later).is_empty());
        // Never getting it: out once the lag has passed since the end moved.
        dropped_a_lag_after(&s, later);
    }

    #[test]
    fn a_member_whose_stream_broke_has_the_lag_from_then_to_come_back() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = b_holding_t_to_10(t0);
        // Long into the term its stream breaks, and the leader's end moves on meanwhile.
        let broke = t0 + LAG * 2;
        s.forget_follower("b", 1, broke);
        s.leader_durable("t", 1, 20, broke);
        assert!(s
            .laggards(&online, broke + Duration::from_millis(10))
            .is_empty());
        // Not back within the lag: out.
        dropped_a_lag_after(&s, broke);
    }

    #[test]
    fn under_steady_load_a_follower_one_batch_behind_stays_in_sync() {
        // Every 10 ms the leader sends its next whole end before the follower reports the
        // one before (early shipping, pipelined appends): the follower always holds the end
        // it was sent one step ago, never the latest, for a minute.
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        for step in 1..=6_000u64 {
            let now = t0 + Duration::from_millis(step * 10);
            s.leader_durable("t", 1, step * 100, t0);
            s.sent(on("b", 1), "t", 1, step * 100, true, now);
            s.reported(on("b", 1), "t", 1, (step - 1) * 100, now);
            assert!(
                s.laggards(&online, now).is_empty(),
                "dropped at step {step}"
            );
        }
        // Once it stops reporting, it goes after the lag, counted from the last end it held.
        let last = t0 + Duration::from_millis(5_999 * 10);
        s.sent(
            on("b", 1),
            "t",
            1,
            700_000,
            true,
            last + Duration::from_secs(1),
        );
        dropped_a_lag_after(&s, last);
    }

    #[test]
    fn a_topic_created_long_after_a_follower_connected_is_no_lag_at_once() {
        // The follower connected at t0 and holds topic t; topic u appears at t0 + 60 s and
        // its first frames are durable on the leader before the follower reports u.
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        s.leader_durable("t", 1, 10, t0);
        s.sent(on("b", 1), "t", 1, 10, true, t0);
        s.reported(on("b", 1), "t", 1, 10, t0);
        let later = t0 + Duration::from_secs(60);
        s.leader_durable("u", 1, 0, later);
        s.leader_durable("u", 1, 5, later + Duration::from_millis(1));
        assert!(s
            .laggards(&online, later + Duration::from_millis(2))
            .is_empty());
        // Never copying u, the follower goes once the lag has passed since u appeared.
        dropped_a_lag_after(&s, later);
    }

    #[test]
    fn a_report_covering_only_forgotten_sends_is_no_catch_up() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        s.leader_durable("t", 1, 1_000_000, t0);
        // More whole ends sent than are kept: the oldest (sent at t0) is forgotten.
        for i in 0..=SENT_WHOLE_KEPT as u64 {
            s.sent(
                on("b", 1),
                "t",
                1,
                10 + i,
                true,
                t0 + Duration::from_secs(i * 20),
            );
        }
        // Holding only the forgotten first end tells nothing: still lagging since t0.
        s.reported(on("b", 1), "t", 1, 10, t0 + Duration::from_secs(2_000));
        assert_eq!(s.laggards(&online, t0 + Duration::from_secs(2_000)), ["b"]);
        // Holding the next one (sent at t0 + 20 s) is a catch-up as of then.
        s.reported(on("b", 1), "t", 1, 11, t0 + Duration::from_secs(2_000));
        assert!(s.laggards(&online, t0 + Duration::from_secs(25)).is_empty());
    }

    #[test]
    fn a_follower_outside_the_set_joins_once_caught_up_in_every_topic() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", Vec::new(), LAG, t0);
        s.leader_durable("t", 1, 10, t0);
        s.leader_durable("u", 1, 5, t0);
        s.sent(on("c", 1), "t", 1, 10, true, t0);
        s.reported(on("c", 1), "t", 1, 10, t0);
        // Topic u never sent: c holds none of it.
        assert!(s
            .caught_up(&online, t0 + Duration::from_secs(20))
            .is_empty());
        s.sent(on("c", 1), "u", 1, 5, true, t0 + Duration::from_secs(20));
        s.reported(on("c", 1), "u", 1, 5, t0 + Duration::from_secs(20));
        assert_eq!(s.caught_up(&online, t0 + Duration::from_secs(20)), ["c"]);
        assert!(s.add_member("c", t0 + Duration::from_secs(20)));
        assert_eq!(s.set(), ["a", "c"]);
        assert_eq!(s.commit("t"), 10);
        s.leader_durable("t", 1, 11, t0);
        assert_eq!(s.commit("t"), 10, "c must hold 11 first");
        s.remove_topic("t");
        assert_eq!(s.commit("t"), 0);
    }

    #[test]
    fn a_follower_caught_up_within_the_lag_joins_only_once_it_holds_the_commit_point() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        assert_eq!(s.commit("t"), 100);
        // c held the whole end it was sent (50) a moment ago, so it is caught up within the
        // lag; but frames up to 100 are committed and c holds 50 of them.
        s.sent(on("c", 1), "t", 1, 50, true, t0);
        s.reported(on("c", 1), "t", 1, 50, t0);
        let now = t0 + Duration::from_secs(1);
        assert!(s.caught_up(&online, now).is_empty());
        assert!(!s.add_member("c", now));
        assert_eq!(s.set(), ["a", "b"]);
        // Once it holds the commit point it joins, and commit points then wait for it.
        s.reported(on("c", 1), "t", 1, 100, now);
        assert_eq!(s.caught_up(&online, now), ["c"]);
        assert!(s.add_member("c", now));
        s.leader_durable("t", 1, 120, now);
        s.reported(on("b", 1), "t", 1, 120, now);
        assert_eq!(s.commit("t"), 100, "c must hold 120 first");
        s.reported(on("c", 1), "t", 1, 120, now);
        assert_eq!(s.commit("t"), 120);
    }

    #[test]
    fn a_joining_follower_holds_commit_points_until_it_holds_them_and_joins_under_load() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        let topics = ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"];
        // Steady load: every step the leader and b move 10 on; c holds what it was sent a
        // step ago, so in some topic it is always behind the commit point at one instant.
        let mut now = t0;
        let mut end = 0;
        let step = |s: &mut InSync, now: Instant, end: u64, c_lag: &dyn Fn(usize) -> u64| {
            for (i, t) in topics.iter().enumerate() {
                s.leader_durable(t, 1, end, now);
                s.reported(on("b", 1), t, 1, end, now);
                s.sent(on("c", 1), t, 1, end, true, now);
                s.reported(on("c", 1), t, 1, end.saturating_sub(c_lag(i)), now);
            }
        };
        for _ in 0..5 {
            end += 10;
            now += Duration::from_millis(100);
            step(&mut s, now, end, &|i| if i % 2 == 0 { 10 } else { 0 });
            assert!(
                s.caught_up(&online, now).is_empty(),
                "behind at every instant"
            );
        }
        // Joining: commit points wait for c from now on.
        assert!(s.tend_joiners(&online, now).is_empty());
        let frozen = s.commit("t0");
        end += 10;
        now += Duration::from_millis(100);
        step(&mut s, now, end, &|i| if i % 2 == 0 { 10 } else { 0 });
        assert_eq!(s.commit("t0"), frozen, "waits for c, one step behind");
        assert_eq!(s.commit("t1"), end, "c holds t1's end");
        assert_eq!(
            s.caught_up(&online, now),
            ["c"],
            "it holds every commit point"
        );
        assert!(s.add_member("c", now));
        assert_eq!(s.set(), ["a", "b", "c"]);
        assert!(s.tend_joiners(&online, now).is_empty());
    }

    /// Leader a with member b, both at 200 in topic t (committed to 100); c caught up
    /// to `held` (below 100) and joining, so the commit point waits for it.
    fn joining_c(held: u64, t0: Instant) -> InSync {
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        s.connected("c", 1, t0);
        s.sent(on("c", 1), "t", 1, held, true, t0);
        s.reported(on("c", 1), "t", 1, held, t0);
        s.tend_joiners(&online, t0);
        s.leader_durable("t", 1, 200, t0);
        assert_eq!(
            s.reported(on("b", 1), "t", 1, 200, t0),
            None,
            "c is joining"
        );
        s
    }

    #[test]
    fn a_joiner_that_does_not_get_there_in_time_stops_and_the_commit_points_move_on() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = joining_c(50, t0);
        assert_eq!(s.commit("t"), 100);
        // Within the patience nothing changes; past it c stops, the commit point moves.
        let soon = t0 + JOIN_PATIENCE / 2;
        assert!(s.tend_joiners(&online, soon).is_empty());
        let late = t0 + JOIN_PATIENCE + Duration::from_millis(1);
        assert_eq!(s.tend_joiners(&online, late), moved("t", 200));
        // Cooling: it does not start again at once, and the commit point is not held.
        s.leader_durable("t", 1, 300, late);
        assert_eq!(s.reported(on("b", 1), "t", 1, 300, late), Some(300));
        assert!(s.tend_joiners(&online, late).is_empty());
        assert_eq!(s.reported(on("b", 1), "t", 1, 300, late), None);
        // A joiner that goes offline stops at once.
        let again = late + JOIN_PATIENCE + Duration::from_millis(1);
        s.reported(on("c", 1), "t", 1, 250, again);
        s.sent(on("c", 1), "t", 1, 300, true, again);
        s.reported(on("c", 1), "t", 1, 280, again);
        s.tend_joiners(&online, again);
        s.leader_durable("t", 1, 400, again);
        assert_eq!(
            s.reported(on("b", 1), "t", 1, 400, again),
            None,
            "joining again"
        );
        let offline = |m: &str| m != "c";
        assert_eq!(s.tend_joiners(&offline, again), moved("t", 400));
    }

    #[test]
    fn a_topic_created_again_starts_over_and_one_deleted_unnoticed_is_forgotten() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into(), "c".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        s.reported(on("c", 1), "t", 1, 80, t0);
        assert_eq!(s.commit("t"), 80);
        // Deleted and created again (epoch 2): c copies the new topic fast, b slowly. The
        // old positions (b at 100) count for nothing: the commit point is b's 10.
        s.leader_durable("t", 2, 150, t0);
        assert_eq!(s.commit("t"), 0);
        s.reported(on("c", 1), "t", 2, 150, t0);
        s.reported(on("b", 1), "t", 2, 10, t0);
        assert_eq!(s.commit("t"), 10);
        // A topic deleted while no stream noticed: every follower lacks it, so both would
        // lag; once the leader's topics are retained, it is gone and nobody lags for it.
        s.leader_durable("u", 1, 5, t0);
        s.reported(on("b", 1), "t", 2, 150, t0);
        let later = t0 + LAG + Duration::from_secs(1);
        assert_eq!(s.laggards(&online, later), ["b", "c"]);
        assert_eq!(s.known_epoch("u"), Some(1));
        s.forget_gone("t", 1); // an epoch of t that is no more: nothing
        s.forget_gone("u", 1);
        assert!(s.laggards(&online, later).is_empty());
        assert_eq!(s.commit("t"), 150);
    }

    #[test]
    fn a_new_stream_starts_a_followers_positions_over_and_an_older_one_is_ignored() {
        let t0 = Instant::now();
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.connected("b", 1, t0);
        s.leader_durable("t", 1, 100, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        assert_eq!(s.commit("t"), 100);
        // b's disk was replaced: it connects again (stream 2) holding nothing, before the
        // leader noticed stream 1 is gone. What it holds now is what counts.
        s.connected("b", 2, t0);
        s.reported(on("b", 2), "t", 1, 0, t0);
        s.leader_durable("t", 1, 150, t0);
        assert_eq!(s.commit("t"), 100);
        // Stream 1 speaks late: ignored, and its end forgets nothing of stream 2's.
        assert_eq!(s.reported(on("b", 1), "t", 1, 150, t0), None);
        s.forget_follower("b", 1, t0);
        assert_eq!(s.positions_of("b"), [("t".to_string(), 0, 0)]);
        assert_eq!(s.commit("t"), 100);
        assert_eq!(s.reported(on("b", 2), "t", 1, 150, t0), Some(150));
        s.forget_follower("b", 2, t0);
        assert!(s.positions_of("b").is_empty());
        // A stream older than the one of record that connects late changes nothing.
        s.connected("b", 4, t0);
        s.reported(on("b", 4), "t", 1, 150, t0);
        s.connected("b", 3, t0);
        assert_eq!(s.positions_of("b"), [("t".to_string(), 150, 150)]);
    }

    #[test]
    fn lags_count_what_each_follower_with_a_stream_lacks_of_the_leaders_end() {
        let t0 = Instant::now();
        let mut s = InSync::new("a", vec!["b".into(), "c".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.leader_durable("u", 1, 7, t0);
        // Before its first report, nothing is known of b.
        s.connected("b", 1, t0);
        s.reported(on("b", 1), "t", 1, 60, t0);
        assert!(s.lags().is_empty());
        s.handshaken("b", 1);
        // u, which b has not reported, counts whole; c (no stream) has no figures.
        let mut lags = s.lags();
        lags.sort();
        assert_eq!(
            lags,
            [
                ("t".to_string(), "b".to_string(), 40),
                ("u".to_string(), "b".to_string(), 7)
            ]
        );
        s.reported(on("b", 1), "t", 1, 100, t0);
        s.reported(on("b", 1), "u", 1, 7, t0);
        assert!(s.lags().iter().all(|(_, _, n)| *n == 0));
        // Its stream ends: its figures go with it.
        s.forget_follower("b", 1, t0);
        assert!(s.lags().is_empty());
    }

    #[test]
    fn a_late_word_of_an_old_epoch_leaves_the_new_one_alone() {
        let t0 = Instant::now();
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        s.leader_durable("t", 2, 50, t0);
        s.reported(on("b", 1), "t", 2, 40, t0);
        assert_eq!(s.commit("t"), 40);
        // A report, a send or a stream's forgetting of epoch 1 arrives late.
        assert_eq!(s.reported(on("b", 1), "t", 1, 100, t0), None);
        s.sent(on("b", 1), "t", 1, 100, true, t0);
        s.forget_gone("t", 1);
        assert_eq!(s.known_epoch("t"), Some(2));
        assert_eq!(s.commit("t"), 40);
        assert_eq!(s.positions_of("b"), [("t".to_string(), 40, 40)]);
        assert_eq!(s.reported(on("b", 1), "t", 2, 50, t0), Some(50));
    }

    #[test]
    fn successors_are_members_connected_and_holding_every_commit_point() {
        let t0 = Instant::now();
        let mut s = InSync::new("a", vec!["b".into(), "c".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        assert!(s.successors().is_empty(), "no member has reported yet");
        for m in ["b", "c"] {
            s.connected(m, 1, t0);
            s.reported(on(m, 1), "t", 1, 100, t0);
            s.handshaken(m, 1);
        }
        assert_eq!(s.successors(), ["b", "c"]);
        // c's stream ends (its process died; its lease has not lapsed yet).
        s.forget_follower("c", 1, t0);
        assert_eq!(s.successors(), ["b"]);
        // b comes back with a new disk holding less than the commit point.
        s.connected("b", 2, t0);
        s.reported(on("b", 2), "t", 1, 40, t0);
        s.handshaken("b", 2);
        assert!(s.successors().is_empty());
    }

    #[test]
    fn a_member_back_with_less_than_a_commit_point_leaves_at_once() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.connected("b", 1, t0);
        s.leader_durable("t", 1, 100, t0);
        s.leader_durable("u", 1, 10, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        s.reported(on("b", 1), "u", 1, 10, t0);
        s.handshaken("b", 1);
        assert!(s.laggards(&online, t0).is_empty());
        // It comes back with a new disk: until its first report is whole, nothing is
        // concluded; then it lacks u, committed to 10, and leaves the set.
        s.connected("b", 2, t0);
        assert!(s.laggards(&online, t0).is_empty());
        s.reported(on("b", 2), "t", 1, 100, t0);
        assert!(s.laggards(&online, t0).is_empty());
        s.handshaken("b", 2);
        assert_eq!(s.laggards(&online, t0), ["b"]);
    }

    #[test]
    fn a_new_leader_starts_from_the_commit_point_it_was_shown_and_a_member_without_it_leaves() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.committed("t", 1, 80);
        assert_eq!(s.leader_durable("t", 1, 100, t0), None);
        assert_eq!(s.commit("t"), 80);
        // b comes back with nothing (a new disk) as the term starts: it leaves at once.
        s.connected("b", 1, t0);
        s.handshaken("b", 1);
        assert_eq!(s.laggards(&online, t0), ["b"]);
        // An outsider holding 70 is caught up in t (it held what it was sent) but not the
        // commit point: it does not join until it holds 80.
        s.connected("c", 1, t0);
        s.sent(on("c", 1), "t", 1, 70, true, t0);
        s.reported(on("c", 1), "t", 1, 70, t0);
        assert!(s.caught_up(&online, t0).is_empty());
    }

    #[test]
    fn a_joiner_that_connects_again_stops_joining_and_releases_the_commit_points() {
        let mut s = joining_c(90, Instant::now());
        assert_eq!(s.connected("c", 2, Instant::now()), moved("t", 200));
        assert!(!s.joining.contains_key("c"));
        assert!(!s.cooling.contains_key("c"), "no failed try");
    }

    #[test]
    fn a_joiner_whose_stream_ends_releases_the_commit_points_at_once() {
        let mut s = joining_c(90, Instant::now());
        assert_eq!(s.forget_follower("c", 1, Instant::now()), moved("t", 200));
    }

    #[test]
    fn each_failed_try_to_join_doubles_the_wait_before_the_next() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", vec!["b".into()], LAG, t0);
        s.leader_durable("t", 1, 100, t0);
        s.reported(on("b", 1), "t", 1, 100, t0);
        // c keeps catching up within the lag but never reaches the commit point.
        let mut now = t0;
        let mut started = Vec::new();
        for _ in 0..700 {
            now += Duration::from_millis(100);
            s.sent(on("c", 1), "t", 1, 50, true, now);
            s.reported(on("c", 1), "t", 1, 50, now);
            s.tend_joiners(&online, now);
            if s.joining.contains_key("c") && !started.contains(&s.joining["c"]) {
                started.push(s.joining["c"]);
            }
        }
        let gaps: Vec<u64> = started
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        // Each try ends at the first look past the patience (1.1 s); the waits after them:
        // 1, 2, 4, 8, then 16 s each.
        assert_eq!(
            gaps,
            [2_100, 3_100, 5_100, 9_100, 17_100, 17_100],
            "{started:?}"
        );
    }

    #[test]
    fn a_topic_change_waits_for_every_member_that_takes_marks_and_a_silent_one_lags() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string(), "c".to_string()], LAG, t0);
        // b takes marks, c predates them: only b's word is waited for.
        marked_stream(&mut s, "b", 1, t0);
        s.connected("c", 1, t0);
        assert!(!s.roster_held(1), "c's first report is not in yet");
        s.handshaken("c", 1);
        s.want_roster(3, t0);
        assert!(!s.roster_held(3), "b has not answered");
        s.roster_reported(on("b", 1), 2);
        assert!(!s.roster_held(3), "an older mark is not the change");
        s.roster_reported(on("b", 1), 3);
        assert!(s.roster_held(3));
        assert!(s.roster_held(1), "a later mark covers earlier changes");
        // b's next stream answers afresh; an old stream's word is not taken.
        marked_stream(&mut s, "b", 2, t0);
        s.roster_reported(on("b", 1), 9);
        assert!(!s.roster_held(3), "a new stream has held nothing yet");
        // Unanswered for longer than the lag, b lags and leaves; then nothing holds it up.
        s.want_roster(4, t0);
        assert!(s.laggards(&online, t0 + LAG).is_empty());
        assert_eq!(
            s.laggards(&online, t0 + LAG + Duration::from_millis(1)),
            ["b"]
        );
        s.drop_member("b");
        assert!(s.roster_held(4));
    }

    #[test]
    fn a_stream_begun_after_a_wait_gets_the_whole_lag_and_settled_waits_are_forgotten() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = with_member_b(t0);
        s.want_roster(1, t0);
        // b's stream breaks and a new one begins just before the wait is a lag old.
        let later = t0 + LAG - Duration::from_millis(1);
        s.forget_follower("b", 1, t0);
        marked_stream(&mut s, "b", 2, later);
        assert!(s
            .laggards(&online, t0 + LAG + Duration::from_millis(5))
            .is_empty());
        assert_eq!(
            s.laggards(&online, later + LAG + Duration::from_millis(1)),
            ["b"]
        );
        // Answered, the wait is forgotten: a wait already held leaves nothing behind.
        s.roster_reported(on("b", 2), 1);
        s.want_roster(1, later);
        assert!(s.laggards(&online, later + LAG * 5).is_empty());
    }

    #[test]
    fn a_stream_ended_at_its_tokens_expiry_keeps_the_positions_but_is_no_successor() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = with_member_b(t0);
        s.leader_durable("t", 1, 10, t0);
        assert_eq!(s.reported(on("b", 1), "t", 1, 10, t0), Some(10));
        s.roster_reported(on("b", 1), 2);
        assert_eq!(s.successors(), ["b"]);
        s.stream_expired("b", 1);
        // Still a member, holding what it reported: no lag, no drop.
        assert!(s.laggards(&online, t0 + LAG / 2).is_empty());
        assert_eq!(s.commit("t"), 10);
        // But no successor, no lag shown, and no word on topic changes until its next stream.
        assert!(s.successors().is_empty());
        assert!(s.lags().is_empty());
        assert!(!s.roster_held(2));
        s.connected("b", 2, t0);
        s.takes_roster(on("b", 2));
        s.reported(on("b", 2), "t", 1, 10, t0);
        s.handshaken("b", 2);
        s.roster_reported(on("b", 2), 2);
        assert!(s.roster_held(2));
        assert_eq!(s.successors(), ["b"]);
    }

    #[test]
    fn an_entry_made_by_an_older_streams_late_word_holds_no_topic_change() {
        let t0 = Instant::now();
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        // b's stream of record is gone; a late `sent` of an old stream makes an entry.
        s.leader_durable("t", 1, 10, t0);
        s.sent(on("b", 7), "t", 1, 10, true, t0);
        assert!(!s.roster_held(1), "no first report of that stream is in");
    }

    #[test]
    fn a_member_without_a_stream_holds_no_topic_change_and_a_joiner_must_hold_them_all() {
        let t0 = Instant::now();
        let online = |_: &str| true;
        let mut s = InSync::new("a", ["b".to_string()], LAG, t0);
        assert!(!s.roster_held(1), "b has no stream: its word is missing");
        marked_stream(&mut s, "b", 1, t0);
        s.roster_reported(on("b", 1), 1);
        s.want_roster(1, t0);
        assert!(s.roster_held(1));
        s.forget_follower("b", 1, t0);
        assert!(!s.roster_held(1), "its stream ended");
        // c, caught up in every topic, joins only once it holds the last change waited for.
        marked_stream(&mut s, "c", 1, t0);
        assert!(!s.add_member("c", t0), "c lacks roster version 1");
        assert!(s.caught_up(&online, t0).is_empty());
        s.roster_reported(on("c", 1), 1);
        assert_eq!(s.caught_up(&online, t0), ["c"]);
        assert!(s.add_member("c", t0));
    }
}
