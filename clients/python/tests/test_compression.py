"""gzip compression with grpcio against the real server: publishes and subscriptions work,
and the bytes on the wire (counted by a loopback TCP relay between client and server) show
that requests and responses are compressed with ``compression="gzip"`` and plain without."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
from conftest import TEST_RETRY, ServerProcess

from framecast import Client, InvalidArgument
from framecast import aio as framecast_aio

FRAMES = 30
SIZE = 4096


def json_payload(i: int) -> bytes:
    """A JSON-like payload of exactly ``SIZE`` bytes, different for each ``i``."""
    records: list[dict[str, object]] = []
    n = 0
    while len(json.dumps(records)) < SIZE:
        x = (i * 7919 + n * 104729) % 1_000_003
        records.append(
            {"sym": f"S{x % 500:03}", "bid": x / 1000, "qty": (x % 97) * 100, "seq": i * 1000 + n}
        )
        n += 1
    return json.dumps(records).encode()[:SIZE]


class Relay:
    """A loopback TCP relay to ``target`` that counts the bytes each way."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.to_server = 0
        self.to_client = 0
        self._lock = threading.Lock()
        self._stopped = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.create_connection(self._target, timeout=10)
            up.settimeout(None)
            self._sockets += [down, up]
            threading.Thread(target=self._pump, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if to_server:
                        self.to_server += len(data)
                    else:
                        self.to_client += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        for s in self._sockets:
            s.close()


@pytest.fixture
def relay(server: ServerProcess) -> Iterator[Relay]:
    r = Relay(server.address)
    yield r
    r.close()


def publish_and_read(address: str, topic: str, compression: str | None) -> list[bytes]:
    sent = [json_payload(i) for i in range(FRAMES)]
    with Client(address, retry=TEST_RETRY, compression=compression) as c:
        c.publish(sent[0], seq_no=0, topic=topic)
        c.publish_many(((i, p) for i, p in enumerate(sent) if i > 0), topic=topic)
        got: list[bytes] = []
        with c.subscribe(topic=topic, start=0, timeout=20) as sub:
            for payload in sub:
                got.append(payload)
                if len(got) == FRAMES:
                    break
    assert got == sent
    return sent


def test_gzip_round_trip_and_fewer_bytes_both_ways(server: ServerProcess) -> None:
    counts = {}
    for compression in (None, "gzip"):
        relay = Relay(server.address)
        try:
            publish_and_read(relay.address, f"t-{compression}", compression)
            counts[compression] = (relay.to_server, relay.to_client)
        finally:
            relay.close()
    payload_bytes = FRAMES * SIZE
    plain_up, plain_down = counts[None]
    gzip_up, gzip_down = counts["gzip"]
    # Plain: every payload crosses in full both ways.
    assert plain_up > payload_bytes and plain_down > payload_bytes, counts
    # gzip: the JSON compresses well; requests and responses are both well under half.
    assert gzip_up < plain_up / 2, counts
    assert gzip_down < plain_down / 2, counts


def test_aio_client_with_gzip(server: ServerProcess, relay: Relay, topic: str) -> None:
    sent = [json_payload(i) for i in range(10)]

    async def main() -> list[bytes]:
        async with framecast_aio.Client(relay.address, retry=TEST_RETRY, compression="gzip") as c:
            await c.publish(sent[0], seq_no=0, topic=topic)
            await c.publish_many([(i, p) for i, p in enumerate(sent) if i > 0], topic=topic)
            got: list[bytes] = []
            async for payload in c.subscribe(topic=topic, start=0, timeout=20):
                got.append(payload)
                if len(got) == len(sent):
                    break
            return got

    got = asyncio.run(asyncio.wait_for(main(), 30))
    assert got == sent
    # Both directions compressed: far fewer bytes than the payloads.
    assert relay.to_server < len(sent) * SIZE / 2
    assert relay.to_client < len(sent) * SIZE / 2


def test_zstd_and_unknown_names_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="grpcio"):
        Client("127.0.0.1:1", compression="zstd")
    with pytest.raises(InvalidArgument, match="unknown compression"):
        framecast_aio.Client("127.0.0.1:1", compression="brotli")
    Client("127.0.0.1:1", compression="none").close()
    Client("127.0.0.1:1", compression="GZIP").close()
