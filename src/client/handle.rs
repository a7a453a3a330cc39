//! [`Client`]: publish with retries that never duplicate, subscribe with exact resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::coalesce::{validate, Coalescer};
use super::compression::Compression;
use super::credentials::{Bearer, ClientTls};
use super::error::{from_status, reason, transient, Error, Result};
use super::retry::{Backoff, RetryNotice, RetryPolicy, Retrying};
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

/// The generated client as [`Client`] uses it: every call carries the client's token.
pub(crate) type Grpc = BroadcastClient<InterceptedService<Channel, Bearer>>;

/// A framecast client. Cheap to clone; clones share one HTTP/2 connection, which is made on
/// first use and made again on its own after a failure.
///
/// With a token ([`Client::with_token`]) every call carries it; with a CA
/// ([`Client::with_ca_cert`]) or an `https://` address the connection is TLS.
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
    pub(crate) grpc: Grpc,
    /// The connection `grpc` runs on, kept so that a new compression setting can be applied.
    channel: Channel,
    /// Sent as `authorization: Bearer …` on every call.
    bearer: Bearer,
    /// The CA and client certificate the connection is made with.
    tls: ClientTls,
    /// Requests compressed with it, responses asked for with it.
    compression: Compression,
    pub(crate) retry: RetryPolicy,
    /// The address as given, for messages.
    addr: Arc<str>,
    /// Told before every retry (see [`Client::on_retry`]).
    notice: Option<RetryNotice>,
    keys: Arc<KeySource>,
    /// The shared publish streams concurrent `publish` calls are coalesced over; `None`
    /// when coalescing is off (and inside the streams' own tasks).
    pub(crate) coalescer: Option<Arc<Coalescer>>,
}

/// Idempotency keys unique to this client: a random prefix and a counter.
#[derive(Debug)]
struct KeySource {
    prefix: String,
    next: AtomicU64,
}

impl Client {
    /// A client for `addr` (`host:port`, `http://host:port`, or `https://host:port` for
    /// TLS, which then needs [`Client::with_ca_cert`]). No I/O happens here.
    pub fn connect(addr: &str) -> Result<Client> {
        let tls = ClientTls::default();
        let channel = channel(addr, &tls)?;
        let bearer = Bearer::default();
        let grpc = generated(channel.clone(), Compression::None, bearer.clone());
        let prefix = format!("{:016x}", rand::random::<u64>());
        Ok(Client {
            grpc,
            channel,
            bearer,
            tls,
            compression: Compression::None,
            retry: RetryPolicy::default(),
            addr: Arc::from(addr),
            notice: None,
            keys: Arc::new(KeySource {
                prefix,
                next: AtomicU64::new(0),
            }),
            coalescer: Some(Arc::default()),
        })
    }

    /// Sends `token` (a JWT) as `authorization: Bearer <token>` on every call.
    pub fn with_token(self, token: &str) -> Result<Client> {
        Ok(self.with_bearer(Bearer::new(token)?))
    }

    /// Connects with TLS, trusting only the CA(s) of `pem` (PEM certificates) to sign the
    /// server's certificate; the server's name is the address's host. A plain `host:port`
    /// or `http://` address is then reached over `https://`.
    pub fn with_ca_cert(mut self, pem: impl Into<Bytes>) -> Result<Client> {
        self.tls.ca_pem = Some(pem.into());
        self.reconnect()?;
        Ok(self)
    }

    /// Presents this certificate (PEM chain, leaf first) and its PEM private key to a server
    /// that requires client certificates (`serve --tls-client-ca`).
    pub fn with_client_identity(
        mut self,
        cert_pem: impl Into<Bytes>,
        key_pem: impl Into<Bytes>,
    ) -> Result<Client> {
        self.tls.identity = Some((cert_pem.into(), key_pem.into()));
        self.reconnect()?;
        Ok(self)
    }

    /// Sends the token of `bearer` on every call (what [`Client::with_token`] makes).
    pub fn with_bearer(mut self, bearer: Bearer) -> Client {
        self.bearer = bearer;
        self.rewire();
        self
    }

    /// Connects with these TLS settings (what [`Client::with_ca_cert`] and
    /// [`Client::with_client_identity`] set, both at once).
    pub fn with_tls(mut self, tls: ClientTls) -> Result<Client> {
        self.tls = tls;
        self.reconnect()?;
        Ok(self)
    }

    /// A new (lazy) connection with the current TLS settings.
    fn reconnect(&mut self) -> Result<()> {
        self.channel = channel(&self.addr, &self.tls)?;
        self.rewire();
        Ok(())
    }

    /// The generated client again, after a setting changed, and shared streams that use it.
    fn rewire(&mut self) {
        self.grpc = generated(self.channel.clone(), self.compression, self.bearer.clone());
        self.renew_coalescer();
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
    /// reached, and that a subscription reconnects.
    pub fn on_retry(mut self, notice: impl Fn(&Retrying<'_>) + Send + Sync + 'static) -> Client {
        self.notice = Some(RetryNotice(Arc::new(notice)));
        self.renew_coalescer();
        self
    }

    /// The address this client was made for.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A backoff under this client's retry policy that tells its retry notice.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.retry, Arc::clone(&self.addr), self.notice.clone())
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
        self.compression = compression;
        self.rewire();
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
        if let Some(coalescer) = &self.coalescer {
            // A stream ends at its first invalid request: refuse here what can be checked
            // here, so that one bad call does not cost the others a new stream.
            validate(&req)?;
            return coalescer.publish(self, req).await;
        }
        let mut backoff = self.backoff();
        loop {
            match self.grpc.clone().publish(req.clone()).await {
                Ok(r) => return Ok(r.into_inner().into()),
                Err(s) if transient(&s) => {
                    if !backoff.wait(&reason(&s)).await {
                        return Err(Error::Unavailable {
                            attempts: backoff.attempts,
                            last: s.message().to_string(),
                        });
                    }
                }
                Err(s) => return Err(from_status(s)),
            }
        }
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

    /// Deletes a topic and its frames.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = proto::DeleteTopicRequest {
            name: name.to_string(),
        };
        let mut g = self.grpc.clone();
        g.delete_topic(req).await.map(|_| ()).map_err(from_status)
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

    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut(Grpc) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut backoff = self.backoff();
        loop {
            match call(self.grpc.clone()).await {
                Ok(v) => return Ok(v),
                Err(s) if transient(&s) => {
                    if !backoff.wait(&reason(&s)).await {
                        return Err(Error::Unavailable {
                            attempts: backoff.attempts,
                            last: s.message().to_string(),
                        });
                    }
                }
                Err(s) => return Err(from_status(s)),
            }
        }
    }
}

/// A lazy connection to `addr` with framecast's transport settings.
fn channel(addr: &str, tls: &ClientTls) -> Result<Channel> {
    let endpoint = tls
        .endpoint(addr)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// The generated client on `channel`, with framecast's message size limits, `compression`
/// and the token of `bearer`.
fn generated(channel: Channel, compression: Compression, bearer: Bearer) -> Grpc {
    let grpc = BroadcastClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    match compression.encoding() {
        Some(e) => grpc.send_compressed(e).accept_compressed(e),
        None => grpc,
    }
}
