//! [`Removals`]: what retention removed, pass by pass, as much as a reader needs to tell
//! whether frames it still needs are gone. Retention removes a prefix of offsets at a time;
//! a reader that began when the oldest retained offset was `floor` lost frames only to the
//! passes after that, and only if one of them removed a key at or past where it reads.
//! The largest key ever removed would do for a reader that began at offset 0, but one old
//! frame with a high seq_no (a publisher whose count started again) would then refuse
//! every later reader for good.

use crate::index::OrderKey;

/// Passes kept apart at most; older ones are merged, which only makes a reader's check
/// more cautious (a refusal, never a silent gap).
const MAX_PASSES: usize = 64;

/// Retention's passes: for each, the oldest retained offset after it and the largest key
/// removed by it or any later pass. Cut-offs rise and keys fall along the list: a pass
/// whose largest key is not above a later one's adds nothing and is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removals {
    passes: Vec<(u64, OrderKey)>,
}

impl Removals {
    /// From the manifest's record: its passes, or, written before it kept them, the largest
    /// key ever removed, counted as removed by one pass up to `first_offset`.
    pub fn from_stored(
        passes: &[(u64, (u64, i64, u64))],
        largest: Option<OrderKey>,
        first_offset: u64,
    ) -> Removals {
        let mut r = Removals::default();
        if passes.is_empty() {
            if let Some(key) = largest {
                r.record(first_offset, key);
            }
        }
        for &(cutoff, (seq_no, timestamp, offset)) in passes {
            r.record(
                cutoff,
                OrderKey {
                    seq_no,
                    timestamp,
                    offset,
                },
            );
        }
        r
    }

    /// The passes as the manifest stores them.
    pub fn to_stored(&self) -> Vec<(u64, (u64, i64, u64))> {
        self.passes
            .iter()
            .map(|(cutoff, k)| (*cutoff, (k.seq_no, k.timestamp, k.offset)))
            .collect()
    }

    /// A pass that removed offsets up to `cutoff` (exclusive), `key` the largest it removed.
    pub fn record(&mut self, cutoff: u64, key: OrderKey) {
        while self.passes.last().is_some_and(|(_, k)| *k <= key) {
            self.passes.pop();
        }
        self.passes.push((cutoff, key));
        if self.passes.len() > MAX_PASSES {
            // The two oldest as one: the later cut-off with the larger (the older) key.
            let (_, key) = self.passes.remove(0);
            self.passes[0].1 = key;
        }
    }

    /// The largest key removed from offsets at or above `floor` (a pass that cut at or
    /// below `floor` removed only frames below it).
    pub fn largest_since(&self, floor: u64) -> Option<OrderKey> {
        self.passes
            .iter()
            .find(|(cutoff, _)| *cutoff > floor)
            .map(|(_, k)| *k)
    }

    /// The largest key ever removed.
    pub fn largest(&self) -> Option<OrderKey> {
        self.passes.first().map(|(_, k)| *k)
    }

    /// The passes, oldest first: each one's cut-off and the largest key it or a later
    /// pass removed.
    pub fn passes(&self) -> &[(u64, OrderKey)] {
        &self.passes
    }

    /// True when no pass removed anything.
    pub fn is_empty(&self) -> bool {
        self.passes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(seq_no: u64, offset: u64) -> OrderKey {
        OrderKey {
            seq_no,
            timestamp: 1,
            offset,
        }
    }

    /// A model: every pass kept, the largest key over those that cut above `floor`.
    fn model(passes: &[(u64, OrderKey)], floor: u64) -> Option<OrderKey> {
        passes
            .iter()
            .filter(|(cutoff, _)| *cutoff > floor)
            .map(|(_, k)| *k)
            .max()
    }

    #[test]
    fn an_old_high_key_counts_only_for_readers_that_began_before_its_pass() {
        let mut r = Removals::default();
        r.record(1, key(1_000, 0));
        r.record(14, key(13, 13));
        r.record(26, key(25, 25));
        assert_eq!(r.largest_since(0), Some(key(1_000, 0)));
        assert_eq!(r.largest_since(1), Some(key(25, 25)));
        assert_eq!(r.largest_since(14), Some(key(25, 25)));
        assert_eq!(r.largest_since(26), None);
        assert_eq!(r.largest(), Some(key(1_000, 0)));
    }

    #[test]
    fn it_agrees_with_every_pass_kept_and_merging_only_adds_caution() {
        // Keys up and down (seq_no counts that start again), more passes than are kept.
        let mut r = Removals::default();
        let mut all = Vec::new();
        let mut seed = 7u64;
        for i in 0..500u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = key(seed >> 54, i * 10 + 9);
            r.record((i + 1) * 10, k);
            all.push(((i + 1) * 10, k));
            for floor in [0, i * 10, (i + 1) * 10, i * 5] {
                let got = r.largest_since(floor);
                let want = model(&all, floor);
                assert!(got >= want, "floor {floor}: {got:?} < {want:?}");
                if floor >= all[all.len().saturating_sub(MAX_PASSES)].0 {
                    assert_eq!(got, want, "floor {floor}, within the passes kept apart");
                }
            }
        }
        assert!(r.passes.len() <= MAX_PASSES);
        // Stored and read back, it is the same.
        let again = Removals::from_stored(&r.to_stored(), None, 0);
        assert_eq!(again, r);
    }

    #[test]
    fn a_manifest_from_before_passes_were_kept_is_read_cautiously() {
        let r = Removals::from_stored(&[], Some(key(9, 4)), 5);
        assert_eq!(r.largest_since(4), Some(key(9, 4)));
        assert_eq!(r.largest_since(5), None);
        assert_eq!(Removals::from_stored(&[], None, 5), Removals::default());
    }
}
