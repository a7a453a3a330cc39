//! Command-line tools built on the client: `publish`, `subscribe` (and `bench`).

pub mod bench;
pub mod publish;
mod seq;
pub mod subscribe;
mod text;

pub use text::{hex, payload_text};
