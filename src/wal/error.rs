//! The storage layer's error type.

use std::path::{Path, PathBuf};

/// Result of a storage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file or directory.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk that are not what the format says they must be.
    #[error("corruption in {} at byte {position}: {reason}", file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte position of the damage inside the file.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A request the log refuses; nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The requested offset is no longer (or not yet) in the log.
    #[error("offset {requested} is out of range: the log holds offsets {first}..{next}")]
    OutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The oldest retained offset.
        first: u64,
        /// The next offset to be written.
        next: u64,
    },
    /// The log was closed, or failed and refuses appends until it is reopened.
    #[error("log unavailable: {0}")]
    Unavailable(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Corruption in `file` at `position`.
    pub fn corruption(file: &Path, position: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            file: file.to_path_buf(),
            position,
            reason: reason.into(),
        }
    }
}
