//! `framecast repair --data-dir D --topic T`: the command around [`crate::wal::repair`].
//! Takes the data directory's lock (refusing while a server runs), repairs the topic's
//! segments, gives the topic a new epoch if anything changed, and checks that it opens.

use std::path::Path;

use super::run::DataDirLock;
use super::{Error, Result};
use crate::broker::topics::valid_topic_name;
use crate::broker::topics::{read_meta, renew_epoch};
use crate::wal::repair::{repair_dir_with, Repaired};
use crate::wal::{Log, LogConfig};

/// What `framecast repair` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    /// The damaged places dealt with, in file order (empty: nothing was damaged).
    pub repaired: Vec<Repaired>,
    /// The epoch before.
    pub old_epoch: u64,
    /// The epoch after (equal to `old_epoch` when nothing changed).
    pub new_epoch: u64,
    /// Offsets lost, summed over every damaged place.
    pub offsets_lost: u64,
    /// The next offset after repair: new publishes get offsets from here on.
    pub next_offset: u64,
}

/// Repairs topic `topic` of the stopped server's `data_dir`.
pub fn repair_offline(data_dir: &Path, topic: &str) -> Result<RepairOutcome> {
    if !valid_topic_name(topic) {
        return Err(Error::InvalidArgument(format!("bad topic name '{topic}'")));
    }
    super::run::require_data_dir(data_dir)?;
    let _lock = DataDirLock::acquire(data_dir)?;
    let dir = data_dir.join("topics").join(topic);
    if !dir.is_dir() {
        return Err(Error::TopicNotFound(topic.to_string()));
    }
    let meta = read_meta(&dir)?;
    // The new epoch is durable before the first file changes: a crash part way through
    // leaves the damage (repair again) under the new epoch, never a repaired log under the
    // old one.
    let mut renewed = None;
    let repaired = repair_dir_with(&dir, &mut || {
        let m = renew_epoch(&dir, &meta)
            .map_err(|e| crate::wal::Error::Unavailable(format!("cannot renew the epoch: {e}")))?;
        renewed = Some(m);
        Ok(())
    })
    .map_err(|source| Error::NotRepaired {
        topic: topic.to_string(),
        source,
    })?;
    let new_meta = match renewed {
        Some(m) => m,
        None if repaired.is_empty() => meta,
        None => renew_epoch(&dir, &meta)?,
    };
    // The check that it worked: the log opens (and would have refused on damage left).
    let log = Log::open(&dir, LogConfig::default()).map_err(|source| Error::NotRepaired {
        topic: topic.to_string(),
        source,
    })?;
    let next_offset = log.durable_offset();
    log.close();
    Ok(RepairOutcome {
        offsets_lost: repaired.iter().map(|r| r.lost.end - r.lost.start).sum(),
        repaired,
        old_epoch: meta.epoch,
        new_epoch: new_meta.epoch,
        next_offset,
    })
}

impl RepairOutcome {
    /// The report printed by `framecast repair`, one line per fact.
    pub fn lines(&self, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.repaired.is_empty() {
            out.push(format!(
                "topic '{topic}': no damage found; nothing changed (epoch {} kept)",
                self.old_epoch
            ));
            return out;
        }
        for r in &self.repaired {
            let Some(saved_to) = &r.saved_to else {
                // Nothing was there to set aside: a missing segment, or an unreadable
                // ACTIVE file rewritten.
                out.push(if r.tail {
                    format!(
                        "{}: {}; the log continues from the segments present; offsets lost: \
                         unknown (every frame the file held), and the offsets from the next \
                         offset below on are handed out again under the new epoch",
                        r.file.display(),
                        r.reason,
                    )
                } else if r.lost.is_empty() {
                    format!("{}: {}", r.file.display(), r.reason)
                } else {
                    format!(
                        "{}: {}; offsets lost: {}..{} ({}), none handed out again",
                        r.file.display(),
                        r.reason,
                        r.lost.start,
                        r.lost.end,
                        r.lost.end - r.lost.start
                    )
                });
                continue;
            };
            let what = if r.tail && r.start == 0 {
                "file set aside, a new segment starts at its base"
            } else if r.tail {
                "torn tail zeroed"
            } else {
                "marked as a gap"
            };
            out.push(format!(
                "{}: bytes {}..{} ({} bytes) damaged ({}); {what}; offsets lost: {}; saved to {}",
                r.file.display(),
                r.start,
                r.end,
                r.end - r.start,
                r.reason,
                if r.tail && r.start == 0 {
                    format!(
                        "unknown (every frame the segment held), offsets from {} on are handed out again under the new epoch",
                        r.lost.start
                    )
                } else if r.lost.is_empty() {
                    "none".to_string()
                } else {
                    format!(
                        "{}..{} ({})",
                        r.lost.start,
                        r.lost.end,
                        r.lost.end - r.lost.start
                    )
                },
                saved_to.display()
            ));
        }
        let uncounted = |missing: bool| {
            self.repaired
                .iter()
                .any(|r| r.tail && r.start == 0 && r.saved_to.is_none() == missing)
        };
        let uncounted = match (uncounted(false), uncounted(true)) {
            (false, false) => "",
            (true, false) => ", and the uncounted frames of a segment of zeros",
            (false, true) => ", and the uncounted frames of a missing segment",
            (true, true) => ", and the uncounted frames of a segment of zeros and a missing one",
        };
        out.push(format!(
            "topic '{topic}': {} damaged place(s) repaired, {} offset(s) lost{uncounted}; every other frame keeps its offset; next offset {}",
            self.repaired.len(),
            self.offsets_lost,
            self.next_offset
        ));
        out.push(format!(
            "epoch {} -> {} (subscribers resuming with the old epoch get FAILED_PRECONDITION)",
            self.old_epoch, self.new_epoch
        ));
        out
    }
}
