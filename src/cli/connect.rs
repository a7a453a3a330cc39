//! The client the CLI commands share: a token and TLS files (`--token`, `--ca-cert`), a retry
//! budget from `--timeout`, and a line on stderr as soon as the server cannot be reached
//! (naming the address and the cause), so a user is never left waiting in silence.

use std::path::{Path, PathBuf};
use std::time::Duration;

use framecast::client::{Bearer, Client, ClientTls, Compression, Error, Result, RetryPolicy};

/// The token and TLS files of a client command (`--token`, `--ca-cert`, and for servers that
/// require client certificates `--client-cert` and `--client-key`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Credentials {
    /// Bearer token sent with every call (a JWT; `framecast token` mints one).
    #[arg(long, env = "FRAMECAST_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Connect with TLS, trusting this PEM CA to sign the server's certificate (an
    /// https:// --addr needs it; no system roots are used).
    #[arg(long, env = "FRAMECAST_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate presented to a server that requires one (serve --tls-client-ca).
    #[arg(
        long,
        env = "FRAMECAST_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(
        long,
        env = "FRAMECAST_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<PathBuf>,
}

impl Credentials {
    /// `client` with this token and these TLS files.
    pub fn apply(&self, mut client: Client) -> Result<Client> {
        if let Some(token) = &self.token {
            client = client.with_token(token)?;
        }
        if let Some(ca) = &self.ca_cert {
            client = client.with_ca_cert(read("--ca-cert", ca)?)?;
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            client = client
                .with_client_identity(read("--client-cert", cert)?, read("--client-key", key)?)?;
        }
        Ok(client)
    }

    /// The token as the load generator's connections send it.
    pub fn bearer(&self) -> Result<Bearer> {
        self.token
            .as_deref()
            .map_or_else(|| Ok(Bearer::default()), Bearer::new)
    }

    /// The TLS settings as the load generator's connections use them.
    pub fn tls(&self) -> Result<ClientTls> {
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some((
                read("--client-cert", cert)?.into(),
                read("--client-key", key)?.into(),
            )),
            _ => None,
        };
        Ok(ClientTls {
            ca_pem: self
                .ca_cert
                .as_ref()
                .map(|ca| read("--ca-cert", ca))
                .transpose()?
                .map(Into::into),
            identity,
        })
    }
}

/// A file's bytes; an error names the flag and the file.
fn read(flag: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("{flag} {}: {e}", path.display())))
}

/// A client for `addr` (one address or several, comma-separated) that retries for up to
/// `timeout` and tells stderr when it does, naming the node that failed.
pub fn client(
    command: &'static str,
    addr: &str,
    credentials: &Credentials,
    timeout: Duration,
    compression: Compression,
) -> Result<Client> {
    let client = credentials
        .apply(Client::connect(addr)?)?
        .with_compression(compression)
        .with_retry(RetryPolicy {
            max_elapsed: timeout,
            ..RetryPolicy::default()
        })
        .on_retry(move |r| {
            // The first retry and then every power of two: at once, without a line per try.
            if r.attempt.is_power_of_two() {
                eprintln!(
                    "framecast {command}: cannot reach {} ({}); retrying (attempt {}, for up to {} s in all: --timeout)",
                    r.addr,
                    r.reason,
                    r.attempt,
                    timeout.as_secs()
                );
            }
        });
    Ok(client)
}

/// [`name_addr`] for a command's error: the client's is named, the output's left as it is.
pub fn name_addr_of(e: super::Error, addr: &str) -> super::Error {
    match e {
        super::Error::Client(e) => name_addr(e, addr).into(),
        output => output,
    }
}

/// `e` with the address (or addresses) named when no server could be reached at all.
pub fn name_addr(e: Error, addr: &str) -> Error {
    let what = if addr.contains(',') {
        format!("any of {addr}")
    } else {
        addr.to_string()
    };
    match e {
        Error::Unavailable { attempts, last } => Error::Unavailable {
            attempts,
            last: format!("cannot reach {what}: {last}"),
        },
        other => other,
    }
}

/// The shortest `--timeout` a client command takes: a frame gets this long for its ack
/// before it counts as unanswered, and a shorter budget would fail every frame after it may
/// have been stored.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Parses `--timeout` (`30s`, `2m`), refusing one under [`MIN_TIMEOUT`].
pub fn parse_timeout(s: &str) -> std::result::Result<Duration, String> {
    let d = framecast::server::config::parse_duration(s)?;
    if d < MIN_TIMEOUT {
        return Err(format!(
            "'{s}' is too short: --timeout must be at least {} s",
            MIN_TIMEOUT.as_secs()
        ));
    }
    Ok(d)
}
