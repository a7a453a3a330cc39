//! The final report: a table for people, one JSON object (`--json`) for machines.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::payload::Faults;
use super::progress::human;

/// Everything a run measured, with what is needed to reproduce and judge it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `publish`, `fanout`, `replay` or `e2e`.
    pub scenario: String,
    /// The command line, as typed, with `--token`'s value masked ([`command_line`]).
    pub command: String,
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// framecast's version.
    pub version: String,
    /// The machine the run was on.
    pub machine: Machine,
    /// `spawned` or `external`.
    pub server: String,
    /// The address publishers (and replay) used: the first of --addr.
    pub addr: String,
    /// Every address gRPC subscribers' connections were spread over (fan-out).
    pub sub_addrs: Vec<String>,
    /// The HTTP door the SSE or WebSocket subscribers used (none for gRPC).
    pub http_addr: Option<String>,
    /// The server's fsync policy, as far as the bench knows it.
    pub fsync: String,
    /// The topic used.
    pub topic: String,
    /// Payload bytes per frame.
    pub frame_bytes: usize,
    /// What filled the payloads (`filler` or `json`).
    pub payload: String,
    /// gRPC message compression of the bench's connections (`none`, `gzip`, `zstd`).
    pub compression: String,
    /// Bytes the bench's connections wrote and read; none when not measured (`coalesced`
    /// publishers: the shared client's own connection is not counted).
    pub wire: Option<WireReport>,
    /// Publishers.
    pub publishers: usize,
    /// `stream` (PublishStream), `unary` (Publish) or `coalesced` (one shared client).
    pub publish_mode: String,
    /// Target total publish rate in frames/s; 0 = as fast as acks come back.
    pub target_rate: f64,
    /// Subscribers.
    pub subscribers: usize,
    /// TCP connections the subscribers were spread over.
    pub connections: usize,
    /// How subscribers received: `grpc`, `sse` (Server-Sent Events) or `ws` (WebSocket).
    pub transport: String,
    /// Frames acknowledged to publishers (for replay: the prefill, if one was needed).
    pub published: Option<Throughput>,
    /// Frames delivered to subscribers, all together.
    pub delivered: Option<Throughput>,
    /// Latency distributions, in µs.
    pub latency: Vec<LatencyRow>,
    /// Failed calls and broken streams.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// What subscribers received wrong (all must be 0).
    pub faults: Faults,
    /// Subscribers that did not receive everything in time.
    pub incomplete_subscribers: usize,
    /// CPU and memory of both sides.
    pub resources: Resources,
    /// True when nothing failed, nothing was lost, duplicated or reordered.
    pub ok: bool,
}

/// The machine a run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// 1, 5 and 15 minute load averages before the run.
    pub load_before: [f64; 3],
    /// The same after the run.
    pub load_after: [f64; 3],
}

impl Machine {
    /// The machine now (load averages "after" are filled in later).
    pub fn probe() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let load = load_average();
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            load_before: load,
            load_after: load,
        }
    }
}

/// The load averages from `/proc/loadavg`.
pub fn load_average() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// Frames over time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    /// Frames.
    pub frames: u64,
    /// Seconds they took.
    pub secs: f64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Payload megabytes (10^6) per second.
    pub mb_per_s: f64,
}

impl Throughput {
    /// `frames` of `size` bytes in `secs`.
    pub fn new(frames: u64, secs: f64, size: usize) -> Throughput {
        let fps = if secs > 0.0 {
            frames as f64 / secs
        } else {
            0.0
        };
        Throughput {
            frames,
            secs,
            frames_per_s: fps,
            mb_per_s: fps * size as f64 / 1e6,
        }
    }
}

/// Bytes on the wire, counted on the bench's sockets (HTTP/2 framing and headers included).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WireReport {
    /// Bytes written: publishes and subscribe calls.
    pub sent_bytes: u64,
    /// Bytes read: acks and delivered frames.
    pub received_bytes: u64,
    /// Bytes read and written per frame delivered (or per frame acked, with no subscribers).
    pub bytes_per_frame: f64,
}

impl WireReport {
    /// The counts in `bytes`, spread over `frames`.
    pub fn new(bytes: &super::wire::WireBytes, frames: u64) -> WireReport {
        let (sent, received) = (bytes.sent(), bytes.received());
        WireReport {
            sent_bytes: sent,
            received_bytes: received,
            bytes_per_frame: if frames > 0 {
                (sent + received) as f64 / frames as f64
            } else {
                0.0
            },
        }
    }
}

/// One latency distribution, in µs.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// What is measured (`ack`, `delivery`, `first frame`).
    pub name: String,
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl LatencyRow {
    /// The row of `h`, `None` when it is empty.
    pub fn of(name: &str, h: &Histogram<u64>) -> Option<LatencyRow> {
        (!h.is_empty()).then(|| LatencyRow {
            name: name.to_string(),
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// CPU time and memory of the server (when its process is known) and of the bench.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// Server processes given (--server-pid, or the spawned one); the figures below are
    /// their sums, and none when one of them could not be read.
    pub servers: usize,
    /// Each sampled server's CPU seconds during the run, in --server-pid order (empty when
    /// one could not be read).
    pub server_cpu_each_s: Vec<f64>,
    /// Server CPU seconds (user + system) during the run (for replay: the replay, not the
    /// prefill before it).
    pub server_cpu_s: Option<f64>,
    /// Server resident memory at the end, MB.
    pub server_rss_mb: Option<f64>,
    /// Server peak resident memory (over its life), MB.
    pub server_peak_rss_mb: Option<f64>,
    /// The bench's CPU seconds during the run (for replay: the replay, not the prefill).
    pub client_cpu_s: f64,
    /// The bench's peak resident memory, MB.
    pub client_peak_rss_mb: Option<f64>,
}

fn us(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1}s", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1e3)
    } else {
        format!("{v}µs")
    }
}

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(o, "framecast bench {} — {}", self.scenario, self.date);
        let _ = writeln!(
            o,
            "  machine: {} cores ({}), kernel {}, load {:.2} {:.2} {:.2} before, {:.2} after",
            m.cores,
            m.cpu,
            m.kernel,
            m.load_before[0],
            m.load_before[1],
            m.load_before[2],
            m.load_after[0]
        );
        let door = self
            .http_addr
            .as_ref()
            .map_or_else(String::new, |h| format!(" (HTTP door {h})"));
        let _ = writeln!(
            o,
            "  server:  {} at {}{door}, fsync {}",
            self.server, self.addr, self.fsync
        );
        let rate = if self.target_rate > 0.0 {
            format!("{}/s", human(self.target_rate))
        } else {
            "max".into()
        };
        let _ = writeln!(
            o,
            "  load:    topic {}, {} B frames, {} publisher(s) ({}, rate {}), {} {} subscriber(s) over {} connection(s)",
            self.topic, self.frame_bytes, self.publishers, self.publish_mode, rate, self.subscribers, self.transport, self.connections
        );
        let _ = writeln!(
            o,
            "  wire:    payload {}, compression {}",
            self.payload, self.compression
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "  {:<12} {:>12} {:>9} {:>12} {:>9}",
            "", "frames", "seconds", "frames/s", "MB/s"
        );
        for (name, t) in [
            ("published", &self.published),
            ("delivered", &self.delivered),
        ] {
            if let Some(t) = t {
                let _ = writeln!(
                    o,
                    "  {:<12} {:>12} {:>9.2} {:>12.0} {:>9.1}",
                    name, t.frames, t.secs, t.frames_per_s, t.mb_per_s
                );
            }
        }
        match &self.wire {
            Some(w) => {
                let _ = writeln!(
                    o,
                    "  {:<12} sent {} B, received {} B, {:.0} B per frame",
                    "wire bytes", w.sent_bytes, w.received_bytes, w.bytes_per_frame
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "  {:<12} not measured (the shared client's connection is not counted)",
                    "wire bytes"
                );
            }
        }
        if !self.latency.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "  {:<12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency", "samples", "p50", "p90", "p99", "p99.9", "max"
            );
            for r in &self.latency {
                let _ = writeln!(
                    o,
                    "  {:<12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    r.name,
                    r.count,
                    us(r.p50_us),
                    us(r.p90_us),
                    us(r.p99_us),
                    us(r.p999_us),
                    us(r.max_us)
                );
            }
            if self.latency.iter().any(|r| r.name != "first frame") {
                let _ = writeln!(
                    o,
                    "  (ack and delivery from each frame's intended send time{})",
                    if self.target_rate > 0.0 {
                        ": stalls are not hidden"
                    } else {
                        "; unpaced, so that is when it could be sent"
                    }
                );
            } else {
                let _ = writeln!(
                    o,
                    "  (first frame: from the Subscribe call to the first frame)"
                );
            }
        }
        let _ = writeln!(o);
        let f = &self.faults;
        let _ = writeln!(
            o,
            "  errors {}  missing {}  duplicated {}  out-of-order {}  foreign {}  incomplete subscribers {}  => {}",
            self.errors,
            f.missing,
            f.duplicated,
            f.out_of_order,
            f.foreign,
            self.incomplete_subscribers,
            if self.ok { "OK" } else { "FAILED" }
        );
        for e in &self.error_samples {
            let _ = writeln!(o, "    error: {e}");
        }
        let r = &self.resources;
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("?".to_string(), |v| format!("{v:.1}{unit}"));
        let _ = writeln!(
            o,
            "  cpu: {} {}, bench {:.1}s; memory: {} {} now, {} peak; bench {} peak",
            match r.servers {
                0 | 1 => "server".to_string(),
                n => format!("{n} servers (summed)"),
            },
            match (r.server_cpu_each_s.len(), r.server_cpu_s) {
                (2.., Some(sum)) => format!(
                    "{sum:.1}s ({})",
                    r.server_cpu_each_s
                        .iter()
                        .map(|c| format!("{c:.1}"))
                        .collect::<Vec<_>>()
                        .join(" + ")
                ),
                _ => opt(r.server_cpu_s, "s"),
            },
            r.client_cpu_s,
            match r.servers {
                0 | 1 => "server",
                _ => "servers",
            },
            opt(r.server_rss_mb, " MB"),
            opt(r.server_peak_rss_mb, " MB"),
            opt(r.client_peak_rss_mb, " MB"),
        );
        o
    }
}

/// Flags of the bench whose value is a secret. The files of `--ca-cert`, `--client-cert`
/// and `--client-key` are paths, kept as typed.
const SECRET_FLAGS: [&str; 1] = ["--token"];

/// This process's command line, for a report: an argument that is not UTF-8 is shown with
/// U+FFFD (the report is text), and the value of a flag that carries a secret (`--token X`,
/// `--token=X`) is replaced with `***`, so a report can be shared.
pub fn command_line() -> String {
    masked(std::env::args_os().map(|a| a.to_string_lossy().into_owned()))
}

/// `args` joined with spaces, the values of [`SECRET_FLAGS`] masked.
fn masked(args: impl IntoIterator<Item = String>) -> String {
    let mut out = Vec::new();
    let mut value_is_secret = false;
    for arg in args {
        if value_is_secret {
            value_is_secret = false;
            out.push("***".to_string());
            continue;
        }
        if SECRET_FLAGS.contains(&arg.as_str()) {
            value_is_secret = true;
            out.push(arg);
            continue;
        }
        match arg.split_once('=') {
            Some((flag, _)) if SECRET_FLAGS.contains(&flag) => out.push(format!("{flag}=***")),
            _ => out.push(arg),
        }
    }
    out.join(" ")
}

/// `SystemTime::now()` as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_rfc3339_utc() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'), "{d}");
    }

    #[test]
    fn a_token_is_masked_in_the_command_line() {
        let line = |args: &[&str]| masked(args.iter().map(|a| a.to_string()));
        assert_eq!(
            line(&[
                "framecast",
                "bench",
                "fanout",
                "--token",
                "eyJ.s3cret",
                "--json"
            ]),
            "framecast bench fanout --token *** --json"
        );
        assert_eq!(
            line(&[
                "framecast",
                "bench",
                "replay",
                "--token=eyJ.s3cret",
                "--size",
                "64"
            ]),
            "framecast bench replay --token=*** --size 64"
        );
        // Paths and other flags stay as typed; a trailing --token has nothing to mask.
        assert_eq!(
            line(&["framecast", "--ca-cert", "/etc/ca.pem", "--token"]),
            "framecast --ca-cert /etc/ca.pem --token"
        );
    }

    #[test]
    fn throughput_in_frames_and_megabytes() {
        let t = Throughput::new(1_000_000, 2.0, 100);
        assert_eq!(t.frames_per_s, 500_000.0);
        assert_eq!(t.mb_per_s, 50.0);
    }
}
