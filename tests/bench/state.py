"""State database of a given size, for measuring how cost grows with it.

``prefill(path, rows)`` creates the milter's schema (``store.migrate``, the real
migrations) and fills every table with ``rows`` realistic rows, spread over the last
30 days, so that indexes and page caches are as large as on a server that has
handled that many messages.

Pluggable, so that later tables (the dedup fingerprints) are measured without
touching the rest of the benchmark:

- ``ROWS[table]`` is a row generator ``(rng, i, when) -> {column: value}``
  (``i`` counts from 0, ``when`` is the row's Unix time, oldest first). Columns it
  does not give (a table nobody registered, a column a later migration added) get
  generic values that follow the column type, and the report says which;
- ``LOOKUPS[name]`` is a per-message query the milter makes (or will make) against
  the state, ``(db, rng, now) -> None``; each is timed against every database size.
  Register the real dedup lookups here when they land, e.g.::

      @lookup("fingerprint")
      def _fingerprint(db, rng, now):
          db.execute("select 1 from fingerprints where hash = ? and time > ?",
                     [rng.getrandbits(63), now - 72 * 3600]).fetchall()
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.mix import CLIENT_SENDERS, TEAM, UNKNOWN_SENDERS
from helpdesk_milter.store import migrate

Row = dict[str, Any]
RowMaker = Callable[[random.Random, int, float], Row]   # (rng, i, when) -> row
Lookup = Callable[[sqlite3.Connection, random.Random, float], None]

ROWS: dict[str, RowMaker] = {}
LOOKUPS: dict[str, Lookup] = {}
SPAN = 30 * 86400.0                  # rows are spread over the last 30 days
BATCH = 20_000


def rows_for(table: str) -> Callable[[RowMaker], RowMaker]:
    """Decorator: register the row generator of ``table``."""
    def register(fn: RowMaker) -> RowMaker:
        ROWS[table] = fn
        return fn
    return register


def lookup(name: str) -> Callable[[Lookup], Lookup]:
    """Decorator: register a per-message lookup to time against each database size."""
    def register(fn: Lookup) -> Lookup:
        LOOKUPS[name] = fn
        return fn
    return register


_SENDERS = [s[0] for s in CLIENT_SENDERS + UNKNOWN_SENDERS] + [
    f"user{k}@client{k % 300}.example" for k in range(3000)]
_ACTIONS = ("copy", "copy", "redirect", "none", "none", "none", "skip", "duplicate", "tag")


@rows_for("decisions")
def _decision(rng: random.Random, i: int, when: float) -> Row:
    sender = rng.choice(_SENDERS)
    structure = None if rng.random() < 0.3 else sender.split("@", 1)[1].split(".")[0]
    action = rng.choice(_ACTIONS)
    verdict = "support" if action in ("copy", "redirect", "duplicate") else rng.choice(
        ("other", "other", "followup"))
    assistance = f"{structure or 'accueil'}@assistance.example.org"
    secret = rng.random() < 0.07
    return {
        "id": i + 1, "time": when, "queue_id": f"{rng.getrandbits(44):011X}",
        "message_id": f"{rng.getrandbits(64):016x}@{sender.split('@')[1]}",
        "mail_from": sender, "from_addr": sender, "structure": structure, "verdict": verdict,
        "score": round(rng.uniform(0, 12), 1), "rules": "problem-fr,tool,known-client",
        "action": action, "skip_reason": "list" if action == "skip" else None,
        "watch_group": "team" if rng.random() < 0.7 else "contact",
        "assistance": assistance,
        "added": assistance if action in ("copy", "redirect") else "",
        "removed": rng.choice(TEAM) if action == "redirect" else "",
        "duplicate": "message-id" if action == "duplicate" else None,
        "size": rng.randrange(800, 60_000),
        "secrets": 1 if secret else 0, "secret_kinds": "password" if secret else None,
    }


@lookup("sender-recent")
def _sender_recent(db: sqlite3.Connection, rng: random.Random, now: float) -> None:
    # The autoreply rate limit's question ("did this sender get a guidance mail in
    # the last 7 days?"), on the indexed mail_from column.
    db.execute("select count(*) from decisions where mail_from = ? and time > ?",
               [rng.choice(_SENDERS), now - 7 * 86400]).fetchone()


def _generic_value(name: str, decl: str, pk: bool, rng: random.Random, i: int,
                   when: float) -> Any:
    """A value for a column nobody described: by name and declared type."""
    decl = decl.upper()
    lname = name.lower()
    if pk and "INT" in decl:
        return i + 1
    if "time" in lname or lname.endswith("_at") or lname in ("ts", "expires"):
        return when
    if "INT" in decl:
        return rng.getrandbits(62)
    if "REAL" in decl or "FLOA" in decl:
        return rng.random()
    if "BLOB" in decl:
        return rng.randbytes(16)
    return f"{rng.getrandbits(64):016x}"


def tables(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute(
        "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' "
        "and name != '_sqlite_migrations'")]


def _columns(db: sqlite3.Connection, table: str) -> list[tuple[str, str, bool]]:
    return [(r[1], r[2] or "", bool(r[5])) for r in db.execute(f"pragma table_info([{table}])")]


def prefill(path: Path, rows: int, *, seed: int = 11,
            now: float | None = None) -> dict[str, Any]:
    """Create the schema at ``path`` and put ``rows`` rows in every table.

    Returns what was done: per table how its rows were made (``"registered"``,
    ``"generic"``, or which columns were generic), the seconds it took, the file size.
    """
    now = time.time() if now is None else now
    migrate(path)
    rng = random.Random(seed)
    started = time.monotonic()
    filled: dict[str, str] = {}
    db = sqlite3.connect(path)
    try:
        db.execute("pragma journal_mode = wal")
        db.execute("pragma synchronous = off")    # a disposable file: fill it fast
        for table in tables(db):
            columns = _columns(db, table)
            maker = ROWS.get(table)
            given = set(maker(random.Random(0), 0, now)) if maker else set()
            generic = [c[0] for c in columns if c[0] not in given]
            filled[table] = ("registered" if not generic else
                             "generic" if not given else
                             f"registered, generic columns: {', '.join(generic)}")
            names = ", ".join(f"[{c[0]}]" for c in columns)
            marks = ", ".join("?" * len(columns))
            start = now - SPAN
            step = SPAN / max(1, rows)

            def row(i: int, when: float, maker: RowMaker | None = maker,
                    columns: list[tuple[str, str, bool]] = columns) -> tuple[Any, ...]:
                values = maker(rng, i, when) if maker else {}
                return tuple(values[name] if name in values
                             else _generic_value(name, decl, pk, rng, i, when)
                             for name, decl, pk in columns)

            with db:
                for chunk in _chunks(rows):
                    db.executemany(f"insert into [{table}] ({names}) values ({marks})",
                                   (row(i, start + i * step) for i in chunk))
        db.execute("pragma wal_checkpoint(truncate)")
        db.execute("analyze")
    finally:
        db.close()
    return {"rows": rows, "tables": filled, "seconds": round(time.monotonic() - started, 1),
            "file_mb": round(path.stat().st_size / 1e6, 1)}


def _chunks(n: int) -> Iterator[range]:
    for start in range(0, n, BATCH):
        yield range(start, min(n, start + BATCH))


def time_lookups(path: Path, *, calls: int = 2000, seed: int = 5) -> dict[str, float]:
    """µs of CPU per call of each registered lookup (after a warm-up), read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rng = random.Random(seed)
    now = time.time()
    out: dict[str, float] = {}
    try:
        for name, fn in LOOKUPS.items():
            for _ in range(50):                       # warm the page cache
                fn(db, rng, now)
            t0 = time.thread_time()
            for _ in range(calls):
                fn(db, rng, now)
            out[name] = (time.thread_time() - t0) / calls * 1e6
    finally:
        db.close()
    return out
