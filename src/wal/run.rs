//! A sorted run: the frames of a range of offsets, rewritten by the compactor in order-key
//! order, with an on-disk offset map. Immutable once renamed into place.
//!
//! In memory a run costs one [`SparseEntry`] per [`RUN_BLOCK_BYTES`] of records: a lookup
//! by key seeks to the block and scans it. A lookup by offset reads the mapped offset map
//! (page cache), not the heap.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::failpoint;
use super::format::{
    decode_run_header, encode_run_header, le4, run_file_name, RunHeader, RUN_BLOCK_BYTES,
    RUN_HEADER_LEN, TEMP_SUFFIX,
};
use super::frame::StoredFrame;
use super::record::{decode, Decoded, Header, RecordRef, Step, Walk};
use super::segment::{sync_dir, MappedFile};
use super::{Error, Result};
use crate::index::OrderKey;

/// The first key of a block of a run and where the block starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseEntry {
    /// Key of the first record in the block.
    pub key: OrderKey,
    /// Position of that record.
    pub pos: u32,
}

/// The offset-map entry of an offset lost to repaired damage: no record (records start
/// below 4 GiB - 2, and `u32::MAX` marks a slot not yet written).
const HOLE: u32 = u32::MAX - 1;

/// The most record bytes one run can hold: a record's position in the offset map is a
/// `u32` below [`HOLE`], counted from the start of the file.
pub const MAX_RUN_RECORD_BYTES: u64 = HOLE as u64 - RUN_HEADER_LEN as u64;

/// An open, verified run.
#[derive(Debug)]
pub struct Run {
    file: Arc<MappedFile>,
    header: RunHeader,
    sparse: Vec<SparseEntry>,
    bytes: u64,
    last_key: Option<OrderKey>,
}

impl Run {
    /// Opens and verifies a run: header, map checksum, every record's CRC, key order, and
    /// that the offset map points at each offset's record. `each` sees every record.
    pub fn open(path: &Path, mut each: impl FnMut(&RecordRef<'_>, u64)) -> Result<Run> {
        let file = MappedFile::open(path)?;
        let data = file.as_slice();
        let header = decode_run_header(data).map_err(|r| Error::corruption(path, 0, r))?;
        let count = header.end_offset - header.base_offset;
        let expected_len = header.records_end.checked_add(count.saturating_mul(4));
        if expected_len != Some(data.len() as u64) {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "file is {} bytes, header implies {expected_len:?}",
                    data.len()
                ),
            ));
        }
        let map = &data[header.records_end as usize..];
        if crc32fast::hash(map) != header.map_crc {
            return Err(Error::corruption(
                path,
                header.records_end,
                "offset map checksum mismatch",
            ));
        }
        let records = &data[..header.records_end as usize];
        let mut run = Run {
            file: Arc::clone(&file),
            header,
            sparse: Vec::new(),
            bytes: 0,
            last_key: None,
        };
        let mut next_block = 0u64;
        let mut seen = 0u64;
        let mut end = RUN_HEADER_LEN;
        for (pos, step) in Walk::new(records, RUN_HEADER_LEN) {
            let (rec, len) = match step {
                Step::Record(rec, len) => (rec, len),
                Step::End if pos == records.len() => break,
                Step::End => {
                    return Err(Error::corruption(
                        path,
                        pos as u64,
                        "zero bytes inside the records",
                    ))
                }
                Step::Gap(..) => {
                    return Err(Error::corruption(path, pos as u64, "gap record in a run"))
                }
                Step::Invalid(reason) => return Err(Error::corruption(path, pos as u64, reason)),
            };
            let key = OrderKey {
                seq_no: rec.seq_no,
                timestamp: rec.timestamp,
                offset: rec.offset,
            };
            if run.last_key.is_some_and(|last| last >= key) {
                return Err(Error::corruption(
                    path,
                    pos as u64,
                    "records out of order-key order",
                ));
            }
            if !(header.base_offset..header.end_offset).contains(&rec.offset) {
                return Err(Error::corruption(
                    path,
                    pos as u64,
                    format!("offset {} outside the run", rec.offset),
                ));
            }
            if run.map_entry(rec.offset) != pos as u32 {
                return Err(Error::corruption(
                    path,
                    pos as u64,
                    "offset map disagrees with the record",
                ));
            }
            if pos as u64 >= next_block {
                run.sparse.push(SparseEntry {
                    key,
                    pos: pos as u32,
                });
                next_block = (pos as u64 / RUN_BLOCK_BYTES + 1) * RUN_BLOCK_BYTES;
            }
            each(&rec, len as u64);
            run.last_key = Some(key);
            run.bytes += len as u64;
            seen += 1;
            end = pos + len;
        }
        let pos = end;
        let holes = (header.base_offset..header.end_offset)
            .filter(|&o| run.map_entry(o) == HOLE)
            .count() as u64;
        if seen + holes != count {
            return Err(Error::corruption(
                path,
                pos as u64,
                format!("{seen} records and {holes} lost offsets, header says {count}"),
            ));
        }
        run.sparse.shrink_to_fit();
        Ok(run)
    }

    /// Path of the run file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// First offset held.
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }

    /// One past the last offset held.
    pub fn end_offset(&self) -> u64 {
        self.header.end_offset
    }

    /// Bytes of records.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Smallest and largest key.
    pub fn key_range(&self) -> Option<(OrderKey, OrderKey)> {
        Some((self.sparse.first()?.key, self.last_key?))
    }

    /// Heap bytes held for this run (the sparse index).
    pub fn heap_bytes(&self) -> usize {
        self.sparse.capacity() * std::mem::size_of::<SparseEntry>() + std::mem::size_of::<Run>()
    }

    fn map_entry(&self, offset: u64) -> u32 {
        let at = self.header.records_end as usize + (offset - self.header.base_offset) as usize * 4;
        u32::from_le_bytes(le4(&self.file.as_slice()[at..at + 4]))
    }

    /// Position of `offset`'s record, if the run holds it (not for a lost offset).
    pub fn locate(&self, offset: u64) -> Option<u32> {
        (self.header.base_offset..self.header.end_offset)
            .contains(&offset)
            .then(|| self.map_entry(offset))
            .filter(|&p| p != HOLE)
    }

    /// True when `offset` is inside the run but was lost to repaired damage.
    pub fn is_hole(&self, offset: u64) -> bool {
        (self.header.base_offset..self.header.end_offset).contains(&offset)
            && self.map_entry(offset) == HOLE
    }

    /// Key and length of the (verified at open) record at `pos`. No CRC: this is the
    /// replay path, over records checked when the run was opened.
    fn peek(&self, pos: usize) -> Option<(OrderKey, usize)> {
        let h = Header::peek(self.file.as_slice().get(pos..)?)?;
        let key = OrderKey {
            offset: h.offset,
            seq_no: h.seq_no,
            timestamp: h.timestamp,
        };
        // Verified lengths are at least a header; never loop in place on a bad one.
        (h.length > 0).then_some((key, h.length))
    }

    /// Appends to `out` up to `max` `(key, position)` pairs with key `>= from` and offset in
    /// `[offset_min, offset_limit)`, in key order. True when the run was exhausted.
    pub fn scan(
        &self,
        from: &OrderKey,
        offset_min: u64,
        offset_limit: u64,
        max: usize,
        out: &mut Vec<(OrderKey, u32)>,
    ) -> bool {
        let block = self.sparse.partition_point(|e| e.key <= *from);
        let mut pos = match block {
            0 => RUN_HEADER_LEN,
            b => self.sparse[b - 1].pos as usize,
        };
        let end = self.header.records_end as usize;
        let mut taken = 0;
        while pos < end {
            let Some((key, len)) = self.peek(pos) else {
                break;
            };
            if key >= *from && key.offset >= offset_min && key.offset < offset_limit {
                if taken == max {
                    return false;
                }
                out.push((key, pos as u32));
                taken += 1;
            }
            pos += len;
        }
        true
    }

    /// Appends to `out` up to `max` `(key, position)` pairs with key `< before` (every key
    /// when `None`) and `>= min`, and offset in `[offset_min, offset_limit)`, in descending
    /// key order: blocks are walked backwards, each scanned forward. True when no such key
    /// remains below the last one taken.
    pub fn scan_rev(
        &self,
        before: Option<&OrderKey>,
        min: &OrderKey,
        offset: std::ops::Range<u64>,
        max: usize,
        out: &mut Vec<(OrderKey, u32)>,
    ) -> bool {
        let blocks = match before {
            Some(b) => self.sparse.partition_point(|e| e.key < *b),
            None => self.sparse.len(),
        };
        let mut block_keys = Vec::new();
        let mut taken = 0;
        for b in (0..blocks).rev() {
            let start = self.sparse[b].pos as usize;
            let end = self
                .sparse
                .get(b + 1)
                .map_or(self.header.records_end as usize, |e| e.pos as usize);
            block_keys.clear();
            let mut pos = start;
            while pos < end {
                let Some((key, len)) = self.peek(pos) else {
                    break;
                };
                let below = before.is_none_or(|b| key < *b);
                if below && key >= *min && offset.contains(&key.offset) {
                    block_keys.push((key, pos as u32));
                }
                pos += len;
            }
            for &found in block_keys.iter().rev() {
                if taken == max {
                    return false;
                }
                out.push(found);
                taken += 1;
            }
            if self.sparse[b].key < *min {
                break;
            }
        }
        true
    }

    /// Every record in key order: `(key, position, raw record bytes)`.
    pub fn records(&self) -> impl Iterator<Item = (OrderKey, u32, &[u8])> + '_ {
        let data = &self.file.as_slice()[..self.header.records_end as usize];
        Walk::new(data, RUN_HEADER_LEN).filter_map(move |(pos, step)| match step {
            Step::Record(rec, len) => Some((rec_key(&rec), pos as u32, &data[pos..pos + len])),
            _ => None,
        })
    }

    /// The bytes from `pos` to the end of the records (a record's start, for decoding).
    pub fn record_bytes(&self, pos: u32) -> &[u8] {
        let data = &self.file.as_slice()[..self.header.records_end as usize];
        data.get(pos as usize..).unwrap_or(&[])
    }

    /// Reads and checks the record of `offset` at `pos`.
    pub fn load(&self, pos: u32, offset: u64) -> Result<StoredFrame> {
        let data = &self.file.as_slice()[..self.header.records_end as usize];
        let at = pos as usize;
        match data.get(at..).map(decode) {
            Some(Decoded::Record(rec, len)) if rec.offset == offset => Ok(StoredFrame {
                offset,
                seq_no: rec.seq_no,
                timestamp: rec.timestamp,
                payload: self.file.bytes(
                    (at + len - rec.payload.len()) as u64,
                    rec.payload.len() as u64,
                )?,
            }),
            Some(Decoded::Invalid(reason)) => {
                Err(Error::corruption(self.path(), pos as u64, reason))
            }
            _ => Err(Error::corruption(
                self.path(),
                pos as u64,
                format!("no record of offset {offset}"),
            )),
        }
    }
}

fn rec_key(r: &RecordRef<'_>) -> OrderKey {
    OrderKey {
        seq_no: r.seq_no,
        timestamp: r.timestamp,
        offset: r.offset,
    }
}

/// Writes a run under a temporary name; [`RunWriter::finish`] syncs and renames it.
#[derive(Debug)]
pub struct RunWriter {
    dir: PathBuf,
    temp: PathBuf,
    out: BufWriter<File>,
    base: u64,
    end: u64,
    pos: u64,
    map: Vec<u32>,
    last: Option<OrderKey>,
    /// Position up to which the file was last synced.
    synced: u64,
}

/// A run being written is synced every this many bytes, so dirty pages never pile up into
/// one long final sync that would stall publishers' syncs on the same disk.
const RUN_SYNC_EVERY: u64 = 4 << 20;

impl RunWriter {
    /// Starts a run holding exactly the offsets `base..end`.
    pub fn create(dir: &Path, base: u64, end: u64) -> Result<RunWriter> {
        let temp = dir.join(format!("{}.{TEMP_SUFFIX}", run_file_name(base, end)));
        let file = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&[0u8; RUN_HEADER_LEN])
            .map_err(|e| Error::io(&temp, e))?;
        Ok(RunWriter {
            dir: dir.to_path_buf(),
            temp,
            out,
            base,
            end,
            pos: RUN_HEADER_LEN as u64,
            map: vec![u32::MAX; (end - base) as usize],
            last: None,
            synced: 0,
        })
    }

    /// Appends one encoded record; keys must come in increasing order.
    pub fn push(&mut self, key: OrderKey, record: &[u8]) -> Result<()> {
        if self.last.is_some_and(|l| l >= key) || !(self.base..self.end).contains(&key.offset) {
            return Err(Error::InvalidArgument(format!(
                "run record {key:?} out of order or range"
            )));
        }
        let slot = (key.offset - self.base) as usize;
        self.map[slot] = u32::try_from(self.pos)
            .ok()
            .filter(|&p| p < HOLE)
            .ok_or_else(|| Error::InvalidArgument("run larger than 4 GiB".into()))?;
        self.out
            .write_all(record)
            .map_err(|e| Error::io(&self.temp, e))?;
        self.pos += record.len() as u64;
        self.last = Some(key);
        if self.pos - self.synced >= RUN_SYNC_EVERY {
            self.out.flush().map_err(|e| Error::io(&self.temp, e))?;
            self.out
                .get_ref()
                .sync_data()
                .map_err(|e| Error::io(&self.temp, e))?;
            self.synced = self.pos;
        }
        Ok(())
    }

    /// Records that `offset` was lost to repaired damage: the run holds no record for it.
    pub fn skip(&mut self, offset: u64) -> Result<()> {
        if !(self.base..self.end).contains(&offset) {
            return Err(Error::InvalidArgument(format!(
                "lost offset {offset} outside the run"
            )));
        }
        self.map[(offset - self.base) as usize] = HOLE;
        Ok(())
    }

    /// Gives the run up: its temporary file is removed (a compaction that failed part way
    /// leaves nothing behind, however much it had written).
    pub fn abandon(self) {
        let temp = self.temp.clone();
        drop(self);
        remove_if_there(&temp);
    }

    /// Writes the offset map and header, syncs, renames into place and syncs the directory.
    /// If any of that fails, the file is removed, under its temporary name or its own (not
    /// after a fail point, which stands for a crash) — but never a file of its name that
    /// was there before: a manifest on disk may name it.
    pub fn finish(self) -> Result<PathBuf> {
        let temp = self.temp.clone();
        let named = self.dir.join(run_file_name(self.base, self.end));
        // A run of the same name is there when an earlier compaction of the same segments
        // wrote its manifest but failed after the manifest's rename (its directory sync):
        // the manifest on disk may name that run, though the log in memory does not.
        let there_before = named.exists();
        let finished = self.write_out();
        if let Err(e) = &finished {
            if !failpoint::is_failpoint(e) {
                // Under either name: no manifest names this run yet (a failed directory
                // sync comes after the rename).
                remove_if_there(&temp);
                if !there_before {
                    remove_if_there(&named);
                }
            }
        }
        finished
    }

    fn write_out(mut self) -> Result<PathBuf> {
        if let Some(missing) = self.map.iter().position(|&p| p == u32::MAX) {
            return Err(Error::InvalidArgument(format!(
                "run lacks offset {}",
                self.base + missing as u64
            )));
        }
        let temp = self.temp.clone();
        let io = |e| Error::io(&temp, e);
        // The offset map, written and checksummed a piece at a time (no second copy of it).
        let mut crc = crc32fast::Hasher::new();
        let mut bytes = Vec::with_capacity(64 << 10);
        for piece in self.map.chunks(16 << 10) {
            bytes.clear();
            bytes.extend(piece.iter().flat_map(|p| p.to_le_bytes()));
            crc.update(&bytes);
            self.out.write_all(&bytes).map_err(io)?;
        }
        let header = RunHeader {
            base_offset: self.base,
            end_offset: self.end,
            records_end: self.pos,
            map_crc: crc.finalize(),
        };
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&temp, e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&encode_run_header(&header)).map_err(io)?;
        failpoint::hit("run.before_sync")?;
        file.sync_all().map_err(io)?;
        failpoint::hit("run.before_rename")?;
        let path = self.dir.join(run_file_name(self.base, self.end));
        std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
        sync_dir(&self.dir)?;
        failpoint::hit("run.after_rename")?;
        Ok(path)
    }
}

/// Removes a run file no manifest names (a compaction given up); a failure is logged, and
/// the next open removes the file.
pub fn remove_if_there(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an unfinished run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that cannot be finished leaves alone a file of its name that was there before
    /// it (a manifest on disk may name that one), and removes its own temporary file.
    #[test]
    fn a_failed_run_keeps_a_run_file_of_its_name_that_was_there_before() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join(run_file_name(10, 20));
        std::fs::write(&named, b"an earlier compaction's run").unwrap();
        // Offsets 10..20 are never pushed: finishing fails ("run lacks offset 10").
        let writer = RunWriter::create(dir.path(), 10, 20).unwrap();
        let temp = writer.temp.clone();
        assert!(writer.finish().is_err());
        assert!(!temp.exists());
        assert_eq!(
            std::fs::read(&named).unwrap(),
            b"an earlier compaction's run"
        );
    }
}
