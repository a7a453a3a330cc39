//! `framecast token` mints what the server accepts: a token from the real binary verifies
//! with the library's `Authenticator` against the same secret file and carries the claims
//! given on the command line; bad input is refused plainly, with exit code 2.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use framecast::broker::token::Authenticator;

fn token(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_framecast"))
        .arg("token")
        .args(args)
        .output()
        .expect("run framecast token")
}

fn secret_file(content: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), content).unwrap();
    file
}

#[test]
fn a_minted_token_verifies_and_carries_its_claims() {
    // The newline `echo` leaves is not part of the secret, for the server or the tool.
    let secret = secret_file("s3cret\n");
    let path = secret.path().to_str().unwrap();
    let out = token(&[
        "--secret-file",
        path,
        "--subject",
        "ingest-bot",
        "--publish",
        "prices.>",
        "--publish",
        "news",
        "--subscribe",
        "prices.*",
        "--ttl",
        "2m",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    let auth = Authenticator::from_files(Some(secret.path()), None)
        .unwrap()
        .unwrap();
    let p = auth.verify(stdout.trim_end()).unwrap();
    assert_eq!(p.subject(), "ingest-bot");
    assert!(p.may_publish("prices.eu.fx") && p.may_publish("news"));
    assert!(!p.may_publish("other"));
    assert!(p.may_subscribe("prices.eu") && !p.may_subscribe("prices.eu.fx"));
    assert!(!p.may_subscribe("news"));
    assert!(!p.is_admin());
    let ttl_left = p
        .expires_at()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        ttl_left > Duration::from_secs(100) && ttl_left <= Duration::from_secs(121),
        "{ttl_left:?}"
    );
    // Signed with this secret only.
    let other = Authenticator::from_keys(Some(b"another"), None)
        .unwrap()
        .unwrap();
    assert!(other.verify(stdout.trim_end()).is_err());
}

#[test]
fn admin_and_the_default_ttl() {
    let secret = secret_file("k");
    let out = token(&[
        "--secret-file",
        secret.path().to_str().unwrap(),
        "--subject",
        "ops",
        "--admin",
    ]);
    assert!(out.status.success());
    let auth = Authenticator::from_files(Some(secret.path()), None)
        .unwrap()
        .unwrap();
    let p = auth
        .verify(String::from_utf8(out.stdout).unwrap().trim_end())
        .unwrap();
    assert!(p.is_admin());
    assert!(!p.may_publish("default") && !p.may_subscribe("default"));
    let left = p
        .expires_at()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3601));
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let secret = secret_file("k");
    let path = secret.path().to_str().unwrap();
    for (args, says) in [
        (
            vec!["--secret-file", path, "--subject", "a", "--publish", "a..b"],
            "a..b",
        ),
        (
            vec![
                "--secret-file",
                path,
                "--subject",
                "a",
                "--subscribe",
                "x.>.y",
            ],
            "'>' may only be the last token",
        ),
        (
            vec!["--secret-file", "/nonexistent/secret", "--subject", "a"],
            "/nonexistent/secret",
        ),
        (vec!["--secret-file", path, "--subject", ""], "subject"),
    ] {
        let out = token(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr.starts_with("framecast token: ") && stderr.contains(says),
            "{args:?}: {stderr}"
        );
    }
    let empty = secret_file("\n");
    let out = token(&[
        "--secret-file",
        empty.path().to_str().unwrap(),
        "--subject",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}
