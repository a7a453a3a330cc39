//! The kernel's limit on a process's memory mappings (`vm.max_map_count`, 65,530 by
//! default): how many this process holds, what the limit is, a budget that keeps the server
//! away from it, and what to tell an operator when a mapping or a thread is refused.
//!
//! Every segment and every sorted run is one mapping, and every thread holds four (its
//! stack and guard page, and the signal stack Rust gives it and that one's guard). A topic
//! costs one mapping; its commits run on the process's pool of at most
//! [`super::committers::MAX_WORKERS`] threads, whatever the number of busy topics. At the
//! limit, `mmap` fails with `ENOMEM`, a thread cannot start
//! (`EAGAIN`), and a thread that got its stack but not its signal stack aborts the whole
//! process (Rust's runtime panics while starting it). So the server asks [`admit`] before
//! each mapping and thread of its own, and is refused while fewer than [`RESERVE`] mappings
//! would be left (half that for files that exist already: see [`Need`]): a new segment, a
//! new topic or a publish that needs the first committer thread fails `UNAVAILABLE` with
//! the reason, and the process lives on.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::warn;

/// Where the limit is read.
const LIMIT_FILE: &str = "/proc/sys/vm/max_map_count";
/// How close to the limit a refusal is taken to be the limit's: a thread needs up to four
/// mappings, so one refused a few short of the limit is the limit's too.
const NEAR: u64 = 8;

/// Mappings a thread holds: its stack and guard page, its signal stack and guard page.
pub const THREAD: u64 = 4;
/// Mappings [`admit`] leaves to what the server does not ask for: the async runtime's
/// blocking threads (up to 512, four each: half of it, all that files that exist already
/// leave), the allocator's large blocks, libraries.
pub const RESERVE: u64 = 4_096;
/// How often the server counts its mappings again (see [`due`]) while refusals go on:
/// a reading costs about 1.5 ms per thousand mappings (15.7 ms for 10,141 measured), 100 ms
/// near the default limit, so it is made on a blocking thread, never by [`admit`].
pub const FRESH: Duration = Duration::from_secs(1);
/// How often it counts again while near the limit (within twice the reserve) without
/// refusals, and where the limit could not be read.
const NEAR_EVERY: Duration = Duration::from_secs(10);
/// How often refusals are logged while they go on.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What asks for mappings, which decides how much of the reserve it may not touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A new segment, or a thread: leaves the whole [`RESERVE`].
    New(u64),
    /// A file that exists already: a segment or run opened by recovery, or a run a
    /// compaction made to replace segments. Leaves half the reserve, so a node that ran
    /// at its ceiling restarts (recovery's own threads take a few dozen more), and a
    /// compaction, which lowers the count, still runs there.
    Existing(u64),
}

impl Need {
    fn count(self) -> u64 {
        match self {
            Need::New(n) | Need::Existing(n) => n,
        }
    }

    fn reserve(self) -> u64 {
        match self {
            Need::New(_) => RESERVE,
            Need::Existing(_) => RESERVE / 2,
        }
    }
}

/// What [`admit`] knows: the last reading, what it admitted since (counted up only: a
/// mapping or thread that goes away shows at the next reading), and the limit.
struct Budget {
    reading: u64,
    since: u64,
    read_at: Instant,
    /// `None` where `/proc` could not be read at the first reading: everything is admitted.
    limit: Option<u64>,
    /// When a refusal was last logged: at most one line per [`WARN_EVERY`].
    warned_at: Option<Instant>,
    /// A caller of [`refresh`] is reading `/proc`.
    reading_now: bool,
    /// Something was refused since the last reading: [`due`] says so.
    wanted: bool,
}

impl Budget {
    fn first() -> Budget {
        Budget {
            reading: in_use().unwrap_or(0),
            since: 0,
            read_at: Instant::now(),
            limit: limit(),
            warned_at: None,
            reading_now: false,
            wanted: false,
        }
    }

    /// Takes a reading made while `admitted` had been admitted since the last one: what was
    /// admitted during the reading stays counted (it may not show in it). A figure that
    /// could not be read (the process short of descriptors or memory) keeps its last value.
    fn take(&mut self, in_use: Option<u64>, limit: Option<u64>, admitted: u64) {
        self.reading_now = false;
        self.wanted = false;
        self.read_at = Instant::now();
        if let Some(n) = in_use {
            self.reading = n;
            self.since = self.since.saturating_sub(admitted);
        }
        if let Some(max) = limit {
            self.limit = Some(max);
        }
    }

    /// See [`due`].
    fn due(&self) -> bool {
        let age = self.read_at.elapsed();
        let near = self
            .limit
            .is_none_or(|max| self.reading + self.since + 2 * RESERVE > max);
        !self.reading_now && ((self.wanted && age >= FRESH) || (near && age >= NEAR_EVERY))
    }

    fn fits(&self, need: Need) -> bool {
        self.limit
            .is_none_or(|max| self.reading + self.since + need.count() + need.reserve() <= max)
    }
}

static BUDGET: Mutex<Option<Budget>> = Mutex::new(None);

/// Takes `need` mappings (a segment or run: 1; a thread: [`THREAD`]) before the caller
/// makes them, or refuses, with what an operator can do, when less than the reserve would
/// be left (see [`Need`]). Where `/proc` could not be read, everything is admitted. Always
/// cheap: it counts what it admitted since the last reading and never reads `/proc` itself
/// (but once, at the first call); mappings given back show at the next [`refresh`], which
/// the server makes on a blocking thread once a second while refusals go on.
pub fn admit(need: Need) -> io::Result<()> {
    let mut guard = BUDGET.lock();
    let budget = guard.get_or_insert_with(Budget::first);
    if budget.fits(need) {
        budget.since += need.count();
        return Ok(());
    }
    budget.wanted = true;
    Err(refusal(budget, need))
}

/// Whether the mappings should be counted again now: something was refused since the last
/// reading (a second ago or more), or the process is within twice the reserve of the limit,
/// or the limit could not be read (ten seconds ago or more).
pub fn due() -> bool {
    BUDGET.lock().as_ref().is_some_and(Budget::due)
}

/// Counts this process's mappings and reads the limit again (outside the budget's lock:
/// near the default limit a reading takes 100 ms); what is admitted meanwhile stays
/// counted. Blocking.
pub fn refresh() {
    let admitted = {
        let mut guard = BUDGET.lock();
        let budget = guard.get_or_insert_with(Budget::first);
        if budget.reading_now {
            return;
        }
        budget.reading_now = true;
        budget.since
    };
    let (n, max) = (in_use(), limit());
    if let Some(budget) = BUDGET.lock().as_mut() {
        budget.take(n, max, admitted);
    }
}

/// Makes a mapping of `path` with `map` once the budget admits `need`; a refusal, the
/// budget's or the kernel's, comes back in words an operator can act on.
pub(crate) fn map_admitted<T>(
    path: &Path,
    need: Need,
    map: impl FnOnce() -> io::Result<T>,
) -> super::Result<T> {
    admit(need)
        .and_then(|()| map().map_err(explain))
        .map_err(|e| super::Error::io(path, e))
}

/// The refusal of `need`, logged at most once per [`WARN_EVERY`].
fn refusal(budget: &mut Budget, need: Need) -> io::Error {
    let max = budget.limit.unwrap_or_default();
    let held = budget.reading + budget.since;
    let reserve = need.reserve();
    if budget.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
        budget.warned_at = Some(Instant::now());
        warn!(
            memory_mappings = held,
            max_map_count = max,
            reserve,
            "near the kernel's limit on memory mappings: refusing new segments, topics and \
             committer threads; raise vm.max_map_count (README, \"Limits of one node\")"
        );
    }
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "refused to come within {reserve} mappings of the kernel's limit, which threads \
             the server starts need (at the limit one would abort the process): {}",
            at_limit(held, max)
        ),
    )
}

/// The memory mappings this process holds (the lines of `/proc/self/maps`); `None` where it
/// cannot be read. Costs about 1.5 ms per thousand mappings.
pub fn in_use() -> Option<u64> {
    let maps = std::fs::read("/proc/self/maps").ok()?;
    Some(maps.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// The kernel's limit on a process's mappings; `None` where it cannot be read.
pub fn limit() -> Option<u64> {
    std::fs::read_to_string(LIMIT_FILE)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `e`, from a refused mapping or thread, with what an operator can do about it when the
/// cause is a limit: this process's mappings at `vm.max_map_count`, or, for a mapping, its
/// address-space limit (`ulimit -v`: every segment reserves `--segment-bytes` of address
/// space). Any other error is returned as it is.
pub fn explain(e: io::Error) -> io::Error {
    let code = e.raw_os_error();
    if code != Some(libc::ENOMEM) && code != Some(libc::EAGAIN) {
        return e;
    }
    if let Some(why) = describe(in_use(), limit(), address_space_limit(), code) {
        return io::Error::new(e.kind(), format!("{e}: {why}"));
    }
    e
}

/// The words for a refusal with error `code`, given the mappings in use, their limit and
/// the address-space limit in bytes; `None` when no limit explains it.
fn describe(
    in_use: Option<u64>,
    limit: Option<u64>,
    address_space: Option<u64>,
    code: Option<i32>,
) -> Option<String> {
    if let (Some(n), Some(max)) = (in_use, limit) {
        if n + NEAR >= max {
            return Some(at_limit(n, max));
        }
    }
    match (code, address_space) {
        (Some(libc::ENOMEM), Some(bytes)) => Some(format!(
            "the process's address space is limited to {bytes} bytes (`ulimit -v`), and \
             every segment reserves --segment-bytes of it: lift the limit or use smaller \
             segments"
        )),
        _ => None,
    }
}

/// The words for `n` mappings held against a limit of `max`.
fn at_limit(n: u64, max: u64) -> String {
    format!(
        "this process holds {n} memory mappings and the kernel allows {max} \
         (vm.max_map_count): each segment and sorted run is one, and each thread holds four; \
         raise the limit (`sysctl -w vm.max_map_count=262144`, kept across reboots by \
         deploy/99-framecast.conf) or hold fewer topics on this node"
    )
}

/// The process's address-space limit in bytes (`RLIMIT_AS`); `None` when unlimited.
fn address_space_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::As).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_at_the_limit_names_it_and_the_fix() {
        let enomem = Some(libc::ENOMEM);
        let at = describe(Some(65_530), Some(65_530), None, enomem);
        let text = at.as_deref().unwrap_or_default();
        assert!(text.contains("holds 65530 memory mappings"), "{text}");
        assert!(text.contains("vm.max_map_count"), "{text}");
        assert!(text.contains("sysctl -w vm.max_map_count="), "{text}");
        // A thread refused a few mappings short of the limit: still the limit's.
        let thread = describe(Some(65_527), Some(65_530), None, Some(libc::EAGAIN));
        assert!(thread.is_some_and(|t| t.contains("vm.max_map_count")));
        // Far below the limit it is not the limit's, whatever the error.
        assert_eq!(describe(Some(100), Some(65_530), None, enomem), None);
        assert_eq!(describe(None, None, None, enomem), None);
    }

    #[test]
    fn an_address_space_limit_explains_only_a_refused_mapping() {
        let text = describe(Some(100), Some(65_530), Some(1 << 30), Some(libc::ENOMEM));
        assert!(text.is_some_and(|t| t.contains("1073741824 bytes (`ulimit -v`)")));
        assert_eq!(
            describe(Some(100), Some(65_530), Some(1 << 30), Some(libc::EAGAIN)),
            None
        );
    }

    fn budget(reading: u64, since: u64, limit: Option<u64>) -> Budget {
        Budget {
            reading,
            since,
            read_at: Instant::now(),
            limit,
            warned_at: None,
            reading_now: false,
            wanted: false,
        }
    }

    #[test]
    fn new_mappings_keep_the_reserve_and_existing_files_half_of_it() {
        let max = 65_530;
        let ceiling = max - RESERVE;
        assert!(budget(ceiling - 1, 0, Some(max)).fits(Need::New(1)));
        assert!(!budget(ceiling, 0, Some(max)).fits(Need::New(1)));
        // What was admitted since the reading counts as held.
        assert!(!budget(ceiling - 10, 10, Some(max)).fits(Need::New(1)));
        assert!(!budget(ceiling - 3, 0, Some(max)).fits(Need::New(THREAD)));
        // Existing files (a restart, a compaction's run) go on to half the reserve.
        assert!(budget(ceiling, 0, Some(max)).fits(Need::Existing(1)));
        assert!(budget(max - RESERVE / 2 - 1, 0, Some(max)).fits(Need::Existing(1)));
        assert!(!budget(max - RESERVE / 2, 0, Some(max)).fits(Need::Existing(1)));
        // No limit read: everything fits.
        assert!(budget(u64::MAX / 4, 0, None).fits(Need::New(1_000)));
    }

    #[test]
    fn a_reading_keeps_what_was_admitted_while_it_ran_and_a_failed_one_changes_nothing() {
        let mut b = budget(100, 40, Some(1_000));
        // 40 admitted before the reading began, 5 more while it ran.
        b.since += 5;
        b.take(Some(150), Some(2_000), 40);
        assert_eq!((b.reading, b.since, b.limit), (150, 5, Some(2_000)));
        b.since += 7;
        b.take(None, None, 5);
        assert_eq!((b.reading, b.since, b.limit), (150, 12, Some(2_000)));
    }

    #[test]
    fn a_recount_is_due_after_a_refusal_near_the_limit_or_without_one() {
        let ago = |secs| Instant::now() - Duration::from_secs(secs);
        let mut b = budget(100, 0, Some(65_530));
        b.read_at = ago(60);
        assert!(!b.due(), "far from the limit, nothing refused");
        b.wanted = true;
        assert!(b.due());
        b.read_at = Instant::now();
        assert!(!b.due(), "counted under a second ago");
        let mut near = budget(65_530 - RESERVE, 0, Some(65_530));
        near.read_at = ago(5);
        assert!(!near.due());
        near.read_at = ago(11);
        assert!(near.due());
        near.reading_now = true;
        assert!(!near.due(), "a count is under way");
        let mut unknown = budget(0, 0, None);
        unknown.read_at = ago(11);
        assert!(unknown.due());
    }

    #[test]
    fn other_errors_pass_through_untouched() {
        let e = explain(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_holds_mappings_under_a_limit() {
        let n = in_use().unwrap_or_default();
        let max = limit().unwrap_or_default();
        assert!(n > 5, "the binary, its libraries and a stack at least: {n}");
        assert!(max > n, "limit {max}, in use {n}");
    }
}
