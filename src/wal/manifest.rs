//! The manifest: which sorted runs are live and where the log starts. Replaced atomically
//! (write a temporary file, sync, rename, sync the directory), so a crash leaves either the
//! old manifest or the new one, never a mix. Its content carries a CRC (version 2): recovery
//! removes files on its word, so a flipped digit must be refused, not obeyed.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::failpoint;
use super::format::{MANIFEST_FILE, TEMP_SUFFIX};
use super::segment::sync_dir;
use super::{Error, Result};

/// The version [`write`] stamps: 2, with a CRC. Version 1 (no CRC) is still read.
pub const VERSION: u32 = 2;

/// The live set of a topic's files, beyond "every segment".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file ([`VERSION`] when written).
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
    /// Retention's passes, as [`super::removals::Removals`] keeps them: the oldest retained
    /// offset after each and the largest key it (or a later pass) removed. Absent from
    /// manifests written before they were kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removals: Vec<(u64, (u64, i64, u64))>,
}

/// The file as stored: the manifest and, from version 2, the CRC-32 of its fields. The
/// retention passes (`removals`, added later in version 2) have a CRC of their own, so the
/// first one still covers exactly the fields every version 2 reader knows: a binary from
/// before them reads the file (ignoring both) instead of refusing it as damaged.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    manifest: Manifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crc: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    removals_crc: Option<u32>,
}

/// The CRC-32 of `m`'s fields but its retention passes, in their compact JSON form (field
/// order is fixed, so the same manifest always gives the same bytes, whatever the file's
/// whitespace).
fn checksum(m: &Manifest) -> Result<u32> {
    crc_of(&Manifest {
        removals: Vec::new(),
        ..m.clone()
    })
}

/// The CRC-32 of `value` in its compact JSON form.
fn crc_of(value: &impl Serialize) -> Result<u32> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| Error::InvalidArgument(format!("manifest: {e}")))?;
    Ok(crc32fast::hash(&bytes))
}

/// Reads the manifest of `dir`; `None` when the topic never compacted or removed anything.
/// A manifest that does not parse, of an unknown version, or whose CRC does not match is
/// corruption: nothing is removed on its word.
pub fn read(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |reason: String| Error::corruption(&path, 0, reason);
    let stored: Stored =
        serde_json::from_str(&text).map_err(|e| bad(format!("unreadable manifest: {e}")))?;
    let m = stored.manifest;
    match (m.version, stored.crc) {
        // Written before manifests carried a CRC: taken as it is.
        (1, None) => {}
        (VERSION, Some(crc)) => {
            let actual = checksum(&m)?;
            if actual != crc {
                return Err(bad(format!(
                    "manifest CRC mismatch (stored {crc:#010x}, computed {actual:#010x})"
                )));
            }
            // Retention passes with no CRC of their own (or a CRC whose passes are gone)
            // were not written as they read.
            if stored.removals_crc.is_some() || !m.removals.is_empty() {
                let actual = crc_of(&m.removals)?;
                if stored.removals_crc != Some(actual) {
                    return Err(bad(format!(
                        "manifest retention passes CRC mismatch (stored {:?}, computed {actual:#010x})",
                        stored.removals_crc
                    )));
                }
            }
        }
        (VERSION, None) => return Err(bad("manifest without its CRC".into())),
        (1, Some(_)) => return Err(bad("version 1 manifest with a CRC".into())),
        (v, _) => return Err(bad(format!("unsupported manifest version {v}"))),
    }
    Ok(Some(m))
}

/// Replaces the manifest of `dir` atomically and durably, as [`VERSION`] with its CRC.
pub fn write(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let temp = dir.join(format!("{MANIFEST_FILE}.{TEMP_SUFFIX}"));
    let manifest = Manifest {
        version: VERSION,
        ..m.clone()
    };
    let removals_crc = if manifest.removals.is_empty() {
        None
    } else {
        Some(crc_of(&manifest.removals)?)
    };
    let stored = Stored {
        crc: Some(checksum(&manifest)?),
        removals_crc,
        manifest,
    };
    let text = serde_json::to_vec_pretty(&stored)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_removals() -> Manifest {
        Manifest {
            version: VERSION,
            first_offset: 250,
            segments_from: 200,
            runs: vec!["00000000000000000000.run".into()],
            removed_max_key: Some((1_000_000, 5, 0)),
            removals: vec![(78, (1_000_000, 5, 0)), (250, (249, 7, 249))],
        }
    }

    /// What a binary from before the retention passes reads: these fields and the CRC.
    #[derive(Serialize, Deserialize)]
    struct Before {
        version: u32,
        first_offset: u64,
        segments_from: u64,
        runs: Vec<String>,
        removed_max_key: Option<(u64, i64, u64)>,
    }

    #[test]
    fn a_binary_from_before_the_retention_passes_reads_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let m = with_removals();
        write(dir.path(), &m).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m));
        let text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        let before: Before = serde_json::from_str(&text).unwrap();
        let crc = serde_json::from_str::<serde_json::Value>(&text).unwrap()["crc"]
            .as_u64()
            .unwrap();
        assert_eq!(
            u64::from(crc32fast::hash(&serde_json::to_vec(&before).unwrap())),
            crc
        );
    }

    #[test]
    fn damaged_retention_passes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &with_removals()).unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        // A digit of a pass changed.
        std::fs::write(&path, text.replacen("249", "248", 1)).unwrap();
        assert!(read(dir.path()).is_err());
        // The passes gone, their CRC left.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().remove("removals");
        std::fs::write(&path, v.to_string()).unwrap();
        assert!(read(dir.path()).is_err());
        // A manifest without passes has no CRC of them, as before they were kept.
        let plain = Manifest {
            removals: Vec::new(),
            ..with_removals()
        };
        write(dir.path(), &plain).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("removals"));
        assert_eq!(read(dir.path()).unwrap(), Some(plain));
    }
}
