//! The idempotency keys of frames that retention removed while their dedup window was
//! still open. A key lives in its frame's record, and recovery rebuilds the window from
//! the records it finds; a segment deleted by retention within the window would take its
//! keys with it, and a retry after a restart would be stored again. So before a pass
//! deletes files, the keys of the window that only they hold are written here (durably,
//! before the manifest that deletes the files), and recovery loads them first. Keys past
//! their window are dropped when loaded and when written again, so the file holds at most
//! one window of keys.
//!
//! Layout: the magic `FCKEYS01`, a little-endian u32 count, then per key: offset (u64),
//! timestamp (i64), stored-at time (i64), key length (u16), the key; then a CRC32 of
//! everything before it.

use std::io::Write;
use std::path::Path;

use super::dedup::FirstAck;
use super::format::{le4, le8, MAX_KEY_LEN, REMOVED_KEYS_FILE, TEMP_SUFFIX};
use tracing::error;

use super::segment::sync_dir;
use super::{Error, Result};

const MAGIC: &[u8; 8] = b"FCKEYS01";

/// Bytes of one entry before its key.
const ENTRY_HEAD: usize = 8 + 8 + 8 + 2;

/// A key and the first ack it got.
pub type Kept = (Box<[u8]>, FirstAck);

/// Replaces `dir`'s file of removed keys with `keys` atomically and durably; removes it
/// when `keys` is empty.
pub fn write(dir: &Path, keys: &[Kept]) -> Result<()> {
    let path = dir.join(REMOVED_KEYS_FILE);
    if keys.is_empty() {
        return match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&path, e)),
        };
    }
    let count = u32::try_from(keys.len())
        .map_err(|_| Error::InvalidArgument(format!("{} removed keys", keys.len())))?;
    let mut out = Vec::with_capacity(16 + keys.len() * (ENTRY_HEAD + 16));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&count.to_le_bytes());
    for (key, ack) in keys {
        let len = u16::try_from(key.len())
            .map_err(|_| Error::InvalidArgument(format!("a key of {} bytes", key.len())))?;
        out.extend_from_slice(&ack.offset.to_le_bytes());
        out.extend_from_slice(&ack.timestamp.to_le_bytes());
        out.extend_from_slice(&ack.stored_at.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(key);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let temp = dir.join(format!("{REMOVED_KEYS_FILE}.{TEMP_SUFFIX}"));
    let mut f = std::fs::File::create(&temp).map_err(|e| Error::io(&temp, e))?;
    f.write_all(&out)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&temp, e))?;
    drop(f);
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// The keys to load at recovery: [`read`]'s, except that a file that fails its check is
/// set aside as `REMOVED_KEYS.damaged` (`.damaged.N` when taken) and reported at ERROR,
/// and the log opens without them: they only guard retries of frames already removed, not
/// a reason to keep every topic of the server from starting.
pub fn load(dir: &Path) -> Result<Vec<Kept>> {
    match read(dir) {
        Err(Error::Corruption { reason, .. }) => {
            let path = dir.join(REMOVED_KEYS_FILE);
            let aside = (0u32..)
                .map(|n| match n {
                    0 => dir.join(format!("{REMOVED_KEYS_FILE}.damaged")),
                    n => dir.join(format!("{REMOVED_KEYS_FILE}.damaged.{n}")),
                })
                .find(|p| !p.exists())
                .unwrap_or_else(|| dir.join(format!("{REMOVED_KEYS_FILE}.damaged")));
            std::fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
            sync_dir(dir)?;
            error!(file = %path.display(), set_aside = %aside.display(), reason = %reason, "the idempotency keys of removed frames are damaged: set aside; a retry of such a frame within its dedup window would be stored again");
            Ok(Vec::new())
        }
        other => other,
    }
}

/// The keys in `dir`'s file of removed keys (none when there is no file). A file that
/// fails its check is an error naming it.
pub fn read(dir: &Path) -> Result<Vec<Kept>> {
    let path = dir.join(REMOVED_KEYS_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |why: String| {
        Error::corruption(
            &path,
            0,
            format!(
                "{why}; it holds the idempotency keys of frames retention removed within \
                 the dedup window"
            ),
        )
    };
    if data.len() < MAGIC.len() + 8 || &data[..MAGIC.len()] != MAGIC {
        return Err(bad("not a file of removed keys".into()));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let stored = u32::from_le_bytes(le4(crc));
    if crc32fast::hash(body) != stored {
        return Err(bad("CRC mismatch".into()));
    }
    let count = u32::from_le_bytes(le4(&body[MAGIC.len()..])) as usize;
    let mut at = MAGIC.len() + 4;
    let mut keys = Vec::with_capacity(count.min(body.len() / ENTRY_HEAD));
    for _ in 0..count {
        let head = body
            .get(at..at + ENTRY_HEAD)
            .ok_or_else(|| bad(format!("cut short at byte {at}")))?;
        let len = u16::from_le_bytes([head[24], head[25]]) as usize;
        let key = body
            .get(at + ENTRY_HEAD..at + ENTRY_HEAD + len)
            .filter(|_| len <= MAX_KEY_LEN)
            .ok_or_else(|| bad(format!("a bad key at byte {at}")))?;
        let ack = FirstAck {
            offset: u64::from_le_bytes(le8(&head[0..8])),
            timestamp: i64::from_le_bytes(le8(&head[8..16])),
            stored_at: i64::from_le_bytes(le8(&head[16..24])),
        };
        keys.push((Box::from(key), ack));
        at += ENTRY_HEAD + len;
    }
    if at != body.len() {
        return Err(bad(format!(
            "{} bytes past its {count} keys",
            body.len() - at
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn kept(key: &str, offset: u64) -> Kept {
        let ack = FirstAck {
            offset,
            timestamp: 1_700_000_000_000_000_000 + offset as i64,
            stored_at: 1_800_000_000_000_000_000 - offset as i64,
        };
        (Box::from(key.as_bytes()), ack)
    }

    #[test]
    fn keys_come_back_as_written_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty(), "no file: no keys");
        let keys = vec![kept("a", 0), kept("", 7), kept(&"k".repeat(MAX_KEY_LEN), 9)];
        write(dir.path(), &keys).unwrap();
        assert_eq!(read(dir.path()).unwrap(), keys);
        let path = dir.path().join(REMOVED_KEYS_FILE);
        let good = std::fs::read(&path).unwrap();
        for at in [0, 10, 20, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let e = read(dir.path()).unwrap_err();
            assert!(matches!(e, Error::Corruption { .. }), "byte {at}: {e}");
        }
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        assert!(read(dir.path()).is_err(), "cut short");
        write(dir.path(), &[]).unwrap();
        assert!(!path.exists(), "no keys: no file");
        write(dir.path(), &[]).unwrap();
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_the_log_opens_without_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &[kept("a", 0)]).unwrap();
        let path = dir.path().join(REMOVED_KEYS_FILE);
        let mut bad = std::fs::read(&path).unwrap();
        bad[9] ^= 0x01;
        for n in ["", ".1"] {
            std::fs::write(&path, &bad).unwrap();
            assert!(load(dir.path()).unwrap().is_empty());
            assert!(!path.exists());
            let aside = dir.path().join(format!("{REMOVED_KEYS_FILE}.damaged{n}"));
            assert_eq!(std::fs::read(&aside).unwrap(), bad, "kept as it was");
        }
        write(dir.path(), &[kept("a", 0)]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![kept("a", 0)]);
    }
}
