//! The values a log takes and gives: frames to append, their acks, frames read back.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::config::LogConfig;
use super::format::MAX_KEY_LEN;
use super::record::encoded_len;
use super::{Error, Result};
use crate::index::OrderKey;

/// A frame to append.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewFrame {
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Nanoseconds since the Unix epoch; 0 = now.
    pub timestamp: i64,
    /// Idempotency key; empty for none.
    pub key: Bytes,
    /// The payload.
    pub payload: Bytes,
}

/// The ack of one appended frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The frame's offset.
    pub offset: u64,
    /// Its stored timestamp.
    pub timestamp: i64,
    /// True when the key was already stored: this is the first ack again.
    pub duplicate: bool,
    /// Payload bytes this request stored (0 for a duplicate, which stores nothing).
    pub payload_bytes: u32,
}

/// A frame read back from the log. The payload points into the segment mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFrame {
    /// Offset in the topic.
    pub offset: u64,
    /// Client-chosen sequence number.
    pub seq_no: u64,
    /// Stored timestamp.
    pub timestamp: i64,
    /// The payload, without a copy.
    pub payload: Bytes,
}

impl StoredFrame {
    /// The frame's order key.
    pub fn key(&self) -> OrderKey {
        OrderKey {
            seq_no: self.seq_no,
            timestamp: self.timestamp,
            offset: self.offset,
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Checks `frames` against the limits of `config` (API.md's error table) and gives a
/// timestamp of 0 the receive time `now`. The one check of a publish: the server calls it
/// before it creates a topic, the log again before it queues anything.
pub fn check_frames(config: &LogConfig, frames: &mut [NewFrame], now: i64) -> Result<()> {
    let max = config.max_frame_bytes;
    let mut total = 0u64;
    let many = frames.len() > 1;
    let at = |i: usize| {
        if many {
            format!("frame {i}: ")
        } else {
            String::new()
        }
    };
    for (i, f) in frames.iter_mut().enumerate() {
        if f.payload.len() > max {
            return Err(Error::InvalidArgument(format!(
                "{}payload of {} bytes exceeds --max-frame-bytes {max}",
                at(i),
                f.payload.len()
            )));
        }
        if f.key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidArgument(format!(
                "{}idempotency_key of {} bytes exceeds {MAX_KEY_LEN}",
                at(i),
                f.key.len()
            )));
        }
        if f.timestamp < 0 {
            return Err(Error::InvalidArgument(format!(
                "{}negative timestamp {}",
                at(i),
                f.timestamp
            )));
        }
        if f.timestamp == 0 {
            f.timestamp = now;
        }
        total += encoded_len(f.key.len(), f.payload.len()) as u64;
    }
    let room = config.request_room();
    if total > room {
        return Err(Error::InvalidArgument(format!(
            "a request of {total} bytes does not fit in one {room}-byte segment"
        )));
    }
    Ok(())
}
