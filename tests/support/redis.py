"""A private, disposable ``redis-server`` for tests: loopback only, no persistence.

``RedisServer`` starts the Debian package's ``redis-server`` on 127.0.0.1 and a free
high port, in its own directory, with no disk persistence (``save ""``, no AOF), and
returns from :meth:`~RedisServer.start` once it answers PING.  It can be stopped,
killed (SIGKILL: the outage tests) and started again on the same port (a restart
loses every key, as a restarted cache without persistence does).  Every server
started here is stopped at interpreter exit at the latest.  The tests never use a
system Redis.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .net import LOOPBACK, free_port, wait_until

_LIVE: set[RedisServer] = set()


def redis_server_binary() -> str:
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        raise RuntimeError("redis-server is not installed: run scripts/install-system-deps.sh "
                           "(Debian package redis-server)")
    return path


class RedisServer:
    def __init__(self, workdir: str | Path | None = None, *, port: int | None = None,
                 password: str | None = None) -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="hdm-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", LOOPBACK,
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--daemonize", "no", "--protected-mode", "yes", "--logfile",
                str(self.log_path), "--databases", "1"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _LIVE.add(self)
        wait_until(lambda: self._answers() or self._died(), timeout,
                   f"redis-server on port {self.port}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                               + self.log_tail())
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def _answers(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, keys and all."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        # the port must be free before a restart binds it again
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self._answers():
            time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) and never answers."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        self.stop()
        _LIVE.discard(self)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


# --- fixtures: ``from support.redis import redis_server, state_backend`` in a test module

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; tests keep apart by key prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


class StateBackend:
    """Makes the store of one backend: ``make(path, ...)`` is a fresh memory each call
    (a new key prefix with Redis); ``make(path, like=other)`` shares ``other``'s memory
    (a second MX host: its own SQLite file, the same Redis keys)."""

    def __init__(self, name: str, server: RedisServer | None = None) -> None:
        self.name = name
        self.server = server

    def make(self, path: str | Path, *, window: float = 72 * 3600, similarity: float = 0.8,
             clock: Callable[[], float] = time.time, like: Any = None,
             on_error: str = "accept", timeout: float = 0.5) -> Any:
        from helpdesk_milter.redis_store import RedisStore
        from helpdesk_milter.store import SQLiteStore
        local = SQLiteStore(path, window=window, similarity=similarity, clock=clock)
        if self.name == "sqlite":
            return local
        assert self.server is not None
        prefix = like.prefix if like is not None else f"t{uuid.uuid4().hex[:12]}:"
        return RedisStore(self.server.url, local=local, window=window, similarity=similarity,
                          key_prefix=prefix, clock=clock, on_error=on_error,
                          timeout=timeout, connect_timeout=timeout)


@pytest.fixture(params=["sqlite", "redis"])
def state_backend(request: pytest.FixtureRequest) -> StateBackend:
    """Each test that takes it runs once per backend."""
    if request.param == "redis":
        return StateBackend("redis", request.getfixturevalue("redis_server"))
    return StateBackend("sqlite")
