//! The topic registry as a follower uses it: a copy of a leader's topic keeps the leader's
//! epoch and settings (across restarts), and a cut of frames a new leader lacks reopens the
//! topic, ends its open streams with UNAVAILABLE, keeps the cut frames in `.torn` files, and
//! lets publishing and subscribing continue from the cut.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tonic::Code;

use framecast::broker::cluster_view::{ClusterView, ThisNode};
use framecast::broker::metrics::{Metrics, Transport};
use framecast::broker::principal::Principal;
use framecast::broker::shutdown::{self, ShutdownTrigger};
use framecast::broker::{Broker, Error, TopicMeta, Topics};
use framecast::proto;
use framecast::wal::LogConfig;

fn open(dir: &std::path::Path) -> (Arc<Topics>, Broker, ShutdownTrigger) {
    let metrics = Arc::new(Metrics::new(100));
    let topics = Arc::new(Topics::open(dir, LogConfig::default(), true, metrics).unwrap());
    let view = ClusterView::single_node(
        Arc::clone(&topics),
        ThisNode {
            id: "n1".into(),
            address: "127.0.0.1:1".into(),
            http_address: String::new(),
        },
    );
    let (trigger, signal) = shutdown::channel();
    let broker = Broker::new(Arc::clone(&topics), signal, 10, None, view);
    (topics, broker, trigger)
}

async fn publish(broker: &Broker, topic: &str, seq_no: u64) -> u64 {
    let r = proto::PublishRequest {
        seq_no,
        payload: bytes::Bytes::from(format!("frame {seq_no}")),
        timestamp: 0,
        topic: topic.into(),
        idempotency_key: String::new(),
    };
    broker
        .publish(&Principal::anonymous(), r)
        .await
        .unwrap()
        .offset
}

#[tokio::test]
async fn a_copy_keeps_the_leaders_epoch_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let meta = TopicMeta {
        epoch: 42,
        retention_max_age_seconds: 60,
        retention_max_bytes: 0,
    };
    {
        let (topics, _broker, _t) = open(dir.path());
        let (t, created) = topics.create_copy("prices", meta).await.unwrap();
        assert!(created);
        assert_eq!(*t.meta(), meta);
        let (again, created) = topics.create_copy("prices", meta).await.unwrap();
        assert!(!created);
        assert!(Arc::ptr_eq(&t, &again));
        // Another epoch under the same name is a stale copy: refused, not merged.
        let other = TopicMeta { epoch: 43, ..meta };
        let err = topics.create_copy("prices", other).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        let zero = TopicMeta { epoch: 0, ..meta };
        let err = topics.create_copy("zero", zero).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(topics.get("zero").is_none());
        topics.close_all();
    }
    let (topics, _broker, _t) = open(dir.path());
    assert_eq!(*topics.get("prices").unwrap().meta(), meta);
}

#[tokio::test]
async fn a_cut_reopens_the_topic_and_ends_its_streams_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (topics, broker, _t) = open(dir.path());
    for seq_no in 0..10 {
        assert_eq!(publish(&broker, "t", seq_no).await, seq_no);
    }
    let old = topics.get("t").unwrap();
    let epoch = old.meta().epoch;
    let who = Principal::anonymous();
    let req = proto::SubscribeRequest {
        replay_seq_no_start: 0,
        topic: "t".into(),
        resume: None,
    };
    let opened = broker.subscribe(&who, &req, Transport::Grpc).await.unwrap();
    let mut stream = opened.subscription.into_stream();
    for want in 0..10 {
        let f = stream.next().await.unwrap().unwrap();
        assert_eq!(f.offset, want);
    }

    // Nothing at or past the end: nothing cut, the same topic.
    assert_eq!(topics.cut_and_reopen("t", 10).await.unwrap(), None);
    assert!(Arc::ptr_eq(&old, &topics.get("t").unwrap()));

    let cut = topics.cut_and_reopen("t", 6).await.unwrap().unwrap();
    assert_eq!(cut.from, 6);
    assert!(cut.bytes > 0);
    assert!(cut.kept.iter().all(|p| p.exists()), "{:?}", cut.kept);
    // The open stream ends, with UNAVAILABLE: a resume continues on the reopened topic.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::Unavailable, "{end}");

    let new = topics.get("t").unwrap();
    assert!(!Arc::ptr_eq(&old, &new));
    assert_eq!(new.meta().epoch, epoch, "a cut keeps the epoch");
    assert_eq!(new.visible_offset(), 6);
    // Publishing continues from the cut; a new subscription sees 0..6 then the new frame.
    assert_eq!(publish(&broker, "t", 100).await, 6);
    let opened = broker.subscribe(&who, &req, Transport::Grpc).await.unwrap();
    assert_eq!(opened.snapshot_offset, 7);
    let mut stream = opened.subscription.into_stream();
    let mut seen = Vec::new();
    for _ in 0..7 {
        let f = stream.next().await.unwrap().unwrap();
        seen.push((f.seq_no, f.offset));
    }
    let want: Vec<(u64, u64)> = (0..6).map(|i| (i, i)).chain([(100, 6)]).collect();
    assert_eq!(seen, want);

    // And after a restart, the same.
    drop(stream);
    drop((new, old));
    topics.close_all();
    drop((broker, topics));
    let (topics, _broker, _t) = open(dir.path());
    let t = topics.get("t").unwrap();
    assert_eq!((t.visible_offset(), t.meta().epoch), (7, epoch));
}

/// A new leader begins its term in every topic at once: each history records the term at the
/// topic's end, durably (a reopen reads it back), and beginning the same term again writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_term_begins_in_every_topic_at_its_end_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ends = {
        let (topics, broker, _trigger) = open(dir.path());
        for seq in 0..5 {
            publish(&broker, "busy", seq).await;
        }
        publish(&broker, "quiet", 0).await;
        topics.create("empty", 0, 0).await.unwrap();
        assert_eq!(topics.begin_term_all(7).await.unwrap(), 3);
        assert_eq!(topics.begin_term_all(7).await.unwrap(), 0);
        let ends: Vec<(String, u64)> = topics
            .list()
            .iter()
            .map(|t| {
                let last = *t.terms().entries().last().unwrap();
                assert_eq!(last.term, 7, "{}", t.name());
                (t.name().to_string(), last.start)
            })
            .collect();
        topics.close_all();
        ends
    };
    assert_eq!(
        ends,
        [
            ("busy".to_string(), 5),
            ("empty".to_string(), 0),
            ("quiet".to_string(), 1)
        ]
    );
    let (topics, _broker, _trigger) = open(dir.path());
    for (name, start) in ends {
        let last = *topics.get(&name).unwrap().terms().entries().last().unwrap();
        assert_eq!((last.term, last.start), (7, start), "{name}");
    }
}
