//! [`HttpDoor`]: what every HTTP handler shares — the broker once recovery is done, and the
//! server's phase, which `/healthz` reports; and the WebSocket sessions, which shutdown
//! waits for.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::task::{task_tracker::TaskTrackerToken, TaskTracker};

use super::origin::Origins;
use crate::broker::{Broker, Error};

/// Where the server is in its life, as `/healthz` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Recovering its topics: `/healthz` answers 503, API calls `UNAVAILABLE`.
    Starting,
    /// Serving: `/healthz` answers 200.
    Serving,
    /// Shutting down: `/healthz` answers 503, new calls `UNAVAILABLE`.
    Stopping,
}

/// The state of the HTTP door. The listener is bound before recovery, so `/healthz` can
/// say "starting"; the broker arrives with [`HttpDoor::serving`].
#[derive(Debug)]
pub struct HttpDoor {
    broker: OnceLock<Broker>,
    phase: AtomicU8,
    metrics_public: bool,
    /// The origins besides its own whose pages may call the door (`--cors-origin`).
    origins: Origins,
    /// One token per WebSocket session: an upgraded connection is no longer the HTTP
    /// server's, so its graceful shutdown does not wait for it.
    sessions: TaskTracker,
}

impl HttpDoor {
    /// A door in [`Phase::Starting`]. `metrics_public`: `/metrics` needs no token;
    /// `origins`: the other sites whose pages may call it.
    pub fn new(metrics_public: bool, origins: Origins) -> Arc<HttpDoor> {
        Arc::new(HttpDoor {
            broker: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            metrics_public,
            origins,
            sessions: TaskTracker::new(),
        })
    }

    /// Recovery is done: calls go to `broker` from now on.
    pub fn serving(&self, broker: Broker) {
        let _ = self.broker.set(broker);
        self.phase.store(Phase::Serving as u8, Ordering::Release);
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.phase.store(Phase::Stopping as u8, Ordering::Release);
    }

    /// The server's phase now.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Stopping,
        }
    }

    /// True when `/metrics` needs no token.
    pub fn metrics_public(&self) -> bool {
        self.metrics_public
    }

    /// The other sites whose pages may call the door.
    pub fn origins(&self) -> &Origins {
        &self.origins
    }

    /// Held by a WebSocket session while it runs: [`HttpDoor::sessions_ended`] waits for it.
    pub fn session(&self) -> TaskTrackerToken {
        self.sessions.token()
    }

    /// Waits until every WebSocket session has ended (at shutdown each ends its
    /// subscriptions, says their `end` and closes), up to `deadline`; the number still
    /// running then.
    pub async fn sessions_ended(&self, deadline: tokio::time::Instant) -> usize {
        self.sessions.close();
        let _ = tokio::time::timeout_at(deadline, self.sessions.wait()).await;
        self.sessions.len()
    }

    /// The broker, or `UNAVAILABLE` while the server is still recovering.
    pub fn broker(&self) -> Result<&Broker, Error> {
        self.broker.get().ok_or(Error::Starting)
    }
}
