//! The Rust client and the CLI through a proxy that breaks and refuses calls on cue, in
//! front of the real server (`common::proxy`):
//!
//! - frames that went out on a publish stream that broke, and were then refused on the new
//!   stream, are reported as stored-or-not (never as refused or not sent: some are stored);
//! - a subscription resumed while the server still counts its own old, half-open stream
//!   against `--max-subscribers` waits it out instead of ending at `RESOURCE_EXHAUSTED`,
//!   while a first open refused so is still final;
//! - a History page refused with the server's "ask again later" is asked again;
//! - a unary publish or broadcast whose answer was lost, then refused, is stored-or-not.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Act, Proxy};
use common::*;
use framecast::client::{Client, Error, HistoryQuery, RetryPolicy};
use futures::StreamExt;
use tonic::Code;

fn quick() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_elapsed: Duration::from_secs(20),
    }
}

fn client(addr: &str) -> Client {
    Client::connect(addr)
        .unwrap()
        .with_coalescing(false)
        .with_retry(quick())
}

/// Fails the test instead of hanging it.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

/// Waits (up to 20 s) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seq_nos stored in `topic` on `server`.
async fn stored(server: &Server, topic: &str) -> Vec<u64> {
    let mut raw = server.client().await;
    read_log(&mut raw, topic)
        .await
        .iter()
        .map(|f| f.seq_no)
        .collect()
}

/// The publish stream breaks after three acks (the server stored the fourth frame: its ack
/// reached the proxy), and the stream opened again is refused for good (a token expired),
/// at the call or in the stream. No frame the server stored may be reported refused or
/// `NotSent`: every frame that went out on the broken stream and was not acknowledged
/// fails as fate-unknown ([`Error::FateUnknown`]). Before, the fourth frame took the refusal and
/// the rest failed `NotSent`, though stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_before_a_refusal_on_a_new_stream_are_stored_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let refusals = [
        Act::Refuse(Code::Unauthenticated, "token expired at X".into()),
        Act::RefuseInStream(Code::Unauthenticated, "token expired at X".into()),
    ];
    for (i, refusal) in refusals.into_iter().enumerate() {
        let topic = format!("nr{i}");
        let script = [(
            "PublishStream",
            vec![Act::BreakAfter { n: 3, leak: false }, refusal.clone()],
        )];
        let proxy = Proxy::start(&server.addr, &script).await;
        let publisher = client(&proxy.addr).publisher_until_refused(&topic);
        let mut pending = Vec::new();
        for seq in 0..10u64 {
            pending.push(publisher.send(seq, format!("f{seq}")).await.unwrap());
        }
        let mut outcomes = Vec::new();
        for ack in pending {
            outcomes.push(bounded("an ack", ack).await);
        }
        let stored = stored(&server, &topic).await;
        assert!(stored.len() >= 4, "{refusal:?}: stored {stored:?}");
        for (seq, outcome) in outcomes.iter().enumerate() {
            let seq = seq as u64;
            match outcome {
                Ok(_) => assert!(seq < 3, "{refusal:?}: seq_no {seq} acked"),
                Err(e) if stored.contains(&seq) => assert!(
                    matches!(e, Error::FateUnknown { .. }),
                    "{refusal:?}: seq_no {seq} is stored and reported {e:?}"
                ),
                Err(_) => {}
            }
        }
        assert!(outcomes[..3].iter().all(Result::is_ok), "{outcomes:?}");
        // The publisher ended at the refusal: a later send gets it.
        let later = publisher.send(10, "late").await;
        assert!(
            matches!(
                later,
                Err(Error::Server {
                    code: Code::Unauthenticated,
                    ..
                })
            ),
            "{later:?}"
        );
    }
}

/// A unary publish or broadcast (coalescing off) whose attempt reached the server (stored)
/// but whose answer was lost, then whose retry was refused for good, fails as fate-unknown,
/// not with the refusal; sent again with its key it is not stored twice. A refusal without
/// a break stays the refusal. Before, the stored frame was reported `PermissionDenied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_write_broken_then_refused_is_stored_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let denied = || Act::Refuse(Code::PermissionDenied, "not allowed now".into());
    for method in ["Publish", "Broadcast"] {
        let topic = format!("unary-{method}");
        let script = [(
            method,
            vec![Act::BreakAfter { n: 0, leak: false }, denied()],
        )];
        let proxy = Proxy::start(&server.addr, &script).await;
        let c = client(&proxy.addr);
        let outcome = if method == "Publish" {
            bounded("publish", c.publish(&topic, 1, "once"))
                .await
                .map(|_| ())
        } else {
            bounded("broadcast", c.broadcast(&[topic.as_str()], 1, "once"))
                .await
                .map(|_| ())
        };
        assert_eq!(
            stored(&server, &topic).await,
            [1],
            "{method}: the broken attempt stored it"
        );
        assert!(
            matches!(&outcome, Err(Error::FateUnknown { refusal }) if refusal.contains("not allowed now")),
            "{method}: a stored frame reported {outcome:?}"
        );
    }
    // Refused without a break: the refusal, nothing stored.
    let proxy = Proxy::start(&server.addr, &[("Publish", vec![denied()])]).await;
    let outcome = bounded("publish", client(&proxy.addr).publish("unary-none", 1, "x")).await;
    assert!(
        matches!(
            &outcome,
            Err(Error::Server {
                code: Code::PermissionDenied,
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// The CLI's account of the same: the frames after the last ack are counted as sent and
/// not acknowledged (stored or not), not "nothing after it was sent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_counts_frames_sent_before_a_refusal_as_stored_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let script = [(
        "PublishStream",
        vec![
            Act::BreakAfter { n: 3, leak: false },
            Act::Refuse(Code::Unauthenticated, "token expired at X".into()),
        ],
    )];
    let proxy = Proxy::start(&server.addr, &script).await;
    let addr = proxy.addr.clone();
    let ran = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "publish",
            "--addr",
            &addr,
            "--topic",
            "nr",
            "--timeout",
            "20s",
        ];
        let payloads = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
        args.extend(payloads);
        common::cli::run(&args, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let stored = stored(&server, "nr").await;
    assert!(stored.len() >= 4, "stored {stored:?}");
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("3 frames acknowledged"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr
            .contains("sent and not acknowledged: stored or not"),
        "stored {stored:?}, yet: {}",
        ran.stderr
    );
    assert!(
        !ran.stderr.contains("nothing after it was sent"),
        "stored {stored:?}, yet: {}",
        ran.stderr
    );
}

/// With `--max-subscribers 1`, the proxy breaks the subscription after three frames and
/// keeps its stream to the server open (a connection that died half-open, which the server
/// counts until its keepalive notices). The resume is refused `RESOURCE_EXHAUSTED`: the
/// subscription backs off and asks again, and once the old stream is gone it goes on
/// exactly. A new subscription refused so at its first open fails at once. Before, the
/// resumed subscription ended at the first `RESOURCE_EXHAUSTED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_subscription_waits_out_its_own_half_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never", "--max-subscribers", "1"]);
    let script = [("Subscribe", vec![Act::BreakAfter { n: 3, leak: true }])];
    let proxy = Proxy::start(&server.addr, &script).await;
    let c = client(&proxy.addr);
    for seq in 0..6u64 {
        c.publish("busy", seq, format!("f{seq}")).await.unwrap();
    }
    let mut sub = c.subscribe("busy", 0);
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < 6 {
            match sub.next().await {
                Some(Ok(f)) => seqs.push(f.seq_no),
                other => return Err((seqs, format!("{other:?}"))),
            }
        }
        Ok(seqs)
    });
    until("a resume refused RESOURCE_EXHAUSTED", || {
        proxy.answered("Subscribe", Code::ResourceExhausted) >= 1
    })
    .await;
    // A first open refused so is final, at once.
    let refused = bounded("a new subscription", c.subscribe("busy", 0).next()).await;
    assert!(
        matches!(refused, Some(Err(Error::ResourceExhausted(_)))),
        "{refused:?}"
    );
    assert!(!reading.is_finished(), "{:?}", reading.await);
    proxy.release();
    let seqs = bounded("the resumed subscription", reading).await.unwrap();
    assert_eq!(seqs, Ok(vec![0, 1, 2, 3, 4, 5]));
}

/// The server's History page budget answers `RESOURCE_EXHAUSTED` "…; ask again later": the
/// client asks again and gets the page. Any other `RESOURCE_EXHAUSTED` stays final. Before,
/// the first failed the call at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_page_refused_for_now_is_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--fsync", "never"]);
    let busy = format!(
        "128 MiB of History pages are waiting for their clients to read them; {}",
        framecast::proto::ASK_AGAIN_LATER
    );
    let script = [(
        "History",
        vec![Act::Refuse(Code::ResourceExhausted, busy), Act::Forward],
    )];
    let proxy = Proxy::start(&server.addr, &script).await;
    let c = client(&proxy.addr);
    for seq in 0..3u64 {
        c.publish("h", seq, format!("f{seq}")).await.unwrap();
    }
    let page = bounded("history", c.history("h", &HistoryQuery::from(0))).await;
    let page = page.expect("the page refused for now was not asked again");
    assert_eq!(page.frames.len(), 3);
    assert_eq!(proxy.calls("History"), 2);

    let script = [(
        "History",
        vec![Act::Refuse(
            Code::ResourceExhausted,
            "too many subscribers".into(),
        )],
    )];
    let proxy = Proxy::start(&server.addr, &script).await;
    let refused = bounded(
        "history",
        client(&proxy.addr).history("h", &HistoryQuery::from(0)),
    )
    .await;
    assert!(
        matches!(refused, Err(Error::ResourceExhausted(_))),
        "{refused:?}"
    );
    assert_eq!(proxy.calls("History"), 1);
}
