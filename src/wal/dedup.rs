//! The dedup window: idempotency keys stored recently, with the ack they got.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The first ack of a key, returned again to a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstAck {
    /// Offset of the stored frame.
    pub offset: u64,
    /// Its stored timestamp.
    pub timestamp: i64,
    /// When the key was stored (ns since the epoch).
    pub stored_at: i64,
}

/// Keys stored within the window. Expired keys are dropped on every commit, and at most
/// `max_keys` are held: past that the oldest are forgotten early (counted in
/// [`DedupWindow::evicted_early`]), so memory stays bounded (measured: about 190 bytes
/// per key of 36 bytes, 260 per key of 120 bytes) even when keyed publishing outruns the
/// window.
///
/// Keys come in offset order (appends and copies do; recovery sorts what it finds), so the
/// keys of the oldest frames lie at the front of the queue: [`DedupWindow::live_below_from`]
/// finds those below an offset without looking at the rest, a piece at a time.
#[derive(Debug)]
pub struct DedupWindow {
    window_ns: i64,
    max_keys: usize,
    /// Each key is held once, shared with its entry in `order`.
    map: HashMap<Arc<[u8]>, FirstAck>,
    /// Every key in the order stored: (stored at, offset, key). An entry whose key now
    /// has another ack (or none) is stale and skipped.
    order: VecDeque<(i64, u64, Arc<[u8]>)>,
    /// Entries taken from the front of `order` so far: a position in it that survives
    /// them is this plus an index.
    popped: u64,
    /// True while `order` holds its entries in offset order.
    sorted: bool,
    evicted_early: u64,
}

impl Default for DedupWindow {
    fn default() -> DedupWindow {
        DedupWindow {
            window_ns: 0,
            max_keys: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
            popped: 0,
            sorted: true,
            evicted_early: 0,
        }
    }
}

/// Entries of the queue [`DedupWindow::live_below_from`] looks at in one call.
pub const LIVE_BELOW_PIECE: usize = 4_096;

impl DedupWindow {
    /// An empty window of `window_ns` nanoseconds holding at most `max_keys` keys.
    pub fn new(window_ns: i64, max_keys: usize) -> DedupWindow {
        DedupWindow {
            window_ns,
            max_keys: max_keys.max(1),
            ..Default::default()
        }
    }

    /// Keys forgotten before their window ended because `max_keys` was reached.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }

    /// The first ack of `key`, if stored within the window ending `now`.
    pub fn get(&self, key: &[u8], now: i64) -> Option<FirstAck> {
        self.map
            .get(key)
            .copied()
            .filter(|a| a.stored_at >= now.saturating_sub(self.window_ns))
    }

    /// Remembers `key`'s first ack. Keys already outside the window at `now` are ignored.
    pub fn insert(&mut self, key: &[u8], ack: FirstAck, now: i64) {
        if ack.stored_at < now.saturating_sub(self.window_ns) {
            return;
        }
        while self.map.len() >= self.max_keys {
            let Some((t, _, old)) = self.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|a| a.stored_at == t) {
                self.map.remove(&old);
                self.evicted_early += 1;
            }
        }
        if self.order.back().is_some_and(|b| b.1 > ack.offset) {
            self.sorted = false;
        }
        let key: Arc<[u8]> = Arc::from(key);
        self.map.insert(Arc::clone(&key), ack);
        self.order.push_back((ack.stored_at, ack.offset, key));
    }

    /// Forgets `key` if its entry is `ack` (undo of a failed append: undone newest first,
    /// its entry leaves the queue too, so the offsets used again keep it in order).
    pub fn remove(&mut self, key: &[u8], ack: FirstAck) {
        if self.map.get(key) == Some(&ack) {
            self.map.remove(key);
            if self
                .order
                .back()
                .is_some_and(|b| b.0 == ack.stored_at && b.1 == ack.offset && *b.2 == *key)
            {
                self.order.pop_back();
            }
        }
    }

    fn pop_front(&mut self) -> Option<(i64, u64, Arc<[u8]>)> {
        let front = self.order.pop_front()?;
        self.popped += 1;
        if self.order.is_empty() {
            self.sorted = true;
        }
        Some(front)
    }

    /// Drops keys stored before the window ending `now`.
    pub fn expire(&mut self, now: i64) {
        let horizon = now.saturating_sub(self.window_ns);
        while let Some((t, _, _)) = self.order.front() {
            if *t >= horizon {
                break;
            }
            if let Some((t, _, key)) = self.pop_front() {
                if self.map.get(&key).is_some_and(|a| a.stored_at == t) {
                    self.map.remove(&key);
                }
            }
        }
    }

    /// The keys within the window ending `now` whose frames lie below `offset` and outside
    /// every range `[start, end)` of `held` (files that keep them), each once, in offset
    /// order: [`DedupWindow::live_below_from`] until it is done.
    pub fn live_below(
        &mut self,
        offset: u64,
        held: &[(u64, u64)],
        now: i64,
    ) -> Vec<(Box<[u8]>, FirstAck)> {
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(next) = self.live_below_from(from, offset, held, now, &mut out) {
            from = next;
        }
        out
    }

    /// One piece of [`DedupWindow::live_below`], for a caller that lets others use the
    /// window between pieces: adds to `out` the keys of up to [`LIVE_BELOW_PIECE`] entries
    /// of the queue from position `from` (0 at first), and gives the position to go on
    /// from, or `None` when done. The walk stops at the first key of a frame at or past
    /// `offset`: the queue is in offset order, and keys stored between pieces are of new
    /// frames, past it. Should the queue not be in order (see `sorted`), every key is
    /// looked at at once instead, and `out` holds just those.
    pub fn live_below_from(
        &mut self,
        from: u64,
        offset: u64,
        held: &[(u64, u64)],
        now: i64,
        out: &mut Vec<(Box<[u8]>, FirstAck)>,
    ) -> Option<u64> {
        self.expire(now);
        let horizon = now.saturating_sub(self.window_ns);
        let wanted = |a: &FirstAck| {
            a.stored_at >= horizon
                && a.offset < offset
                && !held.iter().any(|&(s, e)| (s..e).contains(&a.offset))
        };
        if !self.sorted {
            out.clear();
            out.extend(
                self.map
                    .iter()
                    .filter(|(_, a)| wanted(a))
                    .map(|(k, a)| (Box::from(&**k), *a)),
            );
            out.sort_unstable_by_key(|(_, a)| a.offset);
            return None;
        }
        let start = usize::try_from(from.saturating_sub(self.popped)).unwrap_or(usize::MAX);
        let end = start.saturating_add(LIVE_BELOW_PIECE).min(self.order.len());
        for (stored_at, at, key) in self.order.range(start.min(end)..end) {
            if *at >= offset {
                return None;
            }
            let Some(ack) = self
                .map
                .get(key)
                .filter(|a| a.stored_at == *stored_at && a.offset == *at)
            else {
                continue;
            };
            // The same key found twice (a removed frame's key kept apart and again in a
            // file that kept it) comes out once.
            let again = out
                .last()
                .is_some_and(|(k, a)| a.offset == *at && **k == **key);
            if wanted(ack) && !again {
                out.push((Box::from(&**key), *ack));
            }
        }
        (end < self.order.len()).then(|| self.popped + end as u64)
    }

    /// Stores recovered keys: those of `keys` within the window ending `now`, in offset
    /// order (each found once).
    pub fn recovered(&mut self, mut keys: Vec<(Box<[u8]>, FirstAck)>, now: i64) {
        keys.sort_by_key(|(_, a)| a.offset);
        keys.dedup_by(|b, a| a.1 == b.1 && a.0 == b.0);
        for (key, ack) in keys {
            self.insert(&key, ack, now);
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_with_the_window() {
        let mut d = DedupWindow::new(100, 10);
        let ack = FirstAck {
            offset: 1,
            timestamp: 5,
            stored_at: 1000,
        };
        d.insert(b"k", ack, 1000);
        assert_eq!(d.get(b"k", 1050), Some(ack));
        assert_eq!(d.get(b"k", 1101), None);
        d.expire(1101);
        assert!(d.is_empty());
        d.insert(
            b"old",
            FirstAck {
                stored_at: 10,
                ..ack
            },
            1000,
        );
        assert!(d.is_empty(), "keys already outside the window are not kept");
    }

    #[test]
    fn reinserted_key_survives_expiry_of_its_old_entry() {
        let mut d = DedupWindow::new(100, 10);
        let a = FirstAck {
            offset: 1,
            timestamp: 0,
            stored_at: 0,
        };
        d.insert(b"k", a, 0);
        d.remove(b"k", a);
        let b = FirstAck {
            offset: 2,
            timestamp: 0,
            stored_at: 90,
        };
        d.insert(b"k", b, 90);
        d.expire(150);
        assert_eq!(d.get(b"k", 150), Some(b));
    }

    #[test]
    fn the_key_cap_forgets_the_oldest_first() {
        let mut d = DedupWindow::new(1_000, 3);
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            let ack = FirstAck {
                offset: i as u64,
                timestamp: 0,
                stored_at: i as i64,
            };
            d.insert(*k, ack, 10);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.evicted_early(), 1);
        assert_eq!(d.get(b"a", 10), None);
        assert!(d.get(b"d", 10).is_some());
    }

    #[test]
    fn live_below_gives_the_keys_of_offsets_under_a_bound_within_the_window() {
        let mut d = DedupWindow::new(100, 10);
        let ack = |offset, stored_at| FirstAck {
            offset,
            timestamp: 0,
            stored_at,
        };
        d.insert(b"a", ack(0, 10), 10);
        d.insert(b"b", ack(1, 50), 50);
        d.insert(b"c", ack(2, 60), 60);
        d.insert(b"d", ack(3, 70), 70);
        d.remove(b"c", ack(2, 60));
        let keys = |v: Vec<(Box<[u8]>, FirstAck)>| {
            v.into_iter()
                .map(|(k, a)| (k.to_vec(), a.offset))
                .collect::<Vec<_>>()
        };
        // At 120, "a" (stored at 10) is past the window; "c" was undone.
        assert_eq!(keys(d.live_below(3, &[], 120)), vec![(b"b".to_vec(), 1)]);
        assert_eq!(
            keys(d.live_below(10, &[], 120)),
            vec![(b"b".to_vec(), 1), (b"d".to_vec(), 3)]
        );
        assert!(d.live_below(1, &[], 120).is_empty());
        // Keys of offsets a kept file holds are left out.
        assert_eq!(
            keys(d.live_below(10, &[(3, 4)], 120)),
            vec![(b"b".to_vec(), 1)]
        );
        // Stored out of offset order (a run's keys, in its sort order): all are found.
        let mut d = DedupWindow::new(100, 10);
        d.insert(b"late", ack(9, 50), 50);
        d.insert(b"early", ack(0, 50), 50);
        assert_eq!(keys(d.live_below(5, &[], 60)), vec![(b"early".to_vec(), 0)]);
    }

    fn at(offset: u64) -> FirstAck {
        FirstAck {
            offset,
            timestamp: 0,
            stored_at: 1_000 + offset as i64,
        }
    }

    #[test]
    fn the_walk_below_an_offset_goes_piece_by_piece_and_stops_at_the_offset() {
        let n = LIVE_BELOW_PIECE as u64 * 2 + 100;
        let mut d = DedupWindow::new(i64::MAX / 2, usize::MAX);
        for o in 0..n {
            d.insert(format!("k{o}").as_bytes(), at(o), 1_000);
        }
        assert!(d.sorted);
        // Below the first piece's end: done within it.
        let mut out = Vec::new();
        assert_eq!(d.live_below_from(0, 10, &[], 1_000, &mut out), None);
        assert_eq!(out.len(), 10);
        // Over two pieces; the front of the queue leaves between them (the cap forgets
        // the oldest keys), and the walk goes on where it was.
        let bound = LIVE_BELOW_PIECE as u64 + 50;
        let mut out = Vec::new();
        let next = d.live_below_from(0, bound, &[], 1_000, &mut out);
        assert_eq!(next, Some(LIVE_BELOW_PIECE as u64));
        assert_eq!(out.len(), LIVE_BELOW_PIECE);
        d.max_keys = (n - 5) as usize;
        d.insert(b"new", at(n), 1_000);
        assert_eq!(d.popped, 6);
        assert_eq!(
            d.live_below_from(next.unwrap_or(0), bound, &[], 1_000, &mut out),
            None
        );
        assert_eq!(out.len() as u64, bound);
        let offsets: Vec<u64> = out.iter().map(|(_, a)| a.offset).collect();
        assert_eq!(offsets, (0..bound).collect::<Vec<_>>());
        // The whole walk from the start sees the keys left.
        assert_eq!(d.live_below(bound, &[], 1_000).len() as u64, bound - 6);
    }

    #[test]
    fn an_undone_batch_leaves_the_queue_in_order() {
        let mut d = DedupWindow::new(i64::MAX / 2, usize::MAX);
        for o in 0..5 {
            d.insert(format!("k{o}").as_bytes(), at(o), 1_000);
        }
        // Offsets 3 and 4 undone (newest first), then used again by other keys.
        d.remove(b"k4", at(4));
        d.remove(b"k3", at(3));
        d.insert(b"x3", at(3), 1_000);
        d.insert(b"x4", at(4), 1_000);
        assert!(d.sorted);
        let keys: Vec<Vec<u8>> = d
            .live_below(5, &[], 1_000)
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        assert_eq!(keys, [&b"k0"[..], b"k1", b"k2", b"x3", b"x4"]);
    }

    #[test]
    fn recovered_keys_are_stored_in_offset_order_once() {
        let mut d = DedupWindow::new(i64::MAX / 2, usize::MAX);
        // A kept key file's and a run's (in its sort order), one key in both.
        let found = vec![
            (Box::from(&b"a"[..]), at(1)),
            (Box::from(&b"c"[..]), at(7)),
            (Box::from(&b"b"[..]), at(4)),
            (Box::from(&b"a"[..]), at(1)),
        ];
        d.recovered(found, 1_000);
        assert!(d.sorted);
        assert_eq!(d.order.len(), 3);
        let offsets: Vec<u64> = d
            .live_below(10, &[], 1_000)
            .iter()
            .map(|(_, a)| a.offset)
            .collect();
        assert_eq!(offsets, [1, 4, 7]);
    }

    #[test]
    fn a_queue_out_of_order_is_walked_whole_and_in_order_again_once_empty() {
        let mut d = DedupWindow::new(100, usize::MAX);
        d.insert(b"late", at(9), 1_000);
        d.insert(b"early", at(0), 1_000);
        assert!(!d.sorted);
        let mut out = vec![(Box::from(&b"stale"[..]), at(3))];
        assert_eq!(d.live_below_from(0, 5, &[], 1_050, &mut out), None);
        assert_eq!(out.len(), 1);
        assert_eq!(&*out[0].0, b"early");
        d.expire(2_000);
        assert!(d.is_empty());
        assert!(d.sorted);
    }
}
