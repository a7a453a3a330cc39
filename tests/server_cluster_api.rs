//! The discovery API of a single node against the real binary: `Cluster`, `WatchCluster`
//! and `GET /v1/cluster` answer term 0 and one node — this one, the leader, in sync and
//! online, at the addresses it listens on — with each topic's positions as ListTopics
//! shows them; a watch opens with NODE_ONLINE, stays quiet, and ends with UNAVAILABLE at
//! shutdown; with authentication on, any valid token may ask, and sees only the positions
//! of the topics it may publish or subscribe to.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{list_topics, publish, Server};
use framecast::proto::broadcast_client::BroadcastClient;
use framecast::proto::cluster_event::Kind;
use framecast::proto::{ClusterInfo, ClusterRequest, ListTopicsRequest, TopicPosition};
use tonic::transport::Channel;
use tonic::{Code, Request};

const SECRET: &[u8] = b"test-secret-of-some-length";
const LIMIT: Duration = Duration::from_secs(10);

fn token(publish: &[&str], subscribe: &[&str], admin: bool) -> String {
    common::tokens::token(SECRET, publish, subscribe, admin, Duration::from_secs(3600))
}

fn with<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn cluster(
    c: &mut BroadcastClient<Channel>,
    token: Option<&str>,
) -> Result<ClusterInfo, tonic::Status> {
    tokio::time::timeout(LIMIT, c.cluster(with(ClusterRequest {}, token)))
        .await
        .expect("Cluster timed out")
        .map(tonic::Response::into_inner)
}

/// The topic names of the one node's positions.
fn names(info: &ClusterInfo) -> Vec<String> {
    info.nodes[0]
        .topics
        .iter()
        .map(|t| t.topic.clone())
        .collect()
}

/// `info` as GET /v1/cluster must write it (proto3 JSON: 64-bit integers as strings).
fn as_json(info: &ClusterInfo) -> serde_json::Value {
    let nodes: Vec<_> = info
        .nodes
        .iter()
        .map(|n| {
            let topics: Vec<_> = n
                .topics
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "topic": t.topic,
                        "next_offset": t.next_offset.to_string(),
                        "commit_offset": t.commit_offset.to_string(),
                    })
                })
                .collect();
            serde_json::json!({
                "id": n.id, "address": n.address, "http_address": n.http_address,
                "leader": n.leader, "in_sync": n.in_sync, "online": n.online, "topics": topics,
            })
        })
        .collect();
    serde_json::json!({"term": info.term.to_string(), "leader": info.leader, "nodes": nodes})
}

fn get_cluster(server: &Server, token: Option<&str>) -> common::http::Response {
    let base = server.http.as_deref().unwrap();
    match token {
        Some(t) => common::http::with_token(base, "GET", "/v1/cluster", t, b""),
        None => common::http::request(base, "GET", "/v1/cluster", &[], b""),
    }
}

#[tokio::test]
async fn a_single_node_answers_itself_as_leader_with_every_topics_positions() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.client().await;
    let address = server.addr.trim_start_matches("http://").to_string();

    // Before any topic: the node alone, no positions.
    let empty = cluster(&mut c, None).await.unwrap();
    assert_eq!(empty.term, 0);
    assert_eq!(empty.leader, address);
    assert_eq!(empty.nodes.len(), 1);
    assert!(empty.nodes[0].topics.is_empty(), "{empty:?}");

    for seq_no in 0..3 {
        publish(&mut c, "alpha", seq_no, b"a").await;
    }
    for seq_no in 0..5 {
        publish(&mut c, "beta", seq_no, b"b").await;
    }
    let info = cluster(&mut c, None).await.unwrap();
    assert_eq!(info.term, 0);
    assert_eq!(info.leader, address);
    assert_eq!(info.nodes.len(), 1, "{info:?}");
    let node = &info.nodes[0];
    assert_eq!(node.id, "standalone");
    assert_eq!(node.address, address);
    assert_eq!(Some(node.http_address.clone()), server.http);
    assert!(node.leader && node.in_sync && node.online, "{node:?}");
    // The positions are ListTopics' next offsets, and a single node commits what is durable.
    let listed: Vec<TopicPosition> = list_topics(&mut c)
        .await
        .into_iter()
        .map(|t| TopicPosition {
            topic: t.name,
            next_offset: t.next_offset,
            commit_offset: t.next_offset,
        })
        .collect();
    assert_eq!(node.topics, listed);
    assert_eq!(
        node.topics
            .iter()
            .map(|t| (t.topic.as_str(), t.next_offset))
            .collect::<Vec<_>>(),
        [("alpha", 3), ("beta", 5)]
    );

    // The HTTP door answers the same, in proto3 JSON.
    let r = get_cluster(&server, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), as_json(&info));

    // Read live: a later publish moves the position at once.
    publish(&mut c, "alpha", 3, b"a").await;
    let info = cluster(&mut c, None).await.unwrap();
    assert_eq!(info.nodes[0].topics[0].next_offset, 4);
    assert_eq!(info.nodes[0].topics[0].commit_offset, 4);
}

#[tokio::test]
async fn a_watch_opens_with_node_online_stays_quiet_and_ends_unavailable_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--http-listen", "off"]);
    let mut c = server.client().await;
    publish(&mut c, "alpha", 0, b"a").await;

    let mut events = tokio::time::timeout(LIMIT, c.watch_cluster(ClusterRequest {}))
        .await
        .expect("WatchCluster timed out")
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIMIT, events.message())
        .await
        .expect("no first event")
        .unwrap()
        .expect("stream ended");
    assert_eq!(first.kind, Kind::NodeOnline as i32);
    assert_eq!(first.node_id, "standalone");
    let info = first.cluster.unwrap();
    assert_eq!(info, cluster(&mut c, None).await.unwrap());
    // Without the HTTP door the node has no HTTP address.
    assert_eq!(info.nodes[0].http_address, "");

    // Quiet while nothing changes, publishes included (they are no cluster event).
    publish(&mut c, "alpha", 1, b"a").await;
    let quiet = tokio::time::timeout(Duration::from_millis(700), events.message()).await;
    assert!(quiet.is_err(), "expected no event, got {quiet:?}");

    server.sigterm();
    let end = tokio::time::timeout(LIMIT, events.message())
        .await
        .expect("the watch did not end at shutdown");
    match end {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        Ok(m) => panic!("expected UNAVAILABLE, got {m:?}"),
    }
    let status = server.wait_exit(Duration::from_secs(20)).expect("exit");
    assert!(status.success(), "{status:?}\n{}", server.log_text());
}

#[tokio::test]
async fn any_valid_token_may_ask_and_sees_only_its_topics_positions() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &["--auth-jwt-secret-file", secret.to_str().unwrap()],
    );
    let mut c = server.client().await;
    let writer = token(&[">"], &[], false);
    for topic in ["a.x", "a.y", "b.x"] {
        c.publish(with(common::req(topic, 0, b"p"), Some(&writer)))
            .await
            .unwrap();
    }

    // No token: refused at both doors, the watch too.
    assert_eq!(
        cluster(&mut c, None).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let watch = tokio::time::timeout(LIMIT, c.watch_cluster(with(ClusterRequest {}, None)))
        .await
        .expect("WatchCluster timed out");
    assert_eq!(watch.unwrap_err().code(), Code::Unauthenticated);
    let r = get_cluster(&server, None);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["code"], "UNAUTHENTICATED");

    // A token limited to `a.*` sees those positions only, as its ListTopics does.
    let limited = token(&[], &["a.*"], false);
    let info = cluster(&mut c, Some(&limited)).await.unwrap();
    assert_eq!(names(&info), ["a.x", "a.y"]);
    assert!(info.nodes[0].leader && info.nodes[0].online);
    let listed: Vec<String> = c
        .list_topics(with(ListTopicsRequest {}, Some(&limited)))
        .await
        .unwrap()
        .into_inner()
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names(&info), listed);
    let r = get_cluster(&server, Some(&limited));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), as_json(&info));
    let mut events = c
        .watch_cluster(with(ClusterRequest {}, Some(&limited)))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIMIT, events.message())
        .await
        .expect("no first event")
        .unwrap()
        .unwrap();
    assert_eq!(names(first.cluster.as_ref().unwrap()), ["a.x", "a.y"]);

    // A token with no permission at all still learns the cluster, without positions;
    // an admin sees every topic.
    let nobody = token(&[], &[], false);
    let info = cluster(&mut c, Some(&nobody)).await.unwrap();
    assert_eq!(info.nodes.len(), 1);
    assert!(info.nodes[0].topics.is_empty(), "{info:?}");
    let admin = token(&[], &[], true);
    let info = cluster(&mut c, Some(&admin)).await.unwrap();
    assert_eq!(names(&info), ["a.x", "a.y", "b.x"]);
}
