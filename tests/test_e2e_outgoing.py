"""Staff's authenticated outgoing mail is left alone unless configured (SPEC, item 5).

End to end through the private Postfix with real SMTP AUTH (Cyrus SASL, a sasldb
the test writes): a technician sends a client a temporary password, with
``contact@`` in copy (so the milter inspects the message).  With the default
``secrets.outgoing = false`` the client gets it as written; with ``true`` it is
redacted like any other mail.  The same message from the same internal address
*without* authentication is redacted either way: anyone can write that envelope
sender.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support.mail import as_bytes, make_message
from support.world import example_sections

STAFF, STAFF_PASSWORD = "tech", "lab-sasl-pass"
REALM = "lab.localdomain"
PASSWORD = "Glycine-4471!"
CUSTOMER = "jean.dupont@mairie-exemple.fr"
BODY = ("Bonjour Monsieur Dupont,\n\nVotre compte de messagerie est réactivé.\n"
        f"Identifiant : jdupont\nMot de passe temporaire : {PASSWORD}\n"
        "Il vous sera demandé d'en choisir un nouveau à la première connexion.\n\n"
        "Cordialement,\nLe support\n")


def enable_sasl(lab) -> None:
    """SMTP AUTH PLAIN/LOGIN on the lab's smtpd, from a sasldb in its config folder
    (Debian's Postfix reads $config_directory/sasl/smtpd.conf).  The main.cf changes
    are undone by the next test's ``lab`` fixture."""
    saslpasswd2 = shutil.which("saslpasswd2")
    assert saslpasswd2, "saslpasswd2 is missing: apt-get install sasl2-bin libsasl2-modules " \
                        "(scripts/install-system-deps.sh installs it)"
    folder = Path(lab.conf_dir) / "sasl"
    folder.mkdir(mode=0o755, exist_ok=True)
    sasldb = folder / "sasldb2"
    (folder / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
        f"sasldb_path: {sasldb}\n")
    subprocess.run([saslpasswd2, "-p", "-c", "-f", str(sasldb), "-u", REALM, STAFF],
                   input=STAFF_PASSWORD, text=True, check=True, timeout=30)
    shutil.chown(sasldb, "postfix")            # smtpd (user postfix) reads it
    lab.postconf({"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "cyrus",
                  "smtpd_sasl_path": "smtpd",
                  # lab only: AUTH in clear, on loopback
                  "smtpd_tls_auth_only": "no"})


def send(lab, raw: bytes, *, authenticate: bool) -> None:
    with lab.smtp() as client:
        client.ehlo()
        if authenticate:
            client.login(f"{STAFF}@{REALM}", STAFF_PASSWORD)
        refused = client.sendmail("tech@example.org", [CUSTOMER, "contact@example.org"], raw)
        assert not refused
    lab.wait_queue_empty()


@pytest.mark.parametrize("outgoing", [False, True])
def test_authenticated_staff_mail_is_redacted_only_when_configured(lab, sink, milters,
                                                                   outgoing):
    enable_sasl(lab)
    milter = milters.helpdesk(example_sections(secrets={"outgoing": outgoing}))
    message_id = f"<outgoing-{outgoing}@example.org>"
    raw = as_bytes(make_message(sender="Support <tech@example.org>", to=CUSTOMER,
                                subject="Votre accès à la messagerie", body=BODY,
                                message_id=message_id))
    send(lab, raw, authenticate=True)
    got = sink.find(message_id)
    assert sorted(got.rcpt_tos) == sorted([CUSTOMER, "contact@example.org"])  # never rerouted
    m = got.message
    assert m["X-Helpdesk-Request"].endswith("rules=skip-authenticated")
    line = milter.wait_log(rf"verdict=other action=skip .*message-id={message_id}")
    if outgoing:
        assert PASSWORD.encode() not in got[0].raw
        assert "[secret removed: password]" in m.get_content()
        assert m["X-Helpdesk-Redacted"] == "count=1; kinds=password; action=redact"
        assert "secrets=1" in line.group(0)
    else:
        assert PASSWORD in m.get_content()
        assert m["X-Helpdesk-Redacted"] is None
        assert "secrets=" not in line.group(0)
    # the milter saw the login: Postfix passed {auth_authen}
    assert re.search(r"skipped=authenticated", line.group(0))


def test_internal_sender_without_authentication_is_still_redacted(lab, sink, milters):
    milters.helpdesk(example_sections())          # secrets.outgoing = false
    raw = as_bytes(make_message(sender="Support <tech@example.org>", to=CUSTOMER,
                                subject="Votre accès à la messagerie", body=BODY,
                                message_id="<outgoing-noauth@example.org>"))
    send(lab, raw, authenticate=False)
    got = sink.find("<outgoing-noauth@example.org>")
    assert PASSWORD.encode() not in got[0].raw
    assert got.message["X-Helpdesk-Redacted"] == "count=1; kinds=password; action=redact"
    assert got.message["X-Helpdesk-Request"].endswith("rules=skip-internal")
