//! A log as a copy of another: the records a leader ships ([`Log::read_run`],
//! [`Log::read_records`]), their append on a follower ([`Log::append_copied`]), and the cut
//! of a suffix that a new leader does not hold ([`cut_from`]).
//!
//! Records travel as their encoded bytes, CRC included, and are checked on arrival: a
//! follower stores exactly the leader's offsets, seq_nos, timestamps, keys and key times, so
//! the record bytes (and their CRCs) are the same on every node, only segment boundaries
//! differ. A hole left by `framecast repair` travels as a gap record.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;

use super::format::SEGMENT_HEADER_LEN;
use super::log::Log;
use super::record::{decode, Decoded, Gap, Step, Walk, MAX_GAP_OFFSETS, MIN_GAP_LEN};
use super::recovery::{list_segments, torn_name, write_synced};
use super::segment::{sync_dir, SegmentWriter};
use super::state::{missing, Loc};
use super::{Error, Result};

/// One record copied from a leader, checked: a frame with every stored field, or a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// A frame as the leader stored it.
    Frame {
        /// Its offset (the follower's next offset when appended).
        offset: u64,
        /// Client-chosen sequence number.
        seq_no: u64,
        /// Stored timestamp.
        timestamp: i64,
        /// When its idempotency key was stored (0 without a key).
        key_time: i64,
        /// Idempotency key; empty for none.
        key: Bytes,
        /// The payload.
        payload: Bytes,
        /// The whole record as shipped, checked: stored as it is, byte for byte.
        record: Bytes,
    },
    /// Offsets the leader lost to repaired damage: they hold no frame.
    Gap(Gap),
}

impl Copied {
    /// Decodes and checks (CRC, lengths) one whole encoded record as shipped.
    pub fn decode(record: &Bytes) -> Result<Copied> {
        let (copied, len) = Copied::decode_at(record, 0)?;
        if len != record.len() {
            return Err(Error::InvalidArgument(format!(
                "a copied record of {} bytes holds a {len}-byte record",
                record.len()
            )));
        }
        Ok(copied)
    }

    /// Decodes and checks (CRC, lengths) a run: whole encoded records one after the other,
    /// as shipped in one piece. The run must end where its last record ends.
    pub fn decode_run(run: &Bytes) -> Result<Vec<Copied>> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < run.len() {
            let (copied, len) = Copied::decode_at(run, at)?;
            out.push(copied);
            at += len;
        }
        Ok(out)
    }

    /// The record at byte `at` of `buf`, checked, and its length; its fields and its
    /// bytes are slices of `buf`.
    fn decode_at(buf: &Bytes, at: usize) -> Result<(Copied, usize)> {
        match decode(&buf[at..]) {
            Decoded::Record(r, len) => {
                let slice = |s: &[u8]| {
                    if s.is_empty() {
                        Bytes::new()
                    } else {
                        buf.slice_ref(s)
                    }
                };
                let copied = Copied::Frame {
                    offset: r.offset,
                    seq_no: r.seq_no,
                    timestamp: r.timestamp,
                    key_time: r.key_time,
                    key: slice(r.key),
                    payload: slice(r.payload),
                    record: buf.slice(at..at + len),
                };
                Ok((copied, len))
            }
            Decoded::Gap(g, len) => Ok((Copied::Gap(g), len)),
            Decoded::End if at == 0 => Err(Error::InvalidArgument("an empty copied record".into())),
            Decoded::End => Err(Error::InvalidArgument(format!(
                "copied records of {} bytes hold zeros from byte {at}",
                buf.len()
            ))),
            Decoded::Invalid(why) => Err(Error::InvalidArgument(format!(
                "a copied record is damaged (at byte {at}): {why}"
            ))),
        }
    }

    /// The first offset this record stands for.
    pub fn offset(&self) -> u64 {
        match self {
            Copied::Frame { offset, .. } => *offset,
            Copied::Gap(g) => g.offset,
        }
    }

    /// One past the last offset this record stands for.
    pub fn end(&self) -> u64 {
        match self {
            Copied::Frame { offset, .. } => offset.saturating_add(1),
            Copied::Gap(g) => g.end(),
        }
    }

    /// Bytes the record takes in a segment.
    pub fn encoded_len(&self) -> usize {
        match self {
            Copied::Frame { record, .. } => record.len(),
            Copied::Gap(_) => MIN_GAP_LEN,
        }
    }
}

impl Log {
    /// The encoded records of offsets `[from, …)` below the durable frontier, whole, up to
    /// `max_bytes` (at least one record when any is durable), consecutive holes as one gap
    /// record. Returns them and the next offset to ask for. An offset below the oldest
    /// retained one is [`Error::OutOfRange`].
    pub fn read_records(&self, from: u64, max_bytes: usize) -> Result<(Vec<Bytes>, u64)> {
        let frontier = self.durable_offset();
        let mut out = Vec::new();
        let mut size = 0usize;
        let mut offset = from;
        let st = self.shared.state.read();
        st.check_retained(from)?;
        while offset < frontier && (out.is_empty() || size < max_bytes) {
            // A frame's record is checked once (CRC, offset) as it is read; a gap record
            // stands for every offset up to its end.
            let (record, end) = match st.locate(offset) {
                Some(Loc::Segment(seg, pos)) => {
                    let data = seg.read_from(pos as u64)?;
                    let len = whole_record(data, offset, seg.path(), pos)?;
                    (seg.bytes(pos as u64, len as u64)?, offset + 1)
                }
                Some(Loc::Run(run, pos)) => {
                    let data = run.record_bytes(pos);
                    let len = whole_record(data, offset, run.path(), pos)?;
                    (Bytes::copy_from_slice(&data[..len]), offset + 1)
                }
                None if st.is_hole(offset) => {
                    let mut end = offset + 1;
                    while end < frontier
                        && end - offset < MAX_GAP_OFFSETS
                        && st.locate(end).is_none()
                        && st.is_hole(end)
                    {
                        end += 1;
                    }
                    let gap = Gap {
                        offset,
                        count: end - offset,
                    };
                    let Some(encoded) = gap.encode(MIN_GAP_LEN) else {
                        return Err(Error::Unavailable("cannot encode a gap record".into()));
                    };
                    (Bytes::from(encoded), gap.end())
                }
                None => return Err(missing(offset)),
            };
            offset = end;
            size += record.len();
            out.push(record);
        }
        Ok((out, offset.max(from)))
    }

    /// The records of offsets `[from, …)` below the durable frontier as they lie in one
    /// segment, as one piece of at most `max_bytes` (or one record, if that is larger): the stored bytes,
    /// each record checked (CRC, offset) as it is walked. Returns the run and the next
    /// offset to ask for; `None` when `from` does not start such a run (nothing durable
    /// past it, a compacted run, a hole): [`Log::read_records`] reads those. An offset
    /// below the oldest retained one is [`Error::OutOfRange`].
    pub fn read_run(&self, from: u64, max_bytes: usize) -> Result<Option<(Bytes, u64)>> {
        let frontier = self.durable_offset();
        let st = self.shared.state.read();
        st.check_retained(from)?;
        if from >= frontier {
            return Ok(None);
        }
        let Some((seg, pos)) = st.offsets.locate(from) else {
            return Ok(None);
        };
        let data = seg.read_from(pos as u64)?;
        let mut end = 0usize;
        let mut next = from;
        for (at, step) in Walk::new(data, 0).expecting(from) {
            match step {
                // Within `max_bytes`, unless it is the first record.
                Step::Record(_, len) if end == 0 || at + len <= max_bytes => {
                    end = at + len;
                    next += 1;
                }
                Step::Record(..) => break,
                // Gap records and damage go one by one, through `read_records`.
                Step::Gap(..) | Step::Invalid(_) | Step::End => break,
            }
            if next >= frontier || end >= max_bytes {
                break;
            }
        }
        if end == 0 {
            return Ok(None);
        }
        Ok(Some((seg.bytes(pos as u64, end as u64)?, next)))
    }

    /// Appends records copied from a leader and waits until they are durable; returns the
    /// log's next offset. They must continue this log: the first at its next offset, each
    /// after the one before; otherwise nothing is written and the error says where the log
    /// stands.
    pub async fn append_copied(&self, records: Vec<Copied>) -> Result<u64> {
        self.submit_copied(records)?.await?;
        // The frontier moved past the copied records before the answer was sent.
        Ok(self.durable_offset())
    }

    /// Queues records copied from a leader, checked as [`Log::append_copied`] checks them,
    /// and returns at once: the future resolves once they are durable. Requests are written
    /// in the order they are queued, so a follower queues the next batch while the one
    /// before syncs (the committer takes every queued request into its next sync).
    pub fn submit_copied(
        &self,
        records: Vec<Copied>,
    ) -> Result<impl std::future::Future<Output = Result<()>> + Send + 'static> {
        let room = self.config().segment_bytes - SEGMENT_HEADER_LEN as u64;
        for r in &records {
            if r.encoded_len() as u64 > room {
                return Err(Error::InvalidArgument(format!(
                    "a copied record of {} bytes does not fit in a {room}-byte segment",
                    r.encoded_len()
                )));
            }
        }
        let rx = self.shared.committer.submit_copied(records)?;
        Ok(async move {
            rx.await
                .map_err(|_| Error::Unavailable("log is closed".into()))??;
            Ok(())
        })
    }
}

/// The length of the record of `offset` at the start of `data`, checked.
fn whole_record(data: &[u8], offset: u64, file: &Path, pos: u32) -> Result<usize> {
    match decode(data) {
        Decoded::Record(r, len) if r.offset == offset => Ok(len),
        Decoded::Invalid(reason) => Err(Error::corruption(file, pos as u64, reason)),
        _ => Err(Error::corruption(
            file,
            pos as u64,
            format!("no record of offset {offset}"),
        )),
    }
}

/// What [`cut_from`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The first offset removed; the log continues from it.
    pub from: u64,
    /// Bytes of records removed.
    pub bytes: u64,
    /// Where the removed bytes were kept: a `.torn` copy per segment touched.
    pub kept: Vec<PathBuf>,
}

/// Removes every record at or past `offset` from the (closed) log in `dir`, keeping the
/// removed bytes in `.torn` files beside the segments: what a follower does with frames a
/// new leader never had (never acknowledged). A segment starting past `offset` is renamed to
/// `<name>.torn` whole; the one holding `offset` is cut at its record. Returns `None` when
/// nothing lies at or past `offset`. Refuses to cut into compacted runs (below the first
/// segment): those hold only committed frames.
pub fn cut_from(dir: &Path, offset: u64, segment_bytes: u64) -> Result<Option<Cut>> {
    let segments = list_segments(dir)?;
    let Some(first) = segments.first().map(|s| s.0) else {
        return Ok(None);
    };
    if offset < first {
        return Err(Error::InvalidArgument(format!(
            "cannot cut at offset {offset}: offsets below {first} are compacted"
        )));
    }
    let mut cut = Cut {
        from: offset,
        bytes: 0,
        kept: Vec::new(),
    };
    // The segment holding `offset` becomes the newest: `ACTIVE` says so before any newer
    // one goes (a crash midway must not read as a lost segment).
    let keeps = segments.iter().rev().find(|s| s.0 <= offset).map(|s| s.0);
    if let Some(keeps) = keeps.filter(|&k| segments.last().is_some_and(|s| s.0 > k)) {
        super::active::write(dir, keeps)?;
    }
    // Later segments first, whole: a crash midway leaves a shorter log that a second cut
    // finishes, never a gap.
    for (base, path) in segments.iter().rev() {
        if *base <= offset {
            break;
        }
        let len = records_len(path, segment_bytes)?;
        let to = torn_name(path, "whole");
        std::fs::rename(path, &to).map_err(|e| Error::io(path, e))?;
        sync_dir(dir)?;
        warn!(file = %path.display(), kept = %to.display(), bytes = len, "cut a segment a new leader does not hold");
        cut.bytes += len;
        cut.kept.push(to);
    }
    let Some((_, path)) = segments.iter().rev().find(|s| s.0 <= offset) else {
        return Ok(None);
    };
    let mut writer = SegmentWriter::open(path, segment_bytes)?;
    let (at, end) = {
        let data = writer.contents();
        let mut at = None;
        let mut end = SEGMENT_HEADER_LEN;
        for (pos, step) in Walk::new(data, SEGMENT_HEADER_LEN) {
            match step {
                Step::Record(r, len) => {
                    if r.offset >= offset && at.is_none() {
                        at = Some(pos);
                    }
                    end = pos + len;
                }
                Step::Gap(g, len) => {
                    if g.end() > offset && at.is_none() {
                        if g.offset < offset {
                            return Err(Error::InvalidArgument(format!(
                                "cannot cut at offset {offset}: it lies inside a gap record"
                            )));
                        }
                        at = Some(pos);
                    }
                    end = pos + len;
                }
                Step::Invalid(reason) => {
                    return Err(Error::corruption(path, pos as u64, reason));
                }
                Step::End => break,
            }
        }
        (at, end)
    };
    if let Some(at) = at {
        let to = torn_name(path, &at.to_string());
        write_synced(&to, &writer.contents()[at..end])?;
        writer.truncate_tail(at as u64)?;
        sync_dir(dir)?;
        warn!(file = %path.display(), position = at, bytes = end - at, kept = %to.display(), "cut records a new leader does not hold");
        cut.bytes += (end - at) as u64;
        cut.kept.push(to);
    }
    Ok((!cut.kept.is_empty()).then_some(cut))
}

/// Bytes of records in a segment file.
fn records_len(path: &Path, segment_bytes: u64) -> Result<u64> {
    let writer = SegmentWriter::open(path, segment_bytes)?;
    let data = writer.contents();
    let mut end = SEGMENT_HEADER_LEN;
    for (pos, step) in Walk::new(data, SEGMENT_HEADER_LEN) {
        match step {
            Step::Record(_, len) | Step::Gap(_, len) => end = pos + len,
            Step::Invalid(_) | Step::End => break,
        }
    }
    Ok((end - SEGMENT_HEADER_LEN) as u64)
}
