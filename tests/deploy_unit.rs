//! `deploy/framecast.service`: the systemd unit has what production needs (a dedicated user,
//! the data dir on /var/lib/framecast, restart on failure, file and task limits for 100k streams
//! and busy topics, hardening; the sysctl file beside it raises the memory-mapping limit),
//! and `systemd-analyze verify` accepts it where systemd-analyze is installed
//! (it is on this project's machines: Debian's systemd package).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;

use std::process::Command;

fn unit() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/framecast.service"
    ))
    .unwrap()
}

fn value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[test]
fn the_unit_has_what_production_needs() {
    let u = unit();
    assert_eq!(value(&u, "User"), Some("framecast"));
    assert_eq!(value(&u, "Restart"), Some("on-failure"));
    assert_eq!(value(&u, "StateDirectory"), Some("framecast"));
    let exec = value(&u, "ExecStart").unwrap();
    assert!(
        exec.contains(" serve ") && exec.contains("--data-dir /var/lib/framecast"),
        "{exec}"
    );
    let nofile: u64 = value(&u, "LimitNOFILE").unwrap().parse().unwrap();
    assert!(
        nofile >= 100_000,
        "LimitNOFILE {nofile} is too low for 100k streams"
    );
    let tasks: u64 = value(&u, "TasksMax").unwrap().parse().unwrap();
    assert!(
        (1024..=65_536).contains(&tasks),
        "TasksMax {tasks}: room for the runtime's 512 blocking threads, 64 committer threads \
         and a worker per core, and a bound on a runaway"
    );
    // The sysctl file beside it raises the mapping limit well past the kernel's default.
    let sysctl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/99-framecast.conf"
    ))
    .unwrap();
    let maps: u64 = sysctl
        .lines()
        .find_map(|l| l.strip_prefix("vm.max_map_count = "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(maps >= 262_144, "vm.max_map_count {maps}");
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "ProtectHome",
    ] {
        assert!(value(&u, key).is_some(), "missing hardening option {key}");
    }
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: only the unit's content was checked");
        return;
    }
    // Verify a copy whose ExecStart names the binary just built (verify checks that it exists).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("framecast.service");
    std::fs::write(
        &path,
        unit().replace("/usr/local/bin/framecast", &common::bin()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Only this unit's own complaints count (verify also reads the host's units).
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("framecast.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {said}"
    );
}
