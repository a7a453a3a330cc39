//! A log as a copy of another (the cluster's follower side): records read from a leader's
//! log and appended to a follower's are the same bytes, offsets, keys and key times, across
//! segment rolls, compaction and restarts; records that do not continue the log or arrive
//! damaged are refused with nothing written; a suffix a new leader lacks is cut with a
//! `.torn` copy kept, and the log continues from the cut.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::time::Duration;

use bytes::Bytes;
use framecast::wal::format::SEGMENT_HEADER_LEN;
use framecast::wal::record::{Step, Walk};
use framecast::wal::{
    cut_from, CompactOptions, Copied, Error, FsyncPolicy, Log, LogConfig, NewFrame,
};

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        fsync: FsyncPolicy::Always,
        max_frame_bytes: (segment_bytes / 2) as usize,
        dedup_window: Duration::from_secs(120),
        ..LogConfig::default()
    }
}

/// Appends frames of every shape (empty, small, up to `max` bytes, with and without keys),
/// one request each, all queued at once (so they share syncs).
async fn fill(log: &Log, n: u64, start: u64, max: u64) {
    let receivers: Vec<_> = frames(n, start, max)
        .into_iter()
        .map(|f| log.submit(vec![f]).unwrap())
        .collect();
    for rx in receivers {
        rx.await.unwrap().unwrap();
    }
}

fn frames(n: u64, start: u64, max: u64) -> Vec<NewFrame> {
    (start..start + n)
        .map(|i| NewFrame {
            seq_no: (i * 7919) % 97,
            timestamp: 0,
            key: if i % 3 == 0 {
                Bytes::from(format!("key-{i}"))
            } else {
                Bytes::new()
            },
            // Odd frames carry up to `max` bytes, even ones none.
            payload: Bytes::from(vec![(i % 251) as u8; (i % 2 * (i * 131) % max) as usize]),
        })
        .collect()
}

/// Every record of `log` as shipped, from offset 0, in pages of at most `page` bytes.
fn shipped(log: &Log, page: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut from = log.first_offset();
    loop {
        let (records, next) = log.read_records(from, page).unwrap();
        if records.is_empty() {
            assert_eq!(next, log.durable_offset());
            return out;
        }
        assert!(next > from);
        from = next;
        out.extend(records);
    }
}

/// Copies everything `leader` holds past `follower`'s end, in pages.
async fn follow(leader: &Log, follower: &Log, page: usize) {
    loop {
        let (records, _) = leader
            .read_records(follower.durable_offset(), page)
            .unwrap();
        if records.is_empty() {
            return;
        }
        let copied: Vec<Copied> = records.iter().map(|r| Copied::decode(r).unwrap()).collect();
        let end = copied.last().unwrap().end();
        assert_eq!(follower.append_copied(copied).await.unwrap(), end);
    }
}

#[tokio::test]
async fn a_follower_holds_the_leaders_records_byte_for_byte() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(ld.path(), config(256 * 1024)).unwrap();
    // The follower's segments are smaller: its files roll elsewhere, its records do not change.
    let follower = Log::open(fd.path(), config(64 * 1024)).unwrap();
    for round in 0..4u64 {
        fill(&leader, 150, round * 150, 20_000).await;
        follow(&leader, &follower, 1 + (round as usize) * 40_000).await;
    }
    assert_eq!(follower.durable_offset(), 600);
    assert_eq!(shipped(&leader, 1 << 20), shipped(&follower, 1 << 20));
    let (ls, fs) = (leader.stats(), follower.stats());
    assert_eq!(
        (ls.frames, ls.bytes, ls.next_offset),
        (fs.frames, fs.bytes, fs.next_offset)
    );
    assert!(fs.segments > ls.segments, "{fs:?} vs {ls:?}");

    // Keys came along: a retry of a key the leader stored is a duplicate on the follower.
    let retry = NewFrame {
        key: Bytes::from("key-300"),
        ..NewFrame::default()
    };
    let ack = follower.append_async(vec![retry]).await.unwrap();
    assert!(ack[0].duplicate);
    assert_eq!(ack[0].offset, 300);

    // A restart reads the same records back.
    drop(follower);
    let follower = Log::open(fd.path(), config(64 * 1024)).unwrap();
    assert_eq!(shipped(&leader, 1 << 20), shipped(&follower, 1 << 20));
}

#[tokio::test]
async fn records_read_from_compacted_runs_are_the_same_bytes() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(ld.path(), config(64 * 1024)).unwrap();
    fill(&leader, 400, 0, 20_000).await;
    let before = shipped(&leader, 1 << 16);
    let report = leader.compact(&CompactOptions::default()).unwrap();
    assert!(report.segments_in >= 2, "{report:?}");
    assert_eq!(leader.stats().runs, 1);
    assert_eq!(shipped(&leader, 1 << 16), before);
    let follower = Log::open(fd.path(), config(64 * 1024)).unwrap();
    follow(&leader, &follower, 10_000).await;
    assert_eq!(shipped(&follower, 1 << 16), before);
}

#[tokio::test]
async fn records_that_do_not_continue_the_log_or_are_damaged_are_refused() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(ld.path(), config(64 * 1024)).unwrap();
    fill(&leader, 10, 0, 20_000).await;
    let follower = Log::open(fd.path(), config(64 * 1024)).unwrap();
    let (records, _) = leader.read_records(0, 1 << 20).unwrap();
    assert_eq!(records.len(), 10);
    let all: Vec<Copied> = records.iter().map(|r| Copied::decode(r).unwrap()).collect();

    // Not starting at the follower's end.
    let err = follower.append_copied(all[1..].to_vec()).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // A hole in the middle: nothing of the request is written.
    let holey = vec![all[0].clone(), all[2].clone()];
    let err = follower.append_copied(holey).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(follower.durable_offset(), 0);
    assert_eq!(follower.stats().frames, 0);

    // Every single flipped bit of a shipped record is caught on arrival.
    let record = &records[3];
    for bit in 0..record.len() * 8 {
        let mut bad = record.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Copied::decode(&Bytes::from(bad)).is_err(),
            "bit {bit} passed"
        );
    }
    // A record cut short, or two records in one piece.
    assert!(Copied::decode(&record.slice(..record.len() - 1)).is_err());
    let two = [records[0].as_ref(), records[1].as_ref()].concat();
    assert!(Copied::decode(&Bytes::from(two)).is_err());

    follower.append_copied(all).await.unwrap();
    assert_eq!(shipped(&follower, 1 << 20), records);
    // Past the durable end: nothing yet.
    assert!(leader.read_records(11, 100).unwrap().0.is_empty());
}

/// Copies everything `leader` holds past `follower`'s end as the cluster's leader ships it
/// to a follower that takes runs: a run of one segment where there is one, else record by
/// record. Returns how many pieces went each way.
async fn follow_in_runs(leader: &Log, follower: &Log, page: usize) -> (usize, usize) {
    let (mut runs, mut singles) = (0, 0);
    loop {
        let from = follower.durable_offset();
        let copied = match leader.read_run(from, page).unwrap() {
            Some((run, next)) => {
                runs += 1;
                // A run holds whole records, `page` bytes at most unless one record is more.
                let copied = Copied::decode_run(&run).unwrap();
                assert!(
                    run.len() <= page || copied.len() == 1,
                    "{} bytes",
                    run.len()
                );
                assert_eq!(copied.last().unwrap().end(), next);
                copied
            }
            None => {
                let (records, _) = leader.read_records(from, page).unwrap();
                if records.is_empty() {
                    return (runs, singles);
                }
                singles += 1;
                records.iter().map(|r| Copied::decode(r).unwrap()).collect()
            }
        };
        assert_eq!(copied[0].offset(), from);
        let end = copied.last().unwrap().end();
        assert_eq!(follower.append_copied(copied).await.unwrap(), end);
    }
}

#[tokio::test]
async fn runs_carry_the_same_records_as_one_by_one_across_segments_and_compaction() {
    let ld = tempfile::tempdir().unwrap();
    let leader = Log::open(ld.path(), config(64 * 1024)).unwrap();
    fill(&leader, 400, 0, 20_000).await;
    leader.compact(&CompactOptions::default()).unwrap();
    assert_eq!(leader.stats().runs, 1);
    fill(&leader, 300, 400, 20_000).await;
    let all = shipped(&leader, 1 << 20);
    assert_eq!(all.len(), 700);

    // Whatever the page, the copy is the leader's records byte for byte: compacted ones
    // one by one, the segments' as runs that never cross a segment's end.
    for page in [1, 300, 10_000, 1 << 20] {
        let follower_dir = tempfile::tempdir().unwrap();
        let follower = Log::open(follower_dir.path(), config(48 * 1024)).unwrap();
        let (runs, singles) = follow_in_runs(&leader, &follower, page).await;
        assert!(
            runs > 0 && singles > 0,
            "page {page}: {runs} runs, {singles} singles"
        );
        assert_eq!(shipped(&follower, 1 << 20), all, "page {page}");
    }

    // Runs read from any record on start at that record and end where a segment ends.
    let mut from = leader.stats().next_offset - 5;
    while from < leader.durable_offset() {
        let (run, next) = leader.read_run(from, 1 << 20).unwrap().unwrap();
        let copied = Copied::decode_run(&run).unwrap();
        assert_eq!(copied[0].offset(), from);
        assert_eq!(copied.len() as u64, next - from);
        from = next;
    }
    // Nothing durable past the end: no run.
    assert!(leader.read_run(700, 1 << 20).unwrap().is_none());
}

#[tokio::test]
async fn a_run_damaged_cut_short_or_padded_is_refused() {
    let ld = tempfile::tempdir().unwrap();
    let leader = Log::open(ld.path(), config(64 * 1024)).unwrap();
    fill(&leader, 4, 0, 300).await;
    let (run, next) = leader.read_run(0, 1 << 20).unwrap().unwrap();
    assert_eq!(next, 4);
    let one_by_one: Vec<Copied> = shipped(&leader, 1 << 20)
        .iter()
        .map(|r| Copied::decode(r).unwrap())
        .collect();
    assert_eq!(Copied::decode_run(&run).unwrap(), one_by_one);

    // Every single flipped bit is caught.
    for bit in 0..run.len() * 8 {
        let mut bad = run.to_vec();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Copied::decode_run(&Bytes::from(bad)).is_err(),
            "bit {bit} passed"
        );
    }
    // Cut inside its last record, or followed by zeros or by a stray byte.
    assert!(Copied::decode_run(&run.slice(..run.len() - 1)).is_err());
    let padded = [run.as_ref(), &[0u8; 64]].concat();
    assert!(Copied::decode_run(&Bytes::from(padded)).is_err());
    let stray = [run.as_ref(), &[1u8]].concat();
    assert!(Copied::decode_run(&Bytes::from(stray)).is_err());
}

#[tokio::test]
async fn batches_queued_before_the_one_before_is_durable_land_in_order() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(ld.path(), config(64 * 1024)).unwrap();
    fill(&leader, 30, 0, 2_000).await;
    let all: Vec<Copied> = shipped(&leader, 1 << 20)
        .iter()
        .map(|r| Copied::decode(r).unwrap())
        .collect();
    let follower = Log::open(fd.path(), config(64 * 1024)).unwrap();
    // Three batches queued at once, as a follower queues the next while one syncs.
    let queued: Vec<_> = [&all[..10], &all[10..20], &all[20..]]
        .into_iter()
        .map(|b| follower.submit_copied(b.to_vec()).unwrap())
        .collect();
    for durable in queued {
        durable.await.unwrap();
    }
    assert_eq!(follower.durable_offset(), 30);
    assert_eq!(shipped(&follower, 1 << 20), shipped(&leader, 1 << 20));
    // A batch queued after one that fails does not continue the log: refused too, and
    // nothing of either is written.
    fill(&leader, 10, 30, 2_000).await;
    let more: Vec<Copied> = leader
        .read_records(30, 1 << 20)
        .unwrap()
        .0
        .iter()
        .map(|r| Copied::decode(r).unwrap())
        .collect();
    let skipping = follower.submit_copied(more[1..5].to_vec()).unwrap();
    let after = follower.submit_copied(more[5..].to_vec()).unwrap();
    assert!(matches!(skipping.await, Err(Error::InvalidArgument(_))));
    assert!(matches!(after.await, Err(Error::InvalidArgument(_))));
    assert_eq!(follower.durable_offset(), 30);
}

#[tokio::test]
async fn a_suffix_the_new_leader_lacks_is_cut_and_kept() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = config(16 * 1024);
    let leader = Log::open(ld.path(), cfg.clone()).unwrap();
    fill(&leader, 300, 0, 5_000).await;
    let follower = Log::open(fd.path(), cfg.clone()).unwrap();
    follow(&leader, &follower, 50_000).await;
    // Owned copies: shipped records point into the mapping, which the cut rewrites.
    let before: Vec<Bytes> = shipped(&follower, 1 << 20)
        .iter()
        .map(|r| Bytes::copy_from_slice(r))
        .collect();
    let segments = follower.stats().segments;
    assert!(segments > 4, "{segments}");
    drop(follower);

    // Nothing at or past the end: nothing to cut.
    assert_eq!(cut_from(fd.path(), 300, cfg.segment_bytes).unwrap(), None);

    // Cut at 120: later segments go whole, the one holding 120 is cut at its record.
    let cut = cut_from(fd.path(), 120, cfg.segment_bytes)
        .unwrap()
        .unwrap();
    assert_eq!(cut.from, 120);
    let cut_bytes: u64 = before[120..].iter().map(|r| r.len() as u64).sum();
    assert_eq!(cut.bytes, cut_bytes);
    // The kept copies hold exactly the cut records, in order.
    let mut kept = Vec::new();
    let mut files = cut.kept.clone();
    files.sort();
    for f in &files {
        assert!(f.to_string_lossy().ends_with(".torn"), "{}", f.display());
        let bytes = std::fs::read(f).unwrap();
        if f.to_string_lossy().contains(".whole.") {
            // A whole segment: its header, its records, then preallocated zeros.
            let start = SEGMENT_HEADER_LEN;
            let mut end = start;
            for (pos, step) in Walk::new(&bytes, start) {
                match step {
                    Step::Record(_, len) => end = pos + len,
                    other => {
                        assert_eq!(other, Step::End);
                        break;
                    }
                }
            }
            kept.extend_from_slice(&bytes[start..end]);
        } else {
            kept.extend_from_slice(&bytes);
        }
    }
    let expected = before[120..].concat();
    assert_eq!(kept.len(), expected.len(), "{files:?}");
    let first_diff = kept.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        first_diff.is_none(),
        "the kept copies differ from the cut records at byte {first_diff:?} of {}; {files:?}",
        kept.len()
    );

    let follower = Log::open(fd.path(), cfg.clone()).unwrap();
    assert_eq!(follower.durable_offset(), 120);
    assert_eq!(shipped(&follower, 1 << 20), before[..120].to_vec());
    // Following the (new) leader again from the cut gives back the same log.
    follow(&leader, &follower, 7_000).await;
    assert_eq!(shipped(&follower, 1 << 20), before);

    // A cut at the very first offset empties the log; it continues from 0.
    drop(follower);
    cut_from(fd.path(), 0, cfg.segment_bytes).unwrap().unwrap();
    let follower = Log::open(fd.path(), cfg).unwrap();
    assert_eq!((follower.first_offset(), follower.durable_offset()), (0, 0));
    follow(&leader, &follower, 7_000).await;
    assert_eq!(shipped(&follower, 1 << 20), before);
}
