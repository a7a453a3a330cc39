//! The gRPC door: translates the `Broadcast` service's calls into [`Broker`] calls and
//! the answers back. It holds no rule of its own; only the pipelining of a publish stream
//! (read ahead, batch, answer in order) is its own, being a matter of the protocol.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, instrument};

use super::status::status;
use crate::broker::metrics::Transport;
use crate::broker::principal::Principal;
use crate::broker::shutdown::Shutdown;
use crate::broker::subscription::until;
use crate::broker::{Broker, Cause, Error, Pending};
use crate::proto::{self, broadcast_server::Broadcast, EPOCH_HEADER, SNAPSHOT_OFFSET_HEADER};
use crate::wal::NewFrame;
use tokio_util::task::TaskTracker;

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
    broker: Broker,
    tasks: TaskTracker,
}

impl BroadcastService {
    /// The gRPC door onto `broker`; the tasks it spawns (publish stream readers) go to
    /// `tasks`, so shutdown can wait for them.
    pub fn new(broker: Broker, tasks: TaskTracker) -> Self {
        BroadcastService { broker, tasks }
    }

    /// Who is calling: the broker checks the `authorization` metadata.
    fn caller<T>(&self, req: &Request<T>) -> std::result::Result<Arc<Principal>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        self.broker.authenticate(header).map_err(status)
    }
}

type AckStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<proto::PublishAck, Status>> + Send>,
>;

/// One entry of a publish stream's pipeline, in request order.
enum Pipelined {
    /// `n` frames queued in the log as one request, holding their share of the stream's
    /// read-ahead budget until their acks are taken.
    Batch(Pending, usize, OwnedSemaphorePermit),
    Fail(Status),
}

/// What `frame` counts against a publish stream's read-ahead budget.
fn frame_cost(frame: &NewFrame) -> usize {
    frame.payload.len() + frame.key.len() + FRAME_OVERHEAD_BYTES
}

/// The bytes `frame`'s record takes in a segment.
fn encoded_size(frame: &NewFrame) -> u64 {
    crate::wal::record::encoded_len(frame.key.len(), frame.payload.len()) as u64
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
    /// Encoded record bytes of `frames`: a request is written whole into one segment.
    encoded: u64,
    /// Sum of [`frame_cost`] of `frames`.
    cost: usize,
    first_index: u64,
}

impl PendingBatch {
    /// True when `frame` for `topic` may join this batch, whose encoded records must stay
    /// within `room` (one segment's).
    fn fits(&self, topic: &str, frame: &NewFrame, room: u64) -> bool {
        self.frames.is_empty()
            || (self.topic == topic
                && self.bytes + frame.payload.len() <= PUBLISH_BATCH_BYTES
                && self.encoded + encoded_size(frame) <= room)
    }

    fn push(&mut self, topic: String, frame: NewFrame, index: u64) {
        if self.frames.is_empty() {
            self.topic = topic;
            self.first_index = index;
            self.bytes = 0;
            self.encoded = 0;
            self.cost = 0;
        }
        self.bytes += frame.payload.len();
        self.encoded += encoded_size(&frame);
        self.cost += frame_cost(&frame);
        self.frames.push(frame);
    }

    /// Takes the batch's share of the read-ahead budget, queues it in its topic's log and
    /// hands its receiver to the writer. False when the stream must end (a failure was
    /// sent, the writer is gone, or shutdown came while waiting for the budget).
    async fn flush(
        &mut self,
        broker: &Broker,
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
        match broker
            .submit(&self.topic, frames, Cause::PublishStream)
            .await
        {
            Ok(pending) => tx.send(Pipelined::Batch(pending, n, permit)).await.is_ok(),
            Err(e) => {
                let _ = tx
                    .send(Pipelined::Fail(at_index(self.first_index, e)))
                    .await;
                false
            }
        }
    }
}

/// Ends a publish stream whose request `index` tonic could not decode (over the decoding
/// limit, not protobuf, not its compression) with `INVALID_ARGUMENT` naming it, counted as
/// a refusal; a stream broken otherwise (the client went away) just ends.
async fn refuse_undecodable(broker: &Broker, tx: &mpsc::Sender<Pipelined>, index: u64, s: &Status) {
    match super::status::undecodable(s, broker.max_frame_bytes()) {
        Some(e) => {
            let e = broker.reject(e);
            let _ = tx.send(Pipelined::Fail(at_index(index, e))).await;
        }
        None => debug!(status = %s, "publish stream broken"),
    }
}

/// A refusal of the request at `index` of a publish stream, as the client sees it.
fn at_index(index: u64, e: Error) -> Status {
    let status = status(e);
    // The metadata goes along: a follower's refusal carries the leader's address.
    Status::with_metadata(
        status.code(),
        format!("request {index}: {}", status.message()),
        status.metadata().clone(),
    )
}

#[tonic::async_trait]
impl Broadcast for BroadcastService {
    #[instrument(level = "debug", skip_all, fields(topic = %req.get_ref().topic, seq_no = req.get_ref().seq_no))]
    async fn publish(
        &self,
        req: Request<proto::PublishRequest>,
    ) -> std::result::Result<Response<proto::PublishAck>, Status> {
        let who = self.caller(&req)?;
        let ack = self
            .broker
            .publish(&who, req.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(ack))
    }

    type PublishStreamStream = AckStream;

    async fn publish_stream(
        &self,
        req: Request<Streaming<proto::PublishRequest>>,
    ) -> std::result::Result<Response<AckStream>, Status> {
        self.broker.check_running().map_err(status)?;
        let mut gate = self.broker.publish_gate(self.caller(&req)?);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Pipelined>(PUBLISH_PIPELINE);
        let broker = self.broker.clone();
        let mut shutdown = self.broker.shutdown().clone();
        let budget = Arc::new(Semaphore::new(PUBLISH_READ_AHEAD_BYTES));
        // Reader: validates each request and queues it in the log; the order of `tx` is the
        // ack order. Requests that have already arrived are taken together (up to
        // PUBLISH_BATCH_FRAMES / PUBLISH_BATCH_BYTES) and consecutive ones for the same topic
        // go to the log as one request: one queue push and one committer wake-up per batch,
        // not per frame. Each batch first takes its bytes from the stream's read-ahead
        // budget (PUBLISH_READ_AHEAD_BYTES), given back when the writer takes its acks: a
        // publisher faster than the log waits here, and HTTP/2 flow control holds the rest
        // on the client. The task is tracked, so shutdown waits for it.
        let expires = gate.expires();
        self.tasks.spawn(async move {
            let mut index: u64 = 0;
            loop {
                let next = tokio::select! {
                    n = inbound.next() => n,
                    _ = shutdown.wait() => {
                        let _ = tx.send(Pipelined::Fail(status(Error::ShuttingDown))).await;
                        return;
                    }
                    // An idle stream ends when its token expires, as a busy one would at its
                    // next frame.
                    () = until(expires) => {
                        let _ = tx.send(Pipelined::Fail(status(Error::TokenExpired))).await;
                        return;
                    }
                };
                let first = match next {
                    None => return,
                    Some(Err(status)) => {
                        refuse_undecodable(&broker, &tx, index, &status).await;
                        return;
                    }
                    Some(Ok(r)) => r,
                };
                let mut arrived_bytes = first.payload.len();
                let mut arrived = vec![first];
                let mut ended = false;
                // A message that could not be decoded after those that arrived: they are
                // stored and acknowledged first, then the stream ends refusing it.
                let mut broken = None;
                while arrived.len() < PUBLISH_BATCH_FRAMES && arrived_bytes < PUBLISH_BATCH_BYTES {
                    match inbound.next().now_or_never() {
                        Some(Some(Ok(r))) => {
                            arrived_bytes += r.payload.len();
                            arrived.push(r);
                        }
                        Some(Some(Err(status))) => {
                            broken = Some(status);
                            ended = true;
                            break;
                        }
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                let mut batch = PendingBatch::default();
                let room = broker.request_room();
                for r in arrived {
                    let (name, frame) = match gate.check(r) {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = batch.flush(&broker, &tx, &budget, &mut shutdown).await;
                            let _ = tx.send(Pipelined::Fail(at_index(index, e))).await;
                            return;
                        }
                    };
                    if !batch.fits(&name, &frame, room)
                        && !batch.flush(&broker, &tx, &budget, &mut shutdown).await
                    {
                        return;
                    }
                    batch.push(name, frame, index);
                    index += 1;
                }
                if !batch.flush(&broker, &tx, &budget, &mut shutdown).await {
                    return;
                }
                if let Some(status) = broken {
                    refuse_undecodable(&broker, &tx, index, &status).await;
                }
                if ended {
                    return;
                }
            }
        });
        // Writer: answers in request order; the first failure ends the stream.
        let broker = self.broker.clone();
        let acks = futures::stream::unfold(
            (rx, VecDeque::new(), false),
            move |(mut rx, mut ready, done)| {
                let broker = broker.clone();
                async move {
                    loop {
                        if let Some(item) = ready.pop_front() {
                            return Some((item, (rx, ready, done)));
                        }
                        if done {
                            return None;
                        }
                        match rx.recv().await? {
                            // The permit goes back to the budget once the acks are taken.
                            Pipelined::Batch(pending, n, _permit) => {
                                match broker.acks(pending).await {
                                    Ok(acks) if acks.len() == n => {
                                        ready.extend(acks.into_iter().map(Ok))
                                    }
                                    Ok(_) => {
                                        ready
                                            .push_back(Err(Status::internal("ack count mismatch")));
                                        return ready
                                            .pop_front()
                                            .map(|i| (i, (rx, VecDeque::new(), true)));
                                    }
                                    Err(e) => return Some((Err(status(e)), (rx, ready, true))),
                                }
                            }
                            Pipelined::Fail(failed) => {
                                return Some((Err(failed), (rx, ready, true)))
                            }
                        }
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
        let who = self.caller(&req)?;
        let opened = self
            .broker
            .subscribe(&who, req.get_ref(), transport(&req))
            .await
            .map_err(status)?;
        let frames = opened.subscription.into_stream().map(|r| r.map_err(status));
        let mut resp = Response::new(Box::pin(frames) as FrameStream);
        let md = resp.metadata_mut();
        md.insert(
            SNAPSHOT_OFFSET_HEADER,
            MetadataValue::from(opened.snapshot_offset),
        );
        md.insert(EPOCH_HEADER, MetadataValue::from(opened.epoch));
        Ok(resp)
    }

    async fn create_topic(
        &self,
        req: Request<proto::CreateTopicRequest>,
    ) -> std::result::Result<Response<proto::TopicInfo>, Status> {
        let who = self.caller(&req)?;
        let info = self
            .broker
            .create_topic(&who, req.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(info))
    }

    async fn delete_topic(
        &self,
        req: Request<proto::DeleteTopicRequest>,
    ) -> std::result::Result<Response<proto::DeleteTopicResponse>, Status> {
        let who = self.caller(&req)?;
        self.broker
            .delete_topic(&who, &req.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        req: Request<proto::ListTopicsRequest>,
    ) -> std::result::Result<Response<proto::ListTopicsResponse>, Status> {
        let who = self.caller(&req)?;
        let topics = self.broker.list_topics(&who).map_err(status)?;
        Ok(Response::new(proto::ListTopicsResponse { topics }))
    }

    async fn history(
        &self,
        req: Request<proto::HistoryRequest>,
    ) -> std::result::Result<Response<proto::HistoryPage>, Status> {
        let who = self.caller(&req)?;
        let page = self
            .broker
            .history(&who, req.get_ref(), prost::Message::encoded_len)
            .await
            .map_err(status)?;
        // The page's room goes with the answer's body (`held_pages`), until it is written.
        let mut answer = Response::new(page.page);
        answer.extensions_mut().insert(page.room);
        Ok(answer)
    }

    async fn broadcast(
        &self,
        req: Request<proto::BroadcastRequest>,
    ) -> std::result::Result<Response<proto::BroadcastAck>, Status> {
        let who = self.caller(&req)?;
        let ack = self
            .broker
            .broadcast(&who, req.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(ack))
    }

    async fn cluster(
        &self,
        req: Request<proto::ClusterRequest>,
    ) -> std::result::Result<Response<proto::ClusterInfo>, Status> {
        let who = self.caller(&req)?;
        let info = self.broker.cluster(&who).map_err(status)?;
        Ok(Response::new(info))
    }

    type WatchClusterStream = ClusterEventStream;

    async fn watch_cluster(
        &self,
        req: Request<proto::ClusterRequest>,
    ) -> std::result::Result<Response<ClusterEventStream>, Status> {
        let who = self.caller(&req)?;
        let events = self.broker.watch_cluster(who).map_err(status)?;
        Ok(Response::new(Box::pin(events.map(|r| r.map_err(status)))))
    }
}

/// Marks a request that came in as gRPC-Web (its content type said so) before the
/// translation to gRPC: set by the server's outermost layer, read by [`transport`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrpcWebCall;

/// The door a gRPC request came through: gRPC-Web when the server marked it
/// [`GrpcWebCall`].
fn transport<T>(req: &Request<T>) -> Transport {
    if req.extensions().get::<GrpcWebCall>().is_some() {
        Transport::GrpcWeb
    } else {
        Transport::Grpc
    }
}

/// A subscription as tonic sends it.
pub type FrameStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<proto::Frame, Status>> + Send>,
>;

/// A WatchCluster stream as tonic sends it.
pub type ClusterEventStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<proto::ClusterEvent, Status>> + Send>,
>;
