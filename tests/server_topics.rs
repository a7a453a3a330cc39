//! Many small topics (chat and game rooms) against the real server: each costs a few KiB
//! of disk, not a whole segment; once idle, no thread or file descriptor per topic; a
//! restart recovers and serves them all; every automatic creation is logged with its cause.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{list_topics, publish, read_log, Server};

const TOPICS: usize = 1000;
const FRAMES: u64 = 10;

fn name(i: usize) -> String {
    format!("room-{i:04}")
}

fn payload(topic: &str, i: u64) -> Vec<u8> {
    let mut p = format!("{topic}/{i}|").into_bytes();
    p.resize(100, b'.');
    p
}

/// Allocated bytes (`st_blocks * 512`, as `du` counts them) of everything under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = std::fs::metadata(dir).map_or(0, |m| m.blocks() * 512);
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let md = entry.metadata().expect("stat");
        total += if md.is_dir() {
            du(&entry.path())
        } else {
            md.blocks() * 512
        };
    }
    total
}

/// A field of `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("status field")
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count() as u64
}

/// Polls until the server holds fewer than `threads` threads and `fds` descriptors, for at
/// most `limit`; returns what it last saw.
fn wait_quiet(pid: u32, threads: u64, max_fds: u64, limit: Duration) -> (u64, u64) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = (status_field(pid, "Threads:"), fds(pid));
        if (seen.0 < threads && seen.1 < max_fds) || Instant::now() >= deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_small_topics_cost_little_and_survive_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(tmp.path(), &["--fsync", "always"]);
    let pid = server.child.id();
    let (threads_empty, fds_empty) = (status_field(pid, "Threads:"), fds(pid));

    // Publish: 32 topics at a time, each topic's frames in order.
    let mut c = server.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let mut c = c.clone();
        tasks.spawn(async move {
            for i in (w..TOPICS).step_by(32) {
                let t = name(i);
                for f in 0..FRAMES {
                    let ack = publish(&mut c, &t, f, &payload(&t, f)).await;
                    assert_eq!(ack.offset, f, "{t}");
                }
            }
        });
    }
    let publishing = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("publisher");
        }
    });
    publishing.await.expect("publishing took over 4 minutes");

    let topics = list_topics(&mut c).await;
    assert_eq!(topics.len(), TOPICS);
    assert!(topics.iter().all(|t| t.frames == FRAMES && t.segments == 1));
    let stored: u64 = topics.iter().map(|t| t.bytes).sum();
    assert_eq!(stored, TOPICS as u64 * FRAMES * (40 + 100), "stored bytes");

    // Disk: within twice the stored bytes plus 64 KiB per topic (one preallocated 64 MiB
    // segment each, as before, would be 64 GiB here).
    let used = du(&tmp.path().join("topics"));
    let limit = 2 * stored + 64 * 1024 * TOPICS as u64;
    assert!(
        used <= limit,
        "{used} bytes on disk for {stored} stored in {TOPICS} topics (limit {limit})"
    );

    // Idle: the committers stop after 5 s and the runtime's blocking threads after 10 s.
    // Then nothing scales with the topic count: a thread or descriptor per topic would be
    // a thousand.
    let (threads, open) = wait_quiet(
        pid,
        threads_empty + 8,
        fds_empty + 8,
        Duration::from_secs(30),
    );
    assert!(
        threads < threads_empty + 8,
        "{threads} threads with {TOPICS} idle topics ({threads_empty} when empty)"
    );
    assert!(
        open < fds_empty + 8,
        "{open} descriptors with {TOPICS} idle topics ({fds_empty} when empty)"
    );

    // One mapping per topic (its segment), nothing more: an idle committer that exited
    // without being joined or detached would keep its stack mapped, two more per topic.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("maps")
        .lines()
        .count();
    assert!(
        maps < TOPICS + 300,
        "{maps} mappings with {TOPICS} idle topics"
    );

    // Every creation was logged at INFO, with what caused it.
    let log = server.log_text();
    let created = log
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("topic auto-created"))
        .count();
    assert_eq!(created, TOPICS, "one INFO line per auto-created topic");
    assert!(
        log.lines().any(|l| l.contains("topic auto-created")
            && l.contains("room-0000")
            && l.contains("publish")),
        "the line names the topic and the cause"
    );

    // Restart: everything is recovered and served, and still nothing per idle topic.
    server.restart();
    let pid = server.child.id();
    let mut c = server.client().await;
    let topics = list_topics(&mut c).await;
    assert_eq!(topics.len(), TOPICS, "every topic after the restart");
    assert!(topics.iter().all(|t| t.frames == FRAMES));
    for i in (0..TOPICS).step_by(97) {
        let t = name(i);
        let frames = read_log(&mut c, &t).await;
        assert_eq!(frames.len() as u64, FRAMES, "{t}");
        for (f, want) in frames.iter().zip(0..) {
            assert_eq!(f.offset, want);
            assert!(f.payload[..] == payload(&t, want)[..], "{t} offset {want}");
        }
    }
    assert!(
        fds(pid) < fds_empty + 8,
        "{} descriptors after the restart",
        fds(pid)
    );
    // A subscription to a missing topic (a mistyped name) creates it: logged as such.
    let _ = common::subscribe(&mut c, common::sub_req("chta", 0)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .log_text()
        .lines()
        .any(|l| l.contains("topic auto-created") && l.contains("chta") && l.contains("subscribe"))
    {
        assert!(
            Instant::now() < deadline,
            "no INFO line for the subscribe creation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A publish or subscribe that auto-creates a topic while a CreateTopic with retention
/// settings makes the same topic takes the topic that won; before, the loser of the race
/// failed with ALREADY_EXISTS ("exists with other settings"), which API.md never gives a
/// publish or a subscribe (CreateTopic, when it loses, still does). 150 fresh names, the
/// three calls started together on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_creation_racing_a_create_topic_with_retention_takes_the_topic() {
    use framecast::proto::CreateTopicRequest;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &[]);
    let (admin, publisher, subscriber) = (
        server.client().await,
        server.client().await,
        server.client().await,
    );
    for i in 0..150 {
        let topic = format!("race.{i}");
        let (mut a, mut p, mut s) = (admin.clone(), publisher.clone(), subscriber.clone());
        let create = a.create_topic(CreateTopicRequest {
            name: topic.clone(),
            retention_max_age_seconds: 3600,
            ..Default::default()
        });
        let publish = p.publish(common::req(&topic, 1, b"x"));
        let subscribe = s.subscribe(common::sub_req(&topic, 0));
        let (created, published, subscribed) = tokio::join!(create, publish, subscribe);
        // CreateTopic itself loses when the auto-creation came first: the topic exists with
        // other settings.
        if let Err(e) = created {
            assert_eq!(
                e.code(),
                tonic::Code::AlreadyExists,
                "{topic}: CreateTopic {e:?}"
            );
        }
        published.unwrap_or_else(|e| panic!("{topic}: Publish {e:?}"));
        let mut stream = subscribed
            .unwrap_or_else(|e| panic!("{topic}: Subscribe {e:?}"))
            .into_inner();
        let got = common::take(&mut stream, 1, Duration::from_secs(10)).await;
        assert_eq!(got[0].payload.as_ref(), b"x", "{topic}");
    }
}
