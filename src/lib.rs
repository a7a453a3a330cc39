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
//! - [`dump`]: the `framecast dump` inspector, which reads segment files only.

pub mod dump;
pub mod index;
pub mod wal;
