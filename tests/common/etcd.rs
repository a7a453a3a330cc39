//! Harness of the cluster tests: a real single-member etcd (`/usr/bin/etcd`, or `etcd` on
//! `PATH`) on free loopback ports with a temporary data dir, killed on drop. It can be
//! killed (`stop`, SIGKILL) and started again on the same data dir and ports, or paused and
//! resumed (SIGSTOP/SIGCONT), for failover tests. Every wait is bounded.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failing
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framecast::client::ClientTls;
use framecast::cluster::etcd::Etcd;
use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

// Also loaded by `mod.rs`: binaries that use only this file need their own copy.
#[allow(clippy::duplicate_mod)]
#[path = "ports.rs"]
mod ports;

/// How long etcd may take to answer after being started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The per-request timeout of the clients the harness makes.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The etcd binary: Debian's `etcd-server` puts it at `/usr/bin/etcd`.
pub fn etcd_bin() -> PathBuf {
    let debian = Path::new("/usr/bin/etcd");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("etcd")
    }
}

/// A running (or stopped) single-member etcd.
pub struct EtcdServer {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Appended to by every run, so that a failure shows the whole history.
    log: PathBuf,
    paused: bool,
    /// With TLS: clients reach etcd at `https://` and must present a certificate.
    tls: Option<EtcdTls>,
}

/// PEM files of an etcd served over TLS with client certificates required: its own
/// certificate and key (for 127.0.0.1), which its clients also present, and their CA.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The certificate (server and client use).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA that signed it.
    pub ca: PathBuf,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports and waits until it answers.
    pub async fn start() -> EtcdServer {
        EtcdServer::start_with(None).await
    }

    /// Starts etcd serving its clients over TLS (`--client-cert-auth`): see [`EtcdTls`].
    pub async fn start_tls(tls: EtcdTls) -> EtcdServer {
        EtcdServer::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTls>) -> EtcdServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("etcd.log");
        // Below the ephemeral range: a restart binds them again (see `ports.rs`).
        let mut server = EtcdServer {
            child: None,
            client_port: ports::fixed_port(6_000),
            peer_port: ports::fixed_port(6_000),
            dir,
            log,
            paused: false,
            tls,
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// What a client needs to reach this etcd over TLS (`None`: plaintext).
    pub fn client_tls(&self) -> Option<ClientTls> {
        self.tls.as_ref().map(|t| ClientTls {
            ca_pem: Some(std::fs::read(&t.ca).unwrap().into()),
            identity: Some((
                std::fs::read(&t.cert).unwrap().into(),
                std::fs::read(&t.key).unwrap().into(),
            )),
        })
    }

    /// A connected client (timeout [`CLIENT_TIMEOUT`]).
    pub async fn client(&self) -> Etcd {
        Etcd::connect_with(
            &[self.endpoint()],
            self.client_tls().as_ref(),
            CLIENT_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("connect to etcd: {e}\n{}", self.log_tail()))
    }

    /// Kills etcd with SIGKILL (a crash: nothing flushed beyond what etcd already synced).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Starts etcd again on the same data dir and ports, and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: etcd is still running");
        self.spawn();
        self.wait_ready().await;
    }

    /// Freezes etcd (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        self.signal(Signal::STOP);
        self.paused = true;
    }

    /// Thaws etcd (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(Signal::CONT);
        self.paused = false;
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "--- etcd log (last lines) ---\n{}",
            lines[from..].join("\n")
        )
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("etcd is not running");
        kill_process(Pid::from_child(child), signal).unwrap();
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(etcd_bin());
        // Settings from the environment (ETCD_*) would override the flags below.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg("framecast-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client_url)
            .arg("--advertise-client-urls")
            .arg(&client_url)
            .arg("--listen-peer-urls")
            .arg(&peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer_url)
            .arg("--initial-cluster")
            .arg(format!("framecast-test={peer_url}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", etcd_bin().display()));
        self.child = Some(child);
    }

    /// Waits until a linearizable read answers (etcd elected itself leader), at most
    /// [`START_TIMEOUT`].
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited at start: {status}\n{}", self.log_tail());
            }
            let (endpoints, tls) = ([self.endpoint()], self.client_tls());
            let probe = Etcd::connect_with(&endpoints, tls.as_ref(), Duration::from_millis(500));
            if let Ok(etcd) = probe.await {
                if etcd.get("/").await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not answer within {START_TIMEOUT:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too.
        self.stop();
    }
}
