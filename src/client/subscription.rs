//! A subscription that survives disconnects: it reconnects with backoff and resumes with
//! the cursor, so what it yields is exactly one unbroken subscription.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use super::error::{from_status, reason, transient, Error, Result};
use super::handle::Client;
use super::retry::Backoff;
use crate::proto::{self, EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};

impl Client {
    /// Subscribes to `topic` from `replay_seq_no_start`: the history in order-key order, then
    /// live frames. The stream survives disconnects and server restarts, resuming exactly.
    pub fn subscribe(&self, topic: &str, replay_seq_no_start: u64) -> Subscription {
        Subscription::new(self.clone(), topic.to_string(), replay_seq_no_start)
    }
}

/// A delivered frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// The payload.
    pub payload: Bytes,
    /// Stored timestamp (ns since the Unix epoch).
    pub timestamp: i64,
    /// Offset in the topic.
    pub offset: u64,
    /// False for history (offset below the snapshot point), true for live frames.
    pub live: bool,
}

/// Where the subscription stands, for an exact resume.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    snapshot: u64,
    epoch: u64,
    /// `(seq_no, timestamp, offset)` of the last frame yielded.
    last: Option<(u64, i64, u64)>,
}

struct State {
    client: Client,
    topic: String,
    start: u64,
    position: Option<Position>,
    stream: Option<tonic::Streaming<proto::Frame>>,
    backoff: Backoff,
    done: bool,
}

/// A stream of [`Frame`]s. Ends with an error for `OUT_OF_RANGE` (frames removed by
/// retention), a changed epoch (topic re-created) or a deleted topic: never a silent gap.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Result<Frame>> + Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

impl Subscription {
    fn new(client: Client, topic: String, start: u64) -> Subscription {
        let backoff = client.backoff();
        let state = State {
            client,
            topic,
            start,
            position: None,
            stream: None,
            backoff,
            done: false,
        };
        let inner = futures::stream::unfold(state, |mut s| async move {
            let item = s.next().await?;
            if item.is_err() {
                s.done = true;
            }
            Some((item, s))
        });
        Subscription {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Frame>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl State {
    async fn next(&mut self) -> Option<Result<Frame>> {
        loop {
            if self.done {
                return None;
            }
            if self.stream.is_none() {
                match self.open().await {
                    Ok(()) => {}
                    Err(Some(e)) => return Some(Err(e)),
                    Err(None) => continue,
                }
            }
            let stream = self.stream.as_mut()?;
            match stream.message().await {
                Ok(Some(f)) => {
                    self.backoff.reset();
                    let pos = self.position.get_or_insert_with(Position::default);
                    pos.last = Some((f.seq_no, f.timestamp, f.offset));
                    let live = f.offset >= pos.snapshot;
                    return Some(Ok(Frame {
                        seq_no: f.seq_no,
                        payload: f.payload,
                        timestamp: f.timestamp,
                        offset: f.offset,
                        live,
                    }));
                }
                Ok(None) => {
                    // The server never ends a subscription cleanly; treat it as a break.
                    self.stream = None;
                    if let Some(e) = self.pause("stream ended").await {
                        return Some(Err(e));
                    }
                }
                Err(s) if transient(&s) => {
                    self.stream = None;
                    if let Some(e) = self.pause(&reason(&s)).await {
                        return Some(Err(e));
                    }
                }
                Err(s) => return Some(Err(from_status(s))),
            }
        }
    }

    /// Opens (or re-opens with the cursor) the server stream. `Err(None)`: try again.
    async fn open(&mut self) -> std::result::Result<(), Option<Error>> {
        let resume = self.position.map(|p| {
            let (seq_no, timestamp, offset) = p.last.unwrap_or((0, 0, 0));
            proto::Cursor {
                snapshot_offset: p.snapshot,
                seq_no,
                timestamp,
                offset,
                epoch: p.epoch,
            }
        });
        let req = proto::SubscribeRequest {
            replay_seq_no_start: self.start,
            topic: self.topic.clone(),
            resume,
        };
        match self.client.grpc.clone().subscribe(req).await {
            Ok(resp) => {
                let md = resp.metadata();
                let num = |k: &str| {
                    md.get(k)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<u64>().ok())
                };
                if self.position.is_none() {
                    let (Some(snapshot), Some(epoch)) =
                        (num(SNAPSHOT_OFFSET_HEADER), num(EPOCH_HEADER))
                    else {
                        return Err(Some(Error::Server {
                            code: tonic::Code::Internal,
                            message: "subscription without snapshot metadata".into(),
                        }));
                    };
                    self.position = Some(Position {
                        snapshot,
                        epoch,
                        last: None,
                    });
                }
                self.stream = Some(resp.into_inner());
                Ok(())
            }
            Err(s) if transient(&s) => Err(self.pause(&reason(&s)).await),
            Err(s) => Err(Some(from_status(s))),
        }
    }

    /// Backs off before reconnecting; an error when the retry budget is spent.
    async fn pause(&mut self, why: &str) -> Option<Error> {
        tracing::debug!(topic = %self.topic, reason = why, "subscription broken; resuming");
        if self.backoff.wait(why).await {
            None
        } else {
            Some(Error::Unavailable {
                attempts: self.backoff.attempts,
                last: why.to_string(),
            })
        }
    }
}
