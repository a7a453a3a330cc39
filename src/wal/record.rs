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

/// What [`decode`] found at a position.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and its length in bytes.
    Record(RecordRef<'a>, usize),
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
        let mut at = RECORD_HEADER_LEN;
        if !self.key.is_empty() {
            out[at..at + KEY_TIME_LEN].copy_from_slice(&self.key_time.to_le_bytes());
            at += KEY_TIME_LEN;
            out[at..at + self.key.len()].copy_from_slice(self.key);
            at += self.key.len();
        }
        out[at..].copy_from_slice(self.payload);
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
