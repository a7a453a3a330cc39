//! The fsync policy a data directory was last served with, kept in `<data-dir>/LAST_FSYNC`,
//! with the boot the server ran in and whether it stopped cleanly.
//!
//! Whether a torn tail may have held acknowledged frames depends on the policy the frames
//! were written under, which is the previous run's, not necessarily this one's: a server
//! run with `never`, crashed and restarted with `always` (or an offline `framecast compact`)
//! must still give a topic whose tail it cuts a new epoch.
//!
//! Under `never` or `interval` a frame is acknowledged before it is synced. A killed process
//! loses nothing (its writes are in the page cache), but a crash of the machine can lose
//! the last acknowledged frames without leaving a torn tail to find: the pages were never
//! written, the log simply ends earlier, and the lost offsets would be handed out again
//! under the same epoch. So the file also names the boot (Linux's
//! `/proc/sys/kernel/random/boot_id`) and, once every log is synced and closed, says the
//! stop was clean: a run under such a policy that did not stop cleanly, in an earlier boot,
//! may have lost frames, and recovery gives its topics new epochs.
//!
//! The file: the policy on the first line (all an older build wrote), then `boot <id>`,
//! then `clean` after a clean stop.

use std::path::Path;

use super::Result;
use crate::wal::segment::sync_dir;
use crate::wal::{Error, FsyncPolicy};

/// Name of the file, in the data directory.
pub const LAST_FSYNC_FILE: &str = "LAST_FSYNC";

/// What the last `serve` of a data directory recorded of its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRun {
    /// The fsync policy it wrote under.
    pub policy: FsyncPolicy,
    /// The boot it ran in; `None` if not recorded (an older build, or no boot id).
    pub boot: Option<String>,
    /// True once it stopped cleanly, every log synced and closed.
    pub clean: bool,
}

/// What the last `serve` of `data_dir` recorded; `None` if nothing was recorded (a new data
/// dir, or one from before this file existed) or the policy does not parse.
pub fn read_run(data_dir: &Path) -> Option<LastRun> {
    let text = std::fs::read_to_string(data_dir.join(LAST_FSYNC_FILE)).ok()?;
    let mut lines = text.lines().map(str::trim);
    let policy = lines.next()?.parse().ok()?;
    let mut run = LastRun {
        policy,
        boot: None,
        clean: false,
    };
    for line in lines {
        match line.split_once(' ') {
            Some(("boot", id)) => run.boot = Some(id.trim().to_string()),
            _ if line == "clean" => run.clean = true,
            _ => {}
        }
    }
    Some(run)
}

/// The policy recorded by the last `serve` of `data_dir` (see [`read_run`]).
pub fn read(data_dir: &Path) -> Option<FsyncPolicy> {
    read_run(data_dir).map(|r| r.policy)
}

/// This boot's id (Linux: `/proc/sys/kernel/random/boot_id`); `None` where there is none.
pub fn current_boot() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// True when the last run of `data_dir` may have lost acknowledged frames that left no
/// trace: it acknowledged before syncing, did not stop cleanly, and ran in another boot
/// than `boot` (the machine went down under it). `false` when it cannot be told (no record,
/// or no boot recorded).
pub fn unsynced_frames_may_be_lost(data_dir: &Path, boot: Option<&str>) -> bool {
    read_run(data_dir).is_some_and(|run| {
        run.policy != FsyncPolicy::Always
            && !run.clean
            && run.boot.is_some_and(|b| boot != Some(b.as_str()))
    })
}

/// True when frames in `data_dir` may have been acknowledged before they were synced:
/// under the `current` policy or the one recorded by the last `serve`.
pub fn acks_may_precede_sync(data_dir: &Path, current: FsyncPolicy) -> bool {
    current != FsyncPolicy::Always || read(data_dir).is_some_and(|p| p != FsyncPolicy::Always)
}

/// Records `policy` and this boot durably (temp file, sync, rename, directory sync), the
/// run not yet stopped cleanly. `serve` calls it after recovery, before it accepts a
/// publish.
pub fn record(data_dir: &Path, policy: FsyncPolicy) -> Result<()> {
    write(data_dir, policy, false)
}

/// Records that the run stopped cleanly: every log synced and closed. `serve` calls it last.
pub fn record_clean_stop(data_dir: &Path, policy: FsyncPolicy) -> Result<()> {
    write(data_dir, policy, true)
}

fn write(data_dir: &Path, policy: FsyncPolicy, clean: bool) -> Result<()> {
    use std::io::Write;
    let path = data_dir.join(LAST_FSYNC_FILE);
    let temp = data_dir.join(format!("{LAST_FSYNC_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        writeln!(f, "{policy}")?;
        if let Some(boot) = current_boot() {
            writeln!(f, "boot {boot}")?;
        }
        if clean {
            writeln!(f, "clean")?;
        }
        f.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| Error::io(&path, e))?;
    sync_dir(data_dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_did_not_stop_cleanly_in_another_boot_may_have_lost_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let boot = current_boot();
        // Nothing recorded, or an older build's file (the policy alone): cannot be told.
        assert!(!unsynced_frames_may_be_lost(d, Some("other")));
        std::fs::write(d.join(LAST_FSYNC_FILE), "never\n").expect("write");
        assert_eq!(read(d), Some(FsyncPolicy::Never));
        assert!(!unsynced_frames_may_be_lost(d, Some("other")));

        record(d, FsyncPolicy::Never).expect("record");
        let run = read_run(d).expect("recorded");
        assert_eq!(
            (run.policy, run.boot.clone(), run.clean),
            (FsyncPolicy::Never, boot.clone(), false)
        );
        if let Some(b) = boot.as_deref() {
            assert!(
                !unsynced_frames_may_be_lost(d, Some(b)),
                "same boot: the page cache held it"
            );
            assert!(unsynced_frames_may_be_lost(d, Some("another boot")));
            assert!(unsynced_frames_may_be_lost(d, None));
        }
        record_clean_stop(d, FsyncPolicy::Never).expect("record");
        assert!(read_run(d).expect("recorded").clean);
        assert!(
            !unsynced_frames_may_be_lost(d, Some("another boot")),
            "synced at the stop"
        );
        record(d, FsyncPolicy::Always).expect("record");
        assert!(
            !unsynced_frames_may_be_lost(d, Some("another boot")),
            "synced before acks"
        );
    }
}
