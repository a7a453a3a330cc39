//! Server settings, and parsing of the values the command line takes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::tls::TlsFiles;
use crate::wal::{CompactOptions, LogConfig};

/// Everything `framecast serve` is told.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory; topics live in `<data_dir>/topics/<topic>/`.
    pub data_dir: PathBuf,
    /// Settings of every topic's log (fsync policy, segment size, frame limit, dedup window).
    pub log: LogConfig,
    /// Open subscriber streams allowed across all topics.
    pub max_subscribers: usize,
    /// Payload bytes of publishes taken in and not yet written to their logs, across the
    /// server; past it publishers wait (`--max-queued-publish-bytes`).
    pub max_queued_publish_bytes: u64,
    /// Create a topic on first publish or subscribe.
    pub auto_create_topics: bool,
    /// How long graceful shutdown may take before open streams are cut.
    pub shutdown_grace: Duration,
    /// Interval of HTTP/2 keepalive pings, so dead peers are noticed.
    pub keepalive_interval: Duration,
    /// Retention passes and automatic compaction.
    pub maintenance: MaintenanceConfig,
    /// Client connections served at once; more wait to be accepted until one closes.
    pub max_connections: usize,
    /// HTTP/2 limits of every connection.
    pub http2: Http2Limits,
    /// `--auth-jwt-secret-file`: HS256 tokens are checked with these files' bytes (any of
    /// them; several while a secret is rotated).
    pub auth_jwt_secret_files: Vec<PathBuf>,
    /// `--auth-jwt-public-key`: RS256 or ES256 tokens are checked with these PEM keys.
    pub auth_jwt_public_keys: Vec<PathBuf>,
    /// `--auth-issuer` and `--auth-audience`: what every token must also carry.
    pub auth_expected: crate::broker::token::Expected,
    /// `--http-listen`: the HTTP door (REST, `/metrics`, `/healthz`); `None` is `off`.
    pub http_listen: Option<SocketAddr>,
    /// `--metrics-public`: `/metrics` without a token even when auth is on.
    pub metrics_public: bool,
    /// `--cors-origin`: origins whose pages may call both doors (`*`: any); empty: none.
    pub cors_origins: Vec<String>,
    /// `--metrics-max-topics`: topics with their own metric series; the rest are summed
    /// under `topic="_other"`.
    pub metrics_max_topics: usize,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`: TLS on the listeners; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// `--cluster-etcd` and the other cluster flags; `None`: a single node.
    pub cluster: Option<crate::cluster::node::ClusterConfig>,
}

/// HTTP/2 limits of every connection: they bound what a connection can make the server
/// buffer before flow control pushes back on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Concurrent streams (calls) per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// Receive window of each stream: bytes a client may send on a stream before the
    /// server has read them.
    pub stream_window: u32,
    /// Receive window of each connection, shared by its streams.
    pub connection_window: u32,
}

impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_streams_per_connection: 1024,
            stream_window: 1 << 20,
            connection_window: 2 << 20,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            max_subscribers: 100_000,
            max_queued_publish_bytes: crate::broker::core::DEFAULT_PUBLISH_BUDGET as u64,
            auto_create_topics: true,
            shutdown_grace: Duration::from_secs(4),
            keepalive_interval: Duration::from_secs(20),
            maintenance: MaintenanceConfig::default(),
            max_connections: 10_000,
            http2: Http2Limits::default(),
            auth_jwt_secret_files: Vec::new(),
            auth_jwt_public_keys: Vec::new(),
            auth_expected: Default::default(),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 7071))),
            metrics_public: false,
            cors_origins: Vec::new(),
            metrics_max_topics: crate::broker::metrics::DEFAULT_MAX_TOPICS,
            tls: None,
            cluster: None,
        }
    }
}

/// Parses `90s`, `2m`, `1h`, `500ms`, `1d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 90s, 2m or 1h"))?;
    let secs = |k: u64| {
        n.checked_mul(k)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration '{s}' is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(format!(
            "'{s}': unknown unit '{unit}' (use ms, s, m, h or d)"
        )),
    }
}

/// Parses a byte size: `1048576`, `64KiB`, `64MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`
/// as powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 4096 or 64MiB"))?;
    let k: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("'{s}': unknown unit '{unit}'")),
    };
    n.checked_mul(k)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// When and how fast maintenance runs.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceConfig {
    /// How often every topic is looked at.
    pub interval: Duration,
    /// Compact once this many sealed segments wait (0 = never compact automatically).
    pub compact_after_segments: usize,
    /// Compact once sealed segments hold this many bytes.
    pub compact_after_bytes: u64,
    /// Compaction I/O budget.
    pub compact: CompactOptions,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            interval: Duration::from_secs(1),
            compact_after_segments: 4,
            compact_after_bytes: 256 << 20,
            compact: CompactOptions {
                bytes_per_sec: Some(64 << 20),
                ..CompactOptions::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("2 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("1x").is_err());
    }
}
