//! The client the CLI commands share: a retry budget from `--timeout`, and a line on stderr
//! as soon as the server cannot be reached (naming the address and the cause), so a user is
//! never left waiting in silence.

use std::time::Duration;

use framecast::client::{Client, Compression, Error, Result, RetryPolicy};

/// A client for `addr` that retries for up to `timeout` and tells stderr when it does.
pub fn client(
    command: &'static str,
    addr: &str,
    timeout: Duration,
    compression: Compression,
) -> Result<Client> {
    let client = Client::connect(addr)?
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

/// `e` with the address named when the server could not be reached at all.
pub fn name_addr(e: Error, addr: &str) -> Error {
    match e {
        Error::Unavailable { attempts, last } => Error::Unavailable {
            attempts,
            last: format!("cannot reach {addr}: {last}"),
        },
        other => other,
    }
}
