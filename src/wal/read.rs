//! Reads: by offset range (live delivery, replication) and in order-key order (replay),
//! never taking the committer's lock, and the log's figures.

use std::sync::Arc;

use super::frame::StoredFrame;
use super::log::Log;
use super::state::{missing, Loc, State};
use super::Result;
use crate::index::OrderKey;

/// Figures of a log, for `ListTopics` and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Frames held.
    pub frames: u64,
    /// Bytes of stored records, headers included.
    pub bytes: u64,
    /// Oldest offset held.
    pub first_offset: u64,
    /// Next offset to be made durable.
    pub next_offset: u64,
    /// Smallest seq_no held.
    pub min_seq_no: Option<u64>,
    /// Largest seq_no held.
    pub max_seq_no: Option<u64>,
    /// Files holding frames: segments and sorted runs.
    pub segments: usize,
    /// Sorted runs among them.
    pub runs: usize,
    /// Heap bytes of the in-memory index (order index and offset map).
    pub index_bytes: usize,
    /// Syncs (msync or fdatasync calls) done since the log was opened.
    pub syncs: u64,
}

impl Log {
    /// The oldest offset held.
    pub fn first_offset(&self) -> u64 {
        self.shared.state.read().first_offset
    }

    /// The frame at `offset`, if it is held and durable.
    pub fn read(&self, offset: u64) -> Result<Option<StoredFrame>> {
        let mut out = Vec::with_capacity(1);
        self.read_range(offset, offset.saturating_add(1), 0, 1, &mut out)?;
        Ok(out.pop())
    }

    /// Reads frames with offsets in `[from, until)` (clamped to the durable frontier) whose
    /// seq_no is at least `min_seq_no`, looking at no more than `max` offsets. Appends them to
    /// `out` in offset order and returns the next offset to look at.
    pub fn read_range(
        &self,
        from: u64,
        until: u64,
        min_seq_no: u64,
        max: usize,
        out: &mut Vec<StoredFrame>,
    ) -> Result<u64> {
        let mut locs = Vec::new();
        let next;
        {
            // Clamp to the announced frontier, not the index's `next_offset`: the committer
            // indexes a batch before it announces it, and a reader must not get a frame that
            // `durable_offset()` does not cover yet. Read before the index lock, so that
            // everything below it is already indexed.
            let frontier = self.durable_offset();
            let st = self.shared.state.read();
            st.check_retained(from)?;
            let end = until.min(frontier).min(from.saturating_add(max as u64));
            locs.reserve(end.saturating_sub(from) as usize);
            for offset in from..end {
                match st.locate(offset) {
                    Some(loc) => locs.push((offset, loc)),
                    // Lost to damage and marked by repair: absent, not an error.
                    None if st.is_hole(offset) => {}
                    None => return Err(missing(offset)),
                }
            }
            next = end.max(from);
        }
        for (offset, loc) in locs {
            let frame = loc.load(offset)?;
            if frame.seq_no >= min_seq_no {
                out.push(frame);
            }
        }
        Ok(next)
    }

    /// Reads up to `max` frames in order-key order, starting at key `from` (inclusive),
    /// skipping frames whose offset is not below `offset_limit`. Returns true when the end of
    /// the log was reached. Sorted runs and the segments' index are merged (k-way): a replay
    /// over runs reads each run sequentially.
    pub fn read_ordered(
        &self,
        from: &OrderKey,
        offset_limit: u64,
        max: usize,
        out: &mut Vec<StoredFrame>,
    ) -> Result<bool> {
        // Up to `max` candidates from each source; the first `max` of their merge are the
        // answer, since no source can contribute more than `max` of them. Runs come first
        // (older, so usually lower keys), then the segments' index: in the usual log, keys
        // grow with offsets and the candidates arrive already in order, and a source whose
        // first key lies past the `max` smallest so far is not read at all.
        let mut candidates: Vec<(OrderKey, Loc)> = Vec::new();
        let mut done = true;
        let mut sorted = true;
        // Whether a source starting at `lo` cannot contribute: `max` candidates in order are
        // held and its first key is past the last of them. (Whether the log is done then
        // depends on whether it holds a key for this read at all: one is looked for.)
        let past = |candidates: &[(OrderKey, Loc)], sorted: bool, lo: Option<OrderKey>| {
            sorted
                && candidates.len() >= max
                && lo.is_some_and(|lo| max > 0 && lo > candidates[max - 1].0)
        };
        {
            // The announced frontier, as in `read_range`.
            let limit = offset_limit.min(self.durable_offset());
            let st = self.shared.state.read();
            let mut found = Vec::new();
            for run in &st.runs {
                if run.base_offset() >= limit || run.end_offset() <= st.first_offset {
                    continue;
                }
                found.clear();
                if past(&candidates, sorted, run.key_range().map(|r| r.0)) {
                    run.scan(from, st.first_offset, limit, 1, &mut found);
                    done &= found.is_empty();
                    continue;
                }
                done &= run.scan(from, st.first_offset, limit, max, &mut found);
                sorted &= in_order(&candidates, found.first().map(|f| f.0));
                candidates.extend(
                    found
                        .iter()
                        .map(|&(k, pos)| (k, Loc::Run(Arc::clone(run), pos))),
                );
            }
            let mut keys = Vec::new();
            if past(&candidates, sorted, st.order.first().copied()) {
                st.order.collect(from, limit, 1, &mut keys);
                done &= keys.is_empty();
            } else {
                keys.reserve(max.min(4096));
                done &= st.order.collect(from, limit, max, &mut keys);
                sorted &= in_order(&candidates, keys.first().copied());
                locate_in_segments(&st, keys, &mut candidates)?;
            }
        }
        // Each source is in key order: only sources that interleave need sorting.
        if !sorted {
            candidates.sort_unstable_by_key(|c| c.0);
        }
        if candidates.len() > max {
            candidates.truncate(max);
            done = false;
        }
        for (key, loc) in candidates {
            out.push(loc.load(key.offset)?);
        }
        Ok(done)
    }

    /// Reads up to `max` frames in descending order-key order: keys below `before` (every
    /// key when `None`) and at least `min`, with offsets below `offset_limit`. Returns true
    /// when no such frame remains. The reverse of [`Log::read_ordered`], merged the same way.
    pub fn read_ordered_rev(
        &self,
        before: Option<&OrderKey>,
        min: &OrderKey,
        offset_limit: u64,
        max: usize,
        out: &mut Vec<StoredFrame>,
    ) -> Result<bool> {
        let mut candidates: Vec<(OrderKey, Loc)> = Vec::new();
        let mut done = true;
        let mut sources = 0usize;
        {
            let limit = offset_limit.min(self.durable_offset());
            let st = self.shared.state.read();
            let mut keys = Vec::with_capacity(max.min(4096));
            done &= st.order.collect_rev(before, min, limit, max, &mut keys);
            sources += usize::from(!keys.is_empty());
            locate_in_segments(&st, keys, &mut candidates)?;
            let mut found = Vec::new();
            for run in &st.runs {
                if run.base_offset() >= limit || run.end_offset() <= st.first_offset {
                    continue;
                }
                found.clear();
                done &= run.scan_rev(before, min, st.first_offset..limit, max, &mut found);
                sources += usize::from(!found.is_empty());
                candidates.extend(
                    found
                        .iter()
                        .map(|&(k, pos)| (k, Loc::Run(Arc::clone(run), pos))),
                );
            }
        }
        if sources > 1 {
            candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        }
        if candidates.len() > max {
            candidates.truncate(max);
            done = false;
        }
        for (key, loc) in candidates {
            out.push(loc.load(key.offset)?);
        }
        Ok(done)
    }

    /// The oldest retained offset and retention's passes over this log
    /// ([`super::removals::Removals`]), read together.
    pub fn retention_passes(&self) -> (u64, super::removals::Removals) {
        let st = self.shared.state.read();
        (st.first_offset, st.removals.clone())
    }

    /// The idempotency keys still inside the dedup window whose frames lie below `offset`
    /// (removed by retention, or about to be), ordered by offset: what a copy of this log
    /// that starts at `offset` needs to answer retries of those frames as this log does.
    pub fn live_keys_below(&self, offset: u64) -> Vec<super::removed_keys::Kept> {
        self.shared.committer.live_keys_below(offset, &[])
    }

    /// One piece of [`Log::live_keys_below`] (see [`super::DedupWindow::live_below_from`]):
    /// adds keys to `out` from position `from` (0 at first) and gives the position to go on
    /// from, `None` when done. Takes the writer's lock once.
    pub fn live_keys_piece(
        &self,
        from: u64,
        offset: u64,
        out: &mut Vec<super::removed_keys::Kept>,
    ) -> Option<u64> {
        self.shared.committer.live_keys_piece(from, offset, out)
    }

    /// The retention watermark: the oldest retained offset and the largest order key ever
    /// removed by retention.
    pub fn retention_watermark(&self) -> (u64, Option<OrderKey>) {
        let st = self.shared.state.read();
        (st.first_offset, st.removals.largest())
    }

    /// What retention took from a reader that began when the oldest retained offset was
    /// `floor`: the oldest retained offset now, and the largest order key removed from
    /// offsets at or above `floor` (`None`: nothing it could have read is gone).
    pub fn removed_since(&self, floor: u64) -> (u64, Option<OrderKey>) {
        let st = self.shared.state.read();
        (st.first_offset, st.removals.largest_since(floor))
    }

    /// Current figures.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.state.read();
        let run_keys = st.runs.iter().filter_map(|r| r.key_range());
        let (run_min, run_max) = run_keys.fold(
            (None, None),
            |(lo, hi): (Option<u64>, Option<u64>), (a, b)| {
                (
                    Some(lo.map_or(a.seq_no, |l| l.min(a.seq_no))),
                    Some(hi.map_or(b.seq_no, |h| h.max(b.seq_no))),
                )
            },
        );
        let min_of = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let max_of = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        LogStats {
            frames: (st.next_offset - st.first_offset.min(st.next_offset)).saturating_sub(st.holes),
            bytes: st.bytes,
            first_offset: st.first_offset,
            next_offset: st.next_offset,
            min_seq_no: min_of(st.order.first().map(|k| k.seq_no), run_min),
            max_seq_no: max_of(st.order.last().map(|k| k.seq_no), run_max),
            segments: st.offsets.segment_count() + st.runs.len(),
            runs: st.runs.len(),
            index_bytes: st.order.heap_bytes()
                + st.offsets.heap_bytes()
                + st.runs.iter().map(|r| r.heap_bytes()).sum::<usize>(),
            syncs: self.shared.committer.syncs(),
        }
    }
}

/// Appends each key of the segments' index with where its record lies.
fn locate_in_segments(
    st: &State,
    keys: Vec<OrderKey>,
    candidates: &mut Vec<(OrderKey, Loc)>,
) -> Result<()> {
    for k in keys {
        let (seg, pos) = st
            .offsets
            .locate(k.offset)
            .ok_or_else(|| missing(k.offset))?;
        candidates.push((k, Loc::Segment(Arc::clone(seg), pos)));
    }
    Ok(())
}

/// Whether a source whose first key is `next` continues `candidates` in key order.
fn in_order(candidates: &[(OrderKey, Loc)], next: Option<OrderKey>) -> bool {
    match (candidates.last(), next) {
        (Some(last), Some(next)) => last.0 < next,
        _ => true,
    }
}
