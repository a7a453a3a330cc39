//! Replay order and the `replay_seq_no_start` filter, against the real server.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use framecast::proto::SubscribeRequest;

fn sub_req(topic: &str, start: u64) -> SubscribeRequest {
    SubscribeRequest {
        replay_seq_no_start: start,
        topic: topic.into(),
        resume: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_sorted_by_seq_no_then_timestamp_then_offset_and_live_follows_in_offset_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    // Shuffled, duplicated seq_nos; equal seq_nos with explicit timestamps out of order,
    // and an exact (seq_no, timestamp) tie broken by offset.
    let frames: Vec<(u64, i64, &str)> = vec![
        (5, 100, "a"),
        (3, 100, "b"),
        (5, 50, "c"),
        (9, 1, "d"),
        (3, 100, "e"),
        (1, 7, "f"),
        (5, 50, "g"),
        (0, 3, "h"),
    ];
    for (seq, ts, p) in &frames {
        let mut r = req("ord", *seq, p.as_bytes());
        r.timestamp = *ts;
        let ack = c.publish(r).await.unwrap().into_inner();
        assert_eq!(ack.timestamp, *ts);
    }
    let mut sub = subscribe(&mut c, sub_req("ord", 0)).await.unwrap();
    assert_eq!(sub.snapshot, frames.len() as u64);
    let got = take(&mut sub.stream, frames.len(), Duration::from_secs(10)).await;
    let order: Vec<&str> = got
        .iter()
        .map(|f| std::str::from_utf8(&f.payload).unwrap())
        .collect();
    // (0,3,h) (1,7,f) (3,100,b@1) (3,100,e@4) (5,50,c@2) (5,50,g@6) (5,100,a@0) (9,1,d)
    assert_eq!(order, vec!["h", "f", "b", "e", "c", "g", "a", "d"]);
    let offsets: Vec<u64> = got.iter().map(|f| f.offset).collect();
    assert_eq!(offsets, vec![7, 5, 1, 4, 2, 6, 0, 3]);

    // Live frames come in offset order, whatever their seq_no.
    for (i, seq) in [2u64, 1, 8].iter().enumerate() {
        let ack = publish(&mut c, "ord", *seq, format!("live{i}").as_bytes()).await;
        assert_eq!(ack.offset, 8 + i as u64);
    }
    let live = take(&mut sub.stream, 3, Duration::from_secs(10)).await;
    assert_eq!(
        live.iter().map(|f| f.offset).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(
        live.iter().map(|f| f.seq_no).collect::<Vec<_>>(),
        vec![2, 1, 8]
    );
    expect_quiet(&mut sub.stream, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_seq_no_start_filters_replay_and_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    for seq in [10u64, 2, 7, 15, 7, 1] {
        publish(&mut c, "f", seq, format!("s{seq}").as_bytes()).await;
    }
    let mut sub = subscribe(&mut c, sub_req("f", 7)).await.unwrap();
    let got = take(&mut sub.stream, 4, Duration::from_secs(10)).await;
    assert_eq!(
        got.iter().map(|f| f.seq_no).collect::<Vec<_>>(),
        vec![7, 7, 10, 15]
    );
    // Live: below the start is filtered out, at or above it is delivered.
    for seq in [3u64, 7, 6, 100] {
        publish(&mut c, "f", seq, b"live").await;
    }
    let live = take(&mut sub.stream, 2, Duration::from_secs(10)).await;
    assert_eq!(
        live.iter()
            .map(|f| (f.seq_no, f.offset))
            .collect::<Vec<_>>(),
        vec![(7, 7), (100, 9)]
    );
    expect_quiet(&mut sub.stream, Duration::from_millis(200)).await;
}
