//! The routes of the HTTP door and their handlers: each authenticates the caller through
//! the broker, makes one broker call, and answers JSON (or the error body).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

use super::caller::caller;
use super::door::{HttpDoor, Phase};
use super::error::ApiError;
use super::json::{self, TopicSettings};
use crate::broker::metrics::{text_format, wants_openmetrics, CONTENT_TYPE, TEXT_CONTENT_TYPE};
use crate::broker::{Broker, Error, Page};
use crate::proto;

/// A handler's answer.
pub type Answer = Result<Response, ApiError>;

/// The query parameters of a request (`access_token`, `seq_no`, ...).
pub type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Every route of the HTTP door.
pub fn router(door: Arc<HttpDoor>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(list_topics))
        .route("/v1/topics/{topic}", put(create_topic).delete(delete_topic))
        .route("/v1/topics/{topic}/frames", post(publish))
        .route("/v1/topics/{topic}/history", get(history))
        .route("/v1/topics/{topic}/events", get(super::sse::events))
        .route("/v1/broadcast", post(broadcast))
        .route("/v1/cluster", get(cluster))
        // GET for HTTP/1.1 upgrades, CONNECT for WebSocket over HTTP/2 (RFC 8441).
        .route(
            "/v1/ws",
            get(super::ws::upgrade).connect(super::ws::upgrade),
        )
        .route("/", get(super::console::index))
        .route("/console/{file}", get(super::console::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read by the handlers, which bound them by --max-frame-bytes.
        .layer(DefaultBodyLimit::disable())
        // Outermost: another site's page is refused before anything else runs.
        .layer(from_fn_with_state(Arc::clone(&door), super::origin::guard))
        .with_state(door)
}

/// `GET /healthz`: 200 while serving, 503 while starting or shutting down. Open to all.
async fn healthz(State(door): State<Arc<HttpDoor>>) -> Response {
    life(door.phase())
}

/// `/healthz`'s answer in `phase`.
fn life(phase: Phase) -> Response {
    match phase {
        Phase::Serving => (StatusCode::OK, "ok\n").into_response(),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
        Phase::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// `GET /readyz`: 200 while this node serves reads; 503 while starting, shutting down, or
/// out of the cluster's in-sync set (naming the leader in `Framecast-Leader`, as a refused
/// read does). Open to all: see [`crate::server::readiness`].
async fn readyz(State(door): State<Arc<HttpDoor>>) -> Response {
    let broker = match (door.phase(), door.broker()) {
        (Phase::Serving, Ok(broker)) => broker,
        (phase, _) => return life(phase),
    };
    match broker.cluster_view().out_of_sync().refusal() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(refusal) => {
            let mut resp = (StatusCode::SERVICE_UNAVAILABLE, "out of sync\n").into_response();
            if let Some(leader) = super::error::leader_header(&refusal) {
                resp.headers_mut().insert("framecast-leader", leader);
            }
            resp
        }
    }
}

/// `GET /metrics`: the exposition (OpenMetrics when asked for, else the Prometheus text
/// format); needs `admin` unless `--metrics-public`.
async fn metrics(State(door): State<Arc<HttpDoor>>, headers: HeaderMap, q: Params) -> Answer {
    let broker = door.broker()?;
    if !door.metrics_public() {
        let who = caller(broker, &headers, &params(broker, q)?)?;
        broker.may_read_metrics(&who)?;
    }
    // Off the async workers: a scrape reads `/proc/self/maps` (100 ms near the kernel's
    // default limit on mappings) and lists `/proc/self/fd`.
    let door = Arc::clone(&door);
    let text = tokio::task::spawn_blocking(move || door.broker().map(|b| b.scrape()))
        .await
        .map_err(|_| Error::Wal(crate::wal::Error::Unavailable("the scrape failed".into())))??;
    // OpenMetrics to whoever asks for it (Prometheus does), the Prometheus text format to
    // the rest.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if accept.is_some_and(wants_openmetrics) {
        return Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response());
    }
    Ok((
        [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE)],
        text_format(&text),
    )
        .into_response())
}

/// `GET /v1/topics`: the topics the caller may see, with their figures.
async fn list_topics(State(door): State<Arc<HttpDoor>>, headers: HeaderMap, q: Params) -> Answer {
    let broker = door.broker()?;
    let who = caller(broker, &headers, &params(broker, q)?)?;
    let topics: Vec<_> = broker.list_topics(&who)?.iter().map(json::topic).collect();
    Ok(Json(serde_json::json!({ "topics": topics })).into_response())
}

/// `GET /v1/cluster`: the cluster as this node sees it, with the positions of the topics the
/// caller may see.
async fn cluster(State(door): State<Arc<HttpDoor>>, headers: HeaderMap, q: Params) -> Answer {
    let broker = door.broker()?;
    let who = caller(broker, &headers, &params(broker, q)?)?;
    let info = broker.cluster(&who)?;
    Ok(Json(json::cluster_info(&info)).into_response())
}

/// `PUT /v1/topics/{topic}`, body the JSON settings (or empty): CreateTopic.
async fn create_topic(
    State(door): State<Arc<HttpDoor>>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Params,
    body: Body,
) -> Answer {
    let broker = door.broker()?;
    let who = caller(broker, &headers, &params(broker, q)?)?;
    let name = topic_path(broker, topic)?;
    // Settings are a few dozen bytes: anything past 64 KiB is not a settings object.
    let body = axum::body::to_bytes(body, 64 << 10)
        .await
        .map_err(|e| broker.reject(Error::InvalidArgument(format!("topic settings: {e}"))))?;
    let settings: TopicSettings = if body.iter().all(u8::is_ascii_whitespace) {
        TopicSettings::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| broker.reject(Error::InvalidArgument(format!("topic settings: {e}"))))?
    };
    let info = broker
        .create_topic(
            &who,
            proto::CreateTopicRequest {
                name,
                retention_max_age_seconds: settings.retention_max_age_seconds,
                retention_max_bytes: settings.retention_max_bytes,
            },
        )
        .await?;
    Ok(Json(json::topic(&info)).into_response())
}

/// `DELETE /v1/topics/{topic}`: 204.
async fn delete_topic(
    State(door): State<Arc<HttpDoor>>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Params,
) -> Answer {
    let broker = door.broker()?;
    let who = caller(broker, &headers, &params(broker, q)?)?;
    let name = topic_path(broker, topic)?;
    broker.delete_topic(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/topics/{topic}/frames?seq_no=N[&timestamp=T]`, body the payload, optional
/// `Idempotency-Key` header: Publish.
async fn publish(
    State(door): State<Arc<HttpDoor>>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Params,
    body: Body,
) -> Answer {
    let broker = door.broker()?;
    let q = params(broker, q)?;
    let who = caller(broker, &headers, &q)?;
    let topic = topic_path(broker, topic)?;
    let seq_no = match q.get("seq_no") {
        Some(v) => number::<u64>(broker, "seq_no", v)?,
        None => {
            return Err(broker
                .reject(Error::InvalidArgument(
                    "seq_no is required: POST /v1/topics/{topic}/frames?seq_no=N".into(),
                ))
                .into())
        }
    };
    let timestamp = match q.get("timestamp") {
        Some(v) => number::<i64>(broker, "timestamp", v)?,
        None => 0,
    };
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => v
            .to_str()
            .map_err(|_| {
                broker.reject(Error::InvalidArgument(
                    "Idempotency-Key must be visible ASCII".into(),
                ))
            })?
            .to_string(),
        None => String::new(),
    };
    // A caller who may not publish here, and a declared length over the limit, are
    // refused before a byte of the body is read.
    if let Err(e) = broker.may_publish_to(&who, &topic) {
        drain(body, DRAIN_REFUSED_BYTES).await;
        return Err(e.into());
    }
    if let Some(n) = declared_length(&headers) {
        if let Err(e) = broker.check_payload_size(n) {
            // Read (and drop) what the client is still sending before answering, up to a
            // bound: a server that answers and closes mid-upload makes most clients see a
            // reset instead of the 413 (RFC 9112 §9.6).
            drain(body, DRAIN_REFUSED_BYTES).await;
            return Err(e.into());
        }
    }
    let max = usize::try_from(broker.max_frame_bytes()).unwrap_or(usize::MAX);
    let payload = read_body(broker, body, max).await?;
    let ack = broker
        .publish(
            &who,
            proto::PublishRequest {
                topic,
                seq_no,
                payload,
                timestamp,
                idempotency_key,
            },
        )
        .await?;
    Ok(Json(json::ack(&ack)).into_response())
}

/// `GET /v1/topics/{topic}/history?from=SEQ&limit=N[&reverse=true][&after=TOKEN]`: one
/// History page.
async fn history(
    State(door): State<Arc<HttpDoor>>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    q: Params,
) -> Answer {
    let broker = door.broker()?;
    let q = params(broker, q)?;
    let who = caller(broker, &headers, &q)?;
    let topic = topic_path(broker, topic)?;
    let request = history_request(broker, topic, &q)?;
    // The page's room among those the server holds is held by the body until it is
    // written (or the connection closes), so pages asked for and never read cost the
    // server at most the broker's budget, not a page each.
    let Page { page, room } = broker
        .history(&who, &request, json::history_page_bound)
        .await?;
    let body = json::history_page(&page).to_string().into_bytes();
    drop(page);
    let length = body.len().to_string();
    let held = futures::stream::unfold((Some(body), Some(room)), |(body, room)| async move {
        // The page, then the end: the permit goes with the body, once it was written.
        let chunk = body?;
        Some((Ok::<_, std::convert::Infallible>(chunk), (None, room)))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::CONTENT_LENGTH, length),
        ],
        Body::from_stream(held),
    )
        .into_response())
}

/// A `HistoryRequest` from query parameters (`from`, `limit`, `reverse`, `after`); shared
/// with the WebSocket door, whose `history` message has the same fields.
pub fn history_request(
    broker: &Broker,
    topic: String,
    q: &HashMap<String, String>,
) -> Result<proto::HistoryRequest, ApiError> {
    let from_seq_no = match q.get("from") {
        Some(v) => number::<u64>(broker, "from", v)?,
        None => 0,
    };
    let limit = match q.get("limit") {
        Some(v) => number::<u32>(broker, "limit", v)?,
        None => 0,
    };
    let reverse = match q.get("reverse").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(v) => {
            return Err(broker
                .reject(Error::InvalidArgument(format!(
                    "reverse must be true or false, not '{v}'"
                )))
                .into())
        }
    };
    Ok(proto::HistoryRequest {
        topic,
        from_seq_no,
        limit,
        reverse,
        after: q.get("after").cloned().unwrap_or_default(),
    })
}

/// `POST /v1/broadcast`, body `{"topics":[…],"seq_no","payload"|"text","idempotency_key"}`.
async fn broadcast(
    State(door): State<Arc<HttpDoor>>,
    headers: HeaderMap,
    q: Params,
    body: Body,
) -> Answer {
    let broker = door.broker()?;
    let who = caller(broker, &headers, &params(broker, q)?)?;
    // The payload, however it is written, plus up to 10,000 topic names: a body over that
    // holds a payload over --max-frame-bytes (413).
    let max = super::json::max_json_message(broker.max_frame_bytes(), 2 << 20);
    // A caller who may publish nowhere, and a declared length over the limit, are refused
    // before a byte of the body is read, as a publish's.
    if let Err(e) = broker.may_publish_somewhere(&who) {
        drain(body, DRAIN_REFUSED_BYTES).await;
        return Err(e.into());
    }
    if declared_length(&headers).is_some_and(|n| n > max as u64) {
        drain(body, DRAIN_REFUSED_BYTES).await;
        return Err(payload_over_limit(broker).into());
    }
    let body = read_body(broker, body, max).await?;
    let request = serde_json::from_slice::<json::BroadcastBody>(&body)
        .map_err(|e| Error::InvalidArgument(format!("broadcast body: {e}")))
        .and_then(json::BroadcastBody::into_request)
        .map_err(|e| broker.reject(e))?;
    let ack = broker.broadcast(&who, request).await?;
    Ok(Json(json::broadcast_ack(&ack)).into_response())
}

/// The body, at most `max` bytes: past that (no or a wrong `Content-Length`) the payload is
/// over `--max-frame-bytes` (413); a body that breaks off (the client went away) is
/// `INVALID_ARGUMENT` naming why. Either is counted.
async fn read_body(broker: &Broker, body: Body, max: usize) -> Result<Bytes, Error> {
    match axum::body::to_bytes(body, max).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                return Err(payload_over_limit(broker));
            }
            Err(broker.reject(Error::InvalidArgument(format!(
                "the request body could not be read: {inner}"
            ))))
        }
    }
}

/// The `Content-Length` a request declares, if it declares a number.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The refusal (counted) of a body that holds a payload over `--max-frame-bytes` though its
/// exact size is not known: 413, naming at least one byte over.
fn payload_over_limit(broker: &Broker) -> Error {
    let max = broker.max_frame_bytes();
    broker.reject(Error::PayloadTooLarge {
        size: max.saturating_add(1),
        max,
    })
}

/// The most of a refused body read before answering; past it the connection is closed.
const DRAIN_REFUSED_BYTES: usize = 64 << 20;

/// Reads and drops up to `limit` bytes of `body` (for at most a few seconds).
async fn drain(body: Body, limit: usize) {
    use futures::StreamExt;
    let mut data = body.into_data_stream();
    let mut read = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while read < limit {
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            _ => break,
        }
    }
}

/// Any other path: 404 with the error body.
async fn not_found() -> Response {
    let body = serde_json::json!({"code": "NOT_FOUND", "message": "no such path"});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// A known path asked with a method it does not take (`POST /v1/topics`, say): 405 with
/// the error body every other refusal has.
async fn method_not_allowed(method: axum::http::Method) -> Response {
    let body = serde_json::json!({
        "code": "UNIMPLEMENTED",
        "message": format!("this path does not take {method}"),
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// The query parameters, or INVALID_ARGUMENT.
pub fn params(broker: &Broker, q: Params) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(m)| m)
        .map_err(|e| ApiError(broker.reject(Error::InvalidArgument(format!("query: {e}")))))
}

/// The `{topic}` of the path; the broker checks the name.
pub fn topic_path(
    broker: &Broker,
    p: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    p.map(|Path(t)| t).map_err(|e| {
        ApiError(broker.reject(Error::InvalidArgument(format!("topic in the path: {e}"))))
    })
}

/// A numeric query parameter.
pub fn number<T: std::str::FromStr>(broker: &Broker, name: &str, v: &str) -> Result<T, ApiError> {
    v.parse().map_err(|_| {
        ApiError(broker.reject(Error::InvalidArgument(format!(
            "{name} must be an integer, not '{v}'"
        ))))
    })
}
