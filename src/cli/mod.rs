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

/// What a client command fails with: the client's error, or its own output failing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The call failed (see [`framecast::client::Error`]).
    #[error(transparent)]
    Client(#[from] framecast::client::Error),
    /// Writing the output failed for another reason than its reader going away (a full
    /// disk, say): what was printed is incomplete.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

/// Result of a client command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether a write of the output went through: `Ok(true)` it did; `Ok(false)` its reader
/// went away (`… | head`: stop, which is no failure); [`Error::Output`] otherwise.
pub fn written(r: std::io::Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(Error::Output(e)),
    }
}
