//! Exponential backoff with full jitter, bounded in attempts and total time.

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

/// The state of one retried operation.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: RetryPolicy,
    started: Instant,
    next: Duration,
    pub(crate) attempts: u32,
}

impl Backoff {
    pub(crate) fn new(policy: RetryPolicy) -> Backoff {
        Backoff {
            policy,
            started: Instant::now(),
            next: policy.initial,
            attempts: 0,
        }
    }

    /// Sleeps before the next attempt; false when the budget is spent. The budget counts
    /// from the first failure since the last success, not from when the operation began,
    /// so a subscription that was quiet for an hour still retries fully.
    pub(crate) async fn wait(&mut self) -> bool {
        if self.attempts == 0 {
            self.started = Instant::now();
        }
        self.attempts += 1;
        if self.started.elapsed() >= self.policy.max_elapsed {
            return false;
        }
        let ceiling = self.next.as_millis().max(1) as u64;
        let jittered = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
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
