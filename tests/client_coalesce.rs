//! The Rust client's coalescing (the default): concurrent `publish` calls on one client share
//! one `PublishStream` per topic, and each call still gets its own ack, exactly once, even
//! across a `kill -9` of the server; one invalid frame fails only its own call.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use framecast::client::{Ack, Client, Error, RetryPolicy};

/// Publishers working at the same time on one client.
const PUBLISHERS: u64 = 64;

fn client(addr: &str) -> Client {
    let c = Client::connect(addr).unwrap().with_retry(RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(300),
        max_elapsed: Duration::from_secs(30),
    });
    assert!(c.coalescing(), "coalescing is the default");
    c
}

/// Every acked payload is stored exactly once, at its acked offset, with its seq_no; and
/// nothing else is stored.
async fn assert_stored_exactly_once(server: &Server, topic: &str, acks: &[(u64, String, Ack)]) {
    let mut raw = server.client().await;
    let log = read_log(&mut raw, topic).await;
    let mut stored: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for f in &log {
        stored
            .entry(String::from_utf8(f.payload.to_vec()).unwrap())
            .or_default()
            .push((f.offset, f.seq_no));
    }
    for (seq_no, payload, ack) in acks {
        let at = stored
            .get(payload)
            .unwrap_or_else(|| panic!("{payload} acked but not stored"));
        assert_eq!(
            at,
            &vec![(ack.offset, *seq_no)],
            "{payload} (seq {seq_no}) stored at {at:?}, acked at {}",
            ack.offset
        );
    }
    assert_eq!(log.len(), acks.len(), "a stray or doubled frame is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_get_their_own_acks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let c = client(&server.addr);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..20u64 {
                let seq_no = p * 1000 + i;
                let payload = format!("p{p}-{i}");
                let ack = c.publish("t", seq_no, payload.clone()).await.unwrap();
                acks.push((seq_no, payload, ack));
            }
            acks
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    assert_eq!(acks.len() as u64, PUBLISHERS * 20);
    let offsets: HashSet<u64> = acks.iter().map(|(_, _, a)| a.offset).collect();
    assert_eq!(offsets.len(), acks.len(), "two calls got the same offset");
    assert!(acks.iter().all(|(_, _, a)| !a.duplicate));
    assert_stored_exactly_once(&server, "t", &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_across_kill9_are_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_fixed_port(dir.path(), &["--fsync", "always"]);
    let c = client(&server.addr);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            // At least 1 s of paced load, so both kills land in it however fast the machine.
            for i in 0..200u64 {
                let seq_no = p * 1000 + i;
                let payload = format!("p{p}-{i}");
                let ack = c
                    .publish("k", seq_no, payload.clone())
                    .await
                    .expect("publish");
                acks.push((seq_no, payload, ack));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acks
        }));
    }
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "kill {round} came after the load ended"
        );
        server.kill9();
        server.restart();
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    assert_eq!(acks.len() as u64, PUBLISHERS * 200);
    assert_stored_exactly_once(&server, "k", &acks).await;
    assert!(
        server.log_text().contains("recovered"),
        "the server did restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_frame_fails_only_its_own_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--fsync", "always", "--max-frame-bytes", "1024"],
    );
    let c = client(&server.addr);
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10u64 {
                let seq_no = p * 1000 + i;
                // Every eighth publisher sends one frame too large for the server at i = 5.
                let payload = if p % 8 == 0 && i == 5 {
                    format!("big-p{p}-{}", "x".repeat(2000))
                } else {
                    format!("p{p}-{i}")
                };
                out.push((
                    seq_no,
                    payload.clone(),
                    c.publish("v", seq_no, payload).await,
                ));
            }
            out
        }));
    }
    let mut acks = Vec::new();
    let mut refused = 0;
    for t in tasks {
        for (seq_no, payload, r) in t.await.unwrap() {
            if payload.starts_with("big-") {
                assert!(
                    matches!(r, Err(Error::InvalidArgument(_))),
                    "{payload:.12}: {r:?}"
                );
                refused += 1;
            } else {
                acks.push((seq_no, payload, r.unwrap()));
            }
        }
    }
    assert_eq!(refused, 8);
    assert_eq!(acks.len() as u64, PUBLISHERS * 10 - 8);
    // What the client can check itself is refused before it reaches the shared stream.
    assert!(matches!(
        c.publish("bad name", 1, "x").await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        c.publish_at("v", 1, -5, "x").await,
        Err(Error::InvalidArgument(_))
    ));
    let ack = c.publish("v", 7, "after").await.unwrap();
    acks.push((7, "after".to_string(), ack));
    assert_stored_exactly_once(&server, "v", &acks).await;
}

/// A payload over the client's largest message (64 MiB) is refused before it is queued:
/// it fails only its own call, and the calls sharing its stream (or its `Publisher`) are
/// acknowledged. Before, the message failed locally and broke the shared stream: the
/// frame was retried for the whole budget as if the connection had broken, and the calls
/// queued behind it failed with it, unstored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_clients_largest_message_fails_only_its_own_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "always"]);
    let c = client(&server.addr);
    let huge = bytes::Bytes::from(vec![7u8; 65 << 20]);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for p in 0..8u64 {
        let (c, huge) = (c.clone(), huge.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10u64 {
                let seq_no = p * 1000 + i;
                if p == 0 && i == 5 {
                    let r = c.publish("v", seq_no, huge.clone()).await;
                    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
                    continue;
                }
                let payload = format!("p{p}-{i}");
                let ack = c.publish("v", seq_no, payload.clone()).await.unwrap();
                out.push((seq_no, payload, ack));
            }
            out
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await.unwrap());
    }
    assert_eq!(acks.len(), 79);
    // A Publisher too: the huge frame is refused, the next one is acknowledged.
    let publisher = c.publisher("v");
    let r = publisher.send(1, huge.clone()).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{:?}", r.err());
    let ack = publisher.send(2, "after").await.unwrap().await.unwrap();
    acks.push((2, "after".to_string(), ack));
    // A broadcast whose payload fits but whose topic names take it past the largest
    // message: refused the same way, not sent.
    let near = huge.slice(..(64 << 20) - (64 << 10) - 16);
    let names: Vec<String> = (0..1000).map(|i| format!("{i:0>100}")).collect();
    let r = c.broadcast(&names, 1, near).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{:?}", r.err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}: a retry budget was spent",
        started.elapsed()
    );
    assert_stored_exactly_once(&server, "v", &acks).await;
}

/// Concurrent publishes while no server answers all fail within about one retry budget:
/// the frames queued behind the one being retried give up with it. Before, the publisher
/// took them one at a time, so the k-th call failed after k budgets (20 calls, 1 s each:
/// 20 s), and `framecast publish` fed from stdin advanced one line per `--timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_queued_during_an_outage_fail_together_within_one_budget() {
    let c = Client::connect(&dead_addr())
        .unwrap()
        .with_retry(RetryPolicy {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(1),
        });
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..20u64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.publish("down", i, format!("f{i}")).await })
        })
        .collect();
    for call in calls {
        let r = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("a publish never returned")
            .unwrap();
        assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "20 publishes took {took:?} to fail"
    );
}

/// Publishes to more topics than a connection takes streams (`--max-streams-per-connection`,
/// here 16) all succeed, in order per topic: the coalescer spreads topics over a few shared
/// streams. Before, each topic kept a stream of its own open for the client's life, and the
/// publishes of the first topic past the server's limit waited for a stream for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_more_topics_than_a_connection_has_streams_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-streams-per-connection", "16"]);
    let c = client(&server.addr);
    for round in 0..2u64 {
        for t in 0..40u64 {
            let ack = tokio::time::timeout(
                Duration::from_secs(20),
                c.publish(&format!("many-{t}"), round, format!("r{round}")),
            )
            .await
            .unwrap_or_else(|_| panic!("the publish to topic {t} never returned"))
            .unwrap();
            assert_eq!(ack.offset, round, "topic {t}");
        }
    }
    let mut raw = server.client().await;
    for t in 0..40u64 {
        let log = read_log(&mut raw, &format!("many-{t}")).await;
        let payloads: Vec<_> = log.iter().map(|f| f.payload.to_vec()).collect();
        assert_eq!(payloads, [b"r0".to_vec(), b"r1".to_vec()], "topic {t}");
    }
}
