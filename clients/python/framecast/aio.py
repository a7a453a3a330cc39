"""The asyncio client: :class:`Client`, with the same methods and guarantees as the blocking
:class:`framecast.Client`; ``subscribe`` and ``frames`` are async generators.

::

    import asyncio
    from framecast.aio import Client

    async def main() -> None:
        async with Client("localhost:7070") as client:
            ack = await client.publish(b"hello", seq_no=1, topic="prices")
            async for frame in client.frames(topic="prices", start=0):
                print(frame)

    asyncio.run(main())
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from . import errors
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
from ._credentials import Pem, TokenSource, aio_channel, channel_credentials, resolve_token
from ._proto import framecast_pb2 as pb
from ._proto.framecast_pb2_grpc import BroadcastStub
from .errors import ClientClosed, DeadlineExceeded, FramecastError, Unavailable
from .types import Ack, ClusterEvent, ClusterInfo, Cursor, Frame, HistoryPage, TopicInfo

__all__ = ["Client", "Subscription"]

log = logging.getLogger("framecast")


class Client:
    """An asyncio framecast client over one gRPC channel per server address, each created
    on first use in the running event loop (so the client may be constructed outside it;
    use it from one loop).

    Same guarantees as :class:`framecast.Client`: publishes are retried with the same
    idempotency key and never stored twice; subscriptions resume exactly after a break;
    failures are :mod:`framecast.errors` exceptions, never a raw ``grpc.RpcError``; with
    several addresses, a node that cannot be reached is left for the next, and a write
    refused by a follower goes at once to the leader it named (``framecast-leader``); with
    ``read_from="followers"``, subscriptions read from the cluster's followers, spread
    round robin, and resume exactly on another one.

    Args:
        address: ``host:port`` (or ``http://host:port``) of the server; ``https://host:port``
            for TLS. Several nodes: ``"a:7070,b:7070"`` or a list of addresses (all TLS if
            one is ``https://``).
        retry: How transient failures are retried.
        call_timeout: Longest time, in seconds, one attempt of a unary call may take.
        channel_options: Extra gRPC channel options, appended to the client's own.
        compression: ``"gzip"`` compresses requests and asks the server to compress its
            responses; ``None`` (the default) sends and asks for plain messages. (grpcio
            has no zstd.)
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
        read_from: ``"leader"`` (the default): subscriptions go where every call goes;
            ``"followers"``: each subscription (and each resume of it) reads from a
            follower of the cluster. See :class:`framecast.Client`. Anything else raises
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
        self._compression, compression_options = compression_settings(compression)
        self._options = [*CHANNEL_OPTIONS, *compression_options, *channel_options]
        self._keys = KeySource()
        #: ``host:port`` → (the channel, its stub).
        self._channels: dict[str, tuple[grpc.aio.Channel, BroadcastStub]] = {}
        self._closed = False
        self._closing: asyncio.Event | None = None

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
        return self._closed

    def _stub_for(self, address: str) -> BroadcastStub:
        """The stub for ``address``, over its channel (made on first use, then kept)."""
        if self._closed:
            raise ClientClosed("client is closed")
        made = self._channels.get(address)
        if made is None:
            channel = aio_channel(
                address, self._credentials, self._token, self._options, self._compression
            )
            made = self._channels[address] = (
                channel,
                BroadcastStub(channel),  # type: ignore[no-untyped-call]
            )
        return made[1]

    def _closing_event(self) -> asyncio.Event:
        if self._closing is None:
            self._closing = asyncio.Event()
            if self._closed:
                self._closing.set()
        return self._closing

    async def close(self) -> None:
        """Closes the channel; every call in flight (publishes, coalesced or not,
        ``publish_many``, subscriptions, the cluster watch) ends with
        :class:`framecast.errors.ClientClosed`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        for stream in self._streams.values():
            stream.wake()
        for channel, _ in list(self._channels.values()):
            await channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"aio.Client({','.join(self.addresses)!r}{', closed' if self._closed else ''})"

    # ----------------------------------------------------------------- helpers

    async def _sleep(self, delay: float) -> None:
        """Sleeps ``delay`` seconds; raises early when the client is closed."""
        closing = self._closing_event()
        try:
            await asyncio.wait_for(closing.wait(), delay)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        if self._closed:
            raise ClientClosed("client is closed")

    async def _call(
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
            method = getattr(self._stub_for(route.next()), method_name)
            try:
                return await method(request, timeout=attempt_timeout(self._call_timeout, deadline))
            except grpc.RpcError as e:
                delay = unary_retry_delay(
                    what,
                    e,
                    backoff,
                    deadline=deadline,
                    timeout=timeout,
                    retry=retry,
                    closed=self._closed,
                    route=route,
                    fate=fate,
                )
            except grpc.aio.UsageError:
                raise ClientClosed(f"{what}: client closed") from None
            except asyncio.CancelledError:
                # Closing the client cancels its calls: the call ends with ClientClosed.
                if self._closed:
                    raise ClientClosed(f"{what}: client closed") from None
                raise
            except Exception as e:
                # The token provider's error (the call's interceptor asks it): after an
                # attempt that broke, a write's fate is unknown whatever it says.
                if fate is not None and fate.broke:
                    raise fate.token_failed(e)  # caused by e
                raise
            if delay:
                await self._sleep(delay)

    # ----------------------------------------------------------------- publishing

    async def publish(
        self,
        payload: bytes,
        seq_no: int = 0,
        topic: str = "",
        *,
        timestamp: int = 0,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Ack:
        """Publishes one frame and returns its ack once it is durable; transient failures
        are retried with the same idempotency key. See :meth:`framecast.Client.publish`."""
        key = self._keys.next() if idempotency_key is None else idempotency_key
        req = publish_request(topic, seq_no, payload, timestamp, key)
        # Without a key (""), nothing tells a retry from a new frame: no retry, and no
        # shared stream (whose break sends its unacknowledged frames again).
        if self._coalesce and key:
            return await self._publish_coalesced(req, timeout)
        try:
            ack = await self._call(
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

    async def broadcast(
        self,
        topics: Sequence[str],
        payload: bytes,
        seq_no: int = 0,
        *,
        timestamp: int = 0,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Ack]:
        """Publishes one frame to every topic ``topics`` names and returns each topic's ack;
        retried with one idempotency key. See :meth:`framecast.Client.broadcast`."""
        key = self._keys.next() if idempotency_key is None else idempotency_key
        req = broadcast_request(topics, seq_no, payload, timestamp, key)
        # Without a key (""), nothing tells a retry from a new broadcast: no retry.
        try:
            resp = await self._call(
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

    async def _publish_coalesced(self, req: pb.PublishRequest, timeout: float | None) -> Ack:
        """Sends ``req`` over its topic's shared stream (one of a few, see
        :func:`shared_stream_of`) and waits for its own ack."""
        if self._closed:
            raise ClientClosed("client is closed")
        check_coalesced(req)
        at = shared_stream_of(req.topic)
        stream = self._streams.get(at)
        if stream is None:
            stream = self._streams[at] = _SharedStream(self)
        future = stream.submit(req)
        try:
            return ack_from_pb(await asyncio.wait_for(future, timeout))
        except (asyncio.TimeoutError, TimeoutError):
            raise timed_out("publish", timeout, req.idempotency_key) from None

    async def publish_many(
        self,
        frames: Iterable[FrameSpec],
        topic: str = "",
        *,
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
    ) -> list[Ack]:
        """Publishes many frames pipelined over ``PublishStream`` (acks in order; unacked
        frames re-sent with their keys on a new stream after a break, so none is stored
        twice). See :meth:`framecast.Client.publish_many`."""
        if self._closed:
            raise ClientClosed("client is closed")
        pipe = Pipeline(iter(frame_requests(topic, frames, self._keys)), window)
        await self._publish_pipeline(pipe, timeout)
        return pipe.finish()

    async def _publish_pipeline(self, pipe: Pipeline, timeout: float | None) -> None:
        deadline = deadline_after(timeout)
        backoff = Backoff(self._retry)
        route = Route(self._nodes)
        acked = asyncio.Condition()

        async def write(call: Any) -> None:
            n = pipe.base
            try:
                await _accepted(call)
                while True:
                    async with acked:
                        while (req := pipe.take(n)) is Pipeline.WAIT:
                            await acked.wait()
                    if req is Pipeline.END:
                        await call.done_writing()
                        return
                    await call.write(req)
                    n += 1
            except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                return  # the call ended; the reader sees why

        while not pipe.done:
            try:
                call = self._stub_for(route.next()).PublishStream(timeout=remaining(deadline))
            except (ClientClosed, grpc.aio.UsageError):
                raise pipe.fail(ClientClosed("publish_many: client closed")) from None
            writer = asyncio.ensure_future(write(call))
            failure: grpc.RpcError | None = None
            try:
                while True:
                    ack = await call.read()
                    if ack is grpc.aio.EOF:
                        break
                    async with acked:
                        pipe.on_ack(ack)
                        acked.notify_all()
                    backoff.reset()
                    route.progress()
            except grpc.RpcError as e:
                failure = e
            except asyncio.CancelledError:
                if self._closed:
                    raise pipe.fail(ClientClosed("publish_many: client closed")) from None
                raise
            except Exception as e:
                # The token provider's error: the stream's interceptor asks it, and grpc
                # raises what it raised here.
                raise pipe.token_failed(e)  # caused by e
            finally:
                writer.cancel()
                call.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            delay = publish_stream_retry_delay(
                pipe,
                failure,
                backoff,
                deadline=deadline,
                timeout=timeout,
                closed=self._closed,
                route=route,
            )
            if delay is None:
                return
            if not delay:
                continue  # at once, to the leader a follower named
            try:
                await self._sleep(delay)
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
        """An async generator of the subscription's :class:`Frame` s: history (``seq_no >=
        start``, sorted by ``(seq_no, timestamp, offset)``), then live frames in offset
        order, forever. It survives disconnects and server restarts, resuming exactly.
        Stop it with ``break`` / ``aclose()`` or by cancelling the task iterating it.

        ``timeout`` bounds the whole subscription (then
        :class:`framecast.errors.DeadlineExceeded`). Errors as in
        :meth:`framecast.Client.frames`. The :class:`Subscription` returned tells where it
        stands (``cursor``) and which node it reads from (``address``). ``cursor``: resume
        from a saved :class:`Cursor`, exactly after its frame (see
        :meth:`framecast.Client.frames`).
        """
        resume = self._resume(topic, start, timeout, cursor)
        return Subscription(resume, self._frames(resume), _identity)

    def _resume(
        self, topic: str, start: int, timeout: float | None, cursor: Cursor | None
    ) -> Resume:
        return Resume(
            topic,
            start,
            self._retry,
            timeout,
            Route(self._nodes),
            self._followers,
            cursor,
            self._token,
        )

    async def _frames(self, resume: Resume) -> AsyncGenerator[Frame, None]:
        """The frames of the subscription ``resume`` keeps the state of."""

        async def pause(e: grpc.RpcError | None) -> None:
            delay = resume.broken(e, client_closed=self._closed)
            if delay:
                await self._sleep(delay)
            resume.reconnects += 1

        while True:
            cluster = await self._cluster_for(resume) if resume.wants_cluster() else None
            try:
                stub = self._stub_for(resume.address(self.address, cluster))
                call = stub.Subscribe(
                    resume.request(),
                    timeout=remaining(resume.deadline),
                    metadata=resume.call_metadata(),
                )
            except grpc.aio.UsageError:
                raise ClientClosed("client is closed") from None
            try:
                try:
                    if not resume.opened(await call.initial_metadata()):
                        # The call failed before starting, so read() raises why.
                        if await call.read() is grpc.aio.EOF:
                            await pause(None)
                            continue
                        raise resume.missing_metadata()
                    while True:
                        msg = await call.read()
                        if msg is grpc.aio.EOF:
                            break
                        yield resume.frame(msg)
                except grpc.RpcError as e:
                    call.cancel()
                    await pause(e)
                    continue
                except grpc.aio.UsageError:
                    raise ClientClosed("client is closed") from None
                except asyncio.CancelledError:
                    if self._closed:
                        raise ClientClosed("client is closed") from None
                    raise
                # The server never ends a subscription cleanly: treat it as a break.
                await pause(None)
            finally:
                call.cancel()

    def subscribe(
        self,
        topic: str = "",
        start: int = 0,
        *,
        timeout: float | None = None,
        cursor: Cursor | None = None,
    ) -> Subscription[bytes]:
        """Like :meth:`frames`, but yields the payloads only."""
        resume = self._resume(topic, start, timeout, cursor)
        return Subscription(resume, self._frames(resume), _payload)

    # ----------------------------------------------------------------- both at once

    async def run(
        self,
        frames: Iterable[FrameSpec],
        topic: str = "",
        *,
        start: int = 0,
        on_frame: Callable[[Frame], Any | Awaitable[Any]] | None = None,
        timeout: float | None = 60.0,
        window: int = DEFAULT_WINDOW,
    ) -> list[Ack]:
        """Subscribes to ``topic`` from ``start`` and publishes ``frames`` concurrently;
        returns the acks once publishing is done and every published frame (with ``seq_no
        >= start``) has been delivered. ``on_frame`` (a function or a coroutine function)
        is called for every delivered frame. See :meth:`framecast.Client.run`."""
        if self._closed:
            raise ClientClosed("client is closed")
        deadline = deadline_after(timeout)
        state = RunState(start)
        pipe = Pipeline(iter(frame_requests(topic, frames, self._keys)), window)
        subscription = self.frames(topic, start)

        async def consume() -> None:
            async for frame in subscription:
                state.delivered(frame)
                if on_frame is not None:
                    result = on_frame(frame)
                    if inspect.isawaitable(result):
                        await result
                if state.complete:
                    return

        async def publish() -> None:
            await self._publish_pipeline(pipe, remaining(deadline))
            state.publish_done(pipe.acked_seq_nos, pipe.acks)

        consumer = asyncio.ensure_future(consume())
        publisher = asyncio.ensure_future(publish())
        try:
            pending: set[asyncio.Future[Any]] = {consumer, publisher}
            while not state.complete:
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise pipe.fail(timed_out("run", timeout))
                done, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # raises what the task failed with
                if consumer in done and not state.complete:
                    raise errors.ProtocolError("subscription ended before run completed")
                if not pending and not state.complete:
                    raise errors.ProtocolError("run ended incomplete")
            return pipe.finish()
        finally:
            for task in (consumer, publisher):
                task.cancel()
            await asyncio.gather(consumer, publisher, return_exceptions=True)
            await subscription.aclose()

    # ----------------------------------------------------------------- topics

    async def create_topic(
        self,
        name: str,
        *,
        retention_max_age_seconds: int = 0,
        retention_max_bytes: int = 0,
        timeout: float | None = None,
    ) -> TopicInfo:
        """Creates a topic with retention settings (0 = the server default)."""
        req = create_topic_request(name, retention_max_age_seconds, retention_max_bytes)
        return topic_from_pb(await self._call("create_topic", "CreateTopic", req, timeout))

    async def delete_topic(self, name: str, *, timeout: float | None = None) -> None:
        """Deletes a topic and its frames (not retried; see
        :meth:`framecast.Client.delete_topic`)."""
        req = delete_topic_request(name)
        await self._call("delete_topic", "DeleteTopic", req, timeout, retry=False)

    async def list_topics(self, *, timeout: float | None = None) -> list[TopicInfo]:
        """Every topic with its figures."""
        resp = await self._call("list_topics", "ListTopics", pb.ListTopicsRequest(), timeout)
        return [topic_from_pb(t) for t in resp.topics]

    # ----------------------------------------------------------------- history

    async def history(
        self,
        topic: str,
        *,
        from_seq_no: int = 0,
        limit: int | None = None,
        reverse: bool = False,
        after: str | None = None,
        timeout: float | None = None,
    ) -> HistoryPage:
        """One page of ``topic``'s history. See :meth:`framecast.Client.history`."""
        req = history_request(topic, from_seq_no, limit, reverse, after)
        return history_from_pb(await self._call("history", "History", req, timeout))

    async def history_pages(
        self,
        topic: str,
        *,
        from_seq_no: int = 0,
        limit: int | None = None,
        reverse: bool = False,
        after: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[HistoryPage]:
        """Every page of ``topic``'s history from ``after`` on. See
        :meth:`framecast.Client.history_pages`."""
        while True:
            page = await self.history(
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

    async def cluster(self, *, timeout: float | None = None) -> ClusterInfo:
        """The cluster as the node the client calls sees it (term, leader, every node). See
        :meth:`framecast.Client.cluster`."""
        return cluster_from_pb(await self._call("cluster", "Cluster", pb.ClusterRequest(), timeout))

    async def watch_cluster(self, *, timeout: float | None = None) -> AsyncIterator[ClusterEvent]:
        """Follows the cluster's changes, moving on to the next address when the node
        watched goes away. See :meth:`framecast.Client.watch_cluster`."""
        deadline = deadline_after(timeout)
        backoff = Backoff(self._retry)
        route = Route(self._nodes)
        while True:
            call = self._stub_for(route.next()).WatchCluster(
                pb.ClusterRequest(), timeout=remaining(deadline)
            )
            failure: grpc.RpcError | None = None
            events, opened = 0, time.monotonic()
            try:
                async for event in call:
                    events += 1
                    # The first event is the snapshot every stream opens with: only a
                    # second one shows the node stays up.
                    if events > 1:
                        backoff.reset()
                    route.progress()
                    yield cluster_event_from_pb(event)
            except grpc.RpcError as e:
                failure = e
            except asyncio.CancelledError:
                # Closing the client cancels its calls: that is the end of the watch.
                if self._closed:
                    raise ClientClosed("watch_cluster: client closed") from None
                raise
            finally:
                call.cancel()
            delay = watch_retry_delay(
                failure,
                backoff,
                deadline=deadline,
                timeout=timeout,
                closed=self._closed,
                route=route,
                events=events,
                opened=opened,
            )
            if delay:
                await self._sleep(delay)

    async def _cluster_for(self, resume: Resume) -> ClusterInfo | None:
        """The ``Cluster`` answer a subscription picks its follower from: one attempt on
        the usual route, bounded in time; ``None`` when it fails (the subscription then
        reads through the route)."""
        try:
            resp = await self._call(
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


T = TypeVar("T")


def _identity(frame: Frame) -> Frame:
    return frame


def _payload(frame: Frame) -> bytes:
    return frame.payload


class Subscription(AsyncGenerator[T, None], Generic[T]):
    """An async generator over a subscription's frames (or payloads), made by
    :meth:`Client.frames` and :meth:`Client.subscribe`: iterate it with ``async for``,
    stop it with ``break`` and ``aclose()`` (or ``async with``). Like
    :class:`framecast.Subscription`, it resumes exactly after a break, and tells where it
    stands and which node it reads from.

    A wait for the next frame that is cancelled (``asyncio.wait_for(anext(sub), t)``
    timing out, a cancelled task) ends it, loudly: the next ``anext`` (or ``async for``)
    raises :class:`framecast.errors.SubscriptionCancelled`. Its ``cursor`` still names
    exactly the last frame returned, so ``client.frames(topic, cursor=sub.cursor)``
    resumes with the next frame, none lost or repeated.
    """

    def __init__(
        self,
        resume: Resume,
        frames: AsyncGenerator[Frame, None],
        project: Callable[[Frame], T],
    ) -> None:
        self._resume = resume
        self._frames = frames
        self._project = project
        #: A wait for the next frame was cancelled, which ended the generator.
        self._cancelled = False

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
        return self._resume.reconnects

    @property
    def address(self) -> str | None:
        """The node (``host:port``) the subscription reads from now (or last, between a
        break and the resume): a follower with ``read_from="followers"``, else the
        client's current node; ``None`` before the first stream was opened."""
        return self._resume.node

    async def __anext__(self) -> T:
        """The next frame (or payload)."""
        try:
            return self._project(await self._frames.__anext__())
        except asyncio.CancelledError:
            # Thrown into the generator at its read: it is over (its stream cancelled).
            self._cancelled = True
            raise
        except StopAsyncIteration:
            if self._cancelled:
                raise self._cancelled_error() from None
            raise

    def _cancelled_error(self) -> errors.SubscriptionCancelled:
        r = self._resume
        return errors.SubscriptionCancelled(
            f"subscription {r.topic!r}: a wait for its next frame was cancelled (a timeout "
            f"or a cancelled task), which ended it; resume with "
            f"client.frames(topic, cursor=sub.cursor) (cursor {r.cursor}: the last frame "
            f"returned)"
        )

    async def asend(self, value: None) -> T:
        return await self.__anext__()

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
    ) -> T:
        return self._project(await self._frames.athrow(typ, val, tb))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Ends the subscription (its stream is cancelled). Idempotent."""
        await self._frames.aclose()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        r = self._resume
        return (
            f"aio.Subscription(topic={r.topic!r}, start={r.start}, cursor={r.cursor}, "
            f"address={r.node!r})"
        )


async def _accepted(call: Any) -> None:
    """Waits until the server took a ``PublishStream`` (its headers came), or refused it.
    A write racing a refusal (a follower naming the leader, answered at once) makes grpcio
    report the call as ``INTERNAL: Internal error from Core`` without the refusal's status
    and trailers; writing only once the call is known not to be over avoids that (nearly
    always; the rest is retried as a broken stream). Raises
    ``asyncio.InvalidStateError`` when the call is over."""
    await call.initial_metadata()
    await asyncio.sleep(0)  # lets a status that came with the headers land
    if call.done():
        raise asyncio.InvalidStateError("the call is over")


#: Seconds a shared stream with nothing to send or acknowledge stays open. Closing it then
#: lets go of the client: a client dropped without :meth:`Client.close` is collected (its
#: channel closes) and the stream's task ends, instead of both living as long as the loop.
_IDLE_CLOSE = 30.0


class _SharedStream:
    """A ``PublishStream`` shared by coalesced :meth:`Client.publish` calls (frames of the
    topics :func:`shared_stream_of` maps to it).

    Calls append ``(request, future)`` in order; a task keeps a stream open while there is
    work, writes every request not yet sent on it, and resolves the oldest future per ack
    (acks come in request order). When the stream ends, :func:`coalesced_stream_end`
    decides: fail only the refused frame's call, re-send every unacknowledged frame with
    its key (after a break, or on a stream with a fresh token when the provider renews an
    expired one: :class:`FreshToken`), or fail them all.
    """

    def __init__(self, client: Client) -> None:
        # The task holds the client only while a stream is open; a stream idle for
        # _IDLE_CLOSE seconds is closed, so a client dropped without close() is collected.
        self._client = weakref.ref(client)
        #: The stream (by count) the writer ended for being idle.
        self._streams_opened = 0
        self._idle_closed = -1
        self._pending: deque[tuple[pb.PublishRequest, asyncio.Future[pb.PublishAck]]] = deque()
        #: Acks received (the absolute position of ``_pending[0]``).
        self._base = 0
        #: The absolute position past the last frame the current stream was given.
        self._sent_below = 0
        #: Frames below this absolute position went out on a stream that broke before
        #: their acks: they may be stored, whatever a later stream's refusal says.
        self._doubt_below = 0
        self._work = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def submit(self, req: pb.PublishRequest) -> asyncio.Future[pb.PublishAck]:
        future: asyncio.Future[pb.PublishAck] = asyncio.get_running_loop().create_future()
        self._pending.append((req, future))
        self._work.set()
        return future

    def wake(self) -> None:
        """Wakes the task and the writer (the client is closing)."""
        self._work.set()

    def _gone(self) -> bool:
        client = self._client()
        return client is None or client.closed

    async def _wait_work(self, within: float) -> bool:
        """Waits up to ``within`` seconds for a wake; whether one came."""
        self._work.clear()
        try:
            await asyncio.wait_for(self._work.wait(), within)
            return True
        except (asyncio.TimeoutError, TimeoutError):
            return False

    async def _write(self, call: Any, stream: int) -> None:
        n = self._base
        try:
            await _accepted(call)
            while True:
                idle_since = time.monotonic()
                while n - self._base >= len(self._pending):
                    if self._gone():
                        await call.done_writing()
                        return
                    if self._pending:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since >= _IDLE_CLOSE:
                        # Every frame is acknowledged: the stream ends cleanly.
                        self._idle_closed = stream
                        await call.done_writing()
                        return
                    await self._wait_work(min(_IDLE_CLOSE, 1.0))
                self._sent_below = n + 1
                await call.write(self._pending[n - self._base][0])
                n += 1
        except (grpc.RpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            return  # the call ended; the reader sees why

    async def _run(self) -> None:
        try:
            await self._streams()
        finally:
            # However the task ends (its loop cancelling it, say), no caller waits for ever.
            while self._pending:
                _, future = self._pending.popleft()
                if not future.done():
                    future.set_exception(ClientClosed("publish: client closed"))

    async def _streams(self) -> None:
        client = self._client()
        if client is None:
            return
        backoff = Backoff(client.retry)
        route = Route(client._nodes)
        token = FreshToken(client._token)
        del client
        while True:
            while not self._pending:
                if self._gone():
                    return
                await self._wait_work(1.0)
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
            self._streams_opened += 1
            stream = self._streams_opened
            self._sent_below = self._base
            try:
                call = client._stub_for(route.next()).PublishStream(metadata=metadata)
            except (ClientClosed, grpc.aio.UsageError):
                call = None
            if call is not None:
                writer = asyncio.ensure_future(self._write(call, stream))
                try:
                    while True:
                        ack = await call.read()
                        if ack is grpc.aio.EOF or not self._pending:
                            break
                        _, future = self._pending.popleft()
                        self._base += 1
                        if not future.done():
                            future.set_result(ack)
                        backoff.reset()
                        route.progress()
                        token.accepted()
                except grpc.RpcError as e:
                    failure = e
                except asyncio.CancelledError:
                    # Closing the client cancels its calls: the pending ones end below.
                    if not client.closed:
                        raise
                finally:
                    writer.cancel()
                    call.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
            closed = client.closed
            del client, call  # while no stream is open, only the caller holds the client
            if not self._pending:
                continue
            if failure is None and self._idle_closed == stream:
                continue  # a publish came as the idle stream ended: on a new stream, at once
            action, delay, err = coalesced_stream_end(
                failure, backoff, closed=closed, route=route, token=token
            )
            if action == RESEND and stream_may_have_stored(failure):
                self._doubt_below = max(self._doubt_below, self._sent_below)
            failed: list[tuple[int, pb.PublishRequest, asyncio.Future[pb.PublishAck]]] = []
            if action == FAIL_OLDEST:
                failed.append((self._base, *self._pending.popleft()))
                self._base += 1
            elif action == FAIL_ALL:
                failed.extend((self._base + i, *p) for i, p in enumerate(self._pending))
                self._base += len(self._pending)
                self._pending.clear()
            for at, req, f in failed:
                if not f.done():
                    why = err if err is not None else ClientClosed("publish failed")
                    why = refused_fate(why, at < self._doubt_below)
                    f.set_exception(with_key(why, req.idempotency_key))
            if action == RESEND and delay:
                sleeper = self._client()
                if sleeper is None:
                    return
                try:
                    await sleeper._sleep(delay)
                except ClientClosed:
                    pass
                del sleeper

    def _fail_all(self, error: BaseException) -> None:
        """Fails every waiting call with ``error`` (the token provider's; stored-or-not for
        a frame that went out on a stream that broke: :func:`refused_fate`)."""
        while self._pending:
            req, f = self._pending.popleft()
            at = self._base
            self._base += 1
            if not f.done():
                why = token_fate(error, at < self._doubt_below)
                f.set_exception(with_key(why, req.idempotency_key))
