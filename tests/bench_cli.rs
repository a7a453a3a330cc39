//! The load generator itself: `framecast bench` runs against a server it spawns, counts what
//! it publishes and delivers, and reports a clean run (nothing lost, duplicated or
//! reordered) in its `--json` output with exit code 0. Small counts: this checks the tool,
//! it measures nothing.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_framecast"))
        .arg("bench")
        .args(args)
        .args(["--spawn", "--json", "--quiet"])
        .output()
        .expect("run framecast bench");
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
    assert_eq!(r["fsync"], "always (server default)");
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
    let out = Command::new(env!("CARGO_BIN_EXE_framecast"))
        .args(["bench", "publish", "--size", "8", "--spawn", "--quiet"])
        .output()
        .expect("run framecast bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--size"));
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
