//! The one error enum of every operation, and its status code (the gRPC code names are
//! the contract's vocabulary; each door maps a code to its own protocol).

use tonic::Code;

use crate::wal;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; nothing was written.
    #[error("{0}")]
    InvalidArgument(String),
    /// A payload over `--max-frame-bytes` (INVALID_ARGUMENT; HTTP answers it 413).
    #[error("payload of {size} bytes exceeds --max-frame-bytes {max}")]
    PayloadTooLarge {
        /// The payload's size (at least this many bytes, when it was not read whole).
        size: u64,
        /// `--max-frame-bytes`.
        max: u64,
    },
    /// The topic does not exist (and auto-creation is off, or it was deleted).
    #[error("topic '{0}' not found")]
    TopicNotFound(String),
    /// `CreateTopic` for a topic that exists with other settings.
    #[error("{0}")]
    AlreadyExists(String),
    /// A resume cursor from another epoch of the topic.
    #[error("epoch mismatch: cursor has {cursor}, topic '{topic}' has {current}")]
    EpochMismatch {
        /// The topic.
        topic: String,
        /// Epoch in the cursor.
        cursor: u64,
        /// The topic's epoch.
        current: u64,
    },
    /// A cursor or offset outside what the topic holds.
    #[error("{0}")]
    OutOfRange(String),
    /// `--max-subscribers` streams are open.
    #[error("too many subscribers (limit {0})")]
    TooManySubscribers(usize),
    /// A server-wide budget (of history pages waiting to be written, say) stayed spent
    /// while the call waited: RESOURCE_EXHAUSTED, to be asked again later.
    #[error("{0}")]
    Busy(String),
    /// No valid credentials: no token, a malformed one, a bad signature, expired.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the permission the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// The token of an open stream expired.
    #[error("token expired")]
    TokenExpired,
    /// The server is still recovering its topics.
    #[error("server starting: recovering topics")]
    Starting,
    /// The server is shutting down.
    #[error("server shutting down")]
    ShuttingDown,
    /// A write reached a cluster node that does not lead, or a read needs what this
    /// follower does not hold yet (a subscription to a topic it lacks: only the leader
    /// creates topics; a History page of such a topic; a resume cursor or History token
    /// past what it has copied, or of an epoch it does not hold).
    /// UNAVAILABLE, with the trailer `framecast-leader: <leader>` (HTTP: the
    /// `Framecast-Leader` header, naming the leader's HTTP door when it advertises one).
    #[error("{}not the leader{}", if lacks.is_empty() { String::new() } else { format!("this node does not hold {lacks} and is ") }, if leader.is_empty() { String::from(" (no leader elected yet)") } else { format!(": the leader is {leader}") })]
    NotLeader {
        /// What a read needs that this node does not hold (`topic 'T'`, or `topic 'T' up to
        /// offset N`); `""` for a write.
        lacks: String,
        /// The leader's advertised gRPC address, or `""` while there is none.
        leader: String,
        /// The leader's advertised HTTP door (`--advertise-http`), or `""`.
        leader_http: String,
    },
    /// The cluster cannot acknowledge writes now (too few in-sync members, or the leader's
    /// lease may have lapsed, or it stopped leading): UNAVAILABLE, without a leader hint.
    /// Refused before the write, nothing was written; refused after it reached this node's
    /// log, its fate is unknown (see `Broker::committed`): a retry with its idempotency key
    /// is safe either way.
    #[error("{0}")]
    NotWritable(String),
    /// A cursor names frames a cluster leader holds but has not committed yet (just after
    /// a failover, its commit point catches up within a replication round): UNAVAILABLE,
    /// to be asked again.
    #[error("{0}")]
    NotCommittedYet(String),
    /// A storage error.
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// A topic's log is damaged inside acknowledged data: startup stops, nothing is cut.
    #[error(
        "topic '{topic}': {source}; nothing was cut. With the server stopped, run \
         `framecast repair --data-dir {data_dir} --topic {topic}` to set the damaged bytes \
         aside and keep every valid frame at its offset (the topic gets a new epoch)"
    )]
    Damaged {
        /// The topic.
        topic: String,
        /// The data directory, as given to the server.
        data_dir: String,
        /// The corruption found (file and byte position).
        #[source]
        source: wal::Error,
    },
    /// `framecast repair` ran, but the topic still does not open (damage it cannot mend:
    /// a segment header or a sorted run).
    #[error(
        "topic '{topic}' still does not open after repair: {source} (repair mends records \
         of segments; a damaged segment header or sorted run must be restored from a copy)"
    )]
    NotRepaired {
        /// The topic.
        topic: String,
        /// Why it does not open.
        #[source]
        source: wal::Error,
    },
    /// Topic metadata could not be read or written.
    #[error("topic metadata {path}: {reason}")]
    Metadata {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result of a server operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The status code of this error, as API.md's error table gives it.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::PayloadTooLarge { .. } => Code::InvalidArgument,
            Error::TopicNotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::EpochMismatch { .. } => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::TooManySubscribers(_) | Error::Busy(_) => Code::ResourceExhausted,
            Error::Unauthenticated(_) | Error::TokenExpired => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::ShuttingDown
            | Error::Starting
            | Error::NotLeader { .. }
            | Error::NotWritable(_)
            | Error::NotCommittedYet(_) => Code::Unavailable,
            Error::Metadata { .. } => Code::Internal,
            Error::Damaged { .. } | Error::NotRepaired { .. } => Code::DataLoss,
            Error::Wal(w) => match w {
                wal::Error::InvalidArgument(_) => Code::InvalidArgument,
                wal::Error::OutOfRange { .. } => Code::OutOfRange,
                wal::Error::Io { .. } | wal::Error::Unavailable(_) => Code::Unavailable,
                wal::Error::Corruption { .. } => Code::DataLoss,
            },
        }
    }

    /// The lower-case name of [`Error::code`] (`permission_denied`), as metrics label it
    /// and the HTTP door's JSON spells it upper-case.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code())
    }
}

/// The lower-case gRPC name of `code`: `invalid_argument`, `not_found`, ...
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
