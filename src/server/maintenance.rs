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
//! At the shutdown signal the loop stops at once, even in the middle of a topic's pass:
//! that pass (a blocking job) is handed back, to be awaited after the logs are closed,
//! which cancels a running compaction.

use std::sync::Arc;

use tracing::warn;

use super::config::MaintenanceConfig;
use crate::broker::shutdown::Shutdown;
use crate::broker::topics::Topic;
use crate::broker::Topics;
use crate::wal::{now_ns, Log};

/// A topic's retention and compaction pass still running when maintenance stopped.
pub type Unfinished = tokio::task::JoinHandle<crate::wal::Result<()>>;

/// Runs maintenance until shutdown; the pass still running then, if any.
pub async fn run(
    topics: Arc<Topics>,
    config: MaintenanceConfig,
    mut shutdown: Shutdown,
) -> Option<Unfinished> {
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = shutdown.wait() => return None,
        }
        for topic in topics.list() {
            if shutdown.is_fired() {
                return None;
            }
            let owns = topics.owns_retention();
            if topic.is_deleted() || !due(&topic, owns, &config) {
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
            match finished {
                Ok(Ok(())) => {}
                Ok(Err(e)) if topic.log().is_closed() => {
                    tracing::debug!(topic = topic.name(), error = %e, "maintenance stopped: log closed");
                }
                Ok(Err(e)) => {
                    warn!(topic = topic.name(), error = %e, "maintenance failed; will retry")
                }
                Err(e) => warn!(topic = topic.name(), error = %e, "maintenance task failed"),
            }
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
