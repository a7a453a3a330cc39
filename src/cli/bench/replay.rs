//! `bench replay`: a topic of N frames (prefilled by one pipelined publisher unless an
//! earlier run left them), then S subscribers reading it from the start at once. The two
//! steps are separate calls, so that what is measured around the replay (CPU time, wire
//! bytes) leaves the prefill out.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::args::{Length, Transport};
use super::conn::{connect, list_topics, Windows, Wire};
use super::error::{Error, Result};
use super::latency::Recorder;
use super::payload::{Checker, Faults, Filler};
use super::progress::{Counters, Progress, Tally};
use super::pubsub::{self, Plan};
use framecast::proto;

/// What `bench replay` does.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// Server address.
    pub addr: String,
    /// Topic.
    pub topic: String,
    /// Payload bytes per frame.
    pub size: usize,
    /// What fills each payload after its header (prefill).
    pub filler: Filler,
    /// Compression, and the counter of bytes on the wire (the replay's, not the prefill's).
    pub wire: Wire,
    /// Frames to replay.
    pub frames: u64,
    /// Subscribers.
    pub subscribers: usize,
    /// Connections they share.
    pub connections: usize,
    /// How long the replay may take.
    pub timeout: Duration,
    /// Show progress bars.
    pub progress: bool,
}

/// The topic's prefill.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefill {
    /// Frames published (0 when the topic already held them).
    pub frames: u64,
    /// Seconds it took.
    pub secs: f64,
}

/// What happened.
#[derive(Debug)]
pub struct ReplayOutcome {
    /// Frames delivered, all subscribers.
    pub delivered: u64,
    /// Seconds from the subscribe calls to the last subscriber done.
    pub secs: f64,
    /// Subscribe call → first frame (µs), one sample per subscriber.
    pub first_frame: Histogram<u64>,
    /// Failed calls.
    pub errors: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Faults, summed.
    pub faults: Faults,
    /// Subscribers that did not get all N frames in time.
    pub incomplete: usize,
}

/// The topic's name when `--topic` is not given: fixed, so that a later run against the
/// same server reuses the prefill, and naming everything that makes the stored frames
/// differ (count, size and filler; compression is the wire's, not the frames').
pub fn default_topic(frames: u64, size: usize, filler: Filler) -> String {
    format!("bench-replay-{frames}x{size}-{}", filler.as_str())
}

/// Prefills the topic unless it already holds `plan.frames` frames.
pub async fn prefill(plan: &ReplayPlan) -> Result<Prefill> {
    // Neither this call nor the prefill is the replay: their bytes are counted apart.
    let uncounted = Wire {
        bytes: Default::default(),
        ..plan.wire.clone()
    };
    let mut admin = connect(&plan.addr, 1, Windows::Default, &uncounted)
        .await?
        .remove(0);
    let topics = list_topics(&mut admin).await?;
    let held = topics
        .iter()
        .find(|t| t.name == plan.topic)
        .map_or(0, |t| t.next_offset);
    if held == 0 {
        let fill = pubsub::run(Plan {
            addr: plan.addr.clone(),
            sub_addrs: vec![plan.addr.clone()],
            topic: plan.topic.clone(),
            size: plan.size,
            filler: plan.filler,
            wire: uncounted,
            publishers: 1,
            pub_connections: 1,
            stream: true,
            window: 1024,
            coalesce: false,
            rate: 0.0,
            keys: false,
            length: Length {
                duration: Duration::from_secs(3600),
                count: Some(plan.frames),
                drain: Duration::ZERO,
            },
            subscribers: 0,
            sub_connections: 0,
            transport: Transport::Grpc,
            http_addr: String::new(),
            token: None,
            progress: plan.progress,
        })
        .await?;
        if fill.acked < plan.frames {
            return Err(Error::Args(format!(
                "prefill stopped after {} of {} frames: {}",
                fill.acked,
                plan.frames,
                fill.error_samples.join("; ")
            )));
        }
        return Ok(Prefill {
            frames: fill.acked,
            secs: fill.publish_secs,
        });
    }
    if held < plan.frames {
        return Err(Error::Args(format!(
            "topic '{}' holds {held} frames, fewer than --frames {}; use a fresh topic",
            plan.topic, plan.frames
        )));
    }
    Ok(Prefill::default())
}

/// Replays the (prefilled) topic: `plan.subscribers` read it from offset 0 at once.
pub async fn replay(plan: ReplayPlan) -> Result<ReplayOutcome> {
    let conns = connect(
        &plan.addr,
        plan.connections.max(1),
        Windows::Default,
        &plan.wire,
    )
    .await?;
    let counters = Arc::new(Counters::default());
    let errors = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let first = Recorder::new(1);
    let total = plan.frames * plan.subscribers as u64;
    let progress = Progress::start(
        plan.progress,
        "replay",
        total,
        Arc::clone(&counters),
        |c, _| c.delivered.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + plan.timeout;
    let mut tasks = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let mut grpc = conns[i % conns.len()].clone();
        let mut sink = first.handle(i);
        let counters = Arc::clone(&counters);
        let errors = Arc::clone(&errors);
        let (topic, frames, size) = (plan.topic.clone(), plan.frames, plan.size);
        tasks.push(tokio::spawn(async move {
            let mut checker = Checker::new(1, size);
            let expected = [frames];
            let fail = |m: String| {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                let mut e = errors.lock();
                if e.len() < 5 {
                    e.push(m);
                }
            };
            let asked = Instant::now();
            let req = proto::SubscribeRequest {
                replay_seq_no_start: 0,
                topic,
                resume: None,
            };
            let mut stream = match grpc.subscribe(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    fail(format!("subscribe: {s}"));
                    return (checker, None);
                }
            };
            let mut tally = Tally::default();
            let mut done = None;
            // One timer for the whole replay, not one per frame.
            let timeout = tokio::time::sleep_until(deadline);
            tokio::pin!(timeout);
            while checker.received < frames {
                let msg = tokio::select! {
                    biased;
                    m = stream.message() => Ok(m),
                    () = &mut timeout => Err(()),
                };
                match msg {
                    Ok(Ok(Some(f))) => {
                        if checker.received == 0 {
                            sink.record_ns(asked.elapsed().as_nanos() as u64);
                        }
                        checker.frame(f.offset, &f.payload);
                        tally.one_reading_clock(&counters.delivered, || {
                            asked.elapsed().as_nanos() as u64
                        });
                    }
                    Ok(Ok(None)) => {
                        fail("subscription ended by the server".into());
                        break;
                    }
                    Ok(Err(s)) => {
                        fail(format!("subscription failed: {s}"));
                        break;
                    }
                    Err(_) => {
                        fail(format!(
                            "replay timed out after {} of {frames} frames",
                            checker.received
                        ));
                        break;
                    }
                }
            }
            if checker.complete(&expected) {
                done = Some(Instant::now());
            }
            tally.flush(&counters.delivered);
            (checker, done)
        }));
    }
    let mut delivered = 0;
    let mut faults = Faults::default();
    let mut incomplete = 0;
    let mut last = started;
    for t in tasks {
        let Ok((mut checker, done)) = t.await else {
            incomplete += 1;
            continue;
        };
        delivered += checker.received;
        match done {
            Some(at) => last = last.max(at),
            None => {
                incomplete += 1;
                last = last.max(Instant::now());
            }
        }
        faults.add(&checker.finish(&[plan.frames]));
    }
    progress.finish();
    let error_samples = errors.lock().clone();
    Ok(ReplayOutcome {
        delivered,
        secs: (last - started).as_secs_f64(),
        first_frame: first.merged(),
        errors: counters.errors.load(Ordering::Relaxed),
        error_samples,
        faults,
        incomplete,
    })
}
