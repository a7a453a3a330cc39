//! Exponential backoff with full jitter, bounded in attempts and total time.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a client retries transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Give up after this long in total.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// What a client is about to retry, told to [`crate::client::Client::on_retry`]'s callback
/// before each wait, so a program can say at once that the server cannot be reached.
#[derive(Debug, Clone, Copy)]
pub struct Retrying<'a> {
    /// The server address the client was made for.
    pub addr: &'a str,
    /// The retry about to be made: 1 for the first.
    pub attempt: u32,
    /// Why the last attempt failed (the deepest cause, e.g. "Connection refused").
    pub reason: &'a str,
    /// How long the client waits before it.
    pub delay: Duration,
}

/// The callback of [`crate::client::Client::on_retry`].
#[derive(Clone)]
pub(crate) struct RetryNotice(pub(crate) Arc<dyn Fn(&Retrying<'_>) + Send + Sync>);

impl std::fmt::Debug for RetryNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetryNotice")
    }
}

/// The state of one retried operation.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    started: Instant,
    next: Duration,
    pub(crate) attempts: u32,
    addr: Arc<str>,
    notice: Option<RetryNotice>,
}

impl Backoff {
    /// A backoff under `policy` that tells `notice` (if any) about each retry to `addr`.
    pub(crate) fn new(policy: RetryPolicy, addr: Arc<str>, notice: Option<RetryNotice>) -> Backoff {
        Backoff {
            policy,
            started: Instant::now(),
            next: policy.initial,
            attempts: 0,
            addr,
            notice,
        }
    }

    /// Sleeps before the next attempt, after an attempt failed for `reason`; false when the
    /// budget is spent. The budget counts from the first failure since the last success,
    /// not from when the operation began, so a subscription that was quiet for an hour
    /// still retries fully.
    pub(crate) async fn wait(&mut self, reason: &str) -> bool {
        if self.attempts == 0 {
            self.started = Instant::now();
        }
        self.attempts += 1;
        if self.started.elapsed() >= self.policy.max_elapsed {
            return false;
        }
        let ceiling = self.next.as_millis().max(1) as u64;
        let jittered = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
        if let Some(RetryNotice(notice)) = &self.notice {
            notice(&Retrying {
                addr: &self.addr,
                attempt: self.attempts,
                reason,
                delay: jittered,
            });
        }
        tokio::time::sleep(jittered).await;
        self.next = (self.next * 2).min(self.policy.max_delay);
        true
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.started = Instant::now();
        self.next = self.policy.initial;
        self.attempts = 0;
    }
}
