//! Tracking of the tasks the server spawns, so that shutdown waits for every one of them
//! (up to its deadline) instead of leaving them detached.
//!
//! Every tracked task holds a clone of one `mpsc::Sender`, which nobody sends on; the
//! receiver sees the channel close when the last clone is dropped, that is when every
//! tracked task has ended and every [`TaskTracker`] is gone (mini-redis's
//! `shutdown_complete` channel).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Spawns tracked tasks. Cheap to clone; a clone keeps [`AllTasksDone`] waiting.
#[derive(Debug, Clone)]
pub struct TaskTracker {
    alive: mpsc::Sender<()>,
    running: Arc<AtomicUsize>,
}

/// Completes once every tracked task has ended and every [`TaskTracker`] is dropped.
#[derive(Debug)]
pub struct AllTasksDone {
    closed: mpsc::Receiver<()>,
    running: Arc<AtomicUsize>,
}

/// A new tracker and the completion of everything it spawns.
pub fn tracker() -> (TaskTracker, AllTasksDone) {
    let (alive, closed) = mpsc::channel(1);
    let running = Arc::new(AtomicUsize::new(0));
    (
        TaskTracker {
            alive,
            running: Arc::clone(&running),
        },
        AllTasksDone { closed, running },
    )
}

/// Held by a tracked task while it runs (also when it is dropped unfinished).
struct Running {
    _alive: mpsc::Sender<()>,
    running: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TaskTracker {
    /// Spawns `task` on the current runtime; it counts as running until it returns or is
    /// dropped.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.running.fetch_add(1, Ordering::AcqRel);
        let token = Running {
            _alive: self.alive.clone(),
            running: Arc::clone(&self.running),
        };
        tokio::spawn(async move {
            let _token = token;
            task.await
        })
    }
}

impl AllTasksDone {
    /// Waits until every tracked task has ended and every tracker is dropped.
    pub async fn wait(&mut self) {
        while self.closed.recv().await.is_some() {}
    }

    /// Tracked tasks still running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_every_task_and_tracker() {
        let (tasks, mut done) = tracker();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let _ = released.await;
        });
        assert_eq!(done.running(), 1);
        drop(tasks);
        let early = tokio::time::timeout(Duration::from_millis(50), done.wait()).await;
        assert!(early.is_err(), "a task is still running");
        let _ = release.send(());
        tokio::time::timeout(Duration::from_secs(5), done.wait())
            .await
            .expect("all done once the task ends");
        assert_eq!(done.running(), 0);
    }

    #[tokio::test]
    async fn a_live_tracker_keeps_it_waiting() {
        let (tasks, mut done) = tracker();
        let early = tokio::time::timeout(Duration::from_millis(50), done.wait()).await;
        assert!(early.is_err(), "the tracker can still spawn");
        drop(tasks);
        tokio::time::timeout(Duration::from_secs(5), done.wait())
            .await
            .expect("done once the tracker is dropped");
    }
}
