//! The record: one frame as stored in a segment, and its codec.

use super::format::{
    le4, le8, KEY_TIME_LEN, MAX_KEY_LEN, RECORD_CRC_AT, RECORD_CRC_START, RECORD_HEADER_LEN,
};

/// One stored frame, borrowed from a segment's bytes.
///
/// Byte layout, all integers little-endian:
///
/// | bytes   | field       | meaning                                                   |
/// |---------|-------------|-----------------------------------------------------------|
/// | 0..4    | length      | u32, the whole record in bytes, header included (>= 40)   |
/// | 4..8    | crc         | u32, CRC32 (IEEE) of bytes `8..length`                    |
/// | 8..16   | offset      | u64, the frame's offset in its topic                      |
/// | 16..24  | seq_no      | u64, client-chosen sequence number                        |
/// | 24..32  | timestamp   | i64, nanoseconds since the Unix epoch, never negative     |
/// | 32..34  | key_len     | u16, bytes of idempotency key (0..=128)                   |
/// | 34..36  | flags       | u16, zero in format version 1                             |
/// | 36..40  | payload_len | u32, bytes of payload                                     |
/// | 40..48  | key_time    | i64, when the key was stored; present only if key_len > 0 |
/// | ..      | key         | `key_len` bytes                                           |
/// | ..      | payload     | `payload_len` bytes                                       |
///
/// `length` must equal `40 + (key_len > 0 ? 8 + key_len : 0) + payload_len`. A header of
/// 40 zero bytes (preallocated, never written space) marks the end of a segment's data.
/// Because the CRC covers every field after it and `length` is checked against the
/// covered lengths, any single flipped bit makes a record invalid.
///
/// A **gap record** (flags = [`FLAG_GAP`], written only by `framecast repair` over damaged
/// bytes) holds no frame: `offset` is the first offset lost, the `seq_no` field the number
/// of offsets lost; timestamp and key are empty, the payload is zero padding so that the gap
/// record covers the damaged bytes exactly (40 bytes at least: any record fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The frame's offset in its topic.
    pub offset: u64,
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Stored timestamp, nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// When the idempotency key was stored (ns since the epoch); 0 without a key.
    pub key_time: i64,
    /// The idempotency key; empty when the frame has none.
    pub key: &'a [u8],
    /// The payload.
    pub payload: &'a [u8],
}

/// The `flags` value of a gap record: offsets lost to damage, set aside by repair.
pub const FLAG_GAP: u16 = 0x0001;
/// Smallest gap record: a bare header, as small as the smallest record.
pub const MIN_GAP_LEN: usize = RECORD_HEADER_LEN;

/// Offsets known to be lost: what a gap record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The first offset lost.
    pub offset: u64,
    /// How many offsets, from `offset` on, are lost (may be 0: damage that held none).
    pub count: u64,
}

impl Gap {
    /// One past the last offset lost.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.count)
    }

    /// Encodes a gap record exactly `len` bytes long (padding with zeros), or `None` when
    /// `len` is below [`MIN_GAP_LEN`] or above `u32::MAX`, or the gap covers more than
    /// [`MAX_GAP_OFFSETS`].
    pub fn encode(&self, len: usize) -> Option<Vec<u8>> {
        if len < MIN_GAP_LEN || u32::try_from(len).is_err() || self.count > MAX_GAP_OFFSETS {
            return None;
        }
        let mut out = vec![0u8; len];
        out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.count.to_le_bytes());
        out[34..36].copy_from_slice(&FLAG_GAP.to_le_bytes());
        out[36..40].copy_from_slice(&((len - RECORD_HEADER_LEN) as u32).to_le_bytes());
        let crc = crc32fast::hash(&out[RECORD_CRC_START..]);
        out[RECORD_CRC_AT..RECORD_CRC_START].copy_from_slice(&crc.to_le_bytes());
        Some(out)
    }
}

/// The most offsets one gap record covers: what the largest segment (4 GiB) can hold, one
/// header each. A gap the leader ships for a longer run of holes goes as several records.
pub const MAX_GAP_OFFSETS: u64 = u32::MAX as u64 / RECORD_HEADER_LEN as u64;

/// What [`decode`] found at a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and its length in bytes.
    Record(RecordRef<'a>, usize),
    /// A valid gap record and its length in bytes.
    Gap(Gap, usize),
    /// Zero bytes: the end of the written data.
    End,
    /// Bytes that are not a valid record, and why.
    Invalid(String),
}

impl<'a> RecordRef<'a> {
    /// Bytes this record takes when encoded.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self.key.len(), self.payload.len())
    }

    /// Writes the record into `out`, which must be exactly [`Self::encoded_len`] bytes.
    pub fn encode_into(&self, out: &mut [u8]) {
        debug_assert_eq!(out.len(), self.encoded_len());
        debug_assert!(self.key.len() <= MAX_KEY_LEN);
        let length = out.len() as u32;
        out[0..4].copy_from_slice(&length.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq_no.to_le_bytes());
        out[24..32].copy_from_slice(&self.timestamp.to_le_bytes());
        out[32..34].copy_from_slice(&(self.key.len() as u16).to_le_bytes());
        out[34..36].copy_from_slice(&0u16.to_le_bytes());
        out[36..40].copy_from_slice(&(self.payload.len() as u32).to_le_bytes());
        // The header before the rest, the checksum last: a process killed midway leaves a
        // whole header naming this record, which recovery skips (see `look_from`).
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        let mut at = RECORD_HEADER_LEN;
        if !self.key.is_empty() {
            out[at..at + KEY_TIME_LEN].copy_from_slice(&self.key_time.to_le_bytes());
            at += KEY_TIME_LEN;
            out[at..at + self.key.len()].copy_from_slice(self.key);
            at += self.key.len();
        }
        out[at..].copy_from_slice(self.payload);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        let crc = crc32fast::hash(&out[RECORD_CRC_START..]);
        out[RECORD_CRC_AT..RECORD_CRC_START].copy_from_slice(&crc.to_le_bytes());
    }

    /// Encodes into a new vector (tests and tools; the log encodes in place).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.encoded_len()];
        self.encode_into(&mut v);
        v
    }
}

/// [`encoded_len`] for lengths not bounded yet (a `--max-frame-bytes` being checked):
/// `None` when the record would be larger than any length a `usize` holds.
pub fn checked_encoded_len(key_len: usize, payload_len: usize) -> Option<usize> {
    let key_part = if key_len > 0 {
        KEY_TIME_LEN.checked_add(key_len)?
    } else {
        0
    };
    RECORD_HEADER_LEN
        .checked_add(key_part)?
        .checked_add(payload_len)
}

/// Bytes a record with a key of `key_len` and a payload of `payload_len` takes.
pub fn encoded_len(key_len: usize, payload_len: usize) -> usize {
    let key_part = if key_len > 0 {
        KEY_TIME_LEN + key_len
    } else {
        0
    };
    RECORD_HEADER_LEN + key_part + payload_len
}

/// Decodes the record at the start of `buf`, checking bounds, lengths and CRC.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_LEN {
        return if buf.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid(format!(
                "{} bytes left: too short for a record header",
                buf.len()
            ))
        };
    }
    let header = &buf[..RECORD_HEADER_LEN];
    if header.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let length = u32::from_le_bytes(le4(&header[0..4])) as usize;
    if length < RECORD_HEADER_LEN {
        return Decoded::Invalid(format!("record length {length} is below the header size"));
    }
    if length > buf.len() {
        return Decoded::Invalid(format!(
            "record length {length} runs past the end of the data ({} bytes left)",
            buf.len()
        ));
    }
    let body = &buf[..length];
    let stored_crc = u32::from_le_bytes(le4(&body[RECORD_CRC_AT..RECORD_CRC_START]));
    if crc32fast::hash(&body[RECORD_CRC_START..]) != stored_crc {
        return Decoded::Invalid("checksum mismatch".into());
    }
    let key_len = u16::from_le_bytes([header[32], header[33]]) as usize;
    let flags = u16::from_le_bytes([header[34], header[35]]);
    let payload_len = u32::from_le_bytes(le4(&header[36..40])) as usize;
    if flags == FLAG_GAP {
        return decode_gap(header, body);
    }
    if flags != 0 {
        return Decoded::Invalid(format!("unknown flags {flags:#06x}"));
    }
    if key_len > MAX_KEY_LEN {
        return Decoded::Invalid(format!("key length {key_len} exceeds {MAX_KEY_LEN}"));
    }
    if encoded_len(key_len, payload_len) != length {
        return Decoded::Invalid(format!(
            "record length {length} disagrees with key {key_len} and payload {payload_len} bytes"
        ));
    }
    let timestamp = i64::from_le_bytes(le8(&header[24..32]));
    if timestamp < 0 {
        return Decoded::Invalid(format!("negative timestamp {timestamp}"));
    }
    let mut at = RECORD_HEADER_LEN;
    let (key_time, key) = if key_len > 0 {
        let t = i64::from_le_bytes(le8(&body[at..at + KEY_TIME_LEN]));
        at += KEY_TIME_LEN;
        let k = &body[at..at + key_len];
        at += key_len;
        (t, k)
    } else {
        (0, &body[0..0])
    };
    Decoded::Record(
        RecordRef {
            offset: u64::from_le_bytes(le8(&header[8..16])),
            seq_no: u64::from_le_bytes(le8(&header[16..24])),
            timestamp,
            key_time,
            key,
            payload: &body[at..],
        },
        length,
    )
}

/// The rest of [`decode`] for a record whose CRC matched and whose flags say gap.
fn decode_gap<'a>(header: &[u8], body: &[u8]) -> Decoded<'a> {
    let key_len = u16::from_le_bytes([header[32], header[33]]);
    let payload_len = u32::from_le_bytes(le4(&header[36..40])) as usize;
    let timestamp = i64::from_le_bytes(le8(&header[24..32]));
    if key_len != 0 || timestamp != 0 || payload_len + RECORD_HEADER_LEN != body.len() {
        return Decoded::Invalid("malformed gap record".into());
    }
    let gap = Gap {
        offset: u64::from_le_bytes(le8(&header[8..16])),
        count: u64::from_le_bytes(le8(&header[16..24])),
    };
    if gap.count > MAX_GAP_OFFSETS {
        // Its holes are indexed one by one: such a count would take the memory of the
        // machine (and abort the process) on a file no crash or repair writes.
        return Decoded::Invalid(format!(
            "gap record of {} offsets, more than a segment holds ({MAX_GAP_OFFSETS})",
            gap.count
        ));
    }
    Decoded::Gap(gap, body.len())
}

/// The fields of a record header, read without any check: for records verified before
/// (a run's, at open), on hot paths that must not pay a CRC per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole record's length in bytes.
    pub length: usize,
    /// The frame's offset.
    pub offset: u64,
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Stored timestamp.
    pub timestamp: i64,
}

impl Header {
    /// Reads the header at the start of `buf`; `None` if fewer than 40 bytes remain.
    pub fn peek(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..RECORD_HEADER_LEN)?;
        Some(Header {
            length: u32::from_le_bytes(le4(&h[0..4])) as usize,
            offset: u64::from_le_bytes(le8(&h[8..16])),
            seq_no: u64::from_le_bytes(le8(&h[16..24])),
            timestamp: i64::from_le_bytes(le8(&h[24..32])),
        })
    }
}

/// One step of a [`Walk`]: what lies at a byte position.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A valid record, `len` bytes long.
    Record(RecordRef<'a>, usize),
    /// A valid gap record, `len` bytes long.
    Gap(Gap, usize),
    /// Not a valid record here, and why. The walk ends after it.
    Invalid(String),
    /// The end of the data: zeros (or nothing) from here to the end. The walk ends.
    End,
}

/// The one record walker: steps through the records of a byte slice from a start
/// position, yielding `(position, step)`. After an [`Step::Invalid`] or [`Step::End`] it
/// yields nothing more; callers that must look past damage use [`scan_ahead`].
///
/// With [`Walk::expecting`], a record (or gap) whose offset is not the next expected one
/// is reported as invalid, so a segment's offsets are checked to follow one another.
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
    expect: Option<u64>,
    done: bool,
}

impl<'a> Walk<'a> {
    /// Walks `buf` from `start`. A zero header is the end only if every byte after it is
    /// zero too (a zeroed header followed by data is damage, not an end).
    pub fn new(buf: &'a [u8], start: usize) -> Walk<'a> {
        Walk {
            buf,
            pos: start.min(buf.len()),
            expect: None,
            done: false,
        }
    }

    /// Checks that offsets run on from `first`, one per record, `count` per gap.
    pub fn expecting(mut self, first: u64) -> Walk<'a> {
        self.expect = Some(first);
        self
    }

    /// The position of the next step (after the walk ended: where it ended).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The offset the next record must have, when checking offsets.
    pub fn expected_offset(&self) -> Option<u64> {
        self.expect
    }

    fn offset_ok(&self, offset: u64) -> Result<(), String> {
        match self.expect {
            Some(e) if e != offset => Err(format!("record has offset {offset}, expected {e}")),
            _ => Ok(()),
        }
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = (usize, Step<'a>);

    fn next(&mut self) -> Option<(usize, Step<'a>)> {
        if self.done {
            return None;
        }
        let pos = self.pos;
        let step = match decode(&self.buf[pos..]) {
            Decoded::Record(rec, len) => match self.offset_ok(rec.offset) {
                Ok(()) => {
                    self.pos += len;
                    self.expect = self.expect.map(|e| e + 1);
                    return Some((pos, Step::Record(rec, len)));
                }
                Err(why) => Step::Invalid(why),
            },
            Decoded::Gap(gap, len) => match self.offset_ok(gap.offset) {
                Ok(()) => {
                    self.pos += len;
                    self.expect = self.expect.map(|_| gap.end());
                    return Some((pos, Step::Gap(gap, len)));
                }
                Err(why) => Step::Invalid(why),
            },
            Decoded::End => match first_non_zero(&self.buf[pos..]) {
                Some(at) => Step::Invalid(format!(
                    "non-zero bytes at {} after the end of data",
                    pos + at
                )),
                None => Step::End,
            },
            Decoded::Invalid(reason) => Step::Invalid(reason),
        };
        self.done = true;
        Some((pos, step))
    }
}

/// A valid record found past damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Where it starts.
    pub position: usize,
    /// Its offset (a gap record's first offset).
    pub offset: u64,
}

/// What follows the bad bytes at `pos`, where a walk that expected offset `expect` stopped:
/// the test that tells interior damage (`Some`) from a torn tail (`None`).
///
/// - A whole record whose checksum matches at `pos` (of another offset, or with fields
///   that make no valid record) is the answer itself: a crash never leaves one behind, so
///   this is damage (a misdirected or stale write over an acknowledged frame), never a
///   tail to cut.
/// - A record whose header is whole and names the expected offset, with a bad CRC, is the
///   record being written when the process died: the look-ahead starts past its length,
///   not inside its payload, whose bytes are the client's and may hold anything, the bytes
///   of a valid record too.
/// - Otherwise the look-ahead ([`scan_ahead`]) starts at `pos`.
pub fn look_past(buf: &[u8], pos: usize, expect: u64) -> Option<Found> {
    if let Some(h) = checksummed(&buf[pos..]) {
        return Some(Found {
            position: pos,
            offset: h.offset,
        });
    }
    scan_ahead(buf, look_from(buf, pos, expect), expect.checked_sub(1))
}

/// The header of the record at the start of `buf` if its bytes, as long as it says, match
/// its checksum (whether or not their fields make a valid record).
pub fn checksummed(buf: &[u8]) -> Option<Header> {
    let h = Header::peek(buf)?;
    if !(RECORD_HEADER_LEN..=buf.len()).contains(&h.length) {
        return None;
    }
    let stored = u32::from_le_bytes(le4(&buf[RECORD_CRC_AT..RECORD_CRC_START]));
    (crc32fast::hash(&buf[RECORD_CRC_START..h.length]) == stored).then_some(h)
}

/// True when the bad record at the start of `buf` was written whole and damaged afterwards,
/// not cut short by a crash: its stored CRC is not zero. [`RecordRef::encode_into`] (and a
/// follower's copy) stores the CRC last, into space that is zero until then (new files,
/// rollback, a cut tail), so a record a killed process left half written has a CRC of zero;
/// one with a CRC was complete, and may have been acknowledged, whatever else in it is bad
/// now: a flipped bit in its header (length, offset, flags) is damage as much as one in its
/// payload. (A real CRC of zero, one record in 2^32, reads as a crash's.)
pub fn written_whole(buf: &[u8]) -> bool {
    buf.get(RECORD_CRC_AT..RECORD_CRC_START)
        .is_some_and(|crc| crc != [0u8; 4])
}

/// Where a look past the bad bytes at `pos` starts (see [`look_past`]): past the record
/// there if its header is whole and names the expected offset `expect`, else at `pos`.
pub fn look_from(buf: &[u8], pos: usize, expect: u64) -> usize {
    match plausible(&buf[pos..], None) {
        Some(offset) if offset == expect => {
            pos + u32::from_le_bytes(le4(&buf[pos..pos + 4])) as usize
        }
        _ => pos,
    }
}

/// Looks from `from` on for the first byte position where a valid record (or gap record)
/// with an offset above `after` starts: the test that tells interior damage (something
/// valid follows) from a torn tail (nothing does). Runs of zeros are skipped a block at a
/// time, and each position is checked for plausibility (length bounds, header fields that
/// agree, the offset) before its CRC is computed, so the scan goes at memory speed.
pub fn scan_ahead(buf: &[u8], from: usize, after: Option<u64>) -> Option<Found> {
    let mut pos = from;
    while pos + RECORD_HEADER_LEN <= buf.len() {
        let length = u32::from_le_bytes(le4(&buf[pos..pos + 4])) as usize;
        if length == 0 {
            // A record's length is at least 40, so its first four bytes are never all zero:
            // jump to three bytes before the next non-zero byte.
            let next = first_non_zero(&buf[pos..])?;
            pos = (pos + next).saturating_sub(3).max(pos + 1);
            continue;
        }
        // The cheapest test first: most garbage positions fail the length bounds.
        if (RECORD_HEADER_LEN..=buf.len() - pos).contains(&length) {
            if let Some(offset) = plausible(&buf[pos..], after) {
                if let Decoded::Record(..) | Decoded::Gap(..) = decode(&buf[pos..]) {
                    return Some(Found {
                        position: pos,
                        offset,
                    });
                }
            }
        }
        pos += 1;
    }
    None
}

/// The offset of the record header at the start of `buf` if its fields could belong to a
/// valid record with an offset above `after`: cheap checks, no CRC.
fn plausible(buf: &[u8], after: Option<u64>) -> Option<u64> {
    let h = Header::peek(buf)?;
    if h.length < RECORD_HEADER_LEN || h.length > buf.len() {
        return None;
    }
    if after.is_some_and(|a| h.offset <= a) {
        return None;
    }
    let key_len = u16::from_le_bytes([buf[32], buf[33]]) as usize;
    let flags = u16::from_le_bytes([buf[34], buf[35]]);
    let payload_len = u32::from_le_bytes(le4(&buf[36..40])) as usize;
    let fits = match flags {
        0 => key_len <= MAX_KEY_LEN && encoded_len(key_len, payload_len) == h.length,
        FLAG_GAP => key_len == 0 && payload_len + RECORD_HEADER_LEN == h.length,
        _ => false,
    };
    fits.then_some(h.offset)
}

/// Index of the first non-zero byte, scanning a block at a time.
pub fn first_non_zero(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    for chunk in b.chunks(4096) {
        if chunk.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return chunk.iter().position(|&x| x != 0).map(|p| i + p);
        }
        i += chunk.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample<'a>(key: &'a [u8], payload: &'a [u8]) -> RecordRef<'a> {
        RecordRef {
            offset: 12345,
            seq_no: u64::MAX - 3,
            timestamp: 1_700_000_000_000_000_000,
            key_time: if key.is_empty() {
                0
            } else {
                1_700_000_000_123_000_000
            },
            key,
            payload,
        }
    }

    #[test]
    fn round_trip_with_and_without_key() {
        for (key, payload) in [
            (&b""[..], &b"hello"[..]),
            (b"k-1", b""),
            (b"key", b"payload"),
        ] {
            let rec = sample(key, payload);
            let bytes = rec.to_vec();
            assert_eq!(decode(&bytes), Decoded::Record(rec, bytes.len()));
        }
    }

    #[test]
    fn zeros_are_the_end_and_short_garbage_is_invalid() {
        assert_eq!(decode(&[0u8; 100]), Decoded::End);
        assert_eq!(decode(&[0u8; 7]), Decoded::End);
        assert!(matches!(decode(&[0, 0, 1]), Decoded::Invalid(_)));
    }

    #[test]
    fn truncation_at_every_length_is_invalid() {
        let bytes = sample(b"key", b"some payload bytes").to_vec();
        for cut in 1..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Decoded::Invalid(_)),
                "cut at {cut} not caught"
            );
        }
    }

    fn rec(offset: u64, payload: &[u8]) -> Vec<u8> {
        RecordRef {
            offset,
            ..sample(b"", payload)
        }
        .to_vec()
    }

    #[test]
    fn gap_records_round_trip_and_every_bit_flip_is_detected() {
        let gap = Gap {
            offset: 100,
            count: 3,
        };
        assert_eq!(gap.encode(MIN_GAP_LEN - 1), None);
        for len in [MIN_GAP_LEN, 41, 73, 200] {
            let bytes = gap.encode(len).expect("long enough");
            assert_eq!(decode(&bytes), Decoded::Gap(gap, len));
            for bit in 0..len * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(decode(&bad), Decoded::Invalid(_)),
                    "len {len}, bit {bit}"
                );
            }
        }
    }

    #[test]
    fn walk_checks_offsets_and_what_follows_the_end() {
        let mut buf = vec![0u8; 8];
        buf.extend(rec(5, b"a"));
        buf.extend(
            Gap {
                offset: 6,
                count: 2,
            }
            .encode(60)
            .expect("gap"),
        );
        buf.extend(rec(8, b"b"));
        buf.extend([0u8; 100]);
        let steps: Vec<_> = Walk::new(&buf, 8).expecting(5).collect();
        assert_eq!(steps.len(), 4);
        assert!(matches!(steps[0].1, Step::Record(r, _) if r.offset == 5));
        assert!(matches!(steps[1].1, Step::Gap(g, 60) if g.end() == 8));
        assert!(matches!(steps[2].1, Step::Record(r, _) if r.offset == 8));
        assert_eq!(steps[3], (buf.len() - 100, Step::End));
        // A wrong offset is invalid; so is data after a zero header.
        let wrong: Vec<_> = Walk::new(&buf, 8).expecting(4).collect();
        assert!(matches!(&wrong[..], [(8, Step::Invalid(_))]));
        let mut tail = buf.clone();
        let n = tail.len();
        tail[n - 10] = 1;
        let last = Walk::new(&tail, 8).last().expect("steps");
        assert!(matches!(last.1, Step::Invalid(ref w) if w.contains("after the end")));
    }

    #[test]
    fn scan_ahead_finds_a_later_record_at_any_byte_position() {
        for garbage in [1usize, 39, 40, 41, 5000] {
            let mut buf: Vec<u8> = (0..garbage).map(|i| (i % 251) as u8 | 1).collect();
            buf.extend([0u8; 4099]);
            let at = buf.len();
            buf.extend(rec(7, b"payload"));
            buf.extend([0u8; 64]);
            let found = scan_ahead(&buf, 0, Some(6));
            assert_eq!(
                found,
                Some(Found {
                    position: at,
                    offset: 7
                }),
                "{garbage}"
            );
            assert_eq!(scan_ahead(&buf, 0, Some(7)), None, "not later than 7");
            assert_eq!(scan_ahead(&buf, at + 1, None), None);
        }
    }

    #[test]
    fn checked_encoded_len_agrees_and_refuses_to_overflow() {
        for (k, p) in [(0, 0), (3, 10), (MAX_KEY_LEN, 1 << 20)] {
            assert_eq!(checked_encoded_len(k, p), Some(encoded_len(k, p)));
        }
        assert_eq!(checked_encoded_len(0, usize::MAX), None);
        assert_eq!(checked_encoded_len(MAX_KEY_LEN, usize::MAX - 175), None);
        assert_eq!(
            checked_encoded_len(MAX_KEY_LEN, usize::MAX - 176),
            Some(usize::MAX)
        );
    }

    #[test]
    fn written_whole_tells_damage_from_a_record_a_crash_cut_short() {
        let whole = rec(7, b"a payload long enough to be cut");
        let mut buf = whole.clone();
        buf.extend([0u8; 64]);
        let mut flipped = buf.clone();
        flipped[whole.len() - 2] ^= 0x10;
        assert!(written_whole(&flipped), "a flipped payload bit: damage");
        // A flipped bit anywhere in the header leaves the stored CRC: damage too.
        for byte in (0..RECORD_CRC_AT).chain(RECORD_CRC_START..RECORD_HEADER_LEN) {
            let mut header = buf.clone();
            header[byte] ^= 0x04;
            assert!(
                written_whole(&header),
                "a flipped bit in header byte {byte}"
            );
        }
        // What a killed process leaves: the header, part of the payload, no CRC yet.
        let mut torn = buf.clone();
        torn[whole.len() - 10..whole.len()].fill(0);
        torn[RECORD_CRC_AT..RECORD_CRC_START].fill(0);
        assert!(!written_whole(&torn));
        // A whole record whose file was cut short is damage; a header cut before its CRC
        // holds nothing to tell.
        assert!(written_whole(&flipped[..whole.len() - 1]));
        assert!(!written_whole(&flipped[..RECORD_CRC_START - 1]));
    }

    proptest! {
        #[test]
        fn round_trip(offset: u64, seq_no: u64, timestamp in 0i64..i64::MAX,
                      key in proptest::collection::vec(any::<u8>(), 0..=MAX_KEY_LEN),
                      payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let rec = RecordRef { offset, seq_no, timestamp,
                key_time: if key.is_empty() { 0 } else { timestamp }, key: &key, payload: &payload };
            let bytes = rec.to_vec();
            prop_assert_eq!(decode(&bytes), Decoded::Record(rec, bytes.len()));
        }

        #[test]
        fn every_single_bit_flip_is_detected(
            key in proptest::collection::vec(any::<u8>(), 0..=16),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            seq_no: u64, timestamp in 0i64..i64::MAX) {
            let rec = RecordRef { offset: 9, seq_no, timestamp,
                key_time: if key.is_empty() { 0 } else { 5 }, key: &key, payload: &payload };
            let bytes = rec.to_vec();
            // Followed by zeros, as in a preallocated segment: a flip must not turn into
            // a shorter valid record or a clean end.
            let mut buf = bytes.clone();
            buf.extend_from_slice(&[0u8; 256]);
            for bit in 0..bytes.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(matches!(decode(&bad), Decoded::Invalid(_)),
                    "flip of bit {} not detected", bit);
            }
        }
    }
}
