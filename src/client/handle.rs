//! [`Client`]: publish with retries that never duplicate, subscribe with exact resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::coalesce::{check_payload, validate, Coalescer};
use super::compression::Compression;
use super::credentials::{Bearer, ClientTls};
use super::error::{from_status, transient, unsent, Error, Result};
use super::followers::{Picker, ReadFrom};
use super::nodes::{leader_hint, split_addrs, Conn, Nodes};
use super::retry::{Attempts, RetryNotice, RetryPolicy, Retrying};
use crate::proto::{self, broadcast_client::BroadcastClient};

/// The acknowledgement of a published frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The frame's offset in its topic.
    pub offset: u64,
    /// The stored timestamp (ns since the Unix epoch).
    pub timestamp: i64,
    /// True when the server had already stored this frame (a retry of an earlier publish).
    pub duplicate: bool,
}

impl From<proto::PublishAck> for Ack {
    fn from(a: proto::PublishAck) -> Ack {
        Ack {
            offset: a.offset,
            timestamp: a.timestamp,
            duplicate: a.duplicate,
        }
    }
}

/// A topic as the server describes it.
pub type TopicInfo = proto::TopicInfo;

/// A cluster as a node describes it: the term, the leader's address, every node.
pub type ClusterInfo = proto::ClusterInfo;

/// The generated client as [`Client`] uses it: every call carries the client's token.
pub(crate) type Grpc = BroadcastClient<InterceptedService<Channel, Bearer>>;

/// A framecast client. Cheap to clone; clones share their connections, which are made on
/// first use and made again on their own after a failure.
///
/// With a token ([`Client::with_token`]) every call carries it; with a CA
/// ([`Client::with_ca_cert`]) or an `https://` address the connection is TLS.
///
/// # Several nodes
///
/// A client may be given the nodes of a cluster, `Client::connect("a:7070,b:7070,c:7070")`
/// or [`Client::connect_many`]. Calls go to the first; when a node cannot be reached (or
/// answers `UNAVAILABLE` without naming a leader) the next attempt goes to the next
/// address, round robin, within the retry policy ([`Client::with_retry`]). A follower
/// refuses writes (publish, publish streams, topic creation and deletion) with
/// `UNAVAILABLE` and the leader's address (`framecast-leader`); the client then sends the
/// call there at once, with the same scheme, TLS settings, token and compression, and
/// keeps sending there. A refused call wrote nothing, and a publish keeps its idempotency
/// key, so following a hint never stores a frame twice. A call follows at most a few
/// hints in a row: nodes that keep naming each other end it with
/// [`Error::NoLeader`](crate::client::Error::NoLeader).
/// Subscriptions read from any node and resume on the next one exactly; with
/// [`Client::with_read_from`]`(`[`ReadFrom::Followers`]`)` each subscription reads from a
/// follower, spread round robin over them.
///
/// # Runtime
///
/// A client's connections are made on the tokio runtime it is first used on and serve
/// every call after: use it (and its clones) on that runtime, or make a client per
/// runtime. A runtime that ends closes them.
///
/// # Retries and the dedup window
///
/// A publish is retried with its key for at most the retry policy's `max_elapsed` after
/// the attempt that failed (which may itself wait up to that long for an answer): keep
/// twice `max_elapsed` under the server's `--dedup-window` (2 minutes by default; the
/// default policy's 60 s fits), or a retry past the window is stored as a new frame.
///
/// ```no_run
/// # async fn demo() -> framecast::client::Result<()> {
/// use futures::StreamExt;
/// let client = framecast::client::Client::connect("localhost:7070")?;
/// let ack = client.publish("prices", 1, "hello").await?;
/// let mut frames = client.subscribe("prices", 0);
/// while let Some(frame) = frames.next().await {
///     let frame = frame?;
///     println!("{} {:?} live={}", frame.seq_no, frame.payload, frame.live);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    /// The nodes, their connection settings and the route calls take. Shared by clones, so
    /// that what one call learns (a leader named, a node down) serves them all.
    nodes: Arc<Nodes>,
    /// The addresses as given, for messages.
    given: Arc<str>,
    pub(crate) retry: RetryPolicy,
    /// Told before every retry (see [`Client::on_retry`]).
    notice: Option<RetryNotice>,
    keys: Arc<KeySource>,
    /// The shared publish streams concurrent `publish` calls are coalesced over; `None`
    /// when coalescing is off (and inside the streams' own tasks).
    pub(crate) coalescer: Option<Arc<Coalescer>>,
    /// Where subscriptions read from.
    pub(crate) read_from: ReadFrom,
    /// Which follower the next subscription stream reads from (shared by clones).
    pub(crate) picker: Arc<Picker>,
}

/// Idempotency keys unique to this client: a random prefix and a counter.
#[derive(Debug)]
struct KeySource {
    prefix: String,
    next: AtomicU64,
}

impl Client {
    /// A client for `addr` (`host:port`, `http://host:port`, or `https://host:port` for
    /// TLS, which then needs [`Client::with_ca_cert`]), or for several nodes of a cluster
    /// separated by commas (`a:7070,b:7070`). No I/O happens here.
    pub fn connect(addr: &str) -> Result<Client> {
        Client::connect_many(&[addr])
    }

    /// A client for the nodes of a cluster, tried in this order (see [`Client`]); each
    /// entry is what [`Client::connect`] takes, commas included. No I/O happens here.
    pub fn connect_many<S: AsRef<str>>(addrs: &[S]) -> Result<Client> {
        let addrs = split_addrs(addrs)?;
        let nodes = Nodes::new(
            &addrs,
            ClientTls::default(),
            Bearer::default(),
            Compression::None,
        )?;
        let given = addrs.iter().map(|a| &**a).collect::<Vec<_>>().join(",");
        let prefix = format!("{:016x}", rand::random::<u64>());
        Ok(Client {
            nodes: Arc::new(nodes),
            given: Arc::from(given),
            retry: RetryPolicy::default(),
            notice: None,
            keys: Arc::new(KeySource {
                prefix,
                next: AtomicU64::new(0),
            }),
            coalescer: Some(Arc::default()),
            read_from: ReadFrom::Leader,
            picker: Arc::default(),
        })
    }

    /// Where subscriptions read from: [`ReadFrom::Leader`] (the default) where every call
    /// goes; [`ReadFrom::Followers`] a follower of the cluster, picked before each stream
    /// (the first and every resume) from a `Cluster` answer, round robin over the online
    /// followers (the in-sync ones if any is) from a random start, avoiding a node that just
    /// failed. With no follower online, a failed `Cluster` call or a single node, a
    /// subscription reads where every call goes; so it does, once, when a follower refuses
    /// it (it may lack a topic the leader just created). Writes are not affected.
    pub fn with_read_from(mut self, read_from: ReadFrom) -> Client {
        self.read_from = read_from;
        self
    }

    /// Where subscriptions read from (see [`Client::with_read_from`]).
    pub fn read_from(&self) -> ReadFrom {
        self.read_from
    }

    /// Sends `token` (a JWT) as `authorization: Bearer <token>` on every call.
    pub fn with_token(self, token: &str) -> Result<Client> {
        Ok(self.with_bearer(Bearer::new(token)?))
    }

    /// Connects with TLS, trusting only the CA(s) of `pem` (PEM certificates) to sign the
    /// server's certificate; the server's name is the address's host. A plain `host:port`
    /// or `http://` address is then reached over `https://`, and so is a leader a follower
    /// names.
    pub fn with_ca_cert(self, pem: impl Into<Bytes>) -> Result<Client> {
        let mut tls = self.nodes.tls().clone();
        tls.ca_pem = Some(pem.into());
        self.with_tls(tls)
    }

    /// Presents this certificate (PEM chain, leaf first) and its PEM private key to a server
    /// that requires client certificates (`serve --tls-client-ca`).
    pub fn with_client_identity(
        self,
        cert_pem: impl Into<Bytes>,
        key_pem: impl Into<Bytes>,
    ) -> Result<Client> {
        let mut tls = self.nodes.tls().clone();
        tls.identity = Some((cert_pem.into(), key_pem.into()));
        self.with_tls(tls)
    }

    /// Sends the token of `bearer` on every call (what [`Client::with_token`] makes).
    pub fn with_bearer(mut self, bearer: Bearer) -> Client {
        self.nodes = Arc::new(self.nodes.with_calls(bearer, self.nodes.compression()));
        self.renew_coalescer();
        self
    }

    /// Connects with these TLS settings (what [`Client::with_ca_cert`] and
    /// [`Client::with_client_identity`] set, both at once).
    pub fn with_tls(mut self, tls: ClientTls) -> Result<Client> {
        let addrs: Vec<Arc<str>> = self.nodes.addrs().map(Arc::from).collect();
        self.nodes = Arc::new(Nodes::new(
            &addrs,
            tls,
            self.nodes.bearer().clone(),
            self.nodes.compression(),
        )?);
        self.renew_coalescer();
        Ok(self)
    }

    /// Uses `policy` for retries and reconnects.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self.renew_coalescer();
        self
    }

    /// Calls `notice` before every retry of every operation of this client (unary calls,
    /// shared and explicit publish streams, subscriptions): with the address, the attempt,
    /// the reason and the delay, so a program can say at once that the server cannot be
    /// reached, and that a subscription reconnects. A call sent on at once to the leader a
    /// follower named waits for nothing and is not told.
    pub fn on_retry(mut self, notice: impl Fn(&Retrying<'_>) + Send + Sync + 'static) -> Client {
        self.notice = Some(RetryNotice(Arc::new(notice)));
        self.renew_coalescer();
        self
    }

    /// The addresses this client was made for, comma-separated.
    pub fn addr(&self) -> &str {
        &self.given
    }

    /// The addresses this client was made for, one by one, in order.
    pub fn addrs(&self) -> Vec<&str> {
        self.nodes.addrs().collect()
    }

    /// The node calls go to now: the first address until one failed or a follower named
    /// the leader; then the next address, or the leader (`HOST:PORT`, as named).
    pub fn current_addr(&self) -> String {
        self.nodes.current_addr().to_string()
    }

    /// The retries of one operation under this client's policy, telling its retry notice.
    pub(crate) fn attempts(&self) -> Attempts {
        Attempts::new(self.retry, self.notice.clone())
    }

    /// The nodes and the route calls take.
    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The node the next attempt goes to.
    pub(crate) fn conn(&self) -> Conn {
        self.nodes.conn()
    }

    /// Turns coalescing of concurrent publishes on (the default) or off.
    ///
    /// On, [`Client::publish`] and [`Client::publish_at`] calls made at the same time on
    /// this client and its clones travel over one shared pipelined `PublishStream` per
    /// topic instead of one unary call each, as Kafka's producer batches: each call still
    /// gets its own ack and its own idempotency key, and a broken stream re-sends every
    /// unacknowledged frame with its key, so nothing is stored twice. There is no linger
    /// timer: a lone call is sent at once and costs about what a unary call does. Off,
    /// every call is a unary `Publish`.
    pub fn with_coalescing(mut self, on: bool) -> Client {
        self.coalescer = on.then(Arc::default);
        self
    }

    /// True when concurrent publishes are coalesced (see [`Client::with_coalescing`]).
    pub fn coalescing(&self) -> bool {
        self.coalescer.is_some()
    }

    /// A fresh set of shared streams, so that they run with this client's settings.
    fn renew_coalescer(&mut self) {
        if self.coalescer.is_some() {
            self.coalescer = Some(Arc::default());
        }
    }

    /// This client without coalescing: what a shared stream's task publishes with (it must
    /// not hold the coalescer, which holds the task's queue).
    pub(crate) fn plain(&self) -> Client {
        Client {
            coalescer: None,
            ..self.clone()
        }
    }

    /// Compresses requests with `compression` and asks the server to compress responses
    /// with it (`grpc-accept-encoding`); [`Compression::None`] (the default) asks for nothing.
    pub fn with_compression(mut self, compression: Compression) -> Client {
        self.nodes = Arc::new(
            self.nodes
                .with_calls(self.nodes.bearer().clone(), compression),
        );
        self.renew_coalescer();
        self
    }

    /// A fresh idempotency key.
    pub(crate) fn next_key(&self) -> String {
        let n = self.keys.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.keys.prefix)
    }

    /// Publishes one frame with the server's receive time as its timestamp. Retries
    /// transient failures with the same idempotency key, so a retry never stores it twice.
    /// Concurrent calls are coalesced over one stream unless coalescing is off
    /// ([`Client::with_coalescing`]).
    pub async fn publish(
        &self,
        topic: &str,
        seq_no: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Ack> {
        self.publish_at(topic, seq_no, 0, payload).await
    }

    /// Publishes one frame with an explicit timestamp (ns since the epoch; 0 = server time).
    pub async fn publish_at(
        &self,
        topic: &str,
        seq_no: u64,
        timestamp: i64,
        payload: impl Into<Bytes>,
    ) -> Result<Ack> {
        let req = proto::PublishRequest {
            seq_no,
            payload: payload.into(),
            timestamp,
            topic: topic.to_string(),
            idempotency_key: self.next_key(),
        };
        check_payload(req.payload.len())?;
        if let Some(coalescer) = &self.coalescer {
            // A stream ends at its first invalid request: refuse here what can be checked
            // here, so that one bad call does not cost the others a new stream.
            validate(&req)?;
            return coalescer.publish(self, req).await;
        }
        self.retrying_write(|mut g| {
            let req = req.clone();
            async move { g.publish(req).await.map(|r| r.into_inner().into()) }
        })
        .await
    }

    /// Publishes one frame to every topic `topics` names — names, or patterns that match
    /// existing topics (`chat.>`) — with the server's receive time; see
    /// [`Client::broadcast_at`].
    pub async fn broadcast<S: AsRef<str>>(
        &self,
        topics: &[S],
        seq_no: u64,
        payload: impl Into<Bytes>,
    ) -> Result<Vec<(String, Ack)>> {
        self.broadcast_at(topics, seq_no, 0, payload).await
    }

    /// Publishes one frame to every topic `topics` names, with an explicit timestamp (ns
    /// since the epoch; 0 = server time), and returns each topic's ack, every frame durable.
    /// The server checks the whole request before it writes anything; transient failures
    /// are retried with one idempotency key, so a broadcast that failed part way is
    /// completed by the retry, no topic getting the frame twice.
    pub async fn broadcast_at<S: AsRef<str>>(
        &self,
        topics: &[S],
        seq_no: u64,
        timestamp: i64,
        payload: impl Into<Bytes>,
    ) -> Result<Vec<(String, Ack)>> {
        let req = proto::BroadcastRequest {
            topics: topics.iter().map(|t| t.as_ref().to_string()).collect(),
            seq_no,
            payload: payload.into(),
            timestamp,
            idempotency_key: self.next_key(),
        };
        // The topic names count too (up to 10,000 of them).
        check_payload(prost::Message::encoded_len(&req))?;
        let acks = self
            .retrying_write(|mut g| {
                let req = req.clone();
                async move { g.broadcast(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(acks
            .acks
            .into_iter()
            .map(|a| (a.topic, a.ack.unwrap_or_default().into()))
            .collect())
    }

    /// Creates a topic with retention settings (0 = server default).
    pub async fn create_topic(
        &self,
        name: &str,
        retention_max_age_seconds: u64,
        retention_max_bytes: u64,
    ) -> Result<TopicInfo> {
        let req = proto::CreateTopicRequest {
            name: name.to_string(),
            retention_max_age_seconds,
            retention_max_bytes,
        };
        self.retrying(|mut g| {
            let req = req.clone();
            async move { g.create_topic(req).await.map(|r| r.into_inner()) }
        })
        .await
    }

    /// Deletes a topic and its frames. Sent again only when it surely did nothing: refused
    /// by a follower naming the leader, or the node could not be reached at all (a retry
    /// after a lost answer would find the topic gone).
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = proto::DeleteTopicRequest {
            name: name.to_string(),
        };
        let mut attempts = self.attempts();
        loop {
            let conn = self.conn();
            let mut grpc = conn.grpc.clone();
            match attempts
                .within(&conn.addr, grpc.delete_topic(req.clone()))
                .await?
            {
                Ok(_) => return Ok(()),
                Err(s) if leader_hint(&s).is_some() || unsent(&s) => {
                    if let Some(e) = attempts.failed(self.nodes(), &conn, &s).await {
                        return Err(e);
                    }
                }
                Err(s) => return Err(from_status(s)),
            }
        }
    }

    /// The cluster as the node calls go to describes it: the term, the leader, and every
    /// node with its addresses and state (a single node lists itself, as the leader).
    pub async fn cluster(&self) -> Result<ClusterInfo> {
        self.retrying(|mut g| async move {
            g.cluster(proto::ClusterRequest {})
                .await
                .map(|r| r.into_inner())
        })
        .await
    }

    /// Every topic with its figures.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        self.retrying(|mut g| async move {
            g.list_topics(proto::ListTopicsRequest {})
                .await
                .map(|r| r.into_inner().topics)
        })
        .await
    }

    /// Sends `call` where calls go, again on transient failures (following the nodes).
    pub(super) async fn retrying<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Grpc) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.retrying_as(false, call).await
    }

    /// [`Client::retrying`] for a keyed write (a unary publish or broadcast): once an
    /// attempt broke after it may have been stored (a transient failure, not a connection
    /// never made nor a follower naming the leader), a refusal for good of a later one
    /// fails with [`Error::FateUnknown`], not the refusal, which would say it is not stored.
    /// A refusal as malformed (`INVALID_ARGUMENT`) stays: the server checks that before it
    /// writes, on every attempt alike.
    pub(super) async fn retrying_write<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Grpc) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.retrying_as(true, call).await
    }

    async fn retrying_as<T, F, Fut>(&self, write: bool, mut call: F) -> Result<T>
    where
        F: FnMut(Grpc) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut attempts = self.attempts();
        let mut broke = false;
        loop {
            let conn = self.conn();
            match attempts.bounded(&conn.addr, call(conn.grpc.clone())).await {
                Ok(v) => return Ok(v),
                Err(s) if transient(&s) => {
                    broke |= write && leader_hint(&s).is_none() && !unsent(&s);
                    if let Some(e) = attempts.failed(self.nodes(), &conn, &s).await {
                        return Err(e);
                    }
                }
                Err(s) if broke && s.code() != tonic::Code::InvalidArgument => {
                    return Err(Error::FateUnknown {
                        refusal: from_status(s).to_string(),
                    })
                }
                Err(s) => return Err(from_status(s)),
            }
        }
    }
}
