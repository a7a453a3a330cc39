//! The HTTP door against the real binary: REST publish and topics with API.md's status
//! table and proto3-JSON bodies, `/healthz`, and every security row over HTTP (tokens in
//! the header or `?access_token=`, refusals that write nothing and create nothing, counted
//! in `rejected_requests_total`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::http::{get, metric, request, with_token};
use common::{sub_req, subscribe, take, Server};

fn http(s: &Server) -> String {
    s.http.clone().expect("the HTTP door listens")
}

fn post(base: &str, path: &str, body: &[u8]) -> common::http::Response {
    request(base, "POST", path, &[], body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_publishes_and_manages_topics_with_the_status_table() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-frame-bytes", "1024"]);
    let base = http(&server);

    let health = request(&base, "GET", "/healthz", &[], b"");
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    // A single node serves reads while it runs.
    let ready = request(&base, "GET", "/readyz", &[], b"");
    assert_eq!((ready.status, ready.text().as_str()), (200, "ok\n"));

    // Publish: the ack in proto3 JSON (64-bit figures as strings).
    let r = post(&base, "/v1/topics/chat/frames?seq_no=1", b"hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let ack = r.json();
    assert_eq!(ack["offset"], "0");
    assert_eq!(ack["duplicate"], false);
    assert!(ack["timestamp"].as_str().unwrap().parse::<i64>().unwrap() > 0);

    // The same Idempotency-Key twice: one frame, the first ack again.
    let keyed = |seq: u64| {
        request(
            &base,
            "POST",
            &format!("/v1/topics/chat/frames?seq_no={seq}&timestamp=1700000000000000000"),
            &[("Idempotency-Key", "order-17")],
            b"keyed",
        )
    };
    let first = keyed(2).json();
    let again = keyed(2).json();
    assert_eq!(first["offset"], "1");
    assert_eq!(first["timestamp"], "1700000000000000000");
    assert_eq!(again["offset"], "1");
    assert_eq!(again["duplicate"], true);

    // 0 bytes and exactly --max-frame-bytes are frames; one byte more is 413.
    assert_eq!(
        post(&base, "/v1/topics/chat/frames?seq_no=3", b"").status,
        200
    );
    let max = vec![b'x'; 1024];
    assert_eq!(
        post(&base, "/v1/topics/chat/frames?seq_no=4", &max).status,
        200
    );
    let over = post(&base, "/v1/topics/chat/frames?seq_no=5", &[b'x'; 1025]);
    assert_eq!(over.status, 413);
    assert_eq!(over.json()["code"], "INVALID_ARGUMENT");
    assert!(over.json()["message"]
        .as_str()
        .unwrap()
        .contains("--max-frame-bytes 1024"));

    // Bad input: 400 with the error body, nothing written.
    for path in [
        "/v1/topics/chat/frames",
        "/v1/topics/chat/frames?seq_no=abc",
        "/v1/topics/chat/frames?seq_no=6&timestamp=-1",
        "/v1/topics/bad%24name/frames?seq_no=6",
    ] {
        let r = post(&base, path, b"no");
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["code"], "INVALID_ARGUMENT", "{path}");
    }

    // What HTTP wrote, read back over gRPC: four frames, in order, bytes intact.
    let mut c = server.client().await;
    let mut sub = subscribe(&mut c, sub_req("chat", 0)).await.unwrap();
    assert_eq!(sub.snapshot, 4);
    let frames = take(&mut sub.stream, 4, Duration::from_secs(10)).await;
    let payloads: Vec<&[u8]> = frames.iter().map(|f| f.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"hello"[..], b"keyed", b"", &max[..]]);

    // Topics: list, create (idempotent with the same settings, 409 with others), delete.
    let list = request(&base, "GET", "/v1/topics", &[], b"").json();
    let chat = &list["topics"][0];
    assert_eq!(chat["name"], "chat");
    assert_eq!(chat["frames"], "4");
    assert_eq!(chat["next_offset"], "4");
    assert_eq!(chat["max_seq_no"], "4");
    assert_eq!(chat["subscribers"], 1);
    let settings = br#"{"retention_max_bytes":"1048576","retention_max_age_seconds":3600}"#;
    let made = request(&base, "PUT", "/v1/topics/orders", &[], settings);
    assert_eq!(made.status, 200, "{}", made.text());
    assert_eq!(made.json()["name"], "orders");
    assert_eq!(
        request(&base, "PUT", "/v1/topics/orders", &[], settings).status,
        200
    );
    let clash = request(&base, "PUT", "/v1/topics/orders", &[], b"");
    assert_eq!(
        (clash.status, clash.json()["code"].as_str()),
        (409, Some("ALREADY_EXISTS"))
    );
    let garbled = request(&base, "PUT", "/v1/topics/other", &[], b"{retention");
    assert_eq!(garbled.status, 400);
    let gone = request(&base, "DELETE", "/v1/topics/orders", &[], b"");
    assert_eq!((gone.status, gone.body.len()), (204, 0));
    let missing = request(&base, "DELETE", "/v1/topics/orders", &[], b"");
    assert_eq!(
        (missing.status, missing.json()["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let names: Vec<String> = request(&base, "GET", "/v1/topics", &[], b"").json()["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["chat"], "no refused request created a topic");
    let nowhere = request(&base, "GET", "/v2/anything", &[], b"");
    assert_eq!(
        (nowhere.status, nowhere.json()["code"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    // A known path with a method it does not take: 405 with the error body (and `Allow`).
    for (method, path) in [
        ("POST", "/v1/topics"),
        ("GET", "/v1/topics/chat"),
        ("DELETE", "/v1/topics/chat/frames"),
    ] {
        let r = request(&base, method, path, &[], b"");
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (405, Some("UNIMPLEMENTED")),
            "{method} {path}: {}",
            r.text()
        );
        assert!(
            r.json()["message"].as_str().unwrap().contains(method),
            "{}",
            r.text()
        );
        assert!(r.header("allow").is_some(), "{:?}", r.headers);
    }

    // Every refusal above was counted, by code (a path or method the door does not have is
    // not a request to the broker: the 404 and 405s are not).
    let m = request(&base, "GET", "/metrics", &[], b"").text();
    let rejected = |code: &str| {
        metric(
            &m,
            &format!("framecast_rejected_requests_total{{code=\"{code}\"}}"),
        )
    };
    // 413, four 400s on publish, the garbled settings.
    assert_eq!(rejected("invalid_argument"), Some(6.0));
    assert_eq!(rejected("already_exists"), Some(1.0));
    assert_eq!(rejected("not_found"), Some(1.0));
    assert_eq!(
        metric(&m, "framecast_published_frames_total{topic=\"chat\"}"),
        Some(4.0)
    );
}

const SECRET: &[u8] = b"http-test-secret";

fn token(publish: &[&str], subscribe: &[&str], admin: bool, ttl: Duration) -> String {
    common::tokens::token(SECRET, publish, subscribe, admin, ttl)
}

#[test]
fn every_security_row_holds_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--auth-jwt-secret-file", secret.to_str().unwrap()],
    );
    let base = http(&server);
    let hour = Duration::from_secs(3600);
    let admin = token(&[], &[], true, hour);
    let chat = token(&["chat.*"], &["chat.>"], false, hour);
    let reader = token(&[], &["chat.>"], false, hour);
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "late", "exp": past, "publish": [">"], "admin": true}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    // Signed with another secret.
    let forged = common::tokens::token(b"not-the-secret", &[">"], &[">"], true, hour);

    // /healthz is open.
    assert_eq!(request(&base, "GET", "/healthz", &[], b"").status, 200);

    // No token, garbage, a forged signature, an expired token: 401 on every route.
    for (method, path) in [
        ("GET", "/v1/topics"),
        ("POST", "/v1/topics/chat.a/frames?seq_no=1"),
        ("PUT", "/v1/topics/chat.a"),
        ("DELETE", "/v1/topics/chat.a"),
        ("GET", "/metrics"),
    ] {
        let none = request(&base, method, path, &[], b"x");
        assert_eq!(none.status, 401, "{method} {path}: {}", none.text());
        assert_eq!(none.json()["code"], "UNAUTHENTICATED");
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        for bad in ["garbage", forged.as_str(), expired.as_str()] {
            let r = with_token(&base, method, path, bad, b"x");
            assert_eq!(
                r.status,
                401,
                "{method} {path} with {bad:.12}: {}",
                r.text()
            );
        }
    }

    // Allowed: publish by header and by ?access_token=.
    let ok = with_token(
        &base,
        "POST",
        "/v1/topics/chat.a/frames?seq_no=1",
        &chat,
        b"one",
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let by_query = post(
        &base,
        &format!("/v1/topics/chat.a/frames?seq_no=2&access_token={chat}"),
        b"two",
    );
    assert_eq!(by_query.status, 200, "{}", by_query.text());

    // Denied: another topic, a deeper one than `*` matches, a reader publishing,
    // non-admins managing topics or reading /metrics.
    let denied = [
        with_token(
            &base,
            "POST",
            "/v1/topics/news/frames?seq_no=1",
            &chat,
            b"x",
        ),
        with_token(
            &base,
            "POST",
            "/v1/topics/chat.a.b/frames?seq_no=1",
            &chat,
            b"x",
        ),
        with_token(
            &base,
            "POST",
            "/v1/topics/chat.a/frames?seq_no=3",
            &reader,
            b"x",
        ),
        with_token(&base, "PUT", "/v1/topics/chat.b", &chat, b""),
        with_token(&base, "DELETE", "/v1/topics/chat.a", &chat, b""),
        with_token(&base, "GET", "/metrics", &chat, b""),
    ];
    for r in &denied {
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["code"], "PERMISSION_DENIED");
    }
    // A caller who may not publish there is refused before its body is read: 403 even for
    // a body over --max-frame-bytes (it was read, or refused 413 by its length, first).
    let big = vec![b'x'; 5 << 20];
    for (path, who) in [
        ("/v1/topics/chat.a/frames?seq_no=4", &reader),
        ("/v1/broadcast", &reader),
    ] {
        let r = with_token(&base, "POST", path, who, &big);
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(r.json()["code"], "PERMISSION_DENIED");
    }

    // Nothing was written or created by a refusal; ListTopics is filtered.
    let list = |t: &str| -> Vec<(String, String)> {
        with_token(&base, "GET", "/v1/topics", t, b"").json()["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["frames"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(list(&admin), [("chat.a".to_string(), "2".to_string())]);
    let outsider = token(&["news"], &["news"], false, hour);
    assert!(list(&outsider).is_empty(), "a token sees only its topics");

    // Admin manages topics and reads /metrics, where every refusal is counted.
    assert_eq!(
        with_token(&base, "PUT", "/v1/topics/chat.b", &admin, b"").status,
        200
    );
    assert_eq!(
        with_token(&base, "DELETE", "/v1/topics/chat.b", &admin, b"").status,
        204
    );
    // OpenMetrics to a scraper that asks for it, as Prometheus does; the Prometheus text
    // format (0.0.4) to one that does not: the same samples.
    let auth = format!("Bearer {admin}");
    let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
    let open = request(
        &base,
        "GET",
        "/metrics",
        &[("Authorization", &auth), ("Accept", accept)],
        b"",
    );
    assert_eq!(open.status, 200);
    assert!(open
        .header("content-type")
        .unwrap()
        .starts_with("application/openmetrics-text"));
    assert!(open.text().ends_with("# EOF\n"));
    assert!(open
        .text()
        .contains("# TYPE framecast_rejected_requests counter\n"));
    let m = with_token(&base, "GET", "/metrics", &admin, b"");
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = m.text();
    assert!(!m.contains("# EOF"), "{m}");
    assert!(m.contains("# TYPE framecast_rejected_requests_total counter\n"));
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(samples(&m), samples(&open.text()));
    // A single node is a cluster of one.
    for state in ["online", "in_sync"] {
        let series = format!("framecast_cluster_nodes{{state=\"{state}\"}}");
        assert_eq!(metric(&m, &series), Some(1.0), "{state}");
    }
    // 5 routes x (no token + 3 bad tokens).
    assert_eq!(
        metric(
            &m,
            "framecast_rejected_requests_total{code=\"unauthenticated\"}"
        ),
        Some(20.0)
    );
    assert_eq!(
        metric(
            &m,
            "framecast_rejected_requests_total{code=\"permission_denied\"}"
        ),
        // The 6 denied, and the 2 refused before their bodies were read: each once.
        Some(8.0)
    );
    drop(server);

    // --metrics-public: a scraper needs no token, the API still does.
    let open = Server::start(
        &dir.path().join("data2"),
        &[
            "--auth-jwt-secret-file",
            secret.to_str().unwrap(),
            "--metrics-public",
        ],
    );
    let base = http(&open);
    assert_eq!(request(&base, "GET", "/metrics", &[], b"").status, 200);
    assert_eq!(request(&base, "GET", "/v1/topics", &[], b"").status, 401);
}

/// A body sent without `Content-Length` (chunked) is bounded while it is read: over
/// `--max-frame-bytes` it is 413 like a declared one, for a publish and a broadcast alike;
/// within it, it is published whole. A broadcast declared over its bound is 413 unread.
#[test]
fn a_chunked_body_over_the_limit_is_413_and_one_within_it_is_published() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-frame-bytes", "1024"]);
    let base = http(&server);
    let host = base.trim_start_matches("http://").to_string();
    let chunked = |path: &str, body: &[u8]| -> String {
        let mut s = std::net::TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for part in body.chunks(500) {
            req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            req.extend_from_slice(part);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        // The server may answer and close before reading all of it.
        let _ = s.write_all(&req);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let answer = chunked("/v1/topics/c/frames?seq_no=1", &[b'x'; 2000]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("INVALID_ARGUMENT"), "{answer}");
    let answer = chunked("/v1/topics/c/frames?seq_no=2", &[b'y'; 1000]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A broadcast body over 6 x the limit + 2 MiB holds a payload over it.
    let text = "z".repeat(3 << 20);
    let body = format!("{{\"topics\":[\"c\"],\"seq_no\":3,\"text\":\"{text}\"}}");
    let answer = chunked("/v1/broadcast", body.as_bytes());
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    // The same body with its length declared: refused before it is read, then drained, so
    // the client reads the 413 instead of a reset.
    let r = request(&base, "POST", "/v1/broadcast", &[], body.as_bytes());
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (413, Some("INVALID_ARGUMENT")),
        "{}",
        r.text()
    );
    let page = request(&base, "GET", "/v1/topics/c/history", &[], b"").json();
    let frames = page["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 1, "{page}");
    assert_eq!(frames[0]["seq_no"], "2");
}

/// A connection that never finishes its request's headers (half a request, or an idle
/// kept-alive connection) is closed after the header timeout, giving back its
/// `--max-connections` slot: a client cannot hold the door by sending half a line.
#[test]
fn a_request_whose_headers_never_end_is_closed_and_frees_its_slot() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-connections", "1"]);
    let at = http(&server).trim_start_matches("http://").to_string();
    let mut half = std::net::TcpStream::connect(&at).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    half.set_read_timeout(Some(
        framecast::http::HEADER_READ_TIMEOUT + Duration::from_secs(15),
    ))
    .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    // Closed by the server (EOF, a reset, or a 408 and then EOF), not left open.
    loop {
        match half.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the half request was still open after {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    // Its slot is free again: the next connection is served.
    let health = request(&http(&server), "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
}

/// History pages asked for over HTTP and never read cost the server at most its page
/// budget (128 MiB), not a page each (a 4 MiB frame of control bytes is a 33 MB page
/// of JSON); past it a request waits, then gets 429, and room comes back as readers go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_never_read_hold_at_most_the_doors_budget() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    let at = base.trim_start_matches("http://").to_string();
    let mut c = server.client().await;
    common::publish(&mut c, "hp", 1, &vec![1u8; (4 << 20) - 1024]).await;
    let baseline = server.rss_anon();
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut conn = std::net::TcpStream::connect(&at).unwrap();
        conn.write_all(b"GET /v1/topics/hp/history HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        idle.push(conn);
    }
    server.assert_anon_growth_under(baseline, 400 << 20).await;
    // The budget is held by pages nobody reads: a reader is told to come back later.
    let busy = get(&base, "/v1/topics/hp/history").await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    assert_eq!(busy.json()["code"], "RESOURCE_EXHAUSTED");
    // The idle readers go: their pages' room comes back, and a reader gets its page.
    drop(idle);
    let page = get(&base, "/v1/topics/hp/history").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.json()["frames"].as_array().unwrap().len(), 1);
}

/// The page budget is the server's, for every door: gRPC History answers never read (the
/// encoded page waits in the server until the client's window lets it out) hold it too,
/// until their connection goes; meanwhile History over gRPC and over HTTP is refused
/// `RESOURCE_EXHAUSTED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_history_pages_never_read_hold_the_same_budget() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    let mut c = server.client().await;
    common::publish(&mut c, "hp", 1, &vec![7u8; (4 << 20) - 1024]).await;
    let baseline = server.rss_anon();
    // 100 History calls of a 4 MiB page on one HTTP/2 connection, whose bodies nobody reads.
    let tcp = tokio::net::TcpStream::connect(server.addr.trim_start_matches("http://"))
        .await
        .unwrap();
    // A connection window as large as a real client's (hyper's is 5 MB; grpc's grows):
    // only each stream's 64 KiB window holds the pages back.
    let (h2, connection): (h2::client::SendRequest<bytes::Bytes>, _) = h2::client::Builder::new()
        .initial_connection_window_size(1 << 30)
        .handshake(tcp)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let ask = framecast::proto::HistoryRequest {
        topic: "hp".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut message = vec![0u8];
    message.extend_from_slice(&(ask.len() as u32).to_be_bytes());
    message.extend_from_slice(&ask);
    let mut unread = Vec::new();
    for _ in 0..100 {
        let mut h2 = h2.clone().ready().await.unwrap();
        let call = http::Request::builder()
            .method("POST")
            .uri(format!("{}/framecast.v1.Broadcast/History", server.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (answer, mut send) = h2.send_request(call, false).unwrap();
        send.send_data(message.clone().into(), true).unwrap();
        unread.push(answer);
    }
    server.assert_anon_growth_under(baseline, 250 << 20).await;
    // The budget is held: a page is refused over gRPC and over HTTP (after a short wait).
    let refused = c
        .history(framecast::proto::HistoryRequest {
            topic: "hp".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    let busy = get(&base, "/v1/topics/hp/history").await;
    assert_eq!(busy.status, 429, "{}", busy.text());
    // The connection goes: its pages' room comes back.
    drop(unread);
    connection.abort();
    let _ = connection.await;
    let mut page = None;
    for _ in 0..50 {
        match c
            .history(framecast::proto::HistoryRequest {
                topic: "hp".into(),
                ..Default::default()
            })
            .await
        {
            Ok(p) => {
                page = Some(p.into_inner());
                break;
            }
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}"),
        }
    }
    let page = page.expect("the room of a closed connection's pages came back");
    assert_eq!(page.frames.len(), 1);
    assert_eq!(page.frames[0].payload.len(), (4 << 20) - 1024);
}
