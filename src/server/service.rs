//! The gRPC service: validation, then the log, then the answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};

use super::config::ServerConfig;
use super::error::{Error, Result};
use super::shutdown::Shutdown;
use super::subscription::{FrameStream, GlobalSlot, StartAt, Subscription};
use super::tasks::TaskTracker;
use super::topics::{valid_topic_name, Cause, Topic, Topics};
use crate::index::OrderKey;
use crate::proto::{self, broadcast_server::Broadcast, EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};
use crate::wal::{self, Appended, NewFrame};

/// Log requests (batches) of one publish stream in flight at once.
const PUBLISH_PIPELINE: usize = 1024;
/// Bytes of one publish stream read ahead of their acks: requests read from the stream
/// and queued in the log but not yet written. This, not the batch count, bounds the memory
/// of a publisher: 1024 batches of 1 MiB frames would be 1 GiB.
pub const PUBLISH_READ_AHEAD_BYTES: usize = 16 << 20;
/// What a frame costs beyond its payload and key while it waits (request, frame, index).
const FRAME_OVERHEAD_BYTES: usize = 96;

/// The `Broadcast` service.
#[derive(Debug, Clone)]
pub struct BroadcastService {
    topics: Arc<Topics>,
    config: Arc<ServerConfig>,
    shutdown: Shutdown,
    subscribers: Arc<AtomicUsize>,
    tasks: TaskTracker,
}

impl BroadcastService {
    /// A service over `topics`; the tasks it spawns (publish stream readers) go to `tasks`,
    /// so shutdown can wait for them.
    pub fn new(
        topics: Arc<Topics>,
        config: Arc<ServerConfig>,
        shutdown: Shutdown,
        tasks: TaskTracker,
    ) -> Self {
        BroadcastService {
            topics,
            config,
            shutdown,
            subscribers: Arc::new(AtomicUsize::new(0)),
            tasks,
        }
    }

    fn check_running(&self) -> Result<()> {
        if self.shutdown.is_fired() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Checks a publish request against API.md's error table; nothing is touched yet.
    fn validate(&self, r: proto::PublishRequest) -> Result<(String, NewFrame)> {
        let topic = topic_name(&r.topic)?;
        let mut frame = NewFrame {
            seq_no: r.seq_no,
            timestamp: r.timestamp,
            key: Bytes::from(r.idempotency_key.into_bytes()),
            payload: r.payload,
        };
        wal::check_frames(
            &self.config.log,
            std::slice::from_mut(&mut frame),
            wal::now_ns(),
        )?;
        Ok((topic, frame))
    }

    /// Validates, finds (or creates) the topic, and queues the frame; the receiver gets its ack.
    async fn submit(
        &self,
        r: proto::PublishRequest,
    ) -> Result<(Arc<Topic>, oneshot::Receiver<wal::Result<Vec<Appended>>>)> {
        self.check_running()?;
        let (name, frame) = self.validate(r)?;
        let topic = self.topics.get_or_create(&name, Cause::Publish).await?;
        let rx = topic
            .log()
            .submit(vec![frame])
            .map_err(|e| append_error(&topic, e))?;
        Ok((topic, rx))
    }

    /// Takes a slot of `--max-subscribers`, before anything else is done for a
    /// subscription, so that a refused one creates no topic.
    fn reserve_subscriber(&self) -> Result<GlobalSlot> {
        let max = self.config.max_subscribers;
        if self.subscribers.fetch_add(1, Ordering::AcqRel) >= max {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::TooManySubscribers(max));
        }
        Ok(GlobalSlot(Arc::clone(&self.subscribers)))
    }

    /// The topic of a subscription. A resume cursor names an epoch of an existing topic,
    /// which a topic created now could never match: refused as the epoch check would,
    /// without creating the topic (nothing is written when a request is refused).
    async fn subscription_topic(
        &self,
        name: &str,
        r: &proto::SubscribeRequest,
    ) -> Result<Arc<Topic>> {
        match (self.topics.get(name), &r.resume) {
            (Some(topic), _) => Ok(topic),
            (None, Some(c)) if self.config.auto_create_topics => Err(Error::EpochMismatch {
                topic: name.to_string(),
                cursor: c.epoch,
                // Epochs are never 0: the topic does not exist.
                current: 0,
            }),
            (None, _) => self.topics.get_or_create(name, Cause::Subscribe).await,
        }
    }

    fn open_subscription(
        &self,
        topic: Arc<Topic>,
        r: &proto::SubscribeRequest,
        global: GlobalSlot,
    ) -> Result<(Subscription, u64)> {
        let epoch = topic.meta().epoch;
        let durable = topic.log().durable_offset();
        let at = match &r.resume {
            None => StartAt {
                snapshot: durable,
                start_seq_no: r.replay_seq_no_start,
                after: None,
            },
            Some(c) => {
                if c.epoch != epoch {
                    return Err(Error::EpochMismatch {
                        topic: topic.name().to_string(),
                        cursor: c.epoch,
                        current: epoch,
                    });
                }
                if c.snapshot_offset > durable {
                    return Err(Error::OutOfRange(format!(
                        "cursor snapshot_offset {} is beyond the topic's next offset {durable}",
                        c.snapshot_offset
                    )));
                }
                // A cursor with timestamp 0 names no frame (stored timestamps are never 0):
                // the stream starts again from the beginning of the same snapshot.
                let after = (c.timestamp != 0).then_some(OrderKey {
                    seq_no: c.seq_no,
                    timestamp: c.timestamp,
                    offset: c.offset,
                });
                if let Some(a) = after {
                    if a.offset >= durable {
                        return Err(Error::OutOfRange(format!(
                            "cursor offset {} is beyond the topic's next offset {durable}",
                            a.offset
                        )));
                    }
                }
                StartAt {
                    snapshot: c.snapshot_offset,
                    start_seq_no: r.replay_seq_no_start,
                    after,
                }
            }
        };
        let slots = (topic.add_subscriber(), global);
        let snapshot = at.snapshot;
        Ok((
            Subscription::new(topic, at, self.shutdown.clone(), slots),
            snapshot,
        ))
    }
}

/// Maps an empty topic to `default` and checks the name.
fn topic_name(t: &str) -> Result<String> {
    let name = if t.is_empty() { "default" } else { t };
    if !valid_topic_name(name) {
        return Err(Error::InvalidArgument(format!(
            "topic name '{name}' does not match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}"
        )));
    }
    Ok(name.to_string())
}

/// An append error as the client should see it: a deleted topic is NOT_FOUND.
fn append_error(topic: &Topic, e: wal::Error) -> Error {
    if topic.is_deleted() {
        Error::TopicNotFound(topic.name().to_string())
    } else {
        Error::Wal(e)
    }
}

/// Waits for the acks of a multi-frame log request.
async fn await_acks(
    topic: &Topic,
    rx: oneshot::Receiver<wal::Result<Vec<Appended>>>,
) -> Result<Vec<proto::PublishAck>> {
    let acks = rx
        .await
        .map_err(|_| append_error(topic, wal::Error::Unavailable("log closed".into())))?
        .map_err(|e| append_error(topic, e))?;
    Ok(acks
        .iter()
        .map(|a| proto::PublishAck {
            offset: a.offset,
            timestamp: a.timestamp,
            duplicate: a.duplicate,
        })
        .collect())
}

async fn await_ack(
    topic: &Topic,
    rx: oneshot::Receiver<wal::Result<Vec<Appended>>>,
) -> Result<proto::PublishAck> {
    let acks = rx
        .await
        .map_err(|_| append_error(topic, wal::Error::Unavailable("log closed".into())))?
        .map_err(|e| append_error(topic, e))?;
    let a = acks
        .first()
        .ok_or_else(|| Error::Wal(wal::Error::Unavailable("no ack".into())))?;
    Ok(proto::PublishAck {
        offset: a.offset,
        timestamp: a.timestamp,
        duplicate: a.duplicate,
    })
}

fn topic_info(t: &Topic) -> proto::TopicInfo {
    let s = t.log().stats();
    proto::TopicInfo {
        name: t.name().to_string(),
        epoch: t.meta().epoch,
        frames: s.frames,
        bytes: s.bytes,
        first_offset: s.first_offset,
        next_offset: s.next_offset,
        min_seq_no: s.min_seq_no.unwrap_or(0),
        max_seq_no: s.max_seq_no.unwrap_or(0),
        subscribers: t.subscribers(),
        segments: u32::try_from(s.segments).unwrap_or(u32::MAX),
    }
}

type AckStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<proto::PublishAck, Status>> + Send>,
>;

/// One entry of a publish stream's pipeline, in request order.
enum Pipelined {
    /// `n` frames queued in the log as one request, holding their share of the stream's
    /// read-ahead budget until their acks are taken.
    Batch(
        Arc<Topic>,
        oneshot::Receiver<wal::Result<Vec<Appended>>>,
        usize,
        OwnedSemaphorePermit,
    ),
    Fail(Status),
}

/// What `frame` counts against a publish stream's read-ahead budget.
fn frame_cost(frame: &NewFrame) -> usize {
    frame.payload.len() + frame.key.len() + FRAME_OVERHEAD_BYTES
}

/// Takes `cost` bytes of a stream's read-ahead budget (all of it for a batch larger than
/// the budget), waiting while earlier batches are unacknowledged; `None` at shutdown.
async fn reserve_read_ahead(
    budget: &Arc<Semaphore>,
    cost: usize,
    shutdown: &mut Shutdown,
) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(cost.min(PUBLISH_READ_AHEAD_BYTES)).unwrap_or(u32::MAX);
    tokio::select! {
        permit = Arc::clone(budget).acquire_many_owned(n) => permit.ok(),
        () = shutdown.wait() => None,
    }
}

/// Most frames of one publish stream handed to the log as one request.
const PUBLISH_BATCH_FRAMES: usize = 512;
/// Most payload bytes of one such request (a larger frame goes alone).
const PUBLISH_BATCH_BYTES: usize = 1 << 20;

/// Consecutive validated requests of one stream for one topic, not yet queued.
#[derive(Default)]
struct PendingBatch {
    topic: String,
    frames: Vec<NewFrame>,
    bytes: usize,
    /// Sum of [`frame_cost`] of `frames`.
    cost: usize,
    first_index: u64,
}

impl PendingBatch {
    /// True when `frame` for `topic` may join this batch.
    fn fits(&self, topic: &str, frame: &NewFrame) -> bool {
        self.frames.is_empty()
            || (self.topic == topic && self.bytes + frame.payload.len() <= PUBLISH_BATCH_BYTES)
    }

    fn push(&mut self, topic: String, frame: NewFrame, index: u64) {
        if self.frames.is_empty() {
            self.topic = topic;
            self.first_index = index;
            self.bytes = 0;
            self.cost = 0;
        }
        self.bytes += frame.payload.len();
        self.cost += frame_cost(&frame);
        self.frames.push(frame);
    }

    /// Takes the batch's share of the read-ahead budget, queues it in its topic's log and
    /// hands its receiver to the writer. False when the stream must end (a failure was
    /// sent, the writer is gone, or shutdown came while waiting for the budget).
    async fn flush(
        &mut self,
        svc: &BroadcastService,
        tx: &mpsc::Sender<Pipelined>,
        budget: &Arc<Semaphore>,
        shutdown: &mut Shutdown,
    ) -> bool {
        if self.frames.is_empty() {
            return true;
        }
        let Some(permit) = reserve_read_ahead(budget, self.cost, shutdown).await else {
            let _ = tx
                .send(Pipelined::Fail(at_index(
                    self.first_index,
                    Error::ShuttingDown,
                )))
                .await;
            return false;
        };
        let frames = std::mem::take(&mut self.frames);
        let n = frames.len();
        let queued = match svc
            .topics
            .get_or_create(&self.topic, Cause::PublishStream)
            .await
        {
            Ok(topic) => match topic.log().submit(frames) {
                Ok(rx) => Ok((topic, rx)),
                Err(e) => Err(append_error(&topic, e)),
            },
            Err(e) => Err(e),
        };
        match queued {
            Ok((topic, rx)) => tx
                .send(Pipelined::Batch(topic, rx, n, permit))
                .await
                .is_ok(),
            Err(e) => {
                let _ = tx
                    .send(Pipelined::Fail(at_index(self.first_index, e)))
                    .await;
                false
            }
        }
    }
}

/// A refusal of the request at `index` of a publish stream, as the client sees it.
fn at_index(index: u64, e: Error) -> Status {
    let status = Status::from(e);
    Status::new(
        status.code(),
        format!("request {index}: {}", status.message()),
    )
}

#[tonic::async_trait]
impl Broadcast for BroadcastService {
    #[instrument(level = "debug", skip_all, fields(topic = %req.get_ref().topic, seq_no = req.get_ref().seq_no))]
    async fn publish(
        &self,
        req: Request<proto::PublishRequest>,
    ) -> std::result::Result<Response<proto::PublishAck>, Status> {
        let (topic, rx) = self.submit(req.into_inner()).await?;
        Ok(Response::new(await_ack(&topic, rx).await?))
    }

    type PublishStreamStream = AckStream;

    async fn publish_stream(
        &self,
        req: Request<Streaming<proto::PublishRequest>>,
    ) -> std::result::Result<Response<AckStream>, Status> {
        self.check_running()?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Pipelined>(PUBLISH_PIPELINE);
        let svc = self.clone();
        let mut shutdown = self.shutdown.clone();
        let budget = Arc::new(Semaphore::new(PUBLISH_READ_AHEAD_BYTES));
        // Reader: validates each request and queues it in the log; the order of `tx` is the
        // ack order. Requests that have already arrived are taken together (up to
        // PUBLISH_BATCH_FRAMES / PUBLISH_BATCH_BYTES) and consecutive ones for the same topic
        // go to the log as one request: one queue push and one committer wake-up per batch,
        // not per frame. Each batch first takes its bytes from the stream's read-ahead
        // budget (PUBLISH_READ_AHEAD_BYTES), given back when the writer takes its acks: a
        // publisher faster than the log waits here, and HTTP/2 flow control holds the rest
        // on the client. The task is tracked, so shutdown waits for it.
        self.tasks.spawn(async move {
            let mut index: u64 = 0;
            loop {
                let next = tokio::select! {
                    n = inbound.next() => n,
                    _ = shutdown.wait() => {
                        let _ = tx.send(Pipelined::Fail(Error::ShuttingDown.into())).await;
                        return;
                    }
                };
                let first = match next {
                    None => return,
                    Some(Err(status)) => {
                        debug!(%status, "publish stream broken");
                        return;
                    }
                    Some(Ok(r)) => r,
                };
                let mut arrived_bytes = first.payload.len();
                let mut arrived = vec![first];
                let mut ended = false;
                while arrived.len() < PUBLISH_BATCH_FRAMES && arrived_bytes < PUBLISH_BATCH_BYTES {
                    match inbound.next().now_or_never() {
                        Some(Some(Ok(r))) => {
                            arrived_bytes += r.payload.len();
                            arrived.push(r);
                        }
                        Some(_) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                let mut batch = PendingBatch::default();
                for r in arrived {
                    let checked = svc.check_running().and_then(|()| svc.validate(r));
                    let (name, frame) = match checked {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = batch.flush(&svc, &tx, &budget, &mut shutdown).await;
                            let _ = tx.send(Pipelined::Fail(at_index(index, e))).await;
                            return;
                        }
                    };
                    if !batch.fits(&name, &frame)
                        && !batch.flush(&svc, &tx, &budget, &mut shutdown).await
                    {
                        return;
                    }
                    batch.push(name, frame, index);
                    index += 1;
                }
                if !batch.flush(&svc, &tx, &budget, &mut shutdown).await || ended {
                    return;
                }
            }
        });
        // Writer: answers in request order; the first failure ends the stream.
        let acks = futures::stream::unfold(
            (rx, VecDeque::new(), false),
            |(mut rx, mut ready, done)| async move {
                loop {
                    if let Some(item) = ready.pop_front() {
                        return Some((item, (rx, ready, done)));
                    }
                    if done {
                        return None;
                    }
                    match rx.recv().await? {
                        // The permit goes back to the budget once the acks are taken.
                        Pipelined::Batch(topic, ack, n, _permit) => match await_acks(&topic, ack)
                            .await
                        {
                            Ok(acks) if acks.len() == n => ready.extend(acks.into_iter().map(Ok)),
                            Ok(_) => {
                                ready.push_back(Err(Status::internal("ack count mismatch")));
                                return ready.pop_front().map(|i| (i, (rx, VecDeque::new(), true)));
                            }
                            Err(e) => return Some((Err(Status::from(e)), (rx, ready, true))),
                        },
                        Pipelined::Fail(status) => return Some((Err(status), (rx, ready, true))),
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(acks)))
    }

    type SubscribeStream = FrameStream;

    #[instrument(level = "debug", skip_all, fields(topic = %req.get_ref().topic, start = req.get_ref().replay_seq_no_start))]
    async fn subscribe(
        &self,
        req: Request<proto::SubscribeRequest>,
    ) -> std::result::Result<Response<FrameStream>, Status> {
        self.check_running()?;
        let r = req.into_inner();
        let name = topic_name(&r.topic)?;
        let global = self.reserve_subscriber()?;
        let topic = self.subscription_topic(&name, &r).await?;
        let epoch = topic.meta().epoch;
        let (sub, snapshot) = self.open_subscription(topic, &r, global)?;
        let mut resp = Response::new(sub.into_stream());
        let md = resp.metadata_mut();
        md.insert(SNAPSHOT_OFFSET_HEADER, MetadataValue::from(snapshot));
        md.insert(EPOCH_HEADER, MetadataValue::from(epoch));
        Ok(resp)
    }

    async fn create_topic(
        &self,
        req: Request<proto::CreateTopicRequest>,
    ) -> std::result::Result<Response<proto::TopicInfo>, Status> {
        self.check_running()?;
        let r = req.into_inner();
        let (topic, _) = self
            .topics
            .create(&r.name, r.retention_max_age_seconds, r.retention_max_bytes)
            .await?;
        Ok(Response::new(topic_info(&topic)))
    }

    async fn delete_topic(
        &self,
        req: Request<proto::DeleteTopicRequest>,
    ) -> std::result::Result<Response<proto::DeleteTopicResponse>, Status> {
        self.check_running()?;
        self.topics.delete(&req.into_inner().name).await?;
        Ok(Response::new(proto::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _req: Request<proto::ListTopicsRequest>,
    ) -> std::result::Result<Response<proto::ListTopicsResponse>, Status> {
        let topics = self.topics.list().iter().map(|t| topic_info(t)).collect();
        Ok(Response::new(proto::ListTopicsResponse { topics }))
    }
}
