//! The dedup window: idempotency keys stored recently, with the ack they got.

use std::collections::{HashMap, VecDeque};

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
/// [`DedupWindow::evicted_early`]), so memory stays bounded (about 130 bytes per key) even
/// when keyed publishing outruns the window.
#[derive(Debug, Default)]
pub struct DedupWindow {
    window_ns: i64,
    max_keys: usize,
    map: HashMap<Box<[u8]>, FirstAck>,
    order: VecDeque<(i64, Box<[u8]>)>,
    evicted_early: u64,
}

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
            let Some((t, old)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&old).is_some_and(|a| a.stored_at == t) {
                self.map.remove(&old);
                self.evicted_early += 1;
            }
        }
        self.map.insert(key.into(), ack);
        self.order.push_back((ack.stored_at, key.into()));
    }

    /// Forgets `key` if its entry is `ack` (undo of a failed append).
    pub fn remove(&mut self, key: &[u8], ack: FirstAck) {
        if self.map.get(key) == Some(&ack) {
            self.map.remove(key);
        }
    }

    /// Drops keys stored before the window ending `now`.
    pub fn expire(&mut self, now: i64) {
        let horizon = now.saturating_sub(self.window_ns);
        while let Some((t, _)) = self.order.front() {
            if *t >= horizon {
                break;
            }
            if let Some((t, key)) = self.order.pop_front() {
                if self.map.get(&key).is_some_and(|a| a.stored_at == t) {
                    self.map.remove(&key);
                }
            }
        }
    }

    /// The keys within the window ending `now` whose frames lie below `offset` and outside
    /// every range `[start, end)` of `held` (files that keep them), each once, in offset
    /// order. Every key is looked at: recovery stores a run's keys in its sort order, not
    /// in offset order.
    pub fn live_below(
        &mut self,
        offset: u64,
        held: &[(u64, u64)],
        now: i64,
    ) -> Vec<(Box<[u8]>, FirstAck)> {
        self.expire(now);
        let horizon = now.saturating_sub(self.window_ns);
        let mut out: Vec<(Box<[u8]>, FirstAck)> = self
            .map
            .iter()
            .filter(|(_, a)| {
                a.stored_at >= horizon
                    && a.offset < offset
                    && !held.iter().any(|&(s, e)| (s..e).contains(&a.offset))
            })
            .map(|(k, a)| (k.clone(), *a))
            .collect();
        out.sort_unstable_by_key(|(_, a)| a.offset);
        out
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
}
