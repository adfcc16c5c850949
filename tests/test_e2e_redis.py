"""End to end: two MX hosts, one memory.  Two private Postfix instances, each with its
own helpdesk-milter (own SQLite file), and one real redis-server they share.

A request through the first MX and its resend (same Message-ID) and edited
resend (near-duplicate text) through the second are tagged duplicates; the
sender gets one guidance mail in all.  Redis killed in the middle of a run of
messages through both hosts costs no message, and the milters use it again,
without a restart, seconds after it returns.  (The long version, 1,000
messages, is ``tests/soak/redis_outage.py``.)
"""

from __future__ import annotations

import time
import tomllib
import uuid
from collections.abc import Iterator
from email.utils import getaddresses
from pathlib import Path

import pytest

from helpdesk_milter.message import ParsedMessage
from support.milterproc import MilterLauncher
from support.net import wait_until
from support.postfix import PostfixLab, SmtpRejected
from support.redis import RedisServer, redis_server  # noqa: F401
from support.sink import Sink
from support.world import example_sections

pytestmark = pytest.mark.postfix

PAIRS_DIR = Path(__file__).resolve().parent / "dedup_pairs"
CLIENTS = tomllib.loads((PAIRS_DIR / "pairs.toml").read_text())["clients"]
CLIENT = "secretariat@mairie-exemple.fr"


@pytest.fixture(scope="module")
def lab2(sink: Sink) -> Iterator[PostfixLab]:
    """The second MX: another private Postfix relaying to the same sink."""
    with PostfixLab(sink.port) as lab:
        yield lab


@pytest.fixture
def redis_outage_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def two_hosts(lab, lab2, sink, tmp_path):
    """``start(server, **sections)`` -> the two milters, MX1 on ``lab``, MX2 on ``lab2``."""
    launchers: list[MilterLauncher] = []

    def start(server: RedisServer, **overrides):
        prefix = f"e2e{uuid.uuid4().hex[:8]}:"
        milters = []
        for name, mx in (("mx1", lab), ("mx2", lab2)):
            data = example_sections(
                state={"backend": "redis", "redis_url": server.url, "key_prefix": prefix,
                       "timeout": "0.3s"},
                autoreply={"enabled": True, "trust": "known", "retry": "1s",
                           "smtp": f"127.0.0.1:{mx.smtp_port}"}, **overrides)
            data["clients"] = {**data["clients"], **CLIENTS}
            launcher = MilterLauncher(tmp_path / name, mx)
            launchers.append(launcher)
            milters.append(launcher.helpdesk(data, name=name, default_action="tempfail"))
        return milters

    yield start
    for launcher in launchers:
        launcher.close()


def load(name: str) -> tuple[bytes, str, list[str], str]:
    raw = (PAIRS_DIR / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    msg = ParsedMessage(raw)
    rcpts = [a for _, a in getaddresses(msg.msg.get_all("To", []) + msg.msg.get_all("Cc", []))]
    return raw, msg.from_addr, rcpts, msg.message_id


def guidance_mails(sink: Sink, to: str) -> list:
    return [d for d in sink.deliveries
            if list(d.rcpt_tos) == [to] and d.message["Auto-Submitted"] == "auto-replied"]


def test_a_request_and_its_resends_through_the_other_mx_are_duplicates(
        lab, lab2, sink, two_hosts, redis_server):  # noqa: F811
    mx1, mx2 = two_hosts(redis_server)
    raw, sender, rcpts, mid = load("o01-imprimante-toner.eml")
    first = lab.deliver(sink, raw, sender, rcpts)
    assert "mairie-exemple@assistance.example.org" in first.rcpt_tos
    assert first.message["X-Helpdesk-Duplicate"] is None

    raw, sender, _, _ = load("d01-toner-resent-same-id.eml")
    sink.clear()
    resend = lab2.deliver(sink, raw, sender, ["mairie-exemple@assistance.example.org"])
    assert resend.message["X-Helpdesk-Duplicate"] == f"of={mid}; match=message-id; action=tag"

    raw, sender, rcpts, _ = load("d14-toner-resend-iphone.eml")
    edited = lab2.deliver(sink, raw, sender, rcpts)
    assert "; match=text; action=tag" in edited.message["X-Helpdesk-Duplicate"]
    assert not any(r.endswith("@assistance.example.org") and r not in rcpts
                   for r in edited.rcpt_tos)          # no second ticket

    # One guidance mail in all: MX1 queued it for the first request; a new request
    # from the same sender through MX2 would earn one, but the sender was guided.
    raw, sender, rcpts, _ = load("o02-imprimante-scan.eml")
    other = lab2.deliver(sink, raw, sender, rcpts)
    assert other.message["X-Helpdesk-Duplicate"] is None        # its own ticket
    mx2.wait_log(r"guidance=suppressed:rate-limited")
    wait_until(lambda: guidance_mails(sink, sender), 20, "the guidance mail")
    time.sleep(2.5)                          # an outbox polls every 2 s: none follows
    assert len(guidance_mails(sink, sender)) == 1
    assert "guidance=queued" in mx1.log_text()


def message(n: int, tag: str) -> bytes:
    return (f"From: Secrétariat <{CLIENT}>\r\nTo: contact@example.org\r\n"
            f"Subject: Panne numéro {n} du poste {tag}\r\n"
            f"Message-ID: <{tag}-{n}@mairie-exemple.fr>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            f"Bonjour,\r\n\r\nLe poste {n} de l'accueil ne démarre plus depuis ce matin, "
            f"écran noir et bip continu (incident {tag}-{n}).\r\nPouvez-vous regarder ?\r\n"
            "\r\nMerci,\r\nLe secrétariat\r\n").encode()


def test_redis_killed_mid_run_loses_nothing_and_the_milters_recover(
        lab, lab2, sink, two_hosts, redis_outage_server):
    server = redis_outage_server
    mx1, mx2 = two_hosts(server)
    tag = uuid.uuid4().hex[:6]
    total, sent = 60, []
    for n in range(total):
        if n == 20:
            server.kill()
        if n == 40:
            server.start()
            back = time.monotonic()
        mx = lab if n % 2 else lab2
        mx.send(message(n, tag), CLIENT, ["contact@example.org"])   # raises on a 4xx/5xx
        sent.append(f"<{tag}-{n}@mairie-exemple.fr>")
    lab.wait_queue_empty(30)
    lab2.wait_queue_empty(30)
    for mid in sent:       # every message delivered, to assistance (contact@ redirects)
        got = sink.find(mid, timeout=10)
        assert got.rcpt_tos == ["mairie-exemple@assistance.example.org"], mid
    for milter in (mx1, mx2):
        milter.wait_log(r"shared state .* unavailable")
        log = milter.log_text()
        assert log.count("unavailable (") == 1, log     # one line per outage, not per message
        assert "Traceback" not in log
    # Recovered without a restart, within seconds: a request through MX1 is a
    # duplicate on MX2 again.
    # (A milter tries Redis again at the first message a second after a failure.)
    time.sleep(1.1)
    raw = message(999, tag)
    lab.deliver(sink, raw, CLIENT, ["contact@example.org"])
    sink.clear()
    again = lab2.deliver(sink, raw, CLIENT, ["mairie-exemple@assistance.example.org"])
    assert again.message["X-Helpdesk-Duplicate"] is not None
    assert time.monotonic() - back < 30
    for milter in (mx1, mx2):
        assert milter.log_text().count("is back after") == 1


def test_with_on_error_tempfail_an_outage_temp_fails_until_redis_returns(
        lab, lab2, sink, two_hosts, redis_outage_server):
    server = redis_outage_server
    mx1, _ = two_hosts(server, milter={"on_error": "tempfail"})
    tag = uuid.uuid4().hex[:6]
    lab.deliver(sink, message(1, tag), CLIENT, ["contact@example.org"])
    server.kill()
    with pytest.raises(SmtpRejected) as refused:
        lab.send(message(2, tag), CLIENT, ["contact@example.org"])
    assert refused.value.temporary and refused.value.stage == "message"
    server.start()
    time.sleep(1.1)                         # the breaker's second
    got = lab.deliver(sink, message(2, tag), CLIENT, ["contact@example.org"])
    assert got.rcpt_tos == ["mairie-exemple@assistance.example.org"]
    assert mx1.log_text().count("unavailable (") == 1
