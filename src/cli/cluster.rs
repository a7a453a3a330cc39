//! `framecast cluster`: the cluster as a node describes it (the term, the leader, every node
//! with its role, in-sync and online state, and with `--topics` each topic's positions),
//! what an operator otherwise reads with curl or grpcurl.

use std::io::Write;

use framecast::client::{Client, ClusterInfo, Result};

/// Which node to ask, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Server address; several, comma-separated (a:7070,b:7070): when one cannot be
    /// reached the next is asked.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7070",
        value_name = "ADDR[,ADDR...]"
    )]
    pub addr: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub credentials: super::connect::Credentials,
    /// Also each node's position in every topic (the next offset it holds and its commit
    /// point; a follower knows only its own, the leader every node's).
    #[arg(long)]
    pub topics: bool,
    /// The answer as one JSON object, as `GET /v1/cluster` gives it.
    #[arg(long)]
    pub json: bool,
}

/// Asks and prints; returns how many nodes were listed.
pub async fn run(args: ClusterArgs) -> Result<u64> {
    let client = args.credentials.apply(Client::connect(&args.addr)?)?;
    let info = client.cluster().await?;
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", render(&info, args.topics, args.json));
    Ok(info.nodes.len() as u64)
}

/// The text `framecast cluster` prints for `info`.
fn render(info: &ClusterInfo, topics: bool, json: bool) -> String {
    if json {
        return format!("{}\n", framecast::http::json::cluster_info(info));
    }
    let leader = if info.leader.is_empty() {
        "none elected"
    } else {
        info.leader.as_str()
    };
    let mut text = format!("term {}, leader {leader}\n", info.term);
    text.push_str(&format!(
        "{:<16} {:<22} {:<28} {:<8} {:<7} {}\n",
        "node", "address", "http", "role", "in-sync", "online"
    ));
    for n in &info.nodes {
        let yes = |b: bool| if b { "yes" } else { "no" };
        text.push_str(&format!(
            "{:<16} {:<22} {:<28} {:<8} {:<7} {}\n",
            n.id,
            n.address,
            if n.http_address.is_empty() {
                "-"
            } else {
                &n.http_address
            },
            if n.leader { "leader" } else { "follower" },
            yes(n.in_sync),
            yes(n.online)
        ));
        if topics {
            for t in &n.topics {
                text.push_str(&format!(
                    "  {:<24} next {:>12} commit {:>12}\n",
                    t.topic, t.next_offset, t.commit_offset
                ));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use framecast::proto::{NodeInfo, TopicPosition};

    fn node(id: &str, leader: bool, online: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:7070"),
            http_address: String::new(),
            leader,
            in_sync: true,
            online,
            topics: vec![TopicPosition {
                topic: "t".into(),
                next_offset: 7,
                commit_offset: 5,
            }],
        }
    }

    #[test]
    fn a_table_of_nodes_with_their_positions_on_request_or_the_http_json() {
        let info = ClusterInfo {
            term: 42,
            leader: "a:7070".into(),
            nodes: vec![node("a", true, true), node("b", false, false)],
        };
        let text = render(&info, true, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "term 42, leader a:7070");
        assert!(
            lines[2].starts_with("a ") && lines[2].contains("leader") && lines[2].ends_with("yes")
        );
        assert!(lines[3].trim_start().starts_with('t') && lines[3].contains("next            7"));
        assert!(
            lines[4].starts_with("b ") && lines[4].contains("follower") && lines[4].ends_with("no")
        );
        assert_eq!(render(&info, false, false).lines().count(), 4);
        let json: serde_json::Value = serde_json::from_str(&render(&info, false, true)).unwrap();
        assert_eq!(json["term"], "42");
        assert_eq!(json["nodes"][1]["online"], false);
        let none = ClusterInfo {
            leader: String::new(),
            ..info
        };
        assert!(render(&none, false, false).starts_with("term 42, leader none elected\n"));
    }
}
