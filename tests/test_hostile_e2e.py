"""Hostile input through a real Postfix with helpdesk-milter (example config).

The catalogue of ``support.hostile`` (the same bytes as ``test_hostile_core.py``) is sent
once through the lab's smtpd; each case then checks, on what the capture sink received:
accepted with 250, delivered, no recipient lost or delivered twice, our verdict header
present once, every header Postfix and we had no reason to touch still there, the
secret gone wherever a client shows it (or, for a part the milter cannot read, the body
unchanged and a header and the log line saying it was not inspected), and exactly one
milter log line for the queue id.

The big ones run on their own: a 50 MB message (the milter's peak RSS, VmHWM, must not
grow with the part beyond ``max_scan_size``: that part is never held) and one message to
10,000 recipients. ``tests/soak/run.py --scenario big`` runs them with other sizes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpdesk_milter.auth import is_own_authentication_results
from support.hostile import (
    Hostile,
    big_message,
    catalogue,
    check_expectation,
    expected_recipients_ok,
    is_redirect_watched,
    many_recipients,
    says_not_inspected,
    unfold_smtp,
)
from support.load import prepare_lab, send_many, send_pipelined, support_messages
from support.milterproc import MilterLauncher, MilterProcess
from support.postfix import PostfixLab, SendResult, SmtpRejected
from support.sink import Deliveries, Sink
from support.world import CLIENT, CLIENT_ASSISTANCE, example_sections

CASES = catalogue()
# Headers Postfix itself may rewrite (address canonicalisation for local clients).
ADDRESS_HEADERS = {"from", "to", "cc", "reply-to", "sender"}
MiB = 1024 * 1024


@dataclass
class Run:
    milter: MilterProcess
    sent: dict[str, SendResult | SmtpRejected]
    delivered: dict[str, Deliveries]


@pytest.fixture(scope="module")
def hostile_run(postfix_lab: PostfixLab, sink: Sink, tmp_path_factory: pytest.TempPathFactory):
    lab = postfix_lab
    prepare_lab(lab, sink)
    try:
        with MilterLauncher(tmp_path_factory.mktemp("hostile-e2e"), lab) as launcher:
            milter = launcher.helpdesk(example_sections(), name="hostile")
            sent: dict[str, SendResult | SmtpRejected] = {}
            for case in CASES:
                try:
                    sent[case.name] = lab.send(case.raw, case.mail_from, case.rcpts,
                                               normalize_eol=False)
                except SmtpRejected as exc:
                    sent[case.name] = exc
            lab.wait_queue_empty(60)
            delivered = {c.name: sink.find_now(c.message_id) for c in CASES}
            yield Run(milter, sent, delivered)
    finally:
        lab.reset_config()


def header_fields(raw: bytes) -> list[tuple[str, bytes]]:
    head = raw.partition(b"\r\n\r\n")[0]
    out: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + b"\r\n" + line)
        elif line:
            name = line.split(b":", 1)[0].decode("ascii", "replace").strip().lower()
            out.append((name, line))
    return out


def log_lines(milter: MilterProcess, qid: str) -> list[str]:
    return [line for line in milter.log_text().splitlines() if f" {qid}: " in line]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_message_through_postfix(hostile_run: Run, case: Hostile):
    result = hostile_run.sent[case.name]
    assert isinstance(result, SendResult), f"{case.name} refused: {result}"
    got = hostile_run.delivered[case.name]
    assert got, f"{case.name} accepted as {result.queue_id} but never delivered"
    lost = expected_recipients_ok(list(case.rcpts), got.rcpt_list, is_redirect_watched)
    assert not lost, f"recipients lost: {lost}"
    assert len(got.rcpt_list) == len(set(got.rcpt_list)), "someone got it twice"
    out = got[0].raw
    delivered = header_fields(out)
    ours = [v.split(b":", 1)[1].strip().decode("utf-8", "replace")
            for n, v in delivered if n.startswith("x-helpdesk-")]
    assert sum(n == "x-helpdesk-request" for n, _ in delivered) == 1, ours
    # everything we had no reason to touch arrives as sent (Postfix itself cuts a header
    # at a NUL byte, turns a bare CR into a space, folds lines past 998 characters,
    # rewrites address headers)
    present = {unfold_smtp(v) for _, v in delivered}
    for name, field in header_fields(case.raw):
        if name in ADDRESS_HEADERS or name == "subject" or name.startswith("x-helpdesk-") \
                or name == "authentication-results" or b"\0" in field:
            continue
        field = re.sub(rb"\r(?!\n)", b" ", field)      # Postfix's doing: CR -> space
        assert field in present, f"header lost or altered: {field[:80]!r}"
    # nothing of ours arrives forged
    sent_ours = {v.split(b":", 1)[1].strip() for n, v in header_fields(case.raw)
                 if n.startswith("x-helpdesk-")}
    forged = [v for n, v in delivered if n.startswith("x-helpdesk-")
              and v.split(b":", 1)[1].strip() in sent_ours]
    assert not forged, f"forged headers delivered: {forged}"
    own_ar = [v for n, v in delivered if n == "authentication-results"
              and is_own_authentication_results(v.split(b":", 1)[1].decode("utf-8", "replace"),
                                                "mx.example.org")]
    assert len(own_ar) <= 1, f"forged Authentication-Results delivered: {own_ar}"
    lines = log_lines(hostile_run.milter, result.queue_id or "?")
    assert len(lines) == 1, f"expected one log line for {result.queue_id}, got {lines}"
    check_expectation(case, out, ours, lines[0], normalize=unfold_smtp)


def test_forged_headers_are_gone_after_postfix(hostile_run: Run):
    got = hostile_run.delivered["forged-headers"]
    msg = got[0].message
    assert msg.get_all("X-Helpdesk-Routed") is None or all(
        "evil" not in v for v in msg.get_all("X-Helpdesk-Routed"))
    assert msg.get_all("X-Helpdesk-Future-Header") is None
    assert msg.get_all("X-HELPDESK-REDACTED") in (None, [msg["X-Helpdesk-Redacted"]])
    assert len(msg.get_all("X-Helpdesk-Request")) == 1
    assert "evil" not in msg["X-Helpdesk-Request"]
    results = [str(v) for v in msg.get_all("Authentication-Results", [])]
    assert not any("forged" in r or "evil.example" in r for r in results), results
    assert any(r.startswith("other.example;") for r in results), results


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process, in bytes (VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", text, re.M).group(1)) * 1024


def test_fifty_megabyte_message_passes_and_memory_stays_bounded(lab, sink, milters):
    """The body past max_scan_size (10 MB) is not held: peak RSS grows by far less
    than the message. The message arrives whole, tagged as not inspected."""
    milter = milters.helpdesk(example_sections())
    warm = big_message(64 * 1024, tag="warm")       # first decision: lazy imports, caches
    lab.deliver(sink, warm, CLIENT, ["alice@example.org"])
    before = vm_hwm(milter.pid)
    size = 50 * MiB
    raw = big_message(size, tag="fifty")
    started = time.monotonic()
    got = lab.deliver(sink, raw, CLIENT, ["contact@example.org"], timeout=120,
                      normalize_eol=False)
    elapsed = time.monotonic() - started
    grown = vm_hwm(milter.pid) - before
    print(f"\n50 MB message: {elapsed:.1f}s through Postfix, milter VmHWM "
          f"{before / MiB:.0f} -> {(before + grown) / MiB:.0f} MiB (+{grown / MiB:.1f})")
    assert got.rcpt_tos == ["contact@example.org"]        # too large: never rerouted
    assert len(got[0].raw) >= size
    assert got[0].raw.endswith(raw[-4096:])
    assert says_not_inspected([got.message["X-Helpdesk-Request"]])
    assert grown < 16 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB for a 50 MB message"
    milter.wait_log(r"skipped=too-large")


def test_ten_thousand_recipients(lab, sink, milters):
    if int(lab.main_cf().get("smtpd_recipient_limit", "1000")) < 10_000:
        lab.postconf({"smtpd_recipient_limit": "20000"})
    milter = milters.helpdesk(example_sections())
    raw, rcpts = many_recipients(10_000)
    started = time.monotonic()
    reply = send_pipelined(lab.smtp_port, raw, CLIENT, rcpts)
    assert reply.code == 250, reply
    lab.wait_queue_empty(120)
    mid = re.search(rb"Message-ID: <([^>]+)>", raw).group(1).decode()
    got = sink.find(mid, timeout=10)
    elapsed = time.monotonic() - started
    print(f"\n10,000 recipients: {elapsed:.1f}s to all delivered ({len(got)} deliveries)")
    assert len(got.rcpt_list) == len(set(got.rcpt_list)), "someone got it twice"
    assert not expected_recipients_ok(rcpts, got.rcpt_list, is_redirect_watched)
    assert set(got.rcpt_tos) == (set(rcpts) - {"contact@example.org"}) | {CLIENT_ASSISTANCE}
    line = milter.wait_log(rf"{reply.queue_id}: verdict=\w+ action=redirect .*nrcpt=10000")
    assert line


def test_busy_sessions_keep_duplicate_detection(lab, sink, milters):
    """10 SMTP sessions at once carrying 20 messages each: every decision gets its
    duplicate lookup. libmilter runs a session's callbacks on whichever worker thread
    is free, while pymilter keeps one Python thread state per session: anything kept
    per Python thread (threading.local) then meets a different OS thread."""
    milter = milters.helpdesk(example_sections())
    messages = support_messages(200, tag="busy", secret_every=4)
    report = send_many(lab.smtp_port, messages, connections=10, per_session=20, deadline=60)
    lab.wait_queue_empty(60)
    assert len(report.accepted) == len(messages)
    log = milter.log_text()
    decided = sum(1 for line in log.splitlines() if ": verdict=" in line)
    failures = [line for line in log.splitlines() if "duplicate lookup failed" in line]
    assert not failures, (f"{len(failures)} of {decided} decisions ran without duplicate "
                          f"detection; first: {failures[0]}")
