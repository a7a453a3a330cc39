//! `framecast topics` against the real server: create with settings, list with figures (table
//! and JSON), delete; a missing topic is an error with a non-zero exit.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> (bool, String, String) {
    let r = common::cli::run(args, Duration::from_secs(60));
    (r.code == Some(0), r.stdout, r.stderr)
}

#[test]
fn create_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();

    let (ok, out, err) = run(&[
        "topics",
        "--addr",
        addr,
        "create",
        "chat",
        "--retention-max-bytes",
        "1MiB",
        "--retention-max-age",
        "1h",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("created chat epoch="), "{out}");
    let (ok, _, err) = run(&["topics", "--addr", addr, "create", "chat"]);
    assert!(!ok, "creating it twice must fail");
    assert!(err.to_lowercase().contains("exist"), "{err}");

    let (ok, _, err) = run(&["publish", "--addr", addr, "--topic", "chat", "a", "b", "c"]);
    assert!(ok, "{err}");

    let (ok, out, err) = run(&["topics", "--addr", addr, "list", "--json"]);
    assert!(ok, "{err}");
    let chat: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["name"] == "chat")
        .unwrap_or_else(|| panic!("chat not listed: {out}"));
    assert_eq!(chat["frames"], 3, "{out}");
    assert_eq!(chat["next_offset"], 3, "{out}");
    assert!(chat["bytes"].as_u64().unwrap() > 3, "{out}");

    // The default is the table.
    let (ok, out, err) = run(&["topics", "--addr", addr]);
    assert!(ok, "{err}");
    assert!(out.lines().next().unwrap().starts_with("topic"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("chat ") && l.contains(" 3 ")),
        "{out}"
    );

    let (ok, out, err) = run(&["topics", "--addr", addr, "delete", "chat"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deleted chat");
    let (ok, out, _) = run(&["topics", "--addr", addr, "list", "--json"]);
    assert!(ok);
    assert!(!out.contains("\"chat\""), "{out}");
    let (ok, _, err) = run(&["topics", "--addr", addr, "delete", "chat"]);
    assert!(!ok, "deleting a missing topic must fail");
    assert!(err.contains("chat"), "{err}");
}
