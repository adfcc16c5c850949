"""Loopback networking helpers shared by the harness: free ports, readiness polls.

Everything here is bound to 127.0.0.1. Nothing sleeps for a fixed time: every wait polls
with a deadline and says what it waited for when it gives up.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

LOOPBACK = "127.0.0.1"
# Below the kernel's ephemeral range (32768-60999 by default), so that no outgoing
# connection can grab the port between the check and the bind.
PORT_RANGE = (20000, 32767)

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A poll gave up. An AssertionError so that pytest shows it as a test failure."""


def wait_until(predicate: Callable[[], T | None], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds. The interval
    grows from ``interval`` to 0.2 s so that short waits stay short and long waits cheap.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if nothing listens on host:port and it can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return not tcp_listening(port, host)


def free_port(exclude: set[int] | frozenset[int] = frozenset(),
              host: str = LOOPBACK) -> int:
    """A random high TCP port on ``host`` that is free at the time of the call.

    Random (not 0/kernel-chosen) so that a port can be reused after a restart and two
    concurrent sessions rarely collide; checked by binding it and by /proc/net/tcp.
    """
    rng = random.SystemRandom()
    low, high = PORT_RANGE
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if ephemeral_low - 1 - low >= 1000:
            high = min(high, ephemeral_low - 1)
    for _ in range(200):
        port = rng.randint(low, high)
        if port not in exclude and port_is_free(port, host):
            return port
    raise RuntimeError(f"no free TCP port found on {host} in {low}-{high}")


def tcp_listening(port: int, host: str = LOOPBACK) -> bool:
    """True if a socket is in LISTEN state on host:port, per /proc/net/tcp.

    Unlike connecting, this does not open a session: a Postfix smtpd (and its milters)
    never sees a probe connection.
    """
    want_port = f"{port:04X}"
    want_hosts = {_proc_ipv4(host), "00000000"}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return tcp_accepts(port, host)
    for line in lines:
        fields = line.split()
        local, state = fields[1], fields[3]
        addr, _, lport = local.partition(":")
        if state == "0A" and lport == want_port and addr in want_hosts:
            return True
    return False


def tcp_accepts(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """True if a TCP connection to host:port succeeds (the connection is closed at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unix_accepts(path: str | Path, timeout: float = 1.0) -> bool:
    """True if a connection to the unix stream socket ``path`` succeeds (closed at once)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _proc_ipv4(host: str) -> str:
    packed = socket.inet_aton(host)
    return f"{int.from_bytes(packed, 'little'):08X}"


def assert_loopback(host: str) -> None:
    """Refuse to bind or connect anywhere but loopback."""
    with contextlib.suppress(OSError):
        if socket.inet_aton(host)[0] == 127:
            return
    if host not in ("localhost", "::1"):
        raise ValueError(f"loopback only, got {host!r}")
