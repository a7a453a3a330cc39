//! Storage engine benchmarks (issue 2): append throughput without syncs, group commit under
//! `FsyncPolicy::Always` for each `SyncMethod`, recovery speed, and index memory per frame.
//!
//! Run with `cargo bench --bench wal`; BENCHMARKS.md records the figures next to their
//! targets. Log directories are made under `/tmp` (or `$FRAMECAST_BENCH_DIR`).
//!
//! Criterion 0.7 takes one `Throughput` per benchmark, so each benchmark reports the unit its
//! target is stated in (frames/s for 100 B frames, bytes/s for 4 KiB frames and recovery),
//! and each prints a `wal-summary:` line on stderr with the rest: frames/s, MB/s of payload,
//! syncs/s and frames per sync, over every run of that benchmark (warm-up included).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use framecast::wal::record::encoded_len;
use framecast::wal::{FsyncPolicy, Log, LogConfig, LogStats, NewFrame, SyncMethod};
use tempfile::TempDir;

/// Payload source: `Bytes::from_static` clones without touching a shared refcount, so the
/// appender and the committer thread never contend on it.
static PAYLOAD: [u8; 4096] = [0xA5; 4096];

/// Bytes prefilled for the recovery benchmarks.
const RECOVERY_BYTES: u64 = 256 << 20;

/// Frames appended for the index-memory figures.
const INDEX_FRAMES: u64 = 1_000_000;

fn bench_root() -> PathBuf {
    std::env::var_os("FRAMECAST_BENCH_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

fn bench_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("framecast-bench-")
        .tempdir_in(bench_root())
        .expect("cannot make a bench directory")
}

fn config(fsync: FsyncPolicy, sync_method: SyncMethod) -> LogConfig {
    LogConfig {
        fsync,
        sync_method,
        ..LogConfig::default()
    }
}

fn open(dir: &Path, fsync: FsyncPolicy, sync_method: SyncMethod) -> Log {
    Log::open(dir, config(fsync, sync_method)).expect("cannot open the log")
}

fn frame(seq_no: u64, size: usize) -> NewFrame {
    NewFrame {
        seq_no,
        timestamp: 0,
        key: Bytes::new(),
        payload: Bytes::from_static(&PAYLOAD[..size]),
    }
}

/// `n` frames of `size` bytes with increasing seq_no, continuing from `*seq`.
fn frames(seq: &mut u64, n: usize, size: usize) -> Vec<NewFrame> {
    (0..n)
        .map(|_| {
            *seq += 1;
            frame(*seq, size)
        })
        .collect()
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// Totals over every run of one benchmark, for the figures criterion does not report.
#[derive(Default)]
struct Tally {
    frames: u64,
    payload_bytes: u64,
    syncs: u64,
    elapsed: Duration,
}

impl Tally {
    fn add(&mut self, frames: u64, payload_bytes: u64, syncs: u64, elapsed: Duration) {
        self.frames += frames;
        self.payload_bytes += payload_bytes;
        self.syncs += syncs;
        self.elapsed += elapsed;
    }

    fn report(&self, name: &str) {
        if self.frames == 0 {
            return; // Skipped by a filter.
        }
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "wal-summary: {name}: {:.0} frames/s, {:.1} MB/s payload, {:.0} syncs/s, \
             {:.1} frames/sync ({} frames in {:.2} s)",
            self.frames as f64 / secs,
            self.payload_bytes as f64 / secs / 1e6,
            self.syncs as f64 / secs,
            self.frames as f64 / (self.syncs.max(1)) as f64,
            self.frames,
            secs,
        );
    }
}

/// (a) `FsyncPolicy::Never`, one appender. A fresh log per sample keeps every sample in the
/// same state (segment rolls included, at their steady-state rate); creating and removing it
/// is not timed.
fn append_never(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_never");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat);
    for (size, batch) in [(100, 256), (4096, 256), (100, 1), (4096, 1)] {
        let frames_per_call = batch as u64;
        g.throughput(if size < 1024 {
            Throughput::Elements(frames_per_call)
        } else {
            Throughput::Bytes(frames_per_call * size as u64)
        });
        let name = format!("{}/{batch}_per_call", size_label(size));
        let mut tally = Tally::default();
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let dir = bench_dir();
                let log = open(dir.path(), FsyncPolicy::Never, SyncMethod::Msync);
                let mut seq = 0;
                // Starts the committer thread before the clock does.
                log.append(frames(&mut seq, 1, size)).expect("append");
                let syncs = log.stats().syncs;
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(log.append(frames(&mut seq, batch, size)).expect("append"));
                }
                let elapsed = start.elapsed();
                let n = iters * frames_per_call;
                tally.add(n, n * size as u64, log.stats().syncs - syncs, elapsed);
                drop(log);
                drop(dir);
                elapsed
            })
        });
        tally.report(&format!("append_never/{name}"));
    }
    g.finish();
}

/// (b) `FsyncPolicy::Always`, one 100 B frame per call from 1, 8 and 64 threads: group
/// commit shares each sync between the threads waiting on it. One iteration is one frame.
fn append_always(c: &mut Criterion) {
    const SIZE: usize = 100;
    let mut g = c.benchmark_group("append_always");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(1));
    // Each thread count runs both methods back to back, so that the pair sees the same disk
    // (a sync's latency here depends on whatever else the machine is writing).
    for threads in [1usize, 8, 64] {
        for method in [SyncMethod::Msync, SyncMethod::Fdatasync] {
            let dir = bench_dir();
            let log = open(dir.path(), FsyncPolicy::Always, method);
            // One seq_no counter for all threads keeps keys (nearly) in order, so the
            // figure is about syncs, not out-of-order index inserts.
            let seq = AtomicU64::new(0);
            log.append(vec![frame(0, SIZE)]).expect("append");
            let name = format!("{}/{threads}_threads", format!("{method:?}").to_lowercase());
            let mut tally = Tally::default();
            g.bench_function(&name, |b| {
                b.iter_custom(|iters| {
                    let syncs = log.stats().syncs;
                    let barrier = Barrier::new(threads + 1);
                    let start = std::thread::scope(|s| {
                        for t in 0..threads {
                            let share = iters / threads as u64
                                + u64::from((t as u64) < iters % threads as u64);
                            let (log, seq, barrier) = (&log, &seq, &barrier);
                            s.spawn(move || {
                                barrier.wait();
                                for _ in 0..share {
                                    let seq_no = seq.fetch_add(1, Ordering::Relaxed);
                                    black_box(
                                        log.append(vec![frame(seq_no, SIZE)]).expect("append"),
                                    );
                                }
                            });
                        }
                        barrier.wait();
                        Instant::now()
                    });
                    // The scope has joined every appender.
                    let elapsed = start.elapsed();
                    tally.add(
                        iters,
                        iters * SIZE as u64,
                        log.stats().syncs - syncs,
                        elapsed,
                    );
                    elapsed
                })
            });
            tally.report(&format!("append_always/{name}"));
        }
    }
    g.finish();
}

/// Whether the positional filter given to the bench binary (if any) selects `name`. Used by
/// the parts that are not criterion benchmarks; criterion applies its own filter to the rest.
fn selected(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

/// Appends one 100 B frame per call from `threads` threads for `how_long`; returns frames,
/// syncs and elapsed time.
fn timed_round(log: &Log, threads: usize, how_long: Duration) -> (u64, u64, Duration) {
    let syncs = log.stats().syncs;
    let frames = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while start.elapsed() < how_long {
                    let seq_no = frames.fetch_add(1, Ordering::Relaxed);
                    black_box(log.append(vec![frame(seq_no, 100)]).expect("append"));
                }
            });
        }
    });
    (
        frames.load(Ordering::Relaxed),
        log.stats().syncs - syncs,
        start.elapsed(),
    )
}

/// (b, continued) The two sync methods compared in alternating 0.4 s rounds, which side goes
/// first swapping each round: separate criterion runs minutes apart differ by up to 5x here,
/// because a sync's latency depends on what else the machine writes; alternation cancels
/// that drift. Prints medians of per-round frames/s; not a criterion benchmark.
fn sync_method_ab(_: &mut Criterion) {
    const ROUNDS: usize = 10;
    const ROUND: Duration = Duration::from_millis(400);
    if !selected("sync_method_ab") {
        return;
    }
    let methods = [SyncMethod::Msync, SyncMethod::Fdatasync];
    for threads in [1usize, 8, 64] {
        let dirs = [bench_dir(), bench_dir()];
        let logs = [0, 1].map(|i| open(dirs[i].path(), FsyncPolicy::Always, methods[i]));
        let mut rates = [Vec::new(), Vec::new()];
        let mut tallies = [Tally::default(), Tally::default()];
        for round in 0..ROUNDS {
            for k in 0..2 {
                let i = (round + k) % 2;
                let (frames, syncs, elapsed) = timed_round(&logs[i], threads, ROUND);
                rates[i].push(frames as f64 / elapsed.as_secs_f64());
                tallies[i].add(frames, frames * 100, syncs, elapsed);
            }
        }
        for i in 0..2 {
            let name = format!("{:?}", methods[i]).to_lowercase();
            let r = &mut rates[i];
            r.sort_by(f64::total_cmp);
            eprintln!(
                "wal-summary: sync_method_ab/{name}/{threads}_threads: median {:.0} frames/s \
                 over {ROUNDS} rounds (min {:.0}, max {:.0})",
                r[ROUNDS / 2],
                r[0],
                r[ROUNDS - 1],
            );
            tallies[i].report(&format!("sync_method_ab/{name}/{threads}_threads"));
        }
    }
}

/// Frames per append call when prefilling for the recovery benchmarks.
const PREFILL_BATCH: usize = 256;

/// Appends `calls` batches of `size`-byte frames under `FsyncPolicy::Never`.
fn prefill(dir: &Path, size: usize, calls: u64) {
    let log = open(dir, FsyncPolicy::Never, SyncMethod::Msync);
    let mut seq = 0;
    for _ in 0..calls {
        log.append(frames(&mut seq, PREFILL_BATCH, size))
            .expect("append");
    }
    log.close();
}

/// (c) Recovery: `Log::open` of a prefilled directory whose files are in the page cache.
/// Only the open is timed; unmapping the segments on drop is not. The directory is filled
/// on first use, so a filter that skips a benchmark also skips its prefill.
fn recovery(c: &mut Criterion) {
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat);
    for size in [100usize, 4096] {
        let batch_bytes = PREFILL_BATCH as u64 * encoded_len(0, size) as u64;
        let calls = RECOVERY_BYTES.div_ceil(batch_bytes);
        let bytes = calls * batch_bytes;
        g.throughput(Throughput::Bytes(bytes));
        let name = format!("{}_frames", size_label(size));
        let mut prefilled: Option<(TempDir, LogStats)> = None;
        let mut total = Duration::ZERO;
        let mut opens = 0u64;
        g.bench_function(&name, |b| {
            let (dir, _) = prefilled.get_or_insert_with(|| {
                let dir = bench_dir();
                prefill(dir.path(), size, calls);
                // Also reads every file once, so the timed opens find them cached.
                let stats = open(dir.path(), FsyncPolicy::Never, SyncMethod::Msync).stats();
                assert_eq!(stats.bytes, bytes, "prefill wrote an unexpected amount");
                (dir, stats)
            });
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let log = open(dir.path(), FsyncPolicy::Never, SyncMethod::Msync);
                    elapsed += start.elapsed();
                    black_box(&log);
                    drop(log);
                }
                total += elapsed;
                opens += iters;
                elapsed
            })
        });
        if let Some((_, stats)) = &prefilled {
            let secs = total.as_secs_f64().max(1e-9);
            eprintln!(
                "wal-summary: recovery/{name}: {} frames, {} bytes in {} segments; \
                 {:.2} GB/s, {:.2} M frames/s",
                stats.frames,
                stats.bytes,
                stats.segments,
                (stats.bytes * opens) as f64 / secs / 1e9,
                (stats.frames * opens) as f64 / secs / 1e6,
            );
        }
    }
    g.finish();
}

/// A fixed pseudo-random sequence (splitmix64), so runs are comparable.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// (d) Index memory: `stats().index_bytes / frames` after 1 M frames of 100 B with
/// increasing and with random seq_no. One iteration is the whole 1 M appends to a fresh log
/// (in batches of 1024, `Never`), so criterion also reports what out-of-order keys cost.
fn index_memory(c: &mut Criterion) {
    const SIZE: usize = 100;
    const BATCH: u64 = 1024;
    let mut g = c.benchmark_group("index_memory");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        // Random keys take about 1.5 s per iteration; criterion needs 10 of them.
        .measurement_time(Duration::from_secs(15))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(INDEX_FRAMES));
    for random in [false, true] {
        let name = if random {
            "1M_random_seq_no"
        } else {
            "1M_increasing_seq_no"
        };
        let mut reported = false;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let dir = bench_dir();
                    let log = open(dir.path(), FsyncPolicy::Never, SyncMethod::Msync);
                    let mut rng = 42u64;
                    let mut next = 0u64;
                    let start = Instant::now();
                    while next < INDEX_FRAMES {
                        let n = BATCH.min(INDEX_FRAMES - next);
                        let batch = (0..n)
                            .map(|i| {
                                let seq_no = if random {
                                    splitmix64(&mut rng)
                                } else {
                                    next + i
                                };
                                frame(seq_no, SIZE)
                            })
                            .collect();
                        log.append(batch).expect("append");
                        next += n;
                    }
                    elapsed += start.elapsed();
                    if !reported {
                        reported = true;
                        let stats = log.stats();
                        eprintln!(
                            "wal-summary: index_memory/{name}: {} index bytes for {} frames \
                             = {:.2} bytes/frame ({} segments)",
                            stats.index_bytes,
                            stats.frames,
                            stats.index_bytes as f64 / stats.frames as f64,
                            stats.segments,
                        );
                    }
                }
                elapsed
            })
        });
    }
    g.finish();
}

/// Live keys held by the dedup window in [`dedup_keys_below`]: `--dedup-max-keys`'s default,
/// what a topic holds when keyed publishing outruns the 2-minute window.
const DEDUP_KEYS: u64 = 2_000_000;

/// (e) The walk a retention pass or compaction makes over a topic's dedup window before it
/// deletes files (`DedupWindow::live_below`, under the log's writer lock: publishes to
/// that topic wait for it), with the window full, half of its keys below the bound.
fn dedup_keys_below(c: &mut Criterion) {
    let mut g = c.benchmark_group("dedup_keys_below");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(DEDUP_KEYS));
    let now = framecast::wal::now_ns();
    let mut window = framecast::wal::DedupWindow::new(i64::MAX / 2, DEDUP_KEYS as usize);
    for offset in 0..DEDUP_KEYS {
        let key = format!("publisher-7-{offset:012}");
        let ack = framecast::wal::FirstAck {
            offset,
            timestamp: 1,
            stored_at: now,
        };
        window.insert(key.as_bytes(), ack, now);
    }
    g.bench_function("2M_keys_half_below", |b| {
        b.iter(|| black_box(window.live_below(DEDUP_KEYS / 2, &[], now).len()))
    });
    // Retention keeping more than the window: no live key lies below the bound.
    g.bench_function("2M_keys_none_below", |b| {
        b.iter(|| black_box(window.live_below(0, &[], now).len()))
    });
    g.finish();
    // What one piece of that walk costs: the longest the log's writer lock is held for it.
    let mut g = c.benchmark_group("dedup_keys_below_piece");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(
            framecast::wal::LIVE_BELOW_PIECE as u64,
        ));
    g.bench_function("2M_keys_one_piece", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            black_box(window.live_below_from(0, DEDUP_KEYS / 2, &[], now, &mut out));
            out.len()
        })
    });
    g.finish();
}

/// (f) One keyed insert into a full dedup window (each takes the place of the oldest key:
/// the steady state of keyed publishing faster than the window), per key length.
fn dedup_insert(c: &mut Criterion) {
    const CAP: usize = 200_000;
    let mut g = c.benchmark_group("dedup_insert");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    let now = framecast::wal::now_ns();
    for len in [36usize, 120] {
        // Twice the cap of distinct keys, used in turn: every insert is of a key not held.
        let keys: Vec<String> = (0..2 * CAP).map(|i| format!("{i:0>len$}")).collect();
        let mut window = framecast::wal::DedupWindow::new(i64::MAX / 2, CAP);
        let mut offset = 0u64;
        let mut insert = |window: &mut framecast::wal::DedupWindow| {
            let key = &keys[offset as usize % keys.len()];
            let ack = framecast::wal::FirstAck {
                offset,
                timestamp: 1,
                stored_at: now,
            };
            window.insert(key.as_bytes(), ack, now);
            offset += 1;
        };
        for _ in 0..CAP {
            insert(&mut window);
        }
        g.bench_function(format!("full_window_key_{len}B"), |b| {
            b.iter(|| insert(black_box(&mut window)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    append_never,
    append_always,
    sync_method_ab,
    recovery,
    index_memory,
    dedup_keys_below,
    dedup_insert
);
criterion_main!(benches);
