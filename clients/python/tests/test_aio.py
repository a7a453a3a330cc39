"""The asyncio client against the real server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
from conftest import TEST_RETRY, ServerProcess

import framecast
from framecast import Ack, Frame, InvalidArgument, NotFound, SubscriptionCancelled
from framecast.aio import Client

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    """Runs ``coro`` in a fresh event loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def take(agen: AsyncIterator[T], n: int, timeout: float = 20.0) -> list[T]:
    """The next ``n`` items of ``agen``, within ``timeout`` seconds."""

    async def collect() -> list[T]:
        out: list[T] = []
        async for item in agen:
            out.append(item)
            if len(out) == n:
                break
        return out

    got = await asyncio.wait_for(collect(), timeout)
    assert len(got) == n
    return got


def test_aio_round_trip(server: ServerProcess, topic: str) -> None:
    async def main() -> None:
        async with Client(server.address, retry=TEST_RETRY) as client:
            ack = await client.publish(b"hello", seq_no=1, topic=topic)
            assert isinstance(ack, Ack) and ack.offset == 0 and not ack.duplicate
            acks = await client.publish_many([(3, b"c"), (2, b"b", 5_000)], topic, window=1)
            assert [a.offset for a in acks] == [1, 2] and acks[1].timestamp == 5_000

            payloads = client.subscribe(topic=topic, start=0)
            assert await take(payloads, 3) == [b"hello", b"b", b"c"]
            await payloads.aclose()

            frames = client.frames(topic=topic, start=2)
            got = await take(frames, 2)
            assert [(f.seq_no, f.offset, f.live) for f in got] == [(2, 2, False), (3, 1, False)]
            # Live frames on the same generator.
            await client.publish(b"live", seq_no=9, topic=topic)
            (live,) = await take(frames, 1)
            assert (live.payload, live.offset, live.live) == (b"live", 3, True)
            # Where it stands, as the sync subscription says it.
            assert frames.snapshot_offset == 3
            cursor = frames.cursor
            assert cursor is not None and frames.epoch == cursor.epoch
            await frames.aclose()

            seen: list[Frame] = []

            async def on_frame(f: Frame) -> None:
                seen.append(f)

            acks = await client.run(
                [(20, b"r1"), (21, b"r2")], topic, start=20, on_frame=on_frame, timeout=20
            )
            assert [a.offset for a in acks] == [4, 5]
            assert [f.payload for f in seen] == [b"r1", b"r2"]

            names = {t.name for t in await client.list_topics()}
            assert topic in names
            await client.delete_topic(topic)
            with pytest.raises(NotFound):
                await client.delete_topic(topic)
            info = await client.create_topic(topic)
            assert info.next_offset == 0

    run(main())


def test_aio_broadcast(server: ServerProcess, topic: str) -> None:
    async def main() -> None:
        async with Client(server.address, retry=TEST_RETRY) as client:
            for t in (f"{topic}.a", f"{topic}.b"):
                await client.create_topic(t)
            acks = await client.broadcast([f"{topic}.*"], b"to both", seq_no=3)
            assert sorted(acks) == [f"{topic}.a", f"{topic}.b"]
            assert all(a.offset == 0 and not a.duplicate for a in acks.values())
            with pytest.raises(InvalidArgument):
                await client.broadcast([f"{topic}.a", "bad name"], b"never")
            listed = {t.name: t.frames for t in await client.list_topics()}
            assert (listed[f"{topic}.a"], listed[f"{topic}.b"]) == (1, 1)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_aio_errors_are_the_package_exceptions(server: ServerProcess, topic: str) -> None:
    async def main() -> None:
        async with Client(server.address, retry=TEST_RETRY) as client:
            with pytest.raises(InvalidArgument, match="topic name"):
                await client.publish(b"x", 1, topic="no/slashes")
            with pytest.raises(InvalidArgument, match="negative timestamp"):
                await client.publish(b"x", 1, topic=topic, timestamp=-1)
            with pytest.raises(InvalidArgument, match="frame 1") as info:
                await client.publish_many([(1, b"ok"), (2, b"bad", -1)], topic)
            assert len(info.value.acks) == 1
            with pytest.raises(InvalidArgument):
                await take(client.frames("bad name", 0), 1)
            with pytest.raises(framecast.DeadlineExceeded):
                async for _ in client.frames(topic, 0, timeout=0.3):
                    pass
        with pytest.raises(framecast.ClientClosed):
            await client.publish(b"x", 1, topic)

    run(main())


def test_aio_subscription_resumes_across_kill9(
    restartable_server: ServerProcess, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv = restartable_server
    caplog.set_level(logging.DEBUG, logger="framecast")

    async def main() -> None:
        async with (
            Client(srv.address, retry=TEST_RETRY) as pub,
            Client(
                srv.address, retry=TEST_RETRY, channel_options=[("grpc.http2.bdp_probe", 0)]
            ) as subc,
        ):
            await pub.publish_many(
                [(1000 - i, b"h%04d" % i + b"x" * 500) for i in range(1000)], topic
            )
            frames = subc.frames(topic, 0, timeout=60)
            got = await take(frames, 300)
            # kill -9 during replay (in a thread: restart blocks until the server is up).
            await asyncio.to_thread(srv.restart)
            got += await take(frames, 700)
            published = [
                await pub.publish(b"live-%d" % i, seq_no=i, topic=topic) for i in range(50)
            ]
            got += await take(frames, 20)
            await asyncio.to_thread(srv.restart)  # and during live
            published += [
                await pub.publish(b"live-%d" % i, seq_no=i, topic=topic) for i in range(50, 60)
            ]
            got += await take(frames, 40)
            await frames.aclose()

        history = got[:1000]
        assert not any(f.live for f in history)
        assert [f.order_key for f in history] == sorted(f.order_key for f in history)
        assert len({f.offset for f in history}) == 1000
        live = got[1000:]
        assert all(f.live for f in live)
        assert [(f.offset, f.timestamp) for f in live] == [
            (a.offset, a.timestamp) for a in published
        ]
        resumes = [
            r
            for r in caplog.records
            if "subscription" in r.getMessage() and "broken" in r.getMessage()
        ]
        assert len(resumes) >= 2, "the kills did not break the subscription"

    run(main(), timeout=90)


def test_aio_cluster_watch_ends_with_client_closed(server: ServerProcess) -> None:
    async def main() -> None:
        client = Client(server.address, retry=TEST_RETRY)
        watch = client.watch_cluster(timeout=30)
        first = await asyncio.wait_for(anext(watch), 15)
        assert first.kind == "NODE_ONLINE" and first.node_id == "standalone"
        waiting = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.2)  # waiting on the open stream: a quiet cluster says nothing
        assert not waiting.done()
        await client.close()
        with pytest.raises(framecast.ClientClosed):
            await asyncio.wait_for(waiting, 10)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_aio_publish_without_a_key_is_not_retried(topic: str) -> None:
    """A publish with ``idempotency_key=""`` cannot tell a retry from a new frame: one
    attempt, coalescing or not (the blocking client's rule)."""
    import time

    from conftest import free_port

    from framecast import RetryPolicy, Unavailable

    addr = f"127.0.0.1:{free_port()}"

    async def main() -> None:
        for coalesce in (False, True):
            policy = RetryPolicy(initial=0.2, max_delay=0.2, max_elapsed=1.5)
            async with Client(addr, retry=policy, coalesce=coalesce) as c:
                t0 = time.monotonic()
                with pytest.raises(Unavailable) as info:
                    await c.publish(b"x", 1, topic, idempotency_key="")
                assert info.value.attempts == 1 and time.monotonic() - t0 < 2, coalesce
                # With a key the same failure is retried.
                with pytest.raises(Unavailable) as info:
                    await c.publish(b"x", 1, topic, timeout=None)
                assert info.value.attempts >= 2, coalesce

    asyncio.run(asyncio.wait_for(main(), 30))


def test_aio_close_ends_every_call_in_flight_with_client_closed(make_server) -> None:  # type: ignore[no-untyped-def]
    """Calls in flight when the client closes — a unary publish, a coalesced one, a
    publish_many, a subscription waiting for frames — all end with ``ClientClosed`` (not
    ``CancelledError``; a coalesced publish without a timeout waited for ever). The server is
    paused (SIGSTOP) so that every call is still waiting when ``close()`` comes."""
    import os
    import signal

    from framecast import ClientClosed

    srv = make_server()

    async def main() -> None:
        plain = Client(srv.address, retry=TEST_RETRY)
        shared = Client(srv.address, retry=TEST_RETRY, coalesce=True)
        await plain.publish(b"x", 1, "closing")
        await shared.publish(b"x", 2, "closing")
        frames = plain.frames("closing", 0)
        assert (await asyncio.wait_for(frames.__anext__(), 10)).seq_no == 1
        await asyncio.wait_for(frames.__anext__(), 10)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            calls = [
                asyncio.ensure_future(plain.publish(b"y", 3, "closing")),
                asyncio.ensure_future(shared.publish(b"y", 4, "closing")),
                asyncio.ensure_future(plain.publish_many([(5, b"z")], "closing")),
                asyncio.ensure_future(frames.__anext__()),
            ]
            await asyncio.sleep(0.5)
            assert not any(c.done() for c in calls), "a call ended before close()"
            await plain.close()
            await shared.close()
            results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 20)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        for what, r in zip(("publish", "coalesced", "publish_many", "subscription"), results):
            assert isinstance(r, ClientClosed), (what, repr(r))

    asyncio.run(asyncio.wait_for(main(), 60))


def test_aio_publish_that_gave_up_names_its_key(
    make_server, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # Unavailable (outcome unknown) names the key, coalesced or not; a retry with it
    # stores the frame once.
    srv = make_server(fixed_port=True)
    short = framecast.RetryPolicy(initial=0.02, max_delay=0.1, max_elapsed=0.5)

    async def main() -> None:
        for coalesce in (False, True):
            async with Client(srv.address, retry=short, coalesce=coalesce) as c:
                name = f"{topic}-{int(coalesce)}"
                await c.create_topic(name)
                srv.kill()
                with pytest.raises(framecast.Unavailable) as info:
                    await c.publish(b"once", 1, topic=name, timeout=10)
                with pytest.raises(framecast.Unavailable) as other:
                    await c.broadcast([name], b"all", 2, timeout=10)
                key = info.value.idempotency_key
                assert key and other.value.idempotency_key and key != other.value.idempotency_key
                srv.start()
            # Any client may send it again (this one reconnects at once).
            async with Client(srv.address, retry=TEST_RETRY) as c:
                await c.publish(b"once", 1, topic=name, idempotency_key=key, timeout=10)
                ack = await c.publish(b"once", 1, topic=name, idempotency_key=key, timeout=10)
                assert ack.duplicate

    run(main(), 30)


def test_a_cancelled_wait_for_the_next_frame_ends_the_subscription_loudly(
    server: ServerProcess, topic: str
) -> None:
    # asyncio.wait_for(anext(sub), t) timing out ends the subscription: the next anext
    # raises SubscriptionCancelled (an async for too, rather than just ending), and a
    # subscription resumed from sub.cursor gets exactly the next frames, including one
    # published while nobody waited: no gap, no duplicate.
    async def main() -> None:
        async with Client(server.address, retry=TEST_RETRY) as c:
            await c.publish(b"first", 1, topic=topic)
            sub = c.frames(topic)
            first = await asyncio.wait_for(anext(sub), 10)
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await asyncio.wait_for(anext(sub), 0.2)
            await c.publish(b"while cancelled", 2, topic=topic)
            await asyncio.sleep(0.2)
            with pytest.raises(SubscriptionCancelled, match="cursor=sub.cursor"):
                await anext(sub)
            with pytest.raises(SubscriptionCancelled):
                async for _ in sub:
                    pass
            assert isinstance(SubscriptionCancelled("x"), RuntimeError)
            saved = sub.cursor
            assert saved is not None and saved.offset == first.offset == 0
            await sub.aclose()
            await c.publish(b"after", 3, topic=topic)
            async with c.frames(topic, cursor=saved) as resumed:
                got = [await asyncio.wait_for(anext(resumed), 10) for _ in range(2)]
                with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                    await asyncio.wait_for(anext(resumed), 0.3)
            assert [f.offset for f in got] == [1, 2]
            assert [f.payload for f in got] == [b"while cancelled", b"after"]

    run(main(), 30)
