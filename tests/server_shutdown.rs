//! Graceful shutdown under load, against the real server: SIGTERM while 2000 subscriber
//! streams are open and publishers are mid-flight. The process exits 0 within 5 s, every
//! open stream ends with UNAVAILABLE (not a silent end, not a reset), calls made after
//! shutdown began are refused, and after a restart every acknowledged frame is there.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use framecast::proto::{Frame, PublishAck, PublishRequest};
use tokio::time::Instant;
use tonic::{Code, Status};

const TOPICS: usize = 4;
const SUBSCRIBERS: usize = 2000;
/// Subscriber streams are spread over this many connections.
const CONNECTIONS: usize = 40;
const LIMIT: Duration = Duration::from_secs(20);

fn topic(i: usize) -> String {
    format!("shut{}", i % TOPICS)
}

/// Reads until the stream ends; how many frames came, and how it ended.
async fn subscriber(mut stream: tonic::Streaming<Frame>) -> (usize, Result<(), Status>) {
    let mut n = 0;
    let deadline = Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(_))) => n += 1,
            Ok(Ok(None)) => return (n, Ok(())),
            Ok(Err(s)) => return (n, Err(s)),
            Err(_) => panic!("a subscriber stream did not end within {LIMIT:?}"),
        }
    }
}

/// Publishes until refused; what was acknowledged.
async fn publisher(addr: String, p: usize) -> Vec<(PublishRequest, PublishAck)> {
    let mut c = connect(&addr).await;
    let mut acked = Vec::new();
    let deadline = Instant::now() + LIMIT;
    let mk = move |i: usize| req(&topic(p + i), i as u64, format!("p{p}-{i}").as_bytes());
    if p.is_multiple_of(2) {
        for i in 0.. {
            let r = mk(i);
            match tokio::time::timeout_at(deadline, c.publish(r.clone())).await {
                Ok(Ok(a)) => acked.push((r, a.into_inner())),
                Ok(Err(_)) => break,
                Err(_) => panic!("publisher {p}: a publish hung"),
            }
        }
        return acked;
    }
    let who = format!("publisher {p}");
    acked.extend(
        paced_publish_stream(
            &mut c,
            (0..200_000).map(mk),
            16,
            Duration::from_millis(1),
            deadline,
            &who,
        )
        .await,
    );
    acked
}

/// A refusal after shutdown began: UNAVAILABLE, or the connection is gone (which tonic
/// also reports as UNAVAILABLE, or as UNKNOWN for a reset transport).
fn is_refusal(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            let m = s.to_string().to_lowercase();
            [
                "transport",
                "connection",
                "reset",
                "broken pipe",
                "closed",
                "refused",
                "goaway",
            ]
            .iter()
            .any(|w| m.contains(w))
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_with_unavailable_exits_0_and_keeps_every_acked_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--fsync", "always"]);
    let mut c = server.client().await;
    let mut acked: BTreeMap<(String, u64), (PublishRequest, PublishAck)> = BTreeMap::new();
    for i in 0..40 {
        let r = req(&topic(i), 0, format!("pre-{i}").as_bytes());
        let a = c.publish(r.clone()).await.unwrap().into_inner();
        acked.insert((r.topic.clone(), a.offset), (r, a));
    }

    // 2000 open streams over 40 connections, all reading.
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(server.client().await);
    }
    let mut subs = Vec::new();
    for i in 0..SUBSCRIBERS {
        let ch = &mut channels[i % CONNECTIONS];
        let s = subscribe(ch, sub_req(&topic(i), 0))
            .await
            .expect("subscribe");
        subs.push(tokio::spawn(subscriber(s.stream)));
    }
    let open: u32 = list_topics(&mut c)
        .await
        .iter()
        .map(|t| t.subscribers)
        .sum();
    assert_eq!(open as usize, SUBSCRIBERS);

    // Publishers mid-flight.
    let publishers: Vec<_> = (0..4)
        .map(|p| tokio::spawn(publisher(server.addr.clone(), p)))
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;

    server.sigterm();
    let signalled = std::time::Instant::now();
    // Calls made once shutdown has begun are refused.
    let began = Instant::now() + Duration::from_secs(5);
    while !server.log_text().contains("shutdown requested") {
        assert!(
            Instant::now() < began,
            "the server did not log the start of shutdown"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut refused = Vec::new();
    match c.publish(req("shut0", 1, b"late")).await {
        Ok(a) => panic!("a publish after shutdown began was accepted: {a:?}"),
        Err(s) => refused.push(("publish, existing connection", s)),
    }
    match c.subscribe(sub_req("shut0", 0)).await {
        Ok(r) => {
            let mut stream = r.into_inner();
            match tokio::time::timeout(LIMIT, stream.message()).await {
                Ok(Err(s)) => refused.push(("subscribe, existing connection", s)),
                other => panic!("a subscribe after shutdown began was served: {other:?}"),
            }
        }
        Err(s) => refused.push(("subscribe, existing connection", s)),
    }
    match tokio::time::timeout(
        LIMIT,
        tonic::transport::Channel::from_shared(server.addr.clone())
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect hung")
    {
        Err(_) => {} // no longer accepting: fine
        Ok(ch) => {
            let mut fresh = framecast::proto::broadcast_client::BroadcastClient::new(ch);
            match fresh.publish(req("shut0", 1, b"late")).await {
                Ok(a) => panic!("a publish on a new connection was accepted: {a:?}"),
                Err(s) => refused.push(("publish, new connection", s)),
            }
        }
    }
    for (what, s) in &refused {
        eprintln!("{what}: refused with {:?}: {}", s.code(), s.message());
        assert!(is_refusal(s), "{what}: {s:?}");
    }

    // Exit 0 within 5 s of the signal.
    let (status, server) = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(5));
        (status, server)
    })
    .await
    .unwrap();
    let mut server = server;
    let took = signalled.elapsed();
    let status = status
        .unwrap_or_else(|| panic!("not exited 5 s after SIGTERM; log:\n{}", server.log_text()));
    assert!(status.success(), "exit status {status:?}");
    eprintln!("exited {status:?} {took:?} after SIGTERM");

    // Every open stream ended with UNAVAILABLE.
    let mut delivered = 0;
    for (i, t) in subs.into_iter().enumerate() {
        let (n, end) = t.await.expect("subscriber task");
        delivered += n;
        match end {
            Err(s) => assert_eq!(s.code(), Code::Unavailable, "stream {i}: {s:?}"),
            Ok(()) => panic!("stream {i} ended without a status after {n} frames"),
        }
    }
    let mut this_run = 0;
    for p in publishers {
        for (r, a) in p.await.expect("publisher task") {
            this_run += 1;
            assert!(acked.insert((r.topic.clone(), a.offset), (r, a)).is_none());
        }
    }
    assert!(this_run > 0, "nothing was published during the run");
    eprintln!(
        "{this_run} publishes acked while streams were open; {delivered} frames delivered to {SUBSCRIBERS} streams"
    );
    assert!(server.log_text().contains("all logs synced and closed"));
    // Every task the server spawned (publish stream readers, maintenance) ended before the
    // logs closed, none was left running past the deadline.
    let log = server.log_text();
    assert!(log.contains("every server task ended"), "log:\n{log}");
    assert!(!log.contains("server tasks still running"), "log:\n{log}");

    // After a restart, every acked frame is there, byte for byte.
    server.restart();
    let mut c = server.client().await;
    for t in 0..TOPICS {
        let name = topic(t);
        let log = read_log(&mut c, &name).await;
        for ((tn, offset), (r, a)) in acked.range((name.clone(), 0)..=(name.clone(), u64::MAX)) {
            let f = log
                .get(*offset as usize)
                .unwrap_or_else(|| panic!("{tn}: acked offset {offset} missing"));
            assert_eq!(
                (&f.payload, f.seq_no, f.timestamp),
                (&r.payload, r.seq_no, a.timestamp),
                "{tn}: offset {offset}"
            );
        }
    }
}

/// A SIGTERM that comes before the server listens (here while a cluster node tries to join
/// an etcd that never answers) is not lost to the default action, which would kill the
/// process: the node stops joining, closes its logs, and exits 0.
#[test]
fn sigterm_before_listening_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // "etcd" that accepts connections (the kernel's backlog) and never says a word: ten
    // endpoints, each tried for 2 s, so the node is still joining 20 s after it started,
    // however slow the machine.
    let silent: Vec<_> = (0..10)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let etcd = silent
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect::<Vec<_>>()
        .join(",");
    // Below the ephemeral range: the test's own connection attempts below cannot take
    // the port before the server binds it.
    let free_port = || format!("127.0.0.1:{}", common::fixed_port());
    let (grpc, http) = (free_port(), free_port());
    let child = std::process::Command::new(bin())
        .args(["serve", "--listen", &grpc, "--http-listen", &http])
        .args([
            "--cluster-etcd",
            &etcd,
            "--cluster",
            "quiet",
            "--node-id",
            "n1",
        ])
        .args(["--advertise", &grpc])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The HTTP door opens before recovery and says "starting" until the node serves: from
    // then on the server is past its start, joining the cluster, not yet listening.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let starting = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the HTTP door never answered"
        );
        if std::net::TcpStream::connect(&http).is_ok() {
            break common::http::request(&format!("http://{http}"), "GET", "/healthz", &[], b"");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        (starting.status, starting.text()),
        (503, "starting\n".into())
    );
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?} (signal {:?}); log:\n{log}",
        out.status.code(),
        std::os::unix::process::ExitStatusExt::signal(&out.status)
    );
    assert!(log.contains("SIGTERM received"), "log:\n{log}");
    assert!(
        log.contains("shutdown requested while joining the cluster"),
        "log:\n{log}"
    );
    assert!(!log.contains("cannot join the cluster"), "log:\n{log}");
    assert!(!log.contains(" listening "), "log:\n{log}");
    drop(silent);
}
