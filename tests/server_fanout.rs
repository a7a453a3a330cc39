//! Fan-out through the shared encoded-frame cache, against the real server.
//!
//! Many live subscribers of one topic, spread over a few connections, must see identical
//! streams, equal to the log read back by offset (the frames they get are encoded once and
//! shared, so a mix-up of shared bytes would show here). A subscriber with a seq_no filter
//! sees exactly the filtered part. And a subscriber that stalls while far more than the
//! cache holds (8 MiB) is published, so that it falls out of the cache, still gets every
//! frame exactly once, in offset order, once it reads again.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use framecast::proto::Frame;

const LIMIT: Duration = Duration::from_secs(60);

fn key(f: &Frame) -> (u64, u64, i64, Vec<u8>) {
    (f.offset, f.seq_no, f.timestamp, f.payload.to_vec())
}

/// Publishes `n` frames of `size` bytes over one `PublishStream`; seq_no `i % 5`.
async fn publish_n(addr: &str, topic: &str, n: usize, size: usize) {
    let mut c = connect(addr).await;
    let topic = topic.to_string();
    let reqs = (0..n).map(move |i| {
        let mut p = format!("frame-{i}-").into_bytes();
        p.resize(size.max(p.len()), (i % 251) as u8);
        req(&topic, (i % 5) as u64, &p)
    });
    let acks = paced_publish_stream(
        &mut c,
        reqs,
        100,
        Duration::from_millis(1),
        tokio::time::Instant::now() + LIMIT,
        "publisher",
    )
    .await;
    assert_eq!(acks.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_see_identical_streams() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    const TOPIC: &str = "fan";
    const N: usize = 3000;
    const SUBS: usize = 24;
    let mut admin = server.client().await;
    publish(&mut admin, TOPIC, 0, b"first").await;
    // Four connections, each carrying several streams.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(server.client().await);
    }
    let mut subs = Vec::new();
    for i in 0..SUBS {
        let start = if i == 0 { 3 } else { 0 };
        let s = subscribe(&mut conns[i % 4], sub_req(TOPIC, start))
            .await
            .unwrap();
        assert_eq!(s.snapshot, 1);
        subs.push(s);
    }
    wait_subscribers(&mut admin, TOPIC, SUBS as u32, LIMIT).await;
    publish_n(&server.addr, TOPIC, N, 100).await;
    let log = read_log(&mut admin, TOPIC).await;
    assert_eq!(log.len(), N + 1);
    let mut readers = Vec::new();
    for (i, mut s) in subs.into_iter().enumerate() {
        // The filtered subscriber replays nothing (frame 0 has seq_no 0) and then gets
        // the live frames with seq_no >= 3; the others get frame 0 and then all of them.
        let want = if i == 0 {
            log[1..].iter().filter(|f| f.seq_no >= 3).count()
        } else {
            N + 1
        };
        readers.push(tokio::spawn(async move {
            let got = take(&mut s.stream, want, LIMIT).await;
            expect_quiet(&mut s.stream, Duration::from_millis(200)).await;
            got
        }));
    }
    let mut streams = Vec::new();
    for r in readers {
        streams.push(r.await.unwrap());
    }
    let want: Vec<_> = log.iter().map(key).collect();
    let want_filtered: Vec<_> = log[1..].iter().filter(|f| f.seq_no >= 3).map(key).collect();
    assert_eq!(
        streams[0].iter().map(key).collect::<Vec<_>>(),
        want_filtered
    );
    for (i, s) in streams.iter().enumerate().skip(1) {
        assert_eq!(
            s.iter().map(key).collect::<Vec<_>>(),
            want,
            "subscriber {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_out_of_the_cache_still_gets_every_frame_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    const TOPIC: &str = "fallout";
    // 400 frames of 64 KiB: 25 MiB, three times what the cache holds.
    const N: usize = 400;
    const SIZE: usize = 64 << 10;
    let mut admin = server.client().await;
    let mut fast_conn = server.client().await;
    let mut slow_conn = server.client().await;
    let mut slow = subscribe(&mut slow_conn, sub_req(TOPIC, 0)).await.unwrap();
    let mut fast = subscribe(&mut fast_conn, sub_req(TOPIC, 0)).await.unwrap();
    wait_subscribers(&mut admin, TOPIC, 2, LIMIT).await;
    // The fast subscriber reads as frames come, keeping the cache moving; the slow one
    // reads nothing until all are published.
    let fast_reader = tokio::spawn(async move { take(&mut fast.stream, N, LIMIT).await });
    publish_n(&server.addr, TOPIC, N, SIZE).await;
    let fast_got = fast_reader.await.unwrap();
    let slow_got = take(&mut slow.stream, N, LIMIT).await;
    expect_quiet(&mut slow.stream, Duration::from_millis(300)).await;
    let log = read_log(&mut admin, TOPIC).await;
    assert_eq!(log.len(), N);
    let want: Vec<_> = log.iter().map(key).collect();
    assert_eq!(fast_got.iter().map(key).collect::<Vec<_>>(), want);
    assert_eq!(slow_got.iter().map(key).collect::<Vec<_>>(), want);
    for (i, f) in slow_got.iter().enumerate() {
        assert_eq!(f.offset, i as u64);
        assert!(f.payload.starts_with(format!("frame-{i}-").as_bytes()));
    }
}
