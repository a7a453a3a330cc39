//! Membership against a real etcd (Debian's `etcd-server`, 3.4), started per test on loopback
//! ports with a temporary data dir. The contract: every node's map is etcd's `nodes/`
//! prefix, and the events a subscriber receives, applied to its snapshot, always give that
//! map; a node is offline once its key is gone (at once after `leave`, after its lease TTL
//! when it dies, never before its keeper's bound); an id is held by one live process only;
//! and a node's own key, once lost, is not re-created behind the caller's back. Every wait
//! is bounded.
#![allow(clippy::unwrap_used)]

#[path = "common/etcd.rs"]
mod etcd_server;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_server::EtcdServer;
use framecast::cluster::etcd::{Etcd, EtcdError, LeaseKeeper};
use framecast::cluster::membership::{
    nodes_prefix, MemberEvent, Membership, MembershipError, NodeRecord,
};
use tokio::sync::broadcast;
use tokio::time::{sleep, Instant};

/// etcd's minimum lease TTL with default settings: the shortest lease to test with.
const TTL: Duration = Duration::from_secs(2);

const CLUSTER: &str = "test";

/// Fails the test if `fut` takes longer than `limit`.
async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

/// A fresh lease of [`TTL`] and its keeper.
async fn kept_lease(etcd: &Etcd) -> (i64, LeaseKeeper) {
    let lease = etcd.grant_lease(TTL).await.unwrap();
    let keeper = etcd.keep_alive(lease, TTL).await.unwrap();
    (lease, keeper)
}

fn record(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.to_owned(),
        address: format!("127.0.0.1:{}", 7000 + id.len()),
        http_address: format!("http://127.0.0.1:8000/{id}"),
        home: String::new(),
    }
}

/// A node: its membership and the keeper of its lease.
struct Node {
    membership: Membership,
    keeper: LeaseKeeper,
}

async fn join(etcd: &Etcd, id: &str) -> Node {
    let (lease, keeper) = kept_lease(etcd).await;
    let membership = Membership::join(etcd, CLUSTER, record(id), lease)
        .await
        .unwrap();
    Node { membership, keeper }
}

fn ids(nodes: &BTreeMap<String, NodeRecord>) -> Vec<&str> {
    nodes.keys().map(String::as_str).collect()
}

/// The node ids in etcd, read directly.
async fn ids_in_etcd(etcd: &Etcd) -> Vec<String> {
    let (kvs, _) = etcd.get_prefix(&nodes_prefix(CLUSTER)).await.unwrap();
    let prefix = nodes_prefix(CLUSTER);
    kvs.iter()
        .map(|kv| kv.key.strip_prefix(&prefix).unwrap().to_owned())
        .collect()
}

/// A subscriber that replays the events onto its snapshot, as a consumer would.
struct Watcher {
    model: BTreeMap<String, NodeRecord>,
    events: broadcast::Receiver<MemberEvent>,
    seen: Vec<(Instant, MemberEvent)>,
}

impl Watcher {
    fn new(membership: &Membership) -> Watcher {
        let (model, events) = membership.subscribe();
        Watcher {
            model,
            events,
            seen: Vec::new(),
        }
    }

    /// Applies events until `done(model)` holds; returns when it first did.
    async fn until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&BTreeMap<String, NodeRecord>) -> bool,
    ) -> Instant {
        within(what, limit, async {
            while !done(&self.model) {
                let event = self.events.recv().await.unwrap();
                event.apply(&mut self.model);
                self.seen.push((Instant::now(), event));
            }
            Instant::now()
        })
        .await
    }

    /// Applies the events already sent, without waiting.
    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            event.apply(&mut self.model);
            self.seen.push((Instant::now(), event));
        }
    }

    fn kinds(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|(_, e)| match e {
                MemberEvent::Online(r) => format!("+{}", r.id),
                MemberEvent::Offline(id) => format!("-{id}"),
            })
            .collect()
    }
}

#[tokio::test]
async fn two_nodes_join_and_each_sees_both() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let a = join(&etcd, "a").await;
    assert_eq!(ids(&a.membership.nodes().borrow()), ["a"]);
    assert_eq!(a.membership.nodes().borrow()["a"], record("a"));
    let mut a_watch = Watcher::new(&a.membership);

    let b = join(&etcd, "b").await;
    assert_eq!(
        ids(&b.membership.nodes().borrow()),
        ["a", "b"],
        "the joiner lists the nodes already there"
    );
    a_watch
        .until("a sees b", Duration::from_secs(5), |m| m.contains_key("b"))
        .await;
    assert_eq!(a_watch.kinds(), ["+b"]);
    assert_eq!(a_watch.model["b"], record("b"));
    assert_eq!(*a.membership.nodes().borrow(), a_watch.model);
    for node in [&a, &b] {
        assert!(node.membership.is_registered());
        assert!(node.membership.is_online("a") && node.membership.is_online("b"));
        assert!(!node.membership.is_online("c"));
    }
    assert_eq!(ids_in_etcd(&etcd).await, ["a", "b"]);
    drop((a.keeper, b.keeper));
}

#[tokio::test]
async fn a_duplicate_id_is_refused_while_the_first_is_alive() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let first = join(&etcd, "a").await;

    let (lease, _keeper) = kept_lease(&etcd).await;
    match Membership::join(&etcd, CLUSTER, record("a"), lease).await {
        Err(MembershipError::DuplicateId { id, .. }) => assert_eq!(id, "a"),
        other => panic!("second process with id a: {other:?}"),
    }
    let kv = etcd
        .get(&format!("{}a", nodes_prefix(CLUSTER)))
        .await
        .unwrap()
        .expect("the first node's key was deleted");
    assert_eq!(
        kv.lease,
        Some(first.keeper.lease()),
        "the refused join took the key"
    );
    sleep(Duration::from_millis(300)).await;
    assert!(first.membership.is_registered());

    // Once the first has left, the id is free.
    first.membership.leave().await.unwrap();
    let second = Membership::join(&etcd, CLUSTER, record("a"), lease)
        .await
        .unwrap();
    assert!(second.is_registered());
    assert_eq!(second.lease(), lease);
}

/// A record of the same id and home (host and data directory) under another lease is an
/// earlier run of the node starting (the server holds that directory's lock): its lease is
/// revoked and the node registers at once. Another home is a duplicate, refused.
#[tokio::test]
async fn an_earlier_run_of_the_same_home_is_revoked_and_another_home_refused() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let at = |home: &str| NodeRecord {
        home: home.to_owned(),
        ..record("a")
    };
    let (old_lease, old_keeper) = kept_lease(&etcd).await;
    let earlier = Membership::join(&etcd, CLUSTER, at("h:/data"), old_lease)
        .await
        .unwrap();
    // Killed: its keeper stops renewing, but the lease lives on for its TTL.
    drop(old_keeper);

    let (lease, _keeper) = kept_lease(&etcd).await;
    match Membership::join(&etcd, CLUSTER, at("other:/data"), lease).await {
        Err(MembershipError::DuplicateId { id, .. }) => assert_eq!(id, "a"),
        other => panic!("another home with id a: {other:?}"),
    }
    let again = Membership::join(&etcd, CLUSTER, at("h:/data"), lease)
        .await
        .unwrap();
    assert!(again.is_registered());
    let kv = etcd
        .get(&format!("{}a", nodes_prefix(CLUSTER)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kv.lease, Some(lease));
    // The earlier run's lease is gone: nothing it held stays for its TTL.
    assert!(matches!(
        etcd.keep_alive(old_lease, TTL).await,
        Err(EtcdError::LeaseNotFound { .. })
    ));
    // The earlier run hears its key was taken (through its watch: bounded, not a guess).
    let mut registered = earlier.registration();
    within(
        "the earlier run unregistered",
        Duration::from_secs(5),
        registered.wait_for(|r| !r),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_node_whose_keeper_is_dropped_goes_offline_after_its_lease_and_not_before() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let mut a_watch = Watcher::new(&a.membership);
    assert!(a_watch.model.contains_key("b"));

    // b dies: no more renewals, no leave.
    let valid_until = b.keeper.valid_until();
    drop(b);
    let offline_at = a_watch
        .until("b offline", TTL + Duration::from_secs(4), |m| {
            !m.contains_key("b")
        })
        .await;
    assert!(
        offline_at >= valid_until,
        "b reported offline {:?} before its lease's bound",
        valid_until - offline_at
    );
    assert_eq!(a_watch.kinds(), ["-b"]);
    assert!(!a.membership.is_online("b"));
    assert!(a.membership.is_online("a") && a.membership.is_registered());
    assert_eq!(ids_in_etcd(&etcd).await, ["a"]);
    drop(a.keeper);
}

#[tokio::test]
async fn leave_is_seen_at_once_and_rejoin_brings_the_node_back() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let mut a_watch = Watcher::new(&a.membership);

    // b's lease is alive: only the delete can make it offline this fast.
    let left = Instant::now();
    b.membership.leave().await.unwrap();
    let seen = a_watch
        .until("b offline after leave", TTL, |m| !m.contains_key("b"))
        .await;
    // Within b's lease: its delete, not a lapse, took it offline.
    assert!(seen - left < TTL);
    assert!(!b.membership.is_registered());
    let mut b_nodes = b.membership.nodes();
    within(
        "b's own map drops b",
        Duration::from_secs(2),
        b_nodes.wait_for(|m| !m.contains_key("b")),
    )
    .await
    .unwrap();

    b.membership.rejoin(b.keeper.lease()).await.unwrap();
    assert!(b.membership.is_registered());
    a_watch
        .until("b back online", Duration::from_secs(2), |m| {
            m.contains_key("b")
        })
        .await;
    assert_eq!(a_watch.kinds(), ["-b", "+b"]);
    sleep(Duration::from_millis(300)).await;
    assert!(
        b.membership.is_registered(),
        "its own put flagged as foreign"
    );
    drop(a.keeper);
}

#[tokio::test]
async fn a_lost_key_is_not_recreated_until_the_caller_rejoins() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let mut b_watch = Watcher::new(&b.membership);

    // a's lease is revoked behind its back: its key goes.
    etcd.revoke(a.keeper.lease()).await.unwrap();
    let mut registered = a.membership.registration();
    within(
        "a unregistered",
        Duration::from_secs(2),
        registered.wait_for(|r| !r),
    )
    .await
    .unwrap();
    b_watch
        .until("a offline", Duration::from_secs(2), |m| {
            !m.contains_key("a")
        })
        .await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(ids_in_etcd(&etcd).await, ["b"], "a's key was re-created");
    assert!(!a.membership.is_registered());
    assert!(!a.membership.is_online("a"));

    let (lease, _keeper) = kept_lease(&etcd).await;
    a.membership.rejoin(lease).await.unwrap();
    assert!(a.membership.is_registered());
    assert_eq!(a.membership.lease(), lease);
    b_watch
        .until("a back", Duration::from_secs(2), |m| m.contains_key("a"))
        .await;
    assert_eq!(b_watch.kinds(), ["-a", "+a"]);
    let mut a_nodes = a.membership.nodes();
    within(
        "a's own map holds a",
        Duration::from_secs(2),
        a_nodes.wait_for(|m| m.contains_key("a")),
    )
    .await
    .unwrap();
    sleep(Duration::from_millis(300)).await;
    assert!(a.membership.is_registered());
    drop(b.keeper);
}

/// etcd 3.4 does not persist a lease's remaining time: a restarted etcd gives every lease a
/// whole new TTL (see `tests/cluster_etcd.rs`). So b, which dies while etcd is down, is
/// listed again after the restart and goes offline one TTL later, while a's keeper renews
/// a's lease and a stays registered. The map must survive the outage (a failed listing
/// clears nothing), the watch must resume (c, joining after the restart, is seen), and the
/// events must replay to the final map, which is etcd's.
#[tokio::test]
async fn after_etcd_is_killed_and_restarted_membership_relists_and_recovers() {
    let mut server = EtcdServer::start().await;
    let etcd = server.client().await;
    let a = join(&etcd, "a").await;
    let b = join(&etcd, "b").await;
    let mut a_watch = Watcher::new(&a.membership);
    assert_eq!(ids(&a_watch.model), ["a", "b"]);

    server.stop();
    drop(b);
    sleep(TTL + Duration::from_secs(1)).await;
    a_watch.drain();
    assert_eq!(
        a_watch.kinds(),
        Vec::<String>::new(),
        "events while etcd was down"
    );
    assert_eq!(ids(&a.membership.nodes().borrow()), ["a", "b"]);

    let restarted = Instant::now();
    server.start_again().await;
    let offline_at = a_watch
        .until(
            "b offline after the restart",
            TTL + Duration::from_secs(8),
            |m| !m.contains_key("b"),
        )
        .await;
    assert!(
        offline_at >= restarted + TTL - Duration::from_millis(100),
        "b went offline {:?} after the restart: etcd 3.4 renews leases at a restart",
        offline_at - restarted
    );

    let c = join(&etcd, "c").await;
    a_watch
        .until("c online", Duration::from_secs(5), |m| m.contains_key("c"))
        .await;
    sleep(Duration::from_millis(300)).await;
    a_watch.drain();
    assert_eq!(a_watch.kinds(), ["-b", "+c"]);
    assert_eq!(ids(&a_watch.model), ["a", "c"]);
    assert_eq!(*a.membership.nodes().borrow(), a_watch.model);
    assert_eq!(ids_in_etcd(&etcd).await, ["a", "c"]);
    assert!(a.membership.is_registered(), "a's key survived the restart");
    assert!(!a.keeper.state().borrow().lost);
    assert_eq!(ids(&c.membership.nodes().borrow()), ["a", "c"]);
    drop(c.keeper);
}
