//! `framecast cluster`: the cluster as a node describes it (the term, the leader, every node
//! with its role, in-sync and online state, and with `--topics` each topic's positions),
//! what an operator otherwise reads with curl or grpcurl.

use std::io::Write;

use super::{written, Result};
use framecast::client::{ClusterEvent, ClusterInfo, Compression};

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
    /// Give up after no node could be reached (or they kept failing) this long (30s, 2m; at
    /// least 1s); with `--watch`, after every node stayed unreachable this long.
    #[arg(long, default_value = "60s", value_parser = super::connect::parse_timeout)]
    pub timeout: std::time::Duration,
    /// Also each node's position in every topic (the next offset it holds and its commit
    /// point; a follower knows only its own, the leader every node's).
    #[arg(long)]
    pub topics: bool,
    /// The answer as one JSON object, as `GET /v1/cluster` gives it.
    #[arg(long)]
    pub json: bool,
    /// Follow the cluster's changes (WatchCluster) until interrupted: the cluster now, then
    /// each change (NODE_ONLINE, NODE_OFFLINE, LEADER_CHANGED) with the cluster after it;
    /// when the node watched goes away, another of `--addr` is watched. With `--json`, one
    /// object per line: `{"kind","node_id","cluster"}`.
    #[arg(long)]
    pub watch: bool,
}

/// Asks and prints; returns how many nodes were listed (with `--watch`, runs until an
/// error: no node answers). An unreachable node is named, at once on stderr and in the
/// error.
pub async fn run(args: ClusterArgs) -> Result<u64> {
    let addr = args.addr.clone();
    ask(args)
        .await
        .map_err(|e| super::connect::name_addr_of(e, &addr))
}

/// [`run`], without naming the address.
async fn ask(args: ClusterArgs) -> Result<u64> {
    let client = super::connect::client(
        "cluster",
        &args.addr,
        &args.credentials,
        args.timeout,
        Compression::None,
    )?;
    if args.watch {
        let mut watch = client.watch_cluster();
        loop {
            let event = watch.next().await?;
            let text = render_event(&event, args.topics, args.json);
            let mut out = std::io::stdout().lock();
            // A reader that went away (a closed pipe) ends the watch.
            if !written(out.write_all(text.as_bytes()).and_then(|()| out.flush()))? {
                return Ok(0);
            }
        }
    }
    let info = client.cluster().await?;
    let text = render(&info, args.topics, args.json);
    let mut out = std::io::stdout().lock();
    written(out.write_all(text.as_bytes()).and_then(|()| out.flush()))?;
    Ok(info.nodes.len() as u64)
}

/// The text `framecast cluster --watch` prints for `event`.
fn render_event(event: &ClusterEvent, topics: bool, json: bool) -> String {
    let kind = event.kind().as_str_name().to_string();
    let cluster = event.cluster.clone().unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "kind": kind,
            "node_id": event.node_id,
            "cluster": framecast::http::json::cluster_info(&cluster),
        });
        return format!("{v}\n");
    }
    let about = if event.node_id.is_empty() {
        String::new()
    } else {
        format!(" {}", event.node_id)
    };
    format!("{kind}{about}\n{}", render(&cluster, topics, false))
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

    #[test]
    fn a_watched_change_names_its_kind_and_node_then_the_cluster_after_it() {
        let event = ClusterEvent {
            kind: framecast::client::ClusterEventKind::NodeOffline as i32,
            node_id: "b".into(),
            cluster: Some(ClusterInfo {
                term: 7,
                leader: "a:7070".into(),
                nodes: vec![node("a", true, true), node("b", false, false)],
            }),
        };
        let text = render_event(&event, false, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NODE_OFFLINE b");
        assert_eq!(lines[1], "term 7, leader a:7070");
        assert_eq!(lines.len(), 5);
        let line = render_event(&event, false, true);
        assert_eq!(line.matches('\n').count(), 1, "one line: {line}");
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["kind"], "NODE_OFFLINE");
        assert_eq!(json["node_id"], "b");
        assert_eq!(json["cluster"]["nodes"][1]["online"], false);
    }
}
