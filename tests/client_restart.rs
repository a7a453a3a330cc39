//! The Rust client against a server that is `kill -9`ed and restarted: its subscription
//! stream yields exactly the frames of one unbroken subscription, and every publish it
//! reports as done is stored exactly once.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use framecast::client::{Client, Frame, RetryPolicy};
use futures::StreamExt;
use rand::{Rng, SeedableRng};

fn client(addr: &str) -> Client {
    Client::connect(addr).unwrap().with_retry(RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        max_elapsed: Duration::from_secs(30),
    })
}

async fn next(sub: &mut framecast::client::Subscription) -> Frame {
    match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
        Ok(Some(Ok(f))) => f,
        other => panic!("subscription: {other:?}"),
    }
}

fn restart(server: &mut Server) {
    server.kill9();
    server.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_kill9_restarts_in_replay_and_in_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_fixed_port(dir.path(), &["--fsync", "always"]);
    let c = client(&server.addr);
    // History: 3000 frames of 2 KiB with random seq_nos, too much for the connection to
    // buffer, so the kills land in the middle of the server's replay.
    let publisher = c.publisher("t");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut pending = Vec::new();
    for i in 0..3000u64 {
        let payload = format!("{i:06}-{}", "h".repeat(2048));
        pending.push(
            publisher
                .send(rng.random_range(0..1000), payload)
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap();
    }
    let mut sub = c.subscribe("t", 0);
    let mut got = Vec::new();
    for round in 0..2 {
        for _ in 0..700 {
            got.push(next(&mut sub).await);
        }
        assert!(
            got.iter().all(|f| !f.live),
            "still replaying in round {round}"
        );
        restart(&mut server);
    }
    while got.len() < 3000 {
        got.push(next(&mut sub).await);
    }
    // Live: publish a few, read them, kill; twice.
    for round in 0..2u64 {
        for i in 0..50u64 {
            c.publish("t", 5000 + i, format!("live-{round}-{i}"))
                .await
                .unwrap();
        }
        for _ in 0..50 {
            let f = next(&mut sub).await;
            assert!(f.live, "{f:?}");
            got.push(f);
        }
        restart(&mut server);
    }
    c.publish("t", 1, "after").await.unwrap();
    got.push(next(&mut sub).await);

    // Expected: one unbroken subscription from seq 0 with S = 3000.
    let mut raw = server.client().await;
    let all: BTreeMap<u64, framecast::proto::Frame> = read_log(&mut raw, "t")
        .await
        .into_iter()
        .map(|f| (f.offset, f))
        .collect();
    assert_eq!(all.len(), 3101);
    let mut replay: Vec<_> = all.values().filter(|f| f.offset < 3000).collect();
    replay.sort_by_key(|f| (f.seq_no, f.timestamp, f.offset));
    let expect: Vec<(u64, Vec<u8>)> = replay
        .into_iter()
        .chain(all.values().filter(|f| f.offset >= 3000))
        .map(|f| (f.offset, f.payload.to_vec()))
        .collect();
    let seen: Vec<(u64, Vec<u8>)> = got.iter().map(|f| (f.offset, f.payload.to_vec())).collect();
    assert_eq!(seen.len(), expect.len());
    assert!(
        seen == expect,
        "the resumed stream differs from the unbroken one"
    );
    assert!(got[..3000].iter().all(|f| !f.live) && got[3000..].iter().all(|f| f.live));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_across_restarts_are_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_fixed_port(dir.path(), &["--fsync", "always"]);
    let c = client(&server.addr);
    let unary = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..300u64 {
                let ack = c.publish("p", i, format!("u{i}")).await.expect("publish");
                acks.push((format!("u{i}"), ack));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            acks
        })
    };
    let piped = {
        let publisher = c.publisher("p");
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..2000u64 {
                let pending = publisher.send(i, format!("s{i}")).await.expect("send");
                acks.push((format!("s{i}"), pending));
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut out = Vec::new();
            for (k, p) in acks {
                out.push((k, p.await.expect("pipelined ack")));
            }
            out
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        restart(&mut server);
    }
    let mut acks = unary.await.unwrap();
    acks.extend(piped.await.unwrap());
    let mut raw = server.client().await;
    let log = read_log(&mut raw, "p").await;
    let mut stored: HashMap<String, Vec<u64>> = HashMap::new();
    for f in &log {
        stored
            .entry(String::from_utf8(f.payload.to_vec()).unwrap())
            .or_default()
            .push(f.offset);
    }
    assert_eq!(acks.len(), 2300);
    for (payload, ack) in &acks {
        let offsets = stored
            .get(payload)
            .unwrap_or_else(|| panic!("{payload} acked but not stored"));
        assert_eq!(
            offsets,
            &vec![ack.offset],
            "{payload} stored {offsets:?}, acked at {}",
            ack.offset
        );
    }
    assert_eq!(
        log.len(),
        2300,
        "a frame was stored twice or a stray one appeared"
    );
    assert!(
        server.log_text().contains("recovered"),
        "the server did restart"
    );
}
