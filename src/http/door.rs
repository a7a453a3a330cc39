//! [`HttpDoor`]: what every HTTP handler shares — the broker once recovery is done, and the
//! server's phase, which `/healthz` reports.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

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
}

impl HttpDoor {
    /// A door in [`Phase::Starting`]. `metrics_public`: `/metrics` needs no token.
    pub fn new(metrics_public: bool) -> Arc<HttpDoor> {
        Arc::new(HttpDoor {
            broker: OnceLock::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            metrics_public,
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

    /// The broker, or `UNAVAILABLE` while the server is still recovering.
    pub fn broker(&self) -> Result<&Broker, Error> {
        self.broker.get().ok_or(Error::Starting)
    }
}
