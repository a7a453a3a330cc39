//! `framecast publish`: frames from arguments, a file, or one per stdin line.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use framecast::client::{Compression, Error, Result};

/// What to publish.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Server address; for a cluster, several, comma-separated (a:7070,b:7070): when one
    /// cannot be reached the next is tried, and writes go to the leader a follower names.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7070",
        value_name = "ADDR[,ADDR...]"
    )]
    pub addr: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub credentials: super::connect::Credentials,
    /// Topic ("" = default).
    #[arg(long, default_value = "default")]
    pub topic: String,
    /// Number the frames N, N+1, … (the default, from 0); a frame past 2^64 - 1 is refused.
    #[arg(long, conflicts_with = "seq_no", allow_negative_numbers = true, value_parser = super::seq::parse_seq_no)]
    pub seq_from: Option<u64>,
    /// Give every frame this seq_no.
    #[arg(long, allow_negative_numbers = true, value_parser = super::seq::parse_seq_no)]
    pub seq_no: Option<u64>,
    /// Send this file's bytes as one frame.
    #[arg(long, conflicts_with = "payloads")]
    pub file: Option<PathBuf>,
    /// Give up after the server has been unreachable (or kept failing) this long (30s, 2m).
    #[arg(long, default_value = "60s", value_parser = framecast::server::config::parse_duration)]
    pub timeout: std::time::Duration,
    /// gRPC message compression: requests sent with it, responses asked for with it.
    #[arg(long, default_value = "none", value_name = "none|gzip|zstd")]
    pub compression: Compression,
    /// Print one ack line per frame (offset, timestamp, duplicate).
    #[arg(long, short)]
    pub verbose: bool,
    /// Payloads, one frame each; none: one frame per stdin line.
    pub payloads: Vec<String>,
}

/// Publishes and returns the number of frames acknowledged; an unreachable server is named.
pub async fn run(args: PublishArgs) -> Result<u64> {
    let addr = args.addr.clone();
    publish_all(args)
        .await
        .map_err(|e| super::connect::name_addr(e, &addr))
}

/// Publishes and returns the number of frames acknowledged.
async fn publish_all(args: PublishArgs) -> Result<u64> {
    let client = super::connect::client(
        "publish",
        &args.addr,
        &args.credentials,
        args.timeout,
        args.compression,
    )?;
    let publisher = client.publisher(&args.topic);
    // `None` once the last sequence number (2^64 - 1) was given: one more is refused, not
    // wrapped to 0.
    let mut next_seq = Some(args.seq_from.unwrap_or(0));
    let mut seq = move || match args.seq_no {
        Some(fixed) => Ok(fixed),
        None => {
            let s = next_seq.ok_or_else(|| {
                Error::InvalidArgument(
                    "sequence numbers would pass 2^64 - 1 (give a lower --seq-from)".into(),
                )
            })?;
            next_seq = s.checked_add(1);
            Ok::<u64, Error>(s)
        }
    };
    let mut pending = std::collections::VecDeque::new();
    let mut count = 0;
    // A frame past the last sequence number: the ones before it are still published (and
    // their acks awaited), then the command fails naming it.
    let mut refused = None;
    if let Some(path) = &args.file {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        pending.push_back(publisher.send(seq()?, bytes).await?);
    } else if !args.payloads.is_empty() {
        for p in &args.payloads {
            match seq() {
                Ok(s) => pending.push_back(publisher.send(s, p.clone().into_bytes()).await?),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    } else {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = lines
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::InvalidArgument(format!("stdin: {e}")))?;
            if n == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            match seq() {
                Ok(s) => pending.push_back(publisher.send(s, line.clone()).await?),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
            // Acks already in, in order: printed now, and the first failure (the server
            // unreachable for the whole --timeout, say) ends the command at once instead of
            // at the end of an input that may never end (`tail -f … | framecast publish`).
            settle_ready(&mut pending, &mut count, args.verbose)?;
        }
    }
    let closing = publisher.close();
    for p in pending {
        let ack = p.await?;
        report(&ack, &mut count, args.verbose);
    }
    closing.await;
    match refused {
        Some(e) => Err(e),
        None => Ok(count),
    }
}

/// Takes the acks at the front of `pending` that are in, in order; the first failure ends
/// the command with it.
fn settle_ready(
    pending: &mut std::collections::VecDeque<framecast::client::PendingAck>,
    count: &mut u64,
    verbose: bool,
) -> Result<()> {
    use futures::FutureExt;
    while let Some(front) = pending.front_mut() {
        match front.now_or_never() {
            None => break,
            Some(ack) => {
                pending.pop_front();
                report(&ack?, count, verbose);
            }
        }
    }
    Ok(())
}

/// Counts an ack and, with `--verbose`, prints it.
fn report(ack: &framecast::client::Ack, count: &mut u64, verbose: bool) {
    *count += 1;
    if verbose {
        let _ = writeln!(
            std::io::stdout().lock(),
            "offset={} timestamp={} duplicate={}",
            ack.offset,
            ack.timestamp,
            ack.duplicate
        );
    }
}
