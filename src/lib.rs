//! framecast: a durable broadcast server.
//!
//! Producers publish frames (a client-chosen `seq_no`, a payload, a timestamp) to a topic;
//! the server appends each to its own CRC'd, memory-mapped segment log, indexes it by
//! `(seq_no, timestamp, offset)`, and streams it to subscribers: first the history in that
//! order, then live frames in offset order, with no gap and no duplicate between the two.
//!
//! # Layout
//!
//! - [`wal`]: the log of one topic. `format` (every on-disk constant), `record` (the record
//!   codec and the one record walker), `segment` (one mapped file; the only `unsafe`),
//!   `config` (settings, fsync policy, retention), `frame` (values appended and read back,
//!   and the one publish check), `log` (open, append, close), `commit` (group commit, the
//!   fsync policy, the durable frontier), `committers` (the process's bounded pool of
//!   threads that runs every log's commits, and its clock for sync deadlines), `state` (the
//!   in-memory index and where records are), `read` (range and ordered reads, figures),
//!   `recovery` (scan, torn-tail cut), `dedup` (idempotency window), `run` (sorted runs),
//!   `compact` (compaction and retention), `removals` (what retention removed, pass by
//!   pass), `manifest` (what a compaction committed),
//!   `mappings` (the kernel's limit on memory mappings: the budget kept under it, and the
//!   words for a refusal), `failpoint` (crash injection).
//! - [`index`]: the in-memory order index and offset map, fed by the log and recovery.
//! - [`broker`]: the one transport-neutral core behind every front door: `core` (publish,
//!   subscribe and topic operations with their validation and authorization), `history`
//!   (History pages over a fixed snapshot), `broadcast` (one frame to many topics),
//!   `cluster_view` (the cluster as this node sees it: Cluster, WatchCluster, positions),
//!   `cursor` (cursor tokens: the resume points of SSE, WebSocket and History), `topics`
//!   (the registry, metadata and name rules), `terms` (each topic's term history and the
//!   divergence rule), `subscription` (the replay→live cursor),
//!   `frame_cache`, `shutdown` (the one shutdown signal), `last_fsync`, `error` (the one
//!   error enum and its codes), `pattern`, `principal` and `token` (JWT verification),
//!   `metrics` and `process` (the Prometheus registry).
//! - [`server`]: the server process. `config` (settings and their parsing), `service` (the
//!   gRPC door, which also answers gRPC-Web), `tls` (certificates and the TLS acceptor every listener shares),
//!   `connections` (`--max-connections`, one count for both listeners), `maintenance` (retention
//!   and compaction in the background), `readiness` (whether this node serves reads: the
//!   `framecast.reads` gRPC health status), `run` (startup, serve, drain), `repair`, `status`
//!   (the one mapping to gRPC status codes), `too_large` (an undecodable unary message
//!   answered `INVALID_ARGUMENT`), `gate` (checks on a call's head before its message is
//!   read: with auth on, a valid token; with auth off, a web page's origin), `held_pages` (a
//!   History answer holds its room among the server's pages until it is written).
//! - [`http`]: the HTTP door (`--http-listen`): `door` (shared state, health phase), `routes`
//!   (REST publish, topics, History, Broadcast, `/metrics`, `/healthz`, `/readyz`), `sse` (Server-Sent
//!   Events with exact resume), `ws` (WebSocket), `console` (the embedded web console),
//!   `cors` (`--cors-origin`, for both doors), `origin` (other sites' pages refused),
//!   `caller` (bearer tokens), `json` (proto3-JSON
//!   bodies), `error` (the HTTP status table), `listener` (accepted connections for axum).
//! - [`client`]: the Rust client: `handle` (connection, unary publish with never-duplicate
//!   retries, topics), `publisher` (pipelined [`client::Publisher`]), `subscription` (a
//!   stream that resumes exactly after a break), `history` (pages of stored frames),
//!   `nodes` (several addresses, the leader hint), `followers` (which follower a
//!   subscription reads from with [`client::ReadFrom::Followers`]), `coalesce` (concurrent
//!   publishes over one stream), `watch` (the cluster's changes, moving on to another node
//!   when the one watched goes away), `compression`, `credentials` (token and TLS
//!   settings), `retry`, `error`.
//! - [`cluster`]: the cluster (v1.1), coordinated through etcd: `etcd` (the typed etcd
//!   client: leases and their keeper, KV, watches, the election, fenced writes),
//!   `membership` (nodes registered under their leases, online/offline events), `insync`
//!   (the leader's bookkeeping of followers, commit points and the in-sync set), `leader`
//!   and `follower` (the `Follow` replication stream), `watches` (every topic's frontiers
//!   at once), `node` (a node's life: register, follow, campaign, lead), `repeats` (a
//!   failure repeating at every reconnection logged once in a while).
//! - [`proto`]: the generated wire types and the metadata names; its `Frame` is written by
//!   hand (`wire_frame`) so that a frame can carry its encoding, shared by all subscribers.
//! - [`dump`]: the `framecast dump` inspector, which reads segment files only.
//!
//! The command-line tools (`publish`, `subscribe`, the `bench` load generator) belong to
//! the binary, `src/main.rs`, not to this library.

pub mod broker;
pub mod client;
pub mod cluster;
pub mod dump;
pub mod http;
pub mod index;
pub mod proto;
pub mod server;
pub mod wal;
mod wire_frame;
