//! A node that takes connections and answers nothing (stopped with SIGSTOP, or hung) is
//! failed over within `--timeout`: `publish`, `subscribe` and `history` given `--addr A,B`
//! with A stopped reach B. Before, one attempt on A was given the whole budget, and the
//! commands failed at `--timeout` without ever trying B.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;

/// Runs the binary to its end (30 s at most); (exit code, stdout, stderr, how long).
fn run(args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let r = common::cli::run(args, Duration::from_secs(30));
    (r.code, r.stdout, r.stderr, r.took)
}

#[test]
fn a_stopped_first_node_is_failed_over_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = Server::start(&dir.path().join("a"), &["--fsync", "never"]);
    let live = Server::start(&dir.path().join("b"), &["--fsync", "never"]);
    let pid = stopped.child.id() as i32;
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let addrs = format!("{},{}", stopped.addr, live.addr);
    let budget = ["--timeout", "6s"];
    let commands: [Vec<&str>; 3] = [
        vec!["publish", "--addr", &addrs, "--topic", "t", "hello"],
        vec![
            "subscribe",
            "--addr",
            &addrs,
            "--topic",
            "t",
            "--count",
            "1",
            "--raw",
        ],
        vec!["history", "--addr", &addrs, "--topic", "t", "--raw"],
    ];
    let mut outcomes = Vec::new();
    for args in &commands {
        let mut args = args.clone();
        args.extend(budget);
        outcomes.push((args.clone(), run(&args)));
    }
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    for (args, (code, out, err, took)) in outcomes {
        assert_eq!(code, Some(0), "{args:?} ({took:?}): {err}");
        assert!(
            took < Duration::from_secs(6),
            "{args:?}: took {took:?}, the whole --timeout: {err}"
        );
        if args[0] != "publish" {
            assert_eq!(out, "hello\n", "{args:?}: {err}");
        }
    }
}
