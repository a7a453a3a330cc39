//! Server-Sent Events: `GET /v1/topics/{topic}/events?from=SEQ`, a subscription a page
//! reads with nothing but the browser's `EventSource`.
//!
//! Every event's `id:` is a cursor token; `EventSource` sends the last one back as
//! `Last-Event-ID` when it reconnects, and the stream resumes exactly after it (no gap, no
//! duplicate). A resume that cannot be served is answered with its HTTP status before the
//! stream starts, so `EventSource` stops; a stream that ends sends `event: error`.
//!
//! The stream is the broker's subscription, polled by hyper only when the connection can
//! take more: a page that stops reading costs a cursor and one batch, not a queue.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use futures::{FutureExt, Stream, StreamExt};

use super::caller::caller;
use super::door::HttpDoor;
use super::error::{error_body, ApiError};
use super::json::{write_frame, FrameExtras};
use super::routes::{number, params, topic_path, Params};
use crate::broker::metrics::Transport;
use crate::broker::shutdown::Shutdown;
use crate::broker::subscription::FrameStream;
use crate::broker::{CursorToken, CursorWriter, Error};
use crate::proto;
use crate::wire_frame::json_len_estimate;

/// How often an idle stream sends `: ping`.
pub const PING_EVERY: Duration = Duration::from_secs(15);

/// The `events` handler.
pub async fn events(
    State(door): State<Arc<HttpDoor>>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    let broker = door.broker()?;
    let q = params(broker, q)?;
    let who = caller(broker, &headers, &q)?;
    let topic = topic_path(broker, topic)?;
    let from = match q.get("from") {
        Some(v) => number::<u64>(broker, "from", v)?,
        None => 0,
    };
    // The header a reconnecting EventSource sends, or the query parameter a page can set.
    // One that is not text is refused, not taken for none (a fresh stream would send the
    // client frames it has).
    let header = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| {
            broker.reject(Error::InvalidArgument(
                "malformed cursor token: Last-Event-ID is not visible ASCII".into(),
            ))
        })?),
        None => None,
    };
    let last_event_id = header
        .or(q.get("last_event_id").map(String::as_str))
        .filter(|v| !v.is_empty());
    let resume = match last_event_id {
        Some(id) => Some(CursorToken::decode(id).map_err(|e| broker.reject(e))?),
        None => None,
    };
    let (opened, walk) = broker
        .subscribe_walk(&who, topic, (from, resume), Transport::Sse)
        .await?;
    let mut first = String::with_capacity(160);
    push_event(
        &mut first,
        "snapshot",
        &walk.encode(),
        &format!(
            "{{\"snapshot_offset\":\"{}\",\"epoch\":\"{}\"}}",
            opened.snapshot_offset, opened.epoch
        ),
    );
    let body = Body::from_stream(event_stream(
        first,
        opened.subscription.into_stream(),
        CursorWriter::new(walk),
        broker.shutdown().clone(),
    ));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies (nginx) must pass events through as they come, not buffer them.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Most events written into one chunk of the body: the frames a step finds ready go out
/// together (one allocation, one write), not one chunk each.
const EVENTS_PER_CHUNK: usize = 64;
/// Bytes a chunk stops growing at (one event may pass it): what a reader that stops reading
/// costs beyond the connection's own buffers.
const CHUNK_BYTES: usize = 256 << 10;

/// The body: the snapshot event, then chunks of `frame` events, each with the token that
/// resumes after it; `: ping` when 15 s pass without one; the stream's error, if any, as a
/// last `error` event. Polled by hyper only when the connection can take more. At shutdown
/// the frames the subscription still buffers are not sent: the `error` event (UNAVAILABLE)
/// goes out at once, so a client that reads slowly gets it soon (it resumes from the last
/// event's id).
fn event_stream(
    first: String,
    frames: FrameStream,
    cursor: CursorWriter,
    stopping: Shutdown,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let state = Sse {
        frames,
        cursor,
        stopping,
        ended: false,
        ping: tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY),
        wrote: false,
    };
    futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(futures::stream::unfold(
        state,
        |mut st| async move {
            if st.ended {
                return None;
            }
            let mut out = String::new();
            if st.stopping.is_fired() {
                st.push(&mut out, Some(Err(Error::ShuttingDown)));
                return Some((Ok(Bytes::from(out)), st));
            }
            let next = tokio::select! {
                next = st.frames.next() => next,
                _ = st.ping.tick() => {
                    // A ping only when nothing was written since the last tick.
                    if !std::mem::replace(&mut st.wrote, false) {
                        out.push_str(": ping\n\n");
                    }
                    return Some((Ok(Bytes::from(out)), st));
                }
            };
            st.push(&mut out, next);
            for _ in 1..EVENTS_PER_CHUNK {
                if st.ended || out.len() >= CHUNK_BYTES || st.stopping.is_fired() {
                    break;
                }
                match st.frames.next().now_or_never() {
                    Some(next) => st.push(&mut out, next),
                    None => break,
                }
            }
            st.wrote = true;
            Some((Ok(Bytes::from(out)), st))
        },
    ))
}

/// Where an event stream stands.
struct Sse {
    frames: FrameStream,
    /// The token of the last event sent.
    cursor: CursorWriter,
    stopping: Shutdown,
    ended: bool,
    ping: tokio::time::Interval,
    /// Something was written since the last ping tick.
    wrote: bool,
}

impl Sse {
    /// Appends the event of the stream's next item to `out`.
    fn push(&mut self, out: &mut String, next: Option<Result<proto::Frame, Error>>) {
        match next {
            Some(Ok(f)) => {
                self.cursor.advance(&f);
                out.reserve(json_len_estimate(f.payload.len()) + 128);
                out.push_str("event: frame\nid: ");
                self.cursor.write(out);
                out.push_str("\ndata: ");
                let extras = FrameExtras {
                    live: Some(f.offset >= self.cursor.walk().snapshot),
                    ..FrameExtras::default()
                };
                write_frame(out, &f, extras);
                out.push_str("\n\n");
            }
            Some(Err(e)) => {
                // Its id, like every event's, is a cursor token: the last frame's (or the
                // snapshot's), so a client resuming from it loses nothing.
                let mut id = String::new();
                self.cursor.write(&mut id);
                push_event(out, "error", &id, &error_body(&e).to_string());
                self.ended = true;
            }
            None => self.ended = true,
        }
    }
}

/// Appends one event (`id` left out when empty). `data` is one line of JSON.
fn push_event(out: &mut String, event: &str, id: &str, data: &str) {
    out.push_str("event: ");
    out.push_str(event);
    if !id.is_empty() {
        out.push_str("\nid: ");
        out.push_str(id);
    }
    out.push_str("\ndata: ");
    out.push_str(data);
    out.push_str("\n\n");
}
