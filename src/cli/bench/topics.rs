//! `framecast bench topics`: many small topics, as chat and game rooms make them.
//!
//! Starts its own `framecast serve` on a data dir, publishes `--frames` frames to each of
//! `--topics` topics (each created by its first publish), waits until the topics are idle,
//! then reports what the server holds for them: disk allocated (`st_blocks`, as `du`
//! counts it) against bytes stored, resident memory, open file descriptors and threads.
//! Then it restarts the server on the same data dir and times the start until it serves
//! again (every topic recovered), and checks a sample of topics frame by frame. The run
//! fails (exit code 1) when a publish failed, something did not come back, or the data
//! dir takes more than its bound.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use super::args::Common;
use super::conn::{connect, list_topics, Grpc, Windows, Wire};
use super::error::{Error, Result};
use super::report::{command_line, load_average, utc_now, Machine};
use super::server::raise_fd_limit;
use framecast::proto::{PublishRequest, SubscribeRequest};
use framecast::server::config::parse_duration;

/// `bench topics`.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicsOpts {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Topics to create (named `room-00000`, `room-00001`, …).
    #[arg(long, default_value_t = 10_000)]
    pub topics: usize,
    /// Frames published to each topic.
    #[arg(long, default_value_t = 10)]
    pub frames: u64,
    /// Publishes in flight at once (each to a different topic).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// How long to wait after publishing before the idle figures are taken: longer than
    /// the committer's idle stop (5 s) and the blocking pool's (10 s).
    #[arg(long, default_value = "12s", value_parser = parse_duration)]
    pub idle_wait: Duration,
    /// Topics read back after the restart, spread over all of them.
    #[arg(long, default_value_t = 100)]
    pub check: usize,
    /// Data dir to use (and keep); default a temporary one, removed after the run.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// What the server process holds at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessFigures {
    /// Resident memory, bytes (`VmRSS`).
    pub rss: u64,
    /// Resident anonymous memory, bytes (`RssAnon`): heap and stacks, not the page cache.
    pub rss_anon: u64,
    /// Open file descriptors (`/proc/<pid>/fd`).
    pub fds: u64,
    /// Threads (`Threads` in `/proc/<pid>/status`).
    pub threads: u64,
    /// Memory mappings (lines of `/proc/<pid>/maps`).
    pub mappings: u64,
}

/// Space a data dir takes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DiskFigures {
    /// Allocated bytes of every file and directory (`st_blocks * 512`, what `du` sums).
    pub allocated: u64,
    /// Allocated bytes of segment files alone.
    pub segments_allocated: u64,
    /// Apparent bytes (file lengths) of segment files.
    pub segments_length: u64,
    /// Segment files.
    pub segment_files: u64,
}

/// The report of `bench topics`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicsReport {
    /// The command line, with `--token`'s value masked.
    pub command: String,
    /// When it ran (UTC).
    pub date: String,
    /// Where it ran.
    pub machine: Machine,
    /// Topics created.
    pub topics: usize,
    /// Frames per topic.
    pub frames_per_topic: u64,
    /// Payload bytes per frame.
    pub frame_bytes: usize,
    /// Seconds publishing took (creations included).
    pub publish_secs: f64,
    /// Publishes refused or failed.
    pub errors: u64,
    /// Bytes of records the server reports stored (`ListTopics`), headers included.
    pub stored_bytes: u64,
    /// Frames the server reports holding.
    pub stored_frames: u64,
    /// The data dir after publishing.
    pub disk: DiskFigures,
    /// The bound: 2 × stored + 64 KiB per topic.
    pub disk_limit: u64,
    /// True when the data dir's topics take no more than `disk_limit` (a condition of `ok`).
    pub disk_within_limit: bool,
    /// The server before any topic existed.
    pub before: ProcessFigures,
    /// Right after the last publish was acknowledged.
    pub busy: ProcessFigures,
    /// After `--idle-wait` with nothing going on.
    pub idle: ProcessFigures,
    /// Seconds from stopping the server (SIGTERM) to its exit.
    pub stop_secs: f64,
    /// Seconds from starting the server again until it served (every topic recovered).
    pub restart_secs: f64,
    /// The restarted server, serving, every topic recovered and idle.
    pub restarted: ProcessFigures,
    /// Topics the restarted server lists.
    pub restarted_topics: usize,
    /// Topics read back frame by frame after the restart, and how many were wrong.
    pub checked: usize,
    /// Checked topics whose frames were not exactly the published ones.
    pub check_failures: usize,
    /// True when nothing failed, everything came back and the disk stayed within its bound.
    pub ok: bool,
}

/// Runs `framecast bench topics`.
pub fn main(opts: &TopicsOpts) -> ExitCode {
    match run(opts) {
        Ok(report) => {
            if opts.common.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report)
                        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                );
            } else {
                print!("{}", table(&report));
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("framecast bench topics: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(opts: &TopicsOpts) -> Result<TopicsReport> {
    raise_fd_limit();
    let temp;
    let dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("framecast-bench-topics-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut machine = Machine::probe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut server = Served::start(&dir, &opts.common)?;
    std::thread::sleep(Duration::from_millis(500));
    let before = figures(server.pid());
    let names: Vec<String> = (0..opts.topics).map(|i| format!("room-{i:05}")).collect();
    let started = Instant::now();
    let errors = runtime.block_on(publish_all(&server.addr, &names, opts))?;
    let publish_secs = started.elapsed().as_secs_f64();
    let busy = figures(server.pid());
    if !opts.common.quiet {
        eprintln!(
            "published {} frames to {} topics in {publish_secs:.1} s; waiting {:?} for idle",
            opts.frames * opts.topics as u64,
            opts.topics,
            opts.idle_wait
        );
    }
    std::thread::sleep(opts.idle_wait);
    let idle = figures(server.pid());
    let (stored_frames, stored_bytes, _) = runtime.block_on(stored(&server.addr))?;
    let disk = disk(&dir.join("topics"));

    let stopping = Instant::now();
    server.stop();
    let stop_secs = stopping.elapsed().as_secs_f64();
    let starting = Instant::now();
    let server = Served::start(&dir, &opts.common)?;
    let restart_secs = starting.elapsed().as_secs_f64();
    let (_, _, restarted_topics) = runtime.block_on(stored(&server.addr))?;
    let sample: Vec<String> = names
        .iter()
        .step_by((names.len() / opts.check.max(1)).max(1))
        .take(opts.check)
        .cloned()
        .collect();
    let check_failures = runtime.block_on(check(&server.addr, &sample, opts))?;
    // Reading the sample started committers nowhere (reads need none); a moment for the
    // tasks of the checks to end.
    std::thread::sleep(Duration::from_millis(500));
    let restarted = figures(server.pid());
    drop(server);

    let frame_bytes = opts.common.size;
    let disk_limit = 2 * stored_bytes + 64 * 1024 * opts.topics as u64;
    let disk_within_limit = disk.allocated <= disk_limit;
    let ok = errors == 0
        && stored_frames == opts.frames * opts.topics as u64
        && disk_within_limit
        && restarted_topics == opts.topics
        && check_failures == 0;
    machine.load_after = load_average();
    Ok(TopicsReport {
        command: command_line(),
        date: utc_now(),
        machine,
        topics: opts.topics,
        frames_per_topic: opts.frames,
        frame_bytes,
        publish_secs,
        errors,
        stored_bytes,
        stored_frames,
        disk,
        disk_limit,
        disk_within_limit,
        before,
        busy,
        idle,
        stop_secs,
        restart_secs,
        restarted,
        restarted_topics,
        checked: sample.len(),
        check_failures,
        ok,
    })
}

/// The payload of frame `i` of `topic`: recognisable, `size` bytes.
fn payload(topic: &str, i: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{topic}/{i}|").into_bytes();
    p.resize(size.max(p.len()), b'.');
    p
}

/// Publishes every frame (each topic's in order, `--concurrency` topics at once); returns
/// the count of failed publishes.
async fn publish_all(addr: &str, names: &[String], opts: &TopicsOpts) -> Result<u64> {
    let conns = connect(
        addr,
        opts.concurrency.clamp(1, 8),
        Windows::Default,
        &Wire::default(),
    )
    .await?;
    let errors = Arc::new(AtomicU64::new(0));
    let (frames, size) = (opts.frames, opts.common.size);
    let jobs = names.iter().enumerate().map(|(i, name)| {
        let mut c = conns[i % conns.len()].clone();
        let errors = Arc::clone(&errors);
        let name = name.clone();
        async move {
            for seq in 0..frames {
                let r = c
                    .publish(PublishRequest {
                        seq_no: seq,
                        payload: payload(&name, seq, size).into(),
                        timestamp: 0,
                        topic: name.clone(),
                        idempotency_key: String::new(),
                    })
                    .await;
                if let Err(e) = r {
                    if errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("publish to {name} failed: {e}");
                    }
                }
            }
        }
    });
    futures::stream::iter(jobs)
        .buffer_unordered(opts.concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    Ok(errors.load(Ordering::Relaxed))
}

/// Frames and bytes the server reports over all topics, and the topic count.
async fn stored(addr: &str) -> Result<(u64, u64, usize)> {
    let mut c = connect(addr, 1, Windows::Default, &Wire::default())
        .await?
        .remove(0);
    let topics = list_topics(&mut c).await?;
    let frames = topics.iter().map(|t| t.frames).sum();
    let bytes = topics.iter().map(|t| t.bytes).sum();
    Ok((frames, bytes, topics.len()))
}

/// Reads each topic of `sample` from the start; returns how many did not hold exactly the
/// published frames.
async fn check(addr: &str, sample: &[String], opts: &TopicsOpts) -> Result<usize> {
    let mut c: Grpc = connect(addr, 1, Windows::Default, &Wire::default())
        .await?
        .remove(0);
    let mut failures = 0;
    for name in sample {
        let good = async {
            let mut stream = c
                .subscribe(SubscribeRequest {
                    replay_seq_no_start: 0,
                    topic: name.clone(),
                    resume: None,
                })
                .await
                .ok()?
                .into_inner();
            for i in 0..opts.frames {
                let f = stream.message().await.ok()??;
                if f.offset != i || f.payload[..] != payload(name, i, opts.common.size)[..] {
                    return None;
                }
            }
            Some(())
        };
        match tokio::time::timeout(Duration::from_secs(10), good).await {
            Ok(Some(())) => {}
            _ => {
                failures += 1;
                eprintln!("topic {name}: frames differ after the restart");
            }
        }
    }
    Ok(failures)
}

/// The figures of process `pid` now (zeros for what cannot be read).
fn figures(pid: u32) -> ProcessFigures {
    let proc = Path::new("/proc").join(pid.to_string());
    let status = std::fs::read_to_string(proc.join("status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcessFigures {
        rss: field("VmRSS:") * 1024,
        rss_anon: field("RssAnon:") * 1024,
        fds: std::fs::read_dir(proc.join("fd")).map_or(0, |d| d.count() as u64),
        threads: field("Threads:"),
        mappings: std::fs::read_to_string(proc.join("maps"))
            .map_or(0, |m| m.lines().count() as u64),
    }
}

/// What `dir` takes on disk, walked recursively.
fn disk(dir: &Path) -> DiskFigures {
    let mut out = DiskFigures::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(md) = std::fs::symlink_metadata(&d) {
            out.allocated += md.blocks() * 512;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                stack.push(entry.path());
                continue;
            }
            out.allocated += md.blocks() * 512;
            if entry.path().extension().is_some_and(|e| e == "seg") {
                out.segments_allocated += md.blocks() * 512;
                out.segments_length += md.len();
                out.segment_files += 1;
            }
        }
    }
    out
}

/// The human-readable report.
fn table(r: &TopicsReport) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let per_topic = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / r.topics.max(1) as f64;
    let row = |what: &str, p: &ProcessFigures| {
        format!(
            "  {what:<10} rss {:>8.1} MB  rss_anon {:>8.1} MB  fds {:>6}  threads {:>5}  mappings {:>6}\n",
            mb(p.rss),
            mb(p.rss_anon),
            p.fds,
            p.threads,
            p.mappings
        )
    };
    let mut s = String::new();
    s += &format!("framecast bench topics  {}\n", r.date);
    s += &format!("  command    {}\n", r.command);
    s += &format!(
        "  machine    {} cpus, load {:?} before, {:?} after\n",
        r.machine.cores, r.machine.load_before, r.machine.load_after
    );
    s += &format!(
        "  topics     {} × {} frames of {} B, published in {:.1} s, {} errors\n",
        r.topics, r.frames_per_topic, r.frame_bytes, r.publish_secs, r.errors
    );
    s += &format!(
        "  stored     {} frames, {} bytes ({:.0} B per topic)\n",
        r.stored_frames,
        r.stored_bytes,
        r.stored_bytes as f64 / r.topics.max(1) as f64
    );
    s += &format!(
        "  disk       {:.1} MB allocated ({:.1} KiB per topic; limit 2×stored + 64 KiB/topic = {:.1} MB: {}); segments {} files, {:.1} MB allocated, {:.1} MB long\n",
        mb(r.disk.allocated),
        r.disk.allocated as f64 / 1024.0 / r.topics.max(1) as f64,
        mb(r.disk_limit),
        if r.disk_within_limit { "within" } else { "OVER: the run fails" },
        r.disk.segment_files,
        mb(r.disk.segments_allocated),
        mb(r.disk.segments_length)
    );
    s += &row("before", &r.before);
    s += &row("busy", &r.busy);
    s += &row("idle", &r.idle);
    s += &row("restarted", &r.restarted);
    s += &format!(
        "  per topic  idle rss_anon {:.0} B, restarted rss_anon {:.0} B (over the empty server)\n",
        per_topic(r.idle.rss_anon, r.before.rss_anon),
        per_topic(r.restarted.rss_anon, r.before.rss_anon)
    );
    s += &format!(
        "  restart    stop {:.2} s, start until serving {:.2} s, {} topics listed, {} checked, {} wrong\n",
        r.stop_secs, r.restart_secs, r.restarted_topics, r.checked, r.check_failures
    );
    s += &format!("  result     {}\n", if r.ok { "ok" } else { "FAILED" });
    s
}

/// A `framecast serve` on a given data dir, stopped (SIGTERM, then kill) when dropped.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    /// Starts the server and waits for its "listening" line, which it logs once every
    /// topic is recovered.
    fn start(dir: &Path, common: &Common) -> Result<Served> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir)
        .env("RUST_LOG", "warn,framecast::server::run=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(f) = &common.fsync {
            cmd.arg("--fsync").arg(f);
        }
        cmd.args(&common.serve_arg);
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
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("addr=").filter(|_| line.contains("listening")) {
                    let addr = line[at + 5..].split_whitespace().next().unwrap_or("");
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                } else if line.contains("ERROR") || line.contains("WARN") {
                    eprintln!("[server] {line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => Ok(Served {
                child,
                addr: format!("http://{addr}"),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(Error::Spawn(
                    "server did not listen within 120 s (or exited)".into(),
                ))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then kill after 30 s.
    fn stop(&mut self) {
        super::server::terminate(&mut self.child, Duration::from_secs(30));
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}
