"""A decision leaves nothing behind until the milter has applied it.

If applying the actions fails, the message is temp-failed (or passed on
unchanged) and comes back: its retry must be decided afresh, not taken for a
duplicate of itself, and must still be allowed a guidance mail.
"""

from __future__ import annotations

import sqlite3

from helpdesk_milter.config import parse_config
from helpdesk_milter.engine import Engine
from helpdesk_milter.message import Envelope
from helpdesk_milter.store import SQLiteStore
from support.mail import as_bytes, make_message
from support.milterproc import dump_toml
from support.world import CLIENT, CLIENT_ASSISTANCE, example_sections

RAW = as_bytes(make_message(sender=CLIENT, to="contact@example.org",
                            subject="Partage réseau inaccessible",
                            body="Bonjour,\n\nLe partage réseau de l'état civil est "
                                 "inaccessible depuis 8 h 30, erreur d'accès.\n"
                                 "Pouvez-vous regarder ?\n"))
ENV = Envelope(mail_from=CLIENT, rcpts=("contact@example.org",), queue_id="Q1")


def engine(tmp_path):
    data = example_sections(autoreply={"enabled": True, "trust": "known"})
    data["milter"]["database"] = str(tmp_path / "state.db")
    store = SQLiteStore(tmp_path / "state.db")
    return Engine(parse_config(dump_toml(data)), store=store, dnsfunc=lambda *a, **k: None)


def rows(tmp_path, table):
    with sqlite3.connect(tmp_path / "state.db") as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_an_aborted_decision_leaves_nothing(tmp_path):
    eng = engine(tmp_path)
    first = eng.process_raw(ENV, RAW, defer=True)
    assert first.decision.add_rcpts == (CLIENT_ASSISTANCE,)
    assert first.decision.guidance == "queued"
    eng.abort(first)
    retry = eng.process_raw(ENV, RAW).decision       # the client retries the same message
    assert retry.duplicate is None and retry.add_rcpts == (CLIENT_ASSISTANCE,)
    assert retry.guidance == "queued"
    eng.store.close()
    assert rows(tmp_path, "decisions") == 1
    assert rows(tmp_path, "outbox") == 1
    assert rows(tmp_path, "dedup_fingerprints") == 1


def test_a_committed_decision_is_remembered(tmp_path):
    eng = engine(tmp_path)
    first = eng.process_raw(ENV, RAW, defer=True)
    eng.commit(first)
    again = eng.process_raw(ENV, RAW).decision
    assert again.duplicate == "message-id" and again.add_rcpts == ()
    assert again.guidance is None or again.guidance.startswith("suppressed")
    eng.store.close()
    assert rows(tmp_path, "outbox") == 1


def test_nothing_is_written_before_commit(tmp_path):
    eng = engine(tmp_path)
    outcome = eng.process_raw(ENV, RAW, defer=True)
    eng.store.flush()
    assert rows(tmp_path, "decisions") == 0 and rows(tmp_path, "outbox") == 0
    eng.commit(outcome)
    eng.store.close()
    assert rows(tmp_path, "decisions") == 1 and rows(tmp_path, "outbox") == 1
