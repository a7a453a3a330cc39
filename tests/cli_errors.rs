//! What a new user trips over, answered plainly by the real binary: a mistyped data dir,
//! settings that cannot work, a negative seq_no, `:PORT` listen addresses, a bare segment
//! file name. Each error says what is wrong and changes nothing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Runs the binary to its end; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let r = common::cli::run(args, Duration::from_secs(60));
    (r.code, r.stdout, r.stderr)
}

#[test]
fn offline_tools_refuse_a_directory_that_is_no_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("dtaa");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["dump", "--data-dir", m, "--verify"],
        vec!["dump", "--data-dir", m],
        vec!["compact", "--data-dir", m],
        vec!["repair", "--data-dir", m, "--topic", "t"],
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, Some(0), "{args:?} must fail: {err}");
        assert!(
            err.contains(&format!("no framecast data dir at {m}")),
            "{args:?}: {err}"
        );
        assert!(!missing.exists(), "{args:?} created {m}");
    }
}

#[test]
fn serve_names_the_setting_that_cannot_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    let (code, _, err) = run(&["serve", "--data-dir", d, "--max-frame-bytes", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--max-frame-bytes must be at least 1"),
        "{err}"
    );

    // A cluster node with TLS needs the CA of the other nodes' certificates.
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        d,
        "--cluster-etcd",
        "http://127.0.0.1:1",
        "--node-id",
        "n1",
        "--advertise",
        "127.0.0.1:1",
        "--tls-cert",
        "cert.pem",
        "--tls-key",
        "key.pem",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--cluster-ca-cert FILE"), "{err}");

    let (code, _, err) = run(&["serve", "--data-dir", d, "--segment-bytes", "1MiB"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--max-frame-bytes 4193280 does not fit")
            && err.contains("the largest that fits is"),
        "{err}"
    );
    // The largest value it names does fit.
    let fits: u64 = err
        .split("the largest that fits is ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let (code, _, err) = run(&[
        "serve",
        "--data-dir",
        d,
        "--segment-bytes",
        "1MiB",
        "--max-frame-bytes",
        &(fits + 1).to_string(),
    ]);
    assert_eq!(
        code,
        Some(2),
        "one more than the largest must not fit: {err}"
    );

    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a dir").unwrap();
    let (code, _, err) = run(&["serve", "--data-dir", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"not a dir");
}

#[test]
fn a_max_frame_bytes_too_large_for_any_record_is_refused_not_a_panic() {
    // Adding a record's header and the longest key to these overflowed: a panic in a debug
    // build, and in a release build a wrapped, tiny "largest record" that let them through.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    for value in [u64::MAX, u64::MAX - 100, u64::MAX - 175, 1 << 40] {
        let v = value.to_string();
        let (code, _, err) = run(&["serve", "--data-dir", d, "--max-frame-bytes", &v]);
        assert_eq!(code, Some(2), "{v}: {err}");
        assert!(!err.contains("panicked"), "{v}: {err}");
        assert!(
            err.contains(&format!("--max-frame-bytes {v} does not fit")),
            "{v}: {err}"
        );
    }
}

#[test]
fn negative_seq_nos_get_a_plain_message() {
    for args in [
        vec!["subscribe", "--from", "-1"],
        vec!["publish", "--seq-from", "-1", "x"],
        vec!["publish", "--seq-no", "-5", "x"],
    ] {
        let (code, _, err) = run(&args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(
            err.contains("must be a non-negative integer"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn listen_takes_a_bare_port_and_a_host_name() {
    for listen in [":0", "localhost:0"] {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin())
            .args([
                "serve",
                "--listen",
                listen,
                "--http-listen",
                "off",
                "--data-dir",
            ])
            .arg(tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut listening = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("listening") {
                listening = Some(line);
                break;
            }
            assert!(Instant::now() < deadline, "no listening line for {listen}");
        }
        let _ = child.kill();
        let _ = child.wait();
        let line = listening.unwrap_or_else(|| panic!("{listen}: server exited early"));
        assert!(
            line.contains("addr=127.0.0.1:") || line.contains("addr=[::1]:"),
            "{listen} must listen on loopback: {line}"
        );
        assert!(!line.contains(":0 "), "{listen} must pick a port: {line}");
    }
}

#[test]
fn dump_finds_a_bare_segment_name_in_its_topic() {
    let tmp = tempfile::tempdir().unwrap();
    let topic = tmp.path().join("topics").join("chat");
    std::fs::create_dir_all(&topic).unwrap();
    // A real segment: made by the log itself.
    {
        let log = framecast::wal::Log::open(&topic, framecast::wal::LogConfig::default()).unwrap();
        log.append(vec![framecast::wal::NewFrame {
            seq_no: 7,
            payload: bytes::Bytes::from_static(b"hello"),
            ..Default::default()
        }])
        .unwrap();
    }
    let d = tmp.path().to_str().unwrap();
    let name = "00000000000000000000.seg";
    for args in [
        vec![
            "dump",
            "--data-dir",
            d,
            "--topic",
            "chat",
            "--segment",
            name,
        ],
        vec!["dump", "--data-dir", d, "--segment", name],
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.contains("hello"), "{args:?}: {out}");
    }
    let (code, _, err) = run(&["dump", "--data-dir", d, "--segment", "nope.seg"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no segment file nope.seg"), "{err}");
}

#[test]
fn an_unreachable_server_is_named_at_once_and_the_wait_is_bounded() {
    let addr = dead_addr();
    for args in [
        vec!["publish", "--addr", &addr, "--timeout", "2s", "hello"],
        vec!["subscribe", "--addr", &addr, "--timeout", "2s"],
    ] {
        let started = Instant::now();
        let (code, _, err) = run(&args);
        let took = started.elapsed();
        assert_ne!(code, Some(0), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(&format!("cannot reach {addr}")) && first.contains("retrying"),
            "{args:?}: the first line must say at once what is happening: {err}"
        );
        assert!(
            err.contains("Connection refused"),
            "{args:?}: the cause: {err}"
        );
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("cannot reach {addr}")),
            "{args:?}: the final error names the address: {err}"
        );
        assert!(
            took < Duration::from_secs(30),
            "{args:?}: --timeout 2s took {took:?}"
        );
    }
}

/// `framecast publish` fed by an input that does not end (`tail -f … | framecast publish`)
/// against a server that cannot be reached stops once `--timeout` is spent, at the next
/// line, with the error: before, it read on and reported nothing until its input ended.
#[test]
fn publish_from_an_endless_input_stops_when_the_server_stays_unreachable() {
    use std::io::Write;
    let addr = dead_addr();
    let mut child = Command::new(bin())
        .args([
            "publish",
            "--addr",
            &addr,
            "--topic",
            "t",
            "--timeout",
            "1s",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("framecast publish still running after 20 s of an unreachable server");
        }
        // A line every 200 ms; the pipe stays open.
        let _ = writeln!(stdin, "line");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("unavailable") || err.contains("Unavailable"),
        "{err}"
    );
}

#[test]
fn a_cluster_node_refuses_to_start_with_a_token_the_leader_would_refuse() {
    // Follow takes only a node's own token (admin, subject framecast-node-<id>): a node
    // given an operator's token says so at start, before it reaches etcd (none runs here).
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"a cluster secret of enough bytes!").unwrap();
    let data = dir.path().join("data");
    let mint = |subject: &str, admin: bool| {
        framecast::broker::token::mint_hs256(
            b"a cluster secret of enough bytes!",
            &framecast::broker::token::MintClaims {
                subject: subject.into(),
                publish: Vec::new(),
                subscribe: Vec::new(),
                admin,
                ttl: Duration::from_secs(600),
                not_before: None,
                expected: Default::default(),
            },
        )
        .unwrap()
    };
    for (token, case) in [
        (mint("ops", true), "an operator's admin token"),
        (mint("framecast-node-n2", true), "another node's token"),
        (
            mint("framecast-node-n1", false),
            "its own subject without admin",
        ),
    ] {
        let file = dir.path().join("node.token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let (code, _, stderr) = run(&[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--cluster-etcd",
            &format!("http://{}", dead_addr()),
            "--node-id",
            "n1",
            "--advertise",
            "127.0.0.1:1",
            "--auth-jwt-secret-file",
            secret.to_str().unwrap(),
            "--cluster-token-file",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(2), "{case}: {stderr}");
        assert!(
            stderr.contains("--cluster-token-file") && stderr.contains("framecast-node-n1"),
            "{case}: {stderr}"
        );
    }
}

/// Output that cannot be written (a full disk: `/dev/full`) is a failure, not a short
/// listing with exit 0; a reader that went away (`| head`) is not.
#[test]
fn output_that_cannot_be_written_fails_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(tmp.path(), &["--fsync", "never"]);
    let addr = server.addr.as_str();
    let (code, _, err) = run(&["publish", "--addr", addr, "--topic", "t", "a", "b"]);
    assert_eq!(code, Some(0), "{err}");
    let to_full = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        vec!["history", "--addr", addr, "--topic", "t", "--json"],
        vec!["subscribe", "--addr", addr, "--topic", "t", "--count", "2"],
        vec!["topics", "--addr", addr, "list"],
        vec!["cluster", "--addr", addr],
    ] {
        let (code, err) = to_full(&args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot write the output"), "{args:?}: {err}");
    }
    drop(server);
    let dir = tmp.path().to_str().unwrap();
    let (code, err) = to_full(&["dump", "--data-dir", dir]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot write the output"), "{err}");
}

/// A `--timeout` too short to wait for any ack (`0s`, `500ms`) is refused as a bad flag,
/// exit 2, before anything is sent; before, `0s` was taken and every frame then failed
/// after it may have been stored.
#[test]
fn a_timeout_under_a_second_is_refused_before_anything_is_sent() {
    let addr = dead_addr();
    for command in ["publish", "subscribe", "history"] {
        for timeout in ["0s", "0", "500ms"] {
            let mut args = vec![command, "--addr", &addr, "--timeout", timeout];
            if command == "publish" {
                args.push("x");
            }
            let (code, _, err) = run(&args);
            assert_eq!(code, Some(2), "{command} --timeout {timeout}: {err}");
            assert!(
                err.contains("--timeout must be at least 1 s"),
                "{command} --timeout {timeout}: {err}"
            );
            assert!(!err.contains("cannot reach"), "{command}: {err}");
        }
    }
}

/// `topics` and `cluster` against a server that cannot be reached say so at once, naming
/// the address, and give up after `--timeout` like the other client commands; before, they
/// had no `--timeout` and were silent for a minute.
#[test]
fn topics_and_cluster_name_an_unreachable_server_and_keep_to_the_timeout() {
    let addr = dead_addr();
    for args in [
        vec!["topics", "--addr", &addr, "--timeout", "2s"],
        vec!["topics", "list", "--addr", &addr, "--timeout", "2s"],
        vec!["topics", "create", "t", "--addr", &addr, "--timeout", "2s"],
        vec!["cluster", "--addr", &addr, "--timeout", "2s"],
    ] {
        let started = Instant::now();
        let (code, _, err) = run(&args);
        let took = started.elapsed();
        assert_eq!(code, Some(1), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or_default();
        assert!(
            first.contains(&format!("cannot reach {addr}")) && first.contains("retrying"),
            "{args:?}: the first line must say at once what is happening: {err}"
        );
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("cannot reach {addr}")),
            "{args:?}: the final error names the address: {err}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{args:?}: --timeout 2s took {took:?}"
        );
    }
    for command in ["topics", "cluster"] {
        let (code, _, err) = run(&[command, "--addr", &addr, "--timeout", "0s"]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains("--timeout must be at least 1 s"),
            "{command}: {err}"
        );
    }
}
