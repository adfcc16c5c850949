"""End to end through a real Postfix: secrets are redacted before anyone gets them.

A DKIM-signed client message carrying a password goes through Postfix with
helpdesk-milter; the sink must receive the redacted message, still valid MIME,
with Authentication-Results saying the *original* passed DKIM, and, with ARC
enabled, an ARC set that dkimpy's verifier accepts.  A batch of secret-bearing
mail then proves that no secret value reaches the logs or the database.
"""

from __future__ import annotations

import sqlite3
import tomllib
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import dkim

from support.dkimfixtures import message, sign_message
from support.mail import as_bytes, make_message
from support.net import wait_until
from support.world import CLIENT_ASSISTANCE, example_sections

PASSWORD = "Soleil2024!"
BODY = ("Bonjour,\r\n\r\nJe n'arrive plus à me connecter au webmail depuis ce matin.\r\n"
        f"Mon identifiant est jdupont et le mot de passe est {PASSWORD}\r\n"
        "Pouvez-vous regarder ?\r\n\r\nMerci,\r\nJean Dupont\r\n")


def dkim_sections(dns_server, **extra):
    return example_sections(dns={"resolver": dns_server.resolver, "timeout": "2s"}, **extra)


def database_of(milter) -> str:
    config = tomllib.loads(Path(milter.argv[milter.argv.index("--config") + 1]).read_text())
    return config["milter"]["database"]


def test_signed_message_is_redacted_and_dkim_recorded_first(lab, sink, milters, dns_server,
                                                           dkim_key):
    dkim_key.publish(dns_server, "mairie-exemple.fr", "e2e1")
    raw = sign_message(message(to="contact@example.org", body=BODY,
                               message_id="<dkim-e2e-1@mairie-exemple.fr>"),
                       dkim_key, "mairie-exemple.fr", "e2e1")
    milter = milters.helpdesk(dkim_sections(dns_server))
    got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["contact@example.org"])
    m = got.message
    assert PASSWORD.encode() not in got[0].raw
    text = m.get_content()
    assert "[secret removed: password]" in text
    assert "Pouvez-vous regarder ?" in text and "identifiant est jdupont" in text
    assert m["X-Helpdesk-Redacted"] == "count=1; kinds=password; action=redact"
    ar = m["Authentication-Results"]
    assert ar.startswith("mx.example.org; dkim=pass header.d=mairie-exemple.fr header.s=e2e1")
    # routing still happened, on the same message
    assert got.rcpt_tos == [CLIENT_ASSISTANCE]
    milter.wait_log(r"secrets=1 secret-kinds=password secret-action=redact dkim=pass")


def test_simple_canonicalization_still_verifies(lab, sink, milters, dns_server, dkim_key):
    """Header bytes reach the milter exactly (SMFIP_HDR_LEADSPC), so simple/simple works."""
    dkim_key.publish(dns_server, "mairie-exemple.fr", "e2e2")
    raw = sign_message(message(to="alice@example.org", body=BODY,
                               subject="Webmail  bloqué",      # two spaces: simple counts them
                               message_id="<dkim-e2e-2@mairie-exemple.fr>"),
                       dkim_key, "mairie-exemple.fr", "e2e2",
                       canonicalize=(b"simple", b"simple"))
    milters.helpdesk(dkim_sections(dns_server))
    got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["alice@example.org"])
    assert "dkim=pass" in got.message["Authentication-Results"]


def test_tampered_signature_is_recorded_as_fail(lab, sink, milters, dns_server, dkim_key):
    dkim_key.publish(dns_server, "mairie-exemple.fr", "e2e3")
    raw = sign_message(message(to="alice@example.org", body=BODY,
                               message_id="<dkim-e2e-3@mairie-exemple.fr>"),
                       dkim_key, "mairie-exemple.fr", "e2e3")
    raw = raw.replace(b"Merci,", b"Merci beaucoup,")
    milters.helpdesk(dkim_sections(dns_server))
    got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["alice@example.org"])
    assert "dkim=fail" in got.message["Authentication-Results"]


def test_forged_authentication_results_for_our_id_are_removed(lab, sink, milters, dns_server):
    raw = message(to="alice@example.org", body=BODY, message_id="<forged-ar@x.example>",
                  extra_headers=[("Authentication-Results", "mx.example.org; dkim=pass "
                                  "header.d=mairie-exemple.fr"),
                                 ("Authentication-Results", "other.example; spf=pass")])
    milters.helpdesk(dkim_sections(dns_server))
    got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["alice@example.org"])
    values = got.message.get_all("Authentication-Results")
    assert "other.example; spf=pass" in values
    ours = [v for v in values if v.startswith("mx.example.org")]
    assert ours == ["mx.example.org; dkim=none"]


def test_arc_seal_is_accepted_by_dkimpy(lab, sink, milters, dns_server, dkim_key, arc_key,
                                       tmp_path):
    dkim_key.publish(dns_server, "mairie-exemple.fr", "e2e4")
    arc_key.publish(dns_server, "example.org", "arc1")
    key = arc_key.write_private(tmp_path / "arc.pem")
    raw = sign_message(message(to="contact@example.org", body=BODY,
                               message_id="<arc-e2e@mairie-exemple.fr>"),
                       dkim_key, "mairie-exemple.fr", "e2e4")
    milters.helpdesk(dkim_sections(dns_server, arc={"enabled": True, "domain": "example.org",
                                                    "selector": "arc1",
                                                    "private_key": str(key)}))
    got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["contact@example.org"])
    delivered = got[0].raw
    assert PASSWORD.encode() not in delivered
    names = [n.lower() for n, _ in got.message.items()]
    assert names.index("arc-seal") < names.index("arc-message-signature") \
        < names.index("arc-authentication-results") < names.index("authentication-results")

    def dnsfunc(name, timeout=5):
        import dns.resolver
        resolver = dns.resolver.Resolver(configure=False)
        host, port = dns_server.resolver.split(":")
        resolver.nameservers, resolver.port = [host], int(port)
        answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=3)
        return b"".join(b"".join(r.strings) for r in answer)

    cv, results, reason = dkim.arc_verify(delivered, dnsfunc=dnsfunc)
    assert cv == dkim.CV_Pass, (reason, results)


def test_tag_action_reports_without_changing_the_body(lab, sink, milters, dns_server):
    milters.helpdesk(dkim_sections(dns_server, secrets={"action": "tag"}))
    raw = message(to="alice@example.org", body=BODY, message_id="<tag-mode@x.example>")
    got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["alice@example.org"])
    assert PASSWORD.encode() in got[0].raw
    assert got.message["X-Helpdesk-Redacted"] == "count=1; kinds=password; action=tag"
    assert got.message["Authentication-Results"] is None   # nothing changed, nothing to record


def test_secrets_in_unwatched_mail_and_subject_are_redacted_with_scope_all(
        lab, sink, milters, dns_server):
    # secrets.scope = "helpdesk" (the default) leaves this mail alone: test_e2e_step_out.py
    milters.helpdesk(dkim_sections(dns_server, secrets={"scope": "all"}))
    msg = make_message(to="partenaire@ailleurs.example",
                       subject="Accès wifi : mdp Tournesol-88",
                       body="Pour info le code wifi est Tournesol-88\n",
                       html="<p>Pour info le <b>code wifi</b> est <i>Tournesol</i>-88</p>")
    got = lab.deliver(sink, as_bytes(msg), "secretariat@mairie-exemple.fr",
                      ["partenaire@ailleurs.example"])
    assert b"Tournesol" not in got[0].raw
    m = got.message
    assert m["X-Helpdesk-Request"] is None                # not watched: no routing verdict
    assert m["X-Helpdesk-Redacted"].startswith("count=3; kinds=password")
    assert "[secret removed: password]" in m["Subject"]
    html = m.get_body(("html",)).get_content()
    assert html.count("<") == html.count(">") and "<b>code wifi</b>" in html


SECRETS = [
    ("mot de passe : Azerty!2024", "Azerty!2024"),
    ("le mdp c'est Bibliotheque#77", "Bibliotheque#77"),
    ("clé wifi: Xq8-pL2-vN4", "Xq8-pL2-vN4"),
    ("ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", None),
    ("AKIA" + "Q3EGOWVMEH7N2PXL", None),
    ("postgres://admin:Ch4ngeMe!@db.mairie-exemple.fr:5432/etat_civil", "Ch4ngeMe!"),
    ("xoxb-" + "123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", None),
]


def test_no_secret_reaches_logs_or_database(lab, sink, milters, dns_server):
    milter = milters.helpdesk(dkim_sections(dns_server))
    values = []
    for n, (line, value) in enumerate(SECRETS):
        value = value or line
        values.append(value)
        msg = make_message(to="contact@example.org", subject=f"Accès bloqué ({n})",
                           body=f"Bonjour,\n\nJe n'arrive plus à me connecter, erreur.\n{line}\n"
                                "Pouvez-vous regarder ?\n")
        got = lab.deliver(sink, as_bytes(msg), "secretariat@mairie-exemple.fr",
                          ["contact@example.org"])
        assert value.encode() not in got[0].raw, line
        assert got.message["X-Helpdesk-Redacted"].startswith("count=1;")
    database = database_of(milter)

    def all_rows():
        with sqlite3.connect(database) as conn:
            rows = conn.execute("select * from decisions").fetchall()
        return rows if len(rows) >= len(SECRETS) else None

    rows = wait_until(all_rows, 10, "decision rows")
    dump = repr(rows) + milter.log_text() + lab.log_text()
    for value in values:
        assert value not in dump, "a secret value leaked"
    with sqlite3.connect(database) as conn:
        assert conn.execute("select count(*) from decisions where secrets > 0").fetchone()[0] \
            == len(SECRETS)


def test_redacted_message_parses_with_same_structure(lab, sink, milters, dns_server):
    milters.helpdesk(dkim_sections(dns_server))
    msg = make_message(to="alice@example.org", body="Le mot de passe est Marmotte42\n",
                       html="<p>Le mot de passe est <b>Marmotte42</b></p>", cte="quoted-printable")
    msg.add_attachment(b"%PDF-1.4 fake pdf Marmotte42 \x00\x01", maintype="application",
                       subtype="pdf", filename="capture.pdf")
    got = lab.deliver(sink, as_bytes(msg), "secretariat@mairie-exemple.fr",
                      ["alice@example.org"])
    out: EmailMessage = BytesParser(policy=policy.default).parsebytes(got[0].raw)
    assert [p.get_content_type() for p in out.walk()] == \
        [p.get_content_type() for p in msg.walk()]
    plain = out.get_body(("plain",))
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Marmotte42" not in plain.get_content()
    pdf = next(p for p in out.walk() if p.get_content_type() == "application/pdf")
    assert pdf.get_content() == b"%PDF-1.4 fake pdf Marmotte42 \x00\x01"   # binary untouched
