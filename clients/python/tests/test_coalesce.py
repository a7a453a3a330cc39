"""Coalesced publish() (``Client(coalesce=True)``) against the real server: concurrent calls
from threads share one PublishStream per topic, each gets its own ack, exactly once across a
kill -9, and a frame the server refuses fails only its own call; the same for the asyncio
client with tasks."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import TEST_RETRY, ServerProcess

from framecast import Ack, Client, InvalidArgument, RetryPolicy, Unavailable
from framecast.aio import Client as AioClient

THREADS = 32


def stored(client: Client, topic: str, n: int) -> dict[bytes, list[tuple[int, int]]]:
    """payload -> [(offset, seq_no)] of the topic's first ``n`` frames."""
    out: dict[bytes, list[tuple[int, int]]] = {}
    with client.frames(topic, 0) as sub:
        for _, f in zip(range(n), sub):
            out.setdefault(f.payload, []).append((f.offset, f.seq_no))
    return out


def assert_exactly_once(client: Client, topic: str, acks: list[tuple[int, bytes, Ack]]) -> None:
    log = stored(client, topic, len(acks))
    for seq_no, payload, ack in acks:
        assert log.get(payload) == [(ack.offset, seq_no)], (payload, ack)
    info = {t.name: t for t in client.list_topics()}[topic]
    assert info.frames == len(acks), "a stray or doubled frame is stored"


def publish_all(client: Client, topic: str, per_thread: int, pause: float = 0.0):  # type: ignore[no-untyped-def]
    def worker(t: int) -> list[tuple[int, bytes, Ack]]:
        out = []
        for i in range(per_thread):
            payload = f"t{t}-{i}".encode()
            out.append((t * 1000 + i, payload, client.publish(payload, t * 1000 + i, topic)))
            if pause:
                time.sleep(pause)
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        return [a for r in pool.map(worker, range(THREADS)) for a in r]


def test_concurrent_publishes_get_their_own_acks(server: ServerProcess) -> None:
    with Client(server.address, retry=TEST_RETRY, coalesce=True) as c:
        acks = publish_all(c, "co", 20)
        assert len(acks) == THREADS * 20
        assert len({a.offset for _, _, a in acks}) == len(acks)
        assert not any(a.duplicate for _, _, a in acks)
        assert_exactly_once(c, "co", acks)


def test_exactly_once_across_kill9(restartable_server: ServerProcess) -> None:
    srv = restartable_server
    with Client(srv.address, retry=TEST_RETRY, coalesce=True) as c:
        result: list[list[tuple[int, bytes, Ack]]] = []
        # At least 1 s of load (200 paced publishes per thread), so both kills land in it
        # however fast the machine.
        t = threading.Thread(target=lambda: result.append(publish_all(c, "ck", 200, 0.005)))
        t.start()
        for _ in range(2):
            time.sleep(0.15)
            assert t.is_alive(), "the kill came after the load ended"
            srv.kill()
            srv.restart()
        t.join(60)
        assert not t.is_alive() and result
        assert len(result[0]) == THREADS * 200
        assert_exactly_once(c, "ck", result[0])


def test_an_invalid_frame_fails_only_its_own_call(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("--max-frame-bytes", "1024")
    with Client(srv.address, retry=TEST_RETRY, coalesce=True) as c:

        def worker(t: int) -> list[tuple[int, bytes, Ack | Exception]]:
            out: list[tuple[int, bytes, Ack | Exception]] = []
            for i in range(10):
                big = t % 8 == 0 and i == 5
                payload = (f"big-t{t}-" + "x" * 2000 if big else f"t{t}-{i}").encode()
                try:
                    out.append((t * 1000 + i, payload, c.publish(payload, t * 1000 + i, "cv")))
                except InvalidArgument as e:
                    out.append((t * 1000 + i, payload, e))
            return out

        with ThreadPoolExecutor(THREADS) as pool:
            results = [r for rs in pool.map(worker, range(THREADS)) for r in rs]
        refused = [p for _, p, r in results if isinstance(r, Exception)]
        assert sorted(refused) == sorted(p for _, p, _ in results if p.startswith(b"big-"))
        assert len(refused) == THREADS // 8
        with pytest.raises(InvalidArgument):
            c.publish(b"x", 1, "bad name")
        acks = [(s, p, r) for s, p, r in results if isinstance(r, Ack)]
        assert len(acks) == THREADS * 10 - THREADS // 8
        assert_exactly_once(c, "cv", acks)


def test_a_payload_over_the_clients_largest_message_fails_only_its_own_call(
    server: ServerProcess,
) -> None:
    """A payload over the client's 64 MiB message limit is refused before it is queued:
    grpcio failed the shared stream locally, and an innocent call took its place as the one
    refused (though stored)."""
    huge = bytes(65 << 20)
    with Client(server.address, retry=TEST_RETRY, coalesce=True) as c:

        def worker(t: int) -> list[tuple[int, bytes, Ack]]:
            out = []
            for i in range(10):
                if t == 0 and i == 5:
                    with pytest.raises(InvalidArgument):
                        c.publish(huge, t * 1000 + i, "cbig")
                    continue
                payload = f"t{t}-{i}".encode()
                out.append((t * 1000 + i, payload, c.publish(payload, t * 1000 + i, "cbig")))
            return out

        with ThreadPoolExecutor(8) as pool:
            acks = [r for rs in pool.map(worker, range(8)) for r in rs]
        assert len(acks) == 79
        assert_exactly_once(c, "cbig", acks)
        # A broadcast whose payload fits but whose topic names take it past the limit.
        near = huge[: (64 << 20) - (64 << 10) - 16]
        with pytest.raises(InvalidArgument):
            c.broadcast([f"{i:0>100}" for i in range(1000)], near, 1)

    async def aio() -> list[tuple[int, bytes, Ack]]:
        async with AioClient(server.address, retry=TEST_RETRY, coalesce=True) as c:

            async def one(t: int, i: int) -> tuple[int, bytes, Ack] | None:
                if t == 0 and i == 5:
                    with pytest.raises(InvalidArgument):
                        await c.publish(huge, t * 1000 + i, "abig")
                    return None
                payload = f"a{t}-{i}".encode()
                return (t * 1000 + i, payload, await c.publish(payload, t * 1000 + i, "abig"))

            out = await asyncio.gather(*(one(t, i) for t in range(8) for i in range(10)))
            return [a for a in out if a is not None]

    aio_acks = asyncio.run(asyncio.wait_for(aio(), 60))
    assert len(aio_acks) == 79
    with Client(server.address, retry=TEST_RETRY) as c:
        assert_exactly_once(c, "abig", aio_acks)


# ------------------------------------------------------------------ asyncio client

TASKS = 64


async def aio_publish_all(
    c: AioClient, topic: str, per_task: int, pause: float = 0.0
) -> list[tuple[int, bytes, Ack]]:
    async def worker(t: int) -> list[tuple[int, bytes, Ack]]:
        out = []
        for i in range(per_task):
            payload = f"a{t}-{i}".encode()
            out.append((t * 1000 + i, payload, await c.publish(payload, t * 1000 + i, topic)))
            if pause:
                await asyncio.sleep(pause)
        return out

    results = await asyncio.gather(*(worker(t) for t in range(TASKS)))
    return [a for r in results for a in r]


def test_aio_concurrent_publishes_get_their_own_acks(server: ServerProcess) -> None:
    async def main() -> list[tuple[int, bytes, Ack]]:
        async with AioClient(server.address, retry=TEST_RETRY, coalesce=True) as c:
            return await aio_publish_all(c, "aco", 10)

    acks = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(acks) == TASKS * 10
    assert len({a.offset for _, _, a in acks}) == len(acks)
    with Client(server.address, retry=TEST_RETRY) as c:
        assert_exactly_once(c, "aco", acks)


def test_aio_exactly_once_across_kill9(restartable_server: ServerProcess) -> None:
    srv = restartable_server

    async def main() -> list[tuple[int, bytes, Ack]]:
        async with AioClient(srv.address, retry=TEST_RETRY, coalesce=True) as c:
            # At least 1 s of load, so both kills land in it however fast the machine.
            load = asyncio.ensure_future(aio_publish_all(c, "ack", 200, 0.005))
            for _ in range(2):
                await asyncio.sleep(0.15)
                assert not load.done(), "the kill came after the load ended"
                await asyncio.to_thread(srv.kill)
                await asyncio.to_thread(srv.restart)
            return await load

    acks = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(acks) == TASKS * 200
    with Client(srv.address, retry=TEST_RETRY) as c:
        assert_exactly_once(c, "ack", acks)


def test_aio_an_invalid_frame_fails_only_its_own_call(make_server) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("--max-frame-bytes", "1024")

    async def main() -> list[tuple[int, bytes, Ack | Exception]]:
        async with AioClient(srv.address, retry=TEST_RETRY, coalesce=True) as c:

            async def one(t: int, i: int) -> tuple[int, bytes, Ack | Exception]:
                big = t % 8 == 0 and i == 5
                payload = (f"big-a{t}-" + "x" * 2000 if big else f"a{t}-{i}").encode()
                try:
                    return (t * 1000 + i, payload, await c.publish(payload, t * 1000 + i, "acv"))
                except InvalidArgument as e:
                    return (t * 1000 + i, payload, e)

            out = await asyncio.gather(*(one(t, i) for t in range(TASKS) for i in range(10)))
            with pytest.raises(InvalidArgument):
                await c.publish(b"x", 1, "bad name")
            return list(out)

    results = asyncio.run(asyncio.wait_for(main(), 60))
    refused = sorted(p for _, p, r in results if isinstance(r, Exception))
    assert refused == sorted(p for _, p, _ in results if p.startswith(b"big-"))
    assert len(refused) == TASKS // 8
    acks = [(s, p, r) for s, p, r in results if isinstance(r, Ack)]
    with Client(srv.address, retry=TEST_RETRY) as c:
        assert_exactly_once(c, "acv", acks)


def test_coalesced_publishes_to_more_topics_than_a_connection_has_streams(make_server) -> None:  # type: ignore[no-untyped-def]
    """40 topics through a server that takes 16 streams per connection: every publish
    returns, in order per topic (coalesced streams are shared by topics, not one per topic,
    which held a stream open per topic and stopped at the 17th), blocking and asyncio."""
    srv = make_server("--max-streams-per-connection", "16")
    with Client(srv.address, retry=TEST_RETRY, coalesce=True) as c:
        for r in range(2):
            for t in range(40):
                ack = c.publish(f"r{r}".encode(), r, f"sync-{t}", timeout=20)
                assert ack.offset == r, t

    async def main() -> None:
        async with AioClient(srv.address, retry=TEST_RETRY, coalesce=True) as c:
            for r in range(2):
                for t in range(40):
                    ack = await c.publish(f"r{r}".encode(), r, f"aio-{t}", timeout=20)
                    assert ack.offset == r, t

    asyncio.run(asyncio.wait_for(main(), 120))
    with Client(srv.address, retry=TEST_RETRY) as c:
        for prefix in ("sync", "aio"):
            for t in range(40):
                got = [f.payload for f in c.history(f"{prefix}-{t}").frames]
                assert got == [b"r0", b"r1"], (prefix, t)


def test_a_client_dropped_without_close_lets_go_of_its_stream_and_thread(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coalescing thread holds the client only while a stream is open, and an idle
    stream closes: a client dropped without ``close()`` is collected and its thread ends,
    instead of both (and the server's stream) living as long as the process."""
    import framecast.client

    monkeypatch.setattr(framecast.client, "_IDLE_CLOSE", 0.5, raising=False)
    before = set(threading.enumerate())
    c = Client(server.address, retry=TEST_RETRY, coalesce=True)
    assert c.publish(b"x", 1, "dropped").offset == 0
    threads = [t for t in threading.enumerate() if t not in before and t.name == "framecast-coalesce"]
    assert threads
    client = weakref.ref(c)
    del c
    deadline = time.monotonic() + 10
    while (client() is not None or any(t.is_alive() for t in threads)) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.1)
    assert client() is None, "the dropped client is still referenced"
    assert not any(t.is_alive() for t in threads), "its coalescing thread still runs"


def test_an_aio_client_dropped_without_close_lets_go_of_its_stream_and_task(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio client's coalescing task, the same way: a client dropped without
    ``close()`` is collected once its idle stream closes, and the task ends."""
    import framecast.aio

    monkeypatch.setattr(framecast.aio, "_IDLE_CLOSE", 0.5, raising=False)

    async def main() -> None:
        before = asyncio.all_tasks()
        c = AioClient(server.address, retry=TEST_RETRY, coalesce=True)
        assert (await c.publish(b"x", 1, "dropped-aio")).offset == 0
        tasks = [t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()]
        assert tasks
        client = weakref.ref(c)
        del c
        deadline = time.monotonic() + 10
        while (client() is not None or not all(t.done() for t in tasks)) and time.monotonic() < deadline:
            gc.collect()
            await asyncio.sleep(0.1)
        assert client() is None, "the dropped client is still referenced"
        assert all(t.done() for t in tasks), "its coalescing task still runs"

    asyncio.run(main())


#: A short budget: one outage spends it quickly, and a server started 0.3 s into it has
#: the rest (1.7 s) to come up on a loaded machine.
SHORT_BUDGET = RetryPolicy(initial=0.02, max_delay=0.2, max_elapsed=2.0)


def _outage_then_return(srv: ServerProcess, publish) -> float:  # type: ignore[no-untyped-def]
    """Kills ``srv``; ``publish()`` spends the whole budget (Unavailable); then ``srv``
    comes back 0.3 s into a second ``publish()``, well within a fresh budget, and that one
    must be acknowledged. Returns how long the second publish took."""
    srv.kill()
    t0 = time.monotonic()
    with pytest.raises(Unavailable):
        publish()
    assert time.monotonic() - t0 >= SHORT_BUDGET.max_elapsed * 0.9, "gave up before its budget"
    timer = threading.Timer(0.3, srv.start)
    timer.start()
    try:
        t0 = time.monotonic()
        publish()
        return time.monotonic() - t0
    finally:
        timer.join()


def test_a_coalesced_publish_after_an_outage_gets_a_budget_of_its_own(
    restartable_server: ServerProcess, topic: str
) -> None:
    # The shared stream's backoff must start over once the outage's calls failed: a later
    # publish is measured from its own first failure, not from the old outage's.
    srv = restartable_server
    with Client(srv.address, retry=SHORT_BUDGET, coalesce=True) as c:
        c.publish(b"before", 1, topic=topic, timeout=10)
        took = _outage_then_return(srv, lambda: c.publish(b"p", 2, topic=topic, timeout=10))
        assert took >= 0.3  # it waited for the server


def test_an_aio_coalesced_publish_after_an_outage_gets_a_budget_of_its_own(
    restartable_server: ServerProcess, topic: str
) -> None:
    srv = restartable_server

    async def main() -> None:
        async with AioClient(srv.address, retry=SHORT_BUDGET, coalesce=True) as c:
            await c.publish(b"before", 1, topic=topic, timeout=10)
            srv.kill()
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                await c.publish(b"p", 2, topic=topic, timeout=10)
            assert time.monotonic() - t0 >= SHORT_BUDGET.max_elapsed * 0.9
            timer = threading.Timer(0.3, srv.start)
            timer.start()
            try:
                ack = await c.publish(b"p", 2, topic=topic, timeout=10)
            finally:
                await asyncio.get_running_loop().run_in_executor(None, timer.join)
            assert ack.offset == 1

    asyncio.run(asyncio.wait_for(main(), 30))
