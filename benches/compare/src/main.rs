//! `framecast-compare`: the workloads of `framecast bench`, against Redis Streams or NATS
//! JetStream, measured the same way and reported in the same JSON shape. Driven by
//! `benches/compare/run.sh`, which starts the peers; see BENCHMARKS.md.

mod common;
mod peer;
mod resp;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use common::*;
use peer::{AckFut, Peer};
use tokio::sync::{mpsc, watch};

#[derive(Parser)]
struct Cli {
    /// redis or nats.
    #[arg(long)]
    peer: String,
    /// redis://127.0.0.1:PORT or nats://127.0.0.1:PORT.
    #[arg(long)]
    url: String,
    /// The durability the peer was started with, for the report.
    #[arg(long, default_value = "unknown")]
    fsync: String,
    /// The peer's pid, to sample its CPU time and peak memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Payload bytes per frame.
    #[arg(long, default_value_t = 100)]
    size: usize,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Clone)]
enum Workload {
    /// Publishers only.
    Publish {
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Pipelined (up to --window unacknowledged per publisher) instead of one at a time.
        #[arg(long)]
        stream: bool,
        #[arg(long, default_value_t = 1024)]
        window: usize,
        #[arg(long)]
        count: Option<u64>,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// P publishers at a rate, S subscribers reading everything.
    Fanout {
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// NATS: connections the consumers share. Redis: ignored (a blocking XREAD needs
        /// its own connection, so there is one per subscriber).
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Prefill N frames, then one (or S) subscriber reads from the start.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
    },
    /// One pipelined publisher at a fixed rate, S subscribers: publish→delivery latency.
    E2e {
        #[arg(long, default_value_t = 20_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

struct Run {
    peer: Peer,
    size: usize,
    clock: Clock,
    errors: AtomicU64,
    samples: std::sync::Mutex<Vec<String>>,
}

impl Run {
    fn error(&self, m: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.samples.lock() {
            if s.len() < 5 {
                s.push(m);
            }
        }
    }
}

struct PubPlan {
    publishers: usize,
    stream: bool,
    window: usize,
    rate: f64,
    count: Option<u64>,
    seconds: f64,
}

struct PubOut {
    acked: Vec<u64>,
    secs: f64,
    origin: u64,
    latency: hdrhistogram::Histogram<u64>,
}

async fn publish(run: &Arc<Run>, plan: &PubPlan) -> PubOut {
    let rec = Recorder::new(plan.publishers.min(32));
    let origin = run.clock.now_ns() + 1_000_000;
    let end = origin + (plan.seconds * 1e9) as u64;
    let mut tasks = Vec::new();
    for i in 0..plan.publishers {
        let run = Arc::clone(run);
        let pacer = Pacer::new(plan.rate, plan.publishers, i, origin);
        let count = plan.count.map(|c| {
            c / plan.publishers as u64 + u64::from((i as u64) < c % plan.publishers as u64)
        });
        let window = if plan.stream { plan.window.max(1) } else { 1 };
        let mut sink = rec.sink(i);
        tasks.push(tokio::spawn(async move {
            let mut conn = match run.peer.publisher().await {
                Ok(c) => c,
                Err(m) => {
                    run.error(format!("publisher {i}: {m}"));
                    return (0u64, origin);
                }
            };
            let mut inflight: VecDeque<(u64, AckFut)> = VecDeque::new();
            let (mut acked, mut last) = (0u64, origin);
            let mut k = 0u64;
            let mut failed = false;
            loop {
                if count.is_some_and(|c| k >= c) {
                    break;
                }
                let due = pacer.due_ns(k);
                match due {
                    Some(d) if count.is_none() && d >= end => break,
                    None if count.is_none() && run.clock.now_ns() >= end => break,
                    _ => {}
                }
                let want = due.unwrap_or(origin);
                // Wait for the due time, collecting acks meanwhile; and for a window slot.
                while inflight.len() >= window
                    || (want > run.clock.now_ns() && !inflight.is_empty())
                {
                    let full = inflight.len() >= window;
                    let Some((intended, fut)) = inflight.front_mut() else {
                        break;
                    };
                    let intended = *intended;
                    let r = if full {
                        Some(fut.await)
                    } else {
                        tokio::select! {
                            r = fut => Some(r),
                            _ = tokio::time::sleep_until(run.clock.at(want)) => None,
                        }
                    };
                    let Some(r) = r else { break };
                    inflight.pop_front();
                    match r {
                        Ok(()) => {
                            let now = run.clock.now_ns();
                            sink.record_ns(now.saturating_sub(intended));
                            acked += 1;
                            last = now;
                        }
                        Err(m) => {
                            run.error(format!("publisher {i}: {m}"));
                            failed = true;
                            break;
                        }
                    }
                }
                // Acks that are already in: take them all, so the next batch is large.
                while let Some((intended, fut)) = inflight.front_mut() {
                    let intended = *intended;
                    let std::task::Poll::Ready(r) = futures::poll!(fut.as_mut()) else {
                        break;
                    };
                    inflight.pop_front();
                    match r {
                        Ok(()) => {
                            let now = run.clock.now_ns();
                            sink.record_ns(now.saturating_sub(intended));
                            acked += 1;
                            last = now;
                        }
                        Err(m) => {
                            run.error(format!("publisher {i}: {m}"));
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    break;
                }
                if want > run.clock.now_ns() {
                    tokio::time::sleep_until(run.clock.at(want)).await;
                }
                // Everything due by now that the window has room for goes out together.
                let now = run.clock.now_ns();
                let mut batch = Vec::new();
                let mut intended = Vec::new();
                while inflight.len() + batch.len() < window {
                    let kk = k + batch.len() as u64;
                    if count.is_some_and(|c| kk >= c) {
                        break;
                    }
                    let t = match pacer.due_ns(kk) {
                        Some(d) if d > now || (count.is_none() && d >= end) => break,
                        Some(d) => d,
                        None => now,
                    };
                    batch.push(encode(run.size, i as u32, kk, t));
                    intended.push(t);
                }
                if batch.is_empty() {
                    continue;
                }
                k += batch.len() as u64;
                match conn.send_many(batch).await {
                    Ok(futs) => inflight.extend(intended.into_iter().zip(futs)),
                    Err(m) => {
                        run.error(format!("publisher {i}: {m}"));
                        break;
                    }
                }
            }
            while let Some((intended, fut)) = inflight.pop_front() {
                if failed {
                    break;
                }
                match fut.await {
                    Ok(()) => {
                        let now = run.clock.now_ns();
                        sink.record_ns(now.saturating_sub(intended));
                        acked += 1;
                        last = now;
                    }
                    Err(m) => {
                        run.error(format!("publisher {i}: {m}"));
                        failed = true;
                    }
                }
            }
            (acked, last)
        }));
    }
    let mut acked = Vec::new();
    let mut last = origin;
    for t in tasks {
        let (a, l) = t.await.unwrap_or((0, origin));
        acked.push(a);
        last = last.max(l);
    }
    PubOut {
        acked,
        secs: (last - origin) as f64 / 1e9,
        origin,
        latency: rec.merged(),
    }
}

struct SubOut {
    delivered: u64,
    secs: f64,
    faults: Faults,
    incomplete: usize,
    latency: hdrhistogram::Histogram<u64>,
}

/// Opens `subscribers` readers (NATS over `connections` connections, Redis one each), waits
/// until all are open, runs `work`, then lets them drain until they hold everything.
async fn with_subscribers<F, Fut>(
    run: &Arc<Run>,
    publishers: usize,
    subscribers: usize,
    connections: usize,
    drain: Duration,
    record_latency: bool,
    work: F,
) -> (PubOut, SubOut)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = PubOut>,
{
    let conns_needed = match run.peer {
        Peer::Redis { .. } => subscribers,
        Peer::Nats { .. } => connections.clamp(1, subscribers.max(1)),
    };
    let mut conns = Vec::new();
    for _ in 0..conns_needed {
        match run.peer.sub_conn().await {
            Ok(c) => conns.push(Arc::new(c)),
            Err(m) => run.error(format!("subscriber connection: {m}")),
        }
    }
    let rec = Recorder::new(32);
    let (phase_tx, phase_rx) = watch::channel::<(Option<Arc<Vec<u64>>>, bool)>((None, false));
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(subscribers.max(1));
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let Some(conn) = conns.get(i % conns.len().max(1)).cloned() else {
            break;
        };
        let run = Arc::clone(run);
        let ready = ready_tx.clone();
        let phase = phase_rx.clone();
        let mut sink = rec.sink(i);
        tasks.push(tokio::spawn(async move {
            let mut checker = Checker::new(publishers, run.size);
            let mut reader = match run.peer.reader(&conn).await {
                Ok(r) => r,
                Err(m) => {
                    run.error(format!("subscriber {i}: {m}"));
                    let _ = ready.send(false).await;
                    return (checker, None);
                }
            };
            let _ = ready.send(true).await;
            drop(ready);
            let mut batch = Vec::with_capacity(1024);
            let mut done = None;
            loop {
                let (expected, stop) = phase.borrow().clone();
                if let Some(e) = &expected {
                    if checker.complete(e) {
                        done = Some(run.clock.now_ns());
                        break;
                    }
                }
                if stop {
                    break;
                }
                batch.clear();
                if let Err(m) = reader
                    .next_batch(Duration::from_millis(100), 1000, &mut batch)
                    .await
                {
                    run.error(format!("subscriber {i}: {m}"));
                    break;
                }
                let now = run.clock.now_ns();
                for (pos, payload) in &batch {
                    if let Some(h) = checker.frame(*pos, payload) {
                        if record_latency {
                            sink.record_ns(now.saturating_sub(h.intended_ns));
                        }
                    }
                }
            }
            (checker, done)
        }));
    }
    drop(ready_tx);
    while ready_rx.recv().await.is_some() {}
    let out = work().await;
    let expected = Arc::new(out.acked.clone());
    let _ = phase_tx.send((Some(Arc::clone(&expected)), false));
    let stopper = {
        let expected = Arc::clone(&expected);
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            let _ = phase_tx.send((Some(expected), true));
        })
    };
    let (mut delivered, mut faults, mut incomplete, mut last) =
        (0, Faults::default(), 0, out.origin);
    for t in tasks {
        let Ok((mut c, done)) = t.await else {
            incomplete += 1;
            continue;
        };
        delivered += c.received;
        if done.is_none() {
            incomplete += 1;
        }
        faults.add(&c.finish(&expected));
        last = last.max(done.unwrap_or_else(|| run.clock.now_ns()));
    }
    stopper.abort();
    let secs = (last - out.origin) as f64 / 1e9;
    (
        out,
        SubOut {
            delivered,
            secs,
            faults,
            incomplete,
            latency: rec.merged(),
        },
    )
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(2);
        }
    };
    let tag = format!(
        "{:08x}",
        std::process::id()
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()))
    );
    let peer = match cli.peer.as_str() {
        "redis" => match redis::Client::open(cli.url.as_str()) {
            Ok(client) => Peer::Redis {
                client,
                key: format!("bench-{tag}"),
            },
            Err(e) => {
                eprintln!("redis url: {e}");
                std::process::exit(2);
            }
        },
        "nats" => Peer::Nats {
            url: cli.url.clone(),
            stream: format!("BENCH_{tag}"),
            subject: format!("bench.{tag}"),
        },
        p => {
            eprintln!("unknown peer '{p}' (redis or nats)");
            std::process::exit(2);
        }
    };
    let load_before = load_average();
    let cpu_before = cli.server_pid.and_then(cpu_seconds);
    let own_before = cpu_seconds(std::process::id()).unwrap_or(0.0);
    let run = Arc::new(Run {
        peer,
        size: cli.size.max(HEADER_LEN),
        clock: Clock::new(),
        errors: AtomicU64::new(0),
        samples: std::sync::Mutex::new(Vec::new()),
    });
    let mut report = Report {
        scenario: String::new(),
        peer: run.peer.name().into(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: utc_now(),
        load_before,
        load_after: load_before,
        fsync: cli.fsync.clone(),
        frame_bytes: run.size,
        publishers: 1,
        publish_mode: "stream".into(),
        target_rate: 0.0,
        subscribers: 0,
        connections: 0,
        published: None,
        delivered: None,
        latency: Vec::new(),
        errors: 0,
        error_samples: Vec::new(),
        faults: Faults::default(),
        incomplete_subscribers: 0,
        resources: Resources::default(),
        ok: false,
    };
    let size = run.size;
    rt.block_on(async {
        if let Err(m) = run.peer.setup().await {
            run.error(format!("setup: {m}"));
            return;
        }
        match cli.workload.clone() {
            Workload::Publish {
                publishers,
                stream,
                window,
                count,
                seconds,
            } => {
                report.scenario = "publish".into();
                report.publishers = publishers;
                report.publish_mode = if stream { "stream" } else { "unary" }.into();
                let out = publish(
                    &run,
                    &PubPlan {
                        publishers,
                        stream,
                        window,
                        rate: 0.0,
                        count,
                        seconds,
                    },
                )
                .await;
                report.published = Some(Throughput::new(out.acked.iter().sum(), out.secs, size));
                report.latency.extend(LatencyRow::of("ack", &out.latency));
            }
            Workload::Fanout {
                publishers,
                subscribers,
                connections,
                rate,
                seconds,
            } => {
                report.scenario = "fanout".into();
                report.publishers = publishers;
                report.subscribers = subscribers;
                report.target_rate = rate;
                report.connections = if run.peer.name() == "redis" {
                    subscribers
                } else {
                    connections.min(subscribers)
                };
                let plan = PubPlan {
                    publishers,
                    stream: true,
                    window: 1024,
                    rate,
                    count: None,
                    seconds,
                };
                let (p, s) = with_subscribers(
                    &run,
                    publishers,
                    subscribers,
                    connections,
                    Duration::from_secs(60),
                    true,
                    || publish(&run, &plan),
                )
                .await;
                fill(&mut report, size, &p, &s);
            }
            Workload::E2e {
                rate,
                subscribers,
                seconds,
            } => {
                report.scenario = "e2e".into();
                report.subscribers = subscribers;
                report.target_rate = rate;
                report.connections = subscribers;
                let plan = PubPlan {
                    publishers: 1,
                    stream: true,
                    window: 1024,
                    rate,
                    count: None,
                    seconds,
                };
                let (p, s) = with_subscribers(
                    &run,
                    1,
                    subscribers,
                    subscribers,
                    Duration::from_secs(60),
                    true,
                    || publish(&run, &plan),
                )
                .await;
                fill(&mut report, size, &p, &s);
            }
            Workload::Replay {
                frames,
                subscribers,
            } => {
                report.scenario = "replay".into();
                report.subscribers = subscribers;
                report.connections = subscribers;
                let plan = PubPlan {
                    publishers: 1,
                    stream: true,
                    window: 1024,
                    rate: 0.0,
                    count: Some(frames),
                    seconds: 3600.0,
                };
                let fill_out = publish(&run, &plan).await;
                report.published = Some(Throughput::new(
                    fill_out.acked.iter().sum(),
                    fill_out.secs,
                    size,
                ));
                let acked = fill_out.acked.clone();
                let (_, s) = with_subscribers(
                    &run,
                    1,
                    subscribers,
                    subscribers,
                    Duration::from_secs(120),
                    false,
                    || async {
                        PubOut {
                            acked,
                            secs: 0.0,
                            origin: run.clock.now_ns(),
                            latency: fill_out.latency,
                        }
                    },
                )
                .await;
                report.delivered = Some(Throughput::new(s.delivered, s.secs, size));
                report.faults = s.faults;
                report.incomplete_subscribers = s.incomplete;
            }
        }
    });
    report.errors = run.errors.load(Ordering::Relaxed);
    report.error_samples = run.samples.lock().map(|s| s.clone()).unwrap_or_default();
    report.load_after = load_average();
    report.resources = Resources {
        server_cpu_s: cli
            .server_pid
            .and_then(cpu_seconds)
            .zip(cpu_before)
            .map(|(a, b)| a - b),
        server_peak_rss_mb: cli.server_pid.and_then(peak_rss_mb),
        client_cpu_s: cpu_seconds(std::process::id()).unwrap_or(0.0) - own_before,
    };
    report.ok = report.errors == 0
        && report.faults == Faults::default()
        && report.incomplete_subscribers == 0
        && report.published.is_some_and(|p| p.frames > 0);
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    drop(rt);
    std::process::exit(if report.ok { 0 } else { 1 });
}

fn fill(report: &mut Report, size: usize, p: &PubOut, s: &SubOut) {
    report.published = Some(Throughput::new(p.acked.iter().sum(), p.secs, size));
    report.delivered = Some(Throughput::new(s.delivered, s.secs, size));
    report.latency.extend(LatencyRow::of("ack", &p.latency));
    report
        .latency
        .extend(LatencyRow::of("delivery", &s.latency));
    report.faults = s.faults;
    report.incomplete_subscribers = s.incomplete;
}
