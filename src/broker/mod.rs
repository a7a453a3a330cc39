//! The broker: the one transport-neutral core behind every front door (gRPC, HTTP, SSE,
//! WebSocket, replication). Validation, authorization and metrics live here, once; a door
//! translates its protocol into these calls and their answers back, and nothing else.
//!
//! - `pattern`: topic patterns (`a.*`, `a.>`, `>`), compiled once and matched without
//!   allocating.
//! - `principal`: who is calling and what they may publish, subscribe to and administer.
//! - `token`: JWT verification (HS256, RS256, ES256) into a principal, its cache, and
//!   minting HS256 tokens.

pub mod pattern;
pub mod principal;
pub mod token;
