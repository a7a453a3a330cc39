//! Metrics hot-path cost: what a published or delivered frame pays through a pre-resolved
//! handle, alone and with two threads on the same counter, the publish histogram, and a
//! whole scrape (`encode`) with 1,000 topics.
//!
//! Run with `cargo bench --bench metrics`.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use framecast::broker::metrics::{
    text_format, Metrics, ReplicaLag, TopicGauges, Transport, DEFAULT_MAX_TOPICS,
};

fn counter_inc(c: &mut Criterion) {
    let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
    let topic = metrics.topic("bench");
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Elements(1));

    group.bench_function("counter_inc_handle", |b| {
        b.iter(|| black_box(&topic.published_frames).inc())
    });

    // Each iteration is one inc on each of two threads, both on the same counter: the cache
    // line moves between cores, which is the worst a hot counter can see.
    group.bench_function("counter_inc_2_threads_same_counter", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            black_box(topic.delivered(Transport::Grpc)).inc();
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    group.bench_function("observe_publish", |b| {
        b.iter(|| metrics.observe_publish(black_box(Duration::from_micros(180))))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let metrics = Metrics::new(DEFAULT_MAX_TOPICS);
    let topics: Vec<TopicGauges> = (0..1000u64)
        .map(|i| {
            let name = format!("topic-{i:04}");
            let handles = metrics.topic(&name);
            handles.published_frames.inc_by(i);
            handles.published_bytes.inc_by(i * 100);
            handles.delivered(Transport::Grpc).inc_by(i);
            handles.subscribers(Transport::Sse).inc();
            TopicGauges {
                topic: name,
                next_offset: i * 10,
                first_offset: i,
                stored_bytes: i * 4096,
                max_lag_frames: i % 7,
            }
        })
        .collect();
    let bytes = metrics.encode(&topics, &[]).len();
    eprintln!("metrics-summary: encode of 1000 topics is {bytes} bytes");

    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("encode_1000_topics", |b| {
        b.iter(|| black_box(metrics.encode(black_box(&topics), &[])))
    });
    // What /metrics serves to a scraper that does not ask for OpenMetrics (curl): the same
    // exposition rewritten in the Prometheus text format.
    let open = metrics.encode(&topics, &[]);
    group.bench_function("text_format_1000_topics", |b| {
        b.iter(|| black_box(text_format(black_box(&open))))
    });
    group.finish();

    // A cluster's leader: each topic's lag on each of two followers as well.
    let lags: Vec<ReplicaLag> = topics
        .iter()
        .flat_map(|t| {
            ["n2", "n3"].map(|node| ReplicaLag {
                topic: t.topic.clone(),
                node: node.to_owned(),
                frames: t.next_offset % 5,
            })
        })
        .collect();
    let bytes = metrics.encode(&topics, &lags).len();
    eprintln!(
        "metrics-summary: encode of 1000 topics on a leader of two followers is {bytes} bytes"
    );
    let mut group = c.benchmark_group("metrics");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("encode_1000_topics_leader_of_2", |b| {
        b.iter(|| black_box(metrics.encode(black_box(&topics), black_box(&lags))))
    });
    group.finish();
}

criterion_group!(benches, counter_inc, encode);
criterion_main!(benches);
