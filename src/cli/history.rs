//! `framecast history`: print a topic's stored frames page by page (History), oldest first
//! or newest first, without subscribing: what a chat shows when it scrolls back.

use futures::StreamExt;

use super::subscribe::print_frame;
use super::{written, Result};
use framecast::client::{Compression, HistoryQuery};

/// Which frames to read and how to print them.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Server address; for a cluster, several, comma-separated (a:7070,b:7070): when one
    /// cannot be reached the next is tried. Every node reads the same pages.
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
    /// Frames with seq_no >= this.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = super::seq::parse_seq_no)]
    pub from: u64,
    /// Newest first (descending order key), as a chat scrolls back.
    #[arg(long)]
    pub reverse: bool,
    /// Stop after this many frames (default: every stored frame of the walk's snapshot).
    #[arg(long)]
    pub count: Option<u64>,
    /// Frames per History page (1 to 10,000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page: u32,
    /// Give up after the server has been unreachable (or kept failing) this long (30s, 2m;
    /// at least 1s).
    #[arg(long, default_value = "60s", value_parser = super::connect::parse_timeout)]
    pub timeout: std::time::Duration,
    /// gRPC message compression: requests sent with it, responses asked for with it.
    #[arg(long, default_value = "none", value_name = "none|gzip|zstd")]
    pub compression: Compression,
    /// One JSON object per line.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Payload bytes only, each followed by a newline.
    #[arg(long)]
    pub raw: bool,
}

/// Prints the frames of one History walk (up to `--count`); an unreachable server is named.
pub async fn run(args: HistoryArgs) -> Result<u64> {
    let addr = args.addr.clone();
    print_history(args)
        .await
        .map_err(|e| super::connect::name_addr_of(e, &addr))
}

/// Prints the frames of one History walk, page by page, up to `--count`.
async fn print_history(args: HistoryArgs) -> Result<u64> {
    let client = super::connect::client(
        "history",
        &args.addr,
        &args.credentials,
        args.timeout,
        args.compression,
    )?;
    let wanted = args.count.unwrap_or(u64::MAX);
    let page = u32::try_from(wanted).map_or(args.page, |w| w.clamp(1, args.page));
    let mut query = HistoryQuery::from(args.from).limit(page);
    if args.reverse {
        query = query.reverse();
    }
    let pages = client.history_pages(&args.topic, query);
    futures::pin_mut!(pages);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    while printed < wanted {
        let Some(page) = pages.next().await else {
            break;
        };
        for f in page?.frames {
            if printed == wanted {
                break;
            }
            if !written(print_frame(&mut out, &f, args.json, args.raw))? {
                return Ok(printed); // stdout closed (e.g. piped into `head`)
            }
            printed += 1;
        }
    }
    Ok(printed)
}
