"""The blocking client against the real server: round trip, replay order, live frames,
publish_many, run, topics, error mapping, close."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
from conftest import TEST_RETRY, ServerProcess, run_bounded

from framecast import (
    Ack,
    AlreadyExists,
    Client,
    ClientClosed,
    DeadlineExceeded,
    Frame,
    FramecastError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    errors,
)


def take(sub, n: int, timeout: float = 15.0) -> list:  # type: ignore[no-untyped-def]
    """The next ``n`` items of ``sub``, within ``timeout`` seconds."""
    try:
        got = run_bounded(lambda: list(itertools.islice(sub, n)), timeout)
    except BaseException:
        sub.close()
        raise
    assert len(got) == n, f"subscription ended after {len(got)} of {n} items"
    return got


def test_publish_subscribe_round_trip(client: Client, topic: str) -> None:
    ack = client.publish(b"hello", seq_no=1, topic=topic)
    assert isinstance(ack, Ack)
    assert ack.offset == 0 and ack.timestamp > 0 and ack.duplicate is False
    ack2 = client.publish(b"world", seq_no=2, topic=topic, timestamp=123_456_789)
    assert (ack2.offset, ack2.timestamp) == (1, 123_456_789)

    with client.subscribe(topic=topic, start=0, timeout=15) as payloads:
        assert take(payloads, 2) == [b"hello", b"world"]

    with client.frames(topic=topic, start=0, timeout=15) as sub:
        frames = take(sub, 2)
        assert sub.snapshot_offset == 2 and sub.epoch and sub.epoch > 0
    assert frames == [
        Frame(seq_no=1, payload=b"hello", timestamp=ack.timestamp, offset=0, live=False),
        Frame(seq_no=2, payload=b"world", timestamp=123_456_789, offset=1, live=False),
    ]


def test_same_idempotency_key_is_stored_once(client: Client, topic: str) -> None:
    first = client.publish(b"once", seq_no=5, topic=topic, idempotency_key="k-1")
    again = client.publish(b"once", seq_no=5, topic=topic, idempotency_key="k-1")
    assert again == Ack(first.offset, first.timestamp, duplicate=True)
    info = {t.name: t for t in client.list_topics()}[topic]
    assert info.frames == 1 and info.next_offset == 1


def test_replay_is_sorted_by_seq_no_timestamp_offset(client: Client, topic: str) -> None:
    rng = random.Random(7)
    specs = []
    for i in range(300):
        seq_no = rng.randrange(0, 40)
        ts = rng.choice([0, 1_000, 2_000, 2_000, 3_000])  # 0 = server time; repeats tie
        specs.append((seq_no, b"p%d" % i, ts))
    acks = client.publish_many(specs, topic=topic, window=64)
    assert [a.offset for a in acks] == list(range(len(specs)))
    stored = [(s, a.timestamp, a.offset, p) for (s, p, ts), a in zip(specs, acks, strict=True)]
    for (_, _, ts), a in zip(specs, acks):
        if ts:
            assert a.timestamp == ts

    expected = sorted(stored)
    with client.frames(topic, 0, timeout=20) as sub:
        got = take(sub, len(specs))
        assert sub.snapshot_offset == len(specs)
    assert [(f.seq_no, f.timestamp, f.offset, f.payload) for f in got] == expected
    assert not any(f.live for f in got)

    # replay_seq_no_start filters history.
    start = 25
    with client.frames(topic, start, timeout=20) as sub:
        want = [e for e in expected if e[0] >= start]
        got = take(sub, len(want))
    assert [(f.seq_no, f.timestamp, f.offset, f.payload) for f in got] == want


def test_live_frames_follow_replay_in_offset_order(client: Client, topic: str) -> None:
    client.publish_many([(10, b"old-10"), (3, b"old-3")], topic=topic)
    with client.frames(topic, 5, timeout=20) as sub:
        first = take(sub, 1)[0]
        assert (first.payload, first.live) == (b"old-10", False)
        assert sub.snapshot_offset == 2
        # Live frames come in offset order, filtered by seq_no >= 5 too.
        client.publish_many([(9, b"new-9"), (1, b"new-1"), (6, b"new-6")], topic=topic)
        live = take(sub, 2)
    assert [(f.seq_no, f.payload, f.offset, f.live) for f in live] == [
        (9, b"new-9", 2, True),
        (6, b"new-6", 4, True),
    ]


def test_publish_many_accepts_a_generator_and_a_small_window(client: Client, topic: str) -> None:
    acks = client.publish_many(((i, b"g%d" % i) for i in range(500)), topic=topic, window=7)
    assert [a.offset for a in acks] == list(range(500))
    assert not any(a.duplicate for a in acks)
    assert client.publish_many([], topic=topic) == []


def test_run_publishes_and_waits_for_delivery(client: Client, topic: str) -> None:
    client.publish(b"history", seq_no=0, topic=topic)
    seen: list[Frame] = []
    acks = run_bounded(
        lambda: client.run(
            [(1, b"a"), (2, b"b"), (3, b"c")], topic, start=0, on_frame=seen.append, timeout=20
        ),
        30,
    )
    assert [a.offset for a in acks] == [1, 2, 3]
    assert [f.payload for f in seen] == [b"history", b"a", b"b", b"c"]
    # Frames below `start` are published but never delivered: run does not wait for them.
    seen.clear()
    acks = client.run(
        [(1, b"low"), (50, b"high")], topic, start=50, on_frame=seen.append, timeout=20
    )
    assert len(acks) == 2
    assert [f.payload for f in seen] == [b"high"]


def test_run_timeout_and_on_frame_errors(client: Client, topic: str) -> None:
    # (The topic exists first: see test_cancelled_topic_creation_leaves_topic_usable.)
    client.create_topic(topic)
    with pytest.raises(DeadlineExceeded):
        client.run([(1, b"x")], topic, timeout=0.0001)

    def boom(frame: Frame) -> None:
        raise RuntimeError("on_frame failed")

    with pytest.raises(RuntimeError, match="on_frame failed"):
        client.run([(1, b"x")], topic, on_frame=boom, timeout=20)



def test_run_that_raised_stops_publishing_at_once(client: Client, topic: str) -> None:
    # on_frame raising ends run(): it returns promptly, draws nothing more from the
    # caller's iterable, and leaves no thread publishing behind.
    client.create_topic(topic)
    drawn = itertools.count()
    last = [0]

    def endless():  # type: ignore[no-untyped-def]
        for i in itertools.count():
            last[0] = next(drawn)
            yield (i, b"x" * 100)

    def boom(frame: Frame) -> None:
        raise RuntimeError("stop at the first frame")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stop at the first frame"):
        client.run(endless(), topic, on_frame=boom, window=64, timeout=20)
    assert time.monotonic() - t0 < 2.0, "run() waited for its publisher"
    assert not [t for t in threading.enumerate() if t.name.startswith("framecast-run")]
    before = last[0]
    time.sleep(0.3)
    assert last[0] == before, "frames are still drawn from the iterable after run() raised"
    # Frames already sent when run() raised may still be stored; nothing drawn later is.
    assert {t.name: t.next_offset for t in client.list_topics()}[topic] <= before + 1


def test_topics_create_list_delete(client: Client, topic: str) -> None:
    info = client.create_topic(topic, retention_max_age_seconds=3600)
    assert info.name == topic and info.epoch > 0 and info.frames == 0
    assert client.create_topic(topic, retention_max_age_seconds=3600).epoch == info.epoch
    with pytest.raises(AlreadyExists):
        client.create_topic(topic, retention_max_age_seconds=60)
    client.publish(b"x", 1, topic)
    listed = {t.name: t for t in client.list_topics()}
    assert listed[topic].frames == 1 and listed[topic].next_offset == 1
    client.delete_topic(topic)
    assert topic not in {t.name for t in client.list_topics()}
    with pytest.raises(NotFound):
        client.delete_topic(topic)
    # Re-created: empty, offset 0 again, a new epoch.
    again = client.create_topic(topic)
    assert again.epoch != info.epoch and again.next_offset == 0


def test_deleting_the_topic_ends_a_subscription_with_not_found(
    client: Client, server: ServerProcess, topic: str
) -> None:
    client.publish(b"x", 1, topic)
    sub = client.frames(topic, 0, timeout=20)
    assert take(sub, 1)[0].payload == b"x"
    other = Client(server.address, retry=TEST_RETRY)
    try:
        other.delete_topic(topic)
    finally:
        other.close()
    with pytest.raises(NotFound):
        run_bounded(lambda: list(sub), 15)


def test_broadcast_reaches_every_named_topic_once(client: Client, topic: str) -> None:
    a, b, lobby = f"{topic}.a", f"{topic}.b", f"{topic}-lobby"
    for t in (a, b, lobby):
        client.create_topic(t)
    names = [f"{topic}.*", lobby]
    acks = client.broadcast(names, b"hello all", seq_no=7, idempotency_key=f"{topic}-k")
    assert set(acks) == {a, b, lobby}
    assert all(ack.offset == 0 and not ack.duplicate for ack in acks.values())
    # The same key again (a retry): every topic answers with its first ack, nothing twice.
    again = client.broadcast(names, b"hello all", seq_no=7, idempotency_key=f"{topic}-k")
    assert again == {t: Ack(x.offset, x.timestamp, duplicate=True) for t, x in acks.items()}
    # Checked whole before anything is written.
    with pytest.raises(InvalidArgument):
        client.broadcast([a, "bad name"], b"never", seq_no=8)
    with pytest.raises(InvalidArgument, match="not a string"):
        client.broadcast(a, b"never", seq_no=8)
    listed = {t.name: t for t in client.list_topics()}
    assert [listed[t].frames for t in (a, b, lobby)] == [1, 1, 1]
    with client.frames(topic=b, start=0, timeout=15) as sub:
        (frame,) = take(sub, 1)
    assert (frame.seq_no, frame.payload) == (7, b"hello all")


@pytest.mark.parametrize("bad_topic", ["bad/name", ".hidden", "-x", "a b", "é", "a" * 129])
def test_invalid_topic_name_is_invalid_argument(client: Client, bad_topic: str) -> None:
    with pytest.raises(InvalidArgument, match="topic name"):
        client.publish(b"x", 1, topic=bad_topic)
    with pytest.raises(InvalidArgument):
        client.publish_many([(1, b"x")], topic=bad_topic)
    with pytest.raises(InvalidArgument):
        run_bounded(lambda: next(client.frames(bad_topic, 0, timeout=10)), 15)
    with pytest.raises(InvalidArgument):
        client.create_topic(bad_topic)


def test_errors_are_mapped_and_nothing_is_written(client: Client, topic: str) -> None:
    with pytest.raises(InvalidArgument, match="negative timestamp"):
        client.publish(b"x", 1, topic=topic, timestamp=-1)
    with pytest.raises(InvalidArgument):
        client.publish(b"x", 1, topic=topic, idempotency_key="k" * 129)
    with pytest.raises(InvalidArgument):
        client.publish(b"x", seq_no=-1, topic=topic)
    with pytest.raises(InvalidArgument):
        client.publish("not bytes", 1, topic=topic)  # type: ignore[arg-type]
    # publish_many: the refused frame's index is named, earlier acks stand.
    with pytest.raises(InvalidArgument, match="frame 2") as info:
        client.publish_many([(1, b"a"), (2, b"b"), (3, b"c", -5), (4, b"d")], topic=topic)
    assert [a.offset for a in info.value.acks] == [0, 1]
    assert isinstance(info.value, FramecastError) and isinstance(info.value, errors.InvalidArgument)
    listed = {t.name: t for t in client.list_topics()}
    assert listed[topic].frames == 2


def test_server_limits_are_mapped(make_server, topic: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(
        "--max-subscribers", "1", "--max-frame-bytes", "1024", "--no-auto-create-topics"
    )
    with Client(srv.address, retry=TEST_RETRY) as client:
        with pytest.raises(NotFound):
            client.publish(b"x", 1, topic=topic)
        with pytest.raises(NotFound):
            run_bounded(lambda: next(client.frames(topic, 0, timeout=10)), 15)
        client.create_topic(topic)
        with pytest.raises(InvalidArgument, match="max-frame-bytes"):
            client.publish(b"x" * 2000, 1, topic=topic)
        client.publish(b"x" * 1000, 1, topic=topic)
        with client.frames(topic, 0, timeout=20) as first:
            take(first, 1)
            with pytest.raises(ResourceExhausted):
                run_bounded(lambda: next(client.frames(topic, 0, timeout=10)), 15)


def test_unreachable_server_is_unavailable_or_deadline(topic: str) -> None:
    from conftest import free_port

    from framecast import RetryPolicy, Unavailable

    addr = f"127.0.0.1:{free_port()}"
    with Client(addr, retry=RetryPolicy(initial=0.01, max_delay=0.05, max_elapsed=0.5)) as c:
        t0 = time.monotonic()
        with pytest.raises(Unavailable) as info:
            c.publish(b"x", 1, topic)
        assert info.value.attempts >= 2 and time.monotonic() - t0 < 10
        with pytest.raises(Unavailable):
            run_bounded(lambda: next(c.frames(topic, 0)), 15)
    # Without a key a failed attempt is not retried (a retry could store the frame twice),
    # coalescing or not.
    for coalesce in (False, True):
        policy = RetryPolicy(initial=0.2, max_delay=0.2, max_elapsed=5.0)
        with Client(addr, retry=policy, coalesce=coalesce) as c:
            t0 = time.monotonic()
            with pytest.raises(Unavailable) as info:
                c.publish(b"x", 1, topic, idempotency_key="")
            assert info.value.attempts == 1 and time.monotonic() - t0 < 2, (coalesce, info.value)
    with Client(addr) as c:
        with pytest.raises(DeadlineExceeded):
            c.publish(b"x", 1, topic, timeout=0.3)
        with pytest.raises(DeadlineExceeded):
            run_bounded(lambda: c.publish_many([(1, b"x")], topic, timeout=0.3), 15)


def test_close_ends_subscriptions_and_calls(server: ServerProcess, topic: str) -> None:
    client = Client(server.address, retry=TEST_RETRY)
    client.publish(b"x", 1, topic)
    sub = client.frames(topic, 0)
    assert take(sub, 1)[0].payload == b"x"
    # close() from another thread interrupts a blocked next().
    threading.Timer(0.3, sub.close).start()
    assert run_bounded(lambda: list(sub), 15) == []
    sub2 = client.frames(topic, 0)
    assert take(sub2, 1)[0].payload == b"x"
    threading.Timer(0.3, client.close).start()
    with pytest.raises(ClientClosed):
        run_bounded(lambda: list(sub2), 15)
    with pytest.raises(ClientClosed):
        client.publish(b"y", 2, topic)
    client.close()  # idempotent


def test_close_ends_a_cluster_watch(server: ServerProcess) -> None:
    client = Client(server.address, retry=TEST_RETRY)
    watch = client.watch_cluster(timeout=30)
    first = run_bounded(lambda: next(watch), 15)
    assert (first.kind, first.node_id) == ("NODE_ONLINE", "standalone")
    # A quiet cluster says nothing more: close() from another thread ends the wait.
    threading.Timer(0.3, client.close).start()
    with pytest.raises(ClientClosed):
        run_bounded(lambda: next(watch), 15)


# Regression: a request cancelled while it auto-created a topic used to leave the topic's
# directory on disk but not in the server's map (every later use failed with UNAVAILABLE
# "Directory not empty" until a restart). Creation now finishes even when cancelled.
def test_cancelled_topic_creation_leaves_topic_usable(server: ServerProcess, topic: str) -> None:
    from framecast import RetryPolicy

    with Client(server.address, retry=RetryPolicy(initial=0.01, max_elapsed=1.0)) as c:
        for i, cut in enumerate((0.0002, 0.0005, 0.001, 0.002)):
            name = f"{topic}-{i}"
            try:
                c.publish(b"x", 1, name, timeout=cut)  # cancelled, perhaps mid-creation
            except FramecastError:
                pass
            time.sleep(0.05)
            assert c.publish(b"x", 1, name, timeout=5).offset in (0, 1)


def test_forked_workers_make_keys_of_their_own(server: ServerProcess, topic: str) -> None:
    # A client made before fork() (gunicorn --preload, multiprocessing): each worker's
    # frames are its own, not retries of another worker's.
    import os

    client = Client(server.address, retry=TEST_RETRY, coalesce=False)
    client.create_topic(topic)
    children = []
    for w in range(3):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                acks = [client.publish(f"w{w}-{i}".encode(), i, topic=topic) for i in range(5)]
                code = 0 if not any(a.duplicate for a in acks) else 2
            finally:
                os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    listed = {t.name: t for t in client.list_topics()}
    assert listed[topic].frames == 15
    client.close()


def test_a_coalescing_client_made_before_fork_publishes_in_the_child(
    server: ServerProcess, topic: str
) -> None:
    # The parent's shared streams (and their threads) do not exist in a forked child: the
    # child makes its own instead of queueing frames nobody sends.
    import os

    client = Client(server.address, retry=TEST_RETRY, coalesce=True)
    client.publish(b"parent", 1, topic=topic, timeout=10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ack = client.publish(b"child", 2, topic=topic, timeout=3)
            code = 0 if ack.offset == 1 and not ack.duplicate else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's client still works.
    assert client.publish(b"parent again", 3, topic=topic, timeout=10).offset == 2
    client.close()


def test_a_topic_or_key_that_is_not_a_str_is_invalid_argument(client: Client, topic: str) -> None:
    client.create_topic("default")
    client.publish(b"x", 1, topic="default")
    with pytest.raises(InvalidArgument, match="str"):
        client.delete_topic(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="str"):
        client.create_topic(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="str"):
        client.publish(b"x", 1, topic=None)  # type: ignore[arg-type]
    for key in (b"k", 5):
        with pytest.raises(InvalidArgument, match="idempotency_key"):
            client.publish(b"x", 1, topic=topic, idempotency_key=key)  # type: ignore[arg-type]
    listed = {t.name: t.frames for t in client.list_topics()}
    assert listed["default"] == 1


def test_each_client_has_a_connection_of_its_own(make_server, topic: str) -> None:  # type: ignore[no-untyped-def]
    # One client's subscriptions fill its connection's streams; another client's calls
    # still go through, on a connection of their own.
    srv = make_server("--max-streams-per-connection", "4")
    with Client(srv.address, retry=TEST_RETRY) as a, Client(srv.address, retry=TEST_RETRY) as b:
        a.create_topic(topic)
        a.publish(b"first", 0, topic=topic)
        subs = [a.frames(topic, 0, timeout=30) for _ in range(4)]
        try:
            for s in subs:
                take(s, 1)  # its stream is open on a's connection
            ack = b.publish(b"through", 1, topic=topic, timeout=5)
            assert ack.offset == 1
        finally:
            for s in subs:
                s.close()


def test_a_publish_that_timed_out_names_its_key_and_a_retry_with_it_stores_once(
    make_server, topic: str  # type: ignore[no-untyped-def]
) -> None:
    from framecast import RetryPolicy

    srv = make_server(fixed_port=True)
    patient = RetryPolicy(initial=0.05, max_delay=0.2, max_elapsed=30)
    for coalesce in (True, False):
        with Client(srv.address, retry=patient, coalesce=coalesce) as client:
            client.create_topic(topic)
            srv.kill()
            with pytest.raises(DeadlineExceeded) as info:
                client.publish(b"once", 1, topic=topic, timeout=1)
            key = info.value.idempotency_key
            assert key, "the error names the key the frame was sent with"
            srv.start()
            # The first send may land meanwhile (a coalesced one is sent on): with the
            # key, the frame is stored once either way.
            client.publish(b"once", 1, topic=topic, idempotency_key=key, timeout=30)
            time.sleep(1)
            listed = {t.name: t.frames for t in client.list_topics()}
            assert listed[topic] == 1, (coalesce, listed)
            client.delete_topic(topic)


def test_a_publish_that_gave_up_names_its_key_and_a_retry_with_it_stores_once(
    make_server, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # Unavailable leaves the outcome unknown: the error names the key (publish, coalesced
    # publish, broadcast), and sending again with it cannot store the frame twice.
    from framecast import RetryPolicy, Unavailable

    srv = make_server(fixed_port=True)
    short = RetryPolicy(initial=0.02, max_delay=0.1, max_elapsed=0.5)
    for coalesce in (False, True):
        with Client(srv.address, retry=short, coalesce=coalesce) as client:
            client.create_topic(topic)
            srv.kill()
            keys = []
            with pytest.raises(Unavailable) as info:
                client.publish(b"once", 1, topic=topic, timeout=10)
            keys.append(info.value.idempotency_key)
            with pytest.raises(Unavailable) as info:
                client.publish(b"mine", 2, topic=topic, idempotency_key="my-key", timeout=10)
            keys.append(info.value.idempotency_key)
            with pytest.raises(Unavailable) as info:
                client.broadcast([topic], b"all", 3, timeout=10)
            keys.append(info.value.idempotency_key)
            assert keys[0] and keys[1] == "my-key" and keys[2] and keys[0] != keys[2], keys
            srv.start()
        # Any client may send them again (this one reconnects at once).
        with Client(srv.address, retry=TEST_RETRY) as client:
            first = client.publish(b"once", 1, topic=topic, idempotency_key=keys[0], timeout=10)
            again = client.publish(b"once", 1, topic=topic, idempotency_key=keys[0], timeout=10)
            assert again.duplicate and again.offset == first.offset
            client.broadcast([topic], b"all", 3, idempotency_key=keys[2], timeout=10)
            assert client.broadcast([topic], b"all", 3, idempotency_key=keys[2])[topic].duplicate
            listed = {t.name: t.frames for t in client.list_topics()}
            assert listed[topic] == 2, (coalesce, listed)
            client.delete_topic(topic)


def test_a_saved_cursor_resumes_a_subscription_exactly(server: ServerProcess, topic: str) -> None:
    # frames(cursor=sub.cursor), on another client, continues exactly after the last frame
    # the first subscription yielded: through the rest of its replay, then live.
    from framecast import Cursor

    with Client(server.address, retry=TEST_RETRY) as a:
        a.publish_many([(s, f"f{s}".encode()) for s in (5, 1, 4, 2, 3)], topic)
        first = a.frames(topic, 2)
        got = take(first, 2)  # replay sorted by seq_no: 2, 3
        saved = first.cursor
        first.close()
        assert isinstance(saved, Cursor) and [f.seq_no for f in got] == [2, 3]
    with Client(server.address, retry=TEST_RETRY) as b:
        rest = b.frames(topic, 2, cursor=saved)
        assert [f.seq_no for f in take(rest, 2)] == [4, 5]  # the rest of the replay
        b.publish(b"live", 9, topic=topic)
        live = take(rest, 1)[0]
        assert (live.seq_no, live.offset, live.live) == (9, 5, True)
        rest.close()
        with pytest.raises(InvalidArgument):
            b.frames(topic, cursor=(1, 2))  # type: ignore[arg-type]
