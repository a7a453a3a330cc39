"""``kill -9`` and restart the real server under a subscription and under publishers.

The server listens on a fixed loopback port (chosen free once), so clients keep their
address across restarts; it runs with ``--fsync always`` over the same data dir.
"""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import threading
import time

import pytest
from conftest import TEST_RETRY, ServerProcess, run_bounded

from framecast import Ack, Client, EpochChanged, Frame, OutOfRange

#: Keeps the subscriber's HTTP/2 receive window small (no BDP probing), so the server is
#: still mid-stream when it is killed, not done with a replay the client merely buffered.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0)]


def take(sub, n: int, timeout: float = 30.0) -> list[Frame]:  # type: ignore[no-untyped-def]
    """The next ``n`` frames of ``sub``, within ``timeout`` seconds."""
    try:
        got = run_bounded(lambda: list(itertools.islice(sub, n)), timeout)
    except BaseException:
        sub.close()
        raise
    assert len(got) == n, f"subscription ended after {len(got)} of {n} frames"
    return got


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def all_frames(address: str, topic: str, count: int) -> list[Frame]:
    """Every frame of ``topic`` through a fresh subscription (history, key order), checking
    the topic holds exactly ``count``."""
    with Client(address, retry=TEST_RETRY) as c:
        info = {t.name: t for t in c.list_topics()}[topic]
        assert info.frames == count, f"topic holds {info.frames} frames, expected {count}"
        with c.frames(topic, 0, timeout=60) as sub:
            frames = take(sub, count)
            assert sub.snapshot_offset == count
    return frames


def key(f: Frame) -> tuple[int, int, int, bytes]:
    return (f.seq_no, f.timestamp, f.offset, f.payload)


def test_subscription_yields_exactly_the_right_frames_across_kill9(
    restartable_server: ServerProcess, topic: str
) -> None:
    srv = restartable_server
    rng = random.Random(11)
    n_history, n_live = 2000, 300
    with (
        Client(srv.address, retry=TEST_RETRY) as pub,
        Client(srv.address, retry=TEST_RETRY, channel_options=SMALL_WINDOW) as subc,
    ):
        history = [(rng.randrange(0, 400), b"h%05d-" % i + b"x" * 500) for i in range(n_history)]
        pub.publish_many(history, topic)

        sub = subc.frames(topic, 0, timeout=90)
        got = take(sub, 600)
        assert sub.snapshot_offset == n_history
        epoch = sub.epoch
        srv.restart()  # kill -9 during replay
        got += take(sub, 600)
        srv.restart()  # and again
        got += take(sub, n_history - 1200)
        assert sub.reconnects >= 2, "the kills did not break the replay stream"
        assert not any(f.live for f in got)
        assert (sub.snapshot_offset, sub.epoch) == (n_history, epoch)

        # Live: a publisher publishes one frame at a time (retrying through the restarts).
        acked: dict[bytes, Ack] = {}
        failures: list[BaseException] = []

        def publisher() -> None:
            try:
                for i in range(n_live):
                    payload = b"live-%04d" % i
                    acked[payload] = pub.publish(payload, seq_no=rng.randrange(0, 400), topic=topic)
            except BaseException as e:
                failures.append(e)

        t = threading.Thread(target=publisher, daemon=True)
        t.start()
        reconnects = sub.reconnects
        got += take(sub, 100)
        srv.restart()  # kill -9 during live
        got += take(sub, 100)
        srv.restart()
        got += take(sub, n_live - 200)
        t.join(60)
        assert not t.is_alive() and not failures, failures
        assert sub.reconnects >= reconnects + 2, "the kills did not break the live stream"
        sub.close()

    live = got[n_history:]
    assert all(f.live for f in live)
    assert [f.offset for f in live] == list(range(n_history, n_history + n_live))
    assert {f.payload: (f.offset, f.timestamp) for f in live} == {
        p: (a.offset, a.timestamp) for p, a in acked.items()
    }

    # The frames yielded are exactly those of one unbroken subscription started at the
    # same snapshot: history in (seq_no, timestamp, offset) order, then live by offset.
    truth = all_frames(srv.address, topic, n_history + n_live)
    expected = [key(f) for f in truth if f.offset < n_history] + sorted(
        (key(f) for f in truth if f.offset >= n_history), key=lambda k: k[2]
    )
    assert [key(f) for f in got] == expected


def test_every_acked_publish_is_stored_exactly_once_across_kill9(
    restartable_server: ServerProcess, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    srv = restartable_server
    caplog.set_level(logging.DEBUG, logger="framecast")
    n_single, n_many = 300, 3000
    single_acks: dict[bytes, Ack] = {}
    many_acks: list[Ack] = []
    many_payloads = [b"m-%05d" % i for i in range(n_many)]
    failures: list[BaseException] = []

    with (
        Client(srv.address, retry=TEST_RETRY) as c1,
        Client(srv.address, retry=TEST_RETRY) as c2,
        Client(srv.address, retry=TEST_RETRY) as observer,
    ):
        observer.create_topic(topic)

        def single() -> None:
            try:
                for i in range(n_single):
                    p = b"s-%05d" % i
                    single_acks[p] = c1.publish(p, seq_no=i, topic=topic)
            except BaseException as e:
                failures.append(e)

        def many() -> None:
            def frames():  # type: ignore[no-untyped-def]
                for i, p in enumerate(many_payloads):
                    if i % 50 == 0:
                        time.sleep(0.02)
                    yield (i, p)

            try:
                many_acks.extend(c2.publish_many(frames(), topic, window=128))
            except BaseException as e:
                failures.append(e)

        threads = [threading.Thread(target=f, daemon=True) for f in (single, many)]
        for t in threads:
            t.start()

        def stored() -> int:
            return {t.name: t for t in observer.list_topics()}[topic].next_offset

        busy_at_kill = []
        for threshold in (1000, 2200):
            wait_for(lambda: stored() >= threshold, 60, f"{threshold} frames stored")
            busy_at_kill.append(sum(t.is_alive() for t in threads))
            srv.restart()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "publishers did not finish"
        assert not failures, failures
        assert busy_at_kill[0] >= 1 and busy_at_kill[1] >= 1, busy_at_kill

    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("publish")]
    assert retries, "no publish was interrupted by the kills"
    assert len(many_acks) == n_many and len(single_acks) == n_single
    acked = {**single_acks, **dict(zip(many_payloads, many_acks))}
    truth = all_frames(srv.address, topic, n_single + n_many)
    by_payload: dict[bytes, Frame] = {}
    for f in truth:
        assert f.payload not in by_payload, f"{f.payload!r} stored twice"
        by_payload[f.payload] = f
    assert set(by_payload) == set(acked)
    for p, a in acked.items():
        f = by_payload[p]
        assert (f.offset, f.timestamp) == (a.offset, a.timestamp), p
    # Acks of one publish_many come in order.
    assert [a.offset for a in many_acks] == sorted(a.offset for a in many_acks)


def test_resume_after_topic_recreated_is_epoch_changed(
    restartable_server: ServerProcess, topic: str
) -> None:
    srv = restartable_server
    with Client(srv.address, retry=TEST_RETRY) as c:
        c.publish_many([(i, b"%d" % i) for i in range(3)], topic)
        sub = c.frames(topic, 0, timeout=60)
        take(sub, 1)
        srv.restart()
        # While the subscription is not being read, the topic is deleted and re-created.
        with Client(srv.address, retry=TEST_RETRY) as other:
            other.delete_topic(topic)
            other.publish(b"new", 1, topic)
        with pytest.raises(EpochChanged):
            run_bounded(lambda: list(sub), 30)


def test_resume_beyond_the_log_is_out_of_range(
    restartable_server: ServerProcess, topic: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    srv = restartable_server
    backup = tmp_path / "backup"
    with Client(srv.address, retry=TEST_RETRY) as c:
        c.publish_many([(i, b"%d" % i) for i in range(3)], topic)
        srv.stop()
        shutil.copytree(srv.data_dir, backup)  # a backup holding 3 frames
        srv.start()
        c.publish_many([(i, b"%d" % i) for i in range(3, 6)], topic)
        sub = c.frames(topic, 0, timeout=60)
        assert len(take(sub, 6)) == 6
        # The data dir goes back to the backup: the subscription's cursor (S = 6) is now
        # beyond the topic's log. The client must say so, not skip or repeat frames.
        srv.kill()
        shutil.rmtree(srv.data_dir)
        shutil.copytree(backup, srv.data_dir)
        srv.start()
        with pytest.raises(OutOfRange):
            run_bounded(lambda: list(sub), 30)


def test_quiet_subscription_gets_a_full_retry_budget_after_idling(
    restartable_server: ServerProcess, topic: str
) -> None:
    """The retry budget counts from the first failure, not from the last frame: a
    subscription idle for longer than ``max_elapsed`` still survives a restart."""
    from framecast import RetryPolicy

    srv = restartable_server
    # The restart must fit in the budget, on a loaded machine too.
    policy = RetryPolicy(initial=0.02, max_delay=0.2, max_elapsed=2.5)
    with Client(srv.address, retry=policy) as c:
        c.publish(b"before", 1, topic)
        sub = c.frames(topic, 0, timeout=30)
        assert take(sub, 1)[0].payload == b"before"
        time.sleep(3.0)  # quiet for longer than the whole retry budget
        srv.restart()
        ack = c.publish(b"after", 2, topic)
        (frame,) = take(sub, 1)
        assert (frame.payload, frame.offset, frame.live) == (b"after", ack.offset, True)
        assert sub.reconnects >= 1
        sub.close()
