//! The in-memory state of a log: the order index and offset map of its segments, its
//! sorted runs, the retention watermark; where each frame's record is; and the recovery
//! sink that rebuilds all of it at open.

use std::sync::Arc;

use super::dedup::FirstAck;
use super::format::RECORD_HEADER_LEN;
use super::frame::StoredFrame;
use super::record::{decode, Decoded, Gap, Header, RecordRef};
use super::recovery::{RecoverySink, TailLoss};
use super::removals::Removals;
use super::run::Run;
use super::segment::Segment;
use super::{Error, Result};
use crate::index::{OffsetMap, OrderIndex, OrderKey};

#[derive(Debug, Default)]
pub(super) struct State {
    /// Order keys of the frames in segments (not yet compacted into runs).
    pub(super) order: OrderIndex,
    /// Record positions of the frames in segments.
    pub(super) offsets: OffsetMap<Arc<Segment>>,
    /// Sorted runs, in offset order; they hold every offset below the first segment's base.
    pub(super) runs: Vec<Arc<Run>>,
    /// Oldest retained offset.
    pub(super) first_offset: u64,
    /// Offsets below this are indexed.
    pub(super) next_offset: u64,
    /// Bytes of retained records.
    pub(super) bytes: u64,
    /// What retention removed, pass by pass.
    pub(super) removals: Removals,
    /// Offsets at or above `first_offset` lost to repaired damage (they hold no frame).
    pub(super) holes: u64,
}

/// Where a frame's record is.
pub(super) enum Loc {
    Segment(Arc<Segment>, u32),
    Run(Arc<Run>, u32),
}

impl Loc {
    /// The file the record is in.
    pub(super) fn path(&self) -> &std::path::Path {
        match self {
            Loc::Segment(seg, _) => seg.path(),
            Loc::Run(run, _) => run.path(),
        }
    }
}

impl State {
    /// Where the record of `offset` is, if it is retained and indexed.
    pub(super) fn locate(&self, offset: u64) -> Option<Loc> {
        if offset < self.first_offset {
            return None;
        }
        if let Some((seg, pos)) = self.offsets.locate(offset) {
            return Some(Loc::Segment(Arc::clone(seg), pos));
        }
        let i = self.runs.partition_point(|r| r.end_offset() <= offset);
        let run = self.runs.get(i)?;
        run.locate(offset).map(|pos| Loc::Run(Arc::clone(run), pos))
    }
}

impl State {
    /// [`Error::OutOfRange`] when `from` lies below the oldest retained offset.
    pub(super) fn check_retained(&self, from: u64) -> Result<()> {
        if from < self.first_offset {
            return Err(Error::OutOfRange {
                requested: from,
                first: self.first_offset,
                next: self.next_offset,
            });
        }
        Ok(())
    }

    /// True when `offset` was lost to damage that `framecast repair` marked: no frame.
    pub(super) fn is_hole(&self, offset: u64) -> bool {
        if self.offsets.is_hole(offset) {
            return true;
        }
        let i = self.runs.partition_point(|r| r.end_offset() <= offset);
        self.runs.get(i).is_some_and(|r| r.is_hole(offset))
    }
}

impl Loc {
    /// The order key and record length of `offset`, from its header alone: what retention
    /// decides by. The checksum is not checked, so that a damaged payload of a frame
    /// retention removes cannot hold every later removal up; a header that does not name
    /// `offset`, or whose length runs past the data, is damage.
    pub(super) fn header(&self, offset: u64) -> Result<(OrderKey, u64)> {
        let (data, file, pos) = match self {
            Loc::Segment(seg, pos) => (seg.read_from(*pos as u64)?, seg.path(), *pos),
            Loc::Run(run, pos) => (run.record_bytes(*pos), run.path(), *pos),
        };
        match Header::peek(data) {
            Some(h)
                if h.offset == offset && (RECORD_HEADER_LEN..=data.len()).contains(&h.length) =>
            {
                let key = OrderKey {
                    seq_no: h.seq_no,
                    timestamp: h.timestamp,
                    offset,
                };
                Ok((key, h.length as u64))
            }
            _ => Err(Error::corruption(
                file,
                pos as u64,
                format!("no record header of offset {offset}"),
            )),
        }
    }

    pub(super) fn load(&self, offset: u64) -> Result<StoredFrame> {
        match self {
            Loc::Segment(seg, pos) => load(seg, *pos, offset),
            Loc::Run(run, pos) => run.load(*pos, offset),
        }
    }
}

/// Feeds recovered records into the index, and their keys still inside the dedup window
/// into `keys` (in the order found: a run's are in its sort order; the window takes them
/// sorted, see [`super::dedup::DedupWindow::recovered`]).
pub(super) struct Rebuild<'a> {
    pub(super) state: &'a mut State,
    pub(super) keys: &'a mut Vec<(Box<[u8]>, FirstAck)>,
    /// Keys stored before this are past the window.
    pub(super) horizon: i64,
    /// The window holds at most this many keys (`--dedup-max-keys`): `keys` is cut back to
    /// the newest this many whenever it holds twice as many, so recovery's memory stays
    /// bounded however many keyed frames the window saw.
    pub(super) max_keys: usize,
    pub(super) before_cut: &'a mut dyn FnMut(TailLoss<'_>) -> Result<()>,
}

impl Rebuild<'_> {
    fn remember_key(&mut self, r: &RecordRef<'_>) {
        if !r.key.is_empty() && r.key_time >= self.horizon {
            let ack = FirstAck {
                offset: r.offset,
                timestamp: r.timestamp,
                stored_at: r.key_time,
            };
            self.keys.push((Box::from(r.key), ack));
            let max = self.max_keys.max(1);
            if self.keys.len() >= max.saturating_mul(2) {
                self.keys.sort_by_key(|(_, a)| a.offset);
                // A key found twice (kept apart, and in a file a crash left) counts once.
                self.keys.dedup_by(|b, a| a.1 == b.1 && a.0 == b.0);
                let drop = self.keys.len().saturating_sub(max);
                self.keys.drain(..drop);
            }
        }
    }
}

impl RecoverySink for Rebuild<'_> {
    fn begin(&mut self, first_offset: u64) {
        self.state.first_offset = first_offset;
    }

    fn run(&mut self, run: &Arc<Run>) {
        let from = run.base_offset().max(self.state.first_offset);
        self.state.holes += (from..run.end_offset()).filter(|&o| run.is_hole(o)).count() as u64;
        self.state.runs.push(Arc::clone(run));
    }

    fn run_record(&mut self, record: &RecordRef<'_>) {
        self.remember_key(record);
    }

    fn segment(&mut self, segment: &Arc<Segment>) {
        self.state
            .offsets
            .push_segment(segment.base_offset(), Arc::clone(segment));
    }

    fn record(&mut self, r: &RecordRef<'_>, position: u64, _len: u64) {
        if r.offset >= self.state.first_offset {
            self.state.order.insert(OrderKey {
                seq_no: r.seq_no,
                timestamp: r.timestamp,
                offset: r.offset,
            });
        }
        // Positions fit: segments are at most u32::MAX bytes (LogConfig::validate).
        self.state.offsets.push(position as u32);
        self.remember_key(r);
    }

    fn before_cut(&mut self, loss: TailLoss<'_>) -> Result<()> {
        (self.before_cut)(loss)
    }

    fn gap(&mut self, gap: &Gap) {
        self.state.offsets.push_holes(gap.count);
        self.state.holes += gap
            .end()
            .saturating_sub(gap.offset.max(self.state.first_offset));
    }
}

pub(super) fn rec_key(r: &RecordRef<'_>) -> OrderKey {
    OrderKey {
        seq_no: r.seq_no,
        timestamp: r.timestamp,
        offset: r.offset,
    }
}

/// Decodes and checks the record of `offset` at `pos`.
pub(super) fn load(seg: &Arc<Segment>, pos: u32, offset: u64) -> Result<StoredFrame> {
    let data = seg.read_from(pos as u64)?;
    match decode(data) {
        Decoded::Record(rec, len) if rec.offset == offset => {
            let payload_at = pos as u64 + (len - rec.payload.len()) as u64;
            Ok(StoredFrame {
                offset,
                seq_no: rec.seq_no,
                timestamp: rec.timestamp,
                payload: seg.bytes(payload_at, rec.payload.len() as u64)?,
            })
        }
        Decoded::Record(rec, _) => Err(Error::corruption(
            seg.path(),
            pos as u64,
            format!("expected offset {offset}, found {}", rec.offset),
        )),
        Decoded::End | Decoded::Gap(..) => Err(Error::corruption(
            seg.path(),
            pos as u64,
            "no record where one was indexed",
        )),
        Decoded::Invalid(reason) => Err(Error::corruption(seg.path(), pos as u64, reason)),
    }
}

pub(super) fn missing(offset: u64) -> Error {
    Error::Unavailable(format!(
        "offset {offset} is indexed but its segment is gone"
    ))
}
