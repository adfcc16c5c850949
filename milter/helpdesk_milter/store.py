"""State: one SQLite file, through sqlite-utils.

Contract:

* no message body and no secret value is ever written: a decision row holds
  envelope addresses, the Message-ID, the verdict and the action;
* milter callbacks never wait on the disk: ``record`` puts the row on a
  bounded queue and a single writer thread commits rows in batches, gathering
  for up to ``LINGER`` (0.1 s) before each commit (a full queue or a failing
  disk costs the row, never the mail);
* a duplicate lookup that cannot match costs no SQLite trip: an in-memory
  filter of every lookup key of the window (rebuilt from the file at start,
  aged out with the window) answers "no" for most mail;
* decisions do not depend on the writer's timing: fingerprint rows are
  numbered when they are decided, and until the file has them a lookup reads
  them from memory exactly as it would from the file;
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
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlite_utils
from sqlite_utils.migrations import Migrations

from . import dedup

log = logging.getLogger("helpdesk_milter.store")

T = TypeVar("T")

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


@migrations()
def m005_trace(db: sqlite_utils.Database) -> None:
    # One message traced (``report --queue-id/--message-id/--sender``): the envelope
    # recipients as they came and as they left, and the Message-ID of the earlier copy
    # a duplicate was matched to.  Rows written before this migration keep NULLs there.
    decisions = db["decisions"]
    decisions.add_column("rcpts", str)           # type: ignore[union-attr]
    decisions.add_column("final_rcpts", str)     # type: ignore[union-attr]
    decisions.add_column("duplicate_of", str)    # type: ignore[union-attr]
    decisions.create_index(["queue_id"])         # type: ignore[union-attr]
    decisions.create_index(["message_id"])       # type: ignore[union-attr]
    decisions.create_index(["from_addr"])        # type: ignore[union-attr]


@migrations()
def m006_observed(db: sqlite_utils.Database) -> None:
    # milter.mode = "observe": what each decision would have done, kept apart from
    # ``decisions`` (what was done), so the report's figures never mix the two.
    db["observed"].create({   # type: ignore[union-attr]
        "id": int, "time": float, "queue_id": str, "message_id": str, "mail_from": str,
        "from_addr": str, "rcpts": str, "structure": str, "verdict": str, "score": float,
        "rules": str, "action": str, "skip_reason": str, "watch_group": str,
        "assistance": str, "added": str, "removed": str, "duplicate": str, "size": int,
        "secrets": int, "secret_kinds": str, "guidance": str,
    }, pk="id")
    db["observed"].create_index(["time"])          # type: ignore[union-attr]


@migrations()
def m007_trace_observed(db: sqlite_utils.Database) -> None:
    # ``report --queue-id/--message-id/--sender`` reads observe mode's rows too: the
    # same lookups as on ``decisions``, indexed the same way.
    for column in ("queue_id", "message_id", "mail_from", "from_addr"):
        db["observed"].create_index([column], if_not_exists=True)  # type: ignore[union-attr]


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
    rcpts: str = ""                 # envelope recipients as they came, comma-separated
    final_rcpts: str = ""           # as they left: minus removed, plus added
    duplicate_of: str | None = None   # Message-ID of the earlier copy, for a duplicate


@dataclass(frozen=True)
class ObservedRecord:
    """Observe mode: one decision and what it would have done (nothing was)."""

    time: float
    queue_id: str
    message_id: str
    mail_from: str
    from_addr: str
    rcpts: str                      # envelope recipients, comma-separated
    structure: str | None
    verdict: str
    score: float
    rules: str
    action: str                     # what would have been done: copy, redirect, tag...
    skip_reason: str | None
    watch_group: str | None
    assistance: str | None
    added: str                      # recipients that would have been added
    removed: str                    # ... and removed
    duplicate: str | None
    size: int
    secrets: int                    # secrets that would have been redacted (kinds only)
    secret_kinds: str
    guidance: str                   # queued (would have been sent) | suppressed:REASON | ""


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
    """Every write takes an optional ``pending``: held there until ``commit``.

    ``limits_in_claim``: ``queue_guidance`` checks the guidance limits itself, at
    no extra cost, so a caller need not ask ``guidance_allowed`` first (a round
    trip to a shared store, a local read for SQLite).
    """

    limits_in_claim: bool

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
_TABLE = {DecisionRecord: "decisions", GuidanceEvent: "guidance_events", OutboxRow: "outbox",
          ObservedRecord: "observed"}
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

    Duplicate lookups first ask an in-memory filter of the window's lookup keys
    (``KeyFilter``): most messages share no key with anything remembered and
    cost no SQLite trip.  The others are looked up among the rows held in memory
    (``_Recent``: the rows decided but not on disk yet, so that two copies of one
    request arriving in parallel transactions see each other, and the newest
    ``RECENT_ROWS`` of those on disk), and in the file, through one shared read
    connection, only for the keys a second filter (``_on_file``: the keys of the
    rows the file held at start-up and of the rows memory let go) may hold.  The
    answer is the same whether or not the writer has caught up, and whether a row
    is read from memory or from the file.
    """

    limits_in_claim = False   # a local read first spares the DKIM check when limited

    BATCH = 200
    LINGER = 0.1               # seconds the writer gathers rows into one commit
    QUEUE_MAX = 20_000
    GUIDED_MAX = 10_000        # senders guided, kept in memory before a prune
    RECHECK = 1.0              # seconds between checks that the file is still ours
    EXPIRE_EVERY = 60.0        # seconds between expiry runs on the writer thread
    RECENT_ROWS = 1024         # fingerprint rows on disk still held in memory (~7 MB)

    def __init__(self, path: str | Path, *, window: float = 72 * 3600,
                 similarity: float = 0.75, clock: Callable[[], float] = time.time,
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
        self._read_checked = 0.0
        self._lock = threading.Lock()
        # Fingerprint rows decided and maybe not on disk yet, by lookup key; the
        # filter of every key of the window (None: no filter, always ask the file).
        self._unwritten = _Recent(self.RECENT_ROWS, self._let_go)
        self._filter: KeyFilter | None = None
        # keys the file may hold that memory does not (None: ask the file for every key)
        self._on_file: KeyFilter | None = None
        self._next_id = 1
        # guidance queued by this process and maybe not on disk yet (rate limits)
        self._guided: dict[str, float] = {}
        self._guided_times: collections.deque[float] = collections.deque()
        self._dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(self.QUEUE_MAX)
        self._closing = threading.Event()      # cuts the writer's linger short
        if readonly:
            return
        migrate(self.path)
        self._load_keys()
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
        keys = dedup.lookup_keys(fp)
        with self._lock:
            now = self.clock()
            match = None
            # only the keys the filter may hold are looked up (most of a message's LSH
            # bands are new even when one matches): a shorter query, the same answer
            masks = KeyFilter.masks(keys)
            held = None if self._filter is None else self._filter.holding(keys, now, masks)
            if held is None or held:
                match = self._find(fp, now, held)
            remember = plan(match)
            if remember is not None and not self.readonly:
                rowid = self._next_id
                self._next_id += 1
                row = dedup.row_of(fp, rowid=rowid, time=now, side=remember.side,
                                   assistance=remember.assistance, routed=remember.routed)
                self._unwritten.add(row, keys)
                if self._filter is not None:
                    self._filter.add(keys, now, masks)
                self._emit(("fingerprint", fp, remember, now, rowid), pending)
                if pending is not None:
                    # the filter keeps the keys: a false "maybe" costs one lookup
                    pending.undo.append(lambda: self._unwritten.remove(rowid))
        return match

    def _find(self, fp: dedup.Fingerprint, now: float,
              keys: Sequence[int] | None = None) -> dedup.Match | None:
        """The earlier copy of ``fp`` in the file and in the rows held in memory (lock
        held), looked up by ``keys`` (None: all of ``fp``'s).  The file is read only
        for the keys it may hold beyond memory's rows (``_on_file``): often none.
        A failing database costs the lookup of what is on disk, never the message."""
        by_key = self._unwritten.by_key
        if keys is None or self._on_file is None:
            on_file: Sequence[int] | None = None
            unwritten: dict[int, list[dedup.Row]] = by_key
        else:
            on_file = self._on_file.holding(keys, now)
            # A key's rows are in id order: its ROWS_PER_KEY newest are all a lookup
            # can rank (find_duplicate), however many memory holds.
            unwritten = {k: by_key[k][-dedup.ROWS_PER_KEY:] for k in keys if k in by_key}
        db: sqlite_utils.Database | None = None
        if on_file is None or on_file:
            try:
                db = self._reader()
            except Exception as exc:
                log.error("state database %s: duplicate lookup failed: %s", self.path,
                          _describe(exc))
        try:
            return dedup.find_duplicate(db, fp, now=now, window=self.window,
                                        threshold=self.similarity, unwritten=unwritten,
                                        only=keys, on_file=on_file)
        except Exception as exc:
            log.error("state database %s: duplicate lookup failed: %s", self.path,
                      _describe(exc))
            self._drop_reader()
            return dedup.find_duplicate(None, fp, now=now, window=self.window,
                                        threshold=self.similarity, unwritten=unwritten,
                                        only=keys)

    def _let_go(self, keys: Sequence[int], when: float) -> None:
        """A row on disk leaves memory (``_Recent``): the file answers for its keys."""
        if self._on_file is not None:
            self._on_file.add(keys, when)

    def _load_keys(self) -> None:
        """Start the filter and the row numbering from the file: every lookup key of
        the fingerprints still in the window, and the last row id."""
        db = open_database(self.path)
        try:
            since = self.clock() - self.window
            self._next_id = 1 + (db.execute(
                f"SELECT max(id) FROM [{dedup.FINGERPRINTS}]").fetchone()[0] or 0)
            keys, newest, oldest = [], since, None
            for key, when in db.execute(
                    f"SELECT k.key, f.time FROM [{dedup.KEYS}] k JOIN [{dedup.FINGERPRINTS}] f"
                    " ON f.id = k.fp WHERE f.time >= ?", [since]):
                keys.append(key)
                newest = max(newest, when)
                oldest = when if oldest is None else min(oldest, when)
        finally:
            db.close()
        self._filter = KeyFilter(self.window, capacity=2 * len(keys))
        self._on_file = KeyFilter(self.window, capacity=2 * len(keys))
        if keys:
            self._filter.load(keys, oldest=oldest or since, newest=newest)
            self._on_file.load(keys, oldest=oldest or since, newest=newest)
        # The read connection is opened now, not at the first lookup the filter
        # lets through: a process's open files stay the same from the start.
        with contextlib.suppress(Exception):
            self._reader()

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
        file was deleted or replaced under us (checked at most every
        ``RECHECK`` seconds: a ``stat`` per lookup cost a fifth of a miss)."""
        if self._read_db is not None and time.monotonic() < self._read_checked + self.RECHECK:
            return self._read_db
        self._read_checked = time.monotonic()
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
            if isinstance(item, tuple):
                self._lost([item])
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
        self._closing.set()
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
            # Gather what arrives in the next LINGER seconds into one commit: a
            # commit per message costs more than the rows themselves.
            batch, stop = take_batch(self._queue, first, self.BATCH, self.LINGER,
                                     self._closing)
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
                self._lost(batch)
                if db is not None:
                    with contextlib.suppress(Exception):
                        db.close()
                db = None
            finally:
                for _ in batch:
                    self._queue.task_done()
            if stop:
                break
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
        rows: dict[type, list[tuple[Any, ...]]] = {kind: [] for kind in _TABLE}
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
            for _, fp, remember, when, rowid in fingerprints:
                dedup.insert(db, fp, time=when, side=remember.side,
                             assistance=remember.assistance, routed=remember.routed,
                             queue_id=remember.queue_id, rowid=rowid)

    def _written(self, batch: list[Any]) -> None:
        """The batch is on disk: the file now answers for its fingerprints too; memory
        keeps the newest of them (``_Recent``), so their lookups need no file read."""
        rowids = [item[4] for item in batch if isinstance(item, tuple)]
        if rowids:
            with self._lock:
                for rowid in rowids:
                    self._unwritten.written(rowid)

    def _lost(self, batch: list[Any]) -> None:
        """Forget the fingerprint rows of ``batch`` held in memory: on disk now, or
        never to be (a full queue, a failing disk: the row is lost, not the mail)."""
        rowids = [item[4] for item in batch if isinstance(item, tuple)]
        if rowids:
            with self._lock:
                for rowid in rowids:
                    self._unwritten.remove(rowid)

    def _expire(self, db: sqlite_utils.Database) -> None:
        """Forget fingerprints older than the window, a bounded slice at a time."""
        before = self.clock() - self.window
        for _ in range(100):
            if dedup.expire(db, before=before, limit=500) < 500:
                break


class _Unwritten:
    """Fingerprint rows decided but maybe not on disk yet, by lookup key.

    ``dedup.find_duplicate`` reads them beside the file's rows, as if they were
    there: a row joins when it is decided and leaves once the writer has
    committed it (or lost it), so memory holds at most the writer's queue.  Not
    thread-safe: the store's lock guards it.
    """

    def __init__(self) -> None:
        self.by_key: dict[int, list[dedup.Row]] = {}
        self._rows: dict[int, tuple[dedup.Row, Sequence[int]]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: dedup.Row, keys: Sequence[int]) -> None:
        self._rows[row["id"]] = (row, keys)
        for key in keys:
            self.by_key.setdefault(key, []).append(row)

    def remove(self, rowid: int) -> None:
        row, keys = self._rows.pop(rowid, (None, ()))
        for key in keys:
            rows = self.by_key.get(key)
            if rows is not None:
                if rows[0] is row:
                    del rows[0]           # the oldest: what _Recent lets go of
                else:
                    rows[:] = [r for r in rows if r is not row]
                if not rows:
                    del self.by_key[key]


class _Recent(_Unwritten):
    """The rows not on disk yet (``_Unwritten``), and the newest ``retain`` rows the
    writer has put on disk: a lookup of their keys needs no file read.

    Each key's rows stay in id order (rows are added as they are numbered, under
    the store's lock).  A row on disk that leaves (the oldest first, beyond
    ``retain``) is handed to ``let_go`` with its keys and time, so that the
    file is asked for those keys from then on.  Not thread-safe: the store's lock
    guards it.
    """

    def __init__(self, retain: int, let_go: Callable[[Sequence[int], float], None]):
        super().__init__()
        self.retain = retain
        self._let_go = let_go
        self._on_disk: dict[int, None] = {}   # rowids written and still held, oldest first

    def written(self, rowid: int) -> None:
        """The row ``rowid`` is on disk: keep it while it is among the newest."""
        if rowid not in self._rows:
            return                            # forgotten meanwhile (an abort)
        self._on_disk[rowid] = None
        while len(self._on_disk) > self.retain:
            oldest = next(iter(self._on_disk))
            row, keys = self._rows[oldest]
            self._let_go(keys, row["time"])
            self.remove(oldest)

    def remove(self, rowid: int) -> None:
        self._on_disk.pop(rowid, None)
        super().remove(rowid)


class KeyFilter:
    """Which 64-bit lookup keys may belong to a fingerprint remembered within the
    window: never a false "no", rarely a false "maybe".

    A blocked Bloom filter (one 64-bit word per key, ``BITS`` bits set in it, 32
    bits of room per key: a few false "maybes" in 10,000 keys at capacity), in
    generations so that it forgets with the window: a generation takes keys for
    at most half the window, or until it is full (the next one is twice as
    large), and is dropped once its newest key is older than the window.  A
    lookup tests every live generation (two or three).  Not thread-safe.
    """

    BITS = 5
    MIN_CAPACITY = 1 << 16

    def __init__(self, window: float, *, capacity: int = 0):
        self.window = window
        self.capacity = max(self.MIN_CAPACITY, capacity)
        self._gens: list[_Generation] = []

    @staticmethod
    def _mask(key: int) -> int:
        """The bits a key sets in its block (``masks`` computes the same for many)."""
        h = key >> 34                 # the block index uses the low bits
        return (1 << (h & 63) | 1 << (h >> 6 & 63) | 1 << (h >> 12 & 63)
                | 1 << (h >> 18 & 63) | 1 << (h >> 24 & 63))

    @staticmethod
    def masks(keys: Sequence[int]) -> list[int]:
        """``_mask`` of each key, in one comprehension (no call per key): a lookup
        computes them once for ``holding`` and ``add``.  Each of the five bits is
        looked up in a table of the 64 one-bit masks (no new integer per shift).  A
        table of the 4,096 two-bit masks needed three lookups instead of five and won
        in a warm loop, but its 4,096 integers (~160 KB) are out of the cache by the
        time a message gets here: in the decision it cost 10-19 us more (paired)."""
        bit = _BIT_MASKS
        return [bit[h & 63] | bit[h >> 6 & 63] | bit[h >> 12 & 63] | bit[h >> 18 & 63]
                | bit[h >> 24 & 63] for h in [key >> 34 for key in keys]]

    def may_hold(self, keys: Sequence[int], now: float) -> bool:
        """Whether any of ``keys`` may be held (see ``holding``)."""
        return bool(self.holding(keys, now))

    def holding(self, keys: Sequence[int], now: float,
                masks: Sequence[int] | None = None) -> list[int]:
        """The ``keys`` that may be held (``may_hold`` key by key): the others are
        certainly not in the window.  ``masks``: ``masks(keys)``, when known."""
        since = now - self.window
        gens = [(gen.words, gen.size) for gen in self._gens if gen.newest >= since]
        if not gens:
            return []
        out = []
        for key, mask in zip(keys, self.masks(keys) if masks is None else masks,
                             strict=True):
            for words, size in gens:
                if words[key & size] & mask == mask:
                    out.append(key)
                    break
        return out

    def add(self, keys: Sequence[int], now: float,
            masks: Sequence[int] | None = None) -> None:
        """Hold ``keys``, seen at ``now`` (``masks``: ``masks(keys)``, when known)."""
        gen = self._gens[-1] if self._gens else None
        if gen is None or gen.count + len(keys) > gen.capacity \
                or gen.oldest < now - self.window / 2:
            capacity = self.capacity
            if gen is not None and gen.count + len(keys) > gen.capacity:
                capacity = 2 * gen.capacity
            gen = _Generation(capacity, now)
            # the generations wholly out of the window go
            self._gens = [g for g in self._gens if g.newest >= now - self.window] + [gen]
        words, size = gen.words, gen.size
        for key, mask in zip(keys, self.masks(keys) if masks is None else masks, strict=True):
            words[key & size] |= mask
        gen.count += len(keys)
        gen.newest = max(gen.newest, now)

    def load(self, keys: Sequence[int], *, oldest: float, newest: float) -> None:
        """One generation of ``keys`` seen from ``oldest`` to ``newest`` (start-up)."""
        gen = _Generation(max(self.MIN_CAPACITY, 2 * len(keys)), oldest)
        words, size = gen.words, gen.size
        for key, mask in zip(keys, self.masks(keys), strict=True):
            words[key & size] |= mask
        gen.count, gen.newest = len(keys), newest
        self._gens.append(gen)


# KeyFilter.masks' table: the bit of a 6-bit number
_BIT_MASKS = [1 << n for n in range(64)]


class _Generation:
    __slots__ = ("capacity", "count", "newest", "oldest", "size", "words")

    def __init__(self, capacity: int, now: float):
        blocks = 1 << max(1, (capacity // 2 - 1).bit_length())   # 2 keys per word
        self.words = array("Q", bytes(8 * blocks))
        self.size = blocks - 1                # mask of the block index
        self.capacity = 2 * blocks
        self.count = 0
        self.oldest = self.newest = now


class NullStore:
    """A Store that keeps nothing (tests that need no state)."""

    limits_in_claim = False

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


def take_batch(q: queue.Queue[T | None], first: T, limit: int, linger: float = 0.0,
               wake: threading.Event | None = None) -> tuple[list[T], bool]:
    """A writer thread's next batch: ``first``, then what else is queued (waiting up to
    ``linger`` seconds for more), at most ``limit`` items; and True when the end mark
    (None) was met, taken from the queue: the writer stops after this batch.  The
    caller marks the batch's items done.

    With ``wake``, the writer sleeps out the linger on that event (set it to cut the
    wait short: at close) and then takes what has been queued meanwhile: one wake-up
    per batch.  Without it, the linger is spent in ``q.get``, which wakes the writer
    for every item put: on a busy milter, a thread switch per message that the
    deciding threads pay for (they wait for the interpreter lock meanwhile).
    """
    batch = [first]
    get: Callable[[], T | None]
    if wake is not None:
        if linger > 0 and q.qsize() < limit - 1:
            wake.wait(linger)
        get = q.get_nowait
    else:
        deadline = time.monotonic() + linger

        def get() -> T | None:
            return q.get(timeout=max(0.0, deadline - time.monotonic()))
    while len(batch) < limit:
        try:
            item = get()
        except queue.Empty:
            break
        if item is None:
            q.task_done()
            return batch, True
        batch.append(item)
    return batch, False


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
    cols = ["time", "queue_id", "message_id", "mail_from", "structure", "verdict", "score",
            "action", "added", "removed", "rules", "duplicate", "duplicate_of"]
    cols = [c for c in cols if c in _decision_columns(db)]
    last = [dict(zip(cols, row, strict=True)) for row in q(
        f"select {', '.join(cols)} from decisions where time >= ? "
        "order by time desc limit ?", [since, limit]).fetchall()]
    return {"since": since, "total": total, "by_action": by_action, "by_verdict": by_verdict,
            "by_structure": by_structure, "wrong_address_senders": wrong,
            "secrets": secrets, "duplicates": duplicates, "guidance": guidance,
            "last": last}


# What one traced message shows (``report --queue-id``); a file the milter has not
# migrated yet (``report`` opens it read-only) lacks the newest columns: they read None.
TRACE_COLUMNS = ("time", "queue_id", "message_id", "mail_from", "from_addr", "rcpts",
                 "final_rcpts", "added", "removed", "verdict", "score", "structure", "rules",
                 "action", "skip_reason", "watch_group", "assistance", "duplicate",
                 "duplicate_of", "secrets", "secret_kinds", "size")


def _decision_columns(db: sqlite_utils.Database, table: str = "decisions") -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info([{table}])").fetchall()}


def trace(db: sqlite_utils.Database, *, queue_id: str | None = None,
          message_id: str | None = None, sender: str | None = None,
          limit: int = 20) -> list[dict[str, Any]]:
    """The decisions recorded for one message, newest first: by Postfix queue id, by
    Message-ID (with or without its angle brackets) or by sender (envelope sender or
    From address, case-insensitive).  Each row holds recipients, verdict, rules and
    secret kinds and counts; a secret value is never stored, so never shown.

    Observe mode's rows (table ``observed``) come too, with ``mode = "observe"``:
    their ``added``/``removed``/``action`` are what would have been done, and their
    final recipients are the original ones (nothing was changed)."""
    if queue_id is not None:
        where, params = "queue_id = ?", [queue_id.strip()]
    elif message_id is not None:
        bare = message_id.strip().strip("<>")
        where, params = "message_id in (?, ?)", [f"<{bare}>", bare]
    elif sender is not None:
        address = sender.strip().strip("<>").lower()
        # two indexed lookups, not an OR the planner may turn into a scan
        where = ("id in (select id from {table} where mail_from = ? "
                 "union select id from {table} where from_addr = ?)")
        params = [address, address]
    else:
        raise ValueError("trace needs a queue id, a Message-ID or a sender")
    out = []
    tables = db.table_names()
    for table, mode in (("decisions", "enforce"), ("observed", "observe")):
        if table not in tables:
            continue
        present = _decision_columns(db, table)
        select = ", ".join(c if c in present else f"NULL AS {c}" for c in TRACE_COLUMNS)
        rows = db.execute(f"SELECT {select} FROM [{table}] "
                          f"WHERE {where.format(table=f'[{table}]')} "
                          "ORDER BY time DESC, id DESC LIMIT ?", [*params, limit]).fetchall()
        for row in rows:
            rec: dict[str, Any] = dict(zip(TRACE_COLUMNS, row, strict=True))
            rec["mode"] = mode
            if mode == "observe" and rec["final_rcpts"] is None:
                rec["final_rcpts"] = rec["rcpts"]
            for name in ("rcpts", "final_rcpts", "added", "removed", "rules",
                         "secret_kinds"):
                value = rec[name]
                rec[name] = None if value is None else [v for v in value.split(",") if v]
            out.append(rec)
    out.sort(key=lambda r: r["time"] or 0.0, reverse=True)
    return out[:limit]


def observed_report(db: sqlite_utils.Database, *, since: float,
                    limit: int = 10) -> dict[str, Any]:
    """What observe mode (``milter.mode = "observe"``) would have done since a Unix
    time: decisions per action, routing per structure and assistance address, the
    recipients it would have removed, secrets it would have redacted, guidance it
    would have sent, and the last decisions.  Empty when observe mode never ran."""
    out: dict[str, Any] = {"total": 0, "by_action": {}, "routed": [], "would_remove": 0,
                           "duplicates": {}, "secrets": {}, "guidance": {}, "last": []}
    if "observed" not in db.table_names():
        return out
    q = db.execute
    out["total"] = q("select count(*) from observed where time >= ?", [since]).fetchone()[0]
    out["by_action"] = dict(q("select action, count(*) from observed where time >= ? "
                              "group by action order by count(*) desc", [since]).fetchall())
    out["routed"] = [
        {"structure": s or "unknown", "assistance": a, "action": act, "messages": n}
        for s, a, act, n in q(
            "select structure, assistance, action, count(*) from observed where time >= ? "
            f"and action in {ROUTED_ACTIONS} group by 1, 2, 3 order by 4 desc, 1 limit ?",
            [since, limit]).fetchall()]
    out["would_remove"] = q("select count(*) from observed where time >= ? and removed != ''",
                            [since]).fetchone()[0]
    out["duplicates"] = dict(q("select duplicate, count(*) from observed where time >= ? "
                               "and duplicate is not null group by 1", [since]).fetchall())
    secrets: dict[str, int] = {}
    for (kinds,) in q("select secret_kinds from observed where time >= ? and secrets > 0",
                      [since]).fetchall():
        for kind in filter(None, (kinds or "").split(",")):
            secrets[kind] = secrets.get(kind, 0) + 1
    out["secrets"] = dict(sorted(secrets.items(), key=lambda kv: (-kv[1], kv[0])))
    out["guidance"] = dict(q("select guidance, count(*) from observed where time >= ? "
                             "and guidance != '' group by 1 order by 2 desc",
                             [since]).fetchall())
    cols = ["time", "queue_id", "message_id", "mail_from", "rcpts", "structure", "verdict",
            "score", "action", "added", "removed", "duplicate", "secrets", "guidance"]
    out["last"] = [dict(zip(cols, row, strict=True)) for row in q(
        f"select {', '.join(cols)} from observed where time >= ? "
        "order by time desc, id desc limit ?", [since, limit]).fetchall()]
    return out
