//! The Rust client's retry budget across separate outages and against a node that takes
//! connections but never answers: each outage gets a whole budget, and no call waits past
//! it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::{Duration, Instant};

use common::*;
use framecast::client::{Client, RetryPolicy};
use futures::StreamExt;

/// The retry budget of these tests: short, so that two outages further apart than it are
/// quick to make.
const BUDGET: Duration = Duration::from_secs(3);

fn client(addr: &str) -> Client {
    Client::connect(addr).unwrap().with_retry(RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_elapsed: BUDGET,
    })
}

/// Kills the server, keeps it down for `down`, and starts it again on the same port.
fn outage(server: &mut Server, down: Duration) {
    server.kill9();
    std::thread::sleep(down);
    server.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_subscription_outlives_two_outages_further_apart_than_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_fixed_port(dir.path(), &[]);
    let c = client(&server.addr);
    c.create_topic("quiet", 0, 0).await.unwrap();
    let mut sub = c.subscribe("quiet", 0);
    // The subscription opens (nothing to deliver), then the node goes down twice, the
    // second time longer after the first than the whole budget. No frame arrives between.
    let first = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(first.is_err(), "a frame on an empty topic: {first:?}");
    outage(&mut server, Duration::from_millis(500));
    let quiet = tokio::time::timeout(BUDGET + Duration::from_secs(2), sub.next()).await;
    assert!(
        quiet.is_err(),
        "the subscription ended or yielded: {quiet:?}"
    );
    outage(&mut server, Duration::from_millis(500));
    c.publish("quiet", 7, "after two outages").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("no frame after the second outage");
    let frame = got
        .expect("subscription ended")
        .expect("subscription failed");
    assert_eq!(frame.seq_no, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_idle_stream_broke_retries_its_next_frame_fully() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_fixed_port(dir.path(), &[]);
    let c = client(&server.addr);
    let publisher = c.publisher("p");
    publisher.publish(1, "before").await.unwrap();
    // The idle stream breaks with the restart: nothing was in flight, nothing to retry.
    outage(&mut server, Duration::from_millis(200));
    tokio::time::sleep(BUDGET + Duration::from_secs(1)).await;
    // A frame sent while the node is down again is retried until it is back.
    server.kill9();
    let sending = tokio::spawn(async move { publisher.publish(2, "during").await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.restart();
    let ack = tokio::time::timeout(Duration::from_secs(20), sending)
        .await
        .expect("the publish did not end")
        .unwrap();
    let ack = ack.expect("a frame sent during a short outage failed");
    assert_eq!(ack.offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_stopped_node_end_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let c = client(&server.addr).with_coalescing(false);
    c.create_topic("s", 0, 0).await.unwrap();
    let pid = server.child.id() as i32;
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let unary = c.publish("s", 1, "x").await;
    let unary_took = started.elapsed();
    let started = Instant::now();
    let streamed = c.publisher("s").publish(2, "y").await;
    let stream_took = started.elapsed();
    let started = Instant::now();
    let listed = c.list_topics().await;
    let list_took = started.elapsed();
    // SAFETY (test code): as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The connection's keepalive would end them after about 40 s; the budget is 3 s.
    let bound = BUDGET + Duration::from_secs(3);
    assert!(unary.is_err(), "{unary:?}");
    assert!(unary_took < bound, "a unary publish took {unary_took:?}");
    assert!(streamed.is_err(), "{streamed:?}");
    assert!(
        stream_took < bound,
        "a streamed publish took {stream_took:?}"
    );
    assert!(listed.is_err(), "{listed:?}");
    assert!(list_took < bound, "ListTopics took {list_took:?}");
}

/// A publish stream open on a node that then stops (SIGSTOP) sends its unanswered frame
/// again, with its key, to the next address once the node has made no progress for the
/// stall limit (half the budget here), and it is acknowledged there within the budget;
/// before, the frame failed at the budget's end without another node tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_moves_off_a_node_that_stops_answering() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = Server::start(&dir.path().join("a"), &["--fsync", "never"]);
    let live = Server::start(&dir.path().join("b"), &["--fsync", "never"]);
    let c = client(&format!("{},{}", stopped.addr, live.addr)).with_coalescing(false);
    let publisher = c.publisher("s");
    let first = publisher.publish(1, "before").await.unwrap();
    assert_eq!(first.offset, 0);
    let pid = stopped.child.id() as i32;
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let second = publisher.publish(2, "after").await;
    let took = started.elapsed();
    // SAFETY (test code): as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let ack = second.expect("the frame was not moved to the other node");
    // The other node's first frame of the topic.
    assert_eq!(ack.offset, 0, "{ack:?}");
    assert!(took < BUDGET, "took {took:?}");
}

/// A cluster watch given a stopped (SIGSTOP) node first gives up on it within the stall
/// limit (half the budget here) and watches the next address; before, the open waited on
/// the stopped node until the connection's keepalive ended it, about 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_watch_moves_off_a_node_that_stops_answering() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = Server::start(&dir.path().join("a"), &["--fsync", "never"]);
    let live = Server::start(&dir.path().join("b"), &["--fsync", "never"]);
    let pid = stopped.child.id() as i32;
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let c = client(&format!("{},{}", stopped.addr, live.addr));
    let mut watch = c.watch_cluster();
    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(20), watch.next()).await;
    let took = started.elapsed();
    // SAFETY (test code): as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let event = first
        .expect("no event within 20 s: the watch waited on the stopped node")
        .expect("the watch failed");
    let cluster = event.cluster.expect("the first event carries the cluster");
    assert_eq!(
        cluster.leader,
        live.addr.trim_start_matches("http://"),
        "not the live node's cluster: {cluster:?}"
    );
    assert!(took < BUDGET, "took {took:?}");
}
