//! Many appenders and readers at once. Appenders must get distinct, dense offsets and share
//! syncs (group commit); readers following the durable frontier must see exactly what was
//! appended, in offset order, never a frame the frontier does not cover yet, and an ordered
//! read bounded by a snapshot must see exactly the frames below it.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use framecast::index::OrderKey;
use framecast::wal::committers;
use framecast::wal::{Appended, FsyncPolicy, Log, LogConfig, NewFrame, StoredFrame};
use rand::Rng;

mod common;
use common::{committer_threads, held_syncs};

const APPENDERS: u64 = 16;
const APPENDS_EACH: u64 = 200;
const FOLLOWERS: usize = 3;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_frame_bytes: 8 * 1024,
        fsync: FsyncPolicy::Always,
        ..Default::default()
    }
}

fn seq_no(thread: u64, i: u64) -> u64 {
    (thread << 32) | i
}

/// The payload of `seq_no`: its bytes repeated to a length that depends on it.
fn payload(seq_no: u64) -> Vec<u8> {
    let len = (seq_no.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as usize; // 0..512
    seq_no
        .to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// Checks one frame read back: a frame some appender wrote, unchanged.
fn check_frame(f: &StoredFrame) {
    let (thread, i) = (f.seq_no >> 32, f.seq_no & 0xffff_ffff);
    assert!(
        thread < APPENDERS && i < APPENDS_EACH * 3,
        "offset {}: seq_no {:#x} was never appended",
        f.offset,
        f.seq_no
    );
    assert!(
        f.payload[..] == payload(f.seq_no)[..],
        "offset {}: payload of seq_no {:#x} differs",
        f.offset,
        f.seq_no
    );
}

/// Follows the log by offset up to the durable frontier; returns the seq_no at each offset.
fn follow(log: &Log, appending: &AtomicBool) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    loop {
        let done = !appending.load(Ordering::Acquire);
        let frontier = log.durable_offset();
        let next = seen.len() as u64;
        out.clear();
        let end = log
            .read_range(next, frontier, 0, 200, &mut out)
            .expect("read_range");
        assert!(
            end <= frontier,
            "read past the frontier: {end} > {frontier}"
        );
        assert_eq!(end, next + out.len() as u64, "no gaps below the frontier");
        for f in &out {
            assert_eq!(
                f.offset,
                seen.len() as u64,
                "offsets are dense and in order"
            );
            check_frame(f);
            seen.push(f.seq_no);
        }
        if done && out.is_empty() && seen.len() as u64 == log.durable_offset() {
            return seen;
        }
        if out.is_empty() {
            std::thread::yield_now();
        }
    }
}

/// Reads without an upper bound and checks that nothing read is beyond the frontier that was
/// announced by the time the read returned. It spins without yielding on purpose: the window
/// it looks for (a batch indexed but its frontier not yet announced) is a few instructions.
fn probe_frontier(log: &Log, appending: &AtomicBool) -> u64 {
    let mut probes = 0;
    let mut out = Vec::new();
    while appending.load(Ordering::Acquire) {
        let from = log.durable_offset().saturating_sub(4);
        out.clear();
        log.read_range(from, u64::MAX, 0, 64, &mut out)
            .expect("read_range");
        let frontier = log.durable_offset();
        for f in &out {
            assert!(
                f.offset < frontier,
                "read offset {} while the durable frontier was still {frontier}",
                f.offset
            );
            check_frame(f);
        }
        probes += 1;
    }
    probes
}

/// Takes snapshots at the frontier and reads everything below them in order-key order.
fn ordered_snapshots(log: &Log, appending: &AtomicBool) -> u64 {
    let mut snapshots = 0;
    let mut out = Vec::new();
    while appending.load(Ordering::Acquire) {
        let snapshot = log.durable_offset();
        out.clear();
        let done = log
            .read_ordered(&OrderKey::first_of_seq(0), snapshot, usize::MAX, &mut out)
            .expect("read_ordered");
        assert!(done);
        assert_eq!(out.len() as u64, snapshot, "every frame below the snapshot");
        let mut below = vec![false; snapshot as usize];
        for pair in out.windows(2) {
            assert!(pair[0].key() < pair[1].key(), "order-key order");
        }
        for f in &out {
            assert!(
                f.offset < snapshot,
                "offset {} >= snapshot {snapshot}",
                f.offset
            );
            assert!(!below[f.offset as usize], "offset {} twice", f.offset);
            below[f.offset as usize] = true;
            check_frame(f);
        }
        snapshots += 1;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    snapshots
}

#[test]
fn concurrent_appenders_and_readers() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = Log::open(tmp.path(), config()).expect("open");
    let appending = AtomicBool::new(true);
    let acks: Mutex<Vec<(u64, Appended)>> = Mutex::new(Vec::new());
    let mut appends = 0u64;

    let (followed, probes, snapshots) = std::thread::scope(|s| {
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|_| s.spawn(|| follow(&log, &appending)))
            .collect();
        let prober = s.spawn(|| probe_frontier(&log, &appending));
        let orderer = s.spawn(|| ordered_snapshots(&log, &appending));
        let appenders: Vec<_> = (0..APPENDERS)
            .map(|t| {
                let (log, acks) = (&log, &acks);
                s.spawn(move || {
                    let mut rng = rand::rng();
                    let mut i = 0;
                    let mut calls = 0u64;
                    for _ in 0..APPENDS_EACH {
                        let n = rng.random_range(1..=3u64);
                        let frames = (i..i + n)
                            .map(|j| NewFrame {
                                seq_no: seq_no(t, j),
                                // Out-of-order timestamps and seq_nos exercise the index.
                                timestamp: rng.random_range(1..1000),
                                key: Bytes::new(),
                                payload: Bytes::from(payload(seq_no(t, j))),
                            })
                            .collect();
                        let got = log.append(frames).expect("append");
                        assert_eq!(got.len() as u64, n);
                        let mut all = acks.lock().expect("acks");
                        for (k, ack) in got.into_iter().enumerate() {
                            assert!(!ack.duplicate);
                            all.push((seq_no(t, i + k as u64), ack));
                        }
                        i += n;
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        for a in appenders {
            appends += a.join().expect("appender");
        }
        appending.store(false, Ordering::Release);
        let followed: Vec<Vec<u64>> = followers
            .into_iter()
            .map(|f| f.join().expect("follower"))
            .collect();
        (
            followed,
            prober.join().expect("prober"),
            orderer.join().expect("orderer"),
        )
    });

    let mut acks = acks.into_inner().expect("acks");
    let n = acks.len() as u64;
    acks.sort_by_key(|(_, a)| a.offset);
    let offsets: Vec<u64> = acks.iter().map(|(_, a)| a.offset).collect();
    assert_eq!(offsets, (0..n).collect::<Vec<_>>(), "acks are exactly 0..N");
    let by_offset: Vec<u64> = acks.iter().map(|(s, _)| *s).collect();
    for (i, seen) in followed.iter().enumerate() {
        assert_eq!(seen, &by_offset, "follower {i} saw what the acks say");
    }
    let timestamps: HashMap<u64, i64> = acks.iter().map(|(s, a)| (*s, a.timestamp)).collect();
    let mut all = Vec::new();
    log.read_range(0, u64::MAX, 0, usize::MAX, &mut all)
        .expect("read all");
    assert_eq!(all.len() as u64, n);
    for f in &all {
        assert_eq!(timestamps.get(&f.seq_no), Some(&f.timestamp));
    }

    let stats = log.stats();
    assert_eq!(stats.frames, n);
    assert_eq!(stats.next_offset, n);
    assert!(stats.segments > 1, "rolled over segments while appending");
    assert!(
        stats.syncs < appends,
        "group commit: {} syncs for {appends} appends",
        stats.syncs
    );
    assert!(
        probes > 0 && snapshots > 0,
        "readers ran ({probes}, {snapshots})"
    );

    // And the same after a reopen.
    drop(log);
    let log = Log::open(tmp.path(), config()).expect("reopen");
    let mut again = Vec::new();
    log.read_range(0, u64::MAX, 0, usize::MAX, &mut again)
        .expect("read all");
    assert_eq!(again, all);
}

/// Appends whose waiter is gone (a cancelled task) still land; `appends_settled` returns
/// once every one queued before it is durable, and at once when nothing is queued.
#[tokio::test]
async fn appends_settled_waits_for_appends_nobody_waits_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = Log::open(tmp.path(), config()).expect("open");
    log.appends_settled().await;
    assert_eq!(log.durable_offset(), 0);
    for i in 0..200u64 {
        let frame = NewFrame {
            seq_no: i,
            timestamp: 1,
            key: Bytes::new(),
            payload: Bytes::from(payload(i)),
        };
        drop(log.submit(vec![frame]).expect("submit"));
    }
    log.appends_settled().await;
    assert_eq!(log.durable_offset(), 200);
    log.appends_settled().await;
    assert_eq!(log.durable_offset(), 200);
}

/// Many logs appended to at once, each by its own caller and under `always` (every turn
/// holds its thread through a sync): their commits share the process's committer threads,
/// never more than `committers::MAX_WORKERS` of them (a thread per busy log was four
/// memory mappings and a stack per topic), and every log gets exactly its own frames.
#[test]
fn many_busy_logs_share_a_bounded_pool_of_committer_threads() {
    const LOGS: u64 = 200;
    const APPENDS: u64 = 10;
    // Every sync held 2 ms: turns of different logs overlap only on different threads.
    let (observer, most_syncs) = held_syncs(std::time::Duration::from_millis(2));
    let tmp = tempfile::tempdir().expect("tempdir");
    let logs: Vec<Log> = (0..LOGS)
        .map(|i| {
            let config = LogConfig {
                sync_observer: Some(observer.clone()),
                ..config()
            };
            Log::open(&tmp.path().join(format!("log-{i}")), config).expect("open")
        })
        .collect();
    let appending = AtomicBool::new(true);
    let most = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut most = 0;
            while appending.load(Ordering::Acquire) {
                most = most.max(committer_threads());
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            most
        });
        let appenders: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(t, log)| {
                s.spawn(move || {
                    for i in 0..APPENDS {
                        let frame = NewFrame {
                            seq_no: seq_no(t as u64, i),
                            timestamp: 1,
                            key: Bytes::new(),
                            payload: Bytes::from(payload(seq_no(t as u64, i))),
                        };
                        let got = log.append(vec![frame]).expect("append");
                        assert_eq!(got[0].offset, i, "log {t}: offsets are dense");
                    }
                })
            })
            .collect();
        for a in appenders {
            a.join().expect("appender");
        }
        appending.store(false, Ordering::Release);
        sampler.join().expect("sampler")
    });
    let most_syncs = most_syncs.load(Ordering::SeqCst);
    assert!(most_syncs > 1, "the syncs of {LOGS} logs ran one at a time");
    // One more for a thread that has counted itself out and not yet ended.
    assert!(
        most <= committers::MAX_WORKERS + 1,
        "{most} committer threads for {LOGS} busy logs"
    );
    for (t, log) in logs.iter().enumerate() {
        let mut all = Vec::new();
        log.read_range(0, u64::MAX, 0, usize::MAX, &mut all)
            .expect("read all");
        let seq_nos: Vec<u64> = all.iter().map(|f| f.seq_no).collect();
        let want: Vec<u64> = (0..APPENDS).map(|i| seq_no(t as u64, i)).collect();
        assert_eq!(seq_nos, want, "log {t} holds its own frames, in order");
        for f in &all {
            assert_eq!(
                f.payload[..],
                payload(f.seq_no)[..],
                "log {t}, offset {}",
                f.offset
            );
        }
    }
}
