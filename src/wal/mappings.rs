//! The kernel's limit on a process's memory mappings (`vm.max_map_count`, 65,530 by
//! default): how many this process holds, what the limit is, a budget that keeps the server
//! away from it, and what to tell an operator when a mapping or a thread is refused.
//!
//! Every segment and every sorted run is one mapping, and every thread holds four (its
//! stack and guard page, and the signal stack Rust gives it and that one's guard). A topic
//! costs one mapping, five while its committer thread is alive (it had a publish in the
//! last few seconds). At the limit, `mmap` fails with `ENOMEM`, a thread cannot start
//! (`EAGAIN`), and a thread that got its stack but not its signal stack aborts the whole
//! process (Rust's runtime panics while starting it). So the server asks [`admit`] before
//! each mapping and thread of its own, and is refused while fewer than [`RESERVE`] mappings
//! would be left: a new segment, a new topic or an idle topic's publish fails `UNAVAILABLE`
//! with the reason, and the process lives on.

use std::io;
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
/// blocking threads (up to 512, four each), the allocator's large blocks, libraries.
pub const RESERVE: u64 = 2_560;
/// How long a reading of `/proc/self/maps` stands before a refusal reads it again (a
/// reading costs about a millisecond per ten thousand mappings).
const FRESH: Duration = Duration::from_millis(100);

/// What [`admit`] knows: the last reading, what it admitted since (counted up only: a
/// mapping or thread that goes away shows at the next reading), and the limit.
struct Budget {
    reading: u64,
    since: u64,
    read_at: Instant,
    limit: Option<u64>,
    /// When a refusal was last logged: at most one line per [`WARN_EVERY`].
    warned_at: Option<Instant>,
}

/// How often refusals are logged while they go on.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Budget {
    fn read() -> Budget {
        Budget {
            reading: in_use().unwrap_or(0),
            since: 0,
            read_at: Instant::now(),
            limit: limit(),
            warned_at: None,
        }
    }

    fn fits(&self, need: u64) -> bool {
        self.limit
            .is_none_or(|max| self.reading + self.since + need + RESERVE <= max)
    }
}

static BUDGET: Mutex<Option<Budget>> = Mutex::new(None);

/// Takes `need` mappings (a segment or run: 1; a thread: [`THREAD`]) before the caller
/// makes them, or refuses, with what an operator can do, when fewer than [`RESERVE`] would
/// be left. Where `/proc` cannot be read, everything is admitted. Cheap while the process
/// is far from the limit (no reading); near it, `/proc/self/maps` is read at most every
/// 100 ms.
pub fn admit(need: u64) -> io::Result<()> {
    let mut guard = BUDGET.lock();
    let budget = guard.get_or_insert_with(Budget::read);
    if !budget.fits(need) && budget.read_at.elapsed() >= FRESH {
        *budget = Budget {
            warned_at: budget.warned_at,
            ..Budget::read()
        };
    }
    if budget.fits(need) {
        budget.since += need;
        return Ok(());
    }
    let max = budget.limit.unwrap_or_default();
    let held = budget.reading + budget.since;
    if budget.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
        budget.warned_at = Some(Instant::now());
        warn!(
            memory_mappings = held,
            max_map_count = max,
            reserve = RESERVE,
            "near the kernel's limit on memory mappings: refusing new segments, topics and \
             committer threads; raise vm.max_map_count (README, \"Limits of one node\")"
        );
    }
    Err(io::Error::new(
        io::ErrorKind::OutOfMemory,
        format!(
            "refused to come within {RESERVE} mappings of the kernel's limit, which a thread \
             the server starts needs (at the limit it would abort the process): {}",
            at_limit(held, max)
        ),
    ))
}

/// The memory mappings this process holds (the lines of `/proc/self/maps`); `None` where it
/// cannot be read. Costs about a millisecond per ten thousand mappings.
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
         (vm.max_map_count): each segment and sorted run is one, and each topic published \
         to in the last few seconds has a committer thread that holds four more; raise the \
         limit (`sysctl -w vm.max_map_count=262144`, kept across reboots by \
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
