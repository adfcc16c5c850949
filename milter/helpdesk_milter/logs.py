"""Where the milter's log lines go: stderr (journald) or syslog, as text or JSON.

Contract:

* the one line per message keeps its words whatever the target: Postfix's queue
  id first, then ``key=value`` words (``engine.log_info`` builds it once);
* with ``logging.target = "syslog"`` the lines go to the local syslog socket
  with the configured facility (``mail`` by default, so that they sit beside
  Postfix's own lines in ``/var/log/mail.log``) and the ident
  ``helpdesk-milter[PID]``; warnings and errors start with ``warning:`` and
  ``error:``, as Postfix writes them;
* a milter thread never waits on syslog: records go through a bounded queue to
  one writer thread (``QueueListener``); a full queue drops the line and counts
  it, and a syslog that is down at start means stderr, said once on stderr;
* ``logging.format = "json"``: one JSON object per line with ``time`` (UTC,
  ISO 8601), ``level``, ``logger``, ``queue_id`` (when the line starts with one),
  ``message`` (the whole line) and each ``key=value`` word of the line as a field.
  Lines never hold a Subject, a body or a secret (see engine.py), so neither does
  their JSON.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import logging.handlers
import os
import queue
import re
import socket
import sys
import time

from .config import LoggingSettings

IDENT = "helpdesk-milter"

FACILITIES = {
    "mail": logging.handlers.SysLogHandler.LOG_MAIL,
    "daemon": logging.handlers.SysLogHandler.LOG_DAEMON,
    "user": logging.handlers.SysLogHandler.LOG_USER,
    **{f"local{n}": logging.handlers.SysLogHandler.LOG_LOCAL0 + n for n in range(8)},
}

# "4XyZ1C2D3E: verdict=..." (Postfix queue ids: short or long form), or NOQUEUE
_QUEUE_ID = re.compile(r"^([0-9A-Za-z]{5,20}|NOQUEUE): ")
_WORD = re.compile(r"(?:^|\s)([a-z][a-z0-9_-]*)=(\S+)")
_BASE = ("time", "level", "logger", "queue_id", "message")

QUEUE_MAX = 10_000


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the line's ``key=value`` words become fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name}
        m = _QUEUE_ID.match(message)
        if m:
            out["queue_id"] = m.group(1)
        out["message"] = message
        for key, value in _WORD.findall(message):
            if key not in _BASE and key not in out:
                out[key] = value
        if record.exc_info:
            # the exception type and place only: its text could quote message content
            out["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else ""
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


class _PostfixStyle(logging.Formatter):
    """Syslog text: the line as is; warnings and errors prefixed as Postfix does."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler that drops a record when the queue is full (syslog stalled)
    instead of blocking a milter thread; the count is reported when space returns."""

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.LogRecord(record.name, logging.WARNING, "", 0,
                                         f"{self.dropped} log line(s) dropped: syslog did "
                                         "not keep up", (), None)
                self.queue.put_nowait(note)
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _SysLog(logging.handlers.SysLogHandler):
    """SysLogHandler that, when syslog cannot take a line (restarted, gone), writes
    it to stderr instead of a traceback: the line is kept, and said where it went."""

    def __init__(self, address: str, facility: int) -> None:
        super().__init__(address=address, facility=facility)
        self.append_nul = False          # as glibc's syslog() sends it
        self.ident = f"{IDENT}[{os.getpid()}]: "
        self._failing = False            # the last line could not be sent
        self._sent = True

    def emit(self, record: logging.LogRecord) -> None:
        self._sent = True
        super().emit(record)             # calls handleError when it cannot send
        if self._sent and self._failing:
            self._failing = False
            print(f"helpdesk-milter: syslog at {self.address} is back", file=sys.stderr)

    def handleError(self, record: logging.LogRecord) -> None:
        self._sent = False
        if not self._failing:
            self._failing = True
            print(f"helpdesk-milter: cannot write to syslog at {self.address}; "
                  "lines go to stderr until it is back", file=sys.stderr)
        with contextlib.suppress(Exception):   # stderr gone too: nothing left to tell
            print(self.format(record), file=sys.stderr)


def _unreachable(path: str) -> OSError | None:
    """Why the syslog socket cannot be reached now (None: it can)."""
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
                return None
            except OSError as exc:
                error = exc
    return error


# --------------------------------------------------------------------------------------
# The one line per message, written without logging's record machinery when logging is
# set up simply: one StreamHandler on the root logger (what ``setup_logging`` installs
# for stderr text, and ``logging.basicConfig``), a plain Formatter of one of the
# formats below, no filter anywhere.  The bytes written are those the handler would
# write; anything else (syslog, JSON, pytest's capture, a second handler) goes the
# usual way.  A record costs ~20 us of CPU (caller lookup, LogRecord's two dozen
# attributes, the handler chain); this ~3 us.

_PLAIN_FORMATS = {
    "%(message)s": "",
    "%(levelname)s %(message)s": "INFO ",
}
_TIMED_FORMAT = "%(asctime)s %(levelname)s %(message)s"
_DEFAULT_TIME = "%Y-%m-%d %H:%M:%S"
_DEFAULT_MSEC = "%s,%03d"


# ``time.strftime`` of the current second, kept (it changes once a second): (second, text),
# one tuple, so that a thread never reads one second's number with another's text
_second: list[tuple[int, str]] = [(-1, "")]


def _asctime(now: float) -> str:
    """``Formatter.formatTime`` of a record created at ``now`` (default formats)."""
    whole = int(now)
    when, text = _second[0]
    if when != whole:
        text = time.strftime(_DEFAULT_TIME, time.localtime(now))
        _second[0] = (whole, text)
    return _DEFAULT_MSEC % (text, int((now - whole) * 1000))


def write_info(logger: logging.Logger, line: str) -> bool:
    """Write ``line`` as an INFO record of ``logger`` would be written, straight to the
    stream, when logging is set up simply (see above); False when it is not, and the
    caller must log the usual way.  The caller has checked ``isEnabledFor(INFO)``."""
    root = logging.root
    handlers = root.handlers
    if len(handlers) != 1 or logger.handlers or logger.filters or root.filters \
            or not logger.propagate or logger.parent is not root:
        return False
    handler = handlers[0]
    formatter = handler.formatter
    if type(handler) is not logging.StreamHandler or handler.filters \
            or handler.level > logging.INFO or type(formatter) is not logging.Formatter \
            or formatter.datefmt is not None or formatter.converter is not time.localtime \
            or type(formatter._style) is not logging.PercentStyle:
        return False
    fmt = formatter._fmt
    prefix = _PLAIN_FORMATS.get(fmt or "")
    if prefix is None:
        if fmt != _TIMED_FORMAT or formatter.default_time_format != _DEFAULT_TIME \
                or formatter.default_msec_format != _DEFAULT_MSEC:
            return False
        prefix = _asctime(time.time()) + " INFO "
    text = prefix + line + handler.terminator
    with handler.lock or contextlib.nullcontext():
        try:
            stream = handler.stream
            stream.write(text)
            if hasattr(stream, "flush"):
                stream.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(logger.makeRecord(logger.name, logging.INFO, "", 0, line,
                                                  (), None))
    return True


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str = "info", settings: LoggingSettings | None = None) -> None:
    """Configure the root logger for ``run`` (and the other commands' messages)."""
    global _listener
    settings = settings or LoggingSettings()
    if _listener is not None:
        _listener.stop()
        _listener = None
    handler: logging.Handler | None = None
    if settings.target == "syslog":
        # SysLogHandler starts even when the socket is missing (and retries at each
        # line): check it here, so that a wrong path is said at start.
        problem = _unreachable(settings.syslog_socket)
        if problem is not None:
            print(f"helpdesk-milter: cannot reach syslog at {settings.syslog_socket} "
                  f"({problem.strerror or problem}); logging to stderr instead",
                  file=sys.stderr)
        else:
            syslog = _SysLog(settings.syslog_socket, FACILITIES[settings.facility])
            syslog.setFormatter(JsonFormatter() if settings.format == "json"
                                else _PostfixStyle())
            records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_MAX)
            _listener = logging.handlers.QueueListener(records, syslog)
            _listener.start()
            handler = _DroppingQueueHandler(records)
            # the record crosses the queue with its message already built: only that
            handler.setFormatter(logging.Formatter("%(message)s"))
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        if settings.format == "json":
            handler.setFormatter(JsonFormatter())
        else:
            # Under systemd, journald stamps each line itself.
            handler.setFormatter(logging.Formatter(
                "%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM")
                else "%(asctime)s %(levelname)s %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        handlers=[handler], force=True)


def _stop_listener() -> None:
    """Write what is queued before the process exits."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(_stop_listener)
