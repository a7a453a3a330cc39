//! Background upkeep of every topic: retention passes and automatic compaction.
//!
//! Every `interval`, each topic's retention limits are applied, then the topic is compacted
//! when its sealed, not yet compacted segments reach `compact_after_segments` files or
//! `compact_after_bytes` bytes. Topics are handled one at a time on a blocking thread, and
//! compaction I/O is rate-limited, so publishers keep a steady latency.

use std::sync::Arc;

use tracing::warn;

use super::config::MaintenanceConfig;
use super::shutdown::Shutdown;
use super::topics::Topics;
use crate::wal::now_ns;

/// Runs maintenance until shutdown.
pub async fn run(topics: Arc<Topics>, config: MaintenanceConfig, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = shutdown.wait() => return,
        }
        for topic in topics.list() {
            if shutdown.is_fired() {
                return;
            }
            if topic.is_deleted() {
                continue;
            }
            let t = Arc::clone(&topic);
            let job = tokio::task::spawn_blocking(move || -> crate::wal::Result<()> {
                let log = t.log();
                log.apply_retention(now_ns())?;
                let (segments, bytes) = log.compaction_backlog();
                let due = config.compact_after_segments > 0
                    && (segments >= config.compact_after_segments
                        || (segments > 0 && bytes >= config.compact_after_bytes));
                if due {
                    log.compact(&config.compact)?;
                }
                Ok(())
            });
            match job.await {
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
