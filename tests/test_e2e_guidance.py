"""End to end through a real Postfix: the sender is told, once and kindly, where to write.

The milter runs with ``[autoreply] enabled`` and the lab's own Postfix as its
relay, so a guidance mail travels like any mail: outbox -> Postfix (and the
milter, which must leave an auto-reply alone) -> the capture sink.  Client mail
is DKIM-signed with a key served by the local DNS server, as ``trust =
"known-dkim"`` requires.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from email import policy
from email.parser import BytesParser
from pathlib import Path

from support.dkimfixtures import message, sign_message
from support.net import free_port, wait_until
from support.prom import by_label, scrape
from support.sink import Sink
from support.world import example_sections

CLIENT = "jean.dupont@mairie-exemple.fr"
ASSIST = "mairie-exemple@assistance.example.org"
FR_BODY = ("Bonjour,\r\n\r\nDepuis ce matin je n'arrive plus à me connecter au webmail, "
           "il affiche une erreur d'authentification.\r\nPouvez-vous regarder ?\r\n\r\n"
           "Merci,\r\nJean Dupont\r\n")
EN_BODY = ("Hello,\r\n\r\nSince this morning I cannot log in to the webmail, it shows an "
           "authentication error.\r\nCould you have a look please?\r\n\r\nThanks,\r\n"
           "Jean Dupont\r\n")


def sections(dns_server, relay: str, **autoreply):
    return example_sections(
        dns={"resolver": dns_server.resolver, "timeout": "2s"},
        autoreply={"enabled": True, "smtp": relay, "retry": "1s", **autoreply})


def signed(dkim_key, dns_server, selector, **kwargs):
    dkim_key.publish(dns_server, "mairie-exemple.fr", selector)
    return sign_message(message(**kwargs), dkim_key, "mairie-exemple.fr", selector)


def guidance_for(sink, to: str, timeout: float = 20.0):
    def found():
        return [d for d in sink.deliveries
                if list(d.rcpt_tos) == [to] and d.message["Auto-Submitted"] == "auto-replied"]
    return wait_until(found, timeout, f"a guidance mail to {to}")


def report(milter) -> dict:
    config = Path(milter.argv[milter.argv.index("--config") + 1])
    out = subprocess.run([sys.executable, "-m", "helpdesk_milter", "report", "--config",
                          str(config), "--json"], capture_output=True, text=True, timeout=60,
                         check=True)
    return json.loads(out.stdout)


def database_rows(milter, sql: str):
    import sqlite3
    config = tomllib.loads(Path(milter.argv[milter.argv.index("--config") + 1]).read_text())
    with sqlite3.connect(config["milter"]["database"]) as conn:
        return conn.execute(sql).fetchall()


def test_rerouted_request_gets_one_french_guidance(lab, sink, milters, dns_server, dkim_key):
    milter = milters.helpdesk(sections(dns_server, f"127.0.0.1:{lab.smtp_port}"))
    raw = signed(dkim_key, dns_server, "g1", from_addr=f"Jean Dupont <{CLIENT}>",
                 to="contact@example.org", subject="Problème", body=FR_BODY,
                 message_id="<guide-1@mairie-exemple.fr>")
    got = lab.deliver(sink, raw, CLIENT, ["contact@example.org"])
    assert got.rcpt_tos == [ASSIST]
    assert got.message["X-Helpdesk-Hints"] == "vague-subject"
    [mail] = guidance_for(sink, CLIENT)
    m = BytesParser(policy=policy.default).parsebytes(mail.raw)
    assert mail.mail_from in ("", "<>")             # null return path: no loop, no bounce
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["In-Reply-To"] == "<guide-1@mairie-exemple.fr>"
    assert "<guide-1@mairie-exemple.fr>" in m["References"]
    assert m["Subject"].endswith("Problème")
    assert m["Content-Language"] == "fr"
    text = m.get_body(("plain",)).get_content()
    assert ASSIST in text and "Bonjour" in text
    assert m["X-Helpdesk-Request"] is None         # to the client: nobody watches that
    milter.wait_log(r"guidance=queued")
    milter.wait_log(r"outbox: guidance #1 sent to <jean.dupont@mairie-exemple.fr>")

    # A second request from the same sender within `every`: routed, but no new guidance.
    raw2 = signed(dkim_key, dns_server, "g1", from_addr=f"Jean Dupont <{CLIENT}>",
                  to="alice@example.org", subject="Imprimante en panne depuis hier",
                  body="Bonjour,\r\n\r\nL'imprimante du deuxième étage affiche un bourrage "
                       "papier depuis hier soir, alors que le bac est vide.\r\nQuelqu'un "
                       "peut-il passer la voir ?\r\n\r\nJean\r\n",
                  message_id="<guide-2@mairie-exemple.fr>")
    lab.deliver(sink, raw2, CLIENT, ["alice@example.org"])
    milter.wait_log(r"guidance=suppressed:rate-limited")
    assert len(guidance_for(sink, CLIENT)) == 1
    data = report(milter)
    assert data["guidance"]["outbox"] == {"sent": 1}
    assert data["guidance"]["suppressed"] == {"rate-limited": 1}


def test_english_request_gets_english_guidance(lab, sink, milters, dns_server, dkim_key):
    milters.helpdesk(sections(dns_server, f"127.0.0.1:{lab.smtp_port}"))
    raw = signed(dkim_key, dns_server, "g2", from_addr=f"Jean Dupont <{CLIENT}>",
                 to="bob@example.org", subject="Webmail login error since this morning",
                 body=EN_BODY, message_id="<guide-en@mairie-exemple.fr>")
    lab.deliver(sink, raw, CLIENT, ["bob@example.org"])
    [mail] = guidance_for(sink, CLIENT)
    m = BytesParser(policy=policy.default).parsebytes(mail.raw)
    assert m["Content-Language"] == "en"
    text = m.get_body(("plain",)).get_content()
    assert ASSIST in text and "Hello" in text


def test_redacted_secret_guidance_says_change_it(lab, sink, milters, dns_server, dkim_key):
    # mail for a partner outside the helpdesk: its secrets are redacted with scope "all"
    milters.helpdesk({**sections(dns_server, f"127.0.0.1:{lab.smtp_port}"),
                      "secrets": {"scope": "all"}})
    raw = signed(dkim_key, dns_server, "g3", from_addr=f"Jean Dupont <{CLIENT}>",
                 to="partenaire@ailleurs.example", subject="Accès au portail",
                 body="Bonjour,\r\nvoici les accès : identifiant jdupont, mot de passe "
                      "Castor-2024!\r\nBonne journée\r\n",
                 message_id="<guide-secret@mairie-exemple.fr>")
    lab.deliver(sink, raw, CLIENT, ["partenaire@ailleurs.example"])
    [mail] = guidance_for(sink, CLIENT)
    assert b"Castor-2024" not in mail.raw
    text = BytesParser(policy=policy.default).parsebytes(mail.raw) \
        .get_body(("plain",)).get_content()
    assert "https://paste.example.org" in text


def test_no_guidance_for_lists_autoreplies_bounces_unknown_or_failing_dkim(
        lab, sink, milters, dns_server, dkim_key):
    milter = milters.helpdesk(sections(dns_server, f"127.0.0.1:{lab.smtp_port}"))
    problems = iter([
        "Le partage réseau du service état civil est inaccessible depuis 8 h 30.",
        "Thunderbird refuse d'envoyer les mails au trésor public depuis lundi.",
        "Le site de la médiathèque affiche une erreur 502 depuis la mise à jour.",
        "Le VPN de la police municipale coupe toutes les dix minutes depuis hier.",
        "La sauvegarde de Dolibarr a échoué trois nuits de suite cette semaine.",
    ])

    def body() -> str:
        return f"Bonjour,\r\n\r\n{next(problems)}\r\nPouvez-vous regarder ?\r\n\r\nMerci\r\n"

    cases = [
        ("list", CLIENT, signed(dkim_key, dns_server, "g4", to="contact@example.org",
                                from_addr=CLIENT, body=body(), message_id="<g-list@x>",
                                extra_headers=[("List-Id", "<annonces.mairie-exemple.fr>")])),
        ("auto-submitted", CLIENT, signed(dkim_key, dns_server, "g4", to="contact@example.org",
                                          from_addr=CLIENT, body=body(),
                                          message_id="<g-auto@x>",
                                          extra_headers=[("Auto-Submitted", "auto-replied")])),
        ("unknown-sender", "someone@inconnu.example",
         message(from_addr="someone@inconnu.example", to="contact@example.org", body=body(),
                 message_id="<g-unknown@x>")),
        ("dkim-not-aligned", "marie@mairie-exemple.fr",
         message(from_addr="marie@mairie-exemple.fr", to="contact@example.org",
                 body=body(), message_id="<g-nodkim@x>")),
        ("no-reply-sender", "no-reply@mairie-exemple.fr",
         signed(dkim_key, dns_server, "g4", from_addr="no-reply@mairie-exemple.fr",
                to="contact@example.org", body=body(), message_id="<g-noreply@x>")),
    ]
    for _, sender, raw in cases:
        lab.deliver(sink, raw, sender, ["contact@example.org"])
    for reason, _, _ in cases:
        if reason in ("list", "auto-submitted"):
            continue       # never rerouted, so there is nothing to tell (skip rules)
        milter.wait_log(rf"guidance=suppressed:{reason}")
    # a bounce: null sender, never rerouted, never answered
    lab.deliver(sink, message(to="contact@example.org", body=FR_BODY,
                              message_id="<g-bounce@x>"), "", ["contact@example.org"])
    lab.wait_queue_empty(10)
    assert not [d for d in sink.deliveries if d.message["From"] == "assistance@example.org"]


def test_relay_down_then_back(lab, sink, milters, dns_server, dkim_key, tmp_path):
    metrics_port = free_port()
    with Sink(tmp_path / "relay") as relay:
        milter = milters.helpdesk({**sections(dns_server, f"127.0.0.1:{relay.port}"),
                                   "metrics": {"listen": f"127.0.0.1:{metrics_port}"}})
        relay.stop()
        raw = signed(dkim_key, dns_server, "g5", from_addr=f"Jean Dupont <{CLIENT}>",
                     to="contact@example.org", subject="Webmail : erreur de connexion",
                     body=FR_BODY, message_id="<guide-down@mairie-exemple.fr>")
        got = lab.deliver(sink, raw, CLIENT, ["contact@example.org"])
        assert got.rcpt_tos == [ASSIST]                 # the original is not held up
        milter.wait_log(r"outbox: guidance #1 to <jean.dupont@mairie-exemple.fr> not sent")
        assert database_rows(milter, "select status from outbox") == [("pending",)]
        relay.start()
        wait_until(lambda: relay.deliveries, 30, "the guidance mail after the relay is back")
        assert list(relay.deliveries[0].rcpt_tos) == [CLIENT]
        milter.wait_log(r"outbox: guidance #1 sent")
        assert database_rows(milter, "select status from outbox") == [("sent",)]
    # the outbox sender's attempts, as Prometheus sees them
    deliveries = by_label(scrape(metrics_port), "helpdesk_milter_guidance_deliveries_total",
                          "outcome")
    assert deliveries["sent"] == 1 and deliveries["retry"] >= 1 and "failed" not in deliveries


def test_followup_guidance_says_reply_to_the_ticket_mail(lab, sink, milters, dns_server,
                                                        dkim_key):
    milters.helpdesk(sections(dns_server, f"127.0.0.1:{lab.smtp_port}"))
    raw = signed(dkim_key, dns_server, "g6", from_addr=f"Jean Dupont <{CLIENT}>",
                 to="bob@example.org", subject="RE: [example #4521] Webmail inaccessible",
                 body="Bonjour,\r\n\r\nLe problème est revenu ce matin à 9 h, voici la "
                      "capture de l'erreur.\r\n\r\nJean\r\n",
                 message_id="<guide-followup@mairie-exemple.fr>")
    got = lab.deliver(sink, raw, CLIENT, ["bob@example.org"])
    assert got.rcpt_tos == sorted(["bob@example.org", ASSIST])
    [mail] = guidance_for(sink, CLIENT)
    m = BytesParser(policy=policy.default).parsebytes(mail.raw)
    assert m["Subject"] == "Auto: RE: [example #4521] Webmail inaccessible"
    text = m.get_body(("plain",)).get_content()
    assert "[example #4521]" in text and ASSIST in text
