//! The generated gRPC types and service stubs of `proto/framecast.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("framecast.v1");

pub use crate::wire_frame::Frame;

/// Metadata key of the snapshot offset S sent at the start of a subscription.
pub const SNAPSHOT_OFFSET_HEADER: &str = "framecast-snapshot-offset";
/// Metadata key of the topic epoch sent at the start of a subscription.
pub const EPOCH_HEADER: &str = "framecast-epoch";
/// Metadata key naming the leader (`HOST:PORT`, its advertised gRPC address) on the
/// `UNAVAILABLE` a follower answers a write with; the clients retry there.
pub const LEADER_HEADER: &str = "framecast-leader";

/// The end of the message of a `RESOURCE_EXHAUSTED` that asks the client to send the same
/// request again after a wait (a History page while the server holds too many): the
/// clients retry such an answer, and only such a one.
pub const ASK_AGAIN_LATER: &str = "ask again later";

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("framecast_descriptor");
