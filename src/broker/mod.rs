//! The broker: the one transport-neutral core behind every front door (gRPC, HTTP, SSE,
//! WebSocket, replication). Validation, authorization and metrics live here, once; a door
//! translates its protocol into these calls and their answers back, and nothing else.
//!
//! - [`metrics`]: the metrics registry, its pre-resolved per-topic handles for the hot path,
//!   and the `/metrics` exposition.
//! - [`process`]: the standard `process_*` metrics, read from `/proc` at scrape time.

pub mod metrics;
pub mod process;
