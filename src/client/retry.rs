//! Exponential backoff with full jitter, bounded in attempts and total time; and the retries
//! of one operation across a cluster's nodes ([`Attempts`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::{reason, Error};
use super::nodes::{leader_hint, Conn, Nodes};

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
    /// The address of the node the failed attempt went to (one of the client's addresses,
    /// or a leader a follower named).
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
    notice: Option<RetryNotice>,
    /// How long the attempt that failed first had waited for an answer before it counted
    /// as failed (a stalled node): the budget counts from when it began, not from its end.
    stalled: Duration,
}

impl Backoff {
    /// A backoff under `policy` that tells `notice` (if any) about each retry.
    pub(crate) fn new(policy: RetryPolicy, notice: Option<RetryNotice>) -> Backoff {
        Backoff {
            policy,
            started: Instant::now(),
            next: policy.initial,
            attempts: 0,
            notice,
            stalled: Duration::ZERO,
        }
    }

    /// Sleeps before the next attempt, after an attempt on `addr` failed for `reason`; false
    /// when the budget is spent. The budget counts from the first failure since the last success,
    /// not from when the operation began, so a subscription that was quiet for an hour
    /// still retries fully.
    pub(crate) async fn wait(&mut self, addr: &str, reason: &str) -> bool {
        if self.attempts == 0 {
            let now = Instant::now();
            self.started = now.checked_sub(self.stalled).unwrap_or(now);
            self.stalled = Duration::ZERO;
        }
        self.attempts += 1;
        if self.started.elapsed() >= self.policy.max_elapsed {
            return false;
        }
        let ceiling = self.next.as_millis().max(1) as u64;
        let jittered = Duration::from_millis(rand::random_range(ceiling / 2..=ceiling));
        if let Some(RetryNotice(notice)) = &self.notice {
            notice(&Retrying {
                addr,
                attempt: self.attempts,
                reason,
                delay: jittered,
            });
        }
        tokio::time::sleep(jittered).await;
        self.next = (self.next * 2).min(self.policy.max_delay);
        true
    }

    /// What is left of the budget for the next attempt: all of it when none failed since
    /// the last success.
    pub(crate) fn remaining(&self) -> Duration {
        if self.attempts == 0 {
            self.policy.max_elapsed
        } else {
            self.policy
                .max_elapsed
                .saturating_sub(self.started.elapsed())
        }
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.started = Instant::now();
        self.next = self.policy.initial;
        self.attempts = 0;
        self.stalled = Duration::ZERO;
    }

    /// The attempt about to be counted as failed waited `waited` for an answer: if it is
    /// the first failure, the budget counts from when it began.
    pub(crate) fn stalled_for(&mut self, waited: Duration) {
        if self.attempts == 0 {
            self.stalled = waited;
        }
    }
}

/// A stream that stayed open this long showed its node up: the retry budget starts over
/// when it breaks (a node that takes a stream and fails it at once keeps counting).
pub(crate) const STAYED_UP: Duration = Duration::from_secs(1);

/// The least time an attempt is given, however little of the budget is left.
const LAST_ATTEMPT: Duration = Duration::from_secs(1);

/// The longest an attempt may go without an answer before its node counts as failed (a
/// stopped or hung node takes the connection and answers nothing) and the next address is
/// tried within the same budget; at most half the budget left, so another node still has
/// time to answer.
const STALL: Duration = Duration::from_secs(10);

/// Leader hints one operation follows in a row (with no other failure between them) before
/// it gives up: a hint one election stale costs one more, while nodes that keep naming each
/// other (or a node whose `--advertise` address reaches another) end the call at once.
pub(crate) const MAX_LEADER_HOPS: usize = 4;

/// One operation's retries across a client's nodes: the backoff between attempts and the
/// leader hints followed since the last attempt that failed otherwise.
#[derive(Debug)]
pub(crate) struct Attempts {
    backoff: Backoff,
    /// The node first refused and each leader named since, for the error of a loop.
    hops: Vec<Arc<str>>,
}

impl Attempts {
    /// Retries under `policy`, telling `notice` (if any) before each wait.
    pub(crate) fn new(policy: RetryPolicy, notice: Option<RetryNotice>) -> Attempts {
        Attempts {
            backoff: Backoff::new(policy, notice),
            hops: Vec::new(),
        }
    }

    /// After an attempt on `conn` failed with a transient `status`: `None` to try again (at
    /// once on the leader a refusal names, otherwise on the next node after a backoff
    /// wait), or the error to end with.
    pub(crate) async fn failed(
        &mut self,
        nodes: &Nodes,
        conn: &Conn,
        status: &tonic::Status,
    ) -> Option<Error> {
        if let Some(leader) = leader_hint(status) {
            if let Ok(to) = nodes.follow(leader) {
                if self.hops.is_empty() {
                    self.hops.push(Arc::clone(&conn.addr));
                }
                self.hops.push(to);
                if self.hops.len() > MAX_LEADER_HOPS {
                    let chain = self.hops.iter().map(|a| &**a).collect::<Vec<_>>();
                    let e = Error::NoLeader {
                        hops: (self.hops.len() - 1) as u32,
                        chain: chain.join(" -> "),
                    };
                    self.hops.clear();
                    return Some(e);
                }
                return None;
            }
            // A hint that is no address: the node is unavailable, like any other.
        }
        self.broken(nodes, conn, &reason(status)).await
    }

    /// After an attempt on `conn` broke without a status (a stream that just ended) or
    /// failed for `why`: the next node after a backoff wait, or the error to end with when
    /// the retry budget is spent.
    pub(crate) async fn broken(&mut self, nodes: &Nodes, conn: &Conn, why: &str) -> Option<Error> {
        self.hops.clear();
        nodes.failed(conn);
        if self.backoff.wait(&conn.addr, why).await {
            None
        } else {
            Some(Error::Unavailable {
                attempts: self.backoff.attempts,
                last: why.to_string(),
            })
        }
    }

    /// Starts over after a success.
    pub(crate) fn succeeded(&mut self) {
        self.backoff.reset();
        self.hops.clear();
    }

    /// A stream opened at `since` broke: if it stayed up ([`STAYED_UP`]), its node was up,
    /// and the failure that follows starts a new budget instead of ending an old one (a
    /// quiet subscription through two restarts an hour apart retries fully each time).
    pub(crate) fn stayed_up(&mut self, since: Instant) {
        if since.elapsed() >= STAYED_UP {
            self.succeeded();
        }
    }

    /// How long an attempt may go without an answer before its node counts as failed:
    /// [`STALL`], at most half of what is left of the budget, at least [`LAST_ATTEMPT`].
    pub(crate) fn stall_limit(&self) -> Duration {
        (self.backoff.remaining() / 2).min(STALL).max(LAST_ATTEMPT)
    }

    /// The node of an attempt made no progress for `waited`: counted as failed like a
    /// break, the budget counting from when the attempt began.
    pub(crate) async fn stalled(
        &mut self,
        nodes: &Nodes,
        conn: &Conn,
        waited: Duration,
    ) -> Option<Error> {
        tracing::debug!(node = %conn.addr, ?waited, "no answer; counting the node as failed");
        self.backoff.stalled_for(waited);
        let s =
            tonic::Status::unavailable(format!("no answer from {} within {waited:?}", conn.addr));
        self.failed(nodes, conn, &s).await
    }

    /// Runs one attempt on `addr`, bounded by [`Attempts::stall_limit`]: a node that takes
    /// the connection and never answers (stopped, or hung) fails the attempt with
    /// `UNAVAILABLE` (transient: the caller moves on to the next address), and the time it
    /// took counts in the budget. The attempt's own result otherwise.
    pub(crate) async fn bounded<T>(
        &mut self,
        addr: &str,
        attempt: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let limit = self.stall_limit();
        match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!(node = %addr, ?limit, "no answer; counting the node as failed");
                self.backoff.stalled_for(limit);
                Err(tonic::Status::unavailable(format!(
                    "no answer from {addr} within {limit:?}"
                )))
            }
        }
    }

    /// Runs one attempt on `addr`, bounded by what is left of the retry budget: a node that
    /// takes the connection and never answers (stopped, or hung) costs no more than the
    /// budget. `Err` when it ran out; the attempt's own result otherwise. For calls that
    /// must not be sent twice; the others use [`Attempts::bounded`].
    pub(crate) async fn within<T>(
        &self,
        addr: &str,
        attempt: impl std::future::Future<Output = T>,
    ) -> Result<T, Error> {
        // An attempt made once the budget is nearly spent (its backoff wait ended there)
        // still gets a moment to answer.
        let left = self.backoff.remaining().max(LAST_ATTEMPT);
        tokio::time::timeout(left, attempt)
            .await
            .map_err(|_| Error::Unavailable {
                attempts: self.backoff.attempts + 1,
                last: format!("no answer from {addr} within {left:?}"),
            })
    }
}
