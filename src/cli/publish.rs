//! `framecast publish`: frames from arguments, a file, or one per stdin line.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use framecast::client::{Compression, Error, Result};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// Give up after the server has been unreachable (or kept failing) this long (30s, 2m;
    /// at least 1s); keep it under half the server's --dedup-window, so a retry is never
    /// stored twice.
    #[arg(long, default_value = "60s", value_parser = super::connect::parse_timeout)]
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
pub async fn run(args: PublishArgs) -> Result<u64, Failure> {
    let addr = args.addr.clone();
    publish_all(args).await.map_err(|f| Failure {
        error: super::connect::name_addr(f.error, &addr),
        ..f
    })
}

/// How `framecast publish` failed: the first failure, and what was acknowledged before it.
#[derive(Debug)]
pub struct Failure {
    /// The failure (a refused frame, the server unreachable, input that cannot be read).
    error: Error,
    /// Which input the failure is of, `line 7 (seq_no 16)`; none when it is of no frame.
    of: Option<String>,
    /// Frames acknowledged before it.
    acked: u64,
    /// The seq_no of the last frame acknowledged.
    last_seq: Option<u64>,
    /// Frames sent whose fate is unknown: stored or not (never twice).
    unknown: usize,
    /// Stopped by SIGINT (exit 130), not by a failure.
    interrupted: bool,
}

impl Failure {
    /// `error`, before anything was acknowledged.
    fn of(error: Error, of: Option<String>) -> Failure {
        Failure {
            error,
            of,
            acked: 0,
            last_seq: None,
            unknown: 0,
            interrupted: false,
        }
    }

    /// The exit code: 130 after Ctrl-C, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            130
        } else {
            1
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::of(error, None)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.of, self.interrupted) {
            (_, true) => write!(f, "interrupted")?,
            (Some(of), false) => write!(f, "{of}: {}", self.error)?,
            (None, false) => write!(f, "{}", self.error)?,
        }
        write!(f, "; {} frames acknowledged", self.acked)?;
        if let Some(seq) = self.last_seq {
            write!(f, " (the last seq_no {seq})")?;
        }
        if self.unknown > 0 {
            write!(
                f,
                "; {} sent and not acknowledged: stored or not, never twice",
                self.unknown
            )?;
        } else if !self.interrupted {
            write!(f, "; nothing after it was sent")?;
        }
        Ok(())
    }
}

/// One frame's input: its bytes, and where it came from (`line 3`, `argument 2`, the file).
type Input = std::result::Result<(Vec<u8>, String, Option<OwnedSemaphorePermit>), Error>;

/// Bytes of stdin's lines read ahead of the publisher (which holds up to 64 MiB more).
const READ_AHEAD_BYTES: usize = 16 << 20;

/// Frames in flight (sent, not yet answered) the command holds at most.
const MAX_PENDING: usize = 4096;

/// How long, after Ctrl-C, the command waits for the acks of frames already sent.
const INTERRUPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A frame sent and not yet answered.
struct Sent {
    ack: framecast::client::PendingAck,
    seq: u64,
    of: String,
}

/// Publishes every input in order, printing each ack as it comes (`--verbose`); stops at
/// the first failure (nothing after a refused frame is sent) or at Ctrl-C.
async fn publish_all(args: PublishArgs) -> Result<u64, Failure> {
    let client = super::connect::client(
        "publish",
        &args.addr,
        &args.credentials,
        args.timeout,
        args.compression,
    )?;
    let publisher = client.publisher_until_refused(&args.topic);
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
    let mut inputs = inputs(&args)?;
    let mut pending: std::collections::VecDeque<Sent> = std::collections::VecDeque::new();
    let mut acked = 0u64;
    let mut last_seq = None;
    let mut reading = true;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let stop: Option<Failure> = loop {
        if !reading && pending.is_empty() {
            break None;
        }
        tokio::select! {
            // Answers before new input: a refusal stops the input at once.
            biased;
            _ = &mut interrupt => {
                let mut stopped = Failure::of(Error::NotSent("interrupted".into()), None);
                stopped.interrupted = true;
                break Some(stopped);
            }
            answer = front(&mut pending) => {
                let Some(sent) = pending.pop_front() else { continue };
                match answer {
                    Ok(ack) => {
                        acked += 1;
                        last_seq = Some(sent.seq);
                        report(&ack, args.verbose);
                    }
                    Err(error) => {
                        // Given up after retries, or refused on a stream opened again after
                        // one it went out on broke: this frame's fate is unknown too.
                        let unknown = usize::from(
                            error.is_transient() || matches!(error, Error::FateUnknown { .. }),
                        );
                        let mut failed = Failure::of(error, Some(format!("{} (seq_no {})", sent.of, sent.seq)));
                        failed.unknown = unknown;
                        break Some(failed);
                    }
                }
            }
            input = inputs.recv(), if reading && pending.len() < MAX_PENDING => match input {
                None => reading = false,
                Some(Err(error)) => break Some(Failure::of(error, None)),
                // `_ahead`, the line's share of the read-ahead, goes once it is queued.
                Some(Ok((bytes, of, _ahead))) => {
                    let s = match seq() {
                        Ok(s) => s,
                        Err(error) => break Some(Failure::of(error, Some(of))),
                    };
                    // A full queue (the server unreachable, say) holds the send until the
                    // publisher gives up: Ctrl-C must not wait for that.
                    let queued = tokio::select! {
                        biased;
                        _ = &mut interrupt => None,
                        queued = publisher.send(s, bytes) => Some(queued),
                    };
                    let Some(queued) = queued else {
                        let mut stopped = Failure::of(Error::NotSent("interrupted".into()), None);
                        stopped.interrupted = true;
                        break Some(stopped);
                    };
                    match queued {
                        Ok(ack) => pending.push_back(Sent { ack, seq: s, of }),
                        // The publisher ended at a refusal whose answer is still on its way
                        // to the front of `pending`: that is the failure to tell.
                        Err(_) if !pending.is_empty() => reading = false,
                        Err(error) => break Some(Failure::of(error, Some(format!("{of} (seq_no {s})")))),
                    }
                }
            },
        }
    };
    drop(inputs);
    let Some(mut failure) = stop else {
        publisher.close().await;
        return Ok(acked);
    };
    // Frames sent before the failure (or the interrupt) are still answered and counted;
    // after a refusal, the ones behind it fail at once, not sent. After Ctrl-C the wait is
    // bounded: what is not answered by then is unknown.
    let sent = pending.len();
    let mut answered = 0;
    let mut unknown = 0;
    let drain = async {
        while let Some(next) = pending.pop_front() {
            match next.ack.await {
                Ok(ack) => {
                    acked += 1;
                    last_seq = Some(next.seq);
                    report(&ack, args.verbose);
                }
                Err(Error::NotSent(_)) => {}
                Err(_) => unknown += 1,
            }
            answered += 1;
        }
    };
    if failure.interrupted {
        let _ = tokio::time::timeout(INTERRUPT_WAIT, drain).await;
    } else {
        drain.await;
    }
    failure.unknown += unknown + (sent - answered);
    failure.acked = acked;
    failure.last_seq = last_seq;
    Err(failure)
}

/// The front of `pending`'s answer; never ready while nothing is pending.
async fn front(pending: &mut std::collections::VecDeque<Sent>) -> Result<framecast::client::Ack> {
    match pending.front_mut() {
        Some(sent) => (&mut sent.ack).await,
        None => std::future::pending().await,
    }
}

/// The frames to publish, in order: the arguments, the file, or stdin's lines (read on a
/// thread of their own, so acks are printed as they come while the input waits).
fn inputs(args: &PublishArgs) -> Result<tokio::sync::mpsc::Receiver<Input>, Error> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Input>(256);
    if let Some(path) = &args.file {
        let unreadable =
            |e: std::io::Error| Error::InvalidArgument(format!("{}: {e}", path.display()));
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > framecast::client::MAX_PAYLOAD_BYTES as u64 {
            return Err(Error::InvalidArgument(format!(
                "{}: {size} bytes, more than a frame can hold ({} bytes)",
                path.display(),
                framecast::client::MAX_PAYLOAD_BYTES
            )));
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let _ = tx.try_send(Ok((bytes, path.display().to_string(), None)));
    } else if !args.payloads.is_empty() {
        let payloads = args.payloads.clone();
        tokio::spawn(async move {
            for (i, p) in payloads.into_iter().enumerate() {
                if tx
                    .send(Ok((p.into_bytes(), format!("argument {}", i + 1), None)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    } else {
        let ahead = ReadAhead {
            room: Arc::new(Semaphore::new(READ_AHEAD_BYTES)),
            runtime: tokio::runtime::Handle::current(),
        };
        std::thread::spawn(move || read_lines(std::io::stdin().lock(), &tx, &ahead));
    }
    Ok(rx)
}

/// What stdin's reader may hold ahead of the publisher, and the runtime it waits on.
struct ReadAhead {
    room: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

/// Sends each line of `input` (without its `\n`, or `\r\n`) to `tx` until the input ends,
/// `tx` closes, or a line is longer than a frame can hold (sent as an error).
fn read_lines(mut input: impl BufRead, tx: &tokio::sync::mpsc::Sender<Input>, ahead: &ReadAhead) {
    let limit = framecast::client::MAX_PAYLOAD_BYTES as u64;
    let mut number = 0u64;
    loop {
        number += 1;
        let mut line = Vec::new();
        // One byte past the limit, and the line's end: a longer line is refused, not read
        // whole into memory.
        let read = std::io::Read::take(&mut input, limit + 2).read_until(b'\n', &mut line);
        let item = match read {
            Ok(0) => return,
            Err(e) => Err(Error::InvalidArgument(format!("stdin: {e}"))),
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if line.len() as u64 > limit {
                    Err(Error::InvalidArgument(format!(
                        "line {number} is longer than a frame can hold ({limit} bytes)"
                    )))
                } else {
                    // Counted in bytes, so long lines cannot pile up the channel's count.
                    let cost =
                        u32::try_from(line.len().clamp(1, READ_AHEAD_BYTES)).unwrap_or(u32::MAX);
                    let room = Arc::clone(&ahead.room);
                    match ahead.runtime.block_on(room.acquire_many_owned(cost)) {
                        Ok(held) => Ok((line, format!("line {number}"), Some(held))),
                        Err(_) => return,
                    }
                }
            }
        };
        let last = item.is_err();
        if tx.blocking_send(item).is_err() || last {
            return;
        }
    }
}

/// With `--verbose`, prints an ack.
fn report(ack: &framecast::client::Ack, verbose: bool) {
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
