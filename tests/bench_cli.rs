//! The load generator itself: `framecast bench` runs against a server it spawns, counts what
//! it publishes and delivers, and reports a clean run (nothing lost, duplicated or
//! reordered) in its `--json` output with exit code 0. Small counts: this checks the tool,
//! it measures nothing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::ffi::OsStr;
use std::process::{Command, Output};

use serde_json::Value;

/// `framecast bench ARGS` as given, nothing added.
fn bench_output<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    Command::new(common::bin())
        .arg("bench")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run framecast bench")
}

/// A run of `framecast bench ARGS --spawn --json --quiet` that must succeed: its report.
fn bench(args: &[&str]) -> Value {
    bench_with_env(args, &[])
}

/// Like [`bench`], with these environment variables set for the bench (and so for the
/// server it spawns).
fn bench_with_env(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--spawn", "--json", "--quiet"]);
    report_of(&all, &bench_output(&all, env))
}

/// The JSON report of a run that exited 0.
fn report_of<S: std::fmt::Debug>(args: &[S], out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "framecast bench {args:?} exited {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn assert_clean(r: &Value) {
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
    for k in ["missing", "duplicated", "out_of_order", "foreign"] {
        assert_eq!(r["faults"][k], 0, "{k}: {r:#}");
    }
    assert_eq!(r["incomplete_subscribers"], 0, "{r:#}");
}

#[test]
fn publish_stream_counts_every_ack() {
    let r = bench(&[
        "publish",
        "--stream",
        "--count",
        "3000",
        "--publishers",
        "2",
    ]);
    assert_clean(&r);
    assert_eq!(r["published"]["frames"], 3000);
    assert_eq!(r["latency"][0]["name"], "ack");
    assert_eq!(r["latency"][0]["count"], 3000);
    // What the spawned server said it runs with, not what the bench assumed.
    assert_eq!(r["fsync"], "always");
}

#[test]
fn unary_publish_with_fsync_reported() {
    let r = bench(&[
        "publish",
        "--count",
        "200",
        "--publishers",
        "4",
        "--fsync",
        "interval:10",
    ]);
    assert_clean(&r);
    assert_eq!(r["published"]["frames"], 200);
    assert_eq!(r["publish_mode"], "unary");
    assert_eq!(r["fsync"], "interval:10");
}

#[test]
fn coalesced_publishers_share_one_client() {
    let r = bench(&[
        "publish",
        "--coalesce",
        "--count",
        "2000",
        "--publishers",
        "64",
    ]);
    assert_clean(&r);
    assert_eq!(r["published"]["frames"], 2000);
    assert_eq!(r["latency"][0]["count"], 2000);
    assert_eq!(r["publish_mode"], "coalesced");
    // The shared client makes its own connection, which the bench does not count: no
    // figure rather than a near-zero one.
    assert!(r["wire"].is_null(), "{r:#}");
}

#[test]
fn fanout_delivers_every_frame_to_every_subscriber() {
    let r = bench(&[
        "fanout",
        "--count",
        "400",
        "--rate",
        "4000",
        "--publishers",
        "2",
        "--subscribers",
        "30",
        "--connections",
        "7",
    ]);
    assert_clean(&r);
    assert_eq!(r["published"]["frames"], 400);
    assert_eq!(r["delivered"]["frames"], 400 * 30);
    let delivery = r["latency"]
        .as_array()
        .and_then(|rows| rows.iter().find(|row| row["name"] == "delivery"))
        .expect("a delivery latency row");
    assert_eq!(delivery["count"], 400 * 30);
}

#[test]
fn fanout_over_sse_and_websocket_is_checked_like_grpc() {
    for transport in ["sse", "ws"] {
        let r = bench(&[
            "fanout",
            "--count",
            "300",
            "--rate",
            "3000",
            "--subscribers",
            "20",
            "--transport",
            transport,
        ]);
        assert_clean(&r);
        assert_eq!(r["transport"], transport, "{r:#}");
        assert_eq!(r["delivered"]["frames"], 300 * 20, "{transport}");
    }
}

#[test]
fn replay_reads_the_prefilled_topic() {
    let r = bench(&["replay", "--frames", "5000", "--subscribers", "2"]);
    assert_clean(&r);
    assert_eq!(r["published"]["frames"], 5000);
    assert_eq!(r["delivered"]["frames"], 10_000);
}

#[test]
fn a_size_below_the_header_is_refused() {
    let out = bench_output(&["publish", "--size", "8", "--spawn", "--quiet"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
}

#[test]
fn a_count_of_zero_is_refused() {
    for args in [
        &["publish", "--publishers", "0"][..],
        &["publish", "--stream", "--window", "0"],
        &["fanout", "--connections", "0"],
        &["replay", "--connections", "0"],
        &["e2e", "--unary", "--unary-publishers", "0"],
    ] {
        let out = bench_output(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("must be at least 1"), "{args:?}: {stderr}");
    }
}

#[test]
fn fanout_counts_wire_bytes_and_compression_shrinks_them() {
    let run = |compression: &str| {
        let r = bench(&[
            "fanout",
            "--count",
            "200",
            "--rate",
            "2000",
            "--size",
            "4096",
            "--payload",
            "json",
            "--compression",
            compression,
            "--subscribers",
            "4",
            "--connections",
            "2",
        ]);
        assert_clean(&r);
        assert_eq!(r["delivered"]["frames"], 200 * 4);
        assert_eq!(r["compression"], compression);
        assert_eq!(r["payload"], "json");
        let wire = &r["wire"];
        let (sent, received) = (
            wire["sent_bytes"].as_u64().unwrap(),
            wire["received_bytes"].as_u64().unwrap(),
        );
        (sent, received)
    };
    let (plain_sent, plain_received) = run("none");
    // Uncompressed, every payload crosses once to the server and once per subscriber.
    assert!(plain_sent > 200 * 4096, "{plain_sent}");
    assert!(plain_received > 200 * 4 * 4096, "{plain_received}");
    for c in ["gzip", "zstd"] {
        let (sent, received) = run(c);
        assert!(sent < plain_sent / 2, "{c}: sent {sent} vs {plain_sent}");
        assert!(
            received < plain_received / 2,
            "{c}: received {received} vs {plain_received}"
        );
    }
}

/// `bench topics` small and quick: three topics of two frames, no idle wait.
const SMALL_TOPICS: [&str; 9] = [
    "topics",
    "--topics",
    "3",
    "--frames",
    "2",
    "--idle-wait",
    "0s",
    "--check",
    "3",
];

#[test]
fn the_token_is_masked_in_every_report() {
    // A spawned server has no authentication and the bench does not send --token to it,
    // so these runs are clean and report; the token must not be in the report.
    for token in [
        &["--token", "SECRET-SPACED"][..],
        &["--token=SECRET-JOINED"],
    ] {
        let r = bench(&[&["publish", "--count", "20"][..], token].concat());
        assert_clean(&r);
        let command = r["command"].as_str().unwrap();
        assert!(!r.to_string().contains("SECRET"), "{r:#}");
        assert!(command.contains("--token"), "{command}");
        assert!(command.contains("***"), "{command}");
    }
    // `bench topics` prints its command line in the table, and in --json.
    for format in [&[][..], &["--json"]] {
        let args = [
            &SMALL_TOPICS[..],
            &["--quiet", "--token", "SECRET-TOPICS"],
            format,
        ]
        .concat();
        let out = bench_output(&args, &[]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("--token ***"), "{stdout}");
        assert!(!stdout.contains("SECRET"), "{stdout}");
    }
}

#[test]
fn a_data_dir_that_is_not_utf8_is_reported_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join(OsStr::from_bytes(b"data-\xff"));
    let mut args: Vec<&OsStr> = SMALL_TOPICS.iter().map(OsStr::new).collect();
    args.extend([
        OsStr::new("--json"),
        OsStr::new("--quiet"),
        OsStr::new("--data-dir"),
    ]);
    args.push(data_dir.as_os_str());
    let r = report_of(&args, &bench_output(&args, &[]));
    assert_eq!(r["ok"], true, "{r:#}");
    assert!(
        r["command"].as_str().unwrap().contains("data-\u{FFFD}"),
        "{r:#}"
    );
}

#[test]
fn the_spawned_servers_own_fsync_policy_is_reported() {
    // Set through the server's flags, or its environment: the bench reads what the server
    // says it runs with.
    let r = bench(&["publish", "--count", "20", "--serve-arg=--fsync=never"]);
    assert_clean(&r);
    assert_eq!(r["fsync"], "never", "{r:#}");
    let r = bench_with_env(
        &["publish", "--count", "20"],
        &[("FRAMECAST_FSYNC", "interval:25")],
    );
    assert_clean(&r);
    assert_eq!(r["fsync"], "interval:25", "{r:#}");
}

#[test]
fn a_size_over_the_largest_payload_is_refused() {
    // 2^64 - 1 overflowed the payload's buffer size; 64 MiB is over what the bench's
    // connections carry in one message.
    for size in ["18446744073709551615", "67108864"] {
        for scenario in [
            &["publish", "--count", "1", "--spawn"][..],
            &["replay", "--frames", "1", "--spawn"],
            &SMALL_TOPICS,
        ] {
            let args = [scenario, &["--quiet", "--size", size]].concat();
            let out = bench_output(&args, &[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(stderr.contains("--size"), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        }
    }
}

#[test]
fn replay_prefills_again_for_another_payload_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), &[]);
    let replay = |payload: &str| {
        let args = [
            "replay",
            "--addr",
            &server.addr,
            "--frames",
            "300",
            "--payload",
            payload,
            "--json",
            "--quiet",
        ];
        let r = report_of(&args, &bench_output(&args, &[]));
        assert_clean(&r);
        assert_eq!(r["payload"], payload, "{r:#}");
        assert_eq!(r["delivered"]["frames"], 300, "{r:#}");
        r
    };
    let filler = replay("filler");
    assert_eq!(filler["published"]["frames"], 300, "{filler:#}");
    // The topic of filler frames holds 300 frames, but not of JSON records: a run with
    // --payload json must not replay them as if they were.
    let json = replay("json");
    assert_ne!(json["topic"], filler["topic"], "{json:#}");
    assert_eq!(json["published"]["frames"], 300, "{json:#}");
    // The same kind again reuses its prefill.
    let again = replay("json");
    assert_eq!(again["topic"], json["topic"], "{again:#}");
    assert!(again["published"].is_null(), "{again:#}");
}

#[test]
fn topics_fails_when_the_data_dir_takes_more_than_its_bound() {
    // 2 MB that no topic accounts for, in the directory whose size is checked against
    // 2 × stored + 64 KiB per topic (about 0.2 MB here).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("topics")).unwrap();
    std::fs::write(dir.path().join("topics/ballast"), vec![1u8; 2_000_000]).unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let args = [
        &SMALL_TOPICS[..],
        &["--json", "--quiet", "--data-dir", data_dir],
    ]
    .concat();
    let out = bench_output(&args, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["ok"], false, "{r:#}");
    assert_eq!(r["check_failures"], 0, "{r:#}");
    assert_eq!(r["errors"], 0, "{r:#}");
}
