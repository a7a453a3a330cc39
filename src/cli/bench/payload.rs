//! What a benchmark frame carries, and the check every subscriber runs on what it receives.
//!
//! The payload starts with a 24-byte header, the rest is filler:
//!
//! | bytes  | field       | meaning                                                    |
//! | ------ | ----------- | ---------------------------------------------------------- |
//! | 0..4   | magic       | `FCB1`, so a frame from someone else is recognised          |
//! | 4..8   | publisher   | index of the publisher (u32, little-endian)                 |
//! | 8..16  | counter     | the publisher's frame number, 0, 1, 2, … (u64)              |
//! | 16..24 | intended_ns | when the frame was *meant* to be sent, ns since run start   |
//!
//! The filler is `x` bytes (`--payload filler`, compresses to almost nothing) or JSON-like
//! market-data records (`--payload json`) whose figures vary from frame to frame, so that a
//! compressor sees what a real JSON feed gives it.
//!
//! A publisher's frames are stored in the order it sends them (acks come back in request
//! order), so each subscriber expects every publisher's counters as 0, 1, 2, … exactly.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the header; the smallest payload a benchmark frame can have.
pub const HEADER_LEN: usize = 24;
/// The largest payload (`--size`) the bench sends: its connections' largest message less
/// room for the request's other fields, as `framecast::client` leaves. The server's own
/// limit, `--max-frame-bytes`, is lower unless raised; a payload over it is refused by the
/// server and counted as an error, while one over this limit could not be sent at all.
pub const MAX_PAYLOAD_LEN: usize = super::conn::MAX_MESSAGE_BYTES - (64 << 10);
const MAGIC: &[u8; 4] = b"FCB1";

/// What fills a payload after its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Filler {
    /// `x` bytes: the cheapest to make, and compressible to nearly nothing.
    #[default]
    Filler,
    /// JSON-like market-data records with varying figures (compresses about as a feed does).
    Json,
}

impl Filler {
    /// The name as typed.
    pub fn as_str(self) -> &'static str {
        match self {
            Filler::Filler => "filler",
            Filler::Json => "json",
        }
    }
}

/// Builds a payload of `size` bytes (`HEADER_LEN <= size <= MAX_PAYLOAD_LEN`) with `filler`
/// after the header.
pub fn encode_with(
    filler: Filler,
    size: usize,
    publisher: u32,
    counter: u64,
    intended_ns: u64,
) -> Bytes {
    let mut b = BytesMut::with_capacity(size + 160);
    b.put_slice(MAGIC);
    b.put_u32_le(publisher);
    b.put_u64_le(counter);
    b.put_u64_le(intended_ns);
    match filler {
        Filler::Filler => b.resize(size, b'x'),
        Filler::Json => {
            json_records(&mut b, size, (u64::from(publisher) << 40) ^ counter);
            b.truncate(size);
        }
    }
    b.freeze()
}

const SYMBOLS: [&str; 16] = [
    "EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCHF", "NZDUSD", "USDCAD", "EURGBP", "EURJPY",
    "GBPJPY", "XAUUSD", "BTCUSD", "ETHUSD", "SPX500", "NAS100", "GER40",
];
const VENUES: [&str; 4] = ["LD4", "NY4", "TY3", "FR2"];

/// Appends `[{"sym":…,"bid":…,…},…` until `b` holds at least `size` bytes. The figures come
/// from a xorshift generator seeded per frame: similar in shape, different in digits.
fn json_records(b: &mut BytesMut, size: usize, seed: u64) {
    use std::fmt::Write;
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut s = String::with_capacity(size + 160);
    s.push('[');
    let mut i = 0u64;
    while HEADER_LEN + s.len() < size {
        let r = next();
        let mid = 1000 + r % 99_000;
        let spread = 1 + (r >> 20) % 40;
        let _ = write!(
            s,
            "{{\"sym\":\"{}\",\"bid\":{}.{:05},\"ask\":{}.{:05},\"qty\":{},\"venue\":\"{}\",\"seq\":{},\"ts\":{}}},",
            SYMBOLS[(r >> 8) as usize % SYMBOLS.len()],
            mid / 1000,
            (mid % 1000) * 100 + (r >> 30) % 100,
            (mid + spread) / 1000,
            ((mid + spread) % 1000) * 100 + (r >> 30) % 100,
            100 * (1 + (r >> 40) % 500),
            VENUES[(r >> 50) as usize % VENUES.len()],
            seed.wrapping_add(i) % 1_000_000_000,
            1_764_000_000_000_000_000 + (next() % 1_000_000_000_000),
        );
        i += 1;
    }
    b.put_slice(s.as_bytes());
}

/// The header of a received payload; `None` when it is not a benchmark frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The publisher's index.
    pub publisher: u32,
    /// The publisher's frame number.
    pub counter: u64,
    /// Intended send time, ns since the run's start.
    pub intended_ns: u64,
}

/// Reads the header of `p`.
pub fn decode(p: &[u8]) -> Option<Header> {
    if p.len() < HEADER_LEN || &p[..4] != MAGIC {
        return None;
    }
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&p[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut pb = [0u8; 4];
    pb.copy_from_slice(&p[4..8]);
    Some(Header {
        publisher: u32::from_le_bytes(pb),
        counter: u64_at(8),
        intended_ns: u64_at(16),
    })
}

/// What one subscriber saw wrong. All must be zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Faults {
    /// Frames acknowledged to a publisher that this subscriber never received.
    pub missing: u64,
    /// Frames received more than once.
    pub duplicated: u64,
    /// Frames received after a later frame of the same publisher (or with a lower offset
    /// than an earlier live frame).
    pub out_of_order: u64,
    /// Frames that are not benchmark frames, or whose size is wrong.
    pub foreign: u64,
}

impl Faults {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Faults) {
        self.missing += o.missing;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.foreign += o.foreign;
    }

    /// True when nothing went wrong.
    pub fn is_clean(&self) -> bool {
        *self == Faults::default()
    }
}

/// Per-publisher state of a subscriber's check.
#[derive(Debug, Default, Clone)]
struct Track {
    /// The next counter expected.
    next: u64,
    /// Counters skipped so far (a later arrival of one is out of order, not a duplicate).
    gaps: BTreeSet<u64>,
}

/// One subscriber's check of the frames it receives.
#[derive(Debug, Clone)]
pub struct Checker {
    tracks: Vec<Track>,
    size: usize,
    last_offset: Option<u64>,
    /// What went wrong so far (`missing` is final only after [`Checker::finish`]).
    pub faults: Faults,
    /// Frames received (every arrival, duplicates included).
    pub received: u64,
}

impl Checker {
    /// A check for frames of `publishers` publishers, each `size` bytes.
    pub fn new(publishers: usize, size: usize) -> Checker {
        Checker {
            tracks: vec![Track::default(); publishers],
            size,
            last_offset: None,
            faults: Faults::default(),
            received: 0,
        }
    }

    /// Checks one frame at `offset` (frames must arrive in offset order); returns its header.
    pub fn frame(&mut self, offset: u64, payload: &[u8]) -> Option<Header> {
        self.received += 1;
        if let Some(last) = self.last_offset {
            if offset <= last {
                self.faults.out_of_order += 1;
            }
        }
        self.last_offset = Some(self.last_offset.map_or(offset, |l| l.max(offset)));
        let h = match decode(payload) {
            Some(h) if payload.len() == self.size && (h.publisher as usize) < self.tracks.len() => {
                h
            }
            _ => {
                self.faults.foreign += 1;
                return None;
            }
        };
        let t = &mut self.tracks[h.publisher as usize];
        if h.counter == t.next {
            t.next += 1;
        } else if h.counter > t.next {
            // Tentatively missing; a late arrival turns a gap into "out of order".
            for c in t.next..h.counter {
                t.gaps.insert(c);
            }
            t.next = h.counter + 1;
        } else if t.gaps.remove(&h.counter) {
            self.faults.out_of_order += 1;
        } else {
            self.faults.duplicated += 1;
        }
        Some(h)
    }

    /// True when every publisher's first `expected[p]` frames have arrived.
    pub fn complete(&self, expected: &[u64]) -> bool {
        self.tracks
            .iter()
            .zip(expected)
            .all(|(t, &e)| t.next >= e && t.gaps.range(..e).next().is_none())
    }

    /// Counts what is still missing of the first `expected[p]` frames of each publisher.
    pub fn finish(&mut self, expected: &[u64]) -> Faults {
        for (t, &e) in self.tracks.iter().zip(expected) {
            self.faults.missing += t.gaps.range(..e).count() as u64 + e.saturating_sub(t.next);
        }
        self.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(size: usize, publisher: u32, counter: u64, intended_ns: u64) -> Bytes {
        encode_with(Filler::Filler, size, publisher, counter, intended_ns)
    }

    fn feed(c: &mut Checker, frames: &[(u32, u64)]) {
        for (i, &(p, n)) in frames.iter().enumerate() {
            c.frame(i as u64, &encode(32, p, n, 0));
        }
    }

    #[test]
    fn header_round_trips() {
        let p = encode(100, 7, 123_456_789, 42);
        assert_eq!(p.len(), 100);
        assert_eq!(
            decode(&p),
            Some(Header {
                publisher: 7,
                counter: 123_456_789,
                intended_ns: 42
            })
        );
        assert_eq!(decode(b"hello, this is not a benchmark frame"), None);
    }

    #[test]
    fn json_filler_has_the_size_the_header_and_varies() {
        let a = encode_with(Filler::Json, 4096, 3, 10, 99);
        let b = encode_with(Filler::Json, 4096, 3, 11, 99);
        assert_eq!(a.len(), 4096);
        assert_eq!(decode(&a).map(|h| (h.publisher, h.counter)), Some((3, 10)));
        assert!(a[HEADER_LEN..].starts_with(b"[{\"sym\":\""));
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
        let mut c = Checker::new(4, 4096);
        assert!(c.frame(0, &a).is_some());
        assert!(c.faults.is_clean());
    }

    #[test]
    fn clean_stream_from_two_publishers() {
        let mut c = Checker::new(2, 32);
        feed(&mut c, &[(0, 0), (1, 0), (0, 1), (1, 1), (1, 2)]);
        assert!(c.complete(&[2, 3]));
        assert!(c.finish(&[2, 3]).is_clean());
    }

    #[test]
    fn gap_late_arrival_duplicate_and_missing_are_told_apart() {
        let mut c = Checker::new(1, 32);
        // 0, 2 (1 skipped), 1 (late), 2 again (duplicate), then 3 never comes.
        feed(&mut c, &[(0, 0), (0, 2), (0, 1), (0, 2)]);
        assert!(!c.complete(&[4]));
        let f = c.finish(&[4]);
        assert_eq!(f.missing, 1);
        assert_eq!(f.duplicated, 1);
        // The late frame, and the duplicate's offset went forward so only one.
        assert_eq!(f.out_of_order, 1);
    }

    #[test]
    fn offsets_going_back_and_foreign_frames_count() {
        let mut c = Checker::new(1, 32);
        c.frame(5, &encode(32, 0, 0, 0));
        c.frame(4, &encode(32, 0, 1, 0));
        c.frame(6, b"not ours");
        c.frame(7, &encode(33, 0, 2, 0));
        let f = c.finish(&[2]);
        assert_eq!(f.out_of_order, 1);
        assert_eq!(f.foreign, 2);
        assert_eq!(f.missing, 0);
    }
}
