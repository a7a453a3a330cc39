//! [`Publisher`]: pipelined publishing over `PublishStream`, with never-duplicate retries.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::error::{from_status, transient, unsent, Error, Result};
use super::handle::{Ack, Client};
use super::nodes::leader_hint;
use crate::proto;

impl Client {
    /// A pipelined publisher over `PublishStream` for `topic`: many frames in flight, acks in
    /// order, the same never-duplicate retries.
    pub fn publisher(&self, topic: &str) -> Publisher {
        Publisher::start(self.clone(), topic.to_string(), AtRefusal::GoOn)
    }

    /// Like [`Client::publisher`], for a sequence that must stay whole: the first frame the
    /// server refuses (too large, not permitted, …) ends the publisher. That frame's ack is
    /// the refusal, every frame sent after it fails with [`Error::NotSent`] (the server
    /// stores nothing past a refused request of a stream, and nothing is sent again), and
    /// later sends fail with that refusal (also when it ended an idle stream: a token that
    /// expired, say). What was acknowledged before it stands. A frame that had gone out on
    /// an earlier stream, which broke before its ack, may be stored already: when the
    /// stream opened again is refused, it fails with [`Error::FateUnknown`] (stored or not,
    /// never twice), the refused one among them, not with the refusal or `NotSent`.
    pub fn publisher_until_refused(&self, topic: &str) -> Publisher {
        Publisher::start(self.clone(), topic.to_string(), AtRefusal::Stop)
    }
}

/// Frames in flight (sent, not yet acked) per publisher.
const WINDOW: usize = 1024;

/// Bytes of frames a publisher holds, queued and in flight, before a send waits: frames
/// are counted in bytes as well as in number, so large frames cannot pile up a window's
/// worth each (1,024 frames of 4 MiB). A frame larger than this waits until it is alone.
const HELD_BYTES: usize = 64 << 20;

/// What one queued frame counts against [`HELD_BYTES`]: its payload and a little more.
fn held_cost(payload: usize) -> u32 {
    u32::try_from(payload.saturating_add(64).min(HELD_BYTES)).unwrap_or(u32::MAX)
}

/// What a publisher does after the server refuses one of its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtRefusal {
    /// The refused frame fails; the ones behind it are sent again on a new stream.
    GoOn,
    /// The refused frame fails, the ones behind it are not sent, and the publisher ends.
    Stop,
}

struct Job {
    req: proto::PublishRequest,
    reply: oneshot::Sender<Result<Ack>>,
    /// The frame's share of [`HELD_BYTES`], given back when the job is done.
    _held: tokio::sync::OwnedSemaphorePermit,
    /// The frame went out on a stream that broke before its ack (see [`broke`]): it may be
    /// stored, so a refusal on a later stream does not say it is not.
    maybe_stored: bool,
}

impl Job {
    /// What this frame fails with when a stream is refused for good with `refusal` (the
    /// frame took the refusal, or was sent behind it): the refusal or `otherwise` when no
    /// stream it went out on may have stored it (the server stores nothing at or past a
    /// refused request); an unknown fate when one that broke before its ack may have
    /// (stored once at most: its key goes with it).
    fn refused(&self, refusal: &Error, otherwise: &Error) -> Error {
        if !self.maybe_stored {
            return otherwise.clone();
        }
        Error::FateUnknown {
            refusal: refusal.to_string(),
        }
    }
}

/// The stream every unacknowledged frame went out on broke (`why`) before their acks: each
/// may be stored now. Not so when the attempt surely wrote nothing: refused by a follower
/// naming the leader, or never connected.
fn broke(inflight: &mut VecDeque<Job>, why: &tonic::Status) {
    if leader_hint(why).is_some() || unsent(why) {
        return;
    }
    for j in inflight.iter_mut() {
        j.maybe_stored = true;
    }
}

/// A pipelined publisher for one topic. Frames are sent without waiting for earlier acks;
/// acks come back in order. If the connection breaks, every unacknowledged frame is sent
/// again on a new stream with its original idempotency key, so none is stored twice: on the
/// next of the client's addresses, or at once on the leader when a follower refused the
/// stream naming it (see [`Client`]).
///
/// ```no_run
/// # async fn demo() -> framecast::client::Result<()> {
/// let client = framecast::client::Client::connect("localhost:7070")?;
/// let publisher = client.publisher("prices");
/// let mut pending = Vec::new();
/// for seq_no in 0..1000u64 {
///     pending.push(publisher.send(seq_no, format!("tick {seq_no}")).await?);
/// }
/// for ack in pending {
///     ack.await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Publisher {
    jobs: mpsc::Sender<Job>,
    /// Room left of [`HELD_BYTES`].
    held: Arc<tokio::sync::Semaphore>,
    client: Client,
    topic: String,
    /// True once the publisher's task has ended.
    done: tokio::sync::watch::Receiver<bool>,
    /// The refusal that ended a publisher made with [`Client::publisher_until_refused`]:
    /// every later send fails with it, not with a bare "publisher stopped".
    refusal: Arc<OnceLock<Error>>,
}

/// The ack of a frame sent with [`Publisher::send`]; await it.
#[derive(Debug)]
pub struct PendingAck(oneshot::Receiver<Result<Ack>>);

impl Future for PendingAck {
    type Output = Result<Ack>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(stopped())))
    }
}

fn stopped() -> Error {
    Error::Unavailable {
        attempts: 0,
        last: "publisher stopped".into(),
    }
}

impl Publisher {
    fn start(client: Client, topic: String, at_refusal: AtRefusal) -> Publisher {
        let (jobs, rx) = mpsc::channel(WINDOW);
        // The task must not hold the client's coalescer, which may hold this queue.
        let client = client.plain();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let refusal = Arc::new(OnceLock::new());
        let task = run(client.clone(), rx, at_refusal, Arc::clone(&refusal));
        tokio::spawn(async move {
            task.await;
            let _ = done_tx.send(true);
        });
        Publisher {
            jobs,
            held: Arc::new(tokio::sync::Semaphore::new(HELD_BYTES)),
            client,
            topic,
            done,
            refusal,
        }
    }

    /// Room for a frame of `payload` bytes; waits while the publisher holds too much.
    async fn room_for(&self, payload: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.held)
            .acquire_many_owned(held_cost(payload))
            .await
            .ok()
    }

    /// Why a send cannot be queued: the refusal that ended the publisher, if one did.
    fn ended(&self) -> Error {
        self.refusal.get().cloned().unwrap_or_else(stopped)
    }

    /// Stops taking frames and waits (up to a few seconds) until every frame sent was
    /// answered and the stream closed cleanly. Without it, a program that exits right after
    /// its last ack resets the stream under the server. Clones of this publisher keep the
    /// stream open; then this returns after the wait.
    pub async fn close(self) {
        let Publisher { jobs, mut done, .. } = self;
        drop(jobs);
        let _ = tokio::time::timeout(CLOSE_WAIT * 3, done.wait_for(|d| *d)).await;
    }

    /// Queues a frame (timestamp = server time) and returns its pending ack. Waits only when
    /// the pipeline is full.
    pub async fn send(&self, seq_no: u64, payload: impl Into<Bytes>) -> Result<PendingAck> {
        self.send_at(seq_no, 0, payload).await
    }

    /// Queues a frame with an explicit timestamp (ns since the epoch; 0 = server time).
    pub async fn send_at(
        &self,
        seq_no: u64,
        timestamp: i64,
        payload: impl Into<Bytes>,
    ) -> Result<PendingAck> {
        let payload = payload.into();
        // A message the client cannot send would break the stream of every frame behind it.
        super::coalesce::check_payload(payload.len())?;
        let (reply, rx) = oneshot::channel();
        let req = proto::PublishRequest {
            seq_no,
            payload,
            timestamp,
            topic: self.topic.clone(),
            idempotency_key: self.client.next_key(),
        };
        let held = self
            .room_for(req.payload.len())
            .await
            .ok_or_else(|| self.ended())?;
        self.jobs
            .send(Job {
                req,
                reply,
                _held: held,
                maybe_stored: false,
            })
            .await
            .map_err(|_| self.ended())?;
        Ok(PendingAck(rx))
    }

    /// Queues a ready request (its key already made); gives it back if the task is gone.
    pub(crate) async fn submit(
        &self,
        req: proto::PublishRequest,
    ) -> std::result::Result<PendingAck, proto::PublishRequest> {
        let (reply, rx) = oneshot::channel();
        let Some(held) = self.room_for(req.payload.len()).await else {
            return Err(req);
        };
        let job = Job {
            req,
            reply,
            _held: held,
            maybe_stored: false,
        };
        match self.jobs.send(job).await {
            Ok(()) => Ok(PendingAck(rx)),
            Err(e) => Err(e.0.req),
        }
    }

    /// Sends a frame and waits for its ack.
    pub async fn publish(&self, seq_no: u64, payload: impl Into<Bytes>) -> Result<Ack> {
        self.send(seq_no, payload).await?.await
    }
}

/// How long a closing publisher waits for the server to end its ack stream.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Drives one publisher: keeps a stream open, feeds it, matches acks to jobs in order, and
/// on a break re-sends what is unacknowledged on a new stream (on the next node, or on the
/// leader a refusal names).
async fn run(
    client: Client,
    mut jobs: mpsc::Receiver<Job>,
    at_refusal: AtRefusal,
    refusal: Arc<OnceLock<Error>>,
) {
    let mut inflight: VecDeque<Job> = VecDeque::new();
    let mut attempts = client.attempts();
    let mut closed = false;
    loop {
        if closed && inflight.is_empty() {
            return;
        }
        if inflight.is_empty() {
            // Nothing to resend: wait for work before opening a stream.
            match jobs.recv().await {
                Some(j) => inflight.push_back(j),
                None => return,
            }
        }
        let (req_tx, req_rx) = mpsc::channel::<proto::PublishRequest>(WINDOW + 1);
        for j in &inflight {
            let _ = req_tx.try_send(j.req.clone());
        }
        let conn = client.conn();
        let mut grpc = conn.grpc.clone();
        let opening = grpc.publish_stream(ReceiverStream::new(req_rx));
        // A node that answers nothing fails the attempt as a break does: the next address.
        let opened = attempts.bounded(&conn.addr, opening).await;
        // Frames in flight get an ack within the stall limit, or the node counts as failed
        // and they go again (keys and all) to the next address: one timer per stream, moved
        // on only when it fires (an ack just notes the time).
        let answer_within = attempts.stall_limit();
        let mut progress = tokio::time::Instant::now();
        let mut hung = std::pin::pin!(tokio::time::sleep_until(progress + answer_within));
        let mut acks = match opened {
            Ok(r) => r.into_inner(),
            Err(s) if transient(&s) => {
                // A stream that did not open may still have carried the frames (to a node
                // that stopped answering, and may resume).
                broke(&mut inflight, &s);
                if let Some(e) = attempts.failed(client.nodes(), &conn, &s).await {
                    give_up(&mut inflight, &mut jobs, &e);
                    attempts.succeeded();
                }
                continue;
            }
            Err(s) => {
                if refused(&mut inflight, &mut jobs, at_refusal, &refusal, s) {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                job = jobs.recv(), if !closed && inflight.len() < WINDOW => match job {
                    Some(j) => {
                        if inflight.is_empty() {
                            progress = tokio::time::Instant::now();
                        }
                        let _ = req_tx.send(j.req.clone()).await;
                        inflight.push_back(j);
                    }
                    None => {
                        closed = true;
                        if inflight.is_empty() {
                            finish(req_tx, &mut acks).await;
                            return;
                        }
                    }
                },
                () = &mut hung, if !inflight.is_empty() => {
                    let due = progress + answer_within;
                    if tokio::time::Instant::now() < due {
                        hung.as_mut().reset(due);
                        continue;
                    }
                    // The node took the frames and answers none of them (stopped, hung):
                    // it counts as failed, and they go again with their keys (stored once
                    // at most: the dedup window covers the retry) to the next address,
                    // rather than wait on the connection's keepalive.
                    let s = tonic::Status::unavailable("no answer");
                    broke(&mut inflight, &s);
                    if let Some(e) = attempts.stalled(client.nodes(), &conn, answer_within).await {
                        give_up(&mut inflight, &mut jobs, &e);
                        attempts.succeeded();
                    }
                    break;
                }
                msg = acks.message() => match msg {
                    Ok(Some(ack)) => {
                        progress = tokio::time::Instant::now();
                        attempts.succeeded();
                        if let Some(j) = inflight.pop_front() {
                            let _ = j.reply.send(Ok(ack.into()));
                        }
                        if closed && inflight.is_empty() {
                            finish(req_tx, &mut acks).await;
                            return;
                        }
                    }
                    Ok(None) => {
                        // A server ends the acks only after answering every request it
                        // read; frames unacknowledged at a clean end were not answered:
                        // a failure like a break (with backoff), never an instant reopen.
                        if !inflight.is_empty() {
                            let s = tonic::Status::unavailable(format!(
                                "the publish stream ended with {} frames unacknowledged",
                                inflight.len()
                            ));
                            // Unread, if the server is sound: counted as may-be-stored all
                            // the same.
                            broke(&mut inflight, &s);
                            if let Some(e) = attempts.failed(client.nodes(), &conn, &s).await {
                                give_up(&mut inflight, &mut jobs, &e);
                                attempts.succeeded();
                            }
                        }
                        break;
                    }
                    // An idle stream that broke (the node restarted, say) is opened again
                    // when there is something to send: no failure to count or report yet.
                    Err(s) if transient(&s) && inflight.is_empty() => break,
                    Err(s) if transient(&s) => {
                        // A refusal naming the leader wrote nothing of what is unacked;
                        // a break may have: either way every unacked frame goes again
                        // with its key.
                        broke(&mut inflight, &s);
                        if let Some(e) = attempts.failed(client.nodes(), &conn, &s).await {
                            give_up(&mut inflight, &mut jobs, &e);
                            attempts.succeeded();
                        }
                        break;
                    }
                    Err(s) => {
                        if refused(&mut inflight, &mut jobs, at_refusal, &refusal, s) {
                            return;
                        }
                        break;
                    }
                },
            }
        }
    }
}

/// Ends the request stream first and lets the server end the acks (bounded), so the
/// stream closes cleanly instead of being reset under the server's reader.
async fn finish(
    req_tx: mpsc::Sender<proto::PublishRequest>,
    acks: &mut tonic::Streaming<proto::PublishAck>,
) {
    drop(req_tx);
    let _ = tokio::time::timeout(CLOSE_WAIT, acks.message()).await;
}

/// After a stream was refused for good with `status`: the oldest unacknowledged frame took
/// the refusal (acks arrive in order); with [`AtRefusal::Stop`] the publisher ends (true).
/// An idle stream refused (its token expired, say) refuses no frame: the refusal is kept
/// for the next send all the same. A frame that went out on an earlier stream, which broke
/// before its ack, fails as stored-or-not instead (see [`Job::refused`]); one that went
/// out only on streams refused for good (behind an earlier refused frame) was not stored.
fn refused(
    inflight: &mut VecDeque<Job>,
    jobs: &mut mpsc::Receiver<Job>,
    at_refusal: AtRefusal,
    refusal: &OnceLock<Error>,
    status: tonic::Status,
) -> bool {
    let e = from_status(status);
    if at_refusal == AtRefusal::Stop {
        // Closed before any frame is answered: a send made after an answer gets the
        // refusal, never a place in the queue.
        let _ = refusal.set(e.clone());
        jobs.close();
    }
    let took_it = inflight.pop_front();
    let a_frame_took_it = took_it.is_some();
    if let Some(j) = took_it {
        let fate = j.refused(&e, &e);
        let _ = j.reply.send(Err(fate));
    }
    if at_refusal == AtRefusal::Stop {
        not_sent(inflight, jobs, e, a_frame_took_it);
        return true;
    }
    false
}

/// After a refusal that ends the publisher (the queue closed, later sends failing with
/// `refused`): every frame behind the refused one fails, not sent again.
/// When no frame took the refusal (an idle stream refused, its token expired say), the
/// frames waiting fail with the refusal itself: no earlier frame of theirs was refused.
/// A frame that went out on an earlier stream may be stored: it fails as stored-or-not.
fn not_sent(
    inflight: &mut VecDeque<Job>,
    jobs: &mut mpsc::Receiver<Job>,
    refused: Error,
    a_frame_took_it: bool,
) {
    let e = if a_frame_took_it {
        Error::NotSent("an earlier frame of this publisher was refused".into())
    } else {
        refused.clone()
    };
    let maybe_stored = inflight.iter().filter(|j| j.maybe_stored).count();
    tracing::debug!(
        error = %refused,
        a_frame_took_it,
        maybe_stored,
        "publisher ended at a refusal"
    );
    for j in inflight.drain(..) {
        let fate = j.refused(&refused, &e);
        let _ = j.reply.send(Err(fate));
    }
    give_up(inflight, jobs, &e);
}

/// Ends every unacknowledged frame with `e` (the retry budget is spent, or the nodes loop),
/// and every frame queued behind them: they waited through the same outage, and taking
/// them one at a time would give the k-th a budget k times as long.
fn give_up(inflight: &mut VecDeque<Job>, jobs: &mut mpsc::Receiver<Job>, e: &Error) {
    for j in inflight.drain(..) {
        let _ = j.reply.send(Err(e.clone()));
    }
    while let Ok(j) = jobs.try_recv() {
        let _ = j.reply.send(Err(e.clone()));
    }
}
