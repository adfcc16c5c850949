"""The README's milter-order advice, through a real Postfix with two milters.

helpdesk-milter rewrites bodies (secret redaction), so a DKIM signer must come *after*
it in ``smtpd_milters``. With ``support/sign_milter.py`` (dkimpy, what OpenDKIM's
signing mode does):

- helpdesk-milter, then the signer (the README's order): the delivered, redacted message
  carries a signature that verifies;
- the signer, then helpdesk-milter: the signature was made on the original body, and
  the delivered message fails verification (``body hash mismatch``), while
  helpdesk-milter still recorded the original, valid signature (``dkim=pass``).
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import dkim
import pytest

from support.dkimfixtures import DkimKey, message
from support.milterproc import MilterLauncher, MilterProcess
from support.postfix import PostfixLab
from support.sink import Sink
from support.world import CLIENT_ASSISTANCE, example_sections

SIGN_MILTER = Path(__file__).resolve().parent / "support" / "sign_milter.py"
PASSWORD = "Soleil2024!"
BODY = ("Bonjour,\r\n\r\nJe n'arrive plus à me connecter au webmail depuis ce matin.\r\n"
        f"Mon identifiant est jdupont et le mot de passe est {PASSWORD}\r\n"
        "Pouvez-vous regarder ?\r\n\r\nMerci,\r\nJean Dupont\r\n")
DOMAIN, SELECTOR = "example.org", "order1"


def verify(raw: bytes, key: DkimKey) -> tuple[bool, str]:
    """dkimpy's verdict on the delivered message, and why (its log)."""
    name = f"{SELECTOR}._domainkey.{DOMAIN}".encode()

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes:
        return key.txt.encode() if qname.rstrip(b".") == name else b""

    stream = io.StringIO()
    logger = logging.getLogger(f"test-milter-order-{id(stream)}")
    logger.addHandler(logging.StreamHandler(stream))
    logger.setLevel(logging.DEBUG)
    ok = bool(dkim.verify(raw, dnsfunc=dnsfunc, logger=logger))
    return ok, stream.getvalue()


@pytest.mark.postfix
@pytest.mark.parametrize("helpdesk_first", [True, False], ids=["recommended", "reversed"])
def test_signer_after_helpdesk_milter(helpdesk_first: bool, lab: PostfixLab, sink: Sink,
                                      milters: MilterLauncher, dns_server, dkim_key: DkimKey,
                                      tmp_path: Path) -> None:
    dkim_key.publish(dns_server, DOMAIN, SELECTOR)      # for helpdesk-milter's own check
    helpdesk = milters.helpdesk(
        example_sections(dns={"resolver": dns_server.resolver, "timeout": "2s"}),
        attach=False)
    key = dkim_key.write_private(tmp_path / "sign.pem")
    socket_path = milters.socket_path("signer")
    signer = MilterProcess([sys.executable, str(SIGN_MILTER), "--socket",
                            f"unix:{socket_path}", "--key", str(key), "--domain", DOMAIN,
                            "--selector", SELECTOR], socket_path, tmp_path / "signer.log",
                           name="sign-milter")
    with signer:
        order = [helpdesk, signer] if helpdesk_first else [signer, helpdesk]
        milters.attach(", ".join(m.postfix_spec for m in order))
        mid = f"<milter-order-{int(helpdesk_first)}@mairie-exemple.fr>"
        raw = message(to="contact@example.org", body=BODY, message_id=mid,
                      subject="Webmail bloqué")
        got = lab.deliver(sink, raw, "jean.dupont@mairie-exemple.fr", ["contact@example.org"])
        signer.wait_log(r"signed d=example\.org")
    delivered = got[0].raw
    m = got.message
    # helpdesk-milter did its work in both orders: routed and redacted.
    assert got.rcpt_tos == [CLIENT_ASSISTANCE]
    assert PASSWORD.encode() not in delivered
    assert "[secret removed: password]" in m.get_content()
    assert len(m.get_all("DKIM-Signature") or []) == 1
    ok, why = verify(delivered, dkim_key)
    if helpdesk_first:
        assert ok, why
        assert "dkim=none" in m["Authentication-Results"]
    else:
        assert not ok
        assert "body hash mismatch" in why, why
        # the original was signed and valid when helpdesk-milter saw it
        assert f"dkim=pass header.d={DOMAIN} header.s={SELECTOR}" in \
            m["Authentication-Results"]
