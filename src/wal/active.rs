//! The `ACTIVE` file: the base offset of a topic's newest segment, so that a newest segment
//! that goes missing (a file deleted by hand, a restore that left it out) is refused at
//! startup, not taken for the end of the log. Without it, recovery would open the segment
//! before it as the last one and hand out the lost frames' offsets again.
//!
//! Written when the log starts a segment past its first (after the new segment is durable,
//! before any record goes into it), lowered before a cut removes newer segments, and
//! replaced atomically (temporary file, sync, rename, directory sync). A log that never
//! started a second segment has no `ACTIVE` file; a crash between a new segment and its
//! `ACTIVE` leaves the file naming an older base, which is safe: the check is that the
//! newest segment present starts at or past the base `ACTIVE` names.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::format::{ACTIVE_FILE, TEMP_SUFFIX};
use super::segment::sync_dir;
use super::{Error, Result};

/// The version [`write`] stamps.
const VERSION: u32 = 1;

/// The file's fields, with the CRC-32 of `version` and `base_offset` (little-endian).
#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    base_offset: u64,
    crc: u32,
}

fn checksum(version: u32, base_offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_le_bytes());
    h.update(&base_offset.to_le_bytes());
    h.finalize()
}

/// The base offset `dir`'s `ACTIVE` file names; `None` when there is none. A file that does
/// not parse, of an unknown version, or whose CRC does not match is corruption.
pub fn read(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(ACTIVE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |reason: String| Error::corruption(&path, 0, reason);
    let s: Stored = serde_json::from_str(&text)
        .map_err(|e| bad(format!("unreadable {ACTIVE_FILE} file: {e}")))?;
    if s.version != VERSION {
        return Err(bad(format!(
            "unsupported {ACTIVE_FILE} version {}",
            s.version
        )));
    }
    let actual = checksum(s.version, s.base_offset);
    if actual != s.crc {
        return Err(bad(format!(
            "{ACTIVE_FILE} CRC mismatch (stored {:#010x}, computed {actual:#010x})",
            s.crc
        )));
    }
    Ok(Some(s.base_offset))
}

/// Records durably that `dir`'s newest segment starts at `base_offset`.
pub fn write(dir: &Path, base_offset: u64) -> Result<()> {
    // Tests make this write fail here (`--features failpoints`).
    super::failpoint::hit(super::failpoint::ACTIVE_WRITE)?;
    let path = dir.join(ACTIVE_FILE);
    let temp = dir.join(format!("{ACTIVE_FILE}.{TEMP_SUFFIX}"));
    let stored = Stored {
        version: VERSION,
        base_offset,
        crc: checksum(VERSION, base_offset),
    };
    let text = serde_json::to_vec(&stored)
        .map_err(|e| Error::InvalidArgument(format!("{ACTIVE_FILE}: {e}")))?;
    let mut f = std::fs::File::create(&temp).map_err(|e| Error::io(&temp, e))?;
    f.write_all(&text)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&temp, e))?;
    drop(f);
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// Removes `dir`'s `ACTIVE` file (durably), when there is one.
pub fn remove(dir: &Path) -> Result<()> {
    let path = dir.join(ACTIVE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The reason recovery (and `framecast dump`) give when the newest segment present,
/// `newest` (`None`: no segment at all), starts below `named`, the base `ACTIVE` names.
pub fn missing_reason(named: u64, newest: Option<u64>) -> String {
    let present = match newest {
        Some(b) => format!("the newest segment here starts at {b}"),
        None => "no segment is here".to_string(),
    };
    format!(
        "missing: {ACTIVE_FILE} says the log's newest segment starts at offset {named}, but \
         {present}, so the frames from offset {named} on are lost; restore the file from a \
         backup, or run `framecast repair` to accept the loss (the offsets from there on are \
         handed out again under a new epoch)"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_changed_digit() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path())?, None);
        write(dir.path(), 4096)?;
        assert_eq!(read(dir.path())?, Some(4096));
        write(dir.path(), 123_456)?;
        assert_eq!(read(dir.path())?, Some(123_456));
        let path = dir.path().join(ACTIVE_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("123456", "123457")).unwrap();
        assert!(matches!(read(dir.path()), Err(Error::Corruption { .. })));
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(read(dir.path()), Err(Error::Corruption { .. })));
        remove(dir.path())?;
        assert_eq!(read(dir.path())?, None);
        remove(dir.path())?;
        Ok(())
    }
}
