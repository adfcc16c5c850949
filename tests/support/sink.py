"""Capture SMTP sink: the relay that the private Postfix delivers to.

An aiosmtpd server in a thread of the test process, listening on 127.0.0.1 only. Every
SMTP transaction it accepts becomes one :class:`Delivery`, kept in memory and also written
to ``outdir`` (``NNNNNN-xxxxxxxx.eml`` with the raw bytes, then ``.json`` with the envelope,
written last and atomically) so that a failing test leaves something to look at.

Guarantees:

- a delivery is recorded (memory and disk) *before* the sink answers 250, so once Postfix
  has removed a message from its queue, its deliveries are all visible here;
- ``find``/``wait_for``/``wait_count`` poll with a deadline and never sleep longer than
  needed; they raise :class:`~support.net.WaitTimeout` (an AssertionError) with what
  was seen so far;
- ``stop()`` closes the listener *and* drops open sessions (Postfix's cached
  connections included), so a stopped sink really is "relay down"; ``start()`` after
  ``stop()`` listens again on the same port.

One message to several recipients may arrive as one transaction or several (Postfix
splits at ``smtp_destination_recipient_limit``); ``find`` returns every delivery of a
Message-ID and ``Deliveries.rcpt_tos`` is the union of their recipients.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.parser
import email.policy
import errno
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from .net import LOOPBACK, WaitTimeout, assert_loopback, free_port, wait_until

SINK_HOSTNAME = "sink.lab.invalid"


def normalize_message_id(value: str) -> str:
    """``<abc@x>``, ``abc@x`` and `` <abc@x> `` all become ``abc@x`` (for comparisons)."""
    return value.strip().strip("<>").strip()


@dataclass(frozen=True)
class Delivery:
    """One SMTP transaction received by the sink."""

    seq: int                       # 1, 2, ... in arrival order (restarts keep counting)
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes                     # exactly as received, CRLF line ends, dot-unstuffed
    received_at: float
    mail_options: tuple[str, ...] = ()
    path: Path | None = None       # the .eml written for debugging

    @cached_property
    def message(self) -> email.message.EmailMessage:
        """The message parsed with ``email.policy.default`` (parsed once, on first use)."""
        msg = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        return msg

    @cached_property
    def headers(self) -> email.message.Message:
        """Only the header block, parsed (cheap even for a 50 MB message)."""
        return email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
            self.raw)

    @property
    def message_id(self) -> str | None:
        """The Message-ID without angle brackets, or None."""
        value = self.headers.get("Message-ID")
        return normalize_message_id(str(value)) if value is not None else None


class Deliveries(list[Delivery]):
    """The deliveries of one message (a list), with the envelope folded together."""

    @property
    def rcpt_tos(self) -> list[str]:
        """Sorted union of the recipients of all these deliveries (duplicates kept once;
        see :attr:`rcpt_list` to spot a recipient delivered twice)."""
        return sorted({r for d in self for r in d.rcpt_tos})

    @property
    def rcpt_list(self) -> list[str]:
        """Every recipient of every delivery, duplicates included, in arrival order."""
        return [r for d in self for r in d.rcpt_tos]

    @property
    def message(self) -> email.message.EmailMessage:
        """The first delivery's parsed message."""
        return self[0].message

    @property
    def mail_from(self) -> str:
        return self[0].mail_from


class _CaptureHandler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        delivery = self.sink._record(envelope)
        return f"250 2.0.0 Ok: captured {delivery.seq}"


@dataclass
class Sink:
    """Capture SMTP server on 127.0.0.1:``port`` writing to ``outdir``.

    ``port=0`` (the default) picks a free random high port at construction time (kept across
    restarts). Use as a context manager or call :meth:`start`/:meth:`stop`.
    """

    outdir: Path
    port: int = 0
    host: str = LOOPBACK
    data_size_limit: int = 200 * 1024 * 1024
    write_files: bool = True
    _deliveries: list[Delivery] = field(default_factory=list, init=False, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False,
                                       repr=False)
    _seq: Any = field(default_factory=lambda: itertools.count(1), init=False, repr=False)
    _controller: Controller | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        assert_loopback(self.host)
        self.outdir = Path(self.outdir)
        if not self.port:
            self.port = free_port()

    # --- lifecycle ------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self, timeout: float = 10.0) -> Sink:
        """Listen on host:port; returns when the server answers. Idempotent."""
        if self._controller is not None:
            return self
        self.outdir.mkdir(parents=True, exist_ok=True)
        holder: list[Controller] = []
        port = self.port

        def attempt() -> bool:
            # An explicit server hostname: without it aiosmtpd calls socket.getfqdn(),
            # which can stall for seconds on a machine without DNS.
            controller = Controller(
                _CaptureHandler(self), hostname=self.host, port=port,
                server_hostname=SINK_HOSTNAME, ready_timeout=timeout,
                data_size_limit=self.data_size_limit, enable_SMTPUTF8=True)
            if _try_start(controller):
                holder.append(controller)
                return True
            return False

        # The port may still be held for a moment by the previous run's sockets.
        wait_until(attempt, timeout, f"the sink to listen on {self.host}:{self.port}",
                   interval=0.05)
        controller = holder[0]
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening and drop open sessions. Idempotent; deliveries are kept."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    def restart(self) -> Sink:
        """``stop()`` then ``start()`` on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- recording ------------------------------------------------------------

    def _record(self, envelope: Envelope) -> Delivery:
        seq = next(self._seq)
        raw = envelope.original_content or b""
        path = None
        if self.write_files:
            base = f"{seq:06d}-{uuid.uuid4().hex[:8]}"
            path = self.outdir / f"{base}.eml"
            path.write_bytes(raw)
            meta = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                    "mail_options": list(envelope.mail_options), "size": len(raw),
                    "received_at": time.time(), "eml": path.name}
            tmp = self.outdir / f".{base}.json.tmp"
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, self.outdir / f"{base}.json")
        delivery = Delivery(seq=seq, mail_from=envelope.mail_from or "",
                            rcpt_tos=tuple(envelope.rcpt_tos), raw=raw,
                            received_at=time.time(),
                            mail_options=tuple(envelope.mail_options), path=path)
        with self._cond:
            self._deliveries.append(delivery)
            self._cond.notify_all()
        return delivery

    # --- queries --------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """A snapshot of everything received since the last :meth:`clear`."""
        with self._cond:
            return list(self._deliveries)

    def clear(self) -> None:
        """Forget the deliveries held in memory (files on disk stay)."""
        with self._cond:
            self._deliveries.clear()

    def wait_for(self, predicate: Callable[[list[Delivery]], Any],
                 timeout: float = 15.0, what: str = "a matching delivery") -> Any:
        """Wait until ``predicate(deliveries)`` is truthy and return its value.

        Wakes up on each new delivery (no polling interval to tune).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(list(self._deliveries))
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"sink: timed out after {timeout:g}s waiting for {what}; "
                        f"{self._summary_locked()}")
                self._cond.wait(remaining)

    def wait_count(self, n: int, timeout: float = 15.0) -> list[Delivery]:
        """Wait until at least ``n`` deliveries are held; return them all."""
        found: list[Delivery] = self.wait_for(lambda ds: ds if len(ds) >= n else None,
                                              timeout, f"{n} deliveries")
        return found

    def find(self, message_id: str, *, timeout: float = 15.0,
             rcpts: Iterable[str] | None = None, settle: float = 0.0) -> Deliveries:
        """All deliveries of the message with this Message-ID (brackets optional).

        Waits until at least one arrived, and, if ``rcpts`` is given, until the union of
        their recipients includes all of ``rcpts``. ``settle`` seconds are then waited
        for stragglers (a split delivery); prefer ``PostfixLab.wait_queue_empty()``
        before calling, which makes ``settle`` unnecessary.
        """
        want = normalize_message_id(message_id)
        expected = set(rcpts or ())

        def matching(ds: list[Delivery]) -> Deliveries | None:
            found = Deliveries(d for d in ds if d.message_id == want)
            if not found or not expected <= set(found.rcpt_tos):
                return None
            return found

        what = f"Message-ID <{want}>" + (f" to {sorted(expected)}" if expected else "")
        found: Deliveries = self.wait_for(matching, timeout, what)
        if settle > 0:
            time.sleep(settle)
            found = matching(self.deliveries) or found
        return found

    def find_now(self, message_id: str) -> Deliveries:
        """The deliveries of this Message-ID received so far (possibly empty, no wait)."""
        want = normalize_message_id(message_id)
        return Deliveries(d for d in self.deliveries if d.message_id == want)

    def _summary_locked(self) -> str:
        if not self._deliveries:
            return "nothing received"
        last = self._deliveries[-5:]
        shown = "; ".join(f"#{d.seq} <{d.message_id}> from={d.mail_from} "
                          f"to={list(d.rcpt_tos)}" for d in last)
        return f"{len(self._deliveries)} received, last: {shown}"


def _try_start(controller: Controller) -> bool:
    try:
        controller.start()
    except OSError as exc:
        # EADDRINUSE while the old listener's sockets go away; anything else is fatal.
        with contextlib.suppress(Exception):
            controller.stop(no_assert=True)
        if exc.errno != errno.EADDRINUSE:
            raise
        return False
    return True
