//! The client's error type.

use tonic::Code;

/// What a client call can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The address is not a valid endpoint.
    #[error("invalid address '{0}'")]
    InvalidAddress(String),
    /// The server refused the request as malformed; retrying will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The topic does not exist (auto-creation off) or was deleted.
    #[error("not found: {0}")]
    NotFound(String),
    /// Frames the subscription needs were removed by retention, or a cursor is out of range.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The topic was deleted and re-created while subscribed: the stream cannot continue
    /// exactly.
    #[error("topic epoch changed: {0}")]
    EpochChanged(String),
    /// The server's subscriber limit is reached.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The server could not be reached or kept failing within the retry budget.
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The nodes kept naming another node as the leader and none of them took the write:
    /// a cluster still electing, or nodes whose advertised addresses lead back to each
    /// other (check `--advertise`).
    #[error(
        "no leader: followed {hops} leader hints in a row ({chain}) and no node took the write"
    )]
    NoLeader {
        /// Leader hints followed.
        hops: u32,
        /// The node first refused and every leader named since, `a -> b -> a`.
        chain: String,
    },
    /// The TLS handshake failed in a way a retry cannot cure: the server's certificate is
    /// not signed by the given CA or not for this host, or the server refused this client's
    /// certificate.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// Not sent: an earlier frame of the same publisher was refused, and a publisher made
    /// with [`crate::client::Client::publisher_until_refused`] sends nothing after a
    /// refusal (the server stored none of the frames behind it).
    #[error("not sent: {0}")]
    NotSent(String),
    /// A frame whose fate is unknown: it went out on a publish stream (or a unary publish or
    /// broadcast attempt) that broke before its ack, and the stream opened again (the
    /// retry) was refused for good (a token that expired, say), so it may be stored (once
    /// at most: its idempotency key went with it) or not. Never
    /// retried by the client; sending it again with its key, once the refusal is cured,
    /// stores it at most once.
    #[error("stored or not: it went out on a stream or attempt that broke, and the one after was refused: {refusal}")]
    FateUnknown {
        /// The refusal of the stream opened again.
        refusal: String,
    },
    /// A message larger than the receiver takes (gRPC's own limit, on this side or the
    /// server's): no retention or cursor matter, and sending it again will not help.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// Any other server answer (UNAUTHENTICATED and PERMISSION_DENIED among them: a
    /// missing, expired or insufficient token, never retried).
    #[error("server error {code:?}: {message}")]
    Server {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

/// Result of a client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when retrying the same request later may succeed (the server was unreachable,
    /// restarting or shutting down, or a cluster was electing its leader).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::NoLeader { .. })
    }
}

/// True for statuses a retry can cure. UNAUTHENTICATED and PERMISSION_DENIED are not among
/// them (the same token will be refused again), nor is a refused TLS certificate. A
/// `RESOURCE_EXHAUSTED` is only when the server says to ask again later (its History page
/// budget is full for now); its subscriber limit is not.
pub(crate) fn transient(status: &tonic::Status) -> bool {
    if tls_refused(status) {
        return false;
    }
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
            | Code::DeadlineExceeded
    ) || (status.code() == Code::Internal && status.message().contains("h2"))
        || (status.code() == Code::ResourceExhausted
            && status.message().contains(crate::proto::ASK_AGAIN_LATER))
}

/// True when the call failed before it reached any server: the connection was refused or
/// the host is unreachable. Such a call may be sent elsewhere even when it is not
/// idempotent.
pub(crate) fn unsent(status: &tonic::Status) -> bool {
    use std::io::ErrorKind as K;
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::AddrNotAvailable
            ) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// True when the call failed because a TLS handshake rejected a certificate, ours or the
/// server's. rustls's error sits inside an `io::Error`, whose `source()` skips it, so each
/// `io::Error` of the chain is looked into.
fn tls_refused(status: &tonic::Status) -> bool {
    use tokio_rustls::rustls::{AlertDescription as A, Error as TlsError};
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        let tls = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<TlsError>());
        match tls {
            Some(TlsError::InvalidCertificate(_) | TlsError::NoCertificatesPresented) => {
                return true
            }
            Some(TlsError::AlertReceived(
                A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::CertificateRequired
                | A::AccessDenied,
            )) => return true,
            _ => {}
        }
        next = e.source();
    }
    false
}

/// Why a call failed, for a person: the status message and its deepest cause (a transport
/// error's "tcp connect error" says little; "Connection refused (os error 111)" says it).
pub(crate) fn reason(s: &tonic::Status) -> String {
    let mut deepest: Option<&(dyn std::error::Error + 'static)> = None;
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        deepest = Some(e);
        next = e.source();
    }
    match deepest {
        Some(cause) if !s.message().contains(&cause.to_string()) => {
            format!("{} ({cause})", s.message())
        }
        _ => s.message().to_string(),
    }
}

/// Maps a final (non-transient) status to the client's error.
pub(crate) fn from_status(s: tonic::Status) -> Error {
    if tls_refused(&s) {
        return Error::Tls(reason(&s));
    }
    let msg = s.message().to_string();
    match s.code() {
        Code::InvalidArgument => Error::InvalidArgument(msg),
        Code::NotFound => Error::NotFound(msg),
        // gRPC's message size check answers OUT_OF_RANGE too; it is not about retention.
        Code::OutOfRange if too_large(&msg) => Error::TooLarge(msg),
        Code::OutOfRange => Error::OutOfRange(msg),
        Code::FailedPrecondition => Error::EpochChanged(msg),
        Code::ResourceExhausted => Error::ResourceExhausted(msg),
        code => Error::Server { code, message: msg },
    }
}

/// True for the message of gRPC's message size check (tonic's, on either side).
fn too_large(message: &str) -> bool {
    message.contains("message length too large")
}

#[cfg(test)]
mod tests {
    use super::{from_status, transient, Error};

    #[test]
    fn only_a_resource_exhausted_that_says_ask_again_later_is_retried() {
        let later = format!(
            "64 MiB of History pages are waiting; {}",
            crate::proto::ASK_AGAIN_LATER
        );
        assert!(transient(&tonic::Status::resource_exhausted(later)));
        let limit = tonic::Status::resource_exhausted("too many subscribers (limit 1)");
        assert!(!transient(&limit));
    }

    #[test]
    fn a_message_too_large_is_no_retention_error() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 70000000 bytes, the limit is: 67108864 bytes",
        );
        assert!(matches!(from_status(s), Error::TooLarge(_)));
        let s = tonic::Status::out_of_range("frames before seq_no 7 were removed by retention");
        assert!(matches!(from_status(s), Error::OutOfRange(_)));
    }
}
