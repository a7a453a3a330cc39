//! One segment file: grown in steps, memory-mapped, appended by one writer, read by many.
//!
//! This is the only module with `unsafe`. The mapping is a [`MmapRaw`]; soundness rests on
//! two rules. First, bytes below `published` are immutable, bytes at or above it are
//! touched only by the single [`SegmentWriter`]. Readers ([`Segment::read`],
//! [`Segment::bytes`]) check their range against `published` (an acquire load that pairs
//! with the writer's release store), so no reference ever aliases a region being written.
//! Second, the mapping spans the segment's whole capacity (address space only) while the
//! file is shorter: no byte at or beyond the file's allocated end is ever touched, since
//! that would be `SIGBUS`. `published <= cursor <= allocated` always holds.
//!
//! Space is reserved with `posix_fallocate` before the writer stores into it
//! ([`SegmentWriter::make_room`]), so a store through the mapping never needs the file
//! system to allocate a block: a full disk shows up as a clean error to the appender,
//! never as `SIGBUS` in the middle of an append. The file starts at
//! [`SEGMENT_FIRST_ALLOCATION`] bytes and doubles (by at most [`SEGMENT_MAX_GROWTH`]) as it
//! fills, up to the capacity, so a topic with a few frames costs a few KiB of disk.
//!
//! No file descriptor is kept: the mapping outlives the descriptor it was made from, and
//! the rare operations that need one (growth, `fdatasync`, cutting a torn tail) open the
//! file for the moment. Ten thousand idle topics hold ten thousand mappings, no files.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};
use tracing::debug;

use super::format::{
    decode_segment_header, encode_segment_header, segment_file_name, MIN_SEGMENT_BYTES,
    SEGMENT_ALLOCATION_UNIT, SEGMENT_FIRST_ALLOCATION, SEGMENT_HEADER_LEN, SEGMENT_MAX_GROWTH,
    TEMP_SUFFIX,
};
use super::mappings::{map_admitted, Need};
use super::{Error, Result};

/// How dirty pages of a mapping are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// `msync(MS_SYNC)` of the dirty byte range only.
    #[default]
    Msync,
    /// `fdatasync` of the whole file (opened for the call: segments keep no descriptor).
    Fdatasync,
}

/// A segment file and its mapping, shared by the writer and every reader.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    base_offset: u64,
    map: Arc<MmapRaw>,
    /// The published bytes as one [`Bytes`], that [`Segment::bytes`] slices: a frame read
    /// costs a reference count, not an allocation (the view is made again, once, when a
    /// read reaches past it).
    view: PublishedView,
    /// Length of the mapping: the most the file may grow to.
    capacity: u64,
    /// Length of the file, every byte of it allocated. Only the writer changes it.
    allocated: AtomicU64,
    /// Bytes from the start of the file that are written and immutable.
    published: AtomicU64,
}

/// The one writer of a segment: the only code that stores into its mapping.
#[derive(Debug)]
pub struct SegmentWriter {
    segment: Arc<Segment>,
    cursor: u64,
}

/// The first `len` bytes of a segment's mapping, all published when this value was made,
/// kept alive by an `Arc` so that [`Bytes`] can point into the mapping without copying.
struct PublishedPrefix {
    map: Arc<MmapRaw>,
    len: usize,
}

impl AsRef<[u8]> for PublishedPrefix {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` was at most `published` when this value was made
        // (`Segment::bytes`); published bytes are never written again, lie inside the
        // allocated file, and the mapping lives as long as the `Arc<MmapRaw>` held here.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

/// A segment's published prefix as [`Bytes`], replaced by a longer one as the segment grows.
#[derive(Default)]
struct PublishedView(parking_lot::RwLock<Bytes>);

impl std::fmt::Debug for PublishedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublishedView({} bytes)", self.0.read().len())
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

    /// The most bytes the file may grow to (the mapping's length).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Length of the file now: every byte below it is allocated on disk.
    pub fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Acquire)
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
        // immutable and inside the allocated file, and inside the mapping, which lives as
        // long as `self`.
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
    pub fn bytes(&self, pos: u64, len: u64) -> Result<Bytes> {
        self.read(pos, len)?;
        let (start, end) = (pos as usize, (pos + len) as usize);
        {
            let view = self.view.0.read();
            if end <= view.len() {
                return Ok(view.slice(start..end));
            }
        }
        // Past the view: a new one up to everything published now (at least `end`, checked
        // above, since `published` only grows).
        let view = Bytes::from_owner(PublishedPrefix {
            map: Arc::clone(&self.map),
            len: self.published() as usize,
        });
        let out = view.slice(start..end);
        let mut held = self.view.0.write();
        if view.len() > held.len() {
            *held = view;
        }
        Ok(out)
    }

    /// Makes `[pos, pos + len)` durable.
    pub fn sync_range(&self, pos: u64, len: u64, method: SyncMethod) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match method {
            SyncMethod::Msync => self.map.flush_range(pos as usize, len as usize),
            // `fdatasync` flushes the file's dirty pages whichever descriptor asks, the
            // mapping's included. Without a descriptor (the process is out of them for a
            // moment), `msync` of the range, which needs none: a failed open is no failed
            // sync, and must not stop the log.
            SyncMethod::Fdatasync => match self.open_file() {
                Ok(f) => f.sync_data(),
                Err(_) => self.map.flush_range(pos as usize, len as usize),
            },
        }
        .map_err(|e| Error::io(&self.path, e))
    }

    /// Sets the file's modification time to now, once it is sealed: every record in it was
    /// stored by then. Writes through the mapping move that time only when they dirty a
    /// clean page, so until this it may lag behind the last record; retention's age rule
    /// reads it.
    pub fn stamp_sealed(&self) -> Result<()> {
        self.open_file()
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Opens the file for an operation that needs a descriptor; closed when dropped.
    fn open_file(&self) -> std::io::Result<File> {
        OpenOptions::new().read(true).write(true).open(&self.path)
    }
}

impl SegmentWriter {
    /// Creates a new segment file for `base_offset` in `dir` that may grow to `capacity`
    /// bytes, allocated to its first step, with its header written and synced, and the
    /// directory synced. The file is made complete under a temporary name and only then
    /// named: a segment file without a valid header is never a crash's leftover, always
    /// damage (recovery removes the temporary file a crash leaves).
    pub fn create(dir: &Path, base_offset: u64, capacity: u64) -> Result<SegmentWriter> {
        let path = dir.join(segment_file_name(base_offset));
        // One writer per topic directory (the data dir's lock keeps other processes out),
        // so nothing can make this file between the look and the rename below. (A hard
        // link would refuse to replace it by itself, but not every volume has them.)
        if path.exists() {
            return Err(Error::io(
                &path,
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        let temp = dir.join(format!("{}.{TEMP_SUFFIX}", segment_file_name(base_offset)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| Error::io(&temp, e))?;
        let first = SEGMENT_FIRST_ALLOCATION.min(capacity);
        // Mapped before it is named (a mapping outlives a rename): a refused mapping (the
        // process at its mapping limit) must not leave a file under the segment's name, or
        // every later attempt to start this segment would find it taken.
        let made = preallocate(&file, 0, first)
            .and_then(|()| {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&encode_segment_header(base_offset), 0)?;
                file.sync_all()
            })
            .map_err(|e| Error::io(&path, e))
            .and_then(|()| {
                let need = Need::New(1);
                Self::map(path.clone(), &file, base_offset, first, capacity, need)
            })
            .and_then(|segment| {
                std::fs::rename(&temp, &path)
                    .map(|()| segment)
                    .map_err(|e| Error::io(&path, e))
            });
        let segment = match made {
            Ok(segment) => segment,
            Err(e) => {
                // Nothing was acknowledged into this file; remove the partial file so that
                // a full disk leaves no half-made segment behind.
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        // Tests make this sync fail (`--features failpoints`).
        let named =
            super::failpoint::hit(super::failpoint::SEGMENT_DIR_SYNC).and_then(|()| sync_dir(dir));
        if let Err(e) = named {
            // No record went into the file: the name is given back, or every later attempt
            // to start this segment would find it taken (and the topic take no frame).
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(SegmentWriter {
            segment,
            cursor: SEGMENT_HEADER_LEN as u64,
        })
    }

    /// Opens an existing segment file for recovery, mapped so that it may grow to
    /// `capacity` bytes (or its length, if longer: a file is never shrunk). Nothing is
    /// published until the caller has scanned it and called [`SegmentWriter::set_cursor`]
    /// and [`SegmentWriter::publish`].
    pub fn open(path: &Path, capacity: u64) -> Result<SegmentWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        {
            use std::os::unix::fs::FileExt;
            if len < SEGMENT_HEADER_LEN as u64 {
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
        let segment = Self::map(
            path.to_path_buf(),
            &file,
            base_offset,
            len,
            capacity.max(len),
            Need::Existing(1),
        )?;
        Ok(SegmentWriter {
            segment,
            cursor: SEGMENT_HEADER_LEN as u64,
        })
    }

    /// Maps `capacity` bytes of `file`, of which the first `allocated` exist, once the
    /// mapping budget admits `need`. The descriptor is not kept: the mapping stays valid
    /// after it is closed.
    fn map(
        path: PathBuf,
        file: &File,
        base_offset: u64,
        allocated: u64,
        capacity: u64,
        need: Need,
    ) -> Result<Arc<Segment>> {
        let len = usize::try_from(capacity)
            .map_err(|_| Error::InvalidArgument(format!("segment of {capacity} bytes")))?;
        let map = map_admitted(&path, need, || MmapOptions::new().len(len).map_raw(file))?;
        Ok(Arc::new(Segment {
            path,
            base_offset,
            map: Arc::new(map),
            view: PublishedView::default(),
            capacity,
            allocated: AtomicU64::new(allocated),
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

    /// Bytes left for records before the segment is full (allocated or not yet).
    pub fn remaining(&self) -> u64 {
        self.segment.capacity - self.cursor
    }

    /// The whole file as allocated, for the recovery scan before anything is published.
    pub fn contents(&self) -> &[u8] {
        // SAFETY: only this writer stores into the mapping, and it needs `&mut self` to do so;
        // the returned borrow of `&self` therefore cannot overlap a store. The slice ends at
        // the allocated end of the file, inside the mapping.
        unsafe {
            std::slice::from_raw_parts(self.segment.map.as_ptr(), self.segment.allocated() as usize)
        }
    }

    /// The bytes written from `from` (at or above `published`: clamped) up to the cursor,
    /// not yet published: what the writer just stored.
    pub fn unpublished(&self, from: u64) -> &[u8] {
        let from = from.max(self.segment.published()).min(self.cursor) as usize;
        // SAFETY: `[from, cursor)` is inside the allocated file (the cursor never passes
        // it) and so inside the mapping; only this writer stores there, and it needs
        // `&mut self` to do so, so the returned borrow of `&self` cannot overlap a store.
        unsafe {
            std::slice::from_raw_parts(
                self.segment.map.as_ptr().add(from),
                self.cursor as usize - from,
            )
        }
    }

    /// Makes sure the next `len` bytes at the cursor are allocated on disk, growing the
    /// file by the next step if they are not. A full disk is an error here, before any
    /// byte is stored; the segment stays as it was and valid.
    pub fn make_room(&mut self, len: u64) -> Result<()> {
        let seg = &self.segment;
        let need = self.cursor.saturating_add(len);
        let allocated = seg.allocated();
        if need <= allocated {
            return Ok(());
        }
        if need > seg.capacity {
            return Err(Error::InvalidArgument(format!(
                "{len} bytes at {} do not fit in a {}-byte segment",
                self.cursor, seg.capacity
            )));
        }
        let target = next_allocation(allocated, need, seg.capacity);
        // No sync here: the sync that makes records in the new space durable (`msync` is
        // `fdatasync` of a range) also makes durable the length and allocation needed to
        // read them back. A sync here would be a full `fsync` of the file's dirty pages,
        // stalling the committer every step under `--fsync never`.
        let grow = |to: u64| -> std::io::Result<()> {
            let file = seg.open_file()?;
            preallocate(&file, allocated, to - allocated)
        };
        let grown = match grow(target) {
            // Short of room for a whole step: take just what this append needs.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let least = round_up(need).min(seg.capacity);
                if least < target {
                    grow(least).map(|()| least)
                } else {
                    Err(e)
                }
            }
            other => other.map(|()| target),
        }
        .map_err(|e| Error::io(&seg.path, e))?;
        seg.allocated.store(grown, Ordering::Release);
        debug!(file = %seg.path.display(), from = allocated, to = grown, "segment grown");
        Ok(())
    }

    /// Reserves `len` bytes at the cursor for a record and returns them to be filled in;
    /// `None` unless [`SegmentWriter::make_room`] made room for them first.
    pub fn reserve(&mut self, len: usize) -> Option<&mut [u8]> {
        if self.cursor + len as u64 > self.segment.allocated() {
            return None;
        }
        let at = self.cursor as usize;
        self.cursor += len as u64;
        // SAFETY: `[at, at + len)` is inside the allocated file and so inside the mapping
        // (checked above: no store can reach past the file's end and fault), and at or
        // above `published`, so no reader can hold a reference into it; `&mut self`
        // excludes any other borrow from this writer.
        Some(unsafe { std::slice::from_raw_parts_mut(self.segment.map.as_mut_ptr().add(at), len) })
    }

    /// Makes everything up to the cursor visible to readers.
    pub fn publish(&mut self) {
        self.segment.published.store(self.cursor, Ordering::Release);
    }

    /// Moves the cursor after recovery has found the end of the valid data.
    pub fn set_cursor(&mut self, cursor: u64) {
        debug_assert!(cursor >= self.segment.published());
        self.cursor = cursor.min(self.segment.allocated());
    }

    /// Undoes unpublished writes: zeroes `[to, cursor)` and moves the cursor back to `to`, so
    /// that the bytes of a failed append can never be recovered as records.
    pub fn rollback(&mut self, to: u64) {
        let to = to.max(self.segment.published());
        // Backwards, a few bytes at a time (fewer than a record header): a kill midway
        // leaves whole records, then at most one cut short, then zeros — a torn tail that
        // recovery cuts. Forwards, it could leave a zeroed header before whole records,
        // which recovery must take for damage.
        let half = to + (self.cursor.saturating_sub(to)) / 2;
        let stop_at_half = super::failpoint::hit(super::failpoint::ROLLBACK_HALF).is_err();
        let mut end = self.cursor;
        while end > to {
            if stop_at_half && end <= half {
                return; // a simulated crash: nothing after it runs
            }
            let start = end.saturating_sub(ROLLBACK_STEP).max(to);
            // SAFETY: `[start, end)` lies in `[to, cursor)`, which is at or above
            // `published` (clamped above), below the cursor and so inside the allocated
            // file; only this writer touches it.
            unsafe {
                std::ptr::write_bytes(
                    self.segment.map.as_mut_ptr().add(start as usize),
                    0,
                    (end - start) as usize,
                )
            };
            // Each step's stores before the next's (toward the front).
            std::sync::atomic::compiler_fence(Ordering::Release);
            end = start;
        }
        self.cursor = to;
    }

    /// Cuts the file's contents back to `len` bytes (dropping a torn tail, or records a new
    /// leader does not hold): everything from `len` on reads as zeros, durably. The file
    /// keeps its length and its blocks: it is never shrunk, because a reader may still hold
    /// a mapping of it (a cluster node's old log, whose replication stream has bytes in
    /// flight), and a mapped page past the end of its file is SIGBUS.
    pub fn truncate_tail(&mut self, len: u64) -> Result<()> {
        let seg = &self.segment;
        let path = &seg.path;
        let allocated = seg.allocated();
        let file = seg.open_file().map_err(|e| Error::io(path, e))?;
        if allocated > len {
            zero_range(&file, len, allocated - len).map_err(|e| Error::io(path, e))?;
        }
        file.sync_all().map_err(|e| Error::io(path, e))?;
        self.cursor = len;
        Ok(())
    }

    /// Grows a file that something else cut short back to [`regrown_length`] (zeros),
    /// synced, once recovery has told its caller: with a length framecast gives a segment
    /// again, the cut is reported once, not at every start.
    pub fn grow_back(&mut self) -> Result<()> {
        let seg = &self.segment;
        let allocated = seg.allocated();
        let to = regrown_length(allocated, seg.capacity);
        if to <= allocated {
            return Ok(());
        }
        let file = seg.open_file().map_err(|e| Error::io(&seg.path, e))?;
        preallocate(&file, allocated, to - allocated)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&seg.path, e))?;
        seg.allocated.store(to, Ordering::Release);
        Ok(())
    }
}

/// True when `len` is a length framecast gives a segment file that may grow to `capacity`
/// bytes: the first allocation, whole allocation units above it, or the capacity. A file
/// longer than the capacity was made under a larger one, whose lengths are not known here.
/// framecast never shrinks a segment file, so a last segment of another length was cut
/// short by something else.
///
/// With the capacity not known (`framecast dump`): at least the smallest first allocation
/// and whole allocation units, so a full segment whose capacity is not whole units is taken
/// for one cut short.
pub fn is_segment_length(len: u64, capacity: Option<u64>) -> bool {
    let whole_units = len.is_multiple_of(SEGMENT_ALLOCATION_UNIT);
    match capacity {
        Some(cap) => len >= cap || (len >= SEGMENT_FIRST_ALLOCATION.min(cap) && whole_units),
        None => len >= MIN_SEGMENT_BYTES && whole_units,
    }
}

/// The length [`SegmentWriter::grow_back`] gives a file of `len` bytes that may grow to
/// `capacity`: the next length framecast gives a segment.
fn regrown_length(len: u64, capacity: u64) -> u64 {
    round_up(len)
        .max(SEGMENT_FIRST_ALLOCATION)
        .min(capacity)
        .max(len)
}

/// Bytes [`SegmentWriter::rollback`] zeroes per step, back to front: fewer than a record
/// header, so no step can leave a whole record behind a zeroed one.
const ROLLBACK_STEP: u64 = 32;

/// The file length to grow to so that `need` bytes fit: double the allocation (by at
/// least the first step, at most [`SEGMENT_MAX_GROWTH`]), more if one append needs it,
/// never past the capacity.
fn next_allocation(allocated: u64, need: u64, capacity: u64) -> u64 {
    let step = allocated.clamp(SEGMENT_FIRST_ALLOCATION, SEGMENT_MAX_GROWTH);
    round_up(need.max(allocated + step)).min(capacity)
}

/// `n` rounded up to a whole number of allocation units.
fn round_up(n: u64) -> u64 {
    n.div_ceil(SEGMENT_ALLOCATION_UNIT) * SEGMENT_ALLOCATION_UNIT
}

/// An immutable file mapped read-only: a sorted run, written in full and synced before it
/// is renamed into place, and never written again.
pub struct MappedFile {
    path: PathBuf,
    /// The whole mapping: a read slices it (a reference count, no allocation).
    map: Bytes,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Arc<MappedFile>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Runs exist before they are opened: by recovery, or made by a compaction to
        // replace segments (fewer mappings in the end).
        let map = map_admitted(path, Need::Existing(1), || {
            // SAFETY: run files are immutable once renamed into place (they are written under
            // a temporary name, synced, then renamed) and the data directory is locked against
            // other framecast processes, so the mapped bytes never change while mapped.
            unsafe { memmap2::Mmap::map(&file) }
        })?;
        Ok(Arc::new(MappedFile {
            path: path.to_path_buf(),
            map: Bytes::from_owner(map),
        }))
    }

    /// Maps a segment file read-only for an offline scan (`framecast dump`, which may run
    /// beside a live server; `framecast repair`, which patches the file with positioned
    /// writes as it goes): the page cache holds it, however large, not the heap.
    pub fn scan_segment(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let map = if len == 0 {
            Bytes::new()
        } else {
            // SAFETY: framecast never shrinks a segment file (a cut zeroes its tail in place,
            // `SegmentWriter::truncate_tail`), so every page of this mapping stays backed by
            // the file. A live server may still write into it (appends past the bytes it had
            // written, a cut zeroing a tail), and repair writes its patches into it: such
            // bytes are read as they are at the moment, and checked by their CRC as any
            // other (repair reads none of its own patches again: its walk resumes past each).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Bytes::from_owner(map)
        };
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
        })
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
    pub fn bytes(&self, pos: u64, len: u64) -> Result<Bytes> {
        let end = pos.checked_add(len).filter(|&e| e <= self.map.len() as u64);
        if end.is_none() {
            return Err(Error::corruption(
                &self.path,
                pos,
                "read past the end of the file",
            ));
        }
        Ok(self.map.slice(pos as usize..(pos + len) as usize))
    }
}

/// Reserves real blocks for `[at, at + len)`, extending the file to cover them, so stores
/// through the mapping never allocate.
fn preallocate(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let too_large = |_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "segment too large");
    let off = libc::off_t::try_from(at).map_err(too_large)?;
    let n = libc::off_t::try_from(len).map_err(too_large)?;
    // SAFETY: plain system call on an open descriptor owned by `file`; no memory is shared.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), off, n) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate: fall back to a sized (possibly sparse) file.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(at + len),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Sets `len` bytes of `file` from `at` to zeros, keeping the file's length and blocks:
/// one `fallocate(ZERO_RANGE)`, or zeros written where the file system lacks it.
fn zero_range(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    let flags = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
    match rustix::fs::fallocate(file, flags, at, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; 1 << 20];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at + done)?;
                done += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Syncs the whole file system holding `dir` (`syncfs`): after recovery, what it read back
/// may still be only in the page cache (a crash between a write and its sync), and must be
/// durable before anyone is served it. One call, however many topics (a sync per file costs
/// about 60 µs even when nothing is dirty: 0.6 s for 10,000 topics); PostgreSQL's
/// `recovery_init_sync_method = syncfs` does the same.
pub fn sync_filesystem(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from))
        .map_err(|e| Error::io(dir, e))
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
    fn lengths_that_growth_or_a_grow_back_gives_are_segment_lengths() {
        for capacity in [4096, 10_000, 16_384, 100_000, 64 << 20] {
            let mut len = SEGMENT_FIRST_ALLOCATION.min(capacity);
            loop {
                assert!(
                    is_segment_length(len, Some(capacity)),
                    "{len} of {capacity}"
                );
                if len == capacity {
                    break;
                }
                len = next_allocation(len, len + 1, capacity);
            }
            for cut in [0, 64, 204, 4095, 4097, 16_383, 16_385, 20_000] {
                if cut >= capacity {
                    continue;
                }
                let back = regrown_length(cut, capacity);
                assert!(
                    is_segment_length(back, Some(capacity)),
                    "{cut} of {capacity}"
                );
                assert!(back >= cut);
            }
        }
        assert!(!is_segment_length(204, Some(64 << 20)));
        assert!(
            !is_segment_length(8192, Some(64 << 20)),
            "below the first allocation"
        );
        assert!(is_segment_length(8192, Some(8192)));
        assert!(
            is_segment_length(70_001, Some(65_536)),
            "made under a larger capacity"
        );
        assert!(is_segment_length(8192, None));
        assert!(!is_segment_length(10_000, None));
    }

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

    fn tmp() -> Result<tempfile::TempDir> {
        tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))
    }

    /// Length and allocated bytes of the segment's file.
    fn on_disk(w: &SegmentWriter) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(w.segment().path()).expect("stat");
        (md.len(), md.blocks() * 512)
    }

    /// Appends `len` bytes of `fill` the way the committer does: room first, then reserve.
    fn append(w: &mut SegmentWriter, len: usize, fill: u8) -> Result<()> {
        w.make_room(len as u64)?;
        w.reserve(len).expect("room was made").fill(fill);
        w.publish();
        Ok(())
    }

    #[test]
    fn a_new_segment_takes_its_first_step_not_its_capacity() -> Result<()> {
        let dir = tmp()?;
        let w = SegmentWriter::create(dir.path(), 0, 64 << 20)?;
        let (len, blocks) = on_disk(&w);
        assert_eq!(len, SEGMENT_FIRST_ALLOCATION);
        assert_eq!(w.segment().allocated(), SEGMENT_FIRST_ALLOCATION);
        assert_eq!(w.segment().capacity(), 64 << 20);
        assert_eq!(w.remaining(), (64 << 20) - SEGMENT_HEADER_LEN as u64);
        assert!(
            blocks <= 2 * SEGMENT_FIRST_ALLOCATION,
            "{blocks} bytes allocated"
        );
        assert_eq!(w.contents().len() as u64, SEGMENT_FIRST_ALLOCATION);
        Ok(())
    }

    #[test]
    fn reserve_refuses_bytes_beyond_the_allocated_end() -> Result<()> {
        let dir = tmp()?;
        let mut w = SegmentWriter::create(dir.path(), 0, 1 << 20)?;
        let room = (SEGMENT_FIRST_ALLOCATION - w.cursor()) as usize;
        assert!(w.reserve(room + 1).is_none(), "past the file's end");
        assert!(w.reserve(room).is_some(), "up to the file's end");
        Ok(())
    }

    #[test]
    fn growth_doubles_up_to_the_step_limit_and_stops_at_capacity() -> Result<()> {
        let dir = tmp()?;
        let capacity = 24 << 20;
        let mut w = SegmentWriter::create(dir.path(), 0, capacity)?;
        let mut sizes = vec![w.segment().allocated()];
        while w.remaining() >= 4096 {
            append(&mut w, 4096, 0xA5)?;
            let a = w.segment().allocated();
            if a != *sizes.last().expect("one") {
                sizes.push(a);
            }
            assert!(w.cursor() <= a, "cursor past the allocated end");
            assert_eq!(on_disk(&w).0, a, "the file length is the allocation");
        }
        let k = 1024;
        assert_eq!(
            sizes[..10],
            [
                16 * k,
                32 * k,
                64 * k,
                128 * k,
                256 * k,
                512 * k,
                1024 * k,
                2048 * k,
                4096 * k,
                8192 * k
            ],
            "{sizes:?}"
        );
        for pair in sizes.windows(2) {
            assert!(pair[1] - pair[0] <= SEGMENT_MAX_GROWTH, "{sizes:?}");
        }
        assert_eq!(*sizes.last().expect("one"), capacity, "grown to capacity");
        assert!(
            w.make_room(w.remaining() + 1).is_err(),
            "never past capacity"
        );
        assert_eq!(on_disk(&w).0, capacity);
        Ok(())
    }

    #[test]
    fn one_large_append_grows_the_file_enough_at_once() -> Result<()> {
        let dir = tmp()?;
        let mut w = SegmentWriter::create(dir.path(), 0, 8 << 20)?;
        append(&mut w, 1 << 20, 1)?;
        assert!(w.segment().allocated() >= w.cursor());
        assert_eq!(w.segment().allocated() % SEGMENT_ALLOCATION_UNIT, 0);
        assert_eq!(
            w.segment().read(SEGMENT_HEADER_LEN as u64, 1 << 20)?[12345],
            1
        );
        Ok(())
    }

    #[test]
    fn a_grown_segment_reopens_at_its_length_and_grows_on() -> Result<()> {
        let dir = tmp()?;
        let mut w = SegmentWriter::create(dir.path(), 7, 1 << 20)?;
        append(&mut w, 20_000, 3)?;
        let end = w.cursor();
        let path = w.segment().path().to_path_buf();
        let allocated = w.segment().allocated();
        assert_eq!(allocated, 32 * 1024);
        drop(w);
        let mut r = SegmentWriter::open(&path, 1 << 20)?;
        assert_eq!(r.segment().base_offset(), 7);
        assert_eq!(r.segment().allocated(), allocated);
        assert_eq!(r.segment().capacity(), 1 << 20);
        assert_eq!(r.contents().len() as u64, allocated);
        assert!(r.contents()[SEGMENT_HEADER_LEN..end as usize]
            .iter()
            .all(|&b| b == 3));
        r.set_cursor(end);
        r.publish();
        append(&mut r, 40_000, 4)?;
        assert!(r.segment().allocated() > allocated);
        // A sealed segment opened at capacity 0 maps just its length.
        let s = SegmentWriter::open(&path, 0)?;
        assert_eq!(s.segment().capacity(), s.segment().allocated());
        Ok(())
    }

    #[test]
    fn a_cut_tail_keeps_the_file_length() -> Result<()> {
        let dir = tmp()?;
        let mut w = SegmentWriter::create(dir.path(), 0, 1 << 20)?;
        append(&mut w, 30_000, 9)?;
        let allocated = w.segment().allocated();
        w.truncate_tail(1000)?;
        assert_eq!(w.cursor(), 1000);
        assert_eq!(on_disk(&w).0, allocated);
        let reopened = SegmentWriter::open(w.segment().path(), 1 << 20)?;
        assert!(reopened.contents()[1000..].iter().all(|&b| b == 0));
        Ok(())
    }

    /// A reader holding the old mapping past the cut reads zeros there, even while the cut
    /// is made: the file is never shrunk under it (a mapped page past the end of its file
    /// is SIGBUS, which would kill this test process).
    #[test]
    fn a_mapping_held_across_a_cut_reads_zeros_past_it() -> Result<()> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tmp()?;
        let mut w = SegmentWriter::create(dir.path(), 0, 1 << 20)?;
        let append_and_hold = |w: &mut SegmentWriter| -> Result<Bytes> {
            append(w, 300_000, 9)?;
            w.segment().bytes(0, 300_000)
        };
        for _ in 0..10 {
            let held = append_and_hold(&mut w)?;
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (held, stop) = (held.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut passes = 0u64;
                    while !stop.load(Ordering::Relaxed) || passes == 0 {
                        let sum: u64 = held.iter().step_by(4096).map(|&b| u64::from(b)).sum();
                        std::hint::black_box(sum);
                        passes += 1;
                    }
                })
            };
            let allocated = w.segment().allocated();
            w.truncate_tail(1000)?;
            stop.store(true, Ordering::Relaxed);
            reader.join().expect("the reader survived the cut");
            assert_eq!(on_disk(&w).0, allocated);
            assert!(held[1000..].iter().all(|&b| b == 0));
            assert!(held[SEGMENT_HEADER_LEN..1000].iter().all(|&b| b == 9));
        }
        Ok(())
    }

    #[test]
    fn no_descriptor_is_kept() -> Result<()> {
        let dir = tmp()?;
        let count = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        let before = count();
        let mut ws = Vec::new();
        for base in 0..20 {
            let mut w = SegmentWriter::create(dir.path(), base, 1 << 20)?;
            append(&mut w, 20_000, 1)?;
            w.segment()
                .sync_range(SEGMENT_HEADER_LEN as u64, 20_000, SyncMethod::Fdatasync)?;
            ws.push(w);
        }
        // Other tests run in parallel threads and may hold a few descriptors for a moment.
        assert!(
            count() < before + 10,
            "{} fds for 20 segments",
            count() - before
        );
        Ok(())
    }
}
