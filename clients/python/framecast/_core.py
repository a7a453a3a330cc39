"""What the blocking and the asyncio clients share, free of I/O: retry policy and every retry
decision (retry or give up, how long to wait, which error to raise), idempotency keys,
request building (the resume cursor included), which node a subscription reads from, the
mapping of gRPC messages to the package's types. ``client.py`` and ``aio.py`` only do the
waiting and the calls."""

from __future__ import annotations

import copy
import itertools
import logging
import os
import random
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

import grpc

from . import errors
from ._proto import framecast_pb2 as pb
from ._credentials import Token
from .errors import from_rpc_error, is_transient
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

log = logging.getLogger("framecast")

#: Initial metadata key carrying the subscription's snapshot offset ``S``.
SNAPSHOT_OFFSET_HEADER = "framecast-snapshot-offset"
#: Initial metadata key carrying the topic's epoch.
EPOCH_HEADER = "framecast-epoch"
#: Longest idempotency key the server accepts, in bytes.
MAX_KEY_BYTES = 128
#: Default number of frames in flight on one ``PublishStream``.
DEFAULT_WINDOW = 1024
#: A subscription stream that lived this long (seconds) before breaking counts as progress:
#: its reconnect gets a fresh retry budget. (Streams that break sooner, and reconnects that
#: fail, spend one budget, so a server that keeps refusing ends in ``Unavailable``.)
STABLE_STREAM_SECONDS = 1.0
#: How long (seconds) a subscription that had a stream open goes on reconnecting while the
#: server answers ``RESOURCE_EXHAUSTED`` (too many subscribers), counted from the first
#: such answer since a stream was last opened: its own old stream, on a connection that
#: died without a close (half-open), still holds a subscriber slot until the server's
#: keepalive notices (about 40 s). Each such reconnect backs off and spends the retry
#: budget like any other failure; past this, the answer is final. (The Rust client's
#: ``BUSY_RETRY``, the JS client's ``BUSY_RETRY_MS``.)
BUSY_RETRY_SECONDS = 120.0

#: What ``publish_many`` / ``run`` accept per frame: ``(seq_no, payload)`` or
#: ``(seq_no, payload, timestamp)``.
FrameSpec = Union[tuple[int, bytes], tuple[int, bytes, int]]

#: The largest payload the client sends: its largest message (64 MiB, below) less room for
#: the other fields. The server's own limit (``--max-frame-bytes``, 4 MiB by default) is
#: lower unless raised; a payload over this one would fail locally, ending the stream it
#: shares with other calls and failing an innocent call in its place.
MAX_PAYLOAD_BYTES = (64 << 20) - (64 << 10)

#: Channel options: big messages, quick reconnects after a server restart (gRPC's default
#: reconnect backoff grows to two minutes), keepalive so a dead peer is noticed.
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.enable_retries", 0),
    # A connection of this client's own: grpcio otherwise shares one among every channel
    # to the same address in the process, and one client's subscriptions (a server takes
    # --max-streams-per-connection streams on a connection, 1,024 by default) would stall
    # every other client's calls.
    ("grpc.use_local_subchannel_pool", 1),
)


#: ``compression=`` values and the grpcio algorithm each stands for. grpcio has no zstd (the
#: server accepts it from other clients, e.g. the Rust one).
COMPRESSIONS: dict[str | None, grpc.Compression] = {
    None: grpc.Compression.NoCompression,
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
}
#: ``grpc.compression_enabled_algorithms_bitset`` bits (identity = 1 << 0, deflate = 1 << 1,
#: gzip = 1 << 2). They decide what the channel lists in ``grpc-accept-encoding``, and so
#: whether the server compresses its responses.
_ALGORITHM_BITS = {
    grpc.Compression.NoCompression: 1 << 0,
    grpc.Compression.Gzip: 1 << 2,
}


def compression_settings(
    compression: str | None,
) -> tuple[grpc.Compression, tuple[tuple[str, Any], ...]]:
    """The channel's compression and options for ``compression=`` (``None``/``"none"`` or
    ``"gzip"``; the server has no deflate, grpcio no zstd): requests are compressed with
    it, and the channel advertises only it (and identity), so the server compresses
    responses only when asked. Without compression the channel advertises identity alone
    (grpcio's default would list gzip, and the server would then compress every answer)."""
    key = compression.lower() if isinstance(compression, str) else compression
    if key == "zstd":
        raise errors.InvalidArgument(
            "compression='zstd' is not available in grpcio; use 'gzip' (the server accepts both)"
        )
    try:
        algorithm = COMPRESSIONS[key]
    except KeyError:
        raise errors.InvalidArgument(
            f"unknown compression {compression!r} (expected None, 'none' or 'gzip')"
        ) from None
    bits = _ALGORITHM_BITS[grpc.Compression.NoCompression] | _ALGORITHM_BITS[algorithm]
    return algorithm, (("grpc.compression_enabled_algorithms_bitset", bits),)


def normalize_address(addr: str) -> str:
    """``host:port`` from ``host:port``, ``http://host:port``, ``https://host:port`` or
    ``grpc://host:port`` (whether to use TLS is :func:`address_wants_tls`)."""
    for scheme in ("http://", "https://", "grpc://", "dns:///"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
            break
    addr = addr.rstrip("/")
    if not addr:
        raise errors.InvalidArgument("empty server address")
    return addr


def address_wants_tls(addr: str) -> bool:
    """True for an ``https://`` address."""
    return addr.startswith("https://")


def parse_addresses(address: str | Iterable[str]) -> tuple[list[str], bool]:
    """Every server address of ``address`` (one string, which may list several separated by
    commas, or an iterable of them) as ``host:port``, in order and without duplicates, and
    whether the channels are TLS (an ``https://`` address: then every address is, so that
    a leader named by a follower is reached the same way). A list mixing ``https://`` and
    ``http://`` addresses is :class:`framecast.errors.InvalidArgument`."""
    parts = [address] if isinstance(address, str) else list(address)
    found: list[str] = []
    schemes: set[bool] = set()
    for part in parts:
        if not isinstance(part, str):
            raise errors.InvalidArgument(f"a server address is a string, not {type(part).__name__}")
        for one in part.split(","):
            one = one.strip()
            if one.startswith(("http://", "grpc://")):
                schemes.add(False)
            elif address_wants_tls(one):
                schemes.add(True)
            addr = normalize_address(one)
            if addr not in found:
                found.append(addr)
    if not found:
        raise errors.InvalidArgument("no server address")
    if len(schemes) > 1:
        raise errors.InvalidArgument(
            "the addresses mix https:// and http://: a client is TLS to every node or to none"
        )
    return found, True in schemes


#: The trailing metadata key with which a follower refuses a write: the leader's address.
LEADER_HEADER = "framecast-leader"
#: How many ``framecast-leader`` hints in a row one call follows at once; after that (or
#: as soon as a hint names a node already passed through: nodes pointing at each other)
#: the call waits its backoff before the next attempt, like any transient failure, so
#: disagreeing nodes cost the retry budget rather than a busy loop.
MAX_LEADER_HOPS = 3
#: How many addresses learned from hints (beyond the configured ones) a client keeps.
MAX_LEARNED_ADDRESSES = 16


def leader_hint(err: grpc.RpcError | None) -> str | None:
    """The leader's ``host:port`` a follower named when refusing a write or a subscription
    to a topic it lacks (``UNAVAILABLE`` with the ``framecast-leader`` trailer), or
    ``None``."""
    if err is None:
        return None
    try:
        if err.code() != grpc.StatusCode.UNAVAILABLE:
            return None
        trailers = err.trailing_metadata() or ()
    except Exception:
        return None
    for key, value in trailers:
        if key.lower() != LEADER_HEADER:
            continue
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        value = value.strip()
        if not value or any(c.isspace() or c == "," for c in value):
            return None
        try:
            return normalize_address(value)
        except errors.InvalidArgument:
            return None
    return None


def never_sent(err: grpc.RpcError | None) -> bool:
    """True when the attempt failed because the channel could not connect at all: no server
    saw it, so sending it to another address is harmless even for a call that is not
    retried otherwise (``delete_topic``)."""
    if err is None:
        return False
    try:
        code, details = err.code(), err.details() or ""
    except Exception:
        return False
    return code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower()


class Nodes:
    """A client's server addresses (``host:port``) and the one calls go to now.

    Shared by every call of a client (thread-safe). A transient failure at the current
    address moves it on to the next (round robin); a follower's ``framecast-leader`` hint
    makes the leader current, learning its address if it was not configured. So once one
    call found the leader (or found a node dead), the others go there too.
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        if not addresses:
            raise errors.InvalidArgument("no server address")
        self._addresses = list(addresses)
        self._configured = len(self._addresses)
        self._current = 0
        self._lock = threading.Lock()

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every known address: the configured ones, then those learned from hints."""
        with self._lock:
            return tuple(self._addresses)

    @property
    def current(self) -> str:
        """The address calls go to now."""
        with self._lock:
            return self._addresses[self._current]

    def failed(self, address: str) -> None:
        """``address`` failed (unreachable, restarting): move on to the next address, unless
        another call already moved on from it."""
        with self._lock:
            if self._addresses[self._current] == address:
                self._current = (self._current + 1) % len(self._addresses)

    def follow(self, leader: str) -> None:
        """Make ``leader`` (a hint) the current address."""
        with self._lock:
            try:
                self._current = self._addresses.index(leader)
                return
            except ValueError:
                pass
            if len(self._addresses) - self._configured >= MAX_LEARNED_ADDRESSES:
                self._addresses.pop(self._configured)  # forget the oldest learned one
            self._addresses.append(leader)
            self._current = len(self._addresses) - 1


class Route:
    """Where the attempts of one call (or one stream's successive connections) go, and
    whether a failed attempt is followed at once by another one on the leader.

    ``next()`` gives the address of the next attempt (the client's current one);
    ``failed(err)`` records how it failed: a ``framecast-leader`` hint makes the leader
    current and says to retry at once (a refused write wrote nothing); a transient failure
    moves the client on to the next address, and the usual backoff applies.
    """

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        #: The address of the attempt in flight (the last ``next()``).
        self.address = nodes.current
        self._tried: set[str] = set()
        #: Addresses passed through by hints followed at once, in order.
        self._chain: list[str] = []
        #: The last chain of hints that was cut (a loop, or too many in a row).
        self.loop: list[str] = []
        #: Addresses whose certificate the client refused since the last progress.
        self._refused_tls: set[str] = set()

    def next(self) -> str:
        """The address for the next attempt."""
        self.address = self.nodes.current
        self._tried.add(self.address)
        return self.address

    def untried(self) -> bool:
        """True while a known address was not tried yet by this route."""
        return any(a not in self._tried for a in self.nodes.addresses)

    def progress(self) -> None:
        """The attempt delivered (an ack, a frame): hints start a fresh chain."""
        self._chain.clear()
        self._refused_tls.clear()

    def failed(self, err: grpc.RpcError | None) -> bool:
        """The attempt at :attr:`address` failed with ``err`` (``None``: a stream ended
        early). True: retry at once, on the leader ``err`` named. False: the usual decision
        applies (a transient failure: back off, and the next attempt goes to the next
        address).

        A server certificate the client refused: with several addresses, that node failed
        (True: the next address, at once; nothing was sent), until every known address
        refused; then (or with one address) False, and the refusal is final
        (:class:`framecast.errors.TlsRefused`)."""
        if err is not None and errors.tls_refused(err):
            self._refused_tls.add(self.address)
            addresses = self.nodes.addresses
            if any(a not in self._refused_tls for a in addresses):
                log.debug("certificate of %s refused; trying the next address", self.address)
                self.nodes.failed(self.address)
                return True
            return False
        hint = leader_hint(err)
        if hint is not None and hint != self.address:
            if not self._chain:
                self._chain.append(self.address)
            cut = hint in self._chain or len(self._chain) > MAX_LEADER_HOPS
            self._chain.append(hint)
            self.nodes.follow(hint)
            if not cut:
                log.debug("not the leader at %s: to %s", self.address, hint)
                return True
            self.loop = list(self._chain)
            self._chain.clear()
            log.debug("leader hints went round: %s", " -> ".join(self.loop))
            return False
        self._chain.clear()
        if hint is None and (err is None or is_transient(err) or _core_broke(err)):
            self.nodes.failed(self.address)
        return False

    def explain(self, error: errors.FramecastError) -> errors.FramecastError:
        """``error`` (the one a call gives up with), naming the loop of leader hints the
        call ran into, if it did."""
        if self.loop and isinstance(error, errors.Unavailable):
            error.message = (
                f"{error.message} (no leader found: the framecast-leader hints went "
                f"{' -> '.join(self.loop)})"
            )
            error.args = (error.message,)
        return error


#: ``read_from=`` value: subscriptions go where every call goes (the default).
READ_FROM_LEADER = "leader"
#: ``read_from=`` value: each subscription (and each resume of it) reads from a follower.
READ_FROM_FOLLOWERS = "followers"
#: Longest time (seconds) the ``Cluster`` call that picks a subscription's follower may
#: take; past it (or on any failure) the subscription reads through the usual route.
CLUSTER_LOOKUP_TIMEOUT = 5.0


def cluster_lookup_timeout(deadline: float | None) -> float:
    """How long the ``Cluster`` call before a subscription's stream may take: at most
    :data:`CLUSTER_LOOKUP_TIMEOUT`, never past the subscription's ``deadline``."""
    left = remaining(deadline)
    return CLUSTER_LOOKUP_TIMEOUT if left is None else min(CLUSTER_LOOKUP_TIMEOUT, left)


def check_read_from(read_from: str) -> str:
    """``read_from`` if it is ``"leader"`` or ``"followers"``; anything else is
    :class:`framecast.errors.InvalidArgument` (a ``ValueError``), as other bad constructor
    arguments are."""
    if read_from in (READ_FROM_LEADER, READ_FROM_FOLLOWERS):
        return read_from
    raise errors.InvalidArgument(
        f"unknown read_from {read_from!r} (expected {READ_FROM_LEADER!r} or "
        f"{READ_FROM_FOLLOWERS!r})"
    )


def follower_candidates(info: ClusterInfo) -> list[NodeInfo]:
    """The nodes of ``info`` a subscription may read from, sorted by id: the online,
    in-sync followers with an address (a follower out of the in-sync set refuses reads,
    naming the leader). Empty for a single node (which lists itself alone, as the
    leader)."""
    usable = [n for n in info.nodes if n.online and n.in_sync and not n.leader and node_address(n)]
    return sorted(usable, key=lambda n: n.id)


class FollowerPicker:
    """Which follower each subscription of one client reads from: round robin over the
    candidates (:func:`follower_candidates`), starting at a random index per client, so
    the subscriptions of many clients spread evenly over the followers. Thread-safe."""

    def __init__(self) -> None:
        self._next = random.randrange(1 << 16)
        self._lock = threading.Lock()

    def pick(self, info: ClusterInfo, avoid: str | None = None) -> NodeInfo | None:
        """The follower to read from next, or ``None`` when there is none. ``avoid``: the
        address of the node a stream just failed on, left out when another candidate
        exists."""
        candidates = follower_candidates(info)
        if avoid is not None and len(candidates) > 1:
            candidates = [n for n in candidates if node_address(n) != avoid] or candidates
        if not candidates:
            return None
        with self._lock:
            i = self._next
            self._next += 1
        return candidates[i % len(candidates)]


def node_address(node: NodeInfo) -> str:
    """``host:port`` of ``node`` (its advertised address, normalized like a configured one);
    ``""`` when it has none."""
    try:
        return normalize_address(node.address)
    except errors.InvalidArgument:
        return ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How transient failures (server unreachable, restarting, connection broken) are
    retried: exponential backoff with jitter, bounded in total time.

    Attributes:
        initial: First delay, seconds.
        max_delay: Largest delay, seconds.
        max_elapsed: Give up (raise :class:`framecast.errors.Unavailable`) once this many
            seconds passed without progress. Keep it below the server's dedup window
            (2 minutes by default) so a retried publish is never stored twice.
    """

    initial: float = 0.05
    max_delay: float = 2.0
    max_elapsed: float = 60.0


class Backoff:
    """The state of one retried operation. ``next_delay()`` says how long to sleep before
    the next attempt, or ``None`` when the budget is spent; the caller sleeps (with
    ``time.sleep`` or ``asyncio.sleep``).

    The budget (``policy.max_elapsed``) is counted from the first failure since the last
    progress (:meth:`reset`), so a long-lived stream that breaks after a quiet hour still
    gets its full budget.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.attempts = 0
        self._started: float | None = None
        self._next = policy.initial

    def next_delay(self, deadline: float | None = None) -> float | None:
        """The jittered delay before the next attempt, or ``None`` when the retry budget
        (or the caller's ``deadline``, a ``time.monotonic()`` value) is spent."""
        self.attempts += 1
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if now - self._started >= self.policy.max_elapsed:
            return None
        if deadline is not None and now >= deadline:
            return None
        ceiling = self._next
        self._next = min(self._next * 2, self.policy.max_delay)
        delay = random.uniform(ceiling / 2, ceiling)
        # Never sleep past the budget or the deadline: one last attempt happens at the end.
        delay = min(delay, max(0.0, self._started + self.policy.max_elapsed - now))
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - now))
        return delay

    def reset(self) -> None:
        """Starts over after progress."""
        self.attempts = 0
        self._started = None
        self._next = self.policy.initial


class KeySource:
    """Idempotency keys unique to one client: a random prefix and a counter. A process
    forked from the one that made the client (gunicorn ``--preload``, a ``multiprocessing``
    or Celery worker) draws a prefix of its own: with the parent's, every worker would make
    the same keys, and the server would answer each worker's frame as a retry of another's
    (``duplicate=True``) without storing it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        """A fresh key (at most 40 bytes)."""
        with self._lock:
            if os.getpid() != self._pid:
                self._start()
            n = next(self._counter)
            prefix = self._prefix
        return f"py-{prefix}-{n}"


def with_key(error: BaseException, key: str | None) -> BaseException:
    """``error`` naming the idempotency key of the publish (or broadcast) that failed with
    it, when it leaves the outcome unknown (:class:`framecast.errors.Unavailable`,
    :class:`framecast.errors.DeadlineExceeded`, :class:`framecast.errors.FateUnknown`); other errors (nothing was written) as they
    are. A copy when it names another key already: one error may fail several coalesced
    publishes, each with a key of its own."""
    if not key or not isinstance(
        error, (errors.Unavailable, errors.DeadlineExceeded, errors.FateUnknown)
    ):
        return error
    if error.idempotency_key not in (None, key):
        error = copy.copy(error)
    error.idempotency_key = key
    return error


def deadline_after(timeout: float | None) -> float | None:
    """A ``time.monotonic()`` deadline ``timeout`` seconds from now (``None``: no limit)."""
    return None if timeout is None else time.monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or ``None`` for no deadline."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def timed_out(
    what: str, timeout: float | None, key: str | None = None
) -> errors.DeadlineExceeded:
    """The error for a call whose own ``timeout`` ran out; ``key``: a publish's idempotency
    key, to publish it again exactly once."""
    return errors.DeadlineExceeded(
        f"{what}: timeout of {timeout} s exceeded", idempotency_key=key or None
    )


def attempt_timeout(call_timeout: float | None, deadline: float | None) -> float | None:
    """How long one attempt of a unary call may take: ``call_timeout``, never past the call's
    overall ``deadline``."""
    left = remaining(deadline)
    if call_timeout is None:
        return left
    return call_timeout if left is None else min(call_timeout, left)


class WriteFate:
    """The attempts of one keyed unary write (``Publish``, ``Broadcast``) so far: once one
    broke after it may have been stored (:func:`stream_may_have_stored`: a transient
    failure, not a connection never made nor a follower naming the leader), a later
    refusal for good does not say the write is not stored: it becomes
    :class:`framecast.errors.FateUnknown` (:func:`refused_fate`), naming ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.broke = False

    def failed(self, err: grpc.RpcError) -> None:
        """An attempt failed with ``err``."""
        if stream_may_have_stored(err):
            self.broke = True

    def ended(self, error: BaseException) -> BaseException:
        """What the write fails with when the call ends with ``error``."""
        return with_key(refused_fate(error, self.broke), self.key)

    def token_failed(self, error: BaseException) -> BaseException:
        """What the write fails with when its token provider failed with ``error``."""
        return with_key(token_fate(error, self.broke), self.key)


def unary_retry_delay(
    what: str,
    err: grpc.RpcError,
    backoff: Backoff,
    *,
    deadline: float | None,
    timeout: float | None,
    retry: bool = True,
    closed: bool = False,
    route: Route | None = None,
    fate: WriteFate | None = None,
) -> float:
    """After a failed attempt of the unary call ``what``: the delay before the next attempt,
    or raises the error to end the call with (the client closed, the call's own timeout
    over, a permanent error, or the retry budget spent), without the gRPC error as context.

    With a ``route``: 0 (retry at once) when a follower named the leader, even for a call
    not retried otherwise (a refused write wrote nothing); a call not retried otherwise is
    also sent on to an address it has not tried when this one could not be connected to.

    With a ``fate`` (a keyed write): the error is what :meth:`WriteFate.ended` makes of it,
    and this attempt's failure is counted for the next ones."""
    try:
        return _unary_retry_delay(
            what,
            err,
            backoff,
            deadline=deadline,
            timeout=timeout,
            retry=retry,
            closed=closed,
            route=route,
        )
    except errors.FramecastError as e:
        if fate is None:
            raise
        raise fate.ended(e) from None
    finally:
        if fate is not None:
            fate.failed(err)


def _unary_retry_delay(
    what: str,
    err: grpc.RpcError,
    backoff: Backoff,
    *,
    deadline: float | None,
    timeout: float | None,
    retry: bool,
    closed: bool,
    route: Route | None,
) -> float:
    """:func:`unary_retry_delay` without a ``fate``."""
    if closed:
        raise errors.ClientClosed(f"{what}: client closed") from None
    if deadline is not None and time.monotonic() >= deadline:
        raise timed_out(what, timeout) from None
    if route is not None:
        if route.failed(err):
            return 0.0
        if not retry and never_sent(err) and route.untried():
            retry = True
    if not retry or not is_transient(err):
        raise _explained(route, from_rpc_error(err, backoff.attempts + 1)) from None
    delay = backoff.next_delay(deadline)
    if delay is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise timed_out(what, timeout) from None
        raise _explained(route, from_rpc_error(err, backoff.attempts)) from None
    log.debug("%s: %s; retry %d in %.3f s", what, from_rpc_error(err), backoff.attempts, delay)
    return delay


def publish_stream_retry_delay(
    pipe: Pipeline,
    failure: grpc.RpcError | None,
    backoff: Backoff,
    *,
    deadline: float | None,
    timeout: float | None,
    closed: bool = False,
    route: Route | None = None,
) -> float | None:
    """After a ``PublishStream`` ended (``failure``: why, ``None`` when it just ended):
    ``None`` when ``pipe`` is finished, else the delay before a new stream re-sends the
    unacknowledged frames (0 when a follower named the leader: at once, there); raises
    ``pipe.fail(...)`` of the error to give up with."""
    if pipe.done:
        return None
    if closed:
        raise pipe.fail(errors.ClientClosed("publish_many: client closed"))
    if deadline is not None and time.monotonic() >= deadline:
        raise pipe.fail(timed_out("publish_many", timeout))
    if failure is None and pipe.source_error is not None and not pipe.unacked:
        return None  # the caller's iterable failed; finish() re-raises its error
    if route is not None and route.failed(failure):
        return 0.0
    if failure is not None and not is_transient(failure) and not _core_broke(failure):
        raise pipe.fail(from_rpc_error(failure))
    # A transient failure, or the stream ended with frames unacknowledged.
    pipe.broke(failure)
    delay = backoff.next_delay(deadline)
    log.debug(
        "publish_many: stream broken (%s), %d unacked; retry %d in %s s",
        "ended" if failure is None else from_rpc_error(failure),
        len(pipe.unacked),
        backoff.attempts,
        delay,
    )
    if delay is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise pipe.fail(timed_out("publish_many", timeout))
        why = (
            from_rpc_error(failure, backoff.attempts)
            if failure is not None
            else errors.Unavailable("publish stream ended early", None, backoff.attempts)
        )
        raise pipe.fail(_explained(route, why))
    return delay


def _explained(route: Route | None, error: errors.FramecastError) -> errors.FramecastError:
    return error if route is None else route.explain(error)


#: The topic name pattern of API.md (``""`` means ``default``).
TOPIC_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


#: How many shared streams coalesced publishes spread over (the Rust client's number). A
#: stream carries frames of any topic; a fixed number, not one per topic, because a stream
#: stays open while the client lives and a server takes at most
#: ``--max-streams-per-connection`` (1024) on one connection.
SHARED_STREAMS = 8


def shared_stream_of(topic: str) -> int:
    """The shared stream ``topic``'s coalesced publishes go by: always the same one, so one
    caller's publishes keep their order (``""`` is the topic ``default``: the same one)."""
    return zlib.crc32((topic or "default").encode()) % SHARED_STREAMS


def check_coalesced(req: pb.PublishRequest) -> None:
    """Refuses, as the server would, what the client can check itself, so that a coalesced
    frame never ends the stream it shares with other calls (a ``PublishStream`` ends at its
    first invalid request). The payload size limit is the server's setting: left to it."""
    if req.topic and not TOPIC_PATTERN.fullmatch(req.topic):
        raise errors.InvalidArgument(f"topic name {req.topic!r} does not match the pattern")
    if req.timestamp < 0:
        raise errors.InvalidArgument(f"negative timestamp {req.timestamp}")


def _unauthenticated(err: grpc.RpcError | None) -> bool:
    """True when ``err`` is ``UNAUTHENTICATED`` (a token refused, or expired under a stream)."""
    if err is None:
        return False
    try:
        return bool(err.code() == grpc.StatusCode.UNAUTHENTICATED)
    except Exception:
        return False


class FreshToken:
    """The token each stream of one subscription, or of one shared publish stream, is
    opened with, and its renewal: when the server ends a stream ``UNAUTHENTICATED`` (its
    token expired) and the client's token is a provider, :meth:`renew` asks it once for a
    fresh token, which the next stream is opened with. A refusal of that one too, before
    :meth:`accepted`, is final (as is a provider giving the same token again)."""

    def __init__(self, token: Token | None) -> None:
        self.token = token
        #: The token the current (or last) stream was opened with.
        self.used: str | None = None
        #: The fresh token :meth:`renew` got, for the next stream (the provider is called
        #: once per reconnect).
        self._fresh: tuple[str, str] | None = None
        #: A stream was re-opened for a fresh token and was not accepted yet: a refusal of
        #: that one is final.
        self.renewing = False

    @property
    def refreshes(self) -> bool:
        """True when a provider gives the token: an expired one may be replaced."""
        return self.token is not None and self.token.refreshes

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata to open the next stream with: the token the client's token (or
        provider) gives now, remembered to tell an expired token from a refused one. The
        provider's error propagates."""
        if self.token is None:
            return None
        header, self._fresh = self._fresh or self.token.header(), None
        self.used = header[1]
        return (header,)

    def renew(self, err: grpc.RpcError | None) -> bool:
        """True when ``err`` refused the stream's token (``UNAUTHENTICATED``: it expired)
        and the provider now gives another one, which the next stream is opened with (once:
        a refusal of the fresh one, before :meth:`accepted`, is final). The provider's
        error propagates."""
        if not self.refreshes or self.renewing or not _unauthenticated(err):
            return False
        assert self.token is not None
        header = self.token.header()
        if header[1] == self.used:
            return False
        self._fresh = header
        self.renewing = True
        return True

    def accepted(self) -> None:
        """The stream opened with the token works (it started, or acknowledged a frame):
        a later refusal is met with a fresh token again."""
        self.renewing = False


#: ``coalesced_stream_end`` actions.
FAIL_OLDEST = "fail_oldest"
RESEND = "resend"
FAIL_ALL = "fail_all"


def _core_broke(err: grpc.RpcError) -> bool:
    """grpcio's asyncio calls report a connection that broke mid-stream (the server was
    killed), or a refusal that raced a write, as ``INTERNAL: Internal error from Core``.
    Re-sending is safe (every frame keeps its key), so publishing streams treat it as
    transient rather than failing a call."""
    try:
        code, details = err.code(), err.details() or ""
    except Exception:
        return False
    return code == grpc.StatusCode.INTERNAL and "Internal error from Core" in details


def stream_may_have_stored(failure: grpc.RpcError | None) -> bool:
    """After a ``PublishStream`` ended with frames unacknowledged (``failure``: why;
    ``None``: it ended early): True when it may have stored some of them, so that a later
    refusal of a stream they are sent again on does not say they are not stored. A break
    (a transient failure) may have; a follower's refusal naming the leader, a connection
    never made, or a stream refused for good (nothing at or past the refused request is
    stored) did not."""
    if failure is None:
        return True
    if leader_hint(failure) is not None or never_sent(failure):
        return False
    return is_transient(failure) or _core_broke(failure)


class TokenFailure(Exception):
    """A token provider's failure (:attr:`error`: its exception, or the client's
    ``InvalidArgument`` for a token it cannot send), kept apart from a server's refusal:
    :func:`refused_fate` makes it stored-or-not after a break, whatever it is."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def token_fate(error: BaseException, maybe_stored: bool) -> BaseException:
    """What a write fails with when its token provider failed with ``error`` (raised, or
    gave a token the client cannot send): ``error`` as it is, unless ``maybe_stored`` (an
    earlier attempt or stream broke after it may have stored the write): then
    :class:`framecast.errors.FateUnknown`, its refusal an ``Unauthenticated`` caused by
    ``error`` (no token to send)."""
    if isinstance(error, TokenFailure):
        error = error.error
    if not maybe_stored or not isinstance(error, Exception):
        return error  # KeyboardInterrupt and the like stay
    if isinstance(error, (errors.ClientClosed, errors.FateUnknown)):
        return error
    refusal = errors.Unauthenticated(
        f"the token provider failed: {error!r}", grpc.StatusCode.UNAUTHENTICATED
    )
    refusal.__cause__ = error
    fate = errors.FateUnknown(refusal)
    fate.__cause__ = error
    return fate


def refused_fate(error: BaseException, maybe_stored: bool) -> BaseException:
    """What a published frame fails with when its stream is refused for good (``error``):
    the refusal, or :class:`framecast.errors.FateUnknown` when ``maybe_stored`` (it went
    out on an earlier stream that broke before its ack, which may have stored it). A token
    provider's own exception then becomes ``FateUnknown`` too (its refusal an
    ``Unauthenticated`` caused by it: no token to send). Errors that already leave the
    outcome open (``Unavailable``, ``DeadlineExceeded``) and a closed client stay as they
    are. So does
    ``InvalidArgument``: the server checks a request itself (its size, its topic name)
    before it writes anything, so no stream stored the frame it refuses as malformed.
    (grpcio's asyncio calls also report such a refusal that raced a write as a break,
    ``INTERNAL: Internal error from Core``: the frame goes again and is refused again.)"""
    if isinstance(error, TokenFailure):
        return token_fate(error.error, maybe_stored)
    if not maybe_stored:
        return error
    if not isinstance(error, errors.FramecastError):
        return token_fate(error, maybe_stored)
    if isinstance(
        error,
        (
            errors.Unavailable,
            errors.DeadlineExceeded,
            errors.ClientClosed,
            errors.FateUnknown,
            errors.InvalidArgument,
        ),
    ):
        return error
    return errors.FateUnknown(error)


def coalesced_stream_end(
    failure: grpc.RpcError | None,
    backoff: Backoff,
    *,
    closed: bool = False,
    route: Route | None = None,
    token: FreshToken | None = None,
) -> tuple[str, float | None, BaseException | None]:
    """After a shared ``PublishStream`` of coalesced ``publish()`` calls ended with frames
    unacknowledged: what to do, as ``(action, delay, error)``.

    - :data:`FAIL_OLDEST` with the error: the server refused a frame (a non-transient
      status). Acks come in order and the stream ends at the first invalid request, so the
      oldest unacknowledged frame is the refused one: only its call fails; the others are
      re-sent at once on a new stream, with their keys. (A frame that went out on an
      earlier stream which broke before its ack fails with
      :class:`framecast.errors.FateUnknown` instead: :func:`refused_fate`.)
    - :data:`RESEND` with a delay: a transient failure (or an early end); re-send every
      unacknowledged frame, with its key, after the delay.
    - :data:`FAIL_ALL` with the error: the client is closed or the retry budget is spent;
      every waiting call fails (for a publish: outcome unknown), and ``backoff`` starts
      over, so a later publish gets its own budget.

    With a ``route``, a follower's refusal naming the leader is :data:`RESEND` with delay 0
    (at once, to the leader).

    ``UNAUTHENTICATED`` (the stream's token expired, or was refused) with a ``token`` whose
    provider gives a fresh one (:meth:`FreshToken.renew`): :data:`RESEND` with delay 0, on a
    new stream opened with the fresh token; every frame keeps its key, so none is stored
    twice. When the provider has nothing fresher, or the fresh token is refused as well,
    :data:`FAIL_ALL` with ``Unauthenticated`` (no frame is at fault, and every waiting one
    would be refused alike); when the provider raises, :data:`FAIL_ALL` with its exception
    in a :class:`TokenFailure` (:func:`refused_fate` gives it back as it is, or
    stored-or-not for a frame that went out on a stream that broke). With a fixed token (no provider), the oldest call fails
    (:data:`FAIL_OLDEST`), as for any refusal.
    """
    if closed:
        return FAIL_ALL, None, errors.ClientClosed("publish: client closed")
    if token is not None and token.refreshes and _unauthenticated(failure):
        try:
            renewed = token.renew(failure)
        except Exception as e:  # the provider's own error, as it is
            token.accepted()  # a later publish gets a renewal of its own
            return FAIL_ALL, None, TokenFailure(e)
        if renewed:
            log.debug("publish stream: token refused (expired?); re-sending with a fresh one")
            return RESEND, 0.0, None
        token.accepted()  # the next refusal (of later publishes) is met with a fresh token
        assert failure is not None
        return FAIL_ALL, None, from_rpc_error(failure)
    if route is not None and route.failed(failure):
        return RESEND, 0.0, None
    if failure is not None and errors.tls_refused(failure):
        # Not one frame's fault: the server's certificate is refused for every one.
        return FAIL_ALL, None, from_rpc_error(failure)
    if failure is not None and not is_transient(failure) and not _core_broke(failure):
        return FAIL_OLDEST, None, from_rpc_error(failure)
    delay = backoff.next_delay()
    if delay is None:
        attempts = backoff.attempts
        # Every waiting call fails now: the calls that come later get a budget of their own,
        # counted from their first failure (not from this outage's).
        backoff.reset()
        if failure is not None:
            return FAIL_ALL, None, _explained(route, from_rpc_error(failure, attempts))
        return (
            FAIL_ALL,
            None,
            errors.Unavailable("publish stream ended early", None, attempts),
        )
    return RESEND, delay, None


def publish_request(
    topic: str, seq_no: int, payload: bytes, timestamp: int, key: str
) -> pb.PublishRequest:
    """Builds a ``PublishRequest``; client-side type and range errors become
    :class:`framecast.errors.InvalidArgument`. (Everything the server checks, such as a
    negative timestamp or a bad topic name, is left to the server.)"""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise errors.InvalidArgument(f"payload must be bytes, not {type(payload).__name__}")
    size = memoryview(payload).nbytes
    if size > MAX_PAYLOAD_BYTES:
        raise errors.InvalidArgument(
            f"payload of {size} bytes exceeds the client's largest, {MAX_PAYLOAD_BYTES} bytes "
            "(the server's --max-frame-bytes, 4 MiB by default, is lower still)"
        )
    topic_name_checked(topic)
    if not isinstance(key, str):
        raise errors.InvalidArgument(f"idempotency_key must be a str, not {type(key).__name__}")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise errors.InvalidArgument(
            f"idempotency_key of {len(key.encode())} bytes exceeds {MAX_KEY_BYTES}"
        )
    try:
        return pb.PublishRequest(
            seq_no=seq_no,
            payload=bytes(payload),
            timestamp=timestamp,
            topic=topic,
            idempotency_key=key,
        )
    except (ValueError, TypeError) as e:
        raise errors.InvalidArgument(f"invalid publish request: {e}") from None


def broadcast_request(
    topics: Sequence[str], seq_no: int, payload: bytes, timestamp: int, key: str
) -> pb.BroadcastRequest:
    """Builds a ``BroadcastRequest`` with :func:`publish_request`'s client-side checks;
    ``topics`` must be a list of names or patterns, not one string."""
    if isinstance(topics, (str, bytes)):
        raise errors.InvalidArgument("topics must be a list of names or patterns, not a string")
    one = publish_request("", seq_no, payload, timestamp, key)
    try:
        req = pb.BroadcastRequest(
            topics=list(topics),
            seq_no=one.seq_no,
            payload=one.payload,
            timestamp=one.timestamp,
            idempotency_key=one.idempotency_key,
        )
    except (ValueError, TypeError) as e:
        raise errors.InvalidArgument(f"invalid broadcast request: {e}") from None
    # The topic names count too (up to 10,000 of them).
    if req.ByteSize() > MAX_PAYLOAD_BYTES:
        raise errors.InvalidArgument(
            f"broadcast of {req.ByteSize()} bytes exceeds the client's largest message"
        )
    return req


def acks_from_pb(a: pb.BroadcastAck) -> dict[str, Ack]:
    """Each topic's :class:`Ack` of a broadcast, by topic name."""
    return {t.topic: ack_from_pb(t.ack) for t in a.acks}


def frame_requests(
    topic: str, frames: Iterable[FrameSpec], keys: KeySource
) -> Iterable[pb.PublishRequest]:
    """Lazily turns ``(seq_no, payload[, timestamp])`` tuples into requests, each with a
    fresh idempotency key."""
    for spec in frames:
        if len(spec) == 2:
            seq_no, payload = spec
            timestamp = 0
        elif len(spec) == 3:
            seq_no, payload, timestamp = spec
        else:
            raise errors.InvalidArgument(
                "a frame is (seq_no, payload) or (seq_no, payload, timestamp)"
            )
        yield publish_request(topic, seq_no, payload, timestamp, keys.next())


def subscribe_request(topic: str, start: int, cursor: Cursor | None) -> pb.SubscribeRequest:
    """Builds a ``SubscribeRequest``, with ``resume`` when ``cursor`` is given."""
    try:
        req = pb.SubscribeRequest(replay_seq_no_start=start, topic=topic)
        if cursor is not None:
            req.resume.CopyFrom(
                pb.Cursor(
                    snapshot_offset=cursor.snapshot_offset,
                    seq_no=cursor.seq_no,
                    timestamp=cursor.timestamp,
                    offset=cursor.offset,
                    epoch=cursor.epoch,
                )
            )
        return req
    except (ValueError, TypeError) as e:
        raise errors.InvalidArgument(f"invalid subscribe request: {e}") from None


def parse_subscription_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> tuple[int, int] | None:
    """``(snapshot_offset, epoch)`` from a subscription's initial metadata, or ``None``."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        found[key.lower()] = value
    try:
        return int(found[SNAPSHOT_OFFSET_HEADER]), int(found[EPOCH_HEADER])
    except (KeyError, ValueError):
        return None


def ack_from_pb(a: pb.PublishAck) -> Ack:
    """An :class:`Ack` from its message."""
    return Ack(offset=a.offset, timestamp=a.timestamp, duplicate=a.duplicate)


def frame_from_pb(f: pb.Frame, snapshot: int) -> Frame:
    """A :class:`Frame` from its message; ``live`` when ``offset >= snapshot``."""
    return Frame(
        seq_no=f.seq_no,
        payload=f.payload,
        timestamp=f.timestamp,
        offset=f.offset,
        live=f.offset >= snapshot,
    )


def history_request(
    topic: str, from_seq_no: int, limit: int | None, reverse: bool, after: str | None
) -> pb.HistoryRequest:
    """The ``History`` request of one page; ``InvalidArgument`` for a bad limit."""
    if limit is not None and not (isinstance(limit, int) and limit > 0):
        raise errors.InvalidArgument(f"limit must be a positive integer, not {limit!r}")
    if not isinstance(from_seq_no, int) or from_seq_no < 0:
        raise errors.InvalidArgument(f"from_seq_no must be a non-negative int, not {from_seq_no!r}")
    return pb.HistoryRequest(
        topic=topic,
        from_seq_no=from_seq_no,
        limit=limit or 0,
        reverse=reverse,
        after=after or "",
    )


def history_from_pb(p: pb.HistoryPage) -> HistoryPage:
    """A :class:`HistoryPage` from its message; ``ProtocolError`` for a page that says
    more frames follow and gives no token to read them."""
    if p.more and not p.next:
        raise errors.ProtocolError("a history page with more frames and no next token")
    return HistoryPage(
        # Every frame of a page is below its snapshot point: not live.
        frames=tuple(frame_from_pb(f, p.snapshot_offset) for f in p.frames),
        next=p.next,
        more=p.more,
        snapshot_offset=p.snapshot_offset,
        epoch=p.epoch,
    )


def topic_from_pb(t: pb.TopicInfo) -> TopicInfo:
    """A :class:`TopicInfo` from its message."""
    return TopicInfo(
        name=t.name,
        epoch=t.epoch,
        frames=t.frames,
        bytes=t.bytes,
        first_offset=t.first_offset,
        next_offset=t.next_offset,
        min_seq_no=t.min_seq_no,
        max_seq_no=t.max_seq_no,
        subscribers=t.subscribers,
        segments=t.segments,
    )


def cluster_from_pb(c: pb.ClusterInfo) -> ClusterInfo:
    """A :class:`ClusterInfo` from its message."""
    return ClusterInfo(
        term=c.term,
        leader=c.leader,
        nodes=tuple(
            NodeInfo(
                id=n.id,
                address=n.address,
                http_address=n.http_address,
                leader=n.leader,
                in_sync=n.in_sync,
                online=n.online,
                topics=tuple(
                    TopicPosition(
                        topic=t.topic, next_offset=t.next_offset, commit_offset=t.commit_offset
                    )
                    for t in n.topics
                ),
            )
            for n in c.nodes
        ),
    )


def watch_retry_delay(
    failure: grpc.RpcError | None,
    backoff: Backoff,
    *,
    deadline: float | None,
    timeout: float | None,
    closed: bool,
    route: Route,
    events: int,
    opened: float,
) -> float:
    """After a ``WatchCluster`` stream that gave ``events`` events since ``opened``
    (``time.monotonic()``) broke with ``failure`` (``None``: it just ended, as when its node
    stops): the delay before watching again on the next node, or raises the error to end
    the watch with. The first event is the snapshot every stream opens with; a stream that
    gave it and stayed up :data:`STABLE_STREAM_SECONDS` starts the retry budget over, as a
    subscription's does."""
    if events > 0 and time.monotonic() - opened >= STABLE_STREAM_SECONDS:
        backoff.reset()
    if failure is not None:
        return unary_retry_delay(
            "watch_cluster",
            failure,
            backoff,
            deadline=deadline,
            timeout=timeout,
            closed=closed,
            route=route,
        )
    if closed:
        raise errors.ClientClosed("watch_cluster: client closed")
    if deadline is not None and time.monotonic() >= deadline:
        raise timed_out("watch_cluster", timeout)
    route.failed(None)
    delay = backoff.next_delay(deadline)
    if delay is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise timed_out("watch_cluster", timeout)
        raise errors.Unavailable("watch_cluster: no node answered", None, backoff.attempts)
    return delay


def cluster_event_from_pb(e: pb.ClusterEvent) -> ClusterEvent:
    """A :class:`ClusterEvent` from its message."""
    try:
        kind = pb.ClusterEvent.Kind.Name(e.kind)
    except ValueError:  # a kind newer than this client
        kind = "KIND_UNSPECIFIED"
    return ClusterEvent(
        kind=kind,
        node_id=e.node_id,
        cluster=cluster_from_pb(e.cluster),
    )


def topic_name_checked(name: object) -> str:
    """``name`` if it is a ``str``: ``None`` would travel as ``""``, which the server reads as
    the topic ``default`` (a ``delete_topic(None)`` would delete it)."""
    if not isinstance(name, str):
        raise errors.InvalidArgument(f"a topic name must be a str, not {type(name).__name__}")
    return name


def delete_topic_request(name: str) -> pb.DeleteTopicRequest:
    """Builds a ``DeleteTopicRequest``."""
    return pb.DeleteTopicRequest(name=topic_name_checked(name))


def create_topic_request(
    name: str, retention_max_age_seconds: int, retention_max_bytes: int
) -> pb.CreateTopicRequest:
    """Builds a ``CreateTopicRequest``."""
    topic_name_checked(name)
    try:
        return pb.CreateTopicRequest(
            name=name,
            retention_max_age_seconds=retention_max_age_seconds,
            retention_max_bytes=retention_max_bytes,
        )
    except (ValueError, TypeError) as e:
        raise errors.InvalidArgument(f"invalid create_topic request: {e}") from None


class Pipeline:
    """The bookkeeping of a pipelined publish over ``PublishStream``, shared by the blocking
    and the asyncio clients (which add the waiting).

    Requests are drawn lazily from ``source``; at most ``window`` are unacknowledged at once.
    Every request keeps its idempotency key until acknowledged, so after a broken stream the
    unacknowledged ones are sent again, in order, on a new stream: none is stored twice.
    Positions are absolute: request ``n`` is the ``n``-th drawn from ``source``.
    """

    #: ``take`` result: the window is full, wait for an ack.
    WAIT: Any = object()
    #: ``take`` result: nothing more to send on this stream (half-close it).
    END: Any = object()

    def __init__(self, source: Iterator[pb.PublishRequest], window: int) -> None:
        if window < 1:
            raise errors.InvalidArgument(f"window must be at least 1, not {window}")
        self.window = window
        self.unacked: deque[pb.PublishRequest] = deque()
        #: Absolute position of ``unacked[0]`` (= number of acks received).
        self.base = 0
        self.source = source
        self.exhausted = False
        #: An exception raised by ``source`` (or by building a request from it).
        self.source_error: BaseException | None = None
        self.acks: list[Ack] = []
        #: ``seq_no`` of each acknowledged request, parallel to ``acks``.
        self.acked_seq_nos: list[int] = []
        #: Requests below this absolute position went out on a stream that broke before
        #: their acks (:meth:`broke`): they may be stored, whatever a later refusal says.
        self.doubt_below = 0

    def take(self, n: int) -> Any:
        """The request at absolute position ``n`` (drawing it from the source if needed),
        or :attr:`WAIT` or :attr:`END`."""
        idx = n - self.base
        if idx < len(self.unacked):
            return self.unacked[idx]
        if self.exhausted:
            return self.END
        if len(self.unacked) >= self.window:
            return self.WAIT
        try:
            req = next(self.source)
        except StopIteration:
            self.exhausted = True
            return self.END
        except Exception as e:  # the caller's iterable failed: stop drawing, report later
            self.source_error = e
            self.exhausted = True
            return self.END
        self.unacked.append(req)
        return req

    def on_ack(self, ack: pb.PublishAck) -> Ack:
        """Records the ack of the oldest unacknowledged request."""
        if not self.unacked:
            raise errors.ProtocolError("PublishStream sent more acks than requests")
        req = self.unacked.popleft()
        self.base += 1
        a = ack_from_pb(ack)
        self.acks.append(a)
        self.acked_seq_nos.append(req.seq_no)
        return a

    @property
    def done(self) -> bool:
        """True when every request was drawn and acknowledged."""
        return self.exhausted and not self.unacked

    def broke(self, failure: grpc.RpcError | None) -> None:
        """The stream ended with ``failure`` (``None``: early) before acknowledging every
        request it was given: when it may have stored them (:func:`stream_may_have_stored`),
        a later refusal does not say they are not stored."""
        if stream_may_have_stored(failure):
            self.doubt_below = max(self.doubt_below, self.base + len(self.unacked))

    def token_failed(self, error: BaseException) -> BaseException:
        """What the pipeline fails with when the token provider failed with ``error``
        opening a stream: ``error`` as it is, unless a frame went out on a stream that broke
        before its ack (:meth:`broke`): then :meth:`fail`'s ``FateUnknown``, its refusal
        an ``Unauthenticated`` caused by ``error`` (see :func:`token_fate`)."""
        fate = token_fate(error, self.base < self.doubt_below)
        if not isinstance(fate, errors.FateUnknown) or fate is error:
            return fate
        failed = self.fail(fate.refusal)
        failed.__cause__ = error
        return failed

    def fail(self, err: errors.FramecastError) -> errors.FramecastError:
        """``err`` with the acks received so far attached as ``err.acks``, and the absolute
        index of the refused request in its message. A refusal of a request that went out
        on a stream that broke before its ack (:meth:`broke`) becomes
        :class:`framecast.errors.FateUnknown`, naming the requests it leaves in doubt."""
        fate = refused_fate(err, self.base < self.doubt_below)
        if fate is not err:
            assert isinstance(fate, errors.FateUnknown)
            last = self.doubt_below - 1
            fate = errors.FateUnknown(
                err,
                message=(
                    f"frames {self.base} to {last} (0-based, in the order given) stored or "
                    f"not (never twice): sent on a stream that broke before their acks, "
                    f"then frame {self.base} refused: {err.message}"
                ),
            )
            fate.acks = list(self.acks)
            return fate
        if err.code is not None and not isinstance(err, errors.Unavailable):
            err.message = f"frame {self.base} (0-based, in the order given): {err.message}"
            err.args = (err.message,)
        err.acks = list(self.acks)
        return err

    def finish(self) -> list[Ack]:
        """The acks, or the source's exception (with ``acks`` attached) if it failed."""
        if self.source_error is not None:
            e = self.source_error
            try:
                e.acks = list(self.acks)  # type: ignore[attr-defined]
            except AttributeError:
                pass
            raise e
        return list(self.acks)


class RunState:
    """Bookkeeping of ``run``: which published offsets the subscription has delivered."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.seen: set[int] = set()
        self.expected: set[int] | None = None

    def publish_done(self, seq_nos: Sequence[int], acks: Sequence[Ack]) -> None:
        """Records the acks (``seq_nos[i]`` is the ``seq_no`` of ``acks[i]``); only frames
        with ``seq_no >= start`` are delivered to the subscription."""
        self.expected = {a.offset for s, a in zip(seq_nos, acks) if s >= self.start}

    def delivered(self, frame: Frame) -> None:
        """Records a delivered frame."""
        self.seen.add(frame.offset)

    @property
    def complete(self) -> bool:
        """True once publishing is done and every published frame was delivered."""
        return self.expected is not None and self.expected <= self.seen


class Resume:
    """The decisions of one subscription across its streams: the request to (re)open with,
    the cursor it stands at (snapshot point and epoch from the first stream's metadata, the
    last frame delivered), and whether a broken stream is retried, after how long.

    The blocking and the asyncio subscriptions open streams, read them and sleep; this
    decides everything else, so both resume exactly alike.
    """

    def __init__(
        self,
        topic: str,
        start: int,
        policy: RetryPolicy,
        timeout: float | None,
        route: Route | None = None,
        followers: FollowerPicker | None = None,
        cursor: Cursor | None = None,
        token: Token | None = None,
    ):
        if cursor is not None and not isinstance(cursor, Cursor):
            raise errors.InvalidArgument(
                f"cursor must be a framecast.Cursor (a subscription's .cursor), not "
                f"{type(cursor).__name__}"
            )
        self.topic = topic
        #: The client's token: each stream is opened with the token it gives then
        #: (:meth:`call_metadata`), and a provider's fresh one replaces an expired one.
        self.token = token
        self._token = FreshToken(token)
        #: Which address each stream is opened at: the client's current one; a break moves
        #: the client on to the next (the cursor resumes exactly on any node).
        self.route = route
        #: With ``read_from="followers"``: picks the follower each stream is opened at,
        #: from a ``Cluster`` answer (:meth:`wants_cluster`); the route is the fallback.
        self.followers = followers
        self.start = start
        self.timeout = timeout
        self.deadline = deadline_after(timeout)
        self.backoff = Backoff(policy)
        #: Where the subscription stands; ``None`` until the first stream's metadata (or
        #: the cursor given to resume from).
        self.cursor: Cursor | None = cursor
        #: ``time.monotonic()`` when the current stream started delivering, if it did.
        self.opened_at: float | None = None
        #: The address (``host:port``) of the node the current (or last) stream was opened
        #: at; ``None`` before the first.
        self.node: str | None = None
        #: The follower the current stream was opened at; ``None`` when it went by the route.
        self.follower: NodeInfo | None = None
        #: The address of the node the last stream broke on: the next follower is another.
        self.avoid: str | None = None
        #: How many times a stream was re-opened after a break (counted by the caller).
        self.reconnects = 0
        #: A follower refused the last stream: the next one goes by the route, whose
        #: answer is final (a follower may lack a topic just created on the leader).
        self._by_route = False
        #: A stream of this subscription was open: its old stream may hold a subscriber
        #: slot, so ``RESOURCE_EXHAUSTED`` is waited out (:data:`BUSY_RETRY_SECONDS`).
        self._was_open = False
        #: ``time.monotonic()`` of the first ``RESOURCE_EXHAUSTED`` since a stream was last
        #: opened.
        self._busy_since: float | None = None

    def wants_cluster(self) -> bool:
        """True when the next stream is to be opened at a follower, so the caller first
        asks ``Cluster`` (any node answers it) and hands the answer to :meth:`address`."""
        return self.followers is not None and not self._by_route

    def address(self, default: str, cluster: ClusterInfo | None = None) -> str:
        """The address to open the next stream at: a follower picked from ``cluster`` (with
        ``read_from="followers"``), else the route's (``default`` without a route)."""
        self.follower = None
        followers = self.followers
        if followers is not None and not self._by_route:
            picked = None if cluster is None else followers.pick(cluster, self.avoid)
            if picked is not None:
                self.follower = picked
                self.node = node_address(picked)
                log.debug(
                    "subscription %s: reading from follower %s (%s)",
                    self.topic,
                    picked.id,
                    self.node,
                )
                return self.node
            log.debug(
                "subscription %s: %s; reading through the usual route",
                self.topic,
                "no Cluster answer" if cluster is None else "no follower online",
            )
        self._by_route = False
        self.node = default if self.route is None else self.route.next()
        return self.node

    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The metadata to open the next stream with: the token the client's token (or
        provider) gives now, remembered to tell an expired token from a refused one."""
        return self._token.metadata()

    def _fresh_token(self, err: grpc.RpcError | None) -> bool:
        """True when ``err`` refused the stream's token (``UNAUTHENTICATED``: it expired)
        and the token provider now gives another one, which the next stream tries (once:
        a refusal of the fresh one, before it started, is final)."""
        # The provider's error, if any, ends the subscription.
        if not self._token.renew(err):
            return False
        log.debug("subscription %s: token refused (expired?); reconnecting with a fresh one",
                  self.topic)
        return True

    def request(self) -> pb.SubscribeRequest:
        """The request for the next stream: with ``resume`` once there is a cursor."""
        return subscribe_request(self.topic, self.start, self.cursor)

    def opened(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """Records a stream's initial metadata. False when it has no framecast headers: the
        call failed before starting (a trailers-only answer), and reading it raises why."""
        got = parse_subscription_metadata(metadata)
        if got is None:
            return False
        if self.cursor is None:
            self.cursor = Cursor(snapshot_offset=got[0], epoch=got[1])
        self.opened_at = time.monotonic()
        self._was_open = True
        self._busy_since = None
        self._token.accepted()
        return True

    def _busy_resume(self, err: grpc.RpcError) -> bool:
        """True when ``err`` is a ``RESOURCE_EXHAUSTED`` (too many subscribers) to wait out:
        a stream of this subscription was open (its own old one may still hold a slot, see
        :data:`BUSY_RETRY_SECONDS`) and such answers have come for less than that. A first
        open refused so is final: nothing of this subscription holds a slot."""
        try:
            code = err.code()
        except Exception:
            return False
        if code != grpc.StatusCode.RESOURCE_EXHAUSTED or not self._was_open:
            return False
        now = time.monotonic()
        if self._busy_since is None:
            self._busy_since = now
        waiting = now - self._busy_since < BUSY_RETRY_SECONDS
        log.debug(
            "subscription %s: too many subscribers on a resume (%s) for %.1f s; %s",
            self.topic,
            from_rpc_error(err),
            now - self._busy_since,
            "waiting" if waiting else "giving up",
        )
        if waiting and self.route is not None and self.node is not None:
            self.route.nodes.failed(self.node)  # another node may have a slot
        return waiting

    def frame(self, msg: pb.Frame) -> Frame:
        """Records a delivered frame (progress: the retry budget starts over) and returns
        it as a :class:`Frame`."""
        c = self.cursor
        if c is None:  # unreachable: opened() records the cursor before any frame
            raise errors.ProtocolError("subscription frame before its metadata")
        self.backoff.reset()
        if self.route is not None:
            self.route.progress()
        self.cursor = Cursor(c.snapshot_offset, c.epoch, msg.seq_no, msg.timestamp, msg.offset)
        return frame_from_pb(msg, c.snapshot_offset)

    def missing_metadata(self) -> errors.ProtocolError:
        """The error for a stream that delivered a frame without framecast's metadata."""
        return errors.ProtocolError(
            "subscription without framecast-snapshot-offset / framecast-epoch metadata"
        )

    def broken(self, err: grpc.RpcError | None, *, client_closed: bool = False) -> float:
        """A stream broke (``err``), or ended (``None``; the server never ends one
        cleanly): the delay before reconnecting, or raises the error the subscription ends
        with (client closed, timeout over, a permanent error, the retry budget spent).
        ``RESOURCE_EXHAUSTED`` once a stream was open is waited out like a break, within
        the retry budget and :data:`BUSY_RETRY_SECONDS`: the subscription's own old stream
        may still hold a slot."""
        on_follower, self.follower = self.follower, None
        self.avoid = self.node
        if client_closed:
            raise errors.ClientClosed("client closed")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise timed_out("subscription", self.timeout)
        if self._fresh_token(err):
            self.opened_at = None
            return 0.0  # the same node, at once, from the cursor
        if on_follower is not None:
            # The route did not choose this node: its failure leaves the client's current
            # node alone. A refusal is not final (the follower may lag: lack a topic just
            # created, or frames; a follower that lacks the topic answers UNAVAILABLE
            # naming the leader): the route's node answers at once.
            if err is not None and (
                leader_hint(err) is not None or (not is_transient(err) and not _core_broke(err))
            ):
                log.debug(
                    "subscription %s: follower %s refused (%s); asking the usual route",
                    self.topic,
                    on_follower.id,
                    from_rpc_error(err),
                )
                self._by_route = True
                self.opened_at = None
                return 0.0
        elif self.route is not None and self.route.failed(err):
            self.opened_at = None
            return 0.0  # a hint: to the node it named, at once
        elif err is not None and not is_transient(err) and not self._busy_resume(err):
            raise from_rpc_error(err)
        if (
            self.opened_at is not None
            and time.monotonic() - self.opened_at >= STABLE_STREAM_SECONDS
        ):
            self.backoff.reset()  # the broken stream had been working
        self.opened_at = None
        delay = self.backoff.next_delay(self.deadline)
        log.debug(
            "subscription %s: stream broken (%s); reconnect %d in %s s",
            self.topic,
            "ended" if err is None else from_rpc_error(err),
            self.backoff.attempts,
            delay,
        )
        if delay is None:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise timed_out("subscription", self.timeout)
            if err is None:
                raise errors.Unavailable(
                    "subscription stream kept ending", None, self.backoff.attempts
                )
            raise _explained(self.route, from_rpc_error(err, self.backoff.attempts))
        return delay
