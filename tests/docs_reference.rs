//! `docs/reference.md` is written from the code (`scripts/gen-reference.sh`): the proto file
//! and every command's `--help`. This test regenerates it in memory from the real binary and
//! fails when the committed file is stale, so the reference cannot drift from the code.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::process::Command;

#[test]
fn reference_matches_the_code() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/gen-reference.sh"))
        .env("FRAMECAST_BIN", common::bin())
        .env("REFERENCE_OUT", "-")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen-reference.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(format!("{root}/docs/reference.md")).unwrap();
    assert!(
        fresh == committed,
        "docs/reference.md is stale: run `bash scripts/gen-reference.sh` and commit it"
    );
}
