//! Tokens and permissions against the real binary over gRPC: every refusal is
//! UNAUTHENTICATED or PERMISSION_DENIED as API.md's security rules say, writes nothing and
//! creates no topic; an open stream ends with UNAUTHENTICATED when its token expires.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::{req, sub_req, Server};
use framecast::broker::token::{mint_hs256, MintClaims};
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::{CreateTopicRequest, DeleteTopicRequest, ListTopicsRequest};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Request};

const SECRET: &[u8] = b"test-secret-of-some-length";

fn token(publish: &[&str], subscribe: &[&str], admin: bool, ttl: Duration) -> String {
    common::tokens::token(SECRET, publish, subscribe, admin, ttl)
}

/// A token allowed everything, signed with another secret than the server's.
fn signed_elsewhere() -> String {
    mint_hs256(
        b"another-secret",
        &MintClaims {
            subject: "x".into(),
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            admin: true,
            ttl: Duration::from_secs(3600),
            not_before: None,
            expected: Default::default(),
        },
    )
    .unwrap()
}

fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// Topic names the admin token sees.
async fn topics(c: &mut BroadcastClient<Channel>, admin: &str) -> Vec<String> {
    let mut names: Vec<String> = c
        .list_topics(with(ListTopicsRequest {}, Some(admin)))
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    // A trailing newline, as `echo` writes it: stripped by the server.
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth-jwt-secret-file", secret.to_str().unwrap()]);
    (dir, server)
}

#[tokio::test]
async fn every_refusal_is_unauthenticated_or_denied_and_writes_nothing() {
    let (_dir, server) = start();
    let mut c = server.client().await;
    let hour = Duration::from_secs(3600);
    let admin = token(&[], &[], true, hour);
    let chat = token(&["chat.*"], &["chat.>"], false, hour);

    // No token, a malformed one, one signed with another secret, one not valid yet.
    let other = signed_elsewhere();
    let later = mint_hs256(
        SECRET,
        &MintClaims {
            subject: "x".into(),
            publish: vec![">".into()],
            subscribe: vec![">".into()],
            admin: true,
            ttl: hour,
            not_before: Some(SystemTime::now() + Duration::from_secs(600)),
            expected: Default::default(),
        },
    )
    .unwrap();
    // alg none: a header, the claims of a full token, no signature.
    let claims = admin.split('.').nth(1).unwrap();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    for bad in [
        None,
        Some("not-a-jwt"),
        Some(other.as_str()),
        Some(later.as_str()),
        Some(none.as_str()),
    ] {
        let e = c
            .publish(with(req("chat.a", 1, b"x"), bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{bad:?}: {e:?}");
        let e = c
            .subscribe(with(sub_req("chat.b", 0), bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = c
            .list_topics(with(ListTopicsRequest {}, bad))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }

    // Valid token, wrong topic: denied, nothing created.
    let e = c
        .publish(with(req("news", 1, b"x"), Some(&chat)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // `chat.*` is exactly one token after chat.
    let e = c
        .publish(with(req("chat.a.b", 1, b"x"), Some(&chat)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .subscribe(with(sub_req("news", 0), Some(&chat)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Publish permission alone does not let a token subscribe, nor admin publish.
    let pub_only = token(&[">"], &[], false, hour);
    let e = c
        .subscribe(with(sub_req("chat.a", 0), Some(&pub_only)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .publish(with(req("chat.a", 1, b"x"), Some(&admin)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Admin calls need admin.
    let e = c
        .create_topic(with(
            CreateTopicRequest {
                name: "chat.made".into(),
                ..Default::default()
            },
            Some(&chat),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // A publish stream: the allowed frame is acked and stands; the forbidden one ends
    // the stream naming its index.
    let reqs = vec![req("chat.s", 1, b"ok"), req("secret", 2, b"no")];
    let mut acks = c
        .publish_stream(with(tokio_stream::iter(reqs), Some(&chat)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.next().await.unwrap().unwrap().offset, 0);
    let e = acks.next().await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("request 1"), "{e:?}");

    assert_eq!(topics(&mut c, &admin).await, vec!["chat.s".to_string()]);

    // Allowed calls work; ListTopics shows only what the token may see.
    let ack = c
        .publish(with(req("chat.a", 7, b"hello"), Some(&chat)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.offset, 0);
    c.create_topic(with(
        CreateTopicRequest {
            name: "ops".into(),
            ..Default::default()
        },
        Some(&admin),
    ))
    .await
    .unwrap();
    assert_eq!(
        topics(&mut c, &admin).await,
        vec!["chat.a".to_string(), "chat.s".into(), "ops".into()]
    );
    let seen: Vec<String> = c
        .list_topics(with(ListTopicsRequest {}, Some(&chat)))
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(seen.contains(&"chat.a".to_string()) && !seen.contains(&"ops".to_string()));
    let e = c
        .delete_topic(with(DeleteTopicRequest { name: "ops".into() }, Some(&chat)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    c.delete_topic(with(
        DeleteTopicRequest { name: "ops".into() },
        Some(&admin),
    ))
    .await
    .unwrap();
    // The refused publishes wrote nothing: chat.a holds the one allowed frame.
    let mut frames = c
        .subscribe(with(sub_req("chat.a", 0), Some(&chat)))
        .await
        .unwrap()
        .into_inner();
    let f = frames.next().await.unwrap().unwrap();
    assert_eq!((f.seq_no, f.offset), (7, 0));
    let info = c
        .list_topics(with(ListTopicsRequest {}, Some(&admin)))
        .await
        .unwrap()
        .into_inner()
        .topics;
    let a = info.iter().find(|t| t.name == "chat.a").unwrap();
    assert_eq!(a.frames, 1);
}

#[tokio::test]
async fn a_stream_ends_unauthenticated_when_its_token_expires() {
    let (_dir, server) = start();
    let mut c = server.client().await;
    let short = token(&["t"], &["t"], false, Duration::from_secs(2));
    c.publish(with(req("t", 1, b"before"), Some(&short)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut frames = c
        .subscribe(with(sub_req("t", 0), Some(&short)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(frames.next().await.unwrap().unwrap().seq_no, 1);
    // A publish stream that sends one frame and then idles (its request side stays open).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(req("t", 2, b"streamed")).await.unwrap();
    let mut acks = c
        .publish_stream(with(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Some(&short),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.next().await.unwrap().unwrap().offset, 1);
    assert_eq!(frames.next().await.unwrap().unwrap().seq_no, 2, "live");
    let end = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("the stream ends within 10 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    let idle_end = tokio::time::timeout(Duration::from_secs(10), acks.next())
        .await
        .expect("the idle publish stream ends within 10 s")
        .unwrap()
        .unwrap_err();
    assert_eq!(idle_end.code(), Code::Unauthenticated, "{idle_end:?}");
    drop(tx);
    // Not before the token expired (`exp` is rounded up to a whole second).
    assert!(started.elapsed() >= Duration::from_millis(900));
    // And the expired token opens nothing more.
    let e = c
        .publish(with(req("t", 2, b"after"), Some(&short)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_call_without_a_valid_token_is_refused_before_its_message_is_decoded() {
    // Over the decoding limit as sent, a few KB of gzip that unpack past it, or not
    // protobuf at all: without a token the answer is UNAUTHENTICATED, not the decoder's
    // refusal, because the message is never read (it used to be unpacked and decoded first).
    let (_dir, server) = start();
    let big = vec![0u8; 9 << 20];
    let plain = server.client().await;
    let gzip = plain
        .clone()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let bad = signed_elsewhere();
    for (what, mut c) in [("plain", plain), ("gzip", gzip)] {
        for token in [None, Some(bad.as_str())] {
            let st = c
                .publish(with(req("t", 1, &big), token))
                .await
                .expect_err("refused");
            assert_eq!(st.code(), Code::Unauthenticated, "{what} {token:?}: {st:?}");
            let st = c
                .broadcast(with(
                    framecast::proto::BroadcastRequest {
                        topics: vec!["t".into()],
                        seq_no: 1,
                        payload: big.clone().into(),
                        timestamp: 0,
                        idempotency_key: String::new(),
                    },
                    token,
                ))
                .await
                .expect_err("refused");
            assert_eq!(st.code(), Code::Unauthenticated, "{what} {token:?}: {st:?}");
        }
    }
    // Not protobuf: the raw bytes of a gRPC message that does not decode.
    let base = format!("http://{}", server.addr);
    let (grpc_status, answer) = tokio::task::spawn_blocking(move || {
        common::http::grpc_web_status(&base, "/framecast.v1.Broadcast/Publish", &[0xff; 5])
    })
    .await
    .unwrap();
    assert_eq!(
        grpc_status.as_deref(),
        Some("16"),
        "a garbage message without a token: {} {}",
        answer.status,
        answer.text()
    );
    // With a valid token the same calls reach the decoder and the broker.
    let writer = token(&[">"], &[], false, Duration::from_secs(3600));
    let mut c = server.client().await;
    let st = c
        .publish(with(req("t", 1, &big), Some(&writer)))
        .await
        .expect_err("over the limit");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let ack = c
        .publish(with(req("t", 1, b"fits"), Some(&writer)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.offset, 0);
}

/// A token from the real `framecast token`, signed with `secret`, `extra` flags added.
fn cli_token(secret: &std::path::Path, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "--secret-file",
        secret.to_str().unwrap(),
        "--subject",
        "rotating",
        "--publish",
        ">",
        "--subscribe",
        ">",
    ];
    args.extend_from_slice(extra);
    let ran = common::cli::run(&args, Duration::from_secs(30));
    assert_eq!(ran.code, Some(0), "framecast {args:?}: {}", ran.stderr);
    ran.stdout.trim().to_string()
}

/// Keys are rotated by giving the server both secrets: a token signed with either is
/// accepted. A server started with `--auth-issuer` and `--auth-audience` refuses a token
/// without them, or with others (UNAUTHENTICATED, nothing written, no topic created), over
/// gRPC and the HTTP door alike; `framecast token --issuer --audience` mints what it takes.
#[tokio::test]
async fn rotated_secrets_and_a_required_issuer_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, third) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("third"),
    );
    std::fs::write(&old, b"the-old-secret-of-some-length\n").unwrap();
    std::fs::write(&new, b"the-new-secret-of-some-length\n").unwrap();
    std::fs::write(&third, b"a-third-secret-never-configured\n").unwrap();
    let (iss, aud) = ("https://id.example.com", "framecast-prod");
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            "--auth-jwt-secret-file",
            old.to_str().unwrap(),
            "--auth-jwt-secret-file",
            new.to_str().unwrap(),
            "--auth-issuer",
            iss,
            "--auth-audience",
            aud,
        ],
    );
    let mut c = server.client().await;
    let both = ["--issuer", iss, "--audience", aud];
    // Accepted: either secret, with the issuer and the audience.
    for (i, secret) in [&old, &new].into_iter().enumerate() {
        let t = cli_token(secret, &both);
        let ack = c
            .publish(with(req("kept", i as u64, b"x"), Some(&t)))
            .await
            .unwrap_or_else(|e| panic!("signed with {secret:?}: {e:?}"))
            .into_inner();
        assert_eq!(ack.offset, i as u64);
    }
    // Refused: another secret, no issuer or audience, or other ones.
    let refused = [
        cli_token(&third, &both),
        cli_token(&new, &[]),
        cli_token(&new, &["--audience", aud]),
        cli_token(&new, &["--issuer", iss]),
        cli_token(
            &new,
            &["--issuer", "https://other.example.com", "--audience", aud],
        ),
        cli_token(&new, &["--issuer", iss, "--audience", "framecast-staging"]),
    ];
    let door = server.http.clone().expect("the HTTP door is on");
    for t in &refused {
        let e = c
            .publish(with(req("refused", 1, b"x"), Some(t)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        let (door, t) = (door.clone(), t.clone());
        let resp = tokio::task::spawn_blocking(move || {
            common::http::with_token(
                &door,
                "POST",
                "/v1/topics/refused/frames?seq_no=1",
                &t,
                b"x",
            )
        })
        .await
        .unwrap();
        assert_eq!(resp.status, 401, "{}", resp.text());
    }
    let admin = cli_token(&old, &["--admin", "--issuer", iss, "--audience", aud]);
    assert_eq!(topics(&mut c, &admin).await, vec!["kept".to_string()]);
    drop(c);
    drop(server);

    // The issuer or audience without a key is refused at startup, naming what is missing.
    let ran = common::cli::run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
            data.to_str().unwrap(),
            "--auth-issuer",
            iss,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("--auth-jwt-secret-file"),
        "{}",
        ran.stderr
    );
}
