//! [`Client`]: publish with retries that never duplicate, subscribe with exact resume.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

use super::coalesce::{validate, Coalescer};
use super::compression::Compression;
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

/// A framecast client. Cheap to clone; clones share one HTTP/2 connection, which is made on
/// first use and made again on its own after a failure.
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
    pub(crate) grpc: BroadcastClient<Channel>,
    /// The connection `grpc` runs on, kept so that a new compression setting can be applied.
    channel: Channel,
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
    /// A client for `addr` (`host:port` or `http://host:port`). No I/O happens here.
    pub fn connect(addr: &str) -> Result<Client> {
        let url = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(url)
            .map_err(|_| Error::InvalidAddress(addr.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        let grpc = generated(channel.clone(), Compression::None);
        let prefix = format!("{:016x}", rand::random::<u64>());
        Ok(Client {
            grpc,
            channel,
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
        self.grpc = generated(self.channel.clone(), compression);
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
        F: FnMut(BroadcastClient<Channel>) -> Fut,
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

/// The generated client on `channel`, with framecast's message size limits and `compression`.
fn generated(channel: Channel, compression: Compression) -> BroadcastClient<Channel> {
    let grpc = BroadcastClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    match compression.encoding() {
        Some(e) => grpc.send_compressed(e).accept_compressed(e),
        None => grpc,
    }
}
