//! Bodies in the proto3 JSON mapping, with the proto field names: 64-bit integers are
//! decimal strings, so a JavaScript client loses no precision.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::proto;

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
    })
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
fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
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
