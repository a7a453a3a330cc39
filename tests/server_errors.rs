//! API.md's error table, row by row, against the real server. Every refusal is followed by
//! the checks that give the table its heading, "nothing is written when a request is
//! refused": the topic's figures are unchanged, an open subscription receives nothing, no
//! topic was created by the refused request, and the server still serves.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::{
    CreateTopicRequest, Cursor, DeleteTopicRequest, PublishAck, PublishRequest, SubscribeRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

const LIMIT: Duration = Duration::from_secs(20);
const MAX_FRAME: usize = 1024;

/// Names that do not match `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
fn bad_topic_names() -> Vec<String> {
    vec![
        "-x".into(),
        ".hidden".into(),
        "_x".into(),
        "..".into(),
        "a/b".into(),
        "../escape".into(),
        "a b".into(),
        "é".into(),
        "a\u{0}b".into(),
        "a".repeat(129),
    ]
}

async fn publish_status(c: &mut BroadcastClient<Channel>, r: PublishRequest) -> Status {
    match tokio::time::timeout(LIMIT, c.publish(r)).await {
        Ok(Ok(a)) => panic!("expected a refusal, got {:?}", a.into_inner()),
        Ok(Err(s)) => s,
        Err(_) => panic!("publish timed out"),
    }
}

/// Sends `reqs` on one `PublishStream`; the acks received and the status it ended with.
async fn publish_stream_result(
    c: &mut BroadcastClient<Channel>,
    reqs: Vec<PublishRequest>,
) -> (Vec<PublishAck>, Option<Status>) {
    let mut acks = match tokio::time::timeout(LIMIT, c.publish_stream(tokio_stream::iter(reqs)))
        .await
        .expect("publish stream call timed out")
    {
        Ok(r) => r.into_inner(),
        Err(s) => return (Vec::new(), Some(s)),
    };
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(LIMIT, acks.message()).await {
            Ok(Ok(Some(a))) => got.push(a),
            Ok(Ok(None)) => return (got, None),
            Ok(Err(s)) => return (got, Some(s)),
            Err(_) => panic!("publish stream hung after {} acks", got.len()),
        }
    }
}

/// True when `text` contains `n` as a whole number.
fn names_number(text: &str, n: usize) -> bool {
    text.split(|c: char| !c.is_ascii_digit())
        .any(|w| w == n.to_string())
}

/// What a refused request must not have changed.
struct Baseline {
    topic: String,
    next_offset: u64,
    frames: u64,
    topics: Vec<String>,
}

impl Baseline {
    async fn take(c: &mut BroadcastClient<Channel>, topic: &str) -> Baseline {
        let info = topic_info(c, topic).await.expect("baseline topic exists");
        Baseline {
            topic: topic.into(),
            next_offset: info.next_offset,
            frames: info.frames,
            topics: topic_names(c).await,
        }
    }

    /// Asserts that nothing was written: same figures, same topics, a quiet subscriber.
    async fn check(&self, c: &mut BroadcastClient<Channel>, sub: &mut Sub, what: &str) {
        let info = topic_info(c, &self.topic)
            .await
            .unwrap_or_else(|| panic!("{what}: topic {} vanished", self.topic));
        assert_eq!(
            (info.next_offset, info.frames),
            (self.next_offset, self.frames),
            "{what}: a refused request wrote a frame"
        );
        assert_eq!(
            topic_names(c).await,
            self.topics,
            "{what}: a refused request created a topic"
        );
        expect_quiet(&mut sub.stream, Duration::from_millis(30)).await;
    }
}

async fn topic_names(c: &mut BroadcastClient<Channel>) -> Vec<String> {
    list_topics(c).await.into_iter().map(|t| t.name).collect()
}

/// The files and directories under the data dir's `topics/`.
fn topic_dirs(data_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir.join("topics"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_write_nothing_and_create_no_topic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--fsync", "always", "--max-frame-bytes", "1024"],
    );
    let mut c = server.client().await;
    publish(&mut c, "t", 1, b"first").await;
    let mut sub = subscribe(&mut c, sub_req("t", 0)).await.unwrap();
    take(&mut sub.stream, 1, LIMIT).await;
    let base = Baseline::take(&mut c, "t").await;
    assert_eq!(base.topics, vec!["t".to_string()]);

    // Each refused publish, to the existing topic and to one that does not exist yet.
    let mut refusals: Vec<(String, PublishRequest)> = Vec::new();
    for topic in ["t", "fresh"] {
        refusals.push((
            format!("payload of {} bytes to {topic}", MAX_FRAME + 1),
            req(topic, 1, &vec![7u8; MAX_FRAME + 1]),
        ));
        refusals.push((
            format!("payload of 4 MiB to {topic}"),
            req(topic, 1, &vec![7u8; 4 << 20]),
        ));
        for ts in [-1, i64::MIN] {
            let mut r = req(topic, 1, b"x");
            r.timestamp = ts;
            refusals.push((format!("timestamp {ts} to {topic}"), r));
        }
        for len in [129, 1000] {
            let mut r = req(topic, 1, b"x");
            r.idempotency_key = "k".repeat(len);
            refusals.push((format!("idempotency_key of {len} bytes to {topic}"), r));
        }
    }
    for name in bad_topic_names() {
        refusals.push((format!("topic name {name:?}"), req(&name, 1, b"x")));
    }
    for (what, r) in refusals {
        let st = publish_status(&mut c, r.clone()).await;
        assert_eq!(st.code(), Code::InvalidArgument, "{what}: {st:?}");
        base.check(&mut c, &mut sub, &what).await;
        // The same request as the only request of a PublishStream: refused at index 0.
        let (acks, st) = publish_stream_result(&mut c, vec![r]).await;
        assert!(acks.is_empty(), "{what}");
        let st = st.unwrap_or_else(|| panic!("{what}: stream ended cleanly"));
        assert_eq!(st.code(), Code::InvalidArgument, "{what} (stream): {st:?}");
        assert!(
            names_number(st.message(), 0),
            "{what}: message must name index 0: {st:?}"
        );
        base.check(&mut c, &mut sub, &format!("{what} (stream)"))
            .await;
    }

    // Bad names in the other calls.
    for name in bad_topic_names() {
        let st = subscribe_error(&mut c, sub_req(&name, 0)).await;
        assert_eq!(
            st.code(),
            Code::InvalidArgument,
            "subscribe {name:?}: {st:?}"
        );
        let st = c
            .create_topic(CreateTopicRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "create {name:?}: {st:?}");
        let st = c
            .delete_topic(DeleteTopicRequest { name: name.clone() })
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "delete {name:?}: {st:?}");
        base.check(&mut c, &mut sub, &format!("calls on {name:?}"))
            .await;
    }

    // Resume cursors beyond the next offset (1), on this topic and on a missing one.
    let epoch = sub.epoch;
    for (topic, cur) in [
        (
            "t",
            Cursor {
                snapshot_offset: 2,
                epoch,
                ..Default::default()
            },
        ),
        (
            "t",
            Cursor {
                snapshot_offset: 1,
                epoch,
                seq_no: 1,
                timestamp: 5,
                offset: 1,
            },
        ),
    ] {
        let r = SubscribeRequest {
            replay_seq_no_start: 0,
            topic: topic.into(),
            resume: Some(cur),
        };
        let st = subscribe_error(&mut c, r).await;
        assert_eq!(st.code(), Code::OutOfRange, "{cur:?}: {st:?}");
        base.check(&mut c, &mut sub, &format!("resume {cur:?}"))
            .await;
    }
    // A resume cursor for a topic that does not exist cannot match its epoch; refusing it
    // must not create the topic either.
    let st = subscribe_error(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "ghost".into(),
            resume: Some(Cursor {
                snapshot_offset: 3,
                epoch: 42,
                seq_no: 1,
                timestamp: 5,
                offset: 1,
            }),
        },
    )
    .await;
    assert!(
        matches!(st.code(), Code::FailedPrecondition | Code::NotFound),
        "resume on a missing topic: {st:?}"
    );
    base.check(&mut c, &mut sub, "resume on a missing topic")
        .await;
    assert_eq!(topic_info(&mut c, "t").await.unwrap().subscribers, 1);
    assert_eq!(topic_dirs(dir.path()), vec!["t".to_string()]);

    // The limits themselves are inclusive, and nothing above consumed an offset.
    let mut r = req("t", 2, &vec![b'z'; MAX_FRAME]);
    r.idempotency_key = "k".repeat(128);
    let ack = c
        .publish(r)
        .await
        .expect("publish at the limits")
        .into_inner();
    assert_eq!(ack.offset, 1);
    let got = take(&mut sub.stream, 1, LIMIT).await;
    assert_eq!((got[0].offset, got[0].payload.len()), (1, MAX_FRAME));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stream_ends_at_the_invalid_request_and_earlier_acks_stand() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--fsync", "always", "--max-frame-bytes", "1024"],
    );
    let mut c = server.client().await;
    let topic = "ps";
    let mut next = 0u64;
    let invalid = |k: usize, kind: usize| -> PublishRequest {
        let mut r = req(topic, k as u64, b"bad");
        match kind {
            0 => r.payload = vec![1u8; MAX_FRAME + 1].into(),
            1 => r.topic = "no/slash".into(),
            2 => r.timestamp = -5,
            _ => r.idempotency_key = "x".repeat(129),
        }
        r
    };
    for (k, kind) in [(0usize, 0usize), (7, 1), (13, 2), (4, 3), (31, 0)] {
        let mut reqs: Vec<PublishRequest> = (0..k)
            .map(|i| req(topic, i as u64, format!("k{k}-{i}").as_bytes()))
            .collect();
        reqs.push(invalid(k, kind));
        // Valid requests after the bad one must not be written.
        reqs.extend((0..5).map(|i| req(topic, 99, format!("after-{k}-{i}").as_bytes())));
        let (acks, st) = publish_stream_result(&mut c, reqs).await;
        let st = st.unwrap_or_else(|| panic!("index {k}: stream ended cleanly"));
        assert_eq!(st.code(), Code::InvalidArgument, "index {k}: {st:?}");
        assert!(
            names_number(st.message(), k),
            "index {k}: the message must name it: {:?}",
            st.message()
        );
        assert_eq!(acks.len(), k, "index {k}: every earlier ack arrives");
        for (i, a) in acks.iter().enumerate() {
            assert_eq!(a.offset, next + i as u64, "acks in request order");
            assert!(!a.duplicate);
        }
        next += k as u64;
        let info = topic_info(&mut c, topic).await;
        assert_eq!(
            info.map_or(0, |t| t.next_offset),
            next,
            "index {k}: only the requests before it are written"
        );
    }
    // The earlier acks stand: the log holds exactly those frames.
    let log = read_log(&mut c, topic).await;
    assert_eq!(log.len() as u64, next);
    assert!(log.iter().all(|f| f.payload.starts_with(b"k")));
    assert_eq!(topic_names(&mut c).await, vec![topic.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscribers_refuses_the_next_one_until_one_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-subscribers", "3"]);
    let mut c = server.client().await;
    publish(&mut c, "m", 1, b"a").await;
    publish(&mut c, "m", 2, b"b").await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = subscribe(&mut c, sub_req("m", 0)).await.unwrap();
        take(&mut s.stream, 2, LIMIT).await;
        subs.push(s);
    }
    wait_subscribers(&mut c, "m", 3, LIMIT).await;

    let st = subscribe_error(&mut c, sub_req("m", 0)).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    // Refused on a topic that does not exist: it must not be created by the refusal.
    let st = subscribe_error(&mut c, sub_req("other", 0)).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
    assert_eq!(topic_names(&mut c).await, vec!["m".to_string()]);
    assert_eq!(topic_info(&mut c, "m").await.unwrap().subscribers, 3);

    // Publishing is not limited, and the open streams keep working.
    publish(&mut c, "m", 3, b"c").await;
    for s in &mut subs {
        let f = take(&mut s.stream, 1, LIMIT).await;
        assert_eq!(f[0].offset, 2);
    }

    // Cancel one: the count goes down and a new subscriber is accepted.
    drop(subs.pop());
    wait_subscribers(&mut c, "m", 2, LIMIT).await;
    let mut s = subscribe(&mut c, sub_req("m", 0)).await.unwrap();
    assert_eq!(take(&mut s.stream, 3, LIMIT).await.len(), 3);
    wait_subscribers(&mut c, "m", 3, LIMIT).await;
    let st = subscribe_error(&mut c, sub_req("m", 0)).await;
    assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_missing_topics_are_not_found_until_created() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--no-auto-create-topics"]);
    let mut c = server.client().await;
    for topic in ["x", ""] {
        let st = publish_status(&mut c, req(topic, 1, b"a")).await;
        assert_eq!(st.code(), Code::NotFound, "publish {topic:?}: {st:?}");
        let st = subscribe_error(&mut c, sub_req(topic, 0)).await;
        assert_eq!(st.code(), Code::NotFound, "subscribe {topic:?}: {st:?}");
        let (acks, st) = publish_stream_result(&mut c, vec![req(topic, 1, b"a")]).await;
        assert!(acks.is_empty());
        assert_eq!(st.map(|s| s.code()), Some(Code::NotFound));
    }
    assert!(list_topics(&mut c).await.is_empty());
    assert!(topic_dirs(dir.path()).is_empty());

    let info = c
        .create_topic(CreateTopicRequest {
            name: "x".into(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!(info.name, "x");
    assert_ne!(info.epoch, 0);
    assert_eq!((info.next_offset, info.frames), (0, 0));
    let mut sub = subscribe(&mut c, sub_req("x", 0)).await.unwrap();
    assert_eq!((sub.snapshot, sub.epoch), (0, info.epoch));
    assert_eq!(publish(&mut c, "x", 1, b"a").await.offset, 0);
    let f = take(&mut sub.stream, 1, LIMIT).await;
    assert_eq!(&f[0].payload[..], b"a");
    // Other topics are still refused.
    let st = publish_status(&mut c, req("y", 1, b"a")).await;
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(topic_names(&mut c).await, vec!["x".to_string()]);

    // "" is `default` in CreateTopic and DeleteTopic too, as in Publish.
    let info = c
        .create_topic(CreateTopicRequest::default())
        .await
        .expect("create \"\"")
        .into_inner();
    assert_eq!(info.name, "default");
    assert_eq!(publish(&mut c, "", 1, b"d").await.offset, 0);
    c.delete_topic(DeleteTopicRequest { name: "".into() })
        .await
        .expect("delete \"\"");
    assert_eq!(topic_names(&mut c).await, vec!["x".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_topic_ends_streams_with_not_found_and_a_new_topic_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    for i in 0..5u64 {
        publish(&mut c, "d", i, format!("d{i}").as_bytes()).await;
    }
    publish(&mut c, "keep", 1, b"k0").await;
    let mut live = subscribe(&mut c, sub_req("d", 0)).await.unwrap();
    take(&mut live.stream, 5, LIMIT).await;
    let mut mid_replay = subscribe(&mut c, sub_req("d", 0)).await.unwrap();
    take(&mut mid_replay.stream, 2, LIMIT).await;
    let mut unread = subscribe(&mut c, sub_req("d", 3)).await.unwrap();
    let mut other = subscribe(&mut c, sub_req("keep", 0)).await.unwrap();
    take(&mut other.stream, 1, LIMIT).await;
    let old_epoch = live.epoch;
    wait_subscribers(&mut c, "d", 3, LIMIT).await;

    c.delete_topic(DeleteTopicRequest { name: "d".into() })
        .await
        .expect("delete");
    for (name, s) in [
        ("live", &mut live),
        ("mid-replay", &mut mid_replay),
        ("unread", &mut unread),
    ] {
        let (frames, st) = read_until_error(&mut s.stream, LIMIT).await;
        assert_eq!(st.code(), Code::NotFound, "{name}: {st:?}");
        assert!(frames.len() <= 5, "{name}");
    }
    assert!(
        !dir.path().join("topics").join("d").exists(),
        "files removed"
    );
    assert_eq!(topic_dirs(dir.path()), vec!["keep".to_string()]);
    assert_eq!(topic_names(&mut c).await, vec!["keep".to_string()]);
    let st = c
        .delete_topic(DeleteTopicRequest { name: "d".into() })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::NotFound, "{st:?}");

    // Other topics are untouched.
    publish(&mut c, "keep", 2, b"k1").await;
    assert_eq!(
        &take(&mut other.stream, 1, LIMIT).await[0].payload[..],
        b"k1"
    );

    // Created again: empty, offset 0, a new epoch; the old epoch's cursor is refused.
    let ack = publish(&mut c, "d", 9, b"new").await;
    assert_eq!(ack.offset, 0);
    let info = topic_info(&mut c, "d").await.unwrap();
    assert_ne!(info.epoch, old_epoch);
    assert_eq!((info.frames, info.next_offset), (1, 1));
    let log = read_log(&mut c, "d").await;
    assert_eq!(log.len(), 1);
    assert_eq!(&log[0].payload[..], b"new");
    let st = subscribe_error(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "d".into(),
            resume: Some(Cursor {
                snapshot_offset: 1,
                epoch: old_epoch,
                ..Default::default()
            }),
        },
    )
    .await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
}

/// Unmounts the tmpfs when dropped, even when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_unavailable_the_log_stays_valid_and_publishing_resumes() {
    // Drop order matters: the server (holding mappings) first, then the mount, then the dir.
    let mount_dir = tempfile::tempdir().unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(mount_dir.path())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "the disk-full test mounts a 2 MiB tmpfs and needs root (CAP_SYS_ADMIN): mount failed: {other:?}"
        ),
    }
    let _unmount = Unmount(mount_dir.path().to_path_buf());
    // Space held back, to be freed later.
    let filler = mount_dir.path().join("filler");
    std::fs::write(&filler, vec![0xAAu8; 768 << 10]).unwrap();
    let data = mount_dir.path().join("data");
    let mut server = Server::start(
        &data,
        &[
            "--fsync",
            "always",
            "--segment-bytes",
            "262144",
            "--max-frame-bytes",
            "16384",
        ],
    );
    let mut c = server.client().await;
    let frame = |i: usize| -> Vec<u8> {
        let mut v = format!("frame-{i}|").into_bytes();
        v.resize(8000, (i % 251) as u8);
        v
    };

    let mut acked: Vec<(PublishAck, Vec<u8>)> = Vec::new();
    let refused = loop {
        assert!(acked.len() < 1000, "2 MiB never filled up");
        let p = frame(acked.len());
        match tokio::time::timeout(LIMIT, c.publish(req("full", 1, &p))).await {
            Ok(Ok(a)) => acked.push((a.into_inner(), p)),
            Ok(Err(s)) => break s,
            Err(_) => panic!("publish hung on a full disk"),
        }
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    eprintln!(
        "disk full after {} acked frames: {}",
        acked.len(),
        refused.message()
    );
    assert!(acked.len() > 32, "more than one segment was filled");

    // Still serving: figures, and a replay of every acked frame.
    let check_log = |log: Vec<framecast::proto::Frame>, acked: &[(PublishAck, Vec<u8>)]| {
        assert_eq!(log.len(), acked.len(), "exactly the acked frames");
        for (f, (a, p)) in log.iter().zip(acked) {
            assert_eq!((f.offset, f.timestamp), (a.offset, a.timestamp));
            assert!(f.payload == p[..], "offset {} payload differs", f.offset);
        }
    };
    let info = topic_info(&mut c, "full").await.unwrap();
    assert_eq!(info.next_offset, acked.len() as u64);
    check_log(read_log(&mut c, "full").await, &acked);
    // A topic created on the full disk cannot get its first segment: refused the same way,
    // and not left half-made.
    let st = publish_status(&mut c, req("newtopic", 1, b"x")).await;
    assert_eq!(
        st.code(),
        Code::Unavailable,
        "new topic on a full disk: {st:?}"
    );
    assert_eq!(topic_names(&mut c).await, vec!["full".to_string()]);

    // Free the space: publishing works again.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        publish(&mut c, "newtopic", 1, b"x").await.offset,
        0,
        "a topic refused on the full disk can be created once there is room"
    );
    for _ in 0..20 {
        let p = frame(acked.len());
        let a = c
            .publish(req("full", 1, &p))
            .await
            .expect("publish after space was freed")
            .into_inner();
        assert_eq!(
            a.offset,
            acked.len() as u64,
            "no offset was used by the failure"
        );
        acked.push((a, p));
    }
    check_log(read_log(&mut c, "full").await, &acked);

    // And a restart finds every acked frame.
    server.restart();
    let mut c = server.client().await;
    check_log(read_log(&mut c, "full").await, &acked);
    drop(server);
}

/// A request message over the server's decoding limit (`max(--max-frame-bytes + 1 MiB,
/// 8 MiB)`: tonic refuses it before any handler runs) is still the `INVALID_ARGUMENT` of a
/// payload over `--max-frame-bytes`, in every call: unary Publish and Broadcast (tonic said
/// `OUT_OF_RANGE`), PublishStream (which ended with OK and no answer to it, so the Rust
/// client's publisher reopened its stream and sent it again, for ever), and the Rust
/// client's `publish`. Nothing is stored; each refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_decoding_limit_is_invalid_argument_in_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--fsync", "always", "--max-frame-bytes", "1024"],
    );
    let mut c = server.client().await;
    let big = vec![7u8; 9 << 20];
    let over = |st: &Status, what: &str| {
        assert_eq!(st.code(), Code::InvalidArgument, "{what}: {st:?}");
        assert!(
            st.message().contains("--max-frame-bytes 1024"),
            "{what}: {st:?}"
        );
    };

    let st = publish_status(&mut c, req("big", 1, &big)).await;
    over(&st, "unary publish");

    let reqs = vec![
        req("big", 1, b"zero"),
        req("big", 2, b"one"),
        req("big", 3, &big),
        req("big", 4, b"three"),
    ];
    let (acks, st) = publish_stream_result(&mut c, reqs).await;
    let st = st.expect("the stream ended cleanly, leaving request 2 unanswered");
    over(&st, "publish stream");
    assert!(names_number(st.message(), 2), "{st:?}");
    assert_eq!(acks.iter().map(|a| a.offset).collect::<Vec<_>>(), [0, 1]);

    let st = tokio::time::timeout(
        LIMIT,
        c.broadcast(framecast::proto::BroadcastRequest {
            topics: vec!["big".into()],
            seq_no: 5,
            payload: big.clone().into(),
            timestamp: 0,
            idempotency_key: String::new(),
        }),
    )
    .await
    .expect("broadcast timed out")
    .expect_err("a broadcast over the limit was accepted");
    over(&st, "broadcast");

    // The Rust client gives up at once: the refusal is not retried.
    let client = framecast::client::Client::connect(&server.addr).unwrap();
    let err = tokio::time::timeout(LIMIT, client.publish("big", 6, big.clone()))
        .await
        .expect("the client's publish did not return")
        .expect_err("the client's publish over the limit was accepted");
    assert!(err.to_string().contains("--max-frame-bytes 1024"), "{err}");

    // Only the two small frames before the refused one are stored.
    let log = read_log(&mut c, "big").await;
    assert_eq!(
        log.iter().map(|f| f.payload.to_vec()).collect::<Vec<_>>(),
        [b"zero".to_vec(), b"one".to_vec()]
    );
    let m =
        common::http::request(server.http.as_ref().unwrap(), "GET", "/metrics", &[], b"").text();
    let rejected = common::http::metric(
        &m,
        "framecast_rejected_requests_total{code=\"invalid_argument\"}",
    );
    assert_eq!(rejected, Some(4.0), "{m}");
}

/// A topic name that is not UTF-8 is bad input in every call, as in Publish:
/// `INVALID_ARGUMENT`, not tonic's `INTERNAL` decode failure. Sent as gRPC-Web over
/// HTTP/1.1 (raw bytes a generated client cannot send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_name_that_is_not_utf8_is_invalid_argument_in_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let base = format!("http://{}", server.addr);
    // The string field holding the topic's name (field 2 of SubscribeRequest, 1 of
    // CreateTopicRequest and DeleteTopicRequest) as the one byte 0xff.
    for (call, field) in [("Subscribe", 2u8), ("CreateTopic", 1), ("DeleteTopic", 1)] {
        let message = [(field << 3) | 2, 1, 0xff];
        let (base, path) = (base.clone(), format!("/framecast.v1.Broadcast/{call}"));
        let (status, answer) = tokio::task::spawn_blocking(move || {
            common::http::grpc_web_status(&base, &path, &message)
        })
        .await
        .unwrap();
        let why = format!("{call}: {} {}", answer.status, answer.text());
        assert_eq!(status.as_deref(), Some("3"), "{why}");
    }
    assert!(topic_dirs(dir.path()).is_empty());
}
