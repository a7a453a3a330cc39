//! [`Broker`]: the operations every front door calls — publish, subscribe, topics — with
//! their checks, in one place. A door turns its protocol into these calls and the
//! [`Error`]s back into its own statuses; it holds no rule of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::cluster_view::ClusterView;
use super::cursor::CursorToken;
use super::error::{Error, Result};
use super::history::PageBudget;
use super::metrics::{Metrics, ReplicaLag, Transport};
use super::principal::Principal;
use super::shutdown::Shutdown;
use super::subscription::{GlobalSlot, StartAt, Subscription};
use super::token::Authenticator;
use super::topics::{valid_topic_name, Cause, Topic, Topics};
use crate::index::OrderKey;
use crate::proto;
use crate::wal::{self, failpoint, Appended, NewFrame};

/// Where the acks of one log request arrive.
pub type AckReceiver = oneshot::Receiver<wal::Result<Vec<Appended>>>;

/// A log request queued by [`Broker::submit`], whose acks [`Broker::acks`] waits for.
#[derive(Debug)]
pub struct Pending {
    topic: Arc<Topic>,
    rx: AckReceiver,
    /// When the request's frames were received, for `publish_duration_seconds`.
    received: Instant,
    /// The request's share of the publish budget, given back once its log answered.
    budget: PublishBudget,
}

/// Payload bytes of publishes taken in and not yet written to their logs that the server
/// holds at most, across every door, by default (`--max-queued-publish-bytes`).
pub const DEFAULT_PUBLISH_BUDGET: usize = 256 << 20;

/// A share of the server's publish budget ([`Broker::take_publish_budget`]), given back
/// when the last clone is dropped (a broadcast's topics share one: its payload is one
/// allocation, however many topics it goes to).
#[derive(Debug, Clone)]
pub struct PublishBudget {
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

impl Pending {
    /// The topic the frames went to.
    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }
}

/// The one core behind every door. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Broker {
    topics: Arc<Topics>,
    shutdown: Shutdown,
    max_subscribers: usize,
    subscribers: Arc<AtomicUsize>,
    /// `None`: no authentication (every caller is [`Principal::anonymous`]).
    auth: Option<Arc<Authenticator>>,
    anonymous: Arc<Principal>,
    cluster: ClusterView,
    /// Payload bytes publishes may hold while queued for their logs, across the server:
    /// without it a client opening many publish streams (each with its own read-ahead)
    /// against a slow disk could make the server hold gigabytes.
    publish_budget: Arc<tokio::sync::Semaphore>,
    /// The budget's size, permits (at most `u32::MAX`, what one wait can ask).
    publish_budget_max: u32,
    /// Bytes of History pages built and not yet written, across every door.
    page_budget: PageBudget,
}

/// An opened subscription and what its first answer tells the client.
pub struct Opened {
    /// The stream of frames.
    pub subscription: Subscription,
    /// The snapshot point S.
    pub snapshot_offset: u64,
    /// The topic's epoch.
    pub epoch: u64,
    /// The oldest retained offset the stream's retention checks count from: what a cursor
    /// token carries, so that a resume is checked against what the first stream was
    /// promised ([`StartAt::floor`]).
    pub floor: u64,
}

/// The checks of one publish stream: its caller's permissions, resolved once for the
/// stream, and the request rules, for each frame.
#[derive(Debug)]
pub struct PublishGate {
    broker: Broker,
    who: Arc<Principal>,
    /// The last topic this stream was allowed to publish to: a stream mostly publishes to
    /// one topic, so its frames cost a string comparison, not a pattern match.
    allowed: Option<String>,
}

impl PublishGate {
    /// Checks one request of the stream; nothing is touched yet. Returns the topic's name
    /// and the frame to append.
    pub fn check(&mut self, r: proto::PublishRequest) -> Result<(String, NewFrame)> {
        let checked = self.check_inner(r);
        self.broker.counted(checked)
    }

    /// When the stream's token expires: the stream ends with UNAUTHENTICATED then, even
    /// if it sends nothing more.
    pub fn expires(&self) -> Option<tokio::time::Instant> {
        deadline(&self.who)
    }

    fn check_inner(&mut self, r: proto::PublishRequest) -> Result<(String, NewFrame)> {
        self.broker.check_running()?;
        check_expiry(&self.who)?;
        let (topic, frame) = self.broker.validate(r)?;
        if self.allowed.as_deref() != Some(topic.as_str()) {
            may_publish(&self.who, &topic)?;
            self.allowed = Some(topic.clone());
        }
        Ok((topic, frame))
    }
}

impl Broker {
    /// A broker over `topics`, allowing `max_subscribers` open subscriptions in all;
    /// `cluster` answers Cluster and WatchCluster.
    pub fn new(
        topics: Arc<Topics>,
        shutdown: Shutdown,
        max_subscribers: usize,
        auth: Option<Authenticator>,
        cluster: ClusterView,
    ) -> Broker {
        Broker {
            topics,
            shutdown,
            max_subscribers,
            subscribers: Arc::new(AtomicUsize::new(0)),
            auth: auth.map(Arc::new),
            anonymous: Arc::new(Principal::anonymous()),
            cluster,
            publish_budget: Arc::new(tokio::sync::Semaphore::new(DEFAULT_PUBLISH_BUDGET)),
            publish_budget_max: DEFAULT_PUBLISH_BUDGET as u32,
            page_budget: PageBudget::default(),
        }
    }

    /// This broker with a publish budget of `bytes` (`--max-queued-publish-bytes`; at least
    /// 1, at most 4 GiB - 1) instead of [`DEFAULT_PUBLISH_BUDGET`].
    pub fn with_publish_budget(mut self, bytes: u64) -> Broker {
        let max = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        self.publish_budget = Arc::new(tokio::sync::Semaphore::new(max as usize));
        self.publish_budget_max = max;
        self
    }

    /// Takes `bytes` of the server's publish budget (all of it for a request larger than
    /// the budget), waiting while publishes taken in before hold it: what bounds the memory
    /// of queued publishes, however many connections and streams bring them. The waiting
    /// caller stops reading its request stream, so HTTP/2 flow control holds its client.
    pub async fn take_publish_budget(&self, bytes: usize) -> Result<PublishBudget> {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.publish_budget_max);
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            permit = Arc::clone(&self.publish_budget).acquire_many_owned(n) => permit
                .map(|p| PublishBudget {
                    _permit: Arc::new(p),
                })
                .map_err(|_| Error::ShuttingDown),
            () = shutdown.wait() => Err(Error::ShuttingDown),
        }
    }

    /// Who is calling, from the value of an `authorization` header (`Bearer <JWT>`); every
    /// caller is anonymous, with every permission, when the server has no `--auth-*` flag.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Principal>> {
        match &self.auth {
            None => Ok(Arc::clone(&self.anonymous)),
            Some(auth) => self.counted(
                auth.from_header(authorization)
                    .map_err(|e| Error::Unauthenticated(e.to_string())),
            ),
        }
    }

    /// Whether `who` may follow this node as cluster node `node_id` (replication's `Follow`,
    /// which copies every topic): with authentication on, only a node's own token may, an
    /// admin token whose subject is `framecast-node-<node_id>` (what a node mints for
    /// itself), so that neither an operator's token nor one node's can read every frame or
    /// report positions as another node. `None`: the id is not known yet; only `admin` is
    /// checked. With authentication off, everyone may.
    pub fn may_follow(&self, who: &Principal, node_id: Option<&str>) -> Result<()> {
        if self.auth.is_none() {
            return Ok(());
        }
        let refused = |why: String| {
            self.reject(Error::PermissionDenied(format!(
                "'{}' may not follow the leader: {why}",
                who.subject()
            )))
        };
        if !who.is_admin() {
            return Err(refused("it needs admin".into()));
        }
        match node_id {
            Some(id) if who.subject() != node_subject(id) => Err(refused(format!(
                "a node's token has the subject '{}'",
                node_subject(id)
            ))),
            _ => Ok(()),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.topics.metrics()
    }

    /// The `/metrics` exposition: the registry and every topic's scrape-time figures.
    pub fn scrape(&self) -> String {
        let gauges: Vec<_> = self.topics.list().iter().map(|t| t.gauges()).collect();
        // Topics open now only: the leader forgets a deleted one a moment after it goes.
        let open: std::collections::HashSet<&str> =
            gauges.iter().map(|g| g.topic.as_str()).collect();
        let lags: Vec<_> = self
            .cluster
            .replication_lags()
            .into_iter()
            .filter(|(topic, _, _)| open.contains(topic.as_str()))
            .map(|(topic, node, frames)| ReplicaLag {
                topic,
                node,
                frames,
            })
            .collect();
        self.metrics().encode(&gauges, &lags)
    }

    /// Counts a refusal a door made itself (a request its protocol cannot parse) in
    /// `rejected_requests_total{code}`, like the broker's own.
    pub fn reject(&self, e: Error) -> Error {
        self.metrics().rejected(e.code_name());
        e
    }

    /// `r`, with a refusal counted in `rejected_requests_total{code}`.
    pub(super) fn counted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.metrics().rejected(e.code_name());
        }
        r
    }

    /// The History pages held, built and not yet written.
    pub(super) fn page_budget(&self) -> &PageBudget {
        &self.page_budget
    }

    /// Subscriptions open now, across all topics and doors.
    pub fn open_subscriptions(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// True when calls need a token.
    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// The topic registry.
    pub fn topics(&self) -> &Arc<Topics> {
        &self.topics
    }

    /// The shutdown signal every stream watches.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The cluster as this node sees it.
    pub fn cluster_view(&self) -> &ClusterView {
        &self.cluster
    }

    /// Refuses new calls once shutdown began.
    pub fn check_running(&self) -> Result<()> {
        if self.shutdown.is_fired() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Publishes one frame and waits until it is durable under the fsync policy.
    pub async fn publish(
        &self,
        who: &Principal,
        r: proto::PublishRequest,
    ) -> Result<proto::PublishAck> {
        let received = Instant::now();
        let queued = async {
            self.check_running()?;
            let (name, frame) = self.validate(r)?;
            may_publish(who, &name)?;
            let budget = self.take_publish_budget(frame_bytes(&frame)).await?;
            self.submit_at(&name, vec![frame], Cause::Publish, received, budget)
                .await
        };
        let pending = self.counted(queued.await)?;
        let acks = self.acks(pending).await?;
        acks.into_iter()
            .next()
            .ok_or_else(|| Error::Wal(wal::Error::Unavailable("no ack".into())))
    }

    /// Refuses early a publish to `topic` that `who` may not make: for a front door that
    /// must read a large body before it can call [`Broker::publish`] (HTTP), so that the
    /// server buffers no body for a caller it will refuse. `publish` still decides.
    pub fn may_publish_to(&self, who: &Principal, topic: &str) -> Result<()> {
        self.counted(may_publish(who, topic))
    }

    /// Refuses early a broadcast by `who` if it may publish to no topic at all (as
    /// [`Broker::may_publish_to`], before its body is read). `broadcast` still decides.
    pub fn may_publish_somewhere(&self, who: &Principal) -> Result<()> {
        if who.publish().is_empty() {
            return self.counted(Err(Error::PermissionDenied(format!(
                "'{}' may not publish to any topic",
                who.subject()
            ))));
        }
        Ok(())
    }

    /// The checks of a new publish stream.
    pub fn publish_gate(&self, who: Arc<Principal>) -> PublishGate {
        PublishGate {
            broker: self.clone(),
            who,
            allowed: None,
        }
    }

    /// Queues frames already checked by a [`PublishGate`] for one topic as one log request
    /// (one queue push, one commit); the receiver gets their acks.
    pub async fn submit(
        &self,
        topic: &str,
        frames: Vec<NewFrame>,
        cause: Cause,
    ) -> Result<Pending> {
        let received = Instant::now();
        let queued = async {
            let bytes = frames.iter().map(frame_bytes).sum();
            let budget = self.take_publish_budget(bytes).await?;
            self.submit_at(topic, frames, cause, received, budget).await
        };
        self.counted(queued.await)
    }

    pub(super) async fn submit_at(
        &self,
        topic: &str,
        frames: Vec<NewFrame>,
        cause: Cause,
        received: Instant,
        budget: PublishBudget,
    ) -> Result<Pending> {
        self.cluster.check_writable()?;
        if failpoint::hit(failpoint::PUBLISH_STALL).is_err() {
            failpoint::stalled().await;
        }
        let topic = self.topics.get_or_create(topic, cause).await?;
        let rx = topic
            .log()
            .submit(frames)
            .map_err(|e| append_error(&topic, e))?;
        Ok(Pending {
            topic,
            rx,
            received,
            budget,
        })
    }

    /// Waits for the acks of a queued log request, and counts what it stored.
    pub async fn acks(&self, pending: Pending) -> Result<Vec<proto::PublishAck>> {
        let Pending {
            topic,
            rx,
            received,
            budget,
        } = pending;
        let appended = rx
            .await
            .map_err(|_| append_error(&topic, wal::Error::Unavailable("log closed".into())))
            .and_then(|r| r.map_err(|e| append_error(&topic, e)));
        // Written (or refused): the frames' memory is the log's no more.
        drop(budget);
        let appended = self.counted(appended)?;
        let committed = self.committed(&topic, &appended).await;
        self.counted(committed)?;
        let (mut frames, mut bytes) = (0, 0);
        for a in appended.iter().filter(|a| !a.duplicate) {
            frames += 1;
            bytes += u64::from(a.payload_bytes);
        }
        let m = topic.metrics();
        m.published_frames.inc_by(frames);
        m.published_bytes.inc_by(bytes);
        self.metrics()
            .observe_publishes(received.elapsed(), appended.len() as u64);
        Ok(appended
            .iter()
            .map(|a| proto::PublishAck {
                offset: a.offset,
                timestamp: a.timestamp,
                duplicate: a.duplicate,
            })
            .collect())
    }

    /// Opens a subscription: replay up to the snapshot point, then live.
    /// The stream ends with UNAUTHENTICATED when `who`'s token expires.
    pub async fn subscribe(
        &self,
        who: &Principal,
        r: &proto::SubscribeRequest,
        transport: Transport,
    ) -> Result<Opened> {
        let opened = self.open_subscription(who, r, transport, None).await;
        self.counted(opened)
    }

    /// A subscription of `topic` for a door whose resume points are cursor tokens (SSE,
    /// WebSocket): from `from`, or resuming after `resume`. Also the walk its tokens
    /// continue, carrying the stream's floor.
    pub async fn subscribe_walk(
        &self,
        who: &Principal,
        topic: String,
        (from, resume): (u64, Option<CursorToken>),
        transport: Transport,
    ) -> Result<(Opened, CursorToken)> {
        let opened = async {
            let request = match &resume {
                Some(token) => token.subscribe_request(&topic)?,
                None => proto::SubscribeRequest {
                    replay_seq_no_start: from,
                    topic,
                    resume: None,
                },
            };
            let floor = resume.and_then(|t| t.floor);
            let opened = self
                .open_subscription(who, &request, transport, floor)
                .await?;
            let walk = CursorToken {
                start_seq_no: request.replay_seq_no_start,
                snapshot: opened.snapshot_offset,
                epoch: opened.epoch,
                last: resume.and_then(|t| t.last),
                reverse: false,
                floor: Some(opened.floor),
            };
            Ok((opened, walk))
        };
        self.counted(opened.await)
    }

    async fn open_subscription(
        &self,
        who: &Principal,
        r: &proto::SubscribeRequest,
        transport: Transport,
        floor: Option<u64>,
    ) -> Result<Opened> {
        self.check_running()?;
        let name = topic_name(&r.topic)?;
        if !who.may_subscribe(&name) {
            return Err(Error::PermissionDenied(format!(
                "'{}' may not subscribe to topic '{name}'",
                who.subject()
            )));
        }
        if let Some(refusal) = self.cluster.out_of_sync().refusal() {
            return Err(refusal);
        }
        let expires = deadline(who);
        let global = self.reserve_subscriber()?;
        let topic = self.subscription_topic(&name, r).await?;
        let epoch = topic.meta().epoch;
        let at = start_at(&topic, r, &self.cluster, floor)?;
        let position = match at.after {
            Some(last) if last.offset >= at.snapshot => last.offset + 1,
            _ => topic.log().first_offset(),
        };
        let slots = (topic.add_subscriber(transport, position), global);
        Ok(Opened {
            snapshot_offset: at.snapshot,
            epoch,
            floor: at.floor_in(topic.log()),
            subscription: Subscription::new(
                topic,
                at,
                (self.shutdown.clone(), self.cluster.out_of_sync()),
                slots,
                expires,
            ),
        })
    }

    /// Creates a topic with its retention settings (an existing one with the same
    /// settings is answered as created).
    pub async fn create_topic(
        &self,
        who: &Principal,
        r: proto::CreateTopicRequest,
    ) -> Result<proto::TopicInfo> {
        let created = async {
            self.check_running()?;
            must_be_admin(who, "create topics")?;
            self.cluster.check_writable()?;
            // "" is `default`, as in every other call.
            let name = topic_name(&r.name)?;
            let (topic, _) = self
                .topics
                .create(&name, r.retention_max_age_seconds, r.retention_max_bytes)
                .await?;
            // Also when it existed: an earlier creation's answer may have been lost.
            self.roster_committed(self.topics.roster_version()).await?;
            Ok(topic_info(&topic))
        };
        self.counted(created.await)
    }

    /// Deletes a topic: its open streams end with NOT_FOUND and its files are removed.
    pub async fn delete_topic(&self, who: &Principal, name: &str) -> Result<()> {
        let deleted = async {
            self.check_running()?;
            must_be_admin(who, "delete topics")?;
            self.cluster.check_writable()?;
            let deleted = self.topics.delete(&topic_name(name)?).await;
            if let Err(Error::TopicNotFound(_)) = &deleted {
                // Maybe deleted by an earlier call whose answer was lost: answered once the
                // deletion is held, like it, so NOT_FOUND means gone after a failover too.
                self.roster_committed(self.topics.roster_version()).await?;
            }
            deleted?;
            self.roster_committed(self.topics.roster_version()).await
        };
        self.counted(deleted.await)
    }

    /// Refuses `/metrics` to a caller without `admin`.
    pub fn may_read_metrics(&self, who: &Principal) -> Result<()> {
        self.counted(must_be_admin(who, "read /metrics"))
    }

    /// Every topic `who` may publish or subscribe to (all for an admin), with its figures;
    /// UNAVAILABLE once shutdown began, as every new call.
    pub fn list_topics(&self, who: &Principal) -> Result<Vec<proto::TopicInfo>> {
        self.counted(self.check_running())?;
        Ok(self
            .topics
            .list()
            .iter()
            .filter(|t| who.may_see(t.name()))
            .map(|t| topic_info(t))
            .collect())
    }

    /// Checks a publish request against API.md's error table; nothing is touched yet.
    fn validate(&self, r: proto::PublishRequest) -> Result<(String, NewFrame)> {
        let topic = topic_name(&r.topic)?;
        self.payload_fits(r.payload.len() as u64)?;
        let mut frame = NewFrame {
            seq_no: r.seq_no,
            timestamp: r.timestamp,
            key: Bytes::from(r.idempotency_key.into_bytes()),
            payload: r.payload,
        };
        wal::check_frames(
            self.topics.log_config(),
            std::slice::from_mut(&mut frame),
            wal::now_ns(),
        )?;
        Ok((topic, frame))
    }

    /// Refuses (and counts) a payload of `size` bytes over `--max-frame-bytes`: for a
    /// door that knows a body's size before reading it.
    pub fn check_payload_size(&self, size: u64) -> Result<()> {
        self.counted(self.payload_fits(size))
    }

    pub(super) fn payload_fits(&self, size: u64) -> Result<()> {
        let max = self.max_frame_bytes();
        if size > max {
            return Err(Error::PayloadTooLarge { size, max });
        }
        Ok(())
    }

    /// `--max-frame-bytes`: the largest payload accepted.
    pub fn max_frame_bytes(&self) -> u64 {
        self.topics.log_config().max_frame_bytes as u64
    }

    /// Bytes of encoded records one log request may hold (one segment's room): a door
    /// that groups frames into one request keeps each group within it.
    pub fn request_room(&self) -> u64 {
        self.topics.log_config().request_room()
    }

    /// Takes a slot of `--max-subscribers`, before anything else is done for a
    /// subscription, so that a refused one creates no topic.
    fn reserve_subscriber(&self) -> Result<GlobalSlot> {
        let max = self.max_subscribers;
        if self.subscribers.fetch_add(1, Ordering::AcqRel) >= max {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::TooManySubscribers(max));
        }
        Ok(GlobalSlot(Arc::clone(&self.subscribers)))
    }

    /// The topic of a subscription. A resume cursor names an epoch of an existing topic,
    /// which a topic created now could never match: refused as the epoch check would,
    /// without creating the topic (nothing is written when a request is refused).
    ///
    /// A node that takes no writes (a follower) and lacks the topic cannot tell a topic
    /// to create from one it has not copied yet, and only the leader creates topics (a
    /// follower's would diverge): it answers as it does to every write, `UNAVAILABLE` naming
    /// the leader, whose answer is final (the topic, created or copied, or `NOT_FOUND`).
    async fn subscription_topic(
        &self,
        name: &str,
        r: &proto::SubscribeRequest,
    ) -> Result<Arc<Topic>> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic);
        }
        if let Some(refusal) = self.cluster.leader_elsewhere(format!("topic '{name}'")) {
            return Err(refusal);
        }
        self.cluster.check_writable()?;
        match &r.resume {
            Some(c) if self.topics.auto_create() => Err(Error::EpochMismatch {
                topic: name.to_string(),
                cursor: c.epoch,
                // Epochs are never 0: the topic does not exist.
                current: 0,
            }),
            _ => self.topics.get_or_create(name, Cause::Subscribe).await,
        }
    }

    /// Waits until every in-sync member holds the topics as they stand at roster version
    /// `version` (a creation or deletion just made): at once on a single node, on a
    /// cluster's leader once each member says so (or left the set). Without it a topic
    /// deleted here could come back with its frames on the next leader, and an
    /// acknowledged creation's settings be lost. Fails as [`Broker::committed`] does when
    /// this node may no longer acknowledge meanwhile; the change stays made here then, as
    /// an unacknowledged publish's frames do.
    async fn roster_committed(&self, version: u64) -> Result<()> {
        let Some(peers) = self.cluster.peers() else {
            return self.cluster.check_writable().map_err(after_the_write);
        };
        let mut answers = peers.want_roster(version);
        let mut shutdown = self.shutdown.clone();
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + WRITABLE_RECHECK,
            WRITABLE_RECHECK,
        );
        while !peers.roster_held(version) {
            tokio::select! {
                changed = answers.changed() => {
                    if changed.is_err() {
                        return Err(Error::NotWritable("this node stopped leading before the followers held the change".into()));
                    }
                }
                _ = recheck.tick() => {
                    self.cluster.check_writable().map_err(after_the_write)?;
                    // Led again in a later term meanwhile: the old term's bookkeeping will
                    // never hear another answer.
                    if !self.cluster.peers().is_some_and(|now| std::ptr::addr_eq(Arc::as_ptr(&now), Arc::as_ptr(&peers))) {
                        return Err(Error::NotWritable("the leadership changed before the followers held the change".into()));
                    }
                }
                _ = shutdown.wait() => return Err(Error::ShuttingDown),
            }
        }
        self.cluster.check_writable().map_err(after_the_write)
    }

    /// Waits until the frames acknowledged as `appended` of `topic` are committed: at once
    /// on a single node (durable is committed), on a cluster node once every in-sync member
    /// holds them. Checks again then that this node may still acknowledge (a leader whose
    /// lease may have lapsed must not).
    async fn committed(&self, topic: &Topic, appended: &[wal::Appended]) -> Result<()> {
        if !topic.is_replicated() {
            return Ok(());
        }
        let Some(need) = appended.iter().map(|a| a.offset + 1).max() else {
            return Ok(());
        };
        if topic.visible_offset() >= need {
            return self.cluster.check_writable().map_err(after_the_write);
        }
        let mut visible = topic.watch_visible();
        let mut ended = topic.watch_ended();
        let mut shutdown = self.shutdown.clone();
        // A leader cut off from etcd and from its followers sees its commit point stand
        // still: without a look at its own standing now and then, the publishes waiting
        // would hang until the cut heals, where they must fail (UNAVAILABLE) once its lease
        // may have lapsed, so that their clients go to the new leader.
        let mut recheck = tokio::time::interval_at(
            tokio::time::Instant::now() + WRITABLE_RECHECK,
            WRITABLE_RECHECK,
        );
        while topic.visible_offset() < need {
            tokio::select! {
                changed = visible.changed() => {
                    if changed.is_err() {
                        return Err(Error::NotWritable("the topic was closed before its frames were committed".into()));
                    }
                }
                _ = ended.changed() => {
                    return Err(Error::NotWritable("the topic was closed before its frames were committed".into()));
                }
                _ = recheck.tick() => self.cluster.check_writable().map_err(after_the_write)?,
                _ = shutdown.wait() => return Err(Error::ShuttingDown),
            }
        }
        self.cluster.check_writable().map_err(after_the_write)
    }
}

/// `e`, a refusal met after a write reached this node's log (it stopped leading while the
/// write waited for its followers): a follower's [`Error::NotLeader`] would tell the client
/// that nothing was written and send even a write without an idempotency key to the new
/// leader, which may hold it already. Plain UNAVAILABLE instead: the write's fate is
/// unknown, as an unacknowledged one's is, and only a retry with its key is safe.
fn after_the_write(e: Error) -> Error {
    match e {
        Error::NotLeader { .. } => Error::NotWritable(
            "this node stopped leading after the write reached its log; it may or may not be \
             kept (a retry with the same idempotency key is safe)"
                .into(),
        ),
        e => e,
    }
}

/// Where a subscription of `topic` starts: a fresh snapshot, or the checked resume cursor
/// (with the `floor` its token carried, if any). A cursor this node cannot serve yet (a
/// cluster node behind the one that issued it) is refused with [`cursor_ahead`]'s answer;
/// a single node's refusals are final.
fn start_at(
    topic: &Topic,
    r: &proto::SubscribeRequest,
    cluster: &ClusterView,
    floor: Option<u64>,
) -> Result<StartAt> {
    let epoch = topic.meta().epoch;
    let durable = topic.visible_offset();
    let Some(c) = &r.resume else {
        return Ok(StartAt {
            snapshot: durable,
            start_seq_no: r.replay_seq_no_start,
            after: None,
            floor: Some(topic.log().first_offset()),
        });
    };
    if c.epoch != epoch {
        return Err(epoch_elsewhere(cluster, topic.name(), c.epoch, epoch));
    }
    if c.snapshot_offset > durable {
        return Err(cursor_ahead(
            cluster,
            topic,
            c.snapshot_offset,
            format!(
                "cursor snapshot_offset {} is beyond the topic's next offset {durable}",
                c.snapshot_offset
            ),
        ));
    }
    // A cursor with timestamp 0 names no frame (stored timestamps are never 0): the stream
    // starts again from the beginning of the same snapshot.
    let after = (c.timestamp != 0).then_some(OrderKey {
        seq_no: c.seq_no,
        timestamp: c.timestamp,
        offset: c.offset,
    });
    if let Some(a) = after {
        if a.offset >= durable {
            return Err(cursor_ahead(
                cluster,
                topic,
                // A cursor may carry any offset, u64::MAX too.
                a.offset.saturating_add(1),
                format!(
                    "cursor offset {} is beyond the topic's next offset {durable}",
                    a.offset
                ),
            ));
        }
    }
    let at = StartAt {
        snapshot: c.snapshot_offset,
        start_seq_no: r.replay_seq_no_start,
        after,
        floor,
    };
    match at.removed_refusal(topic.log()) {
        Some(refusal) => Err(refusal),
        None => Ok(at),
    }
}

/// The refusal of a cursor that needs `topic` up to offset `upto` (exclusive) where this
/// node shows less. A follower names the leader, who holds it or answers for good (a
/// client that resumes on a follower a moment behind the node it left is sent on, not
/// failed). A cluster leader that holds those frames but has not committed them yet (just
/// after a failover its commit point catches up within a replication round) answers
/// UNAVAILABLE, to be asked again. Otherwise `OUT_OF_RANGE` with `message`, final.
pub(super) fn cursor_ahead(
    cluster: &ClusterView,
    topic: &Topic,
    upto: u64,
    message: String,
) -> Error {
    if let Some(refusal) =
        cluster.leader_elsewhere(format!("topic '{}' up to offset {upto}", topic.name()))
    {
        return refusal;
    }
    if topic.is_replicated() && upto <= topic.log().durable_offset() {
        return Error::NotCommittedYet(format!(
            "topic '{}' up to offset {upto} is held here but not committed yet; ask again",
            topic.name()
        ));
    }
    Error::OutOfRange(message)
}

/// The refusal of a cursor of epoch `cursor` of `topic`, whose epoch here is `current`: a
/// follower names the leader (it may not have copied a re-created topic yet; the leader's
/// answer is final), elsewhere `FAILED_PRECONDITION`.
pub(super) fn epoch_elsewhere(
    cluster: &ClusterView,
    topic: &str,
    cursor: u64,
    current: u64,
) -> Error {
    cluster
        .leader_elsewhere(format!("topic '{topic}' of epoch {cursor}"))
        .unwrap_or_else(|| Error::EpochMismatch {
            topic: topic.to_string(),
            cursor,
            current,
        })
}

/// Refuses a publish to `topic` that `who` may not make.
pub(super) fn may_publish(who: &Principal, topic: &str) -> Result<()> {
    if who.may_publish(topic) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "'{}' may not publish to topic '{topic}'",
        who.subject()
    )))
}

/// How often a publish waiting for the commit point checks that this node may still
/// acknowledge.
const WRITABLE_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// The subject of node `node_id`'s token.
pub fn node_subject(node_id: &str) -> String {
    format!("framecast-node-{node_id}")
}

/// Refuses an administrative call by a caller without `admin`.
fn must_be_admin(who: &Principal, what: &str) -> Result<()> {
    if who.is_admin() {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "'{}' may not {what}: it needs admin",
        who.subject()
    )))
}

/// When `who`'s token expires, on the runtime's clock: a stream it opened ends then.
pub fn deadline(who: &Principal) -> Option<tokio::time::Instant> {
    who.expires_at().map(|at| {
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    })
}

/// Ends a stream whose token has expired.
fn check_expiry(who: &Principal) -> Result<()> {
    if who.expires_at().is_some() && who.is_expired(SystemTime::now()) {
        return Err(Error::TokenExpired);
    }
    Ok(())
}

/// Maps an empty topic to `default` and checks the name.
pub fn topic_name(t: &str) -> Result<String> {
    let name = if t.is_empty() { "default" } else { t };
    if !valid_topic_name(name) {
        return Err(Error::InvalidArgument(format!(
            "topic name '{name}' does not match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"
        )));
    }
    Ok(name.to_string())
}

/// What a frame costs the publish budget: its payload and key.
pub(super) fn frame_bytes(frame: &NewFrame) -> usize {
    frame.payload.len() + frame.key.len()
}

/// An append error as the client should see it: a deleted topic is NOT_FOUND.
fn append_error(topic: &Topic, e: wal::Error) -> Error {
    if topic.is_deleted() {
        Error::TopicNotFound(topic.name().to_string())
    } else {
        Error::Wal(e)
    }
}

/// A topic's figures.
pub fn topic_info(t: &Topic) -> proto::TopicInfo {
    let s = t.log().stats();
    proto::TopicInfo {
        name: t.name().to_string(),
        epoch: t.meta().epoch,
        frames: s.frames,
        bytes: s.bytes,
        first_offset: s.first_offset,
        next_offset: s.next_offset,
        min_seq_no: s.min_seq_no.unwrap_or(0),
        max_seq_no: s.max_seq_no.unwrap_or(0),
        subscribers: t.subscribers(),
        segments: u32::try_from(s.segments).unwrap_or(u32::MAX),
        subscriber_max_lag_frames: t.gauges().max_lag_frames,
    }
}
