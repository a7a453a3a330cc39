//! Fail points for crash-safety tests: with the `failpoints` feature, a test can make a named
//! step of a multi-file change fail as if the process had died there (nothing after it runs,
//! nothing is cleaned up). Without the feature every check compiles to nothing.

use super::Result;

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashSet;
    use std::sync::Mutex;

    static ARMED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    /// Arms `name`: the next time it is hit it fails (once).
    pub fn arm(name: &str) {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(HashSet::new).insert(name.to_string());
    }

    /// Disarms every fail point.
    pub fn clear() {
        *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub(super) fn take(name: &str) -> bool {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        g.as_mut().is_some_and(|set| set.remove(name))
    }
}

#[cfg(feature = "failpoints")]
pub use imp::{arm, clear};

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
