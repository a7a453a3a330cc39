//! Cursor tokens: the opaque, URL-safe strings that SSE event ids, WebSocket pushes and
//! History pages carry. A token names where a walk over a topic started
//! (`replay_seq_no_start`), its snapshot `S`, the topic's epoch and the last frame the
//! client has, so the same token resumes exactly — with the rules of Resume — through any
//! door, on any node.
//!
//! Layout (then base64url without padding): version byte `1`, a flags byte (bit 0: a last
//! frame follows; bit 1: a reverse History walk; bit 2: a floor follows), then LEB128
//! varints: start seq_no, snapshot, epoch, with a last frame its seq_no, timestamp and
//! offset, and with a floor the oldest retained offset when the walk began.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::error::{Error, Result};
use crate::index::OrderKey;
use crate::proto;

const VERSION: u8 = 1;
const HAS_LAST: u8 = 1;
const REVERSE: u8 = 2;
const HAS_FLOOR: u8 = 4;

/// A decoded cursor token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorToken {
    /// The walk's `replay_seq_no_start` (History: `from_seq_no`).
    pub start_seq_no: u64,
    /// The snapshot point S.
    pub snapshot: u64,
    /// The topic's epoch.
    pub epoch: u64,
    /// The last frame the client has; `None` before the first frame.
    pub last: Option<OrderKey>,
    /// A History walk newest first.
    pub reverse: bool,
    /// The topic's oldest retained offset when a History walk began: retention past it may
    /// have removed frames the walk still needs. `None` (SSE, WebSocket): unknown.
    pub floor: Option<u64>,
}

impl CursorToken {
    /// The token's text.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(48);
        b.push(VERSION);
        let mut flags = 0;
        if self.last.is_some() {
            flags |= HAS_LAST;
        }
        if self.reverse {
            flags |= REVERSE;
        }
        if self.floor.is_some() {
            flags |= HAS_FLOOR;
        }
        b.push(flags);
        for v in [self.start_seq_no, self.snapshot, self.epoch] {
            put_varint(&mut b, v);
        }
        if let Some(k) = self.last {
            put_varint(&mut b, k.seq_no);
            // Stored timestamps are never negative.
            put_varint(&mut b, k.timestamp.max(0) as u64);
            put_varint(&mut b, k.offset);
        }
        if let Some(floor) = self.floor {
            put_varint(&mut b, floor);
        }
        URL_SAFE_NO_PAD.encode(b)
    }

    /// Parses a token; anything else is `INVALID_ARGUMENT`.
    pub fn decode(text: &str) -> Result<CursorToken> {
        let bad = |why: &str| Error::InvalidArgument(format!("malformed cursor token: {why}"));
        let raw = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| bad("not base64url"))?;
        let mut r = raw.as_slice();
        let [version, flags, rest @ ..] = r else {
            return Err(bad("too short"));
        };
        if *version != VERSION {
            return Err(bad("unknown version"));
        }
        if flags & !(HAS_LAST | REVERSE | HAS_FLOOR) != 0 {
            return Err(bad("unknown flags"));
        }
        let flags = *flags;
        r = rest;
        let mut next = || take_varint(&mut r).ok_or_else(|| bad("truncated"));
        let start_seq_no = next()?;
        let snapshot = next()?;
        let epoch = next()?;
        let last = if flags & HAS_LAST != 0 {
            let seq_no = next()?;
            let timestamp = i64::try_from(next()?).map_err(|_| bad("timestamp out of range"))?;
            let offset = next()?;
            if timestamp == 0 {
                return Err(bad("a frame's timestamp is never 0"));
            }
            Some(OrderKey {
                seq_no,
                timestamp,
                offset,
            })
        } else {
            None
        };
        let floor = if flags & HAS_FLOOR != 0 {
            Some(next()?)
        } else {
            None
        };
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(CursorToken {
            start_seq_no,
            snapshot,
            epoch,
            last,
            reverse: flags & REVERSE != 0,
            floor,
        })
    }

    /// The token moved past `frame`.
    pub fn after(self, frame: &proto::Frame) -> CursorToken {
        CursorToken {
            last: Some(OrderKey {
                seq_no: frame.seq_no,
                timestamp: frame.timestamp,
                offset: frame.offset,
            }),
            ..self
        }
    }

    /// The subscription request that resumes exactly after this token.
    pub fn subscribe_request(&self, topic: &str) -> proto::SubscribeRequest {
        let (seq_no, timestamp, offset) = self
            .last
            .map_or((0, 0, 0), |k| (k.seq_no, k.timestamp, k.offset));
        proto::SubscribeRequest {
            replay_seq_no_start: self.start_seq_no,
            topic: topic.to_string(),
            resume: Some(proto::Cursor {
                snapshot_offset: self.snapshot,
                seq_no,
                timestamp,
                offset,
                epoch: self.epoch,
            }),
        }
    }
}

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn take_varint(r: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = r.split_first()?;
        *r = rest;
        let bits = u64::from(byte & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        v |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(start: u64, snapshot: u64, epoch: u64, reverse: bool, floor: Option<u64>,
                       last in proptest::option::of((any::<u64>(), 1i64..i64::MAX, any::<u64>()))) {
            let t = CursorToken {
                start_seq_no: start, snapshot, epoch, reverse, floor,
                last: last.map(|(seq_no, timestamp, offset)| OrderKey { seq_no, timestamp, offset }),
            };
            let text = t.encode();
            prop_assert!(text.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            prop_assert_eq!(CursorToken::decode(&text).ok(), Some(t));
        }

        #[test]
        fn garbage_is_refused_not_misread(text in "[A-Za-z0-9_-]{0,40}") {
            if let Ok(t) = CursorToken::decode(&text) {
                // Anything accepted must be exactly what it encodes back to.
                prop_assert_eq!(CursorToken::decode(&t.encode()).ok(), Some(t));
            }
        }
    }

    #[test]
    fn refusals_are_invalid_argument() {
        for bad in ["", "!!", "AQ", "AgAAAA", "AQQAAAA"] {
            let e = CursorToken::decode(bad).err();
            assert!(matches!(e, Some(Error::InvalidArgument(_))), "{bad}: {e:?}");
        }
    }
}
