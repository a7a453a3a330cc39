//! The generated stubs of the nodes' replication protocol (`proto/replication.proto`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("framecast.replication.v1");
