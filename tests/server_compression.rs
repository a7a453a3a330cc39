//! gRPC message compression against the real server: gzip and zstd requests are accepted,
//! and responses are compressed exactly when the client asks for it in
//! `grpc-accept-encoding` (seen in the response's `grpc-encoding` header); a client that
//! asks for nothing gets plain responses.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;
use framecast::client::{Client, Compression};
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::ListTopicsRequest;
use futures::StreamExt;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const LIMIT: Duration = Duration::from_secs(20);

/// A JSON-ish payload of exactly `len` bytes whose records differ from frame to frame.
fn json_payload(frame: u64, len: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < len {
        let x = (frame * 7919 + i * 104_729) % 1_000_003;
        s.push_str(&format!(
            "{{\"sym\":\"S{:03}\",\"bid\":{}.{:04},\"qty\":{},\"seq\":{}}},",
            x % 500,
            x / 1000,
            x % 10_000,
            (x % 97) * 100,
            frame * 1000 + i
        ));
        i += 1;
    }
    s.truncate(len);
    s.into_bytes()
}

fn encoding(md: &MetadataMap) -> Option<String> {
    md.get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn channel(addr: &str) -> Channel {
    connect(addr).await;
    Channel::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_round_trips_4kib_json_with_gzip_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    for compression in [Compression::Gzip, Compression::Zstd] {
        let topic = format!("json-{compression}");
        let client = Client::connect(&server.addr)
            .unwrap()
            .with_compression(compression);
        let sent: Vec<Vec<u8>> = (0..20).map(|i| json_payload(i, 4096)).collect();
        // Unary publishes (coalescing off), then pipelined ones: both request paths
        // compressed.
        let unary = client.clone().with_coalescing(false);
        for (i, p) in sent.iter().enumerate().take(10) {
            let ack = unary.publish(&topic, i as u64, p.clone()).await.unwrap();
            assert_eq!(ack.offset, i as u64);
        }
        let publisher = client.publisher(&topic);
        let mut pending = Vec::new();
        for (i, p) in sent.iter().enumerate().skip(10) {
            pending.push(publisher.send(i as u64, p.clone()).await.unwrap());
        }
        for p in pending {
            p.await.unwrap();
        }
        let mut frames = client.subscribe(&topic, 0);
        for (i, expected) in sent.iter().enumerate() {
            let f = tokio::time::timeout(LIMIT, frames.next())
                .await
                .unwrap_or_else(|_| panic!("{compression}: timed out at frame {i}"))
                .expect("stream ended")
                .unwrap();
            assert_eq!(f.seq_no, i as u64, "{compression}");
            assert_eq!(f.payload.len(), 4096, "{compression}");
            assert!(
                f.payload.as_ref() == expected.as_slice(),
                "{compression}: frame {i} differs"
            );
        }
        // And a live frame after the history.
        let live = json_payload(99, 4096);
        client.publish(&topic, 99, live.clone()).await.unwrap();
        let f = tokio::time::timeout(LIMIT, frames.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            f.live && f.payload.as_ref() == live.as_slice(),
            "{compression}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_only_when_the_client_asks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let ch = channel(&server.addr).await;
    let base = || BroadcastClient::new(ch.clone()).max_decoding_message_size(64 << 20);
    let payload = json_payload(1, 4096);

    // (client, the grpc-encoding its responses must carry)
    let cases: Vec<(&str, BroadcastClient<Channel>, Option<&str>)> = vec![
        ("plain", base(), None),
        (
            "gzip both ways",
            base()
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip),
            Some("gzip"),
        ),
        (
            "zstd both ways",
            base()
                .send_compressed(CompressionEncoding::Zstd)
                .accept_compressed(CompressionEncoding::Zstd),
            Some("zstd"),
        ),
        (
            "gzip requests, plain answers asked",
            base().send_compressed(CompressionEncoding::Gzip),
            None,
        ),
        (
            "plain requests, zstd answers asked",
            base().accept_compressed(CompressionEncoding::Zstd),
            Some("zstd"),
        ),
    ];
    for (i, (name, mut c, want)) in cases.into_iter().enumerate() {
        let topic = format!("enc-{i}");
        let ack = c
            .publish(req(&topic, 1, &payload))
            .await
            .unwrap_or_else(|s| panic!("{name}: publish refused: {s}"));
        assert_eq!(encoding(ack.metadata()).as_deref(), want, "{name}: Publish");
        assert_eq!(ack.into_inner().offset, 0, "{name}");

        let topics = c.list_topics(ListTopicsRequest {}).await.unwrap();
        assert_eq!(
            encoding(topics.metadata()).as_deref(),
            want,
            "{name}: ListTopics"
        );

        let resp = c.subscribe(sub_req(&topic, 0)).await.unwrap();
        assert_eq!(
            encoding(resp.metadata()).as_deref(),
            want,
            "{name}: Subscribe"
        );
        let mut stream = resp.into_inner();
        let got = take(&mut stream, 1, LIMIT).await;
        assert_eq!(got[0].payload.as_ref(), payload.as_slice(), "{name}");
    }

    // The health service speaks both too.
    let mut health = HealthClient::new(ch.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let r = health
        .check(HealthCheckRequest {
            service: "framecast.v1.Broadcast".into(),
        })
        .await
        .unwrap();
    assert_eq!(encoding(r.metadata()).as_deref(), Some("gzip"), "health");
    let mut plain_health = HealthClient::new(ch);
    let r = plain_health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(encoding(r.metadata()), None, "plain health");
}

/// A gzip-compressed message small on the wire that unpacks past the decoding limit (9 MiB
/// of zeros against 8 MiB) is the `INVALID_ARGUMENT` of a payload over `--max-frame-bytes`
/// in every call, as an uncompressed one is: tonic refuses it with `RESOURCE_EXHAUSTED`
/// before any handler runs, and a publish stream ended cleanly leaving it unanswered.
/// Nothing is stored but the frame before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_message_that_unpacks_past_the_limit_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-frame-bytes", "1024"]);
    let mut c = BroadcastClient::new(channel(&server.addr).await)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(64 << 20);
    let zeros = vec![0u8; 9 << 20];
    let over = |st: tonic::Status, what: &str| {
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{what}: {st:?}");
        assert!(
            st.message().contains("--max-frame-bytes 1024"),
            "{what}: {st:?}"
        );
    };
    let st = c.publish(req("z", 1, &zeros)).await.unwrap_err();
    over(st, "unary publish");
    let st = c
        .broadcast(framecast::proto::BroadcastRequest {
            topics: vec!["z".into()],
            seq_no: 2,
            payload: zeros.clone().into(),
            timestamp: 0,
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    over(st, "broadcast");
    let reqs = vec![req("z", 3, b"small"), req("z", 4, &zeros)];
    let mut acks = c
        .publish_stream(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let first = acks
        .message()
        .await
        .unwrap()
        .expect("the small frame's ack");
    assert_eq!(first.offset, 0);
    let st = acks
        .message()
        .await
        .expect_err("the stream ended cleanly, leaving request 1 unanswered");
    assert!(st.message().starts_with("request 1: "), "{st:?}");
    over(st, "publish stream");
    let log = read_log(&mut c, "z").await;
    assert_eq!(log.len(), 1, "only the small frame is stored");
}
