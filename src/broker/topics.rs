//! Topics: each a directory with a metadata file and a [`Log`], kept in a registry.
//!
//! Layout: `<data-dir>/topics/<name>/topic.json` (epoch and settings) beside the segment
//! files. A topic is created under a temporary name and renamed into place, and deleted by
//! renaming it aside first, so a crash never leaves a half-made or half-removed topic under
//! its real name.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use super::error::{Error, Result};
use super::frame_cache::{FrameCache, FRAME_CACHE_BYTES};
use super::metrics::{Metrics, TopicGauges, TopicMetrics, Transport};
use super::terms::TermHistory;
use crate::index::OrderKey;
use crate::wal::{
    cut_from, mappings, removals::Removals, removed_keys, segment::sync_dir, Cut, FailureSignal,
    Log, LogConfig, TailLoss,
};

/// File holding a topic's metadata.
pub const TOPIC_META_FILE: &str = "topic.json";
/// Prefix of directories being created or deleted; never a valid topic name.
const TEMP_PREFIX: &str = ".";

/// What is persisted about a topic besides its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Random non-zero number chosen at creation; a re-created topic has a new one.
    pub epoch: u64,
    /// Frames older than this may be removed (0 = keep).
    pub retention_max_age_seconds: u64,
    /// Stored bytes above this may be removed (0 = no limit).
    pub retention_max_bytes: u64,
}

/// One topic: its log, epoch and live subscriber count.
#[derive(Debug)]
pub struct Topic {
    name: String,
    meta: TopicMeta,
    log: Log,
    subscribers: AtomicU32,
    /// Set when the topic's streams must end: deleted, or reopened after a cut.
    ended: watch::Sender<Option<Ended>>,
    /// Recent live frames, encoded once for all subscribers.
    cache: FrameCache,
    /// Handles of the topic's metric series, resolved once when the topic was opened.
    metrics: TopicMetrics,
    /// Where each open subscription stands, for `subscriber_max_lag_frames`: touched
    /// when a subscription opens or closes and at a scrape, never per frame.
    positions: Mutex<Positions>,
    /// At which offset each leadership term began writing the topic (persisted).
    terms: Mutex<TermHistory>,
    /// The commit point of a replicated topic (`None` on a single node, where a frame is
    /// visible once durable).
    commit: Option<watch::Sender<u64>>,
    /// The oldest retained offset this node's own retention passes set, announced to the
    /// sessions that copy the topic to followers.
    first_offset: watch::Sender<u64>,
    /// A cluster leader's retention decision not yet applied to this copy: the oldest
    /// offset it retains and the largest order key it removed.
    leader_retention: Mutex<(u64, Option<OrderKey>)>,
    /// Why this cluster copy may lack acknowledged frames, until settled
    /// ([`super::doubt`]).
    doubt: Mutex<Option<String>>,
}

/// The positions of a topic's open subscriptions, by slot id.
#[derive(Debug, Default)]
struct Positions {
    next_id: u64,
    open: HashMap<u64, Arc<AtomicU64>>,
}

/// Why a topic's open streams end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The topic was deleted (`NOT_FOUND`).
    Deleted,
    /// The topic was closed and opened again, as a follower does when it cuts frames a new
    /// leader lacks (`UNAVAILABLE`: a resume on the reopened topic continues exactly).
    Reopened,
}

/// Holds one subscriber slot of a topic; gives it back when dropped.
#[derive(Debug)]
pub struct SubscriberSlot {
    topic: Arc<Topic>,
    transport: Transport,
    id: u64,
    position: Arc<AtomicU64>,
}

impl SubscriberSlot {
    /// The door the subscription came through.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The subscription's position: the offset up to which it has been sent everything it
    /// will get (while replaying, its start plus the frames replayed so far).
    pub fn position(&self) -> &Arc<AtomicU64> {
        &self.position
    }
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        self.topic.metrics.subscribers(self.transport).dec();
        self.topic.positions.lock().open.remove(&self.id);
        // The last subscriber gone: nobody reads the encoded frames any more.
        if self.topic.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.topic.cache.clear();
        }
    }
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared encoded-frame cache of the topic's live frames.
    pub fn frame_cache(&self) -> &FrameCache {
        &self.cache
    }

    /// Epoch and settings.
    pub fn meta(&self) -> &TopicMeta {
        &self.meta
    }

    /// The topic's log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Why this cluster copy may lack acknowledged frames, until settled
    /// ([`super::doubt`]).
    pub fn doubt(&self) -> Option<String> {
        self.doubt.lock().clone()
    }

    /// The visibility frontier: frames below it may be delivered, listed and acknowledged;
    /// it is the snapshot point of a new subscription or History walk. A single node makes
    /// a frame visible once it is durable (its durable frontier); every reader asks here,
    /// never the log, so that a replicated topic can hold it back to its commit point.
    pub fn visible_offset(&self) -> u64 {
        match &self.commit {
            Some(c) => (*c.borrow()).min(self.log.durable_offset()),
            None => self.log.durable_offset(),
        }
    }

    /// A receiver that changes whenever [`Topic::visible_offset`] moves.
    pub fn watch_visible(&self) -> watch::Receiver<u64> {
        match &self.commit {
            Some(c) => c.subscribe(),
            None => self.log.watch_durable(),
        }
    }

    /// True when the topic is a replica whose frames become visible at the commit point.
    pub fn is_replicated(&self) -> bool {
        self.commit.is_some()
    }

    /// Moves a replicated topic's commit point forward to `offset` (never back; the caller
    /// keeps it at or below the durable frontier). Returns true when it moved. A single
    /// node's topic has no commit point: nothing changes.
    pub fn advance_commit(&self, offset: u64) -> bool {
        match &self.commit {
            Some(c) => c.send_if_modified(|v| {
                let moved = offset > *v;
                if moved {
                    *v = offset;
                }
                moved
            }),
            None => false,
        }
    }

    /// Wakes every subscription waiting for this topic's frontier to move, which has not:
    /// each looks again whether it must end (its node fell out of sync). Only a replicated
    /// topic's subscriptions can be told so; a single node's are never.
    pub fn wake_subscribers(&self) {
        if let Some(c) = &self.commit {
            c.send_modify(|_| {});
        }
    }

    /// The topic's term history.
    pub fn terms(&self) -> TermHistory {
        self.terms.lock().clone()
    }

    /// Notes that this node's retention moved the oldest retained offset to `first`:
    /// [`Topic::watch_first_offset`] fires when it moved.
    pub fn note_first_offset(&self, first: u64) {
        self.first_offset.send_if_modified(|v| {
            let moved = first > *v;
            if moved {
                *v = first;
            }
            moved
        });
    }

    /// A receiver that changes whenever this node's retention removes frames.
    pub fn watch_first_offset(&self) -> watch::Receiver<u64> {
        self.first_offset.subscribe()
    }

    /// Records a cluster leader's retention decision for this copy (it only moves
    /// forward): frames below `first` go at the next maintenance pass; `removed_max_key`
    /// is the largest order key the leader removed.
    pub fn set_leader_retention(&self, first: u64, removed_max_key: Option<OrderKey>) {
        let mut r = self.leader_retention.lock();
        if first > r.0 {
            r.0 = first;
        }
        r.1 = r.1.max(removed_max_key);
    }

    /// The leader's retention decision for this copy (see [`Topic::set_leader_retention`]).
    pub fn leader_retention(&self) -> (u64, Option<OrderKey>) {
        *self.leader_retention.lock()
    }

    /// Open subscriber streams.
    pub fn subscribers(&self) -> u32 {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Counts a subscriber of `transport` starting at offset `position` until the slot
    /// is dropped.
    pub fn add_subscriber(self: &Arc<Self>, transport: Transport, position: u64) -> SubscriberSlot {
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        self.metrics.subscribers(transport).inc();
        let position = Arc::new(AtomicU64::new(position));
        let id = {
            let mut p = self.positions.lock();
            let id = p.next_id;
            p.next_id += 1;
            p.open.insert(id, Arc::clone(&position));
            id
        };
        SubscriberSlot {
            topic: Arc::clone(self),
            transport,
            id,
            position,
        }
    }

    /// Handles of the topic's metric series.
    pub fn metrics(&self) -> &TopicMetrics {
        &self.metrics
    }

    /// The topic's scrape-time figures: offsets, stored bytes, and the largest visibility
    /// frontier minus position among its subscriptions.
    pub fn gauges(&self) -> TopicGauges {
        let s = self.log.stats();
        let durable = self.visible_offset();
        let max_lag_frames = self
            .positions
            .lock()
            .open
            .values()
            .map(|p| durable.saturating_sub(p.load(Ordering::Relaxed)))
            .max()
            .unwrap_or(0);
        TopicGauges {
            topic: self.name.clone(),
            next_offset: s.next_offset,
            first_offset: s.first_offset,
            stored_bytes: s.bytes,
            max_lag_frames,
        }
    }

    /// True once the topic was deleted.
    pub fn is_deleted(&self) -> bool {
        matches!(*self.ended.borrow(), Some(Ended::Deleted))
    }

    /// Why the topic's streams must end, once they must.
    pub fn ended(&self) -> Option<Ended> {
        *self.ended.borrow()
    }

    /// Changes when the topic is deleted or reopened: its open streams must end.
    pub fn watch_ended(&self) -> watch::Receiver<Option<Ended>> {
        self.ended.subscribe()
    }
}

/// What made a topic be created automatically, for the log line that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A unary `Publish` to a missing topic.
    Publish,
    /// A `PublishStream` frame for a missing topic.
    PublishStream,
    /// A `Subscribe` to a missing topic (a mistyped name creates a topic too).
    Subscribe,
}

impl Cause {
    /// The name logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Publish => "publish",
            Cause::PublishStream => "publish_stream",
            Cause::Subscribe => "subscribe",
        }
    }
}

/// Which topic already there [`Topics::create_with`] takes instead of creating one.
#[derive(Debug, Clone, Copy)]
enum Existing {
    /// Any (auto-creation: a CreateTopic may have made it meanwhile).
    Any,
    /// One with the same retention settings (CreateTopic).
    SameSettings,
    /// One with the same settings and epoch (a copy of the leader's).
    SameEpochAndSettings,
}

/// Every topic of a data directory.
#[derive(Debug)]
pub struct Topics {
    dir: PathBuf,
    log_config: LogConfig,
    auto_create: bool,
    map: Arc<RwLock<HashMap<String, Arc<Topic>>>>,
    /// The server's metrics; each topic holds its own handles.
    metrics: Arc<Metrics>,
    /// Serializes creation and deletion (not lookups). The guard moves into the blocking
    /// task that does the work, so a cancelled request never leaves a change half done.
    changes: Arc<tokio::sync::Mutex<()>>,
    /// True when every topic is a replica with a commit point (a cluster node).
    replicated: bool,
    /// The leadership term a topic created now begins in (0 on a single node).
    term: AtomicU64,
    /// True when this node decides what retention removes (a single node, a cluster's
    /// leader); a follower applies its leader's decisions instead.
    owns_retention: AtomicBool,
    /// Serializes term-history writes (a history is read, changed and written whole; and
    /// which slot of its file to write over is read from the file).
    term_writes: Arc<tokio::sync::Mutex<()>>,
    /// Bumped whenever a topic is created, deleted or reopened.
    roster: Arc<Roster>,
    /// Set by [`Topics::close_all`]: no topic is created after it.
    closed: Arc<AtomicBool>,
}

/// The roster: its version, bumped whenever a topic is created, deleted or reopened, and
/// the recent changes. Bumped by the blocking task that makes the change, under the
/// registry's change lock: a caller that finds the change made (a CreateTopic answered
/// "exists") reads a version that covers it, and a cancelled request's change is still
/// announced.
#[derive(Debug)]
struct Roster {
    version: watch::Sender<u64>,
    /// The recent roster changes, oldest first: which topic each version changed.
    log: Mutex<VecDeque<(u64, String)>>,
}

/// The roster's version before any change: 1, not 0, so that no wait for a version is
/// settled by a follower's stream before it answered a mark (its answer starts at 0).
const FIRST_ROSTER: u64 = 1;

/// Bumps the roster when dropped: a change made under the registry's lock is announced
/// before the lock is let go, also when the task making it panics.
struct Announce(Arc<Roster>, String);

impl Drop for Announce {
    fn drop(&mut self) {
        self.0.changed(&self.1);
    }
}

impl Roster {
    fn changed(&self, name: &str) {
        let mut log = self.log.lock();
        let version = *self.version.borrow() + 1;
        if log.len() == ROSTER_LOG {
            log.pop_front();
        }
        log.push_back((version, name.to_string()));
        // Sent under the log's lock: the watched version never runs ahead of the log.
        self.version.send_replace(version);
    }
}

/// Roster changes kept for [`Topics::roster_since`]: a watcher further behind than this
/// rescans every topic.
pub(crate) const ROSTER_LOG: usize = 4_096;

impl Topics {
    /// Opens every topic under `<data_dir>/topics`, recovering each log; each topic
    /// resolves its handles of `metrics`. Blocking.
    pub fn open(
        data_dir: &Path,
        log_config: LogConfig,
        auto_create: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Topics> {
        Topics::open_with(data_dir, log_config, auto_create, metrics, false)
    }

    /// Opens the topics as [`Topics::open`] does; `replicated`: every topic is a cluster
    /// replica, its frames visible only below a commit point the cluster advances (0 at
    /// start). Blocking.
    pub fn open_with(
        data_dir: &Path,
        log_config: LogConfig,
        auto_create: bool,
        metrics: Arc<Metrics>,
        replicated: bool,
    ) -> Result<Topics> {
        let dir = data_dir.join("topics");
        std::fs::create_dir_all(&dir).map_err(|e| crate::wal::Error::io(&dir, e))?;
        let started = Instant::now();
        let mut map = HashMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| crate::wal::Error::io(&dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| crate::wal::Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                // A creation or deletion cut short by a crash: it was never a live topic, or
                // its deletion was asked for. Or keys a follower was receiving.
                warn!(path = %entry.path().display(), "removing an unfinished topic creation or deletion, or keys a follower was receiving");
                let path = entry.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| crate::wal::Error::io(&path, e))?;
                continue;
            }
            if entry.path().is_dir() && valid_topic_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        let mut frames = 0;
        for topic in open_all(data_dir, &dir, &log_config, &metrics, replicated, names)? {
            frames += topic.log.stats().frames;
            map.insert(topic.name.clone(), Arc::new(topic));
        }
        info!(
            topics = map.len(),
            frames,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered topics"
        );
        Ok(Topics {
            dir,
            log_config,
            auto_create,
            map: Arc::new(RwLock::new(map)),
            metrics,
            changes: Arc::new(tokio::sync::Mutex::new(())),
            term_writes: Arc::new(tokio::sync::Mutex::new(())),
            replicated,
            term: AtomicU64::new(0),
            owns_retention: AtomicBool::new(!replicated),
            closed: Arc::new(AtomicBool::new(false)),
            roster: Arc::new(Roster {
                version: watch::channel(FIRST_ROSTER).0,
                log: Mutex::new(VecDeque::new()),
            }),
        })
    }

    /// True when every topic is a replica with a commit point.
    pub fn is_replicated(&self) -> bool {
        self.replicated
    }

    /// True when this node decides what retention removes: a single node, or a cluster
    /// node while it leads. A follower applies its leader's decisions
    /// ([`Topic::set_leader_retention`]).
    pub fn owns_retention(&self) -> bool {
        self.owns_retention.load(Ordering::Acquire)
    }

    /// Sets whether this node decides what retention removes (a cluster node taking or
    /// leaving the lead).
    pub fn set_owns_retention(&self, owns: bool) {
        self.owns_retention.store(owns, Ordering::Release);
    }

    /// Sets the leadership term topics created from now on begin in.
    pub fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::Release);
    }

    /// Changes whenever a topic is created, deleted or reopened.
    pub fn watch_roster(&self) -> watch::Receiver<u64> {
        self.roster.version.subscribe()
    }

    /// The roster version now: one more for every topic created, deleted or reopened.
    pub fn roster_version(&self) -> u64 {
        *self.roster.version.borrow()
    }

    /// The topics created, deleted or reopened after roster version `seen`, and the version
    /// they bring the roster to; `None` when changes that old are no longer kept (rescan
    /// every topic). A name may come more than once.
    pub fn roster_since(&self, seen: u64) -> Option<(Vec<String>, u64)> {
        let log = self.roster.log.lock();
        let newest = log.back().map_or(0, |(v, _)| *v);
        if newest <= seen {
            return Some((Vec::new(), seen));
        }
        match log.front() {
            Some((oldest, _)) if *oldest <= seen + 1 => {}
            _ => return None,
        }
        let names = log
            .iter()
            .filter(|(v, _)| *v > seen)
            .map(|(_, name)| name.clone())
            .collect();
        Some((names, newest))
    }

    /// Records durably that `term` begins writing every topic at its current end (a new
    /// leader taking over): the histories are written, then made durable together with one
    /// `syncfs` of the data directory's file system (one sync for ten thousand topics, not
    /// two each), then take effect. Topics created meanwhile begin in the term already
    /// ([`Topics::set_term`] comes first).
    pub async fn begin_term_all(&self, term: u64) -> Result<usize> {
        let guard = Arc::clone(&self.term_writes).lock_owned().await;
        let topics = self.list();
        let (dir, failure) = (self.dir.clone(), self.log_config.failure.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            // Ten thousand histories are built here, off the runtime's threads.
            let begun: Vec<Begun> = topics
                .into_iter()
                .filter_map(|topic| {
                    let mut history = topic.terms();
                    history
                        .begin(term, topic.log.durable_offset())
                        .then_some((topic, history))
                })
                .collect();
            store_histories(&dir, begun, &failure)
        })
        .await
        .map_err(|e| Error::Metadata {
            path: self.dir.display().to_string(),
            reason: e.to_string(),
        })?
    }

    /// Replaces `name`'s term history durably with `history` (a follower copying its
    /// leader's). Nothing is written when it is already the same.
    pub async fn set_terms(&self, name: &str, history: TermHistory) -> Result<TermHistory> {
        let topic = self
            .get(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        if topic.terms() == history {
            return Ok(history);
        }
        self.store_terms(topic, history).await
    }

    /// Sets the term history of many topics at once (a follower taking every topic's
    /// from a new leader): those that change are written, then made durable with one
    /// `syncfs`, then take effect. Topics not held are skipped.
    pub async fn set_terms_many(&self, histories: Vec<(String, TermHistory)>) -> Result<()> {
        let guard = Arc::clone(&self.term_writes).lock_owned().await;
        let changed: Vec<(Arc<Topic>, TermHistory)> = histories
            .into_iter()
            .filter_map(|(name, h)| self.get(&name).map(|t| (t, h)))
            .filter(|(t, h)| t.terms() != *h)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        if changed.len() == 1 {
            let (topic, history) = changed.into_iter().next().ok_or(Error::Metadata {
                path: "terms".into(),
                reason: "a term history vanished".into(),
            })?;
            // Still holding the lock the comparison above was made under.
            return self
                .store_terms_holding(guard, topic, history)
                .await
                .map(|_| ());
        }
        let (dir, failure) = (self.dir.clone(), self.log_config.failure.clone());
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            store_histories(&dir, changed, &failure).map(|_| ())
        })
        .await
        .map_err(|e| Error::Metadata {
            path: "terms".into(),
            reason: e.to_string(),
        })?
    }

    /// Writes `history` for `topic` durably; a failure is a storage failure (see
    /// [`store_histories`]).
    async fn store_terms(&self, topic: Arc<Topic>, history: TermHistory) -> Result<TermHistory> {
        let guard = Arc::clone(&self.term_writes).lock_owned().await;
        self.store_terms_holding(guard, topic, history).await
    }

    /// [`Topics::store_terms`] with the term-history lock already taken.
    async fn store_terms_holding(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        topic: Arc<Topic>,
        history: TermHistory,
    ) -> Result<TermHistory> {
        let name = topic.name.clone();
        let failure = self.log_config.failure.clone();
        tokio::task::spawn_blocking(move || -> Result<TermHistory> {
            let _guard = guard;
            if let Err(e) = history.store(topic.log.dir()) {
                if !topic.is_deleted() {
                    failure.raise(format!(
                        "the term history of '{}' could not be made durable: {e}",
                        topic.name
                    ));
                }
                return Err(e);
            }
            *topic.terms.lock() = history.clone();
            Ok(history)
        })
        .await
        .map_err(|e| Error::Metadata {
            path: name,
            reason: e.to_string(),
        })?
    }

    /// The server's log settings (every topic's, but for its own retention).
    pub fn log_config(&self) -> &LogConfig {
        &self.log_config
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// True when a publish or subscribe to a missing topic creates it.
    pub fn auto_create(&self) -> bool {
        self.auto_create
    }

    /// The log settings of a topic: the server's, with the topic's own retention where set.
    fn topic_config(&self, meta: &TopicMeta) -> LogConfig {
        topic_config(&self.log_config, meta)
    }

    /// The topic `name`, created with default settings if missing and auto-creation is on
    /// (a topic created meanwhile is taken as it is); a creation is logged with its
    /// `cause`.
    pub async fn get_or_create(&self, name: &str, cause: Cause) -> Result<Arc<Topic>> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        if !self.auto_create {
            return Err(Error::TopicNotFound(name.to_string()));
        }
        // Whatever settings a topic created meanwhile has (a CreateTopic racing this call),
        // it is the one to use: only CreateTopic itself compares settings.
        let meta = TopicMeta {
            epoch: new_epoch(),
            retention_max_age_seconds: 0,
            retention_max_bytes: 0,
        };
        let (topic, created) = self.create_with(name, meta, Existing::Any).await?;
        if created {
            info!(
                topic = name,
                cause = cause.as_str(),
                epoch = topic.meta().epoch,
                "topic auto-created"
            );
        }
        Ok(topic)
    }

    /// The topic `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.read().get(name).cloned()
    }

    /// Creates `name` with the given retention settings. An existing topic with the same
    /// settings is returned as it is (`false`); with other settings it is an error.
    pub async fn create(
        &self,
        name: &str,
        retention_max_age_seconds: u64,
        retention_max_bytes: u64,
    ) -> Result<(Arc<Topic>, bool)> {
        let meta = TopicMeta {
            epoch: new_epoch(),
            retention_max_age_seconds,
            retention_max_bytes,
        };
        self.create_with(name, meta, Existing::SameSettings).await
    }

    /// Creates `name` as a copy of a leader's topic: with the leader's epoch and settings.
    /// An existing topic with the same epoch and settings is returned as it is (`false`);
    /// otherwise it is an error (the caller deletes a stale copy first).
    pub async fn create_copy(&self, name: &str, meta: TopicMeta) -> Result<(Arc<Topic>, bool)> {
        if meta.epoch == 0 {
            return Err(Error::InvalidArgument(format!(
                "topic '{name}': a copy needs the leader's non-zero epoch"
            )));
        }
        self.create_with(name, meta, Existing::SameEpochAndSettings)
            .await
    }

    /// Creates `name` with `meta`; an existing topic is returned as it is (`false`) when
    /// `existing` takes it, and is an error otherwise.
    async fn create_with(
        &self,
        name: &str,
        meta: TopicMeta,
        existing: Existing,
    ) -> Result<(Arc<Topic>, bool)> {
        let TopicMeta {
            retention_max_age_seconds,
            retention_max_bytes,
            ..
        } = meta;
        if !valid_topic_name(name) {
            return Err(invalid_name(name));
        }
        let guard = Arc::clone(&self.changes).lock_owned().await;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        if let Some(t) = self.get(name) {
            let m = t.meta();
            let same_settings = m.retention_max_age_seconds == retention_max_age_seconds
                && m.retention_max_bytes == retention_max_bytes;
            let taken = match existing {
                Existing::Any => true,
                Existing::SameSettings => same_settings,
                Existing::SameEpochAndSettings => same_settings && m.epoch == meta.epoch,
            };
            if taken {
                return Ok((t, false));
            }
            return Err(Error::AlreadyExists(format!(
                "topic '{name}' exists with other settings (retention_max_age_seconds={}, retention_max_bytes={})",
                m.retention_max_age_seconds, m.retention_max_bytes
            )));
        }
        let (dir, name_owned, map) = (self.dir.clone(), name.to_string(), Arc::clone(&self.map));
        let metrics = self.metrics.topic(name);
        let config = self.topic_config(&meta);
        let (replicated, terms) = (
            self.replicated,
            TermHistory::starting(self.term.load(Ordering::Acquire)),
        );
        let (roster, closed) = (Arc::clone(&self.roster), Arc::clone(&self.closed));
        let registry = Arc::clone(&self.metrics);
        // Runs to the end even if the request is cancelled: the topic is either fully made,
        // registered and announced, or not made at all.
        let topic = tokio::task::spawn_blocking(move || -> Result<Arc<Topic>> {
            let _guard = guard;
            let log = match make_topic(&dir, &name_owned, &meta, &terms, None, config) {
                Ok(log) => log,
                Err(e) => {
                    // Not made: no series of its own either (a refused request leaves
                    // nothing behind, not even a `--metrics-max-topics` slot).
                    registry.forget_topic(&name_owned);
                    return Err(e);
                }
            };
            let topic = Arc::new(new_topic(
                name_owned.clone(),
                meta,
                log,
                metrics,
                terms,
                replicated.then_some(0),
            ));
            map.write().insert(name_owned.clone(), Arc::clone(&topic));
            roster.changed(&name_owned);
            // Made while `close_all` ran: whether or not its listing saw this topic, its
            // log is closed here (synced; later appends refused) and the creation refused.
            if closed.load(Ordering::SeqCst) {
                topic.log.close();
                return Err(Error::ShuttingDown);
            }
            Ok(topic)
        })
        .await
        .map_err(|e| Error::Metadata {
            path: name.to_string(),
            reason: e.to_string(),
        })??;
        info!(topic = name, epoch = meta.epoch, "topic created");
        Ok((topic, true))
    }

    /// A file to receive, a key at a time, the idempotency keys of frames removed from
    /// topic `name` on the leader, for [`Topics::restart_copy`]: held on disk, not in
    /// memory (a window holds up to `--dedup-max-keys` of them). Beside the topics, under
    /// a temporary name that startup removes; dropped unused, it is removed.
    pub fn receive_keys(&self, name: &str, epoch: u64) -> Result<removed_keys::Writer> {
        if !valid_topic_name(name) {
            return Err(invalid_name(name));
        }
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{TEMP_PREFIX}keys-{name}-{epoch}-{n}"));
        Ok(removed_keys::Writer::create(path)?)
    }

    /// Replaces the copy `name` with an empty one of `meta` that starts at `first_offset`:
    /// a follower whose copy ends before its leader's oldest retained frame (retention
    /// removed what it lacks, everywhere). `removals`: the leader's retention passes;
    /// `keys`: the idempotency keys of the removed frames still inside the leader's dedup
    /// window, as received ([`Topics::receive_keys`]; the new copy keeps them, see
    /// [`Log::prepare_start`]). The old copy's streams end with `UNAVAILABLE`; a resume below
    /// `first_offset` then gets `OUT_OF_RANGE`, never a silent gap. The term history stays.
    pub async fn restart_copy(
        &self,
        name: &str,
        meta: TopicMeta,
        first_offset: u64,
        removals: Removals,
        keys: Option<removed_keys::Writer>,
    ) -> Result<Arc<Topic>> {
        if !valid_topic_name(name) {
            return Err(invalid_name(name));
        }
        if meta.epoch == 0 {
            return Err(Error::InvalidArgument(format!(
                "topic '{name}': a copy needs the leader's non-zero epoch"
            )));
        }
        let guard = Arc::clone(&self.changes).lock_owned().await;
        let old = self.get(name);
        let terms = old.as_ref().map_or_else(
            || TermHistory::starting(self.term.load(Ordering::Acquire)),
            |t| t.terms(),
        );
        let (dir, name_owned, map) = (self.dir.clone(), name.to_string(), Arc::clone(&self.map));
        let metrics = self.metrics.topic(name);
        let config = self.topic_config(&meta);
        let replicated = self.replicated;
        let roster = Arc::clone(&self.roster);
        let topic = tokio::task::spawn_blocking(move || -> Result<Arc<Topic>> {
            let _guard = guard;
            // The keys made durable first: should that fail, nothing has changed yet.
            let keys = keys.map(removed_keys::Writer::finish).transpose()?;
            // Taken back whatever happens below (moved into the new copy, it is gone here).
            let _keys_file = keys.as_deref().map(RemoveOnDrop);
            // Room for the new copy's segment, asked before the old copy goes (with one to
            // spare for the asking): refused near the mapping limit, nothing has changed and
            // a retry can succeed.
            mappings::admit(mappings::Need::New(2)).map_err(|e| crate::wal::Error::io(&dir, e))?;
            if let Some(old) = &old {
                // Streams of the old copy end and resume on the new one; the old files go
                // the way a deletion's do (aside first), the old topic stays readable from
                // its mapped files until the new one replaces it in the registry.
                old.ended.send_replace(Some(Ended::Reopened));
                old.log.close();
                remove_topic_dir(&dir, &name_owned, old.meta.epoch)?;
            }
            let start = Some((first_offset, &removals, keys.as_deref()));
            let log = make_topic(&dir, &name_owned, &meta, &terms, start, config)?;
            let topic = new_topic(
                name_owned.clone(),
                meta,
                log,
                metrics,
                terms,
                replicated.then_some(first_offset),
            );
            // A doubt stays until settled: the new copy lacks even more.
            if let Some(why) = old.as_ref().and_then(|t| t.doubt()) {
                super::doubt::write(&dir.join(&name_owned), &why)?;
                *topic.doubt.lock() = Some(why);
            }
            let topic = Arc::new(topic);
            map.write().insert(name_owned.clone(), Arc::clone(&topic));
            roster.changed(&name_owned);
            Ok(topic)
        })
        .await
        .map_err(|e| Error::Metadata {
            path: name.to_string(),
            reason: e.to_string(),
        })??;
        warn!(topic = name, epoch = meta.epoch, first_offset, "copy restarted at the leader's oldest retained offset (retention removed the frames it lacked)");
        Ok(topic)
    }

    /// Deletes `name`: ends its streams (they see the deleted flag), finishes queued appends,
    /// and removes its files.
    pub async fn delete(&self, name: &str) -> Result<()> {
        if !valid_topic_name(name) {
            return Err(invalid_name(name));
        }
        let guard = Arc::clone(&self.changes).lock_owned().await;
        let topic = self
            .map
            .write()
            .remove(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        topic.ended.send_replace(Some(Ended::Deleted));
        self.metrics.forget_topic(name);
        let dir = self.dir.clone();
        let name_owned = name.to_string();
        let roster = Arc::clone(&self.roster);
        let removed = tokio::task::spawn_blocking(move || -> Result<()> {
            let _guard = guard;
            // Gone from the registry whatever becomes of its files: the watchers must hear
            // it (dropped before the guard: announced under the lock).
            let _announce = Announce(roster, name_owned.clone());
            topic.log.close();
            remove_topic_dir(&dir, &name_owned, topic.meta.epoch)
        })
        .await;
        removed.map_err(|e| Error::Metadata {
            path: name.to_string(),
            reason: e.to_string(),
        })??;
        info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Cuts every frame at or past `offset` from `name` (a follower's frames that a new
    /// leader lacks: never acknowledged), keeping them in `.torn` files: the topic is closed,
    /// cut and opened again. Its open streams end with `UNAVAILABLE` (a resume continues on
    /// the reopened topic exactly: they never saw a cut frame, which was never visible).
    /// Returns what was cut; `None` when nothing lay at or past `offset` (nothing changes).
    pub async fn cut_and_reopen(&self, name: &str, offset: u64) -> Result<Option<Cut>> {
        let guard = Arc::clone(&self.changes).lock_owned().await;
        let old = self
            .get(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        if old.log.durable_offset() <= offset {
            return Ok(None);
        }
        let (dir, map) = (self.dir.join(name), Arc::clone(&self.map));
        let config = self.topic_config(&old.meta);
        let metrics = self.metrics.topic(name);
        let name_owned = name.to_string();
        let roster = Arc::clone(&self.roster);
        let cut = tokio::task::spawn_blocking(move || -> Result<Option<Cut>> {
            let _guard = guard;
            old.ended.send_replace(Some(Ended::Reopened));
            old.log.close();
            let cut = cut_from(&dir, offset, config.segment_bytes)?;
            let log = Log::open(&dir, config)?;
            // Cut frames were never committed: the commit point stays where it was.
            let commit = old.commit.as_ref().map(|c| (*c.borrow()).min(offset));
            let topic = new_topic(
                name_owned.clone(),
                old.meta,
                log,
                metrics,
                old.terms(),
                commit,
            );
            // A doubt stays until settled (its file is still in the directory).
            *topic.doubt.lock() = old.doubt();
            map.write().insert(name_owned.clone(), Arc::new(topic));
            roster.changed(&name_owned);
            Ok(cut)
        })
        .await
        .map_err(|e| Error::Metadata {
            path: name.to_string(),
            reason: e.to_string(),
        })??;
        if let Some(c) = &cut {
            warn!(topic = name, from = c.from, bytes = c.bytes, kept = ?c.kept, "cut frames a new leader lacks; topic reopened");
        }
        Ok(cut)
    }

    /// Topics whose copy may lack acknowledged frames ([`super::doubt`]), by name.
    pub fn doubtful(&self) -> Vec<String> {
        let map = self.map.read();
        map.values()
            .filter(|t| t.doubt.lock().is_some())
            .map(|t| t.name.clone())
            .collect()
    }

    /// Settles the doubt of topic `name`: its copy holds its leader's commit point again.
    pub async fn settle_doubt(&self, name: &str) -> Result<()> {
        let Some(topic) = self.get(name).filter(|t| t.doubt.lock().is_some()) else {
            return Ok(());
        };
        let dir = self.dir.join(name);
        tokio::task::spawn_blocking(move || super::doubt::clear(&dir))
            .await
            .map_err(|e| Error::Metadata {
                path: name.to_string(),
                reason: e.to_string(),
            })??;
        *topic.doubt.lock() = None;
        info!(
            topic = name,
            "the copy holds its leader's commit point again: doubt settled"
        );
        Ok(())
    }

    /// Gives every doubtful topic a new epoch, reopened, and settles its doubt: for a node
    /// that leads while its copies may lack acknowledged frames (no other member was in
    /// sync), so that their offsets, given again, are never taken for the old frames.
    pub async fn renew_doubtful(&self) -> Result<usize> {
        let mut renewed = 0;
        for name in self.doubtful() {
            let guard = Arc::clone(&self.changes).lock_owned().await;
            let Some(old) = self.get(&name) else {
                continue;
            };
            let (dir, map) = (self.dir.join(&name), Arc::clone(&self.map));
            let config = self.topic_config(&old.meta);
            let metrics = self.metrics.topic(&name);
            let roster = Arc::clone(&self.roster);
            let owned = name.clone();
            let epoch = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
                let _guard = guard;
                old.ended.send_replace(Some(Ended::Reopened));
                old.log.close();
                let meta = renew_epoch(&dir, &old.meta)?;
                super::doubt::clear(&dir)?;
                let log = Log::open(&dir, config)?;
                let commit = old.commit.as_ref().map(|c| *c.borrow());
                let topic = new_topic(owned.clone(), meta, log, metrics, old.terms(), commit);
                map.write().insert(owned.clone(), Arc::new(topic));
                roster.changed(&owned);
                Ok((old.meta.epoch, meta.epoch))
            })
            .await
            .map_err(|e| Error::Metadata {
                path: name.clone(),
                reason: e.to_string(),
            })??;
            warn!(topic = %name, old_epoch = epoch.0, new_epoch = epoch.1, "leading a copy that may lack acknowledged frames (no other member was in sync): new epoch");
            renewed += 1;
        }
        Ok(renewed)
    }

    /// Waits until a creation, deletion, cut or copy restart under way has finished (their
    /// blocking work holds the lock this takes), for a caller that cancelled the task that
    /// asked for it.
    pub async fn changes_settled(&self) {
        drop(self.changes.lock().await);
    }

    /// Every topic, by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.map.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Finishes queued appends and syncs every log; no topic is created after it. Blocking.
    /// True when every frame written is synced (false: a final sync failed, and was
    /// logged).
    pub fn close_all(&self) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let mut synced = true;
        for t in self.list() {
            synced &= t.log.close();
        }
        synced
    }
}

/// When recovery gives topics a new epoch (see [`super::last_fsync`]).
#[derive(Debug, Clone, Copy)]
struct EpochRule {
    /// A topic whose tail recovery cuts: its frames may have been acknowledged before they
    /// were synced (the policy now or the one they were written under is not `always`).
    cut: bool,
    /// Every topic not a cluster node's copy: the last run acknowledged before syncing
    /// and the machine went down under it, so its last acknowledged frames may be gone
    /// without a trace.
    all: bool,
}

/// Why a last segment cut short by something other than framecast gets a new epoch.
const CUT_SHORT: &str = "the last segment was cut short by something other than framecast: \
                         the frames past the cut may have been acknowledged";

/// Opens one topic: its metadata, then its log, giving it a new epoch first when recovery
/// is about to cut a tail that may have held acknowledged frames, or when the machine went
/// down under a run that acknowledged before syncing.
fn open_one(
    data_dir: &Path,
    dir: &Path,
    log_config: &LogConfig,
    metrics: &Metrics,
    (replicated, epochs): (bool, EpochRule),
    name: String,
) -> Result<Topic> {
    let topic_dir = dir.join(&name);
    let mut meta = read_meta(&topic_dir)?;
    let terms = TermHistory::load(&topic_dir)?;
    let config = topic_config(log_config, &meta);
    // A cluster node's copy (its term history names a cluster term) keeps its leader's
    // epoch, also when opened offline (`framecast compact`).
    let copy = terms.last_term() != 0;
    let renew_now = epochs.all && !copy;
    if renew_now {
        let old_epoch = meta.epoch;
        meta = renew_epoch(&topic_dir, &meta)?;
        info!(topic = %name, old_epoch, new_epoch = meta.epoch, "new epoch: frames acknowledged before the machine went down may be lost");
    }
    // Under interval/never a cut tail may have held acknowledged frames; under any policy
    // so may a whole record that failed its check (damage, not a crash), and a last segment
    // something else cut short. The new epoch is made durable before recovery changes the
    // file, so a crash in between cannot lose it. Not for a cluster node's copy on the
    // last two counts: it keeps its leader's epoch and copies the frames it lost again,
    // and its doubt keeps it from leading meanwhile (`super::doubt`). (A follower stores a
    // copied record's checksum last, as its own, so a crash mid-copy leaves a zero one;
    // copies written before that may still look whole when torn.)
    let mut before_cut = |loss: TailLoss<'_>| -> crate::wal::Result<()> {
        let (file, bytes_cut, reason, damage) = match loss {
            TailLoss::Torn(torn) => {
                let damage = if torn.cut_short.is_some() {
                    Some(CUT_SHORT)
                } else if torn.written_whole {
                    Some(
                        "a whole record failed its check: damage, not a crash; it may have \
                         been acknowledged",
                    )
                } else {
                    None
                };
                (&torn.file, torn.bytes_dropped, &torn.reason, damage)
            }
            TailLoss::CutShort(short) => (&short.file, 0, &short.reason, Some(CUT_SHORT)),
        };
        if let (Some(why), true) = (damage, copy) {
            // The epoch stays the leader's, but the node must not lead while another
            // in-sync member could: made durable before recovery changes the file.
            super::doubt::write(&topic_dir, why).map_err(|e| {
                crate::wal::Error::Unavailable(format!(
                    "cannot record the doubt of topic '{name}' before recovery changes its \
                     last segment: {e}"
                ))
            })?;
            warn!(
                topic = %name,
                bytes_cut,
                file = %file.display(),
                reason = %reason,
                cause = why,
                "recovery cuts a tail of a cluster copy that may have held acknowledged \
                 frames; this node will not lead while another in-sync member can, until it \
                 has copied the topic from a leader again"
            );
        }
        let damage = damage.filter(|_| !copy);
        if (epochs.cut || damage.is_some()) && !renew_now {
            let cause = damage.unwrap_or(
                "frames may have been acknowledged before they were synced (fsync not always)",
            );
            let old_epoch = meta.epoch;
            meta = renew_epoch(&topic_dir, &meta).map_err(|e| {
                crate::wal::Error::Unavailable(format!(
                    "cannot give topic '{name}' a new epoch before recovery changes its last \
                     segment: {e}"
                ))
            })?;
            warn!(
                topic = %name,
                old_epoch,
                new_epoch = meta.epoch,
                bytes_cut,
                file = %file.display(),
                fsync = %log_config.fsync,
                reason = %reason,
                cause,
                "recovery cuts a tail that may have held acknowledged frames; new epoch"
            );
        }
        Ok(())
    };
    let log = match Log::open_existing(&topic_dir, config, &mut before_cut) {
        Ok(log) => log,
        Err(source @ crate::wal::Error::Corruption { .. }) => {
            return Err(Error::Damaged {
                topic: name,
                data_dir: data_dir.display().to_string(),
                source,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let handles = metrics.topic(&name);
    let topic = new_topic(name, meta, log, handles, terms, replicated.then_some(0));
    *topic.doubt.lock() = super::doubt::read(&topic_dir)?;
    Ok(topic)
}

/// Recovers the topics `names` of `dir` on a few threads at once: a start with ten
/// thousand small topics is bound by file-system round trips, not by the CPU.
fn open_all(
    data_dir: &Path,
    dir: &Path,
    log_config: &LogConfig,
    metrics: &Metrics,
    replicated: bool,
    names: Vec<String>,
) -> Result<Vec<Topic>> {
    let epochs = EpochRule {
        cut: super::last_fsync::acks_may_precede_sync(data_dir, log_config.fsync),
        // Not on a cluster node: its topics' epochs are its leader's, copied with the log,
        // and a node that lost frames copies them again from the leader it follows.
        all: !replicated
            && super::last_fsync::unsynced_frames_may_be_lost(
                data_dir,
                super::last_fsync::current_boot().as_deref(),
            ),
    };
    if epochs.all && !names.is_empty() {
        warn!(
            topics = names.len(),
            last_run = ?super::last_fsync::read_run(data_dir),
            "the machine went down while the server acknowledged frames before syncing them \
             (fsync never or interval) and it did not stop cleanly: the last acknowledged \
             frames may be lost and their offsets given again; every topic gets a new epoch, \
             and subscribers resuming with an old cursor must start over"
        );
    }
    // Giving every topic a new epoch is two syncs a topic: bound by the disk's round trips,
    // not the cores, so more threads overlap them (10,000 topics on a 2-core VM: 3.0 s with
    // 4 threads, 1.8 s with 16).
    let threads = if epochs.all { (16, 16) } else { (1, 16) };
    on_threads(&names, threads, "recovery", |chunk| {
        chunk
            .iter()
            .map(|name| {
                open_one(
                    data_dir,
                    dir,
                    log_config,
                    metrics,
                    (replicated, epochs),
                    name.clone(),
                )
            })
            .collect()
    })
}

/// Runs `work` over `items` split among a few threads (twice the cores, within
/// `[least, most]`), and joins what each returned, in order: small file-system operations
/// by the thousand are bound by round trips, not by one core. `what` names the work in an
/// error.
fn on_threads<'a, T: Sync, R: Send>(
    items: &'a [T],
    (least, most): (usize, usize),
    what: &str,
    work: impl Fn(&'a [T]) -> Result<Vec<R>> + Sync,
) -> Result<Vec<R>> {
    let most = most.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 2)
        .clamp(least.clamp(1, most), most)
        .min(items.len().max(1));
    let per_thread = items.len().div_ceil(threads).max(1);
    let work = &work;
    let results: Vec<Result<Vec<R>>> = std::thread::scope(|scope| {
        // A chunk whose thread cannot start (the process near its thread or mapping limit)
        // is done here, after the others: slower, never refused.
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| {
                // Short-lived threads of recovery and of a new term, which fall back to
                // working inline: held to the smaller reserve, as recovery's files are.
                mappings::admit(mappings::Need::Existing(mappings::THREAD))
                    .and_then(|()| {
                        std::thread::Builder::new().spawn_scoped(scope, move || work(chunk))
                    })
                    .map_err(|e| (chunk, e))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(Error::Metadata {
                        path: String::new(),
                        reason: format!("a {what} thread panicked"),
                    })
                }),
                Err((chunk, e)) => {
                    let e = mappings::explain(e);
                    warn!(error = %e, work = what, "cannot start a thread; working on this one");
                    work(chunk)
                }
            })
            .collect()
    });
    let mut all = Vec::with_capacity(items.len());
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

/// Removes a file when dropped, if it is still there: a finished file of received keys that
/// a copy's creation did not take.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        match std::fs::remove_file(self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %self.0.display(), error = %e, "could not remove a file of received keys")
            }
        }
    }
}

/// Removes topic `name`'s directory under `dir`: renamed aside first (durably), so a crash
/// never leaves it half removed under its real name, then deleted.
fn remove_topic_dir(dir: &Path, name: &str, epoch: u64) -> Result<()> {
    let from = dir.join(name);
    let aside = dir.join(format!("{TEMP_PREFIX}deleted-{name}-{epoch}"));
    std::fs::rename(&from, &aside).map_err(|e| crate::wal::Error::io(&from, e))?;
    sync_dir(dir)?;
    std::fs::remove_dir_all(&aside).map_err(|e| crate::wal::Error::io(&aside, e))?;
    Ok(())
}

/// Makes topic `name`'s directory under `dir` (under a temporary name, renamed into place)
/// with its metadata and term history, and opens its log; `start`: the offset an empty
/// copy starts at and its retention watermark. A log that cannot open is taken back.
fn make_topic(
    dir: &Path,
    name: &str,
    meta: &TopicMeta,
    terms: &TermHistory,
    start: Option<(u64, &Removals, Option<&Path>)>,
    config: LogConfig,
) -> Result<Log> {
    let temp = dir.join(format!("{TEMP_PREFIX}creating-{name}"));
    if temp.exists() {
        std::fs::remove_dir_all(&temp).map_err(|e| crate::wal::Error::io(&temp, e))?;
    }
    let made = (|| -> Result<()> {
        std::fs::create_dir_all(&temp).map_err(|e| crate::wal::Error::io(&temp, e))?;
        write_meta(&temp, meta)?;
        if *terms != TermHistory::default() {
            terms.store(&temp)?;
        }
        if let Some((first_offset, removals, keys)) = start {
            Log::prepare_start(&temp, first_offset, removals, keys)?;
        }
        // The first segment too: a topic's directory never has its name without one, so a
        // topic found at startup with no segment lost them (see `Log::open_existing`).
        Log::create_first_segment(&temp, &config)?;
        Ok(())
    })();
    if let Err(e) = made {
        // A refused creation leaves nothing behind (startup would remove it too).
        warn!(topic = name, error = %e, "topic creation failed");
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    let final_dir = dir.join(name);
    std::fs::rename(&temp, &final_dir).map_err(|e| crate::wal::Error::io(&final_dir, e))?;
    sync_dir(dir)?;
    match Log::open(&final_dir, config) {
        Ok(log) => Ok(log),
        Err(e) => {
            // A log that cannot open (its segment cannot be mapped, say): the topic was
            // never usable and nothing was acknowledged into it. Take it back, or a later creation would find the name
            // taken on disk and fail for good.
            warn!(dir = %final_dir.display(), error = %e, "topic creation failed; removing it");
            // Aside first, as a deletion does: a crash part way never leaves the real name
            // holding a topic whose segment is gone (startup would take it for lost data).
            let _ = remove_topic_dir(dir, name, meta.epoch);
            Err(e.into())
        }
    }
}

/// A topic with the term history to write for it.
type Begun = (Arc<Topic>, TermHistory);

/// Writes each topic's new term history, makes them all durable with one `syncfs` of the
/// file system holding `dir`, then lets them take effect; a topic deleted meanwhile (its
/// directory went aside) is skipped. Returns how many took effect. Blocking.
///
/// A few threads write: ten thousand small writes are bound by file-system round trips,
/// not by one core (with a new file per history, 10,001 took a follower about 1.5 s on one
/// thread).
///
/// A failure raises `failure` (a cluster node then leaves and restarts): histories may be
/// written and not durable, and after a failed sync the page cache can no longer be
/// trusted to say which slot of a file is durable, so nothing short of a restart (reading
/// what the disk holds) is safe. A deleted topic's failure is not one.
fn store_histories(dir: &Path, changed: Vec<Begun>, failure: &FailureSignal) -> Result<usize> {
    let raise = |e: Error| -> Error {
        failure.raise(format!(
            "term histories under {} could not be made durable: {e}",
            dir.display()
        ));
        e
    };
    let stored = on_threads(&changed, (1, 8), "term history", write_histories).map_err(raise)?;
    if stored.is_empty() {
        return Ok(0);
    }
    let root = std::fs::File::open(dir).map_err(|e| raise(crate::wal::Error::io(dir, e).into()))?;
    rustix::fs::syncfs(&root)
        .map_err(|e| raise(crate::wal::Error::io(dir, std::io::Error::from(e)).into()))?;
    for (topic, history) in &stored {
        *topic.terms.lock() = history.clone();
    }
    Ok(stored.len())
}

/// Writes (without syncing) each topic's history; returns those written.
fn write_histories(changed: &[Begun]) -> Result<Vec<&Begun>> {
    let mut written = Vec::new();
    for b in changed {
        let (topic, history) = b;
        match history.store_unsynced(topic.log.dir()) {
            Ok(()) => written.push(b),
            // Deleted meanwhile: its directory went aside.
            Err(_) if topic.is_deleted() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// `base` with the topic's own retention limits where they are set (non-zero).
fn topic_config(base: &LogConfig, meta: &TopicMeta) -> LogConfig {
    let mut c = base.clone();
    if meta.retention_max_age_seconds > 0 {
        c.retention.max_age = Some(std::time::Duration::from_secs(
            meta.retention_max_age_seconds,
        ));
    }
    if meta.retention_max_bytes > 0 {
        c.retention.max_bytes = Some(meta.retention_max_bytes);
    }
    c
}

/// A topic; `commit`: the starting commit point of a replica (`None` on a single node).
fn new_topic(
    name: String,
    meta: TopicMeta,
    log: Log,
    metrics: TopicMetrics,
    terms: TermHistory,
    commit: Option<u64>,
) -> Topic {
    let (ended, _) = watch::channel(None);
    let first = log.retention_watermark().0;
    Topic {
        name,
        meta,
        log,
        subscribers: AtomicU32::new(0),
        ended,
        cache: FrameCache::new(FRAME_CACHE_BYTES),
        metrics,
        positions: Mutex::new(Positions::default()),
        terms: Mutex::new(terms),
        commit: commit.map(|c| watch::channel(c).0),
        first_offset: watch::channel(first).0,
        leader_retention: Mutex::new((first, None)),
        doubt: Mutex::new(None),
    }
}

fn invalid_name(name: &str) -> Error {
    Error::InvalidArgument(format!(
        "topic name '{name}' does not match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"
    ))
}

fn new_epoch() -> u64 {
    loop {
        let e: u64 = rand::random();
        if e != 0 {
            return e;
        }
    }
}

/// Gives the topic in `dir` a new epoch (persisted durably) and returns the new metadata:
/// resuming subscribers then get `FAILED_PRECONDITION` instead of a silent gap.
pub fn renew_epoch(dir: &Path, meta: &TopicMeta) -> Result<TopicMeta> {
    let mut renewed = *meta;
    while renewed.epoch == meta.epoch {
        renewed.epoch = new_epoch();
    }
    write_meta(dir, &renewed)?;
    Ok(renewed)
}

/// Reads `topic.json` of the topic directory `dir`.
pub fn read_meta(dir: &Path) -> Result<TopicMeta> {
    let path = dir.join(TOPIC_META_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::Metadata {
        path: path.display().to_string(),
        reason: format!("{e} (every topic directory needs its {TOPIC_META_FILE})"),
    })?;
    let meta: TopicMeta = serde_json::from_str(&text).map_err(|e| Error::Metadata {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if meta.epoch == 0 {
        return Err(Error::Metadata {
            path: path.display().to_string(),
            reason: "epoch is 0".into(),
        });
    }
    Ok(meta)
}

/// Writes `topic.json` durably.
fn write_meta(dir: &Path, meta: &TopicMeta) -> Result<()> {
    let text = serde_json::to_string_pretty(meta).map_err(|e| Error::Metadata {
        path: dir.join(TOPIC_META_FILE).display().to_string(),
        reason: e.to_string(),
    })?;
    replace_durably(dir, TOPIC_META_FILE, text.as_bytes())
}

/// Replaces the file `name` of directory `dir` with `bytes` durably: temp file, sync,
/// rename, directory sync. A crash leaves the old file or the new one, whole.
pub(super) fn replace_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| crate::wal::Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(())
}

/// True when `name` matches `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
pub fn valid_topic_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["default", "a", "prices.eu-1_x", &"a".repeat(128)] {
            assert!(valid_topic_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            &"a".repeat(129),
            "..",
        ] {
            assert!(!valid_topic_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn startup_removes_what_a_crash_left_under_temporary_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new(16));
        let topics = Topics::open(dir.path(), LogConfig::default(), true, Arc::clone(&metrics))
            .expect("open");
        topics
            .get_or_create("kept", Cause::Publish)
            .await
            .expect("created");
        // Keys being received: a file beside the topics, removed when dropped unused.
        let receiving = topics.receive_keys("kept", 1).expect("receive");
        let path = std::fs::read_dir(dir.path().join("topics"))
            .expect("topics")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().contains(".keys-kept-1-"))
            .expect("a file of received keys");
        drop(receiving);
        assert!(!path.exists(), "dropped unused");
        assert!(
            topics.receive_keys("../kept", 1).is_err(),
            "not a topic name"
        );
        assert!(topics.close_all());
        drop(topics);

        // What a crash leaves: a creation, a deletion, keys being received.
        let t = dir.path().join("topics");
        std::fs::create_dir_all(t.join(".creating-a")).expect("dir");
        std::fs::write(t.join(".creating-a").join("meta"), b"x").expect("file");
        std::fs::create_dir_all(t.join(".deleted-b-3")).expect("dir");
        std::fs::write(t.join(".keys-kept-1-0"), b"FCKEYS01").expect("file");
        let topics = Topics::open(dir.path(), LogConfig::default(), true, metrics).expect("open");
        let mut left: Vec<String> = std::fs::read_dir(&t)
            .expect("topics")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        assert_eq!(left, ["kept"]);
        assert!(topics.get("kept").is_some());
    }

    #[tokio::test]
    async fn no_topic_is_created_after_close_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new(16));
        let topics = Topics::open(dir.path(), LogConfig::default(), true, metrics).expect("open");
        topics
            .get_or_create("before", Cause::Publish)
            .await
            .expect("created");
        assert!(topics.close_all(), "nothing unsynced");
        let refused = topics.get_or_create("after", Cause::Publish).await;
        assert!(matches!(refused, Err(Error::ShuttingDown)), "{refused:?}");
        assert!(!dir.path().join("topics").join("after").exists());
    }
}
