"""Faults the server does not make on cue, through :mod:`fault_proxy` in front of the real
server: a publish stream that breaks after the server stored a frame whose ack is lost, its
frames then refused for good on the stream opened again; a subscription whose old stream
the server still counts (a connection that died half-open) when it resumes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import TEST_RETRY, ServerProcess, run_bounded
from fault_proxy import FaultProxy

from framecast import (
    Client,
    FateUnknown,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
)
from framecast.aio import Client as AioClient

FRAMES = 8
#: The first PublishStream loses the ack of its 4th frame (stored) and breaks; every later
#: one is refused for good.
BREAK_THEN_REFUSE = {
    "PublishStream": [{"break_after": 3}] + [{"refuse": "PERMISSION_DENIED"}] * 50
}


def stored_payloads(server: ServerProcess, topic: str) -> list[bytes]:
    with Client(server.address, retry=TEST_RETRY) as c:
        return [f.payload for f in c.history(topic, limit=1000).frames]


def check_fates(stored: list[bytes], outcomes: dict[bytes, Any]) -> None:
    """No frame stored twice; an acked one stored; one reported refused not stored; one
    stored but not acked reported stored-or-not (FateUnknown), never refused."""
    assert len(stored) == len(set(stored)), stored
    for payload, out in outcomes.items():
        if isinstance(out, BaseException):
            if payload in stored:
                assert isinstance(out, FateUnknown), (payload, repr(out))
                assert isinstance(out.refusal, PermissionDenied)
                assert out.idempotency_key
            else:
                assert isinstance(out, (FateUnknown, PermissionDenied)), (payload, repr(out))
        else:
            assert payload in stored, payload
    # The scenario happened: the frame whose ack was lost is stored, unacknowledged.
    assert any(isinstance(outcomes[p], BaseException) for p in stored), (stored, outcomes)


def failing_after_first(bad: str) -> Any:
    """A token provider that gives a token once, then raises (``bad == "raises"``) or gives
    ``None``, a token the client cannot send."""
    asked = []

    def token() -> Any:
        asked.append(1)
        if len(asked) == 1:
            return "a-token"
        if bad == "raises":
            raise RuntimeError("the token source is down")
        return None

    return token


def publish_concurrently(c: Client, topic: str) -> dict[bytes, Any]:
    """``FRAMES`` publishes at once from as many threads (coalesced over one stream): each
    payload's ack, or the exception its call raised."""
    outcomes: dict[bytes, Any] = {}
    barrier = threading.Barrier(FRAMES)

    def publish(i: int) -> None:
        payload = f"f{i}".encode()
        barrier.wait(10)
        try:
            outcomes[payload] = c.publish(payload, i, topic, timeout=20)
        except Exception as e:
            outcomes[payload] = e

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(FRAMES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(outcomes) == FRAMES
    return outcomes


def test_coalesced_frames_of_a_broken_stream_refused_again_are_stored_or_not(
    server: ServerProcess, topic: str
) -> None:
    proxy = FaultProxy(server.address, BREAK_THEN_REFUSE)
    try:
        with Client(proxy.address, retry=TEST_RETRY, coalesce=True) as c:
            outcomes = publish_concurrently(c, topic)
            # A frame that goes out only on refused streams keeps the refusal.
            with pytest.raises(PermissionDenied):
                c.publish(b"later", 99, topic, timeout=20)
        stored = stored_payloads(server, topic)
        check_fates(stored, outcomes)
        assert b"later" not in stored
    finally:
        proxy.stop()


@pytest.mark.parametrize("bad", ["raises", "gives None"])
def test_coalesced_frames_of_a_broken_stream_whose_token_provider_then_fails_are_stored_or_not(
    server: ServerProcess, topic: str, bad: str
) -> None:
    # The stream breaks after 3 acks (the 4th frame is stored, its ack lost); opening the
    # next one, the token provider raises: a stored frame must not report the provider's
    # error alone (which says "not stored"), but FateUnknown caused by it.
    proxy = FaultProxy(server.address, {"PublishStream": [{"break_after": 3}]})
    token = failing_after_first(bad)

    try:
        with Client(proxy.address, retry=TEST_RETRY, coalesce=True, token=token) as c:
            outcomes = publish_concurrently(c, topic)
        stored = stored_payloads(server, topic)
        assert len(stored) == len(set(stored)), stored
        in_doubt = [p for p in stored if isinstance(outcomes[p], BaseException)]
        assert in_doubt, (stored, outcomes)  # the scenario happened
        for p in in_doubt:
            out = outcomes[p]
            assert isinstance(out, FateUnknown), (p, repr(out))
            assert isinstance(out.refusal, Unauthenticated)
            assert out.__cause__ is not None
            assert out.idempotency_key
    finally:
        proxy.stop()


def test_aio_coalesced_frames_of_a_broken_stream_refused_again_are_stored_or_not(
    server: ServerProcess, topic: str
) -> None:
    proxy = FaultProxy(server.address, BREAK_THEN_REFUSE)

    async def main() -> dict[bytes, Any]:
        async with AioClient(proxy.address, retry=TEST_RETRY, coalesce=True) as c:
            payloads = [f"f{i}".encode() for i in range(FRAMES)]
            got = await asyncio.gather(
                *(c.publish(p, i, topic, timeout=20) for i, p in enumerate(payloads)),
                return_exceptions=True,
            )
            with pytest.raises(PermissionDenied):
                await c.publish(b"later", 99, topic, timeout=20)
            return dict(zip(payloads, got))

    try:
        outcomes = asyncio.run(asyncio.wait_for(main(), 30))
        stored = stored_payloads(server, topic)
        check_fates(stored, outcomes)
        assert b"later" not in stored
    finally:
        proxy.stop()


@pytest.mark.parametrize("method", ["Publish", "Broadcast"])
def test_a_keyed_publish_broken_then_refused_is_stored_or_not(
    server: ServerProcess, topic: str, method: str
) -> None:
    # The first attempt is stored but its answer lost; the retry is refused for good.
    proxy = FaultProxy(server.address, {method: [{"break": True}, {"refuse": "PERMISSION_DENIED"}]})
    try:
        with Client(proxy.address, retry=TEST_RETRY) as c:
            with pytest.raises(FateUnknown) as raised:
                if method == "Publish":
                    c.publish(b"once", 1, topic, idempotency_key="k-once", timeout=20)
                else:
                    c.broadcast([topic], b"once", 1, idempotency_key="k-once", timeout=20)
        assert isinstance(raised.value.refusal, PermissionDenied)
        assert raised.value.idempotency_key == "k-once"
        assert proxy.calls[method] == 2
        assert stored_payloads(server, topic) == [b"once"], "the broken attempt stored it"
        # Sent again with its key: the first store's ack, nothing stored twice.
        with Client(server.address, retry=TEST_RETRY) as c:
            assert c.publish(b"once", 1, topic, idempotency_key="k-once").duplicate
        assert stored_payloads(server, topic) == [b"once"]
    finally:
        proxy.stop()


@pytest.mark.parametrize("bad", ["raises", "gives None"])
def test_a_keyed_publish_broken_then_without_a_token_is_stored_or_not(
    server: ServerProcess, topic: str, bad: str
) -> None:
    # The first attempt is stored but its answer lost; for the retry the token provider
    # raises, or gives a token the client cannot send (InvalidArgument, which alone would
    # say "not stored"): FateUnknown caused by it.
    proxy = FaultProxy(server.address, {"Publish": [{"break": True}]})
    token = failing_after_first(bad)

    try:
        with Client(proxy.address, retry=TEST_RETRY, token=token) as c:
            with pytest.raises(FateUnknown) as raised:
                c.publish(b"once", 1, topic, idempotency_key="k-token", timeout=20)
        assert isinstance(raised.value.refusal, Unauthenticated)
        assert raised.value.idempotency_key == "k-token"
        assert raised.value.__cause__ is not None
        assert stored_payloads(server, topic) == [b"once"]
    finally:
        proxy.stop()


def test_an_aio_keyed_publish_broken_then_refused_is_stored_or_not(
    server: ServerProcess, topic: str
) -> None:
    proxy = FaultProxy(
        server.address, {"Publish": [{"break": True}, {"refuse": "PERMISSION_DENIED"}]}
    )

    async def main() -> None:
        async with AioClient(proxy.address, retry=TEST_RETRY) as c:
            with pytest.raises(FateUnknown) as raised:
                await c.publish(b"once", 1, topic, idempotency_key="k-aio", timeout=20)
            assert isinstance(raised.value.refusal, PermissionDenied)
            assert raised.value.idempotency_key == "k-aio"

    try:
        run_bounded(lambda: asyncio.run(main()), 30)
        assert stored_payloads(server, topic) == [b"once"]
    finally:
        proxy.stop()


def test_a_refusal_without_a_break_stays_the_refusal(server: ServerProcess, topic: str) -> None:
    # Nothing was written: the refusal is the answer, as before.
    proxy = FaultProxy(server.address, {"Publish": [{"refuse": "PERMISSION_DENIED"}]})
    try:
        with Client(proxy.address, retry=TEST_RETRY) as c:
            with pytest.raises(PermissionDenied):
                c.publish(b"never", 1, topic, idempotency_key="k-never", timeout=20)
        with pytest.raises(NotFound):
            stored_payloads(server, topic)  # never even created
    finally:
        proxy.stop()


def test_publish_many_broken_then_refused_is_stored_or_not(
    server: ServerProcess, topic: str
) -> None:
    proxy = FaultProxy(server.address, BREAK_THEN_REFUSE)
    frames = [(i, f"f{i}".encode()) for i in range(FRAMES)]
    try:
        with Client(proxy.address, retry=TEST_RETRY) as c:
            with pytest.raises(FateUnknown) as sync_err:
                c.publish_many(frames, topic, window=FRAMES, timeout=20)
        e = sync_err.value
        assert isinstance(e.refusal, PermissionDenied) and "frames 3 to" in e.message
        assert [a.offset for a in e.acks] == [0, 1, 2]
        stored = stored_payloads(server, topic)
        assert stored[:4] == [b"f0", b"f1", b"f2", b"f3"] and len(stored) == len(set(stored))
    finally:
        proxy.stop()


@pytest.mark.parametrize("aio", [False, True])
def test_publish_many_broken_then_without_a_token_is_stored_or_not(
    server: ServerProcess, topic: str, aio: bool
) -> None:
    # The stream breaks after 3 acks (the 4th frame stored, its ack lost); opening the
    # next, the token provider raises: FateUnknown naming the frames in doubt, with the acks.
    proxy = FaultProxy(server.address, {"PublishStream": [{"break_after": 3}]})
    frames = [(i, f"f{i}".encode()) for i in range(FRAMES)]
    token = failing_after_first("raises")

    async def aio_publish() -> None:
        async with AioClient(proxy.address, retry=TEST_RETRY, token=token) as c:
            await c.publish_many(frames, topic, window=FRAMES, timeout=20)

    try:
        with pytest.raises(FateUnknown) as raised:
            if aio:
                run_bounded(lambda: asyncio.run(aio_publish()), 30)
            else:
                with Client(proxy.address, retry=TEST_RETRY, token=token) as c:
                    c.publish_many(frames, topic, window=FRAMES, timeout=20)
        e = raised.value
        assert isinstance(e.refusal, Unauthenticated) and "frames 3 to" in e.message, e
        assert isinstance(e.__cause__, RuntimeError)
        assert [a.offset for a in e.acks] == [0, 1, 2]
        assert stored_payloads(server, topic)[:4] == [b"f0", b"f1", b"f2", b"f3"]
    finally:
        proxy.stop()


def subscription_waits_out_its_own_old_stream(server: ServerProcess, topic: str, aio: bool) -> None:
    with Client(server.address, retry=TEST_RETRY) as c:
        for i in range(6):
            c.publish(f"f{i}".encode(), i, topic)
    proxy = FaultProxy(server.address, {"Subscribe": [{"break_after": 3, "leak": True}]})
    retry = RetryPolicy(initial=0.05, max_delay=0.3, max_elapsed=30.0)
    got: list[int] = []

    def sync_sub() -> list[int]:
        with Client(proxy.address, retry=retry) as c, c.frames(topic, 0) as sub:
            for f in sub:
                got.append(f.seq_no)
                if len(got) == 6:
                    return got
        return got

    async def aio_sub() -> list[int]:
        async with AioClient(proxy.address, retry=retry) as c:
            async for f in c.frames(topic, 0):
                got.append(f.seq_no)
                if len(got) == 6:
                    break
        return got

    result: list[Any] = []
    runner = threading.Thread(
        target=lambda: result.append(
            _outcome(lambda: asyncio.run(asyncio.wait_for(aio_sub(), 40)) if aio else sync_sub())
        ),
        daemon=True,
    )
    try:
        runner.start()
        # The resume was refused: the server still counts the old (leaked) stream.
        deadline = time.monotonic() + 15
        while ("Subscribe", "RESOURCE_EXHAUSTED") not in proxy.upstream_errors:
            assert time.monotonic() < deadline, (proxy.upstream_errors, result)
            time.sleep(0.05)
        time.sleep(1.0)  # a few refused resumes
        assert runner.is_alive(), result  # still waiting, not ended
        # A first open refused so stays final.
        with Client(server.address, retry=TEST_RETRY) as c:
            with pytest.raises(ResourceExhausted):
                run_bounded(lambda: next(iter(c.frames(topic, 0))), 10)
        proxy.release()  # as the server's keepalive would
        runner.join(30)
        assert result, "the subscription did not finish"
        assert result[0] == [0, 1, 2, 3, 4, 5]
    finally:
        proxy.stop()


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except BaseException as e:  # reported by the test
        return e


def test_subscription_waits_out_its_own_old_stream_holding_the_slot(make_server: Any, topic: str) -> None:
    subscription_waits_out_its_own_old_stream(make_server("--max-subscribers", "1"), topic, False)


def test_aio_subscription_waits_out_its_own_old_stream_holding_the_slot(
    make_server: Any, topic: str
) -> None:
    subscription_waits_out_its_own_old_stream(make_server("--max-subscribers", "1"), topic, True)
