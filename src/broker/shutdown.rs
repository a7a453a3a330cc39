//! The one shutdown signal: fired once, observed by every stream and by the listener.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Fires the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    fired: Arc<AtomicBool>,
}

/// Observes the shutdown signal. Cheap to clone; every stream task holds one.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// The same fact as `rx`, for [`Shutdown::is_fired`] on hot paths (a load, where the
    /// watch takes a lock shared by every stream).
    fired: Arc<AtomicBool>,
}

/// A new signal, not yet fired.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    let fired = Arc::new(AtomicBool::new(false));
    (
        ShutdownTrigger {
            tx,
            fired: Arc::clone(&fired),
        },
        Shutdown { rx, fired },
    )
}

impl ShutdownTrigger {
    /// Announces shutdown to every [`Shutdown`].
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// True once shutdown has been announced.
    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes when shutdown is announced (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|&fired| fired).await;
    }
}
