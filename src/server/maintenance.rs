//! Background upkeep of every topic: retention passes and automatic compaction.
//!
//! Every `interval`, each topic's retention limits are applied, then the topic is compacted
//! when its sealed, not yet compacted segments reach `compact_after_segments` files or
//! `compact_after_bytes` bytes. Topics are handled one at a time on a blocking thread, and
//! compaction I/O is rate-limited, so publishers keep a steady latency.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::shutdown::Shutdown;
use super::topics::Topics;
use crate::wal::{now_ns, CompactOptions, Log};

/// When and how fast maintenance runs.
#[derive(Debug, Clone, Copy)]
pub struct MaintenanceConfig {
    /// How often every topic is looked at.
    pub interval: Duration,
    /// Compact once this many sealed segments wait (0 = never compact automatically).
    pub compact_after_segments: usize,
    /// Compact once sealed segments hold this many bytes.
    pub compact_after_bytes: u64,
    /// Compaction I/O budget.
    pub compact: CompactOptions,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            interval: Duration::from_secs(1),
            compact_after_segments: 4,
            compact_after_bytes: 256 << 20,
            compact: CompactOptions {
                bytes_per_sec: Some(64 << 20),
                max_runs: 4,
            },
        }
    }
}

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
            if topic.is_deleted() || !due(topic.log(), &config) {
                continue;
            }
            let t = Arc::clone(&topic);
            let job = tokio::task::spawn_blocking(move || -> crate::wal::Result<()> {
                let log = t.log();
                log.apply_retention(now_ns())?;
                if compaction_due(log, &config) {
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

/// True when a topic has retention limits or a compaction is due. Checked here, in memory,
/// so that an idle topic costs no blocking task per pass (ten thousand small topics would
/// otherwise mean ten thousand tasks a second).
fn due(log: &Log, config: &MaintenanceConfig) -> bool {
    log.config().retention.is_limited() || compaction_due(log, config)
}

/// True when the sealed, not yet compacted segments reach the configured backlog.
fn compaction_due(log: &Log, config: &MaintenanceConfig) -> bool {
    let (segments, bytes) = log.compaction_backlog();
    config.compact_after_segments > 0
        && (segments >= config.compact_after_segments
            || (segments > 0 && bytes >= config.compact_after_bytes))
}
