//! Recovery keeps its promises, end to end with the real binary (issue 9):
//! - a flipped bit in frame 100 of 2,000 (the only, active, segment) stops startup, naming
//!   the file, the byte position and `framecast repair`; nothing is cut;
//! - `framecast repair` (refused while a server holds the data dir) sets the damage aside
//!   and prints what it did; the server then serves every other frame at its offset under a
//!   new epoch, an old-epoch resume gets FAILED_PRECONDITION, and new offsets follow the old
//!   end;
//! - a tail cut under `--fsync never` gives the topic a new epoch (also when the server
//!   that cuts it runs under `always`: the policy the frames were written under counts);
//!   under `always` throughout a tail a crash tore (no CRC written yet) keeps it, and a
//!   whole last record that fails its check (damage: it may have been acknowledged) is
//!   cut, kept aside and gets a new epoch;
//! - a last segment cut short by something else (to a length framecast never gives one) is
//!   reported by startup and `dump --verify`, and gets a new epoch.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use framecast::proto::{Cursor, Frame, SubscribeRequest};
use framecast::wal::format::SEGMENT_HEADER_LEN;
use framecast::wal::list_segments;
use framecast::wal::record::{Step, Walk};
use tonic::Code;

const TOPIC: &str = "issue9";
const LIMIT: Duration = Duration::from_secs(30);

fn payload(i: u64) -> Vec<u8> {
    format!("frame {i} of the issue-9 scenario").into_bytes()
}

fn topic_dir(data: &Path) -> PathBuf {
    data.join("topics").join(TOPIC)
}

fn only_segment(data: &Path) -> PathBuf {
    let segs = list_segments(&topic_dir(data)).expect("list segments");
    assert_eq!(segs.len(), 1, "the scenario has one segment");
    segs[0].1.clone()
}

/// Position and length of `offset`'s record in `seg`.
fn record_at(seg: &Path, offset: u64) -> (usize, usize) {
    let data = std::fs::read(seg).expect("read segment");
    Walk::new(&data, SEGMENT_HEADER_LEN)
        .expecting(0)
        .find_map(|(pos, step)| match step {
            Step::Record(r, len) if r.offset == offset => Some((pos, len)),
            _ => None,
        })
        .expect("record present")
}

fn file_epoch(data: &Path) -> u64 {
    let text = std::fs::read_to_string(topic_dir(data).join("topic.json")).expect("topic.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["epoch"].as_u64().expect("epoch")
}

fn cursor(snapshot: u64, epoch: u64, f: &Frame) -> Cursor {
    Cursor {
        snapshot_offset: snapshot,
        epoch,
        seq_no: f.seq_no,
        timestamp: f.timestamp,
        offset: f.offset,
    }
}

/// Subscribes to the whole of `TOPIC` on `server` and reads `n` frames: the subscription's
/// epoch and the cursor after the frame at index `at` of those.
async fn read_to(server: &Server, n: usize, at: usize) -> (u64, Cursor) {
    let mut c = server.client().await;
    let mut sub = subscribe(&mut c, sub_req(TOPIC, 0))
        .await
        .expect("subscribe");
    let seen = take(&mut sub.stream, n, LIMIT).await;
    (sub.epoch, cursor(sub.snapshot, sub.epoch, &seen[at]))
}

fn resume(c: Cursor) -> SubscribeRequest {
    SubscribeRequest {
        replay_seq_no_start: 0,
        topic: TOPIC.into(),
        resume: Some(c),
    }
}

fn stop(mut server: Server) {
    server.sigterm();
    let status = server.wait_exit(LIMIT).expect("server stops");
    assert!(status.success(), "clean stop: {}", server.log_text());
}

/// Runs the binary with `args` to completion (bounded by the server's own startup time).
fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run framecast");
    out
}

/// Runs `framecast serve` with `args`, which must refuse to start: its stderr. A server that
/// starts anyway is killed after 20 s and fails the test.
fn refused_start(args: &[&str]) -> String {
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run framecast");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr)
                .expect("read stderr");
            assert!(!status.success(), "must not start: {stderr}");
            return stderr;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started on a damaged data dir");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Publishes `n` frames (seq_no = i, so replay order is offset order) and returns the acks'
/// offsets.
async fn publish_n(server: &Server, n: u64) -> Vec<u64> {
    let mut c = server.client().await;
    let reqs: Vec<_> = (0..n).map(|i| req(TOPIC, i, &payload(i))).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let acked = paced_publish_stream(
        &mut c,
        reqs.into_iter(),
        usize::MAX,
        Duration::ZERO,
        deadline,
        "publish",
    )
    .await;
    acked.iter().map(|(_, a)| a.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bit_in_frame_100_stops_startup_then_repair_keeps_the_other_1999() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let data_s = data.to_str().expect("utf-8 path");
    let server = Server::start(data, &["--fsync", "always"]);
    let offsets = publish_n(&server, 2000).await;
    assert_eq!(offsets, (0..2000).collect::<Vec<_>>());
    let (old_epoch, old_cursor) = read_to(&server, 150, 149).await;
    stop(server);

    // Flip one payload bit of frame 100.
    let seg = only_segment(data);
    let (pos, len) = record_at(&seg, 100);
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[pos + len - 3] ^= 0x04;
    std::fs::write(&seg, &bytes).expect("write");

    // Startup refuses, naming file, position and the repair command; nothing is cut.
    let out = run(&serve_args(data_s));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("startup on damage said:\n{stderr}");
    assert!(!out.status.success(), "must not start: {stderr}");
    assert!(
        stderr.contains(&seg.display().to_string()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains(&format!("at byte {pos}")),
        "names the position: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "framecast repair --data-dir {data_s} --topic {TOPIC}"
        )),
        "names the repair command: {stderr}"
    );
    assert_eq!(std::fs::read(&seg).expect("read"), bytes, "nothing was cut");
    // `dump --verify` agrees: interior damage, not a torn tail.
    let out = run(&["dump", "--verify", "--data-dir", data_s, "--topic", TOPIC]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "dump --verify: {text}");
    assert!(
        text.contains(&format!("BAD {} at byte {pos}", seg.display())),
        "{text}"
    );

    // Repair: prints what it did.
    let out = run(&["repair", "--data-dir", data_s, "--topic", TOPIC]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("repair printed:\n{stdout}");
    assert!(
        out.status.success(),
        "repair: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&seg.display().to_string()), "{stdout}");
    assert!(
        stdout.contains(&format!("bytes {pos}..{}", pos + len)),
        "{stdout}"
    );
    assert!(stdout.contains("offsets lost: 100..101 (1)"), "{stdout}");
    assert!(
        stdout.contains(&format!("epoch {old_epoch} -> ")),
        "{stdout}"
    );
    let saved = PathBuf::from(format!("{}.{pos}.damaged", seg.display()));
    assert_eq!(
        std::fs::read(&saved).expect("damaged copy"),
        &bytes[pos..pos + len],
        "the damaged bytes are kept"
    );
    let new_epoch = file_epoch(data);
    assert_ne!(new_epoch, old_epoch);
    let out = run(&["dump", "--verify", "--data-dir", data_s, "--topic", TOPIC]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "dump --verify after repair: {text}"
    );
    assert!(
        text.contains(&format!(
            "GAP {} at byte {pos}: offsets 100..101 lost",
            seg.display()
        )),
        "{text}"
    );

    // Serves every other frame at its offset, under the new epoch.
    let server = Server::start(data, &["--fsync", "always"]);
    let mut c = server.client().await;
    let mut sub = subscribe(&mut c, sub_req(TOPIC, 0))
        .await
        .expect("subscribe");
    assert_eq!(sub.epoch, new_epoch);
    assert_eq!(sub.snapshot, 2000);
    let info = topic_info(&mut c, TOPIC).await.expect("listed");
    assert_eq!((info.epoch, info.frames), (new_epoch, 1999));
    let frames = take(&mut sub.stream, 1999, LIMIT).await;
    let want: Vec<u64> = (0..2000).filter(|&o| o != 100).collect();
    assert_eq!(frames.iter().map(|f| f.offset).collect::<Vec<_>>(), want);
    for f in &frames {
        assert_eq!(
            &f.payload[..],
            &payload(f.offset)[..],
            "offset {}",
            f.offset
        );
        assert_eq!(f.seq_no, f.offset);
    }
    expect_quiet(&mut sub.stream, Duration::from_millis(300)).await;

    // The old epoch's cursor is refused.
    let st = subscribe_error(&mut c, resume(old_cursor)).await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");

    // New publishes go after the old end; a live subscriber gets them.
    let ack = publish(&mut c, TOPIC, 5000, b"after repair").await;
    assert_eq!(ack.offset, 2000, "offsets are never reused");
    let live = take(&mut sub.stream, 1, LIMIT).await;
    assert_eq!(
        (live[0].offset, &live[0].payload[..]),
        (2000, &b"after repair"[..])
    );

    // Repair refuses while the server runs.
    let out = run(&["repair", "--data-dir", data_s, "--topic", TOPIC]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(sub);
    drop(c);
    stop(server);
}

/// How the last record is damaged by hand in [`damaged_tail_under`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastRecord {
    /// What a process killed mid-write leaves: the encoder writes the header, then the
    /// payload, then the CRC, into zeroed space, so its last 12 bytes and its CRC are zero.
    Torn,
    /// One payload bit flipped in the whole, acknowledged record: damage, not a crash.
    Flipped,
    /// One bit of its length field flipped: the record no longer says where it ends, but
    /// its stored CRC says it was written whole. Damage too.
    LengthFlipped,
}

/// A segment may be up to 4 GiB: repair maps it rather than reading it into the heap. Run
/// under a data-size limit (`ulimit -d`, RLIMIT_DATA: heap and private memory, not a
/// read-only mapping of a file) well below the segment's size, repair of a damaged frame in
/// a 256 MiB segment must still succeed (before, it read the whole file and the allocation
/// failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_maps_a_large_segment_instead_of_reading_it_into_memory() {
    const SEGMENT: u64 = 256 << 20;
    const LIMIT_KIB: u64 = 128 << 10;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let data_s = data.to_str().expect("utf-8 path");
    let server = Server::start(data, &["--segment-bytes", "256MiB"]);
    assert_eq!(publish_n(&server, 10).await, (0..10).collect::<Vec<_>>());
    stop(server);
    let seg = only_segment(data);
    let (pos, len) = record_at(&seg, 3);
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[pos + len - 3] ^= 0x04;
    std::fs::write(&seg, &bytes).expect("write");
    // Grown to its capacity, as a full segment is (sparse: no disk used).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(SEGMENT)
        .expect("grow");

    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -d {LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(bin())
        .args(["repair", "--data-dir", data_s, "--topic", TOPIC])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run framecast repair");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "repair under a {LIMIT_KIB} KiB data limit: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("offsets lost: 3..4"), "{stdout}");
    let saved = PathBuf::from(format!("{}.{pos}.damaged", seg.display()));
    assert_eq!(
        std::fs::metadata(&saved).expect("set aside").len(),
        len as u64
    );
    assert_eq!(std::fs::metadata(&seg).expect("kept").len(), SEGMENT);
}

/// Publishes 10 frames under `fsync`, stops, tears the last record by hand (as a crash
/// mid-write leaves it), starts again under `restart_fsync`; returns (old epoch, new epoch,
/// a cursor of frame 5 in the old epoch, the server, the data dir).
async fn torn_tail_under(
    fsync: &str,
    restart_fsync: &str,
) -> (u64, u64, Cursor, Server, tempfile::TempDir) {
    damaged_tail_under(fsync, restart_fsync, LastRecord::Torn).await
}

/// [`torn_tail_under`] with the last record damaged as `how` says.
async fn damaged_tail_under(
    fsync: &str,
    restart_fsync: &str,
    how: LastRecord,
) -> (u64, u64, Cursor, Server, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let server = Server::start(data, &["--fsync", fsync]);
    assert_eq!(publish_n(&server, 10).await, (0..10).collect::<Vec<_>>());
    let (old_epoch, old_cursor) = read_to(&server, 10, 5).await;
    stop(server);
    let seg = only_segment(data);
    let (pos, len) = record_at(&seg, 9);
    let mut bytes = std::fs::read(&seg).expect("read");
    match how {
        LastRecord::Torn => {
            bytes[pos + len - 12..pos + len].fill(0);
            bytes[pos + 4..pos + 8].fill(0);
        }
        LastRecord::Flipped => bytes[pos + len - 3] ^= 0x04,
        LastRecord::LengthFlipped => bytes[pos + 1] ^= 0x02,
    }
    std::fs::write(&seg, &bytes).expect("write");
    let server = Server::start(data, &["--fsync", restart_fsync]);
    let mut c = server.client().await;
    let info = topic_info(&mut c, TOPIC).await.expect("topic listed");
    assert_eq!(
        file_epoch(data),
        info.epoch,
        "topic.json holds the epoch served"
    );
    let ack = publish(&mut c, TOPIC, 77, b"next").await;
    assert_eq!(ack.offset, 9, "the torn frame 9 was cut");
    (old_epoch, info.epoch, old_cursor, server, tmp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_cut_under_fsync_never_gets_a_new_epoch() {
    let (old, new, old_cursor, server, _tmp) = torn_tail_under("never", "never").await;
    assert_ne!(
        old, new,
        "a cut under never may have lost acknowledged frames"
    );
    let log = server.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("new epoch")
            && log.contains(&format!("old_epoch={old}")),
        "logged at WARN with the old epoch: {log}"
    );
    let mut c = server.client().await;
    let st = subscribe_error(&mut c, resume(old_cursor)).await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_cut_under_fsync_always_keeps_the_epoch() {
    let (old, new, old_cursor, server, _tmp) = torn_tail_under("always", "always").await;
    assert_eq!(old, new, "under always a cut tail was never acknowledged");
    let mut c = server.client().await;
    let mut sub = subscribe(&mut c, resume(old_cursor))
        .await
        .expect("resume works");
    let rest = take(&mut sub.stream, 4, LIMIT).await;
    let offsets: Vec<u64> = rest.iter().map(|f| f.offset).collect();
    assert_eq!(
        offsets,
        vec![6, 7, 8, 9],
        "frames 6..=8, then the new frame 9"
    );
    assert_eq!(&rest[3].payload[..], b"next");
    drop(sub);
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_last_record_that_fails_its_check_gets_a_new_epoch_under_always() {
    whole_last_record_damaged(LastRecord::Flipped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_last_record_with_a_flipped_length_gets_a_new_epoch_under_always() {
    whole_last_record_damaged(LastRecord::LengthFlipped).await;
}

/// Frame 9 was acknowledged (synced) and delivered; damage `how` makes it fail its check.
/// It is cut like a torn tail (nothing valid follows), but its offset is handed out again,
/// so the old epoch's cursors must be refused.
async fn whole_last_record_damaged(how: LastRecord) {
    let (old, new, old_cursor, server, tmp) = damaged_tail_under("always", "always", how).await;
    assert_ne!(
        old, new,
        "a whole record was cut: it may have been acknowledged"
    );
    let log = server.log_text();
    assert!(
        log.contains("WARN")
            && log.contains("new epoch")
            && log.contains(&format!("old_epoch={old}"))
            && log.contains("damage, not a crash"),
        "logged at WARN with the old epoch and why: {log}"
    );
    let mut c = server.client().await;
    let st = subscribe_error(&mut c, resume(old_cursor)).await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    // The cut record is kept aside, as any cut tail (the new frame 9 took its place).
    let seg = only_segment(tmp.path());
    let (pos, _) = record_at(&seg, 9);
    let torn: Vec<_> = std::fs::read_dir(topic_dir(tmp.path()))
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "torn"))
        .collect();
    let want = PathBuf::from(format!("{}.{pos}.torn", seg.display()));
    assert_eq!(torn, vec![want]);
    drop(c);
    stop(server);
}

/// framecast never shrinks a segment file: it starts at 16 KiB and grows in whole pages. A
/// last segment cut to another length at a record boundary (`truncate -s`) loaded silently
/// before, under the same epoch, handing out the lost frames' offsets again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_segment_cut_short_gets_a_new_epoch_and_dump_verify_reports_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let data_s = data.to_str().expect("utf-8 path");
    let server = Server::start(data, &["--fsync", "always"]);
    assert_eq!(publish_n(&server, 3).await, vec![0, 1, 2]);
    let (old_epoch, old_cursor) = read_to(&server, 3, 1).await;
    stop(server);
    // The file cut where frame 2 starts: every byte left is a whole, valid record.
    let seg = only_segment(data);
    let (pos, _) = record_at(&seg, 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(pos as u64)
        .expect("truncate");

    let (ok, text) = dump_verify(data_s);
    assert!(!ok, "dump --verify must fail: {text}");
    assert!(
        text.contains(&format!("BAD {}", seg.display())) && text.contains("cut it short"),
        "{text}"
    );

    let server = Server::start(data, &["--fsync", "always"]);
    let log = server.log_text();
    assert!(
        log.contains("WARN")
            && log.contains(&seg.display().to_string())
            && log.contains(&format!("len={pos}"))
            && log.contains("new epoch")
            && log.contains(&format!("old_epoch={old_epoch}")),
        "logged at WARN, naming the file and its length: {log}"
    );
    let mut c = server.client().await;
    let info = topic_info(&mut c, TOPIC).await.expect("listed");
    assert_ne!(
        info.epoch, old_epoch,
        "frame 2 was acknowledged and is lost"
    );
    assert_eq!(file_epoch(data), info.epoch);
    let st = subscribe_error(&mut c, resume(old_cursor)).await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    drop(c);
    stop(server);

    // Reported once, also with nothing published meanwhile: the file was grown back to a
    // length framecast gives a segment.
    let (ok, text) = dump_verify(data_s);
    assert!(ok, "{text}");
    let new_epoch = info.epoch;
    let server = Server::start(data, &["--fsync", "always"]);
    let mut c = server.client().await;
    let info = topic_info(&mut c, TOPIC).await.expect("listed");
    assert_eq!(info.epoch, new_epoch, "{}", server.log_text());
    assert_eq!(publish_one(&server, TOPIC, 9).await, 2);
    drop(c);
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_written_under_never_gets_a_new_epoch_even_if_restarted_under_always() {
    let (old, new, old_cursor, server, _tmp) = torn_tail_under("never", "always").await;
    assert_ne!(
        old, new,
        "the cut frames were written (and acked) under never"
    );
    let mut c = server.client().await;
    let st = subscribe_error(&mut c, resume(old_cursor)).await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    stop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_segment_of_zeros_stops_startup_then_repair_sets_it_aside_under_a_new_epoch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let data_s = data.to_str().expect("utf-8 path");
    let server = Server::start(data, &["--fsync", "always"]);
    assert_eq!(publish_n(&server, 5).await, (0..5).collect::<Vec<_>>());
    stop(server);
    let old_epoch = file_epoch(data);
    // The whole (only, active) segment reads back as zeros: five acknowledged frames lost.
    let seg = only_segment(data);
    let len = std::fs::metadata(&seg).expect("stat").len();
    std::fs::write(&seg, vec![0u8; len as usize]).expect("zero the segment");

    let stderr = refused_start(&serve_args(data_s));
    assert!(stderr.contains(&seg.display().to_string()), "{stderr}");
    assert!(stderr.contains("all zeros"), "{stderr}");
    assert_eq!(std::fs::metadata(&seg).expect("kept").len(), len);

    let stdout = repaired(data_s, TOPIC);
    assert!(stdout.contains("file set aside"), "{stdout}");
    assert!(stdout.contains("offsets lost: unknown"), "{stdout}");
    assert!(
        stdout.contains("0 offset(s) lost, and the uncounted frames of a segment of zeros"),
        "{stdout}"
    );
    let saved = PathBuf::from(format!("{}.0.damaged", seg.display()));
    assert_eq!(std::fs::metadata(&saved).expect("set aside").len(), len);
    let new_epoch = file_epoch(data);
    assert_ne!(new_epoch, old_epoch);

    // The topic starts again at the segment's base under the new epoch: a subscriber that
    // held the old frames is told, not handed the new ones at the same offsets.
    let server = Server::start(data, &[]);
    assert_eq!(publish_one(&server, TOPIC, 9).await, 0);
    let mut c = server.client().await;
    let mut old = Frame::default();
    old.seq_no = 2;
    old.offset = 2;
    let err = subscribe_error(&mut c, resume(cursor(5, old_epoch, &old))).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    stop(server);
}

/// Segments of 16 KiB (a few hundred small frames fill several).
const SMALL_SEGMENTS: &[&str] = &["--segment-bytes", "16KiB", "--max-frame-bytes", "4KiB"];

/// Publishes one frame to `topic` (seq_no `seq_no`); its offset.
async fn publish_one(server: &Server, topic: &str, seq_no: u64) -> u64 {
    let mut c = server.client().await;
    c.publish(req(topic, seq_no, b"one frame"))
        .await
        .expect("publish")
        .into_inner()
        .offset
}

/// The serve command on `data` with no HTTP listener.
fn serve_args(data: &str) -> [&str; 7] {
    [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "off",
        "--data-dir",
        data,
    ]
}

/// `framecast dump --verify` on `data`: its exit status and output.
fn dump_verify(data: &str) -> (bool, String) {
    let out = run(&["dump", "--data-dir", data, "--topic", TOPIC, "--verify"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Repairs `topic`; its report.
fn repaired(data: &str, topic: &str) -> String {
    let out = run(&["repair", "--data-dir", data, "--topic", topic]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "repair: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A deleted file must not pass for the end of the log: the newest segment, and a topic's
/// only one. Startup refuses, naming the missing file (before, it started, and handed the
/// lost frames' offsets out again under the same epoch); `dump --verify` reports it; repair
/// accepts the loss under a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_newest_or_only_segment_stops_startup_then_repair_accepts_the_loss() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let data_s = data.to_str().expect("utf-8 path");
    let server = Server::start(data, SMALL_SEGMENTS);
    assert_eq!(publish_n(&server, 600).await, (0..600).collect::<Vec<_>>());
    stop(server);
    let segments = list_segments(&topic_dir(data)).expect("list");
    assert!(segments.len() >= 3, "{segments:?}");
    let (newest, newest_path) = segments.last().expect("a segment").clone();
    let old_epoch = file_epoch(data);
    std::fs::remove_file(&newest_path).expect("remove the newest segment");

    let stderr = refused_start(&serve_args(data_s));
    assert!(
        stderr.contains(&newest_path.display().to_string()),
        "{stderr}"
    );
    assert!(stderr.contains("missing"), "{stderr}");
    let (ok, report) = dump_verify(data_s);
    assert!(!ok, "dump --verify passed a missing segment: {report}");
    assert!(
        report.contains(&format!("BAD {}", newest_path.display())),
        "{report}"
    );

    let stdout = repaired(data_s, TOPIC);
    assert!(stdout.contains("missing"), "{stdout}");
    assert!(
        stdout.contains("the uncounted frames of a missing segment"),
        "{stdout}"
    );
    let new_epoch = file_epoch(data);
    assert_ne!(new_epoch, old_epoch);
    let (ok, report) = dump_verify(data_s);
    assert!(ok, "{report}");

    // The log goes on from the missing segment's base, under the new epoch: a subscriber
    // that held a lost frame is told.
    let server = Server::start(data, SMALL_SEGMENTS);
    assert_eq!(publish_one(&server, TOPIC, 1000).await, newest);
    let mut c = server.client().await;
    let mut old = Frame::default();
    old.seq_no = newest + 1;
    old.offset = newest + 1;
    let err = subscribe_error(&mut c, resume(cursor(600, old_epoch, &old))).await;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    stop(server);

    // A topic's only segment.
    let other = "only";
    let server = Server::start(data, SMALL_SEGMENTS);
    assert_eq!(publish_one(&server, other, 0).await, 0);
    stop(server);
    let dir = data.join("topics").join(other);
    let segs = list_segments(&dir).expect("list");
    assert_eq!(segs.len(), 1, "{segs:?}");
    std::fs::remove_file(&segs[0].1).expect("remove the only segment");
    let stderr = refused_start(&serve_args(data_s));
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    assert!(stderr.contains("no segment"), "{stderr}");
    let stdout = repaired(data_s, other);
    assert!(stdout.contains("no segment is left"), "{stdout}");
    let server = Server::start(data, &[]);
    assert_eq!(publish_one(&server, other, 1).await, 0);
    stop(server);
}

/// A `framecast repair` that dies part way (its ACTIVE rewrite fails, a fail point armed in
/// the real binary) has already made the topic's new epoch durable: the data dir is never
/// left repaired under the old epoch. Startup still refuses it; a second repair finishes
/// under yet another epoch.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_that_dies_part_way_has_already_given_the_topic_its_new_epoch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let data_s = data.to_str().expect("utf-8 path");
    let server = Server::start(data, SMALL_SEGMENTS);
    assert_eq!(publish_n(&server, 600).await.len(), 600);
    stop(server);
    let (newest, newest_path) = list_segments(&topic_dir(data))
        .expect("list")
        .last()
        .expect("a segment")
        .clone();
    std::fs::remove_file(&newest_path).expect("remove the newest segment");
    let old_epoch = file_epoch(data);
    let out = Command::new(bin())
        .args(["repair", "--data-dir", data_s, "--topic", TOPIC])
        .env("FRAMECAST_FAILPOINTS", "active.write")
        .output()
        .expect("run framecast");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the armed repair failed: {stderr}");
    assert!(stderr.contains("fail points armed"), "{stderr}");
    let died_epoch = file_epoch(data);
    assert_ne!(
        died_epoch, old_epoch,
        "the epoch was renewed before the first change"
    );
    let stderr = refused_start(&serve_args(data_s));
    assert!(stderr.contains("missing"), "{stderr}");
    let stdout = repaired(data_s, TOPIC);
    assert!(stdout.contains("missing"), "{stdout}");
    let new_epoch = file_epoch(data);
    assert!(new_epoch != died_epoch && new_epoch != old_epoch);
    let server = Server::start(data, SMALL_SEGMENTS);
    assert_eq!(publish_one(&server, TOPIC, 1000).await, newest);
    stop(server);
}

/// Makes `data` look as if the machine went down under its last run: `LAST_FSYNC` names
/// another boot (the run was in an earlier boot), and the records of offsets `lost` never
/// reached the disk (the pages read back as zeros, as a preallocated file's do).
fn the_machine_went_down(data: &Path, lost: std::ops::RangeInclusive<u64>) {
    let path = data.join("LAST_FSYNC");
    let text = std::fs::read_to_string(&path).expect("LAST_FSYNC");
    assert!(
        text.contains("\nboot ") && !text.contains("clean"),
        "{text:?}"
    );
    another_boot(data);
    let seg = only_segment(data);
    let (from, _) = record_at(&seg, *lost.start());
    let (last, len) = record_at(&seg, *lost.end());
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes[from..last + len].fill(0);
    std::fs::write(&seg, &bytes).expect("write");
}

/// Rewrites the boot `LAST_FSYNC` names (which must name one) to another: the last run was
/// in an earlier boot, as after the machine restarted.
fn another_boot(data: &Path) {
    let path = data.join("LAST_FSYNC");
    let text = std::fs::read_to_string(&path).expect("LAST_FSYNC");
    assert!(text.contains("\nboot "), "{text:?}");
    let other: String = text
        .lines()
        .map(|l| match l.starts_with("boot ") {
            true => "boot 00000000-0000-4000-8000-000000000000\n".to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, other).expect("write LAST_FSYNC");
}

/// Under `--fsync never` a frame is acknowledged before it is synced: a crash of the
/// machine can lose the last ones without leaving a torn tail (the log just ends earlier),
/// and their offsets would be given again. A server that did not stop cleanly, in an
/// earlier boot, under such a policy: every topic gets a new epoch, so a resume with an old
/// cursor is refused instead of skipping the new frames at reused offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_crash_under_fsync_never_gives_every_topic_a_new_epoch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let mut server = Server::start(data, &["--fsync", "never"]);
    assert_eq!(publish_n(&server, 20).await, (0..20).collect::<Vec<_>>());
    publish_one(&server, "other", 1).await;
    let mut c = server.client().await;
    let other_epoch = topic_info(&mut c, "other").await.expect("listed").epoch;
    drop(c);
    let (old_epoch, old_cursor) = read_to(&server, 20, 19).await;
    server.kill9();
    the_machine_went_down(data, 15..=19);

    let server = Server::start(data, &["--fsync", "never"]);
    let mut c = server.client().await;
    let info = topic_info(&mut c, TOPIC).await.expect("listed");
    assert_ne!(info.epoch, old_epoch, "frames 15..19 are gone: a new epoch");
    assert_eq!(
        file_epoch(data),
        info.epoch,
        "topic.json holds the epoch served"
    );
    let other = topic_info(&mut c, "other").await.expect("listed").epoch;
    assert_ne!(other, other_epoch, "every topic written in that run");
    let log = server.log_text();
    assert!(
        log.contains("WARN") && log.contains("the machine went down"),
        "{log}"
    );
    // The lost offsets are given again, under the new epoch.
    assert_eq!(publish_one(&server, TOPIC, 99).await, 15);
    let st = subscribe_error(&mut c, resume(old_cursor)).await;
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    drop(c);
    stop(server);
    let text = std::fs::read_to_string(data.join("LAST_FSYNC")).expect("LAST_FSYNC");
    assert!(
        text.ends_with("clean\n"),
        "a clean stop is recorded: {text:?}"
    );

    // The next run starts unclean again: a `kill -9` of it followed by another crash of
    // the machine renews the epoch again (a stale `clean` never survives into a run).
    let mut server = Server::start(data, &["--fsync", "never"]);
    let mut c = server.client().await;
    let epoch = topic_info(&mut c, TOPIC).await.expect("listed").epoch;
    drop(c);
    server.kill9();
    the_machine_went_down(data, 15..=15);
    let server = Server::start(data, &["--fsync", "never"]);
    let mut c = server.client().await;
    let again = topic_info(&mut c, TOPIC).await.expect("listed").epoch;
    assert_ne!(again, epoch, "{}", server.log_text());
    drop(c);
    stop(server);
}

/// A run whose sync failed is never recorded as a clean stop, even when a later sync of
/// the same range succeeds (the kernel may have dropped the pages the failed one left):
/// here the first background sync under `interval:20` fails (a fail point in the real
/// binary), the next ones succeed, and the stop is clean in every other way.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_sync_failed_is_not_recorded_as_a_clean_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    let server = Server::start_with_env(
        data,
        &["--fsync", "interval:20"],
        &[("FRAMECAST_FAILPOINTS", "commit.sync")],
    );
    publish_n(&server, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_n(&server, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log_text();
    assert!(log.contains("background sync failed"), "{log}");
    stop(server);
    let text = std::fs::read_to_string(data.join("LAST_FSYNC")).expect("LAST_FSYNC");
    assert!(!text.contains("clean"), "{text:?}");

    // Without the failure the same run stops clean.
    let server = Server::start(data, &["--fsync", "interval:20"]);
    publish_n(&server, 5).await;
    stop(server);
    let text = std::fs::read_to_string(data.join("LAST_FSYNC")).expect("LAST_FSYNC");
    assert!(text.ends_with("clean\n"), "{text:?}");
}

/// The same rule does not fire where nothing can be lost: a `kill -9` in the same boot (the
/// page cache keeps every write), a clean stop before the machine went down (everything was
/// synced), and `--fsync always` (nothing is acknowledged before its sync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_a_clean_stop_or_fsync_always_keeps_the_epoch() {
    for (fsync, how) in [
        ("never", "kill"),
        ("never", "clean stop"),
        ("always", "kill"),
    ] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path();
        let mut server = Server::start(data, &["--fsync", fsync]);
        publish_n(&server, 20).await;
        let mut c = server.client().await;
        let epoch = topic_info(&mut c, TOPIC).await.expect("listed").epoch;
        drop(c);
        match how {
            "kill" => server.kill9(),
            _ => stop(server),
        }
        if how == "clean stop" || fsync == "always" {
            // Then the machine goes down: another boot.
            another_boot(data);
        }
        let server = Server::start(data, &["--fsync", fsync]);
        let mut c = server.client().await;
        let info = topic_info(&mut c, TOPIC).await.expect("listed");
        assert_eq!(info.epoch, epoch, "{fsync}, {how}: {}", server.log_text());
        assert_eq!(publish_one(&server, TOPIC, 99).await, 20, "{fsync}, {how}");
        drop(c);
        stop(server);
    }
}

/// The undo of a failed sync zeroes its records back to front: a `kill -9` midway (here
/// the fail point stops it half way, and the test kills the server) leaves whole records,
/// then zeros — a torn tail that startup cuts, not a zeroed record before whole ones,
/// which startup would refuse as damage. None of those records was acknowledged.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_cut_short_by_a_kill_leaves_a_tail_that_startup_cuts() {
    use futures::StreamExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path();
    // The first sync passes (frame 0); the second (the stream's frames) fails, and its undo
    // stops half way.
    let mut server = Server::start_with_env(
        data,
        &["--fsync", "always"],
        &[(
            "FRAMECAST_FAILPOINTS",
            "commit.sync@2,segment.rollback_half",
        )],
    );
    let mut c = server.client().await;
    publish(&mut c, TOPIC, 0, &payload(0)).await;
    let reqs: Vec<_> = (1..65).map(|i| req(TOPIC, i, &payload(i))).collect();
    let answers: Vec<_> = c
        .publish_stream(futures::stream::iter(reqs))
        .await
        .expect("the stream opens")
        .into_inner()
        .collect()
        .await;
    assert!(
        answers.iter().all(Result::is_err),
        "a frame was acknowledged though its sync failed: {answers:?}"
    );
    server.kill9();
    server
        .try_restart()
        .unwrap_or_else(|log| panic!("startup refused the undone tail: {log}"));
    let mut c = server.client().await;
    let t = topic_info(&mut c, TOPIC).await.expect("the topic");
    assert!((1..65).contains(&t.next_offset), "{t:?}");
    let mut sub = subscribe(&mut c, sub_req(TOPIC, 0))
        .await
        .expect("subscribe");
    let frames = take(
        &mut sub.stream,
        t.next_offset as usize,
        Duration::from_secs(10),
    )
    .await;
    for (i, f) in frames.iter().enumerate() {
        assert_eq!((f.offset, f.seq_no), (i as u64, i as u64));
        assert_eq!(f.payload, payload(i as u64));
    }
    // The log goes on where the kept records end.
    let next = publish_one(&server, TOPIC, 100).await;
    assert_eq!(next, t.next_offset);
}
