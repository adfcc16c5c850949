"""The milter adapter: the only module that imports pymilter's ``Milter``.

It collects the envelope, the header fields and the body of each message
into plain values, asks the ``Engine`` for a decision at end of message, and
translates the decision back into milter actions.  Its promises:

* **fail open**: any exception is logged with the queue id (exception type
  and place, never its text, which could quote message content) and the
  message gets ``on_error`` (accept unchanged, or tempfail); we never REJECT
  or DISCARD;
* recipients are added before any is removed, so a failure halfway through
  the actions can duplicate a delivery but never lose one;
* per-message state is reset in ``envfrom`` and ``abort``: libmilter calls
  the factory once per SMTP connection, which may carry several messages;
* the body is held in memory up to ``spool_memory`` and on disk beyond it;
  past ``max_scan_size`` it is not kept at all and the message passes
  through tagged ``skip-too-large``.

Mail with no watched or assistance recipient is accepted in ``data`` (the
end of the envelope) when ``secrets.scope`` is ``helpdesk``: on a real MX most
mail is for mailboxes nobody watches, and Postfix then streams none of its
headers and body to the milter.

Negotiation: pymilter's ``set_flags`` is ignored when Postfix negotiates, so
``negotiate`` masks the actions to the ones we use.  ``data`` is implemented
(with a reply) because without it a TCP milter stalls ~40 ms per message on
Nagle's algorithm; it is also where we step out.  The steps that never need
an answer are ``@noreply``; the ones we do not use (connect, helo, end of
headers) are not asked for at all: each callback costs a trip through
libmilter and the GIL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import traceback
from typing import Any

import Milter

from .config import Config
from .engine import Engine
from .message import Envelope, strip_brackets
from .policy import Decision

log = logging.getLogger("helpdesk_milter")

ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT | Milter.CHGBODY

# Set by serve() before libmilter starts; read-only afterwards.
_engine: Engine | None = None


def where(exc: BaseException) -> str:
    """Exception type and innermost place, e.g. ``KeyError at policy.py:120``.

    The exception's text is left out on purpose: it can quote message content.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        return f"{type(exc).__name__} at {os.path.basename(last.filename)}:{last.lineno}"
    return type(exc).__name__


@Milter.header_leading_space   # exact header bytes: DKIM "simple" still verifies
class HelpdeskMilter(Milter.Base):
    def __init__(self) -> None:
        self.engine = _engine
        self._spool: Any = None
        self._header_rc = Milter.CONTINUE       # until negotiate() says otherwise
        self._reset()

    # --- per-message state ------------------------------------------------------

    def _reset(self) -> None:
        if self._spool is not None:
            with contextlib.suppress(Exception):
                self._spool.close()
        self._spool = None
        self.mail_from = ""
        self.auth_user: str | None = None
        self.rcpts: list[str] = []
        self.headers: list[tuple[str, bytes]] = []
        self.body_size = 0
        self.too_large = False
        self.failed: BaseException | None = None

    def _fail(self, exc: BaseException, stage: str) -> None:
        if self.failed is None:
            self.failed = exc
            log.error("%s: internal error in %s (%s); the message will be %s",
                      self._qid(), stage, where(exc), self._fallback_word())

    def _qid(self) -> str:
        try:
            return self.getsymval("i") or "NOQUEUE"
        except Exception:
            return "NOQUEUE"

    def _fallback_word(self) -> str:
        assert self.engine is not None
        return "accepted unchanged" if self.engine.config.milter.on_error == "accept" \
            else "temp-failed"

    def _fallback(self) -> int:
        assert self.engine is not None
        if self.engine.config.milter.on_error == "tempfail":
            self.setreply("451", "4.3.0", "helpdesk-milter: temporary failure, try again later")
            return Milter.TEMPFAIL
        return Milter.ACCEPT

    # --- callbacks --------------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        rc = Milter.Base.negotiate(self, opts)
        opts[0] = self._actions = opts[0] & ACTIONS
        # What header_bytes answers: libmilter logs an error for every field
        # answered CONTINUE once "no reply" was agreed (pymilter's @noreply
        # wrapper, which header_bytes bypasses, would turn it into NOREPLY).
        self._header_rc = Milter.NOREPLY if self._protocol & Milter.P_NR_HDR \
            else Milter.CONTINUE
        return rc

    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset()
        try:
            self.mail_from = strip_brackets(mailfrom)
            self.auth_user = self.getsymval("{auth_authen}") or None
        except Exception as exc:
            self._fail(exc, "envfrom")
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, to: str, *params: str) -> int:
        self.rcpts.append(to)
        return Milter.CONTINUE

    def data(self) -> int:
        # The end of the envelope: mail with no watched or assistance recipient
        # is accepted here, untouched (secrets.scope = "helpdesk"), so Postfix
        # streams none of its headers and body to us.  Replying here at all is
        # what keeps a TCP milter off Nagle's 40 ms stall.
        try:
            assert self.engine is not None
            # as eom() reads them (a client may send "<<a@b>>")
            if self.failed is None and self.engine.steps_out(
                    [strip_brackets(r) for r in self.rcpts]):
                self.engine.stepped_out(self._qid(), self.mail_from, len(self.rcpts))
                self._reset()
                return Milter.ACCEPT
        except Exception as exc:
            self._fail(exc, "data")
        return Milter.CONTINUE

    @Milter.noreply           # declares the step: header fields, no reply
    def header(self, name: str, value: bytes) -> int:
        self.headers.append((name, value))
        return Milter.CONTINUE

    def header_bytes(self, name: str, value: bytes) -> int:
        # What pymilter calls, with the raw value: overridden so that it stays
        # bytes (exact, for DKIM) and each field costs one Python call.  Headers
        # are kept in memory; Postfix caps them (header_size_limit, 100 KB by
        # default) so their total is bounded by message_size_limit.
        self.headers.append((name, value))
        return self._header_rc

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self.body_size += len(chunk)
        if self.too_large or self.failed is not None:
            return Milter.CONTINUE
        try:
            assert self.engine is not None
            settings = self.engine.config.milter
            if self.body_size > settings.max_scan_size:
                # Past the scan cap the body is not kept at all: memory stays bounded.
                self.too_large = True
                if self._spool is not None:
                    self._spool.close()
                    self._spool = None
                return Milter.CONTINUE
            if self._spool is None:
                # lives across body() callbacks; closed in _reset()
                self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                    max_size=settings.spool_memory, prefix="helpdesk-milter-")
            self._spool.write(chunk)
        except Exception as exc:
            self._fail(exc, "body")
        return Milter.CONTINUE

    def eom(self) -> int:
        try:
            if self.failed is not None:
                return self._fallback()
            assert self.engine is not None
            body = b""
            if self._spool is not None:
                self._spool.seek(0)
                body = self._spool.read()
            env = Envelope(mail_from=self.mail_from,
                           rcpts=tuple(strip_brackets(r) for r in self.rcpts),
                           auth_user=self.auth_user, queue_id=self._qid(),
                           client_addr=self.getsymval("{client_addr}"))
            outcome = self.engine.process(env, self.headers, body,
                                          size=self.body_size, too_large=self.too_large,
                                          leading_space=self._leading_space, defer=True)
            try:
                self._apply(outcome.decision)
            except BaseException:
                # Not applied: the message is temp-failed or passed unchanged, so
                # its retry must not find this decision's fingerprint as "the
                # earlier copy", nor a guidance mail queued for it.
                self.engine.abort(outcome)
                raise
            self.engine.commit(outcome)
            return Milter.ACCEPT
        except Exception as exc:
            self._fail(exc, "eom")
            return self._fallback()
        finally:
            self._reset()

    def abort(self) -> int:
        self._reset()
        return Milter.CONTINUE

    def close(self) -> int:
        self._reset()
        return Milter.CONTINUE

    # --- decision -> milter actions ---------------------------------------------

    @property
    def _leading_space(self) -> bool:
        return bool(getattr(self, "_protocol", 0) & Milter.P_HDR_LEADSPC)

    def _value(self, value: str) -> str:
        # With SMFIP_HDR_LEADSPC Postfix writes values verbatim after the colon.
        return " " + value if self._leading_space else value

    def _apply(self, d: Decision) -> None:
        # Content first, recipients last: if a step fails, the recipients are as
        # they came (the message is then passed unchanged or temp-failed).
        if d.new_body is not None:
            self.replacebody(d.new_body)
        for name, index in d.strip_headers:        # highest index first
            self.chgheader(name, index, "")
        for name, index, value in d.change_headers:
            self.chgheader(name, index, self._value(value))
        for name, value in reversed(d.prepend_headers):
            self.addheader(name, self._value(value), 0)
        for name, value in d.add_headers:
            self.addheader(name, self._value(value))
        # Add before removing: a failure in between may duplicate, never lose.
        for rcpt in d.add_rcpts:
            self.addrcpt(f"<{rcpt}>")
        originals = {strip_brackets(r).lower(): r for r in self.rcpts}
        for rcpt in d.del_rcpts:
            self.delrcpt(originals.get(rcpt.lower(), f"<{rcpt}>"))


def serve(config: Config, engine: Engine) -> None:
    """Run the milter until SIGTERM/SIGINT (libmilter handles the signals)."""
    global _engine
    _engine = engine
    Milter.factory = HelpdeskMilter
    Milter.set_flags(ACTIONS)
    # Backstop for an exception that escapes a callback's own handling.
    Milter.set_exception_policy(
        Milter.TEMPFAIL if config.milter.on_error == "tempfail" else Milter.ACCEPT)
    socket = config.milter.socket
    if socket.startswith(("unix:", "local:")):
        path = socket.split(":", 1)[1]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # libmilter creates the socket with the process umask; Postfix's smtpd
        # (user postfix) must be able to write it.
        os.umask(0o777 & ~config.milter.socket_mode)
    log.info("helpdesk-milter listening on %s (%d watch groups, %d clients)", socket,
             len(config.watch), len(engine.policy.directory))
    Milter.runmilter("helpdesk-milter", socket, config.milter.timeout)
    log.info("helpdesk-milter stopped")
