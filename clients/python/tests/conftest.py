"""Fixtures: the real ``framecast`` server binary, started on loopback with a temp data dir.

The binary comes from ``$FRAMECAST_BIN`` (default: ``<repo>/target/debug/framecast``; build
it with ``cargo build --bin framecast``). Every wait here is bounded.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from framecast import Client, RetryPolicy

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO_ROOT / "target" / "debug" / "framecast"
START_TIMEOUT = 20.0


def server_binary() -> Path:
    """The server binary to test against."""
    path = Path(os.environ.get("FRAMECAST_BIN", DEFAULT_BIN))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(
            f"framecast server binary not found at {path}: build it with "
            "`cargo build --bin framecast` or set FRAMECAST_BIN",
            pytrace=False,
        )
    return path


_NEXT_PORT = itertools.count()


def free_port() -> int:
    """A loopback port that was free a moment ago, below the kernel's ephemeral range
    (32768 and up): servers are restarted on theirs, and an outgoing connection (a
    client's, etcd's) could take one from that range while its server is down."""
    start = os.getpid() * 7919
    for _ in range(12_000):
        port = 20_000 + (start + next(_NEXT_PORT) * 13) % 12_000
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port in 20000..32000")


class ServerProcess:
    """One ``framecast serve`` process over a data dir; can be killed and restarted.

    With ``fixed_port`` it listens on a port chosen once (so clients keep their address
    across restarts); otherwise on ``127.0.0.1:0``, and the port changes on restart. With
    ``port`` it listens on that port, never another (a cluster node advertises it).
    """

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        *,
        fixed_port: bool = False,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.fixed_port = fixed_port or port is not None
        self.pinned = port is not None
        self.port: int | None = port
        #: The HTTP door's port (``http_addr=`` of the ``listening`` line); None if it is off.
        self.http_port: int | None = None
        self.args = list(args or [])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        self.starts = 0

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the running server."""
        assert self.port is not None
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server's HTTP door."""
        assert self.http_port is not None, "the HTTP door is off"
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        """Starts the server and waits (bounded) for its ``listening addr=`` line. With a
        fixed port, retries while that port is taken (keeping it once chosen, since
        clients hold the address); before the first start a taken port is replaced."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.fixed_port and self.port is None:
                self.port = free_port()
            listen = f"127.0.0.1:{self.port if self.fixed_port else 0}"
            ok, why = self._try_start(listen, deadline)
            if ok:
                self.starts += 1
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"server did not start on {listen}: {why}\n{self.tail()}")
            if self.fixed_port and self.starts == 0 and not self.pinned:
                self.port = None  # never used by a client yet: pick another
            time.sleep(0.1)

    def _try_start(self, listen: str, deadline: float) -> tuple[bool, str]:
        cmd = [
            str(self.binary),
            "serve",
            "--listen",
            listen,
            *([] if "--http-listen" in self.args else ["--http-listen", "127.0.0.1:0"]),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        found: list[int] = []
        http_found: list[int] = []
        ready = threading.Event()

        def drain() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self.log.append(line)
                if not found and "listening addr=" in line:
                    addr = line.split("listening addr=", 1)[1].split()[0]
                    if "http_addr=" in line:
                        http_addr = line.split("http_addr=", 1)[1].split()[0]
                        if http_addr.rsplit(":", 1)[-1].isdigit():
                            http_found.append(int(http_addr.rsplit(":", 1)[1]))
                    found.append(int(addr.rsplit(":", 1)[1]))
                    ready.set()
            ready.set()  # the process ended

        threading.Thread(target=drain, daemon=True, name="framecast-server-log").start()
        ready.wait(timeout=max(0.1, deadline - time.monotonic()))
        if found:
            self.proc = proc
            self.port = found[0]
            self.http_port = http_found[0] if http_found else None
            return True, ""
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        return False, f"exit code {proc.returncode}"

    def kill(self) -> None:
        """``kill -9``: no graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """``kill -9``, then start again over the same data dir (and port, if fixed)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Graceful stop (SIGTERM), bounded; SIGKILL if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def tail(self, n: int = 40) -> str:
        """The server's last log lines."""
        return "\n".join(self.log[-n:])


@pytest.fixture(scope="session")
def framecast_bin() -> Path:
    return server_binary()


@pytest.fixture
def server(framecast_bin: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on ``127.0.0.1:0`` with a fresh data dir."""
    srv = ServerProcess(framecast_bin, tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(framecast_bin: Path, tmp_path: Path) -> Iterator[object]:
    """A factory: ``make_server(*args, fixed_port=False)`` starts a server with extra
    command-line arguments and a data dir of its own; all are killed at the end."""
    started: list[ServerProcess] = []

    def make(*args: str, fixed_port: bool = False) -> ServerProcess:
        srv = ServerProcess(
            framecast_bin, tmp_path / f"data{len(started)}", fixed_port=fixed_port, args=list(args)
        )
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.kill()


@pytest.fixture
def restartable_server(framecast_bin: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on a fixed loopback port, for kill -9 / restart tests."""
    srv = ServerProcess(
        framecast_bin, tmp_path / "data", fixed_port=True, args=["--fsync", "always"]
    )
    srv.start()
    yield srv
    srv.kill()


#: Retries for tests: quick backoff, and a budget well inside the tests' own bounds.
TEST_RETRY = RetryPolicy(initial=0.02, max_delay=0.5, max_elapsed=20.0)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Client]:
    with Client(server.address, retry=TEST_RETRY) as c:
        yield c


@pytest.fixture
def topic() -> str:
    """A topic name unique to the test."""
    return f"t-{uuid.uuid4().hex[:12]}"


def run_bounded(fn, timeout: float):  # type: ignore[no-untyped-def]
    """Runs ``fn`` in a thread and returns its result; fails the test if it takes longer
    than ``timeout`` seconds (the thread is a daemon, and tests close their clients, which
    ends whatever it was blocked on)."""
    result: list[object] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {timeout} s")
    if error:
        raise error[0]
    return result[0]
