//! The manifest: which sorted runs are live and where the log starts. Replaced atomically
//! (write a temporary file, sync, rename, sync the directory), so a crash leaves either the
//! old manifest or the new one, never a mix.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::failpoint;
use super::format::{MANIFEST_FILE, TEMP_SUFFIX};
use super::segment::sync_dir;
use super::{Error, Result};

/// The live set of a topic's files, beyond "every segment".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file.
    pub version: u32,
    /// Oldest retained offset: frames below it are removed, whatever files still hold them.
    pub first_offset: u64,
    /// Segments with a lower base offset were compacted into runs or removed.
    pub segments_from: u64,
    /// Live run files, in offset order.
    pub runs: Vec<String>,
    /// Largest order key `(seq_no, timestamp, offset)` ever removed by retention, so a
    /// resumed replay that still needed it gets OUT_OF_RANGE rather than a silent gap.
    pub removed_max_key: Option<(u64, i64, u64)>,
}

/// Reads the manifest of `dir`; `None` when the topic never compacted or removed anything.
pub fn read(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::corruption(&path, 0, format!("unreadable manifest: {e}")))?;
    if m.version != 1 {
        return Err(Error::corruption(
            &path,
            0,
            format!("unsupported manifest version {}", m.version),
        ));
    }
    Ok(Some(m))
}

/// Replaces the manifest of `dir` atomically and durably.
pub fn write(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let temp = dir.join(format!("{MANIFEST_FILE}.{TEMP_SUFFIX}"));
    let text = serde_json::to_vec_pretty(m)
        .map_err(|e| Error::InvalidArgument(format!("manifest: {e}")))?;
    let mut f = std::fs::File::create(&temp).map_err(|e| Error::io(&temp, e))?;
    f.write_all(&text).map_err(|e| Error::io(&temp, e))?;
    f.sync_all().map_err(|e| Error::io(&temp, e))?;
    drop(f);
    failpoint::hit("manifest.before_rename")?;
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    failpoint::hit("manifest.after_rename")?;
    Ok(())
}
