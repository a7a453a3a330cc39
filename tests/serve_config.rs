//! `serve` settings from three places, with the precedence API.md gives: a flag beats its
//! `FRAMECAST_<FLAG>` environment variable, which beats the `--config` TOML file. Seen from
//! outside, in the startup line that logs every effective setting — written as JSON with
//! `--log-format json`, whose every line must parse.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts `serve` with `args` and `env`, returns every log line up to "listening" (parsed as
/// JSON) and kills it. Panics if it does not start.
fn startup(args: &[&str], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--data-dir",
    ])
    .arg(dir.path())
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target", "fields"] {
            assert!(v.get(key).is_some(), "no '{key}' in {line}");
        }
        let done = v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening"));
        lines.push(v);
        if done || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|v| v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening"))),
        "the server did not start: {lines:?}"
    );
    lines
}

/// The effective `max_subscribers` as the startup line logs it.
fn max_subscribers(lines: &[serde_json::Value]) -> u64 {
    let start = lines
        .iter()
        .find(|v| v["fields"]["message"] == "framecast serve starting")
        .expect("no startup line");
    assert!(start["fields"]["version"].is_string(), "{start}");
    let settings = start["fields"]["settings"].as_str().unwrap();
    let rest = settings.split("max_subscribers: ").nth(1).unwrap();
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn flag_beats_environment_beats_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("framecast.toml");
    std::fs::write(
        &file,
        "max-subscribers = 111\ndedup-window = \"90s\"\nno-auto-create-topics = true\n\
         cors-origin = [\"https://a.example\", \"https://b.example\"]\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let env = [("FRAMECAST_MAX_SUBSCRIBERS", "222")];
    assert_eq!(max_subscribers(&startup(&["--config", f], &[])), 111);
    assert_eq!(max_subscribers(&startup(&["--config", f], &env)), 222);
    assert_eq!(
        max_subscribers(&startup(&["--config", f, "--max-subscribers", "333"], &env)),
        333
    );
    // The file's other keys took effect too, and FRAMECAST_CONFIG names the file as well.
    let lines = startup(&[], &[("FRAMECAST_CONFIG", f)]);
    let settings = lines
        .iter()
        .find(|v| v["fields"]["message"] == "framecast serve starting")
        .unwrap()["fields"]["settings"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(settings.contains("auto_create_topics: false"), "{settings}");
    assert!(settings.contains("dedup_window: 90s"), "{settings}");
    // A flag that takes several values takes them as a TOML list.
    assert!(
        settings.contains(r#"cors_origins: ["https://a.example", "https://b.example"]"#),
        "{settings}"
    );
    assert_eq!(max_subscribers(&lines), 111);
}

#[test]
fn unknown_or_bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "data-dri = \"/tmp/x\"\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown setting 'data-dri'"), "{err}");

    // A list only for a flag that takes several values, and of plain strings.
    for bad in [
        "max-subscribers = [1, 2]\n",
        "cors-origin = [\"https://a.example,https://b.example\"]\n",
        "cors-origin = [1]\n",
        "cors-origin = []\n",
        "cluster-etcd = [\"\"]\n",
    ] {
        std::fs::write(&file, bad).unwrap();
        let out = Command::new(bin())
            .args(["serve", "--config", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--config"), "{bad}: {err}");
    }

    let out = Command::new(bin())
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!out.status.success());

    // A lease under etcd's 2s minimum (which etcd would lengthen without telling the node).
    for ttl in ["0s", "1s", "1500ms"] {
        let out = Command::new(bin())
            .args(["serve", "--lease-ttl", ttl])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{ttl}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("minimum of 2s"), "{ttl}: {err}");
    }
}

/// A taken address (gRPC or HTTP) stops `serve` at once with the address and the reason,
/// not a hang: and the test harness sees the exit as a failed start, with the log.
#[test]
fn a_taken_address_is_refused_at_once_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    for (flag, said) in [
        ("--listen", format!("cannot listen on {at}")),
        (
            "--http-listen",
            format!("cannot listen on --http-listen {at}"),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let log = match Server::try_start_with_env(dir.path(), &[flag, &at], &[]) {
            Ok(_) => panic!("{flag} {at} is taken, yet the server started"),
            Err(log) => log,
        };
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{flag}: the failed start was seen only after {:?}",
            started.elapsed()
        );
        assert!(log.contains(&said), "{flag}: {log}");
        assert!(log.contains("Address already in use"), "{flag}: {log}");
    }
}
