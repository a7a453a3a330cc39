//! The generated gRPC types and service stubs of `proto/framecast.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("framecast.v1");

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("framecast_descriptor");
