//! Bytes that look like records, where a walk stops. Recovery tells a torn tail (cut) from
//! interior damage (refused) by looking past the bad bytes for a valid record; two shapes
//! fooled it:
//! - the record being written when the process died, whose payload (the client's bytes)
//!   holds the bytes of a valid record of a later offset: recovery refused to start on a
//!   state `kill -9` produces, and `framecast repair` then kept the embedded "record" as a
//!   frame, with a gap up to its offset (2^40 here: the next open aborted on allocating its
//!   index);
//! - a whole record with a valid checksum but another offset (a stale or misdirected write
//!   over an acknowledged frame) at the end of the last segment: it was cut as a torn tail,
//!   the acknowledged frame silently lost and its offset handed out again.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::path::{Path, PathBuf};

use bytes::Bytes;
use framecast::wal::format::SEGMENT_HEADER_LEN;
use framecast::wal::record::{decode, Decoded, RecordRef};
use framecast::wal::repair::repair_dir;
use framecast::wal::{list_segments, Error, Log, LogConfig, NewFrame};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_frame_bytes: 16 * 1024,
        ..Default::default()
    }
}

fn frame(seq_no: u64, payload: Vec<u8>) -> NewFrame {
    NewFrame {
        seq_no,
        timestamp: 1_700_000_000_000_000_000 + seq_no as i64,
        key: Bytes::new(),
        payload: Bytes::from(payload),
    }
}

/// A log in a fresh directory holding `payloads`, one frame each, in one segment.
fn log_of(payloads: Vec<Vec<u8>>) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let log = Log::open(&dir, config()).unwrap();
    for (i, p) in payloads.into_iter().enumerate() {
        log.append(vec![frame(i as u64, p)]).unwrap();
    }
    log.close();
    (tmp, dir)
}

/// The only segment, and each record's `(position, length)`.
fn records(dir: &Path) -> (PathBuf, Vec<(usize, usize)>) {
    let seg = list_segments(dir).unwrap().pop().unwrap().1;
    let data = std::fs::read(&seg).unwrap();
    let mut at = SEGMENT_HEADER_LEN;
    let mut out = Vec::new();
    while let Decoded::Record(_, len) = decode(&data[at..]) {
        out.push((at, len));
        at += len;
    }
    (seg, out)
}

/// A valid record's bytes: offset 2^40 unless given.
fn record_bytes(offset: u64) -> Vec<u8> {
    let rec = RecordRef {
        offset,
        seq_no: 1,
        timestamp: 1,
        key_time: 0,
        key: b"",
        payload: b"planted by a client",
    };
    let mut out = vec![0u8; rec.encoded_len()];
    rec.encode_into(&mut out);
    out
}

#[test]
fn a_torn_last_record_whose_payload_holds_a_record_is_cut_not_refused() {
    // The last frame's payload starts with a valid record of offset 2^40, then filler.
    let mut planted = record_bytes(1 << 40);
    planted.extend(vec![b'x'; 3000]);
    let (_tmp, dir) = log_of(vec![b"zero".to_vec(), b"one".to_vec(), planted]);
    let (seg, recs) = records(&dir);
    let (pos, len) = recs[2];
    // Torn while its payload was copied: header whole, the end of the payload and the CRC
    // (written last) not yet there.
    let mut data = std::fs::read(&seg).unwrap();
    data[pos + 4..pos + 8].fill(0);
    data[pos + len - 500..pos + len].fill(0);
    std::fs::write(&seg, &data).unwrap();

    let log = Log::open(&dir, config()).unwrap_or_else(|e| panic!("refused: {e}"));
    let stats = log.stats();
    assert_eq!(stats.next_offset, 2, "the torn frame is cut, nothing else");
    let mut out = Vec::new();
    log.read_range(0, u64::MAX, 0, usize::MAX, &mut out)
        .unwrap();
    let got: Vec<&[u8]> = out.iter().map(|f| &f.payload[..]).collect();
    assert_eq!(got, [&b"zero"[..], &b"one"[..]]);
    log.append(vec![frame(9, b"next".to_vec())]).unwrap();
    assert_eq!(log.stats().next_offset, 3);
    log.close();
}

#[test]
fn a_whole_record_of_another_offset_over_the_last_frame_is_refused_and_repaired_as_a_gap() {
    let (_tmp, dir) = log_of(vec![
        b"frame-0".to_vec(),
        b"frame-1".to_vec(),
        b"frame-2".to_vec(),
    ]);
    let (seg, recs) = records(&dir);
    // Acknowledged frame 2 overwritten with a byte copy of frame 0 (the same length).
    let mut data = std::fs::read(&seg).unwrap();
    let ((p0, l0), (p2, l2)) = (recs[0], recs[2]);
    assert_eq!(l0, l2);
    let copy = data[p0..p0 + l0].to_vec();
    data[p2..p2 + l2].copy_from_slice(&copy);
    std::fs::write(&seg, &data).unwrap();

    match Log::open(&dir, config()) {
        Err(Error::Corruption { file, reason, .. }) => {
            assert_eq!(file, seg);
            assert!(reason.contains("interior damage"), "{reason}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(log) => panic!(
            "opened with next offset {}: the acknowledged frame 2 was cut",
            log.stats().next_offset
        ),
    }
    assert_eq!(std::fs::read(&seg).unwrap(), data, "nothing was cut");

    // `framecast repair` accepts the loss of frame 2: the stale copy is set aside and the
    // log goes on from offset 3.
    let repaired = repair_dir(&dir).unwrap();
    assert_eq!(repaired.len(), 1, "{repaired:?}");
    let log = Log::open(&dir, config()).unwrap();
    let mut out = Vec::new();
    log.read_range(0, u64::MAX, 0, usize::MAX, &mut out)
        .unwrap();
    let got: Vec<(u64, &[u8])> = out.iter().map(|f| (f.offset, &f.payload[..])).collect();
    assert_eq!(got, [(0, &b"frame-0"[..]), (1, &b"frame-1"[..])]);
    // Damage at the end of the last segment is cut: offset 2 is taken again (`framecast
    // repair` gives the topic a new epoch, so cursors from before are refused).
    assert_eq!(log.stats().next_offset, 2);
    log.close();
}

#[test]
fn a_gap_record_of_more_offsets_than_a_segment_holds_is_refused_not_indexed() {
    use framecast::wal::record::{Gap, MAX_GAP_OFFSETS};
    let (_tmp, dir) = log_of(vec![b"zero".to_vec(), b"one".to_vec(), b"two".to_vec()]);
    let (seg, recs) = records(&dir);
    // Frame 2's bytes replaced by a gap record of 2^40 offsets with a valid checksum: its
    // holes, indexed one by one, took 4 TiB and aborted the process.
    let (pos, len) = recs[2];
    let gap = Gap {
        offset: 2,
        count: 1 << 40,
    };
    assert_eq!(gap.encode(len), None, "the writer refuses to make one");
    let mut bytes = vec![0u8; len];
    bytes[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    bytes[8..16].copy_from_slice(&2u64.to_le_bytes());
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    bytes[34..36].copy_from_slice(&1u16.to_le_bytes());
    bytes[36..40].copy_from_slice(&((len - 40) as u32).to_le_bytes());
    let crc = crc32fast::hash(&bytes[8..]);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    let mut data = std::fs::read(&seg).unwrap();
    data[pos..pos + len].copy_from_slice(&bytes);
    std::fs::write(&seg, &data).unwrap();
    match Log::open(&dir, config()) {
        Err(Error::Corruption { reason, .. }) => {
            assert!(
                reason.contains("gap record of 1099511627776 offsets"),
                "{reason}"
            )
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(log) => panic!("opened with next offset {}", log.stats().next_offset),
    }
    assert!(Gap {
        offset: 0,
        count: MAX_GAP_OFFSETS
    }
    .encode(40)
    .is_some());
}
