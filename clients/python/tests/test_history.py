"""History pages (``Client.history``, ``Client.history_pages`` and their asyncio twins)
against a real server: a walk yields exactly the stored frames below its snapshot, in
order-key order (or newest first), each once, with frames published during the walk left
out; a missing topic is ``NotFound`` and stays missing; a token of a deleted and re-created
topic is ``EpochChanged``; a bad limit is refused before anything is sent."""

from __future__ import annotations

import asyncio
import zlib

import pytest
from conftest import TEST_RETRY, ServerProcess

from framecast import Client, EpochChanged, Frame, HistoryPage, InvalidArgument, NotFound
from framecast import aio as framecast_aio


def keys(frames: tuple[Frame, ...] | list[Frame]) -> list[tuple[int, int, int]]:
    """``(seq_no, offset, crc32 of the payload)`` of each frame."""
    return [(f.seq_no, f.offset, zlib.crc32(f.payload)) for f in frames]


def publish_shapes(client: Client, topic: str) -> list[tuple[int, int, int]]:
    """230 frames whose seq_nos come out of order (and repeat), payloads 0 B to ~3 KB; the
    stored frames sorted by order key."""
    frames = [((i * 97) % 110, bytes([97 + i % 26]) * ((i * 37) % 3000)) for i in range(230)]
    acks = client.publish_many(frames, topic, timeout=30)
    # The order key is (seq_no, timestamp, offset), with the timestamps the acks gave.
    stored = sorted(
        (seq, a.timestamp, a.offset, zlib.crc32(p)) for (seq, p), a in zip(frames, acks)
    )
    return [(seq, offset, crc) for seq, _, offset, crc in stored]


def test_a_walk_reads_one_snapshot_in_order_key_order_both_ways(
    server: ServerProcess, topic: str
) -> None:
    with Client(server.address, retry=TEST_RETRY) as c:
        in_order = publish_shapes(c, topic)
        first = c.history(topic, limit=100)
        assert isinstance(first, HistoryPage)
        assert first.snapshot_offset == 230 and first.more and first.next
        assert not any(f.live for f in first.frames)
        c.publish(b"after the snapshot", seq_no=0, topic=topic)
        rest = list(c.history_pages(topic, limit=100, after=first.next))
        assert [len(p.frames) for p in rest] == [100, 30]
        assert [p.more for p in rest] == [True, False]
        assert {(p.snapshot_offset, p.epoch) for p in rest} == {(230, first.epoch)}
        walked = list(first.frames) + [f for p in rest for f in p.frames]
        assert keys(walked) == in_order

        # Newest first from seq_no 100, pages of 7 (a fresh walk: the frame published
        # above has seq_no 0, below the start).
        back = [
            f
            for p in c.history_pages(topic, from_seq_no=100, limit=7, reverse=True)
            for f in p.frames
        ]
        assert keys(back) == [k for k in reversed(in_order) if k[0] >= 100]

        # Refusals change nothing.
        with pytest.raises(NotFound):
            c.history(f"{topic}-missing")
        assert all(t.name != f"{topic}-missing" for t in c.list_topics())
        for bad in (0, -1):
            with pytest.raises(InvalidArgument):
                c.history(topic, limit=bad)
        token = c.history(topic, limit=10).next
        c.delete_topic(topic)
        c.publish(b"new epoch", seq_no=1, topic=topic)
        with pytest.raises(EpochChanged):
            c.history(topic, limit=10, after=token)


def test_the_asyncio_client_walks_the_same_pages(server: ServerProcess, topic: str) -> None:
    with Client(server.address, retry=TEST_RETRY) as c:
        in_order = publish_shapes(c, topic)

    async def walk() -> tuple[list[HistoryPage], HistoryPage]:
        async with framecast_aio.Client(server.address, retry=TEST_RETRY) as ac:
            pages = [p async for p in ac.history_pages(topic, limit=64)]
            newest = await ac.history(topic, limit=1, reverse=True)
            with pytest.raises(NotFound):
                await ac.history(f"{topic}-missing")
            return pages, newest

    pages, newest = asyncio.run(asyncio.wait_for(walk(), 30))
    assert [len(p.frames) for p in pages] == [64, 64, 64, 38]
    assert keys([f for p in pages for f in p.frames]) == in_order
    assert keys(newest.frames) == in_order[-1:]


class BusyHistory:
    """A stand-in server (grpcio) whose History answers as the real one does when its page
    budget stays spent: ``RESOURCE_EXHAUSTED`` "...; ask again later" for the first
    ``busy`` calls, then a page. (Making the real server hold 128 MiB of unread pages for
    5 s per refusal is too slow for a test.) ``message`` replaces the refusal's text."""

    BUSY = (
        "128 MiB of History pages are waiting for their clients to read them; ask again later"
    )

    def __init__(self, busy: int, message: str = BUSY) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        import grpc

        from framecast._proto import framecast_pb2 as pb

        self.calls = 0
        lock = threading.Lock()

        def history(request: pb.HistoryRequest, context: grpc.ServicerContext) -> pb.HistoryPage:
            with lock:
                self.calls += 1
                n = self.calls
            if n <= busy:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            return pb.HistoryPage(
                frames=[pb.Frame(seq_no=1, payload=b"x", offset=0)], snapshot_offset=1, epoch=7
            )

        handler = grpc.method_handlers_generic_handler(
            "framecast.v1.Broadcast",
            {
                "History": grpc.unary_unary_rpc_method_handler(
                    history,
                    request_deserializer=pb.HistoryRequest.FromString,
                    response_serializer=pb.HistoryPage.SerializeToString,
                )
            },
        )
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


def test_history_busy_is_asked_again_later_within_the_budget() -> None:
    # History's "ask again later" refusal is retried with backoff (sync and asyncio);
    # --max-subscribers' RESOURCE_EXHAUSTED is not; a budget spent on refusals ends in
    # Unavailable.
    from framecast import ResourceExhausted, RetryPolicy, Unavailable

    quick = RetryPolicy(initial=0.02, max_delay=0.1, max_elapsed=2.0)
    fake = BusyHistory(busy=2)
    try:
        with Client(fake.address, retry=quick) as c:
            page = c.history("t")
            assert [f.seq_no for f in page.frames] == [1] and fake.calls == 3
            fake.calls = 0

        async def aio() -> HistoryPage:
            async with framecast_aio.Client(fake.address, retry=quick) as c:
                return await c.history("t")

        assert asyncio.run(asyncio.wait_for(aio(), 10)).epoch == 7 and fake.calls == 3
    finally:
        fake.stop()
    always = BusyHistory(busy=1 << 30)
    short = RetryPolicy(initial=0.02, max_delay=0.1, max_elapsed=0.5)
    try:
        with Client(always.address, retry=short) as c:
            with pytest.raises(Unavailable, match="ask again later"):
                c.history("t")
            assert always.calls > 2
    finally:
        always.stop()
    limit = BusyHistory(busy=1 << 30, message="too many subscribers (limit 1)")
    try:
        with Client(limit.address, retry=quick) as c:
            with pytest.raises(ResourceExhausted):
                c.history("t")
            assert limit.calls == 1
    finally:
        limit.stop()
