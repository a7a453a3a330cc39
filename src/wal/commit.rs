//! Group commit: one [`Committer`] per log takes every queued append, encodes it straight
//! into the active segment's mapping, syncs once under the fsync policy, updates the index,
//! moves the durable frontier and answers every waiter, so concurrent appenders share one
//! sync. It runs on the process's pool of committer threads ([`super::committers`]), one
//! turn at a time, only while it has appends queued.
//!
//! Under `interval:<ms>` the committer syncs at least every `<ms>` while anything written
//! is unsynced, however steady the load: the oldest unsynced write sets the deadline.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, warn};

use super::config::{FsyncPolicy, LogConfig};
use super::dedup::{DedupWindow, FirstAck};
use super::format::{RECORD_CRC_AT, RECORD_CRC_START, RECORD_HEADER_LEN};
use super::frame::{now_ns, Appended, NewFrame};
use super::record::{encoded_len, RecordRef};
use super::replica::Copied;
use super::segment::{Segment, SegmentWriter, SyncMethod};
use super::state::{rec_key, State};
use super::{Error, Result};
use crate::index::OrderKey;

/// The write path of one log.
#[derive(Debug)]
pub(super) struct Committer {
    dir: PathBuf,
    config: LogConfig,
    state: Arc<RwLock<State>>,
    queue: Mutex<Queue>,
    /// Signalled when a turn ends with nothing queued (`stop` waits for it).
    settled: Condvar,
    writer: Mutex<Writer>,
    durable: watch::Sender<u64>,
    /// The last batch handed out before its sync (with [`LogConfig::early_tail`] on).
    tail: Mutex<Option<Arc<Tail>>>,
    /// The end of that batch: moves when one is handed out.
    written: watch::Sender<u64>,
    syncs: AtomicU64,
    /// Set for good once any sync failed: a later sync of the same range may succeed without
    /// the data having reached the disk (the kernel may drop dirty pages a failed writeback
    /// left), so such a log is never reported fully synced.
    sync_failed: AtomicBool,
}

/// A batch of records as the committer wrote them, handed out before its sync: offsets
/// `[start, end)`, the records' bytes as stored (one segment's, consecutive).
#[derive(Debug)]
pub struct Tail {
    /// Its first offset.
    pub start: u64,
    /// One past its last offset.
    pub end: u64,
    /// The records, whole, one after the other.
    pub records: Bytes,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Request>,
    closed: bool,
    /// In the pool's queue or in a turn: set while anything is pending or being written.
    scheduled: bool,
    /// A sync deadline is set on the pool's clock.
    deadline: bool,
}

/// Where the acks of one request go.
type AckSender = oneshot::Sender<Result<Vec<Appended>>>;

/// Where the acks of one request arrive.
pub(super) type AckReceiver = oneshot::Receiver<Result<Vec<Appended>>>;

#[derive(Debug)]
struct Request {
    body: Body,
    reply: AckSender,
}

/// What a request appends.
#[derive(Debug)]
enum Body {
    /// New frames: offsets, key times and deduplication are the committer's.
    Frames(Vec<NewFrame>),
    /// Records copied from a leader, with their offsets and key times.
    Copied(Vec<Copied>),
}

/// The committer's side of the log: the active segment and what goes with it.
#[derive(Debug)]
pub(super) struct Writer {
    active: SegmentWriter,
    next_offset: u64,
    dedup: DedupWindow,
    /// Position in the active segment up to which everything is synced.
    synced_to: u64,
    /// When the oldest write not yet synced was made; `None` when all is synced.
    unsynced_since: Option<Instant>,
    /// Set when a failed sync could not be undone on disk: appends are refused.
    failed: Option<String>,
    /// The base of a segment started whose `ACTIVE` file could not be written: nothing is
    /// appended to it until that file names it (see [`super::active`]).
    unrecorded: Option<u64>,
}

/// Appends of one commit that share the active segment and so one sync.
#[derive(Debug)]
struct Portion {
    start_pos: u64,
    start_offset: u64,
    entries: Vec<(OrderKey, u32)>,
    /// Runs of holes (copied gap records): after how many `entries`, how many offsets.
    holes: Vec<(usize, u64)>,
    keys: Vec<(Bytes, FirstAck)>,
    replies: Vec<(AckSender, Vec<Appended>)>,
}

impl Portion {
    fn at(w: &Writer) -> Portion {
        Portion {
            start_pos: w.active.cursor(),
            start_offset: w.next_offset,
            entries: Vec::new(),
            holes: Vec::new(),
            keys: Vec::new(),
            replies: Vec::new(),
        }
    }
}

impl Committer {
    /// A committer appending to `active` from `next_offset` on; nothing is scheduled yet.
    pub(super) fn new(
        dir: PathBuf,
        config: LogConfig,
        state: Arc<RwLock<State>>,
        active: SegmentWriter,
        next_offset: u64,
        dedup: DedupWindow,
    ) -> Arc<Committer> {
        let (durable, _) = watch::channel(next_offset);
        let (written, _) = watch::channel(next_offset);
        let synced_to = active.cursor();
        Arc::new(Committer {
            dir,
            config,
            state,
            queue: Mutex::new(Queue::default()),
            settled: Condvar::new(),
            writer: Mutex::new(Writer {
                active,
                next_offset,
                dedup,
                synced_to,
                unsynced_since: None,
                failed: None,
                unrecorded: None,
            }),
            durable,
            tail: Mutex::new(None),
            written,
            syncs: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
        })
    }

    /// Queues already validated `frames`, scheduling a turn if none is; the receiver gets
    /// the acks.
    pub(super) fn submit(self: &Arc<Self>, frames: Vec<NewFrame>) -> Result<AckReceiver> {
        self.enqueue(Body::Frames(frames))
    }

    /// Queues records copied from a leader (checked to fit a segment); the receiver is
    /// answered once they are durable.
    pub(super) fn submit_copied(self: &Arc<Self>, records: Vec<Copied>) -> Result<AckReceiver> {
        self.enqueue(Body::Copied(records))
    }

    fn enqueue(self: &Arc<Self>, body: Body) -> Result<AckReceiver> {
        let (reply, rx) = oneshot::channel();
        let mut q = self.queue.lock();
        if q.closed {
            return Err(closed());
        }
        q.pending.push(Request { body, reply });
        if !q.scheduled {
            q.scheduled = true;
            if let Err(e) = super::committers::schedule(Arc::clone(self)) {
                q.scheduled = false;
                q.pending.pop();
                let e = super::mappings::explain(e);
                return Err(Error::Unavailable(format!("cannot start committer: {e}")));
            }
        }
        Ok(rx)
    }

    /// A receiver answered once every request queued before it is answered (written and
    /// synced, or failed); `None` when nothing is queued or being written.
    pub(super) fn barrier(self: &Arc<Self>) -> Option<AckReceiver> {
        {
            let q = self.queue.lock();
            // Scheduled until a turn finds nothing more queued: if not, nothing is pending.
            if !q.scheduled || q.closed {
                return None;
            }
        }
        self.enqueue(Body::Copied(Vec::new())).ok()
    }

    /// The durable frontier: the first offset not yet durable.
    pub(super) fn durable_offset(&self) -> u64 {
        *self.durable.borrow()
    }

    /// A receiver that changes whenever the durable frontier moves.
    pub(super) fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The last batch handed out before its sync, if any.
    pub(super) fn tail(&self) -> Option<Arc<Tail>> {
        self.tail.lock().clone()
    }

    /// A receiver that changes whenever a batch is handed out before its sync.
    pub(super) fn watch_written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// The idempotency keys within the dedup window whose frames lie below `offset`, but
    /// for those in the ranges `held` (kept files hold them).
    pub(super) fn live_keys_below(
        &self,
        offset: u64,
        held: &[(u64, u64)],
    ) -> Vec<(Box<[u8]>, FirstAck)> {
        // A piece at a time, the writer's lock let go between pieces: appends wait for one
        // piece at most, not for a walk over every key below `offset`.
        let mut out = Vec::new();
        let mut from = 0;
        loop {
            let next =
                self.writer
                    .lock()
                    .dedup
                    .live_below_from(from, offset, held, now_ns(), &mut out);
            match next {
                Some(next) => from = next,
                None => return out,
            }
        }
    }

    /// One piece of [`Committer::live_keys_below`] with nothing held, from position `from`.
    pub(super) fn live_keys_piece(
        &self,
        from: u64,
        offset: u64,
        out: &mut Vec<(Box<[u8]>, FirstAck)>,
    ) -> Option<u64> {
        self.writer
            .lock()
            .dedup
            .live_below_from(from, offset, &[], now_ns(), out)
    }

    /// Syncs done since the log was opened.
    pub(super) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Waits until what is queued is finished; later submits fail.
    pub(super) fn stop(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        while q.scheduled {
            self.settled.wait(&mut q);
        }
        if std::mem::take(&mut q.deadline) {
            super::committers::deadline_cleared();
        }
    }

    /// True once `stop` was called.
    pub(super) fn is_stopped(&self) -> bool {
        self.queue.lock().closed
    }

    /// Syncs whatever was written and not yet synced (at close); true when nothing written
    /// is left unsynced and no sync of this log ever failed.
    pub(super) fn sync_all(&self) -> bool {
        let mut w = self.writer.lock();
        self.sync_unsynced(&mut w);
        w.synced_to >= w.active.cursor()
            && w.failed.is_none()
            && !self.sync_failed.load(Ordering::Relaxed)
    }
}

impl Committer {
    /// One turn on a pool thread: writes what is queued, syncs if due, answers. True when
    /// more was queued meanwhile (the committer stays scheduled); otherwise it is no longer
    /// scheduled, and a deadline is set if unsynced writes wait for one.
    pub(super) fn turn(self: &Arc<Self>) -> bool {
        let batch = std::mem::take(&mut self.queue.lock().pending);
        if !batch.is_empty() {
            // Tests make one turn panic here (`--features failpoints`).
            if super::failpoint::hit(super::failpoint::COMMIT_PANIC).is_err() {
                panic!("fail point {}", super::failpoint::COMMIT_PANIC);
            }
            self.commit(batch);
        }
        self.sync_if_due();
        let mut q = self.queue.lock();
        if !q.pending.is_empty() {
            return true;
        }
        q.scheduled = false;
        self.settled.notify_all();
        if !q.deadline && !q.closed {
            if let Some(after) = self.sync_due_in() {
                q.deadline = true;
                super::committers::set_deadline(Instant::now() + after, Arc::downgrade(self));
            }
        }
        false
    }

    /// After a turn panicked: the log refuses appends from now on (what the turn left is
    /// unknown), the queued ones fail, and the committer is no longer scheduled. False.
    pub(super) fn turn_panicked(&self) -> bool {
        let why = "a commit panicked; the topic takes no more frames until it is reopened";
        self.writer.lock().failed = Some(why.into());
        {
            let mut q = self.queue.lock();
            for req in q.pending.drain(..) {
                let _ = req.reply.send(Err(Error::Unavailable(why.into())));
            }
            q.scheduled = false;
            self.settled.notify_all();
        }
        error!(dir = %self.dir.display(), "{why}");
        self.config
            .failure
            .raise(format!("{why}: {}", self.dir.display()));
        false
    }

    /// Called when this committer's deadline came: true when it is now scheduled for a
    /// turn (which syncs), false when a turn is on already or it is stopped.
    pub(super) fn deadline_came(&self) -> bool {
        let mut q = self.queue.lock();
        if std::mem::take(&mut q.deadline) {
            super::committers::deadline_cleared();
        }
        if q.scheduled || q.closed {
            return false;
        }
        q.scheduled = true;
        true
    }

    /// Under `interval:<ms>`, how long until the oldest unsynced write must be synced
    /// (zero when overdue); `None` when nothing waits for a sync.
    fn sync_due_in(&self) -> Option<Duration> {
        let FsyncPolicy::Interval(every) = self.config.fsync else {
            return None;
        };
        let since = self.writer.lock().unsynced_since?;
        Some(every.saturating_sub(since.elapsed()))
    }

    /// Syncs under `interval:<ms>` once the oldest unsynced write is `<ms>` old.
    fn sync_if_due(&self) {
        if self.sync_due_in().is_some_and(|d| d.is_zero()) {
            let mut w = self.writer.lock();
            self.sync_unsynced(&mut w);
        }
    }

    /// Writes a batch of requests, syncing once per segment touched, and answers them.
    fn commit(&self, batch: Vec<Request>) {
        let mut w = self.writer.lock();
        let now = now_ns();
        w.dedup.expire(now);
        let evicted_before = w.dedup.evicted_early();
        let mut portion = Portion::at(&w);
        for req in batch {
            if let Some(why) = &w.failed {
                let _ = req.reply.send(Err(Error::Unavailable(why.clone())));
                continue;
            }
            let frames = match req.body {
                Body::Frames(frames) => frames,
                Body::Copied(records) => {
                    portion = self.copy(&mut w, portion, records, req.reply, now);
                    continue;
                }
            };
            // Read under the writer's lock: once a node that stepped down has turned it
            // off and seen its queued appends settle, no new frame lands.
            if !self.config.local_appends.is_on() {
                let _ = req.reply.send(Err(Error::Unavailable(
                    "this node no longer leads its cluster: the frames were not appended".into(),
                )));
                continue;
            }
            let need: u64 = frames
                .iter()
                .map(|f| encoded_len(f.key.len(), f.payload.len()) as u64)
                .sum();
            if need > w.active.remaining() {
                self.finish(&mut w, portion);
                if let Some(why) = &w.failed {
                    // That sync failed for good: no new segment (its base would be an
                    // offset the disk may still hold), nothing more written.
                    let _ = req.reply.send(Err(Error::Unavailable(why.clone())));
                    portion = Portion::at(&w);
                    continue;
                }
                if let Err(e) = self.roll(&mut w) {
                    error!(dir = %self.dir.display(), error = %e, "cannot start a new segment");
                    let _ = req.reply.send(Err(e));
                    portion = Portion::at(&w);
                    continue;
                }
                portion = Portion::at(&w);
            }
            if let Err(e) = self
                .record_active(&mut w)
                .and_then(|()| w.active.make_room(need))
            {
                error!(dir = %self.dir.display(), error = %e, "cannot grow the segment");
                let _ = req.reply.send(Err(e));
                continue;
            }
            let mut acks = Vec::with_capacity(frames.len());
            for f in &frames {
                if !f.key.is_empty() {
                    if let Some(first) = w.dedup.get(&f.key, now) {
                        acks.push(Appended {
                            offset: first.offset,
                            timestamp: first.timestamp,
                            duplicate: true,
                            payload_bytes: 0,
                        });
                        continue;
                    }
                }
                let offset = w.next_offset;
                let rec = RecordRef {
                    offset,
                    seq_no: f.seq_no,
                    timestamp: f.timestamp,
                    key_time: if f.key.is_empty() { 0 } else { now },
                    key: &f.key,
                    payload: &f.payload,
                };
                let pos = w.active.cursor() as u32;
                let Some(buf) = w.active.reserve(rec.encoded_len()) else {
                    // Unreachable: `need` was checked against the room left and allocated.
                    break;
                };
                rec.encode_into(buf);
                w.next_offset += 1;
                if !f.key.is_empty() {
                    let ack = FirstAck {
                        offset,
                        timestamp: f.timestamp,
                        stored_at: now,
                    };
                    w.dedup.insert(&f.key, ack, now);
                    portion.keys.push((f.key.clone(), ack));
                }
                portion.entries.push((rec_key(&rec), pos));
                acks.push(Appended {
                    offset,
                    timestamp: f.timestamp,
                    duplicate: false,
                    payload_bytes: u32::try_from(f.payload.len()).unwrap_or(u32::MAX),
                });
            }
            portion.replies.push((req.reply, acks));
        }
        self.finish(&mut w, portion);
        let evicted = w.dedup.evicted_early() - evicted_before;
        if evicted > 0 && w.dedup.evicted_early() / 100_000 != evicted_before / 100_000 {
            warn!(
                dir = %self.dir.display(),
                max_keys = self.config.dedup_max_keys,
                evicted_total = w.dedup.evicted_early(),
                "dedup key limit reached: the oldest idempotency keys are forgotten before the window ends (raise --dedup-max-keys)"
            );
        }
    }

    /// Writes records copied from a leader, each at the offset it names, rolling segments as
    /// they fill; returns the portion the next request continues. Records that do not
    /// continue the log fail the request, with nothing of it written.
    fn copy(
        &self,
        w: &mut Writer,
        mut portion: Portion,
        records: Vec<Copied>,
        reply: AckSender,
        now: i64,
    ) -> Portion {
        let mut expect = w.next_offset;
        for r in &records {
            if r.offset() != expect {
                let _ = reply.send(Err(Error::InvalidArgument(format!(
                    "copied record of offset {} does not continue the log at {expect}",
                    r.offset()
                ))));
                return portion;
            }
            expect = r.end();
        }
        let mut acks = Vec::with_capacity(records.len());
        for r in &records {
            let need = r.encoded_len() as u64;
            if need > w.active.remaining() {
                let written_to = w.next_offset;
                self.finish(w, portion);
                if let Some(why) = &w.failed {
                    // As in `commit`: no new segment after a sync that failed for good.
                    let _ = reply.send(Err(Error::Unavailable(why.clone())));
                    return Portion::at(w);
                }
                if w.next_offset != written_to {
                    // The sync failed and the portion was undone, this request's records
                    // before the roll with it: the rest cannot follow them (the next
                    // segment would start at the undone offset), and the request fails
                    // whole. The leader copies from the durable end again.
                    let _ = reply.send(Err(Error::Unavailable(format!(
                        "a sync failed; the copied records from offset {} were undone",
                        w.next_offset
                    ))));
                    return Portion::at(w);
                }
                if let Err(e) = self.roll(w) {
                    error!(dir = %self.dir.display(), error = %e, "cannot start a new segment");
                    let _ = reply.send(Err(e));
                    return Portion::at(w);
                }
                portion = Portion::at(w);
            }
            if let Err(e) = self
                .record_active(w)
                .and_then(|()| w.active.make_room(need))
            {
                error!(dir = %self.dir.display(), error = %e, "cannot grow the segment");
                let _ = reply.send(Err(e));
                return portion;
            }
            let pos = w.active.cursor() as u32;
            let Some(buf) = w.active.reserve(need as usize) else {
                // Unreachable: the room was checked and allocated just above.
                break;
            };
            match r {
                Copied::Frame {
                    offset,
                    seq_no,
                    timestamp,
                    key_time,
                    key,
                    payload,
                    record,
                } => {
                    let rec = RecordRef {
                        offset: *offset,
                        seq_no: *seq_no,
                        timestamp: *timestamp,
                        key_time: *key_time,
                        key,
                        payload,
                    };
                    // Checked on arrival (CRC, lengths): stored byte for byte in the order
                    // a frame of this node's own is written: the header, the rest, the
                    // checksum last, into space that is zero until then. One copy of the
                    // whole record (memcpy stores its first bytes last) could leave a
                    // process killed midway with a zero header before part of a payload,
                    // which recovery cannot tell from damage (see `record::look_past`);
                    // the checksum first would make a torn copy look whole, like damage.
                    buf[..RECORD_CRC_AT].copy_from_slice(&record[..RECORD_CRC_AT]);
                    buf[RECORD_CRC_START..RECORD_HEADER_LEN]
                        .copy_from_slice(&record[RECORD_CRC_START..RECORD_HEADER_LEN]);
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                    buf[RECORD_HEADER_LEN..].copy_from_slice(&record[RECORD_HEADER_LEN..]);
                    std::sync::atomic::compiler_fence(Ordering::SeqCst);
                    buf[RECORD_CRC_AT..RECORD_CRC_START]
                        .copy_from_slice(&record[RECORD_CRC_AT..RECORD_CRC_START]);
                    if !key.is_empty() {
                        let ack = FirstAck {
                            offset: *offset,
                            timestamp: *timestamp,
                            stored_at: *key_time,
                        };
                        w.dedup.insert(key, ack, now);
                        portion.keys.push((key.clone(), ack));
                    }
                    portion.entries.push((rec_key(&rec), pos));
                    acks.push(Appended {
                        offset: *offset,
                        timestamp: *timestamp,
                        duplicate: false,
                        payload_bytes: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                    });
                }
                Copied::Gap(gap) => {
                    let Some(encoded) = gap.encode(need as usize) else {
                        break;
                    };
                    buf.copy_from_slice(&encoded);
                    portion.holes.push((portion.entries.len(), gap.count));
                }
            }
            w.next_offset = r.end();
        }
        portion.replies.push((reply, acks));
        portion
    }

    /// Makes a portion durable (per policy), visible and indexed, then answers it. On a
    /// failed sync every request in it fails and the portion is undone, unless it was
    /// handed out before the sync ([`LogConfig::early_tail`]): then it stays, unpublished,
    /// and the log refuses appends from then on.
    fn finish(&self, w: &mut Writer, portion: Portion) {
        if let Some(why) = &w.failed {
            // Nothing past a failed sync is published, or made durable, ever.
            for (reply, _) in portion.replies {
                let _ = reply.send(Err(Error::Unavailable(why.clone())));
            }
            return;
        }
        let end = w.active.cursor();
        let written = end - portion.start_pos;
        if written > 0 && self.config.fsync == FsyncPolicy::Always {
            let seg = Arc::clone(w.active.segment());
            let handed_out = self.config.early_tail.is_on();
            if handed_out {
                let tail = Tail {
                    start: portion.start_offset,
                    end: w.next_offset,
                    records: Bytes::copy_from_slice(w.active.unpublished(portion.start_pos)),
                };
                *self.tail.lock() = Some(Arc::new(tail));
                self.written.send_replace(w.next_offset);
            }
            let synced = self.sync(&seg, portion.start_pos, written, self.config.sync_method);
            if let (Err(e), true) = (&synced, handed_out) {
                // The batch may be on followers already: its offsets must never be used
                // for other records, so it is not undone, and nothing more is appended.
                error!(file = %seg.path().display(), error = %e, "sync failed after the batch was handed out to followers; refusing appends");
                w.failed = Some(format!("a sync failed: {e}"));
                self.config.failure.raise(format!(
                    "a sync of {} failed after its batch was handed out: {e}",
                    seg.path().display()
                ));
                for (reply, _) in portion.replies {
                    let _ = reply.send(Err(Error::Unavailable(format!("append failed: {e}"))));
                }
                return;
            }
            if let Err(e) = synced {
                error!(file = %seg.path().display(), error = %e, "sync failed; undoing the batch");
                w.active.rollback(portion.start_pos);
                w.next_offset = portion.start_offset;
                for (key, ack) in portion.keys.iter().rev() {
                    w.dedup.remove(key, *ack);
                }
                // The zeros must reach the disk too, or the undone records could come back.
                if let Err(e2) =
                    self.sync(&seg, portion.start_pos, written, self.config.sync_method)
                {
                    error!(file = %seg.path().display(), error = %e2, "cannot undo a failed sync; refusing appends");
                    w.failed = Some(format!("{e2}"));
                    self.config.failure.raise(format!(
                        "a sync of {} failed and could not be undone: {e2}",
                        seg.path().display()
                    ));
                }
                for (reply, _) in portion.replies {
                    let _ = reply.send(Err(Error::Unavailable(format!("append failed: {e}"))));
                }
                return;
            }
            w.synced_to = end;
            w.unsynced_since = None;
        } else if written > 0 && w.unsynced_since.is_none() {
            w.unsynced_since = Some(Instant::now());
        }
        w.active.publish();
        if !portion.entries.is_empty() || !portion.holes.is_empty() {
            let mut st = self.state.write();
            let mut holes = portion.holes.iter().peekable();
            for (i, (key, pos)) in portion.entries.iter().enumerate() {
                while let Some((_, count)) = holes.next_if(|(at, _)| *at == i) {
                    st.offsets.push_holes(*count);
                    st.holes += count;
                }
                st.order.insert(*key);
                st.offsets.push(*pos);
            }
            for (_, count) in holes {
                st.offsets.push_holes(*count);
                st.holes += count;
            }
            st.next_offset = w.next_offset;
            st.bytes += written;
        }
        self.durable.send_replace(w.next_offset);
        // A batch handed out early is durable now: the log has it (no copy kept).
        self.tail.lock().take();
        for (reply, acks) in portion.replies {
            let _ = reply.send(Ok(acks));
        }
    }

    /// Seals the active segment (synced in full, whatever the policy, so that a newer file
    /// never exists beside an older one with a torn tail) and starts the next one.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let seg = Arc::clone(w.active.segment());
        let from = w.synced_to.min(w.active.cursor());
        self.sync(
            &seg,
            from,
            w.active.cursor() - from,
            self.config.sync_method,
        )?;
        if let Err(e) = seg.stamp_sealed() {
            // Only retention's cap on a frame stamped ahead reads it: worth a word, not a
            // refused append.
            warn!(file = %seg.path().display(), error = %e, "cannot set a sealed segment's modification time");
        }
        let next = SegmentWriter::create(&self.dir, w.next_offset, self.config.segment_bytes)?;
        self.state
            .write()
            .offsets
            .push_segment(w.next_offset, Arc::clone(next.segment()));
        debug!(file = %next.segment().path().display(), "new segment");
        w.synced_to = next.cursor();
        w.unsynced_since = None;
        w.active = next;
        // Durable before any record goes into the new segment: from now on, a missing
        // newest segment is refused at startup, not taken for the end of the log.
        w.unrecorded = Some(w.next_offset);
        self.record_active(w)
    }

    /// Writes the `ACTIVE` file a started segment still lacks (a failed write is tried
    /// again before the next append, which fails until it succeeds).
    fn record_active(&self, w: &mut Writer) -> Result<()> {
        if let Some(base) = w.unrecorded {
            super::active::write(&self.dir, base)?;
            w.unrecorded = None;
        }
        Ok(())
    }

    /// Syncs `[pos, pos + len)` of `seg` and counts it.
    fn sync(&self, seg: &Segment, pos: u64, len: u64, method: SyncMethod) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let synced = self.sync_observed(seg, pos, len, method);
        if synced.is_err() {
            self.sync_failed.store(true, Ordering::Relaxed);
        }
        synced
    }

    fn sync_observed(&self, seg: &Segment, pos: u64, len: u64, method: SyncMethod) -> Result<()> {
        // Tests make one commit sync fail here (`--features failpoints`).
        super::failpoint::hit(super::failpoint::COMMIT_SYNC)?;
        let Some(observer) = &self.config.sync_observer else {
            return seg.sync_range(pos, len, method);
        };
        let started = std::time::Instant::now();
        let synced = seg.sync_range(pos, len, method);
        (observer.0)(started.elapsed());
        synced
    }

    /// Syncs whatever the active segment holds beyond the last sync.
    fn sync_unsynced(&self, w: &mut Writer) {
        let end = w.active.cursor();
        if w.synced_to >= end {
            return;
        }
        let seg = Arc::clone(w.active.segment());
        match self.sync(
            &seg,
            w.synced_to,
            end - w.synced_to,
            self.config.sync_method,
        ) {
            Ok(()) => {
                w.synced_to = end;
                w.unsynced_since = None;
            }
            Err(e) => {
                error!(file = %seg.path().display(), error = %e, "background sync failed");
                // Tried again an interval later, not at once: a disk that keeps failing
                // would otherwise take a thread of the pool in a loop.
                w.unsynced_since = Some(Instant::now());
            }
        }
    }
}
fn closed() -> Error {
    Error::Unavailable("log is closed".into())
}
