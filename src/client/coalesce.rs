//! Coalescing: concurrent `Client::publish` calls share a few pipelined streams, a topic's
//! frames always on the same one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

use super::error::{Error, Result};
use super::handle::{Ack, Client};
use super::publisher::Publisher;
use crate::broker::topics::valid_topic_name;
use crate::proto;

/// The longest idempotency key the server accepts (API.md).
const MAX_KEY_BYTES: usize = 128;

/// How many shared streams a client's publishes spread over. A stream carries frames of
/// any topic (each request names its own); a topic's go by one stream, so one caller's
/// publishes keep their order. A fixed number, not one per topic: a stream stays open while
/// the client lives, and a server takes at most `--max-streams-per-connection` (1024) on
/// one connection, so streams per topic stopped an application's publishes at its 1025th
/// topic.
pub(crate) const SHARED_STREAMS: usize = 8;

/// The shared [`Publisher`]s, made on first use and shared by a client's clones. It holds
/// only the publishers' queues; their tasks hold a client without a coalescer, so dropping
/// the last clone of the client ends them once their frames are acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    streams: Mutex<HashMap<usize, Arc<Publisher>>>,
}

/// The shared stream `topic`'s frames go by (`""` is the topic `default`: the same one).
fn shard(topic: &str) -> usize {
    // Fixed keys: the same topic maps to the same stream for the client's whole life.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (if topic.is_empty() { "default" } else { topic }).hash(&mut h);
    (h.finish() % SHARED_STREAMS as u64) as usize
}

impl Coalescer {
    /// Sends `req` over its topic's shared stream and waits for its own ack.
    pub(crate) async fn publish(&self, client: &Client, req: proto::PublishRequest) -> Result<Ack> {
        let at = shard(&req.topic);
        let stream = self.stream(client, at);
        let pending = match stream.submit(req).await {
            Ok(p) => p,
            // The stream's task is gone (the runtime it ran on has ended): start another,
            // unless another caller already did.
            Err(req) => {
                {
                    let mut streams = self.streams.lock();
                    if streams.get(&at).is_some_and(|p| Arc::ptr_eq(p, &stream)) {
                        streams.remove(&at);
                    }
                }
                self.stream(client, at)
                    .submit(req)
                    .await
                    .map_err(|_| stopped())?
            }
        };
        pending.await
    }

    /// The shared publisher `at`, started if there is none. It takes ready requests, each
    /// naming its topic: the publisher's own topic (for `Publisher::send`) is not used.
    fn stream(&self, client: &Client, at: usize) -> Arc<Publisher> {
        let mut streams = self.streams.lock();
        if let Some(p) = streams.get(&at) {
            return Arc::clone(p);
        }
        let p = Arc::new(client.plain().publisher(""));
        streams.insert(at, Arc::clone(&p));
        p
    }
}

fn stopped() -> Error {
    Error::Unavailable {
        attempts: 0,
        last: "shared publish stream stopped".into(),
    }
}

/// The largest payload the client sends: its largest message less room for the other
/// fields. The server's own limit (`--max-frame-bytes`, 4 MiB by default) is lower unless
/// raised; a payload over this one would fail the message locally, ending the stream it
/// shares with other calls (or being retried as if the connection had broken).
pub const MAX_PAYLOAD_BYTES: usize = super::nodes::MAX_MESSAGE_BYTES - (64 << 10);

/// Refuses a payload over [`MAX_PAYLOAD_BYTES`] before it is queued or sent.
pub(crate) fn check_payload(len: usize) -> Result<()> {
    if len > MAX_PAYLOAD_BYTES {
        return Err(Error::InvalidArgument(format!(
            "payload of {len} bytes exceeds the client's largest, {MAX_PAYLOAD_BYTES} bytes \
             (the server's --max-frame-bytes, 4 MiB by default, is lower still)"
        )));
    }
    Ok(())
}

/// Refuses what the client can tell is invalid, as the server would (API.md's error
/// table), so that it never ends a shared stream. The payload size limit is the server's
/// own setting and is left to it (the client's own, [`check_payload`], is checked for
/// every publish).
pub(crate) fn validate(req: &proto::PublishRequest) -> Result<()> {
    if !req.topic.is_empty() && !valid_topic_name(&req.topic) {
        return Err(Error::InvalidArgument(format!(
            "topic name '{}' does not match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}",
            req.topic
        )));
    }
    if req.timestamp < 0 {
        return Err(Error::InvalidArgument(format!(
            "negative timestamp {}",
            req.timestamp
        )));
    }
    if req.idempotency_key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "idempotency key longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(topic: &str, timestamp: i64) -> proto::PublishRequest {
        proto::PublishRequest {
            seq_no: 1,
            payload: "x".into(),
            timestamp,
            topic: topic.into(),
            idempotency_key: "k".into(),
        }
    }

    #[test]
    fn a_topic_always_takes_the_same_shared_stream() {
        let used: std::collections::HashSet<usize> =
            (0..1000).map(|i| shard(&format!("topic-{i}"))).collect();
        assert_eq!(
            used.len(),
            SHARED_STREAMS,
            "1000 topics spread over every stream"
        );
        assert_eq!(shard("prices"), shard("prices"));
        assert_eq!(shard(""), shard("default"), "\"\" is the topic default");
    }

    #[test]
    fn refuses_what_the_server_would() {
        assert!(validate(&req("", 0)).is_ok());
        assert!(validate(&req("prices.eu-1", 5)).is_ok());
        assert!(matches!(
            validate(&req(".bad", 0)),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            validate(&req("ok", -1)),
            Err(Error::InvalidArgument(_))
        ));
        let mut long = req("ok", 0);
        long.idempotency_key = "k".repeat(129);
        assert!(matches!(validate(&long), Err(Error::InvalidArgument(_))));
    }
}
