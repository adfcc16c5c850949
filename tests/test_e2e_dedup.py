"""End to end through a real Postfix: one request, one ticket.

Pairs from ``tests/dedup_pairs`` are sent through Postfix with helpdesk-milter
a moment apart, in both directions (watched first, then assistance; assistance
first, then watched), and the sink shows which copy was tagged, rerouted or
dropped.  A short window shows expiry; two copies sent in parallel
transactions show that the check-and-remember is atomic.
"""

from __future__ import annotations

import threading
import time
import tomllib
from email.utils import getaddresses
from pathlib import Path

import pytest

from helpdesk_milter.message import ParsedMessage
from support.world import example_sections

PAIRS_DIR = Path(__file__).resolve().parent / "dedup_pairs"
CLIENTS = tomllib.loads((PAIRS_DIR / "pairs.toml").read_text())["clients"]


def sections(**dedup):
    data = example_sections(dedup=dedup) if dedup else example_sections()
    data["clients"] = {**data["clients"], **CLIENTS}
    return data


def load(name: str) -> tuple[bytes, str, list[str], str]:
    raw = (PAIRS_DIR / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    msg = ParsedMessage(raw)
    rcpts = [a for _, a in getaddresses(msg.msg.get_all("To", []) + msg.msg.get_all("Cc", []))]
    return raw, msg.from_addr, rcpts, msg.message_id


def deliver(lab, sink, name: str, rcpts: list[str] | None = None):
    raw, sender, to, message_id = load(name)
    sink.clear()
    return lab.deliver(sink, raw, sender, rcpts or to), message_id


def assistance_of(rcpts) -> list[str]:
    return [r for r in rcpts if "@assistance." in r]


def test_watched_first_then_assistance_copy_is_tagged(lab, sink, milters):
    milters.helpdesk(sections())
    first, _ = deliver(lab, sink, "o01-imprimante-toner.eml")
    assert assistance_of(first.rcpt_tos) == ["mairie-exemple@assistance.example.org"]
    second, mid = deliver(lab, sink, "d01-toner-resent-same-id.eml")
    assert second.rcpt_tos == ["mairie-exemple@assistance.example.org"]   # kept (tag mode)
    assert second.message["X-Helpdesk-Duplicate"] == f"of={mid}; match=message-id; action=tag"


def test_assistance_first_then_watched_copy_is_not_rerouted(lab, sink, milters):
    milters.helpdesk(sections())
    raw, sender, _, mid = load("o01-imprimante-toner.eml")
    sink.clear()
    lab.deliver(sink, raw, sender, ["mairie-exemple@assistance.example.org"])
    sink.clear()
    got = lab.deliver(sink, raw, sender, ["alice@example.org"])
    assert got.rcpt_tos == ["alice@example.org"]                  # no second ticket
    assert got.message["X-Helpdesk-Duplicate"] == f"of={mid}; match=message-id; action=tag"
    assert got.message["X-Helpdesk-Routed"] is None


@pytest.mark.parametrize("first, second, kind", [
    ("o04-site-ecole.eml", "d03-site-ecole-fwd-attachment.eml", "message-id"),
    ("o06-dns-transfer-en.eml", "d07-dns-outlook-inline-fw-en.eml", "text"),
    ("o01-imprimante-toner.eml", "d14-toner-resend-iphone.eml", "text"),
    ("o06-dns-transfer-en.eml", "d17-dns-edited-resend-en.eml", "text"),
])
def test_forwards_and_resends_are_recognised(lab, sink, milters, first, second, kind):
    milters.helpdesk(sections())
    deliver(lab, sink, first)
    got, _ = deliver(lab, sink, second)
    assert f"; match={kind}; action=tag" in got.message["X-Helpdesk-Duplicate"]


@pytest.mark.parametrize("first, second", [
    ("o01-imprimante-toner.eml", "o02-imprimante-scan.eml"),
    ("o09-compte-marie-dubois.eml", "o10-compte-paul-lefevre.eml"),
])
def test_near_misses_are_separate_requests(lab, sink, milters, first, second):
    milters.helpdesk(sections())
    deliver(lab, sink, first)
    got, _ = deliver(lab, sink, second)
    assert got.message["X-Helpdesk-Duplicate"] is None
    assert got.message["X-Helpdesk-Routed"] is not None          # its own ticket


def test_short_window_expires(lab, sink, milters):
    milters.helpdesk(sections(window="2s"))
    deliver(lab, sink, "o01-imprimante-toner.eml")
    time.sleep(2.5)
    got, _ = deliver(lab, sink, "d01-toner-resent-same-id.eml")
    assert got.message["X-Helpdesk-Duplicate"] is None


def test_drop_removes_the_watched_copy_when_assistance_has_it(lab, sink, milters):
    milter = milters.helpdesk(sections(action="drop"))
    raw, sender, _, mid = load("o01-imprimante-toner.eml")
    sink.clear()
    lab.deliver(sink, raw, sender, ["mairie-exemple@assistance.example.org"])
    sink.clear()
    result = lab.send(raw, sender, ["alice@example.org", "bob@example.org"])
    lab.wait_queue_empty(30)
    milter.wait_log(r"action=duplicate .*removed=<alice@example.org>,<bob@example.org>")
    # Both recipients were watched and dropped: Postfix accepted the message and
    # removed it without delivery and without a bounce to the client.
    time.sleep(0.5)
    assert sink.find_now(mid) == []
    log = lab.log_text()
    assert f"{result.queue_id}: removed" in log
    assert "sender non-delivery notification" not in log


def test_parallel_copies_make_one_ticket(lab, sink, milters):
    """The watched copy and the assistance copy in two simultaneous transactions."""
    milters.helpdesk(sections())
    raw, sender, _, mid = load("o06-dns-transfer-en.eml")
    sink.clear()
    errors: list[BaseException] = []

    def send(rcpts):
        try:
            lab.send(raw, sender, rcpts)
        except BaseException as exc:   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(r,)) for r in
               (["bob@example.org"], ["harbour-films@assistance.example.org"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    lab.wait_queue_empty(30)
    got = sink.find(mid, rcpts=["bob@example.org", "harbour-films@assistance.example.org"])
    to_assistance = [d for d in got if "harbour-films@assistance.example.org" in d.rcpt_tos]
    untagged = [d for d in to_assistance if d.message["X-Helpdesk-Duplicate"] is None]
    # Whichever came first, assistance gets exactly one copy that is not a duplicate.
    assert len(untagged) == 1, [(d.rcpt_tos, d.message["X-Helpdesk-Duplicate"]) for d in got]
