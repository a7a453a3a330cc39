//! The Rust client and the CLI given several addresses: a follower's refusal
//! (`UNAVAILABLE` + `framecast-leader: HOST:PORT`) sends the call to the leader at once and
//! it is stored there exactly once; a dead address is skipped; nodes that name each other
//! end the call with a clear error in bounded time; a subscription given `[dead, real]`
//! resumes exactly after the real server restarts.
//!
//! The follower is a fake written here: a tonic server whose write RPCs refuse with the
//! leader hint, pointing at the real `framecast serve` (two real servers do not share a
//! log, so a real follower cannot be had without the cluster).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use framecast::client::{Ack, Client, Error, Frame, RetryPolicy};
use framecast::proto::{self, broadcast_server::Broadcast, LEADER_HEADER};
use futures::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

/// Where a fake follower refuses a `PublishStream`: at the call (trailers-only), or as the
/// first item of an accepted stream (in the trailers), as a server that reads a request
/// before it refuses would.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StreamRefusal {
    AtCall,
    InStream,
    /// Reads the first request and ends the stream cleanly, answering nothing: a broken
    /// server (counted in `refusals`).
    EndsCleanly,
}

/// A follower that refuses every write naming `leader`; reads are unimplemented (the client
/// must not need them to find the leader).
#[derive(Clone)]
struct Follower {
    leader: Arc<parking_lot::Mutex<String>>,
    refusals: Arc<AtomicU64>,
    stream_refusal: StreamRefusal,
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Follower {
    fn refuse(&self) -> Status {
        self.refusals.fetch_add(1, Ordering::SeqCst);
        let mut md = MetadataMap::new();
        md.insert(LEADER_HEADER, self.leader.lock().parse().unwrap());
        Status::with_metadata(Code::Unavailable, "not the leader", md)
    }
}

#[tonic::async_trait]
impl Broadcast for Follower {
    async fn publish(
        &self,
        _: Request<proto::PublishRequest>,
    ) -> Result<Response<proto::PublishAck>, Status> {
        Err(self.refuse())
    }

    type PublishStreamStream = Boxed<proto::PublishAck>;

    async fn publish_stream(
        &self,
        request: Request<tonic::Streaming<proto::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        match self.stream_refusal {
            StreamRefusal::AtCall => Err(self.refuse()),
            StreamRefusal::InStream => {
                let status = self.refuse();
                let mut requests = request.into_inner();
                let refusal = async move {
                    // Read the first request, write nothing, refuse.
                    let _ = requests.message().await;
                    Err(status)
                };
                Ok(Response::new(Box::pin(futures::stream::once(refusal))))
            }
            StreamRefusal::EndsCleanly => {
                self.refusals.fetch_add(1, Ordering::SeqCst);
                let mut requests = request.into_inner();
                let _ = requests.message().await;
                Ok(Response::new(Box::pin(futures::stream::empty())))
            }
        }
    }

    type SubscribeStream = Boxed<proto::Frame>;

    async fn subscribe(
        &self,
        _: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("fake follower"))
    }

    async fn create_topic(
        &self,
        _: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::TopicInfo>, Status> {
        Err(self.refuse())
    }

    async fn delete_topic(
        &self,
        _: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        Err(self.refuse())
    }

    async fn list_topics(
        &self,
        _: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        Err(Status::unimplemented("fake follower"))
    }

    async fn history(
        &self,
        _: Request<proto::HistoryRequest>,
    ) -> Result<Response<proto::HistoryPage>, Status> {
        Err(Status::unimplemented("fake follower"))
    }

    async fn broadcast(
        &self,
        _: Request<proto::BroadcastRequest>,
    ) -> Result<Response<proto::BroadcastAck>, Status> {
        Err(self.refuse())
    }

    async fn cluster(
        &self,
        _: Request<proto::ClusterRequest>,
    ) -> Result<Response<proto::ClusterInfo>, Status> {
        Err(Status::unimplemented("fake follower"))
    }

    type WatchClusterStream = Boxed<proto::ClusterEvent>;

    async fn watch_cluster(
        &self,
        _: Request<proto::ClusterRequest>,
    ) -> Result<Response<Self::WatchClusterStream>, Status> {
        Err(Status::unimplemented("fake follower"))
    }
}

/// A running fake follower; stopped when dropped.
struct Fake {
    /// `HOST:PORT`, as a leader hint names a node.
    addr: String,
    follower: Follower,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    /// Listens on a loopback port; `leader` may be set later ([`Fake::name`]).
    async fn start(leader: &str, stream_refusal: StreamRefusal) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let follower = Follower {
            leader: Arc::new(parking_lot::Mutex::new(leader.to_string())),
            refusals: Arc::default(),
            stream_refusal,
        };
        let service = proto::broadcast_server::BroadcastServer::new(follower.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Fake {
            addr,
            follower,
            task,
        }
    }

    /// Names `leader` from now on.
    fn name(&self, leader: &str) {
        *self.follower.leader.lock() = leader.to_string();
    }

    fn refusals(&self) -> u64 {
        self.follower.refusals.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `HOST:PORT` of a server address (`http://HOST:PORT`): what a leader hint carries.
fn host_port(addr: &str) -> &str {
    addr.trim_start_matches("http://")
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        max_elapsed: Duration::from_secs(20),
    }
}

/// Fails the test instead of hanging it.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Every acked payload is stored once on `server`, at its acked offset; nothing else is.
async fn assert_stored_once(server: &Server, topic: &str, acks: &[(String, Ack)]) {
    let mut raw = server.client().await;
    let log = read_log(&mut raw, topic).await;
    let mut stored: HashMap<String, Vec<u64>> = HashMap::new();
    for f in &log {
        stored
            .entry(String::from_utf8(f.payload.to_vec()).unwrap())
            .or_default()
            .push(f.offset);
    }
    for (payload, ack) in acks {
        assert!(!ack.duplicate, "{payload}: first stored, not a duplicate");
        assert_eq!(
            stored.get(payload),
            Some(&vec![ack.offset]),
            "{payload} acked at {}",
            ack.offset
        );
    }
    assert_eq!(log.len(), acks.len(), "a stray or doubled frame is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_sent_to_a_follower_land_once_on_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let fake = Fake::start(host_port(&server.addr), StreamRefusal::AtCall).await;

    // Unary publishes (coalescing off), each refused by the follower first.
    let mut acks = Vec::new();
    for i in 0..3u64 {
        let c = Client::connect(&fake.addr)
            .unwrap()
            .with_coalescing(false)
            .with_retry(quick());
        let payload = format!("unary-{i}");
        let ack = bounded("unary publish", c.publish("t", i, payload.clone()))
            .await
            .unwrap();
        assert_eq!(c.current_addr(), host_port(&server.addr));
        acks.push((payload, ack));
    }
    let unary_refusals = fake.refusals();
    assert_eq!(unary_refusals, 3, "each fresh client was refused once");

    // Coalesced publishes (the default) share one stream, refused once, then on the leader.
    let c = Client::connect(&fake.addr).unwrap().with_retry(quick());
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let payload = format!("coalesced-{i}");
            let ack = c.publish("t", 100 + i, payload.clone()).await.unwrap();
            (payload, ack)
        }));
    }
    for t in tasks {
        acks.push(bounded("coalesced publish", t).await.unwrap());
    }
    assert!(
        fake.refusals() > unary_refusals,
        "the stream went to the follower first"
    );
    // A clone already knows the leader: no further refusal.
    let before = fake.refusals();
    let ack = c.clone().publish("t", 999, "after").await.unwrap();
    acks.push(("after".into(), ack));
    assert_eq!(fake.refusals(), before, "the route is shared by clones");
    assert_stored_once(&server, "t", &acks).await;

    // Topic creation and deletion follow the hint too.
    let c = Client::connect(&fake.addr).unwrap().with_retry(quick());
    let info = bounded("create_topic", c.create_topic("made", 0, 0))
        .await
        .unwrap();
    assert_eq!(info.name, "made");
    let c = Client::connect(&fake.addr).unwrap().with_retry(quick());
    bounded("delete_topic", c.delete_topic("made"))
        .await
        .unwrap();
    let mut raw = server.client().await;
    assert!(
        topic_info(&mut raw, "made").await.is_none(),
        "deleted on the leader"
    );

    // A broadcast follows the hint too: one frame on every topic it names (a pattern
    // matches existing topics), each stored once.
    let direct = Client::connect(&server.addr).unwrap();
    for t in ["room.a", "room.b", "lobby"] {
        direct.create_topic(t, 0, 0).await.unwrap();
    }
    let c = Client::connect(&fake.addr).unwrap().with_retry(quick());
    let before = fake.refusals();
    let acks = bounded(
        "broadcast",
        c.broadcast(&["room.>", "lobby"], 7, "hello all"),
    )
    .await
    .unwrap();
    assert_eq!(
        fake.refusals(),
        before + 1,
        "refused once, then on the leader"
    );
    let mut topics: Vec<&str> = acks.iter().map(|(t, _)| t.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["lobby", "room.a", "room.b"]);
    for (topic, ack) in &acks {
        assert_stored_once(&server, topic, &[("hello all".to_string(), *ack)]).await;
    }
    // Checked whole before anything is written: a bad name among good ones stores nothing.
    let refused = direct.broadcast(&["room.a", "bad name"], 8, "never").await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(read_log(&mut raw, "room.a").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_follows_the_hint_with_its_acks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    for (topic, refusal) in [
        ("at-call", StreamRefusal::AtCall),
        ("in-stream", StreamRefusal::InStream),
    ] {
        let fake = Fake::start(host_port(&server.addr), refusal).await;
        let c = Client::connect(&fake.addr).unwrap().with_retry(quick());
        let publisher = c.publisher(topic);
        let mut pending = Vec::new();
        for i in 0..500u64 {
            let payload = format!("{topic}-{i}");
            pending.push((payload.clone(), publisher.send(i, payload).await.unwrap()));
        }
        let mut acks = Vec::new();
        for (payload, p) in pending {
            acks.push((payload, bounded("pipelined ack", p).await.unwrap()));
        }
        bounded("close", publisher.close()).await;
        assert!(
            fake.refusals() >= 1,
            "{topic}: the follower was asked first"
        );
        let offsets: Vec<u64> = acks.iter().map(|(_, a)| a.offset).collect();
        assert_eq!(
            offsets,
            (0..500).collect::<Vec<_>>(),
            "{topic}: acks in order"
        );
        assert_stored_once(&server, topic, &acks).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let dead = dead_addr();
    let tried = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let notes = Arc::clone(&tried);
    let connect = |coalescing: bool| {
        let notes = Arc::clone(&notes);
        Client::connect_many(&[dead.as_str(), server.addr.as_str()])
            .unwrap()
            .with_coalescing(coalescing)
            .with_retry(quick())
            .on_retry(move |r| notes.lock().push(r.addr.to_string()))
    };
    let mut acks = Vec::new();
    for coalescing in [false, true] {
        let c = connect(coalescing);
        assert_eq!(c.addrs(), vec![dead.as_str(), server.addr.as_str()]);
        let payload = format!("coalescing-{coalescing}");
        let ack = bounded("publish", c.publish("d", 1, payload.clone()))
            .await
            .unwrap();
        acks.push((payload, ack));
        assert_eq!(c.current_addr(), server.addr);
    }
    let c = connect(true);
    let topics = bounded("list_topics", c.list_topics()).await.unwrap();
    assert!(topics.iter().any(|t| t.name == "d"));
    let c = connect(true);
    bounded("create_topic", c.create_topic("gone", 0, 0))
        .await
        .unwrap();
    let c = connect(true);
    bounded("delete_topic", c.delete_topic("gone"))
        .await
        .unwrap();
    let c = connect(true);
    let mut sub = c.subscribe("d", 0);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(bounded("subscription", sub.next()).await.unwrap().unwrap());
    }
    assert_eq!(got.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![0, 1]);
    assert_stored_once(&server, "d", &acks).await;
    let tried = tried.lock().clone();
    assert!(!tried.is_empty(), "the dead address was tried");
    assert!(
        tried.iter().all(|a| a == &dead),
        "only the dead address failed: {tried:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_naming_each_other_end_with_a_clear_error() {
    let a = Fake::start("", StreamRefusal::AtCall).await;
    let b = Fake::start(&a.addr, StreamRefusal::InStream).await;
    a.name(&b.addr);
    // The default retry budget (60 s): the loop must not wait for it.
    let started = Instant::now();
    let check = |e: Error, what: &str| {
        let text = e.to_string();
        assert!(matches!(e, Error::NoLeader { .. }), "{what}: {e:?}");
        assert!(
            text.contains(&a.addr) && text.contains(&b.addr) && text.contains("leader"),
            "{what}: the error names the loop: {text}"
        );
        assert!(e.is_transient());
    };
    let unary = Client::connect(&a.addr).unwrap().with_coalescing(false);
    check(
        bounded("unary", unary.publish("t", 1, "x"))
            .await
            .unwrap_err(),
        "unary",
    );
    let coalesced = Client::connect(&a.addr).unwrap();
    check(
        bounded("coalesced", coalesced.publish("t", 1, "x"))
            .await
            .unwrap_err(),
        "coalesced",
    );
    let publisher = Client::connect(&b.addr).unwrap().publisher("t");
    let pending = publisher.send(1, "x").await.unwrap();
    check(
        bounded("publisher", pending).await.unwrap_err(),
        "publisher",
    );
    let topics = Client::connect(&a.addr).unwrap();
    check(
        bounded("create", topics.create_topic("t", 0, 0))
            .await
            .unwrap_err(),
        "create_topic",
    );
    check(
        bounded("delete", topics.delete_topic("t"))
            .await
            .unwrap_err(),
        "delete_topic",
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // A few hops per call, not an unbounded ping-pong.
    assert!(
        a.refusals() + b.refusals() <= 5 * 6,
        "{} refusals",
        a.refusals() + b.refusals()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_over_dead_and_real_resumes_exactly_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_fixed_port(dir.path(), &["--fsync", "always"]);
    let dead = dead_addr();
    let c = Client::connect(&format!("{dead},{}", server.addr))
        .unwrap()
        .with_retry(quick());
    let publisher = c.publisher("r");
    let mut pending = Vec::new();
    for i in 0..300u64 {
        pending.push(publisher.send(i % 7, format!("h{i:04}")).await.unwrap());
    }
    for p in pending {
        bounded("history ack", p).await.unwrap();
    }
    let mut sub = c.subscribe("r", 0);
    let mut got: Vec<Frame> = Vec::new();
    for _ in 0..150 {
        got.push(next(&mut sub).await);
    }
    server.kill9();
    server.restart();
    while got.len() < 300 {
        got.push(next(&mut sub).await);
    }
    for i in 0..20u64 {
        c.publish("r", 100 + i, format!("live{i}")).await.unwrap();
    }
    for _ in 0..20 {
        got.push(next(&mut sub).await);
    }
    server.kill9();
    server.restart();
    for i in 20..30u64 {
        c.publish("r", 100 + i, format!("live{i}")).await.unwrap();
    }
    for _ in 0..10 {
        got.push(next(&mut sub).await);
    }

    // One unbroken subscription: the history (offsets below 300) in order-key order, then
    // the live frames by offset.
    let mut raw = server.client().await;
    let all = read_log(&mut raw, "r").await;
    assert_eq!(all.len(), 330);
    let mut replay: Vec<_> = all.iter().filter(|f| f.offset < 300).collect();
    replay.sort_by_key(|f| (f.seq_no, f.timestamp, f.offset));
    let expect: Vec<u64> = replay
        .into_iter()
        .chain(all.iter().filter(|f| f.offset >= 300))
        .map(|f| f.offset)
        .collect();
    let seen: Vec<u64> = got.iter().map(|f| f.offset).collect();
    assert_eq!(seen, expect, "no gap, no duplicate, in order");
    assert!(got[..300].iter().all(|f| !f.live) && got[300..].iter().all(|f| f.live));
}

/// The subscription's next frame, within bounds.
async fn next(sub: &mut framecast::client::Subscription) -> Frame {
    match bounded("subscription", sub.next()).await {
        Some(Ok(f)) => f,
        other => panic!("subscription: {other:?}"),
    }
}

/// Runs the CLI (bounded by its own --timeout); exit status, stdout, stderr.
async fn cli(args: Vec<String>) -> (bool, String, String) {
    let out = bounded(
        "framecast CLI",
        tokio::task::spawn_blocking(move || {
            Command::new(bin())
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }),
    )
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_several_addresses_and_follows_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let fake = Fake::start(host_port(&server.addr), StreamRefusal::InStream).await;
    let dead = dead_addr();

    // Through the follower only, and through a dead node then the follower.
    let via_fake = fake.addr.clone();
    let via_dead = format!("{dead},{}", fake.addr);
    for (addr, from, payloads) in [(&via_fake, "0", ["a", "b"]), (&via_dead, "2", ["c", "d"])] {
        let (ok, out, err) = cli(args(&[
            "publish",
            "--addr",
            addr,
            "--timeout",
            "10s",
            "--topic",
            "cli",
            "--seq-from",
            from,
            "-v",
            payloads[0],
            payloads[1],
        ]))
        .await;
        assert!(ok, "publish --addr {addr}: {err}");
        assert_eq!(out.lines().count(), 2, "{out}");
    }
    assert!(
        fake.refusals() >= 2,
        "each publish went to the follower first"
    );

    let (ok, out, err) = cli(args(&["topics", "--addr", &via_fake, "create", "made"])).await;
    assert!(
        ok && out.contains("created made"),
        "topics create: {out} {err}"
    );

    let (ok, out, err) = cli(args(&[
        "subscribe",
        "--addr",
        &format!("{dead},{}", server.addr),
        "--topic",
        "cli",
        "--count",
        "4",
        "--raw",
        "--timeout",
        "10s",
    ]))
    .await;
    assert!(ok, "subscribe: {err}");
    assert_eq!(out, "a\nb\nc\nd\n", "each frame once, in order");

    // Followers naming each other: a clear error, well within --timeout.
    let other = Fake::start(&fake.addr, StreamRefusal::AtCall).await;
    let started = Instant::now();
    let (ok, _, err) = cli(args(&[
        "publish",
        "--addr",
        &other.addr,
        "--topic",
        "cli",
        "--timeout",
        "60s",
        "x",
    ]))
    .await;
    // `other` names `fake`, which names the real server: that is not a loop.
    assert!(ok, "a chain of two hints reaches the leader: {err}");
    fake.name(&other.addr);
    let (ok, _, err) = cli(args(&[
        "publish",
        "--addr",
        &other.addr,
        "--topic",
        "cli",
        "--timeout",
        "60s",
        "y",
    ]))
    .await;
    assert!(!ok, "nodes naming each other cannot succeed");
    assert!(err.contains("no leader"), "a clear error: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// A publish stream that ends cleanly with frames unacknowledged is a failure like a break:
/// the client backs off, and gives up within its retry budget with an error. Before, it
/// reopened the stream at once, for ever, sending the frames again each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_ending_with_frames_unacknowledged_is_retried_with_backoff_then_fails() {
    let fake = Fake::start("", StreamRefusal::EndsCleanly).await;
    let c = Client::connect(&fake.addr)
        .unwrap()
        .with_retry(RetryPolicy {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(2),
        });
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), c.publish("t", 1, "x"))
        .await
        .expect("the publish never returned")
        .expect_err("a publish nobody acknowledged succeeded");
    assert!(err.to_string().contains("unacknowledged"), "{err}");
    let (took, streams) = (started.elapsed(), fake.refusals());
    // About 2 s of backoff from 50 ms doubling to 200 ms: a dozen streams, not thousands.
    assert!(took >= Duration::from_secs(1), "gave up after {took:?}");
    assert!((2..=40).contains(&streams), "{streams} streams in {took:?}");
}
