//! `framecast bench`: a load generator a performance engineer can trust.
//!
//! - `args`: the scenarios and their flags.
//! - `payload`: the bytes every frame carries (publisher, counter, intended send time) and
//!   the per-subscriber check that counts frames missing, duplicated or out of order.
//! - `latency`: HDR histograms fed from the *intended* send time (coordinated omission
//!   corrected, as wrk2 does) and the pacer that fixes those times.
//! - `server`: `--spawn` (a `framecast serve` on a temporary data dir) and the sampling of
//!   a server process's CPU time and memory.
//! - `conn`: gRPC connections (one HTTP/2 connection per channel, many streams on each).
//! - `wire`: a connector that counts the bytes the bench's connections write and read.
//! - `pubsub`: the publish, fan-out and end-to-end scenarios (publishers and subscribers,
//!   the latter over any transport through one `Source`).
//! - `web`: subscribers on the HTTP door: Server-Sent Events (a small HTTP/1.1 client) and
//!   WebSocket, one connection each.
//! - `replay`: prefill a topic, then time subscribers reading it from the start.
//! - `topics`: many small topics: disk, memory, descriptors and threads, restart time.
//! - `progress`: live counters and the progress bar.
//! - `report`: the final table and `--json`.
//! - `run`: the entry point: runtime, fd limit, server, scenario, report, exit code.

mod args;
mod conn;
mod error;
mod latency;
mod payload;
mod progress;
mod pubsub;
mod replay;
mod report;
mod run;
mod server;
mod topics;
mod web;
mod wire;

pub use args::BenchArgs;
pub use run::main;
