//! Coalescing: concurrent `Client::publish` calls share one pipelined stream per topic.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::error::{Error, Result};
use super::handle::{Ack, Client};
use super::publisher::Publisher;
use crate::broker::topics::valid_topic_name;
use crate::proto;

/// The longest idempotency key the server accepts (API.md).
const MAX_KEY_BYTES: usize = 128;

/// One shared [`Publisher`] per topic, made on first use and shared by a client's clones.
/// It holds only the publishers' queues; their tasks hold a client without a coalescer, so
/// dropping the last clone of the client ends them once their frames are acknowledged.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    streams: Mutex<HashMap<String, Arc<Publisher>>>,
}

impl Coalescer {
    /// Sends `req` over the topic's shared stream and waits for its own ack.
    pub(crate) async fn publish(&self, client: &Client, req: proto::PublishRequest) -> Result<Ack> {
        let topic = req.topic.clone();
        let pending = match self.stream(client, &topic).submit(req).await {
            Ok(p) => p,
            // The stream's task is gone (the runtime it ran on has ended): start another.
            Err(req) => {
                self.streams.lock().remove(&topic);
                self.stream(client, &topic)
                    .submit(req)
                    .await
                    .map_err(|_| stopped())?
            }
        };
        pending.await
    }

    /// The shared publisher of `topic`, started if there is none.
    fn stream(&self, client: &Client, topic: &str) -> Arc<Publisher> {
        let mut streams = self.streams.lock();
        if let Some(p) = streams.get(topic) {
            return Arc::clone(p);
        }
        let p = Arc::new(client.plain().publisher(topic));
        streams.insert(topic.to_string(), Arc::clone(&p));
        p
    }
}

fn stopped() -> Error {
    Error::Unavailable {
        attempts: 0,
        last: "shared publish stream stopped".into(),
    }
}

/// Refuses what the client can tell is invalid, as the server would (API.md's error
/// table), so that it never ends a shared stream. The payload size limit is the server's
/// own setting and is left to it.
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
