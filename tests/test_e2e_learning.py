"""End to end through a real Postfix: staff forwards teach the milter a kind of request
it missed, and the report shows the misses, then the recovery.

The kind: requests written in Spanish by volunteers on personal addresses
(support/spanish.py) -- the shipped model knows no Spanish and misses them (measured
here, through Postfix).  Alice forwards five of them to the assistance address, as
staff do (attached or inline); the running milter learns from each forward, and the
next Spanish requests are routed, with no restart.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

from support import spanish
from support.mail import as_bytes
from support.net import wait_until
from support.world import example_sections

ALICE = "alice@example.org"


def database_of(milter) -> str:
    config = tomllib.loads(Path(milter.argv[milter.argv.index("--config") + 1]).read_text())
    return config["milter"]["database"]


def wait_rows(path: str, table: str, rows: int) -> None:
    def enough() -> bool:
        with sqlite3.connect(path) as conn:
            try:
                return conn.execute(f"select count(*) from {table}").fetchone()[0] >= rows
            except sqlite3.OperationalError:
                return False

    wait_until(enough, 10, f"{rows} rows in {table}")


def test_five_staff_forwards_teach_a_missed_kind_of_request(lab, sink, milters):
    helpdesk = milters.helpdesk(example_sections())
    database = database_of(helpdesk)
    originals = [spanish.request(s, b, n) for n, (s, b) in enumerate(spanish.TEACH)]
    for msg in originals:
        got = lab.deliver(sink, as_bytes(msg), str(msg["From"]).split("<")[1][:-1], [ALICE])
        assert got.rcpt_tos == [ALICE]                             # missed: not routed
        assert got.message["X-Helpdesk-Request"].startswith("other; structure=unknown;")
    wait_rows(database, "decisions", len(originals))

    for n, msg in enumerate(originals):
        forward = spanish.forward_as_attachment(msg) if n % 2 else spanish.forward_inline(msg)
        got = lab.deliver(sink, as_bytes(forward), ALICE, [spanish.ASSISTANCE])
        assert got.rcpt_tos == [spanish.ASSISTANCE]                # the forward itself: as is
        helpdesk.wait_log(r"learned a request from a staff forward \(original missed")
    wait_rows(database, "learned_examples", len(originals))

    for n, (subject, body) in enumerate(spanish.TEST):
        msg = spanish.request(subject, body, 20 + n)
        got = lab.deliver(sink, as_bytes(msg), f"voluntario{20 + n}@{spanish.SENDER}", [ALICE])
        assert got.rcpt_tos == sorted([ALICE, spanish.ASSISTANCE])  # routed now
        assert "site-learned" in got.message["X-Helpdesk-Request"]
    wait_rows(database, "decisions", len(originals) * 2 + len(spanish.TEST))

    out = subprocess.run(
        [sys.executable, "-m", "helpdesk_milter", "report", "--database", database, "--json"],
        capture_output=True, text=True, check=True, timeout=60)
    weeks = json.loads(out.stdout)["learning"]["weeks"]
    assert sum(w["forwarded"] for w in weeks.values()) == 5
    assert sum(w["missed"] for w in weeks.values()) == 5
    assert sum(w["routed_by_learning"] for w in weeks.values()) == len(spanish.TEST)
    text = subprocess.run(
        [sys.executable, "-m", "helpdesk_milter", "report", "--database", database],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert "learning from the site (5 label(s) kept)" in text
