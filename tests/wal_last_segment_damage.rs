//! Damage in the last (active) segment: a bad record is a torn tail only if nothing valid
//! follows it. Every single-bit flip of every record of a small last segment must either
//! refuse to open with `Corruption` naming the file and that record's position, or — for
//! the very last record only — be cut as a tail written whole, which the caller gives a
//! new epoch. And `repair` (the log part of
//! `framecast repair`) must keep every other frame at its offset, in the active and in a
//! sealed segment, through reopening and compaction, never reusing a lost offset; a
//! leader ships a repaired hole to a follower as one gap record, and the copy holds the same
//! frames at the same offsets.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::path::{Path, PathBuf};

use bytes::Bytes;
use framecast::wal::format::SEGMENT_HEADER_LEN;
use framecast::wal::record::{Step, Walk};
use framecast::wal::repair::repair_dir;
use framecast::wal::{
    list_segments, CompactOptions, Copied, Error, Log, LogConfig, NewFrame, Retention, StoredFrame,
    TailLoss,
};

const BASE_TS: i64 = 1_700_000_000_000_000_000;

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        max_frame_bytes: 1024,
        ..Default::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("payload-{i:04}-{}", "x".repeat((i % 5) as usize)).into_bytes()
}

/// Writes `n` frames (every fourth with an idempotency key) and closes the log.
/// Appends the frame that follows `n` frames and returns its offset.
fn append_next(log: &Log, n: u64) -> u64 {
    let ack = log
        .append(vec![NewFrame {
            seq_no: 100 + n,
            timestamp: BASE_TS + n as i64,
            key: Bytes::new(),
            payload: Bytes::from(payload(n)),
        }])
        .expect("append");
    ack[0].offset
}

fn build(dir: &Path, n: u64, segment_bytes: u64) {
    let log = Log::open(dir, config(segment_bytes)).expect("open a new log");
    for i in 0..n {
        let key = if i.is_multiple_of(4) {
            Bytes::from(format!("key-{i}"))
        } else {
            Bytes::new()
        };
        let acks = log
            .append(vec![NewFrame {
                seq_no: 100 + i,
                timestamp: BASE_TS + i as i64,
                key,
                payload: Bytes::from(payload(i)),
            }])
            .expect("append");
        assert_eq!(acks[0].offset, i);
    }
    log.close();
}

/// The byte ranges `[start, end)` of every record of a segment file's bytes.
fn record_ranges(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (pos, step) in Walk::new(data, SEGMENT_HEADER_LEN) {
        match step {
            Step::Record(_, len) => out.push((pos, pos + len)),
            Step::End => break,
            other => panic!("clean segment has {other:?} at {pos}"),
        }
    }
    out
}

fn read_all(log: &Log) -> Vec<StoredFrame> {
    let mut out = Vec::new();
    let next = log
        .read_range(0, u64::MAX, 0, 100_000, &mut out)
        .expect("read_range");
    assert_eq!(next, log.durable_offset());
    out
}

fn clear(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        std::fs::remove_file(e.expect("entry").path()).expect("remove");
    }
}

#[test]
fn every_bit_flip_of_every_record_is_refused_or_only_the_last_is_cut() {
    const N: u64 = 20;
    let pristine_dir = tempfile::tempdir().expect("tempdir");
    build(pristine_dir.path(), N, 4096);
    let segs = list_segments(pristine_dir.path()).expect("list");
    assert_eq!(segs.len(), 1, "one (active) segment");
    let name = segs[0].1.file_name().expect("name").to_owned();
    let pristine = std::fs::read(&segs[0].1).expect("read");
    let ranges = record_ranges(&pristine);
    assert_eq!(ranges.len(), N as usize);

    // Some 10,000 opens, each syncing the directory: on a RAM file system where there is
    // one, so the exhaustive part stays well under a minute on a loaded machine.
    let work = tempfile::Builder::new()
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("tempdir");
    let path: PathBuf = work.path().join(&name);
    let (mut refused, mut cut) = (0u64, 0u64);
    for (i, &(start, end)) in ranges.iter().enumerate() {
        let last = i == ranges.len() - 1;
        for bit in start * 8..end * 8 {
            clear(work.path());
            let mut bad = pristine.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &bad).expect("write");
            let what = format!("record {i} (bytes {start}..{end}), bit {bit}");
            match Log::open(work.path(), config(4096)) {
                Err(Error::Corruption { file, position, .. }) if !last => {
                    assert_eq!(file, path, "{what}: names the file");
                    assert_eq!(position, start as u64, "{what}: names the record");
                    assert_eq!(
                        std::fs::read(&path).expect("read"),
                        bad,
                        "{what}: nothing was cut"
                    );
                    refused += 1;
                }
                Ok(log) if last => {
                    let torn = log.torn_tail().expect("a torn tail was cut").clone();
                    assert_eq!(torn.position, start as u64, "{what}");
                    // A flip anywhere, header included, leaves a whole record (its CRC
                    // stored) that fails its check: damage, told apart from a crash's
                    // torn write, whose CRC is still zero.
                    assert!(torn.written_whole, "{what}: a whole record");
                    assert_eq!(log.durable_offset(), N - 1, "{what}: next offset");
                    assert_eq!(read_all(&log).len(), N as usize - 1, "{what}");
                    log.close();
                    cut += 1;
                }
                Ok(_) => panic!("{what}: opened, cutting acknowledged frames"),
                Err(e) => panic!("{what}: unexpected {e}"),
            }
        }
    }
    let last_bits = (ranges[ranges.len() - 1].1 - ranges[ranges.len() - 1].0) as u64 * 8;
    assert_eq!(cut, last_bits);
    assert!(refused > 0);
}

/// Flips one payload bit of `offset`'s record in `path`; returns the record's position.
fn flip_payload(path: &Path, offset: u64) -> usize {
    let mut data = std::fs::read(path).expect("read");
    let base = Walk::new(&data, SEGMENT_HEADER_LEN)
        .find_map(|(pos, step)| match step {
            Step::Record(r, len) if r.offset == offset => Some((pos, len)),
            _ => None,
        })
        .expect("record present");
    data[base.0 + base.1 - 2] ^= 0x10;
    std::fs::write(path, &data).expect("write");
    base.0
}

fn check_survivors(log: &Log, n: u64, lost: &[u64]) {
    assert_eq!(
        log.stats().frames,
        n - lost.len() as u64,
        "lost offsets are not frames"
    );
    let got = read_all(log);
    let want: Vec<u64> = (0..n).filter(|o| !lost.contains(o)).collect();
    let offsets: Vec<u64> = got.iter().map(|f| f.offset).collect();
    assert_eq!(offsets, want, "every other frame, at its offset");
    for f in &got {
        assert_eq!(
            &f.payload[..],
            &payload(f.offset)[..],
            "offset {}",
            f.offset
        );
        assert_eq!(f.seq_no, 100 + f.offset);
    }
}

#[test]
fn repair_in_the_active_segment_keeps_every_other_frame_and_never_reuses_offsets() {
    const N: u64 = 20;
    for damaged in [0, 7, N - 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        build(dir.path(), N, 4096);
        let seg = list_segments(dir.path()).expect("list")[0].1.clone();
        let pos = flip_payload(&seg, damaged);
        assert!(matches!(
            Log::open(dir.path(), config(4096)),
            Err(Error::Corruption { position, .. }) if position == pos as u64
        ));
        let done = repair_dir(dir.path()).expect("repair");
        assert_eq!(done.len(), 1, "offset {damaged}: {done:?}");
        assert_eq!(done[0].start, pos as u64);
        assert_eq!(done[0].lost, damaged..damaged + 1);
        assert!(!done[0].tail);
        let saved_to = done[0].saved_to.as_ref().expect("damaged bytes set aside");
        assert!(saved_to.exists(), "damaged bytes set aside");
        assert_eq!(
            std::fs::read(saved_to).expect("read").len() as u64,
            done[0].end - done[0].start
        );
        assert!(
            repair_dir(dir.path()).expect("repair again").is_empty(),
            "idempotent"
        );
        let log = Log::open(dir.path(), config(4096)).expect("opens after repair");
        assert!(log.torn_tail().is_none());
        check_survivors(&log, N, &[damaged]);
        assert_eq!(
            append_next(&log, N),
            N,
            "offsets continue after the old end"
        );
        // The lost offset reads as absent, alone too.
        assert_eq!(log.read(damaged).expect("read"), None);
        log.close();
        let log = Log::open(dir.path(), config(4096)).expect("reopens");
        check_survivors(&log, N + 1, &[damaged]);
        log.close();
    }
}

#[test]
fn repair_in_a_sealed_segment_survives_compaction() {
    const N: u64 = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), N, 4096);
    let segs = list_segments(dir.path()).expect("list");
    assert!(segs.len() >= 3, "several segments");
    let damaged = segs[1].0 + 2;
    let pos = flip_payload(&segs[1].1, damaged);
    match Log::open(dir.path(), config(4096)) {
        Err(Error::Corruption { file, position, .. }) => {
            assert_eq!((file, position), (segs[1].1.clone(), pos as u64));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let done = repair_dir(dir.path()).expect("repair");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].lost, damaged..damaged + 1);
    let log = Log::open(dir.path(), config(4096)).expect("opens after repair");
    check_survivors(&log, N, &[damaged]);
    let report = log.compact(&CompactOptions::default()).expect("compact");
    assert!(report.frames > damaged, "the damaged segment was compacted");
    check_survivors(&log, N, &[damaged]);
    log.close();
    let log = Log::open(dir.path(), config(4096)).expect("reopens from the run");
    check_survivors(&log, N, &[damaged]);
    assert_eq!(log.durable_offset(), N);
    log.close();
    // Retention passes the lost offset like any removed frame.
    let keep_last = LogConfig {
        retention: Retention {
            max_age: None,
            max_bytes: Some(1),
        },
        ..config(4096)
    };
    let log = Log::open(dir.path(), keep_last).expect("reopens");
    let report = log
        .apply_retention(framecast::wal::now_ns())
        .expect("retention over the hole");
    assert!(report.first_offset > damaged, "{report:?}");
    assert_eq!(report.holes_passed, 1);
    let first = log.first_offset();
    assert_eq!(log.stats().frames, N - first);
    log.close();
}

/// Figures for BENCHMARKS, not a timed assertion: how fast the scan past a bad record goes
/// over 64 MiB of zeros (a torn tail in a preallocated segment) and of non-zero garbage
/// (the worst case: every byte position is checked for plausibility). Run with
/// `cargo test --test wal_last_segment_damage -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_scan_ahead() {
    use framecast::wal::record::{scan_ahead, RecordRef};
    const MIB: usize = 1 << 20;
    let valid = RecordRef {
        offset: 9,
        seq_no: 1,
        timestamp: 1,
        key_time: 0,
        key: b"",
        payload: b"the one valid record at the very end",
    }
    .to_vec();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let garbage: Vec<u8> = (0..64 * MIB)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 24) as u8
        })
        .collect();
    for (what, mut buf) in [("zeros", vec![0u8; 64 * MIB]), ("random garbage", garbage)] {
        let at = buf.len();
        buf.extend_from_slice(&valid);
        let started = std::time::Instant::now();
        let found = scan_ahead(&buf, 0, Some(8)).expect("finds the record at the end");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(found.position, at);
        println!(
            "scan_ahead over 64 MiB of {what}: {:.1} ms, {:.0} MiB/s",
            secs * 1e3,
            64.0 / secs
        );
    }
}

#[test]
fn repair_marks_even_the_smallest_record_as_a_gap() {
    // Empty payload, no key: 40-byte records, the smallest there are.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config(4096)).expect("open");
    for i in 0..10u64 {
        log.append(vec![NewFrame {
            seq_no: i,
            timestamp: BASE_TS,
            key: Bytes::new(),
            payload: Bytes::new(),
        }])
        .expect("append");
    }
    log.close();
    let seg = list_segments(dir.path()).expect("list")[0].1.clone();
    let mut data = std::fs::read(&seg).expect("read");
    let ranges = record_ranges(&data);
    assert_eq!(ranges[3].1 - ranges[3].0, 40);
    data[ranges[3].0 + 17] ^= 0x01; // a bit of frame 3's seq_no
    std::fs::write(&seg, &data).expect("write");
    assert!(Log::open(dir.path(), config(4096)).is_err());
    let done = repair_dir(dir.path()).expect("repair");
    assert_eq!(done.len(), 1);
    assert_eq!(
        (done[0].start, done[0].end),
        (ranges[3].0 as u64, ranges[3].1 as u64)
    );
    assert_eq!(done[0].lost, 3..4);
    let log = Log::open(dir.path(), config(4096)).expect("opens after repair");
    let offsets: Vec<u64> = read_all(&log).iter().map(|f| f.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    log.close();
}

#[test]
fn before_cut_runs_before_anything_is_cut_and_can_stop_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), 5, 4096);
    let seg = list_segments(dir.path()).expect("list")[0].1.clone();
    let mut data = std::fs::read(&seg).expect("read");
    let last = *record_ranges(&data).last().expect("records");
    data[last.1 - 4..last.1].fill(0); // a torn write of the last record
    std::fs::write(&seg, &data).expect("write");
    // A failing hook (say, the epoch could not be written) stops the open, nothing cut.
    let mut seen = Vec::new();
    let refused = Log::open_with(dir.path(), config(4096), &mut |loss| {
        match loss {
            TailLoss::Torn(t) => seen.push(t.position),
            other => panic!("{other:?}"),
        }
        Err(Error::Unavailable("no epoch".into()))
    });
    assert!(matches!(refused, Err(Error::Unavailable(_))));
    assert_eq!(seen, vec![last.0 as u64]);
    assert_eq!(std::fs::read(&seg).expect("read"), data, "nothing was cut");
    // The next open sees the same tail, calls again, and cuts.
    let mut calls = 0;
    let log = Log::open_with(dir.path(), config(4096), &mut |_| {
        calls += 1;
        Ok(())
    })
    .expect("opens");
    assert_eq!(calls, 1);
    assert_eq!(log.durable_offset(), 4);
    log.close();
}

#[test]
fn a_repaired_hole_ships_as_one_gap_record_and_the_copy_keeps_every_offset() {
    const N: u64 = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), N, 4096);
    let seg = list_segments(dir.path()).expect("list")[0].1.clone();
    flip_payload(&seg, 7);
    assert_eq!(repair_dir(dir.path()).expect("repair").len(), 1);
    let leader = Log::open(dir.path(), config(4096)).expect("opens after repair");

    // Read in small pieces too: the gap is one record wherever a piece starts.
    let mut records = Vec::new();
    let mut from = 0;
    while from < N {
        let (got, next) = leader.read_records(from, 1).expect("read records");
        assert!(next > from, "progress from {from}");
        records.extend(got);
        from = next;
    }
    assert_eq!(from, N);
    let copied: Vec<Copied> = records
        .iter()
        .map(|r| Copied::decode(r).expect("a whole record"))
        .collect();
    let spans: Vec<(u64, u64)> = copied.iter().map(|c| (c.offset(), c.end())).collect();
    let want: Vec<(u64, u64)> = (0..N).filter(|&o| o != 7).map(|o| (o, o + 1)).collect();
    let frames: Vec<(u64, u64)> = spans.iter().copied().filter(|s| *s != (7, 8)).collect();
    assert_eq!(frames, want, "every frame once, at its offset");
    assert!(
        matches!(copied.iter().find(|c| c.offset() == 7), Some(Copied::Gap(g)) if g.count == 1),
        "the lost offset ships as a gap record of one: {spans:?}"
    );

    let copy_dir = tempfile::tempdir().expect("tempdir");
    let copy = Log::open(copy_dir.path(), config(4096)).expect("a new copy");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    assert_eq!(rt.block_on(copy.append_copied(copied)).expect("append"), N);
    check_survivors(&copy, N, &[7]);
    assert_eq!(copy.read(7).expect("read"), None);
    assert_eq!(
        append_next(&copy, N),
        N,
        "the copy continues after the leader's end"
    );
    copy.close();
    leader.close();
}
