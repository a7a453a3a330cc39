//! The HTTP door (`--http-listen`, default `127.0.0.1:7071`): REST (publish, topics,
//! History, Broadcast), Server-Sent Events, WebSocket, the web console, `/metrics` and
//! `/healthz`, over axum.
//!
//! Like the gRPC door it holds no rule of its own: every call goes through the
//! [`Broker`](crate::broker::Broker), which authenticates, authorizes, validates and counts
//! it; this module only turns HTTP into broker calls and the broker's errors into the
//! status table of API.md. Its one check of its own is the browser's: which sites' pages
//! may call at all. `door` (the state shared by the handlers, and the health phase),
//! `error` (the JSON error body and the status table), `caller` (the bearer token of a
//! request), `json` (proto3-JSON bodies), `routes` (the REST handlers), `sse` (Server-Sent
//! Events with exact resume), `ws` (WebSocket: many subscriptions per socket, bounded
//! memory), `console` (the embedded web console), `cors` (`--cors-origin`, for both doors),
//! `origin` (refuses other sites' pages, which CORS alone does not stop from opening a
//! WebSocket or posting), `listener` (accepted connections as axum sees them, limited and
//! counted).

pub mod caller;
pub mod console;
pub mod cors;
pub mod door;
pub mod error;
pub mod json;
pub mod listener;
pub mod origin;
pub mod routes;
pub mod sse;
pub mod ws;

pub use door::{HttpDoor, Phase};
pub use routes::router;

use std::future::Future;
use std::sync::Arc;

use tracing::warn;

/// How long a connection may take to send a request's headers, and how long a kept-alive
/// HTTP/1.1 connection may stay idle between requests (hyper's own default, which axum's
/// `serve` leaves off: a client could hold a connection, and a `--max-connections` slot,
/// forever by sending half a request line).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How the HTTP door serves its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeTimes {
    /// After the stop: how long open requests may go on.
    pub grace: std::time::Duration,
    /// HTTP/2 pings: how often on a connection, and how long an answer may take.
    pub keepalive: std::time::Duration,
}

/// Serves the HTTP door on `listener` (with CORS headers when `cors` is given) until `stop`
/// completes; then lets open requests finish for up to `times.grace`.
pub async fn serve<L>(
    mut listener: L,
    door: Arc<HttpDoor>,
    cors: Option<tower_http::cors::CorsLayer>,
    stop: impl Future<Output = ()> + Send + 'static,
    times: ServeTimes,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let sessions = Arc::clone(&door);
    let app = match cors {
        Some(cors) => router(door).layer(cors),
        None => router(door),
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        // WebSocket over HTTP/2 (RFC 8441), as axum's own `serve` offers it.
        .enable_connect_protocol()
        .keep_alive_interval(Some(times.keepalive))
        .keep_alive_timeout(times.keepalive);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let service =
            hyper_util::service::TowerToHyperService::new(app.clone().map_request(
                |r: http::Request<hyper::body::Incoming>| r.map(axum::body::Body::new),
            ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    // Open streams and keep-alive connections, then WebSocket sessions: at most `grace`.
    let grace = times.grace;
    let deadline = tokio::time::Instant::now() + grace;
    if tokio::time::timeout_at(deadline, connections.shutdown())
        .await
        .is_err()
    {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "http connections still open after the grace period; closing anyway"
        );
    }
    let open = sessions.sessions_ended(deadline).await;
    if open > 0 {
        warn!(
            open,
            grace_ms = grace.as_millis() as u64,
            "websocket sessions still open after the grace period; closing anyway"
        );
    }
}
