//! A subscription that survives disconnects: it reconnects with backoff and resumes with
//! the cursor, so what it yields is exactly one unbroken subscription. With
//! [`ReadFrom::Followers`] each stream opens at a follower (see [`super::followers`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;

use super::error::{from_status, reason, transient, Error, Result};
use super::followers::{ReadFrom, CLUSTER_LOOKUP};
use super::handle::Client;
use super::nodes::{leader_hint, Conn};
use super::retry::Attempts;
use crate::proto::{self, EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};

impl Client {
    /// Subscribes to `topic` from `replay_seq_no_start`: the history in order-key order, then
    /// live frames. The stream survives disconnects and server restarts, resuming exactly:
    /// with several addresses, on the next node (every node of a cluster serves the same
    /// cursors); with [`ReadFrom::Followers`], on a follower.
    pub fn subscribe(&self, topic: &str, replay_seq_no_start: u64) -> Subscription {
        Subscription::new(self.clone(), topic.to_string(), replay_seq_no_start)
    }
}

/// How long a subscription that had a stream open goes on reconnecting while the server
/// answers `RESOURCE_EXHAUSTED` (too many subscribers), counted from the first such answer
/// since a stream was last opened: its own old stream, on a connection that died without a
/// close (half-open), still holds a subscriber slot until the server's keepalive notices
/// (about 40 s). Each such reconnect backs off and counts against the retry budget like any
/// other failure; past this, the answer is final. The JS client's `BUSY_RETRY_MS`.
const BUSY_RETRY: Duration = Duration::from_secs(120);

/// A delivered frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// The payload.
    pub payload: Bytes,
    /// Stored timestamp (ns since the Unix epoch).
    pub timestamp: i64,
    /// Offset in the topic.
    pub offset: u64,
    /// False for history (offset below the snapshot point), true for live frames.
    pub live: bool,
}

impl Frame {
    /// The frame of message `f`; `live` when it is at or past the snapshot point.
    pub(super) fn of(f: proto::Frame, live: bool) -> Frame {
        Frame {
            seq_no: f.seq_no,
            payload: f.payload,
            timestamp: f.timestamp,
            offset: f.offset,
            live,
        }
    }
}

/// Where the subscription stands, for an exact resume.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    snapshot: u64,
    epoch: u64,
    /// `(seq_no, timestamp, offset)` of the last frame yielded.
    last: Option<(u64, i64, u64)>,
}

struct State {
    client: Client,
    topic: String,
    start: u64,
    position: Option<Position>,
    /// The open server stream, the node it comes from, and when it opened.
    stream: Option<(Conn, tonic::Streaming<proto::Frame>, Instant)>,
    attempts: Attempts,
    done: bool,
    /// The node the current (or last) stream was opened at, shared with the [`Subscription`].
    node: Arc<Mutex<Option<Arc<str>>>>,
    /// The node the last stream broke on: the next follower is another, if there is one.
    avoid: Option<Arc<str>>,
    /// A follower refused the last stream: the next opens where every call goes, and that
    /// answer is final (a follower may lack a topic the leader just created).
    by_route: bool,
    /// The first `RESOURCE_EXHAUSTED` since a stream was last opened (see [`BUSY_RETRY`]).
    busy_since: Option<Instant>,
}

/// A stream of [`Frame`]s. Ends with an error for `OUT_OF_RANGE` (frames removed by
/// retention), a changed epoch (topic re-created) or a deleted topic: never a silent gap.
/// `RESOURCE_EXHAUSTED` (the server's subscriber limit) ends it at the first open; on a
/// resume it is waited out with backoff for up to two minutes, as the subscription's own
/// old stream may still hold a slot on a connection that died half-open.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<Frame>> + Send>>,
    node: Arc<Mutex<Option<Arc<str>>>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    fn new(client: Client, topic: String, start: u64) -> Subscription {
        let attempts = client.attempts();
        let node = Arc::new(Mutex::new(None));
        let state = State {
            client,
            topic,
            start,
            position: None,
            stream: None,
            attempts,
            done: false,
            node: Arc::clone(&node),
            avoid: None,
            by_route: false,
            busy_since: None,
        };
        let inner = futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            if item.is_err() {
                s.done = true;
            }
            Some((item, s))
        });
        Subscription {
            inner: Box::pin(inner),
            node,
        }
    }

    /// The node (`HOST:PORT`, or an address as given) the subscription reads from now, or
    /// last read from; `None` before its first stream was opened.
    pub fn node(&self) -> Option<String> {
        self.node.lock().as_ref().map(|a| a.to_string())
    }
}

impl Stream for Subscription {
    type Item = Result<Frame>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl State {
    async fn next(&mut self) -> Option<Result<Frame>> {
        loop {
            if self.done {
                return None;
            }
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => {}
                    Err(Some(e)) => return Some(Err(e)),
                    Err(None) => continue,
                }
            }
            let (_, stream, _) = self.stream.as_mut()?;
            match stream.message().await {
                Ok(Some(f)) => {
                    self.attempts.succeeded();
                    let pos = self.position.get_or_insert_with(Position::default);
                    pos.last = Some((f.seq_no, f.timestamp, f.offset));
                    let live = f.offset >= pos.snapshot;
                    return Some(Ok(Frame::of(f, live)));
                }
                Ok(None) => {
                    // The server never ends a subscription cleanly; treat it as a break.
                    let (conn, _, opened) = self.stream.take()?;
                    self.attempts.stayed_up(opened);
                    if let Some(e) = self.pause(&conn, Break::Ended).await {
                        return Some(Err(e));
                    }
                }
                Err(s) if transient(&s) => {
                    let (conn, _, opened) = self.stream.take()?;
                    self.attempts.stayed_up(opened);
                    if let Some(e) = self.pause(&conn, Break::Failed(&s)).await {
                        return Some(Err(e));
                    }
                }
                Err(s) if self.busy_resume(&s) => {
                    let (conn, _, _) = self.stream.take()?;
                    if let Some(e) = self.pause(&conn, Break::Failed(&s)).await {
                        return Some(Err(e));
                    }
                }
                Err(s) => {
                    let (conn, _, _) = self.stream.take()?;
                    if !self.refused_by_follower(&conn, &s) {
                        return Some(Err(from_status(s)));
                    }
                }
            }
        }
    }

    /// True when `status` is a `RESOURCE_EXHAUSTED` (too many subscribers) to wait out:
    /// this subscription had a stream open (its own old one may still hold a slot, see
    /// [`BUSY_RETRY`]) and such answers have come for less than [`BUSY_RETRY`]. A first open
    /// refused so is final: nothing of this subscription holds a slot.
    fn busy_resume(&mut self, status: &tonic::Status) -> bool {
        if status.code() != tonic::Code::ResourceExhausted || self.position.is_none() {
            return false;
        }
        let since = *self.busy_since.get_or_insert_with(Instant::now);
        let waiting = since.elapsed() < BUSY_RETRY;
        tracing::debug!(
            topic = %self.topic,
            reason = %status.message(),
            busy_for = ?since.elapsed(),
            waiting,
            "too many subscribers on a resume"
        );
        waiting
    }

    /// True when `conn` is a follower this subscription picked: its refusal `status` (or its
    /// `UNAVAILABLE` naming the leader) is not final, the next stream opens where every call
    /// goes (whose answer is).
    fn refused_by_follower(&mut self, conn: &Conn, status: &tonic::Status) -> bool {
        if conn.routed() {
            return false;
        }
        tracing::debug!(
            topic = %self.topic,
            node = %conn.addr,
            reason = %reason(status),
            "a follower refused the subscription; asking where every call goes"
        );
        self.by_route = true;
        true
    }

    /// With [`ReadFrom::Followers`]: the follower the next stream opens at, picked from the
    /// `Cluster` answer of the node calls go to; `None` to open where every call goes.
    async fn follower_conn(&mut self) -> Option<Conn> {
        if self.client.read_from != ReadFrom::Followers || std::mem::take(&mut self.by_route) {
            return None;
        }
        let route = self.client.conn();
        let mut grpc = route.grpc.clone();
        let asked = grpc.cluster(proto::ClusterRequest {});
        let info = match tokio::time::timeout(CLUSTER_LOOKUP, asked).await {
            Ok(Ok(info)) => info.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(topic = %self.topic, node = %route.addr, reason = %reason(&status), "no Cluster answer; reading where every call goes");
                return None;
            }
            Err(_) => {
                tracing::debug!(topic = %self.topic, node = %route.addr, "Cluster call timed out; reading where every call goes");
                return None;
            }
        };
        let Some(node) = self.client.picker.pick(&info, self.avoid.as_deref()) else {
            tracing::debug!(topic = %self.topic, "no follower online; reading where every call goes");
            return None;
        };
        match self.client.nodes().conn_at(&node.address) {
            Ok(conn) => {
                tracing::debug!(topic = %self.topic, follower = %node.id, node = %conn.addr, "reading from a follower");
                Some(conn)
            }
            Err(e) => {
                tracing::debug!(topic = %self.topic, follower = %node.id, error = %e, "unusable follower address; reading where every call goes");
                None
            }
        }
    }

    /// Opens (or re-opens with the cursor) the server stream. `Err(None)`: try again.
    async fn open(&mut self) -> std::result::Result<(), Option<Error>> {
        let resume = self.position.map(|p| {
            let (seq_no, timestamp, offset) = p.last.unwrap_or((0, 0, 0));
            proto::Cursor {
                snapshot_offset: p.snapshot,
                seq_no,
                timestamp,
                offset,
                epoch: p.epoch,
            }
        });
        let req = proto::SubscribeRequest {
            replay_seq_no_start: self.start,
            topic: self.topic.clone(),
            resume,
        };
        let conn = match self.follower_conn().await {
            Some(c) => c,
            None => self.client.conn(),
        };
        *self.node.lock() = Some(Arc::clone(&conn.addr));
        let mut grpc = conn.grpc.clone();
        // A node that answers nothing fails this attempt as a break does: the next address.
        let opened = self.attempts.bounded(&conn.addr, grpc.subscribe(req)).await;
        match opened {
            Ok(resp) => {
                let md = resp.metadata();
                let num = |k: &str| {
                    md.get(k)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<u64>().ok())
                };
                if self.position.is_none() {
                    let (Some(snapshot), Some(epoch)) =
                        (num(SNAPSHOT_OFFSET_HEADER), num(EPOCH_HEADER))
                    else {
                        return Err(Some(Error::Server {
                            code: tonic::Code::Internal,
                            message: "subscription without snapshot metadata".into(),
                        }));
                    };
                    self.position = Some(Position {
                        snapshot,
                        epoch,
                        last: None,
                    });
                }
                self.stream = Some((conn, resp.into_inner(), Instant::now()));
                self.busy_since = None;
                Ok(())
            }
            // A follower that lacks the topic names the leader: a question for the route,
            // asked at once, not a break of this follower.
            Err(s) if leader_hint(&s).is_some() && self.refused_by_follower(&conn, &s) => Err(None),
            Err(s) if transient(&s) => Err(self.pause(&conn, Break::Failed(&s)).await),
            Err(s) if self.refused_by_follower(&conn, &s) => Err(None),
            Err(s) if self.busy_resume(&s) => Err(self.pause(&conn, Break::Failed(&s)).await),
            Err(s) => Err(Some(from_status(s))),
        }
    }

    /// Before reconnecting after the stream from `conn` broke: backs off and moves to the
    /// next node, or goes at once to a leader the node named; an error when the retry
    /// budget is spent.
    async fn pause(&mut self, conn: &Conn, why: Break<'_>) -> Option<Error> {
        self.avoid = Some(Arc::clone(&conn.addr));
        let nodes = self.client.nodes();
        match why {
            Break::Failed(status) => {
                let why = reason(status);
                tracing::debug!(
                    topic = %self.topic,
                    node = %conn.addr,
                    reason = %why,
                    "subscription broken; resuming"
                );
                self.attempts.failed(nodes, conn, status).await
            }
            Break::Ended => {
                tracing::debug!(
                    topic = %self.topic,
                    node = %conn.addr,
                    "subscription ended; resuming"
                );
                self.attempts.broken(nodes, conn, "stream ended").await
            }
        }
    }
}

/// Why a subscription's server stream has to be opened again.
enum Break<'a> {
    /// The call or the stream failed with a transient status.
    Failed(&'a tonic::Status),
    /// The server ended the stream, which it never does on its own.
    Ended,
}
