//! `framecast repair`, the log part: on a stopped server's topic directory, set damaged
//! bytes aside and mark the offsets they held as lost, keeping every valid record where it
//! is, at its offset.
//!
//! For each damaged place of a segment (a record that does not decode, found by the one
//! record walker) the repair:
//! 1. looks past it for the next valid record ([`scan_ahead`]); the bytes in between are
//!    the damage, and the offsets between the last good record and that one are lost;
//! 2. copies the damaged bytes to `<segment>.<position>.damaged`, synced (an existing copy
//!    from an interrupted repair is kept, as it holds the original bytes);
//! 3. overwrites them in place with one gap record of exactly their length (see
//!    [`crate::wal::record::Gap`]) and syncs the segment.
//!
//! Nothing moves, so the positions of every other record are unchanged. Recovery then reads
//! a gap record as "these offsets are lost": the offset map holds them as holes, readers skip
//! them, and the next offsets handed out follow the old end (lost offsets are never reused).
//! Damage at the end of the last segment with nothing valid after it is a torn tail: its
//! bytes are set aside and zeroed, as startup would cut them. A crash part way leaves either
//! the damage (repair again) or the gap record; both are safe.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::active;
use super::format::{
    decode_segment_header, parse_segment_file_name, segment_file_name, ACTIVE_FILE,
    SEGMENT_HEADER_LEN,
};
use super::manifest;
use super::record::{
    checksummed, first_non_zero, look_from, scan_ahead, Gap, Step, Walk, MAX_GAP_OFFSETS,
    MIN_GAP_LEN,
};
use super::recovery::list_segments;
use super::segment::{sync_dir, MappedFile};
use super::{Error, Result};

/// Suffix of a copy of bytes that repair set aside.
pub const DAMAGED_SUFFIX: &str = "damaged";

/// One damaged place that repair dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    /// The segment file.
    pub file: PathBuf,
    /// First damaged byte.
    pub start: u64,
    /// One past the last damaged byte.
    pub end: u64,
    /// Offsets lost, `first..end` (empty when the damage held no whole frame).
    pub lost: std::ops::Range<u64>,
    /// Why the first damaged byte was not a valid record.
    pub reason: String,
    /// Where the damaged bytes were copied (`None` for a segment that is missing).
    pub saved_to: Option<PathBuf>,
    /// True for a torn tail (zeroed, the offsets after it are handed out again under a
    /// new epoch), false for interior damage (marked with a gap record).
    pub tail: bool,
}

/// Repairs every segment of the topic directory `dir`; returns what was done, in file
/// order (empty when nothing was damaged). The server must be stopped.
pub fn repair_dir(dir: &Path) -> Result<Vec<Repaired>> {
    repair_dir_with(dir, &mut || Ok(()))
}

/// [`repair_dir`], calling `before_change` once before the first file is changed (not at
/// all when nothing is damaged): the place to give the topic its new epoch, durably, so
/// that a crash part way through a repair never leaves a log that hands lost offsets out
/// again under the old epoch. An error from it stops the repair with nothing changed.
pub fn repair_dir_with(
    dir: &Path,
    before_change: &mut dyn FnMut() -> Result<()>,
) -> Result<Vec<Repaired>> {
    let mut first = FirstChange {
        hook: before_change,
        called: false,
    };
    let manifest = manifest::read(dir)?;
    let from = manifest.as_ref().map_or(0, |m| m.segments_from);
    let files: Vec<(u64, PathBuf)> = list_segments(dir)?
        .into_iter()
        .filter(|(base, _)| *base >= from)
        .collect();
    let mut done = Vec::new();
    if let Some(m) = &manifest {
        done.extend(settle_oldest(dir, m, &files, &mut first)?);
    }
    for (i, (_, path)) in files.iter().enumerate() {
        let next_base = files.get(i + 1).map(|f| f.0);
        done.extend(repair_segment(path, next_base, &mut first)?);
    }
    if !done.is_empty() {
        sync_dir(dir)?;
    }
    let missing = settle_newest(dir, from, &done, &mut first)?;
    done.extend(missing);
    Ok(done)
}

/// The caller's hook, called once, before repair changes the first file.
struct FirstChange<'a> {
    hook: &'a mut dyn FnMut() -> Result<()>,
    called: bool,
}

impl FirstChange<'_> {
    /// A file is about to change.
    fn now(&mut self) -> Result<()> {
        if !self.called {
            (self.hook)()?;
            self.called = true;
        }
        Ok(())
    }
}

/// Accepts the loss of segments missing at the start of the log: with no runs, the oldest
/// segment present must hold the manifest's first retained offset (startup refuses it
/// otherwise). The manifest's first offset moves up to that segment's base; the offsets in
/// between are lost (counted: they lay between the two), and none is handed out again.
fn settle_oldest(
    dir: &Path,
    m: &manifest::Manifest,
    files: &[(u64, PathBuf)],
    first: &mut FirstChange<'_>,
) -> Result<Option<Repaired>> {
    let Some((base, path)) = files.first() else {
        return Ok(None);
    };
    if !m.runs.is_empty() || *base <= m.first_offset {
        return Ok(None);
    }
    first.now()?;
    manifest::write(
        dir,
        &manifest::Manifest {
            first_offset: *base,
            segments_from: m.segments_from.max(*base),
            ..m.clone()
        },
    )?;
    let reason = format!(
        "missing: the segments before it (offsets {}..{base}); the log now starts at {base}",
        m.first_offset
    );
    warn!(file = %path.display(), reason = %reason, "accepted the loss of missing oldest segments");
    Ok(Some(Repaired {
        file: path.clone(),
        start: 0,
        end: 0,
        lost: m.first_offset..*base,
        reason,
        saved_to: None,
        tail: false,
    }))
}

/// Accepts the loss of segments missing at the end of the log: when `ACTIVE` names a base
/// past the newest segment present (or no segment is left at all), `ACTIVE` is brought
/// down to the newest present (or removed), so the log continues from there under the new
/// epoch repair gives it. How many frames the missing files held, nothing on disk says.
/// `done`: what was repaired before (a segment of zeros set aside is already reported).
fn settle_newest(
    dir: &Path,
    from: u64,
    done: &[Repaired],
    first: &mut FirstChange<'_>,
) -> Result<Vec<Repaired>> {
    let newest = list_segments(dir)?
        .into_iter()
        .filter(|(base, _)| *base >= from)
        .map(|(base, _)| base)
        .next_back();
    let mut out = Vec::new();
    let named = match active::read(dir) {
        Ok(named) => named,
        Err(Error::Corruption { reason, .. }) => {
            // Which segment it named is lost with it: the segments present are taken as
            // the whole log, and the loss (if any) cannot be counted.
            first.now()?;
            rewrite_active(dir, newest)?;
            warn!(dir = %dir.display(), reason = %reason, "rewrote an unreadable ACTIVE file from the segments present");
            out.push(Repaired {
                file: dir.join(ACTIVE_FILE),
                start: 0,
                end: 0,
                lost: 0..0,
                reason: format!(
                    "{reason}: rewritten from the segments present (whether a newest segment \
                     went missing with it, nothing on disk says)"
                ),
                saved_to: None,
                tail: false,
            });
            None
        }
        Err(e) => return Err(e),
    };
    let set_aside = done
        .iter()
        .filter(|r| r.tail && r.start == 0 && r.saved_to.is_some())
        .map(|r| r.lost.start)
        .next_back();
    let missing = match (named, newest) {
        (Some(named), Some(b)) if b < named => Some(named),
        (Some(named), None) => Some(named),
        // No ACTIVE file (the log never started a second segment) and no segment: the
        // first segment, and whatever it held, is lost.
        (None, None) => Some(from),
        _ => None,
    };
    let Some(base) = missing else {
        return Ok(out);
    };
    first.now()?;
    rewrite_active(dir, newest)?;
    // A segment of zeros set aside is reported already: the one ACTIVE named, or the only
    // one left.
    if set_aside == Some(base) || (set_aside.is_some() && newest.is_none()) {
        return Ok(out);
    }
    let file = dir.join(segment_file_name(base));
    let reason = match newest {
        Some(b) => format!(
            "missing: {ACTIVE_FILE} named it as the newest segment, the newest present starts at {b}"
        ),
        None => "missing: no segment is left".to_string(),
    };
    warn!(file = %file.display(), reason = %reason, "accepted the loss of a missing segment");
    out.push(Repaired {
        file,
        start: 0,
        end: 0,
        lost: base..base,
        reason,
        saved_to: None,
        tail: true,
    });
    Ok(out)
}

/// Makes `ACTIVE` name `newest`, or removes it when no segment is left.
fn rewrite_active(dir: &Path, newest: Option<u64>) -> Result<()> {
    match newest {
        Some(b) => active::write(dir, b),
        None => active::remove(dir),
    }
}

/// Repairs one segment. `next_base` is the next segment's base offset (`None` for the last
/// segment), which bounds the offsets lost at the end of a sealed segment.
fn repair_segment(
    path: &Path,
    next_base: Option<u64>,
    first: &mut FirstChange<'_>,
) -> Result<Vec<Repaired>> {
    // Mapped, not read: a segment may be 4 GiB (`--segment-bytes`), and the page cache
    // holds it, not the heap. Patches go to the file with positioned writes, each over
    // bytes already walked past: the walk goes on from the end of the patch.
    let mapped = MappedFile::scan_segment(path)?;
    let data = mapped.as_slice();
    if next_base.is_none() && first_non_zero(data).is_none() {
        first.now()?;
        return set_aside_zeros(path, data.len());
    }
    let base = decode_segment_header(data).map_err(|reason| {
        Error::corruption(
            path,
            0,
            format!("{reason} (repair cannot rebuild a segment header)"),
        )
    })?;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut done = Vec::new();
    let (mut start, mut expect) = (SEGMENT_HEADER_LEN, base);
    loop {
        let mut walk = Walk::new(data, start).expecting(expect);
        let (pos, reason) = loop {
            match walk.next() {
                Some((_, Step::Record(..) | Step::Gap(..))) => {}
                Some((pos, Step::Invalid(reason))) => break (pos, reason),
                Some((_, Step::End)) | None => return Ok(done),
            }
        };
        expect = walk.expected_offset().unwrap_or(expect);
        // Past a whole record of an earlier offset (a stale copy over the frame that stood
        // here: its bytes are the damage) and past a torn record's own payload, whatever
        // that holds (see `look_past`).
        let from = match checksummed(&data[pos..]) {
            Some(h) if h.offset < expect => pos + h.length,
            _ => look_from(data, pos, expect),
        };
        let found = scan_ahead(data, from, expect.checked_sub(1));
        let extent = pos + non_zero_len(&data[pos..]);
        let (end, lost_end, tail) = match (found, next_base) {
            (Some(f), _) => (f.position, f.offset, false),
            (None, Some(b)) => (extent.max(pos + MIN_GAP_LEN).min(data.len()), b, false),
            (None, None) => (extent, expect, true),
        };
        // Made before anything changes: a gap that cannot be marked changes nothing.
        let count = lost_end.saturating_sub(expect);
        let patch = if tail {
            vec![0u8; end - pos]
        } else {
            Gap {
                offset: expect,
                count,
            }
            .encode(end - pos)
            .ok_or_else(|| {
                let why = if count > MAX_GAP_OFFSETS {
                    format!(
                        "it loses {count} offsets, more than a gap record marks ({MAX_GAP_OFFSETS})"
                    )
                } else {
                    format!(
                        "the damage is {} bytes, too short to mark as a gap",
                        end - pos
                    )
                };
                Error::corruption(path, pos as u64, format!("{reason}; {why}"))
            })?
        };
        first.now()?;
        let saved_to = save_aside(path, pos, &data[pos..end])?;
        file.write_all_at(&patch, pos as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(path, e))?;
        warn!(
            file = %path.display(),
            start = pos,
            end,
            lost_from = expect,
            lost_until = lost_end,
            tail,
            reason = %reason,
            saved_to = %saved_to.display(),
            "repaired damage"
        );
        done.push(Repaired {
            file: path.to_path_buf(),
            start: pos as u64,
            end: end as u64,
            lost: expect..lost_end.max(expect),
            reason,
            saved_to: Some(saved_to),
            tail,
        });
        if tail {
            return Ok(done);
        }
        (start, expect) = (end, lost_end.max(expect));
    }
}

/// Sets aside a last segment of zeros (startup refuses it: its header and whatever records
/// it held are lost) by renaming it to `<segment>.0.damaged`: the log then starts a new
/// segment at its base, and the offsets from there on are handed out again under the new
/// epoch repair gives the topic. How many frames it held cannot be known.
fn set_aside_zeros(path: &Path, len: usize) -> Result<Vec<Repaired>> {
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_file_name)
        .ok_or_else(|| Error::corruption(path, 0, "not a segment file name"))?;
    // A copy set aside before (a segment at the same base zeroed again) is kept.
    let saved_to = (0u32..)
        .map(|n| {
            let mut name = path.as_os_str().to_owned();
            name.push(match n {
                0 => format!(".0.{DAMAGED_SUFFIX}"),
                n => format!(".0.{DAMAGED_SUFFIX}.{n}"),
            });
            PathBuf::from(name)
        })
        .find(|p| !p.exists())
        .ok_or_else(|| Error::corruption(path, 0, "no free name to set it aside"))?;
    std::fs::rename(path, &saved_to).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    let reason = "the last segment is all zeros: its header and every record it held are \
                  lost (how many, nothing on disk says)"
        .to_string();
    warn!(file = %path.display(), base, saved_to = %saved_to.display(), "repaired a last segment of zeros");
    Ok(vec![Repaired {
        file: path.to_path_buf(),
        start: 0,
        end: len as u64,
        lost: base..base,
        reason,
        saved_to: Some(saved_to),
        tail: true,
    }])
}

/// Length of `b` up to and including its last non-zero byte.
fn non_zero_len(b: &[u8]) -> usize {
    b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1)
}

/// Copies `bytes` (from byte `pos` of `segment`) to `<segment>.<pos>.damaged`, synced. An
/// existing copy is kept: it came from an interrupted repair and holds the original bytes.
fn save_aside(segment: &Path, pos: usize, bytes: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    let mut name = segment.as_os_str().to_owned();
    name.push(format!(".{pos}.{DAMAGED_SUFFIX}"));
    let copy = PathBuf::from(name);
    if copy.exists() {
        return Ok(copy);
    }
    let temp = copy.with_extension(format!("{DAMAGED_SUFFIX}.partial"));
    let mut f = std::fs::File::create(&temp).map_err(|e| Error::io(&temp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&temp, e))?;
    std::fs::rename(&temp, &copy).map_err(|e| Error::io(&copy, e))?;
    if let Some(dir) = copy.parent() {
        sync_dir(dir)?;
    }
    Ok(copy)
}
