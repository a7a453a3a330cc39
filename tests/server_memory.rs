//! A stalled subscriber costs a cursor, not memory: one subscriber opens a stream and reads
//! nothing while ~500 MB are published (`FRAMECAST_MEMORY_TEST_MB` scales it). Publishing
//! is not slowed to a halt, and the server's anonymous resident memory (RssAnon: heap, not
//! the file-backed segment mappings) stays within 100 MB of its baseline. Afterwards the
//! stalled subscriber can still read, and cancelling it releases its slot.
//!
//! The measured figures are printed (run with `--nocapture`) for BENCHMARKS.md.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use framecast::proto::PublishRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TOPIC: &str = "mem";
const PAYLOAD: usize = 64 << 10;
const MB: u64 = 1 << 20;
/// The bound of the test: RssAnon growth over the baseline.
const MAX_GROWTH: u64 = 100 * MB;
/// Concurrent publish streams (each on its own connection) of the measured run.
const STREAMS: u64 = 4;
/// A hang guard for the whole publish, not a speed target.
const PUBLISH_LIMIT: Duration = Duration::from_secs(120);

fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("RssAnon");
    kb * 1024
}

/// Payload of frame `i`: its index, then a pattern derived from it.
fn payload(i: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(PAYLOAD);
    b.put_u64(i);
    while b.len() < PAYLOAD {
        b.put_u8((i as u8).wrapping_add(b.len() as u8));
    }
    b.freeze()
}

/// Publishes frames `i` in `from..to` with `i % streams == stream` on one `PublishStream`,
/// checking that the acks come one per request with growing offsets.
async fn publish_part(addr: String, stream: u64, streams: u64, from: u64, to: u64) {
    let mut c = connect(&addr).await;
    let (tx, rx) = mpsc::channel::<PublishRequest>(64);
    let feeder = tokio::spawn(async move {
        let mut sent = 0u64;
        for i in (from..to).filter(|i| i % streams == stream) {
            let r = PublishRequest {
                seq_no: i,
                payload: payload(i),
                timestamp: 0,
                topic: TOPIC.into(),
                idempotency_key: String::new(),
            };
            if tx.send(r).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut acks = c
        .publish_stream(ReceiverStream::new(rx))
        .await
        .expect("publish stream")
        .into_inner();
    let (mut n, mut last) = (0u64, None);
    while let Some(a) = tokio::time::timeout(PUBLISH_LIMIT, acks.message())
        .await
        .expect("an ack took too long: publishing stalled")
        .expect("publish stream failed")
    {
        assert!(last < Some(a.offset), "acks in request order");
        last = Some(a.offset);
        n += 1;
    }
    assert_eq!(n, feeder.await.unwrap(), "every request acknowledged");
}

/// Publishes frames `from..to` over `streams` concurrent streams, one connection each.
async fn publish_range(addr: &str, streams: u64, from: u64, to: u64) {
    let tasks: Vec<_> = (0..streams)
        .map(|s| tokio::spawn(publish_part(addr.to_string(), s, streams, from, to)))
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_grow_server_memory() {
    let total_mb: u64 = std::env::var("FRAMECAST_MEMORY_TEST_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let frames = total_mb * MB / PAYLOAD as u64;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let pid = server.child.id();
    let mut c = server.client().await;

    // Warm-up: the code paths the measured run uses (pipelined publish of 64 KiB frames, a
    // subscriber reading replay and live), then the baseline.
    let warm = 128;
    publish_range(&server.addr, 1, 0, warm).await;
    {
        let mut reader = server.client().await;
        let mut sub = subscribe(&mut reader, sub_req(TOPIC, 0)).await.unwrap();
        take(&mut sub.stream, warm as usize, Duration::from_secs(30)).await;
    }
    wait_subscribers(&mut c, TOPIC, 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_anon(pid);

    // The stalled subscriber: its own connection, subscribed from 0, reads nothing.
    let mut stalled_client = server.client().await;
    let mut stalled = subscribe(&mut stalled_client, sub_req(TOPIC, 0))
        .await
        .unwrap();
    assert_eq!(stalled.snapshot, warm);
    wait_subscribers(&mut c, TOPIC, 1, Duration::from_secs(10)).await;

    // Sample RssAnon while publishing.
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_anon(pid), Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    let started = Instant::now();
    tokio::time::timeout(
        PUBLISH_LIMIT,
        publish_range(&server.addr, STREAMS, warm, warm + frames),
    )
    .await
    .expect("publishing did not finish: a stalled subscriber slowed publishers");
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let after = rss_anon(pid);
    let peak = peak.load(Ordering::Relaxed).max(after);
    let delta = peak.saturating_sub(baseline);
    eprintln!(
        "memory: published {} MiB ({} frames of {} KiB, {STREAMS} streams) in {:.1}s ({:.0} MiB/s) past a stalled subscriber; \
         RssAnon baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB, delta {:.1} MiB (bound {} MiB, {} samples)",
        frames * PAYLOAD as u64 / MB,
        frames,
        PAYLOAD >> 10,
        took.as_secs_f64(),
        (frames * PAYLOAD as u64) as f64 / MB as f64 / took.as_secs_f64(),
        baseline as f64 / MB as f64,
        peak as f64 / MB as f64,
        after as f64 / MB as f64,
        delta as f64 / MB as f64,
        MAX_GROWTH / MB,
        samples,
    );
    let info = topic_info(&mut c, TOPIC).await.unwrap();
    assert_eq!(info.next_offset, warm + frames);
    assert_eq!(info.subscribers, 1, "the stalled subscriber is still open");
    assert!(
        delta <= MAX_GROWTH,
        "RssAnon grew by {} MiB with a stalled subscriber (baseline {} MiB, peak {} MiB)",
        delta / MB,
        baseline / MB,
        peak / MB
    );

    // The stalled subscriber can still read: its replay, then on into the new frames.
    let got = take(
        &mut stalled.stream,
        warm as usize + 64,
        Duration::from_secs(30),
    )
    .await;
    for (i, f) in got.iter().enumerate() {
        assert_eq!(f.offset, i as u64, "offset order");
        assert_eq!(f.payload, payload(f.seq_no), "frame {i}");
    }
    drop(stalled);
    wait_subscribers(&mut c, TOPIC, 0, Duration::from_secs(10)).await;
}

// ---- Large frames (issue 9): 256 KiB and 1 MiB frames over one PublishStream. ----
//
// Each case starts a server (`--fsync never`), warms up the paths it uses, takes the
// RssAnon baseline, opens the stalled subscribers (each on its own connection, subscribed
// from the start, never polled), then publishes `FRAMECAST_MEMORY_ROUND_MB` (default 500,
// as in the issue; a round takes a few seconds in the debug build) in three rounds in a
// row over one PublishStream each.
// The peak RssAnon of every round must stay within `LARGE_MAX_GROWTH` of the one baseline:
// memory is bounded, and it does not creep from round to round.
//
// `FRAMECAST_MEMORY_FRAME_KB` (e.g. `4,256,1024`) and `FRAMECAST_MEMORY_SUBS` (e.g. `0,1,5`)
// pick other cases for measuring; the defaults are the ones the issue names.

/// The bound of the large-frame tests: RssAnon growth over the baseline.
const LARGE_MAX_GROWTH: u64 = 64 * MB;
/// Rounds in a row of each case.
const ROUNDS: usize = 3;

/// One large-frame case at a time: they move hundreds of MiB each and share two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    match std::env::var(name) {
        Ok(s) => s
            .split(',')
            .map(|v| v.trim().parse().expect("a number"))
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// Publishes `n` frames of `payload` for `topic` over one PublishStream; every request
/// must be acknowledged, in order.
async fn publish_one_stream(addr: &str, topic: &str, first_seq: u64, n: u64, payload: Bytes) {
    let mut c = connect(addr).await;
    let (tx, rx) = mpsc::channel::<PublishRequest>(16);
    let topic_name = topic.to_string();
    let feeder = tokio::spawn(async move {
        let mut sent = 0u64;
        for i in first_seq..first_seq + n {
            let r = PublishRequest {
                seq_no: i,
                payload: payload.clone(),
                timestamp: 0,
                topic: topic_name.clone(),
                idempotency_key: String::new(),
            };
            if tx.send(r).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut acks = c
        .publish_stream(ReceiverStream::new(rx))
        .await
        .expect("publish stream")
        .into_inner();
    let (mut got, mut last) = (0u64, None);
    while let Some(a) = tokio::time::timeout(PUBLISH_LIMIT, acks.message())
        .await
        .expect("an ack took too long: publishing stalled")
        .expect("publish stream failed")
    {
        assert!(last < Some(a.offset), "acks in request order");
        last = Some(a.offset);
        got += 1;
    }
    assert_eq!(got, feeder.await.unwrap(), "every request acknowledged");
    assert_eq!(got, n, "every frame sent");
}

/// Samples the peak RssAnon of `pid` until `done`.
fn sample_peak(pid: u32, done: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !done.load(Ordering::Relaxed) {
            peak = peak.max(rss_anon(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
        peak.max(rss_anon(pid))
    })
}

/// Three rounds of `round_mb` MiB in `frame`-byte frames past `stalled` stalled subscribers;
/// every round's peak growth must stay within the bound.
async fn rounds_stay_flat(frame: usize, stalled: usize) {
    let _one = ONE_AT_A_TIME.lock().await;
    let round_mb = env_list("FRAMECAST_MEMORY_ROUND_MB", &[500])[0];
    let per_round = (round_mb * MB).div_ceil(frame as u64);
    let topic = format!("big{}k", frame >> 10);
    let payload = {
        let mut b = BytesMut::with_capacity(frame);
        while b.len() < frame {
            b.put_u8(b.len() as u8 ^ 0x5a);
        }
        b.freeze()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let pid = server.child.id();
    let mut c = server.client().await;

    // Warm-up: publish and read a few frames of this size, so the baseline includes the
    // code paths (and their one-off allocations) the rounds use.
    let warm = 16u64;
    publish_one_stream(&server.addr, &topic, 0, warm, payload.clone()).await;
    {
        let mut reader = server.client().await;
        let mut sub = subscribe(&mut reader, sub_req(&topic, 0)).await.unwrap();
        take(&mut sub.stream, warm as usize, Duration::from_secs(30)).await;
    }
    wait_subscribers(&mut c, &topic, 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_anon(pid);

    // The stalled subscribers: each on its own connection, from the start, never polled.
    let mut subs = Vec::new();
    for _ in 0..stalled {
        let mut sc = server.client().await;
        let s = subscribe(&mut sc, sub_req(&topic, 0)).await.unwrap();
        subs.push((sc, s));
    }
    wait_subscribers(&mut c, &topic, stalled as u32, Duration::from_secs(10)).await;

    let mut next_seq = warm;
    let mut worst = 0;
    for round in 1..=ROUNDS {
        let done = Arc::new(AtomicBool::new(false));
        let sampler = sample_peak(pid, Arc::clone(&done));
        let started = Instant::now();
        publish_one_stream(&server.addr, &topic, next_seq, per_round, payload.clone()).await;
        let took = started.elapsed();
        next_seq += per_round;
        tokio::time::sleep(Duration::from_millis(500)).await;
        done.store(true, Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        let after = rss_anon(pid);
        let growth = peak.saturating_sub(baseline);
        eprintln!(
            "memory: frame {} KiB, {stalled} stalled, round {round}: {} MiB in {:.1}s; RssAnon baseline {:.1} MiB, \
             peak {:.1} MiB (+{:.1}), 0.5s after {:.1} MiB (+{:.1}); bound +{} MiB",
            frame >> 10,
            per_round * frame as u64 / MB,
            took.as_secs_f64(),
            baseline as f64 / MB as f64,
            peak as f64 / MB as f64,
            growth as f64 / MB as f64,
            after as f64 / MB as f64,
            after.saturating_sub(baseline) as f64 / MB as f64,
            LARGE_MAX_GROWTH / MB,
        );
        worst = worst.max(growth);
    }
    // Every round is printed first, then judged.
    assert!(
        worst <= LARGE_MAX_GROWTH,
        "frame {} KiB, {stalled} stalled subscribers: RssAnon grew by up to {} MiB over the \
         baseline of {} MiB in {ROUNDS} rounds, over the {} MiB bound",
        frame >> 10,
        worst / MB,
        baseline / MB,
        LARGE_MAX_GROWTH / MB
    );
    let info = topic_info(&mut c, &topic).await.unwrap();
    assert_eq!(info.next_offset, next_seq, "every frame stored");
    assert_eq!(
        info.subscribers, stalled as u32,
        "the stalled subscribers are open"
    );

    // The stalled subscribers can still read, in order, the frames published meanwhile.
    for (_, s) in subs.iter_mut() {
        let got = take(&mut s.stream, warm as usize + 8, Duration::from_secs(30)).await;
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.offset, i as u64, "offset order");
            assert_eq!(f.payload, payload, "frame {i}");
        }
    }
    drop(subs);
    wait_subscribers(&mut c, &topic, 0, Duration::from_secs(10)).await;
}

async fn large_frame_cases(default_subs: &[u64]) {
    for kb in env_list("FRAMECAST_MEMORY_FRAME_KB", &[256, 1024]) {
        for subs in env_list("FRAMECAST_MEMORY_SUBS", default_subs) {
            rounds_stay_flat((kb as usize) << 10, subs as usize).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_without_subscribers_stay_within_64_mib() {
    large_frame_cases(&[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_past_stalled_subscribers_stay_within_64_mib() {
    large_frame_cases(&[5]).await;
}

// ---- Many subscribers (issue 13): what each live subscriber keeps. ----

/// Subscribers of the many-subscriber test, over `MANY_CONNECTIONS` connections.
const MANY_SUBSCRIBERS: usize = 2_000;
const MANY_CONNECTIONS: usize = 20;
/// Live frames each subscriber receives, one commit each: more than a read step's 256, so
/// step buffers kept at that size would be touched all the way round.
const MANY_LIVE: u64 = 300;
/// The first seq_no of the live frames, and the subscribers' replay start: nothing older
/// is replayed to them.
const MANY_FIRST_SEQ: u64 = 1_000_000;
/// The bound: RssAnon growth per open live subscriber. Its state, HTTP/2 stream and task
/// took 12–14 KiB when measured; step buffers allocated for 256 frames from the start made
/// it 39 KiB (touched as the ring turns), which this bound refuses.
const PER_SUBSCRIBER_MAX: u64 = 30 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_keep_little_memory_each() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let pid = server.child.id();
    let mut c = server.client().await;
    let topic = "many";
    let small = |i: u64| format!("frame {i:>7} of the many-subscriber test").into_bytes();
    // Warm-up: the topic, and one subscriber through replay and live; then the baseline.
    publish(&mut c, topic, 0, &small(0)).await;
    {
        let mut reader = server.client().await;
        let mut sub = subscribe(&mut reader, sub_req(topic, 0)).await.unwrap();
        take(&mut sub.stream, 1, Duration::from_secs(30)).await;
    }
    wait_subscribers(&mut c, topic, 0, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss_anon(pid);

    let mut clients = Vec::new();
    for _ in 0..MANY_CONNECTIONS {
        clients.push(server.client().await);
    }
    let mut subs = Vec::with_capacity(MANY_SUBSCRIBERS);
    for i in 0..MANY_SUBSCRIBERS {
        let client = &mut clients[i % MANY_CONNECTIONS];
        subs.push(
            subscribe(client, sub_req(topic, MANY_FIRST_SEQ))
                .await
                .unwrap(),
        );
    }
    wait_subscribers(
        &mut c,
        topic,
        MANY_SUBSCRIBERS as u32,
        Duration::from_secs(30),
    )
    .await;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let got = take(&mut s.stream, MANY_LIVE as usize, Duration::from_secs(120)).await;
                (s, got)
            })
        })
        .collect();
    for i in 0..MANY_LIVE {
        let seq = MANY_FIRST_SEQ + i;
        publish(&mut c, topic, seq, &small(seq)).await;
    }
    let mut open = Vec::with_capacity(MANY_SUBSCRIBERS);
    for r in readers {
        let (s, got) = r.await.unwrap();
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, f)| f.offset == 1 + i as u64 && f.seq_no == MANY_FIRST_SEQ + i as u64),
            "every subscriber gets every live frame, in order"
        );
        open.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_anon(pid);
    let per = after.saturating_sub(baseline) / MANY_SUBSCRIBERS as u64;
    eprintln!(
        "memory: {MANY_SUBSCRIBERS} live subscribers over {MANY_CONNECTIONS} connections, \
         {MANY_LIVE} frames each: RssAnon baseline {:.1} MiB, after {:.1} MiB, \
         {:.1} KiB per subscriber (bound {} KiB)",
        baseline as f64 / MB as f64,
        after as f64 / MB as f64,
        per as f64 / 1024.0,
        PER_SUBSCRIBER_MAX >> 10,
    );
    let info = topic_info(&mut c, topic).await.unwrap();
    assert_eq!(info.subscribers as usize, MANY_SUBSCRIBERS);
    assert!(
        per <= PER_SUBSCRIBER_MAX,
        "each live subscriber keeps {} KiB (bound {} KiB)",
        per >> 10,
        PER_SUBSCRIBER_MAX >> 10
    );
    drop(open);
}
