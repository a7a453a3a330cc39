//! Shared harness of the server tests: start the real `framecast` binary on a loopback
//! port with a temporary data dir, talk to it with the generated gRPC client, kill it.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is the test failing
#![allow(dead_code)]

pub mod cli;
pub mod http;
#[path = "ports.rs"]
mod ports;
pub mod proxy;
pub mod sse;
pub mod tokens;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::{Frame, PublishAck, PublishRequest, SubscribeRequest};
use tonic::transport::Channel;

/// The binary under test: this build's, or `FRAMECAST_TEST_BIN` (another build, for
/// comparing two by hand).
pub fn bin() -> String {
    std::env::var("FRAMECAST_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_framecast").to_string())
}

/// A running `framecast serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// The HTTP door, `http://127.0.0.1:PORT` (None when started with `--http-listen off`).
    pub http: Option<String>,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Set once the reader has read the server's stderr to its end.
    log_done: Arc<std::sync::atomic::AtomicBool>,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server on `data_dir` with extra flags, waiting until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_owned(data_dir, extra, &[])
    }

    /// Like [`Server::start`], with environment variables set for this start only (a
    /// restart runs without them).
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::start_owned(data_dir, extra, env)
    }

    /// Like [`Server::start_with_env`]; `Err` with the server's log when it did not start
    /// (it exited, or said nothing of listening within 60 s).
    pub fn try_start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::try_start_owned(data_dir, extra, env)
    }

    fn start_owned(data_dir: &Path, extra: Vec<String>, env: &[(&str, &str)]) -> Server {
        Self::try_start_owned(data_dir, extra, env)
            .unwrap_or_else(|log| panic!("server did not start; log:\n{log}"))
    }

    fn try_start_owned(
        data_dir: &Path,
        extra: Vec<String>,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let listen: &[&str] = if extra.iter().any(|a| a == "--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        // Never the default 127.0.0.1:7071, which parallel tests would fight over.
        let http: &[&str] = if extra.iter().any(|a| a == "--http-listen") {
            &[]
        } else {
            &["--http-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(bin())
            .arg("serve")
            .args(listen)
            .args(http)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn framecast serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        let log_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::clone(&log_done);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Logged before the address is handed over, so a test that asks the log
                // right after start finds the "listening" line in it.
                log2.lock().unwrap().push(line.clone());
                if line.contains("listening") {
                    if let Some(at) = line.find("addr=") {
                        let field = |from: usize| -> String {
                            line[from..].split_whitespace().next().unwrap_or("").into()
                        };
                        let addr = field(at + 5);
                        let http = line.find("http_addr=").map(|h| field(h + 10));
                        if let Some(tx) = tx.take() {
                            let _ = tx.send((addr, http));
                        }
                    }
                }
            }
            done.store(true, Ordering::Release);
        });
        // The reader drops the sender when the server's stderr closes: an exit is seen at
        // once, not after the timeout.
        let (addr, http) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(log.lock().unwrap().join("\n"));
            }
        };
        Ok(Server {
            child,
            addr: format!("http://{addr}"),
            http: http.filter(|h| h != "off").map(|h| format!("http://{h}")),
            data_dir: data_dir.to_path_buf(),
            log,
            log_done,
            extra,
        })
    }

    /// Starts a server on a fixed free loopback port, so that a restart keeps the address
    /// clients know.
    pub fn start_fixed_port(data_dir: &Path, extra: &[&str]) -> Server {
        let port = fixed_port();
        let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_owned(data_dir, args, &[])
    }

    /// Starts again on the same data dir with the same flags (after a kill or exit).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start_owned(&self.data_dir.clone(), self.extra.clone(), &[]);
    }

    /// Like [`Server::restart`]; `Err` with its log when it did not start (it exited).
    pub fn try_restart(&mut self) -> Result<(), String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::try_start_owned(&self.data_dir.clone(), self.extra.clone(), &[])?;
        Ok(())
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id() as i32;
        // SAFETY (test code): plain kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }

    /// Waits up to `limit` for the process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last lines reach the log through the reader thread: let it finish,
                // so a test asking the log after the exit finds them.
                while !self.log_done.load(Ordering::Acquire) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A connected client.
    pub async fn client(&self) -> BroadcastClient<Channel> {
        connect(&self.addr).await
    }

    /// Resident anonymous memory of the server process (RssAnon), in bytes.
    pub fn rss_anon(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("RssAnon:"))
            .expect("RssAnon");
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// How far the server's anonymous memory rose above `baseline` at its highest over the
    /// next 3 s (sampled every 100 ms), printed.
    pub async fn rss_anon_growth(&self, baseline: u64) -> u64 {
        let mut peak = 0;
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(self.rss_anon());
        }
        let grew = peak.saturating_sub(baseline);
        eprintln!("RssAnon grew by {} MiB", grew >> 20);
        grew
    }

    /// Asserts that [`Server::rss_anon_growth`] over `baseline` stays under `limit` bytes.
    pub async fn assert_anon_growth_under(&self, baseline: u64, limit: u64) {
        let grew = self.rss_anon_growth(baseline).await;
        assert!(
            grew < limit,
            "anonymous memory grew by {} MiB (the bound: {} MiB)",
            grew >> 20,
            limit >> 20
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for `addr` (`http://host:port`), with large message limits.
pub async fn connect(addr: &str) -> BroadcastClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Channel::from_shared(addr.to_string())
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => {
                return BroadcastClient::new(ch)
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20)
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to {addr}: {e}"),
        }
    }
}

/// A publish request.
pub fn req(topic: &str, seq_no: u64, payload: &[u8]) -> PublishRequest {
    PublishRequest {
        seq_no,
        payload: payload.to_vec().into(),
        timestamp: 0,
        topic: topic.into(),
        idempotency_key: String::new(),
    }
}

/// Publishes one frame and returns its ack.
pub async fn publish(
    c: &mut BroadcastClient<Channel>,
    topic: &str,
    seq_no: u64,
    payload: &[u8],
) -> PublishAck {
    c.publish(req(topic, seq_no, payload))
        .await
        .expect("publish")
        .into_inner()
}

/// An open subscription: the snapshot point and epoch from its metadata, and the stream.
pub struct Sub {
    pub snapshot: u64,
    pub epoch: u64,
    pub stream: tonic::Streaming<Frame>,
}

/// Subscribes and reads the snapshot metadata.
pub async fn subscribe(
    c: &mut BroadcastClient<Channel>,
    r: SubscribeRequest,
) -> Result<Sub, tonic::Status> {
    let resp = c.subscribe(r).await?;
    let md = resp.metadata();
    let num = |k: &str| -> u64 {
        md.get(k)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
            .expect(k)
    };
    let snapshot = num("framecast-snapshot-offset");
    let epoch = num("framecast-epoch");
    Ok(Sub {
        snapshot,
        epoch,
        stream: resp.into_inner(),
    })
}

/// Reads exactly `n` frames from a stream, failing after `limit`.
pub async fn take(stream: &mut tonic::Streaming<Frame>, n: usize, limit: Duration) -> Vec<Frame> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + limit;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(f))) => out.push(f),
            Ok(Ok(None)) => panic!("stream ended after {} of {n} frames", out.len()),
            Ok(Err(s)) => panic!("stream failed after {} of {n} frames: {s}", out.len()),
            Err(_) => panic!("timed out after {} of {n} frames", out.len()),
        }
    }
    out
}

/// Asserts that nothing more arrives within `wait`.
pub async fn expect_quiet(stream: &mut tonic::Streaming<Frame>, wait: Duration) {
    if let Ok(r) = tokio::time::timeout(wait, stream.message()).await {
        panic!("expected no frame, got {r:?}");
    }
}

// ---- Helpers of the server scenario tests (server_*.rs). ----

/// A subscribe request from `start`, without a resume cursor.
pub fn sub_req(topic: &str, start: u64) -> SubscribeRequest {
    SubscribeRequest {
        replay_seq_no_start: start,
        topic: topic.into(),
        resume: None,
    }
}

/// The topic's figures from `ListTopics`, or `None` when it is not listed.
pub async fn topic_info(
    c: &mut BroadcastClient<Channel>,
    name: &str,
) -> Option<framecast::proto::TopicInfo> {
    list_topics(c).await.into_iter().find(|t| t.name == name)
}

/// Every topic from `ListTopics`.
pub async fn list_topics(c: &mut BroadcastClient<Channel>) -> Vec<framecast::proto::TopicInfo> {
    tokio::time::timeout(
        Duration::from_secs(10),
        c.list_topics(framecast::proto::ListTopicsRequest {}),
    )
    .await
    .expect("ListTopics timed out")
    .expect("ListTopics")
    .into_inner()
    .topics
}

/// The whole log of `topic`, read by a fresh subscription from seq_no 0 (its replay is
/// every frame below the snapshot point), sorted by offset.
pub async fn read_log(c: &mut BroadcastClient<Channel>, topic: &str) -> Vec<Frame> {
    let mut sub = subscribe(c, sub_req(topic, 0)).await.expect("subscribe");
    let mut frames = take(
        &mut sub.stream,
        sub.snapshot as usize,
        Duration::from_secs(30),
    )
    .await;
    frames.sort_by_key(|f| f.offset);
    frames
}

/// Reads a stream until it ends with an error, failing on a clean end or after `limit`;
/// the frames read before the error and the error.
pub async fn read_until_error(
    stream: &mut tonic::Streaming<Frame>,
    limit: Duration,
) -> (Vec<Frame>, tonic::Status) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(f))) => frames.push(f),
            Ok(Ok(None)) => panic!(
                "stream ended without a status after {} frames",
                frames.len()
            ),
            Ok(Err(s)) => return (frames, s),
            Err(_) => panic!("no error within {limit:?} ({} frames read)", frames.len()),
        }
    }
}

/// The status a subscription is refused with, whether at the call or as the first item of
/// its stream (both are valid gRPC); panics if a frame arrives or nothing does in time.
pub async fn subscribe_error(
    c: &mut BroadcastClient<Channel>,
    r: SubscribeRequest,
) -> tonic::Status {
    let call = tokio::time::timeout(Duration::from_secs(10), c.subscribe(r))
        .await
        .expect("subscribe call timed out");
    match call {
        Err(s) => s,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                Ok(Err(s)) => s,
                other => panic!("expected the subscription to be refused, got {other:?}"),
            }
        }
    }
}

/// Polls `TopicInfo.subscribers` of `topic` until it equals `want`, failing after `limit`.
pub async fn wait_subscribers(
    c: &mut BroadcastClient<Channel>,
    topic: &str,
    want: u32,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let got = topic_info(c, topic).await.map(|t| t.subscribers);
        if got == Some(want) {
            return;
        }
        if Instant::now() > deadline {
            panic!("topic {topic}: subscribers {got:?}, expected {want} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `frames` frames of `payload` to `topic`, seq_nos from `first_seq`, over one
/// PublishStream per `batch` frames, each batch wholly acknowledged before the next;
/// `after_batch` runs after each (to sample memory, say).
pub async fn publish_in_batches(
    c: &mut BroadcastClient<Channel>,
    topic: &str,
    first_seq: u64,
    frames: u64,
    payload: &[u8],
    batch: u64,
    mut after_batch: impl FnMut(),
) {
    use futures::StreamExt;
    for i in 0..frames / batch {
        let reqs: Vec<_> = (0..batch)
            .map(|j| req(topic, first_seq + i * batch + j, payload))
            .collect();
        let acks = c
            .publish_stream(futures::stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        let acks: Vec<_> = acks.collect().await;
        assert!(acks.iter().all(Result::is_ok), "{acks:?}");
        after_batch();
    }
}

/// Publishes `requests` over one `PublishStream`, pausing `pause` after every `every` frames
/// (so the stream is still going when a test kills or stops the server), until the stream
/// ends or the requests run out. Returns each acknowledged request with its ack, in order.
/// Panics if the stream hangs past `deadline`.
pub async fn paced_publish_stream(
    c: &mut BroadcastClient<Channel>,
    requests: impl Iterator<Item = PublishRequest> + Send + 'static,
    every: usize,
    pause: Duration,
    deadline: tokio::time::Instant,
    who: &str,
) -> Vec<(PublishRequest, PublishAck)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(64);
    let Ok(resp) = c
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    else {
        return Vec::new();
    };
    let mut acks = resp.into_inner();
    let feeder = tokio::spawn(async move {
        let mut sent = Vec::new();
        for (i, r) in requests.enumerate() {
            if tx.send(r.clone()).await.is_err() {
                break;
            }
            sent.push(r);
            if i % every == every - 1 {
                tokio::time::sleep(pause).await;
            }
        }
        sent
    });
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, acks.message()).await {
            Ok(Ok(Some(a))) => got.push(a),
            Ok(_) => break,
            Err(_) => panic!("{who}: the ack stream hung"),
        }
    }
    drop(acks);
    let sent = tokio::time::timeout_at(deadline, feeder)
        .await
        .expect("feeder hung")
        .expect("feeder");
    assert!(got.len() <= sent.len());
    sent.into_iter().zip(got).collect()
}

/// A free loopback port for a server that must listen on it again after a restart (see
/// `ports.rs`).
pub fn fixed_port() -> u16 {
    ports::fixed_port(0)
}

/// A loopback address nothing listens on (a port bound, then freed), `http://127.0.0.1:P`.
pub fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Record bytes of every run in `dir`: the file less its 64-byte header and its offset
/// map (4 bytes an offset, from the `BASE-END.run` name).
pub fn run_record_bytes(dir: &std::path::Path) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(range) = name.strip_suffix(".run") else {
            continue;
        };
        let (base, end) = range.split_once('-').unwrap();
        let count = end.parse::<u64>().unwrap() - base.parse::<u64>().unwrap();
        out.push(e.metadata().unwrap().len() - 64 - 4 * count);
    }
    out
}

/// Asserts that `log` holds exactly the `acked` frames, `(offset, frame)` in offset order:
/// the same offsets and payloads, nothing more. `what` names the moment in a failure.
pub fn assert_holds_acked(
    log: &framecast::wal::Log,
    acked: &[(u64, framecast::wal::NewFrame)],
    what: &str,
) {
    let mut out = Vec::new();
    log.read_range(0, u64::MAX, 0, usize::MAX, &mut out)
        .expect("read");
    assert_eq!(out.len(), acked.len(), "{what}: exactly the acked frames");
    for (f, (offset, sent)) in out.iter().zip(acked) {
        assert_eq!(f.offset, *offset, "{what}");
        assert!(f.payload == sent.payload, "{what}: offset {offset} differs");
    }
}

/// A sync observer that holds every sync `hold` long, and the most syncs it saw in flight
/// at once (of every log it is given to): more than one means syncs ran side by side.
pub fn held_syncs(hold: Duration) -> (framecast::wal::SyncObserver, Arc<AtomicUsize>) {
    let in_flight = AtomicUsize::new(0);
    let most = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&most);
    let observer = framecast::wal::SyncObserver(Arc::new(move |_| {
        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(hold);
        in_flight.fetch_sub(1, Ordering::SeqCst);
    }));
    (observer, most)
}

/// Threads of this process running the log's committers (the kernel cuts their name,
/// `committers::THREAD_NAME`, to 15 bytes).
pub fn committer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| framecast::wal::committers::THREAD_NAME.starts_with(name.trim()))
        .count()
}

/// A frame of 20 KiB: three fill a 64 KiB segment, so every third append needs a new one.
pub fn third_of_a_segment(i: u64) -> framecast::wal::NewFrame {
    let mut payload = format!("frame-{i}|").into_bytes();
    payload.resize(20 * 1024, (i % 251) as u8);
    framecast::wal::NewFrame {
        seq_no: i,
        timestamp: i as i64,
        key: bytes::Bytes::new(),
        payload: bytes::Bytes::from(payload),
    }
}

/// Appends the next [`third_of_a_segment`] frame to `log`, checks that it got the next
/// offset (none skipped) and adds it to `acked`.
pub fn append_next(
    log: &framecast::wal::Log,
    acked: &mut Vec<(u64, framecast::wal::NewFrame)>,
) -> framecast::wal::Result<()> {
    let f = third_of_a_segment(acked.len() as u64);
    let a = log.append(vec![f.clone()])?;
    assert_eq!(a[0].offset, acked.len() as u64, "no offset skipped");
    acked.push((a[0].offset, f));
    Ok(())
}
