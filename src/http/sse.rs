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

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use super::caller::caller;
use super::door::HttpDoor;
use super::error::{error_body, ApiError};
use super::json::{write_frame, FrameExtras};
use super::routes::{number, params, topic_path, Params};
use crate::broker::metrics::Transport;
use crate::broker::{CursorToken, Error};
use crate::proto;

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
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(q.get("last_event_id").map(String::as_str))
        .filter(|v| !v.is_empty());
    let resume = match last_event_id {
        Some(id) => Some(CursorToken::decode(id).map_err(|e| broker.reject(e))?),
        None => None,
    };
    let request = match &resume {
        Some(token) => token.subscribe_request(&topic),
        None => proto::SubscribeRequest {
            replay_seq_no_start: from,
            topic,
            resume: None,
        },
    };
    let opened = broker.subscribe(&who, &request, Transport::Sse).await?;
    let walk = CursorToken {
        start_seq_no: request.replay_seq_no_start,
        snapshot: opened.snapshot_offset,
        epoch: opened.epoch,
        last: resume.and_then(|t| t.last),
        reverse: false,
        floor: None,
    };
    let snapshot = Event::default()
        .event("snapshot")
        .id(walk.encode())
        .data(format!(
            "{{\"snapshot_offset\":\"{}\",\"epoch\":\"{}\"}}",
            opened.snapshot_offset, opened.epoch
        ));
    let events = futures::stream::once(async move { snapshot })
        .chain(frame_events(opened.subscription.into_stream(), walk))
        .map(Ok::<_, Infallible>);
    let keep_alive = KeepAlive::new().interval(PING_EVERY).text(" ping");
    let mut resp = Sse::new(events).keep_alive(keep_alive).into_response();
    // Proxies (nginx) must pass events through as they come, not buffer them.
    resp.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(resp)
}

/// One `frame` event per frame, each with the token that resumes after it; the stream's
/// error, if any, as a last `error` event.
fn frame_events(
    frames: crate::broker::subscription::FrameStream,
    walk: CursorToken,
) -> impl Stream<Item = Event> + Send {
    futures::stream::unfold(
        (frames, walk, false),
        |(mut frames, walk, ended)| async move {
            if ended {
                return None;
            }
            match frames.next().await? {
                Ok(f) => {
                    let walk = walk.after(&f);
                    let mut data = String::with_capacity(f.payload.len() * 7 / 3 + 128);
                    let extras = FrameExtras {
                        live: Some(f.offset >= walk.snapshot),
                        ..FrameExtras::default()
                    };
                    write_frame(&mut data, &f, extras);
                    let event = Event::default().event("frame").id(walk.encode()).data(data);
                    Some((event, (frames, walk, false)))
                }
                Err(e) => Some((error_event(&e), (frames, walk, true))),
            }
        },
    )
}

/// `event: error` with `{"code","message"}`.
fn error_event(e: &Error) -> Event {
    Event::default()
        .event("error")
        .data(error_body(e).to_string())
}
