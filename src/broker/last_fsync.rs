//! The fsync policy a data directory was last served with, kept in `<data-dir>/LAST_FSYNC`.
//!
//! Whether a torn tail may have held acknowledged frames depends on the policy the frames
//! were written under, which is the previous run's, not necessarily this one's: a server
//! run with `never`, crashed and restarted with `always` (or an offline `framecast compact`)
//! must still give a topic whose tail it cuts a new epoch.

use std::path::Path;

use super::Result;
use crate::wal::segment::sync_dir;
use crate::wal::{Error, FsyncPolicy};

/// Name of the file, in the data directory.
pub const LAST_FSYNC_FILE: &str = "LAST_FSYNC";

/// The policy recorded by the last `serve` of `data_dir`; `None` if none was recorded (a
/// new data dir, or one from before this file existed) or it does not parse.
pub fn read(data_dir: &Path) -> Option<FsyncPolicy> {
    std::fs::read_to_string(data_dir.join(LAST_FSYNC_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// True when frames in `data_dir` may have been acknowledged before they were synced:
/// under the `current` policy or the one recorded by the last `serve`.
pub fn acks_may_precede_sync(data_dir: &Path, current: FsyncPolicy) -> bool {
    current != FsyncPolicy::Always || read(data_dir).is_some_and(|p| p != FsyncPolicy::Always)
}

/// Records `policy` durably (temp file, sync, rename, directory sync). `serve` calls it
/// after recovery, before it accepts a publish.
pub fn record(data_dir: &Path, policy: FsyncPolicy) -> Result<()> {
    use std::io::Write;
    let path = data_dir.join(LAST_FSYNC_FILE);
    let temp = data_dir.join(format!("{LAST_FSYNC_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        writeln!(f, "{policy}")?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| Error::io(&path, e))?;
    sync_dir(data_dir)?;
    Ok(())
}
