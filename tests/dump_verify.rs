//! `framecast dump --verify` agrees with startup on damage to a topic's set of files: a
//! missing first, middle or newest segment, a sealed segment that lost its last records, a
//! segment whose header names another base offset. Each is `BAD` (exit 1) in the dump, and
//! startup refuses the same data dir. A topic being created or deleted (a directory under a
//! temporary name) is not reported.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use framecast::wal::format::{encode_segment_header, SEGMENT_HEADER_LEN};
use framecast::wal::list_segments;
use framecast::wal::record::{Step, Walk};

const TOPIC: &str = "t";

/// A stopped server's data dir with one topic over several segments.
async fn build(data: &Path) {
    let flags = [
        "--segment-bytes",
        "32KiB",
        "--max-frame-bytes",
        "8192",
        "--compact-after-segments",
        "0",
        "--fsync",
        "never",
    ];
    let mut server = Server::start(data, &flags);
    let mut c = server.client().await;
    for seq in 0..120u64 {
        publish(&mut c, TOPIC, seq, &[seq as u8 | 1; 1000]).await;
    }
    server.sigterm();
    server.wait_exit(Duration::from_secs(10)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn segments(data: &Path) -> Vec<PathBuf> {
    list_segments(&data.join("topics").join(TOPIC))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// `dump --verify` must exit 1 naming `file` in a BAD line.
fn dump_says_bad(data: &Path, file: &Path, case: &str) {
    let out = Command::new(bin())
        .args(["dump", "--verify", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{case}: {text}");
    assert!(
        text.contains(&format!("BAD {}", file.display())),
        "{case}: {text}"
    );
}

/// `serve` must refuse to start on `data`.
fn startup_refuses(data: &Path, case: &str) {
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "off"])
        .args(["--segment-bytes", "32KiB", "--max-frame-bytes", "8192"])
        .arg("--data-dir")
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "{case}: started");
            return;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{case}: the server started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_verify_and_startup_both_refuse_a_topic_missing_files_or_records() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    build(&pristine).await;
    let segs = segments(&pristine);
    assert!(segs.len() >= 4, "{segs:?}");
    // The intact data dir passes, with a topic being created and one being deleted beside
    // it (empty directories under temporary names).
    for temp in [".creating-u", ".deleted-v-7"] {
        std::fs::create_dir_all(pristine.join("topics").join(temp)).unwrap();
    }
    let out = Command::new(bin())
        .args(["dump", "--verify", "--data-dir"])
        .arg(&pristine)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for temp in [".creating-u", ".deleted-v-7"] {
        std::fs::remove_dir(pristine.join("topics").join(temp)).unwrap();
    }

    let case = |name: &str| {
        let data = tmp.path().join(name);
        copy_dir(&pristine, &data);
        let segs = segments(&data);
        (data, segs)
    };

    // The first segment gone: no manifest, so the log must start at 0.
    let (data, segs) = case("first");
    std::fs::remove_file(&segs[0]).unwrap();
    dump_says_bad(&data, &segs[1], "first segment missing");
    startup_refuses(&data, "first segment missing");

    // The newest segment gone: ACTIVE names it.
    let (data, segs) = case("newest");
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    dump_says_bad(&data, segs.last().unwrap(), "newest segment missing");
    startup_refuses(&data, "newest segment missing");

    // An unreadable ACTIVE: BAD, and the dump goes on (it does not stop at the error).
    let (data, _) = case("active");
    let active = data.join("topics").join(TOPIC).join("ACTIVE");
    std::fs::write(&active, "garbage").unwrap();
    dump_says_bad(&data, &active, "unreadable ACTIVE");
    startup_refuses(&data, "unreadable ACTIVE");

    // A middle segment gone.
    let (data, segs) = case("middle");
    std::fs::remove_file(&segs[1]).unwrap();
    dump_says_bad(&data, &segs[2], "middle segment missing");
    startup_refuses(&data, "middle segment missing");

    // A sealed segment cut at a record boundary: its last record gone, no bad bytes left.
    let (data, segs) = case("truncated");
    let bytes = std::fs::read(&segs[1]).unwrap();
    let last = Walk::new(&bytes, SEGMENT_HEADER_LEN)
        .filter_map(|(pos, step)| matches!(step, Step::Record(..)).then_some(pos))
        .last()
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[1])
        .unwrap()
        .set_len(last as u64)
        .unwrap();
    dump_says_bad(&data, &segs[2], "sealed segment truncated");
    startup_refuses(&data, "sealed segment truncated");

    // A segment whose header names another base offset than its file name.
    let (data, segs) = case("renamed");
    let mut bytes = std::fs::read(&segs[2]).unwrap();
    bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&encode_segment_header(7));
    std::fs::write(&segs[2], &bytes).unwrap();
    dump_says_bad(&data, &segs[2], "header and name disagree");
    startup_refuses(&data, "header and name disagree");
}
