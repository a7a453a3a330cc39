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
