"""Reload on SIGHUP: the real milter, a real Postfix, mail flowing.

libmilter stops on SIGHUP as on SIGTERM; ``app.serve`` keeps SIGHUP away from it
and reloads instead (config, client CSVs, rules, model, templates, checked as at
start).  What must hold:

- under load, ``kill -HUP`` with a client moved to another structure in the CSV:
  no message lost, refused or even temp-failed; every message routed to the old
  structure or the new, never both or neither; mail sent after the reload goes to
  the new one; the process keeps running and still stops cleanly on SIGTERM;
- a broken config (or CSV, or template) on reload: the error is logged, the running
  configuration stays (mail still routed by it), the process keeps running;
- keys a running process cannot change (the socket, the database...) keep their
  running value until a restart, with a warning.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from helpdesk_milter.app import keep_restart_only
from helpdesk_milter.config import parse_config
from support.load import account, index_deliveries, send_many, support_messages
from support.mail import as_bytes, make_message
from support.world import example_sections

DOMAIN = "ecole-des-pins.fr"          # support_messages sends support requests from it
SENDER = "direction@ecole-des-pins.fr"
OLD = "ecole-des-pins@assistance.example.org"
NEW = "pins-nouvelle@assistance.example.org"


REQUESTS = [
    ("Nextcloud : impossible de synchroniser",
     "Bonjour,\n\nDepuis ce matin le client Nextcloud affiche « erreur 503 » et les "
     "fichiers de l'école ne se synchronisent plus.\nPouvez-vous regarder ?\n\nMerci,\n"
     "La direction\n"),
    ("Imprimante de la salle des maîtres en panne",
     "Bonjour,\n\nL'imprimante de la salle des maîtres affiche une erreur 0x3F et refuse "
     "tous les travaux depuis la mise à jour d'hier soir.\nQuelqu'un peut-il passer ?\n\n"
     "Merci,\nLa direction\n"),
    ("Webmail : mot de passe refusé",
     "Bonjour,\n\nLe webmail refuse le mot de passe de la secrétaire depuis lundi, alors "
     "qu'elle ne l'a pas changé. Le message dit « identifiant ou mot de passe incorrect ».\n"
     "Pouvez-vous vérifier son compte ?\n\nCordialement,\nLa direction\n"),
    ("Site de l'école inaccessible",
     "Bonjour,\n\nLe site de l'école renvoie une page blanche depuis ce matin, les parents "
     "nous appellent. Rien n'a été modifié de notre côté.\nPouvez-vous regarder en "
     "urgence ?\n\nMerci beaucoup,\nLa direction\n"),
]


def sections_with_csv(csv: Path) -> dict:
    sections = example_sections(directory={"csv": [str(csv)]})
    del sections["clients"][DOMAIN]     # the [clients] table would win over the CSV
    return sections


def config_path(milter) -> Path:
    return Path(milter.argv[milter.argv.index("--config") + 1])


def reload(milter, *, expect: str, timeout: float = 20.0) -> None:
    offset = milter.log_offset()
    assert milter.pid is not None
    os.kill(milter.pid, signal.SIGHUP)
    milter.wait_log(expect, since=offset, timeout=timeout)
    assert milter.running


def routed_to(lab, sink, n: int) -> list[str]:
    """Send one support request from the school; its assistance recipients."""
    mid = f"<reload-{n}-{time.monotonic_ns()}@{DOMAIN}>"
    subject, body = REQUESTS[n % len(REQUESTS)]     # distinct: not duplicates of each other
    msg = make_message(sender=f"Direction <{SENDER}>", to="alice@example.org",
                       subject=subject, body=body, message_id=mid)
    got = lab.deliver(sink, as_bytes(msg), SENDER, ["alice@example.org"])
    assert "alice@example.org" in got.rcpt_tos
    return [r for r in got.rcpt_tos if r.endswith("@assistance.example.org")]


def test_sighup_under_load_moves_a_client_with_nothing_lost(lab, sink, milters, tmp_path):
    csv = tmp_path / "clients.csv"
    csv.write_text(f"domain,structure\n{DOMAIN},ecole-des-pins\n")
    milter = milters.helpdesk(sections_with_csv(csv))
    reloaded_at: list[float] = []

    def hup(n: int) -> None:
        if n == 60:                          # mid-run: a third of the mail is through
            csv.write_text(f"domain,structure\n{DOMAIN},pins-nouvelle\n")
            assert milter.pid is not None
            os.kill(milter.pid, signal.SIGHUP)
            reloaded_at.append(time.monotonic())

    during = support_messages(180, tag="hup-during", secret_every=0)
    report = send_many(lab.smtp_port, during, connections=6, deadline=120, on_accept=hup)
    assert reloaded_at, "the load ended before the reload"
    milter.wait_log(r"reloaded .*: 2 watch groups, \d+ clients, mode enforce")
    after = support_messages(40, tag="hup-after", secret_every=0, seed=11)
    report_after = send_many(lab.smtp_port, after, connections=4, deadline=60)

    for r in (report, report_after):
        assert r.refused == {} and r.unsent == []
        assert r.tempfail_stages() == {}            # not even a retry
    lab.wait_queue_empty(timeout=60)
    sent = during + after
    received = index_deliveries(sink.deliveries)
    counts = account(sent, report, received)
    counts_after = account(after, report_after, received)
    assert counts["lost"] == 0 and counts_after["lost"] == 0, (counts, counts_after)
    assert counts["in"] == len(during) and counts_after["in"] == len(after)
    assert counts["duplicated"] == 0 and counts_after["duplicated"] == 0

    school = [m for m in during if m.mail_from == SENDER and "alice@example.org" in m.rcpts]
    assert school
    for m in school:                               # one structure or the other, never both
        got = [r for r in received(m.message_id) if r in (OLD, NEW)]
        assert len(got) == 1, (m.message_id, received(m.message_id))
    assert any(OLD in received(m.message_id) for m in school[:3])   # before the reload
    school_after = [m for m in after if m.mail_from == SENDER
                    and any(r.endswith("@example.org") for r in m.rcpts)]
    assert school_after
    for m in school_after:
        got = received(m.message_id)
        assert NEW in got and OLD not in got, (m.message_id, got)

    assert milter.running
    assert milter.log_text().count("reloaded ") == 1
    assert "Traceback" not in milter.log_text()
    assert milter.stop() == 0                      # SIGTERM still stops it, cleanly


def test_broken_config_on_reload_keeps_the_running_one(lab, sink, milters, tmp_path):
    csv = tmp_path / "clients.csv"
    csv.write_text(f"domain,structure\n{DOMAIN},ecole-des-pins\n")
    milter = milters.helpdesk(sections_with_csv(csv))
    config = config_path(milter)
    good = config.read_text()
    assert routed_to(lab, sink, 1) == [OLD]

    # a wrong value: named, with its line; the running configuration stays
    config.write_text(good.replace('mode = "enforce"', 'mode = "sometimes"'))
    csv.write_text(f"domain,structure\n{DOMAIN},pins-nouvelle\n")
    reload(milter, expect=r"reload failed, the running configuration stays: 1 problem: "
                          r".*milter\.mode")
    assert routed_to(lab, sink, 2) == [OLD]

    # not TOML at all
    config.write_text(good + "\n[[[\n")
    reload(milter, expect=r"reload failed, the running configuration stays: .*not valid TOML")
    # a broken client CSV
    config.write_text(good)
    csv.write_text(f"domain,structure\n{DOMAIN},pins nouvelle avec des espaces\n")
    reload(milter, expect=r"reload failed, the running configuration stays: .*clients")
    assert routed_to(lab, sink, 3) == [OLD]
    # a guidance template override with a typo in its name
    csv.write_text(f"domain,structure\n{DOMAIN},pins-nouvelle\n")
    (tmp_path / "tpl" / "fr").mkdir(parents=True)
    (tmp_path / "tpl" / "fr" / "greting.txt").write_text("Bonjour,\n")
    assert 'templates_dir = ""' in good
    config.write_text(good.replace('templates_dir = ""',
                                   f'templates_dir = "{tmp_path / "tpl"}"'))
    reload(milter, expect=r"reload failed, the running configuration stays: .*"
                          r"autoreply\.templates_dir: .*greting\.txt")

    # fixed: the next reload takes it, and a restart-only change is named
    csv.write_text(f"domain,structure\n{DOMAIN},pins-nouvelle\n")
    config.write_text(good.replace("timeout = 600", "timeout = 300"))
    reload(milter, expect=r"reloaded .*mode enforce")
    milter.wait_log(r"reload: milter\.timeout changed; it takes effect at the next restart")
    assert routed_to(lab, sink, 4) == [NEW]
    assert milter.running
    assert milter.log_text().count("reload failed") == 4


def test_restart_only_keys_keep_their_running_value():
    running = parse_config('[milter]\nsocket = "unix:/run/a.sock"\ndatabase = "/a.db"\n'
                           '[dedup]\nwindow = "72h"\n')
    new = parse_config('[milter]\nsocket = "unix:/run/b.sock"\ndatabase = "/b.db"\n'
                       'on_error = "tempfail"\nmode = "observe"\n'
                       '[dedup]\nwindow = "24h"\naction = "drop"\n'
                       '[metrics]\nlisten = "127.0.0.1:9894"\n')
    kept, changed = keep_restart_only(running, new)
    assert sorted(changed) == ["dedup.window", "metrics.listen", "milter.database",
                               "milter.socket"]
    assert kept.milter.socket == "unix:/run/a.sock" and kept.milter.database == "/a.db"
    assert kept.dedup.window == running.dedup.window and kept.metrics.listen == ""
    # what a reload may change, it changes
    assert kept.milter.on_error == "tempfail" and kept.milter.mode == "observe"
    assert kept.dedup.action == "drop"
    assert keep_restart_only(running, running) == (running, [])
