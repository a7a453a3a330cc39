//! A log's settings: the fsync policy, segment and frame sizes, the dedup window, retention.

use std::str::FromStr;
use std::time::Duration;

use super::format::{DEFAULT_SEGMENT_BYTES, MAX_KEY_LEN, MIN_SEGMENT_BYTES, SEGMENT_HEADER_LEN};
use super::record::{checked_encoded_len, encoded_len};
use super::segment::SyncMethod;
use super::{Error, Result};

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
    /// Told how long each commit sync took (the server's `fsync_duration_seconds`).
    pub sync_observer: Option<SyncObserver>,
    /// When on, each batch is handed out before its sync (a cluster leader ships it to
    /// its followers while it syncs). Shared by every clone of the config.
    ///
    /// Under `--fsync always`, the committer then copies each batch's records into a
    /// [`Tail`](super::Tail) before it syncs them. A sync that fails after that cannot be
    /// undone (the records may already be on followers, so their offsets must never be
    /// used again): the log refuses appends from then on, as when an undo fails.
    pub early_tail: Switch,
    /// When off, the log refuses appends of new frames (copied records are still taken):
    /// a cluster node that does not lead, so that a publish that passed the leader's
    /// checks just before it stepped down cannot land in the log after it began to copy
    /// the new leader's records (its offset would then hold another frame than the
    /// leader's). On by default (one node); shared by every clone of the config.
    pub local_appends: Switch,
    /// Told when a log made from this config fails for good (a sync that could not be
    /// undone): a cluster node then leaves the cluster. Shared by every clone.
    pub failure: FailureSignal,
}

/// A switch shared by every log made from one config ([`LogConfig::early_tail`],
/// [`LogConfig::local_appends`]).
#[derive(Debug, Clone)]
pub struct Switch(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Switch {
    /// A switch that starts `on`.
    pub fn new(on: bool) -> Switch {
        Switch(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(on)))
    }

    /// Turns the switch on or off, for every log sharing it.
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// True while on.
    pub fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Where the logs made from one config report that one of them failed for good: a sync
/// failed and could not be undone, so the log refuses appends until the process restarts
/// and recovers from what its disk holds. Holds the first such failure; cheap to clone.
#[derive(Debug, Clone)]
pub struct FailureSignal(std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for FailureSignal {
    fn default() -> Self {
        FailureSignal(std::sync::Arc::new(tokio::sync::watch::channel(None).0))
    }
}

impl FailureSignal {
    /// Records a failure (the first one is kept) and wakes every subscriber.
    pub fn raise(&self, why: String) {
        self.0.send_if_modified(|held| {
            if held.is_some() {
                return false;
            }
            *held = Some(why);
            true
        });
    }

    /// The first failure raised, if any.
    pub fn get(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// A receiver that sees the failure once it is raised.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.0.subscribe()
    }
}

/// A callback told the duration of every sync a commit waits for. Cheap to clone.
#[derive(Clone)]
pub struct SyncObserver(pub std::sync::Arc<dyn Fn(Duration) + Send + Sync>);

impl std::fmt::Debug for SyncObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncObserver")
    }
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
            sync_observer: None,
            early_tail: Switch::new(false),
            local_appends: Switch::new(true),
            failure: FailureSignal::default(),
        }
    }
}

impl LogConfig {
    /// Bytes of records one append request may hold at most: the room of one segment
    /// (a request is written whole into one segment).
    pub fn request_room(&self) -> u64 {
        self.segment_bytes.saturating_sub(SEGMENT_HEADER_LEN as u64)
    }

    /// The `--segment-bytes` whose segments hold a record of `record` bytes.
    pub fn segment_bytes_for(record: u64) -> u64 {
        record.saturating_add(SEGMENT_HEADER_LEN as u64)
    }

    /// Bytes of the largest record a frame may make: `max_frame_bytes` of payload with the
    /// longest idempotency key (`u64::MAX` when that overflows: a flag value too large for
    /// any segment, which [`LogConfig::validate`] refuses).
    pub fn largest_record(&self) -> u64 {
        checked_encoded_len(MAX_KEY_LEN, self.max_frame_bytes)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(u64::MAX)
    }

    /// Checks that the largest frame fits in a segment and positions fit in 32 bits.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes < MIN_SEGMENT_BYTES || self.segment_bytes > u32::MAX as u64 {
            return Err(Error::InvalidArgument(format!(
                "--segment-bytes {} is outside {MIN_SEGMENT_BYTES}..={}",
                self.segment_bytes,
                u32::MAX
            )));
        }
        if self.max_frame_bytes == 0 {
            return Err(Error::InvalidArgument(
                "--max-frame-bytes must be at least 1".into(),
            ));
        }
        let room = self.request_room();
        let largest = self.largest_record();
        if largest > room {
            let fits = room.saturating_sub(encoded_len(MAX_KEY_LEN, 0) as u64);
            return Err(Error::InvalidArgument(format!(
                "--max-frame-bytes {} does not fit in a {}-byte segment (--segment-bytes): \
                 the largest that fits is {fits}, or raise --segment-bytes",
                self.max_frame_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

/// How much a topic keeps. `None` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Frames whose stored timestamp is older than this may be removed.
    pub max_age: Option<Duration>,
    /// Above this many bytes of records, the oldest frames may be removed.
    pub max_bytes: Option<u64>,
}

impl Retention {
    /// True when anything may ever be removed.
    pub fn is_limited(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}
