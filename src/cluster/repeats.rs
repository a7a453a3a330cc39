//! Failures that repeat, logged once in a while: a follower that reconnects again and
//! again to a leader refusing it for the same reason (or a leader refusing it) would
//! otherwise write the same line several times a second for as long as the cause lasts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long one failure, repeating, stays quiet after it was logged.
pub const QUIET_FOR: Duration = Duration::from_secs(30);

/// Failures kept at most; past it the oldest are forgotten (and logged again when next
/// seen).
const KEPT: usize = 256;

/// Failures by what failed and why: when each was last logged and how often it happened
/// since.
#[derive(Debug, Default)]
pub struct Repeats {
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    logged_at: Instant,
    unlogged: u64,
}

impl Repeats {
    /// Failure `key` happened at `now`: `Some(n)` when it is to be logged, `n` being how
    /// often it happened unlogged since it last was; `None` while it stays quiet.
    pub fn due(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some(s) = self.seen.get_mut(key) {
            if now.saturating_duration_since(s.logged_at) < QUIET_FOR {
                s.unlogged += 1;
                return None;
            }
            let unlogged = s.unlogged;
            *s = Seen {
                logged_at: now,
                unlogged: 0,
            };
            return Some(unlogged);
        }
        if self.seen.len() >= KEPT {
            if let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, s)| s.logged_at)
                .map(|(k, _)| k.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(
            key.to_string(),
            Seen {
                logged_at: now,
                unlogged: 0,
            },
        );
        Some(0)
    }

    /// Forgets every failure: the next of each is logged (the cause went away).
    pub fn clear(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_logged_then_quiet_then_logged_with_the_count_it_kept_quiet() {
        let mut r = Repeats::default();
        let t = Instant::now();
        assert_eq!(r.due("a", t), Some(0));
        assert_eq!(r.due("a", t + Duration::from_millis(200)), None);
        assert_eq!(r.due("b", t + Duration::from_millis(300)), Some(0));
        assert_eq!(r.due("a", t + Duration::from_millis(400)), None);
        assert_eq!(r.due("a", t + QUIET_FOR), Some(2));
        assert_eq!(r.due("a", t + QUIET_FOR + Duration::from_secs(1)), None);
        r.clear();
        assert_eq!(r.due("a", t + QUIET_FOR + Duration::from_secs(2)), Some(0));
    }

    #[test]
    fn past_the_kept_failures_the_oldest_is_forgotten() {
        let mut r = Repeats::default();
        let t = Instant::now();
        for i in 0..KEPT {
            assert_eq!(
                r.due(&i.to_string(), t + Duration::from_millis(i as u64)),
                Some(0)
            );
        }
        let later = t + Duration::from_secs(1);
        assert_eq!(r.due("new", later), Some(0));
        assert_eq!(r.seen.len(), KEPT);
        assert_eq!(r.due("0", later), Some(0), "the oldest was forgotten");
        assert_eq!(r.due("new", later), None);
    }
}
