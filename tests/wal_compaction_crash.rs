//! Crash safety of compaction and retention, with fail points (`--features failpoints`).
//!
//! The contract: a compaction or retention pass that dies at any step leaves either the old
//! set of files or the new one — a reopen sees exactly the frames it saw before, never a
//! frame twice and never one missing. Each named fail point stops the pass there as a crash
//! would (nothing after it runs, nothing is cleaned up); the log is then dropped and
//! reopened. A model-based test mixes appends, compactions, retention passes, reopens and
//! injected crashes, checking every read against a reference model.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
#![cfg(feature = "failpoints")]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use framecast::index::OrderKey;
use framecast::wal::{
    failpoint, now_ns, CompactOptions, FsyncPolicy, Log, LogConfig, NewFrame, Retention,
    StoredFrame,
};
use proptest::prelude::*;

/// Fail points are process-wide: tests that arm them run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn config(max_bytes: Option<u64>) -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        fsync: FsyncPolicy::Never,
        max_frame_bytes: 2048,
        dedup_window: Duration::from_secs(120),
        retention: Retention {
            max_age: None,
            max_bytes,
        },
        ..LogConfig::default()
    }
}

fn all_ordered(log: &Log, from: OrderKey, limit: u64) -> Vec<StoredFrame> {
    let mut out = Vec::new();
    let mut from = from;
    loop {
        let mut batch = Vec::new();
        let done = log.read_ordered(&from, limit, 61, &mut batch).unwrap();
        if let Some(last) = batch.last() {
            from = last.key().successor().unwrap();
        }
        out.extend(batch);
        if done {
            return out;
        }
    }
}

fn all_by_offset(log: &Log) -> Vec<StoredFrame> {
    let mut out = Vec::new();
    let mut next = log.first_offset();
    let end = log.durable_offset();
    while next < end {
        next = log.read_range(next, end, 0, 50, &mut out).unwrap();
    }
    out
}

fn frame(seq_no: u64, timestamp: i64, size: usize, tag: u64) -> NewFrame {
    let mut payload = format!("{tag}:").into_bytes();
    payload.resize(size.max(payload.len()), b'a' + (tag % 26) as u8);
    NewFrame {
        seq_no,
        timestamp,
        key: Bytes::new(),
        payload: Bytes::from(payload),
    }
}

#[test]
fn a_crash_at_every_step_of_a_compaction_leaves_exactly_the_same_frames() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (i, point) in failpoint::ALL.iter().enumerate() {
        failpoint::clear();
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config(None)).unwrap();
        for n in 0..600u64 {
            log.append(vec![frame((n * 7919) % 101, 1 + (n % 3) as i64, 100, n)])
                .unwrap();
        }
        // A first compaction, so that the crashing one also merges a run (max_runs 1).
        log.compact(&CompactOptions {
            bytes_per_sec: None,
            max_runs: 4,
            ..CompactOptions::default()
        })
        .unwrap();
        for n in 600..1000u64 {
            log.append(vec![frame((n * 31) % 101, 2, 100, n)]).unwrap();
        }
        let ordered = all_ordered(&log, OrderKey::first_of_seq(0), u64::MAX);
        let by_offset = all_by_offset(&log);
        failpoint::arm(point);
        let result = log.compact(&CompactOptions {
            bytes_per_sec: None,
            max_runs: 1,
            ..CompactOptions::default()
        });
        assert!(result.is_err(), "fail point {point} was not hit");
        drop(log);
        failpoint::clear();
        let log = Log::open(dir.path(), config(None)).unwrap();
        assert_eq!(
            all_ordered(&log, OrderKey::first_of_seq(0), u64::MAX),
            ordered,
            "after {point}"
        );
        assert_eq!(all_by_offset(&log), by_offset, "after {point}");
        // And the next compaction succeeds and changes nothing either.
        log.compact(&CompactOptions::default()).unwrap();
        assert_eq!(
            all_by_offset(&log),
            by_offset,
            "compaction after {point} (case {i})"
        );
        drop(log);
        let log = Log::open(dir.path(), config(None)).unwrap();
        assert_eq!(
            all_ordered(&log, OrderKey::first_of_seq(0), u64::MAX),
            ordered
        );
    }
}

/// A compaction that crashed after its manifest named the new run, before it deleted the
/// segments the run replaces, leaves them: still a whole copy of the run's frames. If that
/// run is then found damaged, startup refuses and keeps them. Before, recovery removed the
/// superseded segments first and checked the run after, destroying the only good copy.
#[test]
fn a_damaged_run_leaves_the_segments_it_superseded_in_place() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    failpoint::clear();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(None)).unwrap();
    for n in 0..600u64 {
        log.append(vec![frame(n, 1, 100, n)]).unwrap();
    }
    let segments = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    };
    let before = segments(dir.path());
    failpoint::arm("compact.before_delete");
    assert!(log
        .compact(&CompactOptions {
            bytes_per_sec: None,
            ..CompactOptions::default()
        })
        .is_err());
    drop(log);
    failpoint::clear();
    assert_eq!(segments(dir.path()), before, "the crash deleted nothing");
    let run = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "run"))
        .expect("the manifest names a run");
    // Bit rot in the middle of the run.
    let mut bytes = std::fs::read(&run).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&run, &bytes).unwrap();
    match Log::open(dir.path(), config(None)) {
        Err(framecast::wal::Error::Corruption { file, .. }) => assert_eq!(file, run),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a damaged run was accepted"),
    }
    assert_eq!(
        segments(dir.path()),
        before,
        "the superseded segments were removed before the run was checked"
    );
}

#[test]
fn a_crash_during_retention_leaves_the_old_or_the_new_first_offset() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for point in [
        "manifest.before_rename",
        "manifest.after_rename",
        "compact.before_delete",
    ] {
        failpoint::clear();
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config(Some(20_000))).unwrap();
        for n in 0..800u64 {
            log.append(vec![frame(n, 1, 100, n)]).unwrap();
        }
        let by_offset = all_by_offset(&log);
        failpoint::arm(point);
        assert!(log.apply_retention(now_ns()).is_err(), "{point} not hit");
        drop(log);
        failpoint::clear();
        let log = Log::open(dir.path(), config(Some(20_000))).unwrap();
        let first = log.first_offset();
        let expect: Vec<_> = by_offset
            .iter()
            .filter(|f| f.offset >= first)
            .cloned()
            .collect();
        assert_eq!(all_by_offset(&log), expect, "after {point}");
        if point == "manifest.before_rename" {
            assert_eq!(first, 0, "the old manifest stands");
        } else {
            assert!(first > 0, "the new manifest stands after {point}");
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u64, i64, usize)>),
    Compact(usize),
    Retain,
    Reopen,
    CrashCompact(usize, usize, u64),
    CrashRetain(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec((0u64..40, 1i64..4, 0usize..400), 1..40).prop_map(Op::Append),
        2 => (1usize..4).prop_map(Op::Compact),
        1 => Just(Op::Retain),
        1 => Just(Op::Reopen),
        1 => (0..failpoint::ALL.len(), 1usize..4, 1u64..4).prop_map(|(p, r, n)| Op::CrashCompact(p, r, n)),
        1 => (0usize..3).prop_map(Op::CrashRetain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_reference_model_through_compactions_retention_and_crashes(
        ops in proptest::collection::vec(op(), 1..30),
        max_bytes in proptest::option::of(10_000u64..60_000),
        // Small run limits: a compaction takes several passes, and a crash can come in any.
        run_limit in proptest::option::of(4_000u64..40_000),
        probe in (0u64..40, 0u64..2000),
    ) {
        let compact_opts = |max_runs| CompactOptions {
            bytes_per_sec: None,
            max_runs,
            max_run_bytes: run_limit.unwrap_or(CompactOptions::default().max_run_bytes),
        };
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        failpoint::clear();
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(max_bytes);
        let mut log = Log::open(dir.path(), cfg.clone()).unwrap();
        // offset -> (seq_no, timestamp, payload)
        let mut model: BTreeMap<u64, (u64, i64, Bytes)> = BTreeMap::new();
        let mut first = 0u64;
        let mut tag = 0u64;
        for op in ops {
            match op {
                Op::Append(frames) => {
                    let batch: Vec<NewFrame> = frames.iter().map(|&(s, t, n)| {
                        tag += 1;
                        frame(s, t, n, tag)
                    }).collect();
                    let acks = log.append(batch.clone()).unwrap();
                    for (f, a) in batch.iter().zip(acks) {
                        prop_assert!(model.insert(a.offset, (f.seq_no, f.timestamp, f.payload.clone())).is_none());
                    }
                }
                Op::Compact(max_runs) => {
                    log.compact(&compact_opts(max_runs)).unwrap();
                }
                Op::Retain => {
                    log.apply_retention(now_ns()).unwrap();
                }
                Op::Reopen => {
                    drop(log);
                    log = Log::open(dir.path(), cfg.clone()).unwrap();
                }
                Op::CrashCompact(p, max_runs, nth) => {
                    // The nth hit: with a small run limit, in a later pass of the compaction.
                    failpoint::arm_at(failpoint::ALL[p], nth);
                    let _ = log.compact(&compact_opts(max_runs));
                    failpoint::clear();
                    drop(log);
                    log = Log::open(dir.path(), cfg.clone()).unwrap();
                }
                Op::CrashRetain(p) => {
                    failpoint::arm(["manifest.before_rename", "manifest.after_rename", "compact.before_delete"][p]);
                    let _ = log.apply_retention(now_ns());
                    failpoint::clear();
                    drop(log);
                    log = Log::open(dir.path(), cfg.clone()).unwrap();
                }
            }
            // Retention only moves forward, only with a limit, and only over sealed data.
            let now_first = log.first_offset();
            prop_assert!(now_first >= first, "first offset went back: {} -> {}", first, now_first);
            prop_assert!(max_bytes.is_some() || now_first == 0);
            first = now_first;
            model.retain(|&o, _| o >= first);
            let expect: Vec<(u64, u64, i64, Bytes)> =
                model.iter().map(|(o, (s, t, p))| (*o, *s, *t, p.clone())).collect();
            let got: Vec<(u64, u64, i64, Bytes)> = all_by_offset(&log)
                .into_iter().map(|f| (f.offset, f.seq_no, f.timestamp, f.payload)).collect();
            prop_assert_eq!(&got, &expect);
            // A replay from a key with a snapshot point: exactly the model's frames with
            // key >= from and offset < S, in key order.
            let from = OrderKey::first_of_seq(probe.0);
            let limit = first + probe.1;
            let mut want: Vec<(OrderKey, Bytes)> = model.iter()
                .map(|(o, (s, t, p))| (OrderKey { seq_no: *s, timestamp: *t, offset: *o }, p.clone()))
                .filter(|(k, _)| *k >= from && k.offset < limit)
                .collect();
            want.sort_by_key(|(k, _)| *k);
            let replay: Vec<(OrderKey, Bytes)> = all_ordered(&log, from, limit)
                .into_iter().map(|f| (f.key(), f.payload)).collect();
            prop_assert_eq!(replay, want);
        }
    }
}
