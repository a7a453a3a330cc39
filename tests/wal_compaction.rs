//! Compaction and retention of the log: frames, order and offsets survive a rewrite into
//! sorted runs; retention removes only the oldest sealed frames; a reopen sees the same.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use framecast::index::OrderKey;
use framecast::wal::{
    CompactOptions, FsyncPolicy, Log, LogConfig, NewFrame, Retention, StoredFrame,
};
use rand::{Rng, SeedableRng};

mod common;
use common::run_record_bytes;

fn config(retention: Retention) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        fsync: FsyncPolicy::Never,
        max_frame_bytes: 8 * 1024,
        dedup_window: Duration::from_secs(120),
        retention,
        ..LogConfig::default()
    }
}

fn payload(seq: u64, offset_hint: usize) -> Bytes {
    Bytes::from(format!(
        "p-{seq}-{offset_hint}-{}",
        "x".repeat(offset_hint % 50)
    ))
}

/// Everything a subscriber could see: the full replay in key order, and every offset.
fn everything(log: &Log) -> (Vec<StoredFrame>, Vec<StoredFrame>) {
    let mut ordered = Vec::new();
    let mut from = OrderKey::first_of_seq(0);
    loop {
        let mut batch = Vec::new();
        let done = log.read_ordered(&from, u64::MAX, 97, &mut batch).unwrap();
        if let Some(last) = batch.last() {
            from = last.key().successor().unwrap();
        }
        ordered.extend(batch);
        if done {
            break;
        }
    }
    // Newest first, in pages, over segments and sorted runs alike: exactly the reverse.
    let mut reverse: Vec<StoredFrame> = Vec::new();
    let mut before: Option<OrderKey> = None;
    loop {
        let mut batch = Vec::new();
        let min = OrderKey::first_of_seq(0);
        let done = log
            .read_ordered_rev(before.as_ref(), &min, u64::MAX, 89, &mut batch)
            .unwrap();
        if let Some(last) = batch.last() {
            before = Some(last.key());
        }
        reverse.extend(batch);
        if done {
            break;
        }
    }
    reverse.reverse();
    assert_eq!(
        reverse, ordered,
        "the reverse walk is the forward one backwards"
    );
    // Bounded below: only keys from seq_no 500 on.
    let mut upper = Vec::new();
    let min = OrderKey::first_of_seq(500);
    log.read_ordered_rev(None, &min, u64::MAX, usize::MAX >> 1, &mut upper)
        .unwrap();
    upper.reverse();
    let want: Vec<_> = ordered
        .iter()
        .filter(|f| f.seq_no >= 500)
        .cloned()
        .collect();
    assert_eq!(upper, want);
    let mut by_offset = Vec::new();
    let mut next = log.first_offset();
    let end = log.durable_offset();
    while next < end {
        next = log.read_range(next, end, 0, 113, &mut by_offset).unwrap();
    }
    (ordered, by_offset)
}

fn fill(log: &Log, n: usize, rng: &mut impl Rng) -> BTreeMap<u64, (u64, Bytes)> {
    let mut model = BTreeMap::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<NewFrame> = (0..rng.random_range(1..20))
            .map(|j| {
                let seq = rng.random_range(0..1000u64);
                NewFrame {
                    seq_no: seq,
                    timestamp: rng.random_range(1..5i64),
                    key: if j % 3 == 0 {
                        Bytes::from(format!("k{}", i + j))
                    } else {
                        Bytes::new()
                    },
                    payload: payload(seq, i + j),
                }
            })
            .collect();
        let acks = log.append(batch.clone()).unwrap();
        for (f, a) in batch.iter().zip(&acks) {
            model.insert(a.offset, (f.seq_no, f.payload.clone()));
        }
        i += acks.len();
    }
    model
}

#[test]
fn compaction_keeps_every_frame_in_order_and_shrinks_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let model = fill(&log, 6000, &mut rng);
    let before = everything(&log);
    assert_eq!(before.1.len(), model.len());
    let stats_before = log.stats();
    assert!(stats_before.segments > 5, "{stats_before:?}");

    let report = log.compact(&CompactOptions::default()).unwrap();
    assert!(report.segments_in >= 4, "{report:?}");
    assert_eq!(report.runs_in, 0);
    let after = everything(&log);
    assert_eq!(before, after, "compaction changed what readers see");
    let stats_after = log.stats();
    assert_eq!(stats_after.runs, 1);
    assert_eq!(stats_after.frames, stats_before.frames);
    assert!(
        stats_after.index_bytes < stats_before.index_bytes / 4,
        "index {} -> {}",
        stats_before.index_bytes,
        stats_after.index_bytes
    );
    let runs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".run")
        })
        .count();
    assert_eq!(runs, 1);

    // More data, more compactions (runs merge once there are max_runs of them).
    let opts = CompactOptions {
        bytes_per_sec: None,
        max_runs: 2,
        ..CompactOptions::default()
    };
    for _ in 0..3 {
        fill(&log, 2000, &mut rng);
        let before = everything(&log);
        log.compact(&opts).unwrap();
        assert_eq!(everything(&log), before);
        assert!(log.stats().runs <= 2);
    }
    let before = everything(&log);
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    assert_eq!(everything(&log), before, "reopen after compaction");
    // Appends go on after a reopen with runs.
    let ack = log
        .append(vec![NewFrame {
            seq_no: 1,
            timestamp: 1,
            payload: Bytes::from_static(b"z"),
            ..Default::default()
        }])
        .unwrap();
    assert_eq!(ack[0].offset, before.1.len() as u64);
}

#[test]
fn idempotency_keys_survive_compaction_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let keyed = |k: &str, seq: u64| NewFrame {
        seq_no: seq,
        timestamp: 0,
        key: Bytes::from(k.to_string()),
        payload: Bytes::from(vec![b'v'; 600]),
    };
    let first = log.append(vec![keyed("a", 1)]).unwrap()[0];
    for i in 0..400 {
        log.append(vec![keyed(&format!("fill{i}"), i)]).unwrap();
    }
    log.compact(&CompactOptions::default()).unwrap();
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let again = log.append(vec![keyed("a", 99)]).unwrap()[0];
    assert!(again.duplicate);
    assert_eq!(
        (again.offset, again.timestamp),
        (first.offset, first.timestamp)
    );
}

#[test]
fn retention_by_bytes_removes_only_old_sealed_frames_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 100 * 1024;
    let retention = Retention {
        max_bytes: Some(limit),
        max_age: None,
    };
    let log = Log::open(dir.path(), config(retention)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let model = fill(&log, 5000, &mut rng);
    let next = log.durable_offset();
    let r = log.apply_retention(framecast::wal::now_ns()).unwrap();
    assert!(r.frames_removed > 0, "{r:?}");
    let first = log.first_offset();
    assert_eq!(first, r.first_offset);
    let stats = log.stats();
    // Only sealed data goes: the bytes left are at most the limit, or all of it is in the
    // active segment.
    assert!(stats.bytes <= limit || stats.segments == 1, "{stats:?}");
    assert_eq!(stats.frames, next - first);
    let (_, by_offset) = everything(&log);
    let expect: Vec<u64> = model.range(first..).map(|(o, _)| *o).collect();
    assert_eq!(
        by_offset.iter().map(|f| f.offset).collect::<Vec<_>>(),
        expect
    );
    for f in &by_offset {
        assert_eq!(f.payload, model[&f.offset].1);
    }
    // Reading below the first offset is an error, not a gap.
    let mut out = Vec::new();
    assert!(log.read_range(0, next, 0, 10, &mut out).is_err());
    // Compaction after retention keeps exactly the retained frames.
    let before = everything(&log);
    log.compact(&CompactOptions::default()).unwrap();
    assert_eq!(everything(&log), before);
    drop(log);
    let log = Log::open(dir.path(), config(retention)).unwrap();
    assert_eq!(log.first_offset(), first);
    assert_eq!(everything(&log), before);
    let (_, removed) = log.retention_watermark();
    assert!(removed.is_some());
}

#[test]
fn retention_by_age_uses_stored_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_age: Some(Duration::from_secs(60)),
        max_bytes: None,
    };
    let log = Log::open(dir.path(), config(retention)).unwrap();
    let now = framecast::wal::now_ns();
    let old = now - 3_600_000_000_000;
    let frame = |ts: i64, i: u64| NewFrame {
        seq_no: i,
        timestamp: ts,
        key: Bytes::new(),
        payload: Bytes::from(vec![b'a'; 1000]),
    };
    for i in 0..300 {
        log.append(vec![frame(old, i)]).unwrap();
    }
    for i in 300..600 {
        log.append(vec![frame(now, i)]).unwrap();
    }
    let r = log.apply_retention(now).unwrap();
    assert_eq!(r.first_offset, 300, "{r:?}");
    assert!(r.files_removed > 0);
    assert_eq!(log.stats().min_seq_no, Some(300));
}

/// The usual log, where keys grow with offsets: runs and the segments' tail hold disjoint key
/// ranges, so a page is read from the sources in order (later ones are not read at all once
/// a page is full). Every page size and offset limit gives the frames in order, and `done`
/// exactly when nothing of the read is left.
#[test]
fn ordered_reads_over_runs_in_key_order_page_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let opts = CompactOptions {
        bytes_per_sec: None,
        max_runs: 8,
        ..CompactOptions::default()
    };
    let mut seq = 0u64;
    let mut append = |log: &Log, n: u64| {
        for _ in 0..n {
            seq += 1;
            log.append(vec![NewFrame {
                seq_no: seq,
                timestamp: 1,
                payload: payload(seq, seq as usize),
                ..Default::default()
            }])
            .unwrap();
        }
    };
    append(&log, 1500);
    log.compact(&opts).unwrap();
    append(&log, 1500);
    log.compact(&opts).unwrap();
    append(&log, 700);
    let stats = log.stats();
    assert!(stats.runs >= 2, "{stats:?}");
    let total = log.durable_offset();
    for limit in [u64::MAX, total, total - 350, 1800, 1500, 1, 0] {
        let want: Vec<u64> = (0..total.min(limit)).collect();
        for page in [1usize, 7, 256, 1500, 4000] {
            let mut from = OrderKey::first_of_seq(0);
            let mut got = Vec::new();
            loop {
                let mut batch = Vec::new();
                let done = log.read_ordered(&from, limit, page, &mut batch).unwrap();
                assert!(batch.len() <= page);
                got.extend(batch.iter().map(|f| f.offset));
                let left = want.len() - got.len();
                assert_eq!(
                    done,
                    left == 0,
                    "limit {limit} page {page} at {}",
                    got.len()
                );
                if done {
                    break;
                }
                from = batch.last().unwrap().key().successor().unwrap();
            }
            assert_eq!(got, want, "limit {limit} page {page}");
        }
    }
}

/// A retention decision made elsewhere (a cluster leader's), applied with `remove_below`:
/// sealed frames below the cutoff go, the active segment keeps its frames until sealed, the
/// watermark is the largest key this copy removed (the leader's frames; the leader's own
/// largest key, which may sort above every frame removed here, would refuse streams the
/// leader serves), and a reopen sees the same. `apply_retention_below` never
/// passes its limit (a leader's commit point).
#[test]
fn remove_below_applies_a_cutoff_within_sealed_data_and_keeps_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let model = fill(&log, 3000, &mut rng);
    let next = log.durable_offset();
    assert!(log.stats().segments > 3);
    // Past the active segment's start: only sealed data goes.
    let leader_key = OrderKey {
        seq_no: 5000,
        timestamp: 7,
        offset: next - 1,
    };
    let r = log.remove_below(next, Some(leader_key)).unwrap();
    let first = log.first_offset();
    assert!(first > 0 && first < next, "{r:?}");
    assert_eq!(r.first_offset, first);
    assert_eq!(log.stats().frames, next - first);
    let removed_max = model.range(..first).map(|(_, (seq_no, _))| *seq_no).max();
    let watermark = log.retention_watermark().1;
    assert_eq!(watermark.map(|k| k.seq_no), removed_max);
    let (_, by_offset) = everything(&log);
    let expect: Vec<u64> = model.range(first..).map(|(o, _)| *o).collect();
    assert_eq!(
        by_offset.iter().map(|f| f.offset).collect::<Vec<_>>(),
        expect
    );
    // A cutoff below the first offset changes nothing.
    assert_eq!(log.remove_below(first / 2, None).unwrap().frames_removed, 0);
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    assert_eq!(log.first_offset(), first);
    assert_eq!(log.retention_watermark().1, watermark);

    // A byte limit of 1 would remove every sealed frame; a limit offset stops it.
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_bytes: Some(1),
        max_age: None,
    };
    let log = Log::open(dir.path(), config(retention)).unwrap();
    fill(&log, 3000, &mut rng);
    let r = log
        .apply_retention_below(framecast::wal::now_ns(), 100)
        .unwrap();
    assert_eq!(r.first_offset, 100);
    assert_eq!(log.first_offset(), 100);
}

/// A copy that starts where its source's retention left off: an empty log prepared to start
/// at an offset appends from there, refuses reads below it, keeps its source's retention
/// passes across a reopen (a reader that began after an old pass counts only the later
/// ones), and the keys of the removed frames still inside their window; a directory that
/// holds a log cannot be prepared.
#[test]
fn a_log_prepared_to_start_at_an_offset_appends_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let old_high = OrderKey {
        seq_no: 1_000_000,
        timestamp: 1,
        offset: 0,
    };
    let key = OrderKey {
        seq_no: 41,
        timestamp: 3,
        offset: 999,
    };
    let mut passes = framecast::wal::removals::Removals::default();
    passes.record(400, old_high);
    passes.record(1000, key);
    // The key of a removed frame within the window, and one whose window ended long ago.
    let now = framecast::wal::now_ns();
    let kept = |key: &str, offset, stored_at| {
        (
            Box::<[u8]>::from(key.as_bytes()),
            framecast::wal::FirstAck {
                offset,
                timestamp: 77,
                stored_at,
            },
        )
    };
    // Written a key at a time elsewhere (as a follower receives them), then moved in.
    let staged = tempfile::tempdir().unwrap();
    let mut keys =
        framecast::wal::removed_keys::Writer::create(staged.path().join("incoming")).unwrap();
    for (key, ack) in [kept("removed", 999, now), kept("expired", 998, 1)] {
        keys.push(&key, &ack).unwrap();
    }
    let keys = keys.finish().unwrap();
    Log::prepare_start(dir.path(), 1000, &passes, Some(&keys)).unwrap();
    assert!(!keys.exists(), "moved in");
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    assert_eq!(log.durable_offset(), 1000);
    assert_eq!(log.first_offset(), 1000);
    let acks = log
        .append(vec![NewFrame {
            seq_no: 42,
            timestamp: 5,
            key: Bytes::new(),
            payload: Bytes::from_static(b"first kept"),
        }])
        .unwrap();
    assert_eq!(acks[0].offset, 1000);
    let mut out = Vec::new();
    assert!(log.read_range(0, 1001, 0, 10, &mut out).is_err());
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    assert_eq!((log.first_offset(), log.durable_offset()), (1000, 1001));
    assert_eq!(log.retention_watermark().1, Some(old_high));
    assert_eq!(log.removed_since(0).1, Some(old_high));
    assert_eq!(log.removed_since(400).1, Some(key));
    assert_eq!(log.removed_since(1000).1, None);
    let (ordered, _) = everything(&log);
    assert_eq!(ordered.len(), 1);
    assert_eq!(ordered[0].offset, 1000);
    // A retry of the removed frame gets its first ack; the expired key is a new frame.
    let retry = |key: &'static str| NewFrame {
        seq_no: 43,
        timestamp: 6,
        key: Bytes::from_static(key.as_bytes()),
        payload: Bytes::from_static(b"retry"),
    };
    let acks = log.append(vec![retry("removed")]).unwrap();
    assert_eq!(
        (acks[0].offset, acks[0].timestamp, acks[0].duplicate),
        (999, 77, true)
    );
    let acks = log.append(vec![retry("expired")]).unwrap();
    assert_eq!((acks[0].offset, acks[0].duplicate), (1001, false));
    let none = framecast::wal::removals::Removals::default();
    assert!(Log::prepare_start(dir.path(), 5, &none, None).is_err());
}

/// A cluster node compacts below its commit point only: what lies above it may have to be
/// cut when a new leader lacks it, and a cut cannot reach into a compacted run.
#[test]
fn compaction_below_a_limit_leaves_the_segments_above_it_to_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let cfg = config(Retention::default());
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let model = fill(&log, 6000, &mut rng);
    let segments = log.stats().segments;
    assert!(segments > 5, "{segments}");
    let limit = model.len() as u64 / 2;
    let before = everything(&log);
    let report = log
        .compact_below(&CompactOptions::default(), limit)
        .unwrap();
    assert!(report.segments_in >= 1, "{report:?}");
    assert!(
        report.segments_in < segments - 2,
        "{report:?}: merged past the limit"
    );
    assert_eq!(
        everything(&log),
        before,
        "compaction changed what readers see"
    );
    assert!(log.stats().segments > 2);
    // Nothing below the limit is left to merge into a new run.
    let again = log
        .compact_below(&CompactOptions::default(), limit)
        .unwrap();
    assert_eq!(again.segments_in, 0, "{again:?}");
    drop(log);
    // The frames from the limit on can be cut; those below stay.
    framecast::wal::cut_from(dir.path(), limit, cfg.segment_bytes)
        .unwrap()
        .unwrap();
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let (_, by_offset) = everything(&log);
    let kept: Vec<u64> = by_offset.iter().map(|f| f.offset).collect();
    assert_eq!(kept, (0..limit).collect::<Vec<u64>>());
    // A full compaction would have put them out of a cut's reach.
    log.compact(&CompactOptions::default()).unwrap();
    drop(log);
    assert!(framecast::wal::cut_from(dir.path(), limit / 2, cfg.segment_bytes).is_err());
}

#[test]
fn a_backlog_larger_than_a_run_becomes_several_runs_none_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    fill(&log, 8000, &mut rng);
    let sealed = log.stats().segments - 1;
    assert!(sealed >= 8, "{sealed} sealed segments");
    let limit = 150 * 1024;
    let opts = CompactOptions {
        bytes_per_sec: None,
        max_runs: 2,
        max_run_bytes: limit,
    };
    let before = everything(&log);
    let report = log.compact(&opts).unwrap();
    // One call compacts every sealed segment, over several passes.
    assert_eq!(report.segments_in, sealed, "{report:?}");
    assert_eq!(log.compaction_backlog().0, 0);
    assert_eq!(
        everything(&log),
        before,
        "compaction changed what readers see"
    );
    let sizes = run_record_bytes(dir.path());
    assert!(sizes.len() >= 3, "runs {sizes:?}");
    assert!(sizes.iter().all(|&b| b <= limit), "runs {sizes:?}");
    assert_eq!(log.stats().runs, sizes.len());

    // More rounds, a segment or two each: past max_runs the newest runs merge with the new
    // segments while they fit; full runs stay, so there are more runs than max_runs and
    // none over the limit.
    let mut runs_merged = 0;
    for _ in 0..8 {
        fill(&log, 1200, &mut rng);
        let before = everything(&log);
        runs_merged += log.compact(&opts).unwrap().runs_in;
        assert_eq!(everything(&log), before);
        let sizes = run_record_bytes(dir.path());
        assert!(sizes.iter().all(|&b| b <= limit), "runs {sizes:?}");
    }
    let sizes = run_record_bytes(dir.path());
    assert!(sizes.len() > opts.max_runs, "runs {sizes:?}");
    assert!(runs_merged > 0, "no run was merged again: runs {sizes:?}");
    let before = everything(&log);
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    assert_eq!(everything(&log), before, "reopen after compaction");
}

#[test]
fn a_compaction_that_fails_part_way_leaves_no_temporary_run_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    fill(&log, 3000, &mut rng);
    // A payload byte of the newest sealed segment's last record flipped on disk: its CRC
    // fails when the merge reads it, after the run has records in it.
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let newest_sealed = &segments[segments.len() - 2];
    let last_offset = {
        let name = segments[segments.len() - 1]
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        name.parse::<u64>().unwrap() - 1
    };
    let last = log.read(last_offset).unwrap().unwrap();
    let bytes = std::fs::read(newest_sealed).unwrap();
    let at = bytes
        .windows(last.payload.len())
        .rposition(|w| w == &last.payload[..])
        .unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(newest_sealed)
            .unwrap();
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&[bytes[at] ^ 0xff]).unwrap();
    }

    let err = log.compact(&CompactOptions::default()).unwrap_err();
    let file = newest_sealed
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(err.to_string().contains(&file), "{err}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".run"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The merge takes the segments' keys from the index in batches (16,384 at a time): a
/// compaction of 40,000 frames with repeated seq_nos and timestamps crosses batch
/// boundaries inside runs of equal keys, and keeps every frame in order.
#[test]
fn a_compaction_of_many_frames_reads_the_index_in_batches_and_keeps_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    fill(&log, 40_000, &mut rng);
    let before = everything(&log);
    let sealed = log.stats().segments - 1;
    let report = log.compact(&CompactOptions::default()).unwrap();
    assert_eq!(report.segments_in, sealed);
    assert!(report.frames > 32_768, "{report:?}");
    assert_eq!(everything(&log), before);
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    assert_eq!(everything(&log), before, "reopen");
}

/// The shapes at the edges: empty frames (no payload, no key) by the thousand, frames of
/// the largest size, and a run limit smaller than one of them. Compaction keeps every
/// frame, byte for byte, in the same order at the same offset; a run over the limit holds
/// exactly one segment (a pass always takes one); a reopen sees the same.
#[test]
fn empty_and_largest_frames_compact_whole_under_a_run_limit_smaller_than_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(Retention::default());
    let max = cfg.max_frame_bytes;
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let mut seq = 0u64;
    for round in 0..40 {
        let mut batch = Vec::new();
        // A run of empty frames, some at the same seq_no (equal keys: offset order).
        for _ in 0..rng.random_range(50..400) {
            batch.push(NewFrame {
                seq_no: seq + rng.random_range(0..3),
                timestamp: 1,
                key: Bytes::new(),
                payload: Bytes::new(),
            });
        }
        // Then a frame of the largest size, or just under it.
        let len = if round % 2 == 0 { max } else { max - 1 };
        let fill: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
        batch.push(NewFrame {
            seq_no: seq,
            timestamp: 2,
            key: Bytes::new(),
            payload: Bytes::from(fill),
        });
        seq += 2;
        log.append(batch).unwrap();
    }
    let sealed = log.stats().segments - 1;
    assert!(sealed >= 4, "{sealed} sealed segments");
    let before = everything(&log);
    assert!(before.1.iter().any(|f| f.payload.is_empty()));
    assert!(before.1.iter().any(|f| f.payload.len() == max));
    let limit = (max / 2) as u64;
    let opts = CompactOptions {
        bytes_per_sec: None,
        max_runs: 2,
        max_run_bytes: limit,
    };
    let report = log.compact(&opts).unwrap();
    assert_eq!(report.segments_in, sealed, "{report:?}");
    assert_eq!(
        everything(&log),
        before,
        "compaction changed what readers see"
    );
    // Every run is over the limit (one frame is), so each holds one segment: as many runs
    // as sealed segments, and none was merged into another.
    let sizes = run_record_bytes(dir.path());
    assert_eq!(sizes.len(), sealed, "runs {sizes:?}");
    drop(log);
    let log = Log::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!(everything(&log), before, "reopen after compaction");
    // More frames and another pass: full runs are left as they are.
    log.append(vec![NewFrame {
        seq_no: 0,
        timestamp: 3,
        key: Bytes::new(),
        payload: Bytes::new(),
    }])
    .unwrap();
    let before = everything(&log);
    log.compact(&opts).unwrap();
    assert_eq!(everything(&log), before);
    assert_eq!(run_record_bytes(dir.path()).len(), sealed);
}

/// Retention decides from record headers: a payload damaged after the log opened (bit
/// rot in a sealed segment) does not stop it removing that frame and everything after it
/// that the limits allow — it would otherwise stop there for good while the disk fills.
#[test]
fn retention_passes_a_sealed_frame_whose_payload_was_damaged() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_bytes: Some(1),
        max_age: None,
    };
    let log = Log::open(dir.path(), config(retention)).unwrap();
    for i in 0..3000u64 {
        let frame = NewFrame {
            seq_no: i,
            timestamp: 1 + i as i64,
            key: Bytes::new(),
            payload: Bytes::from(vec![b'p'; 100]),
        };
        log.append(vec![frame]).unwrap();
    }
    assert!(log.stats().segments > 2);
    // Frame 0's payload starts after the 64-byte segment header and its 40-byte header.
    let first_segment = dir.path().join(format!("{:020}.seg", 0));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&first_segment)
        .unwrap();
    file.write_at(b"X", 64 + 40 + 10).unwrap();
    assert!(log.read(0).is_err(), "the damage is seen by a read");
    let r = log.apply_retention(framecast::wal::now_ns()).unwrap();
    assert!(log.first_offset() > 0, "{r:?}");
    assert_eq!(r.first_offset, log.first_offset());
    assert!(log.read(log.first_offset()).unwrap().is_some());
}

/// Keys of frames removed within the dedup window outlive the files that held them, by
/// either way a file goes: retention deleting whole segments, or compaction leaving out the
/// hidden frames below the first retained offset. A reopened log still answers a retry of
/// such a key with its first ack.
#[test]
fn keys_of_removed_frames_still_dedup_after_a_reopen() {
    for compact in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config(Retention::default())).unwrap();
        let keyed = |i: u64| NewFrame {
            seq_no: i,
            timestamp: 0,
            key: Bytes::from(format!("key-{i}")),
            payload: Bytes::from(vec![b'k'; 1000]),
        };
        for i in 0..300 {
            log.append(vec![keyed(i)]).unwrap();
        }
        assert!(log.stats().segments >= 4, "{:?}", log.stats());
        if compact {
            // A cutoff inside a sealed segment: its frames below it are hidden, then left
            // out by the run that compaction writes, and the segment deleted.
            log.remove_below(150, None).unwrap();
            log.compact(&CompactOptions::default()).unwrap();
        } else {
            log.remove_below(250, None).unwrap();
        }
        let first = log.first_offset();
        assert!(first >= 150, "{first}");
        log.close();
        let log = Log::open(dir.path(), config(Retention::default())).unwrap();
        for i in [0, 1, first - 1, first] {
            let ack = log.append(vec![keyed(i)]).unwrap();
            assert_eq!(
                (ack[0].offset, ack[0].duplicate),
                (i, true),
                "compact {compact}: key-{i} (first retained offset {first})"
            );
        }
        assert_eq!(log.durable_offset(), 300, "nothing stored again");
    }
}

/// Keys enough for the walk over the dedup window to go in many pieces, the writer's lock
/// let go between them while another thread publishes keyed frames, some of them found in
/// a run in seq_no order (not offset order) when the log reopens: after retention removes
/// that run and most segments, and compaction runs, a reopened log answers a retry of
/// every key, removed or kept, with its first ack, and stores nothing again.
#[test]
fn keys_of_frames_removed_in_many_pieces_while_publishing_all_dedup_after_a_reopen() {
    const N: u64 = 12_000;
    const MORE: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let keyed = |i: u64| NewFrame {
        // Falling seq_nos: a run holds its keys in the reverse of their offsets.
        seq_no: 1_000_000 - i,
        timestamp: 0,
        key: Bytes::from(format!("key-{i}")),
        payload: Bytes::from(vec![b'k'; 100]),
    };
    let append = |log: &Log, range: std::ops::Range<u64>| {
        for chunk in range.collect::<Vec<_>>().chunks(100) {
            log.append(chunk.iter().map(|&i| keyed(i)).collect())
                .unwrap();
        }
    };
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    append(&log, 0..N);
    log.compact(&CompactOptions::default()).unwrap();
    assert!(log.stats().runs >= 1, "{:?}", log.stats());
    log.close();
    drop(log);
    // Reopened: the run's keys are found in its order and stored in offset order.
    let log = std::sync::Arc::new(Log::open(dir.path(), config(Retention::default())).unwrap());
    append(&log, N..2 * N);
    let publisher = {
        let log = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for i in 2 * N..2 * N + MORE {
                let ack = log.append(vec![keyed(i)]).unwrap();
                assert_eq!((ack[0].offset, ack[0].duplicate), (i, false));
            }
        })
    };
    log.remove_below(2 * N - 100, None).unwrap();
    assert_eq!(log.stats().runs, 0, "retention removed the run");
    log.compact(&CompactOptions::default()).unwrap();
    publisher.join().unwrap();
    let first = log.first_offset();
    assert!(
        first > 2 * framecast::wal::LIVE_BELOW_PIECE as u64,
        "{first}"
    );
    log.close();
    drop(log);
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    for i in 0..2 * N + MORE {
        let ack = log.append(vec![keyed(i)]).unwrap();
        assert_eq!(
            (ack[0].offset, ack[0].duplicate),
            (i, true),
            "key-{i} (first retained offset {first})"
        );
    }
    assert_eq!(log.durable_offset(), 2 * N + MORE, "nothing stored again");
}

/// Recovery keeps the newest `--dedup-max-keys` keys, as the window does while running:
/// with a cap of 100 and 1,000 keyed frames, the last 100 still dedup after a reopen, the
/// oldest is a new frame.
#[test]
fn a_reopened_log_keeps_the_newest_keys_up_to_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let capped = LogConfig {
        dedup_max_keys: 100,
        ..config(Retention::default())
    };
    let keyed = |i: u64| NewFrame {
        seq_no: i,
        timestamp: 0,
        key: Bytes::from(format!("key-{i}")),
        payload: Bytes::from_static(b"capped"),
    };
    let log = Log::open(dir.path(), capped.clone()).unwrap();
    for i in 0..1_000 {
        log.append(vec![keyed(i)]).unwrap();
    }
    log.close();
    drop(log);
    let log = Log::open(dir.path(), capped).unwrap();
    for i in 900..1_000 {
        let ack = log.append(vec![keyed(i)]).unwrap();
        assert_eq!((ack[0].offset, ack[0].duplicate), (i, true), "key-{i}");
    }
    let ack = log.append(vec![keyed(0)]).unwrap();
    assert_eq!((ack[0].offset, ack[0].duplicate), (1_000, false));
}

/// One frame stamped far in the future does not hold back age retention: it counts as no
/// newer than the last write of its file. Before, the pass stopped at it, and the topic's
/// disk grew for as long as its stamp was ahead.
#[test]
fn a_frame_stamped_in_the_future_does_not_stop_age_retention() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_age: Some(Duration::from_secs(3600)),
        max_bytes: None,
    };
    let log = Log::open(dir.path(), config(retention)).unwrap();
    let now = framecast::wal::now_ns();
    let hour: i64 = 3600 * 1_000_000_000;
    let frame = |i: u64, timestamp: i64| NewFrame {
        seq_no: i,
        timestamp,
        key: Bytes::new(),
        payload: Bytes::from(vec![b'f'; 1000]),
    };
    for i in 0..300 {
        // Frame 10 is stamped a year ahead; the others as they arrive.
        let timestamp = if i == 10 { now + 24 * 365 * hour } else { now };
        log.append(vec![frame(i, timestamp)]).unwrap();
    }
    let sealed = log.stats().segments;
    assert!(sealed >= 4, "{:?}", log.stats());
    // Two hours on, every sealed frame is past the limit of one hour, frame 10 included:
    // its file was last written two hours before.
    let r = log.apply_retention(now + 2 * hour).unwrap();
    assert!(r.first_offset > 10, "{r:?}");
    assert_eq!(log.stats().segments, 1, "only the active segment is left");
    // An hour on, nothing is past the limit yet: a frame stamped ahead is not removed
    // early either, while its file is young.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(retention)).unwrap();
    for i in 0..300 {
        log.append(vec![frame(i, now + 24 * 365 * hour)]).unwrap();
    }
    let r = log.apply_retention(now + hour / 2).unwrap();
    assert_eq!(r.first_offset, 0, "{r:?}");
}

/// The keys of a run come back at recovery in the run's sort order (seq_no first), not in
/// offset order: a key whose frame sorts last but sits at the lowest offset must still be
/// kept when compaction later drops the run's frames below the first retained offset.
#[test]
fn keys_recovered_in_a_runs_sort_order_are_all_kept_when_their_frames_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let keyed = |offset: u64| NewFrame {
        // Offset 0 sorts last; the others in offset order.
        seq_no: if offset == 0 { 1_000_000 } else { offset },
        timestamp: 0,
        key: Bytes::from(format!("key-{offset}")),
        payload: Bytes::from(vec![b'k'; 1000]),
    };
    for i in 0..300 {
        log.append(vec![keyed(i)]).unwrap();
    }
    let every_run = CompactOptions {
        max_runs: 1,
        ..CompactOptions::default()
    };
    log.compact(&every_run).unwrap();
    log.close();
    // Recovery rebuilds the window from the run, in its sort order.
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    for i in 300..500 {
        log.append(vec![keyed(i)]).unwrap();
    }
    log.remove_below(100, None).unwrap();
    log.compact(&every_run).unwrap();
    assert!(log.first_offset() >= 100);
    log.close();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    for i in [0, 1, 99] {
        let ack = log.append(vec![keyed(i)]).unwrap();
        assert_eq!((ack[0].offset, ack[0].duplicate), (i, true), "key-{i}");
    }
}

/// A sealed segment's modification time is when it was sealed: retention's age rule caps a
/// frame stamped ahead by it, and writes through the mapping move it only when they dirty
/// a clean page, so without the stamp it could lag behind the frames and have them
/// removed early. The segment's time is pushed back an hour before each append here, as a
/// lagging one would be.
#[test]
fn a_sealed_segment_carries_the_time_it_was_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(Retention::default())).unwrap();
    let first = framecast::wal::list_segments(dir.path()).unwrap()[0]
        .1
        .clone();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let push_back = || {
        std::fs::File::options()
            .write(true)
            .open(&first)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap()
    };
    let mut before = std::time::SystemTime::now();
    for i in 0..200 {
        if log.stats().segments > 1 {
            break;
        }
        push_back();
        before = std::time::SystemTime::now();
        log.append(vec![NewFrame {
            seq_no: i,
            timestamp: 0,
            key: Bytes::new(),
            payload: Bytes::from(vec![b's'; 1000]),
        }])
        .unwrap();
    }
    assert!(log.stats().segments > 1, "the first segment was sealed");
    let modified = std::fs::metadata(&first).unwrap().modified().unwrap();
    assert!(
        modified + Duration::from_secs(1) >= before,
        "sealed at {modified:?}, the append that sealed it began at {before:?}"
    );
}
