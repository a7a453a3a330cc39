//! The cluster (v1.1): nodes coordinate through etcd, and framecast implements no consensus
//! of its own. Membership lives under a lease each node keeps alive, the leader is chosen
//! with etcd's election API (the leader key's revision is the term), and the leader keeps
//! the in-sync set in etcd with writes fenced on its leadership.
//!
//! - [`etcd`]: the typed async etcd client for exactly what the cluster needs: leases and
//!   their keeper, KV, prefix watches, the election, and the fenced write.
//! - `etcd_proto`: the generated etcd v3 client stubs (`proto/etcd/`), used by `etcd` only.
//! - [`insync`]: the leader's bookkeeping of its followers: positions, commit points, who
//!   is in sync (pure state; `docs/cluster-design.md` says how the rest uses it).
//! - [`leader`]: the leader's `Follow` service: each follower's stream of topics, records
//!   and commit points, and the commit points its reports make.
//! - [`follower`]: the follower's side: one `Follow` stream applied in order, records
//!   appended byte for byte, its durable end reported.
//! - [`node`]: a node's life with `--cluster-etcd`: registered under a lease, following the
//!   elected leader, campaigning while in sync, leading (the in-sync set kept in etcd,
//!   writes refused below `--min-insync` or near the lease's end).
//! - [`repeats`]: a failure that repeats (a follower refused every 200 ms) logged once in a
//!   while, with how often it happened meanwhile.
//! - [`watches`]: waiting on every topic's frontiers at once.
//! - `replication_proto`: the generated stubs of `proto/replication.proto`.
//! - [`membership`]: this node's registration under its lease and the live map of every
//!   node (a watch of the latest map, and bounded online/offline events), re-listed after
//!   the etcd watch breaks.

pub mod etcd;
mod etcd_proto;
pub mod follower;
pub mod insync;
pub mod leader;
pub mod membership;
pub mod node;
pub mod repeats;
pub mod replication_proto;
pub mod watches;
