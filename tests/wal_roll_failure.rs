//! A new segment whose directory sync fails (`segment.dir_sync`, `--features failpoints`)
//! is given back: the append that needed it fails with the reason, the next one starts the
//! segment again and succeeds, no offset is skipped, and every acknowledged frame reads
//! back, before and after a reopen. Before, the file stayed under the segment's name and
//! every later roll failed with `AlreadyExists`: the topic took no frame until a restart.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use framecast::wal::failpoint::{self, SEGMENT_DIR_SYNC};
use framecast::wal::{FsyncPolicy, Log, LogConfig};

mod common;
use common::{append_next, assert_holds_acked, third_of_a_segment};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_frame_bytes: 24 * 1024,
        fsync: FsyncPolicy::Always,
        ..Default::default()
    }
}

#[test]
fn a_segment_whose_directory_sync_fails_is_started_again_by_the_next_append() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(tmp.path(), config()).unwrap();
    let mut acked = Vec::new();
    for _ in 0..3 {
        append_next(&log, &mut acked).unwrap();
    }
    let segments = log.stats().segments;
    // The fourth frame needs a new segment.
    failpoint::arm(SEGMENT_DIR_SYNC);
    let err = log
        .append(vec![third_of_a_segment(3)])
        .unwrap_err()
        .to_string();
    failpoint::clear();
    assert!(err.contains(SEGMENT_DIR_SYNC), "{err}");
    for i in 3..10 {
        append_next(&log, &mut acked)
            .unwrap_or_else(|e| panic!("frame {i} after the failed roll: {e}"));
    }
    assert!(log.stats().segments > segments, "rolled");
    assert_holds_acked(&log, &acked, "after the failed roll");
    drop(log);
    let log = Log::open(tmp.path(), config()).unwrap();
    assert_holds_acked(&log, &acked, "after a reopen");
}
