//! A topic's term history: at which offset each leadership term began writing it.
//!
//! Kept beside the log in `terms` and copied to followers with the topic. It answers
//! the one question a follower's copy needs when a new leader takes over: where does the
//! copy stop sharing the leader's log? Comparing ends is not enough (an old leader may have
//! written frames past the commit point while the new leader wrote others at the same
//! offsets); Kafka's KIP-101 and Raft's log matching answer it by term, and so does
//! [`divergence`].
//!
//! A topic made before any cluster term holds one entry, `(0, 0)`.
//!
//! The file holds two slots, each a whole history with a version and a CRC; a new history
//! is written in place over the older slot, so the newer one survives a torn write, and
//! no file is created or renamed: a new leader writes ten thousand histories in about
//! 4 µs each, not the 70–240 µs a new file and a rename cost on ext4. A history too big
//! for its slot gets a new file with bigger slots (temp file, synced, rename). A
//! `terms.json` (the format before) is read when `terms` is missing and left in place; the
//! first write creates `terms`. Writes are serialized by [`Topics`](super::topics::Topics),
//! and one that cannot be made durable is a storage failure: the node restarts, so which
//! slot is newer is always read from what the disk holds.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// File holding a topic's term history: two slots, written in turn.
pub const TERMS_FILE: &str = "terms";

/// The history's file in the format before two slots: JSON, replaced whole.
const JSON_TERMS_FILE: &str = "terms.json";

/// A slot starts with this magic, then its CRC, version and entry count.
const SLOT_MAGIC: [u8; 4] = *b"FCth";
const SLOT_HEADER: usize = 24;
const ENTRY_BYTES: usize = 16;
/// The smallest slot (254 entries): slots are 4 KiB-aligned, so on 4 KiB pages and blocks
/// writing one never touches the other's.
const MIN_SLOT: usize = 4096;

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

    /// Reads the history of the topic directory `dir`: the newer of the two slots that is
    /// whole; a topic without the file predates the cluster (`(0, 0)`). Both slots damaged
    /// is an error: the history is gone, and guessing it could keep frames a new leader
    /// lacks.
    pub fn load(dir: &Path) -> Result<TermHistory> {
        let path = dir.join(TERMS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => newest_slot(&bytes)
                .map(|(_, _, h)| h)
                .ok_or_else(|| Error::Metadata {
                    path: path.display().to_string(),
                    reason: format!(
                        "no whole term history in either slot ({} bytes): the file is damaged",
                        bytes.len()
                    ),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TermHistory::load_json(dir),
            Err(e) => Err(crate::wal::Error::io(&path, e).into()),
        }
    }

    /// Reads a history kept as `terms.json` (the format before two slots).
    fn load_json(dir: &Path) -> Result<TermHistory> {
        let path = dir.join(JSON_TERMS_FILE);
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

    /// Writes the history into the topic directory `dir` durably: over the older slot and
    /// `fdatasync`ed (or a new file, synced, renamed, the directory synced). Blocking.
    pub fn store(&self, dir: &Path) -> Result<()> {
        self.write(dir, true)
    }

    /// Writes the history into `dir` without syncing: the caller makes many of them
    /// durable at once (one `syncfs`) before relying on any. Blocking.
    pub fn store_unsynced(&self, dir: &Path) -> Result<()> {
        self.write(dir, false)
    }

    fn write(&self, dir: &Path, sync: bool) -> Result<()> {
        let path = dir.join(TERMS_FILE);
        let io = |e: std::io::Error| -> Error { crate::wal::Error::io(&path, e).into() };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let mut version = 1;
        if let Some(file) = file {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io)?;
            if let Some((slot, newest, _)) = newest_slot(&bytes) {
                version = newest + 1;
                let slot_bytes = bytes.len() / 2;
                let encoded = self.encode(version);
                if encoded.len() <= slot_bytes {
                    // Over the other slot: the newest stays whole whatever happens to this
                    // write.
                    let at = (1 - slot) * slot_bytes;
                    file.write_all_at(&encoded, at as u64).map_err(io)?;
                    if sync {
                        file.sync_data().map_err(io)?;
                    }
                    return Ok(());
                }
            }
        }
        // No file yet (or a damaged one, or slots too small): a new one replaces it whole.
        // Its bytes are synced before the rename even when the caller syncs later: a rename
        // may reach the disk before the data it names (ext4's delayed allocation, XFS), and
        // a crash would then leave an empty `terms` where the old history stood.
        let encoded = self.encode(version);
        let slot_bytes = encoded.len().next_multiple_of(MIN_SLOT);
        let mut bytes = encoded;
        bytes.resize(2 * slot_bytes, 0);
        let temp = dir.join(format!("{TERMS_FILE}.tmp"));
        let replace = || -> std::io::Result<()> {
            let f = File::create(&temp)?;
            f.write_all_at(&bytes, 0)?;
            f.sync_data()?;
            std::fs::rename(&temp, &path)
        };
        replace().map_err(io)?;
        if sync {
            crate::wal::segment::sync_dir(dir)?;
        }
        Ok(())
    }

    /// One slot's bytes: magic, CRC, version, count, then `(term, start)` per entry.
    fn encode(&self, version: u64) -> Vec<u8> {
        let mut b = Vec::with_capacity(SLOT_HEADER + ENTRY_BYTES * self.entries.len());
        b.extend_from_slice(&SLOT_MAGIC);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.term.to_le_bytes());
            b.extend_from_slice(&e.start.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// The newest whole slot of a term history file: its index, version and history.
fn newest_slot(bytes: &[u8]) -> Option<(usize, u64, TermHistory)> {
    if bytes.len() < 2 * MIN_SLOT || !bytes.len().is_multiple_of(2 * MIN_SLOT) {
        return None;
    }
    let slot_bytes = bytes.len() / 2;
    (0..2)
        .filter_map(|i| {
            decode_slot(&bytes[i * slot_bytes..(i + 1) * slot_bytes]).map(|(v, h)| (i, v, h))
        })
        .max_by_key(|(_, v, _)| *v)
}

/// A slot's version and history, if it is whole (magic, CRC, a valid history).
fn decode_slot(slot: &[u8]) -> Option<(u64, TermHistory)> {
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(slot.get(at..at + 8)?.try_into().ok()?))
    };
    if slot.get(..4)? != SLOT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(slot.get(4..8)?.try_into().ok()?);
    let version = u64_at(8)?;
    let count = usize::try_from(u64_at(16)?).ok()?;
    let end = count.checked_mul(ENTRY_BYTES)?.checked_add(SLOT_HEADER)?;
    if crc32fast::hash(slot.get(8..end)?) != crc {
        return None;
    }
    let entries = (0..count)
        .map(|i| {
            let at = SLOT_HEADER + i * ENTRY_BYTES;
            Some(TermStart {
                term: u64_at(at)?,
                start: u64_at(at + 8)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some((version, TermHistory::from_entries(entries).ok()?))
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

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("metadata"))
    }

    #[test]
    fn a_history_is_written_in_place_over_the_older_slot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(TERMS_FILE);
        h(&[(1, 0)]).store(dir.path()).expect("store");
        let (ino, len) = (inode(&path), std::fs::metadata(&path).expect("len").len());
        assert_eq!(len, 2 * MIN_SLOT as u64);
        let mut t = h(&[(1, 0)]);
        for (term, start) in [(4, 17), (6, 20), (9, 31)] {
            assert!(t.begin(term, start));
            t.store_unsynced(dir.path()).expect("store");
            assert_eq!(TermHistory::load(dir.path()).expect("load"), t);
            assert_eq!(inode(&path), ino, "written in place, not replaced");
        }
        // Both slots hold whole histories: the older one is the history before the last.
        let bytes = std::fs::read(&path).expect("read");
        let mut versions: Vec<u64> = (0..2)
            .filter_map(|i| decode_slot(&bytes[i * MIN_SLOT..(i + 1) * MIN_SLOT]))
            .map(|(v, _)| v)
            .collect();
        versions.sort();
        assert_eq!(versions, vec![3, 4]);
    }

    #[test]
    fn a_torn_write_leaves_the_history_before_it_and_both_slots_damaged_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(TERMS_FILE);
        let before = h(&[(1, 0), (4, 17)]);
        before.store(dir.path()).expect("store");
        let after = h(&[(1, 0), (4, 17), (6, 20)]);
        after.store(dir.path()).expect("store");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), after);
        // The newest slot (version 2, the second) torn mid-entry: the one before stands.
        let mut bytes = std::fs::read(&path).expect("read");
        let newest = newest_slot(&bytes).expect("a whole slot").0;
        bytes[newest * MIN_SLOT + SLOT_HEADER + 20] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), before);
        // The next write goes over the torn slot, never over the only whole one.
        after.store(dir.path()).expect("store");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), after);
        // Both slots damaged: refused, never a guess.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[SLOT_HEADER + 3] ^= 0xff;
        bytes[MIN_SLOT + SLOT_HEADER + 3] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let err = TermHistory::load(dir.path()).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
        // So is a file cut short.
        std::fs::write(&path, &bytes[..MIN_SLOT]).expect("write");
        assert!(TermHistory::load(dir.path()).is_err());
    }

    #[test]
    fn a_history_too_big_for_its_slots_gets_a_bigger_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(TERMS_FILE);
        let mut t = h(&[(1, 0)]);
        t.store(dir.path()).expect("store");
        for term in 2..600 {
            assert!(t.begin(term, term * 10));
        }
        t.store_unsynced(dir.path()).expect("store");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), t);
        let len = std::fs::metadata(&path).expect("len").len() as usize;
        assert!(len >= 2 * (SLOT_HEADER + 600 * ENTRY_BYTES), "{len} bytes");
        assert!(t.begin(600, 6000));
        t.store(dir.path()).expect("store");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), t);
    }

    #[test]
    fn a_json_history_from_before_is_read_and_the_first_write_moves_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join(JSON_TERMS_FILE),
            r#"{"entries":[{"term":1,"start":0},{"term":4,"start":17}]}"#,
        )
        .expect("write");
        let mut t = TermHistory::load(dir.path()).expect("load");
        assert_eq!(t, h(&[(1, 0), (4, 17)]));
        assert!(t.begin(6, 20));
        t.store(dir.path()).expect("store");
        assert_eq!(TermHistory::load(dir.path()).expect("load"), t);
        std::fs::write(dir.path().join(JSON_TERMS_FILE), "{").expect("write");
        assert_eq!(
            TermHistory::load(dir.path()).expect("load"),
            t,
            "terms.json is not read once terms exists"
        );
    }
}
