//! Waiting on every topic at once: which topic's durable frontier, written batch, commit
//! point or oldest retained offset moved, or that the set of topics changed.
//!
//! One future per topic and kind in a `FuturesUnordered`, re-armed after each change, so a
//! wake costs the topic that changed, not a scan of every topic. When the roster changes
//! (a topic created, deleted or reopened) only the topics named by the registry's roster
//! log ([`Topics::roster_since`]) are disarmed and armed again, and the caller looks at
//! those: creating N topics costs O(N), not O(N²). A watcher further behind than the log
//! re-arms every topic and the caller rescans them all. A change that landed meanwhile is
//! seen by that look (or rescan), which reads each topic's state as it is now.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
    /// Topics were created, deleted or reopened, too many to name: rescan them all.
    Roster,
    /// These topics were created, deleted or reopened (each named once): look at each.
    Topics(Vec<String>),
    /// One frontier of one topic moved.
    Topic(Kind, Arc<Topic>),
}

/// A fired watch, to arm again: its kind, topic, receiver and the topic's disarming token.
type Fired = (Kind, Arc<Topic>, watch::Receiver<u64>, CancellationToken);
type Armed = Pin<Box<dyn Future<Output = Option<Fired>> + Send>>;

/// The watches of every topic of a registry.
pub struct TopicWatches {
    topics: Arc<Topics>,
    kinds: Vec<Kind>,
    roster: watch::Receiver<u64>,
    /// The roster version the armed watches reflect.
    seen: u64,
    armed: FuturesUnordered<Armed>,
    /// Per topic name, the token that disarms its watches (it was deleted or reopened).
    tokens: HashMap<String, CancellationToken>,
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
            seen: 0,
            armed: FuturesUnordered::new(),
            tokens: HashMap::new(),
        };
        w.arm_all();
        w
    }

    /// Disarms every watch and arms every topic listed now.
    fn arm_all(&mut self) {
        self.seen = *self.roster.borrow_and_update();
        self.armed = FuturesUnordered::new();
        for token in self.tokens.values() {
            token.cancel();
        }
        self.tokens.clear();
        for topic in self.topics.list() {
            self.arm_topic(topic);
        }
    }

    /// Disarms the watches of `name` and arms those of the topic it names now, if any.
    fn rearm(&mut self, name: &str) {
        if let Some(token) = self.tokens.remove(name) {
            token.cancel();
        }
        if let Some(topic) = self.topics.get(name) {
            self.arm_topic(topic);
        }
    }

    fn arm_topic(&mut self, topic: Arc<Topic>) {
        let token = CancellationToken::new();
        for &kind in &self.kinds {
            let rx = match kind {
                Kind::Durable => topic.log().watch_durable(),
                Kind::Written => topic.log().watch_written(),
                Kind::Visible => topic.watch_visible(),
                Kind::First => topic.watch_first_offset(),
            };
            self.armed
                .push(arm(kind, Arc::clone(&topic), rx, token.clone()));
        }
        self.tokens.insert(topic.name().to_string(), token);
    }

    /// The roster version the watches reflect: every topic created, deleted or reopened up
    /// to it was handed out by [`TopicWatches::next`] (or listed when they were armed).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Re-arms what the roster changed since the last look.
    fn roster_changed(&mut self) -> Change {
        self.roster.mark_unchanged();
        let Some((names, seen)) = self.topics.roster_since(self.seen) else {
            self.arm_all();
            return Change::Roster;
        };
        self.seen = seen;
        let mut named = std::collections::HashSet::new();
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| named.insert(n.clone()))
            .collect();
        for name in &names {
            self.rearm(name);
        }
        Change::Topics(names)
    }

    /// The next change. After [`Change::Roster`] every topic is armed again; after
    /// [`Change::Topics`], those topics.
    pub async fn next(&mut self) -> Change {
        loop {
            tokio::select! {
                changed = self.roster.changed() => {
                    if changed.is_err() {
                        // The registry is gone: nothing will change any more.
                        std::future::pending::<()>().await;
                    }
                    match self.roster_changed() {
                        Change::Topics(names) if names.is_empty() => continue,
                        change => return change,
                    }
                }
                Some(fired) = self.armed.next(), if !self.armed.is_empty() => {
                    if let Some((kind, topic, rx, token)) = fired {
                        self.armed.push(arm(kind, Arc::clone(&topic), rx, token));
                        return Change::Topic(kind, topic);
                    }
                    // That topic was disarmed, or its sender is gone (the topic was
                    // closed): the roster change that follows looks at it.
                }
            }
        }
    }
}

fn arm(
    kind: Kind,
    topic: Arc<Topic>,
    mut rx: watch::Receiver<u64>,
    token: CancellationToken,
) -> Armed {
    Box::pin(async move {
        tokio::select! {
            biased;
            _ = token.cancelled() => None,
            changed = rx.changed() => {
                changed.ok()?;
                Some((kind, topic, rx, token))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::metrics::Metrics;
    use crate::broker::topics::ROSTER_LOG;
    use crate::wal::{LogConfig, NewFrame};

    fn topics(dir: &std::path::Path) -> Arc<Topics> {
        let metrics = Arc::new(Metrics::new(100));
        Arc::new(Topics::open(dir, LogConfig::default(), true, metrics).unwrap())
    }

    async fn next(w: &mut TopicWatches) -> Change {
        tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("no change within 10 s")
    }

    async fn append(t: &Topic) {
        let frame = NewFrame {
            seq_no: 0,
            timestamp: 0,
            key: bytes::Bytes::new(),
            payload: bytes::Bytes::from_static(b"x"),
        };
        t.log().append_async(vec![frame]).await.unwrap();
    }

    #[tokio::test]
    async fn the_roster_log_names_each_change_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let topics = topics(dir.path());
        // Version 1 before any change (no follower's answer, 0 at first, holds it).
        assert_eq!(topics.roster_version(), 1);
        assert_eq!(topics.roster_since(1), Some((vec![], 1)));
        topics.create("a", 0, 0).await.unwrap();
        topics.create("b", 0, 0).await.unwrap();
        topics.delete("a").await.unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(topics.roster_since(1), Some((names(&["a", "b", "a"]), 4)));
        assert_eq!(topics.roster_since(3), Some((names(&["a"]), 4)));
        assert_eq!(topics.roster_since(4), Some((vec![], 4)));
        assert_eq!(topics.roster_version(), 4);
    }

    #[tokio::test]
    async fn a_created_topic_is_armed_alone_and_a_deleted_one_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        let topics = topics(dir.path());
        let a = topics.create("a", 0, 0).await.unwrap().0;
        let mut w = TopicWatches::new(Arc::clone(&topics), &[Kind::Durable]);
        assert_eq!(w.armed.len(), 1);
        let b = topics.create("b", 0, 0).await.unwrap().0;
        match next(&mut w).await {
            Change::Topics(names) => assert_eq!(names, vec!["b".to_string()]),
            other => panic!("expected b created, got {other:?}"),
        }
        // Only b was armed: a's watch is the one armed at the start.
        assert_eq!(w.armed.len(), 2);
        append(&b).await;
        match next(&mut w).await {
            Change::Topic(Kind::Durable, t) => assert_eq!(t.name(), "b"),
            other => panic!("expected b's durable end, got {other:?}"),
        }
        // A deleted topic's watch is disarmed; a re-created one is armed again (once).
        topics.delete("a").await.unwrap();
        drop(a);
        let a = topics.create("a", 0, 0).await.unwrap().0;
        match next(&mut w).await {
            Change::Topics(names) => assert_eq!(names, vec!["a".to_string()]),
            other => panic!("expected a deleted and re-created, got {other:?}"),
        }
        append(&a).await;
        match next(&mut w).await {
            Change::Topic(Kind::Durable, t) => {
                assert_eq!(t.name(), "a");
                assert_eq!(t.meta().epoch, a.meta().epoch, "the new a, not the old");
            }
            other => panic!("expected a's durable end, got {other:?}"),
        }
        // The old a's watch is gone from the set once polled: one per topic remains.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), w.next())
                .await
                .is_err(),
            "nothing else changed"
        );
        assert_eq!(w.armed.len(), 2);
    }

    #[tokio::test]
    async fn a_watcher_further_behind_than_the_log_rescans_everything() {
        let dir = tempfile::tempdir().unwrap();
        let topics = topics(dir.path());
        let mut w = TopicWatches::new(Arc::clone(&topics), &[Kind::Durable, Kind::Visible]);
        for i in 0..ROSTER_LOG + 1 {
            topics.create(&format!("t{i}"), 0, 0).await.unwrap();
        }
        match next(&mut w).await {
            Change::Roster => {}
            other => panic!("expected a full rescan, got {other:?}"),
        }
        assert_eq!(w.armed.len(), 2 * (ROSTER_LOG + 1));
        let last = topics.get(&format!("t{ROSTER_LOG}")).unwrap();
        append(&last).await;
        match next(&mut w).await {
            Change::Topic(Kind::Durable, t) => assert_eq!(t.name(), last.name()),
            other => panic!("expected the last topic's durable end, got {other:?}"),
        }
    }
}
