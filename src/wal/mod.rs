//! The write-ahead log: segment files of CRC'd records, group commit, recovery.
//!
//! `format` (every on-disk constant), `record` (the record codec and the one record
//! walker), `segment` (one mapped file; the only `unsafe`), `config` (a log's settings),
//! `frame` (the values appended and read back, and their checks), `log` (open, append,
//! close), `commit` (group commit and the fsync policy), `committers` (the process's pool
//! of threads that run every log's commits), `state` (the in-memory index of a
//! log), `read` (range and ordered reads), `recovery` (scan, torn-tail cut), `dedup` (the
//! idempotency window), `run` (sorted runs), `compact` (compaction and retention),
//! `removals` (what retention removed, pass by pass), `removed_keys` (the idempotency keys
//! of removed frames still inside their window), `manifest` (what a compaction committed), `active` (the newest segment's base, so a
//! missing newest segment is refused), `replica` (records shipped to and copied by a
//! follower, and the cut of a suffix a new leader lacks), `mappings` (the kernel's limit on
//! memory mappings, and what a refusal at it means), `failpoint` (crash injection for
//! tests).

pub mod active;
mod commit;
pub mod committers;
mod compact;
mod config;
mod dedup;
mod error;
pub mod failpoint;
pub mod format;
mod frame;
mod log;
pub mod manifest;
pub mod mappings;
mod read;
pub mod record;
pub mod recovery;
pub mod removals;
pub mod removed_keys;
pub mod repair;
pub mod replica;
pub mod run;
pub mod segment;
mod state;

pub use commit::Tail;
pub use compact::{CompactOptions, CompactionReport, RetentionReport};
pub use config::{
    FailureSignal, FsyncPolicy, LogConfig, Retention, Switch, SyncObserver, DEFAULT_DEDUP_MAX_KEYS,
    DEFAULT_MAX_FRAME_BYTES,
};
pub use dedup::{DedupWindow, FirstAck, LIVE_BELOW_PIECE};
pub use error::{Error, Result};
pub use frame::{check_frames, now_ns, Appended, NewFrame, StoredFrame};
pub use log::Log;
pub use read::LogStats;
pub use recovery::{list_segments, recover, CutShort, Recovered, RecoverySink, TailLoss, TornTail};
pub use replica::{cut_from, Copied, Cut};
pub use run::{Run, RunWriter};
pub use segment::{sync_filesystem, MappedFile, Segment, SegmentWriter, SyncMethod};
