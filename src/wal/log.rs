//! The log of one topic: its segments, group commit, the durable frontier, and reads.
//!
//! Appends go through a queue to one committer thread per log, started on demand and
//! stopped after a few idle seconds. The committer takes everything pending, encodes it
//! straight into the active segment's mapping, syncs once under the fsync policy, updates
//! the index, moves the durable frontier and answers every waiter: concurrent appenders
//! share one sync (group commit). Readers never take the committer's lock: they read the
//! index under a short read lock and the records from published, immutable bytes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use super::compact::Retention;
use super::dedup::{DedupWindow, FirstAck};
use super::format::{DEFAULT_SEGMENT_BYTES, MAX_KEY_LEN, MIN_SEGMENT_BYTES, SEGMENT_HEADER_LEN};
use super::record::{decode, encoded_len, Decoded, RecordRef};
use super::recovery::{recover, RecoverySink};
use super::run::Run;
use super::segment::{Segment, SegmentWriter, SyncMethod};
use super::{Error, Result};
use crate::index::{OffsetMap, OrderIndex, OrderKey};

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Synced to disk before it is acknowledged or visible.
    #[default]
    Always,
    /// Acknowledged after the write; a background sync runs at this interval.
    Interval(Duration),
    /// Acknowledged after the write; the OS writes it back when it likes.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.trim_end_matches("ms").parse::<u64>().ok())
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| {
                        format!("'{s}' is not always, never or interval:<ms> (ms > 0)")
                    })?;
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Never => write!(f, "never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Settings of a log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Capacity of a segment: its file grows in steps up to this size, then a new one starts.
    pub segment_bytes: u64,
    /// When an append counts as durable.
    pub fsync: FsyncPolicy,
    /// How a sync is done.
    pub sync_method: SyncMethod,
    /// Largest payload accepted.
    pub max_frame_bytes: usize,
    /// How long an idempotency key is remembered.
    pub dedup_window: Duration,
    /// Most idempotency keys remembered per log (oldest forgotten first past it).
    pub dedup_max_keys: usize,
    /// How much of the topic is kept.
    pub retention: Retention,
}

/// Default `--dedup-max-keys`: about 260 MB of keys per topic at most.
pub const DEFAULT_DEDUP_MAX_KEYS: usize = 2_000_000;

/// API.md's default `--max-frame-bytes`: 4 MiB − 1 KiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024 - 1024;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::Always,
            sync_method: SyncMethod::default(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            dedup_window: Duration::from_secs(120),
            dedup_max_keys: DEFAULT_DEDUP_MAX_KEYS,
            retention: Retention::default(),
        }
    }
}

impl LogConfig {
    /// Checks that the largest frame fits in a segment and positions fit in 32 bits.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes < MIN_SEGMENT_BYTES || self.segment_bytes > u32::MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "segment size {} is outside {MIN_SEGMENT_BYTES}..={}",
                self.segment_bytes,
                u32::MAX
            )));
        }
        let largest = encoded_len(MAX_KEY_LEN, self.max_frame_bytes) as u64;
        if largest > self.segment_bytes - SEGMENT_HEADER_LEN as u64 {
            return Err(Error::InvalidArgument(format!(
                "a {}-byte frame does not fit in a {}-byte segment",
                self.max_frame_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

/// A frame to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewFrame {
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Nanoseconds since the Unix epoch; 0 = now.
    pub timestamp: i64,
    /// Idempotency key; empty for none.
    pub key: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// The ack of one appended frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The frame's offset.
    pub offset: u64,
    /// Its stored timestamp.
    pub timestamp: i64,
    /// True when the key was already stored: this is the first ack again.
    pub duplicate: bool,
}

/// A frame read back from the log. The payload points into the segment mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    /// Offset in the topic.
    pub offset: u64,
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Stored timestamp.
    pub timestamp: i64,
    /// The payload, without a copy.
    pub payload: Bytes,
}

impl StoredFrame {
    /// The frame's order key.
    pub fn key(&self) -> OrderKey {
        OrderKey {
            seq_no: self.seq_no,
            timestamp: self.timestamp,
            offset: self.offset,
        }
    }
}

/// Figures of a log, for `ListTopics` and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Frames held.
    pub frames: u64,
    /// Bytes of stored records, headers included.
    pub bytes: u64,
    /// Oldest offset held.
    pub first_offset: u64,
    /// Next offset to be made durable.
    pub next_offset: u64,
    /// Smallest seq_no held.
    pub min_seq_no: Option<u64>,
    /// Largest seq_no held.
    pub max_seq_no: Option<u64>,
    /// Files holding frames: segments and sorted runs.
    pub segments: usize,
    /// Sorted runs among them.
    pub runs: usize,
    /// Heap bytes of the in-memory index (order index and offset map).
    pub index_bytes: usize,
    /// Syncs (msync or fdatasync calls) done since the log was opened.
    pub syncs: u64,
}

/// A topic's append-only log.
#[derive(Debug)]
pub struct Log {
    pub(super) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) config: LogConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    writer: Mutex<Writer>,
    pub(super) state: RwLock<State>,
    /// Held by a compaction or retention pass: one at a time per log.
    pub(super) maintenance: Mutex<()>,
    /// Set by `close`: a running compaction stops at its next record (leaving only a
    /// temporary file, removed at the next open).
    pub(super) cancel: std::sync::atomic::AtomicBool,
    durable: watch::Sender<u64>,
    syncs: AtomicU64,
}

#[derive(Debug, Default)]
struct Queue {
    pending: Vec<Request>,
    closed: bool,
    worker_running: bool,
    worker: Option<JoinHandle<()>>,
}

/// Where the acks of one request go.
type AckSender = oneshot::Sender<Result<Vec<Appended>>>;

#[derive(Debug)]
struct Request {
    frames: Vec<NewFrame>,
    reply: oneshot::Sender<Result<Vec<Appended>>>,
}

#[derive(Debug)]
pub(super) struct Writer {
    active: SegmentWriter,
    next_offset: u64,
    pub(super) dedup: DedupWindow,
    /// Position in the active segment up to which everything is synced.
    synced_to: u64,
    last_sync: Instant,
    /// Set when a failed sync could not be undone on disk: appends are refused.
    failed: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct State {
    /// Order keys of the frames in segments (not yet compacted into runs).
    pub(super) order: OrderIndex,
    /// Record positions of the frames in segments.
    pub(super) offsets: OffsetMap<Arc<Segment>>,
    /// Sorted runs, in offset order; they hold every offset below the first segment's base.
    pub(super) runs: Vec<Arc<Run>>,
    /// Oldest retained offset.
    pub(super) first_offset: u64,
    /// Offsets below this are indexed.
    pub(super) next_offset: u64,
    /// Bytes of retained records.
    pub(super) bytes: u64,
    /// Largest order key removed by retention.
    pub(super) removed_max_key: Option<OrderKey>,
}

/// Where a frame's record is.
pub(super) enum Loc {
    Segment(Arc<Segment>, u32),
    Run(Arc<Run>, u32),
}

impl State {
    /// Where the record of `offset` is, if it is retained and indexed.
    pub(super) fn locate(&self, offset: u64) -> Option<Loc> {
        if offset < self.first_offset {
            return None;
        }
        if let Some((seg, pos)) = self.offsets.locate(offset) {
            return Some(Loc::Segment(Arc::clone(seg), pos));
        }
        let i = self.runs.partition_point(|r| r.end_offset() <= offset);
        let run = self.runs.get(i)?;
        run.locate(offset).map(|pos| Loc::Run(Arc::clone(run), pos))
    }
}

impl Loc {
    /// The order key and record length of `offset`, checked.
    pub(super) fn header(&self, offset: u64) -> Result<(OrderKey, u64)> {
        let (data, file, pos) = match self {
            Loc::Segment(seg, pos) => (seg.read_from(*pos as u64)?, seg.path(), *pos),
            Loc::Run(run, pos) => (run.record_bytes(*pos), run.path(), *pos),
        };
        match decode(data) {
            Decoded::Record(r, len) if r.offset == offset => Ok((rec_key(&r), len as u64)),
            Decoded::Invalid(reason) => Err(Error::corruption(file, pos as u64, reason)),
            _ => Err(Error::corruption(
                file,
                pos as u64,
                format!("no record of offset {offset}"),
            )),
        }
    }

    pub(super) fn load(&self, offset: u64) -> Result<StoredFrame> {
        match self {
            Loc::Segment(seg, pos) => load(seg, *pos, offset),
            Loc::Run(run, pos) => run.load(*pos, offset),
        }
    }
}

/// Appends of one commit that share the active segment and so one sync.
#[derive(Debug)]
struct Portion {
    start_pos: u64,
    start_offset: u64,
    entries: Vec<(OrderKey, u32)>,
    keys: Vec<(Bytes, FirstAck)>,
    replies: Vec<(AckSender, Vec<Appended>)>,
}

impl Portion {
    fn at(w: &Writer) -> Portion {
        Portion {
            start_pos: w.active.cursor(),
            start_offset: w.next_offset,
            entries: Vec::new(),
            keys: Vec::new(),
            replies: Vec::new(),
        }
    }
}

/// Feeds recovered records into the index and the dedup window.
struct Rebuild<'a> {
    state: &'a mut State,
    dedup: &'a mut DedupWindow,
    now: i64,
}

impl Rebuild<'_> {
    fn remember_key(&mut self, r: &RecordRef<'_>) {
        if !r.key.is_empty() {
            let ack = FirstAck {
                offset: r.offset,
                timestamp: r.timestamp,
                stored_at: r.key_time,
            };
            self.dedup.insert(r.key, ack, self.now);
        }
    }
}

impl RecoverySink for Rebuild<'_> {
    fn begin(&mut self, first_offset: u64) {
        self.state.first_offset = first_offset;
    }

    fn run(&mut self, run: &Arc<Run>) {
        self.state.runs.push(Arc::clone(run));
    }

    fn run_record(&mut self, record: &RecordRef<'_>) {
        self.remember_key(record);
    }

    fn segment(&mut self, segment: &Arc<Segment>) {
        self.state
            .offsets
            .push_segment(segment.base_offset(), Arc::clone(segment));
    }

    fn record(&mut self, r: &RecordRef<'_>, position: u64, _len: u64) {
        if r.offset >= self.state.first_offset {
            self.state.order.insert(OrderKey {
                seq_no: r.seq_no,
                timestamp: r.timestamp,
                offset: r.offset,
            });
        }
        // Positions fit: segments are at most u32::MAX bytes (LogConfig::validate).
        self.state.offsets.push(position as u32);
        self.remember_key(r);
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Keys and timestamps per read call: bounds the work done under the index lock.
const IDLE_WORKER: Duration = Duration::from_secs(5);

impl Log {
    /// Opens (recovering) or creates the log in `dir`.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let started = Instant::now();
        let now = now_ns();
        let mut state = State::default();
        let mut dedup = DedupWindow::new(duration_ns(config.dedup_window), config.dedup_max_keys);
        let recovered = recover(
            dir,
            config.segment_bytes,
            &mut Rebuild {
                state: &mut state,
                dedup: &mut dedup,
                now,
            },
        )?;
        let active = match recovered.active {
            Some(w) => w,
            None => {
                let w = SegmentWriter::create(dir, recovered.next_offset, config.segment_bytes)?;
                state
                    .offsets
                    .push_segment(recovered.next_offset, Arc::clone(w.segment()));
                w
            }
        };
        state.first_offset = recovered.first_offset;
        state.next_offset = recovered.next_offset;
        state.bytes = recovered.bytes;
        state.removed_max_key = recovered
            .manifest
            .as_ref()
            .and_then(|m| m.removed_max_key)
            .map(|(seq_no, timestamp, offset)| OrderKey {
                seq_no,
                timestamp,
                offset,
            });
        info!(
            dir = %dir.display(),
            frames = recovered.records,
            bytes = recovered.bytes,
            segments = state.offsets.segment_count(),
            next_offset = recovered.next_offset,
            torn_tail = recovered.torn.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log recovered"
        );
        let synced_to = active.cursor();
        let writer = Writer {
            active,
            next_offset: recovered.next_offset,
            dedup,
            synced_to,
            last_sync: Instant::now(),
            failed: None,
        };
        let (durable, _) = watch::channel(recovered.next_offset);
        Ok(Log {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                config,
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                writer: Mutex::new(writer),
                state: RwLock::new(state),
                durable,
                syncs: AtomicU64::new(0),
                maintenance: Mutex::new(()),
                cancel: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The directory of this log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// True once [`Log::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.cancel.load(Ordering::Relaxed)
    }

    /// The settings this log runs with.
    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    /// Appends `frames` as one request and blocks until they are durable. Frames are
    /// validated first; if any is invalid nothing is written. Must not be called from an
    /// async task (use [`Log::append_async`]).
    pub fn append(&self, frames: Vec<NewFrame>) -> Result<Vec<Appended>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(frames)?;
        rx.blocking_recv().map_err(|_| closed())?
    }

    /// Appends `frames` as one request and waits until they are durable.
    pub async fn append_async(&self, frames: Vec<NewFrame>) -> Result<Vec<Appended>> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        let rx = self.submit(frames)?;
        rx.await.map_err(|_| closed())?
    }

    /// Validates `frames` and queues them for the committer; the receiver gets the acks.
    pub fn submit(
        &self,
        mut frames: Vec<NewFrame>,
    ) -> Result<oneshot::Receiver<Result<Vec<Appended>>>> {
        self.validate(&mut frames)?;
        let (reply, rx) = oneshot::channel();
        let mut q = self.shared.queue.lock();
        if q.closed {
            return Err(closed());
        }
        q.pending.push(Request { frames, reply });
        if q.worker_running {
            self.shared.wake.notify_one();
        } else {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("framecast-commit".into())
                .spawn(move || shared.run_committer());
            match spawned {
                Ok(handle) => {
                    q.worker_running = true;
                    q.worker = Some(handle);
                }
                Err(e) => {
                    q.pending.pop();
                    return Err(Error::Unavailable(format!("cannot start committer: {e}")));
                }
            }
        }
        Ok(rx)
    }

    fn validate(&self, frames: &mut [NewFrame]) -> Result<()> {
        let now = now_ns();
        let max = self.shared.config.max_frame_bytes;
        let mut total = 0u64;
        for (i, f) in frames.iter_mut().enumerate() {
            if f.payload.len() > max {
                return Err(Error::InvalidArgument(format!(
                    "frame {i}: payload of {} bytes exceeds the limit of {max}",
                    f.payload.len()
                )));
            }
            if f.key.len() > MAX_KEY_LEN {
                return Err(Error::InvalidArgument(format!(
                    "frame {i}: idempotency key of {} bytes exceeds {MAX_KEY_LEN}",
                    f.key.len()
                )));
            }
            if f.timestamp < 0 {
                return Err(Error::InvalidArgument(format!(
                    "frame {i}: negative timestamp {}",
                    f.timestamp
                )));
            }
            if f.timestamp == 0 {
                f.timestamp = now;
            }
            total += encoded_len(f.key.len(), f.payload.len()) as u64;
        }
        let room = self.shared.config.segment_bytes - SEGMENT_HEADER_LEN as u64;
        if total > room {
            return Err(Error::InvalidArgument(format!(
                "a request of {total} bytes does not fit in one {room}-byte segment"
            )));
        }
        Ok(())
    }

    /// The durable frontier: the first offset not yet durable.
    pub fn durable_offset(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// A receiver that changes whenever the durable frontier moves.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared.durable.subscribe()
    }

    /// The oldest offset held.
    pub fn first_offset(&self) -> u64 {
        self.shared.state.read().first_offset
    }

    /// The frame at `offset`, if it is held and durable.
    pub fn read(&self, offset: u64) -> Result<Option<StoredFrame>> {
        let mut out = Vec::with_capacity(1);
        self.read_range(offset, offset.saturating_add(1), 0, 1, &mut out)?;
        Ok(out.pop())
    }

    /// Reads frames with offsets in `[from, until)` (clamped to the durable frontier) whose
    /// seq_no is at least `min_seq_no`, looking at no more than `max` offsets. Appends them to
    /// `out` in offset order and returns the next offset to look at.
    pub fn read_range(
        &self,
        from: u64,
        until: u64,
        min_seq_no: u64,
        max: usize,
        out: &mut Vec<StoredFrame>,
    ) -> Result<u64> {
        let mut locs = Vec::new();
        let next;
        {
            // Clamp to the announced frontier, not the index's `next_offset`: the committer
            // indexes a batch before it announces it, and a reader must not get a frame that
            // `durable_offset()` does not cover yet. Read before the index lock, so that
            // everything below it is already indexed.
            let frontier = self.durable_offset();
            let st = self.shared.state.read();
            if from < st.first_offset {
                return Err(Error::OutOfRange {
                    requested: from,
                    first: st.first_offset,
                    next: st.next_offset,
                });
            }
            let end = until.min(frontier).min(from.saturating_add(max as u64));
            locs.reserve(end.saturating_sub(from) as usize);
            for offset in from..end {
                locs.push((offset, st.locate(offset).ok_or_else(|| missing(offset))?));
            }
            next = end.max(from);
        }
        for (offset, loc) in locs {
            let frame = loc.load(offset)?;
            if frame.seq_no >= min_seq_no {
                out.push(frame);
            }
        }
        Ok(next)
    }

    /// Reads up to `max` frames in order-key order, starting at key `from` (inclusive),
    /// skipping frames whose offset is not below `offset_limit`. Returns true when the end of
    /// the log was reached. Sorted runs and the segments' index are merged (k-way): a replay
    /// over runs reads each run sequentially.
    pub fn read_ordered(
        &self,
        from: &OrderKey,
        offset_limit: u64,
        max: usize,
        out: &mut Vec<StoredFrame>,
    ) -> Result<bool> {
        // Up to `max` candidates from each source; the first `max` of their merge are the
        // answer, since no source can contribute more than `max` of them.
        let mut candidates: Vec<(OrderKey, Loc)> = Vec::new();
        let mut done = true;
        {
            // The announced frontier, as in `read_range`.
            let limit = offset_limit.min(self.durable_offset());
            let st = self.shared.state.read();
            let mut keys = Vec::with_capacity(max.min(4096));
            done &= st.order.collect(from, limit, max, &mut keys);
            for k in keys {
                let (seg, pos) = st
                    .offsets
                    .locate(k.offset)
                    .ok_or_else(|| missing(k.offset))?;
                candidates.push((k, Loc::Segment(Arc::clone(seg), pos)));
            }
            let mut found = Vec::new();
            for run in &st.runs {
                if run.base_offset() >= limit || run.end_offset() <= st.first_offset {
                    continue;
                }
                found.clear();
                done &= run.scan(from, st.first_offset, limit, max, &mut found);
                candidates.extend(
                    found
                        .iter()
                        .map(|&(k, pos)| (k, Loc::Run(Arc::clone(run), pos))),
                );
            }
        }
        candidates.sort_unstable_by_key(|c| c.0);
        if candidates.len() > max {
            candidates.truncate(max);
            done = false;
        }
        for (key, loc) in candidates {
            out.push(loc.load(key.offset)?);
        }
        Ok(done)
    }

    /// The retention watermark: the oldest retained offset and the largest order key ever
    /// removed by retention.
    pub fn retention_watermark(&self) -> (u64, Option<OrderKey>) {
        let st = self.shared.state.read();
        (st.first_offset, st.removed_max_key)
    }

    /// Current figures.
    pub fn stats(&self) -> LogStats {
        let st = self.shared.state.read();
        let run_keys = st.runs.iter().filter_map(|r| r.key_range());
        let (run_min, run_max) = run_keys.fold(
            (None, None),
            |(lo, hi): (Option<u64>, Option<u64>), (a, b)| {
                (
                    Some(lo.map_or(a.seq_no, |l| l.min(a.seq_no))),
                    Some(hi.map_or(b.seq_no, |h| h.max(b.seq_no))),
                )
            },
        );
        let min_of = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let max_of = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        LogStats {
            frames: st.next_offset - st.first_offset.min(st.next_offset),
            bytes: st.bytes,
            first_offset: st.first_offset,
            next_offset: st.next_offset,
            min_seq_no: min_of(st.order.first().map(|k| k.seq_no), run_min),
            max_seq_no: max_of(st.order.last().map(|k| k.seq_no), run_max),
            segments: st.offsets.segment_count() + st.runs.len(),
            runs: st.runs.len(),
            index_bytes: st.order.heap_bytes()
                + st.offsets.heap_bytes()
                + st.runs.iter().map(|r| r.heap_bytes()).sum::<usize>(),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
        }
    }

    /// Finishes queued appends, syncs, and stops the committer. Later appends fail with
    /// [`Error::Unavailable`]; reads keep working. Called by `drop` too.
    pub fn close(&self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
        let worker = {
            let mut q = self.shared.queue.lock();
            q.closed = true;
            self.shared.wake.notify_all();
            q.worker.take()
        };
        if let Some(handle) = worker {
            if handle.join().is_err() {
                error!(dir = %self.shared.dir.display(), "committer thread panicked");
            }
        }
        // Wait for a compaction or retention pass to stop; none starts after this.
        drop(self.shared.maintenance.lock());
        let mut w = self.shared.writer.lock();
        self.shared.sync_unsynced(&mut w);
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn run_committer(self: Arc<Self>) {
        let tick = match self.config.fsync {
            FsyncPolicy::Interval(d) => d.min(IDLE_WORKER),
            _ => IDLE_WORKER,
        };
        let mut last_work = Instant::now();
        loop {
            let mut q = self.queue.lock();
            if q.pending.is_empty() && !q.closed {
                self.wake.wait_for(&mut q, tick);
            }
            if !q.pending.is_empty() {
                let batch = std::mem::take(&mut q.pending);
                drop(q);
                self.commit(batch);
                last_work = Instant::now();
                continue;
            }
            if q.closed {
                q.worker_running = false;
                return;
            }
            drop(q);
            let unsynced = {
                let mut w = self.writer.lock();
                if matches!(self.config.fsync, FsyncPolicy::Interval(d) if w.last_sync.elapsed() >= d)
                {
                    self.sync_unsynced(&mut w);
                }
                w.synced_to < w.active.cursor() && self.config.fsync != FsyncPolicy::Never
            };
            if !unsynced && last_work.elapsed() >= IDLE_WORKER {
                let mut q = self.queue.lock();
                if q.pending.is_empty() {
                    q.worker_running = false;
                    // Detach this thread: an exited thread that nobody joins keeps its stack
                    // (a mapping and its touched pages) until its handle goes; with ten
                    // thousand idle topics that is ten thousand stacks.
                    drop(q.worker.take());
                    debug!(dir = %self.dir.display(), "committer idle, stopping");
                    return;
                }
            }
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
            let need: u64 = req
                .frames
                .iter()
                .map(|f| encoded_len(f.key.len(), f.payload.len()) as u64)
                .sum();
            if need > w.active.remaining() {
                self.finish(&mut w, portion);
                if let Err(e) = self.roll(&mut w) {
                    error!(dir = %self.dir.display(), error = %e, "cannot start a new segment");
                    let _ = req.reply.send(Err(e));
                    portion = Portion::at(&w);
                    continue;
                }
                portion = Portion::at(&w);
            }
            if let Err(e) = w.active.make_room(need) {
                error!(dir = %self.dir.display(), error = %e, "cannot grow the segment");
                let _ = req.reply.send(Err(e));
                continue;
            }
            let mut acks = Vec::with_capacity(req.frames.len());
            for f in &req.frames {
                if !f.key.is_empty() {
                    if let Some(first) = w.dedup.get(&f.key, now) {
                        acks.push(Appended {
                            offset: first.offset,
                            timestamp: first.timestamp,
                            duplicate: true,
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

    /// Makes a portion durable (per policy), visible and indexed, then answers it. On a
    /// failed sync the portion is undone and every request in it fails.
    fn finish(&self, w: &mut Writer, portion: Portion) {
        let end = w.active.cursor();
        let written = end - portion.start_pos;
        if written > 0 && self.config.fsync == FsyncPolicy::Always {
            let seg = Arc::clone(w.active.segment());
            if let Err(e) = self.sync(&seg, portion.start_pos, written, self.config.sync_method) {
                error!(file = %seg.path().display(), error = %e, "sync failed; undoing the batch");
                w.active.rollback(portion.start_pos);
                w.next_offset = portion.start_offset;
                for (key, ack) in &portion.keys {
                    w.dedup.remove(key, *ack);
                }
                // The zeros must reach the disk too, or the undone records could come back.
                if let Err(e2) =
                    self.sync(&seg, portion.start_pos, written, self.config.sync_method)
                {
                    error!(file = %seg.path().display(), error = %e2, "cannot undo a failed sync; refusing appends");
                    w.failed = Some(format!("{e2}"));
                }
                for (reply, _) in portion.replies {
                    let _ = reply.send(Err(Error::Unavailable(format!("append failed: {e}"))));
                }
                return;
            }
            w.synced_to = end;
            w.last_sync = Instant::now();
        }
        w.active.publish();
        if !portion.entries.is_empty() {
            let mut st = self.state.write();
            for (key, pos) in &portion.entries {
                st.order.insert(*key);
                st.offsets.push(*pos);
            }
            st.next_offset = w.next_offset;
            st.bytes += written;
        }
        self.durable.send_replace(w.next_offset);
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
        let next = SegmentWriter::create(&self.dir, w.next_offset, self.config.segment_bytes)?;
        self.state
            .write()
            .offsets
            .push_segment(w.next_offset, Arc::clone(next.segment()));
        debug!(file = %next.segment().path().display(), "new segment");
        w.synced_to = next.cursor();
        w.active = next;
        Ok(())
    }

    /// Syncs `[pos, pos + len)` of `seg` and counts it.
    fn sync(&self, seg: &Segment, pos: u64, len: u64, method: SyncMethod) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        seg.sync_range(pos, len, method)
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
                w.last_sync = Instant::now();
            }
            Err(e) => error!(file = %seg.path().display(), error = %e, "background sync failed"),
        }
    }
}

fn rec_key(r: &RecordRef<'_>) -> OrderKey {
    OrderKey {
        seq_no: r.seq_no,
        timestamp: r.timestamp,
        offset: r.offset,
    }
}

/// Decodes and checks the record of `offset` at `pos`.
pub(super) fn load(seg: &Arc<Segment>, pos: u32, offset: u64) -> Result<StoredFrame> {
    let data = seg.read_from(pos as u64)?;
    match decode(data) {
        Decoded::Record(rec, len) if rec.offset == offset => {
            let payload_at = pos as u64 + (len - rec.payload.len()) as u64;
            Ok(StoredFrame {
                offset,
                seq_no: rec.seq_no,
                timestamp: rec.timestamp,
                payload: seg.bytes(payload_at, rec.payload.len() as u64)?,
            })
        }
        Decoded::Record(rec, _) => Err(Error::corruption(
            seg.path(),
            pos as u64,
            format!("expected offset {offset}, found {}", rec.offset),
        )),
        Decoded::End => Err(Error::corruption(
            seg.path(),
            pos as u64,
            "no record where one was indexed",
        )),
        Decoded::Invalid(reason) => Err(Error::corruption(seg.path(), pos as u64, reason)),
    }
}

fn missing(offset: u64) -> Error {
    Error::Unavailable(format!(
        "offset {offset} is indexed but its segment is gone"
    ))
}

fn closed() -> Error {
    Error::Unavailable("log is closed".into())
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
