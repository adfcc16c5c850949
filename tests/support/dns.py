"""A real DNS server for tests: Debian's ``dnsmasq`` on 127.0.0.1:<free port>.

It serves the TXT records a test gives it (DKIM keys, ARC keys) and answers NXDOMAIN
for every other name (``--local=/#/``: nothing is ever forwarded, and there is no
upstream). Every query is logged, so a test can count how many reached the server.

- :class:`DnsServer` -- ``start()``/``stop()`` or a ``with`` block; ``add_txt()`` adds
  records and restarts dnsmasq on the same port (dnsmasq rereads TXT records only at
  start; a restart takes a few ms); ``resolver`` is the ``dns.resolver`` config value
  (``"127.0.0.1:PORT"``); ``query_count(name)`` counts the queries seen.
- :func:`blackhole_resolver` -- a UDP socket that reads nothing and answers nothing:
  lookups through it time out (the "slow DNS" case).
- :func:`refusing_resolver` -- a port where nothing listens: lookups fail at once
  (ICMP port unreachable), the "DNS server down" case.

Everything binds 127.0.0.1 only; nothing sleeps a fixed time; the process is stopped
by ``stop()``, by the ``with`` block, and at interpreter exit if a test forgot.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.resolver

from .net import LOOPBACK, WaitTimeout, free_port, tcp_listening, wait_until
from .procs import LogFile, kill_orphans

DNSMASQ = "/usr/sbin/dnsmasq"
READY_NAME = "_ready.helpdesk-dns.test"
TXT_STRING_MAX = 255          # one <character-string> of a TXT record (RFC 1035 3.3)

_LIVE: set[DnsServer] = set()
# One file per running dnsmasq, naming the test process that owns it: a later run kills
# the servers of a test process that died without stopping them (SIGKILL, OOM).
OWNERS_DIR = Path(tempfile.gettempdir()) / "helpdesk-test-dnsmasq"


class DnsServerError(RuntimeError):
    """dnsmasq is missing, refused to start, or did not answer in time."""


def split_txt(value: str, size: int = TXT_STRING_MAX) -> list[str]:
    """Split a TXT value into <= ``size``-character strings (a 2048-bit DKIM key does
    not fit in one); resolvers join them back."""
    return [value[i:i + size] for i in range(0, len(value), size)] or [""]


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


class DnsServer(LogFile):
    """dnsmasq serving ``records`` (name -> TXT value) on 127.0.0.1:``port``.

    ``workdir`` holds the generated config, the pid file and ``dnsmasq.log`` (its
    stderr: start-up messages and one ``query[TXT] NAME from 127.0.0.1`` line per query).
    """

    log_label = "dnsmasq"

    def __init__(self, workdir: str | Path | None = None, *,
                 records: dict[str, str] | None = None, port: int | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hd-dns-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, str] = dict(records or {})
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "dnsmasq.log"
        self.conf_path = self.workdir / "dnsmasq.conf"

    # --- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def resolver(self) -> str:
        """The ``dns.resolver`` config value pointing at this server."""
        if not self.port:
            raise DnsServerError("the DNS server was never started")
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 10.0) -> DnsServer:
        """Start dnsmasq and return once it answers a query. A port is chosen on the
        first start and kept across restarts."""
        if self.running:
            return self
        if not Path(DNSMASQ).exists():
            raise DnsServerError(f"{DNSMASQ} not found: install the dnsmasq-base package "
                                 f"(scripts/install-system-deps.sh)")
        # A fresh port may be taken between the check and dnsmasq's bind: retry with
        # another one. A restart keeps its port (resolvers already point at it).
        retries = 0 if self.port else 4
        if not self.port:
            self.port = self._pick_port()
        while True:
            try:
                self._spawn(timeout)
                return self
            except DnsServerError:
                if not retries or "Address already in use" not in self.log_tail():
                    raise
                retries -= 1
                self.port = self._pick_port()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        _LIVE.discard(self)
        with contextlib.suppress(OSError):
            (OWNERS_DIR / f"{proc.pid}.json").unlink()
        self.proc = None
        return proc.returncode

    def restart(self, timeout: float = 10.0) -> DnsServer:
        """Stop and start on the same port (re-reads the records)."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop, and remove the work directory if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- records ------------------------------------------------------------

    def add_txt(self, name: str, value: str, *, restart: bool = True) -> None:
        """Serve ``value`` as the TXT record of ``name`` (replacing an earlier one).
        With ``restart`` (the default) a running server serves it at once."""
        self.add_records({name: value}, restart=restart)

    def add_records(self, records: dict[str, str], *, restart: bool = True) -> None:
        """Several records, one restart."""
        for name, value in records.items():
            _check_record(name, value)
        self.records.update({n.rstrip(".").lower(): v for n, v in records.items()})
        if restart and self.running:
            self.restart()

    def remove(self, names: Iterable[str], *, restart: bool = True) -> None:
        for name in names:
            self.records.pop(name.rstrip(".").lower(), None)
        if restart and self.running:
            self.restart()

    # --- queries seen ---------------------------------------------------------

    def queries(self, since: int = 0) -> list[tuple[str, str]]:
        """``(qtype, name)`` of every query logged after byte ``since`` of the log
        (the readiness probes excluded)."""
        out = []
        for m in re.finditer(r"query\[(\w+)\] (\S+) from ", self.log_text(since)):
            if m.group(2).lower() != READY_NAME:
                out.append((m.group(1), m.group(2).lower().rstrip(".")))
        return out

    def query_count(self, name: str | None = None, qtype: str = "TXT",
                    since: int = 0) -> int:
        """How many ``qtype`` queries (for ``name``, or any) reached the server."""
        want = name.lower().rstrip(".") if name else None
        return sum(1 for t, n in self.queries(since) if t == qtype
                   and (want is None or n == want))

    # --- internals ------------------------------------------------------------

    def _pick_port(self) -> int:
        exclude: set[int] = set()
        for _ in range(50):
            port = free_port(exclude)
            if _udp_port_free(port):
                return port
            exclude.add(port)
        raise DnsServerError("no port free for both TCP and UDP on 127.0.0.1")

    def _write_conf(self) -> None:
        lines = ["# generated by tests/support/dns.py",
                 f'txt-record={READY_NAME},"ready"']
        for name, value in sorted(self.records.items()):
            strings = ",".join(f'"{s}"' for s in split_txt(value))
            lines.append(f"txt-record={name},{strings}")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        return [
            DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--no-poll",
            f"--port={self.port}", f"--listen-address={LOOPBACK}", "--bind-interfaces",
            f"--conf-file={self.conf_path}", f"--pid-file={self.workdir / 'dnsmasq.pid'}",
            "--local=/#/",            # authoritative "no" (NXDOMAIN) for unknown names
            "--cache-size=0", "--log-queries", "--log-facility=-",
        ]

    def _spawn(self, timeout: float) -> None:
        sweep_stale_servers()
        self._write_conf()
        argv = self.argv()
        with self.log_path.open("ab") as log:
            log.write(f"--- start port {self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, start_new_session=True)
        _LIVE.add(self)
        OWNERS_DIR.mkdir(exist_ok=True)
        (OWNERS_DIR / f"{self.proc.pid}.json").write_text(json.dumps(
            {"pid": self.proc.pid, "owner_pid": os.getpid(), "argv": argv}))
        query = dns.message.make_query(READY_NAME, "TXT")

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise DnsServerError(
                    f"dnsmasq exited with status {self.proc.returncode} at start\n"
                    f"--- {self.log_path} (tail) ---\n{self.log_tail()}")
            # dnsmasq binds its TCP and UDP sockets together; /proc/net/tcp tells
            # without sending anything, then one UDP exchange proves it answers.
            if not tcp_listening(self.port):
                return False
            try:
                reply = dns.query.udp(query, LOOPBACK, timeout=0.5, port=self.port)
            except (dns.exception.DNSException, OSError):
                return False
            return bool(reply.answer)

        try:
            wait_until(ready, timeout, f"dnsmasq to answer on {self.resolver}")
        except WaitTimeout as exc:
            self.stop()
            raise DnsServerError(f"{exc}\n--- {self.log_path} (tail) ---\n"
                                 f"{self.log_tail()}") from None
        except BaseException:
            self.stop()
            raise


def _check_record(name: str, value: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"not a DNS name dnsmasq can take: {name!r}")
    if any(c in value for c in '"\\\n\r') or not value.isprintable():
        raise ValueError("TXT value must be printable and have no quote or backslash")


def sweep_stale_servers() -> int:
    """SIGKILL the dnsmasq processes started by test processes that no longer exist;
    returns how many were killed."""
    return kill_orphans(OWNERS_DIR.glob("*.json"))


@contextlib.contextmanager
def blackhole_resolver() -> Iterator[str]:
    """A ``dns.resolver`` value (``"127.0.0.1:PORT"``) whose server receives queries and
    never answers: every lookup through it runs into its timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        yield f"{LOOPBACK}:{s.getsockname()[1]}"


@contextlib.contextmanager
def refusing_resolver() -> Iterator[str]:
    """A ``dns.resolver`` value for a port where nothing listens (the kernel answers
    "port unreachable"): every lookup fails at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    yield f"{LOOPBACK}:{port}"


def wait_for_answer(resolver: str, name: str, timeout: float = 5.0) -> bytes:
    """Poll until ``name`` has a TXT record at ``resolver``; return it (strings joined)."""
    host, _, port = resolver.partition(":")
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = int(port or 53)

    def answer() -> bytes | None:
        try:
            rrset = res.resolve(name, "TXT", lifetime=0.5).rrset
        except dns.exception.DNSException:
            return None
        return b"".join(next(iter(rrset)).strings) if rrset else None

    return wait_until(answer, timeout, f"a TXT record for {name} at {resolver}")


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(timeout=2.0)
