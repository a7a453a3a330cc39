//! The manifest says which sorted runs are live and where the log starts, and recovery
//! removes files on its word. So a changed digit anywhere in it, a missing manifest, or a
//! missing first segment is refused with the file named, and nothing is removed; a manifest
//! written before manifests carried a CRC is still read.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use framecast::index::OrderKey;
use framecast::wal::{CompactOptions, FsyncPolicy, Log, LogConfig, NewFrame, StoredFrame};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        fsync: FsyncPolicy::Never,
        max_frame_bytes: 8 * 1024,
        dedup_window: Duration::from_secs(120),
        ..LogConfig::default()
    }
}

/// Appends frames `from..from + n`, a hundred at a time.
fn append(log: &Log, from: u64, n: u64) {
    let all: Vec<u64> = (from..from + n).collect();
    for batch in all.chunks(100) {
        let frames = batch
            .iter()
            .map(|&i| NewFrame {
                seq_no: i,
                timestamp: 1,
                key: Bytes::new(),
                payload: Bytes::from(format!("frame {i} {}", "x".repeat(100))),
            })
            .collect();
        log.append(frames).unwrap();
    }
}

/// Every frame, in key order.
fn frames(log: &Log) -> Vec<StoredFrame> {
    let mut out = Vec::new();
    log.read_ordered(
        &OrderKey::first_of_seq(0),
        u64::MAX,
        usize::MAX >> 1,
        &mut out,
    )
    .unwrap();
    out
}

/// A log compacted once (runs, a manifest) with segments after the runs; its frames.
fn compacted(dir: &Path) -> Vec<StoredFrame> {
    let log = Log::open(dir, config()).unwrap();
    append(&log, 0, 3000);
    log.compact(&CompactOptions::default()).unwrap();
    append(&log, 3000, 100);
    let all = frames(&log);
    assert_eq!(all.len(), 3100);
    all
}

/// Every file of `dir` and its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn assert_refused(dir: &Path, file: &Path, what: &str) {
    let err = Log::open(dir, config()).expect_err(what);
    assert!(
        matches!(&err, framecast::wal::Error::Corruption { file: f, .. } if f == file),
        "{what}: {err}"
    );
}

#[test]
fn every_changed_digit_of_the_manifest_is_refused_and_nothing_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let all = compacted(dir);
    let manifest = dir.join("MANIFEST");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(".run"), "{text}");
    let before = files(dir);
    let digits: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| b.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    assert!(digits.len() > 40, "{text}");
    for at in digits {
        let mut changed = text.clone().into_bytes();
        changed[at] = b'0' + (changed[at] - b'0' + 1) % 10;
        std::fs::write(&manifest, &changed).unwrap();
        assert_refused(
            dir,
            &manifest,
            &format!("digit at byte {at}: {}", String::from_utf8_lossy(&changed)),
        );
        let mut now = files(dir);
        now.insert(manifest.clone(), text.clone().into_bytes());
        assert_eq!(
            now, before,
            "digit at byte {at}: a file was removed or changed"
        );
    }
    std::fs::write(&manifest, &text).unwrap();
    let log = Log::open(dir, config()).unwrap();
    assert_eq!(frames(&log), all);
}

#[test]
fn a_missing_manifest_is_refused_and_nothing_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    compacted(dir);
    let manifest = dir.join("MANIFEST");
    std::fs::remove_file(&manifest).unwrap();
    let before = files(dir);
    // The compacted segments are gone, so the first segment left starts past 0.
    let first = framecast::wal::list_segments(dir).unwrap()[0].1.clone();
    assert_refused(dir, &first, "a log whose manifest is missing");
    assert_eq!(files(dir), before, "nothing is removed");
    // The runs alone, without a manifest or a segment: refused too.
    for (_, seg) in framecast::wal::list_segments(dir).unwrap() {
        std::fs::remove_file(seg).unwrap();
    }
    let before = files(dir);
    assert!(before.keys().any(|p| p.to_string_lossy().ends_with(".run")));
    assert_refused(dir, &manifest, "runs without a manifest");
    assert_eq!(files(dir), before, "nothing is removed");
}

#[test]
fn a_missing_first_segment_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let log = Log::open(dir, config()).unwrap();
    append(&log, 0, 2000);
    drop(log);
    let segments = framecast::wal::list_segments(dir).unwrap();
    assert!(segments.len() > 2, "{segments:?}");
    std::fs::remove_file(&segments[0].1).unwrap();
    assert_refused(dir, &segments[1].1, "a log without its first segment");
}

#[test]
fn a_manifest_written_before_it_carried_a_crc_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let all = compacted(dir);
    let manifest = dir.join("MANIFEST");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["version"], 2, "{m}");
    assert!(m["crc"].is_u64(), "{m}");
    let fields = m.as_object_mut().unwrap();
    fields.remove("crc");
    fields.insert("version".into(), 1.into());
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // With the leftover of a rewrite a crash cut short, which the upgrade's own rewrite
    // replaces: the first start after it opens the log too.
    std::fs::write(dir.join("MANIFEST.tmp"), b"{\"version\": 2, \"cut sh").unwrap();
    let log = Log::open(dir, config()).unwrap();
    assert_eq!(frames(&log), all);
    drop(log);
    assert!(!dir.join("MANIFEST.tmp").exists());
    // Opened, it is written again with its CRC at once (an idle topic may never compact).
    let now: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(now["version"], 2, "{now}");
    assert!(now["crc"].is_u64(), "{now}");
    // A version 2 manifest without its CRC is not taken for an old one.
    let fields = m.as_object_mut().unwrap();
    fields.insert("version".into(), 2.into());
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    assert_refused(dir, &manifest, "a version 2 manifest without a CRC");
}
