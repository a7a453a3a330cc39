//! Latency recording without coordinated omission.
//!
//! Every frame has an *intended* send time fixed in advance by the [`Pacer`] (the k-th frame
//! of a run at R frames/s is due at k/R seconds). Latency is measured from that time, not
//! from when the frame actually left: if the server stalls for a second, the frames that
//! should have gone out during the stall count the stall in their latency, as wrk2 does.
//! Without a target rate there is no schedule, and latency is the service time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Highest latency recorded, in µs (one hour); larger values are clamped.
const MAX_US: u64 = 3_600_000_000;

/// The run's clock: nanoseconds since a shared start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the start.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant `ns` after the start.
    pub fn at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Fixes when each frame of one publisher is due: publishers share the total rate and are
/// staggered so that together they send evenly.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    /// ns between two frames of the whole run; 0 = no schedule (as fast as possible).
    interval_ns: f64,
    publishers: u64,
    index: u64,
    /// When the schedule starts, in run-clock ns.
    origin_ns: u64,
}

impl Pacer {
    /// The schedule of publisher `index` of `publishers` at `rate` frames/s in total.
    pub fn new(rate: f64, publishers: usize, index: usize, origin_ns: u64) -> Pacer {
        Pacer {
            interval_ns: if rate > 0.0 { 1e9 / rate } else { 0.0 },
            publishers: publishers.max(1) as u64,
            index: index as u64,
            origin_ns,
        }
    }

    /// True when frames have due times.
    pub fn is_paced(&self) -> bool {
        self.interval_ns > 0.0
    }

    /// When this publisher's `k`-th frame is due (run-clock ns); `None` without a schedule.
    pub fn due_ns(&self, k: u64) -> Option<u64> {
        self.is_paced().then(|| {
            self.origin_ns + ((k * self.publishers + self.index) as f64 * self.interval_ns) as u64
        })
    }
}

/// A set of histograms that many tasks record into. Tasks are spread over a few shards so
/// that 10,000 subscribers do not need 10,000 histograms, nor one contended lock.
#[derive(Debug, Clone)]
pub struct Recorder {
    shards: Arc<[Mutex<Histogram<u64>>]>,
}

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to an hour: ~190 KiB per histogram.
    Histogram::new_with_bounds(1, MAX_US, 3)
        .unwrap_or_else(|e| unreachable!("constant bounds are valid: {e}"))
}

impl Recorder {
    /// A recorder with `shards` histograms.
    pub fn new(shards: usize) -> Recorder {
        let shards: Vec<_> = (0..shards.max(1))
            .map(|_| Mutex::new(histogram()))
            .collect();
        Recorder {
            shards: shards.into(),
        }
    }

    /// A handle for task `i`, buffering a few samples before taking its shard's lock.
    pub fn handle(&self, i: usize) -> LatencySink {
        LatencySink {
            recorder: self.clone(),
            shard: i % self.shards.len(),
            buf: Vec::with_capacity(SINK_BUF),
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for s in self.shards.iter() {
            let _ = all.add(&*s.lock());
        }
        all
    }
}

const SINK_BUF: usize = 64;

/// One task's way into a [`Recorder`]. Flushes on drop.
#[derive(Debug)]
pub struct LatencySink {
    recorder: Recorder,
    shard: usize,
    buf: Vec<u64>,
}

impl LatencySink {
    /// Records a latency of `ns` nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.buf.push((ns / 1000).clamp(1, MAX_US));
        if self.buf.len() >= SINK_BUF {
            self.flush();
        }
    }

    /// Moves buffered samples into the shared histogram.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.recorder.shards[self.shard].lock();
        for &v in &self.buf {
            h.saturating_record(v);
        }
        self.buf.clear();
    }
}

impl Drop for LatencySink {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_staggers_publishers_evenly() {
        // 1000 frames/s over 2 publishers: a frame every ms, alternating.
        let a = Pacer::new(1000.0, 2, 0, 0);
        let b = Pacer::new(1000.0, 2, 1, 0);
        assert_eq!(a.due_ns(0), Some(0));
        assert_eq!(b.due_ns(0), Some(1_000_000));
        assert_eq!(a.due_ns(1), Some(2_000_000));
        assert_eq!(b.due_ns(3), Some(7_000_000));
        assert_eq!(Pacer::new(0.0, 1, 0, 0).due_ns(5), None);
    }

    #[test]
    fn a_stall_shows_in_every_frame_it_delayed() {
        // 1 frame per ms is due; the server stalls 100 ms, then answers all at once. Measured
        // from the intended time, about half of the 100 frames wait 50 ms or more.
        let rec = Recorder::new(2);
        let mut sink = rec.handle(0);
        let pacer = Pacer::new(1000.0, 1, 0, 0);
        let answered_at = 100_000_000u64;
        for k in 0..100 {
            let due = pacer.due_ns(k).unwrap_or(0);
            sink.record_ns(answered_at - due);
        }
        drop(sink);
        let h = rec.merged();
        assert_eq!(h.len(), 100);
        assert!(
            h.value_at_quantile(0.5) >= 49_000,
            "p50 {}",
            h.value_at_quantile(0.5)
        );
        assert!(h.max() >= 99_000);
    }
}
