"""The guidance mail sender: a thread that empties the outbox table over SMTP.

Never in the way of mail: the milter's callbacks only queue a row (through the
store's writer thread); this thread, in the same daemon, sends due rows to the
configured relay (Postfix on localhost by default) with the null envelope
sender (RFC 3834: no bounce can loop back), and on failure retries with
exponential back-off, until ``autoreply.give_up``.  The rows live in SQLite, so
a restart loses nothing.  A dead relay costs this thread retries, never a
message's delivery.

Outcomes: ``sent``; ``failed`` when the relay refuses for good (5xx) or the
mail is older than ``give_up``; otherwise the row stays ``pending`` with its
``next_attempt`` pushed back.  Errors are logged with the row id and the relay's
answer, never with the mail's text.
"""

from __future__ import annotations

import logging
import smtplib
import threading
import time
from collections.abc import Callable

from .store import open_database

log = logging.getLogger("helpdesk_milter.outbox")

BATCH = 20
POLL = 2.0            # seconds between looks at the table when idle
MAX_BACKOFF = 3600.0


class OutboxSender:
    def __init__(self, database: str, relay: str, *, give_up: float, retry_after: float = 60.0,
                 clock: Callable[[], float] = time.time, timeout: float = 20.0,
                 on_result: Callable[[str], None] | None = None):
        host, _, port = relay.rpartition(":")
        self.database = database
        self.host, self.port = host.strip("[]"), int(port)
        self.give_up = give_up
        self.retry_after = retry_after
        self.clock = clock
        self.timeout = timeout
        # told "sent", "retry" or "failed" after each attempt (the metrics)
        self.on_result = on_result or (lambda outcome: None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox-sender", daemon=True)

    def start(self) -> OutboxSender:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        db = None
        while not self._stop.is_set():
            try:
                if db is None:
                    db = open_database(self.database)
                self.send_due(db)
            except Exception as exc:
                log.error("outbox: cannot process the outbox in %s: %s: %s", self.database,
                          type(exc).__name__, exc)
                db = None
            self._stop.wait(POLL)

    def send_due(self, db) -> int:   # type: ignore[no-untyped-def]
        """Send what is due now; returns how many were sent (tests call it directly)."""
        now = self.clock()
        rows = db.execute(
            "select id, created, to_addr, message, attempts from outbox "
            "where status = 'pending' and next_attempt <= ? order by id limit ?",
            [now, BATCH]).fetchall()
        sent = 0
        for rowid, created, to_addr, message, attempts in rows:
            if self._stop.is_set():
                break
            status, error = self._send(to_addr, message)
            now = self.clock()
            if status != "sent" and now - created >= self.give_up:
                status = "failed"
            self.on_result(status)
            if status == "sent":
                sent += 1
                log.info("outbox: guidance #%d sent to <%s>", rowid, to_addr)
                db.execute("update outbox set status = 'sent', sent_at = ?, attempts = ?, "
                           "last_error = null where id = ?", [now, attempts + 1, rowid])
            elif status == "failed":
                log.warning("outbox: guidance #%d to <%s> given up: %s", rowid, to_addr, error)
                db.execute("update outbox set status = 'failed', attempts = ?, "
                           "last_error = ? where id = ?", [attempts + 1, error, rowid])
            else:
                delay = min(MAX_BACKOFF, self.retry_after * 2 ** attempts)
                log.warning("outbox: guidance #%d to <%s> not sent (%s); retry in %.0fs",
                            rowid, to_addr, error, delay)
                db.execute("update outbox set attempts = ?, last_error = ?, next_attempt = ? "
                           "where id = ?", [attempts + 1, error, now + delay, rowid])
            db.conn.commit()
        return sent

    def _send(self, to_addr: str, message: bytes) -> tuple[str, str]:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout,
                              local_hostname="localhost") as smtp:
                smtp.sendmail("", [to_addr], message)
            return "sent", ""
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return ("failed" if 500 <= code < 600 else "retry"), f"{code} {_text(text)}"
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
            return ("failed" if 500 <= code < 600 else "retry"), f"{code} {_text(exc.smtp_error)}"
        except (OSError, smtplib.SMTPException) as exc:   # TimeoutError is an OSError
            return "retry", f"{type(exc).__name__}: {exc}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
