//! Compaction and retention: the AOF rewrite of framecast.
//!
//! **Compaction** merges the sealed segments (and, once there are too many, the newest runs)
//! into a new sorted run: surviving frames in order-key order, offsets and keys unchanged,
//! idempotency keys older than the dedup window dropped. A run holds at most
//! [`CompactOptions::max_run_bytes`] of records (as Kafka's cleaner bounds the segments it
//! writes): a larger backlog is compacted over several passes, and runs that are full are
//! left as they are instead of being merged again. The switch is one atomic step:
//! 1. the run is written under a temporary name, synced, renamed, the directory synced;
//! 2. the manifest is replaced (temporary file, sync, rename, directory sync) — the commit;
//! 3. the in-memory index switches to the run;
//! 4. the old files are deleted.
//!
//! A crash before step 2 leaves the old manifest: the new run is not named in it and is
//! removed at the next open. A crash after it leaves the new manifest: the old segments lie
//! below its `segments_from` and the old runs are not named, so they are removed at the
//! next open. Either way every frame is counted exactly once.
//!
//! **Retention** moves the oldest retained offset forward (by age or bytes), only within
//! sealed data, commits it in the manifest, and deletes files wholly below it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::failpoint;
use super::frame::now_ns;
use super::log::Log;
use super::manifest::{self, Manifest};
use super::record::{decode, Decoded, RecordRef};
use super::run::{Run, RunWriter, MAX_RUN_RECORD_BYTES};
use super::segment::Segment;
use super::state::Loc;
use super::{Error, Result};
use crate::index::OrderKey;

/// How a compaction runs.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Bytes written per second at most; `None`: as fast as the disk goes.
    pub bytes_per_sec: Option<u64>,
    /// When this many runs exist, the next compaction merges the newest of them (as many as
    /// fit under `max_run_bytes` beside the segments) into its new run.
    pub max_runs: usize,
    /// Record bytes one run may hold at most (clamped to [`MAX_RUN_RECORD_BYTES`], just
    /// under 4 GiB). One pass takes the oldest sealed segments that fit (at least one).
    pub max_run_bytes: u64,
}

/// Default [`CompactOptions::max_run_bytes`]: 1 GiB, Kafka's default segment size.
pub const DEFAULT_MAX_RUN_BYTES: u64 = 1 << 30;

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            bytes_per_sec: None,
            max_runs: 4,
            max_run_bytes: DEFAULT_MAX_RUN_BYTES,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Sealed segments merged.
    pub segments_in: usize,
    /// Runs merged.
    pub runs_in: usize,
    /// Frames written to the new run.
    pub frames: u64,
    /// Bytes of the records read.
    pub bytes_in: u64,
    /// Bytes of the records written.
    pub bytes_out: u64,
    /// Idempotency keys dropped (older than the dedup window).
    pub keys_dropped: u64,
    /// The new run, if one was written.
    pub run: Option<PathBuf>,
}

/// What a retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The oldest retained offset after the pass.
    pub first_offset: u64,
    /// Frames removed.
    pub frames_removed: u64,
    /// Bytes of records removed.
    pub bytes_removed: u64,
    /// Files deleted.
    pub files_removed: usize,
    /// Offsets lost to repaired damage that the new oldest offset moved past.
    pub holes_passed: u64,
}

/// Limits compaction I/O to a byte rate.
struct Throttle {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    fn consume(&mut self, n: u64) {
        self.bytes += n;
        if let Some(rate) = self.rate.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed + Duration::from_millis(5) {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// A frame of a sealed segment, located for the merge.
struct SegFrame {
    key: OrderKey,
    segment: u32,
    pos: u32,
}

/// Keys the merge takes from the index at a time.
const SEG_FRAMES_BATCH: usize = 16_384;

/// The sealed segments' frames in key order, taken from the index a batch at a time under
/// its read lock: a compaction holds one batch of them, not an entry per frame of the
/// segments it merges. (The maintenance lock it holds keeps retention and other
/// compactions out; appends meanwhile go past `end`.)
struct SegFrames<'a> {
    log: &'a Log,
    sealed: &'a [(u64, Arc<Segment>)],
    /// Where the next batch starts; `None` once the index has no more.
    from: Option<OrderKey>,
    /// Offsets from here on are not the merge's.
    end: u64,
    /// Offsets below this are left out (below the first retained offset).
    base: u64,
    batch: VecDeque<SegFrame>,
}

impl SegFrames<'_> {
    fn peek(&mut self) -> Result<Option<&SegFrame>> {
        self.fill()?;
        Ok(self.batch.front())
    }

    fn next(&mut self) -> Result<Option<SegFrame>> {
        self.fill()?;
        Ok(self.batch.pop_front())
    }

    /// Takes the next batch from the index when the last one is used up.
    fn fill(&mut self) -> Result<()> {
        while self.batch.is_empty() {
            let Some(from) = self.from else {
                return Ok(());
            };
            let st = self.log.shared.state.read();
            let mut keys = Vec::with_capacity(SEG_FRAMES_BATCH);
            let done = st
                .order
                .collect(&from, self.end, SEG_FRAMES_BATCH, &mut keys);
            self.from = match keys.last() {
                Some(last) if !done => last.successor(),
                _ => None,
            };
            for key in keys.into_iter().filter(|k| k.offset >= self.base) {
                let (seg, pos) = st.offsets.locate(key.offset).ok_or_else(|| {
                    Error::Unavailable(format!("offset {} indexed without a segment", key.offset))
                })?;
                let segment = self
                    .sealed
                    .partition_point(|(b, _)| *b <= seg.base_offset())
                    .checked_sub(1)
                    .ok_or_else(|| {
                        Error::Unavailable(format!(
                            "offset {} below the segments merged",
                            key.offset
                        ))
                    })?;
                self.batch.push_back(SegFrame {
                    key,
                    segment: segment as u32,
                    pos,
                });
            }
        }
        Ok(())
    }
}

/// What one compaction merges (step 2), taken under the read lock in step 1.
struct MergeInputs<'a> {
    /// The sealed segments merged, oldest first, with their base offsets.
    sealed: &'a [(u64, Arc<Segment>)],
    /// The runs merged.
    runs: &'a [Arc<Run>],
    /// Offsets of the new run lost to repaired damage.
    holes: &'a [u64],
    /// The new run's first offset: anything below it is left out.
    base: u64,
    /// Where the first segment left as it is begins: the new run's end.
    sealed_end: u64,
    /// Idempotency keys older than this (ns) are dropped.
    horizon: i64,
}

impl Log {
    /// Sealed segments waiting for compaction, and their bytes: what triggers it.
    pub fn compaction_backlog(&self) -> (usize, u64) {
        let st = self.shared.state.read();
        let segs: Vec<_> = st
            .offsets
            .segments()
            .map(|(_, s, _)| s.published())
            .collect();
        let sealed = segs.len().saturating_sub(1);
        (sealed, segs[..sealed].iter().sum())
    }

    /// Compacts every segment sealed when it is called: one pass (see
    /// [`Log::compact_below`]) after another until none is left, more than one when they
    /// hold more than `max_run_bytes`. The report adds up the passes; `run` is the last
    /// run written. Appends and reads go on meanwhile; a reader keeps the files it mapped.
    pub fn compact(&self, opts: &CompactOptions) -> Result<CompactionReport> {
        let limit = {
            let st = self.shared.state.read();
            st.offsets.segments().last().map_or(0, |(base, _, _)| base)
        };
        let mut total = CompactionReport::default();
        loop {
            let pass = self.compact_below(opts, limit)?;
            if pass.run.is_none() {
                return Ok(total);
            }
            total.segments_in += pass.segments_in;
            total.runs_in += pass.runs_in;
            total.frames += pass.frames;
            total.bytes_in += pass.bytes_in;
            total.bytes_out += pass.bytes_out;
            total.keys_dropped += pass.keys_dropped;
            total.run = pass.run;
        }
    }

    /// [`Log::compact`] of the sealed segments that lie wholly below offset `limit` only: a
    /// cluster node compacts below its commit point, so that frames a new leader may have
    /// it cut (never acknowledged) stay in segments, where a cut can reach them.
    ///
    /// One pass: the oldest sealed segments ending at `limit` or below, as many as fit under
    /// `max_run_bytes` (at least one), and, once `max_runs` runs exist, the newest runs that
    /// still fit beside them, are merged into one new run.
    pub fn compact_below(&self, opts: &CompactOptions, limit: u64) -> Result<CompactionReport> {
        let _one_at_a_time = self.shared.maintenance.lock();
        if self.is_closed() {
            return Err(Error::Unavailable("log is closed".into()));
        }
        let dir = self.shared.dir.clone();
        let started = Instant::now();

        // 1. Inputs, taken under the read lock in one consistent view.
        let (sealed, merge, keep, holes, (base, drops), seal_end, first_offset, removals) = {
            let st = self.shared.state.read();
            let segs: Vec<(u64, Arc<Segment>)> = st
                .offsets
                .segments()
                .map(|(b, s, _)| (b, Arc::clone(s)))
                .collect();
            // The sealed segments each ending (where the next one begins) at `limit` or
            // below; `seal_end`: where the first one left as it is begins.
            let below = segs
                .windows(2)
                .take_while(|pair| pair[1].0 <= limit)
                .count();
            // Of those, the oldest that fit in one run (bytes as published: an upper bound
            // of the records they hold), and always one.
            let cap = opts.max_run_bytes.clamp(1, MAX_RUN_RECORD_BYTES);
            let mut sealed_bytes = 0u64;
            let below = segs[..below]
                .iter()
                .take_while(|(_, seg)| {
                    let fits = sealed_bytes == 0 || sealed_bytes + seg.published() <= cap;
                    if fits {
                        sealed_bytes += seg.published();
                    }
                    fits
                })
                .count();
            let (Some(sealed), Some((seal_end, _))) = (segs.get(..below), segs.get(below)) else {
                return Ok(CompactionReport::default());
            };
            if sealed.is_empty() {
                return Ok(CompactionReport::default());
            }
            // Past `max_runs`, the newest runs that fit beside the segments are merged with
            // them; full runs stay as they are.
            let mut from = st.runs.len();
            if st.runs.len() >= opts.max_runs.max(1) {
                let mut room = cap.saturating_sub(sealed_bytes);
                while let Some(run) = from.checked_sub(1).map(|i| &st.runs[i]) {
                    if run.bytes() > room {
                        break;
                    }
                    room -= run.bytes();
                    from -= 1;
                }
            }
            let (keep, merge) = st.runs.split_at(from);
            let (merge, keep) = (merge.to_vec(), keep.to_vec());
            let from = match (merge.first(), keep.last()) {
                (Some(r), _) => r.base_offset(),
                (None, Some(r)) => r.end_offset(),
                (None, None) => sealed[0].0,
            };
            let base = from.max(st.first_offset);
            // Frames of the inputs below the first retained offset are left out of the run.
            let drops = from < st.first_offset;
            // Offsets lost to repaired damage stay lost in the run (and are never reused).
            let mut holes: Vec<u64> = merge
                .iter()
                .flat_map(|r| (r.base_offset()..r.end_offset()).filter(|&o| r.is_hole(o)))
                .chain(st.offsets.holes_below(*seal_end))
                .filter(|&o| o >= base)
                .collect();
            holes.sort_unstable();
            (
                sealed.to_vec(),
                merge,
                keep,
                holes,
                (base, drops),
                *seal_end,
                st.first_offset,
                st.removals.clone(),
            )
        };

        // 2. The k-way merge into a new run.
        let horizon = now_ns().saturating_sub(
            i64::try_from(self.shared.config.dedup_window.as_nanos()).unwrap_or(i64::MAX),
        );
        let mut report = CompactionReport {
            segments_in: sealed.len(),
            runs_in: merge.len(),
            ..Default::default()
        };
        let mut writer = RunWriter::create(&dir, base, seal_end)?;
        let inputs = MergeInputs {
            sealed: &sealed,
            runs: &merge,
            holes: &holes,
            base,
            sealed_end: seal_end,
            horizon,
        };
        if let Err(e) = self.merge_into(&mut writer, &inputs, opts, &mut report) {
            writer.abandon();
            return Err(e);
        }
        let path = writer.finish()?;
        // Verify what was written before the manifest names it.
        let run = match Run::open(&path, |_, _| {}) {
            Ok(run) => Arc::new(run),
            Err(e) => {
                super::run::remove_if_there(&path);
                return Err(e);
            }
        };

        // 3. Commit: the manifest names the new set. The run leaves out frames below the
        // first retained offset, and their files go: their keys still inside the dedup
        // window are kept apart first (with any kept before, all of them below `base`).
        // A pass that leaves no frame out removes no key: the file stays as it is.
        if drops {
            let held: Vec<(u64, u64)> = keep
                .iter()
                .map(|r| (r.base_offset(), r.end_offset()))
                .collect();
            let keys = self.shared.committer.live_keys_below(base, &held);
            super::removed_keys::write(&dir, &keys)?;
        }
        let mut names: Vec<String> = keep.iter().map(|r| file_name(r.path())).collect();
        names.push(file_name(&path));
        manifest::write(
            &dir,
            &Manifest {
                version: manifest::VERSION,
                first_offset,
                segments_from: seal_end,
                runs: names,
                removed_max_key: removals
                    .largest()
                    .map(|k| (k.seq_no, k.timestamp, k.offset)),
                removals: removals.to_stored(),
            },
        )?;

        // 4. Switch the index: the run replaces the segments' dense entries.
        {
            let mut st = self.shared.state.write();
            let mut runs = keep.clone();
            runs.push(Arc::clone(&run));
            st.runs = runs;
            st.order.remove_below_offset(seal_end);
            st.offsets.drop_front_while(|b, _, _| b < seal_end);
            st.bytes = st.bytes.saturating_sub(report.bytes_in) + report.bytes_out;
        }

        // 5. Delete what the manifest no longer names.
        failpoint::hit("compact.before_delete")?;
        let old: Vec<PathBuf> = sealed
            .iter()
            .map(|(_, s)| s.path().to_path_buf())
            .chain(merge.iter().map(|r| r.path().to_path_buf()))
            .collect();
        for (i, p) in old.iter().enumerate() {
            std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            if i == 0 {
                failpoint::hit("compact.mid_delete")?;
            }
        }
        super::segment::sync_dir(&dir)?;
        report.run = Some(path);
        info!(
            dir = %dir.display(),
            segments = report.segments_in,
            runs = report.runs_in,
            frames = report.frames,
            bytes_in = report.bytes_in,
            bytes_out = report.bytes_out,
            keys_dropped = report.keys_dropped,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted"
        );
        Ok(report)
    }

    /// Step 2 of a compaction: the k-way merge of the segments' frames and the runs into
    /// `writer`, lost offsets marked, expired keys dropped, at the throttled rate.
    fn merge_into(
        &self,
        writer: &mut RunWriter,
        inputs: &MergeInputs<'_>,
        opts: &CompactOptions,
        report: &mut CompactionReport,
    ) -> Result<()> {
        for &offset in inputs.holes {
            writer.skip(offset)?;
        }
        let mut throttle = Throttle {
            rate: opts.bytes_per_sec,
            started: Instant::now(),
            bytes: 0,
        };
        let mut runs: Vec<_> = inputs
            .runs
            .iter()
            .map(|r| {
                r.records()
                    .filter(move |(k, _, _)| k.offset >= inputs.base)
                    .peekable()
            })
            .collect();
        let mut seg_frames = SegFrames {
            log: self,
            sealed: inputs.sealed,
            from: Some(OrderKey::first_of_seq(0)),
            end: inputs.sealed_end,
            base: inputs.base,
            batch: VecDeque::new(),
        };
        let mut scratch = Vec::new();
        loop {
            let mut best: Option<(OrderKey, Option<usize>)> =
                seg_frames.peek()?.map(|f| (f.key, None));
            for (i, it) in runs.iter_mut().enumerate() {
                if let Some((k, _, _)) = it.peek() {
                    if best.is_none_or(|(b, _)| *k < b) {
                        best = Some((*k, Some(i)));
                    }
                }
            }
            let Some((key, source)) = best else { break };
            if self.is_closed() {
                return Err(Error::Unavailable(
                    "compaction cancelled: log closing".into(),
                ));
            }
            let (raw, file): (&[u8], PathBuf) = match source {
                Some(i) => match runs[i].next() {
                    Some((_, _, raw)) => (raw, inputs.runs[i].path().to_path_buf()),
                    None => break,
                },
                None => match seg_frames.next()? {
                    Some(f) => {
                        let seg = &inputs.sealed[f.segment as usize].1;
                        (seg.read_from(f.pos as u64)?, seg.path().to_path_buf())
                    }
                    None => break,
                },
            };
            let (rec, len) = match decode(raw) {
                Decoded::Record(rec, len) if rec.offset == key.offset => (rec, len),
                Decoded::Invalid(reason) => return Err(Error::corruption(&file, 0, reason)),
                _ => {
                    return Err(Error::corruption(
                        &file,
                        0,
                        format!("offset {} not found", key.offset),
                    ))
                }
            };
            report.bytes_in += len as u64;
            let out: &[u8] = if !rec.key.is_empty() && rec.key_time < inputs.horizon {
                let bare = RecordRef {
                    key: &[],
                    key_time: 0,
                    ..rec
                };
                scratch.resize(bare.encoded_len(), 0);
                bare.encode_into(&mut scratch);
                report.keys_dropped += 1;
                &scratch
            } else {
                &raw[..len]
            };
            writer.push(key, out)?;
            report.frames += 1;
            report.bytes_out += out.len() as u64;
            throttle.consume(out.len() as u64);
        }
        Ok(())
    }

    /// Removes the oldest frames beyond the retention limits, within sealed data only.
    pub fn apply_retention(&self, now: i64) -> Result<RetentionReport> {
        self.apply_retention_below(now, u64::MAX)
    }

    /// [`Log::apply_retention`], removing nothing at or past `limit` (a cluster leader
    /// passes its commit point: it never removes a frame its followers may not hold yet).
    pub fn apply_retention_below(&self, now: i64, limit: u64) -> Result<RetentionReport> {
        let policy = self.shared.config.retention;
        if !policy.is_limited() {
            let first = self.shared.state.read().first_offset;
            return Ok(RetentionReport {
                first_offset: first,
                ..Default::default()
            });
        }
        let horizon = policy
            .max_age
            .map(|a| now.saturating_sub(i64::try_from(a.as_nanos()).unwrap_or(i64::MAX)));
        self.remove_prefix(limit, None, &mut |key, remaining, written| {
            let over_bytes = policy.max_bytes.is_some_and(|m| remaining > m);
            // A frame stamped in the future (a client's clock, or a mistake) counts as no
            // newer than the last write of its file: it would otherwise hold back every
            // frame behind it for as long as its stamp is ahead.
            let too_old = horizon.is_some_and(|h| key.timestamp.min(written) < h);
            over_bytes || too_old
        })
    }

    /// Removes every frame below `cutoff` that lies in sealed data: a retention decision
    /// made elsewhere (a cluster leader's), applied to this copy. The pass is recorded with
    /// the keys this copy removed, the leader's frames byte for byte, so a stream is refused
    /// here exactly when it would be on the leader; `removed_max_key`, the largest key the
    /// leader's decision removed, counts only when the pass crossed offsets this copy holds
    /// no frame for (lost to repaired damage). Frames below `cutoff` in the active segment
    /// stay until it is sealed; call again then.
    pub fn remove_below(
        &self,
        cutoff: u64,
        removed_max_key: Option<OrderKey>,
    ) -> Result<RetentionReport> {
        self.remove_prefix(cutoff, removed_max_key, &mut |_, _, _| true)
    }

    /// Moves the oldest retained offset forward over the frames `remove` accepts, in offset
    /// order, within sealed data and below `limit`; `remove` gets each frame's key, the
    /// bytes retained before it goes, and when its file was last written (ns since the
    /// epoch: its frames were all stored by then). `extra_key` joins the removed keys' maximum when the
    /// pass crosses an offset that holds no frame here.
    fn remove_prefix(
        &self,
        limit: u64,
        extra_key: Option<OrderKey>,
        remove: &mut dyn FnMut(&OrderKey, u64, i64) -> bool,
    ) -> Result<RetentionReport> {
        let (first, seal_end, total) = {
            let st = self.shared.state.read();
            let active = st
                .offsets
                .segments()
                .last()
                .map_or(st.next_offset, |(b, _, _)| b);
            (st.first_offset, active.min(limit), st.bytes)
        };
        let mut report = RetentionReport {
            first_offset: first,
            ..Default::default()
        };
        let _one_at_a_time = self.shared.maintenance.lock();
        if self.is_closed() {
            return Err(Error::Unavailable("log is closed".into()));
        }
        let mut cutoff = first;
        let mut removed_key: Option<OrderKey> = None;
        // The last file asked about and when it was last written: one look per file.
        let mut written: Option<(PathBuf, i64)> = None;
        'scan: while cutoff < seal_end {
            // A pass over a large backlog (a server back after a week down) must not hold
            // up a close, a deletion or shutdown until it ends: nothing is changed yet.
            if self.is_closed() {
                return Err(Error::Unavailable("log is closed".into()));
            }
            let batch: Vec<(u64, Option<Loc>)> = {
                let st = self.shared.state.read();
                (cutoff..seal_end.min(cutoff + 256))
                    .map(|o| match st.locate(o) {
                        Some(l) => Ok((o, Some(l))),
                        None if st.is_hole(o) => Ok((o, None)),
                        None => Err(Error::Unavailable(format!("offset {o} not located"))),
                    })
                    .collect::<Result<_>>()?
            };
            for (offset, loc) in batch {
                // An offset lost to repaired damage holds nothing: retention passes it.
                let Some(loc) = loc else {
                    report.holes_passed += 1;
                    cutoff = offset + 1;
                    continue;
                };
                let (key, len) = loc.header(offset)?;
                let path = loc.path();
                let file_written = match &written {
                    Some((p, at)) if p == path => *at,
                    _ => {
                        let at = last_written(path)?;
                        written = Some((path.to_path_buf(), at));
                        at
                    }
                };
                if !remove(
                    &key,
                    total.saturating_sub(report.bytes_removed),
                    file_written,
                ) {
                    break 'scan;
                }
                report.bytes_removed += len;
                report.frames_removed += 1;
                removed_key = removed_key.max(Some(key));
                cutoff = offset + 1;
            }
        }
        if cutoff == first {
            return Ok(report);
        }
        let removed_key = if report.holes_passed > 0 {
            removed_key.max(extra_key)
        } else {
            removed_key
        };
        let (old_runs, old_segments, manifest) = {
            let st = self.shared.state.read();
            // The segment holding the cutoff stays (its frames below the cutoff are merely
            // hidden); so do all after it. When the cutoff lies in the runs, every segment stays.
            let bases: Vec<u64> = st.offsets.segments().map(|(b, _, _)| b).collect();
            let segments_from = bases
                .iter()
                .copied()
                .rfind(|&b| b <= cutoff)
                .or(bases.first().copied())
                .unwrap_or(seal_end);
            let old_runs: Vec<PathBuf> = st
                .runs
                .iter()
                .filter(|r| r.end_offset() <= cutoff)
                .map(|r| r.path().to_path_buf())
                .collect();
            let old_segments: Vec<PathBuf> = st
                .offsets
                .segments()
                .filter(|(b, _, _)| *b < segments_from)
                .map(|(_, s, _)| s.path().to_path_buf())
                .collect();
            let mut removals = st.removals.clone();
            if let Some(key) = removed_key {
                removals.record(cutoff, key);
            }
            let m = Manifest {
                version: manifest::VERSION,
                first_offset: cutoff,
                segments_from: segments_from.max(st.runs.last().map_or(0, |r| r.end_offset())),
                runs: st
                    .runs
                    .iter()
                    .filter(|r| r.end_offset() > cutoff)
                    .map(|r| file_name(r.path()))
                    .collect(),
                removed_max_key: removals
                    .largest()
                    .map(|k| (k.seq_no, k.timestamp, k.offset)),
                removals: removals.to_stored(),
            };
            (old_runs, old_segments, m)
        };
        if !old_runs.is_empty() || !old_segments.is_empty() {
            // The files about to go may hold the only record of keys still inside the
            // dedup window: those are kept apart first, or a retry after a restart would
            // be stored again.
            let kept_from = {
                let st = self.shared.state.read();
                st.runs
                    .iter()
                    .filter(|r| r.end_offset() > cutoff)
                    .map(|r| r.base_offset())
                    .fold(manifest.segments_from, u64::min)
            };
            let keys = self.shared.committer.live_keys_below(kept_from, &[]);
            super::removed_keys::write(&self.shared.dir, &keys)?;
        }
        manifest::write(&self.shared.dir, &manifest)?;
        {
            let mut st = self.shared.state.write();
            st.first_offset = cutoff;
            if let Some(key) = removed_key {
                st.removals.record(cutoff, key);
            }
            st.order.remove_below_offset(cutoff);
            st.offsets
                .drop_front_while(|b, _, _| b < manifest.segments_from);
            st.runs.retain(|r| r.end_offset() > cutoff);
            st.bytes = st.bytes.saturating_sub(report.bytes_removed);
            st.holes = st.holes.saturating_sub(report.holes_passed);
        }
        failpoint::hit("compact.before_delete")?;
        for p in old_runs.iter().chain(old_segments.iter()) {
            std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            report.files_removed += 1;
        }
        super::segment::sync_dir(&self.shared.dir)?;
        report.first_offset = cutoff;
        info!(
            dir = %self.shared.dir.display(),
            first_offset = cutoff,
            frames = report.frames_removed,
            bytes = report.bytes_removed,
            files = report.files_removed,
            "retention removed old frames"
        );
        Ok(report)
    }
}

/// When the file at `path` was last written, in ns since the epoch.
fn last_written(path: &std::path::Path) -> Result<i64> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| Error::io(path, e))?;
    Ok(match modified.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    })
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
