//! Near the kernel's limit on a process's memory mappings (`vm.max_map_count`, 65,530 by
//! default; every segment is a mapping, every thread four), the log refuses what would take
//! it within `mappings::RESERVE` of it: a new segment, a new log, a topic, a committer thread
//! when none runs (a publish to an idle log runs on one that does). Each refusal names the limit and the fix (never `Cannot allocate memory`
//! alone), the process lives on (at the limit itself a thread that gets its stack but not
//! its signal stack aborts it), the log stays valid, a refused topic leaves nothing in the
//! data dir, an existing log still opens there (as a restart must), and everything resumes
//! once mappings are freed.
//!
//! The test brings its own process between the two ceilings, the limit less the reserve
//! and less half of it (one small file mapped again and again, through the crate's
//! read-only mapping), so it needs no root and changes nothing outside its process. The kernel's own refusal is not reached (the
//! budget refuses first); its words are checked by `wal::mappings`'s unit tests. It is the
//! only test in this binary: while it holds the mappings, other tests in the process would
//! be refused too.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framecast::broker::metrics::Metrics;
use framecast::broker::Topics;
use framecast::wal::mappings::{self, Need};
use framecast::wal::{FsyncPolicy, Log, LogConfig, MappedFile};

mod common;
use common::{append_next, assert_holds_acked, committer_threads, third_of_a_segment};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_frame_bytes: 24 * 1024,
        fsync: FsyncPolicy::Never,
        ..Default::default()
    }
}

/// A log whose sync deadline (an hour) keeps a committer thread running: its refusals can
/// only be its segments'.
fn busy_config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
        ..config()
    }
}

/// Maps `filler` until the budget refuses, twice (the second after the process's mappings
/// were counted afresh): the ceiling for existing files, half the reserve short of the
/// limit. Then gives back a quarter of the reserve, which leaves the process between that
/// ceiling and the one for new segments and threads (the whole reserve short), and counts
/// again. Returns the refusal.
fn fill(filler: &Path, held: &mut Vec<Arc<MappedFile>>, limit: u64) -> String {
    let mut refusals = 0;
    let refused = loop {
        assert!(held.len() <= limit as usize, "never refused");
        match MappedFile::open(filler) {
            Ok(m) => held.push(m),
            Err(e) => {
                refusals += 1;
                if refusals == 2 {
                    break e.to_string();
                }
                mappings::refresh();
            }
        }
    };
    let in_use = mappings::in_use().unwrap();
    assert!(
        in_use + mappings::RESERVE / 4 < limit,
        "{in_use} mappings of {limit}: the reserve was not kept"
    );
    held.truncate(held.len() - (mappings::RESERVE / 4) as usize);
    mappings::refresh();
    assert!(
        mappings::admit(Need::New(1)).is_err(),
        "between the two ceilings, a new mapping is refused"
    );
    refused
}

#[test]
fn at_the_mapping_limit_a_new_segment_is_refused_with_the_reason_and_nothing_is_lost() {
    let limit = mappings::limit().expect("/proc/sys/vm/max_map_count");
    // Up to the 1,048,576 some distributions set (some 200 MB of kernel memory at the top);
    // a limit under three reserves leaves no room to test in.
    if !(3 * mappings::RESERVE..=1_100_000).contains(&limit) {
        eprintln!("skipped: vm.max_map_count is {limit}, outside what this test can fill");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir: &Path = &tmp.path().join("log");
    let log = Log::open(dir, busy_config()).unwrap();
    let mut acked = Vec::new();
    for _ in 0..4 {
        append_next(&log, &mut acked).unwrap();
    }
    // A log that exists, closed: it must still open at the ceiling, as a restart must.
    let closed_dir = tmp.path().join("closed");
    let mut closed_acked = Vec::new();
    {
        let closed = Log::open(&closed_dir, config()).unwrap();
        for _ in 0..7 {
            append_next(&closed, &mut closed_acked).unwrap();
        }
    }
    // A log that takes one frame, then idles: its next publish needs a new thread.
    let quiet_dir = tmp.path().join("quiet");
    let quiet = Log::open(&quiet_dir, config()).unwrap();
    let mut quiet_acked = Vec::new();
    append_next(&quiet, &mut quiet_acked).unwrap();
    // A topic registry too, with a topic made (its blocking thread stays for the next).
    let data = tmp.path().join("data");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topics = Topics::open(&data, config(), true, Arc::new(Metrics::new(100))).unwrap();
    runtime.block_on(topics.create("warm", 0, 0)).unwrap();
    let filler = tmp.path().join("filler");
    std::fs::write(&filler, [7u8; 4096]).unwrap();

    // Up to the ceilings: each mapping of the same file at offset 0 is its own (the kernel
    // cannot merge them). Room for every handle is taken first.
    let mut held: Vec<Arc<MappedFile>> = Vec::with_capacity(limit as usize + 64);
    let refused = fill(&filler, &mut held, limit);
    assert!(held.len() > 1000, "only {} mappings", held.len());
    assert!(refused.contains("vm.max_map_count"), "{refused}");
    assert!(refused.contains("sysctl -w vm.max_map_count="), "{refused}");

    // Appends go on until the segment is full; the one that needs a new segment is
    // refused, saying why, and so is every later one while the limit holds.
    let err = loop {
        assert!(acked.len() < 20, "a new segment was never needed");
        if let Err(e) = append_next(&log, &mut acked) {
            break e.to_string();
        }
    };
    assert!(err.contains("vm.max_map_count"), "{err}");
    assert!(
        !err.contains("cannot start committer"),
        "the segment's refusal: {err}"
    );
    assert!(append_next(&log, &mut acked).is_err(), "still at the limit");
    let other = tmp.path().join("other");
    let err = Log::open(&other, config()).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("vm.max_map_count")),
        "a new log at the limit: {err:?}"
    );
    assert_holds_acked(&log, &acked, "at the limit");
    let err = runtime
        .block_on(topics.create("refused", 0, 0))
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("vm.max_map_count")),
        "a new topic at the limit: {err:?}"
    );
    let mut left: Vec<_> = std::fs::read_dir(data.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["warm"], "a refused creation leaves nothing behind");
    // Existing files are held to half the reserve only: the closed log opens.
    let reopened = Log::open(&closed_dir, config()).expect("an existing log opens at the ceiling");
    assert_holds_acked(&reopened, &closed_acked, "the closed log at the ceiling");
    drop(reopened);

    // Once the committer threads the appends started have stopped but one (it keeps the
    // busy log's sync deadline), and the room they gave back is taken again, the quiet
    // log's publish runs on that one: an idle topic needs no thread of its own.
    wait_for_committer_threads(1);
    fill(&filler, &mut held, limit);
    append_next(&quiet, &mut quiet_acked).expect("an idle log's publish on the running thread");
    // With no deadline left, the last thread stops too; then the quiet log's publish needs
    // a new one: refused, the process alive.
    drop(log);
    wait_for_committer_threads(0);
    fill(&filler, &mut held, limit);
    let err = quiet
        .append(vec![third_of_a_segment(9)])
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(
            |e| e.contains("cannot start committer") && e.contains("vm.max_map_count")
        ),
        "a publish with no committer thread at the limit: {err:?}"
    );
    assert_holds_acked(&quiet, &quiet_acked, "the quiet log at the limit");

    drop(held);
    // A refusal stands until the mappings are counted again (the server does it once a
    // second while it refuses).
    mappings::refresh();
    append_next(&quiet, &mut quiet_acked).expect("the quiet log takes frames again");
    assert_holds_acked(&quiet, &quiet_acked, "the quiet log after the limit");
    let log = Log::open(dir, busy_config()).unwrap();
    assert_holds_acked(&log, &acked, "the busy log reopened");
    let refused_at = acked.len();
    for _ in 0..10 {
        append_next(&log, &mut acked).expect("appends resume once mappings are free");
    }
    assert_eq!(
        acked[refused_at].0, refused_at as u64,
        "the refusals used no offset"
    );
    assert_holds_acked(&log, &acked, "after the limit");
    drop(log);
    let log = Log::open(dir, config()).unwrap();
    assert_holds_acked(&log, &acked, "after a reopen");
    // The log refused at the limit opens now, empty.
    let other = Log::open(&other, config()).unwrap();
    assert_holds_acked(&other, &[], "the other log");
    let (made, created) = runtime.block_on(topics.create("refused", 0, 0)).unwrap();
    assert!(created && made.name() == "refused");
}

/// Waits (up to 30 s) until `n` committer threads are left in this process.
fn wait_for_committer_threads(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while committer_threads() != n {
        assert!(
            Instant::now() < deadline,
            "{} committer threads, {n} expected: idle ones never stopped",
            committer_threads()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
