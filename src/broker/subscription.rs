//! A subscription: a cursor over the log, replaying history in order-key order up to the
//! snapshot point, then following live frames in offset order.
//!
//! It holds no queue: each step reads the next small batch from the log (payloads point
//! into the segment mappings), so a subscriber that stops reading costs a cursor and one
//! batch, however far behind it falls. It is polled by the gRPC layer only when the
//! connection can take more, so a slow reader never slows a publisher or another reader.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;

use super::cluster_view::OutOfSync;
use super::error::Error;
use super::frame_cache::Cached;
use super::metrics::{Counter, Transport};
use super::shutdown::Shutdown;
use super::topics::{Ended, SubscriberSlot, Topic};
use crate::index::OrderKey;
use crate::proto;
use crate::wal::StoredFrame;

/// Most frames read from the log per step.
const BATCH: usize = 256;
/// Payload bytes a step aims to stay under: with large frames the next step reads fewer
/// frames (at least one), so a batch is about this big, not 256 frames of 1 MiB. The
/// payloads point into the segment mappings, but each frame sent is copied into tonic's
/// encode buffer, and a batch pins its segments.
const BATCH_BYTES: usize = 4 << 20;
/// Frames' room a waiting subscription keeps in its step buffers. They start empty and grow
/// to what a step reads (a replay step up to `BATCH`); when the subscription has caught up
/// and waits, room beyond this goes back to the allocator (a step of up to this many
/// frames, a commit's worth for a live subscriber, reallocates nothing). Allocated for
/// `BATCH` frames from the start they cost 38 KB per subscription, touched as the ring
/// turns: 441 MB of server memory at 1 → 10,000 live subscribers, 196–208 MB without them
/// (BENCHMARKS.md); at this size, under 5 KB.
const IDLE_ROOM: usize = 32;

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Replaying frames with offset below the snapshot, from this key on.
    Replay { from: OrderKey },
    /// Following frames from this offset on.
    Live { next: u64 },
}

/// A subscription as a stream of frames; the first error ends it.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<proto::Frame, Error>> + Send>>;

/// One open subscriber stream.
pub struct Subscription {
    topic: Arc<Topic>,
    start_seq_no: u64,
    snapshot: u64,
    phase: Phase,
    buf: VecDeque<proto::Frame>,
    /// Reused for every read, so a live step that finds one frame allocates nothing (both
    /// buffers shrink to `IDLE_ROOM` when the subscription waits).
    scratch: Vec<StoredFrame>,
    /// Frames the next step reads: `BATCH`, less when frames are large.
    batch: usize,
    visible: watch::Receiver<u64>,
    ended: watch::Receiver<Option<Ended>>,
    shutdown: Shutdown,
    /// Whether this node fell out of sync: the stream ends then, naming the leader (the
    /// fall wakes a waiting subscription through its topic's frontier, so waiting costs
    /// no signal of its own).
    out_of_sync: OutOfSync,
    finished: bool,
    /// The oldest retained offset when the stream (or the first of those it resumes)
    /// started ([`StartAt::floor_in`]): retention after it may have removed frames it needs.
    first_at_start: u64,
    /// When the caller's token expires: the stream ends with UNAUTHENTICATED then.
    expires: Option<tokio::time::Instant>,
    /// `delivered_frames_total{topic,transport}` of this subscription's door.
    delivered: Counter,
    /// Frames sent since the counter was last added to: it is added to once per step, not
    /// per frame, so that a thousand subscribers do not contend on one cache line.
    uncounted: u64,
    /// Frames of the snapshot replayed so far.
    replayed: u64,
    /// The position the subscription started at.
    replay_base: u64,
    /// Shared with the topic, for `subscriber_max_lag_frames`.
    position: Arc<AtomicU64>,
    /// Whether the door sends only the frames' encoding (gRPC, gRPC-Web): cached live
    /// frames are then handed over as [`proto::Frame::wire_only`] copies.
    wire_only: bool,
    _slots: (SubscriberSlot, GlobalSlot),
}

/// A slot in the server-wide subscriber count.
pub struct GlobalSlot(pub(crate) Arc<std::sync::atomic::AtomicUsize>);

impl Drop for GlobalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where a new subscription starts, after the cursor was checked.
#[derive(Debug, Clone, Copy)]
pub struct StartAt {
    /// Snapshot point S.
    pub snapshot: u64,
    /// `replay_seq_no_start`.
    pub start_seq_no: u64,
    /// The last frame the client has, if resuming: `(order key, had offset < S)`.
    pub after: Option<OrderKey>,
    /// The topic's oldest retained offset when the stream (the first of those it resumes)
    /// began: retention since then may have removed frames it still needs, and before
    /// then removed none it was promised. `None`: not known (a gRPC cursor carries none).
    pub floor: Option<u64>,
}

impl StartAt {
    /// The oldest retained offset the stream's retention checks count from: its floor, or
    /// without one, 0 for a resume (every removal counts, which may refuse a resume that
    /// could be served, never skip a frame) and what is retained now for a new stream.
    pub(super) fn floor_in(&self, log: &crate::wal::Log) -> u64 {
        match (self.floor, self.after) {
            (Some(floor), _) => floor,
            (None, Some(_)) => 0,
            (None, None) => log.first_offset(),
        }
    }

    /// Where the stream begins: replaying from a key, or live from an offset.
    fn phase(&self) -> Phase {
        let first = OrderKey::first_of_seq(self.start_seq_no);
        match self.after {
            None => Phase::Replay { from: first },
            Some(last) if last.offset < self.snapshot => match last.successor() {
                Some(next) => Phase::Replay {
                    from: next.max(first),
                },
                None => Phase::Live {
                    next: self.snapshot,
                },
            },
            Some(last) => Phase::Live {
                next: last.offset + 1,
            },
        }
    }

    /// The refusal of a resume after a frame that needs frames retention has removed
    /// (`OUT_OF_RANGE`, naming the oldest retained offset), checked when it opens so that
    /// every door answers it as the call's status (HTTP: before the event stream's 200);
    /// `None` when it can be served. The rules are the ones an open stream's steps apply
    /// (the replay's, then the first live read's), counted from the stream's floor. A fresh
    /// subscription's history is what is retained now, and a cursor naming no frame and
    /// no floor carries no record of what was retained when its stream began: neither is
    /// refused here.
    pub(super) fn removed_refusal(&self, log: &crate::wal::Log) -> Option<Error> {
        if self.after.is_none() && self.floor.is_none() {
            return None;
        }
        let floor = self.floor_in(log);
        let (first, removed) = log.removed_since(floor);
        let gap = match self.phase() {
            // Replayed frames it still needs, or the live ones after the snapshot (the
            // replay's step, then the first live read's).
            Phase::Replay { from } => {
                (floor < self.snapshot && removed.is_some_and(|k| k >= from))
                    || self.snapshot < first
            }
            Phase::Live { next } => next < first,
        };
        gap.then(|| out_of_range(first))
    }
}

impl Subscription {
    /// A subscription of `topic` starting at `at`; it ends at `shutdown`, when the token
    /// `expires`, and when this node falls `out_of_sync`.
    pub fn new(
        topic: Arc<Topic>,
        at: StartAt,
        (shutdown, out_of_sync): (Shutdown, OutOfSync),
        slots: (SubscriberSlot, GlobalSlot),
        expires: Option<tokio::time::Instant>,
    ) -> Subscription {
        let phase = at.phase();
        let first_at_start = at.floor_in(topic.log());
        let delivered = topic.metrics().delivered(slots.0.transport()).clone();
        let wire_only = matches!(slots.0.transport(), Transport::Grpc | Transport::GrpcWeb);
        let position = Arc::clone(slots.0.position());
        let replay_base = position.load(Ordering::Relaxed);
        Subscription {
            replay_base,
            delivered,
            wire_only,
            uncounted: 0,
            replayed: 0,
            position,
            first_at_start,
            visible: topic.watch_visible(),
            ended: topic.watch_ended(),
            topic,
            start_seq_no: at.start_seq_no,
            snapshot: at.snapshot,
            phase,
            buf: VecDeque::new(),
            scratch: Vec::new(),
            batch: BATCH,
            shutdown,
            out_of_sync,
            finished: false,
            expires,
            _slots: slots,
        }
    }

    /// Turns the subscription into a stream of frames, for a door to send.
    pub fn into_stream(self) -> FrameStream {
        Box::pin(SubscriptionStream {
            sub: Box::new(self),
            wait: ReusableBoxFuture::new(std::future::ready(Ok(()))),
            waiting: false,
        })
    }

    /// Counts a frame handed to the door and moves the position past it: a live frame's
    /// offset, or one more frame of the snapshot replayed (replay is in key order, so its
    /// offsets say nothing about how far it got).
    fn sent(&mut self, f: &proto::Frame) {
        self.uncounted += 1;
        let position = if f.offset >= self.snapshot {
            f.offset + 1
        } else {
            self.replayed += 1;
            (self.replay_base + self.replayed).min(self.snapshot)
        };
        self.position.store(position, Ordering::Relaxed);
    }

    /// Adds the frames sent since the last call to the delivered counter.
    fn count_delivered(&mut self) {
        if self.uncounted > 0 {
            self.delivered.inc_by(self.uncounted);
            self.uncounted = 0;
        }
    }

    /// Queues the next frames (or moves from replay to live), or says that the subscription
    /// must wait for the visibility frontier to move. Never waits itself.
    fn fill(&mut self) -> Result<Fill, Error> {
        // Every frame of the last step was sent: count them before reading or waiting.
        self.count_delivered();
        self.check_open()?;
        let log = self.topic.log();
        match self.phase {
            Phase::Replay { from } => {
                let mut got = std::mem::take(&mut self.scratch);
                let done = log
                    .read_ordered(&from, self.snapshot, self.batch, &mut got)
                    .map_err(Error::from)?;
                // Frames this replay still needs (key >= from, offset < S) may have been
                // removed by retention since it started: then say so, never skip them.
                let (first, removed) = log.removed_since(self.first_at_start);
                if self.first_at_start < self.snapshot && removed.is_some_and(|k| k >= from) {
                    return Err(out_of_range(first));
                }
                self.phase = match got.last().and_then(|f| f.key().successor()) {
                    Some(next) if !done => Phase::Replay { from: next },
                    _ => Phase::Live {
                        next: self.snapshot,
                    },
                };
                self.batch = next_batch(self.batch, &got);
                self.buf.extend(got.drain(..).map(plain));
                self.scratch = got;
                Ok(Fill::Filled)
            }
            Phase::Live { next } => {
                let visible = *self.visible.borrow_and_update();
                if visible > next {
                    self.phase = Phase::Live {
                        next: self.read_live(next, visible)?,
                    };
                    Ok(Fill::Filled)
                } else {
                    Ok(Fill::Wait)
                }
            }
        }
    }

    /// Queues the live frames from `next` on (below the visibility frontier `until`) and
    /// returns the offset after them: from the topic's shared cache of encoded frames, or,
    /// for a subscriber behind it, read from the log and encoded by this subscriber alone.
    fn read_live(&mut self, next: u64, until: u64) -> Result<u64, Error> {
        let log = self.topic.log();
        let oor = |e| match e {
            crate::wal::Error::OutOfRange { first, .. } => out_of_range(first),
            e => Error::from(e),
        };
        // Frames retention removed are refused as the log would refuse them, even if the
        // cache still holds them.
        if next >= log.first_offset() {
            let cached = self
                .topic
                .frame_cache()
                .read(
                    log,
                    next,
                    until,
                    self.start_seq_no,
                    self.batch,
                    self.wire_only,
                    &mut self.buf,
                )
                .map_err(oor)?;
            if let Cached::Next(after) = cached {
                return Ok(after);
            }
        }
        let mut got = std::mem::take(&mut self.scratch);
        let after = log
            .read_range(next, until, self.start_seq_no, self.batch, &mut got)
            .map_err(oor)?;
        self.batch = next_batch(self.batch, &got);
        self.buf.extend(got.drain(..).map(plain));
        self.scratch = got;
        Ok(after)
    }

    /// Gives back the step buffers' room beyond `IDLE_ROOM` (they are empty: the
    /// subscription waits with nothing to send).
    fn shrink_idle(&mut self) {
        if self.buf.capacity() > IDLE_ROOM {
            self.buf.shrink_to(IDLE_ROOM);
        }
        if self.scratch.capacity() > IDLE_ROOM {
            self.scratch.shrink_to(IDLE_ROOM);
        }
    }

    /// What completes when the visibility frontier moves past what this subscription has
    /// seen, or the stream must end: made of clones of its signals (a clone of the frontier's
    /// receiver has seen what it has seen), so it borrows nothing.
    fn wait_for_more(&self) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let mut visible = self.visible.clone();
        let mut ended = self.ended.clone();
        let mut shutdown = self.shutdown.clone();
        let expires = self.expires;
        async move {
            tokio::select! {
                changed = visible.changed() => {
                    if changed.is_err() {
                        return Err(Error::Wal(crate::wal::Error::Unavailable("topic log closed".into())));
                    }
                }
                _ = ended.wait_for(Option::is_some) => {}
                _ = shutdown.wait() => {}
                () = until(expires) => {}
            }
            Ok(())
        }
    }

    fn check_open(&mut self) -> Result<(), Error> {
        if self.shutdown.is_fired() {
            return Err(Error::ShuttingDown);
        }
        match *self.ended.borrow() {
            Some(Ended::Deleted) => {
                return Err(Error::TopicNotFound(self.topic.name().to_string()))
            }
            Some(Ended::Reopened) => {
                return Err(Error::Wal(crate::wal::Error::Unavailable(format!(
                    "topic '{}' was reopened on this node; resume to continue",
                    self.topic.name()
                ))))
            }
            None => {}
        }
        if self
            .expires
            .is_some_and(|at| tokio::time::Instant::now() >= at)
        {
            return Err(Error::TokenExpired);
        }
        match self.out_of_sync.refusal() {
            Some(refusal) => Err(refusal),
            None => Ok(()),
        }
    }
}

/// What [`Subscription::fill`] did.
enum Fill {
    /// Frames were queued, or the phase moved on: look again.
    Filled,
    /// Nothing to send until the visibility frontier moves.
    Wait,
}

/// How many reads that found only frames the subscriber skips one poll makes before it
/// yields (each read covers up to a batch of offsets).
const EMPTY_FILLS_PER_POLL: u32 = 4;

/// A subscription polled as a stream: frames already read are handed out without building
/// a future (replay hands out 256 per read), and only waiting for the frontier is a
/// future, kept in one reused allocation.
struct SubscriptionStream {
    sub: Box<Subscription>,
    wait: ReusableBoxFuture<'static, Result<(), Error>>,
    /// Whether `wait` is a wait in progress.
    waiting: bool,
}

impl Stream for SubscriptionStream {
    type Item = Result<proto::Frame, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let sub = &mut this.sub;
        let mut empty_fills = 0;
        loop {
            if sub.finished {
                return Poll::Ready(None);
            }
            if let Some(f) = sub.buf.pop_front() {
                sub.sent(&f);
                return Poll::Ready(Some(Ok(f)));
            }
            let step = if this.waiting {
                match this.wait.poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(done) => {
                        this.waiting = false;
                        done.and_then(|()| sub.fill())
                    }
                }
            } else {
                sub.fill()
            };
            match step {
                Ok(Fill::Filled) if sub.buf.is_empty() => {
                    // Every frame read was below the subscriber's replay_seq_no_start. The
                    // log may hold millions of them: scan on in a later poll, so that this
                    // worker thread serves others meanwhile.
                    empty_fills += 1;
                    if empty_fills == EMPTY_FILLS_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Ok(Fill::Filled) => {}
                Ok(Fill::Wait) => {
                    sub.shrink_idle();
                    this.wait.set(sub.wait_for_more());
                    this.waiting = true;
                }
                Err(e) => {
                    sub.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.count_delivered();
    }
}

/// A frame read from the log, encoded when sent.
fn plain(f: StoredFrame) -> proto::Frame {
    proto::Frame::new(f.seq_no, f.payload, f.timestamp, f.offset)
}

/// The frame count of the next step after reading `got` with a count of `batch`: what
/// keeps a batch of frames of this size near `BATCH_BYTES`, at least 1, at most `BATCH`;
/// it grows back (doubling) when frames get smaller.
fn next_batch(batch: usize, got: &[StoredFrame]) -> usize {
    let bytes: usize = got.iter().map(|f| f.payload.len()).sum();
    if got.is_empty() || bytes == 0 {
        return batch;
    }
    let fits = BATCH_BYTES * got.len() / bytes;
    fits.min(batch.saturating_mul(2)).clamp(1, BATCH)
}

/// Completes at `deadline`, or never.
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn out_of_range(oldest: u64) -> Error {
    Error::OutOfRange(format!(
        "frames needed by this subscription were removed by retention; the oldest retained offset is {oldest}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frames(n: usize, size: usize) -> Vec<StoredFrame> {
        (0..n)
            .map(|i| StoredFrame {
                offset: i as u64,
                seq_no: i as u64,
                timestamp: 1,
                payload: Bytes::from(vec![0u8; size]),
            })
            .collect()
    }

    #[test]
    fn batches_shrink_for_large_frames_and_grow_back() {
        // 256 frames of 1 MiB: the next step reads 4 (4 MiB).
        assert_eq!(next_batch(BATCH, &frames(8, 1 << 20)), 4);
        // Frames larger than the byte target: one at a time.
        assert_eq!(next_batch(4, &frames(1, 8 << 20)), 1);
        // Small frames again: doubling back up to BATCH.
        assert_eq!(next_batch(1, &frames(1, 100)), 2);
        assert_eq!(next_batch(200, &frames(200, 100)), BATCH);
        // Nothing read: unchanged.
        assert_eq!(next_batch(7, &[]), 7);
    }
}
