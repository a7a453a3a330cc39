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

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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
    let mut out = Writer::create(dir.join(format!("{REMOVED_KEYS_FILE}.{TEMP_SUFFIX}")))?;
    for (key, ack) in keys {
        out.push(key, ack)?;
    }
    let temp = out.finish()?;
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)
}

/// A file of removed keys written a key at a time, so that no more than a buffer of them
/// is held: the keys a leader sends a follower whose copy starts again, say. Finished, it
/// is durable and in the layout [`read`] takes; dropped unfinished, it is removed.
pub struct Writer {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    count: u32,
    /// The CRC of the entries so far (the header's count is known only at the end).
    entries: crc32fast::Hasher,
}

impl Writer {
    /// Starts the file at `path` (replacing any file there).
    pub fn create(path: PathBuf) -> Result<Writer> {
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        // A small buffer: a follower may receive the keys of many topics at once.
        let mut file = BufWriter::new(file);
        // The count is written over at the end.
        file.write_all(MAGIC)
            .and_then(|()| file.write_all(&0u32.to_le_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Writer {
            path,
            file: Some(file),
            count: 0,
            entries: crc32fast::Hasher::new(),
        })
    }

    /// Adds a key (at most `MAX_KEY_LEN` bytes) and its first ack.
    pub fn push(&mut self, key: &[u8], ack: &FirstAck) -> Result<()> {
        let len = u16::try_from(key.len())
            .ok()
            .filter(|_| key.len() <= MAX_KEY_LEN)
            .ok_or_else(|| Error::InvalidArgument(format!("a key of {} bytes", key.len())))?;
        let count = self
            .count
            .checked_add(1)
            .ok_or_else(|| Error::InvalidArgument("more than u32::MAX removed keys".into()))?;
        let mut head = [0u8; ENTRY_HEAD];
        head[0..8].copy_from_slice(&ack.offset.to_le_bytes());
        head[8..16].copy_from_slice(&ack.timestamp.to_le_bytes());
        head[16..24].copy_from_slice(&ack.stored_at.to_le_bytes());
        head[24..26].copy_from_slice(&len.to_le_bytes());
        let file = self.file.as_mut().ok_or_else(|| finished(&self.path))?;
        file.write_all(&head)
            .and_then(|()| file.write_all(key))
            .map_err(|e| Error::io(&self.path, e))?;
        self.entries.update(&head);
        self.entries.update(key);
        self.count = count;
        Ok(())
    }

    /// How many keys were added.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// True when no key was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Ends the file with its count and CRC and syncs it; its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let path = self.path.clone();
        let file = self.file.take().ok_or_else(|| finished(&path))?;
        let done = (|| -> std::io::Result<()> {
            let mut crc = crc32fast::Hasher::new();
            crc.update(MAGIC);
            crc.update(&self.count.to_le_bytes());
            crc.combine(&self.entries);
            let mut file = file;
            file.write_all(&crc.finalize().to_le_bytes())?;
            let mut file = file.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
            file.write_all(&self.count.to_le_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = done {
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(&path, e));
        }
        Ok(path)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Unfinished: nobody will take it.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn finished(path: &Path) -> Error {
    Error::InvalidArgument(format!("{} was finished already", path.display()))
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
    fn keys_written_one_at_a_time_read_back_and_an_unfinished_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        // More than the writer's buffer holds, so it is flushed along the way.
        let keys: Vec<Kept> = (0..5_000u64)
            .map(|i| kept(&format!("{i:0>120}"), i))
            .collect();
        let mut w = Writer::create(dir.path().join("incoming")).unwrap();
        for (key, ack) in &keys {
            w.push(key, ack).unwrap();
        }
        assert_eq!(w.len(), 5_000);
        let path = w.finish().unwrap();
        std::fs::rename(&path, dir.path().join(REMOVED_KEYS_FILE)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), keys);
        // `write` gives the same bytes.
        let streamed = std::fs::read(dir.path().join(REMOVED_KEYS_FILE)).unwrap();
        let other = tempfile::tempdir().unwrap();
        write(other.path(), &keys).unwrap();
        assert_eq!(
            std::fs::read(other.path().join(REMOVED_KEYS_FILE)).unwrap(),
            streamed
        );

        // A key too long is refused; dropped unfinished, the file is removed.
        let mut w = Writer::create(dir.path().join("dropped")).unwrap();
        w.push(b"k", &keys[0].1).unwrap();
        assert!(w.push(&[b'k'; MAX_KEY_LEN + 1], &keys[0].1).is_err());
        assert!(dir.path().join("dropped").exists());
        drop(w);
        assert!(!dir.path().join("dropped").exists());
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
