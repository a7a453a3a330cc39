//! Command-line tools built on the client: `publish`, `subscribe`, `history`, `topics`,
//! `cluster` (and `bench`), and `token`, which mints a token for them.

pub mod bench;
pub mod cluster;
mod connect;
pub mod history;
pub mod publish;
mod seq;
pub mod subscribe;
mod text;
pub mod token;
pub mod topics;

pub use text::{hex, payload_text};
