"""Observe mode (``milter.mode = "observe"``), end to end through a real Postfix.

The milter decides every message, logs and records what it would have done, and
changes nothing: the sink receives each message byte for byte as it was sent
(apart from Postfix's own Received line), to its original recipients only; no
guidance mail leaves; no fingerprint is kept (a later copy must never be dropped
as the duplicate of one that never reached assistance); ``report`` shows the
would-be routing.  A reload switches it to enforce mode, and the next message is
routed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from support.mail import as_bytes, make_message
from support.milterproc import dump_toml
from support.world import CLIENT, CLIENT_ASSISTANCE, example_sections

SECRET = "Marmotte-4821!"
SUPPORT_BODY = (
    "Bonjour,\n\nDepuis ce matin, impossible de me connecter à Nextcloud : le client "
    "de synchronisation affiche « erreur 503 » et les fichiers du secrétariat ne se "
    "synchronisent plus.\nMon identifiant est jdupont et le mot de passe est "
    f"{SECRET}\nPouvez-vous regarder rapidement ?\n\nMerci d'avance,\nJérôme Martin\n")


def observe_sections(relay: str) -> dict:
    return example_sections(
        milter={"mode": "observe"},
        autoreply={"enabled": True, "smtp": relay, "trust": "any", "retry": "1s"})


def config_path(milter) -> Path:
    return Path(milter.argv[milter.argv.index("--config") + 1])


def rows(milter, sql: str) -> list[tuple]:
    database = tomllib.loads(config_path(milter).read_text())["milter"]["database"]
    with sqlite3.connect(database) as conn:
        return conn.execute(sql).fetchall()


def without_postfix_received(raw: bytes) -> bytes:
    """The delivered message minus the one Received field Postfix puts on top."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"Received: "), lines[0]
    n = 1
    while n < len(lines) and lines[n][:1] in (b" ", b"\t"):
        n += 1
    return b"\r\n".join(lines[n:]) + sep + body


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_observe_mode_changes_nothing_and_reports_what_it_would_do(lab, sink, milters):
    milter = milters.helpdesk(observe_sections(f"127.0.0.1:{lab.smtp_port}"))
    milter.wait_log(r"listening on .*observe mode: no message is changed")
    sent = {
        # copy to assistance, redact the password, drop the forged header, guide
        "<observe-1@mairie-exemple.fr>": (["alice@example.org"], make_message(
            to="alice@example.org", subject="Nextcloud : impossible de synchroniser",
            body=SUPPORT_BODY, message_id="<observe-1@mairie-exemple.fr>",
            headers={"X-Helpdesk-Routed": "to=pirate@evil.example; mode=copy"})),
        # redirect: contact@ would be removed
        "<observe-2@mairie-exemple.fr>": (["contact@example.org"], make_message(
            to="contact@example.org", subject="Imprimante en panne depuis hier",
            body="Bonjour,\n\nL'imprimante du secrétariat affiche une erreur 0x3F et "
                 "refuse tous les travaux depuis la mise à jour d'hier.\nPouvez-vous "
                 "passer ?\n\nMerci,\nJérôme\n",
            message_id="<observe-2@mairie-exemple.fr>")),
    }
    for mid, (rcpts, msg) in sent.items():
        raw = as_bytes(msg)
        got = lab.deliver(sink, raw, CLIENT, rcpts)
        assert got.rcpt_tos == rcpts                       # no recipient added or removed
        assert len(got) == 1
        assert without_postfix_received(got[0].raw) == crlf(raw), mid   # byte for byte
    assert SECRET.encode() in sink.find("<observe-1@mairie-exemple.fr>")[0].raw

    # logged as observed, with what would have been done
    milter.wait_log(r"verdict=support action=copy structure=mairie-exemple .*"
                    rf"added=<{CLIENT_ASSISTANCE}>.*mode=observe")
    milter.wait_log(r"verdict=support action=redirect .*removed=<contact@example.org>"
                    r".*mode=observe")

    # recorded apart from the enforced decisions; nothing that would act later
    def observed() -> list[tuple]:
        return rows(milter, "select message_id, action, added, removed, secrets, "
                            "secret_kinds, guidance from observed order by id")
    deadline = time.monotonic() + 10
    while len(observed()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    got_rows = {r[0]: r[1:] for r in observed()}
    assert got_rows["<observe-1@mairie-exemple.fr>"] == (
        "copy", CLIENT_ASSISTANCE, "", 1, "password", "queued")
    assert got_rows["<observe-2@mairie-exemple.fr>"][:3] == (
        "redirect", CLIENT_ASSISTANCE, "contact@example.org")
    assert rows(milter, "select count(*) from decisions") == [(0,)]
    assert rows(milter, "select count(*) from outbox") == [(0,)]
    assert rows(milter, "select count(*) from dedup_fingerprints") == [(0,)]
    # no guidance mail was sent: nothing but the two messages reached the sink
    time.sleep(1.5)                  # the outbox sender polls; give it the chance to err
    assert not [d for d in sink.deliveries if CLIENT in d.rcpt_tos]

    report = json.loads(subprocess.run(
        [sys.executable, "-m", "helpdesk_milter", "report", "--config",
         str(config_path(milter)), "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    obs = report["observe"]
    assert obs["total"] == 2
    assert obs["by_action"] == {"copy": 1, "redirect": 1}
    assert sorted((r["structure"], r["assistance"], r["action"], r["messages"])
                  for r in obs["routed"]) == [
        ("mairie-exemple", CLIENT_ASSISTANCE, "copy", 1),
        ("mairie-exemple", CLIENT_ASSISTANCE, "redirect", 1)]
    assert obs["would_remove"] == 1
    assert obs["secrets"] == {"password": 1}
    # each message on its own: observe mode keeps no rate-limit memory (a sender it
    # "guided" must still get the real guidance once enforce mode is on)
    assert obs["guidance"] == {"queued": 2}
    assert report["total"] == 0                    # nothing enforced
    text = subprocess.run(
        [sys.executable, "-m", "helpdesk_milter", "report", "--config",
         str(config_path(milter))], capture_output=True, text=True, timeout=60,
        check=True).stdout
    assert "observe: would have routed" in text
    assert SECRET not in text

    # the rollout: switch to enforce with a reload; the next message is routed
    config = tomllib.loads(config_path(milter).read_text())
    config["milter"]["mode"] = "enforce"
    config_path(milter).write_text(dump_toml(config))
    offset = milter.log_offset()
    assert milter.pid is not None
    os.kill(milter.pid, signal.SIGHUP)
    milter.wait_log(r"reloaded .* mode enforce", since=offset)
    msg = make_message(to="alice@example.org", subject="Nextcloud : impossible de "
                       "synchroniser", body=SUPPORT_BODY,
                       message_id="<observe-3@mairie-exemple.fr>")
    got = lab.deliver(sink, as_bytes(msg), CLIENT, ["alice@example.org"])
    assert got.rcpt_tos == sorted(["alice@example.org", CLIENT_ASSISTANCE])
    assert SECRET.encode() not in got[0].raw


def test_an_internal_error_in_observe_mode_never_holds_mail_up():
    from helpdesk_milter.app import tempfails
    from helpdesk_milter.config import parse_config
    assert tempfails(parse_config('[milter]\non_error = "tempfail"\n'))
    assert not tempfails(parse_config('[milter]\non_error = "tempfail"\nmode = "observe"\n'))
    assert not tempfails(parse_config('[milter]\non_error = "accept"\n'))
