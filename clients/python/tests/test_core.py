"""The client's pure parts: retry policy, addresses, the publish pipeline's bookkeeping."""

from __future__ import annotations

import time

import grpc
import pytest

from framecast import Ack, InvalidArgument, RetryPolicy, errors
from framecast._core import (
    FAIL_ALL,
    FAIL_OLDEST,
    RESEND,
    STABLE_STREAM_SECONDS,
    Backoff,
    FreshToken,
    KeySource,
    Nodes,
    Pipeline,
    Resume,
    Route,
    TokenFailure,
    attempt_timeout,
    check_coalesced,
    cluster_event_from_pb,
    coalesced_stream_end,
    compression_settings,
    normalize_address,
    parse_subscription_metadata,
    publish_stream_retry_delay,
    refused_fate,
    shared_stream_of,
    unary_retry_delay,
    watch_retry_delay,
)
from framecast._credentials import Token
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
    assert normalize_address("https://x:1") == "x:1"
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


class Err(grpc.RpcError):  # type: ignore[misc]
    """A gRPC error with a status code, as grpcio raises them."""

    def __init__(self, code: grpc.StatusCode, details: str = "d") -> None:
        self._c, self._d = code, details

    def code(self) -> grpc.StatusCode:
        return self._c

    def details(self) -> str:
        return self._d


UNAVAILABLE = Err(grpc.StatusCode.UNAVAILABLE, "connection refused")
NOT_FOUND = Err(grpc.StatusCode.NOT_FOUND, "no such topic")
FAST = RetryPolicy(initial=0.01, max_delay=0.02, max_elapsed=30)


def test_status_mapping() -> None:
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


def test_attempt_timeout_is_the_call_timeout_within_the_deadline() -> None:
    assert attempt_timeout(None, None) is None
    assert attempt_timeout(5.0, None) == 5.0
    left = attempt_timeout(5.0, time.monotonic() + 1.0)
    assert left is not None and 0.9 < left <= 1.0
    assert attempt_timeout(0.5, time.monotonic() + 10.0) == 0.5
    assert attempt_timeout(5.0, time.monotonic() - 1.0) == 0.0


def test_unary_retry_retries_transient_and_raises_the_rest() -> None:
    b = Backoff(FAST)
    d = unary_retry_delay("publish", UNAVAILABLE, b, deadline=None, timeout=None)
    assert 0 < d <= 0.01 and b.attempts == 1
    # Permanent: mapped, with the attempts made so far counted in.
    with pytest.raises(errors.NotFound) as nf:
        unary_retry_delay("publish", NOT_FOUND, b, deadline=None, timeout=None)
    assert nf.value.__suppress_context__
    # Not retried (delete_topic): transient becomes Unavailable with 1 attempt.
    with pytest.raises(errors.Unavailable) as un:
        unary_retry_delay(
            "delete", UNAVAILABLE, Backoff(FAST), deadline=None, timeout=None, retry=False
        )
    assert un.value.attempts == 1
    with pytest.raises(errors.ClientClosed, match="list_topics: client closed"):
        unary_retry_delay("list_topics", UNAVAILABLE, b, deadline=None, timeout=None, closed=True)
    with pytest.raises(errors.DeadlineExceeded, match="timeout of 3 s"):
        unary_retry_delay("publish", UNAVAILABLE, b, deadline=time.monotonic() - 1, timeout=3)


def test_unary_retry_gives_up_when_the_budget_is_spent() -> None:
    b = Backoff(RetryPolicy(initial=0.01, max_delay=0.01, max_elapsed=0.05))
    unary_retry_delay("publish", UNAVAILABLE, b, deadline=None, timeout=None)
    time.sleep(0.08)
    with pytest.raises(errors.Unavailable) as e:
        unary_retry_delay("publish", UNAVAILABLE, b, deadline=None, timeout=None)
    assert e.value.attempts == 2


def pipe_with_unacked(n: int) -> Pipeline:
    p = Pipeline(iter([pb.PublishRequest(seq_no=i) for i in range(n)]), window=8)
    for i in range(n):
        p.take(i)
    return p


def test_publish_stream_decisions() -> None:
    # Finished: nothing to do, whatever happened.
    done = pipe_with_unacked(1)
    done.take(1)
    done.on_ack(pb.PublishAck(offset=0))
    assert (
        publish_stream_retry_delay(done, UNAVAILABLE, Backoff(FAST), deadline=None, timeout=None)
        is None
    )
    # Transient failure, or an early end, with frames unacked: retry after a delay.
    p = pipe_with_unacked(2)
    p.on_ack(pb.PublishAck(offset=0))
    for failure in (UNAVAILABLE, None):
        d = publish_stream_retry_delay(p, failure, Backoff(FAST), deadline=None, timeout=None)
        assert d is not None and 0 < d <= 0.01
    # Permanent, after a break that may have stored frame 1 (it went out on the broken
    # stream): stored or not, with the frames in doubt and the acks so far.
    with pytest.raises(errors.FateUnknown) as fu:
        publish_stream_retry_delay(p, NOT_FOUND, Backoff(FAST), deadline=None, timeout=None)
    assert "frames 1 to 1 (0-based" in str(fu.value) and [a.offset for a in fu.value.acks] == [0]
    assert isinstance(fu.value.refusal, errors.NotFound)
    # Permanent, no break before: the frame's index and the acks so far ride on the error.
    p = pipe_with_unacked(2)
    p.on_ack(pb.PublishAck(offset=0))
    with pytest.raises(errors.NotFound) as nf:
        publish_stream_retry_delay(p, NOT_FOUND, Backoff(FAST), deadline=None, timeout=None)
    assert "frame 1 (0-based" in str(nf.value) and [a.offset for a in nf.value.acks] == [0]
    with pytest.raises(errors.ClientClosed):
        publish_stream_retry_delay(p, None, Backoff(FAST), deadline=None, timeout=None, closed=True)
    with pytest.raises(errors.DeadlineExceeded) as de:
        publish_stream_retry_delay(p, None, Backoff(FAST), deadline=time.monotonic() - 1, timeout=2)
    assert len(de.value.acks) == 1
    # Budget spent on streams that keep ending: Unavailable.
    b = Backoff(RetryPolicy(initial=0.01, max_delay=0.01, max_elapsed=0.0))
    with pytest.raises(errors.Unavailable, match="ended early"):
        publish_stream_retry_delay(p, None, b, deadline=None, timeout=None)


def test_coalesced_stream_decisions() -> None:
    # A refused frame (the stream ends at it): only the oldest unacked call fails.
    bad = Err(grpc.StatusCode.INVALID_ARGUMENT, "request 3: payload too large")
    action, delay, err = coalesced_stream_end(bad, Backoff(FAST))
    assert action == FAIL_OLDEST and delay is None and isinstance(err, errors.InvalidArgument)
    action, _, err = coalesced_stream_end(NOT_FOUND, Backoff(FAST))
    assert action == FAIL_OLDEST and isinstance(err, errors.NotFound)
    action, _, err = coalesced_stream_end(Err(grpc.StatusCode.INTERNAL, "boom"), Backoff(FAST))
    assert action == FAIL_OLDEST and isinstance(err, errors.ServerError)
    # Transient, or an early end: re-send everything unacked after a delay.
    core = Err(grpc.StatusCode.INTERNAL, "Internal error from Core")
    for failure in (UNAVAILABLE, core, None):
        action, delay, err = coalesced_stream_end(failure, Backoff(FAST))
        assert action == RESEND and delay is not None and 0 < delay <= 0.01 and err is None
    # Closed, or the budget spent: every waiting call fails.
    action, _, err = coalesced_stream_end(UNAVAILABLE, Backoff(FAST), closed=True)
    assert action == FAIL_ALL and isinstance(err, errors.ClientClosed)
    spent = RetryPolicy(initial=0.01, max_delay=0.01, max_elapsed=0.0)
    action, _, err = coalesced_stream_end(UNAVAILABLE, Backoff(spent))
    assert action == FAIL_ALL and isinstance(err, errors.Unavailable)
    action, _, err = coalesced_stream_end(None, Backoff(spent))
    assert action == FAIL_ALL and isinstance(err, errors.Unavailable) and "ended early" in str(err)


def test_coalesced_frames_are_checked_before_they_share_a_stream() -> None:
    check_coalesced(pb.PublishRequest(topic="", timestamp=0))
    check_coalesced(pb.PublishRequest(topic="prices.eu-1_x", timestamp=5))
    for req in (
        pb.PublishRequest(topic=".hidden"),
        pb.PublishRequest(topic="a b"),
        pb.PublishRequest(topic="a" * 129),
        pb.PublishRequest(topic="ok", timestamp=-1),
    ):
        with pytest.raises(InvalidArgument):
            check_coalesced(req)


def test_resume_requests_carry_the_cursor_of_the_last_frame() -> None:
    r = Resume("prices", 5, FAST, None)
    first = r.request()
    assert first.topic == "prices" and first.replay_seq_no_start == 5
    assert not first.HasField("resume")
    assert not r.opened((("x", "y"),))  # a trailers-only error answer
    assert r.opened((("framecast-snapshot-offset", "10"), ("framecast-epoch", "3")))
    f = r.frame(pb.Frame(seq_no=7, payload=b"a", timestamp=70, offset=4))
    assert (f.offset, f.live) == (4, False)
    live = r.frame(pb.Frame(seq_no=8, payload=b"b", timestamp=80, offset=11))
    assert live.live and live.payload == b"b"
    again = r.request()
    assert again.resume.snapshot_offset == 10 and again.resume.epoch == 3
    assert (again.resume.seq_no, again.resume.timestamp, again.resume.offset) == (8, 80, 11)
    # A second stream's metadata does not move the snapshot point or the epoch.
    assert r.opened((("framecast-snapshot-offset", "99"), ("framecast-epoch", "4")))
    assert r.cursor is not None and (r.cursor.snapshot_offset, r.cursor.epoch) == (10, 3)


def test_resume_frame_before_metadata_is_a_protocol_error() -> None:
    with pytest.raises(errors.ProtocolError):
        Resume("t", 0, FAST, None).frame(pb.Frame(offset=1))


def test_resume_reconnect_decisions() -> None:
    r = Resume("t", 0, FAST, None)
    assert 0 < r.broken(UNAVAILABLE) <= 0.01
    assert 0 < r.broken(None) <= 0.02
    with pytest.raises(errors.NotFound):
        r.broken(NOT_FOUND)
    with pytest.raises(errors.ClientClosed):
        r.broken(UNAVAILABLE, client_closed=True)
    timed = Resume("t", 0, FAST, 0.0)
    with pytest.raises(errors.DeadlineExceeded, match="subscription"):
        timed.broken(UNAVAILABLE)


def test_resume_budget_resets_after_a_stable_stream_only() -> None:
    policy = RetryPolicy(initial=0.01, max_delay=0.01, max_elapsed=0.05)
    r = Resume("t", 0, policy, None)
    r.broken(UNAVAILABLE)
    time.sleep(0.08)
    # A stream that opened but broke at once is no progress: the budget is spent.
    r.opened((("framecast-snapshot-offset", "0"), ("framecast-epoch", "1")))
    with pytest.raises(errors.Unavailable):
        r.broken(None)
    # One that lived STABLE_STREAM_SECONDS is: a fresh budget.
    r = Resume("t", 0, policy, None)
    r.broken(UNAVAILABLE)
    time.sleep(0.08)
    r.opened((("framecast-snapshot-offset", "0"), ("framecast-epoch", "1")))
    assert r.opened_at is not None
    r.opened_at -= STABLE_STREAM_SECONDS
    assert r.broken(UNAVAILABLE) > 0 and r.backoff.attempts == 1


def test_compression_settings() -> None:
    algo, opts = compression_settings(None)
    assert algo == grpc.Compression.NoCompression
    # Identity alone advertised: the server answers uncompressed.
    assert opts == (("grpc.compression_enabled_algorithms_bitset", 1),)
    algo, opts = compression_settings("gzip")
    assert algo == grpc.Compression.Gzip and opts[0][1] == 1 | 4
    assert compression_settings("NONE")[0] == grpc.Compression.NoCompression
    with pytest.raises(InvalidArgument, match="zstd"):
        compression_settings("zstd")
    with pytest.raises(InvalidArgument):
        compression_settings("lz4")


def test_watch_retry_delay_moves_on_and_starts_over_only_after_a_stream_that_lasted() -> None:
    nodes = Nodes(["a:1", "b:2"])
    route = Route(nodes)
    route.next()
    b = Backoff(FAST)
    now = time.monotonic()
    # A stream that gave only its opening snapshot and ended at once: backoff, next node.
    args = {"deadline": None, "timeout": None, "closed": False, "route": route}
    assert watch_retry_delay(None, b, events=1, opened=now, **args) > 0
    assert b.attempts == 1 and nodes.current == "b:2"
    # One that gave its snapshot and stayed up: the budget starts over.
    watch_retry_delay(None, b, events=1, opened=now - 5, **args)
    assert b.attempts == 1
    # A permanent error ends the watch; a closed client and a spent timeout too.
    with pytest.raises(errors.Unauthenticated):
        watch_retry_delay(Err(grpc.StatusCode.UNAUTHENTICATED), b, events=0, opened=now, **args)
    with pytest.raises(errors.ClientClosed):
        watch_retry_delay(None, b, events=0, opened=now, **{**args, "closed": True})
    with pytest.raises(errors.DeadlineExceeded):
        watch_retry_delay(
            None, b, events=0, opened=now, **{**args, "deadline": now - 1, "timeout": 1.0}
        )
    # A budget spent without a stream that lasted: Unavailable.
    spent = Backoff(RetryPolicy(initial=0.01, max_delay=0.01, max_elapsed=0.0))
    with pytest.raises(errors.Unavailable):
        watch_retry_delay(None, spent, events=0, opened=now, **args)


def test_a_cluster_event_of_a_kind_newer_than_the_client_is_unspecified() -> None:
    known = cluster_event_from_pb(pb.ClusterEvent(kind=pb.ClusterEvent.NODE_OFFLINE, node_id="n2"))
    assert (known.kind, known.node_id) == ("NODE_OFFLINE", "n2")
    assert cluster_event_from_pb(pb.ClusterEvent(kind=99)).kind == "KIND_UNSPECIFIED"


def test_shared_streams_a_topic_always_on_the_same_one() -> None:
    from framecast._core import SHARED_STREAMS

    names = [f"topic-{i}" for i in range(1000)]
    used = {shared_stream_of(n) for n in names}
    assert used == set(range(SHARED_STREAMS)), "1000 topics spread over every stream"
    assert all(shared_stream_of(n) == shared_stream_of(n) for n in names)
    # "" is the topic "default": one stream for both spellings, so their order holds.
    assert shared_stream_of("") == shared_stream_of("default")


def test_coalesced_stream_renews_an_expired_token_once() -> None:
    # UNAUTHENTICATED with a token provider: re-send at once with a fresh token (the next
    # stream's metadata); a second refusal in a row, or nothing fresher, fails every call.
    expired = Err(grpc.StatusCode.UNAUTHENTICATED, "token expired")
    tokens = iter(["t1", "t2", "t3", "t3"])
    token = FreshToken(Token(lambda: next(tokens)))
    assert token.metadata() == (("authorization", "Bearer t1"),)
    action, delay, err = coalesced_stream_end(expired, Backoff(FAST), token=token)
    assert (action, delay, err) == (RESEND, 0.0, None)
    assert token.metadata() == (("authorization", "Bearer t2"),)  # the fresh one, once
    action, _, err = coalesced_stream_end(expired, Backoff(FAST), token=token)
    assert action == FAIL_ALL and isinstance(err, errors.Unauthenticated)  # refused again
    # Later publishes get a renewal of their own; an ack in between starts over as well.
    assert token.metadata() == (("authorization", "Bearer t3"),)
    action, _, err = coalesced_stream_end(expired, Backoff(FAST), token=token)
    assert action == FAIL_ALL and isinstance(err, errors.Unauthenticated)  # the same token
    # A fixed token has nothing fresher: the oldest call fails, as before.
    fixed = FreshToken(Token("t"))
    fixed.metadata()
    action, _, err = coalesced_stream_end(expired, Backoff(FAST), token=fixed)
    assert action == FAIL_OLDEST and isinstance(err, errors.Unauthenticated)
    # The provider's own error fails every call: as it is, unless a call's frame may be
    # stored (refused_fate tells, from the TokenFailure it comes in).
    boom = RuntimeError("no token")

    def raising() -> str:
        raise boom

    failing = FreshToken(Token(raising))
    action, _, err = coalesced_stream_end(expired, Backoff(FAST), token=failing)
    assert action == FAIL_ALL and isinstance(err, TokenFailure) and err.error is boom
    assert refused_fate(err, False) is boom
    fate = refused_fate(err, True)
    assert isinstance(fate, errors.FateUnknown) and fate.__cause__ is boom
