"""The client's pure parts: retry policy, addresses, the publish pipeline's bookkeeping."""

from __future__ import annotations

import time

import grpc
import pytest

from framecast import Ack, InvalidArgument, RetryPolicy, errors
from framecast._core import (
    Backoff,
    KeySource,
    Pipeline,
    normalize_address,
    parse_subscription_metadata,
)
from framecast._proto import framecast_pb2 as pb


def test_backoff_grows_with_jitter_and_is_bounded() -> None:
    b = Backoff(RetryPolicy(initial=0.1, max_delay=0.4, max_elapsed=100))
    delays = [b.next_delay() for _ in range(6)]
    ceilings = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    for d, c in zip(delays, ceilings):
        assert d is not None and c / 2 <= d <= c
    b.reset()
    assert b.attempts == 0 and (d := b.next_delay()) is not None and d <= 0.1


def test_backoff_budget_counts_from_the_first_failure() -> None:
    b = Backoff(RetryPolicy(initial=0.01, max_delay=0.01, max_elapsed=0.2))
    time.sleep(0.3)  # idle time before the first failure does not count
    assert b.next_delay() is not None
    time.sleep(0.25)
    assert b.next_delay() is None
    assert b.next_delay(deadline=time.monotonic() + 10) is None
    b.reset()
    assert b.next_delay(deadline=time.monotonic() - 1) is None


def test_addresses() -> None:
    assert normalize_address("localhost:7070") == "localhost:7070"
    assert normalize_address("http://127.0.0.1:7070/") == "127.0.0.1:7070"
    with pytest.raises(InvalidArgument):
        normalize_address("https://x:1")
    with pytest.raises(InvalidArgument):
        normalize_address("")


def test_keys_are_unique_and_short() -> None:
    a, b = KeySource(), KeySource()
    keys = {a.next() for _ in range(1000)} | {b.next() for _ in range(1000)}
    assert len(keys) == 2000 and max(len(k) for k in keys) <= 128


def test_metadata_parsing() -> None:
    md = (("framecast-snapshot-offset", "12"), ("framecast-epoch", "99"), ("x", b"y"))
    assert parse_subscription_metadata(md) == (12, 99)
    assert parse_subscription_metadata(()) is None
    assert parse_subscription_metadata(None) is None
    assert parse_subscription_metadata((("framecast-snapshot-offset", "x"),)) is None


def test_pipeline_resends_unacked_in_order_and_respects_the_window() -> None:
    reqs = [pb.PublishRequest(seq_no=i, idempotency_key=f"k{i}") for i in range(5)]
    p = Pipeline(iter(reqs), window=2)
    assert p.take(0) is reqs[0] and p.take(1) is reqs[1]
    assert p.take(2) is Pipeline.WAIT
    assert p.on_ack(pb.PublishAck(offset=7, timestamp=1)) == Ack(7, 1, False)
    assert p.take(2) is reqs[2]
    # A new stream starts at the oldest unacked request, with the same keys.
    assert p.take(p.base) is reqs[1] and p.take(p.base + 1) is reqs[2]
    assert p.take(3) is Pipeline.WAIT  # still 2 unacked
    p.on_ack(pb.PublishAck(offset=3))
    assert p.take(3) is reqs[3]
    p.on_ack(pb.PublishAck(offset=4))
    assert p.take(4) is reqs[4]
    assert p.take(5) is Pipeline.WAIT
    p.on_ack(pb.PublishAck(offset=5))
    assert p.take(5) is Pipeline.END and not p.done
    p.on_ack(pb.PublishAck(offset=6))
    assert p.done
    assert [a.offset for a in p.finish()] == [7, 3, 4, 5, 6]
    assert p.acked_seq_nos == [0, 1, 2, 3, 4]


def test_status_mapping() -> None:
    class Err(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode, details: str = "d") -> None:
            self._c, self._d = code, details

        def code(self) -> grpc.StatusCode:
            return self._c

        def details(self) -> str:
            return self._d

    S = grpc.StatusCode
    cases = {
        S.INVALID_ARGUMENT: errors.InvalidArgument,
        S.NOT_FOUND: errors.NotFound,
        S.ALREADY_EXISTS: errors.AlreadyExists,
        S.OUT_OF_RANGE: errors.OutOfRange,
        S.FAILED_PRECONDITION: errors.EpochChanged,
        S.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
        S.UNAVAILABLE: errors.Unavailable,
        S.DEADLINE_EXCEEDED: errors.Unavailable,
        S.DATA_LOSS: errors.DataLoss,
        S.INTERNAL: errors.ServerError,
        S.UNIMPLEMENTED: errors.ServerError,
    }
    for code, cls in cases.items():
        e = errors.from_rpc_error(Err(code))
        assert type(e) is cls and isinstance(e, errors.FramecastError) and e.code == code
    assert errors.is_transient(Err(S.UNAVAILABLE)) and not errors.is_transient(Err(S.NOT_FOUND))
