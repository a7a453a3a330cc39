//! Waiting on every topic at once: which topic's durable frontier, written batch, commit
//! point or oldest retained offset moved, or that the set of topics changed.
//!
//! One future per topic and kind in a `FuturesUnordered`, re-armed after each change, so a
//! wake costs the topic that changed, not a scan of every topic. When the roster changes
//! (a topic created, deleted or reopened) every future is dropped and re-armed, and the
//! caller rescans: a change that landed meanwhile is seen by the rescan.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;

use crate::broker::topics::{Topic, Topics};

/// Which of a topic's frontiers moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Its durable frontier (new frames to ship, or the leader's own end).
    Durable,
    /// A batch was handed out before its sync (new frames to ship early).
    Written,
    /// Its visibility frontier (the commit point).
    Visible,
    /// Its oldest retained offset (this node's retention removed frames).
    First,
}

/// What [`TopicWatches::next`] saw.
#[derive(Debug)]
pub enum Change {
    /// Topics were created, deleted or reopened: rescan them all.
    Roster,
    /// One frontier of one topic moved.
    Topic(Kind, Arc<Topic>),
}

type Armed = Pin<Box<dyn Future<Output = Option<(Kind, Arc<Topic>, watch::Receiver<u64>)>> + Send>>;

/// The watches of every topic of a registry.
pub struct TopicWatches {
    topics: Arc<Topics>,
    kinds: Vec<Kind>,
    roster: watch::Receiver<u64>,
    armed: FuturesUnordered<Armed>,
}

impl std::fmt::Debug for TopicWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicWatches")
            .field("kinds", &self.kinds)
            .field("armed", &self.armed.len())
            .finish()
    }
}

impl TopicWatches {
    /// Watches `kinds` of every topic of `topics`, armed now.
    pub fn new(topics: Arc<Topics>, kinds: &[Kind]) -> TopicWatches {
        let roster = topics.watch_roster();
        let mut w = TopicWatches {
            topics,
            kinds: kinds.to_vec(),
            roster,
            armed: FuturesUnordered::new(),
        };
        w.arm_all();
        w
    }

    fn arm_all(&mut self) {
        self.roster.mark_unchanged();
        self.armed = FuturesUnordered::new();
        for topic in self.topics.list() {
            for &kind in &self.kinds {
                let rx = match kind {
                    Kind::Durable => topic.log().watch_durable(),
                    Kind::Written => topic.log().watch_written(),
                    Kind::Visible => topic.watch_visible(),
                    Kind::First => topic.watch_first_offset(),
                };
                self.armed.push(arm(kind, Arc::clone(&topic), rx));
            }
        }
    }

    /// The next change. After [`Change::Roster`] every topic is armed again.
    pub async fn next(&mut self) -> Change {
        loop {
            tokio::select! {
                changed = self.roster.changed() => {
                    if changed.is_err() {
                        // The registry is gone: nothing will change any more.
                        std::future::pending::<()>().await;
                    }
                    self.arm_all();
                    return Change::Roster;
                }
                Some(fired) = self.armed.next(), if !self.armed.is_empty() => {
                    if let Some((kind, topic, rx)) = fired {
                        self.armed.push(arm(kind, Arc::clone(&topic), rx));
                        return Change::Topic(kind, topic);
                    }
                    // That topic's sender is gone (the topic was closed): the roster
                    // change that follows rescans.
                }
            }
        }
    }
}

fn arm(kind: Kind, topic: Arc<Topic>, mut rx: watch::Receiver<u64>) -> Armed {
    Box::pin(async move {
        rx.changed().await.ok()?;
        Some((kind, topic, rx))
    })
}
