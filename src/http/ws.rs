//! WebSocket (`GET /v1/ws`): one socket, any number of subscriptions (one per topic),
//! publishing, History and token refresh, as JSON text messages (API.md).
//!
//! Memory is bounded whatever the client does. One writer task owns the connection: it
//! pulls the next pushes from the socket's subscriptions only when the connection has taken
//! what it wrote before, so a client that stops reading stops its subscriptions' cursors
//! (each holds at most one batch) and nothing queues with lag. Replies take their size from
//! the socket's byte budget ([`OUT_BUDGET`]) before they are queued and give it back once
//! written; a client that sends requests but does not read stops being read.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::caller::caller;
use super::door::HttpDoor;
use super::error::{error_body, ApiError};
use super::json::{self, write_frame, FrameExtras, Payload};
use super::routes::{history_request, params};
use crate::broker::metrics::Transport;
use crate::broker::principal::Principal;
use crate::broker::subscription::FrameStream;
use crate::broker::{Broker, CursorToken, CursorWriter, Error, Page, PageRoom};
use crate::proto;
use crate::wire_frame::json_len_estimate;

/// Room in one WebSocket message for the fields around a payload (id, topic, key, ...).
const WS_OVERHEAD: usize = 64 << 10;

/// How tungstenite's refusal of a message over the limit reads (its `CapacityError`).
const TOO_LONG: &str = "Message too long";

/// Bytes of outgoing messages one socket may have queued and not yet written.
pub const OUT_BUDGET: usize = 8 << 20;
/// Requests (publish, History) of one socket running at once; more wait, and the socket
/// is not read meanwhile.
const MAX_IN_FLIGHT: usize = 64;
/// History requests of one socket running at once, among [`MAX_IN_FLIGHT`]. A page (up to
/// 4 MiB of payload, several times that as JSON) is built before its reply waits for its
/// share of [`OUT_BUDGET`]: a socket that asks for pages and does not read them holds this
/// many, not one per request in flight.
const MAX_HISTORY_IN_FLIGHT: usize = 2;
/// The socket's read buffer: requests are small (a larger message still fits, read in
/// several steps).
const WS_READ_BUFFER: usize = 8 << 10;
/// Bytes the socket's writer gathers before writing, between flushes.
const WS_WRITE_BUFFER: usize = 32 << 10;
/// Most messages written in one flush.
const FLUSH_EVERY: usize = 64;
/// Bytes of pushes a flush aims to stay under (one push may pass it).
const FLUSH_BYTES: usize = 1 << 20;
/// How often the server pings.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// A socket from which nothing (not even a pong) arrived for this long is closed.
pub const SILENT_FOR: Duration = Duration::from_secs(60);
/// With auth on, a socket opened without a token that has not sent a good `auth` message
/// this long after it opened is closed: an unauthenticated peer holds no socket, buffers or
/// task for longer (it could otherwise hold them forever, answering pings).
pub const AUTH_WITHIN: Duration = Duration::from_secs(10);
/// With auth on, the largest message a socket opened without a token takes, for its whole
/// life (the library's limit is set at the upgrade): an `auth` and requests, not large
/// publishes. An unauthenticated peer could otherwise make the server buffer a message of
/// 6 × `--max-frame-bytes` (25 MB) per socket before it says who it is.
pub const PRE_AUTH_MESSAGE: usize = 64 << 10;

/// The `/v1/ws` handler: upgrades, then serves the socket.
pub async fn upgrade(
    State(door): State<Arc<HttpDoor>>,
    headers: HeaderMap,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let broker = door.broker()?.clone();
    let q = params(&broker, q)?;
    // Not a WebSocket handshake: the JSON error body every route answers with.
    let ws = ws.map_err(|r| {
        broker.reject(Error::InvalidArgument(format!(
            "/v1/ws takes WebSocket upgrades only: {}",
            r.body_text()
        )))
    })?;
    // A token given with the upgrade must be good; without one the socket starts
    // unauthenticated, and an `auth` message may follow.
    let given = headers.contains_key(header::AUTHORIZATION) || q.contains_key("access_token");
    let who = if given || !broker.requires_auth() {
        Some(caller(&broker, &headers, &q)?)
    } else {
        None
    };
    let max_message = match who {
        Some(_) => super::json::max_json_message(broker.max_frame_bytes(), WS_OVERHEAD),
        None => PRE_AUTH_MESSAGE,
    };
    let session = door.session();
    Ok(ws
        // Per-socket buffers (tungstenite's defaults are 128 KiB each way, 256 MB for a
        // thousand sockets): clients send small requests, and the writer flushes batches.
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            serve(broker, who, socket).await;
            drop(session);
        }))
}

/// When the peer was last heard from (any message, a pong included), as the reader signals.
struct Heard {
    seen: watch::Receiver<()>,
    at: tokio::time::Instant,
}

impl Heard {
    /// Runs `io`, a write to the peer, unless the peer stays silent for [`SILENT_FOR`]
    /// meanwhile: a peer that neither reads nor says anything is given up on, even while a
    /// write waits for it. False when `io` failed or the peer fell silent.
    async fn unless_silent<T, E>(
        &mut self,
        io: impl std::future::Future<Output = Result<T, E>>,
    ) -> bool {
        let mut io = std::pin::pin!(io);
        // Most writes are done at once: no timer for them.
        if let Some(done) = io.as_mut().now_or_never() {
            return done.is_ok();
        }
        loop {
            tokio::select! {
                biased;
                done = &mut io => return done.is_ok(),
                Ok(()) = self.seen.changed() => self.at = tokio::time::Instant::now(),
                () = tokio::time::sleep_until(self.at + SILENT_FOR) => {
                    debug!("websocket silent while a write waits; closing");
                    return false;
                }
            }
        }
    }
}

/// What the socket's other tasks hand its writer, in the order it must happen.
enum Cmd {
    /// Messages to write (replies, the end of a subscription), holding their share of the
    /// budget until written (and a History page's room among the server's pages).
    Send(Vec<Message>, Option<OwnedSemaphorePermit>, Option<PageRoom>),
    /// A subscription's pushes from now on (its answer was queued before this); they stop
    /// when the subscription's [`Sub::stop`] is aborted.
    Feed(Abortable<BoxStream<'static, Message>>),
}

/// Who the socket's calls are made as: `None` until an `auth` message when auth is on.
type Who = watch::Receiver<Option<Arc<Principal>>>;

/// What every task of one socket shares.
#[derive(Clone)]
struct Link {
    broker: Broker,
    out: mpsc::Sender<Cmd>,
    budget: Arc<Semaphore>,
    who: Who,
}

impl Link {
    /// Queues `text`, waiting for its share of the budget, with `page` held until it is
    /// written; false once the socket closed.
    async fn send(&self, text: String, page: Option<PageRoom>) -> bool {
        let share = text.len().clamp(1, OUT_BUDGET) as u32;
        let Ok(permit) = Arc::clone(&self.budget).acquire_many_owned(share).await else {
            return false;
        };
        let msg = Message::Text(Utf8Bytes::from(text));
        self.out
            .send(Cmd::Send(vec![msg], Some(permit), page))
            .await
            .is_ok()
    }

    async fn reply(&self, id: &Value, result: Result<Value, Error>) -> bool {
        self.reply_holding(id, result, None).await
    }

    /// [`Link::reply`], holding a History page's room until the reply is written.
    async fn reply_holding(
        &self,
        id: &Value,
        result: Result<Value, Error>,
        page: Option<PageRoom>,
    ) -> bool {
        // Only the text waits for its share of the budget (a History page's value is let
        // go first).
        let text = match result {
            Ok(v) => json!({"id": id, "result": v}),
            Err(e) => json!({"id": id, "error": error_body(&e)}),
        }
        .to_string();
        self.send(text, page).await
    }

    /// The socket's caller, if it may make calls now.
    fn caller(&self) -> Result<Arc<Principal>, Error> {
        current(&self.who)
    }
}

/// The socket's caller, if it may make calls now.
fn current(who: &Who) -> Result<Arc<Principal>, Error> {
    let who = who.borrow().clone().ok_or_else(|| {
        Error::Unauthenticated(
            "send {\"auth\":{\"token\":…}} first: this server needs a token".into(),
        )
    })?;
    if who.expires_at().is_some() && who.is_expired(std::time::SystemTime::now()) {
        return Err(Error::TokenExpired);
    }
    Ok(who)
}

/// A message from the client: an `id` and exactly one operation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    id: Value,
    subscribe: Option<SubscribeOp>,
    unsubscribe: Option<TopicOp>,
    publish: Option<PublishOp>,
    history: Option<HashMap<String, Value>>,
    auth: Option<AuthOp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeOp {
    #[serde(default)]
    topic: String,
    #[serde(default, deserialize_with = "json::uint64")]
    from: u64,
    #[serde(default)]
    resume: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicOp {
    #[serde(default)]
    topic: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishOp {
    #[serde(default)]
    topic: String,
    #[serde(default, deserialize_with = "json::uint64")]
    seq_no: u64,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default, deserialize_with = "json::int64")]
    timestamp: i64,
    #[serde(default)]
    idempotency_key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthOp {
    token: String,
}

/// A subscription of the socket, as its reader knows it.
struct Sub {
    /// Ends its pushes: the writer polls none of them after this is aborted.
    stop: AbortHandle,
    /// Gone once the feed ended (its stream's end, an error, or stopped).
    alive: Weak<()>,
}

impl Sub {
    fn is_open(&self) -> bool {
        self.alive.strong_count() > 0
    }
}

/// Serves one socket until it closes, goes silent, or the server shuts down.
async fn serve(broker: Broker, who: Option<Arc<Principal>>, socket: WebSocket) {
    let limit = match who {
        Some(_) => "6 × --max-frame-bytes + 64 KiB",
        None => "64 KiB: it opened without a token; give one with the upgrade for larger",
    };
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Cmd>(64);
    let (who_tx, who_rx) = watch::channel(who);
    let link = Link {
        broker: broker.clone(),
        out,
        budget: Arc::new(Semaphore::new(OUT_BUDGET)),
        who: who_rx,
    };
    let (seen_tx, seen_rx) = watch::channel(());
    let stopping = broker.shutdown().clone();
    // The writer: replies and pushes to the connection, pings, and the silence check. It
    // pulls pushes only after the last flush finished: a peer that stops reading stops them.
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut heard = Heard {
            seen: seen_rx,
            at: tokio::time::Instant::now(),
        };
        // One entry per subscribed topic, polled only when its subscription woke it: a
        // socket may carry thousands, and a map polled whole at every push (`StreamMap`)
        // cost a microsecond per subscription per push.
        let mut feeds: SelectAll<Abortable<BoxStream<'static, Message>>> = SelectAll::new();
        loop {
            tokio::select! {
                biased;
                next = out_rx.recv() => {
                    let Some(cmd) = next else {
                        // The reader is done. At shutdown the subscriptions still have their
                        // last word, an `end` each: it goes out first, then the close (below).
                        // A feed with nothing to say within a second is not waited for; the
                        // writes are (the server waits for this session within its grace
                        // period before it exits).
                        if stopping.is_fired() {
                            let by = tokio::time::Instant::now() + LAST_WORDS;
                            while let Ok(Some(msg)) =
                                tokio::time::timeout_at(by, feeds.next()).await
                            {
                                if !heard.unless_silent(sink.feed(msg)).await {
                                    return;
                                }
                            }
                        }
                        break;
                    };
                    // Everything queued now goes out in one flush (one write), not one
                    // each; the budget shares are kept until the flush wrote them.
                    let mut held = Vec::new();
                    let mut fed = 0;
                    let mut ok = true;
                    let mut cmd = Some(cmd);
                    while let Some(next) = cmd.take() {
                        match next {
                            Cmd::Feed(f) => feeds.push(f),
                            Cmd::Send(msgs, permit, page) => {
                                held.push((permit, page));
                                for msg in msgs {
                                    fed += 1;
                                    ok = ok && heard.unless_silent(sink.feed(msg)).await;
                                }
                            }
                        }
                        if !ok || fed >= FLUSH_EVERY {
                            break;
                        }
                        cmd = out_rx.try_recv().ok();
                    }
                    if !ok || (fed > 0 && !heard.unless_silent(sink.flush()).await) {
                        break;
                    }
                    drop(held);
                }
                Ok(()) = heard.seen.changed() => heard.at = tokio::time::Instant::now(),
                _ = ping.tick() => {
                    if heard.at.elapsed() >= SILENT_FOR {
                        debug!("websocket silent; closing");
                        break;
                    }
                    if !heard.unless_silent(sink.send(Message::Ping(Default::default()))).await {
                        break;
                    }
                }
                // Pushes last: under a steady stream of them, what the peer said and the ping
                // tick (once every 20 s) still get their turn.
                Some(msg) = feeds.next(), if !feeds.is_empty() => {
                    // This push and those ready right after it, from any subscription.
                    let mut bytes = message_len(&msg);
                    let mut ok = heard.unless_silent(sink.feed(msg)).await;
                    let mut fed = 1;
                    while ok && fed < FLUSH_EVERY && bytes < FLUSH_BYTES {
                        let Some(Some(msg)) = feeds.next().now_or_never() else { break };
                        bytes += message_len(&msg);
                        fed += 1;
                        ok = heard.unless_silent(sink.feed(msg)).await;
                    }
                    if !ok || !heard.unless_silent(sink.flush()).await {
                        break;
                    }
                }
            }
        }
        // A peer that fell silent while writes waited gets no close frame (it would wait too).
        heard.unless_silent(sink.close()).await;
    });
    let mut writer = writer;
    let mut writer_done = false;
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let in_flight = InFlight {
        any: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        history: Arc::new(Semaphore::new(MAX_HISTORY_IN_FLIGHT)),
    };
    let mut shutdown = broker.shutdown().clone();
    let auth_by = tokio::time::Instant::now() + AUTH_WITHIN;
    let mut unauthenticated = who_tx.borrow().is_none();
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = shutdown.wait() => break,
            () = tokio::time::sleep_until(auth_by), if unauthenticated => {
                let e = broker.reject(Error::Unauthenticated(format!(
                    "no good {{\"auth\":{{\"token\":…}}}} within {} s of opening the socket",
                    AUTH_WITHIN.as_secs()
                )));
                // Said if the peer takes it soon (one that reads nothing is not waited for).
                let soon = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                if within(soon, link.reply(&Value::Null, Err(e))).await {
                    // RFC 6455: 1008, policy violation.
                    let close = Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::POLICY,
                        reason: Utf8Bytes::from_static("no auth"),
                    }));
                    let send = async { link.out.send(Cmd::Send(vec![close], None, None)).await.is_ok() };
                    within(soon, send).await;
                }
                break;
            }
            // The writer gave up on the peer (silent, or the connection failed).
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                break;
            }
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) if e.to_string().contains(TOO_LONG) => {
                // tungstenite refused a message over the limit and cannot go on reading:
                // say why (the reply reaches the writer before the socket closes).
                let e = broker.reject(Error::InvalidArgument(format!(
                    "message over this socket's limit ({limit}): {e}"
                )));
                link.reply(&Value::Null, Err(e)).await;
                // And the close code for it (RFC 6455: 1009, message too big).
                let close = Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: axum::extract::ws::close_code::SIZE,
                    reason: Utf8Bytes::from_static("message too big"),
                }));
                let _ = link.out.send(Cmd::Send(vec![close], None, None)).await;
                break;
            }
            _ => break,
        };
        let _ = seen_tx.send(());
        // A peer without a token that sends and never reads cannot hold the socket past
        // the deadline by keeping its replies waiting.
        let by = unauthenticated.then_some(auth_by);
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let e = broker.reject(Error::InvalidArgument(
                    "messages are JSON text, not binary".into(),
                ));
                if !within(by, link.reply(&Value::Null, Err(e))).await {
                    break;
                }
                continue;
            }
        };
        if writer.is_finished() {
            break;
        }
        let request = match serde_json::from_str::<Request>(text.as_str()) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<Value>(text.as_str())
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                let e = broker.reject(Error::InvalidArgument(format!("message: {e}")));
                if !within(by, link.reply(&id, Err(e))).await {
                    break;
                }
                continue;
            }
        };
        if !within(by, handle(&link, &who_tx, &mut subs, &in_flight, request)).await {
            break;
        }
        unauthenticated = unauthenticated && who_tx.borrow().is_none();
    }
    drop(subs);
    drop(link);
    if !writer_done {
        if unauthenticated {
            // A peer that never authenticated gets a moment to take what was queued, not
            // the silence rule's minute: the socket closes now.
            if tokio::time::timeout(Duration::from_secs(1), &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        } else {
            let _ = writer.await;
        }
    }
}

/// Runs `io` (a reply or a request that queues replies); false (as for a closed socket)
/// if `by` is set and passes first.
async fn within(
    by: Option<tokio::time::Instant>,
    io: impl std::future::Future<Output = bool>,
) -> bool {
    match by {
        Some(by) => tokio::time::timeout_at(by, io).await.unwrap_or(false),
        None => io.await,
    }
}

/// Handles one request; false once the socket closed.
async fn handle(
    link: &Link,
    who_tx: &watch::Sender<Option<Arc<Principal>>>,
    subs: &mut HashMap<String, Sub>,
    in_flight: &InFlight,
    r: Request,
) -> bool {
    let broker = &link.broker;
    let id = r.id;
    let ops = [
        r.subscribe.is_some(),
        r.unsubscribe.is_some(),
        r.publish.is_some(),
        r.history.is_some(),
        r.auth.is_some(),
    ];
    if ops.iter().filter(|&&op| op).count() != 1 {
        let e = broker.reject(Error::InvalidArgument(
            "a message has exactly one of subscribe, unsubscribe, publish, history, auth".into(),
        ));
        return link.reply(&id, Err(e)).await;
    }
    if let Some(auth) = r.auth {
        let result = broker
            .authenticate(Some(&format!("Bearer {}", auth.token)))
            .map(|who| {
                let expires = who
                    .expires_at()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs().to_string());
                let answer = json!({"subject": who.subject(), "expires": expires});
                who_tx.send_replace(Some(who));
                answer
            });
        return link.reply(&id, result).await;
    }
    if let Some(op) = r.unsubscribe {
        let result =
            crate::broker::core::topic_name(&op.topic).and_then(|name| match subs.remove(&name) {
                Some(sub) if sub.is_open() => Ok((name, sub.stop)),
                _ => Err(Error::InvalidArgument(format!(
                    "this socket has no open subscription to topic '{name}'"
                ))),
            });
        let result = match result {
            // The pushes stop before the answer is queued: the writer polls none of them
            // after this, and writes what it took before it takes the answer.
            Ok((name, stop)) => {
                stop.abort();
                Ok(json!({"topic": name}))
            }
            Err(e) => Err(broker.reject(e)),
        };
        return link.reply(&id, result).await;
    }
    if let Some(op) = r.subscribe {
        return subscribe(link, subs, id, op).await;
    }
    // Publish and History run beside the socket's other work; at most MAX_IN_FLIGHT at once
    // (and MAX_HISTORY_IN_FLIGHT History).
    let Ok(permit) = Arc::clone(&in_flight.any).acquire_owned().await else {
        return false;
    };
    let task = link.clone();
    if let Some(op) = r.publish {
        tokio::spawn(async move {
            let result = publish(&task, op).await;
            task.reply(&id, result).await;
            drop(permit);
        });
    } else if let Some(q) = r.history {
        let Ok(page_permit) = Arc::clone(&in_flight.history).acquire_owned().await else {
            return false;
        };
        tokio::spawn(async move {
            let (result, room) = match history(&task, q).await {
                Ok((page, room)) => (Ok(page), Some(room)),
                Err(e) => (Err(e), None),
            };
            task.reply_holding(&id, result, room).await;
            drop((permit, page_permit));
        });
    }
    true
}

/// What bounds one socket's requests running at once.
struct InFlight {
    /// Publish and History: [`MAX_IN_FLIGHT`].
    any: Arc<Semaphore>,
    /// History: [`MAX_HISTORY_IN_FLIGHT`].
    history: Arc<Semaphore>,
}

async fn publish(link: &Link, op: PublishOp) -> Result<Value, Error> {
    let broker = &link.broker;
    let who = link.caller().map_err(|e| broker.reject(e))?;
    let payload = Payload {
        payload: op.payload,
        text: op.text,
    }
    .bytes()
    .map_err(|e| broker.reject(e))?;
    let ack = broker
        .publish(
            &who,
            proto::PublishRequest {
                seq_no: op.seq_no,
                payload,
                timestamp: op.timestamp,
                topic: op.topic,
                idempotency_key: op.idempotency_key,
            },
        )
        .await?;
    Ok(json::ack(&ack))
}

/// A History page as JSON, and its room among the pages the server holds.
async fn history(link: &Link, q: HashMap<String, Value>) -> Result<(Value, PageRoom), Error> {
    let broker = &link.broker;
    let who = link.caller().map_err(|e| broker.reject(e))?;
    // The same fields as the HTTP query, as strings, numbers or booleans; `null` is a field
    // left out, as in the other operations.
    let q: HashMap<String, String> = q
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect();
    let topic = q.get("topic").cloned().unwrap_or_default();
    let request = history_request(broker, topic, &q).map_err(|ApiError(e)| e)?;
    let Page { page, room } = broker
        .history(&who, &request, json::history_page_bound)
        .await?;
    Ok((json::history_page(&page), room))
}

/// Opens a subscription, answers it, then starts its pump: the answer always comes before
/// the first frame.
async fn subscribe(
    link: &Link,
    subs: &mut HashMap<String, Sub>,
    id: Value,
    op: SubscribeOp,
) -> bool {
    let broker = &link.broker;
    let opened = async {
        let who = link.caller().map_err(|e| broker.reject(e))?;
        let name = crate::broker::core::topic_name(&op.topic).map_err(|e| broker.reject(e))?;
        if subs.get(&name).is_some_and(Sub::is_open) {
            return Err(broker.reject(Error::AlreadyExists(format!(
                "this socket already subscribes to topic '{name}'"
            ))));
        }
        let resume = match &op.resume {
            Some(t) if !t.is_empty() => Some(CursorToken::decode(t).map_err(|e| broker.reject(e))?),
            _ => None,
        };
        let (opened, walk) = broker
            .subscribe_walk(&who, name.clone(), (op.from, resume), Transport::Ws)
            .await?;
        Ok((name, opened, walk))
    };
    match opened.await {
        Err(e) => link.reply(&id, Err(e)).await,
        Ok((name, opened, walk)) => {
            let answer = json!({
                "topic": name,
                "snapshot_offset": opened.snapshot_offset.to_string(),
                "epoch": opened.epoch.to_string(),
                "cursor": walk.encode(),
            });
            if !link.reply(&id, Ok(answer)).await {
                return false;
            }
            let alive = Arc::new(());
            let (stop, registration) = AbortHandle::new_pair();
            let pushes = Box::pin(Feed {
                broker: broker.clone(),
                who: link.who.clone(),
                topic: name.clone(),
                cursor: CursorWriter::new(walk),
                frames: opened.subscription.into_stream(),
                state: FeedState::Reading,
                scratch: String::new(),
                alive: Some(Arc::clone(&alive)),
            });
            subs.insert(
                name.clone(),
                Sub {
                    stop,
                    alive: Arc::downgrade(&alive),
                },
            );
            let pushes: BoxStream<'static, Message> = pushes;
            link.out
                .send(Cmd::Feed(Abortable::new(pushes, registration)))
                .await
                .is_ok()
        }
    }
}

/// One subscription of a socket, as a stream of pushes: each frame with the cursor that
/// resumes after it, then its `end` message. A stream ended by its token's expiry continues,
/// exactly where it was, if the socket has a fresh token by then (`auth`); otherwise it ends
/// with UNAUTHENTICATED. Written out rather than as an `unfold`: this is every push.
struct Feed {
    broker: Broker,
    who: Who,
    topic: String,
    /// The token of the last push.
    cursor: CursorWriter,
    frames: FrameStream,
    state: FeedState,
    /// Where each push is written before it is copied out at its exact size.
    scratch: String,
    /// Dropped when the feed ends: tells the reader the subscription is over.
    alive: Option<Arc<()>>,
}

/// Where a feed is.
enum FeedState {
    /// Reading `frames`.
    Reading,
    /// Opening the subscription again under a fresh token.
    Resuming(futures::future::BoxFuture<'static, Result<FrameStream, Error>>),
    /// Ended (its `end` message, if any, was given).
    Done,
}

impl Feed {
    /// The feed's last message: its `end`, for `e`.
    fn end(&mut self, e: &Error) -> Poll<Option<Message>> {
        self.state = FeedState::Done;
        self.alive = None;
        Poll::Ready(Some(Message::Text(Utf8Bytes::from(end_message(
            &self.topic,
            e,
        )))))
    }
}

impl Stream for Feed {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let st = self.get_mut();
        loop {
            match &mut st.state {
                FeedState::Done => return Poll::Ready(None),
                FeedState::Resuming(opening) => match ready!(opening.as_mut().poll(cx)) {
                    Ok(frames) => {
                        st.frames = frames;
                        st.state = FeedState::Reading;
                    }
                    Err(e) => return st.end(&e),
                },
                // At shutdown the frames the subscription still buffers are not sent: its
                // `end` goes out at once, so a peer that reads slowly gets it soon (it
                // resumes from the last push's cursor).
                FeedState::Reading if st.broker.shutdown().is_fired() => {
                    return st.end(&Error::ShuttingDown)
                }
                FeedState::Reading => match ready!(st.frames.as_mut().poll_next(cx)) {
                    Some(Ok(f)) => {
                        st.cursor.advance(&f);
                        let msg = push_message(&mut st.scratch, &st.topic, &st.cursor, &f);
                        return Poll::Ready(Some(Message::Text(Utf8Bytes::from(msg))));
                    }
                    Some(Err(Error::TokenExpired)) => match current(&st.who) {
                        Ok(who) => {
                            // The ended subscription lets go of its subscriber slots first:
                            // at --max-subscribers, its own successor must not be refused.
                            st.frames = Box::pin(futures::stream::empty());
                            let broker = st.broker.clone();
                            let (topic, walk) = (st.topic.to_string(), *st.cursor.walk());
                            st.state = FeedState::Resuming(Box::pin(async move {
                                broker
                                    .subscribe_walk(
                                        &who,
                                        topic,
                                        (walk.start_seq_no, Some(walk)),
                                        Transport::Ws,
                                    )
                                    .await
                                    .map(|(o, _)| o.subscription.into_stream())
                            }));
                        }
                        Err(e) => return st.end(&e),
                    },
                    Some(Err(e)) => return st.end(&e),
                    None => {
                        st.state = FeedState::Done;
                        st.alive = None;
                        return Poll::Ready(None);
                    }
                },
            }
        }
    }
}

/// Bytes of a message the writer counts toward a flush.
fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// `{"frame":{…,"cursor"}}` for `f`, the walk being past it: written into `scratch`, then
/// copied into a string of exactly its length, which becomes the message's bytes without
/// another allocation (one with spare capacity would cost one more, and a shared count).
fn push_message(
    scratch: &mut String,
    topic: &str,
    cursor: &CursorWriter,
    f: &proto::Frame,
) -> String {
    let msg = scratch;
    msg.clear();
    msg.reserve(json_len_estimate(f.payload.len()) + 128);
    msg.push_str("{\"frame\":");
    let extras = FrameExtras {
        topic: Some(topic),
        live: Some(f.offset >= cursor.walk().snapshot),
        cursor: Some(cursor),
    };
    write_frame(msg, f, extras);
    msg.push('}');
    let out = String::from(msg.as_str());
    // A large frame's push is not kept per subscription.
    if msg.capacity() > SCRATCH_KEEP {
        *msg = String::new();
    }
    out
}

/// The scratch capacity a subscription keeps between pushes.
const SCRATCH_KEEP: usize = 64 << 10;

/// How long the subscriptions' `end` messages may take to go out at shutdown.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// `{"end":{"topic","code","message"}}`: the subscription ended with `e`; with `leader`
/// too (its HTTP door, else its address) when a follower names the leader.
fn end_message(topic: &str, e: &Error) -> String {
    let mut body = error_body(e);
    body["topic"] = topic.into();
    json!({ "end": body }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{sleep, Instant};

    #[tokio::test(start_paused = true)]
    async fn a_write_waiting_on_a_silent_peer_is_given_up_and_a_talking_one_is_waited_for() {
        let (tx, rx) = watch::channel(());
        let mut heard = Heard {
            seen: rx,
            at: Instant::now(),
        };
        assert!(heard.unless_silent(async { Ok::<_, ()>(()) }).await);
        assert!(!heard.unless_silent(async { Err::<(), _>(()) }).await);
        // A write that never finishes, to a peer that says nothing: given up after the
        // silence, not before.
        let start = Instant::now();
        assert!(
            !heard
                .unless_silent(std::future::pending::<Result<(), ()>>())
                .await
        );
        assert_eq!(start.elapsed(), SILENT_FOR);
        // A peer that keeps talking while the write waits twice the silence: waited for.
        heard.at = Instant::now();
        let talker = tokio::spawn(async move {
            for _ in 0..5 {
                sleep(SILENT_FOR / 2).await;
                let _ = tx.send(());
            }
        });
        let start = Instant::now();
        let slow = async {
            sleep(SILENT_FOR * 2).await;
            Ok::<_, ()>(())
        };
        assert!(heard.unless_silent(slow).await);
        assert_eq!(start.elapsed(), SILENT_FOR * 2);
        talker.await.unwrap_or_default();
    }
}
