//! `framecast dump`: print and verify segment files. It only reads files, through
//! read-only mappings (a segment may be gigabytes; the page cache holds it, not the heap),
//! so it is safe on a data dir that a running server is writing: framecast never shrinks a
//! file, so no mapped page loses its backing.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::broker::topics::valid_topic_name;
use crate::wal::format::{
    decode_segment_header, parse_run_file_name, parse_segment_file_name, MANIFEST_FILE,
    SEGMENT_HEADER_LEN,
};
use crate::wal::record::{decode, look_past, Decoded, RecordRef, Step, Walk};
use crate::wal::recovery::{cut_short, missing_end};
use crate::wal::{list_segments, manifest, Error, MappedFile, Result, Run};

/// What to dump.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// The data directory (`<data-dir>/topics/<topic>/*.seg`).
    pub data_dir: PathBuf,
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this segment file.
    pub segment: Option<PathBuf>,
    /// Check every record; print only problems and summaries.
    pub verify: bool,
    /// One JSON object per line.
    pub json: bool,
}

/// What a dump found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpOutcome {
    /// Segments read.
    pub segments: u64,
    /// Valid records.
    pub records: u64,
    /// Damaged places: bad records or garbage where recovery would refuse to start.
    pub bad: u64,
    /// Torn tails: garbage at the end of a topic's last segment, which startup would cut.
    pub torn_tails: u64,
}

/// What a walk over one segment file found.
struct Scanned {
    summary: Summary,
    /// Where the walk stopped: the end of the valid data, or the bad bytes.
    stop: usize,
    problem: Option<(u64, String)>,
    /// A valid record follows the problem: interior damage, never a torn tail.
    valid_after: bool,
}

#[derive(Default)]
struct Summary {
    base: u64,
    records: u64,
    bytes: u64,
    first: Option<u64>,
    last: Option<u64>,
    min_seq: Option<u64>,
    max_seq: Option<u64>,
    /// Gap records left by repair: `(position, first lost offset, end)`.
    gaps: Vec<(u64, u64, u64)>,
}

/// Runs a dump, writing to `out`.
pub fn run(opts: &DumpOptions, out: &mut dyn Write) -> Result<DumpOutcome> {
    let mut outcome = DumpOutcome::default();
    let jobs = plan(opts)?;
    for (topic, files) in jobs {
        let last_segment = files.iter().rposition(|p| !is_run(p));
        // Where the next file must start, as recovery checks it: a topic without a
        // manifest starts at 0; each file starts where the data before it ended.
        let whole = opts.segment.is_none();
        let mut expected = match files.first().and_then(|p| p.parent()) {
            Some(dir) if whole && !dir.join(MANIFEST_FILE).exists() => Some(0),
            _ => None,
        };
        for (i, path) in files.iter().enumerate() {
            let span = if is_run(path) {
                dump_run(opts, &topic, path, out, &mut outcome)?
            } else {
                let is_last = Some(i) == last_segment && whole;
                dump_segment(opts, &topic, path, is_last, out, &mut outcome)?
            };
            if let (Some((base, _)), Some(want)) = (span, expected) {
                if whole && base != want {
                    let reason = if i == 0 {
                        format!(
                            "the topic has no {MANIFEST_FILE}, so it starts at offset 0, but its \
                             first file starts at {base}: files are missing"
                        )
                    } else {
                        format!(
                            "starts at offset {base} but the data before it ends at {want}: \
                             files or records are missing"
                        )
                    };
                    bad_line(opts, &topic, path, 0, &reason, out, &mut outcome)?;
                }
            }
            expected = span.map(|(_, end)| end);
        }
        if whole {
            let dir = opts.data_dir.join("topics").join(&topic);
            if let Some((path, reason)) = missing_end(&dir)? {
                bad_line(opts, &topic, &path, 0, &reason, out, &mut outcome)?;
            }
        }
    }
    Ok(outcome)
}

/// Prints a damaged place (`BAD <file> at byte P: reason`) and counts it.
fn bad_line(
    opts: &DumpOptions,
    topic: &str,
    path: &Path,
    position: u64,
    reason: &str,
    out: &mut dyn Write,
    outcome: &mut DumpOutcome,
) -> Result<()> {
    outcome.bad += 1;
    let line = if opts.json {
        json!({"type": "bad", "topic": topic, "file": path, "position": position,
               "reason": reason, "crc_ok": false})
        .to_string()
    } else {
        format!("BAD {} at byte {position}: {reason}", path.display())
    };
    writeln!(out, "{line}").map_err(|e| Error::io(Path::new("<stdout>"), e))
}

fn is_run(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_run_file_name)
        .is_some()
}

/// The live files of a topic directory: the manifest's runs, then the segments it keeps,
/// in offset order.
fn topic_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let m = manifest::read(dir)?;
    let mut files: Vec<PathBuf> = m
        .iter()
        .flat_map(|m| m.runs.iter().map(|r| dir.join(r)))
        .collect();
    let from = m.as_ref().map_or(0, |m| m.segments_from);
    files.extend(
        list_segments(dir)?
            .into_iter()
            .filter(|(b, _)| *b >= from)
            .map(|(_, p)| p),
    );
    Ok(files)
}

/// Prints and verifies a sorted run (runs are immutable, so mapping one is safe while a
/// server runs).
fn dump_run(
    opts: &DumpOptions,
    topic: &str,
    path: &Path,
    out: &mut dyn Write,
    outcome: &mut DumpOutcome,
) -> Result<Option<(u64, u64)>> {
    outcome.segments += 1;
    let w = |out: &mut dyn Write, line: String| -> Result<()> {
        writeln!(out, "{line}").map_err(|e| Error::io(Path::new("<stdout>"), e))
    };
    let run = match Run::open(path, |_, _| {}) {
        Ok(r) => r,
        Err(Error::Corruption {
            position, reason, ..
        }) => {
            return bad_line(opts, topic, path, position, &reason, out, outcome).map(|()| None);
        }
        Err(e) => return Err(e),
    };
    let records = run.end_offset() - run.base_offset();
    outcome.records += records;
    let (lo, hi) = run
        .key_range()
        .map_or((None, None), |(a, b)| (Some(a.seq_no), Some(b.seq_no)));
    let line = if opts.json {
        json!({"type": "run", "topic": topic, "file": path, "base_offset": run.base_offset(),
               "end_offset": run.end_offset(), "records": records, "bytes": run.bytes(),
               "min_seq_no": lo, "max_seq_no": hi, "sorted": true})
        .to_string()
    } else {
        format!(
            "run {} topic={topic} sorted offsets={}..{} records={records} bytes={} seq_no={}..={}",
            path.display(),
            run.base_offset(),
            run.end_offset(),
            run.bytes(),
            lo.map_or("-".into(), |v| v.to_string()),
            hi.map_or("-".into(), |v| v.to_string()),
        )
    };
    w(out, line)?;
    if !opts.verify {
        for (_, pos, raw) in run.records() {
            if let Decoded::Record(rec, len) = decode(raw) {
                let line = if opts.json {
                    record_json(topic, &rec, pos as usize, len).to_string()
                } else {
                    record_line(&rec, pos as usize, len)
                };
                w(out, line)?;
            }
        }
    }
    Ok(Some((run.base_offset(), run.end_offset())))
}

/// The topics and segment files to read.
fn plan(opts: &DumpOptions) -> Result<Vec<(String, Vec<PathBuf>)>> {
    let topics_dir = opts.data_dir.join("topics");
    if let Some(seg) = &opts.segment {
        let seg = find_segment(seg, &topics_dir, opts.topic.as_deref())?;
        let topic = seg
            .parent()
            .and_then(Path::file_name)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![(topic, vec![seg])]);
    }
    if !topics_dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "no framecast data dir at {} (it has no topics/ directory)",
            opts.data_dir.display()
        )));
    }
    let mut names = Vec::new();
    if let Some(t) = &opts.topic {
        let dir = topics_dir.join(t);
        if !dir.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "no topic directory {}",
                dir.display()
            )));
        }
        names.push(t.clone());
    } else {
        let entries = match std::fs::read_dir(&topics_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&topics_dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&topics_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // A topic being created or deleted (its directory under a temporary name) is
            // not a topic yet, or no more.
            if entry.path().is_dir() && valid_topic_name(&name) {
                names.push(name);
            }
        }
        names.sort();
    }
    names
        .into_iter()
        .map(|t| {
            let files = topic_files(&topics_dir.join(&t))?;
            Ok((t, files))
        })
        .collect()
}

/// `--segment FILE`: the file itself if it exists, else a bare file name looked up in the
/// topic's directory (`--topic`), or in every topic when exactly one holds it.
fn find_segment(seg: &Path, topics_dir: &Path, topic: Option<&str>) -> Result<PathBuf> {
    if seg.is_file() {
        return Ok(seg.to_path_buf());
    }
    let bare = seg.parent().is_none_or(|p| p.as_os_str().is_empty());
    if bare {
        if let Some(t) = topic {
            let candidate = topics_dir.join(t).join(seg);
            if candidate.is_file() {
                return Ok(candidate);
            }
        } else if let Ok(entries) = std::fs::read_dir(topics_dir) {
            let found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join(seg))
                .filter(|p| p.is_file())
                .collect();
            match found.len() {
                1 => return Ok(found[0].clone()),
                0 => {}
                n => {
                    return Err(Error::InvalidArgument(format!(
                        "{n} topics hold a segment named {}: name the topic with --topic",
                        seg.display()
                    )))
                }
            }
        }
    }
    Err(Error::InvalidArgument(format!(
        "no segment file {} (nor under {})",
        seg.display(),
        topics_dir.display()
    )))
}

fn dump_segment(
    opts: &DumpOptions,
    topic: &str,
    path: &Path,
    is_last: bool,
    out: &mut dyn Write,
    outcome: &mut DumpOutcome,
) -> Result<Option<(u64, u64)>> {
    // Mapped, not read: a segment may be gigabytes (`--segment-bytes` up to 4 GiB).
    let mapped = MappedFile::scan_segment(path)?;
    let data = mapped.as_slice();
    outcome.segments += 1;
    let w = |out: &mut dyn Write, line: String| -> Result<()> {
        writeln!(out, "{line}").map_err(|e| Error::io(Path::new("<stdout>"), e))
    };
    let base = match decode_segment_header(data) {
        Ok(b) => b,
        Err(reason) => {
            return bad_line(opts, topic, path, 0, &reason, out, outcome).map(|()| None);
        }
    };
    let named = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_file_name);
    if named.is_some_and(|n| n != base) {
        let reason = format!("header says base offset {base}, file name says {named:?}");
        bad_line(opts, topic, path, 0, &reason, out, outcome)?;
        return Ok(None);
    }
    let scanned = scan(data, base, |_, _, _| Ok(()))?;
    let s = &scanned.summary;
    outcome.records += s.records;
    let line = if opts.json {
        json!({"type": "segment", "topic": topic, "file": path, "base_offset": s.base,
               "records": s.records, "bytes": s.bytes, "first_offset": s.first,
               "last_offset": s.last, "min_seq_no": s.min_seq, "max_seq_no": s.max_seq,
               "file_bytes": data.len()})
        .to_string()
    } else {
        let range = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a}..={b}"),
            _ => "-".into(),
        };
        format!(
            "segment {} topic={topic} base_offset={} records={} bytes={} offsets={} seq_no={} file_bytes={}",
            path.display(),
            s.base,
            s.records,
            s.bytes,
            range(s.first, s.last),
            range(s.min_seq, s.max_seq),
            data.len()
        )
    };
    w(out, line)?;
    if !opts.verify {
        scan(data, base, |rec, pos, len| {
            let line = if opts.json {
                record_json(topic, rec, pos, len).to_string()
            } else {
                record_line(rec, pos, len)
            };
            w(out, line)
        })?;
    }
    for &(position, from, until) in &scanned.summary.gaps {
        let line = if opts.json {
            json!({"type": "gap", "topic": topic, "file": path, "position": position,
                   "first_offset": from, "end_offset": until})
            .to_string()
        } else {
            format!(
                "GAP {} at byte {position}: offsets {from}..{until} lost, marked by repair",
                path.display()
            )
        };
        w(out, line)?;
    }
    let s = &scanned.summary;
    let end = s
        .gaps
        .iter()
        .map(|g| g.2)
        .chain(s.last.map(|l| l + 1))
        .fold(base, u64::max);
    let span = scanned.problem.is_none().then_some((base, end));
    if let Some((position, reason)) = scanned.problem {
        let torn = is_last && !scanned.valid_after;
        if torn {
            outcome.torn_tails += 1;
        } else {
            outcome.bad += 1;
        }
        let line = if opts.json {
            json!({"type": if torn { "torn_tail" } else { "bad" }, "topic": topic, "file": path,
                   "position": position, "reason": reason, "crc_ok": false})
            .to_string()
        } else if torn {
            format!(
                "TORN TAIL {} at byte {position}: {reason} (startup cuts it back to here)",
                path.display()
            )
        } else {
            format!("BAD {} at byte {position}: {reason}", path.display())
        };
        w(out, line)?;
    }
    // As startup checks it (without the server's segment capacity: see `cut_short`).
    if is_last {
        if let Some(reason) = cut_short(data, scanned.stop, None) {
            bad_line(opts, topic, path, data.len() as u64, &reason, out, outcome)?;
        }
    }
    Ok(span)
}

/// Walks the records of one segment, calling `each` for every valid one. Past a bad
/// record it looks ahead, as recovery does, for a later valid record.
fn scan(
    data: &[u8],
    base: u64,
    mut each: impl FnMut(&RecordRef<'_>, usize, usize) -> Result<()>,
) -> Result<Scanned> {
    let mut s = Summary {
        base,
        ..Default::default()
    };
    let mut problem = None;
    let mut valid_after = false;
    let mut expected = base;
    let mut walk = Walk::new(data, SEGMENT_HEADER_LEN).expecting(base);
    for (pos, step) in walk.by_ref() {
        match step {
            Step::Record(rec, len) => {
                each(&rec, pos, len)?;
                s.records += 1;
                s.bytes += len as u64;
                s.first.get_or_insert(rec.offset);
                s.last = Some(rec.offset);
                s.min_seq = Some(s.min_seq.map_or(rec.seq_no, |m| m.min(rec.seq_no)));
                s.max_seq = Some(s.max_seq.map_or(rec.seq_no, |m| m.max(rec.seq_no)));
                expected = rec.offset + 1;
            }
            Step::Gap(gap, _) => {
                s.gaps.push((pos as u64, gap.offset, gap.end()));
                expected = gap.end();
            }
            Step::End => {}
            Step::Invalid(reason) => {
                valid_after = look_past(data, pos, expected).is_some();
                problem = Some((pos as u64, reason));
            }
        }
    }
    Ok(Scanned {
        summary: s,
        stop: walk.position(),
        problem,
        valid_after,
    })
}

fn record_line(rec: &RecordRef<'_>, pos: usize, len: usize) -> String {
    format!(
        "  offset={} seq_no={} timestamp={} length={len} crc_ok=true position={pos}{} payload={}",
        rec.offset,
        rec.seq_no,
        rec.timestamp,
        if rec.key.is_empty() {
            String::new()
        } else {
            format!(" key={}", preview(rec.key, 64))
        },
        preview(rec.payload, 64)
    )
}

fn record_json(topic: &str, rec: &RecordRef<'_>, pos: usize, len: usize) -> serde_json::Value {
    let mut v = json!({"type": "record", "topic": topic, "position": pos, "offset": rec.offset,
        "seq_no": rec.seq_no, "timestamp": rec.timestamp, "length": len, "crc_ok": true,
        "payload_len": rec.payload.len()});
    match std::str::from_utf8(rec.payload) {
        Ok(text) => v["payload"] = json!(text),
        Err(_) => v["payload_hex"] = json!(hex(rec.payload)),
    }
    if !rec.key.is_empty() {
        v["idempotency_key"] = json!(String::from_utf8_lossy(rec.key));
    }
    v
}

/// A short, printable preview: quoted text when the bytes are printable UTF-8, else hex.
fn preview(b: &[u8], max: usize) -> String {
    let cut = &b[..b.len().min(max)];
    let more = if b.len() > max { "…" } else { "" };
    // A character the cut falls inside is left out, not taken for binary.
    let text = match std::str::from_utf8(cut) {
        Ok(s) => Some(s),
        Err(e) if e.error_len().is_none() && b.len() > max => {
            std::str::from_utf8(&cut[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(s) if s.chars().all(|c| !c.is_control() || c == ' ') => format!("{s:?}{more}"),
        _ => format!("0x{}{more}", hex(cut)),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::preview;

    #[test]
    fn a_cut_inside_a_character_keeps_the_text() {
        // 63 ASCII bytes, then a two-byte 'é': the cut at 64 falls inside it.
        let text = format!("{}é and more", "a".repeat(63));
        assert_eq!(
            preview(text.as_bytes(), 64),
            format!("{:?}…", "a".repeat(63))
        );
        assert_eq!(preview("é".as_bytes(), 64), "\"é\"");
        // Bytes that are not UTF-8 stay hex, cut or not.
        assert_eq!(preview(&[0xff, 0x41], 64), "0xff41");
        assert_eq!(preview(&[0x41, 0xc3], 64), "0x41c3");
    }
}
