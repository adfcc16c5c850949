"""The SQLite store: migrations, batched writes off the callback thread, reports."""

from __future__ import annotations

import sqlite3
import time

from helpdesk_milter.store import DecisionRecord, SQLiteStore, open_database, report


def record(**overrides) -> DecisionRecord:
    values = dict(time=time.time(), queue_id="4AB12C", message_id="<m1@mairie-exemple.fr>",
                  mail_from="secretariat@mairie-exemple.fr",
                  from_addr="secretariat@mairie-exemple.fr", structure="mairie-exemple",
                  verdict="support", score=7.5, rules="problem-fr,tool,known-client",
                  action="copy", skip_reason=None, watch_group="team",
                  assistance="mairie-exemple@assistance.example.org",
                  added="mairie-exemple@assistance.example.org", removed="", duplicate=None,
                  size=2048)
    values.update(overrides)
    return DecisionRecord(**values)


def test_rows_are_written_in_wal_mode_and_reported(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.record(record())
    store.record(record(queue_id="B", action="redirect", removed="contact@example.org"))
    store.record(record(queue_id="C", mail_from="x@inconnu.example", from_addr="",
                        structure=None, action="copy"))
    store.record(record(queue_id="D", verdict="other", action="none", added=""))
    store.record(record(queue_id="E", verdict="support", action="duplicate",
                        duplicate="same-transaction", added=""))
    store.close()

    conn = sqlite3.connect(path)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert conn.execute("select count(*) from decisions").fetchone()[0] == 5
    conn.close()

    data = report(open_database(path, readonly=True), since=0, limit=10)
    assert data["total"] == 5
    assert data["by_action"] == {"copy": 2, "redirect": 1, "none": 1, "duplicate": 1}
    assert data["by_structure"][0] == {"structure": "mairie-exemple", "requests": 3,
                                       "routed": 2, "duplicates": 1}
    assert {"structure": "unknown", "requests": 1, "routed": 1, "duplicates": 0} in \
        data["by_structure"]
    assert data["wrong_address_senders"][0] == {
        "sender": "secretariat@mairie-exemple.fr", "structure": "mairie-exemple", "messages": 2}
    assert [r["queue_id"] for r in data["last"]][:1] == ["E"]
    assert data["duplicates"] == {"same-transaction": 1}


def test_migrations_are_idempotent(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    names = [r[0] for r in conn.execute("select name from _sqlite_migrations")]
    # each applied once, in the order they are declared (later ones may follow)
    assert names[:5] == ["m001_decisions", "m002_secrets", "m003_fingerprints",
                         "m004_guidance", "m005_trace"]
    assert len(names) == len(set(names))


def test_record_never_blocks_even_when_the_database_is_locked(tmp_path):
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("begin exclusive")
    started = time.monotonic()
    for n in range(500):
        store.record(record(queue_id=f"Q{n}"))
    assert time.monotonic() - started < 0.5   # callbacks only enqueue
    locker.execute("rollback")
    locker.close()
    store.close()
    conn = sqlite3.connect(path)
    # The writer waits up to busy_timeout (5 s) for the lock, so nothing was lost here.
    assert conn.execute("select count(*) from decisions").fetchone()[0] == 500


def test_report_on_an_empty_database(tmp_path):
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    data = report(open_database(path, readonly=True), since=0)
    assert data["total"] == 0 and data["last"] == []
