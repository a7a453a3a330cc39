//! Compaction and retention in a running server: publishing, subscribing, replay and resume
//! keep working while segments are rewritten into runs, and a subscriber that needs frames
//! retention removed gets OUT_OF_RANGE, never a silent gap.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use framecast::proto::{
    CreateTopicRequest, Cursor, Frame, ListTopicsRequest, PublishRequest, SubscribeRequest,
};
use rand::{Rng, SeedableRng};

const FLAGS: &[&str] = &[
    "--segment-bytes",
    "32KiB",
    "--max-frame-bytes",
    "8192",
    "--compact-after-segments",
    "2",
    "--compaction-mb-per-sec",
    "0",
    "--fsync",
    "never",
];

fn expected(all: &BTreeMap<u64, Frame>, snapshot: u64, start: u64) -> Vec<(u64, u64)> {
    let mut replay: Vec<&Frame> = all
        .values()
        .filter(|f| f.offset < snapshot && f.seq_no >= start)
        .collect();
    replay.sort_by_key(|f| (f.seq_no, f.timestamp, f.offset));
    let live = all
        .values()
        .filter(|f| f.offset >= snapshot && f.seq_no >= start);
    replay
        .into_iter()
        .chain(live)
        .map(|f| (f.offset, f.seq_no))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stay_exact_while_the_compactor_rewrites_segments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FLAGS);
    let total = 6000u64;
    let addr = server.addr.clone();
    let publisher = tokio::spawn(async move {
        let mut c = connect(&addr).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for i in 0..total {
            let seq = rng.random_range(0..500u64);
            publish(
                &mut c,
                "c",
                seq,
                format!("frame-{i}-{}", "z".repeat((i % 40) as usize)).as_bytes(),
            )
            .await;
            // Spread publishing over about 3 s, several maintenance passes (one a second):
            // unpaced, a fast machine publishes everything before the second pass, and the
            // compactor would run once instead of while subscribers read and resume.
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    // Subscribers join while publishing and compaction go on; each reads until it has
    // every frame with seq_no >= start.
    let mut subs = Vec::new();
    for k in 0..8u64 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let addr = server.addr.clone();
        subs.push(tokio::spawn(async move {
            let mut c = connect(&addr).await;
            let start = k * 40;
            let mut sub = subscribe(
                &mut c,
                SubscribeRequest {
                    replay_seq_no_start: start,
                    topic: "c".into(),
                    resume: None,
                },
            )
            .await
            .unwrap();
            let mut got = Vec::new();
            // Resume once, in the middle, over a fresh connection.
            let mut resumed = false;
            loop {
                // Quiet for 5 s: publishing is over (anything still to come would be a
                // duplicate, which the comparison below catches).
                match tokio::time::timeout(Duration::from_secs(5), sub.stream.message()).await {
                    Ok(Ok(Some(f))) => {
                        got.push((f.offset, f.seq_no, f.timestamp));
                        if !resumed && got.len() == 50 {
                            resumed = true;
                            let last = *got.last().unwrap();
                            let cursor = Cursor {
                                snapshot_offset: sub.snapshot,
                                epoch: sub.epoch,
                                seq_no: last.1,
                                timestamp: last.2,
                                offset: last.0,
                            };
                            let mut c2 = connect(&addr).await;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            sub.stream = subscribe(
                                &mut c2,
                                SubscribeRequest {
                                    replay_seq_no_start: start,
                                    topic: "c".into(),
                                    resume: Some(cursor),
                                },
                            )
                            .await
                            .unwrap()
                            .stream;
                        }
                    }
                    Ok(Ok(None)) => panic!("stream ended"),
                    Ok(Err(s)) => panic!("stream failed: {s}"),
                    Err(_) => break, // quiet for a while: publishing is over
                }
            }
            (start, sub.snapshot, got)
        }));
    }
    publisher.await.unwrap();
    let mut c = server.client().await;
    let info = c
        .list_topics(ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    let t = info.topics.iter().find(|t| t.name == "c").unwrap();
    assert_eq!(t.next_offset, total);
    let mut all_sub = subscribe(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "c".into(),
            resume: None,
        },
    )
    .await
    .unwrap();
    let all: BTreeMap<u64, Frame> =
        take(&mut all_sub.stream, total as usize, Duration::from_secs(60))
            .await
            .into_iter()
            .map(|f| (f.offset, f))
            .collect();
    assert_eq!(all.len() as u64, total);
    for s in subs {
        let (start, snapshot, got) = s.await.unwrap();
        let got: Vec<(u64, u64)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(
            got,
            expected(&all, snapshot, start),
            "subscriber from {start}, S={snapshot}"
        );
    }
    let log = server.log_text();
    assert!(
        log.matches("compacted").count() >= 2,
        "the compactor did not run:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_moves_first_offset_and_needed_frames_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FLAGS);
    let mut c = server.client().await;
    c.create_topic(CreateTopicRequest {
        name: "r".into(),
        retention_max_age_seconds: 0,
        retention_max_bytes: 64 * 1024,
    })
    .await
    .unwrap();
    for i in 0..200u64 {
        publish(&mut c, "r", i, &[b'x'; 500]).await;
    }
    // A subscriber that read a little of its replay, then stalls and resumes later.
    let mut early = subscribe(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "r".into(),
            resume: None,
        },
    )
    .await
    .unwrap();
    let first_frames = take(&mut early.stream, 3, Duration::from_secs(10)).await;
    drop(early.stream);
    for i in 200..2000u64 {
        publish(&mut c, "r", i, &[b'y'; 500]).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let first = loop {
        let info = c
            .list_topics(ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner();
        let t = info.topics.iter().find(|t| t.name == "r").unwrap().clone();
        if t.first_offset > 0 && t.bytes <= 64 * 1024 + 32 * 1024 {
            assert_eq!(t.frames, t.next_offset - t.first_offset);
            break t.first_offset;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A fresh subscriber gets the retained history, starting at the first retained offset.
    let mut fresh = subscribe(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "r".into(),
            resume: None,
        },
    )
    .await
    .unwrap();
    let f = take(&mut fresh.stream, 1, Duration::from_secs(10)).await;
    assert_eq!(f[0].offset, first);
    // The early subscriber's resume needs removed frames: OUT_OF_RANGE, not a gap.
    let last = first_frames.last().unwrap();
    let resumed = subscribe(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "r".into(),
            resume: Some(Cursor {
                snapshot_offset: early.snapshot,
                epoch: early.epoch,
                seq_no: last.seq_no,
                timestamp: last.timestamp,
                offset: last.offset,
            }),
        },
    )
    .await;
    // Refused when it opens (the call's status), not after: every door answers the same way.
    let status = match resumed {
        Err(s) => s,
        Ok(_) => panic!("a resume needing removed frames opened"),
    };
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&first.to_string()),
        "{}",
        status.message()
    );
    // The same cursor as an event stream's Last-Event-ID: 416 with the error body, so an
    // EventSource stops instead of opening, erroring, and reconnecting for ever.
    let token = framecast::broker::cursor::CursorToken {
        start_seq_no: 0,
        snapshot: early.snapshot,
        epoch: early.epoch,
        last: Some(framecast::index::OrderKey {
            seq_no: last.seq_no,
            timestamp: last.timestamp,
            offset: last.offset,
        }),
        reverse: false,
        floor: None,
    }
    .encode();
    let base = server.http.clone().unwrap();
    let r = tokio::task::spawn_blocking(move || {
        sse::open(&base, "/v1/topics/r/events", &[("Last-Event-ID", &token)])
            .err()
            .expect("the event stream opened")
    })
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (416, Some("OUT_OF_RANGE")),
        "{}",
        r.text()
    );
    // A cursor past the removed frames still resumes: the fresh subscriber's first frame.
    let kept = subscribe(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "r".into(),
            resume: Some(Cursor {
                snapshot_offset: fresh.snapshot,
                epoch: fresh.epoch,
                seq_no: f[0].seq_no,
                timestamp: f[0].timestamp,
                offset: f[0].offset,
            }),
        },
    )
    .await;
    let mut kept = kept.expect("a cursor needing only retained frames was refused");
    let next = take(&mut kept.stream, 1, Duration::from_secs(10)).await;
    assert_eq!(next[0].offset, first + 1);
}

/// A publish stream's frames are grouped into log requests, and a request is written whole
/// into one segment: with small segments the groups must stay within one, or a stream of
/// small frames would be refused though every frame fits.
/// The topic's first retained offset once retention moved it past `past`.
async fn first_offset_past(
    c: &mut framecast::proto::broadcast_client::BroadcastClient<tonic::transport::Channel>,
    topic: &str,
    past: u64,
) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = c
            .list_topics(ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner();
        let t = info
            .topics
            .iter()
            .find(|t| t.name == topic)
            .unwrap()
            .clone();
        if t.first_offset > past {
            return t.first_offset;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention did not run: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An event stream opened on `path` resuming after `last_id`: the first frame event's
/// seq_no, or the refusal's status and code.
async fn resumed_sse(base: &str, path: &str, last_id: &str) -> Result<u64, (u16, String)> {
    let (base, path, last_id) = (base.to_string(), path.to_string(), last_id.to_string());
    tokio::task::spawn_blocking(move || {
        match sse::open(&base, &path, &[("Last-Event-ID", &last_id)]) {
            Err(r) => Err((r.status, r.json()["code"].as_str().unwrap().to_string())),
            Ok(mut s) => {
                assert_eq!(s.next_event().unwrap().event, "snapshot");
                let e = s.next_event().unwrap();
                Ok(e.json()["seq_no"].as_str().unwrap().parse().unwrap())
            }
        }
    })
    .await
    .unwrap()
}

/// Retention counts against a stream only what it removed after the stream (the first of
/// those it resumes) began: one old frame with a high seq_no (a publisher whose count
/// started again) removed before then never refuses it, not its resumes over SSE nor the
/// next pages of a History walk; a stream that began before and still needed it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_frame_removed_before_a_stream_began_never_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FLAGS);
    let base = server.http.clone().unwrap();
    let mut c = server.client().await;
    c.create_topic(CreateTopicRequest {
        name: "s".into(),
        retention_max_age_seconds: 0,
        retention_max_bytes: 64 * 1024,
    })
    .await
    .unwrap();
    publish(&mut c, "s", 1_000_000, &[b'h'; 500]).await;
    for seq in 1..=40u64 {
        publish(&mut c, "s", seq, &[b'x'; 500]).await;
    }
    // Stream A begins while the high frame is kept: its replay ends with it.
    let path = "/v1/topics/s/events";
    let early = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let mut s = sse::open(&base, path, &[]).unwrap();
            assert_eq!(s.next_event().unwrap().event, "snapshot");
            s.next_event().unwrap();
            s.next_event().unwrap().id.unwrap()
        }
    })
    .await
    .unwrap();
    for seq in 41..=300u64 {
        publish(&mut c, "s", seq, &[b'x'; 500]).await;
    }
    let floor = first_offset_past(&mut c, "s", 0).await;
    // A needed what retention took (its replay had not reached seq 1,000,000): refused.
    assert_eq!(
        resumed_sse(&base, path, &early).await,
        Err((416, "OUT_OF_RANGE".to_string()))
    );
    // Stream B begins after: its resume from the middle of its replay is served.
    let (b_third, b_second_id) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            let mut s = sse::open(&base, path, &[]).unwrap();
            assert_eq!(s.next_event().unwrap().event, "snapshot");
            s.next_event().unwrap();
            let second = s.next_event().unwrap().id.unwrap();
            let third = s.next_event().unwrap().json()["seq_no"]
                .as_str()
                .unwrap()
                .to_string();
            (third.parse::<u64>().unwrap(), second)
        }
    })
    .await
    .unwrap();
    assert_eq!(resumed_sse(&base, path, &b_second_id).await, Ok(b_third));
    // A History walk begins, reads 100 frames, and retention then removes frames it has read.
    let page = |after: String| {
        let base = base.clone();
        async move {
            common::http::get(
                &base,
                &format!("/v1/topics/s/history?limit=100&after={after}"),
            )
            .await
        }
    };
    let first_page = page(String::new()).await.json();
    let frames = first_page["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 100);
    let last_seq: u64 = frames[99]["seq_no"].as_str().unwrap().parse().unwrap();
    for seq in 301..=360u64 {
        publish(&mut c, "s", seq, &[b'x'; 500]).await;
    }
    let now = first_offset_past(&mut c, "s", floor).await;
    assert!(
        now < floor + 100,
        "retention removed frames the walk had not read yet"
    );
    let next = page(first_page["next"].as_str().unwrap().to_string()).await;
    assert_eq!(next.status, 200, "{}", next.text());
    let seq: u64 = next.json()["frames"][0]["seq_no"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(seq, last_seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_stream_of_small_frames_fills_many_small_segments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FLAGS);
    let mut c = connect(&server.addr).await;
    let n = 5_000u64;
    let frames: Vec<_> = (0..n)
        .map(|i| {
            req(
                "small",
                i,
                format!("small frame {i} {}", "s".repeat(100)).as_bytes(),
            )
        })
        .collect();
    let mut acks = c
        .publish_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut next = 0;
    while let Some(ack) = tokio::time::timeout(Duration::from_secs(30), acks.message())
        .await
        .expect("acks keep coming")
        .unwrap()
    {
        assert_eq!(ack.offset, next);
        next += 1;
    }
    assert_eq!(next, n);
    let info = topic_info(&mut c, "small").await.unwrap();
    assert_eq!(info.next_offset, n);
    assert!(info.segments > 10, "{info:?}");
    assert_eq!(read_log(&mut c, "small").await.len() as u64, n);
}

/// Every file under `dir` with its bytes, by name.
fn files_of(dir: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_compaction_leaves_a_cluster_nodes_copy_alone_and_compacts_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--segment-bytes",
        "32KiB",
        "--max-frame-bytes",
        "8192",
        "--compact-after-segments",
        "0",
        "--fsync",
        "never",
    ];
    let mut server = Server::start(tmp.path(), &flags);
    let mut c = server.client().await;
    let payload = vec![7u8; 2000];
    for seq in 0..100u64 {
        publish(&mut c, "plain", 99 - seq, &payload).await;
        publish(&mut c, "copy", 99 - seq, &payload).await;
    }
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).unwrap();
    // "copy" as a cluster node holds it: its term history names a cluster term.
    let copy_dir = tmp.path().join("topics").join("copy");
    framecast::broker::terms::TermHistory::starting(7)
        .store(&copy_dir)
        .unwrap();
    let before = files_of(&copy_dir);
    let d = tmp.path().to_str().unwrap();

    let out = std::process::Command::new(bin())
        .args(["compact", "--data-dir", d])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("copy: a cluster node's copy, left alone"),
        "{stdout}"
    );
    let plain = stdout.lines().find(|l| l.starts_with("plain: ")).unwrap();
    assert!(!plain.starts_with("plain: 0 segments"), "{plain}");
    assert_eq!(files_of(&copy_dir), before, "the copy was changed");

    // Named, it is refused, and still nothing changes.
    let out = std::process::Command::new(bin())
        .args(["compact", "--data-dir", d, "--topic", "copy"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("topic 'copy' is a cluster node's copy (term 7)"),
        "{stderr}"
    );
    assert_eq!(files_of(&copy_dir), before, "the copy was changed");

    // Both topics still hold every frame, at its offset.
    let server = Server::start(tmp.path(), &flags);
    let mut c = server.client().await;
    for topic in ["plain", "copy"] {
        let log = read_log(&mut c, topic).await;
        let frames: Vec<(u64, u64)> = log.iter().map(|f| (f.offset, f.seq_no)).collect();
        let want: Vec<(u64, u64)> = (0..100).map(|o| (o, 99 - o)).collect();
        assert_eq!(frames, want, "{topic}");
    }
}

/// A client that had the whole replay and no live frame yet, resuming after retention
/// removed the live frames it still needs while every removed key sorts before its cursor
/// (seq_nos that do not grow with offsets): refused when it opens, as the stream would
/// refuse it at its first live read. Before, it opened, and an event stream then sent an
/// error event, which an `EventSource` answers by reconnecting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_whose_live_frames_were_removed_is_refused_when_it_opens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FLAGS);
    let mut c = server.client().await;
    c.create_topic(CreateTopicRequest {
        name: "late".into(),
        retention_max_age_seconds: 0,
        retention_max_bytes: 64 * 1024,
    })
    .await
    .unwrap();
    for i in 0..20u64 {
        publish(&mut c, "late", 1_000_000 + i, &[b'h'; 500]).await;
    }
    let mut sub = subscribe(&mut c, sub_req("late", 0)).await.unwrap();
    let replay = take(&mut sub.stream, 20, Duration::from_secs(10)).await;
    drop(sub.stream);
    let last = replay.last().unwrap();
    // Live frames with small seq_nos: every key removed sorts before the cursor.
    for i in 0..2000u64 {
        publish(&mut c, "late", i, &[b'l'; 500]).await;
    }
    first_offset_past(&mut c, "late", 21).await;
    let resumed = subscribe(
        &mut c,
        SubscribeRequest {
            replay_seq_no_start: 0,
            topic: "late".into(),
            resume: Some(Cursor {
                snapshot_offset: sub.snapshot,
                epoch: sub.epoch,
                seq_no: last.seq_no,
                timestamp: last.timestamp,
                offset: last.offset,
            }),
        },
    )
    .await;
    match resumed {
        Err(st) => assert_eq!(st.code(), tonic::Code::OutOfRange, "{st:?}"),
        Ok(_) => panic!("a resume whose live frames were removed opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_compaction_drops_idempotency_keys_only_past_the_window_it_is_given() {
    // Offline, the server's --dedup-window is not known: without the flag every key stays
    // (a key dropped inside the server's window would let a retry store its frame twice).
    // The keys here were stored an hour ago (copied in as a follower copies records, with
    // their stored key times), inside a 2 h window, outside the old offline default (2 min).
    let tmp = tempfile::tempdir().unwrap();
    let flags = [
        "--segment-bytes",
        "32KiB",
        "--max-frame-bytes",
        "8192",
        "--compact-after-segments",
        "0",
        "--fsync",
        "never",
        "--dedup-window",
        "2h",
    ];
    let keyed = |seq: u64| PublishRequest {
        idempotency_key: format!("k{seq}"),
        ..req("t", seq, &[seq as u8; 2000])
    };
    let mut server = Server::start(tmp.path(), &flags);
    let mut c = server.client().await;
    c.publish(keyed(0)).await.unwrap();
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).unwrap();
    {
        let log = framecast::wal::Log::open(
            &tmp.path().join("topics").join("t"),
            framecast::wal::LogConfig {
                segment_bytes: 32 * 1024,
                max_frame_bytes: 8192,
                ..Default::default()
            },
        )
        .unwrap();
        let hour_ago = framecast::wal::now_ns() - 3_600_000_000_000;
        let copied: Vec<_> = (1..60u64)
            .map(|seq| {
                let key = format!("k{seq}");
                let payload = [seq as u8; 2000];
                let rec = framecast::wal::record::RecordRef {
                    offset: seq,
                    seq_no: seq,
                    timestamp: hour_ago,
                    key_time: hour_ago,
                    key: key.as_bytes(),
                    payload: &payload,
                };
                let mut bytes = vec![0u8; rec.encoded_len()];
                rec.encode_into(&mut bytes);
                framecast::wal::Copied::decode(&bytes.into()).unwrap()
            })
            .collect();
        log.append_copied(copied).await.unwrap();
        log.close();
    }
    let d = tmp.path().to_str().unwrap();
    let compact = |extra: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(["compact", "--data-dir", d])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = stdout
            .lines()
            .find(|l| l.starts_with("t: "))
            .unwrap()
            .to_string();
        assert!(!line.starts_with("t: 0 segments"), "{line}");
        line
    };
    let line = compact(&[]);
    assert!(line.ends_with(", 0 keys dropped"), "{line}");
    // A retry of an hour-old frame, after a restart: still known, not stored twice.
    let mut server = Server::start(tmp.path(), &flags);
    let mut c = server.client().await;
    let ack = c.publish(keyed(5)).await.unwrap().into_inner();
    assert_eq!((ack.offset, ack.duplicate), (5, true));
    for seq in 60..80u64 {
        c.publish(keyed(seq)).await.unwrap();
    }
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).unwrap();
    // Given a window the keys are older than, it drops them.
    let line = compact(&["--dedup-window", "30m"]);
    assert!(!line.ends_with(", 0 keys dropped"), "{line}");
}

/// A topic several times the size of one run: the server's compactor
/// (`--compaction-max-run-bytes`) and `framecast compact` (`--max-run-bytes`) write runs no
/// larger than the limit, and every frame replays in order, before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_stay_under_the_run_size_limit_in_the_server_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--compaction-max-run-bytes", "80KiB"]);
    let mut server = Server::start(tmp.path(), &flags);
    let mut c = server.client().await;
    // 480 frames of 1,000 B (about 15 segments of 32 KiB), seq_nos out of order.
    let mut published = BTreeMap::new();
    for i in 0..480u64 {
        let seq = (i * 7919) % 480;
        let ack = publish(&mut c, "big", seq, &[i as u8; 1000]).await;
        published.insert(ack.offset, (seq, i as u8));
    }
    let topic_dir = tmp.path().join("topics").join("big");
    let segments = || {
        std::fs::read_dir(&topic_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    // The compactor takes sealed segments once two wait: at most the active one and one
    // sealed are left.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while segments() > 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} segments left",
            segments()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let check_runs = |limit: u64| {
        let sizes = run_record_bytes(&topic_dir);
        assert!(sizes.len() >= 3, "runs {sizes:?}");
        assert!(
            sizes.iter().all(|&b| b <= limit),
            "runs {sizes:?} over {limit}"
        );
    };
    check_runs(80 * 1024);
    // Replay: every frame, in (seq_no, timestamp, offset) order.
    let replay = |mut c: framecast::proto::broadcast_client::BroadcastClient<_>| {
        let published = published.clone();
        async move {
            let mut sub = subscribe(&mut c, sub_req("big", 0)).await.unwrap();
            let got = take(&mut sub.stream, 480, Duration::from_secs(30)).await;
            let keys: Vec<_> = got
                .iter()
                .map(|f| (f.seq_no, f.timestamp, f.offset))
                .collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "replay out of order");
            let by_offset: BTreeMap<u64, (u64, u8)> = got
                .iter()
                .map(|f| (f.offset, (f.seq_no, f.payload[0])))
                .collect();
            assert_eq!(by_offset, published);
            assert!(got.iter().all(|f| f.payload.len() == 1000));
        }
    };
    replay(c).await;
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).unwrap().success());

    // Offline, with a larger limit: everything sealed is compacted, the server's runs merged
    // into larger ones (over the server's 80 KiB), none over the new limit.
    let before = run_record_bytes(&topic_dir).len();
    let out = std::process::Command::new(bin())
        .args(["compact", "--data-dir", tmp.path().to_str().unwrap()])
        .args(["--max-run-bytes", "200KiB"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    check_runs(200 * 1024);
    let sizes = run_record_bytes(&topic_dir);
    assert!(sizes.len() < before, "runs {sizes:?}, {before} before");
    assert!(sizes.iter().any(|&b| b > 80 * 1024), "runs {sizes:?}");
    assert_eq!(segments(), 1, "only the active segment is left");
    // A limit past what a run can hold is refused.
    let out = std::process::Command::new(bin())
        .args(["compact", "--data-dir", tmp.path().to_str().unwrap()])
        .args(["--max-run-bytes", "5GiB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    server.restart();
    replay(server.client().await).await;
}

/// `--retention-max-bytes 0` and `--retention-max-age 0` mean "no limit", as 0 does in
/// `CreateTopic`: sealed segments are compacted and every frame is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_default_retention_keeps_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut flags = FLAGS.to_vec();
    flags.extend(["--retention-max-bytes", "0", "--retention-max-age", "0s"]);
    let server = Server::start(dir.path(), &flags);
    let mut c = server.client().await;
    for i in 0..600u64 {
        publish(&mut c, "z", i, &[b'z'; 500]).await;
    }
    // Wait for a maintenance pass to have compacted the sealed segments (retention runs in
    // the same pass), or long enough for several passes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("compacted") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = topic_info(&mut c, "z").await.unwrap();
    assert_eq!((t.first_offset, t.frames), (0, 600), "{t:?}");
    let mut all = subscribe(&mut c, sub_req("z", 0)).await.unwrap();
    let got = take(&mut all.stream, 600, Duration::from_secs(20)).await;
    assert!(got.iter().map(|f| f.offset).eq(0..600));
}

/// A keyed frame whose segment retention deleted within the dedup window is still known
/// after a restart (the server killed): a retry with its key gets the first ack, marked a
/// duplicate, and is not stored again. Before, recovery rebuilt the window from the files
/// left, and the retry was stored as a new frame. With a short window, a retry after it is
/// a new frame, as for any key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_frame_retention_deleted_still_dedups_after_a_restart() {
    for window_ends in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = FLAGS.to_vec();
        flags.extend(["--retention-max-bytes", "40KiB"]);
        if window_ends {
            flags.extend(["--dedup-window", "3s"]);
        }
        let mut server = Server::start(dir.path(), &flags);
        let mut c = server.client().await;
        let keyed = PublishRequest {
            idempotency_key: "the-key".into(),
            ..req("k", 0, b"first")
        };
        let first = c.publish(keyed.clone()).await.unwrap().into_inner();
        assert_eq!((first.offset, first.duplicate), (0, false));
        for i in 1..=200u64 {
            publish(&mut c, "k", i, &[b'x'; 1000]).await;
        }
        // Retention removes offset 0 and deletes the file that held it.
        let topic_dir = dir.path().join("topics").join("k");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let first_offset = topic_info(&mut c, "k").await.unwrap().first_offset;
            let holds_0 = std::fs::read_dir(&topic_dir).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("0000000000000000000")
            });
            if first_offset > 0 && !holds_0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "retention never deleted offset 0's file"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if window_ends {
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        server.restart();
        let mut c = server.client().await;
        let frames = topic_info(&mut c, "k").await.unwrap().frames;
        let again = c.publish(keyed).await.unwrap().into_inner();
        let after = topic_info(&mut c, "k").await.unwrap().frames;
        if window_ends {
            assert!(!again.duplicate && again.offset > 200, "{again:?}");
            assert_eq!(after, frames + 1);
        } else {
            assert_eq!((again.offset, again.duplicate), (0, true), "{again:?}");
            assert_eq!(after, frames, "stored once");
        }
    }
}
