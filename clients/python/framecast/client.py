"""The blocking client: :class:`Client` and its :class:`Subscription`."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

import grpc

from ._core import (
    CHANNEL_OPTIONS,
    DEFAULT_WINDOW,
    FAIL_ALL,
    FAIL_OLDEST,
    READ_FROM_FOLLOWERS,
    RESEND,
    Backoff,
    FollowerPicker,
    FrameSpec,
    FreshToken,
    KeySource,
    Nodes,
    Pipeline,
    Resume,
    RetryPolicy,
    Route,
    RunState,
    ack_from_pb,
    acks_from_pb,
    attempt_timeout,
    broadcast_request,
    check_coalesced,
    check_read_from,
    cluster_event_from_pb,
    cluster_from_pb,
    cluster_lookup_timeout,
    coalesced_stream_end,
    compression_settings,
    create_topic_request,
    deadline_after,
    delete_topic_request,
    frame_requests,
    history_from_pb,
    history_request,
    parse_addresses,
    publish_request,
    publish_stream_retry_delay,
    refused_fate,
    token_fate,
    remaining,
    shared_stream_of,
    stream_may_have_stored,
    timed_out,
    topic_from_pb,
    unary_retry_delay,
    WriteFate,
    with_key,
    watch_retry_delay,
)
from ._credentials import Pem, TokenSource, blocking_channel, channel_credentials, resolve_token
from ._proto import framecast_pb2 as pb
from ._proto.framecast_pb2_grpc import BroadcastStub
from .errors import ClientClosed, DeadlineExceeded, FramecastError, Unavailable
from .types import Ack, ClusterEvent, ClusterInfo, Cursor, Frame, HistoryPage, TopicInfo

__all__ = ["Client", "Subscription"]

log = logging.getLogger("framecast")

T = TypeVar("T")

#: Serializes :meth:`Client._own_process` in a forked child; made anew in every child.
_FORK_LOCK = threading.Lock()


def _new_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_fork_lock)


class Client:
    """A blocking framecast client over one gRPC channel (HTTP/2 connection) per server
    address, each made on first use and made again on its own after a failure. Safe to
    share between threads.

    Guarantees:

    * **Publishing never duplicates.** Every frame carries a fresh idempotency key; a
      publish that fails transiently (server unreachable, restarting, connection broken) is
      retried with the *same* key, with exponential backoff and jitter, for at most
      ``retry.max_elapsed`` seconds (60 by default, below the server's 2-minute dedup
      window). A frame whose ack you got is stored exactly once.
    * **Subscriptions resume exactly.** A subscription that breaks reconnects and resumes
      from the last frame it yielded, so what it yields is exactly what one unbroken
      subscription would have: no frame skipped, none twice.
    * **No silent gaps.** ``OUT_OF_RANGE`` (frames removed by retention), a changed topic
      epoch, a deleted topic and invalid requests are raised as
      :mod:`framecast.errors` exceptions. No raw ``grpc.RpcError`` escapes.
    * **Several nodes.** Given several addresses (the nodes of a cluster), calls go to one
      of them; one that cannot be reached (or answers ``UNAVAILABLE``) is left for the
      next, round robin, within the retry policy. A follower refusing a write names the
      leader (``framecast-leader``): the write is sent there at once. A subscription that
      breaks resumes, exactly, on the next node.
    * **Reading from followers.** With ``read_from="followers"``, each subscription (and
      each resume of it) asks the cluster (:meth:`cluster`) and reads from an online,
      in-sync follower, round robin, so subscriptions spread over the
      followers and leave the leader to writes; a resume after a break goes to another
      follower, exactly after the last frame yielded (every node delivers only committed
      frames, with the same cursors). Without a follower (a single node, an unreachable
      cluster) it reads through the usual route. Writes and other calls are unaffected.

    Example::

        from framecast import Client

        with Client("localhost:7070") as client:
            ack = client.publish(b"hello", seq_no=1, topic="prices")
            for frame in client.frames(topic="prices", start=0):
                print(frame.seq_no, frame.payload, frame.live)

    Args:
        address: ``host:port`` (or ``http://host:port``) of the server; ``https://host:port``
            for TLS. Several nodes: ``"a:7070,b:7070"`` or a list of addresses (all TLS if
            one is ``https://``).
        retry: How transient failures are retried (see :class:`RetryPolicy`).
        call_timeout: Longest time, in seconds, one attempt of a unary call may take before
            it is abandoned and retried (with the same idempotency key for a publish).
        channel_options: Extra gRPC channel options, appended to the client's own.
        compression: ``"gzip"`` compresses requests and asks the server to compress its
            responses; ``None`` (the default) sends and asks for plain messages. (grpcio
            has no zstd.)
        coalesce: ``True``: concurrent :meth:`publish` calls from many threads share a few
            pipelined ``PublishStream`` s, a topic's always the same one (each call still
            gets its own ack and keeps its
            own idempotency key; after a break every unacknowledged frame is re-sent with
            its key). ``False`` (the default): one unary ``Publish`` per call.
        token: A bearer token (a JWT, e.g. from ``framecast token``) sent as
            ``authorization`` metadata on every call; ``None`` reads ``$FRAMECAST_TOKEN``.
            Or a function returning the current token (a provider), called for each new
            call and each reconnect: a subscription whose token expires under it
            (``UNAUTHENTICATED``) reconnects at once with the provider's fresh token and
            resumes exactly; only when the provider gives the same token again, or the
            fresh one is refused too, does it raise :class:`framecast.errors.Unauthenticated`.
            The same for the shared stream of coalesced publishes: its unacknowledged
            frames are re-sent, with their keys, on a stream with the fresh token.
        ca_cert: The CA (a PEM file path, or its bytes) that signed the server's
            certificate. Given, or with an ``https://`` address, the channel is TLS (without
            ``ca_cert``, grpc's own root certificates are trusted).
        client_cert: With ``client_key``: the certificate (PEM path or bytes) presented to
            a server that requires client certificates (``serve --tls-client-ca``).
        client_key: The PEM private key of ``client_cert``.
        read_from: Where subscriptions read: ``"leader"`` (the default) where every call
            goes; ``"followers"``: each subscription at a follower of the cluster, picked
            afresh (another one) at each resume; a follower is reached with the client's
            own TLS, certificates, token and compression. Anything else raises
            :class:`framecast.errors.InvalidArgument`.
    """

    def __init__(
        self,
        address: str | Sequence[str] = "localhost:7070",
        *,
        retry: RetryPolicy | None = None,
        call_timeout: float = 30.0,
        channel_options: Iterable[tuple[str, Any]] = (),
        compression: str | None = None,
        coalesce: bool = False,
        token: TokenSource | None = None,
        ca_cert: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        read_from: str = "leader",
    ) -> None:
        self._read_from = check_read_from(read_from)
        self._followers = FollowerPicker() if read_from == READ_FROM_FOLLOWERS else None
        addresses, tls = parse_addresses(address)
        self._nodes = Nodes(addresses)
        self._token = resolve_token(token)
        self._credentials = channel_credentials(tls, ca_cert, client_cert, client_key)
        self._coalesce = coalesce
        self._streams: dict[int, _SharedStream] = {}
        self._retry = retry or RetryPolicy()
        self._call_timeout = call_timeout
        self._keys = KeySource()
        self._closed = threading.Event()
        self._subscriptions: weakref.WeakSet[Subscription[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._compression, compression_options = compression_settings(compression)
        self._options = [*CHANNEL_OPTIONS, *compression_options, *channel_options]
        #: ``host:port`` → (the channel, the stub calling through it).
        self._channels: dict[str, tuple[grpc.Channel, BroadcastStub]] = {}
        #: The process the channels and shared streams belong to (see :meth:`_own_process`).
        self._pid = os.getpid()
        #: What a forked child inherited from its parent: kept, never used nor closed by
        #: framecast (grpcio's destructors close them when the client is dropped).
        self._inherited: list[object] = []

    # ----------------------------------------------------------------- lifecycle

    @property
    def address(self) -> str:
        """The address (``host:port``) calls go to now: the first one given, until it
        failed or a follower named the leader."""
        return self._nodes.current

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every server address (``host:port``): those given, then leaders learned from
        ``framecast-leader`` hints."""
        return self._nodes.addresses

    def _own_process(self) -> None:
        """In a process forked from the one that made the client (gunicorn ``--preload``,
        ``multiprocessing``): lets go of the parent's channels and shared streams, whose
        threads do not exist here, so that this process makes its own. framecast neither
        uses nor closes them (closing could speak on the parent's connection); it keeps
        them on the client so that they are not dropped at once. grpcio itself may still
        close them: with ``GRPC_ENABLE_FORK_SUPPORT`` its fork handler closes every channel
        in the child ("Closed on fork"), and without it the destructors of its calls and
        channels cancel and close them when the client is dropped in the child. grpcio
        supports using gRPC in a child forked after the parent used it only with that fork
        support (off by default); see the README."""
        if os.getpid() == self._pid:
            return
        with _FORK_LOCK:
            if os.getpid() == self._pid:
                return
            # A thread of the parent may have held the lock when it forked: a fresh one.
            self._lock = threading.Lock()
            self._inherited.append((self._channels, self._streams))
            self._channels = {}
            self._streams = {}
            self._pid = os.getpid()

    def _stub_for(self, address: str) -> BroadcastStub:
        """The stub for ``address``, over its channel (made on first use, then kept)."""
        self._own_process()
        with self._lock:
            if self._closed.is_set():
                raise ClientClosed("client is closed")
            made = self._channels.get(address)
            if made is None:
                channel, calls = blocking_channel(
                    address, self._credentials, self._token, self._options, self._compression
                )
                made = self._channels[address] = (
                    channel,
                    BroadcastStub(calls),  # type: ignore[no-untyped-call]
                )
            return made[1]

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy."""
        return self._retry

    @property
    def read_from(self) -> str:
        """Where subscriptions read: ``"leader"`` or ``"followers"``."""
        return self._read_from

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    def close(self) -> None:
        """Closes the channel: open calls and subscriptions end (both raise
        :class:`framecast.errors.ClientClosed`). Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            subs = list(self._subscriptions)
            channels = [c for c, _ in self._channels.values()]
        for s in subs:
            s._wake.set()
        for channel in channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({','.join(self.addresses)!r}{', closed' if self.closed else ''})"

    # ----------------------------------------------------------------- helpers

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise ClientClosed("client is closed")

    def _sleep(self, delay: float) -> None:
        """Sleeps ``delay`` seconds; wakes early (raising) when the client is closed."""
        if self._closed.wait(delay) or self._closed.is_set():
            raise ClientClosed("client is closed")

    def _call(
        self,
        what: str,
        method_name: str,
        request: Any,
        timeout: float | None,
        *,
        retry: bool = True,
        fate: WriteFate | None = None,
    ) -> Any:
        """Runs a unary call, retrying transient failures with the same request (on the next
        address, or at once on the leader a follower named). ``fate``: for a keyed write,
        whose refusal after an attempt that broke is ``FateUnknown`` (:class:`WriteFate`)."""
        deadline = deadline_after(timeout)
        backoff = Backoff(self._retry)
        route = Route(self._nodes)
        while True:
            self._check_open()
            method = getattr(self._stub_for(route.next()), method_name)
            try:
                return method(request, timeout=attempt_timeout(self._call_timeout, deadline))
            except grpc.RpcError as e:
                delay = unary_retry_delay(
                    what,
                    e,
                    backoff,
                    deadline=deadline,
                    timeout=timeout,
                    retry=retry,
                    closed=self._closed.is_set(),
                    route=route,
                    fate=fate,
                )
            except Exception as e:
                # grpc raises ValueError for a call on a closed channel.
                if isinstance(e, ValueError) and self._closed.is_set():
                    raise ClientClosed(f"{what}: client closed") from None
                # Else the token provider's error (the call's interceptor asks it): after an
                # attempt that broke, a write's fate is unknown whatever it says.
                if fate is not None and fate.broke:
                    raise fate.token_failed(e)  # caused by e
                raise
            if delay:
                self._sleep(delay)

    # ----------------------------------------------------------------- publishing

    def publish(
        self,
        payload: bytes,
        seq_no: int = 0,
        topic: str = "",
        *,
        timestamp: int = 0,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Ack:
        """Publishes one frame and returns its ack once it is durable.

        Transient failures are retried with the same idempotency key, so the frame is
        stored at most once however often the call is retried.

        Args:
            payload: The frame's bytes.
            seq_no: Client-chosen sequence number (the primary replay sort key).
            topic: The topic (``""`` = ``default``); created on first use unless the server
                runs with ``--no-auto-create-topics``.
            timestamp: Nanoseconds since the Unix epoch; 0 = the server's receive time.
            idempotency_key: The key to publish with (at most 128 bytes); by default a fresh
                one unique to this client. Re-using a key within the server's dedup window
                returns the first ack with ``duplicate=True``. ``""``: no deduplication; then
                a failed attempt is not retried (it may have been stored), except at once on
                the leader a follower named or on an address never reached.
            timeout: Overall bound in seconds, retries included (``None``: the retry policy
                alone bounds it).

        Returns:
            The :class:`Ack` (offset, stored timestamp, duplicate flag).

        Raises:
            InvalidArgument: Bad topic name, negative timestamp, payload or key too large.
            NotFound: The topic does not exist and auto-creation is off.
            Unavailable: The server stayed unreachable for the whole retry budget; the
                frame may or may not be stored (never twice): publish again with
                ``idempotency_key=error.idempotency_key`` to store it exactly once.
            DeadlineExceeded: ``timeout`` ran out (same uncertainty; a coalesced frame is
                sent on until the retry budget ends): publish again with
                ``idempotency_key=error.idempotency_key`` to store it exactly once.
            FateUnknown: An attempt broke before its answer (it may have stored the
                frame) and a retry was refused for good: stored or not, never twice.
        """
        key = self._keys.next() if idempotency_key is None else idempotency_key
        req = publish_request(topic, seq_no, payload, timestamp, key)
        # Without a key (""), nothing tells a retry from a new frame: no retry, and no
        # shared stream (whose break sends its unacknowledged frames again).
        if self._coalesce and key:
            return self._publish_coalesced(req, timeout)
        try:
            ack = self._call(
                "publish",
                "Publish",
                req,
                timeout,
                retry=bool(key),
                fate=WriteFate(key) if key else None,
            )
            return ack_from_pb(ack)
        except (DeadlineExceeded, Unavailable) as e:
            # The outcome is unknown: publishing again with this key stores it once.
            e.idempotency_key = key or None
            raise

    def broadcast(
        self,
        topics: Sequence[str],
        payload: bytes,
        seq_no: int = 0,
        *,
        timestamp: int = 0,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Ack]:
        """Publishes one frame to every topic ``topics`` names and returns each topic's ack
        once every frame is durable.

        The server checks the whole request (every name, pattern and permission) before it
        writes anything. Transient failures are retried with one idempotency key, so a
        broadcast that failed part way is completed by the retry, no topic getting the frame
        twice.

        Args:
            topics: Topic names, or patterns (``"room.*"``, ``"chat.>"``) that match existing
                topics.
            payload: The frame's bytes.
            seq_no: Client-chosen sequence number.
            timestamp: Nanoseconds since the Unix epoch; 0 = the server's receive time.
            idempotency_key: As for :meth:`publish`; by default a fresh one.
            timeout: Overall bound in seconds, retries included.

        Returns:
            Each topic's :class:`Ack`, by topic name.

        Raises:
            InvalidArgument: A bad name or pattern, a negative timestamp, a payload or key too
                large; nothing was written.
            PermissionDenied: The token may not publish to one of the topics; nothing was
                written.
            NotFound: A named topic does not exist and auto-creation is off.
            Unavailable: The server stayed unreachable for the whole retry budget; each topic
                may or may not have the frame: broadcast again with
                ``idempotency_key=error.idempotency_key`` to complete it exactly once.
            DeadlineExceeded: ``timeout`` ran out (the same; the key is in the error).
        """
        key = self._keys.next() if idempotency_key is None else idempotency_key
        req = broadcast_request(topics, seq_no, payload, timestamp, key)
        # Without a key (""), nothing tells a retry from a new broadcast: no retry.
        try:
            resp = self._call(
                "broadcast",
                "Broadcast",
                req,
                timeout,
                retry=bool(key),
                fate=WriteFate(key) if key else None,
            )
        except (DeadlineExceeded, Unavailable) as e:
            e.idempotency_key = key or None
            raise
        return acks_from_pb(resp)

    def _publish_coalesced(self, req: pb.PublishRequest, timeout: float | None) -> Ack:
        """Sends ``req`` over its topic's shared stream (one of a few, see
        :func:`shared_stream_of`) and waits for its own ack."""
        self._check_open()
        check_coalesced(req)
        self._own_process()
        at = shared_stream_of(req.topic)
        with self._lock:
            stream = self._streams.get(at)
            if stream is None:
                stream = self._streams[at] = _SharedStream(self)
        future = stream.submit(req)
        try:
            return ack_from_pb(future.result(timeout))
        except FutureTimeout:
            raise timed_out("publish", timeout, req.idempotency_key) from None

    def publish_many(
        self,
        frames: Iterable[FrameSpec],
        topic: str = "",
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
    ) -> list[Ack]:
        """Publishes many frames pipelined over one ``PublishStream``: up to ``window``
        frames in flight, acks in order.

        If the stream breaks, every unacknowledged frame is sent again, in order, on a new
        stream with its original idempotency key, so none is stored twice.

        Args:
            frames: ``(seq_no, payload)`` or ``(seq_no, payload, timestamp)`` tuples; drawn
                lazily, so a generator works.
            topic: The topic (``""`` = ``default``).
            window: Most frames sent but not yet acknowledged.
            timeout: Overall bound in seconds (``None``: the retry policy alone bounds it).

        Returns:
            One :class:`Ack` per frame, in the order given.

        Raises:
            InvalidArgument: A frame was refused (its 0-based index is in the message);
                the frames before it are stored and their acks are in ``error.acks``.
            Unavailable: The server stayed unreachable for the whole retry budget
                (``error.acks`` holds the acks received).
            DeadlineExceeded: ``timeout`` ran out.
        """
        self._check_open()
        pipe = Pipeline(iter(frame_requests(topic, frames, self._keys)), window)
        self._publish_pipeline(pipe, timeout)
        return pipe.finish()

    def _publish_pipeline(
        self, pipe: Pipeline, timeout: float | None, stop: _Stop | None = None
    ) -> None:
        """Publishes ``pipe`` over ``PublishStream`` s until every frame is acknowledged.
        ``stop`` (``run``'s): once set, no frame is drawn from the caller's iterable any
        more, the stream is cancelled and this raises :class:`ClientClosed`."""
        deadline = deadline_after(timeout)
        backoff = Backoff(self._retry)
        route = Route(self._nodes)
        cond = threading.Condition()
        stream_id = 0

        def requests(my_id: int) -> Iterator[pb.PublishRequest]:
            n = pipe.base
            while True:
                with cond:
                    while True:
                        if stream_id != my_id or (stop is not None and stop.is_set()):
                            return
                        req = pipe.take(n)
                        if req is Pipeline.END:
                            return
                        if req is not Pipeline.WAIT:
                            break
                        cond.wait(None if stop is None else 0.1)
                n += 1
                yield req

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        while not pipe.done:
            if self._closed.is_set():
                raise pipe.fail(ClientClosed("publish_many: client closed"))
            if stopped():
                raise pipe.fail(ClientClosed("run: stopped"))
            with cond:
                stream_id += 1
                my_id = stream_id
            try:
                stub = self._stub_for(route.next())
                call = stub.PublishStream(requests(my_id), timeout=remaining(deadline))
            except (ValueError, ClientClosed):
                raise pipe.fail(ClientClosed("publish_many: client closed")) from None
            if stop is not None:
                stop.watch(call)
            failure: grpc.RpcError | None = None
            try:
                for ack in call:
                    with cond:
                        pipe.on_ack(ack)
                        cond.notify_all()
                    backoff.reset()
                    route.progress()
            except grpc.RpcError as e:
                failure = e
            except ValueError:
                if self._closed.is_set():
                    raise pipe.fail(ClientClosed("publish_many: client closed")) from None
                raise
            except Exception as e:
                # The token provider's error: the stream's interceptor asks it, and grpc
                # raises what it raised here.
                raise pipe.token_failed(e)  # caused by e
            finally:
                with cond:
                    stream_id += 1  # stops this stream's request generator
                    cond.notify_all()
                call.cancel()
            if stopped():
                raise pipe.fail(ClientClosed("run: stopped"))
            delay = publish_stream_retry_delay(
                pipe,
                failure,
                backoff,
                deadline=deadline,
                timeout=timeout,
                closed=self._closed.is_set(),
                route=route,
            )
            if delay is None:
                return
            if stop is not None:
                # run() sets stop when it ends, the client closing included.
                if stop.wait(delay):
                    raise pipe.fail(ClientClosed("run: stopped"))
                continue
            try:
                self._sleep(delay)
            except ClientClosed as e:
                raise pipe.fail(e) from None

    # ----------------------------------------------------------------- subscribing

    def frames(
        self,
        topic: str = "",
        start: int = 0,
        *,
        timeout: float | None = None,
        cursor: Cursor | None = None,
    ) -> Subscription[Frame]:
        """Subscribes to ``topic``: first the history (frames with ``seq_no >= start``
        committed before the subscription started, sorted by ``(seq_no, timestamp,
        offset)``), then live frames in offset order as they become durable, forever.

        The returned :class:`Subscription` is an iterator of :class:`Frame`; it survives
        disconnects and server restarts, resuming exactly. Stop it with ``close()`` (or use
        it as a context manager, or ``break`` and drop it). With ``read_from="followers"``
        it reads from a follower of the cluster (``Subscription.address`` names it).

        Args:
            topic: The topic (``""`` = ``default``).
            start: ``replay_seq_no_start``: frames with a smaller ``seq_no`` are skipped.
            timeout: Bound in seconds on the whole subscription; when it runs out the
                iterator raises :class:`framecast.errors.DeadlineExceeded`.
            cursor: Resume from it: a :class:`Cursor` saved from a subscription's
                ``cursor`` (of the same ``topic`` and ``start``), on this client or another,
                on any node. The subscription continues exactly after the last frame the
                old one yielded: none skipped, none twice.

        Raises (while iterating):
            OutOfRange: Frames still needed were removed by retention.
            EpochChanged: The topic was deleted and re-created.
            NotFound: The topic was deleted (or does not exist and auto-creation is off).
            InvalidArgument: Bad topic name.
            ResourceExhausted: The server's subscriber limit is reached.
            Unavailable: The server stayed unreachable for the whole retry budget.
            EpochChanged: ``cursor`` is of another epoch (the topic was re-created).
            OutOfRange: ``cursor`` lies beyond the topic, or its frames were removed.
            Unauthenticated: The token was refused (and no fresh one came).
        """
        return Subscription(self, topic, start, timeout, _identity, cursor)

    def subscribe(
        self,
        topic: str = "",
        start: int = 0,
        *,
        timeout: float | None = None,
        cursor: Cursor | None = None,
    ) -> Subscription[bytes]:
        """Like :meth:`frames`, but iterates over the payloads only."""
        return Subscription(self, topic, start, timeout, _payload, cursor)

    # ----------------------------------------------------------------- both at once

    def run(
        self,
        frames: Iterable[FrameSpec],
        topic: str = "",
        *,
        start: int = 0,
        on_frame: Callable[[Frame], Any] | None = None,
        timeout: float | None = 60.0,
        window: int = DEFAULT_WINDOW,
    ) -> list[Ack]:
        """Subscribes to ``topic`` from ``start`` and publishes ``frames`` at the same time;
        returns once publishing is done and every published frame (with ``seq_no >=
        start``) has been delivered to the subscription.

        ``on_frame`` is called, in the calling thread, for every frame the subscription
        delivers (history included), in delivery order.

        Args:
            frames: ``(seq_no, payload)`` or ``(seq_no, payload, timestamp)`` tuples.
            topic: The topic (``""`` = ``default``).
            start: ``replay_seq_no_start`` of the subscription.
            on_frame: Called with each delivered :class:`Frame`.
            timeout: Bound in seconds on the whole run (``None``: no bound).
            window: Most frames in flight while publishing.

        Returns:
            The acks of ``frames``, in order.

        Raises:
            DeadlineExceeded: ``timeout`` ran out first (``error.acks`` holds the acks
                received, if publishing finished).
            FramecastError: Whatever publishing or the subscription failed with; an exception
                raised by ``on_frame`` propagates as it is.

        However it ends, publishing stops with it: no frame is drawn from ``frames`` after
        ``run`` returned or raised, and no thread is left publishing.
        """
        self._check_open()
        deadline = deadline_after(timeout)
        state = RunState(start)
        pipe = Pipeline(iter(frame_requests(topic, frames, self._keys)), window)
        sub = self.frames(topic, start)
        inbox: queue.Queue[Any] = queue.Queue(maxsize=4096)
        stop = _Stop()
        published: list[BaseException | None] = []

        def hand_over(item: Any) -> None:
            # Never blocks for ever: once run() ended nobody reads the inbox.
            while not stop.is_set():
                try:
                    inbox.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def consume() -> None:
            try:
                for frame in sub:
                    hand_over(frame)
                    if stop.is_set():
                        return
            except BaseException as e:  # handed to the calling thread
                hand_over(e)

        def publish() -> None:
            try:
                self._publish_pipeline(pipe, remaining(deadline), stop)
                published.append(None)
            except BaseException as e:
                published.append(e)
            hand_over(_WAKE)

        threads = [
            threading.Thread(target=consume, name="framecast-run-subscribe", daemon=True),
            threading.Thread(target=publish, name="framecast-run-publish", daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            while True:
                if published and published[0] is not None:
                    raise published[0]
                if published and state.expected is None:
                    state.publish_done(pipe.acked_seq_nos, pipe.acks)
                if state.complete:
                    return pipe.finish()
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise pipe.fail(timed_out("run", timeout))
                try:
                    item = inbox.get(timeout=left)
                except queue.Empty:
                    continue
                if item is _WAKE:
                    continue
                if isinstance(item, BaseException):
                    raise item
                state.delivered(item)
                if on_frame is not None:
                    on_frame(item)
        finally:
            stop.set()
            sub.close()
            for t in threads:
                t.join(timeout=5)

    # ----------------------------------------------------------------- topics

    def create_topic(
        self,
        name: str,
        *,
        retention_max_age_seconds: int = 0,
        retention_max_bytes: int = 0,
        timeout: float | None = None,
    ) -> TopicInfo:
        """Creates a topic with retention settings (0 = the server default).

        Creating a topic that exists with the same settings succeeds; with other settings it
        raises :class:`framecast.errors.AlreadyExists`.
        """
        req = create_topic_request(name, retention_max_age_seconds, retention_max_bytes)
        return topic_from_pb(self._call("create_topic", "CreateTopic", req, timeout))

    def delete_topic(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a topic and its frames; its open subscriptions end with
        :class:`framecast.errors.NotFound`. Not retried (a retry after a lost answer would
        report ``NotFound``): a transient failure raises
        :class:`framecast.errors.Unavailable`."""
        req = delete_topic_request(name)
        self._call("delete_topic", "DeleteTopic", req, timeout, retry=False)

    def list_topics(self, *, timeout: float | None = None) -> list[TopicInfo]:
        """Every topic with its figures."""
        resp = self._call("list_topics", "ListTopics", pb.ListTopicsRequest(), timeout)
        return [topic_from_pb(t) for t in resp.topics]

    # ----------------------------------------------------------------- history

    def history(
        self,
        topic: str,
        *,
        from_seq_no: int = 0,
        limit: int | None = None,
        reverse: bool = False,
        after: str | None = None,
        timeout: float | None = None,
    ) -> HistoryPage:
        """One page of ``topic``'s history: its stored frames with ``seq_no >=
        from_seq_no`` in order-key order (``reverse``: newest first, as a chat scrolls
        back), at most ``limit`` (the server's default 100 when ``None``; at most 10,000).
        The first page (no ``after``) fixes a snapshot; pass its ``next`` as ``after``, with
        the same ``from_seq_no`` and ``reverse``, for the following page. Pages never
        overlap and never skip, and a token is read the same on every node of a cluster (a
        follower that has not copied the topic, or the frames below the token's snapshot,
        names the leader, and the call goes there).
        A read: retried like every call, and it creates nothing.

        Raises:
            NotFound: The topic does not exist.
            EpochChanged: ``after`` is a token of another epoch (the topic was re-created).
            InvalidArgument: A bad ``limit`` or token.
        """
        req = history_request(topic, from_seq_no, limit, reverse, after)
        return history_from_pb(self._call("history", "History", req, timeout))

    def history_pages(
        self,
        topic: str,
        *,
        from_seq_no: int = 0,
        limit: int | None = None,
        reverse: bool = False,
        after: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[HistoryPage]:
        """Every page of ``topic``'s history from ``after`` (or the first page) until a
        page says there is no more: one snapshot, read a page at a time as the iteration
        goes. See :meth:`history`."""
        while True:
            page = self.history(
                topic,
                from_seq_no=from_seq_no,
                limit=limit,
                reverse=reverse,
                after=after,
                timeout=timeout,
            )
            yield page
            if not page.more:
                return
            after = page.next

    # ----------------------------------------------------------------- the cluster

    def cluster(self, *, timeout: float | None = None) -> ClusterInfo:
        """The cluster as the node the client calls sees it: the term, the leader's address
        and every node (id, addresses, leader or follower, in sync, online, its position in
        each topic the caller may see). A server without a cluster answers as a cluster of
        one: term 0, itself the leader. Retried like every call.

        Raises:
            Unavailable: No node answered within the retry budget.
            DeadlineExceeded: ``timeout`` ran out.
        """
        resp = self._call("cluster", "Cluster", pb.ClusterRequest(), timeout)
        return cluster_from_pb(resp)

    def watch_cluster(self, *, timeout: float | None = None) -> Iterator[ClusterEvent]:
        """Follows the cluster's changes (``WatchCluster``) on the node calls go to: first
        that node coming online (``NODE_ONLINE``) with the whole cluster, then one
        :class:`ClusterEvent` per change (or the latest, for a reader that fell behind).
        When the node watched goes away, the watch moves on to the next address, whose first
        event again carries the whole cluster. Close the generator (or the client) to stop.

        Raises:
            Unavailable: No node answered within the retry budget.
            DeadlineExceeded: ``timeout`` (the whole watch) ran out.
            Unauthenticated: The token was refused or expired.
        """
        deadline = deadline_after(timeout)
        backoff = Backoff(self._retry)
        route = Route(self._nodes)
        while True:
            self._check_open()
            try:
                call = self._stub_for(route.next()).WatchCluster(
                    pb.ClusterRequest(), timeout=remaining(deadline)
                )
            except ValueError:
                # grpc raises ValueError for a call on a closed channel.
                raise ClientClosed("watch_cluster: client closed") from None
            failure: grpc.RpcError | None = None
            events, opened = 0, time.monotonic()
            try:
                for event in call:
                    events += 1
                    # The first event is the snapshot every stream opens with: only a
                    # second one shows the node stays up.
                    if events > 1:
                        backoff.reset()
                    route.progress()
                    yield cluster_event_from_pb(event)
            except grpc.RpcError as e:
                failure = e
            finally:
                call.cancel()
            delay = watch_retry_delay(
                failure,
                backoff,
                deadline=deadline,
                timeout=timeout,
                closed=self._closed.is_set(),
                route=route,
                events=events,
                opened=opened,
            )
            if delay:
                self._sleep(delay)

    def _cluster_for(self, resume: Resume) -> ClusterInfo | None:
        """The ``Cluster`` answer a subscription picks its follower from: one attempt on
        the usual route, bounded in time; ``None`` when it fails (the subscription then
        reads through the route)."""
        try:
            resp = self._call(
                "cluster",
                "Cluster",
                pb.ClusterRequest(),
                cluster_lookup_timeout(resume.deadline),
                retry=False,
            )
        except ClientClosed:
            raise
        except FramecastError as e:
            log.debug("subscription %s: Cluster failed: %s", resume.topic, e)
            return None
        return cluster_from_pb(resp)


_WAKE = object()


class _Stop:
    """``run``'s stop signal: set when ``run`` returns or raises. Its publisher draws no
    frame after it, and the stream it reads acks from (:meth:`watch`) is cancelled, so no
    thread is left publishing the caller's frames."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._call: Any = None

    def is_set(self) -> bool:
        """True once :meth:`set` was called."""
        return self._event.is_set()

    def wait(self, delay: float) -> bool:
        """Waits up to ``delay`` seconds; True when set."""
        return self._event.wait(delay)

    def watch(self, call: Any) -> None:
        """``call`` is the publisher's stream now: cancelled on :meth:`set`."""
        with self._lock:
            self._call = call
        if self._event.is_set():
            call.cancel()

    def set(self) -> None:
        """Stops the publisher."""
        self._event.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

#: Seconds a shared stream with nothing to send or acknowledge stays open. Closing it then
#: lets go of the client: a client dropped without :meth:`Client.close` is collected (its
#: channel closes) and the stream's thread ends, instead of both living for ever.
_IDLE_CLOSE = 30.0


class _SharedStream:
    """A ``PublishStream`` shared by coalesced :meth:`Client.publish` calls (frames of the
    topics :func:`shared_stream_of` maps to it).

    Calls append ``(request, future)`` in order; a thread keeps a stream open while there
    is work, feeds it every request not yet sent on it, and resolves the oldest future per
    ack (acks come in request order). When the stream ends, :func:`coalesced_stream_end`
    decides: fail only the refused frame's call, re-send every unacknowledged frame with
    its key (after a break, or on a stream with a fresh token when the provider renews an
    expired one: :class:`FreshToken`), or fail them all.

    The thread holds the client only while a stream is open (a weak reference otherwise),
    and a stream idle for :data:`_IDLE_CLOSE` seconds is closed: a client dropped without
    ``close()`` is then collected, and the thread ends.
    """

    def __init__(self, client: Client) -> None:
        self._client = weakref.ref(client)
        #: Set when the client closes (the event, not the client, so waiting holds no client).
        self._closing = client._closed
        #: The id of the stream the request generator ended for being idle.
        self._idle_closed = -1
        self._cond = threading.Condition()
        self._pending: deque[tuple[pb.PublishRequest, Future[pb.PublishAck]]] = deque()
        #: Acks received (the absolute position of ``_pending[0]``).
        self._base = 0
        #: The absolute position past the last frame the current stream was given.
        self._sent_below = 0
        #: Frames below this absolute position went out on a stream that broke before
        #: their acks: they may be stored, whatever a later stream's refusal says.
        self._doubt_below = 0
        self._stream_id = 0
        threading.Thread(target=self._run, name="framecast-coalesce", daemon=True).start()

    def submit(self, req: pb.PublishRequest) -> Future[pb.PublishAck]:
        future: Future[pb.PublishAck] = Future()
        with self._cond:
            self._pending.append((req, future))
            self._cond.notify_all()
        return future

    def _gone(self) -> bool:
        client = self._client()
        return client is None or client.closed

    def _requests(self, my_id: int) -> Iterator[pb.PublishRequest]:
        n = self._base
        while True:
            with self._cond:
                idle_since = time.monotonic()
                while True:
                    if self._stream_id != my_id or self._gone():
                        return
                    idx = n - self._base
                    if idx < len(self._pending):
                        req = self._pending[idx][0]
                        self._sent_below = n + 1
                        break
                    if self._pending:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= _IDLE_CLOSE:
                        # Every frame is acknowledged: the stream ends cleanly.
                        self._idle_closed = my_id
                        return
                    self._cond.wait(0.5)
            n += 1
            yield req

    def _run(self) -> None:
        client = self._client()
        if client is None:
            return
        backoff = Backoff(client._retry)
        route = Route(client._nodes)
        token = FreshToken(client._token)
        del client
        while True:
            with self._cond:
                while not self._pending:
                    if self._gone():
                        return
                    self._cond.wait(0.5)
                self._stream_id += 1
                my_id = self._stream_id
                self._sent_below = self._base
            client = self._client()
            if client is None:
                return  # nobody waits: a caller holds the client until its ack
            try:
                metadata = token.metadata()
            except Exception as e:  # the token provider's own error, as it is
                del client
                self._fail_all(e)
                continue
            failure: grpc.RpcError | None = None
            call: Any = None
            try:
                call = client._stub_for(route.next()).PublishStream(
                    self._requests(my_id), metadata=metadata
                )
                for ack in call:
                    with self._cond:
                        if not self._pending:
                            break
                        _, future = self._pending.popleft()
                        self._base += 1
                    future.set_result(ack)
                    backoff.reset()
                    route.progress()
                    token.accepted()
            except grpc.RpcError as e:
                failure = e
            except (ValueError, ClientClosed):
                pass  # grpc raises ValueError for a call on a closed channel
            finally:
                with self._cond:
                    self._stream_id += 1  # stops this stream's request generator
                    self._cond.notify_all()
                if call is not None:
                    call.cancel()
            closed = client.closed
            del client, call  # while no stream is open, only the caller holds the client
            with self._cond:
                if not self._pending:
                    continue
                if failure is None and self._idle_closed == my_id:
                    # A publish came as the idle stream ended: on a new stream, at once.
                    continue
                action, delay, err = coalesced_stream_end(
                    failure, backoff, closed=closed, route=route, token=token
                )
                if action == RESEND and stream_may_have_stored(failure):
                    self._doubt_below = max(self._doubt_below, self._sent_below)
                failed: list[tuple[int, pb.PublishRequest, Future[pb.PublishAck]]] = []
                if action == FAIL_OLDEST:
                    failed.append((self._base, *self._pending.popleft()))
                    self._base += 1
                elif action == FAIL_ALL:
                    failed.extend((self._base + i, *p) for i, p in enumerate(self._pending))
                    self._base += len(self._pending)
                    self._pending.clear()
                doubt_below = self._doubt_below
            for at, req, f in failed:
                why = err if err is not None else ClientClosed("publish failed")
                why = refused_fate(why, at < doubt_below)
                f.set_exception(with_key(why, req.idempotency_key))
            if action == RESEND and delay:
                self._closing.wait(delay)

    def _fail_all(self, error: BaseException) -> None:
        """Fails every waiting call with ``error`` (the token provider's; stored-or-not for
        a frame that went out on a stream that broke: :func:`refused_fate`)."""
        with self._cond:
            base, doubt_below = self._base, self._doubt_below
            failed = list(self._pending)
            self._base += len(self._pending)
            self._pending.clear()
        for i, (req, f) in enumerate(failed):
            why = token_fate(error, base + i < doubt_below)
            f.set_exception(with_key(why, req.idempotency_key))


def _identity(frame: Frame) -> Frame:
    return frame


def _payload(frame: Frame) -> bytes:
    return frame.payload


class Subscription(Generic[T]):
    """An iterator over a subscription's frames (or payloads), made by
    :meth:`Client.frames` and :meth:`Client.subscribe`.

    It reconnects on transient failures (with backoff, within the client's retry budget)
    and resumes with a cursor — the snapshot point and epoch it was first given, and the
    last frame it yielded — so what it yields is exactly what one unbroken subscription
    would have. It ends only by :meth:`close` (then iteration stops) or with an error.
    :attr:`address` names the node it reads from (a follower, with the client's
    ``read_from="followers"``).

    :meth:`close` may be called from any thread; it interrupts a blocked ``next()``.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        start: int,
        timeout: float | None,
        project: Callable[[Frame], T],
        cursor: Cursor | None = None,
    ) -> None:
        self._client = client
        self._resume = Resume(
            topic,
            start,
            client._retry,
            timeout,
            Route(client._nodes),
            client._followers,
            cursor,
            client._token,
        )
        self._project = project
        self._lock = threading.Lock()
        self._call: Any = None
        self._closed = False
        self._done = False
        self._wake = threading.Event()
        self._reconnects = 0
        with client._lock:
            client._subscriptions.add(self)

    @property
    def topic(self) -> str:
        """The topic subscribed to."""
        return self._resume.topic

    @property
    def start(self) -> int:
        """``replay_seq_no_start``."""
        return self._resume.start

    @property
    def cursor(self) -> Cursor | None:
        """Where the subscription stands (``None`` before the server answered): the
        snapshot point, epoch and last frame yielded."""
        return self._resume.cursor

    @property
    def snapshot_offset(self) -> int | None:
        """The snapshot point ``S``: frames with ``offset < S`` are history."""
        c = self._resume.cursor
        return None if c is None else c.snapshot_offset

    @property
    def epoch(self) -> int | None:
        """The topic epoch the subscription was given."""
        c = self._resume.cursor
        return None if c is None else c.epoch

    @property
    def reconnects(self) -> int:
        """How many times the stream was re-opened after a break."""
        return self._reconnects

    @property
    def address(self) -> str | None:
        """The node (``host:port``) the subscription reads from now (or last, between a
        break and the resume): a follower with ``read_from="followers"``, else the
        client's current node; ``None`` before the first stream was opened."""
        return self._resume.node

    def close(self) -> None:
        """Ends the subscription: iteration stops. Thread-safe and idempotent."""
        with self._lock:
            self._closed = True
            call, self._call = self._call, None
        self._wake.set()
        if call is not None:
            call.cancel()

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Subscription[T]:
        return self

    def __next__(self) -> T:
        try:
            frame = self._next_frame()
        except StopIteration:
            raise
        except BaseException:
            self._done = True
            self._drop_call()
            raise
        return self._project(frame)

    def __repr__(self) -> str:
        r = self._resume
        return (
            f"Subscription(topic={r.topic!r}, start={r.start}, cursor={r.cursor}, "
            f"address={r.node!r})"
        )

    def _drop_call(self) -> None:
        with self._lock:
            call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def _next_frame(self) -> Frame:
        while True:
            if self._done or self._closed:
                raise StopIteration
            call = self._call
            if call is None:
                call = self._open()
                if call is None:
                    continue
            try:
                msg = next(call)
            except StopIteration:
                # The server never ends a subscription cleanly: treat it as a break.
                self._drop_call()
                self._broken(None)
                continue
            except grpc.RpcError as e:
                self._drop_call()
                self._broken(e)
                continue
            return self._resume.frame(msg)

    def _open(self) -> Any:
        """Opens (or re-opens with the cursor) the server stream; ``None``: try again."""
        if self._client._closed.is_set():
            raise ClientClosed("client is closed")
        req = self._resume.request()
        cluster = self._client._cluster_for(self._resume) if self._resume.wants_cluster() else None
        stub = self._client._stub_for(self._resume.address(self._client.address, cluster))
        metadata = self._resume.call_metadata()
        with self._lock:
            if self._closed:
                raise StopIteration
            try:
                call = stub.Subscribe(
                    req, timeout=remaining(self._resume.deadline), metadata=metadata
                )
            except ValueError:
                raise ClientClosed("client is closed") from None
            self._call = call
        try:
            md = call.initial_metadata()
        except grpc.RpcError as e:
            self._drop_call()
            self._broken(e)
            return None
        if not self._resume.opened(md):
            # The call failed before starting, so next(call) raises why.
            try:
                next(call)
            except grpc.RpcError as e:
                self._drop_call()
                self._broken(e)
                return None
            except StopIteration:
                self._drop_call()
                self._broken(None)
                return None
            raise self._resume.missing_metadata()
        return call

    def _broken(self, e: grpc.RpcError | None) -> None:
        """Sleeps before a reconnect, or raises what the subscription ends with."""
        if self._closed:
            raise StopIteration
        delay = self._resume.broken(e, client_closed=self._client._closed.is_set())
        if self._wake.wait(delay):
            if self._closed:
                raise StopIteration
            raise ClientClosed("client closed")
        self._reconnects += 1
