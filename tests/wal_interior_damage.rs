//! Interior damage: a crash only ever tears the end of the last segment, so damage anywhere
//! else is a disk or operator fault that must refuse to open, loudly, naming the file and the
//! byte position, and must leave every file as it was (nothing cut, nothing deleted).
//!
//! `framecast dump --verify` must agree: exit 1 on such damage, 0 on a clean (or merely torn)
//! log; `dump --json` prints one JSON object per line.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use framecast::wal::format::SEGMENT_HEADER_LEN;
use framecast::wal::record::{decode, Decoded};
use framecast::wal::{list_segments, Error, Log, LogConfig, NewFrame};

const SEGMENT_BYTES: u64 = 64 * 1024;
const FRAMES: u64 = 200;
const TOPIC: &str = "damaged";
const BASE_TS: i64 = 1_700_000_000_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        // The default (4 MiB) would not fit in a small segment.
        max_frame_bytes: 16 * 1024,
        ..Default::default()
    }
}

fn seq_no(i: u64) -> u64 {
    500 + (i * 13) % 97
}

/// Printable payload, so that `dump --json` shows it as text.
fn payload(i: u64) -> String {
    let unit = format!("frame-{i};");
    unit.repeat(1 + (900 + (i as usize * 41) % 900) / unit.len())
}

/// A data dir (`<data>/topics/<TOPIC>/`) holding `FRAMES` frames over several segments.
struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    log_dir: PathBuf,
}

fn build() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().to_path_buf();
    let log_dir = data.join("topics").join(TOPIC);
    let log = Log::open(&log_dir, config()).expect("open a new log");
    for chunk in (0..FRAMES).collect::<Vec<_>>().chunks(7) {
        let frames = chunk
            .iter()
            .map(|&i| NewFrame {
                seq_no: seq_no(i),
                timestamp: BASE_TS + i as i64,
                key: if i.is_multiple_of(5) {
                    Bytes::from(format!("k{i}"))
                } else {
                    Bytes::new()
                },
                payload: Bytes::from(payload(i)),
            })
            .collect();
        let acks = log.append(frames).expect("append");
        let offsets: Vec<u64> = acks.iter().map(|a| a.offset).collect();
        assert_eq!(offsets, chunk.to_vec());
    }
    assert!(
        log.stats().segments >= 4,
        "the test wants several sealed segments"
    );
    log.close();
    Fixture {
        _tmp: tmp,
        data,
        log_dir,
    }
}

/// `(position, length, offset)` of every record of a segment file.
fn records(path: &Path) -> Vec<(usize, usize, u64)> {
    let data = std::fs::read(path).expect("read segment");
    let mut pos = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    loop {
        match decode(&data[pos..]) {
            Decoded::Record(r, len) => {
                out.push((pos, len, r.offset));
                pos += len;
            }
            Decoded::End => return out,
            Decoded::Invalid(why) => panic!("clean segment has a bad record at {pos}: {why}"),
            Decoded::Gap(..) => panic!("clean segment has a gap record at {pos}"),
        }
    }
}

/// Every file of `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let p = e.expect("dir entry").path();
            let bytes = std::fs::read(&p).expect("read file");
            (p, bytes)
        })
        .collect()
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

/// Opens the log, expecting a corruption error for `file` at `position`, and checks that the
/// directory is byte for byte what it was.
fn expect_corruption(dir: &Path, file: &Path, position: Option<u64>, what: &str) {
    let before = snapshot(dir);
    let err = Log::open(dir, config()).expect_err(what);
    match &err {
        Error::Corruption {
            file: f,
            position: p,
            reason,
        } => {
            assert_eq!(f, file, "{what}: names the damaged file ({reason})");
            if let Some(want) = position {
                assert_eq!(*p, want, "{what}: names the byte position ({reason})");
            }
            let shown = err.to_string();
            assert!(
                shown.contains(&file.display().to_string()),
                "{what}: message names the file: {shown}"
            );
        }
        other => panic!("{what}: expected corruption, got {other}"),
    }
    assert_eq!(snapshot(dir), before, "{what}: files must be untouched");
}

#[test]
fn flipped_byte_in_a_sealed_segment_refuses_to_open() {
    let fx = build();
    let segs = list_segments(&fx.log_dir).expect("list");
    let sealed = &segs[..segs.len() - 1];
    for (i, (_, path)) in sealed.iter().enumerate() {
        let recs = records(path);
        // The first, a middle and the last record of each sealed segment.
        for &(pos, len, offset) in [recs[0], recs[recs.len() / 2], recs[recs.len() - 1]].iter() {
            // Length, CRC, offset, seq_no, timestamp, key_len, flags, payload_len, body, end.
            for rel in [0, 1, 4, 8, 16, 24, 32, 34, 36, 40, len / 2, len - 1] {
                let what = format!("segment {i}, record {offset} at {pos}, byte +{rel}");
                let tmp = tempfile::tempdir().expect("tempdir");
                let dir = tmp.path();
                for (name, bytes) in snapshot(&fx.log_dir) {
                    std::fs::write(dir.join(name.file_name().expect("name")), bytes).expect("copy");
                }
                let file = dir.join(path.file_name().expect("name"));
                flip(&file, pos + rel);
                expect_corruption(dir, &file, Some(pos as u64), &what);
            }
        }
    }
}

#[test]
fn garbage_after_the_data_of_a_sealed_segment_refuses_to_open() {
    let fx = build();
    let segs = list_segments(&fx.log_dir).expect("list");
    let (_, path) = &segs[1];
    let &(pos, len, _) = records(path).last().expect("records");
    let end = pos + len;
    // Right after the last record, and further into the zeros.
    for at in [end, end + 10] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for (name, bytes) in snapshot(&fx.log_dir) {
            std::fs::write(dir.join(name.file_name().expect("name")), bytes).expect("copy");
        }
        let file = dir.join(path.file_name().expect("name"));
        flip(&file, at);
        expect_corruption(dir, &file, Some(end as u64), &format!("garbage at {at}"));
    }
}

#[test]
fn damaged_segment_header_refuses_to_open() {
    let fx = build();
    let segs = list_segments(&fx.log_dir).expect("list");
    // A sealed segment and the last one: a bad header is never a torn tail.
    for idx in [1, segs.len() - 1] {
        for at in [0, 9, 17, 40, 62] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path();
            for (name, bytes) in snapshot(&fx.log_dir) {
                std::fs::write(dir.join(name.file_name().expect("name")), bytes).expect("copy");
            }
            let file = dir.join(segs[idx].1.file_name().expect("name"));
            flip(&file, at);
            expect_corruption(
                dir,
                &file,
                Some(0),
                &format!("segment {idx}, header byte {at}"),
            );
        }
    }
}

#[test]
fn missing_middle_segment_refuses_to_open() {
    let fx = build();
    let segs = list_segments(&fx.log_dir).expect("list");
    std::fs::remove_file(&segs[2].1).expect("remove a middle segment");
    // The gap shows at the segment after the missing one.
    expect_corruption(&fx.log_dir, &segs[3].1, None, "missing middle segment");
}

#[test]
fn renamed_segment_refuses_to_open() {
    let fx = build();
    let segs = list_segments(&fx.log_dir).expect("list");
    let (base, path) = &segs[1];
    let wrong = fx.log_dir.join(format!("{:020}.seg", base + 1));
    std::fs::rename(path, &wrong).expect("rename");
    expect_corruption(&fx.log_dir, &wrong, Some(0), "name disagrees with header");
}

fn dump(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_framecast"))
        .arg("dump")
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run framecast dump")
}

#[test]
fn dump_verify_exit_codes() {
    let fx = build();
    let clean = dump(&fx.data, &["--verify"]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "clean dir: {}",
        String::from_utf8_lossy(&clean.stderr)
    );

    // A torn tail in the last segment is what startup repairs: not "bad".
    let segs = list_segments(&fx.log_dir).expect("list");
    let (_, last) = segs.last().expect("segments");
    let &(pos, len, _) = records(last).last().expect("records");
    let original_last = std::fs::read(last).expect("read");
    flip(last, pos + len + 3);
    let torn = dump(&fx.data, &["--verify"]);
    assert_eq!(
        torn.status.code(),
        Some(0),
        "torn tail: {}",
        String::from_utf8_lossy(&torn.stderr)
    );
    std::fs::write(last, original_last).expect("restore");

    // One flipped payload byte in a sealed segment.
    let (_, sealed) = &segs[1];
    let &(pos, len, _) = &records(sealed)[3];
    flip(sealed, pos + len - 2);
    let bad = dump(&fx.data, &["--verify"]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "interior damage: {}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(
        out.contains(&sealed.display().to_string()) && out.contains(&pos.to_string()),
        "the report names the file and position: {out}"
    );
}

#[test]
fn dump_json_prints_every_record() {
    let fx = build();
    let out = dump(&fx.data, &["--json"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let mut next = 0u64;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        if v["type"] != "record" {
            continue;
        }
        let i = next;
        assert_eq!(v["offset"], i, "{line}");
        assert_eq!(v["seq_no"], seq_no(i), "{line}");
        assert_eq!(v["timestamp"], BASE_TS + i as i64, "{line}");
        assert_eq!(v["crc_ok"], true, "{line}");
        assert_eq!(v["payload"], payload(i), "offset {i}");
        let key_part = if i.is_multiple_of(5) {
            8 + format!("k{i}").len()
        } else {
            0
        };
        assert_eq!(
            v["length"],
            (40 + key_part + payload(i).len()) as u64,
            "{line}"
        );
        next += 1;
    }
    assert_eq!(next, FRAMES, "every record printed once, in offset order");
}

#[test]
fn dump_json_shows_binary_payload_as_hex() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log_dir = tmp.path().join("topics").join(TOPIC);
    let log = Log::open(&log_dir, config()).expect("open");
    log.append(vec![NewFrame {
        seq_no: 1,
        timestamp: BASE_TS,
        key: Bytes::new(),
        payload: Bytes::from_static(&[0, 159, 146, 150, 255]),
    }])
    .expect("append");
    log.close();
    let out = dump(tmp.path(), &["--json"]);
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    let rec: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .find(|v| v["type"] == "record")
        .expect("a record line");
    assert_eq!(rec["payload_hex"], "009f9296ff", "{rec}");
    assert_eq!(rec["length"], 45);
}
