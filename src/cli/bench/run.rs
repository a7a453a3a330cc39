//! `framecast bench` from flags to exit code: runtime, fd limit, `--spawn`, the scenario,
//! CPU and memory sampling, the report. Exits 0 when the run was clean, 1 when anything
//! was lost, duplicated, reordered or failed, 2 when it could not run.

use std::process::ExitCode;

use super::args::{BenchArgs, Common, Length, Scenario, Transport};
use super::conn::Wire;
use super::error::{Error, Result};
use super::payload::HEADER_LEN;
use super::pubsub::{self, Outcome, Plan};
use super::replay::{self, ReplayPlan};
use super::report::{
    command_line, load_average, utc_now, LatencyRow, Machine, Report, Resources, Throughput,
    WireReport,
};
use super::server::{cpu_seconds, memory, own_cpu_seconds, raise_fd_limit, Spawned};

/// Runs `framecast bench`.
pub fn main(args: BenchArgs) -> ExitCode {
    if let Scenario::Topics(o) = &args.scenario {
        // Runs its own server twice (a restart is measured), so it has its own driver.
        return super::topics::main(o);
    }
    match run(args) {
        Ok(report) => {
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("framecast bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs a scenario and prints its report.
fn run(args: BenchArgs) -> Result<Report> {
    let scenario = args.scenario;
    let common = scenario.common().clone();
    if common.size < HEADER_LEN {
        return Err(Error::Args(format!(
            "--size must be at least {HEADER_LEN} (the frame header)"
        )));
    }
    let fd_limit = raise_fd_limit();
    if let Scenario::Fanout(o) = &scenario {
        // gRPC subscribers share --connections; SSE and WebSocket ones have one each. The
        // limit is per process: the bench holds one descriptor per connection, and so does
        // a spawned server, which inherits this limit (and needs a few more for its log,
        // hence the margin).
        let connections = match o.transport {
            Transport::Grpc => o.connections,
            Transport::Sse | Transport::Ws => o.subscribers,
        } as u64
            + o.publishers.min(64) as u64;
        let needed = connections + 64;
        if fd_limit < needed {
            return Err(Error::Args(format!(
                "{connections} connections need about {needed} open files; the limit is \
                 {fd_limit} (ulimit -n)"
            )));
        }
    }
    let mut spawned = if common.spawn {
        Some(Spawned::start(common.fsync.as_deref(), &common.serve_arg)?)
    } else {
        None
    };
    // Publishers and replay use the first address of a list; fan-out's subscribers spread
    // over all of them (see --addr).
    let listed: Vec<String> = common
        .addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let addr = spawned.as_ref().map_or_else(
        || listed.first().cloned().unwrap_or_default(),
        |s| s.addr.clone(),
    );
    let sub_addrs = match &spawned {
        Some(_) => vec![addr.clone()],
        None => listed,
    };
    let http_addr = match &scenario {
        Scenario::Fanout(o) => spawned
            .as_ref()
            .map_or_else(|| o.http_addr.clone(), |s| s.http_addr.clone()),
        _ => String::new(),
    };
    let server_pids = match &spawned {
        Some(s) => vec![s.pid()],
        None => common.server_pid.clone(),
    };
    // A spawned server names its policy, however it was set (--fsync, --serve-arg, its
    // environment or config file); an external one does not say.
    let fsync = match (&spawned, &common.fsync) {
        (Some(s), _) => s
            .fsync
            .clone()
            .unwrap_or_else(|| "unknown (the spawned server did not log it)".into()),
        (None, Some(f)) => format!("{f} (as told by --fsync; not verified)"),
        (None, None) => "unknown (not spawned; pass --fsync to record it)".into(),
    };
    let progress = !common.quiet && !common.json;
    let topic = common.topic.clone().unwrap_or_else(|| match &scenario {
        // A fixed name, so a later run against the same server can reuse the prefill.
        Scenario::Replay(o) => replay::default_topic(o.frames, common.size, common.payload),
        s => format!("bench-{}-{:08x}", s.name(), rand::random::<u32>()),
    });

    let mut report = Report {
        scenario: scenario.name().to_string(),
        command: command_line(),
        date: utc_now(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        machine: Machine::probe(),
        server: if spawned.is_some() {
            "spawned"
        } else {
            "external"
        }
        .into(),
        addr: addr.clone(),
        sub_addrs: Vec::new(),
        http_addr: None,
        fsync,
        topic: topic.clone(),
        frame_bytes: common.size,
        payload: common.payload.as_str().into(),
        compression: common.compression.to_string(),
        wire: None,
        publishers: 0,
        publish_mode: "stream".into(),
        target_rate: 0.0,
        subscribers: 0,
        connections: 0,
        transport: Transport::Grpc.as_str().into(),
        published: None,
        delivered: None,
        latency: Vec::new(),
        errors: 0,
        error_samples: Vec::new(),
        faults: Default::default(),
        incomplete_subscribers: 0,
        resources: Resources::default(),
        ok: false,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut cpu_baseline = CpuBaseline::now(&server_pids);
    let result = runtime.block_on(scenario_run(
        &scenario,
        &common,
        Targets {
            addr,
            sub_addrs,
            http_addr,
            topic,
            server_pids: &server_pids,
        },
        progress,
        &mut cpu_baseline,
        &mut report,
    ));
    // Each server read once, all or none: the list keeps --server-pid order and adds up
    // to the sum.
    let cpu_each: Vec<f64> = cpu_baseline
        .servers
        .and_then(|before| {
            server_pids
                .iter()
                .zip(before)
                .map(|(&p, b)| Some(cpu_seconds(p)? - b))
                .collect()
        })
        .unwrap_or_default();
    report.resources = Resources {
        servers: server_pids.len(),
        server_cpu_s: (!cpu_each.is_empty()).then(|| cpu_each.iter().sum()),
        server_cpu_each_s: cpu_each,
        server_rss_mb: summed(&server_pids, |p| memory(p).map(|m| m.0 as f64 / 1e6)),
        server_peak_rss_mb: summed(&server_pids, |p| memory(p).map(|m| m.1 as f64 / 1e6)),
        client_cpu_s: own_cpu_seconds() - cpu_baseline.bench,
        client_peak_rss_mb: memory(std::process::id()).map(|m| m.1 as f64 / 1e6),
    };
    report.machine.load_after = load_average();
    drop(runtime);
    if let Some(s) = spawned.as_mut() {
        s.stop();
    }
    result?;
    if common.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else {
        print!("{}", report.table());
    }
    Ok(report)
}

/// CPU seconds the sampled servers and the bench have used so far: what the report's CPU
/// figures are counted from.
struct CpuBaseline {
    /// Each server's, in --server-pid order; none when one cannot be read.
    servers: Option<Vec<f64>>,
    /// The bench's own.
    bench: f64,
}

impl CpuBaseline {
    /// The figures now.
    fn now(server_pids: &[u32]) -> CpuBaseline {
        CpuBaseline {
            servers: server_pids.iter().map(|&p| cpu_seconds(p)).collect(),
            bench: own_cpu_seconds(),
        }
    }
}

/// Where a scenario runs.
struct Targets<'a> {
    /// The publishers' (and replay's) server.
    addr: String,
    /// The servers fan-out's gRPC subscribers spread over.
    sub_addrs: Vec<String>,
    /// The HTTP door, for SSE and WebSocket subscribers.
    http_addr: String,
    /// The topic.
    topic: String,
    /// The server processes whose CPU is sampled.
    server_pids: &'a [u32],
}

/// True when a publishing run is clean: nothing failed, lost, duplicated or reordered,
/// every subscriber complete, and every frame asked for acknowledged (with `--count`,
/// exactly that many; a stream the server ended early leaves fewer).
fn clean_run(out: &Outcome, count: Option<u64>) -> bool {
    out.errors == 0
        && out.faults.is_clean()
        && out.incomplete == 0
        && out.acked > 0
        && count.is_none_or(|c| out.acked == c)
}

/// `of` summed over `pids`: none when there are none, or when one cannot be read.
fn summed(pids: &[u32], of: impl Fn(u32) -> Option<f64>) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| of(p)).sum()
}

/// Runs `scenario` and fills `report` in; `cpu` is moved past any setup that is not the
/// measured work (replay's prefill).
async fn scenario_run(
    scenario: &Scenario,
    common: &Common,
    targets: Targets<'_>,
    progress: bool,
    cpu: &mut CpuBaseline,
    report: &mut Report,
) -> Result<()> {
    let Targets {
        addr,
        sub_addrs,
        http_addr,
        topic,
        server_pids,
    } = targets;
    let size = common.size;
    // A spawned server has neither TLS nor authentication.
    let credentials = match common.spawn {
        true => Default::default(),
        false => common.credentials.clone(),
    };
    let wire = Wire {
        compression: common.compression,
        bytes: Default::default(),
        bearer: credentials
            .bearer()
            .map_err(|e| Error::Args(e.to_string()))?,
        tls: credentials.tls().map_err(|e| Error::Args(e.to_string()))?,
    };
    let plan = |publishers: usize,
                pub_connections: usize,
                stream: bool,
                window: usize,
                rate: f64,
                length: &Length,
                subscribers: usize,
                sub_connections: usize| Plan {
        addr: addr.clone(),
        sub_addrs: vec![addr.clone()],
        topic: topic.clone(),
        size,
        filler: common.payload,
        wire: wire.clone(),
        publishers: publishers.max(1),
        pub_connections: pub_connections.max(1),
        stream,
        window,
        coalesce: false,
        rate,
        keys: false,
        length: length.clone(),
        subscribers,
        sub_connections: sub_connections.max(1),
        transport: Transport::Grpc,
        http_addr: http_addr.clone(),
        token: credentials.token.clone(),
        progress,
    };
    let plan = match scenario {
        Scenario::Publish(o) => {
            let mut p = plan(
                o.publishers,
                o.connections.unwrap_or(o.publishers.min(64)),
                o.stream,
                o.window,
                o.rate,
                &o.length,
                0,
                0,
            );
            p.keys = o.keys;
            p.coalesce = o.coalesce;
            p
        }
        Scenario::Fanout(o) => {
            if o.transport != Transport::Grpc && wire.tls.wanted() {
                return Err(Error::Args(
                    "--transport sse|ws: these subscribers speak plain HTTP (no TLS); \
                     use --transport grpc with --ca-cert"
                        .into(),
                ));
            }
            if o.transport != Transport::Grpc && http_addr.ends_with("off") {
                return Err(Error::Args(format!(
                    "--transport {} needs the HTTP door, and it is off",
                    o.transport.as_str()
                )));
            }
            let mut p = plan(
                o.publishers,
                o.publishers.min(64),
                !o.unary,
                o.window,
                o.rate,
                &o.length,
                o.subscribers,
                o.connections,
            );
            if o.transport != Transport::Grpc && sub_addrs.len() > 1 {
                return Err(Error::Args(
                    "several --addr spread gRPC subscribers only; SSE and WebSocket ones use \
                     the one --http-addr"
                        .into(),
                ));
            }
            p.transport = o.transport;
            if o.transport == Transport::Grpc {
                report.sub_addrs = sub_addrs.clone();
            }
            p.sub_addrs = sub_addrs;
            p
        }
        Scenario::E2e(o) => {
            let publishers = if o.unary { o.unary_publishers } else { 1 };
            plan(
                publishers,
                publishers.min(64),
                !o.unary,
                1024,
                o.rate,
                &o.length,
                o.subscribers,
                o.subscribers.min(100),
            )
        }
        Scenario::Replay(o) => {
            let replay_plan = ReplayPlan {
                addr,
                topic,
                size,
                filler: common.payload,
                wire: wire.clone(),
                frames: o.frames,
                subscribers: o.subscribers.max(1),
                connections: o.connections.max(1),
                timeout: o.timeout,
                progress,
            };
            let prefill = replay::prefill(&replay_plan).await?;
            // The CPU figures are the replay's.
            *cpu = CpuBaseline::now(server_pids);
            let out = replay::replay(replay_plan).await?;
            report.publishers = usize::from(prefill.frames > 0);
            report.subscribers = o.subscribers.max(1);
            report.connections = o.connections.max(1);
            report.published =
                (prefill.frames > 0).then(|| Throughput::new(prefill.frames, prefill.secs, size));
            report.delivered = Some(Throughput::new(out.delivered, out.secs, size));
            report.wire = Some(WireReport::new(&wire.bytes, out.delivered));
            report.latency = LatencyRow::of("first frame", &out.first_frame)
                .into_iter()
                .collect();
            report.errors = out.errors;
            report.error_samples = out.error_samples;
            report.faults = out.faults;
            report.incomplete_subscribers = out.incomplete;
            report.ok = out.errors == 0 && out.faults.is_clean() && out.incomplete == 0;
            return Ok(());
        }
        Scenario::Topics(_) => {
            return Err(Error::Args("the topics scenario has its own driver".into()))
        }
    };
    report.publishers = plan.publishers;
    report.publish_mode = if plan.coalesce {
        "coalesced"
    } else if plan.stream {
        "stream"
    } else {
        "unary"
    }
    .into();
    report.target_rate = plan.rate;
    report.subscribers = plan.subscribers;
    report.transport = plan.transport.as_str().into();
    if plan.transport != Transport::Grpc {
        report.http_addr = Some(plan.http_addr.clone());
    }
    report.connections = match (plan.subscribers, plan.transport) {
        (0, _) => 0,
        (_, Transport::Grpc) => plan.sub_connections,
        // One connection (or socket) per subscriber.
        (n, Transport::Sse | Transport::Ws) => n,
    };
    let has_subscribers = plan.subscribers > 0;
    let coalesce = plan.coalesce;
    let count = plan.length.count;
    let out = pubsub::run(plan).await?;
    report.published = Some(Throughput::new(out.acked, out.publish_secs, size));
    if has_subscribers {
        report.delivered = Some(Throughput::new(out.delivered, out.deliver_secs, size));
    }
    // Coalesced publishers send over the shared client's own connection, which is not
    // counted: no figure rather than a near-zero one.
    report.wire = (!coalesce).then(|| {
        WireReport::new(
            &wire.bytes,
            if has_subscribers {
                out.delivered
            } else {
                out.acked
            },
        )
    });
    report.latency = [
        LatencyRow::of("ack", &out.ack_latency),
        LatencyRow::of("delivery", &out.delivery_latency),
    ]
    .into_iter()
    .flatten()
    .collect();
    report.ok = clean_run(&out, count);
    report.errors = out.errors;
    report.error_samples = out.error_samples;
    report.faults = out.faults;
    report.incomplete_subscribers = out.incomplete;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    fn outcome(acked: u64) -> Outcome {
        Outcome {
            acked,
            publish_secs: 1.0,
            delivered: 0,
            deliver_secs: 0.0,
            ack_latency: Histogram::new(3).unwrap(),
            delivery_latency: Histogram::new(3).unwrap(),
            errors: 0,
            error_samples: Vec::new(),
            faults: Default::default(),
            incomplete: 0,
        }
    }

    #[test]
    fn a_count_must_be_acknowledged_whole() {
        assert!(clean_run(&outcome(1000), Some(1000)));
        assert!(clean_run(&outcome(1000), None));
        // Fewer acks than asked, with no error to say why: a stream ended early.
        assert!(!clean_run(&outcome(999), Some(1000)));
        assert!(!clean_run(&outcome(0), None));
    }
}
