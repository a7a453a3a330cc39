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

/// Serves the HTTP door on `listener` (with CORS headers when `cors` is given) until `stop`
/// completes; then lets open requests finish for up to `grace`.
pub async fn serve<L>(
    listener: L,
    door: Arc<HttpDoor>,
    cors: Option<tower_http::cors::CorsLayer>,
    stop: impl Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let sessions = Arc::clone(&door);
    let app = match cors {
        Some(cors) => router(door).layer(cors),
        None => router(door),
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.await;
        let _ = stopped_tx.send(());
    });
    let mut server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    // Open streams and keep-alive connections, then WebSocket sessions: at most `grace`.
    let deadline = tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                warn!(error = %e, "http listener failed");
                return;
            }
            // Stopped with no connection open (upgraded ones are no longer the server's).
            tokio::time::Instant::now() + grace
        }
        _ = stopped_rx => {
            let deadline = tokio::time::Instant::now() + grace;
            if tokio::time::timeout_at(deadline, &mut server).await.is_err() {
                warn!(
                    grace_ms = grace.as_millis() as u64,
                    "http connections still open after the grace period; closing anyway"
                );
            }
            deadline
        }
    };
    let open = sessions.sessions_ended(deadline).await;
    if open > 0 {
        warn!(
            open,
            grace_ms = grace.as_millis() as u64,
            "websocket sessions still open after the grace period; closing anyway"
        );
    }
}
