//! Model-based test of the log: random sequences of appends (random seq_nos, timestamps and
//! idempotency keys), reopens, ordered reads and offset-range reads, each checked against a
//! plain reference model: a `Vec` by offset, a `BTreeMap` by order key, and a map of the
//! first ack of each idempotency key.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is the test failing

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;
use framecast::index::OrderKey;
use framecast::wal::{Log, LogConfig, NewFrame, StoredFrame};
use proptest::prelude::*;

fn config() -> LogConfig {
    LogConfig {
        // The smallest segment, so that short sequences still roll over several files.
        segment_bytes: 4096,
        max_frame_bytes: 1024,
        ..Default::default()
    }
}

#[derive(Debug, Clone)]
struct FrameSpec {
    seq_no: u64,
    /// 0 asks the log to assign the time.
    timestamp: i64,
    key: Option<u8>,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<FrameSpec>),
    Reopen,
    ReadOrdered {
        from: Start,
        offset_limit: Option<u64>,
        max: usize,
    },
    /// Replays everything in order-key order, `page` frames at a time, resuming each page
    /// after the last key of the one before (as a resumed subscription does).
    ReplayPages {
        page: usize,
        offset_limit: Option<u64>,
    },
    ReadRange {
        from: u64,
        until: Option<u64>,
        min_seq_no: u64,
        max: usize,
    },
}

/// Where an ordered read starts.
#[derive(Debug, Clone)]
enum Start {
    /// Any key; mostly one that is not stored.
    Key(OrderKey),
    /// Exactly the n-th stored key (modulo their number): the start is inclusive.
    Stored(usize),
}

fn frame_spec() -> impl Strategy<Value = FrameSpec> {
    (
        0u64..8,
        prop_oneof![1 => Just(0i64), 4 => 1i64..4],
        proptest::option::weighted(0.4, 0u8..6),
        proptest::collection::vec(any::<u8>(), 0..500),
    )
        .prop_map(|(seq_no, timestamp, key, payload)| FrameSpec {
            seq_no,
            timestamp,
            key,
            payload,
        })
}

fn start() -> impl Strategy<Value = Start> {
    prop_oneof![
        (0u64..9, 0i64..5, 0u64..40).prop_map(|(seq_no, timestamp, offset)| Start::Key(OrderKey {
            seq_no,
            timestamp,
            offset,
        })),
        any::<usize>().prop_map(Start::Stored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec(frame_spec(), 1..6).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        2 => (start(), proptest::option::of(0u64..40), 0usize..12).prop_map(
            |(from, offset_limit, max)| Op::ReadOrdered {
                from,
                offset_limit,
                max,
            }
        ),
        1 => (1usize..7, proptest::option::of(0u64..40))
            .prop_map(|(page, offset_limit)| Op::ReplayPages { page, offset_limit }),
        2 => (0u64..40, proptest::option::of(0u64..45), 0u64..9, 0usize..50).prop_map(
            |(from, until, min_seq_no, max)| Op::ReadRange {
                from,
                until,
                min_seq_no,
                max,
            }
        ),
    ]
}

/// A frame as the model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    offset: u64,
    seq_no: u64,
    timestamp: i64,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Model {
    by_offset: Vec<Stored>,
    by_key: BTreeMap<(u64, i64, u64), ()>,
    /// Idempotency key → (offset, timestamp) of its first ack.
    first_ack: HashMap<u8, (u64, i64)>,
}

impl Model {
    fn next_offset(&self) -> u64 {
        self.by_offset.len() as u64
    }

    /// Frames with key `>= from` and offset below `limit`, in key order.
    fn ordered(&self, from: OrderKey, limit: u64) -> Vec<&Stored> {
        self.by_key
            .range((from.seq_no, from.timestamp, from.offset)..)
            .filter(|(k, _)| k.2 < limit)
            .map(|(k, _)| &self.by_offset[k.2 as usize])
            .collect()
    }
}

fn key_bytes(k: u8) -> Bytes {
    Bytes::from(format!("idem-{k}"))
}

fn same(got: &StoredFrame, want: &Stored) -> bool {
    got.offset == want.offset
        && got.seq_no == want.seq_no
        && got.timestamp == want.timestamp
        && got.payload[..] == want.payload[..]
}

fn check_stats(log: &Log, model: &Model) -> Result<(), TestCaseError> {
    let stats = log.stats();
    let n = model.next_offset();
    prop_assert_eq!(stats.frames, n);
    prop_assert_eq!(stats.next_offset, n);
    prop_assert_eq!(stats.first_offset, 0);
    prop_assert_eq!(log.durable_offset(), n);
    prop_assert_eq!(stats.min_seq_no, model.by_key.keys().next().map(|k| k.0));
    prop_assert_eq!(
        stats.max_seq_no,
        model.by_key.keys().next_back().map(|k| k.0)
    );
    Ok(())
}

fn apply(
    dir: &Path,
    slot: &mut Option<Log>,
    model: &mut Model,
    op: &Op,
) -> Result<(), TestCaseError> {
    let Some(log) = slot.as_ref() else {
        return Err(TestCaseError::fail("no open log"));
    };
    match op {
        Op::Append(specs) => {
            let before = framecast::wal::now_ns();
            let frames = specs
                .iter()
                .map(|s| NewFrame {
                    seq_no: s.seq_no,
                    timestamp: s.timestamp,
                    key: s.key.map(key_bytes).unwrap_or_default(),
                    payload: Bytes::from(s.payload.clone()),
                })
                .collect();
            let acks = log
                .append(frames)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(acks.len(), specs.len());
            for (s, ack) in specs.iter().zip(&acks) {
                if let Some(&(offset, timestamp)) = s.key.and_then(|k| model.first_ack.get(&k)) {
                    prop_assert!(ack.duplicate, "key {:?} was stored: {:?}", s.key, ack);
                    prop_assert_eq!((ack.offset, ack.timestamp), (offset, timestamp));
                    continue;
                }
                prop_assert!(!ack.duplicate, "{:?} for a new key {:?}", ack, s.key);
                prop_assert_eq!(ack.offset, model.next_offset());
                if s.timestamp == 0 {
                    prop_assert!(
                        ack.timestamp >= before && ack.timestamp <= framecast::wal::now_ns(),
                        "assigned timestamp {} is not the time of the append",
                        ack.timestamp
                    );
                } else {
                    prop_assert_eq!(ack.timestamp, s.timestamp);
                }
                if let Some(k) = s.key {
                    model.first_ack.insert(k, (ack.offset, ack.timestamp));
                }
                model
                    .by_key
                    .insert((s.seq_no, ack.timestamp, ack.offset), ());
                model.by_offset.push(Stored {
                    offset: ack.offset,
                    seq_no: s.seq_no,
                    timestamp: ack.timestamp,
                    payload: s.payload.clone(),
                });
            }
        }
        Op::Reopen => {
            // Drop first: the old log must be closed before the directory is opened again.
            *slot = None;
            *slot = Some(Log::open(dir, config()).map_err(|e| TestCaseError::fail(e.to_string()))?);
        }
        Op::ReadOrdered {
            from,
            offset_limit,
            max,
        } => {
            let from = match from {
                Start::Key(k) => *k,
                Start::Stored(n) => match model.by_key.keys().nth(n % model.by_key.len().max(1)) {
                    Some(&(seq_no, timestamp, offset)) => OrderKey {
                        seq_no,
                        timestamp,
                        offset,
                    },
                    None => OrderKey::first_of_seq(0),
                },
            };
            let limit = offset_limit.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            let done = log
                .read_ordered(&from, limit, *max, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let matching = model.ordered(from, limit);
            let want = &matching[..matching.len().min(*max)];
            prop_assert_eq!(
                out.len(),
                want.len(),
                "read_ordered from {:?} limit {}",
                from,
                limit
            );
            for (g, w) in out.iter().zip(want) {
                prop_assert!(same(g, w), "read_ordered gave {:?}, model has {:?}", g, w);
            }
            prop_assert_eq!(done, matching.len() <= *max, "done flag");
        }
        Op::ReplayPages { page, offset_limit } => {
            let limit = offset_limit.unwrap_or(u64::MAX);
            let mut from = OrderKey::first_of_seq(0);
            let mut all: Vec<StoredFrame> = Vec::new();
            loop {
                let mut out = Vec::new();
                let done = log
                    .read_ordered(&from, limit, *page, &mut out)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert!(out.len() <= *page);
                prop_assert!(
                    done || out.len() == *page,
                    "a short page that is not the end"
                );
                if let Some(last) = out.last() {
                    match last.key().successor() {
                        Some(next) => from = next,
                        None => prop_assert!(done),
                    }
                }
                all.extend(out);
                if done {
                    break;
                }
                prop_assert!(all.len() <= model.by_offset.len(), "replay does not end");
            }
            let want = model.ordered(OrderKey::first_of_seq(0), limit);
            prop_assert_eq!(
                all.len(),
                want.len(),
                "replay in pages of {} below {}",
                page,
                limit
            );
            for (g, w) in all.iter().zip(&want) {
                prop_assert!(same(g, w), "replay gave {:?}, model has {:?}", g, w);
            }
        }
        Op::ReadRange {
            from,
            until,
            min_seq_no,
            max,
        } => {
            let until = until.unwrap_or(u64::MAX);
            let mut out = Vec::new();
            let next = log
                .read_range(*from, until, *min_seq_no, *max, &mut out)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let end = until
                .min(model.next_offset())
                .min(from.saturating_add(*max as u64));
            prop_assert_eq!(next, end.max(*from), "next offset to look at");
            let want: Vec<&Stored> = model
                .by_offset
                .iter()
                .filter(|s| s.offset >= *from && s.offset < end && s.seq_no >= *min_seq_no)
                .collect();
            prop_assert_eq!(
                out.len(),
                want.len(),
                "read_range {}..{} max {}",
                from,
                until,
                max
            );
            for (g, w) in out.iter().zip(&want) {
                prop_assert!(same(g, w), "read_range gave {:?}, model has {:?}", g, w);
            }
        }
    }
    match slot {
        Some(log) => check_stats(log, model),
        None => Err(TestCaseError::fail("no open log")),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        // Each case writes files; keep shrinking bounded and the repo free of stray files.
        max_shrink_iters: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let tmp = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let dir = tmp.path().join("log");
        let mut log = Some(Log::open(&dir, config()).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let mut model = Model::default();
        for op in &ops {
            apply(&dir, &mut log, &mut model, op)?;
        }
        // Whatever the sequence, a final reopen holds exactly the model, in both orders.
        apply(&dir, &mut log, &mut model, &Op::Reopen)?;
        apply(&dir, &mut log, &mut model, &Op::ReadRange {
            from: 0, until: None, min_seq_no: 0, max: usize::MAX })?;
        apply(&dir, &mut log, &mut model, &Op::ReadOrdered {
            from: Start::Key(OrderKey::first_of_seq(0)), offset_limit: None, max: usize::MAX })?;
    }
}
