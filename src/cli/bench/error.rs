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
    /// The cluster did not get ready for the run (a node never copied the topic).
    #[error("cluster not ready: {0}")]
    NotReady(String),
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

/// What ends one subscriber's stream during a run: counted and sampled in the report, it
/// does not stop the run.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The gRPC call failed.
    #[error("{0}")]
    Grpc(#[from] tonic::Status),
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server answered something the bench cannot use (an HTTP status other than 200,
    /// a refused subscribe, a malformed message).
    #[error("{0}")]
    Refused(String),
    /// The server ended the stream with an error (SSE `event: error`, WebSocket `end`).
    #[error("ended by the server: {code}: {message}")]
    Ended {
        /// The error's code (`NOT_FOUND`, `UNAVAILABLE`, …).
        code: String,
        /// Its message.
        message: String,
    },
}
