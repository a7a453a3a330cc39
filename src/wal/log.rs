//! The log of one topic: opening (recovery), appending, closing. The write path is in
//! [`super::commit`], reads in [`super::read`], the in-memory state in [`super::state`].
//!
//! Appends go through a queue to the log's committer, which runs on the process's pool of
//! committer threads while it has work; concurrent appenders share one sync (group commit).
//! Readers never take the committer's lock: they read the index under a short read lock and
//! the records from published, immutable bytes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};
use tracing::info;

use super::commit::Committer;
use super::config::LogConfig;
use super::dedup::DedupWindow;
use super::frame::{check_frames, now_ns, Appended, NewFrame};
use super::manifest::{self, Manifest};
use super::recovery::{recover, CutShort, TailLoss, TornTail};
use super::removals::Removals;
use super::segment::SegmentWriter;
use super::state::{Rebuild, State};
use super::{Error, Result};
use crate::index::OrderKey;

/// A topic's append-only log.
#[derive(Debug)]
pub struct Log {
    pub(super) shared: Arc<Shared>,
}

/// What the log's handles, its committer and its maintenance share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    pub(super) config: LogConfig,
    pub(super) committer: Arc<Committer>,
    pub(super) state: Arc<RwLock<State>>,
    /// Held by a compaction or retention pass: one at a time per log.
    pub(super) maintenance: Mutex<()>,
    /// Set by `close`: a running compaction stops at its next record (leaving only a
    /// temporary file, removed at the next open).
    pub(super) cancel: AtomicBool,
    /// What recovery cut from the last segment when this log was opened.
    torn: Option<TornTail>,
    /// The last segment was cut short by something else when this log was opened.
    cut_short: Option<CutShort>,
}

impl Log {
    /// Opens (recovering) or creates the log in `dir`.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        Self::open_with(dir, config, &mut |_| Ok(()))
    }

    /// [`Log::open`], calling `before_cut` when recovery is about to cut a torn tail (after
    /// its copy is kept, before anything is cut) or to grow back a last segment something
    /// else cut short; an error from it stops the open.
    pub fn open_with(
        dir: &Path,
        config: LogConfig,
        before_cut: &mut dyn FnMut(TailLoss<'_>) -> Result<()>,
    ) -> Result<Log> {
        Self::open_inner(dir, config, before_cut, false)
    }

    /// [`Log::open_with`] for a log that exists: one whose directory holds no segment (and
    /// so no frame) is refused as damage, not started again empty. A topic's first segment
    /// is made before the topic's directory gets its name, so every topic has one.
    pub fn open_existing(
        dir: &Path,
        config: LogConfig,
        before_cut: &mut dyn FnMut(TailLoss<'_>) -> Result<()>,
    ) -> Result<Log> {
        Self::open_inner(dir, config, before_cut, true)
    }

    /// Makes the first segment of a new log in `dir` (which holds none), so that the log
    /// exists on disk before its directory is named; `dir`'s manifest, if
    /// [`Log::prepare_start`] wrote one, says where it starts.
    pub fn create_first_segment(dir: &Path, config: &LogConfig) -> Result<()> {
        config.validate()?;
        let base = manifest::read(dir)?.map_or(0, |m| m.first_offset);
        SegmentWriter::create(dir, base, config.segment_bytes).map(drop)
    }

    fn open_inner(
        dir: &Path,
        config: LogConfig,
        before_cut: &mut dyn FnMut(TailLoss<'_>) -> Result<()>,
        must_exist: bool,
    ) -> Result<Log> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let started = Instant::now();
        let now = now_ns();
        let mut state = State::default();
        let mut dedup = DedupWindow::new(duration_ns(config.dedup_window), config.dedup_max_keys);
        // The keys of frames retention removed within their window, then those of the
        // records recovery finds, stored in offset order.
        let mut keys = super::removed_keys::load(dir)?;
        let recovered = recover(
            dir,
            config.segment_bytes,
            &mut Rebuild {
                state: &mut state,
                keys: &mut keys,
                horizon: now.saturating_sub(duration_ns(config.dedup_window)),
                max_keys: config.dedup_max_keys,
                before_cut,
            },
        )?;
        dedup.recovered(keys, now);
        let active = match recovered.active {
            Some(w) => w,
            None if must_exist => {
                return Err(Error::corruption(
                    dir,
                    0,
                    "missing: the log has no segment, so every frame it held is lost (a \
                     topic's first segment is made before its directory is named); restore \
                     the segments from a backup, or run `framecast repair` to start it again \
                     empty under a new epoch (an older framecast that crashed while creating \
                     the topic leaves it so, with nothing lost: repair it the same way)",
                ));
            }
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
        state.removals = recovered
            .manifest
            .as_ref()
            .map_or_else(Removals::default, |m| {
                let largest = m
                    .removed_max_key
                    .map(|(seq_no, timestamp, offset)| OrderKey {
                        seq_no,
                        timestamp,
                        offset,
                    });
                Removals::from_stored(&m.removals, largest, m.first_offset)
            });
        info!(
            dir = %dir.display(),
            frames = recovered.records,
            bytes = recovered.bytes,
            segments = state.offsets.segment_count(),
            next_offset = recovered.next_offset,
            torn_tail = recovered.torn.is_some(),
            cut_short = recovered.cut_short.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "log recovered"
        );
        let state = Arc::new(RwLock::new(state));
        let committer = Committer::new(
            dir.to_path_buf(),
            config.clone(),
            Arc::clone(&state),
            active,
            recovered.next_offset,
            dedup,
        );
        Ok(Log {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                config,
                committer,
                state,
                maintenance: Mutex::new(()),
                cancel: AtomicBool::new(false),
                torn: recovered.torn,
                cut_short: recovered.cut_short,
            }),
        })
    }

    /// Prepares the empty directory `dir` so that the log opened in it starts at
    /// `first_offset`: a copy of a log whose older frames retention removed elsewhere.
    /// `removals`: the passes that removed them there, so a stream that needed one of
    /// their frames is refused here exactly when it is there. `keys`: a finished file
    /// ([`super::removed_keys::Writer`]) of the idempotency keys, still inside their window,
    /// of the frames removed there (kept as retention keeps them, see
    /// [`super::removed_keys`]), moved into `dir`, so that a retry of one is answered with
    /// its first ack here too. Refused when `dir` holds a log.
    pub fn prepare_start(
        dir: &Path,
        first_offset: u64,
        removals: &Removals,
        keys: Option<&Path>,
    ) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        if !super::recovery::list_segments(dir)?.is_empty() || manifest::read(dir)?.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a log",
                dir.display()
            )));
        }
        manifest::write(
            dir,
            &Manifest {
                version: manifest::VERSION,
                first_offset,
                segments_from: first_offset,
                runs: Vec::new(),
                removed_max_key: removals
                    .largest()
                    .map(|k| (k.seq_no, k.timestamp, k.offset)),
                removals: removals.to_stored(),
            },
        )?;
        let Some(keys) = keys else {
            return Ok(());
        };
        let path = dir.join(super::format::REMOVED_KEYS_FILE);
        std::fs::rename(keys, &path).map_err(|e| Error::io(&path, e))?;
        super::segment::sync_dir(dir)
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
        check_frames(&self.shared.config, &mut frames, now_ns())?;
        self.shared.committer.submit(frames)
    }

    /// The durable frontier: the first offset not yet durable.
    pub fn durable_offset(&self) -> u64 {
        self.shared.committer.durable_offset()
    }

    /// A receiver that changes whenever the durable frontier moves.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared.committer.watch_durable()
    }

    /// The last batch handed out before its sync (with [`LogConfig::early_tail`] on),
    /// if any: it may not be durable yet.
    pub fn tail(&self) -> Option<std::sync::Arc<super::Tail>> {
        self.shared.committer.tail()
    }

    /// A receiver that changes whenever a batch is handed out before its sync.
    pub fn watch_written(&self) -> watch::Receiver<u64> {
        self.shared.committer.watch_written()
    }

    /// The torn tail recovery cut from the last segment when this log was opened, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.shared.torn.as_ref()
    }

    /// What recovery found when the last segment was cut short by something else, if it was.
    pub fn cut_short(&self) -> Option<&CutShort> {
        self.shared.cut_short.as_ref()
    }

    /// Waits until every append queued so far is answered: written and durable, or failed.
    /// Appends queued by a task that was then cancelled still land; whoever reads this
    /// log's durable end next waits here first so that it does not move under them.
    pub async fn appends_settled(&self) {
        if let Some(rx) = self.shared.committer.barrier() {
            let _ = rx.await;
        }
    }

    /// Finishes queued appends, syncs, and stops the committer. Later appends fail with
    /// [`Error::Unavailable`]; reads keep working. Called by `drop` too. True when every
    /// frame written is synced (false: the last sync failed, and was logged).
    pub fn close(&self) -> bool {
        self.shared.cancel.store(true, Ordering::Relaxed);
        self.shared.committer.stop();
        // Wait for a compaction or retention pass to stop; none starts after this.
        drop(self.shared.maintenance.lock());
        self.shared.committer.sync_all()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.close();
    }
}

fn closed() -> Error {
    Error::Unavailable("log is closed".into())
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}
