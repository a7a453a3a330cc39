"""framecast: Python client for the framecast durable broadcast server.

::

    from framecast import Client

    client = Client("localhost:7070")
    ack = client.publish(b"hello", seq_no=1, topic="prices")  # Ack(offset, timestamp, duplicate)
    for payload in client.subscribe(topic="prices", start=0):  # bytes
        ...
    for frame in client.frames(topic="prices", start=0):  # Frame(seq_no, payload, ..., live)
        ...
    page = client.history("prices", limit=50, reverse=True)  # newest first; page.next for more

Publishing never stores a frame twice (idempotency keys, retries with the same key);
subscriptions resume exactly after a disconnect or a server restart (on another node of a
cluster too; ``Client(nodes, read_from="followers")`` spreads them over the followers);
errors are the exceptions of :mod:`framecast.errors`. The asyncio flavour is
:class:`framecast.aio.Client`.
"""

from __future__ import annotations

from . import errors
from ._core import RetryPolicy
from .client import Client, Subscription
from .errors import (
    AlreadyExists,
    ClientClosed,
    DataLoss,
    DeadlineExceeded,
    EpochChanged,
    FateUnknown,
    FramecastError,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    ServerError,
    SubscriptionCancelled,
    Unauthenticated,
    TlsRefused,
    Unavailable,
)
from .types import (
    Ack,
    ClusterEvent,
    ClusterInfo,
    Cursor,
    Frame,
    HistoryPage,
    NodeInfo,
    TopicInfo,
    TopicPosition,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Subscription",
    "RetryPolicy",
    "Ack",
    "Frame",
    "HistoryPage",
    "TopicInfo",
    "Cursor",
    "ClusterEvent",
    "ClusterInfo",
    "NodeInfo",
    "TopicPosition",
    "errors",
    "FramecastError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "OutOfRange",
    "EpochChanged",
    "ResourceExhausted",
    "TlsRefused",
    "Unavailable",
    "DataLoss",
    "ServerError",
    "SubscriptionCancelled",
    "Unauthenticated",
    "PermissionDenied",
    "DeadlineExceeded",
    "FateUnknown",
    "ClientClosed",
    "ProtocolError",
]
