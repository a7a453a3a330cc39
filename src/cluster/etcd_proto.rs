//! The generated client stubs of the vendored etcd v3 protos (`proto/etcd/`): KV, Watch and
//! Lease from `etcdserverpb`, the Election service from `v3electionpb`, and `mvccpb`'s
//! key-value types they share.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
