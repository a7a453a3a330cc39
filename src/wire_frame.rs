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
