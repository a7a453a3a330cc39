//! The replay→live handoff under load, against the real server.
//!
//! Four publishers run flat out (two with unary `Publish`, two with `PublishStream`), with
//! random seq_nos full of duplicates and some explicit, colliding timestamps. Thirty
//! subscribers join at random moments with random `replay_seq_no_start`s and read until a
//! final sentinel frame. Afterwards the whole log is read back by offset, and each
//! subscriber's stream must equal, frame for frame, what API.md promises for its snapshot
//! point S: the frames below S with `seq_no >= start` in `(seq_no, timestamp, offset)`
//! order, then the frames from S on with `seq_no >= start` in offset order. Any skipped,
//! repeated or misordered frame at the handoff fails the comparison.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use framecast::proto::{Frame, PublishAck, PublishRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

const TOPIC: &str = "handoff";
/// How long the publishers run (each also stops at `PER_PUBLISHER`).
const PUBLISH_WINDOW: Duration = Duration::from_millis(2500);
/// Upper bound on frames per publisher, so the test stays bounded on a fast machine.
const PER_PUBLISHER: usize = 6000;
const SUBSCRIBERS: usize = 30;
/// seq_nos are drawn from `0..SEQ_RANGE`: plenty of duplicates.
const SEQ_RANGE: u64 = 300;
/// Every wait of a subscriber ends by then.
const READ_LIMIT: Duration = Duration::from_secs(40);
/// The last frame: passes every filter and sorts last in replay too.
const SENTINEL_SEQ: u64 = u64::MAX;
const SENTINEL: &[u8] = b"END";

fn seed() -> u64 {
    std::env::var("FRAMECAST_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

/// A request with a random seq_no; one in five carries an explicit timestamp from a tiny
/// set, so that equal `(seq_no, timestamp)` pairs occur and only the offset breaks the tie.
fn random_req(rng: &mut StdRng, publisher: usize, i: usize) -> PublishRequest {
    let mut r = req(
        TOPIC,
        rng.random_range(0..SEQ_RANGE),
        format!("p{publisher}-{i}").as_bytes(),
    );
    if rng.random_bool(0.2) {
        r.timestamp = 1_000 + rng.random_range(0..3);
    }
    r
}

/// Unary publisher: one call at a time until the window closes.
async fn unary_publisher(
    addr: String,
    publisher: usize,
    seed: u64,
    until: Instant,
) -> Vec<(PublishRequest, PublishAck)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = connect(&addr).await;
    let mut out = Vec::new();
    while Instant::now() < until && out.len() < PER_PUBLISHER {
        let r = random_req(&mut rng, publisher, out.len());
        let ack = tokio::time::timeout(Duration::from_secs(10), c.publish(r.clone()))
            .await
            .expect("publish timed out")
            .expect("publish")
            .into_inner();
        out.push((r, ack));
    }
    out
}

/// Pipelined publisher: a `PublishStream` fed as fast as the server takes it.
async fn stream_publisher(
    addr: String,
    publisher: usize,
    seed: u64,
    until: Instant,
) -> Vec<(PublishRequest, PublishAck)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = connect(&addr).await;
    let (tx, rx) = mpsc::channel::<PublishRequest>(256);
    let mut acks = c
        .publish_stream(ReceiverStream::new(rx))
        .await
        .expect("publish stream")
        .into_inner();
    let feeder = tokio::spawn(async move {
        let mut sent = Vec::new();
        while Instant::now() < until && sent.len() < PER_PUBLISHER {
            let r = random_req(&mut rng, publisher, sent.len());
            if tx.send(r.clone()).await.is_err() {
                break;
            }
            sent.push(r);
        }
        sent
    });
    let mut got = Vec::new();
    let deadline = until + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, acks.message()).await {
            Ok(Ok(Some(a))) => got.push(a),
            Ok(Ok(None)) => break,
            Ok(Err(s)) => panic!("publish stream {publisher} failed: {s}"),
            Err(_) => panic!("publish stream {publisher}: acks did not finish in time"),
        }
    }
    let sent = feeder.await.expect("feeder");
    assert_eq!(sent.len(), got.len(), "one ack per request");
    sent.into_iter().zip(got).collect()
}

/// What one subscriber saw.
struct Seen {
    start: u64,
    snapshot: u64,
    frames: Vec<Frame>,
}

/// Joins after `delay`, then reads until the sentinel.
async fn subscriber(addr: String, start: u64, delay: Duration, joined: mpsc::Sender<()>) -> Seen {
    tokio::time::sleep(delay).await;
    let mut c = connect(&addr).await;
    let mut sub = subscribe(&mut c, sub_req(TOPIC, start))
        .await
        .expect("subscribe");
    let _ = joined.send(()).await;
    let mut frames = Vec::new();
    let deadline = Instant::now() + READ_LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.stream.message()).await {
            Ok(Ok(Some(f))) => {
                let last = f.seq_no == SENTINEL_SEQ && f.payload == SENTINEL;
                frames.push(f);
                if last {
                    break;
                }
            }
            Ok(Ok(None)) => panic!("subscriber (start {start}) stream ended early"),
            Ok(Err(s)) => panic!("subscriber (start {start}) stream failed: {s}"),
            Err(_) => panic!(
                "subscriber (start {start}, S {}) timed out after {} frames",
                sub.snapshot,
                frames.len()
            ),
        }
    }
    Seen {
        start,
        snapshot: sub.snapshot,
        frames,
    }
}

/// What API.md promises a subscriber with `start` and snapshot point `s`, given the log.
fn expected(log: &[Frame], start: u64, s: u64) -> Vec<Frame> {
    let mut replay: Vec<Frame> = log
        .iter()
        .filter(|f| f.offset < s && f.seq_no >= start)
        .cloned()
        .collect();
    replay.sort_by_key(|f| (f.seq_no, f.timestamp, f.offset));
    let live = log.iter().filter(|f| f.offset >= s && f.seq_no >= start);
    replay.into_iter().chain(live.cloned()).collect()
}

fn describe(f: &Frame) -> String {
    format!(
        "offset {} seq {} ts {} payload {:?}",
        f.offset,
        f.seq_no,
        f.timestamp,
        String::from_utf8_lossy(&f.payload)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_sees_exact_replay_then_live_while_publishers_run_flat_out() {
    let seed = seed();
    eprintln!("seed {seed} (set FRAMECAST_TEST_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let addr = server.addr.clone();
    let started = std::time::Instant::now();

    let until = Instant::now() + PUBLISH_WINDOW;
    let mut publishers = Vec::new();
    for p in 0..4usize {
        let (addr, s) = (addr.clone(), rng.random());
        publishers.push(if p.is_multiple_of(2) {
            tokio::spawn(unary_publisher(addr, p, s, until))
        } else {
            tokio::spawn(stream_publisher(addr, p, s, until))
        });
    }
    let (joined_tx, mut joined_rx) = mpsc::channel(SUBSCRIBERS);
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        // A third start from 0; the rest anywhere, some above every seq_no published.
        let start = if i.is_multiple_of(3) {
            0
        } else {
            rng.random_range(0..SEQ_RANGE + 20)
        };
        let delay = Duration::from_millis(rng.random_range(0..PUBLISH_WINDOW.as_millis() as u64));
        subscribers.push(tokio::spawn(subscriber(
            addr.clone(),
            start,
            delay,
            joined_tx.clone(),
        )));
    }
    drop(joined_tx);

    let mut acked: Vec<(PublishRequest, PublishAck)> = Vec::new();
    for p in publishers {
        acked.extend(p.await.expect("publisher task"));
    }
    // Every subscriber has its snapshot before the sentinel goes out.
    for _ in 0..SUBSCRIBERS {
        tokio::time::timeout(Duration::from_secs(20), joined_rx.recv())
            .await
            .expect("a subscriber did not join in time");
    }
    let mut c = server.client().await;
    let sentinel = c
        .publish(PublishRequest {
            seq_no: SENTINEL_SEQ,
            payload: SENTINEL.to_vec().into(),
            timestamp: 0,
            topic: TOPIC.into(),
            idempotency_key: String::new(),
        })
        .await
        .expect("publish sentinel")
        .into_inner();
    let final_next = sentinel.offset + 1;
    assert_eq!(
        final_next as usize,
        acked.len() + 1,
        "offsets 0..N, no gaps"
    );
    let info = topic_info(&mut c, TOPIC).await.expect("topic listed");
    assert_eq!(info.next_offset, final_next);
    assert_eq!(info.frames, final_next);

    let mut seen = Vec::new();
    for s in subscribers {
        seen.push(s.await.expect("subscriber task"));
    }
    let published_for = started.elapsed();

    // The log, indexed by offset, and every ack checked against it.
    let log = read_log(&mut c, TOPIC).await;
    assert_eq!(log.len() as u64, final_next);
    for (i, f) in log.iter().enumerate() {
        assert_eq!(f.offset, i as u64, "the log holds offsets 0..N once each");
    }
    for (r, a) in &acked {
        let f = &log[a.offset as usize];
        assert_eq!((f.seq_no, &f.payload), (r.seq_no, &r.payload), "ack {a:?}");
        assert_eq!(f.timestamp, a.timestamp, "ack {a:?}");
        if r.timestamp != 0 {
            assert_eq!(a.timestamp, r.timestamp, "an explicit timestamp is kept");
        }
        assert!(!a.duplicate);
    }
    let log = Arc::new(log);

    let mut live_handoffs = 0;
    for s in &seen {
        assert!(s.snapshot <= final_next);
        let want = expected(&log, s.start, s.snapshot);
        if let Some(i) =
            (0..want.len().max(s.frames.len())).find(|&i| want.get(i) != s.frames.get(i))
        {
            panic!(
                "subscriber start {} S {}: first difference at position {i} of {} expected / {} received:\n  expected {}\n  received {}",
                s.start,
                s.snapshot,
                want.len(),
                s.frames.len(),
                want.get(i).map_or("nothing".into(), describe),
                s.frames.get(i).map_or("nothing".into(), describe),
            );
        }
        if s.snapshot > 0 && s.snapshot + 1 < final_next {
            live_handoffs += 1;
        }
    }
    eprintln!(
        "{} frames from 4 publishers, {} subscribers ({} joined mid-stream), {:.1}s",
        final_next,
        seen.len(),
        live_handoffs,
        published_for.as_secs_f64()
    );
    assert!(
        live_handoffs >= SUBSCRIBERS / 3,
        "too few subscribers joined while frames were flowing ({live_handoffs}): the test did not exercise the handoff"
    );
}
