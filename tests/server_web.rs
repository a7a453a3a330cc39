//! The web doors against the real binary: Server-Sent Events with exact resume across
//! forced disconnects, History pages (forward and newest first) that never overlap or skip,
//! Broadcast checked whole before any write, gRPC-Web, CORS. Every frame a web client
//! receives is checked the way the gRPC ones are: replay in order-key order, live in offset
//! order, no gap, no duplicate.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::http::{request, with_token};
use common::{publish, sse, Server};
use framecast::proto::{self, Frame};
use serde_json::{json, Value};

fn http(s: &Server) -> String {
    s.http.clone().expect("the HTTP door listens")
}

/// `(seq_no, offset)` of a frame's JSON.
fn key(v: &Value) -> (u64, u64) {
    let n = |k: &str| v[k].as_str().unwrap().parse::<u64>().unwrap();
    (n("seq_no"), n("offset"))
}

/// Publishes `seqs` (one frame each) and returns every stored frame, in offset order.
async fn publish_all(server: &Server, topic: &str, seqs: &[u64]) -> Vec<Frame> {
    let mut c = server.client().await;
    let mut out = Vec::new();
    for &s in seqs {
        let payload = format!("f{s}");
        let ack = publish(&mut c, topic, s, payload.as_bytes()).await;
        out.push(Frame::new(
            s,
            payload.into_bytes().into(),
            ack.timestamp,
            ack.offset,
        ));
    }
    out
}

/// A scrambled but repeatable seq_no order: `n` values in 0..n*2, with repeats.
fn scrambled(n: u64, salt: u64) -> Vec<u64> {
    (0..n).map(|i| (i * 7919 + salt * 31) % (n * 2)).collect()
}

/// What a subscription from `from` with snapshot `s` must deliver: replay sorted by the
/// order key, then live in offset order.
fn expected(frames: &[Frame], s: u64, from: u64) -> Vec<(u64, u64)> {
    let mut replay: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.offset < s && f.seq_no >= from)
        .collect();
    replay.sort_by_key(|f| (f.seq_no, f.timestamp, f.offset));
    let live = frames.iter().filter(|f| f.offset >= s && f.seq_no >= from);
    replay
        .into_iter()
        .chain(live)
        .map(|f| (f.seq_no, f.offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_replays_then_follows_and_resumes_exactly_across_forced_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    let from = 40;
    let mut frames = publish_all(&server, "feed", &scrambled(150, 1)).await;

    // Live frames arrive while the page reconnects, again and again.
    let live = {
        let addr = server.addr.clone();
        tokio::spawn(async move {
            let mut c = common::connect(&addr).await;
            let mut out = Vec::new();
            for (i, s) in scrambled(120, 2).into_iter().enumerate() {
                let payload = format!("live{i}");
                let ack = publish(&mut c, "feed", s, payload.as_bytes()).await;
                out.push(Frame::new(
                    s,
                    payload.into_bytes().into(),
                    ack.timestamp,
                    ack.offset,
                ));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        })
    };

    // Every count is known ahead (the seq_nos are fixed): all but the last few events are
    // read over many short connections, each dropped after 23 events and resumed with the
    // last id, as a browser's EventSource does; live frames keep coming meanwhile.
    let total = scrambled(150, 1)
        .iter()
        .chain(&scrambled(120, 2))
        .filter(|&&s| s >= from)
        .count();
    let path = format!("/v1/topics/feed/events?from={from}");
    let (mut got, s, last_id, connects) = tokio::task::spawn_blocking(move || {
        let mut got: Vec<Value> = Vec::new();
        let mut last_id: Option<String> = None;
        let mut snapshot = None;
        let mut connects = 0;
        while got.len() + 23 <= total - 5 {
            connects += 1;
            let headers: Vec<(&str, &str)> = match &last_id {
                Some(id) => vec![("Last-Event-ID", id.as_str())],
                None => vec![],
            };
            let mut stream = sse::open(&base, &path, &headers)
                .unwrap_or_else(|r| panic!("reconnect refused: {} {}", r.status, r.text()));
            let first = stream.next_event().unwrap();
            assert_eq!(first.event, "snapshot");
            let s = first.json()["snapshot_offset"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap();
            // Every reconnect continues the same walk: the same snapshot.
            assert_eq!(*snapshot.get_or_insert(s), s);
            // The snapshot event's id resumes where the connection started.
            last_id = first.id.clone();
            for _ in 0..23 {
                let e = stream.next_event().unwrap();
                assert_eq!(e.event, "frame", "{e:?}");
                last_id = e.id.clone();
                got.push(e.json());
            }
        }
        (got, snapshot.unwrap(), last_id.unwrap(), connects)
    })
    .await
    .unwrap();
    assert!(connects >= 8, "{connects} connections");
    // The live publisher starts before the page opens: its first frames may be inside.
    assert!(
        s >= 150,
        "the snapshot is at least the frames acknowledged before the page opened: {s}"
    );
    frames.extend(live.await.unwrap());
    let want = expected(&frames, s, from);
    assert_eq!(want.len(), total);
    // The rest, in one more resumed stream.
    let base = http(&server);
    let path = format!("/v1/topics/feed/events?from={from}");
    let rest = total - got.len();
    let tail = tokio::task::spawn_blocking(move || {
        let mut stream = sse::open(&base, &path, &[("Last-Event-ID", &last_id)]).unwrap();
        assert_eq!(stream.next_event().unwrap().event, "snapshot");
        (0..rest)
            .map(|_| stream.next_event().unwrap().json())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    got.extend(tail);
    let keys: Vec<(u64, u64)> = got.iter().map(key).collect();
    assert_eq!(
        keys, want,
        "replay in key order, then live in offset order, exactly once"
    );
    for v in &got {
        let (_, offset) = key(v);
        assert_eq!(v["live"], offset >= s, "{v}");
        let f = frames.iter().find(|f| f.offset == offset).unwrap();
        assert_eq!(v["text"].as_str().unwrap().as_bytes(), &f.payload[..]);
        assert_eq!(v["timestamp"].as_str().unwrap(), f.timestamp.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_answers_what_it_cannot_serve_with_its_status_and_ends_streams_with_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    publish_all(&server, "t", &[1, 2, 3]).await;
    let (token, ended) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            // Garbage as Last-Event-ID: 400 (EventSource stops on a non-200).
            let r = sse::open(
                &base,
                "/v1/topics/t/events",
                &[("Last-Event-ID", "not a token!")],
            )
            .err()
            .unwrap();
            assert_eq!(
                (r.status, r.json()["code"].as_str()),
                (400, Some("INVALID_ARGUMENT"))
            );
            // One that is not visible ASCII: 400 too, not a fresh stream from the start
            // (it would send the client frames it has).
            let r = sse::open(
                &base,
                "/v1/topics/t/events",
                &[("Last-Event-ID", "caf\u{e9}")],
            )
            .err()
            .unwrap();
            assert_eq!(
                (r.status, r.json()["code"].as_str()),
                (400, Some("INVALID_ARGUMENT"))
            );
            let r = sse::open(&base, "/v1/topics/Bad%20Name/events", &[])
                .err()
                .unwrap();
            assert_eq!(r.status, 400);
            let mut s = sse::open(&base, "/v1/topics/t/events", &[]).unwrap();
            s.next_event().unwrap();
            let e = s.next_event().unwrap();
            let token = e.id.unwrap();
            // The topic is deleted under the open stream: `event: error`, then the end.
            let del = request(&base, "DELETE", "/v1/topics/t", &[], b"");
            assert_eq!(del.status, 204);
            let (mut ended, mut last_id) = (None, token.clone());
            while let Some(e) = s.next_event() {
                if e.event == "error" {
                    // Its id too is a cursor token: the last frame's (a resume from it
                    // is the resume from that frame).
                    assert_eq!(e.id.as_deref(), Some(last_id.as_str()));
                    ended = Some(e.json());
                } else if let Some(id) = e.id {
                    last_id = id;
                }
            }
            (token, ended)
        }
    })
    .await
    .unwrap();
    assert_eq!(ended.unwrap()["code"], "NOT_FOUND");
    // A token of the deleted topic's epoch: the re-created topic refuses it, 412.
    publish_all(&server, "t", &[1]).await;
    let r = tokio::task::spawn_blocking(move || {
        let q = format!("/v1/topics/t/events?last_event_id={token}");
        sse::open(&base, &q, &[]).err().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (412, Some("FAILED_PRECONDITION"))
    );
}

/// A subscription's cursor on a live frame (past its snapshot) given to History as `after`
/// ends the walk: its holder has every frame below the snapshot, so the page is empty, and
/// its `next` resumes the subscription after that live frame, not before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_after_a_live_frames_cursor_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    publish_all(&server, "h5", &[5, 6, 7]).await;
    let mut stream = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let mut stream = sse::open(&base, "/v1/topics/h5/events", &[]).unwrap();
            assert_eq!(stream.next_event().unwrap().event, "snapshot");
            for _ in 0..3 {
                assert_eq!(stream.next_event().unwrap().event, "frame");
            }
            stream
        }
    })
    .await
    .unwrap();
    // Seq 1, published now, is live at offset 3: below the replayed seq_nos in key order.
    publish_all(&server, "h5", &[1]).await;
    let live = tokio::task::spawn_blocking(move || stream.next_event().unwrap())
        .await
        .unwrap();
    assert_eq!(key(&live.json()), (1, 3));
    let cursor = live.id.unwrap();
    let page = request(
        &base,
        "GET",
        &format!("/v1/topics/h5/history?after={cursor}"),
        &[],
        b"",
    )
    .json();
    assert_eq!(page["frames"], json!([]), "{page}");
    assert_eq!(page["more"], false);
    // The page's `next` resumes after the live frame: the next frame is the next one live.
    let next = page["next"].as_str().unwrap().to_string();
    publish_all(&server, "h5", &[2]).await;
    let resumed = tokio::task::spawn_blocking(move || {
        let mut stream = sse::open(&base, "/v1/topics/h5/events", &[("Last-Event-ID", &next)])
            .unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
        assert_eq!(stream.next_event().unwrap().event, "snapshot");
        stream.next_event().unwrap().json()
    })
    .await
    .unwrap();
    assert_eq!(key(&resumed), (2, 4));
}

/// A page of many small frames stays under gRPC's default message limit (4 MiB), counted
/// with each frame's protobuf fields, so a client with default settings reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_history_page_fits_grpcs_default_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let mut c = server.client().await;
    // 10,000 frames of 419 bytes: 4,190,000 bytes of payload, over 4 MiB as protobuf.
    let frames: Vec<proto::PublishRequest> = (0..10_000u64)
        .map(|s| proto::PublishRequest {
            topic: "small".into(),
            seq_no: s,
            payload: vec![b'x'; 419].into(),
            ..Default::default()
        })
        .collect();
    let acks = c
        .publish_stream(futures::stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    use futures::StreamExt;
    assert_eq!(acks.count().await, 10_000);
    // tonic's client, like grpc's, refuses a message over 4 MiB by default.
    let mut plain = proto::broadcast_client::BroadcastClient::connect(server.addr.clone())
        .await
        .unwrap();
    let mut read = 0;
    let mut after = String::new();
    loop {
        let page = plain
            .history(proto::HistoryRequest {
                topic: "small".into(),
                limit: 10_000,
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("a page over the default limit: {e:?}"))
            .into_inner();
        read += page.frames.len();
        after = page.next;
        if !page.more {
            break;
        }
    }
    assert_eq!(read, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_never_overlap_or_skip_forward_and_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--segment-bytes", "16384", "--max-frame-bytes", "8192"],
    );
    let base = http(&server);
    let mut frames = publish_all(&server, "room", &scrambled(250, 3)).await;
    // The walk over the frames below `s` with seq_no >= 10, in order-key order.
    let walk = |frames: &[Frame], s: u64| -> Vec<(u64, u64)> {
        let mut w: Vec<&Frame> = frames
            .iter()
            .filter(|f| f.seq_no >= 10 && f.offset < s)
            .collect();
        w.sort_by_key(|f| (f.seq_no, f.timestamp, f.offset));
        w.iter().map(|f| (f.seq_no, f.offset)).collect()
    };

    let mut c = server.client().await;
    let mut want_rev = Vec::new();
    for reverse in [false, true] {
        let mut got = Vec::new();
        let mut after = String::new();
        let mut pages = 0;
        let mut snapshot = None;
        loop {
            let path =
                format!("/v1/topics/room/history?from=10&limit=37&reverse={reverse}&after={after}");
            let page = request(&base, "GET", &path, &[], b"").json();
            let s: u64 = page["snapshot_offset"].as_str().unwrap().parse().unwrap();
            assert_eq!(
                *snapshot.get_or_insert(s),
                s,
                "every page of a walk has its snapshot"
            );
            // Frames published between pages are past the snapshot: never in the walk.
            let ack = publish(&mut c, "room", 100, b"later").await;
            frames.push(Frame::new(
                100,
                bytes::Bytes::from_static(b"later"),
                ack.timestamp,
                ack.offset,
            ));
            let n = page["frames"].as_array().unwrap().len();
            got.extend(page["frames"].as_array().unwrap().iter().map(key));
            pages += 1;
            after = page["next"].as_str().unwrap().to_string();
            if page["more"] == false {
                break;
            }
            assert_eq!(n, 37);
            assert!(pages < 20);
        }
        let mut want = walk(&frames, snapshot.unwrap());
        if reverse {
            want.reverse();
            want_rev = want.clone();
        }
        assert_eq!(got, want, "reverse={reverse}");
        assert_eq!(pages, want.len().div_ceil(37));
    }

    // gRPC History answers the same first page.
    let page = c
        .history(proto::HistoryRequest {
            topic: "room".into(),
            from_seq_no: 10,
            limit: 5,
            reverse: true,
            after: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<(u64, u64)> = page.frames.iter().map(|f| (f.seq_no, f.offset)).collect();
    assert_eq!(keys, want_rev[..5].to_vec());
    assert!(page.more);

    // Refusals.
    let cases = [
        ("/v1/topics/room/history?limit=10001", 400),
        ("/v1/topics/room/history?after=%21%21", 400),
        ("/v1/topics/room/history?reverse=maybe", 400),
        ("/v1/topics/nowhere/history", 404),
    ];
    for (path, status) in cases {
        let r = request(&base, "GET", path, &[], b"");
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    // A forward token used for a reverse page, and a token of another epoch.
    let first = request(&base, "GET", "/v1/topics/room/history?limit=1", &[], b"").json();
    let next = first["next"].as_str().unwrap();
    let r = request(
        &base,
        "GET",
        &format!("/v1/topics/room/history?reverse=true&after={next}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A newest-first token as an event stream's Last-Event-ID: 400, not a stream that goes
    // on after frames the client has and never sends the older ones.
    let newest = request(
        &base,
        "GET",
        "/v1/topics/room/history?reverse=true&limit=1",
        &[],
        b"",
    )
    .json();
    let newest_first = newest["next"].as_str().unwrap().to_string();
    let r = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            sse::open(
                &base,
                "/v1/topics/room/events",
                &[("Last-Event-ID", newest_first.as_str())],
            )
            .err()
            .expect("a newest-first cursor opened an event stream")
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{}",
        r.text()
    );
    assert_eq!(
        request(&base, "DELETE", "/v1/topics/room", &[], b"").status,
        204
    );
    publish(&mut c, "room", 1, b"again").await;
    let r = request(
        &base,
        "GET",
        &format!("/v1/topics/room/history?after={next}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 412, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_is_checked_whole_before_any_write_and_completed_by_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--auth-jwt-secret-file", secret.to_str().unwrap()]);
    let base = http(&server);
    let admin = common::tokens::token(b"s3cret", &[">"], &[">"], true, Duration::from_secs(600));
    let rooms = common::tokens::token(
        b"s3cret",
        &["room.*"],
        &[">"],
        false,
        Duration::from_secs(600),
    );
    for t in ["room.a", "room.b", "lobby"] {
        assert_eq!(
            with_token(&base, "PUT", &format!("/v1/topics/{t}"), &admin, b"").status,
            200
        );
    }
    let frames = |t: &str| -> u64 {
        let list = with_token(&base, "GET", "/v1/topics", &admin, b"").json();
        let topic = list["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == t)
            .cloned();
        topic.map_or(0, |x| x["frames"].as_str().unwrap().parse().unwrap())
    };
    let body = |topics: Value, key: &str| {
        serde_json::to_vec(
            &json!({"topics": topics, "seq_no": "7", "text": "hello all", "idempotency_key": key}),
        )
        .unwrap()
    };
    // Refused whole: a bad name among good ones, a topic the token may not publish to.
    let r = with_token(
        &base,
        "POST",
        "/v1/broadcast",
        &admin,
        &body(json!(["room.a", "bad name"]), "k"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = with_token(
        &base,
        "POST",
        "/v1/broadcast",
        &rooms,
        &body(json!(["room.*", "lobby"]), "k"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = with_token(
        &base,
        "POST",
        "/v1/broadcast",
        &rooms,
        &body(json!(["room.a", "new.topic"]), "k"),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        (
            frames("room.a"),
            frames("room.b"),
            frames("lobby"),
            frames("new.topic")
        ),
        (0, 0, 0, 0)
    );

    // Patterns that match no topic: nothing to write, an empty list of acks.
    let r = with_token(
        &base,
        "POST",
        "/v1/broadcast",
        &admin,
        &body(json!(["nomatch.*", "nomatch.>"]), "k0"),
    );
    assert_eq!(
        (r.status, r.json()["acks"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{}",
        r.text()
    );

    // A pattern and a name: every topic gets the frame once, acks in name order.
    let r = with_token(
        &base,
        "POST",
        "/v1/broadcast",
        &admin,
        &body(json!(["room.*", "lobby"]), "k1"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let acks = r.json()["acks"].as_array().unwrap().clone();
    let names: Vec<&str> = acks.iter().map(|a| a["topic"].as_str().unwrap()).collect();
    assert_eq!(names, ["lobby", "room.a", "room.b"]);
    assert!(acks.iter().all(|a| a["ack"]["duplicate"] == false));
    // One topic already has the frame (a broadcast that failed part way): the retry with the
    // same key appends only the missing ones.
    let r = with_token(
        &base,
        "POST",
        "/v1/broadcast",
        &admin,
        &body(json!(["room.*", "lobby", "extra"]), "k1"),
    );
    let acks = r.json()["acks"].as_array().unwrap().clone();
    let dup: Vec<(String, bool)> = acks
        .iter()
        .map(|a| {
            (
                a["topic"].as_str().unwrap().to_string(),
                a["ack"]["duplicate"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dup,
        [
            ("extra".into(), false),
            ("lobby".into(), true),
            ("room.a".into(), true),
            ("room.b".into(), true)
        ]
    );
    assert_eq!(
        (frames("room.a"), frames("lobby"), frames("extra")),
        (1, 1, 1)
    );

    // gRPC Broadcast: the same rules.
    let mut c = server.client().await;
    let mut req = tonic::Request::new(proto::BroadcastRequest {
        topics: vec!["room.>".into()],
        seq_no: 8,
        payload: bytes::Bytes::from_static(b"x"),
        timestamp: 0,
        idempotency_key: String::new(),
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {rooms}").parse().unwrap());
    let ack = c.broadcast(req).await.unwrap().into_inner();
    assert_eq!(ack.acks.len(), 2);
    assert_eq!(frames("room.b"), 2);
}

/// A broadcast lists at most 10,000 entries and 100 distinct patterns: each pattern is
/// matched against every topic, so a request of a million `>` would hold a worker thread
/// for as long as it took (seconds to hours), however few topics it reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_of_too_many_entries_or_patterns_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = http(&server);
    assert_eq!(
        request(&base, "PUT", "/v1/topics/a.x", &[], b"").status,
        200
    );
    let broadcast = |topics: Vec<String>| {
        let body =
            serde_json::to_vec(&json!({"topics": topics, "seq_no": 1, "text": "x"})).unwrap();
        request(&base, "POST", "/v1/broadcast", &[], &body)
    };
    let r = broadcast(vec![">".to_string(); 10_001]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("at most 10000"), "{}", r.text());
    let distinct: Vec<String> = (0..101).map(|i| format!("p{i}.>")).collect();
    let r = broadcast(distinct);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("100 distinct patterns"), "{}", r.text());
    let list = request(&base, "GET", "/v1/topics", &[], b"").json();
    assert_eq!(list["topics"][0]["frames"], "0", "{list}");

    // At the limits it is taken: 10,000 entries, 100 distinct patterns (one matching).
    let mut topics: Vec<String> = (0..99).map(|i| format!("p{i}.>")).collect();
    topics.extend(std::iter::repeat_n("a.>".to_string(), 10_000 - 99));
    let r = broadcast(topics);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["acks"].as_array().unwrap().len(),
        1,
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_to_a_missing_topic_without_auto_create_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--no-auto-create-topics"]);
    let base = http(&server);
    assert_eq!(request(&base, "PUT", "/v1/topics/a", &[], b"").status, 200);
    let body =
        serde_json::to_vec(&json!({"topics": ["a", "b"], "seq_no": 1, "payload": "aGk="})).unwrap();
    let r = request(&base, "POST", "/v1/broadcast", &[], &body);
    assert_eq!(r.status, 404, "{}", r.text());
    let list = request(&base, "GET", "/v1/topics", &[], b"").json();
    assert_eq!(list["topics"][0]["frames"], "0");
    assert_eq!(list["topics"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_neither_reaches_nor_reveals_topics_hidden_from_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let admin = common::tokens::token(b"s3cret", &[">"], &[">"], true, Duration::from_secs(600));
    let rooms = common::tokens::token(
        b"s3cret",
        &["room.*"],
        &["room.*"],
        false,
        Duration::from_secs(600),
    );
    let body = |topics: Value| {
        serde_json::to_vec(&json!({"topics": topics, "seq_no": "1", "text": "hi"})).unwrap()
    };
    for auto_create in [true, false] {
        let data = dir.path().join(format!("data-{auto_create}"));
        let mut args = vec!["--auth-jwt-secret-file", secret.to_str().unwrap()];
        if !auto_create {
            args.push("--no-auto-create-topics");
        }
        let server = Server::start(&data, &args);
        let base = http(&server);
        for t in ["room.a", "secret.payroll"] {
            assert_eq!(
                with_token(&base, "PUT", &format!("/v1/topics/{t}"), &admin, b"").status,
                200
            );
        }
        // Patterns reach only what the token may see: `>` is room.a alone, and a pattern
        // matching only hidden topics answers as if none existed.
        let r = with_token(&base, "POST", "/v1/broadcast", &rooms, &body(json!([">"])));
        assert_eq!(r.status, 200, "{}", r.text());
        let answer = r.json();
        let acked: Vec<&str> = answer["acks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["topic"].as_str().unwrap())
            .collect();
        assert_eq!(acked, ["room.a"], "{}", r.text());
        assert!(!r.text().contains("payroll"), "{}", r.text());
        let r = with_token(
            &base,
            "POST",
            "/v1/broadcast",
            &rooms,
            &body(json!(["secret.*"])),
        );
        assert_eq!(
            (r.status, r.json()["acks"].as_array().map(Vec::len)),
            (200, Some(0)),
            "{}",
            r.text()
        );
        // Named outright, a hidden topic is refused the same whether it exists or not.
        for name in ["secret.payroll", "secret.nothing"] {
            let r = with_token(&base, "POST", "/v1/broadcast", &rooms, &body(json!([name])));
            assert_eq!(r.status, 403, "{name}: {}", r.text());
        }
        let list = with_token(&base, "GET", "/v1/topics", &admin, b"").json();
        let frames: Vec<(String, String)> = list["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["frames"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            frames,
            [
                ("room.a".to_string(), "1".to_string()),
                ("secret.payroll".to_string(), "0".to_string())
            ],
            "auto-create {auto_create}"
        );
    }
}

/// A gRPC-Web message frame (flag 0) around `msg`.
fn grpc_web_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![0u8];
    out.extend((body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// Splits a gRPC-Web response body into its message frames and its trailer frame.
fn grpc_web_split(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let mut messages = Vec::new();
    let mut trailers = String::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let data = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers = String::from_utf8_lossy(data).into_owned();
        } else {
            messages.push(data.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

/// A gRPC-Web client need not send `X-Grpc-Web` (its content type says what it is): its
/// subscription is counted under `transport="grpc_web"` all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_without_its_header_is_counted_as_grpc_web() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    publish_all(&server, "counted", &[1, 2, 3]).await;
    let grpc = server.addr.clone();
    let http_base = http(&server);
    let sub = proto::SubscribeRequest {
        replay_seq_no_start: 0,
        topic: "counted".into(),
        resume: None,
    };
    let body = grpc_web_frame(&sub);
    let open = std::thread::spawn(move || {
        let ct = "application/grpc-web+proto";
        let headers = [("Content-Type", ct), ("Accept", ct)];
        request(
            &grpc,
            "POST",
            "/framecast.v1.Broadcast/Subscribe",
            &headers,
            &body,
        )
    });
    let series = |t: &str| {
        [
            format!("framecast_delivered_frames_total{{topic=\"counted\",transport=\"{t}\"}}"),
            format!("framecast_subscribers{{topic=\"counted\",transport=\"{t}\"}}"),
        ]
    };
    let mut seen = (None, None);
    for _ in 0..200 {
        let text = request(&http_base, "GET", "/metrics", &[], b"").text();
        let [delivered, subscribers] = series("grpc_web");
        seen = (
            common::http::metric(&text, &delivered),
            common::http::metric(&text, &subscribers),
        );
        if seen == (Some(3.0), Some(1.0)) {
            let [delivered, subscribers] = series("grpc");
            assert_eq!(common::http::metric(&text, &delivered), Some(0.0), "{text}");
            assert_eq!(
                common::http::metric(&text, &subscribers),
                Some(0.0),
                "{text}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        seen,
        (Some(3.0), Some(1.0)),
        "grpc_web delivered, subscribers"
    );
    // Deleting the topic ends the stream (an HTTP/1.1 response ends with its body).
    let deleted = request(&http_base, "DELETE", "/v1/topics/counted", &[], b"");
    assert_eq!(deleted.status, 204);
    let r = tokio::task::spawn_blocking(move || open.join().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let (msgs, trailers) = grpc_web_split(&r.body);
    assert_eq!(msgs.len(), 3, "{trailers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_serves_unary_and_server_streaming_calls_over_http1_with_cors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--cors-origin", "https://app.example"]);
    let grpc = server.addr.clone();
    let http_base = http(&server);
    tokio::task::spawn_blocking(move || {
        let web = |path: &str, body: &[u8], content_type: &str| {
            request(
                &grpc,
                "POST",
                path,
                &[
                    ("Content-Type", content_type),
                    ("Accept", content_type),
                    ("X-Grpc-Web", "1"),
                    ("Origin", "https://app.example"),
                ],
                body,
            )
        };
        // Unary Publish, in application/grpc-web+proto.
        let publish = proto::PublishRequest {
            seq_no: 5,
            payload: bytes::Bytes::from_static(b"from a browser"),
            timestamp: 0,
            topic: "web".into(),
            idempotency_key: String::new(),
        };
        let r = web(
            "/framecast.v1.Broadcast/Publish",
            &grpc_web_frame(&publish),
            "application/grpc-web+proto",
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        let (msgs, trailers) = grpc_web_split(&r.body);
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
        let ack: proto::PublishAck = prost::Message::decode(&msgs[0][..]).unwrap();
        assert_eq!(ack.offset, 0);
        // Server streaming Subscribe, in application/grpc-web-text (base64), over a topic
        // whose stream the server ends by deleting it (HTTP/1.1 responses end with the body).
        let sub = proto::SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "web".into(),
            resume: None,
        };
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.encode(grpc_web_frame(&sub));
        let deleter = {
            let http_base = http_base.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(700));
                request(&http_base, "DELETE", "/v1/topics/web", &[], b"")
            })
        };
        let r = web(
            "/framecast.v1.Broadcast/Subscribe",
            text.as_bytes(),
            "application/grpc-web-text",
        );
        assert_eq!(deleter.join().unwrap().status, 204);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("framecast-snapshot-offset"),
            Some("1"),
            "{:?}",
            r.headers
        );
        // The text body is a sequence of base64 chunks, one per frame.
        let mut raw = Vec::new();
        let body = r.text();
        let mut rest = body.as_str();
        while !rest.is_empty() {
            let end = rest.find('=').map_or(rest.len(), |i| {
                let pads = rest[i..].chars().take_while(|&c| c == '=').count();
                i + pads
            });
            raw.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(&rest[..end])
                    .unwrap(),
            );
            rest = &rest[end..];
        }
        let (msgs, trailers) = grpc_web_split(&raw);
        let frame: proto::Frame = prost::Message::decode(&msgs[0][..]).unwrap();
        assert_eq!(
            (frame.seq_no, &frame.payload[..]),
            (5, &b"from a browser"[..])
        );
        assert!(
            trailers.contains("grpc-status:5"),
            "NOT_FOUND at the end: {trailers}"
        );

        // CORS: a preflight from the allowed origin on both listeners; none for others.
        for base in [&grpc, &http_base] {
            let pre = request(
                base,
                "OPTIONS",
                "/v1/topics",
                &[
                    ("Origin", "https://app.example"),
                    ("Access-Control-Request-Method", "POST"),
                    (
                        "Access-Control-Request-Headers",
                        "authorization,content-type",
                    ),
                ],
                b"",
            );
            assert_eq!(
                pre.header("access-control-allow-origin"),
                Some("https://app.example")
            );
            let allowed = pre
                .header("access-control-allow-headers")
                .unwrap_or("")
                .to_lowercase();
            assert!(allowed.contains("authorization"), "{allowed}");
        }
        let other = request(
            &http_base,
            "GET",
            "/v1/topics",
            &[("Origin", "https://evil.example")],
            b"",
        );
        assert_eq!(other.header("access-control-allow-origin"), None);
        assert_eq!(other.status, 403, "another site's page is refused");
    })
    .await
    .unwrap();

    // Without --cors-origin: no CORS headers at all.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = Server::start(dir2.path(), &[]);
    let base = http(&plain);
    tokio::task::spawn_blocking(move || {
        let r = request(
            &base,
            "GET",
            "/v1/topics",
            &[("Origin", "https://app.example")],
            b"",
        );
        assert_eq!(r.header("access-control-allow-origin"), None);
        assert_eq!(r.status, 403, "another site's page is refused");
    })
    .await
    .unwrap();
}
