//! The shared encoded-frame cache of one topic: the most recent live frames, each encoded
//! once, handed to every live subscriber as the same bytes.
//!
//! It covers one offset range `[base, end)` of the log (holes left by repair simply have no
//! entry) and is bounded in bytes: the oldest frames leave first. A subscriber whose next
//! offset is below `base` (it fell behind) reads and encodes from the log itself, so the
//! cache never grows with a subscriber's lag. The first subscriber to reach `end` reads the
//! next batch from the log and encodes it, under the cache's lock, so the others waiting
//! for the same frames find them encoded instead of encoding them again.

use std::collections::VecDeque;

use parking_lot::Mutex;

use crate::proto::Frame;
use crate::wal::{self, Log, StoredFrame};

/// Bytes of encoded frames a topic keeps for its live subscribers (each charged for its
/// protobuf encoding and room for its JSON text): at 100-byte frames about 14,000 frames,
/// many seconds of a fan-out at 1,000 frames/s.
pub const FRAME_CACHE_BYTES: usize = 8 << 20;
/// Bytes one cached frame costs beyond its encoding (the `Frame` and its slot).
const ENTRY_OVERHEAD: usize = 96;

/// The cache of one topic.
#[derive(Debug)]
pub struct FrameCache {
    max_bytes: usize,
    inner: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// First offset covered.
    base: u64,
    /// One past the last offset covered.
    end: u64,
    /// The frames of `[base, end)` held, in offset order.
    frames: VecDeque<Frame>,
    /// Bytes held (encodings plus `ENTRY_OVERHEAD` each).
    bytes: usize,
    /// Reused for log reads.
    scratch: Vec<StoredFrame>,
}

/// Where a read from the cache stands.
pub enum Cached {
    /// Frames were appended; the next offset to look at.
    Next(u64),
    /// The offset is below what the cache covers: read from the log.
    Behind,
}

impl FrameCache {
    /// An empty cache holding at most `max_bytes` (0 disables it: every read is `Behind`).
    pub fn new(max_bytes: usize) -> FrameCache {
        FrameCache {
            max_bytes,
            inner: Mutex::new(Ring::default()),
        }
    }

    /// Appends to `out` the frames with offsets in `[from, until)` whose seq_no is at least
    /// `min_seq_no`, looking at no more than `max` offsets, from the cache; reads and
    /// encodes the next batch from `log` first when `from` is where the cache ends.
    /// `until` must not pass the log's durable frontier. With `wire_only` (a gRPC
    /// subscriber) the frames are [`Frame::wire_only`] copies.
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &self,
        log: &Log,
        from: u64,
        until: u64,
        min_seq_no: u64,
        max: usize,
        wire_only: bool,
        out: &mut VecDeque<Frame>,
    ) -> wal::Result<Cached> {
        if self.max_bytes == 0 {
            return Ok(Cached::Behind);
        }
        let mut ring = self.inner.lock();
        if from < ring.base {
            return Ok(Cached::Behind);
        }
        if from >= ring.end {
            // Nothing this subscriber can use is held: the cache moves on to `from`
            // (subscribers still in the old range fall behind and read the log).
            if from > ring.end {
                ring.clear_to(from);
            }
            ring.fill(log, until, max, self.max_bytes)?;
            if from < ring.base {
                return Ok(Cached::Behind);
            }
        }
        let stop = until.min(ring.end).min(from.saturating_add(max as u64));
        let start = ring.frames.partition_point(|f| f.offset < from);
        for f in ring.frames.range(start..) {
            if f.offset >= stop {
                break;
            }
            if f.seq_no >= min_seq_no {
                out.push_back(if wire_only { f.wire_only() } else { f.clone() });
            }
        }
        Ok(Cached::Next(stop.max(from)))
    }

    /// Drops everything held (when a topic has no subscribers left).
    pub fn clear(&self) {
        let mut ring = self.inner.lock();
        let end = ring.end;
        ring.clear_to(end);
        ring.scratch = Vec::new();
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

impl Ring {
    fn clear_to(&mut self, offset: u64) {
        self.frames.clear();
        self.frames.shrink_to(64);
        self.bytes = 0;
        self.base = offset;
        self.end = offset;
    }

    /// Reads up to `max` offsets from `end` on (below `until`), encodes them (no more than
    /// `max_bytes` of them, or one frame) and appends them, then drops the oldest frames beyond
    /// `max_bytes`.
    fn fill(&mut self, log: &Log, until: u64, max: usize, max_bytes: usize) -> wal::Result<()> {
        if until <= self.end {
            return Ok(());
        }
        let mut got = std::mem::take(&mut self.scratch);
        got.clear();
        let next = log.read_range(self.end, until, 0, max, &mut got);
        let next = match next {
            Ok(n) => n,
            Err(e) => {
                self.scratch = got;
                return Err(e);
            }
        };
        // Encode no more than the cache holds: `max` large frames could be gigabytes.
        let mut added = 0;
        let mut end = next;
        for f in got.drain(..) {
            let frame = Frame::encoded(f.seq_no, &f.payload, f.timestamp, f.offset);
            let cost = frame.heap_bytes() + ENTRY_OVERHEAD;
            if added > 0 && added + cost > max_bytes {
                end = f.offset;
                break;
            }
            added += cost;
            self.frames.push_back(frame);
        }
        self.bytes += added;
        self.scratch = got;
        self.end = end;
        while self.bytes > max_bytes {
            let Some(old) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= old.heap_bytes() + ENTRY_OVERHEAD;
            self.base = old.offset + 1;
        }
        if self.frames.is_empty() {
            self.base = self.end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{FsyncPolicy, LogConfig, NewFrame};
    use bytes::Bytes;

    fn log_with(n: u64, size: usize) -> (tempfile::TempDir, Log) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            fsync: FsyncPolicy::Never,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config).unwrap();
        let frames = (0..n)
            .map(|i| NewFrame {
                seq_no: i % 7,
                timestamp: 1 + i as i64,
                key: Bytes::new(),
                payload: Bytes::from(vec![i as u8; size]),
            })
            .collect();
        log.append(frames).unwrap();
        (dir, log)
    }

    /// Reads `[from, until)` through the cache in steps of `max`, as a subscriber would.
    fn read_all(cache: &FrameCache, log: &Log, from: u64, until: u64, max: usize) -> Vec<Frame> {
        let mut out = VecDeque::new();
        let mut next = from;
        while next < until {
            match cache
                .read(log, next, until, 0, max, false, &mut out)
                .unwrap()
            {
                Cached::Next(n) => next = n,
                Cached::Behind => panic!("behind at {next}"),
            }
        }
        out.into()
    }

    #[test]
    fn frames_come_from_the_log_encoded_once_and_shared() {
        let (_dir, log) = log_with(100, 50);
        let cache = FrameCache::new(1 << 20);
        let a = read_all(&cache, &log, 0, 100, 16);
        let b = read_all(&cache, &log, 0, 100, 7);
        assert_eq!(a.len(), 100);
        assert_eq!(a, b);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let stored = log.read(i as u64).unwrap().unwrap();
            assert_eq!(x.offset, i as u64);
            assert_eq!(x.payload, stored.payload);
            assert_eq!(x.seq_no, stored.seq_no);
            assert_eq!(x.timestamp, stored.timestamp);
            // The same bytes, not an equal copy.
            assert_eq!(
                x.encoding().unwrap().as_ptr(),
                y.encoding().unwrap().as_ptr()
            );
        }
    }

    #[test]
    fn seq_no_filter_is_per_reader() {
        let (_dir, log) = log_with(50, 10);
        let cache = FrameCache::new(1 << 20);
        let mut out = VecDeque::new();
        let mut next = 0;
        while next < 50 {
            match cache.read(&log, next, 50, 3, 8, false, &mut out).unwrap() {
                Cached::Next(n) => next = n,
                Cached::Behind => panic!("behind"),
            }
        }
        let want: Vec<u64> = (0..50).filter(|i| i % 7 >= 3).collect();
        let got: Vec<u64> = out.iter().map(|f| f.offset).collect();
        assert_eq!(got, want);
        assert_eq!(read_all(&cache, &log, 0, 50, 50).len(), 50);
    }

    #[test]
    fn the_cache_is_bounded_and_a_reader_behind_it_is_told_so() {
        let (_dir, log) = log_with(400, 1000);
        let max = 20 * (1000 + 16 + crate::wire_frame::json_len_estimate(1000) + ENTRY_OVERHEAD);
        let cache = FrameCache::new(max);
        let frames = read_all(&cache, &log, 0, 400, 10);
        assert_eq!(frames.len(), 400);
        assert!(cache.bytes() <= max, "{} > {max}", cache.bytes());
        let mut out = VecDeque::new();
        assert!(matches!(
            cache.read(&log, 0, 400, 0, 10, false, &mut out).unwrap(),
            Cached::Behind
        ));
        assert!(out.is_empty());
        // The newest frames are still there.
        assert!(matches!(
            cache.read(&log, 395, 400, 0, 10, false, &mut out).unwrap(),
            Cached::Next(400)
        ));
        assert_eq!(out.len(), 5);
        cache.clear();
        assert_eq!(cache.bytes(), 0);
    }

    /// A batch of large frames is encoded only up to the cache's size, not whole and then
    /// trimmed: the reader that filled it still finds its frames there.
    #[test]
    fn large_frames_are_encoded_no_further_than_the_cache_holds() {
        let (_dir, log) = log_with(50, 256 << 10);
        let cache = FrameCache::new(1 << 20);
        let mut out = VecDeque::new();
        let Cached::Next(next) = cache.read(&log, 0, 50, 0, 256, false, &mut out).unwrap() else {
            panic!("the reader that filled the cache was told it is behind");
        };
        assert!((1..=5).contains(&next), "{next} frames encoded at once");
        assert_eq!(out.len() as u64, next);
        assert!(
            cache.bytes() <= (1 << 20) + (300 << 10),
            "{}",
            cache.bytes()
        );
        let all = read_all(&cache, &log, 0, 50, 256);
        assert!(all.iter().map(|f| f.offset).eq(0..50));
    }

    #[test]
    fn nothing_past_the_frontier_given_is_read() {
        let (_dir, log) = log_with(10, 10);
        let cache = FrameCache::new(1 << 20);
        let mut out = VecDeque::new();
        assert!(matches!(
            cache.read(&log, 0, 4, 0, 100, false, &mut out).unwrap(),
            Cached::Next(4)
        ));
        assert_eq!(out.len(), 4);
        // A reader jumping ahead moves the cache on; one left behind reads the log.
        assert!(matches!(
            cache.read(&log, 8, 10, 0, 100, false, &mut out).unwrap(),
            Cached::Next(10)
        ));
        assert!(matches!(
            cache.read(&log, 5, 10, 0, 100, false, &mut out).unwrap(),
            Cached::Behind
        ));
    }
}
