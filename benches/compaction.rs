//! Compaction figures (issue 4): replay of 1 million frames with random seq_nos before and
//! after compaction, disk bytes, index memory per frame, and append latency while a
//! compaction runs versus idle.
//!
//! Run: `cargo bench --bench compaction`. Frames and sizes can be scaled with
//! `FRAMECAST_BENCH_FRAMES` (default 1,000,000).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use framecast::index::OrderKey;
use framecast::wal::{CompactOptions, FsyncPolicy, Log, LogConfig, NewFrame};
use rand::{Rng, SeedableRng};

fn frames() -> u64 {
    std::env::var("FRAMECAST_BENCH_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 16 << 20,
        fsync,
        max_frame_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// Bytes the directory takes on disk (allocated blocks, so preallocated space counts).
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

fn fill(log: &Log, n: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let payload = Bytes::from(vec![b'p'; 100]);
    let mut done = 0;
    while done < n {
        let batch: Vec<NewFrame> = (0..1000.min(n - done))
            .map(|_| NewFrame {
                seq_no: rng.random_range(0..u64::MAX / 2),
                timestamp: 1,
                key: Bytes::new(),
                payload: payload.clone(),
            })
            .collect();
        done += log.append(batch).unwrap().len() as u64;
    }
}

/// A full replay in order-key order, in batches as a subscriber reads it.
fn replay(log: &Log) -> u64 {
    let mut from = OrderKey::first_of_seq(0);
    let mut n = 0u64;
    let mut batch = Vec::with_capacity(256);
    loop {
        batch.clear();
        let done = log.read_ordered(&from, u64::MAX, 256, &mut batch).unwrap();
        n += batch.len() as u64;
        if let Some(last) = batch.last() {
            from = last.key().successor().unwrap();
        }
        if done {
            return n;
        }
    }
}

fn replay_before_and_after(c: &mut Criterion) {
    let n = frames();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).unwrap();
    fill(&log, n);
    let before = log.stats();
    let disk_before = disk_bytes(dir.path());
    let mut g = c.benchmark_group("replay_1m_random_seq");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(15))
        .throughput(Throughput::Elements(n));
    g.bench_function("before_compaction", |b| {
        b.iter(|| assert_eq!(replay(&log), n))
    });
    let started = Instant::now();
    let report = log
        .compact(&CompactOptions {
            bytes_per_sec: None,
            max_runs: 1,
            ..CompactOptions::default()
        })
        .unwrap();
    let took = started.elapsed();
    let after = log.stats();
    let disk_after = disk_bytes(dir.path());
    g.bench_function("after_compaction", |b| {
        b.iter(|| assert_eq!(replay(&log), n))
    });
    g.finish();
    eprintln!(
        "compaction of {} frames ({} segments) took {:.2} s ({:.0} MB/s written)",
        report.frames,
        report.segments_in,
        took.as_secs_f64(),
        report.bytes_out as f64 / took.as_secs_f64() / 1e6
    );
    eprintln!(
        "index bytes/frame: before {:.2}, after {:.3} (active segment frames stay dense: {})",
        before.index_bytes as f64 / n as f64,
        after.index_bytes as f64 / n as f64,
        n - report.frames
    );
    eprintln!(
        "disk bytes: before {} ({:.1} MB, preallocated segments), after {} ({:.1} MB); records {} bytes",
        disk_before,
        disk_before as f64 / 1e6,
        disk_after,
        disk_after as f64 / 1e6,
        after.bytes
    );
}

/// Append latency (fsync always, one appender) idle and while a rate-limited compaction of
/// a large backlog runs.
fn append_latency_during_compaction(c: &mut Criterion) {
    let n = frames();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(FsyncPolicy::Always)).unwrap();
    fill(&log, n);
    let one = || NewFrame {
        seq_no: 1,
        timestamp: 0,
        key: Bytes::new(),
        payload: Bytes::from(vec![b'l'; 100]),
    };
    let sample = |log: &Log, count: usize| -> Vec<Duration> {
        let mut lat = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            log.append(vec![one()]).unwrap();
            lat.push(t.elapsed());
        }
        lat.sort();
        lat
    };
    let p = |lat: &[Duration], q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let idle = sample(&log, 2000);
    let log = std::sync::Arc::new(log);
    let compactor = {
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            log.compact(&CompactOptions {
                bytes_per_sec: Some(64 << 20),
                max_runs: 1,
                ..CompactOptions::default()
            })
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut busy = Vec::new();
    while !compactor.is_finished() {
        busy.extend(sample(&log, 200));
    }
    let report = compactor.join().unwrap();
    busy.sort();
    eprintln!(
        "append latency, fsync always, 1 appender: idle p50 {:?} p99 {:?}; during compaction ({} frames, 64 MB/s budget, {} samples) p50 {:?} p99 {:?}; p99 ratio {:.2}",
        p(&idle, 0.5),
        p(&idle, 0.99),
        report.frames,
        busy.len(),
        p(&busy, 0.5),
        p(&busy, 0.99),
        p(&busy, 0.99).as_secs_f64() / p(&idle, 0.99).as_secs_f64()
    );
    // Keep criterion's report shape: a tiny group so the figure above is printed once.
    let mut g = c.benchmark_group("append_during_compaction");
    g.sample_size(10).measurement_time(Duration::from_secs(2));
    g.bench_function("append_always_idle", |b| {
        b.iter(|| log.append(vec![one()]).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    replay_before_and_after,
    append_latency_during_compaction
);
criterion_main!(benches);
