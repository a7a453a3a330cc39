//! Doubt about a cluster copy: its recovery cut a record that may have been acknowledged
//! (a whole record that failed its check, or a last segment something else cut short).
//!
//! A copy keeps its leader's epoch: recovery cuts the record and the frames it lacks are
//! copied again from the leader it follows. That holds only if it follows: elected first,
//! it would make every other member cut the frame too and give its offset again in the
//! same epoch. The doubt, kept in a file of the topic's directory until it is settled, stops
//! the node from leading while another member of the in-sync set could: it is settled
//! once the copy holds its leader's commit point again (everything acknowledged), or, when
//! this node leads anyway (no other member is in sync), by a new epoch for the topic, as a
//! single node gives one.

use std::path::Path;

use super::error::Result;

/// The file that holds a copy's doubt: why recovery cut what it cut.
pub const DOUBT_FILE: &str = "recovery-doubt";

/// The doubt recorded in the topic directory `dir`, if any.
pub fn read(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(DOUBT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(why) => Ok(Some(why)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::wal::Error::io(&path, e).into()),
    }
}

/// Records `why` durably in the topic directory `dir`.
pub fn write(dir: &Path, why: &str) -> Result<()> {
    super::topics::replace_durably(dir, DOUBT_FILE, why.as_bytes())
}

/// Removes the doubt of the topic directory `dir`, durably.
pub fn clear(dir: &Path) -> Result<()> {
    let path = dir.join(DOUBT_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::wal::Error::io(&path, e).into()),
    }
    crate::wal::segment::sync_dir(dir)?;
    Ok(())
}
