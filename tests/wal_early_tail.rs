//! A batch handed out before its sync (a cluster leader ships it to its followers while it
//! syncs): the records as the log keeps them, handed out only while the switch is on, and
//! a sync that fails afterwards never undone (the offsets may be on followers), with the
//! log refusing appends from then on; with the switch off, a failed sync is undone as
//! before. Failed syncs need fail points (`--features failpoints`).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use framecast::wal::{Copied, FsyncPolicy, Log, LogConfig, NewFrame, SyncObserver};

/// Fail points are process-wide: tests that arm them run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn frames(from: u64, n: u64) -> Vec<NewFrame> {
    (from..from + n)
        .map(|i| NewFrame {
            seq_no: i,
            timestamp: 0,
            key: Bytes::new(),
            payload: Bytes::from(vec![i as u8; (i * 53 % 700) as usize]),
        })
        .collect()
}

fn config(early: bool, sync_pause: Option<Duration>) -> LogConfig {
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        max_frame_bytes: 4096,
        fsync: FsyncPolicy::Always,
        sync_observer: sync_pause
            .map(|pause| SyncObserver(Arc::new(move |_| std::thread::sleep(pause)) as Arc<_>)),
        ..LogConfig::default()
    };
    config.early_tail.set(early);
    config
}

fn payloads(copied: &[Copied]) -> Vec<(u64, Bytes)> {
    copied
        .iter()
        .map(|c| match c {
            Copied::Frame {
                offset, payload, ..
            } => (*offset, payload.clone()),
            Copied::Gap(g) => panic!("a gap at {}", g.offset),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_handed_out_before_its_sync_as_the_log_keeps_it() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Each commit's sync takes 300 ms more: time to look at the batch before it is durable.
    let config = config(true, Some(Duration::from_millis(300)));
    let log = Log::open(dir.path(), config.clone()).unwrap();
    let mut written = log.watch_written();
    let sent = frames(0, 10);
    let ack = log.submit(sent.clone()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), written.changed())
        .await
        .unwrap()
        .unwrap();
    let tail = log.tail().expect("the batch is handed out");
    assert_eq!((tail.start, tail.end, *written.borrow()), (0, 10, 10));
    assert_eq!(log.durable_offset(), 0, "handed out before it is durable");
    let copied = Copied::decode_run(&tail.records).unwrap();
    let expect: Vec<(u64, Bytes)> = sent
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64, f.payload.clone()))
        .collect();
    assert_eq!(payloads(&copied), expect);

    // Once durable, no copy is kept; the log holds the same bytes.
    ack.await.unwrap().unwrap();
    assert!(log.tail().is_none());
    assert_eq!(log.durable_offset(), 10);
    let (run, next) = log.read_run(0, 1 << 20).unwrap().unwrap();
    assert_eq!((run, next), (tail.records.clone(), 10));

    // Switched off: nothing is handed out.
    config.early_tail.set(false);
    written.mark_unchanged();
    log.submit(frames(10, 3)).unwrap().await.unwrap().unwrap();
    assert!(!written.has_changed().unwrap());
    assert!(log.tail().is_none());
    assert_eq!(log.durable_offset(), 13);
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_fails_after_the_batch_was_handed_out_is_never_undone() {
    use framecast::wal::{failpoint, Error};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(true, None)).unwrap();
    log.submit(frames(0, 5)).unwrap().await.unwrap().unwrap();
    failpoint::arm(failpoint::COMMIT_SYNC);
    let failed = log.submit(frames(5, 4)).unwrap().await.unwrap();
    failpoint::clear();
    assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
    // The batch was handed out (offsets 5..9 may be on followers): it stays, never
    // visible here, and nothing more is appended, so those offsets are never reused.
    let tail = log.tail().expect("the failed batch was handed out");
    assert_eq!((tail.start, tail.end), (5, 9));
    assert_eq!(log.durable_offset(), 5);
    let refused = log.submit(frames(9, 1)).unwrap().await.unwrap();
    assert!(matches!(refused, Err(Error::Unavailable(_))), "{refused:?}");
    assert_eq!(log.durable_offset(), 5);
    // A restart finds the batch where it was written.
    drop(log);
    let log = Log::open(dir.path(), config(true, None)).unwrap();
    assert_eq!(log.durable_offset(), 9);
    let (run, _) = log.read_run(5, 1 << 20).unwrap().unwrap();
    assert_eq!(run, tail.records);
    let ack = log.append_async(frames(9, 1)).await.unwrap();
    assert_eq!(ack[0].offset, 9);
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_switch_off_a_failed_sync_is_undone_and_appends_go_on() {
    use framecast::wal::{failpoint, Error};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config(false, None)).unwrap();
    log.submit(frames(0, 5)).unwrap().await.unwrap().unwrap();
    failpoint::arm(failpoint::COMMIT_SYNC);
    let failed = log.submit(frames(5, 4)).unwrap().await.unwrap();
    failpoint::clear();
    assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
    assert!(log.tail().is_none());
    // Undone: the next append takes offset 5, and a restart finds it, not the failed batch.
    let ack = log.append_async(frames(100, 1)).await.unwrap();
    assert_eq!(ack[0].offset, 5);
    drop(log);
    let log = Log::open(dir.path(), config(false, None)).unwrap();
    assert_eq!(log.durable_offset(), 6);
    let frame = log.read(5).unwrap().unwrap();
    assert_eq!(frame.seq_no, 100);
}

/// A sync that fails, and whose undo fails too, stops the log at once: a later request of
/// the same batch that needs a new segment gets no segment (whose base would be an offset
/// the disk may still hold), and nothing more is written, then or at close.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sync_that_cannot_be_undone_no_new_segment_is_started() {
    use framecast::wal::{failpoint, Error};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let sized = |seq_no: u64, len: usize| NewFrame {
        seq_no,
        timestamp: 0,
        key: Bytes::new(),
        payload: Bytes::from(vec![b'f'; len]),
    };
    // 256 KiB segments hold 262,080 bytes of records: 258 records of 1,000 bytes leave
    // 4,080, enough for two empty frames (40 bytes each) but not then for 4,040 more.
    let config = config(false, Some(Duration::from_millis(300)));
    let log = Log::open(dir.path(), config.clone()).unwrap();
    for chunk in 0..6u64 {
        let n = if chunk < 5 { 50 } else { 8 };
        let frames = (0..n).map(|i| sized(chunk * 50 + i, 960)).collect();
        log.append_async(frames).await.unwrap();
    }
    assert_eq!(log.durable_offset(), 258);
    let segment_files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count()
    };
    assert_eq!(segment_files(), 1);
    // The 2nd and 3rd syncs from here fail: the first request's sync, then its undo.
    failpoint::arm_times(failpoint::COMMIT_SYNC, 2, 2);
    let r0 = log.submit(vec![sized(1000, 0)]).unwrap();
    // R0's sync takes 300 ms: R1 and R2 queue meanwhile and are committed in one batch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r1 = log.submit(vec![sized(1001, 0)]).unwrap();
    let r2 = log.submit(vec![sized(1002, 4000)]).unwrap();
    assert_eq!(r0.await.unwrap().unwrap()[0].offset, 258);
    let (r1, r2) = (r1.await.unwrap(), r2.await.unwrap());
    failpoint::clear();
    assert!(matches!(r1, Err(Error::Unavailable(_))), "{r1:?}");
    assert!(matches!(r2, Err(Error::Unavailable(_))), "{r2:?}");
    assert_eq!(
        segment_files(),
        1,
        "a segment was started after the log failed"
    );
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    assert_eq!(log.durable_offset(), 259);
    assert!(log.read(259).unwrap().is_none());
}

/// A request of copied records that spans a segment roll, whose sync at the roll fails and
/// is undone (the switch off): the request fails whole, and the follower's log ends where
/// it was durable. Before, the records after the roll were written into a segment based at
/// the undone offset and the request was acknowledged: a follower reported frames it did
/// not hold. Copied again from its durable end, the follower holds the leader's records
/// byte for byte, across a reopen too.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_records_undone_at_a_roll_fail_their_request_whole() {
    use framecast::wal::{failpoint, Error};
    let _serial = SERIAL.lock().await;
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Log::open(ld.path(), config(false, None)).unwrap();
    for from in (0..150).step_by(30) {
        let big = (from..from + 30)
            .map(|i| NewFrame {
                seq_no: i,
                timestamp: 0,
                key: Bytes::from(format!("key-{i}")),
                payload: Bytes::from(vec![i as u8; 3_000]),
            })
            .collect();
        leader.append_async(big).await.unwrap();
    }
    let everything = |log: &Log| log.read_records(0, 64 << 20).unwrap().0;
    let records = everything(&leader);
    assert_eq!(records.len(), 150);
    let copied = |from: u64| -> Vec<Copied> {
        records[from as usize..]
            .iter()
            .map(|r| Copied::decode(r).unwrap())
            .collect()
    };
    let follower = Log::open(fd.path(), config(false, None)).unwrap();
    let first: Vec<Copied> = copied(0).into_iter().take(10).collect();
    assert_eq!(follower.append_copied(first).await.unwrap(), 10);
    // 420 kB of records more: the follower's 256 KiB segment rolls within the request,
    // and the sync of what came before the roll fails.
    failpoint::arm(failpoint::COMMIT_SYNC);
    let failed = follower.append_copied(copied(10)).await;
    failpoint::clear();
    assert!(matches!(failed, Err(Error::Unavailable(_))), "{failed:?}");
    let durable = follower.durable_offset();
    assert_eq!(durable, 10);
    assert_eq!(follower.append_copied(copied(durable)).await.unwrap(), 150);
    assert_eq!(everything(&follower), records);
    drop(follower);
    let follower = Log::open(fd.path(), config(false, None)).unwrap();
    assert_eq!(follower.durable_offset(), 150);
    assert_eq!(everything(&follower), records);
}
