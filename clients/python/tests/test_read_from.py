"""``read_from="followers"``: subscriptions spread over a cluster's followers (API.md,
"Cluster (v1.1)", "Clients (v1.1)").

Everything here runs against real processes: a single-member etcd (``/usr/bin/etcd``, or
``etcd`` on ``PATH``) on loopback ports with a temp data dir, and three real ``framecast
serve`` nodes coordinated through it (lease 2 s, replica max lag 3 s, ``--min-insync 2``).
Where a subscription reads is checked twice: by the client (``Subscription.address``) and
by the servers (each node's ``framecast_subscribers`` gauge at ``/metrics``). What a
subscription yields is checked against what publishing acknowledged, frame by frame, also
across a ``kill -9`` of the follower it reads from. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import TEST_RETRY, ServerProcess, free_port, run_bounded

from framecast import (
    Ack,
    Client,
    ClusterInfo,
    Frame,
    InvalidArgument,
    NodeInfo,
    NotFound,
    RetryPolicy,
)
from framecast import aio as framecast_aio
from framecast._core import FollowerPicker, Nodes, Resume, Route

ETCD = "/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else shutil.which("etcd")


#: How long etcd, and then the three nodes, may take to be ready.
READY_TIMEOUT = 30.0
#: For publishers across a kill: a budget well past a failover of the in-sync set.
PATIENT = RetryPolicy(initial=0.02, max_delay=0.5, max_elapsed=30.0)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


class Etcd:
    """A single-member etcd on loopback ports with its own data dir, killed at the end."""

    def __init__(self, data_dir: Path) -> None:
        assert ETCD is not None
        self.client_port, self.peer_port = free_ports(2)
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.log_path = data_dir.parent / "etcd.log"
        # Settings from the environment (ETCD_*) would override the flags.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    ETCD,
                    "--name",
                    "framecast-py",
                    "--data-dir",
                    str(data_dir),
                    "--listen-client-urls",
                    client_url,
                    "--advertise-client-urls",
                    client_url,
                    "--listen-peer-urls",
                    peer_url,
                    "--initial-advertise-peer-urls",
                    peer_url,
                    "--initial-cluster",
                    f"framecast-py={peer_url}",
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "error",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        self.endpoint = client_url

    def wait_ready(self, timeout: float) -> None:
        """Waits until etcd reports itself healthy (it elected itself)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise RuntimeError(f"etcd not healthy after {timeout} s\n{self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)


class Cluster:
    """etcd and three nodes ``n1``..``n3`` (each a :class:`ServerProcess` on its own fixed
    gRPC and HTTP ports, which it advertises)."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.etcd = Etcd(root / "etcd")
        self.name = f"py-{uuid.uuid4().hex[:8]}"
        self.nodes: dict[str, ServerProcess] = {}
        ports = free_ports(6)
        for i in range(3):
            node_id = f"n{i + 1}"
            port, http = ports[2 * i], ports[2 * i + 1]
            self.nodes[node_id] = ServerProcess(
                binary,
                root / node_id,
                port=port,
                args=[
                    "--http-listen",
                    f"127.0.0.1:{http}",
                    "--advertise-http",
                    f"http://127.0.0.1:{http}",
                    "--cluster-etcd",
                    self.etcd.endpoint,
                    "--cluster",
                    self.name,
                    "--node-id",
                    node_id,
                    "--advertise",
                    f"127.0.0.1:{port}",
                    "--lease-ttl",
                    "2s",
                    "--replica-max-lag",
                    "3s",
                    "--min-insync",
                    "2",
                ],
            )

    def start(self) -> None:
        self.etcd.wait_ready(READY_TIMEOUT)
        for node in self.nodes.values():
            node.start()

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes.values()]

    def info(self, node_id: str) -> ClusterInfo | None:
        """What node ``node_id`` answers to ``Cluster``, if it answers."""
        with Client(self.nodes[node_id].address, retry=RetryPolicy(max_elapsed=0.5)) as c:
            try:
                return c.cluster(timeout=2)
            except Exception:
                return None

    def ready(self, timeout: float = READY_TIMEOUT) -> ClusterInfo:
        """Waits until every node agrees on one leader and term, with all three nodes
        online and in sync; the leader's answer."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while True:
            answers = {i: self.info(i) for i in self.nodes}
            seen = {
                i: None
                if a is None
                else (a.term, a.leader, [(n.id, n.online, n.in_sync) for n in a.nodes])
                for i, a in answers.items()
            }
            infos = [a for a in answers.values() if a is not None]
            if len(infos) == 3:
                first = infos[0]
                if (
                    first.leader
                    and all((a.term, a.leader) == (first.term, first.leader) for a in infos)
                    and all(
                        sum(n.online and n.in_sync for n in a.nodes) == 3
                        and sum(n.leader for n in a.nodes) == 1
                        for a in infos
                    )
                ):
                    return first
            if time.monotonic() >= deadline:
                pytest.fail(
                    f"no agreed leader with 3 nodes in sync after {timeout} s: {seen}\n"
                    f"{self.logs()}",
                    pytrace=False,
                )
            time.sleep(0.2)

    def roles(self) -> tuple[str, list[str]]:
        """The leader's id and the followers' ids (sorted), once the cluster is ready."""
        info = self.ready()
        leader = next(n.id for n in info.nodes if n.leader)
        return leader, sorted(i for i in self.nodes if i != leader)

    def subscribers(self, node_id: str, topic: str) -> int:
        """``framecast_subscribers{topic,transport="grpc"}`` on node ``node_id`` (0 when
        the series is absent)."""
        url = f"{self.nodes[node_id].http_url}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        pattern = (
            r'^framecast_subscribers\{topic="' + re.escape(topic) + r'",transport="grpc"\}\s+(\S+)$'
        )
        m = re.search(pattern, text, re.MULTILINE)
        return 0 if m is None else int(float(m.group(1)))

    def positions(self, topic: str) -> dict[str, tuple[int, int] | None]:
        """``(next_offset, commit_offset)`` of ``topic`` on each node, as the node itself
        tells (``None``: it does not answer)."""
        got: dict[str, tuple[int, int] | None] = {}
        for node_id in self.nodes:
            info = self.info(node_id)
            me = None if info is None else next(n for n in info.nodes if n.id == node_id)
            got[node_id] = (
                None
                if me is None
                else next(
                    ((t.next_offset, t.commit_offset) for t in me.topics if t.topic == topic),
                    (0, 0),
                )
            )
        return got

    def until_held(self, topic: str, n: int, timeout: float = 15.0) -> None:
        """Waits until every node holds and delivers ``n`` frames of ``topic`` (so a
        follower has the topic before a subscription is sent there)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.positions(topic)
            if len(got) == 3 and all(p == (n, n) for p in got.values()):
                return
            if time.monotonic() >= deadline:
                pytest.fail(f"{topic}: not {n} frames on every node after {timeout} s: {got}")
            time.sleep(0.1)

    def logs(self) -> str:
        return "\n".join(f"--- {i} ---\n{n.tail(15)}" for i, n in self.nodes.items())

    def stop(self) -> None:
        for node in self.nodes.values():
            node.kill()
        self.etcd.kill()


@pytest.fixture(scope="module")
def cluster(framecast_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """etcd and three nodes, ready; the tests that need them are skipped without etcd."""
    if ETCD is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    c = Cluster(framecast_bin, tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        c.ready()
        yield c
    finally:
        c.stop()


def publish_all(client: Client, topic: str, frames: list[tuple[int, bytes]]) -> list[Ack]:
    acks: list[Ack] = run_bounded(lambda: client.publish_many(frames, topic, timeout=30), 40)
    return acks


def take(sub: Any, n: int, timeout: float = 30.0) -> list[Frame]:
    frames: list[Frame] = run_bounded(lambda: list(itertools.islice(sub, n)), timeout)
    return frames


def triples(frames: list[Frame]) -> list[tuple[int, int, bytes]]:
    return [(f.offset, f.seq_no, f.payload) for f in frames]


# ------------------------------------------------------------------ without a server


def test_an_invalid_read_from_is_refused() -> None:
    for bad in ("nearest", "Followers", "", None, 1):
        with pytest.raises(InvalidArgument, match="read_from"):
            Client("127.0.0.1:1", read_from=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):  # InvalidArgument is a ValueError too
            framecast_aio.Client("127.0.0.1:1", read_from=bad)  # type: ignore[arg-type]
    for good in ("leader", "followers"):
        with Client("127.0.0.1:1", read_from=good) as c:
            assert c.read_from == good
        assert framecast_aio.Client("127.0.0.1:1", read_from=good).read_from == good


def test_without_a_cluster_answer_a_subscription_takes_the_route() -> None:
    """The part of the choice that needs no server: no answer, or no follower in it, means
    the client's own route; a follower's refusal sends the next stream by the route."""
    nodes = Nodes(["a:1", "b:2"])
    resume = Resume("t", 0, TEST_RETRY, None, Route(nodes), FollowerPicker())
    assert resume.wants_cluster()
    assert resume.address("a:1", None) == "a:1" and resume.follower is None
    single = ClusterInfo(0, "a:1", (NodeInfo("standalone", "a:1", "", True, True, True),))
    assert resume.address("a:1", single) == "a:1"
    f = NodeInfo("f1", "f:1", "", False, True, True)
    three = ClusterInfo(
        7, "a:1", (single.nodes[0], f, NodeInfo("f2", "g:2", "", False, True, False))
    )
    assert resume.address("a:1", three) == "f:1" and resume.node == "f:1"
    # Round robin over the online, in-sync followers sorted by id, skipping the node that
    # just failed when another one is there.
    f3 = NodeInfo("f3", "h:3", "", False, True, True)
    f0 = NodeInfo("f0", "e:0", "", False, False, True)  # online, not in sync
    five = ClusterInfo(7, "a:1", (f3, single.nodes[0], f0, f, three.nodes[2]))
    picker = FollowerPicker()
    picks = [picker.pick(five) for _ in range(4)]
    assert [p.id for p in picks if p is not None] in (["f1", "f3"] * 2, ["f3", "f1"] * 2)
    assert {picker.pick(five, avoid="h:3").id for _ in range(3)} == {"f1"}  # type: ignore[union-attr]
    alone = ClusterInfo(7, "a:1", (single.nodes[0], f))
    assert picker.pick(alone, avoid="f:1") == f  # no other: the same one again
    lagging = ClusterInfo(7, "a:1", (single.nodes[0], f0))
    assert picker.pick(lagging) is None  # out of sync: it would refuse the stream
    # A refusal by the follower (here NOT_FOUND): at once, by
    # the route, without moving the client's current node.
    err = _Err(grpc.StatusCode.NOT_FOUND)
    assert resume.broken(err) == 0.0 and not resume.wants_cluster() and nodes.current == "a:1"
    assert resume.address("a:1", None) == "a:1"
    assert resume.wants_cluster()  # the next resume tries a follower again
    # The same refusal on the route's node is final.
    with pytest.raises(Exception, match="NOT_FOUND|gone"):
        resume.broken(err)
    # A follower that lacks the topic answers UNAVAILABLE naming the leader: not a break of
    # that follower (which would pick the other one, lacking it too) but, at once, the route.
    assert resume.address("a:1", three) == "f:1"
    hinted = _Err(grpc.StatusCode.UNAVAILABLE, (("framecast-leader", "a:1"),))
    assert resume.broken(hinted) == 0.0 and not resume.wants_cluster()
    assert resume.address("a:1", None) == "a:1"


class _Err(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, trailers: tuple[Any, ...] = ()) -> None:
        self._c = code
        self._t = trailers

    def code(self) -> grpc.StatusCode:
        return self._c

    def details(self) -> str:
        return "gone"

    def trailing_metadata(self) -> tuple[Any, ...]:
        return self._t


# ------------------------------------------------------------------ a single node


def test_followers_on_a_single_node_fall_back_to_it(make_server: Any) -> None:
    srv: ServerProcess = make_server()
    topic = f"t-{uuid.uuid4().hex[:12]}"
    with Client(srv.address, retry=TEST_RETRY, read_from="followers") as c:
        info = c.cluster(timeout=10)
        assert info.term == 0 and len(info.nodes) == 1 and info.nodes[0].leader
        acks = publish_all(c, topic, [(i, b"s%d" % i) for i in range(5)])
        with c.frames(topic, 0, timeout=30) as sub:
            got = take(sub, 5)
            assert sub.address == srv.address
        assert [(f.offset, f.payload) for f in got] == [
            (a.offset, b"s%d" % i) for i, a in enumerate(acks)
        ]

    async def aio() -> list[bytes]:
        async with framecast_aio.Client(srv.address, retry=TEST_RETRY, read_from="followers") as c:
            assert (await c.cluster()).term == 0
            sub = c.subscribe(topic, 0, timeout=30)
            got = [p async for p in _first(sub, 5)]
            assert sub.address == srv.address
            await sub.aclose()
            return got

    assert asyncio.run(asyncio.wait_for(aio(), 30)) == [b"s%d" % i for i in range(5)]


async def read_aio(cluster: Cluster, topic: str, n: int) -> tuple[str | None, list[Frame]]:
    """The first ``n`` frames of ``topic`` from 0 read by an asyncio client with
    ``read_from="followers"``, and the address its subscription read them from."""
    async with framecast_aio.Client(
        cluster.addresses, retry=TEST_RETRY, read_from="followers"
    ) as c:
        sub = c.frames(topic, 0, timeout=30)
        frames = [f async for f in _first(sub, n)]
        await sub.aclose()
        return sub.address, frames


async def _first(sub: Any, n: int) -> Any:
    i = 0
    async for x in sub:
        yield x
        i += 1
        if i == n:
            return


# ------------------------------------------------------------------ a real cluster


def test_cluster_names_the_term_the_leader_and_every_node(cluster: Cluster) -> None:
    leader, followers = cluster.roles()
    with Client(cluster.addresses, retry=TEST_RETRY) as c:
        info = c.cluster(timeout=10)
    assert info.term > 0
    assert info.leader == cluster.nodes[leader].address
    assert sorted(n.id for n in info.nodes) == ["n1", "n2", "n3"]
    for n in info.nodes:
        node = cluster.nodes[n.id]
        assert n.address == node.address
        assert n.http_address == node.http_url
        assert (n.leader, n.online, n.in_sync) == (n.id == leader, True, True)
    # Every node gives the same answer, the asyncio client too.
    for node_id in followers:
        other = cluster.info(node_id)
        assert other is not None and (other.term, other.leader) == (info.term, info.leader)

    async def aio() -> ClusterInfo:
        async with framecast_aio.Client(cluster.nodes[followers[0]].address, retry=TEST_RETRY) as c:
            return await c.cluster(timeout=10)

    answer = asyncio.run(asyncio.wait_for(aio(), 20))
    assert (answer.term, answer.leader) == (info.term, info.leader)
    assert sorted(n.id for n in answer.nodes) == ["n1", "n2", "n3"]


def test_subscriptions_spread_over_the_followers_and_get_every_frame(cluster: Cluster) -> None:
    leader, followers = cluster.roles()
    topic = f"t-{uuid.uuid4().hex[:12]}"
    follower_addresses = {cluster.nodes[i].address: i for i in followers}
    with (
        Client(cluster.addresses, retry=TEST_RETRY) as pub,
        Client(cluster.addresses, retry=TEST_RETRY, read_from="followers") as reader,
    ):
        history = publish_all(pub, topic, [(i, b"h%d" % i) for i in range(5)])
        cluster.until_held(topic, 5)
        subs = [reader.frames(topic, 0, timeout=60) for _ in range(6)]
        got = [take(s, 5) for s in subs]
        expected = [(a.offset, i, b"h%d" % i) for i, a in enumerate(history)]
        assert all(triples(g) == expected for g in got)
        # The client's side: every subscription on a follower, round robin over both.
        where = Counter(follower_addresses.get(s.address or "", s.address) for s in subs)
        assert where == {followers[0]: 3, followers[1]: 3}, where
        # The servers' side: the followers serve them, the leader none.
        deadline = time.monotonic() + 10
        while True:
            gauges = {i: cluster.subscribers(i, topic) for i in cluster.nodes}
            if gauges == {leader: 0, followers[0]: 3, followers[1]: 3}:
                break
            assert time.monotonic() < deadline, gauges
            time.sleep(0.1)
        # Reads leave the client's own route alone: writes still go to the leader.
        live = publish_all(reader, topic, [(100 + i, b"l%d" % i) for i in range(40)])
        assert reader.address == cluster.nodes[leader].address
        expected += [(a.offset, 100 + i, b"l%d" % i) for i, a in enumerate(live)]
        for s in subs:
            assert triples(take(s, 40)) == expected[5:]
            assert s.reconnects == 0
            s.close()

    address, frames = asyncio.run(asyncio.wait_for(read_aio(cluster, topic, 45), 40))
    assert address in follower_addresses
    assert triples(frames) == expected


def test_a_topic_no_node_holds_yet_is_created_and_served_by_the_leader(cluster: Cluster) -> None:
    """A follower lacks a topic nobody has created (only the leader creates topics): it
    answers a subscription to it ``UNAVAILABLE`` naming the leader. A subscription that
    picked it asks the route at once, a client given only that follower follows the hint,
    and the leader creates the topic and serves it, sync and asyncio alike. Each reader has
    a topic of its own: once the leader created one, a follower copies it and rightly serves
    a later subscriber to it."""
    leader, followers = cluster.roles()
    base = f"t-{uuid.uuid4().hex[:12]}"
    topics = {name: f"{base}-{name}" for name in ("followers", "lone", "aio")}
    leader_address = cluster.nodes[leader].address
    only_follower = cluster.nodes[followers[0]].address
    got: dict[str, tuple[str | None, list[Frame]]] = {}

    def read(name: str, client: Client) -> None:
        sub = client.frames(topics[name], 0, timeout=60)
        frames = list(itertools.islice(sub, 3))
        got[name] = (sub.address, frames)
        sub.close()

    with (
        Client(cluster.addresses, retry=TEST_RETRY) as pub,
        Client(cluster.addresses, retry=TEST_RETRY, read_from="followers") as reader,
        Client(only_follower, retry=TEST_RETRY) as lone,
    ):
        threads = [
            threading.Thread(target=read, args=("followers", reader), daemon=True),
            threading.Thread(target=read, args=("lone", lone), daemon=True),
            threading.Thread(
                target=lambda: got.update(aio=asyncio.run(read_aio(cluster, topics["aio"], 3))),
                daemon=True,
            ),
        ]
        for t in threads:
            t.start()
        expected = {}
        for name, topic in topics.items():
            deadline = time.monotonic() + 20
            while True:
                gauges = {i: cluster.subscribers(i, topic) for i in cluster.nodes}
                if gauges == {leader: 1, followers[0]: 0, followers[1]: 0}:
                    break
                assert time.monotonic() < deadline, (name, gauges, got, cluster.logs())
                time.sleep(0.1)
            acks = publish_all(pub, topic, [(i, b"n%d" % i) for i in range(3)])
            expected[name] = [(a.offset, i, b"n%d" % i) for i, a in enumerate(acks)]
        for t in threads:
            t.join(30)
        assert sorted(got) == ["aio", "followers", "lone"], got
        for name, (address, frames) in got.items():
            assert triples(frames) == expected[name], name
            assert address == leader_address, (name, address)


def test_history_a_follower_lacks_is_answered_by_the_leader(cluster: Cluster) -> None:
    """A follower that lacks a topic answers a History page of it ``UNAVAILABLE`` naming
    the leader; a client given only that follower follows the hint, sync and asyncio, and
    the leader's ``NotFound`` is the answer. Nothing is created."""
    leader, followers = cluster.roles()
    topic = f"t-{uuid.uuid4().hex[:12]}"
    leader_address = cluster.nodes[leader].address
    only_follower = cluster.nodes[followers[0]].address

    async def read_aio() -> str:
        async with framecast_aio.Client(only_follower, retry=TEST_RETRY) as c:
            with pytest.raises(NotFound):
                await c.history(topic)
            return c.address

    with Client(only_follower, retry=TEST_RETRY) as lone:
        with pytest.raises(NotFound):
            lone.history(topic)
        assert lone.address == leader_address
    assert asyncio.run(read_aio()) == leader_address
    with Client(cluster.addresses, retry=TEST_RETRY) as c:
        assert topic not in {t.name for t in c.list_topics()}


def test_kill_9_of_the_serving_follower_resumes_exactly_on_the_other(cluster: Cluster) -> None:
    leader, followers = cluster.roles()
    topic = f"t-{uuid.uuid4().hex[:12]}"
    acked: list[tuple[int, int, bytes]] = []
    stop = threading.Event()
    failure: list[BaseException] = []

    def publisher(client: Client) -> None:
        # One publish at a time, each retried with its key until acknowledged: when it
        # stops, every frame stored is one acknowledged here.
        try:
            for seq in itertools.count(1000):
                if stop.is_set():
                    return
                payload = b"p%d" % seq
                ack = client.publish(payload, seq_no=seq, topic=topic, timeout=40)
                acked.append((ack.offset, seq, payload))
        except BaseException as e:
            failure.append(e)

    killed: ServerProcess | None = None
    with (
        Client(cluster.addresses, retry=PATIENT) as pub,
        Client(cluster.addresses, retry=PATIENT, read_from="followers") as reader,
    ):
        history = publish_all(pub, topic, [(i, b"h%d" % i) for i in range(20)])
        acked.extend((a.offset, i, b"h%d" % i) for i, a in enumerate(history))
        cluster.until_held(topic, 20)
        sub = reader.frames(topic, 0, timeout=90)
        got = take(sub, 20)
        serving = sub.address
        by_address = {cluster.nodes[i].address: i for i in cluster.nodes}
        assert serving is not None and by_address[serving] in followers
        other = next(i for i in followers if i != by_address[serving])
        thread = threading.Thread(target=publisher, args=(pub,), daemon=True)
        thread.start()
        try:
            got += take(sub, 30)  # 30 live frames through the follower
            killed = cluster.nodes[by_address[serving]]
            killed.kill()
            at_kill = len(acked)
            # The publisher goes on across the kill (the leader drops the dead follower
            # from the in-sync set, then acknowledges again); the subscription resumes.
            deadline = time.monotonic() + 30
            while len(acked) < at_kill + 40 and not failure:
                assert time.monotonic() < deadline, f"{len(acked) - at_kill} acks after the kill"
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(timeout=45)
        assert not thread.is_alive() and not failure, failure
        # Read exactly what was acknowledged: no gap, no duplicate, in offset order.
        got += take(sub, len(acked) - len(got), timeout=40)
        assert triples(got) == sorted(acked)
        assert [f.offset for f in got] == list(range(len(acked)))
        assert sub.address == cluster.nodes[other].address and sub.reconnects >= 1
        # Nothing more: the topic holds exactly that on the leader.
        infos = {t.name: t for t in pub.list_topics(timeout=10)}
        assert infos[topic].next_offset == len(acked)
        sub.close()
    assert killed is not None
    killed.start()  # back for any test after this one (it catches up on its own)
