//! Segments grow in steps as they fill. A full disk at a growth step is a clean error to
//! the appender (ENOSPC, never SIGBUS): the log stays valid, every acknowledged frame is
//! kept across a reopen, and appends resume once there is room. Needs root to mount a
//! small tmpfs, as the server's disk-full test does.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use framecast::wal::{Error, FsyncPolicy, Log, LogConfig, NewFrame};

mod common;
use common::assert_holds_acked;

fn config() -> LogConfig {
    LogConfig {
        // Far larger than the disk: only growth in steps can use it to the last block.
        segment_bytes: 8 << 20,
        max_frame_bytes: 16 * 1024,
        fsync: FsyncPolicy::Always,
        ..Default::default()
    }
}

fn frame(i: u64) -> NewFrame {
    let mut payload = format!("frame-{i}|").into_bytes();
    payload.resize(6000, (i % 251) as u8);
    NewFrame {
        seq_no: i,
        timestamp: 0,
        key: Bytes::new(),
        payload: Bytes::from(payload),
    }
}

/// Unmounts the tmpfs when dropped, even when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_at_a_growth_step_is_a_clean_error_and_the_log_stays_valid() {
    let mount = tempfile::tempdir().expect("tempdir");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("this test mounts a 1 MiB tmpfs and needs root: mount failed: {other:?}"),
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let filler = mount.path().join("filler");
    std::fs::write(&filler, vec![0xAAu8; 256 << 10]).expect("filler");
    let dir: &Path = &mount.path().join("log");

    let log = Log::open(dir, config()).expect("open");
    let mut acked = Vec::new();
    let err = loop {
        assert!(acked.len() < 1000, "1 MiB never filled up");
        let f = frame(acked.len() as u64);
        match log.append(vec![f.clone()]) {
            Ok(a) => acked.push((a[0].offset, f)),
            Err(e) => break e,
        }
    };
    match &err {
        Error::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}")
        }
        other => panic!("a full disk must be an I/O error, got {other}"),
    }
    // Growth takes what is left when a whole step does not fit: the disk is used up to
    // about one frame, not one step, before appends are refused.
    assert!(
        acked.len() >= 100,
        "only {} frames of 6 KB on 768 KiB",
        acked.len()
    );
    // Refused appends used no offset and left nothing behind.
    assert!(log.append(vec![frame(9999)]).is_err(), "still full");
    assert_holds_acked(&log, &acked, "after the refusal");
    drop(log);

    let log = Log::open(dir, config()).expect("reopen on the full disk");
    assert_holds_acked(&log, &acked, "after a reopen");
    std::fs::remove_file(&filler).expect("free the filler");
    for _ in 0..20 {
        let f = frame(acked.len() as u64);
        let a = log
            .append(vec![f.clone()])
            .expect("append once there is room");
        assert_eq!(
            a[0].offset,
            acked.len() as u64,
            "no offset was used by the failure"
        );
        acked.push((a[0].offset, f));
    }
    assert_holds_acked(&log, &acked, "after space was freed");
    drop(log);
    let log = Log::open(dir, config()).expect("final reopen");
    assert_holds_acked(&log, &acked, "after the final reopen");
    drop(log);
}
