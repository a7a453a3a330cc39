//! The `framecast` binary: one executable, subcommands for the server and its tools.
//!
//! The command-line tools live here, not in the library, so that a user of
//! `framecast::client` does not build the load generator's dependencies: [`cli`] holds the
//! `publish`, `subscribe` and `history` commands and `bench`, the load generator.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use framecast::cluster::node::{ClusterConfig, NodeToken};
use framecast::server::config::{parse_bytes, parse_duration, MaintenanceConfig};
use framecast::server::{Http2Limits, ServerConfig, TlsFiles};
use framecast::wal::{
    CompactOptions, FsyncPolicy, LogConfig, Retention, DEFAULT_DEDUP_MAX_KEYS,
    DEFAULT_MAX_FRAME_BYTES,
};

/// A durable broadcast server.
#[derive(Debug, Parser)]
#[command(name = "framecast", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Publish frames from arguments, a file, or one per stdin line.
    Publish(cli::publish::PublishArgs),
    /// Print frames of a topic: history from --from, then live; reconnects on its own.
    Subscribe(cli::subscribe::SubscribeArgs),
    /// Print a topic's stored frames page by page (History), oldest or newest first.
    History(cli::history::HistoryArgs),
    /// List topics with their figures (default), create or delete one.
    Topics(cli::topics::TopicsArgs),
    /// The cluster as a node describes it: the term, the leader, every node's role, in-sync
    /// and online state (with --topics, each topic's positions).
    Cluster(cli::cluster::ClusterArgs),
    /// Mint an HS256 token for scripts and tests (see --help).
    Token(cli::token::TokenArgs),
    /// Load generator: publish, fanout, replay and e2e scenarios, with checked deliveries.
    Bench(cli::bench::BenchArgs),
    /// Compact a stopped server's topics: apply retention, merge sealed segments and runs
    /// into one sorted run per topic.
    ///
    /// A cluster node's copy of a topic is left alone (named with --topic, an error): which
    /// of its frames are committed is known only while the cluster runs, and it compacts
    /// then, below its commit point.
    Compact {
        /// The data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Drop idempotency keys older than this (give the --dedup-window the server runs
        /// with); unset: every key is kept.
        #[arg(long, value_parser = parse_duration)]
        dedup_window: Option<std::time::Duration>,
        /// The most bytes of frames one sorted run holds (at most 4GiB); a larger topic
        /// becomes several runs.
        #[arg(long, default_value = "1GiB", value_parser = parse_run_bytes)]
        max_run_bytes: u64,
    },
    /// Repair a stopped server's damaged topic: set damaged bytes aside, keep every valid
    /// frame at its offset, mark the lost offsets as a gap, and give the topic a new epoch.
    Repair {
        /// The data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// The topic to repair.
        #[arg(long)]
        topic: String,
    },
    /// Print and check segment files (reads files only; safe on a live data dir).
    Dump {
        /// The data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only this segment file.
        #[arg(long)]
        segment: Option<PathBuf>,
        /// Check every record; exit 1 if any is bad.
        #[arg(long)]
        verify: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on: HOST:PORT, or :PORT for 127.0.0.1 (port 0 picks a free port;
    /// the log line "listening" names it). 0.0.0.0:PORT listens on every interface.
    #[arg(long, env = "FRAMECAST_LISTEN", default_value = "127.0.0.1:7070", value_parser = parse_listen)]
    listen: std::net::SocketAddr,
    /// The HTTP door (REST, /metrics, /healthz): HOST:PORT, :PORT, or `off`.
    #[arg(long, env = "FRAMECAST_HTTP_LISTEN", default_value = "127.0.0.1:7071", value_parser = parse_http_listen, value_name = "ADDR|off")]
    http_listen: HttpListen,
    /// Serve /metrics without a token even when auth is on (for a scraper on a trusted network).
    #[arg(long, env = "FRAMECAST_METRICS_PUBLIC")]
    metrics_public: bool,
    /// An origin (`https://app.example.com`) whose pages may call the HTTP door and gRPC-Web
    /// (CORS); repeat it, or give `*` for any origin. None: same-origin pages only (the
    /// HTTP door refuses other sites' pages 403).
    #[arg(
        long = "cors-origin",
        env = "FRAMECAST_CORS_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    cors_origins: Vec<String>,
    /// Topics with their own metric series; the rest are summed under topic="_other".
    #[arg(long, env = "FRAMECAST_METRICS_MAX_TOPICS", default_value_t = 1000)]
    metrics_max_topics: usize,
    /// Data directory; topics live in <data-dir>/topics/<topic>/.
    #[arg(long, env = "FRAMECAST_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// When a publish counts as durable: always (sync before ack), interval:<ms>, never.
    #[arg(long, env = "FRAMECAST_FSYNC", default_value = "always", value_parser = parse_fsync)]
    fsync: FsyncPolicy,
    /// Capacity of a segment (e.g. 67108864 or 64MiB): its file grows in steps up to it.
    #[arg(long, env = "FRAMECAST_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    segment_bytes: u64,
    /// Largest payload accepted (default 4 MiB - 1 KiB).
    #[arg(long, env = "FRAMECAST_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES as u64, value_parser = parse_bytes)]
    max_frame_bytes: u64,
    /// Open subscriber streams allowed across all topics.
    #[arg(long, env = "FRAMECAST_MAX_SUBSCRIBERS", default_value_t = 100_000)]
    max_subscribers: usize,
    /// Payload bytes of publishes taken in and not yet written to their logs, across the
    /// server (every door, connection and stream); past it publishers wait, held back by
    /// their connections' flow control (at most 4GiB).
    #[arg(long, env = "FRAMECAST_MAX_QUEUED_PUBLISH_BYTES", default_value = "256MiB", value_parser = parse_publish_budget)]
    max_queued_publish_bytes: u64,
    /// Refuse publishes and subscriptions to missing topics (NOT_FOUND) instead of creating them.
    #[arg(long, env = "FRAMECAST_NO_AUTO_CREATE_TOPICS")]
    no_auto_create_topics: bool,
    /// How long an idempotency key is remembered (90s, 2m, 1h).
    #[arg(long, env = "FRAMECAST_DEDUP_WINDOW", default_value = "2m", value_parser = parse_duration)]
    dedup_window: std::time::Duration,
    /// Most idempotency keys remembered per topic; past it the oldest are forgotten early.
    #[arg(long, env = "FRAMECAST_DEDUP_MAX_KEYS", default_value_t = DEFAULT_DEDUP_MAX_KEYS)]
    dedup_max_keys: usize,
    /// Default retention by age for topics without their own (90s, 2m, 1h, 7d); unset or
    /// 0: keep.
    #[arg(long, env = "FRAMECAST_RETENTION_MAX_AGE", value_parser = parse_duration)]
    retention_max_age: Option<std::time::Duration>,
    /// Default retention by size for topics without their own (e.g. 10GiB); unset or 0:
    /// keep.
    #[arg(long, env = "FRAMECAST_RETENTION_MAX_BYTES", value_parser = parse_bytes)]
    retention_max_bytes: Option<u64>,
    /// Compaction I/O budget in MB/s (0 = unlimited).
    #[arg(long, env = "FRAMECAST_COMPACTION_MB_PER_SEC", default_value_t = 64)]
    compaction_mb_per_sec: u64,
    /// The most bytes of frames one sorted run holds (at most 4GiB): a larger backlog is
    /// compacted over several passes, and full runs are not merged again.
    #[arg(long, env = "FRAMECAST_COMPACTION_MAX_RUN_BYTES", default_value = "1GiB", value_parser = parse_run_bytes)]
    compaction_max_run_bytes: u64,
    /// Compact a topic once this many sealed segments wait (0 = never automatically).
    #[arg(long, env = "FRAMECAST_COMPACT_AFTER_SEGMENTS", default_value_t = 4)]
    compact_after_segments: usize,
    /// Client connections served at once, on the gRPC and HTTP listeners together; more
    /// wait to be accepted until one closes.
    #[arg(long, env = "FRAMECAST_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Concurrent HTTP/2 streams (calls, subscriptions) per connection.
    #[arg(long, env = "FRAMECAST_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// HTTP/2 receive window per stream: bytes a client may send ahead on one call.
    #[arg(long, env = "FRAMECAST_HTTP2_STREAM_WINDOW", default_value = "1MiB", value_parser = parse_window)]
    http2_stream_window: u32,
    /// HTTP/2 receive window per connection, shared by its streams.
    #[arg(long, env = "FRAMECAST_HTTP2_CONNECTION_WINDOW", default_value = "2MiB", value_parser = parse_window)]
    http2_connection_window: u32,
    /// Require a JWT on every call; HS256 tokens are checked with this file's bytes (one
    /// trailing newline stripped). `framecast token` mints such tokens. Repeat it while a
    /// secret is rotated: a token signed with any of them is accepted (a cluster node mints
    /// its own token with the first).
    #[arg(long, env = "FRAMECAST_AUTH_JWT_SECRET_FILE", value_name = "FILE")]
    auth_jwt_secret_file: Vec<PathBuf>,
    /// Require a JWT on every call; RS256 or ES256 tokens are checked with this PEM public key.
    /// Repeat it while keys are rotated: a token verified by any of them is accepted.
    #[arg(long, env = "FRAMECAST_AUTH_JWT_PUBLIC_KEY", value_name = "FILE")]
    auth_jwt_public_key: Vec<PathBuf>,
    /// With auth on, every token must carry this issuer (`iss`).
    #[arg(long, env = "FRAMECAST_AUTH_ISSUER", value_name = "ISS")]
    auth_issuer: Option<String>,
    /// With auth on, every token's audience (`aud`, a string or an array) must hold this.
    #[arg(long, env = "FRAMECAST_AUTH_AUDIENCE", value_name = "AUD")]
    auth_audience: Option<String>,
    /// Serve TLS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(
        long,
        env = "FRAMECAST_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "FRAMECAST_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Require a client certificate signed by a CA of this PEM file (mutual TLS): a client
    /// without one is refused at the handshake. Needs --tls-cert.
    #[arg(
        long,
        env = "FRAMECAST_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// Run as a node of a cluster coordinated through these etcd endpoints
    /// (`http://host:2379`, comma-separated). Without it the server is a single node.
    #[arg(long, env = "FRAMECAST_CLUSTER_ETCD", value_delimiter = ',', value_name = "URL", requires_all = ["node_id", "advertise"])]
    cluster_etcd: Vec<String>,
    /// This node's id in the cluster (unique; stable across restarts).
    #[arg(long, env = "FRAMECAST_NODE_ID")]
    node_id: Option<String>,
    /// The gRPC address (HOST:PORT) clients and the other nodes reach this node at.
    #[arg(long, env = "FRAMECAST_ADVERTISE")]
    advertise: Option<String>,
    /// The HTTP door's URL other nodes and clients are told (`http://host:7071`).
    #[arg(long, env = "FRAMECAST_ADVERTISE_HTTP", default_value = "")]
    advertise_http: String,
    /// The cluster's name: its keys live under /framecast/<name>/ in etcd.
    #[arg(long, env = "FRAMECAST_CLUSTER", default_value = "framecast")]
    cluster: String,
    /// Writes are refused (UNAVAILABLE) while fewer members are in sync.
    #[arg(long, env = "FRAMECAST_MIN_INSYNC", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    min_insync: u64,
    /// The node's etcd lease: a node silent this long leaves the cluster (a leader stops
    /// acknowledging before it lapses). etcd's minimum is 2s.
    #[arg(long, env = "FRAMECAST_LEASE_TTL", default_value = "5s", value_parser = parse_lease_ttl)]
    lease_ttl: std::time::Duration,
    /// How long a follower may stay behind the leader and remain in sync.
    #[arg(long, env = "FRAMECAST_REPLICA_MAX_LAG", default_value = "10s", value_parser = parse_duration)]
    replica_max_lag: std::time::Duration,
    /// With TLS on (--tls-cert): the PEM CA that signed the other nodes' certificates, which
    /// this node checks when it follows a leader (it presents its own --tls-cert and
    /// --tls-key). Default: --tls-client-ca.
    #[arg(
        long,
        env = "FRAMECAST_CLUSTER_CA_CERT",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    cluster_ca_cert: Option<PathBuf>,
    /// Reach etcd over TLS, checking its certificate against this PEM CA (an `http://`
    /// endpoint is reached at `https://` then).
    #[arg(long, env = "FRAMECAST_CLUSTER_ETCD_CA", value_name = "FILE")]
    cluster_etcd_ca: Option<PathBuf>,
    /// The PEM certificate this node presents to etcd (with `--client-cert-auth` on etcd's
    /// side); needs --cluster-etcd-key and --cluster-etcd-ca.
    #[arg(
        long,
        env = "FRAMECAST_CLUSTER_ETCD_CERT",
        value_name = "FILE",
        requires_all = ["cluster_etcd_key", "cluster_etcd_ca"]
    )]
    cluster_etcd_cert: Option<PathBuf>,
    /// The PEM private key of --cluster-etcd-cert.
    #[arg(
        long,
        env = "FRAMECAST_CLUSTER_ETCD_KEY",
        value_name = "FILE",
        requires = "cluster_etcd_cert"
    )]
    cluster_etcd_key: Option<PathBuf>,
    /// With auth on: a file holding the token this node presents to the leader (admin,
    /// subject framecast-node-<ID>), read again at each connection: replace the token
    /// there before it expires. Without it, a node with --auth-jwt-secret-file mints its
    /// own.
    #[arg(long, env = "FRAMECAST_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Settings from a TOML file whose keys are flag names (`data-dir = "/var/lib/x"`);
    /// a flag beats its FRAMECAST_<FLAG> environment variable, which beats the file.
    #[arg(long, env = "FRAMECAST_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as plain text or as one JSON object per line.
    #[arg(
        long,
        env = "FRAMECAST_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json"
    )]
    log_format: LogFormat,
}

/// An HTTP/2 window: 64 KiB - 1 (the protocol's initial window) up to 2 GiB - 1.
fn parse_window(s: &str) -> Result<u32, String> {
    let n = parse_bytes(s)?;
    if !(65_535..=0x7fff_ffff).contains(&n) {
        return Err(format!(
            "window '{s}' must be between 65535 bytes and 2GiB - 1"
        ));
    }
    u32::try_from(n).map_err(|e| e.to_string())
}

/// The publish budget: 1 byte to 4 GiB - 1 (what one wait for it can ask).
fn parse_publish_budget(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if !(1..=u64::from(u32::MAX)).contains(&n) {
        return Err(format!("'{s}' must be between 1 byte and 4GiB - 1"));
    }
    Ok(n)
}

/// A node's etcd lease: at least 2s, etcd's minimum (etcd would lengthen a shorter one
/// behind the node's back, and a leader stops acknowledging a third of its lease early).
fn parse_lease_ttl(s: &str) -> Result<std::time::Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl < std::time::Duration::from_secs(2) {
        return Err(format!("lease TTL '{s}' is under etcd's minimum of 2s"));
    }
    Ok(ttl)
}

/// The most record bytes of one sorted run: 1 byte up to 4 GiB (a run's offset map holds
/// 32-bit positions; just under 4 GiB is used for "4GiB").
fn parse_run_bytes(s: &str) -> Result<u64, String> {
    let n = parse_bytes(s)?;
    if !(1..=4 << 30).contains(&n) {
        return Err(format!("run size '{s}' must be between 1 byte and 4GiB"));
    }
    Ok(n)
}

/// `HOST:PORT` (a name is resolved, its first address taken) or `:PORT` (loopback).
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let full = match s.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => s.to_string(),
    };
    full.to_socket_addrs()
        .map_err(|e| format!("'{s}' is not HOST:PORT or :PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

/// Where the HTTP door listens, if at all.
#[derive(Debug, Clone, Copy)]
struct HttpListen(Option<std::net::SocketAddr>);

/// `off`, or what `--listen` takes.
fn parse_http_listen(s: &str) -> Result<HttpListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpListen(None));
    }
    parse_listen(s).map(|a| HttpListen(Some(a)))
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`, and the spans.
    Json,
}

fn init_tracing() {
    init_logs(LogFormat::Text);
}

fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// `serve --config FILE` (or FRAMECAST_CONFIG): every key of the TOML file becomes the
/// FRAMECAST_<FLAG> environment variable of that flag unless it is already set, so clap sees
/// a flag first, then the real environment, then the file. Unknown keys are an error.
fn load_config_file(raw: &[std::ffi::OsString]) -> Result<(), String> {
    use clap::CommandFactory;
    if raw.get(1).and_then(|a| a.to_str()) != Some("serve") {
        return Ok(());
    }
    let mut path = std::env::var_os("FRAMECAST_CONFIG").map(PathBuf::from);
    let mut it = raw.iter().skip(2);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    let cli = Cli::command();
    let serve = cli
        .find_subcommand("serve")
        .ok_or("no serve command")?
        .clone();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()) && flag != "config")
            .ok_or_else(|| {
                format!(
                    "--config {}: unknown setting '{key}' (keys are serve flag names, e.g. data-dir)",
                    path.display()
                )
            })?;
        let Some(env) = arg.get_env() else {
            continue;
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A flag that takes several values (cors-origin, cluster-etcd): a list of them,
            // or one comma-separated string, as its environment variable takes them.
            toml::Value::Array(items) if arg.get_value_delimiter() == Some(',') => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(v) if !v.is_empty() && !v.contains(',') => {
                            values.push(v)
                        }
                        other => {
                            return Err(format!(
                                "--config {}: '{key}' lists non-empty strings without commas, not {other}",
                                path.display()
                            ))
                        }
                    }
                }
                if values.is_empty() {
                    return Err(format!(
                        "--config {}: '{key}' is an empty list (leave the key out instead)",
                        path.display()
                    ));
                }
                values.join(",")
            }
            other => {
                return Err(format!(
                    "--config {}: '{key}' must be a string, number or boolean, not {}",
                    path.display(),
                    other.type_str()
                ))
            }
        };
        if std::env::var_os(env).is_none() {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var(env, text);
        }
    }
    Ok(())
}

/// Test builds only (`--features failpoints`): arms the fail points `FRAMECAST_FAILPOINTS`
/// names, if set, for `command`.
#[cfg(feature = "failpoints")]
fn arm_failpoints(command: &str) -> Result<(), ExitCode> {
    if let Ok(spec) = std::env::var("FRAMECAST_FAILPOINTS") {
        if let Err(e) = framecast::wal::failpoint::arm_spec(&spec) {
            eprintln!("framecast {command}: FRAMECAST_FAILPOINTS: {e}");
            return Err(ExitCode::from(2));
        }
        tracing::warn!(%spec, "fail points armed");
    }
    Ok(())
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logs(args.log_format);
    // Test builds only (`--features failpoints`): fail points armed from the environment,
    // so tests can make a real node's disk fail (`commit.sync@300`).
    #[cfg(feature = "failpoints")]
    if let Err(code) = arm_failpoints("serve") {
        return code;
    }
    // The token a cluster node presents to the leader when auth is on.
    if (args.auth_issuer.is_some() || args.auth_audience.is_some())
        && args.auth_jwt_secret_file.is_empty()
        && args.auth_jwt_public_key.is_empty()
    {
        eprintln!(
            "framecast serve: --auth-issuer and --auth-audience need --auth-jwt-secret-file or \
             --auth-jwt-public-key"
        );
        return ExitCode::from(2);
    }
    let auth_expected = framecast::broker::token::Expected {
        issuer: args.auth_issuer.clone(),
        audience: args.auth_audience.clone(),
    };
    let node_token = match (&args.cluster_token_file, args.auth_jwt_secret_file.first()) {
        (Some(file), _) => match std::fs::read_to_string(file) {
            Ok(t) => {
                let t = t.trim().to_string();
                if let Some(id) = &args.node_id {
                    if let Err(e) = framecast::broker::token::check_node_token(&t, id) {
                        eprintln!(
                            "framecast serve: --cluster-token-file {}: {e}",
                            file.display()
                        );
                        return ExitCode::from(2);
                    }
                }
                NodeToken::Fixed {
                    path: file.clone(),
                    at_start: t,
                }
            }
            Err(e) => {
                eprintln!(
                    "framecast serve: --cluster-token-file {}: {e}",
                    file.display()
                );
                return ExitCode::from(2);
            }
        },
        (None, Some(secret)) => match framecast::broker::token::read_secret(secret) {
            Ok(secret) => NodeToken::Minted {
                secret,
                expected: auth_expected.clone(),
            },
            Err(e) => {
                eprintln!("framecast serve: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => NodeToken::None,
    };
    // With TLS on, a cluster node follows its leader over TLS: it checks the leader's
    // certificate against the cluster CA and presents its own.
    let peer_tls = if args.cluster_etcd.is_empty() {
        None
    } else {
        match peer_tls(&args) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("framecast serve: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let etcd_tls = match etcd_tls(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("framecast serve: {e}");
            return ExitCode::from(2);
        }
    };
    let config = ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir,
        log: LogConfig {
            segment_bytes: args.segment_bytes,
            fsync: args.fsync,
            max_frame_bytes: usize::try_from(args.max_frame_bytes).unwrap_or(usize::MAX),
            dedup_window: args.dedup_window,
            dedup_max_keys: args.dedup_max_keys,
            retention: Retention {
                // 0 means no limit, as in CreateTopic: never "remove everything".
                max_age: args.retention_max_age.filter(|age| !age.is_zero()),
                max_bytes: args.retention_max_bytes.filter(|&bytes| bytes > 0),
            },
            ..LogConfig::default()
        },
        maintenance: MaintenanceConfig {
            compact_after_segments: args.compact_after_segments,
            compact: CompactOptions {
                bytes_per_sec: (args.compaction_mb_per_sec > 0)
                    .then(|| args.compaction_mb_per_sec.saturating_mul(1 << 20)),
                max_run_bytes: args.compaction_max_run_bytes,
                ..CompactOptions::default()
            },
            ..MaintenanceConfig::default()
        },
        max_subscribers: args.max_subscribers,
        max_queued_publish_bytes: args.max_queued_publish_bytes,
        auto_create_topics: !args.no_auto_create_topics,
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        http2: Http2Limits {
            max_streams_per_connection: args.max_streams_per_connection,
            stream_window: args.http2_stream_window,
            connection_window: args.http2_connection_window,
        },
        auth_jwt_secret_files: args.auth_jwt_secret_file,
        auth_jwt_public_keys: args.auth_jwt_public_key,
        auth_expected,
        http_listen: args.http_listen.0,
        metrics_public: args.metrics_public,
        cors_origins: args.cors_origins,
        metrics_max_topics: args.metrics_max_topics,
        cluster: (!args.cluster_etcd.is_empty()).then(|| ClusterConfig {
            etcd: args.cluster_etcd.clone(),
            etcd_tls,
            cluster: args.cluster.clone(),
            node_id: args.node_id.clone().unwrap_or_default(),
            advertise: args.advertise.clone().unwrap_or_default(),
            advertise_http: args.advertise_http.clone(),
            // Set once the server holds the data directory's lock.
            home: String::new(),
            min_insync: usize::try_from(args.min_insync).unwrap_or(usize::MAX),
            lease_ttl: args.lease_ttl,
            replica_max_lag: args.replica_max_lag,
            token: node_token.clone(),
            tls: peer_tls,
        }),
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            }),
            // clap requires both or neither.
            _ => None,
        },
        ..ServerConfig::default()
    };
    if let Err(e) = config.log.validate() {
        eprintln!("framecast serve: {e}");
        return ExitCode::from(2);
    }
    if config.data_dir.exists() && !config.data_dir.is_dir() {
        eprintln!(
            "framecast serve: --data-dir {} exists and is not a directory",
            config.data_dir.display()
        );
        return ExitCode::from(2);
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        settings = ?config,
        "framecast serve starting"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("framecast serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let signal = shutdown_signal().map_err(|e| format!("cannot watch for signals: {e}"))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        framecast::server::run(config, listener, signal)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Printed once, plainly, as the last line: the log already has the details.
        Err(e) => {
            eprintln!("framecast serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How a cluster node with TLS reaches the other nodes: the cluster CA (`--cluster-ca-cert`,
/// else `--tls-client-ca`) and its own certificate and key; `None` without TLS.
fn peer_tls(args: &ServeArgs) -> Result<Option<framecast::client::ClientTls>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let Some(ca) = args
        .cluster_ca_cert
        .as_ref()
        .or(args.tls_client_ca.as_ref())
    else {
        return Err(
            "a cluster node with --tls-cert follows its leader over TLS: give it \
                    --cluster-ca-cert FILE (the CA that signed the other nodes' certificates)"
                .into(),
        );
    };
    let ca_flag = if args.cluster_ca_cert.is_some() {
        "--cluster-ca-cert"
    } else {
        "--tls-client-ca"
    };
    Ok(Some(framecast::client::ClientTls {
        ca_pem: Some(read(ca_flag, ca)?),
        identity: Some((read("--tls-cert", cert)?, read("--tls-key", key)?)),
    }))
}

/// How a cluster node reaches etcd: over TLS with `--cluster-etcd-ca` (and its own
/// certificate with `--cluster-etcd-cert`/`--cluster-etcd-key`), else in plaintext.
fn etcd_tls(args: &ServeArgs) -> Result<Option<framecast::client::ClientTls>, String> {
    let Some(ca) = &args.cluster_etcd_ca else {
        return Ok(None);
    };
    let identity = match (&args.cluster_etcd_cert, &args.cluster_etcd_key) {
        (Some(cert), Some(key)) => Some((
            read("--cluster-etcd-cert", cert)?,
            read("--cluster-etcd-key", key)?,
        )),
        // clap requires both or neither.
        _ => None,
    };
    Ok(Some(framecast::client::ClientTls {
        ca_pem: Some(read("--cluster-etcd-ca", ca)?),
        identity,
    }))
}

/// The bytes of the file `path` given with `flag`; the error names both.
fn read(flag: &str, path: &PathBuf) -> Result<bytes::Bytes, String> {
    std::fs::read(path)
        .map(bytes::Bytes::from)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// Runs a client command on a small runtime; errors go to stderr with exit code 1.
/// A client command's failure, and the exit code it ends the command with.
trait CommandFailure: std::fmt::Display {
    /// 1 unless the failure says otherwise.
    fn exit_code(&self) -> u8 {
        1
    }
}

impl CommandFailure for cli::Error {}

impl CommandFailure for cli::publish::Failure {
    fn exit_code(&self) -> u8 {
        cli::publish::Failure::exit_code(self)
    }
}

fn client_command<E: CommandFailure>(
    name: &str,
    fut: impl std::future::Future<Output = Result<u64, E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("framecast {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("framecast {name}: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Watches SIGINT and SIGTERM from now on; the future completes at the first of them.
///
/// Called before startup, not when the server first polls it: a signal during recovery or
/// while a cluster node joins is kept for the server to act on, instead of killing the
/// process by the default action before its handler exists.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(e) = load_config_file(&raw) {
        eprintln!("framecast serve: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(raw);
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Compact {
            data_dir,
            topic,
            dedup_window,
            max_run_bytes,
        } => {
            init_tracing();
            match framecast::server::compact_offline(
                &data_dir,
                topic.as_deref(),
                dedup_window,
                max_run_bytes,
            ) {
                Ok(reports) => {
                    for (name, r) in reports {
                        let Some(r) = r else {
                            println!(
                                "{name}: a cluster node's copy, left alone (it compacts while the node runs, below its commit point)"
                            );
                            continue;
                        };
                        println!(
                            "{name}: {} segments + {} runs -> {} frames, {} -> {} bytes, {} keys dropped",
                            r.segments_in, r.runs_in, r.frames, r.bytes_in, r.bytes_out, r.keys_dropped
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("framecast compact: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Repair { data_dir, topic } => {
            init_tracing();
            // Test builds only: a repair that dies part way (`active.write`).
            #[cfg(feature = "failpoints")]
            if let Err(code) = arm_failpoints("repair") {
                return code;
            }
            match framecast::server::repair_offline(&data_dir, &topic) {
                Ok(outcome) => {
                    for line in outcome.lines(&topic) {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("framecast repair: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Publish(args) => client_command("publish", cli::publish::run(args)),
        Command::Subscribe(args) => client_command("subscribe", cli::subscribe::run(args)),
        Command::History(args) => client_command("history", cli::history::run(args)),
        Command::Topics(args) => client_command("topics", cli::topics::run(args)),
        Command::Cluster(args) => client_command("cluster", cli::cluster::run(args)),
        Command::Token(args) => cli::token::run(args),
        Command::Bench(args) => cli::bench::main(args),
        Command::Dump {
            data_dir,
            topic,
            segment,
            verify,
            json,
        } => {
            let opts = framecast::dump::DumpOptions {
                data_dir,
                topic,
                segment,
                verify,
                json,
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match framecast::dump::run(&opts, &mut out) {
                Ok(outcome) => {
                    use std::io::Write;
                    // A reader that went away (`dump | head`) is no failure.
                    if let Err(e) = cli::written(out.flush()) {
                        eprintln!("framecast dump: {e}");
                        return ExitCode::from(2);
                    }
                    eprintln!(
                        "{} segments, {} records, {} bad, {} torn tails",
                        outcome.segments, outcome.records, outcome.bad, outcome.torn_tails
                    );
                    if verify && outcome.bad > 0 {
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                // The reader went away (`dump | head`): not an error.
                Err(framecast::wal::Error::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("framecast dump: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
