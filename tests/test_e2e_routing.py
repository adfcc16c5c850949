"""End to end through a real Postfix: what the capture sink receives.

Each test sends one realistic message through the private Postfix instance with
helpdesk-milter (example config) in smtpd_milters, and checks the envelope
recipients and headers the sink got.  Every test also checks that nothing was
lost: all original recipients arrive, except a watched one that ``redirect``
removed in the same decision that added assistance.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from support.mail import as_bytes, make_message
from support.net import wait_until
from support.postfix import SmtpRejected
from support.world import CLIENT, CLIENT_ASSISTANCE, FALLBACK, example_sections

SUPPORT_BODY = (
    "Bonjour,\n\nDepuis ce matin, impossible de me connecter à Nextcloud : le client "
    "de synchronisation affiche « erreur 503 » et les fichiers du secrétariat ne se "
    "synchronisent plus.\nPouvez-vous regarder rapidement ? Nous avons le conseil "
    "municipal ce soir.\n\nMerci d'avance,\nJérôme Martin\nSecrétariat de mairie\n")


@pytest.fixture
def helpdesk(lab, milters):
    return milters.helpdesk(example_sections())


def send(lab, sink, msg, rcpts, mail_from=CLIENT):
    return lab.deliver(sink, as_bytes(msg), mail_from, rcpts)


def support_message(**kwargs):
    kwargs.setdefault("subject", "Nextcloud : impossible de synchroniser")
    kwargs.setdefault("body", SUPPORT_BODY)
    return make_message(**kwargs)


def test_support_request_to_a_team_member_is_copied(lab, sink, helpdesk):
    msg = support_message(to="Alice <alice@example.org>")
    got = send(lab, sink, msg, ["alice@example.org"])
    assert got.rcpt_tos == sorted(["alice@example.org", CLIENT_ASSISTANCE])
    assert len(got.rcpt_list) == 2                     # nobody twice
    m = got.message
    assert m["X-Helpdesk-Request"].startswith("support; structure=mairie-exemple; score=")
    assert "known-client" in m["X-Helpdesk-Request"]
    assert m["X-Helpdesk-Routed"] == f"to={CLIENT_ASSISTANCE}; mode=copy"
    assert m.get_content().replace("\r\n", "\n") == SUPPORT_BODY   # body untouched
    # one log line, with Postfix's queue id (the one in Postfix's own Received header)
    qid = re.search(r"with E?SMTP id (\w+)", m["Received"]).group(1)
    helpdesk.wait_log(rf"{qid}: verdict=support action=copy structure=mairie-exemple")


def test_support_request_to_contact_is_redirected(lab, sink, helpdesk):
    msg = support_message(to="contact@example.org")
    got = send(lab, sink, msg, ["contact@example.org"])
    assert got.rcpt_tos == [CLIENT_ASSISTANCE]
    assert got.message["X-Helpdesk-Routed"] == f"to={CLIENT_ASSISTANCE}; mode=redirect"


def test_redirect_keeps_recipients_outside_the_group(lab, sink, helpdesk):
    msg = support_message(to="contact@example.org, partenaire@prestataire.example")
    got = send(lab, sink, msg, ["contact@example.org", "partenaire@prestataire.example"])
    assert got.rcpt_tos == sorted([CLIENT_ASSISTANCE, "partenaire@prestataire.example"])


def test_commercial_request_is_untouched(lab, sink, helpdesk):
    msg = make_message(
        to="commercial@example.org", subject="Demande de devis hébergement Nextcloud",
        body="Bonjour,\n\nNous souhaiterions recevoir un devis pour l'hébergement d'une "
             "instance Nextcloud pour 25 agents, ainsi que vos tarifs de maintenance.\n\n"
             "Cordialement,\nLa direction générale des services\n")
    got = send(lab, sink, msg, ["commercial@example.org"])
    assert got.rcpt_tos == ["commercial@example.org"]
    assert got.message["X-Helpdesk-Request"].startswith("other; structure=mairie-exemple;")
    assert got.message["X-Helpdesk-Routed"] is None


def test_unknown_sender_goes_to_the_fallback(lab, sink, helpdesk):
    sender = "benevole.inconnu@gmail.example"
    msg = support_message(sender=f"Un bénévole <{sender}>", to="alice@example.org")
    got = send(lab, sink, msg, ["alice@example.org"], mail_from=sender)
    assert got.rcpt_tos == sorted(["alice@example.org", FALLBACK])
    assert got.message["X-Helpdesk-Request"].startswith("support; structure=unknown;")


def test_followup_is_routed_to_the_senders_assistance(lab, sink, helpdesk):
    msg = make_message(to="bob@example.org",
                       subject="RE: [example #4521] Nextcloud : impossible de synchroniser",
                       body="Bonjour,\n\nVoici la capture d'écran demandée.\n\nJérôme\n\n"
                            "> Pouvez-vous nous envoyer une capture ?\n")
    got = send(lab, sink, msg, ["bob@example.org"])
    assert got.rcpt_tos == sorted(["bob@example.org", CLIENT_ASSISTANCE])
    assert got.message["X-Helpdesk-Request"].startswith(
        "followup; structure=mairie-exemple; score=0.0; rules=ticket-subject; ticket=4521")


def test_internal_mail_is_not_rerouted(lab, sink, helpdesk):
    msg = support_message(sender="Claire <claire@example.org>", to="bob@example.org")
    got = send(lab, sink, msg, ["bob@example.org"], mail_from="claire@example.org")
    assert got.rcpt_tos == ["bob@example.org"]
    assert got.message["X-Helpdesk-Request"].endswith("rules=skip-internal")


def test_newsletter_is_not_rerouted(lab, sink, helpdesk):
    msg = make_message(
        sender="La lettre du numérique <news@mairie-exemple.fr>", to="contact@example.org",
        subject="Lettre d'information : Nextcloud ne fonctionne plus ? Nos conseils",
        body="Impossible de synchroniser ? Erreur 503 ? Découvrez nos astuces.\n",
        headers={"List-Unsubscribe": "<mailto:unsubscribe@mairie-exemple.fr>",
                 "List-Id": "Lettre <lettre.mairie-exemple.fr>", "Precedence": "bulk"})
    got = send(lab, sink, msg, ["contact@example.org"], mail_from="news@mairie-exemple.fr")
    assert got.rcpt_tos == ["contact@example.org"]
    assert got.message["X-Helpdesk-Request"].startswith("other;")
    assert "rules=skip-" in got.message["X-Helpdesk-Request"]


def test_bounce_is_not_rerouted(lab, sink, helpdesk):
    report = make_message(
        sender="Mail Delivery System <MAILER-DAEMON@mx.mairie-exemple.fr>",
        to="contact@example.org", subject="Undelivered Mail Returned to Sender",
        body="This is the mail system.\n\nI'm sorry to have to inform you that your message "
             "could not be delivered: error, mailbox unavailable. Impossible de livrer.\n")
    got = send(lab, sink, report, ["contact@example.org"], mail_from="")
    assert got.rcpt_tos == ["contact@example.org"]
    assert got.message["X-Helpdesk-Request"].endswith("rules=skip-bounce")


def test_forged_helpdesk_headers_are_removed(lab, sink, helpdesk):
    msg = make_message(to="alice@example.org", subject="Bonjour",
                       body="Juste un petit mot pour vous remercier du déjeuner.\n",
                       headers={"X-Helpdesk-Routed": "to=pirate@evil.example; mode=copy",
                                "X-Helpdesk-Request": "support; structure=evil"})
    got = send(lab, sink, msg, ["alice@example.org"])
    assert got.rcpt_tos == ["alice@example.org"]
    assert got.message.get_all("X-Helpdesk-Routed") is None
    assert got.message.get_all("X-Helpdesk-Request") == [
        got.message["X-Helpdesk-Request"]]
    assert got.message["X-Helpdesk-Request"].startswith("other; structure=mairie-exemple")


def test_forged_headers_are_removed_even_when_not_watched_with_scope_all(lab, sink, milters):
    # With secrets.scope = "helpdesk" the milter never reads such mail (it steps out at
    # the end of the envelope, test_e2e_step_out.py): nobody at the helpdesk reads it.
    milters.helpdesk(example_sections(secrets={"scope": "all"}))
    msg = make_message(to="someone@elsewhere.example",
                       headers={"X-Helpdesk-Routed": "to=pirate@evil.example; mode=copy"})
    got = send(lab, sink, msg, ["someone@elsewhere.example"])
    assert got.rcpt_tos == ["someone@elsewhere.example"]
    assert got.message["X-Helpdesk-Routed"] is None
    assert got.message["X-Helpdesk-Request"] is None     # not inspected


def test_message_over_the_scan_cap_passes_tagged(lab, sink, milters):
    milters.helpdesk(example_sections(milter={"max_scan_size": "64KB",
                                              "spool_memory": "16KB"}))
    big = SUPPORT_BODY + ("Journal de l'erreur : ligne de diagnostic répétée.\n" * 3000)
    msg = support_message(to="contact@example.org", body=big)
    got = send(lab, sink, msg, ["contact@example.org"])
    assert got.rcpt_tos == ["contact@example.org"]
    assert got.message["X-Helpdesk-Request"].endswith("rules=skip-too-large")
    assert got.message.get_content().replace("\r\n", "\n") == big


def test_same_transaction_with_assistance_is_tagged_duplicate(lab, sink, helpdesk):
    msg = support_message(to="alice@example.org", headers={"Cc": CLIENT_ASSISTANCE})
    got = send(lab, sink, msg, ["alice@example.org", CLIENT_ASSISTANCE])
    assert got.rcpt_tos == sorted(["alice@example.org", CLIENT_ASSISTANCE])
    assert len(got.rcpt_list) == 2
    assert got.message["X-Helpdesk-Duplicate"] == (
        f"of={msg['Message-ID']}; match=same-transaction; action=tag")


def test_milter_down_with_tempfail_defers_and_nothing_is_lost(lab, sink, milters):
    milter = milters.helpdesk(example_sections(), default_action="tempfail")
    milter.stop()
    msg = support_message(to="contact@example.org")
    with pytest.raises(SmtpRejected) as info:
        lab.send(as_bytes(msg), CLIENT, ["contact@example.org"])
    assert info.value.temporary and info.value.code == 451
    # The client retries once the milter is back: the message is then routed.
    milter.start()
    got = send(lab, sink, msg, ["contact@example.org"])
    assert got.rcpt_tos == [CLIENT_ASSISTANCE]


def test_milter_down_with_accept_delivers_unfiltered(lab, sink, milters):
    milter = milters.helpdesk(example_sections(), default_action="accept")
    milter.stop()
    msg = support_message(to="contact@example.org")
    got = send(lab, sink, msg, ["contact@example.org"])
    assert got.rcpt_tos == ["contact@example.org"]
    assert got.message["X-Helpdesk-Request"] is None


def test_decisions_are_recorded_and_reported(lab, sink, helpdesk):
    send(lab, sink, support_message(to="contact@example.org"), ["contact@example.org"])
    other = support_message(
        to="alice@example.org", subject="Imprimante en panne",
        body="Bonjour,\n\nL'imprimante du secrétariat ne fonctionne plus depuis hier, "
             "elle affiche une erreur de toner alors que la cartouche est neuve.\n"
             "Pouvez-vous passer ?\n\nMerci,\nJérôme\n")
    send(lab, sink, other, ["alice@example.org"])
    database = helpdesk_database(helpdesk, 2)
    out = subprocess.run(
        [sys.executable, "-m", "helpdesk_milter", "report", "--database", database, "--json"],
        capture_output=True, text=True, check=True, timeout=60)
    data = json.loads(out.stdout)
    assert data["by_action"] == {"redirect": 1, "copy": 1}
    assert data["wrong_address_senders"][0]["sender"] == CLIENT
    assert data["wrong_address_senders"][0]["messages"] == 2
    assert all(row["queue_id"] and row["queue_id"] != "NOQUEUE" for row in data["last"])


def helpdesk_database(milter, rows: int) -> str:
    """The milter's database path, once its writer thread has committed ``rows`` rows."""
    config = tomllib.loads(Path(milter.argv[milter.argv.index("--config") + 1]).read_text())
    path = config["milter"]["database"]

    def committed() -> bool:
        with sqlite3.connect(path) as conn:
            return conn.execute("select count(*) from decisions").fetchone()[0] >= rows

    wait_until(committed, 10, "decision rows in the state database")
    return path
