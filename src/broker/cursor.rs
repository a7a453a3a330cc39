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
    /// The topic's oldest retained offset when the walk (a History walk, or the first
    /// stream a subscription's resumes continue) began: retention past it may have removed
    /// frames the walk still needs, and before it removed none the walk was promised.
    /// `None` (tokens from before subscriptions carried it): unknown, every removal counts.
    pub floor: Option<u64>,
}

impl CursorToken {
    /// The token's text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        self.encode_into(&mut out);
        out
    }

    /// Appends the token's text to `out`, allocating nothing else (every SSE event and
    /// WebSocket push carries one).
    pub fn encode_into(&self, out: &mut String) {
        // 2 bytes, then at most 7 varints of at most 10 bytes.
        let mut b = [0u8; 2 + 7 * 10];
        b[0] = VERSION;
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
        b[1] = flags;
        let mut n = 2;
        for v in [self.start_seq_no, self.snapshot, self.epoch] {
            n += put_varint(&mut b[n..], v);
        }
        if let Some(k) = self.last {
            n += put_varint(&mut b[n..], k.seq_no);
            // Stored timestamps are never negative.
            n += put_varint(&mut b[n..], k.timestamp.max(0) as u64);
            n += put_varint(&mut b[n..], k.offset);
        }
        if let Some(floor) = self.floor {
            n += put_varint(&mut b[n..], floor);
        }
        base64url_into(&b[..n], out);
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

    /// The subscription request that resumes exactly after this token. A newest-first
    /// History token walks the other way (the frames after it in order-key order are ones
    /// the client has, and those before it it has not): refused, `INVALID_ARGUMENT`.
    pub fn subscribe_request(&self, topic: &str) -> Result<proto::SubscribeRequest> {
        if self.reverse {
            return Err(Error::InvalidArgument(
                "a newest-first History cursor cannot resume a subscription: resume from a \
                 subscription's cursor or a forward History page's"
                    .into(),
            ));
        }
        let (seq_no, timestamp, offset) = self
            .last
            .map_or((0, 0, 0), |k| (k.seq_no, k.timestamp, k.offset));
        Ok(proto::SubscribeRequest {
            replay_seq_no_start: self.start_seq_no,
            topic: topic.to_string(),
            resume: Some(proto::Cursor {
                snapshot_offset: self.snapshot,
                seq_no,
                timestamp,
                offset,
                epoch: self.epoch,
            }),
        })
    }
}

/// A walk's cursor as it moves past frame after frame, writing each token with the part
/// every token of the walk shares (version, flags, start, snapshot, epoch) encoded once:
/// every SSE event and WebSocket push carries one.
#[derive(Debug, Clone)]
pub struct CursorWriter {
    walk: CursorToken,
    /// The shared part's first bytes, a multiple of 3, in base64url.
    head_text: String,
    /// The shared part's last 0-2 bytes, encoded with each token's own part.
    head_rest: [u8; 2],
    head_rest_len: usize,
}

impl CursorWriter {
    /// A writer for `walk`, at the frame it names (if any).
    pub fn new(walk: CursorToken) -> CursorWriter {
        let mut head = [0u8; 2 + 3 * 10];
        head[0] = VERSION;
        head[1] = HAS_LAST
            | if walk.reverse { REVERSE } else { 0 }
            | if walk.floor.is_some() { HAS_FLOOR } else { 0 };
        let mut n = 2;
        for v in [walk.start_seq_no, walk.snapshot, walk.epoch] {
            n += put_varint(&mut head[n..], v);
        }
        let aligned = n / 3 * 3;
        let mut head_text = String::with_capacity(aligned / 3 * 4);
        base64url_into(&head[..aligned], &mut head_text);
        let mut head_rest = [0u8; 2];
        head_rest[..n - aligned].copy_from_slice(&head[aligned..n]);
        CursorWriter {
            walk,
            head_text,
            head_rest,
            head_rest_len: n - aligned,
        }
    }

    /// The walk as it stands.
    pub fn walk(&self) -> &CursorToken {
        &self.walk
    }

    /// Moves the walk past `frame`.
    pub fn advance(&mut self, frame: &proto::Frame) {
        self.walk = self.walk.after(frame);
    }

    /// Appends the walk's token: what `self.walk().encode()` is, allocating nothing.
    pub fn write(&self, out: &mut String) {
        let Some(k) = self.walk.last else {
            self.walk.encode_into(out);
            return;
        };
        let mut b = [0u8; 2 + 4 * 10];
        b[..self.head_rest_len].copy_from_slice(&self.head_rest[..self.head_rest_len]);
        let mut n = self.head_rest_len;
        n += put_varint(&mut b[n..], k.seq_no);
        // Stored timestamps are never negative.
        n += put_varint(&mut b[n..], k.timestamp.max(0) as u64);
        n += put_varint(&mut b[n..], k.offset);
        if let Some(floor) = self.walk.floor {
            n += put_varint(&mut b[n..], floor);
        }
        out.push_str(&self.head_text);
        base64url_into(&b[..n], out);
    }
}

/// Appends `bytes` in base64url without padding (what `URL_SAFE_NO_PAD` writes). Written
/// out because every SSE event and WebSocket push carries a token of ~30 bytes, and the
/// general encoder's setup cost more than the encoding (measured: 11 % of a WebSocket
/// fan-out's server time).
fn base64url_into(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let at = |n: u32, shift: u32| ALPHABET[((n >> shift) & 63) as usize];
    // Tokens are at most 72 bytes: 96 characters; longer input goes in pieces of 72.
    for piece in bytes.chunks(72) {
        let mut text = [0u8; 96];
        let mut len = 0;
        let mut chunks = piece.chunks_exact(3);
        for c in &mut chunks {
            let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
            text[len..len + 4].copy_from_slice(&[at(n, 18), at(n, 12), at(n, 6), at(n, 0)]);
            len += 4;
        }
        match *chunks.remainder() {
            [a] => {
                let n = u32::from(a) << 16;
                text[len..len + 2].copy_from_slice(&[at(n, 18), at(n, 12)]);
                len += 2;
            }
            [a, b] => {
                let n = u32::from(a) << 16 | u32::from(b) << 8;
                text[len..len + 3].copy_from_slice(&[at(n, 18), at(n, 12), at(n, 6)]);
                len += 3;
            }
            _ => {}
        }
        // The alphabet is ASCII: this never fails.
        out.push_str(std::str::from_utf8(&text[..len]).unwrap_or_default());
    }
}

/// Writes `v` as LEB128 at the start of `b` (room for 10 bytes) and returns its length.
fn put_varint(b: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        b[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    b[n] = v as u8;
    n + 1
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
            let mut appended = String::from("x");
            t.encode_into(&mut appended);
            prop_assert_eq!(&appended[1..], text.as_str());
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

    proptest! {
        #[test]
        fn a_writer_writes_what_encode_does(start: u64, snapshot: u64, epoch: u64, reverse: bool,
                floor: Option<u64>, keys in proptest::collection::vec((any::<u64>(), 1i64..i64::MAX, any::<u64>()), 0..5)) {
            let walk = CursorToken { start_seq_no: start, snapshot, epoch, reverse, floor, last: None };
            let mut w = CursorWriter::new(walk);
            let mut text = String::new();
            w.write(&mut text);
            prop_assert_eq!(&text, &walk.encode());
            for (seq_no, timestamp, offset) in keys {
                w.advance(&proto::Frame::new(seq_no, bytes::Bytes::new(), timestamp, offset));
                let mut text = String::from("x");
                w.write(&mut text);
                prop_assert_eq!(&text[1..], w.walk().encode());
                prop_assert_eq!(CursorToken::decode(&text[1..]).ok(), Some(*w.walk()));
            }
        }

        #[test]
        fn the_written_out_base64url_is_the_crates(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut mine = String::new();
            base64url_into(&bytes, &mut mine);
            prop_assert_eq!(mine, URL_SAFE_NO_PAD.encode(&bytes));
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
