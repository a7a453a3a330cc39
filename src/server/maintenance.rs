//! Background upkeep of every topic: retention passes and automatic compaction.
//!
//! Every `interval`, each topic's retention limits are applied (on a cluster follower: the
//! leader's retention decisions, which it copies; on a cluster leader: never past the
//! commit point, so no follower is asked to drop a frame it may not hold), then the topic
//! is compacted
//! when its sealed, not yet compacted segments reach `compact_after_segments` files or
//! `compact_after_bytes` bytes. Topics are handled one at a time on a blocking thread, and
//! compaction I/O is rate-limited, so publishers keep a steady latency.
//!
//! A topic whose pass failed (damage that stops a compaction, a full disk) is tried again
//! after twice the interval, then four times, up to [`MAX_RETRY_AFTER`]: a pass that keeps
//! failing must not rewrite a gigabyte every second. Each failure is logged and counted in
//! `maintenance_failures_total{topic}`.
//!
//! At the shutdown signal the loop stops at once, even in the middle of a topic's pass:
//! that pass (a blocking job) is handed back, to be awaited after the logs are closed,
//! which cancels a running compaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::config::MaintenanceConfig;
use crate::broker::shutdown::Shutdown;
use crate::broker::topics::Topic;
use crate::broker::Topics;
use crate::wal::{now_ns, Log};

/// A topic's retention and compaction pass still running when maintenance stopped.
pub type Unfinished = tokio::task::JoinHandle<crate::wal::Result<()>>;

/// The longest a topic whose passes keep failing waits before the next try.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A topic as maintenance tells it apart: its name and epoch, so that a topic deleted and
/// made again under the same name starts with a clean record.
type TopicId = (String, u64);

/// The topics whose last pass failed: how many passes failed in a row, and when the next
/// may run. One entry per such topic, dropped at its next good pass, or once it is no
/// longer listed (deleted).
#[derive(Debug, Default)]
struct Failing(HashMap<TopicId, (u32, Instant)>);

impl Failing {
    /// True while `topic` waits after a failure.
    fn waiting(&self, topic: &TopicId, now: Instant) -> bool {
        self.0.get(topic).is_some_and(|&(_, next)| now < next)
    }

    /// Notes a failed pass of `topic`; how long it waits before the next (twice `interval`
    /// after the first failure, doubling, at most [`MAX_RETRY_AFTER`]).
    fn failed(&mut self, topic: &TopicId, interval: Duration, now: Instant) -> Duration {
        let failures = self.0.get(topic).map_or(0, |&(n, _)| n).saturating_add(1);
        let wait = interval
            .saturating_mul(1u32 << failures.min(16))
            .min(MAX_RETRY_AFTER);
        self.0.insert(topic.clone(), (failures, now + wait));
        wait
    }

    /// Forgets `topic` (a good pass).
    fn forget(&mut self, topic: &TopicId) {
        self.0.remove(topic);
    }

    /// Forgets every topic not in `listed` (deleted, or made again under a new epoch).
    fn keep_only(&mut self, listed: &HashSet<TopicId>) {
        self.0.retain(|topic, _| listed.contains(topic));
    }
}

/// `topic`'s [`TopicId`].
fn id_of(topic: &Topic) -> TopicId {
    (topic.name().to_string(), topic.meta().epoch)
}

/// Runs maintenance until shutdown; the pass still running then, if any.
pub async fn run(
    topics: Arc<Topics>,
    config: MaintenanceConfig,
    mut shutdown: Shutdown,
) -> Option<Unfinished> {
    let mut failing = Failing::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = shutdown.wait() => return None,
        }
        let listed = topics.list();
        if !failing.0.is_empty() {
            failing.keep_only(&listed.iter().map(|t| id_of(t)).collect());
        }
        for topic in listed {
            if shutdown.is_fired() {
                return None;
            }
            if topic.is_deleted() {
                continue;
            }
            let id = id_of(&topic);
            let owns = topics.owns_retention();
            if failing.waiting(&id, Instant::now()) || !due(&topic, owns, &config) {
                continue;
            }
            let t = Arc::clone(&topic);
            let mut job = tokio::task::spawn_blocking(move || -> crate::wal::Result<()> {
                let log = t.log();
                if owns {
                    let report = log.apply_retention_below(now_ns(), t.visible_offset())?;
                    t.note_first_offset(report.first_offset);
                } else {
                    let (first, removed_max_key) = t.leader_retention();
                    if first > log.retention_watermark().0 {
                        log.remove_below(first, removed_max_key)?;
                    }
                }
                if compaction_due(log, &config) {
                    // Below the commit point only: a cluster node may have to cut what
                    // lies above it (on a single node it is the durable end).
                    let report = log.compact_below(&config.compact, t.visible_offset())?;
                    if report.run.is_some() {
                        t.metrics().compactions.inc();
                    }
                }
                Ok(())
            });
            let finished = tokio::select! {
                r = &mut job => r,
                () = shutdown.wait() => {
                    tracing::debug!(topic = topic.name(), "maintenance stopping at shutdown; its pass ends when the log closes");
                    return Some(job);
                }
            };
            let failure = match finished {
                Ok(Ok(())) => {
                    failing.forget(&id);
                    continue;
                }
                Ok(Err(e)) if topic.log().is_closed() => {
                    tracing::debug!(topic = topic.name(), error = %e, "maintenance stopped: log closed");
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the pass's task ended abnormally: {e}"),
            };
            topic.metrics().maintenance_failures.inc();
            let wait = failing.failed(&id, config.interval, Instant::now());
            warn!(topic = topic.name(), error = %failure, retry_in = ?wait, "maintenance failed; will retry");
        }
    }
}

/// True when a topic has retention limits (`owns`: this node decides them), a leader's
/// retention decision to apply, or a compaction due. Checked here, in memory, so that an
/// idle topic costs no blocking task per pass (ten thousand small topics would otherwise
/// mean ten thousand tasks a second).
fn due(topic: &Topic, owns: bool, config: &MaintenanceConfig) -> bool {
    let log = topic.log();
    let retention = if owns {
        log.config().retention.is_limited()
    } else {
        topic.leader_retention().0 > log.retention_watermark().0
    };
    retention || compaction_due(log, config)
}

/// True when the sealed, not yet compacted segments reach the configured backlog.
fn compaction_due(log: &Log, config: &MaintenanceConfig) -> bool {
    let (segments, bytes) = log.compaction_backlog();
    config.compact_after_segments > 0
        && (segments >= config.compact_after_segments
            || (segments > 0 && bytes >= config.compact_after_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_topic_waits_twice_as_long_after_each_failure_up_to_the_cap() {
        let mut failing = Failing::default();
        let second = Duration::from_secs(1);
        let t0 = Instant::now();
        let (a, b) = (("a".to_string(), 1), ("b".to_string(), 1));
        assert!(!failing.waiting(&a, t0));
        let waits: Vec<u64> = (0..12)
            .map(|_| failing.failed(&a, second, t0).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
        assert!(failing.waiting(&a, t0 + Duration::from_secs(299)));
        assert!(!failing.waiting(&a, t0 + MAX_RETRY_AFTER));
        assert!(!failing.waiting(&b, t0), "other topics go on");
        failing.forget(&a);
        assert!(!failing.waiting(&a, t0));
        assert_eq!(failing.failed(&a, second, t0), Duration::from_secs(2));
    }

    #[test]
    fn a_topic_made_again_under_its_name_does_not_inherit_the_wait() {
        let mut failing = Failing::default();
        let t0 = Instant::now();
        let old = ("a".to_string(), 1);
        failing.failed(&old, Duration::from_secs(1), t0);
        failing.failed(&old, Duration::from_secs(1), t0);
        let new = ("a".to_string(), 2);
        assert!(!failing.waiting(&new, t0), "a new epoch starts clean");
        // Deleted: not listed any more, so forgotten.
        failing.keep_only(&HashSet::from([new.clone()]));
        assert!(failing.0.is_empty());
    }
}
