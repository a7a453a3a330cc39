//! `/metrics` and `/healthz` against the real binary: the figures equal what the test did
//! (frames and bytes published, frames delivered to two subscribers, subscribers open, a
//! stalled subscriber's lag), and `/healthz` answers 503 while the server shuts down.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::http::{metric, request};
use common::{req, sub_req, subscribe, take, Server};
use framecast::proto::{CreateTopicRequest, PublishRequest};

fn scrape(base: &str) -> String {
    let r = request(base, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// Publishes `frames` over one PublishStream and checks that every one was acked.
async fn stream_all(
    c: &mut framecast::proto::broadcast_client::BroadcastClient<tonic::transport::Channel>,
    frames: Vec<PublishRequest>,
) {
    let n = frames.len();
    let acks = c
        .publish_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let acks: Vec<_> = tokio_stream::StreamExt::collect::<Vec<_>>(acks).await;
    assert_eq!(acks.len(), n);
    assert!(acks.iter().all(|a| a.is_ok()), "every frame acked");
}

/// Waits (bounded) until `series` reads `want`; the last exposition otherwise.
fn wait_for(base: &str, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(base);
        if metric(&text, series) == Some(want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Multi-threaded: the scrapes block their thread, and the gRPC client's connection task
// must keep running meanwhile (to send a dropped stream's reset, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_match_what_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.http.clone().unwrap();
    let mut c = server.client().await;
    const N: u64 = 300;
    const SIZE: usize = 100;

    // Two subscribers from the start, before anything is published.
    let mut a = subscribe(&mut c, sub_req("m", 0)).await.unwrap();
    let mut b = subscribe(&mut c, sub_req("m", 0)).await.unwrap();
    let text = scrape(&base);
    assert_eq!(
        metric(
            &text,
            "framecast_subscribers{topic=\"m\",transport=\"grpc\"}"
        ),
        Some(2.0)
    );

    // N frames over one publish stream, acked.
    stream_all(&mut c, (0..N).map(|i| req("m", i, &[7u8; SIZE])).collect()).await;
    take(&mut a.stream, N as usize, Duration::from_secs(20)).await;
    take(&mut b.stream, N as usize, Duration::from_secs(20)).await;

    let delivered = "framecast_delivered_frames_total{topic=\"m\",transport=\"grpc\"}";
    let text = wait_for(&base, delivered, 2.0 * N as f64);
    let at = |s: &str| metric(&text, s);
    assert_eq!(
        at(delivered),
        Some(2.0 * N as f64),
        "two subscribers, N frames each"
    );
    assert_eq!(
        at("framecast_published_frames_total{topic=\"m\"}"),
        Some(N as f64)
    );
    assert_eq!(
        at("framecast_published_bytes_total{topic=\"m\"}"),
        Some((N as usize * SIZE) as f64)
    );
    assert_eq!(
        at("framecast_topic_next_offset{topic=\"m\"}"),
        Some(N as f64)
    );
    assert_eq!(at("framecast_topic_first_offset{topic=\"m\"}"), Some(0.0));
    assert!(at("framecast_topic_stored_bytes{topic=\"m\"}").unwrap() > (N as usize * SIZE) as f64);
    assert_eq!(
        at("framecast_subscriber_max_lag_frames{topic=\"m\"}"),
        Some(0.0)
    );
    assert_eq!(
        at("framecast_publish_duration_seconds_count"),
        Some(N as f64)
    );
    assert!(at("framecast_fsync_duration_seconds_count").unwrap() >= 1.0);
    assert!(at("framecast_connections{listener=\"grpc\"}").unwrap() >= 1.0);
    assert!(at("framecast_connections{listener=\"http\"}").unwrap() >= 1.0);
    assert!(at("process_resident_memory_bytes").unwrap() > 0.0);
    assert!(at("process_open_fds").unwrap() > 0.0);
    assert!(at("process_threads").unwrap() >= 2.0);

    // Every topic's segment is a memory mapping, counted against the kernel's limit.
    let mappings = "framecast_memory_mappings";
    let before = at(mappings).unwrap();
    assert!(before < at("framecast_memory_mappings_limit").unwrap());
    for i in 0..50 {
        let made = CreateTopicRequest {
            name: format!("mapped-{i}"),
            ..Default::default()
        };
        c.create_topic(made).await.unwrap();
    }
    let after = metric(&scrape(&base), mappings).unwrap();
    // Less a few: an idle thread (four mappings) may have stopped meanwhile.
    assert!(
        after >= before + 40.0,
        "50 topics created: {before} -> {after} mappings"
    );

    // A duplicate is acknowledged but not counted as published.
    let mut keyed = req("m", N, b"once");
    keyed.idempotency_key = "k".into();
    c.publish(keyed.clone()).await.unwrap();
    assert!(c.publish(keyed).await.unwrap().into_inner().duplicate);
    let text = scrape(&base);
    assert_eq!(
        metric(&text, "framecast_published_frames_total{topic=\"m\"}"),
        Some(N as f64 + 1.0)
    );

    // Subscribers gone: the gauge goes back to 0.
    drop(a);
    drop(b);
    let gauge = "framecast_subscribers{topic=\"m\",transport=\"grpc\"}";
    assert_eq!(metric(&wait_for(&base, gauge, 0.0), gauge), Some(0.0));

    // A deleted topic's series go away.
    c.delete_topic(framecast::proto::DeleteTopicRequest { name: "m".into() })
        .await
        .unwrap();
    let text = scrape(&base);
    assert!(!text.contains("topic=\"m\""), "deleted topic still exposed");
}

// Multi-threaded: the scrapes block their thread, and the gRPC client's connection task
// must keep running meanwhile (to send a dropped stream's reset, say).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_shows_its_lag_and_health_turns_503_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let base = server.http.clone().unwrap();
    let mut c = server.client().await;
    const N: u64 = 400;
    let big = vec![1u8; 64 << 10];

    // A subscriber that never reads, on its own connection.
    let mut stalled_client = server.client().await;
    let stalled = subscribe(&mut stalled_client, sub_req("lag", 0))
        .await
        .unwrap();
    // 400 x 64 KiB = 25 MiB: far more than the windows and socket buffers hold.
    stream_all(&mut c, (0..N).map(|i| req("lag", i, &big)).collect()).await;

    let series = "framecast_subscriber_max_lag_frames{topic=\"lag\"}";
    let lag = metric(&scrape(&base), series).unwrap();
    assert!(
        lag >= (N / 2) as f64 && lag <= N as f64,
        "a subscriber that read nothing lags by most of {N} frames: {lag}"
    );

    // Shutdown with the stalled stream open: the server drains for up to its grace period,
    // and /healthz says so all along.
    server.sigterm();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut saw = None;
    while Instant::now() < deadline {
        let r = request(&base, "GET", "/healthz", &[], b"");
        if r.status == 503 {
            saw = Some(r.text());
            let ready = request(&base, "GET", "/readyz", &[], b"");
            assert_eq!((ready.status, ready.text()), (503, r.text()));
            // New API calls are refused as UNAVAILABLE meanwhile.
            let p = request(
                &base,
                "POST",
                "/v1/topics/lag/frames?seq_no=1",
                &[],
                b"late",
            );
            assert_eq!(p.status, 503, "{}", p.text());
            assert_eq!(p.json()["code"], "UNAVAILABLE");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(saw.as_deref(), Some("shutting down\n"));
    drop(stalled);
    let status = server.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(status.success(), "{status:?}");
}

/// A topic whose creation failed (here its directory cannot be made) has no series: a
/// refused request leaves nothing behind, not even one of `--metrics-max-topics`' slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_could_not_be_made_has_no_series() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.http.clone().unwrap();
    // A file where the topic's directory is made first: its creation fails.
    std::fs::write(
        dir.path().join("topics").join(".creating-ghost"),
        b"in the way",
    )
    .unwrap();
    let mut c = server.client().await;
    let refused = c.publish(req("ghost", 1, b"x")).await;
    assert!(refused.is_err(), "{refused:?}");
    c.publish(req("real", 1, b"x")).await.unwrap();
    let text = scrape(&base);
    assert!(
        text.contains("framecast_published_frames_total{topic=\"real\"}"),
        "{text}"
    );
    assert!(!text.contains("topic=\"ghost\""), "{text}");
}
