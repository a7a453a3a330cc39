//! `framecast subscribe`: print frames, one line each, reconnecting on its own.

use std::io::Write;

use futures::StreamExt;
use serde_json::json;

use super::{hex, payload_text, written, Result};
use framecast::client::{Compression, Frame, ReadFrom};

/// What to subscribe to and how to print it.
#[derive(Debug, Clone, clap::Args)]
pub struct SubscribeArgs {
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
    /// replay_seq_no_start: replay history with seq_no >= this, then follow live.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = super::seq::parse_seq_no)]
    pub from: u64,
    /// Give up after the server has been unreachable (or kept failing) this long (30s, 2m;
    /// at least 1s).
    #[arg(long, default_value = "60s", value_parser = super::connect::parse_timeout)]
    pub timeout: std::time::Duration,
    /// gRPC message compression: requests sent with it, responses asked for with it.
    #[arg(long, default_value = "none", value_name = "none|gzip|zstd")]
    pub compression: Compression,
    /// Where to read from: `leader` (where every call goes) or `followers` (a follower of
    /// the cluster, picked from its Cluster answer; the next one when it fails; where every
    /// call goes when none is online).
    #[arg(long, default_value = "leader", value_name = "leader|followers")]
    pub read_from: ReadFrom,
    /// Stop after this many frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// One JSON object per line.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Payload bytes only, each followed by a newline.
    #[arg(long)]
    pub raw: bool,
}

/// Prints frames until `--count` is reached or the stream fails; an unreachable server is named.
pub async fn run(args: SubscribeArgs) -> Result<u64> {
    let addr = args.addr.clone();
    print_frames(args)
        .await
        .map_err(|e| super::connect::name_addr_of(e, &addr))
}

/// Prints frames until `--count` is reached or the stream fails.
async fn print_frames(args: SubscribeArgs) -> Result<u64> {
    let client = super::connect::client(
        "subscribe",
        &args.addr,
        &args.credentials,
        args.timeout,
        args.compression,
    )?
    .with_read_from(args.read_from);
    let mut frames = client.subscribe(&args.topic, args.from);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    while args.count.is_none_or(|c| printed < c) {
        let Some(frame) = frames.next().await else {
            break;
        };
        let f = frame?;
        if !written(print_frame(&mut out, &f, args.json, args.raw))? {
            break; // stdout closed (e.g. piped into `head`)
        }
        printed += 1;
    }
    Ok(printed)
}

/// Writes one frame to `out` and flushes: its payload and a newline (`raw`), one JSON object
/// (`json`), else one `offset=… seq_no=… timestamp=… replay|live payload=…` line. An error
/// when `out` is closed (piped into `head`, say).
pub(super) fn print_frame(
    out: &mut impl Write,
    f: &Frame,
    json: bool,
    raw: bool,
) -> std::io::Result<()> {
    if raw {
        out.write_all(&f.payload)?;
        out.write_all(b"\n")?;
    } else if json {
        let mut v = json!({"offset": f.offset, "seq_no": f.seq_no, "timestamp": f.timestamp,
                           "live": f.live});
        match std::str::from_utf8(&f.payload) {
            Ok(s) => v["payload"] = json!(s),
            Err(_) => v["payload_hex"] = json!(hex(&f.payload)),
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "offset={} seq_no={} timestamp={} {} payload={}",
            f.offset,
            f.seq_no,
            f.timestamp,
            if f.live { "live" } else { "replay" },
            payload_text(&f.payload)
        )?;
    }
    out.flush()
}
