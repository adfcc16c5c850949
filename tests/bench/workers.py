"""Load generators that run in worker processes (one per concurrent connection).

Processes, not threads: a Python client shares the two cores with Postfix and the
milter anyway, but threads would also share one GIL and serialise the clients.
Every job waits until the same wall-clock instant ``start_at`` before it sends, so
the parent can time the whole batch from that instant (process start-up excluded).

- :func:`smtp_job`: a minimal SMTP client (no PIPELINING, as most MUAs/MTAs send):
  EHLO, then per message MAIL/RCPT/DATA, ``per_connection`` messages per session,
  QUIT. Messages arrive already dot-stuffed (``stuff``), so the worker does no
  per-message work beyond socket calls.
- :func:`milter_job`: plays Postfix's side of the milter protocol with
  ``support.milterclient.MilterClient`` (one milter connection per message, as
  Postfix opens one per SMTP session) and records, per message, the time from
  sending end-of-message to the final reply: the latency the milter adds.

Loopback and unix sockets only.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from miltertest import constants as C

from support.milterclient import Action, MilterClient, Reply

LOOPBACK = "127.0.0.1"
HELO = "client.bench.invalid"

SmtpMessage = tuple[str, tuple[str, ...], bytes]                    # from, rcpts, stuffed data
MilterMessage = tuple[str, tuple[str, ...], list[tuple[str, bytes]], bytes]  # + headers, body


def init_worker() -> None:
    """Pool initializer: Ctrl-C goes to the parent, which terminates the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def stuff(raw: bytes) -> bytes:
    """SMTP DATA payload: leading dots doubled, CRLF at the end, then the final dot."""
    data = re.sub(rb"(?m)^\.", b"..", raw)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _wait_until(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


# --- SMTP ---------------------------------------------------------------------------

class SmtpError(Exception):
    pass


class _Smtp:
    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self, *expect: int) -> int:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise SmtpError("connection closed by the server")
            lines.append(line)
            if line[3:4] != b"-":
                break
        code = int(lines[-1][:3])
        if expect and code not in expect:
            text = b" / ".join(x.strip() for x in lines).decode("utf-8", "replace")
            raise SmtpError(text)
        return code

    def command(self, line: str, *expect: int) -> int:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply(*expect)

    def close(self) -> None:
        with contextlib.suppress(OSError, SmtpError, ValueError):
            self.command("QUIT")
        self.file.close()
        self.sock.close()


def smtp_job(port: int, messages: Sequence[SmtpMessage], per_connection: int,
             start_at: float, timeout: float = 120.0) -> dict[str, Any]:
    """Send ``messages`` to 127.0.0.1:``port``; returns counts and the first errors."""
    _wait_until(start_at)
    accepted = 0
    errors: list[str] = []
    n_errors = 0
    for first in range(0, len(messages), per_connection):
        batch = messages[first:first + per_connection]
        try:
            smtp = _Smtp(port, timeout)
        except OSError as exc:
            n_errors += len(batch)
            errors.append(f"connect: {exc}")
            continue
        try:
            smtp.reply(220)
            smtp.command(f"EHLO {HELO}", 250)
            for mail_from, rcpts, data in batch:
                try:
                    smtp.command(f"MAIL FROM:<{mail_from}>", 250)
                    for rcpt in rcpts:
                        smtp.command(f"RCPT TO:<{rcpt}>", 250, 251)
                    smtp.command("DATA", 354)
                    smtp.sock.sendall(data)
                    smtp.reply(250)
                    accepted += 1
                except SmtpError as exc:
                    n_errors += 1
                    errors.append(str(exc))
                    smtp.command("RSET")
        except (OSError, SmtpError) as exc:
            n_errors += 1
            errors.append(f"session: {exc}")
        finally:
            smtp.close()
    return {"accepted": accepted, "errors": n_errors, "first_errors": errors[:5],
            "end": time.time()}


# --- milter protocol ------------------------------------------------------------------

class TimedClient(MilterClient):
    """A MilterClient that times end-of-message: from sending EOM to the final reply."""

    eom_seconds = 0.0

    def eom(self, macros: Mapping[str, str | None] | None = None
            ) -> tuple[Reply, list[Action]]:
        t0 = time.perf_counter()
        try:
            return super().eom(macros)
        finally:
            self.eom_seconds = time.perf_counter() - t0


@dataclass
class MilterRun:
    latencies: list[float] = field(default_factory=list)    # EOM -> final reply, seconds
    walls: list[float] = field(default_factory=list)        # whole conversation, seconds
    replies: Counter[str] = field(default_factory=Counter)
    actions: int = 0
    errors: list[str] = field(default_factory=list)


def milter_job(socket_path: str, messages: Sequence[MilterMessage], start_at: float,
               timeout: float = 60.0, interval: float = 0.0) -> dict[str, Any]:
    """Run every message through the milter, one milter connection per message: as
    fast as replies come, or with ``interval``, message n at ``start_at + n * interval``
    (at once when the previous one ended later: the schedule never runs ahead)."""
    _wait_until(start_at)
    run = MilterRun()
    for n, (mail_from, rcpts, headers, body) in enumerate(messages):
        if interval:
            _wait_until(start_at + n * interval)
        t0 = time.perf_counter()
        try:
            client = TimedClient(f"unix:{socket_path}", timeout=timeout)
            with client:
                result = client.run_message(mail_from, rcpts, headers, body,
                                            queue_id=f"{n:05X}B{time.time_ns() % 10**6:06X}")
                run.latencies.append(client.eom_seconds)
        except (OSError, AssertionError) as exc:     # MilterProtocolError is an AssertionError
            run.errors.append(f"{type(exc).__name__}: {exc}")
            continue
        run.walls.append(time.perf_counter() - t0)
        run.replies[result.reply] += 1
        run.actions += len(result.actions)
    return {"latencies": run.latencies, "walls": run.walls, "replies": dict(run.replies),
            "actions": run.actions, "errors": len(run.errors),
            "first_errors": run.errors[:5], "end": time.time()}


def protocol_flags(protocol: int) -> list[str]:
    """Names of the SMFIP_* bits set in a negotiated protocol mask (NOHELO, NR_BODY...)."""
    return sorted(name.removeprefix("SMFIP_") for name in dir(C)
                  if name.startswith("SMFIP_") and protocol & getattr(C, name))


def negotiated(socket_path: str) -> tuple[int, int]:
    """(actions, protocol flags) the milter asks for when Postfix offers everything."""
    client = MilterClient(f"unix:{socket_path}", timeout=10)
    client.open()
    try:
        return client.actions, client.protocol
    finally:
        client.quit()
