//! Torn tails: a crash can leave the last record of the last segment half written, or
//! leave bytes after it that were never a record. Opening the log must absorb that: keep
//! exactly the complete records, cut the rest (keeping a `.torn` copy of what was cut), hand
//! out the next offset after the last complete record, and reach the same state when opened
//! again.
//!
//! Segment files are preallocated, so a crash mid-write leaves the tail of the record as the
//! zeros that were there before; a file system may also lose the end of the file itself. Both
//! shapes are tried at every byte position of the last record. A file cut to a length that
//! framecast never gives a segment is reported as cut short (its frames past the cut may have
//! been acknowledged) and grown back, so that the next open finds nothing to report.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::path::{Path, PathBuf};

use bytes::Bytes;
use framecast::wal::format::{SEGMENT_HEADER_LEN, TORN_SUFFIX};
use framecast::wal::record::{decode, Decoded};
use framecast::wal::segment::is_segment_length;
use framecast::wal::{list_segments, Log, LogConfig, NewFrame};

const SEGMENT_BYTES: u64 = 64 * 1024;
/// Frames written before the damage; enough for two segments.
const FRAMES: u64 = 60;
const BASE_TS: i64 = 1_700_000_000_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        // The default (4 MiB) would not fit in a small segment.
        max_frame_bytes: 16 * 1024,
        ..Default::default()
    }
}

/// One frame as written, to compare what recovery keeps against.
#[derive(Debug, Clone)]
struct Written {
    offset: u64,
    seq_no: u64,
    timestamp: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// A deterministic payload without zero bytes, so that zeroing any suffix of a record really
/// changes it.
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|j| ((i * 31 + j * 7) % 255 + 1) as u8)
        .collect()
}

/// Writes `FRAMES` frames (every third with an idempotency key; the last one small, keyed
/// when `last_keyed`) and closes the log.
fn build(dir: &Path, last_keyed: bool) -> Vec<Written> {
    let log = Log::open(dir, config()).expect("open a new log");
    let mut written = Vec::new();
    for i in 0..FRAMES {
        let last = i == FRAMES - 1;
        let len = if last {
            37
        } else {
            1500 + (i as usize * 37) % 700
        };
        let keyed = if last {
            last_keyed
        } else {
            i.is_multiple_of(3)
        };
        let key = if keyed {
            format!("key-{i}").into_bytes()
        } else {
            Vec::new()
        };
        let w = Written {
            offset: i,
            seq_no: 1000 - (i * 7) % 13,
            timestamp: BASE_TS + i as i64,
            key,
            payload: payload(i, len),
        };
        let acks = log
            .append(vec![NewFrame {
                seq_no: w.seq_no,
                timestamp: w.timestamp,
                key: Bytes::from(w.key.clone()),
                payload: Bytes::from(w.payload.clone()),
            }])
            .expect("append");
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].offset, i);
        assert!(!acks[0].duplicate);
        written.push(w);
    }
    assert!(
        log.stats().segments >= 2,
        "the test wants sealed segments too"
    );
    log.close();
    written
}

/// The last segment file and the byte range `[start, end)` of its last record.
fn last_record(dir: &Path) -> (PathBuf, usize, usize) {
    let segs = list_segments(dir).expect("list segments");
    let (_, path) = segs.last().expect("a segment").clone();
    let data = std::fs::read(&path).expect("read segment");
    let mut pos = SEGMENT_HEADER_LEN;
    let mut last = None;
    loop {
        match decode(&data[pos..]) {
            Decoded::Record(_, len) => {
                last = Some((pos, pos + len));
                pos += len;
            }
            Decoded::End => break,
            Decoded::Invalid(why) => panic!("clean segment has a bad record at {pos}: {why}"),
            Decoded::Gap(..) => panic!("clean segment has a gap record at {pos}"),
        }
    }
    let (start, end) = last.expect("the last segment holds a record");
    (path, start, end)
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy file");
    }
}

/// The `.torn` files of `dir`, sorted.
fn torn_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == TORN_SUFFIX))
        .collect();
    v.sort();
    v
}

/// Asserts that `log` holds exactly `expected`, byte for byte, and nothing else.
fn assert_holds(log: &Log, expected: &[Written], what: &str) {
    let n = expected.len() as u64;
    let stats = log.stats();
    assert_eq!(stats.next_offset, n, "{what}: next offset");
    assert_eq!(stats.frames, n, "{what}: frame count");
    assert_eq!(log.durable_offset(), n, "{what}: durable frontier");
    let mut out = Vec::new();
    let next = log
        .read_range(0, u64::MAX, 0, usize::MAX, &mut out)
        .expect("read_range");
    assert_eq!(next, n, "{what}: read_range stops at the end");
    assert_eq!(out.len(), expected.len(), "{what}: frames read");
    for (got, want) in out.iter().zip(expected) {
        assert_eq!(got.offset, want.offset, "{what}");
        assert_eq!(got.seq_no, want.seq_no, "{what}: offset {}", want.offset);
        assert_eq!(
            got.timestamp, want.timestamp,
            "{what}: offset {}",
            want.offset
        );
        assert_eq!(
            &got.payload[..],
            &want.payload[..],
            "{what}: payload of offset {}",
            want.offset
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Zero the bytes from the position to the end of the record (preallocated file).
    Zero,
    /// Cut the file itself at the position.
    SetLen,
}

/// Damages a copy of `pristine` at every position of its last record and checks recovery.
fn every_position(pristine: &Path, written: &[Written], damage: Damage) {
    let (seg_path, start, end) = last_record(pristine);
    let seg_name = seg_path.file_name().expect("file name").to_owned();
    let original = std::fs::read(&seg_path).expect("read segment");
    let last = written.last().expect("frames");
    for cut in start..=end {
        let what = format!("{damage:?} at byte {cut} of the record at {start}..{end}");
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        copy_dir(pristine, dir);
        let seg = dir.join(&seg_name);
        match damage {
            Damage::Zero => {
                let mut bytes = original.clone();
                bytes[cut..end].fill(0);
                std::fs::write(&seg, &bytes).expect("write damaged segment");
            }
            Damage::SetLen => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&seg)
                    .expect("open segment");
                f.set_len(cut as u64).expect("truncate");
            }
        }
        // The record survives only if no byte of it changed.
        let intact = cut == end;
        let expected = if intact {
            written
        } else {
            &written[..written.len() - 1]
        };
        // What recovery must keep as the torn copy: the non-zero part of what is left of
        // the record (nothing when the whole record is gone).
        let left = &original[start..cut];
        let extent = left.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);

        let log = Log::open(dir, config()).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        assert_holds(&log, expected, &format!("{what}, first open"));
        // A file cut to a length framecast never gives a segment is reported (the caller
        // gives the topic a new epoch) and grown back, so that it is reported once.
        let cut_short =
            matches!(damage, Damage::SetLen) && !is_segment_length(cut as u64, Some(SEGMENT_BYTES));
        assert_eq!(log.cut_short().is_some(), cut_short, "{what}");
        assert_eq!(
            log.torn_tail().and_then(|t| t.cut_short.as_ref()).is_some(),
            cut_short && cut > start && !intact,
            "{what}: a torn record is left to cut"
        );
        drop(log);
        let len = std::fs::metadata(&seg).expect("stat").len();
        assert!(is_segment_length(len, Some(SEGMENT_BYTES)), "{what}: {len}");
        let torn = torn_files(dir);
        if intact || extent == 0 {
            assert!(torn.is_empty(), "{what}: nothing was cut, yet {torn:?}");
        } else {
            let want = dir.join(format!(
                "{}.{start}.{TORN_SUFFIX}",
                seg_name.to_string_lossy()
            ));
            assert_eq!(torn, vec![want.clone()], "{what}: the torn copy");
            let kept = std::fs::read(&want).expect("read torn copy");
            assert_eq!(
                kept,
                &left[..extent],
                "{what}: torn copy holds the cut bytes"
            );
        }
        // After the cut, nothing but zeros follows the last complete record.
        let after = std::fs::read(&seg).expect("read segment");
        let valid_end = if intact { end } else { start };
        assert!(
            after.len() >= valid_end && after[valid_end..].iter().all(|&b| b == 0),
            "{what}: bytes left after the valid data"
        );

        // A second open finds a clean log in the same state and cuts nothing more.
        let log = Log::open(dir, config()).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
        assert_holds(&log, expected, &format!("{what}, second open"));
        assert!(log.cut_short().is_none(), "{what}: reported again");
        assert_eq!(torn_files(dir), torn, "{what}: second open cut again");

        // The next append gets the next offset. It reuses the last frame's key: a duplicate
        // only if that frame survived.
        let next = expected.len() as u64;
        let retry = NewFrame {
            seq_no: 5,
            timestamp: BASE_TS + 1_000_000,
            key: Bytes::from(last.key.clone()),
            payload: Bytes::from_static(b"after"),
        };
        let ack = log
            .append(vec![retry.clone()])
            .expect("append after recovery")[0];
        let keyed_survivor = intact && !last.key.is_empty();
        if keyed_survivor {
            assert!(ack.duplicate, "{what}: the surviving key is remembered");
            assert_eq!(
                (ack.offset, ack.timestamp),
                (last.offset, last.timestamp),
                "{what}"
            );
        } else {
            assert!(!ack.duplicate, "{what}: a cut key must be forgotten");
            assert_eq!(ack.offset, next, "{what}: next offset after recovery");
        }
        drop(log);
        let mut after = expected.to_vec();
        if !keyed_survivor {
            after.push(Written {
                offset: next,
                seq_no: retry.seq_no,
                timestamp: retry.timestamp,
                key: last.key.clone(),
                payload: retry.payload.to_vec(),
            });
        }
        let log = Log::open(dir, config()).unwrap_or_else(|e| panic!("{what}: third open: {e}"));
        assert_holds(&log, &after, &format!("{what}, after appending"));
    }
}

#[test]
fn zeroed_tail_of_keyed_last_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let written = build(tmp.path(), true);
    every_position(tmp.path(), &written, Damage::Zero);
}

#[test]
fn zeroed_tail_of_unkeyed_last_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let written = build(tmp.path(), false);
    every_position(tmp.path(), &written, Damage::Zero);
}

#[test]
fn file_cut_inside_keyed_last_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let written = build(tmp.path(), true);
    every_position(tmp.path(), &written, Damage::SetLen);
}

#[test]
fn file_cut_inside_unkeyed_last_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let written = build(tmp.path(), false);
    every_position(tmp.path(), &written, Damage::SetLen);
}

/// Random non-zero bytes, as a crash can leave from a write that never completed.
fn garbage(len: usize) -> Vec<u8> {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len).map(|_| rng.random_range(1..=255u8)).collect()
}

#[test]
fn garbage_after_the_last_record_is_cut_and_kept() {
    // Right after the last record, and after a gap of zeros.
    for gap in [0usize, 100] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let written = build(dir, true);
        let (seg, _, end) = last_record(dir);
        let junk = garbage(300);
        let mut bytes = std::fs::read(&seg).expect("read segment");
        let len_before = bytes.len();
        bytes[end + gap..end + gap + junk.len()].copy_from_slice(&junk);
        std::fs::write(&seg, &bytes).expect("write garbage");

        let log = Log::open(dir, config()).expect("open with garbage at the tail");
        assert_holds(&log, &written, &format!("garbage after a gap of {gap}"));
        drop(log);
        let copy = PathBuf::from(format!("{}.{end}.{TORN_SUFFIX}", seg.display()));
        assert_eq!(torn_files(dir), vec![copy.clone()], "gap {gap}");
        let mut want = vec![0u8; gap];
        want.extend_from_slice(&junk);
        assert_eq!(std::fs::read(&copy).expect("read torn copy"), want);
        let after = std::fs::read(&seg).expect("read segment");
        assert_eq!(after.len(), len_before, "the segment keeps its size");
        assert_eq!(&after[..end], &bytes[..end], "valid records untouched");
        assert!(after[end..].iter().all(|&b| b == 0), "garbage cut");

        let log = Log::open(dir, config()).expect("second open");
        assert_holds(&log, &written, "second open after garbage");
        assert_eq!(torn_files(dir), vec![copy], "second open cut nothing more");
        let ack = log
            .append(vec![NewFrame {
                seq_no: 1,
                timestamp: BASE_TS,
                key: Bytes::new(),
                payload: Bytes::from_static(b"x"),
            }])
            .expect("append")[0];
        assert_eq!(ack.offset, FRAMES);
    }
}

/// Tears the record at `start..end` of `seg` as a killed process leaves it: the end of its
/// payload and its CRC (written last) still zero.
fn tear(seg: &Path, start: usize, end: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(seg).expect("read segment");
    bytes[end - 10..end].fill(0);
    bytes[start + 4..start + 8].fill(0);
    std::fs::write(seg, &bytes).expect("write torn segment");
    bytes[start..end - 10].to_vec()
}

#[test]
fn a_second_cut_at_the_same_position_keeps_both_copies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let written = build(dir, false);
    let (seg, start, end) = last_record(dir);
    let first = tear(&seg, start, end);
    let log = Log::open(dir, config()).expect("open");
    assert_holds(&log, &written[..written.len() - 1], "first cut");
    // The frame written in its place is torn too: cut at the same position.
    let ack = log
        .append(vec![NewFrame {
            seq_no: 7,
            timestamp: BASE_TS + 1_000_000,
            key: Bytes::new(),
            payload: Bytes::from(payload(99, 64)),
        }])
        .expect("append")[0];
    assert_eq!(ack.offset, FRAMES - 1);
    drop(log);
    let (_, again, end) = last_record(dir);
    assert_eq!(again, start, "the new frame took the cut one's place");
    let second = tear(&seg, start, end);
    assert_ne!(first, second);
    let log = Log::open(dir, config()).expect("open again");
    assert_holds(&log, &written[..written.len() - 1], "second cut");
    drop(log);
    let name = |tag: &str| PathBuf::from(format!("{}.{tag}.{TORN_SUFFIX}", seg.display()));
    let copies = [name(&start.to_string()), name(&format!("{start}.1"))];
    let mut want = copies.to_vec();
    want.sort();
    assert_eq!(torn_files(dir), want);
    assert_eq!(std::fs::read(&copies[0]).expect("first copy"), first);
    assert_eq!(std::fs::read(&copies[1]).expect("second copy"), second);
}

#[test]
fn an_all_zero_last_segment_is_refused_not_removed() {
    // Segments are named only once their header is synced, so an all-zero last segment is
    // lost data (a zeroed page of a small active segment, say), never a crash's leftover:
    // removing it would hand its offsets out again.
    for len in [SEGMENT_BYTES, 4096, 0] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        build(dir, false);
        let empty = dir.join(format!("{FRAMES:020}.seg"));
        std::fs::write(&empty, vec![0u8; len as usize]).expect("write empty segment");
        let before = list_segments(dir).expect("list");

        let err = Log::open(dir, config()).expect_err("an all-zero last segment must not open");
        assert!(
            matches!(&err, framecast::wal::Error::Corruption { file, .. } if file == &empty),
            "{err}"
        );
        assert_eq!(list_segments(dir).expect("list"), before, "nothing removed");
        assert_eq!(
            std::fs::metadata(&empty).expect("stat").len(),
            len,
            "the file is kept as it is"
        );
    }
}

#[test]
fn a_zeroed_first_page_of_the_active_segment_is_refused() {
    // Three small frames in a new segment all sit in its first page; zeroing that page
    // leaves a file of zeros that once held acknowledged frames.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    build(dir, false);
    let log = Log::open(dir, config()).expect("open");
    let segments = list_segments(dir).expect("list").len();
    let small = |i: u64| NewFrame {
        seq_no: i,
        timestamp: BASE_TS,
        key: Bytes::new(),
        payload: Bytes::from(payload(i, 20)),
    };
    let mut i = 0;
    while list_segments(dir).expect("list").len() == segments {
        log.append(vec![small(i)]).expect("append");
        i += 1;
    }
    log.append(vec![small(i), small(i + 1)]).expect("append");
    let (_, active) = list_segments(dir)
        .expect("list")
        .last()
        .cloned()
        .expect("a segment");
    drop(log);
    let mut bytes = std::fs::read(&active).expect("read");
    bytes[..4096].fill(0);
    std::fs::write(&active, &bytes).expect("zero the first page");

    let err = Log::open(dir, config()).expect_err("the lost page must be refused");
    assert!(
        matches!(&err, framecast::wal::Error::Corruption { file, .. } if file == &active),
        "{err}"
    );
    assert!(active.exists(), "nothing is deleted");
}

#[test]
fn all_zero_sealed_segment_is_not_removed() {
    // An all-zero sealed segment is damage too, and is kept for the operator.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    build(dir, false);
    let segs = list_segments(dir).expect("list");
    let (_, first) = &segs[0];
    let size = std::fs::metadata(first).expect("stat").len();
    std::fs::write(first, vec![0u8; size as usize]).expect("zero the first segment");
    let err = Log::open(dir, config()).expect_err("a zeroed sealed segment must not open");
    assert!(
        matches!(&err, framecast::wal::Error::Corruption { file, .. } if file == first),
        "{err}"
    );
    assert!(first.exists(), "nothing is deleted");
}
