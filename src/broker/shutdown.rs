//! The one shutdown signal: fired once, observed by every stream and by the listener.

use tokio::sync::watch;

/// Fires the shutdown signal.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// Observes the shutdown signal. Cheap to clone; every stream task holds one.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A new signal, not yet fired.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    /// Announces shutdown to every [`Shutdown`].
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// True once shutdown has been announced.
    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when shutdown is announced (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|&fired| fired).await;
    }
}
