//! The `Frame` message of the wire contract, written by hand instead of generated, so a
//! frame can carry its own protobuf encoding: the server encodes a live frame once and
//! hands the same bytes to every subscriber (the encoder copies them into each stream's
//! buffer; nothing is encoded again). The bytes on the wire are exactly prost's encoding of
//! the same fields, so every gRPC client decodes them as before.
//!
//! Such a frame also has room for its JSON text, which the web doors (Server-Sent Events,
//! WebSocket) make once, the first time one of them sends the frame live, and share the same
//! way.

use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// One frame of a subscription (`framecast.v1.Frame`).
///
/// A frame built by [`Frame::encoded`] carries its encoding, which is what is sent: its
/// fields are read-only views of it. Changing a field of such a frame drops nothing and
/// re-encodes nothing, so build a new frame instead (decoded frames carry no encoding).
#[derive(Clone, Default)]
pub struct Frame {
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// The payload.
    pub payload: Bytes,
    /// Nanoseconds since the Unix epoch (the stored timestamp).
    pub timestamp: i64,
    /// The frame's offset in its topic.
    pub offset: u64,
    /// The message's encoding, when it was made by [`Frame::encoded`].
    encoding: Option<Bytes>,
    /// Room for the frame's JSON fields, shared by every clone, when it was made by
    /// [`Frame::encoded`].
    json: Option<Arc<OnceLock<Box<str>>>>,
}

impl Frame {
    /// A frame of these fields, encoded once now: the payload is copied into the encoding
    /// (one allocation), and `payload` then points into it, so the frame pins no segment.
    pub fn encoded(seq_no: u64, payload: &[u8], timestamp: i64, offset: u64) -> Frame {
        let plain = Frame {
            seq_no,
            payload: Bytes::copy_from_slice(payload),
            timestamp,
            offset,
            encoding: None,
            json: None,
        };
        let mut buf = BytesMut::with_capacity(plain.fields_len());
        plain.encode_fields(&mut buf);
        let encoding = buf.freeze();
        // The payload's place in the encoding: after the seq_no field, its tag and length.
        let start = if seq_no != 0 {
            encoding::key_len(1) + encoding::encoded_len_varint(seq_no)
        } else {
            0
        };
        let payload = if payload.is_empty() {
            Bytes::new()
        } else {
            let at =
                start + encoding::key_len(2) + encoding::encoded_len_varint(payload.len() as u64);
            encoding.slice(at..at + payload.len())
        };
        Frame {
            seq_no,
            payload,
            timestamp,
            offset,
            encoding: Some(encoding),
            json: Some(Arc::default()),
        }
    }

    /// A frame of these fields without a stored encoding (encoded when sent).
    pub fn new(seq_no: u64, payload: Bytes, timestamp: i64, offset: u64) -> Frame {
        Frame {
            seq_no,
            payload,
            timestamp,
            offset,
            encoding: None,
            json: None,
        }
    }

    /// The frame's JSON text as `make` writes it, made by the first caller and shared with
    /// every clone of the frame; `None` for a frame without room for it (made by
    /// [`Frame::new`] or decoded), whose caller writes its own.
    pub fn shared_json(&self, make: impl FnOnce(&Frame) -> String) -> Option<&str> {
        let cell = self.json.as_ref()?;
        Some(cell.get_or_init(|| make(self).into_boxed_str()))
    }

    /// A copy for a gRPC stream, which sends only the encoding: a frame that has one is
    /// copied without its payload view and JSON room (one reference count taken instead of
    /// three; with a thousand subscribers on two cores, those counts were a tenth of a live
    /// delivery's time). Its `payload` is empty; the payload is in what it sends. A frame
    /// without an encoding is copied whole.
    pub fn wire_only(&self) -> Frame {
        match &self.encoding {
            Some(e) => Frame {
                seq_no: self.seq_no,
                payload: Bytes::new(),
                timestamp: self.timestamp,
                offset: self.offset,
                encoding: Some(e.clone()),
                json: None,
            },
            None => self.clone(),
        }
    }

    /// The stored encoding, if the frame has one.
    pub fn encoding(&self) -> Option<&Bytes> {
        self.encoding.as_ref()
    }

    /// Bytes this frame holds on the heap beyond its struct: its encoding, and room for its
    /// shared JSON text counted at the text's usual size whether made yet or not (so the
    /// figure never changes; a payload of escaped control characters takes more).
    pub fn heap_bytes(&self) -> usize {
        let json = match &self.json {
            Some(_) => json_len_estimate(self.payload.len()),
            None => 0,
        };
        self.encoding.as_ref().map_or(0, Bytes::len) + json
    }

    fn fields_len(&self) -> usize {
        let mut n = 0;
        if self.seq_no != 0 {
            n += encoding::uint64::encoded_len(1, &self.seq_no);
        }
        if !self.payload.is_empty() {
            n += encoding::bytes::encoded_len(2, &self.payload);
        }
        if self.timestamp != 0 {
            n += encoding::int64::encoded_len(3, &self.timestamp);
        }
        if self.offset != 0 {
            n += encoding::uint64::encoded_len(4, &self.offset);
        }
        n
    }

    /// Writes the fields as prost would, in three writes (the fields before the payload,
    /// the payload, the fields after it) instead of one per varint byte: replay encodes
    /// every frame it sends, and byte-wise writes were a tenth of its time.
    fn encode_fields(&self, buf: &mut impl BufMut) {
        // Two keys and two varints of at most 10 bytes each.
        let mut head = Varints::default();
        if self.seq_no != 0 {
            head.field(1, self.seq_no);
        }
        if !self.payload.is_empty() {
            head.key(2, WireType::LengthDelimited);
            head.varint(self.payload.len() as u64);
        }
        buf.put_slice(head.written());
        buf.put_slice(&self.payload);
        let mut tail = Varints::default();
        if self.timestamp != 0 {
            // int64 is the two's complement as a varint: a negative stamp takes 10 bytes.
            tail.field(3, self.timestamp as u64);
        }
        if self.offset != 0 {
            tail.field(4, self.offset);
        }
        buf.put_slice(tail.written());
    }
}

/// The fields of a `Frame` read from one slice (the last of each, as protobuf merges);
/// `None` from [`Fields::parse`] for anything but well-formed known fields.
#[derive(Default)]
struct Fields {
    seq_no: Option<u64>,
    /// Where the payload starts in the slice, and its length.
    payload: Option<(usize, usize)>,
    timestamp: Option<u64>,
    offset: Option<u64>,
}

impl Fields {
    fn parse(s: &[u8]) -> Option<Fields> {
        let mut f = Fields::default();
        let mut at = 0;
        while at < s.len() {
            let key = read_varint(s, &mut at)?;
            let value = match key {
                0x08 | 0x18 | 0x20 => read_varint(s, &mut at)?,
                0x12 => {
                    let len = usize::try_from(read_varint(s, &mut at)?).ok()?;
                    let end = at.checked_add(len).filter(|&e| e <= s.len())?;
                    f.payload = Some((at, len));
                    at = end;
                    continue;
                }
                _ => return None,
            };
            match key {
                0x08 => f.seq_no = Some(value),
                0x18 => f.timestamp = Some(value),
                _ => f.offset = Some(value),
            }
        }
        Some(f)
    }
}

/// A varint at `*at`, moving past it (prost's decoder on the rest of the slice); `None`
/// when it runs past the end or past 64 bits.
fn read_varint(s: &[u8], at: &mut usize) -> Option<u64> {
    let mut rest = s.get(*at..)?;
    let v = encoding::decode_varint(&mut rest).ok()?;
    *at = s.len() - rest.len();
    Some(v)
}

/// Up to two protobuf fields' keys and varints, written into an array.
#[derive(Default)]
struct Varints {
    bytes: [u8; 22],
    len: usize,
}

impl Varints {
    /// A varint field: its key (field numbers here are below 16: one byte) and value.
    fn field(&mut self, tag: u32, value: u64) {
        self.key(tag, WireType::Varint);
        self.varint(value);
    }

    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from((tag << 3) | wire_type as u32));
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.bytes[self.len] = (v as u8) | 0x80;
            self.len += 1;
            v >>= 7;
        }
        self.bytes[self.len] = v as u8;
        self.len += 1;
    }

    fn written(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// About how long a frame's JSON fields are for a payload of `len` bytes: the payload in
/// base64 and, for text, the text again, and the numbers. What a buffer reserves before
/// writing one.
pub fn json_len_estimate(len: usize) -> usize {
    len.div_ceil(3) * 4 + len + 160
}

impl prost::Message for Frame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.encoding {
            Some(e) => buf.put_slice(e),
            None => self.encode_fields(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        self.encoding = None;
        self.json = None;
        match tag {
            1 => encoding::uint64::merge(wire_type, &mut self.seq_no, buf, ctx),
            2 => encoding::bytes::merge(wire_type, &mut self.payload, buf, ctx),
            3 => encoding::int64::merge(wire_type, &mut self.timestamp, buf, ctx),
            4 => encoding::uint64::merge(wire_type, &mut self.offset, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    /// Decodes from one contiguous buffer (what a gRPC message is) by reading the slice
    /// directly and taking the payload out in one piece, instead of advancing the buffer
    /// once per key and varint: a replaying client decodes millions of frames a second.
    /// Anything else (an unknown field, a wrong wire type, bad input, a buffer in pieces)
    /// goes the generic way, which decides the error.
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError>
    where
        Self: Sized,
    {
        if buf.chunk().len() == buf.remaining() {
            if let Some(fields) = Fields::parse(buf.chunk()) {
                self.encoding = None;
                self.json = None;
                if let Some(v) = fields.seq_no {
                    self.seq_no = v;
                }
                if let Some(v) = fields.timestamp {
                    self.timestamp = v as i64;
                }
                if let Some(v) = fields.offset {
                    self.offset = v;
                }
                if let Some((at, len)) = fields.payload {
                    buf.advance(at);
                    self.payload = buf.copy_to_bytes(len);
                }
                buf.advance(buf.remaining());
                return Ok(());
            }
        }
        let ctx = DecodeContext::default();
        while buf.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            self.merge_field(tag, wire_type, &mut buf, ctx.clone())?;
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        match &self.encoding {
            Some(e) => e.len(),
            None => self.fields_len(),
        }
    }

    fn clear(&mut self) {
        *self = Frame::default();
    }
}

impl PartialEq for Frame {
    /// Frames are equal when their fields are, whether or not they carry an encoding.
    fn eq(&self, other: &Frame) -> bool {
        self.seq_no == other.seq_no
            && self.payload == other.payload
            && self.timestamp == other.timestamp
            && self.offset == other.offset
    }
}

impl Eq for Frame {}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("seq_no", &self.seq_no)
            .field("payload", &self.payload)
            .field("timestamp", &self.timestamp)
            .field("offset", &self.offset)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// What prost generates for `framecast.v1.Frame`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Generated {
        #[prost(uint64, tag = "1")]
        seq_no: u64,
        #[prost(bytes = "bytes", tag = "2")]
        payload: Bytes,
        #[prost(int64, tag = "3")]
        timestamp: i64,
        #[prost(uint64, tag = "4")]
        offset: u64,
    }

    #[test]
    fn the_shared_encoding_is_prosts_encoding() {
        let payloads: [&[u8]; 4] = [b"", b"x", &[7u8; 100], &[0u8; 70_000]];
        let numbers = [0u64, 1, 127, 128, 300, u64::MAX];
        let stamps = [0i64, 1, -1, 1_700_000_000_000_000_000, i64::MIN];
        for p in payloads {
            for &n in &numbers {
                for &t in &stamps {
                    let reference = Generated {
                        seq_no: n,
                        payload: Bytes::copy_from_slice(p),
                        timestamp: t,
                        offset: n.wrapping_mul(3),
                    }
                    .encode_to_vec();
                    let shared = Frame::encoded(n, p, t, n.wrapping_mul(3));
                    assert_eq!(shared.encode_to_vec(), reference);
                    assert_eq!(shared.encoded_len(), reference.len());
                    assert_eq!(&shared.payload[..], p);
                    let plain = Frame::new(n, Bytes::copy_from_slice(p), t, n.wrapping_mul(3));
                    assert_eq!(plain.encode_to_vec(), reference);
                    let back = Frame::decode(&reference[..]).unwrap();
                    assert_eq!(back, shared);
                    assert!(back.encoding().is_none());
                }
            }
        }
    }

    /// Decoding agrees with prost's generated decoder on anything: valid frames, repeated
    /// and unknown fields, truncated or malformed bytes, contiguous or in two pieces.
    fn decodes_as_prost_does(bytes: &[u8]) {
        let want = Generated::decode(bytes);
        let whole = Frame::decode(bytes);
        let split = bytes.len() / 2;
        let pieces = Frame::decode((&bytes[..split]).chain(&bytes[split..]));
        for got in [whole, pieces] {
            match (&want, got) {
                (Ok(w), Ok(g)) => {
                    assert_eq!(
                        (w.seq_no, &w.payload, w.timestamp, w.offset),
                        (g.seq_no, &g.payload, g.timestamp, g.offset),
                        "{bytes:?}"
                    );
                    assert!(g.encoding().is_none());
                }
                (Err(_), Err(_)) => {}
                (w, g) => panic!("prost {w:?}, ours {g:?} for {bytes:?}"),
            }
        }
    }

    #[test]
    fn decoding_matches_prost_on_chosen_inputs() {
        let frame = Generated {
            seq_no: 300,
            payload: Bytes::from_static(b"hello"),
            timestamp: -5,
            offset: 1 << 40,
        }
        .encode_to_vec();
        let mut twice = frame.clone();
        twice.extend(
            Generated {
                seq_no: 7,
                payload: Bytes::from_static(b"second"),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        // Field 9 (varint) and field 10 (bytes) unknown to Frame; a field 2 of wire type 0.
        let mut unknown = frame.clone();
        unknown.extend([0x48, 0x05, 0x52, 0x02, b'a', b'b']);
        let wrong_type = [0x10u8, 0x01];
        let empty_payload = [0x12u8, 0x00, 0x08, 0x01];
        let non_minimal_key = [0x88u8, 0x00, 0x2a];
        let overlong = [
            0x08u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ];
        let max = [
            0x08u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let inputs: [&[u8]; 10] = [
            &frame,
            &twice,
            &unknown,
            &wrong_type,
            &empty_payload,
            &non_minimal_key,
            &overlong,
            &max,
            &frame[..frame.len() - 1],
            &[0x00],
        ];
        for input in inputs {
            decodes_as_prost_does(input);
        }
        for cut in 0..frame.len() {
            decodes_as_prost_does(&frame[..cut]);
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_matches_prost_on_any_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            decodes_as_prost_does(&bytes);
        }

        #[test]
        fn decoding_matches_prost_on_frames_with_noise(
            seq_no in proptest::prelude::any::<u64>(),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            timestamp in proptest::prelude::any::<i64>(),
            offset in proptest::prelude::any::<u64>(),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let mut bytes = Generated { seq_no, payload: Bytes::from(payload), timestamp, offset }.encode_to_vec();
            decodes_as_prost_does(&bytes);
            bytes.extend(noise);
            decodes_as_prost_does(&bytes);
        }
    }

    #[test]
    fn a_wire_only_copy_sends_the_same_bytes() {
        let shared = Frame::encoded(9, b"payload", 5, 2);
        let lean = shared.wire_only();
        assert_eq!(lean.encode_to_vec(), shared.encode_to_vec());
        assert_eq!(lean.encoded_len(), shared.encoded_len());
        assert!(lean.payload.is_empty());
        assert_eq!((lean.seq_no, lean.timestamp, lean.offset), (9, 5, 2));
        assert_eq!(Frame::decode(&lean.encode_to_vec()[..]).unwrap(), shared);
        // Without an encoding, nothing is dropped.
        let plain = Frame::new(9, Bytes::from_static(b"payload"), 5, 2);
        assert_eq!(plain.wire_only().payload, plain.payload);
    }

    #[test]
    fn length_delimited_framing_matches() {
        let reference = Generated {
            seq_no: 9,
            payload: Bytes::from_static(b"abc"),
            timestamp: 5,
            offset: 2,
        }
        .encode_length_delimited_to_vec();
        let shared = Frame::encoded(9, b"abc", 5, 2);
        assert_eq!(shared.encode_length_delimited_to_vec(), reference);
    }
}
