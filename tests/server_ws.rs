//! The WebSocket door (`/v1/ws`) against the real binary: many subscriptions on one socket,
//! publish and History over it, pushes whose cursors resume exactly on a new socket, token
//! refresh, and readers that never read (WebSocket and SSE) costing bounded memory while
//! 200 MiB are published.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::{publish, Server};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(server: &Server, query: &str) -> Socket {
    let url = format!("{}/v1/ws{query}", server.http.clone().unwrap()).replace("http://", "ws://");
    let (ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// A server under `dir` that takes tokens signed with the secret `k3y`.
fn with_auth(dir: &std::path::Path) -> Server {
    let secret = dir.join("secret");
    std::fs::write(&secret, "k3y").unwrap();
    Server::start(
        &dir.join("data"),
        &["--auth-jwt-secret-file", secret.to_str().unwrap()],
    )
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON message (pings skipped), within 20 s.
async fn recv(ws: &mut Socket) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message within 20 s")
            .expect("socket open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The socket's error reply to a message over its limit, saying `says`, then its close
/// with 1009 (message too big).
async fn refused_as_too_big(ws: &mut Socket, says: &str) {
    let refused = recv(ws).await;
    assert_eq!(refused["error"]["code"], "INVALID_ARGUMENT", "{refused}");
    assert!(
        refused["error"]["message"].as_str().unwrap().contains(says),
        "{refused}"
    );
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .expect("the socket stayed open");
    assert_eq!(closed, Some(1009), "closed as 'message too big'");
}

/// The reply to request `id`, collecting pushes that arrive before it.
async fn reply(ws: &mut Socket, id: u64, pushes: &mut Vec<Value>) -> Value {
    loop {
        let v = recv(ws).await;
        if v.get("id") == Some(&json!(id)) {
            return v;
        }
        pushes.push(v);
    }
}

fn num(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_carries_many_subscriptions_publish_history_and_exact_resume() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    for s in [5, 3, 9, 1] {
        publish(&mut c, "a", s, format!("a{s}").as_bytes()).await;
    }
    publish(&mut c, "b", 1, b"b1").await;

    let mut ws = open(&server, "").await;
    let mut pushes = Vec::new();
    send(
        &mut ws,
        json!({"id": 1, "subscribe": {"topic": "a", "from": "3"}}),
    )
    .await;
    let r = reply(&mut ws, 1, &mut pushes).await;
    assert_eq!(
        (
            r["result"]["topic"].as_str(),
            r["result"]["snapshot_offset"].as_str()
        ),
        (Some("a"), Some("4"))
    );
    send(&mut ws, json!({"id": 2, "subscribe": {"topic": "b"}})).await;
    assert!(reply(&mut ws, 2, &mut pushes).await.get("result").is_some());
    // One subscription per topic.
    send(&mut ws, json!({"id": 3, "subscribe": {"topic": "a"}})).await;
    assert_eq!(
        reply(&mut ws, 3, &mut pushes).await["error"]["code"],
        "ALREADY_EXISTS"
    );
    // Publish over the socket: the ack, then the push of the same frame on topic b.
    send(&mut ws, json!({"id": 4, "publish": {"topic": "b", "seq_no": 2, "text": "b2", "idempotency_key": "k"}})).await;
    let ack = reply(&mut ws, 4, &mut pushes).await;
    assert_eq!(
        (
            ack["result"]["offset"].as_str(),
            ack["result"]["duplicate"].as_bool()
        ),
        (Some("1"), Some(false))
    );
    send(&mut ws, json!({"id": 5, "publish": {"topic": "b", "seq_no": 2, "text": "b2", "idempotency_key": "k"}})).await;
    assert_eq!(
        reply(&mut ws, 5, &mut pushes).await["result"]["duplicate"],
        true
    );
    // History over the socket: the same fields as the HTTP query.
    send(
        &mut ws,
        json!({"id": 6, "history": {"topic": "a", "limit": 2, "reverse": true}}),
    )
    .await;
    let page = reply(&mut ws, 6, &mut pushes).await;
    let seqs: Vec<u64> = page["result"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| num(&f["seq_no"]))
        .collect();
    assert_eq!(seqs, [9, 5]);
    // `null` is a field left out (it was read as the text "null": a malformed cursor).
    send(
        &mut ws,
        json!({"id": 66, "history": {"topic": "a", "limit": 2, "reverse": true, "after": null, "from": null}}),
    )
    .await;
    let same = reply(&mut ws, 66, &mut pushes).await;
    assert_eq!(same["result"]["frames"], page["result"]["frames"], "{same}");
    // Bad input: an error naming the request, nothing else changes.
    send(
        &mut ws,
        json!({"id": 7, "publish": {"topic": "no good", "seq_no": 1}}),
    )
    .await;
    assert_eq!(
        reply(&mut ws, 7, &mut pushes).await["error"]["code"],
        "INVALID_ARGUMENT"
    );
    send(&mut ws, json!({"id": 8})).await;
    assert_eq!(
        reply(&mut ws, 8, &mut pushes).await["error"]["code"],
        "INVALID_ARGUMENT"
    );
    // A newest-first History cursor cannot resume a subscription (it would go on from
    // frames the client has, and never send the older ones): refused, on another socket.
    let newest_first = page["result"]["next"].as_str().unwrap().to_string();
    let mut other = open(&server, "").await;
    send(
        &mut other,
        json!({"id": 1, "subscribe": {"topic": "a", "resume": newest_first}}),
    )
    .await;
    let refused = reply(&mut other, 1, &mut Vec::new()).await;
    assert_eq!(refused["error"]["code"], "INVALID_ARGUMENT", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("newest-first"),
        "{refused}"
    );

    // Pushes so far: a's replay from seq_no 3 in key order, b's replay and live frame.
    while pushes.len() < 5 {
        pushes.push(recv(&mut ws).await);
    }
    let of = |t: &str| -> Vec<(u64, bool)> {
        pushes
            .iter()
            .filter(|p| p["frame"]["topic"] == t)
            .map(|p| {
                (
                    num(&p["frame"]["seq_no"]),
                    p["frame"]["live"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(of("a"), [(3, false), (5, false), (9, false)]);
    assert_eq!(of("b"), [(1, false), (2, true)]);
    let cursor_a =
        pushes.iter().rfind(|p| p["frame"]["topic"] == "a").unwrap()["frame"]["cursor"].clone();
    assert_eq!(
        pushes
            .iter()
            .filter(|p| p["frame"]["seq_no"] == "5")
            .count(),
        1
    );

    // Unsubscribe b; a keeps going.
    send(&mut ws, json!({"id": 9, "unsubscribe": {"topic": "b"}})).await;
    let mut more = Vec::new();
    assert!(reply(&mut ws, 9, &mut more).await.get("result").is_some());
    publish(&mut c, "b", 3, b"b3").await;
    publish(&mut c, "a", 4, b"a4").await;
    let next = recv(&mut ws).await;
    assert_eq!(
        (
            next["frame"]["topic"].as_str(),
            next["frame"]["seq_no"].as_str()
        ),
        (Some("a"), Some("4"))
    );
    // A forced disconnect: the socket is dropped; frames come meanwhile.
    drop(ws);
    for s in [2, 8, 6] {
        publish(&mut c, "a", s, format!("a{s}").as_bytes()).await;
    }
    // A new socket resumes with the cursor of the last frame of `a` seen before "a4":
    // exactly "a4" again, then the frames published while away, in offset order.
    let mut ws = open(&server, "").await;
    send(
        &mut ws,
        json!({"id": 1, "subscribe": {"topic": "a", "from": 3, "resume": cursor_a}}),
    )
    .await;
    let mut pushes = Vec::new();
    let r = reply(&mut ws, 1, &mut pushes).await;
    assert_eq!(r["result"]["snapshot_offset"], "4", "the same walk: {r}");
    while pushes.len() < 3 {
        pushes.push(recv(&mut ws).await);
    }
    let seqs: Vec<u64> = pushes.iter().map(|p| num(&p["frame"]["seq_no"])).collect();
    assert_eq!(
        seqs,
        [4, 8, 6],
        "from 3 on: 2 is filtered; live in offset order"
    );
}

/// One socket with 2,000 subscriptions, half of them ended with `unsubscribe`: a frame on
/// every topic reaches the socket once for each subscription still open, and never for
/// one that was ended, answered before the frames were published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_with_thousands_of_subscriptions_gets_each_open_ones_frames_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let mut ws = open(&server, "").await;
    let mut pushes = Vec::new();
    const TOPICS: u64 = 2_000;
    for i in 0..TOPICS {
        send(
            &mut ws,
            json!({"id": i, "subscribe": {"topic": format!("t{i}")}}),
        )
        .await;
    }
    for i in 0..TOPICS {
        let r = reply(&mut ws, i, &mut pushes).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    for i in (1..TOPICS).step_by(2) {
        send(
            &mut ws,
            json!({"id": TOPICS + i, "unsubscribe": {"topic": format!("t{i}")}}),
        )
        .await;
        let r = reply(&mut ws, TOPICS + i, &mut pushes).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    assert!(pushes.is_empty(), "{pushes:?}");
    let frames: Vec<framecast::proto::PublishRequest> = (0..TOPICS)
        .map(|i| framecast::proto::PublishRequest {
            topic: format!("t{i}"),
            seq_no: i,
            payload: vec![b'p'; 10].into(),
            ..Default::default()
        })
        .collect();
    let mut c = server.client().await;
    let acks = c
        .publish_stream(futures::stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.count().await, TOPICS as usize);
    let mut topics = std::collections::BTreeSet::new();
    while topics.len() < (TOPICS / 2) as usize {
        let v = recv(&mut ws).await;
        let topic = v["frame"]["topic"]
            .as_str()
            .unwrap_or_else(|| panic!("{v}"));
        let i: u64 = topic[1..].parse().unwrap();
        assert_eq!(i % 2, 0, "a frame of unsubscribed topic {topic}");
        assert!(topics.insert(i), "topic {topic} pushed twice");
    }
    // Nothing else comes: a request's answer is the next message.
    send(&mut ws, json!({"id": 99_999, "history": {"topic": "t0"}})).await;
    let next = recv(&mut ws).await;
    assert_eq!(next["id"], 99_999, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_token_keeps_subscriptions_open_past_the_old_ones_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_auth(dir.path());
    // Short enough to wait out, long enough for the setup below on a loaded machine.
    let minted = std::time::Instant::now();
    let short = common::tokens::token(b"k3y", &[">"], &[">"], false, Duration::from_secs(6));
    let long = common::tokens::token(b"k3y", &[">"], &[">"], false, Duration::from_secs(600));

    // Without a token the socket opens, but calls are refused until `auth`.
    let mut bare = open(&server, "").await;
    send(&mut bare, json!({"id": 1, "subscribe": {"topic": "t"}})).await;
    assert_eq!(recv(&mut bare).await["error"]["code"], "UNAUTHENTICATED");
    send(&mut bare, json!({"id": 2, "auth": {"token": "garbage"}})).await;
    assert_eq!(recv(&mut bare).await["error"]["code"], "UNAUTHENTICATED");
    // A bad token at the upgrade is refused with 401.
    let url = format!(
        "{}/v1/ws?access_token=garbage",
        server.http.clone().unwrap()
    )
    .replace("http://", "ws://");
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    // Two sockets on the short token; one refreshes before it expires.
    let mut kept = open(&server, &format!("?access_token={short}")).await;
    let mut lapsed = open(&server, &format!("?access_token={short}")).await;
    // Each socket's pushes in its own list: a push may come before or after a reply.
    let (mut kept_pushes, mut lapsed_pushes) = (Vec::new(), Vec::new());
    for (ws, pushes) in [
        (&mut kept, &mut kept_pushes),
        (&mut lapsed, &mut lapsed_pushes),
    ] {
        send(ws, json!({"id": 1, "subscribe": {"topic": "t"}})).await;
        assert!(reply(ws, 1, pushes).await.get("result").is_some());
        send(
            ws,
            json!({"id": 2, "publish": {"topic": "t", "seq_no": 1, "text": "x"}}),
        )
        .await;
        assert!(reply(ws, 2, pushes).await.get("result").is_some());
    }
    send(&mut kept, json!({"id": 3, "auth": {"token": long}})).await;
    assert!(reply(&mut kept, 3, &mut kept_pushes)
        .await
        .get("result")
        .is_some());
    assert!(
        minted.elapsed() < Duration::from_secs(5),
        "the refresh came before the old token's expiry"
    );
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(minted.elapsed())).await;
    let mut c = server.client().await;
    let mut req = tonic::Request::new(common::req("t", 2, b"after expiry"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {long}").parse().unwrap());
    c.publish(req).await.unwrap();
    // The lapsed socket's subscription ended with UNAUTHENTICATED.
    loop {
        let v = match lapsed_pushes.pop() {
            Some(v) if v.get("end").is_some() => v,
            _ => recv(&mut lapsed).await,
        };
        if let Some(end) = v.get("end") {
            assert_eq!(
                (end["topic"].as_str(), end["code"].as_str()),
                (Some("t"), Some("UNAUTHENTICATED"))
            );
            break;
        }
    }
    // The refreshed one saw every frame exactly once, the new one included.
    while kept_pushes
        .iter()
        .filter(|p| p.get("frame").is_some())
        .count()
        < 3
    {
        kept_pushes.push(recv(&mut kept).await);
    }
    let frames: Vec<(u64, u64)> = kept_pushes
        .iter()
        .filter_map(|p| p.get("frame"))
        .map(|f| (num(&f["seq_no"]), num(&f["offset"])))
        .collect();
    assert_eq!(frames, [(1, 0), (1, 1), (2, 2)]);
}

/// A request to `/v1/ws` that is not a WebSocket handshake gets the JSON error body every
/// other route answers with (it got axum's plain-text rejection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_to_the_websocket_route_gets_the_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.http.clone().unwrap();
    let r = tokio::task::spawn_blocking(move || {
        common::http::request(&base, "GET", "/v1/ws", &[], b"")
    })
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "INVALID_ARGUMENT");
}

/// At `--max-subscribers`, a subscription whose token expired resumes under the socket's
/// fresh token: the ended one gives its place to its successor. Before, it still held it
/// while the successor asked, and the feed ended with RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_subscription_resumes_at_the_subscriber_limit() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "k3y").unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--auth-jwt-secret-file",
            secret.to_str().unwrap(),
            "--max-subscribers",
            "1",
        ],
    );
    let minted = std::time::Instant::now();
    let short = common::tokens::token(b"k3y", &[">"], &[">"], false, Duration::from_secs(4));
    let long = common::tokens::token(b"k3y", &[">"], &[">"], false, Duration::from_secs(600));
    let mut ws = open(&server, &format!("?access_token={short}")).await;
    let mut pushes = Vec::new();
    send(&mut ws, json!({"id": 1, "subscribe": {"topic": "t"}})).await;
    assert!(reply(&mut ws, 1, &mut pushes).await.get("result").is_some());
    send(&mut ws, json!({"id": 2, "auth": {"token": long}})).await;
    assert!(reply(&mut ws, 2, &mut pushes).await.get("result").is_some());
    assert!(
        minted.elapsed() < Duration::from_secs(3),
        "the refresh came before the old token's expiry"
    );
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(minted.elapsed())).await;
    let mut c = server.client().await;
    let mut req = tonic::Request::new(common::req("t", 7, b"after expiry"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {long}").parse().unwrap());
    c.publish(req).await.unwrap();
    let pushed = loop {
        let v = match pushes.pop() {
            Some(v) => v,
            None => recv(&mut ws).await,
        };
        assert!(v.get("end").is_none(), "the subscription ended: {v}");
        if let Some(f) = v.get("frame") {
            break f.clone();
        }
    };
    assert_eq!(num(&pushed["seq_no"]), 7);
}

/// With auth on, a socket opened without a token must authenticate within 10 s: one that
/// sends nothing, or only a bad token, is told why and closed (1008); one that sent a good
/// `auth` stays. Before, an unauthenticated socket stayed open as long as it answered pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_without_a_good_token_is_closed_ten_seconds_after_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_auth(dir.path());
    let good = common::tokens::token(b"k3y", &[">"], &[">"], false, Duration::from_secs(600));
    let opened = std::time::Instant::now();
    let mut silent = open(&server, "").await;
    let mut bad = open(&server, "").await;
    let mut authed = open(&server, "").await;
    send(&mut bad, json!({"id": 1, "auth": {"token": "garbage"}})).await;
    assert_eq!(recv(&mut bad).await["error"]["code"], "UNAUTHENTICATED");
    send(&mut authed, json!({"id": 1, "auth": {"token": good}})).await;
    assert!(recv(&mut authed).await.get("result").is_some());
    for ws in [&mut silent, &mut bad] {
        let v = recv(ws).await;
        assert_eq!(v["error"]["code"], "UNAUTHENTICATED", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("within 10 s"), "{message}");
        let closed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed after the error");
        match closed {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
            other => panic!("expected a close frame, got {other:?}"),
        }
        let waited = opened.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(25),
            "closed after {waited:?}"
        );
    }
    // The socket that authenticated in time works past the deadline.
    send(
        &mut authed,
        json!({"id": 2, "publish": {"topic": "t", "seq_no": 1, "text": "x"}}),
    )
    .await;
    let v = recv(&mut authed).await;
    assert!(v.get("result").is_some(), "{v}");
    assert!(opened.elapsed() >= Duration::from_secs(10));
}

/// A peer without a token that floods the socket with requests and never reads their
/// replies (so the server waits to queue them) is cut off at the 10 s deadline too: the
/// server's descriptor for it is closed within 20 s of opening, not at the silence rule's
/// minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_without_a_token_that_never_reads_is_cut_off_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_auth(dir.path());
    let pid = server.child.id();
    let fds = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let opened = std::time::Instant::now();
    let ws = open(&server, "").await;
    let (mut sink, stream) = ws.split();
    let flood = tokio::spawn(async move {
        // 300,000 requests, each answered with an error of about 170 bytes (about 50 MB of
        // replies, past the socket buffers and the 8 MiB reply budget); never read.
        for _ in 0..300_000 {
            let msg = json!({"id": 1, "subscribe": {"topic": "t"}}).to_string();
            if sink.send(Message::text(msg)).await.is_err() {
                break;
            }
        }
    });
    assert!(fds() > before, "the socket is open on the server");
    let closed_by = opened + Duration::from_secs(20);
    while fds() > before {
        assert!(
            std::time::Instant::now() < closed_by,
            "the server still holds the socket {:?} after it opened",
            opened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = opened.elapsed();
    assert!(held >= Duration::from_secs(10), "closed after {held:?}");
    eprintln!("the flooding socket was closed {held:?} after it opened");
    flood.abort();
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_cost_bounded_memory_and_slow_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "interval:50"]);
    let http = server.http.clone().unwrap();
    let mut c = server.client().await;
    publish(&mut c, "firehose", 0, b"first").await;
    let baseline = server.rss_anon();

    // A WebSocket that subscribes, then never reads again.
    let mut stalled_ws = open(&server, "").await;
    send(
        &mut stalled_ws,
        json!({"id": 1, "subscribe": {"topic": "firehose"}}),
    )
    .await;
    // An SSE stream whose reader never reads after the headers.
    let stalled_sse = {
        let http = http.clone();
        tokio::task::spawn_blocking(move || {
            common::sse::open(&http, "/v1/topics/firehose/events", &[])
                .ok()
                .unwrap()
        })
        .await
        .unwrap()
    };
    // A gRPC subscriber that reads everything, counting.
    let sub = common::subscribe(&mut c, common::sub_req("firehose", 0))
        .await
        .unwrap();
    let frames = 800u64;
    let reader = tokio::spawn(async move {
        let mut stream = sub.stream;
        let got = common::take(&mut stream, frames as usize + 1, Duration::from_secs(180)).await;
        got.iter().map(|f| f.offset).collect::<Vec<_>>()
    });

    // 200 MiB in 256 KiB frames.
    let payload = vec![7u8; 256 << 10];
    let mut peak = 0;
    common::publish_in_batches(&mut c, "firehose", 1, frames, &payload, 16, || {
        peak = peak.max(server.rss_anon());
    })
    .await;
    let offsets = tokio::time::timeout(Duration::from_secs(180), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        offsets,
        (0..=frames).collect::<Vec<_>>(),
        "the reading subscriber got every frame"
    );
    peak = peak.max(server.rss_anon());
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "RssAnon baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    // 200 MiB went by; two stalled readers may hold a socket budget, a batch each and
    // the kernel's buffers, never the backlog.
    assert!(
        grew < 96 << 20,
        "anonymous memory grew by {} MiB",
        grew >> 20
    );

    // The stalled socket reads again: its frames come in order, from the start, no gap.
    let mut pushes = Vec::new();
    let r = reply(&mut stalled_ws, 1, &mut pushes).await;
    assert!(r.get("result").is_some(), "{r}");
    while pushes.len() < 40 {
        pushes.push(recv(&mut stalled_ws).await);
    }
    let got: Vec<u64> = pushes.iter().map(|p| num(&p["frame"]["offset"])).collect();
    assert_eq!(got, (0..40).collect::<Vec<_>>());
    drop(stalled_sse);
}

/// A socket that asks for 64 History pages of 4 MiB each and never reads the replies
/// holds a bounded few of them in the server, not all 64 (each as a page, its JSON value
/// and its text: about 700 MB before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_asked_for_and_never_read_cost_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    // 15 binary frames of 256 KiB: one full page (5.2 MB of base64 as JSON; a 16th would
    // take the page past 4 MiB as protobuf).
    let payload: Vec<u8> = (0..256 << 10).map(|i| (i * 7 % 256) as u8).collect();
    for seq in 0..15 {
        publish(&mut c, "big", seq, &payload).await;
    }
    let baseline = server.rss_anon();
    let mut ws = open(&server, "").await;
    for id in 0..64 {
        send(
            &mut ws,
            json!({"id": id, "history": {"topic": "big", "limit": 10000}}),
        )
        .await;
    }
    // The server builds what it may and waits on the unread socket.
    server.assert_anon_growth_under(baseline, 64 << 20).await;
    // Read again, the socket gets all 64 pages, whole.
    let mut pages = 0;
    while pages < 64 {
        let v = recv(&mut ws).await;
        let frames = v["result"]["frames"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"));
        assert_eq!(frames.len(), 15);
        pages += 1;
    }
}

/// The server's History page budget holds for pages asked for over WebSocket too, across
/// sockets: 10 sockets that each ask for 2 pages of a 4 MiB frame of control bytes (about
/// 30 MB of JSON each) and never read hold at most the budget (128 MiB), not 600 MB;
/// meanwhile a History page over HTTP is refused 429, and room comes back as they close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_never_read_on_many_sockets_hold_the_servers_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = server.http.clone().unwrap();
    let mut c = server.client().await;
    publish(&mut c, "ctl", 1, &vec![1u8; (4 << 20) - 1024]).await;
    let baseline = server.rss_anon();
    let mut sockets = Vec::new();
    for _ in 0..10 {
        let mut ws = open(&server, "").await;
        for id in 0..2 {
            send(&mut ws, json!({"id": id, "history": {"topic": "ctl"}})).await;
        }
        sockets.push(ws);
    }
    server.assert_anon_growth_under(baseline, 300 << 20).await;
    let busy = common::http::get(&base, "/v1/topics/ctl/history").await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    drop(sockets);
    let mut status = 0;
    for _ in 0..50 {
        let page = common::http::get(&base, "/v1/topics/ctl/history").await;
        status = page.status;
        if status == 200 {
            assert_eq!(page.json()["frames"].as_array().unwrap().len(), 1);
            break;
        }
        assert_eq!(status, 429, "{}", page.text());
    }
    assert_eq!(status, 200, "the room of closed sockets' pages came back");
}

/// Payloads of every shape: empty, binary at the largest size accepted, and text full of
/// what JSON must escape.
fn shapes() -> Vec<Vec<u8>> {
    let max = 4 * 1024 * 1024 - 1024;
    let binary: Vec<u8> = (0..max).map(|i| (i * 7 % 256) as u8).collect();
    let text = "quote \" backslash \\ newline \n tab \t bell \u{7} é 漢字 🚀 "
        .repeat(20_000)
        .into_bytes();
    vec![Vec::new(), binary, text, b"x".to_vec()]
}

/// Checks one frame's JSON against the payload it must carry.
fn check_frame(v: &Value, want: &[u8], live: bool, how: &str) {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str().unwrap())
        .unwrap();
    assert!(
        payload == want,
        "{how}: payload of {} bytes differs",
        want.len()
    );
    match std::str::from_utf8(want) {
        Ok(text) => assert_eq!(v["text"].as_str(), Some(text), "{how}: text"),
        Err(_) => assert!(v.get("text").is_none(), "{how}: no text for binary"),
    }
    assert_eq!(v["live"].as_bool(), Some(live), "{how}: live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_every_size_reach_sse_and_websocket_whole_replayed_and_live() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let shapes = shapes();
    // Replayed frames are written per subscriber; live ones once, shared by every
    // subscriber: both paths, every shape.
    for (i, p) in shapes.iter().enumerate() {
        publish(&mut c, "shapes", i as u64, p).await;
    }
    let mut ws = open(&server, "").await;
    let mut ws2 = open(&server, "").await;
    for w in [&mut ws, &mut ws2] {
        send(w, json!({"id": 1, "subscribe": {"topic": "shapes"}})).await;
        let r = reply(w, 1, &mut Vec::new()).await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let base = server.http.clone().unwrap();
    let n = shapes.len();
    let sse = tokio::task::spawn_blocking(move || {
        let mut s = common::sse::open(&base, "/v1/topics/shapes/events", &[]).unwrap();
        let mut out = Vec::new();
        while out.len() < 2 * n {
            let e = s.next_event().expect("the stream goes on");
            if e.event == "frame" {
                out.push(e.json());
            }
        }
        out
    });
    // Live frames once both kinds of reader are in.
    common::wait_subscribers(&mut c, "shapes", 3, Duration::from_secs(20)).await;
    for (i, p) in shapes.iter().enumerate() {
        publish(&mut c, "shapes", (n + i) as u64, p).await;
    }
    for (k, w) in [&mut ws, &mut ws2].into_iter().enumerate() {
        for round in 0..2 {
            for (i, p) in shapes.iter().enumerate() {
                let v = recv(w).await;
                let f = &v["frame"];
                assert_eq!(num(&f["seq_no"]), (round * n + i) as u64);
                check_frame(f, p, round == 1, &format!("ws {k} round {round} shape {i}"));
            }
        }
    }
    let events = tokio::time::timeout(Duration::from_secs(60), sse)
        .await
        .unwrap()
        .unwrap();
    for (j, v) in events.iter().enumerate() {
        let (round, i) = (j / n, j % n);
        assert_eq!(num(&v["seq_no"]), j as u64);
        check_frame(
            v,
            &shapes[i],
            round == 1,
            &format!("sse round {round} shape {i}"),
        );
    }
}

/// A payload of `--max-frame-bytes` fits a WebSocket message and a broadcast body however
/// its JSON writes it: here as text of control characters, each escaped as `\u0007` (six
/// bytes per byte). Before, both took twice the payload, so such a publish tore the whole
/// socket down (every subscription on it ended with no word) and such a broadcast was 400.
/// A message over the socket's limit is answered with an error naming it before the socket
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_largest_frame_fits_however_its_json_is_escaped() {
    const MAX: usize = 65_536;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-frame-bytes", "65536"]);
    let text = "\u{7}".repeat(MAX);
    let publish = json!({"id": 1, "publish": {"topic": "esc", "seq_no": 1, "text": text}});
    assert!(publish.to_string().len() > 6 * MAX, "every byte escaped");
    let mut ws = open(&server, "").await;
    send(&mut ws, json!({"id": 0, "subscribe": {"topic": "esc"}})).await;
    let mut pushes = Vec::new();
    assert!(reply(&mut ws, 0, &mut pushes).await.get("result").is_some());
    send(&mut ws, publish).await;
    let ack = reply(&mut ws, 1, &mut pushes).await;
    assert_eq!(ack["result"]["offset"], "0", "{ack}");

    let body = json!({"topics": ["esc"], "seq_no": 2, "text": text}).to_string();
    let http = server.http.clone().unwrap();
    let r = tokio::task::spawn_blocking(move || {
        common::http::request(&http, "POST", "/v1/broadcast", &[], body.as_bytes())
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // Both frames reach the subscription on the same socket, whole.
    while pushes.iter().filter(|p| p.get("frame").is_some()).count() < 2 {
        pushes.push(recv(&mut ws).await);
    }
    for f in pushes.iter().filter_map(|p| p.get("frame")) {
        assert_eq!(f["text"].as_str().map(str::len), Some(MAX));
    }

    // Over the limit (6 × 64 KiB + 64 KiB): an error naming it, then the socket closes.
    let huge =
        json!({"id": 2, "publish": {"topic": "esc", "seq_no": 3, "text": "x".repeat(8 * MAX)}});
    send(&mut ws, huge).await;
    refused_as_too_big(&mut ws, "over this socket's limit").await;
    let mut c = server.client().await;
    assert_eq!(common::read_log(&mut c, "esc").await.len(), 2);
}

/// At shutdown every subscription of a socket ends with its `end` message (UNAVAILABLE),
/// before the close: a browser knows to reconnect elsewhere, and where from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_subscription_with_its_end_message_before_the_close() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::start(dir.path(), &[]);
        let mut c = server.client().await;
        for t in ["a", "b", "c"] {
            publish(&mut c, t, 1, b"x").await;
        }
        let mut ws = open(&server, "").await;
        let mut pushes = Vec::new();
        for (id, t) in [(1, "a"), (2, "b"), (3, "c")] {
            send(&mut ws, json!({"id": id, "subscribe": {"topic": t}})).await;
            assert!(reply(&mut ws, id, &mut pushes)
                .await
                .get("result")
                .is_some());
        }
        server.sigterm();
        let mut ended = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if let Some(end) = v.get("end") {
                        assert_eq!(end["code"], "UNAVAILABLE", "{v}");
                        ended.push(end["topic"].as_str().unwrap().to_string());
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
        ended.sort();
        assert_eq!(ended, ["a", "b", "c"], "round {round}");
        assert!(server.wait_exit(Duration::from_secs(20)).unwrap().success());
    }
}

/// Frames in the topic of [`a_socket_the_server_cannot_write_to`].
const BACKLOG: usize = 192;

/// Publishes about 12 MB to topic `big` (more than a loopback connection with a small
/// receive window holds), then connects to the HTTP door with a 16 KiB receive buffer
/// (whatever the host's TCP buffer limits).
async fn a_backlog_and_a_narrow_connection(server: &Server) -> tokio::net::TcpStream {
    let mut c = server.client().await;
    let payload = vec![b'x'; 64 << 10];
    common::publish_in_batches(&mut c, "big", 0, BACKLOG as u64, &payload, 32, || {}).await;
    drop(c);
    let http = server.http.clone().unwrap();
    let addr: std::net::SocketAddr = http.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A socket subscribed to [`a_backlog_and_a_narrow_connection`]'s topic, whose peer stops
/// reading once subscribed: after this the server's writer has filled the socket and waits
/// on it.
async fn a_socket_the_server_cannot_write_to(server: &Server) -> Socket {
    let stream = a_backlog_and_a_narrow_connection(server).await;
    let url = format!("ws://{}/v1/ws", stream.peer_addr().unwrap());
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut pushes = Vec::new();
    send(&mut ws, json!({"id": 1, "subscribe": {"topic": "big"}})).await;
    assert!(reply(&mut ws, 1, &mut pushes).await.get("result").is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws
}

/// What a socket receives until it closes or fails (within 20 s), reading with a pause of
/// `pause` after every ten messages: its pushes, its `end` message, whether a close frame
/// came, and the error, if it failed.
async fn read_to_the_close(
    ws: &mut Socket,
    pause: Duration,
) -> (usize, Option<Value>, bool, Option<String>) {
    let (mut pushes, mut end) = (0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for n in 1.. {
        match tokio::time::timeout_at(deadline, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str().starts_with("{\"end\"") => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                end = Some(v["end"].clone());
            }
            Some(Ok(Message::Text(_))) => pushes += 1,
            Some(Ok(Message::Close(_))) => return (pushes, end, true, None),
            None => return (pushes, end, false, None),
            Some(Err(e)) => return (pushes, end, false, Some(e.to_string())),
            Some(Ok(_)) => {}
        }
        if n % 10 == 0 {
            tokio::time::sleep(pause).await;
        }
    }
    unreachable!()
}

/// A socket whose peer is slow to read at shutdown still gets every subscription's `end`
/// and the close: the frames its subscription still held are dropped for the `end`, and the
/// server waits for its WebSocket sessions (within the grace period) before it exits,
/// instead of exiting while a session's writer waits on a full socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_slow_to_read_at_shutdown_still_gets_its_end_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut ws = a_socket_the_server_cannot_write_to(&server).await;
    server.sigterm();
    // Longer than a server that does not wait for its sessions takes to exit (one did
    // within 1 ms), and than a second (a session that gives up on its peer a second after
    // the signal would be caught), well within the grace period (4 s); then the peer
    // reads, slowly: 150 ms after every ten messages.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pause = Duration::from_millis(150);
    let (pushes, end, closed, failed) = read_to_the_close(&mut ws, pause).await;
    assert_eq!(failed, None, "after {pushes} pushes");
    let end =
        end.unwrap_or_else(|| panic!("no end message in the {pushes} pushes before the close"));
    assert_eq!(end["topic"], "big", "{end}");
    assert_eq!(end["code"], "UNAVAILABLE", "{end}");
    assert!(closed, "a close frame after the end message");
    // The frames the subscription still held at the signal (its first fill takes up to
    // 256, so all of them) were dropped for the `end`.
    assert!(
        pushes < BACKLOG,
        "{pushes} pushes: every frame went out before the end"
    );
    assert!(server.wait_exit(Duration::from_secs(20)).unwrap().success());
}

/// A socket whose peer never reads holds up shutdown no longer than the grace period (4 s,
/// not the minute of silence after which a session gives up on its peer), and the log says
/// so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_holds_up_shutdown_no_longer_than_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let mut ws = a_socket_the_server_cannot_write_to(&server).await;
    server.sigterm();
    let signalled = std::time::Instant::now();
    assert!(server.wait_exit(Duration::from_secs(20)).unwrap().success());
    // The grace period and the closing of the logs, not the session's minute of silence.
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "{:?}",
        signalled.elapsed()
    );
    // The log as far as the exit (its reader thread takes what the pipe still holds).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = server.log_text();
    assert!(log.contains("all logs synced and closed"), "{log}");
    assert!(
        log.contains("websocket sessions still open after the grace period"),
        "{log}"
    );
    // The premise: the writer was held up (the `end` never got past what it waited on).
    let (pushes, end, _, _) = read_to_the_close(&mut ws, Duration::ZERO).await;
    assert!(pushes < BACKLOG, "{pushes} pushes");
    assert_eq!(end, None, "the writer was not held up");
}

/// The same for an event stream: a client that reads slowly at shutdown gets its `error`
/// event (UNAVAILABLE) soon after the signal, without the frames its subscription still
/// held, and the stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_slow_to_read_at_shutdown_gets_its_error_event_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let stream = a_backlog_and_a_narrow_connection(&server)
        .await
        .into_std()
        .unwrap();
    stream.set_nonblocking(false).unwrap();
    let http = server.http.clone().unwrap();
    let mut events = tokio::task::spawn_blocking(move || {
        common::sse::try_open_on(stream, &http, "/v1/topics/big/events", &[])
            .unwrap()
            .unwrap()
    })
    .await
    .unwrap();
    // The client stops reading: the server fills the connection and waits on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.sigterm();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (frames, error) = tokio::task::spawn_blocking(move || {
        let mut frames = 0;
        for n in 1.. {
            match events.next_event() {
                Some(e) if e.event == "frame" => frames += 1,
                Some(e) if e.event == "error" => return (frames, Some(e.json())),
                Some(_) => {}
                None => return (frames, None),
            }
            if n % 10 == 0 {
                std::thread::sleep(Duration::from_millis(150));
            }
        }
        unreachable!()
    })
    .await
    .unwrap();
    let error = error.unwrap_or_else(|| panic!("no error event after {frames} frames"));
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    // The frames the subscription still held at the signal were dropped for the error.
    assert!(
        frames < BACKLOG,
        "{frames} frames: every frame went out before the error"
    );
    assert!(server.wait_exit(Duration::from_secs(20)).unwrap().success());
}

/// One masked client text frame (RFC 6455) carrying `text` (under 126 bytes).
fn masked_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// WebSocket over HTTP/2 (RFC 8441): the door offers extended CONNECT in its settings, so a
/// browser that speaks HTTP/2 to it (Firefox over TLS) opens `/v1/ws` with CONNECT, and the
/// socket works as over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_over_http2_extended_connect_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let at = server
        .http
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    let tcp = tokio::net::TcpStream::connect(&at).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // Known once the server's SETTINGS are in.
    let mut waited = 0;
    while !client.is_extended_connect_protocol_enabled() && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(client.is_extended_connect_protocol_enabled());
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{at}/v1/ws"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from_static("websocket"))
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("no answer to the CONNECT")
        .unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    let publish = r#"{"id":1,"publish":{"topic":"h2","seq_no":"5","text":"over h2"}}"#;
    send.send_data(masked_text_frame(publish).into(), false)
        .unwrap();
    // The server's frames are unmasked; the reply is the first text frame.
    let mut body = response.into_body();
    let mut got = Vec::new();
    let reply = loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("no reply on the socket")
            .expect("the socket ended")
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
        if got.len() >= 2 && got.len() >= 2 + (got[1] & 0x7f) as usize {
            assert_eq!(got[0], 0x81, "not a text frame: {got:?}");
            break String::from_utf8(got[2..2 + (got[1] & 0x7f) as usize].to_vec()).unwrap();
        }
    };
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["result"]["offset"], "0", "{reply}");
}

/// With auth on, a socket opened without a token takes messages of at most 64 KiB for its
/// whole life: an unauthenticated peer cannot make the server buffer a 25 MB message. One
/// opened with its token takes the full size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_opened_without_a_token_takes_only_small_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = with_auth(dir.path());
    let good = common::tokens::token(b"k3y", &[">"], &[">"], false, Duration::from_secs(600));
    let big = "x".repeat(100 << 10);

    let mut authed = open(&server, &format!("?access_token={good}")).await;
    send(
        &mut authed,
        json!({"id": 1, "publish": {"topic": "big", "seq_no": "1", "text": big}}),
    )
    .await;
    let ok = recv(&mut authed).await;
    assert_eq!(ok["result"]["offset"], "0", "{ok}");

    let mut bare = open(&server, "").await;
    send(
        &mut bare,
        json!({"id": 1, "publish": {"topic": "big", "seq_no": "2", "text": big}}),
    )
    .await;
    refused_as_too_big(&mut bare, "64 KiB: it opened without a token").await;
}
