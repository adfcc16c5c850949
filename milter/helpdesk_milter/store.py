"""State: one SQLite file, through sqlite-utils.

Contract:

* no message body and no secret value is ever written: a decision row holds
  envelope addresses, the Message-ID, the verdict and the action;
* milter callbacks never wait on the disk: ``record`` puts the row on a
  bounded queue and a single writer thread commits rows in batches, gathering
  for up to ``LINGER`` (0.1 s) before each commit (a full queue or a failing
  disk costs the row, never the mail); an in-memory index answers for rows
  not on disk yet;
* duplicate lookups share one read connection under the store's lock (libmilter
  moves a session between threads), in WAL mode so that reads never block on
  the writer;
* the schema is a sqlite-utils ``Migrations`` set, applied at open.

``Store`` is the interface the rest of the code sees, so that a shared
backend for sites with several MX hosts can be added without touching the
decision code.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils
from sqlite_utils.migrations import Migrations

from . import dedup

log = logging.getLogger("helpdesk_milter.store")

migrations = Migrations("helpdesk_milter")


@migrations()
def m001_decisions(db: sqlite_utils.Database) -> None:
    db["decisions"].create({   # type: ignore[union-attr]
        "id": int, "time": float, "queue_id": str, "message_id": str, "mail_from": str,
        "from_addr": str, "structure": str, "verdict": str, "score": float, "rules": str,
        "action": str, "skip_reason": str, "watch_group": str, "assistance": str,
        "added": str, "removed": str, "duplicate": str, "size": int,
    }, pk="id")
    db["decisions"].create_index(["time"])          # type: ignore[union-attr]
    db["decisions"].create_index(["structure", "time"])  # type: ignore[union-attr]
    db["decisions"].create_index(["mail_from"])     # type: ignore[union-attr]


@migrations()
def m002_secrets(db: sqlite_utils.Database) -> None:
    # kinds and counts only: a secret value is never stored
    db["decisions"].add_column("secrets", int, not_null_default=0)   # type: ignore[union-attr]
    db["decisions"].add_column("secret_kinds", str)                  # type: ignore[union-attr]


@migrations()
def m003_fingerprints(db: sqlite_utils.Database) -> None:
    # hashes and MinHash signatures only, never text
    dedup.create_schema(db)


@migrations()
def m004_guidance(db: sqlite_utils.Database) -> None:
    # The guidance mails to send (their text holds no secret: it is built from
    # templates and the already-redacted Subject), and what was decided for each.
    db["outbox"].create({   # type: ignore[union-attr]
        "id": int, "created": float, "to_addr": str, "queue_id": str, "lang": str,
        "cases": str, "message": bytes, "status": str, "attempts": int,
        "next_attempt": float, "last_error": str, "sent_at": float,
    }, pk="id", not_null={"created", "to_addr", "status", "attempts", "next_attempt"},
        defaults={"status": "pending", "attempts": 0})
    db["outbox"].create_index(["to_addr", "created"])   # type: ignore[union-attr]
    db["outbox"].create_index(["status", "next_attempt"])  # type: ignore[union-attr]
    db["outbox"].create_index(["created"])   # type: ignore[union-attr]
    db["guidance_events"].create({   # type: ignore[union-attr]
        "id": int, "time": float, "to_addr": str, "queue_id": str, "outcome": str,
        "reason": str,
    }, pk="id")
    db["guidance_events"].create_index(["time"])   # type: ignore[union-attr]


@dataclass(frozen=True)
class GuidanceEvent:
    time: float
    to_addr: str
    queue_id: str
    outcome: str               # queued | suppressed
    reason: str                # why it was suppressed ("" when queued)


@dataclass(frozen=True)
class OutboxRow:
    created: float
    to_addr: str
    queue_id: str
    lang: str
    cases: str
    message: bytes


@dataclass(frozen=True)
class DecisionRecord:
    time: float
    queue_id: str
    message_id: str
    mail_from: str
    from_addr: str
    structure: str | None
    verdict: str
    score: float
    rules: str
    action: str
    skip_reason: str | None
    watch_group: str | None
    assistance: str | None
    added: str
    removed: str
    duplicate: str | None
    size: int
    secrets: int = 0
    secret_kinds: str = ""


@dataclass(frozen=True)
class Remember:
    """What to remember of a message for later duplicates (see dedup.insert)."""

    side: str                  # "watched" | "assistance"
    assistance: str | None     # the assistance address it reached, if any
    routed: bool               # True when the milter added that address
    queue_id: str = ""


# A plan turns the earlier duplicate (or None) into what to remember of this
# message (or None): the policy's decision, run while the store holds its lock.
Plan = Callable[[dedup.Match | None], Remember | None]


class Pending:
    """What one message will leave in the state, held until Postfix has it.

    The engine decides before the milter has applied its actions; if applying
    them fails, the message is temp-failed (or passed unchanged) and its retry
    must not find itself as "the earlier copy" nor a guidance mail queued for
    a message that never went through.  So rows wait here for ``commit``, and
    ``abort`` takes back what the in-memory indexes already hold.
    """

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.undo: list[Callable[[], None]] = []


class DedupState(Protocol):
    """What the policy needs of the state: one atomic check-and-remember."""

    def check_and_remember(self, fp: dedup.Fingerprint, plan: Plan) -> dedup.Match | None: ...


class Store(Protocol):
    """Every write takes an optional ``pending``: held there until ``commit``."""

    def record(self, rec: DecisionRecord, *, pending: Pending | None = None) -> None: ...
    def check_and_remember(self, fp: dedup.Fingerprint, plan: Plan, *,
                           pending: Pending | None = None) -> dedup.Match | None: ...
    def guidance_allowed(self, to_addr: str, *, every: float, per_hour: int) -> str | None: ...
    def queue_guidance(self, to_addr: str, build: Callable[[], OutboxRow], *, every: float,
                       per_hour: int, queue_id: str = "",
                       pending: Pending | None = None) -> str: ...
    def record_guidance_event(self, event: GuidanceEvent, *,
                              pending: Pending | None = None) -> None: ...
    def commit(self, pending: Pending) -> None: ...
    def abort(self, pending: Pending) -> None: ...
    def flush(self, timeout: float = 5.0) -> None: ...
    def close(self) -> None: ...


def open_database(path: str | Path, *, readonly: bool = False) -> sqlite_utils.Database:
    """A connection for the calling thread, WAL mode, plugins off."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0,
                               check_same_thread=True)
        return sqlite_utils.Database(conn, execute_plugins=False)
    db = sqlite_utils.Database(str(path), execute_plugins=False)
    db.conn.execute("PRAGMA busy_timeout = 5000")
    db.enable_wal()
    db.conn.execute("PRAGMA synchronous = NORMAL")
    return db


def migrate(path: str | Path) -> None:
    """Create or upgrade the schema; raises on an unusable file (the caller reports it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = open_database(path)
    try:
        migrations.apply(db)
    finally:
        db.close()


# Where each kind of queued row goes.  An outbox row also starts "pending", to
# be sent at once (status, attempts, next_attempt).
_TABLE = {DecisionRecord: "decisions", GuidanceEvent: "guidance_events", OutboxRow: "outbox"}
_OUTBOX_START = ("status", "attempts", "next_attempt")


def _insert_sql(kind: type) -> str:
    columns = [f.name for f in fields(kind)] + list(_OUTBOX_START if kind is OutboxRow else ())
    return (f"INSERT INTO [{_TABLE[kind]}] ({', '.join(f'[{c}]' for c in columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


_INSERT_SQL = {kind: _insert_sql(kind) for kind in _TABLE}


def _row_values(item: Any) -> tuple[Any, ...]:
    values = tuple(getattr(item, f.name) for f in fields(item))
    if isinstance(item, OutboxRow):
        values += ("pending", 0, item.created)
    return values


class SQLiteStore:
    """The default Store: a writer thread that commits queued rows in batches.

    Duplicate lookups read the file through one shared read connection, and a
    small in-memory index of the last minutes closes the gap between a decision
    and its row reaching the disk: two copies of one request arriving in
    parallel transactions must see each other.
    """

    BATCH = 200
    LINGER = 0.1               # seconds the writer gathers rows into one commit
    QUEUE_MAX = 20_000
    RECENT = 900.0             # seconds the in-memory index covers
    GUIDED_MAX = 10_000        # senders guided, kept in memory before a prune
    EXPIRE_EVERY = 60.0        # seconds between expiry runs on the writer thread

    def __init__(self, path: str | Path, *, window: float = 72 * 3600,
                 similarity: float = 0.8, clock: Callable[[], float] = time.time,
                 readonly: bool = False):
        self.path = str(path)
        self.window = window
        self.similarity = similarity
        self.clock = clock
        self.readonly = readonly
        # One reader connection, used only under the lock: libmilter runs a
        # session's callbacks on any of its worker threads, so per-thread
        # connections would both multiply and trip sqlite3's same-thread check.
        self._read_db: sqlite_utils.Database | None = None
        self._read_ino: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._recent = _RecentIndex(self.RECENT)
        # guidance queued by this process and maybe not on disk yet (rate limits)
        self._guided: dict[str, float] = {}
        self._guided_times: collections.deque[float] = collections.deque()
        self._dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(self.QUEUE_MAX)
        if readonly:
            return
        migrate(self.path)
        self._writer = threading.Thread(target=self._write_loop, name="store-writer",
                                        daemon=True)
        self._writer.start()

    # --- duplicates -----------------------------------------------------------------

    def check_and_remember(self, fp: dedup.Fingerprint, plan: Plan, *,
                           pending: Pending | None = None) -> dedup.Match | None:
        """Find the earlier copy of ``fp``, let ``plan`` decide, remember the result.

        Atomic across threads: the lock spans the lookup, the plan and the
        in-memory insert, so of two parallel copies the second sees the first
        even before the writer thread has put the first on disk.  A failing
        database costs the lookup (no dedup), never the message.
        """
        with self._lock:
            now = self.clock()
            match = self._recent.find(fp, now=now, window=self.window,
                                       threshold=self.similarity)
            if match is None or not match.assistance_has_it:
                try:
                    found = dedup.find_duplicate(self._reader(), fp, now=now,
                                                 window=self.window,
                                                 threshold=self.similarity)
                except Exception as exc:
                    log.error("state database %s: duplicate lookup failed: %s", self.path,
                              _describe(exc))
                    self._drop_reader()
                    found = None
                if found is not None and (match is None or found.assistance_has_it):
                    match = found
            remember = plan(match)
            if remember is not None and not self.readonly:
                entry = self._recent.add(fp, remember, now)
                self._emit(("fingerprint", fp, remember, now, entry), pending)
                if pending is not None:
                    pending.undo.append(lambda: self._recent.remove(entry))
        return match

    # --- guidance mail ----------------------------------------------------------------

    def guidance_allowed(self, to_addr: str, *, every: float, per_hour: int) -> str | None:
        """None when a guidance mail to ``to_addr`` may be queued now, else the reason
        ("rate-limited": one was queued within ``every``; "hourly-cap")."""
        with self._lock:
            return self._guidance_block(to_addr.lower(), self.clock(), every, per_hour)

    def queue_guidance(self, to_addr: str, build: Callable[[], OutboxRow], *, every: float,
                       per_hour: int, queue_id: str = "",
                       pending: Pending | None = None) -> str:
        """Queue one guidance mail unless a rate limit says no; returns "queued" or the
        reason.  The check and the queueing are atomic, so two messages from one
        sender at the same moment produce one mail.  The row reaches the outbox
        table through the writer thread; the sender thread (outbox.py) sends it."""
        key = to_addr.lower()
        with self._lock:
            now = self.clock()
            reason = self._guidance_block(key, now, every, per_hour)
            if reason is None:
                row = build()
                previous = self._guided.get(key)
                if len(self._guided) >= self.GUIDED_MAX:
                    # older than ``every``: the outbox table answers for them
                    self._guided = {k: t for k, t in self._guided.items() if t > now - every}
                self._guided[key] = now
                self._guided_times.append(now)
                self._emit(row, pending)
                if pending is not None:
                    pending.undo.append(lambda: self._unguide(key, now, previous))
        self._emit(GuidanceEvent(time=now, to_addr=key, queue_id=queue_id,
                                 outcome="queued" if reason is None else "suppressed",
                                 reason=reason or ""), pending)
        return reason or "queued"

    def _unguide(self, key: str, when: float, previous: float | None) -> None:
        if self._guided.get(key) == when:
            if previous is None:
                del self._guided[key]
            else:
                self._guided[key] = previous
        with contextlib.suppress(ValueError):
            self._guided_times.remove(when)

    def record_guidance_event(self, event: GuidanceEvent, *,
                              pending: Pending | None = None) -> None:
        self._emit(event, pending)

    # --- deferred writes --------------------------------------------------------------

    def commit(self, pending: Pending) -> None:
        """The message went through: write what it left."""
        for item in pending.items:
            self._enqueue(item)
        pending.items.clear()
        pending.undo.clear()

    def abort(self, pending: Pending) -> None:
        """The message did not go through: forget what it left in memory."""
        with self._lock:
            for undo in reversed(pending.undo):
                undo()
        pending.items.clear()
        pending.undo.clear()

    def _emit(self, item: Any, pending: Pending | None) -> None:
        if pending is None:
            self._enqueue(item)
        elif not self.readonly:
            pending.items.append(item)

    def _guidance_block(self, key: str, now: float, every: float, per_hour: int) -> str | None:
        while self._guided_times and self._guided_times[0] < now - 3600:
            self._guided_times.popleft()
        last = self._guided.get(key)
        recent_hour = len(self._guided_times)
        try:
            db = self._reader()
            row = db.execute("select max(created) from outbox where to_addr = ? "
                             "and status != 'failed'", [key]).fetchone()
            if row and row[0] is not None:
                last = max(last or 0.0, row[0])
            recent_hour = max(recent_hour, db.execute(
                "select count(*) from outbox where created >= ?", [now - 3600]).fetchone()[0])
        except Exception as exc:
            # Without the database we only know this process's own mails: still
            # rate-limited per sender, just not across a restart.
            log.error("state database %s: guidance lookup failed: %s", self.path,
                      _describe(exc))
            self._drop_reader()
        if last is not None and last > now - every:
            return "rate-limited"
        if recent_hour >= per_hour:
            return "hourly-cap"
        return None

    def _reader(self) -> sqlite_utils.Database:
        """The shared read connection (caller holds the lock), reopened when the
        file was deleted or replaced under us."""
        ino = _file_id(self.path)
        if ino is None:
            self._drop_reader()
            raise FileNotFoundError(f"{self.path} does not exist (yet)")
        if self._read_db is None or ino != self._read_ino:
            self._drop_reader()
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0,
                                   check_same_thread=False)
            conn.execute("PRAGMA query_only = 1")
            self._read_db = sqlite_utils.Database(conn, execute_plugins=False)
            self._read_ino = ino
        return self._read_db

    def _drop_reader(self) -> None:
        if self._read_db is not None:
            with contextlib.suppress(Exception):
                self._read_db.close()
        self._read_db, self._read_ino = None, None

    def record(self, rec: DecisionRecord, *, pending: Pending | None = None) -> None:
        self._emit(rec, pending)

    def _enqueue(self, item: Any) -> None:
        if self.readonly:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning("state database is not keeping up: %d decision rows dropped",
                            self._dropped)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued row is written (tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        if self.readonly:
            return
        # The writer commits what it holds when it meets the end mark (FIFO: after
        # every row queued before it), without waiting out its LINGER.
        self._queue.put(None)
        self._writer.join(timeout=5.0)

    def _write_loop(self) -> None:
        db: sqlite_utils.Database | None = None
        db_id: tuple[int, int] | None = None
        last_expiry = 0.0
        while True:
            first = self._queue.get()
            if first is None:
                self._queue.task_done()
                break
            batch = [first]
            # Gather what arrives in the next LINGER seconds into one commit: a
            # commit per message costs more than the rows themselves.
            deadline = time.monotonic() + self.LINGER
            while len(batch) < self.BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    self._queue.task_done()
                    break
                batch.append(item)
            try:
                if db is not None and _file_id(self.path) != db_id:
                    # deleted or replaced while we ran: start a new file rather than
                    # write on into an unlinked one
                    log.error("state database %s disappeared or was replaced; "
                              "creating it again", self.path)
                    with contextlib.suppress(Exception):
                        db.close()
                    db = None
                if db is None:
                    migrate(self.path)
                    db = open_database(self.path)
                    db_id = _file_id(self.path)
                self._insert_or_salvage(db, batch)
                self._written(batch)
                if time.monotonic() - last_expiry > self.EXPIRE_EVERY:
                    last_expiry = time.monotonic()
                    self._expire(db)
            except Exception as exc:
                # The mail has already gone through; only the record is lost.
                log.error("state database %s: cannot write %d row(s): %s",
                          self.path, len(batch), _describe(exc))
                if db is not None:
                    with contextlib.suppress(Exception):
                        db.close()
                db = None
            finally:
                for _ in batch:
                    self._queue.task_done()
        if db is not None:
            db.close()

    def _insert_or_salvage(self, db: sqlite_utils.Database, batch: list[Any]) -> None:
        """Write the batch in one transaction; if a row is unwritable, write the
        others one by one, so that one bad row costs itself only."""
        try:
            self._insert(db, batch)
        except (sqlite3.OperationalError, OSError):
            raise                  # the database itself is unwell: the caller reopens
        except Exception as exc:
            if len(batch) == 1:
                raise
            lost = 0
            for item in batch:
                try:
                    self._insert(db, [item])
                except Exception:
                    lost += 1
            log.error("state database %s: %d row(s) could not be written: %s", self.path,
                      lost, _describe(exc))

    @staticmethod
    def _insert(db: sqlite_utils.Database, batch: Iterable[Any]) -> None:
        # Plain prepared statements: sqlite-utils' insert_all inspects the schema
        # and each row on every call, which costs more than the write itself.
        rows: dict[type, list[tuple[Any, ...]]] = {DecisionRecord: [], GuidanceEvent: [],
                                                   OutboxRow: []}
        fingerprints = []
        for item in batch:
            if isinstance(item, tuple):
                fingerprints.append(item)
            else:
                rows[type(item)].append(_row_values(item))
        conn = db.conn
        with conn:
            if not conn.in_transaction:
                conn.execute("BEGIN")
            for kind, values in rows.items():
                if values:
                    conn.executemany(_INSERT_SQL[kind], values)
            for _, fp, remember, when, _entry in fingerprints:
                dedup.insert(db, fp, time=when, side=remember.side,
                             assistance=remember.assistance, routed=remember.routed,
                             queue_id=remember.queue_id)

    def _written(self, batch: list[Any]) -> None:
        """The batch is on disk: the database now answers near-duplicate lookups
        for its fingerprints, so the in-memory index stops holding their bands."""
        entries = [item[4] for item in batch if isinstance(item, tuple)]
        if entries:
            with self._lock:
                for entry in entries:
                    self._recent.written(entry)

    def _expire(self, db: sqlite_utils.Database) -> None:
        """Forget fingerprints older than the window, a bounded slice at a time."""
        before = self.clock() - self.window
        for _ in range(100):
            if dedup.expire(db, before=before, limit=500) < 500:
                break


@dataclass(eq=False, slots=True)
class _Recent:
    time: float
    message_id: str
    scope: str
    remember: Remember
    keys: tuple[tuple[str, int], ...] = ()
    bands: tuple[int, ...] = ()
    # held only while the bands are (seconds): the index keeps thousands of entries
    # for their exact keys, and a fingerprint weighs kilobytes
    fp: dedup.Fingerprint | None = None


class _RecentIndex:
    """The last minutes of remembered requests, in memory.

    It closes the gap between a decision and the writer thread committing its
    fingerprint: two copies of one request delivered in parallel transactions
    (the client's server sends one per destination domain) carry the same
    Message-ID, or the same text, and a resend may follow within a second.
    Exact keys are kept ``keep`` seconds; LSH band keys (near duplicates) only
    until the writer has committed the row (``written``), or at most
    ``near_keep`` seconds when it cannot: the database answers for the rest.
    Not thread-safe: the store's lock guards it.
    """

    def __init__(self, keep: float, near_keep: float = 5.0):
        self.keep = keep
        self.near_keep = near_keep
        self.by_key: dict[tuple[str, int], _Recent] = {}
        self.by_band: dict[int, list[_Recent]] = {}
        self.order: collections.deque[_Recent] = collections.deque()
        self.band_order: collections.deque[_Recent] = collections.deque()

    @staticmethod
    def _keys(fp: dedup.Fingerprint) -> tuple[tuple[str, int], ...]:
        ids, texts, _ = fp.keys          # the database's own lookup keys
        return (*(("id", k) for k in ids), *(("text", k) for k in texts))

    def add(self, fp: dedup.Fingerprint, remember: Remember, now: float) -> _Recent:
        bands = tuple(dedup.band_keys(fp))
        entry = _Recent(time=now, message_id=fp.message_id, scope=fp.scope,
                        remember=remember, keys=self._keys(fp), bands=bands,
                        fp=fp if bands else None)
        for key in entry.keys:
            current = self.by_key.get(key)
            # keep the copy that reached assistance: that is what later copies need
            if current is None or not _reached(current) or _reached(entry):
                self.by_key[key] = entry
        for band in entry.bands:
            self.by_band.setdefault(band, []).append(entry)
        self.order.append(entry)
        if entry.bands:
            self.band_order.append(entry)
        while self.order and self.order[0].time < now - self.keep:
            self._forget_keys(self.order.popleft())
        while self.band_order and self.band_order[0].time < now - self.near_keep:
            self._forget_bands(self.band_order.popleft())
        return entry

    def _forget_keys(self, entry: _Recent) -> None:
        for key in entry.keys:
            if self.by_key.get(key) is entry:
                del self.by_key[key]

    def _forget_bands(self, entry: _Recent) -> None:
        for band in entry.bands:
            entries = self.by_band.get(band)
            if entries is not None and entry in entries:
                entries.remove(entry)
                if not entries:
                    del self.by_band[band]
        entry.bands, entry.fp = (), None

    def written(self, entry: _Recent) -> None:
        """``entry``'s row is on disk: leave its near-duplicate lookups to the database."""
        self._forget_bands(entry)

    def remove(self, entry: _Recent) -> None:
        """Take back ``entry`` (its message was not accepted after all)."""
        self._forget_keys(entry)
        self._forget_bands(entry)

    def find(self, fp: dedup.Fingerprint, *, now: float, window: float,
             threshold: float) -> dedup.Match | None:
        """The best earlier copy held here, ranked as :func:`dedup.find_duplicate`
        ranks: one that reached assistance, then the stronger rule, the higher
        score, the more recent."""
        best: tuple[tuple[int, int, float, float], dedup.Match] | None = None

        def consider(entry: _Recent, kind: str, strength: int, score: float) -> None:
            nonlocal best
            match = dedup.Match(
                kind=kind, of_message_id=entry.message_id, earlier_time=entry.time,
                earlier_rowid=0, earlier_assistance=entry.remember.assistance,
                earlier_routed=entry.remember.routed, earlier_side=entry.remember.side,
                score=score, same_scope=bool(fp.scope) and entry.scope == fp.scope)
            rank = (int(match.assistance_has_it), strength, score, entry.time)
            if best is None or rank > best[0]:
                best = (rank, match)

        since = now - min(window, self.keep)
        for kind, key in self._keys(fp):
            entry = self.by_key.get((kind, key))
            if entry is not None and entry.time >= since:
                consider(entry, "message-id" if kind == "id" else "text",
                         3 if kind == "id" else 2, 1.0)
        if best is not None and best[1].assistance_has_it:
            return best[1]
        hits: dict[int, tuple[int, _Recent]] = {}
        for band in dedup.band_keys(fp):
            for entry in self.by_band.get(band, ()):
                count, _ = hits.get(id(entry), (0, entry))
                hits[id(entry)] = (count + 1, entry)
        since = now - min(window, self.near_keep)
        ranked = sorted(hits.values(), key=lambda h: (h[0], h[1].time), reverse=True)
        for _, entry in ranked[:dedup.MAX_CANDIDATES]:
            if entry.time < since or entry.fp is None:
                continue
            score = dedup.near_score(fp, entry.fp, threshold)
            if score is not None:
                consider(entry, "text", 1, score)
        return best[1] if best else None


def _reached(entry: _Recent) -> bool:
    return entry.remember.side == "assistance" or entry.remember.routed


class NullStore:
    """A Store that keeps nothing (tests that need no state)."""

    def record(self, rec: DecisionRecord, *, pending: Pending | None = None) -> None:
        pass

    def check_and_remember(self, fp: dedup.Fingerprint, plan: Plan, *,
                           pending: Pending | None = None) -> dedup.Match | None:
        plan(None)
        return None

    def guidance_allowed(self, to_addr: str, *, every: float, per_hour: int) -> str | None:
        return None

    def queue_guidance(self, to_addr: str, build: Callable[[], OutboxRow], *, every: float,
                       per_hour: int, queue_id: str = "",
                       pending: Pending | None = None) -> str:
        build()
        return "queued"

    def record_guidance_event(self, event: GuidanceEvent, *,
                              pending: Pending | None = None) -> None:
        pass

    def commit(self, pending: Pending) -> None:
        pass

    def abort(self, pending: Pending) -> None:
        pass

    def flush(self, timeout: float = 5.0) -> None:
        pass

    def close(self) -> None:
        pass


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _describe(exc: BaseException) -> str:
    # sqlite3 error texts name the problem ("database is locked", "disk I/O error")
    # and never carry row values, so they are safe to log.
    if isinstance(exc, sqlite3.Error | OSError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


# --- reports ---------------------------------------------------------------------

ROUTED_ACTIONS = ("copy", "redirect")


def report(db: sqlite_utils.Database, *, since: float, limit: int = 10) -> dict[str, Any]:
    """Summary of decisions since a Unix time: per action, per structure, top senders."""
    if "decisions" not in db.table_names():
        return {"since": since, "total": 0, "by_action": {}, "by_verdict": {},
                "by_structure": [], "wrong_address_senders": [], "secrets": {},
                "duplicates": {}, "guidance": {}, "last": []}
    q = db.execute
    total = q("select count(*) from decisions where time >= ?", [since]).fetchone()[0]
    by_action = dict(q("select action, count(*) from decisions where time >= ? "
                       "group by action order by count(*) desc", [since]).fetchall())
    by_verdict = dict(q("select verdict, count(*) from decisions where time >= ? "
                        "group by verdict order by count(*) desc", [since]).fetchall())
    by_structure = [
        {"structure": s or "unknown", "requests": n, "routed": routed, "duplicates": dup}
        for s, n, routed, dup in q(
            "select structure, count(*), "
            "sum(action in ('copy', 'redirect')), sum(duplicate is not null) "
            "from decisions where time >= ? and verdict in ('support', 'followup') "
            "group by structure order by count(*) desc", [since]).fetchall()]
    wrong = [
        {"sender": s, "structure": st or "unknown", "messages": n}
        for s, st, n in q(
            "select coalesce(nullif(from_addr, ''), mail_from), structure, count(*) "
            "from decisions where time >= ? and action in ('copy', 'redirect', 'tag') "
            "and verdict in ('support', 'followup') group by 1 "
            "order by count(*) desc, 1 limit ?", [since, limit]).fetchall()]
    duplicates = dict(q("select duplicate, count(*) from decisions where time >= ? "
                        "and duplicate is not null group by duplicate "
                        "order by count(*) desc", [since]).fetchall())
    guidance: dict[str, Any] = {}
    if "outbox" in db.table_names():
        guidance["outbox"] = dict(q("select status, count(*) from outbox where created >= ? "
                                    "group by status", [since]).fetchall())
        guidance["suppressed"] = dict(q(
            "select reason, count(*) from guidance_events where time >= ? "
            "and outcome = 'suppressed' group by reason order by count(*) desc",
            [since]).fetchall())
        guidance["pending_now"] = q("select count(*) from outbox where status = 'pending'"
                                    ).fetchone()[0]
    secrets: dict[str, dict[str, int]] = {}
    for (kinds,) in q("select secret_kinds from decisions "
                      "where time >= ? and secrets > 0", [since]).fetchall():
        for kind in filter(None, (kinds or "").split(",")):
            entry = secrets.setdefault(kind, {"messages": 0})
            entry["messages"] += 1
    secrets = dict(sorted(secrets.items(), key=lambda kv: (-kv[1]["messages"], kv[0])))
    cols = ["time", "queue_id", "mail_from", "structure", "verdict", "score", "action",
            "added", "removed", "rules"]
    last = [dict(zip(cols, row, strict=True)) for row in q(
        f"select {', '.join(cols)} from decisions where time >= ? "
        "order by time desc limit ?", [since, limit]).fetchall()]
    return {"since": since, "total": total, "by_action": by_action, "by_verdict": by_verdict,
            "by_structure": by_structure, "wrong_address_senders": wrong,
            "secrets": secrets, "duplicates": duplicates, "guidance": guidance,
            "last": last}
