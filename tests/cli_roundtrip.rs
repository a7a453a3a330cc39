//! The CLI round trip: `framecast publish` from stdin and arguments, `framecast subscribe`
//! printing them back, against the real server.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn run(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn publish_lines_from_stdin_and_subscribe_prints_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let (ok, out, err) = run(
        &[
            "publish",
            "--addr",
            addr,
            "--topic",
            "cli",
            "--seq-from",
            "10",
            "--verbose",
        ],
        Some("alpha\nbeta\ngamma\n"),
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines().next().unwrap().starts_with("offset=0 "),
        "{out}"
    );
    let (ok, _, err) = run(
        &[
            "publish", "--addr", addr, "--topic", "cli", "--seq-no", "1", "first",
        ],
        None,
    );
    assert!(ok, "{err}");

    let (ok, out, err) = run(
        &[
            "subscribe",
            "--addr",
            addr,
            "--topic",
            "cli",
            "--count",
            "4",
            "--json",
        ],
        None,
    );
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, &str)> = lines
        .iter()
        .map(|v| {
            (
                v["seq_no"].as_u64().unwrap(),
                v["payload"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(1, "first"), (10, "alpha"), (11, "beta"), (12, "gamma")]
    );
    assert!(lines.iter().all(|v| v["live"] == false));

    let (ok, out, _) = run(
        &[
            "subscribe",
            "--addr",
            addr,
            "--topic",
            "cli",
            "--from",
            "11",
            "--count",
            "2",
            "--raw",
        ],
        None,
    );
    assert!(ok);
    assert_eq!(out, "beta\ngamma\n");
    let (ok, out, _) = run(
        &[
            "subscribe",
            "--addr",
            addr,
            "--topic",
            "cli",
            "--count",
            "1",
        ],
        None,
    );
    assert!(ok);
    assert!(
        out.starts_with("offset=3 seq_no=1 ") && out.contains("payload=\"first\""),
        "{out}"
    );

    // A file as one frame.
    let file = dir.path().join("blob.bin");
    std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
    let (ok, _, err) = run(
        &[
            "publish",
            "--addr",
            addr,
            "--topic",
            "bin",
            "--file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    let (ok, out, _) = run(
        &[
            "subscribe",
            "--addr",
            addr,
            "--topic",
            "bin",
            "--count",
            "1",
            "--json",
        ],
        None,
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["payload_hex"], "009f9296");
}

#[test]
fn publish_reports_refused_frames() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-frame-bytes", "8"]);
    let (ok, _, err) = run(
        &[
            "publish",
            "--addr",
            &server.addr,
            "--topic",
            "x",
            "this is too long",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("invalid argument"), "{err}");
    let (ok, _, err) = run(
        &[
            "publish",
            "--addr",
            &server.addr,
            "--topic",
            "bad/name",
            "x",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("invalid argument"), "{err}");
    // The last sequence number is given once; one more is refused, never wrapped to 0 (a
    // debug build panicked, a release build published the second frame as seq_no 0).
    let max = u64::MAX.to_string();
    let (ok, _, err) = run(
        &[
            "publish",
            "--addr",
            &server.addr,
            "--topic",
            "last",
            "--seq-from",
            &max,
            "a",
            "b",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("would pass 2^64 - 1"), "{err}");
    let (ok, out, err) = run(
        &[
            "history",
            "--addr",
            &server.addr,
            "--topic",
            "last",
            "--json",
        ],
        None,
    );
    assert!(ok, "{err}");
    let seqs: Vec<Option<u64>> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq_no"].as_u64())
        .collect();
    assert_eq!(seqs, [Some(u64::MAX)], "{out}");
}

#[test]
fn publish_and_subscribe_with_compression() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let line = format!("{{\"k\":\"{}\"}}", "v".repeat(3000));
    let (ok, _, err) = run(
        &[
            "publish",
            "--addr",
            addr,
            "--topic",
            "z",
            "--compression",
            "gzip",
            &line,
            "second",
        ],
        None,
    );
    assert!(ok, "{err}");
    for c in ["zstd", "gzip", "none"] {
        let (ok, out, err) = run(
            &[
                "subscribe",
                "--addr",
                addr,
                "--topic",
                "z",
                "--count",
                "2",
                "--raw",
                "--compression",
                c,
            ],
            None,
        );
        assert!(ok, "{c}: {err}");
        assert_eq!(out, format!("{line}\nsecond\n"), "{c}");
    }
    let (ok, _, err) = run(
        &["subscribe", "--addr", addr, "--compression", "brotli"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("unknown compression"), "{err}");
}

#[test]
fn history_prints_one_walk_oldest_or_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    // seq_nos 5, 3, 9, 1, 7, 3 (a repeat): order key (seq_no, timestamp, offset).
    for (seq, text) in [(5, "e"), (3, "c"), (9, "i"), (1, "a"), (7, "g"), (3, "c2")] {
        let seq = seq.to_string();
        let args = [
            "publish", "--addr", addr, "--topic", "h", "--seq-no", &seq, text,
        ];
        let (ok, _, err) = run(&args, None);
        assert!(ok, "{err}");
    }
    let history = |extra: &[&str]| {
        let mut args = vec!["history", "--addr", addr, "--topic", "h"];
        args.extend_from_slice(extra);
        run(&args, None)
    };
    // Every frame, in pages of 2, oldest first.
    let (ok, out, err) = history(&["--raw", "--page", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out, "a\nc\nc2\ne\ng\ni\n");
    // The newest three, as a chat scrolls back; JSON says each is history, not live.
    let (ok, out, err) = history(&["--reverse", "--count", "3", "--json"]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(u64, &str, bool)> = lines
        .iter()
        .map(|v| {
            (
                v["seq_no"].as_u64().unwrap(),
                v["payload"].as_str().unwrap(),
                v["live"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [(9, "i", false), (7, "g", false), (5, "e", false)]);
    // From a seq_no, in the text format.
    let (ok, out, err) = history(&["--from", "6"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("offset=4 seq_no=7 "), "{out}");
    assert!(lines[0].ends_with(" replay payload=\"g\""), "{out}");
    assert!(lines[1].starts_with("offset=2 seq_no=9 "), "{out}");
    // A missing topic: an error naming it, nothing printed, nothing created.
    let (ok, out, err) = run(&["history", "--addr", addr, "--topic", "nobody"], None);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("nobody"), "{err}");
    let (ok, out, err) = run(&["topics", "--addr", addr], None);
    assert!(ok, "{err}");
    assert!(!out.contains("nobody"), "{out}");
    // A page size out of range is refused before anything is sent.
    let (ok, _, err) = history(&["--page", "0"]);
    assert!(!ok && err.contains("page"), "{err}");
}
