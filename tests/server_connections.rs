//! `--max-connections N`: while N connections are open the next one is not served; once
//! one of them closes it is.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::ListTopicsRequest;
use tonic::transport::Channel;

/// How long the connection past the limit must stay unserved (a lower bound of waiting,
/// not a speed target: an unlimited server answers in milliseconds).
const HELD: Duration = Duration::from_millis(800);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_past_max_connections_waits_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "2"]);

    // Two connections, both served.
    let mut first = server.client().await;
    let mut second = server.client().await;
    list_topics(&mut first).await;
    list_topics(&mut second).await;

    // The third: its call is not answered while the two are open.
    let channel = Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect_lazy();
    let mut third = BroadcastClient::new(channel);
    let call = tokio::spawn(async move {
        third
            .list_topics(ListTopicsRequest {})
            .await
            .map(|r| r.into_inner().topics.len())
    });
    tokio::time::sleep(HELD).await;
    assert!(
        !call.is_finished(),
        "a third connection was served while --max-connections 2 were open: {:?}",
        call.await
    );
    // The open ones are still served meanwhile.
    list_topics(&mut second).await;
    assert!(server.log_text().contains("connection limit reached"));

    // One closes: the waiting connection is accepted and its call answered.
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the waiting connection was not served after one closed")
        .expect("call task");
    assert_eq!(answered.expect("ListTopics on the third connection"), 0);

    // Permits come back for good: with `second` closed too (and `third` gone with its
    // task), a new client is served at once.
    drop(second);
    let mut fourth = server.client().await;
    list_topics(&mut fourth).await;
}

/// Sends `GET /healthz` on a keep-alive HTTP/1.1 connection and reads the start of the
/// answer: its status line.
async fn healthz_on(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_counts_the_grpc_and_http_doors_together() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "2"]);
    let http = server.http.clone().expect("HTTP door");
    let http_at = http.trim_start_matches("http://").to_string();

    // One connection on each door, both served.
    let mut grpc = server.client().await;
    list_topics(&mut grpc).await;
    let mut first_http = tokio::net::TcpStream::connect(&http_at).await.unwrap();
    assert!(healthz_on(&mut first_http).await.contains("200"));

    // A second HTTP connection makes three in all: not served while the two are open.
    let second_at = http_at.clone();
    let call = tokio::spawn(async move {
        let mut conn = tokio::net::TcpStream::connect(&second_at).await.unwrap();
        healthz_on(&mut conn).await
    });
    tokio::time::sleep(HELD).await;
    assert!(
        !call.is_finished(),
        "a third connection (the second on the HTTP door) was served while \
         --max-connections 2 were open, one per door: {:?}",
        call.await
    );

    // The gRPC connection closes: the waiting HTTP connection is served.
    drop(grpc);
    let status = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the waiting HTTP connection was not served after the gRPC one closed")
        .expect("call task");
    assert!(status.contains("200"), "{status}");
}
