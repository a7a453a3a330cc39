//! Resume: a stream broken in the middle of replay, then again in the middle of live, and
//! continued with a `Cursor` each time, gives exactly the unbroken stream. Also the refusals:
//! a wrong epoch is FAILED_PRECONDITION, a cursor beyond the topic's next offset is
//! OUT_OF_RANGE, and a cursor with timestamp 0 ("no frame received yet") restarts the same
//! snapshot.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::{Cursor, Frame, SubscribeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(20);

/// Publishes `n` frames with seq_nos in `0..40` (many duplicates) and, for one in four, an
/// explicit timestamp from a tiny set (ties broken by offset). Returns their seq_nos.
async fn publish_random(
    c: &mut BroadcastClient<Channel>,
    topic: &str,
    rng: &mut StdRng,
    n: usize,
) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = req(topic, rng.random_range(0..40), format!("f{i}").as_bytes());
        if rng.random_bool(0.25) {
            r.timestamp = 500 + rng.random_range(0..2);
        }
        seqs.push(r.seq_no);
        tokio::time::timeout(LIMIT, c.publish(r))
            .await
            .expect("publish timed out")
            .expect("publish");
    }
    seqs
}

fn cursor(snapshot: u64, epoch: u64, last: &Frame) -> Cursor {
    Cursor {
        snapshot_offset: snapshot,
        epoch,
        seq_no: last.seq_no,
        timestamp: last.timestamp,
        offset: last.offset,
    }
}

fn resume_req(topic: &str, start: u64, c: Cursor) -> SubscribeRequest {
    SubscribeRequest {
        replay_seq_no_start: start,
        topic: topic.into(),
        resume: Some(c),
    }
}

fn count_from(seqs: &[u64], start: u64) -> usize {
    seqs.iter().filter(|&&s| s >= start).count()
}

/// Breaks a stream mid-replay and mid-live, resumes both times, and compares the
/// concatenation with an unbroken subscription that has the same snapshot point.
async fn broken_twice_equals_unbroken(start: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let topic = "resume";

    let history = publish_random(&mut c, topic, &mut rng, 300).await;
    let replay_len = count_from(&history, start);
    assert!(replay_len > 10, "seed {seed}: replay too short to break");

    let mut unbroken = subscribe(&mut c, sub_req(topic, start)).await.unwrap();
    let mut broken = subscribe(&mut c, sub_req(topic, start)).await.unwrap();
    let (s, epoch) = (broken.snapshot, broken.epoch);
    assert_eq!(s, 300);
    assert_eq!(unbroken.snapshot, s);
    assert_eq!(unbroken.epoch, epoch);

    // 1. Break in the middle of replay.
    let k = replay_len / 3;
    let mut got = take(&mut broken.stream, k, LIMIT).await;
    drop(broken);
    // New frames arrive while the client is away; some share seq_nos with the replay but
    // have offsets >= S, so they belong to live, not to the rest of the replay.
    let live1 = publish_random(&mut c, topic, &mut rng, 100).await;
    let live1_len = count_from(&live1, start);
    assert!(live1_len >= 2, "seed {seed}");

    let mut second = subscribe(
        &mut c,
        resume_req(topic, start, cursor(s, epoch, got.last().unwrap())),
    )
    .await
    .unwrap();
    assert_eq!(second.snapshot, s, "a resumed stream keeps its snapshot");
    assert_eq!(second.epoch, epoch);

    // 2. Read the rest of the replay and half of the live frames, then break again.
    let mid_live = replay_len - k + live1_len / 2;
    got.extend(take(&mut second.stream, mid_live, LIMIT).await);
    let last = got.last().unwrap().clone();
    assert!(last.offset >= s, "the second break is in the live phase");
    drop(second);
    let live2 = publish_random(&mut c, topic, &mut rng, 100).await;
    let live2_len = count_from(&live2, start);

    let mut third = subscribe(&mut c, resume_req(topic, start, cursor(s, epoch, &last)))
        .await
        .unwrap();
    assert_eq!(third.snapshot, s);
    let total = replay_len + live1_len + live2_len;
    got.extend(take(&mut third.stream, total - got.len(), LIMIT).await);

    let want = take(&mut unbroken.stream, total, LIMIT).await;
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "seed {seed} start {start}: position {i}");
    }
    assert!(
        want[..replay_len].iter().all(|f| f.offset < s),
        "the replay part holds only frames below S"
    );
    expect_quiet(&mut third.stream, Duration::from_millis(200)).await;
    expect_quiet(&mut unbroken.stream, Duration::from_millis(100)).await;

    // Resuming from the very last replay frame goes straight to live at S.
    let mut at_edge = subscribe(
        &mut c,
        resume_req(topic, start, cursor(s, epoch, &want[replay_len - 1])),
    )
    .await
    .unwrap();
    let rest = take(&mut at_edge.stream, total - replay_len, LIMIT).await;
    assert_eq!(rest, want[replay_len..]);
    expect_quiet(&mut at_edge.stream, Duration::from_millis(100)).await;

    // A cursor with timestamp 0 names no frame: the same snapshot starts again from its
    // beginning, although the topic has grown since.
    let fresh = Cursor {
        snapshot_offset: s,
        epoch,
        seq_no: 0,
        timestamp: 0,
        offset: 0,
    };
    let mut again = subscribe(&mut c, resume_req(topic, start, fresh))
        .await
        .unwrap();
    assert_eq!(again.snapshot, s);
    let all = take(&mut again.stream, total, LIMIT).await;
    assert_eq!(all, want, "timestamp 0 restarts the same snapshot");
    expect_quiet(&mut again.stream, Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_mid_replay_then_mid_live_equals_the_unbroken_stream() {
    let seed = std::env::var("FRAMECAST_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set FRAMECAST_TEST_SEED to repeat)");
    broken_twice_equals_unbroken(0, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_keeps_the_replay_seq_no_start_filter() {
    let seed = std::env::var("FRAMECAST_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("seed {seed} (set FRAMECAST_TEST_SEED to repeat)");
    broken_twice_equals_unbroken(17, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_epoch_is_failed_precondition_and_cursor_past_next_offset_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let topic = "refusals";
    for i in 0..10u64 {
        publish(&mut c, topic, i, format!("f{i}").as_bytes()).await;
    }
    let mut sub = subscribe(&mut c, sub_req(topic, 0)).await.unwrap();
    let (s, epoch) = (sub.snapshot, sub.epoch);
    assert_eq!(s, 10);
    let frames = take(&mut sub.stream, 10, LIMIT).await;
    drop(sub);
    let last = frames.last().unwrap();

    // Wrong epoch.
    for bad in [epoch.wrapping_add(1), 0] {
        let st = subscribe_error(
            &mut c,
            resume_req(
                topic,
                0,
                Cursor {
                    epoch: bad,
                    ..cursor(s, epoch, last)
                },
            ),
        )
        .await;
        assert_eq!(st.code(), Code::FailedPrecondition, "epoch {bad}: {st:?}");
    }

    // Beyond the next offset (10): a snapshot past it, or a "last frame" at or past it.
    let beyond = [
        Cursor {
            snapshot_offset: 11,
            ..cursor(s, epoch, last)
        },
        Cursor {
            snapshot_offset: 11,
            timestamp: 0,
            ..cursor(s, epoch, last)
        },
        Cursor {
            offset: 10,
            ..cursor(s, epoch, last)
        },
        Cursor {
            offset: 1_000_000,
            ..cursor(s, epoch, last)
        },
        Cursor {
            offset: u64::MAX,
            ..cursor(s, epoch, last)
        },
    ];
    for cur in beyond {
        let st = subscribe_error(&mut c, resume_req(topic, 0, cur)).await;
        assert_eq!(st.code(), Code::OutOfRange, "{cur:?}: {st:?}");
    }

    // Nothing was written or counted by the refusals, and the edge case just inside works:
    // a cursor at the last frame (offset 9) with S = 10 goes live at 10.
    // (The first subscription was dropped by the client: the server counts it out once the
    // stream's reset reaches it, which a loaded machine may take a moment to do.)
    let deadline = std::time::Instant::now() + LIMIT;
    let mut info = topic_info(&mut c, topic).await.unwrap();
    while info.subscribers > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        info = topic_info(&mut c, topic).await.unwrap();
    }
    assert_eq!(
        (info.next_offset, info.frames, info.subscribers),
        (10, 10, 0)
    );
    let mut edge = subscribe(&mut c, resume_req(topic, 0, cursor(s, epoch, last)))
        .await
        .unwrap();
    expect_quiet(&mut edge.stream, Duration::from_millis(200)).await;
    let ack = publish(&mut c, topic, 3, b"live").await;
    assert_eq!(ack.offset, 10);
    let live = take(&mut edge.stream, 1, LIMIT).await;
    assert_eq!((live[0].offset, &live[0].payload[..]), (10, &b"live"[..]));
}
