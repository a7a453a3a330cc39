//! The scenarios of `framecast bench` and their flags. Defaults are chosen so that each
//! scenario alone (`framecast bench fanout`) does something meaningful in under a minute.

use std::time::Duration;

use super::payload::{Filler, MAX_PAYLOAD_LEN};
use framecast::client::Compression;
use framecast::server::config::parse_duration;
use framecast::wal::DEFAULT_MAX_FRAME_BYTES;

/// Load generator: publish, fan-out, replay and end-to-end scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// One benchmark scenario.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Scenario {
    /// Publish as fast as possible (or at --rate): unary Publish, or PublishStream with --stream.
    Publish(PublishOpts),
    /// P publishers, S subscribers spread over C connections; every delivery is checked.
    Fanout(FanoutOpts),
    /// Prefill a topic, then time subscribers reading it from offset 0.
    Replay(ReplayOpts),
    /// Publish→delivery latency at a fixed rate.
    E2e(E2eOpts),
    /// Many small topics: disk, memory, descriptors and threads per topic, restart time.
    Topics(super::topics::TopicsOpts),
}

impl Scenario {
    /// The flags every scenario has.
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Publish(o) => &o.common,
            Scenario::Fanout(o) => &o.common,
            Scenario::Replay(o) => &o.common,
            Scenario::E2e(o) => &o.common,
            Scenario::Topics(o) => &o.common,
        }
    }

    /// The scenario's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Publish(_) => "publish",
            Scenario::Fanout(_) => "fanout",
            Scenario::Replay(_) => "replay",
            Scenario::E2e(_) => "e2e",
            Scenario::Topics(_) => "topics",
        }
    }
}

/// Flags shared by all scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Server address (ignored with --spawn). Of a comma-separated list, publishers and
    /// replay use the first (the load generator does not follow a cluster's leader: name
    /// it first); `fanout` spreads its gRPC subscribers' connections over every address
    /// (connection i to address i mod n), to measure fan-out from a cluster's nodes.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    pub addr: String,
    /// Token and TLS files for --addr (ignored with --spawn).
    #[command(flatten)]
    pub credentials: crate::cli::connect::Credentials,
    /// Start a `framecast serve` on a temporary data dir for this run, and stop it after.
    #[arg(long)]
    pub spawn: bool,
    /// The server's fsync policy: passed to the --spawn'ed server; without --spawn it is
    /// only reported (the server does not announce it over gRPC).
    #[arg(long, value_name = "always|interval:<ms>|never")]
    pub fsync: Option<String>,
    /// Extra flag for the spawned server, e.g. --serve-arg=--segment-bytes=256MiB (repeatable).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub serve_arg: Vec<String>,
    /// Sample this server process's CPU time and peak memory (automatic with --spawn).
    /// Several (comma-separated or repeated) are summed: the nodes of a cluster.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Topic (default: a fresh `bench-<scenario>-<random>`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Payload bytes per frame (at least 24: publisher, counter and send time ride in it).
    // At most MAX_PAYLOAD_LEN: `parse_size` says so when it is exceeded.
    #[arg(long, default_value_t = 100, value_parser = parse_size)]
    pub size: usize,
    /// What fills a payload after its 24-byte header: `x` bytes, or JSON-like records.
    #[arg(long, value_enum, default_value_t = Filler::Filler)]
    pub payload: Filler,
    /// gRPC message compression of the bench's connections (requests, and the responses they
    /// ask for).
    #[arg(long, default_value = "none", value_name = "none|gzip|zstd")]
    pub compression: Compression,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `--size`: a payload length the bench can send, at most [`MAX_PAYLOAD_LEN`] (the lower
/// bound depends on the scenario: `topics` has no header).
fn parse_size(s: &str) -> Result<usize, String> {
    let size: usize = s.trim().parse().map_err(|e| format!("{e}"))?;
    if size > MAX_PAYLOAD_LEN {
        return Err(format!(
            "at most {MAX_PAYLOAD_LEN} bytes, the largest payload the bench sends (the \
             server's own limit, --max-frame-bytes, is {DEFAULT_MAX_FRAME_BYTES} unless raised)"
        ));
    }
    Ok(size)
}

/// A count of publishers, connections or frames in flight: at least one (0 would measure
/// nothing, and used to run one silently).
fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>().map_err(|e| format!("{e}"))? {
        0 => Err("must be at least 1".to_string()),
        n => Ok(n),
    }
}

/// How long the publishers run: a duration, or a total frame count.
#[derive(Debug, Clone, clap::Args)]
pub struct Length {
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Publish exactly this many frames in total instead (split over the publishers).
    #[arg(long)]
    pub count: Option<u64>,
    /// After publishing stops, how long subscribers may take to receive everything.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
}

/// `bench publish`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishOpts {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub length: Length,
    /// Concurrent publishers (each a unary caller with one request in flight, or a stream).
    #[arg(long, short = 'p', default_value_t = 1, value_parser = parse_count)]
    pub publishers: usize,
    /// Use PublishStream (pipelined) instead of unary Publish.
    #[arg(long)]
    pub stream: bool,
    /// Frames in flight per stream (unacknowledged).
    #[arg(long, default_value_t = 1024, value_parser = parse_count)]
    pub window: usize,
    /// Target total rate in frames/s; 0 = as fast as the server acknowledges.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// TCP connections the publishers share (default: one each, at most 64).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Give every frame an idempotency key (the server then keeps a dedup entry per frame).
    #[arg(long)]
    pub keys: bool,
    /// The publishers are tasks in this process sharing one `framecast::client::Client`,
    /// each calling `publish` and awaiting its ack; the client coalesces the concurrent
    /// calls over one PublishStream (its keys on every frame; --stream, --window,
    /// --connections and --keys do not apply). Wire bytes are not counted in this mode.
    #[arg(long, conflicts_with = "stream")]
    pub coalesce: bool,
}

/// `bench fanout`.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutOpts {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub length: Length,
    /// Publishers.
    #[arg(long, short = 'p', default_value_t = 1, value_parser = parse_count)]
    pub publishers: usize,
    /// Subscriber streams.
    #[arg(long, short = 's', default_value_t = 1000)]
    pub subscribers: usize,
    /// TCP connections the subscribers are spread over.
    #[arg(long, short = 'c', default_value_t = 100, value_parser = parse_count)]
    pub connections: usize,
    /// Target total publish rate in frames/s; 0 = as fast as possible.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Publish with unary calls (one in flight per publisher) instead of PublishStream.
    #[arg(long)]
    pub unary: bool,
    /// Frames in flight per publish stream.
    #[arg(long, default_value_t = 1024, value_parser = parse_count)]
    pub window: usize,
    /// How the subscribers receive: gRPC streams spread over --connections, or one HTTP/1.1
    /// connection (Server-Sent Events) or WebSocket per subscriber on the HTTP door.
    /// Publishers always use gRPC.
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
    /// The server's HTTP door, for --transport sse|ws (ignored with --spawn, which uses the
    /// spawned server's).
    #[arg(long, default_value = "http://127.0.0.1:7071", value_name = "URL")]
    pub http_addr: String,
}

/// How subscribers receive frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// `Subscribe` streams, many per HTTP/2 connection.
    #[default]
    Grpc,
    /// Server-Sent Events (`GET /v1/topics/{topic}/events`), one connection each.
    Sse,
    /// WebSocket (`/v1/ws`), one socket each, one subscription per socket.
    Ws,
}

impl Transport {
    /// The name as typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

/// `bench replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayOpts {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    /// Frames in the topic; prefilled unless the topic already holds them from an earlier run.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: u64,
    /// Subscribers replaying at once.
    #[arg(long, short = 's', default_value_t = 1)]
    pub subscribers: usize,
    /// TCP connections the subscribers are spread over.
    #[arg(long, short = 'c', default_value_t = 1, value_parser = parse_count)]
    pub connections: usize,
    /// How long the replay may take before it is reported as incomplete.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `bench e2e`.
#[derive(Debug, Clone, clap::Args)]
pub struct E2eOpts {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub length: Length,
    /// Publish rate in frames/s (fixed: latency is only meaningful at a known load).
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Subscribers.
    #[arg(long, short = 's', default_value_t = 1)]
    pub subscribers: usize,
    /// Publish with unary calls instead of PublishStream.
    #[arg(long)]
    pub unary: bool,
    /// Unary publishers (concurrent calls) when --unary; the rate is split over them.
    #[arg(long, default_value_t = 64, value_parser = parse_count)]
    pub unary_publishers: usize,
}
