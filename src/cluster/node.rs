//! A cluster node's life (`serve --cluster-etcd`): it registers under a lease, follows
//! whoever leads, campaigns while it is in the in-sync set, and when elected leads: it
//! serves the `Follow` streams, keeps the in-sync set in etcd (fenced by its leader key),
//! and refuses writes while the set is smaller than `--min-insync` or its lease may lapse.
//!
//! etcd is touched on membership, election and in-sync changes only, never per publish.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::client::ClientTls;
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use super::etcd::{Etcd, EtcdError, LeaderKey, LeaseKeeper, WatchEvent};
use super::follower::follow;
use super::leader::{first_report, max_message_bytes, Leader, LeaderService};
use super::membership::{MemberEvent, Membership, MembershipError, NodeRecord};
use super::repeats::Repeats;
use super::replication_proto as rp;
use crate::broker::cluster_view::{
    ClusterView, Membership as ViewMembership, PeerPositions, Roles,
};
use crate::broker::core::{deadline, node_subject};
use crate::broker::token::{mint_hs256, Expected, MintClaims};
use crate::broker::topics::Topics;
use crate::broker::Broker;
use crate::proto::{self, cluster_event::Kind};
use crate::server::status::status;

/// The cluster flags of `serve`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `--cluster-etcd`: etcd endpoints (`http://host:port`).
    pub etcd: Vec<String>,
    /// `--cluster-etcd-ca` (and `--cluster-etcd-cert`/`--cluster-etcd-key`): etcd is reached
    /// over TLS, its certificate checked against this CA; `None`: plaintext.
    pub etcd_tls: Option<ClientTls>,
    /// `--cluster`: the cluster's name; its keys live under `/framecast/<name>/`.
    pub cluster: String,
    /// `--node-id`.
    pub node_id: String,
    /// `--advertise`: the gRPC address clients and peers reach this node at.
    pub advertise: String,
    /// `--advertise-http`: the HTTP door's URL, or `""`.
    pub advertise_http: String,
    /// This node's host, data directory and its lock file's identity ([`home`]), registered
    /// with it: an earlier run of this node found registered under it is known to be gone.
    /// Set by the server once it holds that directory's lock; `""`: none.
    pub home: String,
    /// `--min-insync`: writes are refused while fewer members are in sync.
    pub min_insync: usize,
    /// `--lease-ttl`: how long a silent node stays registered (and a leader leads).
    pub lease_ttl: Duration,
    /// `--replica-max-lag`: how long a follower may stay behind and still be in sync.
    pub replica_max_lag: Duration,
    /// The admin token this node presents to the leader when auth is on.
    pub token: NodeToken,
    /// With TLS on: the CA the other nodes' certificates chain to and this node's own
    /// certificate, used when it follows a leader (`https://`); `None`: plaintext.
    pub tls: Option<ClientTls>,
}

/// The token a node presents on its `Follow` stream.
#[derive(Clone, Default)]
pub enum NodeToken {
    /// Auth is off: none.
    #[default]
    None,
    /// A token given with `--cluster-token-file`: the file is read again at each
    /// connection (a token replaced there is used from the next one on: a stream ends when
    /// its token expires), the token read at start used while it cannot be read.
    Fixed {
        /// The file.
        path: std::path::PathBuf,
        /// The token it held at start.
        at_start: String,
    },
    /// Minted (HS256, admin, one hour) from the first `--auth-jwt-secret-file` at each
    /// connection, with the `iss` and `aud` the nodes require.
    Minted {
        /// The secret.
        secret: Vec<u8>,
        /// `--auth-issuer` and `--auth-audience`.
        expected: Expected,
    },
}

impl std::fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeToken::None => "None",
            NodeToken::Fixed { .. } => "Fixed(..)",
            NodeToken::Minted { .. } => "Minted(..)",
        })
    }
}

impl NodeToken {
    /// The token to present now, for node `node_id` (the file read off the runtime's
    /// threads: a slow volume stalls this connection only).
    async fn current(&self, node_id: &str) -> Option<String> {
        match self {
            NodeToken::None => None,
            NodeToken::Fixed { path, at_start } => {
                let file = path.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(file))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|read| read);
                match read.map(|t| t.trim().to_string()) {
                    Ok(token) if !token.is_empty() => Some(token),
                    _ => {
                        warn!(file = %path.display(), "cannot read the cluster token file; presenting the token it held at start");
                        Some(at_start.clone())
                    }
                }
            }
            NodeToken::Minted { secret, expected } => mint_hs256(
                secret,
                &MintClaims {
                    subject: node_subject(node_id),
                    publish: Vec::new(),
                    subscribe: Vec::new(),
                    admin: true,
                    ttl: Duration::from_secs(3600),
                    not_before: None,
                    expected: expected.clone(),
                },
            )
            .map_err(|e| warn!(error = %e, "cannot mint this node's token"))
            .ok(),
        }
    }
}

/// What a cluster node could not do at start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// etcd failed.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Registration failed (a duplicate node id, say).
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

/// The in-sync set as the leader keeps it in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InSyncRecord {
    /// The term of the leader that wrote it.
    pub term: u64,
    /// The members, the leader included.
    pub members: Vec<String>,
}

/// The in-sync record as etcd holds it.
#[derive(Debug)]
enum Record {
    /// None yet: a new cluster, whose first node to campaign leads.
    Missing,
    /// The set the last leader wrote.
    Set(InSyncRecord),
    /// A value that is no record (written by hand, or damaged), and why.
    Unreadable(String),
}

/// The `Replication` service every cluster node serves: the leader's `Follow`, or
/// `UNAVAILABLE` with the leader's address on any other node. With auth on, only an admin
/// token may follow (it reads every topic), checked by the broker like every other call.
#[derive(Debug, Clone)]
pub struct ReplicationDoor {
    leader: watch::Receiver<Door>,
    broker: Broker,
}

/// Whether this node's `Follow` door is open.
#[derive(Debug, Clone, Default)]
enum Door {
    /// Not leading.
    #[default]
    Shut,
    /// Elected, beginning its term in every topic (0.23–0.26 s with 10,000 topics): a follower
    /// that asks now is held until the door opens, not sent away to retry later.
    Opening,
    /// Leading.
    Open(Arc<Leader>),
}

/// How long a `Follow` is held while the door is opening.
const OPENING_WAIT: Duration = Duration::from_secs(5);

#[tonic::async_trait]
impl rp::replication_server::Replication for ReplicationDoor {
    type FollowStream = <LeaderService as rp::replication_server::Replication>::FollowStream;

    async fn follow(
        &self,
        request: Request<Streaming<rp::FollowerReport>>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let who = self.broker.authenticate(header).map_err(status)?;
        // Refused before anything is read when the caller cannot be a node at all; its node
        // id, which the token must name, comes with the stream's first report.
        self.broker.may_follow(&who, None).map_err(status)?;
        let mut reports = request.into_inner();
        let first = first_report(&mut reports).await?;
        self.broker
            .may_follow(&who, Some(&first.node_id))
            .map_err(status)?;
        let mut door = self.leader.clone();
        let _ = tokio::time::timeout(OPENING_WAIT, door.wait_for(|d| !matches!(d, Door::Opening)))
            .await;
        let leader = door.borrow().clone();
        match leader {
            // Like a subscription, the stream ends when its token expires: the node
            // follows again with a token valid then (a minted one is, a fixed one must have
            // been replaced).
            Door::Open(l) => LeaderService::of(&l)
                .open(first, reports, deadline(&who))
                .await
                .map(Response::new),
            Door::Opening => Err(Status::unavailable(
                "elected, still beginning its term in every topic: try again",
            )),
            Door::Shut => Err(Status::unavailable(format!(
                "not the leader (the leader is '{}')",
                self.broker.cluster_view().membership().leader
            ))),
        }
    }
}

/// The task following one leader; aborted when dropped. One at a time: it writes topics
/// and their term histories, which a node that leads next writes too.
struct Following {
    leader: String,
    term: u64,
    task: JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running cluster node.
struct Node {
    config: ClusterConfig,
    etcd: Etcd,
    topics: Arc<Topics>,
    view: ClusterView,
    membership: Membership,
    keeper: Mutex<LeaseKeeper>,
    door: watch::Sender<Door>,
    /// What this node believes: the term, the leader's id, the in-sync set.
    state: Mutex<Believed>,
    /// The task following the current leader, if any.
    following: Mutex<Option<Following>>,
    /// Every node seen online that is online now or still in the in-sync set: one gone
    /// offline is listed (`online: false`) while the set still counts it.
    seen: Mutex<BTreeMap<String, NodeRecord>>,
    /// Cancelled when the server stops cleanly: the node steps down and stops campaigning.
    stop: CancellationToken,
}

#[derive(Debug, Clone, Default)]
struct Believed {
    term: u64,
    leader: String,
    insync: Vec<String>,
}

/// A running node's life in the background: [`Life::failed`] ends only when one of its logs
/// failed for good and the node left the cluster (the server then exits); [`Life::leave`]
/// ends it for a clean stop.
pub struct Life {
    task: JoinHandle<Option<String>>,
    node: Arc<Node>,
}

impl Life {
    /// Waits until one of this node's logs fails for good and the node has left the
    /// cluster; why. Cancel-safe.
    pub async fn failed(&mut self) -> String {
        match (&mut self.task).await {
            Ok(Some(why)) => why,
            Ok(None) => std::future::pending().await,
            Err(e) => format!("the cluster task ended: {e}"),
        }
    }

    /// Leaves the cluster for a clean stop (SIGTERM), within about a second: a leader
    /// steps down (resigning, so the election moves on at once), the node stops
    /// campaigning and following, refuses writes and revokes its lease, so its key goes
    /// too. An in-sync follower then leads within moments instead of after the lease TTL
    /// (a leader that kept its lease while it drained left writes refused for the grace
    /// period and the TTL after it), and a leader drops a follower that leaves at once
    /// instead of waiting `--replica-max-lag` for it. Nothing acknowledged is at stake:
    /// once shutdown began this node acknowledges nothing more (publishes waiting for a
    /// commit point answer `UNAVAILABLE`), and what it acknowledged before is on every
    /// in-sync member. Returns why, if the node had left after a log failed meanwhile.
    pub async fn leave(self) -> Option<String> {
        let Life { mut task, node } = self;
        let within = node.config.lease_ttl.min(LEAVE_WITHIN);
        node.stop.cancel();
        match tokio::time::timeout(within, &mut task).await {
            Ok(Ok(Some(why))) => return Some(why),
            Ok(_) => {}
            Err(_) => {
                warn!(
                    node = node.me(),
                    "the node did not step down in time; leaving anyway"
                );
                task.abort();
            }
        }
        if tokio::time::timeout(within, node.stop_following())
            .await
            .is_err()
        {
            warn!(
                node = node.me(),
                "following did not stop in time; leaving anyway"
            );
        }
        node.view
            .set_refusal(Some("this node is shutting down".to_string()));
        node.revoke_lease(within, "left the cluster for a clean stop")
            .await;
        None
    }
}

/// What became of a write of the in-sync set to etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InSyncWrite {
    /// Written: etcd names the new set.
    Written,
    /// Refused: this node no longer holds the leader key.
    Deposed,
    /// etcd did not answer (down, timed out): nothing is known to have changed.
    Failed,
}

/// How often a follower pings its leader's connection, and how long it waits for the answer.
const FOLLOW_KEEPALIVE: Duration = Duration::from_secs(5);

/// The first pause before a follower connects to its leader again; it doubles at each
/// failure in a row, up to [`FOLLOW_RETRY_MAX`].
const FOLLOW_RETRY_MIN: Duration = Duration::from_millis(10);

/// The longest pause between two tries to follow the leader.
const FOLLOW_RETRY_MAX: Duration = Duration::from_millis(200);

/// The longest pause once the same failure repeats (a refusal that lasts until an operator
/// acts, damage on the leader): a try a second, not five.
const FOLLOW_RETRY_LASTING: Duration = Duration::from_secs(1);

/// The longest a clean stop waits for each step of leaving the cluster (stepping down,
/// stopping following, revoking the lease), so the drain keeps most of its grace period.
const LEAVE_WITHIN: Duration = Duration::from_secs(1);

/// The home a node with `data_dir` registers: this boot of the host (the kernel's random
/// `boot_id`, so two machines cloned from one image differ, and so does one host after a
/// reboot), its name, the directory's absolute path and `lock`, the identity of its lock
/// file (`boot:host:/path:dev:ino`). `""` when any of them is unknown: the node is then
/// never taken for an earlier run of itself, and waits for that run's lease to lapse.
pub fn home(data_dir: &std::path::Path, lock: &str) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let host = rustix::system::uname();
    let host = host.nodename().to_string_lossy();
    let boot = boot.trim();
    if boot.is_empty() || host.is_empty() || lock.is_empty() {
        return String::new();
    }
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!("{boot}:{host}:{}:{lock}", dir.display())
}

/// Joins the cluster and starts the node's life in the background. Returns the
/// `Replication` service to serve beside `Broadcast`, and the node's [`Life`].
pub async fn start(
    config: ClusterConfig,
    topics: Arc<Topics>,
    broker: Broker,
) -> Result<
    (
        rp::replication_server::ReplicationServer<ReplicationDoor>,
        Life,
    ),
    NodeError,
> {
    let etcd = Etcd::connect_with(
        &config.etcd,
        config.etcd_tls.as_ref(),
        Duration::from_secs(2),
    )
    .await?;
    let lease = etcd.grant_lease(config.lease_ttl).await?;
    let keeper = etcd.keep_alive(lease, config.lease_ttl).await?;
    let me = NodeRecord {
        id: config.node_id.clone(),
        address: config.advertise.clone(),
        http_address: config.advertise_http.clone(),
        home: config.home.clone(),
    };
    let membership = Membership::join(&etcd, &config.cluster, me, lease).await?;
    let (door, rx) = watch::channel(Door::Shut);
    let view = broker.cluster_view().clone();
    let node = Arc::new(Node {
        config,
        etcd,
        topics,
        view: view.clone(),
        membership,
        keeper: Mutex::new(keeper),
        door,
        state: Mutex::new(Believed::default()),
        following: Mutex::new(None),
        seen: Mutex::new(BTreeMap::new()),
        stop: CancellationToken::new(),
    });
    node.announce(Kind::NodeOnline, &node.config.node_id.clone());
    let limit = max_message_bytes(node.topics.log_config());
    let service =
        rp::replication_server::ReplicationServer::new(ReplicationDoor { leader: rx, broker })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit);
    tokio::spawn(Arc::clone(&node).watch_members());
    tokio::spawn(Arc::clone(&node).watch_insync());
    let task = tokio::spawn(Arc::clone(&node).run());
    Ok((service, Life { task, node }))
}

impl Node {
    fn election(&self) -> String {
        format!("/framecast/{}/election", self.config.cluster)
    }

    fn insync_key(&self) -> String {
        format!("/framecast/{}/isr", self.config.cluster)
    }

    fn me(&self) -> &str {
        &self.config.node_id
    }

    /// Follows, campaigns, leads; until one of this node's logs fails for good (then it
    /// leaves the cluster and returns why) or the server stops cleanly (`None`).
    async fn run(self: Arc<Self>) -> Option<String> {
        let mut failed = self.topics.log_config().failure.subscribe();
        loop {
            if let Some(why) = self.topics.log_config().failure.get() {
                self.leave(&why).await;
                return Some(why);
            }
            tokio::select! {
                () = self.renew_lease_if_lost() => {}
                () = self.stop.cancelled() => return None,
            }
            let following = tokio::spawn(Arc::clone(&self).follow_leaders());
            // A lease lost meanwhile (this node paused or cut off from etcd past its TTL)
            // took its registration and its place in the election with it: etcd's campaign
            // would wait on regardless, and the node would copy frames unregistered, never
            // again in sync. Back to the top: register again, campaign again.
            let won = tokio::select! {
                won = self.campaign() => Some(won),
                _ = failed.wait_for(Option::is_some) => None,
                () = self.lease_lost() => None,
                () = self.stop.cancelled() => None,
            };
            following.abort();
            let _ = following.await;
            match won {
                Some(Ok(key)) => {
                    // Stop following before leading: the follower task must not write
                    // while this node begins its term.
                    self.stop_following().await;
                    self.lead(key).await
                }
                Some(Err(e)) => {
                    warn!(error = %e, "campaign failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => {}
            }
            if self.stop.is_cancelled() {
                return None;
            }
        }
    }

    /// Leaves the cluster after a log failed for good (a sync that could not be undone:
    /// what the page cache holds can no longer be trusted to match the disk). Refuses
    /// writes, and revokes the lease, which removes this node from the members and from
    /// the election at once, so an in-sync follower is elected without waiting for the
    /// TTL. The process then exits; restarted, it recovers from its disk and follows.
    async fn leave(&self, why: &str) {
        error!(node = self.me(), %why, "a log failed: leaving the cluster");
        self.view
            .set_refusal(Some(format!("this node's storage failed: {why}")));
        self.revoke_lease(self.config.lease_ttl, "lease revoked: no longer a member")
            .await;
    }

    /// Revokes this node's lease (its key, and its leadership if it leads, go with it),
    /// waiting `within` at most; logs `done` once revoked.
    async fn revoke_lease(&self, within: Duration, done: &str) {
        let lease = self.keeper.lock().lease();
        match tokio::time::timeout(within, self.etcd.revoke(lease)).await {
            Ok(Ok(())) => info!(node = self.me(), lease, "{done}"),
            Ok(Err(e)) => {
                warn!(node = self.me(), lease, error = %e, "cannot revoke the lease; it lapses within its TTL")
            }
            Err(_) => {
                warn!(
                    node = self.me(),
                    lease, "revoking the lease timed out; it lapses within its TTL"
                )
            }
        }
    }

    /// Returns once this node's lease is lost.
    async fn lease_lost(&self) {
        let mut state = self.keeper.lock().state();
        if state.wait_for(|s| s.lost).await.is_err() {
            // The keeper is gone without saying the lease was lost: nothing to wait for.
            std::future::pending::<()>().await;
        }
    }

    /// A lost lease (this node was paused or cut off from etcd past its TTL) is replaced
    /// and the node registers again.
    async fn renew_lease_if_lost(&self) {
        loop {
            if !self.keeper.lock().state().borrow().lost {
                return;
            }
            warn!(
                node = self.me(),
                "lease lost; registering again under a new lease"
            );
            let renewed = async {
                let lease = self.etcd.grant_lease(self.config.lease_ttl).await?;
                let keeper = self.etcd.keep_alive(lease, self.config.lease_ttl).await?;
                self.membership.rejoin(lease).await?;
                Ok::<_, NodeError>(keeper)
            };
            match renewed.await {
                Ok(keeper) => {
                    *self.keeper.lock() = keeper;
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot register again; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Waits until this node may campaign (it is in the in-sync set, or there is none yet)
    /// and campaigns; returns once elected. A record that cannot be read names nobody:
    /// any node elected then could lack acknowledged frames, so none campaigns until an
    /// operator mends or deletes it.
    async fn campaign(&self) -> Result<LeaderKey, EtcdError> {
        let mut repeats = Repeats::default();
        loop {
            match self.read_insync().await? {
                Record::Missing if self.topics.doubtful().is_empty() => break,
                Record::Missing => {
                    let doubtful = self.topics.doubtful();
                    if let Some(repeated) = repeats.due("doubt, no record", Instant::now()) {
                        warn!(topics = ?doubtful, repeated, "not campaigning: recovery cut what may have been acknowledged frames of these topics, and no in-sync record says whether another node holds them; waiting (to let this node lead, with new epochs for these topics, write an in-sync record naming only it)");
                    }
                }
                Record::Set(r) if r.members.iter().any(|m| m == self.me()) => {
                    let doubtful = self.topics.doubtful();
                    if doubtful.is_empty() || r.members.iter().all(|m| m == self.me()) {
                        break;
                    }
                    let why = format!("doubt {doubtful:?}");
                    if let Some(repeated) = repeats.due(&why, Instant::now()) {
                        warn!(topics = ?doubtful, members = ?r.members, repeated, "not campaigning: recovery cut what may have been acknowledged frames of these topics, which another in-sync member may hold; waiting to copy them from a leader (if none of the members can come back, write an in-sync record naming only this node to let it lead, with new epochs for these topics)");
                    }
                }
                Record::Set(_) => {}
                Record::Unreadable(why) => {
                    if let Some(repeated) = repeats.due(&why, Instant::now()) {
                        error!(key = %self.insync_key(), reason = %why, repeated, "the in-sync record in etcd cannot be read: not campaigning (mend or delete the key)");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let lease = self.keeper.lock().lease();
        self.etcd
            .campaign(&self.election(), lease, self.me().as_bytes().to_vec())
            .await
    }

    async fn read_insync(&self) -> Result<Record, EtcdError> {
        let Some(kv) = self.etcd.get(&self.insync_key()).await? else {
            return Ok(Record::Missing);
        };
        Ok(match serde_json::from_slice(&kv.value) {
            Ok(r) => Record::Set(r),
            Err(e) => Record::Unreadable(e.to_string()),
        })
    }

    /// Follows each leader the election names, until aborted. The task following one
    /// outlives this loop (etcd may be unreachable while the leader is not): it ends when
    /// another leader is named, or when this node wins the election ([`Node::run`]).
    async fn follow_leaders(self: Arc<Self>) {
        loop {
            let mut observed = self.etcd.observe(&self.election());
            while let Some(next) = observed.next().await {
                let kv = match next {
                    Ok(kv) => kv,
                    Err(e) => {
                        warn!(error = %e, "observing the election failed");
                        break;
                    }
                };
                let id = String::from_utf8_lossy(&kv.value).into_owned();
                let term = u64::try_from(kv.create_revision).unwrap_or(0);
                if id == self.me() {
                    continue;
                }
                if self
                    .following
                    .lock()
                    .as_ref()
                    .is_some_and(|f| f.leader == id && f.term == term)
                {
                    continue;
                }
                // The task following the old leader ends here.
                self.stop_following().await;
                info!(leader = %id, term, "following a new leader");
                {
                    let mut s = self.state.lock();
                    s.term = term;
                    s.leader = id.clone();
                }
                self.announce(Kind::LeaderChanged, &id);
                let task = tokio::spawn(Arc::clone(&self).follow_one(id.clone(), term));
                *self.following.lock() = Some(Following {
                    leader: id,
                    term,
                    task,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the task following a leader, if one runs, and waits until the topic changes
    /// and appends it asked for have landed: the next stream (or this node's own term)
    /// starts from this node's topics and durable ends, which must not move under it, and a
    /// cancelled task does not wait for them itself.
    async fn stop_following(&self) {
        if let Some(f) = self.following.lock().as_ref() {
            f.task.abort();
        }
        // Left in place until it has finished: if this call is cancelled meanwhile, the
        // next one still finds it.
        while self
            .following
            .lock()
            .as_ref()
            .is_some_and(|f| !f.task.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(self.following.lock().take());
        // A topic change it asked for (a cut, a copy started again, a creation or deletion)
        // runs on in a blocking task: it ends first.
        self.topics.changes_settled().await;
        for t in self.topics.list() {
            t.log().appends_settled().await;
        }
    }

    /// Follows leader `id` of `term`, reconnecting, until aborted.
    async fn follow_one(self: Arc<Self>, id: String, term: u64) {
        // A cause that lasts (a refusal, an unreachable leader) is logged every 30 s, not
        // at every attempt.
        let mut repeats = Repeats::default();
        let mut pause = FOLLOW_RETRY_MIN;
        loop {
            let address = self
                .membership
                .nodes()
                .borrow()
                .get(&id)
                .map(|n| n.address.clone());
            let Some(address) = address else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let endpoint = match &self.config.tls {
                Some(tls) => tls
                    .endpoint(&format!("https://{address}"))
                    .map_err(|e| e.to_string()),
                None => {
                    Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string())
                }
            };
            let channel = match endpoint {
                // Pings on the quiet link too: a leader gone silent (a partition, a lost FIN)
                // ends the stream and the follower connects again, instead of waiting on a
                // dead socket while the leader has dropped it from the in-sync set.
                Ok(e) => {
                    e.connect_timeout(Duration::from_secs(2))
                        .http2_keep_alive_interval(FOLLOW_KEEPALIVE)
                        .keep_alive_timeout(FOLLOW_KEEPALIVE)
                        .keep_alive_while_idle(true)
                        .connect()
                        .await
                }
                Err(e) => {
                    warn!(leader = %id, %address, error = %e, "invalid leader address or TLS settings");
                    return;
                }
            };
            // What went wrong, if anything, and whether a stream ran a while first.
            let (failure, ran) = match channel {
                Ok(ch) => {
                    let token = self.config.token.current(self.me()).await;
                    let began = Instant::now();
                    let result = follow(
                        Arc::clone(&self.topics),
                        ch,
                        self.me(),
                        term,
                        token.as_deref(),
                    )
                    .await;
                    let ran = began.elapsed() >= FOLLOW_RETRY_MAX;
                    match result {
                        Ok(()) if ran => (None, true),
                        // A leader that ends every stream at once (it finds damage where
                        // this node needs it) is a failure that lasts too.
                        Ok(()) => (
                            Some((
                                "following stopped",
                                "the leader ended the stream at once".into(),
                            )),
                            false,
                        ),
                        Err(e) => (Some(("following stopped", e.to_string())), ran),
                    }
                }
                Err(e) => (
                    Some(("cannot reach the leader", format!("{address}: {e}"))),
                    false,
                ),
            };
            // A leader just elected opens its door a moment after its followers hear of it:
            // the first tries come soon after each other, and failures in a row back off,
            // up to 200 ms, or to 1 s once the same failure repeats (a refusal that lasts).
            // A stream that ran a while starts the pauses, and the quiet, over.
            if ran {
                repeats.clear();
                pause = FOLLOW_RETRY_MIN;
            }
            let mut most = FOLLOW_RETRY_MAX;
            if let Some((what, error)) = failure {
                match repeats.due(&error, Instant::now()) {
                    Some(repeated) => warn!(leader = %id, term, %error, repeated, "{what}"),
                    None => most = FOLLOW_RETRY_LASTING,
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(most);
        }
    }

    /// Leads the term `key` won, until the leadership is lost.
    async fn lead(&self, key: LeaderKey) {
        let term = u64::try_from(key.rev).unwrap_or(0);
        let record = match self.read_insync().await {
            Ok(Record::Missing) => None,
            Ok(Record::Set(r)) => Some(r),
            Ok(Record::Unreadable(why)) => {
                error!(key = %self.insync_key(), reason = %why, "elected, but the in-sync record in etcd cannot be read; resigning");
                let _ = self.etcd.resign(&key).await;
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot read the in-sync set; resigning");
                let _ = self.etcd.resign(&key).await;
                return;
            }
        };
        if let Some(r) = &record {
            if !r.members.iter().any(|m| m == self.me()) {
                info!(term, members = ?r.members, "elected but no longer in sync; resigning");
                let _ = self.etcd.resign(&key).await;
                return;
            }
            if !self.topics.doubtful().is_empty() && r.members.iter().any(|m| m != self.me()) {
                info!(term, members = ?r.members, "elected, but copies here may lack acknowledged frames another member holds; resigning");
                let _ = self.etcd.resign(&key).await;
                return;
            }
        } else if !self.topics.doubtful().is_empty() {
            info!(
                term,
                "elected with no in-sync record, but copies here may lack acknowledged frames; resigning"
            );
            let _ = self.etcd.resign(&key).await;
            return;
        }
        // Leading with copies that may lack acknowledged frames (no other member is in
        // sync): their offsets will be given again, under a new epoch.
        if let Err(e) = self.topics.renew_doubtful().await {
            warn!(error = %e, "cannot give the doubtful topics a new epoch; resigning");
            let _ = self.etcd.resign(&key).await;
            return;
        }
        let members: Vec<String> = record.map(|r| r.members).unwrap_or_default();
        self.door.send_replace(Door::Opening);
        let leader = match Leader::start(
            Arc::clone(&self.topics),
            self.me(),
            term,
            members.clone(),
            self.config.replica_max_lag,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot take the lead; resigning");
                self.door.send_replace(Door::Shut);
                let _ = self.etcd.resign(&key).await;
                return;
            }
        };
        if self.write_insync(&key, term, leader.insync_set()).await != InSyncWrite::Written {
            self.door.send_replace(Door::Shut);
            leader.stop();
            let _ = self.etcd.resign(&key).await;
            return;
        }
        {
            let mut s = self.state.lock();
            s.term = term;
            s.leader = self.me().to_string();
        }
        // The refusal as this term starts (a set too small for --min-insync), in place
        // before the door opens: no publish finds none meanwhile.
        self.refuse_unless_writable(&leader.insync_set(), Instant::now());
        self.door.send_replace(Door::Open(Arc::clone(&leader)));
        self.view
            .set_peer_positions(Some(Arc::clone(&leader) as Arc<dyn PeerPositions>));
        let commits = tokio::spawn(Arc::clone(&leader).run_commits());
        self.announce(Kind::LeaderChanged, self.me());
        info!(term, insync = ?leader.insync_set(), "leading");

        let mut tick = tokio::time::interval(Duration::from_millis(100));
        // True while etcd may not hold the set as it is here (a write it did not answer).
        let mut unwritten = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop.cancelled() => {
                    info!(term, "shutting down: stepping down");
                    break;
                }
            }
            let lost = self.keeper.lock().state().borrow().lost;
            if lost {
                warn!(term, "lease lost: stepping down");
                break;
            }
            if let Some(why) = self.topics.log_config().failure.get() {
                error!(term, %why, "a log failed: stepping down");
                // Members that could not take over (offline, or back with less than a
                // commit point) leave the set first, so that etcd elects one that can.
                self.drop_laggards(&leader, &key, term).await;
                break;
            }
            self.refuse_unless_writable(&leader.insync_set(), Instant::now());
            let deposed = !self.drop_laggards(&leader, &key, term).await
                || !self
                    .add_caught_up(&leader, &key, term, &mut unwritten)
                    .await;
            if deposed {
                warn!(term, "no longer the leader in etcd: stepping down");
                break;
            }
            self.refuse_unless_writable(&leader.insync_set(), Instant::now());
        }
        self.view.set_refusal(Some("stepping down".into()));
        self.door.send_replace(Door::Shut);
        self.view.set_peer_positions(None);
        leader.stop();
        commits.abort();
        {
            let mut s = self.state.lock();
            s.leader = String::new();
        }
        self.announce(Kind::LeaderChanged, "");
        self.view.set_refusal(None);
        let _ = self.etcd.resign(&key).await;
    }

    /// Drops the in-sync set's laggards (offline, lagging past the limit, or back with
    /// less than a commit point), in etcd first; false when this node was deposed.
    async fn drop_laggards(&self, leader: &Leader, key: &LeaderKey, term: u64) -> bool {
        let online = |id: &str| self.membership.is_online(id);
        for m in leader.laggards(&online) {
            let set: Vec<String> = leader
                .insync_set()
                .into_iter()
                .filter(|x| *x != m)
                .collect();
            match self.write_insync(key, term, set.clone()).await {
                InSyncWrite::Written => {}
                InSyncWrite::Deposed => return false,
                // etcd did not answer: the member stays in the set here too (commit points
                // keep waiting for it, which is safe), and the drop is tried again.
                InSyncWrite::Failed => return true,
            }
            info!(term, member = %m, "dropped from the in-sync set");
            // Refused first if the set is now too small: the drop moves commit points, and
            // the publishes waiting for the dropped member must then find the refusal, not
            // an acknowledgement.
            self.refuse_unless_writable(&set, Instant::now());
            leader.drop_member(&m);
        }
        true
    }

    /// Adds the followers ready to join the in-sync set, here first, then in etcd: from
    /// then on commit points wait for each, so it holds every committed frame once etcd
    /// names it (and it may be elected). `unwritten`: an earlier addition's write went
    /// unanswered; the set is written again first. False when this node was deposed.
    async fn add_caught_up(
        &self,
        leader: &Leader,
        key: &LeaderKey,
        term: u64,
        unwritten: &mut bool,
    ) -> bool {
        if *unwritten {
            // An addition etcd may not have taken: the set as it is here, again.
            match self.write_insync(key, term, leader.insync_set()).await {
                InSyncWrite::Written => *unwritten = false,
                InSyncWrite::Deposed => return false,
                InSyncWrite::Failed => return true,
            }
        }
        let online = |id: &str| self.membership.is_online(id);
        for m in leader.caught_up(&online) {
            if !leader.add_member(&m) {
                continue;
            }
            match self.write_insync(key, term, leader.insync_set()).await {
                InSyncWrite::Written => {}
                InSyncWrite::Deposed => return false,
                // etcd did not answer, and may have written it all the same: the member
                // stays (commit points wait for it, whatever etcd names), and the set is
                // written again at the next tick.
                InSyncWrite::Failed => {
                    *unwritten = true;
                    return true;
                }
            }
            info!(term, member = %m, "added to the in-sync set");
        }
        true
    }

    /// Refuses writes while the in-sync `set` is too small or the lease may lapse soon.
    fn refuse_unless_writable(&self, set: &[String], now: Instant) {
        let valid_until = self.keeper.lock().valid_until().into_std();
        // Renewals come every third of the TTL: a lease with less than a third left has
        // missed one; stop acknowledging before it can lapse.
        let margin = self.config.lease_ttl / 3;
        let why = if valid_until.saturating_duration_since(now) < margin {
            Some("this node's etcd lease may lapse: not acknowledging writes".to_string())
        } else if set.len() < self.config.min_insync {
            Some(format!(
                "the in-sync set has {} of the {} members --min-insync requires ({})",
                set.len(),
                self.config.min_insync,
                set.join(", ")
            ))
        } else {
            None
        };
        self.view.set_refusal(why);
        self.view
            .set_deadline(Some(valid_until.checked_sub(margin).unwrap_or(now)));
    }

    /// Writes the in-sync set, fenced by the leader key; false when deposed or etcd failed.
    async fn write_insync(&self, key: &LeaderKey, term: u64, members: Vec<String>) -> InSyncWrite {
        let record = InSyncRecord { term, members };
        let value = match serde_json::to_vec(&record) {
            Ok(v) => v,
            Err(_) => return InSyncWrite::Failed,
        };
        match self
            .etcd
            .put_if_leader(key, &self.insync_key(), value)
            .await
        {
            Ok(true) => {
                let leader = {
                    let mut s = self.state.lock();
                    s.insync = record.members;
                    s.leader.clone()
                };
                self.announce(Kind::LeaderChanged, &leader);
                InSyncWrite::Written
            }
            Ok(false) => InSyncWrite::Deposed,
            Err(e) => {
                warn!(error = %e, "cannot write the in-sync set; trying again at the next tick");
                InSyncWrite::Failed
            }
        }
    }

    /// Keeps the view's in-sync set current from etcd.
    async fn watch_insync(self: Arc<Self>) {
        loop {
            let listed = async {
                let (kvs, revision) = self.etcd.get_prefix(&self.insync_key()).await?;
                if let Some(r) = kvs
                    .iter()
                    .find(|kv| kv.key == self.insync_key())
                    .and_then(|kv| serde_json::from_slice::<InSyncRecord>(&kv.value).ok())
                {
                    // Read at start and after each reconnection: announced when it changed
                    // (whether this node is in sync decides whether it serves reads).
                    let changed = {
                        let mut s = self.state.lock();
                        let changed = s.insync != r.members;
                        s.insync = r.members;
                        changed.then(|| s.leader.clone())
                    };
                    if let Some(leader) = changed {
                        self.announce(Kind::LeaderChanged, &leader);
                    }
                }
                self.etcd
                    .watch_prefix(&self.insync_key(), revision + 1)
                    .await
            };
            match listed.await {
                Ok(mut events) => {
                    while let Some(Ok(e)) = events.next().await {
                        if let WatchEvent::Put(kv) = e {
                            if let Ok(r) = serde_json::from_slice::<InSyncRecord>(&kv.value) {
                                self.state.lock().insync = r.members;
                                let leader = self.state.lock().leader.clone();
                                self.announce(Kind::LeaderChanged, &leader);
                            }
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot watch the in-sync set"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Announces nodes coming online and going offline.
    async fn watch_members(self: Arc<Self>) {
        let (_, mut events) = self.membership.subscribe();
        loop {
            match events.recv().await {
                Ok(MemberEvent::Online(r)) => self.announce(Kind::NodeOnline, &r.id),
                Ok(MemberEvent::Offline(id)) => self.announce(Kind::NodeOffline, &id),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.announce(Kind::NodeOnline, "")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Tells the view (Cluster, WatchCluster, and the write gate) what this node believes.
    fn announce(&self, kind: Kind, about: &str) {
        // One announcement at a time, from its own snapshot: two racing with stale ones
        // could forget an offline member for good.
        let mut seen = self.seen.lock();
        let believed = self.state.lock().clone();
        let nodes: BTreeMap<String, NodeRecord> = self.membership.nodes().borrow().clone();
        let address_of = |id: &str| nodes.get(id).map(|n| n.address.clone()).unwrap_or_default();
        let me = self.me();
        let leader_address = if believed.leader == me {
            self.config.advertise.clone()
        } else {
            address_of(&believed.leader)
        };
        let others = {
            seen.extend(nodes.iter().map(|(id, n)| (id.clone(), n.clone())));
            seen.retain(|id, _| nodes.contains_key(id) || believed.insync.contains(id));
            seen.values()
                .filter(|n| n.id != me)
                .map(|n| {
                    let online = nodes.contains_key(&n.id);
                    proto::NodeInfo {
                        id: n.id.clone(),
                        address: n.address.clone(),
                        http_address: n.http_address.clone(),
                        leader: online && n.id == believed.leader,
                        in_sync: believed.insync.contains(&n.id),
                        online,
                        topics: Vec::new(),
                    }
                })
                .collect()
        };
        let membership = ViewMembership {
            term: believed.term,
            leader: leader_address,
            this: Roles {
                leader: !believed.leader.is_empty() && believed.leader == me,
                in_sync: believed.insync.iter().any(|m| m == me),
                online: self.membership.is_registered(),
            },
            others,
        };
        self.view.announce(kind, about, membership);
    }
}
