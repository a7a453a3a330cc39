//! One segment file: preallocated, memory-mapped, appended by one writer, read by many.
//!
//! This is the only module with `unsafe`. The mapping is a [`MmapRaw`]; soundness rests on
//! one rule: bytes below `published` are immutable, bytes at or above it are touched only by
//! the single [`SegmentWriter`]. Readers ([`Segment::read`], [`Segment::bytes`]) check their
//! range against `published` (an acquire load that pairs with the writer's release store), so
//! no reference ever aliases a region being written.
//!
//! Space is reserved with `posix_fallocate` when a segment is created, so a store through the
//! mapping never needs the file system to allocate a block: a full disk shows up as a clean
//! error at segment creation, never as `SIGBUS` in the middle of an append.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::format::{
    decode_segment_header, encode_segment_header, segment_file_name, SEGMENT_HEADER_LEN,
};
use super::{Error, Result};

/// How dirty pages of a mapping are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// `msync(MS_SYNC)` of the dirty byte range only.
    #[default]
    Msync,
    /// `fdatasync` of the whole file.
    Fdatasync,
}

/// A segment file and its mapping, shared by the writer and every reader.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    base_offset: u64,
    file: File,
    map: MmapRaw,
    capacity: u64,
    /// Bytes from the start of the file that are written and immutable.
    published: AtomicU64,
}

/// The one writer of a segment: the only code that stores into its mapping.
#[derive(Debug)]
pub struct SegmentWriter {
    segment: Arc<Segment>,
    cursor: u64,
}

/// A byte range of a segment, kept alive by an `Arc` so that [`Bytes`] can point into the
/// mapping without copying.
struct MappedRange {
    segment: Arc<Segment>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range was checked to lie below `published` when this value was made
        // (`Segment::bytes`); published bytes are never written again and the mapping lives as
        // long as the `Arc<Segment>` held here.
        unsafe { std::slice::from_raw_parts(self.segment.map.as_ptr().add(self.start), self.len) }
    }
}

impl Segment {
    /// Path of the segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the first record in this segment.
    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    /// Size of the file (preallocated capacity).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes from the start of the file that readers may see.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// The published bytes `[pos, pos + len)`.
    pub fn read(&self, pos: u64, len: u64) -> Result<&[u8]> {
        let end = pos.checked_add(len).filter(|&e| e <= self.published());
        let Some(_) = end else {
            return Err(Error::corruption(
                &self.path,
                pos,
                format!("read of {len} bytes runs past the published data"),
            ));
        };
        // SAFETY: `[pos, pos + len)` lies below `published` (checked above), so it is
        // immutable, and inside the mapping, which lives as long as `self`.
        Ok(
            unsafe {
                std::slice::from_raw_parts(self.map.as_ptr().add(pos as usize), len as usize)
            },
        )
    }

    /// The published bytes from `pos` to the end of the published data.
    pub fn read_from(&self, pos: u64) -> Result<&[u8]> {
        let published = self.published();
        self.read(pos, published.saturating_sub(pos))
    }

    /// The published bytes `[pos, pos + len)` as [`Bytes`] that keep the mapping alive.
    pub fn bytes(self: &Arc<Self>, pos: u64, len: u64) -> Result<Bytes> {
        self.read(pos, len)?;
        Ok(Bytes::from_owner(MappedRange {
            segment: Arc::clone(self),
            start: pos as usize,
            len: len as usize,
        }))
    }

    /// Makes `[pos, pos + len)` durable.
    pub fn sync_range(&self, pos: u64, len: u64, method: SyncMethod) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match method {
            SyncMethod::Msync => self.map.flush_range(pos as usize, len as usize),
            SyncMethod::Fdatasync => self.file.sync_data(),
        }
        .map_err(|e| Error::io(&self.path, e))
    }
}

impl SegmentWriter {
    /// Creates a new segment file for `base_offset` in `dir`, preallocated to `capacity`
    /// bytes, with its header written and synced, and the directory synced.
    pub fn create(dir: &Path, base_offset: u64, capacity: u64) -> Result<SegmentWriter> {
        let path = dir.join(segment_file_name(base_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let made = preallocate(&file, capacity).and_then(|()| {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&encode_segment_header(base_offset), 0)?;
            file.sync_all()
        });
        if let Err(e) = made {
            // Nothing was acknowledged into this file; remove the partial file so that a
            // full disk leaves no half-made segment behind.
            let _ = std::fs::remove_file(&path);
            return Err(Error::io(&path, e));
        }
        sync_dir(dir)?;
        let segment = Self::map(path, file, base_offset, capacity)?;
        Ok(SegmentWriter {
            segment,
            cursor: SEGMENT_HEADER_LEN as u64,
        })
    }

    /// Opens an existing segment file for recovery. Nothing is published until the caller
    /// has scanned it and called [`SegmentWriter::set_cursor`] and [`SegmentWriter::publish`].
    pub fn open(path: &Path) -> Result<SegmentWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let capacity = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        {
            use std::os::unix::fs::FileExt;
            if capacity < SEGMENT_HEADER_LEN as u64 {
                return Err(Error::corruption(
                    path,
                    0,
                    "file shorter than its segment header",
                ));
            }
            file.read_exact_at(&mut header, 0)
                .map_err(|e| Error::io(path, e))?;
        }
        let base_offset =
            decode_segment_header(&header).map_err(|reason| Error::corruption(path, 0, reason))?;
        let segment = Self::map(path.to_path_buf(), file, base_offset, capacity)?;
        Ok(SegmentWriter {
            segment,
            cursor: SEGMENT_HEADER_LEN as u64,
        })
    }

    fn map(path: PathBuf, file: File, base_offset: u64, capacity: u64) -> Result<Arc<Segment>> {
        let map = MmapOptions::new()
            .map_raw(&file)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Arc::new(Segment {
            path,
            base_offset,
            file,
            map,
            capacity,
            published: AtomicU64::new(SEGMENT_HEADER_LEN as u64),
        }))
    }

    /// The shared segment, for readers.
    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    /// Where the next record goes.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Bytes left for records.
    pub fn remaining(&self) -> u64 {
        self.segment.capacity - self.cursor
    }

    /// The whole file as mapped, for the recovery scan before anything is published.
    pub fn contents(&self) -> &[u8] {
        // SAFETY: only this writer stores into the mapping, and it needs `&mut self` to do so;
        // the returned borrow of `&self` therefore cannot overlap a store.
        unsafe {
            std::slice::from_raw_parts(self.segment.map.as_ptr(), self.segment.capacity as usize)
        }
    }

    /// Reserves `len` bytes at the cursor for a record and returns them to be filled in.
    pub fn reserve(&mut self, len: usize) -> Option<&mut [u8]> {
        if len as u64 > self.remaining() {
            return None;
        }
        let at = self.cursor as usize;
        self.cursor += len as u64;
        // SAFETY: `[at, at + len)` is inside the mapping (checked above) and at or above
        // `published`, so no reader can hold a reference into it; `&mut self` excludes any other
        // borrow from this writer.
        Some(unsafe { std::slice::from_raw_parts_mut(self.segment.map.as_mut_ptr().add(at), len) })
    }

    /// Makes everything up to the cursor visible to readers.
    pub fn publish(&mut self) {
        self.segment.published.store(self.cursor, Ordering::Release);
    }

    /// Moves the cursor after recovery has found the end of the valid data.
    pub fn set_cursor(&mut self, cursor: u64) {
        debug_assert!(cursor >= self.segment.published());
        self.cursor = cursor.min(self.segment.capacity);
    }

    /// Undoes unpublished writes: zeroes `[to, cursor)` and moves the cursor back to `to`, so
    /// that the bytes of a failed append can never be recovered as records.
    pub fn rollback(&mut self, to: u64) {
        let to = to.max(self.segment.published());
        if to < self.cursor {
            let len = (self.cursor - to) as usize;
            // SAFETY: `[to, cursor)` is at or above `published` (clamped above), inside the
            // mapping, and only this writer touches it.
            unsafe {
                std::ptr::write_bytes(self.segment.map.as_mut_ptr().add(to as usize), 0, len)
            };
            self.cursor = to;
        }
    }

    /// Cuts the file back to `len` bytes (dropping a torn tail), syncs, and preallocates the
    /// freed space again so that it reads as zeros.
    pub fn truncate_tail(&mut self, len: u64) -> Result<()> {
        let seg = &self.segment;
        let path = &seg.path;
        seg.file.set_len(len).map_err(|e| Error::io(path, e))?;
        seg.file.sync_all().map_err(|e| Error::io(path, e))?;
        preallocate(&seg.file, seg.capacity).map_err(|e| Error::io(path, e))?;
        seg.file.sync_all().map_err(|e| Error::io(path, e))?;
        self.cursor = len;
        Ok(())
    }
}

/// An immutable file mapped read-only: a sorted run, written in full and synced before it
/// is renamed into place, and never written again.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// A byte range of a [`MappedFile`], kept alive by an `Arc`.
struct MappedFileRange {
    file: Arc<MappedFile>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedFileRange {
    fn as_ref(&self) -> &[u8] {
        &self.file.as_slice()[self.start..self.start + self.len]
    }
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Arc<MappedFile>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: run files are immutable once renamed into place (they are written under a
        // temporary name, synced, then renamed) and the data directory is locked against other
        // framecast processes, so the mapped bytes never change while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Arc::new(MappedFile {
            path: path.to_path_buf(),
            map,
        }))
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file.
    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// `[pos, pos + len)` as [`Bytes`] that keep the mapping alive.
    pub fn bytes(self: &Arc<Self>, pos: u64, len: u64) -> Result<Bytes> {
        let end = pos.checked_add(len).filter(|&e| e <= self.map.len() as u64);
        if end.is_none() {
            return Err(Error::corruption(
                &self.path,
                pos,
                "read past the end of the file",
            ));
        }
        Ok(Bytes::from_owner(MappedFileRange {
            file: Arc::clone(self),
            start: pos as usize,
            len: len as usize,
        }))
    }
}

/// Reserves real blocks for `[0, len)` so stores through the mapping never allocate.
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: plain system call on an open descriptor owned by `file`; no memory is shared.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: fall back to a sized (possibly sparse) file.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Syncs a directory so that a created, renamed or removed entry in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_only_published_bytes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let mut w = SegmentWriter::create(dir.path(), 0, 8192)?;
        let seg = Arc::clone(w.segment());
        let at = w.cursor();
        w.reserve(5).expect("room").copy_from_slice(b"hello");
        assert!(
            seg.read(at, 5).is_err(),
            "unpublished bytes must not be readable"
        );
        w.publish();
        assert_eq!(seg.read(at, 5)?, b"hello");
        let b = seg.bytes(at, 5)?;
        drop(w);
        drop(seg);
        assert_eq!(&b[..], b"hello", "Bytes keep the mapping alive");
        Ok(())
    }

    #[test]
    fn rollback_zeroes_unpublished_bytes() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let mut w = SegmentWriter::create(dir.path(), 0, 8192)?;
        let at = w.cursor();
        w.reserve(4).expect("room").copy_from_slice(b"abcd");
        w.rollback(at);
        assert_eq!(w.cursor(), at);
        assert!(w.contents()[at as usize..at as usize + 4]
            .iter()
            .all(|&b| b == 0));
        assert!(w.reserve(9000).is_none(), "no room past capacity");
        Ok(())
    }
}
