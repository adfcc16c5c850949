"""The outbox sender against real sockets: each attempt is reported ("sent", "retry",
"failed") to whoever counts them (the metrics), and the row says the same."""

from __future__ import annotations

import sqlite3
import time

from helpdesk_milter.outbox import OutboxSender
from helpdesk_milter.store import OutboxRow, SQLiteStore, open_database
from support.net import free_port
from support.sink import Sink


def queue_one(database, to: str, created: float) -> None:
    store = SQLiteStore(database)
    row = OutboxRow(created=created, to_addr=to, queue_id="Q1", lang="fr", cases="rerouted",
                    message=b"Subject: guide\r\nAuto-Submitted: auto-replied\r\n\r\nBonjour\r\n")
    assert store.queue_guidance(to, lambda: row, every=60.0, per_hour=30) == "queued"
    store.flush()
    store.close()


def status(database) -> list[tuple[str, int]]:
    with sqlite3.connect(database) as conn:
        return conn.execute("select status, attempts from outbox").fetchall()


def test_a_relay_down_is_a_retry_then_given_up(tmp_path):
    database = tmp_path / "state.db"
    now = time.time()
    queue_one(database, "client@mairie-exemple.fr", created=now)
    outcomes: list[str] = []
    clock = [now]
    sender = OutboxSender(str(database), f"127.0.0.1:{free_port()}", give_up=3600.0,
                          retry_after=60.0, clock=lambda: clock[0], timeout=2.0,
                          on_result=outcomes.append)
    db = open_database(database)
    assert sender.send_due(db) == 0
    assert outcomes == ["retry"] and status(database) == [("pending", 1)]
    clock[0] = now + 7200                     # past give_up, and the row is due again
    assert sender.send_due(db) == 0
    assert outcomes == ["retry", "failed"] and status(database) == [("failed", 2)]
    db.close()


def test_a_sent_guidance_mail_is_reported_sent(tmp_path):
    database = tmp_path / "state.db"
    queue_one(database, "client@mairie-exemple.fr", created=time.time())
    outcomes: list[str] = []
    with Sink(tmp_path / "relay") as relay:
        sender = OutboxSender(str(database), f"127.0.0.1:{relay.port}", give_up=3600.0,
                              on_result=outcomes.append)
        db = open_database(database)
        assert sender.send_due(db) == 1
        db.close()
        assert [list(d.rcpt_tos) for d in relay.deliveries] == [["client@mairie-exemple.fr"]]
    assert outcomes == ["sent"] and status(database) == [("sent", 1)]
