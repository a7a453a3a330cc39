//! Other sites' pages against the real binary's HTTP door. A browser opens a WebSocket, and
//! sends a "simple" POST or an `EventSource`, to any origin without a CORS preflight; on a
//! server without `--auth-*` any site its user visits could otherwise subscribe and publish.
//! Such a request (it carries another origin in `Origin`) is refused 403 before it does
//! anything, creates nothing and writes nothing; the door's own pages, a proxy's
//! `X-Forwarded-Host`, a `--cors-origin` and clients that send no `Origin` are served.
#![allow(clippy::unwrap_used)]

mod common;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Error as WsError;

use common::http::{request, Response};
use common::Server;

const EVIL: &str = "https://evil.example";

/// A request a page could send: method, path, headers, body.
type Try = (
    &'static str,
    String,
    &'static [(&'static str, &'static str)],
    &'static [u8],
);

fn http(s: &Server) -> String {
    s.http.clone().expect("the HTTP door listens")
}

/// The topics the server holds, asked by a client that is not a browser.
fn topics(base: &str) -> Vec<String> {
    let r = request(base, "GET", "/v1/topics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// A WebSocket handshake to `/v1/ws` from a page of `origin`: the status it was answered.
async fn ws_status(base: &str, origin: &str) -> u16 {
    let mut req = format!("{}/v1/ws", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("handshake: {e}"),
    }
}

fn assert_refused(r: &Response, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    let body = r.json();
    assert_eq!(body["code"], "PERMISSION_DENIED", "{what}: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("--cors-origin https://evil.example"),
        "{what}: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_page_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    let own = base.clone();
    const EVIL_ONLY: &[(&str, &str)] = &[("Origin", EVIL)];

    // What a page of another site can send without a preflight: each refused, nothing made.
    let tries: [Try; 5] = [
        (
            "POST",
            "/v1/topics/a/frames?seq_no=1".into(),
            &[("Origin", EVIL), ("Content-Type", "text/plain")],
            b"from evil",
        ),
        (
            "POST",
            "/v1/broadcast".into(),
            &[("Origin", EVIL), ("Content-Type", "text/plain")],
            br#"{"topics":["b"],"text":"x"}"#,
        ),
        ("GET", "/v1/topics/c/events".into(), EVIL_ONLY, b""),
        ("GET", "/v1/topics/d/history".into(), EVIL_ONLY, b""),
        ("GET", "/v1/topics".into(), &[("Origin", "null")], b""),
    ];
    let b = base.clone();
    tokio::task::spawn_blocking(move || {
        for (method, path, headers, body) in tries {
            let r = request(&b, method, &path, headers, body);
            if headers.iter().any(|(_, v)| *v == "null") {
                assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
            } else {
                assert_refused(&r, &format!("{method} {path}"));
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ws_status(&base, EVIL).await, 403);
    assert_eq!(ws_status(&base, "http://localhost:1").await, 403);

    let b = base.clone();
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            topics(&b),
            Vec::<String>::new(),
            "a refused call made a topic"
        );

        // The door's own pages are served: publish and list.
        let r = request(
            &b,
            "POST",
            "/v1/topics/a/frames?seq_no=1",
            &[("Origin", &own), ("Content-Type", "text/plain")],
            b"from the console",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // As are pages behind a reverse proxy that names the site's host (at an address:
        // without --auth-*, a site at a DNS name needs --cors-origin, see below).
        let r = request(
            &b,
            "GET",
            "/v1/topics",
            &[
                ("Origin", "https://10.0.0.5:8443"),
                ("X-Forwarded-Host", "10.0.0.5:8443"),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(topics(&b), vec!["a".to_string()]);
        let r = request(&b, "GET", "/v1/topics/a/history", &[], b"");
        assert_eq!(r.json()["frames"].as_array().unwrap().len(), 1);
    })
    .await
    .unwrap();
    assert_eq!(ws_status(&base, &base).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_origin_lets_its_pages_in_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--cors-origin", "https://app.example"]);
    let base = http(&server);
    assert_eq!(ws_status(&base, "https://app.example").await, 101);
    assert_eq!(ws_status(&base, EVIL).await, 403);
    let b = base.clone();
    tokio::task::spawn_blocking(move || {
        let r = request(
            &b,
            "POST",
            "/v1/topics/a/frames?seq_no=1",
            &[
                ("Origin", "https://app.example"),
                ("Content-Type", "text/plain"),
            ],
            b"x",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        let r = request(
            &b,
            "POST",
            "/v1/topics/b/frames?seq_no=1",
            &[("Origin", EVIL), ("Content-Type", "text/plain")],
            b"x",
        );
        assert_refused(&r, "POST from evil");
        assert_eq!(topics(&b), vec!["a".to_string()]);
    })
    .await
    .unwrap();

    // `*` lets every page in.
    let dir = tempfile::tempdir().unwrap();
    let any = Server::start(dir.path(), &["--cors-origin", "*"]);
    assert_eq!(ws_status(&http(&any), EVIL).await, 101);
}

/// Sends `method path` to the door at `at` as a page of `host` would after a DNS rebinding:
/// `Host` and `Origin` both the attacker's name. The status code.
fn rebound(at: &str, host: &str, method: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nConnection: close\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Without `--auth-*`, a page at a DNS name that resolves to the server (DNS rebinding: the
/// attacker's name, its page's own origin) is refused and changes nothing; pages at an IP
/// address or localhost, and names let in with `--cors-origin`, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_at_a_rebound_name_is_refused_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--cors-origin", "http://listed.example:1"]);
    let base = http(&server);
    let at = base.trim_start_matches("http://").to_string();
    let port = at.rsplit(':').next().unwrap().to_string();
    let evil = format!("evil.example:{port}");
    let statuses = tokio::task::spawn_blocking({
        let at = at.clone();
        move || {
            [
                rebound(&at, &evil, "POST", "/v1/topics/r/frames?seq_no=1", "x"),
                rebound(&at, &evil, "PUT", "/v1/topics/made", ""),
                rebound(&at, &evil, "GET", "/v1/topics", ""),
                rebound(&at, &at, "POST", "/v1/topics/ip/frames?seq_no=1", "x"),
                rebound(&at, &format!("localhost:{port}"), "GET", "/v1/topics", ""),
            ]
        }
    })
    .await
    .unwrap();
    assert_eq!(statuses, [403, 403, 403, 200, 200]);
    assert_eq!(topics(&base), ["ip"]);
}

/// The same on the gRPC listener: without `--auth-*`, a gRPC-Web call from a page at a DNS
/// name (the host a proxy, or a rebound name, gives) is refused `PERMISSION_DENIED` before
/// it runs; one without an `Origin` (no browser) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_call_from_a_rebound_page_is_refused_without_auth() {
    use common::http::grpc_web_status_with;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    assert_eq!(
        request(&base, "PUT", "/v1/topics/keep", &[], b"").status,
        200
    );
    let grpc = server.addr.clone();
    let port = grpc.rsplit(':').next().unwrap().to_string();
    let evil = format!("evil.example:{port}");
    let origin = format!("http://{evil}");
    // DeleteTopicRequest { name: "keep" }.
    let delete = b"\x0a\x04keep";
    let path = "/framecast.v1.Broadcast/DeleteTopic";
    let (refused, _) = tokio::task::spawn_blocking({
        let grpc = grpc.clone();
        move || {
            grpc_web_status_with(
                &grpc,
                path,
                delete,
                &[("Origin", &origin), ("X-Forwarded-Host", &evil)],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(refused.as_deref(), Some("7"), "PERMISSION_DENIED");
    assert_eq!(topics(&base), ["keep"]);
    let (served, _) =
        tokio::task::spawn_blocking(move || grpc_web_status_with(&grpc, path, delete, &[]))
            .await
            .unwrap();
    assert_eq!(served.as_deref(), Some("0"));
    assert!(topics(&base).is_empty());
}
