//! Replication between nodes, in process over real gRPC on loopback: a follower copies
//! every topic byte for byte (epoch, settings, term history, records), frames become
//! visible only below the commit point its reports make, it resumes from its own end after
//! a restart, drops what the leader does not hold, and an old leader that rejoins cuts the
//! tail a new leader lacks (kept as `.torn`), which comparing ends alone would have kept.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};

use framecast::broker::metrics::Metrics;
use framecast::broker::terms::TermStart;
use framecast::broker::{Topic, Topics};
use framecast::cluster::follower::{follow, FollowError};
use framecast::cluster::leader::Leader;
use framecast::wal::{LogConfig, NewFrame};

const LAG: Duration = Duration::from_secs(30);

fn open(dir: &Path) -> Arc<Topics> {
    let metrics = Arc::new(Metrics::new(100));
    Arc::new(Topics::open_with(dir, LogConfig::default(), true, metrics, true).unwrap())
}

/// A leader of `term` over `topics`, serving on a loopback port; `members`: its in-sync
/// set besides itself.
async fn lead(
    topics: &Arc<Topics>,
    id: &str,
    term: u64,
    members: &[&str],
) -> (SocketAddr, Vec<JoinHandle<()>>) {
    let leader = Leader::start(
        Arc::clone(topics),
        id,
        term,
        members.iter().map(|m| m.to_string()),
        LAG,
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = leader.service();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    let commits = tokio::spawn(Arc::clone(&leader).run_commits());
    (addr, vec![server, commits])
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn start_following(
    topics: &Arc<Topics>,
    ch: Channel,
    id: &str,
    term: u64,
) -> JoinHandle<Result<(), FollowError>> {
    let (topics, id) = (Arc::clone(topics), id.to_string());
    tokio::spawn(async move { follow(topics, ch, &id, term, None).await })
}

async fn publish(topic: &Topic, from: u64, n: u64, tag: &str) {
    let frames = (from..from + n)
        .map(|i| NewFrame {
            seq_no: i,
            timestamp: 0,
            key: if i % 3 == 0 {
                Bytes::from(format!("key-{i}"))
            } else {
                Bytes::new()
            },
            // 0 bytes up to a few KiB.
            payload: Bytes::from(tag.repeat((i % 7) as usize * 300)),
        })
        .collect();
    topic.log().append_async(frames).await.unwrap();
}

/// Every record of `topic`, as stored.
fn records(topics: &Topics, topic: &str) -> Vec<Bytes> {
    let t = topics.get(topic).unwrap();
    let first = t.log().stats().first_offset;
    let (records, next) = t.log().read_records(first, usize::MAX).unwrap();
    assert_eq!(next, t.log().durable_offset());
    records
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn end(topics: &Topics, topic: &str) -> u64 {
    topics.get(topic).map_or(0, |t| t.log().durable_offset())
}

fn visible(topics: &Topics, topic: &str) -> u64 {
    topics.get(topic).map_or(0, |t| t.visible_offset())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_copies_every_topic_and_commits_wait_for_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let (addr, _leader) = lead(&a, "A", 7, &["B"]).await;
    let (prices, _) = a.create("prices", 0, 0).await.unwrap();
    a.create("chat", 3600, 1 << 30).await.unwrap();
    publish(&prices, 0, 40, "p").await;

    // B is in the in-sync set and has not reported: nothing is committed, nothing visible.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(end(&a, "prices"), 40);
    assert_eq!(
        visible(&a, "prices"),
        0,
        "committed before the in-sync follower held it"
    );

    let following = start_following(&b, channel(addr).await, "B", 7);
    until("B holds prices and the commit point moves", || {
        end(&b, "prices") == 40 && visible(&a, "prices") == 40 && visible(&b, "prices") == 40
    })
    .await;
    assert_eq!(records(&a, "prices"), records(&b, "prices"));
    let (ta, tb) = (a.get("chat").unwrap(), b.get("chat").unwrap());
    assert_eq!(ta.meta(), tb.meta(), "epoch and settings copied");
    assert_eq!(
        b.get("prices").unwrap().terms().entries(),
        &[TermStart { term: 7, start: 0 }]
    );

    // Live: frames published while following, a topic created and one deleted.
    publish(&prices, 40, 500, "q").await;
    let (news, _) = a.create("news", 0, 0).await.unwrap();
    publish(&news, 0, 5, "n").await;
    a.delete("chat").await.unwrap();
    until("B copies the live changes", || {
        end(&b, "prices") == 540
            && end(&b, "news") == 5
            && b.get("chat").is_none()
            && visible(&b, "prices") == 540
            && visible(&b, "news") == 5
    })
    .await;
    assert_eq!(records(&a, "prices"), records(&b, "prices"));
    assert_eq!(records(&a, "news"), records(&b, "news"));
    assert_eq!(a.get("news").unwrap().meta(), b.get("news").unwrap().meta());
    assert!(!following.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resumes_from_its_end_and_drops_what_the_leader_lacks() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path());
    let (addr, _leader) = lead(&a, "A", 3, &["B"]).await;
    let (t, _) = a.create("t", 0, 0).await.unwrap();
    publish(&t, 0, 100, "x").await;
    {
        let b = open(db.path());
        let following = start_following(&b, channel(addr).await, "B", 3);
        until("B holds 100", || end(&b, "t") == 100).await;
        following.abort();
        let _ = following.await;
        b.close_all();
    }
    publish(&t, 100, 1000, "y").await;
    // While B was away, a topic of its own appeared there (another epoch than any here).
    let b = open(db.path());
    b.create("stray", 0, 0).await.unwrap();
    assert_eq!(end(&b, "t"), 100, "B restarts from its own durable end");
    assert_eq!(
        visible(&b, "t"),
        0,
        "a restarted replica shows nothing before a commit"
    );
    let _following = start_following(&b, channel(addr).await, "B", 3);
    until("B catches up and drops the stray topic", || {
        end(&b, "t") == 1100 && b.get("stray").is_none() && visible(&a, "t") == 1100
    })
    .await;
    assert_eq!(records(&a, "t"), records(&b, "t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_that_rejoins_cuts_the_tail_the_new_leader_lacks() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    // Term 1: A leads, B copies the first 10 frames.
    let (addr_a, leader_a) = lead(&a, "A", 1, &["B"]).await;
    let (ta, _) = a.create("t", 0, 0).await.unwrap();
    publish(&ta, 0, 10, "old").await;
    let following = start_following(&b, channel(addr_a).await, "B", 1);
    until("B holds 10", || end(&b, "t") == 10).await;
    following.abort();
    let _ = following.await;
    // A writes 5 more nobody copies (never committed), then loses its leadership.
    publish(&ta, 10, 5, "lost").await;
    for h in leader_a {
        h.abort();
    }
    // Term 2: B leads from 10 and writes 3 frames of its own at offsets A also used.
    let (addr_b, _leader_b) = lead(&b, "B", 2, &["A"]).await;
    let tb = b.get("t").unwrap();
    assert_eq!(
        tb.terms().entries(),
        &[
            TermStart { term: 1, start: 0 },
            TermStart { term: 2, start: 10 }
        ]
    );
    publish(&tb, 10, 3, "new").await;
    assert_ne!(
        records(&a, "t")[10..13],
        records(&b, "t")[10..13],
        "the two logs differ at offsets 10..13: comparing ends would keep A's"
    );

    let _following = start_following(&a, channel(addr_b).await, "A", 2);
    until("A cuts its tail and copies B's frames", || {
        end(&a, "t") == 13 && a.get("t").is_some_and(|t| t.terms().last_term() == 2)
    })
    .await;
    assert_eq!(records(&a, "t"), records(&b, "t"));
    let torn: Vec<_> = std::fs::read_dir(da.path().join("topics/t"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".torn"))
        .collect();
    assert!(!torn.is_empty(), "the cut frames are kept as .torn copies");
    until("the commit point covers B's frames on both", || {
        visible(&b, "t") == 13 && visible(&a, "t") == 13
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_another_term_is_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    let (addr, _leader) = lead(&a, "A", 5, &[]).await;
    let (t, _) = a.create("t", 0, 0).await.unwrap();
    publish(&t, 0, 3, "x").await;
    until("a lone leader commits what it holds", || {
        visible(&a, "t") == 3
    })
    .await;
    let err = follow(Arc::clone(&b), channel(addr).await, "B", 4, None)
        .await
        .unwrap_err();
    match err {
        FollowError::Leader(s) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s}");
        }
        other => panic!("expected the leader's refusal, got {other}"),
    }
    assert!(b.get("t").is_none(), "a refused follower copies nothing");
}
