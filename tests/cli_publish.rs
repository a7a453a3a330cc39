//! `framecast publish` against the real binary: a refused frame ends the command with
//! nothing after it sent, and the message says which input it was and what was
//! acknowledged; acks are printed as they come; Ctrl-C reports what was acknowledged.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `framecast publish` at `server` on `topic` with `extra` flags, stdin piped.
fn publisher(server: &Server, topic: &str, extra: &[&str]) -> std::process::Child {
    Command::new(bin())
        .args(["publish", "--addr", &server.addr, "--topic", topic])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The frames stored in `topic`.
async fn frames(server: &Server, topic: &str) -> u64 {
    let mut c = server.client().await;
    list_topics(&mut c)
        .await
        .into_iter()
        .find(|t| t.name == topic)
        .map_or(0, |t| t.frames)
}

/// Waits for `child` to exit (within 30 s); its exit code and stderr.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_line_ends_the_command_with_nothing_after_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-frame-bytes", "10"]);
    for round in 0..3 {
        let topic = format!("t{round}");
        let mut child = publisher(&server, &topic, &["--seq-from", "10"]);
        let mut input = String::new();
        for i in 0..3000 {
            input.push_str(&if i == 4 {
                "x".repeat(50)
            } else {
                format!("l{i}")
            });
            input.push('\n');
        }
        let mut stdin = child.stdin.take().unwrap();
        // The command may stop reading before the end: a broken pipe is fine.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let (code, err) = finish(child);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("line 5 (seq_no 14)"), "{err}");
        assert!(err.contains("max-frame-bytes"), "{err}");
        assert!(
            err.contains("4 frames acknowledged (the last seq_no 13); nothing after it was sent"),
            "{err}"
        );
        assert_eq!(frames(&server, &topic).await, 4, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_printed_as_they_come_and_ctrl_c_reports_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut child = publisher(&server, "live", &["--verbose"]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // One line, the input left open: its ack is printed before any more input comes.
    for (i, text) in ["first\r", "second"].iter().enumerate() {
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut line = String::new();
        let reader = std::thread::spawn(move || {
            out.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
            out
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no ack printed while the input stays open");
        assert!(line.starts_with(&format!("offset={i} ")), "{line}");
        out = reader.join().unwrap();
    }
    // Ctrl-C: exit 130, saying what was acknowledged.
    let pid = child.id() as i32;
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (code, err) = finish(child);
    drop(stdin);
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("interrupted; 2 frames acknowledged (the last seq_no 1)"),
        "{err}"
    );
    // A line's "\r\n" end is no part of its payload.
    let mut c = server.client().await;
    let mut sub = subscribe(&mut c, sub_req("live", 0)).await.unwrap();
    let got = take(&mut sub.stream, 2, Duration::from_secs(10)).await;
    assert_eq!(got[0].payload, b"first".to_vec());
    assert_eq!(got[1].payload, b"second".to_vec());
}

/// `framecast publish` to an address where nothing listens (`--timeout 30s`), stdin piped.
fn publishing_to_no_server(stderr: Stdio) -> std::process::Child {
    Command::new(bin())
        .args(["publish", "--addr", &dead_addr(), "--timeout", "30s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Ctrl-C while the publish queue is full (the server unreachable, every slot taken) ends
/// the command within the 5 s it waits for frames already sent, exit 130; before, the send
/// waiting for room held the interrupt off until `--timeout` was spent.
#[test]
fn ctrl_c_with_a_full_queue_exits_without_waiting_for_the_timeout() {
    let mut child = publishing_to_no_server(Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    // More lines than the command and its publisher queue; the pipe stays open.
    let feeder = std::thread::spawn(move || {
        for i in 0..5000 {
            if writeln!(stdin, "line {i}").is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_secs(40));
    });
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("retrying"), "{first}");
    // Time for the input to fill every queue.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id() as i32;
    // SAFETY (test code): plain kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let interrupted = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if interrupted.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("still running 20 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = interrupted.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted"), "{rest}");
    assert!(
        took < Duration::from_secs(7),
        "Ctrl-C took {took:?} to end the command"
    );
    drop(feeder);
}

/// A token that expires while `publish` waits for its next line: the next line fails with
/// the server's refusal (UNAUTHENTICATED, token expired), nothing counted as sent; before,
/// it failed as "unavailable … cannot reach …: publisher stopped", as if retryable.
#[test]
fn a_token_that_expires_while_idle_is_reported_as_expired() {
    const SECRET: &[u8] = b"test-secret-of-some-length";
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--auth-jwt-secret-file", secret.to_str().unwrap()],
    );
    let token = common::tokens::token(SECRET, &["t"], &[], false, Duration::from_secs(2));
    let mut child = publisher(&server, "t", &["--verbose", "--token", &token]);
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    writeln!(stdin, "a").unwrap();
    stdin.flush().unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("offset=0 "), "{line}");
    // Past the token's expiry (whole seconds), the input still open.
    std::thread::sleep(Duration::from_millis(3500));
    writeln!(stdin, "b").unwrap();
    drop(stdin);
    let (code, err) = finish(child);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 2 (seq_no 1)"), "{err}");
    assert!(err.contains("Unauthenticated"), "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
    assert!(
        err.contains("1 frames acknowledged (the last seq_no 0); nothing after it was sent"),
        "{err}"
    );
}

/// The peak resident memory (VmHWM) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb << 10
}

/// Long lines held back by an unreachable server cost the command a bounded amount of
/// memory (the publisher's 64 MiB and 16 MiB read ahead), not a window of frames each:
/// before, 1,024 queued and 1,024 in flight and 256 read ahead were counted in frames, and
/// 3,000 lines of 1 MiB grew it to 1.3 GB.
#[test]
fn long_lines_the_server_cannot_take_yet_cost_bounded_memory() {
    let mut child = publishing_to_no_server(Stdio::null());
    let mut stdin = child.stdin.take().unwrap();
    // 600 lines of 1 MiB; the pipe stays open.
    let fed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = {
        let fed = std::sync::Arc::clone(&fed);
        std::thread::spawn(move || {
            let line = [vec![b'x'; (1 << 20) - 1], vec![b'\n']].concat();
            for _ in 0..600 {
                if stdin.write_all(&line).is_err() {
                    return;
                }
                fed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_secs(40));
        })
    };
    // Until the command stops taking lines (or takes them all).
    let mut last = (0, Instant::now());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let now = fed.load(std::sync::atomic::Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) || now == 600 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak = peak_rss(child.id());
    let taken = fed.load(std::sync::atomic::Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    drop(feeder);
    eprintln!("took {taken} lines of 1 MiB; peak RSS {} MiB", peak >> 20);
    assert!(taken < 600, "it took every line: nothing holds it back");
    assert!(
        peak < 200 << 20,
        "peak RSS {} MiB after taking {taken} lines of 1 MiB",
        peak >> 20
    );
}
