//! framecast: a durable broadcast server.
//!
//! Producers publish frames (a client-chosen `seq_no`, a payload, a timestamp) to a topic;
//! the server appends each to its own CRC'd, memory-mapped segment log, indexes it by
//! `(seq_no, timestamp, offset)`, and streams it to subscribers: first the history in that
//! order, then live frames in offset order, with no gap and no duplicate between the two.
//!
//! # Layout
//!
//! - [`wal`]: the log of one topic. `format` (every on-disk constant), `record` (the
//!   record codec), `segment` (one mapped file; the only `unsafe`), `log` (group commit,
//!   fsync policy, durable frontier, reads), `recovery` (scan, torn-tail cut), `dedup`
//!   (idempotency window).
//! - [`index`]: the in-memory order index and offset map, fed by the log and recovery.
//! - [`server`]: the gRPC server. `config` (flags and their parsing), `topics` (the topic
//!   registry and metadata), `service` (the RPCs), `subscription` (the replay→live cursor),
//!   `shutdown` (the one shutdown signal), `run` (startup, serve, drain), `error` (the one
//!   mapping to gRPC status codes).
//! - [`client`]: the Rust client: publish with never-duplicate retries, pipelined
//!   [`client::Publisher`], and a subscription stream that resumes exactly after a break.
//! - [`proto`]: the generated wire types.
//! - [`dump`]: the `framecast dump` inspector, which reads segment files only.

pub mod client;
pub mod dump;
pub mod index;
pub mod proto;
pub mod server;
pub mod wal;
