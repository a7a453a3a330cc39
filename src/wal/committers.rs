//! The threads that run the committers of every log in the process: one pool of at most
//! [`MAX_WORKERS`], started as work comes and stopped after a few idle seconds, so that a
//! node's threads (four memory mappings each) do not grow with its busy topics.
//!
//! A committer with queued appends is *scheduled*: it sits once in the pool's queue, and one
//! worker at a time takes a turn of it (writes what is queued, syncs if due, answers). A
//! committer that still has appends after its turn goes to the back of the queue, so one
//! busy topic cannot keep the others waiting. Under `interval:<ms>`, a committer with
//! unsynced writes also has a deadline on the pool's clock: one idle worker, the keeper,
//! waits for the earliest one and schedules its committer when it comes, waking as many
//! workers as came due. While any deadline is set, a worker stays.
//!
//! Idle workers are woken last-idle first, so that under a light load the same few do the
//! work and the others reach their idle stop.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tracing::debug;

use super::commit::Committer;
use super::mappings::{self, Need, THREAD};

/// The most committer threads the process runs at once. Each holds a worker for one turn of
/// one log, a sync included (under `always`, a few hundred microseconds to milliseconds), so
/// this many logs sync at the same time, far more than a disk's queue gains from.
pub const MAX_WORKERS: usize = 64;

/// How long a worker waits for work before it stops.
const IDLE: Duration = Duration::from_secs(5);

/// The name every worker thread carries (`/proc/PID/task/*/comm` cuts it to 15 bytes).
pub const THREAD_NAME: &str = "framecast-commit";

static POOL: LazyLock<Pool> = LazyLock::new(|| Pool {
    state: Mutex::new(State::default()),
    clock: Condvar::new(),
});

/// Deadlines set and not yet come or dropped (their committers' `deadline` flags).
static LIVE_DEADLINES: AtomicUsize = AtomicUsize::new(0);

struct Pool {
    state: Mutex<State>,
    /// The keeper waits here for the earliest deadline (or an earlier one being set).
    clock: Condvar,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Arc<Committer>>,
    /// Stopped committers' entries stay until they reach the top.
    deadlines: BinaryHeap<Reverse<Deadline>>,
    workers: usize,
    /// Workers waiting for a scheduled committer, each on its own condition variable, the
    /// last to go idle on top.
    idle: Vec<Arc<Condvar>>,
    /// A worker waits on `clock`.
    keeper: bool,
    /// Workers woken or started for `ready` that have not taken the lock since: what
    /// `ready` holds beyond them still needs a worker.
    woken: usize,
    /// The keeper was woken for `ready` (counted in `woken`).
    keeper_called: bool,
}

/// When a committer's unsynced writes must be synced.
struct Deadline {
    at: Instant,
    committer: Weak<Committer>,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// Queues `committer` for a turn (it must not be queued already: its caller holds its
/// queue's lock and marks it scheduled), starting a worker when none is free. Fails only
/// when no worker runs and none can start (the error says why).
pub(super) fn schedule(committer: Arc<Committer>) -> io::Result<()> {
    let pool = &*POOL;
    let mut st = pool.state.lock();
    st.ready.push_back(committer);
    if let Err(e) = wake(pool, &mut st, 0) {
        if st.workers == 0 {
            st.ready.pop_back();
            return Err(e);
        }
    }
    Ok(())
}

/// Wakes or starts workers for what `ready` holds beyond those already woken and `taking`
/// (workers that will look at `ready` next anyway): an idle one per committer, then the
/// keeper, then new ones up to [`MAX_WORKERS`]. An error when one could not start.
fn wake(pool: &Pool, st: &mut State, taking: usize) -> io::Result<()> {
    let mut waiting = st.ready.len().saturating_sub(st.woken + taking);
    while waiting > 0 {
        let Some(worker) = st.idle.pop() else { break };
        worker.notify_one();
        st.woken += 1;
        waiting -= 1;
    }
    if waiting > 0 && st.keeper && !st.keeper_called {
        pool.clock.notify_one();
        st.keeper_called = true;
        st.woken += 1;
        waiting -= 1;
    }
    while waiting > 0 && st.workers < MAX_WORKERS {
        if let Err(e) = start_worker() {
            // The running workers take the rest in turn.
            debug!(workers = st.workers, error = %e, "no further committer thread");
            return Err(e);
        }
        st.workers += 1;
        st.woken += 1;
        waiting -= 1;
    }
    Ok(())
}

/// Sets `committer`'s sync deadline (its caller holds its queue's lock, sets its
/// `deadline` flag, and keeps one at a time). Called from a turn, so a worker runs, and
/// becomes the keeper if none is.
pub(super) fn set_deadline(at: Instant, committer: Weak<Committer>) {
    LIVE_DEADLINES.fetch_add(1, Ordering::Relaxed);
    let pool = &*POOL;
    let mut st = pool.state.lock();
    let earliest = st.deadlines.peek().is_none_or(|Reverse(d)| at < d.at);
    st.deadlines.push(Reverse(Deadline { at, committer }));
    if earliest {
        if st.keeper {
            pool.clock.notify_one();
        } else if let Some(worker) = st.idle.pop() {
            worker.notify_one();
            st.woken += 1;
        }
    }
}

/// A deadline's committer cleared its flag (the deadline came, or it stopped): one fewer
/// to stay for. When none is left, the keeper may stop.
pub(super) fn deadline_cleared() {
    if LIVE_DEADLINES.fetch_sub(1, Ordering::Relaxed) == 1 {
        let pool = &*POOL;
        let st = pool.state.lock();
        if st.keeper {
            pool.clock.notify_one();
        }
    }
}

fn start_worker() -> io::Result<()> {
    // Admitted first: a thread started at the mapping limit can abort the process.
    mappings::admit(Need::New(THREAD))?;
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(|| work(&POOL))
        .map(drop)
}

/// Counts a worker out if it ends by a panic (one that stops counts itself out under the
/// lock it decided in), and hands what is ready to another.
struct Leaving<'a>(&'a Pool);

impl Drop for Leaving<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.workers -= 1;
        if !st.ready.is_empty() {
            let _ = wake(self.0, &mut st, 0);
        }
    }
}

/// One worker: deadlines that came first, then scheduled committers in order; the keeper's
/// watch when no other worker keeps it; stops after [`IDLE`] with nothing to do.
fn work(pool: &Pool) {
    let leaving = Leaving(pool);
    let parked = Arc::new(Condvar::new());
    let mut st = pool.state.lock();
    // Started by `wake`, which counted it.
    st.woken = st.woken.saturating_sub(1);
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while st.deadlines.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = st.deadlines.pop() {
                due.push(d.committer);
            }
        }
        if !due.is_empty() {
            // Upgraded and dropped unlocked: a last reference frees a whole log.
            let woken: Vec<_> = MutexGuard::unlocked(&mut st, || {
                due.iter()
                    .filter_map(Weak::upgrade)
                    .filter(|c| c.deadline_came())
                    .collect()
            });
            st.ready.extend(woken);
            // Every log that came due syncs on its own thread, as appends do (this one
            // takes the first).
            let _ = wake(pool, &mut st, 1);
            continue;
        }
        if let Some(committer) = st.ready.pop_front() {
            let again = MutexGuard::unlocked(&mut st, || {
                // A panic would leave the log scheduled for good (its `close` waiting forever)
                // and this pool a worker short: the log is failed instead, the worker goes on.
                let again = panic::catch_unwind(AssertUnwindSafe(|| committer.turn()))
                    .unwrap_or_else(|_| committer.turn_panicked());
                again.then_some(committer)
            });
            st.ready.extend(again);
            continue;
        }
        let live = LIVE_DEADLINES.load(Ordering::Relaxed) > 0;
        if !st.keeper && live {
            if let Some(at) = earliest_live(&mut st) {
                // That may have let go of the lock: another may keep the clock now, or
                // work may have come.
                if st.keeper || !st.ready.is_empty() || at <= Instant::now() {
                    continue;
                }
                st.keeper = true;
                pool.clock.wait_until(&mut st, at);
                st.keeper = false;
                if std::mem::take(&mut st.keeper_called) {
                    st.woken = st.woken.saturating_sub(1);
                }
                continue;
            }
        }
        st.idle.push(Arc::clone(&parked));
        let timed_out = parked.wait_for(&mut st, IDLE).timed_out();
        // Whoever woke it took it off the list (and counted it); a timeout did not.
        if st.idle.iter().any(|w| Arc::ptr_eq(w, &parked)) {
            st.idle.retain(|w| !Arc::ptr_eq(w, &parked));
        } else {
            st.woken = st.woken.saturating_sub(1);
        }
        let live = LIVE_DEADLINES.load(Ordering::Relaxed) > 0;
        if timed_out && st.ready.is_empty() && (st.keeper || !live) {
            st.workers -= 1;
            debug!(workers = st.workers, "committer thread idle, stopping");
            std::mem::forget(leaving);
            return;
        }
    }
}

/// The earliest deadline whose committer has not stopped, dropping those above it that
/// have; `None` when there is none. Lets go of the lock while it looks at a committer.
fn earliest_live(st: &mut MutexGuard<'_, State>) -> Option<Instant> {
    loop {
        let Reverse(top) = st.deadlines.peek()?;
        let at = top.at;
        let committer = top.committer.clone();
        // Looked at unlocked: the committer's own lock comes before the pool's, and a last
        // reference frees a whole log.
        let stopped =
            MutexGuard::unlocked(st, || committer.upgrade().is_none_or(|c| c.is_stopped()));
        let same = st
            .deadlines
            .peek()
            .is_some_and(|Reverse(d)| d.at == at && Weak::ptr_eq(&d.committer, &committer));
        if !same {
            // Changed meanwhile: look again.
            continue;
        }
        if !stopped {
            return Some(at);
        }
        st.deadlines.pop();
    }
}
