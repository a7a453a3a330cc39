//! Fail points for crash-safety tests: with the `failpoints` feature, a test can make a named
//! step of a multi-file change fail as if the process had died there (nothing after it runs,
//! nothing is cleaned up). Without the feature every check compiles to nothing.

use super::Result;

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Armed points and how many more hits each lets pass before it fails.
    static ARMED: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

    /// Arms `name`: the next time it is hit it fails (once).
    pub fn arm(name: &str) {
        arm_at(name, 1);
    }

    /// Arms `name` to fail at its `nth` hit from now (1: the next one), once.
    pub fn arm_at(name: &str, nth: u64) {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(HashMap::new)
            .insert(name.to_string(), nth.max(1));
    }

    /// Arms the points `spec` names, `name@nth` or `name`, separated by commas (the
    /// `framecast` binary reads it from `FRAMECAST_FAILPOINTS` in builds with the feature).
    pub fn arm_spec(spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, nth) = match item.split_once('@') {
                Some((name, nth)) => (
                    name,
                    nth.parse::<u64>()
                        .map_err(|_| format!("fail point {item:?}: not name@count"))?,
                ),
                None => (item, 1),
            };
            arm_at(name, nth);
        }
        Ok(())
    }

    /// Disarms every fail point.
    pub fn clear() {
        *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn take(name: &str) -> bool {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        let Some(left) = g.as_mut().and_then(|points| points.get_mut(name)) else {
            return false;
        };
        *left -= 1;
        if *left > 0 {
            return false;
        }
        if let Some(points) = g.as_mut() {
            points.remove(name);
        }
        true
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{arm, arm_at, arm_spec, clear};

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
