//! The offset map: where each offset's record starts, segment by segment. An offset lost
//! to damage (and marked so by `framecast repair`) is a hole: it has no record, and
//! readers skip it.

/// The position stored for a hole (no record starts at `u32::MAX`: segments are smaller).
const HOLE: u32 = u32::MAX;

/// Record positions of one segment, indexed by `offset - base`.
#[derive(Debug)]
struct Slots<S> {
    base: u64,
    handle: S,
    positions: Vec<u32>,
}

/// Offset → (segment handle, byte position). Positions are 4 bytes per frame; the handle
/// is whatever the log uses to reach a segment (an `Arc` of its mapping), so this module
/// never touches the file format.
#[derive(Debug)]
pub struct OffsetMap<S> {
    segments: Vec<Slots<S>>,
}

impl<S> Default for OffsetMap<S> {
    fn default() -> Self {
        OffsetMap {
            segments: Vec::new(),
        }
    }
}

impl<S> OffsetMap<S> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a segment whose first offset is `base`.
    pub fn push_segment(&mut self, base: u64, handle: S) {
        if let Some(last) = self.segments.last_mut() {
            last.positions.shrink_to_fit();
        }
        self.segments.push(Slots {
            base,
            handle,
            positions: Vec::new(),
        });
    }

    /// Records that the next offset of the last segment starts at `position`.
    /// Returns false when there is no segment.
    pub fn push(&mut self, position: u32) -> bool {
        match self.segments.last_mut() {
            Some(s) => {
                s.positions.push(position);
                true
            }
            None => false,
        }
    }

    /// Records that the next `count` offsets of the last segment are holes (lost).
    /// Returns false when there is no segment.
    pub fn push_holes(&mut self, count: u64) -> bool {
        match self.segments.last_mut() {
            Some(s) => {
                let n = usize::try_from(count).unwrap_or(usize::MAX);
                s.positions
                    .resize(s.positions.len().saturating_add(n), HOLE);
                true
            }
            None => false,
        }
    }

    fn slot(&self, offset: u64) -> Option<(&S, u32)> {
        let i = self
            .segments
            .partition_point(|s| s.base <= offset)
            .checked_sub(1)?;
        let s = &self.segments[i];
        let slot = usize::try_from(offset - s.base).ok()?;
        s.positions.get(slot).map(|&p| (&s.handle, p))
    }

    /// The segment and position of `offset`; `None` if it is not held or is a hole.
    pub fn locate(&self, offset: u64) -> Option<(&S, u32)> {
        self.slot(offset).filter(|&(_, p)| p != HOLE)
    }

    /// True when `offset` is a hole: inside a segment, but lost to repaired damage.
    pub fn is_hole(&self, offset: u64) -> bool {
        self.slot(offset).is_some_and(|(_, p)| p == HOLE)
    }

    /// Every hole below `end`, in order (for compaction, which carries them into a run).
    pub fn holes_below(&self, end: u64) -> Vec<u64> {
        self.segments
            .iter()
            .flat_map(|s| {
                s.positions
                    .iter()
                    .enumerate()
                    .filter(|(_, &p)| p == HOLE)
                    .map(move |(i, _)| s.base + i as u64)
            })
            .take_while(|&o| o < end)
            .collect()
    }

    /// The first offset held, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| !s.positions.is_empty())
            .map(|s| s.base)
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Segment handles with their base offsets and frame counts, oldest first.
    pub fn segments(&self) -> impl Iterator<Item = (u64, &S, usize)> {
        self.segments
            .iter()
            .map(|s| (s.base, &s.handle, s.positions.len()))
    }

    /// Drops whole segments from the front while `keep` says no; returns how many.
    pub fn drop_front_while(&mut self, mut drop: impl FnMut(u64, &S, usize) -> bool) -> usize {
        let n = self
            .segments
            .iter()
            .take_while(|s| drop(s.base, &s.handle, s.positions.len()))
            .count();
        self.segments.drain(..n);
        n
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.segments.capacity() * std::mem::size_of::<Slots<S>>()
            + self
                .segments
                .iter()
                .map(|s| s.positions.capacity() * 4)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_offsets_across_segments() {
        let mut m = OffsetMap::new();
        assert!(!m.push(1));
        m.push_segment(0, "a");
        m.push(64);
        m.push(100);
        m.push_segment(2, "b");
        m.push(64);
        assert_eq!(m.locate(0), Some((&"a", 64)));
        assert_eq!(m.locate(1), Some((&"a", 100)));
        assert_eq!(m.locate(2), Some((&"b", 64)));
        assert_eq!(m.locate(3), None);
        assert_eq!(m.first_offset(), Some(0));
        assert_eq!(m.drop_front_while(|base, _, _| base < 2), 1);
        assert_eq!(m.locate(0), None);
        assert_eq!(m.first_offset(), Some(2));
    }

    #[test]
    fn holes_are_skipped_not_located() {
        let mut m = OffsetMap::new();
        assert!(!m.push_holes(1));
        m.push_segment(10, "a");
        m.push(64);
        assert!(m.push_holes(2));
        m.push(200);
        assert_eq!(m.locate(10), Some((&"a", 64)));
        assert_eq!(m.locate(11), None);
        assert!(m.is_hole(11) && m.is_hole(12));
        assert!(!m.is_hole(10) && !m.is_hole(13) && !m.is_hole(14));
        assert_eq!(m.locate(13), Some((&"a", 200)));
        assert_eq!(m.segments().next().map(|s| s.2), Some(4));
        assert_eq!(m.holes_below(12), vec![11]);
        assert_eq!(m.holes_below(100), vec![11, 12]);
    }
}
