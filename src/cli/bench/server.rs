//! The server under test: `--spawn` starts one on a temporary data dir; either way a known
//! server process is sampled for CPU time and peak memory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::error::{Error, Result};

/// A `framecast serve` started for this run. Stopped (SIGTERM, then kill) when dropped.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// The gRPC listener, `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The HTTP door (SSE, WebSocket), `http://127.0.0.1:PORT`.
    pub http_addr: String,
    /// The fsync policy the server said it runs with (`always`, `interval:10`, `never`):
    /// whatever set it, --fsync, --serve-arg, FRAMECAST_FSYNC or a FRAMECAST_CONFIG file.
    /// `None` when its "listening" line did not name one.
    pub fsync: Option<String>,
    _dir: tempfile::TempDir,
}

impl Spawned {
    /// Starts `framecast serve` (this executable) with `fsync` and `extra` flags on a fresh
    /// temporary data dir, both listeners on free loopback ports, and waits for its
    /// "listening" line, which names them and the fsync policy.
    pub fn start(fsync: Option<&str>, extra: &[String]) -> Result<Spawned> {
        let exe = std::env::current_exe()?;
        let dir = tempfile::Builder::new()
            .prefix("framecast-bench-")
            .tempdir()?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(f) = fsync {
            cmd.arg("--fsync").arg(f);
        }
        cmd.args(extra);
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Spawn(format!("cannot start framecast serve: {e}")))?;
        let Some(stderr) = child.stderr.take() else {
            return Err(Error::Spawn("no stderr pipe".into()));
        };
        let (tx, rx) = mpsc::channel();
        // Reads the server's log for its whole life, so the pipe never fills up.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut tail: Vec<String> = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.is_some() {
                    match Listening::parse(&line) {
                        Some(listening) => {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(Ok(listening));
                            }
                        }
                        None => tail.push(line.clone()),
                    }
                }
                if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("[server] {line}");
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(tail.join("\n")));
            }
        });
        let listening = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(a)) => a,
            Ok(Err(log)) => {
                let _ = child.wait();
                return Err(Error::Spawn(format!(
                    "server exited before listening:\n{log}"
                )));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Spawn("server did not listen within 30 s".into()));
            }
        };
        Ok(Spawned {
            child,
            addr: format!("http://{}", listening.addr),
            http_addr: format!("http://{}", listening.http_addr),
            fsync: listening.fsync,
            _dir: dir,
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server gracefully (SIGTERM), killing it after 10 s.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the server's "listening" log line tells
/// (`… listening addr=127.0.0.1:P1 http_addr=127.0.0.1:P2 … fsync=always …`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listening {
    /// The gRPC listener, `HOST:PORT`.
    addr: String,
    /// The HTTP door, `HOST:PORT` or `off`.
    http_addr: String,
    /// The fsync policy in force.
    fsync: Option<String>,
}

impl Listening {
    /// The fields of `line`; `None` for any other line than "listening", or one without
    /// both addresses.
    fn parse(line: &str) -> Option<Listening> {
        if !line.contains("listening") {
            return None;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(Listening {
            addr: field("addr")?,
            http_addr: field("http_addr")?,
            fsync: field("fsync"),
        })
    }
}

/// Ends a spawned server: SIGTERM, then SIGKILL if it has not exited after `grace`.
pub fn terminate(child: &mut std::process::Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // Our own child, not reaped yet, so the pid is still its.
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let hz = match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        hz => hz as f64,
    };
    Some((utime + stime) / hz)
}

/// A process's resident memory now and at its peak, in bytes (`VmRSS`, `VmHWM`).
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// This process's CPU seconds (user + system).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Raises this process's open-file limit to its hard limit, returning the limit now in
/// force: a thousand connections (10,000 gRPC streams over 1,000 connections, or 1,000 SSE
/// or WebSocket subscribers, one connection each) need more than the usual 1,024. Called
/// before `--spawn`, so the spawned server inherits the raised limit for its end of them.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let (current, maximum) = (lim.current.unwrap_or(u64::MAX), lim.maximum);
    if maximum.is_some_and(|m| current < m)
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: maximum,
                maximum,
            },
        )
        .is_ok()
    {
        return maximum.unwrap_or(current);
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_fsync_come_from_the_listening_line() {
        let line = "2025-01-01T00:00:00.000Z  INFO framecast::server::run: listening \
                    addr=127.0.0.1:40001 http_addr=127.0.0.1:40002 data_dir=/tmp/x \
                    fsync=interval:10 max_connections=10000";
        assert_eq!(
            Listening::parse(line),
            Some(Listening {
                addr: "127.0.0.1:40001".into(),
                http_addr: "127.0.0.1:40002".into(),
                fsync: Some("interval:10".into()),
            })
        );
        // The HTTP door switched off is not an address the bench can use.
        let off = "INFO listening addr=127.0.0.1:1 http_addr=off";
        assert_eq!(
            Listening::parse(off),
            Some(Listening {
                addr: "127.0.0.1:1".into(),
                http_addr: "off".into(),
                fsync: None,
            })
        );
        assert_eq!(Listening::parse("INFO opened topic addr=1"), None);
        assert_eq!(Listening::parse("INFO listening addr=127.0.0.1:1"), None);
    }
}
