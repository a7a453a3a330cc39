//! Broadcast: one frame to many topics, named or matched by patterns. The whole request is
//! checked — every name, the payload, the permission on every topic, that each topic
//! exists or may be created — before anything is written; then each topic gets the frame,
//! and the ack waits until every one is durable. The idempotency key is stored with each
//! topic's frame, so a retry of a broadcast that failed part way appends only what is
//! missing and answers the rest as duplicates.

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;

use super::core::{frame_bytes, may_publish, topic_name, Broker};
use super::error::{Error, Result};
use super::pattern::TopicPattern;
use super::principal::Principal;
use super::topics::Cause;
use crate::proto;
use crate::wal::{self, NewFrame};

/// The most topics one broadcast may reach, and the most entries (names and patterns) it
/// may list.
pub const MAX_TOPICS: usize = 10_000;

/// The most distinct patterns one broadcast may list: each is matched against every topic
/// of the server, on the caller's thread.
pub const MAX_PATTERNS: usize = 100;

impl Broker {
    /// Appends the frame to every topic `r` names or matches; answers once all are durable.
    pub async fn broadcast(
        &self,
        who: &Principal,
        r: proto::BroadcastRequest,
    ) -> Result<proto::BroadcastAck> {
        let received = Instant::now();
        let checked = self.check_broadcast(who, r);
        let (topics, frame) = self.counted(checked)?;
        // Every topic's request is queued before any ack is awaited: the appends run in
        // parallel, each topic's log committing on its own.
        // One share of the publish budget for every topic: the payload is one allocation.
        let budget = self.take_publish_budget(frame_bytes(&frame)).await;
        let budget = self.counted(budget)?;
        let mut pending = Vec::with_capacity(topics.len());
        for name in &topics {
            let queued = self
                .submit_at(
                    name,
                    vec![frame.clone()],
                    Cause::Publish,
                    received,
                    budget.clone(),
                )
                .await;
            pending.push(self.counted(queued)?);
        }
        let mut acks = Vec::with_capacity(topics.len());
        for (name, p) in topics.into_iter().zip(pending) {
            let ack = self
                .acks(p)
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| Error::Wal(wal::Error::Unavailable("no ack".into())))?;
            acks.push(proto::TopicAck {
                topic: name,
                ack: Some(ack),
            });
        }
        Ok(proto::BroadcastAck { acks })
    }

    /// The topics a broadcast reaches, in name order, and its frame; nothing is touched.
    fn check_broadcast(
        &self,
        who: &Principal,
        r: proto::BroadcastRequest,
    ) -> Result<(Vec<String>, NewFrame)> {
        self.check_running()?;
        if r.topics.is_empty() {
            return Err(Error::InvalidArgument(
                "a broadcast names at least one topic or pattern".into(),
            ));
        }
        if r.topics.len() > MAX_TOPICS {
            return Err(Error::InvalidArgument(format!(
                "a broadcast lists at most {MAX_TOPICS} topics and patterns, not {}",
                r.topics.len()
            )));
        }
        let too_many =
            || Error::InvalidArgument(format!("a broadcast reaches at most {MAX_TOPICS} topics"));
        let mut topics = BTreeSet::new();
        // Each distinct pattern once; all of them matched in one pass over the topics.
        let mut patterns = std::collections::HashMap::new();
        for (i, t) in r.topics.iter().enumerate() {
            if t.contains(['*', '>']) {
                if !patterns.contains_key(t.as_str()) {
                    let pattern = TopicPattern::parse(t)
                        .map_err(|e| Error::InvalidArgument(format!("topics[{i}]: {e}")))?;
                    patterns.insert(t.as_str(), pattern);
                    if patterns.len() > MAX_PATTERNS {
                        return Err(Error::InvalidArgument(format!(
                            "a broadcast lists at most {MAX_PATTERNS} distinct patterns"
                        )));
                    }
                }
            } else {
                let name = topic_name(t)
                    .map_err(|e| Error::InvalidArgument(format!("topics[{i}]: {e}")))?;
                // Permission before existence: NOT_FOUND would tell a caller who may not
                // publish there that the topic exists.
                may_publish(who, &name)?;
                if !self.topics().auto_create() && self.topics().get(&name).is_none() {
                    return Err(Error::TopicNotFound(name));
                }
                topics.insert(name);
            }
        }
        if !patterns.is_empty() {
            // Only topics the caller may see (as ListTopics shows them): one hidden from it
            // is not reached, so a broadcast's answer tells nothing of it.
            for topic in self.topics().list().iter() {
                let name = topic.name();
                if patterns.values().any(|p| p.matches(name)) && who.may_see(name) {
                    topics.insert(name.to_string());
                    if topics.len() > MAX_TOPICS {
                        return Err(too_many());
                    }
                }
            }
        }
        for name in &topics {
            may_publish(who, name)?;
        }
        self.cluster_view().check_writable()?;
        self.payload_fits(r.payload.len() as u64)?;
        let mut frame = NewFrame {
            seq_no: r.seq_no,
            timestamp: r.timestamp,
            key: Bytes::from(r.idempotency_key.into_bytes()),
            payload: r.payload,
        };
        // One timestamp for every topic: a receive time assigned here, not per log.
        wal::check_frames(
            self.topics().log_config(),
            std::slice::from_mut(&mut frame),
            wal::now_ns(),
        )?;
        Ok((topics.into_iter().collect(), frame))
    }
}
