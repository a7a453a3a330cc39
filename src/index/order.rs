//! The order index: every frame's order key, kept sorted, in compact chunks.

/// Replay order: `(seq_no, timestamp, offset)`, ascending. Offsets are unique, so no two
/// frames share a key and "the key after k" names an exact resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderKey {
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Stored timestamp.
    pub timestamp: i64,
    /// Offset in the topic.
    pub offset: u64,
}

impl OrderKey {
    /// The smallest key with `seq_no`.
    pub fn first_of_seq(seq_no: u64) -> OrderKey {
        OrderKey {
            seq_no,
            timestamp: i64::MIN,
            offset: 0,
        }
    }

    /// The smallest key greater than `self`.
    pub fn successor(&self) -> Option<OrderKey> {
        if let Some(offset) = self.offset.checked_add(1) {
            return Some(OrderKey { offset, ..*self });
        }
        if let Some(timestamp) = self.timestamp.checked_add(1) {
            return Some(OrderKey {
                timestamp,
                offset: 0,
                ..*self
            });
        }
        self.seq_no.checked_add(1).map(OrderKey::first_of_seq)
    }
}

/// Keys per chunk. 1024 keys × 24 bytes = 24 KiB: large enough that chunk bookkeeping is
/// noise per key, small enough that an out-of-order insert moves little memory.
const CHUNK: usize = 1024;
/// Keys a split or full chunk grows by at a time (exactly, not doubling).
const GROWTH: usize = 64;

#[derive(Debug)]
struct Chunk {
    keys: Vec<OrderKey>,
    /// Smallest offset in the chunk, so scans bounded by a snapshot skip chunks of new frames.
    min_offset: u64,
}

impl Chunk {
    fn with_first(key: OrderKey) -> Chunk {
        // Room for GROWTH keys, doubling up to CHUNK as keys come: a small topic (a chat
        // room with ten frames) holds 1.5 KiB here, not 24 KiB.
        let mut keys = Vec::with_capacity(GROWTH);
        keys.push(key);
        Chunk {
            keys,
            min_offset: key.offset,
        }
    }

    fn last(&self) -> &OrderKey {
        // Chunks are never empty: they are made with one key and dropped when emptied.
        &self.keys[self.keys.len() - 1]
    }
}

/// All order keys of a topic, sorted, as a list of sorted chunks.
///
/// Appends whose key is greater than every key so far (seq_no mostly growing, the common
/// case) are a push onto the last chunk: O(1), and chunks fill completely, so the index
/// costs 24 bytes per frame. Out-of-order keys take a binary search and an insert into one
/// chunk, splitting it when full.
#[derive(Debug, Default)]
pub struct OrderIndex {
    chunks: Vec<Chunk>,
    len: usize,
}

impl OrderIndex {
    /// An empty index.
    pub fn new() -> OrderIndex {
        OrderIndex::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The smallest key.
    pub fn first(&self) -> Option<&OrderKey> {
        self.chunks.first().and_then(|c| c.keys.first())
    }

    /// The largest key.
    pub fn last(&self) -> Option<&OrderKey> {
        self.chunks.last().map(Chunk::last)
    }

    /// Heap bytes held by the index (capacity, not just length).
    pub fn heap_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Chunk>()
            + self
                .chunks
                .iter()
                .map(|c| c.keys.capacity() * std::mem::size_of::<OrderKey>())
                .sum::<usize>()
    }

    /// Adds a key. Keys are unique (they contain the offset); inserting one twice is a bug
    /// of the caller and keeps both.
    pub fn insert(&mut self, key: OrderKey) {
        self.len += 1;
        match self.chunks.last_mut() {
            None => {
                self.chunks.push(Chunk::with_first(key));
                return;
            }
            Some(last) if key > *last.last() => {
                if last.keys.len() < CHUNK {
                    last.keys.push(key);
                    last.min_offset = last.min_offset.min(key.offset);
                } else {
                    self.chunks.push(Chunk::with_first(key));
                }
                return;
            }
            Some(_) => {}
        }
        // Out of order: the first chunk whose last key is >= key exists, because key is
        // below the last key overall.
        let mut ci = self.chunks.partition_point(|c| *c.last() < key);
        if self.chunks[ci].keys.len() == CHUNK {
            // Split in halves, each with room for GROWTH more keys (not a whole CHUNK): chunks
            // made by out-of-order inserts then stay mostly full, so random seq_nos cost ~25
            // bytes per key instead of ~32.
            let mut right = Vec::with_capacity(CHUNK / 2 + GROWTH);
            right.extend_from_slice(&self.chunks[ci].keys[CHUNK / 2..]);
            let right = Chunk {
                min_offset: min_offset(&right),
                keys: right,
            };
            let left = &mut self.chunks[ci];
            left.keys.truncate(CHUNK / 2);
            left.keys.shrink_to(CHUNK / 2 + GROWTH);
            left.min_offset = min_offset(&left.keys);
            self.chunks.insert(ci + 1, right);
            if key > *self.chunks[ci].last() {
                ci += 1;
            }
        }
        let chunk = &mut self.chunks[ci];
        if chunk.keys.len() == chunk.keys.capacity() {
            chunk
                .keys
                .reserve_exact(GROWTH.min(CHUNK - chunk.keys.len()));
        }
        let chunk = &mut self.chunks[ci];
        let at = chunk.keys.partition_point(|k| *k < key);
        chunk.keys.insert(at, key);
        chunk.min_offset = chunk.min_offset.min(key.offset);
    }

    /// Appends to `out` up to `max` keys `>= from`, in key order, skipping keys whose offset
    /// is not below `offset_limit`. Returns true when the scan reached the end of the index.
    pub fn collect(
        &self,
        from: &OrderKey,
        offset_limit: u64,
        max: usize,
        out: &mut Vec<OrderKey>,
    ) -> bool {
        let mut taken = 0;
        let ci = self.chunks.partition_point(|c| c.last() < from);
        for (i, chunk) in self.chunks[ci..].iter().enumerate() {
            if chunk.min_offset >= offset_limit {
                continue;
            }
            let start = if i == 0 {
                chunk.keys.partition_point(|k| k < from)
            } else {
                0
            };
            for key in &chunk.keys[start..] {
                if key.offset < offset_limit {
                    if taken == max {
                        return false;
                    }
                    out.push(*key);
                    taken += 1;
                }
            }
        }
        true
    }

    /// Appends to `out` up to `max` keys `< before` (every key when `None`) and `>= min`, in
    /// descending key order, skipping keys whose offset is not below `offset_limit`. Returns
    /// true when no such key remains below the last one taken.
    pub fn collect_rev(
        &self,
        before: Option<&OrderKey>,
        min: &OrderKey,
        offset_limit: u64,
        max: usize,
        out: &mut Vec<OrderKey>,
    ) -> bool {
        let mut taken = 0;
        // Chunks holding a key below `before`: those whose first key is below it.
        let end = match before {
            Some(b) => self.chunks.partition_point(|c| c.keys[0] < *b),
            None => self.chunks.len(),
        };
        for chunk in self.chunks[..end].iter().rev() {
            if chunk.last() < min {
                return true;
            }
            if chunk.min_offset >= offset_limit {
                continue;
            }
            let stop = before.map_or(chunk.keys.len(), |b| chunk.keys.partition_point(|k| k < b));
            for key in chunk.keys[..stop].iter().rev() {
                if key < min {
                    return true;
                }
                if key.offset < offset_limit {
                    if taken == max {
                        return false;
                    }
                    out.push(*key);
                    taken += 1;
                }
            }
        }
        true
    }

    /// Removes every key whose offset is below `first_offset` (retention, compaction). The
    /// survivors are packed into full chunks again, so memory shrinks with the key count.
    pub fn remove_below_offset(&mut self, first_offset: u64) {
        if self.chunks.iter().all(|c| c.min_offset >= first_offset) {
            return;
        }
        let old = std::mem::take(&mut self.chunks);
        self.len = 0;
        for key in old
            .iter()
            .flat_map(|c| c.keys.iter())
            .filter(|k| k.offset >= first_offset)
        {
            // Keys come in order, so every insert is the O(1) append path.
            self.insert(*key);
        }
    }

    /// Every key in order (tests and tools).
    pub fn iter(&self) -> impl Iterator<Item = &OrderKey> {
        self.chunks.iter().flat_map(|c| c.keys.iter())
    }
}

fn min_offset(keys: &[OrderKey]) -> u64 {
    keys.iter().map(|k| k.offset).min().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seq_no: u64, timestamp: i64, offset: u64) -> OrderKey {
        OrderKey {
            seq_no,
            timestamp,
            offset,
        }
    }

    #[test]
    fn in_order_appends_fill_chunks() {
        let mut idx = OrderIndex::new();
        for i in 0..10_000u64 {
            idx.insert(key(i, 0, i));
        }
        assert_eq!(idx.len(), 10_000);
        assert!(
            idx.heap_bytes() <= 10_000 * 24 + 11 * 1024 * 24,
            "{}",
            idx.heap_bytes()
        );
        let mut out = Vec::new();
        assert!(!idx.collect(&OrderKey::first_of_seq(5000), u64::MAX, 3, &mut out));
        assert_eq!(
            out,
            vec![key(5000, 0, 5000), key(5001, 0, 5001), key(5002, 0, 5002)]
        );
    }

    #[test]
    fn successor_is_the_next_key() {
        assert_eq!(key(1, 2, 3).successor(), Some(key(1, 2, 4)));
        assert_eq!(key(1, 2, u64::MAX).successor(), Some(key(1, 3, 0)));
        assert_eq!(
            key(1, i64::MAX, u64::MAX).successor(),
            Some(OrderKey::first_of_seq(2))
        );
        assert_eq!(key(u64::MAX, i64::MAX, u64::MAX).successor(), None);
    }

    proptest! {
        #[test]
        fn matches_a_sorted_reference(
            keys in proptest::collection::vec((0u64..50, 0i64..5), 0..3000),
            from in (0u64..50, 0i64..5, 0u64..3000),
            limit in 0u64..3200, max in 0usize..4000, cut in 0u64..3000) {
            let mut idx = OrderIndex::new();
            let mut reference = Vec::new();
            for (offset, (s, t)) in keys.iter().enumerate() {
                let k = key(*s, *t, offset as u64);
                idx.insert(k);
                reference.push(k);
            }
            reference.sort();
            prop_assert_eq!(idx.iter().copied().collect::<Vec<_>>(), reference.clone());
            let from = key(from.0, from.1, from.2);
            let expect: Vec<_> = reference.iter().filter(|k| **k >= from && k.offset < limit)
                .copied().collect();
            let mut got = Vec::new();
            let done = idx.collect(&from, limit, max, &mut got);
            prop_assert_eq!(&got[..], &expect[..max.min(expect.len())]);
            prop_assert_eq!(done, expect.len() <= max);
            // Backwards: keys below `before` (none: all) and at least `min`, descending.
            let before = (cut % 3 != 0).then_some(from);
            let min = key(from.seq_no / 2, 0, 0);
            let expect: Vec<_> = reference.iter().rev()
                .filter(|k| before.is_none_or(|b| **k < b) && **k >= min && k.offset < limit)
                .copied().collect();
            let mut got = Vec::new();
            let done = idx.collect_rev(before.as_ref(), &min, limit, max, &mut got);
            prop_assert_eq!(&got[..], &expect[..max.min(expect.len())]);
            prop_assert_eq!(done, expect.len() <= max);
            idx.remove_below_offset(cut);
            reference.retain(|k| k.offset >= cut);
            prop_assert_eq!(idx.iter().copied().collect::<Vec<_>>(), reference.clone());
            prop_assert_eq!(idx.len(), reference.len());
        }
    }
}
