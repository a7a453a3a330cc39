//! A segment missing at either end of a log: the newest (the `ACTIVE` file names its base)
//! or the oldest a manifest says holds the first retained frame. Both are refused at open,
//! naming the missing file, with nothing on disk changed; without these checks the log
//! opened as if it ended (or began) at the next segment present, and handed out the lost
//! frames' offsets again. `repair` accepts the loss of a missing newest segment, and a cut
//! (what a follower does to a suffix a new leader lacks) that removes newer segments leaves a
//! log that opens.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use framecast::wal::active;
use framecast::wal::format::ACTIVE_FILE;
use framecast::wal::repair::repair_dir;
use framecast::wal::{cut_from, list_segments, Error, Log, LogConfig, NewFrame};

const SEGMENT_BYTES: u64 = 4096;

/// Taken by every test: with `--features failpoints`, an armed fail point fires on the next
/// hit in the whole process, so no other test may write an ACTIVE file meanwhile.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        max_frame_bytes: 1024,
        ..Default::default()
    }
}

/// Appends `n` frames of 100 bytes (about 30 per segment) from offset `from`.
fn append(log: &Log, from: u64, n: u64) {
    for i in from..from + n {
        let acks = log
            .append(vec![NewFrame {
                seq_no: i,
                timestamp: 1_700_000_000_000_000_000 + i as i64,
                key: Bytes::new(),
                payload: Bytes::from(vec![(i % 251) as u8; 100]),
            }])
            .expect("append");
        assert_eq!(acks[0].offset, i);
    }
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Opening `dir` is refused as corruption naming `file`, with the reason containing `says`,
/// and changes no file.
fn refused(dir: &Path, file: &Path, says: &str) {
    let before = snapshot(dir);
    match Log::open(dir, config()) {
        Err(Error::Corruption {
            file: named,
            reason,
            ..
        }) => {
            assert_eq!(named, file, "{reason}");
            assert!(reason.contains(says), "{reason}");
        }
        Err(e) => panic!("refused, but not as corruption: {e}"),
        Ok(log) => panic!(
            "opened with {} frames although a segment is missing",
            log.durable_offset()
        ),
    }
    assert_eq!(snapshot(dir), before, "a refused open changed the files");
}

#[test]
fn a_log_that_never_started_a_second_segment_has_no_active_file() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 10);
    log.close();
    assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    assert!(!dir.path().join(ACTIVE_FILE).exists());
}

#[test]
fn a_missing_newest_segment_is_refused_and_repair_accepts_the_loss() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 200);
    log.close();
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 4, "{segments:?}");
    let (newest, newest_path) = segments.last().unwrap().clone();
    assert_eq!(active::read(dir.path()).unwrap(), Some(newest));

    // The newest segment goes: 200 acknowledged frames would open as fewer.
    let kept = dir.path().join("newest.kept");
    std::fs::rename(&newest_path, &kept).unwrap();
    refused(dir.path(), &newest_path, "missing");
    // The two newest.
    let (_, second_path) = segments[segments.len() - 2].clone();
    let kept2 = dir.path().join("second.kept");
    std::fs::rename(&second_path, &kept2).unwrap();
    refused(dir.path(), &newest_path, "missing");
    std::fs::rename(&kept2, &second_path).unwrap();

    // A crash between a new segment and its ACTIVE file leaves ACTIVE naming an older base,
    // which opens: put the file back with ACTIVE one segment behind. The open names the
    // newest segment at once (frames will go into it), and so does one of a log from before
    // ACTIVE existed.
    std::fs::rename(&kept, &newest_path).unwrap();
    let newest_bytes = std::fs::read(&newest_path).unwrap();
    for behind in [Some(segments[segments.len() - 2].0), None] {
        match behind {
            Some(base) => active::write(dir.path(), base).unwrap(),
            None => active::remove(dir.path()).unwrap(),
        }
        let log = Log::open(dir.path(), config()).unwrap();
        assert_eq!(log.durable_offset(), 200);
        assert_eq!(active::read(dir.path()).unwrap(), Some(newest));
        log.close();
        std::fs::remove_file(&newest_path).unwrap();
        refused(dir.path(), &newest_path, "missing");
        std::fs::write(&newest_path, &newest_bytes).unwrap();
    }
    let log = Log::open(dir.path(), config()).unwrap();
    // The next segment started names itself again.
    append(&log, 200, 60);
    log.close();
    let newest_now = list_segments(dir.path()).unwrap().last().unwrap().0;
    assert!(newest_now > newest);
    assert_eq!(active::read(dir.path()).unwrap(), Some(newest_now));

    // Repair accepts a missing newest segment: the log goes on from the one before it.
    let newest_path = dir
        .path()
        .join(framecast::wal::format::segment_file_name(newest_now));
    std::fs::remove_file(&newest_path).unwrap();
    refused(dir.path(), &newest_path, "framecast repair");
    let done = repair_dir(dir.path()).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].file, newest_path);
    assert_eq!(done[0].saved_to, None);
    assert_eq!(done[0].lost, newest_now..newest_now);
    assert!(done[0].tail);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_offset(), newest_now);
    log.close();
    assert!(repair_dir(dir.path()).unwrap().is_empty());
}

#[test]
fn a_missing_oldest_segment_is_refused_when_a_manifest_says_where_the_log_starts() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 200);
    let segments = list_segments(dir.path()).unwrap();
    // Retention up to an offset inside the second segment: the first goes, the manifest
    // says the log starts at that offset, inside the (now oldest) second segment.
    let cutoff = segments[1].0 + 3;
    let report = log.remove_below(cutoff, None).unwrap();
    assert_eq!(report.first_offset, cutoff);
    log.close();
    let segments = list_segments(dir.path()).unwrap();
    let (_, oldest) = segments[0].clone();
    std::fs::remove_file(&oldest).unwrap();
    refused(dir.path(), &segments[1].1, "missing");
}

#[test]
fn a_cut_that_removes_newer_segments_leaves_a_log_that_opens() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 200);
    log.close();
    let segments = list_segments(dir.path()).unwrap();
    let keeps = segments[1].0;
    let cut = cut_from(dir.path(), keeps + 5, SEGMENT_BYTES)
        .unwrap()
        .unwrap();
    assert_eq!(cut.from, keeps + 5);
    assert_eq!(active::read(dir.path()).unwrap(), Some(keeps));
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_offset(), keeps + 5);
    append(&log, keeps + 5, 100);
    log.close();
    assert_eq!(
        active::read(dir.path()).unwrap(),
        Some(list_segments(dir.path()).unwrap().last().unwrap().0)
    );
}

#[test]
fn an_unreadable_active_file_is_refused_and_repair_rewrites_it() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 100);
    log.close();
    let path = dir.path().join(ACTIVE_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"base_offset\":", "\"base_offset\":1")).unwrap();
    refused(dir.path(), &path, "ACTIVE");
    let done = repair_dir(dir.path()).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].file, path);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_offset(), 100);
    log.close();
}

#[test]
fn repair_counts_from_the_newest_segment_left_when_two_are_missing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 200);
    log.close();
    let segments = list_segments(dir.path()).unwrap();
    let n = segments.len();
    assert!(n >= 4, "{segments:?}");
    for (_, path) in &segments[n - 2..] {
        std::fs::remove_file(path).unwrap();
    }
    refused(dir.path(), &segments[n - 1].1, "missing");
    let done = repair_dir(dir.path()).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].file, segments[n - 1].1);
    assert_eq!(active::read(dir.path()).unwrap(), Some(segments[n - 3].0));
    // The log continues where the newest segment left ends: the base of the first missing.
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_offset(), segments[n - 2].0);
    log.close();
}

#[test]
fn repair_moves_the_start_past_missing_oldest_segments_and_reuses_no_offset() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 200);
    let segments = list_segments(dir.path()).unwrap();
    let cutoff = segments[1].0 + 3;
    log.remove_below(cutoff, None).unwrap();
    log.close();
    let segments = list_segments(dir.path()).unwrap();
    std::fs::remove_file(&segments[0].1).unwrap();
    refused(dir.path(), &segments[1].1, "missing");
    let done = repair_dir(dir.path()).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].lost, cutoff..segments[1].0);
    assert!(!done[0].tail);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_offset(), 200, "no offset is handed out again");
    let mut out = Vec::new();
    log.read_range(0, u64::MAX, 0, 100_000, &mut out)
        .expect_err("offsets below the new start are out of range");
    out.clear();
    log.read_range(segments[1].0, u64::MAX, 0, 100_000, &mut out)
        .unwrap();
    assert_eq!(out.first().unwrap().offset, segments[1].0);
    assert_eq!(out.len() as u64, 200 - segments[1].0);
    log.close();
}

/// Damage done to a closed log: its directory and segments.
type Damage = fn(&Path, &[(u64, PathBuf)]);

/// Repair calls its hook (where `framecast repair` makes the new epoch durable) before it
/// changes any file, for every kind of change; not at all when nothing is damaged.
#[test]
fn repair_calls_its_hook_before_the_first_change() {
    let _serial = serial();
    let shapes: [(&str, Damage); 3] = [
        ("newest segment missing", |_, segs| {
            std::fs::remove_file(&segs.last().unwrap().1).unwrap()
        }),
        ("unreadable ACTIVE", |dir, _| {
            std::fs::write(dir.join(ACTIVE_FILE), "garbage").unwrap()
        }),
        ("bit flip in a sealed segment", |_, segs| {
            let path = &segs[1].1;
            let mut bytes = std::fs::read(path).unwrap();
            bytes[200] ^= 0x10;
            std::fs::write(path, bytes).unwrap();
        }),
    ];
    for (shape, damage) in shapes {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        append(&log, 0, 200);
        log.close();
        let mut calls = 0;
        assert!(
            framecast::wal::repair::repair_dir_with(dir.path(), &mut || {
                calls += 1;
                Ok(())
            })
            .unwrap()
            .is_empty()
        );
        assert_eq!(calls, 0, "{shape}: nothing damaged, no call");
        damage(dir.path(), &list_segments(dir.path()).unwrap());
        let before = snapshot(dir.path());
        let done = framecast::wal::repair::repair_dir_with(dir.path(), &mut || {
            calls += 1;
            assert_eq!(
                snapshot(dir.path()),
                before,
                "{shape}: a file changed before the hook"
            );
            Ok(())
        })
        .unwrap();
        assert!(!done.is_empty(), "{shape}");
        assert_eq!(calls, 1, "{shape}");
        assert_ne!(snapshot(dir.path()), before, "{shape}");
        // A hook that fails stops the repair with nothing changed.
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), config()).unwrap();
        append(&log, 0, 200);
        log.close();
        damage(dir.path(), &list_segments(dir.path()).unwrap());
        let before = snapshot(dir.path());
        let refused = framecast::wal::repair::repair_dir_with(dir.path(), &mut || {
            Err(Error::Unavailable("no epoch".into()))
        });
        assert!(refused.is_err(), "{shape}");
        assert_eq!(
            snapshot(dir.path()),
            before,
            "{shape}: changed although the hook failed"
        );
    }
}

/// A failed write of ACTIVE when a segment is started fails that append, and nothing goes
/// into the new segment until ACTIVE names it (the next append writes it first).
#[cfg(feature = "failpoints")]
#[test]
fn a_failed_active_write_is_done_again_before_anything_goes_into_the_new_segment() {
    use framecast::wal::failpoint;
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    append(&log, 0, 20);
    let before = list_segments(dir.path()).unwrap().len();
    failpoint::arm(failpoint::ACTIVE_WRITE);
    let mut next = 20;
    let failed = loop {
        let r = log.append(vec![NewFrame {
            seq_no: next,
            timestamp: 1_700_000_000_000_000_000 + next as i64,
            key: Bytes::new(),
            payload: Bytes::from(vec![(next % 251) as u8; 100]),
        }]);
        match r {
            Ok(acks) => {
                assert_eq!(acks[0].offset, next);
                next += 1;
                assert!(next < 200, "no segment was started");
            }
            Err(e) => break e,
        }
    };
    failpoint::clear();
    assert!(matches!(failed, Error::Unavailable(_)), "{failed:?}");
    let segments = list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), before + 1, "the new segment exists");
    let newest = segments.last().unwrap().0;
    assert_eq!(newest, next);
    assert_ne!(active::read(dir.path()).unwrap(), Some(newest));
    // The next append writes ACTIVE first, then goes into the new segment at the same
    // offset the failed one would have had.
    append(&log, next, 1);
    assert_eq!(active::read(dir.path()).unwrap(), Some(newest));
    log.close();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_eq!(log.durable_offset(), next + 1);
    log.close();
}
