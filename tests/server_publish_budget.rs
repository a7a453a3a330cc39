//! The server-wide publish budget (`--max-queued-publish-bytes`): publishes taken in and not
//! yet written to their logs hold it, and past it the next ones wait, whatever connection
//! or stream they come through: the memory of queued publishes is bounded. The first
//! publish is held between the budget and its log by a fail point (`publish.stall`,
//! `--features failpoints`) until the test releases it.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use framecast::proto::broadcast_client::BroadcastClient;
use tonic::transport::Channel;

/// Starts a server with `budget` whose first publish stalls, publishes 600 KiB (stalled)
/// and then 600 KiB more on another connection; whether the second was answered within
/// `wait` while the first was held, then both acks' offsets once it is released.
async fn second_publish_answered_while_the_first_is_held(
    budget: &str,
    wait: Duration,
) -> (bool, Vec<u64>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let release = tmp.path().join("release");
    let server = Server::start_with_env(
        &data,
        &["--fsync", "never", "--max-queued-publish-bytes", budget],
        &[
            ("FRAMECAST_FAILPOINTS", "publish.stall"),
            ("FRAMECAST_FAILPOINT_RELEASE", release.to_str().unwrap()),
        ],
    );
    // 600 KiB on a connection of its own: its offset once acknowledged.
    let publish = |mut client: BroadcastClient<Channel>, seq_no: u64| {
        tokio::spawn(async move {
            client
                .publish(req("t", seq_no, &vec![seq_no as u8; 600 << 10]))
                .await
                .map(|a| a.into_inner().offset)
        })
    };
    let first = publish(server.client().await, 1);
    // The first is held once the server says so (not after a guess of a sleep: the second
    // must not reach the fail point first).
    let start = std::time::Instant::now();
    while !server.log_text().contains("fail point publish.stall") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!first.is_finished(), "the first publish did not stall");
    let second = publish(server.client().await, 2);
    let start = std::time::Instant::now();
    while !second.is_finished() && start.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = second.is_finished();
    std::fs::write(&release, b"").unwrap();
    let mut offsets = Vec::new();
    for call in [first, second] {
        let offset = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("answered once released")
            .unwrap()
            .expect("acknowledged");
        offsets.push(offset);
    }
    offsets.sort_unstable();
    (answered, offsets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_past_the_budget_waits_until_the_ones_before_it_are_written() {
    // 1 MiB: the first publish's 600 KiB leaves too little for the second.
    // Not answered in 1.5 s (the 600 KiB take a few ms when there is room).
    let (answered, offsets) =
        second_publish_answered_while_the_first_is_held("1MiB", Duration::from_millis(1500)).await;
    assert!(!answered, "the second publish went past a full budget");
    assert_eq!(offsets, [0, 1]);
    // With room for both (the default budget), the second is not held up by the first.
    let (answered, offsets) =
        second_publish_answered_while_the_first_is_held("256MiB", Duration::from_secs(20)).await;
    assert!(
        answered,
        "the second publish waited though the budget had room"
    );
    assert_eq!(offsets, [0, 1]);
}
