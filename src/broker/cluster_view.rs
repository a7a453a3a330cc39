//! [`ClusterView`]: the cluster as this node sees it — the term, the leader, every node with
//! its roles and per-topic positions — and the events of its changes. The gRPC `Cluster` and
//! `WatchCluster` calls and `GET /v1/cluster` are translations of what it answers; who may
//! see which topic's positions is checked here, once, with ListTopics' rule.
//!
//! A single node (no `--cluster-etcd`) is a cluster of one: term 0, itself the leader, in
//! sync and online. The cluster layer fills in the rest through [`ClusterView::announce`]:
//! the term, the leader, this node's roles and the other nodes it learns of from etcd.
//!
//! This node's positions are never stored: they are read from its topics at call time, so
//! an answer is as current as a ListTopics made at the same moment. The membership lives in
//! a `tokio::sync::watch`: one value, replaced on every change, so a watcher that reads
//! slowly costs no memory — it skips to the latest event, whose full `ClusterInfo`
//! supersedes the ones it missed.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;

use super::core::{deadline, Broker};
use super::error::{Error, Result};
use super::principal::Principal;
use super::subscription::until;
use super::topics::Topics;
use crate::proto::{self, cluster_event::Kind};

/// The id of a node that runs without a cluster: stable across restarts and hosts, so a
/// client that remembers it is not misled by a rename.
pub const STANDALONE_NODE_ID: &str = "standalone";

/// Who this node is, as other nodes and clients know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThisNode {
    /// The node's id ([`STANDALONE_NODE_ID`] for a single node).
    pub id: String,
    /// The gRPC address clients reach it at (`HOST:PORT`).
    pub address: String,
    /// The HTTP door's URL (`http://HOST:PORT`), or `""` when the door is off.
    pub http_address: String,
}

/// This node's roles in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// It is the leader: the one node that accepts writes.
    pub leader: bool,
    /// It is a member of the in-sync set.
    pub in_sync: bool,
    /// It is registered (its lease is alive).
    pub online: bool,
}

impl Roles {
    /// Whether a node with these roles is out of sync: a follower the leader left out of
    /// the in-sync set (or has not added yet), whose copy may lack acknowledged frames.
    fn out_of_sync(&self) -> bool {
        !self.leader && !self.in_sync
    }
}

/// What the cluster layer knows beyond this node's own topics: the state every answer and
/// event is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    /// The leader key's revision (0 for a single node).
    pub term: u64,
    /// The leader's gRPC address (`""` while there is none).
    pub leader: String,
    /// This node's roles.
    pub this: Roles,
    /// The other nodes, with the positions they report.
    pub others: Vec<proto::NodeInfo>,
}

impl Membership {
    /// Sets `cluster_nodes{state}` to the nodes this membership has online and in sync.
    fn count_nodes(&self, topics: &Topics) {
        let count = |this: bool, other: fn(&proto::NodeInfo) -> bool| {
            u64::from(this) + self.others.iter().filter(|n| other(n)).count() as u64
        };
        topics.metrics().set_cluster_nodes(
            count(self.this.online, |n| n.online),
            count(self.this.in_sync, |n| n.in_sync),
        );
    }

    /// A cluster of one: `this` leads, at term 0.
    pub fn single(this: &ThisNode) -> Membership {
        Membership {
            term: 0,
            leader: this.address.clone(),
            this: Roles {
                leader: true,
                in_sync: true,
                online: true,
            },
            others: Vec::new(),
        }
    }
}

/// Where the other nodes stand in each topic, as the leader learns from their reports.
pub trait PeerPositions: Send + Sync + std::fmt::Debug {
    /// The positions of node `id` in every topic it reported, in name order (empty when
    /// unknown).
    fn positions_of(&self, id: &str) -> Vec<proto::TopicPosition>;

    /// How many of the leader's frames each follower it hears from lacks, per topic, as
    /// `(topic, node id, frames)` (`replication_lag_frames{topic,node}`).
    fn lags(&self) -> Vec<(String, String, u64)>;

    /// A CreateTopic or DeleteTopic waits until every in-sync member holds the topic
    /// roster up to `version` ([`Topics::roster_version`] after its change): a member that
    /// does not answer soon leaves the set. Returns what changes whenever the followers'
    /// answers or the set do, to wait on before asking [`PeerPositions::roster_held`]
    /// again.
    fn want_roster(&self, version: u64) -> watch::Receiver<u64>;

    /// Whether every in-sync member holds the topic roster up to `version`.
    fn roster_held(&self, version: u64) -> bool;
}

/// The membership and the change that made it, as the watch holds it.
#[derive(Debug, Clone)]
struct Latest {
    membership: Membership,
    /// The last change announced (`None` before any): its kind and the node it is about.
    change: Option<(Kind, String)>,
}

/// The cluster as this node sees it. Cheap to clone; held by the [`Broker`].
#[derive(Debug, Clone)]
pub struct ClusterView {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topics: Arc<Topics>,
    this: ThisNode,
    latest: watch::Sender<Latest>,
    /// Why this node, though it leads, cannot acknowledge writes now (`None`: it can).
    refusal: parking_lot::RwLock<Option<String>>,
    /// The instant past which this leader must not acknowledge (its lease may have
    /// lapsed), unless the cluster layer moves it on: checked at every write and ack, so a
    /// process resumed after a pause refuses before any task has run.
    deadline: parking_lot::RwLock<Option<std::time::Instant>>,
    /// The other nodes' positions while this node leads (`None` otherwise: a follower
    /// knows only its own).
    peers: parking_lot::RwLock<Option<Arc<dyn PeerPositions>>>,
    /// Whether this node neither leads nor is in the in-sync set: what it holds may lack
    /// frames the cluster acknowledged, so it serves no reads ([`OutOfSync`]). Changes only
    /// when that does; subscriptions read its version at each step, and waiting ones are
    /// woken through their topics when it is set.
    out_of_sync: watch::Sender<bool>,
    /// Whether this node runs in a cluster: a single node is never out of sync, and its
    /// subscriptions do not read the flag.
    clustered: bool,
}

impl ClusterView {
    /// The view of a node that runs alone (no `--cluster-etcd`), over its `topics`.
    pub fn single_node(topics: Arc<Topics>, this: ThisNode) -> ClusterView {
        let membership = Membership::single(&this);
        ClusterView::with(topics, this, membership, false)
    }

    /// The view of a cluster node before it knows the cluster: no leader yet, not in sync,
    /// not registered. It refuses writes until the cluster layer announces it leads.
    pub fn cluster_node(topics: Arc<Topics>, this: ThisNode) -> ClusterView {
        let membership = Membership {
            term: 0,
            leader: String::new(),
            this: Roles {
                leader: false,
                in_sync: false,
                online: false,
            },
            others: Vec::new(),
        };
        ClusterView::with(topics, this, membership, true)
    }

    fn with(
        topics: Arc<Topics>,
        this: ThisNode,
        membership: Membership,
        clustered: bool,
    ) -> ClusterView {
        let out_of_sync = watch::Sender::new(membership.this.out_of_sync());
        membership.count_nodes(&topics);
        ClusterView {
            inner: Arc::new(Inner {
                topics,
                this,
                latest: watch::Sender::new(Latest {
                    membership,
                    change: None,
                }),
                refusal: parking_lot::RwLock::new(None),
                deadline: parking_lot::RwLock::new(None),
                peers: parking_lot::RwLock::new(None),
                out_of_sync,
                clustered,
            }),
        }
    }

    /// Whether this node may serve reads, asked once (a call) or at every step (a
    /// subscription): see [`OutOfSync`].
    pub fn out_of_sync(&self) -> OutOfSync {
        let rx = self
            .inner
            .clustered
            .then(|| self.inner.out_of_sync.subscribe());
        let out = rx.as_ref().is_some_and(|rx| *rx.borrow());
        OutOfSync {
            view: self.clone(),
            rx,
            out,
        }
    }

    /// Whether this node may take a write now: it must lead ([`Error::NotLeader`] with the
    /// leader's address otherwise) and be able to acknowledge ([`Error::NotWritable`]).
    pub fn check_writable(&self) -> Result<()> {
        if let Some(refusal) = self.leader_elsewhere(String::new()) {
            return Err(refusal);
        }
        if let Some(why) = &*self.inner.refusal.read() {
            return Err(Error::NotWritable(why.clone()));
        }
        match *self.inner.deadline.read() {
            Some(d) if std::time::Instant::now() >= d => Err(Error::NotWritable(
                "this node's etcd lease may have lapsed: not acknowledging writes".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The refusal of a request that needs `lacks`, something this node does not hold,
    /// when this node does not lead: [`Error::NotLeader`] naming the leader, who holds it
    /// or answers for good. `None` on the leader and on a single node, whose answer about
    /// its own topics is final.
    pub fn leader_elsewhere(&self, lacks: String) -> Option<Error> {
        let latest = self.inner.latest.borrow();
        let m = &latest.membership;
        (!m.this.leader).then(|| Error::NotLeader {
            lacks,
            leader: m.leader.clone(),
            leader_http: m
                .others
                .iter()
                .find(|n| n.leader)
                .map(|n| n.http_address.clone())
                .unwrap_or_default(),
        })
    }

    /// Sets the instant past which this node refuses writes (`None`: no limit).
    pub fn set_deadline(&self, deadline: Option<std::time::Instant>) {
        *self.inner.deadline.write() = deadline;
    }

    /// Sets why this node, though it leads, refuses writes (`None`: it takes them).
    pub fn set_refusal(&self, why: Option<String>) {
        let mut r = self.inner.refusal.write();
        if *r != why {
            if let Some(w) = &why {
                tracing::warn!(reason = %w, "refusing writes");
            } else if r.is_some() {
                tracing::info!("taking writes again");
            }
            *r = why;
        }
    }

    /// Where the other nodes' positions come from: the leader's bookkeeping while this node
    /// leads, `None` when it stops.
    pub fn set_peer_positions(&self, peers: Option<Arc<dyn PeerPositions>>) {
        *self.inner.peers.write() = peers;
    }

    /// The other nodes' word on the topic roster while this node leads (`None` on a single
    /// node or a follower: nobody else to ask).
    pub fn peers(&self) -> Option<Arc<dyn PeerPositions>> {
        self.inner.peers.read().clone()
    }

    /// How many of this leader's frames each follower it hears from lacks, per topic, as
    /// `(topic, node id, frames)` in that order; empty on a follower and on a single node
    /// (nothing to copy to, or no knowledge of the others).
    pub fn replication_lags(&self) -> Vec<(String, String, u64)> {
        // Out of the lock first: the leader's bookkeeping is read under its own.
        let peers = self.inner.peers.read().clone();
        let mut lags = peers.map(|p| p.lags()).unwrap_or_default();
        lags.sort_unstable();
        lags
    }

    /// Who this node is.
    pub fn this_node(&self) -> &ThisNode {
        &self.inner.this
    }

    /// The membership now.
    pub fn membership(&self) -> Membership {
        self.inner.latest.borrow().membership.clone()
    }

    /// Records a change of the cluster (`kind`, about node `node_id`) and the membership
    /// after it; every watcher gets one event for it, or only the latest if it is behind.
    pub fn announce(&self, kind: Kind, node_id: &str, membership: Membership) {
        let out = membership.this.out_of_sync();
        let leader = membership.leader.clone();
        membership.count_nodes(&self.inner.topics);
        // The membership first: a subscription woken by the flag finds the leader to name.
        self.inner.latest.send_replace(Latest {
            membership,
            change: Some((kind, node_id.to_string())),
        });
        let fell = self.inner.out_of_sync.send_if_modified(|was| {
            if *was == out {
                return false;
            }
            if out {
                tracing::warn!(
                    %leader,
                    "out of the in-sync set: ending this node's subscriptions and refusing reads; clients resume on another node"
                );
            } else {
                tracing::info!("in sync: serving reads again");
            }
            *was = out;
            true
        });
        if out && fell {
            // Subscriptions waiting for frames (none come to a node cut off) are woken
            // through their topics' frontiers, and find the flag set.
            for t in self.inner.topics.list() {
                t.wake_subscribers();
            }
        }
    }

    /// The whole cluster now, every topic of this node included.
    pub fn info(&self) -> proto::ClusterInfo {
        let membership = self.membership();
        self.info_of(&membership)
    }

    /// The changes of the cluster from now on: first this node coming online, with the
    /// whole cluster, then one event per announced change (or the latest, when behind).
    pub fn watch(&self) -> ClusterWatch {
        ClusterWatch {
            view: self.clone(),
            // A new receiver has seen the current value: only later changes wake it.
            rx: self.inner.latest.subscribe(),
            opened: false,
        }
    }

    /// `membership` with this node's live positions.
    fn info_of(&self, membership: &Membership) -> proto::ClusterInfo {
        let this = &self.inner.this;
        let mut nodes = Vec::with_capacity(1 + membership.others.len());
        nodes.push(proto::NodeInfo {
            id: this.id.clone(),
            address: this.address.clone(),
            http_address: this.http_address.clone(),
            leader: membership.this.leader,
            in_sync: membership.this.in_sync,
            online: membership.this.online,
            topics: self.positions(),
        });
        let peers = self.inner.peers.read().clone();
        nodes.extend(membership.others.iter().map(|n| {
            let mut n = n.clone();
            if let (true, Some(p)) = (n.topics.is_empty(), &peers) {
                n.topics = p.positions_of(&n.id);
            }
            n
        }));
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        proto::ClusterInfo {
            term: membership.term,
            leader: membership.leader.clone(),
            nodes,
        }
    }

    /// Every topic's position on this node, read now, in name order.
    fn positions(&self) -> Vec<proto::TopicPosition> {
        self.inner
            .topics
            .list()
            .iter()
            .map(|t| proto::TopicPosition {
                topic: t.name().to_string(),
                next_offset: t.log().durable_offset(),
                // The visibility frontier is the commit point: a single node commits what is
                // durable, a replicated topic holds it back to what every in-sync member has.
                commit_offset: t.visible_offset(),
            })
            .collect()
    }
}

/// What a read needs that a node out of sync may lack, as its refusal names it.
const OUT_OF_SYNC_LACKS: &str =
    "every frame the cluster acknowledged (it is out of the in-sync set)";

/// Whether this node may serve reads. A node that neither leads nor is in the in-sync set
/// (the leader dropped it, being more than `--replica-max-lag` behind or unreachable, or has
/// not added it yet) may lack frames the cluster has acknowledged since: its subscribers
/// would wait, unknowing, for frames that do not come. So it refuses reads
/// ([`Error::NotLeader`], naming the leader) and its open subscriptions end the same way;
/// the clients resume them on another node with their cursors, exactly. Nodes that stay
/// in sync are never refused, also while no leader is elected or etcd is unreachable (the
/// in-sync set cannot change then, and no frame is acknowledged without them).
#[derive(Debug, Clone)]
pub struct OutOfSync {
    view: ClusterView,
    /// The flag (`None` on a single node, never out of sync).
    rx: Option<watch::Receiver<bool>>,
    /// The flag as last read: a subscription asks at every step, and reading the flag's
    /// lock there from every subscriber would contend on it; its version is read instead.
    out: bool,
}

impl OutOfSync {
    /// The refusal of a read now, if this node is out of sync.
    pub fn refusal(&mut self) -> Option<Error> {
        let rx = self.rx.as_mut()?;
        if rx.has_changed().unwrap_or(false) {
            self.out = *rx.borrow_and_update();
        }
        if !self.out {
            return None;
        }
        self.view.leader_elsewhere(OUT_OF_SYNC_LACKS.to_string())
    }

    /// Waits until the flag changes, and returns whether this node is out of sync now.
    /// Never returns on a single node, which never is.
    pub async fn changed(&mut self) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            // The sender lives in the view this flag holds: it cannot be dropped.
            return std::future::pending().await;
        }
        self.out = *rx.borrow_and_update();
        self.out
    }
}

/// One watcher of a [`ClusterView`]: a receiver of the latest change, never a queue.
#[derive(Debug)]
pub struct ClusterWatch {
    view: ClusterView,
    rx: watch::Receiver<Latest>,
    opened: bool,
}

impl ClusterWatch {
    /// The next event: at once the first time (this node online), then when the cluster
    /// changes. Never ends while the view lives.
    pub async fn next(&mut self) -> proto::ClusterEvent {
        if !self.opened {
            self.opened = true;
            let membership = self.rx.borrow_and_update().membership.clone();
            return event(
                Kind::NodeOnline,
                &self.view.inner.this.id,
                self.view.info_of(&membership),
            );
        }
        if self.rx.changed().await.is_err() {
            // The sender lives in the view this watcher holds: it cannot be dropped.
            std::future::pending::<()>().await;
        }
        let latest = self.rx.borrow_and_update().clone();
        let (kind, node) = latest.change.unwrap_or((Kind::Unspecified, String::new()));
        event(kind, &node, self.view.info_of(&latest.membership))
    }
}

fn event(kind: Kind, node_id: &str, cluster: proto::ClusterInfo) -> proto::ClusterEvent {
    proto::ClusterEvent {
        kind: kind as i32,
        node_id: node_id.to_string(),
        cluster: Some(cluster),
    }
}

/// The events of a `WatchCluster`, as the broker hands them to a door; it ends with
/// UNAVAILABLE at shutdown and UNAUTHENTICATED when the caller's token expires.
pub type ClusterEvents = Pin<Box<dyn Stream<Item = Result<proto::ClusterEvent>> + Send>>;

impl Broker {
    /// The cluster as this node sees it. Any caller (any valid token) may ask; a node's
    /// positions list only the topics `who` may see, by ListTopics' rule.
    pub fn cluster(&self, who: &Principal) -> Result<proto::ClusterInfo> {
        self.counted(self.check_running())?;
        Ok(visible_to(who, self.cluster_view().info()))
    }

    /// The cluster's changes, the first event at once, each with the whole cluster as `who`
    /// may see it. Quiet while nothing changes; ends at shutdown or when `who`'s token
    /// expires.
    pub fn watch_cluster(&self, who: Arc<Principal>) -> Result<ClusterEvents> {
        self.counted(self.check_running())?;
        let expires = deadline(&who);
        let state = (self.cluster_view().watch(), self.shutdown().clone(), false);
        let events = futures::stream::unfold(state, move |(mut watch, mut shutdown, done)| {
            let who = Arc::clone(&who);
            async move {
                if done {
                    return None;
                }
                // Shutdown first: a stream open at the signal ends even if a change is ready.
                let next = tokio::select! {
                    biased;
                    () = shutdown.wait() => Err(Error::ShuttingDown),
                    () = until(expires) => Err(Error::TokenExpired),
                    mut e = watch.next() => {
                        e.cluster = e.cluster.map(|c| visible_to(&who, c));
                        Ok(e)
                    }
                };
                let done = next.is_err();
                Some((next, (watch, shutdown, done)))
            }
        });
        Ok(Box::pin(events))
    }
}

/// `info` with only the topic positions `who` may see (ListTopics' rule).
fn visible_to(who: &Principal, mut info: proto::ClusterInfo) -> proto::ClusterInfo {
    for node in &mut info.nodes {
        node.topics.retain(|t| who.may_see(&t.topic));
    }
    info
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::broker::metrics::{Metrics, Transport};
    use crate::broker::pattern::PatternSet;
    use crate::broker::shutdown::{self, ShutdownTrigger};
    use crate::wal::LogConfig;
    use futures::StreamExt;

    fn this() -> ThisNode {
        ThisNode {
            id: STANDALONE_NODE_ID.into(),
            address: "127.0.0.1:7070".into(),
            http_address: "http://127.0.0.1:7071".into(),
        }
    }

    /// A broker over a fresh data dir, with its view and its shutdown trigger.
    fn broker(dir: &std::path::Path) -> (Broker, ClusterView, ShutdownTrigger) {
        let metrics = Arc::new(Metrics::new(100));
        let topics = Arc::new(Topics::open(dir, LogConfig::default(), true, metrics).unwrap());
        let view = ClusterView::single_node(Arc::clone(&topics), this());
        let (trigger, signal) = shutdown::channel();
        let broker = Broker::new(topics, signal, 10, None, view.clone());
        (broker, view, trigger)
    }

    async fn publish(broker: &Broker, topic: &str, n: u64) {
        for seq_no in 0..n {
            let r = proto::PublishRequest {
                seq_no,
                payload: bytes::Bytes::from_static(b"x"),
                timestamp: 0,
                topic: topic.into(),
                idempotency_key: String::new(),
            };
            broker.publish(&Principal::anonymous(), r).await.unwrap();
        }
    }

    fn principal(publish: &[&str], subscribe: &[&str]) -> Principal {
        let set = |p: &[&str]| PatternSet::parse(p).unwrap();
        Principal::new("t", set(publish), set(subscribe), false)
    }

    #[tokio::test]
    async fn a_single_node_leads_alone_at_term_0_with_live_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, view, _trigger) = broker(dir.path());
        publish(&broker, "a", 3).await;
        let info = view.info();
        assert_eq!(info.term, 0);
        assert_eq!(info.leader, "127.0.0.1:7070");
        assert_eq!(info.nodes.len(), 1);
        let n = &info.nodes[0];
        assert_eq!(n.id, "standalone");
        assert_eq!(n.address, "127.0.0.1:7070");
        assert_eq!(n.http_address, "http://127.0.0.1:7071");
        assert!(n.leader && n.in_sync && n.online);
        assert_eq!(
            n.topics,
            vec![proto::TopicPosition {
                topic: "a".into(),
                next_offset: 3,
                commit_offset: 3
            }]
        );
        // Read at call time: a later publish shows at once.
        publish(&broker, "a", 2).await;
        assert_eq!(view.info().nodes[0].topics[0].next_offset, 5);
        broker.topics().close_all();
    }

    #[tokio::test]
    async fn a_watch_opens_with_this_node_online_then_skips_to_the_latest_change() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, view, _trigger) = broker(dir.path());
        let mut watch = view.watch();
        let first = watch.next().await;
        assert_eq!(first.kind, Kind::NodeOnline as i32);
        assert_eq!(first.node_id, "standalone");
        assert_eq!(first.cluster.unwrap(), view.info());
        // Quiet while nothing changes.
        let quiet = tokio::time::timeout(Duration::from_millis(50), watch.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        // Many changes to a watcher that is not reading: it is given the last one only.
        let mut m = view.membership();
        for term in 1..=1000 {
            m.term = term;
            m.leader = format!("10.0.0.{}:7070", term % 3);
            view.announce(Kind::LeaderChanged, &format!("n{}", term % 3), m.clone());
        }
        let e = watch.next().await;
        assert_eq!(e.kind, Kind::LeaderChanged as i32);
        assert_eq!(e.node_id, "n1");
        let info = e.cluster.unwrap();
        assert_eq!((info.term, info.leader.as_str()), (1000, "10.0.0.1:7070"));
        let quiet = tokio::time::timeout(Duration::from_millis(50), watch.next()).await;
        assert!(quiet.is_err(), "{quiet:?}");
        broker.topics().close_all();
    }

    async fn history_len(broker: &Broker, who: &Principal, r: &proto::HistoryRequest) -> usize {
        broker
            .history(who, r, |_| 1)
            .await
            .unwrap()
            .page
            .frames
            .len()
    }

    #[tokio::test]
    async fn a_follower_out_of_sync_ends_its_subscriptions_and_refuses_reads_until_back() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new(100));
        // A cluster node's topics are replicas: frames visible below a commit point.
        let topics = Topics::open_with(dir.path(), LogConfig::default(), true, metrics, true);
        let topics = Arc::new(topics.unwrap());
        let view = ClusterView::cluster_node(Arc::clone(&topics), this());
        let (_trigger, signal) = shutdown::channel();
        let broker = Broker::new(topics, signal, 10, None, view.clone());
        let roles = |leader, in_sync| Membership {
            term: 7,
            leader: if leader {
                "127.0.0.1:7070"
            } else {
                "10.0.0.2:7070"
            }
            .into(),
            this: Roles {
                leader,
                in_sync,
                online: true,
            },
            others: Vec::new(),
        };
        let anyone = Principal::anonymous();
        let request = proto::SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "a".into(),
            resume: None,
        };
        let history = proto::HistoryRequest {
            topic: "a".into(),
            ..Default::default()
        };
        let names_leader = |e: Error| match e {
            Error::NotLeader { lacks, leader, .. } => {
                assert_eq!(lacks, OUT_OF_SYNC_LACKS);
                assert_eq!(leader, "10.0.0.2:7070");
            }
            e => panic!("{e:?}"),
        };
        // A node that knows nothing of the cluster yet serves no reads.
        assert!(view.out_of_sync().refusal().is_some());
        // It leads (term 7) and takes three frames, committed (as every in-sync member would
        // report them); then it follows, in sync, and reads.
        view.announce(Kind::LeaderChanged, "n1", roles(true, true));
        let publishing = {
            let broker = broker.clone();
            tokio::spawn(async move { publish(&broker, "a", 3).await })
        };
        while !publishing.is_finished() {
            if let Some(t) = broker.topics().get("a") {
                t.advance_commit(t.log().durable_offset());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publishing.await.unwrap();
        view.announce(Kind::LeaderChanged, "n2", roles(false, true));
        let opened = broker
            .subscribe(&anyone, &request, Transport::Grpc)
            .await
            .unwrap();
        let mut frames = opened.subscription.into_stream();
        for offset in 0..3 {
            assert_eq!(frames.next().await.unwrap().unwrap().offset, offset);
        }
        assert_eq!(history_len(&broker, &anyone, &history).await, 3);
        // Dropped from the in-sync set: the waiting subscription ends naming the leader,
        // and new reads are refused the same way.
        let waiting = tokio::spawn(async move { frames.next().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        view.announce(Kind::LeaderChanged, "n2", roles(false, false));
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        names_leader(ended.unwrap().unwrap_err());
        let refused = broker.subscribe(&anyone, &request, Transport::Sse).await;
        names_leader(refused.err().unwrap());
        names_leader(broker.history(&anyone, &history, |_| 1).await.unwrap_err());
        // Back in sync: it reads again.
        view.announce(Kind::LeaderChanged, "n2", roles(false, true));
        assert!(view.out_of_sync().refusal().is_none());
        assert_eq!(history_len(&broker, &anyone, &history).await, 3);
        assert!(broker
            .subscribe(&anyone, &request, Transport::Grpc)
            .await
            .is_ok());
        broker.topics().close_all();
    }

    #[tokio::test]
    async fn positions_follow_list_topics_rule_and_watches_end_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (broker, _view, trigger) = broker(dir.path());
        for name in ["a.x", "a.y", "b.x"] {
            publish(&broker, name, 1).await;
        }
        let names = |info: &proto::ClusterInfo| -> Vec<String> {
            info.nodes[0]
                .topics
                .iter()
                .map(|t| t.topic.clone())
                .collect()
        };
        let limited = Arc::new(principal(&[], &["a.*"]));
        assert_eq!(names(&broker.cluster(&limited).unwrap()), ["a.x", "a.y"]);
        let admin = Principal::new("ops", PatternSet::default(), PatternSet::default(), true);
        assert_eq!(
            names(&broker.cluster(&admin).unwrap()),
            ["a.x", "a.y", "b.x"]
        );
        let writer = principal(&["b.*"], &[]);
        assert_eq!(names(&broker.cluster(&writer).unwrap()), ["b.x"]);
        let listed: Vec<_> = broker
            .list_topics(&limited)
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names(&broker.cluster(&limited).unwrap()), listed);

        let mut events = broker.watch_cluster(Arc::clone(&limited)).unwrap();
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(names(first.cluster.as_ref().unwrap()), ["a.x", "a.y"]);
        trigger.fire();
        let end = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap();
        assert!(matches!(end, Some(Err(Error::ShuttingDown))), "{end:?}");
        assert!(events.next().await.is_none());
        assert!(matches!(broker.cluster(&limited), Err(Error::ShuttingDown)));
        // ListTopics too, as every new call (the gRPC and HTTP doors both ask the broker).
        assert!(matches!(
            broker.list_topics(&limited),
            Err(Error::ShuttingDown)
        ));
        broker.topics().close_all();
    }
}
