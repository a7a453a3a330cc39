//! The follower's side of replication: one `Follow` stream to the leader, applied in order.
//!
//! The follower reports every topic it holds (epoch, durable end, term history); the leader
//! answers deletions and cuts, then the topics it holds, then records and commit points.
//! Records are checked (CRC, lengths) and appended byte for byte through the same log
//! ([`Log::submit_copied`](crate::wal::Log::submit_copied)); once durable the follower
//! reports its new end. Up to four appends are queued at once, so the next batch is
//! written as soon as the one before is synced (the committer takes every queued one into
//! its next sync); anything but a commit point waits until every queued append landed.
//! Topic announcements that arrive together (a new leader announces every topic) are
//! applied together, their term histories made durable with one `syncfs`
//! ([`Topics::set_terms_many`]): with 2,000 topics that took a follower 1.2 s one by one.
//! A topic's frames become visible here up to the smaller of the leader's commit point and
//! this node's durable end. The leader's retention decisions are
//! applied to the copy by maintenance ([`Topic::set_leader_retention`](crate::broker::topics::Topic::set_leader_retention)); a copy that ends
//! before the leader's oldest retained frame starts again there ([`Topics::restart_copy`]).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use tracing::info;

use super::leader::{
    from_wire_key, from_wire_removals, from_wire_terms, max_message_bytes, wire_terms,
};
use super::replication_proto as rp;
use super::replication_proto::leader_update::Update;
use crate::broker::error::Error;
use crate::broker::topics::{TopicMeta, Topics};
use crate::wal::format::MAX_KEY_LEN;
use crate::wal::removed_keys;
use crate::wal::{Copied, FirstAck};

/// Why a `Follow` stream ended.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The leader refused or broke the stream.
    #[error("leader: {0}")]
    Leader(#[from] Status),
    /// This node could not apply an update (its storage, or a damaged record).
    #[error("follower: {0}")]
    Local(#[from] Error),
    /// The leader sent something the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Follows the leader of `term` over `channel` as node `node_id`, copying every topic into
/// `topics`, until the stream ends; `token`: the admin token presented when the cluster
/// runs with auth. Returns `Ok` when the leader ended it; the caller decides whom to follow
/// next.
pub async fn follow(
    topics: Arc<Topics>,
    channel: Channel,
    node_id: &str,
    term: u64,
    token: Option<&str>,
) -> Result<(), FollowError> {
    let (reports, rx) = mpsc::channel(16);
    let positions = topics
        .list()
        .iter()
        .map(|t| rp::ReplicaPosition {
            topic: t.name().to_string(),
            epoch: t.meta().epoch,
            next_offset: t.log().durable_offset(),
            terms: wire_terms(&t.terms()),
        })
        .collect();
    let first = rp::FollowerReport {
        term,
        node_id: node_id.to_string(),
        positions,
        takes_runs: true,
        max_record_bytes: topics.log_config().request_room(),
        takes_roster: true,
        roster: 0,
        takes_keys: true,
    };
    // The channel has room: this is its first message.
    let _ = reports.try_send(first);
    let limit = max_message_bytes(topics.log_config());
    let mut client = rp::replication_client::ReplicationClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(t) = token {
        let value = format!("Bearer {t}")
            .parse()
            .map_err(|_| FollowError::Protocol("the node token is not a valid header".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut updates = client.follow(request).await?.into_inner();
    info!(node_id, term, "following");
    let mut apply = Apply {
        topics,
        node_id: node_id.to_string(),
        term,
        reports,
        commits: HashMap::new(),
        ends: HashMap::new(),
        keys: HashMap::new(),
    };
    // Appends queued and not yet durable, oldest first: the next batch is queued while the
    // one before syncs, and each is reported once durable, in order.
    let mut pending = Pending::default();
    let applied = apply_updates(&mut updates, &mut apply, &mut pending, term).await;
    // Whatever was queued lands before this returns, however the stream ended: the next
    // stream starts from this node's durable ends, which must not move under it.
    pending.settle().await;
    applied?;
    info!(node_id, term, "the leader ended the stream");
    Ok(())
}

/// Applies the leader's updates in order until the stream ends. The stream is read on
/// this task (no hand-over to another): records that arrived while this node synced are
/// taken together into one append, so one fsync serves all of them (group commit).
async fn apply_updates(
    updates: &mut Streaming<rp::LeaderUpdate>,
    apply: &mut Apply,
    pending: &mut Pending,
    term: u64,
) -> Result<(), FollowError> {
    let mut next: Option<rp::LeaderUpdate> = None;
    loop {
        let u = match next.take() {
            Some(u) => u,
            // `Streaming::message` is cancel-safe: what it has read stays in the stream.
            None => tokio::select! {
                biased;
                done = pending.next_durable(), if !pending.is_empty() => {
                    apply.durable(&done?).await?;
                    continue;
                }
                u = updates.message(), if pending.has_room() => match u? {
                    Some(u) => u,
                    None => break,
                },
            },
        };
        check_term(&u, term)?;
        match u.update {
            Some(Update::Records(r)) => {
                // Records of the same topic already received join this append.
                let mut records = received_records(&r)?;
                let mut bytes: usize = records.iter().map(|c| c.encoded_len()).sum();
                let end = if bytes < MERGE_BYTES {
                    take_received(updates, &mut next, |more| match more.update {
                        Some(Update::Records(m))
                            if more.term == term && m.topic == r.topic && m.epoch == r.epoch =>
                        {
                            let m = received_records(&m)?;
                            bytes += m.iter().map(|c| c.encoded_len()).sum::<usize>();
                            records.extend(m);
                            Ok(Taken::Took {
                                full: bytes >= MERGE_BYTES,
                            })
                        }
                        update => Ok(Taken::Refused(rp::LeaderUpdate {
                            term: more.term,
                            update,
                        })),
                    })?
                } else {
                    StreamEnd::Open
                };
                pending.push(r.topic.clone(), apply.submit(&r.topic, r.epoch, records)?);
                match end {
                    StreamEnd::Open => {}
                    StreamEnd::Failed(status) => {
                        pending.drain(apply).await?;
                        return Err(status.into());
                    }
                    StreamEnd::Ended => break,
                }
            }
            // A new leader announces every topic at once: the announcements already here
            // are applied together, their term histories made durable with one sync.
            Some(Update::Topic(t)) => {
                pending.drain(apply).await?;
                let mut names = HashSet::from([t.name.clone()]);
                let mut batch = vec![t];
                // The leader follows each announcement with the topic's commit point:
                // those of topics in the batch apply once it is held.
                let mut commits = Vec::new();
                let end = take_received(updates, &mut next, |more| match more.update {
                    Some(Update::Topic(t)) if more.term == term && !names.contains(&t.name) => {
                        names.insert(t.name.clone());
                        batch.push(t);
                        Ok(Taken::Took {
                            full: batch.len() >= MAX_TOPICS_AT_ONCE,
                        })
                    }
                    Some(Update::Commit(c)) if more.term == term && names.contains(&c.topic) => {
                        commits.push(Update::Commit(c));
                        Ok(Taken::Took { full: false })
                    }
                    // The keys of a topic announced next: kept until it is. Keys of a
                    // topic already in the batch are for a later decision: they end it.
                    Some(Update::Keys(k)) if more.term == term && !names.contains(&k.topic) => {
                        apply.received_keys(k)?;
                        Ok(Taken::Took { full: false })
                    }
                    update => Ok(Taken::Refused(rp::LeaderUpdate {
                        term: more.term,
                        update,
                    })),
                })?;
                apply.announced(batch).await?;
                for c in commits {
                    apply.update(c).await?;
                }
                match end {
                    StreamEnd::Open => {}
                    StreamEnd::Failed(status) => return Err(status.into()),
                    StreamEnd::Ended => return Ok(()),
                }
            }
            // A commit point needs nothing queued to land first: only what is durable
            // here becomes visible. Nor does a roster mark: creations and deletions are
            // applied (durably) as they come, records do not make one.
            Some(update @ (Update::Commit(_) | Update::Roster(_))) => apply.update(update).await?,
            // Kept for the announcement or retention decision that follows.
            Some(Update::Keys(k)) => apply.received_keys(k)?,
            Some(update) => {
                // Whatever is queued lands before anything else changes.
                pending.drain(apply).await?;
                apply.update(update).await?
            }
            None => return Err(FollowError::Protocol("an empty update".into())),
        }
    }
    pending.drain(apply).await?;
    Ok(())
}

/// What `take_received`'s caller did with an update.
enum Taken {
    /// Taken; `full`: take no more.
    Took { full: bool },
    /// Not for this batch: it is the next update to apply.
    Refused(rp::LeaderUpdate),
}

/// How the stream stood when `take_received` stopped.
enum StreamEnd {
    /// Still open (nothing more received yet, a refused update, or the batch full).
    Open,
    /// The leader broke it.
    Failed(Status),
    /// The leader ended it.
    Ended,
}

/// Hands the updates already received, without waiting, to `take` until it refuses one
/// (put in `next`, to be applied next) or says the batch is full.
fn take_received(
    updates: &mut Streaming<rp::LeaderUpdate>,
    next: &mut Option<rp::LeaderUpdate>,
    mut take: impl FnMut(rp::LeaderUpdate) -> Result<Taken, FollowError>,
) -> Result<StreamEnd, FollowError> {
    loop {
        match ready(updates) {
            Ready::Update(u) => match take(u)? {
                Taken::Took { full: false } => {}
                Taken::Took { full: true } => return Ok(StreamEnd::Open),
                Taken::Refused(u) => {
                    *next = Some(u);
                    return Ok(StreamEnd::Open);
                }
            },
            Ready::Failed(status) => return Ok(StreamEnd::Failed(status)),
            Ready::Ended => return Ok(StreamEnd::Ended),
            Ready::Nothing => return Ok(StreamEnd::Open),
        }
    }
}

/// What the stream holds right now, without waiting.
enum Ready {
    Update(rp::LeaderUpdate),
    Failed(Status),
    Ended,
    Nothing,
}

fn ready(updates: &mut Streaming<rp::LeaderUpdate>) -> Ready {
    // `Streaming::message` is cancel-safe: a message not yet whole stays in the stream.
    match updates.message().now_or_never() {
        Some(Ok(Some(u))) => Ready::Update(u),
        Some(Ok(None)) => Ready::Ended,
        Some(Err(status)) => Ready::Failed(status),
        None => Ready::Nothing,
    }
}

/// The records of a message, checked (CRC, lengths): one by one or as one run.
fn received_records(r: &rp::ReplicaRecords) -> Result<Vec<Copied>, FollowError> {
    if !r.run.is_empty() && !r.records.is_empty() {
        return Err(FollowError::Protocol(
            "records sent both one by one and as a run".into(),
        ));
    }
    let copied = if r.run.is_empty() {
        r.records.iter().map(Copied::decode).collect()
    } else {
        Copied::decode_run(&r.run)
    };
    Ok(copied.map_err(Error::from)?)
}

/// Appends queued at most before the follower waits for the oldest to be durable.
const MAX_PENDING: usize = 4;

type Durable = Pin<Box<dyn Future<Output = crate::wal::Result<()>> + Send>>;

/// Appends queued on this node's logs and not yet durable, oldest first, with their topic.
#[derive(Default)]
struct Pending(VecDeque<(String, Durable)>);

impl Pending {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn has_room(&self) -> bool {
        self.0.len() < MAX_PENDING
    }

    fn push(
        &mut self,
        topic: String,
        durable: impl Future<Output = crate::wal::Result<()>> + Send + 'static,
    ) {
        self.0.push_back((topic, Box::pin(durable)));
    }

    /// Waits until the oldest append is durable; its topic. Cancel-safe: the append stays
    /// queued until it is.
    async fn next_durable(&mut self) -> Result<String, FollowError> {
        let Some((_, durable)) = self.0.front_mut() else {
            return std::future::pending().await;
        };
        let result = durable.as_mut().await;
        let (topic, _) = self
            .0
            .pop_front()
            .ok_or_else(|| FollowError::Protocol("an append vanished from the queue".into()))?;
        result.map_err(Error::from)?;
        Ok(topic)
    }

    /// Waits for every queued append, whatever its outcome, reporting none.
    async fn settle(&mut self) {
        while let Some((_, durable)) = self.0.pop_front() {
            let _ = durable.await;
        }
    }

    /// Waits for every queued append, reporting each.
    async fn drain(&mut self, apply: &mut Apply) -> Result<(), FollowError> {
        while !self.is_empty() {
            let topic = self.next_durable().await?;
            apply.durable(&topic).await?;
        }
        Ok(())
    }
}

/// Bytes of records appended at once at most (several messages merged).
const MERGE_BYTES: usize = 8 << 20;
/// Topic announcements applied at once at most.
const MAX_TOPICS_AT_ONCE: usize = 4096;

fn topic_meta(t: &rp::ReplicaTopic) -> TopicMeta {
    TopicMeta {
        epoch: t.epoch,
        retention_max_age_seconds: t.retention_max_age_seconds,
        retention_max_bytes: t.retention_max_bytes,
    }
}

fn check_term(u: &rp::LeaderUpdate, term: u64) -> Result<(), FollowError> {
    if u.term != term {
        return Err(FollowError::Protocol(format!(
            "an update of term {} on a stream of term {term}",
            u.term
        )));
    }
    Ok(())
}

/// The follower's state on one stream.
struct Apply {
    topics: Arc<Topics>,
    node_id: String,
    term: u64,
    reports: mpsc::Sender<rp::FollowerReport>,
    /// The leader's commit point per topic, as last sent.
    commits: HashMap<String, u64>,
    /// The leader's durable end per topic when it announced it on this stream.
    ends: HashMap<String, u64>,
    /// Keys of removed frames received for a topic (of the epoch given), kept (on disk,
    /// [`Topics::receive_keys`]) until the announcement or retention decision that follows
    /// them: a copy started again takes them, one that holds the frames already has them.
    keys: HashMap<String, (u64, removed_keys::Writer)>,
}

impl Apply {
    /// Applies an update other than records (which `apply_updates` queues).
    async fn update(&mut self, update: Update) -> Result<(), FollowError> {
        match update {
            Update::Topic(t) => self.announced(vec![t]).await,
            Update::Keys(k) => self.received_keys(k),
            Update::Deleted(name) => {
                self.commits.remove(&name);
                self.ends.remove(&name);
                self.keys.remove(&name);
                if self.topics.get(&name).is_some() {
                    info!(topic = %name, "deleting a copy the leader does not hold");
                    match self.topics.delete(&name).await {
                        Ok(()) | Err(Error::TopicNotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
            Update::Cut(c) => {
                self.topics.cut_and_reopen(&c.topic, c.offset).await?;
                self.settle_doubt(&c.topic).await?;
                self.report(&c.topic).await
            }
            // Records are queued by `apply_updates` (`Apply::submit`), never applied here.
            Update::Records(r) => Err(FollowError::Protocol(format!(
                "records of topic '{}' reached the one-by-one path",
                r.topic
            ))),
            Update::Commit(c) => {
                self.commits.insert(c.topic.clone(), c.offset);
                self.make_visible(&c.topic);
                self.settle_doubt(&c.topic).await
            }
            // Every creation and deletion sent before it was applied, each durable before
            // the next update was read: the leader may acknowledge them.
            Update::Roster(version) => self.send_report(Vec::new(), version).await,
            Update::Retention(r) => {
                let Some(t) = self
                    .topics
                    .get(&r.topic)
                    .filter(|t| t.meta().epoch == r.epoch)
                else {
                    return Err(FollowError::Protocol(format!(
                        "retention of topic '{}' epoch {} before the topic",
                        r.topic, r.epoch
                    )));
                };
                let meta = *t.meta();
                let key = r.removed_max_key.as_ref().map(from_wire_key);
                let passes = (&r.removals[..], r.removed_max_key.as_ref());
                self.retain(&r.topic, meta, r.first_offset, key, passes)
                    .await
            }
        }
    }

    /// Keeps keys of removed frames the leader sent until the decision they precede (a
    /// copy started again takes them). Keys of another epoch than those kept are the
    /// newer topic's: the older ones go. Their file is written as they come, unsynced (at
    /// most one message, 1 MiB, to the page cache); the copy that takes them syncs it.
    fn received_keys(&mut self, k: rp::ReplicaKeys) -> Result<(), FollowError> {
        if self.keys.get(&k.topic).is_some_and(|(e, _)| *e != k.epoch) {
            self.keys.remove(&k.topic);
        }
        let entry = match self.keys.entry(k.topic) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let file = self.topics.receive_keys(v.key(), k.epoch)?;
                v.insert((k.epoch, file))
            }
        };
        for key in k.keys {
            if key.key.is_empty() || key.key.len() > MAX_KEY_LEN {
                return Err(FollowError::Protocol(format!(
                    "a removed frame's key of {} bytes",
                    key.key.len()
                )));
            }
            let ack = FirstAck {
                offset: key.offset,
                timestamp: key.timestamp,
                stored_at: key.stored_at,
            };
            entry.1.push(&key.key, &ack).map_err(Error::from)?;
        }
        Ok(())
    }

    /// Applies the leader's retention decision to this copy: frames below `first` go at
    /// the next maintenance pass; a copy that ends before `first` starts again there
    /// (retention removed every frame it lacks) and reports its new end.
    async fn retain(
        &mut self,
        name: &str,
        meta: TopicMeta,
        first: u64,
        removed_max_key: Option<crate::index::OrderKey>,
        passes: (&[rp::RemovalPass], Option<&rp::OrderKey>),
    ) -> Result<(), FollowError> {
        // The keys sent for this decision: a copy that holds the frames has them already.
        let keys = self
            .keys
            .remove(name)
            .filter(|(epoch, _)| *epoch == meta.epoch)
            .map(|(_, keys)| keys);
        let Some(t) = self.topics.get(name) else {
            return Ok(());
        };
        if t.log().durable_offset() < first {
            info!(topic = %name, first_offset = first, end = t.log().durable_offset(), keys = keys.as_ref().map_or(0, |k| k.len()), "the leader's retention removed the frames this copy lacks: starting it again at the oldest retained offset");
            self.topics
                .restart_copy(
                    name,
                    meta,
                    first,
                    from_wire_removals(passes.0, passes.1, first),
                    keys,
                )
                .await?;
            self.make_visible(name);
            return self.report(name).await;
        }
        t.set_leader_retention(first, removed_max_key);
        Ok(())
    }

    /// Holds the leader's topics: each created with its epoch and settings (a copy of
    /// another epoch deleted first), its term history copied (all of them made durable
    /// with one sync), the leader's retention applied.
    async fn announced(&mut self, batch: Vec<rp::ReplicaTopic>) -> Result<(), FollowError> {
        let mut histories = Vec::with_capacity(batch.len());
        for t in &batch {
            let meta = topic_meta(t);
            if let Some(old) = self.topics.get(&t.name) {
                if *old.meta() != meta {
                    info!(topic = %t.name, old_epoch = old.meta().epoch, epoch = t.epoch, "replacing a copy of another epoch");
                    self.commits.remove(&t.name);
                    self.topics.delete(&t.name).await?;
                }
            }
            let (_, created) = self.topics.create_copy(&t.name, meta).await?;
            match t.leader_end {
                Some(end) => self.ends.insert(t.name.clone(), end),
                None => self.ends.remove(&t.name),
            };
            if created {
                info!(topic = %t.name, epoch = t.epoch, "copying a new topic");
            }
            let terms =
                from_wire_terms(&t.terms).map_err(|e| FollowError::Protocol(e.to_string()))?;
            histories.push((t.name.clone(), terms));
        }
        self.topics.set_terms_many(histories).await?;
        for t in batch {
            let key = t.removed_max_key.as_ref().map(from_wire_key);
            let passes = (&t.removals[..], t.removed_max_key.as_ref());
            self.retain(&t.name, topic_meta(&t), t.first_offset, key, passes)
                .await?;
            self.settle_doubt(&t.name).await?;
        }
        Ok(())
    }

    /// Queues records of `name` (epoch `epoch`), checked, on its log; the future resolves
    /// once they are durable (then [`Apply::durable`]).
    fn submit(
        &self,
        name: &str,
        epoch: u64,
        records: Vec<Copied>,
    ) -> Result<impl Future<Output = crate::wal::Result<()>> + Send + 'static, FollowError> {
        let topic = self
            .topics
            .get(name)
            .filter(|t| t.meta().epoch == epoch)
            .ok_or_else(|| {
                FollowError::Protocol(format!(
                    "records of topic '{name}' epoch {epoch} before the topic"
                ))
            })?;
        Ok(topic.log().submit_copied(records).map_err(Error::from)?)
    }

    /// Records of `name` became durable here: what the commit point allows becomes
    /// visible, and the leader hears the new end.
    async fn durable(&mut self, name: &str) -> Result<(), FollowError> {
        self.make_visible(name);
        self.settle_doubt(name).await?;
        self.report(name).await
    }

    /// A copy in doubt ([`crate::broker::doubt`]) that holds what the leader held when it
    /// announced the topic on this stream (every frame acknowledged before: the leader was
    /// in sync) and its commit point holds every acknowledged frame: its doubt is settled.
    /// Not the commit point alone: a new leader's may still be this copy's own end.
    async fn settle_doubt(&self, name: &str) -> Result<(), FollowError> {
        let (Some(t), Some(&end)) = (self.topics.get(name), self.ends.get(name)) else {
            return Ok(());
        };
        let commit = self.commits.get(name).copied().unwrap_or(0);
        if t.doubt().is_some() && t.log().durable_offset() >= end.max(commit) {
            self.topics.settle_doubt(name).await?;
        }
        Ok(())
    }

    /// Tells the leader how far this node holds `topic` durably.
    async fn report(&self, name: &str) -> Result<(), FollowError> {
        let Some(t) = self.topics.get(name) else {
            return Ok(());
        };
        let position = rp::ReplicaPosition {
            topic: name.to_string(),
            epoch: t.meta().epoch,
            next_offset: t.log().durable_offset(),
            terms: Vec::new(),
        };
        self.send_report(vec![position], 0).await
    }

    /// Sends the leader `positions` and the roster mark `roster` held (0: none).
    async fn send_report(
        &self,
        positions: Vec<rp::ReplicaPosition>,
        roster: u64,
    ) -> Result<(), FollowError> {
        let report = rp::FollowerReport {
            term: self.term,
            node_id: self.node_id.clone(),
            positions,
            takes_runs: true,
            // Said in the first report only.
            max_record_bytes: 0,
            takes_roster: true,
            roster,
            // Said in the first report only.
            takes_keys: false,
        };
        self.reports
            .send(report)
            .await
            .map_err(|_| FollowError::Protocol("the report stream closed".into()))
    }

    /// Frames of `name` below the leader's commit point and durable here become visible.
    fn make_visible(&self, name: &str) {
        if let (Some(t), Some(&commit)) = (self.topics.get(name), self.commits.get(name)) {
            t.advance_commit(commit.min(t.log().durable_offset()));
        }
    }
}
