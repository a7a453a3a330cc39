"""Tokens and TLS against the real server: a token from ``framecast token`` is sent on every
call (given, or from ``$FRAMECAST_TOKEN``) and a missing or insufficient one is refused
without retries; ``ca_cert=`` or an ``https://`` address makes a TLS channel; a server with
``--tls-client-ca`` serves a client with a certificate from that CA. Certificates are made
with trustme; every wait is bounded."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme
from conftest import TEST_RETRY, ServerProcess, run_bounded

from framecast import (
    Ack,
    Client,
    PermissionDenied,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
)
from framecast import aio as framecast_aio

#: Retries for calls that must fail: a short budget.
QUICK = RetryPolicy(initial=0.02, max_delay=0.2, max_elapsed=2.0)


class Pki:
    """A CA and a server certificate for ``localhost`` and 127.0.0.1, written under a
    directory; and a second CA for client certificates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_path = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.cert_path = root / "server.pem"
        self.key_path = root / "server-key.pem"
        server.private_key_pem.write_to_path(str(self.key_path))
        with self.cert_path.open("wb") as f:
            for blob in server.cert_chain_pems:
                f.write(blob.bytes())
        self.client_ca = trustme.CA()
        self.client_ca_path = root / "client-ca.pem"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_path))

    def serve_args(self, *extra: str) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert_path), "--tls-key", str(self.key_path), *extra)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def https(srv: ServerProcess) -> str:
    return f"https://localhost:{srv.port}"


def mint(binary: Path, secret: Path, *perms: str) -> str:
    """A token from ``framecast token``."""
    out = subprocess.run(
        [str(binary), "token", "--secret-file", str(secret), "--subject", "py", *perms],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return out.stdout.decode().strip()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(b"a-secret-long-enough-for-hs256\n")
    return path


def test_token_is_sent_and_a_missing_or_narrow_one_is_refused(
    make_server, framecast_bin: Path, secret: Path, topic: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("--auth-jwt-secret-file", str(secret))
    token = mint(framecast_bin, secret, "--publish", "sec.*", "--subscribe", "sec.*")
    topic = f"sec.{topic}"

    with Client(srv.address, retry=TEST_RETRY, token=token) as c:
        assert c.publish(b"hi", seq_no=1, topic=topic).offset == 0
        with c.subscribe(topic=topic, start=0, timeout=15) as sub:
            assert next(iter(sub)) == b"hi"
        # The token allows sec.* only: refused at once, not retried.
        started = time.monotonic()
        with pytest.raises(PermissionDenied):
            c.publish(b"x", seq_no=1, topic="elsewhere")
        assert time.monotonic() - started < 5

    with Client(srv.address, retry=TEST_RETRY) as c:
        started = time.monotonic()
        with pytest.raises(Unauthenticated):
            c.publish(b"x", seq_no=1, topic=topic)
        assert time.monotonic() - started < 5

    # From the environment when not given.
    monkeypatch.setenv("FRAMECAST_TOKEN", token)
    with Client(srv.address, retry=TEST_RETRY) as c:
        assert c.publish(b"env", seq_no=2, topic=topic).offset == 1


def test_aio_client_sends_the_token_on_every_kind_of_call(
    make_server, framecast_bin: Path, secret: Path, topic: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    srv = make_server("--auth-jwt-secret-file", str(secret))
    token = mint(framecast_bin, secret, "--publish", "sec.*", "--subscribe", "sec.*")
    topic = f"sec.{topic}"

    async def scenario() -> None:
        async with framecast_aio.Client(srv.address, retry=TEST_RETRY, token=token) as c:
            await c.publish(b"one", seq_no=1, topic=topic)  # unary
            acks = await c.publish_many([(2, b"two")], topic=topic)  # bidirectional stream
            assert [a.offset for a in acks] == [1]
            got = []
            async for frame in c.frames(topic=topic, start=0):  # server stream
                got.append(frame.payload)
                if len(got) == 2:
                    break
            assert got == [b"one", b"two"]
        async with framecast_aio.Client(srv.address, retry=TEST_RETRY) as c:
            with pytest.raises(Unauthenticated):
                await c.publish(b"x", seq_no=1, topic=topic)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_tls_publish_and_subscribe_with_a_ca(make_server, pki: Pki, topic: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(*pki.serve_args())
    with Client(https(srv), retry=TEST_RETRY, ca_cert=str(pki.ca_path)) as c:
        c.publish(b"secret", seq_no=1, topic=topic)
        with c.subscribe(topic=topic, start=0, timeout=15) as sub:
            assert next(iter(sub)) == b"secret"
    # The CA as bytes, and a plain host:port address: TLS all the same.
    with Client(f"localhost:{srv.port}", retry=TEST_RETRY, ca_cert=pki.ca.cert_pem.bytes()) as c:
        assert c.publish(b"again", seq_no=2, topic=topic).offset == 1
    # Plaintext to the TLS port, or TLS trusting another CA: no call gets through.
    with Client(srv.address, retry=QUICK) as c:
        with pytest.raises(Unavailable):
            c.publish(b"x", seq_no=3, topic=topic)
    other = trustme.CA()
    with Client(https(srv), retry=QUICK, ca_cert=other.cert_pem.bytes()) as c:
        with pytest.raises(Unavailable):
            c.publish(b"x", seq_no=3, topic=topic)


def test_aio_tls(make_server, pki: Pki, topic: str) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(*pki.serve_args())

    async def scenario() -> None:
        async with framecast_aio.Client(
            https(srv), retry=TEST_RETRY, ca_cert=str(pki.ca_path)
        ) as c:
            await c.publish(b"aio", seq_no=1, topic=topic)
            async for frame in c.frames(topic=topic, start=0):
                assert frame.payload == b"aio"
                break

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_mutual_tls_and_a_token_together(
    make_server, framecast_bin: Path, pki: Pki, secret: Path, topic: str, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    srv = make_server(
        *pki.serve_args("--tls-client-ca", str(pki.client_ca_path)),
        "--auth-jwt-secret-file",
        str(secret),
    )
    token = mint(framecast_bin, secret, "--publish", ">", "--subscribe", ">")
    monkeypatch.delenv("FRAMECAST_TOKEN", raising=False)
    leaf = pki.client_ca.issue_cert("publisher@example.com")
    with Client(
        https(srv),
        retry=TEST_RETRY,
        ca_cert=str(pki.ca_path),
        client_cert=b"".join(b.bytes() for b in leaf.cert_chain_pems),
        client_key=leaf.private_key_pem.bytes(),
        token=token,
    ) as c:
        assert c.publish(b"both", seq_no=1, topic=topic).offset == 0
    # Without a client certificate: refused at the handshake.
    with Client(https(srv), retry=QUICK, ca_cert=str(pki.ca_path), token=token) as c:
        with pytest.raises(Unavailable):
            c.publish(b"x", seq_no=2, topic=topic)


def test_bad_credentials_are_refused_before_any_call(tmp_path: Path) -> None:
    from framecast import InvalidArgument

    with pytest.raises(InvalidArgument):
        Client("localhost:1", ca_cert=str(tmp_path / "missing.pem"))
    with pytest.raises(InvalidArgument):
        Client("localhost:1", ca_cert=b"not a pem")
    with pytest.raises(InvalidArgument):
        Client("localhost:1", client_cert=b"-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(InvalidArgument):
        Client("localhost:1", token="t\u00e9")


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch) -> Iterator[None]:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("FRAMECAST_TOKEN", raising=False)
    yield


def until_expired(token: str) -> float:
    """Seconds until a little after ``token``'s ``exp`` (whole seconds)."""
    import base64
    import json

    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return max(0.0, claims["exp"] - time.time() + 0.3)


def expiring_tokens(
    framecast_bin: Path, secret: Path
) -> tuple[str, str, str, Callable[[], str], list[str]]:
    """A publisher's token, a subscriber's that expires in 2 s, a lasting subscriber's, and
    a provider that gives the short one first and the lasting one after (and what it gave)."""
    publisher_token = mint(framecast_bin, secret, "--publish", ">")
    short = mint(framecast_bin, secret, "--subscribe", ">", "--ttl", "2s")
    long = mint(framecast_bin, secret, "--subscribe", ">")
    given: list[str] = []

    def provider() -> str:
        given.append(short if not given else long)
        return given[-1]

    return publisher_token, short, long, provider, given


def test_a_token_provider_keeps_a_subscription_going_past_token_expiry(
    make_server, framecast_bin: Path, secret: Path, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # token= a function: each call and reconnect asks it; a subscription whose token
    # expires under it reconnects with the fresh one and resumes exactly. With a provider
    # that has nothing fresher, the expiry is final (Unauthenticated).
    srv = make_server("--auth-jwt-secret-file", str(secret))
    publisher_token, short, long, provider, given = expiring_tokens(framecast_bin, secret)

    with Client(srv.address, token=publisher_token, retry=TEST_RETRY) as pub:
        pub.publish(b"before", 1, topic=topic, timeout=10)
        with Client(srv.address, token=provider, retry=TEST_RETRY) as c:
            sub = c.frames(topic, timeout=15)
            assert next(sub).payload == b"before"
            assert given == [short]
            time.sleep(until_expired(short))  # the short token expires under the stream
            pub.publish(b"after", 2, topic=topic, timeout=10)
            frame = next(sub)
            assert (frame.payload, frame.offset) == (b"after", 1)
            assert given == [short, long] and sub.reconnects == 1  # once per reconnect
            sub.close()
        with Client(srv.address, token=lambda: short, retry=TEST_RETRY) as c:
            with pytest.raises(Unauthenticated):
                next(c.frames(topic, timeout=15))  # already expired, nothing fresher


def test_an_aio_token_provider_keeps_a_subscription_going_past_token_expiry(
    make_server, framecast_bin: Path, secret: Path, topic: str  # type: ignore[no-untyped-def]
) -> None:
    srv = make_server("--auth-jwt-secret-file", str(secret))
    publisher_token, short, long, provider, given = expiring_tokens(framecast_bin, secret)

    async def main() -> None:
        async with framecast_aio.Client(srv.address, token=publisher_token) as pub:
            await pub.publish(b"before", 1, topic=topic, timeout=10)
            async with framecast_aio.Client(srv.address, token=provider, retry=TEST_RETRY) as c:
                sub = c.frames(topic, timeout=15)
                assert (await anext(sub)).payload == b"before"
                await asyncio.sleep(until_expired(short))
                await pub.publish(b"after", 2, topic=topic, timeout=10)
                frame = await asyncio.wait_for(anext(sub), 10)
                assert (frame.payload, frame.offset) == (b"after", 1)
                assert given == [short, long] and sub.reconnects == 1
                await sub.aclose()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_server_certificate_the_client_refuses_is_not_retried(
    make_server, pki: Pki, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # The client does not trust the server's CA: TlsRefused (an Unavailable) at once, not
    # after the whole retry budget; publish, coalesced publish, subscription and asyncio.
    from framecast import TlsRefused

    srv = make_server(*pki.serve_args())
    patient = RetryPolicy(initial=0.05, max_delay=0.5, max_elapsed=20.0)
    other = trustme.CA().cert_pem.bytes()
    address = f"https://127.0.0.1:{srv.port}"  # one IP: grpc reports its handshake error
    for coalesce in (False, True):
        with Client(address, retry=patient, ca_cert=other, coalesce=coalesce) as c:
            t0 = time.monotonic()
            with pytest.raises(TlsRefused) as info:
                c.publish(b"x", 1, topic=topic, timeout=30)
            assert time.monotonic() - t0 < 3.0 and not info.value.transient
            with pytest.raises(TlsRefused):
                next(c.frames(topic, timeout=30))

    async def aio() -> None:
        async with framecast_aio.Client(address, retry=patient, ca_cert=other) as c:
            with pytest.raises(TlsRefused):
                await c.publish(b"x", 1, topic=topic, timeout=30)

    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(aio(), 30))
    assert time.monotonic() - t0 < 3.0
    # The right CA still works.
    with Client(address, retry=TEST_RETRY, ca_cert=str(pki.ca_path)) as c:
        assert c.publish(b"x", 1, topic=topic, timeout=10).offset == 0


def test_a_refused_certificate_on_one_of_several_addresses_fails_over(
    make_server, pki: Pki, tmp_path: Path, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # Two addresses: the first server's certificate comes from a CA the client does not
    # trust, the second's from the one it trusts. The refusal counts as that node failing:
    # publish (plain and coalesced), subscribe and asyncio go on to the good node at once.
    # When every address refuses, TlsRefused, at once.
    from framecast import TlsRefused

    other = trustme.CA()
    cert = other.issue_cert("localhost", "127.0.0.1")
    bad_cert, bad_key = tmp_path / "bad.pem", tmp_path / "bad-key.pem"
    cert.private_key_pem.write_to_path(str(bad_key))
    with bad_cert.open("wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    bad = make_server("--tls-cert", str(bad_cert), "--tls-key", str(bad_key))
    bad2 = make_server("--tls-cert", str(bad_cert), "--tls-key", str(bad_key))
    good = make_server(*pki.serve_args())
    patient = RetryPolicy(initial=0.05, max_delay=0.5, max_elapsed=20.0)
    both = [f"https://127.0.0.1:{bad.port}", f"https://127.0.0.1:{good.port}"]
    ca = str(pki.ca_path)
    for coalesce in (False, True):
        with Client(both, retry=patient, ca_cert=ca, coalesce=coalesce) as c:
            t0 = time.monotonic()
            c.publish(b"x", 1, topic=topic, timeout=30)
            assert time.monotonic() - t0 < 3.0
    with Client(both, retry=patient, ca_cert=ca) as c:
        sub = c.frames(topic, timeout=30)
        assert next(sub).payload == b"x"
        assert sub.address == f"127.0.0.1:{good.port}"
        sub.close()

    async def aio() -> None:
        async with framecast_aio.Client(both, retry=patient, ca_cert=ca) as c:
            assert (await c.publish(b"y", 2, topic=topic, timeout=30)).offset == 2
            async with c.frames(topic, timeout=30) as sub:
                assert (await anext(sub)).payload == b"x"

    t0 = time.monotonic()
    asyncio.run(asyncio.wait_for(aio(), 30))
    assert time.monotonic() - t0 < 3.0

    refusing = [f"https://127.0.0.1:{bad.port}", f"https://127.0.0.1:{bad2.port}"]
    for coalesce in (False, True):
        with Client(refusing, retry=patient, ca_cert=ca, coalesce=coalesce) as c:
            t0 = time.monotonic()
            with pytest.raises(TlsRefused):
                c.publish(b"x", 1, topic=topic, timeout=30)
            with pytest.raises(TlsRefused):
                next(c.frames(topic, timeout=30))
            assert time.monotonic() - t0 < 3.0


class _ProviderFailed(Exception):
    pass


def test_a_token_provider_that_raises_surfaces_its_error_as_is(
    server: ServerProcess, topic: str
) -> None:
    # The provider is called for every call and reconnect; its own exception is raised by
    # the call, unchanged (not retried, not wrapped).
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        raise _ProviderFailed("no token today")

    with Client(server.address, token=provider, retry=TEST_RETRY) as c:
        with pytest.raises(_ProviderFailed):
            c.publish(b"x", 1, topic=topic, timeout=5)
        with pytest.raises(_ProviderFailed):
            next(c.frames(topic, timeout=5))

    async def aio() -> None:
        async with framecast_aio.Client(server.address, token=provider, retry=TEST_RETRY) as c:
            with pytest.raises(_ProviderFailed):
                await c.publish(b"x", 1, topic=topic, timeout=5)
            with pytest.raises(_ProviderFailed):
                await anext(c.frames(topic, timeout=5))

    asyncio.run(asyncio.wait_for(aio(), 20))
    assert len(calls) == 4


def mint_as(binary: Path, secret: Path, subject: str, *perms: str) -> str:
    """A token from ``framecast token`` for ``subject``."""
    out = subprocess.run(
        [str(binary), "token", "--secret-file", str(secret), "--subject", subject, *perms],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return out.stdout.decode().strip()


def fresh_short_tokens(framecast_bin: Path, secret: Path) -> tuple[Callable[[], str], list[str]]:
    """A provider minting a fresh publisher's token that expires in 2 s at each call, and the
    tokens it gave."""
    given: list[str] = []

    def provider() -> str:
        token = mint_as(framecast_bin, secret, f"py-{len(given)}", "--publish", ">", "--ttl", "2s")
        given.append(token)
        return token

    return provider, given


#: How long the renewal tests keep publishing: across at least two expiries of the 2 s
#: tokens (which the server holds valid up to 3 s), with enough callers that frames are
#: always waiting for their acks when one expires.
RENEWAL_SECONDS = 7.5
RENEWAL_WORKERS = 16


def assert_stored_exactly_once(
    address: str, token: str, topic: str, acks: list[tuple[int, bytes, Ack]]
) -> None:
    """Every acknowledged frame is in the topic once, at its ack's offset, and nothing else."""
    offsets = [a.offset for _, _, a in acks]
    assert len(set(offsets)) == len(offsets), "two calls got the same offset"
    with Client(address, token=token, retry=TEST_RETRY) as reader:
        info = {t.name: t for t in reader.list_topics(timeout=10)}[topic]
        assert info.frames == len(acks), "a doubled or stray frame is stored"
        seen: dict[bytes, list[tuple[int, int]]] = {}
        with reader.frames(topic, 0, timeout=30) as sub:
            for _, f in zip(range(len(acks)), sub):
                seen.setdefault(f.payload, []).append((f.offset, f.seq_no))
    for seq_no, payload, ack in acks:
        assert seen.get(payload) == [(ack.offset, seq_no)], (payload, ack)
    assert sorted(offsets) == list(range(len(acks))), "a gap in the topic"


def test_coalesced_publishes_go_on_past_token_expiry_with_a_provider(
    make_server, framecast_bin: Path, secret: Path, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # token= a function and coalesce=True: the shared PublishStream ends UNAUTHENTICATED
    # when its token expires; the client takes a fresh token and re-sends every
    # unacknowledged frame with its key on a new stream. No call fails, none is stored twice.
    srv = make_server("--auth-jwt-secret-file", str(secret))
    provider, given = fresh_short_tokens(framecast_bin, secret)
    reader_token = mint(framecast_bin, secret, "--publish", ">", "--subscribe", ">")

    def publish_for_a_while(c: Client) -> list[tuple[int, bytes, Ack]]:
        def worker(w: int) -> list[tuple[int, bytes, Ack]]:
            out = []
            end = time.monotonic() + RENEWAL_SECONDS
            i = 0
            while time.monotonic() < end:
                seq_no, payload = w * 100_000 + i, f"w{w}-{i}".encode()
                out.append((seq_no, payload, c.publish(payload, seq_no, topic, timeout=15)))
                i += 1
            return out

        with ThreadPoolExecutor(RENEWAL_WORKERS) as pool:
            return [a for r in pool.map(worker, range(RENEWAL_WORKERS)) for a in r]

    with Client(srv.address, token=provider, retry=TEST_RETRY, coalesce=True) as c:
        acks = run_bounded(lambda: publish_for_a_while(c), 60)
    assert len(given) >= 3, f"the token expired only {len(given) - 1} times under the stream"
    assert acks and not any(a.duplicate for _, _, a in acks)
    assert_stored_exactly_once(srv.address, reader_token, topic, acks)


def test_aio_coalesced_publishes_go_on_past_token_expiry_with_a_provider(
    make_server, framecast_bin: Path, secret: Path, topic: str  # type: ignore[no-untyped-def]
) -> None:
    srv = make_server("--auth-jwt-secret-file", str(secret))
    provider, given = fresh_short_tokens(framecast_bin, secret)
    reader_token = mint(framecast_bin, secret, "--publish", ">", "--subscribe", ">")

    async def main() -> list[tuple[int, bytes, Ack]]:
        async with framecast_aio.Client(
            srv.address, token=provider, retry=TEST_RETRY, coalesce=True
        ) as c:

            async def worker(w: int) -> list[tuple[int, bytes, Ack]]:
                out = []
                end = time.monotonic() + RENEWAL_SECONDS
                i = 0
                while time.monotonic() < end:
                    seq_no, payload = w * 100_000 + i, f"w{w}-{i}".encode()
                    ack = await c.publish(payload, seq_no, topic, timeout=15)
                    out.append((seq_no, payload, ack))
                    i += 1
                return out

            done = await asyncio.gather(*(worker(w) for w in range(RENEWAL_WORKERS)))
            return [a for r in done for a in r]

    acks = asyncio.run(asyncio.wait_for(main(), 60))
    assert len(given) >= 3, f"the token expired only {len(given) - 1} times under the stream"
    assert acks and not any(a.duplicate for _, _, a in acks)
    assert_stored_exactly_once(srv.address, reader_token, topic, acks)


def test_coalesced_publish_with_an_expired_token_and_nothing_fresher_fails(
    make_server, framecast_bin: Path, secret: Path, tmp_path: Path, topic: str  # type: ignore[no-untyped-def]
) -> None:
    # A string token has no fresher one: a coalesced stream whose token expires fails the
    # waiting call with Unauthenticated, as does a provider that gives the expired token
    # again, or fresh tokens the server refuses (the second refusal in a row is final).
    srv = make_server("--auth-jwt-secret-file", str(secret))
    short = mint(framecast_bin, secret, "--publish", ">", "--ttl", "2s")
    reader_token = mint(framecast_bin, secret, "--publish", ">", "--subscribe", ">")

    def until_refused(c: Client) -> tuple[list[tuple[int, bytes, Ack]], list[BaseException]]:
        acks: list[tuple[int, bytes, Ack]] = []
        refused: list[BaseException] = []
        lock = threading.Lock()

        def worker(w: int) -> None:
            i = 0
            while True:
                seq_no, payload = w * 100_000 + i, f"w{w}-{i}".encode()
                try:
                    ack = c.publish(payload, seq_no, topic, timeout=15)
                except Unauthenticated as e:
                    with lock:
                        refused.append(e)
                    return
                with lock:
                    acks.append((seq_no, payload, ack))
                i += 1
                time.sleep(0.002)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(worker, range(4)))
        return acks, refused

    with Client(srv.address, token=short, retry=TEST_RETRY, coalesce=True) as c:
        acks, refused = run_bounded(lambda: until_refused(c), 30)
    assert acks and len(refused) == 4
    assert_stored_exactly_once(srv.address, reader_token, topic, acks)

    with Client(srv.address, token=lambda: short, retry=TEST_RETRY, coalesce=True) as c:
        started = time.monotonic()
        with pytest.raises(Unauthenticated):
            c.publish(b"late", 1, topic, timeout=15)
        assert time.monotonic() - started < 5

    other = tmp_path / "other-secret"
    other.write_bytes(b"another-secret-long-enough-for-hs256\n")
    refused_tokens, refused_given = fresh_short_tokens(framecast_bin, other)
    with Client(srv.address, token=refused_tokens, retry=TEST_RETRY, coalesce=True) as c:
        started = time.monotonic()
        with pytest.raises(Unauthenticated):
            c.publish(b"never", 1, topic, timeout=15)
        assert time.monotonic() - started < 5
        assert len(refused_given) == 2  # the first token, then one fresh one: final

    async def aio() -> None:
        async with framecast_aio.Client(
            srv.address, token=lambda: short, retry=TEST_RETRY, coalesce=True
        ) as c:
            with pytest.raises(Unauthenticated):
                await c.publish(b"late", 1, topic, timeout=15)
        async with framecast_aio.Client(
            srv.address, token=refused_tokens, retry=TEST_RETRY, coalesce=True
        ) as c:
            with pytest.raises(Unauthenticated):
                await c.publish(b"never", 1, topic, timeout=15)

    asyncio.run(asyncio.wait_for(aio(), 20))
    assert len(refused_given) == 4
