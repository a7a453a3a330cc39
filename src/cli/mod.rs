//! Command-line tools built on the client: `publish`, `subscribe`, `topics` (and `bench`).

pub mod bench;
mod connect;
pub mod publish;
mod seq;
pub mod subscribe;
mod text;
pub mod topics;

pub use text::{hex, payload_text};
