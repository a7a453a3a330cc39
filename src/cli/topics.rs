//! `framecast topics`: list topics with their figures, create one with settings, delete one —
//! what a user otherwise needs a client program or grpcurl for.

use std::io::Write;

use serde_json::json;

use super::{written, Result};
use framecast::client::{Compression, TopicInfo};
use framecast::server::config::{parse_bytes, parse_duration};

/// Which topic operation, against which server.
#[derive(Debug, Clone, clap::Args)]
pub struct TopicsArgs {
    /// Server address; for a cluster, several, comma-separated (a:7070,b:7070): when one
    /// cannot be reached the next is tried, and writes go to the leader a follower names.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7070",
        value_name = "ADDR[,ADDR...]",
        global = true
    )]
    pub addr: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub credentials: super::connect::Credentials,
    /// Give up after the server has been unreachable (or kept failing) this long (30s, 2m;
    /// at least 1s).
    #[arg(long, default_value = "60s", value_parser = super::connect::parse_timeout, global = true)]
    pub timeout: std::time::Duration,
    /// What to do (default: list).
    #[command(subcommand)]
    pub command: Option<TopicsCommand>,
}

/// A topic operation.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicsCommand {
    /// Every topic with its figures (epoch, frames, bytes, offsets, subscribers, segments;
    /// --json adds the lowest and highest seq_no).
    List {
        /// One JSON object per topic and line.
        #[arg(long)]
        json: bool,
    },
    /// Create a topic, with its own retention (unset or 0: the server's defaults).
    Create {
        /// The topic's name.
        name: String,
        /// Remove frames older than this (90s, 2m, 1h, 7d).
        #[arg(long, value_parser = parse_duration)]
        retention_max_age: Option<std::time::Duration>,
        /// Remove the oldest frames beyond this many stored bytes (e.g. 10GiB).
        #[arg(long, value_parser = parse_bytes)]
        retention_max_bytes: Option<u64>,
    },
    /// Delete a topic and its files; its open streams end with NOT_FOUND.
    Delete {
        /// The topic's name.
        name: String,
    },
}

/// Runs the operation and prints its outcome; returns how many topics it printed or touched.
/// An unreachable server is named, at once on stderr and in the error.
pub async fn run(args: TopicsArgs) -> Result<u64> {
    let addr = args.addr.clone();
    operate(args)
        .await
        .map_err(|e| super::connect::name_addr_of(e, &addr))
}

/// [`run`], without naming the address.
async fn operate(args: TopicsArgs) -> Result<u64> {
    let client = super::connect::client(
        "topics",
        &args.addr,
        &args.credentials,
        args.timeout,
        Compression::None,
    )?;
    let (text, count) = match args.command.unwrap_or(TopicsCommand::List { json: false }) {
        TopicsCommand::List { json } => {
            let mut topics = client.list_topics().await?;
            topics.sort_by(|a, b| a.name.cmp(&b.name));
            let mut text = String::new();
            if !json {
                text = format!(
                    "{:<24} {:>20} {:>10} {:>12} {:>12} {:>12} {:>5} {:>5}\n",
                    "topic", "epoch", "frames", "bytes", "first", "next", "subs", "files"
                );
            }
            for t in &topics {
                text.push_str(&line(t, json));
                text.push('\n');
            }
            (text, topics.len() as u64)
        }
        TopicsCommand::Create {
            name,
            retention_max_age,
            retention_max_bytes,
        } => {
            let t = client
                .create_topic(
                    &name,
                    retention_max_age.map_or(0, whole_seconds),
                    retention_max_bytes.unwrap_or(0),
                )
                .await?;
            (format!("created {} epoch={}\n", t.name, t.epoch), 1)
        }
        TopicsCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            (format!("deleted {name}\n"), 1)
        }
    };
    let mut out = std::io::stdout().lock();
    written(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    Ok(count)
}

/// `age` in the whole seconds `CreateTopic` takes: 0 stays 0 (the server's default, as in
/// the RPC), and a fraction of a second becomes 1 rather than 0.
fn whole_seconds(age: std::time::Duration) -> u64 {
    if age.is_zero() {
        0
    } else {
        age.as_secs().max(1)
    }
}

/// One topic as a table row or a JSON object.
fn line(t: &TopicInfo, json: bool) -> String {
    if json {
        return json!({
            "name": t.name, "epoch": t.epoch, "frames": t.frames, "bytes": t.bytes,
            "first_offset": t.first_offset, "next_offset": t.next_offset,
            "min_seq_no": t.min_seq_no, "max_seq_no": t.max_seq_no,
            "subscribers": t.subscribers, "segments": t.segments,
        })
        .to_string();
    }
    format!(
        "{:<24} {:>20} {:>10} {:>12} {:>12} {:>12} {:>5} {:>5}",
        t.name,
        t.epoch,
        t.frames,
        t.bytes,
        t.first_offset,
        t.next_offset,
        t.subscribers,
        t.segments
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::whole_seconds;

    #[test]
    fn zero_stays_unset_and_a_fraction_rounds_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(90)), 90);
    }
}
