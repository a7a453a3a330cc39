"""The exceptions of the framecast client.

Every failure a :class:`framecast.Client` call reports is a :class:`FramecastError`; no raw
``grpc.RpcError`` escapes. The gRPC status codes map as follows:

==========================  =========================
gRPC status                 exception
==========================  =========================
``INVALID_ARGUMENT``        :class:`InvalidArgument`
``NOT_FOUND``               :class:`NotFound`
``ALREADY_EXISTS``          :class:`AlreadyExists`
``OUT_OF_RANGE``            :class:`OutOfRange`
``FAILED_PRECONDITION``     :class:`EpochChanged`
``RESOURCE_EXHAUSTED``      :class:`ResourceExhausted`
``UNAVAILABLE`` and other   :class:`Unavailable` (after the retry budget is spent)
transient codes
a server certificate the    :class:`TlsRefused` (a :class:`Unavailable`; never retried)
client refuses
``RESOURCE_EXHAUSTED`` that :class:`Unavailable` (retried like ``UNAVAILABLE``, then
asks to "ask again later"   raised after the retry budget is spent)
``DATA_LOSS``               :class:`DataLoss`
``UNAUTHENTICATED``         :class:`Unauthenticated` (never retried)
``PERMISSION_DENIED``       :class:`PermissionDenied` (never retried)
anything else               :class:`ServerError`
==========================  =========================

A publish whose frame went out on a stream that broke before its ack, then was refused for
good on the stream opened again (``UNAUTHENTICATED``, ``NOT_FOUND``, ``PERMISSION_DENIED``,
...), raises :class:`FateUnknown` instead of the refusal: the broken stream may have stored
it.
"""

from __future__ import annotations

from typing import Any

import grpc

__all__ = [
    "FramecastError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "OutOfRange",
    "EpochChanged",
    "ResourceExhausted",
    "Unavailable",
    "TlsRefused",
    "DataLoss",
    "ServerError",
    "Unauthenticated",
    "PermissionDenied",
    "DeadlineExceeded",
    "FateUnknown",
    "ClientClosed",
    "ProtocolError",
    "SubscriptionCancelled",
    "from_rpc_error",
    "is_transient",
]


class FramecastError(Exception):
    """Base class of every error the client raises.

    Attributes:
        message: The server's (or the client's) description.
        code: The gRPC status code behind the error, when there was one.
        acks: For ``publish_many`` and ``run``: the acks (:class:`framecast.Ack`) received
            before the failure, in order; those frames are stored. Empty otherwise.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: grpc.StatusCode | None = code
        self.acks: list[Any] = []

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later (only :class:`Unavailable`)."""
        return False


class InvalidArgument(FramecastError, ValueError):
    """The server refused the request as malformed (bad topic name, negative timestamp,
    payload or idempotency key too large, ...). Nothing was written; retrying won't help."""


class NotFound(FramecastError):
    """The topic does not exist (auto-creation is off) or was deleted while in use."""


class AlreadyExists(FramecastError):
    """``create_topic`` for a topic that already exists with other settings."""


class OutOfRange(FramecastError):
    """Frames a subscription still needs were removed by retention, or a resume cursor lies
    beyond what the topic holds. The subscription cannot continue without a gap."""


class EpochChanged(FramecastError):
    """The topic was deleted and re-created while subscribed (its epoch changed): the
    subscription cannot continue exactly."""


class ResourceExhausted(FramecastError):
    """The server's subscriber limit (``--max-subscribers``) is reached: at a subscription's
    first open, or on a resume refused for two minutes (a resume waits it out, as the
    subscription's own old stream may still hold a slot). (A server-wide budget that asks
    to "ask again later", as History's page budget, is retried instead.)"""


class Unavailable(FramecastError):
    """The server could not be reached, or kept failing, within the retry budget.

    For a publish this means *unknown outcome*: the frame may or may not be stored (never
    twice). Publishing again with ``idempotency_key=error.idempotency_key`` within the
    server's dedup window (2 minutes by default) stores it exactly once: the server answers
    ``duplicate=True`` if the first send was stored.

    Attributes:
        attempts: How many attempts were made.
        idempotency_key: For ``publish`` and ``broadcast``: the key the frame was sent with;
            ``None`` for other calls (and for a publish given ``idempotency_key=""``).
    """

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        attempts: int = 0,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, code)
        self.attempts: int = attempts
        self.idempotency_key: str | None = idempotency_key

    @property
    def transient(self) -> bool:
        return True


class TlsRefused(Unavailable):
    """The client refused the server's certificate at the TLS handshake (not signed by
    ``ca_cert``, or by grpc's roots without it; issued for another name; expired). Never
    retried: a retry would be refused the same way. (A client given several addresses
    moves on to the next one instead, and raises this only when every address refused.)
    A :class:`Unavailable` for code that catches that, but not :attr:`transient`. (A
    server that refuses the client's own certificate, ``--tls-client-ca``, shows grpcio
    only a broken connection: that is retried and ends in :class:`Unavailable`.)"""

    @property
    def transient(self) -> bool:
        return False


class DataLoss(FramecastError):
    """The server found a damaged record."""


class ServerError(FramecastError):
    """Any other server answer (``INTERNAL``, ``UNIMPLEMENTED``, ...)."""


class Unauthenticated(ServerError):
    """No token, or one the server does not accept (malformed, bad signature, expired):
    a retry with the same token would be refused again."""


class PermissionDenied(ServerError):
    """The token is valid but does not allow this call (topic pattern, admin)."""


class DeadlineExceeded(FramecastError, TimeoutError):
    """A ``timeout`` given to a client call ran out.

    Attributes:
        idempotency_key: For a publish (or a broadcast): the key its frame was sent with.
            A publish that timed out may still be stored (a coalesced one is sent on after
            the call gave up, until the client's retry budget ends); publish again with
            ``idempotency_key=error.idempotency_key`` to store it exactly once. ``None``
            for other calls.
    """

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        super().__init__(message, code)
        self.idempotency_key: str | None = idempotency_key


class FateUnknown(FramecastError):
    """A published frame that may or may not be stored (never twice), though the server
    refused it: it had gone out on a ``PublishStream`` that broke before its ack, and the
    stream opened again to send it once more was refused for good (``UNAUTHENTICATED``
    with a fixed token, ``NOT_FOUND``, ``PERMISSION_DENIED``, ...). The server stores
    nothing at or past a refused request, but the broken stream may have stored it: so not
    the refusal, which would say it is not stored. Not :attr:`transient`: a retry would be
    refused alike (its key stores it once at most if it is then accepted).

    Raised by a coalesced ``publish`` (``Client(coalesce=True)``), by ``publish_many``
    (then for the frames from the one named in the message on, ``error.acks`` holding the
    acks before it), and by a keyed ``publish`` or ``broadcast`` whose attempt broke
    before its answer and whose retry was refused for good. Frames that went out only on streams refused for good keep the
    refusal, as does a frame refused as malformed (:class:`InvalidArgument`: the server
    checks that before writing, on every stream).

    Attributes:
        refusal: The refusal (:class:`NotFound`, :class:`PermissionDenied`, ...).
        idempotency_key: For a ``publish`` or ``broadcast``: the key the frame was sent
            with.
    """

    def __init__(
        self,
        refusal: FramecastError,
        idempotency_key: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(
            message
            or "stored or not (never twice): sent on a stream that broke before its ack, "
            f"then refused: {refusal.message}",
            refusal.code,
        )
        self.refusal: FramecastError = refusal
        self.idempotency_key: str | None = idempotency_key


class ClientClosed(FramecastError):
    """The client was closed while the call was in progress (or before it started)."""


class ProtocolError(FramecastError):
    """The server answered in a way the contract does not allow (e.g. a subscription
    without its snapshot metadata)."""


class SubscriptionCancelled(FramecastError, RuntimeError):
    """asyncio: a wait for a subscription's next frame was cancelled
    (``asyncio.wait_for(anext(sub), t)`` timing out, a cancelled task), which ended the
    subscription; the next ``anext`` (or ``async for``) raises this instead of going on.
    Nothing was lost: ``sub.cursor`` names the last frame returned, so
    ``client.frames(topic, cursor=sub.cursor)`` resumes exactly after it."""


_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

_BY_CODE: dict[grpc.StatusCode, type[FramecastError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.FAILED_PRECONDITION: EpochChanged,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: DataLoss,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


def _code_and_details(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    return code, details or ""


#: What grpcio's status details hold when the client refused the server's certificate
#: (BoringSSL's verify error, in the channel's "Tls handshake failed" report).
_CERTIFICATE_REFUSED = "CERTIFICATE_VERIFY_FAILED"
#: What a server-wide budget's ``RESOURCE_EXHAUSTED`` says (History's page budget): unlike
#: ``--max-subscribers``, it asks the client to try again.
_ASK_AGAIN_LATER = "ask again later"


def tls_refused(err: grpc.RpcError) -> bool:
    """True when the call failed because the client refused the server's certificate at the
    TLS handshake: a retry cannot cure that."""
    code, details = _code_and_details(err)
    return code == grpc.StatusCode.UNAVAILABLE and _CERTIFICATE_REFUSED in details


def is_transient(err: grpc.RpcError) -> bool:
    """True for statuses a retry (with the same idempotency key) can cure: the server was
    unreachable, restarting, shutting down, or the connection broke; or a server-wide
    budget was spent for a moment (``RESOURCE_EXHAUSTED`` saying "ask again later"). Not a
    server certificate the client refused."""
    code, details = _code_and_details(err)
    if code == grpc.StatusCode.UNAVAILABLE and _CERTIFICATE_REFUSED in details:
        return False
    if code in _TRANSIENT_CODES:
        return True
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _ASK_AGAIN_LATER in details:
        return True
    # A connection torn down mid-stream can surface as INTERNAL from the HTTP/2 layer.
    return code == grpc.StatusCode.INTERNAL and (
        "RST_STREAM" in details or "h2 protocol error" in details
    )


def from_rpc_error(err: grpc.RpcError, attempts: int = 0) -> FramecastError:
    """Maps a gRPC error to the package's exception (transient codes become
    :class:`Unavailable`)."""
    code, details = _code_and_details(err)
    message = f"{code.name}: {details}" if details else code.name
    if tls_refused(err):
        return TlsRefused(f"the server's certificate was refused: {message}", code, attempts)
    if is_transient(err):
        return Unavailable(message, code, attempts)
    return _BY_CODE.get(code, ServerError)(details or code.name, code)
