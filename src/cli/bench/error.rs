//! The load generator's error type.

/// What stops a benchmark before it can report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not make a runnable scenario.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// The spawned server could not be started or stopped.
    #[error("spawned server: {0}")]
    Spawn(String),
    /// A connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// An RPC needed to set the run up failed.
    #[error("{what}: {status}")]
    Rpc {
        /// The step that failed.
        what: &'static str,
        /// The server's answer.
        status: tonic::Status,
    },
    /// Local I/O (temporary directory, runtime).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result of a benchmark step.
pub type Result<T, E = Error> = std::result::Result<T, E>;
