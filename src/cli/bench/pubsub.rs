//! Publishers and subscribers on one topic: the `publish`, `fanout` and `e2e` scenarios.
//!
//! Subscribers open their streams first, all of them, before the first frame is sent, so
//! every frame of the run is live for every subscriber. Publishers then send on a schedule
//! (or as fast as acks come back), each frame carrying its publisher, counter and intended
//! send time. When the publishers are done, subscribers are told how many frames each
//! publisher had acknowledged and finish once they hold exactly those, or when the drain
//! time runs out; then what is missing is counted.
//!
//! Subscribers receive over gRPC (streams shared by `--connections` HTTP/2 connections) or,
//! for fan-out, over the HTTP door (one Server-Sent Events connection or WebSocket each);
//! publishers always use gRPC. Whatever the transport, each subscriber runs the same loop
//! and the same checks over a [`Source`].

use hdrhistogram::Histogram;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use super::args::{Length, Transport};
use super::conn::{connect, list_topics, Grpc, Windows, Wire};
use super::error::{Error, Result, StreamError};
use super::latency::{Clock, LatencySink, Pacer, Recorder};
use super::payload::{self, Checker, Faults, Filler};
use super::progress::{Counters, Progress, Tally};
use super::web::{SseStream, WebTarget, WsStream};
use framecast::client::Client;
use framecast::proto;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Server address (publishers).
    pub addr: String,
    /// Addresses the gRPC subscribers' connections are spread over (connection i to
    /// address i mod n).
    pub sub_addrs: Vec<String>,
    /// Topic.
    pub topic: String,
    /// Payload bytes per frame.
    pub size: usize,
    /// What fills each payload after its header.
    pub filler: Filler,
    /// Compression, and the counter of bytes on the wire.
    pub wire: Wire,
    /// Publishers.
    pub publishers: usize,
    /// Connections the publishers share.
    pub pub_connections: usize,
    /// PublishStream (true) or unary Publish.
    pub stream: bool,
    /// Frames in flight per stream.
    pub window: usize,
    /// Publishers are tasks sharing one `framecast::client::Client`, which coalesces their
    /// concurrent `publish` calls (instead of the bench's own unary calls or streams).
    pub coalesce: bool,
    /// Total frames/s; 0 = unpaced.
    pub rate: f64,
    /// Idempotency keys on every frame.
    pub keys: bool,
    /// How long, or how many.
    pub length: Length,
    /// Subscribers.
    pub subscribers: usize,
    /// Connections the gRPC subscribers share.
    pub sub_connections: usize,
    /// How subscribers receive.
    pub transport: Transport,
    /// The HTTP door, for SSE and WebSocket subscribers.
    pub http_addr: String,
    /// The token the SSE and WebSocket subscribers send (gRPC calls carry `wire.bearer`).
    pub token: Option<String>,
    /// Show the progress bar.
    pub progress: bool,
}

/// What happened.
#[derive(Debug)]
pub struct Outcome {
    /// Frames acknowledged.
    pub acked: u64,
    /// Seconds from the first frame due to the last ack.
    pub publish_secs: f64,
    /// Frames delivered, all subscribers together (duplicates included).
    pub delivered: u64,
    /// Seconds from the first frame due to the last subscriber done.
    pub deliver_secs: f64,
    /// Publish → ack latency (µs).
    pub ack_latency: Histogram<u64>,
    /// Intended send → delivery latency (µs), all subscribers.
    pub delivery_latency: Histogram<u64>,
    /// Failed calls and broken streams.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Faults seen by subscribers, summed.
    pub faults: Faults,
    /// Subscribers that had not received everything when the drain time ran out.
    pub incomplete: usize,
}

/// Shared by all the tasks of a run.
struct Ctx {
    plan: Plan,
    clock: Clock,
    /// Frames of this run have seq_no >= this; subscribers ask for nothing older.
    seq_base: u64,
    counters: Arc<Counters>,
    errors: parking_lot::Mutex<Vec<String>>,
    /// Subscriptions being opened on the HTTP door at once (each a TCP connection, and an
    /// upgrade for WebSocket), so a thousand do not overflow the server's accept queue.
    opening: Semaphore,
}

impl Ctx {
    fn error(&self, what: String) {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock();
        if e.len() < 5 {
            e.push(what);
        }
    }
}

/// What subscribers are told about the run's progress.
#[derive(Debug, Clone, Default)]
struct Phase {
    /// Frames acknowledged per publisher, once publishing is over.
    expected: Option<Arc<Vec<u64>>>,
    /// Stop now (drain time over).
    stop: bool,
}

struct SubResult {
    checker: Checker,
    done_ns: Option<u64>,
}

struct PubResult {
    acked: u64,
    last_ack_ns: u64,
}

/// Opens `n` connections spread over `addrs`, connection i to address i mod the count.
async fn spread(addrs: &[String], n: usize, windows: Windows, wire: &Wire) -> Result<Vec<Grpc>> {
    let k = addrs.len();
    if k == 0 {
        return Err(Error::Args("no address for the subscribers".into()));
    }
    let mut each = Vec::with_capacity(k);
    for (j, addr) in addrs.iter().enumerate() {
        // Connections j, j + k, j + 2k, … go to address j.
        let count = n / k + usize::from(j < n % k);
        each.push(connect(addr, count, windows, wire).await?.into_iter());
    }
    Ok((0..n)
        .filter_map(|i| each.get_mut(i % k).and_then(Iterator::next))
        .collect())
}

/// How long every node may take to copy the run's new topic.
const TOPIC_EVERYWHERE: Duration = Duration::from_secs(60);

/// Creates the topic on the publishers' node and waits until every subscriber address
/// holds it: a follower creates no topic (it refuses a subscription to a topic it has not
/// copied yet, naming the leader), so subscribers spread over a cluster each open on the
/// node they were given, once it has the topic.
async fn topic_everywhere(leader: &Grpc, plan: &Plan) -> Result<()> {
    let created = leader
        .clone()
        .create_topic(proto::CreateTopicRequest {
            name: plan.topic.clone(),
            ..Default::default()
        })
        .await;
    if let Err(status) = created {
        if status.code() != tonic::Code::AlreadyExists {
            return Err(Error::Rpc {
                what: "CreateTopic",
                status,
            });
        }
    }
    let deadline = tokio::time::Instant::now() + TOPIC_EVERYWHERE;
    for addr in &plan.sub_addrs {
        let mut node = connect(addr, 1, Windows::Default, &plan.wire)
            .await?
            .remove(0);
        loop {
            let listed = list_topics(&mut node).await?;
            if listed.iter().any(|t| t.name == plan.topic) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::NotReady(format!(
                    "{addr} does not hold topic '{}' {} s after it was created on {}",
                    plan.topic,
                    TOPIC_EVERYWHERE.as_secs(),
                    plan.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Runs `plan` and reports.
pub async fn run(plan: Plan) -> Result<Outcome> {
    let ctx = Arc::new(Ctx {
        seq_base: framecast::wal::now_ns().max(1) as u64,
        clock: Clock::new(),
        counters: Arc::new(Counters::default()),
        errors: parking_lot::Mutex::new(Vec::new()),
        opening: Semaphore::new(64),
        plan,
    });
    let plan = &ctx.plan;
    let web = match plan.transport {
        Transport::Grpc => None,
        Transport::Sse | Transport::Ws => Some(Arc::new(WebTarget::new(
            &plan.http_addr,
            plan.token.clone(),
            Arc::clone(&plan.wire.bytes),
        )?)),
    };
    let pub_conns = connect(
        &plan.addr,
        plan.pub_connections.max(1),
        Windows::Default,
        &plan.wire,
    )
    .await?;
    let sub_windows = if plan.subscribers > plan.sub_connections {
        Windows::Many
    } else {
        Windows::Default
    };
    if plan.subscribers > 0 && web.is_none() && plan.sub_addrs.iter().any(|a| *a != plan.addr) {
        topic_everywhere(&pub_conns[0], plan).await?;
    }
    let sub_conns = if plan.subscribers > 0 && web.is_none() {
        spread(
            &plan.sub_addrs,
            plan.sub_connections.max(1),
            sub_windows,
            &plan.wire,
        )
        .await?
    } else {
        Vec::new()
    };

    // Subscribers first; wait until every stream is open.
    let delivery = Recorder::new(plan.sub_connections.clamp(1, 32));
    let (phase_tx, phase_rx) = watch::channel(Phase::default());
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(plan.subscribers.max(1));
    let mut subs = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let door = match (&web, plan.transport) {
            (Some(web), Transport::Ws) => Door::Ws(Arc::clone(web)),
            (Some(web), _) => Door::Sse(Arc::clone(web)),
            (None, _) => Door::Grpc(Box::new(sub_conns[i % sub_conns.len()].clone())),
        };
        let sink = delivery.handle(i);
        subs.push(tokio::spawn(subscriber(
            Arc::clone(&ctx),
            door,
            sink,
            phase_rx.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    let mut opened = 0;
    while let Some(ok) = ready_rx.recv().await {
        opened += usize::from(ok);
    }
    if opened < plan.subscribers {
        ctx.error(format!(
            "{} of {} subscriptions failed to open",
            plan.subscribers - opened,
            plan.subscribers
        ));
    }

    // Publishers.
    let acks = Recorder::new(plan.publishers.clamp(1, 32));
    let origin = ctx.clock.now_ns() + 1_000_000;
    let progress = {
        let length = plan.length.clone();
        let (len, unit_is_count) = match length.count {
            Some(c) => (c, true),
            None => (length.duration.as_millis() as u64, false),
        };
        Progress::start(
            plan.progress,
            "publish",
            len,
            Arc::clone(&ctx.counters),
            move |c, elapsed| {
                if unit_is_count {
                    c.acked.load(Ordering::Relaxed)
                } else {
                    elapsed.as_millis() as u64
                }
            },
        )
    };
    let shared = if plan.coalesce {
        let client = Client::connect(&plan.addr)
            .and_then(|c| c.with_tls(plan.wire.tls.clone()))
            .map_err(|e| Error::Args(e.to_string()))?
            .with_bearer(plan.wire.bearer.clone())
            .with_compression(plan.wire.compression);
        Some(client)
    } else {
        None
    };
    let mut pubs = Vec::with_capacity(plan.publishers);
    for i in 0..plan.publishers {
        let grpc = pub_conns[i % pub_conns.len()].clone();
        let count = plan.length.count.map(|c| {
            let p = plan.publishers as u64;
            c / p + u64::from((i as u64) < c % p)
        });
        let pacer = Pacer::new(plan.rate, plan.publishers, i, origin);
        let sink = acks.handle(i);
        let ctx = Arc::clone(&ctx);
        let shared = shared.clone();
        pubs.push(tokio::spawn(async move {
            if let Some(client) = shared {
                client_publisher(ctx, client, i as u32, pacer, count, origin, sink).await
            } else if ctx.plan.stream {
                stream_publisher(ctx, grpc, i as u32, pacer, count, origin, sink).await
            } else {
                unary_publisher(ctx, grpc, i as u32, pacer, count, origin, sink).await
            }
        }));
    }
    let mut expected = Vec::with_capacity(pubs.len());
    let mut last_ack = origin;
    for p in pubs {
        let r = p.await.unwrap_or(PubResult {
            acked: 0,
            last_ack_ns: origin,
        });
        expected.push(r.acked);
        last_ack = last_ack.max(r.last_ack_ns);
    }
    progress.finish();
    let acked: u64 = expected.iter().sum();
    let expected = Arc::new(expected);

    // Drain: subscribers finish once they hold everything that was acknowledged.
    let _ = phase_tx.send(Phase {
        expected: Some(Arc::clone(&expected)),
        stop: false,
    });
    let drain_end = tokio::time::Instant::now() + plan.length.drain;
    let stopper = {
        let phase_tx = phase_tx.clone();
        let expected = Arc::clone(&expected);
        tokio::spawn(async move {
            tokio::time::sleep_until(drain_end).await;
            let _ = phase_tx.send(Phase {
                expected: Some(expected),
                stop: true,
            });
        })
    };
    let mut faults = Faults::default();
    let mut delivered = 0;
    let mut incomplete = 0;
    let mut last_done = last_ack;
    for s in subs {
        let Ok(mut r) = s.await else {
            incomplete += 1;
            continue;
        };
        delivered += r.checker.received;
        if !r.checker.complete(&expected) {
            incomplete += 1;
        }
        faults.add(&r.checker.finish(&expected));
        last_done = last_done.max(r.done_ns.unwrap_or_else(|| ctx.clock.now_ns()));
    }
    stopper.abort();

    let errors = ctx.counters.errors.load(Ordering::Relaxed);
    let error_samples = ctx.errors.lock().clone();
    Ok(Outcome {
        acked,
        publish_secs: (last_ack.saturating_sub(origin)) as f64 / 1e9,
        delivered,
        deliver_secs: (last_done.saturating_sub(origin)) as f64 / 1e9,
        ack_latency: acks.merged(),
        delivery_latency: delivery.merged(),
        errors,
        error_samples,
        faults,
        incomplete,
    })
}

/// The request for frame `k` of publisher `index`.
fn request(ctx: &Ctx, index: u32, k: u64, intended_ns: u64) -> proto::PublishRequest {
    proto::PublishRequest {
        seq_no: ctx.seq_base + k,
        payload: payload::encode_with(ctx.plan.filler, ctx.plan.size, index, k, intended_ns),
        timestamp: 0,
        topic: ctx.plan.topic.clone(),
        idempotency_key: if ctx.plan.keys {
            format!("{:x}-{index}-{k}", ctx.seq_base)
        } else {
            String::new()
        },
    }
}

/// When frame `k` is due, waiting for it; `None` when the run is over for this publisher.
async fn next_due(
    ctx: &Ctx,
    pacer: &Pacer,
    k: u64,
    count: Option<u64>,
    origin: u64,
) -> Option<Option<u64>> {
    if count.is_some_and(|c| k >= c) {
        return None;
    }
    let end = origin + ctx.plan.length.duration.as_nanos() as u64;
    match pacer.due_ns(k) {
        Some(due) => {
            if count.is_none() && due >= end {
                return None;
            }
            if due > ctx.clock.now_ns() {
                tokio::time::sleep_until(ctx.clock.at(due).into()).await;
            }
            Some(Some(due))
        }
        None => {
            let now = ctx.clock.now_ns();
            if now < origin {
                tokio::time::sleep_until(ctx.clock.at(origin).into()).await;
            } else if count.is_none() && now >= end {
                return None;
            }
            Some(None)
        }
    }
}

/// One unary caller: one request in flight, latency from the frame's due time.
async fn unary_publisher(
    ctx: Arc<Ctx>,
    mut grpc: Grpc,
    index: u32,
    pacer: Pacer,
    count: Option<u64>,
    origin: u64,
    mut sink: LatencySink,
) -> PubResult {
    let mut acked = 0u64;
    let mut tally = Tally::default();
    let mut last_ack_ns = origin;
    let mut k = 0u64;
    while let Some(due) = next_due(&ctx, &pacer, k, count, origin).await {
        let intended = due.unwrap_or_else(|| ctx.clock.now_ns());
        match grpc.publish(request(&ctx, index, k, intended)).await {
            Ok(_) => {
                let now = ctx.clock.now_ns();
                sink.record_ns(now.saturating_sub(intended));
                acked += 1;
                tally.one(&ctx.counters.acked, now);
                last_ack_ns = now;
            }
            Err(s) => {
                ctx.error(format!("publisher {index}, frame {k}: {s}"));
                break;
            }
        }
        k += 1;
    }
    tally.flush(&ctx.counters.acked);
    PubResult { acked, last_ack_ns }
}

/// One task calling `Client::publish` on the run's shared client, one call in flight; the
/// client coalesces the tasks' calls. The client makes every frame's idempotency key.
async fn client_publisher(
    ctx: Arc<Ctx>,
    client: Client,
    index: u32,
    pacer: Pacer,
    count: Option<u64>,
    origin: u64,
    mut sink: LatencySink,
) -> PubResult {
    let mut acked = 0u64;
    let mut tally = Tally::default();
    let mut last_ack_ns = origin;
    let mut k = 0u64;
    while let Some(due) = next_due(&ctx, &pacer, k, count, origin).await {
        let intended = due.unwrap_or_else(|| ctx.clock.now_ns());
        let req = request(&ctx, index, k, intended);
        match client.publish(&req.topic, req.seq_no, req.payload).await {
            Ok(_) => {
                let now = ctx.clock.now_ns();
                sink.record_ns(now.saturating_sub(intended));
                acked += 1;
                tally.one(&ctx.counters.acked, now);
                last_ack_ns = now;
            }
            Err(e) => {
                ctx.error(format!("publisher {index}, frame {k}: {e}"));
                break;
            }
        }
        k += 1;
    }
    tally.flush(&ctx.counters.acked);
    PubResult { acked, last_ack_ns }
}

/// One PublishStream: up to `window` frames in flight; acks come back in order, so the
/// due times of unacknowledged frames wait in a queue of that size, which is the window.
async fn stream_publisher(
    ctx: Arc<Ctx>,
    mut grpc: Grpc,
    index: u32,
    pacer: Pacer,
    count: Option<u64>,
    origin: u64,
    mut sink: LatencySink,
) -> PubResult {
    let window = ctx.plan.window.max(1);
    let (req_tx, req_rx) = mpsc::channel::<proto::PublishRequest>(window);
    let (due_tx, mut due_rx) = mpsc::channel::<u64>(window);
    let mut acks = match grpc.publish_stream(ReceiverStream::new(req_rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            ctx.error(format!("publisher {index}: cannot open PublishStream: {s}"));
            return PubResult {
                acked: 0,
                last_ack_ns: origin,
            };
        }
    };
    let reader = {
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let mut acked = 0u64;
            let mut tally = Tally::default();
            let mut last_ack_ns = origin;
            loop {
                match acks.message().await {
                    Ok(Some(_)) => {
                        let now = ctx.clock.now_ns();
                        let Some(intended) = due_rx.recv().await else {
                            ctx.error(format!("publisher {index}: an ack for a frame never sent"));
                            break;
                        };
                        sink.record_ns(now.saturating_sub(intended));
                        acked += 1;
                        tally.one(&ctx.counters.acked, now);
                        last_ack_ns = now;
                    }
                    Ok(None) => {
                        if let Some(what) = early_end(&mut due_rx) {
                            ctx.error(format!(
                                "publisher {index}: stream ended after {acked} acks {what}"
                            ));
                        }
                        break;
                    }
                    Err(s) => {
                        ctx.error(format!(
                            "publisher {index}: stream failed after {acked} acks: {s}"
                        ));
                        break;
                    }
                }
            }
            tally.flush(&ctx.counters.acked);
            PubResult { acked, last_ack_ns }
        })
    };
    let mut k = 0u64;
    while let Some(due) = next_due(&ctx, &pacer, k, count, origin).await {
        // Take a window slot first: unpaced, a frame is "meant" to go when there is room.
        let Ok(slot) = due_tx.reserve().await else {
            break;
        };
        let intended = due.unwrap_or_else(|| ctx.clock.now_ns());
        slot.send(intended);
        if req_tx
            .send(request(&ctx, index, k, intended))
            .await
            .is_err()
        {
            break;
        }
        k += 1;
    }
    // The due times first: by the time the server sees the requests end and ends the
    // stream, the reader can tell that this side was done (see `early_end`).
    drop(due_tx);
    drop(req_tx);
    reader.await.unwrap_or(PubResult {
        acked: 0,
        last_ack_ns: origin,
    })
}

/// Why a PublishStream that the server ended without an error ended early, if it did:
/// frames were sent (their due times queued in `due`) that were never acknowledged, or
/// the publisher was still sending (it holds `due`'s sender until it is done). Closes
/// `due`, so the publisher stops.
fn early_end(due: &mut mpsc::Receiver<u64>) -> Option<String> {
    use mpsc::error::TryRecvError;
    let mut unacknowledged = 0u64;
    // Looked at before closing: once closed, an empty channel reads as disconnected
    // whether or not the publisher still holds its sender.
    let publisher_done = loop {
        match due.try_recv() {
            Ok(_) => unacknowledged += 1,
            Err(TryRecvError::Empty) => break false,
            Err(TryRecvError::Disconnected) => break true,
        }
    };
    due.close();
    // And those sent between the two looks.
    while due.try_recv().is_ok() {
        unacknowledged += 1;
    }
    match (unacknowledged, publisher_done) {
        (0, true) => None,
        (0, false) => Some("before the publisher was done".into()),
        (n, _) => Some(format!("with {n} frames unacknowledged")),
    }
}

/// Where a subscriber opens its subscription.
enum Door {
    /// A `Subscribe` stream on this shared connection (boxed: a client is 200 bytes, the
    /// other doors a pointer).
    Grpc(Box<Grpc>),
    /// Server-Sent Events on a connection of its own.
    Sse(Arc<WebTarget>),
    /// A WebSocket of its own.
    Ws(Arc<WebTarget>),
}

/// A subscriber's open subscription, whatever the transport: the frames as `(offset,
/// payload)`, so one loop checks every transport alike.
enum Source {
    /// A gRPC stream, and the last frame it gave (whose payload `next` lends).
    Grpc(tonic::Streaming<proto::Frame>, Option<proto::Frame>),
    /// Server-Sent Events.
    Sse(SseStream),
    /// WebSocket.
    Ws(WsStream),
}

impl Source {
    /// Opens the subscription of this run (every frame from `seq_base` on); it is open,
    /// and will see every frame published from now on, when this returns.
    async fn open(ctx: &Ctx, door: Door) -> Result<Source, StreamError> {
        let topic = &ctx.plan.topic;
        match door {
            Door::Grpc(mut grpc) => {
                let req = proto::SubscribeRequest {
                    replay_seq_no_start: ctx.seq_base,
                    topic: topic.clone(),
                    resume: None,
                };
                Ok(Source::Grpc(grpc.subscribe(req).await?.into_inner(), None))
            }
            Door::Sse(web) => {
                let _turn = ctx.opening.acquire().await;
                Ok(Source::Sse(
                    SseStream::open(&web, topic, ctx.seq_base).await?,
                ))
            }
            Door::Ws(web) => {
                let _turn = ctx.opening.acquire().await;
                Ok(Source::Ws(WsStream::open(&web, topic, ctx.seq_base).await?))
            }
        }
    }

    /// The next frame's offset and payload; `None` when the server ended the stream
    /// without an error. Cancel-safe.
    async fn next(&mut self) -> Result<Option<(u64, &[u8])>, StreamError> {
        match self {
            Source::Grpc(stream, last) => Ok(match stream.message().await? {
                Some(f) => {
                    let f = last.insert(f);
                    Some((f.offset, &f.payload[..]))
                }
                None => None,
            }),
            Source::Sse(sse) => sse.next().await,
            Source::Ws(ws) => ws.next().await,
        }
    }
}

/// One subscriber: opens its subscription, reports it open, checks and times every frame
/// until it holds everything that was acknowledged or is told to stop.
async fn subscriber(
    ctx: Arc<Ctx>,
    door: Door,
    mut sink: LatencySink,
    mut phase: watch::Receiver<Phase>,
    ready: mpsc::Sender<bool>,
) -> SubResult {
    let mut checker = Checker::new(ctx.plan.publishers, ctx.plan.size);
    let mut source = match Source::open(&ctx, door).await {
        Ok(source) => source,
        Err(e) => {
            ctx.error(format!("subscribe: {e}"));
            let _ = ready.send(false).await;
            return SubResult {
                checker,
                done_ns: None,
            };
        }
    };
    let _ = ready.send(true).await;
    drop(ready);
    let mut expected: Option<Arc<Vec<u64>>> = None;
    let mut tally = Tally::default();
    let mut done_ns = None;
    loop {
        if let Some(e) = &expected {
            if checker.complete(e) {
                done_ns = Some(ctx.clock.now_ns());
                break;
            }
        }
        tokio::select! {
            biased;
            msg = source.next() => match msg {
                Ok(Some((offset, payload))) => {
                    let now = ctx.clock.now_ns();
                    if let Some(h) = checker.frame(offset, payload) {
                        sink.record_ns(now.saturating_sub(h.intended_ns));
                    }
                    tally.one(&ctx.counters.delivered, now);
                }
                Ok(None) => {
                    ctx.error("subscription ended by the server".into());
                    break;
                }
                Err(e) => {
                    ctx.error(format!("subscription failed: {e}"));
                    break;
                }
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                let p = phase.borrow_and_update().clone();
                if p.stop {
                    break;
                }
                expected = p.expected;
            }
        }
    }
    tally.flush(&ctx.counters.delivered);
    SubResult { checker, done_ns }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_that_ended_early_is_told_from_one_that_finished() {
        // Every frame sent was acknowledged and the publisher is done: a normal end.
        let (tx, mut rx) = mpsc::channel::<u64>(4);
        drop(tx);
        assert_eq!(early_end(&mut rx), None);
        // Two frames sent, never acknowledged.
        let (tx, mut rx) = mpsc::channel::<u64>(4);
        assert!(tx.try_send(1).is_ok() && tx.try_send(2).is_ok());
        drop(tx);
        assert_eq!(
            early_end(&mut rx).as_deref(),
            Some("with 2 frames unacknowledged")
        );
        // Nothing outstanding, but the publisher had more to send; it is stopped.
        let (tx, mut rx) = mpsc::channel::<u64>(4);
        assert_eq!(
            early_end(&mut rx).as_deref(),
            Some("before the publisher was done")
        );
        assert!(tx.try_send(3).is_err());
    }
}
