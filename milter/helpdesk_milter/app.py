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

Observe mode (``milter.mode = "observe"``): the decision is made, logged and
recorded as what it would have done (``Engine.observe``), and the message is
accepted as it came: no header, recipient or body change.

Reload (SIGHUP): ``serve`` runs libmilter in a thread of its own and waits for
SIGHUP in the main thread (see ``serve`` for why).  A reload builds a new
engine from the files; each message takes the current engine at MAIL FROM,
so a message in flight finishes with the configuration it started with.

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
import dataclasses
import errno
import fcntl
import logging
import os
import queue
import signal
import socket as socketlib
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import Milter

from . import build
from .config import Config, ConfigError
from .engine import Engine
from .message import Envelope, strip_brackets
from .metrics import Metrics, NullMetrics
from .policy import Decision

log = logging.getLogger("helpdesk_milter")

ACTIONS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT | Milter.CHGBODY

# Set by serve() before libmilter starts; replaced whole by a reload (one reference
# assignment: a thread reads the old engine or the new one, never a mix).
_engine: Engine | None = None
_metrics: Metrics = NullMetrics()


def tempfails(config: Config) -> bool:
    """Whether an internal error temp-fails the message (``on_error``).  Never in
    observe mode: a rollout must not hold up mail the milter does not change."""
    return config.milter.on_error == "tempfail" and config.milter.mode != "observe"


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
        self.metrics = _metrics
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
            self.metrics.failed(stage, "tempfail" if self.engine is not None
                                and tempfails(self.engine.config) else "accept")
            log.error("%s: internal error in %s (%s); the message will be %s",
                      self._qid(), stage, where(exc), self._fallback_word())

    def _qid(self) -> str:
        try:
            return self.getsymval("i") or "NOQUEUE"
        except Exception:
            return "NOQUEUE"

    def _fallback_word(self) -> str:
        assert self.engine is not None
        return "accepted unchanged" if not tempfails(self.engine.config) \
            else "temp-failed"

    def _fallback(self) -> int:
        assert self.engine is not None
        if tempfails(self.engine.config):
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
        # The engine of the moment: a reload after this point leaves this message
        # with the configuration it started with.
        self.engine = _engine
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
                self.metrics.stepped_out()
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
            started = time.perf_counter()
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
            if self.engine.observing:
                # decided, logged and recorded; the message goes through as it came
                self.engine.observe(outcome, env.rcpts)
                self.metrics.decided(outcome.decision, time.perf_counter() - started)
                return Milter.ACCEPT
            try:
                self._apply(outcome.decision)
            except BaseException:
                # Not applied: the message is temp-failed or passed unchanged, so
                # its retry must not find this decision's fingerprint as "the
                # earlier copy", nor a guidance mail queued for it.
                self.engine.abort(outcome)
                raise
            self.engine.commit(outcome)
            self.metrics.decided(outcome.decision, time.perf_counter() - started)
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


# --- one owner per socket ------------------------------------------------------------

class SocketInUse(Exception):
    """Another process serves the unix socket; the message says which and what to do."""


def claim_socket(spec: str) -> IO[str] | None:
    """Make sure this process alone serves a unix socket; None for other sockets.

    libmilter removes an existing socket file before it binds its own, so a second
    instance started by hand would silently take the socket over from the first,
    which keeps running unreachable.  So: an exclusive lock on ``PATH.lock`` (beside
    the socket, holding the owner's pid) for the life of the process, and, for a
    socket held by something that takes no lock, a refusal when it accepts a
    connection.  Keep the returned file open; closing it releases the socket.
    The lock file stays after exit: removing it would let two starters lock two
    different files.  An ``inet:`` socket needs none of this (a second bind fails).
    """
    if not spec.startswith(("unix:", "local:")):
        return None
    path = Path(spec.split(":", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    lock = open(lock_path, "a+")  # noqa: SIM115 (held for the life of the process)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock.seek(0)
        owner = lock.read().strip()
        lock.close()
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise SocketInUse(
            f"another helpdesk-milter{f' (pid {owner})' if owner.isdigit() else ''} "
            f"already serves {spec} (it holds {lock_path}); stop it first "
            "(systemctl stop helpdesk-milter), or give this one another socket "
            "(run --socket unix:/other/path)") from None
    if _accepts(path):
        lock.close()
        raise SocketInUse(f"something already listens on {path} (without {lock_path}: "
                          "not a helpdesk-milter of this version); stop it, or give this "
                          "one another socket (run --socket unix:/other/path)")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False          # a stale file from a killed process: libmilter replaces it
    return True


# --- readiness (systemd Type=notify) --------------------------------------------------

READY_WAIT = 60.0     # seconds to wait for libmilter's socket before giving up


def _ready_when_listening(spec: str, milter_thread: threading.Thread,
                          stop_signals: set[signal.Signals]) -> None:
    """Tell systemd (``NOTIFY_SOCKET``, ``Type=notify``) that the milter serves, once
    its socket accepts connections: ``systemctl start`` then returns when Postfix can
    connect, and no ``systemctl reload`` can reach the process before it is ready."""
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)   # signals are the main thread's
    deadline = time.monotonic() + READY_WAIT
    while milter_thread.is_alive() and time.monotonic() < deadline:
        if _listening(spec):
            sd_notify(f"READY=1\nSTATUS=listening on {spec}")
            return
        time.sleep(0.05)


def _listening(spec: str) -> bool:
    """Whether the libmilter socket ``spec`` accepts a connection now."""
    kind, _, rest = spec.partition(":")
    if kind in ("unix", "local"):
        return _accepts(Path(rest))
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::", "*"):
            host = "::1" if kind == "inet6" else "127.0.0.1"
        family = socketlib.AF_INET6 if kind == "inet6" else socketlib.AF_INET
        with socketlib.socket(family, socketlib.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect((host, int(port)))
            except (OSError, ValueError):
                return False
        return True
    return True        # fd:N: systemd's socket listens already


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd's notification socket; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]          # an abstract socket
    try:
        with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


# --- reload ----------------------------------------------------------------------------

# What a reload cannot change in a running process: the socket is open, the store
# (database file, dedup window) and the outbox sender and metrics endpoint are
# running.  A changed value is logged and takes effect at the next restart.
RESTART_ONLY = {
    "milter": ("socket", "socket_mode", "database", "timeout"),
    "dedup": ("window", "similarity"),
    "autoreply": ("enabled", "smtp", "give_up", "retry"),
    "metrics": ("listen",),
    "logging": ("target", "facility", "format", "syslog_socket"),
    "state": ("backend", "redis_url", "redis_password_file", "key_prefix", "timeout",
              "connect_timeout"),
}


def keep_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the running values of the keys a reload cannot change, and the
    names of those that differ (``milter.socket``, ...)."""
    changed: list[str] = []
    for table, names in RESTART_ONLY.items():
        old_values, new_values = getattr(running, table, None), getattr(new, table, None)
        if old_values is None or new_values is None:
            continue
        keep = {}
        for name in names:
            if not hasattr(old_values, name):
                continue
            if getattr(old_values, name) != getattr(new_values, name):
                changed.append(f"{table}.{name}")
            keep[name] = getattr(old_values, name)
        new = dataclasses.replace(new, **{table: dataclasses.replace(new_values, **keep)})
    return new, changed


class _Reloader:
    """Builds a new engine on SIGHUP and makes it the current one, or keeps the old."""

    def __init__(self, rebuild: Callable[[Config], Engine] | None, metrics: Metrics):
        self.rebuild = rebuild
        self.metrics = metrics
        self.retired: list[Engine] = []

    def reload(self) -> bool:
        global _engine
        running = _engine
        assert running is not None
        if self.rebuild is None:
            log.warning("SIGHUP: this milter cannot reload; ignored")
            return False
        log.info("SIGHUP: reloading %s", running.config.source)
        try:
            new = self.rebuild(running.config)
        except ConfigError as exc:
            log.error("reload failed, the running configuration stays: %d problem%s: %s",
                      len(exc.problems), "s" if len(exc.problems) != 1 else "",
                      "; ".join(exc.problems))
            self.metrics.reloaded(False, observe=running.observing)
            return False
        except Exception as exc:
            log.error("reload failed (%s: %s), the running configuration stays",
                      where(exc), exc)
            self.metrics.reloaded(False, observe=running.observing)
            return False
        config = new.config
        Milter.set_exception_policy(
            Milter.TEMPFAIL if tempfails(config) else Milter.ACCEPT)
        logging.getLogger("helpdesk_milter").setLevel(config.milter.log_level.upper())
        _engine = new                      # new messages take it from MAIL FROM on
        # A message started before the reload may still use the engine before; the
        # one before that is done by now (a reload takes seconds apart at the least).
        for old in self.retired[:-1]:
            if old.learning is not None and old.learning is not new.learning:
                old.learning.close()
        self.retired = [*self.retired[-1:], running]
        log.info("reloaded %s: %d watch groups, %d clients, mode %s", config.source,
                 len(config.watch), len(new.policy.directory), config.milter.mode)
        self.metrics.reloaded(True, observe=new.observing)
        return True


# --- serve -------------------------------------------------------------------------------

# Python hands the interpreter from one thread to another at most every "switch
# interval" (5 ms by default) while a thread computes.  A milter's threads mostly
# wait on sockets for short moments (Postfix, Redis, SQLite, the log), and each
# time one comes back from a wait while another computes, it waits for the
# interval to run out: 5 ms of latency for a 0.1 ms Redis round trip.  At 0.5 ms
# the Redis store's added cost fell from 0.34-0.74 to 0.23-0.29 ms at the median,
# with the SQLite store's decision unchanged (tests/bench/run.py --sections redis,
# two alternated runs each).  HELPDESK_MILTER_SWITCH_INTERVAL (seconds) overrides
# it, for measurements.
SWITCH_INTERVAL = 0.0005


def switch_interval() -> float:
    """The thread switch interval ``serve`` sets (see SWITCH_INTERVAL)."""
    value = os.environ.get("HELPDESK_MILTER_SWITCH_INTERVAL", "")
    try:
        seconds = float(value) if value else SWITCH_INTERVAL
    except ValueError:
        log.warning("HELPDESK_MILTER_SWITCH_INTERVAL=%r is not a number of seconds: "
                    "using %s", value, SWITCH_INTERVAL)
        return SWITCH_INTERVAL
    return seconds if 1e-6 <= seconds <= 1.0 else SWITCH_INTERVAL

def serve(config: Config, engine: Engine, *,
          rebuild: Callable[[Config], Engine] | None = None,
          metrics: Metrics | None = None, socket_lock: IO[str] | None = None) -> None:
    """Run the milter until SIGTERM/SIGINT; on SIGHUP, ``rebuild`` a new engine.

    Raises ``SocketInUse`` when another process serves the unix socket (unless the
    caller claimed it first: ``socket_lock``), and what libmilter raises when it
    cannot open the socket.

    Signals: libmilter's ``smfi_main`` blocks SIGHUP, SIGTERM and SIGINT in the
    thread that calls it and starts a thread that ``sigwait``s for them, and it
    *stops* on SIGHUP as on SIGTERM: that is why SIGHUP used to end the milter
    with exit 0.  So libmilter runs in a thread of its own, started with the three
    signals blocked (its threads inherit that mask), and the main thread, the only
    one left with SIGHUP unblocked, takes SIGHUP: Linux hands a process-directed
    signal to the main thread first when it accepts it, so libmilter's ``sigwait``
    never sees a SIGHUP.  SIGTERM and SIGINT stay blocked here and stop libmilter
    as before.
    """
    global _engine, _metrics
    sys.setswitchinterval(switch_interval())
    _engine = engine
    _metrics = metrics or NullMetrics()
    Milter.factory = HelpdeskMilter
    Milter.set_flags(ACTIONS)
    # Backstop for an exception that escapes a callback's own handling.
    Milter.set_exception_policy(
        Milter.TEMPFAIL if tempfails(config) else Milter.ACCEPT)
    socket = config.milter.socket
    lock = socket_lock if socket_lock is not None else claim_socket(socket)
    try:
        if lock is not None:
            # libmilter creates the socket with the process umask; Postfix's smtpd
            # (user postfix) must be able to write it.
            os.umask(0o777 & ~config.milter.socket_mode)
        log.info("helpdesk-milter listening on %s (%d watch groups, %d clients, decision "
                 "core %s%s)", socket, len(config.watch), len(engine.policy.directory),
                 build(), ", observe mode: no message is changed" if engine.observing else "")
        _run_until_stopped(socket, config.milter.timeout, _Reloader(rebuild, _metrics))
    finally:
        if lock is not None:
            lock.close()
    log.info("helpdesk-milter stopped")


def _run_until_stopped(socket: str, timeout: int, reloader: _Reloader) -> None:
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    failure: list[BaseException] = []

    def run() -> None:
        # Before libmilter starts its threads (they inherit this mask), and its
        # signal thread above all: SIGHUP must never reach its sigwait().
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        try:
            Milter.runmilter("helpdesk-milter", socket, timeout)
        except BaseException as exc:
            failure.append(exc)

    hups: queue.SimpleQueue[int] = queue.SimpleQueue()   # put() is safe in a handler
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: hups.put(signum))
    # Unblocked here (this thread only) before libmilter's signal thread exists, so
    # a SIGHUP that arrived during start-up, pending until now, comes to us too.
    # Whichever thread runs the C-level handler, the Python handler runs here.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    thread = threading.Thread(target=run, name="libmilter", daemon=True)
    thread.start()
    if os.environ.get("NOTIFY_SOCKET"):
        threading.Thread(target=_ready_when_listening, args=(socket, thread, stop_signals),
                         name="sd-notify", daemon=True).start()
    try:
        while thread.is_alive():
            try:
                hups.get(timeout=0.5)
            except queue.Empty:
                continue
            reloader.reload()
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        signal.signal(signal.SIGHUP, previous)
    thread.join()
    if failure:
        raise failure[0]
