//! Reading from followers: which node a subscription reads from when the client was asked to
//! spread its subscriptions over a cluster's followers ([`ReadFrom::Followers`]).
//!
//! Before each subscription stream (the first and every resume) the client asks any node for
//! the cluster (`Cluster`), and picks among the online, in-sync followers, round robin from
//! a random start per client: many clients spread evenly. A resume after a failure avoids
//! the node that failed when another is there. When no follower is in sync, the `Cluster`
//! call fails or the server is a single node, the subscription reads where every call goes
//! (a follower out of the in-sync set refuses reads: it may lack acknowledged frames). Every node delivers only committed frames and serves the same
//! cursors, so a subscription moves between nodes exactly.

use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::proto::{ClusterInfo, NodeInfo};

/// Where a client's subscriptions read from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReadFrom {
    /// Where every call goes: the first reachable address, or the leader a follower named
    /// (the default).
    #[default]
    Leader,
    /// A follower of the cluster, spread round robin; the usual route when none is online.
    Followers,
}

impl ReadFrom {
    /// The name the CLI takes (`leader`, `followers`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Leader => "leader",
            ReadFrom::Followers => "followers",
        }
    }
}

impl FromStr for ReadFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<ReadFrom, String> {
        match s {
            "leader" => Ok(ReadFrom::Leader),
            "followers" => Ok(ReadFrom::Followers),
            other => Err(format!(
                "unknown read-from '{other}' (expected leader or followers)"
            )),
        }
    }
}

impl std::fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest time the `Cluster` call before a subscription stream may take; past it the
/// stream opens where every call goes.
pub(crate) const CLUSTER_LOOKUP: Duration = Duration::from_secs(5);

/// The followers a subscription may read from, by id: online, in sync, not the leader,
/// with an address (a follower out of the in-sync set refuses reads, naming the leader).
/// Empty for a single node.
pub(crate) fn candidates(info: &ClusterInfo) -> Vec<&NodeInfo> {
    let mut usable: Vec<&NodeInfo> = info
        .nodes
        .iter()
        .filter(|n| n.online && n.in_sync && !n.leader && !n.address.trim().is_empty())
        .collect();
    usable.sort_by(|a, b| a.id.cmp(&b.id));
    usable
}

/// Round robin over a client's subscriptions, from a random start.
#[derive(Debug)]
pub(crate) struct Picker {
    next: AtomicUsize,
}

impl Default for Picker {
    fn default() -> Picker {
        Picker {
            next: AtomicUsize::new(rand::random_range(0..1 << 16)),
        }
    }
}

impl Picker {
    /// The follower of `info` to read from next, or `None` when there is none; `avoid`:
    /// the address a stream just failed on, left out when another candidate exists.
    pub(crate) fn pick<'a>(
        &self,
        info: &'a ClusterInfo,
        avoid: Option<&str>,
    ) -> Option<&'a NodeInfo> {
        let mut nodes = candidates(info);
        if let Some(avoid) = avoid {
            if nodes.len() > 1 {
                nodes.retain(|n| host_port(&n.address) != host_port(avoid));
            }
        }
        if nodes.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(nodes[i % nodes.len()])
    }
}

/// `HOST:PORT` of an address given with or without a scheme.
pub(crate) fn host_port(addr: &str) -> &str {
    let rest = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    rest.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(id: &str, leader: bool, in_sync: bool, online: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            address: format!("{id}:7070"),
            http_address: format!("http://{id}:8080"),
            leader,
            in_sync,
            online,
            topics: Vec::new(),
        }
    }

    fn cluster(nodes: Vec<NodeInfo>) -> ClusterInfo {
        ClusterInfo {
            term: 7,
            leader: "l:7070".into(),
            nodes,
        }
    }

    #[test]
    fn in_sync_followers_are_picked_round_robin_avoiding_a_failed_one() {
        let info = cluster(vec![
            node("c", false, true, true),
            node("l", true, true, true),
            node("a", false, true, true),
            node("b", false, false, true),
            node("d", false, true, false),
        ]);
        let ids: Vec<&str> = candidates(&info).iter().map(|n| &*n.id).collect();
        assert_eq!(ids, ["a", "c"]);
        let p = Picker::default();
        let picked: Vec<String> = (0..4)
            .map(|_| p.pick(&info, None).unwrap().id.clone())
            .collect();
        assert_ne!(picked[0], picked[1]);
        assert_eq!(picked[0], picked[2]);
        for _ in 0..3 {
            assert_eq!(p.pick(&info, Some("http://a:7070")).unwrap().id, "c");
        }
        // Out of sync only: none (it would refuse the stream).
        let info = cluster(vec![
            node("l", true, true, true),
            node("b", false, false, true),
        ]);
        assert!(p.pick(&info, None).is_none());
        // A single node, or no follower online: none.
        let single = cluster(vec![node("l", true, true, true)]);
        assert!(p.pick(&single, None).is_none());
        let down = cluster(vec![
            node("l", true, true, true),
            node("d", false, true, false),
        ]);
        assert!(p.pick(&down, None).is_none());
    }

    #[test]
    fn read_from_parses_its_two_names() {
        assert_eq!(
            "followers".parse::<ReadFrom>().unwrap(),
            ReadFrom::Followers
        );
        assert_eq!("leader".parse::<ReadFrom>().unwrap(), ReadFrom::Leader);
        assert!("nearest".parse::<ReadFrom>().is_err());
        assert_eq!(ReadFrom::default(), ReadFrom::Leader);
        assert_eq!(ReadFrom::Followers.to_string(), "followers");
    }
}
