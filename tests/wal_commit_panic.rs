//! A committer's turn that panics (`commit.panic`, `--features failpoints`) fails its own log
//! and nothing else: the appends it held and every later one are refused, the log still
//! closes (nothing waits for a turn that will never end), what was acknowledged before is
//! there when it is opened again, the failure is raised, and the other logs' commits go on
//! on the same threads.
#![cfg(feature = "failpoints")]
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::time::Duration;

use bytes::Bytes;
use framecast::wal::failpoint::{self, COMMIT_PANIC};
use framecast::wal::{FailureSignal, FsyncPolicy, Log, LogConfig, NewFrame};

fn config(failure: &FailureSignal) -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Always,
        failure: failure.clone(),
        ..Default::default()
    }
}

fn frame(i: u64) -> NewFrame {
    NewFrame {
        seq_no: i,
        timestamp: i as i64,
        key: Bytes::new(),
        payload: Bytes::from(format!("frame {i}")),
    }
}

#[test]
fn a_panicking_commit_fails_its_log_and_the_others_go_on() {
    // A wedged log would hang the test: it runs on a thread, bounded in time.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        scenario();
        done.send(()).unwrap();
    });
    match finished.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("an append or the close never returned: the log stayed wedged")
        }
        Err(e) => panic!("the scenario failed: {e}"),
    }
}

fn scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let failure = FailureSignal::default();
    let hit = Log::open(&tmp.path().join("hit"), config(&failure)).unwrap();
    let other = Log::open(&tmp.path().join("other"), config(&FailureSignal::default())).unwrap();
    for i in 0..3 {
        hit.append(vec![frame(i)]).unwrap();
        other.append(vec![frame(i)]).unwrap();
    }
    failpoint::arm(COMMIT_PANIC);
    assert!(hit.append(vec![frame(3)]).is_err(), "the turn's append");
    failpoint::clear();
    let err = hit.append(vec![frame(4)]).unwrap_err().to_string();
    assert!(err.contains("a commit panicked"), "{err}");
    assert!(failure
        .get()
        .is_some_and(|why| why.contains("a commit panicked")));
    for i in 3..50 {
        let acks = other.append(vec![frame(i)]).expect("the other log goes on");
        assert_eq!(acks[0].offset, i);
    }
    // It closes: nothing is left scheduled.
    hit.close();
    drop(hit);
    let hit = Log::open(&tmp.path().join("hit"), config(&FailureSignal::default())).unwrap();
    let mut all = Vec::new();
    hit.read_range(0, u64::MAX, 0, usize::MAX, &mut all)
        .unwrap();
    let seq_nos: Vec<u64> = all.iter().map(|f| f.seq_no).collect();
    assert_eq!(
        seq_nos,
        [0, 1, 2],
        "what was acknowledged, and nothing else"
    );
    assert_eq!(
        hit.append(vec![frame(3)]).unwrap()[0].offset,
        3,
        "reopened, it takes frames"
    );
}
