"""Several addresses and the leader hint (API.md, "Cluster (v1.1)", "Clients (v1.1)").

A follower is stood in for by a small gRPC server in the test (:class:`FakeFollower`): it
answers every write with ``UNAVAILABLE`` and the trailer ``framecast-leader: <leader>``, as
a follower does, and every other call with a plain ``UNAVAILABLE``. The leader is the real
server binary. A dead node is a loopback port with nothing listening. A node that fails
under a subscription is the real server killed with ``kill -9`` and started again on
another port of the client's list, over the same data dir (so the other "node" holds the
same frames, offsets and epoch, as a follower would). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import TEST_RETRY, ServerProcess, free_port, run_bounded
from test_security import Pki, mint

from framecast import Client, DeadlineExceeded, Frame, InvalidArgument, RetryPolicy, Unavailable
from framecast import aio as framecast_aio
from framecast._core import (
    MAX_LEADER_HOPS,
    Nodes,
    Route,
    leader_hint,
    never_sent,
    parse_addresses,
)

#: For calls that must give up: a short budget.
QUICK = RetryPolicy(initial=0.02, max_delay=0.1, max_elapsed=1.5)
#: Keeps the subscriber's HTTP/2 receive window small, so the server is still mid-replay
#: when it is killed (as in test_restart.py).
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]

WRITES = frozenset({"Publish", "PublishStream", "Broadcast", "CreateTopic", "DeleteTopic"})
STREAMING_RESPONSES = frozenset({"Subscribe", "WatchCluster"})


class FakeFollower:
    """A gRPC server that refuses everything with ``UNAVAILABLE``: writes with the trailer
    ``framecast-leader: <leader>`` (when ``leader`` is set), other calls without it. It
    records every call: ``(time, name, method, metadata)`` in ``calls`` (and in a shared
    ``journal`` when given, to see the order of attempts across nodes)."""

    def __init__(
        self,
        name: str,
        leader: str | None,
        *,
        journal: list[tuple[float, str, str]] | None = None,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.name = name
        self.leader = leader
        self.calls: list[tuple[float, str, str, dict[str, str]]] = []
        self.journal = journal
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((_Refuser(self),))
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def methods(self) -> list[str]:
        with self._lock:
            return [c[2] for c in self.calls]

    def refuse(self, method: str, context: grpc.ServicerContext) -> None:
        now = time.monotonic()
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._lock:
            self.calls.append((now, self.name, method, md))
            if self.journal is not None:
                self.journal.append((now, self.name, method))
        leader = self.leader
        if leader is not None and method in WRITES:
            context.set_trailing_metadata((("framecast-leader", leader),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "not the leader")
        context.abort(grpc.StatusCode.UNAVAILABLE, "node unavailable")

    def stop(self) -> None:
        self.server.stop(grace=None).wait(5)


class _Refuser(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, fake: FakeFollower) -> None:
        self.fake = fake

    def service(self, details: Any) -> Any:
        method = details.method.rsplit("/", 1)[-1]

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            self.fake.refuse(method, context)

        def streaming(requests: Any, context: grpc.ServicerContext) -> Any:
            self.fake.refuse(method, context)

        if method == "PublishStream":
            return grpc.stream_stream_rpc_method_handler(streaming)
        if method in STREAMING_RESPONSES:
            return grpc.unary_stream_rpc_method_handler(unary)
        return grpc.unary_unary_rpc_method_handler(unary)


@pytest.fixture
def fakes() -> Iterator[Any]:
    """A factory of :class:`FakeFollower` s, all stopped at the end."""
    made: list[FakeFollower] = []

    def make(name: str, leader: str | None, **kw: Any) -> FakeFollower:
        f = FakeFollower(name, leader, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def dead_address() -> str:
    """A loopback port with nothing listening (it was free a moment ago)."""
    return f"127.0.0.1:{free_port()}"


def stored(address: str, topic: str, **client_args: Any) -> list[Frame]:
    """Every frame ``topic`` holds on the server at ``address``, read back through a fresh
    client (checking the topic's frame count agrees)."""
    with Client(address, retry=TEST_RETRY, **client_args) as c:
        info = {t.name: t for t in c.list_topics()}.get(topic)
        if info is None:
            return []
        with c.frames(topic, 0, timeout=30) as sub:
            frames = run_bounded(lambda: list(itertools.islice(sub, info.frames)), 30)
            assert sub.snapshot_offset == info.frames
    return frames


# ------------------------------------------------------------------ pure parts


class Err(grpc.RpcError):  # type: ignore[misc]
    def __init__(
        self, code: grpc.StatusCode, details: str = "d", trailers: tuple[Any, ...] = ()
    ) -> None:
        self._c, self._d, self._t = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._c

    def details(self) -> str:
        return self._d

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._t


def hinted(leader: str) -> Err:
    return Err(grpc.StatusCode.UNAVAILABLE, "not the leader", (("framecast-leader", leader),))


def test_addresses_are_parsed_from_a_string_or_a_list() -> None:
    assert parse_addresses("a:1") == (["a:1"], False)
    assert parse_addresses("a:1, http://b:2/ ,a:1") == (["a:1", "b:2"], False)
    assert parse_addresses(["a:1", "b:2,c:3"]) == (["a:1", "b:2", "c:3"], False)
    # One https:// address makes every channel TLS (a hinted leader is reached the same way).
    assert parse_addresses("https://a:1,b:2") == (["a:1", "b:2"], True)
    for bad in ("", "a:1,,b:2", [], ["https://a:1", "http://b:2"]):
        with pytest.raises(InvalidArgument):
            parse_addresses(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Client("https://a:1,http://b:2")


def test_leader_hint_and_never_sent() -> None:
    assert leader_hint(hinted("10.0.0.2:7070")) == "10.0.0.2:7070"
    assert leader_hint(hinted("http://10.0.0.2:7070")) == "10.0.0.2:7070"
    bytes_hint = Err(grpc.StatusCode.UNAVAILABLE, "x", (("framecast-leader", b"h:1"),))
    assert leader_hint(bytes_hint) == "h:1"
    assert leader_hint(Err(grpc.StatusCode.UNAVAILABLE)) is None
    assert leader_hint(hinted("")) is None and leader_hint(hinted("a:1 b:2")) is None
    # Only UNAVAILABLE carries a hint.
    wrong = Err(grpc.StatusCode.NOT_FOUND, "x", (("framecast-leader", "h:1"),))
    assert leader_hint(wrong) is None and leader_hint(None) is None
    refused = Err(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; ...")
    assert never_sent(refused) and not never_sent(hinted("h:1")) and not never_sent(None)


def test_nodes_move_on_round_robin_and_follow_hints() -> None:
    nodes = Nodes(["a:1", "b:2", "c:3"])
    assert nodes.current == "a:1"
    nodes.failed("a:1")
    assert nodes.current == "b:2"
    nodes.failed("a:1")  # another call saw a:1 fail too: no second move
    assert nodes.current == "b:2"
    nodes.failed("b:2")
    nodes.failed("c:3")
    assert nodes.current == "a:1"
    nodes.follow("c:3")
    assert nodes.current == "c:3"
    nodes.follow("d:4")  # a leader not configured is learned
    assert nodes.current == "d:4" and nodes.addresses == ("a:1", "b:2", "c:3", "d:4")
    nodes.failed("d:4")
    assert nodes.current == "a:1"
    for i in range(100):  # learned addresses are bounded
        nodes.follow(f"x:{i}")
    assert len(nodes.addresses) <= 3 + 16 and nodes.addresses[:3] == ("a:1", "b:2", "c:3")


def test_route_follows_hints_at_once_and_cuts_loops() -> None:
    nodes = Nodes(["a:1"])
    route = Route(nodes)
    assert route.next() == "a:1"
    assert route.failed(hinted("b:2")) is True  # follow at once
    assert route.next() == "b:2"
    assert route.failed(hinted("a:1")) is False  # back to a node already passed: a loop
    assert route.loop == ["a:1", "b:2", "a:1"] and nodes.current == "a:1"
    err = route.explain(Unavailable("UNAVAILABLE: not the leader"))
    assert "framecast-leader" in str(err) and "a:1 -> b:2 -> a:1" in str(err)
    # A chain of distinct nodes is cut after MAX_LEADER_HOPS hops in a row.
    route = Route(Nodes(["n0:1"]))
    followed = 0
    for i in range(1, 10):
        route.next()
        if not route.failed(hinted(f"n{i}:1")):
            break
        followed += 1
    assert followed == MAX_LEADER_HOPS
    # A plain transient failure moves on to the next node; a permanent one does not.
    nodes = Nodes(["a:1", "b:2"])
    route = Route(nodes)
    route.next()
    assert route.failed(Err(grpc.StatusCode.UNAVAILABLE)) is False and nodes.current == "b:2"
    route.next()
    assert route.failed(Err(grpc.StatusCode.NOT_FOUND)) is False and nodes.current == "b:2"
    # A hint naming the node itself: no move.
    assert route.failed(hinted("b:2")) is False and nodes.current == "b:2"


# ------------------------------------------------------------------ the leader hint


def test_writes_refused_by_a_follower_land_on_the_leader_once(
    server: ServerProcess, fakes: Any, topic: str
) -> None:
    follower = fakes("follower", server.address)
    with Client(follower.address, retry=TEST_RETRY) as c:
        assert c.address == follower.address
        ack = run_bounded(lambda: c.publish(b"one", seq_no=1, topic=topic, timeout=20), 30)
        # Refused once by the follower, then sent to the leader at once, and kept there.
        assert follower.methods() == ["Publish"]
        assert c.address == server.address
        assert c.addresses == (follower.address, server.address)
        assert ack.offset == 0 and not ack.duplicate
        acks = c.publish_many([(2, b"two"), (3, b"three")], topic=topic, timeout=20)
        assert [a.offset for a in acks] == [1, 2]
        assert follower.methods() == ["Publish"]  # straight to the leader now
    got = stored(server.address, topic)
    assert [(f.offset, f.payload) for f in got] == [(0, b"one"), (1, b"two"), (2, b"three")]
    assert got[0].timestamp == ack.timestamp


@pytest.mark.parametrize("kind", ["publish_many", "coalesced", "create_topic", "delete_topic"])
def test_every_kind_of_write_follows_the_hint(
    server: ServerProcess, fakes: Any, topic: str, kind: str
) -> None:
    follower = fakes("follower", server.address)
    with Client(follower.address, retry=TEST_RETRY, coalesce=kind == "coalesced") as c:
        if kind == "publish_many":
            acks = c.publish_many([(i, b"%d" % i) for i in range(50)], topic=topic, timeout=20)
            assert [a.offset for a in acks] == list(range(50))
            assert [f.offset for f in stored(server.address, topic)] == list(range(50))
            assert follower.methods() == ["PublishStream"]
        elif kind == "coalesced":
            ack = c.publish(b"x", seq_no=1, topic=topic, timeout=20)
            assert ack.offset == 0
            assert [(f.offset, f.payload) for f in stored(server.address, topic)] == [(0, b"x")]
            assert follower.methods() == ["PublishStream"]
        elif kind == "create_topic":
            info = c.create_topic(topic, retention_max_bytes=1 << 20, timeout=20)
            assert info.name == topic
            with Client(server.address, retry=TEST_RETRY) as direct:
                assert topic in [t.name for t in direct.list_topics()]
            assert follower.methods() == ["CreateTopic"]
        else:
            with Client(server.address, retry=TEST_RETRY) as direct:
                direct.publish(b"x", seq_no=1, topic=topic)
            # delete_topic is never retried after a lost answer, but a refusal wrote
            # nothing: it follows the hint.
            c.delete_topic(topic, timeout=20)
            with Client(server.address, retry=TEST_RETRY) as direct:
                assert topic not in [t.name for t in direct.list_topics()]
            assert follower.methods() == ["DeleteTopic"]
        assert c.address == server.address


def test_aio_writes_follow_the_hint(server: ServerProcess, fakes: Any, topic: str) -> None:
    follower = fakes("follower", server.address)

    async def scenario() -> None:
        async with framecast_aio.Client(follower.address, retry=TEST_RETRY) as c:
            ack = await c.publish(b"one", seq_no=1, topic=topic)
            assert ack.offset == 0 and c.address == server.address
        async with framecast_aio.Client(follower.address, retry=TEST_RETRY) as c:
            acks = await c.publish_many([(2, b"two"), (3, b"three")], topic=topic)
            assert [a.offset for a in acks] == [1, 2]
        async with framecast_aio.Client(follower.address, retry=TEST_RETRY, coalesce=True) as c:
            assert (await c.publish(b"four", seq_no=4, topic=topic)).offset == 3
        async with framecast_aio.Client(follower.address, retry=TEST_RETRY) as c:
            await c.create_topic(f"{topic}-b")
        async with framecast_aio.Client(follower.address, retry=TEST_RETRY) as c:
            await c.delete_topic(f"{topic}-b")

    asyncio.run(asyncio.wait_for(scenario(), 60))
    methods = follower.methods()
    assert [m for m in methods if m != "PublishStream"] == ["Publish", "CreateTopic", "DeleteTopic"]
    # One refused stream each for publish_many and the coalesced publish. (Rarely one more:
    # grpcio's asyncio calls can lose a refusal's trailers to a racing write, see
    # aio._accepted; that stream is then retried after a backoff.)
    assert 2 <= methods.count("PublishStream") <= 4, methods
    got = stored(server.address, topic)
    assert [(f.offset, f.payload) for f in got] == [
        (0, b"one"),
        (1, b"two"),
        (2, b"three"),
        (3, b"four"),
    ]


def test_a_hint_loop_ends_with_a_clear_error_in_bounded_time(fakes: Any, topic: str) -> None:
    a = fakes("a", None)
    b = fakes("b", a.address)
    a.leader = b.address  # a names b, b names a: neither is the leader
    with Client(a.address, retry=QUICK) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable) as e:
            run_bounded(lambda: c.publish(b"x", seq_no=1, topic=topic), 15)
        took = time.monotonic() - started
        msg = str(e.value)
        assert "not the leader" in msg and "framecast-leader" in msg
        assert f"{a.address} -> {b.address} -> {a.address}" in msg
        # Bounded by the retry budget (1.5 s), with a backoff after every loop: no busy loop.
        assert took < 10
        calls = len(a.calls) + len(b.calls)
        assert 2 <= calls <= 200, calls

        # Not retried otherwise (delete_topic): it gives up at the first loop.
        a.calls.clear()
        b.calls.clear()
        with pytest.raises(Unavailable, match="framecast-leader hints went"):
            run_bounded(lambda: c.delete_topic(topic), 15)
        assert [m for *_, m, _ in a.calls + b.calls] == ["DeleteTopic", "DeleteTopic"]

        # A stream, and a caller's own timeout.
        with pytest.raises(Unavailable, match="framecast-leader hints went"):
            run_bounded(lambda: c.publish_many([(1, b"x")], topic=topic), 15)
    with Client(a.address) as c:  # the default 60 s budget: the timeout ends it
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            run_bounded(lambda: c.publish(b"x", seq_no=1, topic=topic, timeout=1.0), 15)
        assert time.monotonic() - started < 5

    async def aio_loop() -> None:
        async with framecast_aio.Client(a.address, retry=QUICK) as c:
            with pytest.raises(Unavailable, match="framecast-leader hints went"):
                await c.publish(b"x", seq_no=1, topic=topic)

    asyncio.run(asyncio.wait_for(aio_loop(), 15))


def test_hint_over_tls_with_a_token(
    make_server: Any, fakes: Any, framecast_bin: Path, tmp_path: Path, topic: str
) -> None:
    """The leader named by a follower is reached as the configured addresses are: TLS with
    the same CA, the same token."""
    pki = Pki(tmp_path)
    secret = tmp_path / "secret"
    secret.write_bytes(b"a-secret-long-enough-for-hs256\n")
    srv = make_server(*pki.serve_args("--auth-jwt-secret-file", str(secret)))
    token = mint(framecast_bin, secret, "--publish", ">", "--subscribe", ">")
    creds = grpc.ssl_server_credentials([(pki.key_path.read_bytes(), pki.cert_path.read_bytes())])
    follower = fakes("follower", f"localhost:{srv.port}", credentials=creds)
    address = f"https://localhost:{follower.port}"
    with Client(address, retry=TEST_RETRY, ca_cert=str(pki.ca_path), token=token) as c:
        ack = c.publish(b"secret", seq_no=1, topic=topic, timeout=20)
        assert c.address == f"localhost:{srv.port}"
    assert follower.calls[0][3].get("authorization") == f"Bearer {token}"
    got = stored(f"https://localhost:{srv.port}", topic, ca_cert=str(pki.ca_path), token=token)
    assert [(f.offset, f.payload) for f in got] == [(ack.offset, b"secret")]


# ------------------------------------------------------------------ several addresses


def test_a_dead_address_is_left_for_the_next(server: ServerProcess, topic: str) -> None:
    dead = dead_address()
    for i, addresses in enumerate(([dead, server.address], f"{dead},{server.address}")):
        with Client(addresses, retry=TEST_RETRY) as c:
            t = f"{topic}-{i}"
            ack = run_bounded(lambda: c.publish(b"p", seq_no=1, topic=t, timeout=20), 30)
            assert c.address == server.address
            with c.frames(t, 0, timeout=20) as sub:
                assert next(sub).offset == ack.offset
        assert [(f.offset, f.payload) for f in stored(server.address, t)] == [(0, b"p")]
    # delete_topic is not retried after a lost answer, but a node that could not be
    # connected to saw nothing: the next one is tried.
    with Client([dead, server.address], retry=TEST_RETRY) as c:
        run_bounded(lambda: c.delete_topic(f"{topic}-0", timeout=20), 30)
        assert f"{topic}-0" not in [t.name for t in c.list_topics()]

    async def scenario() -> None:
        async with framecast_aio.Client([dead, server.address], retry=TEST_RETRY) as c:
            ack = await c.publish(b"q", seq_no=1, topic=topic)
            assert c.address == server.address
            async for f in c.frames(topic, 0, timeout=20):
                assert (f.offset, f.payload) == (ack.offset, b"q")
                break

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert [(f.offset, f.payload) for f in stored(server.address, topic)] == [(0, b"q")]
    # Every address dead: Unavailable once the budget is spent.
    with Client([dead, dead_address()], retry=QUICK) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            run_bounded(lambda: c.publish(b"x", seq_no=1, topic=topic), 15)
        assert time.monotonic() - started < 10


def test_attempts_go_round_robin(server: ServerProcess, fakes: Any, topic: str) -> None:
    """Nodes answering UNAVAILABLE without a hint are left, in the order given; one naming
    the leader sends the write there at once."""
    journal: list[tuple[float, str, str]] = []
    down1 = fakes("down1", None, journal=journal)
    down2 = fakes("down2", None, journal=journal)
    with Client([down1.address, down2.address, server.address], retry=TEST_RETRY) as c:
        assert c.publish(b"x", seq_no=1, topic=topic, timeout=20).offset == 0
        assert [n for _, n, _ in journal] == ["down1", "down2"]
        assert c.address == server.address
    journal.clear()
    follower = fakes("follower", server.address, journal=journal)
    dead = dead_address()
    with Client([down1.address, dead, follower.address], retry=TEST_RETRY) as c:
        started = time.monotonic()
        assert c.publish(b"y", seq_no=2, topic=topic, timeout=20).offset == 1
        assert time.monotonic() - started < 10
        assert [n for _, n, _ in journal] == ["down1", "follower"]
        assert c.address == server.address
    assert [f.payload for f in stored(server.address, topic)] == [b"x", b"y"]


# ------------------------------------------------------------------ subscriptions


def _expected(frames: list[Frame], snapshot: int) -> list[tuple[int, int, int, bytes]]:
    """What one unbroken subscription from 0 with snapshot point ``snapshot`` yields: the
    history in (seq_no, timestamp, offset) order, then live frames in offset order."""
    history = sorted(
        (f for f in frames if f.offset < snapshot), key=lambda f: (f.seq_no, f.timestamp, f.offset)
    )
    live = sorted((f for f in frames if f.offset >= snapshot), key=lambda f: f.offset)
    return [(f.seq_no, f.timestamp, f.offset, f.payload) for f in history + live]


def _moved(framecast_bin: Path, tmp_path: Path) -> tuple[ServerProcess, ServerProcess]:
    """Node 1 running over a data dir, and node 2: the same data dir on another port, not
    started (started once node 1 is killed)."""
    data = tmp_path / "data"
    one = ServerProcess(framecast_bin, data, fixed_port=True, args=["--fsync", "always"])
    one.start()
    two = ServerProcess(framecast_bin, data, fixed_port=True, args=["--fsync", "always"])
    two.port = free_port()
    while two.port == one.port:
        two.port = free_port()
    two.starts = 1  # the port is in the client's list: keep it
    return one, two


def test_a_broken_subscription_resumes_exactly_on_the_next_address(
    framecast_bin: Path, tmp_path: Path, topic: str
) -> None:
    one, two = _moved(framecast_bin, tmp_path)
    try:
        rng = random.Random(5)
        n_history, n_live = 2000, 50
        nodes = [one.address, two.address]
        with (
            Client(nodes, retry=TEST_RETRY) as pub,
            Client(nodes, retry=TEST_RETRY, channel_options=SMALL_WINDOW) as subc,
        ):
            history = [
                (rng.randrange(0, 300), b"h%05d-" % i + b"x" * 500) for i in range(n_history)
            ]
            pub.publish_many(history, topic)
            sub = subc.frames(topic, 0, timeout=90)
            got = run_bounded(lambda: list(itertools.islice(sub, 600)), 30)
            assert sub.snapshot_offset == n_history and subc.address == one.address
            one.kill()  # mid-replay; node 1's port stays dead
            time.sleep(0.3)  # the subscription tries both ports meanwhile
            two.start()
            got += run_bounded(lambda: list(itertools.islice(sub, n_history - 600)), 60)
            assert subc.address == two.address and sub.reconnects >= 1
            acks = pub.publish_many([(i, b"live%d" % i) for i in range(n_live)], topic)
            assert pub.address == two.address
            assert [a.offset for a in acks] == list(range(n_history, n_history + n_live))
            got += run_bounded(lambda: list(itertools.islice(sub, n_live)), 30)
            sub.close()
        everything = stored(two.address, topic)
        assert len(everything) == n_history + n_live
        assert [(f.seq_no, f.timestamp, f.offset, f.payload) for f in got] == _expected(
            everything, n_history
        )
        assert [f.live for f in got] == [False] * n_history + [True] * n_live
    finally:
        one.kill()
        two.kill()


def test_aio_subscription_resumes_on_the_next_address(
    framecast_bin: Path, tmp_path: Path, topic: str
) -> None:
    one, two = _moved(framecast_bin, tmp_path)

    async def scenario() -> list[Frame]:
        got: list[Frame] = []
        async with framecast_aio.Client([one.address, two.address], retry=TEST_RETRY) as c:
            await c.publish_many([(100 - i, b"h%d" % i) for i in range(20)], topic)
            frames = c.frames(topic, 0, timeout=60)
            async for f in frames:
                got.append(f)
                if len(got) == 10:
                    one.kill()
                    await asyncio.sleep(0.3)
                    await asyncio.get_running_loop().run_in_executor(None, two.start)
                if len(got) == 20:
                    await c.publish_many([(1, b"live")], topic)
                if len(got) == 21:
                    break
            await frames.aclose()
            assert c.address == two.address
        return got

    try:
        got = asyncio.run(asyncio.wait_for(scenario(), 60))
        everything = stored(two.address, topic)
        assert [(f.seq_no, f.timestamp, f.offset, f.payload) for f in got] == _expected(
            everything, 20
        )
    finally:
        one.kill()
        two.kill()


def test_a_cluster_watch_moves_on_to_the_next_address(
    framecast_bin: Path, tmp_path: Path, topic: str
) -> None:
    """``watch_cluster`` yields the node's whole cluster first; when that node dies, the
    watch moves on to the next address and yields that node's whole cluster."""
    one, two = _moved(framecast_bin, tmp_path)
    try:
        with Client([one.address, two.address], retry=TEST_RETRY) as client:
            watch = client.watch_cluster(timeout=60)
            first = run_bounded(lambda: next(watch), 15)
            assert first.kind == "NODE_ONLINE" and first.node_id == "standalone"
            (me,) = first.cluster.nodes
            assert me.leader and me.in_sync and me.online and me.address == one.address
            one.kill()
            time.sleep(0.3)  # the watch tries both ports meanwhile
            two.start()
            moved = run_bounded(lambda: next(watch), 30)
            assert moved.kind == "NODE_ONLINE"
            (me,) = moved.cluster.nodes
            assert me.address == two.address and client.address == two.address
            watch.close()
    finally:
        one.kill()
        two.kill()


def test_aio_cluster_watch_moves_on_to_the_next_address(
    framecast_bin: Path, tmp_path: Path, topic: str
) -> None:
    one, two = _moved(framecast_bin, tmp_path)

    async def main() -> None:
        async with framecast_aio.Client([one.address, two.address], retry=TEST_RETRY) as client:
            watch = client.watch_cluster(timeout=60)
            first = await asyncio.wait_for(anext(watch), 15)
            assert first.kind == "NODE_ONLINE" and first.cluster.nodes[0].address == one.address
            one.kill()
            await asyncio.sleep(0.3)
            two.start()
            moved = await asyncio.wait_for(anext(watch), 30)
            assert moved.kind == "NODE_ONLINE" and moved.cluster.nodes[0].address == two.address
            await watch.aclose()

    try:
        asyncio.run(main())
    finally:
        one.kill()
        two.kill()
