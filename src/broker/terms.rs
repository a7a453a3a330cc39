//! A topic's term history: at which offset each leadership term began writing it.
//!
//! Kept beside the log as `terms.json` and copied to followers with the topic. It answers
//! the one question a follower's copy needs when a new leader takes over: where does the
//! copy stop sharing the leader's log? Comparing ends is not enough (an old leader may have
//! written frames past the commit point while the new leader wrote others at the same
//! offsets); Kafka's KIP-101 and Raft's log matching answer it by term, and so does
//! [`divergence`].
//!
//! A topic made before any cluster term holds one entry, `(0, 0)`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::topics::replace_durably;

/// File holding a topic's term history.
pub const TERMS_FILE: &str = "terms.json";

/// The first offset a term wrote (or would write) in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermStart {
    /// The leadership term (the etcd leader key's revision; 0 before any cluster).
    pub term: u64,
    /// The topic's next offset when the term began.
    pub start: u64,
}

/// A topic's terms, in order: terms strictly increasing, starts never decreasing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermHistory {
    entries: Vec<TermStart>,
}

impl Default for TermHistory {
    fn default() -> Self {
        TermHistory::starting(0)
    }
}

impl TermHistory {
    /// The history of a topic created in `term`.
    pub fn starting(term: u64) -> TermHistory {
        TermHistory {
            entries: vec![TermStart { term, start: 0 }],
        }
    }

    /// A history from its entries, checked: at least one, terms strictly increasing, starts
    /// never decreasing.
    pub fn from_entries(entries: Vec<TermStart>) -> Result<TermHistory> {
        if entries.is_empty() {
            return Err(Error::InvalidArgument("an empty term history".into()));
        }
        for w in entries.windows(2) {
            if w[1].term <= w[0].term || w[1].start < w[0].start {
                return Err(Error::InvalidArgument(format!(
                    "term history out of order: ({}, {}) after ({}, {})",
                    w[1].term, w[1].start, w[0].term, w[0].start
                )));
            }
        }
        Ok(TermHistory { entries })
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[TermStart] {
        &self.entries
    }

    /// The newest term.
    pub fn last_term(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Records that `term` begins at offset `start` (the log's end as its leader takes
    /// over). Entries past `start` are dropped (offsets this copy never held); an entry at
    /// `start` is replaced (its term wrote nothing). Returns false when nothing changed
    /// (`term` is already the newest term) and ignores a term older than the newest.
    pub fn begin(&mut self, term: u64, start: u64) -> bool {
        if term <= self.last_term() {
            return false;
        }
        self.entries.retain(|e| e.start < start);
        self.entries.push(TermStart { term, start });
        true
    }

    /// The end of `term` in a log ending at `log_end`: the start of the first newer term,
    /// or `log_end`.
    fn end_after(&self, term: u64, log_end: u64) -> u64 {
        self.entries
            .iter()
            .find(|e| e.term > term)
            .map_or(log_end, |e| e.start.min(log_end))
    }

    /// The newest term of this history no newer than `term`.
    fn newest_up_to(&self, term: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term <= term)
            .map(|e| e.term)
    }

    /// Reads the history of the topic directory `dir`; a topic without the file predates
    /// the cluster (`(0, 0)`).
    pub fn load(dir: &Path) -> Result<TermHistory> {
        let path = dir.join(TERMS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TermHistory::default()),
            Err(e) => return Err(crate::wal::Error::io(&path, e).into()),
        };
        let h: TermHistory = serde_json::from_str(&text).map_err(|e| Error::Metadata {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        TermHistory::from_entries(h.entries).map_err(|e| Error::Metadata {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Writes the history into the topic directory `dir` durably (temp file, sync, rename,
    /// directory sync). Blocking.
    pub fn store(&self, dir: &Path) -> Result<()> {
        replace_durably(dir, TERMS_FILE, self.text(dir)?.as_bytes())
    }

    /// Writes the history into `dir` (temp file, rename) without syncing: the caller makes
    /// many of them durable at once (one `syncfs`) before relying on any. Blocking.
    pub fn store_unsynced(&self, dir: &Path) -> Result<()> {
        let path = dir.join(TERMS_FILE);
        let temp = dir.join(format!("{TERMS_FILE}.tmp"));
        std::fs::write(&temp, self.text(dir)?.as_bytes())
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| crate::wal::Error::io(&path, e).into())
    }

    fn text(&self, dir: &Path) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::Metadata {
            path: dir.join(TERMS_FILE).display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// Where a follower's copy stops sharing the leader's log: the follower must cut every
/// frame at or past the returned offset (nothing when it is at least `follower_end`).
///
/// The newest leader term no newer than the follower's last term is `T`; both logs hold the
/// same frames for every term up to `T` (each offset of a term was written once, by its
/// leader), so they agree below the end of `T` in both (KIP-279's rule). A follower whose
/// terms the leader never saw is cut back to where they began.
pub fn divergence(
    leader: &TermHistory,
    leader_end: u64,
    follower: &TermHistory,
    follower_end: u64,
) -> u64 {
    let Some(term) = leader.newest_up_to(follower.last_term()) else {
        return 0;
    };
    leader
        .end_after(term, leader_end)
        .min(follower.end_after(term, follower_end))
        .min(follower_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(u64, u64)]) -> TermHistory {
        TermHistory::from_entries(
            entries
                .iter()
                .map(|&(term, start)| TermStart { term, start })
                .collect(),
        )
        .expect("valid history")
    }

    #[test]
    fn same_term_cuts_nothing() {
        let l = h(&[(0, 0), (5, 10)]);
        assert_eq!(divergence(&l, 30, &l.clone(), 20), 20);
    }

    #[test]
    fn an_old_leaders_unshipped_tail_is_cut_where_the_new_term_began() {
        // The old leader wrote 10..15 in term 1 and nobody copied them; the new leader
        // (term 2) began at 10 and wrote 10..13. Comparing ends would keep 10..13.
        let leader = h(&[(1, 0), (2, 10)]);
        let follower = h(&[(1, 0)]);
        assert_eq!(divergence(&leader, 13, &follower, 15), 10);
        // A follower behind the new term's start keeps everything.
        assert_eq!(divergence(&leader, 13, &follower, 8), 8);
    }

    #[test]
    fn a_term_the_leader_never_saw_is_cut_back_to_the_last_shared_one() {
        // The follower led term 3 from offset 6 (it was behind in term 1); the leader kept
        // term 1 up to 9 and then led term 5 from there.
        let leader = h(&[(1, 0), (5, 9)]);
        let follower = h(&[(1, 0), (3, 6), (4, 7)]);
        assert_eq!(divergence(&leader, 12, &follower, 8), 6);
    }

    #[test]
    fn nothing_shared_cuts_everything() {
        let leader = h(&[(7, 0)]);
        let follower = h(&[(3, 0)]);
        assert_eq!(divergence(&leader, 4, &follower, 4), 0);
    }

    #[test]
    fn begin_replaces_a_term_that_wrote_nothing_and_drops_what_lies_past_the_end() {
        let mut t = TermHistory::starting(0);
        assert!(t.begin(3, 0));
        assert_eq!(t.entries(), &[TermStart { term: 3, start: 0 }]);
        assert!(t.begin(4, 5));
        assert!(!t.begin(4, 9), "the same term again changes nothing");
        assert!(!t.begin(2, 9), "an older term is ignored");
        // A copy that holds only up to 3 of a history reaching 5 leads term 6 from 3.
        assert!(t.begin(6, 3));
        assert_eq!(
            t.entries(),
            &[
                TermStart { term: 3, start: 0 },
                TermStart { term: 6, start: 3 }
            ]
        );
    }

    #[test]
    fn out_of_order_histories_are_refused_and_files_round_trip() {
        assert!(TermHistory::from_entries(vec![]).is_err());
        assert!(TermHistory::from_entries(vec![
            TermStart { term: 2, start: 0 },
            TermStart { term: 2, start: 4 }
        ])
        .is_err());
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            TermHistory::load(dir.path()).expect("load"),
            TermHistory::default()
        );
        let t = h(&[(1, 0), (4, 17)]);
        t.store(dir.path()).expect("store");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), t);
    }
}
