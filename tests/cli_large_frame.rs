//! A frame larger than 64 MiB, which a server with a larger `--max-frame-bytes` stores, is
//! read back whole by `framecast subscribe` and `framecast history`: before, the client's
//! 64 MiB receive limit made the topic unreadable past it, reported as "out of range".
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use framecast::proto::broadcast_client::BroadcastClient;

/// The frame's size: past the 64 MiB (67,108,864 bytes) the client took before.
const BIG: usize = 68_000_000;

/// Runs the binary to its end, within `limit`; (exit code, stdout, stderr).
fn run(args: &[&str], limit: Duration) -> (Option<i32>, Vec<u8>, String) {
    let started = Instant::now();
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        started.elapsed() < limit,
        "{args:?} took {:?}",
        started.elapsed()
    );
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_64_mib_is_read_back_by_subscribe_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--max-frame-bytes",
            "80MiB",
            "--segment-bytes",
            "256MiB",
            "--fsync",
            "never",
        ],
    );
    let channel = tonic::transport::Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = BroadcastClient::new(channel)
        .max_decoding_message_size(128 << 20)
        .max_encoding_message_size(128 << 20);
    publish(&mut c, "big", 0, &vec![b'x'; BIG]).await;
    publish(&mut c, "big", 1, b"after").await;
    drop(c);
    let addr = server.addr.as_str();
    for command in ["subscribe", "history"] {
        let (code, out, err) = run(
            &[
                command,
                "--addr",
                addr,
                "--topic",
                "big",
                "--count",
                "2",
                "--raw",
                "--timeout",
                "10s",
            ],
            Duration::from_secs(60),
        );
        assert_eq!(code, Some(0), "{command}: {err}");
        assert_eq!(out.len(), BIG + 1 + "after\n".len(), "{command}: {err}");
        assert!(out[..BIG].iter().all(|&b| b == b'x'), "{command}");
        assert_eq!(&out[BIG..], b"\nafter\n", "{command}");
    }
}
