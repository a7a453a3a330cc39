//! The etcd layer of the cluster against a real etcd (Debian's `etcd-server`, 3.4), started
//! per test on loopback ports with a temporary data dir. The cluster's safety rests on the
//! properties checked here: a lease's keeper never claims more than etcd granted (its
//! `valid_until` bound holds when renewals stop, whether the keeper is dropped, etcd is
//! killed or etcd is paused); the election's term (`rev`) only grows; a candidate whose key
//! is gone is never told it leads; and a deposed leader's fenced write is refused. Every
//! wait is bounded.
#![allow(clippy::unwrap_used)]

#[path = "common/etcd.rs"]
mod etcd_server;

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use etcd_server::{EtcdServer, CLIENT_TIMEOUT};
use framecast::cluster::etcd::{Etcd, EtcdError, Kv, LeaseKeeper, WatchEvent, WatchStream};
use futures::StreamExt;
use tokio::time::{sleep, Instant};

/// etcd's minimum lease TTL with default settings: the shortest lease to test with.
const TTL: Duration = Duration::from_secs(2);

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

/// A loopback URL nothing listens on.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Polls `get(key)` every 50 ms until it is `None`; returns when it first was.
async fn wait_gone(etcd: &Etcd, key: &str, limit: Duration) -> Instant {
    within(&format!("{key} to vanish"), limit, async {
        loop {
            if etcd.get(key).await.unwrap().is_none() {
                return Instant::now();
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The next event of a watch, within 5 s.
async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    within("watch event", Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ended")
        .unwrap()
}

fn keys(kvs: &[Kv]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

#[tokio::test]
async fn put_get_prefix_delete_round_trip() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;

    assert_eq!(etcd.get("/t/a").await.unwrap(), None);
    let first = etcd.put("/t/a", b"1".to_vec(), None).await.unwrap();
    let second = etcd.put("/t/b", b"2".to_vec(), None).await.unwrap();
    // Shares the prefix "/t" but not "/t/": must not be listed.
    etcd.put("/tx", b"outside".to_vec(), None).await.unwrap();
    assert!(second > first, "revisions grow: {first} then {second}");

    let a = etcd.get("/t/a").await.unwrap().unwrap();
    assert_eq!(a.value, b"1");
    assert_eq!(
        (a.create_revision, a.mod_revision, a.lease),
        (first, first, None)
    );

    let third = etcd.put("/t/a", b"3".to_vec(), None).await.unwrap();
    let a = etcd.get("/t/a").await.unwrap().unwrap();
    assert_eq!(a.value, b"3");
    assert_eq!((a.create_revision, a.mod_revision), (first, third));

    let (kvs, revision) = etcd.get_prefix("/t/").await.unwrap();
    assert_eq!(keys(&kvs), ["/t/a", "/t/b"]);
    assert_eq!(revision, third, "the listing's revision is the store's");

    assert!(etcd.delete("/t/a").await.unwrap());
    assert!(
        !etcd.delete("/t/a").await.unwrap(),
        "a second delete finds nothing"
    );
    assert_eq!(etcd.get("/t/a").await.unwrap(), None);
    let (kvs, _) = etcd.get_prefix("/t/").await.unwrap();
    assert_eq!(keys(&kvs), ["/t/b"]);
}

#[tokio::test]
async fn a_kept_lease_holds_its_key_and_a_dropped_keeper_lets_it_expire() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let started = Instant::now();
    let (lease, keeper) = kept_lease(&etcd).await;
    etcd.put("/t/member", b"n1".to_vec(), Some(lease))
        .await
        .unwrap();

    // More than twice the TTL: only the keeper's renewals keep the key.
    sleep(2 * TTL + Duration::from_secs(1)).await;
    let kv = etcd
        .get("/t/member")
        .await
        .unwrap()
        .expect("key gone while kept alive");
    assert_eq!(kv.lease, Some(lease));
    let state = *keeper.state().borrow();
    assert!(!state.lost);
    assert_eq!(state.ttl, TTL);
    assert!(
        state.last_renewed > started + TTL,
        "renewals continue: last one sent {:?} after the start",
        state.last_renewed - started
    );
    assert!(keeper.valid_until() > Instant::now());

    // The keeper's bound is conservative: etcd must not drop the key before it.
    let valid_until = keeper.valid_until();
    drop(keeper);
    let gone_at = wait_gone(&etcd, "/t/member", TTL + Duration::from_secs(4)).await;
    assert!(
        gone_at >= valid_until,
        "etcd dropped the key {:?} before the keeper's bound",
        valid_until - gone_at
    );
}

#[tokio::test]
async fn a_lease_revoked_behind_the_keepers_back_is_reported_lost() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let (lease, keeper) = kept_lease(&etcd).await;
    etcd.put("/t/member", b"n1".to_vec(), Some(lease))
        .await
        .unwrap();

    let other = server.client().await;
    other.revoke(lease).await.unwrap();
    assert_eq!(
        other.get("/t/member").await.unwrap(),
        None,
        "revoke deletes the lease's keys"
    );
    // Revoking again is not an error.
    other.revoke(lease).await.unwrap();

    let mut state = keeper.state();
    // The next renewal (a third of the TTL away) learns it.
    within(
        "lost",
        TTL + Duration::from_secs(2),
        state.wait_for(|s| s.lost),
    )
    .await
    .unwrap();
    assert!(keeper.valid_until() <= Instant::now());

    match etcd.put("/t/member", b"n1".to_vec(), Some(lease)).await {
        Err(EtcdError::LeaseNotFound { lease: l }) => assert_eq!(l, lease),
        other => panic!("put under a revoked lease: {other:?}"),
    }
    match etcd.keep_alive(lease, TTL).await {
        Err(EtcdError::LeaseNotFound { lease: l }) => assert_eq!(l, lease),
        other => panic!("keep_alive of a revoked lease: {other:?}"),
    }
}

#[tokio::test]
async fn the_second_campaigner_waits_until_the_first_resigns_and_gets_a_later_term() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let name = "/t/election";
    assert_eq!(etcd.leader(name).await.unwrap(), None, "no leader yet");
    let (a_lease, _a_keeper) = kept_lease(&etcd).await;
    let (b_lease, _b_keeper) = kept_lease(&etcd).await;

    let a = within(
        "a elected",
        Duration::from_secs(5),
        etcd.campaign(name, a_lease, b"a".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!((a.name.as_str(), a.lease), (name, a_lease));
    assert!(a.key.starts_with("/t/election/"), "leader key {}", a.key);

    let b_campaign = tokio::spawn({
        let etcd = etcd.clone();
        async move { etcd.campaign(name, b_lease, b"b".to_vec()).await }
    });
    sleep(Duration::from_secs(1)).await;
    assert!(!b_campaign.is_finished(), "b elected while a leads");
    let leader = etcd.leader(name).await.unwrap().unwrap();
    assert_eq!(
        (leader.value.as_slice(), leader.create_revision),
        (&b"a"[..], a.rev)
    );

    etcd.resign(&a).await.unwrap();
    let b = within("b elected", Duration::from_secs(5), b_campaign)
        .await
        .unwrap()
        .unwrap();
    assert!(b.rev > a.rev, "terms grow: {} then {}", a.rev, b.rev);
    let leader = etcd.leader(name).await.unwrap().unwrap();
    assert_eq!(
        (leader.value.as_slice(), leader.create_revision),
        (&b"b"[..], b.rev)
    );
    assert_eq!(leader.key, b.key);
}

#[tokio::test]
async fn the_second_campaigner_wins_when_the_first_leaders_lease_expires() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let name = "/t/election";
    let (a_lease, a_keeper) = kept_lease(&etcd).await;
    let (b_lease, _b_keeper) = kept_lease(&etcd).await;
    let a = etcd.campaign(name, a_lease, b"a".to_vec()).await.unwrap();
    let b_campaign = tokio::spawn({
        let etcd = etcd.clone();
        async move { etcd.campaign(name, b_lease, b"b".to_vec()).await }
    });

    // The leader dies: its renewals stop, its lease lapses.
    let a_valid_until = a_keeper.valid_until();
    drop(a_keeper);
    let b = within("b elected", TTL + Duration::from_secs(4), b_campaign)
        .await
        .unwrap()
        .unwrap();
    assert!(
        Instant::now() >= a_valid_until,
        "b elected while a's lease surely held"
    );
    assert!(b.rev > a.rev, "terms grow: {} then {}", a.rev, b.rev);
    assert_eq!(
        etcd.leader(name).await.unwrap().unwrap().create_revision,
        b.rev
    );
}

/// etcd's campaign waits for the keys before the candidate's to go, not for the candidate's
/// own to stay: it answers "elected" to a candidate whose lease expired while it waited.
/// `campaign` checks the leader key and refuses that leadership.
#[tokio::test]
async fn a_candidate_whose_lease_expired_while_waiting_is_not_elected() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let name = "/t/election";
    let (a_lease, _a_keeper) = kept_lease(&etcd).await;
    let (b_lease, b_keeper) = kept_lease(&etcd).await;
    let a = etcd.campaign(name, a_lease, b"a".to_vec()).await.unwrap();
    let b_campaign = tokio::spawn({
        let etcd = etcd.clone();
        async move { etcd.campaign(name, b_lease, b"b".to_vec()).await }
    });
    let election_keys = || async {
        let (kvs, _) = etcd.get_prefix("/t/election/").await.unwrap();
        kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>()
    };
    within("b's key", Duration::from_secs(5), async {
        while election_keys().await.len() < 2 {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(b_keeper);
    within(
        "b's key gone with its lease",
        TTL + Duration::from_secs(4),
        async {
            while election_keys().await != [a.key.clone()] {
                sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(!b_campaign.is_finished());

    etcd.resign(&a).await.unwrap();
    match within("b's campaign", Duration::from_secs(5), b_campaign)
        .await
        .unwrap()
    {
        Err(EtcdError::NotLeader { name: n }) => assert_eq!(n, name),
        other => panic!("a candidate without a lease was elected: {other:?}"),
    }
    assert_eq!(etcd.leader(name).await.unwrap(), None);
}

#[tokio::test]
async fn only_the_current_leader_writes_through_the_fence() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let name = "/t/election";
    let (a_lease, _a_keeper) = kept_lease(&etcd).await;
    let (b_lease, _b_keeper) = kept_lease(&etcd).await;
    let a = etcd.campaign(name, a_lease, b"a".to_vec()).await.unwrap();
    assert!(etcd
        .put_if_leader(&a, "/t/insync", b"a,b".to_vec())
        .await
        .unwrap());

    let b_campaign = tokio::spawn({
        let etcd = etcd.clone();
        async move { etcd.campaign(name, b_lease, b"b".to_vec()).await }
    });
    etcd.resign(&a).await.unwrap();
    let b = within("b elected", Duration::from_secs(5), b_campaign)
        .await
        .unwrap()
        .unwrap();

    assert!(!etcd
        .put_if_leader(&a, "/t/insync", b"stale".to_vec())
        .await
        .unwrap());
    assert_eq!(etcd.get("/t/insync").await.unwrap().unwrap().value, b"a,b");
    match etcd.proclaim(&a, b"stale".to_vec()).await {
        Err(EtcdError::NotLeader { name: n }) => assert_eq!(n, name),
        other => panic!("proclaim of a deposed leader: {other:?}"),
    }
    assert!(etcd
        .put_if_leader(&b, "/t/insync", b"b".to_vec())
        .await
        .unwrap());
    assert_eq!(etcd.get("/t/insync").await.unwrap().unwrap().value, b"b");
    // Resigning a lost leadership is harmless and deposes nobody.
    etcd.resign(&a).await.unwrap();
    assert_eq!(
        etcd.leader(name).await.unwrap().unwrap().create_revision,
        b.rev
    );
}

#[tokio::test]
async fn observe_reports_every_leader_and_proclamation() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let name = "/t/election";
    let mut observed = etcd.observe(name);
    // Nobody leads yet: nothing to report.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), observed.next())
            .await
            .is_err(),
        "observe reported a leader before any campaign"
    );

    let (a_lease, _a_keeper) = kept_lease(&etcd).await;
    let (b_lease, _b_keeper) = kept_lease(&etcd).await;
    let a = etcd.campaign(name, a_lease, b"a".to_vec()).await.unwrap();
    let limit = Duration::from_secs(5);
    let seen = within("leader a", limit, observed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.create_revision),
        (&b"a"[..], a.rev)
    );

    etcd.proclaim(&a, b"a2".to_vec()).await.unwrap();
    let seen = within("proclamation", limit, observed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.create_revision),
        (&b"a2"[..], a.rev)
    );

    let b_campaign = tokio::spawn({
        let etcd = etcd.clone();
        async move { etcd.campaign(name, b_lease, b"b".to_vec()).await }
    });
    etcd.resign(&a).await.unwrap();
    let b = within("b elected", limit, b_campaign)
        .await
        .unwrap()
        .unwrap();
    let seen = within("leader b", limit, observed.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (seen.value.as_slice(), seen.create_revision),
        (&b"b"[..], b.rev)
    );
}

#[tokio::test]
async fn a_dropped_campaign_leaves_no_key_behind() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let name = "/t/election";
    let (a_lease, _a_keeper) = kept_lease(&etcd).await;
    let (b_lease, _b_keeper) = kept_lease(&etcd).await;
    let a = etcd.campaign(name, a_lease, b"a".to_vec()).await.unwrap();

    let waiting = tokio::time::timeout(
        Duration::from_secs(1),
        etcd.campaign(name, b_lease, b"b".to_vec()),
    )
    .await;
    assert!(waiting.is_err(), "b elected while a leads: {waiting:?}");

    // etcd deletes the canceled campaign's key once it sees the cancellation.
    within("b's key deleted", Duration::from_secs(5), async {
        loop {
            let (kvs, _) = etcd.get_prefix("/t/election/").await.unwrap();
            if keys(&kvs) == [a.key.as_str()] {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    etcd.resign(&a).await.unwrap();
    sleep(Duration::from_millis(500)).await;
    assert_eq!(
        etcd.leader(name).await.unwrap(),
        None,
        "the dropped campaign was elected"
    );
}

#[tokio::test]
async fn the_watch_reports_puts_and_deletes_under_the_prefix_in_order() {
    let server = EtcdServer::start().await;
    let etcd = server.client().await;
    let first = etcd.put("/t/w/x", b"x1".to_vec(), None).await.unwrap();
    let (_, listed) = etcd.get_prefix("/t/w/").await.unwrap();

    let mut live = etcd.watch_prefix("/t/w/", listed + 1).await.unwrap();
    let y = etcd.put("/t/w/y", b"y1".to_vec(), None).await.unwrap();
    let x = etcd.put("/t/w/x", b"x2".to_vec(), None).await.unwrap();
    assert!(etcd.delete("/t/w/x").await.unwrap());
    etcd.put("/t/other", b"outside".to_vec(), None)
        .await
        .unwrap();
    let z = etcd.put("/t/w/z", b"z1".to_vec(), None).await.unwrap();

    match next_event(&mut live).await {
        WatchEvent::Put(kv) => assert_eq!(
            (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
            ("/t/w/y", &b"y1"[..], y)
        ),
        other => panic!("expected put of y: {other:?}"),
    }
    match next_event(&mut live).await {
        WatchEvent::Put(kv) => {
            assert_eq!(
                (kv.key.as_str(), kv.value.as_slice()),
                ("/t/w/x", &b"x2"[..])
            );
            assert_eq!((kv.create_revision, kv.mod_revision), (first, x));
        }
        other => panic!("expected put of x: {other:?}"),
    }
    assert_eq!(
        next_event(&mut live).await,
        WatchEvent::Delete {
            key: "/t/w/x".to_owned(),
            mod_revision: x + 1
        }
    );
    match next_event(&mut live).await {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), ("/t/w/z", z)),
        other => panic!("expected put of z (and nothing outside the prefix): {other:?}"),
    }

    // From an older revision, the watch replays history first.
    let mut replay = etcd.watch_prefix("/t/w/", first).await.unwrap();
    match next_event(&mut replay).await {
        WatchEvent::Put(kv) => {
            assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"x1"[..], first))
        }
        other => panic!("expected the first put of x: {other:?}"),
    }
}

/// etcd 3.4 does not persist a lease's remaining time (lease checkpoints are off by
/// default): a restarted etcd gives every lease a whole new TTL. So a lease whose TTL ran
/// out while etcd was down is alive again after the restart, and its keeper recovers it.
/// That is the deterministic outcome asserted; the cluster must not count on etcd downtime
/// to expire a lease. What it can count on is the keeper's bound, checked here: with etcd
/// down, `valid_until` passes.
#[tokio::test]
async fn the_keeper_recovers_its_lease_after_etcd_is_killed_and_restarted() {
    let mut server = EtcdServer::start().await;
    let etcd = server.client().await;
    let (lease, keeper) = kept_lease(&etcd).await;
    etcd.put("/t/member", b"n1".to_vec(), Some(lease))
        .await
        .unwrap();
    let mut watch = etcd.watch_prefix("/t/members/", 0).await.unwrap();
    let mut observe = etcd.observe("/t/election");
    let (_, a_keeper) = kept_lease(&etcd).await;
    etcd.campaign("/t/election", a_keeper.lease(), b"a".to_vec())
        .await
        .unwrap();
    assert!(within("observe", Duration::from_secs(5), observe.next())
        .await
        .unwrap()
        .is_ok());

    server.stop();
    // Streams on a dead etcd end with an error instead of hanging.
    let limit = Duration::from_secs(5);
    assert!(within("watch error", limit, watch.next())
        .await
        .unwrap()
        .is_err());
    assert!(within("watch end", limit, watch.next()).await.is_none());
    assert!(within("observe error", limit, observe.next())
        .await
        .unwrap()
        .is_err());
    assert!(within("observe end", limit, observe.next()).await.is_none());

    sleep(TTL + Duration::from_secs(1)).await;
    assert!(
        keeper.valid_until() < Instant::now(),
        "the keeper claims a lease it cannot renew"
    );
    assert!(
        !keeper.state().borrow().lost,
        "nobody said the lease is gone"
    );
    assert!(matches!(
        etcd.get("/t/member").await,
        Err(EtcdError::Rpc { .. } | EtcdError::Timeout { .. })
    ));

    let restarted = Instant::now();
    server.start_again().await;
    let mut state = keeper.state();
    within(
        "renewal after the restart",
        Duration::from_secs(5),
        state.wait_for(|s| s.lost || s.last_renewed > restarted),
    )
    .await
    .unwrap();
    assert!(
        !keeper.state().borrow().lost,
        "etcd 3.4 forgot the lease across a restart"
    );
    assert!(keeper.valid_until() > Instant::now());
    let kv = etcd
        .get("/t/member")
        .await
        .unwrap()
        .expect("the leased key survived the restart");
    assert_eq!(kv.lease, Some(lease));
}

/// A paused etcd keeps its connections open and answers nothing: the keeper's bound must
/// still pass within the TTL (a leader stops acknowledging), a watch must still end, and
/// once etcd resumes, the lease that expired meanwhile is reported lost.
#[tokio::test]
async fn with_etcd_paused_the_keepers_bound_passes_the_watch_ends_and_the_lease_is_lost() {
    let mut server = EtcdServer::start().await;
    let etcd = server.client().await;
    let (_lease, keeper) = kept_lease(&etcd).await;
    let mut watch = etcd.watch_prefix("/t/", 0).await.unwrap();

    server.pause();
    let paused = Instant::now();
    sleep(TTL + Duration::from_millis(500)).await;
    assert!(
        keeper.valid_until() <= paused + TTL,
        "the keeper's bound moved past the pause"
    );
    assert!(keeper.valid_until() < Instant::now());
    assert!(!keeper.state().borrow().lost);

    // HTTP/2 keep-alive (6 s) plus its answer timeout (the client timeout) end the watch.
    let limit = Duration::from_secs(6) + CLIENT_TIMEOUT + Duration::from_secs(4);
    assert!(within("watch error", limit, watch.next())
        .await
        .unwrap()
        .is_err());

    server.resume();
    // The lease expired during the pause (etcd's clock kept running), and etcd 3.4 refuses
    // to renew an expired lease: it revokes it, and the keeper reports it lost. (Unlike a
    // restart, see above, a pause does not give leases a new TTL.)
    let mut state = keeper.state();
    within(
        "lease lost after the resume",
        Duration::from_secs(10),
        state.wait_for(|s| s.lost),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn calls_fail_over_from_a_dead_endpoint_to_a_live_one() {
    let server = EtcdServer::start().await;
    let endpoints = [dead_endpoint(), server.endpoint()];
    let etcd = within(
        "connect",
        Duration::from_secs(10),
        Etcd::connect(&endpoints, CLIENT_TIMEOUT),
    )
    .await
    .unwrap();
    let revision = etcd.put("/t/a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(
        etcd.get("/t/a").await.unwrap().unwrap().mod_revision,
        revision
    );
    let (lease, keeper) = kept_lease(&etcd).await;
    assert!(!keeper.state().borrow().lost);
    let mut watch = etcd.watch_prefix("/t/", 0).await.unwrap();
    etcd.put("/t/b", b"2".to_vec(), Some(lease)).await.unwrap();
    assert!(matches!(
        within("watch event", Duration::from_secs(5), watch.next()).await.unwrap().unwrap(),
        WatchEvent::Put(kv) if kv.key == "/t/b"
    ));
}

#[tokio::test]
async fn connecting_to_no_etcd_fails_in_bounded_time() {
    let endpoints = [dead_endpoint(), dead_endpoint()];
    let result = within(
        "connect",
        Duration::from_secs(10),
        Etcd::connect(&endpoints, CLIENT_TIMEOUT),
    )
    .await;
    assert!(result.is_err(), "connected to nothing");
    assert!(matches!(
        Etcd::connect(&[], CLIENT_TIMEOUT).await,
        Err(EtcdError::NoEndpoints)
    ));
    assert!(matches!(
        Etcd::connect(&["not a url".to_owned()], CLIENT_TIMEOUT).await,
        Err(EtcdError::InvalidEndpoint { .. })
    ));
}
