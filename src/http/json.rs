//! Bodies in the proto3 JSON mapping, with the proto field names: 64-bit integers are
//! decimal strings, so a JavaScript client loses no precision.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::broker::{CursorWriter, Error};
use crate::proto;
use crate::wire_frame::json_len_estimate;

/// A `PublishAck`.
pub fn ack(a: &proto::PublishAck) -> Value {
    json!({
        "offset": a.offset.to_string(),
        "timestamp": a.timestamp.to_string(),
        "duplicate": a.duplicate,
    })
}

/// A `TopicInfo`.
pub fn topic(t: &proto::TopicInfo) -> Value {
    json!({
        "name": t.name,
        "epoch": t.epoch.to_string(),
        "frames": t.frames.to_string(),
        "bytes": t.bytes.to_string(),
        "first_offset": t.first_offset.to_string(),
        "next_offset": t.next_offset.to_string(),
        "min_seq_no": t.min_seq_no.to_string(),
        "max_seq_no": t.max_seq_no.to_string(),
        "subscribers": t.subscribers,
        "segments": t.segments,
        "subscriber_max_lag_frames": t.subscriber_max_lag_frames.to_string(),
    })
}

/// A `ClusterInfo`.
pub fn cluster_info(c: &proto::ClusterInfo) -> Value {
    let nodes: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| {
            let topics: Vec<Value> = n
                .topics
                .iter()
                .map(|t| {
                    json!({
                        "topic": t.topic,
                        "next_offset": t.next_offset.to_string(),
                        "commit_offset": t.commit_offset.to_string(),
                    })
                })
                .collect();
            json!({
                "id": n.id,
                "address": n.address,
                "http_address": n.http_address,
                "leader": n.leader,
                "in_sync": n.in_sync,
                "online": n.online,
                "topics": topics,
            })
        })
        .collect();
    json!({
        "term": c.term.to_string(),
        "leader": c.leader,
        "nodes": nodes,
    })
}

/// Where a frame's JSON goes and what it carries beside the frame's own fields.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameExtras<'a> {
    /// `"topic"` (WebSocket pushes).
    pub topic: Option<&'a str>,
    /// `"live"`: the frame is past the snapshot (SSE, WebSocket).
    pub live: Option<bool>,
    /// `"cursor"`: the token that resumes after this frame (WebSocket pushes), the writer
    /// having moved past it.
    pub cursor: Option<&'a CursorWriter>,
}

/// Appends a frame as a JSON object to `out`: `{"seq_no","timestamp","offset","payload"[,
/// "text"]}` (the payload in base64; `text` when it is valid UTF-8) with `extras`. Written
/// directly, not through a `Value`: this is every SSE and WebSocket delivery. A live frame
/// from the topic's shared cache is written once and its text copied to every subscriber.
pub fn write_frame(out: &mut String, f: &proto::Frame, extras: FrameExtras<'_>) {
    out.push('{');
    if let Some(topic) = extras.topic {
        // Topic names are [A-Za-z0-9._-]: nothing to escape.
        out.push_str("\"topic\":\"");
        out.push_str(topic);
        out.push_str("\",");
    }
    let shared = match extras.live {
        Some(true) => f.shared_json(|f| {
            let mut s = String::with_capacity(json_len_estimate(f.payload.len()));
            write_fields(&mut s, f, Some(true));
            s
        }),
        _ => None,
    };
    match shared {
        Some(text) => out.push_str(text),
        None => write_fields(out, f, extras.live),
    }
    if let Some(cursor) = extras.cursor {
        // Cursor tokens are base64url: nothing to escape.
        out.push_str(",\"cursor\":\"");
        cursor.write(out);
        out.push('"');
    }
    out.push('}');
}

/// The frame's own fields, without braces.
fn write_fields(out: &mut String, f: &proto::Frame, live: Option<bool>) {
    let mut n = itoa::Buffer::new();
    out.push_str("\"seq_no\":\"");
    out.push_str(n.format(f.seq_no));
    out.push_str("\",\"timestamp\":\"");
    out.push_str(n.format(f.timestamp));
    out.push_str("\",\"offset\":\"");
    out.push_str(n.format(f.offset));
    out.push_str("\",");
    match live {
        Some(true) => out.push_str("\"live\":true,"),
        Some(false) => out.push_str("\"live\":false,"),
        None => {}
    }
    out.push_str("\"payload\":\"");
    STANDARD.encode_string(&f.payload, out);
    out.push('"');
    if let Ok(text) = std::str::from_utf8(&f.payload) {
        out.push_str(",\"text\":");
        // Escaping a str into JSON cannot fail.
        let _ = serde_json::to_writer(StringWriter(out), text);
    }
}

/// A frame as a `Value` (History pages).
pub fn frame(f: &proto::Frame) -> Value {
    let mut s = String::with_capacity(f.payload.len() * 2 + 96);
    write_frame(&mut s, f, FrameExtras::default());
    serde_json::from_str(&s).unwrap_or(Value::Null)
}

/// A `HistoryPage`.
pub fn history_page(p: &proto::HistoryPage) -> Value {
    json!({
        "frames": p.frames.iter().map(frame).collect::<Vec<_>>(),
        "next": p.next,
        "more": p.more,
        "snapshot_offset": p.snapshot_offset.to_string(),
        "epoch": p.epoch.to_string(),
    })
}

/// At most how many bytes [`history_page`] of `p` takes as JSON: a payload as base64 (4/3)
/// and as text escaped at most 6 bytes a byte, and room for each frame's other fields.
pub fn history_page_bound(p: &proto::HistoryPage) -> usize {
    let frames: usize = p
        .frames
        .iter()
        .map(|f| f.payload.len().saturating_mul(8).saturating_add(256))
        .sum();
    frames.saturating_add(p.next.len()).saturating_add(256)
}

/// A `BroadcastAck`.
pub fn broadcast_ack(a: &proto::BroadcastAck) -> Value {
    let acks: Vec<Value> = a
        .acks
        .iter()
        .map(|t| json!({"topic": t.topic, "ack": t.ack.as_ref().map(ack)}))
        .collect();
    json!({ "acks": acks })
}

/// `io::Write` into a `String` (serde_json writes valid UTF-8).
struct StringWriter<'a>(&'a mut String);

impl std::io::Write for StringWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0.push_str(text);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A payload given in JSON: `"payload"` in base64, or `"text"`.
#[derive(Debug, Default, Deserialize)]
pub struct Payload {
    /// Base64 (standard or URL-safe alphabet, padding optional).
    #[serde(default)]
    pub payload: Option<String>,
    /// UTF-8 text, stored as is.
    #[serde(default)]
    pub text: Option<String>,
}

impl Payload {
    /// The payload's bytes: exactly one of `payload` and `text` may be given (neither: empty).
    pub fn bytes(self) -> Result<Bytes, Error> {
        match (self.payload, self.text) {
            (Some(_), Some(_)) => Err(Error::InvalidArgument(
                "give the payload as \"payload\" (base64) or \"text\", not both".into(),
            )),
            (Some(b64), None) => decode_base64(&b64)
                .map(Bytes::from)
                .ok_or_else(|| Error::InvalidArgument("\"payload\" is not valid base64".into())),
            (None, Some(text)) => Ok(Bytes::from(text.into_bytes())),
            (None, None) => Ok(Bytes::new()),
        }
    }
}

/// Base64 in either alphabet, with or without padding (proto3 JSON accepts both).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = s.trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}

/// The body of `POST /v1/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    /// Topic names or patterns.
    pub topics: Vec<String>,
    /// The frame's seq_no.
    #[serde(default, deserialize_with = "uint64")]
    pub seq_no: u64,
    /// Base64 payload.
    #[serde(default)]
    pub payload: Option<String>,
    /// Or the payload as text.
    #[serde(default)]
    pub text: Option<String>,
    /// Nanoseconds since the Unix epoch; 0 = receive time.
    #[serde(default, deserialize_with = "int64")]
    pub timestamp: i64,
    /// Stored with each topic's frame.
    #[serde(default)]
    pub idempotency_key: String,
}

impl BroadcastBody {
    /// The request it stands for.
    pub fn into_request(self) -> Result<proto::BroadcastRequest, Error> {
        let payload = Payload {
            payload: self.payload,
            text: self.text,
        }
        .bytes()?;
        Ok(proto::BroadcastRequest {
            topics: self.topics,
            seq_no: self.seq_no,
            payload,
            timestamp: self.timestamp,
            idempotency_key: self.idempotency_key,
        })
    }
}

/// A proto3 JSON `int64`: a decimal string or a number.
pub fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(i64),
        Text(String),
    }
    match Wire::deserialize(d)? {
        Wire::Number(n) => Ok(n),
        Wire::Text(s) => s
            .parse()
            .map_err(|_| de::Error::custom(format!("'{s}' is not an integer"))),
    }
}

/// The body of `PUT /v1/topics/{topic}`: the settings of `CreateTopicRequest` (absent
/// fields are 0, "keep everything").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Frames older than this may be removed (0 = keep).
    #[serde(default, deserialize_with = "uint64")]
    pub retention_max_age_seconds: u64,
    /// Stored bytes above this may be removed (0 = no limit).
    #[serde(default, deserialize_with = "uint64")]
    pub retention_max_bytes: u64,
}

/// A proto3 JSON `uint64`: a decimal string or a number.
pub fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Number(u64),
        Text(String),
    }
    match Wire::deserialize(d)? {
        Wire::Number(n) => Ok(n),
        Wire::Text(s) => s
            .parse()
            .map_err(|_| de::Error::custom(format!("'{s}' is not a non-negative integer"))),
    }
}

/// The largest JSON message that carries a payload of `max_frame_bytes` plus `overhead`
/// bytes of other fields: six bytes per payload byte, so that every payload the server takes
/// fits however it is written — as `text` with every byte escaped (`\u0007`: 6 bytes; an
/// encoder escaping non-ASCII, as Python's `json.dumps` does, up to 3) or as base64 (4/3).
/// Bounds what one WebSocket message or one broadcast body may hold in memory.
pub fn max_json_message(max_frame_bytes: u64, overhead: usize) -> usize {
    usize::try_from(max_frame_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(6)
        .saturating_add(overhead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_strings_or_numbers() {
        let s: TopicSettings = serde_json::from_str(
            r#"{"retention_max_age_seconds":"3600","retention_max_bytes":10}"#,
        )
        .unwrap_or_default();
        assert_eq!(s.retention_max_age_seconds, 3600);
        assert_eq!(s.retention_max_bytes, 10);
        assert!(serde_json::from_str::<TopicSettings>(r#"{"retention_max_bytes":"-1"}"#).is_err());
        assert!(serde_json::from_str::<TopicSettings>(r#"{"retention":1}"#).is_err());
    }

    #[test]
    fn frames_carry_base64_and_text_when_utf8() {
        let f = proto::Frame::new(7, Bytes::from_static(b"hi \"you\"\n"), 9, 3);
        let v = frame(&f);
        assert_eq!(v["seq_no"], "7");
        assert_eq!(v["offset"], "3");
        assert_eq!(v["payload"], STANDARD.encode(b"hi \"you\"\n"));
        assert_eq!(v["text"], "hi \"you\"\n");
        let binary = proto::Frame::new(1, Bytes::from_static(&[0xff, 0]), 1, 0);
        assert!(frame(&binary).get("text").is_none());
        let mut s = String::new();
        let token = CursorWriter::new(crate::broker::CursorToken {
            start_seq_no: 1,
            snapshot: 2,
            epoch: 3,
            last: None,
            reverse: false,
            floor: None,
        });
        let extras = FrameExtras {
            topic: Some("t"),
            live: Some(true),
            cursor: Some(&token),
        };
        write_frame(&mut s, &binary, extras);
        let v: Value = serde_json::from_str(&s).unwrap_or(Value::Null);
        assert_eq!(
            (
                v["topic"].as_str(),
                v["live"].as_bool(),
                v["cursor"].as_str()
            ),
            (Some("t"), Some(true), Some(token.walk().encode().as_str()))
        );
    }

    #[test]
    fn a_shared_live_frame_writes_what_a_plain_one_does() {
        let payloads: [&[u8]; 5] = [
            b"",
            b"hi \"you\"\n",
            &[0xff, 0],
            &[b'a'; 1000],
            "é\u{1}".as_bytes(),
        ];
        for p in payloads {
            for (seq_no, ts, off) in [(0u64, 1i64, 0u64), (7, 1_700_000_000_000_000_000, u64::MAX)]
            {
                let shared = proto::Frame::encoded(seq_no, p, ts, off);
                let plain = proto::Frame::new(seq_no, Bytes::copy_from_slice(p), ts, off);
                for extras in [
                    FrameExtras {
                        live: Some(true),
                        ..FrameExtras::default()
                    },
                    FrameExtras {
                        topic: Some("room.1"),
                        live: Some(true),
                        ..FrameExtras::default()
                    },
                    FrameExtras {
                        live: Some(false),
                        ..FrameExtras::default()
                    },
                    FrameExtras::default(),
                ] {
                    let (mut a, mut b) = (String::new(), String::new());
                    write_frame(&mut a, &shared, extras);
                    write_frame(&mut b, &plain, extras);
                    assert_eq!(a, b);
                    // Twice: the second write copies the shared text.
                    let mut again = String::new();
                    write_frame(&mut again, &shared.clone(), extras);
                    assert_eq!(again, b);
                    let v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
                    assert_eq!(v["offset"], off.to_string());
                    assert_eq!(v["payload"], STANDARD.encode(p));
                }
            }
        }
    }

    #[test]
    fn payloads_in_either_base64_alphabet_or_text() {
        let p = |payload: Option<&str>, text: Option<&str>| {
            Payload {
                payload: payload.map(str::to_string),
                text: text.map(str::to_string),
            }
            .bytes()
        };
        assert_eq!(
            p(Some("+/8="), None).ok(),
            Some(Bytes::from_static(&[0xfb, 0xff]))
        );
        assert_eq!(
            p(Some("-_8"), None).ok(),
            Some(Bytes::from_static(&[0xfb, 0xff]))
        );
        assert_eq!(p(None, Some("hé")).ok(), Some(Bytes::from("hé")));
        assert!(p(Some("!"), None).is_err());
        assert!(p(Some("aA=="), Some("x")).is_err());
    }

    #[test]
    fn sixty_four_bit_figures_are_strings() {
        let v = ack(&proto::PublishAck {
            offset: u64::MAX,
            timestamp: 5,
            duplicate: true,
        });
        assert_eq!(v["offset"], "18446744073709551615");
        assert_eq!(v["timestamp"], "5");
        assert_eq!(v["duplicate"], true);
    }
}
