//! Opening a topic's segments after a start or a crash: check every record, rebuild the
//! in-memory state through [`RecoverySink`], and cut a torn tail from the last segment.
//!
//! The contract: a torn tail is what a crash leaves in the last segment, and is absorbed
//! (cut back to the last valid record, the cut bytes kept in a `.torn` file beside it,
//! logged; a first cut record that was written whole, its CRC stored, is damage rather
//! than a crash's work, and [`TornTail::written_whole`] says so to the caller, who gives
//! the topic a new epoch). A bad record in the last segment is a torn tail only if nothing
//! valid follows it: past it, [`look_past`] looks for any record with a valid CRC and a
//! later offset, and if there is one the damage is interior. Interior damage, and damage
//! anywhere else, refuses to open, naming the file and byte position; nothing is cut or
//! deleted. Gap records (left by `framecast repair`) stand for lost offsets: the sink gets
//! them as [`RecoverySink::gap`], and the offsets after them are never handed out again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::active;
use super::format::{
    parse_run_file_name, parse_segment_file_name, segment_file_name, ACTIVE_FILE, MANIFEST_FILE,
    MIN_SEGMENT_BYTES, RECORD_CRC_AT, SEGMENT_ALLOCATION_UNIT, SEGMENT_FIRST_ALLOCATION,
    SEGMENT_HEADER_LEN, TEMP_SUFFIX, TORN_SUFFIX,
};
use super::manifest::{self, Manifest};
use super::record::{
    first_non_zero, look_past, written_whole, Found, Gap, Header, RecordRef, Step, Walk,
};
use super::run::Run;
use super::segment::{is_segment_length, sync_dir, Segment, SegmentWriter};
use super::{Error, Result};

/// Receives what recovery finds, in log order. The index implements this; it never sees
/// the file format.
pub trait RecoverySink {
    /// Recovery starts; frames below `first_offset` were removed by retention.
    fn begin(&mut self, first_offset: u64) {
        let _ = first_offset;
    }
    /// A verified sorted run (runs come before segments, in offset order).
    fn run(&mut self, run: &Arc<Run>) {
        let _ = run;
    }
    /// A record of the run being opened (for the dedup window).
    fn run_record(&mut self, record: &RecordRef<'_>) {
        let _ = record;
    }
    /// A segment starts; its records follow.
    fn segment(&mut self, segment: &Arc<Segment>);
    /// A valid record at byte `position` of the current segment, `len` bytes long.
    fn record(&mut self, record: &RecordRef<'_>, position: u64, len: u64);
    /// Offsets of the current segment that `framecast repair` marked lost.
    fn gap(&mut self, gap: &Gap);
    /// Recovery is about to cut a torn tail from the last segment (its copy is already
    /// kept), or to grow back a last segment something else cut short: the place to record
    /// what that means (a new epoch) before it happens. An error stops the open with
    /// nothing changed.
    fn before_cut(&mut self, loss: TailLoss<'_>) -> Result<()> {
        let _ = loss;
        Ok(())
    }
}

/// What recovery found at the end of the last segment, told to its caller before it
/// changes the file (see [`RecoverySink::before_cut`]).
#[derive(Debug, Clone, Copy)]
pub enum TailLoss<'a> {
    /// A torn tail about to be cut (possibly from a file that was also cut short).
    Torn(&'a TornTail),
    /// A file cut short, with nothing bad left to cut: what was past the cut is lost.
    CutShort(&'a CutShort),
}

/// A last segment whose length framecast never gives a segment file, with its data running
/// to its end: something else cut it short, and the frames past the cut are lost (see
/// [`cut_short`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutShort {
    /// The segment file.
    pub file: PathBuf,
    /// Its length when recovery found it.
    pub len: u64,
    /// Why the length shows a cut.
    pub reason: String,
}

/// A torn tail that recovery cut from the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: PathBuf,
    /// Where the valid data ended and the cut began.
    pub position: u64,
    /// Non-zero extent of the bytes cut.
    pub bytes_dropped: u64,
    /// Why the first cut byte was not a valid record.
    pub reason: String,
    /// Where a copy of the cut bytes was kept.
    pub saved_to: Option<PathBuf>,
    /// The first cut record was written whole and failed its check afterwards (see
    /// [`written_whole`]): damage or a power loss, not a process killed mid-write, so it
    /// may have been acknowledged even under `--fsync always`.
    pub written_whole: bool,
    /// The file was also cut short by something else: frames past the cut are lost.
    pub cut_short: Option<CutShort>,
}

/// The outcome of recovering a topic directory.
#[derive(Debug)]
pub struct Recovered {
    /// The manifest, if the topic ever compacted or removed frames.
    pub manifest: Option<Manifest>,
    /// Sorted runs, in offset order.
    pub runs: Vec<Arc<Run>>,
    /// Every segment but the last, oldest first.
    pub sealed: Vec<Arc<Segment>>,
    /// The last segment, ready for appends; `None` for a directory without segments.
    pub active: Option<SegmentWriter>,
    /// Offset of the first record (the next offset when empty).
    pub first_offset: u64,
    /// Offset the next record gets.
    pub next_offset: u64,
    /// Valid records found at or above `first_offset`.
    pub records: u64,
    /// Bytes of valid records, headers included.
    pub bytes: u64,
    /// The torn tail that was cut, if any.
    pub torn: Option<TornTail>,
    /// The last segment was cut short by something else (grown back since).
    pub cut_short: Option<CutShort>,
}

/// The segment files of `dir` with their base offsets, in offset order.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    Ok(Listing::of(dir)?.segments)
}

/// The files of a log directory that recovery looks at, from one listing.
struct Listing {
    /// Segments with their base offsets, in offset order.
    segments: Vec<(u64, PathBuf)>,
    /// Sorted runs, by file name.
    runs: Vec<(String, PathBuf)>,
    /// Temporary files (a creation or rewrite a crash cut short).
    temps: Vec<PathBuf>,
    /// An `ACTIVE` file is here (read only then: most topics never start a second segment).
    active: bool,
}

impl Listing {
    fn of(dir: &Path) -> Result<Listing> {
        let mut l = Listing {
            segments: Vec::new(),
            runs: Vec::new(),
            temps: Vec::new(),
            active: false,
        };
        let temp = format!(".{TEMP_SUFFIX}");
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ACTIVE_FILE {
                l.active = true;
            } else if name.ends_with(&temp) {
                l.temps.push(entry.path());
            } else if parse_run_file_name(&name).is_some() {
                l.runs.push((name, entry.path()));
            } else if let Some(base) = parse_segment_file_name(&name) {
                l.segments.push((base, entry.path()));
            }
        }
        l.segments.sort();
        l.runs.sort();
        Ok(l)
    }
}

/// Recovers `dir`: reads the manifest, removes files it superseded, verifies every run and
/// scans every segment, feeding `sink`. The last segment is opened to grow up to
/// `segment_bytes`; a file shorter than that is normal (segments grow in steps).
pub fn recover(dir: &Path, segment_bytes: u64, sink: &mut impl RecoverySink) -> Result<Recovered> {
    let manifest = manifest::read(dir)?;
    // Written before manifests carried a CRC: given one now, before any file is removed on
    // its word, rather than at the next compaction (which an idle topic may never have).
    if let Some(m) = manifest.as_ref().filter(|m| m.version < manifest::VERSION) {
        manifest::write(dir, m)?;
    }
    // One look at the directory (after that rewrite, which makes and renames a temporary
    // file) serves every check and the scan: ten thousand topics open at start, a listing
    // each, not three.
    let listing = Listing::of(dir)?;
    if manifest.is_none() {
        check_unmanifested_start(dir, &listing)?;
    }
    let named = if listing.active {
        active::read(dir)?
    } else {
        None
    };
    let (files, superseded) = superseded(manifest.as_ref(), listing);
    check_ends(dir, manifest.as_ref(), named, &files)?;
    let first_offset = match &manifest {
        Some(m) => m.first_offset,
        None => files.first().map_or(0, |f| f.0),
    };
    sink.begin(first_offset);
    let mut out = Recovered {
        manifest: manifest.clone(),
        runs: Vec::new(),
        sealed: Vec::new(),
        active: None,
        first_offset,
        next_offset: 0,
        records: 0,
        bytes: 0,
        torn: None,
        cut_short: None,
    };
    let mut chain: Option<(u64, PathBuf)> = None;
    for name in manifest.iter().flat_map(|m| m.runs.iter()) {
        let path = dir.join(name);
        let (base, end) = parse_run_file_name(name).ok_or_else(|| {
            Error::corruption(&dir.join(MANIFEST_FILE), 0, format!("bad run name {name}"))
        })?;
        if let Some((prev_end, prev)) = &chain {
            if *prev_end != base {
                return Err(Error::corruption(
                    &path,
                    0,
                    format!(
                        "run starts at {base}, {} ended at {prev_end}",
                        prev.display()
                    ),
                ));
            }
        }
        let (mut records, mut bytes) = (0, 0);
        let run = Run::open(&path, |rec, len| {
            sink.run_record(rec);
            if rec.offset >= first_offset {
                records += 1;
                bytes += len;
            }
        })?;
        if (run.base_offset(), run.end_offset()) != (base, end) {
            return Err(Error::corruption(
                &path,
                0,
                "header disagrees with the file name",
            ));
        }
        out.records += records;
        out.bytes += bytes;
        let run = Arc::new(run);
        sink.run(&run);
        out.runs.push(run);
        chain = Some((end, path));
    }
    // Only once every run the manifest names checked out: a compaction that crashed after
    // its manifest but before its deletions left the old segments, still a whole copy of
    // what a damaged run holds.
    remove_superseded(dir, superseded)?;
    out.next_offset = chain
        .as_ref()
        .map_or(files.first().map_or(first_offset, |f| f.0), |c| c.0);
    let last = files.len().saturating_sub(1);
    for (i, (base, path)) in files.iter().enumerate() {
        let is_last = i == last;
        // Sealed segments are mapped at their length: nothing is appended to them again.
        let capacity = if is_last { segment_bytes } else { 0 };
        let mut writer = match SegmentWriter::open(path, capacity) {
            Ok(w) => w,
            Err(e) if is_last && file_is_all_zero(path)? => {
                // Segments are made complete under a temporary name before they are named,
                // so an all-zero segment is not a crash's leftover: its header and every
                // record in it were lost. Removing it would reuse their offsets.
                return Err(Error::corruption(
                    path,
                    0,
                    format!(
                        "{e}: the last segment is all zeros, so the frames it held are lost \
                         (framecast names a segment only once its header is synced); if an \
                         older framecast crashed while creating it, remove the file"
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        let seg_base = writer.segment().base_offset();
        if seg_base != *base {
            return Err(Error::corruption(
                path,
                0,
                format!("header says base offset {seg_base}, file name says {base}"),
            ));
        }
        if seg_base != out.next_offset {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "segment starts at offset {seg_base} but the data before it ends at {}",
                    out.next_offset
                ),
            ));
        }
        sink.segment(writer.segment());
        let scanned = scan(writer.contents(), &mut out, sink);
        let stop = scanned.bad.as_ref().map_or(scanned.end, |b| b.0);
        let short = if is_last {
            cut_short(writer.contents(), stop as usize, Some(segment_bytes)).map(|reason| {
                CutShort {
                    file: path.clone(),
                    len: writer.segment().allocated(),
                    reason,
                }
            })
        } else {
            None
        };
        match scanned.bad {
            None => {
                if let Some(short) = &short {
                    sink.before_cut(TailLoss::CutShort(short))?;
                }
            }
            Some((position, reason)) if !is_last => {
                return Err(Error::corruption(path, position, reason));
            }
            Some((position, reason)) => match scanned.valid_after {
                Some(found) => {
                    // Something valid follows (or stands here, whole, where a crash leaves
                    // none): not a torn write but damage inside acknowledged data. Cutting
                    // here would lose (and later reuse) the offsets of every frame after it.
                    let why = if found.position as u64 == position {
                        "a whole record with a valid checksum stands here, which no crash leaves"
                            .to_string()
                    } else {
                        format!(
                            "a valid record (offset {}) follows at byte {}",
                            found.offset, found.position
                        )
                    };
                    return Err(Error::corruption(
                        path,
                        position,
                        format!("{reason}; {why}, so this is interior damage, not a torn tail"),
                    ));
                }
                None => {
                    let whole = written_whole(&writer.contents()[position as usize..]);
                    let torn = TornTail {
                        file: path.clone(),
                        position,
                        bytes_dropped: 0,
                        reason,
                        saved_to: None,
                        written_whole: whole,
                        cut_short: short.clone(),
                    };
                    out.torn = Some(cut_torn_tail(&mut writer, torn, sink)?);
                }
            },
        }
        if let Some(short) = short {
            warn!(
                file = %short.file.display(),
                len = short.len,
                reason = %short.reason,
                "the last segment was cut short by something other than framecast: the \
                 frames past the cut are lost"
            );
            // Only so that the cut is reported once: a failure (a full disk) costs a second
            // report at the next start, not this one.
            if let Err(e) = writer.grow_back() {
                warn!(file = %short.file.display(), error = %e, "cannot grow the segment back");
            }
            out.cut_short = Some(short);
        }
        writer.set_cursor(scanned.end);
        writer.publish();
        if is_last {
            out.active = Some(writer);
        } else {
            out.sealed.push(Arc::clone(writer.segment()));
        }
    }
    if let (Some((newest, _)), true) = (files.last(), files.len() > 1) {
        // The newest segment has segments before it but ACTIVE does not name it (a crash
        // between a new segment and its ACTIVE, or a log from before ACTIVE existed): named
        // now that every segment checked out, before any frame goes into it, so losing it
        // is found from now on. (A refused open changes nothing.)
        if named.is_none_or(|n| n < *newest) {
            active::write(dir, *newest)?;
            info!(dir = %dir.display(), newest, was = ?named, "ACTIVE now names the newest segment");
        }
    }
    Ok(out)
}

/// Without a manifest (nothing was ever compacted or removed by retention, which write one
/// before deleting anything) the log starts at offset 0, in a segment. Anything else means
/// the manifest or the first segments are missing: refused before any file is removed.
fn check_unmanifested_start(dir: &Path, listing: &Listing) -> Result<()> {
    let manifest = dir.join(MANIFEST_FILE);
    match listing.segments.first() {
        Some((0, _)) => Ok(()),
        Some((base, path)) => Err(Error::corruption(
            path,
            0,
            format!(
                "the log has no {MANIFEST_FILE}, so it starts at offset 0, but its first \
                 segment starts at {base}: the {MANIFEST_FILE} or the segments before it are \
                 missing"
            ),
        )),
        None => match listing.runs.first().map(|(_, path)| path) {
            Some(run) => Err(Error::corruption(
                &manifest,
                0,
                format!(
                    "missing: the sorted run {} is here but no {MANIFEST_FILE} names it and no \
                     segment holds its frames",
                    run.display()
                ),
            )),
            None => Ok(()),
        },
    }
}

/// What [`recover`] would refuse for a segment missing at either end of `dir`'s log (see
/// [`check_ends`]), or for a log with no segment at all (`framecast dump`'s check; the
/// server refuses that through [`crate::wal::Log::open_existing`]): the file and why.
///
/// A server may be running: a listing that a roll, a compaction or a retention pass changed
/// meanwhile (the manifest or `ACTIVE` read before and after it differ) is taken again.
pub fn missing_end(dir: &Path) -> Result<Option<(PathBuf, String)>> {
    match look_at_ends(dir) {
        Err(Error::Corruption { file, reason, .. }) => Ok(Some((file, reason))),
        // Deleted meanwhile (a running server's DeleteTopic): nothing to say.
        Err(_) if !dir.exists() => Ok(None),
        other => other,
    }
}

fn look_at_ends(dir: &Path) -> Result<Option<(PathBuf, String)>> {
    let read_both = || -> Result<_> { Ok((manifest::read(dir)?, active::read(dir)?)) };
    let mut tries = 0;
    let (manifest, named, listing) = loop {
        let before = read_both()?;
        let listing = Listing::of(dir)?;
        let after = read_both()?;
        tries += 1;
        if before == after || tries == 5 {
            break (after.0, after.1, listing);
        }
    };
    let from = manifest.as_ref().map_or(0, |m| m.segments_from);
    let files: Vec<(u64, PathBuf)> = listing
        .segments
        .into_iter()
        .filter(|(base, _)| *base >= from)
        .collect();
    if files.is_empty() && named.is_none() {
        return Ok(Some((
            dir.to_path_buf(),
            "missing: the log has no segment, so every frame it held is lost".to_string(),
        )));
    }
    check_ends(dir, manifest.as_ref(), named, &files).map(|()| None)
}

/// The segments present must reach both ends of the log: the newest must start at or past
/// the base `ACTIVE` names, and (without runs) the oldest must hold the manifest's first
/// retained offset. A segment missing at either end would otherwise pass unseen: the chain
/// of base offsets only shows a missing segment between two present ones.
/// `named`: the base `ACTIVE` names.
fn check_ends(
    dir: &Path,
    manifest: Option<&Manifest>,
    named: Option<u64>,
    files: &[(u64, PathBuf)],
) -> Result<()> {
    if let Some(named) = named {
        let newest = files.last().map(|f| f.0);
        if newest.is_none_or(|b| b < named) {
            return Err(Error::corruption(
                &dir.join(segment_file_name(named)),
                0,
                active::missing_reason(named, newest),
            ));
        }
    }
    if let (Some(m), Some((base, path))) = (manifest, files.first()) {
        if m.runs.is_empty() && *base > m.first_offset {
            return Err(Error::corruption(
                path,
                0,
                format!(
                    "the {MANIFEST_FILE} says the log starts at offset {}, but its oldest \
                     segment starts at {base}: the segments before it are missing",
                    m.first_offset
                ),
            ));
        }
    }
    Ok(())
}

/// Splits the listing into the segments that stay (in offset order) and what a committed
/// compaction or retention pass superseded but a crash left behind: temporary files, runs
/// the manifest does not name, segments below `segments_from`. Nothing else is ever
/// removed.
fn superseded(
    manifest: Option<&Manifest>,
    listing: Listing,
) -> (Vec<(u64, PathBuf)>, Vec<PathBuf>) {
    let Listing {
        segments,
        runs,
        temps,
        active: _,
    } = listing;
    let stale_runs = runs
        .into_iter()
        .filter(|(name, _)| !manifest.is_some_and(|m| m.runs.contains(name)))
        .map(|(_, path)| path);
    let (below, kept): (Vec<_>, Vec<_>) = segments
        .into_iter()
        .partition(|(base, _)| manifest.is_some_and(|m| *base < m.segments_from));
    let doomed = temps
        .into_iter()
        .chain(stale_runs)
        .chain(below.into_iter().map(|(_, path)| path))
        .collect();
    (kept, doomed)
}

/// Removes the files the manifest superseded.
fn remove_superseded(dir: &Path, doomed: Vec<PathBuf>) -> Result<()> {
    for path in &doomed {
        warn!(file = %path.display(), "removing a file superseded by the manifest");
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    // Only a removal needs the directory synced: a start with nothing to clean up costs no
    // sync per topic (ten thousand topics would otherwise mean ten thousand syncs).
    if !doomed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Where a segment's walk stopped.
struct Scanned {
    /// Where the valid data ends.
    end: u64,
    /// The first bad byte and why, when the bytes after `end` are not clean zeros.
    bad: Option<(u64, String)>,
    /// A valid record (or gap) found past the bad byte: the damage is interior.
    valid_after: Option<Found>,
}

/// Walks records from the header on, feeding `sink`. Past a bad record, looks ahead for
/// any later valid record (only then: the common clean case pays nothing).
fn scan(contents: &[u8], out: &mut Recovered, sink: &mut impl RecoverySink) -> Scanned {
    let mut walk = Walk::new(contents, SEGMENT_HEADER_LEN).expecting(out.next_offset);
    for (pos, step) in walk.by_ref() {
        match step {
            Step::Record(rec, len) => {
                sink.record(&rec, pos as u64, len as u64);
                out.next_offset += 1;
                if rec.offset >= out.first_offset {
                    out.records += 1;
                    out.bytes += len as u64;
                }
            }
            Step::Gap(gap, _) => {
                sink.gap(&gap);
                out.next_offset = gap.end();
            }
            Step::End => break,
            Step::Invalid(reason) => {
                return Scanned {
                    end: pos as u64,
                    bad: Some((pos as u64, reason)),
                    valid_after: look_past(contents, pos, out.next_offset),
                };
            }
        }
    }
    Scanned {
        end: walk.position() as u64,
        bad: None,
        valid_after: None,
    }
}

/// Cuts the last segment back to `torn.position`, keeping a copy of the non-zero bytes cut
/// (filled in `torn`).
fn cut_torn_tail(
    writer: &mut SegmentWriter,
    mut torn: TornTail,
    sink: &mut impl RecoverySink,
) -> Result<TornTail> {
    let path = torn.file.clone();
    let position = torn.position;
    let tail = &writer.contents()[position as usize..];
    let extent = last_non_zero(tail).map_or(0, |i| i + 1);
    if extent > 0 {
        // A name of its own: a later cut at the same place (the frame written there since
        // torn in turn) must not overwrite this copy.
        let copy = torn_name(&path, &position.to_string());
        write_synced(&copy, &tail[..extent])?;
        torn.saved_to = Some(copy);
    }
    torn.bytes_dropped = extent as u64;
    // Before anything is cut: a crash after this call cuts (and calls) again next time.
    sink.before_cut(TailLoss::Torn(&torn))?;
    writer.truncate_tail(position)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    warn!(
        file = %path.display(),
        position,
        bytes_dropped = torn.bytes_dropped,
        reason = %torn.reason,
        saved_to = ?torn.saved_to,
        written_whole = torn.written_whole,
        "cut a torn tail from the last segment"
    );
    Ok(torn)
}

/// Why the last segment's file, walked up to `stop` (where its valid data ends), was cut
/// short by something other than framecast, or `None`. Two things must hold:
///
/// - its length is one framecast never gives a segment file ([`is_segment_length`];
///   `capacity` is the segment capacity, `None` when not known, as to `framecast dump`);
/// - its data runs to the end of the file: fewer than 4 zero bytes follow its last
///   non-zero byte (a record's length field, never all zero, could have begun there), or
///   the bad bytes at `stop` claim more room than the file has left. Zeros before the end
///   show that nothing but zeros was cut: records never follow zeros.
pub fn cut_short(contents: &[u8], stop: usize, capacity: Option<u64>) -> Option<String> {
    let len = contents.len() as u64;
    if is_segment_length(len, capacity) {
        return None;
    }
    let tail = &contents[stop.min(contents.len())..];
    let data_end = last_non_zero(tail).map_or(0, |i| i + 1);
    let runs_past = data_end > 0 && Header::peek(tail).is_none_or(|h| h.length > tail.len());
    // The bytes before the CRC: a record's length field.
    const LENGTH_FIELD: usize = RECORD_CRC_AT;
    if tail.len() - data_end >= LENGTH_FIELD && !runs_past {
        return None;
    }
    let steps = match capacity {
        Some(cap) => format!(
            "{} bytes, then whole {SEGMENT_ALLOCATION_UNIT}-byte units up to its capacity of {cap}",
            SEGMENT_FIRST_ALLOCATION.min(cap)
        ),
        None => format!(
            "whole {SEGMENT_ALLOCATION_UNIT}-byte units of {MIN_SEGMENT_BYTES} bytes or more"
        ),
    };
    Some(format!(
        "the file is {len} bytes long, which framecast never makes a segment ({steps}; it never \
         shrinks one), and its data runs to its end: something else cut it short, and the \
         frames past the cut are lost"
    ))
}

/// A `.torn` name beside the segment `path` that does not exist yet:
/// `<segment>.<tag>.torn`, or `<segment>.<tag>.<n>.torn` with the first free `n`.
pub(super) fn torn_name(path: &Path, tag: &str) -> PathBuf {
    let base = path.with_extension(format!("seg.{tag}.{TORN_SUFFIX}"));
    if !base.exists() {
        return base;
    }
    (1u32..)
        .map(|n| path.with_extension(format!("seg.{tag}.{n}.{TORN_SUFFIX}")))
        .find(|p| !p.exists())
        .unwrap_or(base)
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))?;
    info!(file = %path.display(), bytes = bytes.len(), "kept a copy of the cut tail");
    Ok(())
}

fn file_is_all_zero(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(true);
        }
        if first_non_zero(&buf[..n]).is_some() {
            return Ok(false);
        }
    }
}

fn last_non_zero(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&x| x != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::RecordRef;

    #[test]
    fn a_cut_is_seen_only_when_the_length_is_odd_and_the_data_runs_to_the_end() {
        let rec = RecordRef {
            offset: 0,
            seq_no: 1,
            timestamp: 2,
            key_time: 0,
            key: b"",
            payload: b"payload",
        }
        .to_vec();
        let mut file = vec![1u8; SEGMENT_HEADER_LEN];
        file.extend(&rec);
        let end = file.len();
        let cap = Some(64 << 20);
        // Cut right after the record, or inside it: the data runs to the end.
        assert!(cut_short(&file, end, cap).is_some());
        assert!(cut_short(&file[..end - 5], SEGMENT_HEADER_LEN, cap).is_some());
        // Cut a few bytes past it: a record's length field could have begun there.
        let mut three = file.clone();
        three.extend([0u8; 3]);
        assert!(cut_short(&three, end, cap).is_some());
        // Zeros before the end: nothing but zeros was cut.
        let mut zeros = file.clone();
        zeros.extend([0u8; 4]);
        assert_eq!(cut_short(&zeros, end, cap), None);
        // A length framecast gives a segment says nothing.
        let mut full = file.clone();
        full.resize(16 << 10, 7);
        assert_eq!(cut_short(&full, end, cap), None);
        // A torn record whose length runs past the end, zeros after its header.
        let mut torn = file.clone();
        torn.extend(&rec[..4]);
        torn.extend([0u8; 40]);
        assert!(cut_short(&torn, end, cap).is_some());
    }
}
