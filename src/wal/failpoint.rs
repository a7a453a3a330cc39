//! Fail points for crash-safety tests: with the `failpoints` feature, a test can make a named
//! step of a multi-file change fail as if the process had died there (nothing after it runs,
//! nothing is cleaned up). Without the feature every check compiles to nothing.

use super::Result;

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Armed points: how many more hits each lets pass before it fails, and how many hits
    /// in a row then fail.
    static ARMED: Mutex<Option<HashMap<String, (u64, u64)>>> = Mutex::new(None);

    /// Arms `name`: the next time it is hit it fails (once).
    pub fn arm(name: &str) {
        arm_at(name, 1);
    }

    /// Arms `name` to fail at its `nth` hit from now (1: the next one), once.
    pub fn arm_at(name: &str, nth: u64) {
        arm_times(name, nth, 1);
    }

    /// Arms `name` to fail `times` hits in a row from its `nth` hit from now.
    pub fn arm_times(name: &str, nth: u64, times: u64) {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(HashMap::new)
            .insert(name.to_string(), (nth.max(1), times.max(1)));
    }

    /// Arms the points `spec` names, separated by commas: `name` (the next hit fails),
    /// `name@nth` (the nth hit fails) or `name@nth*times` (that many hits in a row fail
    /// from the nth). The `framecast` binary reads it from `FRAMECAST_FAILPOINTS` in builds
    /// with the feature.
    pub fn arm_spec(spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || format!("fail point {item:?}: not name, name@nth or name@nth*times");
            let (name, nth, times) = match item.split_once('@') {
                None => (item, 1, 1),
                Some((name, count)) => {
                    let (nth, times) = count.split_once('*').unwrap_or((count, "1"));
                    (
                        name,
                        nth.parse::<u64>().map_err(|_| bad())?,
                        times.parse::<u64>().map_err(|_| bad())?,
                    )
                }
            };
            arm_times(name, nth, times);
        }
        Ok(())
    }

    /// Disarms every fail point.
    pub fn clear() {
        *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn take(name: &str) -> bool {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        let Some((left, times)) = g.as_mut().and_then(|points| points.get_mut(name)) else {
            return false;
        };
        if *left > 1 {
            *left -= 1;
            return false;
        }
        *times -= 1;
        if *times == 0 {
            if let Some(points) = g.as_mut() {
                points.remove(name);
            }
        }
        true
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{arm, arm_at, arm_spec, arm_times, clear};

/// Every fail point, in the order a compaction or retention pass meets them.
pub const ALL: &[&str] = &[
    "run.before_sync",
    "run.before_rename",
    "run.after_rename",
    "manifest.before_rename",
    "manifest.after_rename",
    "compact.before_delete",
    "compact.mid_delete",
];

/// Not in [`ALL`] (not a step of compaction): a commit's sync fails as if the disk
/// refused it (`commit.sync`).
pub const COMMIT_SYNC: &str = "commit.sync";

/// Not in [`ALL`]: a committer's turn panics before it writes (`commit.panic`).
pub const COMMIT_PANIC: &str = "commit.panic";
/// Not in [`ALL`]: the directory sync after a new segment is named fails
/// (`segment.dir_sync`).
pub const SEGMENT_DIR_SYNC: &str = "segment.dir_sync";
/// Not in [`ALL`]: a publish waits between the broker's checks (this node may take
/// writes) and its log's queue, as a thread descheduled there would (`publish.stall`),
/// until the file [`RELEASE_ENV`] names exists ([`stalled`]).
pub const PUBLISH_STALL: &str = "publish.stall";
/// The variable naming the file whose creation ends a stall.
pub const RELEASE_ENV: &str = "FRAMECAST_FAILPOINT_RELEASE";

/// Waits until the file `FRAMECAST_FAILPOINT_RELEASE` names exists: at once when the
/// variable is not set, at most a minute.
pub async fn stalled() {
    let Some(release) = std::env::var_os(RELEASE_ENV) else {
        return;
    };
    tracing::warn!(release = %std::path::Path::new(&release).display(), "fail point publish.stall: a publish stalls until the release file exists");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(&release).exists() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
/// Not in [`ALL`]: the write of a log's `ACTIVE` file fails (`active.write`).
pub const ACTIVE_WRITE: &str = "active.write";
/// Not in [`ALL`]: the undo of a failed sync stops half way through zeroing the undone
/// records, as a `kill -9` there would leave them (`segment.rollback_half`); a test kills
/// the process next.
pub const ROLLBACK_HALF: &str = "segment.rollback_half";

/// True when `e` came from a fail point: a simulated crash, after which nothing may be
/// cleaned up.
pub fn is_failpoint(e: &super::Error) -> bool {
    matches!(e, super::Error::Unavailable(m) if m.starts_with("fail point "))
}

/// Fails with [`super::Error::Unavailable`] if `name` is armed.
#[inline]
pub fn hit(name: &str) -> Result<()> {
    #[cfg(feature = "failpoints")]
    if imp::take(name) {
        return Err(super::Error::Unavailable(format!("fail point {name}")));
    }
    let _ = name;
    Ok(())
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn a_spec_fails_the_nth_hit_that_many_times_in_a_row() {
        arm_spec("test.repeat@3*2,test.once@2").expect("spec");
        let hits: Vec<bool> = (0..6).map(|_| hit("test.repeat").is_err()).collect();
        assert_eq!(hits, [false, false, true, true, false, false]);
        let hits: Vec<bool> = (0..3).map(|_| hit("test.once").is_err()).collect();
        assert_eq!(hits, [false, true, false]);
        assert!(arm_spec("test.bad@x").is_err());
        assert!(arm_spec("test.bad@2*").is_err());
    }
}
