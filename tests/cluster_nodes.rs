//! The cluster with real nodes (the `framecast` binary, three processes on loopback ports)
//! coordinated by a real etcd: one leader elected, followers copying every topic and
//! refusing writes with the leader's address, acks only once the in-sync set holds a
//! frame, `kill -9` of the leader under load over several cycles with every acknowledged
//! frame on the new leader (and the failover time measured), `--min-insync` refusing
//! writes, a leader paused past its lease that must not acknowledge and rejoins as a
//! follower, converged, SSE and WebSocket subscribers moving between nodes with their
//! cursors, and (with `--features failpoints`) a leader whose disk fails
//! leaving so that a follower takes over.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

mod common;
#[path = "common/etcd.rs"]
mod etcd_server;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, read_log, req, Server};
use etcd_server::EtcdServer;
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::{ClusterInfo, ClusterRequest, Frame, LEADER_HEADER};
use rustix::process::{kill_process, Pid, Signal};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// One scenario at a time: each runs etcd and three nodes, and their timing bounds (the
/// failover time, acks stopping within the lease) are measured, not raced against the
/// other scenarios on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lease TTL every node runs with (etcd's minimum).
const TTL: Duration = Duration::from_secs(2);

struct Node {
    id: String,
    /// `127.0.0.1:PORT`, as advertised.
    address: String,
    server: Server,
}

struct Cluster {
    /// Presented on Cluster calls when the nodes run with auth.
    token: Option<String>,
    etcd: EtcdServer,
    name: String,
    dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Node>,
    /// `--lease-ttl` of the nodes started ([`TTL`] unless a scenario says otherwise).
    lease_ttl: String,
}

fn free_port() -> u16 {
    common::fixed_port()
}

fn node_args(
    etcd: &str,
    cluster: &str,
    id: &str,
    address: &str,
    http: &str,
    min_insync: u32,
    lease_ttl: &str,
) -> Vec<String> {
    let http_url = format!("http://{http}");
    [
        "--listen",
        address,
        "--http-listen",
        http,
        "--advertise-http",
        &http_url,
        "--cluster-etcd",
        etcd,
        "--cluster",
        cluster,
        "--node-id",
        id,
        "--advertise",
        address,
        "--lease-ttl",
        lease_ttl,
        "--replica-max-lag",
        "3s",
        "--min-insync",
        &min_insync.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Cluster {
    async fn start(n: usize, min_insync: u32) -> Cluster {
        Cluster::start_with(n, min_insync, &[], None).await
    }

    /// `n` nodes with `extra` flags each; `token` for the harness's own Cluster calls.
    async fn start_with(
        n: usize,
        min_insync: u32,
        extra: &[&str],
        token: Option<String>,
    ) -> Cluster {
        Cluster::start_on(EtcdServer::start().await, n, min_insync, extra, token).await
    }

    /// [`Cluster::start_with`] on a given etcd (one served over TLS, say).
    async fn start_on(
        etcd: EtcdServer,
        n: usize,
        min_insync: u32,
        extra: &[&str],
        token: Option<String>,
    ) -> Cluster {
        let name = format!("t{}", std::process::id() ^ free_port() as u32);
        let mut c = Cluster {
            token,
            etcd,
            name,
            dirs: Vec::new(),
            nodes: Vec::new(),
            lease_ttl: format!("{}s", TTL.as_secs()),
        };
        for _ in 0..n {
            c.add_node(min_insync, extra, &[]);
        }
        c
    }

    /// `n` nodes whose leases last `ttl` (`10s`) instead of [`TTL`].
    async fn start_with_lease(n: usize, min_insync: u32, ttl: &str) -> Cluster {
        let mut c = Cluster::start_on(EtcdServer::start().await, 0, min_insync, &[], None).await;
        c.lease_ttl = ttl.to_string();
        for _ in 0..n {
            c.add_node(min_insync, &[], &[]);
        }
        c
    }

    /// Starts node `n<count + 1>` with `extra` flags, and `env` for its first start only.
    /// A port picked free can be taken before the node binds it (another node's outgoing
    /// connection to etcd, say): such a node starts again on fresh ports, after its lease
    /// (if it joined) has lapsed.
    fn add_node(&mut self, min_insync: u32, extra: &[&str], env: &[(&str, &str)]) {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("n{}", self.nodes.len() + 1);
        let mut attempt = 1;
        let (address, server) = loop {
            let address = format!("127.0.0.1:{}", free_port());
            let http = format!("127.0.0.1:{}", free_port());
            let mut args = node_args(
                &self.etcd.endpoint(),
                &self.name,
                &id,
                &address,
                &http,
                min_insync,
                &self.lease_ttl,
            );
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match Server::try_start_with_env(dir.path(), &args, env) {
                Ok(server) => break (address, server),
                Err(log) if attempt < 3 && log.contains("Address already in use") => {
                    eprintln!("{id}: a port was taken before it bound it; again on fresh ports");
                    attempt += 1;
                    std::thread::sleep(TTL + Duration::from_millis(500));
                }
                Err(log) => panic!("{id} did not start; log:\n{log}"),
            }
        };
        self.dirs.push(dir);
        self.nodes.push(Node {
            id,
            address,
            server,
        });
    }

    fn node(&self, id: &str) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    fn node_mut(&mut self, id: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// What node `id` answers to Cluster, if it answers.
    async fn info(&self, id: &str) -> Option<ClusterInfo> {
        let n = self.node(id);
        let ch = Channel::from_shared(format!("http://{}", n.address))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .ok()?;
        let mut c = BroadcastClient::new(ch);
        let mut request = tonic::Request::new(ClusterRequest {});
        if let Some(t) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        tokio::time::timeout(Duration::from_secs(2), c.cluster(request))
            .await
            .ok()?
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until the live nodes `ids` agree on one leader among them whose in-sync set
    /// has `insync` members, as each of them reads the set (a follower serves reads once it
    /// knows itself in it); its id.
    async fn leader(&self, ids: &[&str], insync: usize, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let mut leaders = BTreeMap::new();
            for id in ids {
                if let Some(info) = self.info(id).await {
                    let l = info.nodes.iter().find(|n| n.leader).map(|n| n.id.clone());
                    let in_sync = info.nodes.iter().filter(|n| n.in_sync).count();
                    leaders.insert(id.to_string(), (l, info.term, in_sync));
                }
            }
            let first = leaders.values().next().cloned();
            if leaders.len() == ids.len() {
                if let Some((Some(l), term, _)) = first {
                    if ids.contains(&l.as_str())
                        && leaders.values().all(|v| {
                            v.0.as_deref() == Some(l.as_str()) && v.1 == term && v.2 >= insync
                        })
                    {
                        return l;
                    }
                }
            }
            assert!(
                start.elapsed() < limit,
                "no agreed leader with {insync} in sync after {limit:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = n.server.log_text();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}", n.id, tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    async fn client(&self, id: &str) -> BroadcastClient<Channel> {
        connect(&format!("http://{}", self.node(id).address)).await
    }
}

/// Every frame of `topic` on node `id`, by offset (a fresh subscription's replay: what the
/// node delivers, below its commit point). A node out of the in-sync set (catching up, say)
/// refuses reads: this waits, up to 30 s, until it serves them.
async fn log_of(c: &Cluster, id: &str, topic: &str) -> Vec<Frame> {
    until_serving(c, id, topic).await;
    read_log(&mut c.client(id).await, topic).await
}

/// Waits until node `id` serves reads of `topic` (a node out of the in-sync set refuses
/// them, naming the leader), up to 30 s.
async fn until_serving(c: &Cluster, id: &str, topic: &str) {
    let start = Instant::now();
    loop {
        let mut client = c.client(id).await;
        match client.subscribe(common::sub_req(topic, 0)).await {
            Err(s) if s.message().contains(OUT_OF_SYNC) => {}
            _ => return,
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{id} is out of sync for 30 s\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `id` delivers `n` frames of `topic`.
async fn until_delivers(c: &Cluster, id: &str, topic: &str, n: usize) {
    let start = Instant::now();
    loop {
        let mut client = c.client(id).await;
        let listed = common::topic_info(&mut client, topic).await;
        if listed.is_some() && log_of(c, id, topic).await.len() >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{id} does not deliver {n} frames of {topic}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET `path` from `follower`'s HTTP door: refused with 503 and `Framecast-Leader` naming the
/// leader's HTTP door. The answer, and that door.
fn http_names_the_leader(
    c: &Cluster,
    follower: &str,
    leader: &str,
    path: &str,
) -> (common::http::Response, String) {
    let follower_http = c.node(follower).server.http.clone().unwrap();
    let leader_http = c.node(leader).server.http.clone().unwrap();
    let refused = common::http::request(&follower_http, "GET", path, &[], b"");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.header("framecast-leader"),
        Some(leader_http.as_str())
    );
    (refused, leader_http)
}

/// Waits until node `id` delivers as many frames of `topic` as `on_leader` holds, and checks
/// they are the leader's, frame for frame.
async fn converged(c: &Cluster, id: &str, topic: &str, on_leader: &[Frame]) {
    until_delivers(c, id, topic, on_leader.len()).await;
    assert!(
        same_frames(on_leader, &log_of(c, id, topic).await),
        "{id} differs from the leader"
    );
}

fn same_frames(a: &[Frame], b: &[Frame]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.offset == y.offset
                && x.seq_no == y.seq_no
                && x.timestamp == y.timestamp
                && x.payload == y.payload
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_copy_its_topics_and_refuse_writes_with_its_address() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let leader = c
        .leader(&["n1", "n2", "n3"], 3, Duration::from_secs(30))
        .await;
    let followers: Vec<&str> = ["n1", "n2", "n3"]
        .into_iter()
        .filter(|n| *n != leader)
        .collect();

    let mut lc = c.client(&leader).await;
    for i in 0..300u64 {
        let payload = vec![b'x'; (i % 50) as usize * 20];
        lc.publish(req("prices", i, &payload)).await.unwrap();
    }
    // A follower refuses writes, naming the leader, and creates nothing.
    let mut fc = c.client(followers[0]).await;
    let refused = fc.publish(req("other", 1, b"x")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(c.node(&leader).address.as_str()),
        "{refused:?}"
    );
    // Over HTTP too, naming the leader's HTTP door.
    let follower_http = c.node(followers[0]).server.http.clone().unwrap();
    let leader_http = c.node(&leader).server.http.clone().unwrap();
    let refused = common::http::request(
        &follower_http,
        "POST",
        "/v1/topics/other/frames?seq_no=1",
        &[],
        b"x",
    );
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(
        refused.header("framecast-leader"),
        Some(leader_http.as_str())
    );
    follower_refuses_subscriptions_to_topics_it_lacks(&c, &leader, followers[0]).await;
    follower_names_the_leader_for_history_it_lacks(&c, &leader, followers[0]).await;
    // Every node delivers the same 300 frames; nobody has the refused topic.
    let on_leader = log_of(&c, &leader, "prices").await;
    assert_eq!(on_leader.len(), 300);
    for f in &followers {
        converged(&c, f, "prices", &on_leader).await;
        let mut client = c.client(f).await;
        assert!(common::topic_info(&mut client, "other").await.is_none());
    }
    // A History token of one node reads the same on another: the first page from the
    // leader, the rest from a follower, one walk of the 300 frames, each once, in order.
    {
        use framecast::client::{Client, HistoryQuery};
        use futures::StreamExt;
        let at_leader = Client::connect(&c.node(&leader).address).unwrap();
        let at_follower = Client::connect(&c.node(followers[1]).address).unwrap();
        let query = HistoryQuery::from(0).limit(120);
        let first = at_leader.history("prices", &query).await.unwrap();
        assert_eq!(first.snapshot_offset, 300);
        let rest: Vec<_> = at_follower
            .history_pages("prices", query.after(first.next.clone()))
            .collect()
            .await;
        let mut walked: Vec<(u64, u64)> =
            first.frames.iter().map(|f| (f.offset, f.seq_no)).collect();
        for page in rest {
            let page = page.unwrap();
            assert_eq!((page.snapshot_offset, page.epoch), (300, first.epoch));
            walked.extend(page.frames.iter().map(|f| (f.offset, f.seq_no)));
        }
        assert_eq!(walked, (0..300u64).map(|i| (i, i)).collect::<Vec<_>>());
    }
    // The Rust client, given a follower first, follows the hint to the leader.
    let client = framecast::client::Client::connect_many(&[
        c.node(followers[0]).address.as_str(),
        c.node(followers[1]).address.as_str(),
    ])
    .unwrap();
    let ack = client
        .publish("prices", 300, &b"via the hint"[..])
        .await
        .unwrap();
    assert_eq!(ack.offset, 300);
    assert_eq!(
        client.current_addr().trim_start_matches("http://"),
        c.node(&leader).address
    );
    // The Cluster answer names the leader and three nodes in sync.
    let info = c.info(followers[1]).await.unwrap();
    assert_eq!(info.leader, c.node(&leader).address);
    assert_eq!(info.nodes.len(), 3);
    assert!(info.nodes.iter().all(|n| n.in_sync && n.online), "{info:?}");
    // The leader's answer lists every node's positions: each holds and commits 301 frames
    // of "prices". A follower lists its own.
    let start = Instant::now();
    loop {
        let info = c.info(&leader).await.unwrap();
        let at = |n: &framecast::proto::NodeInfo| {
            n.topics
                .iter()
                .find(|t| t.topic == "prices")
                .map(|t| (t.next_offset, t.commit_offset))
        };
        if info.nodes.iter().all(|n| at(n) == Some((301, 301))) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = c.info(followers[1]).await.unwrap();
    let own = info.nodes.iter().find(|n| n.id == followers[1]).unwrap();
    assert!(own.topics.iter().any(|t| t.topic == "prices"), "{info:?}");
}

/// A follower lacks topic "other" (only the leader creates topics): it refuses a
/// subscription to it as it refuses a write, `UNAVAILABLE` naming the leader, with or
/// without a resume cursor (its cursor may be of a topic the follower has not copied yet:
/// not an epoch mismatch), over gRPC, SSE and WebSocket, and creates nothing.
async fn follower_refuses_subscriptions_to_topics_it_lacks(
    c: &Cluster,
    leader: &str,
    follower: &str,
) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut fc = c.client(follower).await;
    for resume in [
        None,
        Some(framecast::proto::Cursor {
            epoch: 7,
            ..Default::default()
        }),
    ] {
        let refused = fc
            .subscribe(framecast::proto::SubscribeRequest {
                topic: "other".into(),
                replay_seq_no_start: 0,
                resume,
            })
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{resume:?}: {refused:?}");
        assert!(
            refused
                .message()
                .starts_with("this node does not hold topic 'other' and is not the leader"),
            "{refused:?}"
        );
        assert_eq!(
            refused
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(c.node(leader).address.as_str()),
            "{refused:?}"
        );
    }
    let (refused, leader_http) =
        http_names_the_leader(c, follower, leader, "/v1/topics/other/events?from=0");
    let follower_http = c.node(follower).server.http.clone().unwrap();
    assert_eq!(refused.json()["leader"], leader_http.as_str());
    // A WebSocket error has no headers: its body names the leader.
    let url = format!("{follower_http}/v1/ws").replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let ask = serde_json::json!({"id": 1, "subscribe": {"topic": "other", "from": "0"}});
    ws.send(Message::text(ask.to_string())).await.unwrap();
    let answer = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("an answer within 20 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = msg {
            break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(answer["id"], 1, "{answer}");
    assert_eq!(answer["error"]["code"], "UNAVAILABLE", "{answer}");
    assert_eq!(answer["error"]["leader"], leader_http.as_str(), "{answer}");
    for id in [leader, follower] {
        let mut client = c.client(id).await;
        assert!(
            common::topic_info(&mut client, "other").await.is_none(),
            "{id}"
        );
    }
}

/// History reads what a node holds, and a follower may lack what the leader has: a topic
/// it has not copied (or nobody created), or the frames below another node's snapshot. It
/// names the leader then (`UNAVAILABLE`, as a write), whose answer is final (`NOT_FOUND`,
/// `OUT_OF_RANGE`), and creates nothing. `prices` holds 300 frames on every node.
/// A follower's gRPC refusal of a read that needs `lacks`: UNAVAILABLE, saying so, with
/// the `framecast-leader` trailer naming `leader_addr`.
fn grpc_names_the_leader(refused: &tonic::Status, lacks: &str, leader_addr: &str) {
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.message(),
        format!(
            "this node does not hold {lacks} and is not the leader: the leader is {leader_addr}"
        ),
    );
    assert_eq!(
        refused
            .metadata()
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some(leader_addr),
        "{refused:?}"
    );
}

async fn follower_names_the_leader_for_history_it_lacks(c: &Cluster, leader: &str, follower: &str) {
    use framecast::broker::cursor::CursorToken;
    let leader_addr = c.node(leader).address.as_str();
    let history = |topic: &str, after: &str| framecast::proto::HistoryRequest {
        topic: topic.into(),
        after: after.into(),
        ..Default::default()
    };
    let mut at_follower = c.client(follower).await;
    let mut at_leader = c.client(leader).await;
    let epoch = at_leader
        .history(history("prices", ""))
        .await
        .unwrap()
        .into_inner()
        .epoch;
    let ahead = CursorToken {
        start_seq_no: 0,
        snapshot: 1_000_000,
        epoch,
        last: None,
        reverse: false,
        floor: Some(0),
    }
    .encode();
    for (topic, after, lacks, final_code) in [
        ("other", "", "topic 'other'", Code::NotFound),
        (
            "prices",
            ahead.as_str(),
            "topic 'prices' up to offset 1000000",
            Code::OutOfRange,
        ),
    ] {
        let refused = at_follower
            .history(history(topic, after))
            .await
            .unwrap_err();
        grpc_names_the_leader(&refused, lacks, leader_addr);
        let answer = at_leader.history(history(topic, after)).await.unwrap_err();
        assert_eq!(answer.code(), final_code, "{answer:?}");
    }
    // Over HTTP, naming the leader's HTTP door.
    http_names_the_leader(c, follower, leader, "/v1/topics/other/history?from=0");
    // The Rust client given only the follower follows the hint: the leader's answer.
    let client = framecast::client::Client::connect(&c.node(follower).address).unwrap();
    let query = framecast::client::HistoryQuery::from(0);
    let answer = client.history("other", &query).await.unwrap_err();
    assert!(
        matches!(answer, framecast::client::Error::NotFound(_)),
        "{answer:?}"
    );
    assert_eq!(
        client.current_addr().trim_start_matches("http://"),
        leader_addr
    );
    for id in [leader, follower] {
        let mut client = c.client(id).await;
        assert!(
            common::topic_info(&mut client, "other").await.is_none(),
            "{id}"
        );
    }
}

/// One ack: seq_no, offset, when it arrived, from which node.
type Ack = (u64, u64, Instant, String);

/// A publisher that keeps publishing numbered frames (each with its idempotency key) to
/// whichever node takes them, following the leader hint, and records every ack.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
    task: tokio::task::JoinHandle<()>,
}

fn payload_of(seq: u64) -> Vec<u8> {
    format!("frame {seq} {}", "p".repeat((seq % 40) as usize)).into_bytes()
}

impl Load {
    fn start(addresses: Vec<String>, topic: &str, first_seq: u64) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a, topic) = (Arc::clone(&stop), Arc::clone(&acked), topic.to_string());
        let task = tokio::spawn(async move {
            let mut at = 0usize;
            let mut seq = first_seq;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    assert!(Instant::now() < deadline, "frame {seq} never acknowledged");
                    let address = &addresses[at % addresses.len()];
                    let mut r = req(&topic, seq, &payload_of(seq));
                    r.idempotency_key = format!("k{seq}");
                    let answer = async {
                        let ch = Channel::from_shared(format!("http://{address}"))
                            .unwrap()
                            .connect_timeout(Duration::from_millis(300))
                            .connect()
                            .await
                            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                        BroadcastClient::new(ch).publish(r).await
                    };
                    match tokio::time::timeout(Duration::from_secs(3), answer).await {
                        Ok(Ok(ack)) => {
                            a.lock().unwrap().push((
                                seq,
                                ack.into_inner().offset,
                                Instant::now(),
                                address.clone(),
                            ));
                            break;
                        }
                        Ok(Err(status)) => {
                            let hint = status
                                .metadata()
                                .get(LEADER_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|h| addresses.iter().position(|x| x == h));
                            at = hint.unwrap_or(at + 1);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => at += 1,
                    }
                }
                seq += 1;
            }
        });
        Load { stop, acked, task }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The first ack received after `t` from another node than `old` (an ack the old
    /// leader sent just before it died does not count).
    fn first_ack_after(&self, t: Instant, old: &str) -> Option<Instant> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .find(|x| x.2 > t && x.3 != old)
            .map(|x| x.2)
    }

    /// The longest time between two acks in a row (a stall), and when it ended.
    fn longest_gap(&self) -> (Duration, Option<Instant>) {
        let mut times: Vec<Instant> = self.acked.lock().unwrap().iter().map(|x| x.2).collect();
        times.sort();
        times
            .windows(2)
            .map(|w| (w[1] - w[0], Some(w[1])))
            .max_by_key(|(gap, _)| *gap)
            .unwrap_or((Duration::ZERO, None))
    }

    /// When node `address` last acknowledged a frame.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))] // the failed-disk scenarios'
    fn last_ack_from(&self, address: &str) -> Option<Instant> {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|x| x.3 == address)
            .map(|x| x.2)
    }

    async fn finish(self) -> Vec<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap();
        acked.iter().map(|x| (x.0, x.1)).collect()
    }
}

async fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until node `id`'s log holds `line`, up to 30 s.
async fn until_logged(c: &Cluster, id: &str, line: &str) {
    until(
        &format!("{id} logs '{line}'"),
        Duration::from_secs(30),
        || c.node(id).server.log_text().contains(line),
    )
    .await;
}

/// Every acknowledged `(seq_no, offset)` is in `log` at its offset, once.
fn holds_every_ack(log: &[Frame], acked: &[(u64, u64)]) {
    let by_offset: BTreeMap<u64, &Frame> = log.iter().map(|f| (f.offset, f)).collect();
    for (seq, offset) in acked {
        let f = by_offset
            .get(offset)
            .unwrap_or_else(|| panic!("acknowledged frame {seq} at offset {offset} is lost"));
        assert_eq!(f.seq_no, *seq, "offset {offset} holds another frame");
        assert_eq!(f.payload.as_ref(), payload_of(*seq).as_slice());
    }
    let mut seqs: Vec<u64> = log.iter().map(|f| f.seq_no).collect();
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        n,
        "a frame was stored twice (retries are deduplicated)"
    );
}

/// `cycles` times, under a publisher to "orders": stops the leader (`clean`: SIGTERM, and
/// it must exit 0; else `kill -9`), measures the time from the stop to the first ack by
/// another node, waits for 200 more acks, and restarts the stopped node. Every ack, and the
/// times.
async fn leader_stops_under_load(
    c: &mut Cluster,
    cycles: usize,
    clean: bool,
) -> (Vec<(u64, u64)>, Vec<Duration>) {
    let ids = ["n1", "n2", "n3"];
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let (mut acked, mut seq, mut times) = (Vec::new(), 0, Vec::new());
    for cycle in 0..cycles {
        let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
        let load = Load::start(addresses.clone(), "orders", seq);
        until("some acks", Duration::from_secs(20), || load.acked() >= 200).await;
        let stopped = Instant::now();
        if clean {
            c.node(&leader).server.sigterm();
        } else {
            c.node_mut(&leader).server.kill9();
        }
        let old = c.node(&leader).address.clone();
        until("writes accepted again", Duration::from_secs(20), || {
            load.first_ack_after(stopped, &old).is_some()
        })
        .await;
        let after = load.first_ack_after(stopped, &old).unwrap() - stopped;
        if clean {
            let status = c
                .node_mut(&leader)
                .server
                .wait_exit(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "a clean stop exits 0: {status:?}\n{}",
                c.logs()
            );
        }
        let acks = load.acked();
        until(
            "more acks after the new leader took over",
            Duration::from_secs(20),
            || load.acked() >= acks + 200,
        )
        .await;
        let done = load.finish().await;
        seq = done.last().map_or(seq, |x| x.0 + 1);
        acked.extend(done);
        let how = if clean { "SIGTERM to" } else { "killed" };
        eprintln!("cycle {cycle}: {how} leader {leader}; writes accepted again after {after:?}");
        times.push(after);
        // The stopped node comes back and rejoins as a follower.
        c.node_mut(&leader).server.restart();
    }
    (acked, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_load_loses_no_acknowledged_frame() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let (acked, failovers) = leader_stops_under_load(&mut c, 3, false).await;
    let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
    let on_leader = log_of(&c, &leader, "orders").await;
    holds_every_ack(&on_leader, &acked);
    for id in ids.iter().filter(|id| **id != leader) {
        converged(&c, id, "orders", &on_leader).await;
    }
    eprintln!(
        "failover times (kill -9 to the next ack, lease TTL {TTL:?}): {failovers:?}; {} frames acknowledged",
        acked.len()
    );
    for f in &failovers {
        assert!(
            *f <= TTL + Duration::from_secs(2),
            "writes were accepted again only after {f:?} (lease TTL {TTL:?} + 2 s allowed)"
        );
    }
}

/// Publishes one frame to node `id`; its ack or the refusal.
async fn publish_to(c: &Cluster, id: &str, seq: u64) -> Result<u64, tonic::Status> {
    let mut client = c.client(id).await;
    let mut r = req("orders", seq, &payload_of(seq));
    r.idempotency_key = format!("k{seq}");
    match tokio::time::timeout(Duration::from_secs(15), client.publish(r)).await {
        Ok(answer) => answer.map(|a| a.into_inner().offset),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in 15 s")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_insync_refuses_writes_until_a_follower_is_back_in_sync() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, 2).await;
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    let follower = if leader == "n1" { "n2" } else { "n1" }.to_string();
    for seq in 0..20 {
        publish_to(&c, &leader, seq).await.unwrap();
    }
    c.node_mut(&follower).server.kill9();
    // Once the leader drops the dead follower (its lease lapses), the set is 1 < 2: writes
    // are refused, with UNAVAILABLE, and none is acknowledged: not the ones waiting for the
    // dead follower when it is dropped either (the first call waits for that moment).
    let start = Instant::now();
    let refused = loop {
        match publish_to(&c, &leader, 1000).await {
            Err(s) if s.code() == Code::Unavailable => break s,
            Ok(offset) => panic!("acknowledged at {offset} with one member in sync"),
            Err(other) => {
                assert!(
                    start.elapsed() < Duration::from_secs(40),
                    "never refused: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(
        refused.message().contains("min-insync"),
        "the refusal says why: {refused:?}"
    );
    assert!(publish_to(&c, &leader, 1001).await.is_err());
    // The follower comes back, catches up, is in sync again: writes are taken.
    c.node_mut(&follower).server.restart();
    let ids = ["n1", "n2"];
    c.leader(&ids, 2, Duration::from_secs(30)).await;
    let start = Instant::now();
    while publish_to(&c, &leader, 2000).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "writes never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_leader = log_of(&c, &leader, "orders").await;
    converged(&c, &follower, "orders", &on_leader).await;
}

/// Publishers that keep `topics` busy on node `address`, `per_topic` at a time each, over
/// their own connections; every ack is recorded as (topic, seq_no, offset).
struct BusyTopics {
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<(String, u64, u64)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BusyTopics {
    async fn start(address: &str, topics: &[String], per_topic: u64) -> BusyTopics {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for topic in topics {
            for p in 0..per_topic {
                let mut client = connect(&format!("http://{address}")).await;
                let (s, a, topic) = (Arc::clone(&stop), Arc::clone(&acked), topic.clone());
                tasks.push(tokio::spawn(async move {
                    let mut seq = p * 1_000_000;
                    while !s.load(std::sync::atomic::Ordering::Relaxed) {
                        let mut r = req(&topic, seq, &payload_of(seq));
                        r.idempotency_key = format!("k{seq}");
                        let ack = tokio::time::timeout(Duration::from_secs(10), client.publish(r))
                            .await
                            .unwrap_or_else(|_| panic!("frame {seq} of {topic} never answered"))
                            .unwrap_or_else(|e| panic!("frame {seq} of {topic} refused: {e:?}"));
                        a.lock()
                            .unwrap()
                            .push((topic.clone(), seq, ack.into_inner().offset));
                        seq += 1;
                    }
                }));
            }
        }
        BusyTopics { stop, acked, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops, and returns every topic's acks as (seq_no, offset).
    async fn finish(self) -> BTreeMap<String, Vec<(u64, u64)>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let mut by_topic: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for (topic, seq, offset) in self.acked.lock().unwrap().iter() {
            by_topic
                .entry(topic.clone())
                .or_default()
                .push((*seq, *offset));
        }
        by_topic
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_under_load_on_many_topics_rejoins_the_in_sync_set() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
    let follower = ids.iter().find(|id| **id != leader).unwrap().to_string();
    let others: Vec<&str> = ids.into_iter().filter(|id| *id != follower).collect();
    c.node_mut(&follower).server.kill9();
    c.leader(&others, 2, Duration::from_secs(40)).await;
    // Every topic busy all the time: at no instant does the restarted follower hold every
    // topic's commit point, unless commit points wait for it.
    let topics: Vec<String> = (0..16).map(|i| format!("busy-{i}")).collect();
    let load = BusyTopics::start(&c.node(&leader).address, &topics, 4).await;
    until("acks", Duration::from_secs(20), || load.acked() >= 2_000).await;
    c.node_mut(&follower).server.restart();
    c.leader(&ids, 3, Duration::from_secs(30)).await;
    let before = load.acked();
    until("acks after the rejoin", Duration::from_secs(20), || {
        load.acked() >= before + 1_000
    })
    .await;
    let acked = load.finish().await;
    assert_eq!(acked.len(), topics.len(), "every topic was acknowledged");
    for (topic, acks) in &acked {
        let on_leader = log_of(&c, &leader, topic).await;
        holds_every_ack(&on_leader, acks);
        converged(&c, &follower, topic, &on_leader).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_paused_past_its_lease_registers_again_and_is_back_in_sync() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(60)).await;
    let follower = all.into_iter().find(|id| *id != leader).unwrap();
    let pid = Pid::from_raw(c.node(follower).server.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    // Past its lease, etcd drops its registration: offline, out of the in-sync set.
    let start = Instant::now();
    loop {
        let seen = c
            .info(&leader)
            .await
            .and_then(|i| i.nodes.into_iter().find(|n| n.id == follower));
        if seen.as_ref().is_none_or(|n| !n.online && !n.in_sync) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{follower} still online or in sync: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish_to(&c, &leader, 1).await.unwrap();
    kill_process(pid, Signal::CONT).unwrap();
    // Thawed, it finds its lease gone, registers under a new one and, caught up, is in
    // the set again: every node agrees, and all three are in sync.
    c.leader(&all, 3, Duration::from_secs(30)).await;
    let info = c.info(&leader).await.unwrap();
    let back = info.nodes.iter().find(|n| n.id == follower).unwrap();
    assert!(back.online && back.in_sync, "{back:?}");
    publish_to(&c, &leader, 2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_and_its_followers_fails_the_publish_waiting_on_them() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(60)).await;
    publish_to(&c, &leader, 0).await.unwrap();
    let followers: Vec<Pid> = all
        .iter()
        .filter(|id| **id != leader)
        .map(|id| Pid::from_raw(c.node(id).server.child.id() as i32).unwrap())
        .collect();
    for pid in &followers {
        kill_process(*pid, Signal::STOP).unwrap();
    }
    c.etcd.pause();
    // Taken while its lease still holds, the frame can never be committed: the leader can
    // neither reach a follower nor change the in-sync set. Once the lease may have lapsed
    // the publish fails (UNAVAILABLE, so its client looks for the next leader); it used to
    // wait for as long as the cut lasted.
    let started = Instant::now();
    let answer = publish_to(&c, &leader, 1).await;
    let took = started.elapsed();
    c.etcd.resume();
    for pid in &followers {
        kill_process(*pid, Signal::CONT).unwrap();
    }
    let err = answer.expect_err("nothing to acknowledge it with");
    assert_eq!(err.code(), Code::Unavailable, "{err:?} after {took:?}");
    eprintln!("the publish failed after {took:?} (lease TTL {TTL:?})");
    // The cut healed, the cluster takes writes again.
    let leader = c.leader(&all, 2, Duration::from_secs(60)).await;
    let start = Instant::now();
    while publish_to(&c, &leader, 2).await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_never_acknowledges_and_rejoins_as_follower() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let old = c.leader(&ids, 3, Duration::from_secs(30)).await;
    for seq in 0..50 {
        publish_to(&c, &old, seq).await.unwrap();
    }
    let pid = Pid::from_raw(c.node(&old).server.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    // A publish sent to the frozen leader waits in its socket.
    let mut client = c.client(&old).await;
    let mut r = req("orders", 5000, &payload_of(5000));
    r.idempotency_key = "zombie".into();
    let queued = tokio::spawn(async move { client.publish(r).await });
    let others: Vec<&str> = ids.into_iter().filter(|i| *i != old).collect();
    let new = c.leader(&others, 2, Duration::from_secs(30)).await;
    assert_ne!(new, old);
    for seq in 50..100 {
        publish_to(&c, &new, seq).await.unwrap();
    }
    kill_process(pid, Signal::CONT).unwrap();
    // The old leader answers the queued publish, and a new one, without acknowledging.
    let queued = tokio::time::timeout(Duration::from_secs(20), queued)
        .await
        .expect("the resumed node answers")
        .unwrap();
    assert!(queued.is_err(), "a zombie leader acknowledged: {queued:?}");
    let late = publish_to(&c, &old, 5001).await;
    assert!(late.is_err(), "a zombie leader acknowledged: {late:?}");
    eprintln!("the resumed old leader answered: {queued:?} then {late:?}");
    // It rejoins as a follower of the new leader and converges on its log.
    c.leader(&ids, 3, Duration::from_secs(30)).await;
    let on_leader = log_of(&c, &new, "orders").await;
    assert!(on_leader.iter().all(|f| f.seq_no != 5001));
    converged(&c, &old, "orders", &on_leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_during_50000_publishes_catches_up() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let away = ids.into_iter().find(|i| *i != leader).unwrap().to_string();
    c.node_mut(&away).server.kill9();
    let mut client = c.client(&leader).await;
    let frames: Vec<_> = (0..50_000u64)
        .map(|i| req("bulk", i, format!("bulk frame {i}").as_bytes()))
        .collect();
    let mut acks = client
        .publish_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(ack) = tokio::time::timeout(Duration::from_secs(60), acks.message())
        .await
        .expect("acks keep coming")
        .unwrap()
    {
        assert_eq!(ack.offset, n);
        n += 1;
    }
    assert_eq!(n, 50_000);
    c.node_mut(&away).server.restart();
    c.leader(&ids, 3, Duration::from_secs(60)).await;
    let on_leader = log_of(&c, &leader, "bulk").await;
    assert_eq!(on_leader.len(), 50_000);
    converged(&c, &away, "bulk", &on_leader).await;
}

/// Node `id`'s `framecast_replication_lag_frames` series, `(topic, node) -> frames`.
fn replication_lags_on(c: &Cluster, id: &str) -> std::collections::BTreeMap<(String, String), f64> {
    let door = c.node(id).server.http.clone().unwrap();
    let text = common::http::request(&door, "GET", "/metrics", &[], b"").text();
    text.lines()
        .filter_map(|l| l.strip_prefix("framecast_replication_lag_frames{topic=\""))
        .map(|rest| {
            let (topic, rest) = rest.split_once("\",node=\"").unwrap();
            let (node, value) = rest.split_once("\"} ").unwrap();
            (
                (topic.to_string(), node.to_string()),
                value.parse().unwrap(),
            )
        })
        .collect()
}

/// Polls node `id`'s replication lags until `want` holds them (within 10 s).
async fn until_lags(c: &Cluster, id: &str, want: &[(&str, &str, f64)]) {
    let want: std::collections::BTreeMap<(String, String), f64> = want
        .iter()
        .map(|(t, n, v)| ((t.to_string(), n.to_string()), *v))
        .collect();
    let mut seen = Default::default();
    for _ in 0..500 {
        seen = replication_lags_on(c, id);
        if seen == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{id}'s replication lags: {seen:?}, want {want:?}\n{}",
        c.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_what_each_follower_lacks_in_replication_lag_frames() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let followers: Vec<&str> = ids.into_iter().filter(|i| *i != leader).collect();
    let (paused, other) = (followers[0], followers[1]);
    for seq in 0..10 {
        publish_to(&c, &leader, seq).await.unwrap();
    }
    until_lags(
        &c,
        &leader,
        &[("orders", paused, 0.0), ("orders", other, 0.0)],
    )
    .await;
    // Followers know nothing of each other: no series there.
    for f in &followers {
        assert!(
            replication_lags_on(&c, f).is_empty(),
            "series on follower {f}"
        );
    }
    // Every node counted, online and in sync, in the leader's view.
    let door = c.node(&leader).server.http.clone().unwrap();
    let text = common::http::request(&door, "GET", "/metrics", &[], b"").text();
    for state in ["online", "in_sync"] {
        let series = format!("framecast_cluster_nodes{{state=\"{state}\"}}");
        assert_eq!(common::http::metric(&text, &series), Some(3.0), "{state}");
    }
    // One follower frozen: the 1,000 frames published meanwhile are on the leader and the
    // other follower, not on it. The figures are read while it is frozen, usually within a
    // fraction of a second; a freeze that outlasted its lease would see it dropped from the
    // set (the acks then flow without it), and its stream, and so its figures, stay.
    let pid = Pid::from_raw(c.node(paused).server.child.id() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    let mut client = c.client(&leader).await;
    let frames: Vec<_> = (10..1010u64)
        .map(|i| req("orders", i, format!("frame {i}").as_bytes()))
        .collect();
    let mut acks = client
        .publish_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        until_lags(
            &c,
            &leader,
            &[("orders", paused, 1000.0), ("orders", other, 0.0)],
        ),
    )
    .await;
    kill_process(pid, Signal::CONT).unwrap();
    seen.unwrap();
    // Thawed, it catches up: the acks come, and its lag is back to nothing.
    for n in 10..1010u64 {
        let ack = tokio::time::timeout(Duration::from_secs(30), acks.message())
            .await
            .expect("acks come once the follower is back")
            .unwrap()
            .unwrap();
        assert_eq!(ack.offset, n);
    }
    until_lags(
        &c,
        &leader,
        &[("orders", paused, 0.0), ("orders", other, 0.0)],
    )
    .await;
}

/// The next event of `watch`, within 30 s.
async fn next_event(
    watch: &mut framecast::client::ClusterWatch,
) -> framecast::client::ClusterEvent {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("an event within 30 s")
        .unwrap()
}

/// The Rust client's `watch_cluster` (and `framecast cluster --watch`): the whole cluster
/// first, then a follower's `kill -9` as NODE_OFFLINE; when the node watched stops, the
/// watch moves on to another node, whose first event carries the whole cluster again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_watch_reports_changes_and_moves_on_when_its_node_stops() {
    use framecast::client::{Client, ClusterEvent, ClusterEventKind};
    use std::io::BufRead;
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let followers = others(&ids, &leader);
    let (watched, doomed) = (followers[0].clone(), followers[1].clone());
    let addresses = [&watched, &leader, &doomed].map(|id| c.node(id).address.clone());
    let client = Client::connect_many(&addresses).unwrap();
    let mut watch = client.watch_cluster();
    let first: ClusterEvent = next_event(&mut watch).await;
    assert_eq!(first.kind(), ClusterEventKind::NodeOnline);
    assert_eq!(first.node_id, watched);
    let cluster = first.cluster.clone().unwrap();
    assert_eq!(cluster.nodes.len(), 3, "{cluster:?}");
    assert_eq!(cluster.leader, c.node(&leader).address);

    // The CLI prints the same first event, one JSON object per line.
    let mut cli = std::process::Command::new(common::bin())
        .args(["cluster", "--watch", "--json", "--addr", &addresses[1]])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = cli.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(20), line).await;
    // Killed before any assertion, so a failure leaves no CLI running.
    let _ = cli.kill();
    let _ = cli.wait();
    let line = line.expect("the CLI prints its first event").unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["kind"], "NODE_ONLINE", "{v}");
    assert_eq!(v["node_id"], leader, "{v}");
    assert_eq!(
        v["cluster"]["nodes"].as_array().map(Vec::len),
        Some(3),
        "{v}"
    );

    // Waiting for a change, cancelled by a timeout: the stream stays open (a reopened one
    // would start with this node coming online again, checked below).
    let spurious =
        |e: &ClusterEvent| e.kind() == ClusterEventKind::NodeOnline && e.node_id == watched;
    if let Ok(e) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        let e = e.unwrap();
        assert!(!spurious(&e), "{e:?}");
    }
    // A follower dies: the watch says so.
    c.node_mut(&doomed).server.kill9();
    loop {
        let e = next_event(&mut watch).await;
        assert!(!spurious(&e), "the watch reopened its stream: {e:?}");
        if e.kind() == ClusterEventKind::NodeOffline && e.node_id == doomed {
            break;
        }
    }
    // The node watched stops: the watch moves on, and its first event there is the whole
    // cluster as another node sees it.
    c.node(&watched).server.sigterm();
    let moved = loop {
        let e = next_event(&mut watch).await;
        if e.kind() == ClusterEventKind::NodeOnline && e.node_id != watched {
            break e;
        }
    };
    // The only node left is the leader, next in the client's list.
    assert_eq!(moved.node_id, leader);
    let cluster = moved.cluster.unwrap();
    let me = cluster.nodes.iter().find(|n| n.id == leader).unwrap();
    assert!(me.leader && me.online, "{cluster:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_stops_acks_within_the_lease_and_its_restart_brings_them_back() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let mut acked = Vec::new();
    for seq in 0..50 {
        acked.push((seq, publish_to(&c, &leader, seq).await.unwrap()));
    }
    c.etcd.stop();
    let stopped = Instant::now();
    // Within the lease TTL the leader stops acknowledging: it cannot know it still leads.
    let mut seq = 50;
    loop {
        match publish_to(&c, &leader, seq).await {
            Ok(offset) => {
                acked.push((seq, offset));
                seq += 1;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                break;
            }
        }
        assert!(
            stopped.elapsed() < TTL + Duration::from_secs(1),
            "still acknowledging {:?} after etcd stopped",
            stopped.elapsed()
        );
    }
    eprintln!("acks stopped {:?} after etcd did", stopped.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.etcd.start_again().await;
    // A leader is (re-)established and writes are acknowledged again; nothing acknowledged
    // is lost.
    let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
    let start = Instant::now();
    loop {
        match publish_to(&c, &leader, 10_000).await {
            Ok(offset) => {
                acked.push((10_000, offset));
                break;
            }
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "no writes: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let on_leader = log_of(&c, &leader, "orders").await;
    holds_every_ack(&on_leader, &acked);
}

/// A subscriber on node `id` of `topic` that resumes with its cursor after every break,
/// on the same node or, when it is down, on the next.
struct Reader {
    got: Arc<Mutex<Vec<Frame>>>,
    /// Why each of its streams ended, with the node it was on.
    breaks: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(addresses: Vec<String>, first: usize, topic: &str) -> Reader {
        let got = Arc::new(Mutex::new(Vec::<Frame>::new()));
        let breaks = Arc::new(Mutex::new(Vec::<String>::new()));
        let (g, b, topic) = (Arc::clone(&got), Arc::clone(&breaks), topic.to_string());
        let task = tokio::spawn(async move {
            let mut at = first;
            let mut cursor: Option<framecast::proto::Cursor> = None;
            let (mut snapshot, mut epoch) = (0, 0);
            loop {
                let address = &addresses[at % addresses.len()];
                let opened = async {
                    let ch = Channel::from_shared(format!("http://{address}"))
                        .unwrap()
                        .connect_timeout(Duration::from_millis(300))
                        .connect()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    let mut client = BroadcastClient::new(ch);
                    common::subscribe(
                        &mut client,
                        framecast::proto::SubscribeRequest {
                            replay_seq_no_start: 0,
                            topic: topic.clone(),
                            resume: cursor,
                        },
                    )
                    .await
                };
                let mut sub = match opened.await {
                    Ok(s) => s,
                    Err(_) => {
                        at += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if cursor.is_none() {
                    (snapshot, epoch) = (sub.snapshot, sub.epoch);
                }
                let why = loop {
                    match sub.stream.message().await {
                        Ok(Some(f)) => {
                            cursor = Some(framecast::proto::Cursor {
                                snapshot_offset: snapshot,
                                seq_no: f.seq_no,
                                timestamp: f.timestamp,
                                offset: f.offset,
                                epoch,
                            });
                            g.lock().unwrap().push(f);
                        }
                        Ok(None) => break "ended".to_string(),
                        Err(s) => break s.message().to_string(),
                    }
                };
                b.lock().unwrap().push(format!("{address}: {why}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Reader { got, breaks, task }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_followers_resume_across_a_failover_without_gap_or_duplicate() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    publish_to(&c, &leader, 0).await.unwrap();
    let readers: Vec<Reader> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| **id != leader)
        .map(|(i, _)| Reader::start(addresses.clone(), i, "orders"))
        .collect();
    let load = Load::start(addresses.clone(), "orders", 1);
    until("frames flow", Duration::from_secs(20), || {
        load.acked() >= 300
    })
    .await;
    c.node_mut(&leader).server.kill9();
    let before = load.acked();
    until("writes after the failover", Duration::from_secs(30), || {
        load.acked() >= before + 300
    })
    .await;
    let acked = load.finish().await;
    let new = c
        .leader(
            &ids.iter()
                .copied()
                .filter(|i| *i != leader)
                .collect::<Vec<_>>(),
            2,
            Duration::from_secs(30),
        )
        .await;
    let on_leader = log_of(&c, &new, "orders").await;
    holds_every_ack(&on_leader, &acked);
    for r in &readers {
        until(
            "the reader has every frame",
            Duration::from_secs(30),
            || r.count() >= on_leader.len(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = r.got.lock().unwrap().clone();
        // The followers stay in the in-sync set across the failover: neither ends a
        // subscription as out of sync (a cut of a tail the new leader lacks may end one).
        let breaks = r.breaks.lock().unwrap().clone();
        assert!(
            breaks.iter().all(|b| !b.contains(OUT_OF_SYNC)),
            "{breaks:?}"
        );
        assert!(
            same_frames(&on_leader, &got),
            "a subscriber on a follower saw a gap, a duplicate or another frame: {} frames vs {} on the leader",
            got.len(),
            on_leader.len()
        );
    }
    for r in readers {
        r.task.abort();
    }
}

/// The secret the auth tests' nodes sign and check tokens with.
const SECRET: &[u8] = b"a cluster secret of enough bytes!";

/// A fresh directory holding [`SECRET`] in a file, the file, and an operator's admin token.
fn secret_in_file() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, SECRET).unwrap();
    let admin = common::tokens::token(SECRET, &[], &[], true, Duration::from_secs(600));
    (dir, file, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_nodes_follow_with_their_own_token_and_nobody_else_may() {
    let _serial = SERIAL.lock().await;
    let (_dir, file, admin) = secret_in_file();
    let secret = SECRET;
    let c = Cluster::start_with(
        2,
        2,
        &["--auth-jwt-secret-file", file.to_str().unwrap()],
        Some(admin),
    )
    .await;
    // Two members in sync: the follower follows with the token it minted.
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    let follow = |token: Option<String>, node_id: &'static str| {
        let address = c.node(&leader).address.clone();
        async move {
            let ch = Channel::from_shared(format!("http://{address}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client =
                framecast::cluster::replication_proto::replication_client::ReplicationClient::new(
                    ch,
                );
            let report = framecast::cluster::replication_proto::FollowerReport {
                term: 0,
                node_id: node_id.into(),
                positions: Vec::new(),
                takes_runs: true,
                max_record_bytes: 0,
                ..Default::default()
            };
            let mut request = tonic::Request::new(tokio_stream::iter(vec![report]));
            if let Some(t) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            client.follow(request).await.map(|_| ())
        }
    };
    let anonymous = follow(None, "stranger").await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let reader = common::tokens::token(secret, &[], &[">"], false, Duration::from_secs(600));
    let denied = follow(Some(reader), "stranger").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // An operator's admin token is not a node's: Follow copies every frame, which admin
    // alone may not read, and reports positions that move the commit point.
    let operator = common::tokens::token(secret, &[], &[], true, Duration::from_secs(600));
    let denied = follow(Some(operator), "stranger").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("framecast-node-stranger"),
        "{denied:?}"
    );
    // Nor may one node's token follow as another (its reports would stand for that one's).
    let own_token = |id: &str| node_token(secret, id, Duration::from_secs(600));
    let other = if leader == "n1" { "n2" } else { "n1" };
    let denied = follow(Some(own_token("n3")), other).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // A node's own token passes, and the stream goes on to the leader's own checks (this
    // report names no term).
    let passed = follow(Some(own_token("stranger")), "stranger")
        .await
        .unwrap_err();
    assert_eq!(passed.code(), Code::FailedPrecondition, "{passed:?}");
    // A publisher's frame is acknowledged (so held by both members) and delivered by the
    // follower to a subscriber with a token.
    let writer = common::tokens::token(secret, &["t"], &["t"], false, Duration::from_secs(600));
    let follower = publish_then_read_on_the_follower(&c, &leader, &writer, b"secret frame").await;
    // The Rust client reading from followers asks Cluster and subscribes on the follower,
    // both with its token; without one, the Cluster call is refused and it gives up there.
    use futures::StreamExt;
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let client = framecast::client::Client::connect_many(&addresses)
        .unwrap()
        .with_token(&writer)
        .unwrap()
        .with_read_from(framecast::client::ReadFrom::Followers);
    let mut sub = client.subscribe("t", 0);
    let f = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.payload.as_ref(), b"secret frame");
    assert_eq!(sub.node().unwrap(), c.node(follower).address);
    let anonymous = framecast::client::Client::connect_many(&addresses)
        .unwrap()
        .with_read_from(framecast::client::ReadFrom::Followers);
    let refused = tokio::time::timeout(Duration::from_secs(10), anonymous.subscribe("t", 0).next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            &refused,
            Err(framecast::client::Error::Server {
                code: Code::Unauthenticated,
                ..
            })
        ),
        "{refused:?}"
    );
    // A Follow stream ends when its token expires, as a subscription does.
    let term = c.info(&leader).await.unwrap().term;
    let ch = Channel::from_shared(format!("http://{}", c.node(&leader).address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut replication =
        framecast::cluster::replication_proto::replication_client::ReplicationClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(framecast::cluster::replication_proto::FollowerReport {
        term,
        node_id: "stranger".into(),
        takes_runs: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let short = node_token(secret, "stranger", Duration::from_secs(3));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {short}").parse().unwrap());
    let opened = Instant::now();
    let mut updates = replication.follow(request).await.unwrap().into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match updates.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream outlived its token by far");
    let lasted = opened.elapsed();
    drop(tx);
    let status = ended.expect("the stream ended without a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(lasted >= Duration::from_secs(1), "ended early: {lasted:?}");
    eprintln!("a Follow stream whose token lasted 3 s ended after {lasted:?}");
}

/// Nodes of a cluster that requires an issuer and an audience mint their own tokens with
/// them: the follower is accepted into the in-sync set, and a frame acknowledged by both
/// reaches a subscriber on the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_mint_their_tokens_with_the_issuer_and_audience_the_cluster_requires() {
    let _serial = SERIAL.lock().await;
    let (_dir, file, _) = secret_in_file();
    let expected = framecast::broker::token::Expected {
        issuer: Some("https://id.example.com".into()),
        audience: Some("framecast-cluster".into()),
    };
    let token = |publish: &[&str], subscribe: &[&str], admin: bool| {
        framecast::broker::token::mint_hs256(
            SECRET,
            &framecast::broker::token::MintClaims {
                subject: "someone".into(),
                publish: publish.iter().map(|p| p.to_string()).collect(),
                subscribe: subscribe.iter().map(|p| p.to_string()).collect(),
                admin,
                ttl: Duration::from_secs(600),
                not_before: None,
                expected: expected.clone(),
            },
        )
        .unwrap()
    };
    let c = Cluster::start_with(
        2,
        2,
        &[
            "--auth-jwt-secret-file",
            file.to_str().unwrap(),
            "--auth-issuer",
            "https://id.example.com",
            "--auth-audience",
            "framecast-cluster",
        ],
        Some(token(&[], &[], true)),
    )
    .await;
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    let writer = token(&["t"], &["t"], false);
    publish_then_read_on_the_follower(&c, &leader, &writer, b"for both").await;
}

/// Publishes `payload` to topic `t` on `leader` of a 2-node cluster with `token`, and reads
/// it back from the start on the other node with the same token; returns that node's id.
async fn publish_then_read_on_the_follower(
    c: &Cluster,
    leader: &str,
    token: &str,
    payload: &[u8],
) -> &'static str {
    fn bearer<T>(msg: T, token: &str) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }
    let mut lc = c.client(leader).await;
    lc.publish(bearer(req("t", 1, payload), token))
        .await
        .unwrap();
    let follower = if leader == "n1" { "n2" } else { "n1" };
    let mut fc = c.client(follower).await;
    let mut stream = fc
        .subscribe(bearer(common::sub_req("t", 0), token))
        .await
        .unwrap()
        .into_inner();
    let got = common::take(&mut stream, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].payload.as_ref(), payload);
    follower
}

/// A node's own token (admin, subject `framecast-node-<id>`) that lasts `ttl`.
fn node_token(secret: &[u8], id: &str, ttl: Duration) -> String {
    framecast::broker::token::mint_hs256(
        secret,
        &framecast::broker::token::MintClaims {
            subject: format!("framecast-node-{id}"),
            publish: Vec::new(),
            subscribe: Vec::new(),
            admin: true,
            ttl,
            not_before: None,
            expected: Default::default(),
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_token_expires_follows_again_with_the_one_its_token_file_holds_now() {
    let _serial = SERIAL.lock().await;
    let (dir, secret_file, admin) = secret_in_file();
    let secret = SECRET;
    let mut c = Cluster::start_on(EtcdServer::start().await, 0, 2, &[], Some(admin)).await;
    let mut token_files = Vec::new();
    for id in ["n1", "n2"] {
        let file = dir.path().join(format!("{id}.token"));
        // Long enough for the cluster to form on a slow machine before it expires.
        std::fs::write(&file, node_token(secret, id, Duration::from_secs(15))).unwrap();
        c.add_node(
            2,
            &[
                "--auth-jwt-secret-file",
                secret_file.to_str().unwrap(),
                "--cluster-token-file",
                file.to_str().unwrap(),
            ],
            &[],
        );
        token_files.push(file);
    }
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    let follower = if leader == "n1" { "n2" } else { "n1" };
    // The operator replaces the follower's token before the first one expires.
    let file = &token_files[if follower == "n1" { 0 } else { 1 }];
    std::fs::write(file, node_token(secret, follower, Duration::from_secs(600))).unwrap();
    let writer = common::tokens::token(secret, &["t"], &["t"], false, Duration::from_secs(600));
    let publish = |seq: u64| {
        let address = format!("http://{}", c.node(&leader).address);
        let writer = writer.clone();
        async move {
            let mut r = tonic::Request::new(req("t", seq, b"frame"));
            r.metadata_mut()
                .insert("authorization", format!("Bearer {writer}").parse().unwrap());
            connect(&address).await.publish(r).await
        }
    };
    publish(0).await.unwrap();
    // Its stream ends when the first token expires (15 s), and it follows again with the new
    // one: still in sync, so publishes (which need both with --min-insync 2) go on.
    until_logged(&c, &leader, "the follower's token expired").await;
    let start = Instant::now();
    let mut seq = 1;
    while let Err(e) = publish(seq).await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no publish acknowledged since the token expired: {e:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        seq += 1;
    }
    c.leader(&["n1", "n2"], 2, Duration::from_secs(15)).await;
}

/// Publishes the frames of offsets `offsets` of `topic` (empty so far up to them) to node
/// `id` over one PublishStream, frame `i` with seq_no `seq_of(i)`; waits for every ack.
async fn publish_all(
    c: &Cluster,
    id: &str,
    topic: &str,
    offsets: std::ops::Range<u64>,
    seq_of: impl Fn(u64) -> u64,
) {
    publish_all_keyed(c, id, topic, offsets, seq_of, |_| String::new()).await;
}

/// [`publish_all`], frame `i` with idempotency key `key_of(i)` (none when empty).
async fn publish_all_keyed(
    c: &Cluster,
    id: &str,
    topic: &str,
    offsets: std::ops::Range<u64>,
    seq_of: impl Fn(u64) -> u64,
    key_of: impl Fn(u64) -> String,
) {
    let mut client = c.client(id).await;
    let first = offsets.start;
    let frames: Vec<_> = offsets
        .clone()
        .map(|i| {
            let mut r = req(
                topic,
                seq_of(i),
                format!("frame {i} {}", "r".repeat(80)).as_bytes(),
            );
            r.idempotency_key = key_of(i);
            r
        })
        .collect();
    let mut acks = client
        .publish_stream(tokio_stream::iter(frames))
        .await
        .unwrap()
        .into_inner();
    let mut next = first;
    while let Some(ack) = tokio::time::timeout(Duration::from_secs(60), acks.message())
        .await
        .expect("acks keep coming")
        .unwrap()
    {
        assert_eq!(ack.offset, next);
        next += 1;
    }
    assert_eq!(next, offsets.end);
}

/// The oldest retained offset of `topic` on node `id` (ListTopics).
async fn first_offset_on(c: &Cluster, id: &str, topic: &str) -> Option<u64> {
    let mut client = c.client(id).await;
    common::topic_info(&mut client, topic)
        .await
        .map(|t| t.first_offset)
}

/// Every frame node `id` retains of `topic` (a fresh subscription's replay from seq_no 0,
/// which starts at the oldest retained frame), by offset.
async fn retained_on(c: &Cluster, id: &str, topic: &str) -> Vec<Frame> {
    let mut client = c.client(id).await;
    let Some(first) = first_offset_on(c, id, topic).await else {
        return Vec::new();
    };
    until_serving(c, id, topic).await;
    let mut sub = common::subscribe(&mut client, common::sub_req(topic, 0))
        .await
        .expect("subscribe");
    let n = sub.snapshot.saturating_sub(first) as usize;
    let mut frames = common::take(&mut sub.stream, n, Duration::from_secs(30)).await;
    frames.sort_by_key(|f| f.offset);
    frames
}

/// Three nodes with 64 KiB segments, and `topic` created on the leader keeping 200 kB:
/// the cluster, the leader, and the two followers.
async fn three_with_retention(topic: &str) -> (Cluster, String, String, String) {
    let flags = ["--segment-bytes", "65536", "--max-frame-bytes", "60000"];
    let c = Cluster::start_with(3, 2, &flags, None).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let mut followers = ids.iter().filter(|i| **i != leader).map(|i| i.to_string());
    let (stays, away) = (followers.next().unwrap(), followers.next().unwrap());
    let mut client = c.client(&leader).await;
    client
        .create_topic(framecast::proto::CreateTopicRequest {
            name: topic.into(),
            retention_max_age_seconds: 0,
            retention_max_bytes: 200_000,
        })
        .await
        .unwrap();
    (c, leader, stays, away)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_retention_reaches_every_follower_and_a_copy_behind_it_starts_again() {
    let _serial = SERIAL.lock().await;
    let (mut c, leader, stays, away) = three_with_retention("aged").await;
    let ids = ["n1", "n2", "n3"];
    // `away` holds the first thousand frames, then stops. The rest go in with falling
    // seq_nos, so a replay (in seq_no order) reads the newest frames first and the ones
    // retention removes last.
    publish_all(&c, &leader, "aged", 0..1_000, |i| i).await;
    until_delivers(&c, &away, "aged", 1_000).await;
    c.node_mut(&away).server.kill9();
    publish_all(&c, &leader, "aged", 1_000..30_000, |i| 100_000 - i).await;

    // The leader's retention removes all but ~200 kB; the follower that stayed removes the
    // same frames from its copy.
    let first = settled_first(&c, &[leader.as_str(), stays.as_str()], "aged", 1_000).await;

    // A reader replays the three lowest seq_nos the leader retains and goes away, holding
    // its cursor: the rest of its replay includes frames retention removed.
    let early = {
        let mut client = c.client(&leader).await;
        let mut sub = common::subscribe(&mut client, common::sub_req("aged", 0))
            .await
            .unwrap();
        let read = common::take(&mut sub.stream, 3, Duration::from_secs(10)).await;
        assert_eq!(read[0].offset, 29_999);
        let last = read.last().unwrap();
        framecast::proto::Cursor {
            snapshot_offset: sub.snapshot,
            epoch: sub.epoch,
            seq_no: last.seq_no,
            timestamp: last.timestamp,
            offset: last.offset,
        }
    };

    // `away` comes back holding 0..1000, all below the leader's oldest frame: it starts its
    // copy again there, catches up and rejoins the in-sync set.
    c.node_mut(&away).server.restart();
    c.leader(&ids, 3, Duration::from_secs(60)).await;
    let on_leader = retained_on(&c, &leader, "aged").await;
    assert_eq!(on_leader.len() as u64, 30_000 - first);
    assert_eq!(on_leader.first().map(|f| f.offset), Some(first));
    for id in [&stays, &away] {
        let start = Instant::now();
        while !same_frames(&on_leader, &retained_on(&c, id, "aged").await) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} does not hold the leader's frames from {first}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        c.node(&away)
            .server
            .log_text()
            .contains("copy restarted at the leader's oldest retained offset"),
        "{}",
        c.logs()
    );
    // The reader's resume needs removed frames: every node refuses it, naming the oldest
    // retained offset, the restarted copy too (it carries the leader's retention
    // watermark): no silent gap anywhere.
    for id in ids {
        let mut client = c.client(id).await;
        let mut resume = common::sub_req("aged", 0);
        resume.resume = Some(early);
        let status = common::subscribe_error(&mut client, resume).await;
        assert_eq!(status.code(), Code::OutOfRange, "{id}: {status:?}");
        assert!(
            status.message().contains(&first.to_string()),
            "{id}: {status:?}"
        );
    }
}

/// A follower that starts its copy again at the leader's oldest retained offset (it was
/// away while retention removed what it lacks) takes the idempotency keys of the removed
/// frames that are still inside the dedup window: elected after a `kill -9` of the
/// leader, it answers a retry of such a frame with the frame's first ack, as the leader
/// would have, instead of storing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_started_again_keeps_the_keys_of_removed_frames_across_a_failover() {
    let _serial = SERIAL.lock().await;
    let flags = ["--segment-bytes", "65536", "--max-frame-bytes", "60000"];
    let mut c = Cluster::start_with(2, 1, &flags, None).await;
    let ids = ["n1", "n2"];
    let leader = c.leader(&ids, 2, Duration::from_secs(30)).await;
    let away = if leader == "n1" { "n2" } else { "n1" }.to_string();
    let mut client = c.client(&leader).await;
    client
        .create_topic(framecast::proto::CreateTopicRequest {
            name: "keyed".into(),
            retention_max_age_seconds: 0,
            retention_max_bytes: 200_000,
        })
        .await
        .unwrap();
    until_serving(&c, &away, "keyed").await;
    c.node_mut(&away).server.kill9();
    // Keys enough for more than one message of them (up to 1 MiB each).
    publish_all_keyed(&c, &leader, "keyed", 0..30_000, |i| i, |i| format!("k{i}")).await;
    let first = settled_first(&c, &[leader.as_str()], "keyed", 25_000).await;

    // `away` comes back holding nothing the leader retains: it starts its copy again at
    // the leader's oldest retained offset and catches up.
    c.node_mut(&away).server.restart();
    c.leader(&ids, 2, Duration::from_secs(60)).await;
    until_logged(
        &c,
        &away,
        "copy restarted at the leader's oldest retained offset",
    )
    .await;
    let on_leader = retained_on(&c, &leader, "keyed").await;
    let start = Instant::now();
    while !same_frames(&on_leader, &retained_on(&c, &away, "keyed").await) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{away} does not hold the leader's frames from {first}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The keys were received into a file beside the topics and moved into the new copy:
    // nothing of them is left behind.
    let topics_dir = c.node(&away).server.data_dir.join("topics");
    assert!(topics_dir.join("keyed").join("REMOVED_KEYS").exists());
    let left: Vec<_> = std::fs::read_dir(&topics_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    c.node_mut(&leader).server.kill9();
    assert_eq!(
        c.leader(&[away.as_str()], 1, Duration::from_secs(30)).await,
        away
    );
    let mut client = c.client(&away).await;
    // Retries of a removed frame, of the last removed one and of a retained one: each is
    // answered with its first ack, and nothing is stored.
    for i in [0, 12_345, first - 1, first] {
        let mut r = req("keyed", i, b"a retry");
        r.idempotency_key = format!("k{i}");
        let ack = client.publish(r).await.unwrap().into_inner();
        assert_eq!(
            (ack.offset, ack.duplicate),
            (i, true),
            "the retry of frame {i} (retention removed below {first})\n{}",
            c.logs()
        );
    }
    let mut r = req("keyed", 9, b"new");
    r.idempotency_key = "new".into();
    let ack = client.publish(r).await.unwrap().into_inner();
    assert_eq!((ack.offset, ack.duplicate), (30_000, false));
}

/// Waits until every node of `ids` holds `topic` from the same oldest retained offset, above
/// `above`, and it holds for 2.5 s (retention settled); that offset.
async fn settled_first(c: &Cluster, ids: &[&str], topic: &str, above: u64) -> u64 {
    let start = Instant::now();
    loop {
        let mut firsts = Vec::new();
        for id in ids {
            firsts.push(first_offset_on(c, id, topic).await.unwrap_or(0));
        }
        if firsts[0] > above && firsts.iter().all(|f| *f == firsts[0]) {
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            let mut again = Vec::new();
            for id in ids {
                again.push(first_offset_on(c, id, topic).await.unwrap_or(0));
            }
            if again == firsts {
                return firsts[0];
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "retention did not settle alike above {above}: {firsts:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A History page of `topic` on node `id`: the first (`after` empty) or a later one.
async fn history_page(
    c: &Cluster,
    id: &str,
    topic: &str,
    limit: u32,
    after: &str,
) -> Result<framecast::proto::HistoryPage, tonic::Status> {
    let mut client = c.client(id).await;
    client
        .history(framecast::proto::HistoryRequest {
            topic: topic.into(),
            from_seq_no: 0,
            limit,
            reverse: false,
            after: after.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A follower refuses a History walk exactly when the leader does: when a retention pass
/// since the walk began removed frames the walk still needs. A pass that removed only frames
/// the walk already passed leaves it going on every node: the follower that applied the
/// passes itself, and one whose copy started again at the leader's oldest retained frame
/// (it was away). Before, a follower recorded every pass with the largest key the leader
/// had ever removed (here one old frame with a high seq_no, from a publisher whose count
/// started again), and refused for good the walks the leader served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_a_history_walk_exactly_when_the_leader_does() {
    let _serial = SERIAL.lock().await;
    let (mut c, leader, stays, away) = three_with_retention("late").await;
    let (all, up) = (["n1", "n2", "n3"], [leader.as_str(), stays.as_str()]);
    let (stays, away) = (stays.as_str(), away.as_str());
    // Offset 0 has the highest seq_no the topic will ever hold; the rest count up from 1.
    // `away` holds offset 0 only.
    publish_all(&c, &leader, "late", 0..1, |_| 1_000_000).await;
    until_delivers(&c, away, "late", 1).await;
    c.node_mut(away).server.kill9();
    publish_all(&c, &leader, "late", 1..3_000, |i| i).await;
    let first = settled_first(&c, &up, "late", 1).await;

    // Two walks: one that read 1,000 frames, one that read 20. Their order keys are the
    // offsets' (seq_no = offset from 1 on).
    let mut walks = BTreeMap::new();
    for id in up {
        for limit in [1_000u32, 20] {
            let page = history_page(&c, id, "late", limit, "").await.unwrap();
            assert!(page.more, "{id}");
            assert_eq!(page.frames.len(), limit as usize, "{id}");
            assert_eq!(page.frames[0].seq_no, first, "{id}");
            walks.insert((id, limit), page.next);
        }
    }

    // 100 more frames: the next passes remove about as many of the oldest, which the long
    // walks have passed and the short ones have not.
    publish_all(&c, &leader, "late", 3_000..3_100, |i| i).await;
    let now_first = settled_first(&c, &up, "late", first).await;
    assert!(
        now_first > first + 20 && now_first < first + 1_000,
        "{first} -> {now_first}"
    );
    // `away` comes back: its copy ends before the oldest retained frame, so it starts again
    // there.
    c.node_mut(away).server.restart();
    settled_first(&c, &all, "late", first).await;
    let on_leader = retained_on(&c, &leader, "late").await;
    let start = Instant::now();
    while !same_frames(&on_leader, &retained_on(&c, away, "late").await) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{away} does not hold the leader's frames\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The leader's walks go on (or are refused) alike on every node.
    let mut second_pages = Vec::new();
    for (id, walked_on) in [(&*leader, &*leader), (stays, stays), (away, &*leader)] {
        let page = history_page(&c, id, "late", 100, &walks[&(walked_on, 1_000)])
            .await
            .unwrap_or_else(|s| panic!("{id} refused a walk retention did not touch: {s:?}"));
        assert_eq!(page.frames[0].seq_no, first + 1_000, "{id}");
        second_pages.push(page.frames);
        let refused = history_page(&c, id, "late", 100, &walks[&(walked_on, 20)]).await;
        let status = refused.expect_err("a walk whose next frames were removed goes on");
        assert_eq!(status.code(), Code::OutOfRange, "{id}: {status:?}");
        assert!(
            status.message().contains(&now_first.to_string()),
            "{id}: {status:?}"
        );
    }
    assert_eq!(second_pages[0], second_pages[1]);
    assert_eq!(second_pages[0], second_pages[2]);
}

/// Open subscriptions of `topic` on each node (`TopicInfo.subscribers`), by node id.
async fn subscribers_by_node(c: &Cluster, topic: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for n in &c.nodes {
        let mut client = c.client(&n.id).await;
        let count = common::topic_info(&mut client, topic)
            .await
            .map_or(0, |t| t.subscribers);
        out.insert(n.id.clone(), count);
    }
    out
}

/// Reads `n` frames from `sub`, failing after 30 s.
async fn next_frames(sub: &mut framecast::client::Subscription, n: usize) -> Vec<(u64, u64)> {
    use futures::StreamExt;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let f = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("frames keep coming")
            .expect("the subscription goes on")
            .expect("a frame");
        out.push((f.offset, f.seq_no));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_followers_spreads_subscriptions_and_resumes_them_elsewhere_after_kill_9() {
    use framecast::client::{Client, ReadFrom};
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let by_id: BTreeMap<String, String> = c
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.address.clone()))
        .collect();
    let address_of = |id: &str| by_id[id].clone();
    let client = Client::connect_many(&addresses)
        .unwrap()
        .with_read_from(ReadFrom::Followers);
    let info = client.cluster().await.unwrap();
    assert_eq!(info.nodes.len(), 3);
    assert_eq!(info.leader, address_of(&leader));
    for i in 0..10u64 {
        client.publish("spread", i, format!("f{i}")).await.unwrap();
    }
    // Six subscriptions: three on each follower, none on the leader.
    let mut subs: Vec<_> = (0..6).map(|_| client.subscribe("spread", 0)).collect();
    let expect: Vec<(u64, u64)> = (0..10).map(|i| (i, i)).collect();
    for s in &mut subs {
        assert_eq!(next_frames(s, 10).await, expect);
    }
    let on: Vec<String> = subs.iter().map(|s| s.node().unwrap()).collect();
    let followers = others(&ids, &leader);
    for f in &followers {
        let here = on.iter().filter(|a| **a == address_of(f)).count();
        assert_eq!(here, 3, "{on:?}");
    }
    let counts = subscribers_by_node(&c, "spread").await;
    assert_eq!(counts[&leader], 0, "{counts:?}");
    for f in &followers {
        assert_eq!(counts[f], 3, "{counts:?}");
    }

    // A topic nobody has created yet: the follower a subscription picks lacks it and names
    // the leader, so the subscription asks the route at once and the leader creates it and
    // serves it. A client given only a follower follows the hint the same way.
    // Each reader has a topic of its own: once the leader created one, a follower copies it
    // and rightly serves a later subscriber to it.
    let lone = Client::connect(&address_of(&followers[0])).unwrap();
    let fresh = [
        ("fresh-picked", client.subscribe("fresh-picked", 0)),
        ("fresh-lone", lone.subscribe("fresh-lone", 0)),
    ];
    let readers: Vec<_> = fresh
        .into_iter()
        .map(|(topic, mut s)| {
            tokio::spawn(async move {
                let got = next_frames(&mut s, 3).await;
                (topic, got, s.node())
            })
        })
        .collect();
    for topic in ["fresh-picked", "fresh-lone"] {
        let start = Instant::now();
        loop {
            let counts = subscribers_by_node(&c, topic).await;
            if counts[&leader] == 1 {
                assert!(
                    followers.iter().all(|f| counts[f] == 0),
                    "{topic}: {counts:?}"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{topic}: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..3u64 {
            assert_eq!(client.publish(topic, i, "n").await.unwrap().offset, i);
        }
    }
    for r in readers {
        let (topic, got, node) = r.await.unwrap();
        assert_eq!(got, vec![(0, 0), (1, 1), (2, 2)], "{topic}");
        assert_eq!(node, Some(address_of(&leader)), "{topic}");
    }

    // The CLI spreads too: a `subscribe --read-from followers` waits on a follower.
    let mut cli = std::process::Command::new(common::bin())
        .args([
            "subscribe",
            "--addr",
            &addresses.join(","),
            "--read-from",
            "followers",
            "--topic",
            "spread",
            "--count",
            "11",
            "--raw",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let counts = subscribers_by_node(&c, "spread").await;
        if counts.values().sum::<u32>() == 7 {
            assert_eq!(
                counts[&leader], 0,
                "the CLI reads from the leader: {counts:?}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.publish("spread", 10, "f10").await.unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while cli.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the CLI did not finish");
            std::thread::sleep(Duration::from_millis(50));
        }
        cli.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let want: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    assert_eq!(lines, want);

    // kill -9 of one follower while frames keep coming: its subscriptions resume on the
    // other follower, and every subscription yields exactly what was acknowledged.
    let victim = followers[0].clone();
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 11..211u64 {
                let ack = client.publish("spread", i, format!("f{i}")).await.unwrap();
                assert_eq!(ack.offset, i);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.node_mut(&victim).server.kill9();
    publisher.await.unwrap();
    let expect: Vec<(u64, u64)> = (10..211).map(|i| (i, i)).collect();
    for s in &mut subs {
        assert_eq!(next_frames(s, 201).await, expect);
        assert_eq!(s.node().unwrap(), address_of(&followers[1]));
    }
    c.node_mut(&victim).server.restart();
}

/// Mutual TLS everywhere: clients to nodes, nodes to their leader, and nodes to etcd (served
/// with `--client-cert-auth`): three nodes elect a leader, replicate and serve over TLS; a
/// node that reaches that etcd without TLS, or without a client certificate, cannot join
/// and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_nodes_follow_and_reach_etcd_over_tls_with_their_own_certificates() {
    use futures::StreamExt;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let _serial = SERIAL.lock().await;
    // One CA signs every node's certificate (server and client use) and the client's.
    let pki = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "framecast cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_pem = leaf.signed_by(&leaf_key, &issuer).unwrap().pem();
    let path = |n: &str| pki.path().join(n).to_str().unwrap().to_string();
    std::fs::write(path("ca.pem"), &ca_pem).unwrap();
    std::fs::write(path("node.pem"), &leaf_pem).unwrap();
    std::fs::write(path("node-key.pem"), leaf_key.serialize_pem()).unwrap();
    let etcd = EtcdServer::start_tls(etcd_server::EtcdTls {
        cert: path("node.pem").into(),
        key: path("node-key.pem").into(),
        ca: path("ca.pem").into(),
    })
    .await;
    let flags = [
        "--tls-cert".to_string(),
        path("node.pem"),
        "--tls-key".to_string(),
        path("node-key.pem"),
        "--tls-client-ca".to_string(),
        path("ca.pem"),
        "--cluster-etcd-ca".to_string(),
        path("ca.pem"),
        "--cluster-etcd-cert".to_string(),
        path("node.pem"),
        "--cluster-etcd-key".to_string(),
        path("node-key.pem"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let c = Cluster::start_on(etcd, 3, 2, &flags, None).await;
    assert!(c.etcd.endpoint().starts_with("https://"));
    let addresses: Vec<String> = c
        .nodes
        .iter()
        .map(|n| format!("https://{}", n.address))
        .collect();
    let client = framecast::client::Client::connect_many(&addresses)
        .unwrap()
        .with_ca_cert(ca_pem.clone())
        .unwrap()
        .with_client_identity(leaf_pem.clone(), leaf_key.serialize_pem())
        .unwrap();
    // Three nodes in sync: the followers reached the leader over TLS with their certificates.
    let start = Instant::now();
    let info = loop {
        if let Ok(info) = client.cluster().await {
            if info.nodes.len() == 3
                && info.nodes.iter().filter(|n| n.in_sync).count() == 3
                && info.nodes.iter().any(|n| n.leader)
            {
                break info;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no leader with three in sync over TLS\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for i in 0..20u64 {
        let ack = client.publish("tls", i, format!("t{i}")).await.unwrap();
        assert_eq!(ack.offset, i);
    }
    // A follower delivers them, to a client reading from followers over TLS.
    let reader = client
        .clone()
        .with_read_from(framecast::client::ReadFrom::Followers);
    let mut sub = reader.subscribe("tls", 0);
    for i in 0..20u64 {
        let f = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (f.offset, f.payload.as_ref()),
            (i, format!("t{i}").as_bytes())
        );
    }
    let on = sub.node().unwrap();
    let leader = info.nodes.iter().find(|n| n.leader).unwrap();
    assert_ne!(on, leader.address, "read from the leader");
    assert!(
        !c.logs().contains("cannot reach the leader"),
        "{}",
        c.logs()
    );
    // Without TLS to etcd, or without a client certificate, a fourth node cannot join.
    let http_url = c.etcd.endpoint().replace("https://", "http://");
    let ca = path("ca.pem");
    for (what, etcd_url, etcd_flags, cause) in [
        ("no TLS", http_url.as_str(), &[][..], "transport error"),
        (
            "no client certificate",
            c.etcd.endpoint().as_str(),
            &["--cluster-etcd-ca", ca.as_str()][..],
            // With TLS 1.3 the server checks the (missing) certificate after the client's
            // handshake ends: either its alert (BadCertificate) or a closed connection.
            "transport error",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = node_args(
            etcd_url,
            &c.name,
            "n4",
            &format!("127.0.0.1:{}", free_port()),
            &format!("127.0.0.1:{}", free_port()),
            2,
            &c.lease_ttl,
        );
        args.extend(flags[..6].iter().map(|f| f.to_string()));
        args.extend(etcd_flags.iter().map(|f| f.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        match Server::try_start_with_env(dir.path(), &args, &[]) {
            Ok(_) => panic!("{what}: a node joined etcd\n{}", c.etcd.log_tail()),
            Err(log) => {
                eprintln!("{what}: {}", log.lines().last().unwrap_or(""));
                assert!(log.contains("cannot join the cluster"), "{what}: {log}");
                assert!(log.contains(cause), "{what}: {log}");
                assert!(started.elapsed() < Duration::from_secs(30), "{what}: {log}");
            }
        }
    }
    assert_eq!(client.cluster().await.unwrap().nodes.len(), 3);
}

/// What a raw `Follow` stream to the leader receives for `topic` until it holds `n`
/// frames: the records shipped one by one and the runs, each checked.
async fn follow_raw(
    c: &Cluster,
    leader: &str,
    term: u64,
    takes_runs: bool,
    topic: &str,
    n: u64,
) -> (Vec<framecast::wal::Copied>, usize, usize) {
    use framecast::cluster::replication_proto as rp;
    use framecast::wal::Copied;
    let ch = Channel::from_shared(format!("http://{}", c.node(leader).address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = rp::replication_client::ReplicationClient::new(ch);
    let report = rp::FollowerReport {
        term,
        node_id: format!("probe-{takes_runs}"),
        positions: Vec::new(),
        takes_runs,
        max_record_bytes: 0,
        ..Default::default()
    };
    // The report stream stays open while the updates are read.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(report).await.unwrap();
    let mut updates = client
        .follow(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (mut copied, mut one_by_one, mut runs) = (Vec::new(), 0, 0);
    while (copied.len() as u64) < n {
        let u = tokio::time::timeout(Duration::from_secs(10), updates.message())
            .await
            .expect("an update within 10 s")
            .unwrap()
            .expect("the stream goes on");
        assert_eq!(u.term, term);
        let Some(rp::leader_update::Update::Records(r)) = u.update else {
            continue;
        };
        assert_eq!(r.topic, topic);
        assert!(
            r.run.is_empty() || r.records.is_empty(),
            "both kinds in one message"
        );
        if !r.run.is_empty() {
            runs += 1;
            copied.extend(Copied::decode_run(&r.run).unwrap());
        }
        one_by_one += r.records.len();
        copied.extend(r.records.iter().map(|b| Copied::decode(b).unwrap()));
    }
    drop(tx);
    (copied, one_by_one, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_ships_runs_only_to_followers_that_take_them() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(1, 1).await;
    let leader = c.leader(&["n1"], 1, Duration::from_secs(30)).await;
    let term = c.info(&leader).await.unwrap().term;
    let mut client = c.client(&leader).await;
    for seq in 0..20u64 {
        let payload = vec![seq as u8; (seq * 37) as usize];
        client.publish(req("t", seq, &payload)).await.unwrap();
    }
    let stored = log_of(&c, &leader, "t").await;
    assert_eq!(stored.len(), 20);
    // A follower that does not say it takes runs (an older node) gets records one by one;
    // one that does gets runs. Both hold the same frames at the same offsets.
    let (old, one_by_one, runs) = follow_raw(&c, &leader, term, false, "t", 20).await;
    assert_eq!((one_by_one, runs), (20, 0));
    let (new, one_by_one, runs) = follow_raw(&c, &leader, term, true, "t", 20).await;
    assert_eq!(one_by_one, 0);
    assert!(runs >= 1);
    assert_eq!(old, new);
    for (copy, frame) in new.iter().zip(&stored) {
        let framecast::wal::Copied::Frame {
            offset,
            seq_no,
            payload,
            ..
        } = copy
        else {
            panic!("a gap where frame {} is stored", frame.offset);
        };
        assert_eq!(
            (*offset, *seq_no, payload.as_ref()),
            (frame.offset, frame.seq_no, frame.payload.as_ref())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_leads_while_the_in_sync_record_in_etcd_cannot_be_read() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_on(EtcdServer::start().await, 0, 1, &[], None).await;
    let etcd = c.etcd.client().await;
    let key = format!("/framecast/{}/isr", c.name);
    // Any node elected now could lack acknowledged frames: the record names nobody.
    etcd.put(&key, b"{\"term\": 3, \"memb".to_vec(), None)
        .await
        .unwrap();
    for _ in 0..2 {
        c.add_node(1, &[], &[]);
    }
    // Both nodes up and waiting, each saying why; then, watched for 3 s, neither leads.
    for id in ["n1", "n2"] {
        until_logged(&c, id, "the in-sync record in etcd cannot be read").await;
    }
    let start = Instant::now();
    let mut answers = 0;
    while start.elapsed() < Duration::from_secs(3) {
        for id in ["n1", "n2"] {
            if let Some(info) = c.info(id).await {
                answers += 1;
                assert!(
                    info.nodes.iter().all(|n| !n.leader),
                    "{id} names a leader: {info:?}\n{}",
                    c.logs()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answers >= 4,
        "the nodes hardly answered ({answers} answers)"
    );
    // Deleted by an operator (a new cluster), the nodes elect a leader.
    etcd.delete(&key).await.unwrap();
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    publish_to(&c, &leader, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_restarted_shows_the_frames_it_holds_without_a_new_publish() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(1, 1).await;
    let leader = c.leader(&["n1"], 1, Duration::from_secs(30)).await;
    let mut client = c.client(&leader).await;
    for seq in 0..20u64 {
        client
            .publish(req("idle", seq, &payload_of(seq)))
            .await
            .unwrap();
    }
    assert_eq!(log_of(&c, &leader, "idle").await.len(), 20);
    // Its next term starts with the commit point at 0 on every topic: the frames it holds,
    // committed by itself alone, must be shown again without waiting for another publish.
    c.node_mut(&leader).server.kill9();
    // Its node key goes with its lease (a live one would refuse the id).
    tokio::time::sleep(TTL + Duration::from_secs(1)).await;
    c.node_mut(&leader).server.restart();
    c.leader(&["n1"], 1, Duration::from_secs(30)).await;
    let mut shown = 0;
    let start = Instant::now();
    while shown < 20 {
        shown = log_of(&c, &leader, "idle").await.len();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{shown} of 20 frames shown after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_long_after_the_followers_joined_keep_them_in_sync() {
    let _serial = SERIAL.lock().await;
    // Two members and --min-insync 2: a follower dropped from the set refuses writes.
    let c = Cluster::start(2, 2).await;
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    // Longer than --replica-max-lag (3 s) after the follower connected.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    // 400 topics appear, 16 at a time: each one's first frame is durable on the leader a
    // moment before the follower reports the new topic.
    let address = format!("http://{}", c.node(&leader).address);
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let address = address.clone();
            tokio::spawn(async move {
                let mut client = connect(&address).await;
                for i in 0..25 {
                    let topic = format!("new-{task}-{i}");
                    let r = client.publish(req(&topic, 1, b"first")).await;
                    assert!(r.is_ok(), "{topic}: {r:?}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let log = c.node(&leader).server.log_text();
    assert!(
        !log.contains("dropped from the in-sync set"),
        "{}",
        c.logs()
    );
    assert_eq!(
        c.info(&leader)
            .await
            .unwrap()
            .nodes
            .iter()
            .filter(|n| n.in_sync)
            .count(),
        2
    );
}

/// Three nodes (min-insync 2), n1 started alone first so that it leads, then two
/// followers; node `armed` runs with the environment `env` (fail points).
#[cfg(feature = "failpoints")]
async fn led_by_n1(armed: &str, env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::start_with(0, 2, &[], None).await;
    let ids = ["n1", "n2", "n3"];
    for id in ids {
        c.add_node(2, &[], if id == armed { env } else { &[] });
        if id == "n1" {
            assert_eq!(c.leader(&["n1"], 1, Duration::from_secs(30)).await, "n1");
        }
    }
    assert_eq!(c.leader(&ids, 3, Duration::from_secs(40)).await, "n1");
    c
}

/// Three nodes, n1 leading, with `failpoints` armed in node `armed`'s first start, under a
/// publisher to "orders"; waits until `armed` exits non-zero, having left the cluster
/// because of the fail point (its log also saying each of `said`). Returns the cluster, the
/// load, when the exit was seen, and the exit status.
#[cfg(feature = "failpoints")]
async fn until_a_log_fails(
    armed: &str,
    failpoints: &str,
    said: &[&str],
) -> (Cluster, Load, Instant, std::process::ExitStatus) {
    let mut c = led_by_n1(armed, &[("FRAMECAST_FAILPOINTS", failpoints)]).await;
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let load = Load::start(addresses, "orders", 0);
    let exited =
        tokio::task::block_in_place(|| c.node_mut(armed).server.wait_exit(Duration::from_secs(60)));
    let gone = Instant::now();
    let status = exited.unwrap_or_else(|| panic!("{armed} never left\n{}", c.logs()));
    assert!(!status.success(), "{armed} exited with {status}");
    let log = c.node(armed).server.log_text();
    for want in [
        "a log failed: leaving the cluster",
        "fail point commit.sync",
    ]
    .iter()
    .chain(said)
    {
        assert!(
            log.contains(want),
            "{armed} left for another reason:\n{log}"
        );
    }
    (c, load, gone, status)
}

/// A leader whose disk fails (a commit sync fails after its batch was shipped: the page
/// cache can no longer be trusted) leaves the cluster and exits instead of refusing
/// writes forever: an in-sync follower is elected, every acknowledged frame is on it, and
/// the failed node, restarted, recovers from its disk and converges. The disk failure is a
/// fail point armed in the real binary (`--features failpoints`), at n1's 300th sync.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_fails_leaves_and_an_in_sync_follower_takes_over() {
    let _serial = SERIAL.lock().await;
    let ids = ["n1", "n2", "n3"];
    let (mut c, load, gone, status) = until_a_log_fails("n1", "commit.sync@300", &[]).await;
    let old = c.node("n1").address.clone();
    until(
        "writes accepted by another node",
        Duration::from_secs(20),
        || load.first_ack_after(gone, &old).is_some(),
    )
    .await;
    // From n1's last ack (its sync failed after it) to the next ack, by another node.
    let last_on_n1 = load.last_ack_from(&old).unwrap();
    let failover = load.first_ack_after(last_on_n1, &old).unwrap() - last_on_n1;
    let before = load.acked();
    until(
        "more acks on the new leader",
        Duration::from_secs(20),
        || load.acked() >= before + 100,
    )
    .await;
    let acked = load.finish().await;
    eprintln!(
        "n1's sync failed: it exited ({status}); writes accepted again {failover:?} after its \
         last ack; {} frames acknowledged",
        acked.len()
    );
    assert!(
        failover <= TTL + Duration::from_secs(2),
        "writes were accepted again only {failover:?} after the failed leader's last ack"
    );
    let leader = c.leader(&["n2", "n3"], 2, Duration::from_secs(20)).await;
    let on_leader = log_of(&c, &leader, "orders").await;
    holds_every_ack(&on_leader, &acked);
    // Restarted without the fail point, n1 recovers what its disk holds, follows and
    // converges on the new leader's log.
    c.node_mut("n1").server.restart();
    assert_eq!(c.leader(&ids, 3, Duration::from_secs(40)).await, leader);
    until_delivers(&c, "n1", "orders", on_leader.len()).await;
    let final_log = log_of(&c, &leader, "orders").await;
    for id in ids {
        assert!(
            same_frames(&final_log, &log_of(&c, id, "orders").await),
            "{id} differs from the leader"
        );
    }
}

/// A follower whose disk fails for good (a commit sync fails, and so does the sync that
/// would undo it: two fail points in a row, armed in the real binary) leaves the cluster and
/// exits; the leader drops it from the in-sync set and goes on acknowledging with the other
/// follower, nothing acknowledged is lost, and the failed follower, restarted, recovers from
/// its disk and converges.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_fails_leaves_and_the_cluster_goes_on() {
    let _serial = SERIAL.lock().await;
    let ids = ["n1", "n2", "n3"];
    let (mut c, load, gone, status) =
        until_a_log_fails("n2", "commit.sync@200*2", &["cannot undo a failed sync"]).await;
    let before = load.acked();
    until("acks go on without n2", Duration::from_secs(20), || {
        load.acked() >= before + 100
    })
    .await;
    // The longest stall of acks, and that it ended around n2's failure (not elsewhere).
    let (stall, ended) = load.longest_gap();
    let acked = load.finish().await;
    let ended = ended.unwrap();
    eprintln!(
        "n2's log failed: it exited ({status}); the longest stall of acks was {stall:?}, \
         ending {:?} after n2 was seen gone; {} frames acknowledged",
        ended.saturating_duration_since(gone),
        acked.len()
    );
    assert!(
        stall <= TTL + Duration::from_secs(2),
        "acks stalled for {stall:?} when a follower's log failed"
    );
    assert_eq!(
        c.leader(&["n1", "n3"], 2, Duration::from_secs(20)).await,
        "n1"
    );
    let on_leader = log_of(&c, "n1", "orders").await;
    holds_every_ack(&on_leader, &acked);
    // Restarted without the fail point, n2 recovers what its disk holds, follows and
    // converges on the leader's log.
    c.node_mut("n2").server.restart();
    assert_eq!(c.leader(&ids, 3, Duration::from_secs(40)).await, "n1");
    until_delivers(&c, "n2", "orders", on_leader.len()).await;
    let final_log = log_of(&c, "n1", "orders").await;
    for id in ids {
        assert!(
            same_frames(&final_log, &log_of(&c, id, "orders").await),
            "{id} differs from the leader"
        );
    }
}

/// A publish that passed the leader's checks just before the leader stepped down, and
/// reached its log only once the node had begun to copy the new leader's records (a task
/// held between the two: fail point `publish.stall`, armed in the real binary, released by
/// the test), is refused: it must not take an offset where the new leader puts another
/// frame, nor be acknowledged when the new leader's frame there is committed. The old
/// leader converges on the new leader's log, frame for frame.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_reaches_the_log_after_its_leader_stepped_down_is_refused() {
    let _serial = SERIAL.lock().await;
    let ids = ["n1", "n2", "n3"];
    let release_dir = tempfile::tempdir().unwrap();
    let release = release_dir.path().join("release");
    let release_env = release.to_str().unwrap().to_string();
    // Its 51st publish stalls after its checks.
    let c = led_by_n1(
        "n1",
        &[
            ("FRAMECAST_FAILPOINTS", "publish.stall@51"),
            ("FRAMECAST_FAILPOINT_RELEASE", &release_env),
        ],
    )
    .await;
    for seq in 0..50 {
        publish_to(&c, "n1", seq).await.unwrap();
    }
    let mut client = c.client("n1").await;
    let mut r = req("orders", 5000, &payload_of(5000));
    r.idempotency_key = "stalled".into();
    let stalled = tokio::spawn(async move { client.publish(r).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stalled.is_finished(), "the 51st publish did not stall");

    // n1 frozen past its lease: another node leads and takes 50 more frames.
    let pid = pid_of(&c, "n1");
    kill_process(pid, Signal::STOP).unwrap();
    let new = c.leader(&["n2", "n3"], 2, Duration::from_secs(30)).await;
    for seq in 50..100 {
        publish_to(&c, &new, seq).await.unwrap();
    }
    kill_process(pid, Signal::CONT).unwrap();
    // n1 steps down, follows, and copies them; only then does the stalled publish go on.
    until_logged(&c, "n1", "following a new leader").await;
    until_delivers(&c, "n1", "orders", 100).await;
    assert!(!stalled.is_finished(), "the stalled publish ended early");
    std::fs::write(&release, b"").unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), stalled)
        .await
        .expect("the stalled publish is answered")
        .unwrap();
    eprintln!("the stalled publish was answered: {answer:?}");
    assert!(
        answer.is_err(),
        "n1 acknowledged a publish after it stepped down: {answer:?}"
    );
    for seq in 100..110 {
        publish_to(&c, &new, seq).await.unwrap();
    }
    let on_leader = log_of(&c, &new, "orders").await;
    assert_eq!(on_leader.len(), 110);
    assert!(on_leader.iter().all(|f| f.seq_no != 5000));
    for id in ids {
        converged(&c, id, "orders", &on_leader).await;
    }
}

/// Topics of the many-topics scenario (`FRAMECAST_TEST_MANY_TOPICS` sets another count,
/// for measuring by hand), and frames in each.
fn many_topics() -> usize {
    std::env::var("FRAMECAST_TEST_MANY_TOPICS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000)
}
const FRAMES_EACH: u64 = 3;

/// Waits until node `id` lists every one of the many topics with all its frames.
async fn until_lists_all(c: &Cluster, id: &str) {
    let many = many_topics();
    let start = Instant::now();
    loop {
        let topics = common::list_topics(&mut c.client(id).await).await;
        let full = topics
            .iter()
            .filter(|t| t.name.starts_with("room-") && t.frames == FRAMES_EACH)
            .count();
        if full == many {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{id} lists {full} of {many} topics in full\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ten thousand topics on three nodes: every topic is copied to both followers, a `kill -9`
/// of the leader under load fails over within the lease TTL + 2 s although the new leader
/// begins its term in every topic first, and every topic's acknowledged frames are on the
/// new leader, where the old leader, restarted, converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_topics_are_copied_and_fail_over_within_the_bar() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
    let name = |i: usize| format!("room-{i:05}");
    let many = many_topics();
    // 32 publishers, each topic's frames in order, each ack checked at its offset.
    let client = c.client(&leader).await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..32 {
        let mut client = client.clone();
        tasks.spawn(async move {
            for i in (w..many).step_by(32) {
                let t = name(i);
                for f in 0..FRAMES_EACH {
                    let ack = common::publish(&mut client, &t, f, t.as_bytes()).await;
                    assert_eq!(ack.offset, f, "{t}");
                }
            }
        });
    }
    let started = Instant::now();
    while let Some(r) = tokio::time::timeout(Duration::from_secs(180), tasks.join_next())
        .await
        .expect("publishing to the topics took over 3 minutes")
    {
        r.unwrap();
    }
    let published = started.elapsed();
    for id in ids.iter().filter(|id| **id != leader) {
        until_lists_all(&c, id).await;
    }
    eprintln!(
        "{many} topics created and published ({FRAMES_EACH} frames each) in {published:?}, on both followers after {:?}",
        started.elapsed()
    );
    // Failover under load, timed as in the kill -9 scenario.
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let load = Load::start(addresses, "orders", 0);
    until("some acks", Duration::from_secs(20), || load.acked() >= 100).await;
    let killed = Instant::now();
    c.node_mut(&leader).server.kill9();
    let old = c.node(&leader).address.clone();
    until("writes accepted again", Duration::from_secs(30), || {
        load.first_ack_after(killed, &old).is_some()
    })
    .await;
    let failover = load.first_ack_after(killed, &old).unwrap() - killed;
    let acked = load.finish().await;
    let rest: Vec<&str> = ids.iter().copied().filter(|id| *id != leader).collect();
    let new_leader = c.leader(&rest, 2, Duration::from_secs(20)).await;
    eprintln!(
        "{many} topics: kill -9 of leader {leader}, writes accepted again by {new_leader} after {failover:?}"
    );
    assert!(
        failover <= TTL + Duration::from_secs(2),
        "with {many} topics writes were accepted again only after {failover:?}"
    );
    holds_every_ack(&log_of(&c, &new_leader, "orders").await, &acked);
    // Every topic on the new leader, frame for frame; the old leader comes back and
    // converges on it.
    let mut on_new = c.client(&new_leader).await;
    for i in 0..many {
        let t = name(i);
        let frames = read_log(&mut on_new, &t).await;
        let got: Vec<(u64, u64, &[u8])> = frames
            .iter()
            .map(|f| (f.offset, f.seq_no, f.payload.as_ref()))
            .collect();
        let want: Vec<(u64, u64, &[u8])> = (0..FRAMES_EACH).map(|f| (f, f, t.as_bytes())).collect();
        assert_eq!(got, want, "{t} on the new leader");
    }
    c.node_mut(&leader).server.restart();
    assert_eq!(c.leader(&ids, 3, Duration::from_secs(60)).await, new_leader);
    until_lists_all(&c, &leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_spreads_subscribers_over_every_node_and_checks_each_delivery() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    // The leader first (it takes the publishes), then the followers.
    let mut order: Vec<&Node> = vec![c.node(&leader)];
    order.extend(c.nodes.iter().filter(|n| n.id != leader));
    let addrs: Vec<String> = order
        .iter()
        .map(|n| format!("http://{}", n.address))
        .collect();
    let pids: Vec<String> = order
        .iter()
        .map(|n| n.server.child.id().to_string())
        .collect();
    let (addrs, pids) = (addrs.join(","), pids.join(","));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::bin())
            .args(["bench", "fanout", "--json", "--quiet", "--topic", "spread"])
            .args(["--addr", &addrs, "--server-pid", &pids])
            .args(["--count", "300", "--rate", "3000", "-s", "30", "-c", "6"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench exited {:?}\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["delivered"]["frames"], 300 * 30, "{r:#}");
    assert_eq!(r["resources"]["servers"], 3, "{r:#}");
    assert_eq!(r["sub_addrs"].as_array().map(Vec::len), Some(3), "{r:#}");
    assert_eq!(
        r["resources"]["server_cpu_each_s"].as_array().map(Vec::len),
        Some(3),
        "{r:#}"
    );
    // Six connections over three nodes: two each, five subscribers per connection, so
    // every node sent each of the 300 frames to ten subscribers.
    let delivered = "framecast_delivered_frames_total{topic=\"spread\",transport=\"grpc\"}";
    for n in &c.nodes {
        let base = n.server.http.clone().unwrap();
        let mut seen = None;
        for _ in 0..100 {
            let text = common::http::request(&base, "GET", "/metrics", &[], b"").text();
            seen = common::http::metric(&text, delivered);
            if seen == Some(3000.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen, Some(3000.0), "deliveries by {}", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_from_empty_to_the_largest_allowed_are_copied_to_every_follower() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 3).await;
    let leader = c
        .leader(&["n1", "n2", "n3"], 3, Duration::from_secs(30))
        .await;
    // The default --max-frame-bytes (4 MiB − 1 KiB), each acked only once all three
    // nodes hold it (--min-insync 3), then one past it refused.
    let max = 4 * 1024 * 1024 - 1024;
    let sizes = [
        0,
        1,
        100,
        64 * 1024,
        1 << 20,
        (1 << 20) + 1,
        2 << 20,
        3 << 20,
        max,
    ];
    let mut lc = c.client(&leader).await;
    for (seq, &size) in sizes.iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 + seq) as u8).collect();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            lc.publish(req("sizes", seq as u64, &payload)),
        )
        .await;
        assert!(matches!(r, Ok(Ok(_))), "{size} B: {r:?}\n{}", c.logs());
    }
    let refused = lc
        .publish(req("sizes", 99, &vec![0u8; max + 1]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let on_leader = log_of(&c, &leader, "sizes").await;
    let got: Vec<usize> = on_leader.iter().map(|f| f.payload.len()).collect();
    assert_eq!(got, sizes.to_vec());
    for id in ["n1", "n2", "n3"] {
        until_delivers(&c, id, "sizes", sizes.len()).await;
        let copy = log_of(&c, id, "sizes").await;
        assert!(same_frames(&copy, &on_leader), "{id} differs");
    }
}

/// A topic as one node holds it: its epoch and every frame's `(seq_no, payload)`.
type Held = (u64, Vec<(u64, Vec<u8>)>);

/// `topic` on node `id`, or `None` when the node does not list it.
async fn copy_of(c: &Cluster, id: &str, topic: &str) -> Option<Held> {
    let info = common::topic_info(&mut c.client(id).await, topic).await?;
    let frames = log_of(c, id, topic).await;
    Some((
        info.epoch,
        frames
            .iter()
            .map(|f| (f.seq_no, f.payload.to_vec()))
            .collect(),
    ))
}

/// Waits until every node in `ids` holds `topic` as `want` (its epoch and frames), or
/// lacks it when `want` is `None`.
async fn until_all_hold(c: &Cluster, ids: &[&str], topic: &str, want: Option<&Held>) {
    let start = Instant::now();
    for id in ids {
        loop {
            let got = copy_of(c, id, topic).await;
            if got.as_ref() == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{id} holds {topic} as epoch {:?} with {:?} frames, not as the leader does \
                 (epoch {:?}, {:?} frames)\n{}",
                got.as_ref().map(|g| g.0),
                got.as_ref().map(|g| g.1.len()),
                want.map(|w| w.0),
                want.map(|w| w.1.len()),
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_and_re_created_topics_reach_every_follower_also_one_away_meanwhile() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(30)).await;
    let followers: Vec<&str> = all.into_iter().filter(|n| *n != leader).collect();
    let mut lc = c.client(&leader).await;
    let address = format!("http://{}", c.node(&leader).address);
    let publish = |tag: &'static str, n: u64| {
        let address = address.clone();
        async move {
            let mut lc = connect(&address).await;
            for seq in 0..n {
                let payload = format!("{tag}-{seq}");
                lc.publish(req("t", seq, payload.as_bytes())).await.unwrap();
            }
        }
    };
    publish("first", 50).await;
    lc.publish(req("kept", 1, b"kept")).await.unwrap();
    let first = copy_of(&c, &leader, "t").await.unwrap();
    until_all_hold(&c, &all, "t", Some(&first)).await;

    // A subscriber on a follower sees the deletion as NOT_FOUND, as on the leader.
    let mut fc = c.client(followers[0]).await;
    let mut sub = common::subscribe(&mut fc, common::sub_req("t", 0))
        .await
        .unwrap();
    let seen = common::take(&mut sub.stream, 50, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 50);
    lc.delete_topic(framecast::proto::DeleteTopicRequest { name: "t".into() })
        .await
        .unwrap();
    let (rest, ended) = common::read_until_error(&mut sub.stream, Duration::from_secs(10)).await;
    assert!(rest.is_empty(), "{} frames after the deletion", rest.len());
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    until_all_hold(&c, &all, "t", None).await;

    // Re-created: a new epoch, and only the new frames, everywhere.
    publish("second", 30).await;
    let second = copy_of(&c, &leader, "t").await.unwrap();
    assert_ne!(second.0, first.0, "a re-created topic has a new epoch");
    until_all_hold(&c, &all, "t", Some(&second)).await;

    // A follower away while the topic is deleted and re-created again, and another topic
    // deleted, drops its old copies when it is back.
    let away = followers[1];
    c.node_mut(away).server.kill9();
    lc.delete_topic(framecast::proto::DeleteTopicRequest { name: "t".into() })
        .await
        .unwrap();
    lc.delete_topic(framecast::proto::DeleteTopicRequest {
        name: "kept".into(),
    })
    .await
    .unwrap();
    publish("third", 20).await;
    let third = copy_of(&c, &leader, "t").await.unwrap();
    assert_ne!(third.0, second.0);
    c.node_mut(away).server.restart();
    c.leader(&all, 3, Duration::from_secs(30)).await;
    until_all_hold(&c, &all, "t", Some(&third)).await;
    until_all_hold(&c, &all, "kept", None).await;
}

/// The nodes of `ids` other than `leader`.
fn others(ids: &[&str], leader: &str) -> Vec<String> {
    ids.iter()
        .filter(|n| **n != leader)
        .map(|n| n.to_string())
        .collect()
}

fn pid_of(c: &Cluster, id: &str) -> Pid {
    Pid::from_raw(c.node(id).server.child.id() as i32).unwrap()
}

/// The epoch of `topic` on node `id`, if it lists the topic.
async fn epoch_on(c: &Cluster, id: &str, topic: &str) -> Option<u64> {
    common::topic_info(&mut c.client(id).await, topic)
        .await
        .map(|t| t.epoch)
}

/// Node `id` (the leader) holds `topic` with these retention settings: CreateTopic with
/// them answers with the topic of `epoch`, with others ALREADY_EXISTS.
async fn holds_settings(c: &Cluster, id: &str, topic: &str, settings: (u64, u64), epoch: u64) {
    let create = |settings: (u64, u64)| framecast::proto::CreateTopicRequest {
        name: topic.into(),
        retention_max_age_seconds: settings.0,
        retention_max_bytes: settings.1,
    };
    let mut client = c.client(id).await;
    let same = client.create_topic(create(settings)).await.unwrap();
    assert_eq!(same.into_inner().epoch, epoch);
    let other = client
        .create_topic(create((settings.0 + 1, settings.1)))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
}

/// What CreateTopic (the topic's epoch) and DeleteTopic answered.
type Answers = (Result<u64, tonic::Status>, Result<(), tonic::Status>);

/// CreateTopic `name` with these settings and DeleteTopic `doomed` on node `id`, at once;
/// their answers.
fn create_and_delete(
    c: &Cluster,
    id: &str,
    name: &'static str,
    settings: (u64, u64),
    doomed: &'static str,
) -> tokio::task::JoinHandle<Answers> {
    let address = format!("http://{}", c.node(id).address);
    tokio::spawn(async move {
        let (mut a, mut b) = (connect(&address).await, connect(&address).await);
        let create = a.create_topic(framecast::proto::CreateTopicRequest {
            name: name.into(),
            retention_max_age_seconds: settings.0,
            retention_max_bytes: settings.1,
        });
        let delete = b.delete_topic(framecast::proto::DeleteTopicRequest {
            name: doomed.into(),
        });
        let (created, deleted) = tokio::join!(create, delete);
        (created.map(|r| r.into_inner().epoch), deleted.map(|_| ()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_create_or_delete_holds_on_the_next_leader() {
    let _serial = SERIAL.lock().await;
    // Leases long enough that a leader killed a second after its followers froze still
    // names them in sync: one of them is elected.
    let mut c = Cluster::start_with_lease(3, 2, "5s").await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(60)).await;
    let followers = others(&all, &leader);
    let mut lc = c.client(&leader).await;
    for seq in 0..10 {
        lc.publish(req("doomed", seq, b"d")).await.unwrap();
        lc.publish(req("kept", seq, b"k")).await.unwrap();
        lc.publish(req("gone", seq, b"g")).await.unwrap();
    }
    let doomed = copy_of(&c, &leader, "doomed").await.unwrap();
    let kept = copy_of(&c, &leader, "kept").await.unwrap();
    until_all_hold(&c, &all, "doomed", Some(&doomed)).await;
    until_all_hold(&c, &all, "kept", Some(&kept)).await;

    // One follower frozen: the calls wait for its word until it leaves the set, then the
    // other follower holds both changes, and, elected after the leader's kill -9, shows them.
    let (awake, frozen) = (followers[0].as_str(), followers[1].as_str());
    kill_process(pid_of(&c, frozen), Signal::STOP).unwrap();
    // A DeleteTopic its caller gave up on, retried: the retry's NOT_FOUND (the topic is
    // gone here) waits until the deletion is held too, so until the frozen follower left.
    let delete_gone = || framecast::proto::DeleteTopicRequest {
        name: "gone".into(),
    };
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), lc.delete_topic(delete_gone())).await;
    assert!(
        gave_up.is_err(),
        "answered with a frozen member: {gave_up:?}"
    );
    let retried = lc.delete_topic(delete_gone()).await.unwrap_err();
    assert_eq!(retried.code(), Code::NotFound, "{retried:?}");
    let info = c.info(&leader).await.unwrap();
    let member = info.nodes.iter().find(|n| n.id == frozen).unwrap();
    assert!(
        !member.in_sync,
        "NOT_FOUND while a member lacking the deletion was in sync: {info:?}"
    );
    let started = Instant::now();
    let answers = create_and_delete(&c, &leader, "fresh", (3600, 1 << 20), "doomed");
    let (created, deleted) = tokio::time::timeout(Duration::from_secs(30), answers)
        .await
        .expect("no answer within 30 s")
        .unwrap();
    let took = started.elapsed();
    let fresh = created.unwrap();
    deleted.unwrap();
    eprintln!("with one follower frozen, CreateTopic and DeleteTopic took {took:?}");
    c.node_mut(&leader).server.kill9();
    kill_process(pid_of(&c, frozen), Signal::CONT).unwrap();
    let next = c.leader(&[awake, frozen], 1, Duration::from_secs(60)).await;
    assert_eq!(next, awake, "the frozen follower had left the set");
    assert_eq!(epoch_on(&c, &next, "fresh").await, Some(fresh));
    assert_eq!(epoch_on(&c, &next, "doomed").await, None);
    assert_eq!(epoch_on(&c, &next, "gone").await, None);
    c.node_mut(&leader).server.restart();
    let leader = c.leader(&all, 3, Duration::from_secs(60)).await;
    assert_eq!(leader, next);
    holds_settings(&c, &leader, "fresh", (3600, 1 << 20), fresh).await;

    // Both followers frozen: nothing can be acknowledged. The leader dies a second later,
    // with the followers still named in sync; whichever is elected must show every change
    // that was acknowledged (it used to be acknowledged at once, and lost).
    let followers = others(&all, &leader);
    for f in &followers {
        kill_process(pid_of(&c, f), Signal::STOP).unwrap();
    }
    let answers = create_and_delete(&c, &leader, "later", (60, 4096), "kept");
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.node_mut(&leader).server.kill9();
    for f in &followers {
        kill_process(pid_of(&c, f), Signal::CONT).unwrap();
    }
    // A call the kill cut may be left without an answer by tonic: not acknowledged.
    let unanswered = || tonic::Status::unknown("no answer");
    let (created, deleted) = match tokio::time::timeout(Duration::from_secs(30), answers).await {
        Ok(answers) => answers.unwrap(),
        Err(_) => (Err(unanswered()), Err(unanswered())),
    };
    eprintln!("with both followers frozen: CreateTopic {created:?}, DeleteTopic {deleted:?}");
    let ids: Vec<&str> = followers.iter().map(String::as_str).collect();
    let next = c.leader(&ids, 2, Duration::from_secs(60)).await;
    let later = epoch_on(&c, &next, "later").await;
    let kept_there = copy_of(&c, &next, "kept").await;
    if let Ok(epoch) = created {
        assert_eq!(later, Some(epoch), "an acknowledged creation was lost");
    }
    if deleted.is_ok() {
        assert_eq!(kept_there, None, "an acknowledged deletion came back");
    }
    assert!(
        created.is_err() && deleted.is_err(),
        "acknowledged while no follower held the change: {created:?} {deleted:?}"
    );
    // Unacknowledged, the deletion may still have reached the followers (the leader sent it
    // before it died): the topic is there whole, or gone, never cut.
    eprintln!(
        "after the unacknowledged calls, the next leader {} the created topic and {} the deleted one",
        if later.is_some() { "holds" } else { "lacks" },
        if kept_there.is_some() { "holds" } else { "lacks" }
    );
    assert!(
        kept_there.is_none() || kept_there == Some(kept),
        "an unacknowledged deletion cut the topic: {:?}",
        kept_there.map(|k| k.1.len())
    );
}

/// Node `id`, stopped with damage in `topic`, repaired with `framecast repair` and started
/// again, until the cluster has all three nodes in sync.
async fn repaired_and_restarted(c: &mut Cluster, id: &str, topic: &str) {
    let data = c.node(id).server.data_dir.clone();
    let out = std::process::Command::new(common::bin())
        .args([
            "repair",
            "--data-dir",
            data.to_str().unwrap(),
            "--topic",
            topic,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    c.node_mut(id).server.restart();
    c.leader(&["n1", "n2", "n3"], 3, Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_damage_refuses_to_start_and_after_repair_copies_the_leaders_frames() {
    let _serial = SERIAL.lock().await;
    let flags = ["--segment-bytes", "65536", "--max-frame-bytes", "60000"];
    let mut c = Cluster::start_with(3, 2, &flags, None).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(30)).await;
    let away = all.into_iter().find(|n| *n != leader).unwrap();
    let mut lc = c.client(&leader).await;
    for seq in 0..600u64 {
        let payload = format!("frame {seq} {}", "d".repeat(200));
        lc.publish(req("orders", seq, payload.as_bytes()))
            .await
            .unwrap();
    }
    let held = copy_of(&c, &leader, "orders").await.unwrap();
    until_all_hold(&c, &all, "orders", Some(&held)).await;

    // One byte flipped in the middle of the follower's first (sealed) segment.
    c.node_mut(away).server.kill9();
    let data = c.node(away).server.data_dir.clone();
    let seg = data.join("topics/orders/00000000000000000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    // It refuses to start, as a single node does, and cuts nothing.
    let refused = c.node_mut(away).server.try_restart().unwrap_err();
    assert!(refused.contains("framecast repair"), "{refused}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing was cut");
    // The cluster goes on without it.
    lc.publish(req("orders", 600, b"while it is down"))
        .await
        .unwrap();

    // Repaired (a gap where the damage was, a new epoch), it takes the leader's copy
    // again, the damaged frames included.
    repaired_and_restarted(&mut c, away, "orders").await;
    let held = copy_of(&c, &leader, "orders").await.unwrap();
    assert_eq!(held.1.len(), 601);
    until_all_hold(&c, &all, "orders", Some(&held)).await;
}

/// Flips one byte of the first occurrence of `needle` in `seg`.
fn flip_a_byte_of(seg: &std::path::Path, needle: &[u8]) {
    let mut bytes = std::fs::read(seg).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{} holds no {needle:?}", seg.display()));
    bytes[at] ^= 0x20;
    std::fs::write(seg, &bytes).unwrap();
}

/// How a test damages a stopped node's copy of a topic's only segment.
enum Damage {
    /// One bit of the last frame flipped: a whole record that fails its check.
    LastFrame,
    /// The file cut short in the middle of its data, as a bad restore would.
    CutShort,
}

/// A node whose recovery cuts what may have been acknowledged does not lead while another
/// in-sync member holds it: it waits, follows the member that leads, copies the frames back
/// under the same epoch, and only then is its doubt settled (never before it holds every
/// frame the leader held) and may it lead again.
async fn a_node_in_doubt_waits_for_a_leader_and_copies_back(damage: Damage, frames: u64) {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, 2).await;
    let all = ["n1", "n2"];
    let damaged = c.leader(&all, 2, Duration::from_secs(30)).await;
    let other = all.into_iter().find(|n| *n != damaged).unwrap();
    // As `publish_all` writes frame i.
    let payload = |i: u64| format!("frame {i} {}", "r".repeat(80));
    publish_all(&c, &damaged, "dmg", 0..frames, |i| i).await;
    let held = copy_of(&c, &damaged, "dmg").await.unwrap();
    assert_eq!(held.1.len() as u64, frames);
    until_all_hold(&c, &all, "dmg", Some(&held)).await;

    // Both stop cleanly; then the damage, on the leader's copy.
    for id in all {
        c.node(id).server.sigterm();
        assert!(c
            .node_mut(id)
            .server
            .wait_exit(Duration::from_secs(30))
            .is_some());
    }
    let data = c.node(&damaged).server.data_dir.clone();
    let seg = data.join("topics/dmg/00000000000000000000.seg");
    match damage {
        Damage::LastFrame => flip_a_byte_of(&seg, payload(frames - 1).as_bytes()),
        Damage::CutShort => {
            // Cut in the middle of frame frames/2: not a length framecast gives a segment.
            let bytes = std::fs::read(&seg).unwrap();
            let needle = payload(frames / 2);
            let at = bytes
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap();
            let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(at as u64 + 5).unwrap();
        }
    }

    // Started first and alone, it cuts, keeps its doubt and does not campaign.
    c.node_mut(&damaged).server.restart();
    let start = Instant::now();
    while !c
        .node(&damaged)
        .server
        .log_text()
        .contains("not campaigning")
    {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(TTL * 2).await;
    assert!(
        !c.node(&damaged).server.log_text().contains("leading"),
        "{}",
        c.logs()
    );
    let doubt = data.join("topics/dmg/recovery-doubt");
    assert!(doubt.exists());

    // The other comes back and leads; the damaged node copies the frames back under the
    // same epoch. When its doubt is settled, it holds them all already.
    c.node_mut(other).server.restart();
    let start = Instant::now();
    while doubt.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut dc = c.client(&damaged).await;
    let end = common::topic_info(&mut dc, "dmg")
        .await
        .map(|t| t.next_offset);
    assert_eq!(end, Some(frames), "settled before holding every frame");
    // The log line follows the file's removal, and the server's output reaches the test
    // through a reader thread: wait for it, bounded.
    let start = Instant::now();
    while !c.node(&damaged).server.log_text().contains("doubt settled") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = c.leader(&all, 2, Duration::from_secs(30)).await;
    assert_eq!(leader, other, "{}", c.logs());
    until_all_hold(&c, &all, "dmg", Some(&held)).await;

    // The next frame takes the next offset.
    let mut lc = c.client(&leader).await;
    let ack = lc
        .publish(req("dmg", frames, b"after"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.offset, frames);
}

/// Bit rot in the last frame. Before, the damaged node cut the frame keeping the epoch
/// and, started first, was elected: the others cut the acknowledged frame too, and its
/// offset went to the next publish, in the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_recovery_cut_an_acknowledged_frame_does_not_lead_until_it_copied_it_back() {
    a_node_in_doubt_waits_for_a_leader_and_copies_back(Damage::LastFrame, 5).await;
}

/// A segment cut short losing half of 4,000 frames: the doubt is settled only once they
/// are all copied back (before, the first commit point the new leader sent settled it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_segment_was_cut_short_settles_its_doubt_only_once_it_holds_every_frame() {
    a_node_in_doubt_waits_for_a_leader_and_copies_back(Damage::CutShort, 4_000).await;
}
/// Flips one byte in the middle of `seg`, in place (a running server's mapping sees it).
fn flip_a_byte_in_place(seg: &std::path::Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0x20]).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_finding_damage_where_a_follower_needs_it_hands_over_to_an_in_sync_follower() {
    let _serial = SERIAL.lock().await;
    let flags = ["--segment-bytes", "65536", "--max-frame-bytes", "60000"];
    let mut c = Cluster::start_with(3, 2, &flags, None).await;
    let all = ["n1", "n2", "n3"];
    let old = c.leader(&all, 3, Duration::from_secs(30)).await;
    let others: Vec<&str> = all.into_iter().filter(|n| *n != old).collect();
    let (away, kept) = (others[0], others[1]);
    c.node_mut(away).server.kill9();
    let mut lc = c.client(&old).await;
    let payload = |seq: u64| format!("frame {seq} {}", "d".repeat(200)).into_bytes();
    for seq in 0..600u64 {
        lc.publish(req("orders", seq, &payload(seq))).await.unwrap();
    }
    // Bit rot in the leader's first segment, which the follower that was away needs.
    let old_seg = c
        .node(&old)
        .server
        .data_dir
        .join("topics/orders/00000000000000000000.seg");
    flip_a_byte_in_place(&old_seg);
    c.node_mut(away).server.restart();

    // The leader leaves (exit 1), and the follower that holds every frame takes over.
    let status = c.node_mut(&old).server.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the damaged leader is still running: {status:?}\n{}",
        c.logs()
    );
    assert!(
        c.node(&old)
            .server
            .log_text()
            .contains("damage in this leader's log where a follower needs it"),
        "{}",
        c.logs()
    );
    let new = c.leader(&[away, kept], 2, Duration::from_secs(30)).await;
    assert_eq!(
        new, kept,
        "only the follower that holds every frame may lead"
    );
    let on_new = log_of(&c, kept, "orders").await;
    let frames: Vec<(u64, Vec<u8>)> = on_new
        .iter()
        .map(|f| (f.seq_no, f.payload.to_vec()))
        .collect();
    assert_eq!(
        frames,
        (0..600u64).map(|s| (s, payload(s))).collect::<Vec<_>>()
    );
    let held = copy_of(&c, kept, "orders").await.unwrap();
    until_all_hold(&c, &[away], "orders", Some(&held)).await;

    // The damaged node refuses to start until repaired; then it takes the new leader's copy.
    let refused = c.node_mut(&old).server.try_restart().unwrap_err();
    assert!(refused.contains("framecast repair"), "{refused}");
    repaired_and_restarted(&mut c, &old, "orders").await;
    until_all_hold(&c, &all, "orders", Some(&held)).await;
}

/// Node `id`'s own position in `topic` as its Cluster answer gives it: (next offset it
/// holds durably, commit point).
async fn position_on(c: &Cluster, id: &str, topic: &str) -> Option<(u64, u64)> {
    let info = c.info(id).await?;
    let me = info.nodes.iter().find(|n| n.id == id)?;
    let p = me.topics.iter().find(|p| p.topic == topic)?;
    Some((p.next_offset, p.commit_offset))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_a_node_cannot_serve_yet_are_sent_on_to_the_leader_or_asked_again() {
    use framecast::broker::cursor::CursorToken;
    use framecast::proto::{Cursor, HistoryRequest, SubscribeRequest};
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(30)).await;
    let followers: Vec<&str> = all.into_iter().filter(|n| *n != leader).collect();
    let leader_addr = c.node(&leader).address.clone();
    let mut lc = c.client(&leader).await;
    for seq in 0..20u64 {
        lc.publish(req("prices", seq, &payload_of(seq)))
            .await
            .unwrap();
    }
    until_delivers(&c, followers[0], "prices", 20).await;
    let epoch = common::subscribe(&mut lc, common::sub_req("prices", 0))
        .await
        .unwrap()
        .epoch;
    let resume = |cursor: Cursor| SubscribeRequest {
        replay_seq_no_start: 0,
        topic: "prices".into(),
        resume: Some(cursor),
    };
    let cursor = |epoch: u64, snapshot: u64, offset: u64| Cursor {
        snapshot_offset: snapshot,
        seq_no: offset,
        timestamp: i64::from(offset > 0),
        offset,
        epoch,
    };
    // Cursors from a node ahead of this follower (a snapshot or a frame it has not copied),
    // or of an epoch it does not hold: the follower names the leader, whose answer is final.
    let other_epoch = epoch ^ 1;
    for (cursor, lacks, final_code) in [
        (
            cursor(epoch, 1_000_000, 0),
            "topic 'prices' up to offset 1000000".to_string(),
            Code::OutOfRange,
        ),
        (
            cursor(epoch, 20, 1_000_000),
            "topic 'prices' up to offset 1000001".to_string(),
            Code::OutOfRange,
        ),
        (
            cursor(other_epoch, 20, 0),
            format!("topic 'prices' of epoch {other_epoch}"),
            Code::FailedPrecondition,
        ),
    ] {
        let mut fc = c.client(followers[0]).await;
        let refused = common::subscribe_error(&mut fc, resume(cursor)).await;
        grpc_names_the_leader(&refused, &lacks, &leader_addr);
        let answer = common::subscribe_error(&mut lc, resume(cursor)).await;
        assert_eq!(answer.code(), final_code, "{answer:?}");
    }
    // A History token of another epoch alike.
    let token = CursorToken {
        start_seq_no: 0,
        snapshot: 20,
        epoch: other_epoch,
        last: None,
        reverse: false,
        floor: Some(0),
    }
    .encode();
    let page = || HistoryRequest {
        topic: "prices".into(),
        after: token.clone(),
        ..Default::default()
    };
    let mut fc = c.client(followers[0]).await;
    let refused = fc.history(page()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.metadata().get(LEADER_HEADER).is_some());
    let answer = lc.history(page()).await.unwrap_err();
    assert_eq!(answer.code(), Code::FailedPrecondition, "{answer:?}");

    // The leader holds a frame it has not committed yet (both followers frozen, well within
    // --replica-max-lag): a cursor naming it is to be asked again, not refused for good.
    let pids: Vec<Pid> = followers
        .iter()
        .map(|f| Pid::from_raw(c.node(f).server.child.id() as i32).unwrap())
        .collect();
    for p in &pids {
        kill_process(*p, Signal::STOP).unwrap();
    }
    let mut pc = c.client(&leader).await;
    let waiting = tokio::spawn(async move { pc.publish(req("prices", 20, b"twenty")).await });
    let start = Instant::now();
    while position_on(&c, &leader, "prices").await != Some((21, 20)) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the frame never became durable"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ahead = resume(cursor(epoch, 20, 20));
    let again = common::subscribe_error(&mut lc, ahead.clone()).await;
    for p in &pids {
        kill_process(*p, Signal::CONT).unwrap();
    }
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");
    assert!(again.message().contains("not committed yet"), "{again:?}");
    assert!(again.metadata().get(LEADER_HEADER).is_none());
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Committed now: the same cursor opens, and the stream goes on after frame 20.
    let mut sub = common::subscribe(&mut lc, ahead).await.unwrap();
    lc.publish(req("prices", 21, b"twenty-one")).await.unwrap();
    let next = common::take(&mut sub.stream, 1, Duration::from_secs(10)).await;
    assert_eq!((next[0].offset, next[0].seq_no), (21, 21));
}

/// The next WatchCluster event of `kind` (others are skipped), within 20 s.
async fn next_event_of(
    events: &mut tonic::Streaming<framecast::proto::ClusterEvent>,
    kind: framecast::proto::cluster_event::Kind,
) -> framecast::proto::ClusterEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, events.message())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event within 20 s"))
            .unwrap()
            .expect("the watch ended");
        if e.kind() == kind {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_reports_the_leaders_death_the_new_leader_and_its_return() {
    use framecast::proto::cluster_event::Kind;
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let all = ["n1", "n2", "n3"];
    let old = c.leader(&all, 3, Duration::from_secs(30)).await;
    let watcher = all.into_iter().find(|n| *n != old).unwrap();
    let mut wc = c.client(watcher).await;
    let mut events = wc
        .watch_cluster(ClusterRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let term = first.cluster.as_ref().unwrap().term;
    c.node_mut(&old).server.kill9();

    let gone = next_event_of(&mut events, Kind::NodeOffline).await;
    assert_eq!(gone.node_id, old);
    // Listed offline, not leading, while the in-sync set still counts it.
    let view = gone.cluster.unwrap();
    let listed = view.nodes.iter().find(|n| n.id == old).unwrap();
    assert!(
        !listed.online && !listed.leader && listed.in_sync,
        "{view:?}"
    );
    // The old leader's key goes (a change to no leader), then a new one is elected.
    let changed = loop {
        let e = next_event_of(&mut events, Kind::LeaderChanged).await;
        let view = e.cluster.as_ref().unwrap();
        if view.leader.is_empty() {
            assert_eq!(e.node_id, old);
            continue;
        }
        break e;
    };
    let view = changed.cluster.unwrap();
    assert_ne!(changed.node_id, old);
    assert!(view.term > term, "{view:?}");
    let new = c
        .leader(
            &all.into_iter().filter(|n| *n != old).collect::<Vec<_>>(),
            2,
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(changed.node_id, new);

    c.node_mut(&old).server.restart();
    let back = next_event_of(&mut events, Kind::NodeOnline).await;
    assert_eq!(back.node_id, old);
    let view = back.cluster.unwrap();
    assert!(view.nodes.iter().find(|n| n.id == old).unwrap().online);
    assert_eq!(view.leader, c.node(&new).address);

    // `framecast cluster` asked on the follower prints the same: three nodes online, the
    // new one leading.
    let out = std::process::Command::new(common::bin())
        .args([
            "cluster",
            "--addr",
            &format!("http://{}", c.node(watcher).address),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.starts_with(&format!("term {}, leader {}\n", view.term, view.leader)),
        "{text}"
    );
    let rows: Vec<&str> = text.lines().skip(2).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(rows.iter().all(|r| r.ends_with("yes")), "{text}");
    let leading: Vec<&str> = rows
        .iter()
        .filter(|r| r.contains(" leader "))
        .copied()
        .collect();
    assert_eq!(leading.len(), 1, "{text}");
    assert!(leading[0].starts_with(&new), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_before_its_lease_would_lapse() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let (mut acked, handovers) = leader_stops_under_load(&mut c, 2, true).await;
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let seq = acked.iter().map(|a| a.0 + 1).max().unwrap_or(0);
    // A follower stopped cleanly leaves at once: the leader stops waiting for it without
    // holding acks up for --replica-max-lag (3 s).
    let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
    let follower = ids.into_iter().find(|i| *i != leader).unwrap();
    let load = Load::start(addresses.clone(), "orders", seq);
    until("some acks", Duration::from_secs(20), || load.acked() >= 200).await;
    c.node(follower).server.sigterm();
    let status = c
        .node_mut(follower)
        .server
        .wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let acks = load.acked();
    until(
        "more acks without the follower",
        Duration::from_secs(20),
        || load.acked() >= acks + 200,
    )
    .await;
    let (stall, _) = load.longest_gap();
    acked.extend(load.finish().await);
    c.node_mut(follower).server.restart();
    let leader = c.leader(&ids, 3, Duration::from_secs(40)).await;
    let on_leader = log_of(&c, &leader, "orders").await;
    holds_every_ack(&on_leader, &acked);
    eprintln!(
        "handover times (SIGTERM to the next ack elsewhere, lease TTL {TTL:?}): {handovers:?}; \
         longest stall of acks while a follower stopped: {stall:?}"
    );
    // Less than a lease (and than `--replica-max-lag`, 3 s): the leader did not wait the
    // follower out. Not tighter: a loaded machine can pause a node for a second.
    assert!(
        stall < TTL,
        "acks stalled {stall:?} while a follower stopped cleanly"
    );
    for h in &handovers {
        assert!(
            *h < TTL,
            "writes were accepted again only after {h:?}: a leader stopped cleanly must hand over \
             before its lease ({TTL:?}) would lapse"
        );
    }
}

/// Frames a web reader saw, as `Frame`s (offset, seq_no, timestamp, payload).
type Seen = Arc<Mutex<Vec<Frame>>>;

/// A frame of an SSE event's or a WebSocket push's JSON.
fn frame_of_json(v: &serde_json::Value) -> Frame {
    use base64::Engine;
    let num = |k: &str| v[k].as_str().unwrap().parse::<u64>().unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str().unwrap_or(""))
        .unwrap();
    Frame::new(
        num("seq_no"),
        payload.into(),
        v["timestamp"].as_str().unwrap().parse().unwrap(),
        num("offset"),
    )
}

/// The index in `doors` of the door a refusal names, else the next one after `at`.
fn named_or_next(doors: &[String], named: Option<&str>, at: usize) -> usize {
    named
        .and_then(|n| doors.iter().position(|d| d == n))
        .unwrap_or(at + 1)
}

/// A Server-Sent Events reader of `topic` (a thread) that leaves its node for the next one
/// after every `hop` frames, and whenever its node is down or its stream ends, resuming with
/// the last event's id as `Last-Event-ID`, as a browser's `EventSource` does; a node that
/// names the leader sends it there. Any other refusal of a resume fails it.
fn sse_hopper(doors: Vec<String>, topic: &str, hop: usize) -> (Seen, std::thread::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let (s, path) = (
        Arc::clone(&seen),
        format!("/v1/topics/{topic}/events?from=0"),
    );
    let task = std::thread::spawn(move || {
        let (mut at, mut last_id) = (1usize, None::<String>);
        // Ends when the nodes are gone at the end of the test.
        for _attempt in 0..2_000 {
            let door = &doors[at % doors.len()];
            let headers: Vec<(&str, &str)> = last_id
                .iter()
                .map(|id| ("Last-Event-ID", id.as_str()))
                .collect();
            let mut stream = match common::sse::try_open(door, &path, &headers) {
                Ok(Ok(stream)) => stream,
                Ok(Err(refused)) => {
                    assert_eq!(
                        refused.status,
                        503,
                        "{door} refused a resume: {}",
                        refused.text()
                    );
                    at = named_or_next(&doors, refused.header("framecast-leader"), at);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(_) => {
                    at += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let mut here = 0;
            while let Ok(Some(event)) = stream.try_next_event() {
                if event.event == "error" {
                    break;
                }
                last_id = event.id.clone().or(last_id);
                if event.event == "frame" {
                    s.lock().unwrap().push(frame_of_json(&event.json()));
                    here += 1;
                    if here == hop {
                        break;
                    }
                }
            }
            at += 1;
        }
    });
    (seen, task)
}

/// The WebSocket counterpart of [`sse_hopper`] (a task): it subscribes with the last push's
/// cursor as `resume` on each node in turn.
fn ws_hopper(doors: Vec<String>, topic: &str, hop: usize) -> (Seen, tokio::task::JoinHandle<()>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let seen: Seen = Arc::default();
    let (s, topic) = (Arc::clone(&seen), topic.to_string());
    let task = tokio::spawn(async move {
        let (mut at, mut cursor) = (2usize, None::<serde_json::Value>);
        loop {
            let url = format!("{}/v1/ws", doors[at % doors.len()]).replace("http://", "ws://");
            let opened = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_tungstenite::connect_async(url),
            );
            let Ok(Ok((mut ws, _))) = opened.await else {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut sub = serde_json::json!({"topic": topic, "from": "0"});
            if let Some(c) = &cursor {
                sub["resume"] = c.clone();
            }
            let hello = serde_json::json!({"id": 1, "subscribe": sub}).to_string();
            if ws.send(Message::text(hello)).await.is_err() {
                at += 1;
                continue;
            }
            let mut here = 0;
            let mut next = at + 1;
            // A node killed under the socket may leave it silent: hop on after 10 s.
            while let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(10), ws.next()).await
            {
                let Message::Text(t) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if let Some(e) = v.get("error") {
                    assert_eq!(e["code"], "UNAVAILABLE", "a refused resume: {v}");
                    next = named_or_next(&doors, e["leader"].as_str(), at);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
                if v.get("end").is_some() {
                    break;
                }
                if let Some(f) = v.get("frame") {
                    s.lock().unwrap().push(frame_of_json(f));
                    cursor = Some(f["cursor"].clone());
                    here += 1;
                    if here == hop {
                        break;
                    }
                }
            }
            at = next;
        }
    });
    (seen, task)
}

/// SSE and WebSocket subscribers that move from node to node every few hundred frames, with
/// their cursors, while the leader is killed and comes back: every frame of the final
/// leader's log, in order, once, whichever node served it (API.md: "Subscribe, History and
/// the HTTP reads work on every node, with the same cursors").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_subscribers_hopping_between_nodes_with_their_cursors_miss_nothing_across_a_failover() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let doors: Vec<String> = c
        .nodes
        .iter()
        .map(|n| n.server.http.clone().unwrap())
        .collect();
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    publish_to(&c, &leader, 0).await.unwrap();
    let (sse, sse_task) = sse_hopper(doors.clone(), "orders", 97);
    let (ws, ws_task) = ws_hopper(doors.clone(), "orders", 131);
    let load = Load::start(addresses.clone(), "orders", 1);
    until("frames flow", Duration::from_secs(20), || {
        load.acked() >= 500
    })
    .await;
    c.node_mut(&leader).server.kill9();
    let before = load.acked();
    until("writes after the failover", Duration::from_secs(30), || {
        load.acked() >= before + 300
    })
    .await;
    c.node_mut(&leader).server.restart();
    let before = load.acked();
    until(
        "writes with the old leader back",
        Duration::from_secs(30),
        || load.acked() >= before + 500,
    )
    .await;
    let acked = load.finish().await;
    let new = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let on_leader = log_of(&c, &new, "orders").await;
    holds_every_ack(&on_leader, &acked);
    for (transport, seen) in [("SSE", &sse), ("WebSocket", &ws)] {
        until(
            &format!("the {transport} reader has every frame"),
            Duration::from_secs(30),
            || {
                seen.lock().unwrap().len() >= on_leader.len()
                    || sse_task.is_finished()
                    || ws_task.is_finished()
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if sse_task.is_finished() || ws_task.is_finished() {
            break;
        }
        let got = seen.lock().unwrap().clone();
        assert!(
            same_frames(&on_leader, &got),
            "a {transport} subscriber hopping between nodes saw a gap, a duplicate or another \
             frame: {} frames vs {} on the leader",
            got.len(),
            on_leader.len()
        );
    }
    // A reader that stopped failed: its panic, else that it gave up.
    if sse_task.is_finished() {
        match sse_task.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("the SSE reader gave up"),
        }
    }
    if ws_task.is_finished() {
        ws_task.await.unwrap();
        panic!("the WebSocket reader ended");
    }
    ws_task.abort();
}

/// Node `id`'s `framecast_compactions_total` for `topic`.
fn compactions_on(c: &Cluster, id: &str, topic: &str) -> f64 {
    let door = c.node(id).server.http.clone().unwrap();
    let text = common::http::request(&door, "GET", "/metrics", &[], b"").text();
    common::http::metric(
        &text,
        &format!("framecast_compactions_total{{topic=\"{topic}\"}}"),
    )
    .unwrap_or(0.0)
}

/// The fullest message a leader sends: a follower behind a compacted run is shipped its
/// records one by one, and one message takes small records while they hold under 1 MiB and
/// then the next record whatever its size. Here that is just under 1 MiB of 1 KB frames and
/// then the largest frame a 4 MiB segment holds, with the longest idempotency key: the
/// follower, `kill -9`ed before any of it and restarted once the leader compacted it, copies
/// it all and is back in the in-sync set. Then every node compacts its own copy and serves
/// the same frames from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_run_copies_a_message_of_small_frames_and_the_largest() {
    let _serial = SERIAL.lock().await;
    let extra = [
        "--segment-bytes",
        "4MiB",
        "--compact-after-segments",
        "1",
        "--compaction-mb-per-sec",
        "0",
    ];
    let mut c = Cluster::start_with(3, 2, &extra, None).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(30)).await;
    let behind = all.into_iter().find(|n| *n != leader).unwrap();
    c.node_mut(behind).server.kill9();

    // A record is a 40-byte header and its payload (no key): 1,008 records of 1,000 B are
    // 1,048,320 B, under 1 MiB, so the record after them rides in the same message.
    let max = 4 * 1024 * 1024 - 1024;
    let mut lc = c.client(&leader).await;
    let mut sent = Vec::new();
    for seq in 0..1_008u64 {
        let payload = vec![(seq % 251) as u8; 1_000];
        lc.publish(req("big", seq, &payload)).await.unwrap();
        sent.push((seq, payload));
    }
    let largest: Vec<u8> = (0..max).map(|i| (i % 253) as u8).collect();
    let mut r = req("big", 1_008, &largest);
    r.idempotency_key = "k".repeat(128);
    lc.publish(r).await.unwrap();
    sent.push((1_008, largest));
    // The next frames start a third segment: the first two are sealed and compacted.
    for seq in 1_009..1_019u64 {
        let payload = seq.to_be_bytes().to_vec();
        lc.publish(req("big", seq, &payload)).await.unwrap();
        sent.push((seq, payload));
    }
    until(
        "the leader compacts the topic",
        Duration::from_secs(30),
        || compactions_on(&c, &leader, "big") >= 1.0,
    )
    .await;

    c.node_mut(behind).server.restart();
    let info = common::topic_info(&mut lc, "big").await.unwrap();
    let held = (info.epoch, sent);
    until_all_hold(&c, &[behind], "big", Some(&held)).await;
    let now = c.leader(&all, 3, Duration::from_secs(30)).await;
    assert_eq!(now, leader);
    // Each node compacts its own copy (below its commit point), and serves the same frames
    // from it.
    for id in all {
        until(
            &format!("{id} compacts its copy"),
            Duration::from_secs(30),
            || compactions_on(&c, id, "big") >= 1.0,
        )
        .await;
    }
    until_all_hold(&c, &all, "big", Some(&held)).await;
}

/// A node started with segments too small for the leader's largest frame (`--segment-bytes
/// 2MiB` against the default `--max-frame-bytes` of 4 MiB − 1 KiB) could never copy such a
/// frame: the leader refuses it at once, naming the `--segment-bytes` it needs, rather than
/// when the first large frame comes. The refusal is logged once, not at every reconnection;
/// the node stays out of the in-sync set while the others take every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_segments_cannot_hold_the_leaders_largest_frame_is_refused_at_once() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(2, 2).await;
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    c.add_node(
        2,
        &["--segment-bytes", "2MiB", "--max-frame-bytes", "1MiB"],
        &[],
    );
    let needs = "--segment-bytes 4193520 or more";
    until("the small node is refused", Duration::from_secs(20), || {
        c.node("n3").server.log_text().contains(needs)
    })
    .await;
    assert!(
        c.node(&leader)
            .server
            .log_text()
            .contains("refusing a follower that cannot hold this leader's frames"),
        "{}",
        c.logs()
    );
    // Reconnecting every 200 ms for 3 s: the refusal is logged once on either side.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (id, line) in [
        ("n3", "following stopped"),
        (leader.as_str(), "refusing a follower"),
    ] {
        let text = c.node(id).server.log_text();
        assert_eq!(text.matches(line).count(), 1, "{id}:\n{text}");
    }
    let info = c.info(&leader).await.unwrap();
    let n3 = info.nodes.iter().find(|n| n.id == "n3").unwrap();
    assert!(n3.online && !n3.in_sync, "{info:?}");
    // The others take a frame of the largest size.
    let max = 4 * 1024 * 1024 - 1024;
    let mut lc = c.client(&leader).await;
    let mut r = req("big", 1, &vec![7u8; max]);
    r.idempotency_key = "k".repeat(128);
    lc.publish(r).await.unwrap();
    for id in ["n1", "n2"] {
        until_delivers(&c, id, "big", 1).await;
    }
    assert!(common::topic_info(&mut c.client("n3").await, "big")
        .await
        .is_none());
}

/// Five nodes with `--min-insync 3`: the leader and a follower `kill -9`ed at the same
/// instant under load. One of the three left is elected, drops the dead follower from the
/// in-sync set, and acknowledges again (the time is measured); every acknowledged frame is
/// on it, and a retry of each answered as a duplicate; both dead nodes come back and all
/// five hold the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_lose_the_leader_and_a_follower_at_once_and_lose_no_acknowledged_frame() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(5, 3).await;
    let ids = ["n1", "n2", "n3", "n4", "n5"];
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let leader = c.leader(&ids, 5, Duration::from_secs(40)).await;
    let follower = ids.into_iter().find(|n| *n != leader).unwrap();
    let load = Load::start(addresses, "orders", 0);
    until("some acks", Duration::from_secs(20), || load.acked() >= 300).await;
    let killed = Instant::now();
    c.node_mut(&leader).server.kill9();
    c.node_mut(follower).server.kill9();
    let old = c.node(&leader).address.clone();
    until("writes accepted again", Duration::from_secs(30), || {
        load.first_ack_after(killed, &old).is_some()
    })
    .await;
    let after = load.first_ack_after(killed, &old).unwrap() - killed;
    let acks = load.acked();
    until("more acks", Duration::from_secs(20), || {
        load.acked() >= acks + 300
    })
    .await;
    let acked = load.finish().await;
    eprintln!(
        "leader {leader} and follower {follower} killed at once: writes accepted again after \
         {after:?}; {} frames acknowledged",
        acked.len()
    );
    // The lease lapses (TTL), then the dead follower leaves the in-sync set (at most
    // --replica-max-lag, 3 s) before a commit point can move without it.
    assert!(
        after <= TTL + Duration::from_secs(3 + 2),
        "writes were accepted again only after {after:?}\n{}",
        c.logs()
    );
    let survivors: Vec<&str> = ids
        .into_iter()
        .filter(|n| *n != leader && *n != follower)
        .collect();
    let new = c.leader(&survivors, 3, Duration::from_secs(30)).await;
    let on_leader = log_of(&c, &new, "orders").await;
    holds_every_ack(&on_leader, &acked);
    // A producer that lost the acks retries with the same keys: the new leader answers
    // each as a duplicate at its first offset, those the old leader acknowledged too.
    let mut nc = c.client(&new).await;
    for &(seq, offset) in &acked[acked.len() - 400..] {
        let mut r = req("orders", seq, &payload_of(seq));
        r.idempotency_key = format!("k{seq}");
        let ack = nc.publish(r).await.unwrap().into_inner();
        assert!(
            ack.duplicate && ack.offset == offset,
            "frame {seq}: {ack:?}"
        );
    }
    c.node_mut(&leader).server.restart();
    c.node_mut(follower).server.restart();
    assert_eq!(c.leader(&ids, 5, Duration::from_secs(40)).await, new);
    for id in ids {
        converged(&c, id, "orders", &on_leader).await;
    }
}

/// Every way to write, through every door, sent to a follower: refused as `UNAVAILABLE`
/// (HTTP 503) naming the leader, and nothing is written, created or deleted on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_through_every_door_of_a_follower_names_the_leader_and_changes_nothing() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 2).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(30)).await;
    let follower = all.into_iter().find(|n| *n != leader).unwrap();
    for seq in 0..5 {
        publish_to(&c, &leader, seq).await.unwrap();
    }
    for id in all {
        until_delivers(&c, id, "orders", 5).await;
    }
    let before: Vec<Vec<Frame>> =
        futures::future::join_all(all.map(|id| log_of(&c, id, "orders"))).await;
    let leader_grpc = c.node(&leader).address.clone();
    let leader_http = c.node(&leader).server.http.clone().unwrap();

    // gRPC.
    let grpc_refused = |what: &str, r: Result<(), tonic::Status>| {
        let refused = r.expect_err(what);
        assert_eq!(refused.code(), Code::Unavailable, "{what}: {refused:?}");
        assert_eq!(
            refused
                .metadata()
                .get(LEADER_HEADER)
                .and_then(|v| v.to_str().ok()),
            Some(leader_grpc.as_str()),
            "{what}: {refused:?}"
        );
    };
    let mut fc = c.client(follower).await;
    grpc_refused("Publish", fc.publish(req("new", 1, b"x")).await.map(|_| ()));
    let stream = tokio_stream::iter(vec![req("new", 1, b"x"), req("orders", 99, b"y")]);
    let streamed = match fc.publish_stream(stream).await {
        Ok(acks) => acks.into_inner().message().await.map(|_| ()),
        Err(e) => Err(e),
    };
    grpc_refused("PublishStream", streamed);
    grpc_refused(
        "Broadcast",
        fc.broadcast(framecast::proto::BroadcastRequest {
            topics: vec!["orders".into(), "new".into()],
            seq_no: 7,
            payload: b"z".to_vec().into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    grpc_refused(
        "CreateTopic",
        fc.create_topic(framecast::proto::CreateTopicRequest {
            name: "new".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
    );
    grpc_refused(
        "DeleteTopic",
        fc.delete_topic(framecast::proto::DeleteTopicRequest {
            name: "orders".into(),
        })
        .await
        .map(|_| ()),
    );

    // HTTP.
    let door = c.node(follower).server.http.clone().unwrap();
    for (method, path, body) in [
        ("POST", "/v1/topics/orders/frames?seq_no=50", &b"x"[..]),
        ("POST", "/v1/topics/new/frames?seq_no=1", b"x"),
        ("PUT", "/v1/topics/new", b"{}"),
        ("DELETE", "/v1/topics/orders", b""),
        (
            "POST",
            "/v1/broadcast",
            br#"{"topics":["orders","new"],"seq_no":"8","payload":"eg=="}"#,
        ),
    ] {
        let refused = common::http::request(&door, method, path, &[], body);
        assert_eq!(refused.status, 503, "{method} {path}: {}", refused.text());
        assert_eq!(
            refused.header("framecast-leader"),
            Some(leader_http.as_str()),
            "{method} {path}"
        );
        assert_eq!(refused.json()["leader"], leader_http.as_str());
    }

    // WebSocket.
    let url = format!("{door}/v1/ws").replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    for (id, topic) in [(1, "orders"), (2, "new")] {
        let publish =
            serde_json::json!({"id": id, "publish": {"topic": topic, "seq_no": "60", "text": "x"}});
        ws.send(Message::text(publish.to_string())).await.unwrap();
        let reply = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = msg {
                break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
            }
        };
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(reply["error"]["code"], "UNAVAILABLE", "{reply}");
        assert_eq!(reply["error"]["leader"], leader_http.as_str(), "{reply}");
    }

    // Nothing changed anywhere: "orders" as it was, and no "new".
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, was) in all.into_iter().zip(&before) {
        let mut client = c.client(id).await;
        let names: Vec<String> = common::list_topics(&mut client)
            .await
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["orders"], "{id}");
        assert!(same_frames(was, &log_of(&c, id, "orders").await), "{id}");
    }
}

/// Readers that never read on a follower (SSE, WebSocket and gRPC) while 200 MiB are
/// published to the leader: the follower's memory stays bounded (no queue grows with their
/// lag), copying goes on, and a reader on the same follower gets every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_on_a_follower_cost_it_bounded_memory() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(3, 3).await;
    let all = ["n1", "n2", "n3"];
    let leader = c.leader(&all, 3, Duration::from_secs(30)).await;
    let follower = all.into_iter().find(|n| *n != leader).unwrap();
    let mut lc = c.client(&leader).await;
    lc.publish(req("firehose", 0, b"first")).await.unwrap();
    until_delivers(&c, follower, "firehose", 1).await;
    let node = &c.node(follower).server;
    let baseline = node.rss_anon();
    let door = node.http.clone().unwrap();

    let url = format!("{door}/v1/ws").replace("http://", "ws://");
    let (mut stalled_ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = serde_json::json!({"id": 1, "subscribe": {"topic": "firehose"}});
    stalled_ws
        .send(Message::text(hello.to_string()))
        .await
        .unwrap();
    let stalled_sse = tokio::task::spawn_blocking(move || {
        common::sse::open(&door, "/v1/topics/firehose/events", &[])
            .ok()
            .unwrap()
    })
    .await
    .unwrap();
    let mut fc = c.client(follower).await;
    let stalled_grpc = common::subscribe(&mut fc, common::sub_req("firehose", 0))
        .await
        .unwrap();
    let reading = common::subscribe(
        &mut c.client(follower).await,
        common::sub_req("firehose", 0),
    )
    .await
    .unwrap();
    let frames = 800u64;
    let reader = tokio::spawn(async move {
        let mut stream = reading.stream;
        let got = common::take(&mut stream, frames as usize + 1, Duration::from_secs(240)).await;
        got.iter().map(|f| f.offset).collect::<Vec<_>>()
    });

    // 200 MiB in 256 KiB frames, acknowledged once all three nodes hold them.
    let payload = vec![7u8; 256 << 10];
    let mut peak = 0;
    common::publish_in_batches(&mut lc, "firehose", 1, frames, &payload, 16, || {
        peak = peak.max(node.rss_anon());
    })
    .await;
    let offsets = tokio::time::timeout(Duration::from_secs(240), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        offsets,
        (0..=frames).collect::<Vec<_>>(),
        "the reading subscriber on the follower got every frame"
    );
    peak = peak.max(node.rss_anon());
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "follower RssAnon baseline {} MiB, peak {} MiB",
        baseline >> 20,
        peak >> 20
    );
    assert!(
        grew < 96 << 20,
        "the follower's anonymous memory grew by {} MiB",
        grew >> 20
    );
    drop((stalled_ws, stalled_sse, stalled_grpc));
}

/// A node restarted at once after a `kill -9` (a supervisor's restart comes well within a
/// lease TTL) finds its earlier run still registered: it revokes that run's lease (it holds
/// its data directory, so that run is gone) instead of refusing to start until the lease
/// lapses. A follower is back in the in-sync set; a leader's restart ends its term at once,
/// so another node leads long before the lease (10 s here) would have lapsed; no
/// acknowledged frame is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_at_once_after_kill_9_revokes_its_earlier_runs_lease() {
    let _serial = SERIAL.lock().await;
    let ttl = Duration::from_secs(10);
    let mut c = Cluster::start_with_lease(3, 2, "10s").await;
    let ids = ["n1", "n2", "n3"];
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let follower = ids.into_iter().find(|n| *n != leader).unwrap();
    let load = Load::start(addresses, "orders", 0);
    until("some acks", Duration::from_secs(20), || load.acked() >= 200).await;

    c.node_mut(follower).server.kill9();
    let restarted = c.node_mut(follower).server.try_restart();
    assert!(
        restarted.is_ok(),
        "the follower did not start again: {restarted:?}"
    );
    assert!(c
        .node(follower)
        .server
        .log_text()
        .contains("an earlier run of this node"));
    assert_eq!(c.leader(&ids, 3, Duration::from_secs(20)).await, leader);

    let acks = load.acked();
    until("more acks", Duration::from_secs(20), || {
        load.acked() >= acks + 200
    })
    .await;
    let killed = Instant::now();
    c.node_mut(&leader).server.kill9();
    let restarted = c.node_mut(&leader).server.try_restart();
    assert!(
        restarted.is_ok(),
        "the leader did not start again: {restarted:?}"
    );
    let old = c.node(&leader).address.clone();
    until("writes accepted again", Duration::from_secs(20), || {
        load.first_ack_after(killed, &old).is_some()
    })
    .await;
    let after = load.first_ack_after(killed, &old).unwrap() - killed;
    eprintln!("leader {leader} killed and restarted at once: writes accepted again after {after:?} (lease TTL {ttl:?})");
    // Its lease would have lapsed 6.7-10 s after the kill (renewed every third of the TTL).
    assert!(
        after < ttl / 2,
        "writes were accepted again only after {after:?}\n{}",
        c.logs()
    );
    let acks = load.acked();
    until("more acks", Duration::from_secs(20), || {
        load.acked() >= acks + 200
    })
    .await;
    let acked = load.finish().await;
    let new = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let on_leader = log_of(&c, &new, "orders").await;
    holds_every_ack(&on_leader, &acked);
    for id in ids {
        converged(&c, id, "orders", &on_leader).await;
    }
}

/// A rolling restart, as for an upgrade: each node in turn stopped with SIGTERM (the
/// leader among them), started again at once and waited for until all three are in sync,
/// under a steady publisher and a subscriber that resumes on the next node when its own
/// stops. No ack stalls as long as a lease TTL, every ack is on the final leader, and the
/// subscriber saw its log exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_stalls_no_ack_for_a_lease_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3, 2).await;
    let ids = ["n1", "n2", "n3"];
    let addresses: Vec<String> = c.nodes.iter().map(|n| n.address.clone()).collect();
    let first_leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    publish_to(&c, &first_leader, 0).await.unwrap();
    let reader = Reader::start(addresses.clone(), 0, "orders");
    let load = Load::start(addresses, "orders", 1);
    for id in ids {
        let acks = load.acked();
        until("acks before the next stop", Duration::from_secs(20), || {
            load.acked() >= acks + 200
        })
        .await;
        c.node(id).server.sigterm();
        let status = c.node_mut(id).server.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "{id}: {status:?}\n{}",
            c.logs()
        );
        c.node_mut(id).server.restart();
        c.leader(&ids, 3, Duration::from_secs(30)).await;
    }
    let acks = load.acked();
    until(
        "acks after the last restart",
        Duration::from_secs(20),
        || load.acked() >= acks + 200,
    )
    .await;
    let (stall, _) = load.longest_gap();
    let acked = load.finish().await;
    let leader = c.leader(&ids, 3, Duration::from_secs(30)).await;
    let on_leader = log_of(&c, &leader, "orders").await;
    holds_every_ack(&on_leader, &acked);
    eprintln!(
        "rolling restart (leader first {first_leader}): {} frames acknowledged, the longest ack \
         stall {stall:?}",
        acked.len()
    );
    assert!(stall < TTL, "acks stalled {stall:?}\n{}", c.logs());
    until(
        "the subscriber has every frame",
        Duration::from_secs(30),
        || reader.count() >= on_leader.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = reader.got.lock().unwrap().clone();
    assert!(
        same_frames(&on_leader, &got),
        "the subscriber saw a gap, a duplicate or another frame: {} frames vs {} on the leader",
        got.len(),
        on_leader.len()
    );
    reader.task.abort();
}

/// A leader alone in the in-sync set that finds damage where its follower needs it leads on
/// (it holds the only copy), and ends that follower's every stream at once. The failure
/// lasts until an operator repairs the leader: each side logs it once, not at each of the
/// follower's tries, and the follower tries again at most once a second once it repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_leader_with_damage_a_follower_needs_leads_on_without_flooding_either_log() {
    let _serial = SERIAL.lock().await;
    let flags = ["--segment-bytes", "65536", "--max-frame-bytes", "60000"];
    let mut c = Cluster::start_with(2, 1, &flags, None).await;
    let leader = c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    let follower = if leader == "n1" { "n2" } else { "n1" };
    c.node_mut(follower).server.kill9();
    let mut lc = c.client(&leader).await;
    for seq in 0..600u64 {
        let payload = format!("frame {seq} {}", "d".repeat(200)).into_bytes();
        lc.publish(req("orders", seq, &payload)).await.unwrap();
    }
    let seg = c
        .node(&leader)
        .server
        .data_dir
        .join("topics/orders/00000000000000000000.seg");
    flip_a_byte_in_place(&seg);
    c.node_mut(follower).server.restart();
    let count = |id: &str, line: &str| c.node(id).server.log_text().matches(line).count();
    until(
        "the leader finds the damage",
        Duration::from_secs(20),
        || count(&leader, "no other member could take over: leading on") >= 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        count(&leader, "no other member could take over: leading on"),
        1,
        "{}",
        c.logs()
    );
    // The follower sees the leader end its stream in one of two ways (while it sends a
    // report, or before): each is logged once.
    let stopped = count(follower, "following stopped");
    assert!((1..=2).contains(&stopped), "{stopped}\n{}", c.logs());
    // Five tries a second would be 25 or more.
    let tries = count(&leader, "follower connected");
    assert!(tries <= 15, "{tries} tries in about 5 s\n{}", c.logs());
    // It leads on: writes are acknowledged (--min-insync 1).
    let ack = lc.publish(req("orders", 600, b"after")).await.unwrap();
    assert_eq!(ack.into_inner().offset, 600);
}

/// What a follower out of the in-sync set says it may lack when it refuses a read.
const OUT_OF_SYNC: &str = "every frame the cluster acknowledged (it is out of the in-sync set)";

/// A follower the cluster goes on without: the new leader refuses it (its segments cannot
/// hold that leader's largest frame) and drops it from the in-sync set. Its subscriptions —
/// gRPC, SSE, and the Rust client's — end with UNAVAILABLE naming the leader instead of
/// waiting, open, for frames that never come (what they did before); the client resumes on
/// the leader exactly; new reads there are refused the same way while it is out of sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_dropped_from_the_in_sync_set_ends_its_subscriptions_naming_the_leader() {
    use framecast::client::Client;
    let _serial = SERIAL.lock().await;
    let small = ["--max-frame-bytes", "1MiB"];
    let mut c = Cluster::start_with(1, 1, &small, None).await;
    assert_eq!(c.leader(&["n1"], 1, Duration::from_secs(30)).await, "n1");
    // n2 takes the default largest frame (4 MiB); it campaigns once in sync (asking every
    // 250 ms), queued in the election before n3, so it leads next.
    c.add_node(1, &[], &[]);
    c.leader(&["n1", "n2"], 2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.add_node(
        1,
        &["--segment-bytes", "2MiB", "--max-frame-bytes", "1MiB"],
        &[],
    );
    c.leader(&["n1", "n2", "n3"], 3, Duration::from_secs(30))
        .await;
    let mut n1 = c.client("n1").await;
    for seq in 0..100u64 {
        n1.publish(req("quotes", seq, &payload_of(seq)))
            .await
            .unwrap();
    }
    let on_leader = log_of(&c, "n1", "quotes").await;
    converged(&c, "n3", "quotes", &on_leader).await;
    // In sync, n3 is ready for readers.
    let n3_ready = common::http::request(
        &c.node("n3").server.http.clone().unwrap(),
        "GET",
        "/readyz",
        &[],
        b"",
    );
    assert_eq!(n3_ready.status, 200, "{}", n3_ready.text());
    until_reads_health(&c, "n3", ServingStatus::Serving).await;

    // Three readers on n3, each holding the first 100 frames.
    let mut raw = common::subscribe(&mut c.client("n3").await, common::sub_req("quotes", 0))
        .await
        .unwrap();
    assert_eq!(
        common::take(&mut raw.stream, 100, Duration::from_secs(10))
            .await
            .len(),
        100
    );
    let client = Client::connect(&c.node("n3").address).unwrap();
    let mut sub = client.subscribe("quotes", 0);
    let first: Vec<(u64, u64)> = (0..100).map(|i| (i, i)).collect();
    assert_eq!(next_frames(&mut sub, 100).await, first);
    let n3_http = c.node("n3").server.http.clone().unwrap();
    let sse_path = "/v1/topics/quotes/events?from=0";
    let mut sse = common::sse::open(&n3_http, sse_path, &[]).unwrap();
    let ws_task = {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("{n3_http}/v1/ws").replace("http://", "ws://");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = serde_json::json!({"id": 1, "subscribe": {"topic": "quotes", "from": "0"}});
        ws.send(Message::text(hello.to_string())).await.unwrap();
        tokio::spawn(async move {
            let mut frames = 0;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await
                    .expect("the WebSocket subscription ends with a message")
                    .unwrap()
                    .unwrap();
                let Message::Text(t) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v.get("frame").is_some() {
                    frames += 1;
                } else if let Some(end) = v.get("end") {
                    return (frames, end.clone());
                }
            }
        })
    };
    let sse_task = tokio::task::spawn_blocking(move || {
        let mut frames = 0;
        loop {
            let e = sse.next_event().expect("the stream ends with an event");
            match e.event.as_str() {
                "frame" => frames += 1,
                "error" => return (frames, e.json()),
                _ => {}
            }
        }
    });

    // n1 hands over to n2, which refuses n3 and, after --replica-max-lag, drops it.
    let handover = Instant::now();
    c.node("n1").server.sigterm();
    assert!(c
        .node_mut("n1")
        .server
        .wait_exit(Duration::from_secs(10))
        .is_some());
    assert_eq!(
        c.leader(&["n2", "n3"], 1, Duration::from_secs(30)).await,
        "n2"
    );
    let n2_address = c.node("n2").address.clone();
    let n2_http = c.node("n2").server.http.clone().unwrap();
    let mut n2 = c.client("n2").await;
    for seq in 100..200u64 {
        n2.publish(req("quotes", seq, &payload_of(seq)))
            .await
            .unwrap();
    }
    let (frames, status) = common::read_until_error(&mut raw.stream, Duration::from_secs(20)).await;
    eprintln!(
        "n3's gRPC subscription ended {:?} after the handover began (--replica-max-lag 3s)",
        handover.elapsed()
    );
    assert!(frames.is_empty(), "n3 copied none of them: {frames:?}");
    grpc_names_the_leader(&status, OUT_OF_SYNC, &n2_address);
    let (sse_frames, error) = sse_task.await.unwrap();
    assert_eq!(sse_frames, 100);
    assert_eq!(error["code"], "UNAVAILABLE", "{error}");
    assert_eq!(error["leader"], n2_http.as_str(), "{error}");
    let (ws_frames, end) = ws_task.await.unwrap();
    assert_eq!(ws_frames, 100);
    assert_eq!(end["code"], "UNAVAILABLE", "{end}");
    assert_eq!(end["topic"], "quotes", "{end}");
    assert_eq!(end["leader"], n2_http.as_str(), "{end}");
    // The client resumed on the leader the refusal named, after its last frame.
    let next: Vec<(u64, u64)> = (100..200).map(|i| (i, i)).collect();
    assert_eq!(next_frames(&mut sub, 100).await, next);
    assert_eq!(sub.node(), Some(n2_address.clone()));

    // While out of sync, n3 refuses new reads (it still answers Cluster: it is out of sync).
    let mut n3 = c.client("n3").await;
    let refused = common::subscribe_error(&mut n3, common::sub_req("quotes", 0)).await;
    grpc_names_the_leader(&refused, OUT_OF_SYNC, &n2_address);
    let history = n3
        .history(framecast::proto::HistoryRequest {
            topic: "quotes".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    grpc_names_the_leader(&history, OUT_OF_SYNC, &n2_address);
    let (refused, _) = http_names_the_leader(&c, "n3", "n2", sse_path);
    assert!(
        refused.text().contains("out of the in-sync set"),
        "{}",
        refused.text()
    );
    let info = c.info("n3").await.unwrap();
    let me = info.nodes.iter().find(|n| n.id == "n3").unwrap();
    assert!(me.online && !me.in_sync && !me.leader, "{info:?}");
    assert_eq!(info.leader, n2_address);
    // A load balancer asking readiness skips n3 (its liveness holds: the process is sound);
    // the leader is ready.
    let ready = common::http::request(&n3_http, "GET", "/readyz", &[], b"");
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (503, "out of sync\n")
    );
    assert_eq!(ready.header("framecast-leader"), Some(n2_http.as_str()));
    let alive = common::http::request(&n3_http, "GET", "/healthz", &[], b"");
    assert_eq!(alive.status, 200);
    until_reads_health(&c, "n3", ServingStatus::NotServing).await;
    assert_eq!(health_of(&c, "n3", "").await, ServingStatus::Serving as i32);
    let leader_ready = common::http::request(&n2_http, "GET", "/readyz", &[], b"");
    assert_eq!(leader_ready.status, 200, "{}", leader_ready.text());
    until_reads_health(&c, "n2", ServingStatus::Serving).await;
}

/// Node `id`'s gRPC health status for `service`.
async fn health_of(c: &Cluster, id: &str, service: &str) -> i32 {
    let channel = Channel::from_shared(format!("http://{}", c.node(id).address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Waits (up to 10 s) until node `id`'s `framecast.reads` health status is `want`.
async fn until_reads_health(c: &Cluster, id: &str, want: ServingStatus) {
    let mut seen = 0;
    for _ in 0..200 {
        seen = health_of(c, id, "framecast.reads").await;
        if seen == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id}'s framecast.reads health: {seen}, want {want:?}");
}
