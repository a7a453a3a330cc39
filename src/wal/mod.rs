//! The write-ahead log: segment files of CRC'd records, group commit, recovery.

mod compact;
mod dedup;
mod error;
pub mod failpoint;
pub mod format;
mod log;
pub mod manifest;
pub mod record;
pub mod recovery;
pub mod repair;
pub mod run;
pub mod segment;

pub use compact::{CompactOptions, CompactionReport, Retention, RetentionReport};
pub use dedup::{DedupWindow, FirstAck};
pub use error::{Error, Result};
pub use log::{
    now_ns, Appended, FsyncPolicy, Log, LogConfig, LogStats, NewFrame, StoredFrame,
    DEFAULT_DEDUP_MAX_KEYS, DEFAULT_MAX_FRAME_BYTES,
};
pub use recovery::{list_segments, recover, Recovered, RecoverySink, TornTail};
pub use run::{Run, RunWriter};
pub use segment::{MappedFile, Segment, SegmentWriter, SyncMethod};
