"""End to end through a real Postfix: mail that is not the helpdesk's is never streamed.

With ``secrets.scope = "helpdesk"`` (the default), a message with no watched and
no assistance recipient is accepted at the end of the envelope (the milter's
``data`` step): Postfix sends the milter none of its headers and body, so it
reaches its mailbox byte for byte as sent, secrets, forged ``X-Helpdesk-*``
headers and all (the milter would have removed those had it read them).  With
``secrets.scope = "all"`` the same message is read, redacted and cleaned.
"""

from __future__ import annotations

import sqlite3
import tomllib
from pathlib import Path

import pytest

from support.mail import as_bytes, make_message
from support.world import CLIENT, example_sections

PARTNER = "partenaire@ailleurs.example"
SECRET = "Tournesol-88"


def secret_message(message_id: str) -> bytes:
    msg = make_message(to=PARTNER, subject=f"Accès wifi : mdp {SECRET}",
                       body=f"Bonjour,\n\nPour info le mot de passe du wifi est {SECRET}\n",
                       headers={"X-Helpdesk-Routed": "to=pirate@evil.example; mode=copy"},
                       message_id=message_id)
    return as_bytes(msg)


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return head, body


def decision_rows(milter) -> int:
    config = tomllib.loads(Path(milter.argv[milter.argv.index("--config") + 1]).read_text())
    with sqlite3.connect(config["milter"]["database"]) as conn:
        return conn.execute("select count(*) from decisions").fetchone()[0]


def test_unwatched_mail_is_accepted_at_end_of_envelope_unread(lab, sink, milters):
    milter = milters.helpdesk(example_sections())
    offset = len(milter.log_text())
    raw = secret_message("<step-out-1@mairie-exemple.fr>")
    got = lab.deliver(sink, raw, CLIENT, [PARTNER])
    assert got.rcpt_tos == [PARTNER]
    head, body = split(got[0].raw)
    assert body == split(raw)[1]                       # byte for byte, secret included
    assert SECRET.encode() in head                     # the Subject too
    # the forged header is still there: the milter never saw the header block
    assert b"\nX-Helpdesk-Routed: to=pirate@evil.example" in head
    assert not any(line.lower().startswith(b"x-helpdesk-") and b"pirate" not in line
                   for line in head.split(b"\n"))
    line = milter.wait_log(r"(\w+): not watched: from=<[^>]+> nrcpt=1 accepted at end of "
                           r"envelope", since=offset)
    assert line
    # no header or body callback ran: the one line per message is the step-out line
    tail = milter.log_text(offset)
    assert "verdict=" not in tail and "size=" not in tail
    assert decision_rows(milter) == 0


def test_scope_all_reads_and_redacts_unwatched_mail(lab, sink, milters):
    milter = milters.helpdesk(example_sections(secrets={"scope": "all"}))
    offset = len(milter.log_text())
    got = lab.deliver(sink, secret_message("<step-out-2@mairie-exemple.fr>"), CLIENT,
                      [PARTNER])
    assert SECRET.encode() not in got[0].raw
    assert got.message["X-Helpdesk-Routed"] is None          # forged header removed
    assert got.message["X-Helpdesk-Redacted"].startswith("count=")
    assert "[secret removed: password]" in got.message["Subject"]
    milter.wait_log(r"not watched: from=<[^>]+> nrcpt=1 size=\d+ secrets=", since=offset)
    assert "accepted at end of envelope" not in milter.log_text(offset)


@pytest.mark.parametrize("watched", ["alice@example.org", "accueil@assistance.example.org"])
def test_one_helpdesk_recipient_is_enough_to_read_the_mail(lab, sink, milters, watched):
    milters.helpdesk(example_sections())
    got = lab.deliver(sink, secret_message(f"<step-out-3-{watched}>"), CLIENT,
                      [PARTNER, watched])
    assert SECRET.encode() not in got[0].raw
    assert got.message["X-Helpdesk-Request"] is not None
