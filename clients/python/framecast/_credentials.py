"""What a client shows the server: a bearer token on every call, and TLS (a CA to trust,
optionally a client certificate). Shared by the blocking and the asyncio clients.

The token travels as ``authorization: Bearer <token>`` metadata, added by an interceptor
to every call, so it works over TLS and over plaintext alike (grpc's call credentials
refuse an insecure channel)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Union

import grpc
import grpc.aio

from . import errors

#: Where the token comes from when none is given.
TOKEN_ENV = "FRAMECAST_TOKEN"

#: A PEM given as a file path or as its bytes.
Pem = Union[str, "os.PathLike[str]", bytes]

#: What ``token=`` takes: a token, or a function returning the current one (asked once for
#: each new call, stream and reconnect, so a token about to expire can be replaced; it runs
#: in the caller's thread, on the event loop with asyncio, so it must be fast; its exception
#: propagates unchanged).
TokenSource = Union[str, Callable[[], str]]


def _checked(token: object) -> str:
    """``token`` stripped, if it can be a bearer token; else ``InvalidArgument``."""
    if not isinstance(token, str):
        raise errors.InvalidArgument(f"a token is a str, not {type(token).__name__}")
    token = token.strip()
    if not token:
        raise errors.InvalidArgument("the token is empty")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise errors.InvalidArgument(
            "the token has characters a bearer token cannot have (a JWT is printable ASCII "
            "without spaces)"
        )
    return token


class Token:
    """The token a client sends: a fixed one, or the one a provider (a function) returns
    now. Thread-safe as far as the provider is."""

    def __init__(self, source: TokenSource) -> None:
        self._source = source if callable(source) else _checked(source)

    @property
    def refreshes(self) -> bool:
        """True when a provider gives the token: an expired one may be replaced."""
        return callable(self._source)

    def current(self) -> str:
        """The token to send now (the provider is called; its error propagates)."""
        source = self._source
        return _checked(source()) if callable(source) else source

    def header(self) -> tuple[str, str]:
        """``authorization`` metadata with :meth:`current`."""
        return ("authorization", f"Bearer {self.current()}")


def resolve_token(token: TokenSource | None) -> Token | None:
    """``token``, else ``$FRAMECAST_TOKEN``; ``None`` when neither is set (or empty). A
    callable is kept as a provider, asked for each call."""
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    if token is None:
        return None
    if callable(token):
        return Token(token)
    if not isinstance(token, str):
        raise errors.InvalidArgument(
            f"token is a str or a function returning one, not {type(token).__name__}"
        )
    if not token.strip():
        return None
    return Token(token)


def read_pem(pem: Pem, what: str) -> bytes:
    """The bytes of a PEM given as bytes or as a path; an unreadable file, or one without a
    PEM block, is :class:`framecast.errors.InvalidArgument` naming it."""
    if isinstance(pem, bytes):
        data, name = pem, what
    else:
        path = Path(pem)
        name = f"{what} {path}"
        try:
            data = path.read_bytes()
        except OSError as e:
            raise errors.InvalidArgument(f"{name}: {e.strerror or e}") from e
    if b"-----BEGIN " not in data:
        raise errors.InvalidArgument(f"{name}: no PEM block in it")
    return data


def channel_credentials(
    tls: bool,
    ca_cert: Pem | None,
    client_cert: Pem | None,
    client_key: Pem | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when ``tls`` or a CA or client certificate is given, else ``None``
    (plaintext). Without ``ca_cert`` grpc's own root certificates are trusted."""
    if (client_cert is None) != (client_key is None):
        raise errors.InvalidArgument("client_cert and client_key go together")
    if not (tls or ca_cert is not None or client_cert is not None):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca_cert is None else read_pem(ca_cert, "ca_cert"),
        private_key=None if client_key is None else read_pem(client_key, "client_key"),
        certificate_chain=None if client_cert is None else read_pem(client_cert, "client_cert"),
    )


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncDetails(_Details, grpc.ClientCallDetails):  # type: ignore[misc]
    """``grpc.ClientCallDetails`` with the token added (grpc offers no constructor)."""


def _with_token(details: Any, token: Token) -> list[tuple[str, str]]:
    """The call's metadata with the token; a call that brings its own ``authorization``
    (a subscription, which must know the token it used) keeps it."""
    metadata = list(details.metadata or ())
    if not any(m[0] == "authorization" for m in metadata):
        metadata.append(token.header())
    return metadata


class BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the token to every call of a blocking channel (``grpc.intercept_channel``)."""

    def __init__(self, token: Token) -> None:
        self._token = token

    def _details(self, d: Any) -> Any:
        return _SyncDetails(
            d.method,
            d.timeout,
            _with_token(d, self._token),
            d.credentials,
            d.wait_for_ready,
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], d: Any, request: Any) -> Any:
        return continuation(self._details(d), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], d: Any, request: Any) -> Any:
        return continuation(self._details(d), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], d: Any, requests: Any
    ) -> Any:
        return continuation(self._details(d), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], d: Any, requests: Any
    ) -> Any:
        return continuation(self._details(d), requests)


def _aio_details(d: Any, token: Token) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        d.method, d.timeout, _with_token(d, token), d.credentials, d.wait_for_ready
    )


class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: Token) -> None:
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], d: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._token), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: Token) -> None:
        self._token = token

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], d: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._token), request)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: Token) -> None:
        self._token = token

    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], d: Any, requests: Any
    ) -> Any:
        return await continuation(_aio_details(d, self._token), requests)


def aio_interceptors(token: Token | None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors that add the token to every call of an asyncio channel (one per call
    kind the service has: unary, server streaming, bidirectional)."""
    if token is None:
        return []
    return [_AioUnaryUnary(token), _AioUnaryStream(token), _AioStreamStream(token)]


def blocking_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    token: Token | None,
    options: list[tuple[str, Any]],
    compression: grpc.Compression,
) -> tuple[grpc.Channel, grpc.Channel]:
    """A blocking channel, and the channel to call through (the same one, or it wrapped by
    the token's interceptor). Close the first."""
    if credentials is None:
        channel = grpc.insecure_channel(address, options=options, compression=compression)
    else:
        channel = grpc.secure_channel(
            address, credentials, options=options, compression=compression
        )
    if token is None:
        return channel, channel
    return channel, grpc.intercept_channel(channel, BearerInterceptor(token))


def aio_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    token: Token | None,
    options: list[tuple[str, Any]],
    compression: grpc.Compression,
) -> grpc.aio.Channel:
    """An asyncio channel with TLS when ``credentials`` and the token on every call."""
    interceptors = aio_interceptors(token)
    if credentials is None:
        return grpc.aio.insecure_channel(
            address, options=options, compression=compression, interceptors=interceptors
        )
    return grpc.aio.secure_channel(
        address, credentials, options=options, compression=compression, interceptors=interceptors
    )
